//! Attacks: see the suite's module list in main.rs.
//!
//! An authenticated tenant (a static token bound to a Role in its own namespace) or an
//! anonymous client against `atoll hub`'s HTTP surface: paths that escape the namespace they
//! are authorized in, patches that amplify memory, numbers that overflow, and headers and
//! tokens that should not authenticate or impersonate.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use atoll_integration::eventually;
use atoll_store::memory::MemoryStore;
use base64::Engine;
use http::{HeaderValue, Method, Request};
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};

const TENANT_TOKEN: &str = "tenant-token-0123456789";
const TENANT_NS: &str = "tenant-a";
const VICTIM_NS: &str = "victim";

/// kube-apiserver's generic 404 for a path that serves nothing.
const PATH_NOT_FOUND: &str = "the server could not find the requested resource";

/// `atoll hub` in process with a token file: the tenant's token, and a line with an empty
/// token for `system:masters` (upstream skips such a line).
struct TestHub {
    hub: atoll_apiserver::Hub,
    _dir: tempfile::TempDir,
    /// The admin kubeconfig's client (client certificate in `system:masters`).
    admin: Client,
    /// No credentials: requests carry only the headers a test gives them.
    bare: Client,
}

async fn start_hub(max_token_expiration: Duration) -> Result<TestHub> {
    let dir = tempfile::tempdir()?;
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(
        &tokens,
        format!(",intruder,0,system:masters\n{TENANT_TOKEN},tenant,1001,tenants\n"),
    )?;
    let hub = atoll_apiserver::Hub::start(
        Arc::new(MemoryStore::new()),
        atoll_apiserver::HubConfig {
            data_dir: dir.path().join("data"),
            listen: "127.0.0.1:0".parse()?,
            token_file: Some(tokens),
            extra_sans: vec![],
            compaction_interval: None,
            max_token_expiration,
        },
    )
    .await?;
    let kc = Kubeconfig::read_from(&hub.admin_kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    let admin = Client::try_from(config.clone())?;
    let mut bare_config = config;
    bare_config.auth_info = Default::default();
    // Each answer as the server gave it: no retries of 504s and 503s.
    bare_config.default_retry = false;
    let bare = Client::try_from(bare_config)?;
    Ok(TestHub {
        hub,
        _dir: dir,
        admin,
        bare,
    })
}

/// A request body and its content type.
type RequestBody<'a> = Option<(&'a str, Vec<u8>)>;

/// A status code, the body (JSON when it is), and the headers.
struct Answer {
    code: u16,
    body: Value,
    headers: http::HeaderMap,
}

impl Answer {
    fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or_default()
    }
}

async fn send(
    client: &Client,
    method: Method,
    path: &str,
    headers: &[(&str, HeaderValue)],
    body: Option<(&str, Vec<u8>)>,
) -> Result<Answer> {
    let mut request = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        request = request.header(*name, value.clone());
    }
    let bytes = match body {
        Some((content_type, bytes)) => {
            request = request.header(http::header::CONTENT_TYPE, content_type);
            bytes
        }
        None => Vec::new(),
    };
    let answer = async {
        let response = client
            .send(request.body(kube::client::Body::from(bytes))?)
            .await
            .with_context(|| format!("{path}: no HTTP answer (did the server panic?)"))?;
        let code = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect_bytes().await?;
        anyhow::Ok((code, headers, bytes))
    };
    // Every attack is answered at once (watches here end within their timeoutSeconds).
    let (code, headers, bytes) = tokio::time::timeout(Duration::from_secs(60), answer)
        .await
        .with_context(|| format!("{path}: not answered within a minute"))??;
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Ok(Answer {
        code,
        body,
        headers,
    })
}

fn bearer(token: &str) -> Result<(&'static str, HeaderValue)> {
    Ok((
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}"))?,
    ))
}

async fn as_admin(hub: &TestHub, method: Method, path: &str, body: Value) -> Result<Answer> {
    let body = (!body.is_null()).then(|| ("application/json", body.to_string().into_bytes()));
    send(&hub.admin, method, path, &[], body).await
}

async fn as_tenant(
    hub: &TestHub,
    method: Method,
    path: &str,
    body: Option<(&str, Vec<u8>)>,
) -> Result<Answer> {
    send(&hub.bare, method, path, &[bearer(TENANT_TOKEN)?], body).await
}

async fn created(answer: Answer, what: &str) -> Result<Value> {
    ensure!(
        answer.code == 201,
        "creating {what}: {} {}",
        answer.code,
        answer.body
    );
    Ok(answer.body)
}

