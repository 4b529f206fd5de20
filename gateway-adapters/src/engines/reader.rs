//! The one read loop of every HTTP engine's streamed answer: the
//! OpenAI-compatible client, SGLang's native `/generate` and Triton's
//! `generate_stream` all read their response body here.
//!
//! The loop owns what every engine shares:
//! - reading the body under the request's cancel and deadline, and the
//!   drain that replaces the close when the client leaves and the adapter
//!   drains ([`Drain`]);
//! - the bounded hand-over of events to the consumer: when nothing can stop
//!   the stream (no cancel, no passed deadline, no drain) and the consumer
//!   has room, the item goes at once; otherwise a permit is reserved inside
//!   `select!` and the item sent outside it, so a stop that wins the race (a
//!   drain starting, say) loses no item;
//! - the phase (before or after the first delta) of every error;
//! - the delivered-token accounting against the cap: a piece that would pass
//!   the cap ends the stream with `Finished(Length)`; the tokens of pieces
//!   without output are carried to the next piece;
//! - the grace after the engine's finish (for the usage and the end
//!   marker), the final events with the reconciliation against the engine's
//!   usage (tokens it reports beyond those counted go out as one last empty
//!   delta, within the cap), and the tail read that returns the connection
//!   to the pool.
//!
//! An engine plugs in [`Frames`]: it turns one decoded server-sent event
//! into deltas, usage, a finish or an error through [`Emit`]. Every engine
//! served over HTTP today streams server-sent events (Triton's
//! `generate_stream` too), so the loop owns the SSE decoder.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use gateway_core::live::Progress;
use gateway_core::{
    BackendError, CancelHandle, CancelReason, Delta, FailureKind, FailurePhase, FinishReason,
    LiveGuard, PackedResult, Started, TokenEvent, TokenResult, TokenStream, Usage,
};
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::upstream::{
    UpstreamBody, UpstreamError, deadline_passed, protocol, total_timeout, transport_error,
};
use crate::openai::{SseDecoder, SseEvent};

/// Events buffered between the connection reader and the consumer.
pub(crate) const EVENT_BUFFER: usize = 64;
/// How long to wait for the end of the stream (the usage, `[DONE]`) once
/// the engine has given its finish; counted from the finish.
const FINISH_GRACE: Duration = Duration::from_secs(2);
/// Most bytes read after the end, to return the connection to the pool.
const TAIL_BYTES: usize = 64 * 1024;
/// Longest wait for the rest of the body after the end.
const TAIL_TIME: Duration = Duration::from_secs(1);

/// Whether the stream goes on after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Keep reading.
    Continue,
    /// The last item is queued: stop reading the engine's work.
    End,
}

/// What an engine's frames report into: the stream's accounting and the
/// events waiting for the consumer.
#[derive(Debug)]
pub(crate) struct Emit {
    /// The delivered tokens against the cap.
    progress: Progress,
    /// Tokens of pieces without output, carried to the next piece.
    pending: u64,
    /// The engine's finish reason, seen: the final events wait for the end
    /// marker, the end of the body or the grace.
    finish: Option<FinishReason>,
    /// The final events go out after the current event (`Some(None)`: the
    /// reason inferred from the cap).
    final_now: Option<Option<FinishReason>>,
    /// A piece would have passed the cap.
    capped: bool,
    /// `Finished` is queued.
    finished: bool,
    /// Packed: a read can bring dozens of events, and the queue keeps its
    /// room.
    out: VecDeque<PackedResult>,
}

impl Emit {
    fn new(cap: u64) -> Self {
        Emit {
            progress: Progress::new(cap),
            pending: 0,
            finish: None,
            final_now: None,
            capped: false,
            finished: false,
            out: VecDeque::new(),
        }
    }

    /// Queues `item`, packed.
    fn push(&mut self, item: TokenResult) {
        self.out.push_back(item.into());
    }

    /// Before the first delta, or after.
    pub(crate) fn phase(&self) -> FailurePhase {
        self.progress.phase()
    }

    /// Whether the engine gave its finish reason (its final events may
    /// still wait).
    pub(crate) fn finish_seen(&self) -> bool {
        self.finish.is_some()
    }

    /// Whether `Finished` is queued: only the end marker may follow.
    pub(crate) fn finished(&self) -> bool {
        self.finished
    }

