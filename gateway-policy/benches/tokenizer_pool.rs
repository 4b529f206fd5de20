//! Tokenization off the runtime: small requests' latency alone and while
//! 1 MiB prompts are being tokenized, with prompts counted inline on the
//! runtime ("inline", the behaviour before the pool) and in the
//! [`TokenizerPool`] ("pool"), in the same run, with the real TinyLlama
//! tokenizer.
//!
//! For each mode: `SMALL` small chat requests (4 clients, one after another
//! each) through [`Gateway::generate`] and a full drain, on a 2-worker
//! runtime; their p50 and p99 alone; then again while 2 clients keep
//! sending 1 MiB prompts; the ratio loaded/alone of the p99. Before it, the
//! inline-threshold numbers: the time to count prompts of growing size on
//! the calling thread against a hand-over of an empty job to the pool.
//!
//! `cargo bench -p gateway-policy --features tokenizers --bench tokenizer_pool`
//! (bounded: a few hundred requests per phase; set `SMALL=N` to change).
#![expect(
    clippy::print_stdout,
    clippy::unwrap_used,
    reason = "a benchmark prints its figures and fails loudly"
)]

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use futures::StreamExt;
use gateway_core::testkit::{MockBackend, Script};
use gateway_core::{ChatMessage, Money, Pricing, Prompt, TokenCounter};
use gateway_policy::{
    ChatTemplate, ClientRequest, Gateway, HfTokenCounter, MediaCosts, ModelSpec, Settings, Tenant,
    TokenizerPool, key_hash,
};

const MODEL: &str = "m";
/// Clients sending small requests at once.
const CLIENTS: usize = 4;
/// Clients sending 1 MiB prompts at once.
const BIG_CLIENTS: usize = 2;

fn counter() -> Arc<HfTokenCounter> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/tokenizers");
    let template = ChatTemplate::from_file(
        format!("{dir}/tinyllama.chat_template.jinja"),
        "<s>",
        "</s>",
    )
    .unwrap();
    // No segment cache: the 1 MiB prompts repeat, and the bench is about
    // tokenizing them.
    Arc::new(
        HfTokenCounter::from_file(format!("{dir}/tinyllama.json"), true)
            .unwrap()
            .with_chat_template(template)
            .with_tokenizer_cache_bytes(0),
    )
}

fn gateway(pool: TokenizerPool, counter: Arc<HfTokenCounter>) -> (Gateway, Arc<Tenant>) {
    let (mock, handle) = MockBackend::new("mock", MODEL);
    // The engine reports the prompt itself: only the gateway tokenizes.
    handle.set_default(Script::tokens(&["a", "b", "c", "d"], Duration::ZERO).with_prompt_tokens(9));
    let gateway = Gateway::builder(Settings {
        admission_wait: Duration::from_secs(30),
        ..Settings::default()
    })
    .tokenizer_pool(pool)
    .tenant(Tenant::new("t"), key_hash("sk"))
    .model(ModelSpec {
        name: MODEL.into(),
        pricing: Pricing {
            input: Money::ZERO,
            cached_input: Money::ZERO,
            output: Money::ZERO,
        },
        context_window: u32::MAX,
        default_max_tokens: 4,
        media: MediaCosts::default(),
        counter,
    })
    .backend(Arc::new(mock), MODEL, MODEL, None)
    .build()
    .unwrap();
    let tenant = gateway.authenticate(Some("sk")).unwrap();
    (gateway, tenant)
}

fn chat(text: String) -> Prompt {
    Prompt::Chat(vec![
        ChatMessage::system("You are a helpful assistant."),
        ChatMessage::user(text),
    ])
}

/// One request through the gateway and a full drain; its latency.
async fn one(gateway: &Gateway, tenant: &Arc<Tenant>, id: String, prompt: Prompt) -> Duration {
    let t0 = Instant::now();
    let guard = gateway.request_cancel();
    let cancel = guard.handle().clone();
    let request = ClientRequest::new(id, MODEL, prompt);
    let mut stream = gateway.generate(tenant, request, cancel).await.unwrap();
    while let Some(item) = stream.next().await {
        item.unwrap();
    }
    t0.elapsed()
}

