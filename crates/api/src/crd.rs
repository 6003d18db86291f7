//! Generation of the CustomResourceDefinitions for every kind in this crate.
//!
//! kube's derive produces one CRD per Rust type and version. This module shapes them into what
//! upstream serves: every served version with the same schema (no conversion webhook is needed
//! because the schemas are identical), the storage version marked, `spec` optional where
//! upstream leaves it optional, no `nullable` (upstream never declares it), and the API-approval
//! annotation that protected groups (`*.k8s.io`) require.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use kube::CustomResourceExt;
use schemars::{Schema, SchemaGenerator, json_schema};

use crate::{about, cluster_profile, mcs, work};

/// Why CRDs could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    /// A generated CRD has no version to serve.
    #[error("the generated CRD {0} has no version")]
    NoVersion(String),
    /// A schema could not be rewritten.
    #[error("could not rewrite the schema of {crd}: {source}")]
    Schema {
        /// The CRD's name.
        crd: String,
        /// What went wrong.
        source: serde_json::Error,
    },
    /// YAML serialization failed.
    #[error("could not write {crd} as YAML: {source}")]
    Yaml {
        /// The CRD's name.
        crd: String,
        /// What went wrong.
        source: serde_saphyr::ser::Error,
    },
}

/// The annotation a CRD in a protected group (`*.k8s.io`, `*.kubernetes.io`) must carry.
pub const API_APPROVED_ANNOTATION: &str = "api-approved.kubernetes.io";
/// Where the About API was approved (KEP-2149's API review).
const ABOUT_API_APPROVAL: &str = "https://github.com/kubernetes/enhancements/pull/3084";

/// How a derived CRD is turned into the served one.
struct Shape {
    crd: CustomResourceDefinition,
    served: &'static [&'static str],
    storage: &'static str,
    spec_optional: bool,
}

/// Every CRD Atoll installs, in a stable order (by name).
pub fn crds() -> Result<Vec<CustomResourceDefinition>, CrdError> {
    let shapes = [
        Shape {
            crd: about::ClusterProperty::crd(),
            served: &about::SERVED_VERSIONS,
            storage: about::STORAGE_VERSION,
            spec_optional: true,
        },
        Shape {
            crd: cluster_profile::ClusterProfile::crd(),
            served: &[cluster_profile::VERSION],
            storage: cluster_profile::VERSION,
            spec_optional: false,
        },
        Shape {
            crd: work::Work::crd(),
            served: &[work::VERSION],
            storage: work::VERSION,
            spec_optional: true,
        },
        Shape {
            crd: work::AppliedWork::crd(),
            served: &[work::VERSION],
            storage: work::VERSION,
            spec_optional: false,
        },
        Shape {
            crd: mcs::ServiceExport::crd(),
            served: &mcs::SERVED_VERSIONS,
            storage: mcs::STORAGE_VERSION,
            spec_optional: true,
        },
        Shape {
            crd: mcs::ServiceImport::crd(),
            served: &mcs::SERVED_VERSIONS,
            storage: mcs::STORAGE_VERSION,
            spec_optional: true,
        },
    ];
    let mut crds = shapes
        .into_iter()
        .map(shape)
        .collect::<Result<Vec<_>, _>>()?;
    crds.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    Ok(crds)
}

fn shape(shape: Shape) -> Result<CustomResourceDefinition, CrdError> {
    let mut crd = shape.crd;
    let name = crd.metadata.name.clone().unwrap_or_default();
    let Some(mut template) = crd.spec.versions.first().cloned() else {
        return Err(CrdError::NoVersion(name));
    };
    if let Some(validation) = template.schema.as_mut()
        && let Some(schema) = validation.open_api_v3_schema.take()
    {
        validation.open_api_v3_schema = Some(rewrite_schema(schema, shape.spec_optional).map_err(
            |source| CrdError::Schema {
                crd: name.clone(),
                source,
            },
        )?);
    }
    crd.spec.versions = shape
        .served
        .iter()
        .map(|version| {
            let mut v = template.clone();
            v.name = (*version).to_owned();
            v.served = true;
            v.storage = *version == shape.storage;
            v
        })
        .collect();
    if crd.spec.group.ends_with(".k8s.io") && !crd.spec.group.ends_with(".x-k8s.io") {
        crd.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(API_APPROVED_ANNOTATION.into(), ABOUT_API_APPROVAL.into());
    }
    Ok(crd)
}

fn rewrite_schema(
    schema: JSONSchemaProps,
    spec_optional: bool,
) -> Result<JSONSchemaProps, serde_json::Error> {
    let mut value = serde_json::to_value(schema)?;
    strip_nullable(&mut value);
    if spec_optional && let Some(root) = value.as_object_mut() {
        let now_empty = match root.get_mut("required").and_then(|r| r.as_array_mut()) {
            Some(required) => {
                required.retain(|r| r != "spec");
                required.is_empty()
            }
            None => false,
        };
        if now_empty {
            root.remove("required");
        }
    }
    serde_json::from_value(value)
}