    /// A piece of output: held (its tokens carried to the next piece) when
    /// there is nothing to show, else queued, unless it would pass the cap
    /// (then the stream ends with `Finished(Length)`).
    pub(crate) fn output(&mut self, mut delta: Delta) -> Flow {
        if !delta.has_output() {
            self.pending = self.pending.saturating_add(u64::from(delta.tokens));
            return Flow::Continue;
        }
        let tokens = u64::from(delta.tokens).saturating_add(std::mem::take(&mut self.pending));
        if !self.progress.deliver(tokens) {
            // The engine went past the cap it was sent: end at the cap.
            self.capped = true;
            return Flow::End;
        }
        delta.tokens = u32::try_from(tokens).unwrap_or(u32::MAX);
        self.push(Ok(TokenEvent::Delta(delta)));
        Flow::Continue
    }

    /// Ends the stream with `error`; once `Finished` is queued nothing may
    /// follow it, so the error is dropped and the stream just ends.
    pub(crate) fn fail(&mut self, error: BackendError) -> Flow {
        if self.finished {
            tracing::debug!(error = %error, "engine error after the finish: dropped");
            return Flow::End;
        }
        self.push(Err(error));
        Flow::End
    }

    /// The engine's finish reason; the final events go out at the end
    /// marker, the end of the body or after the grace (the usage may come
    /// in between).
    pub(crate) fn set_finish(&mut self, reason: FinishReason) {
        self.finish = Some(reason);
    }

    /// The engine is done: the final events go out right after this event,
    /// and only the end marker may follow. `None`: `Length` if the cap was
    /// reached, else `Stop` (an engine without finish reasons).
    pub(crate) fn finish_now(&mut self, reason: Option<FinishReason>) {
        self.final_now = Some(reason);
    }

    /// The end marker (`[DONE]`): the end after the finish, else a
    /// protocol violation.
    pub(crate) fn end_marker(&mut self) -> Flow {
        if self.finished {
            return Flow::End;
        }
        match self.finish {
            Some(reason) => {
                self.final_now = Some(Some(reason));
                Flow::End
            }
            None => self.fail(protocol(
                "the engine sent [DONE] without a finish_reason",
                self.phase(),
            )),
        }
    }
}

/// An engine's part of the loop: its events turned into output.
pub(crate) trait Frames: Send + 'static {
    /// Whether a cleanly ended body is the engine's finish (an engine
    /// without end marker or finish reason: Triton).
    const BODY_END_FINISHES: bool = false;

    /// One event of the body.
    fn on_event(&mut self, event: SseEvent, emit: &mut Emit) -> Flow;

    /// The completion tokens the engine reports, for the reconciliation at
    /// the end.
    fn reported_completion(&self) -> Option<u64> {
        None
    }

    /// Output held back until the end (a split character), flushed with
    /// the final events.
    fn held(&mut self) -> Delta {
        Delta::default()
    }

    /// The usage of the final events, given the tokens delivered.
    fn final_usage(&mut self, delivered: u64) -> Option<Usage>;

    /// The usage sent before `Finished(Length)` when a piece would pass the
    /// cap.
    fn usage_at_cap(&mut self, _delivered: u64) -> Option<Usage> {
        None
    }

    /// The error of a body that failed.
    fn body_error(&self, error: UpstreamError, phase: FailurePhase) -> BackendError {
        transport_error(error, phase)
    }

    /// The reader closes the connection before the engine ended the request
    /// (cancel, deadline, drain timeout).
    fn on_close(&mut self) {}
}

/// Draining a started stream when the client leaves, instead of closing.
#[derive(Debug, Clone)]
pub(crate) struct Drain {
    /// How long the drain may take, from the cancel.
    pub(crate) timeout: Duration,
    /// Fired by `abort(id)`: stops a drain too.
    pub(crate) abort: CancellationToken,
}

/// How a reader is set up.
#[derive(Debug)]
pub(crate) struct Settings {
    /// The completion cap sent to the engine.
    pub(crate) cap: u64,
    /// The request's deadline.
    pub(crate) deadline: Option<Instant>,
    /// The request's cancel.
    pub(crate) cancel: CancelHandle,
    /// Bound on one server-sent event.
    pub(crate) max_event_bytes: usize,
    /// `Some`: a `ClientGone` cancel starts a drain.
    pub(crate) drain: Option<Drain>,
    /// Whether the stream opens with `Started` (else the adapter sent it).
    pub(crate) started: bool,
}

