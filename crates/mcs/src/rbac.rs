//! The permissions the member syncer needs, for whoever grants them: `atoll join` (the hub's
//! identity in a push-mode member) and the pull-mode agent's set-up (its hub identity, in its
//! cluster namespace only).

use k8s_openapi::api::rbac::v1::PolicyRule;

fn rule(group: &str, resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(resources.iter().map(|r| (*r).to_owned()).collect()),
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        ..Default::default()
    }
}

const READ: [&str; 3] = ["get", "list", "watch"];
const WRITE: [&str; 7] = [
    "get", "list", "watch", "create", "update", "patch", "delete",
];
const STATUS: [&str; 3] = ["get", "update", "patch"];

/// In the member, cluster-wide: read ServiceExports and report their status, read Services
/// and EndpointSlices to export them, see which namespaces exist, and write ServiceImports,
/// derived Services and imported EndpointSlices (the syncer deletes only those labelled as
/// its own).
pub fn member_rules() -> Vec<PolicyRule> {
    let mcs = atoll_api::mcs::GROUP;
    vec![
        rule(mcs, &["serviceexports"], &READ),
        rule(mcs, &["serviceexports/status"], &STATUS),
        rule(mcs, &["serviceimports"], &WRITE),
        rule(mcs, &["serviceimports/status"], &STATUS),
        rule("", &["services"], &WRITE),
        rule("", &["namespaces"], &["list", "watch"]),
        rule("discovery.k8s.io", &["endpointslices"], &WRITE),
    ]
}

/// On the hub, in the cluster's own namespace only (a Role or a RoleBinding to a ClusterRole
/// there): publish exports and slices, read imports and slices, read the Conflict the hub
/// wrote. Discovery (`/apis`) is open to every authenticated identity.
pub fn hub_namespace_rules() -> Vec<PolicyRule> {
    let mcs = atoll_api::mcs::GROUP;
    vec![
        rule(mcs, &["serviceexports"], &WRITE),
        rule(mcs, &["serviceexports/status"], &["get"]),
        rule(mcs, &["serviceimports"], &READ),
        rule("discovery.k8s.io", &["endpointslices"], &WRITE),
    ]
}
