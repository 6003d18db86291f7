//! Errors as Kubernetes `Status` objects, worded as kube-apiserver words them, so that clients
//! (kubectl, client-go, kube-rs) that match on reasons and messages behave as they do upstream.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Value, json};

use crate::registry::GroupResource;

/// One failing field of an Invalid (422) error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueNotSupported`, ...
    pub reason: &'static str,
    /// The field path, such as `metadata.name`.
    pub field: String,
    /// The message without the field path, such as `Invalid value: "A": ...`.
    pub message: String,
}

impl Cause {
    /// An invalid value.
    pub fn invalid(field: impl Into<String>, value: &Value, detail: impl AsRef<str>) -> Cause {
        let shown = match value {
            Value::String(s) => format!("{s:?}"),
            other => other.to_string(),
        };
        Cause {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {shown}: {}", detail.as_ref()),
        }
    }

    /// A required value that is missing.
    pub fn required(field: impl Into<String>, detail: impl AsRef<str>) -> Cause {
        let detail = detail.as_ref();
        Cause {
            reason: "FieldValueRequired",
            field: field.into(),
            message: if detail.is_empty() {
                "Required value".to_string()
            } else {
                format!("Required value: {detail}")
            },
        }
    }

    /// A value outside a fixed set.
    pub fn not_supported(field: impl Into<String>, value: &Value, supported: &[String]) -> Cause {
        let quoted: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        Cause {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!(
                "Unsupported value: {value}: supported values: {}",
                quoted.join(", ")
            ),
        }
    }

    /// A field that may not be set or changed.
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Cause {
        Cause {
            reason: "FieldValueForbidden",
            field: field.into(),
            message: format!("Forbidden: {}", detail.into()),
        }
    }

    /// A duplicate value.
    pub fn duplicate(field: impl Into<String>, value: &Value) -> Cause {
        Cause {
            reason: "FieldValueDuplicate",
            field: field.into(),
            message: format!("Duplicate value: {value}"),
        }
    }

    /// The cause as kube-apiserver prints it inside an Invalid message: `field: message`.
    pub fn to_text(&self) -> String {
        format!("{}: {}", self.field, self.message)
    }
}

/// An error answered as a `Status`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status code.
    pub code: u16,
    /// The machine-readable reason, such as `NotFound`.
    pub reason: &'static str,
    /// The human-readable message.
    pub message: String,
    /// `details`, when the error is about one object.
    pub details: Option<Value>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.reason, self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

