//! RBAC objects as the authorizer reads them: every Role, ClusterRole, RoleBinding and
//! ClusterRoleBinding parsed once into a [`Policy`], indexed by subject, so that a request
//! looks up the bindings of its user and groups instead of reading every binding; and the
//! "covers" relation between rules that privilege-escalation prevention needs.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::Value;

use crate::auth::UserInfo;
use crate::error::Cause;
use crate::request::{RequestTarget, ResourceRequest};
use crate::storage::string_list;

/// Where RBAC objects are stored.
pub const PREFIX: &str = "/registry/rbac.authorization.k8s.io/";

fn contains(set: &[String], item: &str) -> bool {
    set.iter().any(|s| s == item)
}

/// One `rules[]` entry of a Role or ClusterRole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyRule {
    /// `verbs`.
    pub verbs: Vec<String>,
    /// `apiGroups`.
    pub api_groups: Vec<String>,
    /// `resources`, possibly `resource/subresource`, `*` or `*/subresource`.
    pub resources: Vec<String>,
    /// `resourceNames`; empty means every name.
    pub resource_names: Vec<String>,
    /// `nonResourceURLs`, possibly ending in `*`.
    pub non_resource_urls: Vec<String>,
}

impl PolicyRule {
    /// Reads a rule as stored (missing or malformed lists are empty).
    pub fn from_value(rule: &Value) -> PolicyRule {
        PolicyRule {
            verbs: string_list(rule.get("verbs")),
            api_groups: string_list(rule.get("apiGroups")),
            resources: string_list(rule.get("resources")),
            resource_names: string_list(rule.get("resourceNames")),
            non_resource_urls: string_list(rule.get("nonResourceURLs")),
        }
    }

    /// The `rules` of a Role or ClusterRole object.
    pub fn list_from(role: &Value) -> Vec<PolicyRule> {
        role.get("rules")
            .and_then(Value::as_array)
            .map(|rules| rules.iter().map(PolicyRule::from_value).collect())
            .unwrap_or_default()
    }

    fn has_verb(&self, verb: &str) -> bool {
        contains(&self.verbs, "*") || contains(&self.verbs, verb)
    }

    /// Whether the rule grants a resource request.
    pub fn allows_resource(&self, req: &ResourceRequest) -> bool {
        if !self.has_verb(req.verb) {
            return false;
        }
        if !(contains(&self.api_groups, "*") || contains(&self.api_groups, &req.group)) {
            return false;
        }
        let resource_ok = self.resources.iter().any(|r| match &req.subresource {
            Some(sub) => {
                r == "*"
                    || r.strip_prefix("*/") == Some(sub.as_str())
                    || r.split_once('/') == Some((req.resource.as_str(), sub.as_str()))
            }
            None => r == "*" || *r == req.resource,
        });
        resource_ok
            && (self.resource_names.is_empty()
                || req
                    .name
                    .as_deref()
                    .is_some_and(|n| contains(&self.resource_names, n)))
    }

    /// Whether the rule grants a request for a non-resource path.
    pub fn allows_path(&self, verb: &str, path: &str) -> bool {
        self.has_verb(verb) && self.non_resource_urls.iter().any(|u| url_covers(u, path))
    }

    /// The rule split into atoms, each with one verb and either one (group, resource, and
    /// resourceName if the rule names any) or one non-resource URL. An owner's single rule
    /// either covers an atom entirely or not at all, so coverage is checked atom by atom.
    fn atoms(&self) -> Vec<PolicyRule> {
        let one = |s: &String| vec![s.clone()];
        let mut atoms = Vec::new();
        for group in &self.api_groups {
            for resource in &self.resources {
                for verb in &self.verbs {
                    let atom = PolicyRule {
                        verbs: one(verb),
                        api_groups: one(group),
                        resources: one(resource),
                        ..PolicyRule::default()
                    };
                    if self.resource_names.is_empty() {
                        atoms.push(atom);
                    } else {
                        for name in &self.resource_names {
                            atoms.push(PolicyRule {
                                resource_names: one(name),
                                ..atom.clone()
                            });
                        }
                    }
                }
            }
        }
        for url in &self.non_resource_urls {
            for verb in &self.verbs {
                atoms.push(PolicyRule {
                    verbs: one(verb),
                    non_resource_urls: one(url),
                    ..PolicyRule::default()
                });
            }
        }
        atoms
    }

