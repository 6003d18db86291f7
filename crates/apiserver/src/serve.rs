//! Serving over TLS: HTTP/1.1 and HTTP/2 (by ALPN) on hyper, each connection tagged with the
//! identity of its verified client certificate; graceful shutdown.
//!
//! Connections are bounded as kube-apiserver's Go server bounds them ([`ConnectionLimits`]): a
//! TLS handshake timeout, a header-read timeout (`ReadHeaderTimeout`, 32 s), an idle timeout
//! (`IdleTimeout`, 90 s: a connection with no request in flight for that long is closed) and a
//! cap on concurrent connections (accepting waits while it is reached). A request in flight,
//! such as a watch, keeps its connection open however long it runs.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::auth::ConnectionIdentity;

/// How long open connections get to finish once shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Limits on connections; the defaults are kube-apiserver's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// How long a TLS handshake may take.
    pub tls_handshake_timeout: Duration,
    /// How long a client may take to send a request's headers (HTTP/1.1); hyper also applies
    /// it while a kept-alive connection waits for its next request.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/1.1 and HTTP/2).
    pub idle_timeout: Duration,
    /// Connections served at once; further ones wait to be accepted.
    pub max_connections: usize,
    /// Concurrent streams per HTTP/2 connection.
    pub max_concurrent_streams: u32,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(32),
            idle_timeout: Duration::from_secs(90),
            max_connections: 4096,
            max_concurrent_streams: 250,
        }
    }
}

/// Accepts connections until `shutdown`, then lets open ones finish (watches end on shutdown).
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        // Wait for a free slot before accepting: past the cap, connections wait in the
        // listen backlog instead of costing a task, a TLS session and buffers each.
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            serve_connection(tcp, peer, acceptor, router, limits, watcher).await;
            drop(slot);
        });
    }
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(DRAIN_TIMEOUT) => {
            tracing::warn!("connections still open after the drain timeout; closing them");
        }
    }
}

/// Requests in flight on one connection, and since when it has had none.
struct Activity {
    in_flight: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl Activity {
    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// When the connection is due to be closed as idle; `None` while a request is in flight.
    fn idle_deadline(&self, idle_timeout: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let since = *self
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Some(since + idle_timeout)
    }
}

/// One request in flight, until its response body is finished or dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        *self
            .0
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Resolves once the connection has had no request in flight for `idle_timeout`.
async fn idle(activity: &Activity, idle_timeout: Duration) {
    loop {
        match activity.idle_deadline(idle_timeout) {
            Some(deadline) if deadline <= Instant::now() => return,
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            // Busy: look again later (a request ending restarts the idle clock).
            None => tokio::time::sleep(idle_timeout).await,
        }
    }
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    router: Router,
    limits: ConnectionLimits,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let tls = match tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let identity = ConnectionIdentity::from_certificate(
        tls.get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first()),
    );
    let activity = Arc::new(Activity {
        in_flight: AtomicUsize::new(0),
        idle_since: Mutex::new(Instant::now()),
    });
    let tracked = activity.clone();
    let service = tower::service_fn(move |mut req: http::Request<Incoming>| {
        req.extensions_mut().insert(identity.clone());
        let in_flight = tracked.begin();
        let response = router.clone().oneshot(req.map(axum::body::Body::new));
        async move {
            let response = response.await?;
            // The request stays in flight until its body is done (a watch: until it ends).
            Ok::<_, std::convert::Infallible>(response.map(|body| {
                axum::body::Body::new(body.map_frame(move |frame| {
                    let _ = &in_flight;
                    frame
                }))
            }))
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams);
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(tls), TowerToHyperService::new(service));
    tokio::select! {
        served = watcher.watch(conn) => {
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        () = idle(&activity, limits.idle_timeout) => {
            tracing::debug!(%peer, "closing an idle connection");
        }
    }
}
