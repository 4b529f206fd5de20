//! The gateway's own `max_tokens` cap over mock engines that ignore it or
//! report zero-token chunks, in paused time: exactly the cap reaches the
//! client, the stream ends with `length` and the gateway's usage, the
//! engine is aborted at once, the tenant is charged exactly the delivered
//! tokens.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use gateway_core::testkit::{MockBackend, MockHandle, Script, Step};
use gateway_core::*;
use gateway_policy::*;
use tokio::time::Instant;

pub mod support;
use support::{pricing, settings};

const MODEL: &str = "tiny";

/// A tokenizer stand-in that counts whitespace-separated words, exactly.
#[derive(Debug)]
struct Words;

impl TokenCounter for Words {
    fn count_prompt(&self, prompt: &Prompt) -> TokenCount {
        match prompt {
            Prompt::Text(t) => self.count_text(t),
            other => ByteBound::default().count_prompt(other),
        }
    }
    fn count_text(&self, text: &str) -> TokenCount {
        TokenCount::Exact(text.split_whitespace().count() as u64)
    }
}

struct Setup {
    gateway: Gateway,
    tenant: Arc<Tenant>,
    mock: MockHandle,
}

fn setup(counter: Arc<dyn TokenCounter>) -> Setup {
    let (mock, handle) = MockBackend::new("mock-0", MODEL);
    let gateway = Gateway::builder(settings())
        .tenant(Tenant::new("team-a"), key_hash("sk-t"))
        .model(ModelSpec {
            name: MODEL.into(),
            pricing: pricing(),
            context_window: 100_000,
            default_max_tokens: 16,
            media: MediaCosts::default(),
            counter,
        })
        .backend(Arc::new(mock), MODEL, MODEL, None)
        .build()
        .unwrap();
    let tenant = gateway.authenticate(Some("sk-t")).unwrap();
    Setup {
        gateway,
        tenant,
        mock: handle,
    }
}

fn request(id: &str, max_tokens: Option<u32>) -> ClientRequest {
    let mut r = ClientRequest::new(id, MODEL, Prompt::Text("0123456789".into()));
    r.max_tokens = max_tokens;
    r
}

/// What the client got: text, delta tokens, the last usage, the finish.
#[derive(Debug, Default)]
struct Got {
    text: String,
    tokens: u64,
    usage: Option<Usage>,
    finish: Option<FinishReason>,
    error: Option<BackendError>,
}

async fn collect(stream: &mut GatewayStream) -> Got {
    let mut got = Got::default();
    while let Some(item) = stream.next().await {
        match item {
            Ok(TokenEvent::Delta(d)) => {
                got.text.push_str(&d.text);
                got.tokens += u64::from(d.tokens);
            }
            Ok(TokenEvent::Usage(u)) => got.usage = Some(u),
            Ok(TokenEvent::Finished(r)) => got.finish = Some(r),
            Ok(TokenEvent::Started(_)) => {}
            Err(e) => got.error = Some(e),
        }
    }
    got
}

