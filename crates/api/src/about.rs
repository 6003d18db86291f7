//! About API (KEP-2149): `ClusterProperty` in `about.k8s.io`, cluster-scoped.
//!
//! Served as v1alpha1 and v1beta1 (upstream) and as v1 (the version the SIG's own examples
//! write), all with one schema; v1beta1 is the storage version.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::optional_spec::optional_spec;

/// API group of the About API.
pub const GROUP: &str = "about.k8s.io";
/// The version Atoll reads and writes (and the storage version).
pub const STORAGE_VERSION: &str = "v1beta1";
/// Every version served, all with the same schema.
pub const SERVED_VERSIONS: [&str; 3] = ["v1alpha1", "v1beta1", "v1"];

/// Well-known property: the cluster's ID, unique within its ClusterSet for the duration of its
/// membership. An RFC-1123 subdomain of at most [`MAX_CLUSTER_ID_LEN`] characters.
pub const CLUSTER_ID_PROPERTY: &str = "cluster.clusterset.k8s.io";
/// Well-known property: the name of the ClusterSet the cluster belongs to. Present and
/// immutable while the cluster is a member, absent otherwise.
pub const CLUSTER_SET_PROPERTY: &str = "clusterset.k8s.io";
/// KEP-2149 keeps cluster IDs usable as DNS labels in MCS names.
pub const MAX_CLUSTER_ID_LEN: usize = 128;
/// Upstream's intended bound on a property value.
pub const MAX_VALUE_LEN: usize = 128_000;

optional_spec! {
    /// The value of a property of this cluster.
    #[derive(CustomResource, Clone, Debug, PartialEq, Eq)]
    #[kube(
        group = "about.k8s.io",
        version = "v1beta1",
        kind = "ClusterProperty",
        status = "ClusterPropertyStatus",
        category = "multicluster",
        derive = "PartialEq",
        doc = "ClusterProperty stores one named, cluster-scoped fact about this cluster for multi-cluster tools, such as its ID (cluster.clusterset.k8s.io) or its ClusterSet (clusterset.k8s.io).",
        printcolumn(name = "value", type_ = "string", json_path = ".spec.value"),
        printcolumn(name = "age", type_ = "date", json_path = ".metadata.creationTimestamp")
    )]
    @shared
    pub struct ClusterPropertySpec {
        /// The property's value. Free-form; its meaning depends on the property's name.
        #[schemars(length(min = 1, max = 128000))]
        pub value: String,
    }
}

/// ClusterProperty has no status fields; the subresource exists for compatibility.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterPropertyStatus {}

/// Why a cluster ID is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidClusterId {
    /// Empty string.
    #[error("a cluster ID must not be empty")]
    Empty,
    /// Longer than [`MAX_CLUSTER_ID_LEN`].
    #[error("cluster ID {id:?} is {len} characters long; at most {MAX_CLUSTER_ID_LEN} are allowed")]
    TooLong {
        /// The rejected ID.
        id: String,
        /// Its length.
        len: usize,
    },
    /// Not an RFC-1123 subdomain.
    #[error(
        "cluster ID {id:?} is not an RFC-1123 subdomain: use lowercase letters, digits, '-' and '.', starting and ending each label with a letter or digit"
    )]
    NotSubdomain {
        /// The rejected ID.
        id: String,
    },
}

/// Checks that `id` is a valid `cluster.clusterset.k8s.io` value: an RFC-1123 subdomain of at
/// most 128 characters.
pub fn validate_cluster_id(id: &str) -> Result<(), InvalidClusterId> {
    if id.is_empty() {
        return Err(InvalidClusterId::Empty);
    }
    if id.len() > MAX_CLUSTER_ID_LEN {
        return Err(InvalidClusterId::TooLong {
            id: id.to_owned(),
            len: id.len(),
        });
    }
    let label_ok = |label: &str| {
        let bytes = label.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= 63
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            && bytes[0] != b'-'
            && bytes[bytes.len() - 1] != b'-'
    };
    if id.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(InvalidClusterId::NotSubdomain { id: id.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ids_follow_rfc1123_subdomains() {
        for ok in ["cluster-1", "a", "us-east.prod-2", "0abc"] {
            assert_eq!(validate_cluster_id(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_cluster_id(""), Err(InvalidClusterId::Empty));
        for bad in ["Cluster-1", "-a", "a-", "a..b", "a_b", "a.", ".a", "ünï"] {
            assert!(
                matches!(
                    validate_cluster_id(bad),
                    Err(InvalidClusterId::NotSubdomain { .. })
                ),
                "{bad}"
            );
        }
        let long = "a".repeat(129);
        assert!(matches!(
            validate_cluster_id(&long),
            Err(InvalidClusterId::TooLong { len: 129, .. })
        ));
        let longest = format!("{}b", "a.".repeat(63));
        assert_eq!(longest.len(), MAX_CLUSTER_ID_LEN - 1);
        assert_eq!(validate_cluster_id(&longest), Ok(()));
    }

    #[test]
    fn missing_spec_reads_as_default_and_values_round_trip() -> Result<(), serde_json::Error> {
        let bare: ClusterProperty = serde_json::from_value(serde_json::json!({
            "apiVersion": "about.k8s.io/v1beta1", "kind": "ClusterProperty",
            "metadata": {"name": "x"}
        }))?;
        assert_eq!(bare.spec, ClusterPropertySpec::default());

        let cp = ClusterProperty::new(
            CLUSTER_ID_PROPERTY,
            ClusterPropertySpec {
                value: "cluster-1".into(),
            },
        );
        let json = serde_json::to_value(&cp)?;
        assert_eq!(json["apiVersion"], "about.k8s.io/v1beta1");
        assert_eq!(json["spec"]["value"], "cluster-1");
        let back: ClusterProperty = serde_json::from_value(json)?;
        assert_eq!(back, cp);
        Ok(())
    }
}
