//! Responses: OpenAI-shaped errors with their status and headers.

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use gateway_policy::{ErrorCode, GatewayError};
use http::{HeaderValue, StatusCode, header};

use crate::openai::{RequestError, code_error_body, error_body};

/// A JSON response.
pub(crate) fn json(status: StatusCode, body: Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The error response for a contract error code.
pub(crate) fn error(code: ErrorCode, message: &str) -> Response {
    json(code.status(), code_error_body(code, message, None))
}

/// The response of a [`GatewayError`], with `Retry-After` when it has one.
pub(crate) fn gateway_error(err: &GatewayError) -> Response {
    let mut response = error(err.code(), err.message());
    if let Some(after) = err.retry_after() {
        // Whole seconds, rounded up, at least 1.
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    response
}

/// The response of an invalid request body.
pub(crate) fn request_error(err: &RequestError) -> Response {
    json(err.status(), err.to_body())
}

/// A 404 for routes that do not exist.
pub(crate) fn not_found() -> Response {
    json(
        StatusCode::NOT_FOUND,
        error_body(StatusCode::NOT_FOUND, "not_found", "no such route", None),
    )
}
