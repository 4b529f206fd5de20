//! [`TokenizerPool`]: prompt tokenization (and the chat template) off the
//! async runtime.
//!
//! Counting a prompt is CPU work proportional to its size: a 1 MiB prompt
//! takes a tokenizer tens to hundreds of milliseconds, during which a
//! runtime worker that ran it inline polls nothing else, so every stream
//! on that worker stalls. The pool runs such work on Tokio's blocking
//! threads, at most `threads` jobs at once (a semaphore), with at most
//! `queue` more waiting; beyond that a request is refused at once
//! (`overloaded`), and a waiting one gives up after the admission wait.
//! Prompts below `inline_bytes` are counted inline: for them the hand-over
//! costs more than the work.
//!
//! Cancel safety: a request dropped while it waits leaves the queue at
//! once; one dropped while its job runs lets the job finish on its blocking
//! thread, still holding its slot, so the bound holds for the work actually
//! running.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;

/// Default [`TokenizerPool::inline_bytes`]: prompts this small are counted
/// inline (measured: see docs/performance.md).
pub const DEFAULT_INLINE_BYTES: usize = 16 * 1024;

/// The default bound on the bytes of a model's tokenizer segment cache
/// (`HfTokenCounter::with_tokenizer_cache_bytes`, feature `tokenizers`).
pub const DEFAULT_TOKENIZER_CACHE_BYTES: usize = 32 << 20;
/// Default [`TokenizerPool::queue`]: jobs that may wait for a thread.
pub const DEFAULT_QUEUE: usize = 256;

/// Why the pool did not run a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// Every thread is busy and the queue is full.
    #[error("the tokenizer pool is full")]
    Full,
    /// No thread came free within the wait.
    #[error("no tokenizer thread came free in time")]
    TimedOut,
    /// The job panicked.
    #[error("tokenization failed")]
    Panicked,
}

/// A bounded pool for tokenization; cheap to clone (clones share it).
#[derive(Debug, Clone)]
pub struct TokenizerPool {
    inner: Option<Arc<Inner>>,
}

#[derive(Debug)]
struct Inner {
    threads: usize,
    queue: usize,
    inline_bytes: usize,
    permits: Arc<Semaphore>,
    /// Jobs waiting or running.
    admitted: AtomicUsize,
}

impl Default for TokenizerPool {
    /// One thread per core but one (at least one): the core left keeps the
    /// runtime's streams going while long prompts are tokenized (measured
    /// on 2 cores: small requests' p99 ×1.05 with one thread, ×1.7 with
    /// two; docs/performance.md), [`DEFAULT_QUEUE`],
    /// [`DEFAULT_INLINE_BYTES`].
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        let threads = NonZeroUsize::new(cores - 1).unwrap_or(NonZeroUsize::MIN);
        TokenizerPool::new(threads, DEFAULT_QUEUE, DEFAULT_INLINE_BYTES)
    }
}

impl TokenizerPool {
    /// At most `threads` jobs at once, `queue` more waiting; prompts under
    /// `inline_bytes` bytes run inline.
    pub fn new(threads: NonZeroUsize, queue: usize, inline_bytes: usize) -> Self {
        TokenizerPool {
            inner: Some(Arc::new(Inner {
                threads: threads.get(),
                queue,
                inline_bytes,
                permits: Arc::new(Semaphore::new(threads.get())),
                admitted: AtomicUsize::new(0),
            })),
        }
    }

    /// Everything inline on the runtime (the behaviour before the pool;
    /// for embedding hosts that tokenize cheaply, and for comparison).
    pub const fn inline() -> Self {
        TokenizerPool { inner: None }
    }

    /// Threads (0 when inline).
    pub fn threads(&self) -> usize {
        self.inner.as_ref().map_or(0, |i| i.threads)
    }

    /// Jobs that may wait for a thread.
    pub fn queue(&self) -> usize {
        self.inner.as_ref().map_or(0, |i| i.queue)
    }

    /// Prompts under this many bytes are counted inline.
    pub fn inline_bytes(&self) -> usize {
        self.inner.as_ref().map_or(usize::MAX, |i| i.inline_bytes)
    }

    /// Jobs waiting or running now.
    pub fn admitted(&self) -> usize {
        self.inner
            .as_ref()
            .map_or(0, |i| i.admitted.load(Ordering::Relaxed))
    }

