//! The generic resource layer: every verb for every kind, over [`atoll_store::Store`], with
//! kube-apiserver's semantics (optimistic concurrency, uid/creationTimestamp/generation, the
//! status subresource, finalizers and deletionTimestamp, paginated lists over a snapshot,
//! gapless watches from a resourceVersion).
//!
//! Objects are stored as JSON in their storage version without `metadata.resourceVersion`:
//! the store's `mod_revision` is the resourceVersion, set on every read.

use std::sync::Arc;
use std::time::Duration;

use atoll_store::{
    Compare, KeyValue, Op, OpResult, RangeRequest, Revision, Store, StoreError, Txn, TxnResponse,
    WatchEvent, prefix_end,
};
use base64::Engine;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use crate::error::{ApiError, Cause};
use crate::registry::{GroupResource, ResourceDef};
use crate::selector::{FieldSelector, LabelSelector};
use crate::strategy;
use crate::validation;

/// How many times a write retries after losing a compare-and-swap race it did not ask to lose
/// (an unconditional update or a patch without resourceVersion).
const MAX_RETRIES: usize = 16;

/// The largest object (key and encoded value) the store takes: etcd's default request limit
/// (`--max-request-bytes`, 1.5 MiB), so an object `atoll hub` accepts also fits in etcd and
/// no client can grow one object, and every watch and list that carries it, without bound.
pub const MAX_STORED_BYTES: usize = 1_572_864;

/// The current time as Kubernetes writes it (RFC 3339, seconds, UTC).
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Five random characters as kube-apiserver appends them to a generateName.
fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .take(5)
        .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
        .collect()
}

/// Options of a list.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Label selector.
    pub label_selector: LabelSelector,
    /// Field selector.
    pub field_selector: FieldSelector,
    /// Page size; 0 is unlimited.
    pub limit: usize,
    /// The continue token of the previous page.
    pub continue_token: Option<String>,
    /// `resourceVersion`.
    pub resource_version: Option<String>,
    /// `resourceVersionMatch`.
    pub resource_version_match: Option<String>,
}

/// Options of a watch.
#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    /// Label selector.
    pub label_selector: LabelSelector,
    /// Field selector.
    pub field_selector: FieldSelector,
    /// Start after this resourceVersion; empty or "0" starts with the current state.
    pub resource_version: Option<String>,
    /// Send BOOKMARK events.
    pub allow_bookmarks: bool,
    /// End the watch after this long.
    pub timeout: Option<Duration>,
}

/// How dependents are treated when their owner is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Propagation {
    /// Dependents are deleted after the owner, in the background.
    #[default]
    Background,
    /// The owner stays (with the `foregroundDeletion` finalizer) until its blocking
    /// dependents are gone.
    Foreground,
    /// Dependents lose their owner reference and stay.
    Orphan,
}

/// Options of a delete.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// `preconditions.uid`.
    pub precondition_uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub precondition_rv: Option<String>,
    /// `propagationPolicy`.
    pub propagation: Propagation,
    /// `dryRun: [All]`.
    pub dry_run: bool,
}

/// The outcome of a delete.
#[derive(Debug, Clone)]
pub enum Deleted {
    /// The object is gone; its last state.
    Gone(Value),
    /// The object waits for finalizers; its state with deletionTimestamp.
    Pending(Value),
}

/// What a put that won its compare-and-swap left in the store.
struct Stored {
    /// The object as stored, with its new resourceVersion; `None` when the store did not return
    /// the written key, so each caller keeps its own fallback.
    object: Option<Value>,
    /// The store revision after the write.
    revision: Revision,
}

/// One event of a watch.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// ADDED, MODIFIED, DELETED or BOOKMARK with its object.
    Object {
        /// The type.
        kind: &'static str,
        /// The object.
        object: Value,
    },
    /// ERROR with a Status (410 Gone when the start revision was compacted).
    Error(Value),
}

impl Event {
    /// The event as a JSON watch line.
    pub fn to_json(&self) -> Value {
        match self {
            Event::Object { kind, object } => json!({ "type": kind, "object": object }),
            Event::Error(status) => json!({ "type": "ERROR", "object": status }),
        }
    }
}

/// The generic resource layer.
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
    rbac: Arc<crate::rbac::PolicyCache>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").finish_non_exhaustive()
    }
}

fn meta(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    meta(obj).and_then(|m| m.get(field)).and_then(Value::as_str)
}

/// The object's metadata map, created when missing.
pub fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = json!({});
    }
    let Value::Object(root) = obj else {
        unreachable!("made an object above")
    };
    let m = root.entry("metadata").or_insert_with(|| json!({}));
    if !m.is_object() {
        *m = json!({});
    }
    let Value::Object(map) = m else {
        unreachable!("made an object above")
    };
    map
}

/// The strings of a JSON array, as Kubernetes' string lists are read: empty when absent or
/// not an array, non-strings skipped.
pub fn string_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The object's finalizers.
pub fn finalizers(obj: &Value) -> Vec<String> {
    string_list(meta(obj).and_then(|m| m.get("finalizers")))
}

/// The object's `metadata.name`.
pub fn name_of(obj: &Value) -> &str {
    meta_str(obj, "name").unwrap_or_default()
}

