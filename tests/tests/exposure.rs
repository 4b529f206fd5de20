//! What the gateway exposes, over real loopback HTTP: `/metrics` behind an
//! optional bearer key, metrics without tenant ids, and `x-priority` that
//! may lower a tenant's class but raise it only when the tenant allows it
//! (a batch tenant's `x-priority: interactive` does not jump the queue).
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gateway_adapters::server::RouterOptions;
use gateway_adapters::sim::{SimBackend, SimConfig};
use gateway_core::*;
use gateway_policy::*;
use gateway_tests::{Server, open, request};
use serde_json::{Value, json};
use tokio::time::{Instant, sleep};

fn model() -> ModelSpec {
    ModelSpec {
        name: "m".into(),
        pricing: Pricing {
            input: Money::from_picos(10),
            cached_input: Money::from_picos(1),
            output: Money::from_picos(100),
        },
        context_window: 4096,
        default_max_tokens: 16,
        media: gateway_policy::MediaCosts::default(),
        counter: Arc::new(ByteBound::default()),
    }
}

fn sim(rate: Option<f64>) -> SimBackend {
    SimBackend::new(SimConfig {
        name: "sim-0".into(),
        models: vec!["m".into()],
        decode_tokens_per_sec: rate,
        natural_length: 1000..=1000,
        ..SimConfig::zero_delay()
    })
}

/// Tenants `team-a` (interactive, key `sk-a`), `nightly` (batch, `sk-n`)
/// and `nightly-vip` (batch, allowed to raise, `sk-v`), one sim backend
/// that runs one request at a time.
fn builder(sim: &SimBackend) -> GatewayBuilder {
    let batch = |id: &str, raise: bool| Tenant {
        priority: LatencyClass::Batch,
        allow_priority_raise: raise,
        ..Tenant::new(id)
    };
    Gateway::builder(Settings {
        admission_wait: Duration::from_secs(10),
        ..Settings::default()
    })
    .tenant(Tenant::new("team-a"), key_hash("sk-a"))
    .tenant(batch("nightly", false), key_hash("sk-n"))
    .tenant(batch("nightly-vip", true), key_hash("sk-v"))
    .model(model())
    .backend(Arc::new(sim.clone()), "m", "m", NonZeroU32::new(1))
}

async fn serve(builder: GatewayBuilder, metrics_key: Option<&str>) -> Server {
    let options = RouterOptions {
        max_body_bytes: 1 << 16,
        metrics_key_sha256: metrics_key.map(key_hash),
        ..RouterOptions::default()
    };
    Server::start(builder.build().unwrap(), options)
        .await
        .unwrap()
}

fn chat(max_tokens: u32, stream: bool) -> Vec<u8> {
    json!({
        "model": "m",
        "max_tokens": max_tokens,
        "stream": stream,
        "messages": [{"role": "user", "content": "hello"}],
    })
    .to_string()
    .into_bytes()
}

