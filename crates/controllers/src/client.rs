//! Clients for member clusters that share one connection per member.
//!
//! kube's default client speaks HTTP/1.1, so every watch held open on a member takes a TLS
//! connection of its own, and every probe or write while watches stream takes another. The
//! hub holds several watches per member (ClusterProperties, and the Work and MCS controllers'
//! watches), so for a fleet of a thousand members connections and their buffers dominate the
//! hub's memory. The client built here offers HTTP/2 (ALPN `h2`, falling back to HTTP/1.1):
//! every request and watch to a member is a stream on one connection.
//!
//! The status, Work and MCS controllers each build their own client for a member (the Work
//! applier's impersonates a narrower identity), but they reach the same API server with the
//! same TLS identity: [`shared`] gives them one transport, so a member costs one connection
//! and one TLS configuration however many controllers talk to it. An HTTP/2 connection costs
//! some 30 KiB in buffers that hyper and h2 do not let a client shrink (a 16 KiB write
//! buffer, an 8 KiB read buffer, the HPACK decoder's 4 KiB), so the count of connections is
//! what matters.
//!
//! It keeps everything else kube's client does with a kubeconfig: the base URI, TLS (CA, client
//! certificates), authentication (tokens, exec plugins) and impersonation headers.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::ConfigExt;
use tower::{BoxError, ServiceBuilder};

type Connector = hyper_timeout::TimeoutConnector<hyper_rustls::HttpsConnector<HttpConnector>>;
type HyperClient = hyper_util::client::legacy::Client<Connector, kube::client::Body>;

/// One member's connection pool, shared by every client built for it with the same key.
#[derive(Clone)]
struct Transport(Arc<HyperClient>);

impl tower::Service<http::Request<kube::client::Body>> for Transport {
    type Response = <HyperClient as tower::Service<http::Request<kube::client::Body>>>::Response;
    type Error = hyper_util::client::legacy::Error;
    type Future = hyper_util::client::legacy::ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<kube::client::Body>) -> Self::Future {
        self.0.request(request)
    }
}

/// Live transports by key. Entries are weak: a transport goes (and its connection closes)
/// once no client uses it, as when a cluster is unjoined or its credentials change.
static TRANSPORTS: LazyLock<Mutex<HashMap<String, Weak<HyperClient>>>> =
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
    let mut transports = TRANSPORTS.lock().unwrap_or_else(PoisonError::into_inner);
    let live = transports.get(key).and_then(Weak::upgrade);
    let transport = match live {
        Some(transport) => transport,
        None => {
            let transport = Arc::new(transport(&config)?);
            transports.retain(|_, t| t.strong_count() > 0);
            transports.insert(key.to_owned(), Arc::downgrade(&transport));
            transport
        }
    };
    drop(transports);
    client(config, Transport(transport))
}

fn transport(config: &kube::Config) -> Result<HyperClient, kube::Error> {
    let mut tls = config.rustls_client_config()?;
    // No TLS session resumption: it saves a round trip when a connection is re-established,
    // which a member's one long-lived connection seldom is, while rustls's default session
    // cache costs about 14 KiB per TLS configuration, and there is one per member.
    tls.resumption = rustls::client::Resumption::disabled();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    // HTTP/2 writes a request as separate HEADERS and DATA frames: without TCP_NODELAY, Nagle
    // holds the second until the first is acknowledged (a delayed ACK, ~40 ms per request).
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    let mut connector = hyper_timeout::TimeoutConnector::new(https);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    let mut builder = hyper_util::client::legacy::Builder::new(TokioExecutor::new());
    // An HPACK table of size 0 asks the member not to index response headers, so the
    // connection keeps no decoder table (up to 4 KiB per member otherwise, much of it headers
    // that change with every response, such as Date and Audit-Id).
    builder.http2_header_table_size(0);
    Ok(builder.build(connector))
}

fn client(config: kube::Config, transport: Transport) -> Result<kube::Client, kube::Error> {
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(transport);
    Ok(kube::Client::new(service, config.default_namespace))
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
