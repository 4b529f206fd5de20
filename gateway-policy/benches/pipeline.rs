//! The pipeline's own cost, each figure against a baseline measured in the
//! same run (the machine is shared, so ratios are what to compare):
//!
//! - `pipeline`: one request through [`Gateway::generate`] and a full drain
//!   of its [`GatewayStream`](gateway_policy::GatewayStream) (32 tokens from
//!   a zero-delay sim, until the request has settled), against the same sim
//!   reached directly (`Backend::start` and a drain). The difference is the
//!   gateway's overhead per request: admission, ledger, routing, the pump
//!   task and its bounded buffer, settlement and metrics. Once more with
//!   1 token, which splits the overhead into a part per request and a part
//!   per token.
//! - `pipeline x32`: 32 such requests at once on one thread, against 32
//!   direct ones, for the cost under contention (capacity wake-ups, shared
//!   locks).
//! - `route::rank` over 64 candidates, against sorting 64 floats.
//! - with feature `tokenizers`: the estimate of a ~1.5k-token chat with the
//!   real TinyLlama tokenizer and template when routing wants its leading
//!   token ids (`encode_prompt` + the token-block hashes of prefix
//!   affinity), against counting it alone (`count_prompt`): what affinity
//!   on token blocks adds to the request path.
//!
//! Everything runs on a current-thread Tokio runtime; run with
//! `cargo bench -p gateway-policy`. To profile the gateway side alone, set
//! `PIPELINE_PROFILE=N`: it then runs N requests through the gateway and
//! nothing else (e.g. under `perf record`).
#![expect(
    clippy::print_stdout,
    reason = "a benchmark prints its figures for the log"
)]

use std::sync::Arc;

use futures::StreamExt;
use futures::future::join_all;
use gateway_adapters::sim::{SimBackend, SimConfig};
use gateway_core::testkit::bench::{Comparison, compare};
use gateway_core::{
    Backend, BackendRequest, ByteBound, CancelHandle, GenerateRequest, Pressure, Pricing, Prompt,
    TokenCounter, TokenEvent, TokenStream,
};
use gateway_policy::route::{Candidate, rank};
use gateway_policy::{ClientRequest, Gateway, ModelSpec, Settings, Tenant, key_hash};
use tokio::runtime::Runtime;

/// Completion tokens per request.
const TOKENS: u32 = 32;
const MODEL: &str = "sim";
const PROMPT: &str = "Benchmark the gateway pipeline, please.";
/// Requests at once in the concurrent comparison.
const CONCURRENT: usize = 32;
/// Routing candidates.
const CANDIDATES: usize = 64;

struct Setup {
    sim: SimBackend,
    backend: Arc<dyn Backend>,
    counter: Arc<dyn TokenCounter>,
    gateway: Gateway,
    tenant: Arc<Tenant>,
}

#[expect(
    clippy::expect_used,
    reason = "bench setup: a broken fixture should stop the bench loudly"
)]
fn setup() -> Setup {
    let sim = SimBackend::new(SimConfig {
        natural_length: TOKENS..=TOKENS,
        // Room for the concurrent comparison without queueing.
        slots: CONCURRENT as u32,
        ..SimConfig::zero_delay()
    });
    let backend: Arc<dyn Backend> = Arc::new(sim.clone());
    let counter: Arc<dyn TokenCounter> = Arc::new(ByteBound::default());
    let gateway = Gateway::builder(Settings::default())
        .tenant(Tenant::new("bench"), key_hash("sk-bench"))
        .model(ModelSpec {
            name: MODEL.into(),
            pricing: Pricing::per_million(1.0, None, 2.0).expect("valid prices"),
            context_window: 32_768,
            default_max_tokens: TOKENS,
            media: gateway_policy::MediaCosts::default(),
            counter: counter.clone(),
        })
        .backend(backend.clone(), MODEL, MODEL, None)
        .build()
        .expect("a valid gateway");
    let tenant = gateway.authenticate(Some("sk-bench")).expect("the key");
    Setup {
        sim,
        backend,
        counter,
        gateway,
        tenant,
    }
}

