//! OpenAPI documents for what is served: `/openapi/v3` (a root listing one document per group
//! version) and `/openapi/v2`. Every write operation advertises the `fieldValidation`
//! parameter, so kubectl validates on the server instead of downloading schemas; custom
//! resources carry their CRD schemas, for `kubectl explain`.

use std::hash::{Hash, Hasher};

use serde_json::{Map, Value, json};

use crate::builtin_openapi::{BuiltinSchemas, Document};
use crate::registry::{Registry, ResourceDef};

fn gvk(def: &ResourceDef) -> Value {
    json!({ "group": def.group, "version": def.version, "kind": def.kind })
}

fn base_path(def: &ResourceDef) -> String {
    if def.group.is_empty() {
        format!("/api/{}", def.version)
    } else {
        format!("/apis/{}/{}", def.group, def.version)
    }
}

/// The schema name upstream uses: the group reversed, then version and kind.
fn schema_name(def: &ResourceDef) -> String {
    let group = if def.group.is_empty() {
        "io.k8s.api.core".to_string()
    } else {
        def.group.split('.').rev().collect::<Vec<_>>().join(".")
    };
    format!("{group}.{}.{}", def.version, def.kind)
}

fn schema_of(def: &ResourceDef) -> Value {
    let mut schema = def.schema.clone().unwrap_or_else(|| {
        json!({
            "type": "object",
            "description": format!("{} is a {} object.", def.kind, def.group_resource()),
            "x-kubernetes-preserve-unknown-fields": true,
        })
    });
    if let Some(o) = schema.as_object_mut() {
        let props = o
            .entry("properties")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        let mut props: Map<String, Value> = props;
        props.entry("apiVersion").or_insert(json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}));
        props.entry("kind").or_insert(json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}));
        props
            .entry("metadata")
            .or_insert(json!({"type": "object", "description": "Standard object's metadata."}));
        o.insert("properties".into(), Value::Object(props));
        o.insert("x-kubernetes-group-version-kind".into(), json!([gvk(def)]));
    }
    schema
}

