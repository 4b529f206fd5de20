//! Entry points for the coverage-guided fuzz targets in `fuzz/` (feature
//! `fuzzing`): thin wrappers that reach parsers of untrusted bytes which are
//! private to their modules. Not a stable API; nothing else should use it.
//!
//! The public parsers ([`parse_chat`](crate::openai::parse_chat),
//! [`merge_extra`](crate::openai::merge_extra),
//! [`SseDecoder`](crate::openai::SseDecoder),
//! [`prometheus`](crate::engines::prometheus),
//! [`GatewayConfig::parse`](crate::config::GatewayConfig::parse)) are fuzzed
//! directly.

use gateway_core::http::{HeaderMap, HeaderValue, header};
use gateway_core::{Delta, Pressure, TokenResult};

use crate::engines::{Quirks, dynamo, nim, openai_compat, sglang, triton, trtllm};
use crate::openai::SseDecoder;

/// The raw `(key, value)` slices of a top-level JSON object, as the request
/// parser splits it (`text` must already be valid JSON); `None` if it is
/// not an object.
pub fn object_entries(text: &str) -> Option<Vec<(&str, &str)>> {
    crate::openai::json::object_entries(text)
        .map(|entries| entries.iter().map(|e| (e.key, e.value)).collect())
}

/// The unescaped text of a raw key (quotes included), as the request parser
/// reads it.
pub fn key_text(raw_key: &str) -> Option<String> {
    let entry = crate::openai::json::RawEntry {
        key: raw_key,
        value: "null",
    };
    entry.key_text().map(std::borrow::Cow::into_owned)
}

/// `s` written as a quoted JSON string by the hand-written escaper.
pub fn json_string(s: &str) -> String {
    let mut out = Vec::new();
    crate::openai::json::string_into(&mut out, s);
    String::from_utf8_lossy(&out).into_owned()
}

/// The bytes `decoder` holds now: pushed and not yet parsed, plus the
/// current event.
pub fn sse_buffered(decoder: &SseDecoder) -> usize {
    decoder.buffered()
}

/// Which reader of an engine's streamed chunk ([`engine_chunk`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkPath {
    /// `serde_json` alone (the adapters' reader before the fast path).
    Serde,
    /// The strict fast path alone; `None` where it leaves the chunk to
    /// `serde_json`.
    Fast,
    /// What the OpenAI-compatible adapters do with a stream's first chunk:
    /// the fast path, else `serde_json` (after three chunks in a row left
    /// to `serde_json`, a stream's chunks go to it alone).
    Adapter,
}

/// An engine's streamed chunk (the JSON of one `data:` line) as the
/// OpenAI-compatible adapters read it, by `path`: every field they read,
/// in `Debug` form; `None` if that path does not read it.
pub fn engine_chunk(data: &str, path: ChunkPath) -> Option<String> {
    openai_compat::fuzz_chunk(data, path)
}

/// The chunk `data` as a stream's reader reads it right after the chunk
/// `prev` (a chunk that differs from the last one only in its string of
/// output is read by reading that string alone), in its `Debug` form.
pub fn engine_chunk_after(prev: &str, data: &str) -> Option<String> {
    openai_compat::fuzz_chunk_after(prev, data)
}

/// The chunk `data` read by `path`, then its choice 0 as a [`Delta`] the
/// way the adapters take it (`Some(None)`: a chunk without output);
/// `None` if that path does not read it.
pub fn engine_chunk_delta(data: &str, path: ChunkPath) -> Option<Option<Delta>> {
    openai_compat::fuzz_chunk_delta(data, path)
}

/// The engine whose frames read a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// The OpenAI-compatible client with vLLM's quirks.
    Vllm,
    /// With trtllm-serve's quirks.
    TrtLlm,
    /// With Dynamo's quirks.
    Dynamo,
    /// With NIM's quirks.
    Nim,
    /// SGLang's native `/generate`.
    Sglang {
        /// `--incremental-streaming-output`.
        incremental: bool,
        /// The request asked for logprobs.
        logprobs: bool,
    },
    /// Triton's `generate_stream`.
    Triton {
        /// `cumulative_output`.
        cumulative: bool,
    },
}

/// What one read of a body gave.
#[derive(Debug)]
pub struct Read {
    /// The events the consumer got, in order.
    pub events: Vec<TokenResult>,
    /// The most bytes the SSE decoder held after any read.
    pub held: usize,
}

/// Reads `chunks` (one transport read each) as `engine`'s streamed answer
/// with completion cap `cap` and event bound `max_event_bytes`, the way the
/// adapter's reader task does, minus I/O, cancel and clock. `quiet_end`:
/// the engine goes quiet after the last chunk (the grace after its finish
/// runs out) instead of ending the body. `None` only if the SGLang
/// adapter's HTTP client cannot be built.
pub fn read_stream(
    engine: Engine,
    cap: u64,
    max_event_bytes: usize,
    chunks: &[&[u8]],
    quiet_end: bool,
) -> Option<Read> {
    use crate::engines::reader::BodyEnd;
    let end = if quiet_end {
        BodyEnd::Quiet
    } else {
        BodyEnd::Clean
    };
    let compat =
        |quirks: Quirks| openai_compat::fuzz_read(quirks, cap, max_event_bytes, chunks, end);
    let (events, held) = match engine {
        Engine::Vllm => compat(Quirks::VLLM),
        Engine::TrtLlm => compat(trtllm::QUIRKS),
        Engine::Dynamo => compat(dynamo::QUIRKS),
        Engine::Nim => compat(nim::QUIRKS),
        Engine::Sglang {
            incremental,
            logprobs,
        } => sglang::fuzz_read(incremental, logprobs, cap, max_event_bytes, chunks, end)?,
        Engine::Triton { cumulative } => {
            triton::fuzz_read(cumulative, cap, max_event_bytes, chunks, end)
        }
    };
    Some(Read { events, held })
}

