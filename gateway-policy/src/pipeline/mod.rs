//! The [`Gateway`]: authenticate, estimate, limit, reserve, route, start
//! with retries before the first token, stream with metering, settle once.

mod attempt;
mod build_error;
mod cap;
mod capable;
mod continuation;
mod embed;
mod estimate;
mod fallback;
mod settings;
mod stream;

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use gateway_core::{
    Backend, CancelGuard, CancelHandle, CancelReason, Capabilities, ChatInputs, EngineKind,
    GenerateRequest, LatencyClass, Ledger, LedgerError, Prompt, RequestId, ReserveRequest,
    SamplingParams, TenantId, UsageMeter,
};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::Instrument;

pub use build_error::{BuildError, ModelReference};
pub use continuation::{Continuation, ContinuationIds};
pub use embed::EmbedResponse;
pub use settings::Settings;
pub use stream::GatewayStream;

use crate::admission::FairQueue;
use crate::auth::{Authenticator, StaticKeys};
use crate::health::HealthConfig;
use crate::ledger::{AccountLedger, MemoryLedger, TenantAccount};
use crate::limits::{AdmitError, LimitKind, Limiter, TenantLimiter};
use crate::metrics::{BackendLabels, Metrics};
use crate::pool::BackendSlot;
use crate::route::{AffinityConfig, PrefixAffinity, RoutePolicy, Slo, SloRouter};
use crate::tokenizer_pool::{PoolError, TokenizerPool};
use crate::{ErrorCode, GatewayError, ModelSpec, Tenant};

/// Tenant label used before a tenant is known.
pub const UNAUTHENTICATED: &str = "unauthenticated";
/// Model label used when the requested model is not configured.
pub const UNKNOWN_MODEL: &str = "unknown";

/// A request as a client sends it, before the gateway fills defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientRequest {
    /// The gateway's id of the request: sent to engines, keys its ledger
    /// hold, names it in aborts. The HTTP server always makes a fresh
    /// [`RequestId::generate`]; a client never chooses it.
    pub id: RequestId,
    /// The client's own id (its `x-request-id`), for correlation only:
    /// recorded on the request span as `client_request_id`, never sent to
    /// an engine.
    pub client_id: Option<Arc<str>>,
    /// The public model name.
    pub model: String,
    /// The prompt.
    pub prompt: Prompt,
    /// Sampling parameters.
    pub sampling: SamplingParams,
    /// `max_tokens`; the model's default when absent.
    pub max_tokens: Option<u32>,
    /// Interactive or batch.
    pub latency_class: LatencyClass,
    /// Fields passed through to engines, as JSON object text.
    pub extra: Option<Arc<str>>,
    /// The chat request's `tools` (the JSON array as sent): sent to the
    /// engine and counted in the prompt estimate.
    pub tools: Option<Arc<str>>,
    /// What the request asks for beyond plain text (see
    /// [`GenerateRequest::needs`]): only backends that serve all of it are
    /// tried, and a request no backend can serve is refused with 400
    /// `unsupported_capability` before admission. The HTTP server fills it
    /// from the request (`gateway_adapters::openai::needs`); a host
    /// building requests in code declares it.
    pub needs: Capabilities,
}

impl ClientRequest {
    /// A request for `model` with defaults.
    pub fn new(id: impl Into<RequestId>, model: impl Into<String>, prompt: Prompt) -> Self {
        ClientRequest {
            id: id.into(),
            client_id: None,
            model: model.into(),
            prompt,
            sampling: SamplingParams::default(),
            max_tokens: None,
            latency_class: LatencyClass::Interactive,
            extra: None,
            tools: None,
            needs: Capabilities::NONE,
        }
    }

    /// [`ClientRequest::new`] with a fresh id from
    /// [`RequestId::generate`], the generator the HTTP server uses (`gw-`
    /// and 128 random bits): unique and unguessable, so no request can
    /// name, or abort, another's generation.
    ///
    /// ```
    /// use gateway_core::Prompt;
    /// use gateway_policy::ClientRequest;
    ///
    /// let a = ClientRequest::with_generated_id("tiny", Prompt::Text("hi".into()));
    /// let b = ClientRequest::with_generated_id("tiny", Prompt::Text("hi".into()));
    /// assert_ne!(a.id, b.id);
    /// assert!(a.id.is_generated());
    /// ```
    pub fn with_generated_id(model: impl Into<String>, prompt: Prompt) -> Self {
        ClientRequest::new(RequestId::generate(), model, prompt)
    }
}

/// Assembles a [`Gateway`].
pub struct GatewayBuilder {
    settings: Settings,
    keys: StaticKeys,
    authenticator: Option<Arc<dyn Authenticator>>,
    ledger: Option<Arc<dyn AccountLedger>>,
    limiter: Option<Arc<dyn Limiter>>,
    router: Option<Arc<dyn RoutePolicy>>,
    tenants: Vec<Arc<Tenant>>,
    models: Vec<ModelSpec>,
    backends: Vec<PendingBackend>,
    fallbacks: Vec<(String, Vec<String>)>,
    continuations: Vec<(String, Continuation)>,
    queues: Vec<(String, usize)>,
    slos: Vec<(String, Slo)>,
    serving: Vec<(String, Capabilities, Option<NonZeroU32>)>,
    prefer: Vec<(String, Vec<EngineKind>)>,
    affinity: AffinityConfig,
    metrics_tenant_labels: bool,
    tokenizer: TokenizerPool,
}

/// A backend added to a builder.
struct PendingBackend {
    backend: Arc<dyn Backend>,
    model: String,
    served_model: String,
    max_concurrency: Option<NonZeroU32>,
    health: HealthConfig,
}

impl fmt::Debug for GatewayBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayBuilder")
            .field("settings", &self.settings)
            .field("tenants", &self.tenants.len())
            .field("models", &self.models.len())
            .field("backends", &self.backends.len())
            .finish_non_exhaustive()
    }
}

impl GatewayBuilder {
    /// Adds a tenant with the SHA-256 of its key (for the default
    /// authenticator).
    #[must_use]
    pub fn tenant(mut self, tenant: Tenant, key_sha256: [u8; 32]) -> Self {
        let tenant = Arc::new(tenant);
        self.keys.insert_hash(key_sha256, tenant.clone());
        self.tenants.push(tenant);
        self
    }

