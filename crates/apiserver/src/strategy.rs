//! Kind-specific rules: what kube-apiserver's per-kind strategies do on create, update and
//! delete, and their validation, for the built-in kinds served here and custom resources.

use base64::Engine;
use serde_json::{Value, json};

use crate::error::Cause;
use crate::registry::{ResourceDef, crd_storage_version};
use crate::storage::{finalizers, name_of};
use crate::{rules, schema};

fn is(def: &ResourceDef, group: &str, kind: &str) -> bool {
    def.group == group && def.kind == kind
}

/// Secrets carry `stringData` only on the way in: it is folded into `data`, base64-encoded.
fn fold_string_data(obj: &mut Value) {
    let Some(string_data) = obj
        .as_object_mut()
        .and_then(|o| o.remove("stringData"))
        .and_then(|v| v.as_object().cloned())
    else {
        return;
    };
    if !obj.get("data").is_some_and(Value::is_object) {
        obj["data"] = json!({});
    }
    for (k, v) in string_data {
        if let Some(s) = v.as_str() {
            obj["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(s));
        }
    }
}

fn is_binding(def: &ResourceDef) -> bool {
    def.group == crate::rbac::policy::GROUP
        && (def.kind == "RoleBinding" || def.kind == "ClusterRoleBinding")
}

/// A binding's `roleRef` with an omitted or empty `apiGroup` defaulted to
/// `rbac.authorization.k8s.io`, as upstream's v1 defaulting does (`None` when absent).
pub fn defaulted_role_ref(role_ref: Option<&Value>) -> Option<Value> {
    let mut role_ref = role_ref?.clone();
    if let Some(r) = role_ref.as_object_mut()
        && r.get("apiGroup")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
    {
        r.insert("apiGroup".into(), json!(crate::rbac::policy::GROUP));
    }
    Some(role_ref)
}

/// Defaults a binding's `roleRef.apiGroup` in place (decoding defaults it upstream, so every
/// write path, and the escalation check, sees the defaulted value).
pub fn default_role_ref(def: &ResourceDef, obj: &mut Value) {
    if is_binding(def)
        && let Some(o) = obj.as_object_mut()
        && let Some(role_ref) = defaulted_role_ref(o.get("roleRef"))
    {
        o.insert("roleRef".into(), role_ref);
    }
}

/// Fills in what kube-apiserver fills in on create.
pub fn prepare_create(def: &ResourceDef, obj: &mut Value) {
    default_role_ref(def, obj);
    if is(def, "", "Namespace") {
        let fins = obj
            .pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut fins: Vec<Value> = fins;
        if !fins.iter().any(|f| f == "kubernetes") {
            fins.push(json!("kubernetes"));
        }
        obj["spec"] = json!({ "finalizers": fins });
        obj["status"] = json!({ "phase": "Active" });
    } else if is(def, "", "Secret") {
        fold_string_data(obj);
        if obj
            .get("type")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            obj["type"] = json!("Opaque");
        }
    } else if is(def, "apiextensions.k8s.io", "CustomResourceDefinition") {
        let storage = crd_storage_version(obj).cloned();
        obj["status"] = json!({
            "conditions": [],
            "acceptedNames": { "plural": "", "kind": "" },
            "storedVersions": storage.map(|s| vec![s]).unwrap_or_default(),
        });
    } else if def.custom
        && let Some(schema) = &def.schema
    {
        schema::default_and_prune(schema, obj);
    }
}

/// Adjusts an update after the generic rules (immutable metadata, status subresource).
pub fn prepare_update(
    def: &ResourceDef,
    current: &Value,
    mut next: Value,
    subresource: Option<&str>,
) -> Value {
    default_role_ref(def, &mut next);
    if is(def, "", "Namespace") {
        let wanted = next.pointer("/spec/finalizers").cloned();
        match subresource {
            Some("finalize") => {
                let mut out = current.clone();
                out["spec"] = json!({ "finalizers": wanted.unwrap_or_else(|| json!([])) });
                return out;
            }
            _ => {
                // Only /finalize changes spec.finalizers.
                next["spec"] = current.get("spec").cloned().unwrap_or_else(|| json!({}));
            }
        }
    } else if is(def, "", "Secret") {
        fold_string_data(&mut next);
        if next
            .get("type")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            next["type"] = current.get("type").cloned().unwrap_or(json!("Opaque"));
        }
    } else if crate::certificates::is_csr(def) {
        return crate::certificates::prepare_update(current, next, subresource);
    } else if is(def, "apiextensions.k8s.io", "CustomResourceDefinition") {
        if subresource != Some("status") {
            // storedVersions only grows: a new storage version is added to it.
            let mut stored: Vec<Value> = current
                .pointer("/status/storedVersions")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if let Some(storage) = crd_storage_version(&next)
                && !stored.contains(storage)
            {
                stored.push(storage.clone());
            }
            if next.get("status").is_some_and(Value::is_object) {
                next["status"]["storedVersions"] = json!(stored);
            }
        }
    } else if def.custom
        && subresource != Some("status")
        && let Some(schema) = &def.schema
    {
        schema::default_and_prune(schema, &mut next);
    }
    next
}

