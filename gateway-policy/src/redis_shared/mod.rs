//! What the Redis ledger (`ledger/redis.rs`) and the Redis limiter
//! (`limits/redis.rs`) share: the connection ([`Connection`]) and the
//! instance number ([`incr_instance`]), the handle that owns a bounded
//! queue of background operations and its tasks ([`Background`]), the
//! retry of an operation while Redis cannot be reached ([`retry`]), and
//! the counters behind their stats ([`Counter`]).
//!
//! The keys, the Lua scripts and what the operations do stay in each
//! module.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use redis::{RedisError, RetryMethod};
use tokio::time::Instant;

mod background;
mod conn;

pub(crate) use self::background::{Background, Sender, Worker};
pub(crate) use self::conn::{Connection, incr_instance};

/// Locks `m`, ignoring poisoning (the data stays consistent: every
/// critical section is a single insert, remove or read).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `d` in whole milliseconds, at least 1 (a script's TTL argument).
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Whether the error is about reaching Redis (worth retrying an
/// idempotent operation), not about the operation.
pub(crate) fn retryable(e: &RedisError) -> bool {
    !matches!(e.retry_method(), RetryMethod::NoRetry)
}

/// Whether the error says Redis cannot be reached now (not that the
/// operation is wrong).
pub(crate) fn unreachable(e: &RedisError) -> bool {
    retryable(e) || e.is_timeout() || e.is_io_error() || e.is_connection_dropped()
}

/// Runs `attempt` until it answers or fails for good. An error about
/// reaching Redis ([`retryable`]) is retried after a backoff of 20 ms,
/// doubling up to `max_backoff`, as long as the first attempt started less
/// than `retry_for` before the retry would; `on_retry` sees each error
/// that is retried, before the backoff.
///
/// # Errors
/// The last error, when it is not retryable or `retry_for` has passed.
pub(crate) async fn retry<T, F, Fut>(
    retry_for: Duration,
    max_backoff: Duration,
    mut attempt: F,
    mut on_retry: impl FnMut(&RedisError),
) -> Result<T, RedisError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, RedisError>>,
{
    let started = Instant::now();
    let mut backoff = Duration::from_millis(20);
    loop {
        match attempt().await {
            Err(e) if retryable(&e) && started.elapsed() + backoff < retry_for => {
                on_retry(&e);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(max_backoff);
            }
            result => return result,
        }
    }
}

/// A counter behind a stats field.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one.
    pub(crate) fn bump(&self) {
        self.add(1);
    }

    /// The count.
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_are_whole_and_at_least_one() {
        assert_eq!(millis(Duration::from_micros(1500)), 1);
        assert_eq!(millis(Duration::ZERO), 1);
        assert_eq!(millis(Duration::from_secs(30)), 30_000);
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_backs_off_until_the_deadline() {
        let io = || RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let started = Instant::now();
        let mut attempts = 0u32;
        let mut retried = 0u32;
        let result: Result<(), RedisError> = retry(
            Duration::from_millis(500),
            Duration::from_millis(100),
            || {
                attempts += 1;
                std::future::ready(Err(io()))
            },
            |_| retried += 1,
        )
        .await;
        assert!(result.is_err());
        // Backoffs 20, 40, 80, then 100 (capped) at 140, 240 and 340: the
        // attempt at 440 fails and 440 + 100 is past 500, so it is the last.
        assert_eq!((attempts, retried), (7, 6));
        assert_eq!(started.elapsed(), Duration::from_millis(440));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_stops_at_an_error_about_the_operation() {
        let mut attempts = 0u32;
        let result: Result<(), RedisError> = retry(
            Duration::from_secs(60),
            Duration::from_secs(2),
            || {
                attempts += 1;
                std::future::ready(Err(RedisError::from((
                    redis::ErrorKind::Client,
                    "bad reply",
                ))))
            },
            |_| {},
        )
        .await;
        assert!(result.is_err());
        assert_eq!(attempts, 1);
    }

    #[test]
    fn counters_count() {
        let c = Counter::default();
        c.bump();
        c.add(4);
        assert_eq!(c.get(), 5);
    }
}
