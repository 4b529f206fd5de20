//! Backend health as pure state machines: a circuit [`Breaker`] driven by
//! failure kinds, and an [`AdaptiveLimit`] that halves a backend's
//! concurrency on overload and grows it back as requests succeed.
//!
//! Both take the time as an argument and do no I/O, so they are tested
//! with plain values.

use std::num::NonZeroU32;
use std::time::Duration;

use gateway_core::{Blame, FailureKind};
use tokio::time::Instant;

/// When a breaker opens and how it recovers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures (of kinds that count against a backend) that
    /// open the breaker.
    pub failures_to_open: u32,
    /// The longest a run of consecutive failures may take to open the
    /// breaker: a failure more than this after the first one of the run
    /// starts a new run. `None`: no bound (the default).
    pub failure_window: Option<Duration>,
    /// How long it stays open before letting probes through.
    pub open_for: Duration,
    /// Probes allowed at once while half-open.
    pub half_open_probes: u32,
    /// Successful probes that close it again.
    pub successes_to_close: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures_to_open: 5,
            failure_window: None,
            open_for: Duration::from_secs(10),
            half_open_probes: 1,
            successes_to_close: 2,
        }
    }
}

/// A backend's health policy: its breaker and the floor of its adaptive
/// concurrency limit (whose ceiling is the backend's `max_concurrency`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthConfig {
    /// When the breaker opens and how it recovers.
    pub breaker: BreakerConfig,
    /// The lowest the adaptive limit goes on overload answers. Default 1.
    pub min_concurrency: NonZeroU32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            breaker: BreakerConfig::default(),
            min_concurrency: NonZeroU32::MIN,
        }
    }
}

/// Where a breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow.
    Closed,
    /// Requests are refused until the instant.
    Open {
        /// When probing may start.
        until: Instant,
    },
    /// A few probes test the backend.
    HalfOpen {
        /// Probes running now.
        probing: u32,
        /// Probes that succeeded so far.
        succeeded: u32,
    },
}

impl BreakerState {
    /// A stable name for labels (`closed`, `open`, `half_open`).
    pub const fn as_str(&self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen { .. } => "half_open",
        }
    }
}

/// What a breaker says about one more request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Send it.
    Allowed,
    /// Send it as a probe of a half-open backend.
    Probe,
    /// Do not send it.
    Refused,
}

/// A circuit breaker for one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breaker {
    config: BreakerConfig,
    state: BreakerState,
    consecutive_failures: u32,
    /// When the current run of failures began.
    run_started: Option<Instant>,
    /// When the last counted failure happened: failures of requests that
    /// started before it belong to the same incident.
    last_counted: Option<Instant>,
}

impl Breaker {
    /// A closed breaker.
    pub const fn new(config: BreakerConfig) -> Self {
        Breaker {
            config,
            state: BreakerState::Closed,
            consecutive_failures: 0,
            run_started: None,
            last_counted: None,
        }
    }