/// Why the reader must stop waiting (or change mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Canceled with this reason: close the connection.
    Cancel(CancelReason),
    /// The request's deadline passed.
    Deadline,
    /// The client left and this backend drains: keep reading.
    StartDrain,
    /// The drain ran out of time: close the connection.
    DrainTimeout,
}

/// Reads one response body into token events.
pub(crate) struct Reader<F> {
    frames: F,
    emit: Emit,
    decoder: SseDecoder,
    deadline: Option<Instant>,
    cancel: CancelHandle,
    drain: Option<Drain>,
    /// While draining: when the drain gives up and closes the connection.
    draining_until: Option<Instant>,
    /// When the grace after the engine's finish ends.
    grace_until: Option<Instant>,
    /// The engine went past the cap: the stream ended at it, and the
    /// connection is closed (the engine's abort), not read to its end.
    past_cap: bool,
}

impl<F: Frames> Reader<F> {
    /// A reader of `frames`' engine.
    pub(crate) fn new(frames: F, settings: Settings) -> Self {
        let mut emit = Emit::new(settings.cap);
        if settings.started {
            emit.push(Ok(TokenEvent::Started(Started::default())));
        }
        Reader {
            frames,
            emit,
            decoder: SseDecoder::new().with_max_event_bytes(settings.max_event_bytes),
            deadline: settings.deadline,
            cancel: settings.cancel,
            drain: settings.drain,
            draining_until: None,
            grace_until: None,
            past_cap: false,
        }
    }

    /// Resolves when the reader must stop or start draining. While
    /// draining only `abort(id)` and the drain timeout stop it (the cancel
    /// stays fired, and the request's deadline no longer applies: nobody
    /// waits for the answer).
    async fn stop(&self, watch_deadline: bool) -> Stop {
        if let (Some(until), Some(drain)) = (self.draining_until, &self.drain) {
            return tokio::select! {
                biased;
                () = drain.abort.cancelled() => Stop::Cancel(CancelReason::Aborted),
                () = tokio::time::sleep_until(until) => Stop::DrainTimeout,
            };
        }
        tokio::select! {
            biased;
            reason = self.cancel.canceled() => {
                if reason == CancelReason::ClientGone
                    && self.drain.as_ref().is_some_and(|d| !d.abort.is_cancelled())
                {
                    Stop::StartDrain
                } else {
                    Stop::Cancel(reason)
                }
            }
            () = deadline_passed(self.deadline), if watch_deadline => Stop::Deadline,
        }
    }

    /// Whether [`stop`](Self::stop) may be ready now: a cancel fired, the
    /// watched deadline passed, or a drain is under way (its own clock).
    /// When false, an item may be handed over without waiting on `stop`.
    fn stop_pending(&self, watch_deadline: bool) -> bool {
        self.draining_until.is_some()
            || self.cancel.is_canceled()
            || (watch_deadline && self.deadline.is_some_and(|d| Instant::now() >= d))
    }

    fn start_drain(&mut self) {
        let timeout = self.drain.as_ref().map_or(Duration::ZERO, |d| d.timeout);
        self.draining_until = Some(Instant::now() + timeout);
        tracing::debug!(
            timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            "client gone: draining the engine's stream"
        );
    }

    /// The error a stop ends the stream with.
    fn stop_error(&self, stop: Stop) -> BackendError {
        let phase = self.emit.phase();
        match stop {
            Stop::Cancel(reason) => BackendError::canceled(reason).with_phase(phase),
            Stop::Deadline => total_timeout(phase),
            Stop::DrainTimeout | Stop::StartDrain => BackendError::new(
                FailureKind::Canceled,
                format!(
                    "client_gone: drained {} completion tokens, then the drain timeout ({} ms) closed the connection",
                    self.emit.progress.delivered(),
                    self.drain.as_ref().map_or(0, |d| d.timeout.as_millis())
                ),
            )
            .with_phase(phase),
        }
    }

