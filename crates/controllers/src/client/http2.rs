//! A member's connection, spoken in HTTP/2 through the `h2` crate rather than hyper's client.
//!
//! hyper's client hands every request to its connection task over a tokio channel, and a tokio
//! channel allocates its slots in blocks of 32 messages (a request is about 300 bytes, so a
//! block is about 9.5 KiB). A connection that lives for days keeps two such blocks for good
//! once it has carried 32 requests: at a thousand members that was 19 MiB of the hub's memory
//! for nothing but a queue that is almost always empty (measured with heaptrack; see
//! BENCHMARKS.md). `h2`'s `SendRequest` writes a request into the connection's shared state
//! directly, and nothing per request outlives the request.
//!
//! What hyper's client did that this keeps: TLS with ALPN (`h2`, then `http/1.1`), a connect
//! timeout, TCP_NODELAY, one connection per member made on first use and again after it
//! fails, and flow control. Servers that do not offer `h2` (or plain `http://` URLs) are
//! served by hyper's HTTP/1.1 client unchanged. What it adds: an HTTP/2 PING every
//! [`KEEPALIVE_INTERVAL`], so that a member that vanished without closing its connection
//! (a crashed node, a dropped route) is noticed and the next request reconnects; client-go
//! does the same (`ReadIdleTimeout` 30 s, `PingTimeout` 15 s).

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tower::BoxError;
use tracing::debug;

/// How often an idle member connection is checked with a PING.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a PING may go unanswered before the connection is given up.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(15);

/// Per-stream and per-connection receive windows. Large enough that a big list from a member
/// on a distant network is not throttled by round trips (hyper's defaults are 2 and 5 MiB);
/// data arrives only as fast as the hub reads it, so the windows cost no memory while idle.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;

/// The kubeconfig's timeouts: `connect` bounds TCP, TLS and the HTTP/2 handshake; `read` and
/// `write` apply to the HTTP/1.1 fallback's connections (an HTTP/2 connection carries
/// long-lived watches, so its liveness is checked with PINGs instead).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Connecting.
    pub connect: Option<Duration>,
    /// Between reads (HTTP/1.1 only).
    pub read: Option<Duration>,
    /// Between writes (HTTP/1.1 only).
    pub write: Option<Duration>,
}

/// A response body from either protocol.
pub enum ResponseBody {
    /// A stream on the member's HTTP/2 connection.
    Http2(h2::RecvStream),
    /// A response from the HTTP/1.1 client.
    Http1(hyper::body::Incoming),
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Http1(body) => Pin::new(body).poll_frame(cx).map_err(BoxError::from),
            ResponseBody::Http2(stream) => {
                if !stream.is_end_stream() {
                    match ready!(stream.poll_data(cx)) {
                        Some(Ok(data)) => {
                            // Reading is what opens the window again: the member sends more
                            // only as fast as the hub consumes.
                            let _ = stream.flow_control().release_capacity(data.len());
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        Some(Err(error)) => return Poll::Ready(Some(Err(error.into()))),
                        None => {}
                    }
                }
                match ready!(stream.poll_trailers(cx)) {
                    Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
                    Ok(None) => Poll::Ready(None),
                    Err(error) => Poll::Ready(Some(Err(error.into()))),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Http1(body) => body.is_end_stream(),
            ResponseBody::Http2(stream) => stream.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Http1(body) => body.size_hint(),
            ResponseBody::Http2(_) => SizeHint::default(),
        }
    }
}

/// The live HTTP/2 connection, or what was learned about the server.
enum State {
    /// No connection yet, or the last one ended.
    Unconnected,
    /// An HTTP/2 connection to `authority`; `closed` turns true when it ends.
    Http2 {
        authority: Authority,
        sender: h2::client::SendRequest<Bytes>,
        closed: Arc<AtomicBool>,
    },
    /// `authority` chose HTTP/1.1 in the TLS handshake.
    Http1Only { authority: Authority },
}

/// One member's connection, shared by every client built for it.
pub struct MemberConnection {
    tls: Arc<rustls::ClientConfig>,
    /// The name to verify the server's certificate against, where the kubeconfig names one
    /// (`tls-server-name`); otherwise the URL's host.
    tls_server_name: Option<ServerName<'static>>,
    timeouts: Timeouts,
    /// Made on first use: an HTTP/2 member never needs it.
    http1: OnceLock<super::Http1Client>,
    /// Held while connecting, so that concurrent first requests make one connection.
    state: tokio::sync::Mutex<State>,
}

impl MemberConnection {
    /// A connection (made on first use) with `tls`, which must offer ALPN `h2` to get HTTP/2.
    pub fn new(
        tls: Arc<rustls::ClientConfig>,
        tls_server_name: Option<&str>,
        timeouts: Timeouts,
    ) -> Result<MemberConnection, BoxError> {
        let tls_server_name = tls_server_name
            .map(|name| ServerName::try_from(name.to_owned()))
            .transpose()
            .map_err(|e| format!("tls-server-name: {e}"))?;
        Ok(MemberConnection {
            tls,
            tls_server_name,
            timeouts,
            http1: OnceLock::new(),
            state: tokio::sync::Mutex::new(State::Unconnected),
        })
    }

