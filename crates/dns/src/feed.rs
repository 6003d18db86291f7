//! Fills a [`Model`] from the cluster: kube-runtime watchers on ServiceImports and on the
//! EndpointSlices labelled `multicluster.kubernetes.io/service-name`.
//!
//! EndpointSlices are watched as `discovery.k8s.io/v1` when the API server serves it and as
//! `v1beta1` otherwise (Kubernetes 1.20 serves only v1beta1); the fields DNS reads are the
//! same in both. They are read as [`DynamicObject`]s so no `k8s-openapi` version is assumed.
//!
//! The feed is level-triggered: it mirrors both watches into a cache of converted
//! objects, and after each batch of events recomputes every service a batch touched from
//! the cache alone (the ServiceImport plus all of its slices), so a lost or repeated event
//! can never leave a stale entry. The model is marked synced once both watches have
//! delivered their first complete list.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use atoll_api::mcs::{LABEL_SERVICE_NAME, LABEL_SOURCE_CLUSTER, ServiceImport};
use futures::{Stream, StreamExt};
use kube::ResourceExt;
use kube::api::{Api, DynamicObject};
use kube::core::ApiResource;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::model::{Endpoint, Model, Port, Service, ServiceKey};

/// The EndpointSlice API group.
pub const ENDPOINTSLICE_GROUP: &str = "discovery.k8s.io";
/// EndpointSlice versions in order of preference.
pub const ENDPOINTSLICE_VERSIONS: [&str; 2] = ["v1", "v1beta1"];
/// Events handled together before the model is updated.
const BATCH: usize = 1024;
/// Retry delays of EndpointSlice discovery.
const DISCOVERY_BACKOFF: [Duration; 5] = [
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(10),
];

/// Watches the cluster behind `client` and keeps `model` up to date until `cancel` fires.
///
/// Never gives up: discovery and watch errors are logged and retried with backoff, and the
/// model stays unsynced (SERVFAIL) until both watches have listed everything once.
pub async fn run(client: kube::Client, model: Arc<Model>, cancel: CancellationToken) {
    let Some(slices) = cancel
        .run_until_cancelled(discover_endpoint_slices(&client))
        .await
    else {
        return;
    };
    tracing::info!(api_version = %slices.api_version, "watching EndpointSlices");
    let imports = watcher::watcher(
        Api::<ServiceImport>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|event| event.map(Change::Import));
    let slices = watcher::watcher(
        Api::<DynamicObject>::all_with(client, &slices),
        watcher::Config::default().labels(LABEL_SERVICE_NAME),
    )
    .default_backoff()
    .map(|event| event.map(Change::Slice));
    let events = futures::stream::select(imports, slices);
    cancel.run_until_cancelled(follow(events, &model)).await;
}

/// One watcher event of either watch.
#[derive(Debug)]
pub(crate) enum Change {
    /// From the ServiceImport watch.
    Import(Event<ServiceImport>),
    /// From the EndpointSlice watch.
    Slice(Event<DynamicObject>),
}

/// Applies `events` to `model` batch by batch, for as long as the stream lasts.
async fn follow<E>(events: impl Stream<Item = Result<Change, E>>, model: &Model)
where
    E: std::fmt::Display,
{
    let mut cache = Cache::default();
    let mut events = std::pin::pin!(events.ready_chunks(BATCH));
    // The watches retry with backoff; the same failure is logged once, not on every retry.
    let mut logged: Option<String> = None;
    while let Some(batch) = events.next().await {
        for event in batch {
            match event {
                Ok(change) => cache.handle(change),
                Err(error) => {
                    let text = error.to_string();
                    if logged.as_ref() == Some(&text) {
                        tracing::debug!(%error, "watch failed; retrying");
                    } else {
                        tracing::warn!(%error, "watch failed; retrying with backoff (does the cluster serve ServiceImport? `atoll crds --only mcs` installs it)");
                        logged = Some(text);
                    }
                }
            }
        }
        let changes = cache.take_changes();
        if !changes.is_empty() {
            model.apply(changes);
        }
        if cache.is_synced() && !model.is_synced() {
            model.set_synced(true);
            tracing::info!(services = model.len(), "synced; answering");
        }
    }
}

/// The EndpointSlice resource to watch: v1 when served, else v1beta1. Retries until it
/// finds one.
async fn discover_endpoint_slices(client: &kube::Client) -> ApiResource {
    let mut delays = DISCOVERY_BACKOFF
        .iter()
        .chain(std::iter::repeat(&DISCOVERY_BACKOFF[4]));
    loop {
        match kube::discovery::group(client, ENDPOINTSLICE_GROUP).await {
            Ok(group) => {
                let found = ENDPOINTSLICE_VERSIONS.iter().find_map(|version| {
                    group
                        .versioned_resources(version)
                        .into_iter()
                        .find(|(resource, _)| resource.kind == "EndpointSlice")
                        .map(|(resource, _)| resource)
                });
                if let Some(resource) = found {
                    return resource;
                }
                tracing::warn!(
                    versions = ?group.versions().collect::<Vec<_>>(),
                    "the API server serves no EndpointSlice in discovery.k8s.io v1 or v1beta1; retrying"
                );
            }
            Err(error) => tracing::warn!(%error, "discovering EndpointSlices failed; retrying"),
        }
        if let Some(delay) = delays.next() {
            tokio::time::sleep(*delay).await;
        }
    }
}

