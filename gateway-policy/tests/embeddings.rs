//! `Gateway::embed` end to end over scripted backends, in paused time:
//! exact ledger totals (charged once, at the engine's prompt tokens; a
//! failure charges nothing), retries on the model's other backends,
//! backends without embeddings, timeouts, cancellation, every refusal
//! with its code, and the metrics.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::collections::VecDeque;
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gateway_core::testkit::MockBackend;
use gateway_core::*;
use gateway_policy::*;

const MODEL: &str = "embed";
/// Input price: 10 picodollars per token.
const INPUT_PICOS: u64 = 10;

fn pricing() -> Pricing {
    Pricing {
        input: Money::from_picos(INPUT_PICOS),
        cached_input: Money::from_picos(1),
        output: Money::from_picos(100),
    }
}

fn settings() -> Settings {
    Settings {
        first_token_timeout: Duration::from_secs(2),
        admission_wait: Duration::from_secs(1),
        stream_buffer_events: NonZeroUsize::new(4).unwrap(),
        ..Settings::default()
    }
}

/// What a scripted backend does with one call.
#[derive(Debug, Clone)]
enum Answer {
    /// Answers after `delay` with `prompt_tokens` (the vectors in reverse
    /// index order, as base64 when `base64`).
    Ok {
        delay: Duration,
        prompt_tokens: Option<u64>,
        base64: bool,
    },
    /// Fails with `kind` at once.
    Fail(FailureKind),
    /// Answers one vector too few.
    Short,
    /// Never answers; counts the cancel when it comes.
    Hang,
}

impl Answer {
    fn ok(prompt_tokens: u64) -> Answer {
        Answer::Ok {
            delay: Duration::from_millis(10),
            prompt_tokens: Some(prompt_tokens),
            base64: false,
        }
    }
}

#[derive(Debug)]
struct Embedder {
    info: BackendInfo,
    /// What the next calls do (may be shared by several backends).
    script: Arc<Mutex<VecDeque<Answer>>>,
    calls: AtomicU64,
    canceled: AtomicU64,
    seen: Mutex<Vec<EmbedAttempt>>,
}

#[derive(Debug, Clone)]
struct Handle(Arc<Embedder>);

impl Handle {
    fn push(&self, answer: Answer) {
        self.0.script.lock().unwrap().push_back(answer);
    }
    fn calls(&self) -> u64 {
        self.0.calls.load(Ordering::SeqCst)
    }
    fn canceled(&self) -> u64 {
        self.0.canceled.load(Ordering::SeqCst)
    }
    fn seen(&self) -> Vec<EmbedAttempt> {
        self.0.seen.lock().unwrap().clone()
    }
}

/// The vector of input `i`: `[i, 0.5, -0.25]`.
fn vector(i: usize) -> Vec<f64> {
    vec![i as f64, 0.5, -0.25]
}

#[async_trait]
impl Backend for Handle {
    fn info(&self) -> &BackendInfo {
        &self.0.info
    }
    fn pressure(&self) -> Pressure {
        Pressure::default()
    }
    async fn start(
        &self,
        _request: BackendRequest,
        _cancel: CancelHandle,
    ) -> Result<TokenStream, BackendError> {
        Err(BackendError::new(FailureKind::Internal, "embeddings only"))
    }
    async fn abort(&self, _id: &RequestId) -> Result<bool, BackendError> {
        Ok(false)
    }
    async fn health(&self) -> Health {
        Health::Healthy
    }
    async fn embed(
        &self,
        request: EmbedAttempt,
        cancel: CancelHandle,
    ) -> Result<Embeddings, BackendError> {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        self.0.seen.lock().unwrap().push(request.clone());
        let answer = self.0.script.lock().unwrap().pop_front();
        let answer = answer.unwrap_or(Answer::Ok {
            delay: Duration::from_millis(10),
            prompt_tokens: None,
            base64: false,
        });
        let n = request.request.inputs.len();
        let (delay, prompt_tokens, base64, n) = match answer {
            Answer::Ok {
                delay,
                prompt_tokens,
                base64,
            } => (delay, prompt_tokens, base64, n),
            Answer::Short => (Duration::ZERO, Some(1), false, n - 1),
            Answer::Fail(kind) => return Err(BackendError::new(kind, "scripted")),
            Answer::Hang => (Duration::MAX, None, false, n),
        };
        // Dropped before the end (as the gateway drops an attempt it gives
        // up on, which closes an HTTP engine's connection): a cancel.
        let watch = CancelWatch(&self.0.canceled, true);
        tokio::select! {
            reason = cancel.canceled() => {
                return Err(BackendError::canceled(reason));
            }
            () = tokio::time::sleep(delay.min(Duration::from_secs(3600))) => {}
        }
        watch.done();
        let data = (0..n)
            .rev()
            .map(|i| {
                let floats = EmbeddingVector::Float(vector(i));
                let format = if base64 {
                    EncodingFormat::Base64
                } else {
                    EncodingFormat::Float
                };
                Embedding {
                    index: u32::try_from(i).unwrap(),
                    vector: floats.into_format(format).unwrap(),
                }
            })
            .collect();
        Ok(Embeddings {
            data,
            prompt_tokens,
        })
    }
}

