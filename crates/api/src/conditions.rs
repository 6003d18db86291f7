//! Status conditions in the upstream `metav1.Condition` shape, and helpers to maintain them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::{Schema, SchemaGenerator, json_schema};

/// `status` of a condition.
pub const TRUE: &str = "True";
/// `status` of a condition.
pub const FALSE: &str = "False";
/// `status` of a condition.
pub const UNKNOWN: &str = "Unknown";

/// The schema of one `metav1.Condition`, with the validation the Kubernetes API types carry.
fn condition_item() -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "description": "A condition: one aspect of the object's current state.",
        "required": ["lastTransitionTime", "message", "reason", "status", "type"],
        "properties": {
            "lastTransitionTime": {
                "type": "string", "format": "date-time",
                "description": "When the condition last changed from one status to another."
            },
            "message": {
                "type": "string", "maxLength": 32768,
                "description": "A human-readable explanation of the transition."
            },
            "observedGeneration": {
                "type": "integer", "format": "int64", "minimum": 0,
                "description": "The .metadata.generation the condition was set for."
            },
            "reason": {
                "type": "string", "minLength": 1, "maxLength": 1024,
                "pattern": "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
                "description": "A CamelCase, machine-readable reason for the last transition."
            },
            "status": {
                "type": "string", "enum": ["True", "False", "Unknown"],
                "description": "True, False or Unknown."
            },
            "type": {
                "type": "string", "maxLength": 316,
                "pattern": "^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
                "description": "The condition's type, in CamelCase or foo.example.com/CamelCase."
            }
        }
    })
}

/// A list of conditions keyed by `type` (`x-kubernetes-list-type: map`), as most kinds declare.
pub fn condition_map(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "description": "The current state, one condition per type.",
        "items": condition_item(),
        "x-kubernetes-list-map-keys": ["type"],
        "x-kubernetes-list-type": "map"
    })
}

/// A plain list of conditions, as the upstream Work API declares its lists.
pub fn condition_list(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "description": "The current state, one condition per type.",
        "items": condition_item()
    })
}

/// Finds a condition by type.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of this type is present with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == TRUE)
}

/// Sets a condition the way `meta.SetStatusCondition` does: `lastTransitionTime` changes only
/// when the status changes, so rewriting an unchanged condition is a no-op. Returns whether
/// anything changed.
pub fn set(conditions: &mut Vec<Condition>, new: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        None => {
            conditions.push(new);
            true
        }
        Some(existing) => {
            let transition = existing.status != new.status;
            let changed = transition
                || existing.reason != new.reason
                || existing.message != new.message
                || existing.observed_generation != new.observed_generation;
            if transition {
                existing.last_transition_time = new.last_transition_time;
            }
            existing.status = new.status;
            existing.reason = new.reason;
            existing.message = new.message;
            existing.observed_generation = new.observed_generation;
            changed
        }
    }
}

/// Builds a condition.
pub fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: Time,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: message.into(),
        observed_generation,
        last_transition_time: now,
    }
}
