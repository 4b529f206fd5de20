//! Exact counts with the real TinyLlama tokenizer, and the byte bound
//! holding over arbitrary Unicode.
#![cfg(feature = "tokenizers")]

use gateway_core::{ByteBound, ChatMessage, Prompt, TokenCount, TokenCounter};
use gateway_policy::HfTokenCounter;
use proptest::prelude::*;
use std::sync::LazyLock;

/// Loaded once: parsing the 3.6 MB file dominates otherwise.
fn counter() -> &'static HfTokenCounter {
    static COUNTER: LazyLock<HfTokenCounter> = LazyLock::new(
        #[expect(clippy::unwrap_used, reason = "test setup: the fixture must load")]
        || {
            let path = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../fixtures/tokenizers/tinyllama.json"
            );
            HfTokenCounter::from_file(path, true).unwrap()
        },
    );
    &COUNTER
}

#[test]
fn known_llama_counts() {
    let c = counter();
    // Llama-2 SentencePiece: [1 <s>, 15043 ▁Hello, 3186 ▁world]
    assert_eq!(
        c.count_prompt(&Prompt::Text("Hello world".into())),
        TokenCount::Exact(3)
    );
    assert_eq!(c.count_text("Hello world"), TokenCount::Exact(2));
    // Digits split one per token, after the dummy-prefix piece: ▁ 1 2 3
    assert_eq!(c.count_text("123"), TokenCount::Exact(4));
    // An unknown emoji falls back to its 4 bytes, after ▁.
    assert_eq!(c.count_text("🦀"), TokenCount::Exact(5));
    assert_eq!(
        c.count_prompt(&Prompt::Tokens(vec![1, 2, 3])),
        TokenCount::Exact(3)
    );
    assert_eq!(
        c.count_prompt(&Prompt::Text(String::new())),
        TokenCount::Exact(1)
    );
}

#[test]
fn chat_without_template_is_an_upper_bound() {
    let c = counter();
    let chat = Prompt::Chat(vec![ChatMessage::user("Hello world")]);
    let bound = ByteBound::default();
    assert_eq!(
        c.count_prompt(&chat),
        TokenCount::UpperBound(bound.fixed + 2 + bound.per_message)
    );
}

#[test]
fn a_missing_file_is_a_typed_error() {
    let err = HfTokenCounter::from_file("/nonexistent/tokenizer.json", true).unwrap_err();
    assert_eq!(err.path, "/nonexistent/tokenizer.json");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn byte_bound_never_undercounts(text in any::<String>()) {
        let c = counter();
        let exact = c.count_prompt(&Prompt::Text(text.clone())).value();
        let bound = ByteBound::default().count_prompt(&Prompt::Text(text.clone())).value();
        prop_assert!(exact <= bound, "{exact} > {bound} for {text:?}");
        let exact_text = c.count_text(&text).value();
        prop_assert!(exact_text <= ByteBound::default().count_text(&text).value());
    }

    /// Short texts (output pieces) are counted from a shared memo: asked
    /// twice, and through a clone, a text counts what its encoding has,
    /// without special tokens.
    #[test]
    fn short_text_counts_are_the_encodings_cold_and_warm(text in "[a-z é\n🙂]{0,60}") {
        let c = counter();
        let ids = c.encode_prompt(&Prompt::Text(text.clone())).unwrap();
        let expected = TokenCount::Exact(ids.len() as u64 - 1);
        prop_assert_eq!(c.count_text(&text), expected);
        prop_assert_eq!(c.count_text(&text), expected);
        prop_assert_eq!(c.clone().count_text(&text), expected);
    }

    /// The ids routing hashes are the ones the count is made of.
    #[test]
    fn encoded_ids_are_the_exact_count(text in any::<String>()) {
        let c = counter();
        let prompt = Prompt::Text(text.clone());
        let ids = c.encode_prompt(&prompt).unwrap();
        prop_assert_eq!(c.count_prompt(&prompt), TokenCount::Exact(ids.len() as u64));
        prop_assert_eq!(ids.first(), Some(&1), "BOS first for {:?}", text);
    }
}

/// The real-vLLM facts for the TinyLlama template: chat prompts are the
/// rendered template encoded without special tokens (no BOS in it).
#[test]
fn chat_with_the_template_is_exact() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/tokenizers/");
    let template = gateway_policy::ChatTemplate::from_file(
        format!("{dir}tinyllama.chat_template.jinja"),
        "<s>",
        "</s>",
    )
    .unwrap();
    let counter = HfTokenCounter::from_file(format!("{dir}tinyllama.json"), true)
        .unwrap()
        .with_chat_template(template);
    let chat = Prompt::Chat(vec![
        ChatMessage::system("You are terse."),
        ChatMessage::user("Hello there"),
    ]);
    assert_eq!(counter.count_prompt(&chat), TokenCount::Exact(30));
    let ids = counter.encode_prompt(&chat).unwrap();
    assert_eq!(ids.len(), 30);
    assert_eq!(ids[..6], [529, 29989, 5205, 29989, 29958, 13]);
    // Without a template a chat is only bounded: no ids.
    assert_eq!(
        HfTokenCounter::from_file(format!("{dir}tinyllama.json"), true)
            .unwrap()
            .encode_prompt(&chat),
        None
    );
    // Text prompts are unchanged: BOS + tokens.
    assert_eq!(
        counter.count_prompt(&Prompt::Text("Hello world".into())),
        TokenCount::Exact(3)
    );
}
