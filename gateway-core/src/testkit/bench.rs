//! A small benchmark harness that measures a candidate against a baseline
//! in the same run and prints the ratio, since machines are shared and
//! absolute numbers drift.
//!
//! Rounds of the two alternate, so load from elsewhere hits both alike;
//! the figure per side is the median time per iteration over the rounds.

use std::fmt;
use std::hint::black_box;
use std::time::Duration;

/// Medians of one comparison.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    /// What was measured.
    pub name: &'static str,
    /// Median time per iteration of the baseline.
    pub baseline: Duration,
    /// Median time per iteration of the candidate.
    pub candidate: Duration,
}

impl Comparison {
    /// `candidate / baseline`.
    pub fn ratio(&self) -> f64 {
        self.candidate.as_secs_f64() / self.baseline.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<44} baseline {:>10.1} ns/iter  candidate {:>10.1} ns/iter  ratio {:>6.2}x",
            self.name,
            self.baseline.as_secs_f64() * 1e9,
            self.candidate.as_secs_f64() * 1e9,
            self.ratio()
        )
    }
}

/// Runs `rounds` alternating rounds of `iters` iterations of each closure
/// and returns the medians. Bounded: `rounds * iters` calls of each.
pub fn compare<B, C, RB, RC>(
    name: &'static str,
    rounds: usize,
    iters: usize,
    mut baseline: B,
    mut candidate: C,
) -> Comparison
where
    B: FnMut() -> RB,
    C: FnMut() -> RC,
{
    let rounds = rounds.max(1);
    let iters = iters.max(1);
    let mut base = Vec::with_capacity(rounds);
    let mut cand = Vec::with_capacity(rounds);
    // One warm-up round each, not counted.
    time(iters, &mut baseline);
    time(iters, &mut candidate);
    for _ in 0..rounds {
        base.push(time(iters, &mut baseline));
        cand.push(time(iters, &mut candidate));
    }
    Comparison {
        name,
        baseline: median(&mut base),
        candidate: median(&mut cand),
    }
}

fn time<R>(iters: usize, f: &mut impl FnMut() -> R) -> Duration {
    #[expect(clippy::disallowed_types, reason = "wall-clock benchmark timing")]
    let start = std::time::Instant::now();
    for _ in 0..iters {
        black_box(f());
    }
    start.elapsed() / iters as u32
}

fn median(xs: &mut [Duration]) -> Duration {
    xs.sort_unstable();
    xs.get(xs.len() / 2).copied().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_work_has_a_higher_ratio() {
        let c = compare(
            "sum",
            5,
            50,
            || (0..10u64).map(black_box).sum::<u64>(),
            || (0..10_000u64).map(black_box).sum::<u64>(),
        );
        assert!(c.ratio() > 2.0, "{c}");
        assert!(c.to_string().starts_with("sum"));
    }
}
