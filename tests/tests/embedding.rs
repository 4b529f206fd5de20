//! Embedding the gateway in a host's own service without traps (issue 12):
//! the default router options take a normal request body; the gateway's
//! routes merge into (or nest under) a host's router that has its own
//! routes and fallback; a config whose backend does not serve its model
//! fails at start-up with the key it is about; the host reads exact usage
//! once the request it served has settled.
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
use gateway_adapters::server::{RouterOptions, router, routes, serve};
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
