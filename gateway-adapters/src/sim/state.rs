//! The engine's shared state and the RAII guards that keep its accounting
//! exact: a slot, a place in the queue, KV-cache tokens; the registry of
//! live requests (their phases and aborts) is gateway-core's
//! [`LiveRequests`].
//!
//! Slots, queue and KV use sit behind one short-held `std` mutex, never held
//! across an await, so running, waiting and KV use always agree. The
//! registry has its own lock, taken inside the state's (a waiter granted a
//! slot moves to `Prefill`) and never the other way round.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use gateway_core::{
    AbortCounts, BackendInfo, CancelHandle, EnginePhase, Health, LiveAttempt, LiveGuard,
    LiveRequests, RequestId,
};
use tokio::sync::oneshot;

use super::{FaultPlan, SimConfig};

/// Counters of a [`SimBackend`](super::SimBackend) since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Calls of `start`, refused ones included.
    pub start_calls: u64,
    /// Requests accepted by `start` (running or queued).
    pub started: u64,
    /// Requests refused by `start`.
    pub rejected: u64,
    /// Accepted requests that generated to the end (`Stop` or `Length`).
    pub completed: u64,
    /// Accepted requests that ended with an error other than a cancel.
    pub failed: u64,
    /// Accepted requests that were canceled (see
    /// [`SimBackend::aborts`](super::SimBackend::aborts) for the phases).
    pub canceled: u64,
    /// Completion tokens generated, delivered or not.
    pub tokens_generated: u64,
    /// Speculative draft tokens proposed.
    pub drafted_tokens: u64,
    /// Speculative draft tokens accepted.
    pub accepted_tokens: u64,
    /// Most requests running at once.
    pub peak_running: u32,
    /// Most requests waiting at once.
    pub peak_waiting: u32,
    /// Most KV-cache tokens in use at once.
    pub peak_kv_tokens: u64,
}

/// How an accepted request ended, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Completed,
    Failed,
    Canceled,
}

#[derive(Debug)]
struct Waiter {
    serial: u64,
    attempt: LiveAttempt,
    grant: oneshot::Sender<()>,
}

#[derive(Debug, Default)]
struct State {
    running: u32,
    queue: VecDeque<Waiter>,
    kv_used: u64,
    next_serial: u64,
    stats: SimStats,
}

impl State {
    /// Gives a freed slot to the first waiter, or frees it.
    fn release_slot(&mut self) {
        match self.queue.pop_front() {
            Some(waiter) => {
                // The slot moves to the waiter: `running` stays. Popping is
                // the grant; if the waiter is gone already, its guard frees
                // the slot when it drops.
                waiter.attempt.enter(EnginePhase::Prefill);
                let _ = waiter.grant.send(());
            }
            None => self.running = self.running.saturating_sub(1),
        }
    }
}

/// What every handle of one engine shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: SimConfig,
    pub(crate) info: BackendInfo,
    /// The live requests: `abort(id)`, their phases, the aborts per phase.
    pub(crate) live: LiveRequests,
    state: Mutex<State>,
    faults: Mutex<Arc<FaultPlan>>,
    health: Mutex<Health>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections never panic midway, so a poisoned lock still holds
    // consistent data.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The engine-side figures of a pressure snapshot.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Load {
    pub(crate) running: u32,
    pub(crate) waiting: u32,
    pub(crate) kv_used: u64,
}

impl Shared {
    pub(crate) fn new(config: SimConfig, info: BackendInfo) -> Self {
        let faults = Arc::new(config.faults.clone());
        Shared {
            config,
            info,
            // Admission bounds the requests (slots plus queue); the registry
            // only keeps them.
            live: LiveRequests::new(u32::MAX),
            state: Mutex::new(State::default()),
            faults: Mutex::new(faults),
            health: Mutex::new(Health::Healthy),
        }
    }

    pub(crate) fn faults(&self) -> Arc<FaultPlan> {
        lock(&self.faults).clone()
    }

    pub(crate) fn set_faults(&self, plan: FaultPlan) {
        *lock(&self.faults) = Arc::new(plan);
    }

    pub(crate) fn health(&self) -> Health {
        lock(&self.health).clone()
    }

    pub(crate) fn set_health(&self, health: Health) {
        *lock(&self.health) = health;
    }

    /// Counts a call of `start` and returns its 1-based number.
    pub(crate) fn count_call(&self) -> u64 {
        let mut s = lock(&self.state);
        s.stats.start_calls += 1;
        s.stats.start_calls
    }

    pub(crate) fn count_rejected(&self) {
        lock(&self.state).stats.rejected += 1;
    }

    pub(crate) fn load(&self) -> Load {
        let s = lock(&self.state);
        Load {
            running: s.running,
            waiting: s.queue.len() as u32,
            kv_used: s.kv_used,
        }
    }

    pub(crate) fn stats(&self) -> SimStats {
        lock(&self.state).stats
    }

    pub(crate) fn aborts(&self) -> AbortCounts {
        self.live.aborts()
    }

