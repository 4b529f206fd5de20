//! Per-tenant limits: requests per minute and tokens per minute as token
//! buckets, and concurrency as a permit held for the request's life.
//!
//! [`TenantLimiter`] keeps them in this process; [`RedisLimiter`] (feature
//! `redis`) keeps them in Redis, shared by every gateway replica that uses
//! the same Redis and key prefix. Both implement [`Limiter`], the trait the
//! pipeline calls.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use crate::Tenant;

mod memory;
#[cfg(feature = "redis")]
mod redis;

pub use self::memory::{RateBucket, TenantLimiter, TenantPermit};
#[cfg(feature = "redis")]
pub use self::redis::{RedisLimiter, RedisLimiterConfig, RedisLimiterStats};

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// Requests per minute.
    Requests,
    /// Tokens per minute.
    Tokens,
    /// Requests in flight.
    Concurrency,
}

/// A refusal by a tenant limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?} limit reached; retry after {retry_after:?}")]
pub struct LimitError {
    /// The limit.
    pub kind: LimitKind,
    /// When the request would fit.
    pub retry_after: Duration,
}

/// Why a [`Limiter`] did not admit a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    /// A limit refused it (429 `rate_limit_exceeded` with `Retry-After`).
    #[error(transparent)]
    Limited(#[from] LimitError),
    /// The limiter could not decide: its store (Redis) is unreachable or
    /// answered with an error. The request is refused: 503
    /// `limiter_unavailable` with `Retry-After` (the gateway fails closed,
    /// as it does when the ledger is unavailable).
    #[error("limiter unavailable: {0}")]
    Unavailable(String),
}

/// Admits or refuses a tenant's request by its limits. The default is
/// [`TenantLimiter`]; [`RedisLimiter`] shares the limits between replicas;
/// a host can plug in its own.
#[async_trait::async_trait]
pub trait Limiter: Send + Sync + fmt::Debug + 'static {
    /// Admits one request of `tokens` estimated tokens, or says which limit
    /// refused and when to retry. The permit is held for the request's
    /// life. `now` is the request's arrival on this process's clock; a
    /// shared limiter may use its store's clock instead.
    ///
    /// # Errors
    /// [`AdmitError::Limited`] naming the limit, or
    /// [`AdmitError::Unavailable`] when the limiter cannot decide.
    async fn admit(
        &self,
        tenant: &Tenant,
        tokens: u64,
        now: Instant,
    ) -> Result<LimitPermit, AdmitError>;
}

/// A request's hold on its limits; dropping it releases them.
#[must_use = "dropping the permit releases the request's limits"]
pub struct LimitPermit {
    /// Held only for its `Drop`.
    _guard: Box<dyn Send + Sync>,
}

impl LimitPermit {
    /// Wraps a guard whose `Drop` releases what the limiter took.
    pub fn new(guard: impl Send + Sync + 'static) -> Self {
        LimitPermit {
            _guard: Box::new(guard),
        }
    }
}

impl fmt::Debug for LimitPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LimitPermit")
    }
}
