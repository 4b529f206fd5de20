//! Response bodies from a [`GatewayStream`]: SSE frames as events arrive,
//! or one JSON document.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::task::AtomicWaker;
use futures::{Stream, StreamExt};
use gateway_core::{CancelGuard, TokenEvent, TokenResult};
use gateway_policy::{GatewayError, GatewayStream};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::openai::{Assembler, ChunkEncoder};

/// The most bytes of frames gathered into one write.
const BATCH_BYTES: usize = 4 * 1024;

/// The most bytes handed to hyper and not yet written to the client's
/// socket; past it the body takes nothing more from the stream. hyper
/// queues up to 16 body buffers whatever their size, so without this a
/// stalled client would pin 16 batches per stream (and the stream would
/// not look stalled to the pump until they filled).
const UNWRITTEN_BYTES: usize = 4 * 1024;

/// The most times the body steps aside for one batch.
const BATCH_YIELDS: u32 = 32;

/// Steps aside in a row that bring nothing before the batch goes out.
const IDLE_YIELDS: u32 = 2;

/// The SSE body: events become frames as they arrive, and frames that
/// arrive together go out in one write.
///
/// A fast engine's tokens come out of one upstream read together, but they
/// reach the body one by one (hyper hands the engine's body over one HTTP
/// chunk at a time, through the reader and the pump); handing each frame to
/// hyper as it came made one `writev` per token, most of the gateway's CPU
/// on a fast stream. So when a frame is ready the body steps aside (a
/// wake-up of itself, which Tokio runs after the other ready tasks) and
/// takes what came meanwhile, until `IDLE_YIELDS` steps in a row bring
/// nothing, `BATCH_YIELDS` steps in all or `BATCH_BYTES`. One step is
/// not enough: the next frame is often one task behind the body in the run
/// queue. A lone token costs two such steps (task polls) and no waiting:
/// nothing is held for a timer. Measured (docs/performance.md, "Streaming:
/// one write per batch"): a fast engine's 256-token streams went from one
/// `writev` per token to one per ~15, 8.8 to 3.4 µs of CPU per token.
///
/// The first batch goes out as soon as it has a frame, without stepping
/// aside: hyper writes the response's head when the body first has
/// nothing, so a first batch held back went out in a write of its own
/// after the head, a syscall and three polls later; taken at once, it joins
/// the head in one write and the first token is not delayed.
///
/// Batches that hyper holds count as unwritten until hyper drops them
/// (written); at most `UNWRITTEN_BYTES` of them at a time.
///
/// Holds the request's cancel guard: dropped before the end (the client
/// went away), it cancels the request; at the end it is disarmed.
///
/// The server builds it over a [`GatewayStream`]; any stream of
/// [`TokenResult`]s will do (a host serving a backend's stream directly,
/// as the load test's `sim_server` does):
///
/// ```no_run
/// # async fn demo(backend: std::sync::Arc<dyn gateway_core::Backend>, request: gateway_core::BackendRequest) -> Result<(), gateway_core::BackendError> {
/// use gateway_adapters::openai::{ChunkEncoder, Endpoint};
/// use gateway_adapters::server::SseBody;
/// use gateway_core::CancelHandle;
///
/// let guard = CancelHandle::guarded();
/// let stream = backend.start(request, guard.handle().clone()).await?;
/// let encoder = ChunkEncoder::new(Endpoint::Chat, "chatcmpl-1", 0, "m", true);
/// let body = axum::body::Body::from_stream(SseBody::new(stream, encoder, guard));
/// # drop(body);
/// # Ok(())
/// # }
/// ```
pub struct SseBody<S = GatewayStream> {
    stream: S,
    encoder: ChunkEncoder,
    guard: Option<CancelGuard>,
    _done: Option<DropGuard>,
    ended: bool,
    /// Frames gathered for the next write.
    batch: BytesMut,
    /// Steps aside taken for the batch.
    yields: u32,
    /// Steps aside in a row that brought nothing.
    idle_yields: u32,
    /// A batch went out: the next ones may step aside.
    begun: bool,
    /// Bytes handed to hyper and not yet written.
    unwritten: Arc<Unwritten>,
}

impl<S> std::fmt::Debug for SseBody<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseBody")
            .field("ended", &self.ended)
            .field("batch", &self.batch.len())
            .field("unwritten", &self.unwritten.bytes.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The bytes of batches hyper holds, and the body's wake-up for when some
/// are written.
#[derive(Default)]
struct Unwritten {
    bytes: AtomicUsize,
    waker: AtomicWaker,
}

/// One batch as hyper holds it: its bytes count as unwritten until hyper
/// drops it.
struct Batch {
    bytes: Bytes,
    unwritten: Arc<Unwritten>,
}

impl AsRef<[u8]> for Batch {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.unwritten
            .bytes
            .fetch_sub(self.bytes.len(), Ordering::AcqRel);
        self.unwritten.waker.wake();
    }
}

