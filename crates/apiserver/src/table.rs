//! `kubectl get` output: meta.k8s.io/v1 Table answers, with a CRD's additionalPrinterColumns
//! or built-in columns, and ages rendered as kube-apiserver renders them.

use serde_json::{Value, json};

use crate::registry::{PrinterColumn, ResourceDef};

mod jsonpath;

/// kube's `duration.HumanDuration`.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        return with_remainder(minutes, 'm', seconds % 60, 's');
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        return with_remainder(hours, 'h', minutes % 60, 'm');
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        return with_remainder(hours / 24, 'd', hours % 24, 'h');
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        return with_remainder(hours / 24 / 365, 'y', (hours / 24) % 365, 'd');
    }
    format!("{}y", hours / 24 / 365)
}

/// `5m` or `5m3s`: the smaller unit is shown only when it is not zero, as kube prints it.
fn with_remainder(whole: i64, unit: char, rest: i64, rest_unit: char) -> String {
    if rest == 0 {
        format!("{whole}{unit}")
    } else {
        format!("{whole}{unit}{rest}{rest_unit}")
    }
}

fn age(timestamp: Option<&str>) -> String {
    let Some(ts) = timestamp.and_then(|t| t.parse::<jiff::Timestamp>().ok()) else {
        return "<unknown>".into();
    };
    human_duration(jiff::Timestamp::now().as_second() - ts.as_second())
}

/// Evaluates a printer column's JSONPath as kube-apiserver does (see [`jsonpath`]).
pub fn json_path<'a>(obj: &'a Value, path: &str) -> Vec<&'a Value> {
    jsonpath::find(obj, path)
}

/// A printer column's cell, as upstream's CRD table convertor makes it: the first value the
/// path finds (or nothing), converted to the column's type; a value of another type is empty.
fn cell(obj: &Value, col: &PrinterColumn) -> Value {
    let values = json_path(obj, &col.json_path);
    let Some(first) = values.first() else {
        return Value::Null;
    };
    match (col.type_.as_str(), first) {
        (_, Value::Null) => Value::Null,
        ("string", value) => json!(jsonpath::to_text(value)),
        ("integer", Value::Number(n)) => match n.as_i64() {
            Some(i) => json!(i),
            // float64 to int64 truncates toward zero, as Go converts it.
            None => n
                .as_f64()
                .map(|f| json!(f.trunc() as i64))
                .unwrap_or(Value::Null),
        },
        ("number", Value::Number(_)) | ("boolean", Value::Bool(_)) => (*first).clone(),
        ("date", Value::String(s)) => match s.parse::<jiff::Timestamp>() {
            Ok(_) => json!(age(Some(s))),
            Err(_) => json!("<invalid>"),
        },
        _ => Value::Null,
    }
}

fn count(v: Option<&Value>) -> usize {
    v.and_then(Value::as_object).map(|m| m.len()).unwrap_or(0)
}

fn col(name: &str, type_: &str, description: &str) -> Value {
    json!({ "name": name, "type": type_, "format": "", "description": description, "priority": 0 })
}

/// The columns after NAME and their cells, for built-in kinds.
/// Computes a row's cells after NAME.
type Cells = Box<dyn Fn(&Value) -> Vec<Value>>;

