//! What a Work's status says: per-kind availability, status feedback, and the Work conditions
//! aggregated from the manifest conditions. Pure functions.

use atoll_api::conditions::{self, FALSE, TRUE, UNKNOWN};
use atoll_api::work::{
    CONDITION_APPLIED, CONDITION_AVAILABLE, CONDITION_DEGRADED, CONDITION_PROGRESSING,
    FeedbackRule, FeedbackRuleType, FeedbackValue, FieldValue, FieldValueType, ManifestCondition,
    StatusFeedback,
};
use jsonpath_rust::JsonPath;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::Value;

/// Per-manifest condition: a ReportDiff Work compared the manifest with the member.
pub const CONDITION_DIFF_REPORTED: &str = "DiffReported";

/// A resource's health, as Karmada's health interpretation reads it per kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// `Available`: True, False or Unknown.
    pub available: &'static str,
    /// Why, in one word.
    pub reason: &'static str,
    /// Why, in words.
    pub message: String,
    /// Still rolling out.
    pub progressing: bool,
    /// Failed (a Job that failed).
    pub degraded: bool,
}

fn int(object: &Value, pointer: &str) -> Option<i64> {
    object.pointer(pointer).and_then(Value::as_i64)
}

fn has_condition(object: &Value, type_: &str) -> bool {
    object
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|list| {
            list.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some(type_)
                    && c.get("status").and_then(Value::as_str) == Some(TRUE)
            })
        })
}

/// Availability of a live object of this group and kind.
pub fn health(group: &str, kind: &str, object: &Value) -> Health {
    let generation = int(object, "/metadata/generation").unwrap_or(0);
    let observed = int(object, "/status/observedGeneration").unwrap_or(0);
    let replicas_ready = |desired: i64, ready: i64, what: &str| {
        if observed < generation {
            Health {
                available: FALSE,
                reason: "Progressing",
                message: format!(
                    "the {what} controller has not observed generation {generation} yet"
                ),
                progressing: true,
                degraded: false,
            }
        } else if ready >= desired {
            Health {
                available: TRUE,
                reason: "Available",
                message: format!("{ready}/{desired} replicas available"),
                progressing: false,
                degraded: false,
            }
        } else {
            Health {
                available: FALSE,
                reason: "Progressing",
                message: format!("{ready}/{desired} replicas available"),
                progressing: true,
                degraded: false,
            }
        }
    };
    match (group, kind) {
        ("apps", "Deployment") => replicas_ready(
            int(object, "/spec/replicas").unwrap_or(1),
            int(object, "/status/availableReplicas").unwrap_or(0),
            "deployment",
        ),
        ("apps", "StatefulSet") => replicas_ready(
            int(object, "/spec/replicas").unwrap_or(1),
            int(object, "/status/readyReplicas").unwrap_or(0),
            "statefulset",
        ),
        ("apps", "ReplicaSet") => replicas_ready(
            int(object, "/spec/replicas").unwrap_or(1),
            int(object, "/status/availableReplicas").unwrap_or(0),
            "replicaset",
        ),
        ("apps", "DaemonSet") => replicas_ready(
            int(object, "/status/desiredNumberScheduled").unwrap_or(0),
            int(object, "/status/numberAvailable").unwrap_or(0),
            "daemonset",
        ),
        ("batch", "Job") => {
            if has_condition(object, "Complete") {
                Health {
                    available: TRUE,
                    reason: "Completed",
                    message: "the job completed".into(),
                    progressing: false,
                    degraded: false,
                }
            } else if has_condition(object, "Failed") {
                Health {
                    available: FALSE,
                    reason: "Failed",
                    message: "the job failed".into(),
                    progressing: false,
                    degraded: true,
                }
            } else {
                Health {
                    available: FALSE,
                    reason: "Running",
                    message: format!(
                        "{} active, {} succeeded",
                        int(object, "/status/active").unwrap_or(0),
                        int(object, "/status/succeeded").unwrap_or(0)
                    ),
                    progressing: true,
                    degraded: false,
                }
            }
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            let established = has_condition(object, "Established");
            Health {
                available: if established { TRUE } else { FALSE },
                reason: if established {
                    "Established"
                } else {
                    "NotEstablished"
                },
                message: if established {
                    "the CRD is established".into()
                } else {
                    "the CRD is not established yet".into()
                },
                progressing: !established,
                degraded: false,
            }
        }
        _ => Health {
            available: TRUE,
            reason: "Exists",
            message: "the resource exists".into(),
            progressing: false,
            degraded: false,
        },
    }
}

