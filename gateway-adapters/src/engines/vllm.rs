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

use super::openai_compat::{EngineError, HealthCheck, OpenAiCompatBackend, Routes, UpstreamConfig};

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