/// `(namespace, name)` of a Kubernetes object.
type ObjectKey = (String, String);

/// The watched objects, converted, with what changed since [`take_changes`](Self::take_changes).
#[derive(Debug, Default)]
pub(crate) struct Cache {
    imports: Side<ImportView>,
    slices: Side<SliceView>,
    /// Slice keys by the service they belong to.
    slices_by_service: HashMap<ServiceKey, BTreeSet<ObjectKey>>,
    dirty: BTreeSet<ServiceKey>,
}

/// One watch's objects: the live set, and the relist being buffered.
#[derive(Debug)]
struct Side<V> {
    objects: HashMap<ObjectKey, V>,
    relist: Option<HashMap<ObjectKey, V>>,
    listed: bool,
}

impl<V> Default for Side<V> {
    fn default() -> Self {
        Self {
            objects: HashMap::new(),
            relist: None,
            listed: false,
        }
    }
}

/// What DNS needs of a ServiceImport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ImportView {
    key: ServiceKey,
    service: Service,
}

/// What DNS needs of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SliceView {
    service: ServiceKey,
    cluster: String,
    endpoints: Vec<Endpoint>,
}

trait View {
    fn service(&self) -> &ServiceKey;
}

impl View for ImportView {
    fn service(&self) -> &ServiceKey {
        &self.key
    }
}

impl View for SliceView {
    fn service(&self) -> &ServiceKey {
        &self.service
    }
}

impl Cache {
    /// Whether both watches have completed their initial list.
    pub(crate) fn is_synced(&self) -> bool {
        self.imports.listed && self.slices.listed
    }

    /// Mirrors one watcher event.
    pub(crate) fn handle(&mut self, change: Change) {
        match change {
            Change::Import(event) => {
                for (_, old, new) in apply_event(&mut self.imports, convert(event, import_view)) {
                    self.dirty.extend(old);
                    self.dirty.extend(new);
                }
            }
            Change::Slice(event) => {
                for (key, old, new) in apply_event(&mut self.slices, convert(event, slice_view)) {
                    if let Some(old) = old {
                        if let Some(keys) = self.slices_by_service.get_mut(&old) {
                            keys.remove(&key);
                            if keys.is_empty() {
                                self.slices_by_service.remove(&old);
                            }
                        }
                        self.dirty.insert(old);
                    }
                    if let Some(new) = new {
                        self.slices_by_service
                            .entry(new.clone())
                            .or_default()
                            .insert(key);
                        self.dirty.insert(new);
                    }
                }
            }
        }
    }

    /// The services to update since the last call, recomputed from the cache: `None` for
    /// those that no longer exist.
    pub(crate) fn take_changes(&mut self) -> Vec<(ServiceKey, Option<Service>)> {
        std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|key| {
                let service = self.service(&key);
                (key, service)
            })
            .collect()
    }

    fn service(&self, key: &ServiceKey) -> Option<Service> {
        // Namespaces and ServiceImport names are DNS labels, lowercase like the key.
        let import = self
            .imports
            .objects
            .get(&(key.namespace.clone(), key.name.clone()))?;
        let mut service = import.service.clone();
        let slices = self.slices_by_service.get(key).into_iter().flatten();
        for slice in slices.filter_map(|k| self.slices.objects.get(k)) {
            service
                .clusters
                .entry(slice.cluster.clone())
                .or_default()
                .extend(slice.endpoints.iter().cloned());
        }
        Some(service)
    }
}

/// A watcher event with its object converted. `Apply` carries `None` for an object that
/// converts to nothing (it stops counting, as if deleted).
enum Converted<V> {
    Apply(ObjectKey, Option<V>),
    Delete(ObjectKey),
    Init,
    InitApply(ObjectKey, V),
    InitDone,
    Ignored,
}

fn convert<K: ResourceExt, V>(event: Event<K>, view: impl Fn(&K) -> Option<V>) -> Converted<V> {
    match event {
        Event::Apply(object) => match object_key(&object) {
            Some(key) => Converted::Apply(key, view(&object)),
            None => Converted::Ignored,
        },
        Event::Delete(object) => match object_key(&object) {
            Some(key) => Converted::Delete(key),
            None => Converted::Ignored,
        },
        Event::Init => Converted::Init,
        Event::InitApply(object) => match (object_key(&object), view(&object)) {
            (Some(key), Some(view)) => Converted::InitApply(key, view),
            _ => Converted::Ignored,
        },
        Event::InitDone => Converted::InitDone,
    }
}

