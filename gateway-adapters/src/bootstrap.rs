//! From a validated [`GatewayConfig`] to a running [`Gateway`]: backends
//! built per engine, models with their token counters, tenants with their
//! keys and limits.

use std::num::NonZeroUsize;
use std::sync::Arc;

use gateway_core::{Backend, ByteBound, EngineKind, TenantId, TokenCounter};
use gateway_policy::{
    BuildError, Gateway, ModelReference, ModelSpec, Settings, Tenant, TokenizerPool,
};

use crate::config::{GatewayConfig, LedgerConfig, ModelConfig, TenantKey};
use crate::engines::{self, EngineError};
use crate::openai::pass_through::{ModelFields, PassThrough};
use crate::server::{RouterOptions, ServeOptions};
use crate::sim::SimBackend;

/// Why a valid config could still not be turned into a gateway.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct BootstrapError {
    /// The config key the problem is about.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

fn problem(path: String, message: impl Into<String>) -> BootstrapError {
    BootstrapError {
        path,
        message: message.into(),
    }
}

/// The pipeline settings of `config`.
pub fn settings(config: &GatewayConfig) -> Settings {
    let s = &config.server;
    Settings {
        first_token_timeout: s.first_token_timeout,
        idle_timeout: s.idle_timeout,
        client_stall_timeout: s.client_stall_timeout,
        stream_buffer_events: s.stream_buffer_events,
        admission_wait: s.admission_wait,
        request_timeout: s.request_timeout,
        drift_warn_ratio: s.estimate_drift_warn_ratio,
        ..Settings::default()
    }
}

/// The tokenizer pool of `config` (`tokenizer_threads = 0`: inline).
pub fn tokenizer_pool(config: &GatewayConfig) -> TokenizerPool {
    let s = &config.server;
    match NonZeroUsize::new(s.tokenizer_threads) {
        Some(threads) => TokenizerPool::new(threads, s.tokenizer_queue, s.tokenizer_inline_bytes),
        None => TokenizerPool::inline(),
    }
}

/// The router options of `config`.
pub fn router_options(config: &GatewayConfig) -> RouterOptions {
    RouterOptions {
        admin_key_sha256: config
            .server
            .admin_key
            .as_ref()
            .map(|TenantKey::Sha256(h)| *h),
        metrics_key_sha256: config
            .server
            .metrics_key
            .as_ref()
            .map(|TenantKey::Sha256(h)| *h),
        max_body_bytes: config.server.max_body_bytes.get(),
        pass_through: pass_through(config),
    }
}

/// The pass-through policy of `config`: the server's caps and
/// `unknown_fields`, and per model the fields of the engines that may
/// serve it (its backends' and its fallbacks').
pub fn pass_through(config: &GatewayConfig) -> PassThrough {
    let server = &config.server;
    let mut policy = PassThrough::new(server.body_limits, server.unknown_fields);
    for model in &config.models {
        let serving = |name: &str| name == model.name || model.fallbacks.iter().any(|f| f == name);
        let engines = config
            .backends
            .iter()
            .filter(|b| serving(&b.model))
            .map(|b| engines::fields(b.engine));
        let fields = ModelFields::new(engines).with_unknown(model.unknown_fields);
        policy = policy.with_model(model.name.clone(), fields);
    }
    policy
}

/// The connection options of `config`: the edge limits of `[server]` and
/// `tenants[].max_connections`, and `shutdown_grace_ms` as the `grace`
/// [`serve_and_drain`](crate::server::serve_and_drain) gives streams at
/// shutdown.
pub fn serve_options(config: &GatewayConfig) -> ServeOptions {
    let s = &config.server;
    let mut options = ServeOptions::with_grace(s.shutdown_grace);
    options.header_read_timeout = s.header_read_timeout;
    options.keep_alive_timeout = s.keep_alive_timeout;
    options.body_read_timeout = s.body_read_timeout;
    options.max_header_bytes = s.max_header_bytes;
    options.max_connections = s.max_connections.get();
    for tenant in &config.tenants {
        if let (Some(max), TenantKey::Sha256(key)) = (tenant.max_connections, tenant.key) {
            options.tenant_connections.insert(key, &tenant.id, max);
        }
    }
    options
}

