//! Work API: `Work` (namespaced, in a member cluster's namespace on the hub) and `AppliedWork`
//! (cluster-scoped, in the member), `multicluster.x-k8s.io/v1alpha1`.
//!
//! The upstream shape is `spec.workload.manifests[]` and `status.{conditions,
//! manifestConditions[]}`. Atoll's extensions are optional fields named as Open Cluster
//! Management's ManifestWork names them (`deleteOption`, `manifestConfigs`) and as KubeFleet
//! names its apply strategy (`applyStrategy.whenToTakeOver`), so upstream YAML applies unchanged
//! and users of those projects find familiar names.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::optional_spec::optional_spec;

/// API group of the Work API.
pub const GROUP: &str = "multicluster.x-k8s.io";
/// The only version.
pub const VERSION: &str = "v1alpha1";
/// Finalizer that holds a Work's deletion until the member has been cleaned up.
pub const FINALIZER_WORK_CLEANUP: &str = "multicluster.x-k8s.io/work-cleanup";

/// Work condition: every manifest was applied.
pub const CONDITION_APPLIED: &str = "Applied";
/// Work condition: some resource is still rolling out.
pub const CONDITION_PROGRESSING: &str = "Progressing";
/// Work condition: every resource is available.
pub const CONDITION_AVAILABLE: &str = "Available";
/// Work condition: some resource is degraded.
pub const CONDITION_DEGRADED: &str = "Degraded";

optional_spec! {
    /// What to deploy to the member cluster, and how.
    #[derive(CustomResource, Clone, Debug, PartialEq)]
    #[kube(
        group = "multicluster.x-k8s.io",
        version = "v1alpha1",
        kind = "Work",
        namespaced,
        status = "WorkStatus",
        derive = "PartialEq",
        doc = "Work is a list of manifests to apply to the member cluster whose namespace on the hub holds it, with their status fed back.",
        printcolumn(name = "Applied", type_ = "string", json_path = ".status.conditions[?(@.type==\"Applied\")].status"),
        printcolumn(name = "Available", type_ = "string", json_path = ".status.conditions[?(@.type==\"Available\")].status"),
        printcolumn(name = "Degraded", type_ = "string", priority = "1", json_path = ".status.conditions[?(@.type==\"Degraded\")].status"),
        printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
    )]
    @shared
    #[serde(rename_all = "camelCase")]
    pub struct WorkSpec {
        /// The manifests to apply.
        #[serde(default)]
        pub workload: WorkloadTemplate,
        /// Atoll: what happens to applied resources when the Work or a manifest goes away.
        /// Foreground deletion when unset.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub delete_option: Option<DeleteOption>,
        /// Atoll: per-resource update strategy and status feedback.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub manifest_configs: Vec<ManifestConfig>,
        /// Atoll: take-over and drift handling for every manifest.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub apply_strategy: Option<ApplyStrategy>,
    }
}

/// The manifests of a Work.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
pub struct WorkloadTemplate {
    /// Kubernetes objects of any kind, each complete with apiVersion, kind and metadata.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub manifests: Vec<Manifest>,
}

/// One Kubernetes object to apply, embedded whole.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(transparent)]
pub struct Manifest(pub serde_json::Value);

impl JsonSchema for Manifest {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Manifest".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "object",
            "description": "A Kubernetes object to apply.",
            "x-kubernetes-embedded-resource": true,
            "x-kubernetes-preserve-unknown-fields": true
        })
    }
}

/// How applied resources are treated on deletion (OCM's `DeleteOption`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeleteOption {
    /// Foreground (delete every applied resource, the default), Orphan (leave them all), or
    /// SelectivelyOrphan (leave those listed in `selectivelyOrphans`).
    #[serde(default)]
    pub propagation_policy: DeletePropagationPolicy,
    /// The resources to leave behind under SelectivelyOrphan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selectively_orphans: Option<SelectivelyOrphan>,
}

/// Deletion propagation of applied resources.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeletePropagationPolicy {
    /// Delete every applied resource, and wait for it to be gone.
    #[default]
    Foreground,
    /// Leave every applied resource in the member.
    Orphan,
    /// Leave the listed resources, delete the rest.
    SelectivelyOrphan,
}

/// Resources to leave behind on deletion.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SelectivelyOrphan {
    /// The resources to orphan.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub orphaning_rules: Vec<ResourceIdentifier>,
}

