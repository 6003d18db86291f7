//! What the server serves: one [`ResourceDef`] per (group, version, resource), the built-in kinds
//! and those CustomResourceDefinitions add at run time.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde_json::Value;

use crate::storage::string_list;

/// A resource qualified by its group, printed as kube-apiserver prints it (`leases.coordination.k8s.io`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupResource {
    /// The API group; empty for core.
    pub group: String,
    /// The plural resource name.
    pub resource: String,
}

impl GroupResource {
    /// A group resource.
    pub fn new(group: &str, resource: &str) -> GroupResource {
        GroupResource {
            group: group.to_string(),
            resource: resource.to_string(),
        }
    }
}

impl std::fmt::Display for GroupResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.group.is_empty() {
            f.write_str(&self.resource)
        } else {
            write!(f, "{}.{}", self.resource, self.group)
        }
    }
}

/// How object names are validated, per kind, as kube-apiserver validates them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 subdomain (most kinds).
    Subdomain,
    /// RFC 1123 label (Namespace).
    Label,
    /// Any path segment (the RBAC kinds): not `.` or `..`, no `/` or `%`.
    PathSegment,
}

/// A column of `kubectl get` output.
#[derive(Debug, Clone, PartialEq)]
pub struct PrinterColumn {
    /// The header.
    pub name: String,
    /// The OpenAPI type: string, integer, number, boolean, date.
    pub type_: String,
    /// A simple JSONPath into the object, such as `.spec.replicas`.
    pub json_path: String,
    /// Priority 0 columns are shown by default; others only with `-o wide`.
    pub priority: i64,
    /// Column help text.
    pub description: String,
}

/// One served (group, version, resource).
#[derive(Debug, Clone)]
pub struct ResourceDef {
    /// The API group; empty for core.
    pub group: String,
    /// This served version.
    pub version: String,
    /// The version objects are stored as.
    pub storage_version: String,
    /// The plural name, such as `configmaps`.
    pub resource: String,
    /// The singular name.
    pub singular: String,
    /// The kind.
    pub kind: String,
    /// The list kind.
    pub list_kind: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Short names for kubectl.
    pub short_names: Vec<String>,
    /// Categories for kubectl (`all`).
    pub categories: Vec<String>,
    /// Whether `/status` is a subresource: the main resource then never writes status, and
    /// `/status` writes nothing else.
    pub status_subresource: bool,
    /// Whether metadata.generation is kept (bumped on changes outside metadata and status).
    pub tracks_generation: bool,
    /// How names are validated.
    pub name_rule: NameRule,
    /// Whether this is a custom resource (served from a CRD).
    pub custom: bool,
    /// A review kind (SubjectAccessReview, SelfSubjectReview...): create-only, answered and
    /// never stored.
    pub review: bool,
    /// The OpenAPI v3 schema of a custom resource version, when it has one.
    pub schema: Option<Value>,
    /// The schema's CEL rules (`x-kubernetes-validations`), compiled once when the CRD's
    /// kinds start being served; `None` when it has none.
    pub rules: Option<std::sync::Arc<crate::rules::RuleNode>>,
    /// Extra `kubectl get` columns after NAME.
    pub printer_columns: Vec<PrinterColumn>,
}

impl ResourceDef {
    /// The group and resource.
    pub fn group_resource(&self) -> GroupResource {
        GroupResource::new(&self.group, &self.resource)
    }

    /// `apiVersion` for this version: `v1` or `group/v1`.
    pub fn api_version(&self) -> String {
        api_version(&self.group, &self.version)
    }

    /// The key prefix for every object of this resource.
    pub fn key_prefix(&self) -> String {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        format!("/registry/{group}/{}/", self.resource)
    }

    /// The key prefix for the objects of one namespace (or all, for `None`).
    pub fn list_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/", self.key_prefix()),
            _ => self.key_prefix(),
        }
    }

    /// The key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/{name}", self.key_prefix()),
            _ => format!("{}{name}", self.key_prefix()),
        }
    }

    /// The verbs discovery advertises.
    pub fn verbs(&self) -> Vec<&'static str> {
        if self.review {
            return vec!["create"];
        }
        vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }
}

/// `v1` or `group/v1`.
pub fn api_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

struct Builtin {
    group: &'static str,
    version: &'static str,
    resource: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    status: bool,
    name_rule: NameRule,
}