/// Drains a stream; returns the completion tokens seen.
async fn drain<S, E>(mut stream: S) -> u64
where
    S: futures::Stream<Item = Result<TokenEvent, E>> + Unpin,
{
    let mut tokens = 0;
    while let Some(item) = stream.next().await {
        match item {
            Ok(TokenEvent::Delta(d)) => tokens += u64::from(d.tokens),
            Ok(_) => {}
            Err(_) => return 0,
        }
    }
    tokens
}

/// The baseline: the sim reached directly, for `tokens` tokens.
async fn direct_once(s: &Setup, tokens: u32) -> u64 {
    let request = GenerateRequest::new(MODEL, Prompt::Text(PROMPT.into()), tokens);
    let request = BackendRequest::new(request, s.counter.clone());
    let stream: TokenStream = match s.backend.start(request, CancelHandle::new()).await {
        Ok(stream) => stream,
        Err(_) => return 0,
    };
    drain(stream).await
}

/// The candidate: the same request through the gateway.
async fn gateway_once(s: &Setup, tokens: u32) -> u64 {
    let mut request = ClientRequest::new("bench-1", MODEL, Prompt::Text(PROMPT.into()));
    request.max_tokens = Some(tokens);
    let guard = s.gateway.request_cancel();
    let cancel = guard.handle().clone();
    let tokens = match s.gateway.generate(&s.tenant, request, cancel).await {
        Ok(stream) => drain(stream).await,
        Err(_) => 0,
    };
    guard.disarm();
    tokens
}

/// Lets the pump tasks settle (bounded), so each iteration pays for its
/// whole request.
async fn settled(s: &Setup) {
    for _ in 0..10_000 {
        if s.gateway.active() == 0 {
            return;
        }
        tokio::task::yield_now().await;
    }
}

/// One request through the gateway until it has settled.
async fn gateway_settled(s: &Setup, tokens: u32) -> u64 {
    let n = gateway_once(s, tokens).await;
    settled(s).await;
    n
}

fn pipeline(rt: &Runtime, s: &Setup, name: &'static str, tokens: u32) -> Comparison {
    compare(
        name,
        41,
        500,
        || rt.block_on(direct_once(s, tokens)),
        || rt.block_on(gateway_settled(s, tokens)),
    )
}

fn pipeline_concurrent(rt: &Runtime, s: &Setup) -> Comparison {
    compare(
        "pipeline x32 concurrent vs sim direct x32",
        21,
        20,
        || rt.block_on(join_all((0..CONCURRENT).map(|_| direct_once(s, TOKENS)))),
        || {
            rt.block_on(async {
                let n = join_all((0..CONCURRENT).map(|_| gateway_once(s, TOKENS))).await;
                settled(s).await;
                n
            })
        },
    )
}

fn candidates() -> Vec<Candidate> {
    (0..CANDIDATES)
        .map(|i| {
            let i32 = i as u32;
            Candidate {
                index: i,
                healthy: i % 13 != 5,
                has_capacity: i % 17 != 3,
                pressure: Pressure {
                    running: (i32 * 7) % 16,
                    waiting: (i32 * 3) % 5,
                    kv_usage: ((i32 * 37) % 100) as f32 / 100.0,
                    inflight: (i32 * 11) % 19,
                    limit: Some(8 + i32 % 3 * 8),
                    updated_at: None,
                    overloaded: i % 29 == 7,
                },
            }
        })
        .collect()
}

fn routing() -> Comparison {
    let cands = candidates();
    let floats: Vec<f64> = cands
        .iter()
        .map(|c| gateway_policy::route::load_score(&c.pressure))
        .collect();
    compare(
        "route::rank 64 vs sort 64 f64",
        31,
        5_000,
        || {
            let mut xs = floats.clone();
            xs.sort_by(f64::total_cmp);
            xs
        },
        || rank(&cands),
    )
}

