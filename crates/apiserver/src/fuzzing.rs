//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz) and for the tests that replay
//! their committed corpora (`tests/fuzz_corpus.rs`). This module exists for them only: it is
//! not an API and changes with the targets.
//!
//! Each function takes the raw bytes of one input, runs them through the code the server runs
//! on a request, and says whether the input was accepted or refused. Refusals must be the
//! client errors a request would get (400, 413, 415, 422), never an internal error:
//! `Err(Broken)` reports a broken invariant, and the fuzz targets panic on it.

use serde_json::{Deserializer, Value, json};

use crate::error::ApiError;
use crate::selector::LabelSelector;
use crate::server::fuzzing as hooks;

/// What the server did with an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Decoded, applied, parsed or evaluated.
    Accepted,
    /// Refused with a client error.
    Refused,
}

/// An invariant the input broke: a bug, whatever the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken(pub String);

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Status codes a refused request body, patch or query may get.
const CLIENT_ERRORS: [u16; 4] = [400, 413, 415, 422];

fn refused(what: &str, e: &ApiError) -> Result<Verdict, Broken> {
    if CLIENT_ERRORS.contains(&e.code) {
        Ok(Verdict::Refused)
    } else {
        Err(Broken(format!(
            "{what} answered {} {}: {}",
            e.code, e.reason, e.message
        )))
    }
}

/// A create or update body: protobuf when it starts with the `k8s\0` envelope (as client-go
/// sends it), otherwise JSON or YAML; and the same bytes as a delete body (DeleteOptions).
pub fn body(data: &[u8]) -> Result<Verdict, Broken> {
    let content_type = if crate::protobuf::is_protobuf(data) {
        "application/vnd.kubernetes.protobuf"
    } else {
        "application/json"
    };
    if let Err(e) = hooks::decode_delete_options(data) {
        refused("a delete body", &e)?;
    }
    match hooks::decode_body(content_type, data) {
        Ok(obj) => serde_json::to_vec(&obj)
            .map(|_| Verdict::Accepted)
            .map_err(|e| Broken(format!("a decoded body does not encode: {e}"))),
        Err(e) => refused("a body", &e),
    }
}

/// The object patches are applied to: a ConfigMap with lists and maps at several depths.
fn patched_object() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "settings",
            "namespace": "default",
            "uid": "0c6b8a52-3f5e-4c61-9a57-7d7e9f3c2a10",
            "resourceVersion": "42",
            "creationTimestamp": "2024-01-01T00:00:00Z",
            "labels": {"app": "web", "tier": "front"},
            "annotations": {"example.com/note": "a/b~c"},
            "finalizers": ["example.com/keep"],
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                "uid": "5b1f0c9e-1111-2222-3333-444455556666", "controller": true
            }]
        },
        "data": {"a": "1", "b": "two", "nested.key": "x"},
        "binaryData": {"blob": "AAEC"}
    })
}

/// A patch: the first byte picks the patch type (`j` JSON patch, `m` merge, `s` strategic
/// merge, `a` apply; any other byte picks by its value), the rest is the body, applied to a
/// ConfigMap as the patch handler applies it.
pub fn patch(data: &[u8]) -> Result<Verdict, Broken> {
    const TYPES: [&str; 4] = [
        "application/json-patch+json",
        "application/merge-patch+json",
        "application/strategic-merge-patch+json",
        "application/apply-patch+yaml",
    ];
    let Some((&selector, body)) = data.split_first() else {
        return Ok(Verdict::Refused);
    };
    let content_type = match selector {
        b'j' => TYPES[0],
        b'm' => TYPES[1],
        b's' => TYPES[2],
        b'a' => TYPES[3],
        other => TYPES[usize::from(other) % TYPES.len()],
    };
    match hooks::patch(&patched_object(), content_type, body) {
        Ok(patched) => serde_json::to_vec(&patched)
            .map(|_| Verdict::Accepted)
            .map_err(|e| Broken(format!("a patched object does not encode: {e}"))),
        // kube-apiserver's own answers to strategic merge patches it cannot apply: a 500 with
        // no reason (its plain errors), or its panic Status where its Go code panics. Both are
        // typed engine errors, not failures of the server.
        Err(e)
            if content_type == TYPES[2]
                && e.code == 500
                && (e.reason.is_empty() || e.message == crate::server::PANIC_MESSAGE) =>
        {
            Ok(Verdict::Refused)
        }
        Err(e) => refused("a patch", &e),
    }
}

/// Objects selectors are matched against.
fn selected_objects() -> [Value; 3] {
    [
        json!({"metadata": {"name": "a", "namespace": "default",
            "labels": {"app": "web", "tier": "front", "example.com/role": "db"}}}),
        json!({"metadata": {"name": "b", "namespace": "kube-system", "labels": {}}}),
        json!({"metadata": {"name": "c"}}),
    ]
}

