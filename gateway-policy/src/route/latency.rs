//! A backend's latency as the gateway observes it, and what it predicts for
//! one more request: the pure part of routing to latency targets.
//!
//! Time to first token grows with the part of the prompt the engine must
//! prefill (what its prefix cache does not hold), with the work the
//! backend already holds (requests queued before this one, and running
//! ones that share its batch) and with its KV-cache use (a full cache
//! makes the engine wait for blocks or preempt); the time per output token grows with the
//! batch. Both are fitted online, per backend, as linear models over those
//! features, by least squares weighted to forget old observations (so a
//! backend that slows down is seen within a few dozen requests) with a
//! small ridge term (so a feature that never varied, such as the prompt
//! length under a uniform load, neither explodes nor poisons the others).
//!
//! An observation far from what the fit predicted (under half or over
//! twice, past a millisecond) may be a change rather than noise: the old
//! observations then weigh half at once ([`SURPRISE_FORGET`]); a second
//! surprise in a row is a change, and the fit starts over from it. So a
//! backend that turned slow, or recovered, is believed after two requests
//! rather than fifty.
//!
//! Everything here is plain arithmetic: observations and queries are
//! values, nothing reads a clock.

use std::time::Duration;

use gateway_core::Pressure;

/// How much each older observation weighs relative to the next one: the
/// fit's memory is about `1 / (1 - FORGET)` = 50 observations.
pub const FORGET: f64 = 0.98;

/// The weight left to older observations when one surprises the fit.
pub const SURPRISE_FORGET: f64 = 0.5;

/// Observations a fit needs before it predicts.
pub const WARM_UP: u32 = 8;

/// The ridge term, relative to the weight of one observation.
const RIDGE: f64 = 1e-4;

/// Prompt tokens per unit of the prompt feature (keeps the features of
/// similar size, so the ridge term treats them alike).
const TOKENS_PER_UNIT: f64 = 1000.0;

/// Latency targets of one priority class of one model; `None`: no target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SloTargets {
    /// Time to first token.
    pub ttft: Option<Duration>,
    /// Time between output tokens.
    pub itl: Option<Duration>,
}

/// What a backend holds when a request is sent to it: the larger of the
/// engine's own count (running plus waiting) and the gateway's in-flight
/// count, as in [`load_score`](super::load_score).
pub fn held(pressure: &Pressure) -> u32 {
    pressure.queued_and_running().max(pressure.inflight)
}

/// A weighted least-squares fit of `y = θ·x` over `N` features, the weight
/// of each observation multiplied by [`FORGET`] at every new one.
#[derive(Debug, Clone, PartialEq)]
struct Fit<const N: usize> {
    /// Σ w·x·xᵀ.
    xx: [[f64; N]; N],
    /// Σ w·x·y.
    xy: [f64; N],
    /// Σ w.
    weight: f64,
    /// The solution for the sums as they are; `None` until solvable.
    theta: Option<[f64; N]>,
    observed: u32,
    /// The last observation surprised the fit.
    surprised: bool,
}

impl<const N: usize> Fit<N> {
    fn new() -> Self {
        Fit {
            xx: [[0.0; N]; N],
            xy: [0.0; N],
            weight: 0.0,
            theta: None,
            observed: 0,
            surprised: false,
        }
    }

    fn observe(&mut self, x: [f64; N], y: f64) {
        if !y.is_finite() || x.iter().any(|v| !v.is_finite()) {
            return;
        }
        let surprised = self
            .predict(x)
            .is_some_and(|expected| surprising(expected, y));
        let forget = match (surprised, self.surprised) {
            (true, true) => 0.0,
            (true, false) => SURPRISE_FORGET,
            (false, _) => FORGET,
        };
        self.surprised = surprised;
        for (row, xi) in self.xx.iter_mut().zip(x) {
            for (cell, xj) in row.iter_mut().zip(x) {
                *cell = *cell * forget + xi * xj;
            }
        }
        for (cell, xi) in self.xy.iter_mut().zip(x) {
            *cell = *cell * forget + xi * y;
        }
        self.weight = self.weight * forget + 1.0;
        self.observed = self.observed.saturating_add(1);
        self.theta = self.solve();
    }

