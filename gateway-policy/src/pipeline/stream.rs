//! The response stream: a pump task reads the backend into a bounded
//! buffer; [`GatewayStream`] hands events to the client and counts what it
//! took; the pump settles the budget exactly once when everything is over.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use gateway_core::{
    BackendError, BudgetGuard, CancelHandle, CancelReason, EnginePhase, FailureKind, FailurePhase,
    PackedResult, RequestId, Started, TokenCount, TokenEvent, TokenResult, TokenStream, Usage,
    UsageMeter,
};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::WaitForCancellationFutureOwned;
use tracing::Instrument;

use super::attempt::{self as attempts, Admitted, Head, Served, Stop, Timing};
use super::cap::{Admit, OutputCap};
use super::continuation::{ContinueJob, Resume};
use super::{ActiveGuard, Gateway};
use crate::limits::LimitPermit;
use crate::metrics::ContinuationLabels;
use crate::metrics::{AbortLabels, BackendLabels, DrainLabels, Metrics, ModelLabels};
use crate::pool::InflightGuard;
use crate::route::{Observation, RoutePolicy, Slo};
use crate::{ModelSpec, Tenant};

/// A successful first attempt, handed over to streaming.
pub(super) struct Attempted {
    pub(super) admitted: Admitted,
    pub(super) head: Head,
    pub(super) inflight: InflightGuard,
    pub(super) attempt_cancel: CancelHandle,
}

/// What the client side tells the pump.
#[derive(Debug, Default)]
struct Client {
    /// The client took a `Delta` or `Finished`: the response began.
    began: AtomicBool,
    /// The client took the last item (`Finished` or an error).
    took_end: AtomicBool,
    /// The last item it took was an error.
    took_error: AtomicBool,
    /// The client took an item.
    progress: Notify,
}

/// Starts the pump for a request whose first token arrived.
pub(super) fn start(
    gateway: &Gateway,
    attempted: Attempted,
    cancel: CancelHandle,
) -> GatewayStream {
    let inner = &gateway.inner;
    let capacity = inner.settings.stream_buffer_events.get();
    let (tx, rx) = mpsc::channel(capacity);
    let client = Arc::new(Client::default());
    let Attempted {
        admitted,
        head,
        inflight,
        attempt_cancel,
    } = attempted;
    let backend = inflight.slot().name.clone();
    let drain = inflight.slot().backend.drain_on_client_gone();
    let cap = u64::from(admitted.request.max_tokens);
    let request_id = admitted.request.id.clone();
    let model = admitted.model.name.clone();
    let meter = admitted.meter.clone();
    let output_cap = OutputCap::new(cap, admitted.model.counter.clone());
    let latency = head.timing.map(|timing| LatencyWatch {
        router: inner.router.clone(),
        index: inner
            .pool
            .iter()
            .position(|s| Arc::ptr_eq(s, inflight.slot())),
        timing,
        last: timing.first,
        slo: admitted.slo,
        class: admitted.request.latency_class,
        arrived: admitted.arrived,
    });
    let resume = Resume::new(
        gateway,
        &admitted.model,
        admitted.tenant.clone(),
        admitted.request.clone(),
        admitted.prompt_ids.clone(),
    )
    .map(Box::new);
    let settlement = Settlement {
        latency,
        guard: Some(admitted.guard),
        meter: admitted.meter,
        client: client.clone(),
        started: Started::default(),
        engine: None,
        received: 0,
        drained: false,
        capped: false,
        cap,
        tenant: admitted.tenant,
        model: admitted.model,
        backend: backend.clone(),
        estimate: admitted.estimate,
        arrived: admitted.arrived,
        metrics: inner.metrics.clone(),
        _permit: admitted.permit,
        inflight,
        _active: admitted.active,
        span: admitted.span,
        finish: None,
        drift_warn_ratio: inner.settings.drift_warn_ratio,
        continued_prompt: None,
    };
    let pump = Pump {
        stream: head.stream,
        head: head.events,
        order: head.order,
        output_cap,
        tx,
        client: client.clone(),
        settlement,
        canceled: Box::pin(cancel.token().clone().cancelled_owned()),
        cancel: cancel.clone(),
        attempt: attempt_cancel,
        idle: inner.settings.idle_timeout,
        stall: inner.settings.client_stall_timeout,
        abort_wait: inner.settings.abort_wait,
        drain,
        shutdown: inner.shutdown.clone(),
        resume,
    };
    let span = pump.settlement.span.clone();
    tokio::spawn(pump.run().instrument(span));
    GatewayStream {
        rx,
        client,
        meter,
        cancel,
        backend,
        model,
        request_id,
        ended: false,
    }
}

