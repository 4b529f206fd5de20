//! Routing and backend attempts up to the first token, retrying on other
//! backends while nothing has reached the client, then on the model's
//! fallbacks (see [`super::fallback`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use gateway_core::{
    BackendError, BackendRequest, Blame, BudgetGuard, CancelHandle, CancelReason, EventOrder,
    FailureKind, GenerateRequest, Pressure, RequestBudget, TokenCount, TokenEvent, TokenStream,
    UsageMeter,
};
use tokio::time::Instant;

use super::capable::{self, Needs};
use super::fallback::{self, Plan};
use super::stream::{self, Attempted};
use super::{ActiveGuard, Gateway, GatewayStream};
use crate::admission::Ticket;
use crate::limits::LimitPermit;
use crate::metrics::{BackendLabels, ModelBackendLabels};
use crate::pool::{BackendSlot, InflightGuard};
use crate::route::{Candidate, RouteRequest, Slo, latency};
use crate::{ErrorCode, GatewayError, ModelSpec, Tenant};

/// A request past limits and budget, ready to route.
pub(super) struct Admitted {
    pub(super) tenant: Arc<Tenant>,
    pub(super) model: Arc<ModelSpec>,
    pub(super) request: Arc<GenerateRequest>,
    pub(super) estimate: TokenCount,
    /// The prompt's leading token ids, for routing (see
    /// [`RouteRequest::prefix_tokens`]).
    pub(super) prefix: Option<Arc<[u32]>>,
    /// The prompt's ids as the engine gets them, when the model's streams
    /// may continue and the counter knows them exactly.
    pub(super) prompt_ids: Option<Arc<[u32]>>,
    pub(super) arrived: Instant,
    pub(super) meter: UsageMeter,
    pub(super) guard: BudgetGuard,
    pub(super) permit: LimitPermit,
    pub(super) active: ActiveGuard,
    pub(super) span: tracing::Span,
    /// The model's usable fallbacks, in order.
    pub(super) fallbacks: Vec<Plan>,
    /// The model's latency targets.
    pub(super) slo: Slo,
}

/// What the first events of a successful attempt were.
pub(super) struct Head {
    pub(super) stream: TokenStream,
    pub(super) events: Vec<TokenEvent>,
    pub(super) order: EventOrder,
    /// When it was sent and its first token came (set by the attempt).
    pub(super) timing: Option<Timing>,
}

/// When an attempt was sent, what its backend held then, and when its
/// first token came: what the routing policy learns latency from.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timing {
    pub(super) sent: Instant,
    pub(super) held: u32,
    pub(super) kv_usage: f32,
    pub(super) first: Instant,
}

/// How serving a request on one model ended without a first token.
pub(super) enum Stop {
    /// A fault of the request, a cancel: no other model would do better.
    Final(GatewayError),
    /// The model's backends could not start it: a fallback may.
    Unserved(GatewayError),
}

/// A started attempt: what it gave and its place on the backend.
pub(super) struct Served<T> {
    pub(super) started: T,
    pub(super) inflight: InflightGuard,
}

/// A request [`serve`] routes: what routing and the fair queue know of it,
/// and one attempt of it on a backend.
pub(super) trait Job {
    /// What a successful attempt gives.
    type Started;
    /// The model it is served on now.
    fn model(&self) -> &ModelSpec;
    /// Who it is for.
    fn tenant(&self) -> &Tenant;
    /// What the routing policy sees of it.
    fn route(&self) -> RouteRequest<'_>;
    /// Its cost in the model's fair queue (tokens).
    fn queue_cost(&self) -> u64;
    /// What it needs of a backend on its model now; `None`: any backend
    /// of the model serves it.
    fn needs(&self) -> Option<Needs> {
        None
    }

    /// Whether backend `name` is not to be tried (it failed the request
    /// already).
    fn excludes(&self, _name: &str) -> bool {
        false
    }
    /// One attempt on `slot`, under `cancel`.
    async fn attempt(
        &self,
        gateway: &Gateway,
        slot: Arc<BackendSlot>,
        cancel: &CancelHandle,
    ) -> Result<Self::Started, Failed>;
}

