//! Embedding the gateway in a host's own service without traps (issue 12):
//! the default router options take a normal request body; the gateway's
//! routes merge into (or nest under) a host's router that has its own
//! routes and fallback; a config whose backend does not serve its model
//! fails at start-up with the key it is about; the host reads exact usage
//! once the request it served has settled; the router wrapped in the host's
//! own tower layer, served with `server::serve`, keeps the stalled-client
//! kill; `server::serve_and_drain` drains on a signal.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;

use gateway_adapters::bootstrap::{BootstrapError, build_gateway_with};
use gateway_adapters::config::GatewayConfig;
use gateway_adapters::server::{
    RouterOptions, ServeOptions, router, routes, serve, serve_and_drain,
};
use gateway_adapters::sim::{SimBackend, SimConfig};
use gateway_core::{Backend, Money, Pricing, RequestId, Usage};
use gateway_policy::{Gateway, ModelSpec, Settings, Tenant};
use gateway_tests::{Response, Server, request};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const CONFIG: &str = r#"
[[tenants]]
id = "team-a"
api_key = "sk-a"

[[models]]
name = "m"
context_window = 4096
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0

[[models]]
name = "n"
context_window = 4096
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0

[[backends]]
name = "m-0"
engine = "sim"
model = "m"

[[backends]]
name = "n-0"
engine = "sim"
model = "n"
"#;

#[test]
fn a_host_backend_that_does_not_serve_its_model_fails_at_start_up_naming_the_key() {
    let config = GatewayConfig::parse(CONFIG, Path::new(".")).unwrap();
    // The host's own backend for `n-0`: the default sim, which serves `sim`.
    let err = build_gateway_with(&config, |b| {
        (b.name == "n-0")
            .then(|| Arc::new(SimBackend::new(SimConfig::default())) as Arc<dyn Backend>)
    })
    .unwrap_err();
    assert_eq!(
        err,
        BootstrapError {
            path: "backends[1].model".into(),
            message: "invalid gateway: backend sim-0 is registered for model n (served as n), \
                      but it serves only [sim]"
                .into(),
        }
    );
    // The config's own backends serve their models.
    assert!(build_gateway_with(&config, |_| None).is_ok());
}

/// A gateway with tenant `team-a` (key `sk-a`) and model `m` (10 and 100
/// picodollars per prompt and completion token) on a zero-delay sim that
/// always writes 5 tokens.
fn gateway() -> Gateway {
    let sim = SimBackend::new(SimConfig {
        name: "m-0".into(),
        models: vec!["m".into()],
        natural_length: 5..=5,
        ..SimConfig::zero_delay()
    });
    let pricing = Pricing {
        input: Money::from_picos(10),
        cached_input: Money::from_picos(1),
        output: Money::from_picos(100),
    };
    Gateway::builder(Settings::default())
        .tenant_with_api_key(Tenant::new("team-a"), "sk-a")
        .model(ModelSpec::new("m", 4096).with_pricing(pricing))
        .backend(Arc::new(sim), "m", "m", None)
        .build()
        .unwrap()
}

const CHAT: &[u8] =
    br#"{"model":"m","max_tokens":8,"messages":[{"role":"user","content":"Say hi"}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_reads_exact_usage_once_the_request_it_served_has_settled() {
    let options = RouterOptions {
        max_body_bytes: 1 << 16,
        ..RouterOptions::default()
    };
    let server = Server::start(gateway(), options).await.unwrap();
    let r = request(
        server.addr,
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer sk-a")],
        CHAT,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let body: Value = r.json();
    // The response names the gateway's id of the request.
    let id = body["id"]
        .as_str()
        .unwrap()
        .strip_prefix("chatcmpl-")
        .unwrap();
    let id = RequestId::new(id);
    assert!(id.is_generated(), "{id}");
    let usage = &body["usage"];
    let (prompt, completion) = (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
    );
    assert_eq!((prompt, completion), (40, 5));
    server.gateway.settled(&id).await;
    let tenant = server.gateway.tenant("team-a").unwrap();
    let account = server.gateway.account(&tenant.id).unwrap();
    assert_eq!(account.requests, 1);
    assert_eq!(account.usage, Usage::new(40, 5));
    // 40 prompt tokens * 10 + 5 completion tokens * 100.
    assert_eq!(
        (account.spent, account.reserved),
        (Money::from_picos(900), Money::ZERO)
    );
    // Nothing else is in flight either.
    assert!(
        server
            .gateway
            .wait_idle(std::time::Duration::from_secs(5))
            .await
    );
    server.stop().await;
}

/// A chat body of exactly `len` bytes (`len` at least 100).
fn chat_body(len: usize) -> Vec<u8> {
    let head = r#"{"model":"m","max_tokens":8,"messages":[{"role":"user","content":""#;
    let tail = r#""}]}"#;
    let pad = len - head.len() - tail.len();
    let body = format!("{head}{}{tail}", "a".repeat(pad));
    assert_eq!(body.len(), len);
    body.into_bytes()
}