impl<S> SseBody<S>
where
    S: Stream<Item = TokenResult> + Unpin,
{
    /// The SSE body of `stream`, its frames made by `encoder`; `guard` is
    /// the request's cancel guard (disarmed at the stream's end, so only a
    /// body dropped before it cancels the request).
    pub fn new(stream: S, encoder: ChunkEncoder, guard: CancelGuard) -> Self {
        SseBody::with_done(stream, encoder, guard, None)
    }

    /// [`SseBody::new`], also cancelling `done` when the body goes (the
    /// server's connection watcher waits on it).
    pub(crate) fn with_done(
        stream: S,
        encoder: ChunkEncoder,
        guard: CancelGuard,
        done: Option<CancellationToken>,
    ) -> Self {
        SseBody {
            stream,
            encoder,
            guard: Some(guard),
            _done: done.map(CancellationToken::drop_guard),
            ended: false,
            batch: BytesMut::new(),
            yields: 0,
            idle_yields: 0,
            begun: false,
            unwritten: Arc::default(),
        }
    }

    fn end(&mut self) {
        self.ended = true;
        if let Some(guard) = self.guard.take() {
            guard.disarm();
        }
    }

    /// Moves the frames that are ready into the batch; whether any came.
    fn gather(&mut self, cx: &mut Context<'_>) -> bool {
        let mut came = false;
        while !self.ended && self.batch.len() < BATCH_BYTES {
            let item = match self.stream.poll_next_unpin(cx) {
                Poll::Pending => break,
                Poll::Ready(item) => item,
            };
            came = true;
            match item {
                None => self.end(),
                Some(Ok(event)) => {
                    let last = matches!(event, TokenEvent::Finished(_));
                    if let Some(frame) = self.encoder.encode(&event) {
                        self.batch.extend_from_slice(&frame);
                    }
                    if last {
                        self.end();
                    }
                }
                Some(Err(err)) => {
                    let frame = self.encoder.error(err.kind(), &err.client_message());
                    self.batch.extend_from_slice(&frame);
                    self.end();
                }
            }
        }
        came
    }
}

impl<S> Stream for SseBody<S>
where
    S: Stream<Item = TokenResult> + Unpin,
{
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.unwritten.bytes.load(Ordering::Acquire) >= UNWRITTEN_BYTES {
            self.unwritten.waker.register(cx.waker());
            if self.unwritten.bytes.load(Ordering::Acquire) >= UNWRITTEN_BYTES {
                // The client is behind: take nothing more from the stream.
                return Poll::Pending;
            }
        }
        let came = self.gather(cx);
        if self.batch.is_empty() {
            return if self.ended {
                Poll::Ready(None)
            } else {
                Poll::Pending
            };
        }
        if came {
            self.idle_yields = 0;
        } else {
            self.idle_yields += 1;
        }
        let full = self.batch.len() >= BATCH_BYTES || self.yields >= BATCH_YIELDS;
        if self.begun && self.idle_yields < IDLE_YIELDS && !full && !self.ended {
            // Step aside: the pipeline may bring the next frames meanwhile.
            self.yields += 1;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.yields = 0;
        self.idle_yields = 0;
        self.begun = true;
        let bytes = self.batch.split().freeze();
        self.unwritten
            .bytes
            .fetch_add(bytes.len(), Ordering::AcqRel);
        let unwritten = self.unwritten.clone();
        Poll::Ready(Some(Ok(Bytes::from_owner(Batch { bytes, unwritten }))))
    }
}

/// Reads the whole stream into one response body.
///
/// # Errors
/// The stream's failure, as a gateway error (nothing was sent yet, so it
/// still gets its status).
pub(crate) async fn assemble(
    mut stream: GatewayStream,
    mut assembler: Assembler,
    guard: CancelGuard,
) -> Result<Bytes, GatewayError> {
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                if let Err(e) = assembler.push(&event) {
                    guard.disarm();
                    return Err(GatewayError::new(
                        gateway_policy::ErrorCode::Internal,
                        e.to_string(),
                    ));
                }
            }
            Err(err) => {
                guard.disarm();
                return Err(GatewayError::from_backend(err));
            }
        }
    }
    guard.disarm();
    assembler
        .body()
        .map_err(|e| GatewayError::new(gateway_policy::ErrorCode::Internal, e.to_string()))
}
