//! The `sim` engine: an in-process [`Backend`] that behaves like a GPU
//! inference engine, deterministically.
//!
//! # Model
//!
//! - **Slots and queue.** At most [`slots`](SimConfig::slots) requests run
//!   at once; up to [`queue_capacity`](SimConfig::queue_capacity) more wait
//!   in a first-come-first-served queue; beyond that `start` refuses with
//!   [`Overloaded`](FailureKind::Overloaded) and a `retry_after` hint.
//!   Queued requests are accepted: `start` returns their stream at once.
//! - **Phases.** A request is [`Queued`](EnginePhase::Queued) until it gets
//!   a slot, then in [`Prefill`](EnginePhase::Prefill) for
//!   `base_latency + prompt_tokens / prefill_tokens_per_sec` — the first
//!   token comes at the end of prefill — then in
//!   [`Decode`](EnginePhase::Decode), one decode step of
//!   `1 / decode_tokens_per_sec` per further token (or per group of tokens
//!   with [speculative decoding](Speculative)).
//! - **KV cache.** A request takes its prompt's tokens from the KV cache
//!   when prefill begins and one more per generated token, and gives all
//!   back when it ends, however it ends. A prompt larger than the whole
//!   cache is refused at `start`; one that does not fit at prefill time,
//!   or a token that does not fit during decode, ends the stream with
//!   [`OutOfMemory`](FailureKind::OutOfMemory).
//! - **Text.** One token is one piece of the [`VOCABULARY`], drawn from a
//!   seed mixed of [`SimConfig::seed`], the request's `sampling.seed` and
//!   its prompt: the same request gives the same text and length.
//! - **Events.** `Started` (prompt tokens counted by the request's
//!   [`TokenCounter`](gateway_core::TokenCounter), 0 cached), one `Delta`
//!   per step, then `Usage` and `Finished(Stop)` at the natural end or
//!   `Finished(Length)` at the budget's cap; or an error that ends the
//!   stream, in phase `AfterFirstToken` once a `Delta` was sent.
//! - **Backpressure.** Each request runs in its own task and sends through
//!   a small bounded channel, so a consumer that stops reading stalls its
//!   request's engine work, not the others'.
//! - **Cancellation.** Canceling the handle, dropping the stream or
//!   [`Backend::abort`] stops the request in whatever phase it is; the
//!   stream ends with one [`Canceled`](FailureKind::Canceled) error and the
//!   abort is counted in that phase ([`SimBackend::aborts`]).
//! - **Deadline.** Past the budget's deadline the stream ends with
//!   [`TotalTimeout`](FailureKind::TotalTimeout).
//! - **Faults.** A [`FaultPlan`] makes chosen requests fail, stall or break
//!   off; it can be swapped at runtime with [`SimBackend::set_faults`].

mod config;
mod engine;
mod fault;
mod state;
mod text;

use std::sync::Arc;

