//! Only equivalent targets, over mock backends in paused time: a request
//! goes only to backends that serve what it asks for (capabilities, their
//! own context window), even when they are the busier ones; when no backend
//! of the model or its fallbacks can, it is a 400 before admission (nothing
//! reserved, no limit consumed, no engine reached); when capable backends
//! exist but fail, the usual unavailable errors, the others untouched; a
//! fallback whose backends can serve it takes the request; a model's
//! preferred engine kinds go first for interactive requests.
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
use gateway_core::testkit::{MockBackend, MockHandle, Script};
use gateway_core::*;
use gateway_policy::health::{BreakerConfig, HealthConfig};
use gateway_policy::route::LeastLoaded;
use gateway_policy::*;

pub mod support;

const MODEL: &str = "m";
const FALLBACK: &str = "f";

/// A mock that says it is of engine `engine` (mocks are `custom`).
#[derive(Debug)]
struct Kinded {
    info: BackendInfo,
    mock: MockBackend,
}

#[async_trait]
impl Backend for Kinded {
    fn info(&self) -> &BackendInfo {
        &self.info
    }
    fn pressure(&self) -> Pressure {
        self.mock.pressure()
    }
    async fn start(
        &self,
        req: BackendRequest,
        cancel: CancelHandle,
    ) -> Result<TokenStream, BackendError> {
        self.mock.start(req, cancel).await
    }
    async fn abort(&self, id: &RequestId) -> Result<bool, BackendError> {
        self.mock.abort(id).await
    }
    async fn health(&self) -> Health {
        self.mock.health().await
    }
}

fn kinded(name: &str, model: &str, engine: EngineKind) -> (Arc<dyn Backend>, MockHandle) {
    let (mock, handle) = MockBackend::new(name, model);
    let info = BackendInfo {
        name: name.to_owned(),
        engine,
        models: vec![model.to_owned()],
    };
    (Arc::new(Kinded { info, mock }), handle)
}

/// [`support::settings`] with the default abort wait (2 s).
fn settings() -> Settings {
    Settings {
        abort_wait: Duration::from_secs(2),
        ..support::settings()
    }
}

/// 10 / 100 picodollars per prompt / completion token; the fallback 2 / 20.
fn model(name: &str) -> ModelSpec {
    let (input, output) = if name == MODEL { (10, 100) } else { (2, 20) };
    ModelSpec::new(name, 1000)
        .with_default_max_tokens(16)
        .with_pricing(Pricing {
            input: Money::from_picos(input),
            cached_input: Money::from_picos(1),
            output: Money::from_picos(output),
        })
}

/// One backend of the test: name, model, engine, what it serves (`None`:
/// the engine's default) and its own window.
struct Spec {
    name: &'static str,
    model: &'static str,
    engine: EngineKind,
    serves: Option<Capabilities>,
    window: Option<u32>,
}

fn spec(name: &'static str, serves: Option<Capabilities>) -> Spec {
    Spec {
        name,
        model: MODEL,
        engine: EngineKind::Vllm,
        serves,
        window: None,
    }
}

struct Setup {
    gateway: Gateway,
    tenant: Arc<Tenant>,
    mocks: HashMap<&'static str, MockHandle>,
}

impl Setup {
    fn starts(&self, name: &str) -> u64 {
        self.mocks[name].starts()
    }
}

