//! One member cluster's side of MCS, the same in push mode (run by `atoll controller` on the
//! hub, with the member's credentials) and in pull mode (run by the member's agent, with hub
//! credentials confined to the cluster's hub namespace).
//!
//! Up, from the member into its hub namespace:
//! - every ServiceExport is validated against its Service: `Valid=False` with `NoService`
//!   or `InvalidServiceType` (ExternalName), else `Valid=True`;
//! - a valid export is published as a hub ServiceExport carrying the Service's shape, with a
//!   copy of each of the Service's EndpointSlices.
//!
//! Down, from the hub namespace into the member, for each ServiceImport the aggregator
//! computed for this cluster, where the namespace exists in the member:
//! - the ServiceImport (its `spec.ips` the derived Service's ClusterIPs);
//! - the derived Service: selectorless, owned by the ServiceImport, same ports;
//! - the EndpointSlices of every exporting cluster, bound to the derived Service by
//!   `kubernetes.io/service-name`, labelled `multicluster.kubernetes.io/service-name` and
//!   `source-cluster`, managed by [`ENDPOINTSLICE_MANAGER`].
//!
//! Also down: the export's `Ready` (the hub has taken it into account) and `Conflict` (as the
//! aggregator decided) conditions.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;

use atoll_api::conditions;
use atoll_api::mcs::export_conditions::{self, ready, valid};
use atoll_api::mcs::import_conditions;
use atoll_api::mcs::{
    LABEL_SERVICE_NAME, LABEL_SOURCE_CLUSTER, ServiceExport, ServiceExportSpec, ServiceImport,
    ServiceImportSpec, ServiceImportType, ServicePort,
};
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, OwnerReference, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject};
use kube::core::ApiResource;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::aggregate::{ExportedService, normalize_port};
use crate::slices::{self, SliceData};
use crate::watch::{Cache, Outcome, apply, contains_all, delete, patch_status};
use crate::*;

/// Who the member syncer works for.
#[derive(Clone)]
pub struct MemberConfig {
    /// The hub; only `hub_namespace` is read or written.
    pub hub: Client,
    /// The cluster's namespace on the hub (`atoll-cluster-<name>`).
    pub hub_namespace: String,
    /// The member.
    pub member: Client,
    /// The cluster's name on the hub (for logs).
    pub cluster_name: String,
    /// The cluster's ID (`cluster.clusterset.k8s.io`), the `source-cluster` of its slices.
    pub cluster_id: String,
    /// An owner for every ServiceImport written into the member (and through them, derived
    /// Services and slices): push mode passes Atoll's member ClusterRole, so that unjoining,
    /// which deletes that role, lets the member's garbage collector remove everything MCS
    /// wrote there. `None` leaves the imports unowned.
    pub member_owner: Option<OwnerReference>,
}

/// The group version whose ServiceExport and ServiceImport a member must serve.
pub const MCS_GROUP_VERSION: &str = "multicluster.x-k8s.io/v1beta1";

/// How to give a member the MCS CRDs, for messages.
pub const MCS_CRDS_FIX: &str = "install them in the member: atoll crds --only mcs | kubectl apply -f - (add --validate=false before Kubernetes 1.25)";

/// How often a member without the MCS CRDs is checked again; the delay doubles up to
/// [`CRD_RECHECK_MAX`].
pub const CRD_RECHECK: std::time::Duration = std::time::Duration::from_secs(60);
const CRD_RECHECK_MAX: std::time::Duration = std::time::Duration::from_secs(600);

/// What the member lacks of the MCS CRDs (ServiceExport and ServiceImport in
/// [`MCS_GROUP_VERSION`]), as a sentence, or `None` when it serves both. One discovery
/// request.
pub async fn missing_crds(member: &Client) -> Result<Option<String>, kube::Error> {
    let served = match member.list_api_group_resources(MCS_GROUP_VERSION).await {
        Ok(list) => list.resources,
        Err(kube::Error::Api(status)) if status.code == 404 => Vec::new(),
        Err(error) => return Err(error),
    };
    let missing: Vec<&str> = [
        ("serviceexports", "ServiceExport"),
        ("serviceimports", "ServiceImport"),
    ]
    .into_iter()
    .filter(|(plural, _)| !served.iter().any(|r| r.name == *plural))
    .map(|(_, kind)| kind)
    .collect();
    Ok((!missing.is_empty()).then(|| {
        format!(
            "the member serves no {} ({MCS_GROUP_VERSION})",
            missing.join(" or ")
        )
    }))
}

