//! The accept loop: one task per connection, `TCP_NODELAY`, a modest send
//! buffer, graceful shutdown, and a per-connection kill switch so a
//! stalled client's connection can be closed.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Closes one client connection when canceled (inserted into each request's
/// extensions).
#[derive(Debug, Clone)]
pub struct ConnectionKill(pub CancellationToken);

/// Send buffer of client sockets: big enough for bursts of SSE frames,
/// small enough that a client that stops reading fills it quickly and the
/// gateway's own bounded buffer sees the stall.
const SEND_BUFFER_BYTES: usize = 64 * 1024;

fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = socket2::SockRef::from(stream).set_send_buffer_size(SEND_BUFFER_BYTES);
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops
/// accepting and lets open connections finish their current request for up
/// to `grace` (streams are drained by the gateway meanwhile).
///
/// # Errors
/// Only if accepting fails fatally (errors per connection are dropped).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send,
    grace: Duration,
) -> std::io::Result<()> {
    let stop = CancellationToken::new();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let Ok((stream, peer)) = accepted else {
            // Out of file descriptors and the like: back off briefly.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        tune(&stream);
        connections.spawn(connection(stream, peer, app.clone(), stop.clone()));
    }
    stop.cancel();
    let _ = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.abort_all();
    Ok(())
}

async fn connection(stream: TcpStream, _peer: SocketAddr, app: Router, stop: CancellationToken) {
    let kill = CancellationToken::new();
    let marker = ConnectionKill(kill.clone());
    let service = app.map_request(move |mut request: http::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(marker.clone());
        request.map(axum::body::Body::new)
    });
    let conn = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        () = kill.cancelled() => return,
        () = stop.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    tokio::select! {
        _ = conn.as_mut() => {}
        () = kill.cancelled() => {}
    }
}
