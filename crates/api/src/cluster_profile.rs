//! ClusterProfile (KEP-4322): the hub's record of one member cluster,
//! `multicluster.x-k8s.io/v1alpha1`, namespaced.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of ClusterProfile (shared with MCS and the Work API).
pub const GROUP: &str = "multicluster.x-k8s.io";
/// The only version.
pub const VERSION: &str = "v1alpha1";
/// Label on every ClusterProfile naming the cluster manager that owns it.
pub const LABEL_CLUSTER_MANAGER: &str = "x-k8s.io/cluster-manager";
/// Label naming the ClusterSet a namespace represents, or a ClusterProfile belongs to.
pub const LABEL_CLUSTER_SET: &str = "multicluster.x-k8s.io/clusterset";
/// Atoll's label on a ClusterProfile saying how the hub reaches the cluster:
/// [`MODE_PUSH`] or [`MODE_PULL`].
pub const LABEL_MODE: &str = "atoll.io/mode";
/// The hub holds the member's credentials and dials it.
pub const MODE_PUSH: &str = "push";
/// An agent in the member dials the hub; the hub never reaches the member.
pub const MODE_PULL: &str = "pull";
/// Atoll's name as a cluster manager: the value of `spec.clusterManager.name` and of
/// [`LABEL_CLUSTER_MANAGER`] on the profiles Atoll writes.
pub const ATOLL_CLUSTER_MANAGER: &str = "atoll";

/// Condition: the member's control plane answers its health checks.
pub const CONDITION_CONTROL_PLANE_HEALTHY: &str = "ControlPlaneHealthy";
/// Condition: the member has joined the ClusterSet and the manager can act on it.
pub const CONDITION_JOINED: &str = "Joined";
/// Condition, present (False) only while the member reports a `cluster.clusterset.k8s.io`
/// other than the cluster ID recorded at join or accept, which stays authoritative.
pub const CONDITION_CLUSTER_ID_CONSISTENT: &str = "ClusterIDConsistent";

/// Taint Atoll puts on a cluster whose API server does not answer.
pub const TAINT_UNREACHABLE: &str = "atoll.io/unreachable";
/// Taint Atoll puts on a cluster whose API server answers but is not ready.
pub const TAINT_NOT_READY: &str = "atoll.io/not-ready";

/// Desired properties of a cluster profile.
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[kube(
    group = "multicluster.x-k8s.io",
    version = "v1alpha1",
    kind = "ClusterProfile",
    namespaced,
    status = "ClusterProfileStatus",
    derive = "PartialEq",
    doc = "ClusterProfile represents one member cluster in a cluster inventory: who manages it, its version, its properties, its health and how to reach it.",
    printcolumn(
        name = "Display Name",
        type_ = "string",
        json_path = ".spec.displayName"
    ),
    printcolumn(
        name = "ClusterSet",
        type_ = "string",
        json_path = ".metadata.labels.multicluster\\.x-k8s\\.io/clusterset"
    ),
    printcolumn(
        name = "Manager",
        type_ = "string",
        priority = "1",
        json_path = ".spec.clusterManager.name"
    ),
    printcolumn(
        name = "Joined",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Joined\")].status"
    ),
    printcolumn(
        name = "Healthy",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"ControlPlaneHealthy\")].status"
    ),
    printcolumn(
        name = "Version",
        type_ = "string",
        json_path = ".status.version.kubernetes"
    ),
    printcolumn(
        name = "Mode",
        type_ = "string",
        json_path = ".metadata.labels.atoll\\.io/mode"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterProfileSpec {
    /// A human-readable name for the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// The cluster manager that owns this profile. Immutable.
    #[schemars(extend("x-kubernetes-validations" = [{"message": "ClusterManager is immutable", "rule": "self == oldSelf"}]))]
    pub cluster_manager: ClusterManager,
    /// Atoll: taints that keep workloads off the cluster unless they tolerate them. Atoll
    /// sets `atoll.io/unreachable` and `atoll.io/not-ready` from health checks; other taints
    /// are the user's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<Taint>,
}

/// A taint on a cluster, as on a Node.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Taint {
    /// The taint's key.
    pub key: String,
    /// The taint's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// What the taint does to workloads that do not tolerate it.
    pub effect: TaintEffect,
    /// When the taint was added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_added: Option<Time>,
}

/// Taint effects, with Node taints' names.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaintEffect {
    /// New workloads are not placed on the cluster.
    NoSchedule,
    /// New workloads avoid the cluster when they can.
    PreferNoSchedule,
    /// Workloads are moved off the cluster.
    NoExecute,
}

/// Identifies the cluster manager responsible for a cluster.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
pub struct ClusterManager {
    /// The manager's name, for example `atoll`.
    pub name: String,
}

/// Observed state of a member cluster.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterProfileStatus {
    /// Conditions, including ControlPlaneHealthy and Joined.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::conditions::condition_map")]
    pub conditions: Vec<Condition>,
    /// Versions of the cluster's components.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<ClusterVersion>,
    /// Properties of the cluster, such as the ClusterProperties found in it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub properties: Vec<Property>,
    /// How a client reaches the cluster, one entry per access provider.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub access_providers: Vec<AccessProvider>,
    /// Deprecated alias of `accessProviders`, kept so upstream objects still validate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub credential_providers: Vec<AccessProvider>,
}

impl ClusterProfileStatus {
    /// The property of this name, if the profile records it.
    pub fn property(&self, name: &str) -> Option<&Property> {
        self.properties.iter().find(|p| p.name == name)
    }
}

/// Versions of the cluster's components.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterVersion {
    /// The Kubernetes version, as the member's `/version` reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<String>,
}

/// One named property of the cluster.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Property {
    /// The property's name, for example `clusterset.k8s.io`.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The property's value, carried over unchanged from its source.
    #[schemars(length(min = 1, max = 1024))]
    pub value: String,
    /// When the value was last observed in the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_observed_time: Option<Time>,
}

/// One way to reach the cluster.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct AccessProvider {
    /// The provider's name; credentials are obtained from the provider of this name.
    pub name: String,
    /// Connection details, as a kubeconfig `cluster` entry spells them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<KubeconfigCluster>,
}

/// A kubeconfig `cluster` entry (client-go's `clientcmd/api/v1.Cluster`), with its
/// kebab-case field names.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct KubeconfigCluster {
    /// The API server's URL, `https://host:port`.
    pub server: String,
    /// SNI name to use when talking to the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
    /// Skip verification of the server's certificate. Insecure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_tls_verify: Option<bool>,
    /// Path to a CA bundle file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_authority: Option<String>,
    /// PEM CA bundle, base64-encoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "byte"))]
    pub certificate_authority_data: Option<String>,
    /// Proxy to reach the server through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_url: Option<String>,
    /// Disable response compression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_compression: Option<bool>,
    /// Extra information, such as exec-plugin arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extensions: Vec<NamedExtension>,
}

/// A named kubeconfig extension.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct NamedExtension {
    /// The extension's name.
    pub name: String,
    /// The extension's content, an arbitrary object.
    #[schemars(schema_with = "crate::crd::preserve_unknown_object")]
    pub extension: serde_json::Value,
}
