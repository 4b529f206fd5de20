//! Model fallbacks over mock backends, in paused time: a request whose
//! model cannot start it before the first token moves to the model's
//! fallbacks in order, is charged once at the prices of the model that
//! served it, and reports that model; nothing falls back after the first
//! token or on a fault of the request.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use gateway_core::testkit::{MockBackend, MockHandle, Script, Step};
use gateway_core::*;
use gateway_policy::health::{BreakerConfig, HealthConfig};
use gateway_policy::*;
use tokio::time::Instant;

pub mod support;

/// The requested model: 10 / 100 picodollars per prompt / completion token.
const BIG: &str = "big";
/// A cheaper fallback: 5 / 50.
const MID: &str = "mid";
/// The cheapest fallback: 2 / 20.
const SMALL: &str = "small";
/// A fallback dearer than the model: 20 / 200.
const PRICEY: &str = "pricey";

fn pricing(input: u64, output: u64) -> Pricing {
    Pricing {
        input: Money::from_picos(input),
        cached_input: Money::from_picos(1),
        output: Money::from_picos(output),
    }
}

/// [`support::settings`] with the default abort wait (2 s).
fn settings() -> Settings {
    Settings {
        abort_wait: Duration::from_secs(2),
        ..support::settings()
    }
}

fn model(name: &str, input: u64, output: u64) -> ModelSpec {
    ModelSpec {
        name: name.into(),
        pricing: pricing(input, output),
        context_window: 1000,
        default_max_tokens: 16,
        media: gateway_policy::MediaCosts::default(),
        counter: Arc::new(ByteBound::default()),
    }
}

struct Setup {
    gateway: Gateway,
    tenant: Arc<Tenant>,
    mocks: HashMap<&'static str, MockHandle>,
}

impl Setup {
    fn mock(&self, model: &str) -> &MockHandle {
        &self.mocks[model]
    }

    fn starts(&self) -> [u64; 4] {
        [BIG, MID, SMALL, PRICEY].map(|m| self.mocks[m].starts())
    }
}

/// One backend per model (`<model>-0`); `big` falls back to `fallbacks`.
/// The big backend's breaker opens after one failure; `big_limit` caps it.
fn setup_with(fallbacks: &[&str], tenant: Tenant, big_limit: Option<u32>) -> Setup {
    let mut builder = Gateway::builder(settings())
        .tenant(tenant, key_hash("sk-t"))
        .model(model(BIG, 10, 100))
        .model(model(MID, 5, 50))
        .model(model(SMALL, 2, 20))
        .model(model(PRICEY, 20, 200))
        .fallbacks(BIG, fallbacks);
    let mut mocks = HashMap::new();
    for name in [BIG, MID, SMALL, PRICEY] {
        let (mock, handle) = MockBackend::new(&format!("{name}-0"), name);
        let health = HealthConfig {
            breaker: BreakerConfig {
                failures_to_open: 1,
                ..BreakerConfig::default()
            },
            ..HealthConfig::default()
        };
        let limit = if name == BIG { big_limit } else { None };
        builder = builder.backend_with(
            Arc::new(mock),
            name,
            name,
            limit.and_then(NonZeroU32::new),
            health,
        );
        mocks.insert(name, handle);
    }
    let gateway = builder.build().unwrap();
    let tenant = gateway.authenticate(Some("sk-t")).unwrap();
    Setup {
        gateway,
        tenant,
        mocks,
    }
}

fn setup(fallbacks: &[&str]) -> Setup {
    setup_with(fallbacks, Tenant::new("team-a"), None)
}

/// A 10-byte prompt: ByteBound counts 12 tokens; at most 8 completion tokens.
fn request(id: &str) -> ClientRequest {
    let mut r = ClientRequest::new(id, BIG, Prompt::Text("0123456789".into()));
    r.max_tokens = Some(8);
    r
}

async fn collect(stream: &mut GatewayStream) -> (String, Option<BackendError>) {
    let (mut text, mut error) = (String::new(), None);
    while let Some(item) = stream.next().await {
        match item {
            Ok(TokenEvent::Delta(d)) => text.push_str(&d.text),
            Ok(_) => {}
            Err(e) => error = Some(e),
        }
    }
    (text, error)
}