    /// (Σ w·x·xᵀ + ridge·I′) θ = Σ w·x·y, by Gaussian elimination with
    /// partial pivoting; I′ leaves out the first feature (the constant
    /// term is not pulled toward 0).
    fn solve(&self) -> Option<[f64; N]> {
        let ridge = RIDGE * self.weight.max(1.0);
        let mut a = self.xx;
        let mut b = self.xy;
        for (i, row) in a.iter_mut().enumerate().skip(1) {
            row[i] += ridge;
        }
        for col in 0..N {
            let pivot = (col..N).max_by(|&r, &s| a[r][col].abs().total_cmp(&a[s][col].abs()))?;
            if a[pivot][col].abs() < f64::MIN_POSITIVE {
                return None;
            }
            a.swap(col, pivot);
            b.swap(col, pivot);
            let pivot_row = a[col];
            for row in col + 1..N {
                let factor = a[row][col] / pivot_row[col];
                for (cell, p) in a[row].iter_mut().zip(pivot_row).skip(col) {
                    *cell -= factor * p;
                }
                b[row] -= factor * b[col];
            }
        }
        let mut theta = [0.0; N];
        for row in (0..N).rev() {
            let tail: f64 = (row + 1..N).map(|k| a[row][k] * theta[k]).sum();
            theta[row] = (b[row] - tail) / a[row][row];
        }
        theta.iter().all(|t| t.is_finite()).then_some(theta)
    }

    fn predict(&self, x: [f64; N]) -> Option<f64> {
        if self.observed < WARM_UP {
            return None;
        }
        let theta = self.theta?;
        let y: f64 = theta.iter().zip(x).map(|(t, v)| t * v).sum();
        y.is_finite().then_some(y.max(0.0))
    }
}

/// Whether `observed` seconds is a change from `expected`: under half or
/// over twice, and more than a millisecond away.
fn surprising(expected: f64, observed: f64) -> bool {
    (observed - expected).abs() > 1e-3 && (observed > 2.0 * expected || observed < 0.5 * expected)
}

/// One backend's latency: time to first token over (1, uncached prompt
/// tokens, requests held, KV-cache use), time per output token over (1,
/// requests held).
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyModel {
    ttft: Fit<4>,
    itl: Fit<2>,
}

impl Default for LatencyModel {
    fn default() -> Self {
        LatencyModel {
            ttft: Fit::new(),
            itl: Fit::new(),
        }
    }
}

fn ttft_features(uncached_tokens: u32, held: u32, kv_usage: f32) -> [f64; 4] {
    [
        1.0,
        f64::from(uncached_tokens) / TOKENS_PER_UNIT,
        f64::from(held),
        f64::from(kv_usage.clamp(0.0, 1.0)),
    ]
}

fn itl_features(held: u32) -> [f64; 2] {
    [1.0, f64::from(held)]
}

impl LatencyModel {
    /// A request whose prompt had `uncached_tokens` to prefill, sent when
    /// the backend held `held` others with its KV cache `kv_usage` full
    /// (0.0 to 1.0), got its first token after `ttft`.
    pub fn observe_ttft(&mut self, uncached_tokens: u32, held: u32, kv_usage: f32, ttft: Duration) {
        self.ttft.observe(
            ttft_features(uncached_tokens, held, kv_usage),
            ttft.as_secs_f64(),
        );
    }

    /// Output tokens came `per_token` apart on average while the backend
    /// held `held` requests.
    pub fn observe_itl(&mut self, held: u32, per_token: Duration) {
        self.itl
            .observe(itl_features(held), per_token.as_secs_f64());
    }

    /// The expected time to first token of a request with `uncached_tokens`
    /// to prefill sent now that the backend holds `held` with its KV cache
    /// `kv_usage` full; `None` before [`WARM_UP`] observations.
    pub fn predict_ttft(&self, uncached_tokens: u32, held: u32, kv_usage: f32) -> Option<Duration> {
        self.ttft
            .predict(ttft_features(uncached_tokens, held, kv_usage))
            .map(Duration::from_secs_f64)
    }

