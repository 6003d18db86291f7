//! Reading a Work's manifests: what each one names, in which order they are applied, and which
//! configuration (update strategy, feedback rules, orphaning) applies to it. Pure functions.

use atoll_api::work::{
    DeleteOption, DeletePropagationPolicy, ManifestConfig, ResourceIdentifier, UpdateStrategyType,
    WorkResourceIdentifier, WorkSpec,
};
use kube::core::GroupVersionKind;
use serde_json::Value;

/// Annotation Atoll stamps on every object it writes: `<work namespace>/<work name>`. With the
/// uids recorded in the AppliedWork it decides whether an object was created by Atoll (so an
/// object created just before a crash, whose uid was never recorded, is still recognised).
pub const ANNOTATION_APPLIED_BY: &str = "work.atoll.io/applied-by";
/// Annotation with a hash of the manifest last applied, so an unchanged, undrifted object
/// costs no write.
pub const ANNOTATION_MANIFEST_HASH: &str = "work.atoll.io/manifest-hash";

/// One manifest, read.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// Index in `spec.workload.manifests`.
    pub ordinal: i64,
    /// The object as the hub has it.
    pub object: Value,
    /// Its group, version and kind.
    pub gvk: GroupVersionKind,
    /// Its namespace as written (may be empty for a namespaced kind: then `default`).
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl Parsed {
    /// The identifier before the kind is resolved to a resource.
    pub fn identifier(&self) -> WorkResourceIdentifier {
        WorkResourceIdentifier {
            ordinal: self.ordinal,
            group: self.gvk.group.clone(),
            version: self.gvk.version.clone(),
            kind: self.gvk.kind.clone(),
            resource: String::new(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// Where it goes in the apply order: CRDs, then Namespaces, then everything else.
    fn rank(&self) -> u8 {
        match (self.gvk.group.as_str(), self.gvk.kind.as_str()) {
            ("apiextensions.k8s.io", "CustomResourceDefinition") => 0,
            ("", "Namespace") => 1,
            _ => 2,
        }
    }
}

/// Reads one manifest; the error says what is missing.
pub fn parse(ordinal: usize, object: &Value) -> Result<Parsed, String> {
    let ordinal = i64::try_from(ordinal).unwrap_or(i64::MAX);
    let api_version = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or("the manifest has no apiVersion")?;
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or("the manifest has no kind")?;
    let metadata = object.get("metadata");
    let name = metadata
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or("the manifest has no metadata.name (generateName is not supported: a Work must name what it owns)")?;
    let namespace = metadata
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let (group, version) = match api_version.split_once('/') {
        Some((group, version)) => (group, version),
        None => ("", api_version),
    };
    Ok(Parsed {
        ordinal,
        object: object.clone(),
        gvk: GroupVersionKind::gvk(group, version, kind),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    })
}

/// The manifests (or why each cannot be read) in apply order: CRDs first, then Namespaces,
/// then the rest, each group in manifest order.
pub fn in_apply_order(spec: &WorkSpec) -> Vec<(usize, Result<Parsed, String>)> {
    let mut all: Vec<(usize, Result<Parsed, String>)> = spec
        .workload
        .manifests
        .iter()
        .enumerate()
        .map(|(i, m)| (i, parse(i, &m.0)))
        .collect();
    all.sort_by_key(|(i, p)| (p.as_ref().map(Parsed::rank).unwrap_or(2), *i));
    all
}

/// The configuration for a resolved resource, if any.
pub fn config_for<'a>(
    spec: &'a WorkSpec,
    id: &WorkResourceIdentifier,
) -> Option<&'a ManifestConfig> {
    spec.manifest_configs
        .iter()
        .find(|c| matches(&c.resource_identifier, id))
}

/// The update strategy for a resource.
pub fn update_strategy(spec: &WorkSpec, id: &WorkResourceIdentifier) -> UpdateStrategyType {
    config_for(spec, id)
        .and_then(|c| c.update_strategy.as_ref())
        .map(|s| s.type_)
        .unwrap_or_default()
}

/// Whether a ResourceIdentifier names this resource (group, plural, namespace and name).
pub fn matches(rule: &ResourceIdentifier, id: &WorkResourceIdentifier) -> bool {
    rule.group == id.group
        && rule.resource == id.resource
        && rule.namespace == id.namespace
        && rule.name == id.name
}

/// Whether the delete option leaves this resource in the member.
pub fn is_orphaned(option: Option<&DeleteOption>, id: &WorkResourceIdentifier) -> bool {
    let Some(option) = option else { return false };
    match option.propagation_policy {
        DeletePropagationPolicy::Foreground => false,
        DeletePropagationPolicy::Orphan => true,
        DeletePropagationPolicy::SelectivelyOrphan => option
            .selectively_orphans
            .as_ref()
            .is_some_and(|s| s.orphaning_rules.iter().any(|r| matches(r, id))),
    }
}

/// Two identifiers name the same object (whatever its ordinal and version).
pub fn same_object(a: &WorkResourceIdentifier, b: &WorkResourceIdentifier) -> bool {
    a.group == b.group && a.kind == b.kind && a.namespace == b.namespace && a.name == b.name
}

/// A stable hash (FNV-1a, 64 bit) of a manifest, as hex.
pub fn hash(value: &Value) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in value.to_string().bytes() {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The object to write: the manifest with its namespace filled in and Atoll's annotations.
pub fn desired(parsed: &Parsed, namespace: Option<&str>, applied_by: &str) -> Value {
    let mut object = parsed.object.clone();
    let manifest_hash = hash(&parsed.object);
    if let Some(map) = object.as_object_mut() {
        let metadata = map
            .entry("metadata")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(metadata) = metadata.as_object_mut() {
            match namespace {
                Some(ns) => {
                    metadata.insert("namespace".into(), Value::String(ns.to_owned()));
                }
                None => {
                    metadata.remove("namespace");
                }
            }
            let annotations = metadata
                .entry("annotations")
                .or_insert_with(|| Value::Object(Default::default()));
            if let Some(annotations) = annotations.as_object_mut() {
                annotations.insert(
                    ANNOTATION_APPLIED_BY.into(),
                    Value::String(applied_by.to_owned()),
                );
                annotations.insert(
                    ANNOTATION_MANIFEST_HASH.into(),
                    Value::String(manifest_hash),
                );
            }
        }
    }
    object
}

/// An annotation of a live object.
pub fn annotation<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object
        .get("metadata")?
        .get("annotations")?
        .get(key)?
        .as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use atoll_api::work::{Manifest, SelectivelyOrphan, WorkloadTemplate};
    use serde_json::json;

    fn spec(manifests: Vec<Value>) -> WorkSpec {
        WorkSpec {
            workload: WorkloadTemplate {
                manifests: manifests.into_iter().map(Manifest).collect(),
            },
            delete_option: None,
            manifest_configs: Vec::new(),
            apply_strategy: None,
        }
    }

    #[test]
    fn crds_and_namespaces_come_first_and_bad_manifests_keep_their_place() {
        let spec = spec(vec![
            json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w", "namespace": "ns"}}),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}}),
            json!({"kind": "Broken"}),
            json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "widgets.example.com"}}),
        ]);
        let order: Vec<usize> = in_apply_order(&spec).iter().map(|(i, _)| *i).collect();
        assert_eq!(order, [3, 1, 0, 2]);
        let parsed = in_apply_order(&spec);
        assert_eq!(
            parsed[3].1.as_ref().err().map(String::as_str),
            Some("the manifest has no apiVersion")
        );
        let widget = parsed[2].1.as_ref().ok().cloned();
        assert_eq!(
            widget.map(|w| (w.gvk.group, w.gvk.version, w.namespace)),
            Some(("example.com".into(), "v1".into(), "ns".into()))
        );
    }

    #[test]
    fn desired_objects_carry_the_namespace_and_atolls_annotations() {
        let parsed = parse(
            0,
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {"a": "1"}}),
        )
        .map_err(|e| e.to_string());
        let Ok(parsed) = parsed else {
            panic!("{parsed:?}")
        };
        let object = desired(&parsed, Some("default"), "atoll-cluster-a/w");
        assert_eq!(object["metadata"]["namespace"], "default");
        assert_eq!(
            annotation(&object, ANNOTATION_APPLIED_BY),
            Some("atoll-cluster-a/w")
        );
        assert_eq!(
            annotation(&object, ANNOTATION_MANIFEST_HASH),
            Some(hash(&parsed.object).as_str())
        );
        let cluster_scoped = desired(&parsed, None, "x/y");
        assert!(cluster_scoped["metadata"].get("namespace").is_none());
    }

    #[test]
    fn orphaning_follows_the_delete_option() {
        let id = WorkResourceIdentifier {
            group: "apps".into(),
            resource: "deployments".into(),
            namespace: "default".into(),
            name: "web".into(),
            ..Default::default()
        };
        assert!(!is_orphaned(None, &id));
        let orphan = DeleteOption {
            propagation_policy: DeletePropagationPolicy::Orphan,
            selectively_orphans: None,
        };
        assert!(is_orphaned(Some(&orphan), &id));
        let selective = DeleteOption {
            propagation_policy: DeletePropagationPolicy::SelectivelyOrphan,
            selectively_orphans: Some(SelectivelyOrphan {
                orphaning_rules: vec![ResourceIdentifier {
                    group: "apps".into(),
                    resource: "deployments".into(),
                    namespace: "default".into(),
                    name: "web".into(),
                }],
            }),
        };
        assert!(is_orphaned(Some(&selective), &id));
        let other = WorkResourceIdentifier {
            name: "api".into(),
            ..id.clone()
        };
        assert!(!is_orphaned(Some(&selective), &other));
    }
}