/// Counts a cancel unless `done`.
struct CancelWatch<'a>(&'a AtomicU64, bool);

impl CancelWatch<'_> {
    fn done(mut self) {
        self.1 = false;
    }
}

impl Drop for CancelWatch<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn embedder(name: &str) -> Handle {
    embedder_with(name, Arc::default())
}

fn embedder_with(name: &str, script: Arc<Mutex<VecDeque<Answer>>>) -> Handle {
    Handle(Arc::new(Embedder {
        info: BackendInfo {
            name: name.into(),
            engine: EngineKind::Custom,
            models: vec![MODEL.into()],
        },
        script,
        calls: AtomicU64::new(0),
        canceled: AtomicU64::new(0),
        seen: Mutex::new(Vec::new()),
    }))
}

struct Setup {
    gateway: Gateway,
    tenant: Arc<Tenant>,
    backends: Vec<Handle>,
}

fn spec() -> ModelSpec {
    ModelSpec {
        name: MODEL.into(),
        pricing: pricing(),
        context_window: 100,
        default_max_tokens: 16,
        counter: Arc::new(ByteBound::default()),
        media: MediaCosts::default(),
    }
}

fn setup_with(n: usize, settings: Settings, tenant: Tenant, max_concurrency: Option<u32>) -> Setup {
    setup_sharing(n, settings, tenant, max_concurrency, false)
}

/// `n` backends; with `shared`, one script for all of them (the next call
/// does the next thing, whichever backend gets it).
fn setup_sharing(
    n: usize,
    settings: Settings,
    tenant: Tenant,
    max_concurrency: Option<u32>,
    shared: bool,
) -> Setup {
    let mut builder = Gateway::builder(settings)
        .tenant(tenant, key_hash("sk-t"))
        .model(spec());
    let mut backends: Vec<Handle> = Vec::new();
    for i in 0..n {
        let script = match backends.first() {
            Some(first) if shared => first.0.script.clone(),
            _ => Arc::default(),
        };
        let b = embedder_with(&format!("emb-{i}"), script);
        builder = builder.backend(
            Arc::new(b.clone()),
            MODEL,
            &format!("served-{MODEL}"),
            max_concurrency.and_then(NonZeroU32::new),
        );
        backends.push(b);
    }
    let gateway = builder.build().unwrap();
    let tenant = gateway.authenticate(Some("sk-t")).unwrap();
    Setup {
        gateway,
        tenant,
        backends,
    }
}

fn setup(n: usize) -> Setup {
    setup_with(n, settings(), Tenant::new("team-a"), None)
}

/// Two token inputs (3 + 2 tokens, exact) and one text of 10 bytes
/// (ByteBound: at most 12): 17 tokens estimated.
fn request(id: &str) -> EmbedRequest {
    let mut r = EmbedRequest::new(
        MODEL,
        vec![
            Prompt::Tokens(vec![1, 2, 3]),
            Prompt::Tokens(vec![4, 5]),
            Prompt::Text("0123456789".into()),
        ],
    );
    r.id = RequestId::new(id);
    r
}

fn account(s: &Setup) -> TenantAccount {
    s.gateway.account(&s.tenant.id).unwrap()
}

async fn embed(s: &Setup, r: EmbedRequest) -> Result<EmbedResponse, GatewayError> {
    let guard = s.gateway.request_cancel();
    let cancel = guard.handle().clone();
    s.gateway.embed(&s.tenant, r, cancel).await
}