async fn post_chat(addr: std::net::SocketAddr, path: &str, body: &[u8]) -> Response {
    request(
        addr,
        "POST",
        path,
        &[("authorization", "Bearer sk-a")],
        body,
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_router_options_take_a_normal_body() {
    let options = RouterOptions::default();
    // The config file's default.
    let file = GatewayConfig::embedded_default();
    assert_eq!(options.max_body_bytes, file.server.max_body_bytes.get());
    assert_eq!(options.max_body_bytes, 1 << 20);
    let server = Server::start(gateway(), options).await.unwrap();
    let r = post_chat(server.addr, "/v1/chat/completions", &chat_body(1024)).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.json()["usage"]["completion_tokens"], 5);
    // A body of exactly 1 MiB is read too (the model then refuses a prompt
    // that long, which is not a 413).
    let r = post_chat(server.addr, "/v1/chat/completions", &chat_body(1 << 20)).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "context_length_exceeded");
    server.stop().await;
}

/// Serves `app` on `127.0.0.1:0` until the token is canceled.
async fn serve_app(app: Router) -> (std::net::SocketAddr, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let shutdown = stop.clone().cancelled_owned();
    tokio::spawn(serve(listener, app, shutdown, Duration::from_secs(1)));
    (addr, stop)
}

async fn get_path(addr: std::net::SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, &[("authorization", "Bearer sk-a")], b"")
        .await
        .unwrap()
}

fn host_router() -> Router {
    Router::new()
        .route("/host", get(|| async { "the host's own route" }))
        .fallback(|| async { (StatusCode::IM_A_TEAPOT, "the host's fallback") })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routes_merge_into_a_host_router_with_its_own_route_and_fallback() {
    let gateway = gateway();
    // The trap: the whole router (with its fallback) does not merge.
    let merged = std::panic::catch_unwind(AssertUnwindSafe(|| {
        host_router().merge(router(gateway.clone(), RouterOptions::default()))
    }));
    assert!(merged.is_err());

    let app = host_router().merge(routes(gateway, RouterOptions::default()));
    let (addr, stop) = serve_app(app).await;
    // The host's route.
    let r = get_path(addr, "/host").await;
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"the host's own route"[..])
    );
    assert_eq!(r.header("x-request-id"), None);
    // The gateway's routes.
    let r = get_path(addr, "/health").await;
    assert_eq!(r.status, 200);
    assert!(RequestId::new(r.header("x-request-id").unwrap()).is_generated());
    let r = get_path(addr, "/v1/models").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["data"][0]["id"], "m");
    let r = post_chat(addr, "/v1/chat/completions", CHAT).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.json()["usage"]["completion_tokens"], 5);
    // An unknown path: the host's fallback, not the gateway's JSON 404.
    let r = get_path(addr, "/nope").await;
    assert_eq!(
        (r.status, r.body.as_slice()),
        (418, &b"the host's fallback"[..])
    );
    let r = get_path(addr, "/v1/nope").await;
    assert_eq!(
        (r.status, r.body.as_slice()),
        (418, &b"the host's fallback"[..])
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_nests_under_a_prefix_of_a_host_router() {
    let app = Router::new()
        .route("/host", get(|| async { "the host's own route" }))
        .nest("/llm", router(gateway(), RouterOptions::default()))
        .fallback(|| async { (StatusCode::IM_A_TEAPOT, "the host's fallback") });
    let (addr, stop) = serve_app(app).await;
    let r = get_path(addr, "/host").await;
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"the host's own route"[..])
    );
    let r = post_chat(addr, "/llm/v1/chat/completions", CHAT).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.json()["usage"]["completion_tokens"], 5);
    // Unknown under the prefix: the gateway's JSON 404; elsewhere: the host's.
    let r = get_path(addr, "/llm/nope").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "not_found");
    let r = get_path(addr, "/nope").await;
    assert_eq!(
        (r.status, r.body.as_slice()),
        (418, &b"the host's fallback"[..])
    );
    stop.cancel();
}

/// A gateway like [`gateway`]'s whose sim writes as fast as it can for as
/// long as asked, and that drops a client taking nothing for 300 ms.
fn fast_gateway() -> (Gateway, SimBackend) {
    let sim = SimBackend::new(SimConfig {
        name: "m-0".into(),
        models: vec!["m".into()],
        natural_length: 100_000..=100_000,
        kv_capacity_tokens: 1_000_000,
        context_window: 1_000_000,
        ..SimConfig::zero_delay()
    });
    let settings = Settings {
        client_stall_timeout: Duration::from_millis(300),
        ..Settings::default()
    };
    let gateway = Gateway::builder(settings)
        .tenant_with_api_key(Tenant::new("team-a"), "sk-a")
        .model(ModelSpec::new("m", 1_000_000))
        .backend(Arc::new(sim.clone()), "m", "m", None)
        .build()
        .unwrap();
    (gateway, sim)
}