/// Label and field selectors: the first line is a list's raw query string (`labelSelector`,
/// `fieldSelector`, `limit`... URL-encoded, as kubectl sends them); the rest, when there is
/// a rest, is a structured `metav1.LabelSelector` in JSON (`matchLabels`, `matchExpressions`).
/// What parses is matched against a few objects.
pub fn selectors(data: &[u8]) -> Result<Verdict, Broken> {
    let Ok(text) = std::str::from_utf8(data) else {
        return Ok(Verdict::Refused);
    };
    let (query, structured) = text.split_once('\n').unwrap_or((text, ""));
    let objects = selected_objects();
    let mut verdict = match hooks::list_query(query) {
        Ok(options) => {
            for obj in &objects {
                options.label_selector.matches(obj);
                options.field_selector.matches(obj);
            }
            options.field_selector.pinned_name();
            Verdict::Accepted
        }
        Err(e) => refused("a list query", &e)?,
    };
    if let Ok(selector) = serde_json::from_str::<Value>(structured) {
        match LabelSelector::from_structured(&selector) {
            Ok(selector) => {
                for obj in &objects {
                    selector.matches(obj);
                }
            }
            Err(e) => verdict = refused("a structured selector", &e)?,
        }
    }
    Ok(verdict)
}

/// The schema CEL rules are compiled in: the fuzzed rule (and message expression) at the
/// root, fixed rules below, so the walk reaches nested values, map-lists and maps.
fn rule_schema(rule: &str, message_expression: &str) -> Value {
    let mut root_rule = json!({"rule": rule});
    if !message_expression.is_empty() {
        root_rule["messageExpression"] = json!(message_expression);
    }
    json!({
        "type": "object",
        "x-kubernetes-validations": [root_rule],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": {
                "type": "object",
                "x-kubernetes-validations": [
                    {"rule": "!has(self.min) || !has(self.max) || self.min <= self.max",
                     "message": "min must not exceed max"},
                    {"rule": "self.tags.all(t, t.size() < 64)", "fieldPath": ".tags",
                     "reason": "FieldValueForbidden"}
                ],
                "properties": {
                    "min": {"type": "integer"},
                    "max": {"type": "integer"},
                    "ratio": {"type": "number"},
                    "enabled": {"type": "boolean"},
                    "owner": {"type": "string", "x-kubernetes-validations": [
                        {"rule": "self == oldSelf", "message": "owner is immutable"}
                    ]},
                    "tags": {"type": "array", "x-kubernetes-list-type": "set",
                        "items": {"type": "string"}},
                    "labels": {"type": "object",
                        "additionalProperties": {"type": "string", "x-kubernetes-validations": [
                            {"rule": "self.matches('^[a-z0-9-]*$')",
                             "messageExpression": "'bad label value ' + self"}
                        ]}},
                    "ports": {"type": "array", "x-kubernetes-list-type": "map",
                        "x-kubernetes-list-map-keys": ["name"],
                        "items": {"type": "object",
                            "x-kubernetes-validations": [
                                {"rule": "self.number == oldSelf.number",
                                 "message": "number is immutable"},
                                {"rule": "self.number > 0 && self.number < 65536",
                                 "reason": "FieldValueInvalid"}
                            ],
                            "properties": {"name": {"type": "string"},
                                "number": {"type": "integer"}}}},
                    "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
                }
            }
        }
    })
}

/// A CRD rule: the first line is the rule, the second its `messageExpression` (empty for
/// none); the rest holds one or two JSON values, the object and, for an update, the old
/// object. The rule is compiled into a CRD schema as a CRD's rules are; when it compiles, the
/// schema's rules are evaluated on the object as on a create or update.
pub fn cel_rules(data: &[u8]) -> Result<Verdict, Broken> {
    let Ok(text) = std::str::from_utf8(data) else {
        return Ok(Verdict::Refused);
    };
    let mut lines = text.splitn(3, '\n');
    let rule = lines.next().unwrap_or_default();
    let message_expression = lines.next().unwrap_or_default();
    let rest = lines.next().unwrap_or_default();
    let mut values = Deserializer::from_str(rest).into_iter::<Value>();
    let obj = match values.next() {
        Some(Ok(obj)) => obj,
        _ => json!({}),
    };
    let old = values.next().and_then(Result::ok);
    let schema = rule_schema(rule, message_expression);
    match crate::rules::compile(&schema) {
        Ok(Some(rules)) => {
            crate::rules::evaluate(&schema, &rules, &obj, old.as_ref());
            Ok(Verdict::Accepted)
        }
        Ok(None) => Err(Broken("a schema with rules compiled to no rules".into())),
        Err(causes) if causes.is_empty() => {
            Err(Broken("a rule was refused without a cause".into()))
        }
        Err(_) => Ok(Verdict::Refused),
    }
}