impl Job for Admitted {
    type Started = (Head, CancelHandle);

    fn model(&self) -> &ModelSpec {
        &self.model
    }

    fn tenant(&self) -> &Tenant {
        &self.tenant
    }

    fn route(&self) -> RouteRequest<'_> {
        RouteRequest {
            model: &self.model.name,
            prompt: &self.request.prompt,
            prefix_tokens: self.prefix.as_deref(),
            class: self.request.latency_class,
            prompt_tokens: u32::try_from(self.estimate.value()).unwrap_or(u32::MAX),
            slo: self.slo,
        }
    }

    fn queue_cost(&self) -> u64 {
        self.estimate
            .value()
            .saturating_add(u64::from(self.request.max_tokens))
    }

    fn needs(&self) -> Option<Needs> {
        Some(Needs {
            capabilities: self.request.needs,
            prompt: self.estimate.value(),
            max_tokens: self.request.max_tokens,
        })
    }

    async fn attempt(
        &self,
        gateway: &Gateway,
        slot: Arc<BackendSlot>,
        cancel: &CancelHandle,
    ) -> Result<(Head, CancelHandle), Failed> {
        let of = AttemptOf {
            request: &self.request,
            model: &self.model,
            estimate: self.estimate.value(),
            arrived: Some(self.arrived),
            span: &self.span,
        };
        attempt(gateway, of, slot, cancel).await
    }
}

/// Routes and starts `admitted` on its model, then, if that model's
/// backends cannot start it, on each of its fallbacks in order; on every
/// model each eligible backend is tried at most once, in ranked order,
/// until one produces its first token.
pub(super) async fn run(
    gateway: &Gateway,
    mut admitted: Admitted,
    cancel: CancelHandle,
) -> Result<GatewayStream, GatewayError> {
    let requested = admitted.model.name.clone();
    let mut plans = std::mem::take(&mut admitted.fallbacks).into_iter();
    let mut unserved: Vec<(String, GatewayError)> = Vec::new();
    // The requested model's admission wait runs from arrival; each
    // fallback gets its own from when it is tried.
    let mut since = admitted.arrived;
    loop {
        match serve(gateway, &admitted, &cancel, since).await {
            Ok(Served {
                started: (head, attempt_cancel),
                inflight,
            }) => {
                return Ok(stream::start(
                    gateway,
                    Attempted {
                        admitted,
                        head,
                        inflight,
                        attempt_cancel,
                    },
                    cancel,
                ));
            }
            Err(Stop::Final(err)) => return Err(err),
            Err(Stop::Unserved(err)) => {
                unserved.push((admitted.model.name.clone(), err));
                let Some(plan) = plans.next() else {
                    return Err(chain_error(unserved));
                };
                fallback::switch(gateway, &mut admitted, plan, &requested);
                since = Instant::now();
            }
        }
    }
}

/// The error of a request no model of its chain could start: the requested
/// model's code and retry hint, with every model's reason in the message.
fn chain_error(mut unserved: Vec<(String, GatewayError)>) -> GatewayError {
    if unserved.len() <= 1 {
        if let Some((_, err)) = unserved.pop() {
            return err;
        }
        return GatewayError::new(ErrorCode::Internal, "no model was tried");
    }
    let message = unserved
        .iter()
        .enumerate()
        .map(|(i, (model, err))| {
            let what = if i == 0 { "model" } else { "fallback" };
            format!("{what} {model}: {}", err.message())
        })
        .collect::<Vec<_>>()
        .join("; ");
    // A model that cannot serve the request says nothing of the others.
    let (_, first) = unserved
        .iter()
        .find(|(_, e)| !capable::is_refusal(e))
        .unwrap_or(&unserved[0]);
    let err = GatewayError::new(first.code(), message);
    match first.retry_after() {
        Some(after) => err.with_retry_after(after),
        None => err,
    }
}

