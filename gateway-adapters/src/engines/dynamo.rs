//! NVIDIA Dynamo's OpenAI-compatible frontend (ENGINES.md §7;
//! `ai-dynamo/dynamo:lib/llm/src/http/service/error.rs@43a0bb22fbd0`,
//! `disconnect.rs@02acc07eff50`, `openai.rs`, `service_v2.rs` and
//! `lib/runtime/src/metrics/prometheus_names.rs` seen 2026-08), checked
//! against a real ai-dynamo 1.6.1 frontend with its mocker worker
//! (`tests/python/test_real_dynamo.py`, docs/real-engine-dynamo.md).
//!
//! - Routes (defaults; each can be moved by `DYN_HTTP_SVC_*_PATH`, then use
//!   the generic adapter or a `metrics_url`): `POST /v1/chat/completions`,
//!   `POST /v1/completions`, `GET /v1/models` (readiness), `GET /metrics`.
//! - Readiness is the served model in `/v1/models`: the frontend's
//!   `/health` answers 200 `healthy` while no worker serves the model (and
//!   requests then get an empty 404).
//! - Requests: OpenAI plus the `nvext` extension object, passed through
//!   unchanged. The frontend refuses unknown top-level fields (400
//!   `Validation: Unsupported parameter(s)`) and unknown `nvext` keys, so
//!   only the fields it takes are forwarded ([`FIELDS`]: OpenAI's but
//!   `safety_identifier`, which 1.6.1 refuses); `nvext`'s keys are left to
//!   the frontend (its list grows between releases).
//! - Streams: no role-only first chunk (the role rides on the first content
//!   delta) and the finish reason in a chunk of its own; the shared client
//!   reads both.
//! - Errors: flat bodies `{"message","type","code"}` (`type` the reason
//!   phrase); overload is **529** (`Service temporarily overloaded`, type
//!   `Overloaded`, no `Retry-After`; 503 in older builds or with
//!   `DYN_HTTP_OVERLOAD_STATUS_CODE`) → `Overloaded`; 404 `Model not found`;
//!   backend 4xx forwarded. Mid-stream (2026): `data: {"error":{"message",
//!   "type":"internal_server_error","code":500}}` then `[DONE]`; older
//!   builds: `event: error` with the text in an SSE comment, then the end.
//! - Abort: closing the connection kills the request at once; the frontend
//!   passes the kill on to the worker.
//! - Pressure: `dynamo_frontend_inflight_requests` and
//!   `dynamo_frontend_queued_requests`, labelled `model`. In-flight counts
//!   a request from the handler's start to the end of its response and the
//!   queue gauge until its first token, so running = in-flight − queued
//!   (equal to the worker's own running gauge under load). No KV gauge is
//!   read.

use gateway_core::EngineKind;

use crate::openai::pass_through::EngineFields;

use super::openai_compat::{
    EngineError, ExtraFields, HealthCheck, MetricNames, OpenAiCompatBackend, Quirks, Routes,
    UpstreamConfig,
};

/// Dynamo's extras (ENGINES.md §7.2): the `nvext` object (its
/// prompt-replacing keys `token_data` and `use_raw_prompt` are refused by
/// the gateway) and the top-level sampling fields, on both routes.
pub const EXTRA: &[&str] = &[
    "nvext",
    "top_k",
    "min_p",
    "repetition_penalty",
    "ignore_eos",
    "min_tokens",
    "stop_token_ids",
];

/// The chat fields Dynamo gets: OpenAI's documented ones
/// ([`OPENAI_CHAT`](crate::openai::pass_through::OPENAI_CHAT)) but
/// `safety_identifier`, which ai-dynamo 1.6.1 answers with a 400, and
/// [`EXTRA`].
pub const CHAT_FIELDS: &[&str] = &[
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "user",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "reasoning_effort",
    "metadata",
    "store",
    "service_tier",
    "prompt_cache_key",
    "nvext",
    "top_k",
    "min_p",
    "repetition_penalty",
    "ignore_eos",
    "min_tokens",
    "stop_token_ids",
];

/// The completions fields Dynamo gets: OpenAI's documented ones
/// ([`OPENAI_COMPLETIONS`](crate::openai::pass_through::OPENAI_COMPLETIONS);
/// all taken by 1.6.1) and [`EXTRA`].
pub const COMPLETION_FIELDS: &[&str] = &[
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "logprobs",
    "user",
    "nvext",
    "top_k",
    "min_p",
    "repetition_penalty",
    "ignore_eos",
    "min_tokens",
    "stop_token_ids",
];

/// The fields Dynamo gets.
pub const FIELDS: EngineFields = EngineFields {
    openai: false,
    chat: CHAT_FIELDS,
    completions: COMPLETION_FIELDS,
};

/// Dynamo's default routes.
pub const ROUTES: Routes = Routes {
    engine: EngineKind::Dynamo,
    chat: "/v1/chat/completions",
    completions: "/v1/completions",
    health: HealthCheck::Models("/v1/models"),
    metrics: Some("/metrics"),
};

/// The frontend's gauges (default prefix `dynamo_frontend_`).
pub const METRICS: MetricNames = MetricNames {
    running: &["dynamo_frontend_inflight_requests"],
    waiting: &["dynamo_frontend_queued_requests"],
    kv_usage: &[],
    model_labels: &["model"],
    running_includes_waiting: true,
};

/// How Dynamo departs from vLLM: its gauges, and the finish reason in a
/// chunk of its own that is no token (a completions finish chunk has
/// `"text":""`, which on vLLM would be an end token); its status codes,
/// flat bodies and both in-stream error forms are read by the shared
/// client.
pub const QUIRKS: Quirks = Quirks {
    extra: ExtraFields::PassThrough,
    metrics: METRICS,
    message_rules: &[],
    cut_body_is_truncation: false,
    ask_token_ids: None,
    finish_chunk_is_marker: true,
};

/// A Dynamo frontend backend.
///
/// # Errors
/// [`EngineError::InvalidUrl`] for a URL that is not `http(s)://host...`,
/// [`EngineError::Tls`] for an unusable `ca_file`.
pub fn backend(config: UpstreamConfig) -> Result<OpenAiCompatBackend, EngineError> {
    OpenAiCompatBackend::with_quirks(ROUTES, QUIRKS, config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::pass_through::{OPENAI_CHAT, OPENAI_COMPLETIONS};

    /// The field lists are OpenAI's (chat without `safety_identifier`)
    /// plus [`EXTRA`], nothing else.
    #[test]
    fn fields_are_openai_but_safety_identifier_plus_extra() {
        let chat: Vec<&str> = OPENAI_CHAT
            .iter()
            .copied()
            .filter(|f| *f != "safety_identifier")
            .chain(EXTRA.iter().copied())
            .collect();
        assert_eq!(CHAT_FIELDS, chat.as_slice());
        let completions: Vec<&str> = OPENAI_COMPLETIONS
            .iter()
            .chain(EXTRA.iter())
            .copied()
            .collect();
        assert_eq!(COMPLETION_FIELDS, completions.as_slice());
        assert_eq!(OPENAI_CHAT.len(), CHAT_FIELDS.len() + 1 - EXTRA.len());
    }
}