/// The counter of `models[index]`; its tokenizer's segment cache bounded
/// to `cache_bytes`.
fn counter(
    index: usize,
    model: &ModelConfig,
    cache_bytes: usize,
) -> Result<Arc<dyn TokenCounter>, BootstrapError> {
    let Some(path) = &model.tokenizer else {
        return Ok(Arc::new(ByteBound::default()));
    };
    #[cfg(feature = "tokenizers")]
    {
        let mut counter = gateway_policy::HfTokenCounter::from_file(path, model.add_bos_token)
            .map_err(|e| problem(format!("models[{index}].tokenizer"), e.to_string()))?
            .with_tokenizer_cache_bytes(cache_bytes);
        if let Some(template) = &model.chat_template {
            let template = gateway_policy::ChatTemplate::from_file(
                template,
                &model.bos_token,
                &model.eos_token,
            )
            .map_err(|e| problem(format!("models[{index}].chat_template"), e.to_string()))?;
            counter = counter.with_chat_template(template);
        }
        Ok(Arc::new(counter))
    }
    #[cfg(not(feature = "tokenizers"))]
    {
        let _ = (path, cache_bytes);
        Err(problem(
            format!("models[{index}].tokenizer"),
            "this build has no tokenizer support (feature `tokenizers`)",
        ))
    }
}

fn backend(config: &GatewayConfig, index: usize) -> Result<Arc<dyn Backend>, BootstrapError> {
    let path = format!("backends[{index}]");
    let Some(b) = config.backends.get(index) else {
        return Err(problem(path, "no such backend"));
    };
    if b.engine == EngineKind::Sim {
        return match b.sim_config(&config.models) {
            Some(sim) => Ok(Arc::new(SimBackend::new(sim))),
            None => Err(problem(path, "a sim backend without sim settings")),
        };
    }
    b.remote_backend().map_err(|e| {
        let key = match &e {
            EngineError::MissingApiKey(_) | EngineError::ApiKeyRequired(_) => "api_key_env",
            EngineError::InvalidUrl { url, .. }
                if b.metrics_url.as_deref() == Some(url.as_str()) =>
            {
                "metrics_url"
            }
            EngineError::InvalidUrl { .. } => "url",
            _ => "engine",
        };
        problem(format!("{path}.{key}"), e.to_string())
    })
}

/// The ledger `[ledger]` asks for, with every tenant's budget opened in it;
/// `None` for the default in-memory ledger (the builder opens it).
#[cfg(feature = "redis")]
fn ledger(
    config: &GatewayConfig,
) -> Result<Option<Arc<dyn gateway_policy::AccountLedger>>, BootstrapError> {
    use gateway_policy::{RedisLedger, RedisLedgerConfig};
    let LedgerConfig::Redis { url, settings } = &config.ledger else {
        return Ok(None);
    };
    let mut redis = RedisLedgerConfig::new(url.as_str())
        .hold_ttl(std::time::Duration::from_millis(settings.hold_ttl_ms))
        .settled_ttl(std::time::Duration::from_millis(settings.settled_ttl_ms))
        .journal_max_entries(usize::try_from(settings.journal_max_entries).unwrap_or(usize::MAX));
    if let Some(dir) = &settings.journal_dir {
        redis = redis.journal_dir(dir);
    }
    // Blocks for at most the connect/response timeouts (2 s each): start-up.
    let ledger = RedisLedger::connect_blocking(redis).map_err(|e| {
        problem(
            "ledger.url".into(),
            format!("cannot use the redis ledger: {e}"),
        )
    })?;
    for (i, t) in config.tenants.iter().enumerate() {
        ledger
            .open_blocking(&TenantId::new(t.id.as_str()), t.budget)
            .map_err(|e| {
                problem(
                    format!("tenants[{i}].budget_usd"),
                    format!("cannot open the budget in the redis ledger: {e}"),
                )
            })?;
    }
    Ok(Some(Arc::new(ledger)))
}

