//! The embedding API without traps (issue 12): a host that embeds the
//! gateway in-process gets a cancel guard it cannot drop by accident.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use gateway_core::testkit::{MockBackend, MockHandle, Script};
use gateway_core::*;
use gateway_policy::*;

const MODEL: &str = "tiny";

struct Setup {
    gateway: Gateway,
    tenant: Arc<Tenant>,
    mock: MockHandle,
}

fn setup() -> Setup {
    let (mock, handle) = MockBackend::new("mock-0", MODEL);
    let gateway = Gateway::builder(Settings::default())
        .tenant(Tenant::new("team-a"), key_hash("sk-a"))
        .model(ModelSpec {
            name: MODEL.into(),
            pricing: Pricing {
                input: Money::from_picos(10),
                cached_input: Money::from_picos(1),
                output: Money::from_picos(100),
            },
            context_window: 1000,
            default_max_tokens: 16,
            media: MediaCosts::default(),
            counter: Arc::new(ByteBound::default()),
        })
        .backend(Arc::new(mock), MODEL, MODEL, None)
        .build()
        .unwrap();
    let tenant = gateway.authenticate(Some("sk-a")).unwrap();
    Setup {
        gateway,
        tenant,
        mock: handle,
    }
}

/// A 10-byte prompt: `ByteBound` counts 12 tokens.
fn request(id: &str) -> ClientRequest {
    let mut r = ClientRequest::new(id, MODEL, Prompt::Text("0123456789".into()));
    r.max_tokens = Some(8);
    r
}

/// The stream's text, its event names and its error, if any.
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

