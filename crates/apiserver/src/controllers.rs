//! The server's own control loops, as kube-apiserver and kube-controller-manager run them for
//! the kinds served here: CRDs (serve, Established, instance cleanup), namespace deletion
//! (Terminating, cascade, finalize) and ownerReference garbage collection (background,
//! foreground, orphan). Each is level-triggered: it reads the store and converges.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use atoll_store::{Op, RangeRequest, Txn, prefix_end};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::registry::{Registry, ResourceDef, defs_from_crd};
use crate::storage::{
    DeleteOptions, Event, ListOptions, Propagation, Storage, WatchOptions, finalizers, is_deleting,
    name_of, namespace_of, now_rfc3339,
};

/// The finalizer that holds a CRD until its instances are gone.
pub const CRD_CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

fn crd_def(registry: &Registry) -> Option<Arc<ResourceDef>> {
    registry.get("apiextensions.k8s.io", "v1", "customresourcedefinitions")
}

fn condition(type_: &str, reason: &str, message: &str, since: &str) -> Value {
    json!({
        "type": type_,
        "status": "True",
        "lastTransitionTime": since,
        "reason": reason,
        "message": message,
    })
}

/// Serves every CRD's kinds and keeps its status (NamesAccepted, Established) current; removes
/// instances of deleted CRDs.
pub async fn run_crds(storage: Storage, registry: Registry, shutdown: CancellationToken) {
    let Some(def) = crd_def(&registry) else {
        return;
    };
    repeat_until_cancelled(
        &shutdown,
        Duration::from_millis(200),
        "CRD controller",
        || crd_pass(&storage, &registry, &def, &shutdown),
    )
    .await;
}

