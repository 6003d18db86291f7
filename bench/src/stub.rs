//! A stub member API server: HTTPS on loopback, answering what Atoll's health workers ask of a
//! member (`/readyz`, `/version`, and an empty ClusterProperty list and a watch that ends after its timeoutSeconds).
//! One stub stands in for any number of members: each member's kubeconfig points at it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

pub struct Stub {
    pub addr: SocketAddr,
    pub ca_pem: String,
}

type Body = BoxBody<Bytes, Infallible>;

fn full(text: &str) -> Body {
    Full::new(Bytes::copy_from_slice(text.as_bytes())).boxed()
}

async fn answer(request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path();
    let query = request.uri().query().unwrap_or_default();
    let body = match path {
        "/readyz" | "/healthz" => full("ok"),
        "/version" => full(
            r#"{"major":"1","minor":"20","gitVersion":"v1.20.2","gitCommit":"0","gitTreeState":"clean","buildDate":"2021-01-13T00:00:00Z","goVersion":"go1.19","compiler":"gc","platform":"linux/amd64"}"#,
        ),
        "/apis/about.k8s.io/v1beta1/clusterproperties" if query.contains("watch=true") => {
            // A watch that never has news, ended after the client's timeoutSeconds as a
            // kube-apiserver ends it (the client then watches again).
            let timeout = query
                .split('&')
                .find_map(|pair| pair.strip_prefix("timeoutSeconds="))
                .and_then(|seconds| seconds.parse().ok())
                .unwrap_or(1800);
            let ends = tokio::time::sleep(std::time::Duration::from_secs(timeout));
            StreamBody::new(futures::StreamExt::take_until(
                futures::stream::pending::<Result<Frame<Bytes>, Infallible>>(),
                ends,
            ))
            .boxed()
        }
        "/apis/about.k8s.io/v1beta1/clusterproperties" => full(
            r#"{"apiVersion":"about.k8s.io/v1beta1","kind":"ClusterPropertyList","metadata":{"resourceVersion":"1"},"items":[]}"#,
        ),
        _ => {
            let mut response = Response::new(full(
                r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#,
            ));
            *response.status_mut() = hyper::StatusCode::NOT_FOUND;
            return Ok(response);
        }
    };
    let mut response = Response::new(body);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

pub async fn start() -> anyhow::Result<Stub> {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let config = ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(vec![certified.cert.der().clone()], key)?;
    // Like a kube-apiserver: HTTP/2 for clients that offer it, HTTP/1.1 for the rest.
    let mut config = config;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), hyper::service::service_fn(answer))
                    .await;
            });
        }
    });
    Ok(Stub {
        addr,
        ca_pem: certified.cert.pem(),
    })
}
