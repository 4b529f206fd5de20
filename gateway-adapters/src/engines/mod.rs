//! Adapters of remote engines that speak OpenAI-style HTTP (feature
//! `engines`), and what their configuration names without them
//! ([`OnDisconnect`], always here: the config file depends on the engines,
//! never the reverse).
#![cfg_attr(
    feature = "engines",
    doc = r#"
[`OpenAiCompatBackend`] is the shared client: a pooled HTTP/1.1
connection per request (`TCP_NODELAY`, a connect timeout, bounded idle
pool), the upstream body built from the [`GenerateRequest`]
(`stream: true`, usage asked for, `max_tokens` = the budget's cap, the
served model, extra fields passed through), the SSE answer decoded into
token events, every failure typed (ENGINES.md §9.3), cancellation by
closing the connection, and pressure from a background scrape of the
engine's Prometheus gauges.

- [`vllm`]: vLLM (`/health`, `/metrics`);
- [`trtllm`]: TensorRT-LLM's `trtllm-serve` (extras filtered to what it
  accepts, `/prometheus/metrics`);
- [`dynamo`]: NVIDIA Dynamo's frontend (`nvext` passed through,
  `/v1/models` as readiness, `dynamo_frontend_*` gauges);
- [`nim`]: NVIDIA NIM for LLMs (`/v1/health/ready`, `/v1/metrics`, an
  API key required);
- [`openai`]: any OpenAI-compatible server (`/v1/models` as health).

Per-engine differences are [`Quirks`] of the shared client. [`build`]
makes the adapter of any engine kind from an [`UpstreamConfig`] (a
`[[backends]]` entry gives one with
[`BackendConfig::upstream`](crate::config::BackendConfig::upstream)).

[`GenerateRequest`]: gateway_core::GenerateRequest
"#
)]
#![cfg_attr(
    not(feature = "engines"),
    doc = "\nWithout the feature `engines` only [`OnDisconnect`] is here."
)]

#[cfg(feature = "engines")]
pub mod dynamo;
#[cfg(feature = "engines")]
pub(crate) mod http1;
#[cfg(feature = "engines")]
pub mod nim;
mod on_disconnect;
#[cfg(feature = "engines")]
pub mod openai;
#[cfg(feature = "engines")]
pub(crate) mod openai_compat;
#[cfg(feature = "engines")]
pub(crate) mod pressure_cell;

#[cfg(feature = "engines")]
pub mod prometheus;
#[cfg(feature = "engines")]
pub(crate) mod reader;
#[cfg(feature = "engines")]
mod scrape;
#[cfg(feature = "engines")]
pub mod sglang;
#[cfg(feature = "engines")]
pub mod triton;
#[cfg(feature = "engines")]
pub mod trtllm;
#[cfg(feature = "engines")]
pub(crate) mod upstream;
#[cfg(feature = "engines")]
pub mod vllm;

pub use on_disconnect::OnDisconnect;

#[cfg(feature = "engines")]
pub use openai_compat::{
    EngineError, ExtraFields, HealthCheck, MessageRule, MetricNames, OpenAiCompatBackend, Quirks,
    Routes, UpstreamConfig, VLLM_METRICS,
};

#[cfg(feature = "engines")]
use std::sync::Arc;

#[cfg(feature = "engines")]
use gateway_core::{Backend, EngineKind};

#[cfg(feature = "engines")]
use crate::openai::pass_through::EngineFields;

/// The extra fields an engine of `kind` forwards (each engine module's
/// `FIELDS`; the in-process sim's for `sim`).
#[cfg(feature = "engines")]
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

/// The adapter of a remote engine of `kind` at `upstream`: `vllm`,
/// `trtllm`, `dynamo`, `nim` and `openai` on the shared OpenAI-compatible
/// client with the engine's routes and [`Quirks`]; `sglang` and `triton`
/// on their own clients, which only abort.
///
/// # Errors
/// [`EngineError::UnsupportedEngine`] for `sim` (built in-process, not at
/// a URL), a host's own (`custom`) and any kind without an adapter;
/// [`EngineError::ApiKeyRequired`] for `nim` at NVIDIA's hosted API (a host
/// under `api.nvidia.com`) without an `api_key` (a self-hosted NIM serves
/// its OpenAI routes without a key); [`EngineError::DrainUnsupported`] for
/// `sglang` and `triton` with `on_disconnect` set to drain;
/// [`EngineError::InvalidUrl`] for an unusable URL and
/// [`EngineError::Tls`] for an unusable `ca_file`.
#[cfg(feature = "engines")]
pub fn build(kind: EngineKind, upstream: UpstreamConfig) -> Result<Arc<dyn Backend>, EngineError> {
    let (routes, quirks) = match kind {
        EngineKind::Vllm => (vllm::ROUTES, Quirks::VLLM),
        EngineKind::OpenAi => (openai::ROUTES, Quirks::OPENAI),
        EngineKind::TrtLlm => (trtllm::ROUTES, trtllm::QUIRKS),
        EngineKind::Dynamo => (dynamo::ROUTES, dynamo::QUIRKS),
        EngineKind::Nim if upstream.api_key.is_none() && nim::is_hosted(&upstream.url) => {
            return Err(EngineError::ApiKeyRequired(EngineKind::Nim));
        }
        EngineKind::Nim => (nim::ROUTES, nim::QUIRKS),
        EngineKind::Sglang | EngineKind::Triton
            if upstream.on_disconnect != OnDisconnect::Abort =>
        {
            return Err(EngineError::DrainUnsupported(kind));
        }
        EngineKind::Sglang => return Ok(Arc::new(sglang::backend(upstream)?)),
        EngineKind::Triton => return Ok(Arc::new(triton::backend(upstream)?)),
        other => return Err(EngineError::UnsupportedEngine(other)),
    };
    Ok(Arc::new(OpenAiCompatBackend::with_quirks(
        routes, quirks, upstream,
    )?))
}