#[tokio::test(start_paused = true)]
async fn the_documented_cancel_guard_pattern_runs_the_request_to_its_end() {
    let s = setup();
    // As `Gateway::request_cancel` documents it: the guard alone, its
    // handle cloned for the request, the guard kept while the stream is read.
    let guard = s.gateway.request_cancel();
    let mut stream = s
        .gateway
        .generate(&s.tenant, request("r1"), guard.handle().clone())
        .await
        .unwrap();
    let (text, names, error) = collect(&mut stream).await;
    assert_eq!(text, "Hello, world");
    assert_eq!(
        names,
        ["Started", "Delta", "Delta", "Delta", "Usage", "Finished"]
    );
    assert!(error.is_none(), "{error:?}");
    assert_eq!(guard.handle().reason(), None);
    let handle = guard.disarm();
    assert_eq!(handle.reason(), None);
    assert_eq!(s.mock.aborts().decode, 0);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_guard_is_the_client_leaving() {
    let s = setup();
    s.mock.push(Script::repeat(100, Duration::from_millis(10)));
    let guard = s.gateway.request_cancel();
    let cancel = guard.handle().clone();
    let mut stream = s
        .gateway
        .generate(&s.tenant, request("r2"), cancel.clone())
        .await
        .unwrap();
    // Started and one Delta, then the guard goes.
    for _ in 0..2 {
        stream.next().await.unwrap().unwrap();
    }
    drop(guard);
    assert_eq!(cancel.reason(), Some(CancelReason::ClientGone));
    // The stream just ends: the client is gone, nobody reads an error.
    let (text, names, error) = collect(&mut stream).await;
    assert_eq!((text.as_str(), names.len()), ("", 0));
    assert!(error.is_none(), "{error:?}");
    assert_eq!(s.mock.aborts().decode, 1);
}

/// A config file with tenant `team-a` (key `sk-a`, a budget of 12.5 USD)
/// and models `big` (window 8192) and `small` (window 100), no
/// `default_max_tokens`.
const CONFIG: &str = r#"
[[tenants]]
id = "team-a"
api_key = "sk-a"
budget_usd = 12.5

[[models]]
name = "big"
context_window = 8192
input_usd_per_mtok = 0.0
output_usd_per_mtok = 0.0

[[models]]
name = "small"
context_window = 100
input_usd_per_mtok = 0.0
output_usd_per_mtok = 0.0

[[backends]]
name = "sim-0"
engine = "sim"
model = "big"

[[backends]]
name = "sim-1"
engine = "sim"
model = "small"
"#;

fn config() -> gateway_adapters::config::GatewayConfig {
    gateway_adapters::config::GatewayConfig::parse(CONFIG, std::path::Path::new(".")).unwrap()
}

#[test]
fn model_spec_new_has_the_config_files_defaults() {
    let config = config();
    for (name, window) in [("big", 8192), ("small", 100)] {
        let from_file = config.model(name).unwrap();
        let spec = ModelSpec::new(name, window);
        assert_eq!(
            (spec.context_window, spec.default_max_tokens),
            (
                from_file.context_window.get(),
                from_file.default_max_tokens.get()
            ),
            "{name}"
        );
        assert_eq!(spec.pricing, from_file.pricing);
        assert_eq!(spec.media, from_file.media);
    }
    assert_eq!(ModelSpec::new("big", 8192).default_max_tokens, 256);
    assert_eq!(ModelSpec::new("small", 100).default_max_tokens, 100);
    let set = ModelSpec::new("m", 4096)
        .with_pricing(Pricing::per_million(1.0, None, 2.0).unwrap())
        .with_default_max_tokens(64)
        .with_media(MediaCosts {
            image: Some(576),
            ..MediaCosts::default()
        });
    assert_eq!(
        set.pricing,
        Pricing {
            input: Money::from_picos(1_000_000),
            cached_input: Money::from_picos(1_000_000),
            output: Money::from_picos(2_000_000),
        }
    );
    assert_eq!((set.default_max_tokens, set.media.image), (64, Some(576)));
}

#[test]
fn a_plaintext_key_and_a_budget_in_usd_are_kept_as_the_config_file_keeps_them() {
    let config = config();
    let from_file = config.tenant("team-a").unwrap();
    // The key: its SHA-256, the same digest as the config file's `api_key`.
    assert_eq!(
        from_file.key,
        gateway_adapters::config::TenantKey::Sha256(key_hash("sk-a"))
    );
    let tenant = Tenant::new("team-a").with_budget_usd(12.5).unwrap();
    assert_eq!(tenant.budget, from_file.budget);
    assert_eq!(tenant.budget, Some(Money::from_picos(12_500_000_000_000)));
    assert!(Tenant::new("t").with_budget_usd(-0.01).is_err());
    assert!(Tenant::new("t").with_budget_usd(f64::NAN).is_err());

    let (mock, _handle) = MockBackend::new("mock-0", MODEL);
    let gateway = Gateway::builder(Settings::default())
        .tenant_with_api_key(tenant, "sk-a")
        .model(ModelSpec::new(MODEL, 1000))
        .backend(Arc::new(mock), MODEL, MODEL, None)
        .build()
        .unwrap();
    let authenticated = gateway.authenticate(Some("sk-a")).unwrap();
    assert_eq!(authenticated.id.as_str(), "team-a");
    assert_eq!(
        gateway.authenticate(Some("sk-b")).unwrap_err().code(),
        ErrorCode::InvalidApiKey
    );
    let account = gateway.account(&authenticated.id).unwrap();
    assert_eq!(
        (account.budget, account.spent, account.reserved),
        (
            Some(Money::from_picos(12_500_000_000_000)),
            Money::ZERO,
            Money::ZERO
        )
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_id_comes_from_the_servers_generator() {
    let s = setup();
    let a = ClientRequest::with_generated_id(MODEL, Prompt::Text("0123456789".into()));
    let b = ClientRequest::with_generated_id(MODEL, Prompt::Text("0123456789".into()));
    assert_ne!(a.id, b.id);
    for id in [&a.id, &b.id] {
        assert!(id.is_generated(), "{id}");
        assert_eq!(id.as_str().len(), 35);
    }
    assert_eq!(
        (a.model.as_str(), a.max_tokens, a.client_id.clone()),
        (MODEL, None, None)
    );
    // The engine sees that id.
    let id = a.id.clone();
    let guard = s.gateway.request_cancel();
    let mut stream = s
        .gateway
        .generate(&s.tenant, a, guard.handle().clone())
        .await
        .unwrap();
    let (text, _, _) = collect(&mut stream).await;
    assert_eq!(text, "Hello, world");
    assert_eq!(s.mock.requests()[0].request.id, id);
}

/// A builder with model `large` (and the tenant), and `backend` registered
/// for it, served as `served`.
fn build_large(backend: Arc<dyn Backend>, served: &str) -> Result<Gateway, BuildError> {
    Gateway::builder(Settings::default())
        .tenant_with_api_key(Tenant::new("team-a"), "sk-a")
        .model(ModelSpec::new("large", 4096))
        .backend(backend, "large", served, None)
        .build()
}

#[test]
fn a_backend_registered_for_a_model_it_does_not_serve_fails_at_build() {
    // A mock serving `small`, registered for `large`: every request would
    // have failed at the engine (model not found, 502).
    let (mock, _) = MockBackend::new("mock-0", "small");
    let err = build_large(Arc::new(mock), "large").unwrap_err();
    assert_eq!(
        err,
        BuildError::BackendModelMismatch {
            backend: "mock-0".into(),
            model: "large".into(),
            served_model: "large".into(),
            serves: vec!["small".into()],
        }
    );
    assert_eq!(
        err.to_string(),
        "invalid gateway: backend mock-0 is registered for model large (served as large), \
         but it serves only [small]"
    );
    // The first trap of a new user: the default sim engine serves `sim`.
    let sim = gateway_adapters::sim::SimBackend::new(gateway_adapters::sim::SimConfig::default());
    let err = build_large(Arc::new(sim), "large").unwrap_err();
    assert_eq!(
        err,
        BuildError::BackendModelMismatch {
            backend: "sim-0".into(),
            model: "large".into(),
            served_model: "large".into(),
            serves: vec!["sim".into()],
        }
    );
    // Served under its engine name, or under the public one: accepted.
    let (mock, _) = MockBackend::new("mock-0", "small");
    assert!(build_large(Arc::new(mock), "small").is_ok());
    let (mock, _) = MockBackend::new("mock-0", "large");
    assert!(build_large(Arc::new(mock), "engine-name").is_ok());
}

/// A backend whose `BackendInfo` names no model.
#[derive(Debug)]
struct Unnamed(BackendInfo);

#[async_trait::async_trait]
impl Backend for Unnamed {
    fn info(&self) -> &BackendInfo {
        &self.0
    }
    fn pressure(&self) -> Pressure {
        Pressure::default()
    }
    async fn start(
        &self,
        _request: BackendRequest,
        _cancel: CancelHandle,
    ) -> Result<TokenStream, BackendError> {
        Err(BackendError::new(FailureKind::Internal, "not used"))
    }
    async fn abort(&self, _id: &RequestId) -> Result<bool, BackendError> {
        Ok(false)
    }
    async fn health(&self) -> Health {
        Health::Healthy
    }
}

#[test]
fn a_backend_that_names_no_model_is_not_checked() {
    let unnamed = Unnamed(BackendInfo {
        name: "custom-0".into(),
        engine: EngineKind::Custom,
        models: Vec::new(),
    });
    assert!(build_large(Arc::new(unnamed), "large").is_ok());
}

#[test]
fn every_build_error_is_typed() {
    let mock =
        |name: &str, model: &str| -> Arc<dyn Backend> { Arc::new(MockBackend::new(name, model).0) };
    let base = || {
        Gateway::builder(Settings::default())
            .tenant_with_api_key(Tenant::new("team-a"), "sk-a")
            .model(ModelSpec::new("large", 4096))
    };
    let cases: Vec<(Result<Gateway, BuildError>, BuildError, &str)> = vec![
        (
            base().model(ModelSpec::new("large", 1)).build(),
            BuildError::DuplicateModel {
                model: "large".into(),
            },
            "invalid gateway: model large added twice",
        ),
        (
            base()
                .backend(mock("b-0", "large"), "large", "large", None)
                .backend(mock("b-0", "large"), "large", "large", None)
                .build(),
            BuildError::DuplicateBackend {
                backend: "b-0".into(),
            },
            "invalid gateway: backend b-0 added twice",
        ),
        (
            base()
                .tenant_with_api_key(Tenant::new("team-a"), "sk-other")
                .backend(mock("b-0", "large"), "large", "large", None)
                .build(),
            BuildError::DuplicateTenant {
                tenant: "team-a".into(),
            },
            "invalid gateway: tenant team-a added twice",
        ),
        (
            base()
                .backend(mock("b-0", "large"), "large", "large", None)
                .backend(mock("b-1", "huge"), "huge", "huge", None)
                .build(),
            BuildError::UnknownModel {
                model: "huge".into(),
                by: ModelReference::Backend("b-1".into()),
            },
            "invalid gateway: backend b-1 is registered for unknown model huge",
        ),
        (
            base()
                .model(ModelSpec::new("small", 1024))
                .backend(mock("b-0", "large"), "large", "large", None)
                .build(),
            BuildError::ModelWithoutBackend {
                model: "small".into(),
            },
            "invalid gateway: model small has no backend",
        ),
        (
            base()
                .backend(mock("b-0", "large"), "large", "large", None)
                .admission_queue("huge", 8)
                .build(),
            BuildError::UnknownModel {
                model: "huge".into(),
                by: ModelReference::AdmissionQueue,
            },
            "invalid gateway: admission queue size set for unknown model huge",
        ),
    ];
    for (result, variant, message) in cases {
        let err = result.unwrap_err();
        assert_eq!(err, variant);
        assert_eq!(err.to_string(), message);
        // A std error, as `?` into `Box<dyn Error>` needs.
        let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(err);
        assert_eq!(boxed.to_string(), message);
    }
}

/// Reads `stream` to its end; its text.
async fn read_all(stream: &mut GatewayStream) -> String {
    let (text, _, error) = collect(stream).await;
    assert!(error.is_none(), "{error:?}");
    text
}

#[tokio::test(start_paused = true)]
async fn usage_read_after_awaiting_settlement_is_exact() {
    let s = setup();
    let guard = s.gateway.request_cancel();
    let request = request("r1");
    let id = request.id.clone();
    let mut stream = s
        .gateway
        .generate(&s.tenant, request, guard.handle().clone())
        .await
        .unwrap();
    assert_eq!(stream.request_id(), &id);
    assert_eq!(read_all(&mut stream).await, "Hello, world");
    // The trap: the stream is over, but the request settles in the
    // background: right now its worst case (12 prompt tokens * 10 + 8
    // completion tokens * 100) is still held and nothing is charged.
    let stale = s.gateway.account(&s.tenant.id).unwrap();
    assert_eq!(
        (stale.requests, stale.spent, stale.reserved),
        (0, Money::ZERO, Money::from_picos(920))
    );
    s.gateway.settled(&id).await;
    let account = s.gateway.account(&s.tenant.id).unwrap();
    assert_eq!(account.requests, 1);
    assert_eq!(account.usage, Usage::new(12, 3));
    // 12 prompt tokens * 10 + 3 completion tokens * 100.
    assert_eq!(
        (account.spent, account.reserved),
        (Money::from_picos(420), Money::ZERO)
    );
    assert_eq!(s.gateway.active(), 0);
    // Settled already, or never seen: at once.
    s.gateway.settled(&id).await;
    s.gateway.settled(&RequestId::new("never-started")).await;
    guard.disarm();
}

#[tokio::test(start_paused = true)]
async fn settled_waits_for_the_request_named_and_only_for_it() {
    let s = setup();
    // `slow` streams 100 tokens 10 ms apart; `quick` the default script.
    s.mock.push(Script::repeat(100, Duration::from_millis(10)));
    let slow_guard = s.gateway.request_cancel();
    let mut slow = s
        .gateway
        .generate(&s.tenant, request("slow"), slow_guard.handle().clone())
        .await
        .unwrap();
    let quick_guard = s.gateway.request_cancel();
    let mut quick = s
        .gateway
        .generate(&s.tenant, request("quick"), quick_guard.handle().clone())
        .await
        .unwrap();
    assert_eq!(read_all(&mut quick).await, "Hello, world");
    // `slow` is still streaming (nobody reads it): `quick` settles anyway.
    s.gateway.settled(&RequestId::new("quick")).await;
    let account = s.gateway.account(&s.tenant.id).unwrap();
    assert_eq!(
        (account.requests, account.usage, account.spent),
        (1, Usage::new(12, 3), Money::from_picos(420))
    );
    // `slow` holds its worst case until it settles.
    assert_eq!(account.reserved, Money::from_picos(920));
    assert_eq!(s.gateway.active(), 1);
    // Not idle while `slow` streams: a bounded wait says so.
    let started = tokio::time::Instant::now();
    assert!(!s.gateway.wait_idle(Duration::from_millis(50)).await);
    assert_eq!(started.elapsed(), Duration::from_millis(50));
    // The client takes Started and two tokens, then leaves.
    for _ in 0..3 {
        slow.next().await.unwrap().unwrap();
    }
    drop(slow);
    drop(slow_guard);
    assert!(s.gateway.wait_idle(Duration::from_secs(5)).await);
    let account = s.gateway.account(&s.tenant.id).unwrap();
    // quick: 12 * 10 + 3 * 100; slow: 12 * 10 + 2 * 100 (what it took).
    assert_eq!(account.requests, 2);
    assert_eq!(
        (account.usage.prompt(), account.usage.completion()),
        (24, 5)
    );
    assert_eq!(
        (account.spent, account.reserved),
        (Money::from_picos(740), Money::ZERO)
    );
    assert_eq!(s.gateway.active(), 0);
    quick_guard.disarm();
}
