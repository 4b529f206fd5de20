//! Test helpers shared by the pipeline's integration tests.

use std::num::NonZeroUsize;
use std::time::Duration;

use gateway_core::{Money, Pricing};
use gateway_policy::Settings;

/// 10 / 100 picodollars per prompt / completion token, 1 per cached one.
pub fn pricing() -> Pricing {
    Pricing {
        input: Money::from_picos(10),
        cached_input: Money::from_picos(1),
        output: Money::from_picos(100),
    }
}

/// Short timeouts for paused-time tests: first token 2 s, idle 3 s, stall
/// 5 s, 4 buffered events, admission wait 1 s, abort wait 1 s.
pub fn settings() -> Settings {
    Settings {
        first_token_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(3),
        client_stall_timeout: Duration::from_secs(5),
        stream_buffer_events: NonZeroUsize::new(4).unwrap_or(NonZeroUsize::MIN),
        admission_wait: Duration::from_secs(1),
        request_timeout: None,
        admission_queue: 1024,
        drift_warn_ratio: 0.02,
        abort_wait: Duration::from_secs(1),
    }
}
