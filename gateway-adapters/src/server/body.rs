//! Response bodies from a [`GatewayStream`]: SSE frames as events arrive,
//! or one JSON document.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use gateway_core::{CancelGuard, TokenEvent};
use gateway_policy::{GatewayError, GatewayStream};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::openai::{Assembler, ChunkEncoder};

/// The SSE body: each event becomes its frame as soon as it arrives.
///
/// Holds the request's cancel guard: dropped before the end (the client
/// went away), it cancels the request; at the end it is disarmed.
pub(crate) struct SseBody {
    stream: GatewayStream,
    encoder: ChunkEncoder,
    guard: Option<CancelGuard>,
    _done: DropGuard,
    ended: bool,
}

impl SseBody {
    pub(crate) fn new(
        stream: GatewayStream,
        encoder: ChunkEncoder,
        guard: CancelGuard,
        done: CancellationToken,
    ) -> Self {
        SseBody {
            stream,
            encoder,
            guard: Some(guard),
            _done: done.drop_guard(),
            ended: false,
        }
    }

    fn end(&mut self) {
        self.ended = true;
        if let Some(guard) = self.guard.take() {
            guard.disarm();
        }
    }
}

impl Stream for SseBody {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if self.ended {
                return Poll::Ready(None);
            }
            let item = match self.stream.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(item) => item,
            };
            match item {
                None => {
                    self.end();
                    return Poll::Ready(None);
                }
                Some(Ok(event)) => {
                    let last = matches!(event, TokenEvent::Finished(_));
                    let frame = self.encoder.encode(&event);
                    if last {
                        self.end();
                    }
                    if let Some(frame) = frame {
                        return Poll::Ready(Some(Ok(frame)));
                    }
                }
                Some(Err(err)) => {
                    let frame = self.encoder.error(err.kind(), &err.client_message());
                    self.end();
                    return Poll::Ready(Some(Ok(frame)));
                }
            }
        }
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
