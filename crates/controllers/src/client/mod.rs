//! Clients for member clusters that share one connection per member.
//!
//! kube's default client speaks HTTP/1.1, so every watch held open on a member takes a TLS
//! connection of its own, and every probe or write while watches stream takes another. The
//! hub holds several watches per member (ClusterProperties, and the Work and MCS controllers'
//! watches), so for a fleet of a thousand members connections and their buffers dominate the
//! hub's memory. The clients built here speak HTTP/2 (ALPN `h2`, falling back to HTTP/1.1):
//! every request and watch to a member is a stream on one connection, driven by
//! [`http2::MemberConnection`] (the `h2` crate without hyper's per-connection request queue).
//!
//! The status, Work and MCS controllers each build their own client for a member (the Work
//! applier's impersonates a narrower identity), but they reach the same API server with the
//! same TLS identity: [`shared`] gives them one transport, so a member costs one connection
//! and one TLS configuration however many controllers talk to it. An HTTP/2 connection costs
//! some 24 KiB in buffers that `h2` does not let a client shrink (a 16 KiB write buffer, an
//! 8 KiB read buffer), so the count of connections is what matters.
//!
//! [`MemberHttp`] is the same stack without a `kube::Client` around it, for the status
//! worker's few raw requests: a `kube::Client` puts a tower `Buffer` (a task and a request
//! queue, about 20 KiB once it has carried 32 requests) in front of every member.
//!
//! It keeps everything else kube's client does with a kubeconfig: the base URI, TLS (CA, client
//! certificates), authentication (tokens, exec plugins) and impersonation headers.

pub mod http2;
#[cfg(test)]
pub(crate) mod test_server;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::ConfigExt;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, ServiceBuilder, ServiceExt};

use http2::{MemberConnection, ResponseBody};

type Connector = hyper_timeout::TimeoutConnector<hyper_rustls::HttpsConnector<HttpConnector>>;
/// The HTTP/1.1 client for members that do not speak HTTP/2.
type Http1Client = hyper_util::client::legacy::Client<Connector, kube::client::Body>;

/// One member's connection, shared by every client built for it with the same key.
#[derive(Clone)]
struct Transport(Arc<MemberConnection>);

impl tower::Service<Request<kube::client::Body>> for Transport {
    type Response = Response<ResponseBody>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<kube::client::Body>) -> Self::Future {
        let connection = self.0.clone();
        Box::pin(async move { connection.send(request).await })
    }
}

/// Live transports by key. Entries are weak: a transport goes (and its connection closes)
/// once no client uses it, as when a cluster is unjoined or its credentials change.
static TRANSPORTS: LazyLock<Mutex<HashMap<String, Weak<MemberConnection>>>> =
    LazyLock::new(Default::default);

/// A client for `config` that multiplexes every request over one HTTP/2 connection where the
/// server offers it.
pub fn multiplexed(config: kube::Config) -> Result<kube::Client, kube::Error> {
    let transport = Transport(Arc::new(transport(&config)?));
    client(config, transport)
}

/// Like [`multiplexed`], sharing the connection with every other client built with the same
/// `key` while any of them lives. The key must name the server and the TLS identity (CA,
/// client certificate) of `config`, for example a member's cluster namespace with the
/// resourceVersion of the Secret that holds its kubeconfig: clients that share a key may
/// differ only in what travels in request headers (credentials, impersonation).
pub fn shared(key: &str, config: kube::Config) -> Result<kube::Client, kube::Error> {
    let transport = shared_transport(key, &config)?;
    client(config, transport)
}

fn shared_transport(key: &str, config: &kube::Config) -> Result<Transport, kube::Error> {
    let mut transports = TRANSPORTS.lock().unwrap_or_else(PoisonError::into_inner);
    let live = transports.get(key).and_then(Weak::upgrade);
    let transport = match live {
        Some(transport) => transport,
        None => {
            let transport = Arc::new(transport(config)?);
            transports.retain(|_, t| t.strong_count() > 0);
            transports.insert(key.to_owned(), Arc::downgrade(&transport));
            transport
        }
    };
    Ok(Transport(transport))
}

fn transport(config: &kube::Config) -> Result<MemberConnection, kube::Error> {
    let mut tls = config.rustls_client_config()?;
    // No TLS session resumption: it saves a round trip when a connection is re-established,
    // which a member's one long-lived connection seldom is, while rustls's default session
    // cache costs about 14 KiB per TLS configuration, and there is one per member.
    tls.resumption = rustls::client::Resumption::disabled();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    MemberConnection::new(
        Arc::new(tls),
        config.tls_server_name.as_deref(),
        http2::Timeouts {
            connect: config.connect_timeout,
            read: config.read_timeout,
            write: config.write_timeout,
        },
    )
    .map_err(kube::Error::Service)
}

/// hyper's HTTP/1.1 client, for members that did not choose HTTP/2 (and plain `http://` URLs,
/// which only tests use), with `tls` but offering only `http/1.1`.
fn http1_client(tls: &rustls::ClientConfig, timeouts: http2::Timeouts) -> Http1Client {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let mut tls = tls.clone();
    // hyper-rustls sets ALPN itself (to `http/1.1` alone here) and refuses a preset one.
    tls.alpn_protocols.clear();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let mut connector = hyper_timeout::TimeoutConnector::new(https);
    connector.set_connect_timeout(timeouts.connect);
    connector.set_read_timeout(timeouts.read);
    connector.set_write_timeout(timeouts.write);
    hyper_util::client::legacy::Builder::new(TokioExecutor::new()).build(connector)
}