/// `n` small requests from [`CLIENTS`] clients; their latencies, sorted.
async fn small(gateway: &Gateway, tenant: &Arc<Tenant>, n: usize, tag: &str) -> Vec<Duration> {
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (gateway, tenant, tag) = (gateway.clone(), tenant.clone(), tag.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..n / CLIENTS {
                let prompt = chat(format!(
                    "Question {i} from client {c}: what is the capital of France? Answer briefly."
                ));
                out.push(one(&gateway, &tenant, format!("{tag}-{c}-{i}"), prompt).await);
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    all
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The p99 of small requests alone and under 1 MiB prompts.
async fn run_mode(label: &str, pool: TokenizerPool, counter: Arc<HfTokenCounter>, n: usize) {
    let (gateway, tenant) = gateway(pool, counter);
    // Warm up.
    small(&gateway, &tenant, CLIENTS * 5, &format!("{label}-warm")).await;
    let alone = small(&gateway, &tenant, n, &format!("{label}-alone")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let bigs = Arc::new(AtomicU64::new(0));
    let big_text: Arc<str> = "lorem ipsum dolor sit amet ".repeat(1 << 20 >> 5).into();
    let mut big_tasks = Vec::new();
    for b in 0..BIG_CLIENTS {
        let (gateway, tenant, stop, bigs, text) = (
            gateway.clone(),
            tenant.clone(),
            stop.clone(),
            bigs.clone(),
            big_text.clone(),
        );
        big_tasks.push(tokio::spawn(async move {
            let mut i = 0;
            // Bounded: at most 200 big prompts per client.
            while !stop.load(Ordering::Relaxed) && i < 200 {
                let id = format!("big-{b}-{i}");
                one(&gateway, &tenant, id, chat(text.to_string())).await;
                bigs.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    // Let the big prompts get going.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let loaded = small(&gateway, &tenant, n, &format!("{label}-loaded")).await;
    stop.store(true, Ordering::Relaxed);
    for t in big_tasks {
        t.await.unwrap();
    }
    let (a99, l99) = (pct(&alone, 0.99), pct(&loaded, 0.99));
    println!(
        "{label:>6}: small alone p50 {:.2} ms p99 {:.2} ms | with 1 MiB prompts p50 {:.2} ms p99 {:.2} ms ({} big prompts tokenized) | p99 ratio loaded/alone {:.2}",
        ms(pct(&alone, 0.5)),
        ms(a99),
        ms(pct(&loaded, 0.5)),
        ms(l99),
        bigs.load(Ordering::Relaxed),
        l99.as_secs_f64() / a99.as_secs_f64(),
    );
}

/// Counting inline against handing an empty job to the pool.
async fn threshold(counter: &Arc<HfTokenCounter>) {
    let pool = TokenizerPool::new(NonZeroUsize::new(2).unwrap(), 64, 0);
    let reps = 200;
    let t0 = Instant::now();
    for _ in 0..reps {
        pool.run(1, Duration::from_secs(1), || 0u64).await.unwrap();
    }
    let handover = t0.elapsed() / reps;
    println!(
        "pool hand-over of an empty job: {:.1} µs",
        handover.as_secs_f64() * 1e6
    );
    for bytes in [256usize, 1 << 10, 4 << 10, 16 << 10, 64 << 10, 1 << 20] {
        let prompt = chat("lorem ipsum dolor sit amet ".repeat(bytes / 27 + 1));
        let reps = (4 << 20) / bytes.max(1);
        let reps = reps.clamp(3, 200) as u32;
        let t0 = Instant::now();
        for _ in 0..reps {
            std::hint::black_box(counter.count_prompt(&prompt));
        }
        let each = t0.elapsed() / reps;
        println!(
            "count_prompt of a {bytes:>7}-byte chat inline: {:>9.1} µs",
            each.as_secs_f64() * 1e6
        );
    }
}

fn main() {
    let n: usize = std::env::var("SMALL")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let counter = counter();
    runtime.block_on(async {
        threshold(&counter).await;
        run_mode("inline", TokenizerPool::inline(), counter.clone(), n).await;
        let pool = TokenizerPool::new(NonZeroUsize::new(2).unwrap(), 256, 16 << 10);
        run_mode("pool, 2 threads", pool, counter.clone(), n).await;
        // One core left to the runtime on this 2-core machine.
        let pool = TokenizerPool::new(NonZeroUsize::new(1).unwrap(), 256, 16 << 10);
        run_mode("pool, 1 thread", pool, counter.clone(), n).await;
    });
}
