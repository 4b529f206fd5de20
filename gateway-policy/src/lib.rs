//! Gateway policies and the request pipeline, written against the
//! `gateway-core` contract.
//!
//! The [`Gateway`] runs each request through: authenticate
//! ([`Authenticator`], default [`StaticKeys`]: SHA-256 hashes compared in
//! constant time) -> check the model and the tenant's allow-list ->
//! estimate prompt tokens ([`ModelSpec::counter`]: exact with
//! [`HfTokenCounter`] when a `tokenizer.json` is configured, else
//! [`gateway_core::ByteBound`]) -> tenant limits ([`TenantLimiter`]; shared
//! by replicas with `RedisLimiter`, feature `redis`) ->
//! reserve the worst-case cost in the ledger ([`MemoryLedger`] by default)
//! -> route to the least-loaded healthy backend ([`route::rank`]) -> start,
//! retrying other backends while nothing reached the client -> stream
//! through a bounded buffer with idle and client-stall timeouts -> settle
//! exactly once -> metrics ([`Metrics`]).
//!
//! # Examples
//!
//! ```
//! use std::sync::Arc;
//! use futures::StreamExt;
//! use gateway_core::testkit::MockBackend;
//! use gateway_core::*;
//! use gateway_policy::*;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let (mock, _handle) = MockBackend::new("mock-0", "tiny");
//! let gateway = Gateway::builder(Settings::default())
//!     .tenant_with_api_key(Tenant::new("team-a").with_budget_usd(10.0).unwrap(), "sk-a")
//!     .model(
//!         ModelSpec::new("tiny", 4096)
//!             .with_pricing(Pricing::per_million(1.0, None, 2.0).unwrap())
//!             .with_default_max_tokens(64),
//!     )
//!     .backend(Arc::new(mock), "tiny", "tiny", None)
//!     .build()
//!     .unwrap();
//!
//! let tenant = gateway.authenticate(Some("sk-a")).unwrap();
//! // Dropping the guard cancels the request (the client left): keep it.
//! let guard = gateway.request_cancel();
//! let request = ClientRequest::with_generated_id("tiny", Prompt::Text("hi".into()));
//! let mut stream = gateway.generate(&tenant, request, guard.handle().clone()).await.unwrap();
//! let mut text = String::new();
//! while let Some(Ok(event)) = stream.next().await {
//!     if let TokenEvent::Delta(d) = event { text.push_str(&d.text) }
//! }
//! assert_eq!(text, "Hello, world");
//! # }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod admission;
mod auth;
#[cfg(feature = "tokenizers")]
mod chat_template;
mod error;
pub mod health;
#[cfg(feature = "tokenizers")]
mod hf_counter;
mod ledger;
mod limits;
pub mod metrics;
mod model;
mod pipeline;
mod pool;
#[cfg(feature = "redis")]
mod redis_shared;
pub mod route;
#[cfg(feature = "tokenizers")]
mod segment_cache;
pub mod telemetry;
mod tenant;
mod tokenizer_pool;

pub use auth::{Authenticator, StaticKeys, key_hash};
#[cfg(feature = "tokenizers")]
pub use chat_template::{ChatTemplate, RESERVED_TEMPLATE_KWARGS, TemplateError};
pub use error::{ErrorCode, GatewayError};
#[cfg(feature = "tokenizers")]
pub use hf_counter::{HfTokenCounter, TokenizerError};
pub use ledger::{AccountLedger, MemoryLedger, TenantAccount};
#[cfg(feature = "redis")]
pub use ledger::{RedisAccount, RedisLedger, RedisLedgerConfig, RedisLedgerStats};
pub use limits::{
    AdmitError, LimitError, LimitKind, LimitPermit, Limiter, RateBucket, TenantLimiter,
    TenantPermit,
};
#[cfg(feature = "redis")]
pub use limits::{RedisLimiter, RedisLimiterConfig, RedisLimiterStats};
pub use metrics::{EdgeReason, EdgeRejections, Metrics};
pub use model::{MediaCosts, ModelSpec};
pub use pipeline::{
    BuildError, ClientRequest, Continuation, ContinuationIds, DrainReport, EmbedResponse, Gateway,
    GatewayBuilder, GatewayStream, ModelReference, Settings, UNAUTHENTICATED, UNKNOWN_MODEL,
};
pub use pool::{BackendSlot, InflightGuard};
#[cfg(feature = "tokenizers")]
pub use segment_cache::TokenizerCacheStats;
pub use tenant::Tenant;
pub use tokenizer_pool::{
    DEFAULT_INLINE_BYTES, DEFAULT_QUEUE, DEFAULT_TOKENIZER_CACHE_BYTES, PoolError, TokenizerPool,
};