/// The object's `metadata.namespace`.
pub fn namespace_of(obj: &Value) -> Option<&str> {
    meta_str(obj, "namespace").filter(|s| !s.is_empty())
}

/// Whether the object is being deleted.
pub fn is_deleting(obj: &Value) -> bool {
    meta(obj).is_some_and(|m| m.get("deletionTimestamp").is_some_and(|t| !t.is_null()))
}

/// Everything outside metadata and status: what bumps metadata.generation.
fn spec_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
        m.remove("apiVersion");
        m.remove("kind");
    }
    v
}

/// Reads a resourceVersion as upstream does, as an unsigned 64-bit number: a negative or
/// non-numeric one is 400. One beyond every revision a store can reach reads as the largest
/// revision, which callers answer as a resourceVersion from the future.
fn parse_rv(rv: &str) -> Result<Revision, ApiError> {
    // Worded as kube-apiserver 1.20 words it (it answers 500 there; a client's garbage is 400
    // here).
    // Digits only, as Go's ParseUint (Rust's would take a leading `+`).
    let digits = rv.bytes().all(|b| b.is_ascii_digit());
    let value = rv.parse::<u64>().ok().filter(|_| digits).ok_or_else(|| {
        ApiError::bad_request(format!(
            "resourceVersion: Invalid value: {rv:?}: {}",
            go_parse_error("ParseUint", rv)
        ))
    })?;
    Ok(Revision::try_from(value).unwrap_or(Revision::MAX))
}

/// Go's `strconv` error for a number that does not parse: `strconv.ParseInt: parsing "x":
/// invalid syntax`, or `value out of range` for digits too large for the type.
pub(crate) fn go_parse_error(function: &str, text: &str) -> String {
    let digits = text
        .strip_prefix(['+', '-'])
        .unwrap_or(text)
        .bytes()
        .all(|b| b.is_ascii_digit());
    let signed_ok = function == "ParseInt" || !text.starts_with(['+', '-']);
    let why = if digits && signed_ok && !text.trim_start_matches(['+', '-']).is_empty() {
        "value out of range"
    } else {
        "invalid syntax"
    };
    format!("strconv.{function}: parsing {text:?}: {why}")
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    v: String,
    rv: Revision,
    start: String,
}

/// Keys read per store range while listing without a limit.
const LIST_PAGE: usize = 500;

fn encode_continue(rv: Revision, start: &str) -> String {
    let token = ContinueToken {
        v: "meta.k8s.io/v1".into(),
        rv,
        start: start.to_string(),
    };
    let raw = serde_json::to_vec(&token).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE.encode(raw)
}

fn decode_continue(token: &str, prefix: &str) -> Result<(Revision, String), ApiError> {
    let bad = || ApiError::bad_request("continue key is not valid: illegal base64 data or json");
    let raw = base64::engine::general_purpose::URL_SAFE
        .decode(token)
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(token))
        .map_err(|_| bad())?;
    let token: ContinueToken = serde_json::from_slice(&raw).map_err(|_| bad())?;
    if token.v != "meta.k8s.io/v1" || token.rv <= 0 {
        return Err(bad());
    }
    // The start key is relative to the listed prefix, so a token cannot reach other keys.
    Ok((token.rv, format!("{prefix}{}", token.start)))
}

impl Storage {
    /// The layer over a store; watches end when `shutdown` is cancelled.
    /// Every write goes through a store that tells the RBAC policy cache of RBAC writes
    /// before it acknowledges them.
    pub fn new(store: Arc<dyn Store>, shutdown: CancellationToken) -> Storage {
        let rbac = Arc::new(crate::rbac::PolicyCache::default());
        let store: Arc<dyn Store> = Arc::new(crate::rbac::TrackedStore::new(store, rbac.clone()));
        Storage {
            store,
            shutdown,
            rbac,
        }
    }

    /// The store underneath (writes through it keep the RBAC policy cache current).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The parsed RBAC policy, kept between requests.
    pub fn rbac_policy_cache(&self) -> &Arc<crate::rbac::PolicyCache> {
        &self.rbac
    }

    fn decode(&self, def: &ResourceDef, kv: &KeyValue) -> Result<Value, ApiError> {
        let mut obj: Value = serde_json::from_slice(&kv.value)
            .map_err(|e| ApiError::internal(format!("stored object {} is corrupt: {e}", kv.key)))?;
        obj["apiVersion"] = json!(def.api_version());
        obj["kind"] = json!(def.kind);
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
        Ok(obj)
    }

    fn encode(def: &ResourceDef, obj: &Value) -> Bytes {
        let mut obj = obj.clone();
        obj["apiVersion"] = json!(crate::registry::api_version(
            &def.group,
            &def.storage_version
        ));
        meta_mut(&mut obj).remove("resourceVersion");
        Bytes::from(serde_json::to_vec(&obj).unwrap_or_default())
    }