/// The events of one request, from `Started` on, as the client should see
/// them: `Delta`*, `Usage`?, `Finished`, or an error item after which
/// nothing follows.
///
/// Taking an item counts it as delivered. Dropping the stream before its
/// end cancels the request: the engine is aborted and the tenant charged
/// for what was taken.
pub struct GatewayStream {
    rx: mpsc::Receiver<PackedResult>,
    client: Arc<Client>,
    meter: UsageMeter,
    cancel: CancelHandle,
    backend: String,
    model: String,
    request_id: RequestId,
    ended: bool,
}

impl std::fmt::Debug for GatewayStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayStream")
            .field("request_id", &self.request_id)
            .field("backend", &self.backend)
            .field("delivered", &self.meter.delivered())
            .field("ended", &self.ended)
            .finish()
    }
}

impl GatewayStream {
    /// The backend that began serving the request (a stream that went on
    /// on another backend after a failure keeps this name; the request's
    /// span and logs name the one that finished it).
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// The model serving the request: the one asked for, or the fallback
    /// it moved to before its first token.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Completion tokens taken so far.
    pub fn delivered(&self) -> u64 {
        self.meter.delivered()
    }

    /// The request's id, for [`Gateway::settled`].
    pub fn request_id(&self) -> &RequestId {
        &self.request_id
    }
}

impl Stream for GatewayStream {
    type Item = TokenResult;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<TokenResult>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let item = match self.rx.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                self.ended = true;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(item)) => item.unpack(),
        };
        match &item {
            Ok(TokenEvent::Delta(d)) => {
                self.meter.add_delivered(u64::from(d.tokens));
                self.client.began.store(true, Ordering::Release);
            }
            Ok(TokenEvent::Finished(_)) => {
                self.client.began.store(true, Ordering::Release);
                self.client.took_end.store(true, Ordering::Release);
                self.ended = true;
            }
            Err(_) => {
                self.client.took_error.store(true, Ordering::Release);
                self.client.took_end.store(true, Ordering::Release);
                self.ended = true;
            }
            Ok(_) => {}
        }
        self.client.progress.notify_one();
        Poll::Ready(Some(item))
    }
}

impl Drop for GatewayStream {
    fn drop(&mut self) {
        if !self.ended {
            self.cancel.cancel(CancelReason::ClientGone);
        }
    }
}

/// How the pump's forwarding ended.
enum End {
    /// The backend finished and `Finished` is in the buffer.
    Finished,
    /// The backend failed (the error is in the buffer); abort it if `abort`.
    Failed { abort: bool },
    /// The request was canceled.
    Canceled(CancelReason),
    /// The client stopped reading.
    Stalled,
    /// The gateway's cap was reached: `Finished(Length)` is in the buffer
    /// and the engine must be aborted.
    Capped,
}

/// What relaying one event did.
enum Relayed {
    /// More may follow.
    More,
    /// It was `Finished`.
    Finished,
    /// The cap was reached: `Usage` and `Finished(Length)` were relayed.
    Capped,
}

/// Why a relay to the client failed.
enum Blocked {
    Canceled(CancelReason),
    Stalled,
    ClientGone,
}

impl From<Blocked> for End {
    fn from(b: Blocked) -> End {
        match b {
            Blocked::Canceled(reason) => End::Canceled(reason),
            Blocked::Stalled => End::Stalled,
            Blocked::ClientGone => End::Canceled(CancelReason::ClientGone),
        }
    }
}

struct Pump {
    stream: TokenStream,
    head: Vec<TokenEvent>,
    order: gateway_core::EventOrder,
    /// The gateway's own count of the output against `max_tokens`.
    output_cap: OutputCap,
    tx: mpsc::Sender<PackedResult>,
    client: Arc<Client>,
    settlement: Settlement,
    cancel: CancelHandle,
    /// `cancel`, as one future registered once for the stream's life.
    canceled: Pin<Box<WaitForCancellationFutureOwned>>,
    attempt: CancelHandle,
    idle: Duration,
    stall: Duration,
    abort_wait: Duration,
    /// `Some(timeout)`: the backend drains when the client leaves.
    drain: Option<Duration>,
    /// The gateway's shutdown handle: it ends a drain.
    shutdown: CancelHandle,
    /// The continuation state, when the model's streams may continue.
    resume: Option<Box<Resume>>,
}

/// What trying to continue a failed stream did.
enum Continued {
    /// Another backend took over: its first events (after `Started`).
    Yes(Vec<TokenEvent>),
    /// The request was canceled meanwhile.
    Canceled(CancelReason),
    /// No continuation: the failure ends the stream.
    No,
}

