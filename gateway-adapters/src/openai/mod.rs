//! The OpenAI wire format and its SSE codec, shared by the gateway's HTTP
//! server (towards clients) and the engine adapters (towards vLLM, SGLang,
//! trtllm-serve, Dynamo and NIM, which all speak OpenAI-style JSON over
//! server-sent events).
//!
//! - [`types`]: serde types of requests, responses, chunks, usage, the
//!   models list and error bodies, lenient to unknown and `null` keys.
//! - Embeddings: [`parse_embeddings`] validates a client's
//!   `/v1/embeddings` body, [`embeddings_body`] writes the answer.
//! - Requests: [`parse_chat`] and [`parse_completion`] validate a client
//!   body into a [`ParsedRequest`] (model, [`Prompt`](gateway_core::Prompt),
//!   [`SamplingParams`](gateway_core::SamplingParams), `max_tokens`,
//!   `stream`, `include_usage`, and the uninterpreted fields verbatim as
//!   `extra`) or a [`RequestError`] (400 `invalid_request`, with `param`);
//!   [`merge_extra`] puts `extra` back into an upstream body; [`needs`]
//!   says what the request asks for beyond text (tools, reasoning,
//!   structured output, images, logprobs), which decides the backends it
//!   may go to.
//! - Responses: [`ChunkEncoder`] writes the streamed chunk sequence, one
//!   SSE frame per event, into reused buffers; [`Assembler`] builds the
//!   non-streamed body; [`error_body`], [`stream_error_frame`] and
//!   [`models_body`] render the rest; [`parse_upstream_error`] reads the
//!   error shapes engines send.
//! - [`SseDecoder`] decodes an engine's event stream incrementally, for any
//!   split of the bytes, with bounded memory; [`write_data`] and friends
//!   write frames; [`chunk_delta`] reads one streamed chunk into a typed
//!   [`Delta`](gateway_core::Delta) (text, reasoning under the engine's field
//!   name, tool-call fragments, refusal, logprobs in either shape).
//! - Output beyond text goes back out in OpenAI's shapes: [`ChunkEncoder`]
//!   writes `delta.reasoning` / `reasoning_content`, `delta.tool_calls`,
//!   `delta.refusal` and `choices[].logprobs` (chat's `content[]`, or the
//!   legacy completions arrays); [`Assembler`] gathers them into
//!   `message.tool_calls` (with `content: null`), `message.reasoning...` and
//!   one `logprobs` object.
//!
//! # Examples
//!
//! A client request to a streamed answer:
//!
//! ```
//! use gateway_adapters::openai::{self, ChunkEncoder, Endpoint};
//! use gateway_core::{Delta, FinishReason, Prompt, TokenEvent, Usage};
//!
//! let body = br#"{"model":"m","messages":[{"role":"user","content":"Hi"}],
//!                 "stream":true,"stream_options":{"include_usage":true},"top_k":20}"#;
//! let parsed = openai::parse_chat(body).unwrap();
//! assert!(matches!(parsed.prompt, Prompt::Chat(ref m) if m[0].content == "Hi"));
//! assert_eq!(parsed.extra.as_deref(), Some(r#"{"top_k":20}"#));
//!
//! let mut enc = ChunkEncoder::new(Endpoint::Chat, "req-1", openai::unix_now(), &parsed.model,
//!                                 parsed.include_usage);
//! let mut out = Vec::new();
//! for event in [TokenEvent::Delta(Delta::text("Hello", 1)), TokenEvent::Usage(Usage::new(9, 1)),
//!               TokenEvent::Finished(FinishReason::Stop)] {
//!     out.extend_from_slice(&enc.encode(&event).unwrap_or_default());
//! }
//! // Role chunk, one content chunk, finish chunk, usage chunk, [DONE].
//! assert_eq!(out.windows(6).filter(|w| w == b"data: ").count(), 5);
//! ```

pub(crate) mod chunk;
mod embeddings;
mod encode;
mod error_body;
pub(crate) mod json;
mod needs;
mod output;
pub mod pass_through;
mod request;
mod sse;
pub mod types;

pub use chunk::chunk_delta;
pub use embeddings::{EmbeddingsParsed, MAX_EMBEDDING_INPUTS, embeddings_body, parse_embeddings};
#[cfg(feature = "engines")]
pub(crate) use embeddings::{
    UpstreamBodyError, parse_upstream_embeddings, upstream_embeddings_body,
};
pub use encode::{AssembleError, Assembler, ChunkEncoder, Endpoint};
pub use error_body::{
    STREAM_ERROR_TYPE, code_error_body, error_body, error_type, models_body, parse_upstream_error,
    stream_error_frame,
};
pub use needs::needs;
pub use request::{
    ChatParsed, CompletionParsed, MAX_STOP_SEQUENCES, ParsedRequest, RequestError, merge_extra,
    parse_chat, parse_chat_with, parse_completion, parse_completion_with,
};
pub use sse::{
    DONE, DONE_FRAME, Events, SseDecoder, SseError, SseEvent, write_comment, write_data,
    write_event,
};

/// Now in unix seconds, for `created` (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
