//! One error type for every failure a request can meet, classified by kind and phase.
//!
//! Retryability, the client's status and code, and circuit-breaker blame
//! derive from the [`FailureKind`] (and the [`FailurePhase`]) through the
//! one [error table](crate::error_table), so a new kind without a row does
//! not compile.

use std::fmt;
use std::time::Duration;

use crate::error_table::Blame;

/// The class of a failure: small, `Copy`, safe to use as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum FailureKind {
    /// The engine could not be reached: connection refused, reset, DNS, TLS.
    Connect,
    /// No first token arrived within the first-token timeout.
    FirstTokenTimeout,
    /// The gap between two token events exceeded the idle timeout.
    IdleTimeout,
    /// The request ran past its total deadline.
    TotalTimeout,
    /// The engine (or the gateway) has no capacity now: queue full, 503, 529.
    Overloaded,
    /// The engine ran out of memory or KV-cache space for this request.
    OutOfMemory,
    /// Prompt plus requested completion is longer than the model's context window.
    ContextLengthExceeded,
    /// The request is malformed or has invalid values.
    InvalidRequest,
    /// The engine does not serve the requested model.
    ModelNotFound,
    /// The credentials were missing or rejected.
    Unauthorized,
    /// The engine answered something that breaks its protocol or this contract.
    ProtocolViolation,
    /// The engine answered with an HTTP status no other kind describes.
    UpstreamStatus,
    /// The request was canceled (client gone, timeout, budget, shutdown).
    Canceled,
    /// A bug or unexpected state inside the engine or the gateway.
    Internal,
    /// The backend does not do what was asked (an embeddings request to an
    /// engine without embeddings): another backend of the model may.
    Unsupported,
}

impl FailureKind {
    /// Every kind, for exhaustive tables in tests.
    pub const ALL: [FailureKind; 15] = [
        FailureKind::Connect,
        FailureKind::FirstTokenTimeout,
        FailureKind::IdleTimeout,
        FailureKind::TotalTimeout,
        FailureKind::Overloaded,
        FailureKind::OutOfMemory,
        FailureKind::ContextLengthExceeded,
        FailureKind::InvalidRequest,
        FailureKind::ModelNotFound,
        FailureKind::Unauthorized,
        FailureKind::ProtocolViolation,
        FailureKind::UpstreamStatus,
        FailureKind::Canceled,
        FailureKind::Internal,
        FailureKind::Unsupported,
    ];

    /// A stable snake_case name, used in metric labels and error codes.
    pub const fn as_str(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect",
            FailureKind::FirstTokenTimeout => "first_token_timeout",
            FailureKind::IdleTimeout => "idle_timeout",
            FailureKind::TotalTimeout => "total_timeout",
            FailureKind::Overloaded => "overloaded",
            FailureKind::OutOfMemory => "out_of_memory",
            FailureKind::ContextLengthExceeded => "context_length_exceeded",
            FailureKind::InvalidRequest => "invalid_request",
            FailureKind::ModelNotFound => "model_not_found",
            FailureKind::Unauthorized => "unauthorized",
            FailureKind::ProtocolViolation => "protocol_violation",
            FailureKind::UpstreamStatus => "upstream_status",
            FailureKind::Canceled => "canceled",
            FailureKind::Internal => "internal",
            FailureKind::Unsupported => "unsupported",
        }
    }

    /// The kind's row of the [error table](crate::error_table): its client
    /// code, retry rule, blame and fixed client message.
    pub const fn row(self) -> crate::error_table::FailureRow {
        crate::error_table::failure_row(self)
    }

    /// Whether a stream that failed this way after its first token may be
    /// continued on another backend (see
    /// [`continues_after_first_token`](crate::error_table::continues_after_first_token)).
    pub const fn continues(self) -> bool {
        crate::error_table::continues_after_first_token(self)
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When a failure happened relative to the first token reaching the client.
///
/// A request may only be retried or failed over while nothing has been sent:
/// after the first token the client has seen output that another attempt
/// would not reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailurePhase {
    /// Nothing was delivered yet; the request can still be retried.
    BeforeFirstToken,
    /// At least one token was delivered; the stream can only be ended.
    AfterFirstToken,
}

impl FailurePhase {
    /// A stable name for labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            FailurePhase::BeforeFirstToken => "before_first_token",
            FailurePhase::AfterFirstToken => "after_first_token",
        }
    }
}