    /// Whether this rule grants everything `atom` (one of [`PolicyRule::atoms`]) grants.
    /// Wildcards cover only as the authorizer would read them: `*` verbs, groups and resources
    /// cover anything, `*/sub` covers that subresource of any resource, a URL ending in `*`
    /// covers the paths it prefixes, and a rule naming resourceNames covers only those names.
    fn covers_atom(&self, atom: &PolicyRule) -> bool {
        let verbs = atom.verbs.iter().all(|v| self.has_verb(v));
        let groups = contains(&self.api_groups, "*")
            || atom
                .api_groups
                .iter()
                .all(|g| contains(&self.api_groups, g));
        let resources = contains(&self.resources, "*")
            || atom.resources.iter().all(|r| {
                contains(&self.resources, r)
                    || r.split_once('/')
                        .is_some_and(|(_, sub)| contains(&self.resources, &format!("*/{sub}")))
            });
        let urls = atom
            .non_resource_urls
            .iter()
            .all(|u| self.non_resource_urls.iter().any(|own| url_covers(own, u)));
        let names = self.resource_names.is_empty()
            || (!atom.resource_names.is_empty()
                && atom
                    .resource_names
                    .iter()
                    .all(|n| contains(&self.resource_names, n)));
        verbs && groups && resources && urls && names
    }

    /// The rule as kube-apiserver prints it in escalation errors:
    /// `{APIGroups:[""], Resources:["secrets"], Verbs:["get" "list"]}` (Go's `%q` of each list,
    /// empty lists left out).
    pub fn compact_string(&self) -> String {
        let fields = [
            ("APIGroups", &self.api_groups),
            ("Resources", &self.resources),
            ("NonResourceURLs", &self.non_resource_urls),
            ("ResourceNames", &self.resource_names),
            ("Verbs", &self.verbs),
        ];
        let parts: Vec<String> = fields
            .iter()
            .filter(|(_, list)| !list.is_empty())
            .map(|(name, list)| format!("{name}:{}", go_quoted_list(list)))
            .collect();
        format!("{{{}}}", parts.join(", "))
    }
}

/// Go's `%q` of a `[]string`: `["a" "b"]`.
pub fn go_quoted_list(items: &[impl AsRef<str>]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{:?}", s.as_ref())).collect();
    format!("[{}]", quoted.join(" "))
}

fn url_covers(owner: &str, path: &str) -> bool {
    owner == path
        || owner
            .strip_suffix('*')
            .is_some_and(|prefix| path.starts_with(prefix))
}

/// What of `wanted` no rule of `owner` grants, as atoms merged back where they differ only in
/// their verb, each printed as [`PolicyRule::compact_string`], sorted. Empty when `owner`
/// covers `wanted`.
pub fn uncovered<'a>(
    owner: impl IntoIterator<Item = &'a PolicyRule> + Clone,
    wanted: &[PolicyRule],
) -> Vec<String> {
    let mut missing: Vec<PolicyRule> = Vec::new();
    for atom in wanted.iter().flat_map(PolicyRule::atoms) {
        if !owner
            .clone()
            .into_iter()
            .any(|rule| rule.covers_atom(&atom))
        {
            match missing.iter_mut().find(|m| {
                m.non_resource_urls.is_empty()
                    && atom.non_resource_urls.is_empty()
                    && m.api_groups == atom.api_groups
                    && m.resources == atom.resources
                    && m.resource_names == atom.resource_names
            }) {
                Some(same_target) => {
                    if !same_target.verbs.contains(&atom.verbs[0]) {
                        same_target.verbs.extend(atom.verbs);
                    }
                }
                None => missing.push(atom),
            }
        }
    }
    missing
        .iter()
        .map(PolicyRule::compact_string)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Who a binding's subject is, as requests are matched against it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum SubjectKey {
    /// A user by name (a ServiceAccount is the user `system:serviceaccount:<ns>:<name>`).
    User(String),
    /// A group by name.
    Group(String),
}

