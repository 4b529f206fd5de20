//! Building blocks for backend authors: [`LiveRequests`], the registry of
//! live attempts behind [`Backend::abort`](crate::Backend::abort), the
//! in-flight count and the engine phase of each request; [`LiveGuard`], one
//! attempt's place in it; [`Progress`], the delivered tokens against the
//! completion cap; and [`LiveGuard::track`], which wraps an engine's events
//! into a [`TokenStream`](crate::TokenStream) that keeps the stream rules of the contract.
//!
//! What each piece takes off a backend's hands:
//!
//! | contract rule | piece |
//! |---|---|
//! | `abort(id)` cancels every live attempt of `id`, `false` for an unknown id | [`LiveRequests::abort`] |
//! | a bounded number of attempts; `Overloaded` past it | [`LiveRequests::register`] |
//! | `Pressure::inflight` (and, for an in-process engine, running and waiting) | [`LiveRequests::inflight`], [`LiveRequests::pressure`] |
//! | a cancel (handle, `abort(id)`, dropped stream) ends the stream with one `Canceled` error in the right [`FailurePhase`](crate::FailurePhase) carrying [`with_engine_phase`](BackendError::with_engine_phase) | [`LiveGuard::track`] |
//! | past the deadline: one `TotalTimeout` error | [`LiveGuard::track`] |
//! | never more than `max_completion_tokens`; `Length` at the cap | [`LiveGuard::track`], [`Progress`] |
//! | every error's phase: `BeforeFirstToken` until a `Delta` went out | [`LiveGuard::track`], [`Progress::phase`] |
//! | the engine's aborts per phase, for the conformance kit's `EngineProbe` (in-process engines) | [`LiveRequests::aborts`], [`LiveRequests::phase`] |
//!
//! # Examples
//!
//! A complete backend: a toy engine with one slot that echoes the prompt's
//! words, one every 20 ms, checked with the conformance kit (feature
//! `testkit`; under paused time, so the kit's multi-second scenarios take
//! no real time). The engine only produces events and moves its phase; the
//! registry and [`LiveGuard::track`] do the rest.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use futures::StreamExt;
//! use gateway_core::live::LiveRequests;
//! use gateway_core::testkit::conformance::{self, ConformanceConfig, ConformanceTarget, Instance, Scenario};
//! use gateway_core::*;
//! use tokio::sync::Semaphore;
//!
//! #[derive(Debug)]
//! struct Echo { info: BackendInfo, live: LiveRequests, slot: Arc<Semaphore>, prefill: Duration, fail_after: Option<usize> }
//!
//! #[async_trait]
//! impl Backend for Echo {
//!     fn info(&self) -> &BackendInfo { &self.info }
//!     fn pressure(&self) -> Pressure { Pressure { limit: Some(1), ..self.live.pressure() } }
//!     async fn start(&self, req: BackendRequest, cancel: CancelHandle) -> Result<TokenStream, BackendError> {
//!         let words: Vec<String> = match &req.request.prompt {
//!             Prompt::Text(text) => text.split_whitespace().map(|w| format!("{w} ")).collect(),
//!             _ => return Err(BackendError::new(FailureKind::InvalidRequest, "text prompts only")),
//!         };
//!         let live = self.live.register(&req.request.id, &cancel)?; // Queued
//!         // The engine runs as the stream is polled, so it takes a free
//!         // slot now, as an engine's scheduler would on arrival.
//!         let permit = self.slot.clone().try_acquire_owned().ok();
//!         if permit.is_some() { live.enter(EnginePhase::Prefill) }
//!         let (attempt, slot, prefill, fail_after) = (live.attempt(), self.slot.clone(), self.prefill, self.fail_after);
//!         let engine = channel_stream(move |tx| async move {
//!             let _slot = match permit {
//!                 Some(permit) => permit,
//!                 None => match slot.acquire_owned().await { Ok(p) => p, Err(_) => return },
//!             };
//!             attempt.enter(EnginePhase::Prefill);
//!             tokio::time::sleep(prefill).await;
//!             let _ = tx.send(Ok(TokenEvent::Started(Started::default()))).await;
//!             for (i, word) in words.iter().cycle().take(1000).enumerate() {
//!                 if fail_after == Some(i) {
//!                     let _ = tx.send(Err(BackendError::new(FailureKind::Internal, "echo failed"))).await;
//!                     return;
//!                 }
//!                 tokio::time::sleep(Duration::from_millis(20)).await;
//!                 if tx.send(Ok(TokenEvent::Delta(Delta::text(word.clone(), 1)))).await.is_err() { return }
//!             }
//!             let _ = tx.send(Ok(TokenEvent::Finished(FinishReason::Stop))).await;
//!         });
//!         // Cancel, deadline, cap, error phases and abort counts: `track`.
//!         Ok(live.track(engine, req.budget))
//!     }
//!     async fn abort(&self, id: &RequestId) -> Result<bool, BackendError> { Ok(self.live.abort(id)) }
//!     async fn health(&self) -> Health { Health::Healthy }
//! }
//!
//! /// The engine as a stream: `body` sends into a channel and runs as the
//! /// stream is polled; dropping the stream drops `body` (the engine's work).
//! fn channel_stream<F: Future<Output = ()> + Send + 'static>(
//!     body: impl FnOnce(tokio::sync::mpsc::Sender<TokenResult>) -> F,
//! ) -> impl futures::Stream<Item = TokenResult> + Send + 'static {
//!     let (tx, rx) = tokio::sync::mpsc::channel(4);
//!     let work = futures::stream::once(body(tx)).filter_map(|()| async { None });
//!     let events = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) });
//!     futures::stream::select(work, events)
//! }
//!
//! struct Target;
//!
//! #[async_trait]
//! impl ConformanceTarget for Target {
//!     async fn instance(&self, scenario: Scenario) -> Option<Instance> {
//!         let (prefill, fail_after) = match scenario {
//!             Scenario::Normal | Scenario::LongDecode => (Duration::ZERO, None),
//!             Scenario::LongPrefill | Scenario::Saturated => (Duration::from_secs(3), None),
//!             Scenario::FailBeforeFirstToken => (Duration::ZERO, Some(0)),
//!             Scenario::FailAfterFirstToken => (Duration::ZERO, Some(2)),
//!             _ => return None, // no reasoning or tool calls: the optional rule is skipped
//!         };
//!         let live = LiveRequests::new(64);
//!         let info = BackendInfo { name: "echo-0".into(), engine: EngineKind::Custom, models: vec!["echo".into()] };
//!         let slot = Arc::new(Semaphore::new(1));
//!         Some(Instance {
//!             probe: Arc::new(live.clone()), // in-process: the registry is the engine's view
//!             backend: Arc::new(Echo { info, live, slot, prefill, fail_after }),
//!             model: "echo".into(),
//!         })
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let report = conformance::run(&Target, &ConformanceConfig::default()).await;
//! report.assert_passed(); // every required rule; the optional structured_output is skipped
//! assert_eq!(report.skipped(), [conformance::Rule::StructuredOutput]);
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    AbortCounts, BackendError, CancelHandle, CancelReason, EnginePhase, FailureKind, Pressure,
    RequestId,
};

