//! The engine model the simulators share: the requests in flight with
//! their phase (queued, prefill, decode) and KV tokens, the gauges a
//! `/metrics` scrape shows of them, and the scrape count that lets a probe
//! report a phase only once a scraper could have seen it.

use std::collections::HashMap;
use std::time::Duration;

use gateway_core::EnginePhase;
use tokio_util::sync::CancellationToken;

/// One request in flight.
#[derive(Debug)]
pub(crate) struct Live {
    /// Where it is.
    pub(crate) phase: EnginePhase,
    /// The scrape count when the phase began.
    pub(crate) since_scrape: u64,
    /// Prompt plus generated tokens (KV use while not queued).
    pub(crate) kv_tokens: u64,
    /// Fired by an engine-side abort (SGLang's `/abort_request`).
    pub(crate) abort: CancellationToken,
}

/// The requests in flight by id, and the `/metrics` scrapes so far.
#[derive(Debug, Default)]
pub(crate) struct LiveTable {
    live: HashMap<String, Live>,
    scrapes: u64,
}

impl LiveTable {
    /// Adds `id`, queued, with `kv_tokens` (its prompt); returns its abort
    /// token.
    pub(crate) fn insert(&mut self, id: &str, kv_tokens: u64) -> CancellationToken {
        let abort = CancellationToken::new();
        self.live.insert(
            id.to_owned(),
            Live {
                phase: EnginePhase::Queued,
                since_scrape: self.scrapes,
                kv_tokens,
                abort: abort.clone(),
            },
        );
        abort
    }

    /// Moves `id` (if still in flight) to `phase`.
    pub(crate) fn set_phase(&mut self, id: &str, phase: EnginePhase) {
        let scrapes = self.scrapes;
        if let Some(live) = self.live.get_mut(id) {
            live.phase = phase;
            live.since_scrape = scrapes;
        }
    }

    /// Removes `id`; returns it if it was in flight.
    pub(crate) fn remove(&mut self, id: &str) -> Option<Live> {
        self.live.remove(id)
    }

    /// One more generated token for `id`.
    pub(crate) fn add_token(&mut self, id: &str) {
        if let Some(live) = self.live.get_mut(id) {
            live.kv_tokens += 1;
        }
    }

    /// `id`'s abort token, if in flight.
    pub(crate) fn abort_token(&self, id: &str) -> Option<CancellationToken> {
        self.live.get(id).map(|l| l.abort.clone())
    }

    /// The real phase of `id`.
    pub(crate) fn phase(&self, id: &str) -> Option<EnginePhase> {
        self.live.get(id).map(|l| l.phase)
    }

    /// The phase of `id` as a probe reports it: with `lagged`, only once a
    /// `/metrics` scrape that started after the phase began has finished
    /// (the next one has started).
    pub(crate) fn probed_phase(&self, id: &str, lagged: bool) -> Option<EnginePhase> {
        let live = self.live.get(id)?;
        if !lagged || self.scrapes >= live.since_scrape + 2 {
            Some(live.phase)
        } else {
            None
        }
    }

    /// Counts one `/metrics` request.
    pub(crate) fn scraped(&mut self) {
        self.scrapes += 1;
    }

    /// How many `/metrics` requests arrived.
    pub(crate) fn scrapes(&self) -> u64 {
        self.scrapes
    }

    /// Running, waiting and KV use (KV tokens of the running requests over
    /// `kv_capacity_tokens`, at most 1).
    pub(crate) fn gauges(&self, kv_capacity_tokens: u64) -> (u64, u64, f64) {
        let running = self
            .live
            .values()
            .filter(|l| l.phase != EnginePhase::Queued)
            .count() as u64;
        let waiting = self.live.len() as u64 - running;
        let kv: u64 = self
            .live
            .values()
            .filter(|l| l.phase != EnginePhase::Queued)
            .map(|l| l.kv_tokens)
            .sum();
        let usage = (kv as f64 / kv_capacity_tokens.max(1) as f64).min(1.0);
        (running, waiting, usage)
    }
}

/// The prefill time of arrival number `arrival` (from 0): `first` for the
/// first one if set, else `prefill`.
pub(crate) fn prefill_time(arrival: u64, prefill: Duration, first: Option<Duration>) -> Duration {
    match (arrival, first) {
        (0, Some(first)) => first,
        _ => prefill,
    }
}
