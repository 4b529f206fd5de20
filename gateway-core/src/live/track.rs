//! [`LiveGuard::track`]: an engine's events made into a stream that keeps
//! the contract's stream rules, and [`Progress`], the delivered tokens
//! against the cap it counts with.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::task::Poll;

use futures::{Stream, StreamExt};
use tokio::time::Instant;

use super::LiveGuard;
use crate::{
    BackendError, CancelHandle, CancelReason, EnginePhase, FailureKind, FailurePhase, FinishReason,
    RequestBudget, TokenEvent, TokenResult, TokenStream,
};

impl LiveGuard {
    /// Wraps the engine's `events` for this attempt into the stream the
    /// contract asks for, under the attempt's `budget` and the cancel handle
    /// it was registered with (attached to the stream with
    /// [`TokenStream::cancel_on_drop`]):
    ///
    /// - when the handle fires (by the caller, by [`LiveRequests::abort`](super::LiveRequests::abort),
    ///   or because the stream was dropped), `events` is dropped at once (which
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
    /// Dropping the returned stream cancels the handle with `ClientGone`
    /// and drops `events` and the guard (counting an abort unless it ended).
    pub fn track(
        self,
        events: impl Stream<Item = TokenResult> + Send + 'static,
        budget: RequestBudget,
    ) -> TokenStream {
        let cancel = self.cancel.clone();
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
        let wake = {
            let events = self.events.as_mut()?;
            let deadline = self.deadline;
            let mut canceled = pin!(self.cancel.canceled());
            let mut deadline = pin!(async move {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            });
            // In this order: a cancel wins over a passed deadline, and both
            // over an event that is ready at the same time.
            poll_fn(|cx| {
                if let Poll::Ready(reason) = canceled.as_mut().poll(cx) {
                    return Poll::Ready(Wake::Canceled(reason));
                }
                if deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Wake::Deadline);
                }
                events.poll_next_unpin(cx).map(Wake::Event)
            })
            .await
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::live::LiveRequests;
    use crate::{AbortCounts, CancelHandle, Delta, RequestId, Started, Usage};

    fn id(s: &str) -> RequestId {
        RequestId::from(s)
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
        let out = collect(guard.track(engine(2), budget(8, None))).await;
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
        let out = collect(guard.track(engine(10), budget(3, None))).await;
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
        let mut stream = guard.track(engine(100), budget(100, None));
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
        let mut stream = guard.track(futures::stream::pending(), budget(8, None));
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
        let out = collect(guard.track(engine(100), budget(100, Some(deadline)))).await;
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
        drop(guard.track(engine(100), budget(100, None)));
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
        let out = collect(guard.track(events, budget(8, None))).await;
        assert_eq!(out, ["delta 1", "error Internal AfterFirstToken None"]);
        let cancel = CancelHandle::new();
        let guard = live.register(&id("r"), &cancel).unwrap();
        let out = collect(guard.track(futures::stream::empty(), budget(8, None))).await;
        assert_eq!(out, ["error ProtocolViolation BeforeFirstToken None"]);
        assert_eq!((live.inflight(), live.aborts().total()), (0, 0));
    }
}