impl Pump {
    async fn run(mut self) {
        let end = self.forward().await;
        let abort = match end {
            End::Finished => {
                self.await_client().await;
                None
            }
            End::Failed { abort } => {
                self.await_client().await;
                abort.then_some(CancelReason::Timeout)
            }
            End::Capped if self.output_cap.engine_within_cap() => {
                // Cut by the gateway's count of the text while the engine,
                // by its own, is within the cap it was asked for: it stops
                // there by itself. The client's stream ends now; the
                // engine's rest is read and dropped, which keeps the
                // connection for the next request.
                self.await_client().await;
                let (closed, _) = mpsc::channel(1);
                drop(std::mem::replace(&mut self.tx, closed));
                self.run_out_upstream().await;
                None
            }
            End::Capped => {
                // The engine went past the cap: stop it at once, then let
                // the client take the end.
                self.abort_upstream(CancelReason::Budget).await;
                self.await_client().await;
                None
            }
            End::Canceled(reason) => {
                // Tell a client that is still there why the stream ends.
                if reason != CancelReason::ClientGone {
                    let err = BackendError::canceled(reason).with_phase(self.phase());
                    let _ = self.tx.try_send(Err(err).into());
                }
                Some(reason)
            }
            End::Stalled => {
                self.settlement
                    .metrics
                    .client_stalls
                    .get_or_create(&BackendLabels {
                        backend: self.settlement.backend.clone(),
                    })
                    .inc();
                self.cancel.cancel(CancelReason::ClientGone);
                Some(CancelReason::ClientGone)
            }
        };
        match (abort, self.drain) {
            (Some(CancelReason::ClientGone), Some(timeout)) => self.drain_upstream(timeout).await,
            (Some(reason), _) => self.abort_upstream(reason).await,
            (None, _) => {}
        }
        // `self.settlement` drops here: the one place the budget settles.
    }

    /// Why the request was canceled (once `canceled` fired).
    fn reason(&self) -> CancelReason {
        self.cancel.reason().unwrap_or(CancelReason::ClientGone)
    }

    fn phase(&self) -> FailurePhase {
        if self.settlement.received > 0 {
            FailurePhase::AfterFirstToken
        } else {
            FailurePhase::BeforeFirstToken
        }
    }

    async fn forward(&mut self) -> End {
        let head = std::mem::take(&mut self.head);
        for event in head {
            match self.relay_event(event).await {
                Ok(Relayed::More) => {}
                Ok(Relayed::Finished) => return End::Finished,
                Ok(Relayed::Capped) => return End::Capped,
                Err(blocked) => return blocked.into(),
            }
        }
        // One timer for the whole stream: each event only moves the idle
        // deadline (a clock read); the timer is re-armed when it fires early.
        let mut idle_at = Instant::now() + self.idle;
        let idle_timer = tokio::time::sleep_until(idle_at);
        tokio::pin!(idle_timer);
        loop {
            let next = tokio::select! {
                biased;
                () = &mut self.canceled => return End::Canceled(self.reason()),
                next = self.stream.next() => Some(next),
                () = &mut idle_timer => {
                    if Instant::now() < idle_at {
                        idle_timer.as_mut().reset(idle_at);
                        continue;
                    }
                    None
                }
            };
            idle_at = Instant::now() + self.idle;
            let failure = match next {
                None => {
                    BackendError::new(FailureKind::IdleTimeout, "no token within the idle timeout")
                }
                Some(None) => BackendError::new(
                    FailureKind::ProtocolViolation,
                    "stream ended without Finished",
                ),
                Some(Some(Err(err))) => err,
                Some(Some(Ok(event))) => match self.order.observe(&event) {
                    Err(v) => BackendError::new(
                        FailureKind::ProtocolViolation,
                        format!("backend broke the event order: {v}"),
                    ),
                    Ok(()) => match self.relay_event(event).await {
                        Ok(Relayed::More) => continue,
                        Ok(Relayed::Finished) => return End::Finished,
                        Ok(Relayed::Capped) => return End::Capped,
                        Err(blocked) => return blocked.into(),
                    },
                },
            };
            // The engine's stream is over or must be: report once, in its phase.
            let abort = matches!(
                failure.kind(),
                FailureKind::IdleTimeout | FailureKind::ProtocolViolation
            );
            let kind = failure.kind();
            self.settlement
                .metrics
                .failure(&self.settlement.backend, kind.as_str());
            tracing::warn!(
                parent: &self.settlement.span,
                backend = %self.settlement.backend,
                kind = kind.as_str(),
                blame = failure.blame().as_str(),
                upstream_status = ?failure.upstream_status(),
                error = %failure,
                "stream failed after its first token"
            );
            let inflight = &self.settlement.inflight;
            inflight
                .slot()
                .record_failure(&failure, inflight.acquired());
            let failure = failure.with_phase(self.phase());
            if failure.is_continuable() {
                match self.continue_stream(&failure).await {
                    Continued::Yes(events) => {
                        for event in events {
                            match self.relay_event(event).await {
                                Ok(Relayed::More) => {}
                                Ok(Relayed::Finished) => return End::Finished,
                                Ok(Relayed::Capped) => return End::Capped,
                                Err(blocked) => return blocked.into(),
                            }
                        }
                        idle_at = Instant::now() + self.idle;
                        continue;
                    }
                    Continued::Canceled(reason) => return End::Canceled(reason),
                    Continued::No => {}
                }
            }
            return match self.relay(Err(failure)).await {
                Ok(()) => End::Failed { abort },
                Err(blocked) => blocked.into(),
            };
        }
    }

