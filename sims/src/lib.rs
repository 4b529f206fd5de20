//! Wire-faithful simulators of the inference engines the gateway adapts,
//! over loopback HTTP/1.1, for adapter tests and for running the `gateway`
//! binary against every engine kind without GPUs.
//!
//! Each simulator binds `127.0.0.1:0`, speaks its engine's HTTP wire
//! byte for byte as the engine's source has it (raw bytes on a `tokio`
//! socket, so every write is under control), and runs the same small
//! engine model: a fixed number of slots with a FIFO queue, a prefill
//! time, then one token per decode interval with deterministic texts
//! ([`vocab::token_text`]: `"Hel"`, `"lo"`, `" wor"`, ...; a completion is
//! `natural_tokens` long, 16 by default, or `max_tokens` if smaller, which
//! ends it by `length`). It watches the socket in every phase, so a
//! client's close is counted as an abort in the phase it happened, and it
//! publishes live gauges in the engine's metric names. Every simulator
//! implements [`gateway_core::testkit::conformance::EngineProbe`] so the
//! conformance kit can run over HTTP against it. A simulator stops when
//! its handle is dropped.
//!
//! | module | speaks | fault injection |
//! |---|---|---|
//! | [`vllm`] | vLLM's OpenAI routes (`/v1/chat/completions`, `/v1/completions`, `/v1/models`, `/health`, `/metrics`); with [`vllm::SimEngine`] the quirks of trtllm-serve, the Dynamo frontend (2026 and older), NIM (`/v1/health/ready`, `/v1/metrics`, an API key) — plain vLLM mode also serves as a generic OpenAI-compatible server | [`vllm::Fault`]: an HTTP error before the stream, an in-stream error frame, a stall, a malformed frame, a UTF-8 character split across writes, frames split into small writes, a connection reset, a truncated body; a bounded queue (503, Dynamo 529); a required API key |
//! | [`sglang`] | SGLang's native `POST /generate` (cumulative or incremental text), `/v1/chat/completions`, `POST /abort_request {"rid"}`, `/health`, `/metrics` (`sglang:*`); a client's close aborts only `disconnect_abort_delay` later, like SGLang | [`sglang::Fault`]: an HTTP error, an in-stream error event, an `abort` finish, a stall, a split character, a text that is not a prefix, a truncated body; a bounded queue (a 200 stream whose first event is the 503) |
//! | [`triton`] | Triton Inference Server with a TensorRT-LLM `ensemble`: `POST /v2/models/{model}/generate_stream` (no `[DONE]`, the body just ends), `/v2/health/ready`, `/v2/models/{model}/ready`, and `/metrics` on a separate listener (Triton's metrics port); a close is noticed at the next cancellation check | [`triton::Fault`]: an error first response (JSON or SSE-framed), an in-stream error, a stall, U+FFFD then the fixed character, a raw split character, a cut connection; a bounded queue (503) |
//!
//! Each is a [`sim::Sim`] over its engine ([`vllm::VllmSim`],
//! [`sglang::SglangSim`], [`triton::TritonSim`]): one handle type with the
//! same accessors for all, recording the requests it received (method,
//! path, body; headers for [`vllm`]), the aborts it counted with their
//! phase and time, and its completed requests, for tests to assert on.
//!
//! The `engine-sims` binary of this crate runs one simulator per engine
//! kind named on its command line and prints their URLs (see
//! `engine-sims --help` and docs/engines.md); `tests/python/test_all_engines.py`
//! uses it to drive the `gateway` binary with one backend per engine kind
//! through the official OpenAI SDK.

mod http;
mod output;
pub mod sglang;
pub mod sim;
mod slots;
pub mod triton;
pub mod vllm;
pub mod vocab;
