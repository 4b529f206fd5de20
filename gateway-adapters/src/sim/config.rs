//! [`SimConfig`]: everything that shapes the simulated engine.

use std::ops::RangeInclusive;
use std::time::Duration;

use super::FaultPlan;

/// Speculative decoding: a draft model proposes tokens, the target model
/// verifies them in one decode step.
///
/// Each decode step drafts `d = min(draft_tokens, remaining - 1)` tokens and
/// accepts a prefix of them, each draft token being accepted with
/// probability `acceptance_rate` until the first rejection; the step then
/// emits the accepted tokens plus one token of the target model (the bonus
/// token) in a single [`Delta`](gateway_core::Delta).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Speculative {
    /// Draft tokens proposed per decode step (`k`).
    pub draft_tokens: u32,
    /// Probability that a draft token is accepted, from 0.0 to 1.0 (values
    /// outside are clamped, NaN counts as 0.0).
    pub acceptance_rate: f64,
}

impl Speculative {
    /// Drafts `draft_tokens` per step, each accepted with `acceptance_rate`.
    pub const fn new(draft_tokens: u32, acceptance_rate: f64) -> Self {
        Speculative {
            draft_tokens,
            acceptance_rate,
        }
    }

    /// The acceptance rate, clamped into `[0, 1]`.
    pub(crate) fn rate(&self) -> f64 {
        if self.acceptance_rate.is_nan() {
            0.0
        } else {
            self.acceptance_rate.clamp(0.0, 1.0)
        }
    }
}

/// How a [`SimBackend`](super::SimBackend) behaves: identity, capacity,
/// speed, text and faults.
///
/// Plain data: start from [`SimConfig::default`] (a small, realistic GPU
/// engine) or [`SimConfig::zero_delay`] (no sleeps at all) and override
/// fields with struct update syntax.
///
/// Rates are tokens per second; `None`, zero, a negative rate or NaN means
/// instant. Tokio's timer has millisecond resolution, so durations are
/// exact in paused-time tests when they are whole milliseconds.
///
/// ```
/// use std::time::Duration;
/// use gateway_adapters::sim::{SimConfig, Speculative};
///
/// let config = SimConfig {
///     slots: 2,
///     queue_capacity: 3,
///     prefill_tokens_per_sec: Some(1000.0),
///     base_latency: Duration::from_millis(5),
///     speculative: Some(Speculative::new(4, 0.7)),
///     ..SimConfig::default()
/// };
/// assert_eq!(config.models, vec!["sim".to_string()]);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Backend name, used in labels.
    pub name: String,
    /// Model names it serves.
    pub models: Vec<String>,
    /// Requests running at once (prefill or decode). Further requests wait.
    pub slots: u32,
    /// Requests that may wait for a slot; beyond it `start` answers
    /// [`Overloaded`](gateway_core::FailureKind::Overloaded).
    pub queue_capacity: u32,
    /// KV-cache size in tokens, shared by all running requests. A request
    /// holds its prompt tokens from prefill on and one more per generated
    /// token, until it ends.
    pub kv_capacity_tokens: u64,
    /// Fixed time added to every prefill (scheduling, network inside the
    /// engine).
    pub base_latency: Duration,
    /// Prefill speed: the first token comes `base_latency + prompt_tokens /
    /// rate` after the request got a slot.
    pub prefill_tokens_per_sec: Option<f64>,
    /// Decode speed: each decode step after the first token takes
    /// `1 / rate`.
    pub decode_tokens_per_sec: Option<f64>,
    /// Most prompt plus completion tokens a request may ask for.
    pub context_window: u64,
    /// Speculative decoding, if enabled.
    pub speculative: Option<Speculative>,
    /// Seed of every random choice (text, natural length, draft
    /// acceptance), mixed with the request's `sampling.seed` and its prompt.
    pub seed: u64,
    /// The natural completion length in tokens: each request draws its own
    /// from this range (from its seed), ends there with `Stop`, or is cut
    /// short at the budget's cap with `Length`. A reversed range counts as
    /// its start alone.
    pub natural_length: RangeInclusive<u32>,
    /// Injected failures (can be replaced at runtime with
    /// [`SimBackend::set_faults`](super::SimBackend::set_faults)).
    pub faults: FaultPlan,
    /// The hint sent with `Overloaded` refusals.
    pub retry_after: Duration,
    /// Events buffered between the engine and the consumer (at least 1).
    /// A consumer that stops reading stalls the engine once it is full.
    pub channel_capacity: usize,
}