    /// Relays one checked event. An engine that gave no counts still gets
    /// the client a `Usage` (what the gateway counted) before the end. A
    /// delta is counted against the cap first (see [`super::cap`]); one
    /// that reaches past it is cut, and the stream ends there with the
    /// gateway's `Usage` and `Finished(Length)`.
    async fn relay_event(&mut self, event: TokenEvent) -> Result<Relayed, Blocked> {
        let event = match event {
            TokenEvent::Delta(delta) => match self.output_cap.admit(delta) {
                Admit::Pass(delta) => TokenEvent::Delta(delta),
                Admit::Cut(piece) => {
                    if let Some(delta) = piece {
                        self.relay(Ok(TokenEvent::Delta(delta))).await?;
                    }
                    self.settlement.capped = true;
                    if self.output_cap.engine_within_cap() {
                        tracing::debug!(
                            parent: &self.settlement.span,
                            cap = self.settlement.cap,
                            backend = self.settlement.backend.as_str(),
                            "the output's text passed max_tokens by the tokenizer: output cut; \
                             the engine, within it by its own count, runs to its end"
                        );
                    } else {
                        tracing::warn!(
                            parent: &self.settlement.span,
                            cap = self.settlement.cap,
                            backend = self.settlement.backend.as_str(),
                            "the engine went past max_tokens: output cut and the engine aborted"
                        );
                    }
                    let usage = self.settlement.at_cap();
                    self.relay(Ok(TokenEvent::Usage(usage))).await?;
                    self.relay(Ok(TokenEvent::Finished(gateway_core::FinishReason::Length)))
                        .await?;
                    return Ok(Relayed::Capped);
                }
            },
            TokenEvent::Usage(usage) if self.settlement.continued_prompt.is_some() => {
                TokenEvent::Usage(self.settlement.continued_usage(&usage))
            }
            other => other,
        };
        let terminal = matches!(event, TokenEvent::Finished(_));
        if terminal && self.settlement.engine.is_none() {
            let usage = self.settlement.counted();
            self.relay(Ok(TokenEvent::Usage(usage))).await?;
        }
        self.relay(Ok(event)).await?;
        Ok(if terminal {
            Relayed::Finished
        } else {
            Relayed::More
        })
    }

    /// Puts one item in the client's buffer, waiting while it is full;
    /// gives up when the client took nothing for the stall timeout.
    async fn relay(&mut self, item: TokenResult) -> Result<(), Blocked> {
        self.settlement.observe(&item);
        if let (Some(resume), Ok(TokenEvent::Delta(delta))) = (self.resume.as_mut(), &item) {
            resume.observe(delta);
        }
        // Fast path: room in the buffer (a cancel is seen at the next read).
        match self.tx.try_reserve() {
            Ok(permit) => {
                permit.send(item.into());
                return Ok(());
            }
            Err(mpsc::error::TrySendError::Closed(())) => return Err(Blocked::ClientGone),
            Err(mpsc::error::TrySendError::Full(())) => {}
        }
        loop {
            tokio::select! {
                biased;
                () = &mut self.canceled => return Err(Blocked::Canceled(self.reason())),
                permit = self.tx.reserve() => {
                    return match permit {
                        Ok(permit) => {
                            permit.send(item.into());
                            Ok(())
                        }
                        Err(_) => Err(Blocked::ClientGone),
                    };
                }
                () = self.client.progress.notified() => {}
                () = tokio::time::sleep(self.stall) => return Err(Blocked::Stalled),
                // The backend's reader goes on meanwhile (its cancel,
                // deadline and abort), as far as its own buffer allows.
                () = self.stream.drive() => {}
            }
        }
    }

    /// After `failure` (continuable, after the first token): starts the
    /// generation again on another of the model's backends from the
    /// prompt's and the delivered tokens' ids, when the model allows it
    /// (see [`super::Continuation`]). The failed attempt is stopped first.
    /// On success the pump reads the new backend from then on.
    async fn continue_stream(&mut self, failure: &BackendError) -> Continued {
        let Some(mut resume) = self.resume.take() else {
            return Continued::No;
        };
        let continued = self.try_continue(&mut resume, failure).await;
        self.resume = Some(resume);
        continued
    }