const BUILTINS: &[Builtin] = &[
    Builtin {
        group: "authorization.k8s.io",
        version: "v1",
        resource: "selfsubjectaccessreviews",
        singular: "selfsubjectaccessreview",
        kind: "SelfSubjectAccessReview",
        namespaced: false,
        short_names: &[],
        status: false,
        name_rule: NameRule::PathSegment,
    },
    Builtin {
        group: "authorization.k8s.io",
        version: "v1",
        resource: "subjectaccessreviews",
        singular: "subjectaccessreview",
        kind: "SubjectAccessReview",
        namespaced: false,
        short_names: &[],
        status: false,
        name_rule: NameRule::PathSegment,
    },
    Builtin {
        group: "authentication.k8s.io",
        version: "v1",
        resource: "selfsubjectreviews",
        singular: "selfsubjectreview",
        kind: "SelfSubjectReview",
        namespaced: false,
        short_names: &[],
        status: false,
        name_rule: NameRule::PathSegment,
    },
    Builtin {
        group: "",
        version: "v1",
        resource: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        namespaced: false,
        short_names: &["ns"],
        status: true,
        name_rule: NameRule::Label,
    },
    Builtin {
        group: "",
        version: "v1",
        resource: "configmaps",
        singular: "configmap",
        kind: "ConfigMap",
        namespaced: true,
        short_names: &["cm"],
        status: false,
        name_rule: NameRule::Subdomain,
    },
    Builtin {
        group: "",
        version: "v1",
        resource: "secrets",
        singular: "secret",
        kind: "Secret",
        namespaced: true,
        short_names: &[],
        status: false,
        name_rule: NameRule::Subdomain,
    },
    Builtin {
        group: "",
        version: "v1",
        resource: "serviceaccounts",
        singular: "serviceaccount",
        kind: "ServiceAccount",
        namespaced: true,
        short_names: &["sa"],
        status: false,
        name_rule: NameRule::Subdomain,
    },
    Builtin {
        group: "",
        version: "v1",
        resource: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        short_names: &["ev"],
        status: false,
        name_rule: NameRule::Subdomain,
    },
    Builtin {
        group: "coordination.k8s.io",
        version: "v1",
        resource: "leases",
        singular: "lease",
        kind: "Lease",
        namespaced: true,
        short_names: &[],
        status: false,
        name_rule: NameRule::Subdomain,
    },
    Builtin {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        resource: "roles",
        singular: "role",
        kind: "Role",
        namespaced: true,
        short_names: &[],
        status: false,
        name_rule: NameRule::PathSegment,
    },
    Builtin {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        resource: "rolebindings",
        singular: "rolebinding",
        kind: "RoleBinding",
        namespaced: true,
        short_names: &[],
        status: false,
        name_rule: NameRule::PathSegment,
    },
    Builtin {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        resource: "clusterroles",
        singular: "clusterrole",
        kind: "ClusterRole",
        namespaced: false,
        short_names: &[],
        status: false,
        name_rule: NameRule::PathSegment,
    },
    Builtin {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        resource: "clusterrolebindings",
        singular: "clusterrolebinding",
        kind: "ClusterRoleBinding",
        namespaced: false,
        short_names: &[],
        status: false,
        name_rule: NameRule::PathSegment,
    },
    // Multi-Cluster Services keep the EndpointSlices they publish and import in the hub's
    // cluster namespaces.
    Builtin {
        group: "discovery.k8s.io",
        version: "v1",
        resource: "endpointslices",
        singular: "endpointslice",
        kind: "EndpointSlice",
        namespaced: true,
        short_names: &[],
        status: false,
        name_rule: NameRule::Subdomain,
    },
    Builtin {
        group: "certificates.k8s.io",
        version: "v1",
        resource: "certificatesigningrequests",
        singular: "certificatesigningrequest",
        kind: "CertificateSigningRequest",
        namespaced: false,
        short_names: &["csr"],
        status: true,
        name_rule: NameRule::PathSegment,
    },
    Builtin {
        group: "apiextensions.k8s.io",
        version: "v1",
        resource: "customresourcedefinitions",
        singular: "customresourcedefinition",
        kind: "CustomResourceDefinition",
        namespaced: false,
        short_names: &["crd", "crds"],
        status: true,
        name_rule: NameRule::Subdomain,
    },
];

