//! Strategic merge patch for the built-in kinds: the kind's root type from `atoll-merge`'s
//! generated table, found by group, version and kind, so that every built-in kind the table
//! knows gets it without a line here; the engine's errors answered as kube-apiserver answers
//! them.

use atoll_merge::{ErrorClass, Node, Schema};
use serde_json::Value;

use crate::error::ApiError;
use crate::registry::ResourceDef;

/// The root type of a kind's objects, if a strategic merge patch applies to it: built-in
/// kinds the table knows (custom resources never: upstream answers them 415).
pub(super) fn root(def: &ResourceDef) -> Option<Node<'static>> {
    if def.custom {
        return None;
    }
    let schema = Schema::builtin().ok()?;
    let api_version = if def.group.is_empty() {
        def.version.clone()
    } else {
        format!("{}/{}", def.group, def.version)
    };
    schema.root(&api_version, &def.kind)
}

/// Applies a strategic merge patch to `current`.
pub(super) fn apply(current: &Value, patch: &Value, def: &ResourceDef) -> Result<Value, ApiError> {
    let root = root(def).ok_or_else(|| {
        ApiError::internal(format!("no strategic merge metadata for {}", def.kind))
    })?;
    atoll_merge::apply(current, patch, root).map_err(answer)
}

/// kube-apiserver's answer to an engine error (`interpretStrategicMergePatchError`, and its
/// handler's for the plain errors it passes on).
fn answer(e: atoll_merge::Error) -> ApiError {
    match e.class() {
        ErrorClass::BadRequest => ApiError::bad_request(e.to_string()),
        ErrorClass::Unprocessable => {
            tracing::debug!(error = %e, "strategic merge patch refused");
            ApiError {
                code: 422,
                reason: "Invalid",
                message: "the server rejected our request due to an error in our request".into(),
                details: None,
            }
        }
        // Upstream answers these with its plain-error Status: 500, no reason.
        ErrorClass::Internal => ApiError {
            code: 500,
            reason: "",
            message: e.to_string(),
            details: None,
        },
        ErrorClass::Panic => {
            tracing::warn!(error = %e, "a strategic merge patch that panics kube-apiserver");
            ApiError::internal(super::PANIC_MESSAGE)
        }
        ErrorClass::TooLarge => ApiError {
            code: 413,
            reason: "RequestEntityTooLarge",
            message: format!("Request entity too large: {e}"),
            details: None,
        },
    }
}