mod track;

pub use track::Progress;

/// One live attempt in the registry.
#[derive(Debug)]
struct Entry {
    seq: u64,
    phase: EnginePhase,
    cancel: CancelHandle,
    abort: CancellationToken,
}

#[derive(Debug, Default)]
struct State {
    /// Live attempts by request id (a retried id can have several).
    attempts: HashMap<RequestId, Vec<Entry>>,
    next_seq: u64,
    aborts: AbortCounts,
}

#[derive(Debug)]
struct Shared {
    capacity: u32,
    /// The number of live attempts, readable without the lock.
    inflight: AtomicU32,
    state: Mutex<State>,
}

/// The live attempts of one backend, by request id: what
/// [`Backend::abort`](crate::Backend::abort) cancels, the in-flight count,
/// each attempt's [`EnginePhase`], and the aborts counted per phase.
///
/// A cheap handle: clones share one registry. Bounded: at most `capacity`
/// attempts at once. Every method takes a short-held lock (never across an
/// await) or reads an atomic, so [`Backend::pressure`](crate::Backend::pressure)
/// may call them.
///
/// For an in-process engine the registry *is* the engine's view, and it can
/// serve as the conformance kit's `EngineProbe` (feature `testkit`). A
/// backend in front of a remote engine uses it for `abort(id)` and the
/// in-flight count only; its phases and aborts are the engine's to tell.
#[derive(Clone)]
pub struct LiveRequests {
    shared: Arc<Shared>,
}

