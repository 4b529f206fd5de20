//! The backends and their gateway-side state: in-flight counts against a
//! concurrency limit, health, and a wake-up of the model's next waiter when
//! a place frees up.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use gateway_core::{Backend, BackendError, Blame, Capabilities, Pressure};
use tokio::time::Instant;

use crate::admission::FairQueue;
use crate::health::{
    AdaptiveLimit, Admission, Breaker, BreakerConfig, BreakerState, HealthConfig, PromptSizes,
};

/// One backend as the gateway runs it.
pub struct BackendSlot {
    /// The backend.
    pub backend: Arc<dyn Backend>,
    /// Its name (a label value).
    pub name: String,
    /// The public model it serves.
    pub model: String,
    /// The model's name at the engine.
    pub served_model: String,
    /// Most requests the gateway sends it at once.
    pub max_concurrency: Option<NonZeroU32>,
    inflight: AtomicU32,
    healthy: AtomicBool,
    /// The model's admission queue, whose next waiter a freed place wakes.
    queue: Arc<FairQueue>,
    breaker: Mutex<Breaker>,
    /// The prompt sizes it served recently (for [`BackendSlot::is_oversized`]).
    prompts: Mutex<PromptSizes>,
    adaptive: Option<Mutex<AdaptiveLimit>>,
    /// What it serves beyond plain text.
    capabilities: Capabilities,
    /// Its own context window, when smaller than the model's.
    context_window: Option<NonZeroU32>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl fmt::Debug for BackendSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendSlot")
            .field("name", &self.name)
            .field("model", &self.model)
            .field("inflight", &self.inflight())
            .field("healthy", &self.is_healthy())
            .finish_non_exhaustive()
    }
}

impl BackendSlot {
    /// A slot for `backend` serving public `model` as `served_model`;
    /// `queue` is the model's admission queue, whose next waiter is woken
    /// whenever a request leaves this backend.
    pub fn new(
        backend: Arc<dyn Backend>,
        model: String,
        served_model: String,
        max_concurrency: Option<NonZeroU32>,
        queue: Arc<FairQueue>,
    ) -> Self {
        BackendSlot::with_breaker(
            backend,
            model,
            served_model,
            max_concurrency,
            queue,
            BreakerConfig::default(),
        )
    }

    /// [`BackendSlot::new`] with a breaker configuration.
    pub fn with_breaker(
        backend: Arc<dyn Backend>,
        model: String,
        served_model: String,
        max_concurrency: Option<NonZeroU32>,
        queue: Arc<FairQueue>,
        breaker: BreakerConfig,
    ) -> Self {
        BackendSlot::with_health(
            backend,
            model,
            served_model,
            max_concurrency,
            queue,
            HealthConfig {
                breaker,
                ..HealthConfig::default()
            },
        )
    }

    /// [`BackendSlot::new`] with a health policy: its breaker, and the floor
    /// of its adaptive concurrency limit (used when `max_concurrency` is set).
    pub fn with_health(
        backend: Arc<dyn Backend>,
        model: String,
        served_model: String,
        max_concurrency: Option<NonZeroU32>,
        queue: Arc<FairQueue>,
        health: HealthConfig,
    ) -> Self {
        let breaker = health.breaker;
        let min = health.min_concurrency.get();
        BackendSlot {
            name: backend.info().name.clone(),
            model,
            served_model,
            max_concurrency,
            inflight: AtomicU32::new(0),
            healthy: AtomicBool::new(true),
            queue,
            breaker: Mutex::new(Breaker::new(breaker)),
            prompts: Mutex::new(PromptSizes::new()),
            adaptive: max_concurrency.map(|m| Mutex::new(AdaptiveLimit::with_bounds(min, m.get()))),
            capabilities: backend.info().engine.default_capabilities(),
            context_window: None,
            backend,
        }
    }

    /// The slot serving `capabilities` (default: its engine's
    /// [`EngineKind::default_capabilities`](gateway_core::EngineKind::default_capabilities))
    /// with its own `context_window` (default: the model's): requests that
    /// need more are not sent to it.
    #[must_use]
    pub fn with_serving(
        mut self,
        capabilities: Capabilities,
        context_window: Option<NonZeroU32>,
    ) -> Self {
        self.capabilities = capabilities;
        self.context_window = context_window;
        self
    }