/// Marks an object whose deletion waits on finalizers (Namespace: the Terminating phase).
pub fn prepare_delete(def: &ResourceDef, obj: &mut Value) {
    if is(def, "", "Namespace") {
        if !obj.get("status").is_some_and(Value::is_object) {
            obj["status"] = json!({});
        }
        obj["status"]["phase"] = json!("Terminating");
    }
}

/// Whether deletion waits even without metadata.finalizers (a Namespace's spec.finalizers).
pub fn holds_deletion(def: &ResourceDef, obj: &Value) -> bool {
    is(def, "", "Namespace")
        && obj
            .pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty())
}

/// Whether an object being deleted has no finalizer left and may go.
pub fn finalizers_done(def: &ResourceDef, obj: &Value) -> bool {
    finalizers(obj).is_empty() && !holds_deletion(def, obj)
}

fn config_key_causes(obj: &Value, field: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    if let Some(map) = obj.get(field).and_then(Value::as_object) {
        for (k, v) in map {
            let valid = !k.is_empty()
                && k.len() <= 253
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !valid {
                causes.push(Cause::invalid(
                    field.to_string(),
                    &json!(k),
                    "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
                ));
            }
            if !v.is_string() {
                causes.push(Cause::invalid(
                    format!("{field}[{k}]"),
                    v,
                    "must be a string",
                ));
            }
        }
    }
    causes
}

/// Kind-specific validation.
pub fn validate(def: &ResourceDef, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    if is(def, "", "ConfigMap") {
        causes.extend(config_key_causes(obj, "data"));
        causes.extend(config_key_causes(obj, "binaryData"));
    } else if is(def, "", "Secret") {
        causes.extend(config_key_causes(obj, "data"));
        if let Some(map) = obj.get("data").and_then(Value::as_object) {
            for (k, v) in map {
                if let Some(s) = v.as_str()
                    && base64::engine::general_purpose::STANDARD.decode(s).is_err()
                {
                    causes.push(Cause::invalid(
                        format!("data[{k}]"),
                        &json!("<secret data>"),
                        "must be base64-encoded",
                    ));
                }
            }
        }
        if let Some(old) = old
            && old.get("type") != obj.get("type")
        {
            causes.push(Cause::invalid(
                "type",
                obj.get("type").unwrap_or(&Value::Null),
                "field is immutable",
            ));
        }
    } else if def.group == "rbac.authorization.k8s.io"
        && (def.kind == "RoleBinding" || def.kind == "ClusterRoleBinding")
    {
        causes.extend(crate::rbac::policy::role_ref_causes(
            def.kind == "ClusterRoleBinding",
            obj.get("roleRef"),
        ));
        if let Some(old) = old
            && defaulted_role_ref(old.get("roleRef")) != obj.get("roleRef").cloned()
        {
            causes.push(Cause::invalid(
                "roleRef",
                obj.get("roleRef").unwrap_or(&Value::Null),
                "cannot change roleRef",
            ));
        }
    } else if crate::certificates::is_csr(def) {
        causes.extend(crate::certificates::validate(obj, old));
    } else if is(def, "apiextensions.k8s.io", "CustomResourceDefinition") {
        causes.extend(validate_crd(obj, old));
    } else if def.custom
        && let Some(schema) = &def.schema
    {
        causes.extend(schema::validate(schema, obj));
        if let Some(compiled) = &def.rules {
            // As upstream: rules would only see a value of the wrong type, so they wait.
            let blocking = causes
                .iter()
                .any(|c| matches!(c.reason, "FieldValueTypeInvalid" | "FieldValueNotSupported"));
            if blocking {
                causes.push(Cause::invalid(
                    "<nil>",
                    &Value::Null,
                    "some validation rules were not checked because the object was invalid; correct the existing errors to complete validation",
                ));
            } else {
                causes.extend(rules::evaluate(schema, compiled, obj, old));
            }
        }
    }
    causes
}

