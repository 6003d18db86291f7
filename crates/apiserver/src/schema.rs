//! A CRD's structural OpenAPI v3 schema: validation of custom resources (type, required, enum,
//! bounds, lengths, pattern, item counts, nullable, int-or-string, preserve-unknown-fields,
//! embedded resources), defaulting, and pruning of unknown fields.

use serde_json::{Map, Value, json};

use crate::error::Cause;
use crate::storage::string_list;

fn is_preserve(schema: &Value) -> bool {
    schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true)
}

fn is_int_or_string(schema: &Value) -> bool {
    schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true)
}

fn is_embedded(schema: &Value) -> bool {
    schema
        .get("x-kubernetes-embedded-resource")
        .and_then(Value::as_bool)
        == Some(true)
}

/// Checks that a schema is structural enough to serve: the root is an object and every
/// node below has a type unless it is int-or-string or preserves unknown fields.
pub fn check_structural(schema: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    if schema.get("type").and_then(Value::as_str) != Some("object") {
        causes.push(Cause::invalid(
            ".type",
            schema.get("type").unwrap_or(&Value::Null),
            "must be object at the root",
        ));
    }
    check_node(schema, "", &mut causes, true);
    causes
}

fn check_node(schema: &Value, path: &str, causes: &mut Vec<Cause>, root: bool) {
    if !root && schema.get("type").is_none() && !is_int_or_string(schema) && !is_preserve(schema) {
        causes.push(Cause::required(
            format!("{path}.type"),
            "must not be empty for specified object fields",
        ));
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            check_node(v, &format!("{path}.properties[{k}]"), causes, false);
        }
    }
    if let Some(items) = schema.get("items") {
        check_node(items, &format!("{path}.items"), causes, false);
    }
    if let Some(additional) = schema.get("additionalProperties").filter(|a| a.is_object()) {
        check_node(
            additional,
            &format!("{path}.additionalProperties"),
            causes,
            false,
        );
    }
}

/// Validates a custom resource against its version's schema (metadata aside).
pub fn validate(schema: &Value, obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    if let (Some(props), Some(o)) = (
        schema.get("properties").and_then(Value::as_object),
        obj.as_object(),
    ) {
        for (k, sub) in props {
            if matches!(k.as_str(), "metadata" | "apiVersion" | "kind") {
                continue;
            }
            if let Some(v) = o.get(k) {
                validate_node(sub, v, k, &mut causes);
            }
        }
        for req in required(schema) {
            if !matches!(req.as_str(), "metadata" | "apiVersion" | "kind") && !o.contains_key(&req)
            {
                causes.push(Cause::required(req.clone(), ""));
            }
        }
    }
    causes
}

