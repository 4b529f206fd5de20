//! [`TenantLimiter`]: every tenant's limits in this process's memory, as
//! token buckets and an in-flight count.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use gateway_core::TenantId;
use tokio::time::Instant;

use super::{AdmitError, LimitError, LimitKind, LimitPermit, Limiter};
use crate::Tenant;

/// A token bucket refilled continuously at `per_minute / 60` per second,
/// holding at most one minute's allowance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateBucket {
    capacity: f64,
    per_sec: f64,
    level: f64,
    last: Instant,
}

impl RateBucket {
    /// A full bucket allowing `per_minute`.
    pub fn new(per_minute: u64, now: Instant) -> Self {
        let capacity = per_minute as f64;
        RateBucket {
            capacity,
            per_sec: capacity / 60.0,
            level: capacity,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.level = (self.level + elapsed * self.per_sec).min(self.capacity);
        self.last = now;
    }

    /// Whether `n` fits now; if not, how long until it would.
    pub fn check(&mut self, n: f64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if n <= self.level {
            return Ok(());
        }
        if n > self.capacity || self.per_sec <= 0.0 {
            // Never fits in one minute's allowance: come back in a minute.
            return Err(Duration::from_secs(60));
        }
        Err(Duration::from_secs_f64((n - self.level) / self.per_sec))
    }

    /// Takes `n` (after a successful [`check`](RateBucket::check)).
    pub fn take(&mut self, n: f64) {
        self.level -= n;
    }
}

#[derive(Debug, Default)]
struct TenantState {
    requests: Option<RateBucket>,
    tokens: Option<RateBucket>,
    inflight: u32,
}

#[derive(Debug, Default)]
struct Shared {
    tenants: Mutex<HashMap<TenantId, TenantState>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, HashMap<TenantId, TenantState>> {
        self.tenants.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl Limiter for TenantLimiter {
    async fn admit(
        &self,
        tenant: &Tenant,
        tokens: u64,
        now: Instant,
    ) -> Result<LimitPermit, AdmitError> {
        TenantLimiter::admit(self, tenant, tokens, now)
            .map(LimitPermit::new)
            .map_err(AdmitError::Limited)
    }
}

/// Enforces every tenant's rate and concurrency limits.
#[derive(Debug, Clone, Default)]
pub struct TenantLimiter {
    shared: Arc<Shared>,
}

/// A tenant's slot of concurrency, held for the life of a request.
#[must_use = "dropping the permit ends the request's slot"]
pub struct TenantPermit {
    shared: Arc<Shared>,
    tenant: TenantId,
}

impl fmt::Debug for TenantPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantPermit")
            .field("tenant", &self.tenant)
            .finish()
    }
}

impl Drop for TenantPermit {
    fn drop(&mut self) {
        if let Some(state) = self.shared.lock().get_mut(&self.tenant) {
            state.inflight = state.inflight.saturating_sub(1);
        }
    }
}

impl TenantLimiter {
    /// No tenants yet; each gets its buckets on first use.
    pub fn new() -> Self {
        TenantLimiter::default()
    }

