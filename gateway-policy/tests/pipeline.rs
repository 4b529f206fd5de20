//! The pipeline end to end over mock backends, in paused time: exact
//! charges on every path, retries before the first token, timeouts,
//! stalled clients, limits, admission waits and draining.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use gateway_core::testkit::{MockBackend, MockHandle, Script, Step};
use gateway_core::*;
use gateway_policy::*;

pub mod support;
use support::{pricing, settings};

const MODEL: &str = "tiny";

struct Setup {
    gateway: Gateway,
    tenant: Arc<Tenant>,
    mocks: Vec<MockHandle>,
}

fn setup_with(n: usize, settings: Settings, tenant: Tenant, max_concurrency: Option<u32>) -> Setup {
    let mut builder = Gateway::builder(settings)
        .tenant(tenant, key_hash("sk-t"))
        .model(ModelSpec {
            name: MODEL.into(),
            pricing: pricing(),
            context_window: 1000,
            default_max_tokens: 16,
            media: gateway_policy::MediaCosts::default(),
            counter: Arc::new(ByteBound::default()),
        });
    let mut mocks = Vec::new();
    for i in 0..n {
        let (mock, handle) = MockBackend::new(&format!("mock-{i}"), MODEL);
        builder = builder.backend(
            Arc::new(mock),
            MODEL,
            MODEL,
            max_concurrency.and_then(NonZeroU32::new),
        );
        mocks.push(handle);
    }
    let gateway = builder.build().unwrap();
    let tenant = gateway.authenticate(Some("sk-t")).unwrap();
    Setup {
        gateway,
        tenant,
        mocks,
    }
}

fn setup(n: usize) -> Setup {
    setup_with(n, settings(), Tenant::new("team-a"), None)
}

/// A 10-byte prompt: ByteBound counts 12 tokens.
fn request(id: &str) -> ClientRequest {
    let mut r = ClientRequest::new(id, MODEL, Prompt::Text("0123456789".into()));
    r.max_tokens = Some(8);
    r
}

async fn collect(stream: &mut GatewayStream) -> (String, Vec<&'static str>, Option<BackendError>) {
    let (mut text, mut names, mut error) = (String::new(), Vec::new(), None);
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                if let TokenEvent::Delta(d) = &event {
                    text.push_str(&d.text);
                }
                names.push(event.name());
            }
            Err(e) => error = Some(e),
        }
    }
    (text, names, error)
}

fn account(s: &Setup) -> TenantAccount {
    s.gateway.account(&s.tenant.id).unwrap()
}

