//! Building blocks for backend authors: [`LiveRequests`], the registry of
//! live attempts behind [`Backend::abort`](crate::Backend::abort), the
//! in-flight count and the engine phase of each request; [`LiveGuard`], one
//! attempt's place in it; [`Progress`], the delivered tokens against the
//! completion cap; and [`LiveGuard::track`], which wraps an engine's events
//! into a [`TokenStream`] that keeps the stream rules of the contract.
//!
//! What each piece takes off a backend's hands:
//!
//! | contract rule | piece |
//! |---|---|
//! | `abort(id)` cancels every live attempt of `id`, `false` for an unknown id | [`LiveRequests::abort`] |
//! | a bounded number of attempts; `Overloaded` past it | [`LiveRequests::register`] |
//! | `Pressure::inflight` (and, for an in-process engine, running and waiting) | [`LiveRequests::inflight`], [`LiveRequests::pressure`] |
//! | a cancel (handle, `abort(id)`, dropped stream) ends the stream with one `Canceled` error in the right [`FailurePhase`] carrying [`with_engine_phase`](BackendError::with_engine_phase) | [`LiveGuard::track`] |
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
//!         Ok(live.track(engine, cancel, req.budget))
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

use futures::{Stream, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    AbortCounts, BackendError, CancelHandle, CancelReason, EnginePhase, FailureKind, FailurePhase,
    FinishReason, Pressure, RequestBudget, RequestId, TokenEvent, TokenResult, TokenStream,
};

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

    /// Wraps the engine's `events` for this attempt into the stream the
    /// contract asks for, with `cancel` (attached to the stream with
    /// [`TokenStream::cancel_on_drop`]) and the attempt's `budget`:
    ///
    /// - when `cancel` fires (by the caller, by [`LiveRequests::abort`], or
    ///   because the stream was dropped), `events` is dropped at once (which
    ///   must stop the engine's work) and the stream ends with one
    ///   `Canceled` error in the right [`FailurePhase`], carrying the
    ///   attempt's engine phase ([`BackendError::engine_phase`]); the guard
    ///   counts the abort in that phase;
    /// - past `budget.deadline`, the same with one `TotalTimeout` error;
    /// - a `Delta` that would pass `budget.max_completion_tokens` is not
    ///   sent: the stream finishes with `Length` instead;
    /// - an error from `events` gets the phase of what was delivered (a
    ///   `Canceled` one also the engine phase); events that end without
    ///   `Finished` or an error end with a `ProtocolViolation`;
    /// - the first `Delta` moves the attempt to `Decode`; `Finished` or an
    ///   engine error [ends](Self::end) it.
    ///
    /// `events` yields the engine's `Started`, `Delta`s, `Usage` and
    /// `Finished` in order; it need not watch the cancel, the deadline or
    /// the cap.
    ///
    /// # Cancel safety
    /// Dropping the returned stream cancels `cancel` with `ClientGone` and
    /// drops `events` and the guard (counting an abort unless it ended).
    pub fn track(
        self,
        events: impl Stream<Item = TokenResult> + Send + 'static,
        cancel: CancelHandle,
        budget: RequestBudget,
    ) -> TokenStream {
        let tracked = Tracked {
            events: Some(Box::pin(events)),
            guard: Some(self),
            cancel: cancel.clone(),
            deadline: budget.deadline,
            progress: Progress::new(u64::from(budget.max_completion_tokens)),
        };
        let stream = futures::stream::unfold(tracked, |mut t| async move {
            let item = t.next().await?;
            Some((item, t))
        });
        TokenStream::new(stream).cancel_on_drop(cancel)
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.attempt
            .live
            .remove(&self.attempt.id, self.attempt.seq, !self.ended);
    }
}

/// What one attempt delivered against its completion cap, and so the
/// [`FailurePhase`] of any error it ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    cap: u64,
    delivered: u64,
    first_sent: bool,
}

impl Progress {
    /// Nothing delivered yet, under a cap of `cap` completion tokens.
    pub const fn new(cap: u64) -> Self {
        Progress {
            cap,
            delivered: 0,
            first_sent: false,
        }
    }

    /// The cap.
    pub const fn cap(&self) -> u64 {
        self.cap
    }

    /// Completion tokens delivered.
    pub const fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Tokens left under the cap.
    pub const fn room(&self) -> u64 {
        self.cap.saturating_sub(self.delivered)
    }

    /// Whether the cap is reached.
    pub const fn at_cap(&self) -> bool {
        self.delivered >= self.cap
    }

    /// `BeforeFirstToken` until a delta was delivered, then
    /// `AfterFirstToken`.
    pub const fn phase(&self) -> FailurePhase {
        if self.first_sent {
            FailurePhase::AfterFirstToken
        } else {
            FailurePhase::BeforeFirstToken
        }
    }

    /// Counts a delta of `tokens` if it fits under the cap (a delta of no
    /// tokens always does, and is still the first token); `false`, and
    /// nothing counted, if it would pass the cap.
    pub fn deliver(&mut self, tokens: u64) -> bool {
        if tokens > self.room() {
            return false;
        }
        self.delivered += tokens;
        self.first_sent = true;
        true
    }

