//! [`TokenStream`]: the boxed stream of token events a backend returns.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use futures::stream::BoxStream;

use crate::{BackendError, CancelHandle, CancelReason, TokenEvent, UsageMeter};

/// One item of a token stream.
pub type TokenResult = Result<TokenEvent, BackendError>;

/// The events of one backend attempt, in the order [`EventOrder`](crate::EventOrder)
/// checks. Boxed once per attempt, never per token.
///
/// # Cancel safety
/// Dropping the stream must stop the engine's work: backends attach their
/// cancel handle with [`TokenStream::cancel_on_drop`].
///
/// # Driven streams
/// A backend whose events come from work of its own (reading an engine's
/// connection) can hand that work over as a *driver*
/// ([`TokenStream::driven`]) instead of spawning a task for it: the driver
/// is polled inside the consumer's polls, which saves a task and a wake-up
/// per read, and dropping the stream drops the driver (closing the
/// connection at once). A consumer that waits on something else while
/// holding the stream (a slow client) keeps the driver going with
/// [`TokenStream::drive`], so the driver still sees a cancel, a deadline or
/// an abort in time.
pub struct TokenStream {
    inner: BoxStream<'static, TokenResult>,
    driver: Option<Driver>,
    on_drop: Option<CancelHandle>,
    meter: Option<UsageMeter>,
    done: bool,
}

/// The work behind a driven stream.
type Driver = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

impl fmt::Debug for TokenStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenStream")
            .field("done", &self.done)
            .field("driven", &self.driver.is_some())
            .field("cancel_on_drop", &self.on_drop.is_some())
            .finish_non_exhaustive()
    }
}

impl TokenStream {
    /// Wraps any stream of token results.
    pub fn new(stream: impl Stream<Item = TokenResult> + Send + 'static) -> Self {
        TokenStream {
            inner: Box::pin(stream),
            driver: None,
            on_drop: None,
            meter: None,
            done: false,
        }
    }

    /// A stream of `stream`'s items, produced by `driver`, which runs inside
    /// the consumer's polls (see [Driven streams](#driven-streams)): a poll
    /// that finds no item ready polls the driver, then `stream` again. The
    /// driver ends on its own; dropping the stream drops it wherever it is.
    ///
    /// ```
    /// use futures::StreamExt;
    /// use gateway_core::{FinishReason, TokenEvent, TokenStream};
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    /// let driver = async move {
    ///     let _ = tx.send(Ok(TokenEvent::Finished(FinishReason::Stop))).await;
    /// };
    /// let stream = TokenStream::driven(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)), driver);
    /// let items: Vec<_> = stream.collect().await;
    /// assert_eq!(items.len(), 1);
    /// # });
    /// ```
    pub fn driven(
        stream: impl Stream<Item = TokenResult> + Send + 'static,
        driver: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        let mut s = TokenStream::new(stream);
        s.driver = Some(Box::pin(driver));
        s
    }

    /// Polls the driver alone, without taking an item: `Ready` once when
    /// the driver completes, `Pending` for ever after (and for a stream
    /// without driver), so it can sit in a `select!` loop.
    pub fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(driver) = self.driver.as_mut() else {
            return Poll::Pending;
        };
        match driver.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.driver = None;
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// [`poll_drive`](Self::poll_drive) as a future: resolves when the
    /// driver completes, never for a stream without (or past) one.
    pub async fn drive(&mut self) {
        std::future::poll_fn(|cx| self.poll_drive(cx)).await;
    }

    /// A stream of fixed items (tests, cached answers).
    pub fn from_items(items: Vec<TokenResult>) -> Self {
        TokenStream::new(futures::stream::iter(items))
    }

    /// Cancels `handle` with [`CancelReason::ClientGone`] if the stream is
    /// dropped before it ended.
    #[must_use]
    pub fn cancel_on_drop(mut self, handle: CancelHandle) -> Self {
        self.on_drop = Some(handle);
        self
    }

    /// Records each event into `meter` as the consumer takes it: prompt
    /// counts from `Started`, delivered tokens from `Delta`, the engine's
    /// counts from `Usage`.
    #[must_use]
    pub fn metered(mut self, meter: UsageMeter) -> Self {
        self.meter = Some(meter);
        self
    }

    /// Whether the stream has yielded its last item.
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn record(&self, event: &TokenEvent) {
        let Some(meter) = &self.meter else { return };
        match event {
            TokenEvent::Started(s) => meter.record_started(s),
            TokenEvent::Delta(d) => meter.add_delivered(u64::from(d.tokens)),
            TokenEvent::Usage(u) => meter.record_usage(u),
            TokenEvent::Finished(_) => {}
        }
    }
}

impl Stream for TokenStream {
    type Item = TokenResult;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<TokenResult>> {
        // Not fused: a backend that yields after its end is caught by
        // `EventOrder` (and the conformance kit), not hidden here.
        let mut polled = self.inner.as_mut().poll_next(cx);
        if polled.is_pending() && self.driver.is_some() {
            // Nothing ready: let the driver produce, then look again.
            let _ = self.poll_drive(cx);
            polled = self.inner.as_mut().poll_next(cx);
        }
        let item = match polled {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(item) => item,
        };
        match &item {
            None | Some(Err(_)) | Some(Ok(TokenEvent::Finished(_))) => self.done = true,
            Some(Ok(_)) => {}
        }
        if let Some(Ok(event)) = &item {
            self.record(event);
        }
        Poll::Ready(item)
    }
}

