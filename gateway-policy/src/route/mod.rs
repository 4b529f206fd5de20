//! Routing: rank a model's backends for a request, from snapshots of their
//! health and load. [`rank`] is the pure least-loaded order;
//! [`PrefixAffinity`] (the default) adds prefix-cache affinity and
//! power-of-two-choices; [`SloRouter`] ranks by predicted latency against
//! the model's targets.

mod affinity;
pub mod latency;
mod slo;

use std::fmt;

use gateway_core::{LatencyClass, Pressure, Prompt};

pub use affinity::{
    AffinityConfig, BLOCK_BYTES, BLOCK_TOKENS, BLOCKS, PrefixAffinity, SATURATED, prefix_hashes,
    prefix_hashes_with, token_prefix_hashes,
};
pub use latency::SloTargets;
pub use slo::{Observation, Slo, SloRouter};

/// What routing knows of the request.
#[derive(Debug, Clone, Copy)]
pub struct RouteRequest<'a> {
    /// The public model.
    pub model: &'a str,
    /// The prompt (for prefix affinity).
    pub prompt: &'a Prompt,
    /// The prompt's leading token ids as the engine sees them (at most
    /// [`RoutePolicy::prefix_tokens`]), when the model's counter knows them
    /// exactly or the prompt is tokens.
    pub prefix_tokens: Option<&'a [u32]>,
    /// Interactive or batch.
    pub class: LatencyClass,
    /// The prompt's estimated token count.
    pub prompt_tokens: u32,
    /// The model's latency targets.
    pub slo: Slo,
}

/// Orders a model's backends for a request. The default is
/// [`PrefixAffinity`]; [`LeastLoaded`] is the plain order; a host can plug
/// in its own.
pub trait RoutePolicy: Send + Sync + fmt::Debug + 'static {
    /// The candidates' indices in the order to try them; indices left out
    /// are not tried.
    fn rank(&self, request: &RouteRequest<'_>, candidates: &[Candidate]) -> Vec<usize>;

    /// How many of the prompt's leading token ids the policy wants in
    /// [`RouteRequest::prefix_tokens`] (the gateway tokenizes for them only
    /// when the model's counter is exact). Default 0: none.
    fn prefix_tokens(&self) -> usize {
        0
    }

    /// What a finished request showed of the backend at `index`, for
    /// policies that learn latency. Default: nothing kept.
    fn observe(&self, index: usize, observation: &Observation) {
        let _ = (index, observation);
    }

    /// Whether `request` should wait in the admission queue although a
    /// candidate could take it now (the gateway asks before ranking, and
    /// again each time a place frees). Default: never.
    fn hold(&self, request: &RouteRequest<'_>, candidates: &[Candidate]) -> bool {
        let _ = (request, candidates);
        false
    }
}

/// [`rank`]: healthy backends with capacity, least loaded first.
#[derive(Debug, Clone, Copy, Default)]
pub struct LeastLoaded;

impl RoutePolicy for LeastLoaded {
    fn rank(&self, _request: &RouteRequest<'_>, candidates: &[Candidate]) -> Vec<usize> {
        rank(candidates)
    }
}

/// What routing knows of one backend.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Its position in the caller's list.
    pub index: usize,
    /// Whether its health check passes.
    pub healthy: bool,
    /// Whether the gateway may send it one more request now.
    pub has_capacity: bool,
    /// Its pressure, with the gateway's in-flight count.
    pub pressure: Pressure,
}

/// How loaded a backend is: the larger of the engine's own count (running
/// plus waiting) and the gateway's in-flight count, over its concurrency
/// limit (or over 1 when unbounded), plus KV-cache use as a tie-breaker.
pub fn load_score(p: &Pressure) -> f64 {
    let held = p.queued_and_running().max(p.inflight);
    let limit = p.limit.map_or(1.0, |l| f64::from(l.max(1)));
    f64::from(held) / limit + f64::from(p.kv_usage.clamp(0.0, 1.0)) * 1e-3
}

/// The order in which to try backends: healthy ones with capacity, least
/// loaded first, overloaded ones after the rest; ties keep the caller's
/// order. Unhealthy backends and those at their limit are left out.
pub fn rank(candidates: &[Candidate]) -> Vec<usize> {
    // Score each candidate once, then sort the scores.
    let mut eligible: Vec<(bool, f64, usize)> = candidates
        .iter()
        .filter(|c| c.healthy && c.has_capacity)
        .map(|c| (c.pressure.overloaded, load_score(&c.pressure), c.index))
        .collect();
    eligible.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).then(a.2.cmp(&b.2)));
    eligible.into_iter().map(|(_, _, index)| index).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(
        index: usize,
        running: u32,
        waiting: u32,
        inflight: u32,
        limit: Option<u32>,
    ) -> Candidate {
        Candidate {
            index,
            healthy: true,
            has_capacity: true,
            pressure: Pressure {
                running,
                waiting,
                inflight,
                limit,
                ..Pressure::default()
            },
        }
    }

    #[test]
    fn least_loaded_first() {
        let cs = [
            cand(0, 4, 2, 6, Some(8)),
            cand(1, 1, 0, 1, Some(8)),
            cand(2, 2, 0, 5, Some(8)),
        ];
        assert_eq!(rank(&cs), vec![1, 2, 0]);
    }

    #[test]
    fn load_is_relative_to_the_limit() {
        // 4 of 16 is lighter than 2 of 4.
        let cs = [cand(0, 2, 0, 2, Some(4)), cand(1, 4, 0, 4, Some(16))];
        assert_eq!(rank(&cs), vec![1, 0]);
    }

    #[test]
    fn unhealthy_and_full_are_skipped_overloaded_go_last() {
        let mut sick = cand(0, 0, 0, 0, None);
        sick.healthy = false;
        let mut full = cand(1, 0, 0, 0, None);
        full.has_capacity = false;
        let mut over = cand(2, 0, 0, 0, None);
        over.pressure.overloaded = true;
        let busy = cand(3, 50, 50, 0, None);
        assert_eq!(rank(&[sick, full, over, busy]), vec![3, 2]);
    }

    #[test]
    fn ties_keep_order() {
        let cs = [cand(0, 1, 0, 1, None), cand(1, 1, 0, 1, None)];
        assert_eq!(rank(&cs), vec![0, 1]);
    }
}