fn operation(def: &ResourceDef, action: &str, schema_ref: &str, write: bool) -> Value {
    let mut params = vec![json!({"name": "pretty", "in": "query", "schema": {"type": "string"}})];
    if write {
        params.push(json!({"name": "dryRun", "in": "query", "schema": {"type": "string"}}));
        params.push(json!({"name": "fieldManager", "in": "query", "schema": {"type": "string"}}));
        params
            .push(json!({"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}));
    }
    json!({
        "operationId": format!("{action}{}", def.kind),
        "parameters": params,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": schema_ref}}}}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk(def),
    })
}

/// The definition name of each kind, and every schema the document needs: built-in kinds (and
/// what they refer to) from k8s-openapi, custom resources from their CRDs.
fn kind_schemas<'a>(
    defs: impl IntoIterator<Item = &'a ResourceDef>,
    document: Document,
) -> (Vec<String>, Map<String, Value>) {
    let mut builtin = BuiltinSchemas::new(document);
    let mut names = Vec::new();
    let mut schemas = Map::new();
    let mut builtin_kinds = Vec::new();
    for def in defs {
        let generated = if def.custom {
            None
        } else {
            builtin.add_kind(&def.group, &def.version, &def.kind)
        };
        let name = match generated {
            Some(name) => {
                builtin_kinds.push((name.clone(), gvk(def)));
                name
            }
            None => {
                let name = schema_name(def);
                schemas.insert(name.clone(), schema_of(def));
                name
            }
        };
        names.push(name);
    }
    for (name, schema) in builtin.into_definitions() {
        schemas.entry(name).or_insert(schema);
    }
    // kubectl finds a kind's schema by this extension.
    for (name, gvk) in builtin_kinds {
        if let Some(schema) = schemas.get_mut(&name).and_then(Value::as_object_mut) {
            schema.insert("x-kubernetes-group-version-kind".into(), json!([gvk]));
        }
    }
    (names, schemas)
}

fn gv_doc(defs: &[std::sync::Arc<ResourceDef>]) -> Value {
    let mut paths = Map::new();
    let (names, mut schemas) = kind_schemas(defs.iter().map(|d| d.as_ref()), Document::V3);
    for (def, name) in defs.iter().zip(names) {
        let schema_ref = format!("#/components/schemas/{name}");
        let collection = if def.namespaced {
            format!(
                "{}/namespaces/{{namespace}}/{}",
                base_path(def),
                def.resource
            )
        } else {
            format!("{}/{}", base_path(def), def.resource)
        };
        paths.insert(
            collection.clone(),
            json!({
                "get": operation(def, "list", &schema_ref, false),
                "post": operation(def, "post", &schema_ref, true),
            }),
        );
        paths.insert(
            format!("{collection}/{{name}}"),
            json!({
                "get": operation(def, "get", &schema_ref, false),
                "put": operation(def, "put", &schema_ref, true),
                "patch": operation(def, "patch", &schema_ref, true),
                "delete": operation(def, "delete", &schema_ref, false),
            }),
        );
        if crate::certificates::is_csr(def) {
            paths.insert(
                format!("{collection}/{{name}}/approval"),
                json!({
                    "get": operation(def, "get", &schema_ref, false),
                    "put": operation(def, "put", &schema_ref, true),
                    "patch": operation(def, "patch", &schema_ref, true),
                }),
            );
        }
        if def.group.is_empty() && def.resource == "serviceaccounts" {
            let mut create = operation(
                def,
                "post",
                "#/components/schemas/io.k8s.api.authentication.v1.TokenRequest",
                true,
            );
            create["operationId"] = json!("createServiceAccountToken");
            create["x-kubernetes-group-version-kind"] =
                json!({"group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest"});
            paths.insert(
                format!("{collection}/{{name}}/token"),
                json!({ "post": create }),
            );
            schemas.insert(
                "io.k8s.api.authentication.v1.TokenRequest".into(),
                json!({
                    "type": "object",
                    "description": "TokenRequest requests a token for a given service account.",
                    "x-kubernetes-preserve-unknown-fields": true,
                    "x-kubernetes-group-version-kind": [{"group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest"}],
                }),
            );
        }
        if def.status_subresource {
            paths.insert(
                format!("{collection}/{{name}}/status"),
                json!({
                    "get": operation(def, "get", &schema_ref, false),
                    "put": operation(def, "put", &schema_ref, true),
                    "patch": operation(def, "patch", &schema_ref, true),
                }),
            );
        }
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0+atoll"},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

fn gv_key(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn hash_of(doc: &Value) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    doc.to_string().hash(&mut h);
    format!("{:016X}", h.finish())
}

/// `/openapi/v3`: one entry per served group version.
pub fn v3_root(registry: &Registry) -> Value {
    let mut paths = Map::new();
    for (group, versions) in registry.groups() {
        for version in versions {
            let doc = gv_doc(&registry.resources(&group, &version));
            let key = gv_key(&group, &version);
            paths.insert(
                key.clone(),
                json!({ "serverRelativeURL": format!("/openapi/v3/{key}?hash={}", hash_of(&doc)) }),
            );
        }
    }
    json!({ "paths": paths })
}

/// `/openapi/v3/api/v1` or `/openapi/v3/apis/{group}/{version}`.
pub fn v3_group_version(registry: &Registry, key: &str) -> Option<Value> {
    let parts: Vec<&str> = key.trim_matches('/').split('/').collect();
    let (group, version) = match parts.as_slice() {
        ["api", version] => ("", *version),
        ["apis", group, version] => (*group, *version),
        _ => return None,
    };
    if !registry.has_group_version(group, version) {
        return None;
    }
    Some(gv_doc(&registry.resources(group, version)))
}

/// `/openapi/v2`, as JSON.
pub fn v2(registry: &Registry) -> Value {
    let all = registry.all();
    let (_, definitions) = kind_schemas(all.iter().map(|d| d.as_ref()), Document::V2);
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0+atoll"},
        "paths": {},
        "definitions": definitions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_patch_operation_advertises_field_validation() {
        let registry = Registry::new();
        let root = v3_root(&registry);
        assert!(
            root["paths"]["api/v1"]["serverRelativeURL"]
                .as_str()
                .is_some_and(|u| u.starts_with("/openapi/v3/api/v1?hash="))
        );
        let doc = v3_group_version(&registry, "api/v1").unwrap_or_default();
        let patch = &doc["paths"]["/api/v1/namespaces/{namespace}/configmaps/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["kind"],
            "ConfigMap"
        );
        assert!(patch["parameters"].as_array().is_some_and(|p| {
            p.iter()
                .any(|p| p["name"] == "fieldValidation" && p["in"] == "query")
        }));
    }
}
