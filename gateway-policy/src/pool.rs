//! The backends and their gateway-side state: in-flight counts against a
//! concurrency limit, health, and a shared signal when capacity frees up.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use gateway_core::{Backend, Pressure};
use tokio::sync::Notify;

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
    capacity: Arc<Notify>,
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
    /// `capacity` is notified whenever a request leaves any backend.
    pub fn new(
        backend: Arc<dyn Backend>,
        model: String,
        served_model: String,
        max_concurrency: Option<NonZeroU32>,
        capacity: Arc<Notify>,
    ) -> Self {
        BackendSlot {
            name: backend.info().name.clone(),
            backend,
            model,
            served_model,
            max_concurrency,
            inflight: AtomicU32::new(0),
            healthy: AtomicBool::new(true),
            capacity,
        }
    }

    /// Requests in flight through the gateway.
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Whether the last health check passed.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records a health check.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    /// The backend's pressure with the gateway's in-flight count and limit.
    pub fn pressure(&self) -> Pressure {
        let mut p = self.backend.pressure();
        p.inflight = self.inflight();
        if let Some(limit) = self.max_concurrency {
            p.limit = Some(p.limit.map_or(limit.get(), |l| l.min(limit.get())));
        }
        p
    }

    /// Takes an in-flight slot if the limit allows.
    pub fn try_acquire(self: &Arc<Self>) -> Option<InflightGuard> {
        let limit = self.max_concurrency.map_or(u32::MAX, NonZeroU32::get);
        self.inflight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        Some(InflightGuard { slot: self.clone() })
    }

    /// Whether a slot is free now.
    pub fn has_capacity(&self) -> bool {
        self.max_concurrency
            .is_none_or(|l| self.inflight() < l.get())
    }
}

/// A request's place in a backend's in-flight count; dropping it frees the
/// place and wakes requests waiting for capacity.
pub struct InflightGuard {
    slot: Arc<BackendSlot>,
}

impl InflightGuard {
    /// The backend this request is on.
    pub fn slot(&self) -> &Arc<BackendSlot> {
        &self.slot
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
        self.slot.capacity.notify_waiters();
    }
}
