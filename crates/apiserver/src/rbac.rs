//! Authorization by RBAC (rbac.authorization.k8s.io/v1): Roles and ClusterRoles granted through
//! RoleBindings and ClusterRoleBindings, with resourceNames, subresources, non-resource URLs,
//! users, groups and service accounts. `system:masters` may do everything, as upstream; health,
//! version and discovery paths are open as upstream's bootstrap policy opens them.

use atoll_store::{RangeRequest, prefix_end};
use serde_json::{Value, json};

use crate::auth::{SYSTEM_AUTHENTICATED, SYSTEM_MASTERS, UserInfo};
use crate::error::ApiError;
use crate::request::{RequestTarget, ResourceRequest};
use crate::storage::Storage;

const PREFIX: &str = "/registry/rbac.authorization.k8s.io/";

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

fn strings(v: Option<&Value>) -> Vec<&str> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn verb_matches(rule: &Value, verb: &str) -> bool {
    strings(rule.get("verbs"))
        .iter()
        .any(|v| *v == "*" || *v == verb)
}

fn resource_matches(rule: &Value, req: &ResourceRequest) -> bool {
    let groups = strings(rule.get("apiGroups"));
    if !groups.iter().any(|g| *g == "*" || *g == req.group) {
        return false;
    }
    let combined = match &req.subresource {
        Some(sub) => format!("{}/{sub}", req.resource),
        None => req.resource.clone(),
    };
    let resource_ok = strings(rule.get("resources")).iter().any(|r| {
        *r == "*"
            || *r == combined
            || req
                .subresource
                .as_deref()
                .is_some_and(|sub| r.strip_prefix("*/") == Some(sub))
    });
    if !resource_ok {
        return false;
    }
    let names = strings(rule.get("resourceNames"));
    names.is_empty() || req.name.as_deref().is_some_and(|n| names.contains(&n))
}

fn non_resource_matches(rule: &Value, path: &str) -> bool {
    strings(rule.get("nonResourceURLs")).iter().any(|u| {
        *u == "*" || *u == path || u.strip_suffix('*').is_some_and(|p| path.starts_with(p))
    })
}

fn subject_matches(subject: &Value, user: &UserInfo, groups: &[&str], binding_ns: &str) -> bool {
    let name = subject
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match subject.get("kind").and_then(Value::as_str) {
        Some("User") => name == user.name,
        Some("Group") => groups.contains(&name),
        Some("ServiceAccount") => {
            let ns = subject
                .get("namespace")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .unwrap_or(binding_ns);
            user.name == format!("system:serviceaccount:{ns}:{name}")
        }
        _ => false,
    }
}

async fn list(storage: &Storage, prefix: &str) -> Result<Vec<Value>, ApiError> {
    let resp = storage
        .store()
        .range(RangeRequest {
            start: prefix.to_string(),
            end: prefix_end(prefix),
            ..Default::default()
        })
        .await?;
    Ok(resp
        .kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect())
}

async fn get(storage: &Storage, key: &str) -> Result<Option<Value>, ApiError> {
    let resp = storage
        .store()
        .range(RangeRequest {
            start: key.to_string(),
            end: format!("{key}\0"),
            limit: 1,
            ..Default::default()
        })
        .await?;
    Ok(resp
        .kvs
        .first()
        .and_then(|kv| serde_json::from_slice(&kv.value).ok()))
}