fn validate_crd(obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    let group = obj
        .pointer("/spec/group")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let plural = obj
        .pointer("/spec/names/plural")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let group_errors = crate::validation::dns1123_subdomain(group);
    if old.is_some() {
        // The group is immutable (below), so it is judged once, on create: a CRD an older
        // server stored in a group refused now can still lose its finalizers and go.
    } else if group.is_empty() {
        causes.push(Cause::required("spec.group", ""));
    } else if !group_errors.is_empty() {
        causes.push(Cause::invalid(
            "spec.group",
            &json!(group),
            group_errors.join(","),
        ));
    } else if !group.contains('.') {
        causes.push(Cause::invalid(
            "spec.group",
            &json!(group),
            "should be a domain with at least one dot",
        ));
    } else if crate::registry::is_builtin_group(group) {
        // Upstream serves its own kinds before any CRD's; here a CRD in such a group could
        // only shadow them, so it is refused.
        causes.push(Cause::invalid(
            "spec.group",
            &json!(group),
            "must not be a group the API server serves itself",
        ));
    }
    causes.extend(api_approval_causes(group, obj, old));
    if plural.is_empty() {
        causes.push(Cause::required("spec.names.plural", ""));
    }
    if obj
        .pointer("/spec/names/kind")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        causes.push(Cause::required("spec.names.kind", ""));
    }
    let expected = format!("{plural}.{group}");
    if !group.is_empty() && !plural.is_empty() && name_of(obj) != expected {
        causes.push(Cause::invalid(
            "metadata.name",
            &json!(name_of(obj)),
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    match obj.pointer("/spec/scope").and_then(Value::as_str) {
        Some("Namespaced") | Some("Cluster") => {}
        other => causes.push(Cause::not_supported(
            "spec.scope",
            &json!(other.unwrap_or_default()),
            &["Cluster".to_string(), "Namespaced".to_string()],
        )),
    }
    let versions = obj
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if versions.is_empty() {
        causes.push(Cause::invalid(
            "spec.versions",
            &json!(versions),
            "must have exactly one version marked as storage version",
        ));
    } else {
        let storage = versions
            .iter()
            .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
            .count();
        if storage != 1 {
            causes.push(Cause::invalid(
                "spec.versions",
                &json!(
                    versions
                        .iter()
                        .filter_map(|v| v.get("name"))
                        .collect::<Vec<_>>()
                ),
                "must have exactly one version marked as storage version",
            ));
        }
        for (i, v) in versions.iter().enumerate() {
            if let Some(schema) = v.pointer("/schema/openAPIV3Schema") {
                causes.extend(schema::check_structural(schema).into_iter().map(|mut c| {
                    c.field = format!("spec.versions[{i}].schema.openAPIV3Schema{}", c.field);
                    c
                }));
                let rule_causes = match rules::compile(schema) {
                    Ok(Some(compiled)) => rules::cost_causes(schema, &compiled),
                    Ok(None) => Vec::new(),
                    Err(bad_rules) => bad_rules,
                };
                causes.extend(rule_causes.into_iter().map(|mut c| {
                    c.field = format!("spec.versions[{i}].schema.openAPIV3Schema{}", c.field);
                    c
                }));
            } else {
                causes.push(Cause::required(
                    format!("spec.versions[{i}].schema.openAPIV3Schema"),
                    "schemas are required",
                ));
            }
        }
    }
    if let Some(old) = old {
        // The storage key depends on group, plural and scope.
        for (pointer, field) in [
            ("/spec/group", "spec.group"),
            ("/spec/names/plural", "spec.names.plural"),
            ("/spec/scope", "spec.scope"),
        ] {
            if old.pointer(pointer) != obj.pointer(pointer) {
                causes.push(Cause::invalid(
                    field,
                    obj.pointer(pointer).unwrap_or(&Value::Null),
                    "field is immutable",
                ));
            }
        }
    }
    causes
}

const API_APPROVED: &str = "api-approved.kubernetes.io";

/// Whether a group is one of the community's protected groups (`k8s.io`, `kubernetes.io` and
/// their subdomains), whose CRDs need an API approval annotation.
fn is_protected_community_group(group: &str) -> bool {
    group == "k8s.io"
        || group.ends_with(".k8s.io")
        || group == "kubernetes.io"
        || group.ends_with(".kubernetes.io")
}

#[derive(PartialEq, Eq)]
enum Approval {
    Missing,
    Invalid,
    Approved,
    Bypassed,
}

fn approval_state(crd: &Value) -> Approval {
    let value = crd
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(API_APPROVED))
        .and_then(Value::as_str)
        .unwrap_or_default();
    if value.is_empty() {
        Approval::Missing
    } else if value.starts_with("unapproved") {
        Approval::Bypassed
    } else if is_approval_url(value) {
        Approval::Approved
    } else {
        Approval::Invalid
    }
}

/// Whether an approval annotation is a URL as kube-apiserver accepts one (Go's
/// `url.ParseRequestURI` succeeds with a scheme and a host): `scheme://host...`, the scheme a
/// letter then letters, digits, `+`, `-`, `.`, the host not empty, no control characters.
fn is_approval_url(value: &str) -> bool {
    if value.chars().any(char::is_control) {
        return false;
    }
    let Some((scheme, rest)) = value.split_once("://") else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && !host.is_empty()
        && !host.contains(' ')
}

/// kube-apiserver's API approval check: a CRD in a protected community group needs
/// `api-approved.kubernetes.io` set to a URL or a reason starting with "unapproved"; an update
/// that leaves the approval state as it was passes.
fn api_approval_causes(group: &str, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    if !is_protected_community_group(group) {
        return Vec::new();
    }
    let state = approval_state(obj);
    if old.is_some_and(|old| approval_state(old) == state) {
        return Vec::new();
    }
    let field = format!("metadata.annotations[{API_APPROVED}]");
    match state {
        Approval::Approved | Approval::Bypassed => Vec::new(),
        Approval::Missing => vec![Cause::required(
            field,
            format!(
                "protected groups must have approval annotation {API_APPROVED:?}, see https://github.com/kubernetes/enhancements/pull/1111"
            ),
        )],
        Approval::Invalid => vec![Cause::invalid(
            field,
            obj.pointer("/metadata/annotations")
                .and_then(|a| a.get(API_APPROVED))
                .unwrap_or(&Value::Null),
            format!(
                "protected groups must have approval annotation {API_APPROVED:?} with either a URL or a reason starting with \"unapproved\", see https://github.com/kubernetes/enhancements/pull/1111"
            ),
        )],
    }
}

const OBJECT_META_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

/// The top-level fields of a built-in kind (besides apiVersion, kind and metadata); `None`
/// for kinds whose fields are not checked.
fn builtin_fields(def: &ResourceDef) -> Option<&'static [&'static str]> {
    Some(match (def.group.as_str(), def.kind.as_str()) {
        ("", "ConfigMap") => &["data", "binaryData", "immutable"],
        ("", "Secret") => &["data", "stringData", "type", "immutable"],
        ("", "Namespace") => &["spec", "status"],
        ("", "ServiceAccount") => &[
            "secrets",
            "imagePullSecrets",
            "automountServiceAccountToken",
        ],
        ("", "Event") => &[
            "involvedObject",
            "reason",
            "message",
            "source",
            "firstTimestamp",
            "lastTimestamp",
            "count",
            "type",
            "eventTime",
            "series",
            "action",
            "related",
            "reportingComponent",
            "reportingInstance",
        ],
        ("coordination.k8s.io", "Lease") => &["spec"],
        ("rbac.authorization.k8s.io", "Role") => &["rules"],
        ("rbac.authorization.k8s.io", "ClusterRole") => &["rules", "aggregationRule"],
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            &["subjects", "roleRef"]
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => &["spec", "status"],
        ("certificates.k8s.io", "CertificateSigningRequest") => &["spec", "status"],
        ("discovery.k8s.io", "EndpointSlice") => &["addressType", "endpoints", "ports"],
        _ => return None,
    })
}