fn build(
    specs: Vec<Spec>,
    tenant: Tenant,
    configure: impl FnOnce(GatewayBuilder) -> GatewayBuilder,
) -> Setup {
    let mut builder = Gateway::builder(settings())
        .tenant(tenant, key_hash("sk-t"))
        .model(model(MODEL))
        .model(model(FALLBACK))
        .route_policy(Arc::new(LeastLoaded));
    let mut mocks = HashMap::new();
    let health = HealthConfig {
        breaker: BreakerConfig {
            failures_to_open: 1,
            ..BreakerConfig::default()
        },
        ..HealthConfig::default()
    };
    let mut has_fallback_backend = false;
    for s in specs {
        let (backend, handle) = kinded(s.name, s.model, s.engine);
        builder = builder.backend_with(backend, s.model, s.model, None, health);
        if s.serves.is_some() || s.window.is_some() {
            let caps = s.serves.unwrap_or(s.engine.default_capabilities());
            builder = builder.serves(s.name, caps, s.window.and_then(NonZeroU32::new));
        }
        has_fallback_backend |= s.model == FALLBACK;
        mocks.insert(s.name, handle);
    }
    if !has_fallback_backend {
        let (backend, handle) = kinded("f-spare", FALLBACK, EngineKind::Vllm);
        builder = builder.backend(backend, FALLBACK, FALLBACK, None);
        mocks.insert("f-spare", handle);
    }
    let gateway = configure(builder).build().unwrap();
    let tenant = gateway.authenticate(Some("sk-t")).unwrap();
    Setup {
        gateway,
        tenant,
        mocks,
    }
}

fn setup(specs: Vec<Spec>) -> Setup {
    build(specs, Tenant::new("team-a"), |b| b)
}

