//! A host's own axum service with the gateway's OpenAI routes mounted
//! beside its own routes, under its own middleware: two models, one on the
//! host's own backend (`canned`, defined below) and one on the in-process
//! simulated engine; a tenant with a budget; and a route of the host's that
//! reads the tenant's usage from the gateway's ledger.
//!
//! It serves on `127.0.0.1:0` with `server::serve` (the gateway's edge:
//! closing a stalled client's connection, timeouts), calls itself over
//! loopback, prints what it got and stops.
//!
//! Run it: `cargo run -p gateway-examples --bin host`.

use std::error::Error;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use gateway_adapters::axum::extract::{Path, Request, State};
use gateway_adapters::axum::middleware::{Next, from_fn};
use gateway_adapters::axum::response::{IntoResponse, Response};
use gateway_adapters::axum::routing::get;
use gateway_adapters::axum::{Json, Router};
use gateway_adapters::server::{RouterOptions, routes, serve};
use gateway_adapters::sim::{SimBackend, SimConfig};
use gateway_core::http::{HeaderValue, StatusCode};
use gateway_core::live::LiveRequests;
use gateway_core::*;
use gateway_policy::{Gateway, ModelSpec, Settings, Tenant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The host's own engine: answers every prompt with the same words, one
/// token each. `gateway_core::live` keeps it conformant: the registry
/// answers `abort(id)` and the in-flight count, `track` the cancel, the
/// deadline and the request's completion cap.
#[derive(Debug)]
struct Canned {
    info: BackendInfo,
    live: LiveRequests,
}

const WORDS: [&str; 6] = ["Hello", " from", " the", " host's", " own", " backend."];

#[async_trait::async_trait]
impl Backend for Canned {
    fn info(&self) -> &BackendInfo {
        &self.info
    }
    fn pressure(&self) -> Pressure {
        self.live.pressure()
    }
    async fn start(
        &self,
        req: BackendRequest,
        cancel: CancelHandle,
    ) -> Result<TokenStream, BackendError> {
        let prompt = req.counter.count_prompt(&req.request.prompt).value();
        let live = self.live.register(&req.request.id, &cancel)?;
        live.enter(EnginePhase::Decode);
        let started = Started {
            prompt_tokens: Some(prompt),
            cached_tokens: None,
        };
        let mut events = vec![Ok(TokenEvent::Started(started))];
        events.extend(WORDS.map(|w| Ok(TokenEvent::Delta(Delta::text(w, 1)))));
        events.push(Ok(TokenEvent::Usage(Usage::new(
            prompt,
            WORDS.len() as u64,
        ))));
        events.push(Ok(TokenEvent::Finished(FinishReason::Stop)));
        Ok(live.track(futures::stream::iter(events), req.budget))
    }
    async fn abort(&self, id: &RequestId) -> Result<bool, BackendError> {
        Ok(self.live.abort(id))
    }
    async fn health(&self) -> Health {
        Health::Healthy
    }
}

/// The host's middleware: a header on every response, the gateway's
/// included.
async fn stamp(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert("x-served-by", HeaderValue::from_static("host-app"));
    response
}

/// The host's own route: a tenant's account, read from the gateway's
/// ledger.
async fn usage(State(gateway): State<Gateway>, Path(tenant): Path<String>) -> Response {
    match gateway.account(&TenantId::new(tenant)) {
        Some(a) => Json(serde_json::json!({
            "requests": a.requests,
            "prompt_tokens": a.usage.prompt(),
            "completion_tokens": a.usage.completion(),
            "spent_usd": a.spent.to_string(),
            "held_usd": a.reserved.to_string(),
            "budget_usd": a.budget.map(|b| b.to_string()),
        }))
        .into_response(),
        None => (StatusCode::NOT_FOUND, "no such tenant").into_response(),
    }
}

fn gateway() -> Result<Gateway, Box<dyn Error>> {
    let sim = SimBackend::new(SimConfig {
        name: "sim-0".into(),
        models: vec!["sim-small".into()],
        natural_length: 12..=12,
        ..SimConfig::zero_delay()
    });
    let canned = Canned {
        info: BackendInfo {
            name: "canned-0".into(),
            engine: EngineKind::Custom,
            models: vec!["canned".into()],
        },
        live: LiveRequests::new(64),
    };
    let pricing = Pricing::per_million(1.0, None, 2.0)?;
    let tenant = Tenant::new("team-a").with_budget_usd(5.0)?;
    Ok(Gateway::builder(Settings::default())
        .tenant_with_api_key(tenant, "sk-team-a")
        .model(ModelSpec::new("sim-small", 8192).with_pricing(pricing))
        .model(ModelSpec::new("canned", 8192).with_pricing(pricing))
        .backend(Arc::new(sim), "sim-small", "sim-small", None)
        .backend(Arc::new(canned), "canned", "canned", None)
        .build()?)
}

/// The host's app: its routes, the gateway's routes merged beside them (a
/// `Router<Gateway>`, the host's state), its fallback, its middleware over
/// all of it.
fn app(gateway: Gateway) -> Router {
    Router::new()
        .route("/", get(|| async { "the host's own service" }))
        .route("/usage/{tenant}", get(usage))
        .merge(routes(gateway.clone(), RouterOptions::default()))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not here") })
        .layer(from_fn(stamp))
        .with_state(gateway)
}

#[tokio::main]
#[expect(clippy::print_stdout, reason = "an example prints what it shows")]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[expect(clippy::print_stdout, reason = "an example prints what it shows")]
async fn run() -> Result<(), Box<dyn Error>> {
    let gateway = gateway()?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve(
        listener,
        app(gateway.clone()),
        stop.clone().cancelled_owned(),
        Duration::from_secs(5),
    ));

    let r = call(addr, "GET", "/", None).await?;
    println!(
        "GET /: {} {:?} (x-served-by: {})",
        r.status, r.body, r.stamp
    );
    for model in ["canned", "sim-small"] {
        let body = format!(
            r#"{{"model":"{model}","max_tokens":16,"messages":[{{"role":"user","content":"Hello there"}}]}}"#
        );
        let r = call(addr, "POST", "/v1/chat/completions", Some(&body)).await?;
        let json: serde_json::Value = serde_json::from_str(&r.body)?;
        println!(
            "{model}: {} {} prompt + {} completion tokens, {:?} (x-served-by: {})",
            r.status,
            json["usage"]["prompt_tokens"],
            json["usage"]["completion_tokens"],
            json["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or(""),
            r.stamp
        );
    }
    // The gateway's own refusals pass the host's middleware too.
    let r = call_as(addr, None, "GET", "/v1/models", None).await?;
    let json: serde_json::Value = serde_json::from_str(&r.body)?;
    println!(
        "GET /v1/models without a key: {} {} (x-served-by: {})",
        r.status, json["error"]["code"], r.stamp
    );
    let r = call(addr, "GET", "/nope", None).await?;
    println!(
        "GET /nope: {} {:?} (x-served-by: {})",
        r.status, r.body, r.stamp
    );

    // Each request settles just after its response: wait, then the account
    // is exact (`Gateway::settled` waits for one request by its id).
    if !gateway.wait_idle(Duration::from_secs(5)).await {
        return Err("requests still in flight".into());
    }
    let r = call(addr, "GET", "/usage/team-a", None).await?;
    println!("GET /usage/team-a: {} {}", r.status, r.body);

    stop.cancel();
    server.await??;
    Ok(())
}

/// One response as the example's tiny client reads it.
struct Answer {
    status: u16,
    /// The `x-served-by` header.
    stamp: String,
    body: String,
}

/// [`call_as`] tenant `team-a`.
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<Answer, Box<dyn Error>> {
    call_as(addr, Some("sk-team-a"), method, path, body).await
}

/// One HTTP/1.1 request over loopback with `key`, read to the close (every
/// response here has a `content-length`).
async fn call_as(
    addr: SocketAddr,
    key: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<Answer, Box<dyn Error>> {
    let mut stream = TcpStream::connect(addr).await?;
    let body = body.unwrap_or("");
    let auth = key.map_or(String::new(), |k| format!("authorization: Bearer {k}\r\n"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\n{auth}\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await?;
    let (head, body) = raw.split_once("\r\n\r\n").ok_or("no response head")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    let stamp = head
        .lines()
        .find_map(|l| l.strip_prefix("x-served-by: "))
        .unwrap_or("-")
        .to_owned();
    Ok(Answer {
        status,
        stamp,
        body: body.to_owned(),
    })
}