    /// Adds a tenant whose API key is `api_key` in plain text: the builder
    /// keeps only its SHA-256 ([`key_hash`](crate::key_hash)), as the
    /// config file does with a tenant's `api_key`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use gateway_core::testkit::MockBackend;
    /// use gateway_policy::{Gateway, ModelSpec, Settings, Tenant};
    ///
    /// let (mock, _handle) = MockBackend::new("mock-0", "tiny");
    /// let gateway = Gateway::builder(Settings::default())
    ///     .tenant_with_api_key(Tenant::new("team-a").with_budget_usd(5.0).unwrap(), "sk-a")
    ///     .model(ModelSpec::new("tiny", 4096))
    ///     .backend(Arc::new(mock), "tiny", "tiny", None)
    ///     .build()
    ///     .unwrap();
    /// let tenant = gateway.authenticate(Some("sk-a")).unwrap();
    /// assert_eq!(tenant.id.as_str(), "team-a");
    /// assert!(gateway.authenticate(Some("sk-b")).is_err());
    /// ```
    #[must_use]
    pub fn tenant_with_api_key(self, tenant: Tenant, api_key: &str) -> Self {
        self.tenant(tenant, crate::key_hash(api_key))
    }

    /// Where prompts are tokenized (default: [`TokenizerPool::default`],
    /// one thread per core but one; [`TokenizerPool::inline`] counts on the
    /// runtime).
    #[must_use]
    pub fn tokenizer_pool(mut self, pool: TokenizerPool) -> Self {
        self.tokenizer = pool;
        self
    }

    /// Adds a model.
    #[must_use]
    pub fn model(mut self, model: ModelSpec) -> Self {
        self.models.push(model);
        self
    }

    /// Adds a backend serving public `model` as `served_model`, with the
    /// gateway sending it at most `max_concurrency` requests at once.
    #[must_use]
    pub fn backend(
        self,
        backend: Arc<dyn Backend>,
        model: &str,
        served_model: &str,
        max_concurrency: Option<NonZeroU32>,
    ) -> Self {
        self.backend_with(
            backend,
            model,
            served_model,
            max_concurrency,
            HealthConfig::default(),
        )
    }

    /// [`GatewayBuilder::backend`] with its health policy: circuit breaker
    /// and the floor of its adaptive concurrency limit.
    #[must_use]
    pub fn backend_with(
        mut self,
        backend: Arc<dyn Backend>,
        model: &str,
        served_model: &str,
        max_concurrency: Option<NonZeroU32>,
        health: HealthConfig,
    ) -> Self {
        self.backends.push(PendingBackend {
            backend,
            model: model.to_owned(),
            served_model: served_model.to_owned(),
            max_concurrency,
            health,
        });
        self
    }

    /// Sets the models a request for `model` may move to, in order, when
    /// `model`'s backends cannot start it before its first token (see
    /// [`Gateway::generate`]).
    #[must_use]
    pub fn fallbacks(mut self, model: &str, fallbacks: &[&str]) -> Self {
        self.fallbacks.push((
            model.to_owned(),
            fallbacks.iter().map(|f| (*f).to_owned()).collect(),
        ));
        self
    }

    /// Sets `model`'s latency targets per priority class. With targets on
    /// any model, the default routing policy is [`SloRouter`] (each request
    /// to the backend with the lowest predicted time to first token among
    /// those that keep its class's targets; batch held back while load
    /// alone makes the interactive targets missed), and the attainment
    /// metrics count each finished request against its class's targets.
    #[must_use]
    pub fn slo(mut self, model: &str, slo: Slo) -> Self {
        self.slos.push((model.to_owned(), slo));
        self
    }

    /// Sets what the backend named `backend` serves beyond plain text, and
    /// its own context window when smaller than its model's (prompt plus
    /// completion tokens). Without it a backend serves its engine's
    /// [`EngineKind::default_capabilities`] with the model's window.
    /// Requests that need more are never sent to it (see
    /// [`Gateway::generate`]). The last call for a name wins.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use gateway_core::{Capabilities, Capability};
    /// use gateway_core::testkit::MockBackend;
    /// use gateway_policy::{Gateway, ModelSpec, Settings};
    ///
    /// let (mock, _handle) = MockBackend::new("plain-0", "tiny");
    /// let gateway = Gateway::builder(Settings::default())
    ///     .model(ModelSpec::new("tiny", 4096))
    ///     .backend(Arc::new(mock), "tiny", "tiny", None)
    ///     .serves("plain-0", Capabilities::NONE.with(Capability::Logprobs), None)
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(gateway.backends()[0].capabilities().to_string(), "logprobs");
    /// ```
    #[must_use]
    pub fn serves(
        mut self,
        backend: &str,
        capabilities: Capabilities,
        context_window: Option<NonZeroU32>,
    ) -> Self {
        self.serving
            .push((backend.to_owned(), capabilities, context_window));
        self
    }

    /// Sets the engine kinds whose backends of `model` interactive requests
    /// try first, in this order (e.g. `[EngineKind::TrtLlm,
    /// EngineKind::Nim]` for latency); the routing policy orders the rest
    /// and each kind's own backends. Batch requests are not affected.
    #[must_use]
    pub fn prefer(mut self, model: &str, engines: &[EngineKind]) -> Self {
        self.prefer.push((model.to_owned(), engines.to_vec()));
        self
    }

    /// Lets a stream of `model` that fails after its first token, by the
    /// engine's fault, go on on another of the model's backends (see
    /// [`Continuation`]). Off unless set.
    #[must_use]
    pub fn continuation(mut self, model: &str, continuation: Continuation) -> Self {
        self.continuations.push((model.to_owned(), continuation));
        self
    }

    /// Sets how many requests may wait for `model`'s capacity (default
    /// [`Settings::admission_queue`]); past it they get `overloaded`.
    #[must_use]
    pub fn admission_queue(mut self, model: &str, capacity: usize) -> Self {
        self.queues.push((model.to_owned(), capacity));
        self
    }

    /// Whether metrics name tenants in their `tenant` label (the default),
    /// or read [`crate::metrics::ALL_TENANTS`] there for every tenant (see
    /// [`Metrics::with_tenant_labels`]).
    #[must_use]
    pub fn metrics_tenant_labels(mut self, on: bool) -> Self {
        self.metrics_tenant_labels = on;
        self
    }

    /// Sets the default routing policy's prefix-affinity settings (ignored
    /// with [`GatewayBuilder::route_policy`]).
    #[must_use]
    pub fn affinity(mut self, config: AffinityConfig) -> Self {
        self.affinity = config;
        self
    }

