//! The hub's side of MCS: what every cluster published, aggregated into what every cluster
//! imports.
//!
//! The aggregator reads, across every cluster namespace, the ServiceExports and EndpointSlices
//! the member syncers published (role `export`), and the Atoll-managed ClusterProfiles. For
//! each service (namespace sameness: the same namespace and name in every cluster) it
//! computes the ServiceImport with [`aggregate`](crate::aggregate::aggregate) and writes, into
//! the hub namespace of **every joined cluster**, that ServiceImport and one EndpointSlice
//! per slice of every exporting cluster (role `import`). It records each export's
//! `Conflict` condition in the hub ServiceExport's status.
//!
//! A cluster counts as joined while its ClusterProfile exists and is not being deleted. A
//! joined cluster tainted `atoll.io/unreachable` or `atoll.io/not-ready` (the inventory's
//! status controller sets them) is unhealthy: its endpoints leave every import and it leaves
//! `status.clusters`, while its export still shapes the import, so that a short outage does not
//! reallocate every cluster's ClusterSet IP. When the taint goes, its endpoints come back.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;

use atoll_api::about::CLUSTER_ID_PROPERTY;
use atoll_api::cluster_profile::{
    ATOLL_CLUSTER_MANAGER, ClusterProfile, LABEL_CLUSTER_MANAGER, TAINT_NOT_READY,
    TAINT_UNREACHABLE,
};
use atoll_api::conditions;
use atoll_api::mcs::export_conditions::{self, conflict};
use atoll_api::mcs::{ClusterStatus, LABEL_SOURCE_CLUSTER, ServiceExport, ServiceImport};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject};
use kube::core::ApiResource;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::aggregate::{Export, ExportedService, aggregate};
use crate::member::sync_slices;
use crate::slices::{self, SliceData};
use crate::watch::{Cache, Outcome, apply, contains_all, delete, patch_status};
use crate::*;

/// Where the aggregator finds clusters.
#[derive(Clone)]
pub struct HubConfig {
    /// The hub, with access to every cluster namespace.
    pub hub: Client,
    /// The namespace holding ClusterProfiles (`atoll-system`).
    pub manager_namespace: String,
    /// The prefix of cluster namespaces: cluster `name` lives in `<prefix><name>`.
    pub cluster_namespace_prefix: String,
}

/// Runs the aggregator, with watches of its own, until `shutdown` resolves.
pub async fn run(config: HubConfig, shutdown: impl Future<Output = ()>) {
    run_with_profiles(config, None, shutdown).await;
}

/// ClusterProfiles kept by a watch the caller runs (one the hub's other controllers share).
pub struct SharedProfiles {
    /// The Atoll-managed ClusterProfiles of the manager namespace.
    pub store: Store<ClusterProfile>,
    /// Notified by the caller after every change to `store`; the aggregator reconciles then.
    pub changed: Arc<Notify>,
}

/// Runs the aggregator until `shutdown` resolves, reading ClusterProfiles from `profiles` if
/// given, else from a watch of its own.
pub async fn run_with_profiles(
    config: HubConfig,
    profiles: Option<SharedProfiles>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let slice_type = tokio::select! {
        () = &mut shutdown => return,
        found = slices::discover(&config.hub) => found,
    };
    let aggregator = Aggregator::start(config, slice_type, profiles);
    tokio::select! {
        () = &mut shutdown => return,
        () = aggregator.ready() => {}
    }
    info!("MCS aggregator caches synced; reconciling");
    crate::watch::reconcile_until(
        shutdown,
        &aggregator.changed,
        || aggregator.reconcile(),
        "aggregator",
    )
    .await;
}

struct Aggregator {
    config: HubConfig,
    changed: Arc<Notify>,
    slice_type: ApiResource,
    exports: Cache<ServiceExport>,
    imports: Cache<ServiceImport>,
    slices: Cache<DynamicObject>,
    profiles: Cache<ClusterProfile>,
}