fn builtin_def(b: &Builtin) -> ResourceDef {
    ResourceDef {
        group: b.group.to_string(),
        version: b.version.to_string(),
        storage_version: b.version.to_string(),
        resource: b.resource.to_string(),
        singular: b.singular.to_string(),
        kind: b.kind.to_string(),
        list_kind: format!("{}List", b.kind),
        namespaced: b.namespaced,
        short_names: b.short_names.iter().map(|s| s.to_string()).collect(),
        categories: Vec::new(),
        status_subresource: b.status,
        // kube-apiserver keeps metadata.generation for CRDs (and custom resources), not for
        // the other built-in kinds served here.
        tracks_generation: b.kind == "CustomResourceDefinition",
        name_rule: b.name_rule,
        custom: false,
        review: matches!(b.group, "authorization.k8s.io" | "authentication.k8s.io"),
        schema: None,
        rules: None,
        printer_columns: Vec::new(),
    }
}

/// Kubernetes version priority: GA before beta before alpha, higher numbers first, and any
/// other string last in lexical order.
pub fn version_priority_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn parse(v: &str) -> Option<(u64, u8, u64)> {
        let rest = v.strip_prefix('v')?;
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        let major: u64 = digits.parse().ok()?;
        let tail = &rest[digits.len()..];
        if tail.is_empty() {
            return Some((major, 2, 0));
        }
        let (stage, n) = if let Some(n) = tail.strip_prefix("beta") {
            (1, n)
        } else if let Some(n) = tail.strip_prefix("alpha") {
            (0, n)
        } else {
            return None;
        };
        let minor: u64 = n.parse().ok()?;
        Some((major, stage, minor))
    }
    match (parse(a), parse(b)) {
        (Some((ma, sa, na)), Some((mb, sb, nb))) => {
            // Higher priority sorts first.
            sb.cmp(&sa).then(mb.cmp(&ma)).then(nb.cmp(&na))
        }
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

#[derive(Default)]
struct Inner {
    /// group -> version -> resource -> def.
    groups: BTreeMap<String, BTreeMap<String, BTreeMap<String, Arc<ResourceDef>>>>,
    /// CRD name -> the (group, version, resource)s it added.
    by_crd: BTreeMap<String, Vec<(String, String, String)>>,
}

/// Every served resource; built-ins at start, custom resources as CRDs come and go.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<RwLock<Inner>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl Registry {
    /// A registry holding the built-in kinds.
    pub fn new() -> Registry {
        let mut inner = Inner::default();
        for b in BUILTINS {
            let def = Arc::new(builtin_def(b));
            inner
                .groups
                .entry(def.group.clone())
                .or_default()
                .entry(def.version.clone())
                .or_default()
                .insert(def.resource.clone(), def);
        }
        Registry {
            inner: Arc::new(RwLock::new(inner)),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The definition of (group, version, resource).
    pub fn get(&self, group: &str, version: &str, resource: &str) -> Option<Arc<ResourceDef>> {
        self.read()
            .groups
            .get(group)?
            .get(version)?
            .get(resource)
            .cloned()
    }

    /// Any served version of a group resource (the storage version when served).
    pub fn get_any_version(&self, group: &str, resource: &str) -> Option<Arc<ResourceDef>> {
        let inner = self.read();
        let versions = inner.groups.get(group)?;
        let mut found: Option<Arc<ResourceDef>> = None;
        for defs in versions.values() {
            if let Some(def) = defs.get(resource) {
                if def.version == def.storage_version {
                    return Some(def.clone());
                }
                found.get_or_insert_with(|| def.clone());
            }
        }
        found
    }

    /// Whether a group/version is served.
    pub fn has_group_version(&self, group: &str, version: &str) -> bool {
        self.read()
            .groups
            .get(group)
            .is_some_and(|v| v.contains_key(version))
    }

    /// Served groups (core first as ""), each with versions in priority order.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let inner = self.read();
        let mut out: Vec<(String, Vec<String>)> = inner
            .groups
            .iter()
            .map(|(g, versions)| {
                let mut v: Vec<String> = versions.keys().cloned().collect();
                v.sort_by(|a, b| version_priority_cmp(a, b));
                (g.clone(), v)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The resources of one group version.
    pub fn resources(&self, group: &str, version: &str) -> Vec<Arc<ResourceDef>> {
        self.read()
            .groups
            .get(group)
            .and_then(|v| v.get(version))
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Every served definition.
    pub fn all(&self) -> Vec<Arc<ResourceDef>> {
        let inner = self.read();
        inner
            .groups
            .values()
            .flat_map(|v| v.values())
            .flat_map(|r| r.values().cloned())
            .collect()
    }

    /// Serves (or re-serves) the versions of one CRD, replacing what it served before; a
    /// version that would replace a built-in definition, or another CRD's, is left out.
    pub fn set_crd(&self, crd_name: &str, defs: Vec<ResourceDef>) {
        let mut inner = self.write();
        remove_crd(&mut inner, crd_name);
        let mut added = Vec::new();
        for def in defs {
            let taken = inner
                .groups
                .get(&def.group)
                .and_then(|versions| versions.get(&def.version))
                .is_some_and(|resources| resources.contains_key(&def.resource));
            if !def.custom || taken || is_builtin_group(&def.group) {
                tracing::warn!(crd = %crd_name, group = %def.group, resource = %def.resource, "a CRD's version that would replace a served definition is not served");
                continue;
            }
            added.push((def.group.clone(), def.version.clone(), def.resource.clone()));
            inner
                .groups
                .entry(def.group.clone())
                .or_default()
                .entry(def.version.clone())
                .or_default()
                .insert(def.resource.clone(), Arc::new(def));
        }
        inner.by_crd.insert(crd_name.to_string(), added);
    }

    /// The CRDs currently served.
    pub fn crd_names(&self) -> Vec<String> {
        self.read().by_crd.keys().cloned().collect()
    }

    /// Stops serving a CRD's kinds.
    pub fn remove_crd(&self, crd_name: &str) {
        let mut inner = self.write();
        remove_crd(&mut inner, crd_name);
    }
}

fn remove_crd(inner: &mut Inner, crd_name: &str) {
    let Some(added) = inner.by_crd.remove(crd_name) else {
        return;
    };
    for (group, version, resource) in added {
        if let Some(versions) = inner.groups.get_mut(&group) {
            if let Some(resources) = versions.get_mut(&version) {
                resources.remove(&resource);
                if resources.is_empty() {
                    versions.remove(&version);
                }
            }
            if versions.is_empty() {
                inner.groups.remove(&group);
            }
        }
    }
}

/// The name of a CRD's storage version (the first version marked `storage: true`).
pub fn crd_storage_version(crd: &Value) -> Option<&Value> {
    crd.pointer("/spec/versions")
        .and_then(Value::as_array)
        .and_then(|vs| {
            vs.iter()
                .find(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        })
        .and_then(|v| v.get("name"))
}

/// Whether `group` is one the server serves itself (`""`, stored as `core`, or a built-in
/// group such as `rbac.authorization.k8s.io`).
pub fn is_builtin_group(group: &str) -> bool {
    group.is_empty() || group == "core" || BUILTINS.iter().any(|b| b.group == group)
}

/// Whether a CRD of `group` and `plural` may be served: the group is a DNS subdomain with a
/// dot that the server does not serve itself, the plural a DNS label. Custom resources are
/// stored under `/registry/<group>/<plural>/`, so this is what keeps their keys apart from
/// every built-in kind's (`/registry/core/...` and the built-in groups'): a CRD that fails it
/// (one stored by an older server that did not check) is never served, and deleting it deletes
/// no objects.
pub fn crd_may_be_served(group: &str, plural: &str) -> bool {
    group.contains('.')
        && !is_builtin_group(group)
        && crate::validation::dns1123_subdomain(group).is_empty()
        && crate::validation::dns1123_label(plural).is_empty()
}

/// The resource definitions a CRD serves (one per served version), or `None` when the CRD is
/// malformed or may not be served ([`crd_may_be_served`]).
pub fn defs_from_crd(crd: &Value) -> Option<Vec<ResourceDef>> {
    let spec = crd.get("spec")?;
    let group = spec.get("group")?.as_str()?.to_string();
    let names = spec.get("names")?;
    let plural = names.get("plural")?.as_str()?.to_string();
    if !crd_may_be_served(&group, &plural) {
        return None;
    }
    let kind = names.get("kind")?.as_str()?.to_string();
    let singular = names
        .get("singular")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_lowercase());
    let list_kind = names
        .get("listKind")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| format!("{kind}List"));
    let short_names = string_list(names.get("shortNames"));
    let categories = string_list(names.get("categories"));
    let namespaced = spec.get("scope").and_then(Value::as_str) != Some("Cluster");
    let versions = spec.get("versions")?.as_array()?;
    let storage_version = crd_storage_version(crd)
        .and_then(Value::as_str)?
        .to_string();
    let mut defs = Vec::new();
    for v in versions {
        if v.get("served").and_then(Value::as_bool) != Some(true) {
            continue;
        }
        let version = v.get("name")?.as_str()?.to_string();
        let status_subresource = v
            .get("subresources")
            .and_then(|s| s.get("status"))
            .is_some();
        let schema = v
            .get("schema")
            .and_then(|s| s.get("openAPIV3Schema"))
            .cloned();
        // The CRD's own validation refused rules that do not compile; one that still does
        // not (a CRD stored before rules were checked) is left out rather than failing all.
        let rules = match schema.as_ref().map(crate::rules::compile) {
            Some(Ok(rules)) => rules,
            Some(Err(causes)) => {
                tracing::warn!(crd = %format!("{plural}.{group}"), ?causes, "CEL rules that do not compile are ignored");
                None
            }
            None => None,
        };
        let printer_columns = v
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .map(|cols| {
                cols.iter()
                    .filter_map(|c| {
                        Some(PrinterColumn {
                            name: c.get("name")?.as_str()?.to_string(),
                            type_: c.get("type")?.as_str()?.to_string(),
                            json_path: c.get("jsonPath")?.as_str()?.to_string(),
                            priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                            description: c
                                .get("description")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_string(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        defs.push(ResourceDef {
            group: group.clone(),
            version,
            storage_version: storage_version.clone(),
            resource: plural.clone(),
            singular: singular.clone(),
            kind: kind.clone(),
            list_kind: list_kind.clone(),
            namespaced,
            short_names: short_names.clone(),
            categories: categories.clone(),
            status_subresource,
            tracks_generation: true,
            name_rule: NameRule::Subdomain,
            custom: true,
            review: false,
            schema,
            rules,
            printer_columns,
        });
    }
    Some(defs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn versions_sort_as_kubernetes_sorts_them() {
        let mut v = vec![
            "v1alpha1",
            "foo",
            "v1beta2",
            "v2",
            "v1",
            "v1beta1",
            "v10alpha1",
        ];
        v.sort_by(|a, b| version_priority_cmp(a, b));
        assert_eq!(
            v,
            vec![
                "v2",
                "v1",
                "v1beta2",
                "v1beta1",
                "v10alpha1",
                "v1alpha1",
                "foo"
            ]
        );
    }

    #[test]
    fn crds_add_and_remove_their_versions() {
        let registry = Registry::new();
        let crd = json!({
            "spec": {
                "group": "example.com",
                "names": {"plural": "widgets", "kind": "Widget"},
                "scope": "Cluster",
                "versions": [
                    {"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}},
                    {"name": "v1beta1", "served": true, "storage": false},
                    {"name": "v1alpha1", "served": false, "storage": false}
                ]
            }
        });
        let defs = defs_from_crd(&crd).unwrap_or_default();
        assert_eq!(defs.len(), 2);
        registry.set_crd("widgets.example.com", defs);
        let def = registry.get("example.com", "v1beta1", "widgets");
        assert!(
            def.as_ref()
                .is_some_and(|d| !d.namespaced && d.storage_version == "v1")
        );
        assert_eq!(
            registry
                .groups()
                .iter()
                .find(|(g, _)| g == "example.com")
                .map(|(_, v)| v.clone()),
            Some(vec!["v1".to_string(), "v1beta1".to_string()])
        );
        registry.remove_crd("widgets.example.com");
        assert!(registry.get("example.com", "v1", "widgets").is_none());
        assert!(!registry.has_group_version("example.com", "v1"));
    }

    #[test]
    fn keys_follow_the_registry_layout() {
        let registry = Registry::new();
        let cm = registry.get("", "v1", "configmaps");
        assert_eq!(
            cm.map(|d| d.key(Some("ns"), "a")),
            Some("/registry/core/configmaps/ns/a".to_string())
        );
        let ns = registry.get("", "v1", "namespaces");
        assert_eq!(
            ns.map(|d| d.key(Some("x"), "x")),
            Some("/registry/core/namespaces/x".to_string())
        );
    }
}