/// Namespaces `tenant-a` and `victim`; the tenant may do anything to namespaces, leases and
/// configmaps, but only by a Role in `tenant-a`.
async fn tenant_with_namespace_role(hub: &TestHub) -> Result<()> {
    for ns in [TENANT_NS, VICTIM_NS] {
        created(
            as_admin(
                hub,
                Method::POST,
                "/api/v1/namespaces",
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            )
            .await?,
            ns,
        )
        .await?;
    }
    let rbac = format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{TENANT_NS}");
    created(
        as_admin(
            hub,
            Method::POST,
            &format!("{rbac}/roles"),
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": "everything-here"},
                "rules": [
                    {"apiGroups": ["", "coordination.k8s.io", "rbac.authorization.k8s.io", "example.com"],
                     "resources": ["*"], "verbs": ["*"]},
                ],
            }),
        )
        .await?,
        "the tenant's Role",
    )
    .await?;
    created(
        as_admin(
            hub,
            Method::POST,
            &format!("{rbac}/rolebindings"),
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "tenant"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "everything-here"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "tenant"}],
            }),
        )
        .await?,
        "the tenant's RoleBinding",
    )
    .await?;
    Ok(())
}

fn merge_patch(body: Value) -> Option<(&'static str, Vec<u8>)> {
    Some((
        "application/merge-patch+json",
        body.to_string().into_bytes(),
    ))
}

/// A Role in one namespace used to reach every namespace through
/// `/api/v1/namespaces/<mine>/namespaces/<any>` (authorized in `<mine>`, acting on `<any>`):
/// every verb and subresource, and every other cluster-scoped kind, built-in or custom, under
/// a namespace path, is 404 as in kube-apiserver, and the victim namespace is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_role_cannot_reach_other_namespaces_through_a_namespaced_path() -> Result<()> {
    let hub = start_hub(atoll_apiserver::tokens::DEFAULT_MAX_EXPIRATION).await?;
    tenant_with_namespace_role(&hub).await?;
    // A cluster-scoped custom resource, to try the same under a namespace path.
    created(
        as_admin(
            &hub,
            Method::POST,
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            json!({
                "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                "metadata": {"name": "gadgets.example.com"},
                "spec": {
                    "group": "example.com", "scope": "Cluster",
                    "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
                    "versions": [{"name": "v1", "served": true, "storage": true,
                        "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}],
                },
            }),
        )
        .await?,
        "the Gadget CRD",
    )
    .await?;
    eventually(
        Duration::from_secs(20),
        "the Gadget kind served",
        async || {
            let answer = as_admin(
            &hub,
            Method::POST,
            "/apis/example.com/v1/gadgets",
            json!({"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g1"}}),
        )
        .await?;
            Ok((answer.code == 201).then_some(()))
        },
    )
    .await?;

    // The legitimate path still answers: the tenant's own namespace, by its Role there.
    let own = as_tenant(
        &hub,
        Method::GET,
        &format!("/api/v1/namespaces/{TENANT_NS}"),
        None,
    )
    .await?;
    ensure!(own.code == 200, "own namespace: {} {}", own.code, own.body);

    let escape = format!("/api/v1/namespaces/{TENANT_NS}/namespaces");
    let victim = format!("{escape}/{VICTIM_NS}");
    let replacement = json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": VICTIM_NS, "labels": {"owned": "yes"}}});
    let json_body = |v: &Value| Some(("application/json", v.to_string().into_bytes()));
    let attacks: Vec<(Method, String, RequestBody<'_>)> = vec![
        (Method::GET, victim.clone(), None),
        (Method::GET, escape.clone(), None),
        (
            Method::GET,
            format!("{escape}?watch=true&timeoutSeconds=1"),
            None,
        ),
        (
            Method::GET,
            format!("{victim}?watch=true&timeoutSeconds=1"),
            None,
        ),
        (
            Method::PATCH,
            victim.clone(),
            merge_patch(json!({"metadata": {"labels": {"owned": "yes"}}})),
        ),
        (Method::PUT, victim.clone(), json_body(&replacement)),
        (
            Method::PUT,
            format!("{victim}/status"),
            json_body(&replacement),
        ),
        (
            Method::PATCH,
            format!("{victim}/status"),
            merge_patch(json!({"status": {"phase": "Terminating"}})),
        ),
        (
            Method::PUT,
            format!("{victim}/finalize"),
            json_body(&replacement),
        ),
        (Method::DELETE, victim.clone(), None),
        (Method::DELETE, escape.clone(), None),
        (Method::POST, escape.clone(), json_body(&replacement)),
        // Other cluster-scoped kinds under a namespace path: built-in and custom.
        (
            Method::DELETE,
            format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{TENANT_NS}/clusterroles/admin"),
            None,
        ),
        (
            Method::GET,
            format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{TENANT_NS}/clusterroles"),
            None,
        ),
        (
            Method::DELETE,
            format!("/apis/example.com/v1/namespaces/{TENANT_NS}/gadgets/g1"),
            None,
        ),
        (
            Method::PATCH,
            format!("/apis/example.com/v1/namespaces/{TENANT_NS}/gadgets/g1"),
            merge_patch(json!({"metadata": {"labels": {"owned": "yes"}}})),
        ),
    ];
    for (method, path, body) in attacks {
        let answer = as_tenant(&hub, method.clone(), &path, body).await?;
        ensure!(
            answer.code == 404 && answer.message() == PATH_NOT_FOUND,
            "{method} {path}: {} {}",
            answer.code,
            answer.body
        );
    }

    // Across all namespaces, a namespaced kind is served for list and watch only: 405 for a
    // deletecollection, never every namespace's objects at once.
    let everywhere = as_admin(&hub, Method::DELETE, "/api/v1/configmaps", Value::Null).await?;
    ensure!(
        everywhere.code == 405 && everywhere.body["reason"] == "MethodNotAllowed",
        "deletecollection across namespaces: {} {}",
        everywhere.code,
        everywhere.body
    );

    let victim_now = as_admin(
        &hub,
        Method::GET,
        &format!("/api/v1/namespaces/{VICTIM_NS}"),
        Value::Null,
    )
    .await?;
    ensure!(victim_now.code == 200, "the victim namespace is gone");
    ensure!(
        victim_now.body["metadata"]["labels"]["owned"].is_null()
            && victim_now.body["metadata"]["deletionTimestamp"].is_null()
            && victim_now.body["status"]["phase"] == "Active",
        "the victim namespace was changed: {}",
        victim_now.body
    );
    let gadget = as_admin(
        &hub,
        Method::GET,
        "/apis/example.com/v1/gadgets/g1",
        Value::Null,
    )
    .await?;
    ensure!(gadget.code == 200 && gadget.body["metadata"]["labels"].is_null());
    let admin_role = as_admin(
        &hub,
        Method::GET,
        "/apis/rbac.authorization.k8s.io/v1/clusterroles/admin",
        Value::Null,
    )
    .await?;
    ensure!(admin_role.code == 200, "the admin ClusterRole is gone");
    hub.hub.shutdown().await;
    Ok(())
}