    /// The expected time per output token with one more request on a
    /// backend that holds `held`; `None` before [`WARM_UP`] observations.
    pub fn predict_itl(&self, held: u32) -> Option<Duration> {
        self.itl
            .predict(itl_features(held.saturating_add(1)))
            .map(Duration::from_secs_f64)
    }

    /// Observations of time to first token so far.
    pub fn ttft_observations(&self) -> u32 {
        self.ttft.observed
    }
}

/// One backend's prediction for a request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// The candidate's index (as in [`Candidate::index`](super::Candidate::index)).
    pub index: usize,
    /// Expected time to first token; `None` while the model warms up.
    pub ttft: Option<Duration>,
    /// Expected time per output token; `None` while the model warms up.
    pub itl: Option<Duration>,
}

impl Prediction {
    /// Whether it keeps `targets` (a target without a prediction is
    /// assumed kept: a backend is not shunned before it was measured).
    pub fn keeps(&self, targets: &SloTargets) -> bool {
        let within =
            |target: Option<Duration>, predicted: Option<Duration>| match (target, predicted) {
                (Some(target), Some(predicted)) => predicted <= target,
                _ => true,
            };
        within(targets.ttft, self.ttft) && within(targets.itl, self.itl)
    }
}

/// Predicted times to first token within this share of the fastest (and
/// [`NEAR_TIE_SLACK`]) count as equally fast.
pub const NEAR_TIE: f64 = 0.1;

/// The absolute part of a near tie.
pub const NEAR_TIE_SLACK: Duration = Duration::from_millis(2);

