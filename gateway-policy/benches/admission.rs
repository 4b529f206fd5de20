//! Admission under a backlog: `N` requests at once for a model whose only
//! backend takes one at a time, so `N - 1` of them wait in the model's fair
//! queue and are let through one by one as the backend frees its place.
//! Against the baseline of the same `N` requests on a backend with room for
//! all of them (nobody waits), measured in the same run: the ratio is what
//! waiting costs per request. A wake-up of every waiter on every release
//! makes it grow with `N` (each release wakes `N` tasks that each scan the
//! queue); waking only the waiter whose turn it is keeps it flat.
//!
//! Runs on a current-thread Tokio runtime with a zero-delay sim of one
//! token per request: `cargo bench -p gateway-policy --bench admission`.
#![expect(
    clippy::print_stdout,
    reason = "a benchmark prints its figures for the log"
)]

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::join_all;
use gateway_adapters::sim::{SimBackend, SimConfig};
use gateway_core::{ByteBound, Pricing, Prompt, TokenEvent};
use gateway_policy::{ClientRequest, Gateway, ModelSpec, Settings, Tenant, key_hash};
use tokio::time::Instant;

const MODEL: &str = "sim";
/// Backlogs measured.
const BACKLOGS: [usize; 3] = [64, 256, 1024];
/// Rounds per backlog; the best round is kept.
const ROUNDS: usize = 5;

#[expect(
    clippy::expect_used,
    reason = "bench setup: a broken fixture should stop the bench loudly"
)]
fn gateway(max_concurrency: u32, backlog: usize) -> (Gateway, Arc<Tenant>) {
    let sim = SimBackend::new(SimConfig {
        natural_length: 1..=1,
        slots: u32::try_from(backlog).expect("a small backlog"),
        ..SimConfig::zero_delay()
    });
    let settings = Settings {
        admission_wait: Duration::from_secs(60),
        admission_queue: backlog,
        ..Settings::default()
    };
    let gateway = Gateway::builder(settings)
        .tenant(Tenant::new("bench"), key_hash("sk-bench"))
        .model(ModelSpec {
            name: MODEL.into(),
            pricing: Pricing::default(),
            context_window: 32_768,
            default_max_tokens: 1,
            media: gateway_policy::MediaCosts::default(),
            counter: Arc::new(ByteBound::default()),
        })
        .backend(
            Arc::new(sim),
            MODEL,
            MODEL,
            NonZeroU32::new(max_concurrency),
        )
        .build()
        .expect("a valid gateway");
    let tenant = gateway.authenticate(Some("sk-bench")).expect("the key");
    (gateway, tenant)
}

/// One request to its end; whether it got its token.
async fn one(gateway: &Gateway, tenant: &Arc<Tenant>, i: usize) -> bool {
    let request = ClientRequest::new(format!("b{i}"), MODEL, Prompt::Text("hi".into()));
    let guard = gateway.request_cancel();
    let cancel = guard.handle().clone();
    let mut ok = false;
    if let Ok(mut stream) = gateway.generate(tenant, request, cancel).await {
        while let Some(item) = stream.next().await {
            match item {
                Ok(TokenEvent::Delta(_)) => ok = true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    }
    guard.disarm();
    ok
}

/// The best time of `ROUNDS` runs of `n` requests at once, and how many got
/// their token in the last one.
async fn best(gateway: &Gateway, tenant: &Arc<Tenant>, n: usize) -> (Duration, usize) {
    let mut best = Duration::MAX;
    let mut served = 0;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let done = join_all((0..n).map(|i| one(gateway, tenant, i))).await;
        best = best.min(start.elapsed());
        served = done.into_iter().filter(|ok| *ok).count();
        // Let the pumps settle before the next round.
        for _ in 0..1000 {
            if gateway.active() == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    (best, served)
}

#[expect(
    clippy::expect_used,
    reason = "bench setup: a broken fixture should stop the bench loudly"
)]
fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        for n in BACKLOGS {
            let (free, free_tenant) = gateway(u32::try_from(n).expect("small"), n);
            let (queued, queued_tenant) = gateway(1, n);
            let (base, base_ok) = best(&free, &free_tenant, n).await;
            let (wait, wait_ok) = best(&queued, &queued_tenant, n).await;
            let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
            println!(
                "admission backlog {n:>5}: no wait {:>8.2} us/request ({base_ok}/{n} served), \
                 one at a time {:>8.2} us/request ({wait_ok}/{n} served), ratio {:.2}",
                per(base),
                per(wait),
                wait.as_secs_f64() / base.as_secs_f64()
            );
        }
    });
}