    /// Replaces the in-memory ledger.
    #[must_use]
    pub fn ledger(mut self, ledger: Arc<dyn AccountLedger>) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// Replaces the per-tenant limiter.
    #[must_use]
    pub fn limiter(mut self, limiter: Arc<dyn Limiter>) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// Replaces the routing policy.
    #[must_use]
    pub fn route_policy(mut self, router: Arc<dyn RoutePolicy>) -> Self {
        self.router = Some(router);
        self
    }

    /// Replaces the static-key authenticator.
    #[must_use]
    pub fn authenticator(mut self, authenticator: Arc<dyn Authenticator>) -> Self {
        self.authenticator = Some(authenticator);
        self
    }

    /// Builds the gateway.
    ///
    /// # Errors
    /// A [`BuildError`] for: duplicate names (of models, backends,
    /// tenants); a backend registered for an unknown model, or for a model
    /// its `BackendInfo::models` says it does not serve (under neither the
    /// public name nor the served name); a model without backends;
    /// fallbacks, a continuation or a queue size of an unknown model; a
    /// fallback that is
    /// unknown, repeated or the model itself.
    pub fn build(self) -> Result<Gateway, BuildError> {
        let mut models = HashMap::new();
        for m in self.models {
            let name = m.name.clone();
            if models.insert(name.clone(), Arc::new(m)).is_some() {
                return Err(BuildError::DuplicateModel { model: name });
            }
        }
        let mut sizes: HashMap<String, usize> = HashMap::new();
        for (model, size) in self.queues {
            if !models.contains_key(&model) {
                return Err(BuildError::UnknownModel {
                    model,
                    by: ModelReference::AdmissionQueue,
                });
            }
            sizes.insert(model, size);
        }
        let queues: HashMap<String, Arc<FairQueue>> = models
            .keys()
            .map(|m| {
                let size = sizes
                    .get(m)
                    .copied()
                    .unwrap_or(self.settings.admission_queue);
                (m.clone(), Arc::new(FairQueue::new(size)))
            })
            .collect();
        let mut pool = Vec::new();
        let mut by_model: HashMap<String, Vec<usize>> = HashMap::new();
        for PendingBackend {
            backend,
            model,
            served_model: served,
            max_concurrency: max,
            health,
        } in self.backends
        {
            let info = backend.info();
            if !models.contains_key(&model) {
                return Err(BuildError::UnknownModel {
                    model,
                    by: ModelReference::Backend(info.name.clone()),
                });
            }
            if !info.models.is_empty() && !info.serves(&model) && !info.serves(&served) {
                return Err(BuildError::BackendModelMismatch {
                    backend: info.name.clone(),
                    model,
                    served_model: served,
                    serves: info.models.clone(),
                });
            }
            if pool.iter().any(|s: &Arc<BackendSlot>| s.name == info.name) {
                return Err(BuildError::DuplicateBackend {
                    backend: info.name.clone(),
                });
            }
            by_model.entry(model.clone()).or_default().push(pool.len());
            let queue = queues[&model].clone();
            let mut slot = BackendSlot::with_health(backend, model, served, max, queue, health);
            let serving = self.serving.iter().rev().find(|(b, ..)| *b == slot.name);
            if let Some((_, caps, window)) = serving {
                slot = slot.with_serving(*caps, *window);
            }
            pool.push(Arc::new(slot));
        }
        if let Some((backend, ..)) = self
            .serving
            .iter()
            .find(|(b, ..)| !pool.iter().any(|s| s.name == *b))
        {
            return Err(BuildError::UnknownBackend {
                backend: backend.clone(),
            });
        }
        let mut prefer = HashMap::new();
        for (model, engines) in self.prefer {
            if !models.contains_key(&model) {
                return Err(BuildError::UnknownModel {
                    model,
                    by: ModelReference::PreferenceOf,
                });
            }
            prefer.insert(model, engines);
        }
        let mut without: Vec<&String> = models
            .keys()
            .filter(|m| !by_model.contains_key(*m))
            .collect();
        without.sort();
        if let Some(name) = without.first() {
            return Err(BuildError::ModelWithoutBackend {
                model: (*name).clone(),
            });
        }
        let mut tenants = HashMap::new();
        for t in &self.tenants {
            if tenants.insert(t.id.clone(), t.clone()).is_some() {
                return Err(BuildError::DuplicateTenant {
                    tenant: t.id.to_string(),
                });
            }
        }
        let ledger: Arc<dyn AccountLedger> = match self.ledger {
            Some(l) => l,
            None => {
                let memory = MemoryLedger::new();
                for t in &self.tenants {
                    memory.open(&t.id, t.budget);
                }
                Arc::new(memory)
            }
        };
        let authenticator = self.authenticator.unwrap_or_else(|| Arc::new(self.keys));
        let mut slos: HashMap<String, Slo> = HashMap::new();
        for (model, slo) in self.slos {
            if !models.contains_key(&model) {
                return Err(BuildError::UnknownModel {
                    model,
                    by: ModelReference::Slo,
                });
            }
            slos.insert(model, slo);
        }
        let names: Vec<String> = pool.iter().map(|s| s.name.clone()).collect();
        let default_router: Arc<dyn RoutePolicy> = if slos.values().any(Slo::is_set) {
            Arc::new(SloRouter::new(names, 0x5EED, self.affinity))
        } else {
            Arc::new(PrefixAffinity::with_config(names, 0x5EED, self.affinity))
        };
        let fallbacks = fallback_chains(&models, self.fallbacks)?;
        let mut continuations = HashMap::new();
        for (model, continuation) in self.continuations {
            if !models.contains_key(&model) {
                return Err(BuildError::UnknownModel {
                    model,
                    by: ModelReference::Continuation,
                });
            }
            continuations.insert(model, continuation);
        }
        let metrics = Metrics::with_tenant_labels(self.metrics_tenant_labels);
        for slot in &pool {
            metrics.register_backend(&slot.name, &slot.model);
        }
        for model in models.keys() {
            metrics.register_model(model);
        }
        for (model, slo) in &slos {
            metrics.register_slo(model, &slo.checked());
        }
        for (from, chain) in &fallbacks {
            for to in chain {
                metrics.register_fallback(from, &to.name);
            }
        }
        for tenant in tenants.keys() {
            metrics.register_tenant(tenant.as_str());
        }
        for model in continuations.keys() {
            metrics.register_continuation(model);
        }
        Ok(Gateway {
            inner: Arc::new(Inner {
                settings: self.settings,
                authenticator,
                ledger,
                limiter: self
                    .limiter
                    .unwrap_or_else(|| Arc::new(TenantLimiter::new())),
                router: self.router.unwrap_or(default_router),
                tenants,
                models,
                pool,
                queues,
                fallbacks,
                slos,
                prefer,
                continuations,
                by_model,
                metrics: Arc::new(metrics),
                shutdown: CancelHandle::new(),
                active: Arc::new(Active::default()),
                tokenizer: self.tokenizer,
            }),
        })
    }
}

