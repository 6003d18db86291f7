//! CEL validation rules of a CRD's structural schema (`x-kubernetes-validations`), evaluated with
//! the `cel` crate as kube-apiserver evaluates them with cel-go.
//!
//! Rules are compiled once, when a CRD's kinds start being served ([`compile`]), into a
//! [`RuleNode`] tree that mirrors the schema only where rules are; [`evaluate`] walks it beside
//! the object. `self` is the value at the rule's schema node; a rule referring to `oldSelf` (a
//! transition rule) runs only on update and only where the old object has a value at the same
//! path; absent and null values are skipped. Errors are worded as current kube-apiserver words
//! them (Kubernetes 1.20 has no CEL, so the differential suite cannot compare them).
//!
//! Known differences from cel-go: no static type checking (a rule that does not evaluate to a
//! bool fails at run time instead of at CRD creation), no cost budget, no `timestamp` and
//! `duration` types, and property names are not escaped (`__dash__`...).

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use cel::objects::{Key, Map};
use cel::{Context, Env, Program};
use serde_json::{Value, json};

use crate::error::Cause;

/// The reasons a rule may name, as upstream allows them.
const REASONS: [&str; 4] = [
    "FieldValueInvalid",
    "FieldValueForbidden",
    "FieldValueRequired",
    "FieldValueDuplicate",
];

/// The identifiers a rule may use without declaring them: the two variables and CEL's type
/// names (`type(self) == string`).
const DECLARED: [&str; 13] = [
    "self",
    "oldSelf",
    "int",
    "uint",
    "double",
    "bool",
    "string",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
    "dyn",
];

/// The CEL environment every rule is compiled and run in: the standard library with the
/// strings and lists extensions Kubernetes also enables.
fn env() -> Option<Arc<Env>> {
    static ENV: OnceLock<Option<Arc<Env>>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Env::stdlib();
        let extended = env
            .add_extension(cel::extensions::strings)
            .and_then(|()| env.add_extension(cel::extensions::lists));
        match extended {
            Ok(()) => Some(Arc::new(env)),
            Err(e) => {
                tracing::error!(error = %e, "the CEL environment could not be built");
                None
            }
        }
    })
    .clone()
}

/// One compiled rule.
#[derive(Debug)]
struct CompiledRule {
    rule: String,
    program: Program,
    message: String,
    message_expression: Option<Program>,
    reason: String,
    /// Path segments from `fieldPath`, appended to the node's path on failure.
    field_path: Vec<String>,
    transition: bool,
}

/// The rules of one schema node and of the nodes below it that have any.
#[derive(Debug, Default)]
pub struct RuleNode {
    rules: Vec<CompiledRule>,
    properties: Vec<(String, RuleNode)>,
    additional: Option<Box<RuleNode>>,
    items: Option<Box<RuleNode>>,
}

impl RuleNode {
    fn is_empty(&self) -> bool {
        self.rules.is_empty()
            && self.properties.is_empty()
            && self.additional.is_none()
            && self.items.is_none()
    }
}

/// Compiles every rule of a schema. `Ok(None)` when it has none; `Err` lists each rule that
/// does not compile, with its field below the schema (`.properties[spec]...`).
pub fn compile(schema: &Value) -> Result<Option<Arc<RuleNode>>, Vec<Cause>> {
    let mut causes = Vec::new();
    let Some(env) = env() else {
        return Ok(None);
    };
    let node = compile_node(&env, schema, schema, "", &mut causes);
    if !causes.is_empty() {
        return Err(causes);
    }
    Ok((!node.is_empty()).then(|| Arc::new(node)))
}