    async fn read(
        &self,
        def: &ResourceDef,
        key: &str,
        revision: Revision,
    ) -> Result<Option<(Value, Revision)>, ApiError> {
        let resp = self
            .store
            .range(RangeRequest {
                start: key.to_string(),
                end: format!("{key}\0"),
                limit: 1,
                revision,
                count_only: false,
                stop_at_limit: false,
            })
            .await?;
        match resp.kvs.first() {
            Some(kv) => Ok(Some((self.decode(def, kv)?, kv.mod_revision))),
            None => Ok(None),
        }
    }

    /// Runs `op` only while `key`'s mod revision is still `revision` (0: the key must not
    /// exist): the optimistic concurrency under every write. `None` when another writer got
    /// there first and nothing was written; each caller decides whether that retries or fails.
    async fn write_if_revision(
        &self,
        key: &str,
        revision: Revision,
        op: Op,
    ) -> Result<Option<TxnResponse>, ApiError> {
        let resp = self
            .store
            .txn(Txn {
                compares: vec![Compare::ModRevision {
                    key: key.to_string(),
                    revision,
                }],
                success: vec![op],
                failure: vec![],
            })
            .await?;
        Ok(resp.succeeded.then_some(resp))
    }

    /// Stores `obj` at `key` if the key's mod revision is still `revision`; `None` when the
    /// compare failed. Every write of an object goes through here, so this is where an object
    /// too large to store is refused (413), whichever verb produced it.
    async fn put_if_revision(
        &self,
        def: &ResourceDef,
        key: &str,
        revision: Revision,
        obj: &Value,
    ) -> Result<Option<Stored>, ApiError> {
        let value = Self::encode(def, obj);
        if key.len().saturating_add(value.len()) > MAX_STORED_BYTES {
            return Err(ApiError::stored_too_large());
        }
        let op = Op::Put {
            key: key.to_string(),
            value,
        };
        let Some(resp) = self.write_if_revision(key, revision, op).await? else {
            return Ok(None);
        };
        let object = match resp.results.first() {
            Some(OpResult::Put { kv, .. }) => Some(self.decode(def, kv)?),
            _ => None,
        };
        Ok(Some(Stored {
            object,
            revision: resp.revision,
        }))
    }

    /// Deletes `key` if its mod revision is still `revision`: the store revision of the delete,
    /// or `None` when the compare failed.
    async fn delete_if_revision(
        &self,
        key: &str,
        revision: Revision,
    ) -> Result<Option<Revision>, ApiError> {
        let op = Op::Delete {
            key: key.to_string(),
        };
        Ok(self
            .write_if_revision(key, revision, op)
            .await?
            .map(|resp| resp.revision))
    }

    /// Reads one object.
    pub async fn get(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
        resource_version: Option<&str>,
    ) -> Result<Value, ApiError> {
        let revision = match resource_version {
            // "0" (any) and unset (most recent) both read the current state here; an exact
            // revision reads the object as it was then.
            None | Some("") | Some("0") => 0,
            Some(rv) => {
                let rv = parse_rv(rv)?;
                let current = self.store.current_revision().await?;
                if rv > current {
                    return Err(StoreError::FutureRevision {
                        requested: rv,
                        current,
                    }
                    .into());
                }
                0
            }
        };
        self.read(def, &def.key(namespace, name), revision)
            .await?
            .map(|(obj, _)| obj)
            .ok_or_else(|| ApiError::not_found(&def.group_resource(), name))
    }

    /// Lists objects, one page at a time over one snapshot revision.
    pub async fn list(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        opts: &ListOptions,
    ) -> Result<Value, ApiError> {
        let mut items = Vec::new();
        let metadata = self
            .list_each(def, namespace, opts, |obj| {
                items.push(obj);
                Ok(())
            })
            .await?;
        Ok(json!({
            "kind": def.list_kind,
            "apiVersion": def.api_version(),
            "metadata": metadata,
            "items": items,
        }))
    }

    /// Lists as [`Storage::list`] does, straight into the JSON of the list: only one item is a JSON tree at a time, so
    /// a large list costs its encoded size rather than a tree per object.
    pub async fn list_json(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        opts: &ListOptions,
    ) -> Result<[Bytes; 2], ApiError> {
        let mut items = Vec::new();
        let metadata = self
            .list_each(def, namespace, opts, |obj| {
                items.push(if items.is_empty() { b'[' } else { b',' });
                serde_json::to_writer(&mut items, &obj)
                    .map_err(|e| ApiError::internal(e.to_string()))
            })
            .await?;
        if items.is_empty() {
            items.push(b'[');
        }
        items.push(b']');
        items.push(b'}');
        let encode =
            |v: &Value| serde_json::to_vec(v).map_err(|e| ApiError::internal(e.to_string()));
        let mut head = Vec::with_capacity(256);
        head.extend_from_slice(b"{\"kind\":");
        head.extend(encode(&json!(def.list_kind))?);
        head.extend_from_slice(b",\"apiVersion\":");
        head.extend(encode(&json!(def.api_version()))?);
        head.extend_from_slice(b",\"metadata\":");
        head.extend(encode(&metadata)?);
        head.extend_from_slice(b",\"items\":");
        // Two parts, so the items are never copied into one buffer with the head.
        Ok([Bytes::from(head), Bytes::from(items)])
    }