/// A joined cluster, as the aggregator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its hub namespace.
    pub namespace: String,
    /// Whether its endpoints are served (no health taint).
    pub healthy: bool,
    /// Its cluster ID, as its ClusterProfile records it: the source of every export and slice
    /// in its namespace, whatever their `source-cluster` labels (which its member writes) say.
    /// `None` while the profile records none, or when another joined cluster's profile
    /// records the same ID (neither is believed): its exports are then left out.
    pub cluster_id: Option<String>,
}

/// The joined clusters, by hub namespace, from the ClusterProfiles.
pub fn members(profiles: &[Arc<ClusterProfile>], prefix: &str) -> BTreeMap<String, Member> {
    let live: Vec<&Arc<ClusterProfile>> = profiles
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let id_of = |p: &ClusterProfile| {
        p.status
            .as_ref()?
            .property(CLUSTER_ID_PROPERTY)
            .map(|p| p.value.clone())
            .filter(|id| !id.is_empty())
    };
    let mut claims: BTreeMap<String, usize> = BTreeMap::new();
    for profile in &live {
        if let Some(id) = id_of(profile) {
            *claims.entry(id).or_default() += 1;
        }
    }
    live.into_iter()
        .map(|p| {
            let namespace = format!("{prefix}{}", p.name_any());
            let healthy = !p
                .spec
                .taints
                .iter()
                .any(|t| t.key == TAINT_UNREACHABLE || t.key == TAINT_NOT_READY);
            let cluster_id = id_of(p).filter(|id| {
                let unique = claims.get(id).is_some_and(|n| *n == 1);
                if !unique {
                    warn!(cluster = %p.name_any(), %id, "another joined cluster records the same cluster ID; its exports are ignored");
                }
                unique
            });
            (
                namespace.clone(),
                Member {
                    namespace,
                    healthy,
                    cluster_id,
                },
            )
        })
        .collect()
}

fn by_role(role: &str) -> watcher::Config {
    watcher::Config::default().labels(&format!("{LABEL_ROLE}={role}"))
}

impl Aggregator {
    fn start(config: HubConfig, slice_type: ApiResource, shared: Option<SharedProfiles>) -> Self {
        // With shared profiles, the caller's notifications of profile changes wake the same
        // reconcile loop as this aggregator's own watches.
        let (changed, profiles) = match shared {
            Some(SharedProfiles { store, changed }) => (changed, Some(Cache::shared(store))),
            None => (Arc::new(Notify::new()), None),
        };
        let hub = &config.hub;
        let profiles = profiles.unwrap_or_else(|| {
            Cache::new(
                Api::namespaced(hub.clone(), &config.manager_namespace),
                watcher::Config::default()
                    .labels(&format!("{LABEL_CLUSTER_MANAGER}={ATOLL_CLUSTER_MANAGER}")),
                "ClusterProfiles",
                changed.clone(),
            )
        });
        Aggregator {
            exports: Cache::new(
                Api::all(hub.clone()),
                by_role(ROLE_EXPORT),
                "hub ServiceExports",
                changed.clone(),
            ),
            imports: Cache::new(
                Api::all(hub.clone()),
                by_role(ROLE_IMPORT),
                "hub ServiceImports",
                changed.clone(),
            ),
            slices: Cache::with_type(
                Api::all_with(hub.clone(), &slice_type),
                watcher::Config::default().labels(LABEL_ROLE),
                slice_type.clone(),
                "hub EndpointSlices",
                changed.clone(),
            ),
            profiles,
            slice_type,
            changed,
            config,
        }
    }

    async fn ready(&self) {
        tokio::join!(
            self.exports.ready(),
            self.imports.ready(),
            self.slices.ready(),
            self.profiles.ready()
        );
    }