    /// `error` in the phase of what was delivered.
    pub fn error(&self, error: BackendError) -> BackendError {
        error.with_phase(self.phase())
    }
}

/// The state behind [`LiveGuard::track`].
struct Tracked {
    events: Option<std::pin::Pin<Box<dyn Stream<Item = TokenResult> + Send>>>,
    guard: Option<LiveGuard>,
    cancel: CancelHandle,
    deadline: Option<Instant>,
    progress: Progress,
}

/// What woke the tracked stream.
enum Wake {
    Canceled(CancelReason),
    Deadline,
    Event(Option<TokenResult>),
}

impl Tracked {
    async fn next(&mut self) -> Option<TokenResult> {
        let events = self.events.as_mut()?;
        let deadline = async {
            match self.deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let wake = tokio::select! {
            biased;
            reason = self.cancel.canceled() => Wake::Canceled(reason),
            () = deadline => Wake::Deadline,
            item = events.next() => Wake::Event(item),
        };
        Some(match wake {
            Wake::Canceled(reason) => Err(self.abort(BackendError::canceled(reason))),
            Wake::Deadline => Err(self.end_with(BackendError::new(
                FailureKind::TotalTimeout,
                "the request's deadline passed",
            ))),
            Wake::Event(None) => Err(self.end_with(BackendError::new(
                FailureKind::ProtocolViolation,
                "the engine's events ended without Finished",
            ))),
            Wake::Event(Some(Ok(TokenEvent::Delta(delta)))) => {
                if !self.progress.deliver(u64::from(delta.tokens)) {
                    // The engine went past its cap: end at it.
                    self.close(false);
                    return Some(Ok(TokenEvent::Finished(FinishReason::Length)));
                }
                if let Some(guard) = &self.guard
                    && guard.phase() != EnginePhase::Decode
                {
                    guard.enter(EnginePhase::Decode);
                }
                Ok(TokenEvent::Delta(delta))
            }
            Wake::Event(Some(Ok(TokenEvent::Finished(reason)))) => {
                self.close(false);
                Ok(TokenEvent::Finished(reason))
            }
            Wake::Event(Some(Ok(event))) => Ok(event),
            Wake::Event(Some(Err(e))) if e.kind() == FailureKind::Canceled => Err(self.abort(e)),
            Wake::Event(Some(Err(e))) => Err(self.end_with(e)),
        })
    }

    /// The attempt was canceled: `error` with both phases, and the engine's
    /// work dropped, counted as an abort.
    fn abort(&mut self, error: BackendError) -> BackendError {
        let engine_phase = self.guard.as_ref().map(LiveGuard::phase);
        let mut error = self.progress.error(error);
        if error.engine_phase().is_none()
            && let Some(phase) = engine_phase
        {
            error = error.with_engine_phase(phase);
        }
        self.close(true);
        error
    }

    /// The attempt ended with `error` (not a cancel).
    fn end_with(&mut self, error: BackendError) -> BackendError {
        let error = self.progress.error(error);
        self.close(false);
        error
    }

    /// Drops the engine's events, then the guard; nothing is yielded after.
    fn close(&mut self, aborted: bool) {
        self.events = None;
        if let Some(guard) = self.guard.take()
            && !aborted
        {
            guard.end();
        }
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
    use std::time::Duration;

    use super::*;
    use crate::{Delta, Started, Usage};

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

    #[test]
    fn progress_counts_against_the_cap() {
        let mut p = Progress::new(3);
        assert_eq!(p.phase(), FailurePhase::BeforeFirstToken);
        assert!(p.deliver(0));
        assert_eq!(
            (p.delivered(), p.phase()),
            (0, FailurePhase::AfterFirstToken)
        );
        assert!(p.deliver(2));
        assert!(!p.deliver(2));
        assert_eq!((p.delivered(), p.room(), p.at_cap()), (2, 1, false));
        assert!(p.deliver(1));
        assert!(p.at_cap());
        let err = p.error(BackendError::new(FailureKind::Internal, "x"));
        assert_eq!(err.phase(), FailurePhase::AfterFirstToken);
    }

    fn budget(cap: u32, deadline: Option<Instant>) -> RequestBudget {
        RequestBudget {
            max_completion_tokens: cap,
            deadline,
        }
    }

    /// `Started`, then `n` one-token deltas 10 ms apart, `Usage`, `Finished`.
    fn engine(n: u64) -> impl Stream<Item = TokenResult> + Send + 'static {
        let head = futures::stream::iter([Ok(TokenEvent::Started(Started::default()))]);
        let deltas = futures::stream::iter(0..n).then(|_| async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok(TokenEvent::Delta(Delta::text("t", 1)))
        });
        let tail = futures::stream::iter([
            Ok(TokenEvent::Usage(Usage::new(1, n))),
            Ok(TokenEvent::Finished(FinishReason::Stop)),
        ]);
        head.chain(deltas).chain(tail)
    }