fn builtin_columns(def: &ResourceDef) -> (Vec<Value>, Cells) {
    let created = |o: &Value| {
        o.pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    match (def.group.as_str(), def.kind.as_str()) {
        ("", "ConfigMap") => (
            vec![
                col("Data", "integer", "Number of data entries"),
                col("Age", "string", "CreationTimestamp"),
            ],
            Box::new(move |o| {
                vec![
                    json!(count(o.get("data")) + count(o.get("binaryData"))),
                    json!(age(created(o).as_deref())),
                ]
            }),
        ),
        ("", "Secret") => (
            vec![
                col("Type", "string", "The type of the secret"),
                col("Data", "integer", "Number of data entries"),
                col("Age", "string", "CreationTimestamp"),
            ],
            Box::new(move |o| {
                vec![
                    o.get("type").cloned().unwrap_or(json!("")),
                    json!(count(o.get("data"))),
                    json!(age(created(o).as_deref())),
                ]
            }),
        ),
        ("", "Namespace") => (
            vec![
                col("Status", "string", "The status of the namespace"),
                col("Age", "string", "CreationTimestamp"),
            ],
            Box::new(move |o| {
                vec![
                    o.pointer("/status/phase").cloned().unwrap_or(json!("")),
                    json!(age(created(o).as_deref())),
                ]
            }),
        ),
        ("", "ServiceAccount") => (
            vec![
                col("Secrets", "string", "Number of secrets"),
                col("Age", "string", "CreationTimestamp"),
            ],
            Box::new(move |o| {
                vec![
                    json!(
                        o.get("secrets")
                            .and_then(Value::as_array)
                            .map(Vec::len)
                            .unwrap_or(0)
                    ),
                    json!(age(created(o).as_deref())),
                ]
            }),
        ),
        ("coordination.k8s.io", "Lease") => (
            vec![
                col("Holder", "string", "The holder of the lease"),
                col("Age", "string", "CreationTimestamp"),
            ],
            Box::new(move |o| {
                vec![
                    o.pointer("/spec/holderIdentity")
                        .cloned()
                        .unwrap_or(json!("")),
                    json!(age(created(o).as_deref())),
                ]
            }),
        ),
        ("certificates.k8s.io", "CertificateSigningRequest") => (
            vec![
                col("Age", "string", "CreationTimestamp"),
                col("SignerName", "string", "The signer of the request"),
                col("Requestor", "string", "Who sent the request"),
                col("RequestedDuration", "string", "spec.expirationSeconds"),
                col("Condition", "string", "The conditions of the request"),
            ],
            Box::new(move |o| {
                let (signer, requestor, duration, condition) = crate::certificates::table_cells(o);
                vec![
                    json!(age(created(o).as_deref())),
                    json!(signer),
                    json!(requestor),
                    json!(duration),
                    json!(condition),
                ]
            }),
        ),
        ("rbac.authorization.k8s.io", _) | ("apiextensions.k8s.io", _) => (
            vec![col("Created At", "date", "CreationTimestamp")],
            Box::new(move |o| vec![json!(created(o).unwrap_or_default())]),
        ),
        _ => (
            vec![col("Age", "string", "CreationTimestamp")],
            Box::new(move |o| vec![json!(age(created(o).as_deref()))]),
        ),
    }
}

/// A Table of the objects in `list` (a list, or one object wrapped as a one-item list).
pub fn to_table(def: &ResourceDef, list: &Value, include_object: &str) -> Value {
    let mut columns = vec![json!({
        "name": "Name", "type": "string", "format": "name", "priority": 0,
        "description": "Name must be unique within a namespace.",
    })];
    let cells: Cells = if def.custom && !def.printer_columns.is_empty() {
        for c in &def.printer_columns {
            columns.push(json!({
                "name": c.name, "type": if c.type_ == "date" { "date" } else { c.type_.as_str() },
                "format": "", "description": c.description, "priority": c.priority,
            }));
        }
        let cols = def.printer_columns.clone();
        Box::new(move |o| cols.iter().map(|c| cell(o, c)).collect())
    } else {
        let (extra, f) = builtin_columns(def);
        columns.extend(extra);
        f
    };
    let rows: Vec<Value> = list["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|obj| {
                    let mut row_cells =
                        vec![obj.pointer("/metadata/name").cloned().unwrap_or(json!(""))];
                    row_cells.extend(cells(obj));
                    let object = match include_object {
                        "None" => Value::Null,
                        "Object" => obj.clone(),
                        _ => json!({
                            "kind": "PartialObjectMetadata",
                            "apiVersion": "meta.k8s.io/v1",
                            "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
                        }),
                    };
                    json!({ "cells": row_cells, "object": object })
                })
                .collect()
        })
        .unwrap_or_default();
    let mut metadata = json!({});
    if let Some(rv) = list.pointer("/metadata/resourceVersion") {
        metadata["resourceVersion"] = rv.clone();
    }
    if let Some(c) = list.pointer("/metadata/continue") {
        metadata["continue"] = c.clone();
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": columns,
        "rows": rows,
    })
}

/// An object as `PartialObjectMetadata` (`Accept: ...;as=PartialObjectMetadata;g=meta.k8s.io;v=v1`):
/// its metadata only, as metadata-only clients (client-go's metadata client, kube-rs'
/// `*_metadata` calls) ask for it.
pub fn to_partial_metadata(obj: &Value) -> Value {
    json!({
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadata",
        "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

/// A list as `PartialObjectMetadataList`: the list's metadata and each item's.
pub fn to_partial_metadata_list(list: &Value) -> Value {
    let items: Vec<Value> = list
        .get("items")
        .and_then(Value::as_array)
        .map(|items| items.iter().map(to_partial_metadata).collect())
        .unwrap_or_default();
    json!({
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadataList",
        "metadata": list.get("metadata").cloned().unwrap_or_else(|| json!({})),
        "items": items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_kubectl_prints_them() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(125), "2m5s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 60), "3h1m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(3 * 86400 + 3600), "3d1h");
        assert_eq!(human_duration(100 * 86400), "100d");
    }

    #[test]
    fn json_paths_cover_printer_column_forms() {
        let obj = json!({"status": {"conditions": [{"type": "A", "status": "False"}, {"type": "Ready", "status": "True"}]}, "spec": {"n": 3}});
        assert_eq!(json_path(&obj, ".spec.n"), vec![&json!(3)]);
        assert_eq!(
            json_path(&obj, ".status.conditions[?(@.type==\"Ready\")].status"),
            vec![&json!("True")]
        );
        assert_eq!(
            json_path(&obj, ".status.conditions[0].type"),
            vec![&json!("A")]
        );
        assert_eq!(json_path(&obj, ".status.conditions[*].type").len(), 2);
        assert!(json_path(&obj, ".missing.x").is_empty());
    }
}