fn compile_node(
    env: &Env,
    root: &Value,
    schema: &Value,
    path: &str,
    causes: &mut Vec<Cause>,
) -> RuleNode {
    let mut node = RuleNode::default();
    if let Some(rules) = schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
    {
        for (i, rule) in rules.iter().enumerate() {
            let at = format!("{path}.x-kubernetes-validations[{i}]");
            if let Some(compiled) = compile_rule(env, schema, rule, &at, causes) {
                node.rules.push(compiled);
            }
        }
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (k, sub) in props {
            // ObjectMeta is not walked: only name and generateName are visible to root rules.
            if std::ptr::eq(schema, root) && k == "metadata" {
                continue;
            }
            let child = compile_node(env, root, sub, &format!("{path}.properties[{k}]"), causes);
            if !child.is_empty() {
                node.properties.push((k.clone(), child));
            }
        }
    }
    if let Some(additional) = schema.get("additionalProperties").filter(|a| a.is_object()) {
        let child = compile_node(
            env,
            root,
            additional,
            &format!("{path}.additionalProperties"),
            causes,
        );
        if !child.is_empty() {
            node.additional = Some(Box::new(child));
        }
    }
    if let Some(items) = schema.get("items").filter(|i| i.is_object()) {
        let child = compile_node(env, root, items, &format!("{path}.items"), causes);
        if !child.is_empty() {
            node.items = Some(Box::new(child));
        }
    }
    node
}

/// Upstream shows the offending rule as the Go value it decoded.
fn shown_rule(rule: &Value) -> String {
    let s = |k: &str| rule.get(k).and_then(Value::as_str).unwrap_or_default();
    let reason = match rule.get("reason").and_then(Value::as_str) {
        Some(r) => format!("{r:?}"),
        None => "(*apiextensions.FieldValueErrorReason)(nil)".to_string(),
    };
    format!(
        "apiextensions.ValidationRule{{Rule:{:?}, Message:{:?}, MessageExpression:{:?}, Reason:{reason}, FieldPath:{:?}, OptionalOldSelf:(*bool)(nil)}}",
        s("rule"),
        s("message"),
        s("messageExpression"),
        s("fieldPath")
    )
}

fn compile_failure(field: String, rule: &Value, detail: String) -> Cause {
    Cause {
        reason: "FieldValueInvalid",
        field,
        message: format!("Invalid value: {}: {detail}", shown_rule(rule)),
    }
}

fn compile_rule(
    env: &Env,
    schema: &Value,
    rule: &Value,
    at: &str,
    causes: &mut Vec<Cause>,
) -> Option<CompiledRule> {
    let text = rule
        .get("rule")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .trim()
        .to_string();
    if text.is_empty() {
        causes.push(Cause::required(
            format!("{at}.rule"),
            "rule is not specified",
        ));
        return None;
    }
    let program = match compile_expression(env, &text) {
        Ok(p) => p,
        Err(e) => {
            causes.push(compile_failure(
                format!("{at}.rule"),
                rule,
                format!("compilation failed: {e}"),
            ));
            return None;
        }
    };
    let message_expression = match rule
        .get("messageExpression")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        Some(m) => match compile_expression(env, m) {
            Ok(p) => Some(p),
            Err(e) => {
                causes.push(compile_failure(
                    format!("{at}.messageExpression"),
                    rule,
                    format!("messageExpression compilation failed: {e}"),
                ));
                return None;
            }
        },
        None => None,
    };
    let reason = rule
        .get("reason")
        .and_then(Value::as_str)
        .unwrap_or("FieldValueInvalid")
        .to_string();
    if !REASONS.contains(&reason.as_str()) {
        causes.push(Cause::not_supported(
            format!("{at}.reason"),
            &json!(reason),
            &REASONS.map(str::to_string),
        ));
        return None;
    }
    let field_path = match rule.get("fieldPath").and_then(Value::as_str) {
        Some(fp) if !fp.is_empty() => match parse_field_path(schema, fp) {
            Ok(segments) => segments,
            Err(why) => {
                causes.push(Cause::invalid(format!("{at}.fieldPath"), &json!(fp), why));
                return None;
            }
        },
        _ => Vec::new(),
    };
    let message = match rule.get("message").and_then(Value::as_str).map(str::trim) {
        Some(m) if !m.is_empty() => m.to_string(),
        _ => format!("failed rule: {text}"),
    };
    let mut free = BTreeSet::new();
    free_identifiers(program.expression(), &mut Vec::new(), &mut free);
    Some(CompiledRule {
        transition: free.contains("oldSelf"),
        rule: text,
        program,
        message,
        message_expression,
        reason,
        field_path,
    })
}