/// What a binding grants: the role it references.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RoleKey {
    ClusterRole(String),
    /// A Role in the binding's namespace.
    Role(String),
}

/// The API group of the roles a binding may reference.
pub const GROUP: &str = "rbac.authorization.k8s.io";

/// What is wrong with a binding's `roleRef`, worded as kube-apiserver's RBAC validation:
/// `apiGroup` must be `rbac.authorization.k8s.io`, `kind` Role or ClusterRole (a
/// ClusterRoleBinding: ClusterRole only), `name` a valid path segment. Writes validate it
/// after defaulting an omitted `apiGroup`; the authorizer honours only bindings without a
/// cause, as stored (so a binding an older server stored without a valid roleRef grants
/// nothing).
pub fn role_ref_causes(cluster_binding: bool, role_ref: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    let field = |name: &str| role_ref.and_then(|r| r.get(name));
    let text = |name: &str| field(name).and_then(Value::as_str).unwrap_or_default();
    if field("apiGroup").and_then(Value::as_str) != Some(GROUP) {
        causes.push(Cause::not_supported(
            "roleRef.apiGroup",
            &serde_json::json!(text("apiGroup")),
            &[GROUP.to_string()],
        ));
    }
    let allowed: &[&str] = if cluster_binding {
        &["ClusterRole"]
    } else {
        &["Role", "ClusterRole"]
    };
    let kind = text("kind");
    if field("kind").and_then(Value::as_str).is_none() || !allowed.contains(&kind) {
        causes.push(Cause::not_supported(
            "roleRef.kind",
            &serde_json::json!(kind),
            &allowed.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        ));
    }
    let name = text("name");
    if name.is_empty() {
        causes.push(Cause::required("roleRef.name", ""));
    } else {
        // Upstream's ValidateRBACName: a valid path segment.
        let mut bad = Vec::new();
        if name == "." || name == ".." {
            bad.push(format!("may not be '{name}'"));
        } else {
            bad.extend(
                ["/", "%"]
                    .into_iter()
                    .filter(|c| name.contains(c))
                    .map(|c| format!("may not contain '{c}'")),
            );
        }
        causes.extend(
            bad.into_iter()
                .map(|msg| Cause::invalid("roleRef.name", &serde_json::json!(name), msg)),
        );
    }
    causes
}

fn role_key(cluster_binding: bool, role_ref: Option<&Value>) -> Option<RoleKey> {
    if !role_ref_causes(cluster_binding, role_ref).is_empty() {
        return None;
    }
    let role_ref = role_ref?;
    let name = role_ref.get("name").and_then(Value::as_str)?.to_string();
    match role_ref.get("kind").and_then(Value::as_str)? {
        "ClusterRole" => Some(RoleKey::ClusterRole(name)),
        "Role" => Some(RoleKey::Role(name)),
        _ => None,
    }
}

fn subject_keys(binding: &Value, binding_ns: &str) -> Vec<SubjectKey> {
    let Some(subjects) = binding.get("subjects").and_then(Value::as_array) else {
        return Vec::new();
    };
    subjects
        .iter()
        .filter_map(|subject| {
            let name = subject.get("name").and_then(Value::as_str)?.to_string();
            match subject.get("kind").and_then(Value::as_str)? {
                "User" => Some(SubjectKey::User(name)),
                "Group" => Some(SubjectKey::Group(name)),
                "ServiceAccount" => {
                    let ns = subject
                        .get("namespace")
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty())
                        .unwrap_or(binding_ns);
                    Some(SubjectKey::User(format!(
                        "system:serviceaccount:{ns}:{name}"
                    )))
                }
                _ => None,
            }
        })
        .collect()
}