impl Default for SimConfig {
    /// One model `sim` on backend `sim-0`: 8 slots, 64 queued, 128k tokens
    /// of KV cache, 10k tokens/s prefill, 100 tokens/s decode, a 32k
    /// context window, natural completions of 16 to 128 tokens.
    fn default() -> Self {
        SimConfig {
            name: "sim-0".to_owned(),
            models: vec!["sim".to_owned()],
            slots: 8,
            queue_capacity: 64,
            kv_capacity_tokens: 131_072,
            base_latency: Duration::ZERO,
            prefill_tokens_per_sec: Some(10_000.0),
            decode_tokens_per_sec: Some(100.0),
            context_window: 32_768,
            speculative: None,
            seed: 0,
            natural_length: 16..=128,
            faults: FaultPlan::default(),
            retry_after: Duration::from_secs(1),
            channel_capacity: 8,
        }
    }
}

impl SimConfig {
    /// The default engine with no delays at all: prefill and decode are
    /// instant and nothing sleeps, so a request runs as fast as the
    /// consumer reads. For benchmarks and fast tests.
    pub fn zero_delay() -> Self {
        SimConfig {
            base_latency: Duration::ZERO,
            prefill_tokens_per_sec: None,
            decode_tokens_per_sec: None,
            ..SimConfig::default()
        }
    }

    /// The prefill time of a prompt: `base_latency + prompt_tokens / rate`.
    pub fn prefill_time(&self, prompt_tokens: u64) -> Duration {
        self.base_latency
            .saturating_add(time_for(prompt_tokens, self.prefill_tokens_per_sec))
    }

    /// The time of one decode step.
    pub fn decode_step_time(&self) -> Duration {
        time_for(1, self.decode_tokens_per_sec)
    }

    /// The natural completion range, ordered.
    pub(crate) fn completion_range(&self) -> (u32, u32) {
        let min = *self.natural_length.start();
        (min, (*self.natural_length.end()).max(min))
    }
}

/// `tokens / rate` seconds, rounded to the nanosecond; zero when the rate
/// means instant.
fn time_for(tokens: u64, rate: Option<f64>) -> Duration {
    match rate {
        Some(rate) if rate > 0.0 && tokens > 0 => {
            let nanos = (tokens as f64 * 1e9 / rate).round();
            // `as` saturates: an absurdly slow rate becomes ~584 years.
            Duration::from_nanos(nanos as u64)
        }
        _ => Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_follow_the_rates() {
        let c = SimConfig {
            base_latency: Duration::from_millis(5),
            prefill_tokens_per_sec: Some(1000.0),
            decode_tokens_per_sec: Some(50.0),
            ..SimConfig::default()
        };
        assert_eq!(c.prefill_time(100), Duration::from_millis(105));
        assert_eq!(c.decode_step_time(), Duration::from_millis(20));
        let z = SimConfig::zero_delay();
        assert_eq!(z.prefill_time(1_000_000), Duration::ZERO);
        assert_eq!(z.decode_step_time(), Duration::ZERO);
        for rate in [Some(0.0), Some(-1.0), Some(f64::NAN), None] {
            assert_eq!(time_for(10, rate), Duration::ZERO);
        }
        assert_eq!(time_for(10, Some(f64::INFINITY)), Duration::ZERO);
    }
}
