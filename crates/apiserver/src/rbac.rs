//! Authorization by RBAC (rbac.authorization.k8s.io/v1): Roles and ClusterRoles granted through
//! RoleBindings and ClusterRoleBindings, with resourceNames, subresources, non-resource URLs,
//! users, groups and service accounts. `system:masters` may do everything, as upstream; health,
//! version and discovery paths are open as upstream's bootstrap policy opens them.

mod aggregation;
mod cache;
mod escalation;
pub mod policy;

use serde_json::{Value, json};

pub use aggregation::run as run_aggregation;
pub use cache::{PolicyCache, TrackedStore, follow_changes};
pub use escalation::Escalation;
use policy::Policy;

use crate::auth::{SYSTEM_AUTHENTICATED, SYSTEM_MASTERS, UserInfo};
use crate::error::ApiError;
use crate::request::RequestTarget;
use crate::storage::Storage;

/// Paths everyone may GET (upstream's `system:public-info-viewer`).
const PUBLIC_PATHS: &[&str] = &["/healthz", "/livez", "/readyz", "/version"];
/// Paths every authenticated user may GET (upstream's `system:discovery`).
const DISCOVERY_PATHS: &[&str] = &["/api", "/apis", "/openapi"];

fn path_under(path: &str, roots: &[&str]) -> bool {
    roots.iter().any(|root| {
        path == *root
            || path
                .strip_prefix(root)
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// Every RBAC object, current as of every RBAC write acknowledged so far (parsed once per
/// change, not per request).
pub async fn policy(storage: &Storage) -> Result<std::sync::Arc<Policy>, ApiError> {
    storage
        .rbac_policy_cache()
        .get(storage.store().as_ref())
        .await
}

/// The rules every user holds without a binding: upstream's bootstrap policy binds
/// `system:public-info-viewer` to everyone and `system:discovery` to authenticated users;
/// here the authorizer grants those paths itself.
fn implicit_rules(user: &UserInfo) -> Vec<policy::PolicyRule> {
    let mut urls: Vec<String> = Vec::new();
    let mut roots: Vec<&str> = PUBLIC_PATHS.to_vec();
    if user.all_groups().contains(&SYSTEM_AUTHENTICATED) {
        roots.extend(DISCOVERY_PATHS);
    }
    for root in roots {
        urls.push(root.to_string());
        urls.push(format!("{root}/*"));
    }
    vec![policy::PolicyRule {
        verbs: vec!["get".into()],
        non_resource_urls: urls,
        ..Default::default()
    }]
}

/// Whether `user` may do what `target` asks.
pub async fn authorize(
    storage: &Storage,
    user: &UserInfo,
    target: &RequestTarget,
) -> Result<bool, ApiError> {
    let groups = user.all_groups();
    if groups.contains(&SYSTEM_MASTERS) {
        return Ok(true);
    }
    if let RequestTarget::NonResource { path, verb } = target
        && *verb == "get"
    {
        if path_under(path, PUBLIC_PATHS) {
            return Ok(true);
        }
        if groups.contains(&SYSTEM_AUTHENTICATED) && path_under(path, DISCOVERY_PATHS) {
            return Ok(true);
        }
    }
    // As upstream, a request for the Namespace object `x` itself is in namespace `x`, so
    // RoleBindings there may grant it.
    Ok(policy(storage).await?.allows(user, target))
}

/// The Forbidden error for a denied request.
pub fn denied(user: &UserInfo, target: &RequestTarget) -> ApiError {
    match target {
        RequestTarget::Resource(req) => {
            let gr = crate::registry::GroupResource::new(&req.group, &req.resource);
            let ns = req.namespace.as_deref();
            ApiError::forbidden_resource(
                &user.name,
                req.verb,
                &gr,
                req.subresource.as_deref(),
                req.name.as_deref().unwrap_or_default(),
                ns,
            )
        }
        RequestTarget::NonResource { path, verb } => {
            ApiError::forbidden_path(&user.name, verb, path)
        }
    }
}

/// The bootstrap policy every server starts with: `cluster-admin` for `system:masters`,
/// `system:basic-user` (self reviews) for every authenticated user, and the user-facing roles
/// `admin`, `edit` and `view` to bind in namespaces (aggregated from the
/// `system:aggregate-to-*` roles; their rules are filled in here already).
pub fn bootstrap_objects() -> Vec<(&'static str, Value)> {
    let rbac = "rbac.authorization.k8s.io/v1";
    let read = json!(["get", "list", "watch"]);
    let write = json!([
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch"
    ]);
    let core = json!(["configmaps", "secrets", "serviceaccounts", "events"]);
    let mut objects = vec![
        (
            "clusterroles",
            json!({
                "apiVersion": rbac, "kind": "ClusterRole",
                "metadata": {"name": "cluster-admin", "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
                "rules": [
                    {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                    {"nonResourceURLs": ["*"], "verbs": ["*"]}
                ]
            }),
        ),
        aggregated(rbac, "admin"),
        aggregated(rbac, "edit"),
        aggregated(rbac, "view"),
        (
            "clusterroles",
            json!({
                "apiVersion": rbac, "kind": "ClusterRole",
                "metadata": {"name": "system:aggregate-to-admin", "labels": {
                    "kubernetes.io/bootstrapping": "rbac-defaults",
                    "rbac.authorization.k8s.io/aggregate-to-admin": "true"
                }},
                "rules": [
                    {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": write}
                ]
            }),
        ),
        (
            "clusterroles",
            json!({
                "apiVersion": rbac, "kind": "ClusterRole",
                "metadata": {"name": "system:aggregate-to-edit", "labels": {
                    "kubernetes.io/bootstrapping": "rbac-defaults",
                    "rbac.authorization.k8s.io/aggregate-to-admin": "true",
                    "rbac.authorization.k8s.io/aggregate-to-edit": "true"
                }},
                "rules": [
                    {"apiGroups": [""], "resources": core, "verbs": write},
                    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": write}
                ]
            }),
        ),
        (
            "clusterroles",
            json!({
                "apiVersion": rbac, "kind": "ClusterRole",
                "metadata": {"name": "system:aggregate-to-view", "labels": {
                    "kubernetes.io/bootstrapping": "rbac-defaults",
                    "rbac.authorization.k8s.io/aggregate-to-admin": "true",
                    "rbac.authorization.k8s.io/aggregate-to-edit": "true",
                    "rbac.authorization.k8s.io/aggregate-to-view": "true"
                }},
                "rules": [
                    {"apiGroups": [""], "resources": ["configmaps", "serviceaccounts", "events"], "verbs": read},
                    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": read}
                ]
            }),
        ),
        (
            "clusterroles",
            json!({
                "apiVersion": rbac, "kind": "ClusterRole",
                "metadata": {"name": "system:basic-user", "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
                "rules": [
                    {"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"], "verbs": ["create"]},
                    {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]}
                ]
            }),
        ),
        (
            "clusterrolebindings",
            json!({
                "apiVersion": rbac, "kind": "ClusterRoleBinding",
                "metadata": {"name": "system:basic-user", "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:basic-user"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": SYSTEM_AUTHENTICATED}]
            }),
        ),
        (
            "clusterrolebindings",
            json!({
                "apiVersion": rbac, "kind": "ClusterRoleBinding",
                "metadata": {"name": "cluster-admin", "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": SYSTEM_MASTERS}]
            }),
        ),
    ];
    aggregation::fill_in(&mut objects);
    objects
}

/// One of the user-facing roles `admin`, `edit`, `view`: as upstream, it aggregates the
/// ClusterRoles labelled `rbac.authorization.k8s.io/aggregate-to-<name>: "true"` (the
/// `system:aggregate-to-<name>` roles hold the defaults; CRD installers add their own).
fn aggregated(rbac: &str, name: &str) -> (&'static str, Value) {
    (
        "clusterroles",
        json!({
            "apiVersion": rbac, "kind": "ClusterRole",
            "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
            "aggregationRule": {"clusterRoleSelectors": [
                {"matchLabels": {format!("rbac.authorization.k8s.io/aggregate-to-{name}"): "true"}}
            ]},
            "rules": []
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::ResourceRequest;
    use policy::PolicyRule;

    fn req(
        verb: &'static str,
        resource: &str,
        sub: Option<&str>,
        name: Option<&str>,
    ) -> ResourceRequest {
        ResourceRequest {
            group: String::new(),
            version: "v1".into(),
            namespace: Some("x".into()),
            resource: resource.into(),
            name: name.map(str::to_string),
            subresource: sub.map(str::to_string),
            verb,
        }
    }

    #[test]
    fn rules_match_resources_subresources_and_names() {
        let rule = PolicyRule::from_value(
            &json!({"apiGroups": [""], "resources": ["configmaps", "*/status"], "verbs": ["get"], "resourceNames": ["a"]}),
        );
        assert!(rule.allows_resource(&req("get", "configmaps", None, Some("a"))));
        assert!(!rule.allows_resource(&req("get", "configmaps", None, Some("b"))));
        assert!(!rule.allows_resource(&req("list", "configmaps", None, None)));
        assert!(rule.allows_resource(&req("get", "namespaces", Some("status"), Some("a"))));
        assert!(!rule.allows_resource(&req("get", "secrets", None, Some("a"))));
        let sub = PolicyRule::from_value(
            &json!({"apiGroups": [""], "resources": ["namespaces/status"], "verbs": ["get"]}),
        );
        assert!(sub.allows_resource(&req("get", "namespaces", Some("status"), Some("x"))));
        assert!(!sub.allows_resource(&req("get", "namespaces", None, Some("x"))));
        let url =
            PolicyRule::from_value(&json!({"nonResourceURLs": ["/metrics*"], "verbs": ["get"]}));
        assert!(url.allows_path("get", "/metrics/x") && !url.allows_path("post", "/metrics"));
    }

    #[test]
    fn implicit_rules_follow_authentication() {
        let anonymous = UserInfo::anonymous();
        let alice = UserInfo::new("alice", &[]);
        let get = |path: &str| {
            vec![PolicyRule::from_value(
                &json!({"nonResourceURLs": [path], "verbs": ["get"]}),
            )]
        };
        let anon_rules = implicit_rules(&anonymous);
        let alice_rules = implicit_rules(&alice);
        assert!(policy::uncovered(anon_rules.iter(), &get("/healthz/ping")).is_empty());
        assert!(!policy::uncovered(anon_rules.iter(), &get("/apis")).is_empty());
        assert!(policy::uncovered(alice_rules.iter(), &get("/apis/apps/v1")).is_empty());
        assert!(!policy::uncovered(alice_rules.iter(), &get("/metrics")).is_empty());
    }
}
