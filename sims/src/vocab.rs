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

/// How many of a simulator's first output ids (`id(0)`, `id(1)`, ...) the
/// token-id prompt `prompt` ends with, fewer than `natural` (0 when it is
/// not a list of ids): where a continuation of its own output resumes.
pub(crate) fn continued_from(prompt: &Value, natural: u32, id: impl Fn(u32) -> u64) -> u32 {
    let Some(ids) = prompt.as_array() else {
        return 0;
    };
    let ids: Vec<Option<u64>> = ids.iter().map(Value::as_u64).collect();
    // The longest tail that is ids 0, 1, ...: the earliest start.
    (0..ids.len())
        .find_map(|start| {
            let tail = &ids[start..];
            let k = u32::try_from(tail.len()).ok()?;
            let ours = tail.iter().zip(0u32..).all(|(got, i)| *got == Some(id(i)));
            (ours && k < natural).then_some(k)
        })
        .unwrap_or(0)
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
