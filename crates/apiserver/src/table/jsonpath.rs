//! The JSONPath of a CRD's additionalPrinterColumns, read as kube-apiserver reads it (client-go's
//! `util/jsonpath` with missing keys allowed): fields with `\.`-escaped dots (label and
//! annotation keys), `.*`, `..`, `['key']`, indexes (negative too), slices `[a:b:step]`, unions
//! `[0,2]` and filters `[?(@.a == "x")]` with `==`, `!=`, `<`, `>`, `<=`, `>=` or existence.
//! A path that does not parse, or whose evaluation fails (an index out of bounds, a filter on
//! something not a list, values that do not compare), finds nothing: its cell is empty, as
//! upstream leaves it.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    Wildcard,
    Recursive,
    Array {
        start: Option<i64>,
        end: Option<i64>,
        /// `[n]` selects `n..n+1`; a derived end of 0 (`[-1]`) counts from the end.
        end_derived: bool,
        step: Option<i64>,
    },
    Union(Vec<Vec<Step>>),
    Filter {
        left: Vec<Step>,
        op: String,
        right: Operand,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Path(Vec<Step>),
    Literal(Value),
    None,
}

/// Why a path found nothing.
struct Failed;

/// Every value `path` (`.a.b`, with or without `{}` around it) finds in `obj`, in order.
pub fn find<'a>(obj: &'a Value, path: &str) -> Vec<&'a Value> {
    let text = path.trim();
    let text = text
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .unwrap_or(text);
    let Ok(steps) = parse(text) else {
        return Vec::new();
    };
    eval(&steps, vec![obj]).unwrap_or_default()
}

fn is_terminator(c: char) -> bool {
    matches!(
        c,
        ' ' | '\t' | '\r' | '\n' | '.' | ',' | '[' | ']' | '$' | '@' | '{' | '}'
    )
}

fn parse(text: &str) -> Result<Vec<Step>, Failed> {
    let chars: Vec<char> = text.chars().collect();
    let mut steps = Vec::new();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        let rest: String = chars[i..].iter().collect();
        if rest.starts_with("[?(") {
            i = parse_filter(&chars, i + 3, &mut steps)?;
        } else if rest.starts_with("..") {
            if steps.last() == Some(&Step::Recursive) {
                return Err(Failed);
            }
            steps.push(Step::Recursive);
            i += 2;
            if chars
                .get(i)
                .is_some_and(|c| *c == '_' || c.is_alphanumeric())
            {
                i = parse_field(&chars, i, &mut steps);
            }
        } else {
            match c {
                ' ' | '@' | '$' => i += 1,
                '.' => i = parse_field(&chars, i + 1, &mut steps),
                '[' => i = parse_array(&chars, i + 1, &mut steps)?,
                _ => return Err(Failed),
            }
        }
    }
    Ok(steps)
}

/// A field name up to the next unescaped terminator; backslashes are dropped.
fn parse_field(chars: &[char], mut i: usize, steps: &mut Vec<Step>) -> usize {
    let mut name = String::new();
    while let Some(&c) = chars.get(i) {
        if c == '\\' {
            if let Some(&next) = chars.get(i + 1) {
                name.push(next);
            }
            i += 2;
            continue;
        }
        if is_terminator(c) {
            break;
        }
        name.push(c);
        i += 1;
    }
    steps.push(if name == "*" {
        Step::Wildcard
    } else {
        Step::Field(name)
    });
    i
}

fn parse_array(chars: &[char], i: usize, steps: &mut Vec<Step>) -> Result<usize, Failed> {
    let close = chars[i..]
        .iter()
        .position(|c| *c == ']')
        .ok_or(Failed)?
        .checked_add(i)
        .ok_or(Failed)?;
    let inner: String = chars[i..close].iter().collect();
    if inner.contains('\n') {
        return Err(Failed);
    }
    let next = close + 1;
    let inner = if inner == "*" { ":".to_owned() } else { inner };
    if inner.contains(',') {
        let union = inner
            .split(',')
            .map(|part| parse(&format!("[{}]", part.trim_matches(' '))))
            .collect::<Result<Vec<_>, _>>()?;
        steps.push(Step::Union(union));
        return Ok(next);
    }
    if let Some(key) = inner
        .strip_prefix('\'')
        .and_then(|k| k.strip_suffix('\''))
        .filter(|k| !k.contains('\''))
    {
        // Upstream reads `['a.b']` as `.a.b`: dots in a key still need `\.`.
        steps.extend(parse(&format!(".{key}"))?);
        return Ok(next);
    }
    let parts: Vec<&str> = inner.split(':').collect();
    if parts.len() > 3 {
        return Err(Failed);
    }
    let number = |s: &str| -> Result<Option<i64>, Failed> {
        let digits = s.strip_prefix('-').unwrap_or(s);
        if !digits.chars().all(|c| c.is_ascii_digit()) {
            return Err(Failed);
        }
        if s.is_empty() {
            return Ok(None);
        }
        s.parse::<i64>().map(Some).map_err(|_| Failed)
    };
    let start = number(parts[0])?;
    let (end, end_derived) = match parts.get(1) {
        Some(end) => (number(end)?, false),
        None => (Some(start.unwrap_or(0).checked_add(1).ok_or(Failed)?), true),
    };
    let step = match parts.get(2) {
        Some(step) => number(step)?,
        None => None,
    };
    steps.push(Step::Array {
        start,
        end,
        end_derived,
        step,
    });
    Ok(next)
}