/// The error of the backend contract: a failure with its kind, phase,
/// message and retry hint.
///
/// The message is for logs: it may hold an engine's own text, which can
/// name internals or echo other requests, so a client only ever gets
/// [`BackendError::client_message`] (the kind's fixed message). Diagnostic
/// detail goes into the optional source.
#[derive(Debug, thiserror::Error)]
#[error("{kind} ({phase}): {message}", phase = phase.as_str())]
pub struct BackendError {
    kind: FailureKind,
    phase: FailurePhase,
    message: String,
    retry_after: Option<Duration>,
    upstream_status: Option<u16>,
    engine_phase: Option<crate::EnginePhase>,
    blame: Option<Blame>,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl BackendError {
    /// A failure of `kind` before the first token, with a message for logs.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        BackendError {
            kind,
            phase: FailurePhase::BeforeFirstToken,
            message: message.into(),
            retry_after: None,
            upstream_status: None,
            engine_phase: None,
            blame: None,
            source: None,
        }
    }

    /// The failure of a backend asked for what it does not do (`what`,
    /// e.g. `"embeddings"`): [`FailureKind::Unsupported`].
    pub fn unsupported(what: &str) -> Self {
        BackendError::new(
            FailureKind::Unsupported,
            format!("the engine does not serve {what}"),
        )
    }

    /// The canceled failure, with the reason as its message.
    pub fn canceled(reason: crate::CancelReason) -> Self {
        BackendError::new(FailureKind::Canceled, format!("request canceled: {reason}"))
    }

    /// Sets the phase.
    #[must_use]
    pub fn with_phase(mut self, phase: FailurePhase) -> Self {
        self.phase = phase;
        self
    }

    /// Marks the failure as happening after the first token.
    #[must_use]
    pub fn after_first_token(self) -> Self {
        self.with_phase(FailurePhase::AfterFirstToken)
    }

    /// Adds a hint for when a retry may succeed.
    #[must_use]
    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = Some(retry_after);
        self
    }

    /// Records the HTTP status the engine answered with.
    #[must_use]
    pub fn with_upstream_status(mut self, status: u16) -> Self {
        self.upstream_status = Some(status);
        self
    }

    /// Records where the request was inside the engine when it ended (for a
    /// canceled request: the phase the abort landed in).
    #[must_use]
    pub fn with_engine_phase(mut self, phase: crate::EnginePhase) -> Self {
        self.engine_phase = Some(phase);
        self
    }

    /// Where the request was inside the engine when it ended, if the
    /// backend knows.
    pub fn engine_phase(&self) -> Option<crate::EnginePhase> {
        self.engine_phase
    }

    /// Attaches the underlying cause (kept out of the client-facing message).
    #[must_use]
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The failure class.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// When the failure happened relative to the first token.
    pub fn phase(&self) -> FailurePhase {
        self.phase
    }

    /// The full message, for logs (never for clients: see
    /// [`BackendError::client_message`]).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// What a client is told: the kind's fixed message from the error
    /// table, with the engine's HTTP status when there was one.
    pub fn client_message(&self) -> String {
        let fixed = self.kind.row().message;
        match self.upstream_status {
            Some(status) => format!("{fixed} (engine status {status})"),
            None => fixed.to_owned(),
        }
    }

    /// Puts the blame somewhere other than the kind's row says: the
    /// pipeline blames the request for a timeout or an out-of-memory
    /// answer when its prompt is far larger than the backend usually sees.
    #[must_use]
    pub fn with_blame(mut self, blame: Blame) -> Self {
        self.blame = Some(blame);
        self
    }

    /// Whose fault the failure is: as set by [`BackendError::with_blame`],
    /// else the kind's row.
    pub fn blame(&self) -> Blame {
        match self.blame {
            Some(blame) => blame,
            None => self.kind.row().blame,
        }
    }

    /// When a retry may succeed, if the engine said.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The engine's HTTP status, if the failure came from one.
    pub fn upstream_status(&self) -> Option<u16> {
        self.upstream_status
    }

    /// Whether the request may be tried on another backend: only before
    /// the first token, only for kinds whose row allows it, and never when
    /// the request is to blame.
    pub fn is_retryable(&self) -> bool {
        match self.phase {
            FailurePhase::BeforeFirstToken => {
                self.kind.row().retry && self.blame() != Blame::Request
            }
            FailurePhase::AfterFirstToken => false,
        }
    }

    /// Whether a stream that failed with this error may be continued on
    /// another backend from what it delivered: only after the first token,
    /// only for kinds that are the backend's failing
    /// ([`FailureKind::continues`]), and only when the backend is to blame.
    pub fn is_continuable(&self) -> bool {
        self.phase == FailurePhase::AfterFirstToken
            && self.kind.continues()
            && self.blame() == Blame::Backend
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_snake_case() {
        let mut names: Vec<&str> = FailureKind::ALL.iter().map(|k| k.as_str()).collect();
        assert!(
            names
                .iter()
                .all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        );
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FailureKind::ALL.len());
    }

    #[test]
    fn nothing_retries_after_the_first_token() {
        for kind in FailureKind::ALL {
            let err = BackendError::new(kind, "x").after_first_token();
            assert!(!err.is_retryable(), "{kind} retried after first token");
        }
    }

    #[test]
    fn retry_table_before_first_token() {
        let retryable: Vec<FailureKind> = FailureKind::ALL
            .into_iter()
            .filter(|k| BackendError::new(*k, "x").is_retryable())
            .collect();
        assert_eq!(
            retryable,
            vec![
                FailureKind::Connect,
                FailureKind::FirstTokenTimeout,
                FailureKind::Overloaded,
                FailureKind::OutOfMemory,
                FailureKind::ProtocolViolation,
                FailureKind::UpstreamStatus,
                FailureKind::Internal,
                FailureKind::Unsupported,
            ]
        );
    }

    #[test]
    fn blame_override_stops_retries() {
        let err = BackendError::new(FailureKind::FirstTokenTimeout, "slow");
        assert_eq!((err.blame(), err.is_retryable()), (Blame::Backend, true));
        let err = err.with_blame(Blame::Request);
        assert_eq!((err.blame(), err.is_retryable()), (Blame::Request, false));
    }

    #[test]
    fn client_message_is_fixed_per_kind_with_the_engine_status() {
        let err = BackendError::new(FailureKind::Internal, "engine: secret other-tenant prompt")
            .with_upstream_status(500);
        assert_eq!(
            err.client_message(),
            "the engine failed the request (engine status 500)"
        );
        let err = BackendError::new(FailureKind::Connect, "connection refused to 10.0.0.7:8000");
        assert_eq!(err.client_message(), "the engine could not be reached");
    }

    #[test]
    fn display_names_kind_phase_and_message() {
        let err = BackendError::new(FailureKind::Overloaded, "queue full")
            .with_retry_after(Duration::from_secs(2));
        assert_eq!(
            err.to_string(),
            "overloaded (before_first_token): queue full"
        );
        assert_eq!(err.retry_after(), Some(Duration::from_secs(2)));
    }
}