    /// Reads `body` to its end (or a stop), handing the events to `tx`;
    /// `live` (the attempt's registration) leaves the registry once the
    /// engine's part is over: ended when the engine ended it, dropped (an
    /// abort) when the reader closed the connection. Returns the body when
    /// the stream ended and the rest of it (normally just the end of the
    /// chunked body) should be read so the connection goes back to the
    /// pool ([`stream`] does).
    pub(crate) async fn run(
        mut self,
        mut body: UpstreamBody,
        tx: mpsc::Sender<PackedResult>,
        live: LiveGuard,
    ) -> Option<UpstreamBody> {
        let mut live = Some(live);
        let mut flow = Flow::Continue;
        loop {
            if flow == Flow::End {
                // The engine's part is over: free the connection's slot first.
                if let Some(live) = live.take() {
                    live.end();
                }
            }
            // Hand over what is ready, still watching for a stop. A permit
            // first, then the item: a stop that wins the race loses no item.
            while let Some(item) = self.emit.out.pop_front() {
                let watch_deadline = flow == Flow::Continue && !self.emit.finished;
                // The common case: nothing to stop for and room in the
                // consumer's buffer. No futures to build, no `select!`.
                if !self.stop_pending(watch_deadline)
                    && let Ok(permit) = tx.try_reserve()
                {
                    permit.send(item);
                    continue;
                }
                let sent = tokio::select! {
                    biased;
                    stop = self.stop(watch_deadline) => Err(Some(stop)),
                    permit = tx.reserve() => permit.map_err(|_| None),
                };
                let stop = match sent {
                    Ok(permit) => {
                        permit.send(item);
                        continue;
                    }
                    Err(Some(Stop::StartDrain)) => {
                        self.start_drain();
                        self.emit.out.push_front(item);
                        continue;
                    }
                    Err(Some(stop)) => Some(stop),
                    // The consumer dropped the stream: close, even a drain.
                    Err(None) => None,
                };
                if flow == Flow::End {
                    // The engine's part is over: nothing left to close.
                    return None;
                }
                drop(body);
                self.frames.on_close();
                drop(live.take());
                let stop = stop?;
                if tx.is_closed() {
                    return None;
                }
                let _ = tx.send(Err(self.stop_error(stop)).into()).await;
                return None;
            }
            if flow == Flow::End {
                drop(tx);
                if self.past_cap {
                    // An engine that ignores its cap would stream on.
                    drop(body);
                    self.frames.on_close();
                    return None;
                }
                return Some(body);
            }
            if self.grace_until.is_none() && (self.emit.finish.is_some() || self.emit.finished) {
                self.grace_until = Some(Instant::now() + FINISH_GRACE);
            }
            let grace = self.grace_until;
            let finished = self.emit.finished;
            let frame = tokio::select! {
                biased;
                stop = self.stop(!finished) => {
                    if stop == Stop::StartDrain {
                        self.start_drain();
                        continue;
                    }
                    drop(body);
                    if finished {
                        // `Finished` is out; only the end marker was awaited.
                        return None;
                    }
                    self.frames.on_close();
                    drop(live.take());
                    let _ = tx.send(Err(self.stop_error(stop)).into()).await;
                    return None;
                }
                // Nobody reads (a drain whose stream was dropped): close.
                () = tx.closed(), if !finished => return None,
                () = deadline_passed(grace) => {
                    flow = self.grace_over();
                    continue;
                }
                frame = body.frame() => frame,
            };
            flow = match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        self.decoder.push(&data);
                        self.drain_events()
                    }
                    Err(_) => Flow::Continue,
                },
                Some(Err(e)) => {
                    if !self.emit.finished {
                        let error = self.frames.body_error(e, self.emit.phase());
                        self.emit.push(Err(error));
                    }
                    Flow::End
                }
                None => {
                    self.decoder.finish();
                    match self.drain_events() {
                        Flow::End => Flow::End,
                        Flow::Continue => self.body_end(),
                    }
                }
            };
        }
    }

    /// Every complete event the decoder holds, through the engine's frames.
    fn drain_events(&mut self) -> Flow {
        while let Some(event) = self.decoder.next_event() {
            let flow = match event {
                Ok(event) => self.frames.on_event(event, &mut self.emit),
                Err(e) => self.emit.fail(protocol(
                    format!("undecodable event from the engine: {e}"),
                    self.emit.phase(),
                )),
            };
            if self.emit.capped {
                self.at_cap();
                return Flow::End;
            }
            if let Some(reason) = self.emit.final_now.take() {
                self.final_events(reason);
            }
            if flow == Flow::End {
                return Flow::End;
            }
        }
        Flow::Continue
    }

    /// A piece would have passed the cap: the stream ends at it.
    fn at_cap(&mut self) {
        self.emit.capped = false;
        self.past_cap = true;
        if let Some(usage) = self.frames.usage_at_cap(self.emit.progress.delivered()) {
            self.emit.push(Ok(TokenEvent::Usage(usage)));
        }
        self.emit
            .push(Ok(TokenEvent::Finished(FinishReason::Length)));
        self.emit.finished = true;
    }

    /// The end: what was held back, the tokens not yet counted, the usage,
    /// `Finished`.
    fn final_events(&mut self, reason: Option<FinishReason>) {
        // Pieces count one token each unless the engine says otherwise, but
        // an engine can put several tokens in one piece (vLLM does with
        // speculative decoding: accepted drafts arrive together). The
        // engine's own count is the truth: the tokens not yet counted go out
        // as a last empty delta, so what the client takes (and is charged
        // for) equals what the engine produced, within the cap.
        let emit = &mut self.emit;
        let reported = self
            .frames
            .reported_completion()
            .map_or(0, |n| n.min(emit.progress.cap()));
        let uncounted = reported.saturating_sub(emit.progress.delivered());
        let tokens = std::mem::take(&mut emit.pending)
            .max(uncounted)
            .min(emit.progress.room());
        let mut delta = self.frames.held();
        // Within the room: always counted.
        if (tokens > 0 || delta.has_output()) && emit.progress.deliver(tokens) {
            delta.tokens = u32::try_from(tokens).unwrap_or(u32::MAX);
            emit.push(Ok(TokenEvent::Delta(delta)));
        }
        if let Some(usage) = self.frames.final_usage(emit.progress.delivered()) {
            emit.push(Ok(TokenEvent::Usage(usage)));
        }
        let reason = reason.unwrap_or(if emit.progress.at_cap() {
            FinishReason::Length
        } else {
            FinishReason::Stop
        });
        emit.push(Ok(TokenEvent::Finished(reason)));
        emit.finished = true;
    }

    /// The body ended cleanly.
    fn body_end(&mut self) -> Flow {
        if self.emit.finished {
            return Flow::End;
        }
        if let Some(reason) = self.emit.finish {
            self.final_events(Some(reason));
        } else if F::BODY_END_FINISHES && !self.decoder.has_partial() {
            self.final_events(None);
        } else {
            let why = if self.decoder.has_partial() {
                "the engine's stream was cut inside an event"
            } else {
                "the engine's stream ended without a finish_reason"
            };
            self.emit.fail(protocol(why, self.emit.phase()));
        }
        Flow::End
    }

    /// The engine went quiet after its finish: end with what is known.
    fn grace_over(&mut self) -> Flow {
        if !self.emit.finished
            && let Some(reason) = self.emit.finish
        {
            self.final_events(Some(reason));
        }
        Flow::End
    }
}

