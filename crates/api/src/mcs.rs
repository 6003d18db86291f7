//! Multi-Cluster Services (KEP-1645): `ServiceExport` and `ServiceImport` in
//! `multicluster.x-k8s.io`, served as v1alpha1 and v1beta1 (storage), both namespaced.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::SessionAffinityConfig;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::optional_spec::optional_spec;

/// API group of MCS.
pub const GROUP: &str = "multicluster.x-k8s.io";
/// The version Atoll reads and writes (and the storage version).
pub const STORAGE_VERSION: &str = "v1beta1";
/// Every version served, all with the same schema.
pub const SERVED_VERSIONS: [&str; 2] = ["v1alpha1", "v1beta1"];

/// EndpointSlice label: the name of the multi-cluster service a slice belongs to.
pub const LABEL_SERVICE_NAME: &str = "multicluster.kubernetes.io/service-name";
/// EndpointSlice label: the cluster ID the slice's endpoints come from.
pub const LABEL_SOURCE_CLUSTER: &str = "multicluster.kubernetes.io/source-cluster";

/// ServiceExport condition types and their reasons, as upstream names them.
pub mod export_conditions {
    /// The export refers to a Service that can be exported.
    pub const VALID: &str = "Valid";
    /// The export has been propagated to the ClusterSet.
    pub const READY: &str = "Ready";
    /// This export disagrees with another cluster's export of the same service.
    pub const CONFLICT: &str = "Conflict";

    /// Reasons of `Valid`.
    pub mod valid {
        /// The Service is exportable.
        pub const VALID: &str = "Valid";
        /// No Service of this name exists in the namespace.
        pub const NO_SERVICE: &str = "NoService";
        /// The Service's type cannot be exported (ExternalName).
        pub const INVALID_SERVICE_TYPE: &str = "InvalidServiceType";
    }

    /// Reasons of `Ready`.
    pub mod ready {
        /// The export is part of the ClusterSet's ServiceImport.
        pub const EXPORTED: &str = "Exported";
        /// The export is ready.
        pub const READY: &str = "Ready";
        /// The export has not been processed yet.
        pub const PENDING: &str = "Pending";
        /// The export could not be processed.
        pub const FAILED: &str = "Failed";
    }

    /// Reasons of `Conflict`.
    pub mod conflict {
        /// Ports disagree.
        pub const PORT_CONFLICT: &str = "PortConflict";
        /// Headless and ClusterSetIP exports are mixed.
        pub const TYPE_CONFLICT: &str = "TypeConflict";
        /// `sessionAffinity` disagrees.
        pub const SESSION_AFFINITY_CONFLICT: &str = "SessionAffinityConflict";
        /// `sessionAffinityConfig` disagrees.
        pub const SESSION_AFFINITY_CONFIG_CONFLICT: &str = "SessionAffinityConfigConflict";
        /// Exported labels disagree.
        pub const LABELS_CONFLICT: &str = "LabelsConflict";
        /// Exported annotations disagree.
        pub const ANNOTATIONS_CONFLICT: &str = "AnnotationsConflict";
        /// `internalTrafficPolicy` disagrees.
        pub const INTERNAL_TRAFFIC_POLICY_CONFLICT: &str = "InternalTrafficPolicyConflict";
        /// `trafficDistribution` disagrees.
        pub const TRAFFIC_DISTRIBUTION_CONFLICT: &str = "TrafficDistributionConflict";
        /// IP families disagree.
        pub const IP_FAMILY_CONFLICT: &str = "IPFamilyConflict";
        /// No conflict.
        pub const NO_CONFLICTS: &str = "NoConflicts";
    }
}

/// ServiceImport condition types and reasons.
pub mod import_conditions {
    /// The import is usable in this cluster.
    pub const READY: &str = "Ready";
    /// Reasons of `Ready`.
    pub mod ready {
        /// Ready.
        pub const READY: &str = "Ready";
        /// Not processed yet.
        pub const PENDING: &str = "Pending";
        /// The cluster does not support the import's IP families.
        pub const IP_FAMILY_NOT_SUPPORTED: &str = "IPFamilyNotSupported";
    }
}

optional_spec! {
    /// What to export besides the Service itself.
    #[derive(CustomResource, Clone, Debug, PartialEq, Eq)]
    #[kube(
        group = "multicluster.x-k8s.io",
        version = "v1beta1",
        kind = "ServiceExport",
        namespaced,
        status = "ServiceExportStatus",
        derive = "PartialEq",
        shortname = "svcex",
        shortname = "svcexport",
        doc = "ServiceExport declares that the Service of the same name and namespace is to be exported to the other clusters of the ClusterSet.",
        printcolumn(name = "Valid", type_ = "string", json_path = ".status.conditions[?(@.type==\"Valid\")].status"),
        printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
        printcolumn(name = "Conflict", type_ = "string", json_path = ".status.conditions[?(@.type==\"Conflict\")].status"),
        printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
    )]
    @shared
    #[serde(rename_all = "camelCase")]
    pub struct ServiceExportSpec {
        /// Labels to put on the derived ServiceImport.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        pub exported_labels: BTreeMap<String, String>,
        /// Annotations to put on the derived ServiceImport.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        pub exported_annotations: BTreeMap<String, String>,
    }
}

