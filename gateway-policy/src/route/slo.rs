//! Routing to latency targets: each request goes to the backend with the
//! lowest predicted time to first token among those that keep its class's
//! targets ([`SloRouter`]).
//!
//! The prediction ([`LatencyModel`], per backend) is fitted from what the
//! gateway observes of every finished request; the prompt's part that the
//! backend's prefix cache likely holds (from the [`PrefixAffinity`] map)
//! is left out of its prefill, so affinity is one input of the choice, not
//! an override. Until a backend's model has warmed up, the router ranks as
//! [`PrefixAffinity`] does.
//!
//! When no backend would keep the interactive targets now but some would
//! with less held, batch requests are held back ([`RoutePolicy::hold`]):
//! they wait in the admission queue while interactive ones go on.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use gateway_core::LatencyClass;

use super::latency::{LatencyModel, Prediction, SloTargets, held, order_by_prediction};
use super::{AffinityConfig, Candidate, PrefixAffinity, RoutePolicy, RouteRequest, rank};

/// A model's latency targets, per priority class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Slo {
    /// Interactive requests' targets.
    pub interactive: SloTargets,
    /// Batch requests' targets.
    pub batch: SloTargets,
}

impl Slo {
    /// The targets of `class`.
    pub fn of(&self, class: LatencyClass) -> SloTargets {
        match class {
            LatencyClass::Interactive => self.interactive,
            LatencyClass::Batch => self.batch,
        }
    }

    /// Whether any target is set.
    pub fn is_set(&self) -> bool {
        *self != Slo::default()
    }

    /// The `(class, kind)` pairs that have a target (`kind`: `ttft` or
    /// `itl`), as the attainment metrics label them.
    pub fn checked(&self) -> Vec<(&'static str, &'static str)> {
        let mut out = Vec::new();
        for class in [LatencyClass::Interactive, LatencyClass::Batch] {
            let targets = self.of(class);
            if targets.ttft.is_some() {
                out.push((class.as_str(), "ttft"));
            }
            if targets.itl.is_some() {
                out.push((class.as_str(), "itl"));
            }
        }
        out
    }
}

/// What one finished request showed of its backend.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// Prompt tokens the engine had to prefill (its count less what its
    /// prefix cache held, when it says).
    pub uncached_prompt_tokens: u32,
    /// Requests the backend held when this one was sent (see
    /// [`held`](super::latency::held)).
    pub held: u32,
    /// The backend's KV-cache use when it was sent (0.0 to 1.0; 0.0 when
    /// the engine does not say).
    pub kv_usage: f32,
    /// Time from sending to the first token.
    pub ttft: Duration,
    /// Mean time between output tokens; `None` with fewer than two.
    pub itl: Option<Duration>,
}

/// Rankings a warm backend may be passed over before the next batch
/// request tries it first (a probe): a backend that was slow is measured
/// again, so it wins its traffic back when it recovers. Interactive
/// requests probe only after [`INTERACTIVE_PROBE_EVERY`] (a probe may be
/// slow; batch work minds less).
pub(super) const PROBE_EVERY: u32 = 32;

/// Rankings passed over before an interactive request probes (for models
/// without batch traffic).
pub(super) const INTERACTIVE_PROBE_EVERY: u32 = 4 * PROBE_EVERY;

/// The latency-target router: [`PrefixAffinity`] plus a latency model per
/// backend.
#[derive(Debug)]
pub struct SloRouter {
    affinity: PrefixAffinity,
    /// By candidate index.
    state: Mutex<Vec<Backend>>,
}

/// What the router keeps of one backend.
#[derive(Debug, Clone, Default)]
struct Backend {
    model: LatencyModel,
    /// Warm rankings since it last went first.
    passed_over: u32,
}

impl SloRouter {
    /// A router over backends named `names` (by candidate index); the
    /// affinity part draws from a generator seeded with `seed`.
    pub fn new(names: Vec<String>, seed: u64, config: AffinityConfig) -> Self {
        let state = vec![Backend::default(); names.len()];
        SloRouter {
            affinity: PrefixAffinity::with_config(names, seed, config),
            state: Mutex::new(state),
        }
    }

    fn state(&self) -> MutexGuard<'_, Vec<Backend>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The latency model of the backend at `index`, as it stands.
    pub fn model(&self, index: usize) -> Option<LatencyModel> {
        self.state().get(index).map(|b| b.model.clone())
    }

