//! Stream continuation over the HTTP surface (loopback sockets, the
//! in-process sim engine, which gives each token's id): the engine serving
//! a streamed completion fails after 2 tokens and the stream goes on on the
//! other engine. What the client reads is one OpenAI stream: the chunks of
//! both engines in order, no error frame, one finish reason, one usage chunk
//! (the original prompt's tokens, every token received), one `[DONE]`; the
//! charge is that usage's.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;

use gateway_adapters::server::RouterOptions;
use gateway_adapters::sim::{Fault, FaultPlan, SimBackend, SimConfig};
use gateway_core::*;
use gateway_policy::route::LeastLoaded;
use gateway_policy::*;
use gateway_tests::{Server, open};
use serde_json::{Value, json};

const KEY: &str = "sk-a";
const ADMIN: &str = "admin-key";
const MAX_TOKENS: u64 = 10;

fn sim(name: &str, faults: FaultPlan) -> SimConfig {
    SimConfig {
        name: name.into(),
        models: vec!["m".into()],
        natural_length: 1000..=1000,
        faults,
        ..SimConfig::zero_delay()
    }
}

async fn rig(continuation: bool) -> (Server, Vec<SimBackend>) {
    let mut builder = Gateway::builder(Settings {
        stream_buffer_events: NonZeroUsize::new(8).unwrap(),
        ..Settings::default()
    })
    .tenant(Tenant::new("team-a"), key_hash(KEY))
    .route_policy(Arc::new(LeastLoaded))
    .model(ModelSpec::new("m", 4096).with_pricing(Pricing {
        input: Money::from_picos(10),
        cached_input: Money::from_picos(1),
        output: Money::from_picos(100),
    }));
    if continuation {
        builder = builder.continuation("m", Continuation::new(NonZeroU32::MIN));
    }
    let failing = SimBackend::new(sim(
        "sim-0",
        FaultPlan::always(Fault::ErrorAfter(2, FailureKind::Connect)),
    ));
    let serving = SimBackend::new(sim("sim-1", FaultPlan::default()));
    let sims = vec![failing, serving];
    for s in &sims {
        builder = builder.backend(Arc::new(s.clone()), "m", "m", None);
    }
    let options = RouterOptions {
        admin_key_sha256: Some(key_hash(ADMIN)),
        ..RouterOptions::default()
    };
    let server = Server::start(builder.build().unwrap(), options)
        .await
        .unwrap();
    (server, sims)
}

/// A streamed completion of a 3-token prompt; every `data:` payload.
async fn stream(server: &Server) -> Vec<String> {
    let body = json!({
        "model": "m",
        "prompt": [1, 2, 3],
        "max_tokens": MAX_TOKENS,
        "stream": true,
        "stream_options": {"include_usage": true},
    })
    .to_string();
    let auth = format!("Bearer {KEY}");
    let mut s = open(
        server.addr,
        "POST",
        "/v1/completions",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(s.status, 200);
    let mut events = Vec::new();
    while let Some(e) = s.next_event().await.unwrap() {
        events.push(e);
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continued_stream_is_one_openai_stream() {
    let (server, sims) = rig(true).await;
    let events = stream(&server).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(events.iter().filter(|e| *e == "[DONE]").count(), 1);
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(
        chunks.iter().all(|c| c.get("error").is_none()),
        "{chunks:?}"
    );
    // One id for the whole stream.
    assert!(chunks.iter().all(|c| c["id"] == chunks[0]["id"]));
    let texts: Vec<&Value> = chunks.iter().filter_map(|c| c["choices"].get(0)).collect();
    let finishes: Vec<&Value> = texts
        .iter()
        .map(|c| &c["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finishes, [&json!("length")]);
    let usages: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["usage"])
        .filter(|u| !u.is_null())
        .collect();
    assert_eq!(usages.len(), 1, "{chunks:?}");
    assert_eq!(usages[0]["prompt_tokens"], 3);
    assert_eq!(usages[0]["completion_tokens"], MAX_TOKENS);
    // 2 tokens from the first engine, 8 from the second.
    assert_eq!(
        (sims[0].stats().start_calls, sims[1].stats().start_calls),
        (1, 1)
    );
    let u = server.settled_usage(ADMIN, "team-a").await.unwrap();
    assert_eq!(
        (
            u["requests"].as_u64(),
            u["prompt_tokens"].as_u64(),
            u["completion_tokens"].as_u64(),
            u["spent_picousd"].as_u64()
        ),
        (
            Some(1),
            Some(3),
            Some(MAX_TOKENS),
            Some(3 * 10 + MAX_TOKENS * 100)
        )
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_continuation_the_stream_ends_with_its_error() {
    let (server, sims) = rig(false).await;
    let events = stream(&server).await;
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "connect", "{events:?}");
    assert!(!events.iter().any(|e| e == "[DONE]"));
    assert_eq!(sims[1].stats().start_calls, 0);
    let u = server.settled_usage(ADMIN, "team-a").await.unwrap();
    assert_eq!(u["completion_tokens"].as_u64(), Some(2));
    server.stop().await;
}