/// Checks and resolves the builder's fallback lists.
fn fallback_chains(
    models: &HashMap<String, Arc<ModelSpec>>,
    lists: Vec<(String, Vec<String>)>,
) -> Result<HashMap<String, Vec<Arc<ModelSpec>>>, BuildError> {
    let mut chains = HashMap::new();
    for (model, list) in lists {
        if !models.contains_key(&model) {
            return Err(BuildError::UnknownModel {
                model,
                by: ModelReference::FallbacksOf,
            });
        }
        let mut chain: Vec<Arc<ModelSpec>> = Vec::with_capacity(list.len());
        for name in list {
            let Some(spec) = models.get(&name) else {
                return Err(BuildError::UnknownModel {
                    model: name,
                    by: ModelReference::FallbackOf(model),
                });
            };
            if name == model {
                return Err(BuildError::FallbackToItself { model });
            }
            if chain.iter().any(|m| m.name == name) {
                return Err(BuildError::RepeatedFallback {
                    model,
                    fallback: name,
                });
            }
            chain.push(spec.clone());
        }
        if !chain.is_empty() {
            chains.insert(model, chain);
        }
    }
    Ok(chains)
}

/// Requests in the gateway (admitted or waiting, not yet settled), for
/// draining on shutdown and for waiting on settlement.
#[derive(Debug, Default)]
struct Active {
    count: AtomicUsize,
    /// The ids of the requests in `count`, each with how many requests
    /// carry it (a host may reuse an id).
    ids: Mutex<HashMap<RequestId, usize>>,
    /// Notified whenever a request leaves.
    changed: Notify,
}

impl Active {
    fn ids(&self) -> MutexGuard<'_, HashMap<RequestId, usize>> {
        self.ids.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a request with `id` is in the gateway.
    fn holds(&self, id: &RequestId) -> bool {
        self.ids().contains_key(id)
    }

    /// Waits until no request is in the gateway, or `until`; whether none
    /// is.
    async fn idle_by(&self, until: Instant) -> bool {
        loop {
            // Registered before the check: a leave in between still wakes it.
            let changed = self.changed.notified();
            if self.count.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(until, changed).await.is_err() {
                return self.count.load(Ordering::Acquire) == 0;
            }
        }
    }
}

/// One request's place in [`Active`]. Whatever settles a request drops
/// its guard after settling (a field of it dropped after its budget guard
/// settled), so a request leaves `Active` once settled.
#[derive(Debug)]
struct ActiveGuard {
    active: Arc<Active>,
    id: RequestId,
}

impl ActiveGuard {
    fn new(active: &Arc<Active>, id: &RequestId) -> Self {
        *active.ids().entry(id.clone()).or_insert(0) += 1;
        active.count.fetch_add(1, Ordering::AcqRel);
        ActiveGuard {
            active: active.clone(),
            id: id.clone(),
        }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        {
            let mut ids = self.active.ids();
            if let Some(n) = ids.get_mut(&self.id) {
                *n -= 1;
                if *n == 0 {
                    ids.remove(&self.id);
                }
            }
        }
        self.active.count.fetch_sub(1, Ordering::AcqRel);
        self.active.changed.notify_waiters();
    }
}

struct Inner {
    settings: Settings,
    authenticator: Arc<dyn Authenticator>,
    ledger: Arc<dyn AccountLedger>,
    limiter: Arc<dyn Limiter>,
    router: Arc<dyn RoutePolicy>,
    tenants: HashMap<TenantId, Arc<Tenant>>,
    models: HashMap<String, Arc<ModelSpec>>,
    pool: Vec<Arc<BackendSlot>>,
    by_model: HashMap<String, Vec<usize>>,
    queues: HashMap<String, Arc<FairQueue>>,
    /// Each model's fallbacks, in order (models without any are absent).
    fallbacks: HashMap<String, Vec<Arc<ModelSpec>>>,
    /// Each model's latency targets (models without any are absent).
    slos: HashMap<String, Slo>,
    /// Each model's preferred engine kinds for interactive requests, in
    /// order (models without a preference are absent).
    prefer: HashMap<String, Vec<EngineKind>>,
    /// The models whose streams may continue on another backend.
    continuations: HashMap<String, Continuation>,
    metrics: Arc<Metrics>,
    shutdown: CancelHandle,
    active: Arc<Active>,
    tokenizer: TokenizerPool,
}

/// The gateway pipeline. Cheap to clone; clones share everything.
///
/// Every request that gets past admission holds a budget reservation that
/// settles exactly once — when the client has taken the last event, when it
/// goes away, when the engine fails, on shutdown, or if a task panics.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl fmt::Debug for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gateway")
            .field("models", &self.inner.models.len())
            .field("backends", &self.inner.pool.len())
            .field("active", &self.active())
            .finish_non_exhaustive()
    }
}

/// What a drain did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Requests still running when the grace period ended, then aborted.
    pub aborted: usize,
    /// Requests that had not settled when the drain gave up waiting.
    pub unsettled: usize,
}