    /// The listing behind [`Storage::list`]: each selected item in key order to `each`; returns
    /// the list's metadata (resourceVersion, continue).
    async fn list_each(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        opts: &ListOptions,
        mut each: impl FnMut(Value) -> Result<(), ApiError> + Send,
    ) -> Result<Value, ApiError> {
        let prefix = def.list_prefix(namespace);
        let end = prefix_end(&prefix);
        let rv = opts.resource_version.as_deref().filter(|s| !s.is_empty());
        let rv_match = opts
            .resource_version_match
            .as_deref()
            .filter(|s| !s.is_empty());
        let (mut revision, mut start) = match &opts.continue_token {
            Some(token) if !token.is_empty() => {
                if rv.is_some_and(|rv| rv != "0") {
                    return Err(ApiError::bad_request(
                        "specifying resource version is not allowed when using continue",
                    ));
                }
                let (revision, start) = decode_continue(token, &prefix)?;
                let compacted = self.store.compacted_revision().await?;
                if revision < compacted {
                    return Err(ApiError::expired(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
                    ));
                }
                (revision, start)
            }
            _ => {
                let revision = match (rv, rv_match) {
                    (None, Some(_)) => {
                        return Err(ApiError::bad_request(
                            "resourceVersionMatch is forbidden unless resourceVersion is provided",
                        ));
                    }
                    (Some(rv), Some("Exact")) => {
                        let r = parse_rv(rv)?;
                        if r == 0 {
                            return Err(ApiError::bad_request(
                                "resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"0\"",
                            ));
                        }
                        r
                    }
                    (Some(rv), None | Some("NotOlderThan")) => {
                        let r = parse_rv(rv)?;
                        let current = self.store.current_revision().await?;
                        if r > current {
                            return Err(StoreError::FutureRevision {
                                requested: r,
                                current,
                            }
                            .into());
                        }
                        0
                    }
                    (Some(_), Some(other)) => {
                        return Err(ApiError::bad_request(format!(
                            "resourceVersionMatch: Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\", \"\""
                        )));
                    }
                    (None, None) => 0,
                };
                (revision, prefix.clone())
            }
        };
        // A field selector on the name reads one key instead of the whole prefix.
        let pinned = opts
            .field_selector
            .pinned_name()
            .filter(|_| def.namespaced == namespace.is_some() || !def.namespaced)
            .map(|name| def.key(namespace, name));
        let (range_start, range_end) = match &pinned {
            Some(key) if start.as_str() <= key.as_str() => (key.clone(), format!("{key}\0")),
            Some(_) => (end.clone(), end.clone()),
            None => (start.clone(), end.clone()),
        };
        start = range_start;
        let mut listed = 0;
        let mut next: Option<String> = None;
        // Read in pages at one revision even without a limit, as kube-apiserver reads etcd,
        // so a large list never holds every stored value at once (a huge `limit` included).
        let batch = if opts.limit == 0 {
            LIST_PAGE
        } else {
            opts.limit.saturating_add(1).clamp(64, LIST_PAGE)
        };
        loop {
            let resp = self
                .store
                .range(RangeRequest {
                    start: start.clone(),
                    end: range_end.clone(),
                    limit: batch,
                    revision,
                    count_only: false,
                    stop_at_limit: true,
                })
                .await?;
            revision = resp.revision;
            let mut last_key = None;
            for kv in &resp.kvs {
                if opts.limit > 0 && listed == opts.limit {
                    next = Some(kv.key.clone());
                    break;
                }
                last_key = Some(kv.key.clone());
                let mut obj = self.decode(def, kv)?;
                if opts.label_selector.matches(&obj) && opts.field_selector.matches(&obj) {
                    if !def.custom
                        && let Some(o) = obj.as_object_mut()
                    {
                        // Items of built-in lists carry no apiVersion or kind, as upstream's
                        // typed lists; custom resource lists are unstructured and keep them.
                        o.remove("apiVersion");
                        o.remove("kind");
                    }
                    listed = listed.saturating_add(1);
                    each(obj)?;
                }
            }
            if next.is_some() || !resp.more {
                break;
            }
            match last_key {
                Some(k) => start = format!("{k}\0"),
                None => break,
            }
        }
        let mut metadata = json!({ "resourceVersion": revision.to_string() });
        if let Some(next_key) = next {
            let relative = next_key.strip_prefix(&prefix).unwrap_or(&next_key);
            metadata["continue"] = json!(encode_continue(revision, relative));
        }
        Ok(metadata)
    }

    async fn check_namespace(&self, def: &ResourceDef, namespace: &str) -> Result<(), ApiError> {
        let key = format!("/registry/core/namespaces/{namespace}");
        let resp = self
            .store
            .range(RangeRequest {
                start: key.clone(),
                end: format!("{key}\0"),
                limit: 1,
                ..Default::default()
            })
            .await?;
        let Some(kv) = resp.kvs.first() else {
            return Err(ApiError::not_found(
                &GroupResource::new("", "namespaces"),
                namespace,
            ));
        };
        let ns: Value = serde_json::from_slice(&kv.value)
            .map_err(|e| ApiError::internal(format!("stored namespace is corrupt: {e}")))?;
        if is_deleting(&ns) {
            return Err(ApiError::forbidden(
                &def.group_resource(),
                "",
                format!(
                    "unable to create new content in namespace {namespace} because it is being terminated"
                ),
            ));
        }
        Ok(())
    }