#[cfg(feature = "tokenizers")]
#[expect(
    clippy::expect_used,
    reason = "bench setup: a broken fixture should stop the bench loudly"
)]
fn token_routing() -> Comparison {
    use gateway_core::ChatMessage;
    use gateway_policy::route::{BLOCK_TOKENS, BLOCKS, token_prefix_hashes};
    use gateway_policy::{ChatTemplate, HfTokenCounter};

    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/tokenizers/");
    let template =
        ChatTemplate::from_file(format!("{dir}tinyllama.chat_template.jinja"), "<s>", "</s>")
            .expect("the fixture template");
    let counter = HfTokenCounter::from_file(format!("{dir}tinyllama.json"), true)
        .expect("the fixture tokenizer")
        .with_chat_template(template);
    let chat = Prompt::Chat(vec![
        ChatMessage::system("You are a careful assistant. ".repeat(150)),
        ChatMessage::user("Summarise the conversation so far in one line."),
    ]);
    let want = BLOCK_TOKENS * BLOCKS;
    compare(
        "encode + token-block hashes vs count, 1.5k-token chat",
        11,
        40,
        || counter.count_prompt(&chat),
        || {
            let ids = counter.encode_prompt(&chat).unwrap_or_default();
            token_prefix_hashes(&ids[..ids.len().min(want)], BLOCK_TOKENS, BLOCKS)
        },
    )
}

fn micros(c: &Comparison) -> (f64, f64, f64) {
    let base = c.baseline.as_secs_f64() * 1e6;
    let cand = c.candidate.as_secs_f64() * 1e6;
    (base, cand, cand - base)
}

#[expect(
    clippy::expect_used,
    clippy::panic,
    reason = "bench setup: a broken fixture should stop the bench loudly"
)]
fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let s = setup();

    // Both sides must do the same work: 32 tokens, and the gateway settles.
    let direct = rt.block_on(direct_once(&s, TOKENS));
    let through = rt.block_on(gateway_settled(&s, TOKENS));
    if direct != u64::from(TOKENS) || through != u64::from(TOKENS) || s.gateway.active() != 0 {
        panic!(
            "fixture: direct {direct} tokens, gateway {through} tokens, {} active",
            s.gateway.active()
        );
    }

    if let Some(n) = std::env::var("PIPELINE_PROFILE")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    {
        let n = n.min(10_000_000);
        let tokens: u64 = rt.block_on(async {
            let mut tokens = 0;
            for _ in 0..n {
                tokens += gateway_settled(&s, TOKENS).await;
            }
            tokens
        });
        println!("profiled {n} gateway requests, {tokens} tokens");
        return;
    }

    let one = pipeline(&rt, &s, "pipeline 32 tok vs sim direct", TOKENS);
    let (base, cand, over) = micros(&one);
    println!("{one}");
    println!(
        "  per request: sim direct {base:.2} us, through the gateway {cand:.2} us, overhead {over:.2} us"
    );
    let short = pipeline(&rt, &s, "pipeline 1 tok vs sim direct", 1);
    let (base1, cand1, over1) = micros(&short);
    println!("{short}");
    println!(
        "  per request: sim direct {base1:.2} us, through the gateway {cand1:.2} us, overhead {over1:.2} us"
    );
    println!(
        "  overhead split: {over1:.2} us per request + {:.3} us per further token",
        (over - over1) / f64::from(TOKENS - 1)
    );

    let many = pipeline_concurrent(&rt, &s);
    let (base, cand, over) = micros(&many);
    let n = CONCURRENT as f64;
    println!("{many}");
    println!(
        "  per request: sim direct {:.2} us, through the gateway {:.2} us, overhead {:.2} us",
        base / n,
        cand / n,
        over / n
    );

    let route = routing();
    println!("{route}");

    #[cfg(feature = "tokenizers")]
    {
        let tokens = token_routing();
        let (base, cand, over) = micros(&tokens);
        println!("{tokens}");
        println!(
            "  per prompt: count {base:.1} us, encode + hashes {cand:.1} us, added {over:.1} us"
        );
    }

    let stats = s.sim.stats();
    println!(
        "  sanity: sim completed {} requests, gateway active {}",
        stats.completed,
        s.gateway.active()
    );
}
