//! A stream that fails after its first token, by its engine's fault, goes
//! on on another backend from the prompt's and the delivered tokens' ids:
//! which failures continue, the exact text and events the client gets, the
//! request the next backend gets, the exact charge, a continuation that
//! fails before its first token, the limits and what blocks a
//! continuation. Mock backends, paused time.
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
use gateway_policy::route::LeastLoaded;
use gateway_policy::*;

pub mod support;
use support::{pricing, settings};

const MODEL: &str = "tiny";
const TICK: Duration = Duration::from_millis(10);

/// Knows the ids of text prompts: one per byte.
#[derive(Debug)]
struct Bytes;

impl TokenCounter for Bytes {
    fn count_prompt(&self, prompt: &Prompt) -> TokenCount {
        match prompt {
            Prompt::Text(t) => TokenCount::Exact(t.len() as u64),
            Prompt::Tokens(ids) => TokenCount::Exact(ids.len() as u64),
            Prompt::Chat(_) => TokenCount::UpperBound(1000),
        }
    }
    fn count_text(&self, text: &str) -> TokenCount {
        TokenCount::Exact(text.len() as u64)
    }
    fn encode_prompt(&self, prompt: &Prompt) -> Option<Vec<u32>> {
        match prompt {
            Prompt::Text(t) => Some(t.bytes().map(u32::from).collect()),
            Prompt::Tokens(ids) => Some(ids.clone()),
            Prompt::Chat(_) => None,
        }
    }
    fn encode_text(&self, text: &str) -> Option<Vec<u32>> {
        Some(text.bytes().map(u32::from).collect())
    }
}

struct Setup {
    gateway: Gateway,
    tenant: Arc<Tenant>,
    mocks: Vec<MockHandle>,
}

fn setup_with(n: usize, continuation: Option<u32>, counter: Arc<dyn TokenCounter>) -> Setup {
    let ids = ContinuationIds::Exact;
    setup_ids(n, continuation.map(|max| (max, ids)), counter)
}

fn setup_ids(
    n: usize,
    continuation: Option<(u32, ContinuationIds)>,
    counter: Arc<dyn TokenCounter>,
) -> Setup {
    let mut builder = Gateway::builder(settings())
        .tenant(Tenant::new("team-a"), key_hash("sk-t"))
        .route_policy(Arc::new(LeastLoaded))
        .model(
            ModelSpec::new(MODEL, 1000)
                .with_pricing(pricing())
                .with_default_max_tokens(16)
                .with_counter(counter),
        );
    if let Some((max, ids)) = continuation {
        builder = builder.continuation(
            MODEL,
            Continuation::new(NonZeroU32::new(max).unwrap()).with_ids(ids),
        );
    }
    let mut mocks = Vec::new();
    for i in 0..n {
        let (mock, handle) = MockBackend::new(&format!("mock-{i}"), MODEL);
        builder = builder.backend(Arc::new(mock), MODEL, MODEL, None);
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

fn setup(n: usize, continuation: Option<u32>) -> Setup {
    setup_with(n, continuation, Arc::new(ByteBound::default()))
}

/// A prompt of 3 token ids, at most 8 completion tokens.
fn request(id: &str) -> ClientRequest {
    let mut r = ClientRequest::new(id, MODEL, Prompt::Tokens(vec![1, 2, 3]));
    r.max_tokens = Some(8);
    r
}

/// One token of `text` with id `id`.
fn token(text: &str, id: u32) -> Step {
    Step::Output {
        delta: Delta {
            token_ids: vec![id],
            ..Delta::text(text, 1)
        },
        delay: TICK,
    }
}

/// Tokens `a`, `b` (ids 11, 12), then `end`.
fn fails_after_two(end: Step) -> Script {
    Script {
        steps: vec![token("a", 11), token("b", 12), end],
        ..Script::tokens(&[], TICK)
    }
}

/// Tokens `c`, `d` (ids 13, 14), usage, stop.
fn goes_on() -> Script {
    Script {
        steps: vec![token("c", 13), token("d", 14)],
        ..Script::tokens(&[], TICK)
    }
}

struct Outcome {
    text: String,
    names: Vec<&'static str>,
    usage: Option<Usage>,
    error: Option<BackendError>,
}

async fn run(s: &Setup, id: &str) -> Outcome {
    run_request(s, request(id)).await
}

async fn run_request(s: &Setup, request: ClientRequest) -> Outcome {
    let guard = s.gateway.request_cancel();
    let cancel = guard.handle().clone();
    let mut stream = s
        .gateway
        .generate(&s.tenant, request, cancel)
        .await
        .unwrap();
    let mut out = Outcome {
        text: String::new(),
        names: Vec::new(),
        usage: None,
        error: None,
    };
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                match &event {
                    TokenEvent::Delta(d) => out.text.push_str(&d.text),
                    TokenEvent::Usage(u) => out.usage = Some(*u),
                    _ => {}
                }
                out.names.push(event.name());
            }
            Err(e) => {
                out.names.push("Error");
                out.error = Some(e);
            }
        }
    }
    guard.disarm();
    out
}