impl Drop for TokenStream {
    fn drop(&mut self) {
        if !self.done
            && let Some(handle) = self.on_drop.take()
        {
            handle.cancel(CancelReason::ClientGone);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Delta, FinishReason, Started};
    use futures::StreamExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    fn events() -> Vec<TokenResult> {
        vec![
            Ok(TokenEvent::Started(Started {
                prompt_tokens: Some(3),
                cached_tokens: None,
            })),
            Ok(TokenEvent::Delta(Delta::text("ab", 2))),
            Ok(TokenEvent::Finished(FinishReason::Stop)),
        ]
    }

    #[tokio::test]
    async fn meters_what_the_consumer_takes() {
        let meter = UsageMeter::new();
        let mut s = TokenStream::from_items(events()).metered(meter.clone());
        s.next().await;
        assert_eq!(meter.snapshot().prompt(), 3);
        assert_eq!(meter.delivered(), 0);
        s.next().await;
        assert_eq!(meter.delivered(), 2);
        assert!(!s.is_done());
        s.next().await;
        assert!(s.is_done());
        assert!(s.next().await.is_none());
        assert!(s.is_done());
    }

    /// A driven stream over a channel whose driver sends `items` one at a
    /// time; `dropped` is set when the driver is dropped unfinished.
    fn driven(items: Vec<TokenResult>) -> (TokenStream, Arc<AtomicUsize>, Arc<AtomicBool>) {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let polls = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicBool::new(false));
        struct Flag(Arc<AtomicBool>, bool);
        impl Drop for Flag {
            fn drop(&mut self) {
                if !self.1 {
                    self.0.store(true, Ordering::SeqCst);
                }
            }
        }
        let counted = polls.clone();
        let flag = Flag(dropped.clone(), false);
        let driver = async move {
            // The whole guard moves in (not just the field written below).
            let mut flag = flag;
            for item in items {
                counted.fetch_add(1, Ordering::SeqCst);
                if tx.send(item).await.is_err() {
                    return;
                }
            }
            flag.1 = true;
        };
        let stream =
            TokenStream::driven(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)), driver);
        (stream, polls, dropped)
    }

    #[tokio::test]
    async fn a_driven_stream_runs_its_driver_in_the_consumers_polls() {
        let (mut s, sent, dropped) = driven(events());
        assert_eq!(sent.load(Ordering::SeqCst), 0, "nothing runs before a poll");
        let mut names = Vec::new();
        while let Some(item) = s.next().await {
            names.push(item.unwrap().name());
        }
        assert_eq!(names, ["Started", "Delta", "Finished"]);
        assert_eq!(sent.load(Ordering::SeqCst), 3);
        assert!(s.is_done());
        drop(s);
        assert!(!dropped.load(Ordering::SeqCst), "the driver had finished");
    }

    #[tokio::test]
    async fn dropping_a_driven_stream_drops_its_driver_and_cancels() {
        let h = CancelHandle::new();
        let (s, _, dropped) = driven(events());
        let mut s = s.cancel_on_drop(h.clone());
        assert_eq!(s.next().await.unwrap().unwrap().name(), "Started");
        drop(s);
        assert!(dropped.load(Ordering::SeqCst));
        assert_eq!(h.reason(), Some(CancelReason::ClientGone));
    }

    #[tokio::test]
    async fn drive_runs_the_driver_alone_and_resolves_once() {
        let (mut s, sent, _) = driven(events());
        // The channel holds one item: the driver sends it and waits.
        let waited = tokio::time::timeout(std::time::Duration::from_millis(20), s.drive()).await;
        assert!(waited.is_err(), "the driver waits for room");
        assert_eq!(sent.load(Ordering::SeqCst), 2, "one sent, one waiting");
        assert_eq!(s.next().await.unwrap().unwrap().name(), "Started");
        assert_eq!(s.next().await.unwrap().unwrap().name(), "Delta");
        assert_eq!(s.next().await.unwrap().unwrap().name(), "Finished");
        // The driver is over; `drive` resolved inside the polls above and
        // now never resolves again.
        let again = tokio::time::timeout(std::time::Duration::from_millis(20), s.drive()).await;
        assert!(again.is_err());
        // A stream without a driver: `drive` never resolves.
        let mut plain = TokenStream::from_items(events());
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(20), plain.drive()).await;
        assert!(waited.is_err());
    }

    #[tokio::test]
    async fn drop_before_the_end_cancels() {
        let h = CancelHandle::new();
        let mut s = TokenStream::from_items(events()).cancel_on_drop(h.clone());
        s.next().await;
        drop(s);
        assert_eq!(h.reason(), Some(CancelReason::ClientGone));

        let h = CancelHandle::new();
        let s = TokenStream::from_items(events()).cancel_on_drop(h.clone());
        let all: Vec<_> = s.collect().await;
        assert_eq!(all.len(), 3);
        assert!(!h.is_canceled(), "a finished stream must not cancel");
    }
}
