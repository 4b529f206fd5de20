//! Fair admission: when a model's backends are full, requests wait in a
//! bounded queue and are let through in an order that shares capacity
//! between tenants by weight, counted in tokens.
//!
//! The order is start-time fair queuing: each waiter gets a start tag
//! `max(V, last finish of its tenant)` and a finish tag
//! `start + cost / weight`, where `cost` is the request's estimated tokens
//! (prompt + `max_tokens`) and `V` the start tag of the last request let
//! through. The waiter with the smallest start tag goes first, interactive
//! requests before batch ones. A tenant that floods the queue pushes its
//! own tags far ahead, so another tenant's next request overtakes it.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use gateway_core::{LatencyClass, TenantId};
use tokio::sync::Notify;

/// One waiting request, as the ordering sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Waiter {
    /// Arrival order, for ties.
    pub seq: u64,
    /// Interactive goes before batch.
    pub class: LatencyClass,
    /// Start tag.
    pub start: f64,
}

/// The waiter that goes next: interactive first, then the smallest start
/// tag, then the earliest arrival.
pub fn next(waiters: &[Waiter]) -> Option<u64> {
    next_index(waiters).map(|i| waiters[i].seq)
}

/// Where in `waiters` the one that goes next is.
fn next_index(waiters: &[Waiter]) -> Option<usize> {
    waiters
        .iter()
        .enumerate()
        .min_by(|(_, a), (_, b)| {
            a.class
                .cmp(&b.class)
                .then(a.start.total_cmp(&b.start))
                .then(a.seq.cmp(&b.seq))
        })
        .map(|(i, _)| i)
}

#[derive(Debug, Default)]
struct State {
    waiters: Vec<Waiter>,
    /// Each waiter's wake-up, at the same index as in `waiters`.
    wakes: Vec<Arc<Notify>>,
    virtual_time: f64,
    last_finish: HashMap<TenantId, f64>,
    next_seq: u64,
}

/// The admission queue of one model.
///
/// Only the waiter whose turn it is is woken: when it becomes next (a
/// waiter ahead of it left or was let through) and when a backend of the
/// model frees a place ([`FairQueue::wake_next`]). A release wakes one
/// task, not every waiter (which then each scanned the queue: quadratic in
/// the backlog, 58 times the cost per request at 1,024 waiters in the
/// `admission` bench).
pub struct FairQueue {
    state: Mutex<State>,
    capacity: usize,
}