/// Waits until the member serves the MCS CRDs, checking every [`CRD_RECHECK`] or so, with one
/// log line when what is missing changes. Returns `false` if `shutdown` came first.
async fn wait_for_crds(
    member: &Client,
    cluster: &str,
    mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> bool {
    let mut reported: Option<String> = None;
    let mut delay = CRD_RECHECK;
    let mut error_delay = std::time::Duration::from_secs(2);
    loop {
        let wait = match missing_crds(member).await {
            Ok(None) => {
                if reported.is_some() {
                    info!(cluster, "MCS CRDs now served by the member; MCS starting");
                }
                return true;
            }
            Ok(Some(why)) => {
                if reported.as_ref() != Some(&why) {
                    warn!(
                        cluster,
                        "MCS paused for this cluster: {why}; {MCS_CRDS_FIX}. Checking again every minute or so"
                    );
                    reported = Some(why);
                }
                let wait = delay;
                delay = (delay * 2).min(CRD_RECHECK_MAX);
                wait
            }
            Err(error) => {
                tracing::debug!(cluster, %error, "checking the member's MCS CRDs; retrying");
                let wait = error_delay;
                error_delay = (error_delay * 2).min(CRD_RECHECK);
                wait
            }
        };
        tokio::select! {
            () = &mut shutdown => return false,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Runs one cluster's side of MCS until `shutdown` resolves. A member that does not serve the
/// MCS CRDs is checked again every minute or so (one log line), not watched in a loop.
pub async fn run(config: MemberConfig, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    if !wait_for_crds(&config.member, &config.cluster_name, shutdown.as_mut()).await {
        return;
    }
    let discovered = async {
        tokio::join!(
            slices::discover(&config.hub),
            slices::discover(&config.member)
        )
    };
    let (hub_slices, member_slices) = tokio::select! {
        () = &mut shutdown => return,
        found = discovered => found,
    };
    let span = tracing::info_span!("mcs", cluster = %config.cluster_name);
    let syncer = span.in_scope(|| Syncer::start(config, hub_slices, member_slices));
    tokio::select! {
        () = &mut shutdown => {},
        () = syncer.ready() => {}
    }
    info!(cluster = %syncer.config.cluster_name, "MCS caches synced; reconciling");
    crate::watch::reconcile_until(
        shutdown,
        &syncer.changed,
        || syncer.reconcile(),
        &syncer.config.cluster_name,
    )
    .await;
}

struct Syncer {
    config: MemberConfig,
    changed: Arc<Notify>,
    hub_slice_type: ApiResource,
    member_slice_type: ApiResource,
    member_exports: Cache<ServiceExport>,
    member_services: Cache<Service>,
    member_slices: Cache<DynamicObject>,
    member_namespaces: Cache<Namespace>,
    member_imports: Cache<ServiceImport>,
    hub_exports: Cache<ServiceExport>,
    hub_imports: Cache<ServiceImport>,
    hub_slices: Cache<DynamicObject>,
}

fn role(role: &str) -> watcher::Config {
    watcher::Config::default().labels(&format!("{LABEL_ROLE}={role}"))
}

impl Syncer {
    fn start(
        config: MemberConfig,
        hub_slice_type: ApiResource,
        member_slice_type: ApiResource,
    ) -> Self {
        let changed = Arc::new(Notify::new());
        let (hub, member, ns) = (&config.hub, &config.member, &config.hub_namespace);
        let c = || changed.clone();
        Syncer {
            member_exports: Cache::new(
                Api::all(member.clone()),
                Default::default(),
                "member ServiceExports",
                c(),
            ),
            member_services: Cache::new(
                Api::all(member.clone()),
                Default::default(),
                "member Services",
                c(),
            ),
            member_slices: Cache::with_type(
                Api::all_with(member.clone(), &member_slice_type),
                watcher::Config::default().labels(LABEL_KUBE_SERVICE_NAME),
                member_slice_type.clone(),
                "member EndpointSlices",
                c(),
            ),
            member_namespaces: Cache::new(
                Api::all(member.clone()),
                Default::default(),
                "member Namespaces",
                c(),
            ),
            member_imports: Cache::new(
                Api::all(member.clone()),
                role(ROLE_MEMBER),
                "member ServiceImports",
                c(),
            ),
            hub_exports: Cache::new(
                Api::namespaced(hub.clone(), ns),
                role(ROLE_EXPORT),
                "hub ServiceExports",
                c(),
            ),
            hub_imports: Cache::new(
                Api::namespaced(hub.clone(), ns),
                role(ROLE_IMPORT),
                "hub ServiceImports",
                c(),
            ),
            hub_slices: Cache::with_type(
                Api::namespaced_with(hub.clone(), ns, &hub_slice_type),
                watcher::Config::default().labels(LABEL_ROLE),
                hub_slice_type.clone(),
                "hub EndpointSlices",
                c(),
            ),
            hub_slice_type,
            member_slice_type,
            changed,
            config,
        }
    }

    async fn ready(&self) {
        tokio::join!(
            self.member_exports.ready(),
            self.member_services.ready(),
            self.member_slices.ready(),
            self.member_namespaces.ready(),
            self.member_imports.ready(),
            self.hub_exports.ready(),
            self.hub_imports.ready(),
            self.hub_slices.ready(),
        );
    }

    async fn reconcile(&self) -> Outcome {
        let mut outcome = Outcome::default();
        self.sync_up(&mut outcome).await;
        self.sync_down(&mut outcome).await;
        outcome
    }

    /// Exports: validate, publish shapes and slices to the hub, report conditions.
    async fn sync_up(&self, outcome: &mut Outcome) {
        let cfg = &self.config;
        let services = self.member_services.by_key();
        let hub_exports = self.hub_exports.by_key();
        let mut want_exports: BTreeMap<String, ServiceExport> = BTreeMap::new();
        let mut want_slices: BTreeMap<String, DynamicObject> = BTreeMap::new();
        let mut exported: BTreeSet<(String, String)> = BTreeSet::new();

        for export in self.member_exports.live() {
            // The hub's own objects, when the hub is also a member, are not exports.
            if export.labels().contains_key(LABEL_ROLE) {
                continue;
            }
            let (Some(namespace), name) = (export.namespace(), export.name_any()) else {
                continue;
            };
            let service = services.get(&(namespace.clone(), name.clone()));
            let verdict = validate(service.map(|s| &**s));
            let hub_name = hub_object_name(&namespace, &name);
            let hub_export = hub_exports.get(&(cfg.hub_namespace.clone(), hub_name.clone()));
            if let Ok(shape) = &verdict {
                let shape = ExportedService {
                    export_created: export.metadata.creation_timestamp.clone(),
                    exported_labels: export.spec.exported_labels.clone(),
                    exported_annotations: export.spec.exported_annotations.clone(),
                    ..shape.clone()
                };
                want_exports.insert(
                    hub_name.clone(),
                    self.hub_export(&namespace, &name, &hub_name, &shape, &export.spec),
                );
                exported.insert((namespace.clone(), name.clone()));
            }
            let wanted = export_conditions_for(&export, &verdict, hub_export.map(|e| &**e));
            let current = export.status.clone().unwrap_or_default().conditions;
            if wanted != current {
                let api = Api::<ServiceExport>::namespaced(cfg.member.clone(), &namespace);
                outcome.record(
                    "member ServiceExport status",
                    &name,
                    patch_status(&api, &name, serde_json::json!({ "conditions": wanted })).await,
                );
            }
        }

        for slice in self.member_slices.live() {
            let labels = slice.labels();
            if labels
                .get(LABEL_ENDPOINTSLICE_MANAGED_BY)
                .map(String::as_str)
                == Some(ENDPOINTSLICE_MANAGER)
                || labels.contains_key(LABEL_ROLE)
            {
                continue;
            }
            let (Some(namespace), Some(service)) =
                (slice.namespace(), labels.get(LABEL_KUBE_SERVICE_NAME))
            else {
                continue;
            };
            if !exported.contains(&(namespace.clone(), service.clone())) {
                continue;
            }
            let Some(data) = SliceData::read(&slice) else {
                warn!(%namespace, slice = %slice.name_any(), "unreadable EndpointSlice; not exported");
                continue;
            };
            let name = hub_export_slice_name(&namespace, &slice.name_any());
            let mut object =
                DynamicObject::new(&name, &self.hub_slice_type).within(&cfg.hub_namespace);
            object.metadata.labels = Some(self.hub_labels(ROLE_EXPORT, &namespace, service));
            object.data = data.to_data();
            want_slices.insert(name, object);
        }

        // Publish, then withdraw what is no longer exported.
        let hub_exports_api = Api::<ServiceExport>::namespaced(cfg.hub.clone(), &cfg.hub_namespace);
        for (name, wanted) in &want_exports {
            let current = hub_exports.get(&(cfg.hub_namespace.clone(), name.clone()));
            if current.is_none_or(|c| !same_hub_export(c, wanted)) {
                outcome.record(
                    "hub ServiceExport",
                    name,
                    apply(&hub_exports_api, wanted).await,
                );
            }
        }
        for ((_, name), _) in hub_exports
            .iter()
            .filter(|(k, _)| !want_exports.contains_key(&k.1))
        {
            outcome.record(
                "hub ServiceExport (withdrawn)",
                name,
                delete(&hub_exports_api, name).await,
            );
        }
        let hub_slices_api = Api::<DynamicObject>::namespaced_with(
            cfg.hub.clone(),
            &cfg.hub_namespace,
            &self.hub_slice_type,
        );
        let current_slices = self.hub_slices.by_key();
        sync_slices(
            outcome,
            &hub_slices_api,
            &want_slices,
            current_slices
                .values()
                .filter(|s| s.labels().get(LABEL_ROLE).map(String::as_str) == Some(ROLE_EXPORT)),
            "hub EndpointSlice (export)",
        )
        .await;
    }

    fn hub_labels(&self, role: &str, namespace: &str, service: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
            (LABEL_ROLE.to_owned(), role.to_owned()),
            (LABEL_NAMESPACE.to_owned(), namespace.to_owned()),
            (LABEL_SERVICE.to_owned(), service.to_owned()),
            (
                LABEL_SOURCE_CLUSTER.to_owned(),
                self.config.cluster_id.clone(),
            ),
        ])
    }

    fn hub_export(
        &self,
        namespace: &str,
        name: &str,
        hub_name: &str,
        shape: &ExportedService,
        spec: &ServiceExportSpec,
    ) -> ServiceExport {
        let mut export = ServiceExport::new(hub_name, spec.clone());
        export.metadata.namespace = Some(self.config.hub_namespace.clone());
        export.metadata.labels = Some(self.hub_labels(ROLE_EXPORT, namespace, name));
        export.metadata.annotations = Some(BTreeMap::from([(
            ANNOTATION_SERVICE.to_owned(),
            serde_json::to_string(shape).unwrap_or_default(),
        )]));
        export
    }

    /// Imports: the member's ServiceImports, derived Services and slices, as the hub says.
    async fn sync_down(&self, outcome: &mut Outcome) {
        let cfg = &self.config;
        let namespaces: BTreeSet<String> = self
            .member_namespaces
            .live()
            .iter()
            .map(|n| n.name_any())
            .collect();
        let member_imports = self.member_imports.by_key();
        let services = self.member_services.by_key();
        let hub_slices = self.hub_slices.live();
        let mut want_imports: BTreeSet<(String, String)> = BTreeSet::new();
        let mut want_services: BTreeSet<(String, String)> = BTreeSet::new();
        let mut want_slices: BTreeMap<(String, String), DynamicObject> = BTreeMap::new();

        for hub_import in self.hub_imports.live() {
            let labels = hub_import.labels();
            let (Some(namespace), Some(service)) =
                (labels.get(LABEL_NAMESPACE), labels.get(LABEL_SERVICE))
            else {
                continue;
            };
            if !namespaces.contains(namespace) {
                // Retried when the namespace appears: the namespace watch wakes the loop.
                continue;
            }
            let key = (namespace.clone(), service.clone());
            want_imports.insert(key.clone());
            let derived_name = derived_service_name(service);
            let derived_key = (namespace.clone(), derived_name.clone());
            let derived = services.get(&derived_key).filter(|s| is_ours(s.labels()));
            let headless = hub_import.spec.type_ == ServiceImportType::Headless;

            // The ServiceImport, with this cluster's ClusterSet IP.
            let mut spec = hub_import.spec.clone();
            spec.ips = Vec::new();
            if let Some(derived) = derived.filter(|d| is_headless(d) == headless)
                && !headless
            {
                let svc_spec = derived.spec.clone().unwrap_or_default();
                spec.ips = svc_spec
                    .cluster_ips
                    .filter(|ips| !ips.is_empty())
                    .or_else(|| svc_spec.cluster_ip.map(|ip| vec![ip]))
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|ip| !ip.is_empty() && ip != "None")
                    .collect();
                if !spec.ips.is_empty() {
                    // One family per IP, in order: the derived Service's own families where
                    // the API server records them (not before 1.20 dual-stack), else the
                    // IPs' own.
                    spec.ip_families = svc_spec
                        .ip_families
                        .filter(|f| f.len() == spec.ips.len())
                        .unwrap_or_else(|| spec.ips.iter().map(|ip| ip_family(ip)).collect());
                }
            }
            let mut wanted = member_import(&hub_import, service, namespace, spec);
            wanted.metadata.owner_references = cfg.member_owner.clone().map(|o| vec![o]);
            let current = member_imports.get(&key);
            let imports_api = Api::<ServiceImport>::namespaced(cfg.member.clone(), namespace);
            let current = match current {
                Some(current) if same_member_import(current, &wanted) => Some(current.clone()),
                _ => {
                    let result = apply(&imports_api, &wanted).await;
                    let stored = result.as_ref().ok().map(|i| Arc::new(i.clone()));
                    outcome.record("member ServiceImport", service, result);
                    stored
                }
            };
            let Some(current) = current else { continue };
            let clusters = hub_import.status.clone().unwrap_or_default().clusters;
            let current_status = current.status.clone().unwrap_or_default();
            let ready = import_ready(&current, current_status.conditions.clone());
            if current_status.clusters != clusters || current_status.conditions != ready {
                outcome.record(
                    "member ServiceImport status",
                    service,
                    patch_status(
                        &imports_api,
                        service,
                        serde_json::json!({ "clusters": clusters, "conditions": ready }),
                    )
                    .await,
                );
            }
            let Some(owner) = owner_of(&current) else {
                continue;
            };

            // The derived Service: recreated when headlessness changes (clusterIP is immutable).
            let services_api = Api::<Service>::namespaced(cfg.member.clone(), namespace);
            want_services.insert(derived_key.clone());
            match derived {
                Some(existing) if is_headless(existing) != headless => {
                    outcome.record(
                        "derived Service (type changed)",
                        &derived_name,
                        delete(&services_api, &derived_name).await,
                    );
                }
                existing => {
                    let wanted = derived_service(&current, service, &derived_name, owner.clone());
                    if existing.is_none_or(|e| !same_derived_service(e, &wanted)) {
                        outcome.record(
                            "derived Service",
                            &derived_name,
                            apply(&services_api, &wanted).await,
                        );
                    }
                }
            }

            // The slices of every exporting cluster.
            for hub_slice in hub_slices.iter().filter(|s| {
                let l = s.labels();
                l.get(LABEL_ROLE).map(String::as_str) == Some(ROLE_IMPORT)
                    && l.get(LABEL_NAMESPACE) == Some(namespace)
                    && l.get(LABEL_SERVICE) == Some(service)
            }) {
                let Some(data) = SliceData::read(hub_slice) else {
                    continue;
                };
                let source = hub_slice
                    .labels()
                    .get(LABEL_SOURCE_CLUSTER)
                    .cloned()
                    .unwrap_or_default();
                let name = hub_slice.name_any();
                let mut object =
                    DynamicObject::new(&name, &self.member_slice_type).within(namespace);
                object.metadata.labels = Some(BTreeMap::from([
                    (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
                    (LABEL_ROLE.to_owned(), ROLE_MEMBER.to_owned()),
                    (LABEL_SERVICE_NAME.to_owned(), service.clone()),
                    (LABEL_SOURCE_CLUSTER.to_owned(), source),
                    (LABEL_KUBE_SERVICE_NAME.to_owned(), derived_name.clone()),
                    (
                        LABEL_ENDPOINTSLICE_MANAGED_BY.to_owned(),
                        ENDPOINTSLICE_MANAGER.to_owned(),
                    ),
                ]));
                object.metadata.owner_references = Some(vec![owner.clone()]);
                object.data = data.to_data();
                want_slices.insert((namespace.clone(), name), object);
            }
        }

        // Slices, per namespace.
        let current_slices: Vec<Arc<DynamicObject>> = self
            .member_slices
            .store
            .state()
            .into_iter()
            .filter(|s| {
                s.labels()
                    .get(LABEL_ENDPOINTSLICE_MANAGED_BY)
                    .map(String::as_str)
                    == Some(ENDPOINTSLICE_MANAGER)
                    && s.labels().get(LABEL_ROLE).map(String::as_str) == Some(ROLE_MEMBER)
            })
            .collect();
        let mut by_namespace: BTreeMap<String, WantedAndCurrent> = BTreeMap::new();
        for ((namespace, name), object) in want_slices {
            by_namespace
                .entry(namespace)
                .or_default()
                .0
                .insert(name, object);
        }
        for slice in current_slices {
            by_namespace
                .entry(slice.namespace().unwrap_or_default())
                .or_default()
                .1
                .push(slice);
        }
        for (namespace, (wanted, current)) in by_namespace {
            let api = Api::<DynamicObject>::namespaced_with(
                cfg.member.clone(),
                &namespace,
                &self.member_slice_type,
            );
            sync_slices(
                outcome,
                &api,
                &wanted,
                current.iter(),
                "member EndpointSlice",
            )
            .await;
        }

        // What the hub no longer imports into this cluster.
        for ((namespace, name), service) in &services {
            if is_ours(service.labels())
                && service.metadata.deletion_timestamp.is_none()
                && !want_services.contains(&(namespace.clone(), name.clone()))
            {
                let api = Api::<Service>::namespaced(cfg.member.clone(), namespace);
                outcome.record(
                    "derived Service (unimported)",
                    name,
                    delete(&api, name).await,
                );
            }
        }
        for ((namespace, name), import) in &member_imports {
            if import.metadata.deletion_timestamp.is_none()
                && !want_imports.contains(&(namespace.clone(), name.clone()))
            {
                let api = Api::<ServiceImport>::namespaced(cfg.member.clone(), namespace);
                info!(cluster = %cfg.cluster_name, %namespace, %name, "no cluster exports this service any more; removing its import");
                outcome.record(
                    "member ServiceImport (unimported)",
                    name,
                    delete(&api, name).await,
                );
            }
        }
    }
}

/// Slices wanted by name, and the slices there are.
type WantedAndCurrent = (BTreeMap<String, DynamicObject>, Vec<Arc<DynamicObject>>);

/// Whether a member object is one the syncer wrote.
fn is_ours(labels: &BTreeMap<String, String>) -> bool {
    labels.get(LABEL_ROLE).map(String::as_str) == Some(ROLE_MEMBER)
        && labels.get(MANAGED_BY.0).map(String::as_str) == Some(MANAGED_BY.1)
}

/// The import's conditions with `Ready`: True once usable (a Headless import at once, a
/// ClusterSetIP import once it has its IP), else Pending.
fn import_ready(import: &ServiceImport, mut list: Vec<Condition>) -> Vec<Condition> {
    let usable = import.spec.type_ == ServiceImportType::Headless || !import.spec.ips.is_empty();
    let (status, reason, message) = if usable {
        (
            conditions::TRUE,
            import_conditions::ready::READY,
            "the import is usable in this cluster",
        )
    } else {
        (
            conditions::FALSE,
            import_conditions::ready::PENDING,
            "waiting for the derived Service's ClusterSet IP",
        )
    };
    conditions::set(
        &mut list,
        conditions::condition(
            import_conditions::READY,
            status,
            reason,
            message,
            import.metadata.generation,
            Time(Timestamp::now()),
        ),
    );
    list
}

/// `IPv6` for an IPv6 address, else `IPv4`.
fn ip_family(ip: &str) -> String {
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(_)) => "IPv6",
        _ => "IPv4",
    }
    .to_owned()
}