/// A JSON patch of `copy` operations that each copy a subtree into itself doubles the
/// document per operation: 3 KB of patch asked the hub for gigabytes. Refused as upstream:
/// 422 once the copies add up to more than 3 MiB (before the copy that crosses it), and 413
/// for more than 10000 operations; the object is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_patch_amplification_is_refused_before_memory_is_spent() -> Result<()> {
    let hub = start_hub(atoll_apiserver::tokens::DEFAULT_MAX_EXPIRATION).await?;
    tenant_with_namespace_role(&hub).await?;
    let leases = format!("/apis/coordination.k8s.io/v1/namespaces/{TENANT_NS}/leases");
    let lease = created(
        as_tenant(
            &hub,
            Method::POST,
            &leases,
            Some((
                "application/json",
                json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": "agent", "annotations": {"seed": "x".repeat(1024)}},
                    "spec": {"holderIdentity": "agent"}})
                .to_string()
                .into_bytes(),
            )),
        )
        .await?,
        "the tenant's Lease",
    )
    .await?;
    let lease_path = format!("{leases}/agent");

    // Each operation copies /metadata/annotations into itself: 2^40 KiB if it were applied.
    let mut ops = Vec::new();
    for i in 0..40 {
        ops.push(json!({"op": "copy", "from": "/metadata/annotations", "path": format!("/metadata/annotations/c{i}")}));
    }
    let started = tokio::time::Instant::now();
    let amplified = tokio::time::timeout(
        Duration::from_secs(60),
        as_tenant(
            &hub,
            Method::PATCH,
            &lease_path,
            Some(("application/json-patch+json", serde_json::to_vec(&ops)?)),
        ),
    )
    .await
    .context("the amplifying patch was not answered within a minute")??;
    ensure!(
        amplified.code == 422
            && amplified.body["reason"] == "Invalid"
            && amplified.message()
                == "the server rejected our request due to an error in our request",
        "amplifying patch: {} {}",
        amplified.code,
        amplified.body
    );
    ensure!(
        started.elapsed() < Duration::from_secs(30),
        "refused only after {:?}",
        started.elapsed()
    );

    // Too many operations, each harmless: 413 with upstream's wording.
    let many: Vec<Value> = (0..10_001)
        .map(|_| json!({"op": "test", "path": "/spec/holderIdentity", "value": "agent"}))
        .collect();
    let too_many = as_tenant(
        &hub,
        Method::PATCH,
        &lease_path,
        Some(("application/json-patch+json", serde_json::to_vec(&many)?)),
    )
    .await?;
    ensure!(
        too_many.code == 413
            && too_many.body["reason"] == "RequestEntityTooLarge"
            && too_many.message()
                == "Request entity too large: The allowed maximum operations in a JSON patch is 10000, got 10001",
        "10001 operations: {} {}",
        too_many.code,
        too_many.body
    );

    // A few copies within the limit still apply.
    let modest = as_tenant(
        &hub,
        Method::PATCH,
        &lease_path,
        Some((
            "application/json-patch+json",
            serde_json::to_vec(&json!([
                {"op": "copy", "from": "/metadata/annotations/seed", "path": "/metadata/annotations/copy"},
            ]))?,
        )),
    )
    .await?;
    ensure!(
        modest.code == 200,
        "a modest copy: {} {}",
        modest.code,
        modest.body
    );
    let now = as_admin(&hub, Method::GET, &lease_path, Value::Null).await?;
    let annotations = now.body["metadata"]["annotations"]
        .as_object()
        .context("annotations")?;
    ensure!(
        annotations.len() == 2
            && annotations.get("copy") == lease["metadata"]["annotations"].get("seed"),
        "the Lease changed beyond the modest copy: {annotations:?}"
    );
    hub.hub.shutdown().await;
    Ok(())
}