/// Routes and starts `job` on its current model, trying each eligible
/// backend at most once, waiting for capacity up to the admission wait
/// counted from `since`.
pub(super) async fn serve<J: Job>(
    gateway: &Gateway,
    job: &J,
    cancel: &CancelHandle,
    since: Instant,
) -> Result<Served<J::Started>, Stop> {
    let inner = &gateway.inner;
    let model = job.model();
    // Only the backends that can serve what it asks for.
    let indices =
        capable::backends(gateway, model, job.needs().as_ref()).map_err(Stop::Unserved)?;
    let admission_deadline = since + inner.settings.admission_wait;
    let mut tried: HashSet<usize> = HashSet::new();
    let mut failures: Vec<BackendError> = Vec::new();
    let queue = inner.queues.get(&model.name).cloned();
    // A place in the model's fair queue, taken only when the request has to
    // wait (or others already wait: no barging ahead of them).
    let mut ticket: Option<Ticket> = None;
    loop {
        let my_turn = match (&ticket, &queue) {
            (Some(t), _) => t.is_next(),
            (None, Some(q)) => q.is_empty(),
            (None, None) => true,
        };
        let candidates: Vec<Candidate> = indices
            .iter()
            .filter(|i| !tried.contains(*i))
            .filter_map(|i| {
                let slot = gateway.slot(*i)?;
                if job.excludes(&slot.name) {
                    return None;
                }
                Some(Candidate {
                    index: *i,
                    healthy: slot.is_healthy(),
                    has_capacity: slot.has_capacity(),
                    pressure: slot.pressure(),
                })
            })
            .collect();
        // A request the policy holds back (batch, while load alone makes
        // the interactive targets missed) waits its turn in the queue as if
        // every backend were full.
        let route = job.route();
        let held_back = my_turn && inner.router.hold(&route, &candidates);
        let ranked = if my_turn && !held_back {
            let ranked = inner.router.rank(&route, &candidates);
            capable::prefer(gateway, model, route.class, ranked)
        } else {
            Vec::new()
        };
        let picked = ranked.into_iter().find_map(|i| {
            gateway
                .slot(i)
                .and_then(|s| s.try_acquire().map(|g| (i, g)))
        });
        if let Some((index, inflight)) = picked {
            if let Some(t) = ticket.take() {
                t.served();
            }
            tried.insert(index);
            match job.attempt(gateway, inflight.slot().clone(), cancel).await {
                Ok(started) => return Ok(Served { started, inflight }),
                Err(Failed::Canceled(reason)) => {
                    return Err(Stop::Final(GatewayError::new(
                        ErrorCode::Canceled,
                        format!("request canceled: {reason}"),
                    )));
                }
                Err(Failed::Backend(err)) => {
                    let backend = inflight.slot().name.clone();
                    drop(inflight);
                    if !err.is_retryable() {
                        return Err(Stop::Final(GatewayError::from_backend(err)));
                    }
                    inner
                        .metrics
                        .retries
                        .get_or_create(&BackendLabels { backend })
                        .inc();
                    failures.push(err);
                    continue;
                }
            }
        }
        let waiting_possible = held_back
            || candidates
                .iter()
                .any(|c| c.healthy && (!c.has_capacity || !my_turn));
        if !waiting_possible {
            return Err(Stop::Unserved(exhausted(&failures)));
        }
        if let (None, Some(q)) = (&ticket, &queue) {
            let tenant = job.tenant();
            let joined = q.join(
                &tenant.id,
                tenant.weight.get(),
                job.queue_cost(),
                job.route().class,
            );
            match joined {
                Ok(t) => ticket = Some(t),
                Err(full) => {
                    return Err(Stop::Unserved(
                        GatewayError::new(
                            ErrorCode::Overloaded,
                            format!("model {}: {full}", model.name),
                        )
                        .with_retry_after(Duration::from_secs(1)),
                    ));
                }
            }
            // Joined: look again at once; this request may be next.
            continue;
        }
        // Only the waiter whose turn it is is woken, when it becomes next
        // and when a backend of the model frees a place; a wake-up that
        // came since the look above is kept, so none is missed.
        let woken = async {
            match &ticket {
                Some(ticket) => ticket.woken().await,
                None => futures::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            reason = cancel.canceled() => {
                return Err(Stop::Final(GatewayError::new(ErrorCode::Canceled, format!("request canceled: {reason}"))));
            }
            () = tokio::time::sleep_until(admission_deadline) => {
                return Err(Stop::Unserved(GatewayError::new(
                    ErrorCode::Overloaded,
                    format!("no capacity for model {} within the admission wait", model.name),
                )
                .with_retry_after(Duration::from_secs(1))));
            }
            () = woken => {}
        }
    }
}

/// The error when every eligible backend failed (or none was eligible).
fn exhausted(failures: &[BackendError]) -> GatewayError {
    let Some(last) = failures.last() else {
        return GatewayError::new(
            ErrorCode::UpstreamError,
            "no healthy backend serves this model",
        );
    };
    let all = |f: fn(FailureKind) -> bool| failures.iter().all(|e| f(e.kind()));
    if all(|k| k == FailureKind::FirstTokenTimeout) {
        return GatewayError::new(
            ErrorCode::UpstreamTimeout,
            "no backend produced a first token in time",
        );
    }
    if all(|k| k == FailureKind::Unsupported) {
        return GatewayError::new(
            ErrorCode::InvalidRequest,
            format!(
                "no backend of this model can serve it: {}",
                last.client_message()
            ),
        );
    }
    if all(|k| matches!(k, FailureKind::Overloaded | FailureKind::OutOfMemory)) {
        let retry_after = failures
            .iter()
            .filter_map(BackendError::retry_after)
            .min()
            .unwrap_or(Duration::from_secs(1));
        return GatewayError::new(ErrorCode::Overloaded, "every backend is overloaded")
            .with_retry_after(retry_after);
    }
    GatewayError::new(
        ErrorCode::UpstreamError,
        format!(
            "every backend failed before the first token; last: {}",
            last.client_message()
        ),
    )
}

/// Why one attempt failed.
pub(super) enum Failed {
    /// The request was canceled.
    Canceled(CancelReason),
    /// The backend failed it.
    Backend(BackendError),
}

/// What one attempt starts.
pub(super) struct AttemptOf<'a> {
    /// The request as the engine gets it.
    pub(super) request: &'a Arc<GenerateRequest>,
    /// The model it is served on.
    pub(super) model: &'a ModelSpec,
    /// Its prompt's estimate (for the blame of size-sensitive failures).
    pub(super) estimate: u64,
    /// When the client's request arrived, for the time to first token;
    /// `None` for a continuation (its client had its first token).
    pub(super) arrived: Option<Instant>,
    /// The request's span.
    pub(super) span: &'a tracing::Span,
}

