//! Benchmarks of the OpenAI SSE codec, each against a naive baseline
//! measured in the same run (ratios, since the machine is shared):
//!
//! - encode: one streamed chat chunk by [`ChunkEncoder`] against
//!   `serde_json::to_vec` of the equivalent `serde_json::json!` value, and
//!   against `serde_json::to_writer` of borrowed serde structs into a
//!   reused buffer (the alternative to writing the JSON by hand);
//! - encode through `ChunkEncoder::encode` (the event dispatch that tells
//!   text from structured output) against `ChunkEncoder::delta` on the text;
//! - decode: a vLLM-shaped stream of 64 chunks, fed to [`SseDecoder`] in
//!   1500-byte reads, against splitting the same bytes at `\n\n` in one
//!   piece and copying each payload out;
//! - a text chunk read into a `Delta` by [`chunk_delta`] (every kind of
//!   output typed) against the text-only read the adapters did before
//!   (reasoning and tool calls skipped as ignored values): what typed output
//!   costs a plain text stream;
//! - with the crate feature `fuzzing` (the adapters' chunk reader is
//!   private): an engine's chunk read as the OpenAI-compatible adapters'
//!   `on_event` reads it (the strict fast path, else serde; then choice 0's
//!   `Delta`) against serde alone (their read before the fast path), for a
//!   text chunk, for the 19 chunks of a short answer (role chunk, 16
//!   text chunks, finish chunk, usage chunk), and for a tool-call chunk
//!   the fast path leaves to serde late (what one miss costs).
#![expect(
    clippy::print_stdout,
    reason = "the bench prints each candidate/baseline ratio for the log"
)]

use std::hint::black_box;

use bytes::{BufMut, BytesMut};
use gateway_adapters::openai::{ChunkEncoder, Endpoint, SseDecoder, chunk_delta};
use gateway_core::testkit::bench::compare;
use gateway_core::{Delta as TokenDelta, TokenEvent};
use serde::{Deserialize, Serialize};

const TEXTS: [&str; 8] = [
    "Hello",
    ",",
    " world",
    "!",
    " The",
    " café",
    " is",
    " \"open\"\n",
];
const CHUNKS: usize = 64;
const READ: usize = 1500;
const ID: &str = "chatcmpl-req-5f3a2b-17";
const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
const CREATED: u64 = 1_767_225_600;

#[derive(Serialize)]
struct Delta<'a> {
    content: &'a str,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'a str>,
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'a str,
    created: u64,
    model: &'a str,
    choices: [Choice<'a>; 1],
}

fn encode() {
    let mut encoder = ChunkEncoder::new(Endpoint::Chat, "req-5f3a2b-17", CREATED, MODEL, true);
    // The first delta carries the role chunk; measure the steady state.
    black_box(encoder.delta("warm-up"));
    let (mut i, mut j) = (0usize, 0usize);
    let c = compare(
        "encode chat chunk vs json! + to_vec",
        21,
        20_000,
        || {
            i = i.wrapping_add(1);
            let text = TEXTS[i % TEXTS.len()];
            serde_json::to_vec(&serde_json::json!({
                "id": ID,
                "object": "chat.completion.chunk",
                "created": CREATED,
                "model": MODEL,
                "choices": [{"index": 0, "delta": {"content": text},
                             "logprobs": null, "finish_reason": null}],
            }))
            .map(|v| v.len())
            .unwrap_or(0)
        },
        || {
            j = j.wrapping_add(1);
            encoder.delta(TEXTS[j % TEXTS.len()]).len()
        },
    );
    println!("{c}");

    let mut buf = BytesMut::with_capacity(4096);
    let c = compare(
        "encode chat chunk vs serde structs to_writer",
        21,
        20_000,
        || {
            i = i.wrapping_add(1);
            let chunk = Chunk {
                id: ID,
                object: "chat.completion.chunk",
                created: CREATED,
                model: MODEL,
                choices: [Choice {
                    index: 0,
                    delta: Delta {
                        content: TEXTS[i % TEXTS.len()],
                    },
                    logprobs: None,
                    finish_reason: None,
                }],
            };
            buf.extend_from_slice(b"data: ");
            let ok = serde_json::to_writer(BufMut::writer(&mut buf), &chunk).is_ok();
            buf.extend_from_slice(b"\n\n");
            let frame = buf.split().freeze();
            usize::from(ok) + frame.len()
        },
        || {
            j = j.wrapping_add(1);
            encoder.delta(TEXTS[j % TEXTS.len()]).len()
        },
    );
    println!("{c}");
}