/// Polls until the tenant holds nothing (the pump settles asynchronously).
async fn settled(s: &Setup) -> TenantAccount {
    for _ in 0..1000 {
        let a = account(s);
        if a.reserved == Money::ZERO && s.gateway.active() == 0 {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("never settled: {:?}", account(s));
}

#[tokio::test(start_paused = true)]
async fn success_charges_prompt_and_delivered_tokens_once() {
    let s = setup(1);
    let guard = s.gateway.request_cancel();
    let cancel = guard.handle().clone();
    let mut stream = s
        .gateway
        .generate(&s.tenant, request("r1"), cancel)
        .await
        .unwrap();
    assert_eq!(stream.backend(), "mock-0");
    let (text, names, error) = collect(&mut stream).await;
    assert_eq!(text, "Hello, world");
    assert_eq!(
        names,
        ["Started", "Delta", "Delta", "Delta", "Usage", "Finished"]
    );
    assert!(error.is_none());
    let a = settled(&s).await;
    // 12 prompt tokens * 10 + 3 completion * 100
    assert_eq!(a.spent, Money::from_picos(420));
    assert_eq!((a.requests, a.usage), (1, Usage::new(12, 3)));
    let metrics = s.gateway.render_metrics();
    assert!(
        metrics.contains(r#"gateway_requests_total{tenant="team-a",model="tiny",outcome="ok"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"gateway_tokens_total{tenant="team-a",model="tiny",kind="completion"} 3"#)
    );
    assert!(metrics.contains(r#"gateway_estimate_error_ratio_count{model="tiny"} 1"#));
}

#[tokio::test(start_paused = true)]
async fn a_client_gone_mid_stream_pays_only_what_it_took() {
    let s = setup(1);
    s.mocks[0].push(Script::repeat(100, Duration::from_millis(10)));
    let guard = s.gateway.request_cancel();
    let cancel = guard.handle().clone();
    let mut stream = s
        .gateway
        .generate(&s.tenant, request("r2"), cancel)
        .await
        .unwrap();
    // Take Started and two Deltas, then the client goes away.
    for _ in 0..3 {
        stream.next().await.unwrap().unwrap();
    }
    assert_eq!(stream.delivered(), 2);
    drop(stream);
    drop(guard);
    let a = settled(&s).await;
    assert_eq!(a.usage.completion(), 2);
    assert_eq!(a.usage.prompt(), 12);
    // 12 * 10 + 2 * 100
    assert_eq!(a.spent, Money::from_picos(320));
    assert_eq!(s.mocks[0].aborts().decode, 1);
    let metrics = s.gateway.render_metrics();
    assert!(
        metrics.contains(r#"gateway_upstream_aborts_total{backend="mock-0",phase="decode"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("gateway_abort_propagation_seconds_count 1"),
        "{metrics}"
    );
    assert!(metrics.contains(r#"outcome="canceled"} 1"#), "{metrics}");
}

#[tokio::test(start_paused = true)]
async fn a_failure_before_the_first_token_fails_over_and_charges_once() {
    let s = setup(2);
    // Equal load keeps configuration order: mock-0 is tried first, refuses.
    s.mocks[0].push(Script::reject(FailureKind::Overloaded));
    let guard = s.gateway.request_cancel();
    let cancel = guard.handle().clone();
    let mut stream = s
        .gateway
        .generate(&s.tenant, request("r3"), cancel)
        .await
        .unwrap();
    let (text, _, error) = collect(&mut stream).await;
    assert_eq!(text, "Hello, world");
    assert!(error.is_none());
    assert_eq!((s.mocks[0].starts(), s.mocks[1].starts()), (1, 1));
    let a = settled(&s).await;
    assert_eq!((a.requests, a.spent), (1, Money::from_picos(420)));
    assert!(
        s.gateway
            .render_metrics()
            .contains("gateway_retries_total{backend=\"mock-0\"} 1")
    );
}

#[tokio::test(start_paused = true)]
async fn every_backend_failing_is_an_upstream_error_and_charges_nothing() {
    let s = setup(2);
    s.mocks[0].push(Script::reject(FailureKind::Internal));
    s.mocks[1].push(Script::tokens(&[], Duration::ZERO).then(Step::Fail(FailureKind::Connect)));
    let guard = s.gateway.request_cancel();
    let cancel = guard.handle().clone();
    let err = s
        .gateway
        .generate(&s.tenant, request("r4"), cancel)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::UpstreamError);
    assert_eq!(err.code().status().as_u16(), 502);
    let a = settled(&s).await;
    assert_eq!((a.requests, a.spent), (1, Money::ZERO));
    let m = s.gateway.render_metrics();
    assert!(
        m.contains(r#"gateway_backend_failures_total{backend="mock-0",kind="internal"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"gateway_backend_failures_total{backend="mock-1",kind="connect"} 1"#),
        "{m}"
    );
    assert!(m.contains(r#"outcome="upstream_error"} 1"#), "{m}");
}

#[tokio::test(start_paused = true)]
async fn a_request_fault_is_not_retried() {
    let s = setup(2);
    s.mocks[0].push(Script::reject(FailureKind::InvalidRequest));
    s.mocks[1].push(Script::reject(FailureKind::InvalidRequest));
    let guard = s.gateway.request_cancel();
    let cancel = guard.handle().clone();
    let err = s
        .gateway
        .generate(&s.tenant, request("r5"), cancel)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidRequest);
    assert_eq!(s.mocks[0].starts() + s.mocks[1].starts(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failure_after_the_first_token_ends_the_stream_typed() {
    let s = setup(2);
    s.mocks[0].push(Script::repeat(2, Duration::ZERO).then(Step::Fail(FailureKind::OutOfMemory)));
    s.mocks[1].push(Script::repeat(2, Duration::ZERO).then(Step::Fail(FailureKind::OutOfMemory)));
    let guard = s.gateway.request_cancel();
    let cancel = guard.handle().clone();
    let mut stream = s
        .gateway
        .generate(&s.tenant, request("r6"), cancel)
        .await
        .unwrap();
    let (text, names, error) = collect(&mut stream).await;
    assert_eq!(text, "tok tok ");
    assert_eq!(names, ["Started", "Delta", "Delta"]);
    let error = error.unwrap();
    assert_eq!(
        (error.kind(), error.phase()),
        (FailureKind::OutOfMemory, FailurePhase::AfterFirstToken)
    );
    assert_eq!(
        s.mocks[0].starts() + s.mocks[1].starts(),
        1,
        "no retry after the first token"
    );
    let a = settled(&s).await;
    assert_eq!(a.spent, Money::from_picos(12 * 10 + 2 * 100));
    assert!(
        s.gateway
            .render_metrics()
            .contains(r#"outcome="stream_error"} 1"#)
    );
}

#[tokio::test(start_paused = true)]
async fn first_token_timeout_on_every_backend_is_504() {
    let s = setup(2);
    for m in &s.mocks {
        m.push(Script::repeat(3, Duration::ZERO).prefill(Duration::from_secs(60)));
    }
    let guard = s.gateway.request_cancel();
    let cancel = guard.handle().clone();
    let started = tokio::time::Instant::now();
    let err = s
        .gateway
        .generate(&s.tenant, request("r7"), cancel)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::UpstreamTimeout);
    assert_eq!(err.code().status().as_u16(), 504);
    // Two attempts of 2 s each.
    assert_eq!(started.elapsed(), Duration::from_secs(4));
    settled(&s).await;
    // Both attempts were aborted at the engine during prefill.
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        (s.mocks[0].aborts(), s.mocks[1].aborts()),
        (
            AbortCounts {
                prefill: 1,
                ..AbortCounts::default()
            },
            AbortCounts {
                prefill: 1,
                ..AbortCounts::default()
            }
        )
    );
}

#[tokio::test(start_paused = true)]
async fn reasoning_longer_than_the_first_token_timeout_is_served() {
    let s = setup(1);
    // 0.2 s of prefill, then 6 s of reasoning in pieces 1.5 s apart (each
    // within the 3 s idle timeout), then the answer: the first reasoning
    // piece is the first token, so the 2 s first-token timeout never fires.
    let think = |text: &str| Step::Output {
        delta: Delta::reasoning(text, ReasoningField::Reasoning, 1),
        delay: Duration::from_millis(1500),
    };
    s.mocks[0].push(
        Script {
            steps: vec![
                think("Let"),
                think(" me"),
                think(" think"),
                think("."),
                Step::Token {
                    text: "Yes".into(),
                    delay: Duration::ZERO,
                },
                Step::Token {
                    text: ".".into(),
                    delay: Duration::ZERO,
                },
            ],
            ..Script::tokens(&[], Duration::ZERO)
        }
        .prefill(Duration::from_millis(200)),
    );
    let guard = s.gateway.request_cancel();
    let cancel = guard.handle().clone();
    let started = tokio::time::Instant::now();
    let mut stream = s
        .gateway
        .generate(&s.tenant, request("think"), cancel)
        .await
        .unwrap();
    // The head (the first token) came with the first piece of reasoning.
    assert_eq!(started.elapsed(), Duration::from_millis(1700));
    let mut reasoning = String::new();
    let mut text = String::new();
    let mut names = Vec::new();
    while let Some(item) = stream.next().await {
        let event = item.unwrap();
        if let TokenEvent::Delta(d) = &event {
            reasoning.push_str(&d.reasoning);
            text.push_str(&d.text);
        }
        names.push(event.name());
    }
    assert_eq!(
        (reasoning.as_str(), text.as_str()),
        ("Let me think.", "Yes.")
    );
    assert_eq!(
        names,
        [
            "Started", "Delta", "Delta", "Delta", "Delta", "Delta", "Delta", "Usage", "Finished"
        ]
    );
    assert_eq!(started.elapsed(), Duration::from_millis(6200));
    // 12 prompt tokens and 6 completion tokens, reasoning included.
    let a = settled(&s).await;
    assert_eq!(a.spent, Money::from_picos(12 * 10 + 6 * 100));
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_ends_the_stream_with_a_typed_error() {
    let s = setup(1);
    s.mocks[0].push(Script::repeat(1, Duration::ZERO).then(Step::Stall));
    let guard = s.gateway.request_cancel();
    let cancel = guard.handle().clone();
    let mut stream = s
        .gateway
        .generate(&s.tenant, request("r8"), cancel)
        .await
        .unwrap();
    let (text, _, error) = collect(&mut stream).await;
    assert_eq!(text, "tok ");
    assert_eq!(error.unwrap().kind(), FailureKind::IdleTimeout);
    let a = settled(&s).await;
    assert_eq!(a.spent, Money::from_picos(12 * 10 + 100));
    assert_eq!(s.mocks[0].aborts().decode, 1);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_is_dropped_after_the_stall_timeout() {
    let s = setup(1);
    s.mocks[0].push(Script::repeat(1000, Duration::from_millis(1)));
    let guard = s.gateway.request_cancel();
    let cancel = guard.handle().clone();
    let stream = s
        .gateway
        .generate(&s.tenant, request("r9"), cancel)
        .await
        .unwrap();
    // Read nothing. The buffer (4) fills, then the stall timeout (5 s) fires.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(s.mocks[0].aborts().decode, 1);
    let a = settled(&s).await;
    // Nothing taken: no prompt charge, no completion; the buffered tokens are canceled.
    assert_eq!(a.spent, Money::ZERO);
    assert_eq!(a.usage.completion(), 0);
    assert!(a.usage.canceled() >= 4, "{:?}", a.usage);
    assert!(
        s.gateway
            .render_metrics()
            .contains(r#"gateway_client_stalls_total{backend="mock-0"} 1"#)
    );
    drop(stream);
}

#[tokio::test(start_paused = true)]
async fn refusals_before_routing() {
    let mut tenant = Tenant::new("team-a");
    tenant.models = Some(["other".to_owned()].into_iter().collect());
    let s = setup_with(1, settings(), tenant, None);
    let guard = s.gateway.request_cancel();
    let cancel = guard.handle().clone();
    let err = s
        .gateway
        .generate(&s.tenant, request("a"), cancel.clone())
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.code().status().as_u16()),
        (ErrorCode::ModelNotAllowed, 403)
    );
    let mut unknown = request("b");
    unknown.model = "nope".into();
    let err = s
        .gateway
        .generate(&s.tenant, unknown, cancel.clone())
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.code().status().as_u16()),
        (ErrorCode::ModelNotFound, 404)
    );

    let s = setup(1);
    let mut long = request("c");
    long.max_tokens = Some(990);
    let err = s
        .gateway
        .generate(&s.tenant, long, cancel.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::ContextLengthExceeded);
    assert_eq!(
        err.message(),
        "this model's context window is 1000 tokens; the prompt (12 tokens at most) plus max_tokens (990) needs 1002"
    );
    assert!(s.gateway.authenticate(Some("sk-wrong")).is_err());
    assert_eq!(
        s.gateway.authenticate(None).unwrap_err().code(),
        ErrorCode::InvalidApiKey
    );
    let m = s.gateway.render_metrics();
    assert!(m.contains(r#"gateway_requests_total{tenant="unauthenticated",model="unknown",outcome="invalid_api_key"} 2"#), "{m}");
    assert!(m.contains(r#"outcome="context_length_exceeded"} 1"#), "{m}");
}

#[tokio::test(start_paused = true)]
async fn rate_limits_answer_with_retry_after() {
    let tenant = Tenant {
        requests_per_minute: NonZeroU32::new(2),
        ..Tenant::new("team-a")
    };
    let s = setup_with(1, settings(), tenant, None);
    for id in ["a", "b"] {
        let guard = s.gateway.request_cancel();
        let cancel = guard.handle().clone();
        let mut stream = s
            .gateway
            .generate(&s.tenant, request(id), cancel)
            .await
            .unwrap();
        collect(&mut stream).await;
    }
    let guard = s.gateway.request_cancel();
    let cancel = guard.handle().clone();
    let err = s
        .gateway
        .generate(&s.tenant, request("c"), cancel)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::RateLimitExceeded);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
}

#[tokio::test(start_paused = true)]
async fn a_budget_admits_only_what_it_can_pay_for() {
    // Each request reserves 12 * 10 + 8 * 100 = 920 picos; the budget fits 3.
    let tenant = Tenant {
        budget: Some(Money::from_picos(3 * 920)),
        ..Tenant::new("team-a")
    };
    let s = setup_with(1, settings(), tenant, None);
    s.mocks[0].set_default(Script::repeat(8, Duration::from_millis(100)));
    let mut streams = Vec::new();
    let mut refused = 0;
    for i in 0..10 {
        let g = s.gateway.request_cancel();
        let cancel = g.handle().clone();
        match s
            .gateway
            .generate(&s.tenant, request(&format!("b{i}")), cancel)
            .await
        {
            Ok(stream) => streams.push((g, stream)),
            Err(e) => {
                assert_eq!(e.code(), ErrorCode::BudgetExceeded);
                refused += 1;
            }
        }
    }
    assert_eq!((streams.len(), refused), (3, 7));
    for (_g, mut stream) in streams {
        collect(&mut stream).await;
    }
    let a = settled(&s).await;
    assert_eq!(a.spent, Money::from_picos(3 * 920));
    assert!(a.spent <= s.tenant.budget.unwrap());
}

#[tokio::test(start_paused = true)]
async fn requests_wait_for_capacity_then_get_503() {
    let s = setup_with(1, settings(), Tenant::new("team-a"), Some(1));
    s.mocks[0].push(Script::repeat(5, Duration::from_millis(100)));
    s.mocks[0].push(Script::default());
    let guard1 = s.gateway.request_cancel();
    let c1 = guard1.handle().clone();
    let mut first = s
        .gateway
        .generate(&s.tenant, request("w1"), c1)
        .await
        .unwrap();
    // The second waits for the first (0.5 s) within the 1 s admission wait.
    let gateway = s.gateway.clone();
    let tenant = s.tenant.clone();
    let second = tokio::spawn(async move {
        let guard = gateway.request_cancel();
        let c = guard.handle().clone();
        let mut st = gateway.generate(&tenant, request("w2"), c).await.unwrap();
        collect(&mut st).await.0
    });
    // While it waits the model's admission queue holds it.
    let depth = |n: u32| format!("gateway_admission_queue_depth{{model=\"{MODEL}\"}} {n}\n");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(s.gateway.render_metrics().contains(&depth(1)));
    collect(&mut first).await;
    assert_eq!(second.await.unwrap(), "Hello, world");
    assert!(s.gateway.render_metrics().contains(&depth(0)));

    // A backend busy for longer than the admission wait: 503 with Retry-After.
    s.mocks[0].push(Script::repeat(50, Duration::from_millis(100)));
    let guard3 = s.gateway.request_cancel();
    let c3 = guard3.handle().clone();
    let busy = s
        .gateway
        .generate(&s.tenant, request("w3"), c3)
        .await
        .unwrap();
    let guard4 = s.gateway.request_cancel();
    let c4 = guard4.handle().clone();
    let err = s
        .gateway
        .generate(&s.tenant, request("w4"), c4)
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.retry_after()),
        (ErrorCode::Overloaded, Some(Duration::from_secs(1)))
    );
    drop(busy);
    settled(&s).await;
}

#[tokio::test(start_paused = true)]
async fn drain_aborts_what_outlives_the_grace_period() {
    let s = setup(1);
    s.mocks[0].push(Script::repeat(1000, Duration::from_millis(50)));
    let guard = s.gateway.request_cancel();
    let cancel = guard.handle().clone();
    let mut long = request("d1");
    long.max_tokens = Some(900);
    let mut stream = s.gateway.generate(&s.tenant, long, cancel).await.unwrap();
    let reader = tokio::spawn(async move { collect(&mut stream).await });
    let report = s.gateway.drain(Duration::from_secs(1)).await;
    assert_eq!(
        report,
        DrainReport {
            aborted: 1,
            unsettled: 0
        }
    );
    let (_, _, error) = reader.await.unwrap();
    assert_eq!(error.unwrap().kind(), FailureKind::Canceled);
    assert_eq!(s.mocks[0].aborts().decode, 1);
    let a = settled(&s).await;
    assert_eq!(a.requests, 1);
    // About 1 s of 50 ms tokens were delivered and charged.
    assert_eq!(
        a.spent,
        Money::from_picos(12 * 10 + a.usage.completion() * 100)
    );
    assert!(a.usage.completion() >= 19, "{:?}", a.usage);
}

#[tokio::test(start_paused = true)]
async fn the_request_timeout_bounds_the_whole_request() {
    let mut settings = settings();
    settings.request_timeout = Some(Duration::from_millis(550));
    let s = setup_with(2, settings, Tenant::new("team-a"), None);
    // Tokens every 100 ms: five arrive, then the deadline ends the stream.
    s.mocks[0].push(Script::repeat(100, Duration::from_millis(100)));
    let guard = s.gateway.request_cancel();
    let cancel = guard.handle().clone();
    let mut long = request("t1");
    long.max_tokens = Some(900);
    let mut stream = s.gateway.generate(&s.tenant, long, cancel).await.unwrap();
    let (text, _, error) = collect(&mut stream).await;
    assert_eq!(text, "tok ".repeat(5));
    let error = error.unwrap();
    assert_eq!(
        (error.kind(), error.phase()),
        (FailureKind::TotalTimeout, FailurePhase::AfterFirstToken)
    );
    assert_eq!(settled(&s).await.usage.completion(), 5);

    // Before the first token it is 504 and not retried on the other backend.
    s.mocks[0].push(Script::repeat(3, Duration::ZERO).prefill(Duration::from_secs(5)));
    let guard = s.gateway.request_cancel();
    let cancel = guard.handle().clone();
    let err = s
        .gateway
        .generate(&s.tenant, request("t2"), cancel)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::UpstreamTimeout);
    assert_eq!(s.mocks[1].starts(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_engine_without_counts_still_yields_usage() {
    let s = setup(1);
    s.mocks[0].push(Script {
        usage: false,
        ..Script::default()
    });
    let guard = s.gateway.request_cancel();
    let cancel = guard.handle().clone();
    let mut stream = s
        .gateway
        .generate(&s.tenant, request("u1"), cancel)
        .await
        .unwrap();
    let mut usage = None;
    let mut names = Vec::new();
    while let Some(Ok(event)) = stream.next().await {
        if let TokenEvent::Usage(u) = &event {
            usage = Some(*u);
        }
        names.push(event.name());
    }
    assert_eq!(
        names,
        ["Started", "Delta", "Delta", "Delta", "Usage", "Finished"]
    );
    // The mock reports the prompt in Started; the completion is what was sent.
    assert_eq!(usage, Some(Usage::new(12, 3)));
    assert_eq!(settled(&s).await.spent, Money::from_picos(420));
}

#[tokio::test(start_paused = true)]
async fn a_failing_backend_is_cut_off_then_probed_back() {
    let s = setup(2);
    s.mocks[0].set_default(Script::reject(FailureKind::Connect));
    for i in 0..8 {
        let guard = s.gateway.request_cancel();
        let cancel = guard.handle().clone();
        let mut stream = s
            .gateway
            .generate(&s.tenant, request(&format!("c{i}")), cancel)
            .await
            .unwrap();
        assert_eq!(stream.backend(), "mock-1");
        collect(&mut stream).await;
    }
    // Five consecutive connect failures open mock-0's breaker; then it is skipped.
    assert_eq!((s.mocks[0].starts(), s.mocks[1].starts()), (5, 8));
    let m = s.gateway.render_metrics();
    assert!(
        m.contains(r#"gateway_circuit_state{backend="mock-0"} 2"#),
        "{m}"
    );
    assert!(
        s.gateway.readiness().is_ok(),
        "mock-1 still serves the model"
    );

    // After 10 s it lets one probe through; two good probes close it.
    tokio::time::advance(Duration::from_secs(10)).await;
    s.mocks[0].set_default(Script::default());
    for i in 0..2 {
        let guard = s.gateway.request_cancel();
        let cancel = guard.handle().clone();
        let mut stream = s
            .gateway
            .generate(&s.tenant, request(&format!("p{i}")), cancel)
            .await
            .unwrap();
        assert_eq!(
            stream.backend(),
            "mock-0",
            "probe {i}: {:?}",
            s.gateway.backends()[0].breaker_state()
        );
        collect(&mut stream).await;
        // Let the request leave mock-0 so the next one sees equal load.
        settled(&s).await;
    }
    let m = s.gateway.render_metrics();
    assert!(
        m.contains(r#"gateway_circuit_state{backend="mock-0"} 0"#),
        "{m}"
    );
}

#[tokio::test(start_paused = true)]
async fn overload_answers_halve_a_backends_concurrency() {
    let s = setup_with(2, settings(), Tenant::new("team-a"), Some(8));
    s.mocks[0].push(Script::reject(FailureKind::Overloaded));
    s.mocks[0].push(Script::reject(FailureKind::Overloaded));
    for i in 0..2 {
        let guard = s.gateway.request_cancel();
        let cancel = guard.handle().clone();
        let mut stream = s
            .gateway
            .generate(&s.tenant, request(&format!("o{i}")), cancel)
            .await
            .unwrap();
        collect(&mut stream).await;
    }
    let m = s.gateway.render_metrics();
    assert!(
        m.contains(r#"gateway_backend_limit{backend="mock-0"} 2"#),
        "{m}"
    );
    assert!(
        m.contains(r#"gateway_backend_limit{backend="mock-1"} 8"#),
        "{m}"
    );
    assert_eq!(s.gateway.backends()[0].pressure().limit, Some(2));
}

/// One gateway whose model reserves 100 prompt tokens per image and takes
/// no audio, for `tenant`.
fn media_setup(tenant: Tenant) -> (Gateway, Arc<Tenant>, MockHandle) {
    let (mock, handle) = MockBackend::new("mock-0", MODEL);
    let gateway = Gateway::builder(settings())
        .tenant(tenant, key_hash("sk-t"))
        .model(ModelSpec {
            name: MODEL.into(),
            pricing: pricing(),
            context_window: 1000,
            default_max_tokens: 16,
            media: MediaCosts {
                image: Some(100),
                ..MediaCosts::default()
            },
            counter: Arc::new(ByteBound::default()),
        })
        .backend(Arc::new(mock), MODEL, MODEL, None)
        .build()
        .unwrap();
    let tenant = gateway.authenticate(Some("sk-t")).unwrap();
    (gateway, tenant, handle)
}

/// A chat request: "look" (4 bytes) and `images` images, or one audio clip.
fn media_request(id: &str, images: usize, audio: bool) -> ClientRequest {
    let part = |kind: MediaKind, json: &str| {
        ContentPart::Media(MediaPart {
            kind,
            json: json.into(),
        })
    };
    let mut parts = vec![ContentPart::Text("look".into())];
    parts.extend((0..images).map(|_| {
        part(
            MediaKind::Image,
            r#"{"type":"image_url","image_url":{"url":"data:,"}}"#,
        )
    }));
    if audio {
        parts.push(part(
            MediaKind::Audio,
            r#"{"type":"input_audio","input_audio":{"data":"","format":"wav"}}"#,
        ));
    }
    let message = ChatMessage {
        parts,
        ..ChatMessage::user("look")
    };
    let mut r = ClientRequest::new(id, MODEL, Prompt::Chat(vec![message]));
    r.max_tokens = Some(2);
    r
}

#[tokio::test(start_paused = true)]
async fn media_parts_are_reserved_at_their_cost_and_charged_at_the_engines_count() {
    // ByteBound counts the text 2 + 4 + 32 = 38 tokens; two images add 200.
    // The reservation: 238 prompt tokens at 10 and 2 completion tokens at
    // 100 = 2,580 picodollars. A budget of 2,579 cannot hold it.
    let tenant = |budget: u64| Tenant {
        budget: Some(Money::from_picos(budget)),
        ..Tenant::new("team-a")
    };
    let (gateway, t, _mock) = media_setup(tenant(2_579));
    let guard = gateway.request_cancel();
    let cancel = guard.handle().clone();
    let err = gateway
        .generate(&t, media_request("m1", 2, false), cancel)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::BudgetExceeded);

    // With room for it, the engine's own count is charged: it said 150
    // prompt tokens (two images of 56 tokens and the text).
    let (gateway, t, mock) = media_setup(tenant(2_580));
    mock.push(Script::tokens(&["a", "b"], Duration::ZERO).with_prompt_tokens(150));
    let guard = gateway.request_cancel();
    let cancel = guard.handle().clone();
    let mut stream = gateway
        .generate(&t, media_request("m2", 2, false), cancel)
        .await
        .unwrap();
    let (text, _, error) = collect(&mut stream).await;
    assert_eq!((text.as_str(), error.is_none()), ("ab", true));
    let mut settled = gateway.account(&t.id).unwrap();
    for _ in 0..1000 {
        if settled.reserved == Money::ZERO && gateway.active() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        settled = gateway.account(&t.id).unwrap();
    }
    assert_eq!(settled.reserved, Money::ZERO);
    assert_eq!(settled.spent, Money::from_picos(150 * 10 + 2 * 100));
}

#[tokio::test(start_paused = true)]
async fn media_a_model_takes_none_of_is_refused_before_any_engine() {
    let (gateway, t, mock) = media_setup(Tenant::new("team-a"));
    let guard = gateway.request_cancel();
    let cancel = guard.handle().clone();
    let err = gateway
        .generate(&t, media_request("m3", 1, true), cancel)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidRequest);
    assert_eq!(
        err.message(),
        "model tiny takes no audio input (its configuration sets no audio_tokens)"
    );
    assert_eq!(mock.starts(), 0);
    assert_eq!(gateway.account(&t.id).unwrap().spent, Money::ZERO);
}

#[tokio::test(start_paused = true)]
async fn an_engine_prompt_count_above_the_estimate_is_charged_at_the_estimate() {
    // A reservation is 12 prompt tokens at 10 and 8 completion tokens at
    // 100 = 920 picodollars; the budget holds the first request's charge
    // (420) and then exactly one more reservation.
    let tenant = Tenant {
        budget: Some(Money::from_picos(420 + 920)),
        ..Tenant::new("team-a")
    };
    let s = setup_with(1, settings(), tenant, None);
    // The engine claims a prompt of 5,000 tokens (say, a pass-through field
    // it rendered into the prompt), far above the 12 reserved.
    s.mocks[0].push(Script::tokens(&["a", "b", "c"], Duration::ZERO).with_prompt_tokens(5_000));
    let guard = s.gateway.request_cancel();
    let cancel = guard.handle().clone();
    let mut stream = s
        .gateway
        .generate(&s.tenant, request("over"), cancel)
        .await
        .unwrap();
    let (text, _, error) = collect(&mut stream).await;
    assert_eq!((text.as_str(), error.is_none()), ("abc", true));
    let a = settled(&s).await;
    // Charged at the estimate: 12 x 10 + 3 x 100, never the 5,000 tokens
    // (which would have been 50,300, far past the budget).
    assert_eq!(a.spent, Money::from_picos(420));
    assert_eq!((a.requests, a.usage), (1, Usage::new(12, 3)));
    assert_eq!(a.reserved, Money::ZERO);
    let metrics = s.gateway.render_metrics();
    for line in [
        r#"gateway_estimate_drift_tokens_total{model="tiny"} 4988"#,
        r#"gateway_prompt_overrun_total{model="tiny",backend="mock-0"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from {metrics}");
    }

    // A count at or below the estimate is charged as the engine counted it
    // and is no overrun; the ledger's total is the sum of both charges (and
    // the second reservation fits only because the first charge held).
    s.mocks[0].push(Script::tokens(&["a"], Duration::ZERO).with_prompt_tokens(7));
    let guard = s.gateway.request_cancel();
    let cancel = guard.handle().clone();
    let mut stream = s
        .gateway
        .generate(&s.tenant, request("under"), cancel)
        .await
        .unwrap();
    let (_, _, error) = collect(&mut stream).await;
    assert!(error.is_none());
    let a = settled(&s).await;
    assert_eq!(a.spent, Money::from_picos(420 + 7 * 10 + 100));
    assert_eq!((a.requests, a.usage), (2, Usage::new(19, 4)));
    assert_eq!(a.reserved, Money::ZERO);
    let metrics = s.gateway.render_metrics();
    assert!(metrics.contains(r#"gateway_estimate_drift_tokens_total{model="tiny"} 4988"#));
    assert!(metrics.contains(r#"gateway_prompt_overrun_total{model="tiny",backend="mock-0"} 1"#));
}