    async fn try_continue(&mut self, resume: &mut Resume, failure: &BackendError) -> Continued {
        let span = self.settlement.span.clone();
        let request = match resume.next(
            self.settlement.received,
            self.settlement.cap,
            self.settlement.engine.is_some(),
            &*self.settlement.model.counter,
        ) {
            Ok(request) => request,
            Err(why) => {
                tracing::info!(
                    parent: &span,
                    backend = %self.settlement.backend,
                    kind = failure.kind().as_str(),
                    reason = why.as_str(),
                    "the stream does not continue on another backend"
                );
                return Continued::No;
            }
        };
        // The failed engine's stream is over or must be: stop it (dropping
        // the stream closes its connection).
        self.attempt.cancel(CancelReason::Timeout);
        self.stream = TokenStream::from_items(Vec::new());
        let from = self.settlement.backend.clone();
        resume.failed.push(from.clone());
        let model = self.settlement.model.clone();
        let job = ContinueJob {
            model: &model,
            tenant: &resume.tenant,
            request,
            failed: &resume.failed,
            span: &span,
            want_prefix: resume.gateway.inner.router.prefix_tokens(),
            slo: resume.gateway.slo_of(&model.name),
        };
        let served = attempts::serve(&resume.gateway, &job, &self.cancel, Instant::now()).await;
        let Served {
            started: (head, attempt_cancel),
            inflight,
        } = match served {
            Ok(served) => served,
            Err(Stop::Final(_)) if self.cancel.is_canceled() => {
                return Continued::Canceled(self.reason());
            }
            Err(Stop::Final(err) | Stop::Unserved(err)) => {
                tracing::warn!(
                    parent: &span,
                    from = %from,
                    kind = failure.kind().as_str(),
                    error = %err,
                    "no backend could continue the stream"
                );
                return Continued::No;
            }
        };
        let to = inflight.slot().name.clone();
        let prefill = match &job.request.prompt {
            gateway_core::Prompt::Tokens(ids) => ids.len() as u64,
            gateway_core::Prompt::Chat(_) | gateway_core::Prompt::Text(_) => 0,
        };
        resume.continued += 1;
        resume.prefill += prefill;
        let metrics = &self.settlement.metrics;
        metrics
            .continuations
            .get_or_create(&ContinuationLabels {
                model: model.name.clone(),
                from: from.clone(),
                to: to.clone(),
            })
            .inc();
        metrics
            .continuation_prefill_tokens
            .get_or_create(&ModelLabels {
                model: model.name.clone(),
            })
            .inc_by(prefill);
        span.record("continuations", resume.continued);
        span.record("continuation_prefill_tokens", resume.prefill);
        tracing::info!(
            parent: &span,
            from = %from,
            to = %to,
            kind = failure.kind().as_str(),
            delivered = self.settlement.received,
            prefill,
            "the stream continues on another backend"
        );
        self.settlement.continued_prompt = Some(
            self.settlement
                .started
                .prompt_tokens
                .or(resume.prompt_tokens())
                .unwrap_or(0),
        );
        self.stream = head.stream;
        self.order = head.order;
        self.attempt = attempt_cancel;
        self.drain = inflight.slot().backend.drain_on_client_gone();
        self.settlement.backend = to;
        self.settlement.inflight = inflight;
        // The routing policy learns from single-backend requests only; the
        // client's latency (for the targets) goes on.
        if let Some(watch) = &mut self.settlement.latency {
            watch.index = None;
        }
        // The continuation's `Started` counts its own prompt: the client's
        // stream has the original's.
        let events = head
            .events
            .into_iter()
            .filter(|e| !matches!(e, TokenEvent::Started(_)))
            .collect();
        Continued::Yes(events)
    }

    /// Waits until the client took the last item, left, or stalled.
    async fn await_client(&mut self) {
        loop {
            if self.client.took_end.load(Ordering::Acquire) {
                return;
            }
            tokio::select! {
                biased;
                () = self.tx.closed() => return,
                () = self.client.progress.notified() => {}
                () = tokio::time::sleep(self.stall) => {
                    self.cancel.cancel(CancelReason::ClientGone);
                    return;
                }
                // The rest of the engine's body, read meanwhile, returns
                // its connection to the pool.
                () = self.stream.drive() => {}
            }
        }
    }

