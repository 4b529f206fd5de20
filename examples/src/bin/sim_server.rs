//! `sim_server`: the sim engine behind `POST /v1/chat/completions` with
//! nothing else — no auth, budgets, limits, routing or metrics — as the
//! baseline the `gateway` binary is load-tested against (`scripts/load`).
//!
//! ```text
//! sim_server --config FILE    serve the first sim backend of a gateway config,
//!                             on that config's `server.listen`
//! ```
//!
//! It reads the same TOML as `gateway`, so both run an identical sim, and
//! serves it with the same connection handling
//! ([`gateway_adapters::server::serve`]) and the same SSE body
//! ([`SseBody`]: the same framing and write batching); what the gateway
//! adds on top is what a comparison of the two measures. The first stdout line is
//! `sim_server listening on http://ADDR`. SIGINT/SIGTERM stop it.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::post;
use futures::StreamExt;
use gateway_adapters::config::GatewayConfig;
use gateway_adapters::openai::{Assembler, ChunkEncoder, Endpoint, parse_chat, unix_now};
use gateway_adapters::server::{SseBody, serve};
use gateway_adapters::sim::SimBackend;
use gateway_core::{
    Backend, BackendError, BackendRequest, ByteBound, CancelGuard, CancelHandle, TokenCounter,
    TokenStream,
};
use tokio::net::TcpListener;

const USAGE: &str = "usage: sim_server --config FILE";

/// What the handler needs.
struct App {
    backend: Arc<dyn Backend>,
    served_model: String,
    default_max_tokens: u32,
    counter: Arc<dyn TokenCounter>,
}

#[expect(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line program reports on its terminal"
)]
fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let file = match args.as_slice() {
        [flag, file] if flag == "--config" => file.clone(),
        [flag] if flag == "--help" || flag == "-h" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let config = match GatewayConfig::load(&file) {
        Ok(c) => c,
        Err(problems) => {
            eprint!("{problems}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

#[expect(clippy::print_stdout, reason = "the server prints its address")]
async fn run(config: GatewayConfig) -> Result<(), String> {
    let backend = config
        .backends
        .iter()
        .find(|b| b.sim.is_some())
        .ok_or("the config has no sim backend")?;
    let sim = backend
        .sim_config(&config.models)
        .ok_or("the backend has no sim settings")?;
    let default_max_tokens = config
        .models
        .iter()
        .find(|m| m.name == backend.model)
        .map_or(256, |m| m.default_max_tokens.get());
    let app = Arc::new(App {
        backend: Arc::new(SimBackend::new(sim)),
        served_model: backend.served_model.clone(),
        default_max_tokens,
        counter: Arc::new(ByteBound::default()),
    });
    let listener = TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.server.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("sim_server listening on http://{addr}");
    let router = Router::new()
        .route("/v1/chat/completions", post(chat))
        .with_state(app);
    serve(listener, router, wait_for_signal(), Duration::from_secs(2))
        .await
        .map_err(|e| e.to_string())
}

async fn chat(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let parsed = match parse_chat(&body) {
        Ok(p) => p,
        Err(e) => return json(e.status(), e.to_body()),
    };
    let model = parsed.model.clone();
    let (stream_mode, include_usage) = (parsed.stream, parsed.include_usage);
    let request = parsed.into_generate_request(app.default_max_tokens);
    let id = request.id.clone();
    let mut request = BackendRequest::new(request, app.counter.clone());
    request.served_model.clone_from(&app.served_model);
    let guard = CancelHandle::guarded();
    let stream = match app.backend.start(request, guard.handle().clone()).await {
        Ok(s) => s,
        Err(e) => {
            guard.disarm();
            return backend_error(&e);
        }
    };
    let created = unix_now();
    if !stream_mode {
        return assemble(
            stream,
            Assembler::new(Endpoint::Chat, id.as_str(), created, &model),
            guard,
        )
        .await;
    }
    let encoder = ChunkEncoder::new(Endpoint::Chat, id.as_str(), created, &model, include_usage);
    let mut response = Response::new(Body::from_stream(SseBody::new(stream, encoder, guard)));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn json(status: StatusCode, body: Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The error of a failure before the first byte: the kind's row of the
/// error table, as the gateway answers it.
fn backend_error(err: &BackendError) -> Response {
    let code = err.kind().row().code;
    json(
        code.status(),
        gateway_adapters::openai::code_error_body(code, &err.client_message(), None),
    )
}

async fn assemble(
    mut stream: TokenStream,
    mut assembler: Assembler,
    guard: CancelGuard,
) -> Response {
    let _ = guard.disarm();
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                if assembler.push(&event).is_err() {
                    break;
                }
            }
            Err(e) => return backend_error(&e),
        }
    }
    match assembler.body() {
        Ok(body) => json(StatusCode::OK, body),
        Err(e) => json(
            gateway_core::ErrorCode::Internal.status(),
            gateway_adapters::openai::code_error_body(
                gateway_core::ErrorCode::Internal,
                &e.to_string(),
                None,
            ),
        ),
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return futures::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