/// Parses, then refuses identifiers other than `self`, `oldSelf` and type names, as cel-go's
/// checker does.
fn compile_expression(env: &Env, text: &str) -> Result<Program, String> {
    let program = env.compile(text).map_err(|e| e.to_string())?;
    let mut free = BTreeSet::new();
    free_identifiers(program.expression(), &mut Vec::new(), &mut free);
    if let Some(unknown) = free.iter().find(|v| !DECLARED.contains(&v.as_str())) {
        return Err(format!(
            "ERROR: <input>:1:1: undeclared reference to '{unknown}' (in container '')"
        ));
    }
    Ok(program)
}

/// Identifiers not bound by a comprehension (`all`, `exists`, `map`...).
fn free_identifiers(e: &IdedExpr, bound: &mut Vec<String>, out: &mut BTreeSet<String>) {
    match &e.expr {
        Expr::Unspecified | Expr::Literal(_) => {}
        Expr::Ident(name) => {
            if !name.starts_with('@') && !bound.contains(name) {
                out.insert(name.clone());
            }
        }
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                free_identifiers(target, bound, out);
            }
            for arg in &call.args {
                free_identifiers(arg, bound, out);
            }
        }
        Expr::Select(select) => free_identifiers(&select.operand, bound, out),
        Expr::List(list) => {
            for el in &list.elements {
                free_identifiers(el, bound, out);
            }
        }
        Expr::Map(map) => {
            for entry in &map.entries {
                entry_identifiers(&entry.expr, bound, out);
            }
        }
        Expr::Struct(st) => {
            for entry in &st.entries {
                entry_identifiers(&entry.expr, bound, out);
            }
        }
        Expr::Comprehension(c) => {
            free_identifiers(&c.iter_range, bound, out);
            free_identifiers(&c.accu_init, bound, out);
            let depth = bound.len();
            bound.push(c.iter_var.clone());
            bound.extend(c.iter_var2.clone());
            bound.push(c.accu_var.clone());
            free_identifiers(&c.loop_cond, bound, out);
            free_identifiers(&c.loop_step, bound, out);
            free_identifiers(&c.result, bound, out);
            bound.truncate(depth);
        }
    }
}

fn entry_identifiers(e: &EntryExpr, bound: &mut Vec<String>, out: &mut BTreeSet<String>) {
    match e {
        EntryExpr::StructField(f) => free_identifiers(&f.value, bound, out),
        EntryExpr::MapEntry(m) => {
            free_identifiers(&m.key, bound, out);
            free_identifiers(&m.value, bound, out);
        }
    }
}

/// Parses a rule's `fieldPath` (`.a.b`, `['a.b']`) into property names that must exist in the
/// schema below the rule; numeric indices are not supported, as upstream.
fn parse_field_path(schema: &Value, fp: &str) -> Result<Vec<String>, String> {
    let mut segments = Vec::new();
    let mut rest = fp;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("['") {
            let end = after
                .find("']")
                .ok_or_else(|| format!("unclosed bracket in fieldPath {fp:?}"))?;
            segments.push(after[..end].to_string());
            rest = &after[end + 2..];
        } else if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            if end == 0 {
                return Err(format!("invalid fieldPath {fp:?}"));
            }
            segments.push(after[..end].to_string());
            rest = &after[end..];
        } else {
            return Err(format!(
                "fieldPath must start with '.' or '[': {fp:?} (numeric indices are not supported)"
            ));
        }
    }
    let mut node = schema;
    for seg in &segments {
        node = node
            .get("properties")
            .and_then(|p| p.get(seg))
            .or_else(|| node.get("additionalProperties").filter(|a| a.is_object()))
            .ok_or_else(|| {
                format!(
                    "fieldPath must be a valid path: does not refer to an existing field: {seg}"
                )
            })?;
    }
    Ok(segments)
}