/// Fields the kind does not have: top-level fields of built-in kinds and metadata fields of
/// every kind (custom resources' other fields follow their schema).
pub fn unknown_fields(def: &ResourceDef, obj: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(meta) = obj.get("metadata").and_then(Value::as_object) {
        out.extend(
            meta.keys()
                .filter(|k| !OBJECT_META_FIELDS.contains(&k.as_str()))
                .map(|k| format!("metadata.{k}")),
        );
    }
    if let (Some(fields), Some(o)) = (builtin_fields(def), obj.as_object()) {
        out.extend(
            o.keys()
                .filter(|k| {
                    !matches!(k.as_str(), "apiVersion" | "kind" | "metadata")
                        && !fields.contains(&k.as_str())
                })
                .cloned(),
        );
    }
    out
}

/// Drops the fields [`unknown_fields`] reports, as decoding into upstream's types drops them.
pub fn prune_unknown(def: &ResourceDef, obj: &mut Value) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.retain(|k, _| OBJECT_META_FIELDS.contains(&k.as_str()));
    }
    if let (Some(fields), Some(o)) = (builtin_fields(def), obj.as_object_mut()) {
        o.retain(|k, _| {
            matches!(k.as_str(), "apiVersion" | "kind" | "metadata") || fields.contains(&k.as_str())
        });
    }
}