/// The host's router with the gateway's routes merged in, wrapped in a
/// tower layer of the host's (not a `Router` any more) that stamps every
/// response with `x-host: 1`.
fn layered_host_app(
    gateway: Gateway,
) -> impl tower::Service<
    axum::extract::Request,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    let app = host_router().merge(routes(gateway, RouterOptions::default()));
    tower::ServiceBuilder::new()
        .map_response(|mut response: axum::response::Response| {
            response
                .headers_mut()
                .insert("x-host", axum::http::HeaderValue::from_static("1"));
            response
        })
        .service(app)
}

const LONG_STREAM: &[u8] = br#"{"model":"m","stream":true,"max_tokens":100000,"messages":[{"role":"user","content":"Say hi"}]}"#;

/// Opens a long stream on a keep-alive connection with a small receive
/// buffer, reads its first event, then stops reading until the gateway has
/// given the request up (the engine aborted); returns the rest of the body
/// as read afterwards.
async fn stall_one_stream(
    addr: std::net::SocketAddr,
    gateway: &Gateway,
    sim: &SimBackend,
) -> std::io::Result<Response> {
    let mut s = gateway_tests::open_with_recv_buffer(
        addr,
        16 * 1024,
        "POST",
        "/v1/chat/completions",
        &[
            ("authorization", "Bearer sk-a"),
            ("connection", "keep-alive"),
        ],
        LONG_STREAM,
    )
    .await
    .unwrap();
    assert_eq!(s.status, 200);
    assert_eq!(s.header_value("x-host").as_deref(), Some("1"));
    assert!(s.next_event().await.unwrap().is_some());
    // The client stops reading: after 300 ms of a full buffer the gateway
    // drops it, aborts the engine and settles.
    assert!(gateway.wait_idle(Duration::from_secs(10)).await);
    assert_eq!(sim.aborts().decode, 1, "{:?}", sim.aborts());
    s.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_layer_around_the_router_keeps_the_stalled_client_kill() {
    let (gateway, sim) = fast_gateway();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let app = layered_host_app(gateway.clone());
    tokio::spawn(serve(
        listener,
        app,
        stop.clone().cancelled_owned(),
        Duration::from_secs(1),
    ));
    // The host's route and its layer on the gateway's routes.
    let r = get_path(addr, "/host").await;
    assert_eq!((r.status, r.header("x-host")), (200, Some("1")));
    let r = get_path(addr, "/health").await;
    assert_eq!((r.status, r.header("x-host")), (200, Some("1")));
    let r = get_path(addr, "/nope").await;
    assert_eq!((r.status, r.header("x-host")), (418, Some("1")));
    // The stalled client's connection is closed under it: what it reads
    // after the stall breaks off inside the body, never at its end.
    let rest = stall_one_stream(addr, &gateway, &sim).await;
    assert!(rest.is_err(), "the body ended normally: {rest:?}");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_axum_serve_the_same_app_only_ends_the_stalled_stream() {
    // The control of the test above, so that it can fail: served by
    // `axum::serve`, the same layered app only ends the stalled stream's
    // body (without `[DONE]`), and its connection stays.
    let (gateway, sim) = fast_gateway();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = layered_host_app(gateway.clone());
    let app = axum::ServiceExt::<axum::extract::Request>::into_make_service(app);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let rest = stall_one_stream(addr, &gateway, &sim).await.unwrap();
    let text = String::from_utf8_lossy(&rest.body);
    assert!(text.starts_with("data: "), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_and_drain_answers_not_ready_then_drains_on_a_signal() {
    let gateway = gateway();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (signal, signals) = futures::channel::mpsc::channel::<()>(2);
    let mut signal = signal;
    let app = host_router().merge(routes(gateway.clone(), RouterOptions::default()));
    let served = tokio::spawn({
        let gateway = gateway.clone();
        async move {
            let options = ServeOptions::with_grace(Duration::from_secs(1));
            serve_and_drain(
                listener,
                app,
                &gateway,
                options,
                Duration::from_secs(30),
                signals,
            )
            .await
        }
    });
    let r = get_path(addr, "/ready").await;
    assert_eq!(r.status, 200);
    // The edge's own answers are counted on the gateway's /metrics.
    let big = "a".repeat(40 * 1024);
    let r = request(addr, "GET", "/health", &[("x-big", &big)], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 431);
    let metrics = String::from_utf8(get_path(addr, "/metrics").await.body).unwrap();
    assert!(
        metrics.contains(r#"gateway_edge_rejections_total{reason="headers_too_large"} 1"#),
        "{metrics}"
    );
    // The first signal: not ready, still serving (for up to 30 s).
    signal.try_send(()).unwrap();
    let r = loop {
        let r = get_path(addr, "/ready").await;
        if r.status != 200 {
            break r;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["reason"], "shutting down");
    assert_eq!(r.header("connection"), Some("close"));
    let r = post_chat(addr, "/v1/chat/completions", CHAT).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    // The second cuts the readiness phase short: the listener closes and
    // the (idle) gateway drains at once.
    signal.try_send(()).unwrap();
    let report = tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((report.aborted, report.unsettled), (0, 0));
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