    /// The prediction for `request` on `candidate` holding `held`; `None`
    /// while its model warms up.
    fn prediction(
        &self,
        state: &[Backend],
        cached: Option<(usize, u32)>,
        request: &RouteRequest<'_>,
        candidate: &Candidate,
        held: u32,
    ) -> Option<Prediction> {
        let model = &state.get(candidate.index)?.model;
        let hit = match cached {
            Some((index, tokens)) if index == candidate.index => tokens,
            _ => 0,
        };
        let uncached = request.prompt_tokens.saturating_sub(hit);
        Some(Prediction {
            index: candidate.index,
            ttft: Some(model.predict_ttft(uncached, held, candidate.pressure.kv_usage)?),
            itl: model.predict_itl(held),
        })
    }

    /// Whether `request` would keep `targets` on `candidate` holding
    /// `held` (an unmeasured backend is assumed to).
    fn would_keep(
        &self,
        state: &[Backend],
        cached: Option<(usize, u32)>,
        request: &RouteRequest<'_>,
        candidate: &Candidate,
        held: u32,
        targets: &SloTargets,
    ) -> bool {
        self.prediction(state, cached, request, candidate, held)
            .is_none_or(|p| p.keeps(targets))
    }
}

/// Places the gateway may still send `candidate` (unbounded without a
/// limit).
fn free_places(candidate: &Candidate) -> u32 {
    if !candidate.has_capacity {
        return 0;
    }
    candidate
        .pressure
        .limit
        .map_or(u32::MAX, |l| l.saturating_sub(candidate.pressure.inflight))
}

impl RoutePolicy for SloRouter {
    fn rank(&self, request: &RouteRequest<'_>, candidates: &[Candidate]) -> Vec<usize> {
        let eligible = rank(candidates);
        if eligible.is_empty() {
            return eligible;
        }
        let hashes = self.affinity.hashes(request);
        let cached = self.affinity.cached_prefix_hashed(request, &hashes);
        let state = self.state();
        let predictions: Option<Vec<Prediction>> = eligible
            .iter()
            .filter_map(|i| candidates.iter().find(|c| c.index == *i))
            .map(|c| self.prediction(&state, cached, request, c, held(&c.pressure)))
            .collect();
        drop(state);
        // Affinity's order: the cold ranking, and the preference among
        // backends about as fast.
        let preference = self.affinity.rank_hashed(&hashes, candidates);
        let Some(predictions) = predictions else {
            return preference;
        };
        let (mut order, _) =
            order_by_prediction(&predictions, &request.slo.of(request.class), &preference);
        let mut state = self.state();
        // A backend passed over long enough goes first once.
        let due = match request.class {
            LatencyClass::Batch => PROBE_EVERY,
            LatencyClass::Interactive => INTERACTIVE_PROBE_EVERY,
        };
        let probe = order
            .iter()
            .position(|i| state.get(*i).is_some_and(|b| b.passed_over >= due));
        if let Some(pos) = probe {
            let index = order.remove(pos);
            order.insert(0, index);
        }
        for (pos, index) in order.iter().enumerate() {
            if let Some(b) = state.get_mut(*index) {
                b.passed_over = if pos == 0 {
                    0
                } else {
                    b.passed_over.saturating_add(1)
                };
            }
        }
        drop(state);
        if let (Some(&first), Some(&preferred)) = (order.first(), preference.first()) {
            // Affinity remembered its own first; the prefix is where it went.
            if first != preferred {
                self.affinity.remember_hashed(&hashes, first);
            }
        }
        order
    }

    fn prefix_tokens(&self) -> usize {
        self.affinity.prefix_tokens()
    }

    fn observe(&self, index: usize, observation: &Observation) {
        if let Some(b) = self.state().get_mut(index) {
            b.model.observe_ttft(
                observation.uncached_prompt_tokens,
                observation.held,
                observation.kv_usage,
                observation.ttft,
            );
            if let Some(itl) = observation.itl {
                b.model.observe_itl(observation.held, itl);
            }
        }
    }