    /// What it serves beyond plain text.
    pub fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    /// Its own context window (prompt plus completion tokens), when it has
    /// one smaller than its model's.
    pub fn context_window(&self) -> Option<NonZeroU32> {
        self.context_window
    }

    /// The breaker's state now.
    pub fn breaker_state(&self) -> BreakerState {
        lock(&self.breaker).state(Instant::now())
    }

    /// The concurrency limit now: the configured one, lowered by overload
    /// answers until the backend recovers.
    pub fn limit(&self) -> Option<u32> {
        self.adaptive.as_ref().map(|a| lock(a).get())
    }

    /// Records a request that got its first token (or finished) here.
    pub fn record_success(&self) {
        lock(&self.breaker).on_success(Instant::now());
        if let Some(a) = &self.adaptive {
            lock(a).on_success();
        }
    }

    /// Records the prompt estimate of a request that got its first token
    /// here.
    pub fn record_prompt(&self, estimate: u64) {
        lock(&self.prompts).record(estimate);
    }

    /// Whether a prompt of `estimate` tokens is far larger than what this
    /// backend served recently (see [`PromptSizes`]).
    pub fn is_oversized(&self, estimate: u64) -> bool {
        lock(&self.prompts).is_oversized(estimate)
    }

    /// Records a failure of a request sent here at `started`: the breaker
    /// counts it if the backend is to blame ([`BackendError::blame`]) and
    /// the request was sent after the last failure it counted
    /// ([`Breaker::on_failure`]), and only a failure the backend is to
    /// blame may lower the adaptive limit on an overload answer.
    pub fn record_failure(&self, err: &BackendError, started: Instant) {
        let blame = err.blame();
        lock(&self.breaker).on_failure(blame, started, Instant::now());
        if blame == Blame::Backend
            && let Some(a) = &self.adaptive
        {
            lock(a).on_failure(err.kind());
        }
    }

    /// Requests in flight through the gateway.
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Whether the last health check passed and the breaker lets requests
    /// (or probes) through.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && lock(&self.breaker).would_admit(Instant::now())
    }

    /// Records a health check.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    /// The backend's pressure with the gateway's in-flight count and limit.
    pub fn pressure(&self) -> Pressure {
        let mut p = self.backend.pressure();
        p.inflight = self.inflight();
        if let Some(limit) = self.limit() {
            p.limit = Some(p.limit.map_or(limit, |l| l.min(limit)));
        }
        p
    }

    /// Takes an in-flight slot if the limit and the breaker allow.
    pub fn try_acquire(self: &Arc<Self>) -> Option<InflightGuard> {
        let limit = self.limit().unwrap_or(u32::MAX);
        self.inflight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        // From here the guard gives the slot back, whatever the breaker says.
        let guard = InflightGuard {
            slot: self.clone(),
            acquired: Instant::now(),
        };
        match lock(&self.breaker).admit(Instant::now()) {
            Admission::Allowed | Admission::Probe => Some(guard),
            Admission::Refused => None,
        }
    }

    /// Whether a slot is free now.
    pub fn has_capacity(&self) -> bool {
        self.limit().is_none_or(|l| self.inflight() < l)
    }
}

/// A request's place in a backend's in-flight count; dropping it frees the
/// place and wakes the model's next waiting request.
pub struct InflightGuard {
    slot: Arc<BackendSlot>,
    acquired: Instant,
}

impl InflightGuard {
    /// The backend this request is on.
    pub fn slot(&self) -> &Arc<BackendSlot> {
        &self.slot
    }

    /// When the request took its place (about when it was sent).
    pub fn acquired(&self) -> Instant {
        self.acquired
    }
}

impl fmt::Debug for InflightGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InflightGuard")
            .field("backend", &self.slot.name)
            .finish()
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.slot.inflight.fetch_sub(1, Ordering::AcqRel);
        self.slot.queue.wake_next();
    }
}
