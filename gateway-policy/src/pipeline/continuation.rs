//! Continuing a stream on another backend when its engine fails after the
//! first token: the generation starts again on another of the model's
//! backends from the prompt's token ids followed by the ids already
//! delivered, with `max_tokens` reduced by them, and its output goes on in
//! the same client stream (see [`Continuation`]).

use std::num::NonZeroU32;
use std::sync::Arc;

use gateway_core::{
    CancelHandle, Capability, Delta, GenerateRequest, MediaKind, Prompt, TokenCounter,
};

use super::Gateway;
use super::attempt::{self, AttemptOf, Failed, Head, Job};
use super::capable::Needs;
use crate::pool::BackendSlot;
use crate::route::{RouteRequest, Slo};
use crate::{ModelSpec, Tenant};

/// Whether, and how often, a model's streams go on on another backend when
/// their engine fails after the first token
/// ([`GatewayBuilder::continuation`](super::GatewayBuilder::continuation);
/// the config file's `continue_on_failure` and `max_continuations`).
///
/// A stream continues when all of these hold:
///
/// - the failure is the engine's, after the first token
///   ([`BackendError::is_continuable`](gateway_core::BackendError::is_continuable): a connection reset or the engine
///   gone, out of memory or KV cache, silent past the idle timeout, a
///   broken stream, an error of its own), not the request's (its
///   deadline, values or size), a cancel, or a configuration mismatch;
/// - the request has continued fewer than `max_continuations` times;
/// - the prompt's token ids are known exactly: a token-id prompt, a text
///   or chat prompt rendered by the model's tokenizer and chat template,
///   or the ids the engine reports for it (vLLM's `prompt_token_ids`, on
///   the stream's first delta); when both the gateway's and the engine's
///   are known they must be equal; and the prompt has no media;
/// - the engine gave the id of every token delivered so far
///   ([`ContinuationIds::Exact`]; vLLM does, asked with
///   `return_token_ids`, and SGLang's native route), or the model's
///   tokenizer tokenizes the delivered text again
///   ([`ContinuationIds::Retokenize`], not token-exact);
/// - the output so far is text only (no reasoning, tool calls, refusal or
///   logprobs) and the request has no tools: a continuation is a
///   completion from token ids, which the engine's chat parsers do not
///   see;
/// - the engine had not yet sent its usage, and `max_tokens` is not
///   reached.
///
/// The continuation is routed like the request (the same admission and
/// budget reservation, the model's fair queue), never to a backend that
/// already failed it; one that fails before its first token is tried on
/// the next backend. It is the prompt's ids followed by the delivered ids
/// as a token-id prompt, `max_tokens` less what was delivered, the same
/// sampling, pass-through fields and deadline. The client's stream goes on
/// with no gap and nothing repeated: no second role chunk, one usage (the
/// original prompt's tokens, and every completion token the client
/// received), one end. The tenant is charged each delivered token once and
/// the prompt once; the continuation's prefill is the operator's cost
/// (`gateway_continuation_prefill_tokens_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Continuation {
    /// Most continuations of one request.
    pub max_continuations: NonZeroU32,
    /// Where the delivered tokens' ids come from.
    pub ids: ContinuationIds,
}

impl Continuation {
    /// Up to `max_continuations` continuations, from the engine's exact ids.
    pub const fn new(max_continuations: NonZeroU32) -> Self {
        Continuation {
            max_continuations,
            ids: ContinuationIds::Exact,
        }
    }

    /// Sets where the delivered tokens' ids come from.
    #[must_use]
    pub const fn with_ids(mut self, ids: ContinuationIds) -> Self {
        self.ids = ids;
        self
    }
}

/// Where a continuation's delivered token ids come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ContinuationIds {
    /// The ids the engine gave with each delivered token; a stream whose
    /// engine left any out does not continue.
    #[default]
    Exact,
    /// The engine's ids when it gave every one; else the delivered text
    /// tokenized again by the model's tokenizer
    /// ([`TokenCounter::encode_text`](gateway_core::TokenCounter::encode_text)).
    /// Not token-exact: text does not always tokenize back to the tokens
    /// that were generated, so the continuation may differ from what the
    /// failed engine would have written, and the engine's prompt count
    /// differs from the original prompt plus the tokens delivered. A model
    /// without a tokenizer does not continue either way.
    Retokenize,
}

impl ContinuationIds {
    /// The config file's name (`exact`, `retokenize`).
    pub const fn as_str(self) -> &'static str {
        match self {
            ContinuationIds::Exact => "exact",
            ContinuationIds::Retokenize => "retokenize",
        }
    }
}

/// Why a stream does not continue (a bounded set: logged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NoContinuation {
    PromptIdsUnknown,
    Tools,
    StructuredOutput,
    MissingIds,
    Limit,
    UsageSeen,
    CapReached,
    PromptMismatch,
    Media,
}

