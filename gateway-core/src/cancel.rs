//! Cancellation with a reason: [`CancelHandle`] to observe and fire,
//! [`CancelGuard`] that cancels when the request side goes away.

use std::fmt;
use std::sync::{Arc, OnceLock};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Why a request was canceled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CancelReason {
    /// The client disconnected or dropped the request.
    ClientGone,
    /// A timeout (first token, idle or total) expired.
    Timeout,
    /// The request's budget (money or completion tokens) ran out.
    Budget,
    /// The gateway is shutting down.
    Shutdown,
    /// An operator or the host application aborted the request explicitly.
    Aborted,
}

impl CancelReason {
    /// A stable name for labels and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            CancelReason::ClientGone => "client_gone",
            CancelReason::Timeout => "timeout",
            CancelReason::Budget => "budget",
            CancelReason::Shutdown => "shutdown",
            CancelReason::Aborted => "aborted",
        }
    }
}

impl fmt::Display for CancelReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug)]
struct Fired {
    reason: CancelReason,
    at: Instant,
}

#[derive(Debug)]
struct Node {
    token: CancellationToken,
    fired: OnceLock<Fired>,
    parent: Option<Arc<Node>>,
}

impl Node {
    fn fired(&self) -> Option<&Fired> {
        match self.fired.get() {
            Some(f) => Some(f),
            None => self.parent.as_ref().and_then(|p| p.fired()),
        }
    }
}

/// A cloneable cancellation signal that carries why and when it fired.
///
/// The first [`cancel`](CancelHandle::cancel) wins: later calls keep the
/// first reason. A [`child`](CancelHandle::child) is canceled with its
/// parent but can be canceled alone (one backend attempt of a request, say).
#[derive(Clone)]
pub struct CancelHandle {
    node: Arc<Node>,
}

impl fmt::Debug for CancelHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelHandle")
            .field("reason", &self.reason())
            .finish()
    }
}

impl Default for CancelHandle {
    fn default() -> Self {
        CancelHandle::new()
    }
}

impl CancelHandle {
    /// A new, uncanceled handle with no guard. Use [`CancelHandle::guarded`]
    /// when dropping the request side must cancel.
    pub fn new() -> Self {
        CancelHandle {
            node: Arc::new(Node {
                token: CancellationToken::new(),
                fired: OnceLock::new(),
                parent: None,
            }),
        }
    }

    /// A new handle, owned by the guard that cancels it with
    /// [`CancelReason::ClientGone`] when dropped un-disarmed. Keep the guard
    /// for as long as the request runs and pass a clone of
    /// [`CancelGuard::handle`] to the work:
    ///
    /// ```
    /// use gateway_core::{CancelHandle, CancelReason};
    ///
    /// let guard = CancelHandle::guarded();
    /// let cancel = guard.handle().clone(); // what the backend gets
    /// assert!(!cancel.is_canceled());
    /// drop(guard); // the client went away
    /// assert_eq!(cancel.reason(), Some(CancelReason::ClientGone));
    /// ```
    ///
    /// It returns the guard alone (not a `(guard, handle)` pair) so that the
    /// guard cannot be dropped by accident with `let (_, cancel) = ...`: the
    /// handle is borrowed from the guard, and a guard that is never bound
    /// to a name is a `must_use` warning.
    pub fn guarded() -> CancelGuard {
        CancelGuard::arm(CancelHandle::new())
    }

    /// A handle canceled whenever this one is, which can also be canceled
    /// on its own without touching this one.
    pub fn child(&self) -> CancelHandle {
        CancelHandle {
            node: Arc::new(Node {
                token: self.node.token.child_token(),
                fired: OnceLock::new(),
                parent: Some(self.node.clone()),
            }),
        }
    }

    /// A guard owning a new child handle: dropped un-disarmed, it cancels
    /// the child (not this handle) with [`CancelReason::ClientGone`]. For a
    /// request that a server's shutdown handle must also be able to cancel.
    /// See [`CancelHandle::guarded`] for why it returns the guard alone.
    pub fn guarded_child(&self) -> CancelGuard {
        CancelGuard::arm(self.child())
    }

    /// Cancels with `reason`. Returns `true` if this call fired the handle,
    /// `false` if it was already canceled (the first reason stays).
    pub fn cancel(&self, reason: CancelReason) -> bool {
        if self.node.fired().is_some() {
            return false;
        }
        let won = self
            .node
            .fired
            .set(Fired {
                reason,
                at: Instant::now(),
            })
            .is_ok();
        self.node.token.cancel();
        won
    }

    /// Whether the handle (or an ancestor) was canceled.
    pub fn is_canceled(&self) -> bool {
        self.node.token.is_cancelled()
    }

    /// The reason, once canceled.
    pub fn reason(&self) -> Option<CancelReason> {
        if !self.is_canceled() {
            return None;
        }
        self.node.fired().map(|f| f.reason)
    }

    /// When the cancel fired, for measuring how long an abort took to
    /// reach the engine.
    pub fn canceled_at(&self) -> Option<Instant> {
        if !self.is_canceled() {
            return None;
        }
        self.node.fired().map(|f| f.at)
    }

