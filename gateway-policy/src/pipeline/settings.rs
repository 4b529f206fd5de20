//! [`Settings`]: the pipeline's timeouts and bounds.

use std::num::NonZeroUsize;
use std::time::Duration;

/// Timeouts and bounds of the pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Per backend attempt: from `start` until the first token.
    pub first_token_timeout: Duration,
    /// Longest gap between two events of a running stream.
    pub idle_timeout: Duration,
    /// A client that takes nothing from a full buffer this long is dropped
    /// and the engine aborted.
    pub client_stall_timeout: Duration,
    /// Events buffered between the engine and one client.
    pub stream_buffer_events: NonZeroUsize,
    /// How long a request may wait for backend capacity before `overloaded`.
    pub admission_wait: Duration,
    /// Most requests waiting for one model's capacity; more get `overloaded`
    /// (or go to the model's fallbacks). The default of every model;
    /// [`GatewayBuilder::admission_queue`](crate::GatewayBuilder::admission_queue)
    /// sets one model's.
    pub admission_queue: usize,
    /// Total time a request may take from arrival to its last token; the
    /// backend gets it as the attempt's deadline and ends the stream with
    /// `total_timeout` past it. `None`: no bound.
    pub request_timeout: Option<Duration>,
    /// An exact prompt estimate off by more than this fraction of the
    /// engine's count logs a warning.
    pub drift_warn_ratio: f64,
    /// How long the gateway waits for a backend to confirm an abort before
    /// it stops listening (the engine is aborted either way).
    pub abort_wait: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            first_token_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            client_stall_timeout: Duration::from_secs(30),
            stream_buffer_events: NonZeroUsize::new(64).unwrap_or(NonZeroUsize::MIN),
            admission_wait: Duration::from_secs(5),
            admission_queue: 1024,
            request_timeout: None,
            drift_warn_ratio: 0.02,
            abort_wait: Duration::from_secs(2),
        }
    }
}
