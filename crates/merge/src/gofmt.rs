//! Go's `fmt` rendering of decoded JSON (`map[string]interface{}`, `[]interface{}`, `string`,
//! `int64`, `float64`, `bool`, `nil`), for error messages worded as upstream's.

use std::fmt::Write;

use serde_json::Value;

/// Go's dynamic type of a decoded JSON value, as k8s.io/apimachinery's JSON decoder makes it
/// (integers are `int64` when they fit, other numbers `float64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GoType {
    Nil,
    Bool,
    Int,
    Float,
    String,
    Slice,
    Map,
}

pub(crate) fn go_type(v: &Value) -> GoType {
    match v {
        Value::Null => GoType::Nil,
        Value::Bool(_) => GoType::Bool,
        Value::Number(n) if n.is_i64() => GoType::Int,
        Value::Number(_) => GoType::Float,
        Value::String(_) => GoType::String,
        Value::Array(_) => GoType::Slice,
        Value::Object(_) => GoType::Map,
    }
}

/// `reflect.TypeOf(v)` as `%s` prints it.
pub(crate) fn type_name(v: &Value) -> &'static str {
    match go_type(v) {
        GoType::Nil => "%!s(<nil>)",
        GoType::Bool => "bool",
        GoType::Int => "int64",
        GoType::Float => "float64",
        GoType::String => "string",
        GoType::Slice => "[]interface {}",
        GoType::Map => "map[string]interface {}",
    }
}

/// `fmt.Sprintf("%v", v)`.
pub(crate) fn v(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value, false);
    out
}

/// `fmt.Sprintf("%s", v)`.
pub(crate) fn s(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value, true);
    out
}

/// `fmt.Sprint(lists)` of a `[][]interface{}`.
pub(crate) fn v_lists(lists: &[&[Value]]) -> String {
    let mut out = String::from("[");
    for (i, list) in lists.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        write_list(&mut out, list, false);
    }
    out.push(']');
    out
}

pub(crate) fn v_list(list: &[Value]) -> String {
    let mut out = String::new();
    write_list(&mut out, list, false);
    out
}

fn write_list(out: &mut String, list: &[Value], s_verb: bool) {
    out.push('[');
    for (i, item) in list.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        write_value(out, item, s_verb);
    }
    out.push(']');
}

fn write_value(out: &mut String, value: &Value, s_verb: bool) {
    match value {
        Value::Null if s_verb => out.push_str("%!s(<nil>)"),
        Value::Null => out.push_str("<nil>"),
        Value::String(text) => out.push_str(text),
        Value::Array(items) => write_list(out, items, s_verb),
        Value::Object(map) => {
            // fmt prints a map's keys sorted.
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push_str("map[");
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                out.push_str(key);
                out.push(':');
                if let Some(item) = map.get(key) {
                    write_value(out, item, s_verb);
                }
            }
            out.push(']');
        }
        Value::Bool(_) | Value::Number(_) => {
            let text = scalar(value);
            if s_verb {
                let _ = write!(out, "%!s({}={text})", type_name(value));
            } else {
                out.push_str(&text);
            }
        }
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match n.as_i64() {
            Some(i) => i.to_string(),
            None => n.as_f64().map(float).unwrap_or_default(),
        },
        _ => String::new(),
    }
}

/// `strconv.FormatFloat(f, 'g', -1, 64)`: the shortest digits, in exponent form when the
/// exponent is below -4 or at least 6 (`%g`'s threshold for the shortest form).
fn float(f: f64) -> String {
    if !f.is_finite() {
        return f.to_string();
    }
    if f == 0.0 {
        return "0".into();
    }
    let exp_form = format!("{f:e}");
    let Some((mantissa, exp)) = exp_form.split_once('e') else {
        return exp_form;
    };
    let exp: i32 = exp.parse().unwrap_or_default();
    if !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.unsigned_abs())
    } else {
        format!("{f}")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn values_print_as_go_prints_them() {
        assert_eq!(
            v(&json!({"b": [1, "x", null], "a": {"c": true}})),
            "map[a:map[c:true] b:[1 x <nil>]]"
        );
        assert_eq!(s(&json!(1)), "%!s(int64=1)");
        assert_eq!(s(&json!("merge")), "merge");
        assert_eq!(v(&json!(1.5)), "1.5");
        assert_eq!(v(&json!(1e21)), "1e+21");
        assert_eq!(v(&json!(1e-7)), "1e-07");
        assert_eq!(v(&json!(1_000_000.0)), "1e+06");
        assert_eq!(v(&json!(123_456_789.0)), "1.23456789e+08");
        assert_eq!(v(&json!(100_000.5)), "100000.5");
        assert_eq!(type_name(&json!(null)), "%!s(<nil>)");
        assert_eq!(v_lists(&[&[json!("a")], &[]]), "[[a] []]");
    }
}
