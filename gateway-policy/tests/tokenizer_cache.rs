//! The tokenizer's segment cache with the real TinyLlama tokenizer and
//! chat template: a long shared system prompt and changing user turns give
//! exactly the ids of the whole prompt's encode, cold and warm; the cache
//! is kept per scope (the tenant, set by the pipeline) and bounded.
#![cfg(feature = "tokenizers")]
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use gateway_core::testkit::{MockBackend, Script};
use gateway_core::*;
use gateway_policy::*;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/tokenizers/");

fn counter(cache_bytes: usize) -> HfTokenCounter {
    let template =
        ChatTemplate::from_file(format!("{DIR}tinyllama.chat_template.jinja"), "<s>", "</s>")
            .unwrap();
    HfTokenCounter::from_file(format!("{DIR}tinyllama.json"), true)
        .unwrap()
        .with_chat_template(template)
        .with_tokenizer_cache_bytes(cache_bytes)
}

/// A RAG-style system prompt of about 1,500 words: instructions, numbers,
/// punctuation, accents and line breaks.
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
        "Résumé:",
        "the",
        "customer's",
        "account",
        "(id",
        "4711)",
        "shows",
        "3",
        "invoices",
        "—",
        "2024-05-01,",
        "2024-06-01",
        "and",
        "2024-07-01.",
    ];
    let mut out = String::new();
    for i in 0..1500 {
        out.push_str(words[i % words.len()]);
        out.push(if i % 97 == 96 { '\n' } else { ' ' });
    }
    out.push_str("End of documents.");
    out
}

fn assistant(content: &str) -> ChatMessage {
    ChatMessage::new(Role::Assistant, content)
}

/// Conversations sharing the system prompt, with user turns that stress
/// the pieces' edges.
fn conversations(system: &str) -> Vec<Vec<ChatMessage>> {
    let long_user = "Please summarize every invoice in detail. ".repeat(20);
    let turns = [
        "What is the total of the invoices?",
        "  leading and trailing spaces  ",
        "\nnewlines\n\nin the middle\n",
        "unicode: é ü 漢字 and emoji 🙂🦀",
        "the literal text </s> and <s> and <unk> inside",
        "</s>",
        "<s>starts with a special token",
        "",
        " ",
        "▁already a metaspace",
        long_user.as_str(),
    ];
    let mut out = Vec::new();
    for t in turns {
        out.push(vec![ChatMessage::system(system), ChatMessage::user(t)]);
    }
    // Multi-turn, with the long user turn repeated (a long piece after
    // `</s>` that is cached too).
    out.push(vec![
        ChatMessage::system(system),
        ChatMessage::user(long_user.as_str()),
        assistant("Sure. The invoices are 3, dated May to July."),
        ChatMessage::user("And the first one's amount?"),
    ]);
    out.push(vec![
        ChatMessage::system(system),
        ChatMessage::user("hi"),
        assistant(""),
        ChatMessage::user(long_user.as_str()),
    ]);
    // System prompts with spaces and an added token at their edges.
    out.push(vec![
        ChatMessage::system(format!(" {system} ")),
        ChatMessage::user("x"),
    ]);
    out.push(vec![
        ChatMessage::system(format!("</s>{system}<s>")),
        ChatMessage::user("y"),
    ]);
    out
}

fn scoped(scope: &str) -> ChatInputs<'_> {
    ChatInputs::default().with_scope(Some(scope))
}

#[test]
fn cached_ids_are_the_whole_prompts_exactly_cold_and_warm() {
    let c = counter(DEFAULT_TOKENIZER_CACHE_BYTES);
    let uncached = counter(0);
    assert!(uncached.tokenizer_cache_stats().is_none());
    let system = system_prompt();
    assert!((1400..1700).contains(&system.split_whitespace().count()));
    for (i, messages) in conversations(&system).into_iter().enumerate() {
        let prompt = Prompt::Chat(messages);
        // Today's path: the whole rendered text encoded at once.
        let whole = uncached
            .encode_request(&prompt, ChatInputs::default())
            .unwrap();
        assert_eq!(
            c.encode_request(&prompt, ChatInputs::default()).unwrap(),
            whole,
            "{i}: no scope"
        );
        // The short pieces are stored at their second sighting and found
        // at the third.
        for round in ["cold", "seen", "warm"] {
            assert_eq!(
                c.encode_request(&prompt, scoped("a")).unwrap(),
                whole,
                "{i}: {round}"
            );
            assert_eq!(
                c.count_request(&prompt, scoped("a")),
                TokenCount::Exact(whole.len() as u64),
                "{i}: {round} count"
            );
        }
    }
    let s = c.tokenizer_cache_stats().unwrap();
    // The system prompt missed once per distinct edge, then hit.
    assert!(s.hits > 30 && s.misses < 10, "{s:?}");
}

/// Chats with a short system prompt, whose pieces are mostly under 256
/// bytes, give the same ids too, their recurring short pieces from the
/// short-piece memo.
#[test]
fn short_chats_are_exact_cold_and_warm() {
    let c = counter(DEFAULT_TOKENIZER_CACHE_BYTES);
    let uncached = counter(0);
    for (i, messages) in conversations("Be brief.").into_iter().enumerate() {
        let prompt = Prompt::Chat(messages);
        let whole = uncached
            .encode_request(&prompt, ChatInputs::default())
            .unwrap();
        for round in 0..3 {
            for inputs in [ChatInputs::default(), scoped("a"), scoped("b")] {
                assert_eq!(
                    c.encode_request(&prompt, inputs).unwrap(),
                    whole,
                    "{i}: round {round}"
                );
            }
        }
    }
    let s = c.tokenizer_cache_stats().unwrap();
    assert!(s.short_hits > 30 && s.short_entries > 10, "{s:?}");
}

