//! A handle's bounded queue of background operations, the task that runs
//! them, and the periodic refresher.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::lock;

/// What a [`Background`] runs: its core, shared with the tasks.
pub(crate) trait Worker: Send + Sync + 'static {
    /// A queued operation.
    type Op: Send + 'static;

    /// Whether the refresher's first pass runs as soon as it starts (else
    /// after [`refresh_every`](Worker::refresh_every)).
    const REFRESH_AT_START: bool;

    /// Runs one operation to its end, retries included.
    fn run(&self, op: Self::Op) -> impl Future<Output = ()> + Send;

    /// How long the refresher waits between two passes.
    fn refresh_every(&self) -> Duration;

    /// One pass of the refresher.
    fn refresh(&self) -> impl Future<Output = ()> + Send;
}

/// A queued operation, or a flush to answer once everything queued before
/// it was done.
enum Msg<T> {
    Op(T),
    Flush(oneshot::Sender<()>),
}

/// The sending end of a [`Background`]'s queue, for whoever queues
/// operations (permits that outlive a borrow of the handle keep a clone).
pub(crate) struct Sender<T>(mpsc::Sender<Msg<T>>);

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender(self.0.clone())
    }
}

impl<T> Sender<T> {
    /// Queues `op` without waiting.
    ///
    /// # Errors
    /// Why it was not queued: `"queue full"` or `"queue closed"` (the
    /// task is gone: the runtime shut down).
    pub(crate) fn try_send(&self, op: T) -> Result<(), &'static str> {
        self.0.try_send(Msg::Op(op)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => "queue full",
            mpsc::error::TrySendError::Closed(_) => "queue closed",
        })
    }
}

/// What a Redis ledger or limiter handle holds: the core shared with its
/// background tasks, the bounded queue of operations those tasks run, the
/// counter of tickets that, with the instance number, name this handle's
/// holds or leases, and the token that stops the refresher when the handle
/// is dropped. The queue's task ends once every [`Sender`] is dropped.
pub(crate) struct Background<W: Worker> {
    /// The core.
    pub(crate) core: Arc<W>,
    tx: Sender<W::Op>,
    /// The queue's receiving end until the queue's task takes it.
    rx: Mutex<Option<mpsc::Receiver<Msg<W::Op>>>>,
    next_ticket: AtomicU64,
    stop: CancellationToken,
}

impl<W: Worker> Drop for Background<W> {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl<W: Worker> Background<W> {
    /// `core` with a queue of `capacity` operations (at least 1); nothing
    /// runs until [`ensure_started`](Background::ensure_started).
    pub(crate) fn new(core: W, capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        Background {
            core: Arc::new(core),
            tx: Sender(tx),
            rx: Mutex::new(Some(rx)),
            next_ticket: AtomicU64::new(0),
            stop: CancellationToken::new(),
        }
    }

    /// The queue.
    pub(crate) fn sender(&self) -> &Sender<W::Op> {
        &self.tx
    }

