//! A served gateway's whole life as one call: serve, then on a signal the
//! readiness phase, the end of accepting, the drain of the gateway's
//! streams and the settlement of every reservation.

use std::convert::Infallible;
use std::pin::pin;
use std::time::Duration;

use axum::body::Body;
use axum::response::IntoResponse;
use futures::{Stream, StreamExt};
use gateway_policy::{DrainReport, Gateway};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::Service;

use super::conn::serve_with;
use super::edge::ServeOptions;

/// What connections get past the drain, besides the gateway's `abort_wait`:
/// time for the error ending an aborted stream to reach its client.
const CLOSE_MARGIN: Duration = Duration::from_secs(2);

/// Serves `app`, whose routes run on `gateway`, on `listener` until
/// `signals` asks to stop, then shuts down as the `gateway` binary does on
/// SIGTERM, and returns what the drain did.
///
/// - The first item of `signals` starts the readiness phase: for
///   `ready_drain`, `GET /ready` answers 503 (`"reason":"shutting down"`)
///   and every response carries `Connection: close`, while requests are
///   still served, so a load balancer takes the replica out. A second item
///   cuts it short. (The end of `signals` is no signal: a stream that ends
///   without an item serves until the future is dropped.)
/// - Then the listener closes, and the gateway's requests get
///   `options.grace` to finish ([`Gateway::drain`]); those still running
///   are aborted at their engines (their streams end with a `canceled`
///   error) and every reservation is settled.
/// - Open connections get `options.grace` plus the gateway's
///   [`abort_wait`](gateway_policy::Settings::abort_wait) plus 2 s to
///   deliver those ends, then are closed.
///
/// The edge's own answers are counted in the gateway's metrics
/// (`options.edge_rejections` is replaced by
/// [`Metrics::edge_rejections`](gateway_policy::Metrics::edge_rejections)),
/// and `options.not_ready` is cancelled by the first signal. `app` is any
/// service [`serve`](super::serve) takes.
///
/// # Errors
/// As [`serve_with`]: only if accepting fails fatally.
///
/// # Cancel safety
/// Dropping the future stops serving at once, without the drain: the open
/// connections are closed, which cancels their requests as `client_gone`
/// (aborted at their engines and settled as usual).
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use gateway_adapters::server::{RouterOptions, ServeOptions, router, serve_and_drain};
/// use gateway_policy::Gateway;
///
/// # async fn demo(gateway: Gateway, sigterm: impl futures::Stream<Item = ()> + Send) -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let app = router(gateway.clone(), RouterOptions::default());
/// let options = ServeOptions::with_grace(Duration::from_secs(30));
/// let report = serve_and_drain(listener, app, &gateway, options, Duration::from_secs(10), sigterm).await?;
/// tracing::info!(aborted = report.aborted, unsettled = report.unsettled, "stopped");
/// # Ok(())
/// # }
/// ```
pub async fn serve_and_drain<S>(
    listener: TcpListener,
    app: S,
    gateway: &Gateway,
    mut options: ServeOptions,
    ready_drain: Duration,
    signals: impl Stream<Item = ()> + Send,
) -> std::io::Result<DrainReport>
where
    S: Service<http::Request<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Response: IntoResponse,
    S::Future: Send,
{
    let grace = options.grace;
    options.grace = grace + gateway.settings().abort_wait + CLOSE_MARGIN;
    options.edge_rejections = gateway.metrics().edge_rejections.clone();
    let not_ready = options.not_ready.clone();
    let stop = CancellationToken::new();
    let stopping = async {
        let mut signals = pin!(signals);
        if signals.next().await.is_none() {
            return futures::future::pending().await;
        }
        not_ready.cancel();
        if !ready_drain.is_zero() {
            tracing::info!(?ready_drain, "not ready: /ready answers 503");
            tokio::select! {
                () = tokio::time::sleep(ready_drain) => {}
                Some(()) = signals.next() => {}
            }
        }
        stop.cancel();
    };
    let drain = async {
        stop.cancelled().await;
        tracing::info!(?grace, "shutting down: draining");
        gateway.drain(grace).await
    };
    let served = serve_with(listener, app, stop.cancelled(), options);
    let (served, report, ()) = tokio::join!(served, drain, stopping);
    served.map(|()| report)
}
