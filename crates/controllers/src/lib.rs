//! Hub-side controllers and the operations that set them up.
//!
//! - [`inventory`]: registration of member clusters in push mode (`join`, `unjoin`): the
//!   cluster's namespace and credentials on the hub, its ClusterProfile, and the least-privilege
//!   footprint Atoll keeps in the member (the About API and one identity).
//! - [`kubeutil`]: idempotent writes shared by every controller.
//! - [`client`]: member clients multiplexing every watch and request over one HTTP/2
//!   connection per member.
//! - [`mcs`]: Multi-Cluster Services in push mode (the aggregator and one member syncer per
//!   push-mode cluster, from `atoll-mcs`).
//! - [`work`]: push-mode Work distribution: one `atoll_work` applier per joined cluster.
//!
//! Invariants:
//! - Every write is safe to repeat: create-or-keep, never blind create.
//! - Atoll deletes only what it created: objects it creates carry [`kubeutil::MANAGED_BY`].
//! - Talks to clusters only through kube clients, so it works against any Kubernetes hub.
//!
//! Must not depend on: the hub API server, the store, the agent, DNS.

pub mod client;
/// The entry point of the kubeconfig fuzz target in `fuzz/` and its corpus-replay test; not an
/// API.
#[doc(hidden)]
pub mod fuzzing;
pub mod inventory;
pub mod kubeutil;
pub mod leader;
pub mod mcs;
pub mod work;
