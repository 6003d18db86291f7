//! Small HTTP helpers shared by the handlers.

use axum::body::Body;
use axum::response::Response;
use http::{HeaderValue, StatusCode, header};
use serde_json::Value;

/// A JSON response.
pub fn json_response(code: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(Body::from(bytes));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A JSON response sent as the concatenation of its parts.
pub fn json_parts_response(code: StatusCode, parts: [bytes::Bytes; 2]) -> Response {
    let len: usize = parts.iter().map(bytes::Bytes::len).sum();
    let stream = futures::stream::iter(parts.map(Ok::<_, std::convert::Infallible>));
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

/// A plain-text response (health endpoints answer `ok`).
pub fn text_response(code: StatusCode, body: &'static str) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