    /// The next ticket: 1, 2, 3...
    pub(crate) fn next_ticket(&self) -> u64 {
        self.next_ticket.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Starts the background tasks (the queue's and the refresher) if they
    /// are not running and a Tokio runtime is current.
    pub(crate) fn ensure_started(&self) {
        let mut slot = lock(&self.rx);
        if slot.is_none() {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if let Some(rx) = slot.take() {
            handle.spawn(drain(self.core.clone(), rx));
            handle.spawn(refresher(self.core.clone(), self.stop.clone()));
        }
    }

    /// Waits until every operation queued before this call was done
    /// (starting the tasks if they are not running).
    pub(crate) async fn flush(&self) {
        self.ensure_started();
        let (done, wait) = oneshot::channel();
        if self.tx.0.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// The most operations a queue's task runs at once.
const IN_FLIGHT: usize = 64;

/// The task that runs the queued operations, up to [`IN_FLIGHT`] at once,
/// each starting as soon as a slot frees (no batch waits for its slowest
/// operation), and answers a flush once the operations queued before it
/// are done.
async fn drain<W: Worker>(core: Arc<W>, mut rx: mpsc::Receiver<Msg<W::Op>>) {
    let mut in_flight = FuturesUnordered::new();
    let mut started = 0u64;
    let mut running: BTreeSet<u64> = BTreeSet::new();
    let mut flushes: Vec<(u64, oneshot::Sender<()>)> = Vec::new();
    let mut open = true;
    loop {
        let first = running.first().copied();
        let (answered, waiting): (Vec<_>, Vec<_>) = flushes
            .drain(..)
            .partition(|(upto, _)| first.is_none_or(|f| f > *upto));
        flushes = waiting;
        for (_, done) in answered {
            let _ = done.send(());
        }
        if !open && in_flight.is_empty() {
            return;
        }
        tokio::select! {
            msg = rx.recv(), if open && in_flight.len() < IN_FLIGHT => match msg {
                None => open = false,
                Some(Msg::Flush(done)) => flushes.push((started, done)),
                Some(Msg::Op(op)) => {
                    started += 1;
                    let seq = started;
                    running.insert(seq);
                    let core = core.clone();
                    in_flight.push(async move {
                        core.run(op).await;
                        seq
                    });
                }
            },
            Some(seq) = in_flight.next(), if !in_flight.is_empty() => {
                running.remove(&seq);
            }
        }
    }
}

/// The task that runs [`Worker::refresh`] every
/// [`Worker::refresh_every`] until `stop`.
async fn refresher<W: Worker>(core: Arc<W>, stop: CancellationToken) {
    let mut first = W::REFRESH_AT_START;
    loop {
        if !first {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(core.refresh_every()) => {}
            }
        }
        first = false;
        core.refresh().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what ran; an op of `n` takes `n` ms.
    #[derive(Default)]
    struct Record {
        ran: Mutex<Vec<u64>>,
        refreshes: AtomicU64,
    }

    impl Worker for Record {
        type Op = u64;
        const REFRESH_AT_START: bool = true;

        async fn run(&self, op: u64) {
            tokio::time::sleep(Duration::from_millis(op)).await;
            lock(&self.ran).push(op);
        }

        fn refresh_every(&self) -> Duration {
            Duration::from_secs(1)
        }

        async fn refresh(&self) {
            self.refreshes.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn flush_waits_for_what_was_queued_and_drop_stops_the_refresher() {
        let bg = Background::new(Record::default(), 4);
        assert_eq!((bg.next_ticket(), bg.next_ticket()), (1, 2));
        for op in [30, 10, 20] {
            bg.sender().try_send(op).unwrap();
        }
        bg.flush().await;
        // Run together: they end in the order of their durations.
        assert_eq!(*lock(&bg.core.ran), vec![10, 20, 30]);
        let core = bg.core.clone();
        // The first pass ran at once; one more after each second.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(core.refreshes.load(Ordering::Relaxed), 3);
        let sender = bg.sender().clone();
        drop(bg);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(core.refreshes.load(Ordering::Relaxed), 3);
        // The queue's task still runs while a sender lives.
        sender.try_send(5).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(*lock(&core.ran), vec![10, 20, 30, 5]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_operation_holds_up_no_other() {
        let bg = Background::new(Record::default(), 8);
        bg.ensure_started();
        bg.sender().try_send(5000).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        for op in [10, 20] {
            bg.sender().try_send(op).unwrap();
        }
        // Queued after the slow one, done long before it.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(*lock(&bg.core.ran), vec![10, 20]);
        bg.flush().await;
        assert_eq!(*lock(&bg.core.ran), vec![10, 20, 5000]);
    }

    #[test]
    fn a_full_queue_refuses_without_a_runtime() {
        let bg = Background::new(Record::default(), 0);
        assert_eq!(bg.sender().try_send(1), Ok(()));
        assert_eq!(bg.sender().try_send(2), Err("queue full"));
    }
}