impl NoContinuation {
    pub(super) const fn as_str(self) -> &'static str {
        match self {
            NoContinuation::PromptIdsUnknown => "the prompt's token ids are not known exactly",
            NoContinuation::Tools => "the request has tools",
            NoContinuation::StructuredOutput => "the output is not text only",
            NoContinuation::MissingIds => "the engine did not give every delivered token's id",
            NoContinuation::Limit => "max_continuations reached",
            NoContinuation::UsageSeen => "the engine had already sent its usage",
            NoContinuation::CapReached => "max_tokens reached",
            NoContinuation::Media => "the prompt has media",
            NoContinuation::PromptMismatch => {
                "the engine's prompt token ids differ from the gateway's rendering"
            }
        }
    }
}

/// A request's continuation state, kept by its pump.
pub(super) struct Resume {
    pub(super) gateway: Gateway,
    policy: Continuation,
    pub(super) tenant: Arc<Tenant>,
    pub(super) request: Arc<GenerateRequest>,
    prompt_ids: Option<Arc<[u32]>>,
    /// The ids of every token relayed to the client so far (while the
    /// engine gave them all).
    delivered: Vec<u32>,
    /// The text relayed so far, kept when the ids may be retokenized.
    text: String,
    /// A relayed token came without its id.
    missing_ids: bool,
    /// The first delta was seen (the only one that may carry the engine's
    /// prompt ids for the original prompt).
    first_seen: bool,
    /// Set once the stream can no longer continue, whatever happens.
    blocked: Option<NoContinuation>,
    /// Backends whose stream of this request failed after its first token.
    pub(super) failed: Vec<String>,
    /// Continuations started.
    pub(super) continued: u32,
    /// Their prompt tokens, summed.
    pub(super) prefill: u64,
}

impl Resume {
    /// The state for a request on `model`, `None` when the model's streams
    /// do not continue.
    pub(super) fn new(
        gateway: &Gateway,
        model: &ModelSpec,
        tenant: Arc<Tenant>,
        request: Arc<GenerateRequest>,
        prompt_ids: Option<Arc<[u32]>>,
    ) -> Option<Resume> {
        let policy = *gateway.inner.continuations.get(&model.name)?;
        let media = match &request.prompt {
            Prompt::Chat(messages) => messages.iter().any(|m| {
                [MediaKind::Image, MediaKind::Audio, MediaKind::Video]
                    .into_iter()
                    .any(|kind| m.media_count(kind) > 0)
            }),
            Prompt::Text(_) | Prompt::Tokens(_) => false,
        };
        let needs = request.needs;
        let blocked = if request.tools.is_some() || needs.contains(Capability::Tools) {
            Some(NoContinuation::Tools)
        } else if needs.contains(Capability::StructuredOutput)
            || needs.contains(Capability::Logprobs)
        {
            // A grammar or logprobs would start again mid-answer.
            Some(NoContinuation::StructuredOutput)
        } else if media {
            Some(NoContinuation::Media)
        } else if prompt_ids.is_none() {
            Some(NoContinuation::PromptIdsUnknown)
        } else {
            None
        };
        Some(Resume {
            gateway: gateway.clone(),
            policy,
            tenant,
            request,
            prompt_ids,
            delivered: Vec::new(),
            text: String::new(),
            missing_ids: false,
            first_seen: false,
            blocked,
            failed: Vec::new(),
            continued: 0,
            prefill: 0,
        })
    }

    /// Notes a delta relayed to the client.
    pub(super) fn observe(&mut self, delta: &Delta) {
        if !std::mem::replace(&mut self.first_seen, true)
            && let Some(engine) = &delta.prompt_token_ids
        {
            self.check_prompt(engine);
        }
        if self.blocked.is_some() {
            return;
        }
        if delta.has_structured_output() {
            self.blocked = Some(NoContinuation::StructuredOutput);
            return;
        }
        if self.policy.ids == ContinuationIds::Retokenize {
            self.text.push_str(&delta.text);
        }
        if delta.token_ids.len() != delta.tokens as usize {
            self.missing_ids = true;
            self.delivered.clear();
            if self.policy.ids == ContinuationIds::Exact {
                self.blocked = Some(NoContinuation::MissingIds);
            }
        } else if !self.missing_ids {
            self.delivered.extend_from_slice(&delta.token_ids);
        }
    }

    /// The engine's ids of the original prompt (on the first delta): the
    /// prompt a continuation starts from when the gateway's own are not
    /// known; when they are and differ (a chat template or tokenizer that
    /// is not the engine's), the stream does not continue.
    fn check_prompt(&mut self, engine: &Arc<[u32]>) {
        match &self.prompt_ids {
            Some(ours) if ours[..] == engine[..] => {}
            Some(ours) => {
                tracing::warn!(
                    gateway = ours.len(),
                    engine = engine.len(),
                    "the engine's prompt token ids differ from the gateway's rendering; \
                     the stream cannot continue on another backend"
                );
                self.blocked = Some(NoContinuation::PromptMismatch);
            }
            None => {
                self.prompt_ids = Some(engine.clone());
                if self.blocked == Some(NoContinuation::PromptIdsUnknown) {
                    self.blocked = None;
                }
            }
        }
    }