/// Identifies a resource by group, resource (plural), namespace and name.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ResourceIdentifier {
    /// API group; empty for the core group.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// Plural resource name, such as `deployments`.
    pub resource: String,
    /// Namespace; empty for cluster-scoped resources.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// Per-resource configuration (OCM's `ManifestConfigOption`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManifestConfig {
    /// The resource this configuration is for.
    pub resource_identifier: ResourceIdentifier,
    /// Values to report back in `status.manifestConditions[].statusFeedback`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub feedback_rules: Vec<FeedbackRule>,
    /// How the resource is written; ServerSideApply when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_strategy: Option<UpdateStrategy>,
}

/// How a resource is written to the member (OCM's names).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UpdateStrategy {
    /// ServerSideApply (default), Update, CreateOnly or ReadOnly.
    #[serde(rename = "type", default)]
    pub type_: UpdateStrategyType,
    /// Options of ServerSideApply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_side_apply: Option<ServerSideApplyConfig>,
}

/// Write strategies.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UpdateStrategyType {
    /// Server-side apply with field manager `atoll`; fields owned by others are left alone.
    #[default]
    ServerSideApply,
    /// Replace the whole object.
    Update,
    /// Create the object if it is missing; never change it afterwards.
    CreateOnly,
    /// Never write; only report status.
    ReadOnly,
}

/// Options of server-side apply.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServerSideApplyConfig {
    /// Take ownership of fields another manager owns.
    #[serde(default)]
    pub force: bool,
    /// The field manager; `atoll` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field_manager: Option<String>,
}

/// A status-feedback rule.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FeedbackRule {
    /// WellKnownStatus (replicas and the like, per kind) or JSONPaths.
    #[serde(rename = "type")]
    pub type_: FeedbackRuleType,
    /// The paths to report, under JSONPaths.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub json_paths: Vec<JsonPath>,
}

/// Kinds of status-feedback rule.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedbackRuleType {
    /// The well-known status values of Deployment, StatefulSet, DaemonSet and Job.
    WellKnownStatus,
    /// User-supplied JSONPath expressions.
    JSONPaths,
}

/// A named JSONPath expression evaluated against the applied resource.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
pub struct JsonPath {
    /// The name the value is reported under.
    pub name: String,
    /// A JSONPath expression such as `.status.readyReplicas`.
    pub path: String,
}

/// Take-over and drift handling (after KubeFleet's `applyStrategy`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApplyStrategy {
    /// Apply (default: write the manifests and revert drift) or ReportDiff (never write; report
    /// how the member differs from the manifests).
    #[serde(rename = "type", default)]
    pub type_: ApplyStrategyType,
    /// Whether Atoll may take over an object that exists in the member but was not created by
    /// Atoll: Always, IfNoDiff, or Never (the default).
    #[serde(default)]
    pub when_to_take_over: WhenToTakeOver,
}

/// Apply or only report.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ApplyStrategyType {
    /// Write the manifests; revert drift in fields Atoll manages.
    #[default]
    Apply,
    /// Write nothing; report differences in `status.manifestConditions[].diffDetails`.
    ReportDiff,
}

/// Take-over policy for pre-existing objects.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WhenToTakeOver {
    /// Take over and overwrite.
    Always,
    /// Take over only when the object already matches the manifest.
    IfNoDiff,
    /// Never take over; report a condition instead.
    #[default]
    Never,
}

/// The observed state of a Work.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("required" = ["conditions"]))]
pub struct WorkStatus {
    /// Applied, Progressing, Available and Degraded, aggregated over the manifests.
    #[serde(default)]
    #[schemars(schema_with = "crate::conditions::condition_list")]
    pub conditions: Vec<Condition>,
    /// One entry per manifest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub manifest_conditions: Vec<ManifestCondition>,
}

/// The state of one manifest.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManifestCondition {
    /// Which manifest.
    pub identifier: WorkResourceIdentifier,
    /// Applied, Available, and the like, for this manifest.
    #[schemars(schema_with = "crate::conditions::condition_list")]
    pub conditions: Vec<Condition>,
    /// Atoll: values reported by the feedback rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_feedback: Option<StatusFeedback>,
    /// Atoll: fields changed in the member since they were applied (drift).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift_details: Option<DriftDetails>,
    /// Atoll: differences between member and manifest, under ReportDiff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff_details: Option<DiffDetails>,
}

/// Identifies a manifest of a Work and the resource it became.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct WorkResourceIdentifier {
    /// Index of the manifest in `spec.workload.manifests`.
    #[schemars(schema_with = "plain_integer")]
    pub ordinal: i64,
    /// API group.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// API version.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// Kind.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Plural resource name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource: String,
    /// Namespace, empty for cluster-scoped resources.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// Values reported by status-feedback rules.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
