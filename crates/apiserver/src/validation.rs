//! Name and metadata validation, worded as kube-apiserver words it.

use serde_json::Value;

use crate::error::Cause;
use crate::registry::NameRule;

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Problems with a DNS-1123 label, as kube-apiserver's `IsDNS1123Label` lists them.
pub fn dns1123_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    if !is_label(s) {
        errs.push(DNS1123_LABEL_MSG.to_string());
    }
    errs
}

/// Problems with a DNS-1123 subdomain.
pub fn dns1123_subdomain(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 253 {
        errs.push("must be no more than 253 characters".to_string());
    }
    if s.is_empty() || !s.split('.').all(is_label) {
        errs.push(DNS1123_SUBDOMAIN_MSG.to_string());
    }
    errs
}

/// Problems with a path-segment name (the RBAC kinds).
pub fn path_segment(s: &str) -> Vec<String> {
    if s == "." || s == ".." {
        return vec![format!("may not be '{s}'")];
    }
    let mut errs = Vec::new();
    for bad in ["/", "%"] {
        if s.contains(bad) {
            errs.push(format!("may not contain '{bad}'"));
        }
    }
    errs
}

/// Validates an object's name (or generateName) per kind.
pub fn validate_name(rule: NameRule, name: &str, generated: bool) -> Vec<Cause> {
    let field = if generated {
        "metadata.generateName"
    } else {
        "metadata.name"
    };
    if name.is_empty() {
        return vec![Cause::required(
            "metadata.name",
            "name or generateName is required",
        )];
    }
    // A generateName is checked as the prefix it is: kube-apiserver drops a trailing '-'
    // before validating.
    let checked = if generated {
        name.trim_end_matches('-')
    } else {
        name
    };
    let problems = match rule {
        NameRule::Subdomain => dns1123_subdomain(checked),
        NameRule::Label => dns1123_label(checked),
        NameRule::PathSegment => path_segment(checked),
    };
    problems
        .into_iter()
        .map(|p| Cause::invalid(field, &Value::String(name.to_string()), p))
        .collect()
}

/// Validates labels and annotations: keys are qualified names, label values at most 63
/// characters of the allowed set.
pub fn validate_labels(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    validate_string_map(obj, "labels", &mut causes, |v| match v.as_str() {
        Some(s) if valid_label_value(s) => None,
        _ => Some(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
        ),
    });
    validate_string_map(obj, "annotations", &mut causes, |v| {
        (!v.is_string()).then_some("must be a string")
    });
    causes
}

/// Validates `metadata.<field>`, a map (or null) with qualified names for keys; `bad_value`
/// says what is wrong with a value, if anything. Labels and annotations differ only there.
fn validate_string_map(
    obj: &Value,
    field: &str,
    causes: &mut Vec<Cause>,
    bad_value: impl Fn(&Value) -> Option<&'static str>,
) {
    let Some(map) = obj.get("metadata").and_then(|m| m.get(field)) else {
        return;
    };
    let path = format!("metadata.{field}");
    match map.as_object() {
        Some(entries) => {
            for (k, v) in entries {
                if let Some(p) = qualified_name(k) {
                    causes.push(Cause::invalid(&path, &Value::String(k.clone()), p));
                }
                if let Some(problem) = bad_value(v) {
                    causes.push(Cause::invalid(&path, v, problem));
                }
            }
        }
        None if map.is_null() => {}
        None => causes.push(Cause::invalid(&path, map, "must be a map")),
    }
}

fn valid_label_value(s: &str) -> bool {
    if s.is_empty() {
        return true;
    }
    let b = s.as_bytes();
    s.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A problem with a qualified name (`prefix/name`), if any.
fn qualified_name(k: &str) -> Option<String> {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix
        && (p.is_empty() || !dns1123_subdomain(p).is_empty())
    {
        return Some("prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character".to_string());
    }
    if name.is_empty() || name.len() > 63 || !valid_label_value(name) {
        return Some("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".to_string());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_are_validated_per_rule() {
        assert!(validate_name(NameRule::Subdomain, "a.b-c", false).is_empty());
        assert_eq!(
            validate_name(NameRule::Subdomain, "Bad", false)[0].field,
            "metadata.name"
        );
        assert!(!validate_name(NameRule::Label, "a.b", false).is_empty());
        assert!(validate_name(NameRule::Label, "gen-", true).is_empty());
        assert!(validate_name(NameRule::PathSegment, "system:admin", false).is_empty());
        assert!(!validate_name(NameRule::PathSegment, "a/b", false).is_empty());
        assert!(!validate_name(NameRule::Subdomain, &"a".repeat(254), false).is_empty());
    }

    #[test]
    fn labels_are_validated() {
        assert!(validate_labels(&json!({"metadata": {"labels": {"a.io/b": "c_d"}}})).is_empty());
        assert_eq!(
            validate_labels(
                &json!({"metadata": {"labels": {"a": "-x"}, "annotations": {"/x": "y"}}})
            )
            .len(),
            2
        );
    }
}
