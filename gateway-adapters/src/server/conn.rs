//! The accept loop: one task per connection, `TCP_NODELAY`, a modest send
//! buffer, graceful shutdown, a per-connection kill switch so a stalled
//! client's connection can be closed, and the edge limits of
//! [`ServeOptions`]: a connection cap, header-read, keep-alive and
//! body-read timeouts, a request-head size limit, per-tenant connection
//! caps and the readiness phase of a shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use hyper::body::{Body as _, Incoming};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceExt};

use super::edge::{EdgeClock, SHUTTING_DOWN_BODY, ServeOptions, TenantSlot, at_capacity_response};
use super::edge_io::{ConnState, EdgeIo, InFlightBody, TimedBody};
use super::handlers::presented_key;
use super::respond::json;
use crate::openai::error_body;
use gateway_policy::EdgeReason;

/// Closes one client connection when canceled (inserted into each request's
/// extensions).
#[derive(Debug, Clone)]
pub struct ConnectionKill(pub CancellationToken);

/// Send buffer of client sockets: big enough for bursts of SSE frames,
/// small enough that a client that stops reading fills it quickly and the
/// gateway's own bounded buffer sees the stall.
const SEND_BUFFER_BYTES: usize = 64 * 1024;

/// Connections beyond `max_connections` answered a 503 at once; beyond
/// these, they are closed without an answer.
const REFUSALS: usize = 256;

/// How long a refused connection is kept to deliver its 503.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// hyper's default read buffer limit; larger head limits raise it.
const HYPER_MAX_BUF: usize = 8192 + 4096 * 100;

fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = socket2::SockRef::from(stream).set_send_buffer_size(SEND_BUFFER_BYTES);
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops
/// accepting and lets open connections finish their current request for up
/// to `grace` (streams are drained by the gateway meanwhile). The edge
/// limits are [`ServeOptions::default`]'s; see [`serve_with`].
///
/// `app` is any tower service over axum's request type, as for
/// `axum::serve`: an `axum::Router` (the gateway's [`router`](super::router),
/// or a host's router with the gateway's [`routes`](super::routes) merged
/// in), with whatever layers the host adds (`Router::layer`, or
/// `tower::ServiceBuilder::new().layer(..).service(router)`). Every one of
/// them keeps the gateway's connection handling: the stalled-client kill
/// (each request carries the connection's [`ConnectionKill`]; a layer has
/// only to keep the request's extensions, as tower's and axum's do) and the
/// edge limits of [`ServeOptions`] (the body-read timeout wraps the request
/// body before `app` sees it, which is why the request body is axum's
/// `Body` and not hyper's `Incoming`). Its errors must be `Infallible`, as
/// for `axum::serve` (`axum::error_handling::HandleErrorLayer` turns a
/// fallible layer's errors into responses).
///
/// # Errors
/// Only if accepting fails fatally (errors per connection are dropped).
///
/// # Examples
///
/// A host's router with the gateway's routes merged in, wrapped in a layer
/// of the host's (a header on every response), served with the gateway's
/// connection handling:
///
/// ```no_run
/// use std::time::Duration;
/// use axum::Router;
/// use axum::routing::get;
/// use gateway_adapters::server::{RouterOptions, routes, serve};
/// use gateway_policy::Gateway;
/// use http::HeaderValue;
///
/// # async fn demo(gateway: Gateway) -> std::io::Result<()> {
/// let app = Router::new()
///     .route("/", get(|| async { "the host's service" }))
///     .merge(routes(gateway, RouterOptions::default()));
/// let app = tower::ServiceBuilder::new()
///     .map_response(|mut response: axum::response::Response| {
///         response.headers_mut().insert("x-host", HeaderValue::from_static("yes"));
///         response
///     })
///     .service(app);
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// serve(listener, app, std::future::pending(), Duration::from_secs(10)).await
/// # }
/// ```
pub async fn serve<S>(
    listener: TcpListener,
    app: S,
    shutdown: impl Future<Output = ()> + Send,
    grace: Duration,
) -> std::io::Result<()>
where
    S: Service<http::Request<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Response: IntoResponse,
    S::Future: Send,
{
    serve_with(listener, app, shutdown, ServeOptions::with_grace(grace)).await
}