/// Numbers taken from a request that overflow or do not parse: a watch from the largest
/// resourceVersion (an add overflow that panicked a debug build), negative and out-of-range
/// resourceVersions, limits, timeouts, malformed continue tokens and selectors, and a huge
/// selector: each a clean Status, and the server keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_numbers_that_overflow_get_clean_answers() -> Result<()> {
    let hub = start_hub(atoll_apiserver::tokens::DEFAULT_MAX_EXPIRATION).await?;
    tenant_with_namespace_role(&hub).await?;
    let configmaps = format!("/api/v1/namespaces/{TENANT_NS}/configmaps");
    let continue_token = |rv: i64| {
        base64::engine::general_purpose::URL_SAFE.encode(
            json!({"v": "meta.k8s.io/v1", "rv": rv, "start": "x"})
                .to_string()
                .into_bytes(),
        )
    };
    let cases: Vec<(String, u16, &str)> = vec![
        // From the future: kube-apiserver's "Too large resource version" (504 Timeout).
        (
            format!("{configmaps}?watch=true&resourceVersion=9223372036854775807"),
            504,
            "Timeout",
        ),
        (
            format!("{configmaps}?watch=true&resourceVersion=18446744073709551615"),
            504,
            "Timeout",
        ),
        (
            format!("{configmaps}?resourceVersion=9223372036854775807"),
            504,
            "Timeout",
        ),
        (
            format!("{configmaps}/x?resourceVersion=18446744073709551615"),
            504,
            "Timeout",
        ),
        // Not a resourceVersion at all.
        (
            format!("{configmaps}?watch=true&resourceVersion=-9223372036854775808"),
            400,
            "BadRequest",
        ),
        (
            format!("{configmaps}?watch=true&resourceVersion=-1"),
            400,
            "BadRequest",
        ),
        (
            format!("{configmaps}?resourceVersion=99999999999999999999999"),
            400,
            "BadRequest",
        ),
        (
            format!("{configmaps}?limit=99999999999999999999"),
            400,
            "BadRequest",
        ),
        (
            format!("{configmaps}?watch=true&timeoutSeconds=99999999999999999999"),
            400,
            "BadRequest",
        ),
        (
            format!("{configmaps}?continue=%%%not-base64"),
            400,
            "BadRequest",
        ),
        (
            format!("{configmaps}?continue={}", continue_token(-1)),
            400,
            "BadRequest",
        ),
        (
            format!("{configmaps}?labelSelector=a%20in%20(b"),
            400,
            "BadRequest",
        ),
        (
            format!("{configmaps}?fieldSelector=metadata.uid%3Dx"),
            400,
            "BadRequest",
        ),
    ];
    for (path, code, reason) in &cases {
        let answer = as_tenant(&hub, Method::GET, path, None).await?;
        ensure!(
            answer.code == *code && answer.body["reason"] == *reason,
            "GET {path}: {} {}",
            answer.code,
            answer.body
        );
    }

    // Large but valid numbers: a limit beyond any list, and a continue token from the future.
    let listed = as_tenant(
        &hub,
        Method::GET,
        &format!("{configmaps}?limit=9223372036854775807"),
        None,
    )
    .await?;
    ensure!(
        listed.code == 200,
        "huge limit: {} {}",
        listed.code,
        listed.body
    );
    let future = as_tenant(
        &hub,
        Method::GET,
        &format!("{configmaps}?limit=1&continue={}", continue_token(i64::MAX)),
        None,
    )
    .await?;
    ensure!(
        (400..600).contains(&future.code) && future.body["kind"] == "Status",
        "continue from the future: {} {}",
        future.code,
        future.body
    );

    // A huge selector value: upstream's 400 (label values are at most 63 characters).
    let huge = format!("{configmaps}?labelSelector=a%3D{}", "x".repeat(60_000));
    let answer = as_tenant(&hub, Method::GET, &huge, None).await?;
    ensure!(
        answer.code == 400
            && answer
                .message()
                .ends_with("at key: \"a\": must be no more than 63 characters"),
        "huge selector value: {} {}",
        answer.code,
        answer.body
    );
    // Many valid values: answered, never a dropped connection.
    let many = format!(
        "{configmaps}?labelSelector=a%20in%20({})",
        "b,".repeat(25_000)
    );
    let answer = as_tenant(&hub, Method::GET, &many, None).await?;
    ensure!(
        answer.code == 200,
        "many values: {} {}",
        answer.code,
        answer.body
    );
    // Whatever it answered, it still serves.
    let healthy = as_tenant(&hub, Method::GET, &configmaps, None).await?;
    ensure!(healthy.code == 200, "after the attacks: {}", healthy.code);
    hub.hub.shutdown().await;
    Ok(())
}