/// One stored RBAC object, parsed.
#[derive(Debug)]
enum Parsed {
    /// A Role's or ClusterRole's rules.
    Rules(Arc<[PolicyRule]>),
    /// A binding: the role it grants, to whom.
    Binding {
        role: RoleKey,
        subjects: Vec<SubjectKey>,
    },
    /// Anything else (a binding without a usable roleRef, an object that does not parse).
    Nothing,
}

fn parse(kind: &str, binding_ns: &str, value: &[u8]) -> Parsed {
    let Ok(obj) = serde_json::from_slice::<Value>(value) else {
        return Parsed::Nothing;
    };
    match kind {
        "clusterroles" | "roles" => Parsed::Rules(PolicyRule::list_from(&obj).into()),
        _ => match role_key(kind == "clusterrolebindings", obj.get("roleRef")) {
            Some(role) => Parsed::Binding {
                role,
                subjects: subject_keys(&obj, binding_ns),
            },
            None => Parsed::Nothing,
        },
    }
}

/// The bindings of one scope (cluster-wide, or one namespace), by subject.
#[derive(Debug, Default)]
struct Grants {
    by_subject: HashMap<SubjectKey, Vec<RoleKey>>,
}

impl Grants {
    fn add(&mut self, binding: &Parsed) {
        let Parsed::Binding { role, subjects } = binding else {
            return;
        };
        for subject in subjects {
            self.by_subject
                .entry(subject.clone())
                .or_default()
                .push(role.clone());
        }
    }

    fn roles_of<'a>(&'a self, user: &'a UserInfo) -> impl Iterator<Item = &'a RoleKey> + 'a {
        let user_key = SubjectKey::User(user.name.clone());
        let mut keys = vec![user_key];
        keys.extend(
            user.all_groups()
                .into_iter()
                .map(|g| SubjectKey::Group(g.to_string())),
        );
        keys.into_iter()
            .filter_map(|k| self.by_subject.get(&k))
            .flatten()
    }
}

/// Every RBAC object, parsed, at one store revision.
#[derive(Debug, Default)]
pub struct Policy {
    /// The store revision the objects were read at.
    pub revision: i64,
    /// Every object by key, with its mod_revision: the next build parses only what changed.
    parsed: HashMap<String, (i64, Arc<Parsed>)>,
    cluster_roles: HashMap<String, Arc<[PolicyRule]>>,
    /// Roles by (namespace, name).
    roles: HashMap<(String, String), Arc<[PolicyRule]>>,
    cluster_grants: Grants,
    /// RoleBindings by namespace.
    namespace_grants: HashMap<String, Grants>,
}

const EMPTY: &[PolicyRule] = &[];