/// Upstream schemas never declare `nullable`; kube's derive adds it to every `Option`.
fn strip_nullable(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.remove("nullable");
            map.values_mut().for_each(strip_nullable);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_nullable),
        _ => {}
    }
}

/// File name of a CRD under `crds/`, the way controller-gen names them: `<group>_<plural>.yaml`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural)
}

/// One CRD as YAML, with a leading document marker.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, CrdError> {
    let body = serde_saphyr::to_string(crd).map_err(|source| CrdError::Yaml {
        crd: crd.metadata.name.clone().unwrap_or_default(),
        source,
    })?;
    Ok(format!("---\n{body}"))
}

/// Every CRD as one multi-document YAML stream.
pub fn crds_yaml() -> Result<String, CrdError> {
    crds()?.iter().map(to_yaml).collect()
}

/// Schema of an arbitrary embedded object.
pub fn preserve_unknown_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn schema_of(crd: &CustomResourceDefinition, version: &str) -> Value {
        let version = crd.spec.versions.iter().find(|v| v.name == version);
        let schema = version.and_then(|v| v.schema.as_ref()?.open_api_v3_schema.as_ref());
        serde_json::to_value(schema).unwrap_or(Value::Null)
    }

    fn crd(name: &str) -> CustomResourceDefinition {
        crds()
            .ok()
            .and_then(|all| {
                all.into_iter()
                    .find(|c| c.metadata.name.as_deref() == Some(name))
            })
            .unwrap_or_else(|| panic!("no CRD {name}"))
    }

    fn served(crd: &CustomResourceDefinition) -> Vec<(String, bool)> {
        crd.spec
            .versions
            .iter()
            .map(|v| (v.name.clone(), v.storage))
            .collect()
    }

    #[test]
    fn every_kind_has_a_crd_with_printer_columns() -> Result<(), CrdError> {
        let all = crds()?;
        let names: Vec<_> = all.iter().filter_map(|c| c.metadata.name.clone()).collect();
        assert_eq!(
            names,
            [
                "appliedworks.multicluster.x-k8s.io",
                "clusterprofiles.multicluster.x-k8s.io",
                "clusterproperties.about.k8s.io",
                "serviceexports.multicluster.x-k8s.io",
                "serviceimports.multicluster.x-k8s.io",
                "works.multicluster.x-k8s.io",
            ]
        );
        for crd in &all {
            for version in &crd.spec.versions {
                let columns = version.additional_printer_columns.as_deref().unwrap_or(&[]);
                assert!(
                    columns.len() >= 2,
                    "{:?} {}",
                    crd.metadata.name,
                    version.name
                );
                assert!(
                    version
                        .subresources
                        .as_ref()
                        .is_some_and(|s| s.status.is_some())
                );
            }
        }
        Ok(())
    }

    #[test]
    fn cluster_property_matches_upstream() {
        let crd = crd("clusterproperties.about.k8s.io");
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["multicluster".to_owned()][..])
        );
        assert_eq!(
            served(&crd),
            [
                ("v1alpha1".into(), false),
                ("v1beta1".into(), true),
                ("v1".into(), false)
            ]
        );
        let annotations = crd.metadata.annotations.clone().unwrap_or_default();
        assert!(annotations.contains_key(API_APPROVED_ANNOTATION));
        for version in ["v1alpha1", "v1beta1", "v1"] {
            let schema = schema_of(&crd, version);
            assert_eq!(schema.get("required"), None, "spec is optional upstream");
            assert_eq!(schema["properties"]["spec"]["required"], json!(["value"]));
            assert_eq!(
                schema["properties"]["spec"]["properties"]["value"],
                json!({"type": "string", "minLength": 1, "maxLength": 128000,
                       "description": "The property's value. Free-form; its meaning depends on the property's name."})
            );
        }
    }

    #[test]
    fn cluster_profile_matches_upstream() {
        let crd = crd("clusterprofiles.multicluster.x-k8s.io");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(served(&crd), [("v1alpha1".into(), true)]);
        let schema = schema_of(&crd, "v1alpha1");
        assert_eq!(schema["required"], json!(["spec"]));
        let spec = &schema["properties"]["spec"];
        assert_eq!(spec["required"], json!(["clusterManager"]));
        assert_eq!(
            spec["properties"]["clusterManager"]["x-kubernetes-validations"],
            json!([{"message": "ClusterManager is immutable", "rule": "self == oldSelf"}])
        );
        assert_eq!(
            spec["properties"]["clusterManager"]["required"],
            json!(["name"])
        );
        let status = &schema["properties"]["status"]["properties"];
        assert_eq!(
            status["properties"]["x-kubernetes-list-map-keys"],
            json!(["name"])
        );
        assert_eq!(
            status["properties"]["items"]["required"],
            json!(["name", "value"])
        );
        assert_eq!(
            status["properties"]["items"]["properties"]["value"]["maxLength"],
            json!(1024)
        );
        assert_eq!(status["conditions"]["x-kubernetes-list-type"], json!("map"));
        let cluster = &status["accessProviders"]["items"]["properties"]["cluster"];
        assert_eq!(cluster["required"], json!(["server"]));
        assert_eq!(
            cluster["properties"]["certificate-authority-data"]["format"],
            json!("byte")
        );
        assert_eq!(
            status["version"]["properties"]["kubernetes"]["type"],
            json!("string")
        );
    }

    #[test]
    fn work_and_applied_work_match_upstream() {
        let crd_work = crd("works.multicluster.x-k8s.io");
        assert_eq!(crd_work.spec.scope, "Namespaced");
        let schema = schema_of(&crd_work, "v1alpha1");
        assert_eq!(schema.get("required"), None);
        assert_eq!(
            schema["properties"]["spec"]["properties"]["workload"]["properties"]["manifests"]["items"],
            json!({"type": "object", "description": "A Kubernetes object to apply.",
                   "x-kubernetes-embedded-resource": true,
                   "x-kubernetes-preserve-unknown-fields": true})
        );
        let status = &schema["properties"]["status"];
        assert_eq!(status["required"], json!(["conditions"]));
        let manifest = &status["properties"]["manifestConditions"]["items"];
        assert_eq!(manifest["required"], json!(["conditions", "identifier"]));
        assert_eq!(
            manifest["properties"]["identifier"]["required"],
            json!(["ordinal"])
        );
        assert_eq!(
            manifest["properties"]["identifier"]["properties"]["ordinal"]["type"],
            json!("integer")
        );

        let applied = crd("appliedworks.multicluster.x-k8s.io");
        assert_eq!(applied.spec.scope, "Cluster");
        let schema = schema_of(&applied, "v1alpha1");
        assert_eq!(
            schema["properties"]["spec"]["required"],
            json!(["workName", "workNamespace"])
        );
        let item = &schema["properties"]["status"]["properties"]["appliedResources"]["items"];
        assert_eq!(item["required"], json!(["ordinal"]));
        for field in [
            "group",
            "version",
            "kind",
            "resource",
            "namespace",
            "name",
            "uid",
        ] {
            assert_eq!(
                item["properties"][field]["type"],
                json!("string"),
                "{field}"
            );
        }
    }

    #[test]
    fn mcs_kinds_match_upstream() {
        for name in ["serviceexports", "serviceimports"] {
            let crd = crd(&format!("{name}.multicluster.x-k8s.io"));
            assert_eq!(crd.spec.scope, "Namespaced");
            assert_eq!(
                served(&crd),
                [("v1alpha1".into(), false), ("v1beta1".into(), true)]
            );
            assert_eq!(schema_of(&crd, "v1alpha1"), schema_of(&crd, "v1beta1"));
            assert_eq!(schema_of(&crd, "v1beta1").get("required"), None);
        }
        let export = crd("serviceexports.multicluster.x-k8s.io");
        assert_eq!(
            export.spec.names.short_names.as_deref(),
            Some(&["svcex".to_owned(), "svcexport".to_owned()][..])
        );
        let status = &schema_of(&export, "v1beta1")["properties"]["status"]["properties"];
        assert_eq!(
            status["conditions"]["items"]["properties"]["status"]["enum"],
            json!(["True", "False", "Unknown"])
        );

        let import = crd("serviceimports.multicluster.x-k8s.io");
        let schema = schema_of(&import, "v1beta1");
        let spec = &schema["properties"]["spec"];
        assert_eq!(spec["required"], json!(["ports", "type"]));
        assert_eq!(spec["properties"]["ips"]["maxItems"], json!(2));
        assert_eq!(spec["properties"]["ipFamilies"]["maxItems"], json!(2));
        assert_eq!(
            spec["properties"]["type"]["enum"],
            json!(["ClusterSetIP", "Headless"])
        );
        assert_eq!(
            spec["properties"]["ports"]["x-kubernetes-list-type"],
            json!("atomic")
        );
        assert_eq!(
            spec["properties"]["ports"]["items"]["required"],
            json!(["port"])
        );
        let clusters = &schema["properties"]["status"]["properties"]["clusters"];
        assert_eq!(clusters["x-kubernetes-list-map-keys"], json!(["cluster"]));
        assert_eq!(clusters["items"]["required"], json!(["cluster"]));
    }

    #[test]
    fn no_schema_declares_nullable() -> Result<(), CrdError> {
        let yaml = crds_yaml()?;
        assert!(!yaml.contains("nullable"));
        Ok(())
    }
}