    async fn reconcile(&self) -> Outcome {
        let mut outcome = Outcome::default();
        let hub = &self.config.hub;
        let members = members(
            &self.profiles.store.state(),
            &self.config.cluster_namespace_prefix,
        );

        // Exports of joined clusters, by service.
        type ServiceKey = (String, String);
        let mut services: BTreeMap<ServiceKey, Vec<(Arc<ServiceExport>, Export, bool)>> =
            BTreeMap::new();
        for export in self.exports.live() {
            let Some(member) = export.namespace().and_then(|ns| members.get(&ns)) else {
                continue;
            };
            // The source is the cluster whose namespace holds the export; its member wrote the
            // `source-cluster` label and could name any cluster there.
            let Some(cluster) = &member.cluster_id else {
                continue;
            };
            let labels = export.labels();
            let (Some(namespace), Some(service)) =
                (labels.get(LABEL_NAMESPACE), labels.get(LABEL_SERVICE))
            else {
                continue;
            };
            let shape = export
                .annotations()
                .get(ANNOTATION_SERVICE)
                .map(|json| serde_json::from_str::<ExportedService>(json));
            let Some(Ok(shape)) = shape else {
                warn!(export = %export.name_any(), namespace = ?export.namespace(), "hub ServiceExport without a readable shape; ignored");
                continue;
            };
            services
                .entry((namespace.clone(), service.clone()))
                .or_default()
                .push((
                    export.clone(),
                    Export {
                        cluster: cluster.clone(),
                        service: shape,
                    },
                    member.healthy,
                ));
        }

        // Export slices of healthy clusters, by (cluster namespace, service).
        let mut exported_slices: BTreeMap<(String, ServiceKey), Vec<Arc<DynamicObject>>> =
            BTreeMap::new();
        let mut current_import_slices: BTreeMap<String, Vec<Arc<DynamicObject>>> = BTreeMap::new();
        for slice in self.slices.store.state() {
            let labels = slice.labels();
            let Some(hub_namespace) = slice.namespace() else {
                continue;
            };
            match labels.get(LABEL_ROLE).map(String::as_str) {
                Some(ROLE_EXPORT) => {
                    if let (Some(namespace), Some(service)) =
                        (labels.get(LABEL_NAMESPACE), labels.get(LABEL_SERVICE))
                    {
                        exported_slices
                            .entry((hub_namespace, (namespace.clone(), service.clone())))
                            .or_default()
                            .push(slice.clone());
                    }
                }
                Some(ROLE_IMPORT) => current_import_slices
                    .entry(hub_namespace)
                    .or_default()
                    .push(slice.clone()),
                _ => {}
            }
        }

        let now = Time(Timestamp::now());
        let current_imports = self.imports.by_key();
        let mut wanted_imports: BTreeSet<(String, String)> = BTreeSet::new();
        let mut wanted_slices: BTreeMap<String, BTreeMap<String, DynamicObject>> = members
            .keys()
            .map(|ns| (ns.clone(), BTreeMap::new()))
            .collect();
        for ((namespace, service), exports) in &services {
            let plain: Vec<Export> = exports.iter().map(|(_, e, _)| e.clone()).collect();
            let Some(result) = aggregate(&plain) else {
                continue;
            };
            // Each export's Conflict condition.
            for (hub_export, export, _) in exports {
                let (status, reason, message) = match &result.conflict {
                    Some(c) => (conditions::TRUE, c.reason, c.message.clone()),
                    None => (
                        conditions::FALSE,
                        conflict::NO_CONFLICTS,
                        "every cluster exports this service alike".to_owned(),
                    ),
                };
                let mut list = hub_export.status.clone().unwrap_or_default().conditions;
                let changed = conditions::set(
                    &mut list,
                    conditions::condition(
                        export_conditions::CONFLICT,
                        status,
                        reason,
                        message,
                        hub_export.metadata.generation,
                        now.clone(),
                    ),
                );
                if changed {
                    let ns = hub_export.namespace().unwrap_or_default();
                    let api = Api::<ServiceExport>::namespaced(hub.clone(), &ns);
                    outcome.record(
                        "hub ServiceExport status",
                        &export.cluster,
                        patch_status(
                            &api,
                            &hub_export.name_any(),
                            serde_json::json!({ "conditions": list }),
                        )
                        .await,
                    );
                }
            }
            let mut clusters: Vec<ClusterStatus> = exports
                .iter()
                .filter(|(_, _, healthy)| *healthy)
                .map(|(_, e, _)| ClusterStatus {
                    cluster: e.cluster.clone(),
                })
                .collect();
            clusters.sort();
            clusters.dedup();

            // Into every joined cluster: the import and every healthy exporter's slices.
            let name = hub_object_name(namespace, service);
            for member in members.values() {
                let mut import = ServiceImport::new(&name, result.spec.clone());
                import.metadata.namespace = Some(member.namespace.clone());
                import.metadata.labels = Some(BTreeMap::from([
                    (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
                    (LABEL_ROLE.to_owned(), ROLE_IMPORT.to_owned()),
                    (LABEL_NAMESPACE.to_owned(), namespace.clone()),
                    (LABEL_SERVICE.to_owned(), service.clone()),
                ]));
                let mut annotations = BTreeMap::new();
                for (key, map) in [
                    (ANNOTATION_EXPORTED_LABELS, &result.labels),
                    (ANNOTATION_EXPORTED_ANNOTATIONS, &result.annotations),
                ] {
                    if !map.is_empty() {
                        annotations.insert(
                            key.to_owned(),
                            serde_json::to_string(map).unwrap_or_default(),
                        );
                    }
                }
                import.metadata.annotations = Some(annotations);
                let key = (member.namespace.clone(), name.clone());
                wanted_imports.insert(key.clone());
                let api = Api::<ServiceImport>::namespaced(hub.clone(), &member.namespace);
                let current = current_imports.get(&key);
                let same = current.is_some_and(|c| {
                    c.spec == import.spec
                        && contains_all(
                            c.metadata.labels.as_ref(),
                            import.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()),
                        )
                        && c.annotations().get(ANNOTATION_EXPORTED_LABELS)
                            == import.annotations().get(ANNOTATION_EXPORTED_LABELS)
                        && c.annotations().get(ANNOTATION_EXPORTED_ANNOTATIONS)
                            == import.annotations().get(ANNOTATION_EXPORTED_ANNOTATIONS)
                });
                if !same {
                    outcome.record("hub ServiceImport", &name, apply(&api, &import).await);
                }
                if current.is_none_or(|c| c.status.clone().unwrap_or_default().clusters != clusters)
                {
                    outcome.record(
                        "hub ServiceImport status",
                        &name,
                        patch_status(&api, &name, serde_json::json!({ "clusters": clusters }))
                            .await,
                    );
                }
                let wanted = wanted_slices.entry(member.namespace.clone()).or_default();
                for (hub_export, export, healthy) in exports {
                    if !healthy {
                        continue;
                    }
                    let source_namespace = hub_export.namespace().unwrap_or_default();
                    let source_slices = exported_slices
                        .get(&(source_namespace, (namespace.clone(), service.clone())))
                        .into_iter()
                        .flatten();
                    for slice in source_slices {
                        let Some(data) = SliceData::read(slice) else {
                            continue;
                        };
                        let slice_name = import_slice_name(
                            namespace,
                            service,
                            &export.cluster,
                            &slice.name_any(),
                        );
                        let mut object = DynamicObject::new(&slice_name, &self.slice_type)
                            .within(&member.namespace);
                        object.metadata.labels = Some(BTreeMap::from([
                            (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
                            (LABEL_ROLE.to_owned(), ROLE_IMPORT.to_owned()),
                            (LABEL_NAMESPACE.to_owned(), namespace.clone()),
                            (LABEL_SERVICE.to_owned(), service.clone()),
                            (LABEL_SOURCE_CLUSTER.to_owned(), export.cluster.clone()),
                        ]));
                        object.data = data.to_data();
                        wanted.insert(slice_name, object);
                    }
                }
            }
        }

        // Slices, per cluster namespace; then imports no longer wanted.
        let mut namespaces: BTreeSet<String> = wanted_slices.keys().cloned().collect();
        namespaces.extend(current_import_slices.keys().cloned());
        for hub_namespace in namespaces {
            let api = Api::<DynamicObject>::namespaced_with(
                hub.clone(),
                &hub_namespace,
                &self.slice_type,
            );
            let wanted = wanted_slices.remove(&hub_namespace).unwrap_or_default();
            let current = current_import_slices
                .get(&hub_namespace)
                .into_iter()
                .flatten();
            sync_slices(
                &mut outcome,
                &api,
                &wanted,
                current,
                "hub EndpointSlice (import)",
            )
            .await;
        }
        for ((namespace, name), import) in &current_imports {
            if import.metadata.deletion_timestamp.is_none()
                && !wanted_imports.contains(&(namespace.clone(), name.clone()))
            {
                let api = Api::<ServiceImport>::namespaced(hub.clone(), namespace);
                outcome.record(
                    "hub ServiceImport (unexported)",
                    name,
                    delete(&api, name).await,
                );
            }
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atoll_api::cluster_profile::{ClusterManager, ClusterProfileSpec, Taint, TaintEffect};

    fn profile(name: &str, taints: &[&str]) -> Arc<ClusterProfile> {
        Arc::new(ClusterProfile::new(
            name,
            ClusterProfileSpec {
                display_name: None,
                cluster_manager: ClusterManager {
                    name: ATOLL_CLUSTER_MANAGER.into(),
                },
                taints: taints
                    .iter()
                    .map(|key| Taint {
                        key: (*key).into(),
                        value: None,
                        effect: TaintEffect::NoExecute,
                        time_added: None,
                    })
                    .collect(),
            },
        ))
    }

    #[test]
    fn health_taints_make_a_member_unhealthy_other_taints_do_not() {
        let members = members(
            &[
                profile("a", &[]),
                profile("b", &[TAINT_UNREACHABLE]),
                profile("c", &[TAINT_NOT_READY]),
                profile("d", &["example.com/maintenance"]),
            ],
            "atoll-cluster-",
        );
        let healthy: Vec<(&str, bool)> = members
            .iter()
            .map(|(ns, m)| (ns.as_str(), m.healthy))
            .collect();
        assert_eq!(
            healthy,
            [
                ("atoll-cluster-a", true),
                ("atoll-cluster-b", false),
                ("atoll-cluster-c", false),
                ("atoll-cluster-d", true)
            ]
        );
    }

    fn with_id(name: &str, id: &str) -> Arc<ClusterProfile> {
        let mut profile = (*profile(name, &[])).clone();
        profile.status = Some(atoll_api::cluster_profile::ClusterProfileStatus {
            properties: vec![atoll_api::cluster_profile::Property {
                name: CLUSTER_ID_PROPERTY.into(),
                value: id.into(),
                last_observed_time: None,
            }],
            ..Default::default()
        });
        Arc::new(profile)
    }

    #[test]
    fn a_member_is_the_cluster_id_its_profile_records_unless_another_records_it_too() {
        let members = members(
            &[
                with_id("a", "id-a"),
                with_id("b", "id-shared"),
                with_id("c", "id-shared"),
                profile("d", &[]),
            ],
            "atoll-cluster-",
        );
        let ids: Vec<(&str, Option<&str>)> = members
            .iter()
            .map(|(ns, m)| (ns.as_str(), m.cluster_id.as_deref()))
            .collect();
        assert_eq!(
            ids,
            [
                ("atoll-cluster-a", Some("id-a")),
                ("atoll-cluster-b", None),
                ("atoll-cluster-c", None),
                ("atoll-cluster-d", None)
            ]
        );
    }
}
