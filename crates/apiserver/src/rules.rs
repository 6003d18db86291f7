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
//! Cost: the `cel` crate has no cost tracker, so costs are estimated (see [`cost_causes`] and
//! [`evaluate`]): statically from the schema's size limits when a CRD is written (upstream's
//! per-expression and per-CRD limits and wording), and per request from the object's own sizes
//! before each rule runs (upstream's per-call limit and per-request budget and wording). The
//! estimate is an upper bound of cel-go's model, not its count of steps taken: a rule that
//! would stop early (`all` meeting a false) is charged as if it ran to the end.
//!
//! Known differences from cel-go: no static type checking (a rule that does not evaluate to a
//! bool fails at run time instead of at CRD creation), estimated rather than counted costs, no
//! `timestamp` and `duration` types, and property names are not escaped (`__dash__`...).

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
    /// Its index in the node's `x-kubernetes-validations`.
    index: usize,
    rule: String,
    /// How runtime errors name the rule (upstream's ruleErrorString): its message, else its
    /// text.
    error_string: String,
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
    on_rule_stack(|| compile_here(schema))
}

fn compile_here(schema: &Value) -> Result<Option<Arc<RuleNode>>, Vec<Cause>> {
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
            if let Some(mut compiled) = compile_rule(env, schema, rule, &at, causes) {
                compiled.index = i;
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
    let (message, error_string) = match rule.get("message").and_then(Value::as_str).map(str::trim) {
        Some(m) if !m.is_empty() => (m.to_string(), m.to_string()),
        _ => (format!("failed rule: {text}"), text.clone()),
    };
    let mut free = BTreeSet::new();
    free_identifiers(program.expression(), &mut Vec::new(), &mut free);
    Some(CompiledRule {
        index: 0,
        error_string,
        transition: free.contains("oldSelf"),
        rule: text,
        program,
        message,
        message_expression,
        reason,
        field_path,
    })
}

/// cel-go's default limit on an expression's length, in code points (Kubernetes keeps it).
const MAX_EXPRESSION_CODE_POINTS: usize = 100_000;

/// The deepest nesting of `(`, `[` and `{` a rule may have. cel-go caps its parser's recursion
/// at 250; the `cel` crate's parser and interpreter take far more stack per level (about
/// 100 KiB per bracket in a debug build, so 20 brackets overflow a 2 MiB thread), hence a
/// lower cap, far above what real rules nest.
const MAX_NESTING: usize = 32;

/// The most operators (`+`, `==`, `&&`, `.`, `[`, `?`... each run of operator characters counts
/// once) a rule may have: each can add a level to the parse tree (`a + a + ...` is nested
/// left-deep), which the parser, the checks here and the interpreter walk recursively.
const MAX_OPERATORS: usize = 500;

/// The stack compiling and evaluating rules runs on. With [`MAX_NESTING`] and
/// [`MAX_OPERATORS`] the deepest rule takes under 25 MiB in a debug build (measured: a
/// bracket level about 100 KiB, an operator level about 35 KiB); pages are only committed as
/// they are touched.
const RULE_STACK_BYTES: usize = 64 << 20;

/// Runs `f` on a thread of its own with [`RULE_STACK_BYTES`] of stack, as the `cel` crate
/// recurses deeper than an async worker's 2 MiB allow; inline when no thread can be started.
fn on_rule_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    let mut f = Some(f);
    let spawned = std::thread::scope(|scope| {
        let g = f.take()?;
        std::thread::Builder::new()
            .name("cel".into())
            .stack_size(RULE_STACK_BYTES)
            .spawn_scoped(scope, g)
            .ok()
            .map(|handle| handle.join())
    });
    match (spawned, f) {
        (Some(Ok(out)), _) => out,
        (Some(Err(panic)), _) => std::panic::resume_unwind(panic),
        (None, Some(f)) => f(),
        (None, None) => std::panic::resume_unwind(Box::new("the rule thread did not start")),
    }
}