/// The well-known status values of a kind (OCM's set), each as `(name, JSON pointer)`.
fn well_known(group: &str, kind: &str) -> &'static [(&'static str, &'static str)] {
    match (group, kind) {
        ("apps", "Deployment") => &[
            ("replicas", "/status/replicas"),
            ("readyReplicas", "/status/readyReplicas"),
            ("availableReplicas", "/status/availableReplicas"),
            ("updatedReplicas", "/status/updatedReplicas"),
        ],
        ("apps", "StatefulSet") => &[
            ("replicas", "/status/replicas"),
            ("readyReplicas", "/status/readyReplicas"),
            ("currentReplicas", "/status/currentReplicas"),
            ("updatedReplicas", "/status/updatedReplicas"),
            ("availableReplicas", "/status/availableReplicas"),
        ],
        ("apps", "DaemonSet") => &[
            ("desiredNumberScheduled", "/status/desiredNumberScheduled"),
            ("currentNumberScheduled", "/status/currentNumberScheduled"),
            ("numberReady", "/status/numberReady"),
            ("numberAvailable", "/status/numberAvailable"),
            ("updatedNumberScheduled", "/status/updatedNumberScheduled"),
        ],
        ("batch", "Job") => &[
            ("active", "/status/active"),
            ("succeeded", "/status/succeeded"),
            ("failed", "/status/failed"),
        ],
        _ => &[],
    }
}

/// Typed value, as OCM reports it.
pub fn field_value(value: &Value) -> FieldValue {
    let mut field = FieldValue {
        type_: FieldValueType::JsonRaw,
        integer: None,
        string: None,
        boolean: None,
        json_raw: None,
    };
    match value {
        Value::Number(n) if n.as_i64().is_some() => {
            field.type_ = FieldValueType::Integer;
            field.integer = n.as_i64();
        }
        Value::String(s) => {
            field.type_ = FieldValueType::String;
            field.string = Some(s.clone());
        }
        Value::Bool(b) => {
            field.type_ = FieldValueType::Boolean;
            field.boolean = Some(*b);
        }
        other => field.json_raw = Some(other.to_string()),
    }
    field
}

/// Evaluates a user path. `.status.x` and kubectl's `{.status.x}` are accepted beside `$.status.x`.
pub fn evaluate(object: &Value, path: &str) -> Result<Option<Value>, String> {
    let trimmed = path.trim();
    let trimmed = trimmed
        .strip_prefix('{')
        .and_then(|p| p.strip_suffix('}'))
        .unwrap_or(trimmed);
    let expression = if trimmed.starts_with('$') {
        trimmed.to_owned()
    } else if trimmed.starts_with('.') || trimmed.starts_with('[') {
        format!("${trimmed}")
    } else {
        format!("$.{trimmed}")
    };
    let found = object
        .query(&expression)
        .map_err(|e| format!("invalid JSONPath {path:?}: {e}"))?;
    Ok(match found.as_slice() {
        [] => None,
        [one] => Some((*one).clone()),
        many => Some(Value::Array(many.iter().map(|v| (*v).clone()).collect())),
    })
}

/// The values the rules ask for; errors in user paths are returned beside the values.
pub fn feedback(
    group: &str,
    kind: &str,
    rules: &[FeedbackRule],
    object: &Value,
) -> (Option<StatusFeedback>, Vec<String>) {
    let mut values = Vec::new();
    let mut errors = Vec::new();
    for rule in rules {
        match rule.type_ {
            FeedbackRuleType::WellKnownStatus => {
                for (name, pointer) in well_known(group, kind) {
                    // Kubernetes omits zero counters; report them as 0.
                    let value = object.pointer(pointer).cloned().unwrap_or(Value::from(0));
                    values.push(FeedbackValue {
                        name: (*name).to_owned(),
                        field_value: field_value(&value),
                    });
                }
            }
            FeedbackRuleType::JSONPaths => {
                for path in &rule.json_paths {
                    match evaluate(object, &path.path) {
                        Ok(Some(value)) => values.push(FeedbackValue {
                            name: path.name.clone(),
                            field_value: field_value(&value),
                        }),
                        Ok(None) => {}
                        Err(e) => errors.push(e),
                    }
                }
            }
        }
    }
    let feedback = (!values.is_empty()).then_some(StatusFeedback { values });
    (feedback, errors)
}