    /// Runs `job` on the work of `bytes` bytes: inline when small or
    /// without a pool, else on a blocking thread once one of the pool's
    /// slots is free (waiting at most `wait`).
    ///
    /// # Errors
    /// [`PoolError::Full`] at once when the queue is full,
    /// [`PoolError::TimedOut`] after `wait`, [`PoolError::Panicked`] if
    /// the job panicked.
    ///
    /// # Cancel safety
    /// Dropping the future while it waits frees its place in the queue;
    /// while the job runs, the job completes and then frees its slot.
    pub async fn run<T, F>(&self, bytes: usize, wait: Duration, job: F) -> Result<T, PoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let Some(inner) = self.inner.as_ref().filter(|i| bytes >= i.inline_bytes) else {
            return Ok(job());
        };
        let ticket = Ticket::take(inner)?;
        let permit = tokio::time::timeout(wait, inner.permits.clone().acquire_owned())
            .await
            .map_err(|_| PoolError::TimedOut)?
            .map_err(|_| PoolError::Full)?;
        tokio::task::spawn_blocking(move || {
            let _slot = (permit, ticket);
            job()
        })
        .await
        .map_err(|_| PoolError::Panicked)
    }
}

/// A place in the pool (waiting or running), given back on drop.
struct Ticket(Arc<Inner>);

impl Ticket {
    fn take(inner: &Arc<Inner>) -> Result<Ticket, PoolError> {
        let limit = inner.threads.saturating_add(inner.queue);
        inner
            .admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .map_err(|_| PoolError::Full)?;
        Ok(Ticket(inner.clone()))
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn pool(threads: usize, queue: usize) -> TokenizerPool {
        TokenizerPool::new(NonZeroUsize::new(threads).unwrap(), queue, 100)
    }

    #[tokio::test]
    async fn small_work_runs_inline_and_large_on_a_thread() {
        let p = pool(1, 0);
        let here = std::thread::current().id();
        let inline = p.run(99, Duration::ZERO, move || std::thread::current().id());
        assert_eq!(inline.await.unwrap(), here);
        let off = p.run(100, Duration::from_secs(1), move || {
            std::thread::current().id()
        });
        assert_ne!(off.await.unwrap(), here);
        assert_eq!(p.admitted(), 0);
        let p = TokenizerPool::inline();
        assert_eq!(p.run(1 << 30, Duration::ZERO, || 7).await, Ok(7));
        assert_eq!((p.threads(), p.queue()), (0, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn beyond_threads_and_queue_it_refuses_at_once_then_waits_bounded() {
        let p = pool(1, 1);
        let (release, gate) = mpsc::channel::<()>();
        let busy = tokio::spawn({
            let p = p.clone();
            async move {
                p.run(100, Duration::from_secs(5), move || gate.recv().is_ok())
                    .await
            }
        });
        // The first job holds the only thread.
        while p.admitted() < 1 {
            tokio::task::yield_now().await;
        }
        // The second waits in the queue; the third is refused at once.
        let waiting = tokio::spawn({
            let p = p.clone();
            async move { p.run(100, Duration::from_millis(50), || 2).await }
        });
        while p.admitted() < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            p.run(100, Duration::from_secs(5), || 3).await,
            Err(PoolError::Full)
        );
        // The waiter gives up after its wait and frees its place.
        assert_eq!(waiting.await.unwrap(), Err(PoolError::TimedOut));
        assert_eq!(p.admitted(), 1);
        release.send(()).unwrap();
        assert_eq!(busy.await.unwrap(), Ok(true));
        assert_eq!(p.admitted(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_waiter_leaks_nothing_and_a_panic_is_an_error() {
        let p = pool(1, 4);
        let (release, gate) = mpsc::channel::<()>();
        let busy = tokio::spawn({
            let p = p.clone();
            async move {
                p.run(100, Duration::from_secs(5), move || gate.recv().is_ok())
                    .await
            }
        });
        while p.admitted() < 1 {
            tokio::task::yield_now().await;
        }
        let waiter = tokio::spawn({
            let p = p.clone();
            async move { p.run(100, Duration::from_secs(60), || 1).await }
        });
        while p.admitted() < 2 {
            tokio::task::yield_now().await;
        }
        waiter.abort();
        assert!(waiter.await.unwrap_err().is_cancelled());
        assert_eq!(p.admitted(), 1);
        release.send(()).unwrap();
        assert_eq!(busy.await.unwrap(), Ok(true));
        let panicked = p.run(100, Duration::from_secs(1), || panic!("boom")).await;
        assert_eq!(panicked, Err::<(), _>(PoolError::Panicked));
        assert_eq!(p.admitted(), 0);
    }
}