fn required(schema: &Value) -> Vec<String> {
    string_list(schema.get("required"))
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn validate_node(schema: &Value, v: &Value, path: &str, causes: &mut Vec<Cause>) {
    if v.is_null() {
        if schema.get("nullable").and_then(Value::as_bool) == Some(true) {
            return;
        }
        if is_preserve(schema) && schema.get("type").is_none() {
            return;
        }
    }
    let actual = type_name(v);
    if is_int_or_string(schema) {
        if !matches!(actual, "integer" | "string") {
            causes.push(Cause::invalid(
                path,
                v,
                format!("must be either an integer or a string, got {actual}"),
            ));
            return;
        }
    } else if let Some(expected) = schema.get("type").and_then(Value::as_str) {
        let ok = actual == expected || (expected == "number" && actual == "integer");
        if !ok {
            causes.push(Cause {
                reason: "FieldValueTypeInvalid",
                field: path.to_string(),
                message: format!(
                    "Invalid value: {:?}: {path} in body must be of type {expected}: {actual:?}",
                    actual
                ),
            });
            return;
        }
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array)
        && !values.contains(v)
    {
        causes.push(Cause::not_supported(
            path,
            v,
            &values
                .iter()
                .map(|e| {
                    e.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| e.to_string())
                })
                .collect::<Vec<_>>(),
        ));
    }
    match v {
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or_default();
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
                let exclusive =
                    schema.get("exclusiveMinimum").and_then(Value::as_bool) == Some(true);
                if x < min || (exclusive && x == min) {
                    let op = if exclusive {
                        "greater than"
                    } else {
                        "greater than or equal to"
                    };
                    causes.push(Cause::invalid(
                        path,
                        v,
                        format!("{path} in body should be {op} {min}"),
                    ));
                }
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
                let exclusive =
                    schema.get("exclusiveMaximum").and_then(Value::as_bool) == Some(true);
                if x > max || (exclusive && x == max) {
                    let op = if exclusive {
                        "less than"
                    } else {
                        "less than or equal to"
                    };
                    causes.push(Cause::invalid(
                        path,
                        v,
                        format!("{path} in body should be {op} {max}"),
                    ));
                }
            }
        }
        Value::String(s) => {
            let len = s.chars().count() as u64;
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
                && len < min
            {
                causes.push(Cause::invalid(
                    path,
                    v,
                    format!("{path} in body should be at least {min} chars long"),
                ));
            }
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                && len > max
            {
                causes.push(Cause {
                    reason: "FieldValueTooLong",
                    field: path.to_string(),
                    message: format!("Too long: may not be more than {max} bytes"),
                });
            }
            if let Some(pattern) = schema.get("pattern").and_then(Value::as_str)
                && let Ok(re) = regex::Regex::new(pattern)
                && !re.is_match(s)
            {
                causes.push(Cause::invalid(
                    path,
                    v,
                    format!("{path} in body should match '{pattern}'"),
                ));
            }
            if let Some(format) = schema.get("format").and_then(Value::as_str)
                && !format_ok(format, s)
            {
                causes.push(Cause::invalid(
                    path,
                    v,
                    format!("{path} in body must be of type {format}: {s:?}"),
                ));
            }
        }
        Value::Array(items) => {
            let n = items.len() as u64;
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && n < min
            {
                causes.push(Cause::invalid(
                    path,
                    v,
                    format!("{path} in body should have at least {min} items"),
                ));
            }
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && n > max
            {
                causes.push(Cause {
                    reason: "FieldValueTooMany",
                    field: path.to_string(),
                    message: format!("Too many: {n}: must have at most {max} items"),
                });
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    validate_node(item_schema, item, &format!("{path}[{i}]"), causes);
                }
            }
            validate_list_type(schema, items, path, causes);
        }
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            if let Some(props) = props {
                for (k, sub) in props {
                    if let Some(child) = map.get(k) {
                        validate_node(sub, child, &format!("{path}.{k}"), causes);
                    }
                }
            }
            if let Some(additional) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for (k, child) in map {
                    validate_node(additional, child, &format!("{path}[{k}]"), causes);
                }
            }
            for req in required(schema) {
                if !map.contains_key(&req) {
                    causes.push(Cause::required(format!("{path}.{req}"), ""));
                }
            }
            if is_embedded(schema) {
                for field in ["apiVersion", "kind"] {
                    if map
                        .get(field)
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                    {
                        causes.push(Cause::required(
                            format!("{path}.{field}"),
                            "must not be empty",
                        ));
                    }
                }
            }
            if let Some(min) = schema.get("minProperties").and_then(Value::as_u64)
                && (map.len() as u64) < min
            {
                causes.push(Cause::invalid(
                    path,
                    v,
                    format!("{path} in body should have at least {min} properties"),
                ));
            }
            if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
                && (map.len() as u64) > max
            {
                causes.push(Cause::invalid(
                    path,
                    v,
                    format!("{path} in body should have at most {max} properties"),
                ));
            }
        }
        _ => {}
    }
}

fn validate_list_type(schema: &Value, items: &[Value], path: &str, causes: &mut Vec<Cause>) {
    match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => {
            for (i, item) in items.iter().enumerate() {
                if items[..i].contains(item) {
                    causes.push(Cause::duplicate(format!("{path}[{i}]"), item));
                }
            }
        }
        Some("map") => {
            let keys: Vec<String> = schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|k| {
                    k.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            let key_of = |item: &Value| -> Vec<Value> {
                keys.iter()
                    .map(|k| item.get(k).cloned().unwrap_or(Value::Null))
                    .collect()
            };
            for (i, item) in items.iter().enumerate() {
                let key = key_of(item);
                if items[..i].iter().any(|other| key_of(other) == key) {
                    let shown: Map<String, Value> =
                        keys.iter().cloned().zip(key.iter().cloned()).collect();
                    causes.push(Cause::duplicate(
                        format!("{path}[{i}]"),
                        &Value::Object(shown),
                    ));
                }
            }
        }
        _ => {}
    }
}

fn format_ok(format: &str, s: &str) -> bool {
    match format {
        "date-time" => s.parse::<jiff::Timestamp>().is_ok(),
        "date" => s.parse::<jiff::civil::Date>().is_ok(),
        "int32" | "int64" | "byte" | "password" | "" => true,
        "ipv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<std::net::Ipv6Addr>().is_ok(),
        "uuid" => uuid::Uuid::parse_str(s).is_ok(),
        // Unknown formats are not validated, as upstream.
        _ => true,
    }
}