async fn settled(s: &Setup) -> gateway_policy::TenantAccount {
    for _ in 0..1000 {
        let a = s.gateway.account(&s.tenant.id).unwrap();
        if a.reserved == Money::ZERO && s.gateway.active() == 0 {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("never settled");
}

/// What each backend was asked: its prompt's ids and `max_tokens`.
fn asked(mock: &MockHandle) -> Vec<(Vec<u32>, u32)> {
    mock.requests()
        .iter()
        .map(|r| {
            let ids = match &r.request.prompt {
                Prompt::Tokens(ids) => ids.clone(),
                other => panic!("not a token prompt: {other:?}"),
            };
            (ids, r.budget.max_completion_tokens)
        })
        .collect()
}

const CONTINUED: [&str; 7] = [
    "Started", "Delta", "Delta", "Delta", "Delta", "Usage", "Finished",
];

#[tokio::test(start_paused = true)]
async fn every_failure_kind_after_the_first_token_continues_or_not_by_its_row() {
    for kind in FailureKind::ALL {
        let s = setup(2, Some(1));
        s.mocks[0].push(fails_after_two(Step::Fail(kind)));
        s.mocks[1].push(goes_on());
        let out = run(&s, "r1").await;
        let a = settled(&s).await;
        let metrics = s.gateway.render_metrics();
        let series = r#"gateway_continuations_total{model="tiny",from="mock-0",to="mock-1"} 1"#;
        if kind.continues() {
            assert_eq!(out.text, "abcd", "{kind}");
            assert_eq!(out.names, CONTINUED, "{kind}");
            // The original prompt and every token the client received.
            assert_eq!(out.usage, Some(Usage::new(3, 4)), "{kind}");
            assert!(out.error.is_none(), "{kind}");
            // The next backend got the prompt and the delivered ids, and
            // max_tokens less what was delivered.
            assert_eq!(
                asked(&s.mocks[1]),
                vec![(vec![1, 2, 3, 11, 12], 6)],
                "{kind}"
            );
            // Charged once: 3 prompt tokens, 4 completion tokens.
            assert_eq!(a.spent, Money::from_picos(3 * 10 + 4 * 100), "{kind}");
            assert_eq!((a.requests, a.usage), (1, Usage::new(3, 4)), "{kind}");
            assert!(metrics.contains(series), "{kind}: {metrics}");
            assert!(
                metrics.contains(r#"gateway_continuation_prefill_tokens_total{model="tiny"} 5"#),
                "{kind}: {metrics}"
            );
        } else {
            assert_eq!(out.text, "ab", "{kind}");
            assert_eq!(out.names, ["Started", "Delta", "Delta", "Error"], "{kind}");
            let error = out.error.unwrap();
            assert_eq!(
                (error.kind(), error.phase()),
                (kind, FailurePhase::AfterFirstToken)
            );
            assert_eq!(s.mocks[1].starts(), 0, "{kind}");
            assert_eq!(a.spent, Money::from_picos(3 * 10 + 2 * 100), "{kind}");
            assert!(!metrics.contains(series), "{kind}");
            assert!(
                metrics.contains(r#"gateway_continuation_prefill_tokens_total{model="tiny"} 0"#),
                "{kind}: {metrics}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_stream_silent_past_the_idle_timeout_continues() {
    let s = setup(2, Some(1));
    s.mocks[0].push(fails_after_two(Step::Stall));
    s.mocks[1].push(goes_on());
    let out = run(&s, "r1").await;
    assert_eq!(
        (out.text.as_str(), out.names.as_slice()),
        ("abcd", &CONTINUED[..])
    );
    assert_eq!(out.usage, Some(Usage::new(3, 4)));
    assert_eq!(asked(&s.mocks[1]), vec![(vec![1, 2, 3, 11, 12], 6)]);
    let a = settled(&s).await;
    assert_eq!(a.spent, Money::from_picos(3 * 10 + 4 * 100));
    // The stalled engine was stopped.
    assert_eq!(s.mocks[0].live(), 0);
    assert_eq!(s.mocks[0].aborts().decode, 1);
}

#[tokio::test(start_paused = true)]
async fn without_continuation_the_failure_ends_the_stream() {
    let s = setup(2, None);
    s.mocks[0].push(fails_after_two(Step::Fail(FailureKind::Connect)));
    s.mocks[1].push(goes_on());
    let out = run(&s, "r1").await;
    assert_eq!(out.names, ["Started", "Delta", "Delta", "Error"]);
    assert_eq!(out.error.unwrap().kind(), FailureKind::Connect);
    assert_eq!(s.mocks[1].starts(), 0);
    let a = settled(&s).await;
    assert_eq!(a.spent, Money::from_picos(3 * 10 + 2 * 100));
}

#[tokio::test(start_paused = true)]
async fn a_continuation_failing_before_its_first_token_tries_the_next_backend() {
    let s = setup(3, Some(1));
    s.mocks[0].push(fails_after_two(Step::Fail(FailureKind::Connect)));
    s.mocks[1].push(Script::reject(FailureKind::Overloaded));
    s.mocks[2].push(goes_on());
    let out = run(&s, "r1").await;
    assert_eq!(
        (out.text.as_str(), out.names.as_slice()),
        ("abcd", &CONTINUED[..])
    );
    assert_eq!(out.usage, Some(Usage::new(3, 4)));
    // One continuation: mock-1 refused it, mock-2 took it; both were asked
    // the same.
    assert_eq!(asked(&s.mocks[1]), vec![(vec![1, 2, 3, 11, 12], 6)]);
    assert_eq!(asked(&s.mocks[2]), vec![(vec![1, 2, 3, 11, 12], 6)]);
    let a = settled(&s).await;
    assert_eq!(a.spent, Money::from_picos(3 * 10 + 4 * 100));
    let metrics = s.gateway.render_metrics();
    assert!(
        metrics
            .contains(r#"gateway_continuations_total{model="tiny",from="mock-0",to="mock-2"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"gateway_retries_total{backend="mock-1"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(start_paused = true)]
async fn no_backend_left_to_continue_ends_with_the_original_failure() {
    let s = setup(2, Some(1));
    s.mocks[0].push(fails_after_two(Step::Fail(FailureKind::OutOfMemory)));
    s.mocks[1].push(Script::reject(FailureKind::Overloaded));
    let out = run(&s, "r1").await;
    assert_eq!(out.names, ["Started", "Delta", "Delta", "Error"]);
    let error = out.error.unwrap();
    assert_eq!(
        (error.kind(), error.phase()),
        (FailureKind::OutOfMemory, FailurePhase::AfterFirstToken)
    );
    assert_eq!(s.mocks[1].starts(), 1);
    let a = settled(&s).await;
    assert_eq!(a.spent, Money::from_picos(3 * 10 + 2 * 100));
}

#[tokio::test(start_paused = true)]
async fn continuations_stop_at_the_models_limit() {
    // Each backend fails after one more token.
    let chain = |s: &Setup| {
        s.mocks[0].push(Script {
            steps: vec![token("a", 11), Step::Fail(FailureKind::Connect)],
            ..Script::tokens(&[], TICK)
        });
        s.mocks[1].push(Script {
            steps: vec![token("b", 12), Step::Fail(FailureKind::Internal)],
            ..Script::tokens(&[], TICK)
        });
        s.mocks[2].push(Script {
            steps: vec![token("c", 13)],
            ..Script::tokens(&[], TICK)
        });
    };
    // One continuation allowed: the second failure ends the stream.
    let s = setup(3, Some(1));
    chain(&s);
    let out = run(&s, "r1").await;
    assert_eq!(out.names, ["Started", "Delta", "Delta", "Error"]);
    assert_eq!(out.text, "ab");
    assert_eq!(out.error.unwrap().kind(), FailureKind::Internal);
    assert_eq!(s.mocks[2].starts(), 0);
    assert_eq!(settled(&s).await.spent, Money::from_picos(3 * 10 + 2 * 100));
    // Two: the third backend finishes it, from everything delivered.
    let s = setup(3, Some(2));
    chain(&s);
    let out = run(&s, "r1").await;
    assert_eq!(
        out.names,
        ["Started", "Delta", "Delta", "Delta", "Usage", "Finished"]
    );
    assert_eq!(out.text, "abc");
    assert_eq!(out.usage, Some(Usage::new(3, 3)));
    assert_eq!(asked(&s.mocks[1]), vec![(vec![1, 2, 3, 11], 7)]);
    assert_eq!(asked(&s.mocks[2]), vec![(vec![1, 2, 3, 11, 12], 6)]);
    assert_eq!(settled(&s).await.spent, Money::from_picos(3 * 10 + 3 * 100));
    let metrics = s.gateway.render_metrics();
    assert!(metrics.contains(r#"gateway_continuation_prefill_tokens_total{model="tiny"} 9"#));
}

#[tokio::test(start_paused = true)]
async fn the_continuation_gets_what_is_left_of_max_tokens() {
    let s = setup(2, Some(1));
    s.mocks[0].push(fails_after_two(Step::Fail(FailureKind::Connect)));
    // Would go on past the cap: the mock stops at the 2 tokens it is given.
    s.mocks[1].push(Script {
        steps: vec![token("c", 13), token("d", 14), token("e", 15)],
        ..Script::tokens(&[], TICK)
    });
    let mut r = request("r1");
    r.max_tokens = Some(4);
    let out = run_request(&s, r).await;
    assert_eq!(out.text, "abcd");
    assert_eq!(out.names, CONTINUED);
    assert_eq!(out.usage, Some(Usage::new(3, 4)));
    assert_eq!(asked(&s.mocks[1]), vec![(vec![1, 2, 3, 11, 12], 2)]);
    assert_eq!(settled(&s).await.spent, Money::from_picos(3 * 10 + 4 * 100));
}

#[tokio::test(start_paused = true)]
async fn a_text_prompt_continues_from_the_counters_exact_ids() {
    let s = setup_with(2, Some(1), Arc::new(Bytes));
    s.mocks[0].push(fails_after_two(Step::Fail(FailureKind::Connect)));
    s.mocks[1].push(goes_on());
    let mut r = ClientRequest::new("r1", MODEL, Prompt::Text("hi!".into()));
    r.max_tokens = Some(8);
    let out = run_request(&s, r).await;
    assert_eq!(
        (out.text.as_str(), out.names.as_slice()),
        ("abcd", &CONTINUED[..])
    );
    assert_eq!(out.usage, Some(Usage::new(3, 4)));
    assert_eq!(asked(&s.mocks[1]), vec![(vec![104, 105, 33, 11, 12], 6)]);
    assert_eq!(settled(&s).await.spent, Money::from_picos(3 * 10 + 4 * 100));
}

#[tokio::test(start_paused = true)]
async fn what_blocks_a_continuation() {
    // A token without its id.
    let s = setup(2, Some(1));
    s.mocks[0].push(Script {
        steps: vec![
            token("a", 11),
            Step::Token {
                text: "b".into(),
                delay: TICK,
            },
            Step::Fail(FailureKind::Connect),
        ],
        ..Script::tokens(&[], TICK)
    });
    s.mocks[1].push(goes_on());
    let out = run(&s, "r1").await;
    assert_eq!(out.names, ["Started", "Delta", "Delta", "Error"]);
    assert_eq!(s.mocks[1].starts(), 0);
    // Output other than text.
    let s = setup(2, Some(1));
    s.mocks[0].push(Script {
        steps: vec![
            token("a", 11),
            Step::Output {
                delta: Delta {
                    token_ids: vec![12],
                    ..Delta::reasoning("hm", ReasoningField::Reasoning, 1)
                },
                delay: TICK,
            },
            Step::Fail(FailureKind::Connect),
        ],
        ..Script::tokens(&[], TICK)
    });
    s.mocks[1].push(goes_on());
    let out = run(&s, "r1").await;
    assert_eq!(out.names, ["Started", "Delta", "Delta", "Error"]);
    assert_eq!(s.mocks[1].starts(), 0);
    // A prompt whose ids are not known (a byte bound counts text).
    let s = setup(2, Some(1));
    s.mocks[0].push(fails_after_two(Step::Fail(FailureKind::Connect)));
    s.mocks[1].push(goes_on());
    let mut r = request("r1");
    r.prompt = Prompt::Text("hi!".into());
    let out = run_request(&s, r).await;
    assert_eq!(out.names, ["Started", "Delta", "Delta", "Error"]);
    assert_eq!(s.mocks[1].starts(), 0);
    // A request with tools.
    let s = setup(2, Some(1));
    s.mocks[0].push(fails_after_two(Step::Fail(FailureKind::Connect)));
    s.mocks[1].push(goes_on());
    let mut r = request("r1");
    r.tools = Some(Arc::from(
        r#"[{"type":"function","function":{"name":"f"}}]"#,
    ));
    let out = run_request(&s, r).await;
    assert_eq!(out.names, ["Started", "Delta", "Delta", "Error"]);
    assert_eq!(s.mocks[1].starts(), 0);
    // A request for structured output or logprobs (its text deltas look
    // plain, but a grammar would start again mid-answer).
    for need in [Capability::StructuredOutput, Capability::Logprobs] {
        let s = setup(2, Some(1));
        s.mocks[0].push(fails_after_two(Step::Fail(FailureKind::Connect)));
        s.mocks[1].push(goes_on());
        let mut r = request("r1");
        r.needs = Capabilities::NONE.with(need);
        let out = run_request(&s, r).await;
        assert_eq!(
            out.names,
            ["Started", "Delta", "Delta", "Error"],
            "{need:?}"
        );
        assert_eq!(s.mocks[1].starts(), 0, "{need:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_client_gone_during_a_continuation_pays_what_it_took() {
    let s = setup(2, Some(1));
    s.mocks[0].push(fails_after_two(Step::Fail(FailureKind::Connect)));
    s.mocks[1].push(Script {
        steps: (0..6).map(|i| token("x", 20 + i)).collect(),
        ..Script::tokens(&[], TICK)
    });
    let guard = s.gateway.request_cancel();
    let cancel = guard.handle().clone();
    let mut stream = s
        .gateway
        .generate(&s.tenant, request("r1"), cancel)
        .await
        .unwrap();
    // Started, a, b, then two tokens of the continuation.
    for _ in 0..5 {
        stream.next().await.unwrap().unwrap();
    }
    assert_eq!(stream.delivered(), 4);
    drop(stream);
    drop(guard);
    let a = settled(&s).await;
    assert_eq!(a.usage.completion(), 4);
    assert_eq!(a.usage.prompt(), 3);
    assert_eq!(s.mocks[1].live(), 0);
}

#[test]
fn a_continuation_for_an_unknown_model_does_not_build() {
    let (mock, _handle) = MockBackend::new("mock-0", MODEL);
    let err = Gateway::builder(settings())
        .model(ModelSpec::new(MODEL, 1000))
        .backend(Arc::new(mock), MODEL, MODEL, None)
        .continuation("other", Continuation::new(NonZeroU32::MIN))
        .build()
        .unwrap_err();
    assert_eq!(
        err,
        BuildError::UnknownModel {
            model: "other".into(),
            by: ModelReference::Continuation,
        }
    );
}

/// Tokens "ab" and "cd" without ids, then a failure.
fn fails_without_ids() -> Script {
    Script {
        steps: vec![
            Step::Token {
                text: "ab".into(),
                delay: TICK,
            },
            Step::Token {
                text: "cd".into(),
                delay: TICK,
            },
            Step::Fail(FailureKind::Connect),
        ],
        ..Script::tokens(&[], TICK)
    }
}

#[tokio::test(start_paused = true)]
async fn retokenizing_continues_from_the_delivered_text() {
    let s = setup_ids(2, Some((1, ContinuationIds::Retokenize)), Arc::new(Bytes));
    s.mocks[0].push(fails_without_ids());
    s.mocks[1].push(goes_on());
    let out = run(&s, "r1").await;
    assert_eq!(
        (out.text.as_str(), out.names.as_slice()),
        ("abcdcd", &CONTINUED[..])
    );
    // 2 tokens from the first engine, 2 from the second.
    assert_eq!(out.usage, Some(Usage::new(3, 4)));
    // The prompt's ids, then the delivered text's by the tokenizer (one a
    // byte here: not the 2 tokens the engine counted).
    assert_eq!(
        asked(&s.mocks[1]),
        vec![(vec![1, 2, 3, 97, 98, 99, 100], 6)]
    );
    assert_eq!(settled(&s).await.spent, Money::from_picos(3 * 10 + 4 * 100));
    // Exact ids only (the default): the same stream does not continue.
    let s = setup_ids(2, Some((1, ContinuationIds::Exact)), Arc::new(Bytes));
    s.mocks[0].push(fails_without_ids());
    s.mocks[1].push(goes_on());
    let out = run(&s, "r1").await;
    assert_eq!(out.names, ["Started", "Delta", "Delta", "Error"]);
    assert_eq!(s.mocks[1].starts(), 0);
    // A counter without a tokenizer cannot retokenize.
    let s = setup_ids(
        2,
        Some((1, ContinuationIds::Retokenize)),
        Arc::new(ByteBound::default()),
    );
    s.mocks[0].push(fails_without_ids());
    s.mocks[1].push(goes_on());
    let out = run(&s, "r1").await;
    assert_eq!(out.names, ["Started", "Delta", "Delta", "Error"]);
    assert_eq!(s.mocks[1].starts(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_client_gone_while_the_continuation_prefills_stops_it_and_pays_what_it_took() {
    let s = setup(2, Some(1));
    s.mocks[0].push(fails_after_two(Step::Fail(FailureKind::Connect)));
    s.mocks[1].push(goes_on().prefill(Duration::from_secs(10)));
    let guard = s.gateway.request_cancel();
    let cancel = guard.handle().clone();
    let mut stream = s
        .gateway
        .generate(&s.tenant, request("r1"), cancel)
        .await
        .unwrap();
    // Started, a, b.
    for _ in 0..3 {
        stream.next().await.unwrap().unwrap();
    }
    // The continuation is prefilling on mock-1 when the client leaves.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(s.mocks[1].starts(), 1);
    assert_eq!(s.mocks[1].live(), 1);
    drop(stream);
    drop(guard);
    let a = settled(&s).await;
    assert_eq!(a.usage, Usage::new(3, 2));
    assert_eq!(a.spent, Money::from_picos(3 * 10 + 2 * 100));
    assert_eq!(s.mocks[1].live(), 0);
    assert_eq!(s.mocks[1].aborts().prefill, 1);
    // Not counted as a continuation: it never produced a token.
    let metrics = s.gateway.render_metrics();
    assert!(
        !metrics.contains("gateway_continuations_total{"),
        "{metrics}"
    );
}

/// `fails_after_two`, its first token carrying the engine's prompt ids.
fn fails_after_two_reporting(prompt_ids: &[u32]) -> Script {
    let mut script = fails_after_two(Step::Fail(FailureKind::Connect));
    if let Step::Output { delta, .. } = &mut script.steps[0] {
        delta.prompt_token_ids = Some(Arc::from(prompt_ids));
    }
    script
}

#[tokio::test(start_paused = true)]
async fn the_engines_prompt_ids_are_checked_or_used() {
    // The same as the gateway's: continues.
    let s = setup_with(2, Some(1), Arc::new(Bytes));
    s.mocks[0].push(fails_after_two_reporting(&[104, 105, 33]));
    s.mocks[1].push(goes_on());
    let mut r = ClientRequest::new("r1", MODEL, Prompt::Text("hi!".into()));
    r.max_tokens = Some(8);
    let out = run_request(&s, r.clone()).await;
    assert_eq!(out.names, CONTINUED);
    assert_eq!(asked(&s.mocks[1]), vec![(vec![104, 105, 33, 11, 12], 6)]);
    // Different (another template or tokenizer at the engine): does not.
    let s = setup_with(2, Some(1), Arc::new(Bytes));
    s.mocks[0].push(fails_after_two_reporting(&[1, 104, 105, 33]));
    s.mocks[1].push(goes_on());
    let out = run_request(&s, r.clone()).await;
    assert_eq!(out.names, ["Started", "Delta", "Delta", "Error"]);
    assert_eq!(s.mocks[1].starts(), 0);
    // Unknown to the gateway (a byte bound counts the text): the engine's
    // are used.
    let s = setup(2, Some(1));
    // An engine whose count agrees with its ids.
    s.mocks[0].push(fails_after_two_reporting(&[7, 8, 9, 10]).with_prompt_tokens(4));
    s.mocks[1].push(goes_on());
    let out = run_request(&s, r).await;
    assert_eq!(out.names, CONTINUED);
    assert_eq!(out.usage, Some(Usage::new(4, 4)));
    assert_eq!(asked(&s.mocks[1]), vec![(vec![7, 8, 9, 10, 11, 12], 6)]);
}
