//! The background scrape of an engine's Prometheus metrics into its
//! adapter's [`PressureCell`], shared by every HTTP adapter: one loop per
//! backend, started on first use inside a runtime, never on the request
//! path, stopped when the backend is dropped.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use gateway_core::http::{Method, Request, Uri};
use http_body_util::Full;
use tokio_util::sync::CancellationToken;

use super::pressure_cell::{Gauges, HasPressure};
use super::upstream::{HttpClient, MAX_METRICS_BODY, SIDE_CALL_TIMEOUT, read_limited};

/// A backend's scrape: where, how often, started once, stopped on drop.
pub(crate) struct Scraper {
    /// `None`: the engine has no metrics route configured.
    uri: Option<Uri>,
    interval: Duration,
    started: OnceLock<()>,
    stop: CancellationToken,
}

impl Scraper {
    /// A scrape of `uri` every `interval` (at least 1 ms), not started yet.
    pub(crate) fn new(uri: Option<Uri>, interval: Duration) -> Self {
        Scraper {
            uri,
            interval: interval.max(Duration::from_millis(1)),
            started: OnceLock::new(),
            stop: CancellationToken::new(),
        }
    }

    /// Starts the loop the first time it is called inside a runtime: each
    /// tick reads the metrics with `client`, `parse`s them and stores the
    /// gauges in `shared`'s pressure.
    pub(crate) fn ensure<S, P>(&self, client: &HttpClient, shared: &Arc<S>, parse: P)
    where
        S: HasPressure,
        P: Fn(&str) -> Option<Gauges> + Send + Sync + 'static,
    {
        let Some(uri) = self.uri.clone() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.started.set(()).is_err() {
            return;
        }
        runtime.spawn(scrape_loop(
            client.clone(),
            uri,
            self.interval,
            self.stop.clone(),
            shared.clone(),
            parse,
        ));
    }
}

impl Drop for Scraper {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn scrape_loop<S: HasPressure, P: Fn(&str) -> Option<Gauges>>(
    client: HttpClient,
    uri: Uri,
    interval: Duration,
    stop: CancellationToken,
    shared: Arc<S>,
    parse: P,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Ok(request) = Request::builder()
            .method(Method::GET)
            .uri(uri.clone())
            .body(Full::new(Bytes::new()))
        else {
            return;
        };
        let scrape = async {
            let response = client.request(request).await.ok()?;
            if !response.status().is_success() {
                return None;
            }
            let body = read_limited(response.into_body(), MAX_METRICS_BODY).await?;
            let text = std::str::from_utf8(&body).ok()?;
            parse(text)
        };
        let gauges = tokio::select! {
            () = stop.cancelled() => return,
            gauges = tokio::time::timeout(SIDE_CALL_TIMEOUT, scrape) => gauges.ok().flatten(),
        };
        if let Some(gauges) = gauges {
            shared.pressure().store(&gauges);
        }
    }
}