/// How a body given to [`read_chunks`] ends.
#[cfg(feature = "fuzzing")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyEnd {
    /// The body ends cleanly after the last chunk.
    Clean,
    /// The engine goes quiet after the last chunk: the grace after its
    /// finish runs out (a clean end if it gave no finish, as in
    /// [`Reader::run`], where the grace only starts at the finish).
    Quiet,
}

/// For the fuzz targets: the synchronous part of [`Reader::run`] over
/// `chunks` (each one transport read), without I/O, cancel or clock. Returns
/// the events in order and the most bytes the SSE decoder held after any
/// read.
#[cfg(feature = "fuzzing")]
pub(crate) fn read_chunks<F: Frames>(
    frames: F,
    cap: u64,
    max_event_bytes: usize,
    chunks: &[&[u8]],
    end: BodyEnd,
) -> (Vec<gateway_core::TokenResult>, usize) {
    let mut reader = Reader::new(
        frames,
        Settings {
            cap,
            deadline: None,
            cancel: CancelHandle::new(),
            max_event_bytes,
            drain: None,
            started: true,
        },
    );
    let mut events = Vec::new();
    let mut held = 0;
    let mut flow = Flow::Continue;
    for chunk in chunks {
        reader.decoder.push(chunk);
        flow = reader.drain_events();
        held = held.max(reader.decoder.buffered());
        events.extend(reader.emit.out.drain(..).map(PackedResult::unpack));
        if flow == Flow::End {
            break;
        }
    }
    if flow == Flow::Continue {
        if end == BodyEnd::Quiet && reader.emit.finish_seen() {
            reader.grace_over();
        } else {
            reader.decoder.finish();
            if reader.drain_events() == Flow::Continue {
                reader.body_end();
            }
            held = held.max(reader.decoder.buffered());
        }
    }
    events.extend(reader.emit.out.drain(..).map(PackedResult::unpack));
    (events, held)
}

