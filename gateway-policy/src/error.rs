//! [`GatewayError`]: why the gateway refused or failed a request. Its
//! [`ErrorCode`]'s status, type and code, and the code a backend failure
//! becomes, are rows of the one error table ([`gateway_core::error_table`]).

use std::time::Duration;

use gateway_core::BackendError;
pub use gateway_core::ErrorCode;

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
    /// the code of the kind's row of the error table, and the kind's fixed
    /// message (the engine's text stays in the logs, see
    /// [`BackendError::client_message`]).
    pub fn from_backend(err: BackendError) -> Self {
        GatewayError {
            code: err.kind().row().code,
            message: err.client_message(),
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
    use gateway_core::FailureKind;

    #[test]
    fn backend_failures_map_to_codes() {
        let code = |k| GatewayError::from_backend(BackendError::new(k, "x")).code();
        for kind in FailureKind::ALL {
            assert_eq!(code(kind), kind.row().code, "{kind}");
        }
        let err = GatewayError::from_backend(
            BackendError::new(FailureKind::Overloaded, "full")
                .with_retry_after(Duration::from_secs(3)),
        );
        assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));
        assert_eq!(err.to_string(), "overloaded: the engine is overloaded");
        assert_eq!(err.upstream().map(BackendError::message), Some("full"));
    }
}