/// The order to try the predicted backends in, and whether any keeps
/// `targets`: those that keep the targets first, each group by expected
/// time to first token (unmeasured ones after measured ones, in the
/// caller's order). The backends about as fast as the first (a near tie,
/// [`NEAR_TIE`]) go in the order of `preference` (prefix affinity's
/// choice, or its random pick of two), so equal backends share the
/// traffic and a cached prefix wins among equals.
pub fn order_by_prediction(
    predictions: &[Prediction],
    targets: &SloTargets,
    preference: &[usize],
) -> (Vec<usize>, bool) {
    let mut keyed: Vec<(bool, Option<Duration>, usize, usize)> = predictions
        .iter()
        .enumerate()
        .map(|(pos, p)| (!p.keeps(targets), p.ttft, pos, p.index))
        .collect();
    keyed.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| match (a.1, b.1) {
                (Some(x), Some(y)) => x.cmp(&y),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            })
            .then(a.2.cmp(&b.2))
    });
    let any_keeps = keyed.first().is_some_and(|k| !k.0);
    // The near ties of the first: same side of the targets, measured, and
    // about as fast.
    let near = match keyed.first() {
        Some(&(misses, Some(best), _, _)) => {
            let bound = best.mul_f64(1.0 + NEAR_TIE) + NEAR_TIE_SLACK;
            keyed
                .iter()
                .take_while(|k| k.0 == misses && k.1.is_some_and(|t| t <= bound))
                .count()
        }
        _ => 0,
    };
    let rank_in = |index: usize| {
        preference
            .iter()
            .position(|p| *p == index)
            .unwrap_or(usize::MAX)
    };
    keyed[..near].sort_by_key(|k| rank_in(k.3));
    (keyed.into_iter().map(|k| k.3).collect(), any_keeps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: f64) -> Duration {
        Duration::from_secs_f64(v / 1000.0)
    }

    fn near(a: Duration, b: Duration, tolerance_ms: f64) -> bool {
        (a.as_secs_f64() - b.as_secs_f64()).abs() * 1000.0 <= tolerance_ms
    }

    /// A backend whose first token takes 20 ms + 0.1 ms per prompt token +
    /// 30 ms per request it holds, its tokens 10 ms + 2 ms per request held.
    fn truth_ttft(tokens: u32, held: u32) -> Duration {
        ms(20.0 + 0.1 * f64::from(tokens) + 30.0 * f64::from(held))
    }

    fn truth_itl(held: u32) -> Duration {
        ms(10.0 + 2.0 * f64::from(held))
    }

    fn trained(observations: u32) -> LatencyModel {
        let mut m = LatencyModel::default();
        for i in 0..observations {
            let tokens = 100 + (i * 37) % 900;
            let held = (i * 7) % 6;
            m.observe_ttft(tokens, held, 0.0, truth_ttft(tokens, held));
            m.observe_itl(held, truth_itl(held));
        }
        m
    }

    #[test]
    fn nothing_is_predicted_before_the_warm_up() {
        let m = trained(WARM_UP - 1);
        assert_eq!(m.predict_ttft(100, 0, 0.0), None);
        assert_eq!(m.predict_itl(0), None);
        assert_eq!(m.ttft_observations(), WARM_UP - 1);
        let m = trained(WARM_UP);
        assert!(m.predict_ttft(100, 0, 0.0).is_some());
        assert!(m.predict_itl(0).is_some());
    }

    #[test]
    fn a_linear_backend_is_learned() {
        let m = trained(200);
        for (tokens, held) in [(0, 0), (500, 2), (2000, 5), (100, 10)] {
            let got = m.predict_ttft(tokens, held, 0.0).unwrap();
            assert!(
                near(got, truth_ttft(tokens, held), 1.0),
                "{tokens} tokens, {held} held: {got:?} vs {:?}",
                truth_ttft(tokens, held)
            );
        }
        // One more request than held shares the batch.
        let got = m.predict_itl(3).unwrap();
        assert!(near(got, truth_itl(4), 0.2), "{got:?}");
    }

    #[test]
    fn a_backend_that_slows_down_is_believed_within_a_few_requests() {
        let mut m = trained(200);
        let slow = |tokens: u32, held: u32| truth_ttft(tokens, held) * 3;
        let mut observe = |from: u32, to: u32| {
            for i in from..to {
                let tokens = 100 + (i * 37) % 900;
                let held = (i * 7) % 6;
                m.observe_ttft(tokens, held, 0.0, slow(tokens, held));
            }
            m.predict_ttft(500, 2, 0.0).unwrap()
        };
        // Three times slower surprises the fit: while it does, the old
        // behaviour weighs half at each observation.
        let new = slow(500, 2);
        let got = observe(0, 5);
        assert!(got >= new / 2, "after 5: {got:?} vs {new:?}");
        let got = observe(5, 30);
        assert!(
            near(got, new, new.as_secs_f64() * 1000.0 * 0.15),
            "after 30: {got:?} vs {new:?}"
        );
    }

    #[test]
    fn a_feature_that_never_varied_does_not_break_the_fit() {
        let mut m = LatencyModel::default();
        // Every prompt 300 tokens, every time one request held: only the
        // sum is known, and it is what comes back for the same inputs.
        for _ in 0..50 {
            m.observe_ttft(300, 1, 0.0, ms(80.0));
        }
        let got = m.predict_ttft(300, 1, 0.0).unwrap();
        assert!(near(got, ms(80.0), 0.5), "{got:?}");
        // Other inputs stay finite and non-negative.
        for (tokens, held) in [(0, 0), (100_000, 0), (0, 1000)] {
            let p = m.predict_ttft(tokens, held, 0.0).unwrap();
            assert!(p.as_secs_f64().is_finite());
        }
    }

    #[test]
    fn noise_within_twice_the_prediction_moves_the_fit_slowly() {
        let mut m = trained(200);
        let before = m.predict_ttft(500, 2, 0.0).unwrap();
        // One observation at 1.5x: 2% of the weight.
        m.observe_ttft(500, 2, 0.0, truth_ttft(500, 2).mul_f64(1.5));
        let after = m.predict_ttft(500, 2, 0.0).unwrap();
        assert!(
            after > before && after < before.mul_f64(1.05),
            "{before:?} -> {after:?}"
        );
    }

    #[test]
    fn a_fuller_kv_cache_predicts_a_later_first_token() {
        // 30 ms, plus 200 ms at a full cache (waiting for blocks).
        let mut m = LatencyModel::default();
        for i in 0..60u32 {
            let kv = f32::from(u8::try_from(i % 11).unwrap_or(0)) / 10.0;
            m.observe_ttft(200, 1, kv, ms(30.0 + 200.0 * f64::from(kv)));
        }
        let empty = m.predict_ttft(200, 1, 0.0).unwrap();
        let full = m.predict_ttft(200, 1, 1.0).unwrap();
        assert!(near(empty, ms(30.0), 1.0), "{empty:?}");
        assert!(near(full, ms(230.0), 1.0), "{full:?}");
    }

    #[test]
    fn bad_observations_are_ignored() {
        let mut m = trained(20);
        let before = m.clone();
        m.ttft.observe([1.0, f64::NAN, 0.0, 0.0], 1.0);
        m.ttft.observe([1.0, 0.0, 0.0, 0.0], f64::INFINITY);
        assert_eq!(m, before);
    }

    #[test]
    fn predictions_never_go_below_zero() {
        let mut m = LatencyModel::default();
        // Faster with more load (a fit can slope either way).
        for i in 0..50u32 {
            m.observe_ttft(100, i % 5, 0.0, ms(100.0 - 20.0 * f64::from(i % 5)));
        }
        assert_eq!(m.predict_ttft(100, 50, 0.0), Some(Duration::ZERO));
    }

    fn p(index: usize, ttft_ms: Option<f64>, itl_ms: Option<f64>) -> Prediction {
        Prediction {
            index,
            ttft: ttft_ms.map(ms),
            itl: itl_ms.map(ms),
        }
    }

    #[test]
    fn backends_that_keep_the_targets_go_first_fastest_first() {
        let targets = SloTargets {
            ttft: Some(ms(200.0)),
            itl: Some(ms(50.0)),
        };
        let predictions = [
            p(0, Some(150.0), Some(60.0)), // misses the ITL target
            p(1, Some(190.0), Some(20.0)),
            p(2, Some(120.0), Some(40.0)),
            p(3, Some(500.0), Some(10.0)), // misses the TTFT target
            p(4, None, None),              // not measured yet: kept
        ];
        assert_eq!(
            order_by_prediction(&predictions, &targets, &[]),
            (vec![2, 1, 4, 0, 3], true)
        );
    }

    #[test]
    fn when_none_keeps_the_targets_the_fastest_goes_first() {
        let targets = SloTargets {
            ttft: Some(ms(100.0)),
            itl: None,
        };
        let predictions = [p(7, Some(300.0), None), p(3, Some(150.0), None)];
        assert_eq!(
            order_by_prediction(&predictions, &targets, &[]),
            (vec![3, 7], false)
        );
        // Without targets every backend keeps them: fastest first.
        assert_eq!(
            order_by_prediction(&predictions, &SloTargets::default(), &[]),
            (vec![3, 7], true)
        );
        assert_eq!(order_by_prediction(&[], &targets, &[]), (vec![], false));
    }

    #[test]
    fn near_ties_go_in_the_order_of_preference() {
        let targets = SloTargets::default();
        // 100, 108 and 111.9 ms are within 10% + 2 ms of 100; 113 is not.
        let predictions = [
            p(0, Some(100.0), None),
            p(1, Some(113.0), None),
            p(2, Some(108.0), None),
            p(3, Some(111.9), None),
        ];
        assert_eq!(
            order_by_prediction(&predictions, &targets, &[3, 1, 2, 0]).0,
            vec![3, 2, 0, 1]
        );
        // Without a preference: fastest first.
        assert_eq!(
            order_by_prediction(&predictions, &targets, &[]).0,
            vec![0, 2, 3, 1]
        );
        // A near tie never crosses the targets: 108 misses a 105 target.
        let strict = SloTargets {
            ttft: Some(ms(105.0)),
            itl: None,
        };
        assert_eq!(
            order_by_prediction(&predictions, &strict, &[2, 0]).0,
            vec![0, 2, 3, 1]
        );
    }

    #[test]
    fn held_is_the_larger_count() {
        let pressure = Pressure {
            running: 3,
            waiting: 2,
            inflight: 4,
            ..Pressure::default()
        };
        assert_eq!(held(&pressure), 5);
        let pressure = Pressure {
            inflight: 9,
            ..pressure
        };
        assert_eq!(held(&pressure), 9);
    }
}