async fn metrics_text(server: &Server, headers: &[(&str, &str)]) -> (u16, String) {
    let r = request(server.addr, "GET", "/metrics", headers, b"")
        .await
        .unwrap();
    (r.status, String::from_utf8(r.body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_behind_a_key_answer_401_without_it() {
    let server = serve(builder(&sim(None)), Some("mk-secret")).await;
    let refused = json!({"error": {
        "message": "metrics key required",
        "type": "authentication_error",
        "param": null,
        "code": "invalid_api_key",
    }});
    for headers in [
        vec![],
        vec![("authorization", "Bearer mk-wrong")],
        vec![("authorization", "Bearer mk-secre")],
        // A tenant's key is not the metrics key.
        vec![("authorization", "Bearer sk-a")],
        vec![("api-key", "")],
    ] {
        let r = request(server.addr, "GET", "/metrics", &headers, b"")
            .await
            .unwrap();
        assert_eq!(r.status, 401, "{headers:?}");
        assert_eq!(r.json(), refused, "{headers:?}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    for headers in [
        [("authorization", "Bearer mk-secret")],
        [("api-key", "mk-secret")],
    ] {
        let (status, text) = metrics_text(&server, &headers).await;
        assert_eq!(status, 200, "{headers:?}");
        assert!(
            text.contains("# TYPE gateway_request_duration_seconds histogram"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
    // Other routes are untouched by the metrics key.
    let r = request(server.addr, "GET", "/health", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    server.stop().await;

    // Without a key configured, /metrics is open as before.
    let open_server = serve(builder(&sim(None)), None).await;
    let (status, _) = metrics_text(&open_server, &[]).await;
    assert_eq!(status, 200);
    open_server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_without_tenant_labels_name_no_tenant() {
    for labels in [true, false] {
        let server = serve(builder(&sim(None)).metrics_tenant_labels(labels), None).await;
        for key in ["sk-a", "sk-n"] {
            let auth = format!("Bearer {key}");
            let r = request(
                server.addr,
                "POST",
                "/v1/chat/completions",
                &[("authorization", &auth)],
                &chat(4, false),
            )
            .await
            .unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.json()["usage"]["completion_tokens"], 4);
        }
        // One refused before a tenant is known.
        let r = request(
            server.addr,
            "POST",
            "/v1/chat/completions",
            &[("authorization", "Bearer nope")],
            &chat(4, false),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 401);
        let (_, text) = metrics_text(&server, &[]).await;
        let tenant_lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("tenant=") && !l.starts_with('#'))
            .collect();
        assert!(!tenant_lines.is_empty());
        let (prompt, completion) = (prompt_tokens(&text), 4 * 2);
        if labels {
            for line in [
                r#"gateway_requests_total{tenant="team-a",model="m",outcome="ok"} 1"#,
                r#"gateway_requests_total{tenant="nightly",model="m",outcome="ok"} 1"#,
                r#"gateway_tokens_total{tenant="team-a",model="m",kind="completion"} 4"#,
                r#"gateway_spend_usd_total{tenant="nightly-vip"} 0.0"#,
            ] {
                assert!(
                    tenant_lines.contains(&line),
                    "{line} not in {tenant_lines:#?}"
                );
            }
        } else {
            // Every tenant label reads "all" (or "unauthenticated").
            for line in &tenant_lines {
                assert!(
                    line.contains(r#"tenant="all""#)
                        || line.contains(r#"tenant="unauthenticated""#),
                    "{line}"
                );
                assert!(
                    !line.contains("team-a") && !line.contains("nightly"),
                    "{line}"
                );
            }
            for line in [
                r#"gateway_requests_total{tenant="all",model="m",outcome="ok"} 2"#.to_owned(),
                format!(r#"gateway_tokens_total{{tenant="all",model="m",kind="completion"}} {completion}"#),
                format!(r#"gateway_tokens_total{{tenant="all",model="m",kind="prompt"}} {prompt}"#),
                r#"gateway_requests_total{tenant="unauthenticated",model="unknown",outcome="invalid_api_key"} 1"#.to_owned(),
            ] {
                assert!(tenant_lines.contains(&line.as_str()), "{line} not in {tenant_lines:#?}");
            }
            let spend: Vec<&&str> = tenant_lines
                .iter()
                .filter(|l| l.starts_with("gateway_spend_usd_total"))
                .collect();
            assert_eq!(spend.len(), 1, "{spend:?}");
        }
        server.stop().await;
    }
}

/// The `kind="prompt"` tokens summed over every series.
fn prompt_tokens(text: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with("gateway_tokens_total{") && l.contains(r#"kind="prompt""#))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// Holds the one slot with a long stream of `team-a`, queues a batch
/// tenant's (`key`) request sent with `x-priority: interactive`, then an
/// interactive `team-a` request; frees the slot; returns who finished first
/// (the one admitted first, as only one runs at a time).
async fn order_after(key: &'static str) -> Vec<&'static str> {
    let sim = sim(Some(200.0));
    let server = serve(builder(&sim), None).await;
    let addr = server.addr;
    let holder = open(
        addr,
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer sk-a")],
        &chat(1000, true),
    )
    .await
    .unwrap();
    assert_eq!(holder.status, 200);
    let done = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (who, key, priority) in [
        ("batch", key, Some("interactive")),
        ("interactive", "sk-a", None),
    ] {
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let auth = format!("Bearer {key}");
            let mut headers = vec![("authorization", auth.as_str())];
            if let Some(p) = priority {
                headers.push(("x-priority", p));
            }
            let r = request(
                addr,
                "POST",
                "/v1/chat/completions",
                &headers,
                &chat(3, false),
            )
            .await
            .unwrap();
            assert_eq!(r.status, 200, "{who}: {}", String::from_utf8_lossy(&r.body));
            let content = r.json()["choices"][0]["message"]["content"].clone();
            assert!(matches!(content, Value::String(_)));
            done.lock().unwrap().push(who);
        }));
        // Each waits in the gateway's queue before the next is sent.
        let want = tasks.len();
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let line = format!(r#"gateway_admission_queue_depth{{model="m"}} {want}"#);
            let text = server.gateway.render_metrics();
            if text.lines().any(|l| l == line) {
                break;
            }
            assert!(Instant::now() < until, "{line} never in {text}");
            sleep(Duration::from_millis(2)).await;
        }
    }
    // Free the slot: the client of the long stream leaves.
    drop(holder);
    for t in tasks {
        t.await.unwrap();
    }
    server.stop().await;
    done.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_tenant_asking_for_interactive_does_not_jump_the_queue() {
    // `nightly` may not raise: its request stays batch and waits behind
    // the interactive one that arrived after it.
    assert_eq!(order_after("sk-n").await, ["interactive", "batch"]);
    // `nightly-vip` may: its request is interactive and, first in line, goes first.
    assert_eq!(order_after("sk-v").await, ["batch", "interactive"]);
}
