//! The HTTP surface: authentication, authorization, and dispatch of every request to the meta
//! endpoints, discovery, OpenAPI, or the generic resource layer.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use crate::auth::{Authn, ConnectionIdentity, TokenTable, UserInfo, authenticate};
use crate::error::ApiError;
use crate::http_util::{json_parts_response, json_response, text_response};
use crate::registry::{Registry, ResourceDef};
use crate::request::{Query, RequestTarget, ResourceRequest, parse_target};
use crate::selector::{FieldSelector, LabelSelector};
use crate::storage::{DeleteOptions, Deleted, ListOptions, Propagation, Storage, WatchOptions};
use crate::{discovery, openapi, rbac, schema, table};

/// Hooks for the fuzz targets; see [`crate::fuzzing`].
pub(crate) mod fuzzing;
mod strategic;

/// The largest request body accepted, as kube-apiserver's limit.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// What every request handler shares.
pub struct AppState {
    /// The generic resource layer.
    pub storage: Storage,
    /// What is served.
    pub registry: Registry,
    /// Static bearer tokens.
    pub tokens: TokenTable,
    /// Signs and verifies ServiceAccount tokens.
    pub service_account_key: Arc<crate::tokens::ServiceAccountKey>,
    /// The longest lifetime a TokenRequest gets (longer ones are shortened to it); `None`
    /// caps nothing beyond validation's 2^32 seconds.
    pub max_token_expiration: Option<Duration>,
    /// Whether the server is ready (false while starting and once shutting down).
    pub ready: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

/// What kube-apiserver answers a request whose handler panicked (its panic-recovery filter).
pub const PANIC_MESSAGE: &str =
    "This request caused apiserver to panic. Look in the logs for details.";

/// The router: one handler reads every path as kube-apiserver reads it. `extra` routes (tests
/// only) are matched before it. Every handler sits behind a catch-panic layer: a panic answers
/// 500 with a Status and the server keeps serving.
pub fn router(state: Arc<AppState>, extra: Option<Router>) -> Router {
    let routes = Router::new().fallback(handle).with_state(state);
    let routes = match extra {
        Some(extra) => extra.merge(routes),
        None => routes,
    };
    routes.layer(tower_http::catch_panic::CatchPanicLayer::custom(
        answer_panic as fn(Box<dyn std::any::Any + Send + 'static>) -> Response,
    ))
}

/// The answer to a panicked handler. The panic's payload is not echoed (it may carry data
/// from the request); the panic hook has already printed it.
fn answer_panic(_payload: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    ApiError::internal(PANIC_MESSAGE).into_response()
}

async fn handle(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let response = match handle_inner(&state, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    tracing::debug!(%method, %path, status = response.status().as_u16(), "request");
    response
}

async fn handle_inner(state: &AppState, req: Request) -> Result<Response, ApiError> {
    // A header that is not text (not UTF-8, say) carries no credential this server issued:
    // 401, never anonymous.
    let authorization = crate::auth::authorization_header(req.headers())?;
    let user = match authenticate(
        req.extensions().get::<ConnectionIdentity>(),
        authorization,
        &state.tokens,
    ) {
        Authn::User(user) => user,
        // Not a static token: a ServiceAccount token, or 401.
        Authn::Invalid => crate::tokens::authenticate(state, authorization)
            .await
            .ok_or_else(ApiError::unauthorized)?,
    };
    let user = crate::reviews::impersonate(&state.storage, user, req.headers()).await?;
    let query = Query::parse(req.uri().query());
    let path = req.uri().path().to_string();
    let target = parse_target(req.method(), &path, &query);
    let authorized_as = named_by_field_selector(&target, &query);
    let checked = authorized_as.as_ref().unwrap_or(&target);
    if !rbac::authorize(&state.storage, &user, checked).await? {
        return Err(rbac::denied(&user, checked));
    }
    match target {
        RequestTarget::NonResource { path, verb } => {
            if verb != "get" {
                return Err(ApiError::method_not_allowed());
            }
            non_resource(state, &path, req.headers()).await
        }
        RequestTarget::Resource(r) => resource(state, r, &query, &user, req).await,
    }
}

/// A list or watch whose field selector pins `metadata.name` is authorized as a request for
/// that name, as upstream's RequestInfoFactory reads it (so RBAC `resourceNames` can grant
/// watching one object). `None` when the request is authorized as it is.
fn named_by_field_selector(target: &RequestTarget, query: &Query) -> Option<RequestTarget> {
    let RequestTarget::Resource(r) = target else {
        return None;
    };
    if r.name.is_some() || !matches!(r.verb, "list" | "watch") {
        return None;
    }
    let selector = FieldSelector::parse(query.get("fieldSelector").unwrap_or_default()).ok()?;
    let name = selector.pinned_name()?;
    // Upstream takes the name only when it is a valid path segment.
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '%']) {
        return None;
    }
    let mut named = r.clone();
    named.name = Some(name.to_owned());
    Some(RequestTarget::Resource(named))
}

async fn non_resource(
    state: &AppState,
    path: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let ready = state.ready.load(std::sync::atomic::Ordering::Relaxed);
    match path {
        "/healthz" | "/livez" | "/healthz/ping" | "/livez/ping" => {
            Ok(text_response(StatusCode::OK, "ok"))
        }
        "/readyz" | "/readyz/ping" => {
            if ready {
                Ok(text_response(StatusCode::OK, "ok"))
            } else {
                Ok(text_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "[-]atoll-ready failed: not ready\nreadyz check failed",
                ))
            }
        }
        "/version" | "/version/" => Ok(json_response(StatusCode::OK, &version_info())),
        "/api" | "/api/" => Ok(json_response(StatusCode::OK, &discovery::api_versions())),
        "/apis" | "/apis/" => Ok(json_response(
            StatusCode::OK,
            &discovery::group_list(&state.registry),
        )),
        "/openapi/v3" | "/openapi/v3/" => Ok(json_response(
            StatusCode::OK,
            &openapi::v3_root(&state.registry),
        )),
        "/openapi/v2" | "/swagger.json" => {
            let accept = headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if accept.contains("protobuf") && !accept.contains("json") {
                return Err(ApiError::not_acceptable(
                    "only application/json is served for /openapi/v2",
                ));
            }
            Ok(json_response(StatusCode::OK, &openapi::v2(&state.registry)))
        }
        _ => {
            if let Some(gv) = path.strip_prefix("/openapi/v3/") {
                return openapi::v3_group_version(&state.registry, gv)
                    .map(|doc| json_response(StatusCode::OK, &doc))
                    .ok_or_else(ApiError::path_not_found);
            }
            let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
            match parts.as_slice() {
                ["api", version] => discovery::resource_list(&state.registry, "", version)
                    .map(|d| json_response(StatusCode::OK, &d))
                    .ok_or_else(ApiError::path_not_found),
                ["apis", group] => discovery::group(&state.registry, group)
                    .map(|d| json_response(StatusCode::OK, &d))
                    .ok_or_else(ApiError::path_not_found),
                ["apis", group, version] => {
                    discovery::resource_list(&state.registry, group, version)
                        .map(|d| json_response(StatusCode::OK, &d))
                        .ok_or_else(ApiError::path_not_found)
                }
                _ => Err(ApiError::path_not_found()),
            }
        }
    }
}