/// Waits (bounded) until the tenant holds nothing and the engine has no
/// live request.
async fn settled(s: &Setup) -> TenantAccount {
    for _ in 0..1000 {
        let a = s.gateway.account(&s.tenant.id).unwrap();
        if a.reserved == Money::ZERO && s.gateway.active() == 0 && s.mock.live() == 0 {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("never settled");
}

async fn run(s: &Setup, req: ClientRequest) -> (Got, Instant) {
    let guard = s.gateway.request_cancel();
    let cancel = guard.handle().clone();
    let mut stream = s.gateway.generate(&s.tenant, req, cancel).await.unwrap();
    let got = collect(&mut stream).await;
    // As the server does once the response is out: the request is not
    // canceled by its end.
    guard.disarm();
    (got, Instant::now())
}

/// Waits until the engine counted an abort; the time it took from `from`.
async fn abort_seen(s: &Setup, from: Instant) -> Duration {
    for _ in 0..1000 {
        if s.mock.aborts().decode > 0 {
            return from.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("the engine never saw an abort: {:?}", s.mock.aborts());
}

#[tokio::test(start_paused = true)]
async fn an_engine_that_ignores_max_tokens_is_cut_at_the_cap_and_aborted() {
    let s = setup(Arc::new(ByteBound::default()));
    // Ten times the cap, one token every 10 ms.
    s.mock
        .push(Script::repeat(80, Duration::from_millis(10)).ignoring_max_tokens());
    let (got, ended) = run(&s, request("c1", Some(8))).await;
    assert!(got.error.is_none(), "{:?}", got.error);
    assert_eq!(got.text, "tok ".repeat(8));
    assert_eq!(got.tokens, 8);
    assert_eq!(got.finish, Some(FinishReason::Length));
    // ByteBound counts the 10-byte prompt as 12; the mock reports that.
    assert_eq!(got.usage, Some(Usage::new(12, 8)));
    // Aborted at once: before the engine's next token would be due.
    assert!(abort_seen(&s, ended).await < Duration::from_millis(10));
    let a = settled(&s).await;
    assert_eq!(a.usage, Usage::new(12, 8));
    assert_eq!(a.spent, Money::from_picos(12 * 10 + 8 * 100));
    assert_eq!(s.mock.completed(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_models_default_max_tokens_is_enforced_too() {
    let s = setup(Arc::new(ByteBound::default()));
    s.mock
        .push(Script::repeat(1000, Duration::from_millis(1)).ignoring_max_tokens());
    let (got, ended) = run(&s, request("c2", None)).await;
    assert_eq!((got.tokens, got.finish), (16, Some(FinishReason::Length)));
    assert_eq!(got.usage, Some(Usage::new(12, 16)));
    assert!(abort_seen(&s, ended).await < Duration::from_millis(10));
    let a = settled(&s).await;
    assert_eq!(a.spent, Money::from_picos(12 * 10 + 16 * 100));
}

#[tokio::test(start_paused = true)]
async fn zero_token_chunks_are_counted_from_their_text_and_cut_at_a_token_boundary() {
    let s = setup(Arc::new(Words));
    // Chunks of four words that claim no tokens and carry no token ids:
    // the mock's own cap never trips on them.
    let chunk = Step::Output {
        delta: Delta::text("a b c d ", 0),
        delay: Duration::from_millis(10),
    };
    s.mock.push(Script {
        steps: vec![chunk; 40],
        ..Script::default()
    });
    let (got, ended) = run(&s, request("c3", Some(10))).await;
    assert!(got.error.is_none(), "{:?}", got.error);
    // 4 + 4 words (by then the text is more than the slack ahead of the
    // engine's count, and is what counts), then the third chunk cut to two
    // words.
    assert_eq!(got.text, "a b c d a b c d a b ");
    assert_eq!(got.tokens, 10);
    assert_eq!(got.finish, Some(FinishReason::Length));
    // The prompt "0123456789" is one word.
    assert_eq!(got.usage, Some(Usage::new(1, 10)));
    // Cut by the text at the third chunk while the engine's own count (one
    // per chunk with output) was 3: the client's stream ends there; the
    // engine runs on until its own count passes the cap (eight chunks, 10 ms
    // apart) and is aborted then.
    let took = abort_seen(&s, ended).await;
    assert!(
        took >= Duration::from_millis(70) && took < Duration::from_millis(100),
        "{took:?}"
    );
    let a = settled(&s).await;
    assert_eq!(a.usage, Usage::new(1, 10));
    assert_eq!(a.spent, Money::from_picos(10 + 10 * 100));
}

#[tokio::test(start_paused = true)]
async fn without_a_tokenizer_a_zero_token_chunk_counts_one() {
    let s = setup(Arc::new(ByteBound::default()));
    let chunk = Step::Output {
        delta: Delta::text("many words in one chunk ", 0),
        delay: Duration::from_millis(10),
    };
    s.mock.push(Script {
        steps: vec![chunk; 50],
        ..Script::default()
    });
    let (got, ended) = run(&s, request("c4", Some(5))).await;
    assert_eq!(got.text, "many words in one chunk ".repeat(5));
    assert_eq!((got.tokens, got.finish), (5, Some(FinishReason::Length)));
    assert_eq!(got.usage, Some(Usage::new(12, 5)));
    assert!(abort_seen(&s, ended).await < Duration::from_millis(10));
    let a = settled(&s).await;
    assert_eq!(a.spent, Money::from_picos(12 * 10 + 5 * 100));
}

#[tokio::test(start_paused = true)]
async fn an_engine_that_stops_at_the_cap_is_not_aborted() {
    let s = setup(Arc::new(ByteBound::default()));
    // The mock honours max_tokens: 8 tokens, its usage, Finished(Length).
    s.mock.push(Script::repeat(80, Duration::from_millis(10)));
    let (got, _) = run(&s, request("c5", Some(8))).await;
    assert_eq!((got.tokens, got.finish), (8, Some(FinishReason::Length)));
    assert_eq!(got.usage, Some(Usage::new(12, 8)));
    let a = settled(&s).await;
    assert_eq!(a.spent, Money::from_picos(12 * 10 + 8 * 100));
    assert_eq!(s.mock.aborts(), AbortCounts::default());
    assert_eq!(s.mock.completed(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_cut_by_the_text_runs_an_engine_within_its_cap_to_its_end() {
    let s = setup(Arc::new(Words));
    // Pieces of two words the engine counts as one token each: by the text
    // it sends twice its max_tokens, by its own count it honours them (a
    // tokenizer that disagrees with the engine's).
    let chunk = Step::Output {
        delta: Delta::text("a b ", 1),
        delay: Duration::from_millis(10),
    };
    s.mock.push(Script {
        steps: vec![chunk; 40],
        ..Script::default()
    });
    let (got, _) = run(&s, request("c6", Some(10))).await;
    assert!(got.error.is_none(), "{:?}", got.error);
    // Trusted within the slack (4) for four pieces, then counted by the
    // text: ten words, the cap, and the client's stream ends there.
    assert_eq!(got.text, "a b ".repeat(5));
    assert_eq!((got.tokens, got.finish), (10, Some(FinishReason::Length)));
    assert_eq!(got.usage, Some(Usage::new(1, 10)));
    let a = settled(&s).await;
    assert_eq!(a.usage, Usage::new(1, 10));
    assert_eq!(a.spent, Money::from_picos(10 + 10 * 100));
    // The engine ran to its own end (ten pieces) instead of being cut off:
    // no abort, its connection is kept.
    assert_eq!(s.mock.aborts(), AbortCounts::default());
    assert_eq!(s.mock.completed(), 1);
}