fn is_headless(service: &Service) -> bool {
    service.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

/// The Service's shape if it can be exported, else the `Valid=False` reason and message.
pub fn validate(service: Option<&Service>) -> Result<ExportedService, (&'static str, String)> {
    let Some(service) = service else {
        return Err((
            valid::NO_SERVICE,
            "no Service of this name in the namespace".into(),
        ));
    };
    let spec = service.spec.clone().unwrap_or_default();
    if spec.type_.as_deref() == Some("ExternalName") {
        return Err((
            valid::INVALID_SERVICE_TYPE,
            "an ExternalName Service cannot be exported".into(),
        ));
    }
    Ok(ExportedService {
        export_created: None,
        headless: spec.cluster_ip.as_deref() == Some("None"),
        ports: spec
            .ports
            .unwrap_or_default()
            .iter()
            .map(|p| {
                normalize_port(&ServicePort {
                    name: p.name.clone(),
                    protocol: p.protocol.clone(),
                    app_protocol: p.app_protocol.clone(),
                    port: p.port,
                })
            })
            .collect(),
        session_affinity: spec.session_affinity,
        session_affinity_config: spec.session_affinity_config,
        ip_families: spec.ip_families.unwrap_or_default(),
        internal_traffic_policy: spec.internal_traffic_policy,
        traffic_distribution: spec.traffic_distribution,
        exported_labels: BTreeMap::new(),
        exported_annotations: BTreeMap::new(),
    })
}

/// The member export's conditions: Valid from the verdict, Ready from whether the hub has
/// aggregated it, Conflict as the hub decided. Transition times are kept where the status
/// does not change, so an unchanged export writes nothing.
pub fn export_conditions_for(
    export: &ServiceExport,
    verdict: &Result<ExportedService, (&'static str, String)>,
    hub_export: Option<&ServiceExport>,
) -> Vec<Condition> {
    let now = Time(Timestamp::now());
    let generation = export.metadata.generation;
    let mut list = export.status.clone().unwrap_or_default().conditions;
    let mut set = |type_: &str, status: &str, reason: &str, message: String| {
        conditions::set(
            &mut list,
            conditions::condition(type_, status, reason, message, generation, now.clone()),
        );
    };
    let hub_conflict = hub_export
        .and_then(|e| e.status.as_ref())
        .and_then(|s| conditions::find(&s.conditions, export_conditions::CONFLICT))
        .cloned();
    match verdict {
        Err((reason, message)) => {
            set(
                export_conditions::VALID,
                conditions::FALSE,
                reason,
                message.clone(),
            );
            set(
                export_conditions::READY,
                conditions::FALSE,
                ready::FAILED,
                format!("not exported: {message}"),
            );
        }
        Ok(_) => {
            set(
                export_conditions::VALID,
                conditions::TRUE,
                valid::VALID,
                "the Service is exportable".into(),
            );
            match &hub_conflict {
                Some(_) => set(
                    export_conditions::READY,
                    conditions::TRUE,
                    ready::EXPORTED,
                    "the Service is exported to the ClusterSet".into(),
                ),
                None => set(
                    export_conditions::READY,
                    conditions::FALSE,
                    ready::PENDING,
                    "waiting for the hub to take this export into account".into(),
                ),
            }
        }
    }
    match hub_conflict.filter(|_| verdict.is_ok()) {
        Some(conflict) => set(
            export_conditions::CONFLICT,
            &conflict.status,
            &conflict.reason,
            conflict.message,
        ),
        None => list.retain(|c| c.type_ != export_conditions::CONFLICT),
    }
    list
}

fn same_hub_export(current: &ServiceExport, wanted: &ServiceExport) -> bool {
    current.spec == wanted.spec
        && contains_all(
            current.metadata.labels.as_ref(),
            wanted.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()),
        )
        && contains_all(
            current.metadata.annotations.as_ref(),
            wanted
                .metadata
                .annotations
                .as_ref()
                .unwrap_or(&BTreeMap::new()),
        )
}

fn read_json_map(annotations: &BTreeMap<String, String>, key: &str) -> BTreeMap<String, String> {
    annotations
        .get(key)
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default()
}

fn member_import(
    hub_import: &ServiceImport,
    service: &str,
    namespace: &str,
    spec: ServiceImportSpec,
) -> ServiceImport {
    let annotations = hub_import.annotations();
    let mut labels = read_json_map(annotations, ANNOTATION_EXPORTED_LABELS);
    labels.insert(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned());
    labels.insert(LABEL_ROLE.to_owned(), ROLE_MEMBER.to_owned());
    let exported_annotations = read_json_map(annotations, ANNOTATION_EXPORTED_ANNOTATIONS);
    let mut import = ServiceImport::new(service, spec);
    import.metadata.namespace = Some(namespace.to_owned());
    import.metadata.labels = Some(labels);
    import.metadata.annotations =
        (!exported_annotations.is_empty()).then_some(exported_annotations);
    import
}

fn same_member_import(current: &ServiceImport, wanted: &ServiceImport) -> bool {
    current.spec == wanted.spec
        && wanted
            .metadata
            .owner_references
            .iter()
            .flatten()
            .all(|o| current.owner_references().iter().any(|c| c.uid == o.uid))
        && contains_all(
            current.metadata.labels.as_ref(),
            wanted.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()),
        )
        && contains_all(
            current.metadata.annotations.as_ref(),
            wanted
                .metadata
                .annotations
                .as_ref()
                .unwrap_or(&BTreeMap::new()),
        )
}