#[test]
fn a_scope_is_never_served_another_scopes_entries() {
    let c = counter(DEFAULT_TOKENIZER_CACHE_BYTES);
    let system = system_prompt();
    let prompt = Prompt::Chat(vec![ChatMessage::system(&system), ChatMessage::user("hi")]);
    let stats = || c.tokenizer_cache_stats().unwrap();
    let a = c.encode_request(&prompt, scoped("tenant-a")).unwrap();
    assert_eq!((stats().hits, stats().misses, stats().entries), (0, 1, 1));
    assert_eq!(c.encode_request(&prompt, scoped("tenant-a")).unwrap(), a);
    assert_eq!((stats().hits, stats().misses, stats().entries), (1, 1, 1));
    // The same text for another tenant: a miss and an entry of its own.
    assert_eq!(c.encode_request(&prompt, scoped("tenant-b")).unwrap(), a);
    assert_eq!((stats().hits, stats().misses, stats().entries), (1, 2, 2));
    // A prefix of a scope's name is another scope.
    assert_eq!(c.encode_request(&prompt, scoped("tenant-")).unwrap(), a);
    assert_eq!((stats().misses, stats().entries), (3, 3));
    // No scope: nothing looked up, nothing stored.
    c.count_prompt(&prompt);
    assert_eq!((stats().hits, stats().misses, stats().entries), (1, 3, 3));
}

#[test]
fn the_cache_stays_under_its_bound() {
    let bound = 256 << 10;
    let c = counter(bound);
    let system = system_prompt();
    for i in 0..200 {
        let prompt = Prompt::Chat(vec![
            ChatMessage::system(format!("{i} {}", &system[..4000])),
            ChatMessage::user("hi"),
        ]);
        c.count_request(&prompt, scoped("a"));
        let s = c.tokenizer_cache_stats().unwrap();
        assert!(s.bytes <= bound, "{i}: {s:?}");
    }
    let s = c.tokenizer_cache_stats().unwrap();
    assert!(s.entries >= 10 && s.misses == 200, "{s:?}");
}

/// The pipeline scopes the cache by tenant: the same long prompt from a
/// second tenant misses, from the first again hits.
#[tokio::test]
async fn the_pipeline_scopes_the_cache_by_tenant() {
    let counter = Arc::new(counter(DEFAULT_TOKENIZER_CACHE_BYTES));
    let (mock, handle) = MockBackend::new("mock", "m");
    handle.set_default(Script::tokens(&["a"], Duration::ZERO).with_prompt_tokens(9));
    let gateway = Gateway::builder(Settings::default())
        .tenant(Tenant::new("a"), key_hash("sk-a"))
        .tenant(Tenant::new("b"), key_hash("sk-b"))
        .model(ModelSpec {
            name: "m".into(),
            pricing: Pricing {
                input: Money::ZERO,
                cached_input: Money::ZERO,
                output: Money::ZERO,
            },
            context_window: u32::MAX,
            default_max_tokens: 4,
            media: MediaCosts::default(),
            counter: counter.clone(),
        })
        .backend(Arc::new(mock), "m", "m", None)
        .build()
        .unwrap();
    let system = system_prompt();
    let send = |key: &'static str, id: &'static str| {
        let (gateway, system) = (gateway.clone(), system.clone());
        async move {
            let tenant = gateway.authenticate(Some(key)).unwrap();
            let prompt = Prompt::Chat(vec![ChatMessage::system(system), ChatMessage::user(id)]);
            let guard = gateway.request_cancel();
            let cancel = guard.handle().clone();
            let request = ClientRequest::new(id, "m", prompt);
            let mut stream = gateway.generate(&tenant, request, cancel).await.unwrap();
            while let Some(item) = stream.next().await {
                item.unwrap();
            }
        }
    };
    let stats = || counter.tokenizer_cache_stats().unwrap();
    send("sk-a", "1").await;
    assert_eq!((stats().hits, stats().misses), (0, 1));
    send("sk-a", "2").await;
    assert_eq!((stats().hits, stats().misses), (1, 1));
    send("sk-b", "3").await;
    assert_eq!((stats().hits, stats().misses, stats().entries), (1, 2, 2));
    // The user turns' words are in the word cache, counted in the bytes.
    assert!(
        stats().word_bytes > 0 && stats().word_entries > 0,
        "{:?}",
        stats()
    );
    // The same figures on /metrics, as often as it is scraped.
    for _ in 0..2 {
        let text = gateway.render_metrics();
        for line in [
            "gateway_tokenizer_cache_hits_total{model=\"m\"} 1",
            "gateway_tokenizer_cache_misses_total{model=\"m\"} 2",
            &format!(
                "gateway_tokenizer_cache_bytes{{model=\"m\"}} {}",
                stats().bytes + stats().short_bytes + stats().word_bytes
            ),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }
}
