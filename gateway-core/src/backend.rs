//! The [`Backend`] trait and what it takes and tells.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::{
    BackendError, CancelHandle, EmbedAttempt, Embeddings, GenerateRequest, Pressure, RequestId,
    TokenCounter, TokenStream,
};

/// Which engine a backend speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EngineKind {
    /// The in-process simulated engine.
    Sim,
    /// vLLM's OpenAI-compatible server.
    Vllm,
    /// SGLang.
    Sglang,
    /// TensorRT-LLM's `trtllm-serve`.
    TrtLlm,
    /// Triton Inference Server with a TensorRT-LLM model.
    Triton,
    /// NVIDIA NIM for LLMs.
    Nim,
    /// NVIDIA Dynamo's frontend.
    Dynamo,
    /// Any OpenAI-compatible server.
    OpenAi,
    /// A backend written by the host application.
    Custom,
}

impl EngineKind {
    /// The name used in config files and labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            EngineKind::Sim => "sim",
            EngineKind::Vllm => "vllm",
            EngineKind::Sglang => "sglang",
            EngineKind::TrtLlm => "trtllm",
            EngineKind::Triton => "triton",
            EngineKind::Nim => "nim",
            EngineKind::Dynamo => "dynamo",
            EngineKind::OpenAi => "openai",
            EngineKind::Custom => "custom",
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a backend is: its name, engine and the public models it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendInfo {
    /// Unique name (from config), used in labels.
    pub name: String,
    /// The engine behind it.
    pub engine: EngineKind,
    /// Public model names it serves.
    pub models: Vec<String>,
}

impl BackendInfo {
    /// Whether it serves `model`.
    pub fn serves(&self, model: &str) -> bool {
        self.models.iter().any(|m| m == model)
    }
}

/// Limits one attempt must keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestBudget {
    /// Hard cap on completion tokens: the request's `max_tokens`, lowered
    /// by what the tenant's money allows. The backend never produces more
    /// and finishes with `Length` at the cap.
    pub max_completion_tokens: u32,
    /// When the attempt must be over; past it the backend ends the stream
    /// with [`TotalTimeout`](crate::FailureKind::TotalTimeout).
    pub deadline: Option<Instant>,
}

/// One attempt of a request at one backend.
#[derive(Debug, Clone)]
pub struct BackendRequest {
    /// The request as the client sent it.
    pub request: Arc<GenerateRequest>,
    /// The model name at the engine (may differ from the public name).
    pub served_model: String,
    /// The model's token counter.
    pub counter: Arc<dyn TokenCounter>,
    /// Caps for this attempt.
    pub budget: RequestBudget,
}

impl BackendRequest {
    /// An attempt for `request` at an engine serving it under the same name,
    /// with `max_tokens` as the cap and the request's deadline.
    pub fn new(request: GenerateRequest, counter: Arc<dyn TokenCounter>) -> Self {
        let budget = RequestBudget {
            max_completion_tokens: request.max_tokens,
            deadline: request.deadline,
        };
        BackendRequest {
            served_model: request.model.clone(),
            request: Arc::new(request),
            counter,
            budget,
        }
    }
}

/// A backend's own view of whether it can serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Serving.
    Healthy,
    /// Not serving, and why.
    Unhealthy(String),
}

impl Health {
    /// Whether healthy.
    pub fn is_healthy(&self) -> bool {
        matches!(self, Health::Healthy)
    }
}