/// `/version`: the Kubernetes version whose API this server follows.
pub fn version_info() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": "v1.32.0+atoll",
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    })
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"))
}

/// `as=PartialObjectMetadata` or `as=PartialObjectMetadataList`: metadata only.
fn wants_partial_metadata(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=PartialObjectMetadata"))
}

async fn read_body(req: Request) -> Result<(HeaderMap, Bytes), ApiError> {
    let (parts, body) = req.into_parts();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let protobuf = content_type.contains("protobuf");
    if content_type.contains("cbor") {
        return Err(ApiError::unsupported_media_type(&[
            "application/json",
            "application/yaml",
            "application/vnd.kubernetes.protobuf",
        ]));
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::too_large(MAX_BODY_BYTES))?;
    if protobuf && crate::protobuf::is_protobuf(&bytes) {
        // Typed client-go clients send protobuf for built-in kinds; the server works on JSON.
        let obj = crate::protobuf::decode(&bytes)?;
        let json = serde_json::to_vec(&obj).map_err(|e| ApiError::internal(e.to_string()))?;
        return Ok((parts.headers, Bytes::from(json)));
    }
    Ok((parts.headers, bytes))
}

/// Reads a YAML request body within a budget: aliases may not expand a body's scalars beyond
/// twice the body limit, so a small "billion laughs" document cannot make the server build a
/// huge tree (upstream's YAML decoder refuses excessive aliasing likewise).
pub(crate) fn from_yaml(bytes: &[u8]) -> Result<Value, serde_saphyr::Error> {
    let mut options = serde_saphyr::Options::default();
    let mut budget = serde_saphyr::Budget::default();
    budget.max_total_scalar_bytes = MAX_BODY_BYTES.saturating_mul(2);
    options.budget = Some(budget);
    serde_saphyr::from_slice_with_options(bytes, options)
}

fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    serde_json::from_slice(bytes)
        .or_else(|_| from_yaml(bytes))
        .map_err(|e| {
            ApiError::bad_request(format!("the body of the request could not be decoded: {e}"))
        })
}

fn dry_run(query: &Query) -> Result<bool, ApiError> {
    match query.get("dryRun") {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "dryRun: Unsupported value: {other:?}: supported values: \"All\""
        ))),
    }
}

/// The `fieldValidation` directive; kube-apiserver's default is Warn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

fn field_validation(query: &Query) -> Result<FieldValidation, ApiError> {
    match query.get("fieldValidation") {
        None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
        Some("Strict") => Ok(FieldValidation::Strict),
        Some("Ignore") => Ok(FieldValidation::Ignore),
        Some(other) => Err(ApiError::bad_request(format!(
            "fieldValidation: Unsupported value: {other:?}: supported values: \"Ignore\", \"Strict\", \"Warn\""
        ))),
    }
}

/// Applies `fieldValidation` to a custom resource body; returns warnings.
fn check_unknown_fields(
    def: &ResourceDef,
    obj: &Value,
    mode: FieldValidation,
) -> Result<Vec<String>, ApiError> {
    if mode == FieldValidation::Ignore {
        return Ok(Vec::new());
    }
    let mut unknown = crate::strategy::unknown_fields(def, obj);
    if let Some(schema) = def.schema.as_ref().filter(|_| def.custom) {
        unknown.extend(schema::unknown_fields(schema, obj));
    }
    if unknown.is_empty() {
        return Ok(Vec::new());
    }
    let messages: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field {f:?}"))
        .collect();
    if mode == FieldValidation::Strict {
        return Err(ApiError::bad_request(format!(
            "strict decoding error: {}",
            messages.join(", ")
        )));
    }
    Ok(messages)
}

