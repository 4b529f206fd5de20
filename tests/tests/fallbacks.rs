//! Model fallbacks over HTTP: a gateway built from a config file whose
//! requested model's backend is a sim with faults. A failure after the
//! first byte ends the stream (no fallback); a retryable refusal before it
//! moves the request to the fallback model, which the response names and
//! whose prices the ledger charges, once; with the breaker open the
//! requested model's backend is not even tried.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::path::Path;
use std::sync::Arc;

use gateway_adapters::bootstrap::{build_gateway_with, router_options};
use gateway_adapters::config::GatewayConfig;
use gateway_adapters::sim::{Fault, FaultPlan, FaultTrigger, SimBackend, SimConfig};
use gateway_core::{Backend, FailureKind};
use gateway_tests::{Server, open, request};
use serde_json::{Value, json};

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
admin_key = "admin-key"

[health]
failures_to_open = 2
open_ms = 600000

[[tenants]]
id = "team-a"
api_key = "sk-a"

[[models]]
name = "big"
context_window = 4096
input_usd_per_mtok = 10.0
output_usd_per_mtok = 20.0
fallbacks = ["small"]

[[models]]
name = "small"
context_window = 4096
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0

[[backends]]
name = "big-0"
engine = "sim"
model = "big"

[[backends]]
name = "small-0"
engine = "sim"
model = "small"

[backends.sim]
prefill_tokens_per_sec = 0
decode_tokens_per_sec = 0
min_natural_tokens = 5
max_natural_tokens = 5
"#;

/// ByteBound counts one chat message of 10 bytes as 44 prompt tokens.
const PROMPT_TOKENS: u64 = 44;
/// One request on `small`: 44 x $1 + 5 x $2 per million tokens, in picodollars.
const SMALL_CHARGE: u64 = PROMPT_TOKENS * 1_000_000 + 5 * 2_000_000;

fn chat(content: &str, stream: bool) -> Vec<u8> {
    json!({"model": "big", "messages": [{"role": "user", "content": content}], "max_tokens": 10, "stream": stream})
        .to_string()
        .into_bytes()
}

async fn stream_events(addr: std::net::SocketAddr, body: &[u8]) -> Vec<String> {
    let mut s = open(
        addr,
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer sk-a")],
        body,
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
async fn a_faulty_model_falls_back_before_the_first_byte_only() {
    let config = GatewayConfig::parse(CONFIG, Path::new(".")).unwrap();
    let mut big = None;
    let gateway = build_gateway_with(&config, |b| {
        (b.name == "big-0").then(|| {
            let sim = SimBackend::new(SimConfig {
                faults: FaultPlan::new()
                    .with(
                        FaultTrigger::PromptContains("after".into()),
                        Fault::ErrorAfter(2, FailureKind::Internal),
                    )
                    .with(
                        FaultTrigger::Always,
                        Fault::FailBeforeFirstToken(FailureKind::Overloaded),
                    ),
                ..b.sim_config(&config.models).unwrap()
            });
            big = Some(sim.clone());
            Arc::new(sim) as Arc<dyn Backend>
        })
    })
    .unwrap();
    let big = big.unwrap();
    let server = Server::start(gateway.clone(), router_options(&config))
        .await
        .unwrap();
    let addr = server.addr;

    // 1. big fails after two tokens: no fallback, a typed SSE error, no [DONE].
    let events = stream_events(addr, &chat("after 1234", true)).await;
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["model"], "big");
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "internal", "{events:?}");
    assert!(!events.iter().any(|e| e == "[DONE]"), "{events:?}");
    let u = server.settled_usage("admin-key", "team-a").await.unwrap();
    // At big's prices: 44 x $10 + 2 x $20 per million tokens.
    let big_charge = PROMPT_TOKENS * 10_000_000 + 2 * 20_000_000;
    assert_eq!(
        (u["requests"].as_u64(), u["spent_picousd"].as_u64()),
        (Some(1), Some(big_charge))
    );

    // 2. big refuses (overloaded, retryable) before the first token: small
    // serves it, the response says so, the ledger charges small's prices.
    let r = request(
        addr,
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer sk-a")],
        &chat("0123456789", false),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    assert_eq!(body["model"], "small", "{body}");
    assert_eq!(body["usage"]["prompt_tokens"], PROMPT_TOKENS);
    assert_eq!(body["usage"]["completion_tokens"], 5);
    let u = server.settled_usage("admin-key", "team-a").await.unwrap();
    assert_eq!(
        (u["requests"].as_u64(), u["spent_picousd"].as_u64()),
        (Some(2), Some(big_charge + SMALL_CHARGE))
    );

    // 3. Two failures opened big's breaker: the stream goes to small without
    // trying big, every chunk names small, and it ends with [DONE].
    let starts = big.stats().start_calls;
    let events = stream_events(addr, &chat("0123456789", true)).await;
    assert_eq!(big.stats().start_calls, starts);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    for e in events.iter().filter(|e| *e != "[DONE]") {
        let chunk: Value = serde_json::from_str(e).unwrap();
        assert_eq!(chunk["model"], "small", "{e}");
    }
    let u = server.settled_usage("admin-key", "team-a").await.unwrap();
    assert_eq!(
        (
            u["requests"].as_u64(),
            u["spent_picousd"].as_u64(),
            u["reserved_picousd"].as_u64()
        ),
        (Some(3), Some(big_charge + 2 * SMALL_CHARGE), Some(0))
    );

    let m = request(addr, "GET", "/metrics", &[], b"").await.unwrap();
    let m = String::from_utf8(m.body).unwrap();
    for line in [
        r#"gateway_fallbacks_total{from="big",to="small"} 2"#,
        r#"gateway_circuit_state{backend="big-0"} 2"#,
        r#"gateway_backend_failures_total{backend="big-0",kind="internal"} 1"#,
        r#"gateway_backend_failures_total{backend="big-0",kind="overloaded"} 1"#,
        r#"gateway_requests_total{tenant="team-a",model="small",outcome="ok"} 2"#,
        r#"gateway_requests_total{tenant="team-a",model="big",outcome="stream_error"} 1"#,
    ] {
        assert!(m.contains(line), "missing {line} in\n{m}");
    }
    server.stop().await;
}