    /// The client left and the backend drains (`on_disconnect = "drain"`):
    /// reads the stream on to its end, counting every token the engine
    /// produced and keeping its usage, so the settlement charges what the
    /// provider bills. Bounded by the backend's drain timeout (plus the
    /// abort wait for it to report the cut) and by shutdown; leaving early
    /// drops the stream, which closes the connection.
    async fn drain_upstream(&mut self, timeout: Duration) {
        // Tells the backend (a no-op when the client's cancel reached it).
        self.attempt.cancel(CancelReason::ClientGone);
        self.settlement.drained = true;
        let until = Instant::now() + timeout + self.abort_wait;
        let shutdown = self.shutdown.token().clone();
        let outcome = loop {
            let next = tokio::select! {
                biased;
                () = shutdown.cancelled() => break "stopped",
                next = tokio::time::timeout_at(until, self.stream.next()) => next,
            };
            match next {
                // The stream had already ended (its `Finished` was relayed).
                Ok(None) if self.settlement.finish.is_some() => break "finished",
                Err(_) | Ok(None) => break "stopped",
                Ok(Some(Ok(event))) => {
                    if self.order.observe(&event).is_err() {
                        break "stopped";
                    }
                    match event {
                        TokenEvent::Delta(d) => self.settlement.received += u64::from(d.tokens),
                        TokenEvent::Usage(u) => self.settlement.engine = Some(u),
                        TokenEvent::Finished(r) => {
                            self.settlement.finish = Some(r);
                            break "finished";
                        }
                        TokenEvent::Started(_) => {}
                    }
                }
                // The backend closed the connection at its drain timeout.
                Ok(Some(Err(err))) if err.kind() == FailureKind::Canceled => break "timed_out",
                Ok(Some(Err(_))) => break "stopped",
            }
        };
        tracing::debug!(
            parent: &self.settlement.span,
            outcome,
            received = self.settlement.received,
            "drained the upstream stream after the client left"
        );
        self.settlement
            .metrics
            .drained
            .get_or_create(&DrainLabels {
                backend: self.settlement.backend.clone(),
                outcome,
            })
            .inc();
    }

    /// After a cut by the gateway's text count: reads the engine's rest and
    /// drops it (not charged), until it finishes; aborts it if its own
    /// count passes the cap, it goes quiet for the idle timeout, or the
    /// gateway shuts down.
    async fn run_out_upstream(&mut self) {
        let cap = self.settlement.cap;
        let mut engine = self.output_cap.engine_count();
        let shutdown = self.shutdown.token().clone();
        loop {
            let next = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                next = tokio::time::timeout(self.idle, self.stream.next()) => next,
            };
            match next {
                Ok(Some(Ok(TokenEvent::Delta(d)))) => {
                    engine += u64::from(d.tokens)
                        .max(d.token_ids.len() as u64)
                        .max(u64::from(d.has_output()));
                    if engine > cap {
                        break;
                    }
                }
                Ok(Some(Ok(TokenEvent::Finished(_))) | Some(Err(_)) | None) => return,
                Ok(Some(Ok(_))) => {}
                Err(_) => break,
            }
        }
        self.abort_upstream(CancelReason::Budget).await;
    }

    /// Cancels the attempt and reads the backend until it confirms the
    /// abort (bounded), counting tokens it produced that nobody received.
    async fn abort_upstream(&mut self, reason: CancelReason) {
        self.attempt.cancel(reason);
        let fired = self.attempt.canceled_at().unwrap_or_else(Instant::now);
        let until = Instant::now() + self.abort_wait;
        let confirmed = loop {
            match tokio::time::timeout_at(until, self.stream.next()).await {
                Err(_) | Ok(None) => break None,
                // Past the cap, what the engine still sends is its own
                // fault: not charged.
                Ok(Some(Ok(TokenEvent::Delta(d)))) if !self.settlement.capped => {
                    self.settlement.received += u64::from(d.tokens)
                }
                Ok(Some(Ok(TokenEvent::Delta(_)))) => {}
                Ok(Some(Ok(TokenEvent::Finished(_)))) => break None,
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(err))) if err.kind() == FailureKind::Canceled => break Some(err),
                Ok(Some(Err(_))) => break None,
            }
        };
        let Some(err) = confirmed else { return };
        let metrics = &self.settlement.metrics;
        metrics
            .abort_propagation
            .observe(fired.elapsed().as_secs_f64());
        let phase = err
            .engine_phase()
            .unwrap_or(if self.settlement.received > 0 {
                EnginePhase::Decode
            } else {
                EnginePhase::Prefill
            });
        metrics
            .upstream_aborts
            .get_or_create(&AbortLabels {
                backend: self.settlement.backend.clone(),
                phase: phase.as_str(),
            })
            .inc();
    }
}

/// Everything a request holds until it settles; settles in `Drop`, so
/// every path (end, error, cancel, stall, shutdown, panic) settles once.
struct Settlement {
    guard: Option<BudgetGuard>,
    meter: UsageMeter,
    client: Arc<Client>,
    started: Started,
    engine: Option<Usage>,
    received: u64,
    /// The client left and the stream was drained: the provider bills
    /// everything it produced.
    drained: bool,
    /// The engine went past the cap; the stream ended at it.
    capped: bool,
    /// The request's completion cap (reserved for): a drained charge never
    /// goes past it.
    cap: u64,
    tenant: Arc<Tenant>,
    model: Arc<ModelSpec>,
    backend: String,
    estimate: TokenCount,
    arrived: Instant,
    metrics: Arc<Metrics>,
    _permit: LimitPermit,
    inflight: InflightGuard,
    _active: ActiveGuard,
    span: tracing::Span,
    finish: Option<gateway_core::FinishReason>,
    drift_warn_ratio: f64,
    /// Once the stream continued on another backend: the original
    /// prompt's tokens (the continuation's engine counts its prompt as
    /// the original's plus the delivered tokens).
    continued_prompt: Option<u64>,
    /// What the routing policy and the latency-target metrics learn from
    /// the request, once it finished.
    latency: Option<LatencyWatch>,
}