    /// Its configuration.
    pub const fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// Its state at `now` (an open breaker whose time passed reads as
    /// half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.state {
            BreakerState::Open { until } if now >= until => BreakerState::HalfOpen {
                probing: 0,
                succeeded: 0,
            },
            state => state,
        }
    }

    /// Whether a request may go now; a probe is counted as running.
    pub fn admit(&mut self, now: Instant) -> Admission {
        self.state = self.state(now);
        match &mut self.state {
            BreakerState::Closed => Admission::Allowed,
            BreakerState::Open { .. } => Admission::Refused,
            BreakerState::HalfOpen { probing, .. } => {
                if *probing < self.config.half_open_probes {
                    *probing += 1;
                    Admission::Probe
                } else {
                    Admission::Refused
                }
            }
        }
    }

    /// Whether a request would be admitted now, without counting it.
    pub fn would_admit(&self, now: Instant) -> bool {
        match self.state(now) {
            BreakerState::Closed => true,
            BreakerState::Open { .. } => false,
            BreakerState::HalfOpen { probing, .. } => probing < self.config.half_open_probes,
        }
    }

    /// A request (or probe) succeeded.
    pub fn on_success(&mut self, now: Instant) {
        self.consecutive_failures = 0;
        self.run_started = None;
        self.state = match self.state(now) {
            BreakerState::HalfOpen { probing, succeeded } => {
                let succeeded = succeeded + 1;
                if succeeded >= self.config.successes_to_close {
                    BreakerState::Closed
                } else {
                    BreakerState::HalfOpen {
                        probing: probing.saturating_sub(1),
                        succeeded,
                    }
                }
            }
            other => other,
        };
    }

    /// A request that was sent at `started` failed, blaming `blame` (see
    /// [`BackendError::blame`]).
    ///
    /// Only the backend's own failures count; a failure of the request
    /// (invalid, too large, its own deadline) or of nobody (canceled) is
    /// neutral: it neither counts nor resets the run of failures, so a
    /// tenant's poison requests can neither open the breaker nor hide a
    /// failing backend.
    ///
    /// The breaker counts incidents, not requests: a failure of a request
    /// sent before the last counted failure is neutral too, since it was
    /// in flight when the backend last failed and most likely ended with
    /// it (an engine that restarts ends all its streams at once). Sixteen
    /// streams cut together count once; a backend that keeps failing
    /// fails the requests sent after each failure, and those count.
    ///
    /// [`BackendError::blame`]: gateway_core::BackendError::blame
    pub fn on_failure(&mut self, blame: Blame, started: Instant, now: Instant) {
        let same_incident = self.last_counted.is_some_and(|last| started < last);
        if blame != Blame::Backend || same_incident {
            // Not the backend's fault; a probe that ended so frees its place.
            if let BreakerState::HalfOpen { probing, succeeded } = self.state(now) {
                self.state = BreakerState::HalfOpen {
                    probing: probing.saturating_sub(1),
                    succeeded,
                };
            }
            return;
        }
        let stale = match (self.run_started, self.config.failure_window) {
            (Some(start), Some(window)) => now.saturating_duration_since(start) > window,
            (None, _) => true,
            (Some(_), None) => false,
        };
        if stale {
            self.consecutive_failures = 0;
            self.run_started = Some(now);
        }
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.last_counted = Some(now);
        let reopen = match self.state(now) {
            BreakerState::HalfOpen { .. } => true,
            BreakerState::Closed => self.consecutive_failures >= self.config.failures_to_open,
            BreakerState::Open { .. } => false,
        };
        if reopen {
            self.state = BreakerState::Open {
                until: now + self.config.open_for,
            };
        }
    }
}

/// A backend's concurrency limit that adapts: halved when the backend says
/// it is overloaded or out of memory, grown by one per limit's worth of
/// successes (additive increase, multiplicative decrease), between a floor
/// (1 by default) and the configured maximum.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveLimit {
    limit: f64,
    min: f64,
    max: f64,
}

impl AdaptiveLimit {
    /// Starts at `max`, never below 1.
    pub fn new(max: u32) -> Self {
        AdaptiveLimit::with_bounds(1, max)
    }

    /// Starts at `max`, never below `min` (both at least 1; a `min` above
    /// `max` is lowered to it).
    pub fn with_bounds(min: u32, max: u32) -> Self {
        let max = f64::from(max.max(1));
        let min = f64::from(min.max(1)).min(max);
        AdaptiveLimit {
            limit: max,
            min,
            max,
        }
    }

    /// The current limit.
    pub fn get(&self) -> u32 {
        self.limit.floor() as u32
    }

    /// A request succeeded.
    pub fn on_success(&mut self) {
        self.limit = (self.limit + 1.0 / self.limit).min(self.max);
    }

    /// A request failed with `kind`; overload and out-of-memory halve it.
    pub fn on_failure(&mut self, kind: FailureKind) {
        if matches!(kind, FailureKind::Overloaded | FailureKind::OutOfMemory) {
            self.limit = (self.limit / 2.0).max(self.min);
        }
    }
}

/// The prompt sizes (token estimates) a backend served recently, to tell a
/// request far larger than usual: a first-token timeout or an out-of-memory
/// answer of such a request is the request's fault, not the backend's.
///
/// It keeps the last [`PromptSizes::WINDOW`] estimates of requests that got
/// their first token; a prompt is oversized when at least
/// [`PromptSizes::MIN_SAMPLES`] are known and it is more than
/// [`PromptSizes::FACTOR`] times their median.
#[derive(Debug, Clone)]
pub struct PromptSizes {
    recent: Vec<u64>,
    next: usize,
}

impl Default for PromptSizes {
    fn default() -> Self {
        PromptSizes::new()
    }
}

impl PromptSizes {
    /// How many recent sizes are kept.
    pub const WINDOW: usize = 64;
    /// How many sizes must be known before any prompt is called oversized.
    pub const MIN_SAMPLES: usize = 16;
    /// How many times the median an oversized prompt is (strictly) above.
    pub const FACTOR: u64 = 8;

    /// No sizes known.
    pub fn new() -> Self {
        PromptSizes {
            recent: Vec::with_capacity(PromptSizes::WINDOW),
            next: 0,
        }
    }

