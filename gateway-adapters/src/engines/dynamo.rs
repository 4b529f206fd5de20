//! NVIDIA Dynamo's OpenAI-compatible frontend (ENGINES.md §7;
//! `ai-dynamo/dynamo:lib/llm/src/http/service/error.rs@43a0bb22fbd0`,
//! `disconnect.rs@02acc07eff50`, `openai.rs`, `service_v2.rs` and
//! `lib/runtime/src/metrics/prometheus_names.rs` seen 2026-08).
//!
//! - Routes (defaults; each can be moved by `DYN_HTTP_SVC_*_PATH`, then use
//!   the generic adapter or a `metrics_url`): `POST /v1/chat/completions`,
//!   `POST /v1/completions`, `GET /health` (ready), `GET /metrics`.
//! - Requests: OpenAI plus the `nvext` extension object; the request's
//!   extra fields, `nvext` included, are passed through unchanged.
//! - Errors: flat bodies `{"message","type","code"}` (`type` the reason
//!   phrase); overload is **529** (`Service temporarily overloaded`; 503 in
//!   older builds or with `DYN_HTTP_OVERLOAD_STATUS_CODE`) → `Overloaded`
//!   with its `Retry-After`; 404 `Model not found`; backend 4xx forwarded.
//!   Mid-stream (2026): `data: {"error":{"message","type":
//!   "internal_server_error","code":500}}` then `[DONE]`; older builds:
//!   `event: error` with the text in an SSE comment, then the end.
//! - Abort: closing the connection kills the request at once.
//! - Pressure: `dynamo_frontend_inflight_requests` and
//!   `dynamo_frontend_queued_requests`, labelled `model`. In-flight counts
//!   a request from the handler's start to the end of its response and the
//!   queue gauge from the start to its first token (`http/service/metrics.rs`),
//!   so running = in-flight − queued. No KV gauge is read.

use gateway_core::EngineKind;

use crate::openai::pass_through::EngineFields;

use super::openai_compat::{
    EngineError, ExtraFields, HealthCheck, MetricNames, OpenAiCompatBackend, Quirks, Routes,
    UpstreamConfig,
};

/// Dynamo's extras (ENGINES.md §7.2): the `nvext` object (its
/// prompt-replacing keys `token_data` and `use_raw_prompt` are refused by
/// the gateway) and the newest builds' top-level sampling fields, on both
/// routes besides OpenAI's fields.
pub const EXTRA: &[&str] = &[
    "nvext",
    "top_k",
    "min_p",
    "repetition_penalty",
    "ignore_eos",
    "min_tokens",
    "stop_token_ids",
];

/// The fields Dynamo gets: OpenAI's and [`EXTRA`].
pub const FIELDS: EngineFields = EngineFields {
    openai: true,
    chat: EXTRA,
    completions: EXTRA,
};

/// Dynamo's default routes.
pub const ROUTES: Routes = Routes {
    engine: EngineKind::Dynamo,
    chat: "/v1/chat/completions",
    completions: "/v1/completions",
    health: HealthCheck::Status("/health"),
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

/// How Dynamo departs from vLLM: only its gauges; its status codes, flat
/// bodies and both in-stream error forms are read by the shared client.
pub const QUIRKS: Quirks = Quirks {
    extra: ExtraFields::PassThrough,
    metrics: METRICS,
    message_rules: &[],
    cut_body_is_truncation: false,
    ask_token_ids: None,
};

/// A Dynamo frontend backend.
///
/// # Errors
/// [`EngineError::InvalidUrl`] for a URL that is not `http(s)://host...`,
/// [`EngineError::Tls`] for an unusable `ca_file`.
pub fn backend(config: UpstreamConfig) -> Result<OpenAiCompatBackend, EngineError> {
    OpenAiCompatBackend::with_quirks(ROUTES, QUIRKS, config)
}