fn parse_filter(chars: &[char], mut i: usize, steps: &mut Vec<Step>) -> Result<usize, Failed> {
    let begin_at = i;
    let (mut begin, mut end) = (false, false);
    let mut pair = '"';
    loop {
        let c = *chars.get(i).ok_or(Failed)?;
        i += 1;
        match c {
            '\n' => return Err(Failed),
            '"' | '\'' if !begin => {
                begin = true;
                pair = c;
            }
            '"' | '\'' if c == pair && i >= 2 && chars.get(i - 2) != Some(&'\\') => {
                end = true;
            }
            ')' if begin == end => break,
            _ => {}
        }
    }
    if chars.get(i) != Some(&']') {
        return Err(Failed);
    }
    let text: String = chars[begin_at..i - 1].iter().collect();
    let op_at = text.find(['!', '<', '>', '=']);
    let filter = match op_at {
        Some(at) if at > 0 => {
            let op_len = text[at..]
                .find(|c: char| !matches!(c, '!' | '<' | '>' | '='))
                .ok_or(Failed)?;
            let (left, rest) = text.split_at(at);
            let (op, right) = rest.split_at(op_len);
            Step::Filter {
                left: parse(left)?,
                op: op.to_owned(),
                right: operand(right)?,
            }
        }
        Some(_) => return Err(Failed),
        None => Step::Filter {
            left: parse(&text)?,
            op: "exists".into(),
            right: Operand::None,
        },
    };
    steps.push(filter);
    Ok(i + 1)
}

/// The right side of a filter: a quoted string, a number, a boolean or a path.
fn operand(text: &str) -> Result<Operand, Failed> {
    let text = text.trim_matches(' ');
    for quote in ['"', '\''] {
        if let Some(inner) = text.strip_prefix(quote).and_then(|t| t.strip_suffix(quote)) {
            return Ok(Operand::Literal(Value::String(
                inner.replace(&format!("\\{quote}"), &quote.to_string()),
            )));
        }
    }
    match text {
        "true" => return Ok(Operand::Literal(Value::Bool(true))),
        "false" => return Ok(Operand::Literal(Value::Bool(false))),
        _ => {}
    }
    if text.starts_with(['+', '-']) || text.starts_with(|c: char| c.is_ascii_digit()) {
        let unsigned = text.strip_prefix('+').unwrap_or(text);
        if let Ok(i) = unsigned.parse::<i64>() {
            return Ok(Operand::Literal(Value::from(i)));
        }
        return unsigned
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(|n| Operand::Literal(Value::Number(n)))
            .ok_or(Failed);
    }
    Ok(Operand::Path(parse(text)?))
}

fn eval<'a>(steps: &[Step], mut current: Vec<&'a Value>) -> Result<Vec<&'a Value>, Failed> {
    for step in steps {
        current = match step {
            Step::Field(name) => current
                .into_iter()
                .filter_map(|v| v.as_object().and_then(|m| m.get(name)))
                .collect(),
            Step::Wildcard => current.into_iter().flat_map(children).collect(),
            Step::Recursive => {
                let mut out = Vec::new();
                for v in current {
                    descend(v, &mut out);
                }
                out
            }
            Step::Array {
                start,
                end,
                end_derived,
                step,
            } => {
                let mut out = Vec::new();
                for v in current {
                    if v.is_null() {
                        continue;
                    }
                    let items = v.as_array().ok_or(Failed)?;
                    out.extend(slice(items, *start, *end, *end_derived, *step)?);
                }
                out
            }
            Step::Union(paths) => {
                let mut out = Vec::new();
                for path in paths {
                    out.extend(eval(path, current.clone())?);
                }
                out
            }
            Step::Filter { left, op, right } => {
                let mut out = Vec::new();
                for v in current {
                    if v.is_null() {
                        continue;
                    }
                    for item in v.as_array().ok_or(Failed)? {
                        if passes(item, left, op, right)? {
                            out.push(item);
                        }
                    }
                }
                out
            }
        };
    }
    Ok(current)
}

