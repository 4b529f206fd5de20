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
//! - [`trtllm`]: TensorRT-LLM's `trtllm-serve` (extras filtered to what it
//!   accepts, `/prometheus/metrics`);
//! - [`dynamo`]: NVIDIA Dynamo's frontend (`nvext` passed through,
//!   `/v1/models` as readiness, `dynamo_frontend_*` gauges);
//! - [`nim`]: NVIDIA NIM for LLMs (`/v1/health/ready`, `/v1/metrics`, an
//!   API key required);
//! - [`openai`]: any OpenAI-compatible server (`/v1/models` as health).
//!
//! Per-engine differences are [`Quirks`] of the shared client.
//! [`from_backend_config`] builds any of them from a `[[backends]]` entry.
//!
//! [`GenerateRequest`]: gateway_core::GenerateRequest

pub mod dynamo;
mod live;
pub mod nim;
pub mod openai;
pub(crate) mod openai_compat;
pub(crate) mod pressure_cell;

pub mod prometheus;
pub(crate) mod reader;
mod scrape;
pub mod sglang;
pub mod triton;
pub mod trtllm;
pub(crate) mod upstream;
pub mod vllm;

use gateway_core::EngineKind;

pub use openai_compat::{
    EngineError, ExtraFields, HealthCheck, MessageRule, MetricNames, OpenAiCompatBackend, Quirks,
    Routes, UpstreamConfig, VLLM_METRICS,
};

use crate::config::{BackendConfig, OnDisconnect};
use crate::openai::pass_through::EngineFields;

/// The extra fields an engine of `kind` forwards (each engine module's
/// `FIELDS`; the in-process sim's for `sim`).
pub fn fields(kind: EngineKind) -> EngineFields {
    match kind {
        EngineKind::Vllm => vllm::FIELDS,
        EngineKind::Sglang => sglang::FIELDS,
        EngineKind::TrtLlm => trtllm::FIELDS,
        EngineKind::Triton => triton::FIELDS,
        EngineKind::Nim => nim::FIELDS,
        EngineKind::Dynamo => dynamo::FIELDS,
        EngineKind::Sim => crate::sim::FIELDS,
        // A host's own backend (or a kind added later): OpenAI's fields.
        _ => openai::FIELDS,
    }
}

/// The adapter of a `[[backends]]` entry with engine `vllm`, `trtllm`,
/// `dynamo`, `nim` or `openai`: its URL, served model, `max_concurrency`,
/// `metrics_url`, `on_disconnect` (with its drain timeout), and the API key
/// read now from the variable `api_key_env` names.
///
/// # Errors
/// [`EngineError::UnsupportedEngine`] for other engines,
/// [`EngineError::ApiKeyRequired`] for `nim` at NVIDIA's hosted API
/// (a host under `api.nvidia.com`) without `api_key_env` (a self-hosted
/// NIM serves its OpenAI routes without a key),
/// [`EngineError::MissingApiKey`] if the variable is unset or empty,
/// [`EngineError::InvalidUrl`] for an unusable URL.
pub fn from_backend_config(config: &BackendConfig) -> Result<OpenAiCompatBackend, EngineError> {
    let (routes, quirks) = match config.engine {
        EngineKind::Vllm => (vllm::ROUTES, Quirks::VLLM),
        EngineKind::OpenAi => (openai::ROUTES, Quirks::OPENAI),
        EngineKind::TrtLlm => (trtllm::ROUTES, trtllm::QUIRKS),
        EngineKind::Dynamo => (dynamo::ROUTES, dynamo::QUIRKS),
        EngineKind::Nim => (nim::ROUTES, nim::QUIRKS),
        other => return Err(EngineError::UnsupportedEngine(other)),
    };
    if config.engine == EngineKind::Nim
        && config.api_key_env.is_none()
        && config.url.as_deref().is_some_and(nim::is_hosted)
    {
        return Err(EngineError::ApiKeyRequired(EngineKind::Nim));
    }
    let upstream = upstream_config(config)?;
    OpenAiCompatBackend::with_quirks(routes, quirks, upstream)
}

/// The [`UpstreamConfig`] of a `[[backends]]` entry: its URL, served model,
/// `max_concurrency`, `metrics_url`, `on_disconnect`, `ca_file`, and the API
/// key read now from the variable `api_key_env` names.
fn upstream_config(config: &BackendConfig) -> Result<UpstreamConfig, EngineError> {
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
    upstream.on_disconnect = config.on_disconnect;
    upstream.ca_file = config.ca_file.clone();
    Ok(upstream)
}

/// [`upstream_config`] for an adapter of engine `kind` that only aborts:
/// another engine, or `on_disconnect = "drain"` (which the config refuses;
/// a hand-built `BackendConfig` gets the same answer), is an error.
fn aborting_upstream(
    config: &BackendConfig,
    kind: EngineKind,
) -> Result<UpstreamConfig, EngineError> {
    if config.engine != kind {
        return Err(EngineError::UnsupportedEngine(config.engine));
    }
    let upstream = upstream_config(config)?;
    if upstream.on_disconnect != OnDisconnect::Abort {
        return Err(EngineError::DrainUnsupported(kind));
    }
    Ok(upstream)
}