/// Applies defaults and prunes fields the schema does not know, in place (metadata aside).
pub fn default_and_prune(schema: &Value, obj: &mut Value) {
    let Some(o) = obj.as_object_mut() else {
        return;
    };
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    if !is_preserve(schema) {
        o.retain(|k, _| {
            matches!(k.as_str(), "apiVersion" | "kind" | "metadata") || props.contains_key(k)
        });
    }
    for (k, sub) in props {
        if matches!(k.as_str(), "metadata" | "apiVersion" | "kind") {
            continue;
        }
        if !o.contains_key(k)
            && let Some(d) = sub.get("default")
        {
            o.insert(k.clone(), d.clone());
        }
        if let Some(child) = o.get_mut(k) {
            walk(sub, child);
        }
    }
}

fn walk(schema: &Value, v: &mut Value) {
    match v {
        Value::Object(map) => {
            if is_embedded(schema) {
                // An embedded object's metadata is kept as is.
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            let keep_all = is_preserve(schema)
                || additional.is_some_and(|a| a.is_object() || a == &json!(true));
            if !keep_all {
                let known = |k: &str| {
                    props.is_some_and(|p| p.contains_key(k))
                        || (is_embedded(schema) && matches!(k, "apiVersion" | "kind" | "metadata"))
                };
                map.retain(|k, _| known(k));
            }
            if let Some(props) = props {
                for (k, sub) in props {
                    if !map.contains_key(k)
                        && let Some(d) = sub.get("default")
                    {
                        map.insert(k.clone(), d.clone());
                    }
                    if let Some(child) = map.get_mut(k) {
                        walk(sub, child);
                    }
                }
            } else if let Some(additional) = additional.filter(|a| a.is_object()) {
                for child in map.values_mut() {
                    walk(additional, child);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for item in items {
                    walk(item_schema, item);
                }
            }
        }
        _ => {}
    }
}

/// Paths of fields that pruning would drop: what `fieldValidation` reports as unknown.
pub fn unknown_fields(schema: &Value, obj: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let (Some(o), Some(props)) = (
        obj.as_object(),
        schema.get("properties").and_then(Value::as_object),
    ) else {
        return out;
    };
    for (k, v) in o {
        if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        match props.get(k) {
            Some(sub) => collect_unknown(sub, v, k, &mut out),
            None if !is_preserve(schema) => out.push(k.clone()),
            None => {}
        }
    }
    out
}

fn collect_unknown(schema: &Value, v: &Value, path: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            if is_preserve(schema) {
                return;
            }
            if let Some(additional) = additional.filter(|a| a.is_object()) {
                for (k, child) in map {
                    collect_unknown(additional, child, &format!("{path}.{k}"), out);
                }
                return;
            }
            if additional == Some(&json!(true)) {
                return;
            }
            for (k, child) in map {
                match props.and_then(|p| p.get(k)) {
                    Some(sub) => collect_unknown(sub, child, &format!("{path}.{k}"), out),
                    None if is_embedded(schema)
                        && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") => {}
                    None => out.push(format!("{path}.{k}")),
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    collect_unknown(item_schema, item, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["size"],
                    "properties": {
                        "size": {"type": "integer", "minimum": 1, "maximum": 10},
                        "mode": {"type": "string", "enum": ["a", "b"], "default": "a"},
                        "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 5},
                        "port": {"x-kubernetes-int-or-string": true},
                        "tags": {"type": "array", "maxItems": 2, "items": {"type": "string"}, "x-kubernetes-list-type": "set"},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "opt": {"type": "string", "nullable": true}
                    }
                }
            }
        })
    }

    #[test]
    fn validation_names_each_failing_field() {
        let s = schema();
        let ok = json!({"spec": {"size": 3, "mode": "b", "name": "abc", "port": "http", "tags": ["x"], "opt": null}});
        assert_eq!(validate(&s, &ok), vec![]);
        let bad = json!({"spec": {"size": 11, "mode": "c", "name": "ABCDEFG", "port": true, "tags": ["x", "x", "y"]}});
        let fields: Vec<String> = validate(&s, &bad).into_iter().map(|c| c.field).collect();
        assert_eq!(
            fields,
            vec![
                "spec.mode",
                "spec.name",
                "spec.name",
                "spec.port",
                "spec.size",
                "spec.tags",
                "spec.tags[1]"
            ]
        );
        let missing = json!({"spec": {}});
        assert_eq!(validate(&s, &missing)[0].field, "spec.size");
        let wrong = json!({"spec": {"size": "3"}});
        assert_eq!(validate(&s, &wrong)[0].reason, "FieldValueTypeInvalid");
    }

    #[test]
    fn defaults_are_applied_and_unknown_fields_pruned() {
        let s = schema();
        let mut obj = json!({"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "a"}, "extra": 1,
            "spec": {"size": 1, "unknown": true, "free": {"any": {"thing": 1}}}});
        default_and_prune(&s, &mut obj);
        assert_eq!(
            obj,
            json!({"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "a"},
                "spec": {"size": 1, "mode": "a", "free": {"any": {"thing": 1}}}})
        );
    }
}