/// The events of a reader as a [`TokenStream`] driven by `read` (a
/// [`Reader::run`], maybe behind the wait for the response head) in the
/// consumer's polls: no task of its own, no wake-up between reading the
/// connection and taking the events. Dropping the stream closes the
/// connection (the engine's abort) and fires `cancel`; a stream dropped
/// after its end while the rest of the body is still on its way leaves that
/// read to a task, so the connection still goes back to the pool.
pub(crate) fn stream(
    read: impl Future<Output = Option<UpstreamBody>> + Send + 'static,
    mut rx: mpsc::Receiver<PackedResult>,
    cancel: CancelHandle,
) -> TokenStream {
    let driver = Driver(Phase::Reading(Box::pin(read)));
    let items = futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|item| item.map(PackedResult::unpack))
    });
    TokenStream::driven(items, driver).cancel_on_drop(cancel)
}

/// A reader run as a stream's driver: the read loop, then the tail.
struct Driver(Phase);

enum Phase {
    Reading(Pin<Box<dyn Future<Output = Option<UpstreamBody>> + Send>>),
    Tail(Pin<Box<dyn Future<Output = ()> + Send>>),
    Done,
}

impl Future for Driver {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let phase = &mut self.0;
        loop {
            match phase {
                Phase::Reading(read) => match ready!(read.as_mut().poll(cx)) {
                    Some(body) => *phase = Phase::Tail(Box::pin(tail(body))),
                    None => *phase = Phase::Done,
                },
                Phase::Tail(tail) => {
                    ready!(tail.as_mut().poll(cx));
                    *phase = Phase::Done;
                }
                Phase::Done => return Poll::Ready(()),
            }
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Phase::Tail(tail) = std::mem::replace(&mut self.0, Phase::Done)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(tail);
        }
    }
}

