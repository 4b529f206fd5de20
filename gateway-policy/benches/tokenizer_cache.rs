//! The tokenizer's segment cache: the estimate of a RAG-style chat (a
//! ~1,500-word system prompt shared by every request, a user turn that
//! changes each time) with the real TinyLlama tokenizer and template,
//! uncached (the whole rendered prompt encoded, as before the cache)
//! against cached and warm (the system prompt's piece found in the
//! tenant's cache, the rest encoded), in the same run; the ratio is what
//! to compare on a shared machine. Both sides render the template and
//! return the prompt's ids (what an estimate with prefix-affinity routing
//! does); the bench checks they are the same ids.
//!
//! `cargo bench -p gateway-policy --features tokenizers --bench tokenizer_cache`
#![expect(
    clippy::print_stdout,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark prints its figures and fails loudly"
)]

use gateway_core::testkit::bench::compare;
use gateway_core::{ChatInputs, ChatMessage, Prompt, TokenCounter};
use gateway_policy::{ChatTemplate, DEFAULT_TOKENIZER_CACHE_BYTES, HfTokenCounter};

fn counter(cache_bytes: usize) -> HfTokenCounter {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/tokenizers/");
    let template =
        ChatTemplate::from_file(format!("{dir}tinyllama.chat_template.jinja"), "<s>", "</s>")
            .expect("the fixture template");
    HfTokenCounter::from_file(format!("{dir}tinyllama.json"), true)
        .expect("the fixture tokenizer")
        .with_chat_template(template)
        .with_tokenizer_cache_bytes(cache_bytes)
}

/// About 1,500 words of instructions and retrieved documents.
fn system_prompt() -> String {
    let words = [
        "You",
        "are",
        "a",
        "careful",
        "assistant.",
        "Answer",
        "from",
        "the",
        "documents",
        "below,",
        "cite",
        "them",
        "by",
        "number;",
        "never",
        "invent",
        "facts.",
        "The",
        "customer's",
        "account",
        "(id",
        "4711)",
        "shows",
        "3",
        "invoices",
        "dated",
        "2024-05-01,",
        "2024-06-01",
        "and",
        "2024-07-01.",
        "Refunds",
        "take",
        "five",
        "business",
        "days.",
    ];
    let mut out = String::new();
    for i in 0..1500 {
        out.push_str(words[(i * 7 + i / 35) % words.len()]);
        out.push(if i % 97 == 96 { '\n' } else { ' ' });
    }
    out
}

fn main() {
    let uncached = counter(0);
    let cached = counter(DEFAULT_TOKENIZER_CACHE_BYTES);
    let system = system_prompt();
    // 64 different user turns, cycled: each request's turn differs from
    // the one before.
    let prompts: Vec<Prompt> = (0..64)
        .map(|i| {
            Prompt::Chat(vec![
                ChatMessage::system(system.as_str()),
                ChatMessage::user(format!(
                    "Question {i}: what did invoice {} cost, and when is it due?",
                    i * 31 % 7
                )),
            ])
        })
        .collect();
    let plain = ChatInputs::default();
    let tenant = ChatInputs::default().with_scope(Some("tenant-a"));
    for p in &prompts {
        let whole = uncached.encode_request(p, plain).expect("ids");
        assert_eq!(cached.encode_request(p, tenant).expect("ids"), whole);
    }
    let tokens = uncached
        .encode_request(&prompts[0], plain)
        .expect("ids")
        .len();
    println!(
        "system prompt: {} words, {} bytes; the rendered chat: {tokens} tokens",
        system.split_whitespace().count(),
        system.len()
    );
    let (mut a, mut b) = (0usize, 0usize);
    let c = compare(
        "chat estimate: cached warm vs uncached",
        11,
        40,
        || {
            a += 1;
            uncached.encode_request(&prompts[a % prompts.len()], plain)
        },
        || {
            b += 1;
            cached.encode_request(&prompts[b % prompts.len()], tenant)
        },
    );
    println!("{c}");
    let (base, cand) = (
        c.baseline.as_secs_f64() * 1e6,
        c.candidate.as_secs_f64() * 1e6,
    );
    println!(
        "  per estimate: uncached {base:.1} us, cached warm {cand:.1} us: {:.1}x faster ({:.0} vs {:.0} estimates/s on one core)",
        base / cand,
        1e6 / base,
        1e6 / cand
    );
    let s = cached.tokenizer_cache_stats().expect("the cache is on");
    println!(
        "  cache: {} hits, {} misses, {} entries, {} bytes",
        s.hits, s.misses, s.entries, s.bytes
    );
    if s.hits == 0 {
        panic!("the cache was not used");
    }
}