/// One attempt on `slot`: start it and read up to the first token.
pub(super) async fn attempt(
    gateway: &Gateway,
    of: AttemptOf<'_>,
    slot: Arc<BackendSlot>,
    cancel: &CancelHandle,
) -> Result<(Head, CancelHandle), Failed> {
    let started = Instant::now();
    // What the backend held besides this request (already counted in
    // flight).
    let pressure = slot.pressure();
    let held = latency::held(&Pressure {
        inflight: pressure.inflight.saturating_sub(1),
        ..pressure
    });
    let settings = &gateway.inner.settings;
    let metrics = &gateway.inner.metrics;
    let attempt_cancel = cancel.child();
    let request = BackendRequest {
        request: of.request.clone(),
        served_model: slot.served_model.clone(),
        counter: of.model.counter.clone(),
        budget: RequestBudget {
            max_completion_tokens: of.request.max_tokens,
            deadline: of.request.deadline,
        },
    };
    let first_token_deadline = Instant::now() + settings.first_token_timeout;
    // The request's total deadline may come first; then it is what expires.
    let (deadline, expiry) = match of.request.deadline {
        Some(total) if total <= first_token_deadline => (total, FailureKind::TotalTimeout),
        _ => (first_token_deadline, FailureKind::FirstTokenTimeout),
    };
    let result = tokio::select! {
        biased;
        reason = cancel.canceled() => Err(Failed::Canceled(reason)),
        head = first_token(&slot, request, attempt_cancel.clone(), deadline, expiry) => head.map_err(Failed::Backend),
    };
    let result = result.map_err(|failed| match failed {
        Failed::Backend(err) => Failed::Backend(blamed(err, &slot, of.estimate)),
        canceled @ Failed::Canceled(_) => canceled,
    });
    match result {
        Ok(mut head) => {
            head.timing = Some(Timing {
                sent: started,
                held,
                kv_usage: pressure.kv_usage,
                first: Instant::now(),
            });
            slot.record_success();
            slot.record_prompt(of.estimate);
            if let Some(arrived) = of.arrived {
                metrics
                    .time_to_first_token
                    .get_or_create(&ModelBackendLabels {
                        model: of.model.name.clone(),
                        backend: slot.name.clone(),
                    })
                    .observe(arrived.elapsed().as_secs_f64());
            }
            Ok((head, attempt_cancel))
        }
        Err(failed) => {
            let reason = match &failed {
                Failed::Canceled(reason) => *reason,
                Failed::Backend(_) => CancelReason::Timeout,
            };
            attempt_cancel.cancel(reason);
            if let Failed::Backend(err) = &failed {
                tracing::warn!(
                    parent: of.span,
                    request_id = %of.request.id,
                    backend = %slot.name,
                    kind = err.kind().as_str(),
                    blame = err.blame().as_str(),
                    upstream_status = ?err.upstream_status(),
                    error = %err,
                    "backend attempt failed"
                );
                metrics.failure(&slot.name, err.kind().as_str());
                slot.record_failure(err, started);
            }
            Err(failed)
        }
    }
}

