//! TensorRT-LLM's OpenAI-compatible server, `trtllm-serve` (ENGINES.md §4;
//! `NVIDIA/TensorRT-LLM:tensorrt_llm/serve/openai_server.py@e7f7345e31e5`,
//! `serve/openai_protocol.py@54cf7be08a35`,
//! `serve/postprocess_handlers.py@7b437aaa73bf`, and the 2026-08 build).
//!
//! - Routes: `POST /v1/chat/completions`, `POST /v1/completions`,
//!   `GET /health` (200). Prometheus text is served only at
//!   `GET /prometheus/metrics` (`/metrics` is JSON iteration stats).
//! - Requests: every request model is pydantic `extra="forbid"`, so an
//!   unknown top-level field is a 400. The body the client builds holds
//!   only OpenAI fields trtllm-serve knows (`model`, `messages`/`prompt`,
//!   `max_tokens`, `temperature`, `top_p`, `seed`, `stop`, `stream`,
//!   `stream_options`); of a request's pass-through extra fields only
//!   [`CHAT_EXTRA`] (chat) and [`COMPLETION_EXTRA`] (completions) are sent,
//!   the others (vLLM's `vllm_xargs`, `nvext`, ...) are dropped.
//! - Streaming: the first chunk of a choice is written `data: {json} \n\n`
//!   (a space before the blank line; data lines are trimmed), every chunk
//!   has a fresh `id`, content deltas carry `reasoning_content: ""`, and
//!   with `include_usage` usage comes on every chunk (continuous usage is
//!   on by default) and in a final `choices: []` chunk, which wins.
//! - Errors: every exception before the stream is a **400** with the flat
//!   body `{"object":"error","message":...,"type":"BadRequestError",
//!   "param":null,"code":400}` — out-of-memory and generation failures too,
//!   so the message is read ([`MESSAGE_RULES`]). A failing chat stream is
//!   cut with no error frame and no `[DONE]` (the connection closes inside
//!   the chunked body): a `ProtocolViolation` in the phase reached.
//!   Completions (2026-08) send `{"error":{...,"type":"server_error",
//!   "code":null}}` then `[DONE]`: `Internal`.
//! - Abort: closing the connection; the server polls for the disconnect
//!   every second.
//! - Pressure: `trtllm_num_requests_running`, `trtllm_num_requests_waiting`,
//!   `trtllm_kv_cache_utilization` (2026 builds, labels `model_name`,
//!   `engine_type`; 2025 builds publish no load gauges).

use gateway_core::{EngineKind, FailureKind};

use crate::openai::pass_through::EngineFields;

use super::openai_compat::{
    EngineError, ExtraFields, HealthCheck, MessageRule, MetricNames, OpenAiCompatBackend, Quirks,
    Routes, UpstreamConfig,
};

/// trtllm-serve's routes.
pub const ROUTES: Routes = Routes {
    engine: EngineKind::TrtLlm,
    chat: "/v1/chat/completions",
    completions: "/v1/completions",
    health: HealthCheck::Status("/health"),
    metrics: Some("/prometheus/metrics"),
};

/// The fields beyond the gateway's own that trtllm-serve accepts on both
/// routes (ENGINES.md §4.2): OpenAI's sampling fields and its extensions,
/// the only extra fields sent on completions. `logprobs` and `suffix` are
/// left out: the 2025 build answers 400 to them on completions.
pub const COMPLETION_EXTRA: &[&str] = &[
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "user",
    "top_k",
    "top_p_min",
    "min_p",
    "repetition_penalty",
    "length_penalty",
    "use_beam_search",
    "early_stopping",
    "stop_token_ids",
    "include_stop_str_in_output",
    "ignore_eos",
    "min_tokens",
    "skip_special_tokens",
    "truncate_prompt_tokens",
    "return_context_logits",
    "detokenize",
    "add_special_tokens",
    "response_format",
    "disaggregated_params",
    "lora_request",
];

/// The extra fields sent on chat: [`COMPLETION_EXTRA`] plus the chat-only
/// ones (ENGINES.md §4.2): logprobs, the tool choice (the tools themselves
/// are always sent), and the template's.
pub const CHAT_EXTRA: &[&str] = &[
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "user",
    "logprobs",
    "top_logprobs",
    "tool_choice",
    "top_k",
    "top_p_min",
    "min_p",
    "repetition_penalty",
    "length_penalty",
    "use_beam_search",
    "early_stopping",
    "stop_token_ids",
    "include_stop_str_in_output",
    "ignore_eos",
    "min_tokens",
    "skip_special_tokens",
    "truncate_prompt_tokens",
    "return_context_logits",
    "detokenize",
    "add_special_tokens",
    "response_format",
    "disaggregated_params",
    "lora_request",
    "chat_template",
    "chat_template_kwargs",
    "documents",
    "add_generation_prompt",
    "prompt_token_ids",
    "cache_salt",
];

/// The fields trtllm-serve gets: exactly [`CHAT_EXTRA`] and
/// [`COMPLETION_EXTRA`] (it refuses any other field, OpenAI's included).
/// Of them, the prompt fields (`chat_template`, `documents`, ...) never
/// get this far: the gateway refuses them.
pub const FIELDS: EngineFields = EngineFields {
    openai: false,
    chat: CHAT_EXTRA,
    completions: COMPLETION_EXTRA,
};

/// Kinds read from trtllm-serve's 400 messages (every pre-stream exception
/// is a 400). The context-length texts are the executor's argument checks
/// as seen in TensorRT-LLM's `llmapi` (exact wording unverified, ENGINES.md
/// §4.4/§11); "out of memory" is CUDA's; "Generation failed" is the
/// `RuntimeError` of a failed promise.
pub const MESSAGE_RULES: &[MessageRule] = &[
    MessageRule {
        status: None,
        contains: "out of memory",
        kind: FailureKind::OutOfMemory,
    },
    MessageRule {
        status: Some(400),
        contains: "max_seq_len",
        kind: FailureKind::ContextLengthExceeded,
    },
    MessageRule {
        status: Some(400),
        contains: "max_num_tokens",
        kind: FailureKind::ContextLengthExceeded,
    },
    MessageRule {
        status: Some(400),
        contains: "prompt length",
        kind: FailureKind::ContextLengthExceeded,
    },
    MessageRule {
        status: Some(400),
        contains: "generation failed",
        kind: FailureKind::Internal,
    },
];

/// trtllm-serve's gauges (`tensorrt_llm/metrics/collector.py`, 2026-08).
pub const METRICS: MetricNames = MetricNames {
    running: &["trtllm_num_requests_running"],
    waiting: &["trtllm_num_requests_waiting"],
    kv_usage: &["trtllm_kv_cache_utilization"],
    model_labels: &["model_name"],
    running_includes_waiting: false,
};

/// How trtllm-serve departs from vLLM.
pub const QUIRKS: Quirks = Quirks {
    extra: ExtraFields::Only {
        chat: CHAT_EXTRA,
        completions: COMPLETION_EXTRA,
    },
    metrics: METRICS,
    message_rules: MESSAGE_RULES,
    cut_body_is_truncation: true,
    ask_token_ids: None,
    finish_chunk_is_marker: false,
};

/// A trtllm-serve backend.
///
/// # Errors
/// [`EngineError::InvalidUrl`] for a URL that is not `http(s)://host...`,
/// [`EngineError::Tls`] for an unusable `ca_file`.
pub fn backend(config: UpstreamConfig) -> Result<OpenAiCompatBackend, EngineError> {
    OpenAiCompatBackend::with_quirks(ROUTES, QUIRKS, config)
}