/// Refuses a rule before the parser sees it when it is longer than cel-go allows or nests
/// deeper than [`MAX_NESTING`] / has more than [`MAX_OPERATORS`] operators, worded as cel-go
/// words its parser's limits. String literals are skipped (their brackets do not nest).
fn check_limits(text: &str) -> Result<(), String> {
    let size = text.chars().count();
    if size > MAX_EXPRESSION_CODE_POINTS {
        return Err(format!(
            "ERROR: <input>:-1:0: expression code point size exceeds limit: size: {size}, limit {MAX_EXPRESSION_CODE_POINTS}"
        ));
    }
    let (mut depth, mut deepest, mut operators) = (0usize, 0usize, 0usize);
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut in_operator = false;
    for c in text.chars() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        let is_operator = "+-*/%<>=!&|?:.[".contains(c);
        if is_operator && !in_operator {
            operators = operators.saturating_add(1);
        }
        in_operator = is_operator;
        match c {
            '"' | '\'' => quote = Some(c),
            '(' | '[' | '{' => {
                depth = depth.saturating_add(1);
                deepest = deepest.max(depth);
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if deepest > MAX_NESTING || operators > MAX_OPERATORS {
        return Err("ERROR: <input>:-1:0: max recursion depth exceeded".to_string());
    }
    Ok(())
}

/// Parses, then refuses identifiers other than `self`, `oldSelf` and type names, as cel-go's
/// checker does.
fn compile_expression(env: &Env, text: &str) -> Result<Program, String> {
    check_limits(text)?;
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

/// One request's rule evaluations: their failures, and what they may still spend.
#[derive(Debug)]
struct Run {
    causes: Vec<Cause>,
    remaining: f64,
    exhausted: bool,
}

impl Run {
    /// Spends `cost`; when it is more than what remains, records upstream's error at `path`,
    /// stops every further evaluation of the request and returns false.
    fn spend(&mut self, cost: f64, path: &str, shown_type: &Value) -> bool {
        if cost > self.remaining {
            self.causes.push(Cause::invalid(
                path.to_string(),
                shown_type,
                "validation failed due to running out of cost budget, no further validation rules will be run",
            ));
            self.exhausted = true;
            return false;
        }
        self.remaining -= cost;
        true
    }
}

/// Evaluates the rules against an object (and, on update, the object before), within
/// upstream's runtime cost budgets ([`PER_CALL_LIMIT`] per evaluation,
/// [`RUNTIME_CEL_COST_BUDGET`] per request; each evaluation's cost is estimated from the
/// values it reads before it runs, and one over budget does not run). On a multi-threaded
/// runtime the evaluation leaves its async worker first (`block_in_place`), so that the
/// worker's other requests (`/readyz`, watches) keep being served meanwhile.
pub fn evaluate(schema: &Value, rules: &RuleNode, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let run = || on_rule_stack(|| evaluate_here(schema, rules, obj, old));
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(run)
        }
        _ => run(),
    }
}

fn evaluate_here(schema: &Value, rules: &RuleNode, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut run = Run {
        causes: Vec::new(),
        remaining: RUNTIME_CEL_COST_BUDGET,
        exhausted: false,
    };
    let Some(env) = env() else {
        return run.causes;
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
            &mut run,
        );
    }
    walk_children(&env, schema, rules, obj, old, "", &mut run);
    run.causes
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
    run: &mut Run,
) {
    if v.is_null() || run.exhausted {
        return;
    }
    run_rules(env, schema, &rules.rules, v, old, path, run);
    walk_children(env, schema, rules, v, old, path, run);
}

