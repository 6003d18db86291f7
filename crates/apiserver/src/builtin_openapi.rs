//! OpenAPI schemas of the built-in kinds, for `kubectl explain` and for clients that read a
//! kind's fields from `/openapi/v2` or `/openapi/v3`. They come from k8s-openapi's generated
//! JSON schemas (the `schemars` feature), which carry upstream's field descriptions and
//! upstream's definition names (`io.k8s.api.core.v1.ConfigMap`), so a document here reads as
//! kube-apiserver's does. Custom resources keep their CRD schemas (see `openapi`).
//!
//! Used only to describe kinds: validation and pruning of built-in kinds do not read them.

use k8s_openapi::api::{
    authentication::v1::SelfSubjectReview,
    authorization::v1::{SelfSubjectAccessReview, SubjectAccessReview},
    certificates::v1::CertificateSigningRequest,
    coordination::v1::Lease,
    core::v1::{ConfigMap, Event, Namespace, Secret, ServiceAccount},
    discovery::v1::EndpointSlice,
    rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use schemars::JsonSchema;
use schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{Map, Value};

/// Which document the schemas go into; only where references point differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Document {
    /// `/openapi/v3/...`: `#/components/schemas/<name>`.
    V3,
    /// `/openapi/v2`: `#/definitions/<name>`.
    V2,
}

/// Collects the schemas of built-in kinds and of every type they refer to.
pub struct BuiltinSchemas {
    generator: SchemaGenerator,
}

impl BuiltinSchemas {
    pub fn new(document: Document) -> Self {
        let mut settings = match document {
            Document::V3 => SchemaSettings::openapi3(),
            Document::V2 => SchemaSettings::draft07(),
        };
        settings.definitions_path = match document {
            Document::V3 => "#/components/schemas/".into(),
            Document::V2 => "#/definitions/".into(),
        };
        settings.inline_subschemas = false;
        BuiltinSchemas {
            generator: settings.into_generator(),
        }
    }

    fn add<T: JsonSchema>(&mut self) -> String {
        self.generator.subschema_for::<T>();
        T::schema_name().into_owned()
    }

    /// Adds a built-in kind's schema; its definition name, or `None` for a kind with no
    /// generated schema.
    pub fn add_kind(&mut self, group: &str, version: &str, kind: &str) -> Option<String> {
        Some(match (group, version, kind) {
            ("", "v1", "Namespace") => self.add::<Namespace>(),
            ("", "v1", "ConfigMap") => self.add::<ConfigMap>(),
            ("", "v1", "Secret") => self.add::<Secret>(),
            ("", "v1", "ServiceAccount") => self.add::<ServiceAccount>(),
            ("", "v1", "Event") => self.add::<Event>(),
            ("coordination.k8s.io", "v1", "Lease") => self.add::<Lease>(),
            ("rbac.authorization.k8s.io", "v1", "Role") => self.add::<Role>(),
            ("rbac.authorization.k8s.io", "v1", "RoleBinding") => self.add::<RoleBinding>(),
            ("rbac.authorization.k8s.io", "v1", "ClusterRole") => self.add::<ClusterRole>(),
            ("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding") => {
                self.add::<ClusterRoleBinding>()
            }
            ("discovery.k8s.io", "v1", "EndpointSlice") => self.add::<EndpointSlice>(),
            ("certificates.k8s.io", "v1", "CertificateSigningRequest") => {
                self.add::<CertificateSigningRequest>()
            }
            ("apiextensions.k8s.io", "v1", "CustomResourceDefinition") => {
                self.add::<CustomResourceDefinition>()
            }
            ("authorization.k8s.io", "v1", "SelfSubjectAccessReview") => {
                self.add::<SelfSubjectAccessReview>()
            }
            ("authorization.k8s.io", "v1", "SubjectAccessReview") => {
                self.add::<SubjectAccessReview>()
            }
            ("authentication.k8s.io", "v1", "SelfSubjectReview") => self.add::<SelfSubjectReview>(),
            _ => return None,
        })
    }

    /// Every schema added, and every schema they refer to, by definition name.
    pub fn into_definitions(mut self) -> Map<String, Value> {
        self.generator.take_definitions(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_carry_upstream_names_fields_and_resolvable_references() {
        let mut schemas = BuiltinSchemas::new(Document::V3);
        let name = schemas.add_kind("", "v1", "ConfigMap");
        assert_eq!(name.as_deref(), Some("io.k8s.api.core.v1.ConfigMap"));
        assert_eq!(
            schemas
                .add_kind("coordination.k8s.io", "v1", "Lease")
                .as_deref(),
            Some("io.k8s.api.coordination.v1.Lease")
        );
        assert!(schemas.add_kind("example.com", "v1", "Widget").is_none());
        let definitions = schemas.into_definitions();
        let config_map = &definitions["io.k8s.api.core.v1.ConfigMap"];
        assert_eq!(
            config_map["properties"]["data"]["additionalProperties"]["type"],
            "string"
        );
        // OpenAPI 3.0 allows no siblings beside a `$ref`, so a described reference is wrapped
        // (`allOf`); find it wherever it is.
        fn refs(value: &Value, out: &mut Vec<String>) {
            match value {
                Value::Object(map) => {
                    for (key, value) in map {
                        match (key.as_str(), value) {
                            ("$ref", Value::String(target)) => out.push(target.clone()),
                            _ => refs(value, out),
                        }
                    }
                }
                Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let mut metadata_refs = Vec::new();
        refs(&config_map["properties"]["metadata"], &mut metadata_refs);
        assert_eq!(
            metadata_refs,
            ["#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]
        );
        let mut all_refs = Vec::new();
        refs(&Value::Object(definitions.clone()), &mut all_refs);
        for target in all_refs {
            let name = target.trim_start_matches("#/components/schemas/");
            assert!(definitions.contains_key(name), "{target} resolves");
        }
    }
}
