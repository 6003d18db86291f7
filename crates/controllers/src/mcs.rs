//! Multi-Cluster Services in push mode: the hub runs [`atoll_mcs`]'s aggregator, and for
//! every push-mode cluster (an Atoll-managed ClusterProfile whose member credentials the
//! manager namespace holds) the member syncer, with the member's credentials and a hub
//! client used only in that cluster's namespace: the same code the agent runs in pull mode.
//!
//! The set of syncers follows a watch on ClusterProfiles, one worker per profile, as the
//! status controller does; the aggregator reads the same watch's cache (one watch, shared with
//! the status and Work controllers when they run together). A cluster without member
//! credentials (pull mode) gets no syncer here; its agent runs it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use atoll_api::cluster_profile::ClusterProfile;
use atoll_api::conditions;
use atoll_mcs::hub::{HubConfig, SharedProfiles};
use atoll_mcs::member::MemberConfig;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef};
use kube::{Client, ResourceExt};
use tokio::sync::Notify;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, warn};

use crate::inventory::profiles::{ClusterWorkers, Gone, ProfileEvents, ProfileFeed, WorkerSet};
use crate::inventory::{
    CLUSTER_NAMESPACE_PREFIX, MEMBER_CLUSTER_ROLE, cluster_namespace, member_from_secret,
    profile_cluster_id,
};
use crate::kubeutil::is_managed;
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

/// How soon a worker looks again for credentials or a cluster ID it does not have yet; the
/// delay doubles up to [`WAIT_MAX`] (a pull-mode cluster never gets credentials here).
const WAIT: Duration = Duration::from_secs(1);
const WAIT_MAX: Duration = Duration::from_secs(30);

/// Runs the MCS aggregator and one member syncer per push-mode cluster, with a watch of
/// profiles of its own, until `shutdown`.
pub async fn run(hub: Client, manager_namespace: String, shutdown: impl Future<Output = ()>) {
    let mut feed = ProfileFeed::new();
    let profiles = feed.subscribe();
    tokio::join!(
        feed.run(hub.clone(), &manager_namespace),
        run_with(hub.clone(), manager_namespace.clone(), profiles, shutdown),
    );
}

/// Runs the MCS aggregator and one member syncer per push-mode cluster in `profiles` (a
/// shared watch) until `shutdown` or until the watch stops.
pub async fn run_with(
    hub: Client,
    manager_namespace: String,
    profiles: ProfileEvents,
    shutdown: impl Future<Output = ()>,
) {
    // The aggregator reads the same profiles, woken by `follow_profiles` on every change.
    let profiles_changed = Arc::new(Notify::new());
    let aggregator = atoll_mcs::hub::run_with_profiles(
        HubConfig {
            hub: hub.clone(),
            manager_namespace: manager_namespace.clone(),
            cluster_namespace_prefix: CLUSTER_NAMESPACE_PREFIX.to_owned(),
        },
        Some(SharedProfiles {
            store: profiles.cache().clone(),
            changed: profiles_changed.clone(),
        }),
        std::future::pending(),
    );
    tokio::select! {
        () = shutdown => {},
        () = aggregator => {},
        () = follow_profiles(hub, manager_namespace, profiles, &profiles_changed) => {},
    }
}

async fn follow_profiles(
    hub: Client,
    manager_namespace: String,
    mut profiles: ProfileEvents,
    profiles_changed: &Notify,
) {
    let mut hooks = MemberSyncers {
        cache: profiles.cache().clone(),
        hub,
        manager_namespace,
    };
    // Dropped at the end, which aborts every syncer.
    let mut workers = WorkerSet::new();
    while let Some(event) = profiles.next().await {
        profiles_changed.notify_one();
        workers.handle(&event, &mut hooks);
    }
}

/// The member syncers: one per push-mode cluster, aborted when dropped.
struct MemberSyncers {
    hub: Client,
    cache: reflector::Store<ClusterProfile>,
    manager_namespace: String,
}

impl ClusterWorkers for MemberSyncers {
    type Worker = AbortOnDropHandle<()>;

    fn start(&mut self, profile: &ClusterProfile) -> Option<Self::Worker> {
        // A pull-mode cluster's agent runs its syncer; the hub holds no credentials.
        if crate::inventory::is_pull_mode(profile) {
            return None;
        }
        let name = profile.name_any();
        debug!(cluster = %name, "MCS: following cluster");
        Some(AbortOnDropHandle::new(tokio::spawn(member_worker(
            self.hub.clone(),
            self.cache.clone(),
            self.manager_namespace.clone(),
            name,
        ))))
    }

    fn stop(&mut self, name: String, worker: Option<Self::Worker>, why: Gone) {
        if worker.is_some() && why == Gone::Deleted {
            info!(cluster = %name, "MCS: cluster gone; stopping its syncer");
        }
        // Dropping the worker aborts it.
        drop(worker);
    }
}