fn with_warnings(mut resp: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let text = format!("299 - {:?}", w);
        if let Ok(v) = HeaderValue::from_str(&text) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

/// An integer query parameter (`limit`, `timeoutSeconds`): absent, or a signed 64-bit number
/// as upstream's parameter codec reads it; anything else is 400 worded as Go's `ParseInt`
/// error, as kube-apiserver answers it.
fn int_param(query: &Query, key: &str) -> Result<Option<i64>, ApiError> {
    query
        .non_empty(key)
        .map(|v| {
            v.parse::<i64>()
                .map_err(|_| ApiError::bad_request(crate::storage::go_parse_error("ParseInt", v)))
        })
        .transpose()
}

fn list_options(query: &Query) -> Result<ListOptions, ApiError> {
    Ok(ListOptions {
        label_selector: LabelSelector::parse(query.get("labelSelector").unwrap_or_default())?,
        field_selector: FieldSelector::parse(query.get("fieldSelector").unwrap_or_default())?,
        // A limit of 0 or below lists everything, as upstream; one beyond memory is still a
        // page of objects read in bounded batches.
        limit: int_param(query, "limit")?
            .map_or(0, |l| usize::try_from(l.max(0)).unwrap_or(usize::MAX)),
        continue_token: query.non_empty("continue").map(str::to_string),
        resource_version: query.non_empty("resourceVersion").map(str::to_string),
        resource_version_match: query.non_empty("resourceVersionMatch").map(str::to_string),
    })
}

fn delete_options(query: &Query, body: &[u8]) -> Result<DeleteOptions, ApiError> {
    let body: Value = if body.is_empty() {
        json!({})
    } else {
        parse_json(body)?
    };
    let policy = body
        .get("propagationPolicy")
        .and_then(Value::as_str)
        .or_else(|| query.non_empty("propagationPolicy"));
    let orphan = body
        .get("orphanDependents")
        .and_then(Value::as_bool)
        .or_else(|| query.get("orphanDependents").map(|v| v == "true"));
    let propagation = match (policy, orphan) {
        (Some("Foreground"), _) => Propagation::Foreground,
        (Some("Background"), _) => Propagation::Background,
        (Some("Orphan"), _) | (None, Some(true)) => Propagation::Orphan,
        (None, _) => Propagation::Background,
        (Some(other), _) => {
            return Err(ApiError::invalid(
                "DeleteOptions",
                "",
                "",
                vec![crate::error::Cause::not_supported(
                    "propagationPolicy",
                    &json!(other),
                    &["Foreground".into(), "Background".into(), "Orphan".into()],
                )],
            ));
        }
    };
    let body_dry_run = body
        .get("dryRun")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|v| v == "All"));
    Ok(DeleteOptions {
        precondition_uid: body
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string),
        precondition_rv: body
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string),
        propagation,
        dry_run: body_dry_run || dry_run(query)?,
    })
}

/// The patch types kube-apiserver accepts, by content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

const CUSTOM_PATCH_TYPES: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/apply-patch+yaml",
];

fn patch_type(headers: &HeaderMap, def: &ResourceDef) -> Result<PatchType, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let media = ct.split(';').next().unwrap_or_default().trim();
    match media {
        "application/json-patch+json" => Ok(PatchType::Json),
        "application/merge-patch+json" => Ok(PatchType::Merge),
        "application/strategic-merge-patch+json" if strategic::root(def).is_some() => {
            Ok(PatchType::Strategic)
        }
        "application/apply-patch+yaml" | "application/apply-patch+cbor" => Ok(PatchType::Apply),
        "application/strategic-merge-patch+json" => {
            Err(ApiError::unsupported_media_type(CUSTOM_PATCH_TYPES))
        }
        _ => Err(ApiError {
            code: 415,
            reason: "UnsupportedMediaType",
            message: "415: Unsupported Media Type".into(),
            details: None,
        }),
    }
}

/// The most operations a JSON patch may hold, as kube-apiserver's `maxJSONPatchOperations`.
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;
/// The most bytes a JSON patch's `copy` operations may add up to, as kube-apiserver's
/// `JSONPatchMaxCopyBytes` (json-patch's `AccumulatedCopySizeLimit`): the request body limit.
pub const MAX_JSON_PATCH_COPY_BYTES: usize = MAX_BODY_BYTES;

/// kube-apiserver's answer to a JSON patch that does not apply: 422 with its generic wording
/// (the operation's own error is not shown).
fn patch_not_applied(why: &dyn std::fmt::Display) -> ApiError {
    tracing::debug!(error = %why, "JSON patch failed");
    ApiError {
        code: 422,
        reason: "Invalid",
        message: "the server rejected our request due to an error in our request".into(),
        details: None,
    }
}

/// Counts the bytes a value would take as JSON without writing them out.
struct CountingWriter(usize);