/// `err` with the blame moved to the request when it is a first-token
/// timeout or an out-of-memory answer of a prompt far larger than `slot`
/// usually serves ([`BackendSlot::is_oversized`]): the request's size, not
/// the backend, is the likely cause, so it is neither retried elsewhere nor
/// counted against the breaker.
fn blamed(err: BackendError, slot: &BackendSlot, estimate: u64) -> BackendError {
    let size_sensitive = matches!(
        err.kind(),
        FailureKind::FirstTokenTimeout | FailureKind::OutOfMemory
    );
    if size_sensitive && slot.is_oversized(estimate) {
        err.with_blame(Blame::Request)
    } else {
        err
    }
}

/// Starts the request and reads until its first `Delta` (or its end).
async fn first_token(
    slot: &BackendSlot,
    request: BackendRequest,
    cancel: CancelHandle,
    deadline: Instant,
    expiry: FailureKind,
) -> Result<Head, BackendError> {
    let timeout = || {
        let what = match expiry {
            FailureKind::TotalTimeout => "the request timeout passed before the first token",
            _ => "no first token within the first-token timeout",
        };
        BackendError::new(expiry, what)
    };
    let mut stream = tokio::time::timeout_at(deadline, slot.backend.start(request, cancel))
        .await
        .map_err(|_| timeout())??;
    let mut order = EventOrder::new();
    let mut events = Vec::new();
    loop {
        let item = tokio::time::timeout_at(deadline, stream.next())
            .await
            .map_err(|_| timeout())?;
        let event = match item {
            Some(Ok(event)) => event,
            Some(Err(err)) => return Err(err),
            None => {
                return Err(BackendError::new(
                    FailureKind::ProtocolViolation,
                    "stream ended before its first token without Finished",
                ));
            }
        };
        order.observe(&event).map_err(|v| {
            BackendError::new(
                FailureKind::ProtocolViolation,
                format!("backend broke the event order: {v}"),
            )
        })?;
        let first = matches!(event, TokenEvent::Delta(_) | TokenEvent::Finished(_));
        events.push(event);
        if first {
            return Ok(Head {
                stream,
                events,
                order,
                timing: None,
            });
        }
    }
}
