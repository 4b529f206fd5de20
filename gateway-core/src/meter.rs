//! [`UsageMeter`]: what a request has used so far, shared between its
//! stream and its budget guard.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Started, Usage};

#[derive(Debug, Default)]
struct Counts {
    prompt: AtomicU64,
    cached: AtomicU64,
    completion: AtomicU64,
    drafted: AtomicU64,
    accepted: AtomicU64,
    canceled: AtomicU64,
}

/// Token counts of one request as they happen. Clones share the counts.
///
/// The stream side records what it delivers; a
/// [`BudgetGuard`](crate::BudgetGuard) dropped without an explicit settle
/// charges from [`snapshot`](UsageMeter::snapshot).
#[derive(Debug, Clone, Default)]
pub struct UsageMeter {
    counts: Arc<Counts>,
}

impl UsageMeter {
    /// A meter at zero.
    pub fn new() -> Self {
        UsageMeter::default()
    }

    /// Records the prompt counts an engine reported on start.
    pub fn record_started(&self, started: &Started) {
        if let Some(prompt) = started.prompt_tokens {
            self.counts.prompt.store(prompt, Ordering::Relaxed);
        }
        if let Some(cached) = started.cached_tokens {
            self.counts.cached.store(cached, Ordering::Relaxed);
        }
    }

    /// Sets the prompt tokens (an estimate until the engine reports).
    pub fn set_prompt(&self, prompt: u64) {
        self.counts.prompt.store(prompt, Ordering::Relaxed);
    }

    /// Adds completion tokens delivered to the client.
    pub fn add_delivered(&self, tokens: u64) {
        self.counts.completion.fetch_add(tokens, Ordering::Relaxed);
    }

    /// Adds tokens produced but not delivered because of a cancel.
    pub fn add_canceled(&self, tokens: u64) {
        self.counts.canceled.fetch_add(tokens, Ordering::Relaxed);
    }

    /// Takes the engine's authoritative counts for prompt, cached and
    /// speculative tokens. Delivered completion tokens stay as metered: the
    /// client is charged for what reached it.
    pub fn record_usage(&self, usage: &Usage) {
        let c = &self.counts;
        c.prompt.store(usage.prompt(), Ordering::Relaxed);
        c.cached.store(usage.cached(), Ordering::Relaxed);
        c.drafted.store(usage.drafted(), Ordering::Relaxed);
        c.accepted.store(usage.accepted(), Ordering::Relaxed);
        c.canceled.fetch_max(usage.canceled(), Ordering::Relaxed);
    }

    /// Delivered completion tokens so far.
    pub fn delivered(&self) -> u64 {
        self.counts.completion.load(Ordering::Relaxed)
    }

    /// The counts now, clamped into a valid [`Usage`] (a reading taken
    /// while another thread records may be torn; clamping keeps it valid).
    pub fn snapshot(&self) -> Usage {
        let c = &self.counts;
        Usage::clamped(
            c.prompt.load(Ordering::Relaxed),
            c.cached.load(Ordering::Relaxed),
            c.completion.load(Ordering::Relaxed),
            c.drafted.load(Ordering::Relaxed),
            c.accepted.load(Ordering::Relaxed),
            c.canceled.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_snapshots() {
        let m = UsageMeter::new();
        let shared = m.clone();
        m.set_prompt(50);
        m.record_started(&Started {
            prompt_tokens: Some(40),
            cached_tokens: Some(8),
        });
        m.add_delivered(3);
        shared.add_delivered(2);
        let engine = Usage::new(41, 99)
            .with_cached(9)
            .and_then(|u| u.with_speculative(6, 4))
            .unwrap();
        m.record_usage(&engine);
        let s = shared.snapshot();
        assert_eq!((s.prompt(), s.cached(), s.completion()), (41, 9, 5));
        assert_eq!((s.drafted(), s.accepted(), s.rejected()), (6, 4, 2));
        m.add_canceled(7);
        assert_eq!(m.snapshot().canceled(), 7);
        assert_eq!(m.delivered(), 5);
    }
}