impl Gateway {
    /// A builder with `settings`.
    pub fn builder(settings: Settings) -> GatewayBuilder {
        GatewayBuilder {
            settings,
            keys: StaticKeys::new(),
            authenticator: None,
            ledger: None,
            limiter: None,
            router: None,
            tenants: Vec::new(),
            models: Vec::new(),
            backends: Vec::new(),
            fallbacks: Vec::new(),
            continuations: Vec::new(),
            queues: Vec::new(),
            slos: Vec::new(),
            serving: Vec::new(),
            prefer: Vec::new(),
            affinity: AffinityConfig::default(),
            metrics_tenant_labels: true,
            tokenizer: TokenizerPool::default(),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// The tenant owning `key`.
    ///
    /// # Errors
    /// `invalid_api_key` for a missing or unknown key (counted in metrics).
    pub fn authenticate(&self, key: Option<&str>) -> Result<Arc<Tenant>, GatewayError> {
        match key.and_then(|k| self.inner.authenticator.authenticate(k)) {
            Some(tenant) => Ok(tenant),
            None => {
                self.record_rejection(None, None, ErrorCode::InvalidApiKey);
                Err(GatewayError::new(
                    ErrorCode::InvalidApiKey,
                    if key.is_some() {
                        "unknown API key"
                    } else {
                        "missing API key"
                    },
                ))
            }
        }
    }

    /// Counts a request refused before the pipeline ran (bad JSON, body
    /// too large, bad key) under `gateway_requests_total`.
    pub fn record_rejection(&self, tenant: Option<&Tenant>, model: Option<&str>, code: ErrorCode) {
        let model = model
            .filter(|m| self.inner.models.contains_key(*m))
            .unwrap_or(UNKNOWN_MODEL);
        let tenant = tenant.map_or(UNAUTHENTICATED, |t| t.id.as_str());
        self.inner.metrics.request(tenant, model, code.as_str());
    }

    /// The tenant with `id`.
    pub fn tenant(&self, id: &str) -> Option<Arc<Tenant>> {
        self.inner.tenants.get(&TenantId::new(id)).cloned()
    }

    /// The models `tenant` may use, sorted by name.
    pub fn models_for(&self, tenant: &Tenant) -> Vec<Arc<ModelSpec>> {
        let mut models: Vec<Arc<ModelSpec>> = self
            .inner
            .models
            .values()
            .filter(|m| tenant.may_use(&m.name))
            .cloned()
            .collect();
        models.sort_by(|a, b| a.name.cmp(&b.name));
        models
    }

    /// The model named `name`.
    pub fn model(&self, name: &str) -> Option<Arc<ModelSpec>> {
        self.inner.models.get(name).cloned()
    }

    /// The tenant's account in the ledger.
    pub fn account(&self, tenant: &TenantId) -> Option<TenantAccount> {
        self.inner.ledger.account(tenant)
    }

    /// The backends.
    pub fn backends(&self) -> &[Arc<BackendSlot>] {
        &self.inner.pool
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// `model`'s latency targets (none when not set).
    pub(super) fn slo_of(&self, model: &str) -> Slo {
        self.inner.slos.get(model).copied().unwrap_or_default()
    }

    /// The metrics in text form, gauges refreshed from each backend's
    /// pressure first.
    pub fn render_metrics(&self) -> String {
        for slot in &self.inner.pool {
            let labels = BackendLabels {
                backend: slot.name.clone(),
            };
            let p = slot.pressure();
            let m = &self.inner.metrics;
            m.inflight.get_or_create(&labels).set(i64::from(p.inflight));
            m.queue_depth
                .get_or_create(&labels)
                .set(i64::from(p.waiting));
            let state = match slot.breaker_state() {
                crate::health::BreakerState::Closed => 0,
                crate::health::BreakerState::HalfOpen { .. } => 1,
                crate::health::BreakerState::Open { .. } => 2,
            };
            m.circuit_state.get_or_create(&labels).set(state);
            if let Some(limit) = slot.limit() {
                m.backend_limit.get_or_create(&labels).set(i64::from(limit));
            }
        }
        for (name, model) in &self.inner.models {
            if let Some(stats) = model.counter.cache_stats() {
                self.inner.metrics.tokenizer_cache(name, &stats);
            }
        }
        for (model, queue) in &self.inner.queues {
            let labels = crate::metrics::ModelLabels {
                model: model.clone(),
            };
            let depth = i64::try_from(queue.len()).unwrap_or(i64::MAX);
            self.inner
                .metrics
                .admission_queue
                .get_or_create(&labels)
                .set(depth);
        }
        self.inner.metrics.encode()
    }

    /// `Ok` when every model has a healthy backend; else the models without.
    ///
    /// # Errors
    /// The names of the models with no healthy backend.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let mut missing: Vec<String> = self
            .inner
            .by_model
            .iter()
            .filter(|(_, slots)| {
                !slots
                    .iter()
                    .any(|i| self.slot(*i).is_some_and(|s| s.is_healthy()))
            })
            .map(|(m, _)| m.clone())
            .collect();
        missing.sort();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing)
        }
    }

    /// Asks every backend for its health, all at once (a slow one does not
    /// hold up the others' answers), and records the answers.
    pub async fn check_health(&self) {
        futures::future::join_all(self.inner.pool.iter().map(|slot| async move {
            let healthy = slot.backend.health().await.is_healthy();
            slot.set_healthy(healthy);
        }))
        .await;
    }