pub struct StatusFeedback {
    /// One value per rule path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<FeedbackValue>,
}

/// One reported value.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FeedbackValue {
    /// The rule's name for the value, such as `readyReplicas`.
    pub name: String,
    /// The value.
    pub field_value: FieldValue,
}

/// A typed value (OCM's `FieldValue`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FieldValue {
    /// Integer, String, Boolean or JsonRaw.
    #[serde(rename = "type")]
    pub type_: FieldValueType,
    /// Set when the type is Integer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integer: Option<i64>,
    /// Set when the type is String.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string: Option<String>,
    /// Set when the type is Boolean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boolean: Option<bool>,
    /// Set when the type is JsonRaw: the value as JSON text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_raw: Option<String>,
}

/// Types of reported value.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldValueType {
    /// An integer.
    Integer,
    /// A string.
    String,
    /// A boolean.
    Boolean,
    /// Any other JSON value, as text.
    JsonRaw,
}

/// Drift observed in the member.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DriftDetails {
    /// The fields that drifted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub observed_drifts: Vec<FieldDifference>,
}

/// Differences between member and hub, under ReportDiff.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DiffDetails {
    /// The fields that differ.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub observed_diffs: Vec<FieldDifference>,
}

/// One field that differs between the member and the hub.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FieldDifference {
    /// JSON pointer to the field, such as `/spec/replicas`.
    pub path: String,
    /// The value in the member, as JSON text; absent when the field is missing there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_in_member: Option<String>,
    /// The value in the hub's manifest, as JSON text; absent when the manifest lacks it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_in_hub: Option<String>,
}

/// Records, in the member, what a Work applied there.
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[kube(
    group = "multicluster.x-k8s.io",
    version = "v1alpha1",
    kind = "AppliedWork",
    status = "AppliedWorkStatus",
    category = "fleet",
    derive = "PartialEq",
    doc = "AppliedWork records, in a member cluster, every resource a Work applied there, with its uid, so that exactly those resources are garbage-collected.",
    printcolumn(
        name = "Work Namespace",
        type_ = "string",
        json_path = ".spec.workNamespace"
    ),
    printcolumn(name = "Work", type_ = "string", json_path = ".spec.workName"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AppliedWorkSpec {
    /// Name of the Work on the hub.
    pub work_name: String,
    /// Namespace of the Work on the hub.
    pub work_namespace: String,
    /// Atoll: the Work's `deleteOption` as last applied, so that what the Work applied is
    /// deleted or orphaned as it says even after the Work is gone (deleted while no applier
    /// ran, or its cluster unjoined). Foreground deletion when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_option: Option<DeleteOption>,
}

/// The resources a Work applied.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AppliedWorkStatus {
    /// Every resource applied, with its uid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applied_resources: Vec<AppliedResourceMeta>,
}

/// A resource applied by a Work.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct AppliedResourceMeta {
    /// Which manifest, and the resource it became.
    #[serde(flatten)]
    pub identifier: WorkResourceIdentifier,
    /// The uid of the resource in the member when it was applied.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
}

fn plain_integer(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "integer", "description": "Index of the manifest in spec.workload.manifests."})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_work_example_reads_and_writes_back_unchanged() -> Result<(), serde_json::Error> {
        let upstream = serde_json::json!({
            "apiVersion": "multicluster.x-k8s.io/v1alpha1",
            "kind": "Work",
            "metadata": {"name": "work-sample", "namespace": "cluster1"},
            "spec": {"workload": {"manifests": [{
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "cm", "namespace": "default"},
                "data": {"ui.properties": "color=purple\n"}
            }]}}
        });
        let work: Work = serde_json::from_value(upstream.clone())?;
        assert_eq!(work.spec.workload.manifests.len(), 1);
        assert_eq!(work.spec.delete_option, None);
        assert_eq!(serde_json::to_value(&work)?, upstream);
        Ok(())
    }

    #[test]
    fn applied_resources_flatten_the_identifier_beside_the_uid() -> Result<(), serde_json::Error> {
        let meta = AppliedResourceMeta {
            identifier: WorkResourceIdentifier {
                ordinal: 0,
                version: "v1".into(),
                kind: "ConfigMap".into(),
                resource: "configmaps".into(),
                namespace: "default".into(),
                name: "cm".into(),
                ..Default::default()
            },
            uid: "1234".into(),
        };
        assert_eq!(
            serde_json::to_value(&meta)?,
            serde_json::json!({"ordinal": 0, "version": "v1", "kind": "ConfigMap",
                "resource": "configmaps", "namespace": "default", "name": "cm", "uid": "1234"})
        );
        Ok(())
    }
}
