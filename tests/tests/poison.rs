//! Failure blame over HTTP: a gateway built from a config file with two
//! sim backends of one model. One tenant's poison requests (the engine
//! fails them as the request's fault) are not retried elsewhere, do not
//! open a breaker and do not shed the other tenant; a genuine backend
//! failure still opens its breaker; and no engine text reaches a client.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::path::Path;
use std::sync::Arc;

use gateway_adapters::bootstrap::{build_gateway_with, router_options};
use gateway_adapters::config::GatewayConfig;
use gateway_adapters::sim::{Fault, FaultPlan, FaultTrigger, SimBackend, SimConfig};
use gateway_core::{Backend, FailureKind};
use gateway_tests::{Server, open, request};
use serde_json::json;

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
first_token_timeout_ms = 300

[health]
failures_to_open = 3
open_ms = 600000

[[tenants]]
id = "team-a"
api_key = "sk-a"

[[tenants]]
id = "team-b"
api_key = "sk-b"

[[models]]
name = "m"
context_window = 4096
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0

[[backends]]
name = "m-0"
engine = "sim"
model = "m"

[[backends]]
name = "m-1"
engine = "sim"
model = "m"

[backends.sim]
prefill_tokens_per_sec = 0
decode_tokens_per_sec = 0
min_natural_tokens = 3
max_natural_tokens = 3
"#;

/// Two sims of model `m`, each with `faults`.
async fn start(faults: FaultPlan) -> (Server, Vec<SimBackend>) {
    let config = GatewayConfig::parse(CONFIG, Path::new(".")).unwrap();
    let mut sims = Vec::new();
    let gateway = build_gateway_with(&config, |b| {
        let sim = SimBackend::new(SimConfig {
            faults: faults.clone(),
            ..b.sim_config(&config.models).unwrap()
        });
        sims.push(sim.clone());
        Some(Arc::new(sim) as Arc<dyn Backend>)
    })
    .unwrap();
    let server = Server::start(gateway, router_options(&config))
        .await
        .unwrap();
    (server, sims)
}

fn chat(content: &str, stream: bool) -> Vec<u8> {
    json!({"model": "m", "messages": [{"role": "user", "content": content}], "max_tokens": 3, "stream": stream})
        .to_string()
        .into_bytes()
}

async fn post(addr: std::net::SocketAddr, key: &str, body: &[u8]) -> gateway_tests::Response {
    let auth = format!("Bearer {key}");
    request(
        addr,
        "POST",
        "/v1/chat/completions",
        &[("authorization", auth.as_str())],
        body,
    )
    .await
    .unwrap()
}

async fn metrics(addr: std::net::SocketAddr) -> String {
    let m = request(addr, "GET", "/metrics", &[], b"").await.unwrap();
    String::from_utf8(m.body).unwrap()
}