/// A token file line with an empty token (`,intruder,0,system:masters`) was a superuser for
/// anyone sending `Authorization: Bearer ` with nothing after it. Upstream skips such a line:
/// an empty bearer token is 401, and the file's other tokens still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_token_in_the_token_file_authenticates_nobody() -> Result<()> {
    let hub = start_hub(atoll_apiserver::tokens::DEFAULT_MAX_EXPIRATION).await?;
    for header in ["Bearer ", "Bearer", "bearer  ", "Bearer \"\""] {
        let answer = send(
            &hub.bare,
            Method::GET,
            "/api/v1/namespaces/kube-system/secrets",
            &[("authorization", HeaderValue::from_str(header)?)],
            None,
        )
        .await?;
        ensure!(
            answer.code == 401 && answer.message() == "Unauthorized",
            "{header:?}: {} {}",
            answer.code,
            answer.body
        );
    }
    let review = send(
        &hub.bare,
        Method::POST,
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        &[bearer(TENANT_TOKEN)?],
        Some((
            "application/json",
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
                .to_string()
                .into_bytes(),
        )),
    )
    .await?;
    ensure!(
        review.code == 201
            && review.body["status"]["userInfo"]["username"] == "tenant"
            && review.body["status"]["userInfo"]["uid"] == "1001",
        "the tenant's token: {} {}",
        review.code,
        review.body
    );
    hub.hub.shutdown().await;
    Ok(())
}

/// An `Authorization` header that is not UTF-8 was read as no header at all (anonymous);
/// it carries credentials this server did not issue: 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_utf8_authorization_header_is_unauthorized_not_anonymous() -> Result<()> {
    let hub = start_hub(atoll_apiserver::tokens::DEFAULT_MAX_EXPIRATION).await?;
    for raw in [&b"Bearer \xff\xfe\xfd"[..], b"\xc3\x28", b"Basic \x80"] {
        let answer = send(
            &hub.bare,
            Method::GET,
            "/version",
            &[("authorization", HeaderValue::from_bytes(raw)?)],
            None,
        )
        .await?;
        ensure!(
            answer.code == 401 && answer.body["reason"] == "Unauthorized",
            "{raw:?}: {} {}",
            answer.code,
            answer.body
        );
    }
    hub.hub.shutdown().await;
    Ok(())
}

/// `Impersonate-Uid` and `Impersonate-Extra-*` were ignored, so an identity allowed to
/// impersonate a user could not be stopped from (or credited with) a uid or extras. As
/// upstream: each is authorized by `impersonate` on `uids` and `userextras/<key>` in
/// authentication.k8s.io, refused with upstream's 403, shown by SelfSubjectReview once
/// allowed, and refused without `Impersonate-User`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impersonated_uids_and_extras_need_their_own_permission() -> Result<()> {
    let hub = start_hub(atoll_apiserver::tokens::DEFAULT_MAX_EXPIRATION).await?;
    let rbac = "/apis/rbac.authorization.k8s.io/v1";
    let grant = async |name: &str, rules: Value| -> Result<()> {
        created(
            as_admin(
                &hub,
                Method::POST,
                &format!("{rbac}/clusterroles"),
                json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                    "metadata": {"name": name}, "rules": rules}),
            )
            .await?,
            name,
        )
        .await?;
        created(
            as_admin(
                &hub,
                Method::POST,
                &format!("{rbac}/clusterrolebindings"),
                json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                    "metadata": {"name": name},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
                    "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "tenant"}]}),
            )
            .await?,
            name,
        )
        .await?;
        Ok(())
    };
    grant(
        "impersonate-bob",
        json!([{"apiGroups": [""], "resources": ["users"], "verbs": ["impersonate"], "resourceNames": ["bob"]}]),
    )
    .await?;
    let whoami = async |extra: &[(&str, &str)]| -> Result<Answer> {
        let mut headers = vec![
            bearer(TENANT_TOKEN)?,
            ("impersonate-user", HeaderValue::from_static("bob")),
        ];
        for (name, value) in extra {
            headers.push((*name, HeaderValue::from_str(value)?));
        }
        send(
            &hub.bare,
            Method::POST,
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            &headers,
            Some((
                "application/json",
                json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
                    .to_string()
                    .into_bytes(),
            )),
        )
        .await
    };

    let uid = whoami(&[("impersonate-uid", "0")]).await?;
    ensure!(
        uid.code == 403
            && uid.message()
                == r#"uids.authentication.k8s.io "0" is forbidden: User "tenant" cannot impersonate resource "uids" in API group "authentication.k8s.io" at the cluster scope"#,
        "a uid without the right: {} {}",
        uid.code,
        uid.body
    );
    let extra = whoami(&[("impersonate-extra-scopes", "cluster-admin")]).await?;
    ensure!(
        extra.code == 403
            && extra.message()
                == r#"userextras.authentication.k8s.io "cluster-admin" is forbidden: User "tenant" cannot impersonate resource "userextras/scopes" in API group "authentication.k8s.io" at the cluster scope"#,
        "an extra without the right: {} {}",
        extra.code,
        extra.body
    );
    let without_user = send(
        &hub.bare,
        Method::GET,
        "/api/v1/namespaces",
        &[
            bearer(TENANT_TOKEN)?,
            ("impersonate-uid", HeaderValue::from_static("0")),
        ],
        None,
    )
    .await?;
    ensure!(
        without_user.code == 400,
        "a uid without a user: {} {}",
        without_user.code,
        without_user.body
    );

    grant(
        "impersonate-uid-and-scopes",
        json!([
            {"apiGroups": ["authentication.k8s.io"], "resources": ["uids"], "verbs": ["impersonate"], "resourceNames": ["42"]},
            {"apiGroups": ["authentication.k8s.io"], "resources": ["userextras/scopes"], "verbs": ["impersonate"]},
        ]),
    )
    .await?;
    let allowed = whoami(&[
        ("impersonate-uid", "42"),
        ("impersonate-extra-scopes", "read"),
        ("impersonate-extra-scopes", "write"),
    ])
    .await?;
    let info = &allowed.body["status"]["userInfo"];
    ensure!(
        allowed.code == 201
            && info["username"] == "bob"
            && info["uid"] == "42"
            && info["extra"] == json!({"scopes": ["read", "write"]}),
        "allowed impersonation: {} {}",
        allowed.code,
        allowed.body
    );
    // Another uid, or an extra key not granted, is still refused.
    ensure!(whoami(&[("impersonate-uid", "43")]).await?.code == 403);
    ensure!(
        whoami(&[("impersonate-extra-groups", "system:masters")])
            .await?
            .code
            == 403
    );
    hub.hub.shutdown().await;
    Ok(())
}

