//! What an engine's adapter does with a generation whose client went away
//! (the `on_disconnect` key of a `[[backends]]` entry). Plain data, so the
//! config file names it without the adapters (feature `engines`).

use std::fmt;
use std::time::Duration;

/// What the gateway does with an upstream generation whose client went
/// away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum OnDisconnect {
    /// Abort it upstream at once (the default for every engine): frees the
    /// GPU, and only delivered tokens are charged.
    #[default]
    Abort,
    /// Keep reading it (bounded by `max_tokens` and `timeout`, counted from
    /// the client's leaving) to learn the real usage — for hosted APIs that
    /// bill the full generation anyway. Only a client's leaving drains;
    /// timeouts, budget, shutdown and explicit aborts still abort.
    Drain {
        /// `drain_timeout_ms`: the longest drain; past it the connection is
        /// closed and what was read is charged. Default
        /// [`OnDisconnect::DEFAULT_DRAIN_TIMEOUT`].
        timeout: Duration,
    },
}

impl OnDisconnect {
    /// The drain timeout when `drain_timeout_ms` is not set: 60 s.
    pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

    /// Drain with the default timeout.
    pub const fn drain() -> OnDisconnect {
        OnDisconnect::Drain {
            timeout: OnDisconnect::DEFAULT_DRAIN_TIMEOUT,
        }
    }

    /// The name used in config files.
    pub const fn as_str(self) -> &'static str {
        match self {
            OnDisconnect::Abort => "abort",
            OnDisconnect::Drain { .. } => "drain",
        }
    }

    /// The drain timeout, `None` for abort.
    pub const fn drain_timeout(self) -> Option<Duration> {
        match self {
            OnDisconnect::Abort => None,
            OnDisconnect::Drain { timeout } => Some(timeout),
        }
    }
}

impl fmt::Display for OnDisconnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