/// [`serve`] with every edge limit of `options`.
///
/// # Errors
/// Only if accepting fails fatally (errors per connection are dropped).
pub async fn serve_with<S>(
    listener: TcpListener,
    app: S,
    shutdown: impl Future<Output = ()> + Send,
    options: ServeOptions,
) -> std::io::Result<()>
where
    S: Service<http::Request<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Response: IntoResponse,
    S::Future: Send,
{
    let grace = options.grace;
    let options = Arc::new(options);
    let stop = CancellationToken::new();
    let slots = Arc::new(Semaphore::new(
        options.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let refusals = Arc::new(Semaphore::new(REFUSALS));
    let refusal = at_capacity_response();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let Ok((stream, _peer)) = accepted else {
            // Out of file descriptors and the like: back off briefly.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        if let Ok(permit) = slots.clone().try_acquire_owned() {
            tune(&stream);
            connections.spawn(connection(
                stream,
                app.clone(),
                options.clone(),
                stop.clone(),
                permit,
            ));
        } else if let Ok(permit) = refusals.clone().try_acquire_owned() {
            options.edge_rejections.count(EdgeReason::ConnectionCap);
            connections.spawn(refuse(stream, refusal.clone(), permit));
        } else {
            // The stream is dropped here: closed at once.
            options
                .edge_rejections
                .count(EdgeReason::ConnectionCapClosed);
        }
    }
    stop.cancel();
    let _ = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.abort_all();
    Ok(())
}

/// Answers a connection beyond the cap with `answer` and closes it, after
/// reading (and dropping) what the client sent for a moment so that the
/// close does not reset the answer away.
async fn refuse(mut stream: TcpStream, answer: Bytes, _permit: OwnedSemaphorePermit) {
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        stream.write_all(&answer).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut read = 0usize;
        while read < 64 * 1024 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => read += n,
            }
        }
        Ok::<(), std::io::Error>(())
    })
    .await;
}

/// What the requests of one connection share.
struct Connection {
    options: Arc<ServeOptions>,
    state: Arc<ConnState>,
    kill: ConnectionKill,
    /// The tenant this connection counts against, if capped.
    tenant: Mutex<Option<TenantSlot>>,
}

