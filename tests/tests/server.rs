//! The HTTP surface over real loopback sockets, with the in-process sim
//! engine behind it: every error row of the contract, cancellation in each
//! engine phase, exact charges, a budget race, retries, stalled readers and
//! timeouts.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

use gateway_adapters::server::RouterOptions;
use gateway_adapters::sim::{Fault, FaultPlan, SimBackend, SimConfig};
use gateway_core::*;
use gateway_policy::*;
use gateway_tests::{Server, open, open_with_recv_buffer, request, rss_bytes};
use serde_json::{Value, json};
use tokio::time::{Instant, sleep};

const KEY_A: &str = "sk-a";
const KEY_B: &str = "sk-b";
const ADMIN: &str = "admin-key";

fn pricing() -> Pricing {
    Pricing {
        input: Money::from_picos(10),
        cached_input: Money::from_picos(1),
        output: Money::from_picos(100),
    }
}

fn model(name: &str) -> ModelSpec {
    ModelSpec {
        name: name.into(),
        pricing: pricing(),
        context_window: 4096,
        default_max_tokens: 16,
        media: gateway_policy::MediaCosts::default(),
        counter: Arc::new(ByteBound::default()),
    }
}

fn settings() -> Settings {
    Settings {
        first_token_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(2),
        client_stall_timeout: Duration::from_secs(1),
        stream_buffer_events: NonZeroUsize::new(8).unwrap(),
        admission_wait: Duration::from_millis(300),
        request_timeout: None,
        admission_queue: 1024,
        drift_warn_ratio: 0.02,
        abort_wait: Duration::from_secs(1),
    }
}

/// A sim that produces long completions at `rate` tokens/s.
fn sim(name: &str, rate: Option<f64>) -> SimConfig {
    SimConfig {
        name: name.into(),
        models: vec!["m".into()],
        decode_tokens_per_sec: rate,
        natural_length: 1000..=1000,
        ..SimConfig::zero_delay()
    }
}

struct Rig {
    server: Server,
    sims: Vec<SimBackend>,
}

impl Rig {
    async fn new(
        sims: Vec<SimConfig>,
        tenant_a: Tenant,
        settings: Settings,
        max_concurrency: Option<u32>,
    ) -> Rig {
        let mut b_tenant = Tenant::new("team-b");
        b_tenant.models = Some(["m2".to_owned()].into_iter().collect());
        let mut builder = Gateway::builder(settings)
            .tenant(tenant_a, key_hash(KEY_A))
            .tenant(b_tenant, key_hash(KEY_B))
            .model(model("m"))
            .model(model("m2"));
        let mut handles = Vec::new();
        for config in sims {
            let sim = SimBackend::new(config);
            handles.push(sim.clone());
            builder = builder.backend(
                Arc::new(sim),
                "m",
                "m",
                max_concurrency.and_then(NonZeroU32::new),
            );
        }
        let m2 = SimBackend::new(SimConfig {
            name: "m2-sim".into(),
            models: vec!["m2".into()],
            ..SimConfig::zero_delay()
        });
        builder = builder.backend(Arc::new(m2), "m2", "m2", None);
        let gateway = builder.build().unwrap();
        let options = RouterOptions {
            admin_key_sha256: Some(key_hash(ADMIN)),
            max_body_bytes: 4096,
            ..RouterOptions::default()
        };
        Rig {
            server: Server::start(gateway, options).await.unwrap(),
            sims: handles,
        }
    }

    async fn simple(sims: Vec<SimConfig>) -> Rig {
        Rig::new(sims, Tenant::new("team-a"), settings(), None).await
    }

    fn addr(&self) -> std::net::SocketAddr {
        self.server.addr
    }

    /// Waits until nothing is in flight, then returns the tenant's usage.
    async fn settled(&self, tenant: &str) -> Value {
        self.server.settled_usage(ADMIN, tenant).await.unwrap()
    }

    async fn metrics(&self) -> String {
        let r = request(self.addr(), "GET", "/metrics", &[], b"")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        String::from_utf8(r.body).unwrap()
    }
}