fn details(gr: &GroupResource, name: &str) -> Value {
    let mut d = json!({ "kind": gr.resource });
    if !name.is_empty() {
        d["name"] = json!(name);
    }
    if !gr.group.is_empty() {
        d["group"] = json!(gr.group);
    }
    d
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// 404 `configmaps "x" not found`.
    pub fn not_found(gr: &GroupResource, name: &str) -> ApiError {
        ApiError {
            details: Some(details(gr, name)),
            ..ApiError::new(404, "NotFound", format!("{gr} {name:?} not found"))
        }
    }

    /// 404 for a path that serves nothing.
    pub fn path_not_found() -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    /// 409 `configmaps "x" already exists`.
    pub fn already_exists(gr: &GroupResource, name: &str) -> ApiError {
        ApiError {
            details: Some(details(gr, name)),
            ..ApiError::new(
                409,
                "AlreadyExists",
                format!("{gr} {name:?} already exists"),
            )
        }
    }

    /// 409 Conflict on an object.
    pub fn conflict(gr: &GroupResource, name: &str, why: impl std::fmt::Display) -> ApiError {
        ApiError {
            details: Some(details(gr, name)),
            ..ApiError::new(
                409,
                "Conflict",
                format!("Operation cannot be fulfilled on {gr} {name:?}: {why}"),
            )
        }
    }

    /// 409 for a stale resourceVersion.
    pub fn stale(gr: &GroupResource, name: &str) -> ApiError {
        ApiError::conflict(
            gr,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    /// 405.
    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }

    /// 401, worded exactly as kube-apiserver: `Unauthorized`.
    pub fn unauthorized() -> ApiError {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }

    /// 403 for a denied resource request, worded as kube-apiserver's RBAC denial.
    pub fn forbidden_resource(
        user: &str,
        verb: &str,
        gr: &GroupResource,
        subresource: Option<&str>,
        name: &str,
        namespace: Option<&str>,
    ) -> ApiError {
        let resource = match subresource {
            Some(sub) => format!("{}/{sub}", gr.resource),
            None => gr.resource.clone(),
        };
        let scope = match namespace {
            Some(ns) if !ns.is_empty() => format!("in the namespace {ns:?}"),
            _ => "at the cluster scope".to_string(),
        };
        let reason = format!(
            "User {user:?} cannot {verb} resource {resource:?} in API group {:?} {scope}",
            gr.group
        );
        let subject = if name.is_empty() {
            format!("{gr}")
        } else {
            format!("{gr} {name:?}")
        };
        ApiError {
            details: Some(details(gr, name)),
            ..ApiError::new(
                403,
                "Forbidden",
                format!("{subject} is forbidden: {reason}"),
            )
        }
    }

    /// 403 for a denied non-resource request.
    pub fn forbidden_path(user: &str, verb: &str, path: &str) -> ApiError {
        ApiError::new(
            403,
            "Forbidden",
            format!("forbidden: User {user:?} cannot {verb} path {path:?}"),
        )
    }

    /// 403 with a given message about an object.
    pub fn forbidden(gr: &GroupResource, name: &str, why: impl std::fmt::Display) -> ApiError {
        ApiError {
            details: Some(details(gr, name)),
            ..ApiError::new(
                403,
                "Forbidden",
                format!("{gr} {name:?} is forbidden: {why}"),
            )
        }
    }

    /// 410 Expired: the resourceVersion asked for has been compacted.
    pub fn expired(message: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", message)
    }

    /// 422 Invalid, naming each failing field.
    pub fn invalid(kind: &str, group: &str, name: &str, causes: Vec<Cause>) -> ApiError {
        let texts: Vec<String> = causes.iter().map(Cause::to_text).collect();
        let summary = if texts.len() == 1 {
            texts.join("")
        } else {
            format!("[{}]", texts.join(", "))
        };
        let causes: Vec<Value> = causes
            .iter()
            .map(|c| json!({ "reason": c.reason, "message": c.message, "field": c.field }))
            .collect();
        let mut d = json!({ "name": name, "kind": kind, "causes": causes });
        if !group.is_empty() {
            d["group"] = json!(group);
        }
        ApiError {
            details: Some(d),
            ..ApiError::new(
                422,
                "Invalid",
                format!(
                    "{} {name:?} is invalid: {summary}",
                    GroupResource::new(group, kind)
                ),
            )
        }
    }

    /// 415 for a patch type the resource does not accept.
    pub fn unsupported_media_type(accepted: &[&str]) -> ApiError {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: {}",
                accepted.join(", ")
            ),
        )
    }

    /// 413 for bodies over the limit.
    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            413,
            "RequestEntityTooLarge",
            format!("Request entity too large: limit is {limit}"),
        )
    }

    /// 413 for an object whose stored form is larger than etcd accepts in one request: the
    /// status kube-apiserver gives etcd's refusal, worded as etcd words it.
    pub fn stored_too_large() -> ApiError {
        ApiError::new(
            413,
            "RequestEntityTooLarge",
            "etcdserver: request is too large",
        )
    }

    /// 406 for an Accept header we cannot satisfy.
    pub fn not_acceptable(message: impl Into<String>) -> ApiError {
        ApiError::new(406, "NotAcceptable", message)
    }

    /// 500.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(500, "InternalError", message)
    }

    /// 503 (the server is shutting down or the store is unavailable).
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(503, "ServiceUnavailable", message)
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            status["details"] = d.clone();
        }
        // An error without a reason (upstream's StatusReasonUnknown) has none in its Status.
        if self.reason.is_empty()
            && let Some(fields) = status.as_object_mut()
        {
            fields.remove("reason");
        }
        status
    }
}

impl From<atoll_store::StoreError> for ApiError {
    fn from(err: atoll_store::StoreError) -> ApiError {
        use atoll_store::StoreError;
        match err {
            StoreError::Compacted {
                requested,
                compacted,
            } => ApiError::expired(format!(
                "too old resource version: {requested} ({compacted})"
            )),
            StoreError::FutureRevision { requested, current } => ApiError {
                // kube-apiserver answers a resourceVersion from the future with a 504-like
                // "Too large resource version" timeout; clients retry it.
                code: 504,
                reason: "Timeout",
                message: format!("Too large resource version: {requested}, current: {current}"),
                details: Some(
                    json!({ "causes": [{ "reason": "ResourceVersionTooLarge", "message": "Too large resource version" }], "retryAfterSeconds": 1 }),
                ),
            },
            StoreError::Closed => ApiError::unavailable("the storage is shutting down"),
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        crate::http_util::json_response(code, &self.to_status())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_is_worded_as_kube_apiserver() {
        let gr = GroupResource::new("", "configmaps");
        let err = ApiError::forbidden_resource("alice", "list", &gr, None, "", Some("y"));
        assert_eq!(
            err.message,
            r#"configmaps is forbidden: User "alice" cannot list resource "configmaps" in API group "" in the namespace "y""#
        );
        let gr = GroupResource::new("coordination.k8s.io", "leases");
        let err = ApiError::forbidden_resource("bob", "get", &gr, Some("status"), "l", None);
        assert_eq!(
            err.message,
            r#"leases.coordination.k8s.io "l" is forbidden: User "bob" cannot get resource "leases/status" in API group "coordination.k8s.io" at the cluster scope"#
        );
        assert_eq!(err.to_status()["details"]["group"], "coordination.k8s.io");
    }

    #[test]
    fn invalid_names_each_field() {
        let err = ApiError::invalid(
            "ConfigMap",
            "",
            "A",
            vec![Cause::invalid("metadata.name", &json!("A"), "bad")],
        );
        assert_eq!(
            err.message,
            r#"ConfigMap "A" is invalid: metadata.name: Invalid value: "A": bad"#
        );
        assert_eq!(err.code, 422);
        assert_eq!(
            err.to_status()["details"]["causes"][0]["field"],
            "metadata.name"
        );
    }
}