/// TokenRequest accepted lifetimes up to 2^32 seconds (136 years). As upstream's
/// `--service-account-max-token-expiration`: a longer request is shortened to the cap (one
/// year by default) with upstream's warning, and the token's own `exp` follows; a cap outside
/// 1 hour..2^32 seconds does not start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_requests_are_capped_at_the_maximum_expiration() -> Result<()> {
    let cap = atoll_apiserver::tokens::DEFAULT_MAX_EXPIRATION.as_secs();
    let hub = start_hub(atoll_apiserver::tokens::DEFAULT_MAX_EXPIRATION).await?;
    created(
        as_admin(
            &hub,
            Method::POST,
            "/api/v1/namespaces/default/serviceaccounts",
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "robot"}}),
        )
        .await?,
        "the ServiceAccount",
    )
    .await?;
    let requested = 1i64 << 32;
    let answer = as_admin(
        &hub,
        Method::POST,
        "/api/v1/namespaces/default/serviceaccounts/robot/token",
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": requested}}),
    )
    .await?;
    ensure!(
        answer.code == 201,
        "token request: {} {}",
        answer.code,
        answer.body
    );
    ensure!(
        answer.body["spec"]["expirationSeconds"] == json!(cap),
        "granted lifetime: {}",
        answer.body["spec"]
    );
    let warning = answer
        .headers
        .get(http::header::WARNING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    ensure!(
        warning
            == format!(
                "299 - \"requested expiration of {requested} seconds shortened to {cap} seconds\""
            ),
        "warning: {warning:?}"
    );
    let token = answer.body["status"]["token"].as_str().context("token")?;
    let payload = token.split('.').nth(1).context("JWT payload")?;
    let claims: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?)?;
    let lifetime =
        claims["exp"].as_i64().context("exp")? - claims["iat"].as_i64().context("iat")?;
    ensure!(
        lifetime == i64::try_from(cap)?,
        "the token lives {lifetime} s"
    );
    hub.hub.shutdown().await;

    for bad in [
        Duration::from_secs(1800),
        Duration::from_secs((1 << 32) + 1),
    ] {
        let refused = match start_hub(bad).await {
            Ok(hub) => {
                hub.hub.shutdown().await;
                anyhow::bail!("a hub started with a cap of {bad:?}");
            }
            Err(error) => format!("{error:#}"),
        };
        ensure!(
            refused.contains(
                "the service-account-max-token-expiration must be between 1 hour and 2^32 seconds"
            ),
            "{refused}"
        );
    }
    Ok(())
}

/// A client presenting a certificate for `subject`, signed by the hub's own CA (test-only: the
/// CA in the data directory's `pki/`), as an external CA the hub trusted might sign it.
async fn client_with_certificate(
    hub: &TestHub,
    subject: rcgen::DistinguishedName,
) -> Result<Client> {
    let pki = hub._dir.path().join("data").join("pki");
    let ca_pem = std::fs::read_to_string(pki.join("ca.crt"))?;
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(pki.join("ca.key"))?)?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = subject;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let yaml = atoll_apiserver::pki::kubeconfig_yaml(
        &ca_pem,
        &format!("https://{}", hub.hub.addr),
        "crafted",
        &atoll_apiserver::pki::CertKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        },
    );
    let kc = Kubeconfig::from_yaml(&yaml)?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    config.default_retry = false;
    Ok(Client::try_from(config)?)
}

async fn self_subject_review(client: &Client) -> Result<Answer> {
    send(
        client,
        Method::POST,
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        &[],
        Some((
            "application/json",
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
                .to_string()
                .into_bytes(),
        )),
    )
    .await
}