/// The value of the metric line that starts with `prefix` (0 if absent).
fn value(m: &str, prefix: &str) -> f64 {
    m.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_tenant_cannot_shed_another_tenant() {
    // Two poisons: a request the engine rejects as invalid (carrying text
    // that must not reach anyone), and a prompt far larger than usual that
    // never gets its first token (the engine stalls in its prefill).
    let secret = "BAD: tensor shape mismatch while serving request of tenant team-b: 'the launch codes are 0000'";
    let huge = format!("HUGE {}", "x".repeat(4000));
    let (server, sims) = start(
        FaultPlan::new()
            .with(
                FaultTrigger::PromptContains("BAD".into()),
                Fault::FailBeforeFirstToken(FailureKind::InvalidRequest),
            )
            .with(
                FaultTrigger::PromptContains("HUGE".into()),
                Fault::StallAfter(0),
            ),
    )
    .await;
    let addr = server.addr;

    // Warm-up: each backend learns its usual prompt size (16 requests at
    // least, PromptSizes::MIN_SAMPLES).
    let mut warm = 0;
    while sims.iter().any(|s| s.stats().start_calls < 16) {
        let r = post(addr, "sk-b", &chat("hello there", false)).await;
        assert_eq!(r.status, 200);
        warm += 1;
        assert!(warm < 400, "routing never reached both backends");
    }

    // 5 rounds; in each, team-a sends 4 invalid and 4 huge requests while
    // team-b sends 4 good ones, all at once: 40 poison requests, more than
    // 13 times the 3 failures that open a breaker.
    let mut invalid = 0;
    let mut timed_out = 0;
    let mut served = 0;
    for _ in 0..5 {
        let mut tasks = Vec::new();
        for i in 0..12 {
            let (key, body) = match i % 3 {
                0 => ("sk-a", chat(secret, false)),
                1 => ("sk-a", chat(&huge, false)),
                _ => ("sk-b", chat("hello there", i % 2 == 0)),
            };
            tasks.push(tokio::spawn(async move {
                (i % 3, post(addr, key, &body).await)
            }));
        }
        for task in tasks {
            let (which, r) = task.await.unwrap();
            let body = String::from_utf8(r.body).unwrap();
            match which {
                0 => {
                    assert_eq!(r.status, 400);
                    assert_eq!(
                        body,
                        r#"{"error":{"message":"the engine rejected the request as invalid","type":"invalid_request_error","code":"invalid_request","param":null}}"#
                    );
                    invalid += 1;
                }
                1 => {
                    assert_eq!(r.status, 504, "{body}");
                    assert_eq!(
                        body,
                        r#"{"error":{"message":"no first token within the first-token timeout","type":"upstream_error","code":"upstream_timeout","param":null}}"#
                    );
                    timed_out += 1;
                }
                _ => {
                    assert_eq!(r.status, 200, "{body}");
                    served += 1;
                }
            }
        }
    }
    assert_eq!((invalid, timed_out, served), (20, 20, 20));

    // Each poison request met exactly one backend: no retries.
    let starts: u64 = sims.iter().map(|s| s.stats().start_calls).sum();
    assert_eq!(starts, warm + 60);
    let m = metrics(addr).await;
    for backend in ["m-0", "m-1"] {
        assert_eq!(
            value(
                &m,
                &format!(r#"gateway_circuit_state{{backend="{backend}"}}"#)
            ),
            0.0,
            "{backend} breaker\n{m}"
        );
        assert_eq!(
            value(
                &m,
                &format!(r#"gateway_retries_total{{backend="{backend}"}}"#)
            ),
            0.0,
            "{backend} retries\n{m}"
        );
    }
    let failures = |kind: &str| {
        value(
            &m,
            &format!(r#"gateway_backend_failures_total{{backend="m-0",kind="{kind}"}}"#),
        ) + value(
            &m,
            &format!(r#"gateway_backend_failures_total{{backend="m-1",kind="{kind}"}}"#),
        )
    };
    assert_eq!(failures("invalid_request"), 20.0, "{m}");
    assert_eq!(failures("first_token_timeout"), 20.0, "{m}");
    let ok = format!(
        r#"gateway_requests_total{{tenant="team-b",model="m",outcome="ok"}} {}"#,
        warm + 20
    );
    for line in [
        r#"gateway_requests_total{tenant="team-a",model="m",outcome="invalid_request"} 20"#,
        r#"gateway_requests_total{tenant="team-a",model="m",outcome="upstream_timeout"} 20"#,
        ok.as_str(),
    ] {
        assert!(m.contains(line), "missing {line} in\n{m}");
    }
    assert!(!m.contains("launch codes"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_genuine_backend_failure_still_opens_its_breaker() {
    let (server, sims) = start(FaultPlan::new()).await;
    let addr = server.addr;
    sims[0].set_faults(FaultPlan::always(Fault::FailBeforeFirstToken(
        FailureKind::Internal,
    )));
    // Every request is served (by m-1, after m-0 failed it when m-0 was
    // ranked first) until m-0's breaker opens at its third failure.
    let mut sent = 0;
    loop {
        let r = post(addr, "sk-b", &chat("hello there", false)).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        sent += 1;
        let m = metrics(addr).await;
        if value(&m, r#"gateway_circuit_state{backend="m-0"}"#) == 2.0 {
            break;
        }
        assert!(sent < 200, "m-0's breaker never opened\n{m}");
    }
    // Open: m-0 is not tried again.
    let starts = sims[0].stats().start_calls;
    for _ in 0..5 {
        let r = post(addr, "sk-b", &chat("hello there", false)).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(sims[0].stats().start_calls, starts);
    let m = metrics(addr).await;
    for (line, want) in [
        (r#"gateway_circuit_state{backend="m-0"}"#, 2.0),
        (r#"gateway_circuit_state{backend="m-1"}"#, 0.0),
        (
            r#"gateway_backend_failures_total{backend="m-0",kind="internal"}"#,
            3.0,
        ),
        (r#"gateway_retries_total{backend="m-0"}"#, 3.0),
        (r#"gateway_retries_total{backend="m-1"}"#, 0.0),
    ] {
        assert_eq!(value(&m, line), want, "{line}\n{m}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_texts_never_reach_the_client() {
    let (server, sims) = start(FaultPlan::new()).await;
    let addr = server.addr;
    // Both backends fail every request before its first token (the sim's
    // own text is "injected failure before the first token").
    for sim in &sims {
        sim.set_faults(FaultPlan::always(Fault::FailBeforeFirstToken(
            FailureKind::Overloaded,
        )));
    }
    let r = post(addr, "sk-a", &chat("hello", false)).await;
    assert_eq!(r.status, 503);
    assert_eq!(
        String::from_utf8(r.body).unwrap(),
        r#"{"error":{"message":"every backend is overloaded","type":"server_error","code":"overloaded","param":null}}"#
    );
    // After the first token, the stream ends with the kind's fixed message.
    for sim in &sims {
        sim.set_faults(FaultPlan::always(Fault::ErrorAfter(
            1,
            FailureKind::Internal,
        )));
    }
    let mut s = open(
        addr,
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer sk-a")],
        &chat("hello", true),
    )
    .await
    .unwrap();
    assert_eq!(s.status, 200);
    let mut events = Vec::new();
    while let Some(e) = s.next_event().await.unwrap() {
        events.push(e);
    }
    assert_eq!(
        events.last().map(String::as_str),
        Some(
            r#"{"error":{"message":"the engine failed the request","type":"upstream_error","code":"internal"}}"#
        ),
        "{events:?}"
    );
    server.stop().await;
}