fn walk_children(
    env: &Arc<Env>,
    schema: &Value,
    rules: &RuleNode,
    v: &Value,
    old: Option<&Value>,
    path: &str,
    run: &mut Run,
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
                        run,
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
                        run,
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
                        run,
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
    run: &mut Run,
) {
    if rules.is_empty() || run.exhausted {
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
    let self_shape = Shape::of_value(v);
    let old_shape = old.map_or(Shape::Scalar, Shape::of_value);
    for rule in rules {
        if rule.transition && old_cel.is_none() {
            continue;
        }
        let cost = rule_cost(&rule.program, &self_shape, &old_shape);
        if cost > PER_CALL_LIMIT {
            // As cel-go cancels the call at the limit: no further rule runs.
            run.causes.push(Cause::invalid(
                path.to_string(),
                &shown_type,
                format!(
                    "'operation cancelled: actual cost limit exceeded': no further validation rules will be run due to call cost exceeds limit for rule: {}",
                    rule.error_string
                ),
            ));
            run.exhausted = true;
            return;
        }
        if !run.spend(cost, path, &shown_type) {
            return;
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
                    .filter(|m| rule_cost(m, &self_shape, &old_shape) <= PER_CALL_LIMIT)
                    .and_then(|m| match m.execute(&ctx) {
                        Ok(cel::Value::String(s)) if !s.trim().is_empty() && !s.contains('\n') => {
                            Some(s.trim().to_string())
                        }
                        _ => None,
                    })
                    .unwrap_or_else(|| rule.message.clone());
                run.causes.push(match rule.reason.as_str() {
                    "FieldValueForbidden" => Cause::forbidden(failed_path, message),
                    "FieldValueRequired" => Cause::required(failed_path, message),
                    "FieldValueDuplicate" => Cause::duplicate(failed_path, &shown_type),
                    _ => Cause::invalid(failed_path, &shown_type, message),
                });
            }
            Err(e) => {
                let mut detail = String::new();
                let _ = write!(detail, "{e} evaluating rule: {}", rule.rule);
                run.causes
                    .push(Cause::invalid(path.to_string(), &shown_type, detail));
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

// ---------------------------------------------------------------------------------------------
// Cost: the `cel` crate has no cost tracker, so costs are estimated from the expression tree
// and the sizes of the values it reads (after cel-go's cost model: one unit per node, string
// and list operations a tenth of a unit per byte or element, comprehensions their body's cost
// times their range's size). At CRD creation the sizes come from the schema (`maxItems`,
// `maxLength`, `maxProperties`, else what fits in a request); per request they come from the
// object itself, and a rule whose estimate exceeds its budget is not run.
// ---------------------------------------------------------------------------------------------

/// The largest request body (kube-apiserver's `MaxRequestSizeBytes`): what bounds unbounded
/// lists, maps and strings in the static estimate.
pub const MAX_REQUEST_SIZE_BYTES: f64 = 3_145_728.0;
/// Upstream's `StaticEstimatedCostLimit`: one expression's estimated cost.
pub const STATIC_ESTIMATED_COST_LIMIT: f64 = 10_000_000.0;
/// Upstream's `StaticEstimatedCRDCostLimit`: every rule of a schema, each times the number of
/// times it may run.
pub const STATIC_ESTIMATED_CRD_COST_LIMIT: f64 = 100_000_000.0;
/// Upstream's `PerCallLimit`: one evaluation of one rule.
pub const PER_CALL_LIMIT: f64 = 1_000_000.0;
/// Upstream's `RuntimeCELCostBudget`: every rule evaluation of one request together.
pub const RUNTIME_CEL_COST_BUDGET: f64 = 10_000_000.0;

/// What the estimate knows about a value: its kind and largest size.
#[derive(Debug, Clone, PartialEq)]
enum Shape {
    /// A number, bool, null, or anything whose size does not matter.
    Scalar,
    /// A string of at most this many bytes.
    Str(f64),
    /// A list of at most `len` items, each at most `item`.
    List { len: f64, item: Box<Shape> },
    /// An object or map of at most `len` entries: named properties, and any other entry.
    Obj {
        len: f64,
        key_len: f64,
        props: HashMap<String, Shape>,
        other: Box<Shape>,
    },
}

impl Shape {
    fn size(&self) -> f64 {
        match self {
            Shape::Scalar => 1.0,
            Shape::Str(n) => *n,
            Shape::List { len, .. } | Shape::Obj { len, .. } => *len,
        }
    }

    /// What a comprehension's variable ranges over: list items, or map keys.
    fn element(&self) -> Shape {
        match self {
            Shape::List { item, .. } => (**item).clone(),
            Shape::Obj { key_len, .. } => Shape::Str(*key_len),
            _ => Shape::Scalar,
        }
    }

    /// Any value of a list or map.
    fn any_value(&self) -> Shape {
        match self {
            Shape::List { item, .. } => (**item).clone(),
            Shape::Obj { props, other, .. } => props
                .values()
                .cloned()
                .fold((**other).clone(), Shape::merge),
            _ => Shape::Scalar,
        }
    }

    fn field(&self, name: &str) -> Shape {
        match self {
            Shape::Obj { props, other, .. } => props
                .get(name)
                .cloned()
                .unwrap_or_else(|| (**other).clone()),
            _ => Shape::Scalar,
        }
    }

    /// The smallest shape covering both.
    fn merge(self, other: Shape) -> Shape {
        match (self, other) {
            (Shape::Str(a), Shape::Str(b)) => Shape::Str(a.max(b)),
            (Shape::List { len: a, item: x }, Shape::List { len: b, item: y }) => Shape::List {
                len: a.max(b),
                item: Box::new(x.merge(*y)),
            },
            (
                Shape::Obj {
                    len: a,
                    key_len: ka,
                    props: mut pa,
                    other: oa,
                },
                Shape::Obj {
                    len: b,
                    key_len: kb,
                    props: pb,
                    other: ob,
                },
            ) => {
                for (k, v) in pb {
                    let merged = match pa.remove(&k) {
                        Some(mine) => mine.merge(v),
                        None => v,
                    };
                    pa.insert(k, merged);
                }
                Shape::Obj {
                    len: a.max(b),
                    key_len: ka.max(kb),
                    props: pa,
                    other: Box::new(oa.merge(*ob)),
                }
            }
            (Shape::Scalar, x) | (x, Shape::Scalar) => x,
            // Different kinds: the larger.
            (x, y) => {
                if x.size() >= y.size() {
                    x
                } else {
                    y
                }
            }
        }
    }

    /// The largest value a schema allows, as upstream estimates it: declared maxima, else
    /// as many of the smallest item as fit in a request.
    fn of_schema(schema: &Value) -> Shape {
        let max = |k: &str| schema.get(k).and_then(Value::as_f64);
        match schema.get("type").and_then(Value::as_str) {
            Some("string") => Shape::Str(max("maxLength").unwrap_or(MAX_REQUEST_SIZE_BYTES - 2.0)),
            Some("array") => {
                let items = schema.get("items").unwrap_or(&Value::Null);
                let len = max("maxItems").unwrap_or_else(|| {
                    (MAX_REQUEST_SIZE_BYTES - 2.0) / (min_serialized_size(items) + 1.0)
                });
                Shape::List {
                    len,
                    item: Box::new(Shape::of_schema(items)),
                }
            }
            Some("object") => {
                let props: HashMap<String, Shape> = schema
                    .get("properties")
                    .and_then(Value::as_object)
                    .map(|p| {
                        p.iter()
                            .map(|(k, v)| (k.clone(), Shape::of_schema(v)))
                            .collect()
                    })
                    .unwrap_or_default();
                let additional = schema.get("additionalProperties").filter(|a| a.is_object());
                let len = match (max("maxProperties"), additional) {
                    (Some(m), _) => m,
                    (None, Some(a)) => {
                        // `"k":v,` with the shortest key and value.
                        (MAX_REQUEST_SIZE_BYTES - 2.0) / (min_serialized_size(a) + 4.0)
                    }
                    (None, None) => props.len() as f64,
                };
                let key_len = match additional {
                    Some(_) => MAX_REQUEST_SIZE_BYTES,
                    None => props.keys().map(|k| k.len() as f64).fold(0.0, f64::max),
                };
                Shape::Obj {
                    len,
                    key_len,
                    props,
                    other: Box::new(additional.map_or(Shape::Scalar, Shape::of_schema)),
                }
            }
            _ if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
                || schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) =>
            {
                // Anything: as large as a request.
                Shape::Str(MAX_REQUEST_SIZE_BYTES)
            }
            _ => Shape::Scalar,
        }
    }

    /// The shape of one value: its own sizes, items merged.
    fn of_value(v: &Value) -> Shape {
        match v {
            Value::String(s) => Shape::Str(s.len() as f64),
            Value::Array(items) => Shape::List {
                len: items.len() as f64,
                item: Box::new(
                    items
                        .iter()
                        .map(Shape::of_value)
                        .fold(Shape::Scalar, Shape::merge),
                ),
            },
            Value::Object(map) => Shape::Obj {
                len: map.len() as f64,
                key_len: map.keys().map(|k| k.len() as f64).fold(0.0, f64::max),
                props: map
                    .iter()
                    .map(|(k, v)| (k.clone(), Shape::of_value(v)))
                    .collect(),
                other: Box::new(Shape::Scalar),
            },
            _ => Shape::Scalar,
        }
    }
}

/// The fewest bytes a value of a schema takes in JSON (upstream's minimum sizes).
fn min_serialized_size(schema: &Value) -> f64 {
    match schema.get("type").and_then(Value::as_str) {
        Some("string") => {
            2.0 + schema
                .get("minLength")
                .and_then(Value::as_f64)
                .unwrap_or(0.0)
        }
        Some("boolean") => 4.0,
        Some("object") | Some("array") => 2.0,
        _ => 1.0,
    }
}

/// A tenth of a unit per byte or element, rounded up, as cel-go charges traversals.
fn traversal(size: f64) -> f64 {
    (size * 0.1).ceil()
}

/// The estimated cost of an expression and the shape of its value, with `vars` bound.
fn estimate(e: &IdedExpr, vars: &mut Vec<(String, Shape)>) -> (f64, Shape) {
    match &e.expr {
        Expr::Unspecified => (0.0, Shape::Scalar),
        Expr::Literal(literal) => match literal {
            cel::common::ast::LiteralValue::String(s) => (0.0, Shape::Str(s.len() as f64)),
            _ => (0.0, Shape::Scalar),
        },
        Expr::Ident(name) => {
            let shape = vars
                .iter()
                .rev()
                .find(|(n, _)| n == name)
                .map(|(_, s)| s.clone())
                .unwrap_or(Shape::Scalar);
            (1.0, shape)
        }
        Expr::Select(select) => {
            let (cost, shape) = estimate(&select.operand, vars);
            if select.test {
                (cost + 1.0, Shape::Scalar)
            } else {
                (cost + 1.0, shape.field(&select.field))
            }
        }
        Expr::List(list) => {
            let mut cost = 10.0;
            let mut item = Shape::Scalar;
            for el in &list.elements {
                let (c, s) = estimate(el, vars);
                cost += c;
                item = item.merge(s);
            }
            (
                cost,
                Shape::List {
                    len: list.elements.len() as f64,
                    item: Box::new(item),
                },
            )
        }
        Expr::Map(map) => {
            let mut cost = 30.0;
            for entry in &map.entries {
                cost += entry_cost(&entry.expr, vars);
            }
            (
                cost,
                Shape::Obj {
                    len: map.entries.len() as f64,
                    key_len: MAX_REQUEST_SIZE_BYTES,
                    props: HashMap::new(),
                    other: Box::new(Shape::Str(MAX_REQUEST_SIZE_BYTES)),
                },
            )
        }
        Expr::Struct(st) => {
            let mut cost = 40.0;
            for entry in &st.entries {
                cost += entry_cost(&entry.expr, vars);
            }
            (cost, Shape::Scalar)
        }
        Expr::Call(call) => estimate_call(call, vars),
        Expr::Comprehension(c) => {
            let (range_cost, range) = estimate(&c.iter_range, vars);
            let (init_cost, init) = estimate(&c.accu_init, vars);
            let n = range.size();
            let depth = vars.len();
            match &c.iter_var2 {
                // Two variables: index or key, then value.
                Some(second) => {
                    let (first, value) = match &range {
                        Shape::List { item, .. } => (Shape::Scalar, (**item).clone()),
                        other => (other.element(), other.any_value()),
                    };
                    vars.push((c.iter_var.clone(), first));
                    vars.push((second.clone(), value));
                }
                None => vars.push((c.iter_var.clone(), range.element())),
            }
            // The accumulator of `map`/`filter` grows by one mapped item per iteration.
            let accu = match grown_item(&c.loop_step, &c.accu_var, vars) {
                Some(item) => Shape::List {
                    len: n,
                    item: Box::new(item),
                },
                None => init,
            };
            vars.push((c.accu_var.clone(), accu));
            let (cond_cost, _) = estimate(&c.loop_cond, vars);
            let (step_cost, _) = estimate(&c.loop_step, vars);
            let (result_cost, result) = estimate(&c.result, vars);
            vars.truncate(depth);
            let cost = range_cost + init_cost + n * (cond_cost + step_cost) + result_cost;
            (cost, result)
        }
    }
}

fn entry_cost(e: &EntryExpr, vars: &mut Vec<(String, Shape)>) -> f64 {
    match e {
        EntryExpr::StructField(f) => estimate(&f.value, vars).0,
        EntryExpr::MapEntry(m) => estimate(&m.key, vars).0 + estimate(&m.value, vars).0,
    }
}

/// For a comprehension step `accu + [x]` (or `cond ? accu + [x] : accu`), the shape of `x`.
fn grown_item(step: &IdedExpr, accu: &str, vars: &mut Vec<(String, Shape)>) -> Option<Shape> {
    let Expr::Call(call) = &step.expr else {
        return None;
    };
    match (call.func_name.as_str(), call.args.as_slice()) {
        ("_+_", [lhs, rhs]) if matches!(&lhs.expr, Expr::Ident(n) if n == accu) => {
            match &rhs.expr {
                Expr::List(list) => {
                    let mut item = Shape::Scalar;
                    for el in &list.elements {
                        item = item.merge(estimate(el, vars).1);
                    }
                    Some(item)
                }
                _ => None,
            }
        }
        ("_?_:_", [_, then, _]) => grown_item(then, accu, vars),
        _ => None,
    }
}

fn estimate_call(
    call: &cel::common::ast::CallExpr,
    vars: &mut Vec<(String, Shape)>,
) -> (f64, Shape) {
    let mut cost = 0.0;
    let target = call.target.as_ref().map(|t| {
        let (c, s) = estimate(t, vars);
        cost += c;
        s
    });
    let args: Vec<Shape> = call
        .args
        .iter()
        .map(|a| {
            let (c, s) = estimate(a, vars);
            cost += c;
            s
        })
        .collect();
    // The receiver: `x.f(...)`, or the first argument of `f(x, ...)`.
    let receiver = target.clone().or_else(|| args.first().cloned());
    let receiver_size = receiver.as_ref().map_or(1.0, Shape::size);
    let (own, shape) = match call.func_name.as_str() {
        "size" | "_!_" | "!_" | "-_" | "_&&_" | "_||_" | "_<_" | "_<=_" | "_>_" | "_>=_"
        | "_-_" | "_*_" | "_/_" | "_%_" | "int" | "uint" | "double" | "bool" | "type" | "has"
        | "dyn" => (1.0, Shape::Scalar),
        "_==_" | "_!=_" => {
            let largest = args.iter().map(Shape::size).fold(1.0, f64::max);
            (1.0 + traversal(largest), Shape::Scalar)
        }
        "@in" => {
            let container = args.get(1).map_or(1.0, Shape::size);
            (1.0 + container, Shape::Scalar)
        }
        "_[_]" | "_[?_]" => {
            let shape = match (args.first(), args.get(1)) {
                (Some(Shape::List { item, .. }), _) => (**item).clone(),
                (Some(obj @ Shape::Obj { .. }), _) => obj.any_value(),
                _ => Shape::Scalar,
            };
            (1.0, shape)
        }
        "_?_:_" => {
            let merged = args
                .get(1)
                .cloned()
                .unwrap_or(Shape::Scalar)
                .merge(args.get(2).cloned().unwrap_or(Shape::Scalar));
            (1.0, merged)
        }
        "_+_" => {
            let total: f64 = args.iter().map(Shape::size).sum();
            let shape = match (args.first(), args.get(1)) {
                (Some(Shape::List { item: a, .. }), Some(Shape::List { item: b, .. })) => {
                    Shape::List {
                        len: total,
                        item: Box::new((**a).clone().merge((**b).clone())),
                    }
                }
                (Some(Shape::Str(_)), _) | (_, Some(Shape::Str(_))) => Shape::Str(total),
                _ => Shape::Scalar,
            };
            (1.0 + traversal(total), shape)
        }
        "contains" | "startsWith" | "endsWith" | "indexOf" | "lastIndexOf" => {
            (1.0 + traversal(receiver_size), Shape::Scalar)
        }
        "matches" => {
            // A regular expression: the string's traversal times the pattern's.
            let pattern = args.last().map_or(1.0, Shape::size);
            (
                1.0 + traversal(receiver_size) * traversal(pattern).max(1.0),
                Shape::Scalar,
            )
        }
        "split" => (
            1.0 + traversal(receiver_size),
            Shape::List {
                len: receiver_size,
                item: Box::new(Shape::Str(receiver_size)),
            },
        ),
        "join" => {
            let joined = match &receiver {
                Some(Shape::List { len, item }) => len * (item.size() + 1.0),
                _ => receiver_size,
            };
            (1.0 + traversal(joined), Shape::Str(joined))
        }
        "lowerAscii" | "upperAscii" | "trim" | "substring" | "charAt" | "reverse" | "string" => {
            (1.0 + traversal(receiver_size), Shape::Str(receiver_size))
        }
        "replace" => {
            let replacement = args.get(1).map_or(1.0, Shape::size);
            let out = receiver_size * replacement.max(1.0);
            (1.0 + traversal(out), Shape::Str(out))
        }
        "flatten" | "sort" | "distinct" | "slice" => (
            1.0 + receiver_size,
            match receiver {
                Some(Shape::List { len, item }) => Shape::List {
                    len: len * item.size().max(1.0),
                    item: Box::new(item.element()),
                },
                _ => Shape::Scalar,
            },
        ),
        _ => (1.0 + traversal(receiver_size), Shape::Scalar),
    };
    (cost + own, shape)
}

/// The estimated cost of one rule over values of these shapes.
fn rule_cost(program: &Program, self_shape: &Shape, old_shape: &Shape) -> f64 {
    let mut vars = vec![
        ("self".to_string(), self_shape.clone()),
        ("oldSelf".to_string(), old_shape.clone()),
    ];
    estimate(program.expression(), &mut vars).0
}

/// Upstream's wording of an estimate over its limit.
fn cost_error_message(cost_name: &str, cost: f64, limit: f64) -> String {
    let factor = cost / limit;
    let shown = if factor > 100.0 {
        "more than 100x".to_string()
    } else if factor < 1.5 {
        format!("{factor:.6}x")
    } else {
        format!("{factor:.1}x")
    };
    format!(
        "{cost_name} exceeds budget by factor of {shown} (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)"
    )
}

/// The static cost check of a CRD version's rules, as kube-apiserver's CRD validation: each
/// rule's (and messageExpression's) estimate at most [`STATIC_ESTIMATED_COST_LIMIT`], and the
/// sum of every rule's estimate times the number of times it may run (the product of the
/// sizes of the lists and maps above it) at most [`STATIC_ESTIMATED_CRD_COST_LIMIT`]. Fields
/// are below the schema, as [`compile`]'s.
pub fn cost_causes(schema: &Value, rules: &RuleNode) -> Vec<Cause> {
    let mut causes = Vec::new();
    let mut total = Vec::new();
    static_costs(schema, rules, "", 1.0, &mut causes, &mut total);
    let sum: f64 = total.iter().map(|(_, c)| c).sum();
    if sum > STATIC_ESTIMATED_CRD_COST_LIMIT {
        total.sort_by(|a, b| b.1.total_cmp(&a.1));
        // Upstream names the rules that contribute most (at most four).
        for (field, _) in total.iter().take(4) {
            causes.push(Cause::forbidden(
                field.clone(),
                "contributed to estimated rule cost total exceeding cost limit for entire OpenAPIv3 schema",
            ));
        }
        causes.push(Cause::forbidden(
            "",
            cost_error_message(
                "x-kubernetes-validations estimated rule cost total for entire OpenAPIv3 schema",
                sum,
                STATIC_ESTIMATED_CRD_COST_LIMIT,
            ),
        ));
    }
    causes
}

fn static_costs(
    schema: &Value,
    rules: &RuleNode,
    path: &str,
    cardinality: f64,
    causes: &mut Vec<Cause>,
    total: &mut Vec<(String, f64)>,
) {
    let shape = Shape::of_schema(schema);
    for rule in &rules.rules {
        let at = format!("{path}.x-kubernetes-validations[{}]", rule.index);
        let cost = rule_cost(&rule.program, &shape, &shape);
        if cost > STATIC_ESTIMATED_COST_LIMIT {
            causes.push(Cause::forbidden(
                format!("{at}.rule"),
                cost_error_message("estimated rule cost", cost, STATIC_ESTIMATED_COST_LIMIT),
            ));
        }
        if let Some(m) = &rule.message_expression {
            let cost = rule_cost(m, &shape, &shape);
            if cost > STATIC_ESTIMATED_COST_LIMIT {
                causes.push(Cause::forbidden(
                    format!("{at}.messageExpression"),
                    cost_error_message(
                        "estimated messageExpression cost",
                        cost,
                        STATIC_ESTIMATED_COST_LIMIT,
                    ),
                ));
            }
        }
        total.push((format!("{at}.rule"), cost * cardinality));
    }
    for (k, sub_rules) in &rules.properties {
        if let Some(sub) = schema.get("properties").and_then(|p| p.get(k)) {
            let child = format!("{path}.properties[{k}]");
            static_costs(sub, sub_rules, &child, cardinality, causes, total);
        }
    }
    if let (Some(sub_rules), Some(sub)) = (&rules.additional, schema.get("additionalProperties")) {
        let n = shape.size().max(1.0);
        let child = format!("{path}.additionalProperties");
        static_costs(sub, sub_rules, &child, cardinality * n, causes, total);
    }
    if let (Some(sub_rules), Some(sub)) = (&rules.items, schema.get("items")) {
        let n = shape.size().max(1.0);
        let child = format!("{path}.items");
        static_costs(sub, sub_rules, &child, cardinality * n, causes, total);
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
    fn too_deep_or_too_long_rules_are_refused_before_parsing() {
        let refused = |text: String| {
            let schema = json!({"type": "object", "x-kubernetes-validations": [{"rule": text}]});
            match compile(&schema) {
                Err(causes) => causes
                    .first()
                    .map(|c| c.message.clone())
                    .unwrap_or_default(),
                Ok(_) => String::new(),
            }
        };
        // The fuzzer's input: unbalanced brackets that overflowed the parser's stack.
        let deep = refused(format!("{}self", "[".repeat(1000)));
        assert!(
            deep.contains("compilation failed: ERROR: <input>:-1:0: max recursion depth exceeded"),
            "{deep}"
        );
        let chain = refused(format!("self{}", " + self".repeat(MAX_OPERATORS + 1)));
        assert!(chain.contains("max recursion depth exceeded"), "{chain}");
        let long = refused(format!(
            "self == '{}'",
            "x".repeat(MAX_EXPRESSION_CODE_POINTS)
        ));
        assert!(
            long.contains("expression code point size exceeds limit: size: 100010, limit 100000"),
            "{long}"
        );
        // Brackets inside string literals do not nest.
        assert_eq!(refused(format!("self.a == '{}'", "[".repeat(1000))), "");
        // At the caps, rules compile and run (on the rule stack, not the test's 2 MiB thread).
        let nested = format!(
            "{}self{} == self",
            "[".repeat(MAX_NESTING),
            "]".repeat(MAX_NESTING)
        );
        let chained = format!("self.a{} > 0", " + self.a".repeat(MAX_OPERATORS / 2 - 2));
        for text in [nested, chained] {
            let schema = json!({"type": "object", "x-kubernetes-validations": [{"rule": text}]});
            let compiled = compile(&schema);
            assert!(matches!(compiled, Ok(Some(_))), "{compiled:?}");
            if let Ok(Some(rules)) = compiled {
                evaluate(&schema, &rules, &json!({"a": 1}), None);
            }
        }
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
    fn nested(max_items: Option<u64>) -> Value {
        let mut items = json!({"type": "array", "items": {"type": "string", "maxLength": 8}});
        if let Some(max) = max_items {
            items["maxItems"] = json!(max);
        }
        json!({"type": "object", "properties": {"spec": {"type": "object",
            "properties": {"items": items},
            "x-kubernetes-validations": [{"rule": "self.items.all(a, self.items.all(b, a == b || a != b))"}]}}})
    }

    #[test]
    fn static_costs_follow_the_schemas_bounds() -> Result<(), String> {
        let unbounded = nested(None);
        let rules = compile(&unbounded)
            .map_err(|c| format!("{c:?}"))?
            .ok_or("no rules")?;
        let texts: Vec<String> = cost_causes(&unbounded, &rules)
            .iter()
            .map(Cause::to_text)
            .collect();
        assert_eq!(
            texts,
            vec![
                ".properties[spec].x-kubernetes-validations[0].rule: Forbidden: estimated rule cost exceeds budget by factor of more than 100x (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)",
                ".properties[spec].x-kubernetes-validations[0].rule: Forbidden: contributed to estimated rule cost total exceeding cost limit for entire OpenAPIv3 schema",
                ": Forbidden: x-kubernetes-validations estimated rule cost total for entire OpenAPIv3 schema exceeds budget by factor of more than 100x (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)"
            ]
        );
        let bounded = nested(Some(500));
        let rules = compile(&bounded)
            .map_err(|c| format!("{c:?}"))?
            .ok_or("no rules")?;
        assert_eq!(cost_causes(&bounded, &rules), vec![]);
        Ok(())
    }

    #[test]
    fn runtime_costs_follow_the_objects_sizes() -> Result<(), String> {
        let s = nested(Some(500));
        let rules = compile(&s)
            .map_err(|c| format!("{c:?}"))?
            .ok_or("no rules")?;
        let small = json!({"spec": {"items": ["a", "b"]}});
        assert_eq!(evaluate(&s, &rules, &small, None), vec![]);
        let items: Vec<String> = (0..500).map(|i| format!("i{i}")).collect();
        let big = json!({"spec": {"items": items}});
        let texts: Vec<String> = evaluate(&s, &rules, &big, None)
            .iter()
            .map(Cause::to_text)
            .collect();
        assert_eq!(
            texts,
            vec![
                "spec: Invalid value: \"object\": 'operation cancelled: actual cost limit exceeded': no further validation rules will be run due to call cost exceeds limit for rule: self.items.all(a, self.items.all(b, a == b || a != b))"
            ]
        );
        Ok(())
    }

    #[test]
    fn upstream_words_the_factor_by_its_size() {
        let m = |cost: f64| cost_error_message("estimated rule cost", cost, 10.0);
        assert!(m(12.0).contains("factor of 1.200000x"));
        assert!(m(25.0).contains("factor of 2.5x"));
        assert!(m(5000.0).contains("factor of more than 100x"));
    }
}
