//! Embeddings through the pipeline: the model allow-list, the estimate of
//! every input (each within the context window), the tenant's limits, one
//! budget reservation, routing with retries on the model's other backends,
//! settlement at the engine's prompt-token count, and the same metrics
//! and error codes as [`Gateway::generate`].
//!
//! An embeddings answer comes in one piece, so "before the first token"
//! is the whole attempt: every failure can be retried elsewhere (when its
//! kind allows) and none is charged. The model's fallbacks are not used:
//! another model's vectors do not compare with this one's.

use std::sync::Arc;

use gateway_core::{
    BackendError, BudgetGuard, CancelHandle, CancelReason, EmbedAttempt, EmbedRequest, Embedding,
    Embeddings, FailureKind, Ledger, Money, Prompt, ReserveRequest, TokenCount, Usage, UsageMeter,
};
use tokio::time::Instant;
use tracing::Instrument;

use super::attempt::{self, Failed, Job, Served, Stop};
use super::{ActiveGuard, Gateway, UNKNOWN_MODEL};
use crate::limits::LimitPermit;
use crate::metrics::ModelLabels;
use crate::pool::BackendSlot;
use crate::route::{RouteRequest, Slo};
use crate::{ErrorCode, GatewayError, ModelSpec, Tenant};

/// What [`Gateway::embed`] answers: one vector per input, in input order
/// and in the requested encoding, with what the request was charged.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedResponse {
    /// The vectors, `data[i].index == i`.
    pub data: Vec<Embedding>,
    /// The model that served it.
    pub model: String,
    /// The backend that served it.
    pub backend: String,
    /// What was charged: the engine's prompt tokens (else the estimate).
    pub usage: Usage,
    /// The money charged.
    pub charged: Money,
}

/// An embeddings request past limits and budget, ready to route.
struct EmbedJob {
    tenant: Arc<Tenant>,
    model: Arc<ModelSpec>,
    request: Arc<EmbedRequest>,
    /// The first input, for the routing policy's prefix affinity.
    route_prompt: Prompt,
    estimate: TokenCount,
}

impl Job for EmbedJob {
    type Started = Embeddings;

    fn model(&self) -> &ModelSpec {
        &self.model
    }

    fn tenant(&self) -> &Tenant {
        &self.tenant
    }

    fn route(&self) -> RouteRequest<'_> {
        RouteRequest {
            model: &self.model.name,
            prompt: &self.route_prompt,
            prefix_tokens: None,
            class: self.request.latency_class,
            prompt_tokens: u32::try_from(self.estimate.value()).unwrap_or(u32::MAX),
            slo: Slo::default(),
        }
    }

    fn queue_cost(&self) -> u64 {
        self.estimate.value()
    }

    async fn attempt(
        &self,
        gateway: &Gateway,
        slot: Arc<BackendSlot>,
        cancel: &CancelHandle,
    ) -> Result<Embeddings, Failed> {
        let started = Instant::now();
        let settings = &gateway.inner.settings;
        let attempt_cancel = cancel.child();
        let request = EmbedAttempt {
            request: self.request.clone(),
            served_model: slot.served_model.clone(),
            counter: self.model.counter.clone(),
            deadline: self.request.deadline,
        };
        // The whole answer is the first token: the first-token timeout
        // bounds the attempt, unless the request's deadline comes first.
        let answer_by = Instant::now() + settings.first_token_timeout;
        let (deadline, expiry, what) = match self.request.deadline {
            Some(total) if total <= answer_by => (
                total,
                FailureKind::TotalTimeout,
                "the request timeout passed before the embeddings came",
            ),
            _ => (
                answer_by,
                FailureKind::FirstTokenTimeout,
                "no embeddings within the first-token timeout",
            ),
        };
        let call = slot.backend.embed(request, attempt_cancel.clone());
        let result = tokio::select! {
            biased;
            reason = cancel.canceled() => Err(Failed::Canceled(reason)),
            answer = tokio::time::timeout_at(deadline, call) => match answer {
                Err(_) => Err(Failed::Backend(BackendError::new(expiry, what))),
                Ok(Err(err)) => Err(Failed::Backend(err)),
                Ok(Ok(embeddings)) => {
                    checked(embeddings, &self.request).map_err(Failed::Backend)
                }
            },
        };
        match &result {
            Ok(_) => slot.record_success(),
            Err(failed) => {
                let reason = match failed {
                    Failed::Canceled(reason) => *reason,
                    Failed::Backend(_) => CancelReason::Timeout,
                };
                attempt_cancel.cancel(reason);
                if let Failed::Backend(err) = failed {
                    gateway
                        .inner
                        .metrics
                        .failure(&slot.name, err.kind().as_str());
                    tracing::warn!(
                        request_id = %self.request.id,
                        backend = %slot.name,
                        kind = err.kind().as_str(),
                        upstream_status = ?err.upstream_status(),
                        error = %err,
                        "embeddings attempt failed"
                    );
                    slot.record_failure(err, started);
                }
            }
        }
        result
    }
}

