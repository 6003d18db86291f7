//! The generator of the committed table (`table/builtin.json`): every kind that upstream's
//! OpenAPI spec roots at a definition (`x-kubernetes-group-version-kind`, one per
//! definition), every definition those reach, each field's `x-kubernetes-patch-strategy` and
//! `x-kubernetes-patch-merge-key`, and the list and map types. Nothing is picked by hand but
//! [`ALIASES`]: the kinds served at versions newer than the spec's, rooted at the definition
//! of the version they succeed.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::schema::{Def, Field, ListTy, MapTy, Schema, StructDef, Ty};

/// The spec the table is generated from (committed under `spec/`).
pub const SPEC_FILE: &str = "spec/kubernetes-1.20.2.json";
/// The committed table.
pub const TABLE_FILE: &str = "table/builtin.json";

/// Kinds that Kubernetes 1.20's spec does not have, rooted at the 1.20 definition of the
/// version they succeed (ARCHITECTURE.md names the gap: fields added since 1.20 carry no
/// merge metadata).
pub const ALIASES: &[(&str, &str)] = &[
    (
        "autoscaling/v2/HorizontalPodAutoscaler",
        "autoscaling/v2beta2/HorizontalPodAutoscaler",
    ),
    ("batch/v1/CronJob", "batch/v1beta1/CronJob"),
    (
        "discovery.k8s.io/v1/EndpointSlice",
        "discovery.k8s.io/v1beta1/EndpointSlice",
    ),
    (
        "policy/v1/PodDisruptionBudget",
        "policy/v1beta1/PodDisruptionBudget",
    ),
];

/// Why the spec could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenerateError {
    #[error("the spec has no definitions")]
    NoDefinitions,
    #[error("the alias {0} names a kind the spec does not root")]
    UnknownAlias(String),
}

/// The table's text: the schema generated from `spec`, as pretty JSON with a final newline.
pub fn render(spec: &Value) -> Result<String, GenerateError> {
    let schema = generate(spec)?;
    let mut text = serde_json::to_string_pretty(&schema.to_table()).unwrap_or_default();
    text.push('\n');
    Ok(text)
}

/// The schema of every kind `spec` roots, and of the definitions they reach.
pub fn generate(spec: &Value) -> Result<Schema, GenerateError> {
    let defs = spec
        .get("definitions")
        .and_then(Value::as_object)
        .ok_or(GenerateError::NoDefinitions)?;
    let mut kinds = BTreeMap::new();
    for (name, def) in defs {
        let Some([gvk]) = def
            .get("x-kubernetes-group-version-kind")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
        else {
            continue;
        };
        let text = |k: &str| gvk.get(k).and_then(Value::as_str).unwrap_or_default();
        let api_version = match text("group") {
            "" => text("version").to_string(),
            group => format!("{group}/{}", text("version")),
        };
        kinds.insert(format!("{api_version}/{}", text("kind")), name.clone());
    }
    for (new, old) in ALIASES {
        let root = kinds
            .get(*old)
            .cloned()
            .ok_or_else(|| GenerateError::UnknownAlias((*old).to_string()))?;
        kinds.insert((*new).to_string(), root);
    }
    let mut schema = Schema {
        kinds,
        ..Schema::default()
    };
    let mut pending: Vec<String> = schema.kinds.values().cloned().collect();
    let mut seen: BTreeSet<String> = pending.iter().cloned().collect();
    while let Some(name) = pending.pop() {
        let Some(def) = defs.get(&name) else {
            continue;
        };
        let def = convert_def(&name, def);
        let mut refs = Vec::new();
        collect_refs(&def, &mut refs);
        for r in refs {
            if seen.insert(r.clone()) {
                pending.push(r);
            }
        }
        schema.defs.insert(name, def);
    }
    Ok(schema)
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

fn convert_def(name: &str, def: &Value) -> Def {
    let Some(properties) = def.get("properties").and_then(Value::as_object) else {
        return Def::Other(convert_ty(def));
    };
    let fields = properties
        .iter()
        .map(|(field, spec)| {
            (
                field.clone(),
                Field {
                    ty: convert_ty(spec),
                    patch_strategy: text(spec, "x-kubernetes-patch-strategy"),
                    patch_merge_key: text(spec, "x-kubernetes-patch-merge-key"),
                },
            )
        })
        .collect();
    let required = def
        .get("required")
        .and_then(Value::as_array)
        .map(|names| {
            names
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    Def::Struct(StructDef {
        go_name: name.rsplit('.').next().unwrap_or(name).to_string(),
        fields,
        required,
        map_type: text(def, "x-kubernetes-map-type"),
    })
}

fn convert_ty(spec: &Value) -> Ty {
    if let Some(r) = spec.get("$ref").and_then(Value::as_str) {
        return Ty::Ref(r.trim_start_matches("#/definitions/").to_string());
    }
    match spec.get("type").and_then(Value::as_str) {
        Some("array") => Ty::List(Box::new(ListTy {
            items: spec.get("items").map(convert_ty).unwrap_or(Ty::Untyped),
            list_type: text(spec, "x-kubernetes-list-type"),
            list_map_keys: spec
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|keys| {
                    keys.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
        })),
        Some("object") | None => match spec.get("additionalProperties") {
            Some(values @ Value::Object(_)) => Ty::Map(Box::new(MapTy {
                values: convert_ty(values),
                map_type: text(spec, "x-kubernetes-map-type"),
            })),
            _ => Ty::Untyped,
        },
        Some(_) => Ty::Scalar,
    }
}

fn collect_refs(def: &Def, out: &mut Vec<String>) {
    fn walk(ty: &Ty, out: &mut Vec<String>) {
        match ty {
            Ty::Ref(name) => out.push(name.clone()),
            Ty::List(list) => walk(&list.items, out),
            Ty::Map(map) => walk(&map.values, out),
            Ty::Scalar | Ty::Untyped => {}
        }
    }
    match def {
        Def::Struct(s) => s.fields.values().for_each(|f| walk(&f.ty, out)),
        Def::Other(ty) => walk(ty, out),
    }
}