    /// Checks the body's apiVersion and kind against the URL, filling them in when absent.
    fn check_type(def: &ResourceDef, obj: &mut Value) -> Result<(), ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request must be a JSON object",
            ));
        }
        match obj.get("apiVersion").and_then(Value::as_str) {
            Some(v) if !v.is_empty() && v != def.api_version() => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({v}) does not match the expected API version ({})",
                    def.api_version()
                )));
            }
            _ => obj["apiVersion"] = json!(def.api_version()),
        }
        match obj.get("kind").and_then(Value::as_str) {
            Some(k) if !k.is_empty() && k != def.kind => {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    def.kind
                )));
            }
            _ => obj["kind"] = json!(def.kind),
        }
        strategy::prune_unknown(def, obj);
        Ok(())
    }

    fn validate(
        def: &ResourceDef,
        obj: &Value,
        old: Option<&Value>,
        generated: bool,
    ) -> Result<(), ApiError> {
        let name = name_of(obj);
        let mut causes = Vec::new();
        if old.is_none() {
            let checked = if generated {
                meta_str(obj, "generateName").unwrap_or_default()
            } else {
                name
            };
            causes.extend(validation::validate_name(def.name_rule, checked, generated));
        }
        causes.extend(validation::validate_labels(obj));
        if let (Some(old), true) = (old, is_deleting(obj)) {
            let before = finalizers(old);
            for f in finalizers(obj) {
                if !before.contains(&f) {
                    causes.push(Cause::forbidden(
                        "metadata.finalizers",
                        format!("no new finalizers can be added if the object is being deleted, found new finalizers []string{{{f:?}}}"),
                    ));
                }
            }
        }
        causes.extend(strategy::validate(def, obj, old));
        if causes.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(&def.kind, &def.group, name, causes))
        }
    }

    /// Creates an object (with generateName when it has no name).
    pub async fn create(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        mut obj: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        Self::check_type(def, &mut obj)?;
        let body_ns = namespace_of(&obj).map(str::to_string);
        let namespace = if def.namespaced {
            let ns = match (namespace, body_ns.as_deref()) {
                (Some(url), Some(body)) if url != body => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                (Some(url), _) => url.to_string(),
                (None, _) => {
                    return Err(ApiError::path_not_found());
                }
            };
            Some(ns)
        } else {
            None
        };
        let generate = meta_str(&obj, "generateName")
            .filter(|g| !g.is_empty())
            .map(str::to_string);
        let explicit = meta_str(&obj, "name")
            .filter(|n| !n.is_empty())
            .map(str::to_string);
        let generated = explicit.is_none() && generate.is_some();
        {
            let m = meta_mut(&mut obj);
            for field in [
                "resourceVersion",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "selfLink",
                "managedFields",
            ] {
                m.remove(field);
            }
            match &namespace {
                Some(ns) => {
                    m.insert("namespace".into(), json!(ns));
                }
                None => {
                    m.remove("namespace");
                }
            }
            m.insert("uid".into(), json!(new_uid()));
            m.insert("creationTimestamp".into(), json!(now_rfc3339()));
            if def.tracks_generation {
                m.insert("generation".into(), json!(1));
            } else {
                m.remove("generation");
            }
        }
        if def.status_subresource && def.custom {
            // A custom resource with a status subresource is created without status.
            if let Some(o) = obj.as_object_mut() {
                o.remove("status");
            }
        }
        strategy::prepare_create(def, &mut obj);
        // Validate with a placeholder name for generateName: the prefix is what is checked.
        Self::validate(def, &obj, None, generated)?;
        if let Some(ns) = &namespace {
            self.check_namespace(def, ns).await?;
        }
        let attempts = if generated { 8 } else { 1 };
        for _ in 0..attempts {
            let name = match (&explicit, &generate) {
                (Some(n), _) => n.clone(),
                (None, Some(g)) => format!("{g}{}", name_suffix()),
                (None, None) => {
                    return Err(ApiError::invalid(
                        &def.kind,
                        &def.group,
                        "",
                        vec![Cause::required(
                            "metadata.name",
                            "name or generateName is required",
                        )],
                    ));
                }
            };
            meta_mut(&mut obj).insert("name".into(), json!(name));
            let key = def.key(namespace.as_deref(), &name);
            if dry_run {
                let exists = self.read(def, &key, 0).await?.is_some();
                if exists {
                    if generated {
                        continue;
                    }
                    return Err(ApiError::already_exists(&def.group_resource(), &name));
                }
                return Ok(obj);
            }
            // Revision 0: the key must not exist yet.
            match self.put_if_revision(def, &key, 0, &obj).await? {
                Some(Stored {
                    object: Some(created),
                    ..
                }) => return Ok(created),
                Some(_) => {
                    return Err(ApiError::internal(
                        "the store did not return the created object",
                    ));
                }
                None if !generated => {
                    return Err(ApiError::already_exists(&def.group_resource(), &name));
                }
                // A generated name that is taken: try another suffix.
                None => {}
            }
        }
        Err(ApiError {
            code: 500,
            reason: "AlreadyExists",
            message: "failed to generate a unique name; try again".into(),
            details: None,
        })
    }

    /// Reads, changes and writes an object with compare-and-swap, retrying lost races unless
    /// the change carries its own resourceVersion precondition. `change` gets the current object
    /// and returns the desired one; kube-apiserver's update rules (immutable metadata, the
    /// status subresource, generation, finalizers) are applied to what it returns.
    pub async fn update_with<F>(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        dry_run: bool,
        mut change: F,
    ) -> Result<Value, ApiError>
    where
        F: FnMut(&Value) -> Result<Value, ApiError> + Send,
    {
        let gr = def.group_resource();
        let key = def.key(namespace, name);
        for _ in 0..MAX_RETRIES {
            let Some((current, mod_rev)) = self.read(def, &key, 0).await? else {
                return Err(ApiError::not_found(&gr, name));
            };
            let mut desired = change(&current)?;
            Self::check_type(def, &mut desired)?;
            match meta_str(&desired, "name") {
                Some(n) if !n.is_empty() && n != name => {
                    return Err(ApiError::bad_request(format!(
                        "the name of the object ({n}) does not match the name on the URL ({name})"
                    )));
                }
                _ => {}
            }
            if def.namespaced
                && let (Some(url), Some(body)) = (namespace, namespace_of(&desired))
                && url != body
            {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            let precondition = meta_str(&desired, "resourceVersion")
                .filter(|s| !s.is_empty())
                .map(str::to_string);
            if let Some(rv) = &precondition
                && parse_rv(rv)? != mod_rev
            {
                return Err(ApiError::stale(&gr, name));
            }
            let next = merge_update(def, &current, desired, subresource);
            let next = strategy::prepare_update(def, &current, next, subresource);
            Self::validate(def, &next, Some(&current), false)?;
            if strip_rv(&next) == strip_rv(&current) {
                return Ok(current);
            }
            let finished = is_deleting(&next) && strategy::finalizers_done(def, &next);
            if dry_run {
                return Ok(next);
            }
            // The last finalizer removed from a deleting object deletes it instead of writing it.
            let written = if finished {
                self.delete_if_revision(&key, mod_rev)
                    .await?
                    .map(|revision| Stored {
                        object: None,
                        revision,
                    })
            } else {
                self.put_if_revision(def, &key, mod_rev, &next).await?
            };
            if let Some(written) = written {
                return match written.object {
                    Some(stored) => Ok(stored),
                    // Deleted (or not echoed by the store): the final state at the write's revision.
                    None => {
                        let mut gone = next;
                        meta_mut(&mut gone).insert(
                            "resourceVersion".into(),
                            json!(written.revision.to_string()),
                        );
                        Ok(gone)
                    }
                };
            }
            if precondition.is_some() {
                return Err(ApiError::stale(&gr, name));
            }
        }
        Err(ApiError::conflict(
            &gr,
            name,
            "too many concurrent writers; please try again",
        ))
    }

    /// Deletes an object, or marks it for deletion when finalizers hold it.
    pub async fn delete(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Deleted, ApiError> {
        let gr = def.group_resource();
        let key = def.key(namespace, name);
        for _ in 0..MAX_RETRIES {
            let Some((current, mod_rev)) = self.read(def, &key, 0).await? else {
                return Err(ApiError::not_found(&gr, name));
            };
            if let Some(uid) = &opts.precondition_uid {
                let actual = meta_str(&current, "uid").unwrap_or_default();
                if uid != actual {
                    return Err(ApiError::conflict(
                        &GroupResource::new(&def.group, &def.kind),
                        name,
                        format!(
                            "the UID in the precondition ({uid}) does not match the UID in record ({actual}). The object might have been deleted and then recreated"
                        ),
                    ));
                }
            }
            if let Some(rv) = &opts.precondition_rv {
                let actual = mod_rev.to_string();
                if *rv != actual {
                    return Err(ApiError::conflict(
                        &GroupResource::new(&def.group, &def.kind),
                        name,
                        format!(
                            "the ResourceVersion in the precondition ({rv}) does not match the ResourceVersion in record ({actual}). The object might have been modified"
                        ),
                    ));
                }
            }
            let mut next = current.clone();
            let mut fins = finalizers(&next);
            match opts.propagation {
                Propagation::Foreground => {
                    if !fins.iter().any(|f| f == "foregroundDeletion") {
                        fins.push("foregroundDeletion".into());
                    }
                    fins.retain(|f| f != "orphan");
                }
                Propagation::Orphan => {
                    if !fins.iter().any(|f| f == "orphan") {
                        fins.push("orphan".into());
                    }
                    fins.retain(|f| f != "foregroundDeletion");
                }
                Propagation::Background => {}
            }
            // Finalizers asked for by the propagation policy only matter to objects that have
            // dependents, which the garbage collector checks; it removes them at once otherwise.
            let pending = !fins.is_empty() || strategy::holds_deletion(def, &current);
            if !pending {
                if opts.dry_run {
                    return Ok(Deleted::Gone(current));
                }
                if self.delete_if_revision(&key, mod_rev).await?.is_some() {
                    return Ok(Deleted::Gone(current));
                }
                continue;
            }
            if is_deleting(&current) && finalizers(&current) == fins {
                return Ok(Deleted::Pending(current));
            }
            {
                let m = meta_mut(&mut next);
                if m.get("deletionTimestamp").is_none_or(Value::is_null) {
                    m.insert("deletionTimestamp".into(), json!(now_rfc3339()));
                    m.insert("deletionGracePeriodSeconds".into(), json!(0));
                    if let Some(g) = m.get("generation").and_then(Value::as_i64) {
                        m.insert("generation".into(), json!(g.saturating_add(1)));
                    }
                }
                if fins.is_empty() {
                    m.remove("finalizers");
                } else {
                    m.insert("finalizers".into(), json!(fins));
                }
            }
            strategy::prepare_delete(def, &mut next);
            if opts.dry_run {
                return Ok(Deleted::Pending(next));
            }
            if let Some(written) = self.put_if_revision(def, &key, mod_rev, &next).await? {
                return Ok(Deleted::Pending(written.object.unwrap_or(next)));
            }
        }
        Err(ApiError::conflict(
            &gr,
            name,
            "too many concurrent writers; please try again",
        ))
    }

    /// Deletes every object a list selects; returns them as they were (or are, when pending).
    pub async fn delete_collection(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        list: &ListOptions,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let mut listed = self.list(def, namespace, list).await?;
        let listed_items = match listed["items"].take() {
            Value::Array(items) => items,
            _ => Vec::new(),
        };
        let mut items = Vec::new();
        for item in listed_items {
            let ns = namespace_of(&item).map(str::to_string);
            match self.delete(def, ns.as_deref(), name_of(&item), opts).await {
                Ok(Deleted::Gone(obj) | Deleted::Pending(obj)) => items.push(obj),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(json!({
            "kind": def.list_kind,
            "apiVersion": def.api_version(),
            "metadata": { "resourceVersion": listed["metadata"]["resourceVersion"] },
            "items": items,
        }))
    }

    /// Watches objects: the current state first (unless starting after a resourceVersion),
    /// then every change, with no gaps.
    pub async fn watch(
        &self,
        def: Arc<ResourceDef>,
        namespace: Option<&str>,
        opts: WatchOptions,
    ) -> Result<impl Stream<Item = Event> + Send + 'static, ApiError> {
        let prefix = def.list_prefix(namespace);
        let rv = opts
            .resource_version
            .as_deref()
            .filter(|s| !s.is_empty() && *s != "0");
        let (initial, start) = match rv {
            Some(rv) => {
                let rv = parse_rv(rv)?;
                // A resourceVersion from the future is answered as get and list answer it, so
                // the watch's start below never overflows.
                let current = self.store.current_revision().await?;
                if rv > current {
                    return Err(StoreError::FutureRevision {
                        requested: rv,
                        current,
                    }
                    .into());
                }
                (Vec::new(), rv.saturating_add(1))
            }
            None => {
                let mut list = self
                    .list(
                        &def,
                        namespace,
                        &ListOptions {
                            label_selector: opts.label_selector.clone(),
                            field_selector: opts.field_selector.clone(),
                            ..Default::default()
                        },
                    )
                    .await?;
                let revision = list["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|s| s.parse::<Revision>().ok())
                    .unwrap_or(0);
                let items: Vec<Event> = match list["items"].take() {
                    Value::Array(items) => items,
                    _ => Vec::new(),
                }
                .into_iter()
                .map(|mut object| {
                    // Watch events always carry apiVersion and kind.
                    object["apiVersion"] = json!(def.api_version());
                    object["kind"] = json!(def.kind);
                    Event::Object {
                        kind: "ADDED",
                        object,
                    }
                })
                .collect();
                (items, revision.saturating_add(1))
            }
        };
        let changes = match self.store.watch(&prefix, start, opts.allow_bookmarks).await {
            Ok(s) => s,
            Err(StoreError::Compacted {
                requested,
                compacted,
            }) => {
                let err = ApiError::expired(format!(
                    "too old resource version: {} ({compacted})",
                    requested.saturating_sub(1)
                ));
                return Ok(futures::stream::iter(vec![Event::Error(err.to_status())]).boxed());
            }
            Err(e) => return Err(e.into()),
        };
        let storage = self.clone();
        let shutdown = self.shutdown.clone();
        let timeout = opts.timeout.unwrap_or(Duration::from_secs(1800));
        let label = opts.label_selector;
        let field = opts.field_selector;
        let bookmarks = opts.allow_bookmarks;
        let def2 = def.clone();
        // A watcher the store dropped for not keeping up ends here, without an error event,
        // as kube-apiserver closes a watcher that does not keep up: the client watches again
        // from the last resourceVersion it saw (or re-lists after a 410).
        let events = changes
            .take_while(|change| {
                let lagged = matches!(change, Err(StoreError::WatcherLagged));
                if lagged {
                    tracing::debug!("watch ended: the watcher did not keep up");
                }
                futures::future::ready(!lagged)
            })
            .take_until(async move {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(timeout) => {}
                }
            })
            .filter_map(move |change| {
                let out = match change {
                    Ok(ev) => storage.translate(&def2, ev, &label, &field, bookmarks),
                    Err(StoreError::Compacted {
                        requested,
                        compacted,
                    }) => Some(Event::Error(
                        ApiError::expired(format!(
                            "too old resource version: {requested} ({compacted})"
                        ))
                        .to_status(),
                    )),
                    Err(e) => {
                        tracing::debug!(error = %e, "watch ended by the store");
                        Some(Event::Error(ApiError::from(e).to_status()))
                    }
                };
                futures::future::ready(out)
            });
        Ok(futures::stream::iter(initial).chain(events).boxed())
    }

    fn translate(
        &self,
        def: &ResourceDef,
        event: WatchEvent,
        label: &LabelSelector,
        field: &FieldSelector,
        bookmarks: bool,
    ) -> Option<Event> {
        let matches = |obj: &Value| label.matches(obj) && field.matches(obj);
        match event {
            WatchEvent::Put { kv, prev } => {
                let obj = self.decode(def, &kv).ok()?;
                let now = matches(&obj);
                let before = prev
                    .as_ref()
                    .and_then(|p| self.decode(def, p).ok())
                    .map(|p| matches(&p));
                match (before, now) {
                    (None, true) | (Some(false), true) => Some(Event::Object {
                        kind: "ADDED",
                        object: obj,
                    }),
                    (Some(true), true) => Some(Event::Object {
                        kind: "MODIFIED",
                        object: obj,
                    }),
                    (Some(true), false) => Some(Event::Object {
                        kind: "DELETED",
                        object: obj,
                    }),
                    _ => None,
                }
            }
            WatchEvent::Delete { prev, revision } => {
                let mut obj = self.decode(def, &prev).ok()?;
                if !matches(&obj) {
                    return None;
                }
                meta_mut(&mut obj).insert("resourceVersion".into(), json!(revision.to_string()));
                Some(Event::Object {
                    kind: "DELETED",
                    object: obj,
                })
            }
            WatchEvent::Progress { revision } => bookmarks.then(|| Event::Object {
                kind: "BOOKMARK",
                object: json!({
                    "kind": def.kind,
                    "apiVersion": def.api_version(),
                    "metadata": { "resourceVersion": revision.to_string() },
                }),
            }),
        }
    }
}

fn strip_rv(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    v
}

/// Gives `target` the status of `source`, or none when `source` has none.
fn copy_status(target: &mut Value, source: &Value) {
    match source.get("status") {
        Some(status) => target["status"] = status.clone(),
        None => {
            if let Some(o) = target.as_object_mut() {
                o.remove("status");
            }
        }
    }
}

/// kube-apiserver's update rules: what a client may not change is taken from the current
/// object, the status subresource splits writes, and generation follows spec changes.
fn merge_update(
    def: &ResourceDef,
    current: &Value,
    desired: Value,
    subresource: Option<&str>,
) -> Value {
    let mut next = match subresource {
        // A CSR's /approval is a status write too; its strategy keeps only the conditions.
        Some("status") | Some("approval") => {
            // A write to /status changes status only.
            let mut next = current.clone();
            copy_status(&mut next, &desired);
            next
        }
        _ => {
            let mut next = desired;
            if def.status_subresource {
                // Status is written through /status only.
                copy_status(&mut next, current);
            }
            next
        }
    };
    let current_meta = meta(current).cloned().unwrap_or_default();
    let m = meta_mut(&mut next);
    for field in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "resourceVersion",
    ] {
        match current_meta.get(field) {
            Some(v) => {
                m.insert(field.into(), v.clone());
            }
            None => {
                m.remove(field);
            }
        }
    }
    m.remove("selfLink");
    m.remove("managedFields");
    if m.get("finalizers")
        .is_some_and(|f| f.as_array().is_some_and(Vec::is_empty) || f.is_null())
    {
        m.remove("finalizers");
    }
    if def.tracks_generation && spec_part(current) != spec_part(&next) {
        let g = current_meta
            .get("generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        meta_mut(&mut next).insert("generation".into(), json!(g.saturating_add(1)));
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_read_as_kube_apiserver_reads_them() {
        assert_eq!(parse_rv("12").ok(), Some(12));
        assert_eq!(parse_rv("18446744073709551615").ok(), Some(Revision::MAX));
        for (text, why) in [
            ("-1", "invalid syntax"),
            ("+1", "invalid syntax"),
            ("abc", "invalid syntax"),
            ("99999999999999999999999", "value out of range"),
        ] {
            let err = parse_rv(text).err().map(|e| (e.code, e.message));
            assert_eq!(
                err,
                Some((
                    400,
                    format!(
                        "resourceVersion: Invalid value: {text:?}: strconv.ParseUint: parsing {text:?}: {why}"
                    )
                ))
            );
        }
        assert_eq!(
            go_parse_error("ParseInt", "-99999999999999999999"),
            "strconv.ParseInt: parsing \"-99999999999999999999\": value out of range"
        );
        assert_eq!(
            go_parse_error("ParseInt", "-"),
            "strconv.ParseInt: parsing \"-\": invalid syntax"
        );
    }
}