/// The Work conditions aggregated from its manifest conditions.
pub fn aggregate(
    previous: &[Condition],
    manifests: &[ManifestCondition],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let total = manifests.len();
    let status_of = |m: &ManifestCondition, t: &str| {
        conditions::find(&m.conditions, t).map(|c| c.status.clone())
    };
    let describe = |m: &ManifestCondition, t: &str| {
        let id = &m.identifier;
        let why = conditions::find(&m.conditions, t)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        let what = if id.kind.is_empty() {
            format!("manifest {}", id.ordinal)
        } else if id.namespace.is_empty() {
            format!("manifest {} ({} {})", id.ordinal, id.kind, id.name)
        } else {
            format!(
                "manifest {} ({} {}/{})",
                id.ordinal, id.kind, id.namespace, id.name
            )
        };
        format!("{what}: {why}")
    };
    let not_applied: Vec<&ManifestCondition> = manifests
        .iter()
        .filter(|m| status_of(m, CONDITION_APPLIED).as_deref() != Some(TRUE))
        .collect();
    let diff_only = manifests
        .iter()
        .all(|m| conditions::find(&m.conditions, CONDITION_DIFF_REPORTED).is_some())
        && total > 0;
    let failed: Vec<&ManifestCondition> = not_applied
        .iter()
        .copied()
        .filter(|m| conditions::find(&m.conditions, CONDITION_DIFF_REPORTED).is_none())
        .collect();
    let (applied, applied_reason, applied_message) = if not_applied.is_empty() {
        (
            TRUE,
            "AppliedManifestWorkComplete",
            format!("all {total} manifests applied"),
        )
    } else if diff_only {
        (
            FALSE,
            "ReportDiff",
            format!(
                "applyStrategy is ReportDiff: nothing is written; {} of {total} manifests differ",
                manifests
                    .iter()
                    .filter(|m| m
                        .diff_details
                        .as_ref()
                        .is_some_and(|d| !d.observed_diffs.is_empty()))
                    .count()
            ),
        )
    } else {
        (
            FALSE,
            "AppliedManifestWorkFailed",
            format!(
                "{} of {total} manifests not applied; {}",
                not_applied.len(),
                not_applied
                    .iter()
                    .take(3)
                    .map(|m| describe(m, CONDITION_APPLIED))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        )
    };
    let unavailable: Vec<&ManifestCondition> = manifests
        .iter()
        .filter(|m| status_of(m, CONDITION_AVAILABLE).as_deref() != Some(TRUE))
        .collect();
    let any_false = unavailable
        .iter()
        .any(|m| status_of(m, CONDITION_AVAILABLE).as_deref() == Some(FALSE));
    let (available, available_reason, available_message) = if unavailable.is_empty() {
        (
            TRUE,
            "ResourcesAvailable",
            format!("all {total} resources are available"),
        )
    } else {
        (
            if any_false { FALSE } else { UNKNOWN },
            if any_false {
                "ResourcesNotAvailable"
            } else {
                "ResourcesStatusUnknown"
            },
            format!(
                "{} of {total} resources not available; {}",
                unavailable.len(),
                unavailable
                    .iter()
                    .take(3)
                    .map(|m| describe(m, CONDITION_AVAILABLE))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        )
    };
    let progressing_count = manifests
        .iter()
        .filter(|m| status_of(m, CONDITION_PROGRESSING).as_deref() == Some(TRUE))
        .count();
    let degraded: Vec<&ManifestCondition> = manifests
        .iter()
        .filter(|m| status_of(m, CONDITION_DEGRADED).as_deref() == Some(TRUE))
        .collect();
    let (degraded_status, degraded_reason, degraded_message) =
        if failed.is_empty() && degraded.is_empty() {
            (FALSE, "AsExpected", "no manifest failed".to_owned())
        } else {
            let mut reasons: Vec<String> = failed
                .iter()
                .take(3)
                .map(|m| describe(m, CONDITION_APPLIED))
                .collect();
            reasons.extend(
                degraded
                    .iter()
                    .take(3)
                    .map(|m| describe(m, CONDITION_DEGRADED)),
            );
            (TRUE, "ManifestsFailed", reasons.join("; "))
        };
    let mut result = previous.to_vec();
    for (type_, status, reason, message) in [
        (CONDITION_APPLIED, applied, applied_reason, applied_message),
        (
            CONDITION_AVAILABLE,
            available,
            available_reason,
            available_message,
        ),
        (
            CONDITION_PROGRESSING,
            if progressing_count > 0 { TRUE } else { FALSE },
            if progressing_count > 0 {
                "RollingOut"
            } else {
                "Settled"
            },
            format!("{progressing_count} of {total} resources rolling out"),
        ),
        (
            CONDITION_DEGRADED,
            degraded_status,
            degraded_reason,
            degraded_message,
        ),
    ] {
        conditions::set(
            &mut result,
            conditions::condition(type_, status, reason, message, generation, now.clone()),
        );
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use atoll_api::work::{JsonPath as Rule, WorkResourceIdentifier};
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    #[test]
    fn deployments_are_available_when_every_replica_is() {
        let rolling = json!({"metadata": {"generation": 2}, "spec": {"replicas": 3},
            "status": {"observedGeneration": 2, "availableReplicas": 2}});
        let h = health("apps", "Deployment", &rolling);
        assert_eq!((h.available, h.progressing), (FALSE, true));
        let done = json!({"metadata": {"generation": 2}, "spec": {"replicas": 3},
            "status": {"observedGeneration": 2, "availableReplicas": 3}});
        assert_eq!(health("apps", "Deployment", &done).available, TRUE);
        let stale = json!({"metadata": {"generation": 3}, "spec": {"replicas": 3},
            "status": {"observedGeneration": 2, "availableReplicas": 3}});
        assert_eq!(health("apps", "Deployment", &stale).available, FALSE);
        let job = json!({"status": {"conditions": [{"type": "Complete", "status": "True"}]}});
        assert_eq!(health("batch", "Job", &job).available, TRUE);
        let failed = json!({"status": {"conditions": [{"type": "Failed", "status": "True"}]}});
        assert!(health("batch", "Job", &failed).degraded);
        assert_eq!(health("", "ConfigMap", &json!({})).available, TRUE);
    }

    #[test]
    fn feedback_reports_well_known_values_and_json_paths() {
        let deployment = json!({"spec": {"template": {"spec": {"containers": [{"image": "nginx:1"}]}}},
            "status": {"replicas": 2, "readyReplicas": 1, "conditions": [{"type": "Available", "status": "True"}]}});
        let rules = vec![
            FeedbackRule {
                type_: FeedbackRuleType::WellKnownStatus,
                json_paths: vec![],
            },
            FeedbackRule {
                type_: FeedbackRuleType::JSONPaths,
                json_paths: vec![
                    Rule {
                        name: "image".into(),
                        path: ".spec.template.spec.containers[0].image".into(),
                    },
                    Rule {
                        name: "available".into(),
                        path: "{.status.conditions[?(@.type=='Available')].status}".into(),
                    },
                    Rule {
                        name: "missing".into(),
                        path: ".status.nothing".into(),
                    },
                    Rule {
                        name: "bad".into(),
                        path: "$[".into(),
                    },
                ],
            },
        ];
        let (feedback, errors) = feedback("apps", "Deployment", &rules, &deployment);
        let values = feedback.map(|f| f.values).unwrap_or_default();
        let get = |name: &str| {
            values
                .iter()
                .find(|v| v.name == name)
                .map(|v| v.field_value.clone())
        };
        assert_eq!(get("replicas").and_then(|v| v.integer), Some(2));
        assert_eq!(get("availableReplicas").and_then(|v| v.integer), Some(0));
        assert_eq!(get("image").and_then(|v| v.string), Some("nginx:1".into()));
        assert_eq!(get("available").and_then(|v| v.string), Some("True".into()));
        assert_eq!(get("missing"), None);
        assert_eq!(errors.len(), 1, "{errors:?}");
    }

    fn manifest(ordinal: i64, applied: &str, available: &str) -> ManifestCondition {
        let now = Time(Timestamp::UNIX_EPOCH);
        ManifestCondition {
            identifier: WorkResourceIdentifier {
                ordinal,
                kind: "ConfigMap".into(),
                name: format!("cm{ordinal}"),
                ..Default::default()
            },
            conditions: vec![
                conditions::condition(
                    CONDITION_APPLIED,
                    applied,
                    "R",
                    "applied msg",
                    None,
                    now.clone(),
                ),
                conditions::condition(
                    CONDITION_AVAILABLE,
                    available,
                    "R",
                    "available msg",
                    None,
                    now,
                ),
            ],
            status_feedback: None,
            drift_details: None,
            diff_details: None,
        }
    }

    #[test]
    fn work_conditions_aggregate_the_manifests() {
        let now = Time(Timestamp::UNIX_EPOCH);
        let good = aggregate(
            &[],
            &[manifest(0, TRUE, TRUE), manifest(1, TRUE, TRUE)],
            Some(1),
            &now,
        );
        assert!(conditions::is_true(&good, CONDITION_APPLIED));
        assert!(conditions::is_true(&good, CONDITION_AVAILABLE));
        assert!(!conditions::is_true(&good, CONDITION_DEGRADED));
        let bad = aggregate(
            &good,
            &[manifest(0, TRUE, TRUE), manifest(1, FALSE, UNKNOWN)],
            Some(2),
            &now,
        );
        let applied = conditions::find(&bad, CONDITION_APPLIED).cloned();
        assert_eq!(applied.as_ref().map(|c| c.status.as_str()), Some(FALSE));
        assert!(applied.is_some_and(|c| {
            c.message
                .contains("manifest 1 (ConfigMap cm1): applied msg")
        }));
        assert_eq!(
            conditions::find(&bad, CONDITION_AVAILABLE).map(|c| c.status.as_str()),
            Some(UNKNOWN)
        );
        assert!(conditions::is_true(&bad, CONDITION_DEGRADED));
    }
}
