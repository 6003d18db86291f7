//! ClusterRole aggregation, as kube-controller-manager's clusterrole-aggregation controller:
//! a ClusterRole with an `aggregationRule` gets as its `rules` the union of the rules of every
//! other ClusterRole its `clusterRoleSelectors` match, in the order of the sources' names, exact
//! duplicates dropped. Level-triggered: every ClusterRole change (and the start) recomputes
//! every aggregated role, and a role is written only when its rules differ.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::controllers::{follow, list_items, repeat_until_cancelled};
use crate::error::ApiError;
use crate::registry::{Registry, ResourceDef};
use crate::selector::LabelSelector;
use crate::storage::{Storage, name_of};

/// The selectors of an aggregated ClusterRole, or `None` for a role without an
/// `aggregationRule` (whose rules are its own).
fn selectors(role: &Value) -> Option<Result<Vec<LabelSelector>, ApiError>> {
    let rule = role.get("aggregationRule").filter(|r| !r.is_null())?;
    let selectors = rule
        .get("clusterRoleSelectors")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(LabelSelector::from_structured)
        .collect();
    Some(selectors)
}

/// A rule without empty or null fields, so that `{"resourceNames": []}` and an absent field
/// compare equal, as upstream's semantic equality of Go slices does.
fn normalized(rule: &Value) -> Value {
    match rule.as_object() {
        Some(fields) => Value::Object(
            fields
                .iter()
                .filter(|(_, v)| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        None => rule.clone(),
    }
}

fn rules_of(role: &Value) -> Vec<Value> {
    role.get("rules")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// The rules `role` aggregates from `roles` (every ClusterRole, itself included), or `None`
/// when it has no `aggregationRule`.
pub(crate) fn aggregated_rules(
    role: &Value,
    roles: &[Value],
) -> Option<Result<Vec<Value>, ApiError>> {
    let selectors = match selectors(role)? {
        Ok(selectors) => selectors,
        Err(e) => return Some(Err(e)),
    };
    let own_name = name_of(role);
    let sources: BTreeMap<&str, &Value> = roles
        .iter()
        .filter(|other| name_of(other) != own_name)
        .filter(|other| selectors.iter().any(|s| s.matches(other)))
        .map(|other| (name_of(other), other))
        .collect();
    let mut rules: Vec<Value> = Vec::new();
    let mut seen: Vec<Value> = Vec::new();
    for source in sources.values() {
        for rule in rules_of(source) {
            let key = normalized(&rule);
            if !seen.contains(&key) {
                seen.push(key);
                rules.push(rule);
            }
        }
    }
    Some(Ok(rules))
}

fn same_rules(a: &[Value], b: &[Value]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| normalized(x) == normalized(y))
}

/// Fills in the rules of the aggregated roles among `objects` (the bootstrap policy), so that
/// a fresh server grants them from its first request, before the controller's first pass.
pub(crate) fn fill_in(objects: &mut [(&'static str, Value)]) {
    let roles: Vec<Value> = objects
        .iter()
        .filter(|(resource, _)| *resource == "clusterroles")
        .map(|(_, role)| role.clone())
        .collect();
    for (resource, role) in objects.iter_mut() {
        if *resource == "clusterroles"
            && let Some(Ok(rules)) = aggregated_rules(role, &roles)
        {
            role["rules"] = json!(rules);
        }
    }
}

/// Keeps every aggregated ClusterRole's rules equal to the union of its sources' rules.
pub async fn run(storage: Storage, registry: Registry, shutdown: CancellationToken) {
    let Some(def) = registry.get("rbac.authorization.k8s.io", "v1", "clusterroles") else {
        return;
    };
    repeat_until_cancelled(
        &shutdown,
        Duration::from_millis(200),
        "ClusterRole aggregation",
        || pass(&storage, &def, &shutdown),
    )
    .await;
}

async fn pass(
    storage: &Storage,
    def: &Arc<ResourceDef>,
    shutdown: &CancellationToken,
) -> Result<(), ApiError> {
    let (rv, listed) = list_items(storage, def).await?;
    reconcile_all(storage, def, &listed).await?;
    // The ClusterRoles as of the last event, kept from the watch rather than relisted, so that
    // a change that concerns no aggregated role costs a few selector matches.
    let roles: Mutex<BTreeMap<String, Value>> = Mutex::new(
        listed
            .into_iter()
            .map(|role| (name_of(&role).to_string(), role))
            .collect(),
    );
    follow(storage, def, rv, shutdown, |deleted, role| {
        let snapshot = roles.lock().ok().and_then(|mut roles| {
            let name = name_of(&role).to_string();
            let previous = if deleted {
                roles.remove(&name)
            } else {
                roles.insert(name, role.clone())
            };
            concerns_an_aggregate(&roles, previous.as_ref(), &role)
                .then(|| roles.values().cloned().collect::<Vec<_>>())
        });
        async move {
            match snapshot {
                Some(roles) => reconcile_all(storage, def, &roles).await,
                None => Ok(()),
            }
        }
    })
    .await
}

/// Whether a change from `previous` to `current` may change some aggregated role's rules:
/// it is (or was) an aggregated role itself, or one of its versions is selected by one.
fn concerns_an_aggregate(
    roles: &BTreeMap<String, Value>,
    previous: Option<&Value>,
    current: &Value,
) -> bool {
    let versions: Vec<&Value> = previous.into_iter().chain([current]).collect();
    if versions.iter().any(|v| selectors(v).is_some()) {
        return true;
    }
    roles.values().any(|role| match selectors(role) {
        Some(Ok(selectors)) => selectors
            .iter()
            .any(|s| versions.iter().any(|v| s.matches(v))),
        Some(Err(_)) | None => false,
    })
}

async fn reconcile_all(
    storage: &Storage,
    def: &Arc<ResourceDef>,
    roles: &[Value],
) -> Result<(), ApiError> {
    for role in roles {
        let name = name_of(role);
        let rules = match aggregated_rules(role, roles) {
            None => continue,
            Some(Ok(rules)) => rules,
            Some(Err(e)) => {
                // As upstream, a role with an unparsable selector is left as it is.
                tracing::warn!(clusterrole = name, error = %e, "cannot aggregate");
                continue;
            }
        };
        if same_rules(&rules_of(role), &rules) {
            continue;
        }
        let written = storage
            .update_with(def, None, name, None, false, |current| {
                let mut next = current.clone();
                next["rules"] = json!(rules);
                Ok(next)
            })
            .await;
        match written {
            Ok(_) => tracing::debug!(clusterrole = name, "aggregated rules updated"),
            // Deleted since the list: nothing left to aggregate into.
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(name: &str, labels: Value, rules: Value) -> Value {
        json!({"metadata": {"name": name, "labels": labels}, "rules": rules})
    }

    #[test]
    fn aggregates_in_name_order_without_duplicates() -> Result<(), ApiError> {
        let get = json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]});
        let list = json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]});
        let list_explicit_empty = json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["list"], "resourceNames": []});
        let aggregate = json!({
            "metadata": {"name": "agg", "labels": {"pick": "yes"}},
            "aggregationRule": {"clusterRoleSelectors": [
                {"matchLabels": {"pick": "yes"}},
                {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a"]}]}
            ]},
            "rules": []
        });
        let roles = vec![
            aggregate.clone(),
            role("z", json!({"pick": "yes"}), json!([get, list])),
            role("b", json!({"tier": "a"}), json!([list_explicit_empty])),
            role("c", json!({"tier": "b"}), json!([get])),
        ];
        let rules = aggregated_rules(&aggregate, &roles).ok_or(ApiError::internal("none"))??;
        assert_eq!(rules, vec![list_explicit_empty.clone(), get]);
        assert!(aggregated_rules(&roles[1], &roles).is_none());
        Ok(())
    }

    #[test]
    fn bootstrap_admin_edit_view_aggregate() {
        let objects = crate::rbac::bootstrap_objects();
        let rules = |name: &str| {
            objects
                .iter()
                .find(|(r, o)| *r == "clusterroles" && name_of(o) == name)
                .map(|(_, o)| rules_of(o))
                .unwrap_or_default()
        };
        let view = rules("view");
        let edit = rules("edit");
        let admin = rules("admin");
        assert!(!view.is_empty());
        assert!(view.iter().all(|r| edit.contains(r)));
        assert!(edit.iter().all(|r| admin.contains(r)));
        assert!(admin.len() > edit.len() && edit.len() > view.len());
    }
}