fn children(v: &Value) -> Vec<&Value> {
    match v {
        Value::Object(map) => map.values().collect(),
        Value::Array(items) => items.iter().collect(),
        _ => Vec::new(),
    }
}

/// A value and everything below it, as upstream's `..` collects them.
fn descend<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    let below = children(v);
    let has_children = !below.is_empty() || v.as_str().is_some_and(|s| !s.is_empty());
    if has_children {
        out.push(v);
        for child in below {
            descend(child, out);
        }
    }
}

fn slice(
    items: &[Value],
    start: Option<i64>,
    end: Option<i64>,
    end_derived: bool,
    step: Option<i64>,
) -> Result<Vec<&Value>, Failed> {
    let len = i64::try_from(items.len()).map_err(|_| Failed)?;
    let mut from = start.unwrap_or(0);
    if from < 0 {
        from = from.checked_add(len).ok_or(Failed)?;
    }
    let mut to = end.unwrap_or(len);
    if end.is_some() && (to < 0 || (to == 0 && end_derived)) {
        to = to.checked_add(len).ok_or(Failed)?;
    }
    if from == to {
        return Ok(Vec::new());
    }
    if from >= len || from < 0 || to > len || to < 0 || from > to {
        return Err(Failed);
    }
    let step = match step {
        Some(step) if step <= 0 => return Err(Failed),
        Some(step) => usize::try_from(step).map_err(|_| Failed)?,
        None => 1,
    };
    let (from, to) = (
        usize::try_from(from).map_err(|_| Failed)?,
        usize::try_from(to).map_err(|_| Failed)?,
    );
    Ok(items
        .get(from..to)
        .unwrap_or_default()
        .iter()
        .step_by(step)
        .collect())
}

fn passes(item: &Value, left: &[Step], op: &str, right: &Operand) -> Result<bool, Failed> {
    let lefts = eval(left, vec![item])?;
    let left = match lefts.as_slice() {
        [] => return Ok(false),
        [one] => *one,
        _ => return Err(Failed),
    };
    if op == "exists" {
        return Ok(true);
    }
    let right = match right {
        Operand::Literal(value) => value,
        Operand::Path(path) => {
            let rights = eval(path, vec![item])?;
            match rights.as_slice() {
                [] => return Ok(false),
                [one] => *one,
                _ => return Err(Failed),
            }
        }
        Operand::None => return Err(Failed),
    };
    let ordering = compare(left, right)?;
    use std::cmp::Ordering::{Equal, Greater, Less};
    Ok(match (op, ordering) {
        ("==", o) => o == Some(Equal),
        ("!=", o) => o != Some(Equal),
        ("<", Some(o)) => o == Less,
        (">", Some(o)) => o == Greater,
        ("<=", Some(o)) => o != Greater,
        (">=", Some(o)) => o != Less,
        _ => return Err(Failed),
    })
}

/// Compares as Go templates do: integers with integers, floats with floats, strings with
/// strings, booleans only for equality (`None` orders nothing); any other pair fails.
fn compare(a: &Value, b: &Value) -> Result<Option<std::cmp::Ordering>, Failed> {
    match (a, b) {
        (Value::String(a), Value::String(b)) => Ok(Some(a.cmp(b))),
        (Value::Bool(a), Value::Bool(b)) => Ok((a == b).then_some(std::cmp::Ordering::Equal)),
        (Value::Number(a), Value::Number(b)) => {
            let integer = |n: &serde_json::Number| n.is_i64() || n.is_u64();
            match (integer(a), integer(b)) {
                (true, true) => match (a.as_i64(), b.as_i64()) {
                    (Some(a), Some(b)) => Ok(Some(a.cmp(&b))),
                    _ => Ok(a.as_u64().zip(b.as_u64()).map(|(a, b)| a.cmp(&b))),
                },
                (false, false) => Ok(a
                    .as_f64()
                    .zip(b.as_f64())
                    .and_then(|(a, b)| a.partial_cmp(&b))),
                _ => Err(Failed),
            }
        }
        _ => Err(Failed),
    }
}

/// How Go prints a value with `%v` for a `string` column: strings as they are, lists and maps
/// as compact JSON, floats as Go's shortest `%g`-style form (`1.5`, `1e+08`).
pub fn to_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) if !(n.is_i64() || n.is_u64()) => {
            n.as_f64().map(go_float).unwrap_or_else(|| n.to_string())
        }
        other => other.to_string(),
    }
}