use gateway_core::{
    AbortCounts, Backend, BackendError, BackendInfo, BackendRequest, CancelHandle, CancelReason,
    EngineKind, EnginePhase, FailureKind, FinishReason, Health, Pressure, RequestId, Started,
    TokenEvent, TokenStream, async_trait,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The extra fields the sim takes (and ignores): OpenAI's, and the common
/// sampling extras of the engines it stands in for.
pub const FIELDS: crate::openai::pass_through::EngineFields =
    crate::openai::pass_through::EngineFields {
        openai: true,
        chat: SIM_EXTRA,
        completions: SIM_EXTRA,
    };

const SIM_EXTRA: &[&str] = &[
    "top_k",
    "min_p",
    "repetition_penalty",
    "ignore_eos",
    "min_tokens",
    "stop_token_ids",
];

pub use config::{SimConfig, Speculative};
pub use fault::{Fault, FaultPlan, FaultRule, FaultTrigger};
pub use state::SimStats;
pub use text::{VOCABULARY, token_text};

use engine::Job;
use state::Shared;
use text::{RequestRng, prompt_hash};

/// The simulated engine. Cheap to clone: clones share one engine, so a
/// test can keep one to inspect while the gateway owns another.
///
/// Needs a Tokio runtime with the time driver (each accepted request runs
/// in a spawned task).
#[derive(Debug, Clone)]
pub struct SimBackend {
    shared: Arc<Shared>,
}

impl SimBackend {
    /// An engine with `config`.
    pub fn new(config: SimConfig) -> Self {
        let info = BackendInfo {
            name: config.name.clone(),
            engine: EngineKind::Sim,
            models: config.models.clone(),
        };
        SimBackend {
            shared: Arc::new(Shared::new(config, info)),
        }
    }

    /// The configuration it was built with (its fault plan is the initial
    /// one; see [`faults`](SimBackend::faults) for the current one).
    pub fn config(&self) -> &SimConfig {
        &self.shared.config
    }

    /// Replaces the fault plan for requests started from now on.
    pub fn set_faults(&self, plan: FaultPlan) {
        self.shared.set_faults(plan);
    }

    /// The current fault plan.
    pub fn faults(&self) -> FaultPlan {
        FaultPlan::clone(&self.shared.faults())
    }

    /// Sets what [`Backend::health`] answers (requests are served either
    /// way; use faults to make them fail).
    pub fn set_health(&self, health: Health) {
        self.shared.set_health(health);
    }

    /// Aborted requests per phase they were in when the cancel was seen.
    pub fn aborts(&self) -> AbortCounts {
        self.shared.aborts()
    }

    /// The phase of the live request `id`, if there is one.
    pub fn phase(&self, id: &RequestId) -> Option<EnginePhase> {
        self.shared.live.phase(id)
    }

    /// Every live request (queued or running) with its phase, in the order
    /// the requests reached the engine.
    pub fn live(&self) -> Vec<(RequestId, EnginePhase)> {
        self.shared.live.list()
    }

    /// Counters since the engine was built.
    pub fn stats(&self) -> SimStats {
        self.shared.stats()
    }

    /// KV-cache tokens in use now.
    pub fn kv_used(&self) -> u64 {
        self.shared.load().kv_used
    }

    /// `start` without the future: everything it does is synchronous.
    fn start_now(
        &self,
        request: &BackendRequest,
        cancel: &CancelHandle,
    ) -> Result<TokenStream, BackendError> {
        let call = self.shared.count_call();
        let started = self.accept(call, request, cancel);
        if started.is_err() {
            self.shared.count_rejected();
        }
        started
    }

    fn overloaded(&self, message: &str) -> BackendError {
        BackendError::new(FailureKind::Overloaded, message)
            .with_retry_after(self.shared.config.retry_after)
    }

    fn accept(
        &self,
        call: u64,
        request: &BackendRequest,
        cancel: &CancelHandle,
    ) -> Result<TokenStream, BackendError> {
        let config = &self.shared.config;
        let req = &request.request;
        if !self.shared.info.serves(&request.served_model) {
            return Err(BackendError::new(
                FailureKind::ModelNotFound,
                format!(
                    "model `{}` is not served by `{}`",
                    request.served_model, self.shared.info.name
                ),
            ));
        }
        if cancel.is_canceled() {
            let reason = cancel.reason().unwrap_or(CancelReason::Aborted);
            return Err(BackendError::canceled(reason));
        }
        let prompt_tokens = request.counter.count_prompt(&req.prompt).value();
        let cap = request.budget.max_completion_tokens;
        if prompt_tokens.saturating_add(u64::from(cap)) > config.context_window {
            return Err(BackendError::new(
                FailureKind::ContextLengthExceeded,
                format!(
                    "{prompt_tokens} prompt tokens plus {cap} completion tokens exceed the context window of {}",
                    config.context_window
                ),
            ));
        }
        if prompt_tokens > config.kv_capacity_tokens {
            return Err(BackendError::new(
                FailureKind::OutOfMemory,
                format!(
                    "{prompt_tokens} prompt tokens never fit a KV cache of {} tokens",
                    config.kv_capacity_tokens
                ),
            ));
        }
        let fault = self.shared.faults().fault_for(call, &req.prompt);
        if let Some(Fault::FailBeforeFirstToken(kind)) = fault {
            let err = BackendError::new(kind, "injected failure before the first token");
            return Err(match kind {
                FailureKind::Overloaded => err.with_retry_after(config.retry_after),
                _ => err,
            });
        }
        if request.budget.deadline.is_some_and(|d| d <= Instant::now()) {
            return Err(BackendError::new(
                FailureKind::TotalTimeout,
                "the request's deadline passed",
            ));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            BackendError::new(
                FailureKind::Internal,
                "the sim engine needs a Tokio runtime",
            )
            .with_source(e)
        })?;

        let child = cancel.child();
        let Some((admission, live)) = self.shared.admit(&req.id, &child) else {
            return Err(self.overloaded("all slots are busy and the queue is full"));
        };

        let mut rng = RequestRng::new(config.seed, req.sampling.seed, prompt_hash(&req.prompt));
        let (min, max) = config.completion_range();
        let natural = rng.natural_length(min, max);
        let (target, finish) = if natural <= cap {
            (natural, FinishReason::Stop)
        } else {
            (cap, FinishReason::Length)
        };

        let (tx, rx) = mpsc::channel(config.channel_capacity.max(1));
        // The channel is new and holds at least one event: `Started` fits.
        let _ = tx.try_send(Ok(TokenEvent::Started(Started {
            prompt_tokens: Some(prompt_tokens),
            cached_tokens: Some(0),
        })));
        let job = Job {
            shared: self.shared.clone(),
            tx,
            cancel: child.clone(),
            deadline: request.budget.deadline,
            prompt_tokens,
            target,
            finish,
            fault,
            rng,
        };
        runtime.spawn(job.run(admission, live));
        Ok(engine::token_stream(rx, child))
    }
}

#[async_trait]
impl Backend for SimBackend {
    fn info(&self) -> &BackendInfo {
        &self.shared.info
    }

    fn pressure(&self) -> Pressure {
        let config = &self.shared.config;
        let load = self.shared.load();
        let kv_usage = match config.kv_capacity_tokens {
            0 => 0.0,
            capacity => (load.kv_used as f64 / capacity as f64) as f32,
        };
        Pressure {
            running: load.running,
            waiting: load.waiting,
            kv_usage,
            inflight: load.running.saturating_add(load.waiting),
            limit: Some(config.slots),
            updated_at: Some(Instant::now()),
            overloaded: load.running >= config.slots
                && u64::from(load.waiting) >= u64::from(config.queue_capacity),
        }
    }

    async fn start(
        &self,
        request: BackendRequest,
        cancel: CancelHandle,
    ) -> Result<TokenStream, BackendError> {
        self.start_now(&request, &cancel)
    }

    async fn abort(&self, id: &RequestId) -> Result<bool, BackendError> {
        Ok(self.shared.live.abort(id))
    }

    async fn health(&self) -> Health {
        self.shared.health()
    }
}