#[tokio::test(start_paused = true)]
async fn charged_once_at_the_engines_prompt_tokens() {
    let s = setup(1);
    s.backends[0].push(Answer::ok(9));
    let answer = embed(&s, request("e1")).await.unwrap();
    assert_eq!(
        (answer.model.as_str(), answer.backend.as_str()),
        (MODEL, "emb-0")
    );
    // In input order, as floats, whatever order the engine used.
    let vectors: Vec<EmbeddingVector> = answer.data.iter().map(|e| e.vector.clone()).collect();
    assert_eq!(
        vectors,
        (0..3)
            .map(|i| EmbeddingVector::Float(vector(i)))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        answer.data.iter().map(|e| e.index).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert_eq!(answer.usage, Usage::new(9, 0));
    assert_eq!(answer.charged, Money::from_picos(9 * INPUT_PICOS));
    let a = account(&s);
    assert_eq!(a.spent, Money::from_picos(9 * INPUT_PICOS));
    assert_eq!(a.reserved, Money::ZERO);
    assert_eq!(a.requests, 1);
    assert_eq!((a.usage.prompt(), a.usage.completion()), (9, 0));
    assert_eq!(s.gateway.active(), 0);
    // The backend got the served name, the tenant and the inputs as sent.
    let seen = s.backends[0].seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].served_model, "served-embed");
    assert_eq!(seen[0].request.tenant.as_str(), "team-a");
    assert_eq!(seen[0].request.inputs, request("e1").inputs);
    let m = s.gateway.render_metrics();
    for line in [
        r#"gateway_requests_total{tenant="team-a",model="embed",outcome="ok"} 1"#,
        r#"gateway_tokens_total{tenant="team-a",model="embed",kind="prompt"} 9"#,
        r#"gateway_tokens_total{tenant="team-a",model="embed",kind="completion"} 0"#,
        r#"gateway_embedding_inputs_total{model="embed"} 3"#,
        r#"gateway_request_duration_seconds_count{model="embed"} 1"#,
        r#"gateway_spend_usd_total{tenant="team-a"} 9e-11"#,
        // (17 - 9) / 9, in the 1.0 bucket.
        r#"gateway_estimate_error_ratio_bucket{le="1.0",model="embed"} 1"#,
    ] {
        assert!(m.contains(line), "{line} missing in\n{m}");
    }
}

#[tokio::test(start_paused = true)]
async fn without_an_engine_count_the_estimate_is_charged_and_base64_is_converted() {
    let s = setup(1);
    s.backends[0].push(Answer::Ok {
        delay: Duration::ZERO,
        prompt_tokens: None,
        base64: true,
    });
    s.backends[0].push(Answer::Ok {
        delay: Duration::ZERO,
        prompt_tokens: Some(5),
        base64: false,
    });
    // The engine answered base64 to a float request: converted.
    let answer = embed(&s, request("e1")).await.unwrap();
    assert_eq!(answer.data[2].vector, EmbeddingVector::Float(vector(2)));
    assert_eq!(answer.usage.prompt(), 17);
    // And floats to a base64 request.
    let mut r = request("e2");
    r.encoding_format = EncodingFormat::Base64;
    let answer = embed(&s, r).await.unwrap();
    assert_eq!(
        answer.data[1].vector,
        EmbeddingVector::Float(vector(1))
            .into_format(EncodingFormat::Base64)
            .unwrap()
    );
    let a = account(&s);
    assert_eq!(a.spent, Money::from_picos((17 + 5) * INPUT_PICOS));
    assert_eq!((a.reserved, a.requests), (Money::ZERO, 2));
}

