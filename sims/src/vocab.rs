//! The deterministic token texts every simulator generates, and how the
//! OpenAI-style simulators count a prompt.

use serde_json::Value;

/// The token texts, in order, repeated (multi-byte characters included).
pub const VOCABULARY: [&str; 10] = [
    "Hel", "lo", " wor", "ld", ",", " é", "🙂", " 日本", " sea", "!",
];

/// The text of token `i`.
pub fn token_text(i: u32) -> &'static str {
    VOCABULARY[i as usize % VOCABULARY.len()]
}

/// The id of token `i` (its place in [`VOCABULARY`], plus 100).
pub fn token_id(i: u32) -> u32 {
    (i as usize % VOCABULARY.len()) as u32 + 100
}

/// The text of the first `n` tokens.
pub fn text_of(n: u32) -> String {
    (0..n).map(token_text).collect()
}

/// Words in `s` (whitespace-separated).
pub(crate) fn words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

/// Prompt tokens of a chat body's `messages`: words plus 3 per message.
pub(crate) fn chat_prompt_tokens(body: &Value) -> u64 {
    body["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| 3 + words(m["content"].as_str().unwrap_or_default()))
                .sum()
        })
        .unwrap_or(0)
}
