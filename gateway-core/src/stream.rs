//! [`TokenStream`]: the boxed stream of token events a backend returns.

use std::fmt;
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
pub struct TokenStream {
    inner: BoxStream<'static, TokenResult>,
    on_drop: Option<CancelHandle>,
    meter: Option<UsageMeter>,
    done: bool,
}

impl fmt::Debug for TokenStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenStream")
            .field("done", &self.done)
            .field("cancel_on_drop", &self.on_drop.is_some())
            .finish_non_exhaustive()
    }
}

impl TokenStream {
    /// Wraps any stream of token results.
    pub fn new(stream: impl Stream<Item = TokenResult> + Send + 'static) -> Self {
        TokenStream {
            inner: Box::pin(stream),
            on_drop: None,
            meter: None,
            done: false,
        }
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
        let item = match self.inner.as_mut().poll_next(cx) {
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