    /// Checks every backend's health now and then every `every` (as the
    /// server does, every 5 s) until `stop` completes: the loop a host
    /// runs beside its server so unhealthy backends are not routed to.
    ///
    /// ```
    /// # async fn demo(gateway: gateway_policy::Gateway) {
    /// use std::time::Duration;
    /// use tokio_util::sync::CancellationToken;
    ///
    /// let stop = CancellationToken::new();
    /// let checks = tokio::spawn({
    ///     let (gateway, stop) = (gateway.clone(), stop.clone());
    ///     async move { gateway.health_checks(Duration::from_secs(5), stop.cancelled_owned()).await }
    /// });
    /// // ... serve ...
    /// stop.cancel();
    /// checks.await.unwrap();
    /// # }
    /// ```
    pub async fn health_checks(&self, every: Duration, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                biased;
                () = &mut stop => return,
                () = self.check_health() => {}
            }
            tokio::select! {
                biased;
                () = &mut stop => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    fn slot(&self, index: usize) -> Option<&Arc<BackendSlot>> {
        self.inner.pool.get(index)
    }

    /// The [`CancelGuard`] of a new request: it owns the request's
    /// [`CancelHandle`] (shutdown cancels it too) and cancels it with
    /// [`CancelReason::ClientGone`] when dropped un-disarmed.
    ///
    /// Pass a clone of [`guard.handle()`](CancelGuard::handle) to
    /// [`Gateway::generate`] or [`Gateway::embed`] and keep the guard for as
    /// long as the client is there: while its stream is read, or (as the
    /// server does) in the response body. Dropping it is how a host says
    /// "the client left": the engine is aborted and the request is charged
    /// for what was delivered. Once the request is over,
    /// [`disarm`](CancelGuard::disarm) it (or just drop it: a finished
    /// request is not affected).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use futures::StreamExt;
    /// # use gateway_core::{Prompt, testkit::MockBackend};
    /// # use gateway_policy::*;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let (mock, _h) = MockBackend::new("mock-0", "tiny");
    /// # let gateway = Gateway::builder(Settings::default())
    /// #     .tenant_with_api_key(Tenant::new("team-a"), "sk-a")
    /// #     .model(ModelSpec::new("tiny", 4096))
    /// #     .backend(Arc::new(mock), "tiny", "tiny", None)
    /// #     .build()
    /// #     .unwrap();
    /// # let tenant = gateway.authenticate(Some("sk-a")).unwrap();
    /// let guard = gateway.request_cancel();
    /// let request = ClientRequest::with_generated_id("tiny", Prompt::Text("hi".into()));
    /// let mut stream = gateway
    ///     .generate(&tenant, request, guard.handle().clone())
    ///     .await
    ///     .unwrap();
    /// while let Some(event) = stream.next().await {
    ///     event.unwrap();
    /// }
    /// guard.disarm();
    /// # }
    /// ```
    ///
    /// # The trap
    ///
    /// A guard dropped at once cancels the request at once, which then
    /// fails as `client_gone`. It used to come as a `(guard, handle)` pair,
    /// where `let (_, cancel) = gateway.request_cancel();` did exactly that
    /// without a warning; now the guard comes alone, that line does not
    /// compile, and a guard that is never bound is a `must_use` warning.
    /// Still, bind it to a name (`_guard` keeps it, `_` drops it) and keep
    /// it in scope: `let cancel = gateway.request_cancel().handle().clone();`
    /// compiles, and its handle is canceled before the request starts.
    ///
    /// ```compile_fail,E0308
    /// # fn f(gateway: &gateway_policy::Gateway) {
    /// let (_, cancel) = gateway.request_cancel();
    /// # }
    /// ```
    pub fn request_cancel(&self) -> CancelGuard {
        self.inner.shutdown.guarded_child()
    }

    /// Requests in the gateway: admitted or waiting, not yet settled.
    pub fn active(&self) -> usize {
        self.inner.active.count.load(Ordering::Acquire)
    }

    /// Waits until request `id` has settled: its charge is in the ledger,
    /// so [`Gateway::account`] read next counts it exactly. Returns at once
    /// when no request with that id is in the gateway (already settled, or
    /// never started); with several requests under one id, waits for all.
    ///
    /// A request settles after its stream ends, in a background task: when
    /// the client took the last event (or dropped the stream, or the
    /// guard), a moment after [`GatewayStream`] returned its last item. An
    /// [`embed`](Gateway::embed) call has settled when it returns. This
    /// waits for that, then for the ledger to apply settlements handed to
    /// it (a ledger that settles in the background, as `RedisLedger` does,
    /// is flushed, within its flush timeout). It shuts nothing down.
    ///
    /// It waits as long as the request runs: a stream still held and read
    /// keeps it waiting. Bound it with `tokio::time::timeout` if needed.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use futures::StreamExt;
    /// # use gateway_core::{Money, Pricing, Prompt, testkit::MockBackend};
    /// # use gateway_policy::*;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let (mock, _h) = MockBackend::new("mock-0", "tiny");
    /// # let pricing = Pricing { input: Money::from_picos(10), cached_input: Money::ZERO, output: Money::from_picos(100) };
    /// # let gateway = Gateway::builder(Settings::default())
    /// #     .tenant_with_api_key(Tenant::new("team-a"), "sk-a")
    /// #     .model(ModelSpec::new("tiny", 4096).with_pricing(pricing))
    /// #     .backend(Arc::new(mock), "tiny", "tiny", None)
    /// #     .build()
    /// #     .unwrap();
    /// # let tenant = gateway.authenticate(Some("sk-a")).unwrap();
    /// let guard = gateway.request_cancel();
    /// let request = ClientRequest::with_generated_id("tiny", Prompt::Text("0123456789".into()));
    /// let id = request.id.clone();
    /// let mut stream = gateway.generate(&tenant, request, guard.handle().clone()).await.unwrap();
    /// while let Some(event) = stream.next().await {
    ///     event.unwrap();
    /// }
    /// gateway.settled(&id).await;
    /// let account = gateway.account(&tenant.id).unwrap();
    /// // 12 prompt tokens (a bound of 10 bytes) and 3 completion tokens.
    /// assert_eq!((account.requests, account.usage.prompt(), account.usage.completion()), (1, 12, 3));
    /// assert_eq!(account.spent, Money::from_picos(12 * 10 + 3 * 100));
    /// # }
    /// ```
    pub async fn settled(&self, id: &RequestId) {
        let active = &self.inner.active;
        loop {
            // Registered before the check: a leave in between still wakes it.
            let changed = active.changed.notified();
            if !active.holds(id) {
                break;
            }
            changed.await;
        }
        self.inner.ledger.flush().await;
    }

    /// Waits up to `timeout` until no request is in the gateway (none
    /// admitted, waiting, streaming or settling) and the ledger has applied
    /// every settlement; whether that happened in time. Unlike
    /// [`Gateway::drain`] it cancels nothing and shuts nothing down: new
    /// requests may come in while it waits (it then waits for them too).
    ///
    /// For a host that reads [`Gateway::account`] after its requests and
    /// wants exact numbers; [`Gateway::settled`] waits for one request.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        if !self.inner.active.idle_by(until).await {
            return false;
        }
        tokio::time::timeout_at(until, self.inner.ledger.flush())
            .await
            .is_ok()
    }

    /// Waits up to `grace` for active requests to finish, then cancels the
    /// rest with [`CancelReason::Shutdown`] (aborting them at the engine)
    /// and waits up to the abort wait for them to settle.
    pub async fn drain(&self, grace: Duration) -> DrainReport {
        let active = &self.inner.active;
        let aborted = if active.idle_by(Instant::now() + grace).await {
            0
        } else {
            let aborted = self.active();
            self.inner.shutdown.cancel(CancelReason::Shutdown);
            let settle_wait = self.inner.settings.abort_wait + Duration::from_secs(1);
            active.idle_by(Instant::now() + settle_wait).await;
            aborted
        };
        // A ledger that settles in the background gets its charges applied
        // before the process goes (bounded: a dead store must not hang exit).
        let _ = tokio::time::timeout(Duration::from_secs(5), self.inner.ledger.flush()).await;
        DrainReport {
            aborted,
            unsettled: self.active(),
        }
    }

    /// Runs a request through the pipeline up to its first token.
    ///
    /// Returns once a backend produced the first token (or finished without
    /// any), so every failure before it is a [`GatewayError`] with its
    /// status, after retries on other backends of the model. The returned
    /// stream yields the events from `Started` on; its budget reservation
    /// settles when the stream ends or is dropped.
    ///
    /// When none of the model's backends can start the request (open
    /// breakers, unhealthy, no capacity within the admission wait, a full
    /// queue, or retryable failures on each), the model's fallbacks (see
    /// [`GatewayBuilder::fallbacks`]) are tried in order, each like the
    /// model itself — only before the first token, never on a fault of the
    /// request. The reservation is taken once, for the most expensive model
    /// of the chain (or, if that does not fit the budget, for the requested
    /// model alone, dropping the fallbacks it does not cover); the request
    /// is charged once, at the prices of the model that served it, and its
    /// metrics and [`GatewayStream::model`] name that model.
    ///
    /// Only backends that serve what the request asks for
    /// ([`ClientRequest::needs`], and its prompt plus `max_tokens` within
    /// a backend's own context window, see [`GatewayBuilder::serves`]) are
    /// tried, on the model and on its fallbacks; a fallback with no such
    /// backend is skipped, and a model with none moves the request to the
    /// first fallback that has one. When no model of the chain has one, the
    /// request is refused with 400 `unsupported_capability` (or
    /// `context_length_exceeded` when only backend windows are short)
    /// before its limits and budget are touched. For interactive requests
    /// the model's preferred engine kinds ([`GatewayBuilder::prefer`]) are
    /// tried first.
    ///
    /// # Errors
    /// A [`GatewayError`] for each refusal of the contract.
    ///
    /// # Cancel safety
    /// Dropping the future, or canceling `cancel`, aborts any backend attempt
    /// and settles the reservation.
    pub async fn generate(
        &self,
        tenant: &Arc<Tenant>,
        request: ClientRequest,
        cancel: CancelHandle,
    ) -> Result<GatewayStream, GatewayError> {
        let model_label = request.model.clone();
        let model_attr = self
            .inner
            .models
            .get(&request.model)
            .map_or(UNKNOWN_MODEL, |m| m.name.as_str());
        let span = crate::telemetry::request_span(
            request.id.as_str(),
            tenant.id.as_str(),
            model_attr,
            crate::telemetry::operation(&request.prompt),
            request.max_tokens,
        );
        if let Some(client_id) = &request.client_id {
            span.record("client_request_id", &**client_id);
        }
        let result = self
            .admit_and_start(tenant, request, cancel, span.clone())
            .instrument(span.clone())
            .await;
        if let Err(e) = &result {
            self.refused(&span, tenant, &model_label, e);
        }
        result
    }

    /// Records a request refused before it started: on its span (outcome
    /// and error type) and in the request metrics.
    pub(super) fn refused(
        &self,
        span: &tracing::Span,
        tenant: &Tenant,
        model: &str,
        e: &GatewayError,
    ) {
        span.record("outcome", e.code().as_str());
        span.record("error.type", e.code().as_str());
        self.record_rejection(Some(tenant), Some(model), e.code());
    }

    async fn admit_and_start(
        &self,
        tenant: &Arc<Tenant>,
        mut request: ClientRequest,
        cancel: CancelHandle,
        span: tracing::Span,
    ) -> Result<GatewayStream, GatewayError> {
        let arrived = Instant::now();
        let active = ActiveGuard::new(&self.inner.active, &request.id);
        let model = self.model_for(tenant, &request.model)?;
        let max_tokens = request.max_tokens.unwrap_or(model.default_max_tokens);
        if max_tokens == 0 {
            return Err(GatewayError::new(
                ErrorCode::InvalidRequest,
                "max_tokens must be at least 1",
            ));
        }
        let want_prefix = self.inner.router.prefix_tokens();
        let chain = self
            .inner
            .fallbacks
            .get(&model.name)
            .cloned()
            .unwrap_or_default();
        // A model whose streams may continue (or a fallback's) keeps the
        // prompt's ids: a continuation starts from them.
        let keep_ids = std::iter::once(&model.name)
            .chain(chain.iter().map(|f| &f.name))
            .any(|m| self.inner.continuations.contains_key(m));
        // Tokenization (and the chat template) is CPU work: it runs in the
        // tokenizer pool, the prompt moved there and back.
        // The pass-through fields go along only when they may hold
        // `chat_template_kwargs` (a substring check): the template renders
        // those as variables.
        let extra = request.extra.clone().filter(|e| {
            ChatInputs {
                tools: None,
                extra: Some(e),
                scope: None,
            }
            .template_kwargs_text()
            .is_some()
        });
        let bytes = estimate::prompt_bytes(&request.prompt)
            .saturating_add(request.tools.as_deref().map_or(0, str::len))
            .saturating_add(extra.as_deref().map_or(0, str::len));
        let prompt = std::mem::replace(&mut request.prompt, Prompt::Tokens(Vec::new()));
        let tools = request.tools.take();
        let job = {
            let (model, tenant) = (model.clone(), tenant.clone());
            move || {
                let inputs = ChatInputs {
                    tools: tools.as_deref(),
                    extra: extra.as_deref(),
                    // Cached tokenizations stay within the tenant.
                    scope: Some(tenant.id.as_str()),
                };
                let primary =
                    estimate::estimate(&*model.counter, &prompt, inputs, want_prefix, keep_ids);
                // Each usable fallback's own count (before media costs);
                // those sharing the model's counter share its count.
                let own: Vec<Option<estimate::Estimate>> = chain
                    .iter()
                    .map(|f| {
                        if !tenant.may_use(&f.name) {
                            None
                        } else if Arc::ptr_eq(&f.counter, &model.counter) {
                            Some(primary.clone())
                        } else {
                            Some(estimate::estimate(
                                &*f.counter,
                                &prompt,
                                inputs,
                                want_prefix,
                                keep_ids,
                            ))
                        }
                    })
                    .collect();
                (prompt, tools, primary, own)
            }
        };
        let (prompt, tools, primary, own) = self
            .inner
            .tokenizer
            .run(bytes, self.inner.settings.admission_wait, job)
            .await
            .map_err(pool_error)?;
        request.prompt = prompt;
        request.tools = tools;
        let primary =
            estimate::with_media(primary, &request.prompt, &model.media).map_err(|kind| {
                GatewayError::new(
                    ErrorCode::InvalidRequest,
                    format!(
                        "model {} takes no {} input (its configuration sets no {}_tokens)",
                        model.name,
                        kind.as_str(),
                        kind.as_str()
                    ),
                )
            })?;
        let estimate = primary.count;
        let prompt_tokens = estimate.value();
        let needed = prompt_tokens.saturating_add(u64::from(max_tokens));
        if needed > u64::from(model.context_window) {
            return Err(GatewayError::new(
                ErrorCode::ContextLengthExceeded,
                format!(
                    "this model's context window is {} tokens; the prompt ({} tokens{}) plus max_tokens ({max_tokens}) needs {needed}",
                    model.context_window,
                    prompt_tokens,
                    if estimate.is_exact() { "" } else { " at most" },
                ),
            ));
        }
        // Refused here, before admission, when no backend of the model or
        // of its fallbacks can serve what the request asks for.
        let plans = fallback::plans(self, tenant, &model, &primary, &own, &request);
        let needs = capable::Needs {
            capabilities: request.needs,
            prompt: prompt_tokens,
            max_tokens,
        };
        let checked = capable::check(self, &model, needs, plans)?;
        let permit = self
            .inner
            .limiter
            .admit(tenant, needed, arrived)
            .await
            .map_err(limit_error)?;
        let meter = UsageMeter::new();
        let reserve = ReserveRequest {
            tenant: tenant.id.clone(),
            request_id: request.id.clone(),
            amount: checked.own_worst(
                model
                    .pricing
                    .worst_case(prompt_tokens, u64::from(max_tokens)),
            ),
        };
        let ledger: Arc<dyn Ledger> = self.inner.ledger.clone();
        let (guard, fallbacks) =
            fallback::reserve(ledger, reserve, model.pricing, meter.clone(), checked.plans)
                .await
                .map_err(ledger_error)?;
        let generate = GenerateRequest {
            id: request.id,
            model: model.name.clone(),
            prompt: request.prompt,
            sampling: request.sampling,
            max_tokens,
            tenant: tenant.id.clone(),
            latency_class: request.latency_class,
            deadline: self.inner.settings.request_timeout.map(|t| arrived + t),
            extra: request.extra,
            tools: request.tools,
            needs: request.needs,
        };
        let admitted = attempt::Admitted {
            tenant: tenant.clone(),
            slo: self.slo_of(&model.name),
            model,
            request: Arc::new(generate),
            estimate,
            prefix: primary.prefix,
            prompt_ids: primary.ids,
            arrived,
            meter,
            guard,
            permit,
            active,
            span,
            fallbacks,
        };
        attempt::run(self, admitted, cancel).await
    }
}