/// Without the `redis` feature only the in-memory ledger exists.
#[cfg(not(feature = "redis"))]
fn ledger(
    config: &GatewayConfig,
) -> Result<Option<Arc<dyn gateway_policy::AccountLedger>>, BootstrapError> {
    match config.ledger {
        LedgerConfig::Memory => Ok(None),
        LedgerConfig::Redis { .. } => Err(problem(
            "ledger.kind".into(),
            "this build has no redis ledger (feature `redis`)",
        )),
    }
}

/// With `[ledger] kind = "redis"`, the tenants' rate and concurrency limits
/// kept in the same Redis under the same key prefix, so that the replicas
/// share them (connected on first use: the ledger has just reached Redis);
/// `None` for the default in-process limiter.
#[cfg(feature = "redis")]
fn limiter(
    config: &GatewayConfig,
) -> Result<Option<Arc<dyn gateway_policy::Limiter>>, BootstrapError> {
    use gateway_policy::{RedisLedgerConfig, RedisLimiter, RedisLimiterConfig};
    let LedgerConfig::Redis { url, .. } = &config.ledger else {
        return Ok(None);
    };
    let limits = RedisLimiterConfig::from_ledger(&RedisLedgerConfig::new(url.as_str()));
    let limiter = RedisLimiter::new(limits).map_err(|e| {
        problem(
            "ledger.url".into(),
            format!("cannot use the redis limiter: {e}"),
        )
    })?;
    Ok(Some(Arc::new(limiter)))
}

/// Without the `redis` feature limits are kept in the process.
#[cfg(not(feature = "redis"))]
fn limiter(
    _config: &GatewayConfig,
) -> Result<Option<Arc<dyn gateway_policy::Limiter>>, BootstrapError> {
    Ok(None)
}

/// Builds the gateway `config` describes. With `[ledger] kind = "redis"`
/// it connects to Redis now and opens every tenant's budget there, and
/// keeps the tenants' rate and concurrency limits there too.
///
/// # Errors
/// A [`BootstrapError`] naming the key whose value could not be used (an
/// unreadable tokenizer, an engine without an adapter, a Redis that cannot
/// be reached, a Redis ledger in a build without it, a backend that says it
/// does not serve its model: the gateway's [`BuildError`] with the key it
/// is about).
pub fn build_gateway(config: &GatewayConfig) -> Result<Gateway, BootstrapError> {
    build_gateway_with(config, |_| None)
}

