//! NVIDIA NIM for LLMs (ENGINES.md §6, from NVIDIA's documentation: NIM is
//! closed source; its observability page
//! and the 2.0/2.1 migration guides).
//!
//! - Routes: `POST /v1/chat/completions`, `POST /v1/completions`; readiness
//!   `GET /v1/health/ready` (200 once the model is loaded, else 503;
//!   `/v1/health/live` answers 200 before that and is not used);
//!   Prometheus at `GET /v1/metrics`.
//! - Requests: 1.x takes OpenAI plus `nvext`; 2.x is vLLM or SGLang
//!   underneath, which accept unknown fields: extra fields are passed
//!   through.
//! - Wire behaviour (stream, errors, abort) is the bundled engine's, read
//!   by the shared client.
//! - Pressure: 1.x publishes unprefixed `num_requests_running`,
//!   `num_requests_waiting`, `gpu_cache_usage_perc`; 2.x names are
//!   unverified, so vLLM's and SGLang's names are read too (the first
//!   name with samples wins).
//! - An API key (`api_key_env`) is sent as `Authorization: Bearer` when
//!   set. A self-hosted NIM (a container on your own GPUs) serves its
//!   OpenAI routes without one (its `NGC_API_KEY` is for pulling the
//!   model); NVIDIA's hosted API ([`is_hosted`]) needs it, so a config
//!   pointing there without `api_key_env` is refused at start.

use gateway_core::EngineKind;

use crate::openai::pass_through::EngineFields;

use super::openai_compat::{
    EngineError, ExtraFields, HealthCheck, MetricNames, OpenAiCompatBackend, Quirks, Routes,
    UpstreamConfig,
};

/// The host of NVIDIA's hosted API catalog (`integrate.api.nvidia.com`
/// and its siblings), which answers 401 without a key.
const HOSTED_DOMAIN: &str = "api.nvidia.com";

/// Whether `url` points at NVIDIA's hosted API (its host is
/// `api.nvidia.com` or ends in `.api.nvidia.com`), where an API key is
/// required.
///
/// ```
/// use gateway_adapters::engines::nim::is_hosted;
///
/// assert!(is_hosted("https://integrate.api.nvidia.com/v1"));
/// assert!(is_hosted("https://API.NVIDIA.COM"));
/// assert!(!is_hosted("http://10.0.0.5:8000"));
/// assert!(!is_hosted("http://nim.internal:8000/api.nvidia.com"));
/// assert!(!is_hosted("https://notapi.nvidia.com.example.org"));
/// ```
pub fn is_hosted(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    uri.host().is_some_and(|host| {
        let host = host.to_ascii_lowercase();
        host == HOSTED_DOMAIN
            || host
                .strip_suffix(HOSTED_DOMAIN)
                .is_some_and(|rest| rest.ends_with('.'))
    })
}

/// NIM's extras (ENGINES.md §6): 1.x's `nvext` (prompt-replacing keys
/// refused by the gateway) and, for 2.x (vLLM underneath), vLLM's
/// sampling extras at the top level.
pub const EXTRA: &[&str] = &[
    "nvext",
    "top_k",
    "min_p",
    "repetition_penalty",
    "length_penalty",
    "ignore_eos",
    "min_tokens",
    "stop_token_ids",
    "skip_special_tokens",
    "include_stop_str_in_output",
    "structured_outputs",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
];

/// The fields NIM gets: OpenAI's and [`EXTRA`].
pub const FIELDS: EngineFields = EngineFields {
    openai: true,
    chat: EXTRA,
    completions: EXTRA,
};

/// NIM's routes.
pub const ROUTES: Routes = Routes {
    engine: EngineKind::Nim,
    chat: "/v1/chat/completions",
    completions: "/v1/completions",
    health: HealthCheck::Status("/v1/health/ready"),
    metrics: Some("/v1/metrics"),
};

/// NIM's gauges: 1.x names first, then vLLM's and SGLang's.
pub const METRICS: MetricNames = MetricNames {
    running: &[
        "num_requests_running",
        "vllm:num_requests_running",
        "sglang:num_running_reqs",
    ],
    waiting: &[
        "num_requests_waiting",
        "vllm:num_requests_waiting",
        "sglang:num_queue_reqs",
    ],
    kv_usage: &[
        "gpu_cache_usage_perc",
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",
        "sglang:token_usage",
    ],
    model_labels: &["model_name"],
    running_includes_waiting: false,
};

/// How NIM departs from vLLM: its gauges.
pub const QUIRKS: Quirks = Quirks {
    extra: ExtraFields::PassThrough,
    metrics: METRICS,
    message_rules: &[],
    cut_body_is_truncation: false,
    ask_token_ids: None,
    finish_chunk_is_marker: false,
};

/// A NIM backend (the key, if any, is `config.api_key`).
///
/// # Errors
/// [`EngineError::InvalidUrl`] for a URL that is not `http(s)://host...`,
/// [`EngineError::Tls`] for an unusable `ca_file`.
pub fn backend(config: UpstreamConfig) -> Result<OpenAiCompatBackend, EngineError> {
    OpenAiCompatBackend::with_quirks(ROUTES, QUIRKS, config)
}
