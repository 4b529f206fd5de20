//! Routing to latency targets, with simulated engines of different speeds
//! and paused time (the figures are exact and the tests run in
//! milliseconds): under a batch flood interactive requests keep their
//! time-to-first-token target while batch work still gets done; a backend
//! that turns slow stops receiving interactive traffic and gets it back
//! when it recovers. Each test prints its distributions.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use gateway_adapters::sim::{SimBackend, SimConfig};
use gateway_core::*;
use gateway_policy::route::{Slo, SloTargets};
use gateway_policy::*;
use tokio::time::Instant;

const MODEL: &str = "m";

fn sim(name: &str, slots: u32) -> SimBackend {
    SimBackend::new(SimConfig {
        name: name.into(),
        models: vec![MODEL.into()],
        slots,
        base_latency: Duration::from_millis(20),
        decode_tokens_per_sec: Some(100.0),
        prefill_tokens_per_sec: Some(10_000.0),
        natural_length: 500..=500,
        seed: 3,
        ..SimConfig::default()
    })
}

/// A backend whose engine takes `delay` longer to start (changed while the
/// test runs: a backend that turns slow, then recovers).
#[derive(Debug)]
struct Slowed {
    inner: SimBackend,
    delay_ms: Arc<AtomicU64>,
}

#[gateway_core::async_trait]
impl Backend for Slowed {
    fn info(&self) -> &BackendInfo {
        self.inner.info()
    }

    fn pressure(&self) -> Pressure {
        self.inner.pressure()
    }

    async fn start(
        &self,
        request: BackendRequest,
        cancel: CancelHandle,
    ) -> Result<TokenStream, BackendError> {
        let delay = self.delay_ms.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        self.inner.start(request, cancel).await
    }

    async fn abort(&self, id: &RequestId) -> Result<bool, BackendError> {
        self.inner.abort(id).await
    }

    async fn health(&self) -> Health {
        self.inner.health().await
    }
}

fn interactive_ttft(ms: u64) -> Slo {
    Slo {
        interactive: SloTargets {
            ttft: Some(Duration::from_millis(ms)),
            itl: None,
        },
        batch: SloTargets::default(),
    }
}

fn gateway(backends: Vec<Arc<dyn Backend>>, slots: u32, slo: Option<Slo>) -> Gateway {
    let mut builder = Gateway::builder(Settings {
        admission_wait: Duration::from_secs(600),
        ..Settings::default()
    })
    .tenant(Tenant::new("t"), key_hash("k"))
    .model(ModelSpec::new(MODEL, 4096));
    for backend in backends {
        builder = builder.backend(backend, MODEL, MODEL, NonZeroU32::new(slots));
    }
    if let Some(slo) = slo {
        builder = builder.slo(MODEL, slo);
    }
    builder.build().unwrap()
}

