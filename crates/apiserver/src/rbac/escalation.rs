//! Privilege-escalation prevention, as kube-apiserver's RBAC storage does it: whoever writes a
//! Role or ClusterRole must already hold every permission it grants (in the Role's namespace,
//! or cluster-wide for a ClusterRole) or be allowed to `escalate` on it; whoever writes a
//! RoleBinding or ClusterRoleBinding must hold every permission of the role it references (in
//! the binding's namespace, or cluster-wide) or be allowed to `bind` that role.
//! `system:masters` is exempt, as upstream. The requester's rules are read before the write,
//! so the check itself is synchronous and runs inside the write's compare-and-swap loop
//! against each current object.

use std::sync::Arc;

use serde_json::Value;

use super::policy::{Policy, PolicyRule, go_quoted_list, uncovered};
use crate::auth::{SYSTEM_MASTERS, UserInfo};
use crate::error::ApiError;
use crate::registry::{GroupResource, ResourceDef};
use crate::request::{RequestTarget, ResourceRequest};
use crate::storage::{Storage, name_of};

const GROUP: &str = "rbac.authorization.k8s.io";

/// Which RBAC kind a write is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Role,
    ClusterRole,
    RoleBinding,
    ClusterRoleBinding,
}

#[derive(Debug)]
struct Check {
    kind: Kind,
    gr: GroupResource,
    user: UserInfo,
    /// The namespace of a Role or RoleBinding.
    namespace: Option<String>,
    policy: Arc<Policy>,
}

/// The escalation check of one create, update or patch; a no-op for other kinds, other verbs
/// and exempt requesters.
#[derive(Debug, Default)]
pub struct Escalation {
    check: Option<Check>,
}

impl Escalation {
    /// Prepares the check of a write of `def` by `user`: reads the requester's rules, and
    /// settles at once whether a Role or ClusterRole write may `escalate`.
    pub async fn prepare(
        storage: &Storage,
        def: &ResourceDef,
        user: &UserInfo,
        req: &ResourceRequest,
        namespace: Option<&str>,
    ) -> Result<Escalation, ApiError> {
        let kind = match (def.group.as_str(), def.kind.as_str()) {
            (GROUP, "Role") => Kind::Role,
            (GROUP, "ClusterRole") => Kind::ClusterRole,
            (GROUP, "RoleBinding") => Kind::RoleBinding,
            (GROUP, "ClusterRoleBinding") => Kind::ClusterRoleBinding,
            _ => return Ok(Escalation::default()),
        };
        if !matches!(req.verb, "create" | "update" | "patch")
            || user.all_groups().contains(&SYSTEM_MASTERS)
        {
            return Ok(Escalation::default());
        }
        let policy = super::policy(storage).await?;
        if matches!(kind, Kind::Role | Kind::ClusterRole) {
            // Upstream asks the authorizer with the request's own attributes, so on create
            // (no name in the path) only an `escalate` grant without resourceNames applies.
            let escalate = RequestTarget::Resource(ResourceRequest {
                verb: "escalate",
                ..req.clone()
            });
            if policy.allows(user, &escalate) {
                return Ok(Escalation::default());
            }
        }
        Ok(Escalation {
            check: Some(Check {
                kind,
                gr: def.group_resource(),
                user: user.clone(),
                namespace: namespace.map(str::to_string),
                policy,
            }),
        })
    }