/// Waits for the cluster's credentials and ID, then runs its member syncer until aborted.
async fn member_worker(
    hub: Client,
    cache: reflector::Store<ClusterProfile>,
    manager_namespace: String,
    name: String,
) {
    let namespace = cluster_namespace(&name);
    let key = ObjectRef::new(&name).within(&manager_namespace);
    let mut wait = WAIT;
    let (member, cluster_id) = loop {
        // The ID comes from the cached profile, so waiting for it costs the hub no request;
        // the credentials are read once it is there.
        match cache.get(&key).and_then(|p| profile_cluster_id(&p)) {
            None => debug!(cluster = %name, "MCS: no cluster ID yet"),
            Some(cluster_id) => match member_from_secret(&hub, &manager_namespace, &name).await {
                Ok(Some(member)) => break (member, cluster_id),
                Ok(None) => debug!(cluster = %name, "MCS: no member credentials (pull mode?)"),
                Err(error) => warn!(cluster = %name, %error, "MCS: member credentials unusable"),
            },
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(WAIT_MAX);
    };
    let profiles: Api<ClusterProfile> = Api::namespaced(hub.clone(), &manager_namespace);
    let mut recheck = atoll_mcs::member::CRD_RECHECK;
    // What was last logged: one line per change.
    let mut logged: Option<String> = None;
    loop {
        let wait = match atoll_mcs::member::missing_crds(&member).await {
            Ok(missing) => {
                let served = missing.is_none();
                if missing != logged {
                    match &missing {
                        Some(why) => warn!(
                            cluster = %name,
                            "MCS paused for this cluster: {why}; {}",
                            atoll_mcs::member::MCS_CRDS_FIX
                        ),
                        None if logged.is_some() => {
                            info!(cluster = %name, "MCS CRDs now served by the member")
                        }
                        None => {}
                    }
                    logged = missing.clone();
                }
                match publish_crd_condition(&profiles, &cache, &key, missing.as_deref()).await {
                    Ok(()) => {}
                    // A stale cached profile (409) or a hub hiccup: try again soon.
                    Err(error) => {
                        debug!(cluster = %name, %error, "MCS: writing the CRD condition; retrying");
                        tokio::time::sleep(WAIT).await;
                        continue;
                    }
                }
                if served {
                    break;
                }
                let wait = recheck;
                recheck = (recheck * 2).min(CRD_RECHECK_MAX);
                wait
            }
            Err(error) => {
                debug!(cluster = %name, %error, "MCS: checking the member's CRDs; retrying");
                WAIT_MAX
            }
        };
        tokio::time::sleep(wait).await;
    }
    let member_owner = loop {
        match member_role_owner(&member).await {
            Ok(owner) => break owner,
            Err(error) => warn!(cluster = %name, %error, "MCS: reading Atoll's member ClusterRole"),
        }
        tokio::time::sleep(WAIT).await;
    };
    info!(cluster = %name, %cluster_id, "MCS: syncing member");
    // Boxed: the syncer's state is large, and a worker still waiting above should not
    // reserve it.
    Box::pin(atoll_mcs::member::run(
        MemberConfig {
            hub,
            hub_namespace: namespace,
            member,
            cluster_name: name,
            cluster_id,
            member_owner,
        },
        std::future::pending(),
    ))
    .await;
}

/// The ClusterProfile condition that says whether MCS runs for the cluster: `False` with
/// reason [`REASON_CRDS_MISSING`] (and the fix in its message) while the member lacks the MCS
/// CRDs, `True` once it serves them. Absent on clusters that never lacked them.
pub const CONDITION_MCS_READY: &str = "MultiClusterServicesReady";
/// The member does not serve ServiceExport or ServiceImport.
pub const REASON_CRDS_MISSING: &str = "MCSCRDsMissing";
/// The member serves ServiceExport and ServiceImport.
pub const REASON_CRDS_SERVED: &str = "MCSCRDsServed";

/// Longest pause between checks of a member that lacks the MCS CRDs.
const CRD_RECHECK_MAX: Duration = Duration::from_secs(600);

/// Sets [`CONDITION_MCS_READY`] on the cluster's profile when it changed: `missing` says what
/// the member lacks, `None` that it serves the CRDs (written only over an earlier `False`).
/// The whole list is written conditional on the cached profile's resourceVersion, as the
/// status controller writes it, so no other condition is lost. The status controller writes
/// it so for what a pull-mode agent reports.
pub(crate) async fn publish_crd_condition(
    profiles: &Api<ClusterProfile>,
    cache: &reflector::Store<ClusterProfile>,
    key: &ObjectRef<ClusterProfile>,
    missing: Option<&str>,
) -> Result<(), kube::Error> {
    let Some(profile) = cache.get(key) else {
        return Ok(());
    };
    let mut list = profile
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let (state, reason, message) = match missing {
        Some(why) => (
            conditions::FALSE,
            REASON_CRDS_MISSING,
            format!("{why}; {}", atoll_mcs::member::MCS_CRDS_FIX),
        ),
        None if conditions::find(&list, CONDITION_MCS_READY).is_none() => return Ok(()),
        None => (
            conditions::TRUE,
            REASON_CRDS_SERVED,
            "the member serves ServiceExport and ServiceImport".to_owned(),
        ),
    };
    let changed = conditions::set(
        &mut list,
        conditions::condition(
            CONDITION_MCS_READY,
            state,
            reason,
            message,
            profile.metadata.generation,
            Time(Timestamp::now()),
        ),
    );
    if !changed {
        return Ok(());
    }
    profiles
        .patch_status(
            &profile.name_any(),
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
                "metadata": {"resourceVersion": profile.metadata.resource_version},
                "status": {"conditions": list},
            })),
        )
        .await?;
    Ok(())
}

/// Atoll's ClusterRole in the member as an owner: what MCS writes there goes with it at
/// unjoin. `None` if the role is missing or not Atoll's (then nothing is owned).
async fn member_role_owner(member: &Client) -> Result<Option<OwnerReference>, kube::Error> {
    let role = Api::<ClusterRole>::all(member.clone())
        .get_opt(MEMBER_CLUSTER_ROLE)
        .await?;
    Ok(role.filter(is_managed).and_then(|role| {
        Some(OwnerReference {
            api_version: "rbac.authorization.k8s.io/v1".into(),
            kind: "ClusterRole".into(),
            name: MEMBER_CLUSTER_ROLE.into(),
            uid: role.metadata.uid?,
            ..Default::default()
        })
    }))
}