    /// Sends `request` (whose URI is absolute) and returns the response head as soon as it
    /// arrives; the body streams.
    pub async fn send(
        &self,
        request: Request<kube::client::Body>,
    ) -> Result<Response<ResponseBody>, BoxError> {
        let authority = match (request.uri().scheme(), request.uri().authority()) {
            (Some(scheme), Some(authority)) if *scheme == Scheme::HTTPS => authority.clone(),
            _ => return self.send_http1(request).await,
        };
        // A connection that failed before this request went out is replaced once; a request
        // that reached the member is never sent twice.
        for attempt in 0..2 {
            let Some(sender) = self.sender(&authority).await? else {
                return self.send_http1(request).await;
            };
            match sender.ready().await {
                Ok(sender) => return send_http2(sender, request).await,
                Err(error) if attempt == 0 => {
                    debug!(%authority, %error, "member connection unusable; reconnecting");
                    self.forget(&authority).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
        Err("no usable connection to the member".into())
    }

    async fn send_http1(
        &self,
        request: Request<kube::client::Body>,
    ) -> Result<Response<ResponseBody>, BoxError> {
        let http1 = self
            .http1
            .get_or_init(|| super::http1_client(&self.tls, self.timeouts));
        let response = http1.request(request).await?;
        Ok(response.map(ResponseBody::Http1))
    }

    /// The sender for `authority`'s HTTP/2 connection, connecting if there is none; `None`
    /// when the server speaks only HTTP/1.1.
    async fn sender(
        &self,
        authority: &Authority,
    ) -> Result<Option<h2::client::SendRequest<Bytes>>, BoxError> {
        let mut state = self.state.lock().await;
        match &*state {
            State::Http2 {
                authority: current,
                sender,
                closed,
            } if current == authority && !closed.load(Ordering::Acquire) => {
                return Ok(Some(sender.clone()));
            }
            State::Http1Only { authority: current } if current == authority => return Ok(None),
            _ => {}
        }
        let connecting = self.connect(authority);
        let connected = match self.timeouts.connect {
            Some(limit) => tokio::time::timeout(limit, connecting)
                .await
                .map_err(|_| format!("connecting to {authority}: no answer within {limit:?}"))?,
            None => connecting.await,
        }?;
        match connected {
            Some((sender, closed)) => {
                *state = State::Http2 {
                    authority: authority.clone(),
                    sender: sender.clone(),
                    closed,
                };
                Ok(Some(sender))
            }
            None => {
                *state = State::Http1Only {
                    authority: authority.clone(),
                };
                Ok(None)
            }
        }
    }

    /// Drops the connection to `authority`, so that the next request makes a new one.
    async fn forget(&self, authority: &Authority) {
        let mut state = self.state.lock().await;
        if matches!(&*state, State::Http2 { authority: current, .. } if current == authority) {
            *state = State::Unconnected;
        }
    }

    /// Connects with TLS; `None` when the server chose HTTP/1.1.
    async fn connect(
        &self,
        authority: &Authority,
    ) -> Result<Option<(h2::client::SendRequest<Bytes>, Arc<AtomicBool>)>, BoxError> {
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(443);
        let server_name = match &self.tls_server_name {
            Some(name) => name.clone(),
            None => ServerName::try_from(host.to_owned())
                .map_err(|e| format!("{host} is not a valid TLS server name: {e}"))?,
        };
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("connecting to {authority}: {e}"))?;
        // HTTP/2 writes a request as separate HEADERS and DATA frames: without TCP_NODELAY,
        // Nagle holds the second until the first is acknowledged (a delayed ACK, ~40 ms).
        tcp.set_nodelay(true)?;
        let tls = TlsConnector::from(self.tls.clone())
            .connect(server_name, tcp)
            .await?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2".as_slice()) {
            // The one handshake is wasted; hyper's client connects again, once, and keeps it.
            return Ok(None);
        }
        let (sender, connection) = h2::client::Builder::new()
            .enable_push(false)
            // An HPACK table of size 0 asks the member not to index response headers, so the
            // connection keeps no decoder table (up to 4 KiB per member otherwise, mostly
            // headers that change with every response, such as Date and Audit-Id).
            .header_table_size(0)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake::<_, Bytes>(tls)
            .await?;
        let closed = Arc::new(AtomicBool::new(false));
        tokio::spawn(drive(connection, authority.clone(), closed.clone()));
        Ok(Some((sender, closed)))
    }
}

/// Runs the connection until it ends: every sender is gone (it then closes gracefully), the
/// member closes it, or a PING goes unanswered.
async fn drive<T>(
    mut connection: h2::client::Connection<T, Bytes>,
    authority: Authority,
    closed: Arc<AtomicBool>,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let ping_pong = connection.ping_pong();
    let keepalive = async move {
        let Some(mut ping_pong) = ping_pong else {
            return std::future::pending::<String>().await;
        };
        loop {
            tokio::time::sleep(KEEPALIVE_INTERVAL).await;
            match tokio::time::timeout(KEEPALIVE_TIMEOUT, ping_pong.ping(h2::Ping::opaque())).await
            {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => return error.to_string(),
                Err(_) => return format!("no answer to a PING within {KEEPALIVE_TIMEOUT:?}"),
            }
        }
    };
    tokio::select! {
        result = &mut connection => {
            if let Err(error) = result {
                debug!(%authority, %error, "member connection ended");
            }
        }
        why = keepalive => debug!(%authority, %why, "giving up the member connection"),
    }
    closed.store(true, Ordering::Release);
}

/// Headers that HTTP/2 forbids (RFC 9113 §8.2.2); the `h2` crate refuses requests that carry
/// them.
const CONNECTION_HEADERS: [&str; 6] = [
    "connection",
    "transfer-encoding",
    "upgrade",
    "host",
    "keep-alive",
    "proxy-connection",
];

async fn send_http2(
    mut sender: h2::client::SendRequest<Bytes>,
    request: Request<kube::client::Body>,
) -> Result<Response<ResponseBody>, BoxError> {
    let (mut head, body) = request.into_parts();
    for name in CONNECTION_HEADERS {
        head.headers.remove(name);
    }
    // The API's request bodies are whole objects, already in memory.
    let mut body = body.collect().await?.to_bytes();
    let (response, mut stream) =
        sender.send_request(Request::from_parts(head, ()), body.is_empty())?;
    while !body.is_empty() {
        stream.reserve_capacity(body.len());
        match poll_fn(|cx| stream.poll_capacity(cx)).await {
            Some(Ok(0)) => {}
            Some(Ok(granted)) => {
                let chunk = body.split_to(granted.min(body.len()));
                stream.send_data(chunk, body.is_empty())?;
            }
            Some(Err(error)) => return Err(error.into()),
            None => return Err("the member closed the stream before the request was sent".into()),
        }
    }
    let response = response.await?;
    Ok(response.map(ResponseBody::Http2))
}

#[cfg(test)]
mod tests {
    use super::super::test_server::{Body, TestServer, full};
    use super::super::{MemberHttp, shared};
    use http_body_util::BodyExt;
    use hyper::body::Incoming;

