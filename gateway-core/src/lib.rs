//! The backend contract of the AI gateway.
//!
//! Every engine adapter implements [`Backend`]; every gateway policy is
//! written against it. The contract is small and strict:
//!
//! - [`Backend::start`] takes a [`BackendRequest`] (the client's
//!   [`GenerateRequest`], the engine's model name, a [`TokenCounter`] and a
//!   [`RequestBudget`]) and a [`CancelHandle`], and resolves once the engine
//!   accepted the request;
//! - the [`TokenStream`] yields [`TokenEvent`]s in a fixed order —
//!   `Started`, `Delta`*, `Usage`?, `Finished` — or ends with a
//!   [`BackendError`] whose [`FailureKind`] and [`FailurePhase`] decide
//!   retry, HTTP status and breaker blame through the one
//!   [`error_table`] ([`EventOrder`] checks the order);
//! - canceling the handle or dropping the stream stops the engine's work in
//!   every phase;
//! - [`Backend::pressure`] is a cheap [`Pressure`] snapshot for routing and
//!   admission;
//! - [`Usage`] counts prompt, cached, completion, speculative (drafted,
//!   accepted, rejected) and canceled tokens apart, with its invariants
//!   enforced by construction;
//! - a [`BudgetGuard`] holds money in a [`Ledger`] and settles exactly once:
//!   by [`BudgetGuard::settle`] (which consumes it) or, if dropped, from its
//!   [`UsageMeter`].
//!
//! [`live`] has the building blocks every conformant backend needs: the
//! registry of live requests behind `abort(id)`, the in-flight count and
//! the engine phases ([`LiveRequests`]), and [`LiveGuard::track`], which
//! turns an engine's events into a stream that keeps the cancel, deadline,
//! cap and error-phase rules. With the `testkit` feature, `testkit` adds a
//! scriptable mock backend and the conformance suite every backend should
//! pass.
//!
//! # Examples
//!
//! The shape of a backend, in its smallest form: one that echoes the prompt
//! one word at a time, started and consumed in-process. It is not
//! conformant (its `abort(id)` finds nothing, it ignores the deadline, and
//! its whole answer exists before anyone reads it); the example of [`live`]
//! is a backend that passes the conformance kit.
//!
//! ```
//! use std::sync::Arc;
//! use futures::StreamExt;
//! use gateway_core::*;
//!
//! #[derive(Debug)]
//! struct Echo(BackendInfo);
//!
//! #[async_trait]
//! impl Backend for Echo {
//!     fn info(&self) -> &BackendInfo { &self.0 }
//!     fn pressure(&self) -> Pressure { Pressure::default() }
//!     async fn start(&self, req: BackendRequest, cancel: CancelHandle)
//!         -> Result<TokenStream, BackendError>
//!     {
//!         let Prompt::Text(text) = &req.request.prompt else {
//!             return Err(BackendError::new(FailureKind::InvalidRequest, "text prompts only"));
//!         };
//!         let prompt_tokens = req.counter.count_prompt(&req.request.prompt).value();
//!         let cap = req.budget.max_completion_tokens as usize;
//!         let words: Vec<String> = text.split(' ').map(|w| format!("{w} ")).collect();
//!         let finish = if words.len() > cap { FinishReason::Length } else { FinishReason::Stop };
//!         let delivered = words.len().min(cap) as u64;
//!         let mut items = vec![Ok(TokenEvent::Started(Started {
//!             prompt_tokens: Some(prompt_tokens), cached_tokens: None }))];
//!         items.extend(words.into_iter().take(cap).map(|w| Ok(TokenEvent::Delta(Delta::text(w, 1)))));
//!         items.push(Ok(TokenEvent::Usage(Usage::new(prompt_tokens, delivered))));
//!         items.push(Ok(TokenEvent::Finished(finish)));
//!         Ok(TokenStream::from_items(items).cancel_on_drop(cancel))
//!     }
//!     async fn abort(&self, _id: &RequestId) -> Result<bool, BackendError> { Ok(false) }
//!     async fn health(&self) -> Health { Health::Healthy }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let backend: Arc<dyn Backend> = Arc::new(Echo(BackendInfo {
//!     name: "echo-0".into(), engine: EngineKind::Custom, models: vec!["echo".into()],
//! }));
//! let request = GenerateRequest::new("echo", Prompt::Text("hello there world".into()), 2);
//! let counter: Arc<dyn TokenCounter> = Arc::new(ByteBound::default());
//! let guard = CancelHandle::guarded(); // dropping it cancels the request
//! let mut stream = backend.start(BackendRequest::new(request, counter), guard.handle().clone()).await.unwrap();
//!
//! let (mut text, mut order) = (String::new(), EventOrder::new());
//! while let Some(item) = stream.next().await {
//!     let event = item.unwrap();
//!     order.observe(&event).unwrap();
//!     match event {
//!         TokenEvent::Delta(d) => text.push_str(&d.text),
//!         TokenEvent::Usage(u) => assert_eq!((u.prompt(), u.completion()), (19, 2)),
//!         TokenEvent::Finished(reason) => assert_eq!(reason, FinishReason::Length),
//!         TokenEvent::Started(_) => {}
//!     }
//! }
//! assert_eq!(text, "hello there ");
//! # }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod backend;
mod budget;
mod cancel;
mod capability;
mod counter;
mod embed;
mod error;
pub mod error_table;
mod event;
pub mod live;
mod meter;
mod money;
mod packed;
mod phase;
mod pressure;
mod request;
pub mod rng;
mod stream;
mod usage;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use backend::{Backend, BackendInfo, BackendRequest, EngineKind, Health, RequestBudget};
pub use budget::{
    BudgetGuard, Charge, Ledger, LedgerError, Receipt, Reservation, ReserveRequest, SettleOutcome,
};
pub use cancel::{CancelGuard, CancelHandle, CancelReason};
pub use capability::{Capabilities, Capability};
pub use counter::{
    ByteBound, CHAT_TEMPLATE_KWARGS, ChatInputs, CounterCacheStats, TokenCount, TokenCounter,
    tools_allowance,
};
pub use embed::{
    EmbedAttempt, EmbedRequest, Embedding, EmbeddingVector, Embeddings, EncodingFormat,
    base64_decode, base64_encode,
};
pub use error::{BackendError, FailureKind, FailurePhase};
pub use error_table::{Blame, ErrorCode};
pub use event::{
    Delta, EventOrder, FinishReason, OrderViolation, ReasoningField, Started, TokenEvent,
    TokenLogprob, ToolCallDelta, TopLogprob,
};
pub use live::{LiveAttempt, LiveGuard, LiveRequests};
pub use meter::UsageMeter;
pub use money::{Money, PriceError, Pricing};
pub use packed::PackedResult;
pub use phase::{AbortCounts, EnginePhase};
pub use pressure::Pressure;
pub use request::{
    ChatMessage, ContentPart, GenerateRequest, LatencyClass, MediaKind, MediaPart, Prompt,
    RequestId, Role, SamplingParams, TenantId, ToolCall,
};
pub use stream::{TokenResult, TokenStream};
pub use usage::{Usage, UsageError};

pub use async_trait::async_trait;
pub use bytes::Bytes;
pub use http;