    /// A batch request of a model with interactive targets waits when,
    /// were it sent now, no backend would be left with a free place on
    /// which an interactive request keeps those targets (by the latency
    /// models; an unmeasured backend is assumed to keep them), while one
    /// would with nothing held: its work would take the room interactive
    /// requests need. So at least one place stays free for interactive
    /// work, more when the engines slow down with load. Never when holding
    /// cannot help (the targets are missed even on an idle backend), nor
    /// when the model has a single place in all (batch would starve).
    fn hold(&self, request: &RouteRequest<'_>, candidates: &[Candidate]) -> bool {
        if request.class != LatencyClass::Batch || request.slo.interactive == SloTargets::default()
        {
            return false;
        }
        let eligible = rank(candidates);
        let Some(&target) = eligible.first() else {
            return false;
        };
        let places = candidates
            .iter()
            .filter(|c| c.healthy)
            .map(|c| c.pressure.limit.unwrap_or(u32::MAX))
            .fold(0u32, u32::saturating_add);
        if places <= 1 {
            return false;
        }
        let interactive = RouteRequest {
            class: LatencyClass::Interactive,
            ..*request
        };
        let targets = request.slo.interactive;
        let cached = self
            .affinity
            .cached_prefix_hashed(&interactive, &self.affinity.hashes(&interactive));
        let state = self.state();
        let keeps_after = candidates
            .iter()
            .filter(|c| eligible.contains(&c.index))
            .any(|c| {
                let extra = u32::from(c.index == target);
                free_places(c) > extra
                    && self.would_keep(
                        &state,
                        cached,
                        &interactive,
                        c,
                        held(&c.pressure).saturating_add(extra),
                        &targets,
                    )
            });
        if keeps_after {
            return false;
        }
        candidates
            .iter()
            .filter(|c| c.healthy)
            .any(|c| self.would_keep(&state, cached, &interactive, c, 0, &targets))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_core::{Pressure, Prompt};

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn cands(held: &[u32]) -> Vec<Candidate> {
        held.iter()
            .enumerate()
            .map(|(index, h)| Candidate {
                index,
                healthy: true,
                has_capacity: true,
                pressure: Pressure {
                    running: *h,
                    limit: Some(64),
                    ..Pressure::default()
                },
            })
            .collect()
    }

    fn router(n: usize) -> SloRouter {
        SloRouter::new(
            (0..n).map(|i| format!("b{i}")).collect(),
            7,
            AffinityConfig::default(),
        )
    }

    /// Trains backend `index` as first token = `base` + `per_held` × held
    /// (any prompt), tokens `itl` apart.
    fn train(r: &SloRouter, index: usize, base: u64, per_held: u64, itl: u64) {
        for i in 0..40u32 {
            let held = i % 5;
            r.observe(
                index,
                &Observation {
                    uncached_prompt_tokens: 100 + (i * 13) % 50,
                    held,
                    kv_usage: 0.0,
                    ttft: ms(base + per_held * u64::from(held)),
                    itl: Some(ms(itl)),
                },
            );
        }
    }

    fn request<'a>(prompt: &'a Prompt, class: LatencyClass, slo: Slo) -> RouteRequest<'a> {
        RouteRequest {
            model: "m",
            prompt,
            prefix_tokens: None,
            class,
            prompt_tokens: 120,
            slo,
        }
    }

    fn slo(interactive_ttft: u64) -> Slo {
        Slo {
            interactive: SloTargets {
                ttft: Some(ms(interactive_ttft)),
                itl: None,
            },
            batch: SloTargets::default(),
        }
    }

    #[test]
    fn cold_models_rank_as_prefix_affinity() {
        let r = router(3);
        let prompt = Prompt::Text("hello".into());
        let c = cands(&[5, 0, 9]);
        let order = r.rank(&request(&prompt, LatencyClass::Interactive, slo(100)), &c);
        let affinity = PrefixAffinity::with_config(
            (0..3).map(|i| format!("b{i}")).collect(),
            7,
            AffinityConfig::default(),
        );
        assert_eq!(
            order,
            affinity.rank(&request(&prompt, LatencyClass::Interactive, slo(100)), &c)
        );
        assert!(!r.hold(&request(&prompt, LatencyClass::Batch, slo(100)), &c));
    }

    #[test]
    fn the_fastest_predicted_backend_goes_first_whatever_its_load() {
        let r = router(2);
        // b0: 50 ms + 10 ms per request held; b1: 200 ms flat.
        train(&r, 0, 50, 10, 20);
        train(&r, 1, 200, 0, 20);
        // What each model learned, as a host reads it.
        let b0 = r.model(0).unwrap();
        assert_eq!(b0.ttft_observations(), 40);
        // 50 ms + 10 ms x 3 held (the prompt did not matter).
        let ttft = b0.predict_ttft(120, 3, 0.0).unwrap().as_secs_f64();
        assert!((ttft - 0.080).abs() < 5e-4, "{ttft}");
        assert!(r.model(2).is_none());
        let prompt = Prompt::Text("x".into());
        let req = request(&prompt, LatencyClass::Interactive, slo(1000));
        // b0 holds 4 (90 ms) and b1 none (200 ms): b0, though more loaded.
        assert_eq!(r.rank(&req, &cands(&[4, 0])), vec![0, 1]);
        // b0 holds 30 (350 ms): b1.
        assert_eq!(r.rank(&req, &cands(&[30, 0])), vec![1, 0]);
    }

    #[test]
    fn a_fuller_kv_cache_counts_against_a_backend() {
        let r = router(2);
        // Both: 30 ms, plus 200 ms at a full KV cache.
        for index in 0..2 {
            for i in 0..40u32 {
                let kv = f32::from(u8::try_from(i % 11).unwrap_or(0)) / 10.0;
                r.observe(
                    index,
                    &Observation {
                        uncached_prompt_tokens: 120,
                        held: 1,
                        kv_usage: kv,
                        ttft: ms(30 + (200.0 * kv) as u64),
                        itl: None,
                    },
                );
            }
        }
        let prompt = Prompt::Text("x".into());
        let req = request(&prompt, LatencyClass::Interactive, Slo::default());
        let mut c = cands(&[1, 1]);
        c[0].pressure.kv_usage = 0.9;
        c[1].pressure.kv_usage = 0.1;
        assert_eq!(r.rank(&req, &c), vec![1, 0]);
        c[0].pressure.kv_usage = 0.0;
        c[1].pressure.kv_usage = 0.8;
        assert_eq!(r.rank(&req, &c), vec![0, 1]);
    }

    #[test]
    fn backends_that_miss_the_target_go_last() {
        let r = router(3);
        train(&r, 0, 50, 0, 100); // fast first token, slow tokens
        train(&r, 1, 80, 0, 10);
        train(&r, 2, 60, 0, 10);
        let prompt = Prompt::Text("x".into());
        let slo = Slo {
            interactive: SloTargets {
                ttft: Some(ms(70)),
                itl: Some(ms(50)),
            },
            batch: SloTargets::default(),
        };
        let req = request(&prompt, LatencyClass::Interactive, slo);
        // b2 keeps both; b0 misses ITL, b1 misses TTFT: after, by TTFT.
        assert_eq!(r.rank(&req, &cands(&[0, 0, 0])), vec![2, 0, 1]);
        // Batch has no targets: fastest first token first.
        let batch = request(&prompt, LatencyClass::Batch, slo);
        assert_eq!(r.rank(&batch, &cands(&[0, 0, 0])), vec![0, 2, 1]);
    }

    #[test]
    fn a_cached_prefix_lowers_the_predicted_prefill() {
        let r = router(2);
        // Both: 1 ms per uncached prompt token, nothing else.
        for index in 0..2 {
            for i in 0..40u32 {
                let tokens = 100 + (i * 37) % 400;
                r.observe(
                    index,
                    &Observation {
                        uncached_prompt_tokens: tokens,
                        held: i % 3,
                        kv_usage: 0.0,
                        ttft: ms(u64::from(tokens)),
                        itl: None,
                    },
                );
            }
        }
        let ids: Vec<u32> = (0..300).collect();
        let prompt = Prompt::Tokens(ids.clone());
        let req = RouteRequest {
            prefix_tokens: Some(&ids),
            prompt_tokens: 300,
            ..request(&prompt, LatencyClass::Interactive, Slo::default())
        };
        // b1 a little more loaded but holding the prefix goes first once
        // it served it.
        r.affinity.remember_choice(&req, 1);
        assert_eq!(r.rank(&req, &cands(&[0, 1])), vec![1, 0]);
    }

    #[test]
    fn batch_is_held_only_when_load_is_why_interactive_targets_are_missed() {
        let r = router(2);
        train(&r, 0, 50, 20, 10);
        train(&r, 1, 50, 20, 10);
        let prompt = Prompt::Text("x".into());
        let batch = request(&prompt, LatencyClass::Batch, slo(100));
        // Sent to b0 (the less loaded) it leaves it holding 2: 50 + 20×2
        // = 90 ms keeps 100 ms.
        assert!(!r.hold(&batch, &cands(&[1, 5])));
        // Holding 3 after it (110 ms), and b1 holding 5 (150 ms): it waits.
        assert!(r.hold(&batch, &cands(&[2, 5])));
        assert!(r.hold(&batch, &cands(&[5, 5])));
        // Interactive is never held.
        let interactive = request(&prompt, LatencyClass::Interactive, slo(100));
        assert!(!r.hold(&interactive, &cands(&[5, 5])));
        // A target no idle backend keeps (40 ms < 50 ms): holding would
        // not help.
        assert!(!r.hold(
            &request(&prompt, LatencyClass::Batch, slo(40)),
            &cands(&[5, 5])
        ));
        // No interactive target: never.
        assert!(!r.hold(
            &request(&prompt, LatencyClass::Batch, Slo::default()),
            &cands(&[5, 5])
        ));
    }

    #[test]
    fn batch_leaves_a_place_free_for_interactive_work() {
        // Cold models (no prediction): only places count.
        let r = router(2);
        let prompt = Prompt::Text("x".into());
        let batch = request(&prompt, LatencyClass::Batch, slo(100));
        let limited = |inflight: &[u32], limit: u32| -> Vec<Candidate> {
            inflight
                .iter()
                .enumerate()
                .map(|(index, n)| Candidate {
                    index,
                    healthy: true,
                    has_capacity: *n < limit,
                    pressure: Pressure {
                        inflight: *n,
                        limit: Some(limit),
                        ..Pressure::default()
                    },
                })
                .collect()
        };
        // b1 has two places free: after this one, one is left.
        assert!(!r.hold(&batch, &limited(&[1, 0], 2)));
        // b0 is full and b1 has its last place: it stays for interactive.
        assert!(r.hold(&batch, &limited(&[2, 1], 2)));
        // Interactive takes it.
        let interactive = request(&prompt, LatencyClass::Interactive, slo(100));
        assert!(!r.hold(&interactive, &limited(&[2, 1], 2)));
        assert_eq!(r.rank(&interactive, &limited(&[2, 1], 2)), vec![1]);
        // A model with one place in all never holds batch (it would starve).
        assert!(!r.hold(&batch, &limited(&[0], 1)));
        // Nor one without interactive targets.
        let no_targets = request(&prompt, LatencyClass::Batch, Slo::default());
        assert!(!r.hold(&no_targets, &limited(&[2, 1], 2)));
    }

    /// The rankings (of `class`, `n` of them) that put b1, trained slow,
    /// first.
    fn probes(r: &SloRouter, class: LatencyClass, n: u32) -> Vec<usize> {
        let prompt = Prompt::Text("x".into());
        let req = request(&prompt, class, slo(100));
        (0..n)
            .map(|_| r.rank(&req, &cands(&[0, 0]))[0])
            .enumerate()
            .filter(|(_, first)| *first == 1)
            .map(|(n, _)| n)
            .collect()
    }

    #[test]
    fn a_passed_over_backend_is_probed_by_batch_every_32_rankings() {
        let r = router(2);
        train(&r, 0, 40, 0, 10);
        train(&r, 1, 300, 0, 10);
        let every = PROBE_EVERY as usize;
        assert_eq!(
            probes(&r, LatencyClass::Batch, 2 * PROBE_EVERY + 2),
            vec![every, 2 * every + 1]
        );
        // Interactive requests wait four times longer.
        let r = router(2);
        train(&r, 0, 40, 0, 10);
        train(&r, 1, 300, 0, 10);
        let every = INTERACTIVE_PROBE_EVERY as usize;
        assert_eq!(
            probes(&r, LatencyClass::Interactive, INTERACTIVE_PROBE_EVERY + 2),
            vec![every]
        );
    }

    #[test]
    fn a_slow_backend_loses_interactive_traffic_and_wins_it_back() {
        let r = router(2);
        train(&r, 0, 40, 0, 10);
        train(&r, 1, 50, 0, 10);
        let prompt = Prompt::Text("x".into());
        let req = request(&prompt, LatencyClass::Interactive, slo(100));
        assert_eq!(r.rank(&req, &cands(&[0, 0]))[0], 0);
        // b0 slows to 300 ms: within the fit's memory it goes last.
        for _ in 0..30 {
            r.observe(
                0,
                &Observation {
                    uncached_prompt_tokens: 120,
                    held: 0,
                    kv_usage: 0.0,
                    ttft: ms(300),
                    itl: Some(ms(10)),
                },
            );
        }
        assert_eq!(r.rank(&req, &cands(&[0, 0])), vec![1, 0]);
        // It recovers (its requests, sent when b1 fills up, come back fast):
        // the slow ones weigh 0.98^150 = 5% after 150.
        for _ in 0..150 {
            r.observe(
                0,
                &Observation {
                    uncached_prompt_tokens: 120,
                    held: 0,
                    kv_usage: 0.0,
                    ttft: ms(30),
                    itl: Some(ms(10)),
                },
            );
        }
        assert_eq!(r.rank(&req, &cands(&[0, 0]))[0], 0);
    }
}