impl fmt::Debug for LiveRequests {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveRequests")
            .field("capacity", &self.shared.capacity)
            .field("inflight", &self.inflight())
            .finish_non_exhaustive()
    }
}

impl LiveRequests {
    /// An empty registry that holds at most `capacity` attempts at once.
    pub fn new(capacity: u32) -> Self {
        LiveRequests {
            shared: Arc::new(Shared {
                capacity,
                inflight: AtomicU32::new(0),
                state: Mutex::new(State::default()),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No critical section panics midway: a poisoned lock holds
        // consistent data.
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers an attempt of `id`, in phase [`EnginePhase::Queued`]
    /// (move it with [`LiveGuard::enter`]); it stays live until the guard
    /// drops.
    ///
    /// # Errors
    /// `Canceled` (with the reason) if `cancel` already fired, `Overloaded`
    /// if `capacity` attempts are live; both before the first token.
    pub fn register(
        &self,
        id: &RequestId,
        cancel: &CancelHandle,
    ) -> Result<LiveGuard, BackendError> {
        if let Some(reason) = cancel.reason() {
            return Err(BackendError::canceled(reason));
        }
        let abort = CancellationToken::new();
        let seq = {
            let mut state = self.lock();
            if self.shared.inflight.load(Ordering::Relaxed) >= self.shared.capacity {
                return Err(BackendError::new(
                    FailureKind::Overloaded,
                    format!(
                        "{} requests in flight to this backend, its limit",
                        self.shared.capacity
                    ),
                ));
            }
            let seq = state.next_seq;
            state.next_seq += 1;
            state.attempts.entry(id.clone()).or_default().push(Entry {
                seq,
                phase: EnginePhase::Queued,
                cancel: cancel.clone(),
                abort: abort.clone(),
            });
            self.shared.inflight.fetch_add(1, Ordering::Relaxed);
            seq
        };
        Ok(LiveGuard {
            attempt: LiveAttempt {
                live: self.clone(),
                id: id.clone(),
                seq,
                abort,
            },
            cancel: cancel.clone(),
            ended: false,
        })
    }

    /// Cancels every live attempt of `id` with [`CancelReason::Aborted`]
    /// and fires their [abort tokens](LiveAttempt::abort_token); whether
    /// there was one. What `Backend::abort` answers.
    pub fn abort(&self, id: &RequestId) -> bool {
        let targets: Vec<(CancelHandle, CancellationToken)> = self
            .lock()
            .attempts
            .get(id)
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| (e.cancel.clone(), e.abort.clone()))
                    .collect()
            })
            .unwrap_or_default();
        // Fired outside the lock: a cancel wakes tasks that may register.
        for (cancel, abort) in &targets {
            cancel.cancel(CancelReason::Aborted);
            abort.cancel();
        }
        !targets.is_empty()
    }

    /// Attempts live now.
    pub fn inflight(&self) -> u32 {
        self.shared.inflight.load(Ordering::Relaxed)
    }

    /// The phase of the oldest live attempt of `id`; `None` if there is none.
    pub fn phase(&self, id: &RequestId) -> Option<EnginePhase> {
        self.lock()
            .attempts
            .get(id)
            .and_then(|entries| entries.first())
            .map(|e| e.phase)
    }

    /// Every live attempt's id and phase, oldest first.
    pub fn list(&self) -> Vec<(RequestId, EnginePhase)> {
        let state = self.lock();
        let mut live: Vec<(u64, &RequestId, EnginePhase)> = state
            .attempts
            .iter()
            .flat_map(|(id, entries)| entries.iter().map(move |e| (e.seq, id, e.phase)))
            .collect();
        live.sort_unstable_by_key(|(seq, _, _)| *seq);
        live.into_iter()
            .map(|(_, id, phase)| (id.clone(), phase))
            .collect()
    }

    /// Live attempts in `phase`.
    pub fn count(&self, phase: EnginePhase) -> u32 {
        let n = self
            .lock()
            .attempts
            .values()
            .flatten()
            .filter(|e| e.phase == phase)
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Attempts whose guard dropped without [`LiveGuard::end`], counted in
    /// the phase each was in.
    pub fn aborts(&self) -> AbortCounts {
        self.lock().aborts
    }

    /// An in-process engine's pressure: `running` (prefill and decode) and
    /// `waiting` (queued) from the phases, `inflight` from the registry,
    /// read now. `limit`, `kv_usage` and `overloaded` are left for the
    /// backend to fill in.
    pub fn pressure(&self) -> Pressure {
        let state = self.lock();
        let (mut running, mut waiting) = (0u32, 0u32);
        for entry in state.attempts.values().flatten() {
            match entry.phase {
                EnginePhase::Queued => waiting = waiting.saturating_add(1),
                EnginePhase::Prefill | EnginePhase::Decode => running = running.saturating_add(1),
            }
        }
        Pressure {
            running,
            waiting,
            inflight: self.inflight(),
            updated_at: Some(Instant::now()),
            ..Pressure::default()
        }
    }

    fn set_phase(&self, id: &RequestId, seq: u64, phase: EnginePhase) {
        if let Some(entry) = self
            .lock()
            .attempts
            .get_mut(id)
            .and_then(|entries| entries.iter_mut().find(|e| e.seq == seq))
        {
            entry.phase = phase;
        }
    }

    fn phase_of(&self, id: &RequestId, seq: u64) -> Option<EnginePhase> {
        self.lock()
            .attempts
            .get(id)
            .and_then(|entries| entries.iter().find(|e| e.seq == seq))
            .map(|e| e.phase)
    }

    /// Removes an attempt; counts an abort in its phase if `aborted`.
    /// Returns the phase it was in.
    fn remove(&self, id: &RequestId, seq: u64, aborted: bool) -> Option<EnginePhase> {
        let mut state = self.lock();
        let entries = state.attempts.get_mut(id)?;
        let at = entries.iter().position(|e| e.seq == seq)?;
        let phase = entries.remove(at).phase;
        if entries.is_empty() {
            state.attempts.remove(id);
        }
        if aborted {
            state.aborts.add(phase);
        }
        self.shared.inflight.fetch_sub(1, Ordering::Relaxed);
        Some(phase)
    }
}

/// A cloneable view of one live attempt: its id, its phase (read and
/// moved), and the token `abort(id)` fires. Hand it to the engine's task
/// while the [`LiveGuard`] goes to [`LiveGuard::track`]. Once the attempt
/// is gone, [`enter`](Self::enter) does nothing.
#[derive(Clone)]
pub struct LiveAttempt {
    live: LiveRequests,
    id: RequestId,
    seq: u64,
    abort: CancellationToken,
}

impl fmt::Debug for LiveAttempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveAttempt")
            .field("id", &self.id)
            .field("phase", &self.phase())
            .finish_non_exhaustive()
    }
}