fn encode_events() {
    let encoder = || {
        let mut e = ChunkEncoder::new(Endpoint::Chat, "req-5f3a2b-17", CREATED, MODEL, true);
        black_box(e.delta("warm-up"));
        e
    };
    let (mut by_text, mut by_event) = (encoder(), encoder());
    let events: Vec<TokenEvent> = TEXTS
        .iter()
        .map(|t| TokenEvent::Delta(TokenDelta::text(*t, 1)))
        .collect();
    let (mut i, mut j) = (0usize, 0usize);
    let c = compare(
        "encode(event) vs delta(text)",
        21,
        20_000,
        || {
            i = i.wrapping_add(1);
            by_text.delta(TEXTS[i % TEXTS.len()]).len()
        },
        || {
            j = j.wrapping_add(1);
            by_event
                .encode(&events[j % events.len()])
                .map_or(0, |b| b.len())
        },
    );
    println!("{c}");
}

/// The chunk types the OpenAI-compatible adapters read before output beyond
/// text was typed: text only, the rest skipped.
#[derive(Default, Deserialize)]
#[serde(default)]
struct TextChunk {
    choices: Option<Vec<TextChoice>>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct TextChoice {
    index: Option<u32>,
    delta: Option<TextDelta>,
    text: Option<String>,
    finish_reason: Option<String>,
    token_ids: Option<Vec<u32>>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct TextDelta {
    role: Option<String>,
    content: Option<String>,
    reasoning_content: Option<serde::de::IgnoredAny>,
    reasoning: Option<serde::de::IgnoredAny>,
    tool_calls: Option<serde::de::IgnoredAny>,
}

/// What the adapters did with a chunk before (`choice_output` of
/// engines/openai_compat.rs then), text cloned out of the choice included.
fn text_only_delta(data: &str) -> Option<TokenDelta> {
    let chunk: TextChunk = serde_json::from_str(data).ok()?;
    let choice = chunk
        .choices?
        .into_iter()
        .find(|c| c.index.unwrap_or(0) == 0)?;
    let (text, has_output, role_only) = match &choice.delta {
        Some(delta) => {
            let has_other = delta.reasoning_content.is_some()
                || delta.reasoning.is_some()
                || delta.tool_calls.is_some();
            let text = delta.content.clone().unwrap_or_default();
            let has_output = delta.content.is_some() || has_other;
            (text, has_output, delta.role.is_some() && !has_other)
        }
        None => {
            let text = choice.text.clone().unwrap_or_default();
            let has_output = choice.text.is_some();
            (text, has_output, false)
        }
    };
    let tokens = match &choice.token_ids {
        Some(ids) => u32::try_from(ids.len()).unwrap_or(u32::MAX),
        None if role_only => u32::from(!text.is_empty()),
        None => u32::from(has_output),
    };
    black_box(&choice.finish_reason);
    (tokens > 0).then(|| TokenDelta::text(text, tokens))
}

fn decode_chunks() {
    // vLLM's text chunks, as the engine writes them.
    let frames: Vec<String> = TEXTS
        .iter()
        .map(|t| {
            format!(
                r#"{{"id":"{ID}","object":"chat.completion.chunk","created":{CREATED},"model":"{MODEL}","choices":[{{"index":0,"delta":{{"content":{}}},"logprobs":null,"finish_reason":null}}]}}"#,
                serde_json::Value::from(*t)
            )
        })
        .collect();
    for frame in &frames {
        assert_eq!(chunk_delta(frame), text_only_delta(frame));
    }
    let (mut i, mut j) = (0usize, 0usize);
    let c = compare(
        "text chunk to Delta: typed vs text-only",
        21,
        20_000,
        || {
            i = i.wrapping_add(1);
            text_only_delta(&frames[i % frames.len()]).map_or(0, |d| d.tokens)
        },
        || {
            j = j.wrapping_add(1);
            chunk_delta(&frames[j % frames.len()]).map_or(0, |d| d.tokens)
        },
    );
    println!("{c}");
}

/// vLLM's chunks of a short chat answer, as the engine writes them: the
/// role chunk, 16 text chunks, the finish chunk, the usage chunk.
#[cfg(feature = "fuzzing")]
fn vllm_answer() -> Vec<String> {
    let head = format!(
        r#""id":"{ID}","object":"chat.completion.chunk","created":{CREATED},"model":"{MODEL}""#
    );
    let mut chunks = vec![format!(
        r#"{{{head},"choices":[{{"index":0,"delta":{{"role":"assistant","content":""}},"logprobs":null,"finish_reason":null}}],"prompt_token_ids":null}}"#
    )];
    chunks.extend((0..16).map(|i| {
        format!(
            r#"{{{head},"choices":[{{"index":0,"delta":{{"content":{}}},"logprobs":null,"finish_reason":null}}]}}"#,
            serde_json::Value::from(TEXTS[i % TEXTS.len()])
        )
    }));
    chunks.push(format!(
        r#"{{{head},"choices":[{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"length","stop_reason":null,"token_ids":null}}]}}"#
    ));
    chunks.push(format!(
        r#"{{{head},"choices":[],"usage":{{"prompt_tokens":42,"total_tokens":58,"completion_tokens":16,"prompt_tokens_details":null}},"metrics":null}}"#
    ));
    chunks
}

#[cfg(feature = "fuzzing")]
fn engine_chunks() {
    use gateway_adapters::fuzzing::{ChunkPath, engine_chunk_delta};
    let answer = vllm_answer();
    for chunk in &answer {
        assert!(
            engine_chunk_delta(chunk, ChunkPath::Fast).is_some(),
            "{chunk}"
        );
        assert_eq!(
            engine_chunk_delta(chunk, ChunkPath::Adapter),
            engine_chunk_delta(chunk, ChunkPath::Serde)
        );
    }
    let read = |chunk: &str, path| {
        engine_chunk_delta(chunk, path)
            .flatten()
            .map_or(0, |d| d.tokens)
    };
    let text = &answer[1..17];
    let (mut i, mut j) = (0usize, 0usize);
    let c = compare(
        "engine text chunk: fast path vs serde",
        21,
        20_000,
        || {
            i = i.wrapping_add(1);
            read(&text[i % text.len()], ChunkPath::Serde)
        },
        || {
            j = j.wrapping_add(1);
            read(&text[j % text.len()], ChunkPath::Adapter)
        },
    );
    println!("{c}");
    let c = compare(
        "engine 19-chunk answer: fast path vs serde",
        21,
        1_000,
        || {
            answer
                .iter()
                .map(|chunk| read(chunk, ChunkPath::Serde))
                .sum::<u32>()
        },
        || {
            answer
                .iter()
                .map(|chunk| read(chunk, ChunkPath::Adapter))
                .sum::<u32>()
        },
    );
    println!("{c}");
    let per = |d: std::time::Duration| d.as_secs_f64() * 1e9 / answer.len() as f64;
    println!(
        "{:<44} baseline {:>10.1} ns/chunk  candidate {:>10.1} ns/chunk",
        "engine answer per chunk",
        per(c.baseline),
        per(c.candidate),
    );
    let tool = format!(
        r#"{{"id":"{ID}","object":"chat.completion.chunk","created":{CREATED},"model":"{MODEL}","choices":[{{"index":0,"delta":{{"content":null,"tool_calls":[{{"index":0,"function":{{"arguments":"{{\"ci"}}}}]}},"logprobs":null,"finish_reason":null}}]}}"#
    );
    assert!(engine_chunk_delta(&tool, ChunkPath::Fast).is_none());
    let c = compare(
        "engine tool-call chunk, a miss, vs serde",
        21,
        20_000,
        || read(&tool, ChunkPath::Serde),
        || read(&tool, ChunkPath::Adapter),
    );
    println!("{c}");
}

#[cfg(not(feature = "fuzzing"))]
fn engine_chunks() {
    println!("engine chunk rows: run with --features fuzzing");
}

fn stream() -> Vec<u8> {
    let mut encoder = ChunkEncoder::new(Endpoint::Chat, "req-5f3a2b-17", CREATED, MODEL, true);
    let mut bytes = Vec::new();
    for i in 0..CHUNKS {
        bytes.extend_from_slice(&encoder.delta(TEXTS[i % TEXTS.len()]));
    }
    bytes
}

fn decode() {
    let bytes = stream();
    let events = bytes.windows(2).filter(|w| w == b"\n\n").count();
    let c = compare(
        "decode 64-chunk stream vs split on \\n\\n",
        21,
        300,
        || {
            let Ok(text) = std::str::from_utf8(&bytes) else {
                return 0;
            };
            text.split("\n\n")
                .filter_map(|frame| frame.strip_prefix("data: "))
                .map(|data| black_box(data.to_owned()).len())
                .sum::<usize>()
        },
        || {
            let mut decoder = SseDecoder::new();
            let mut total = 0;
            for read in bytes.chunks(READ) {
                decoder.push(read);
                for event in decoder.events().flatten() {
                    total += black_box(event).data.len();
                }
            }
            total
        },
    );
    println!("{c}");
    let per = |d: std::time::Duration| d.as_secs_f64() * 1e9 / events as f64;
    println!(
        "{:<44} baseline {:>10.1} ns/chunk  candidate {:>10.1} ns/chunk  ({events} chunks, {} bytes)",
        "decode per chunk",
        per(c.baseline),
        per(c.candidate),
        bytes.len()
    );
}

fn main() {
    encode();
    encode_events();
    decode();
    decode_chunks();
    engine_chunks();
}