    /// Admits one request of `tokens` estimated tokens for `tenant`, or
    /// says which limit refused and when to retry. Nothing is consumed on
    /// refusal.
    ///
    /// # Errors
    /// [`LimitError`] naming the limit.
    pub fn admit(
        &self,
        tenant: &Tenant,
        tokens: u64,
        now: Instant,
    ) -> Result<TenantPermit, LimitError> {
        let mut tenants = self.shared.lock();
        let state = tenants.entry(tenant.id.clone()).or_default();
        if let Some(max) = tenant.max_concurrency
            && state.inflight >= max.get()
        {
            return Err(LimitError {
                kind: LimitKind::Concurrency,
                retry_after: Duration::from_secs(1),
            });
        }
        // Check every bucket first, then take from all: a refusal consumes nothing.
        if let Some(rpm) = tenant.requests_per_minute {
            let bucket = state
                .requests
                .get_or_insert_with(|| RateBucket::new(u64::from(rpm.get()), now));
            bucket.check(1.0, now).map_err(|retry_after| LimitError {
                kind: LimitKind::Requests,
                retry_after,
            })?;
        }
        let n = tokens as f64;
        if let Some(tpm) = tenant.tokens_per_minute {
            let bucket = state
                .tokens
                .get_or_insert_with(|| RateBucket::new(tpm.get(), now));
            bucket.check(n, now).map_err(|retry_after| LimitError {
                kind: LimitKind::Tokens,
                retry_after,
            })?;
        }
        if let Some(bucket) = state.requests.as_mut() {
            bucket.take(1.0);
        }
        if let Some(bucket) = state.tokens.as_mut() {
            bucket.take(n);
        }
        state.inflight += 1;
        Ok(TenantPermit {
            shared: self.shared.clone(),
            tenant: tenant.id.clone(),
        })
    }

    /// Requests `tenant` has in flight.
    pub fn inflight(&self, tenant: &TenantId) -> u32 {
        self.shared.lock().get(tenant).map_or(0, |s| s.inflight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    fn tenant(rpm: Option<u32>, tpm: Option<u32>, conc: Option<u32>) -> Tenant {
        Tenant {
            requests_per_minute: rpm.and_then(NonZeroU32::new),
            tokens_per_minute: tpm.and_then(|n| std::num::NonZeroU64::new(u64::from(n))),
            max_concurrency: conc.and_then(NonZeroU32::new),
            ..Tenant::new("t")
        }
    }

    #[tokio::test(start_paused = true)]
    async fn requests_per_minute_refill_over_time() {
        let limiter = TenantLimiter::new();
        let t = tenant(Some(2), None, None);
        let _a = limiter.admit(&t, 0, Instant::now()).unwrap();
        let _b = limiter.admit(&t, 0, Instant::now()).unwrap();
        let err = limiter.admit(&t, 0, Instant::now()).unwrap_err();
        assert_eq!(err.kind, LimitKind::Requests);
        assert_eq!(err.retry_after, Duration::from_secs(30));
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(limiter.admit(&t, 0, Instant::now()).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_per_minute_refuse_without_consuming_requests() {
        let limiter = TenantLimiter::new();
        let t = tenant(Some(10), Some(600), None);
        let _a = limiter.admit(&t, 500, Instant::now()).unwrap();
        let err = limiter.admit(&t, 200, Instant::now()).unwrap_err();
        assert_eq!(err.kind, LimitKind::Tokens);
        // 100 missing at 10 tokens/s.
        assert_eq!(err.retry_after, Duration::from_secs(10));
        // A request larger than a minute's allowance waits a minute.
        assert_eq!(
            limiter
                .admit(&t, 601, Instant::now())
                .unwrap_err()
                .retry_after,
            Duration::from_secs(60)
        );
        // The refused requests took no request tokens: 9 more fit.
        for _ in 0..9 {
            drop(limiter.admit(&t, 0, Instant::now()).unwrap());
        }
        assert_eq!(
            limiter.admit(&t, 0, Instant::now()).unwrap_err().kind,
            LimitKind::Requests
        );
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_permits_return_on_drop() {
        let limiter = TenantLimiter::new();
        let t = tenant(None, None, Some(2));
        let a = limiter.admit(&t, 0, Instant::now()).unwrap();
        let _b = limiter.admit(&t, 0, Instant::now()).unwrap();
        assert_eq!(
            limiter.admit(&t, 0, Instant::now()).unwrap_err().kind,
            LimitKind::Concurrency
        );
        assert_eq!(limiter.inflight(&t.id), 2);
        drop(a);
        assert_eq!(limiter.inflight(&t.id), 1);
        assert!(limiter.admit(&t, 0, Instant::now()).is_ok());
    }
}