impl LiveAttempt {
    /// The request's id.
    pub fn id(&self) -> &RequestId {
        &self.id
    }

    /// The attempt's phase; `None` once it is no longer live.
    pub fn phase(&self) -> Option<EnginePhase> {
        self.live.phase_of(&self.id, self.seq)
    }

    /// Moves the attempt to `phase` (the engine gave it a slot: `Prefill`;
    /// its first token: `Decode`).
    pub fn enter(&self, phase: EnginePhase) {
        self.live.set_phase(&self.id, self.seq, phase);
    }

    /// Fired by [`LiveRequests::abort`], also when the request's cancel
    /// handle had already fired (a backend that keeps reading after the
    /// client left, to drain, stops on it).
    pub fn abort_token(&self) -> &CancellationToken {
        &self.abort
    }
}

/// One attempt's place in a [`LiveRequests`] registry. Dropping it removes
/// the attempt and, unless [`end`](Self::end) was called, counts an abort
/// in the phase the attempt was in.
#[must_use = "the attempt leaves the registry, counted as aborted, when the guard drops"]
#[derive(Debug)]
pub struct LiveGuard {
    attempt: LiveAttempt,
    /// The handle the attempt was registered with.
    cancel: CancelHandle,
    ended: bool,
}

impl LiveGuard {
    /// A cloneable view of the attempt, for the engine's task.
    pub fn attempt(&self) -> LiveAttempt {
        self.attempt.clone()
    }

    /// The request's id.
    pub fn id(&self) -> &RequestId {
        &self.attempt.id
    }