/// A 10-byte prompt: ByteBound counts 12 tokens; at most 8 completion tokens.
fn request(id: &str, needs: &[Capability]) -> ClientRequest {
    let mut r = ClientRequest::new(id, MODEL, Prompt::Text("0123456789".into()));
    r.max_tokens = Some(8);
    r.needs = needs.iter().copied().collect();
    r
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

/// Runs `request` to its end: the backend and model that served it.
async fn serve(s: &Setup, request: ClientRequest) -> Result<(String, String), GatewayError> {
    let guard = s.gateway.request_cancel();
    let cancel = guard.handle().clone();
    let mut stream = s.gateway.generate(&s.tenant, request, cancel).await?;
    while let Some(item) = stream.next().await {
        item.unwrap();
    }
    Ok((stream.backend().to_owned(), stream.model().to_owned()))
}

fn has(metrics: &str, line: &str) {
    assert!(metrics.contains(line), "missing {line} in\n{metrics}");
}

const TOOLS: Capabilities = Capabilities::NONE.with(Capability::Tools);

#[tokio::test(start_paused = true)]
async fn a_tools_request_goes_only_to_the_backend_with_tools_even_when_it_is_busier() {
    let s = setup(vec![
        spec("plain-0", Some(Capabilities::NONE)),
        spec("tools-0", Some(TOOLS)),
    ]);
    // Make tools-0 the busier one: a tools request that runs on there.
    s.mocks["tools-0"].push(Script::tokens(&["a"; 4], Duration::from_secs(1)));
    let guard = s.gateway.request_cancel();
    let held = s
        .gateway
        .generate(
            &s.tenant,
            request("held", &[Capability::Tools]),
            guard.handle().clone(),
        )
        .await
        .unwrap();
    assert_eq!(held.backend(), "tools-0");
    assert_eq!(s.gateway.backends()[1].inflight(), 1);
    assert_eq!(s.gateway.backends()[0].inflight(), 0);

    // Another tools request: tools-0 is the busier one, still it goes there.
    let (backend, model) = serve(&s, request("r1", &[Capability::Tools]))
        .await
        .unwrap();
    assert_eq!((backend.as_str(), model.as_str()), ("tools-0", MODEL));
    // A plain request goes to the idle plain-0 (any backend serves it).
    let (backend, _) = serve(&s, request("r2", &[])).await.unwrap();
    assert_eq!(backend, "plain-0");
    assert_eq!((s.starts("plain-0"), s.starts("tools-0")), (1, 2));
    drop(held);
    drop(guard);
    // What each backend serves, as configured.
    let serves: Vec<(String, Capabilities)> = s
        .gateway
        .backends()
        .iter()
        .map(|b| (b.name.clone(), b.capabilities()))
        .collect();
    assert_eq!(serves[0], ("plain-0".to_owned(), Capabilities::NONE));
    assert_eq!(serves[1], ("tools-0".to_owned(), TOOLS));
}

#[tokio::test(start_paused = true)]
async fn a_request_no_backend_can_serve_is_a_400_before_admission() {
    let mut tenant = Tenant::new("team-a").with_budget(Money::from_picos(1_000_000));
    // One request a minute: a refused request must not use it up.
    tenant.requests_per_minute = NonZeroU32::new(1);
    let s = build(
        vec![
            spec("plain-0", Some(Capabilities::NONE)),
            spec(
                "logprobs-0",
                Some(Capabilities::NONE.with(Capability::Logprobs)),
            ),
            spec("tools-0", Some(TOOLS)),
        ],
        tenant,
        |b| b,
    );
    let err = serve(
        &s,
        request("r1", &[Capability::Reasoning, Capability::ImageInput]),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnsupportedCapability);
    assert_eq!(err.code().status().as_u16(), 400);
    assert_eq!(err.code().error_type(), "invalid_request_error");
    assert_eq!(err.code().as_str(), "unsupported_capability");
    assert_eq!(
        err.message(),
        "model m has no backend that supports reasoning, image_input (asked for by \
         `reasoning_effort` or a thinking switch in `chat_template_kwargs`; an `image_url` content part)"
    );
    // Only what no backend has is named.
    let err = serve(
        &s,
        request("r2", &[Capability::Tools, Capability::Reasoning]),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.message(),
        "model m has no backend that supports reasoning (asked for by \
         `reasoning_effort` or a thinking switch in `chat_template_kwargs`)"
    );
    // Each capability somewhere, never together.
    let err = serve(
        &s,
        request("r3", &[Capability::Tools, Capability::Logprobs]),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnsupportedCapability);
    assert_eq!(
        err.message(),
        "no backend of model m supports tools, logprobs together"
    );
    // No engine saw them; nothing reserved or charged; no request counted.
    assert_eq!(
        (
            s.starts("plain-0"),
            s.starts("logprobs-0"),
            s.starts("tools-0")
        ),
        (0, 0, 0)
    );
    let a = s.gateway.account(&s.tenant.id).unwrap();
    assert_eq!(
        (a.spent, a.reserved, a.requests),
        (Money::ZERO, Money::ZERO, 0)
    );
    let m = s.gateway.render_metrics();
    has(
        &m,
        r#"gateway_requests_total{tenant="team-a",model="m",outcome="unsupported_capability"} 3"#,
    );
    // The minute's one request is still there: the refusals came before the
    // limiter.
    let (backend, _) = serve(&s, request("r4", &[Capability::Logprobs]))
        .await
        .unwrap();
    assert_eq!(backend, "logprobs-0");
    let a = settled(&s).await;
    // 12 * 10 + 3 * 100.
    assert_eq!((a.spent, a.requests), (Money::from_picos(420), 1));
}

#[tokio::test(start_paused = true)]
async fn capable_backends_that_fail_give_the_usual_errors_and_others_stay_untouched() {
    let s = setup(vec![
        spec("plain-0", Some(Capabilities::NONE)),
        spec("tools-0", Some(TOOLS)),
    ]);
    s.mocks["tools-0"].push(Script::reject(FailureKind::Connect));
    let err = serve(&s, request("r1", &[Capability::Tools]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::UpstreamError);
    // Its breaker is open now (one failure opens it): no healthy capable
    // backend, the usual 502, not a 400.
    let err = serve(&s, request("r2", &[Capability::Tools]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::UpstreamError);
    assert_eq!(err.message(), "no healthy backend serves this model");
    // plain-0 was never tried, and its breaker never counted anything.
    assert_eq!((s.starts("plain-0"), s.starts("tools-0")), (0, 1));
    assert_eq!(s.gateway.backends()[0].breaker_state().as_str(), "closed");
    let a = settled(&s).await;
    assert_eq!((a.spent, a.requests), (Money::ZERO, 2));
}

#[tokio::test(start_paused = true)]
async fn a_fallback_whose_backend_can_serve_takes_the_request() {
    let s = build(
        vec![
            spec("plain-0", Some(Capabilities::NONE)),
            Spec {
                model: FALLBACK,
                ..spec("f-tools-0", Some(TOOLS))
            },
            Spec {
                model: FALLBACK,
                ..spec("f-plain-0", Some(Capabilities::NONE))
            },
        ],
        Tenant::new("team-a"),
        |b| b.fallbacks(MODEL, &[FALLBACK]),
    );
    let (backend, model) = serve(&s, request("r1", &[Capability::Tools]))
        .await
        .unwrap();
    assert_eq!((backend.as_str(), model.as_str()), ("f-tools-0", FALLBACK));
    assert_eq!(
        (
            s.starts("plain-0"),
            s.starts("f-tools-0"),
            s.starts("f-plain-0")
        ),
        (0, 1, 0)
    );
    let a = settled(&s).await;
    // Charged at the fallback's prices: 12 * 2 + 3 * 20.
    assert_eq!((a.spent, a.requests), (Money::from_picos(84), 1));
    let m = s.gateway.render_metrics();
    has(&m, r#"gateway_fallbacks_total{from="m",to="f"} 1"#);

    // When the fallback's tools backend fails too, the error is the
    // fallback's (502), naming both models.
    s.mocks["f-tools-0"].push(Script::reject(FailureKind::Connect));
    let err = serve(&s, request("r2", &[Capability::Tools]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::UpstreamError);
    assert_eq!(
        err.message(),
        "model m: model m has no backend that supports tools (asked for by `tools`); \
         fallback f: every backend failed before the first token; last: the engine could not be reached"
    );
    assert_eq!(s.starts("f-plain-0"), 0);

    // Neither model can serve images: a 400 naming both.
    let err = serve(&s, request("r3", &[Capability::ImageInput]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnsupportedCapability);
    assert_eq!(
        err.message(),
        "model m: model m has no backend that supports image_input (asked for by an `image_url` content part); \
         fallback f: model f has no backend that supports image_input (asked for by an `image_url` content part)"
    );
}

#[tokio::test(start_paused = true)]
async fn a_backend_with_a_smaller_window_gets_only_what_fits() {
    let s = setup(vec![
        Spec {
            window: Some(100),
            ..spec("small-0", None)
        },
        spec("big-0", None),
    ]);
    // 12 + 8 fits both: least loaded, ties in order: small-0.
    let (backend, _) = serve(&s, request("r1", &[])).await.unwrap();
    assert_eq!(backend, "small-0");
    // 12 + 200 fits only big-0.
    let mut long = request("r2", &[]);
    long.max_tokens = Some(200);
    let (backend, _) = serve(&s, long).await.unwrap();
    assert_eq!(backend, "big-0");
    assert_eq!((s.starts("small-0"), s.starts("big-0")), (1, 1));

    // Only small windows: context_length_exceeded, before admission.
    let s = setup(vec![
        Spec {
            window: Some(100),
            ..spec("small-0", Some(TOOLS))
        },
        Spec {
            window: Some(150),
            ..spec("small-1", None)
        },
    ]);
    let mut long = request("r3", &[Capability::Tools]);
    long.max_tokens = Some(200);
    let err = serve(&s, long).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ContextLengthExceeded);
    assert_eq!(
        err.message(),
        "the prompt (12 tokens) plus max_tokens (200) needs 212 tokens; \
         the backends of model m that serve this request with tools take at most 150"
    );
    assert_eq!((s.starts("small-0"), s.starts("small-1")), (0, 0));
    let a = s.gateway.account(&s.tenant.id).unwrap();
    assert_eq!((a.reserved, a.requests), (Money::ZERO, 0));
}

#[tokio::test(start_paused = true)]
async fn engine_defaults_apply_without_a_declaration() {
    // Triton serves nothing beyond text by default; vLLM everything.
    let s = setup(vec![Spec {
        engine: EngineKind::Triton,
        ..spec("triton-0", None)
    }]);
    assert_eq!(s.gateway.backends()[0].capabilities(), Capabilities::NONE);
    let err = serve(&s, request("r1", &[Capability::Logprobs]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnsupportedCapability);
    let (backend, _) = serve(&s, request("r2", &[])).await.unwrap();
    assert_eq!(backend, "triton-0");
    let s = setup(vec![spec("vllm-0", None)]);
    assert_eq!(s.gateway.backends()[0].capabilities(), Capabilities::ALL);
    let (backend, _) = serve(
        &s,
        request("r3", &[Capability::Tools, Capability::ImageInput]),
    )
    .await
    .unwrap();
    assert_eq!(backend, "vllm-0");
}

#[tokio::test(start_paused = true)]
async fn interactive_requests_try_the_preferred_engines_first() {
    let s = build(
        vec![
            spec("vllm-0", None),
            Spec {
                engine: EngineKind::Nim,
                ..spec("nim-0", None)
            },
            Spec {
                engine: EngineKind::TrtLlm,
                ..spec("trtllm-0", None)
            },
        ],
        Tenant::new("team-a"),
        |b| b.prefer(MODEL, &[EngineKind::TrtLlm, EngineKind::Nim]),
    );
    // Hold a request on trtllm-0: it is the busiest now, still first.
    s.mocks["trtllm-0"].push(Script::tokens(&["a"; 4], Duration::from_secs(1)));
    let guard = s.gateway.request_cancel();
    let held = s
        .gateway
        .generate(&s.tenant, request("held", &[]), guard.handle().clone())
        .await
        .unwrap();
    assert_eq!(held.backend(), "trtllm-0");
    let (backend, _) = serve(&s, request("r1", &[])).await.unwrap();
    assert_eq!(backend, "trtllm-0");
    // Batch requests keep the routing order: least loaded, vllm-0 first.
    let mut batch = request("r2", &[]);
    batch.latency_class = LatencyClass::Batch;
    let (backend, _) = serve(&s, batch).await.unwrap();
    assert_eq!(backend, "vllm-0");
    // A preferred backend that cannot serve the request is skipped for the
    // next preferred kind.
    drop(held);
    drop(guard);
    let s = build(
        vec![
            spec("vllm-0", None),
            Spec {
                engine: EngineKind::Nim,
                ..spec("nim-0", None)
            },
            Spec {
                engine: EngineKind::TrtLlm,
                ..spec("trtllm-0", Some(Capabilities::NONE))
            },
        ],
        Tenant::new("team-a"),
        |b| b.prefer(MODEL, &[EngineKind::TrtLlm, EngineKind::Nim]),
    );
    let (backend, _) = serve(&s, request("r3", &[Capability::Tools]))
        .await
        .unwrap();
    assert_eq!(backend, "nim-0");
    // A failing preferred backend: the next one is tried.
    s.mocks["trtllm-0"].push(Script::reject(FailureKind::Connect));
    let (backend, _) = serve(&s, request("r4", &[])).await.unwrap();
    assert_eq!(backend, "nim-0");
    assert_eq!(
        (s.starts("trtllm-0"), s.starts("nim-0"), s.starts("vllm-0")),
        (1, 2, 0)
    );
}

#[test]
fn the_builder_checks_names() {
    let (backend, _) = kinded("b-0", MODEL, EngineKind::Vllm);
    let err = Gateway::builder(settings())
        .model(model(MODEL))
        .backend(backend, MODEL, MODEL, None)
        .serves("nope", TOOLS, None)
        .build()
        .unwrap_err();
    assert_eq!(
        err,
        BuildError::UnknownBackend {
            backend: "nope".into()
        }
    );
    assert_eq!(
        err.to_string(),
        "invalid gateway: capabilities set for unknown backend nope"
    );
    let (backend, _) = kinded("b-0", MODEL, EngineKind::Vllm);
    let err = Gateway::builder(settings())
        .model(model(MODEL))
        .backend(backend, MODEL, MODEL, None)
        .prefer("nope", &[EngineKind::TrtLlm])
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid gateway: engine preference set for unknown model nope"
    );
}
