//! The embedded default config and the defaults of optional keys.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use crate::openai::pass_through::{
    BodyLimits, DEFAULT_MAX_EXTRA_BYTES, DEFAULT_MAX_EXTRA_DEPTH, DEFAULT_MAX_JSON_DEPTH,
    UnknownFields,
};
use gateway_core::{EngineKind, LatencyClass, Money, Pricing};
use gateway_policy::health::HealthConfig;
use gateway_policy::route::AffinityConfig;

use super::{
    BackendConfig, GatewayConfig, LedgerConfig, ModelConfig, OnDisconnect, ServerConfig,
    SimSettings, TenantConfig, TenantKey,
};

/// The API key of the embedded default's tenant `demo`.
pub const DEMO_API_KEY: &str = "sk-demo";

/// The admin key of the embedded default.
pub const DEMO_ADMIN_KEY: &str = "admin-demo";

/// The embedded default config as TOML (what
/// [`GatewayConfig::embedded_default`] is), e.g. to print as a starting
/// point.
pub const EMBEDDED_DEFAULT_TOML: &str = r#"# The example server's embedded default: one simulated engine, one tenant.
[server]
listen = "127.0.0.1:8080"
admin_key = "admin-demo"

[ledger]
kind = "memory"

[[tenants]]
id = "demo"
api_key = "sk-demo"

[[models]]
name = "sim-small"
context_window = 8192
input_usd_per_mtok = 0.50
cached_input_usd_per_mtok = 0.05
output_usd_per_mtok = 1.50
default_max_tokens = 256

[[backends]]
name = "sim-0"
engine = "sim"
model = "sim-small"
"#;

/// Default `server.listen`.
pub(super) const LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);
/// Default `server.max_body_bytes`: 1 MiB (and `RouterOptions::default`'s).
pub(crate) const MAX_BODY_BYTES: NonZeroUsize = nonzero_usize(1 << 20);
/// Default `server.stream_buffer_events`.
pub(super) const STREAM_BUFFER_EVENTS: NonZeroUsize = nonzero_usize(64);
/// Default of the three stream timeouts, in milliseconds.
pub(super) const STREAM_TIMEOUT_MS: u64 = 30_000;
/// Default `server.shutdown_grace_ms`.
pub(super) const SHUTDOWN_GRACE_MS: u64 = 10_000;
/// Default `server.admission_wait_ms`.
pub(super) const ADMISSION_WAIT_MS: u64 = 5_000;
/// Default `server.estimate_drift_warn_ratio` (the pipeline's).
pub(super) const ESTIMATE_DRIFT_WARN_RATIO: f64 = 0.02;
/// Default `server.unknown_fields`.
pub(crate) const UNKNOWN_FIELDS: UnknownFields = UnknownFields::Reject;
/// Default `server.max_extra_bytes`.
pub(super) const MAX_EXTRA_BYTES: NonZeroUsize = nonzero_usize(DEFAULT_MAX_EXTRA_BYTES);
/// Default `server.max_extra_depth`.
pub(super) const MAX_EXTRA_DEPTH: usize = DEFAULT_MAX_EXTRA_DEPTH;
/// Default `server.max_json_depth`.
pub(super) const MAX_JSON_DEPTH: usize = DEFAULT_MAX_JSON_DEPTH;
/// Default `server.header_read_timeout_ms`.
pub(super) const HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// Default `server.keep_alive_timeout_ms`.
pub(super) const KEEP_ALIVE_TIMEOUT_MS: u64 = 60_000;
/// Default `server.body_read_timeout_ms`.
pub(super) const BODY_READ_TIMEOUT_MS: u64 = 30_000;
/// Default `server.max_header_bytes`: 32 KiB.
pub(super) const MAX_HEADER_BYTES: usize = 32 * 1024;
/// Default `server.max_connections`.
pub(super) const MAX_CONNECTIONS: NonZeroUsize = nonzero_usize(10_000);
/// Default `server.tokenizer_queue` (the pipeline's).
pub(super) const TOKENIZER_QUEUE: usize = gateway_policy::DEFAULT_QUEUE;
/// Default `server.tokenizer_inline_bytes` (the pipeline's).
pub(super) const TOKENIZER_INLINE_BYTES: usize = gateway_policy::DEFAULT_INLINE_BYTES;
/// Default `server.tokenizer_cache_bytes` (the counter's).
pub(super) const TOKENIZER_CACHE_BYTES: usize = gateway_policy::DEFAULT_TOKENIZER_CACHE_BYTES;

/// Default `server.tokenizer_threads`: the CPU cores less one, at least
/// one (the pipeline's).
pub(super) fn tokenizer_threads() -> usize {
    gateway_policy::TokenizerPool::default().threads()
}

/// Default `models[].admission_queue` (the pipeline's).
pub(super) const ADMISSION_QUEUE: usize = 1024;
/// Default `models[].default_max_tokens` (lowered to the context window).
pub(super) const DEFAULT_MAX_TOKENS: NonZeroU32 =
    nonzero_u32(gateway_policy::ModelSpec::DEFAULT_MAX_TOKENS);