    /// The attempt's phase.
    pub fn phase(&self) -> EnginePhase {
        self.attempt.phase().unwrap_or(EnginePhase::Queued)
    }

    /// Moves the attempt to `phase`.
    pub fn enter(&self, phase: EnginePhase) {
        self.attempt.enter(phase);
    }

    /// The attempt ended on its own (finished, or failed at the engine):
    /// it leaves the registry without counting an abort.
    pub fn end(mut self) {
        self.ended = true;
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.attempt
            .live
            .remove(&self.attempt.id, self.attempt.seq, !self.ended);
    }
}

#[cfg(feature = "testkit")]
impl crate::testkit::conformance::EngineProbe for LiveRequests {
    fn aborts(&self) -> AbortCounts {
        LiveRequests::aborts(self)
    }
    fn phase(&self, id: &RequestId) -> Option<EnginePhase> {
        LiveRequests::phase(self, id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FailurePhase;

    fn id(s: &str) -> RequestId {
        RequestId::from(s)
    }

    #[test]
    fn registers_within_capacity_and_aborts_every_attempt_of_an_id() {
        let live = LiveRequests::new(3);
        let (a, b) = (CancelHandle::new(), CancelHandle::new());
        let ga = live.register(&id("r1"), &a).unwrap();
        let gb = live.register(&id("r1"), &b).unwrap();
        let other = live.register(&id("r2"), &CancelHandle::new()).unwrap();
        assert_eq!(live.inflight(), 3);
        let full = live.register(&id("r3"), &CancelHandle::new()).unwrap_err();
        assert_eq!(full.kind(), FailureKind::Overloaded);
        assert_eq!(full.phase(), FailurePhase::BeforeFirstToken);

        ga.end();
        assert_eq!(live.inflight(), 2);
        // Only the attempt still registered is aborted.
        let token = gb.attempt().abort_token().clone();
        assert!(live.abort(&id("r1")));
        assert_eq!(a.reason(), None);
        assert_eq!(b.reason(), Some(CancelReason::Aborted));
        assert!(token.is_cancelled());
        drop(gb);
        assert!(!live.abort(&id("r1")));
        other.end();
        assert_eq!(live.inflight(), 0);
        // `ga` and `other` ended, `gb` dropped while queued.
        assert_eq!(
            live.aborts(),
            AbortCounts {
                queued: 1,
                prefill: 0,
                decode: 0
            }
        );
        assert!(live.lock().attempts.is_empty());

        let fired = CancelHandle::new();
        fired.cancel(CancelReason::Shutdown);
        let err = live.register(&id("r4"), &fired).unwrap_err();
        assert_eq!(err.kind(), FailureKind::Canceled);
        assert_eq!(live.inflight(), 0);
    }

    #[test]
    fn phases_move_and_show_in_pressure_and_aborts() {
        let live = LiveRequests::new(8);
        let a = live.register(&id("a"), &CancelHandle::new()).unwrap();
        let b = live.register(&id("b"), &CancelHandle::new()).unwrap();
        let c = live.register(&id("c"), &CancelHandle::new()).unwrap();
        a.enter(EnginePhase::Prefill);
        b.attempt().enter(EnginePhase::Decode);
        assert_eq!(live.phase(&id("a")), Some(EnginePhase::Prefill));
        assert_eq!(live.phase(&id("b")), Some(EnginePhase::Decode));
        assert_eq!(live.phase(&id("c")), Some(EnginePhase::Queued));
        assert_eq!(live.phase(&id("x")), None);
        assert_eq!(live.count(EnginePhase::Queued), 1);
        assert_eq!(
            live.list(),
            [
                (id("a"), EnginePhase::Prefill),
                (id("b"), EnginePhase::Decode),
                (id("c"), EnginePhase::Queued)
            ]
        );
        let p = live.pressure();
        assert_eq!((p.running, p.waiting, p.inflight), (2, 1, 3));
        let view = a.attempt();
        drop((a, b));
        c.end();
        assert_eq!(view.phase(), None);
        view.enter(EnginePhase::Decode); // gone: nothing happens
        assert_eq!(
            live.aborts(),
            AbortCounts {
                queued: 0,
                prefill: 1,
                decode: 1
            }
        );
        assert_eq!(live.pressure().queued_and_running(), 0);
    }
}