impl std::io::Write for CountingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Applies an RFC 6902 patch as kube-apiserver does: more than 10000 operations is 413, and
/// `copy` operations whose copied values add up to more than 3 MiB are refused (422) before
/// the copy that crosses the limit is made, so a small patch that copies a subtree into
/// itself again and again cannot make the server allocate gigabytes. The document is the
/// caller's copy: an operation that fails leaves it half-patched, and it is then dropped.
fn apply_json_patch(doc: &mut Value, patch: &json_patch::Patch) -> Result<(), ApiError> {
    if patch.0.len() > MAX_JSON_PATCH_OPERATIONS {
        return Err(ApiError {
            code: 413,
            reason: "RequestEntityTooLarge",
            message: format!(
                "Request entity too large: The allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {}",
                patch.0.len()
            ),
            details: None,
        });
    }
    let mut copied: usize = 0;
    for op in &patch.0 {
        if let json_patch::PatchOperation::Copy(copy) = op
            && let Ok(value) = copy.from.resolve(&*doc)
        {
            let mut size = CountingWriter(0);
            serde_json::to_writer(&mut size, value).map_err(|e| patch_not_applied(&e))?;
            copied = copied.saturating_add(size.0);
            if copied > MAX_JSON_PATCH_COPY_BYTES {
                return Err(patch_not_applied(&format!(
                    "Unable to complete the copy, the accumulated size increase of copy is {copied}, exceeding the limit {MAX_JSON_PATCH_COPY_BYTES}"
                )));
            }
        }
        // One operation at a time, without json-patch's undo log: a failed patch drops the
        // whole document anyway.
        json_patch::patch_unsafe(doc, std::slice::from_ref(op))
            .map_err(|e| patch_not_applied(&e))?;
    }
    Ok(())
}

fn apply_patch(
    current: &Value,
    kind: PatchType,
    body: &[u8],
    def: &ResourceDef,
) -> Result<Value, ApiError> {
    let mut doc = current.clone();
    match kind {
        PatchType::Json => {
            let patch: json_patch::Patch = serde_json::from_slice(body).map_err(|e| {
                ApiError::bad_request(format!(
                    "the body of the request could not be decoded as a JSON patch: {e}"
                ))
            })?;
            apply_json_patch(&mut doc, &patch)?;
        }
        PatchType::Merge | PatchType::Apply => {
            let patch = parse_json(body)?;
            json_patch::merge(&mut doc, &patch);
        }
        PatchType::Strategic => {
            let patch = parse_json(body)?;
            doc = strategic::apply(current, &patch, def)?;
        }
    }
    Ok(doc)
}

/// Whether a patch names a resourceVersion itself (then a stale one is 409).
fn patch_sets_resource_version(kind: PatchType, body: &[u8]) -> bool {
    match kind {
        PatchType::Json => serde_json::from_slice::<Vec<Value>>(body).is_ok_and(|ops| {
            ops.iter().any(|op| {
                op.get("path").and_then(Value::as_str) == Some("/metadata/resourceVersion")
            })
        }),
        PatchType::Merge | PatchType::Apply | PatchType::Strategic => parse_json(body)
            .ok()
            .and_then(|p| p.pointer("/metadata/resourceVersion").cloned())
            .is_some_and(|rv| !rv.is_null()),
    }
}

/// What a create must pass besides validation: the requester's identity (for CSRs) and the
/// RBAC escalation check (for roles and bindings).
#[derive(Clone, Copy)]
struct CreateAdmission<'a> {
    user: &'a UserInfo,
    escalation: &'a rbac::Escalation,
}

/// Creates an object and answers 201 with the field warnings: a POST, and a server-side apply
/// to an object that does not exist yet, go the same way (unknown fields checked, then
/// certificate requests prepared for the requester, then RBAC escalation checked).
async fn create_and_answer(
    storage: &Storage,
    def: &ResourceDef,
    namespace: Option<&str>,
    obj: Value,
    dry_run: bool,
    validation: FieldValidation,
    admission: CreateAdmission<'_>,
) -> Result<Response, ApiError> {
    let warnings = check_unknown_fields(def, &obj, validation)?;
    let obj = crate::certificates::on_create(def, obj, admission.user)?;
    admission.escalation.check(None, &obj)?;
    let created = storage.create(def, namespace, obj, dry_run).await?;
    Ok(with_warnings(
        json_response(StatusCode::CREATED, &created),
        &warnings,
    ))
}

