//! [`Pressure`]: one load snapshot for every engine.

use tokio::time::Instant;

/// How loaded a backend is, as a cheap copy that routing and admission
/// read without awaiting.
///
/// Engine-side figures (`running`, `waiting`, `kv_usage`) come from the
/// engine itself (an in-process engine's own state, or a background scrape
/// of its metrics); `inflight` is what the gateway has sent and not yet seen
/// end.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pressure {
    /// Requests the engine is generating for.
    pub running: u32,
    /// Requests queued at the engine, not yet running.
    pub waiting: u32,
    /// KV-cache use, 0.0 to 1.0.
    pub kv_usage: f32,
    /// Requests the gateway has in flight to this backend.
    pub inflight: u32,
    /// How many requests the backend runs at once, if bounded.
    pub limit: Option<u32>,
    /// When the engine-side figures were last read; `None` if never.
    pub updated_at: Option<Instant>,
    /// Whether the backend refuses new work right now (its queue is full,
    /// or it answered overloaded).
    pub overloaded: bool,
}

impl Pressure {
    /// Requests the engine holds: running plus waiting.
    pub const fn queued_and_running(&self) -> u32 {
        self.running.saturating_add(self.waiting)
    }

    /// Occupancy of the concurrency limit, `(running + waiting) / limit`
    /// (0.0 when unbounded). Above 1.0 means requests queue.
    pub fn occupancy(&self) -> f64 {
        match self.limit {
            Some(limit) if limit > 0 => f64::from(self.queued_and_running()) / f64::from(limit),
            _ => 0.0,
        }
    }

    /// How old the engine-side figures are at `now`; `None` if never read.
    pub fn age(&self, now: Instant) -> Option<std::time::Duration> {
        self.updated_at.map(|at| now.saturating_duration_since(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn occupancy_counts_running_and_waiting() {
        let p = Pressure {
            running: 4,
            waiting: 2,
            limit: Some(4),
            ..Pressure::default()
        };
        assert_eq!(p.queued_and_running(), 6);
        assert!((p.occupancy() - 1.5).abs() < 1e-9);
        assert_eq!(Pressure::default().occupancy(), 0.0);
    }
}
