//! The registry of an adapter's live attempts: what `Backend::abort(id)`
//! cancels, and the in-flight count of the engine's pressure. One per
//! adapter, shared by its request tasks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use gateway_core::{BackendError, CancelHandle, CancelReason, FailureKind, RequestId};
use tokio_util::sync::CancellationToken;

use super::pressure_cell::PressureCell;

/// One live attempt: its cancel handle, and the token `abort(id)` fires on
/// top of the cancel (it also stops a drain, which a cancel does not).
struct Entry {
    seq: u64,
    cancel: CancelHandle,
    abort: CancellationToken,
}

/// Live attempts by request id (a retried id can have several).
#[derive(Default)]
pub(crate) struct LiveRequests {
    map: Mutex<HashMap<RequestId, Vec<Entry>>>,
    next_seq: AtomicU64,
}

impl LiveRequests {
    /// Cancels every live attempt of `id` as aborted and fires their abort
    /// tokens; whether there was one.
    pub(crate) fn abort(&self, id: &RequestId) -> bool {
        let entries: Vec<(CancelHandle, CancellationToken)> = self
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| (e.cancel.clone(), e.abort.clone()))
                    .collect()
            })
            .unwrap_or_default();
        for (cancel, abort) in &entries {
            cancel.cancel(CancelReason::Aborted);
            abort.cancel();
        }
        !entries.is_empty()
    }

    fn insert(&self, id: &RequestId, cancel: &CancelHandle, abort: &CancellationToken) -> u64 {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id.clone())
            .or_default()
            .push(Entry {
                seq,
                cancel: cancel.clone(),
                abort: abort.clone(),
            });
        seq
    }

    fn remove(&self, id: &RequestId, seq: u64) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entries) = map.get_mut(id) {
            entries.retain(|e| e.seq != seq);
            if entries.is_empty() {
                map.remove(id);
            }
        }
    }
}

/// An adapter's shared state that holds a registry and a pressure cell.
pub(crate) trait HasLive: Send + Sync + 'static {
    /// The registry.
    fn live(&self) -> &LiveRequests;
    /// The pressure whose in-flight count follows the registry.
    fn pressure(&self) -> &PressureCell;

    /// Whether a new attempt may start: not when `cancel` has fired, nor
    /// with `max_inflight` attempts already in flight (then `Overloaded`).
    fn may_start(&self, cancel: &CancelHandle, max_inflight: u32) -> Result<(), BackendError> {
        if let Some(reason) = cancel.reason() {
            return Err(BackendError::canceled(reason));
        }
        if self.pressure().inflight.load(Ordering::Relaxed) >= max_inflight {
            return Err(BackendError::new(
                FailureKind::Overloaded,
                "too many requests in flight to this engine",
            ));
        }
        Ok(())
    }
}

/// Registers an attempt of `id` and counts it in flight until the guard
/// drops.
pub(crate) fn register<S: HasLive>(
    shared: &Arc<S>,
    id: &RequestId,
    cancel: &CancelHandle,
    abort: &CancellationToken,
) -> LiveGuard<S> {
    let seq = shared.live().insert(id, cancel, abort);
    shared.pressure().inflight.fetch_add(1, Ordering::Relaxed);
    LiveGuard {
        shared: shared.clone(),
        id: id.clone(),
        seq,
    }
}

/// Removes a live attempt from the registry and the in-flight count.
pub(crate) struct LiveGuard<S: HasLive> {
    shared: Arc<S>,
    id: RequestId,
    seq: u64,
}

impl<S: HasLive> Drop for LiveGuard<S> {
    fn drop(&mut self) {
        self.shared.live().remove(&self.id, self.seq);
        self.shared
            .pressure()
            .inflight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Shared {
        live: LiveRequests,
        pressure: PressureCell,
    }

    impl HasLive for Shared {
        fn live(&self) -> &LiveRequests {
            &self.live
        }
        fn pressure(&self) -> &PressureCell {
            &self.pressure
        }
    }

    #[tokio::test]
    async fn guards_count_in_flight_and_abort_reaches_every_attempt_of_an_id() {
        let shared = Arc::new(Shared {
            live: LiveRequests::default(),
            pressure: PressureCell::new(None),
        });
        let id = RequestId::from("r1");
        let (a, b) = (CancelHandle::new(), CancelHandle::new());
        let (ta, tb) = (CancellationToken::new(), CancellationToken::new());
        let ga = register(&shared, &id, &a, &ta);
        let gb = register(&shared, &id, &b, &tb);
        let other = register(
            &shared,
            &RequestId::from("r2"),
            &CancelHandle::new(),
            &CancellationToken::new(),
        );
        assert_eq!(shared.pressure.inflight.load(Ordering::Relaxed), 3);
        drop(ga);
        assert_eq!(shared.pressure.inflight.load(Ordering::Relaxed), 2);
        // Only the attempt still registered is aborted.
        assert!(shared.live.abort(&id));
        assert_eq!(a.reason(), None);
        assert_eq!(b.reason(), Some(CancelReason::Aborted));
        assert!(!ta.is_cancelled() && tb.is_cancelled());
        drop(gb);
        assert!(!shared.live.abort(&id));
        drop(other);
        assert_eq!(shared.pressure.inflight.load(Ordering::Relaxed), 0);
        assert!(shared.live.map.lock().unwrap().is_empty());
    }
}
