//! Hooks into this module's private request-body, patch and query code for
//! [`crate::fuzzing`] (the fuzz targets in `fuzz/` and their corpus-replay tests). A child
//! module, so the handlers' functions stay private; nothing here is used by the server.

use std::sync::{Arc, LazyLock};

use http::{HeaderMap, HeaderValue, header};
use serde_json::Value;

use super::{
    apply_patch, delete_options, list_options, parse_json, patch_sets_resource_version, patch_type,
};
use crate::error::ApiError;
use crate::registry::{Registry, ResourceDef};
use crate::request::Query;
use crate::storage::ListOptions;

/// A body as the create, update and review handlers read it: `read_body`'s protobuf and CBOR
/// handling for `content_type`, then `parse_json` (JSON, else YAML).
pub(crate) fn decode_body(content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    if content_type.contains("cbor") {
        return Err(ApiError::unsupported_media_type(&[
            "application/json",
            "application/yaml",
            "application/vnd.kubernetes.protobuf",
        ]));
    }
    if content_type.contains("protobuf") && crate::protobuf::is_protobuf(body) {
        let obj = crate::protobuf::decode(body)?;
        let json = serde_json::to_vec(&obj).map_err(|e| ApiError::internal(e.to_string()))?;
        return parse_json(&json);
    }
    parse_json(body)
}

/// A body as the delete and deletecollection handlers read it.
pub(crate) fn decode_delete_options(body: &[u8]) -> Result<(), ApiError> {
    delete_options(&Query::default(), body).map(|_| ())
}

/// The ConfigMap definition: a built-in kind, so every patch type is accepted.
static CONFIG_MAPS: LazyLock<Option<Arc<ResourceDef>>> =
    LazyLock::new(|| Registry::new().get("", "v1", "configmaps"));

/// A patch as the patch handler applies it to `current` (a ConfigMap): the patch type from
/// `content_type`, the resourceVersion precondition, the patch itself, and the removal of the
/// current resourceVersion when the patch names none.
pub(crate) fn patch(current: &Value, content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    let def = CONFIG_MAPS
        .as_ref()
        .ok_or_else(|| ApiError::internal("configmaps are not served"))?;
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(content_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    let kind = patch_type(&headers, def)?;
    let precondition = patch_sets_resource_version(kind, body);
    let mut patched = apply_patch(current, kind, body, def)?;
    if !precondition {
        crate::storage::meta_mut(&mut patched).remove("resourceVersion");
    }
    Ok(patched)
}

/// A raw query string as the list, watch and deletecollection handlers read it.
pub(crate) fn list_query(raw: &str) -> Result<ListOptions, ApiError> {
    list_options(&Query::parse(Some(raw)))
}