/// The service every member client is: base URI, authentication and extra headers in front
/// of the member's transport.
type MemberService =
    BoxCloneSyncService<Request<kube::client::Body>, Response<ResponseBody>, BoxError>;

fn member_service(
    config: &kube::Config,
    transport: Transport,
) -> Result<MemberService, kube::Error> {
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(transport);
    Ok(BoxCloneSyncService::new(service))
}

fn client(config: kube::Config, transport: Transport) -> Result<kube::Client, kube::Error> {
    let service = member_service(&config, transport)?;
    Ok(kube::Client::new(service, config.default_namespace))
}

/// Raw requests to one member, sharing its connection like [`shared`] clients, without a
/// `kube::Client`'s request queue: for callers that hold a handle per member for good and send
/// a few requests of their own making (the status worker's probes and property watch).
#[derive(Clone)]
pub struct MemberHttp(MemberService);

impl MemberHttp {
    /// Requests to the member `config` names, over the transport shared under `key` (see
    /// [`shared`]).
    pub fn shared(key: &str, config: &kube::Config) -> Result<MemberHttp, kube::Error> {
        let transport = shared_transport(key, config)?;
        Ok(MemberHttp(member_service(config, transport)?))
    }

    /// A handle with a connection of its own.
    pub fn new(config: &kube::Config) -> Result<MemberHttp, kube::Error> {
        let transport = Transport(Arc::new(transport(config)?));
        Ok(MemberHttp(member_service(config, transport)?))
    }

    /// Sends `request` (a path relative to the member's URL); the body streams.
    pub async fn send(
        &self,
        request: Request<Vec<u8>>,
    ) -> Result<Response<ResponseBody>, BoxError> {
        self.0
            .clone()
            .oneshot(request.map(kube::client::Body::from))
            .await
    }

    /// GETs `path` and reads the whole answer, refusing one longer than `limit` bytes.
    pub async fn get(&self, path: &str, limit: usize) -> Result<Answer, BoxError> {
        let request = Request::get(path).body(Vec::new())?;
        let response = self.send(request).await?;
        let status = response.status();
        let body = read_limited(response.into_body(), limit).await?;
        Ok(Answer { status, body })
    }
}

/// A whole answer from a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status.
    pub status: http::StatusCode,
    /// The body.
    pub body: bytes::Bytes,
}

impl Answer {
    /// The message of a failed answer: a Kubernetes `Status`'s message, or else the body's
    /// text, cut to `max` characters.
    pub fn message(&self, max: usize) -> String {
        #[derive(serde::Deserialize)]
        struct Status {
            message: String,
        }
        match serde_json::from_slice::<Status>(&self.body) {
            Ok(status) => status.message.chars().take(max).collect(),
            Err(_) => String::from_utf8_lossy(&self.body)
                .chars()
                .take(max)
                .collect(),
        }
    }
}

/// Reads a whole body, refusing one longer than `limit` bytes.
pub async fn read_limited<B>(body: B, limit: usize) -> Result<bytes::Bytes, BoxError>
where
    B: http_body::Body<Data = bytes::Bytes>,
    B::Error: Into<BoxError>,
{
    use http_body_util::BodyExt;
    let collected = http_body_util::Limited::new(body, limit).collect().await?;
    Ok(collected.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A plain HTTP/1.1 server answering `ok` to every request, keeping connections open;
    /// returns its address and the count of connections it accepted.
    async fn counting_server() -> std::io::Result<(std::net::SocketAddr, Arc<AtomicUsize>)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut chunk).await {
                        if n == 0 {
                            return;
                        }
                        request.extend_from_slice(&chunk[..n]);
                        while let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                            request.drain(..end + 4);
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if stream.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        Ok((addr, accepted))
    }

    async fn ask(client: &kube::Client) -> Result<String, kube::Error> {
        let request = http::Request::get("/readyz")
            .body(Vec::new())
            .map_err(kube::Error::HttpError)?;
        client.request_text(request).await
    }

    #[tokio::test]
    async fn clients_with_one_key_share_a_connection_and_other_keys_do_not()
    -> Result<(), Box<dyn std::error::Error>> {
        let (addr, accepted) = counting_server().await?;
        let config = || -> Result<kube::Config, Box<dyn std::error::Error>> {
            Ok(kube::Config::new(format!("http://{addr}").parse()?))
        };
        let status = shared("test-member/uid/1", config()?)?;
        let mut impersonating = config()?;
        impersonating.auth_info.impersonate = Some("system:serviceaccount:a:b".into());
        let work = shared("test-member/uid/1", impersonating)?;
        assert_eq!(ask(&status).await?, "ok");
        assert_eq!(ask(&work).await?, "ok");
        assert_eq!(ask(&status).await?, "ok");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one connection for one key"
        );

        // New credentials (another resourceVersion) get a connection of their own.
        let rotated = shared("test-member/uid/2", config()?)?;
        assert_eq!(ask(&rotated).await?, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);

        // Once no client uses a transport, it goes; the next client connects afresh.
        drop((status, work));
        // The clients' buffer tasks let go of the transport as they wind down.
        let released = async {
            while TRANSPORTS
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get("test-member/uid/1")
                .is_some_and(|t| t.strong_count() > 0)
            {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(30), released).await?;
        let again = shared("test-member/uid/1", config()?)?;
        assert_eq!(ask(&again).await?, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        Ok(())
    }
}