/// Applies an event to one side; returns `(object, old service, new service)` for every
/// object whose contribution may have changed.
fn apply_event<V: View + PartialEq>(
    side: &mut Side<V>,
    event: Converted<V>,
) -> Vec<(ObjectKey, Option<ServiceKey>, Option<ServiceKey>)> {
    let service = |v: &V| v.service().clone();
    match event {
        Converted::Apply(key, view) => {
            let new = view.as_ref().map(service);
            let old = match view {
                Some(view) => side.objects.insert(key.clone(), view),
                None => side.objects.remove(&key),
            };
            vec![(key, old.as_ref().map(service), new)]
        }
        Converted::Delete(key) => {
            let old = side.objects.remove(&key);
            vec![(key, old.as_ref().map(service), None)]
        }
        Converted::Init => {
            side.relist = Some(HashMap::new());
            Vec::new()
        }
        Converted::InitApply(key, view) => {
            side.relist
                .get_or_insert_with(HashMap::new)
                .insert(key, view);
            Vec::new()
        }
        Converted::InitDone => {
            side.listed = true;
            let relisted = side.relist.take().unwrap_or_default();
            let old = std::mem::replace(&mut side.objects, relisted);
            let mut touched = Vec::new();
            for (key, view) in &old {
                let new = side.objects.get(key);
                if new != Some(view) {
                    touched.push((key.clone(), Some(service(view)), new.map(service)));
                }
            }
            for (key, view) in &side.objects {
                if !old.contains_key(key) {
                    touched.push((key.clone(), None, Some(service(view))));
                }
            }
            touched
        }
        Converted::Ignored => Vec::new(),
    }
}

fn object_key<K: ResourceExt>(object: &K) -> Option<ObjectKey> {
    Some((object.namespace()?, object.meta().name.clone()?))
}

/// A ServiceImport as the model holds it (without endpoints). Unparseable IPs and
/// out-of-range ports are left out.
pub(crate) fn import_view(import: &ServiceImport) -> Option<ImportView> {
    let (namespace, name) = object_key(import)?;
    let spec = &import.spec;
    let service = Service {
        kind: spec.type_,
        ips: spec.ips.iter().filter_map(|ip| ip.parse().ok()).collect(),
        ports: spec
            .ports
            .iter()
            .filter_map(|p| port(p.name.clone(), p.protocol.as_deref(), p.port))
            .collect(),
        clusters: BTreeMap::new(),
    };
    Some(ImportView {
        key: ServiceKey::new(&namespace, &name),
        service,
    })
}

fn port(name: Option<String>, protocol: Option<&str>, number: i32) -> Option<Port> {
    Some(Port {
        name: name.filter(|n| !n.is_empty()),
        protocol: protocol.unwrap_or("TCP").to_ascii_uppercase(),
        port: u16::try_from(number).ok().filter(|p| *p != 0)?,
    })
}

/// The fields DNS reads; identical in `discovery.k8s.io/v1` and `v1beta1`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SliceData {
    address_type: Option<String>,
    #[serde(default)]
    endpoints: Vec<EndpointData>,
    #[serde(default)]
    ports: Option<Vec<PortData>>,
}

#[derive(Deserialize)]
struct EndpointData {
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    conditions: Option<ConditionsData>,
    #[serde(default)]
    hostname: Option<String>,
}

#[derive(Deserialize)]
struct ConditionsData {
    #[serde(default)]
    ready: Option<bool>,
}

#[derive(Deserialize)]
struct PortData {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    port: Option<i32>,
}

/// An EndpointSlice of a multi-cluster service as the model holds it. `None` unless it has
/// both the `service-name` and `source-cluster` labels and IP addresses (FQDN slices are
/// not answered).
pub(crate) fn slice_view(slice: &DynamicObject) -> Option<SliceView> {
    let (namespace, name) = object_key(slice)?;
    let labels = slice.labels();
    let service = labels.get(LABEL_SERVICE_NAME).filter(|s| !s.is_empty())?;
    let Some(cluster) = labels.get(LABEL_SOURCE_CLUSTER).filter(|c| !c.is_empty()) else {
        tracing::debug!(%namespace, %name, "EndpointSlice without {LABEL_SOURCE_CLUSTER}; ignored");
        return None;
    };
    let data = match SliceData::deserialize(&slice.data) {
        Ok(data) => data,
        Err(error) => {
            tracing::warn!(%namespace, %name, %error, "unreadable EndpointSlice; ignored");
            return None;
        }
    };
    if !matches!(data.address_type.as_deref(), Some("IPv4" | "IPv6")) {
        return None;
    }
    // A slice without ports has endpoints but no SRV records.
    let ports: Vec<Port> = data
        .ports
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| port(p.name, p.protocol.as_deref(), p.port?))
        .collect();
    let endpoints = data
        .endpoints
        .into_iter()
        .map(|e| Endpoint {
            addresses: e
                .addresses
                .iter()
                .filter_map(|a| a.parse::<IpAddr>().ok())
                .collect(),
            hostname: e.hostname.filter(|h| !h.is_empty()),
            // "A nil value indicates an unknown state. In most cases consumers should
            // interpret this unknown state as ready."
            ready: e.conditions.and_then(|c| c.ready).unwrap_or(true),
            ports: ports.clone(),
        })
        .collect();
    Some(SliceView {
        service: ServiceKey::new(&namespace, service),
        cluster: cluster.clone(),
        endpoints,
    })
}

#[cfg(test)]
mod tests;