/// A request's latency as it streams: when it was sent, its first and its
/// last token came.
struct LatencyWatch {
    router: Arc<dyn RoutePolicy>,
    /// Its backend's place in the pool (the policy's candidate index).
    index: Option<usize>,
    timing: Timing,
    /// When the last token came.
    last: Instant,
    slo: Slo,
    class: gateway_core::LatencyClass,
    arrived: Instant,
}

impl LatencyWatch {
    /// Teaches the policy what the backend did and counts the request
    /// against its class's targets: for a request that finished, with
    /// `usage` its counts and `tokens` the output tokens received.
    fn finished(&self, metrics: &Metrics, model: &str, usage: &Usage, tokens: u64) {
        let Timing {
            sent,
            held,
            kv_usage,
            first,
        } = self.timing;
        let itl = (tokens >= 2).then(|| {
            let gaps = u32::try_from(tokens - 1).unwrap_or(u32::MAX);
            self.last.saturating_duration_since(first) / gaps
        });
        if let Some(index) = self.index {
            self.router.observe(
                index,
                &Observation {
                    uncached_prompt_tokens: u32::try_from(usage.uncached_prompt())
                        .unwrap_or(u32::MAX),
                    held,
                    kv_usage,
                    ttft: first.saturating_duration_since(sent),
                    itl,
                },
            );
        }
        let targets = self.slo.of(self.class);
        let class = self.class.as_str();
        if let Some(target) = targets.ttft {
            let ttft = first.saturating_duration_since(self.arrived);
            metrics.slo_check(model, class, "ttft", ttft <= target);
        }
        if let (Some(target), Some(itl)) = (targets.itl, itl) {
            metrics.slo_check(model, class, "itl", itl <= target);
        }
    }
}

impl Settlement {
    fn observe(&mut self, item: &TokenResult) {
        match item {
            Ok(TokenEvent::Started(s)) => self.started = *s,
            Ok(TokenEvent::Delta(d)) => {
                self.received += u64::from(d.tokens);
                if let Some(watch) = &mut self.latency {
                    watch.last = Instant::now();
                }
            }
            Ok(TokenEvent::Usage(u)) => self.engine = Some(*u),
            Ok(TokenEvent::Finished(r)) => self.finish = Some(*r),
            Err(e) => {
                self.span.record("error.type", e.kind().as_str());
            }
        }
    }

    /// A continuation engine's `usage` as the client's: the original
    /// prompt (and its cached part), every completion token relayed; the
    /// re-prefill is not the tenant's.
    fn continued_usage(&self, usage: &Usage) -> Usage {
        let prompt = self.continued_prompt.unwrap_or(0);
        let cached = self.started.cached_tokens.unwrap_or(0);
        Usage::clamped(
            prompt,
            cached,
            self.received,
            usage.drafted(),
            usage.accepted(),
            0,
        )
    }

    /// The gateway's own count of a finished request, for engines that
    /// report none: prompt from `Started` or the estimate, completion tokens
    /// received.
    fn counted(&self) -> Usage {
        let prompt = self.charged_prompt(self.started.prompt_tokens);
        let cached = self.started.cached_tokens.unwrap_or(0);
        Usage::clamped(prompt, cached, self.received, 0, 0, 0)
    }

    /// The usage the client gets when the stream ends at the cap: the
    /// engine's (or `Started`'s, or the estimated) prompt counts and the
    /// completion tokens relayed.
    fn at_cap(&self) -> Usage {
        let (prompt, cached, drafted, accepted) = self.engine_counts();
        Usage::clamped(prompt, cached, self.received, drafted, accepted, 0)
            .with_reasoning(self.engine.map_or(0, |u| u.reasoning()))
    }

    /// What the tenant is charged for: prompt tokens once the response
    /// began, the completion tokens the client took, the engine's
    /// speculative counts, and as canceled what was produced but not taken.
    ///
    /// A drained request is charged what the provider bills: the prompt
    /// and every completion token produced (the provider's count when it
    /// gave one, else the tokens received; at most the reserved cap), with
    /// the undelivered part of them recorded as canceled too.
    fn usage(&self) -> Usage {
        let delivered = self.meter.delivered();
        if self.drained {
            let billed = self
                .engine
                .map_or(self.received, |u| u.completion())
                .max(delivered)
                .min(self.cap.max(delivered));
            let canceled = billed.saturating_sub(delivered);
            let (prompt, cached, drafted, accepted) = self.engine_counts();
            return Usage::clamped(prompt, cached, billed, drafted, accepted, canceled)
                .with_reasoning(self.engine.map_or(0, |u| u.reasoning()));
        }
        let canceled = self.received.saturating_sub(delivered);
        if !self.client.began.load(Ordering::Acquire) {
            return Usage::clamped(0, 0, delivered, 0, 0, canceled);
        }
        let (prompt, cached, drafted, accepted) = self.engine_counts();
        Usage::clamped(prompt, cached, delivered, drafted, accepted, canceled)
            .with_reasoning(self.engine.map_or(0, |u| u.reasoning()))
    }

