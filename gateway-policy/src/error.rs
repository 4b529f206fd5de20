//! [`GatewayError`]: why the gateway refused or failed a request, with the
//! contract's status, code and type in one exhaustive match each.

use std::time::Duration;

use gateway_core::{BackendError, FailureKind};
use http::StatusCode;

/// The contract's error codes.
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
}

impl ErrorCode {
    /// Every code.
    pub const ALL: [ErrorCode; 14] = [
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
    ];

    /// The `code` of the error body (also the `outcome` metric label).
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::ContextLengthExceeded => "context_length_exceeded",
            ErrorCode::InvalidApiKey => "invalid_api_key",
            ErrorCode::ModelNotAllowed => "model_not_allowed",
            ErrorCode::ModelNotFound => "model_not_found",
            ErrorCode::RequestTooLarge => "request_too_large",
            ErrorCode::RateLimitExceeded => "rate_limit_exceeded",
            ErrorCode::BudgetExceeded => "budget_exceeded",
            ErrorCode::UpstreamError => "upstream_error",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::Canceled => "canceled",
            ErrorCode::Internal => "internal_error",
            ErrorCode::LedgerUnavailable => "ledger_unavailable",
        }
    }

    /// The HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::InvalidRequest | ErrorCode::ContextLengthExceeded => StatusCode::BAD_REQUEST,
            ErrorCode::InvalidApiKey => StatusCode::UNAUTHORIZED,
            ErrorCode::ModelNotAllowed => StatusCode::FORBIDDEN,
            ErrorCode::ModelNotFound => StatusCode::NOT_FOUND,
            ErrorCode::RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::RateLimitExceeded | ErrorCode::BudgetExceeded => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ErrorCode::UpstreamError => StatusCode::BAD_GATEWAY,
            ErrorCode::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::Canceled => FailureKind::Canceled.http_status(),
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::LedgerUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The OpenAI-style `type` of the error body.
    pub const fn error_type(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest
            | ErrorCode::ContextLengthExceeded
            | ErrorCode::RequestTooLarge => "invalid_request_error",
            ErrorCode::InvalidApiKey => "authentication_error",
            ErrorCode::ModelNotAllowed => "permission_error",
            ErrorCode::ModelNotFound => "not_found_error",
            ErrorCode::RateLimitExceeded | ErrorCode::BudgetExceeded => "rate_limit_error",
            ErrorCode::UpstreamError | ErrorCode::UpstreamTimeout => "upstream_error",
            ErrorCode::Overloaded => "overloaded_error",
            ErrorCode::Canceled => "canceled",
            ErrorCode::Internal => "server_error",
            ErrorCode::LedgerUnavailable => "service_unavailable_error",
        }
    }
}

/// A request the gateway refused or could not serve before its first byte.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}", code = code.as_str())]
pub struct GatewayError {
    code: ErrorCode,
    message: String,
    retry_after: Option<Duration>,
    #[source]
    upstream: Option<BackendError>,
}

impl GatewayError {
    /// An error with a client-safe message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        GatewayError {
            code,
            message: message.into(),
            retry_after: None,
            upstream: None,
        }
    }

    /// Adds a `Retry-After` hint.
    #[must_use]
    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = Some(retry_after);
        self
    }

    /// The error of a backend that ended a request before its first byte:
    /// the request's own faults keep their code; backend faults become
    /// `upstream_error`, `upstream_timeout` or `overloaded`.
    pub fn from_backend(err: BackendError) -> Self {
        let code = match err.kind() {
            FailureKind::InvalidRequest | FailureKind::Unsupported => ErrorCode::InvalidRequest,
            FailureKind::ContextLengthExceeded => ErrorCode::ContextLengthExceeded,
            FailureKind::FirstTokenTimeout
            | FailureKind::IdleTimeout
            | FailureKind::TotalTimeout => ErrorCode::UpstreamTimeout,
            FailureKind::Overloaded | FailureKind::OutOfMemory => ErrorCode::Overloaded,
            FailureKind::Canceled => ErrorCode::Canceled,
            FailureKind::Connect
            | FailureKind::ModelNotFound
            | FailureKind::Unauthorized
            | FailureKind::ProtocolViolation
            | FailureKind::UpstreamStatus
            | FailureKind::Internal => ErrorCode::UpstreamError,
            // A kind added to core later: the safest answer is a gateway error.
            _ => ErrorCode::UpstreamError,
        };
        GatewayError {
            code,
            message: err.message().to_owned(),
            retry_after: err.retry_after(),
            upstream: Some(err),
        }
    }

    /// The code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The client-safe message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// When to retry, for `Retry-After`.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The backend failure behind it, if any.
    pub fn upstream(&self) -> Option<&BackendError> {
        self.upstream.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_table() {
        let table: Vec<(&str, u16)> = ErrorCode::ALL
            .iter()
            .map(|c| (c.as_str(), c.status().as_u16()))
            .collect();
        assert_eq!(
            table,
            vec![
                ("invalid_request", 400),
                ("context_length_exceeded", 400),
                ("invalid_api_key", 401),
                ("model_not_allowed", 403),
                ("model_not_found", 404),
                ("request_too_large", 413),
                ("rate_limit_exceeded", 429),
                ("budget_exceeded", 429),
                ("upstream_error", 502),
                ("overloaded", 503),
                ("upstream_timeout", 504),
                ("canceled", 499),
                ("internal_error", 500),
                ("ledger_unavailable", 503),
            ]
        );
    }

    #[test]
    fn backend_failures_map_to_codes() {
        let code = |k| GatewayError::from_backend(BackendError::new(k, "x")).code();
        assert_eq!(code(FailureKind::Connect), ErrorCode::UpstreamError);
        assert_eq!(
            code(FailureKind::FirstTokenTimeout),
            ErrorCode::UpstreamTimeout
        );
        assert_eq!(code(FailureKind::Overloaded), ErrorCode::Overloaded);
        assert_eq!(
            code(FailureKind::ContextLengthExceeded),
            ErrorCode::ContextLengthExceeded
        );
        let err = GatewayError::from_backend(
            BackendError::new(FailureKind::Overloaded, "full")
                .with_retry_after(Duration::from_secs(3)),
        );
        assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));
        assert_eq!(err.to_string(), "overloaded: full");
    }
}