/// The pressure an adapter would show after scraping `text`: vLLM's,
/// trtllm-serve's, Dynamo's, NIM's, SGLang's and Triton's gauges for
/// `model`, each stored into a fresh pressure cell and read back.
pub fn scrape_pressures(text: &str, model: &str) -> Vec<Option<Pressure>> {
    use crate::engines::pressure_cell::PressureCell;
    let gauges = [
        openai_compat::engine_gauges(text, model, &Quirks::VLLM.metrics),
        openai_compat::engine_gauges(text, model, &trtllm::QUIRKS.metrics),
        openai_compat::engine_gauges(text, model, &dynamo::QUIRKS.metrics),
        openai_compat::engine_gauges(text, model, &nim::QUIRKS.metrics),
        sglang::sglang_gauges(text, model),
        triton::triton_gauges(text, &[model.to_owned()]),
    ];
    gauges
        .iter()
        .map(|g| {
            g.map(|g| {
                let cell = PressureCell::new(Some(8));
                cell.store(&g);
                cell.snapshot(0)
            })
        })
        .collect()
}

/// `Retry-After` as the adapters read it from an engine's error answer;
/// `None` also when `value` is not a valid header value.
pub fn retry_after(value: &[u8]) -> Option<std::time::Duration> {
    let value = HeaderValue::from_bytes(value).ok()?;
    let mut headers = HeaderMap::new();
    headers.insert(header::RETRY_AFTER, value);
    crate::engines::upstream::retry_after(&headers)
}

/// An engine's HTTP/1.1 answer to a `POST` as the adapters' own client
/// reads it, the bytes arriving in `reads` (one slice per socket read)
/// before the connection ends: the status, the body and whether it ended
/// before the connection; or the error's text.
///
/// # Errors
/// The error's text, for a malformed head or body or an early end.
pub fn upstream_answer(reads: &[&[u8]]) -> Result<(u16, Vec<u8>, bool), String> {
    crate::engines::http1::wire::read_answer(reads, crate::engines::upstream::UPSTREAM_MAX_BUF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_core::{FinishReason, TokenEvent};

    fn summary(read: &Read) -> Vec<String> {
        read.events
            .iter()
            .map(|item| match item {
                Ok(TokenEvent::Started(_)) => "started".to_owned(),
                Ok(TokenEvent::Delta(d)) => format!("delta {:?} {}", d.text, d.tokens),
                Ok(TokenEvent::Usage(u)) => format!("usage {} {}", u.prompt(), u.completion()),
                Ok(TokenEvent::Finished(r)) => format!("finished {r:?}"),
                Err(e) => format!("error {:?}", e.kind()),
            })
            .collect()
    }

    /// The drive the fuzz targets use gives what a live SGLang stream gives
    /// (ENGINES.md TV-07), for any split.
    #[test]
    fn read_stream_drives_the_engines_frames() {
        let body = concat!(
            "data: {\"text\":\"Hel\",\"output_ids\":[1],\"meta_info\":{\"finish_reason\":null,\"prompt_tokens\":4,\"completion_tokens\":1}}\n\n",
            "data: {\"text\":\"Hello wo\",\"output_ids\":[1,2],\"meta_info\":{\"finish_reason\":null,\"prompt_tokens\":4,\"completion_tokens\":2}}\n\n",
            "data: {\"text\":\"Hello world!\",\"output_ids\":[1,2,3],\"meta_info\":{\"finish_reason\":{\"type\":\"stop\"},\"prompt_tokens\":4,\"completion_tokens\":3}}\n\n",
            "data: [DONE]\n\n"
        )
        .as_bytes();
        let engine = Engine::Sglang {
            incremental: false,
            logprobs: false,
        };
        let whole = read_stream(engine, 8, 1 << 20, &[body], false).unwrap();
        assert_eq!(
            summary(&whole),
            [
                "started",
                "delta \"Hel\" 1",
                "delta \"lo wo\" 1",
                "delta \"rld!\" 1",
                "usage 4 3",
                "finished Stop"
            ]
        );
        let reads: Vec<&[u8]> = body.chunks(7).collect();
        let split = read_stream(engine, 8, 1 << 20, &reads, false).unwrap();
        assert_eq!(summary(&split), summary(&whole));
        assert!(split.held <= body.len());
        // At cap 2 the third piece would pass it.
        let capped = read_stream(engine, 2, 1 << 20, &[body], false).unwrap();
        assert_eq!(
            capped.events.last().unwrap().as_ref().unwrap(),
            &TokenEvent::Finished(FinishReason::Length)
        );
    }

    #[test]
    fn scrape_and_retry_after_wrappers_read_real_values() {
        let text = "vllm:num_requests_running{model_name=\"m\"} 2\nvllm:kv_cache_usage_perc{model_name=\"m\"} 7\n";
        let pressures = scrape_pressures(text, "m");
        let vllm = pressures[0].unwrap();
        assert_eq!((vllm.running, vllm.kv_usage), (2, 1.0));
        assert_eq!(
            retry_after(b" 2.5 "),
            Some(std::time::Duration::from_millis(2500))
        );
        assert_eq!(retry_after(b"Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(
            object_entries(r#"{"a":1, "b" : [2]}"#).unwrap(),
            [("\"a\"", "1"), ("\"b\"", "[2]")]
        );
        assert_eq!(key_text(r#""\u0041""#).as_deref(), Some("A"));
        assert_eq!(json_string("q\"\n"), r#""q\"\n""#);
    }
}
