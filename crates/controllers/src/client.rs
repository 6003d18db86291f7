//! Clients for member clusters that share one connection per member.
//!
//! kube's default client speaks HTTP/1.1, so every watch held open on a member takes a TLS
//! connection of its own, and every probe or write while watches stream takes another. The
//! hub holds several watches per member (ClusterProperties, and the Work and MCS controllers'
//! watches), so for a fleet of a thousand members connections and their buffers dominate the
//! hub's memory. The client built here offers HTTP/2 (ALPN `h2`, falling back to HTTP/1.1):
//! every request and watch to a member is a stream on one connection.
//!
//! It keeps everything else kube's client does with a kubeconfig: the base URI, TLS (CA, client
//! certificates), authentication (tokens, exec plugins) and impersonation headers.

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::ConfigExt;
use tower::{BoxError, ServiceBuilder};

/// A client for `config` that multiplexes every request over one HTTP/2 connection where the
/// server offers it.
pub fn multiplexed(config: kube::Config) -> Result<kube::Client, kube::Error> {
    let tls = config.rustls_client_config()?;
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
    let client: hyper_util::client::legacy::Client<_, kube::client::Body> =
        hyper_util::client::legacy::Builder::new(TokioExecutor::new()).build(connector);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(client);
    Ok(kube::Client::new(service, config.default_namespace))
}
