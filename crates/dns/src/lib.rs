//! Authoritative DNS for `clusterset.local` (KEP-1645, Multi-Cluster Services), fed by the
//! ServiceImports and EndpointSlices of the cluster it serves.
//!
//! # The job
//!
//! A pod in a member cluster resolves `<svc>.<ns>.svc.clusterset.local`; the cluster's own DNS
//! (CoreDNS) forwards the `clusterset.local` zone to `atoll dns`, which answers from the
//! ServiceImports (`multicluster.x-k8s.io/v1beta1`) and the EndpointSlices labelled
//! `multicluster.kubernetes.io/service-name` in that same cluster:
//!
//! - `<svc>.<ns>.svc.<zone>` A/AAAA: a ClusterSetIP import's `spec.ips`; for a Headless import,
//!   every ready endpoint address in every source cluster.
//! - `_<port>._<proto>.<svc>.<ns>.svc.<zone>` SRV: per named port, targeting the service name
//!   (ClusterSetIP) or each endpoint's `<hostname>.<clusterid>.<svc>.<ns>.svc.<zone>`
//!   (Headless). SRV at the bare service name lists every port.
//! - `<hostname>.<clusterid>.<svc>.<ns>.svc.<zone>` A/AAAA for headless endpoints; an endpoint
//!   without a hostname is named by its address with `.`/`:` turned into `-`.
//! - `dns-version.<zone>` TXT, and SOA/NS at the apex.
//!
//! The DNS semantics live in [`model`], pure and tested without a network; [`server`] puts
//! them on UDP (several `SO_REUSEPORT` sockets) and TCP (hickory-server); [`feed`] fills the model from kube-runtime
//! watchers. [`run`] wires the three together for `atoll dns`.
//!
//! # Invariants
//!
//! - **Answers only from synced state.** Until the first complete list of both ServiceImports
//!   and EndpointSlices has been loaded, every query in the zone gets SERVFAIL, never a
//!   premature NXDOMAIN that resolvers would cache.
//! - **Never answers outside its zone.** A name outside the configured zone gets REFUSED; the
//!   server never recurses, forwards or caches.
//! - **No writes to any cluster.** The feed only lists and watches; `atoll dns` needs `get`,
//!   `list` and `watch` on `serviceimports.multicluster.x-k8s.io` and
//!   `endpointslices.discovery.k8s.io`, nothing else.
//!
//! # Must not depend on
//!
//! The controllers (`atoll-controllers`, `atoll-agent`), the hub API server (`atoll-apiserver`)
//! or the store (`atoll-store`). It reads the cluster it serves through the Kubernetes API
//! only, so it works the same whatever wrote the ServiceImports. Like every library here it
//! does not pick a `k8s-openapi` version.

pub mod feed;
/// The entry point of the fuzz target in `fuzz/` and its corpus-replay test; not an API.
#[doc(hidden)]
pub mod fuzzing;
pub mod model;
pub mod server;

use std::net::SocketAddr;
use std::sync::Arc;

pub use model::{Answer, Model, ZoneConfig};
pub use server::{DnsServer, RateLimit};
/// The cancellation token [`run`], [`DnsServer::run`] and [`feed::run`] stop on.
pub use tokio_util::sync::CancellationToken;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A zone or name-server name that is not a valid domain name.
    #[error("invalid domain name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The listen address could not be bound (UDP or TCP).
    #[error("binding {protocol} {addr}: {source}")]
    Bind {
        /// `udp` or `tcp`.
        protocol: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A listener of the running server failed.
    #[error("DNS server: {0}")]
    Serve(#[source] hickory_server::net::NetError),
}

/// What [`run`] serves.
#[derive(Clone, Debug)]
pub struct Options {
    /// UDP and TCP are both bound here. Port 0 picks a free port (the same for both).
    pub listen: SocketAddr,
    /// The zone, its name server and its TTL.
    pub zone: ZoneConfig,
    /// Response rate limiting over UDP, per client prefix.
    pub rate_limit: RateLimit,
}

/// Serves `options.zone` on `options.listen` from the ServiceImports and EndpointSlices that
/// `client` can see, until `cancel` fires (then shuts down gracefully and returns `Ok`) or a
/// listener fails.
///
/// Binding happens before anything else, so a bad address fails at once; the feed then
/// retries the API server for as long as it takes, answering SERVFAIL meanwhile.
pub async fn run(
    client: kube::Client,
    options: Options,
    cancel: CancellationToken,
) -> Result<(), Error> {
    let model = Arc::new(Model::new(options.zone));
    let server = DnsServer::bind(options.listen, model.clone())
        .await?
        .with_rate_limit(options.rate_limit);
    tracing::info!(
        listen = %server.local_addr(),
        zone = %model.config().zone(),
        "serving DNS (SERVFAIL until the first sync)"
    );
    // The feed stops with the server, whether the server stopped on `cancel` or on an error.
    let feed_stop = cancel.child_token();
    let serve = async {
        let result = server.run(cancel.clone()).await;
        feed_stop.cancel();
        result
    };
    let (result, ()) = tokio::join!(serve, feed::run(client, model, feed_stop.clone()));
    result
}
