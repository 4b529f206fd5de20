//! vLLM's OpenAI-compatible server (ENGINES.md §2).
//!
//! - Routes: `POST /v1/chat/completions`, `POST /v1/completions`,
//!   `GET /health` (200 empty; 503 once the engine died), `GET /metrics`.
//! - Unknown request fields are accepted (and only logged), so the
//!   client's extra fields are passed through as they are.
//! - Streaming: a role chunk with `content: ""`, one chunk per token, the
//!   finish reason on the last token's chunk, a usage chunk with
//!   `choices: []` (with `stream_options`), then always `data: [DONE]`,
//!   also after an in-stream error frame.
//! - Abort: closing the connection aborts the request in the engine on its
//!   next event-loop turn, in every phase.
//! - Pressure: `vllm:num_requests_running`, `vllm:num_requests_waiting`,
//!   `vllm:kv_cache_usage_perc` (`vllm:gpu_cache_usage_perc` before 0.11)
//!   from `/metrics`, labelled `model_name`.

use gateway_core::EngineKind;

use crate::openai::pass_through::EngineFields;

use super::openai_compat::{EngineError, HealthCheck, OpenAiCompatBackend, Routes, UpstreamConfig};

/// vLLM's sampling and output extras (ENGINES.md §2.2,
/// `chat_completion/protocol.py`, `completion/protocol.py`), forwarded on
/// both routes besides OpenAI's fields. Left out: the fields that change
/// the prompt ([`PROMPT_FIELDS`]), `prompt_logprobs` (scores the whole
/// prompt, an answer the gateway does not pass on), `priority` (the
/// engine's queue order is the gateway's to set), `request_id` (the
/// engine's request id is the gateway's), `logits_processors` (names code
/// to load) and `kv_transfer_params` (disaggregation internals).
///
/// [`PROMPT_FIELDS`]: crate::openai::pass_through::PROMPT_FIELDS
pub const EXTRA: &[&str] = &[
    "top_k",
    "min_p",
    "repetition_penalty",
    "length_penalty",
    "use_beam_search",
    "stop_token_ids",
    "include_stop_str_in_output",
    "ignore_eos",
    "min_tokens",
    "skip_special_tokens",
    "spaces_between_special_tokens",
    "truncate_prompt_tokens",
    "allowed_token_ids",
    "bad_words",
    "structured_outputs",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
    "guided_decoding_backend",
    "guided_whitespace_pattern",
    "return_tokens_as_token_ids",
    "return_token_ids",
    "cache_salt",
    "vllm_xargs",
    "thinking_token_budget",
    // The template variables reasoning models are switched with
    // (`enable_thinking`, `thinking`): the estimate renders them with the
    // model's chat template, as vLLM does (exact with a template).
    "chat_template_kwargs",
];

/// The fields vLLM gets: OpenAI's and [`EXTRA`].
pub const FIELDS: EngineFields = EngineFields {
    openai: true,
    chat: EXTRA,
    completions: EXTRA,
};

/// vLLM's routes.
pub const ROUTES: Routes = Routes {
    engine: EngineKind::Vllm,
    chat: "/v1/chat/completions",
    completions: "/v1/completions",
    health: HealthCheck::Status("/health"),
    metrics: Some("/metrics"),
};

/// A vLLM backend. The first of `config.models` is sent as the engine's
/// model name unless a request names another.
///
/// # Errors
/// [`EngineError::InvalidUrl`] for a URL that is not `http(s)://host...`,
/// [`EngineError::Tls`] for an unusable `ca_file`.
pub fn backend(config: UpstreamConfig) -> Result<OpenAiCompatBackend, EngineError> {
    OpenAiCompatBackend::new(ROUTES, config)
}