/// The authenticator took a certificate's first CN (Go's x509, which kube-apiserver and the
/// members use, takes the last) and skipped an O in BMPString (Go reads it). Now a subject
/// with two CNs authenticates nobody (401), and an O in any string type is the group Go reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_read_strictly_and_as_go_reads_them() -> Result<()> {
    let hub = start_hub(atoll_apiserver::tokens::DEFAULT_MAX_EXPIRATION).await?;
    let mut two_cns = rcgen::DistinguishedName::new();
    two_cns.push(rcgen::DnType::CommonName, "nobody-much");
    // A second CN (2.5.4.3), which rcgen only writes as a custom attribute type.
    two_cns.push(
        rcgen::DnType::CustomDnType(vec![2, 5, 4, 3]),
        "system:admin",
    );
    two_cns.push(rcgen::DnType::OrganizationName, "system:masters");
    let client = client_with_certificate(&hub, two_cns).await?;
    for path in ["/api/v1/namespaces/kube-system/secrets", "/version"] {
        let answer = send(&client, Method::GET, path, &[], None).await?;
        ensure!(
            answer.code == 401 && answer.body["reason"] == "Unauthorized",
            "two CNs, {path}: {} {}",
            answer.code,
            answer.body
        );
    }

    let masters = "system:masters";
    let encodings: Vec<(&str, rcgen::DnValue)> = vec![
        ("bmp", rcgen::DnValue::BmpString(masters.try_into()?)),
        (
            "teletex",
            rcgen::DnValue::TeletexString(masters.try_into()?),
        ),
        (
            "printable",
            rcgen::DnValue::PrintableString(masters.try_into()?),
        ),
        ("ia5", rcgen::DnValue::Ia5String(masters.try_into()?)),
    ];
    for (encoding, value) in encodings {
        let mut subject = rcgen::DistinguishedName::new();
        subject.push(rcgen::DnType::CommonName, "outside-admin");
        subject.push(rcgen::DnType::OrganizationName, value);
        let client = client_with_certificate(&hub, subject).await?;
        let review = self_subject_review(&client).await?;
        let info = &review.body["status"]["userInfo"];
        ensure!(
            review.code == 201
                && info["username"] == "outside-admin"
                && info["groups"]
                    .as_array()
                    .is_some_and(|g| g.contains(&json!(masters))),
            "O in {encoding}: {} {}",
            review.code,
            review.body
        );
    }
    hub.hub.shutdown().await;
    Ok(())
}

/// A CSR's `spec.uid` and `spec.extra` were dropped, so an approver saw less of the requester
/// than upstream shows, and a body could not be told from the requester. As upstream: the
/// requester's uid and extra are recorded, whatever the body claimed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csr_records_the_requesters_uid_and_extra_not_the_bodys() -> Result<()> {
    let hub = start_hub(atoll_apiserver::tokens::DEFAULT_MAX_EXPIRATION).await?;
    let rbac = "/apis/rbac.authorization.k8s.io/v1";
    created(
        as_admin(
            &hub,
            Method::POST,
            &format!("{rbac}/clusterroles"),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": "csr-create"},
                "rules": [{"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests"], "verbs": ["create"]}]}),
        )
        .await?,
        "the ClusterRole",
    )
    .await?;
    created(
        as_admin(
            &hub,
            Method::POST,
            &format!("{rbac}/clusterrolebindings"),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": "csr-create"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "csr-create"},
                "subjects": [
                    {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "bob"},
                    {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "tenant"},
                ]}),
        )
        .await?,
        "the ClusterRoleBinding",
    )
    .await?;
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "bob");
    let pem = params.serialize_request(&key)?.pem()?;
    let body = |name: &str| {
        json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(&pem),
            "signerName": "example.com/signer",
            "usages": ["client auth"],
            "username": "system:admin",
            "uid": "0",
            "groups": ["system:masters"],
            "extra": {"scopes": ["cluster-admin"]},
        }})
        .to_string()
        .into_bytes()
    };
    let path = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
    // The admin, impersonating bob with a uid and extras.
    let impersonated = created(
        send(
            &hub.admin,
            Method::POST,
            path,
            &[
                ("impersonate-user", HeaderValue::from_static("bob")),
                ("impersonate-uid", HeaderValue::from_static("42")),
                ("impersonate-extra-scopes", HeaderValue::from_static("read")),
                (
                    "impersonate-extra-scopes",
                    HeaderValue::from_static("write"),
                ),
            ],
            Some(("application/json", body("impersonated"))),
        )
        .await?,
        "the impersonated CSR",
    )
    .await?;
    let spec = &impersonated["spec"];
    ensure!(
        spec["username"] == "bob"
            && spec["uid"] == "42"
            && spec["extra"] == json!({"scopes": ["read", "write"]})
            && spec["groups"] == json!(["system:authenticated"]),
        "impersonated: {spec}"
    );
    // The tenant's token has uid 1001 and no extras: the body's extras are gone.
    let tenant = created(
        as_tenant(
            &hub,
            Method::POST,
            path,
            Some(("application/json", body("tenant"))),
        )
        .await?,
        "the tenant's CSR",
    )
    .await?;
    let spec = &tenant["spec"];
    ensure!(
        spec["username"] == "tenant" && spec["uid"] == "1001" && spec.get("extra").is_none(),
        "tenant: {spec}"
    );
    hub.hub.shutdown().await;
    Ok(())
}

