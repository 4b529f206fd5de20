//! The one error table: for every [`ErrorCode`] the client's HTTP status,
//! OpenAI `type` and `code`; for every [`FailureKind`] the code it becomes
//! before the first byte, whether another backend may be tried, whom the
//! failure blames (the backend's breaker or the request), and the fixed
//! message a client sees in place of the engine's own text.
//!
//! Each mapping is one exhaustive `match` here: a new kind or code without
//! a row does not compile, and no other module decides a status, a type, a
//! retry or a blame. The rows are documented for operators in
//! `docs/operations.md` ("Failure blame and error mapping").

use crate::FailureKind;

/// Whose fault a failure is, which decides what it does to the backend's
/// circuit breaker and whether other backends are tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Blame {
    /// The backend's: it counts towards opening the backend's breaker (and
    /// an overload answer lowers its adaptive concurrency limit).
    Backend,
    /// The request's own (its size, its grammar, its values, its deadline):
    /// neutral for the breaker, and never retried on another backend, which
    /// would fail it the same way.
    Request,
    /// Nobody's (a cancel, a configuration mismatch, an endpoint the engine
    /// lacks): neutral for the breaker; the kind's retry rule applies.
    Neither,
}

impl Blame {
    /// A stable name (`backend`, `request`, `neither`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Blame::Backend => "backend",
            Blame::Request => "request",
            Blame::Neither => "neither",
        }
    }
}

/// The contract's error codes: the `code` of every error body the gateway
/// answers before the first byte (and the `outcome` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// Malformed JSON, bad field types, bad values.
    InvalidRequest,
    /// Prompt estimate plus `max_tokens` above the context window.
    ContextLengthExceeded,
    /// Missing or unknown key.
    InvalidApiKey,
    /// Model outside the tenant's allow-list.
    ModelNotAllowed,
    /// Model not configured.
    ModelNotFound,
    /// Body above `max_body_bytes`.
    RequestTooLarge,
    /// A requests, tokens or concurrency limit.
    RateLimitExceeded,
    /// Admitting would overspend the budget.
    BudgetExceeded,
    /// Every eligible backend failed before the first byte.
    UpstreamError,
    /// No capacity within the admission wait.
    Overloaded,
    /// First-token timeout on every attempt.
    UpstreamTimeout,
    /// The client went away (nobody reads the answer).
    Canceled,
    /// A bug or unexpected state in the gateway.
    Internal,
    /// The budget ledger cannot be reached (Redis down or too slow, or its
    /// settle journal full): admission fails closed, retry later.
    LedgerUnavailable,
    /// The shared rate and concurrency limits cannot be checked (the
    /// limiter's Redis down or too slow): admission fails closed, retry
    /// later.
    LimiterUnavailable,
    /// No backend of the model (nor of its fallbacks) can serve what the
    /// request asks for (tools, reasoning, structured output, images,
    /// logprobs): refused before admission, nothing reserved.
    UnsupportedCapability,
}

/// What the client sees of an [`ErrorCode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeRow {
    /// The HTTP status.
    pub status: u16,
    /// The OpenAI `type` of the error body.
    pub error_type: &'static str,
    /// The `code` of the error body.
    pub code: &'static str,
}

impl ErrorCode {
    /// Every code, in table order.
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::InvalidRequest,
        ErrorCode::ContextLengthExceeded,
        ErrorCode::InvalidApiKey,
        ErrorCode::ModelNotAllowed,
        ErrorCode::ModelNotFound,
        ErrorCode::RequestTooLarge,
        ErrorCode::RateLimitExceeded,
        ErrorCode::BudgetExceeded,
        ErrorCode::UpstreamError,
        ErrorCode::Overloaded,
        ErrorCode::UpstreamTimeout,
        ErrorCode::Canceled,
        ErrorCode::Internal,
        ErrorCode::LedgerUnavailable,
        ErrorCode::LimiterUnavailable,
        ErrorCode::UnsupportedCapability,
    ];

    /// The code's row of the table.
    pub const fn row(self) -> CodeRow {
        const fn row(status: u16, code: &'static str) -> CodeRow {
            CodeRow {
                status,
                error_type: error_type_for_status(status),
                code,
            }
        }
        match self {
            ErrorCode::InvalidRequest => row(400, "invalid_request"),
            ErrorCode::ContextLengthExceeded => row(400, "context_length_exceeded"),
            ErrorCode::InvalidApiKey => row(401, "invalid_api_key"),
            ErrorCode::ModelNotAllowed => row(403, "model_not_allowed"),
            ErrorCode::ModelNotFound => row(404, "model_not_found"),
            ErrorCode::RequestTooLarge => row(413, "request_too_large"),
            ErrorCode::RateLimitExceeded => row(429, "rate_limit_exceeded"),
            ErrorCode::BudgetExceeded => row(429, "budget_exceeded"),
            ErrorCode::UpstreamError => row(502, "upstream_error"),
            ErrorCode::Overloaded => row(503, "overloaded"),
            ErrorCode::UpstreamTimeout => row(504, "upstream_timeout"),
            // 499 "client closed request": nobody is left to read it, but
            // logs and metrics see an honest status.
            ErrorCode::Canceled => row(499, "canceled"),
            ErrorCode::Internal => row(500, "internal_error"),
            ErrorCode::LedgerUnavailable => row(503, "ledger_unavailable"),
            ErrorCode::LimiterUnavailable => row(503, "limiter_unavailable"),
            ErrorCode::UnsupportedCapability => row(400, "unsupported_capability"),
        }
    }

    /// The `code` of the error body (also the `outcome` metric label).
    pub const fn as_str(self) -> &'static str {
        self.row().code
    }

    /// The HTTP status.
    pub fn status(self) -> http::StatusCode {
        status_code(self.row().status)
    }

    /// The OpenAI `type` of the error body.
    pub const fn error_type(self) -> &'static str {
        self.row().error_type
    }
}