impl Gateway {
    /// The configured model `name`, if `tenant` may use it; the error a
    /// client gets otherwise (404 `model_not_found`, 403 `model_not_allowed`).
    pub(super) fn model_for(
        &self,
        tenant: &Tenant,
        name: &str,
    ) -> Result<Arc<ModelSpec>, GatewayError> {
        let Some(model) = self.inner.models.get(name).cloned() else {
            return Err(GatewayError::new(
                ErrorCode::ModelNotFound,
                format!("model {name} does not exist"),
            ));
        };
        if !tenant.may_use(&model.name) {
            return Err(GatewayError::new(
                ErrorCode::ModelNotAllowed,
                format!("model {} is not allowed for this key", model.name),
            ));
        }
        Ok(model)
    }
}

/// The client's error for a refused admission: 429 with `Retry-After` for
/// a limit, 500 when the limiter cannot be reached (fail closed, as for an
/// unavailable ledger).
/// The client's error when the tokenizer pool cannot count a prompt: 503
/// `overloaded` (retry in a second) when it is full or busy past the
/// admission wait, 500 when the tokenizer panicked.
pub(super) fn pool_error(e: PoolError) -> GatewayError {
    match e {
        PoolError::Full | PoolError::TimedOut => GatewayError::new(
            ErrorCode::Overloaded,
            format!("the gateway is busy tokenizing other prompts: {e}"),
        )
        .with_retry_after(Duration::from_secs(1)),
        PoolError::Panicked => GatewayError::new(ErrorCode::Internal, e.to_string()),
    }
}