/// The backend's answer in input order and the requested encoding; a
/// protocol violation when a vector is missing, repeated, out of range or
/// undecodable.
fn checked(mut answer: Embeddings, request: &EmbedRequest) -> Result<Embeddings, BackendError> {
    let n = request.inputs.len();
    let violation = |what: String| BackendError::new(FailureKind::ProtocolViolation, what);
    if answer.data.len() != n {
        return Err(violation(format!(
            "the engine answered {} embeddings for {n} inputs",
            answer.data.len()
        )));
    }
    answer.data.sort_by_key(|e| e.index);
    let mut data = Vec::with_capacity(n);
    for (i, embedding) in answer.data.into_iter().enumerate() {
        if usize::try_from(embedding.index).ok() != Some(i) {
            return Err(violation(format!(
                "the engine's embedding indices are not 0..{n} once each"
            )));
        }
        let Some(vector) = embedding.vector.into_format(request.encoding_format) else {
            return Err(violation(format!(
                "the engine's embedding {i} is not base64 of f32s"
            )));
        };
        data.push(Embedding {
            index: embedding.index,
            vector,
        });
    }
    answer.data = data;
    Ok(answer)
}

/// A request's budget and bookkeeping until it ends: settled with the
/// engine's count on success; dropped otherwise (a failure, a canceled
/// future), when it charges nothing and, if no outcome was recorded,
/// counts the request as canceled.
struct Pending {
    guard: Option<BudgetGuard>,
    gateway: Gateway,
    tenant: Arc<Tenant>,
    model: Arc<ModelSpec>,
    estimate: TokenCount,
    arrived: Instant,
    span: tracing::Span,
    /// An outcome was recorded (a success, or an error the caller counts).
    recorded: bool,
    _permit: LimitPermit,
    _active: ActiveGuard,
}

