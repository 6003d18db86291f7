//! Names of the objects the inventory creates.

/// Hub namespace holding every ClusterProfile Atoll manages.
pub const DEFAULT_MANAGER_NAMESPACE: &str = "atoll-system";
/// Prefix of the per-cluster namespace on the hub.
pub const CLUSTER_NAMESPACE_PREFIX: &str = "atoll-cluster-";
/// Where hubs before the credentials moved kept a member's kubeconfig: a Secret of this name
/// in the cluster's hub namespace, which tenants of that namespace could read and write. A
/// hub finds one there only after an upgrade, and moves it (see [`member_kubeconfig_secret`]).
pub const MEMBER_KUBECONFIG_SECRET: &str = "member-kubeconfig";
/// Prefix of the Secret, in the manager namespace, that holds a push-mode member's kubeconfig.
pub const MEMBER_KUBECONFIG_SECRET_PREFIX: &str = "member-kubeconfig-";
/// Key of the kubeconfig in a member-kubeconfig Secret.
pub const MEMBER_KUBECONFIG_KEY: &str = "kubeconfig";
/// Label on hub objects naming the member cluster they belong to.
pub const LABEL_CLUSTER_NAME: &str = "atoll.io/cluster-name";
/// Namespace Atoll creates in each member.
pub const MEMBER_NAMESPACE: &str = "atoll-system";
/// The identity the hub uses in a push-mode member.
pub const MEMBER_SERVICE_ACCOUNT: &str = "atoll-hub";
/// The Secret holding that identity's token.
pub const MEMBER_TOKEN_SECRET: &str = "atoll-hub-token";
/// ClusterRole and ClusterRoleBinding of that identity.
pub const MEMBER_CLUSTER_ROLE: &str = "atoll:hub";
/// The identity the push-mode Work applier uses in a member (impersonated by the hub's).
pub const MEMBER_WORK_SERVICE_ACCOUNT: &str = "atoll-work";
/// ClusterRole and ClusterRoleBinding of the Work applier's identity.
pub const MEMBER_WORK_CLUSTER_ROLE: &str = "atoll:work";
/// The name of the access provider Atoll records in `ClusterProfile.status.accessProviders`.
pub const ACCESS_PROVIDER: &str = "atoll";

/// Whether a profile is of a pull-mode cluster (its agent dials the hub; the hub holds no
/// credentials for it).
pub fn is_pull_mode(profile: &atoll_api::cluster_profile::ClusterProfile) -> bool {
    profile
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(atoll_api::cluster_profile::LABEL_MODE))
        .is_some_and(|mode| mode == atoll_api::cluster_profile::MODE_PULL)
}

/// The Secret holding a push-mode member's kubeconfig. It lives in the manager namespace
/// (`atoll-system`), beside the ClusterProfiles, where tenants of a cluster's namespace have
/// no binding: only the hub's own identity reads or writes it.
pub fn member_kubeconfig_secret(cluster: &str) -> String {
    format!("{MEMBER_KUBECONFIG_SECRET_PREFIX}{cluster}")
}

/// The hub namespace of a member cluster.
pub fn cluster_namespace(cluster: &str) -> String {
    format!("{CLUSTER_NAMESPACE_PREFIX}{cluster}")
}

/// Checks that a cluster name can name a ClusterProfile and a namespace: an RFC-1123 label
/// short enough to take the namespace prefix.
pub fn validate_cluster_name(name: &str) -> Result<(), String> {
    let max = 63 - CLUSTER_NAMESPACE_PREFIX.len();
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= max
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "cluster name {name:?} must be 1 to {max} lowercase letters, digits or '-', starting and ending with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names_must_fit_a_namespace() {
        assert!(validate_cluster_name("member-1").is_ok());
        assert!(validate_cluster_name(&"a".repeat(49)).is_ok());
        assert_eq!(cluster_namespace("member-1"), "atoll-cluster-member-1");
        for bad in ["", "-a", "a-", "A", "a.b", "a_b", &"a".repeat(50)] {
            assert!(validate_cluster_name(bad).is_err(), "{bad:?}");
        }
    }
}