fn owner_of(import: &ServiceImport) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: ServiceImport::api_version(&()).into_owned(),
        kind: ServiceImport::kind(&()).into_owned(),
        name: import.name_any(),
        uid: import.metadata.uid.clone()?,
        ..Default::default()
    })
}

fn derived_service(
    import: &ServiceImport,
    service: &str,
    name: &str,
    owner: OwnerReference,
) -> Service {
    let spec = &import.spec;
    let headless = spec.type_ == ServiceImportType::Headless;
    Service {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: import.namespace(),
            labels: Some(BTreeMap::from([
                (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
                (LABEL_ROLE.to_owned(), ROLE_MEMBER.to_owned()),
                (LABEL_SERVICE.to_owned(), service.to_owned()),
            ])),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: headless.then(|| "None".to_owned()),
            ports: Some(
                spec.ports
                    .iter()
                    .map(|p| k8s_openapi::api::core::v1::ServicePort {
                        name: p.name.clone(),
                        protocol: p.protocol.clone(),
                        app_protocol: p.app_protocol.clone(),
                        port: p.port,
                        target_port: Some(IntOrString::Int(p.port)),
                        ..Default::default()
                    })
                    .collect(),
            ),
            session_affinity: spec.session_affinity.clone(),
            session_affinity_config: spec
                .session_affinity_config
                .clone()
                .filter(|_| spec.session_affinity.as_deref() == Some("ClientIP")),
            ..Default::default()
        }),
        status: None,
    }
}