/// Reads the rest of `body` (normally just the end of the chunked body),
/// bounded in bytes and time, so the connection can go back to the pool.
async fn tail(mut body: UpstreamBody) {
    let _ = tokio::time::timeout(TAIL_TIME, async {
        let mut left = TAIL_BYTES;
        while let Some(Ok(frame)) = body.frame().await {
            left = left.saturating_sub(frame.data_ref().map_or(0, Bytes::len));
            if left == 0 {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_core::TokenResult;

    /// Frames of a toy wire: `data: <text>|<tokens>`, `data: finish`,
    /// `data: usage <n>`, `data: [DONE]`; `held` text flushed at the end.
    #[derive(Default)]
    struct Toy {
        usage: Option<u64>,
        held: String,
        usage_at_cap: bool,
    }

    impl Frames for Toy {
        fn on_event(&mut self, event: SseEvent, emit: &mut Emit) -> Flow {
            if event.is_done() {
                return emit.end_marker();
            }
            if event.data == "finish" {
                emit.set_finish(FinishReason::Stop);
                return Flow::Continue;
            }
            if let Some(n) = event.data.strip_prefix("usage ") {
                self.usage = n.parse().ok();
                return Flow::Continue;
            }
            let (text, tokens) = event.data.split_once('|').unwrap_or((&event.data, "1"));
            emit.output(Delta::text(text, tokens.parse().unwrap_or(1)))
        }

        fn reported_completion(&self) -> Option<u64> {
            self.usage
        }

        fn held(&mut self) -> Delta {
            Delta::text(std::mem::take(&mut self.held), 0)
        }

        fn final_usage(&mut self, delivered: u64) -> Option<Usage> {
            self.usage.map(|_| Usage::new(1, delivered))
        }

        fn usage_at_cap(&mut self, delivered: u64) -> Option<Usage> {
            self.usage_at_cap.then(|| Usage::new(1, delivered))
        }
    }

    struct BodyEnds;

    impl Frames for BodyEnds {
        const BODY_END_FINISHES: bool = true;

        fn on_event(&mut self, event: SseEvent, emit: &mut Emit) -> Flow {
            emit.output(Delta::text(event.data, 1))
        }

        fn final_usage(&mut self, _delivered: u64) -> Option<Usage> {
            None
        }
    }

    fn reader<F: Frames>(frames: F, cap: u64) -> Reader<F> {
        Reader::new(
            frames,
            Settings {
                cap,
                deadline: None,
                cancel: CancelHandle::new(),
                max_event_bytes: 1024,
                drain: None,
                started: false,
            },
        )
    }

    /// Feeds `wire` then ends the body; the events queued.
    fn read<F: Frames>(reader: &mut Reader<F>, wire: &str) -> Vec<TokenResult> {
        reader.decoder.push(wire.as_bytes());
        if reader.drain_events() == Flow::Continue {
            reader.decoder.finish();
            if reader.drain_events() == Flow::Continue {
                reader.body_end();
            }
        }
        reader
            .emit
            .out
            .drain(..)
            .map(PackedResult::unpack)
            .collect()
    }

    fn events(items: &[TokenResult]) -> Vec<String> {
        items
            .iter()
            .map(|item| match item {
                Ok(TokenEvent::Delta(d)) => format!("delta {:?} {}", d.text, d.tokens),
                Ok(TokenEvent::Usage(u)) => format!("usage {}", u.completion()),
                Ok(TokenEvent::Finished(r)) => format!("finished {r:?}"),
                Ok(TokenEvent::Started(_)) => "started".to_owned(),
                Err(e) => format!("error {:?} {:?} {}", e.kind(), e.phase(), e.message()),
            })
            .collect()
    }

    /// A stream dropped right after its `Finished`, while the end of the
    /// engine's chunked body is still on its way: the tail read goes on
    /// in a task and the connection returns to the pool.
    #[tokio::test]
    async fn a_stream_dropped_at_its_end_still_returns_the_connection() {
        use futures::StreamExt;
        use gateway_core::http::{Method, Request};
        use gateway_core::{LiveRequests, RequestId};
        use http_body_util::Full;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (step, mut steps) = mpsc::channel::<Vec<u8>>(4);
        tokio::spawn(async move {
            let (mut io, _) = listener.accept().await.unwrap();
            let mut buf = [0; 4096];
            let _ = io.read(&mut buf).await.unwrap();
            while let Some(bytes) = steps.recv().await {
                io.write_all(&bytes).await.unwrap();
            }
            // Held open: the pooled connection stays usable.
            std::future::pending::<()>().await;
        });
        let client =
            super::super::http1::Client::new(4, Duration::from_secs(30), Duration::from_secs(2));
        step.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec())
            .await
            .unwrap();
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{addr}/x"))
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let body = client.request(request).await.unwrap().into_body();
        let wire = "data: a\n\ndata: finish\n\ndata: [DONE]\n\n";
        let chunk = format!("{:x}\r\n{wire}\r\n", wire.len());
        step.send(chunk.into_bytes()).await.unwrap();
        let live = LiveRequests::new(4);
        let cancel = CancelHandle::new();
        let guard = live.register(&RequestId::from("r"), &cancel).unwrap();
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let read = reader(Toy::default(), 8).run(UpstreamBody::Plain(body), tx, guard);
        let mut stream = stream(read, rx, cancel.clone());
        let mut names = Vec::new();
        while let Some(item) = stream.next().await {
            let event = item.unwrap();
            let end = matches!(event, TokenEvent::Finished(_));
            names.push(event.name());
            if end {
                break;
            }
        }
        assert_eq!(names, ["Delta", "Finished"]);
        assert_eq!(client.idle(), 0, "the body's end has not come yet");
        drop(stream);
        assert!(
            !cancel.is_canceled(),
            "a stream dropped at its end cancels nothing"
        );
        step.send(b"0\r\n\r\n".to_vec()).await.unwrap();
        let until = Instant::now() + Duration::from_secs(2);
        while client.idle() == 0 {
            assert!(
                Instant::now() < until,
                "the connection never returned to the pool"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(live.inflight(), 0);
    }

    #[test]
    fn tokens_of_empty_pieces_go_with_the_next_piece_and_the_cap_ends_the_stream() {
        let mut r = reader(Toy::default(), 4);
        let out = read(&mut r, "data: a\n\ndata: |1\n\ndata: b\n\ndata: c|2\n\n");
        assert_eq!(
            events(&out),
            ["delta \"a\" 1", "delta \"b\" 2", "finished Length"]
        );
        // With the usage an engine gives at the cap.
        let toy = Toy {
            usage_at_cap: true,
            ..Toy::default()
        };
        let mut r = reader(toy, 1);
        let out = read(&mut r, "data: a\n\ndata: b\n\n");
        assert_eq!(
            events(&out),
            ["delta \"a\" 1", "usage 1", "finished Length"]
        );
    }

    #[test]
    fn the_engines_usage_is_reconciled_within_the_cap_at_the_end() {
        // Two pieces counted, the engine reports five tokens.
        let mut r = reader(Toy::default(), 10);
        let out = read(
            &mut r,
            "data: a\n\ndata: b\n\ndata: finish\n\ndata: usage 5\n\ndata: [DONE]\n\n",
        );
        assert_eq!(
            events(&out),
            [
                "delta \"a\" 1",
                "delta \"b\" 1",
                "delta \"\" 3",
                "usage 5",
                "finished Stop"
            ]
        );
        // Reported beyond the cap: only up to the cap.
        let mut r = reader(Toy::default(), 3);
        let out = read(
            &mut r,
            "data: a\n\ndata: finish\n\ndata: usage 9\n\ndata: [DONE]\n\n",
        );
        assert_eq!(
            events(&out),
            ["delta \"a\" 1", "delta \"\" 2", "usage 3", "finished Stop"]
        );
        // Pending tokens at the end: within the cap too; held text flushed.
        let toy = Toy {
            held: "\u{FFFD}".to_owned(),
            ..Toy::default()
        };
        let mut r = reader(toy, 2);
        let out = read(&mut r, "data: a\n\ndata: |4\n\ndata: finish\n\n");
        assert_eq!(
            events(&out),
            ["delta \"a\" 1", "delta \"\u{FFFD}\" 1", "finished Stop"]
        );
    }

    /// Frames that end the stream at `data: end` (as SGLang's final event
    /// does) and then wait for `[DONE]`.
    struct EndsEarly;

    impl Frames for EndsEarly {
        fn on_event(&mut self, event: SseEvent, emit: &mut Emit) -> Flow {
            if event.is_done() {
                return emit.end_marker();
            }
            if event.data == "end" {
                emit.finish_now(Some(FinishReason::Stop));
                return Flow::Continue;
            }
            emit.output(Delta::text(event.data, 1))
        }

        fn final_usage(&mut self, _delivered: u64) -> Option<Usage> {
            None
        }
    }

    /// Found by the `engine_sglang` fuzz target: an undecodable event (bad
    /// UTF-8, or too large) after the final event put an error after
    /// `Finished`, which the stream contract forbids.
    #[test]
    fn nothing_follows_finished_even_an_undecodable_event() {
        for wire in [
            &b"data: a\n\ndata: end\n\ndata: \xff\n\ndata: [DONE]\n\n"[..],
            &b"data: a\n\ndata: end\n\ndata: 0123456789012345678901234567890123456789\n\n"[..],
        ] {
            let mut r = reader(EndsEarly, 10);
            r.decoder = SseDecoder::new().with_max_event_bytes(32);
            r.decoder.push(wire);
            assert_eq!(r.drain_events(), Flow::End);
            let out: Vec<TokenResult> = r.emit.out.drain(..).map(PackedResult::unpack).collect();
            assert_eq!(events(&out), ["delta \"a\" 1", "finished Stop"]);
        }
    }

    #[test]
    fn ends_without_a_finish_are_protocol_violations_in_their_phase() {
        let mut r = reader(Toy::default(), 10);
        let out = read(&mut r, "data: [DONE]\n\n");
        assert_eq!(
            events(&out),
            [
                "error ProtocolViolation BeforeFirstToken the engine sent [DONE] without a finish_reason"
            ]
        );
        let mut r = reader(Toy::default(), 10);
        let out = read(&mut r, "data: a\n\n");
        assert_eq!(
            events(&out),
            [
                "delta \"a\" 1",
                "error ProtocolViolation AfterFirstToken the engine's stream ended without a finish_reason"
            ]
        );
        // An engine whose clean body end is the finish: inferred by the cap.
        let mut r = reader(BodyEnds, 2);
        assert_eq!(
            events(&read(&mut r, "data: a\n\n")),
            ["delta \"a\" 1", "finished Stop"]
        );
        let mut r = reader(BodyEnds, 2);
        assert_eq!(
            events(&read(&mut r, "data: a\n\ndata: b\n\n")),
            ["delta \"a\" 1", "delta \"b\" 1", "finished Length"]
        );
    }
}
