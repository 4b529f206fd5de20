//! Benchmarks of the OpenAI SSE codec, each against a naive baseline
//! measured in the same run (ratios, since the machine is shared):
//!
//! - encode: one streamed chat chunk by [`ChunkEncoder`] against
//!   `serde_json::to_vec` of the equivalent `serde_json::json!` value, and
//!   against `serde_json::to_writer` of borrowed serde structs into a
//!   reused buffer (the alternative to writing the JSON by hand);
//! - decode: a vLLM-shaped stream of 64 chunks, fed to [`SseDecoder`] in
//!   1500-byte reads, against splitting the same bytes at `\n\n` in one
//!   piece and copying each payload out.
#![expect(
    clippy::print_stdout,
    reason = "the bench prints each candidate/baseline ratio for the log"
)]

use std::hint::black_box;

use bytes::{BufMut, BytesMut};
use gateway_adapters::openai::{ChunkEncoder, Endpoint, SseDecoder};
use gateway_core::testkit::bench::compare;
use serde::Serialize;

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
    decode();
}
