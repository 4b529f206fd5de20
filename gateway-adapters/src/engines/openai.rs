//! Any OpenAI-compatible server, as a fallback for engines without an
//! adapter of their own: the same routes as vLLM, health from
//! `GET /v1/models` (which must list the served model), pressure only when a
//! metrics URL with vLLM-style gauges is configured.

use gateway_core::EngineKind;

use crate::openai::pass_through::EngineFields;

use super::openai_compat::{
    EngineError, HealthCheck, OpenAiCompatBackend, Quirks, Routes, UpstreamConfig,
};

/// The fields a generic OpenAI-compatible server gets: OpenAI's documented
/// fields only (what else it takes is unknown).
pub const FIELDS: EngineFields = EngineFields {
    openai: true,
    chat: &[],
    completions: &[],
};

/// The routes of a generic OpenAI-compatible server.
pub const ROUTES: Routes = Routes {
    engine: EngineKind::OpenAi,
    chat: "/v1/chat/completions",
    completions: "/v1/completions",
    health: HealthCheck::Models("/v1/models"),
    metrics: None,
};

/// A generic OpenAI-compatible backend.
///
/// # Errors
/// [`EngineError::InvalidUrl`] for a URL that is not `http://host...`.
pub fn backend(config: UpstreamConfig) -> Result<OpenAiCompatBackend, EngineError> {
    OpenAiCompatBackend::with_quirks(ROUTES, Quirks::OPENAI, config)
}