async fn settled(s: &Setup) -> TenantAccount {
    for _ in 0..1000 {
        let a = s.gateway.account(&s.tenant.id).unwrap();
        if a.reserved == Money::ZERO && s.gateway.active() == 0 {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("never settled");
}

async fn serve(
    s: &Setup,
    id: &str,
) -> Result<(GatewayStream, String, Option<BackendError>), GatewayError> {
    let guard = s.gateway.request_cancel();
    let cancel = guard.handle().clone();
    let mut stream = s.gateway.generate(&s.tenant, request(id), cancel).await?;
    let (text, error) = collect(&mut stream).await;
    Ok((stream, text, error))
}

fn has(metrics: &str, line: &str) {
    assert!(metrics.contains(line), "missing {line} in\n{metrics}");
}

#[tokio::test(start_paused = true)]
async fn a_retryable_failure_then_an_open_breaker_send_requests_to_the_fallback() {
    let s = setup(&[SMALL]);
    s.mock(BIG).push(Script::reject(FailureKind::Connect));

    // 1: big's backend refuses (connect, retryable): small serves it.
    let (stream, text, error) = serve(&s, "r1").await.unwrap();
    assert_eq!((stream.model(), stream.backend()), (SMALL, "small-0"));
    assert_eq!(text, "Hello, world");
    assert!(error.is_none(), "{error:?}");
    assert_eq!(s.starts(), [1, 0, 1, 0]);
    let a = settled(&s).await;
    // Charged once at small's prices: 12 * 2 + 3 * 20.
    assert_eq!(a.spent, Money::from_picos(84));
    assert_eq!((a.requests, a.usage), (1, Usage::new(12, 3)));

    // 2: big's breaker is open now (one failure opens it here): big is not
    // even tried, small serves again.
    assert_eq!(s.gateway.backends()[0].breaker_state().as_str(), "open");
    let (stream, _, error) = serve(&s, "r2").await.unwrap();
    assert_eq!(stream.model(), SMALL);
    assert!(error.is_none(), "{error:?}");
    assert_eq!(s.starts(), [1, 0, 2, 0]);
    let a = settled(&s).await;
    assert_eq!(a.spent, Money::from_picos(168));
    assert_eq!((a.requests, a.usage), (2, Usage::new(24, 6)));

    let m = s.gateway.render_metrics();
    has(&m, r#"gateway_fallbacks_total{from="big",to="small"} 2"#);
    has(
        &m,
        r#"gateway_requests_total{tenant="team-a",model="small",outcome="ok"} 2"#,
    );
    has(
        &m,
        r#"gateway_tokens_total{tenant="team-a",model="small",kind="completion"} 6"#,
    );
    has(
        &m,
        r#"gateway_time_to_first_token_seconds_count{model="small",backend="small-0"} 2"#,
    );
    has(
        &m,
        r#"gateway_backend_failures_total{backend="big-0",kind="connect"} 1"#,
    );
    assert!(!m.contains(r#"model="big",outcome="ok""#), "{m}");
}

#[tokio::test(start_paused = true)]
async fn a_failure_before_the_first_token_with_a_retryable_kind_falls_back() {
    for kind in [
        FailureKind::Overloaded,
        FailureKind::OutOfMemory,
        FailureKind::Internal,
        FailureKind::UpstreamStatus,
    ] {
        let s = setup(&[SMALL]);
        // Accepted, then the stream fails before any token.
        s.mock(BIG)
            .push(Script::tokens(&[], Duration::ZERO).then(Step::Fail(kind)));
        let (stream, text, error) = serve(&s, "r").await.unwrap();
        assert_eq!(
            (stream.model(), text.as_str()),
            (SMALL, "Hello, world"),
            "{kind:?}"
        );
        assert!(error.is_none(), "{kind:?}: {error:?}");
        assert_eq!(s.starts(), [1, 0, 1, 0], "{kind:?}");
        assert_eq!(settled(&s).await.spent, Money::from_picos(84), "{kind:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_first_token_timeout_falls_back_after_the_timeout() {
    let s = setup(&[SMALL]);
    s.mock(BIG)
        .push(Script::tokens(&[], Duration::ZERO).then(Step::Stall));
    let t0 = Instant::now();
    let (stream, _, error) = serve(&s, "r").await.unwrap();
    assert_eq!(stream.model(), SMALL);
    assert!(error.is_none(), "{error:?}");
    // The 2 s first-token timeout passed on big, then small answered at once.
    assert_eq!(t0.elapsed(), Duration::from_secs(2));
    assert_eq!(s.mock(BIG).aborts().prefill, 1);
    assert_eq!(settled(&s).await.spent, Money::from_picos(84));
}

#[tokio::test(start_paused = true)]
async fn a_failure_after_the_first_token_never_falls_back() {
    let s = setup(&[SMALL]);
    s.mock(BIG)
        .push(Script::tokens(&["Hi"], Duration::ZERO).then(Step::Fail(FailureKind::Internal)));
    let (stream, text, error) = serve(&s, "r").await.unwrap();
    assert_eq!(stream.model(), BIG);
    assert_eq!(text, "Hi");
    let error = error.unwrap();
    assert_eq!(error.kind(), FailureKind::Internal);
    assert_eq!(error.phase(), FailurePhase::AfterFirstToken);
    assert_eq!(s.starts(), [1, 0, 0, 0]);
    let a = settled(&s).await;
    // At big's prices: 12 * 10 + 1 * 100.
    assert_eq!(a.spent, Money::from_picos(220));
    assert_eq!((a.requests, a.usage), (1, Usage::new(12, 1)));
    let m = s.gateway.render_metrics();
    has(&m, r#"gateway_fallbacks_total{from="big",to="small"} 0"#);
    has(
        &m,
        r#"gateway_requests_total{tenant="team-a",model="big",outcome="stream_error"} 1"#,
    );
}

#[tokio::test(start_paused = true)]
async fn faults_of_the_request_never_fall_back() {
    // The engine calls the request invalid: the fallback would too.
    let s = setup(&[SMALL]);
    s.mock(BIG)
        .push(Script::reject(FailureKind::InvalidRequest));
    let err = serve(&s, "r1").await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidRequest);
    assert_eq!(s.starts(), [1, 0, 0, 0]);
    let a = settled(&s).await;
    assert_eq!((a.spent, a.requests), (Money::ZERO, 1));

    // Refused before routing: nothing is tried anywhere.
    let mut too_long = request("r2");
    too_long.max_tokens = Some(990);
    let guard = s.gateway.request_cancel();
    let cancel = guard.handle().clone();
    let err = s
        .gateway
        .generate(&s.tenant, too_long, cancel)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::ContextLengthExceeded);

    // A budget that cannot pay for big: no cheaper fallback is tried.
    let mut poor = Tenant::new("poor");
    poor.budget = Some(Money::from_picos(900));
    let s = setup_with(&[SMALL], poor, None);
    let err = serve(&s, "r3").await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::BudgetExceeded);
    assert_eq!(s.starts(), [0, 0, 0, 0]);
    let m = s.gateway.render_metrics();
    has(&m, r#"gateway_fallbacks_total{from="big",to="small"} 0"#);
}

#[tokio::test(start_paused = true)]
async fn fallbacks_are_tried_in_order() {
    // big refuses, mid (first fallback) serves: small is never tried.
    let s = setup(&[MID, SMALL]);
    s.mock(BIG).push(Script::reject(FailureKind::Overloaded));
    let (stream, _, _) = serve(&s, "r1").await.unwrap();
    assert_eq!(stream.model(), MID);
    assert_eq!(s.starts(), [1, 1, 0, 0]);
    // 12 * 5 + 3 * 50
    assert_eq!(settled(&s).await.spent, Money::from_picos(210));

    // big and mid both refuse: small serves.
    let s = setup(&[MID, SMALL]);
    s.mock(BIG).push(Script::reject(FailureKind::Overloaded));
    s.mock(MID).push(Script::reject(FailureKind::Connect));
    let (stream, _, _) = serve(&s, "r2").await.unwrap();
    assert_eq!(stream.model(), SMALL);
    assert_eq!(s.starts(), [1, 1, 1, 0]);
    let a = settled(&s).await;
    assert_eq!(a.spent, Money::from_picos(84));
    assert_eq!((a.requests, a.usage), (1, Usage::new(12, 3)));
    let m = s.gateway.render_metrics();
    has(&m, r#"gateway_fallbacks_total{from="big",to="mid"} 1"#);
    has(&m, r#"gateway_fallbacks_total{from="big",to="small"} 1"#);

    // Every model refuses: the requested model's error, every reason in it.
    let s = setup(&[MID, SMALL]);
    s.mock(BIG).push(Script::reject(FailureKind::Overloaded));
    s.mock(MID).push(Script::reject(FailureKind::Connect));
    s.mock(SMALL).push(Script::reject(FailureKind::Connect));
    let err = serve(&s, "r3").await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Overloaded);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
    assert_eq!(
        err.message(),
        "model big: every backend is overloaded; \
         fallback mid: every backend failed before the first token; last: the engine could not be reached; \
         fallback small: every backend failed before the first token; last: the engine could not be reached"
    );
    assert_eq!(s.starts(), [1, 1, 1, 0]);
    let a = settled(&s).await;
    assert_eq!((a.spent, a.requests), (Money::ZERO, 1));
}

#[tokio::test(start_paused = true)]
async fn the_admission_wait_running_out_falls_back() {
    let s = setup_with(&[SMALL], Tenant::new("team-a"), Some(1));
    // The one slot of big is taken by a long request.
    s.mock(BIG)
        .push(Script::repeat(1000, Duration::from_millis(10)));
    let holder_guard = s.gateway.request_cancel();
    let cancel = holder_guard.handle().clone();
    let holder = s
        .gateway
        .generate(&s.tenant, request("holder"), cancel)
        .await
        .unwrap();
    assert_eq!(holder.model(), BIG);

    let t0 = Instant::now();
    let (stream, _, error) = serve(&s, "waiter").await.unwrap();
    assert_eq!(stream.model(), SMALL);
    assert!(error.is_none(), "{error:?}");
    // It waited big's whole admission wait (1 s), then small took it.
    assert_eq!(t0.elapsed(), Duration::from_secs(1));
    assert_eq!(s.starts(), [1, 0, 1, 0]);
    drop(holder);
    drop(holder_guard);
    let a = settled(&s).await;
    // The waiter at small's prices; the holder took nothing, so it pays nothing.
    assert_eq!(a.spent, Money::from_picos(84));
    assert_eq!(a.requests, 2);
}

#[tokio::test(start_paused = true)]
async fn the_reservation_covers_a_dearer_fallback_or_drops_it() {
    // In flight on big, the reservation is pricey's worst case:
    // 12 * 20 + 8 * 200 = 1840 (big's own: 12 * 10 + 8 * 100 = 920).
    let s = setup(&[PRICEY]);
    s.mock(BIG)
        .push(Script::repeat(3, Duration::from_millis(10)));
    let guard = s.gateway.request_cancel();
    let cancel = guard.handle().clone();
    let mut stream = s
        .gateway
        .generate(&s.tenant, request("r1"), cancel)
        .await
        .unwrap();
    let a = s.gateway.account(&s.tenant.id).unwrap();
    assert_eq!(a.reserved, Money::from_picos(1840));
    collect(&mut stream).await;
    let a = settled(&s).await;
    // Served by big, charged at big's prices: 12 * 10 + 3 * 100.
    assert_eq!((a.spent, a.requests), (Money::from_picos(420), 1));

    // Falling back to pricey: charged at pricey's prices: 12 * 20 + 3 * 200.
    s.mock(BIG).push(Script::reject(FailureKind::Connect));
    let (stream, _, _) = serve(&s, "r2").await.unwrap();
    assert_eq!(stream.model(), PRICEY);
    let a = settled(&s).await;
    assert_eq!((a.spent, a.requests), (Money::from_picos(420 + 840), 2));

    // A budget that fits big's worst case (920) but not pricey's (1840):
    // big alone is reserved, pricey is not a fallback for this request.
    let mut tight = Tenant::new("tight");
    tight.budget = Some(Money::from_picos(1000));
    let s = setup_with(&[PRICEY], tight, None);
    s.mock(BIG).push(Script::reject(FailureKind::Connect));
    let err = serve(&s, "r3").await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::UpstreamError);
    assert_eq!(s.starts(), [1, 0, 0, 0]);
    let a = settled(&s).await;
    assert_eq!((a.spent, a.reserved), (Money::ZERO, Money::ZERO));
}

#[tokio::test(start_paused = true)]
async fn fallbacks_the_tenant_may_not_use_or_that_do_not_fit_are_skipped() {
    let mut limited = Tenant::new("limited");
    limited.models = Some([BIG.to_owned(), SMALL.to_owned()].into_iter().collect());
    let s = setup_with(&[MID, SMALL], limited, None);
    s.mock(BIG).push(Script::reject(FailureKind::Connect));
    let (stream, _, _) = serve(&s, "r1").await.unwrap();
    assert_eq!(stream.model(), SMALL);
    assert_eq!(s.starts(), [1, 0, 1, 0]);
    let m = s.gateway.render_metrics();
    has(&m, r#"gateway_fallbacks_total{from="big",to="mid"} 0"#);
    has(&m, r#"gateway_fallbacks_total{from="big",to="small"} 1"#);
}

#[test]
fn fallback_lists_are_checked_at_build() {
    let build = |model: &str, list: &[&str]| {
        let (mock, _) = MockBackend::new("b-0", BIG);
        let (mock2, _) = MockBackend::new("s-0", SMALL);
        Gateway::builder(settings())
            .model(self::model(BIG, 1, 1))
            .model(self::model(SMALL, 1, 1))
            .backend(Arc::new(mock), BIG, BIG, None)
            .backend(Arc::new(mock2), SMALL, SMALL, None)
            .fallbacks(model, list)
            .build()
            .map(|_| ())
    };
    let message = |e: BuildError| e.to_string();
    assert_eq!(build(BIG, &[SMALL]), Ok(()));
    let unknown = build("nope", &[SMALL]).unwrap_err();
    assert_eq!(
        unknown,
        BuildError::UnknownModel {
            model: "nope".into(),
            by: ModelReference::FallbacksOf
        }
    );
    assert_eq!(
        message(unknown),
        "invalid gateway: fallbacks set for unknown model nope"
    );
    let unknown = build(BIG, &["nope"]).unwrap_err();
    assert_eq!(
        unknown,
        BuildError::UnknownModel {
            model: "nope".into(),
            by: ModelReference::FallbackOf(BIG.into())
        }
    );
    assert_eq!(
        message(unknown),
        "invalid gateway: model big falls back to unknown model nope"
    );
    let itself = build(BIG, &[BIG]).unwrap_err();
    assert_eq!(itself, BuildError::FallbackToItself { model: BIG.into() });
    assert_eq!(
        message(itself),
        "invalid gateway: model big lists itself as a fallback"
    );
    let twice = build(BIG, &[SMALL, SMALL]).unwrap_err();
    assert_eq!(
        twice,
        BuildError::RepeatedFallback {
            model: BIG.into(),
            fallback: SMALL.into()
        }
    );
    assert_eq!(
        message(twice),
        "invalid gateway: model big lists fallback small twice"
    );
}

#[tokio::test(start_paused = true)]
async fn an_unhealthy_model_goes_straight_to_its_fallback() {
    let s = setup(&[SMALL]);
    s.mock(BIG).set_healthy(false);
    s.gateway.check_health().await;
    assert_eq!(s.gateway.readiness(), Err(vec![BIG.to_owned()]));
    let (stream, _, error) = serve(&s, "r").await.unwrap();
    assert_eq!(stream.model(), SMALL);
    assert!(error.is_none(), "{error:?}");
    assert_eq!(s.starts(), [0, 0, 1, 0]);
    assert_eq!(settled(&s).await.spent, Money::from_picos(84));
}

#[tokio::test(start_paused = true)]
async fn a_full_admission_queue_falls_back_at_once() {
    // big: one slot, and no room to wait (its own queue size, 0).
    let mut builder = Gateway::builder(settings())
        .tenant(Tenant::new("team-a"), key_hash("sk-t"))
        .model(model(BIG, 10, 100))
        .model(model(SMALL, 2, 20))
        .fallbacks(BIG, &[SMALL])
        .admission_queue(BIG, 0);
    let (big, big_handle) = MockBackend::new("big-0", BIG);
    let (small, small_handle) = MockBackend::new("small-0", SMALL);
    builder = builder
        .backend(Arc::new(big), BIG, BIG, NonZeroU32::new(1))
        .backend(Arc::new(small), SMALL, SMALL, None);
    let gateway = builder.build().unwrap();
    let tenant = gateway.authenticate(Some("sk-t")).unwrap();
    big_handle.push(Script::repeat(1000, Duration::from_millis(10)));
    let holder_guard = gateway.request_cancel();
    let cancel = holder_guard.handle().clone();
    let holder = gateway
        .generate(&tenant, request("holder"), cancel)
        .await
        .unwrap();

    let t0 = Instant::now();
    let guard = gateway.request_cancel();
    let cancel = guard.handle().clone();
    let mut stream = gateway
        .generate(&tenant, request("next"), cancel)
        .await
        .unwrap();
    assert_eq!(t0.elapsed(), Duration::ZERO, "no admission wait");
    assert_eq!(stream.model(), SMALL);
    let (text, error) = collect(&mut stream).await;
    assert_eq!(text, "Hello, world");
    assert!(error.is_none(), "{error:?}");
    assert_eq!((big_handle.starts(), small_handle.starts()), (1, 1));
    drop((holder, holder_guard));
}