/// `strconv.FormatFloat(f, 'g', -1, 64)`.
fn go_float(f: f64) -> String {
    if !f.is_finite() {
        return if f.is_nan() {
            "NaN".into()
        } else if f > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    // Rust's `{:e}` is the shortest round-trip form: `1.234e6`.
    let sci = format!("{f:e}");
    let Some((mantissa, exponent)) = sci.split_once('e') else {
        return sci;
    };
    let Ok(exponent) = exponent.parse::<i64>() else {
        return sci;
    };
    let digits = mantissa.chars().filter(char::is_ascii_digit).count();
    let digits = i64::try_from(digits).unwrap_or(i64::MAX);
    let point = exponent.saturating_add(1);
    let mut eprec = 6;
    if eprec > digits && digits >= point {
        eprec = digits;
    }
    if exponent < -4 || exponent >= eprec {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.unsigned_abs())
    } else {
        format!("{f}")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn escaped_dots_name_one_key() {
        let obj =
            json!({"metadata": {"labels": {"multicluster.x-k8s.io/clusterset": "prod", "a": "b"}}});
        assert_eq!(
            find(&obj, r".metadata.labels.multicluster\.x-k8s\.io/clusterset"),
            vec![&json!("prod")]
        );
        // Upstream reads `['a.b']` as `.a.b`: the dots still split.
        assert!(find(&obj, ".metadata.labels['multicluster.x-k8s.io/clusterset']").is_empty());
        assert_eq!(
            find(
                &obj,
                r".metadata.labels['multicluster\.x-k8s\.io/clusterset']"
            ),
            vec![&json!("prod")]
        );
        assert_eq!(find(&obj, ".metadata.labels['a']"), vec![&json!("b")]);
        assert_eq!(find(&obj, "{.metadata.labels.a}"), vec![&json!("b")]);
    }

    #[test]
    fn indexes_slices_unions_wildcards_and_descent() {
        let obj = json!({"spec": {"list": [1, 2, 3, 4], "m": {"x": {"name": "n1"}, "y": {"name": "n2"}}}});
        assert_eq!(find(&obj, ".spec.list[0]"), vec![&json!(1)]);
        assert_eq!(find(&obj, ".spec.list[-1]"), vec![&json!(4)]);
        assert_eq!(find(&obj, ".spec.list[1:3]"), vec![&json!(2), &json!(3)]);
        assert_eq!(find(&obj, ".spec.list[::2]"), vec![&json!(1), &json!(3)]);
        assert_eq!(find(&obj, ".spec.list[0,2]"), vec![&json!(1), &json!(3)]);
        assert_eq!(find(&obj, ".spec.list[*]").len(), 4);
        assert!(find(&obj, ".spec.list[9]").is_empty());
        assert_eq!(find(&obj, ".spec.m.*.name").len(), 2);
        assert_eq!(find(&obj, "..name").len(), 2);
        assert!(find(&obj, ".spec.m[0]").is_empty(), "not a list");
        assert!(find(&obj, ".spec.list[x]").is_empty());
        assert!(find(&obj, ".spec.list[").is_empty());
    }

    #[test]
    fn filters_compare_as_upstream() {
        let obj = json!({"c": [{"type": "A", "n": 1, "ok": true}, {"type": "Ready", "n": 5, "status": "True"}]});
        assert_eq!(
            find(&obj, r#".c[?(@.type=="Ready")].status"#),
            vec![&json!("True")]
        );
        assert_eq!(find(&obj, ".c[?(@.type == 'Ready')].n"), vec![&json!(5)]);
        assert_eq!(find(&obj, ".c[?(@.n>2)].type"), vec![&json!("Ready")]);
        assert_eq!(find(&obj, ".c[?(@.n<=1)].type"), vec![&json!("A")]);
        assert_eq!(find(&obj, r#".c[?(@.type!="A")].n"#), vec![&json!(5)]);
        assert_eq!(find(&obj, ".c[?(@.status)].type"), vec![&json!("Ready")]);
        assert_eq!(find(&obj, ".c[?(@.ok==true)].type"), vec![&json!("A")]);
        assert!(
            find(&obj, r#".c[?(@.n=="1")].type"#).is_empty(),
            "types differ"
        );
    }

    #[test]
    fn text_reads_as_go_prints_it() {
        assert_eq!(to_text(&json!("x")), "x");
        assert_eq!(to_text(&json!(3)), "3");
        assert_eq!(to_text(&json!(1.5)), "1.5");
        assert_eq!(to_text(&json!(100_000_000.0)), "1e+08");
        assert_eq!(to_text(&json!(1_234_567.0)), "1.234567e+06");
        assert_eq!(to_text(&json!(0.00001)), "1e-05");
        assert_eq!(to_text(&json!(true)), "true");
        assert_eq!(to_text(&json!({"a": [1]})), r#"{"a":[1]}"#);
    }
}
