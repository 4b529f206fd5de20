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
}

/// What one finished request showed of its backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// Prompt tokens the engine had to prefill (its count less what its
    /// prefix cache held, when it says).
    pub uncached_prompt_tokens: u32,
    /// Requests the backend held when this one was sent (see
    /// [`held`](super::latency::held)).
    pub held: u32,
    /// Time from sending to the first token.
    pub ttft: Duration,
    /// Mean time between output tokens; `None` with fewer than two.
    pub itl: Option<Duration>,
}

/// The latency-target router: [`PrefixAffinity`] plus a latency model per
/// backend.
#[derive(Debug)]
pub struct SloRouter {
    affinity: PrefixAffinity,
    /// By candidate index.
    models: Mutex<Vec<LatencyModel>>,
}

impl SloRouter {
    /// A router over backends named `names` (by candidate index); the
    /// affinity part draws from a generator seeded with `seed`.
    pub fn new(names: Vec<String>, seed: u64, config: AffinityConfig) -> Self {
        let models = vec![LatencyModel::default(); names.len()];
        SloRouter {
            affinity: PrefixAffinity::with_config(names, seed, config),
            models: Mutex::new(models),
        }
    }

    fn models(&self) -> MutexGuard<'_, Vec<LatencyModel>> {
        self.models.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The latency model of the backend at `index`, as it stands.
    pub fn model(&self, index: usize) -> Option<LatencyModel> {
        self.models().get(index).cloned()
    }

    /// Each eligible candidate's prediction for `request` as things stand
    /// (`with_held` overrides what each holds); `None` while any of their
    /// models warms up.
    fn predict(
        &self,
        request: &RouteRequest<'_>,
        candidates: &[Candidate],
        eligible: &[usize],
        with_held: Option<u32>,
    ) -> Option<Vec<Prediction>> {
        let cached = self.affinity.cached_prefix(request);
        let names = self.affinity.names();
        let models = self.models();
        eligible
            .iter()
            .map(|&index| {
                let candidate = candidates.iter().find(|c| c.index == index)?;
                let model = models.get(index)?;
                let hit = match &cached {
                    Some((name, tokens)) if names.get(index) == Some(name) => *tokens,
                    _ => 0,
                };
                let uncached = request.prompt_tokens.saturating_sub(hit);
                let held = with_held.unwrap_or_else(|| held(&candidate.pressure));
                Some(Prediction {
                    index,
                    ttft: Some(model.predict_ttft(uncached, held)?),
                    itl: model.predict_itl(held),
                })
            })
            .collect()
    }
}

impl RoutePolicy for SloRouter {
    fn rank(&self, request: &RouteRequest<'_>, candidates: &[Candidate]) -> Vec<usize> {
        let eligible = rank(candidates);
        if eligible.is_empty() {
            return eligible;
        }
        let Some(predictions) = self.predict(request, candidates, &eligible, None) else {
            return self.affinity.rank(request, candidates);
        };
        let (order, _) = order_by_prediction(&predictions, &request.slo.of(request.class));
        if let Some(&first) = order.first() {
            self.affinity.remember_choice(request, first);
        }
        order
    }

    fn prefix_tokens(&self) -> usize {
        self.affinity.prefix_tokens()
    }

    fn observe(&self, index: usize, observation: &Observation) {
        if let Some(model) = self.models().get_mut(index) {
            model.observe_ttft(
                observation.uncached_prompt_tokens,
                observation.held,
                observation.ttft,
            );
            if let Some(itl) = observation.itl {
                model.observe_itl(observation.held, itl);
            }
        }
    }

    /// A batch request waits while no backend would keep the interactive
    /// targets now but one would with nothing held: its work would take
    /// the room interactive requests need. Never while the models warm up,
    /// nor when the targets cannot be kept even on an idle backend
    /// (holding would not help).
    fn hold(&self, request: &RouteRequest<'_>, candidates: &[Candidate]) -> bool {
        if request.class != LatencyClass::Batch || !request.slo.interactive_is_set() {
            return false;
        }
        let eligible = rank(candidates);
        let interactive = RouteRequest {
            class: LatencyClass::Interactive,
            ..*request
        };
        let targets = request.slo.interactive;
        let keeps = |held: Option<u32>| {
            self.predict(&interactive, candidates, &eligible, held)
                .map(|p| order_by_prediction(&p, &targets).1)
        };
        matches!((keeps(None), keeps(Some(0))), (Some(false), Some(true)))
    }
}

impl Slo {
    fn interactive_is_set(&self) -> bool {
        self.interactive != SloTargets::default()
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
        let prompt = Prompt::Text("x".into());
        let req = request(&prompt, LatencyClass::Interactive, slo(1000));
        // b0 holds 4 (90 ms) and b1 none (200 ms): b0, though more loaded.
        assert_eq!(r.rank(&req, &cands(&[4, 0])), vec![0, 1]);
        // b0 holds 30 (350 ms): b1.
        assert_eq!(r.rank(&req, &cands(&[30, 0])), vec![1, 0]);
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
        // Idle enough: 50 + 20×2 = 90 ms keeps 100 ms.
        assert!(!r.hold(&batch, &cands(&[2, 5])));
        // Both hold 5 (150 ms): batch waits.
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
                    ttft: ms(30),
                    itl: Some(ms(10)),
                },
            );
        }
        assert_eq!(r.rank(&req, &cands(&[0, 0]))[0], 0);
    }
}
