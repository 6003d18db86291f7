//! Label selectors (every operator: `=`, `==`, `!=`, `in`, `notin`, exists, `!` not-exists)
//! and field selectors on `metadata.name` and `metadata.namespace`.

use serde_json::Value;

use crate::error::ApiError;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

/// Splits on commas outside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn parse_set(rest: &str, raw: &str) -> Result<Vec<String>, ApiError> {
    let rest = rest.trim();
    let Some(open) = rest.strip_prefix('(') else {
        let token = rest.split([' ', ',', ')']).next().unwrap_or_default();
        return Err(ApiError::bad_request(format!(
            "unable to parse requirement: found '{token}' expected: '('"
        )));
    };
    let inner = open
        .strip_suffix(')')
        .ok_or_else(|| bad_selector(raw, "expected: ')'"))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

fn bad_selector(raw: &str, why: &str) -> ApiError {
    ApiError::bad_request(format!("unable to parse requirement: {raw:?}: {why}"))
}

/// A label value as upstream's selector parser checks it (at most 63 characters, alphanumeric
/// at both ends, `-`, `_` and `.` between), worded as kube-apiserver 1.20 words a bad one.
fn check_label_value(key: &str, value: &str) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    if value.len() > 63 {
        errors.push("must be no more than 63 characters");
    }
    let bytes = value.as_bytes();
    let ends_ok = |b: Option<&u8>| b.is_none_or(u8::is_ascii_alphanumeric);
    let chars_ok = bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !(chars_ok && ends_ok(bytes.first()) && ends_ok(bytes.last())) {
        errors.push(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
        );
    }
    if errors.is_empty() {
        return Ok(());
    }
    Err(ApiError::bad_request(format!(
        "unable to parse requirement: invalid label value: {value:?}: at key: {key:?}: {}",
        errors.join("; ")
    )))
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

impl LabelSelector {
    /// Parses the `labelSelector` query parameter.
    pub fn parse(raw: &str) -> Result<LabelSelector, ApiError> {
        let mut requirements = Vec::new();
        for part in split_top_level(raw) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let req = if let Some(key) = part.strip_prefix('!') {
                Requirement::NotExists(key.trim().to_string())
            } else if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = part.split_once("==") {
                Requirement::Equals(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = part.split_once('=') {
                Requirement::Equals(k.trim().to_string(), v.trim().to_string())
            } else if let Some(idx) = part.find(" notin ") {
                Requirement::NotIn(
                    part[..idx].trim().to_string(),
                    parse_set(&part[idx + 7..], part)?,
                )
            } else if let Some(idx) = part.find(" in ") {
                Requirement::In(
                    part[..idx].trim().to_string(),
                    parse_set(&part[idx + 4..], part)?,
                )
            } else {
                Requirement::Exists(part.to_string())
            };
            let key = match &req {
                Requirement::Equals(k, _)
                | Requirement::NotEquals(k, _)
                | Requirement::In(k, _)
                | Requirement::NotIn(k, _)
                | Requirement::Exists(k)
                | Requirement::NotExists(k) => k,
            };
            if !valid_key(key) {
                return Err(bad_selector(part, "invalid label key"));
            }
            let name_part = key.rsplit('/').next().unwrap_or(key);
            if name_part.len() > 63 {
                return Err(ApiError::bad_request(format!(
                    "unable to parse requirement: invalid label key {key:?}: name part must be no more than 63 characters"
                )));
            }
            let values: &[String] = match &req {
                Requirement::Equals(_, v) | Requirement::NotEquals(_, v) => std::slice::from_ref(v),
                Requirement::In(_, vs) | Requirement::NotIn(_, vs) => vs,
                Requirement::Exists(_) | Requirement::NotExists(_) => &[],
            };
            for value in values {
                check_label_value(key, value)?;
            }
            requirements.push(req);
        }
        Ok(LabelSelector { requirements })
    }

    /// Converts a structured `metav1.LabelSelector` (`matchLabels` and `matchExpressions` with
    /// `In`, `NotIn`, `Exists`, `DoesNotExist`), as upstream's `LabelSelectorAsSelector`; an
    /// empty selector matches everything.
    pub fn from_structured(selector: &Value) -> Result<LabelSelector, ApiError> {
        let mut requirements = Vec::new();
        if let Some(labels) = selector.get("matchLabels").and_then(Value::as_object) {
            for (key, value) in labels {
                let value = value.as_str().unwrap_or_default();
                if !valid_key(key) {
                    return Err(bad_selector(key, "invalid label key"));
                }
                requirements.push(Requirement::Equals(key.clone(), value.to_string()));
            }
        }
        let expressions = selector.get("matchExpressions").and_then(Value::as_array);
        for expression in expressions.into_iter().flatten() {
            let key = expression["key"].as_str().unwrap_or_default().to_string();
            if !valid_key(&key) {
                return Err(bad_selector(&key, "invalid label key"));
            }
            let values: Vec<String> = expression["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            let operator = expression["operator"].as_str().unwrap_or_default();
            requirements.push(match operator {
                "In" => Requirement::In(key, values),
                "NotIn" => Requirement::NotIn(key, values),
                "Exists" => Requirement::Exists(key),
                "DoesNotExist" => Requirement::NotExists(key),
                other => {
                    return Err(ApiError::bad_request(format!(
                        "{other:?} is not a valid label selector operator"
                    )));
                }
            });
        }
        Ok(LabelSelector { requirements })
    }

    /// Whether the selector is empty.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether an object's labels match.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
        })
    }
}