/// An inference engine as the gateway sees it.
///
/// Implementations: the adapters in `gateway-adapters`, the `sim` engine,
/// the testkit's `MockBackend`, or your own. [`live`](crate::live) has the
/// parts every one of them needs (the registry of live requests behind
/// `abort`, and a stream wrapper that keeps the cancel, deadline, cap and
/// error-phase rules), and a complete example. Check yours with the
/// conformance kit (feature `testkit`).
#[async_trait::async_trait]
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// Name, engine and models.
    fn info(&self) -> &BackendInfo;

    /// The latest load snapshot. Must not block or do I/O: engines that are
    /// scraped keep the last reading.
    fn pressure(&self) -> Pressure;

    /// Starts an attempt. Resolves once the engine accepted the request
    /// (queued counts as accepted) or refused it; the stream then yields
    /// `Started`, `Delta`*, `Usage`?, `Finished`, or an error.
    ///
    /// # Errors
    /// A [`BackendError`] in phase `BeforeFirstToken` when the engine refused
    /// or could not be reached.
    ///
    /// # Cancel safety
    /// Dropping the future aborts the attempt at the engine. Once started,
    /// canceling `cancel` or dropping the stream stops the engine's work in
    /// every phase (queued, prefill, decode); the stream then ends with one
    /// [`Canceled`](crate::FailureKind::Canceled) error in the right
    /// [`FailurePhase`](crate::FailurePhase), carrying the engine phase the
    /// cancel landed in ([`BackendError::with_engine_phase`]) when the
    /// backend knows it ([`LiveGuard::track`](crate::LiveGuard::track) does
    /// all of this).
    async fn start(
        &self,
        request: BackendRequest,
        cancel: CancelHandle,
    ) -> Result<TokenStream, BackendError>;

    /// Aborts every live attempt of request `id`, as a cancel of its handle
    /// with [`Aborted`](crate::CancelReason::Aborted) would (also one that
    /// drains, see [`drain_on_client_gone`](Backend::drain_on_client_gone)).
    /// Returns whether one was found: `false` for an id this backend does
    /// not hold. [`LiveRequests::abort`](crate::LiveRequests::abort) is this.
    ///
    /// # Errors
    /// A [`BackendError`] if the engine's abort call failed.
    async fn abort(&self, id: &RequestId) -> Result<bool, BackendError>;

    /// Asks the engine whether it can serve.
    async fn health(&self) -> Health;

    /// Whether this backend *drains* instead of aborting when the client
    /// leaves (`on_disconnect = "drain"`), and for how long at most.
    ///
    /// `None` (the default): every cancel aborts, as [`start`](Backend::start)
    /// says. `Some(timeout)`: a cancel with
    /// [`ClientGone`](crate::CancelReason::ClientGone) does not stop an
    /// attempt whose stream has started — the stream goes on yielding
    /// `Delta`*, `Usage`?, `Finished` as if uncanceled, bounded by the
    /// budget's `max_completion_tokens` and by `timeout` from the cancel
    /// (past it the backend closes the connection and ends the stream with a
    /// [`Canceled`](crate::FailureKind::Canceled) error saying the drain was
    /// cut). Any other reason, [`abort`](Backend::abort), and dropping the
    /// stream still abort at once. For hosted APIs that bill the whole
    /// generation anyway: reading it to the end tells the gateway what the
    /// provider charges.
    fn drain_on_client_gone(&self) -> Option<Duration> {
        None
    }

    /// Embeds the request's inputs: one vector per input, in the request's
    /// `encoding_format` (the gateway converts one that comes back in the
    /// other), with the engine's prompt-token count when it gives one.
    ///
    /// The default answers [`Unsupported`](crate::FailureKind::Unsupported)
    /// at once: a backend without embeddings needs nothing, and the gateway
    /// tries the model's other backends.
    ///
    /// # Errors
    /// A [`BackendError`]: `Unsupported` when this backend has no
    /// embeddings, else as for [`start`](Backend::start) (every failure is
    /// before anything reached the client).
    ///
    /// # Cancel safety
    /// Dropping the future, or canceling `cancel`, stops the engine's work
    /// (for an HTTP engine: the connection closes).
    async fn embed(
        &self,
        request: EmbedAttempt,
        cancel: CancelHandle,
    ) -> Result<Embeddings, BackendError> {
        let _ = (request, cancel);
        Err(BackendError::unsupported("embeddings"))
    }
}

// Fails to compile if `Backend` stops being dyn compatible.
const _: fn(&dyn Backend) = |_| {};
