//! The socket and body wrappers that drive the edge limits: [`EdgeIo`]
//! tells a connection's [`EdgeClock`] when bytes arrive and turns hyper's
//! own empty answers to unreadable request heads (431, 414, 400) into
//! OpenAI-shaped JSON, and lingers at the close while the client still
//! sends (so an answer given before its body was read is not lost to a
//! reset); [`TimedBody`] ends a request body that does not arrive in time.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use gateway_policy::EdgeRejections;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use super::edge::{EdgeClock, parse_error_response};

/// A connection's clock, shared by its socket, its requests and its
/// watcher.
#[derive(Debug)]
pub(crate) struct ConnState {
    clock: Mutex<EdgeClock>,
    changed: Notify,
    /// A request was answered before its body was read to the end: the
    /// client may still be sending it, so the close lingers ([`Linger`]).
    body_unread: AtomicBool,
}

impl ConnState {
    pub(crate) fn new(clock: EdgeClock) -> Arc<Self> {
        Arc::new(ConnState {
            clock: Mutex::new(clock),
            changed: Notify::new(),
            body_unread: AtomicBool::new(false),
        })
    }

    /// A request's body was left (partly) unread.
    pub(crate) fn body_left_unread(&self) {
        self.body_unread.store(true, Ordering::Release);
    }

