//! The engine's errors, worded as k8s.io/apimachinery's `mergepatch` and `strategicpatch`
//! errors, and classed as kube-apiserver answers them (`interpretStrategicMergePatchError`).

/// How kube-apiserver answers an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// 400 BadRequest.
    BadRequest,
    /// 422 with no reason (upstream's generic server response).
    Unprocessable,
    /// 500 with no reason: upstream returns a plain error, which its handler answers so.
    Internal,
    /// 500 as upstream answers a request that made it panic.
    Panic,
    /// 413: the patch needs more work than the engine allows (no upstream counterpart).
    TooLarge,
}

/// Why a strategic merge patch was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The patch body is not a JSON object.
    #[error("json: cannot unmarshal {found} into Go value of type map[string]interface {{}}")]
    NotAnObject { found: &'static str },
    #[error("lists of lists are not supported")]
    NoListOfLists,
    #[error("invalid patch format of primitive list")]
    BadPatchFormatForPrimitiveList,
    #[error("invalid patch format of retainKeys")]
    BadPatchFormatForRetainKeys,
    #[error("invalid patch format of setElementOrder list")]
    BadPatchFormatForSetElementOrderList,
    /// `mergepatch.ErrNoMergeKey`; `map` is Go's `%v` of the element.
    #[error("map: {map} does not contain declared merge key: {key}")]
    NoMergeKey { map: String, key: String },
    /// `mergepatch.ErrBadArgType`, with Go's type names.
    #[error("expected a {expected}, but received a {actual}")]
    BadArgType {
        expected: &'static str,
        actual: &'static str,
    },
    /// `mergepatch.ErrBadPatchType`: a `$patch` value that is not a known directive.
    #[error("unknown patch type: {directive} in map: {map}")]
    BadPatchType { directive: String, map: String },
    #[error("merging lists cannot yet be specified in the patch")]
    MergeDirectiveInList,
    #[error("cannot merge lists without merge key for {name}")]
    NoMergeKeyDeclared { name: &'static str },
    #[error("list element types are not identical: {lists}")]
    ElementTypesDiffer { lists: String },
    #[error("no elements in any of the given slices")]
    NoElements,
    #[error("value for key {index} is not a map")]
    NotAMap { index: usize },
    #[error("The order in patch list:\n{patch}\n doesn't match $setElementOrder list:\n{order}\n")]
    OrderMismatch { patch: String, order: String },
    #[error("unexpected patch strategy: {strategies}")]
    UnexpectedPatchStrategy { strategies: String },
    /// Looking up a field's metadata inside a map type (upstream reflects on a Go map).
    #[error("merging an object in json but data type is not struct, instead is: map")]
    NotAStruct,
    /// Where upstream's Go code panics (a nil list element's type, an unhashable value used
    /// as a set key); kube-apiserver answers that with its panic Status.
    #[error("the patch makes upstream's strategic merge patch panic: {why}")]
    Panic { why: &'static str },
    /// The patch or the object nests deeper than [`crate::Limits::max_depth`].
    #[error("the strategic merge patch nests deeper than {limit} levels")]
    TooDeep { limit: usize },
    /// Applying the patch needs more than [`crate::Limits::max_steps`] steps.
    #[error("the strategic merge patch needs more than {limit} steps to apply")]
    TooExpensive { limit: u64 },
}

impl Error {
    /// How kube-apiserver answers this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::NotAnObject { .. }
            | Error::BadPatchFormatForPrimitiveList
            | Error::BadPatchFormatForRetainKeys
            | Error::BadPatchFormatForSetElementOrderList => ErrorClass::BadRequest,
            Error::NoListOfLists => ErrorClass::Unprocessable,
            Error::Panic { .. } => ErrorClass::Panic,
            Error::TooDeep { .. } | Error::TooExpensive { .. } => ErrorClass::TooLarge,
            _ => ErrorClass::Internal,
        }
    }
}