/// The current state of an export.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
pub struct ServiceExportStatus {
    /// Valid, Ready and Conflict.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::conditions::condition_map")]
    pub conditions: Vec<Condition>,
}

/// How a ServiceImport is consumed.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ServiceImportType {
    /// Reached through a ClusterSet IP.
    #[default]
    ClusterSetIP,
    /// Backends are addressed directly.
    Headless,
}

optional_spec! {
    /// A service imported from the clusters of the ClusterSet.
    #[derive(CustomResource, Clone, Debug, PartialEq)]
    #[kube(
        group = "multicluster.x-k8s.io",
        version = "v1beta1",
        kind = "ServiceImport",
        namespaced,
        status = "ServiceImportStatus",
        derive = "PartialEq",
        shortname = "svcim",
        shortname = "svcimport",
        doc = "ServiceImport describes a service imported from the clusters of a ClusterSet and how to consume it.",
        printcolumn(name = "Type", type_ = "string", json_path = ".spec.type"),
        printcolumn(name = "IP", type_ = "string", json_path = ".spec.ips"),
        printcolumn(name = "Ports", type_ = "string", priority = "1", json_path = ".spec.ports[*].port"),
        printcolumn(name = "Clusters", type_ = "string", priority = "1", json_path = ".status.clusters[*].cluster"),
        printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
    )]
    @shared
    #[serde(rename_all = "camelCase")]
    pub struct ServiceImportSpec {
        /// The ports of the service, the union of the exported Services' ports.
        #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
        pub ports: Vec<ServicePort>,
        /// The ClusterSet IPs, one per IP family, in `ipFamilies` order.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        #[schemars(length(max = 2))]
        pub ips: Vec<String>,
        /// ClusterSetIP or Headless.
        #[serde(rename = "type")]
        pub type_: ServiceImportType,
        /// As in a Service: `None` or `ClientIP`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub session_affinity: Option<String>,
        /// As in a Service.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub session_affinity_config: Option<SessionAffinityConfig>,
        /// The IP families of `ips`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        #[schemars(length(max = 2))]
        pub ip_families: Vec<String>,
        /// As in a Service: `Cluster` or `Local`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub internal_traffic_policy: Option<String>,
        /// As in a Service.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub traffic_distribution: Option<String>,
    }
}

/// A port of an imported service.
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// The port's name, a DNS label; optional when the service has one port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// TCP, UDP or SCTP; TCP when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// The application protocol, as in a Service port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    /// The port number.
    pub port: i32,
}

/// The derived state of an imported service.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
pub struct ServiceImportStatus {
    /// The clusters that export this service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["cluster"]))]
    pub clusters: Vec<ClusterStatus>,
    /// Ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::conditions::condition_map")]
    pub conditions: Vec<Condition>,
}

/// One exporting cluster.
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub struct ClusterStatus {
    /// The cluster's ID (`cluster.clusterset.k8s.io`).
    pub cluster: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_export_without_spec_reads_and_writes_back_without_one()
    -> Result<(), serde_json::Error> {
        let export: ServiceExport = serde_json::from_value(serde_json::json!({
            "apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport",
            "metadata": {"name": "my-svc", "namespace": "demo"}
        }))?;
        assert_eq!(export.spec, ServiceExportSpec::default());
        let json = serde_json::to_value(&export)?;
        assert_eq!(json["spec"], serde_json::json!({}));
        Ok(())
    }

    #[test]
    fn service_import_uses_upstream_field_names() -> Result<(), serde_json::Error> {
        let import = ServiceImport::new(
            "my-svc",
            ServiceImportSpec {
                ports: vec![ServicePort {
                    name: Some("http".into()),
                    protocol: Some("TCP".into()),
                    app_protocol: None,
                    port: 80,
                }],
                ips: vec!["10.96.0.10".into()],
                type_: ServiceImportType::ClusterSetIP,
                ip_families: vec!["IPv4".into()],
                ..Default::default()
            },
        );
        let json = serde_json::to_value(&import)?;
        assert_eq!(
            json["spec"],
            serde_json::json!({
                "ports": [{"name": "http", "protocol": "TCP", "port": 80}],
                "ips": ["10.96.0.10"], "type": "ClusterSetIP", "ipFamilies": ["IPv4"]
            })
        );
        Ok(())
    }
}