/// Evaluates the rules against an object (and, on update, the object before).
pub fn evaluate(schema: &Value, rules: &RuleNode, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    let Some(env) = env() else {
        return causes;
    };
    if !rules.rules.is_empty() {
        let visible = |o: &Value| {
            let mut v = o.clone();
            if let Some(map) = v.as_object_mut()
                && let Some(meta) = map.get("metadata").and_then(Value::as_object)
            {
                let kept: serde_json::Map<String, Value> = meta
                    .iter()
                    .filter(|(k, _)| matches!(k.as_str(), "name" | "generateName"))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                map.insert("metadata".into(), Value::Object(kept));
            }
            v
        };
        let old_visible = old.map(visible);
        // Upstream validates custom resources from a nil field path, printed as "<nil>".
        run_rules(
            &env,
            schema,
            &rules.rules,
            &visible(obj),
            old_visible.as_ref(),
            "<nil>",
            &mut causes,
        );
    }
    walk_children(&env, schema, rules, obj, old, "", &mut causes);
    causes
}

fn child_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn walk(
    env: &Arc<Env>,
    schema: &Value,
    rules: &RuleNode,
    v: &Value,
    old: Option<&Value>,
    path: &str,
    causes: &mut Vec<Cause>,
) {
    if v.is_null() {
        return;
    }
    run_rules(env, schema, &rules.rules, v, old, path, causes);
    walk_children(env, schema, rules, v, old, path, causes);
}

fn walk_children(
    env: &Arc<Env>,
    schema: &Value,
    rules: &RuleNode,
    v: &Value,
    old: Option<&Value>,
    path: &str,
    causes: &mut Vec<Cause>,
) {
    match v {
        Value::Object(map) => {
            for (k, sub_rules) in &rules.properties {
                if let (Some(child), Some(sub)) =
                    (map.get(k), schema.get("properties").and_then(|p| p.get(k)))
                {
                    let old_child = old.and_then(|o| o.get(k));
                    walk(
                        env,
                        sub,
                        sub_rules,
                        child,
                        old_child,
                        &child_path(path, k),
                        causes,
                    );
                }
            }
            if let (Some(sub_rules), Some(sub)) =
                (&rules.additional, schema.get("additionalProperties"))
            {
                for (k, child) in map {
                    let old_child = old.and_then(|o| o.get(k));
                    walk(
                        env,
                        sub,
                        sub_rules,
                        child,
                        old_child,
                        &format!("{path}[{k}]"),
                        causes,
                    );
                }
            }
        }
        Value::Array(items) => {
            if let (Some(sub_rules), Some(sub)) = (&rules.items, schema.get("items")) {
                let keys = map_keys(schema);
                for (i, item) in items.iter().enumerate() {
                    // Only items of a map-list correlate with the old list (by their keys),
                    // as upstream.
                    let old_item = match (&keys, old.and_then(Value::as_array)) {
                        (Some(keys), Some(old_items)) => old_items.iter().find(|o| {
                            keys.iter()
                                .all(|k| o.get(k.as_str()) == item.get(k.as_str()))
                        }),
                        _ => None,
                    };
                    walk(
                        env,
                        sub,
                        sub_rules,
                        item,
                        old_item,
                        &format!("{path}[{i}]"),
                        causes,
                    );
                }
            }
        }
        _ => {}
    }
}