impl Pending {
    /// Charges `answer`'s prompt tokens (else the estimate) and records the
    /// request's metrics.
    fn settle(mut self, answer: &Embeddings, backend: &BackendSlot) -> (Usage, Money) {
        self.recorded = true;
        // Never above the estimate the reservation was made for; an engine
        // count above it is drift, recorded below.
        let estimated = self.estimate.value();
        let prompt = answer
            .prompt_tokens
            .map_or(estimated, |actual| actual.min(estimated));
        let usage = Usage::new(prompt, 0);
        let Some(guard) = self.guard.take() else {
            return (usage, Money::ZERO);
        };
        let receipt = guard.settle(usage);
        let (tenant, model) = (self.tenant.id.as_str(), self.model.name.as_str());
        let metrics = &self.gateway.inner.metrics;
        metrics.request(tenant, model, "ok");
        metrics.tokens(tenant, model, &usage);
        metrics.spend(tenant, receipt.charged.usd());
        let labels = ModelLabels {
            model: model.to_owned(),
        };
        metrics
            .request_duration
            .get_or_create(&labels)
            .observe(self.arrived.elapsed().as_secs_f64());
        metrics
            .embedding_inputs
            .get_or_create(&labels)
            .inc_by(answer.data.len() as u64);
        if let Some(actual) = answer.prompt_tokens.filter(|a| *a > estimated) {
            metrics.prompt_overrun(model, &backend.name, estimated, actual);
            let ratio = (actual - estimated) as f64 / estimated.max(1) as f64;
            if ratio > self.gateway.inner.settings.drift_warn_ratio {
                tracing::warn!(
                    parent: &self.span,
                    model,
                    backend = backend.name.as_str(),
                    estimated,
                    actual,
                    "the engine counted more embeddings input tokens than were reserved; charged at the estimate"
                );
            }
        }
        if let Some(actual) = answer.prompt_tokens.filter(|a| *a > 0) {
            let ratio = (self.estimate.value() as f64 - actual as f64) / actual as f64;
            metrics.estimate_error.get_or_create(&labels).observe(ratio);
            let warn_ratio = self.gateway.inner.settings.drift_warn_ratio;
            if self.estimate.is_exact() && ratio.abs() > warn_ratio {
                tracing::warn!(
                    parent: &self.span,
                    model,
                    estimated = self.estimate.value(),
                    actual,
                    ratio,
                    "prompt-token estimate of embeddings inputs drifts from the engine's count"
                );
            }
        }
        let span = &self.span;
        span.record("backend", backend.name.as_str());
        span.record(
            "gen_ai.provider.name",
            backend.backend.info().engine.as_str(),
        );
        span.record("gen_ai.response.model", backend.served_model.as_str());
        span.record("gen_ai.usage.input_tokens", prompt);
        span.record("outcome", "ok");
        tracing::info!(parent: span, charged_usd = receipt.charged.usd(), "request settled");
        (usage, receipt.charged)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(guard) = self.guard.take() {
            // Nothing reached the client: nothing is charged.
            guard.settle(Usage::ZERO);
        }
        if !self.recorded {
            self.span.record("outcome", "canceled");
            self.gateway.inner.metrics.request(
                self.tenant.id.as_str(),
                &self.model.name,
                "canceled",
            );
        }
    }
}

impl Gateway {
    /// Embeds `request`'s inputs for `tenant`: the model allow-list, an
    /// estimate of every input (one longer than the context window is
    /// `context_length_exceeded`), the tenant's limits on the total, one
    /// reservation of the total at the model's input price, routing to the
    /// model's backends with retries while the failure allows, and a
    /// charge of the engine's `usage.prompt_tokens` (the estimate when it
    /// gives none) once the answer is in. A failure charges nothing.
    ///
    /// The request's tenant and deadline are set here (the tenant's id;
    /// arrival plus [`Settings::request_timeout`](super::Settings)).
    ///
    /// # Errors
    /// A [`GatewayError`] with the same codes as [`Gateway::generate`]:
    /// `invalid_request` also when no backend of the model serves
    /// embeddings.
    ///
    /// # Cancel safety
    /// Dropping the future, or canceling `cancel`, abandons the engine's
    /// work and charges nothing.
    pub async fn embed(
        &self,
        tenant: &Arc<Tenant>,
        mut request: EmbedRequest,
        cancel: CancelHandle,
    ) -> Result<EmbedResponse, GatewayError> {
        let arrived = Instant::now();
        request.tenant = tenant.id.clone();
        request.deadline = self.inner.settings.request_timeout.map(|t| arrived + t);
        let model_label = request.model.clone();
        let model_attr = self
            .inner
            .models
            .get(&request.model)
            .map_or(UNKNOWN_MODEL, |m| m.name.as_str());
        let span = crate::telemetry::request_span(
            request.id.as_str(),
            tenant.id.as_str(),
            model_attr,
            crate::telemetry::OPERATION_EMBEDDINGS,
            None,
        );
        if let Some(client_id) = &request.client_id {
            span.record("client_request_id", &**client_id);
        }
        let result = self
            .embed_inner(tenant, request, cancel, arrived, span.clone())
            .instrument(span.clone())
            .await;
        if let Err(e) = &result {
            self.refused(&span, tenant, &model_label, e);
        }
        result
    }

