//! The tokenizer's segment cache: the estimate of a RAG-style chat (a
//! ~1,500-word system prompt shared by every request, a user turn that
//! changes each time) with the real TinyLlama tokenizer and template,
//! uncached (the whole rendered prompt encoded, as before the cache)
//! against cached and warm (the system prompt's piece found in the
//! tenant's cache, the rest encoded), in the same run; the ratio is what
//! to compare on a shared machine. Both sides render the template and
//! return the prompt's ids (what an estimate with prefix-affinity routing
//! does); the bench checks they are the same ids. Then the same chat with
//! a system prompt the cache has not seen (a new document, its words
//! known: encoded word by word, each word's ids from the word cache).
//! Then a ~300-byte chat
//! (a short system prompt and a user turn), with a scope and without,
//! against its whole text's encode. Every estimate has a user turn no
//! earlier one had, and the model's own word cache is full first (as in a
//! gateway that has served many), so the user turn is tokenized each time.
//!
//! `cargo bench -p gateway-policy --features tokenizers --bench tokenizer_cache`
#![expect(
    clippy::print_stdout,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark prints its figures and fails loudly"
)]

use gateway_core::testkit::bench::{Comparison, compare};
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

/// Fills the model's own word cache (BPE keeps up to 10,000 words of
/// fewer than 256 bytes and then stops adding) with one-off texts, after
/// one request: as in a gateway that has served many distinct user
/// turns, the template's fixed pieces are in it and a new user turn is not.
fn fill_model_cache(counter: &HfTokenCounter, first: &Prompt) {
    counter.encode_prompt(first).expect("ids");
    for i in 0..10_050 {
        counter.count_text(&format!("one-off text number {i}"));
    }
}

/// The per-estimate figures of a comparison.
fn report(c: &Comparison, base: &str, cand: &str) {
    println!("{c}");
    let (b, n) = (
        c.baseline.as_secs_f64() * 1e6,
        c.candidate.as_secs_f64() * 1e6,
    );
    println!(
        "  per estimate: {base} {b:.1} us, {cand} {n:.1} us: {:.2}x faster ({:.0} vs {:.0} estimates/s on one core)",
        b / n,
        1e6 / b,
        1e6 / n
    );
}

/// A user turn that no earlier request had.
fn user_turn(i: usize) -> String {
    format!(
        "Question {i}: what did invoice {} cost, and when is it due?",
        i * 31 % 7
    )
}

fn main() {
    let uncached = counter(0);
    let cached = counter(DEFAULT_TOKENIZER_CACHE_BYTES);
    let system = system_prompt();
    let short_system = "You are a helpful assistant for the billing team. Answer briefly, cite the invoice number, and say when you do not know.";
    let long_chat = |i: usize| {
        Prompt::Chat(vec![
            ChatMessage::system(system.as_str()),
            ChatMessage::user(user_turn(i)),
        ])
    };
    // A document the cache has not seen (its first word differs), its
    // words known: a new retrieved document or a first request.
    let new_document = |i: usize| {
        Prompt::Chat(vec![
            ChatMessage::system(format!("Document {i}. {system}")),
            ChatMessage::user(user_turn(i)),
        ])
    };
    let short_chat = |i: usize| {
        Prompt::Chat(vec![
            ChatMessage::system(short_system),
            ChatMessage::user(format!(
                "{} Please answer in one sentence, with the amount in euros.",
                user_turn(i)
            )),
        ])
    };
    let plain = ChatInputs::default();
    let tenant = ChatInputs::default().with_scope(Some("tenant-a"));
    for c in [&uncached, &cached] {
        fill_model_cache(c, &long_chat(0));
        fill_model_cache(c, &short_chat(0));
    }
    // Both sides' ids agree, cold and warm.
    for i in 0..64 {
        for p in [long_chat(i), short_chat(i), new_document(i)] {
            let whole = uncached.encode_request(&p, plain).expect("ids");
            assert_eq!(cached.encode_request(&p, tenant).expect("ids"), whole);
            assert_eq!(cached.encode_request(&p, tenant).expect("ids"), whole);
            assert_eq!(cached.encode_request(&p, plain).expect("ids"), whole);
        }
    }
    let render = |p: &Prompt| match p {
        Prompt::Chat(m) => m.iter().map(|m| m.content.len()).sum::<usize>(),
        _ => 0,
    };
    println!(
        "system prompt: {} words, {} bytes; the rendered chat: {} tokens; the short chat: {} bytes of content, {} tokens",
        system.split_whitespace().count(),
        system.len(),
        uncached
            .encode_request(&long_chat(0), plain)
            .expect("ids")
            .len(),
        render(&short_chat(0)),
        uncached
            .encode_request(&short_chat(0), plain)
            .expect("ids")
            .len(),
    );
    // Every estimate has a user turn no earlier one had.
    let (mut a, mut b) = (1usize << 20, 2usize << 20);
    type Chat<'a> = &'a dyn Fn(usize) -> Prompt;
    let rows: [(&str, Chat<'_>, ChatInputs<'_>, usize, &str); 4] = [
        (
            "long chat: cached warm vs whole encode_fast",
            &long_chat,
            tenant,
            40,
            "cached warm",
        ),
        (
            "long chat, new document: pieces vs whole encode_fast",
            &new_document,
            tenant,
            40,
            "pieces",
        ),
        (
            "short chat: scoped vs whole encode_fast",
            &short_chat,
            tenant,
            400,
            "scoped",
        ),
        (
            "short chat: no scope vs whole encode_fast",
            &short_chat,
            plain,
            400,
            "no scope",
        ),
    ];
    for (title, chat, scope, iterations, label) in rows {
        let c = compare(
            title,
            11,
            iterations,
            || {
                a += 1;
                uncached.encode_request(&chat(a), plain)
            },
            || {
                b += 1;
                cached.encode_request(&chat(b), scope)
            },
        );
        report(&c, "whole", label);
    }
    let s = cached.tokenizer_cache_stats().expect("the cache is on");
    println!("  cache: {s:?}");
    if s.hits == 0 {
        panic!("the cache was not used");
    }
}