/// Strategic merge patches built to hurt, from a tenant on its own Lease: nesting far past
/// any parser's depth, a list merge whose quadratic work would spin for minutes (250 000
/// finalizers, each compared with every other), a body over 3 MiB, directives and lists
/// that upstream refuses. Each gets a Status error, nothing is stored, and the server goes on;
/// a finalizer added by a strategic merge patch is appended, as upstream appends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_strategic_merge_patches_get_status_errors_and_store_nothing() -> Result<()> {
    let hub = start_hub(atoll_apiserver::tokens::DEFAULT_MAX_EXPIRATION).await?;
    tenant_with_namespace_role(&hub).await?;
    let leases = format!("/apis/coordination.k8s.io/v1/namespaces/{TENANT_NS}/leases");
    created(
        as_tenant(
            &hub,
            Method::POST,
            &leases,
            Some((
                "application/json",
                json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": "target", "finalizers": ["example.com/keep"]},
                    "spec": {"holderIdentity": "agent"}})
                .to_string()
                .into_bytes(),
            )),
        )
        .await?,
        "the tenant's Lease",
    )
    .await?;
    let path = format!("{leases}/target");
    let smp = |body: Vec<u8>| Some(("application/strategic-merge-patch+json", body));

    let appended = as_tenant(
        &hub,
        Method::PATCH,
        &path,
        smp(json!({"metadata": {"finalizers": ["example.com/more"]}})
            .to_string()
            .into_bytes()),
    )
    .await?;
    ensure!(
        appended.code == 200
            && appended.body["metadata"]["finalizers"]
                == json!(["example.com/more", "example.com/keep"]),
        "a finalizer by strategic merge patch: {} {}",
        appended.code,
        appended.body
    );
    let before = appended.body;

    let depth = 100_000;
    let deep = format!(
        "{{\"metadata\":{{\"annotations\":{}1{}}}}}",
        "{\"a\":".repeat(depth),
        "}".repeat(depth)
    );
    let finalizers: Vec<String> = (0..250_000).map(|i| format!("f{i}")).collect();
    let quadratic = json!({"metadata": {"finalizers": finalizers}}).to_string();
    let oversized =
        json!({"metadata": {"annotations": {"big": "x".repeat(3 * 1024 * 1024)}}}).to_string();
    let attacks: [(&str, Vec<u8>, u16, &str); 6] = [
        ("deeply nested", deep.into_bytes(), 400, ""),
        (
            "quadratic list merge",
            quadratic.into_bytes(),
            413,
            "Request entity too large",
        ),
        (
            "over 3 MiB",
            oversized.into_bytes(),
            413,
            "Request entity too large",
        ),
        (
            "an order list that the patch contradicts",
            json!({"metadata": {"$setElementOrder/finalizers": ["zzz"], "finalizers": ["example.com/new"]}})
                .to_string()
                .into_bytes(),
            500,
            "The order in patch list:",
        ),
        (
            "a null among strings",
            json!({"metadata": {"finalizers": [null]}})
                .to_string()
                .into_bytes(),
            500,
            "list element types are not identical: [[example.com/more example.com/keep] [<nil>]]",
        ),
        (
            "a bad primitive list directive",
            json!({"metadata": {"$deleteFromPrimitiveListfinalizers": ["x"]}})
                .to_string()
                .into_bytes(),
            400,
            "invalid patch format of primitive list",
        ),
    ];
    for (what, body, code, message) in attacks {
        let answer = as_tenant(&hub, Method::PATCH, &path, smp(body)).await?;
        ensure!(
            answer.code == code
                && answer.body["kind"] == "Status"
                && answer.message().starts_with(message),
            "{what}: {} {}",
            answer.code,
            answer.body
        );
    }

    // A patch on which upstream's Go code panics (a null first element of a list that
    // `$setElementOrder` creates, on a Lease without finalizers) is answered with the panic
    // Status.
    created(
        as_tenant(
            &hub,
            Method::POST,
            &leases,
            Some((
                "application/json",
                json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": "plain"}, "spec": {"holderIdentity": "agent"}})
                .to_string()
                .into_bytes(),
            )),
        )
        .await?,
        "a Lease without finalizers",
    )
    .await?;
    let panics = as_tenant(
        &hub,
        Method::PATCH,
        &format!("{leases}/plain"),
        smp(
            json!({"metadata": {"$setElementOrder/finalizers": [null], "finalizers": [null]}})
                .to_string()
                .into_bytes(),
        ),
    )
    .await?;
    ensure!(
        panics.code == 500 && panics.message() == atoll_apiserver::server::PANIC_MESSAGE,
        "a null first element: {} {}",
        panics.code,
        panics.body
    );

    // Nothing was stored, and the server still serves the tenant.
    let after = as_tenant(&hub, Method::GET, &path, None).await?;
    ensure!(
        after.code == 200
            && after.body["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
            && after.body["metadata"]["finalizers"] == before["metadata"]["finalizers"],
        "after the attacks: {} {}",
        after.code,
        after.body
    );
    Ok(())
}