    /// The engine's prompt count: its usage's, else `Started`'s.
    fn engine_prompt(&self) -> Option<u64> {
        self.engine
            .map(|u| u.prompt())
            .or(self.started.prompt_tokens)
    }

    /// The prompt tokens charged for an engine count `actual`: never more
    /// than the estimate the reservation was made for (what a tenant did
    /// not reserve, it is not charged: an engine count above the estimate
    /// is drift, recorded in [`Drop`]); the estimate when the engine gave
    /// no count.
    fn charged_prompt(&self, actual: Option<u64>) -> u64 {
        let reserved = self.estimate.value();
        actual.map_or(reserved, |actual| actual.min(reserved))
    }

    /// Prompt, cached, drafted and accepted tokens: the engine's counts,
    /// else `Started`'s, else the estimate; the prompt at most the
    /// estimate ([`charged_prompt`](Self::charged_prompt)).
    fn engine_counts(&self) -> (u64, u64, u64, u64) {
        let prompt = self.charged_prompt(self.engine_prompt());
        let cached = self
            .engine
            .map(|u| u.cached())
            .or(self.started.cached_tokens)
            .unwrap_or(0);
        let (drafted, accepted) = self.engine.map_or((0, 0), |u| (u.drafted(), u.accepted()));
        (prompt, cached, drafted, accepted)
    }

    fn outcome(&self) -> &'static str {
        if !self.client.took_end.load(Ordering::Acquire) {
            "canceled"
        } else if self.client.took_error.load(Ordering::Acquire) {
            "stream_error"
        } else {
            "ok"
        }
    }
}

impl Drop for Settlement {
    fn drop(&mut self) {
        let Some(guard) = self.guard.take() else {
            return;
        };
        let usage = self.usage();
        let receipt = guard.settle(usage);
        let tenant = self.tenant.id.as_str();
        let model = self.model.name.as_str();
        let metrics = &self.metrics;
        let span = &self.span;
        span.record("backend", self.backend.as_str());
        span.record(
            "gen_ai.provider.name",
            self.inflight.slot().backend.info().engine.as_str(),
        );
        span.record(
            "gen_ai.response.model",
            self.inflight.slot().served_model.as_str(),
        );
        span.record("gen_ai.usage.input_tokens", usage.prompt());
        span.record("gen_ai.usage.output_tokens", usage.completion());
        if let Some(reason) = self.finish {
            span.record("gen_ai.response.finish_reasons", reason.as_str());
        }
        span.record("outcome", self.outcome());
        metrics.request(tenant, model, self.outcome());
        metrics.tokens(tenant, model, &usage);
        metrics.spend(tenant, receipt.charged.usd());
        let labels = ModelLabels {
            model: model.to_owned(),
        };
        metrics
            .request_duration
            .get_or_create(&labels)
            .observe(self.arrived.elapsed().as_secs_f64());
        let actual = self.engine_prompt();
        if let Some(actual) = actual.filter(|a| *a > self.estimate.value()) {
            let estimated = self.estimate.value();
            metrics.prompt_overrun(model, &self.backend, estimated, actual);
            let ratio = (actual - estimated) as f64 / estimated.max(1) as f64;
            if ratio > self.drift_warn_ratio {
                tracing::warn!(
                    model,
                    backend = self.backend.as_str(),
                    estimated,
                    actual,
                    exact = self.estimate.is_exact(),
                    "the engine counted more prompt tokens than were reserved; charged at the estimate"
                );
            }
        }
        if let Some(actual) = actual.filter(|a| *a > 0) {
            let ratio = (self.estimate.value() as f64 - actual as f64) / actual as f64;
            metrics.estimate_error.get_or_create(&labels).observe(ratio);
            // An exact count that misses means the tokenizer or template
            // differs from the engine's: worth a warning. Upper bounds
            // always overshoot; the histogram tracks them.
            if self.estimate.is_exact() && ratio.abs() > self.drift_warn_ratio {
                tracing::warn!(
                    model,
                    estimated = self.estimate.value(),
                    actual,
                    ratio,
                    "prompt-token estimate drifts from the engine's count"
                );
            }
        }
        if let (Some(watch), Some(_)) = (&self.latency, self.finish) {
            watch.finished(metrics, model, &usage, self.received);
        }
        tracing::info!(parent: &self.span, charged_usd = receipt.charged.usd(), "request settled");
    }
}
