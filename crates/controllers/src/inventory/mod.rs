//! Cluster inventory: registering member clusters with the hub.
//!
//! Push mode ([`join`], [`unjoin`]): the hub holds a credential for the member. Joining leaves
//! in the member only what Atoll needs there, with least privilege: the About API
//! (ClusterProperty CRD and the two well-known properties) and one identity,
//! `atoll-system/atoll-hub`, allowed to manage ClusterProperties and read health endpoints.
//! For the Work applier it adds a second identity, `atoll-system/atoll-work`, which may do
//! anything (Works carry arbitrary manifests) and which the hub's identity may only
//! impersonate. On the hub it creates the cluster's namespace (its Works), and in the manager
//! namespace the member's kubeconfig as a Secret (only inline credentials; see
//! [`credentials`]) and a ClusterProfile; tenants of the cluster's namespace reach neither.
//!
//! Every step is safe to repeat, so an interrupted join is finished by joining again, and a
//! join that fails removes what it created.

pub mod credentials;
mod join;
mod names;
pub mod profiles;
pub mod property_watch;
pub mod pull;
pub mod status;

pub(crate) use join::member_config_from_secret_data;
pub use join::{
    JoinError, JoinOptions, Joined, UnjoinOptions, Unjoined, install_about_api, join, leave_member,
    member_from_secret, member_http_from_secret, profile_cluster_id, resolve_cluster_id, unjoin,
    work_member_from_secret,
};
pub use names::*;

/// Requests to the hub that every per-cluster worker (status, Work, MCS) makes at about the
/// same moment, such as reading its member's credentials when it starts, or a fleet's first
/// status writes, each take a permit first. kube's hub client speaks HTTP/1.1 and keeps every
/// connection it opened for 90 s of idleness, so a thousand workers starting together would
/// otherwise open, and keep, hundreds of TLS connections to the hub.
static HUB_REQUESTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(16);

/// A permit for one such request (`None` only if the semaphore were closed, which it never is).
pub(crate) async fn hub_request_permit() -> Option<tokio::sync::SemaphorePermit<'static>> {
    HUB_REQUESTS.acquire().await.ok()
}