    fn with<T>(&self, f: impl FnOnce(&mut EdgeClock) -> T) -> T {
        f(&mut self.clock.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn read(&self) {
        if self.with(|c| c.on_read(Instant::now())) {
            self.changed.notify_one();
        }
    }

    /// A request head is complete; the request is in flight until the
    /// guard is dropped (with its response body).
    pub(crate) fn request(self: &Arc<Self>) -> InFlight {
        self.with(EdgeClock::on_request);
        self.changed.notify_one();
        InFlight(self.clone())
    }

    /// Whether a request head is being read or awaited (then an expiry is
    /// a header-read timeout).
    pub(crate) fn reading_head(&self) -> bool {
        self.with(|c| c.reading_head())
    }

    /// Resolves when the connection is past its header-read or keep-alive
    /// deadline.
    pub(crate) async fn expired(&self) {
        loop {
            // A change while this runs leaves a permit: never missed.
            let changed = self.changed.notified();
            match self.with(|c| c.deadline()) {
                Some(deadline) => {
                    if self.with(|c| c.expired(Instant::now())) {
                        return;
                    }
                    tokio::select! {
                        () = tokio::time::sleep_until(deadline) => {}
                        () = changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

/// A request in flight (see [`ConnState::request`]).
#[derive(Debug)]
pub(crate) struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.with(|c| c.on_response_end(Instant::now()));
        self.0.changed.notify_one();
    }
}

/// A response body that keeps its request in flight until it is dropped;
/// otherwise the body it wraps, size hint included.
#[derive(Debug)]
pub(crate) struct InFlightBody {
    inner: axum::body::Body,
    _in_flight: InFlight,
}

impl InFlightBody {
    pub(crate) fn new(inner: axum::body::Body, in_flight: InFlight) -> Self {
        InFlightBody {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl Body for InFlightBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A client socket as hyper sees it.
#[derive(Debug)]
pub(crate) struct EdgeIo {
    inner: TcpStream,
    state: Arc<ConnState>,
    max_header_bytes: usize,
    /// Our answer in place of hyper's, and how much of it is written.
    replacement: Option<(Bytes, usize)>,
    /// Counts each replaced answer by its reason.
    rejections: EdgeRejections,
    /// Whether our side of the connection is shut (the answer is out).
    write_shut: bool,
    /// Set once the client was found still sending at the close.
    linger: Option<Linger>,
}

/// The most the close waits for a client that keeps sending.
const LINGER_FOR: std::time::Duration = std::time::Duration::from_secs(5);

/// The close waits this long for more of the client's bytes, and no more.
const LINGER_QUIET: std::time::Duration = std::time::Duration::from_secs(1);

/// A close that waits for the client to stop sending: what it sends is
/// read and dropped until it closes its side, goes quiet for
/// [`LINGER_QUIET`], or [`LINGER_FOR`] passes.
///
/// An answer given before the request body was read (413 for a body over
/// the limit, 401, 404, ...) ends the connection with the body's bytes
/// still arriving; closing a socket with unread bytes sends a reset, which
/// makes the client's write fail and can destroy the answer in its receive
/// buffer before it reads it (the OpenAI SDK then reports a connection
/// error instead of the 413). nginx's `lingering_close` does the same.
#[derive(Debug)]
struct Linger {
    until: Instant,
    quiet: Pin<Box<Sleep>>,
}

impl Linger {
    fn starting(now: Instant) -> Self {
        Linger {
            until: now + LINGER_FOR,
            quiet: Box::pin(tokio::time::sleep_until(now + LINGER_QUIET)),
        }
    }
}

impl EdgeIo {
    pub(crate) fn new(
        inner: TcpStream,
        state: Arc<ConnState>,
        max_header_bytes: usize,
        rejections: EdgeRejections,
    ) -> Self {
        EdgeIo {
            inner,
            state,
            max_header_bytes,
            replacement: None,
            rejections,
            write_shut: false,
            linger: None,
        }
    }

    /// Reads and drops what the client still sends after our side is shut
    /// (see [`Linger`]); ready at once when nothing is waiting to be read
    /// and no request's body was left unread on this connection.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut scratch = [0u8; 8192];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                // The client closed its side, or the socket failed.
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(()),
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(())) => {
                    let now = Instant::now();
                    let linger = self.linger.get_or_insert_with(|| Linger::starting(now));
                    if now >= linger.until {
                        return Poll::Ready(());
                    }
                    let quiet_until = (now + LINGER_QUIET).min(linger.until);
                    linger.quiet.as_mut().reset(quiet_until);
                }
                Poll::Pending => {
                    if self.linger.is_none() && !self.state.body_unread.load(Ordering::Acquire) {
                        // Nothing unread and no body left behind: a close
                        // resets nothing.
                        return Poll::Ready(());
                    }
                    let linger = self
                        .linger
                        .get_or_insert_with(|| Linger::starting(Instant::now()));
                    return linger.quiet.as_mut().poll(cx);
                }
            }
        }
    }

    /// Replaces hyper's answer of `status` with ours, counted once.
    fn replace(&mut self, status: u16) {
        if let Some((answer, reason)) = parse_error_response(status, self.max_header_bytes) {
            self.rejections.count(reason);
            self.replacement = Some((answer, 0));
        }
    }

    /// Writes what is left of the replacement.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if let Some((bytes, written)) = &mut self.replacement {
            while *written < bytes.len() {
                let rest = bytes.slice(*written..);
                let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &rest))?;
                if n == 0 {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                *written += n;
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// The status of `buf` if it is hyper's own answer to an unreadable
/// request head: a response head with an empty body and no content type
/// (every response of the router has one).
fn hyper_parse_error_status(buf: &[u8]) -> Option<u16> {
    let rest = buf.strip_prefix(b"HTTP/1.1 ")?;
    let status = std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok()?;
    if !matches!(status, 400 | 414 | 431) {
        return None;
    }
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = buf.get(..head_end + 2)?.to_ascii_lowercase();
    let has = |needle: &[u8]| head.windows(needle.len()).any(|w| w == needle);
    (has(b"\r\ncontent-length: 0\r\n") && !has(b"\r\ncontent-type:")).then_some(status)
}

impl AsyncRead for EdgeIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.state.read();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for EdgeIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.replacement.is_none() {
            if let Some(status) = hyper_parse_error_status(buf) {
                self.replace(status);
            }
        }
        if self.replacement.is_some() {
            // Hyper's bytes are swallowed: ours go out instead, and the
            // connection ends after them.
            ready!(self.poll_replacement(cx))?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    // Vectored like the socket: without it hyper flattens every response
    // into its own write buffer, which takes up to ~400 KB of a stream a
    // client does not read before the gateway's buffer sees the stall.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.replacement.is_none() {
            let first = bufs.iter().find(|b| !b.is_empty());
            if let Some(status) = first.and_then(|b| hyper_parse_error_status(b)) {
                self.replace(status);
            }
        }
        if self.replacement.is_some() {
            ready!(self.poll_replacement(cx))?;
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_replacement(cx))?;
        if !self.write_shut {
            ready!(Pin::new(&mut self.inner).poll_shutdown(cx))?;
            self.write_shut = true;
        }
        ready!(self.poll_linger(cx));
        Poll::Ready(Ok(()))
    }
}

/// The error of a body that did not arrive within `body_read_timeout`.
#[derive(Debug)]
pub(crate) struct BodyTimeout;

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body did not arrive in time")
    }
}

impl std::error::Error for BodyTimeout {}

/// A request body that fails with [`BodyTimeout`] (and sets its flag) once
/// its deadline passes before its end.
#[derive(Debug)]
pub(crate) struct TimedBody {
    inner: Incoming,
    deadline: Pin<Box<Sleep>>,
    timed_out: Arc<AtomicBool>,
    /// Told when the body is dropped before its end.
    state: Arc<ConnState>,
}

impl TimedBody {
    pub(crate) fn new(
        inner: Incoming,
        deadline: Instant,
        timed_out: Arc<AtomicBool>,
        state: Arc<ConnState>,
    ) -> Self {
        TimedBody {
            inner,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            timed_out,
            state,
        }
    }
}

impl Drop for TimedBody {
    fn drop(&mut self) {
        if !self.inner.is_end_stream() {
            self.state.body_left_unread();
        }
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.timed_out.load(Ordering::Acquire) {
            return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
        }
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.timed_out.store(true, Ordering::Release);
            return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_empty_error_answers_are_replaced() {
        let hyper431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Mon, 07 Dec 2026 08:00:00 GMT\r\n\r\n";
        assert_eq!(hyper_parse_error_status(hyper431), Some(431));
        let hyper400 = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(hyper_parse_error_status(hyper400), Some(400));
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(hyper_parse_error_status(ours), None);
        let with_body =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 10\r\n\r\n";
        assert_eq!(hyper_parse_error_status(with_body), None);
        assert_eq!(
            hyper_parse_error_status(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
            None
        );
        assert_eq!(hyper_parse_error_status(b"data: HTTP/1.1 431"), None);
        assert_eq!(hyper_parse_error_status(b"HTTP/1.1 43"), None);
    }
}