#[tokio::test(start_paused = true)]
async fn a_failure_moves_to_another_backend_and_is_charged_once() {
    let s = setup_sharing(2, settings(), Tenant::new("team-a"), None, true);
    s.backends[0].push(Answer::Fail(FailureKind::Overloaded));
    s.backends[0].push(Answer::ok(7));
    let answer = embed(&s, request("e1")).await.unwrap();
    assert_eq!(answer.usage.prompt(), 7);
    assert_eq!(s.backends[0].calls() + s.backends[1].calls(), 2);
    let a = account(&s);
    assert_eq!(a.spent, Money::from_picos(7 * INPUT_PICOS));
    assert_eq!((a.reserved, a.requests), (Money::ZERO, 1));
    let m = s.gateway.render_metrics();
    assert!(m.contains(r#"kind="overloaded"} 1"#), "{m}");
    assert!(m.contains(r#"gateway_retries_total{backend="emb-"#), "{m}");
}

#[tokio::test(start_paused = true)]
async fn every_backend_failing_charges_nothing() {
    let s = setup(2);
    for b in &s.backends {
        b.push(Answer::Fail(FailureKind::Connect));
    }
    let err = embed(&s, request("e1")).await.unwrap_err();
    assert_eq!(
        (err.code(), err.code().status().as_u16()),
        (ErrorCode::UpstreamError, 502)
    );
    for b in &s.backends {
        b.push(Answer::Fail(FailureKind::Overloaded));
    }
    let err = embed(&s, request("e2")).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Overloaded);
    assert!(err.retry_after().is_some());
    // An answer missing a vector is the engine's protocol violation.
    for b in &s.backends {
        b.push(Answer::Short);
    }
    let err = embed(&s, request("e3")).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::UpstreamError);
    // The client gets the kind's fixed message (the detail, "2 embeddings
    // for 3 inputs", goes to the logs).
    assert_eq!(
        err.message(),
        "every backend failed before the first token; last: the engine broke its protocol"
    );
    // Each settled at zero (the ledger counts them).
    let a = account(&s);
    assert_eq!(
        (a.spent, a.reserved, a.requests),
        (Money::ZERO, Money::ZERO, 3)
    );
    let m = s.gateway.render_metrics();
    assert!(
        m.contains(
            r#"gateway_requests_total{tenant="team-a",model="embed",outcome="upstream_error"} 2"#
        ),
        "{m}"
    );
    assert!(m.contains(r#"outcome="overloaded"} 1"#), "{m}");
    assert!(m.contains(r#"kind="protocol_violation"} 1"#), "{m}");
}

#[tokio::test(start_paused = true)]
async fn a_fault_of_the_request_is_not_retried() {
    let s = setup(2);
    for b in &s.backends {
        b.push(Answer::Fail(FailureKind::InvalidRequest));
    }
    let err = embed(&s, request("e1")).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidRequest);
    assert_eq!(s.backends[0].calls() + s.backends[1].calls(), 1);
    assert_eq!(account(&s).spent, Money::ZERO);
}

#[tokio::test(start_paused = true)]
async fn backends_without_embeddings_are_skipped_or_refuse() {
    // Only a backend that does not embed (the testkit mock): 400.
    let (mock, _h) = MockBackend::new("mock-0", MODEL);
    let gateway = Gateway::builder(settings())
        .tenant(Tenant::new("team-a"), key_hash("sk-t"))
        .model(spec())
        .backend(Arc::new(mock), MODEL, MODEL, None)
        .build()
        .unwrap();
    let tenant = gateway.authenticate(Some("sk-t")).unwrap();
    let guard = gateway.request_cancel();
    let cancel = guard.handle().clone();
    let err = gateway
        .embed(&tenant, request("e1"), cancel)
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.code().status().as_u16()),
        (ErrorCode::InvalidRequest, 400)
    );
    assert_eq!(
        err.message(),
        "no backend of this model can serve it: the engine does not serve this endpoint"
    );
    let a = gateway.account(&tenant.id).unwrap();
    assert_eq!((a.spent, a.reserved), (Money::ZERO, Money::ZERO));
    // It does not count against the backend.
    let m = gateway.render_metrics();
    assert!(
        m.contains(r#"gateway_circuit_state{backend="mock-0"} 0"#),
        "{m}"
    );
    assert!(m.contains(r#"kind="unsupported"} 1"#), "{m}");

    // Next to one that does: served there, whichever is ranked first.
    let (mock, _h) = MockBackend::new("mock-0", MODEL);
    let b = embedder("emb-1");
    let gateway = Gateway::builder(settings())
        .tenant(Tenant::new("team-a"), key_hash("sk-t"))
        .model(spec())
        .backend(Arc::new(mock), MODEL, MODEL, None)
        .backend(Arc::new(b.clone()), MODEL, MODEL, None)
        .build()
        .unwrap();
    for i in 0..4 {
        let guard = gateway.request_cancel();
        let cancel = guard.handle().clone();
        let answer = gateway
            .embed(&tenant, request(&format!("x{i}")), cancel)
            .await
            .unwrap();
        assert_eq!(answer.backend, "emb-1");
    }
    assert_eq!(b.calls(), 4);
}

#[tokio::test(start_paused = true)]
async fn an_answer_past_the_first_token_timeout_is_504_and_free() {
    let s = setup(1);
    s.backends[0].push(Answer::Hang);
    let started = tokio::time::Instant::now();
    let err = embed(&s, request("e1")).await.unwrap_err();
    assert_eq!(
        (err.code(), err.code().status().as_u16()),
        (ErrorCode::UpstreamTimeout, 504)
    );
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    // The attempt was canceled at the backend.
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(s.backends[0].canceled(), 1);
    let a = account(&s);
    assert_eq!((a.spent, a.reserved), (Money::ZERO, Money::ZERO));

    // The request timeout, when sooner, is the bound.
    let s = setup_with(
        1,
        Settings {
            request_timeout: Some(Duration::from_millis(500)),
            ..settings()
        },
        Tenant::new("team-a"),
        None,
    );
    s.backends[0].push(Answer::Hang);
    let started = tokio::time::Instant::now();
    let err = embed(&s, request("e2")).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::UpstreamTimeout);
    assert_eq!(started.elapsed(), Duration::from_millis(500));
    assert!(s.backends[0].seen()[0].deadline.is_some());
}

#[tokio::test(start_paused = true)]
async fn a_client_that_leaves_pays_nothing_and_frees_its_place() {
    let tenant = Tenant {
        max_concurrency: NonZeroU32::new(1),
        ..Tenant::new("team-a")
    };
    let s = setup_with(1, settings(), tenant, None);
    s.backends[0].push(Answer::Hang);
    let guard = s.gateway.request_cancel();
    let cancel = guard.handle().clone();
    let gateway = s.gateway.clone();
    let tenant = s.tenant.clone();
    let task = tokio::spawn(async move { gateway.embed(&tenant, request("gone"), cancel).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(account(&s).reserved > Money::ZERO);
    drop(guard);
    let err = task.await.unwrap().unwrap_err();
    assert_eq!(err.code(), ErrorCode::Canceled);
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(s.backends[0].canceled(), 1);
    // The future dropped mid-call (a client gone while axum awaits it).
    s.backends[0].push(Answer::Hang);
    let guard = s.gateway.request_cancel();
    let cancel = guard.handle().clone();
    let call = s.gateway.embed(&s.tenant, request("dropped"), cancel);
    assert!(
        tokio::time::timeout(Duration::from_millis(100), call)
            .await
            .is_err()
    );
    let a = account(&s);
    assert_eq!(
        (a.spent, a.reserved, a.requests),
        (Money::ZERO, Money::ZERO, 2)
    );
    assert_eq!(s.gateway.active(), 0);
    assert_eq!(s.backends[0].canceled(), 2);
    let m = s.gateway.render_metrics();
    assert!(m.contains(r#"outcome="canceled"} 2"#), "{m}");
    // The concurrency place is free again.
    s.backends[0].push(Answer::ok(3));
    assert_eq!(embed(&s, request("next")).await.unwrap().usage.prompt(), 3);
}

#[tokio::test(start_paused = true)]
async fn refusals_carry_the_contracts_codes() {
    let mut tenant = Tenant::new("team-a");
    tenant.models = Some(["other".to_owned()].into_iter().collect());
    let s = setup_with(1, settings(), tenant, None);
    let err = embed(&s, request("a")).await.unwrap_err();
    assert_eq!(
        (err.code(), err.code().status().as_u16()),
        (ErrorCode::ModelNotAllowed, 403)
    );

    let s = setup(1);
    let mut unknown = request("b");
    unknown.model = "nope".into();
    let err = embed(&s, unknown).await.unwrap_err();
    assert_eq!(
        (err.code(), err.code().status().as_u16()),
        (ErrorCode::ModelNotFound, 404)
    );
    let err = embed(&s, EmbedRequest::new(MODEL, Vec::new()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidRequest);
    let chat = EmbedRequest::new(MODEL, vec![Prompt::Chat(vec![ChatMessage::user("hi")])]);
    let err = embed(&s, chat).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidRequest);
    assert_eq!(
        err.message(),
        "input[0]: chat messages cannot be embedded here"
    );
    let mut zero = request("z");
    zero.dimensions = Some(0);
    assert_eq!(
        embed(&s, zero).await.unwrap_err().code(),
        ErrorCode::InvalidRequest
    );
    // One input over the 100-token window: exact ids, or a byte bound.
    let long = EmbedRequest::new(
        MODEL,
        vec![Prompt::Tokens(vec![1; 10]), Prompt::Tokens(vec![7; 101])],
    );
    let err = embed(&s, long).await.unwrap_err();
    assert_eq!(
        (err.code(), err.code().status().as_u16()),
        (ErrorCode::ContextLengthExceeded, 400)
    );
    assert_eq!(
        err.message(),
        "this model's context window is 100 tokens; input[1] has 101 tokens"
    );
    let long = EmbedRequest::new(MODEL, vec![Prompt::Text("x".repeat(99))]);
    let err = embed(&s, long).await.unwrap_err();
    assert_eq!(
        err.message(),
        "this model's context window is 100 tokens; input[0] has at most 101 tokens"
    );
    // Inputs that each fit may sum past the window.
    let many = EmbedRequest::new(MODEL, vec![Prompt::Tokens(vec![1; 90]); 5]);
    assert_eq!(embed(&s, many).await.unwrap().usage.prompt(), 450);
    assert_eq!(s.backends[0].calls(), 1);
    let m = s.gateway.render_metrics();
    assert!(m.contains(r#"outcome="context_length_exceeded"} 2"#), "{m}");
    assert!(m.contains(r#"outcome="model_not_found"} 1"#), "{m}");
}

#[tokio::test(start_paused = true)]
async fn budgets_and_token_limits_count_every_input() {
    // Each request reserves its 17 estimated tokens: 170 picos; 2 fit.
    let tenant = Tenant {
        budget: Some(Money::from_picos(2 * 17 * INPUT_PICOS)),
        ..Tenant::new("team-a")
    };
    let s = setup_with(1, settings(), tenant, None);
    for _ in 0..3 {
        s.backends[0].push(Answer::Ok {
            delay: Duration::from_millis(100),
            prompt_tokens: Some(17),
            base64: false,
        });
    }
    let calls: Vec<_> = (0..3)
        .map(|i| {
            let (gateway, tenant) = (s.gateway.clone(), s.tenant.clone());
            tokio::spawn(async move {
                let guard = gateway.request_cancel();
                let cancel = guard.handle().clone();
                gateway
                    .embed(&tenant, request(&format!("b{i}")), cancel)
                    .await
            })
        })
        .collect();
    let mut codes = Vec::new();
    for call in calls {
        codes.push(
            call.await
                .unwrap()
                .map(|r| r.usage.prompt())
                .map_err(|e| e.code()),
        );
    }
    codes.sort_by_key(|c| format!("{c:?}"));
    assert_eq!(
        codes,
        [Err(ErrorCode::BudgetExceeded), Ok(17), Ok(17)],
        "{codes:?}"
    );
    let a = account(&s);
    assert_eq!(a.spent, Money::from_picos(2 * 17 * INPUT_PICOS));
    assert_eq!(a.reserved, Money::ZERO);

    // A tokens-per-minute limit takes the sum of the inputs.
    let tenant = Tenant {
        tokens_per_minute: NonZeroU64::new(30),
        ..Tenant::new("team-a")
    };
    let s = setup_with(1, settings(), tenant, None);
    assert!(embed(&s, request("t1")).await.is_ok());
    let err = embed(&s, request("t2")).await.unwrap_err();
    assert_eq!(
        (err.code(), err.code().status().as_u16()),
        (ErrorCode::RateLimitExceeded, 429)
    );
    assert!(err.retry_after().is_some());
}

#[tokio::test(start_paused = true)]
async fn requests_wait_for_a_backend_with_capacity() {
    let s = setup_with(1, settings(), Tenant::new("team-a"), Some(1));
    s.backends[0].push(Answer::Ok {
        delay: Duration::from_millis(600),
        prompt_tokens: Some(4),
        base64: false,
    });
    s.backends[0].push(Answer::ok(5));
    let (gateway, tenant) = (s.gateway.clone(), s.tenant.clone());
    let first = tokio::spawn(async move {
        let guard = gateway.request_cancel();
        let cancel = guard.handle().clone();
        gateway.embed(&tenant, request("w1"), cancel).await
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let started = tokio::time::Instant::now();
    // Waits for the first (within the 1 s admission wait).
    let second = embed(&s, request("w2")).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(590));
    assert_eq!(second.usage.prompt(), 5);
    assert_eq!(first.await.unwrap().unwrap().usage.prompt(), 4);
    // Past the admission wait: 503.
    s.backends[0].push(Answer::Ok {
        delay: Duration::from_secs(5),
        prompt_tokens: Some(4),
        base64: false,
    });
    let (gateway, tenant) = (s.gateway.clone(), s.tenant.clone());
    let _busy = tokio::spawn(async move {
        let guard = gateway.request_cancel();
        let cancel = guard.handle().clone();
        gateway.embed(&tenant, request("w3"), cancel).await
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let err = embed(&s, request("w4")).await.unwrap_err();
    assert_eq!(
        (err.code(), err.code().status().as_u16()),
        (ErrorCode::Overloaded, 503)
    );
    assert_eq!(account(&s).spent, Money::from_picos(9 * INPUT_PICOS));
}