/// Runs `pass` again and again until `shutdown`, pausing `pause` after each one (a pass
/// returns when its watch ends or fails, and the next relists); failures are logged.
pub(crate) async fn repeat_until_cancelled<F, Fut>(
    shutdown: &CancellationToken,
    pause: Duration,
    what: &str,
    mut pass: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), ApiError>>,
{
    while !shutdown.is_cancelled() {
        if let Err(e) = pass().await {
            tracing::warn!(error = %e, what, "relisting");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

async fn crd_pass(
    storage: &Storage,
    registry: &Registry,
    def: &Arc<ResourceDef>,
    shutdown: &CancellationToken,
) -> Result<(), ApiError> {
    let (rv, items) = list_items(storage, def).await?;
    let names: HashSet<String> = items.iter().map(|c| name_of(c).to_string()).collect();
    for name in registry.crd_names() {
        if !names.contains(&name) {
            registry.remove_crd(&name);
        }
    }
    for crd in items {
        reconcile_crd(storage, registry, def, crd).await?;
    }
    follow(
        storage,
        def,
        rv,
        shutdown,
        move |deleted, object| async move {
            if deleted {
                registry.remove_crd(name_of(&object));
                Ok(())
            } else {
                reconcile_crd(storage, registry, def, object).await
            }
        },
    )
    .await
}

/// A consistent list of `def`'s objects: the revision it was read at, and the items.
pub(crate) async fn list_items(
    storage: &Storage,
    def: &Arc<ResourceDef>,
) -> Result<(String, Vec<Value>), ApiError> {
    let mut list = storage.list(def, None, &ListOptions::default()).await?;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_string();
    let items = match list.get_mut("items").map(Value::take) {
        Some(Value::Array(items)) => items,
        _ => Vec::new(),
    };
    Ok((rv, items))
}

/// Hands every change to `def`'s objects after revision `rv` to `on_change` (`true` for a
/// deletion), until shutdown or the end of the watch; a watch error (the revision compacted
/// away, say) is returned so that the caller relists.
pub(crate) async fn follow<F, Fut>(
    storage: &Storage,
    def: &Arc<ResourceDef>,
    rv: String,
    shutdown: &CancellationToken,
    mut on_change: F,
) -> Result<(), ApiError>
where
    F: FnMut(bool, Value) -> Fut,
    Fut: Future<Output = Result<(), ApiError>>,
{
    let mut events = storage
        .watch(
            def.clone(),
            None,
            WatchOptions {
                resource_version: Some(rv),
                ..Default::default()
            },
        )
        .await?
        .boxed();
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            next = events.next() => next,
        };
        match next {
            Some(Event::Object { kind, object }) => on_change(kind == "DELETED", object).await?,
            Some(Event::Error(status)) => {
                return Err(ApiError::internal(format!(
                    "{} watch ended: {status}",
                    def.kind
                )));
            }
            None => return Ok(()),
        }
    }
}

async fn reconcile_crd(
    storage: &Storage,
    registry: &Registry,
    def: &ResourceDef,
    crd: Value,
) -> Result<(), ApiError> {
    let name = name_of(&crd).to_string();
    let defs = defs_from_crd(&crd);
    if defs.is_none() && !is_deleting(&crd) {
        // Malformed, or in a group it may not be served from (one an older server stored):
        // never served, and its deletion below deletes no objects.
        tracing::warn!(crd = %name, "a CRD that may not be served is ignored");
        return Ok(());
    }
    if is_deleting(&crd) {
        registry.remove_crd(&name);
        if let Some(first) = defs.as_ref().and_then(|d| d.first()) {
            delete_prefix(storage, &first.key_prefix()).await?;
        }
        if finalizers(&crd).iter().any(|f| f == CRD_CLEANUP_FINALIZER) {
            storage
                .update_with(def, None, &name, None, false, |current| {
                    let mut next = current.clone();
                    let fins: Vec<String> = finalizers(current)
                        .into_iter()
                        .filter(|f| f != CRD_CLEANUP_FINALIZER)
                        .collect();
                    next["metadata"]["finalizers"] = json!(fins);
                    Ok(next)
                })
                .await?;
        }
        return Ok(());
    }
    let Some(defs) = defs else {
        return Ok(());
    };
    registry.set_crd(&name, defs);
    if !finalizers(&crd).iter().any(|f| f == CRD_CLEANUP_FINALIZER) {
        storage
            .update_with(def, None, &name, None, false, |current| {
                let mut next = current.clone();
                let mut fins = finalizers(current);
                if !fins.iter().any(|f| f == CRD_CLEANUP_FINALIZER) {
                    fins.push(CRD_CLEANUP_FINALIZER.into());
                }
                next["metadata"]["finalizers"] = json!(fins);
                Ok(next)
            })
            .await?;
    }
    storage
        .update_with(def, None, &name, Some("status"), false, |current| {
            let mut next = current.clone();
            let names = current.pointer("/spec/names").cloned().unwrap_or(json!({}));
            let mut accepted = names.clone();
            let kind = names["kind"].as_str().unwrap_or_default().to_string();
            if accepted.get("singular").is_none() {
                accepted["singular"] = json!(kind.to_lowercase());
            }
            if accepted.get("listKind").is_none() {
                accepted["listKind"] = json!(format!("{kind}List"));
            }
            let conditions = current
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let since = |t: &str| {
                conditions
                    .iter()
                    .find(|c| c["type"] == t && c["status"] == "True")
                    .and_then(|c| c["lastTransitionTime"].as_str().map(str::to_string))
                    .unwrap_or_else(now_rfc3339)
            };
            next["status"]["acceptedNames"] = accepted;
            next["status"]["conditions"] = json!([
                condition(
                    "NamesAccepted",
                    "NoConflicts",
                    "no conflicts found",
                    &since("NamesAccepted")
                ),
                condition(
                    "Established",
                    "InitialNamesAccepted",
                    "the initial names have been accepted",
                    &since("Established")
                ),
            ]);
            Ok(next)
        })
        .await?;
    Ok(())
}

/// The outcome of a loop's write to an object it read earlier: one deleted since needs nothing
/// more, so that is no failure of the pass.
fn ignore_gone<T>(result: Result<T, ApiError>) -> Result<(), ApiError> {
    match result {
        Ok(_) => Ok(()),
        Err(e) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// As [`ignore_gone`], for a delete that may also lose to concurrent writers (409): the next
/// pass sees the object again and retries.
fn ignore_gone_or_changed<T>(result: Result<T, ApiError>) -> Result<(), ApiError> {
    match result {
        Err(e) if e.code == 409 => Ok(()),
        other => ignore_gone(other),
    }
}

/// Deletes every key under a prefix, in batches.
async fn delete_prefix(storage: &Storage, prefix: &str) -> Result<(), ApiError> {
    loop {
        let resp = storage
            .store()
            .range(RangeRequest {
                start: prefix.to_string(),
                end: prefix_end(prefix),
                limit: 500,
                ..Default::default()
            })
            .await?;
        if resp.kvs.is_empty() {
            return Ok(());
        }
        let ops = resp
            .kvs
            .iter()
            .map(|kv| Op::Delete {
                key: kv.key.clone(),
            })
            .collect();
        storage
            .store()
            .txn(Txn {
                compares: vec![],
                success: ops,
                failure: vec![],
            })
            .await?;
    }
}

/// One definition per namespaced (group, resource): where objects in a namespace live.
fn namespaced_defs(registry: &Registry) -> Vec<Arc<ResourceDef>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for def in registry.all() {
        if def.namespaced
            && seen.insert((def.group.clone(), def.resource.clone()))
            && let Some(d) = registry.get_any_version(&def.group, &def.resource)
        {
            out.push(d);
        }
    }
    out
}

/// Empties Terminating namespaces, then removes their `kubernetes` finalizer so they go.
pub async fn run_namespaces(storage: Storage, registry: Registry, shutdown: CancellationToken) {
    let Some(ns_def) = registry.get("", "v1", "namespaces") else {
        return;
    };
    repeat_until_cancelled(
        &shutdown,
        Duration::from_millis(500),
        "namespace controller",
        || namespace_pass(&storage, &registry, &ns_def),
    )
    .await;
}

async fn namespace_pass(
    storage: &Storage,
    registry: &Registry,
    ns_def: &ResourceDef,
) -> Result<(), ApiError> {
    let list = storage.list(ns_def, None, &ListOptions::default()).await?;
    for ns in list["items"].as_array().cloned().unwrap_or_default() {
        if !is_deleting(&ns) {
            continue;
        }
        let name = name_of(&ns).to_string();
        let mut remaining = 0;
        for def in namespaced_defs(registry) {
            let objects = storage
                .list(&def, Some(&name), &ListOptions::default())
                .await?;
            for obj in objects["items"].as_array().cloned().unwrap_or_default() {
                remaining += 1;
                if is_deleting(&obj) {
                    continue;
                }
                ignore_gone_or_changed(
                    storage
                        .delete(&def, Some(&name), name_of(&obj), &DeleteOptions::default())
                        .await,
                )?;
            }
        }
        if remaining == 0 {
            ignore_gone(
                storage
                    .update_with(ns_def, None, &name, Some("finalize"), false, |current| {
                        let mut next = current.clone();
                        let fins: Vec<Value> = current
                            .pointer("/spec/finalizers")
                            .and_then(Value::as_array)
                            .map(|f| f.iter().filter(|f| *f != "kubernetes").cloned().collect())
                            .unwrap_or_default();
                        next["spec"] = json!({ "finalizers": fins });
                        Ok(next)
                    })
                    .await,
            )?;
        }
    }
    Ok(())
}

/// Garbage-collects dependents by ownerReferences, as kube-controller-manager's collector:
/// dependents of a missing owner are deleted; an owner deleted in the foreground waits for its
/// dependents; an orphaning owner's dependents lose their reference to it.
pub async fn run_gc(storage: Storage, registry: Registry, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        // A full pass over one snapshot, then a watch from it: another pass runs only when a
        // change matters to ownership (a dependent written, an owner deleted or deleting), and
        // every five minutes to be safe. Ordinary writes cost one cheap check each.
        let (revision, owners) = match gc_pass(&storage, &registry).await {
            Ok(done) => done,
            Err(e) => {
                tracing::warn!(error = %e, "garbage collector");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let mut changes = match storage
            .store()
            .watch("/registry/", revision + 1, false)
            .await
        {
            Ok(changes) => changes,
            Err(e) => {
                tracing::warn!(error = %e, "garbage collector watch");
                continue;
            }
        };
        let resync = tokio::time::sleep(Duration::from_secs(300));
        tokio::pin!(resync);
        let mut due: Option<tokio::time::Instant> = None;
        loop {
            let debounce = async {
                match due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = &mut resync => break,
                _ = debounce => break,
                change = changes.next() => match change {
                    Some(Ok(event)) => {
                        if due.is_none() && gc_relevant(&event, &owners) {
                            due = Some(tokio::time::Instant::now() + Duration::from_millis(100));
                        }
                    }
                    _ => break,
                },
            }
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether a change can give the collector work.
fn gc_relevant(event: &atoll_store::WatchEvent, owners: &HashSet<String>) -> bool {
    match event {
        atoll_store::WatchEvent::Put { kv, .. } => {
            contains(&kv.value, b"\"ownerReferences\"")
                || (contains(&kv.value, b"\"deletionTimestamp\"")
                    && (contains(&kv.value, b"\"orphan\"")
                        || contains(&kv.value, b"\"foregroundDeletion\"")))
        }
        // A dependent's deletion may free an owner waiting in the foreground.
        atoll_store::WatchEvent::Delete { prev, .. }
            if contains(&prev.value, b"\"ownerReferences\"") =>
        {
            true
        }
        atoll_store::WatchEvent::Delete { prev, .. } => {
            serde_json::from_slice::<Value>(&prev.value)
                .ok()
                .and_then(|obj| {
                    obj.pointer("/metadata/uid")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .is_some_and(|uid| owners.contains(&uid))
        }
        atoll_store::WatchEvent::Progress { .. } => false,
    }
}

struct Item {
    def: Arc<ResourceDef>,
    obj: Value,
}

fn owner_uids(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|refs| {
            refs.iter()
                .filter_map(|r| r["uid"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// One collection over a snapshot; returns its revision and the uids referenced as owners.
async fn gc_pass(
    storage: &Storage,
    registry: &Registry,
) -> Result<(i64, HashSet<String>), ApiError> {
    // One snapshot of everything, read in pages at one revision: an owner missing from it is
    // missing at that revision. Only objects that take part in ownership are decoded in full;
    // of the others only the uid is read.
    #[derive(serde::Deserialize)]
    struct UidOnly {
        metadata: UidMeta,
    }
    #[derive(serde::Deserialize)]
    struct UidMeta {
        uid: Option<String>,
    }
    let end = prefix_end("/registry/");
    let mut start = "/registry/".to_string();
    let mut revision = 0;
    let mut items: Vec<Item> = Vec::new();
    let mut uids: HashSet<String> = HashSet::new();
    let mut defs: HashMap<(String, String), Option<Arc<ResourceDef>>> = HashMap::new();
    loop {
        let resp = storage
            .store()
            .range(RangeRequest {
                start: start.clone(),
                end: end.clone(),
                limit: 1000,
                revision,
                count_only: false,
                // Each page must not count the rest of the store.
                stop_at_limit: true,
            })
            .await?;
        revision = resp.revision;
        for kv in &resp.kvs {
            if let Ok(UidOnly {
                metadata: UidMeta { uid: Some(uid) },
            }) = serde_json::from_slice::<UidOnly>(&kv.value)
            {
                uids.insert(uid);
            }
            if !contains(&kv.value, b"\"ownerReferences\"")
                && !contains(&kv.value, b"\"deletionTimestamp\"")
            {
                continue;
            }
            let mut parts = kv.key.trim_start_matches("/registry/").splitn(3, '/');
            let (Some(group), Some(resource)) = (parts.next(), parts.next()) else {
                continue;
            };
            let group = if group == "core" { "" } else { group };
            let def = defs
                .entry((group.to_string(), resource.to_string()))
                .or_insert_with(|| registry.get_any_version(group, resource))
                .clone();
            let (Some(def), Ok(obj)) = (def, serde_json::from_slice::<Value>(&kv.value)) else {
                continue;
            };
            items.push(Item { def, obj });
        }
        match resp.kvs.last() {
            Some(last) if resp.more => start = format!("{}\0", last.key),
            _ => break,
        }
    }
    let mut dependents: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        for uid in owner_uids(&item.obj) {
            dependents.entry(uid).or_default().push(i);
        }
    }
    let served_kinds: HashSet<(String, String)> = registry
        .all()
        .iter()
        .map(|d| (d.group.clone(), d.kind.clone()))
        .collect();
    // An owner of a kind this server does not serve cannot be looked up: its dependents stay,
    // as the upstream collector leaves them.
    let resolvable = |obj: &Value| {
        obj.pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .is_some_and(|refs| {
                refs.iter().all(|r| {
                    let group = r["apiVersion"]
                        .as_str()
                        .and_then(|v| v.rsplit_once('/').map(|(g, _)| g))
                        .unwrap_or_default();
                    let kind = r["kind"].as_str().unwrap_or_default();
                    served_kinds.contains(&(group.to_string(), kind.to_string()))
                })
            })
    };
    // Dependents whose owners are all gone.
    for item in &items {
        let owners = owner_uids(&item.obj);
        if owners.is_empty()
            || is_deleting(&item.obj)
            || owners.iter().any(|u| uids.contains(u))
            || !resolvable(&item.obj)
        {
            continue;
        }
        let ns = namespace_of(&item.obj).map(str::to_string);
        ignore_gone_or_changed(
            storage
                .delete(
                    &item.def,
                    ns.as_deref(),
                    name_of(&item.obj),
                    &DeleteOptions::default(),
                )
                .await,
        )?;
    }
    // Owners being deleted in the foreground or orphaning.
    for item in &items {
        if !is_deleting(&item.obj) {
            continue;
        }
        let fins = finalizers(&item.obj);
        let uid = item
            .obj
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let deps = dependents.get(&uid).cloned().unwrap_or_default();
        let mut done = None;
        if fins.iter().any(|f| f == "orphan") {
            for &d in &deps {
                let dep = &items[d];
                let ns = namespace_of(&dep.obj).map(str::to_string);
                let owner = uid.clone();
                let result = storage
                    .update_with(
                        &dep.def,
                        ns.as_deref(),
                        name_of(&dep.obj),
                        None,
                        false,
                        |current| {
                            let mut next = current.clone();
                            if let Some(refs) = next
                                .pointer_mut("/metadata/ownerReferences")
                                .and_then(Value::as_array_mut)
                            {
                                refs.retain(|r| r["uid"] != owner.as_str());
                            }
                            Ok(next)
                        },
                    )
                    .await;
                ignore_gone(result)?;
            }
            done = Some("orphan");
        } else if fins.iter().any(|f| f == "foregroundDeletion") {
            if deps.is_empty() {
                done = Some("foregroundDeletion");
            } else {
                for &d in &deps {
                    let dep = &items[d];
                    if is_deleting(&dep.obj) {
                        continue;
                    }
                    let ns = namespace_of(&dep.obj).map(str::to_string);
                    let opts = DeleteOptions {
                        propagation: Propagation::Foreground,
                        ..Default::default()
                    };
                    ignore_gone_or_changed(
                        storage
                            .delete(&dep.def, ns.as_deref(), name_of(&dep.obj), &opts)
                            .await,
                    )?;
                }
            }
        }
        if let Some(finalizer) = done {
            let ns = namespace_of(&item.obj).map(str::to_string);
            let result = storage
                .update_with(
                    &item.def,
                    ns.as_deref(),
                    name_of(&item.obj),
                    None,
                    false,
                    |current| {
                        let mut next = current.clone();
                        let fins: Vec<String> = finalizers(current)
                            .into_iter()
                            .filter(|f| f != finalizer)
                            .collect();
                        next["metadata"]["finalizers"] = json!(fins);
                        Ok(next)
                    },
                )
                .await;
            ignore_gone(result)?;
        }
    }
    Ok((revision, dependents.into_keys().collect()))
}
