//! How a live object differs from its manifest, on the manifest's fields only.
//!
//! Only fields the manifest sets are compared, which are exactly the fields Atoll applies (and,
//! under server-side apply, owns). Fields it does not set, such as an HPA's replicas when the
//! manifest leaves them out, or anything the API server defaults, are never reported and never
//! reverted. Of the metadata only labels and annotations are compared; `status` never is.

use atoll_api::work::FieldDifference;
use serde_json::Value;

/// The differences, as JSON pointers with both values.
pub fn diff(manifest: &Value, live: &Value) -> Vec<FieldDifference> {
    let mut out = Vec::new();
    let (Some(manifest), Some(live)) = (manifest.as_object(), live.as_object()) else {
        compare(manifest, Some(live), String::new(), &mut out);
        return out;
    };
    for (key, wanted) in manifest {
        let path = format!("/{}", escape(key));
        match key.as_str() {
            "apiVersion" | "kind" | "status" => {}
            "metadata" => {
                for field in ["labels", "annotations"] {
                    if let Some(wanted) = wanted.get(field) {
                        compare(
                            wanted,
                            live.get("metadata").and_then(|m| m.get(field)),
                            format!("/metadata/{field}"),
                            &mut out,
                        );
                    }
                }
            }
            _ => compare(wanted, live.get(key), path, &mut out),
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

fn compare(wanted: &Value, live: Option<&Value>, path: String, out: &mut Vec<FieldDifference>) {
    let Some(live) = live else {
        if !wanted.is_null() {
            out.push(difference(path, None, wanted));
        }
        return;
    };
    match (wanted, live) {
        (Value::Object(wanted), Value::Object(live)) => {
            for (key, value) in wanted {
                compare(value, live.get(key), format!("{path}/{}", escape(key)), out);
            }
        }
        (Value::Array(w), Value::Array(l)) if w.len() == l.len() => {
            for (i, (w, l)) in w.iter().zip(l).enumerate() {
                compare(w, Some(l), format!("{path}/{i}"), out);
            }
        }
        (Value::Number(w), Value::Number(l)) if w.as_f64() == l.as_f64() => {}
        (w, l) if w == l => {}
        // An empty map or list in the manifest is what the API server drops.
        (Value::Object(w), Value::Null) if w.is_empty() => {}
        (Value::Array(w), Value::Null) if w.is_empty() => {}
        (w, l) => out.push(difference(path, Some(l), w)),
    }
}

fn difference(path: String, live: Option<&Value>, wanted: &Value) -> FieldDifference {
    FieldDifference {
        path: if path.is_empty() { "/".into() } else { path },
        value_in_member: live.map(Value::to_string),
        value_in_hub: Some(wanted.to_string()),
    }
}

/// JSON-pointer escaping (RFC 6901).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_the_manifests_fields_are_compared() {
        let manifest = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "nginx"}]}}}
        });
        let live = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "uid": "1", "labels": {"app": "web", "extra": "x"}},
            "spec": {"replicas": 5, "template": {"spec": {"containers": [
                {"name": "c", "image": "nginx", "imagePullPolicy": "Always"}]}}},
            "status": {"replicas": 5}
        });
        assert_eq!(diff(&manifest, &live), []);
    }

    #[test]
    fn changed_and_missing_fields_are_reported_with_both_values() {
        let manifest = json!({
            "metadata": {"name": "cm", "annotations": {"a/b": "1"}},
            "data": {"color": "blue", "size": "L"},
            "spec": {"replicas": 2, "list": [1, 2]}
        });
        let live = json!({
            "metadata": {"name": "cm", "annotations": {"a/b": "2"}},
            "data": {"color": "red"},
            "spec": {"replicas": 2.0, "list": [1]}
        });
        let found = diff(&manifest, &live);
        let summary: Vec<(&str, Option<&str>, Option<&str>)> = found
            .iter()
            .map(|d| {
                (
                    d.path.as_str(),
                    d.value_in_member.as_deref(),
                    d.value_in_hub.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("/data/color", Some("\"red\""), Some("\"blue\"")),
                ("/data/size", None, Some("\"L\"")),
                ("/metadata/annotations/a~1b", Some("\"2\""), Some("\"1\"")),
                ("/spec/list", Some("[1]"), Some("[1,2]")),
            ]
        );
    }
}