fn map_keys(schema: &Value) -> Option<Vec<String>> {
    if schema.get("x-kubernetes-list-type").and_then(Value::as_str) != Some("map") {
        return None;
    }
    schema
        .get("x-kubernetes-list-map-keys")
        .and_then(Value::as_array)
        .map(|k| {
            k.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
}

fn run_rules(
    env: &Arc<Env>,
    schema: &Value,
    rules: &[CompiledRule],
    v: &Value,
    old: Option<&Value>,
    path: &str,
    causes: &mut Vec<Cause>,
) {
    if rules.is_empty() {
        return;
    }
    let type_name = schema
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let shown_type = json!(type_name);
    let mut ctx = Context::with_env(Arc::clone(env));
    ctx.add_variable_from_value("self", to_cel(schema, v));
    let old_cel = old.filter(|o| !o.is_null()).map(|o| to_cel(schema, o));
    if let Some(o) = &old_cel {
        ctx.add_variable_from_value("oldSelf", o.clone());
    }
    for rule in rules {
        if rule.transition && old_cel.is_none() {
            continue;
        }
        let result = rule.program.execute(&ctx);
        let failed_path = if rule.field_path.is_empty() {
            path.to_string()
        } else {
            let mut p = if path == "<nil>" {
                String::new()
            } else {
                path.to_string()
            };
            for seg in &rule.field_path {
                p = child_path(&p, seg);
            }
            p
        };
        match result {
            Ok(cel::Value::Bool(true)) => {}
            Ok(_) => {
                let message = rule
                    .message_expression
                    .as_ref()
                    .and_then(|m| match m.execute(&ctx) {
                        Ok(cel::Value::String(s)) if !s.trim().is_empty() && !s.contains('\n') => {
                            Some(s.trim().to_string())
                        }
                        _ => None,
                    })
                    .unwrap_or_else(|| rule.message.clone());
                causes.push(match rule.reason.as_str() {
                    "FieldValueForbidden" => Cause::forbidden(failed_path, message),
                    "FieldValueRequired" => Cause::required(failed_path, message),
                    "FieldValueDuplicate" => Cause::duplicate(failed_path, &shown_type),
                    _ => Cause::invalid(failed_path, &shown_type, message),
                });
            }
            Err(e) => {
                let mut detail = String::new();
                let _ = write!(detail, "{e} evaluating rule: {}", rule.rule);
                causes.push(Cause::invalid(path.to_string(), &shown_type, detail));
            }
        }
    }
}

/// A JSON value as CEL sees it: integers are `int` unless the schema says `number`.
fn to_cel(schema: &Value, v: &Value) -> cel::Value {
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => {
            let is_number = schema.get("type").and_then(Value::as_str) == Some("number");
            match n.as_i64() {
                Some(i) if !is_number => cel::Value::Int(i),
                _ => match n.as_u64() {
                    Some(u) if !is_number && n.as_i64().is_none() => cel::Value::UInt(u),
                    _ => cel::Value::Float(n.as_f64().unwrap_or_default()),
                },
            }
        }
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(items) => {
            let item_schema = schema.get("items").unwrap_or(&Value::Null);
            cel::Value::List(Arc::new(
                items.iter().map(|i| to_cel(item_schema, i)).collect(),
            ))
        }
        Value::Object(map) => {
            let props = schema.get("properties");
            let additional = schema.get("additionalProperties");
            let out: HashMap<Key, cel::Value> = map
                .iter()
                .map(|(k, child)| {
                    let sub = props
                        .and_then(|p| p.get(k))
                        .or(additional)
                        .unwrap_or(&Value::Null);
                    (Key::String(Arc::new(k.clone())), to_cel(sub, child))
                })
                .collect();
            cel::Value::Map(Map { map: Arc::new(out) })
        }
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
                    "x-kubernetes-validations": [
                        {"rule": "self.min <= self.max", "message": "min must not exceed max"},
                        {"rule": "self.tags.size() < 3", "fieldPath": ".tags", "reason": "FieldValueForbidden"},
                        {"rule": "!has(self.legacy)", "messageExpression": "'legacy is ' + self.legacy"},
                        {"rule": "self.tags.all(t, t.startsWith('x-'))"}
                    ],
                    "properties": {
                        "min": {"type": "integer"},
                        "max": {"type": "integer"},
                        "legacy": {"type": "string"},
                        "tags": {"type": "array", "items": {"type": "string"}},
                        "owner": {"type": "string", "x-kubernetes-validations": [
                            {"rule": "self == oldSelf", "message": "owner is immutable"}
                        ]}
                    }
                }
            }
        })
    }

    #[test]
    fn rules_run_at_their_node_with_their_reason_and_message() -> Result<(), String> {
        let s = schema();
        let rules = compile(&s)
            .map_err(|c| format!("{c:?}"))?
            .ok_or("no rules")?;
        let ok = json!({"spec": {"min": 1, "max": 2, "tags": ["x-a"], "owner": "a"}});
        assert_eq!(evaluate(&s, &rules, &ok, None), vec![]);
        let bad = json!({"spec": {"min": 3, "max": 2, "tags": ["x-a", "b", "x-c"], "legacy": "on", "owner": "b"}});
        let texts: Vec<String> = evaluate(&s, &rules, &bad, Some(&ok))
            .iter()
            .map(Cause::to_text)
            .collect();
        assert_eq!(
            texts,
            vec![
                "spec: Invalid value: \"object\": min must not exceed max",
                "spec.tags: Forbidden: failed rule: self.tags.size() < 3",
                "spec: Invalid value: \"object\": legacy is on",
                "spec: Invalid value: \"object\": failed rule: self.tags.all(t, t.startsWith('x-'))",
                "spec.owner: Invalid value: \"string\": owner is immutable",
            ]
        );
        Ok(())
    }

    #[test]
    fn root_rules_see_the_name_and_transition_rules_follow_map_list_keys() -> Result<(), String> {
        let s = json!({
            "type": "object",
            "x-kubernetes-validations": [
                {"rule": "self.metadata.name.startsWith('p-')", "fieldPath": ".spec"}
            ],
            "properties": {
                "metadata": {"type": "object"},
                "spec": {"type": "object", "properties": {
                    "ports": {"type": "array", "x-kubernetes-list-type": "map",
                        "x-kubernetes-list-map-keys": ["name"],
                        "items": {"type": "object",
                            "x-kubernetes-validations": [{"rule": "self.number == oldSelf.number", "message": "number is immutable"}],
                            "properties": {"name": {"type": "string"}, "number": {"type": "integer"}}}}
                }}
            }
        });
        let rules = compile(&s)
            .map_err(|c| format!("{c:?}"))?
            .ok_or("no rules")?;
        let old = json!({"metadata": {"name": "p-1", "uid": "u"}, "spec": {"ports": [{"name": "a", "number": 1}]}});
        // On create, the transition rule does not run.
        assert_eq!(evaluate(&s, &rules, &old, None), vec![]);
        // A new item has no old self; a moved item is matched by its key.
        let moved = json!({"metadata": {"name": "p-1"}, "spec": {"ports": [{"name": "b", "number": 9}, {"name": "a", "number": 1}]}});
        assert_eq!(evaluate(&s, &rules, &moved, Some(&old)), vec![]);
        let changed =
            json!({"metadata": {"name": "x"}, "spec": {"ports": [{"name": "a", "number": 2}]}});
        let texts: Vec<String> = evaluate(&s, &rules, &changed, Some(&old))
            .iter()
            .map(Cause::to_text)
            .collect();
        assert_eq!(
            texts,
            vec![
                "spec: Invalid value: \"object\": failed rule: self.metadata.name.startsWith('p-')",
                "spec.ports[0]: Invalid value: \"object\": number is immutable",
            ]
        );
        Ok(())
    }

    #[test]
    fn bad_rules_do_not_compile() {
        let s = json!({"type": "object", "properties": {"spec": {"type": "object",
            "x-kubernetes-validations": [{"rule": "self.a <"}, {"rule": "other == 1"}, {"rule": "self.all(k, k != '')"}]}}});
        let fields: Vec<String> = compile(&s)
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.field)
            .collect();
        assert_eq!(
            fields,
            vec![
                ".properties[spec].x-kubernetes-validations[0].rule",
                ".properties[spec].x-kubernetes-validations[1].rule"
            ]
        );
    }
}