/// `n`, which must not be zero (1 if it is).
const fn nonzero_usize(n: usize) -> NonZeroUsize {
    match NonZeroUsize::new(n) {
        Some(n) => n,
        None => NonZeroUsize::MIN,
    }
}

/// `n`, which must not be zero (1 if it is).
const fn nonzero_u32(n: u32) -> NonZeroU32 {
    match NonZeroU32::new(n) {
        Some(n) => n,
        None => NonZeroU32::MIN,
    }
}

/// The `[server]` of a file that sets nothing in it.
pub(super) fn server() -> ServerConfig {
    ServerConfig {
        listen: LISTEN,
        admin_key: None,
        metrics_key: None,
        metrics_tenant_labels: true,
        max_body_bytes: MAX_BODY_BYTES,
        stream_buffer_events: STREAM_BUFFER_EVENTS,
        first_token_timeout: Duration::from_millis(STREAM_TIMEOUT_MS),
        idle_timeout: Duration::from_millis(STREAM_TIMEOUT_MS),
        client_stall_timeout: Duration::from_millis(STREAM_TIMEOUT_MS),
        shutdown_grace: Duration::from_millis(SHUTDOWN_GRACE_MS),
        admission_wait: Duration::from_millis(ADMISSION_WAIT_MS),
        request_timeout: None,
        estimate_drift_warn_ratio: ESTIMATE_DRIFT_WARN_RATIO,
        unknown_fields: UNKNOWN_FIELDS,
        body_limits: BodyLimits::default(),
        header_read_timeout: Duration::from_millis(HEADER_READ_TIMEOUT_MS),
        keep_alive_timeout: Duration::from_millis(KEEP_ALIVE_TIMEOUT_MS),
        body_read_timeout: Duration::from_millis(BODY_READ_TIMEOUT_MS),
        max_header_bytes: MAX_HEADER_BYTES,
        max_connections: MAX_CONNECTIONS,
        ready_drain: Duration::ZERO,
        tokenizer_threads: tokenizer_threads(),
        tokenizer_queue: TOKENIZER_QUEUE,
        tokenizer_inline_bytes: TOKENIZER_INLINE_BYTES,
        tokenizer_cache_bytes: TOKENIZER_CACHE_BYTES,
    }
}

/// [`GatewayConfig::embedded_default`], built without parsing (a test
/// checks it equals [`EMBEDDED_DEFAULT_TOML`] parsed).
pub(super) fn embedded() -> GatewayConfig {
    GatewayConfig {
        server: ServerConfig {
            admin_key: Some(TenantKey::from_plaintext(DEMO_ADMIN_KEY)),
            ..server()
        },
        ledger: LedgerConfig::Memory,
        health: HealthConfig::default(),
        routing: AffinityConfig::default(),
        tenants: vec![TenantConfig {
            id: "demo".to_owned(),
            key: TenantKey::from_plaintext(DEMO_API_KEY),
            budget: None,
            requests_per_minute: None,
            tokens_per_minute: None,
            max_concurrency: None,
            max_connections: None,
            weight: NonZeroU32::MIN,
            priority: LatencyClass::Interactive,
            allow_priority_raise: false,
            models: None,
        }],
        models: vec![ModelConfig {
            name: "sim-small".to_owned(),
            tokenizer: None,
            chat_template: None,
            add_bos_token: true,
            bos_token: "<s>".to_owned(),
            eos_token: "</s>".to_owned(),
            context_window: nonzero_u32(8192),
            // $0.50, $0.05 and $1.50 per million tokens.
            pricing: Pricing {
                input: Money::from_picos(500_000),
                cached_input: Money::from_picos(50_000),
                output: Money::from_picos(1_500_000),
            },
            default_max_tokens: DEFAULT_MAX_TOKENS,
            fallbacks: Vec::new(),
            admission_queue: ADMISSION_QUEUE,
            continuation: None,
            media: gateway_policy::MediaCosts::default(),
            unknown_fields: None,
            slo: gateway_policy::route::Slo::default(),
            prefer: Vec::new(),
        }],
        backends: vec![BackendConfig {
            name: "sim-0".to_owned(),
            engine: EngineKind::Sim,
            url: None,
            model: "sim-small".to_owned(),
            served_model: "sim-small".to_owned(),
            max_concurrency: None,
            on_disconnect: OnDisconnect::Abort,
            api_key_env: None,
            metrics_url: None,
            ca_file: None,
            capabilities: None,
            context_window: None,
            sim: Some(SimSettings::default()),
        }],
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn embedded_default_is_its_toml() {
        assert_eq!(
            GatewayConfig::parse(EMBEDDED_DEFAULT_TOML, Path::new(".")),
            Ok(embedded())
        );
    }

    #[test]
    fn defaults_are_the_pipelines() {
        let settings = gateway_policy::Settings::default();
        assert_eq!(ESTIMATE_DRIFT_WARN_RATIO, settings.drift_warn_ratio);
        assert_eq!(ADMISSION_QUEUE, settings.admission_queue);
    }
}