fn chat(model: &str, content: &str, max_tokens: u32, stream: bool) -> Vec<u8> {
    json!({"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "stream": stream})
        .to_string()
        .into_bytes()
}

async fn post(addr: std::net::SocketAddr, key: &str, body: &[u8]) -> gateway_tests::Response {
    let auth = format!("Bearer {key}");
    request(
        addr,
        "POST",
        "/v1/chat/completions",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await
    .unwrap()
}

/// Checks an OpenAI-shaped error: status, code, message, type, request id.
fn assert_error(r: &gateway_tests::Response, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(body["error"]["type"].is_string(), "{body}");
    assert!(r.header("x-request-id").is_some());
}

// 10 bytes of prompt: ByteBound counts 10 + 2 + 32 = 44 tokens for one chat message.
const PROMPT: &str = "0123456789";
const PROMPT_TOKENS: u64 = 44;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_row_of_the_contract() {
    let rig = Rig::simple(vec![sim("sim-0", None)]).await;
    let addr = rig.addr();
    // 400 invalid_request: malformed JSON, bad types, bad values.
    assert_error(
        &post(addr, KEY_A, b"{not json").await,
        400,
        "invalid_request",
    );
    assert_error(
        &post(addr, KEY_A, br#"{"model":"m","messages":"hi"}"#).await,
        400,
        "invalid_request",
    );
    assert_error(
        &post(addr, KEY_A, &chat("m", PROMPT, 0, false)).await,
        400,
        "invalid_request",
    );
    // 400 context_length_exceeded.
    assert_error(
        &post(addr, KEY_A, &chat("m", PROMPT, 4096, false)).await,
        400,
        "context_length_exceeded",
    );
    // 401 invalid_api_key: missing and unknown.
    let r = request(
        addr,
        "POST",
        "/v1/chat/completions",
        &[],
        &chat("m", PROMPT, 4, false),
    )
    .await
    .unwrap();
    assert_error(&r, 401, "invalid_api_key");
    assert_error(
        &post(addr, "sk-nope", &chat("m", PROMPT, 4, false)).await,
        401,
        "invalid_api_key",
    );
    // `api-key` header works too.
    let r = request(
        addr,
        "POST",
        "/v1/chat/completions",
        &[("api-key", KEY_A)],
        &chat("m", PROMPT, 4, false),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    // 403 model_not_allowed; 404 model_not_found.
    assert_error(
        &post(addr, KEY_B, &chat("m", PROMPT, 4, false)).await,
        403,
        "model_not_allowed",
    );
    assert_error(
        &post(addr, KEY_A, &chat("nope", PROMPT, 4, false)).await,
        404,
        "model_not_found",
    );
    // 413 request_too_large (limit 4096 bytes).
    let big = chat("m", &"x".repeat(5000), 4, false);
    assert_error(&post(addr, KEY_A, &big).await, 413, "request_too_large");
    // x-request-id is echoed.
    let r = request(
        addr,
        "GET",
        "/v1/models",
        &[("api-key", KEY_A), ("x-request-id", "my-id-1")],
        b"",
    )
    .await
    .unwrap();
    assert_eq!((r.status, r.header("x-request-id")), (200, Some("my-id-1")));
    assert_eq!(r.json()["data"][0]["id"], "m");
    assert_eq!(r.json()["data"].as_array().map(Vec::len), Some(2));
    // Unknown routes and admin without the admin key.
    assert_eq!(
        request(addr, "GET", "/nope", &[], b"")
            .await
            .unwrap()
            .status,
        404
    );
    let r = request(
        addr,
        "GET",
        "/admin/tenants/team-a/usage",
        &[("api-key", KEY_A)],
        b"",
    )
    .await
    .unwrap();
    assert_error(&r, 401, "invalid_api_key");
    let m = rig.metrics().await;
    // Requests refused by the parser are counted without a model.
    assert!(
        m.contains(
            r#"gateway_requests_total{tenant="team-a",model="unknown",outcome="invalid_request"} 3"#
        ),
        "{m}"
    );
    assert!(m.contains(r#"gateway_requests_total{tenant="team-a",model="m",outcome="context_length_exceeded"} 1"#), "{m}");
    assert!(m.contains(r#"outcome="request_too_large"} 1"#), "{m}");
    assert!(
        m.contains(
            r#"gateway_requests_total{tenant="team-b",model="m",outcome="model_not_allowed"} 1"#
        ),
        "{m}"
    );
    rig.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_budgets_answer_429() {
    let tenant = Tenant {
        requests_per_minute: NonZeroU32::new(1),
        ..Tenant::new("team-a")
    };
    let rig = Rig::new(vec![sim("sim-0", None)], tenant, settings(), None).await;
    assert_eq!(
        post(rig.addr(), KEY_A, &chat("m", PROMPT, 4, false))
            .await
            .status,
        200
    );
    let r = post(rig.addr(), KEY_A, &chat("m", PROMPT, 4, false)).await;
    assert_error(&r, 429, "rate_limit_exceeded");
    assert_eq!(r.header("retry-after"), Some("60"));

    // A budget that fits one request of 44 prompt + 4 completion tokens (840 picos).
    let tenant = Tenant {
        budget: Some(Money::from_picos(840)),
        ..Tenant::new("team-a")
    };
    let rig = Rig::new(vec![sim("sim-0", None)], tenant, settings(), None).await;
    let r = post(rig.addr(), KEY_A, &chat("m", PROMPT, 4, false)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["usage"]["completion_tokens"], 4);
    assert_error(
        &post(rig.addr(), KEY_A, &chat("m", PROMPT, 4, false)).await,
        429,
        "budget_exceeded",
    );
    let u = rig.settled("team-a").await;
    assert_eq!(
        (u["spent_picousd"].as_u64(), u["budget_usd"].as_f64()),
        (Some(840), Some(840e-12))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_502_503_504() {
    // 502: every backend fails before the first byte.
    let failing = |name: &str| SimConfig {
        faults: FaultPlan::always(Fault::FailBeforeFirstToken(FailureKind::Internal)),
        ..sim(name, None)
    };
    let rig = Rig::simple(vec![failing("sim-0"), failing("sim-1")]).await;
    assert_error(
        &post(rig.addr(), KEY_A, &chat("m", PROMPT, 4, false)).await,
        502,
        "upstream_error",
    );
    assert_eq!(
        rig.sims[0].stats().start_calls + rig.sims[1].stats().start_calls,
        2
    );
    let u = rig.settled("team-a").await;
    assert_eq!(
        (u["requests"].as_u64(), u["spent_picousd"].as_u64()),
        (Some(1), Some(0))
    );

    // 503: the only backend is busy past the admission wait.
    let rig = Rig::new(
        vec![sim("sim-0", Some(20.0))],
        Tenant::new("team-a"),
        settings(),
        Some(1),
    )
    .await;
    let busy = open(
        rig.addr(),
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer sk-a")],
        &chat("m", PROMPT, 100, true),
    )
    .await
    .unwrap();
    let r = post(rig.addr(), KEY_A, &chat("m", PROMPT, 4, false)).await;
    assert_error(&r, 503, "overloaded");
    assert_eq!(r.header("retry-after"), Some("1"));
    drop(busy);

    // 504: no first token within the first-token timeout on any backend.
    let slow = |name: &str| SimConfig {
        base_latency: Duration::from_secs(30),
        ..sim(name, None)
    };
    let rig = Rig::simple(vec![slow("sim-0"), slow("sim-1")]).await;
    let started = Instant::now();
    assert_error(
        &post(rig.addr(), KEY_A, &chat("m", PROMPT, 4, true)).await,
        504,
        "upstream_timeout",
    );
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "two attempts of 2 s each"
    );
    let u = rig.settled("team-a").await;
    assert_eq!(u["spent_picousd"], 0);
    // Each sim sees its closed connection on its own turn after the 504:
    // waited for, within a bound.
    let prefill_aborts = || rig.sims[0].aborts().prefill + rig.sims[1].aborts().prefill;
    let until = Instant::now() + Duration::from_secs(5);
    while prefill_aborts() < 2 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(prefill_aborts(), 2);
}

/// Opens a streaming chat with request id `id` and returns the response
/// once its head arrived... which is only after the first token; so for
/// queue and prefill tests it runs in a task.
fn spawn_stream(
    addr: std::net::SocketAddr,
    id: &'static str,
    max_tokens: u32,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let body = chat("m", PROMPT, max_tokens, true);
        let _ = open(
            addr,
            "POST",
            "/v1/chat/completions",
            &[("authorization", "Bearer sk-a"), ("x-request-id", id)],
            &body,
        )
        .await;
    })
}

/// Waits until a request is in `phase` at the engine. The engine sees the
/// gateway's id, not the client's `x-request-id` (`id`, named in the message).
async fn wait_phase(sim: &SimBackend, id: &str, phase: EnginePhase) {
    let until = Instant::now() + Duration::from_secs(5);
    while !sim.live().iter().any(|(_, p)| *p == phase) {
        assert!(Instant::now() < until, "{id} never reached {phase}");
        sleep(Duration::from_millis(2)).await;
    }
    assert!(sim.phase(&RequestId::new(id)).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_aborts_in_every_phase_and_charges_only_delivered() {
    // One slot: a long request holds it while the next one queues.
    let config = SimConfig {
        slots: 1,
        ..sim("sim-0", Some(10.0))
    };
    let rig = Rig::simple(vec![config]).await;
    let sim = &rig.sims[0];
    let addr = rig.addr();

    // Queued: the holder decodes, the second request waits in the engine's queue.
    let mut holder = open(
        addr,
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer sk-a"), ("x-request-id", "holder")],
        &chat("m", PROMPT, 1000, true),
    )
    .await
    .unwrap();
    assert_eq!(holder.status, 200);
    let queued = spawn_stream(addr, "queued", 100);
    wait_phase(sim, "queued", EnginePhase::Queued).await;
    queued.abort(); // drops the socket: the client is gone
    let until = Instant::now() + Duration::from_secs(2);
    while sim.aborts().queued == 0 {
        assert!(
            Instant::now() < until,
            "queued abort never reached the engine"
        );
        sleep(Duration::from_millis(2)).await;
    }

    // Decode: read three tokens from the holder, then hang up.
    let mut deltas = 0;
    while deltas < 3 {
        let event = holder.next_event().await.unwrap().unwrap();
        let v: Value = serde_json::from_str(&event).unwrap();
        if v["choices"][0]["delta"]["content"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
        {
            deltas += 1;
        }
    }
    drop(holder);
    let until = Instant::now() + Duration::from_secs(2);
    while sim.aborts().decode == 0 {
        assert!(
            Instant::now() < until,
            "decode abort never reached the engine"
        );
        sleep(Duration::from_millis(2)).await;
    }
    let u = rig.settled("team-a").await;
    // Only the holder began: its prompt and the three tokens it took.
    assert_eq!(
        (
            u["requests"].as_u64(),
            u["completion_tokens"].as_u64(),
            u["prompt_tokens"].as_u64()
        ),
        (Some(2), Some(3), Some(PROMPT_TOKENS))
    );
    assert_eq!(
        u["spent_picousd"].as_u64(),
        Some(PROMPT_TOKENS * 10 + 3 * 100)
    );

    // Prefill: a 5 s prefill, and the client leaves during it.
    sim.set_faults(FaultPlan::default());
    let rig2 = Rig::simple(vec![SimConfig {
        base_latency: Duration::from_secs(5),
        ..sim_config_for_prefill()
    }])
    .await;
    let prefill = spawn_stream(rig2.addr(), "prefill", 10);
    wait_phase(&rig2.sims[0], "prefill", EnginePhase::Prefill).await;
    prefill.abort();
    let until = Instant::now() + Duration::from_secs(2);
    while rig2.sims[0].aborts().prefill == 0 {
        assert!(
            Instant::now() < until,
            "prefill abort never reached the engine"
        );
        sleep(Duration::from_millis(2)).await;
    }
    let u = rig2.settled("team-a").await;
    assert_eq!(
        (u["spent_picousd"].as_u64(), u["completion_tokens"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(
        rig.sims[0].aborts(),
        AbortCounts {
            queued: 1,
            prefill: 0,
            decode: 1
        }
    );
    let m = rig.metrics().await;
    assert!(
        m.contains(r#"gateway_upstream_aborts_total{backend="sim-0",phase="decode"} 1"#),
        "{m}"
    );
    assert!(
        m.contains("gateway_abort_propagation_seconds_count 1"),
        "{m}"
    );
}

fn sim_config_for_prefill() -> SimConfig {
    sim("sim-0", Some(10.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_race_admits_exactly_what_fits() {
    // Each request: 44 prompt + 5 completion tokens = 440 + 500 = 940 picos,
    // reserved and charged alike (the sim counts the prompt as the gateway
    // does and always runs to max_tokens). The budget fits 20.
    let tenant = Tenant {
        budget: Some(Money::from_picos(20 * 940)),
        ..Tenant::new("team-a")
    };
    let rig = Rig::new(vec![sim("sim-0", Some(50.0))], tenant, settings(), None).await;
    let addr = rig.addr();
    let tasks: Vec<_> = (0..200)
        .map(|_| tokio::spawn(async move { post(addr, KEY_A, &chat("m", PROMPT, 5, false)).await }))
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            200 => ok += 1,
            429 => {
                assert_eq!(r.json()["error"]["code"], "budget_exceeded");
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", String::from_utf8_lossy(&r.body)),
        }
    }
    println!("budget race: {ok} admitted, {refused} refused");
    assert_eq!((ok, refused), (20, 180));
    let u = rig.settled("team-a").await;
    assert_eq!(u["spent_picousd"].as_u64(), Some(20 * 940));
    assert_eq!(u["requests"].as_u64(), Some(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_before_the_first_byte_and_typed_errors_after() {
    // The first backend refuses; the second serves; one charge.
    let refusing = SimConfig {
        faults: FaultPlan::always(Fault::FailBeforeFirstToken(FailureKind::Overloaded)),
        ..sim("sim-0", None)
    };
    let rig = Rig::simple(vec![refusing, sim("sim-1", None)]).await;
    let r = post(rig.addr(), KEY_A, &chat("m", PROMPT, 6, false)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["usage"]["completion_tokens"], 6);
    assert_eq!(
        (
            rig.sims[0].stats().start_calls,
            rig.sims[1].stats().start_calls
        ),
        (1, 1)
    );
    let u = rig.settled("team-a").await;
    assert_eq!(
        (u["requests"].as_u64(), u["spent_picousd"].as_u64()),
        (Some(1), Some(PROMPT_TOKENS * 10 + 600))
    );

    // A failure after the first byte is not retried: typed SSE error, no [DONE].
    let breaking = |name: &str| SimConfig {
        faults: FaultPlan::always(Fault::ErrorAfter(2, FailureKind::Internal)),
        ..sim(name, None)
    };
    let rig = Rig::simple(vec![breaking("sim-0"), breaking("sim-1")]).await;
    let mut s = open(
        rig.addr(),
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer sk-a")],
        &chat("m", PROMPT, 10, true),
    )
    .await
    .unwrap();
    assert_eq!(s.status, 200);
    let mut events = Vec::new();
    while let Some(e) = s.next_event().await.unwrap() {
        events.push(e);
    }
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["type"], "upstream_error");
    assert_eq!(last["error"]["code"], "internal");
    assert!(!events.iter().any(|e| e == "[DONE]"), "{events:?}");
    assert_eq!(
        rig.sims[0].stats().start_calls + rig.sims[1].stats().start_calls,
        1
    );
    let u = rig.settled("team-a").await;
    assert_eq!(
        (u["completion_tokens"].as_u64(), u["spent_picousd"].as_u64()),
        (Some(2), Some(PROMPT_TOKENS * 10 + 200))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_is_a_typed_sse_error() {
    let stalling = SimConfig {
        faults: FaultPlan::always(Fault::StallAfter(2)),
        ..sim("sim-0", None)
    };
    let mut settings = settings();
    settings.idle_timeout = Duration::from_millis(300);
    let rig = Rig::new(vec![stalling], Tenant::new("team-a"), settings, None).await;
    let mut s = open(
        rig.addr(),
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer sk-a")],
        &chat("m", PROMPT, 10, true),
    )
    .await
    .unwrap();
    let mut events = Vec::new();
    while let Some(e) = s.next_event().await.unwrap() {
        events.push(e);
    }
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "idle_timeout", "{events:?}");
    assert_eq!(rig.sims[0].aborts().decode, 1);
    let u = rig.settled("team-a").await;
    assert_eq!(u["completion_tokens"].as_u64(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_readers_stay_bounded_and_are_aborted() {
    // 200 streams from an engine as fast as it can go; no client reads.
    let config = SimConfig {
        slots: 256,
        queue_capacity: 0,
        kv_capacity_tokens: 100_000_000,
        ..sim("sim-0", None)
    };
    let rig = Rig::simple(vec![config]).await;
    let addr = rig.addr();
    let before = rss_bytes();
    let mut streams = Vec::new();
    for _ in 0..200 {
        // A small receive buffer: the kernel does not soak up the stream.
        let s = open_with_recv_buffer(
            addr,
            16 * 1024,
            "POST",
            "/v1/chat/completions",
            &[("authorization", "Bearer sk-a")],
            &chat("m", PROMPT, 4000, true),
        )
        .await
        .unwrap();
        assert_eq!(s.status, 200);
        streams.push(s);
    }
    // Everything fills up: engine channel, gateway buffer, socket buffers.
    sleep(Duration::from_millis(500)).await;
    let peak = rss_bytes();
    let growth = peak.saturating_sub(before);
    println!(
        "stalled readers: RSS before {} KiB, with 200 stalled streams {} KiB, growth {} KiB ({} KiB per stream)",
        before / 1024,
        peak / 1024,
        growth / 1024,
        growth / 1024 / 200
    );
    assert!(growth < 64 * 1024 * 1024, "RSS grew by {growth} bytes");
    // After the 1 s stall timeout every stream is aborted at the engine.
    let until = Instant::now() + Duration::from_secs(5);
    while rig.sims[0].aborts().decode < 200 {
        assert!(Instant::now() < until, "aborts: {:?}", rig.sims[0].aborts());
        sleep(Duration::from_millis(10)).await;
    }
    let u = rig.settled("team-a").await;
    assert_eq!(u["requests"].as_u64(), Some(200));
    let m = rig.metrics().await;
    assert!(
        m.contains(r#"gateway_client_stalls_total{backend="sim-0"} 200"#),
        "{m}"
    );
    drop(streams);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_and_metrics_cover_the_contract() {
    let rig = Rig::simple(vec![sim("sim-0", None)]).await;
    let mut s = open(rig.addr(), "POST", "/v1/chat/completions", &[("authorization", "Bearer sk-a")], &json!({"model":"m","stream":true,"stream_options":{"include_usage":true},"max_tokens":5,"messages":[{"role":"user","content":PROMPT}]}).to_string().into_bytes())
        .await
        .unwrap();
    assert_eq!(
        s.header_value("content-type"),
        Some("text/event-stream; charset=utf-8".to_owned())
    );
    let mut events = Vec::new();
    while let Some(e) = s.next_event().await.unwrap() {
        events.push(e);
    }
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 5);
    assert_eq!(usage["usage"]["prompt_tokens"], PROMPT_TOKENS);
    // The request is counted when it settles, just after its last frame.
    rig.settled("team-a").await;
    let m = rig.metrics().await;
    for name in [
        "gateway_requests_total",
        "gateway_request_duration_seconds",
        "gateway_time_to_first_token_seconds",
        "gateway_tokens_total",
        "gateway_spend_usd_total",
        "gateway_inflight_requests",
        "gateway_backend_queue_depth",
        "gateway_upstream_aborts_total",
        "gateway_abort_propagation_seconds",
        "gateway_backend_failures_total",
        "gateway_estimate_error_ratio",
    ] {
        assert!(
            m.contains(&format!("# TYPE {name}"))
                || m.contains(&format!("# TYPE {}", name.trim_end_matches("_total"))),
            "{name} missing:\n{m}"
        );
    }
    assert!(
        m.contains(r#"gateway_requests_total{tenant="team-a",model="m",outcome="ok"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"gateway_tokens_total{tenant="team-a",model="m",kind="completion"} 5"#),
        "{m}"
    );
    assert!(
        m.contains(r#"gateway_time_to_first_token_seconds_count{model="m",backend="sim-0"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"gateway_inflight_requests{backend="sim-0"} 0"#),
        "{m}"
    );
    let ready = request(rig.addr(), "GET", "/ready", &[], b"")
        .await
        .unwrap();
    assert_eq!(ready.status, 200);
    rig.sims[0].set_health(Health::Unhealthy("test".into()));
    rig.server.gateway.check_health().await;
    let ready = request(rig.addr(), "GET", "/ready", &[], b"")
        .await
        .unwrap();
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["models"], json!(["m"]));
    assert_eq!(
        request(rig.addr(), "GET", "/health", &[], b"")
            .await
            .unwrap()
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_without_a_configured_cost_is_a_400_naming_it() {
    let rig = Rig::simple(vec![sim("sim-0", None)]).await;
    let body = json!({
        "model": "m",
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}
        ]}],
        "max_tokens": 4
    });
    let r = post(rig.addr(), KEY_A, body.to_string().as_bytes()).await;
    assert_error(&r, 400, "invalid_request");
    assert_eq!(
        r.json()["error"]["message"],
        "model m takes no image input (its configuration sets no image_tokens)"
    );
    // Tools and tool messages are accepted and served (the sim writes text).
    let body = json!({
        "model": "m",
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            ]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"}
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
        "tool_choice": "auto",
        "max_tokens": 3
    });
    let r = post(rig.addr(), KEY_A, body.to_string().as_bytes()).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["usage"]["completion_tokens"], 3);
    // A malformed tool definition is refused with the field named.
    let body = json!({
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"description": "no name"}}]
    });
    let r = post(rig.addr(), KEY_A, body.to_string().as_bytes()).await;
    assert_error(&r, 400, "invalid_request");
    assert_eq!(r.json()["error"]["param"], "tools[0].function.name");
}

/// A stream's head and its first chunk leave in one write: the handler
/// lets the pump relay the events it has in hand before the response goes
/// back, and the SSE body hands over its first batch at once, so hyper
/// finds the first chunk ready when it writes the head (a syscall and a
/// wake-up of the connection fewer per stream, and the first token no
/// later than the head). The engine paces its tokens 100 ms apart; the
/// gateway runs on one worker, as when pinned to one core (with two, the
/// pump may run beside the connection and fill the buffer in time
/// anyway); the client, on a thread of its own, reads as soon as the
/// first bytes arrive, so its first read holds what the first write sent.
/// (Without the yield, or with the first batch held back for more, the
/// first write is the head alone.)
#[tokio::test(flavor = "current_thread")]
async fn a_streams_head_and_first_chunk_leave_in_one_write() {
    use std::io::{Read, Write};
    let rig = Rig::simple(vec![sim("sim-0", Some(10.0))]).await;
    let addr = rig.addr();
    let body = chat("m", PROMPT, 3, true);
    let client = std::thread::spawn(move || {
        let mut socket = std::net::TcpStream::connect(addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {KEY_A}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        socket
            .write_all(&[head.as_bytes(), &body].concat())
            .unwrap();
        let mut buf = vec![0; 64 << 10];
        let n = socket.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    });
    // The server runs on this thread while the client waits on its own.
    let first = loop {
        if client.is_finished() {
            break client.join().unwrap();
        }
        sleep(Duration::from_millis(1)).await;
    };
    assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{first}");
    let (_, body) = first.split_once("\r\n\r\n").unwrap();
    // The role chunk and the first token's, the next token being 100 ms
    // away.
    let events: Vec<Value> = body
        .split("data: ")
        .skip(1)
        .map(|e| serde_json::from_str(e.trim_end_matches(['\r', '\n'])).unwrap())
        .collect();
    assert_eq!(events.len(), 2, "the first read: {first}");
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    let token = events[1]["choices"][0]["delta"]["content"]
        .as_str()
        .unwrap();
    assert!(!token.is_empty(), "{first}");
}