async fn resource(
    state: &AppState,
    r: ResourceRequest,
    query: &Query,
    _user: &UserInfo,
    req: Request,
) -> Result<Response, ApiError> {
    let Some(def) = state.registry.get(&r.group, &r.version, &r.resource) else {
        return Err(ApiError::path_not_found());
    };
    let is_namespace_kind = r.group.is_empty() && r.resource == "namespaces";
    // kube-apiserver routes a cluster-scoped resource (a Namespace too, and any cluster-scoped
    // custom resource) only at the top of its group version, and a namespaced one by name only
    // under `namespaces/<ns>/`: `/api/v1/namespaces/a/namespaces/b` is authorized in namespace
    // `a` and must not reach Namespace `b`, so it is 404 as upstream, whatever the verb.
    let prefixed = crate::request::is_namespace_prefixed(req.uri().path());
    if def.namespaced != prefixed && (prefixed || r.name.is_some()) {
        return Err(ApiError::path_not_found());
    }
    // A namespaced kind across all namespaces is served for list and watch only: a
    // deletecollection (or create) there is 405, as upstream, never every namespace at once.
    if def.namespaced && !prefixed && !matches!(r.verb, "list" | "watch") {
        return Err(ApiError::method_not_allowed());
    }
    if crate::tokens::is_token_request(&def, &r) {
        return crate::tokens::create_token(state, &r, req).await;
    }
    // The namespace a namespaced object lives in; a Namespace's own name is not one.
    let namespace = if def.namespaced {
        r.namespace.clone()
    } else {
        None
    };
    match r.subresource.as_deref() {
        None => {}
        Some("status") if def.status_subresource => {}
        Some("finalize") if is_namespace_kind => {}
        Some("approval") if crate::certificates::is_csr(&def) => {}
        Some(_) => return Err(ApiError::path_not_found()),
    }
    if def.namespaced
        && namespace.is_none()
        && matches!(r.verb, "get" | "create" | "update" | "patch" | "delete")
    {
        return Err(ApiError::path_not_found());
    }
    if r.subresource.is_some() && !matches!(r.verb, "get" | "update" | "patch") {
        return Err(ApiError::method_not_allowed());
    }
    let admission = crate::certificates::admit(state, &def, &r, _user).await?;
    let escalation =
        rbac::Escalation::prepare(&state.storage, &def, _user, &r, namespace.as_deref()).await?;
    let creating = CreateAdmission {
        user: _user,
        escalation: &escalation,
    };
    if def.review {
        if r.verb != "create" {
            return Err(ApiError::method_not_allowed());
        }
        let (_, body) = read_body(req).await?;
        let answer =
            crate::reviews::answer(&state.storage, &def, _user, parse_json(&body)?).await?;
        return Ok(json_response(StatusCode::CREATED, &answer));
    }
    let table = wants_table(req.headers());
    let partial = !table && wants_partial_metadata(req.headers());
    let include_object = query.get("includeObject").unwrap_or("Metadata").to_string();
    let ns = namespace.as_deref();
    let name = r.name.clone().unwrap_or_default();
    let storage = &state.storage;
    match r.verb {
        "get" => {
            let obj = storage
                .get(&def, ns, &name, query.non_empty("resourceVersion"))
                .await?;
            if table {
                let list = json!({"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]}, "items": [obj]});
                return Ok(json_response(
                    StatusCode::OK,
                    &table::to_table(&def, &list, &include_object),
                ));
            }
            if partial {
                return Ok(json_response(
                    StatusCode::OK,
                    &table::to_partial_metadata(&obj),
                ));
            }
            Ok(json_response(StatusCode::OK, &obj))
        }
        "list" => {
            if table {
                let list = storage.list(&def, ns, &list_options(query)?).await?;
                return Ok(json_response(
                    StatusCode::OK,
                    &table::to_table(&def, &list, &include_object),
                ));
            }
            if partial {
                // Metadata only: a full list is read (the applier's metadata lists are of its
                // own objects, small), then trimmed.
                let list = storage.list(&def, ns, &list_options(query)?).await?;
                return Ok(json_response(
                    StatusCode::OK,
                    &table::to_partial_metadata_list(&list),
                ));
            }
            let parts = storage.list_json(&def, ns, &list_options(query)?).await?;
            Ok(json_parts_response(StatusCode::OK, parts))
        }
        "watch" => {
            let mut field = query.get("fieldSelector").unwrap_or_default().to_string();
            if let Some(name) = &r.name {
                if !field.is_empty() {
                    field.push(',');
                }
                field.push_str(&format!("metadata.name={name}"));
            }
            // Zero or less is the server's default, as upstream; a huge one waits forever.
            let timeout = int_param(query, "timeoutSeconds")?
                .and_then(|t| u64::try_from(t).ok())
                .filter(|t| *t > 0)
                .map(Duration::from_secs);
            let opts = WatchOptions {
                label_selector: LabelSelector::parse(
                    query.get("labelSelector").unwrap_or_default(),
                )?,
                field_selector: FieldSelector::parse(&field)?,
                resource_version: query.non_empty("resourceVersion").map(str::to_string),
                allow_bookmarks: query.flag("allowWatchBookmarks"),
                timeout,
            };
            let events = storage.watch(def.clone(), ns, opts).await?;
            let table_def = def.clone();
            let body = events.map(move |ev| {
                let mut line = ev.to_json();
                if table
                    && let Some(obj) = line.get("object").cloned()
                    && line["type"] != "ERROR"
                    && line["type"] != "BOOKMARK"
                {
                    line["object"] = table::to_table(
                        &table_def,
                        &json!({"metadata": {}, "items": [obj]}),
                        "Object",
                    );
                } else if partial
                    && let Some(obj) = line.get("object")
                    && line["type"] != "ERROR"
                {
                    line["object"] = table::to_partial_metadata(obj);
                }
                let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
                bytes.push(b'\n');
                Ok::<_, Infallible>(Bytes::from(bytes))
            });
            let mut resp = Response::new(Body::from_stream(body));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("no-cache, private"),
            );
            Ok(resp)
        }
        "create" => {
            let dry = dry_run(query)?;
            let validation = field_validation(query)?;
            let (_, body) = read_body(req).await?;
            let obj = parse_json(&body)?;
            create_and_answer(storage, &def, ns, obj, dry, validation, creating).await
        }
        "update" => {
            let dry = dry_run(query)?;
            let validation = field_validation(query)?;
            let (_, body) = read_body(req).await?;
            let obj = parse_json(&body)?;
            let warnings = check_unknown_fields(&def, &obj, validation)?;
            let updated = storage
                .update_with(&def, ns, &name, r.subresource.as_deref(), dry, |current| {
                    admission.check(current, &obj)?;
                    escalation.check(Some(current), &obj)?;
                    Ok(obj.clone())
                })
                .await?;
            Ok(with_warnings(
                json_response(StatusCode::OK, &updated),
                &warnings,
            ))
        }
        "patch" => {
            let dry = dry_run(query)?;
            let validation = field_validation(query)?;
            let (headers, body) = read_body(req).await?;
            let kind = patch_type(&headers, &def)?;
            let precondition = patch_sets_resource_version(kind, &body);
            let mut warnings = Vec::new();
            let result = storage
                .update_with(&def, ns, &name, r.subresource.as_deref(), dry, |current| {
                    let mut patched = apply_patch(current, kind, &body, &def)?;
                    if !precondition {
                        // The current object's resourceVersion is no precondition of the
                        // client's: a patch that lost a race is applied again to the new
                        // object, as kube-apiserver retries it, not answered 409.
                        crate::storage::meta_mut(&mut patched).remove("resourceVersion");
                    }
                    admission.check(current, &patched)?;
                    escalation.check(Some(current), &patched)?;
                    warnings = check_unknown_fields(&def, &patched, validation)?;
                    Ok(patched)
                })
                .await;
            match result {
                Ok(obj) => Ok(with_warnings(
                    json_response(StatusCode::OK, &obj),
                    &warnings,
                )),
                // Server-side apply creates what does not exist yet.
                Err(e) if e.code == 404 && kind == PatchType::Apply && r.subresource.is_none() => {
                    let mut obj = parse_json(&body)?;
                    crate::storage::meta_mut(&mut obj).insert("name".into(), json!(name));
                    create_and_answer(storage, &def, ns, obj, dry, validation, creating).await
                }
                Err(e) => Err(e),
            }
        }
        "delete" => {
            let (_, body) = read_body(req).await?;
            let opts = delete_options(query, &body)?;
            match storage.delete(&def, ns, &name, &opts).await? {
                Deleted::Pending(obj) => Ok(json_response(StatusCode::OK, &obj)),
                Deleted::Gone(obj) => {
                    let mut details = json!({
                        "name": name,
                        "kind": def.resource,
                        "uid": obj["metadata"]["uid"],
                    });
                    if !def.group.is_empty() {
                        details["group"] = json!(def.group);
                    }
                    Ok(json_response(
                        StatusCode::OK,
                        &json!({
                            "kind": "Status",
                            "apiVersion": "v1",
                            "metadata": {},
                            "status": "Success",
                            "details": details,
                        }),
                    ))
                }
            }
        }
        "deletecollection" => {
            let list = list_options(query)?;
            let (_, body) = read_body(req).await?;
            let opts = delete_options(query, &body)?;
            let deleted = storage.delete_collection(&def, ns, &list, &opts).await?;
            Ok(json_response(StatusCode::OK, &deleted))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patch(ops: Value) -> Result<json_patch::Patch, serde_json::Error> {
        serde_json::from_value(ops)
    }

    #[test]
    fn json_patches_are_bounded_as_upstream() -> Result<(), Box<dyn std::error::Error>> {
        // Copying a subtree into itself doubles it: refused once the copies pass 3 MiB.
        let mut doc = json!({"a": {"x": "y".repeat(1024)}});
        let ops: Vec<Value> = (0..40)
            .map(|i| json!({"op": "copy", "from": "/a", "path": format!("/a/c{i}")}))
            .collect();
        let err = apply_json_patch(&mut doc, &patch(json!(ops))?)
            .err()
            .ok_or("amplification refused")?;
        assert_eq!((err.code, err.reason), (422, "Invalid"));
        let size = serde_json::to_vec(&doc)?.len();
        assert!(size < 2 * MAX_JSON_PATCH_COPY_BYTES, "{size} bytes");

        let ops: Vec<Value> = (0..=MAX_JSON_PATCH_OPERATIONS)
            .map(|_| json!({"op": "test", "path": "/a/x", "value": "z"}))
            .collect();
        let err = apply_json_patch(&mut doc, &patch(json!(ops))?)
            .err()
            .ok_or("too many operations")?;
        assert_eq!(err.code, 413);
        assert_eq!(
            err.message,
            "Request entity too large: The allowed maximum operations in a JSON patch is 10000, got 10001"
        );

        let mut doc = json!({"a": {"x": "y"}});
        apply_json_patch(
            &mut doc,
            &patch(json!([{"op": "copy", "from": "/a/x", "path": "/b"}]))?,
        )?;
        assert_eq!(doc, json!({"a": {"x": "y"}, "b": "y"}));
        Ok(())
    }

    fn target_of(path: &str, query: &str) -> (RequestTarget, Query) {
        let query = Query::parse(Some(query));
        (parse_target(&http::Method::GET, path, &query), query)
    }

    fn name_of(target: Option<RequestTarget>) -> Option<(String, &'static str)> {
        match target? {
            RequestTarget::Resource(r) => Some((r.name?, r.verb)),
            RequestTarget::NonResource { .. } => None,
        }
    }

    #[test]
    fn a_field_selector_on_the_name_authorizes_as_that_name() {
        let path = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
        let (t, q) = target_of(path, "watch=1&fieldSelector=metadata.name%3Dmine");
        assert_eq!(
            name_of(named_by_field_selector(&t, &q)),
            Some(("mine".to_owned(), "watch"))
        );
        let (t, q) = target_of(path, "fieldSelector=metadata.name==mine");
        assert_eq!(
            name_of(named_by_field_selector(&t, &q)),
            Some(("mine".to_owned(), "list"))
        );
        // Not an equality on the name, or not a valid path segment: authorized as a list.
        for query in [
            "fieldSelector=metadata.name!%3Dmine",
            "fieldSelector=metadata.namespace%3Dx",
            "fieldSelector=metadata.name%3D..",
            "",
        ] {
            let (t, q) = target_of(path, query);
            assert_eq!(named_by_field_selector(&t, &q), None, "{query}");
        }
    }
}
