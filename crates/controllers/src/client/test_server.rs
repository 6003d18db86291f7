//! An HTTPS server for the client's tests: TLS with the ALPN protocols a test asks for, a
//! handler per request, a count of connections, and a way to cut every open connection.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub type Body = BoxBody<Bytes, Infallible>;

pub struct TestServer {
    pub url: String,
    ca_der: Vec<u8>,
    connections: Arc<AtomicUsize>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl TestServer {
    /// Serves `handler` on loopback, offering `alpn` (`h2`, `http/1.1`) in that order.
    pub async fn start<H, F>(alpn: &[&[u8]], handler: H) -> Result<TestServer, tower::BoxError>
    where
        H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        ));
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("https://{}", listener.local_addr()?);
        let connections = Arc::new(AtomicUsize::new(0));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let accepted = connections.clone();
        let cuts = cut.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                let handler = handler.clone();
                let mut cut = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
                    let service = hyper::service::service_fn(move |request| {
                        let answer = handler(request);
                        async move { Ok::<_, Infallible>(answer.await) }
                    });
                    let io = TokioIo::new(tls);
                    let serve = async {
                        if h2 {
                            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .serve_connection(io, service)
                                .await;
                        } else {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(io, service)
                                .await;
                        }
                    };
                    // Cutting drops the connection without a GOAWAY, as a crashed server would.
                    tokio::select! {
                        () = serve => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Ok(TestServer {
            url,
            ca_der: certified.cert.der().to_vec(),
            connections,
            cut,
        })
    }

    /// A client configuration that trusts this server.
    pub fn config(&self) -> Result<kube::Config, tower::BoxError> {
        let mut config = kube::Config::new(self.url.parse()?);
        config.root_cert = Some(vec![self.ca_der.clone()]);
        Ok(config)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Drops every open connection.
    pub fn cut_connections(&self) {
        self.cut.send_modify(|generation| *generation += 1);
    }
}

pub fn full(body: impl Into<Bytes>) -> Body {
    use http_body_util::BodyExt;
    http_body_util::Full::new(body.into()).boxed()
}