/// [`build_gateway`], with `custom` giving the backend for an entry of
/// `[[backends]]` instead of the one the config describes (`None`: the
/// config's) — for hosts with their own backends, and tests (a sim with
/// faults). The entry's model, limits and health policy still apply.
///
/// # Errors
/// As [`build_gateway`].
pub fn build_gateway_with(
    config: &GatewayConfig,
    mut custom: impl FnMut(&crate::config::BackendConfig) -> Option<Arc<dyn Backend>>,
) -> Result<Gateway, BootstrapError> {
    let ledger = ledger(config)?;
    let mut builder = Gateway::builder(settings(config))
        .affinity(config.routing)
        .metrics_tenant_labels(config.server.metrics_tenant_labels)
        .tokenizer_pool(tokenizer_pool(config));
    if let Some(ledger) = ledger {
        builder = builder.ledger(ledger);
    }
    if let Some(limiter) = limiter(config)? {
        builder = builder.limiter(limiter);
    }
    for t in &config.tenants {
        let TenantKey::Sha256(hash) = t.key;
        let tenant = Tenant {
            id: TenantId::new(t.id.as_str()),
            budget: t.budget,
            requests_per_minute: t.requests_per_minute,
            tokens_per_minute: t.tokens_per_minute,
            max_concurrency: t.max_concurrency,
            weight: t.weight,
            priority: t.priority,
            allow_priority_raise: t.allow_priority_raise,
            models: t.models.as_ref().map(|m| m.iter().cloned().collect()),
        };
        builder = builder.tenant(tenant, hash);
    }
    for (i, m) in config.models.iter().enumerate() {
        builder = builder.model(ModelSpec {
            name: m.name.clone(),
            pricing: m.pricing,
            context_window: m.context_window.get(),
            default_max_tokens: m.default_max_tokens.get(),
            media: m.media,
            counter: counter(i, m, config.server.tokenizer_cache_bytes)?,
        });
        let fallbacks: Vec<&str> = m.fallbacks.iter().map(String::as_str).collect();
        builder = builder
            .admission_queue(&m.name, m.admission_queue)
            .fallbacks(&m.name, &fallbacks);
        if m.slo.is_set() {
            builder = builder.slo(&m.name, m.slo);
        }
        if !m.prefer.is_empty() {
            builder = builder.prefer(&m.name, &m.prefer);
        }
        if let Some(continuation) = m.continuation {
            builder = builder.continuation(&m.name, continuation);
        }
    }
    // Each entry's backend's own name (a host's backend may name itself
    // otherwise), to point a build error at its entry.
    let mut backend_names = Vec::with_capacity(config.backends.len());
    for (i, b) in config.backends.iter().enumerate() {
        let built = match custom(b) {
            Some(built) => built,
            None => backend(config, i)?,
        };
        backend_names.push(built.info().name.clone());
        if b.on_disconnect.drain_timeout().is_some() && built.drain_on_client_gone().is_none() {
            // Draining is built into the shared OpenAI-compatible client
            // (vllm, trtllm, dynamo, nim, openai); other adapters abort.
            tracing::warn!(
                backend = b.name.as_str(),
                engine = b.engine.as_str(),
                "backends[{i}].on_disconnect = \"drain\" is not supported by this engine's adapter: it aborts"
            );
        }
        builder = builder.backend_with(
            built,
            &b.model,
            &b.served_model,
            b.max_concurrency,
            config.health,
        );
        if b.capabilities.is_some() || b.context_window.is_some() {
            let caps = b.capabilities.unwrap_or(b.engine.default_capabilities());
            let own = backend_names.last().map_or(b.name.as_str(), String::as_str);
            builder = builder.serves(own, caps, b.context_window);
        }
    }
    builder
        .build()
        .map_err(|e| problem(build_error_path(config, &backend_names, &e), e.to_string()))
}

/// The config key a [`BuildError`] is about (`config` when none is);
/// `backend_names[i]` is the name `backends[i]`'s backend gave itself.
fn build_error_path(config: &GatewayConfig, backend_names: &[String], e: &BuildError) -> String {
    let backend = |name: &str, key: &str| {
        backend_names
            .iter()
            .position(|b| b == name)
            .map(|i| format!("backends[{i}]{key}"))
    };
    let model = |name: &str, key: &str| {
        config
            .models
            .iter()
            .position(|m| m.name == name)
            .map(|i| format!("models[{i}]{key}"))
    };
    let path = match e {
        BuildError::BackendModelMismatch { backend: b, .. }
        | BuildError::UnknownModel {
            by: ModelReference::Backend(b),
            ..
        } => backend(b, ".model"),
        // The second entry of the name.
        BuildError::DuplicateBackend { backend: b } => backend_names
            .iter()
            .rposition(|n| n == b)
            .map(|i| format!("backends[{i}].name")),
        BuildError::UnknownModel {
            by: ModelReference::FallbackOf(m),
            ..
        }
        | BuildError::FallbackToItself { model: m }
        | BuildError::RepeatedFallback { model: m, .. } => model(m, ".fallbacks"),
        BuildError::DuplicateModel { model: m } | BuildError::ModelWithoutBackend { model: m } => {
            model(m, "")
        }
        BuildError::DuplicateTenant { tenant } => config
            .tenants
            .iter()
            .position(|t| t.id == *tenant)
            .map(|i| format!("tenants[{i}].id")),
        _ => None,
    };
    path.unwrap_or_else(|| "config".to_owned())
}