impl Policy {
    /// Builds the policy from the stored objects under [`PREFIX`] (key, mod_revision, JSON
    /// value), reusing `previous`'s parse of every object whose mod_revision is unchanged;
    /// what does not parse is left out, as the authorizer ignores it.
    pub fn from_objects<'a>(
        revision: i64,
        objects: impl IntoIterator<Item = (&'a str, i64, &'a [u8])>,
        previous: Option<&Policy>,
    ) -> Policy {
        let mut policy = Policy {
            revision,
            ..Policy::default()
        };
        for (key, mod_revision, value) in objects {
            let Some(rest) = key.strip_prefix(PREFIX) else {
                continue;
            };
            let parts: Vec<&str> = rest.split('/').collect();
            let (kind, ns) = match parts.as_slice() {
                [kind, _] => (*kind, ""),
                [kind, ns, _] => (*kind, *ns),
                _ => continue,
            };
            let parsed = match previous.and_then(|p| p.parsed.get(key)) {
                Some((at, parsed)) if *at == mod_revision => parsed.clone(),
                _ => Arc::new(parse(kind, ns, value)),
            };
            match (parts.as_slice(), &*parsed) {
                (["clusterroles", name], Parsed::Rules(rules)) => {
                    policy.cluster_roles.insert(name.to_string(), rules.clone());
                }
                (["roles", ns, name], Parsed::Rules(rules)) => {
                    policy
                        .roles
                        .insert((ns.to_string(), name.to_string()), rules.clone());
                }
                (["clusterrolebindings", _], binding) => policy.cluster_grants.add(binding),
                (["rolebindings", ns, _], binding) => policy
                    .namespace_grants
                    .entry(ns.to_string())
                    .or_default()
                    .add(binding),
                _ => {}
            }
            policy
                .parsed
                .insert(key.to_string(), (mod_revision, parsed));
        }
        policy
    }

    /// The rules of a ClusterRole (empty if it does not exist).
    pub fn cluster_role(&self, name: &str) -> Option<&[PolicyRule]> {
        self.cluster_roles.get(name).map(|r| &r[..])
    }

    /// The rules of a Role (empty if it does not exist).
    pub fn role(&self, namespace: &str, name: &str) -> Option<&[PolicyRule]> {
        self.roles
            .get(&(namespace.to_string(), name.to_string()))
            .map(|r| &r[..])
    }

    fn resolve(&self, role: &RoleKey, namespace: Option<&str>) -> &[PolicyRule] {
        match (role, namespace) {
            (RoleKey::ClusterRole(name), _) => self.cluster_role(name),
            (RoleKey::Role(name), Some(ns)) => self.role(ns, name),
            // A ClusterRoleBinding cannot grant a Role.
            (RoleKey::Role(_), None) => None,
        }
        .unwrap_or(EMPTY)
    }

    /// Every rule `user` holds cluster-wide and, with `namespace`, in that namespace: the rules
    /// of the roles bound to the user or its groups by ClusterRoleBindings and the namespace's
    /// RoleBindings (upstream's `RulesFor`).
    pub fn rules_for<'a>(
        &'a self,
        user: &'a UserInfo,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = &'a PolicyRule> + Clone + 'a {
        let cluster = self
            .cluster_grants
            .roles_of(user)
            .flat_map(move |role| self.resolve(role, None));
        let local = namespace
            .and_then(|ns| self.namespace_grants.get(ns).map(|g| (ns, g)))
            .into_iter()
            .flat_map(move |(ns, grants)| {
                grants
                    .roles_of(user)
                    .flat_map(move |role| self.resolve(role, Some(ns)))
            });
        cluster.chain(local).collect::<Vec<_>>().into_iter()
    }

    /// Whether the bound roles grant `target` (the implicit public and discovery paths are the
    /// caller's business).
    pub fn allows(&self, user: &UserInfo, target: &RequestTarget) -> bool {
        match target {
            RequestTarget::Resource(req) => self
                .rules_for(user, req.namespace.as_deref())
                .any(|rule| rule.allows_resource(req)),
            RequestTarget::NonResource { path, verb } => self
                .rules_for(user, None)
                .any(|rule| rule.allows_path(verb, path)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(v: Value) -> PolicyRule {
        PolicyRule::from_value(&v)
    }

    fn missing(owner: &[Value], wanted: &[Value]) -> Vec<String> {
        let owner: Vec<PolicyRule> = owner.iter().cloned().map(rule).collect();
        let wanted: Vec<PolicyRule> = wanted.iter().cloned().map(rule).collect();
        uncovered(owner.iter(), &wanted)
    }

    #[test]
    fn exact_and_subset_rules_are_covered() {
        let owner = [
            json!({"apiGroups": [""], "resources": ["configmaps", "secrets"], "verbs": ["get", "list", "create"]}),
        ];
        assert!(
            missing(
                &owner,
                &[json!({"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]})]
            )
            .is_empty()
        );
        assert_eq!(
            missing(
                &owner,
                &[
                    json!({"apiGroups": ["", "apps"], "resources": ["secrets"], "verbs": ["get", "delete"]})
                ]
            ),
            vec![
                r#"{APIGroups:[""], Resources:["secrets"], Verbs:["delete"]}"#,
                r#"{APIGroups:["apps"], Resources:["secrets"], Verbs:["get" "delete"]}"#,
            ]
        );
        // Nothing wanted is always covered; nothing owned covers nothing.
        assert!(missing(&owner, &[]).is_empty());
        assert_eq!(missing(&[], &owner).len(), 2);
    }

    #[test]
    fn wildcards_cover_only_what_they_match() {
        let star = [json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]})];
        assert!(
            missing(
                &star,
                &[json!({"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["update"], "resourceNames": ["x"]})]
            )
            .is_empty()
        );
        // A wanted `*` verb is covered only by an owned `*` verb, not by every verb listed.
        let all_verbs = [
            json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"]}),
        ];
        assert_eq!(
            missing(
                &all_verbs,
                &[json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["*"]})]
            ),
            vec![r#"{APIGroups:[""], Resources:["secrets"], Verbs:["*"]}"#]
        );
        // `*/status` covers every status subresource, not the resources themselves.
        let status = [json!({"apiGroups": [""], "resources": ["*/status"], "verbs": ["get"]})];
        assert!(
            missing(
                &status,
                &[json!({"apiGroups": [""], "resources": ["pods/status", "namespaces/status"], "verbs": ["get"]})]
            )
            .is_empty()
        );
        assert_eq!(
            missing(
                &status,
                &[json!({"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get"]})]
            ),
            vec![
                r#"{APIGroups:[""], Resources:["pods"], Verbs:["get"]}"#,
                r#"{APIGroups:[""], Resources:["pods/log"], Verbs:["get"]}"#,
            ]
        );
        // A resource does not cover its subresources.
        let pods = [json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]})];
        assert_eq!(
            missing(
                &pods,
                &[json!({"apiGroups": [""], "resources": ["pods/status"], "verbs": ["get"]})]
            )
            .len(),
            1
        );
        // A `*` group covers any group; a `*` resource wanted needs a `*` resource owned.
        let any_group = [json!({"apiGroups": ["*"], "resources": ["leases"], "verbs": ["get"]})];
        assert!(
            missing(
                &any_group,
                &[json!({"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get"]})]
            )
            .is_empty()
        );
        assert_eq!(
            missing(
                &any_group,
                &[json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["get"]})]
            ),
            vec![r#"{APIGroups:["*"], Resources:["*"], Verbs:["get"]}"#]
        );
    }

    #[test]
    fn resource_names_narrow_what_is_covered() {
        let named = [
            json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["a", "b"]}),
        ];
        assert!(
            missing(
                &named,
                &[json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["b"]})]
            )
            .is_empty()
        );
        assert_eq!(
            missing(
                &named,
                &[
                    json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["a", "c"]})
                ]
            ),
            vec![r#"{APIGroups:[""], Resources:["secrets"], ResourceNames:["c"], Verbs:["get"]}"#]
        );
        // Names owned do not cover every name.
        assert_eq!(
            missing(
                &named,
                &[json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]})]
            ),
            vec![r#"{APIGroups:[""], Resources:["secrets"], Verbs:["get"]}"#]
        );
        // No names owned covers any name.
        let unnamed = [json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]})];
        assert!(
            missing(
                &unnamed,
                &[json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["z"]})]
            )
            .is_empty()
        );
    }

    #[test]
    fn non_resource_urls_cover_by_prefix() {
        let owner =
            [json!({"nonResourceURLs": ["/healthz", "/metrics/*", "/logs*"], "verbs": ["get"]})];
        assert!(
            missing(
                &owner,
                &[json!({"nonResourceURLs": ["/healthz", "/metrics/cadvisor", "/logs", "/logs/x"], "verbs": ["get"]})]
            )
            .is_empty()
        );
        assert_eq!(
            missing(
                &owner,
                &[
                    json!({"nonResourceURLs": ["/metrics", "/healthz/ping", "*"], "verbs": ["get", "post"]})
                ]
            ),
            vec![
                r#"{NonResourceURLs:["*"], Verbs:["get"]}"#,
                r#"{NonResourceURLs:["*"], Verbs:["post"]}"#,
                r#"{NonResourceURLs:["/healthz/ping"], Verbs:["get"]}"#,
                r#"{NonResourceURLs:["/healthz/ping"], Verbs:["post"]}"#,
                r#"{NonResourceURLs:["/metrics"], Verbs:["get"]}"#,
                r#"{NonResourceURLs:["/metrics"], Verbs:["post"]}"#,
            ]
        );
        // Resource rules never cover URLs and the other way round.
        let everything = [json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]})];
        assert_eq!(
            missing(
                &everything,
                &[json!({"nonResourceURLs": ["/version"], "verbs": ["get"]})]
            )
            .len(),
            1
        );
        let star_url = [json!({"nonResourceURLs": ["*"], "verbs": ["*"]})];
        assert!(
            missing(
                &star_url,
                &[json!({"nonResourceURLs": ["/anything/at/all"], "verbs": ["delete"]})]
            )
            .is_empty()
        );
        assert_eq!(
            missing(
                &star_url,
                &[json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]})]
            )
            .len(),
            1
        );
    }

    #[test]
    fn policy_indexes_bindings_by_subject_and_scope() {
        let objects = [
            (
                "/registry/rbac.authorization.k8s.io/clusterroles/reader",
                json!({"rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]}),
            ),
            (
                "/registry/rbac.authorization.k8s.io/roles/x/writer",
                json!({"rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}]}),
            ),
            (
                "/registry/rbac.authorization.k8s.io/clusterrolebindings/devs-read",
                json!({"roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "reader"}, "subjects": [{"kind": "Group", "name": "dev"}]}),
            ),
            (
                "/registry/rbac.authorization.k8s.io/rolebindings/x/robot-writes",
                json!({"roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "writer"}, "subjects": [{"kind": "ServiceAccount", "name": "robot"}]}),
            ),
            // roleRefs that do not validate grant nothing: no or another apiGroup, a Role
            // from a ClusterRoleBinding.
            (
                "/registry/rbac.authorization.k8s.io/rolebindings/y/no-group",
                json!({"roleRef": {"kind": "ClusterRole", "name": "reader"}, "subjects": [{"kind": "User", "name": "stranger"}]}),
            ),
            (
                "/registry/rbac.authorization.k8s.io/rolebindings/y/other-group",
                json!({"roleRef": {"apiGroup": "example.com", "kind": "ClusterRole", "name": "reader"}, "subjects": [{"kind": "User", "name": "stranger"}]}),
            ),
            (
                "/registry/rbac.authorization.k8s.io/clusterrolebindings/role-kind",
                json!({"roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "writer"}, "subjects": [{"kind": "User", "name": "stranger"}]}),
            ),
        ];
        let encoded: Vec<(String, Vec<u8>)> = objects
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string().into_bytes()))
            .collect();
        let policy = Policy::from_objects(
            7,
            encoded.iter().map(|(k, v)| (k.as_str(), 1, v.as_slice())),
            None,
        );
        let robot = UserInfo::new("system:serviceaccount:x:robot", &["dev"]);
        assert_eq!(policy.rules_for(&robot, None).count(), 1);
        assert_eq!(policy.rules_for(&robot, Some("x")).count(), 2);
        assert_eq!(policy.rules_for(&robot, Some("y")).count(), 1);
        let stranger = UserInfo::new("stranger", &[]);
        assert_eq!(policy.rules_for(&stranger, Some("x")).count(), 0);
        assert_eq!(policy.rules_for(&stranger, Some("y")).count(), 0);
    }

    #[test]
    fn a_rebuild_parses_only_what_changed() {
        let key = "/registry/rbac.authorization.k8s.io/clusterroles/r";
        let one = json!({"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]})
            .to_string();
        let two = json!({"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}, {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]})
            .to_string();
        let first = Policy::from_objects(3, [(key, 3, one.as_bytes())], None);
        // Same mod_revision: the earlier parse stands (the bytes are not read again).
        let same = Policy::from_objects(4, [(key, 3, two.as_bytes())], Some(&first));
        assert_eq!(same.cluster_role("r").map(<[_]>::len), Some(1));
        // A new mod_revision is parsed.
        let changed = Policy::from_objects(5, [(key, 5, two.as_bytes())], Some(&first));
        assert_eq!(changed.cluster_role("r").map(<[_]>::len), Some(2));
        // A key gone is gone.
        let gone = Policy::from_objects(6, [], Some(&changed));
        assert!(gone.cluster_role("r").is_none());
    }
}