/// The OpenAI error `type` of a status, for every error body the gateway
/// writes (its codes' rows and the few bodies outside them, a 404 route):
/// `authentication_error` (401), `permission_error` (403),
/// `rate_limit_error` (429), `upstream_error` (502, 504), `server_error`
/// (other 5xx), `invalid_request_error` (everything else: 400, 404, 413,
/// 431, 499).
pub const fn error_type_for_status(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        502 | 504 => "upstream_error",
        500..=599 => "server_error",
        _ => "invalid_request_error",
    }
}

/// The `type` of the frame that ends a stream after its first byte (its
/// `code` is the failure kind's name).
pub const STREAM_ERROR_TYPE: &str = "upstream_error";

/// What a [`FailureKind`] means to the client, the retry loop and the
/// breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureRow {
    /// The code the client gets when the failure ends the request before
    /// its first byte (its status and `type` are the code's row).
    pub code: ErrorCode,
    /// Whether, before the first token, another backend may be tried.
    pub retry: bool,
    /// Whose fault it is.
    pub blame: Blame,
    /// The fixed client message; the engine's own text goes to the logs.
    pub message: &'static str,
}

/// The kind's row of the table.
pub const fn failure_row(kind: FailureKind) -> FailureRow {
    const fn row(code: ErrorCode, retry: bool, blame: Blame, message: &'static str) -> FailureRow {
        FailureRow {
            code,
            retry,
            blame,
            message,
        }
    }
    use Blame::{Backend, Neither, Request};
    use ErrorCode as C;
    match kind {
        FailureKind::Connect => row(
            C::UpstreamError,
            true,
            Backend,
            "the engine could not be reached",
        ),
        FailureKind::FirstTokenTimeout => row(
            C::UpstreamTimeout,
            true,
            Backend,
            "no first token within the first-token timeout",
        ),
        FailureKind::IdleTimeout => row(
            C::UpstreamTimeout,
            false,
            Backend,
            "the engine sent nothing for longer than the idle timeout",
        ),
        FailureKind::TotalTimeout => row(
            C::UpstreamTimeout,
            false,
            Request,
            "the request ran past its timeout",
        ),
        FailureKind::Overloaded => row(C::Overloaded, true, Backend, "the engine is overloaded"),
        FailureKind::OutOfMemory => row(
            C::Overloaded,
            true,
            Backend,
            "the engine ran out of memory for this request",
        ),
        FailureKind::ContextLengthExceeded => row(
            C::ContextLengthExceeded,
            false,
            Request,
            "the prompt and max_tokens exceed the model's context window",
        ),
        FailureKind::InvalidRequest => row(
            C::InvalidRequest,
            false,
            Request,
            "the engine rejected the request as invalid",
        ),
        FailureKind::ModelNotFound => row(
            C::UpstreamError,
            false,
            Neither,
            "the engine does not serve the configured model",
        ),
        FailureKind::Unauthorized => row(
            C::UpstreamError,
            false,
            Neither,
            "the engine refused the gateway's credentials",
        ),
        FailureKind::ProtocolViolation => row(
            C::UpstreamError,
            true,
            Backend,
            "the engine broke its protocol",
        ),
        FailureKind::UpstreamStatus => row(
            C::UpstreamError,
            true,
            Backend,
            "the engine answered an unexpected status",
        ),
        FailureKind::Canceled => row(C::Canceled, false, Neither, "the request was canceled"),
        FailureKind::Internal => row(
            C::UpstreamError,
            true,
            Backend,
            "the engine failed the request",
        ),
        FailureKind::Unsupported => row(
            C::InvalidRequest,
            true,
            Neither,
            "the engine does not serve this endpoint",
        ),
    }
}