    /// The original prompt's token count, when known exactly.
    pub(super) fn prompt_tokens(&self) -> Option<u64> {
        self.prompt_ids.as_ref().map(|ids| ids.len() as u64)
    }

    /// The continuation of a stream that relayed `received` tokens of its
    /// cap `cap`: the request to start, or why there is none.
    ///
    /// With [`ContinuationIds::Retokenize`] and a token delivered without
    /// its id, the delivered text is tokenized by `counter` (CPU work
    /// bounded by the output so far).
    pub(super) fn next(
        &self,
        received: u64,
        cap: u64,
        usage_seen: bool,
        counter: &dyn TokenCounter,
    ) -> Result<Arc<GenerateRequest>, NoContinuation> {
        if let Some(why) = self.blocked {
            return Err(why);
        }
        if self.continued >= self.policy.max_continuations.get() {
            return Err(NoContinuation::Limit);
        }
        if usage_seen {
            return Err(NoContinuation::UsageSeen);
        }
        let retokenized;
        let delivered: &[u32] = if self.missing_ids {
            // Only with `Retokenize` (`Exact` blocked at the missing id).
            retokenized = counter
                .encode_text(&self.text)
                .ok_or(NoContinuation::MissingIds)?;
            &retokenized
        } else if self.delivered.len() as u64 == received {
            &self.delivered
        } else {
            return Err(NoContinuation::MissingIds);
        };
        let left = cap.saturating_sub(received);
        let Ok(max_tokens) = u32::try_from(left) else {
            return Err(NoContinuation::CapReached);
        };
        if max_tokens == 0 {
            return Err(NoContinuation::CapReached);
        }
        let Some(prompt) = &self.prompt_ids else {
            return Err(NoContinuation::PromptIdsUnknown);
        };
        let mut ids = Vec::with_capacity(prompt.len() + delivered.len());
        ids.extend_from_slice(prompt);
        ids.extend_from_slice(delivered);
        let mut request = (*self.request).clone();
        request.prompt = Prompt::Tokens(ids);
        request.max_tokens = max_tokens;
        request.tools = None;
        Ok(Arc::new(request))
    }
}

/// One continuation routed like a request: on the model's backends other
/// than those that failed it.
pub(super) struct ContinueJob<'a> {
    pub(super) model: &'a ModelSpec,
    pub(super) tenant: &'a Tenant,
    pub(super) request: Arc<GenerateRequest>,
    pub(super) failed: &'a [String],
    pub(super) span: &'a tracing::Span,
    /// How many leading ids the routing policy wants.
    pub(super) want_prefix: usize,
    /// The model's latency targets.
    pub(super) slo: Slo,
}

impl ContinueJob<'_> {
    fn prompt_len(&self) -> u64 {
        match &self.request.prompt {
            Prompt::Tokens(ids) => ids.len() as u64,
            Prompt::Chat(_) | Prompt::Text(_) => 0,
        }
    }
}

impl Job for ContinueJob<'_> {
    type Started = (Head, CancelHandle);

    fn model(&self) -> &ModelSpec {
        self.model
    }

    fn tenant(&self) -> &Tenant {
        self.tenant
    }

    fn route(&self) -> RouteRequest<'_> {
        let prefix = match &self.request.prompt {
            Prompt::Tokens(ids) if self.want_prefix > 0 => {
                Some(&ids[..ids.len().min(self.want_prefix)])
            }
            Prompt::Tokens(_) | Prompt::Chat(_) | Prompt::Text(_) => None,
        };
        RouteRequest {
            model: &self.model.name,
            prompt: &self.request.prompt,
            prefix_tokens: prefix,
            class: self.request.latency_class,
            prompt_tokens: u32::try_from(self.prompt_len()).unwrap_or(u32::MAX),
            slo: self.slo,
        }
    }

    fn queue_cost(&self) -> u64 {
        self.prompt_len()
            .saturating_add(u64::from(self.request.max_tokens))
    }

    fn excludes(&self, name: &str) -> bool {
        self.failed.iter().any(|f| f == name)
    }

    /// The request's own needs, and a window for the prompt with the
    /// delivered tokens.
    fn needs(&self) -> Option<Needs> {
        Some(Needs {
            capabilities: self.request.needs,
            prompt: self.prompt_len(),
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
            model: self.model,
            estimate: self.prompt_len(),
            arrived: None,
            span: self.span,
        };
        attempt::attempt(gateway, of, slot, cancel).await
    }
}