impl fmt::Debug for FairQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FairQueue")
            .field("waiting", &self.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

/// The queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("admission queue full ({0} waiting)")]
pub struct QueueFull(pub usize);

impl FairQueue {
    /// A queue holding at most `capacity` waiters.
    pub fn new(capacity: usize) -> Self {
        FairQueue {
            state: Mutex::new(State::default()),
            capacity,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.state().waiters.len()
    }

    /// Whether nobody waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Joins the queue with `cost` estimated tokens at `weight`.
    ///
    /// # Errors
    /// [`QueueFull`] when `capacity` requests already wait.
    pub fn join(
        self: &Arc<Self>,
        tenant: &TenantId,
        weight: u32,
        cost: u64,
        class: LatencyClass,
    ) -> Result<Ticket, QueueFull> {
        let mut s = self.state();
        if s.waiters.len() >= self.capacity {
            return Err(QueueFull(s.waiters.len()));
        }
        let v = s.virtual_time;
        let last = s.last_finish.get(tenant).copied().unwrap_or(v);
        let start = last.max(v);
        let finish = start + cost.max(1) as f64 / f64::from(weight.max(1));
        s.last_finish.insert(tenant.clone(), finish);
        let seq = s.next_seq;
        s.next_seq += 1;
        s.waiters.push(Waiter { seq, class, start });
        let wake = Arc::new(Notify::new());
        s.wakes.push(wake.clone());
        // The new waiter looks for itself at once; nobody else's turn
        // came by its joining.
        Ok(Ticket {
            queue: self.clone(),
            seq,
            wake,
            served: false,
        })
    }

    /// Wakes the waiter whose turn it is, if any (a backend of the model
    /// freed a place). A waiter not waiting at the moment finds the wake-up
    /// at its next wait, so none is lost between its check and its wait.
    pub fn wake_next(&self) {
        Self::wake_next_of(&self.state());
    }

    fn wake_next_of(s: &State) {
        if let Some(wake) = next_index(&s.waiters).and_then(|i| s.wakes.get(i)) {
            wake.notify_one();
        }
    }

    fn is_next(&self, seq: u64) -> bool {
        next(&self.state().waiters) == Some(seq)
    }

    fn leave(&self, seq: u64, served: bool) {
        let mut s = self.state();
        if let Some(i) = s.waiters.iter().position(|w| w.seq == seq) {
            let w = s.waiters.swap_remove(i);
            s.wakes.swap_remove(i);
            if served {
                s.virtual_time = s.virtual_time.max(w.start);
            }
        }
        if s.waiters.is_empty() {
            // Idle: forget history so old floods do not count forever.
            s.last_finish.clear();
        }
        // The turn may have passed to another waiter.
        Self::wake_next_of(&s);
    }
}

/// A place in a [`FairQueue`]; leaving (dropping it) or being let through
/// ([`Ticket::served`]) wakes the waiter whose turn comes next.
#[must_use = "dropping the ticket leaves the queue"]
pub struct Ticket {
    queue: Arc<FairQueue>,
    seq: u64,
    wake: Arc<Notify>,
    served: bool,
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket").field("seq", &self.seq).finish()
    }
}

impl Ticket {
    /// Whether this waiter goes next.
    pub fn is_next(&self) -> bool {
        self.queue.is_next(self.seq)
    }

    /// Completes when this waiter may look again: its turn came, or, while
    /// it is next, a backend of the model freed a place. A wake-up sent
    /// while the waiter was not waiting is kept for its next wait.
    pub fn woken(&self) -> tokio::sync::futures::Notified<'_> {
        self.wake.notified()
    }

    /// Leaves the queue as let through: the queue's virtual time moves on.
    pub fn served(mut self) {
        self.served = true;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.queue.leave(self.seq, self.served);
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    fn t(id: &str) -> TenantId {
        TenantId::new(id)
    }

    #[test]
    fn a_flooding_tenant_is_overtaken() {
        let q = Arc::new(FairQueue::new(100));
        let a: Vec<Ticket> = (0..5)
            .map(|_| q.join(&t("a"), 1, 1000, LatencyClass::Interactive).unwrap())
            .collect();
        let b = q.join(&t("b"), 1, 1000, LatencyClass::Interactive).unwrap();
        // a's first request goes first; b's comes right after it, not after all five.
        assert!(a[0].is_next());
        let mut a = a.into_iter();
        a.next().unwrap().served();
        assert!(b.is_next());
    }

    /// Which tickets have a wake-up waiting (each taken as it is read).
    fn woken(tickets: &[Ticket]) -> Vec<bool> {
        tickets
            .iter()
            .map(|t| t.woken().now_or_never().is_some())
            .collect()
    }

    #[test]
    fn only_the_waiter_whose_turn_it_is_is_woken() {
        let q = Arc::new(FairQueue::new(100));
        let mut tickets: Vec<Ticket> = ["a", "b", "c"]
            .iter()
            .map(|id| q.join(&t(id), 1, 10, LatencyClass::Interactive).unwrap())
            .collect();
        // Joining wakes nobody: the newcomer looks for itself.
        assert_eq!(woken(&tickets), [false, false, false]);
        // A freed place wakes the next waiter only, once.
        q.wake_next();
        q.wake_next();
        assert_eq!(woken(&tickets), [true, false, false]);
        assert_eq!(woken(&tickets), [false, false, false]);
        // A batch request joins behind them; the first is let through:
        // the turn passes to the second.
        let batch = q.join(&t("d"), 1, 10, LatencyClass::Batch).unwrap();
        tickets.remove(0).served();
        assert_eq!(woken(&tickets), [true, false]);
        // A waiter that gives up (dropped) also passes the turn on.
        drop(tickets.remove(0));
        assert_eq!(woken(&tickets), [true]);
        assert!(tickets[0].is_next());
        tickets.remove(0).served();
        // Batch goes last; now it is its turn.
        assert!(batch.is_next());
        assert!(batch.woken().now_or_never().is_some());
        drop(batch);
        // An empty queue: a freed place wakes nobody and nothing breaks.
        q.wake_next();
        assert!(q.is_empty());
    }

    #[test]
    fn weight_and_cost_shape_the_share() {
        let q = Arc::new(FairQueue::new(100));
        // Heavy (weight 2) and light (weight 1) tenants, same cost: heavy
        // gets two turns per light turn.
        let mut tickets = Vec::new();
        for _ in 0..4 {
            tickets.push((
                "heavy",
                q.join(&t("heavy"), 2, 100, LatencyClass::Interactive)
                    .unwrap(),
            ));
            tickets.push((
                "light",
                q.join(&t("light"), 1, 100, LatencyClass::Interactive)
                    .unwrap(),
            ));
        }
        let mut order = Vec::new();
        while !tickets.is_empty() {
            let i = tickets.iter().position(|(_, t)| t.is_next()).unwrap();
            let (who, ticket) = tickets.remove(i);
            order.push(who);
            ticket.served();
        }
        // Start tags: heavy 0, 50, 100, 150; light 0, 100, 200, 300 (ties by arrival).
        assert_eq!(
            order,
            [
                "heavy", "light", "heavy", "light", "heavy", "heavy", "light", "light"
            ]
        );
    }

    #[test]
    fn interactive_goes_before_batch_and_the_queue_is_bounded() {
        let q = Arc::new(FairQueue::new(2));
        let batch = q.join(&t("a"), 1, 1, LatencyClass::Batch).unwrap();
        let interactive = q
            .join(&t("b"), 1, 1_000_000, LatencyClass::Interactive)
            .unwrap();
        assert!(interactive.is_next());
        assert!(!batch.is_next());
        assert_eq!(
            q.join(&t("c"), 1, 1, LatencyClass::Interactive)
                .unwrap_err(),
            QueueFull(2)
        );
        drop(interactive);
        assert!(batch.is_next());
        drop(batch);
        assert!(q.is_empty());
    }
}