    /// Waits until canceled and returns the reason.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future loses nothing.
    pub async fn canceled(&self) -> CancelReason {
        self.node.token.cancelled().await;
        // The token fires after the reason is set, except when an ancestor
        // token was canceled through tokio-util directly (never done here).
        self.reason().unwrap_or(CancelReason::Aborted)
    }

    /// The underlying token, for `select!` with tokio-util helpers.
    pub fn token(&self) -> &CancellationToken {
        &self.node.token
    }
}

/// The request side's ownership of a cancel handle: dropping it cancels
/// with [`CancelReason::ClientGone`], unless [`disarm`](CancelGuard::disarm)ed
/// once the request finished normally.
///
/// Made by [`CancelHandle::guarded`], [`CancelHandle::guarded_child`] (and
/// the gateway's `Gateway::request_cancel`). The work gets a clone of
/// [`handle`](CancelGuard::handle); the guard stays with whatever stands
/// for the client (a connection, a response body, a task) until the request
/// is over.
///
/// # The trap
///
/// A guard that is dropped at once cancels its request at once: the work
/// then fails as `client_gone`. Bind it to a named variable (`_guard` is
/// fine; `_` alone drops it on the spot) and keep it alive while the
/// request runs. A guard created and dropped in one statement, as in
/// `let cancel = CancelHandle::guarded().handle().clone();`, has already
/// canceled the handle.
///
/// The pair a guard used to come in is gone, and with it the silent form of
/// the trap, which no longer compiles:
///
/// ```compile_fail,E0308
/// let (_, cancel) = gateway_core::CancelHandle::guarded();
/// ```
///
/// nor does keeping a borrowed handle past a guard that was never bound:
///
/// ```compile_fail,E0716
/// let cancel = gateway_core::CancelHandle::guarded().handle();
/// assert!(!cancel.is_canceled());
/// ```
#[must_use = "dropping a CancelGuard cancels its request: keep it while the request runs"]
pub struct CancelGuard {
    handle: CancelHandle,
    armed: bool,
}

impl fmt::Debug for CancelGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelGuard")
            .field("armed", &self.armed)
            .field("reason", &self.handle.reason())
            .finish()
    }
}

impl CancelGuard {
    /// A guard over `handle`, armed.
    fn arm(handle: CancelHandle) -> Self {
        CancelGuard {
            handle,
            armed: true,
        }
    }

    /// The guarded handle; clone it for the work the guard stands over.
    pub fn handle(&self) -> &CancelHandle {
        &self.handle
    }

    /// Gives up the guard without canceling, returning the handle.
    pub fn disarm(mut self) -> CancelHandle {
        self.armed = false;
        self.handle.clone()
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if self.armed {
            self.handle.cancel(CancelReason::ClientGone);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let h = CancelHandle::new();
        assert_eq!(h.reason(), None);
        assert!(h.cancel(CancelReason::Timeout));
        assert!(!h.cancel(CancelReason::Shutdown));
        assert_eq!(h.reason(), Some(CancelReason::Timeout));
        assert!(h.clone().is_canceled());
    }

    #[test]
    fn child_follows_parent_but_not_the_reverse() {
        let parent = CancelHandle::new();
        let child = parent.child();
        assert!(child.cancel(CancelReason::Timeout));
        assert!(!parent.is_canceled());

        let child2 = parent.child();
        parent.cancel(CancelReason::Shutdown);
        assert_eq!(child2.reason(), Some(CancelReason::Shutdown));
        // A child canceled on its own keeps its own reason.
        assert_eq!(child.reason(), Some(CancelReason::Timeout));
        // Canceling an already-canceled child reports it was not the first.
        assert!(!child2.cancel(CancelReason::Budget));
    }

    #[test]
    fn dropping_the_guard_cancels_as_client_gone() {
        let guard = CancelHandle::guarded();
        let handle = guard.handle().clone();
        drop(guard);
        assert_eq!(handle.reason(), Some(CancelReason::ClientGone));
    }

    #[test]
    fn a_guarded_child_cancels_only_itself() {
        let server = CancelHandle::new();
        let guard = server.guarded_child();
        let request = guard.handle().clone();
        drop(guard);
        assert_eq!(request.reason(), Some(CancelReason::ClientGone));
        assert!(!server.is_canceled());
        let guard = server.guarded_child();
        let other = guard.handle().clone();
        server.cancel(CancelReason::Shutdown);
        assert_eq!(other.reason(), Some(CancelReason::Shutdown));
    }

    #[test]
    fn a_disarmed_guard_does_not_cancel() {
        let guard = CancelHandle::guarded();
        let handle = guard.handle().clone();
        let same = guard.disarm();
        assert!(!handle.is_canceled());
        same.cancel(CancelReason::Budget);
        assert_eq!(handle.reason(), Some(CancelReason::Budget));
    }

    #[tokio::test(start_paused = true)]
    async fn canceled_resolves_with_reason_and_time() {
        let h = CancelHandle::new();
        let start = Instant::now();
        let waiter = {
            let h = h.clone();
            tokio::spawn(async move { h.canceled().await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        h.cancel(CancelReason::ClientGone);
        assert_eq!(waiter.await.unwrap(), CancelReason::ClientGone);
        assert_eq!(
            h.canceled_at().unwrap() - start,
            std::time::Duration::from_millis(30)
        );
    }
}
