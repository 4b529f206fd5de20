//! Benchmarks of the `sim` engine in zero-delay mode: one request of 64
//! tokens from `start` to `Finished`, against a baseline measured in the
//! same run that drains `TokenStream::from_items` with the same 67 events
//! (`Started`, 64 `Delta`s, `Usage`, `Finished`). The ratio of the two is
//! the engine's overhead per request over a bare stream.
#![expect(
    clippy::print_stdout,
    reason = "the bench prints the sim/baseline ratio for the log"
)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::Criterion;
use futures::StreamExt;
use gateway_adapters::sim::{SimBackend, SimConfig};
use gateway_core::{
    Backend, BackendRequest, ByteBound, CancelHandle, Delta, FinishReason, GenerateRequest, Prompt,
    Started, TokenCounter, TokenEvent, TokenResult, TokenStream, Usage,
};
use tokio::runtime::Runtime;
use tokio::time::Instant;

const TOKENS: u32 = 64;

fn sim() -> SimBackend {
    SimBackend::new(SimConfig {
        natural_length: TOKENS..=TOKENS,
        ..SimConfig::zero_delay()
    })
}

fn request() -> BackendRequest {
    let counter: Arc<dyn TokenCounter> = Arc::new(ByteBound::default());
    let request = GenerateRequest::new("sim", Prompt::Text("Benchmark the engine.".into()), TOKENS);
    BackendRequest::new(request, counter)
}

/// Drains a stream; returns the number of events.
async fn drain(mut stream: TokenStream) -> usize {
    let mut events = 0;
    while let Some(item) = stream.next().await {
        events += usize::from(item.is_ok());
    }
    events
}

/// One sim request from `start` to `Finished`.
async fn sim_once(sim: &SimBackend, request: &BackendRequest) -> usize {
    match sim.start(request.clone(), CancelHandle::new()).await {
        Ok(stream) => drain(stream).await,
        Err(_) => 0,
    }
}

/// The same events from a ready-made stream.
async fn baseline_once() -> usize {
    let mut items: Vec<TokenResult> = Vec::with_capacity(TOKENS as usize + 3);
    items.push(Ok(TokenEvent::Started(Started {
        prompt_tokens: Some(23),
        cached_tokens: Some(0),
    })));
    for id in 0..TOKENS {
        items.push(Ok(TokenEvent::Delta(Delta {
            text: " token".to_owned(),
            tokens: 1,
            token_ids: vec![id],
            ..Delta::default()
        })));
    }
    items.push(Ok(TokenEvent::Usage(Usage::new(23, u64::from(TOKENS)))));
    items.push(Ok(TokenEvent::Finished(FinishReason::Stop)));
    drain(TokenStream::from_items(items).cancel_on_drop(CancelHandle::new())).await
}

/// Mean nanoseconds per iteration of `f` over `iterations`.
fn mean_nanos(iterations: u32, mut f: impl FnMut() -> usize) -> f64 {
    let start = Instant::now();
    for _ in 0..iterations {
        black_box(f());
    }
    start.elapsed().as_nanos() as f64 / f64::from(iterations)
}

fn bench(c: &mut Criterion, rt: &Runtime) {
    let sim = sim();
    let request = request();
    let events = rt.block_on(sim_once(&sim, &request));
    let baseline_events = rt.block_on(baseline_once());
    println!("sim request: {events} events, baseline: {baseline_events} events");

    let mut group = c.benchmark_group("sim_64_tokens");
    group.bench_function("sim_zero_delay", |b| {
        b.iter(|| rt.block_on(sim_once(&sim, &request)));
    });
    group.bench_function("baseline_from_items", |b| {
        b.iter(|| rt.block_on(baseline_once()));
    });
    group.finish();

    // Criterion keeps its estimates to itself; time both once more, side
    // by side, for the ratio.
    const ITERATIONS: u32 = 2_000;
    let sim_ns = mean_nanos(ITERATIONS, || rt.block_on(sim_once(&sim, &request)));
    let base_ns = mean_nanos(ITERATIONS, || rt.block_on(baseline_once()));
    println!(
        "sim {sim_ns:.0} ns/request, baseline {base_ns:.0} ns/request, ratio {:.2}",
        sim_ns / base_ns
    );
}

fn main() {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            println!("cannot build a Tokio runtime: {e}");
            return;
        }
    };
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c, &rt);
    c.final_summary();
}