/// A parsed field selector over `metadata.name` and `metadata.namespace`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    /// (field, value, equal?)
    terms: Vec<(String, String, bool)>,
}

impl FieldSelector {
    /// Parses the `fieldSelector` query parameter.
    pub fn parse(raw: &str) -> Result<FieldSelector, ApiError> {
        let mut terms = Vec::new();
        for part in raw.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (field, value, equal) = if let Some((f, v)) = part.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, v, true)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, v, true)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{raw}'; can't understand '{part}'"
                )));
            };
            let field = field.trim();
            if field != "metadata.name" && field != "metadata.namespace" {
                return Err(ApiError::bad_request(format!(
                    "{field:?} is not a known field selector: only \"metadata.name\", \"metadata.namespace\""
                )));
            }
            terms.push((field.to_string(), value.trim().to_string(), equal));
        }
        Ok(FieldSelector { terms })
    }

    /// Whether the selector is empty.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// The name an equality term pins, which lets a list read a single key.
    pub fn pinned_name(&self) -> Option<&str> {
        self.terms
            .iter()
            .find(|(f, _, eq)| f == "metadata.name" && *eq)
            .map(|(_, v, _)| v.as_str())
    }

    /// Whether an object matches.
    pub fn matches(&self, obj: &Value) -> bool {
        self.terms.iter().all(|(field, value, equal)| {
            let actual = match field.as_str() {
                "metadata.name" => obj.pointer("/metadata/name"),
                _ => obj.pointer("/metadata/namespace"),
            }
            .and_then(Value::as_str)
            .unwrap_or_default();
            (actual == value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_values_are_checked_as_upstream() {
        assert!(LabelSelector::parse("a=b,c in (d, e-f),g!=h.i").is_ok());
        assert!(LabelSelector::parse("a=").is_ok());
        let message = |raw: &str| LabelSelector::parse(raw).err().map(|e| e.message);
        assert_eq!(
            message(&format!("a={}", "x".repeat(64))),
            Some(format!(
                "unable to parse requirement: invalid label value: {:?}: at key: \"a\": must be no more than 63 characters",
                "x".repeat(64)
            ))
        );
        assert!(message("a in (-b)").is_some_and(|m| m.contains("a valid label must be")));
        assert!(
            message(&format!("{}=b", "k".repeat(64)))
                .is_some_and(|m| m.ends_with("name part must be no more than 63 characters"))
        );
    }

    #[test]
    fn structured_selectors_match_as_kubernetes() -> Result<(), ApiError> {
        let obj = json!({"metadata": {"name": "a", "labels": {"app": "web", "tier": "front"}}});
        let matches = |selector: serde_json::Value| {
            LabelSelector::from_structured(&selector).map(|s| s.matches(&obj))
        };
        assert!(matches(json!({}))?);
        assert!(matches(json!({"matchLabels": {"app": "web"}}))?);
        assert!(!matches(
            json!({"matchLabels": {"app": "web", "tier": "back"}})
        )?);
        assert!(matches(json!({"matchExpressions": [
            {"key": "app", "operator": "In", "values": ["db", "web"]},
            {"key": "tier", "operator": "NotIn", "values": ["back"]},
            {"key": "tier", "operator": "Exists"},
            {"key": "missing", "operator": "DoesNotExist"}
        ]}))?);
        assert!(!matches(
            json!({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]})
        )?);
        assert!(!matches(
            json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]})
        )?);
        assert!(matches(json!({"matchExpressions": [{"key": "app", "operator": "Gt"}]})).is_err());
        Ok(())
    }

    #[test]
    fn every_label_operator_matches_as_kubernetes() -> Result<(), ApiError> {
        let obj = json!({"metadata": {"name": "a", "namespace": "n", "labels": {"app": "web", "tier": "front"}}});
        let yes = [
            "app=web",
            "app==web",
            "app!=db",
            "app in (web,db)",
            "tier notin (back)",
            "app",
            "!missing",
            "app=web,tier in (front)",
            "missing notin (x)",
            "",
        ];
        for s in yes {
            assert!(LabelSelector::parse(s)?.matches(&obj), "{s} should match");
        }
        let no = [
            "app=db",
            "app!=web",
            "app in (db)",
            "tier notin (front)",
            "missing",
            "!app",
            "missing in (x)",
        ];
        for s in no {
            assert!(
                !LabelSelector::parse(s)?.matches(&obj),
                "{s} should not match"
            );
        }
        assert!(LabelSelector::parse("a in b").is_err());
        Ok(())
    }

    #[test]
    fn field_selectors_cover_name_and_namespace() -> Result<(), ApiError> {
        let obj = json!({"metadata": {"name": "a", "namespace": "n"}});
        assert!(FieldSelector::parse("metadata.name=a")?.matches(&obj));
        assert!(FieldSelector::parse("metadata.namespace!=m,metadata.name==a")?.matches(&obj));
        assert!(!FieldSelector::parse("metadata.name!=a")?.matches(&obj));
        assert_eq!(
            FieldSelector::parse("metadata.name=a")?.pinned_name(),
            Some("a")
        );
        assert!(FieldSelector::parse("spec.x=1").is_err());
        Ok(())
    }
}