    fn describe(item: &TokenResult) -> String {
        match item {
            Ok(TokenEvent::Started(_)) => "started".to_owned(),
            Ok(TokenEvent::Delta(d)) => format!("delta {}", d.tokens),
            Ok(TokenEvent::Usage(u)) => format!("usage {}", u.completion()),
            Ok(TokenEvent::Finished(r)) => format!("finished {r:?}"),
            Err(e) => format!(
                "error {:?} {:?} {:?}",
                e.kind(),
                e.phase(),
                e.engine_phase()
            ),
        }
    }

    async fn collect(stream: TokenStream) -> Vec<String> {
        stream.map(|item| describe(&item)).collect().await
    }

    #[tokio::test(start_paused = true)]
    async fn track_passes_a_run_through_and_ends_the_attempt() {
        let live = LiveRequests::new(1);
        let cancel = CancelHandle::new();
        let guard = live.register(&id("r"), &cancel).unwrap();
        let out = collect(guard.track(engine(2), cancel, budget(8, None))).await;
        assert_eq!(
            out,
            ["started", "delta 1", "delta 1", "usage 2", "finished Stop"]
        );
        assert_eq!(live.inflight(), 0);
        assert_eq!(live.aborts(), AbortCounts::default());
    }

    #[tokio::test(start_paused = true)]
    async fn track_ends_at_the_cap_with_length() {
        let live = LiveRequests::new(1);
        let cancel = CancelHandle::new();
        let guard = live.register(&id("r"), &cancel).unwrap();
        let out = collect(guard.track(engine(10), cancel, budget(3, None))).await;
        assert_eq!(
            out,
            [
                "started",
                "delta 1",
                "delta 1",
                "delta 1",
                "finished Length"
            ]
        );
        assert_eq!((live.inflight(), live.aborts().total()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn track_turns_a_cancel_into_one_error_with_both_phases() {
        let live = LiveRequests::new(1);
        let cancel = CancelHandle::new();
        let guard = live.register(&id("r"), &cancel).unwrap();
        guard.enter(EnginePhase::Prefill);
        let mut stream = guard.track(engine(100), cancel.clone(), budget(100, None));
        assert_eq!(describe(&stream.next().await.unwrap()), "started");
        assert_eq!(describe(&stream.next().await.unwrap()), "delta 1");
        assert_eq!(live.phase(&id("r")), Some(EnginePhase::Decode));
        assert!(live.abort(&id("r")));
        assert_eq!(
            describe(&stream.next().await.unwrap()),
            "error Canceled AfterFirstToken Some(Decode)"
        );
        assert!(stream.next().await.is_none());
        assert_eq!((live.inflight(), live.aborts().decode), (0, 1));

        // Before any token, still queued.
        let cancel = CancelHandle::new();
        let guard = live.register(&id("q"), &cancel).unwrap();
        let mut stream = guard.track(futures::stream::pending(), cancel.clone(), budget(8, None));
        cancel.cancel(CancelReason::ClientGone);
        assert_eq!(
            describe(&stream.next().await.unwrap()),
            "error Canceled BeforeFirstToken Some(Queued)"
        );
        assert_eq!(live.aborts().queued, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn track_ends_at_the_deadline_and_on_dropping() {
        let live = LiveRequests::new(1);
        let cancel = CancelHandle::new();
        let guard = live.register(&id("r"), &cancel).unwrap();
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_millis(35);
        let out = collect(guard.track(engine(100), cancel, budget(100, Some(deadline)))).await;
        assert_eq!(
            out,
            [
                "started",
                "delta 1",
                "delta 1",
                "delta 1",
                "error TotalTimeout AfterFirstToken None"
            ]
        );
        assert_eq!(t0.elapsed(), Duration::from_millis(35));
        assert_eq!((live.inflight(), live.aborts().total()), (0, 0));

        // Dropping the stream cancels and counts the abort.
        let cancel = CancelHandle::new();
        let guard = live.register(&id("d"), &cancel).unwrap();
        guard.enter(EnginePhase::Prefill);
        drop(guard.track(engine(100), cancel.clone(), budget(100, None)));
        assert_eq!(cancel.reason(), Some(CancelReason::ClientGone));
        assert_eq!((live.inflight(), live.aborts().prefill), (0, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn track_types_the_engines_errors_and_an_unfinished_end() {
        let live = LiveRequests::new(1);
        let cancel = CancelHandle::new();
        let guard = live.register(&id("r"), &cancel).unwrap();
        let events = futures::stream::iter([
            Ok(TokenEvent::Delta(Delta::text("a", 1))),
            Err(BackendError::new(FailureKind::Internal, "engine fault")),
        ]);
        let out = collect(guard.track(events, cancel, budget(8, None))).await;
        assert_eq!(out, ["delta 1", "error Internal AfterFirstToken None"]);
        let cancel = CancelHandle::new();
        let guard = live.register(&id("r"), &cancel).unwrap();
        let out = collect(guard.track(futures::stream::empty(), cancel, budget(8, None))).await;
        assert_eq!(out, ["error ProtocolViolation BeforeFirstToken None"]);
        assert_eq!((live.inflight(), live.aborts().total()), (0, 0));
    }
}