async fn rules_of(
    storage: &Storage,
    role_ref: &Value,
    binding_ns: Option<&str>,
) -> Result<Vec<Value>, ApiError> {
    let name = role_ref
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let key = match (role_ref.get("kind").and_then(Value::as_str), binding_ns) {
        (Some("ClusterRole"), _) => format!("{PREFIX}clusterroles/{name}"),
        (Some("Role"), Some(ns)) => format!("{PREFIX}roles/{ns}/{name}"),
        _ => return Ok(Vec::new()),
    };
    Ok(get(storage, &key)
        .await?
        .and_then(|role| role.get("rules").and_then(Value::as_array).cloned())
        .unwrap_or_default())
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
    let allows = |rule: &Value| match target {
        RequestTarget::Resource(req) => verb_matches(rule, req.verb) && resource_matches(rule, req),
        RequestTarget::NonResource { path, verb } => {
            verb_matches(rule, verb) && non_resource_matches(rule, path)
        }
    };
    for binding in list(storage, &format!("{PREFIX}clusterrolebindings/")).await? {
        let subjects = binding.get("subjects").and_then(Value::as_array);
        if !subjects.is_some_and(|s| s.iter().any(|s| subject_matches(s, user, &groups, ""))) {
            continue;
        }
        let role_ref = binding.get("roleRef").cloned().unwrap_or(json!({}));
        if rules_of(storage, &role_ref, None).await?.iter().any(allows) {
            return Ok(true);
        }
    }
    if let RequestTarget::Resource(ResourceRequest {
        namespace: Some(ns),
        ..
    }) = target
    {
        // As upstream, a request for the Namespace object `x` itself is in namespace `x`, so
        // RoleBindings there may grant it.
        {
            for binding in list(storage, &format!("{PREFIX}rolebindings/{ns}/")).await? {
                let subjects = binding.get("subjects").and_then(Value::as_array);
                if !subjects
                    .is_some_and(|s| s.iter().any(|s| subject_matches(s, user, &groups, ns)))
                {
                    continue;
                }
                let role_ref = binding.get("roleRef").cloned().unwrap_or(json!({}));
                if rules_of(storage, &role_ref, Some(ns))
                    .await?
                    .iter()
                    .any(allows)
                {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
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
/// `admin`, `edit` and `view` to bind in namespaces.
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
    vec![
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
        (
            "clusterroles",
            json!({
                "apiVersion": rbac, "kind": "ClusterRole",
                "metadata": {"name": "admin", "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
                "rules": [
                    {"apiGroups": [""], "resources": core, "verbs": write},
                    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": write},
                    {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": write}
                ]
            }),
        ),
        (
            "clusterroles",
            json!({
                "apiVersion": rbac, "kind": "ClusterRole",
                "metadata": {"name": "edit", "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
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
                "metadata": {"name": "view", "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
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
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let rule = json!({"apiGroups": [""], "resources": ["configmaps", "*/status"], "verbs": ["get"], "resourceNames": ["a"]});
        assert!(resource_matches(
            &rule,
            &req("get", "configmaps", None, Some("a"))
        ));
        assert!(!resource_matches(
            &rule,
            &req("get", "configmaps", None, Some("b"))
        ));
        assert!(!resource_matches(
            &rule,
            &req("list", "configmaps", None, None)
        ));
        assert!(resource_matches(
            &rule,
            &req("get", "namespaces", Some("status"), Some("a"))
        ));
        assert!(!resource_matches(
            &rule,
            &req("get", "secrets", None, Some("a"))
        ));
        assert!(verb_matches(&rule, "get") && !verb_matches(&rule, "list"));
        assert!(non_resource_matches(
            &json!({"nonResourceURLs": ["/metrics*"]}),
            "/metrics/x"
        ));
    }

    #[test]
    fn subjects_match_users_groups_and_service_accounts() {
        let user = UserInfo::new("system:serviceaccount:x:robot", &["dev"]);
        let groups = user.all_groups();
        assert!(subject_matches(
            &json!({"kind": "ServiceAccount", "name": "robot"}),
            &user,
            &groups,
            "x"
        ));
        assert!(!subject_matches(
            &json!({"kind": "ServiceAccount", "name": "robot"}),
            &user,
            &groups,
            "y"
        ));
        assert!(subject_matches(
            &json!({"kind": "Group", "name": "dev"}),
            &user,
            &groups,
            "x"
        ));
        assert!(subject_matches(
            &json!({"kind": "Group", "name": "system:authenticated"}),
            &user,
            &groups,
            "x"
        ));
        assert!(!subject_matches(
            &json!({"kind": "User", "name": "robot"}),
            &user,
            &groups,
            "x"
        ));
    }
}