fn same_derived_service(current: &Service, wanted: &Service) -> bool {
    let ports = |s: &Service| {
        s.spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                (
                    p.name.filter(|n| !n.is_empty()),
                    p.protocol.unwrap_or_else(|| "TCP".into()),
                    p.port,
                )
            })
            .collect::<Vec<_>>()
    };
    let affinity = |s: &Service| {
        let spec = s.spec.clone().unwrap_or_default();
        (
            spec.session_affinity.unwrap_or_else(|| "None".into()),
            spec.session_affinity_config
                .and_then(|c| c.client_ip)
                .and_then(|c| c.timeout_seconds),
        )
    };
    let wanted_timeout = affinity(wanted);
    let current_affinity = affinity(current);
    ports(current) == ports(wanted)
        && current_affinity.0 == wanted_timeout.0
        // The API server defaults the ClientIP timeout; only a set one must match.
        && (wanted_timeout.1.is_none() || current_affinity.1 == wanted_timeout.1)
        && current.metadata.owner_references == wanted.metadata.owner_references
        && contains_all(current.metadata.labels.as_ref(), wanted.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()))
}

/// Applies `wanted` slices and deletes `current` ones not wanted.
pub(crate) async fn sync_slices<'a>(
    outcome: &mut Outcome,
    api: &Api<DynamicObject>,
    wanted: &BTreeMap<String, DynamicObject>,
    current: impl Iterator<Item = &'a Arc<DynamicObject>>,
    what: &str,
) {
    let current: BTreeMap<String, &Arc<DynamicObject>> =
        current.map(|s| (s.name_any(), s)).collect();
    for (name, object) in wanted {
        let same = current.get(name).is_some_and(|c| {
            c.metadata.deletion_timestamp.is_none()
                && SliceData::read(c) == SliceData::read(object)
                && contains_all(
                    c.metadata.labels.as_ref(),
                    object.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()),
                )
                && (object.metadata.owner_references.is_none()
                    || c.metadata.owner_references == object.metadata.owner_references)
        });
        if !same {
            outcome.record(what, name, apply(api, object).await);
        }
    }
    for (name, slice) in current {
        if !wanted.contains_key(&name) && slice.metadata.deletion_timestamp.is_none() {
            outcome.record(what, &name, delete(api, &name).await);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atoll_api::mcs::ServiceExportStatus;
    use k8s_openapi::api::core::v1::SessionAffinityConfig;

    fn service(type_: &str, cluster_ip: Option<&str>) -> Service {
        Service {
            spec: Some(ServiceSpec {
                type_: Some(type_.into()),
                cluster_ip: cluster_ip.map(Into::into),
                ports: Some(vec![k8s_openapi::api::core::v1::ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn condition<'a>(list: &'a [Condition], type_: &str) -> Option<(&'a str, &'a str)> {
        conditions::find(list, type_).map(|c| (c.status.as_str(), c.reason.as_str()))
    }

    #[test]
    fn validation_follows_the_service() {
        assert_eq!(validate(None).err().map(|e| e.0), Some(valid::NO_SERVICE));
        assert_eq!(
            validate(Some(&service("ExternalName", None)))
                .err()
                .map(|e| e.0),
            Some(valid::INVALID_SERVICE_TYPE)
        );
        let plain = validate(Some(&service("ClusterIP", Some("10.0.0.1")))).ok();
        assert_eq!(plain.as_ref().map(|s| s.headless), Some(false));
        assert_eq!(
            plain.map(|s| s.ports),
            Some(vec![ServicePort {
                name: Some("http".into()),
                protocol: Some("TCP".into()),
                app_protocol: None,
                port: 80
            }])
        );
        let headless = validate(Some(&service("ClusterIP", Some("None")))).ok();
        assert_eq!(headless.map(|s| s.headless), Some(true));
    }

    #[test]
    fn export_conditions_report_validity_progress_and_the_hubs_conflict() {
        let export = ServiceExport::new("web", ServiceExportSpec::default());
        let invalid =
            export_conditions_for(&export, &Err((valid::NO_SERVICE, "none".into())), None);
        assert_eq!(condition(&invalid, "Valid"), Some(("False", "NoService")));
        assert_eq!(condition(&invalid, "Ready"), Some(("False", "Failed")));
        assert_eq!(condition(&invalid, "Conflict"), None);

        let shape = Ok(ExportedService::default());
        let pending = export_conditions_for(&export, &shape, None);
        assert_eq!(condition(&pending, "Valid"), Some(("True", "Valid")));
        assert_eq!(condition(&pending, "Ready"), Some(("False", "Pending")));

        let mut hub = ServiceExport::new("demo.web", ServiceExportSpec::default());
        hub.status = Some(ServiceExportStatus {
            conditions: vec![conditions::condition(
                "Conflict",
                "True",
                "PortConflict",
                "ports differ",
                None,
                Time(Timestamp::now()),
            )],
        });
        let exported = export_conditions_for(&export, &shape, Some(&hub));
        assert_eq!(condition(&exported, "Ready"), Some(("True", "Exported")));
        assert_eq!(
            condition(&exported, "Conflict"),
            Some(("True", "PortConflict"))
        );

        // Recomputing from the written conditions changes nothing (no write loop).
        let mut written = export.clone();
        written.status = Some(ServiceExportStatus {
            conditions: exported.clone(),
        });
        assert_eq!(
            export_conditions_for(&written, &shape, Some(&hub)),
            exported
        );
        // An export that turns invalid drops the hub's Conflict.
        let withdrawn = export_conditions_for(
            &written,
            &Err((valid::NO_SERVICE, "gone".into())),
            Some(&hub),
        );
        assert_eq!(condition(&withdrawn, "Conflict"), None);
    }

    fn import(type_: ServiceImportType, ips: &[&str]) -> ServiceImport {
        let mut import = ServiceImport::new(
            "web",
            ServiceImportSpec {
                ports: vec![ServicePort {
                    name: Some("http".into()),
                    protocol: None,
                    app_protocol: None,
                    port: 80,
                }],
                ips: ips.iter().map(|ip| (*ip).to_owned()).collect(),
                type_,
                session_affinity: Some("ClientIP".into()),
                ..Default::default()
            },
        );
        import.metadata.namespace = Some("demo".into());
        import.metadata.uid = Some("uid-1".into());
        import
    }

    #[test]
    fn a_derived_service_as_stored_needs_no_rewrite() {
        let import = import(ServiceImportType::ClusterSetIP, &[]);
        let owner = owner_of(&import).unwrap_or_else(|| unreachable!());
        let wanted = derived_service(&import, "web", "derived-x", owner);
        let spec = wanted.spec.clone().unwrap_or_default();
        assert_eq!(spec.selector, None, "selectorless");
        assert_eq!(
            spec.cluster_ip, None,
            "the API server allocates the ClusterSet IP"
        );
        assert_eq!(wanted.owner_references()[0].kind, "ServiceImport");
        // What the API server stores: defaults filled in, an IP allocated.
        let mut stored = wanted.clone();
        if let Some(spec) = stored.spec.as_mut() {
            spec.cluster_ip = Some("10.0.0.10".into());
            spec.session_affinity_config = Some(SessionAffinityConfig {
                client_ip: Some(k8s_openapi::api::core::v1::ClientIPConfig {
                    timeout_seconds: Some(10800),
                }),
            });
            for port in spec.ports.iter_mut().flatten() {
                port.protocol = Some("TCP".into());
            }
        }
        assert!(same_derived_service(&stored, &wanted));
        // A changed port is a rewrite.
        if let Some(port) = stored
            .spec
            .as_mut()
            .and_then(|s| s.ports.as_mut())
            .and_then(|p| p.first_mut())
        {
            port.port = 81;
        }
        assert!(!same_derived_service(&stored, &wanted));

        let headless = import_headless();
        let spec = derived_service(&headless, "web", "derived-x", OwnerReference::default())
            .spec
            .unwrap_or_default();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
    }

    fn import_headless() -> ServiceImport {
        import(ServiceImportType::Headless, &[])
    }

    #[test]
    fn an_import_is_ready_once_usable() {
        let ready = |i: &ServiceImport| {
            condition(&import_ready(i, Vec::new()), "Ready")
                .map(|(s, r)| (s.to_owned(), r.to_owned()))
        };
        assert_eq!(
            ready(&import(ServiceImportType::ClusterSetIP, &[])),
            Some(("False".into(), "Pending".into()))
        );
        assert_eq!(
            ready(&import(ServiceImportType::ClusterSetIP, &["10.0.0.10"])),
            Some(("True".into(), "Ready".into()))
        );
        assert_eq!(
            ready(&import_headless()),
            Some(("True".into(), "Ready".into()))
        );
        assert_eq!(ip_family("fd00::1"), "IPv6");
        assert_eq!(ip_family("10.0.0.1"), "IPv4");
    }
}