    async fn embed_inner(
        &self,
        tenant: &Arc<Tenant>,
        request: EmbedRequest,
        cancel: CancelHandle,
        arrived: Instant,
        span: tracing::Span,
    ) -> Result<EmbedResponse, GatewayError> {
        let active = ActiveGuard::new(&self.inner.active, &request.id);
        let model = self.model_for(tenant, &request.model)?;
        let invalid = |message: String| GatewayError::new(ErrorCode::InvalidRequest, message);
        if request.inputs.is_empty() {
            return Err(invalid("input must hold at least one item".to_owned()));
        }
        if request.dimensions == Some(0) {
            return Err(invalid("dimensions must be at least 1".to_owned()));
        }
        let estimate = estimate(&model, &request.inputs)?;
        let total = estimate.value();
        let permit = self
            .inner
            .limiter
            .admit(tenant, total, arrived)
            .await
            .map_err(super::limit_error)?;
        let reserve = ReserveRequest {
            tenant: tenant.id.clone(),
            request_id: request.id.clone(),
            amount: model.pricing.worst_case(total, 0),
        };
        let ledger: Arc<dyn Ledger> = self.inner.ledger.clone();
        let guard = BudgetGuard::reserve(ledger, &reserve, model.pricing, UsageMeter::new())
            .await
            .map_err(super::ledger_error)?;
        let mut pending = Pending {
            guard: Some(guard),
            gateway: self.clone(),
            tenant: tenant.clone(),
            model: model.clone(),
            estimate,
            arrived,
            span,
            recorded: false,
            _permit: permit,
            _active: active,
        };
        let route_prompt = request.inputs[0].clone();
        let job = EmbedJob {
            tenant: tenant.clone(),
            model,
            request: Arc::new(request),
            route_prompt,
            estimate,
        };
        match attempt::serve(self, &job, &cancel, arrived).await {
            Ok(Served { started, inflight }) => {
                let slot = inflight.slot().clone();
                drop(inflight);
                let (usage, charged) = pending.settle(&started, &slot);
                Ok(EmbedResponse {
                    data: started.data,
                    model: job.model.name.clone(),
                    backend: slot.name.clone(),
                    usage,
                    charged,
                })
            }
            Err(Stop::Final(err) | Stop::Unserved(err)) => {
                // The caller counts the error's code.
                pending.recorded = true;
                Err(err)
            }
        }
    }
}

/// The prompt tokens of every input, summed (exact when each count is);
/// `invalid_request` for a chat input, `context_length_exceeded` for an
/// input longer than the model's context window.
fn estimate(model: &ModelSpec, inputs: &[Prompt]) -> Result<TokenCount, GatewayError> {
    let (mut total, mut exact) = (0u64, true);
    for (i, input) in inputs.iter().enumerate() {
        if matches!(input, Prompt::Chat(_)) {
            return Err(GatewayError::new(
                ErrorCode::InvalidRequest,
                format!("input[{i}]: chat messages cannot be embedded here"),
            ));
        }
        let count = model.counter.count_prompt(input);
        if count.value() > u64::from(model.context_window) {
            return Err(GatewayError::new(
                ErrorCode::ContextLengthExceeded,
                format!(
                    "this model's context window is {} tokens; input[{i}] has {}{} tokens",
                    model.context_window,
                    if count.is_exact() { "" } else { "at most " },
                    count.value(),
                ),
            ));
        }
        total = total.saturating_add(count.value());
        exact &= count.is_exact();
    }
    Ok(if exact {
        TokenCount::Exact(total)
    } else {
        TokenCount::UpperBound(total)
    })
}