    /// Records the estimate of a request the backend served.
    pub fn record(&mut self, estimate: u64) {
        if self.recent.len() < PromptSizes::WINDOW {
            self.recent.push(estimate);
        } else if let Some(slot) = self.recent.get_mut(self.next) {
            *slot = estimate;
        }
        self.next = (self.next + 1) % PromptSizes::WINDOW;
    }

    /// The median of the recent sizes (the lower middle of an even count),
    /// `None` before [`PromptSizes::MIN_SAMPLES`] are known.
    pub fn median(&self) -> Option<u64> {
        if self.recent.len() < PromptSizes::MIN_SAMPLES {
            return None;
        }
        let mut sorted = self.recent.clone();
        sorted.sort_unstable();
        sorted.get((sorted.len() - 1) / 2).copied()
    }

    /// Whether `estimate` is more than [`PromptSizes::FACTOR`] times the
    /// median (a median of 0 counts as 1).
    pub fn is_oversized(&self, estimate: u64) -> bool {
        self.median()
            .is_some_and(|m| estimate > m.max(1).saturating_mul(PromptSizes::FACTOR))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            failures_to_open: 3,
            failure_window: None,
            open_for: Duration::from_secs(10),
            half_open_probes: 1,
            successes_to_close: 2,
        }
    }

    #[test]
    fn prompt_sizes_call_far_larger_prompts_oversized() {
        let mut sizes = PromptSizes::new();
        for _ in 0..PromptSizes::MIN_SAMPLES - 1 {
            sizes.record(100);
        }
        // Too few samples: nothing is oversized yet.
        assert_eq!(sizes.median(), None);
        assert!(!sizes.is_oversized(1_000_000));
        sizes.record(100);
        assert_eq!(sizes.median(), Some(100));
        assert!(!sizes.is_oversized(800));
        assert!(sizes.is_oversized(801));
        // The window slides: 64 sizes of 1000 push the 100s out.
        for _ in 0..PromptSizes::WINDOW {
            sizes.record(1000);
        }
        assert_eq!(sizes.median(), Some(1000));
        assert!(!sizes.is_oversized(801));
        assert!(!sizes.is_oversized(8000));
        assert!(sizes.is_oversized(8001));
        // A median of zero counts as one.
        let mut zeros = PromptSizes::new();
        for _ in 0..PromptSizes::MIN_SAMPLES {
            zeros.record(0);
        }
        assert_eq!(
            (zeros.is_oversized(8), zeros.is_oversized(9)),
            (false, true)
        );
    }

    #[test]
    fn opens_after_consecutive_backend_failures_only() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config());
        b.on_failure(FailureKind::Connect.row().blame, t0, t0);
        b.on_failure(FailureKind::Connect.row().blame, t0, t0);
        // Request faults do not count and do not reset.
        b.on_failure(FailureKind::InvalidRequest.row().blame, t0, t0);
        b.on_failure(FailureKind::Canceled.row().blame, t0, t0);
        assert_eq!(b.state(t0), BreakerState::Closed);
        b.on_success(t0);
        b.on_failure(FailureKind::Overloaded.row().blame, t0, t0);
        b.on_failure(FailureKind::OutOfMemory.row().blame, t0, t0);
        assert_eq!(
            b.state(t0),
            BreakerState::Closed,
            "a success resets the count"
        );
        b.on_failure(FailureKind::FirstTokenTimeout.row().blame, t0, t0);
        assert_eq!(b.state(t0).as_str(), "open");
        assert_eq!(b.admit(t0), Admission::Refused);
        assert!(!b.would_admit(t0 + Duration::from_secs(9)));
    }

    #[test]
    fn half_open_probes_close_or_reopen() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config());
        for _ in 0..3 {
            b.on_failure(FailureKind::Internal.row().blame, t0, t0);
        }
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.state(t1).as_str(), "half_open");
        assert_eq!(b.admit(t1), Admission::Probe);
        assert_eq!(b.admit(t1), Admission::Refused, "one probe at a time");
        b.on_success(t1);
        assert_eq!(b.admit(t1), Admission::Probe);
        b.on_success(t1);
        assert_eq!(b.state(t1), BreakerState::Closed);

        // A failed probe reopens for another period.
        for _ in 0..3 {
            b.on_failure(FailureKind::Internal.row().blame, t1, t1);
        }
        let t2 = t1 + Duration::from_secs(10);
        assert_eq!(b.admit(t2), Admission::Probe);
        b.on_failure(FailureKind::Connect.row().blame, t2, t2);
        assert_eq!(
            b.state(t2),
            BreakerState::Open {
                until: t2 + Duration::from_secs(10)
            }
        );
    }

    #[test]
    fn requests_in_flight_at_a_failure_fail_with_it() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let backend = FailureKind::ProtocolViolation.row().blame;
        let mut b = Breaker::new(config());
        // Sixteen streams sent at t0 are all cut at t0 + 5 ms (an engine
        // restart): the first counts, the other fifteen are the same
        // incident.
        for _ in 0..16 {
            b.on_failure(backend, t0, t0 + ms(5));
        }
        assert_eq!(b.state(t0 + ms(5)), BreakerState::Closed);
        // Requests sent after that failure and failing count, one each:
        // the second and third incidents open it (3 to open).
        b.on_failure(backend, t0 + ms(6), t0 + ms(7));
        assert_eq!(b.state(t0 + ms(7)), BreakerState::Closed);
        // One sent before the last counted failure (t0 + 7 ms) is neutral.
        b.on_failure(backend, t0 + ms(6), t0 + ms(8));
        assert_eq!(b.state(t0 + ms(8)), BreakerState::Closed);
        b.on_failure(backend, t0 + ms(7), t0 + ms(9));
        assert_eq!(
            b.state(t0 + ms(9)),
            BreakerState::Open {
                until: t0 + ms(9) + Duration::from_secs(10)
            }
        );
        // A neutral failure of an older request frees a probe's place but
        // does not reopen the half-open breaker.
        let t1 = t0 + ms(9) + Duration::from_secs(10);
        assert_eq!(b.admit(t1), Admission::Probe);
        b.on_failure(backend, t0 + ms(8), t1);
        assert_eq!(
            b.state(t1),
            BreakerState::HalfOpen {
                probing: 0,
                succeeded: 0
            }
        );
        // The probe, sent after the last counted failure, reopens it.
        assert_eq!(b.admit(t1), Admission::Probe);
        b.on_failure(backend, t1, t1);
        assert_eq!(
            b.state(t1),
            BreakerState::Open {
                until: t1 + Duration::from_secs(10)
            }
        );
    }

    #[test]
    fn adaptive_limit_halves_on_overload_and_recovers() {
        let mut l = AdaptiveLimit::new(16);
        l.on_failure(FailureKind::Overloaded);
        assert_eq!(l.get(), 8);
        l.on_failure(FailureKind::OutOfMemory);
        l.on_failure(FailureKind::Connect);
        assert_eq!(l.get(), 4);
        for _ in 0..3 {
            l.on_failure(FailureKind::Overloaded);
        }
        assert_eq!(l.get(), 1);
        // About one more per limit's worth of successes: 1 -> 2 after one,
        // 2 -> 2.5 -> 2.9 -> 3.24 after three more.
        l.on_success();
        assert_eq!(l.get(), 2);
        for _ in 0..2 {
            l.on_success();
        }
        assert_eq!(l.get(), 2);
        l.on_success();
        assert_eq!(l.get(), 3);
        for _ in 0..1000 {
            l.on_success();
        }
        assert_eq!(l.get(), 16);
    }

    #[test]
    fn a_failure_window_restarts_slow_runs() {
        let t0 = Instant::now();
        let mut b = Breaker::new(BreakerConfig {
            failure_window: Some(Duration::from_secs(60)),
            ..config()
        });
        let s = Duration::from_secs;
        b.on_failure(FailureKind::Connect.row().blame, t0, t0);
        b.on_failure(FailureKind::Connect.row().blame, t0 + s(30), t0 + s(30));
        // 61 s after the run began: a new run of one.
        b.on_failure(FailureKind::Connect.row().blame, t0 + s(61), t0 + s(61));
        b.on_failure(FailureKind::Connect.row().blame, t0 + s(90), t0 + s(90));
        assert_eq!(b.state(t0 + s(90)), BreakerState::Closed);
        // The third failure within 60 s of t0 + 61 s opens it.
        b.on_failure(FailureKind::Connect.row().blame, t0 + s(121), t0 + s(121));
        assert_eq!(
            b.state(t0 + s(121)),
            BreakerState::Open { until: t0 + s(131) }
        );
    }

    #[test]
    fn adaptive_limit_stays_within_its_bounds() {
        let mut l = AdaptiveLimit::with_bounds(3, 16);
        for _ in 0..5 {
            l.on_failure(FailureKind::Overloaded);
        }
        assert_eq!(l.get(), 3);
        assert_eq!(AdaptiveLimit::with_bounds(20, 16).get(), 16);
        let mut floor = AdaptiveLimit::with_bounds(20, 16);
        floor.on_failure(FailureKind::OutOfMemory);
        assert_eq!(floor.get(), 16, "min above max is lowered to max");
    }
}