    /// Admits a request: a free slot, else a place at the end of the
    /// queue, else `None` (full). Registers it as live either way.
    pub(crate) fn admit(
        self: &Arc<Self>,
        id: &RequestId,
        cancel: &CancelHandle,
    ) -> Option<(Admission, LiveGuard)> {
        // The caller checked the cancel; the registry is unbounded.
        let live = self.live.register(id, cancel).ok()?;
        let mut s = lock(&self.state);
        let serial = s.next_serial;
        let (admission, phase) = if s.running < self.config.slots {
            s.running += 1;
            s.stats.peak_running = s.stats.peak_running.max(s.running);
            let slot = SlotGuard {
                shared: self.clone(),
            };
            (Admission::Running(slot), EnginePhase::Prefill)
        } else if (s.queue.len() as u64) < u64::from(self.config.queue_capacity) {
            let (grant, rx) = oneshot::channel();
            s.queue.push_back(Waiter {
                serial,
                attempt: live.attempt(),
                grant,
            });
            s.stats.peak_waiting = s.stats.peak_waiting.max(s.queue.len() as u32);
            let queued = QueueGuard {
                shared: self.clone(),
                serial,
                rx,
                armed: true,
            };
            (Admission::Queued(queued), EnginePhase::Queued)
        } else {
            // Refused, not aborted.
            drop(s);
            live.end();
            return None;
        };
        s.next_serial += 1;
        s.stats.started += 1;
        live.enter(phase);
        Some((admission, live))
    }

    /// Takes `tokens` more KV-cache tokens for `kv` if they are free.
    fn try_grow(&self, kv: &mut KvGuard, tokens: u64) -> bool {
        let mut s = lock(&self.state);
        self.grow_locked(&mut s, kv, tokens)
    }

    fn grow_locked(&self, s: &mut State, kv: &mut KvGuard, tokens: u64) -> bool {
        let free = self.config.kv_capacity_tokens.saturating_sub(s.kv_used);
        if tokens > free {
            return false;
        }
        s.kv_used += tokens;
        s.stats.peak_kv_tokens = s.stats.peak_kv_tokens.max(s.kv_used);
        kv.tokens += tokens;
        true
    }

    /// Records one generation step of `tokens` tokens (`drafted` draft
    /// tokens proposed, `accepted` of them accepted), taking a KV-cache
    /// token for each; `false` (and nothing recorded) if the KV cache has
    /// no room.
    pub(crate) fn step(&self, kv: &mut KvGuard, tokens: u32, drafted: u32, accepted: u32) -> bool {
        let mut s = lock(&self.state);
        if !self.grow_locked(&mut s, kv, u64::from(tokens)) {
            return false;
        }
        s.stats.tokens_generated += u64::from(tokens);
        s.stats.drafted_tokens += u64::from(drafted);
        s.stats.accepted_tokens += u64::from(accepted);
        true
    }
}

/// How a request was admitted.
#[derive(Debug)]
pub(crate) enum Admission {
    /// It holds a slot.
    Running(SlotGuard),
    /// It waits in the queue.
    Queued(QueueGuard),
}

/// A running slot; dropping it gives the slot to the first waiter or frees it.
#[derive(Debug)]
pub(crate) struct SlotGuard {
    shared: Arc<Shared>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        lock(&self.shared.state).release_slot();
    }
}

/// A place in the queue; dropping it leaves the queue, or frees the slot
/// that was granted but not taken.
#[derive(Debug)]
pub(crate) struct QueueGuard {
    shared: Arc<Shared>,
    serial: u64,
    rx: oneshot::Receiver<()>,
    armed: bool,
}

impl QueueGuard {
    /// Waits for a slot. `None` if the grant can never come (the engine
    /// state went away), which does not happen while the guard lives.
    ///
    /// # Cancel safety
    /// Dropping the future drops the guard, which leaves the queue or frees
    /// a slot granted meanwhile.
    pub(crate) async fn granted(mut self) -> Option<SlotGuard> {
        let _ = (&mut self.rx).await;
        let still_queued = lock(&self.shared.state)
            .queue
            .iter()
            .any(|w| w.serial == self.serial);
        if still_queued {
            return None;
        }
        self.armed = false;
        Some(SlotGuard {
            shared: self.shared.clone(),
        })
    }
}

impl Drop for QueueGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut s = lock(&self.shared.state);
        match s.queue.iter().position(|w| w.serial == self.serial) {
            Some(pos) => {
                s.queue.remove(pos);
            }
            // Popped means granted: the slot is ours to give back.
            None => s.release_slot(),
        }
    }
}

/// KV-cache tokens held by one request; dropping it frees them.
#[derive(Debug)]
pub(crate) struct KvGuard {
    shared: Arc<Shared>,
    tokens: u64,
}

impl KvGuard {
    /// Takes `tokens` KV-cache tokens if they are free.
    pub(crate) fn alloc(shared: &Arc<Shared>, tokens: u64) -> Option<KvGuard> {
        let mut kv = KvGuard {
            shared: shared.clone(),
            tokens: 0,
        };
        if shared.try_grow(&mut kv, tokens) {
            Some(kv)
        } else {
            None
        }
    }
}

impl Drop for KvGuard {
    fn drop(&mut self) {
        if self.tokens > 0 {
            let mut s = lock(&self.shared.state);
            s.kv_used = s.kv_used.saturating_sub(self.tokens);
        }
    }
}

impl Shared {
    /// Counts how an accepted request ended and takes it out of the
    /// registry: a cancel counts as an abort in the phase the request is in
    /// now, which is returned.
    pub(crate) fn finish(&self, live: LiveGuard, outcome: Outcome) -> EnginePhase {
        let phase = live.phase();
        let mut s = lock(&self.state);
        match outcome {
            Outcome::Completed => s.stats.completed += 1,
            Outcome::Failed => s.stats.failed += 1,
            Outcome::Canceled => s.stats.canceled += 1,
        }
        drop(s);
        match outcome {
            // Dropped un-ended: the registry counts the abort in `phase`.
            Outcome::Canceled => drop(live),
            Outcome::Completed | Outcome::Failed => live.end(),
        }
        phase
    }
}
