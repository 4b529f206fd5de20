//! Fair admission under a flood: tenant A sends many long requests at once,
//! tenant B sends short ones one at a time. B's time to first token stays
//! near its solo value, far below what it is when B's requests simply queue
//! behind A's (the same load sent as one tenant). Paused time: the figures
//! are exact and the test runs in milliseconds.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use gateway_adapters::sim::{SimBackend, SimConfig};
use gateway_core::*;
use gateway_policy::*;
use tokio::time::Instant;

const MODEL: &str = "m";

fn gateway() -> Gateway {
    let sim = SimBackend::new(SimConfig {
        name: "sim-0".into(),
        models: vec![MODEL.into()],
        slots: 8,
        decode_tokens_per_sec: Some(100.0),
        prefill_tokens_per_sec: Some(10_000.0),
        natural_length: 50..=150,
        seed: 3,
        ..SimConfig::default()
    });
    Gateway::builder(Settings {
        admission_wait: Duration::from_secs(600),
        ..Settings::default()
    })
    .tenant(Tenant::new("a"), key_hash("ka"))
    .tenant(Tenant::new("b"), key_hash("kb"))
    .model(ModelSpec {
        name: MODEL.into(),
        pricing: Pricing::default(),
        context_window: 4096,
        default_max_tokens: 200,
        media: gateway_policy::MediaCosts::default(),
        counter: Arc::new(ByteBound::default()),
    })
    .backend(Arc::new(sim), MODEL, MODEL, NonZeroU32::new(8))
    .build()
    .unwrap()
}

/// Runs one request to the end; returns its time to first token.
async fn run(gateway: &Gateway, tenant: &Arc<Tenant>, id: String, max_tokens: u32) -> Duration {
    let started = Instant::now();
    let guard = gateway.request_cancel();
    let cancel = guard.handle().clone();
    let mut request = ClientRequest::new(id, MODEL, Prompt::Text("tell me".into()));
    request.max_tokens = Some(max_tokens);
    let mut stream = gateway.generate(tenant, request, cancel).await.unwrap();
    let ttft = started.elapsed();
    while stream.next().await.is_some() {}
    ttft
}

/// B's times to first token (median, max) over 10 sequential requests,
/// with 80 long requests flooded first (as tenant `flooder`) when `flood`.
async fn b_ttft(flooder: &str, flood: bool) -> (Duration, Duration) {
    let g = gateway();
    let a = g
        .authenticate(Some(if flooder == "a" { "ka" } else { "kb" }))
        .unwrap();
    let b = g.authenticate(Some("kb")).unwrap();
    let mut flood_tasks = Vec::new();
    if flood {
        for i in 0..80 {
            let (g, a) = (g.clone(), a.clone());
            flood_tasks.push(tokio::spawn(async move {
                run(&g, &a, format!("a{i}"), 150).await
            }));
        }
        // Let the flood take every slot and fill the queue first.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut ttfts = Vec::new();
    for i in 0..10 {
        ttfts.push(run(&g, &b, format!("b{i}"), 5).await);
    }
    for t in flood_tasks {
        t.abort();
    }
    ttfts.sort();
    (ttfts[ttfts.len() / 2], ttfts[ttfts.len() - 1])
}

#[tokio::test(start_paused = true)]
async fn a_flooding_tenant_does_not_starve_an_interactive_one() {
    let solo = b_ttft("a", false).await;
    let fair = b_ttft("a", true).await;
    // The same flood, but sent as B's own tenant: B's requests queue behind it.
    let unfair = b_ttft("b", true).await;
    println!(
        "tenant B time to first token (median / max of 10): solo {:?} / {:?}; under A's flood {:?} / {:?}; \
         queued behind the same flood as one tenant {:?} / {:?}",
        solo.0, solo.1, fair.0, fair.1, unfair.0, unfair.1
    );
    // B's typical request is as fast as alone: it goes ahead of A's backlog.
    assert_eq!(fair.0, solo.0);
    // Its worst one waits for one slot to free (no preemption), not for the flood.
    assert!(fair.1 < Duration::from_secs(2), "{fair:?}");
    assert!(unfair.1 > fair.1 * 5, "fair {fair:?} vs queued {unfair:?}");
}
