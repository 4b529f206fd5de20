//! The cost of one routing decision: the least-loaded order (the
//! baseline), prefix affinity (the default) and the latency-target router
//! (warm latency models, a target), over 2, 8 and 32 candidates, with a
//! 1 KiB prompt. Prints nanoseconds per decision and the ratio to the
//! baseline measured in the same run.
//!
//! `cargo bench -p gateway-policy --bench route`
#![expect(
    clippy::print_stdout,
    reason = "a benchmark prints its figures for the log"
)]

use std::hint::black_box;
use std::time::Duration;

use tokio::time::Instant;

use gateway_core::{LatencyClass, Pressure, Prompt};
use gateway_policy::route::{
    AffinityConfig, Candidate, LeastLoaded, Observation, PrefixAffinity, RoutePolicy, RouteRequest,
    Slo, SloRouter, SloTargets,
};

/// Decisions per round; the best of `ROUNDS` rounds is kept.
const DECISIONS: u32 = 100_000;
const ROUNDS: usize = 5;

fn candidates(n: usize) -> Vec<Candidate> {
    (0..n)
        .map(|index| Candidate {
            index,
            healthy: true,
            has_capacity: true,
            pressure: Pressure {
                running: u32::try_from(index % 7).unwrap_or(0),
                waiting: u32::try_from(index % 3).unwrap_or(0),
                inflight: u32::try_from(index % 5).unwrap_or(0),
                limit: Some(64),
                kv_usage: 0.3,
                ..Pressure::default()
            },
        })
        .collect()
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("backend-{i}")).collect()
}

/// Nanoseconds per `policy.rank` over `DECISIONS` requests whose prompts
/// differ in their last byte (no affinity match beyond the first block).
fn per_decision(policy: &dyn RoutePolicy, candidates: &[Candidate], slo: Slo) -> f64 {
    let base = "x".repeat(1023);
    let prompts: Vec<Prompt> = (0..64u8)
        .map(|i| Prompt::Text(format!("{base}{}", char::from(b'a' + i % 26))))
        .collect();
    let mut best = Duration::MAX;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for i in 0..DECISIONS {
            let prompt = &prompts[(i % 64) as usize];
            let request = RouteRequest {
                model: "m",
                prompt,
                prefix_tokens: None,
                class: LatencyClass::Interactive,
                prompt_tokens: 300,
                slo,
            };
            black_box(policy.rank(black_box(&request), black_box(candidates)));
        }
        best = best.min(start.elapsed());
    }
    best.as_secs_f64() * 1e9 / f64::from(DECISIONS)
}

fn main() {
    let slo = Slo {
        interactive: SloTargets {
            ttft: Some(Duration::from_millis(200)),
            itl: Some(Duration::from_millis(50)),
        },
        batch: SloTargets::default(),
    };
    println!("routing decision cost, ns per decision (ratio to least-loaded in this run)");
    println!("candidates  least-loaded  prefix-affinity      latency-targets");
    for n in [2usize, 8, 32] {
        let c = candidates(n);
        let least = per_decision(&LeastLoaded, &c, Slo::default());
        let affinity = PrefixAffinity::new(names(n), 1);
        let affinity_ns = per_decision(&affinity, &c, Slo::default());
        let router = SloRouter::new(names(n), 1, AffinityConfig::default());
        for index in 0..n {
            for i in 0..20u32 {
                router.observe(
                    index,
                    &Observation {
                        uncached_prompt_tokens: 100 + i * 10,
                        held: i % 4,
                        kv_usage: 0.3,
                        ttft: Duration::from_millis(20 + u64::from(i % 4) * 10 + index as u64),
                        itl: Some(Duration::from_millis(10)),
                    },
                );
            }
        }
        let slo_ns = per_decision(&router, &c, slo);
        println!(
            "{n:>10}  {least:>12.0}  {affinity_ns:>9.0} ({:>4.1}x)  {slo_ns:>9.0} ({:>4.1}x)",
            affinity_ns / least,
            slo_ns / least
        );
    }
}
