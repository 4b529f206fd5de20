//! Adapters of remote engines that speak OpenAI-style HTTP (feature
//! `engines`).
//!
//! [`OpenAiCompatBackend`] is the shared client: a pooled HTTP/1.1
//! connection per request (`TCP_NODELAY`, a connect timeout, bounded idle
//! pool), the upstream body built from the [`GenerateRequest`]
//! (`stream: true`, usage asked for, `max_tokens` = the budget's cap, the
//! served model, extra fields passed through), the SSE answer decoded into
//! token events, every failure typed (ENGINES.md §9.3), cancellation by
//! closing the connection, and pressure from a background scrape of the
//! engine's Prometheus gauges.
//!
//! - [`vllm`]: vLLM (`/health`, `/metrics`);
//! - [`openai`]: any OpenAI-compatible server (`/v1/models` as health).
//!
//! [`from_backend_config`] builds either from a `[[backends]]` entry.
//!
//! [`GenerateRequest`]: gateway_core::GenerateRequest

pub mod openai;
mod openai_compat;
pub mod prometheus;
pub mod vllm;

use gateway_core::EngineKind;

pub use openai_compat::{EngineError, HealthCheck, OpenAiCompatBackend, Routes, UpstreamConfig};

use crate::config::BackendConfig;

/// The adapter of a `[[backends]]` entry with engine `vllm` or `openai`:
/// its URL, served model, `max_concurrency`, `metrics_url`, and the API key
/// read now from the variable `api_key_env` names.
///
/// # Errors
/// [`EngineError::UnsupportedEngine`] for other engines,
/// [`EngineError::MissingApiKey`] if the variable is unset or empty,
/// [`EngineError::InvalidUrl`] for an unusable URL.
pub fn from_backend_config(config: &BackendConfig) -> Result<OpenAiCompatBackend, EngineError> {
    let routes = match config.engine {
        EngineKind::Vllm => vllm::ROUTES,
        EngineKind::OpenAi => openai::ROUTES,
        other => return Err(EngineError::UnsupportedEngine(other)),
    };
    let Some(url) = &config.url else {
        return Err(EngineError::InvalidUrl {
            url: String::new(),
            reason: "a URL is required".to_owned(),
        });
    };
    let api_key = match &config.api_key_env {
        Some(var) => match std::env::var(var) {
            Ok(key) if !key.is_empty() => Some(key),
            _ => return Err(EngineError::MissingApiKey(var.clone())),
        },
        None => None,
    };
    let mut upstream = UpstreamConfig::new(config.name.clone(), url.clone(), config.model.clone());
    upstream.served_model = Some(config.served_model.clone());
    upstream.metrics_url = config.metrics_url.clone();
    upstream.api_key = api_key;
    upstream.max_concurrency = config.max_concurrency.map(std::num::NonZeroU32::get);
    OpenAiCompatBackend::new(routes, upstream)
}