    /// Refuses (403) a create (`current` is None) or an update to `next` that would grant what
    /// the requester does not hold. An update that changes only what garbage collection
    /// changes (ownerReferences, finalizers) passes, as upstream, so that collection of a
    /// role nobody may write still finishes.
    pub fn check(&self, current: Option<&Value>, next: &Value) -> Result<(), ApiError> {
        let Some(check) = &self.check else {
            return Ok(());
        };
        if let Some(current) = current
            && only_collection_fields_differ(current, next)
        {
            return Ok(());
        }
        let name = name_of(next);
        let ns = check.namespace.as_deref();
        match check.kind {
            Kind::Role | Kind::ClusterRole => {
                check.confirm_held(name, &PolicyRule::list_from(next))?;
                if check.kind == Kind::ClusterRole && has_aggregation_rule(next) {
                    // An aggregation rule can gather any rule, so it takes every permission.
                    let everything = [
                        PolicyRule::from_value(
                            &serde_json::json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}),
                        ),
                        PolicyRule::from_value(
                            &serde_json::json!({"nonResourceURLs": ["*"], "verbs": ["*"]}),
                        ),
                    ];
                    if !check.missing(&everything).is_empty() {
                        return Err(ApiError::forbidden(
                            &check.gr,
                            name,
                            "must have cluster-admin privileges to use the aggregationRule",
                        ));
                    }
                }
                Ok(())
            }
            Kind::RoleBinding | Kind::ClusterRoleBinding => {
                // Checked as stored: an omitted apiGroup is defaulted first, as upstream
                // decodes it; any other apiGroup asks for `bind` in that group, and validation
                // then refuses the binding (422).
                let role_ref = crate::strategy::defaulted_role_ref(next.get("roleRef"));
                let ref_str = |field: &str| {
                    role_ref
                        .as_ref()
                        .and_then(|r| r.get(field))
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                };
                let (role_kind, role_name) = (ref_str("kind"), ref_str("name"));
                let role_resource = match role_kind {
                    "ClusterRole" => "clusterroles",
                    "Role" => "roles",
                    // Validation refuses other kinds.
                    _ => return Ok(()),
                };
                let bind = RequestTarget::Resource(ResourceRequest {
                    group: ref_str("apiGroup").to_string(),
                    version: "*".into(),
                    namespace: check.namespace.clone(),
                    resource: role_resource.into(),
                    name: Some(role_name.to_string()),
                    subresource: None,
                    verb: "bind",
                });
                if check.policy.allows(&check.user, &bind) {
                    return Ok(());
                }
                let rules = match (role_kind, ns) {
                    ("ClusterRole", _) => check.policy.cluster_role(role_name),
                    (_, Some(ns)) => check.policy.role(ns, role_name),
                    (_, None) => None,
                };
                let Some(rules) = rules else {
                    // Upstream answers with the lookup's own error.
                    return Err(ApiError::not_found(
                        &GroupResource::new(GROUP, role_resource),
                        role_name,
                    ));
                };
                check.confirm_held(name, rules)
            }
        }
    }
}

impl Check {
    fn missing(&self, wanted: &[PolicyRule]) -> Vec<String> {
        let implicit = super::implicit_rules(&self.user);
        let held: Vec<&PolicyRule> = self
            .policy
            .rules_for(&self.user, self.namespace.as_deref())
            .chain(implicit.iter())
            .collect();
        uncovered(held.iter().copied(), wanted)
    }

    fn confirm_held(&self, name: &str, wanted: &[PolicyRule]) -> Result<(), ApiError> {
        let missing = self.missing(wanted);
        if missing.is_empty() {
            return Ok(());
        }
        Err(ApiError::forbidden(
            &self.gr,
            name,
            format!(
                "user {:?} (groups={}) is attempting to grant RBAC permissions not currently held:\n{}",
                self.user.name,
                go_quoted_list(&self.user.all_groups()),
                missing.join("\n")
            ),
        ))
    }
}

fn has_aggregation_rule(role: &Value) -> bool {
    role.pointer("/aggregationRule/clusterRoleSelectors")
        .and_then(Value::as_array)
        .is_some_and(|selectors| !selectors.is_empty())
}

/// Whether `next` equals `current` apart from the fields garbage collection writes and the
/// bookkeeping a client echoes back.
fn only_collection_fields_differ(current: &Value, next: &Value) -> bool {
    let strip = |obj: &Value| {
        let mut obj = obj.clone();
        if let Some(o) = obj.as_object_mut() {
            o.remove("apiVersion");
            o.remove("kind");
        }
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            for field in [
                "ownerReferences",
                "finalizers",
                "selfLink",
                "managedFields",
                "resourceVersion",
            ] {
                meta.remove(field);
            }
        }
        obj
    };
    strip(current) == strip(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn collection_fields_alone_do_not_count_as_a_change() {
        let role =
            json!({"metadata": {"name": "r", "resourceVersion": "3"}, "rules": [{"verbs": ["*"]}]});
        let mut collected = role.clone();
        collected["metadata"]["finalizers"] = json!(["foregroundDeletion"]);
        collected["metadata"]["ownerReferences"] = json!([{"name": "o"}]);
        collected["metadata"]["resourceVersion"] = json!("4");
        assert!(only_collection_fields_differ(&role, &collected));
        let mut relabelled = role.clone();
        relabelled["metadata"]["labels"] = json!({"a": "b"});
        assert!(!only_collection_fields_differ(&role, &relabelled));
    }
}