/// Whether a stream that failed this way after its first token may go on
/// on another backend, started again from the prompt and the tokens
/// already delivered: the engine's own failure (its connection reset or
/// its process gone, out of memory or KV cache, silent past the idle
/// timeout, a broken stream, an error frame or status of its own), not the
/// request's (its deadline, its values, its size), a cancel or a
/// configuration mismatch that another backend would repeat.
pub const fn continues_after_first_token(kind: FailureKind) -> bool {
    match kind {
        FailureKind::Connect
        | FailureKind::IdleTimeout
        | FailureKind::Overloaded
        | FailureKind::OutOfMemory
        | FailureKind::ProtocolViolation
        | FailureKind::UpstreamStatus
        | FailureKind::Internal => true,
        // Only before the first token; no stream to continue.
        FailureKind::FirstTokenTimeout
        | FailureKind::TotalTimeout
        | FailureKind::ContextLengthExceeded
        | FailureKind::InvalidRequest
        | FailureKind::ModelNotFound
        | FailureKind::Unauthorized
        | FailureKind::Canceled
        | FailureKind::Unsupported => false,
    }
}

/// A status of the table as an [`http::StatusCode`] (every status of the
/// table is valid; 500 if one were not).
fn status_code(status: u16) -> http::StatusCode {
    http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_that_continue_after_the_first_token() {
        let continuing: Vec<FailureKind> = FailureKind::ALL
            .into_iter()
            .filter(|k| continues_after_first_token(*k))
            .collect();
        assert_eq!(
            continuing,
            vec![
                FailureKind::Connect,
                FailureKind::IdleTimeout,
                FailureKind::Overloaded,
                FailureKind::OutOfMemory,
                FailureKind::ProtocolViolation,
                FailureKind::UpstreamStatus,
                FailureKind::Internal,
            ]
        );
        // Every kind that continues blames the backend.
        assert!(
            continuing
                .iter()
                .all(|k| failure_row(*k).blame == Blame::Backend)
        );
    }

    #[test]
    fn every_code_row() {
        let table: Vec<(ErrorCode, u16, &str, &str)> = ErrorCode::ALL
            .into_iter()
            .map(|c| (c, c.row().status, c.row().error_type, c.row().code))
            .collect();
        use ErrorCode as C;
        assert_eq!(
            table,
            vec![
                (
                    C::InvalidRequest,
                    400,
                    "invalid_request_error",
                    "invalid_request"
                ),
                (
                    C::ContextLengthExceeded,
                    400,
                    "invalid_request_error",
                    "context_length_exceeded"
                ),
                (
                    C::InvalidApiKey,
                    401,
                    "authentication_error",
                    "invalid_api_key"
                ),
                (
                    C::ModelNotAllowed,
                    403,
                    "permission_error",
                    "model_not_allowed"
                ),
                (
                    C::ModelNotFound,
                    404,
                    "invalid_request_error",
                    "model_not_found"
                ),
                (
                    C::RequestTooLarge,
                    413,
                    "invalid_request_error",
                    "request_too_large"
                ),
                (
                    C::RateLimitExceeded,
                    429,
                    "rate_limit_error",
                    "rate_limit_exceeded"
                ),
                (
                    C::BudgetExceeded,
                    429,
                    "rate_limit_error",
                    "budget_exceeded"
                ),
                (C::UpstreamError, 502, "upstream_error", "upstream_error"),
                (C::Overloaded, 503, "server_error", "overloaded"),
                (
                    C::UpstreamTimeout,
                    504,
                    "upstream_error",
                    "upstream_timeout"
                ),
                (C::Canceled, 499, "invalid_request_error", "canceled"),
                (C::Internal, 500, "server_error", "internal_error"),
                (
                    C::LedgerUnavailable,
                    503,
                    "server_error",
                    "ledger_unavailable"
                ),
                (
                    C::LimiterUnavailable,
                    503,
                    "server_error",
                    "limiter_unavailable"
                ),
                (
                    C::UnsupportedCapability,
                    400,
                    "invalid_request_error",
                    "unsupported_capability"
                ),
            ]
        );
        for c in ErrorCode::ALL {
            assert_eq!(c.status().as_u16(), c.row().status, "{c:?}");
            assert_eq!(c.as_str(), c.row().code);
            assert_eq!(c.error_type(), c.row().error_type);
        }
    }

    #[test]
    fn every_failure_row() {
        use Blame::{Backend as B, Neither as N, Request as R};
        use FailureKind as K;
        let table: Vec<(FailureKind, u16, &str, &str, bool, Blame)> = FailureKind::ALL
            .into_iter()
            .map(|k| {
                let r = failure_row(k);
                let c = r.code.row();
                (k, c.status, c.error_type, c.code, r.retry, r.blame)
            })
            .collect();
        assert_eq!(
            table,
            vec![
                (K::Connect, 502, "upstream_error", "upstream_error", true, B),
                (
                    K::FirstTokenTimeout,
                    504,
                    "upstream_error",
                    "upstream_timeout",
                    true,
                    B
                ),
                (
                    K::IdleTimeout,
                    504,
                    "upstream_error",
                    "upstream_timeout",
                    false,
                    B
                ),
                (
                    K::TotalTimeout,
                    504,
                    "upstream_error",
                    "upstream_timeout",
                    false,
                    R
                ),
                (K::Overloaded, 503, "server_error", "overloaded", true, B),
                (K::OutOfMemory, 503, "server_error", "overloaded", true, B),
                (
                    K::ContextLengthExceeded,
                    400,
                    "invalid_request_error",
                    "context_length_exceeded",
                    false,
                    R
                ),
                (
                    K::InvalidRequest,
                    400,
                    "invalid_request_error",
                    "invalid_request",
                    false,
                    R
                ),
                (
                    K::ModelNotFound,
                    502,
                    "upstream_error",
                    "upstream_error",
                    false,
                    N
                ),
                (
                    K::Unauthorized,
                    502,
                    "upstream_error",
                    "upstream_error",
                    false,
                    N
                ),
                (
                    K::ProtocolViolation,
                    502,
                    "upstream_error",
                    "upstream_error",
                    true,
                    B
                ),
                (
                    K::UpstreamStatus,
                    502,
                    "upstream_error",
                    "upstream_error",
                    true,
                    B
                ),
                (
                    K::Canceled,
                    499,
                    "invalid_request_error",
                    "canceled",
                    false,
                    N
                ),
                (
                    K::Internal,
                    502,
                    "upstream_error",
                    "upstream_error",
                    true,
                    B
                ),
                (
                    K::Unsupported,
                    400,
                    "invalid_request_error",
                    "invalid_request",
                    true,
                    N
                ),
            ]
        );
    }

    #[test]
    fn every_failure_message() {
        let messages: Vec<(FailureKind, &str)> = FailureKind::ALL
            .into_iter()
            .map(|k| (k, failure_row(k).message))
            .collect();
        use FailureKind as K;
        assert_eq!(
            messages,
            vec![
                (K::Connect, "the engine could not be reached"),
                (
                    K::FirstTokenTimeout,
                    "no first token within the first-token timeout"
                ),
                (
                    K::IdleTimeout,
                    "the engine sent nothing for longer than the idle timeout"
                ),
                (K::TotalTimeout, "the request ran past its timeout"),
                (K::Overloaded, "the engine is overloaded"),
                (
                    K::OutOfMemory,
                    "the engine ran out of memory for this request"
                ),
                (
                    K::ContextLengthExceeded,
                    "the prompt and max_tokens exceed the model's context window"
                ),
                (
                    K::InvalidRequest,
                    "the engine rejected the request as invalid"
                ),
                (
                    K::ModelNotFound,
                    "the engine does not serve the configured model"
                ),
                (
                    K::Unauthorized,
                    "the engine refused the gateway's credentials"
                ),
                (K::ProtocolViolation, "the engine broke its protocol"),
                (
                    K::UpstreamStatus,
                    "the engine answered an unexpected status"
                ),
                (K::Canceled, "the request was canceled"),
                (K::Internal, "the engine failed the request"),
                (K::Unsupported, "the engine does not serve this endpoint"),
            ]
        );
    }

    #[test]
    fn request_blame_never_retries_and_retry_implies_no_request_blame() {
        for kind in FailureKind::ALL {
            let row = failure_row(kind);
            if row.blame == Blame::Request {
                assert!(!row.retry, "{kind}");
            }
        }
    }

    #[test]
    fn types_by_status() {
        let table: Vec<(u16, &str)> = [400, 401, 403, 404, 413, 429, 431, 499, 500, 502, 503, 504]
            .into_iter()
            .map(|s| (s, error_type_for_status(s)))
            .collect();
        assert_eq!(
            table,
            vec![
                (400, "invalid_request_error"),
                (401, "authentication_error"),
                (403, "permission_error"),
                (404, "invalid_request_error"),
                (413, "invalid_request_error"),
                (429, "rate_limit_error"),
                (431, "invalid_request_error"),
                (499, "invalid_request_error"),
                (500, "server_error"),
                (502, "upstream_error"),
                (503, "server_error"),
                (504, "upstream_error"),
            ]
        );
    }
}