/// The client's error for a limiter's refusal: 429 `rate_limit_exceeded` with
/// the limit's `Retry-After`; 503 `limiter_unavailable` with `Retry-After`
/// when the limiter cannot decide (its Redis unreachable): admission fails
/// closed.
pub(super) fn limit_error(e: AdmitError) -> GatewayError {
    match e {
        AdmitError::Limited(e) => {
            let what = match e.kind {
                LimitKind::Requests => "requests per minute",
                LimitKind::Tokens => "tokens per minute",
                LimitKind::Concurrency => "concurrent requests",
            };
            GatewayError::new(
                ErrorCode::RateLimitExceeded,
                format!("limit of {what} reached"),
            )
            .with_retry_after(e.retry_after)
        }
        e @ AdmitError::Unavailable(_) => {
            GatewayError::new(ErrorCode::LimiterUnavailable, format!("limits: {e}"))
                .with_retry_after(LIMITER_RETRY_AFTER)
        }
    }
}

/// When a client refused because the limiter cannot decide may retry: the
/// Redis limiter tries Redis again once a second
/// (`RedisLimiter::PROBE_EVERY`).
const LIMITER_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// When a client refused because the ledger is unavailable may retry.
const LEDGER_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// The client's error for a refused reservation: 429 `budget_exceeded`;
/// 503 `ledger_unavailable` with `Retry-After` when the ledger's store
/// cannot be reached (or its journal is full): admission fails closed; 500
/// for anything else.
pub(super) fn ledger_error(e: LedgerError) -> GatewayError {
    match e {
        LedgerError::BudgetExceeded {
            needed, available, ..
        } => GatewayError::new(
            ErrorCode::BudgetExceeded,
            format!("budget exceeded: this request may cost {needed}, {available} is left"),
        ),
        e @ LedgerError::Unavailable(_) => {
            GatewayError::new(ErrorCode::LedgerUnavailable, format!("ledger: {e}"))
                .with_retry_after(LEDGER_RETRY_AFTER)
        }
        other => GatewayError::new(ErrorCode::Internal, format!("ledger: {other}")),
    }
}