async fn connection<S>(
    stream: TcpStream,
    app: S,
    options: Arc<ServeOptions>,
    stop: CancellationToken,
    _permit: OwnedSemaphorePermit,
) where
    S: Service<http::Request<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Response: IntoResponse,
    S::Future: Send,
{
    let state = ConnState::new(EdgeClock::new(
        options.header_read_timeout,
        options.keep_alive_timeout,
        Instant::now(),
    ));
    let kill = CancellationToken::new();
    let max_header_bytes = options.max_header_bytes;
    let rejections = options.edge_rejections.clone();
    let shared = Arc::new(Connection {
        options,
        state: state.clone(),
        kill: ConnectionKill(kill.clone()),
        tenant: Mutex::new(None),
    });
    let service = tower::service_fn(move |request: http::Request<Incoming>| {
        handle(shared.clone(), app.clone(), request)
    });
    let mut builder = http1::Builder::new();
    builder.keep_alive(true).max_header_size(max_header_bytes);
    if max_header_bytes >= HYPER_MAX_BUF {
        builder.max_buf_size(max_header_bytes + 8192);
    }
    let io = EdgeIo::new(stream, state.clone(), max_header_bytes, rejections.clone());
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(conn);
    let expired = state.expired();
    tokio::pin!(expired);
    // A close at the deadline while a head is awaited is a header-read
    // timeout; one while idle is the keep-alive's ordinary end.
    let timed_out = || {
        if state.reading_head() {
            rejections.count(EdgeReason::HeaderTimeout);
        }
    };
    tokio::select! {
        _ = conn.as_mut() => return,
        () = kill.cancelled() => return,
        () = &mut expired => return timed_out(),
        () = stop.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    tokio::select! {
        _ = conn.as_mut() => {}
        () = kill.cancelled() => {}
        () = &mut expired => timed_out(),
    }
}

/// One request: the edge's own answers, or the app's with the body-read
/// timeout applied.
async fn handle<S>(
    conn: Arc<Connection>,
    app: S,
    mut request: http::Request<Incoming>,
) -> Result<Response, Infallible>
where
    S: Service<http::Request<Body>, Error = Infallible>,
    S::Response: IntoResponse,
{
    let in_flight = conn.state.request();
    let draining = conn.options.not_ready.is_cancelled();
    let mut response = match edge_answer(&conn, &request, draining) {
        Some(answer) => {
            if !request.body().is_end_stream() {
                conn.state.body_left_unread();
            }
            answer
        }
        None => {
            request.extensions_mut().insert(conn.kill.clone());
            let timed_out = Arc::new(AtomicBool::new(false));
            let request = if request.body().is_end_stream() {
                request.map(Body::new)
            } else {
                let deadline = Instant::now() + conn.options.body_read_timeout;
                let flag = timed_out.clone();
                let state = conn.state.clone();
                request.map(move |body| Body::new(TimedBody::new(body, deadline, flag, state)))
            };
            let response = match app.oneshot(request).await {
                Ok(response) => response.into_response(),
                Err(never) => match never {},
            };
            if timed_out.load(Ordering::Acquire) {
                conn.options.edge_rejections.count(EdgeReason::BodyTimeout);
                body_timeout(conn.options.body_read_timeout)
            } else {
                response
            }
        }
    };
    if draining {
        close_after(&mut response);
    }
    // The request is in flight until its response body is done.
    Ok(response.map(move |body| Body::new(InFlightBody::new(body, in_flight))))
}

fn close_after(response: &mut Response) {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
}

/// The edge's own answer to `request`, if any: `/ready` while draining, or
/// a tenant over its connection cap.
fn edge_answer(
    conn: &Connection,
    request: &http::Request<Incoming>,
    draining: bool,
) -> Option<Response> {
    if draining && request.uri().path() == "/ready" {
        return Some(json(
            StatusCode::SERVICE_UNAVAILABLE,
            Bytes::from_static(SHUTTING_DOWN_BODY),
        ));
    }
    let caps = &conn.options.tenant_connections;
    if caps.is_empty() {
        return None;
    }
    let key = presented_key(request.headers())?;
    let tenant = caps.get(&gateway_policy::key_hash(key))?;
    let mut slot = conn.tenant.lock().unwrap_or_else(PoisonError::into_inner);
    if slot.as_ref().is_some_and(|s| s.is_of(tenant)) {
        return None;
    }
    // Counted against this tenant from now on (and no longer against
    // another).
    *slot = None;
    *slot = tenant.try_open();
    if slot.is_some() {
        return None;
    }
    tracing::warn!(
        tenant = tenant.tenant(),
        max_connections = tenant.max(),
        "tenant at its connection cap: connection refused"
    );
    conn.options
        .edge_rejections
        .count(EdgeReason::TooManyConnections);
    let status = StatusCode::TOO_MANY_REQUESTS;
    let message = format!(
        "too many open connections for this API key (at most {})",
        tenant.max()
    );
    let mut response = json(
        status,
        error_body(status, "too_many_connections", &message, None),
    );
    close_after(&mut response);
    Some(response)
}

fn body_timeout(limit: Duration) -> Response {
    let status = StatusCode::REQUEST_TIMEOUT;
    let message = format!(
        "the request body did not arrive within {} ms",
        limit.as_millis()
    );
    let mut response = json(
        status,
        error_body(status, "request_timeout", &message, None),
    );
    close_after(&mut response);
    response
}