/// Runs one request to the end: (time to first token, backend, when it
/// ended).
async fn run(
    gateway: &Gateway,
    id: String,
    class: LatencyClass,
    max_tokens: u32,
) -> (Duration, String, Instant) {
    let tenant = gateway.authenticate(Some("k")).unwrap();
    let started = Instant::now();
    let guard = gateway.request_cancel();
    let mut request = ClientRequest::new(id, MODEL, Prompt::Text("tell me".into()));
    request.max_tokens = Some(max_tokens);
    request.latency_class = class;
    let mut stream = gateway
        .generate(&tenant, request, guard.handle().clone())
        .await
        .unwrap();
    let backend = stream.backend().to_owned();
    let mut ttft = None;
    while let Some(item) = stream.next().await {
        if ttft.is_none() && matches!(item, Ok(TokenEvent::Delta(_))) {
            ttft = Some(started.elapsed());
        }
        item.unwrap();
    }
    (ttft.unwrap(), backend, Instant::now())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Interactive TTFTs (sorted) and the time the last batch request ended,
/// for 48 batch requests of 100 tokens (1 s each) sent at once on two
/// 4-slot backends, with an interactive request every 150 ms meanwhile.
async fn flood(slo: Option<Slo>) -> (Vec<Duration>, Duration) {
    let g = gateway(vec![Arc::new(sim("a", 4)), Arc::new(sim("b", 4))], 4, slo);
    let t0 = Instant::now();
    let batch: Vec<_> = (0..48)
        .map(|i| {
            let g = g.clone();
            tokio::spawn(
                async move { run(&g, format!("batch-{i}"), LatencyClass::Batch, 100).await },
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let mut ttfts = Vec::new();
    for i in 0..40 {
        let (ttft, _, _) = run(&g, format!("interactive-{i}"), LatencyClass::Interactive, 5).await;
        ttfts.push(ttft);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let mut last = Duration::ZERO;
    for task in batch {
        let (_, _, ended) = task.await.unwrap();
        last = last.max(ended - t0);
    }
    ttfts.sort();
    (ttfts, last)
}

#[tokio::test(start_paused = true)]
async fn interactive_ttft_keeps_its_target_under_a_batch_flood() {
    let target = Duration::from_millis(100);
    let (with, batch_with) = flood(Some(interactive_ttft(100))).await;
    let (without, batch_without) = flood(None).await;
    let show = |t: &[Duration]| {
        format!(
            "p50 {:?} p90 {:?} p99 {:?} max {:?}",
            percentile(t, 0.5),
            percentile(t, 0.9),
            percentile(t, 0.99),
            t[t.len() - 1]
        )
    };
    println!(
        "interactive time to first token under a batch flood (40 requests):\n  \
         with a 100 ms target: {}; the 48 batch requests done after {batch_with:?}\n  \
         without targets:      {}; the 48 batch requests done after {batch_without:?}",
        show(&with),
        show(&without),
    );
    // With the target every interactive request finds a free place.
    assert!(percentile(&with, 0.99) <= target, "{with:?}");
    // Without it they wait for a batch request to end.
    assert!(percentile(&without, 0.99) > target * 2, "{without:?}");
    // Batch work still uses the spare capacity: one place of eight kept
    // free costs it at most a third more time.
    assert!(
        batch_with <= batch_without.mul_f64(4.0 / 3.0),
        "{batch_with:?} vs {batch_without:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_backend_loses_interactive_traffic_and_gets_it_back() {
    let delay = Arc::new(AtomicU64::new(0));
    let slowed = Slowed {
        inner: sim("slowed", 4),
        delay_ms: delay.clone(),
    };
    let g = gateway(
        vec![Arc::new(sim("steady", 4)), Arc::new(slowed)],
        4,
        Some(interactive_ttft(200)),
    );
    // Sequential requests, every fourth one batch; where each interactive
    // one went.
    let phase = async |name: &str, n: usize| -> Vec<String> {
        let mut backends = Vec::new();
        let mut ttfts = Vec::new();
        let mut batch_on_slowed = 0;
        for i in 0..n {
            let class = if i % 4 == 3 {
                LatencyClass::Batch
            } else {
                LatencyClass::Interactive
            };
            let (ttft, backend, _) = run(&g, format!("{name}-{i}"), class, 2).await;
            if class == LatencyClass::Batch {
                batch_on_slowed += usize::from(backend == "slowed");
                continue;
            }
            backends.push(backend);
            ttfts.push(ttft);
        }
        ttfts.sort();
        let slowed = backends.iter().filter(|b| *b == "slowed").count();
        println!(
            "{name}: {slowed} of {} interactive requests on the slowed backend (and {batch_on_slowed} batch); \
             interactive time to first token p50 {:?} p99 {:?}",
            backends.len(),
            percentile(&ttfts, 0.5),
            percentile(&ttfts, 0.99),
        );
        backends
    };
    // Warm-up: both backends measured, the traffic shared.
    let warm = phase("both fast", 60).await;
    assert!(
        warm.iter().filter(|b| *b == "slowed").count() >= 10,
        "{warm:?}"
    );
    // It turns slow (500 ms more per first token): within a few requests
    // it gets no interactive traffic (batch requests probe it).
    delay.store(500, Ordering::Relaxed);
    let slow = phase("slowed by 500 ms", 120).await;
    let late: usize = slow[10..].iter().filter(|b| *b == "slowed").count();
    assert_eq!(late, 0, "{slow:?}");
    // It recovers: the next batch probes come back fast, and it shares the
    // interactive traffic again.
    delay.store(0, Ordering::Relaxed);
    let recovered = phase("recovered", 120).await;
    let back: usize = recovered[45..].iter().filter(|b| *b == "slowed").count();
    assert!(back >= 10, "{recovered:?}");
}
