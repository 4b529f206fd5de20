//! The pressure snapshot of a remote engine, kept in atomics so
//! `Backend::pressure` reads it without locks: the background scraper
//! stores each scrape's gauges, and failures mark the engine overloaded for
//! a while. What is in flight is the adapter's `LiveRequests`' count.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use gateway_core::Pressure;
use tokio::time::Instant;

/// An adapter's shared state that holds a pressure cell (for the scraper).
pub(crate) trait HasPressure: Send + Sync + 'static {
    /// The cell.
    fn pressure(&self) -> &PressureCell;
}

/// Load gauges read from one scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Gauges {
    pub(crate) running: f64,
    pub(crate) waiting: f64,
    pub(crate) kv_usage: f64,
}

/// The pressure snapshot in atomics: read without locks.
pub(crate) struct PressureCell {
    base: Instant,
    running: AtomicU32,
    waiting: AtomicU32,
    kv_bits: AtomicU32,
    /// Nanoseconds after `base` of the last scrape, plus one; 0 = never.
    updated: AtomicU64,
    limit: Option<u32>,
    /// Nanoseconds after `base` until which the engine counts as refusing.
    overloaded_until: AtomicU64,
}

impl PressureCell {
    /// Empty: never scraped.
    pub(crate) fn new(limit: Option<u32>) -> Self {
        PressureCell {
            base: Instant::now(),
            running: AtomicU32::new(0),
            waiting: AtomicU32::new(0),
            kv_bits: AtomicU32::new(0),
            updated: AtomicU64::new(0),
            limit,
            overloaded_until: AtomicU64::new(0),
        }
    }

    fn nanos_since_base(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The snapshot, with `inflight` attempts in flight.
    pub(crate) fn snapshot(&self, inflight: u32) -> Pressure {
        let updated = self.updated.load(Ordering::Acquire);
        let now = self.nanos_since_base(Instant::now());
        Pressure {
            running: self.running.load(Ordering::Relaxed),
            waiting: self.waiting.load(Ordering::Relaxed),
            kv_usage: f32::from_bits(self.kv_bits.load(Ordering::Relaxed)),
            inflight,
            limit: self.limit,
            updated_at: (updated > 0).then(|| self.base + Duration::from_nanos(updated - 1)),
            overloaded: self.overloaded_until.load(Ordering::Relaxed) > now,
        }
    }

    pub(crate) fn store(&self, gauges: &Gauges) {
        self.running
            .store(to_u32(gauges.running), Ordering::Relaxed);
        self.waiting
            .store(to_u32(gauges.waiting), Ordering::Relaxed);
        #[expect(clippy::cast_possible_truncation, reason = "a fraction in 0..1")]
        let kv = gauges.kv_usage.clamp(0.0, 1.0) as f32;
        self.kv_bits.store(kv.to_bits(), Ordering::Relaxed);
        let now = self.nanos_since_base(Instant::now());
        self.updated.store(now.saturating_add(1), Ordering::Release);
    }

    pub(crate) fn mark_overloaded(&self, retry_after: Option<Duration>) {
        let until = Instant::now() + retry_after.unwrap_or(Duration::from_secs(1));
        self.overloaded_until
            .store(self.nanos_since_base(until), Ordering::Relaxed);
    }
}

#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "clamped to the u32 range first"
)]
fn to_u32(value: f64) -> u32 {
    if value.is_nan() {
        return 0;
    }
    value.round().clamp(0.0, f64::from(u32::MAX)) as u32
}