    type TestResult = Result<(), tower::BoxError>;

    /// Answers with the request's body, and its protocol in `x-version`.
    async fn echo(request: http::Request<Incoming>) -> http::Response<Body> {
        let version = format!("{:?}", request.version());
        let body = match request.into_body().collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) => error.to_string().into(),
        };
        let mut response = http::Response::new(full(body));
        if let Ok(value) = http::HeaderValue::from_str(&version) {
            response.headers_mut().insert("x-version", value);
        }
        response
    }

    async fn post(
        member: &MemberHttp,
        body: Vec<u8>,
    ) -> Result<(String, Vec<u8>), tower::BoxError> {
        let request = http::Request::post("/echo").body(body)?;
        let response = member.send(request).await?;
        let version = response
            .headers()
            .get("x-version")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = response.into_body().collect().await?.to_bytes().to_vec();
        Ok((version, body))
    }

    #[tokio::test]
    async fn clients_of_one_member_share_an_http2_connection_and_reconnect_after_a_cut()
    -> TestResult {
        let server = TestServer::start(&[b"h2", b"http/1.1"], echo).await?;
        let config = server.config()?;
        let kube_client = shared("member-a/uid/1", config.clone())?;
        let raw = MemberHttp::shared("member-a/uid/1", &config)?;
        let request = http::Request::post("/echo").body(b"through kube".to_vec())?;
        assert_eq!(kube_client.request_text(request).await?, "through kube");
        assert_eq!(
            post(&raw, b"raw".to_vec()).await?,
            ("HTTP/2.0".to_owned(), b"raw".to_vec())
        );
        assert_eq!(server.connections(), 1, "one connection for both clients");

        // The server goes away without a word; a later request connects again.
        server.cut_connections();
        let mut answered = None;
        for _ in 0..50 {
            match post(&raw, b"again".to_vec()).await {
                Ok(answer) => {
                    answered = Some(answer);
                    break;
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
        assert_eq!(answered, Some(("HTTP/2.0".to_owned(), b"again".to_vec())));
        assert_eq!(server.connections(), 2);
        let request = http::Request::post("/echo").body(b"kube too".to_vec())?;
        assert_eq!(kube_client.request_text(request).await?, "kube too");
        assert_eq!(server.connections(), 2, "the new connection is shared too");
        Ok(())
    }

    #[tokio::test]
    async fn bodies_larger_than_the_flow_control_windows_go_both_ways() -> TestResult {
        let server = TestServer::start(&[b"h2"], echo).await?;
        let raw = MemberHttp::new(&server.config()?)?;
        // Larger than every window on either side (the default 64 KiB, and 1 MiB here).
        let big: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let concurrent =
            futures::future::try_join_all((0..3).map(|_| post(&raw, big.clone()))).await?;
        for (version, body) in concurrent {
            assert_eq!(version, "HTTP/2.0");
            assert!(body == big, "echoed {} bytes of {}", body.len(), big.len());
        }
        assert_eq!(server.connections(), 1);
        Ok(())
    }

    #[tokio::test]
    async fn members_without_http2_are_served_over_http1() -> TestResult {
        let server = TestServer::start(&[b"http/1.1"], echo).await?;
        let raw = MemberHttp::new(&server.config()?)?;
        for _ in 0..3 {
            assert_eq!(
                post(&raw, b"old".to_vec()).await?,
                ("HTTP/1.1".to_owned(), b"old".to_vec())
            );
        }
        // One handshake to learn the protocol, then hyper's kept-alive connection.
        assert_eq!(server.connections(), 2);
        Ok(())
    }

    #[tokio::test]
    async fn a_server_the_ca_did_not_sign_is_refused() -> TestResult {
        let server = TestServer::start(&[b"h2"], echo).await?;
        let other = TestServer::start(&[b"h2"], echo).await?;
        let mut config = other.config()?;
        config.cluster_url = server.url.parse()?;
        let raw = MemberHttp::new(&config)?;
        let error = match post(&raw, Vec::new()).await {
            Ok(answer) => return Err(format!("expected a TLS failure, got {answer:?}").into()),
            Err(error) => error.to_string(),
        };
        assert!(error.contains("certificate"), "{error}");
        Ok(())
    }
}
