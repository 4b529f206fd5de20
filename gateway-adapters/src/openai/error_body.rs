//! Error bodies: the gateway's own (`{"error":{"message","type","code","param"}}`),
//! the in-stream failure frame, and reading the many shapes engines use.

use bytes::{Bytes, BytesMut};
use gateway_core::FailureKind;
use gateway_core::http::StatusCode;
use serde_json::Value;

use super::json::{Sink, string_into, u64_into};
use super::types::{ErrorCode, ErrorDetail};

pub use gateway_core::error_table::STREAM_ERROR_TYPE;

/// The OpenAI error `type` for a status, from the error table
/// ([`gateway_core::error_table::error_type_for_status`]):
/// `invalid_request_error` (400, 404, 413 and other 4xx),
/// `authentication_error` (401), `permission_error` (403),
/// `rate_limit_error` (429), `upstream_error` (502, 504), `server_error`
/// (other 5xx).
pub fn error_type(status: StatusCode) -> &'static str {
    gateway_core::error_table::error_type_for_status(status.as_u16())
}

/// The body of an error of the contract's `code`: its status's type, its
/// code, `message` and `param`, as [`error_body`] writes them.
pub fn code_error_body(code: gateway_core::ErrorCode, message: &str, param: Option<&str>) -> Bytes {
    error_body(code.status(), code.as_str(), message, param)
}

/// The body of an error response:
/// `{"error":{"message":..,"type":<error_type(status)>,"code":..,"param":..}}`
/// (`param` is `null` when `None`).
pub fn error_body(status: StatusCode, code: &str, message: &str, param: Option<&str>) -> Bytes {
    let mut out = BytesMut::with_capacity(message.len() + code.len() + 96);
    out.put(b"{\"error\":{\"message\":");
    string_into(&mut out, message);
    out.put(b",\"type\":\"");
    out.put(error_type(status).as_bytes());
    out.put(b"\",\"code\":");
    string_into(&mut out, code);
    out.put(b",\"param\":");
    match param {
        Some(param) => string_into(&mut out, param),
        None => out.put(b"null"),
    }
    out.put(b"}}");
    out.freeze()
}

/// The frame that ends a stream after the first byte:
/// `data: {"error":{"message":..,"type":"upstream_error","code":"<kind>"}}\n\n`.
/// `message` must be client-safe: the kind's fixed message
/// ([`gateway_core::BackendError::client_message`]), never an engine's text.
pub fn stream_error_frame(kind: FailureKind, message: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(message.len() + 96);
    stream_error_into(&mut out, kind, message);
    out.freeze()
}

pub(crate) fn stream_error_into(out: &mut impl Sink, kind: FailureKind, message: &str) {
    out.put(b"data: {\"error\":{\"message\":");
    string_into(out, message);
    out.put(b",\"type\":\"");
    out.put(STREAM_ERROR_TYPE.as_bytes());
    out.put(b"\",\"code\":\"");
    out.put(kind.as_str().as_bytes());
    out.put(b"\"}}\n\n");
}

/// The body of `GET /v1/models`:
/// `{"object":"list","data":[{"id":..,"object":"model","created":..,"owned_by":..},..]}`.
pub fn models_body<'a>(
    models: impl IntoIterator<Item = &'a str>,
    created: u64,
    owned_by: &str,
) -> Bytes {
    let mut out = BytesMut::with_capacity(256);
    out.put(b"{\"object\":\"list\",\"data\":[");
    for (i, id) in models.into_iter().enumerate() {
        if i > 0 {
            out.put(b",");
        }
        out.put(b"{\"id\":");
        string_into(&mut out, id);
        out.put(b",\"object\":\"model\",\"created\":");
        u64_into(&mut out, created);
        out.put(b",\"owned_by\":");
        string_into(&mut out, owned_by);
        out.put(b"}");
    }
    out.put(b"]}");
    out.freeze()
}

/// Reads an engine's error, in any of the shapes of ENGINES.md §1.4, from
/// a response body or an SSE `data:` payload:
/// - OpenAI / vLLM / Dynamo 2026: `{"error":{"message","type","param","code"}}`
///   (`code` a string or a number);
/// - SGLang / trtllm-serve / Dynamo: flat `{"object":"error","message",..}`
///   or `{"message","type","code"}` (no `choices`);
/// - Triton and SGLang native: `{"error":"<message>"}`.
///
/// `None` if `json` is not one of them (a normal chunk, say).
pub fn parse_upstream_error(json: &[u8]) -> Option<ErrorDetail> {
    let Value::Object(mut object) = serde_json::from_slice::<Value>(json).ok()? else {
        return None;
    };
    match object.remove("error") {
        Some(Value::Object(inner)) => Some(detail(inner)),
        Some(Value::String(message)) => Some(ErrorDetail {
            message,
            ..ErrorDetail::default()
        }),
        Some(_) => None,
        None => {
            let flat = object.get("object").and_then(Value::as_str) == Some("error")
                || (object.get("message").is_some_and(Value::is_string)
                    && !object.contains_key("choices"));
            flat.then(|| detail(object))
        }
    }
}

fn detail(mut object: serde_json::Map<String, Value>) -> ErrorDetail {
    let mut text = |key: &str| match object.remove(key) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    let message = text("message").unwrap_or_default();
    let kind = text("type").unwrap_or_default();
    let param = text("param");
    let code = match object.remove("code") {
        Some(Value::String(s)) => Some(ErrorCode::Text(s)),
        Some(Value::Number(n)) => n.as_i64().map(ErrorCode::Number),
        _ => None,
    };
    ErrorDetail {
        message,
        kind,
        code,
        param,
    }
}
