//! The `gateway` server: the library behind a config file.
//!
//! ```text
//! gateway                       embedded default: sim engine, tenant `demo` (key `sk-demo`)
//! gateway --config FILE         run from a TOML config
//! gateway --check-config FILE   validate a config: exit 0, or print every problem and exit 2
//! gateway [--config FILE] --listen ADDR   override the listen address (e.g. 127.0.0.1:0)
//! ```
//!
//! SIGINT/SIGTERM: first `/ready` answers 503 for `ready_drain_ms` (the
//! listener still serves, so a load balancer takes the replica out; a second
//! signal skips the rest of it), then stop accepting, let streams finish for
//! `shutdown_grace_ms`, abort the rest at their engines, settle every
//! reservation, exit 0 (all of it `gateway_adapters::server::serve_and_drain`).
//!
//! Built with the feature `otlp`, it exports one span per request over
//! OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is
//! set, and sends the last batches after the drain.

#[cfg(feature = "otlp")]
#[path = "gateway/otlp.rs"]
mod otlp;

use std::process::ExitCode;
use std::time::Duration;

use gateway_adapters::bootstrap::{build_gateway, router_options, serve_options};
use gateway_adapters::config::{DEMO_API_KEY, GatewayConfig};
use gateway_adapters::server::{router, serve_and_drain};
use tokio::net::TcpListener;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// jemalloc: faster than glibc's allocator on the request path, and its
/// background thread returns what a burst of streams freed (see
/// docs/operations.md, "Memory").
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// How often every backend's health is checked.
const HEALTH_EVERY: Duration = Duration::from_secs(5);

const USAGE: &str = "usage: gateway [--config FILE] [--listen IP:PORT] | --check-config FILE";

enum Command {
    Run {
        config: Option<String>,
        listen: Option<std::net::SocketAddr>,
    },
    Check(String),
    Help,
}

fn parse_args() -> Result<Command, String> {
    let mut args = std::env::args().skip(1);
    let (mut config, mut listen, mut check) = (None, None, None);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--help" | "-h" => return Ok(Command::Help),
            "--config" => config = Some(value("--config")?),
            "--check-config" => check = Some(value("--check-config")?),
            "--listen" => {
                let v = value("--listen")?;
                listen = Some(
                    v.parse()
                        .map_err(|_| format!("--listen: `{v}` is not IP:PORT"))?,
                );
            }
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    match (check, config, listen) {
        (Some(file), None, None) => Ok(Command::Check(file)),
        (Some(_), _, _) => Err(format!("--check-config takes no other flag\n{USAGE}")),
        (None, config, listen) => Ok(Command::Run { config, listen }),
    }
}

#[expect(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line program reports on its terminal"
)]
fn main() -> ExitCode {
    let command = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Command::Check(file) => match GatewayConfig::load(&file) {
            Err(problems) => {
                eprintln!("{problems}");
                ExitCode::from(2)
            }
            Ok(config) => match build_gateway(&config) {
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(2)
                }
                Ok(_) => {
                    println!(
                        "{file}: ok ({} tenants, {} models, {} backends)",
                        config.tenants.len(),
                        config.models.len(),
                        config.backends.len()
                    );
                    ExitCode::SUCCESS
                }
            },
        },
        Command::Run {
            config: file,
            listen,
        } => {
            let mut config = match file {
                None => GatewayConfig::embedded_default(),
                Some(file) => match GatewayConfig::load(&file) {
                    Ok(c) => c,
                    Err(problems) => {
                        eprintln!("{problems}");
                        return ExitCode::from(2);
                    }
                },
            };
            if let Some(listen) = listen {
                config.server.listen = listen;
            }
            let runtime = match runtime_builder().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            // Logs go to stderr (stdout is for the address line): warnings by
            // default, one line per settled request with RUST_LOG=info. The
            // OTLP layer has its own filter: request spans, whatever RUST_LOG.
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
            let logs = tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_filter(filter);
            #[cfg(feature = "otlp")]
            let export = match otlp::start(runtime.handle()) {
                Ok(export) => export,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            #[cfg(feature = "otlp")]
            let spans = export.as_ref().map(otlp::Export::layer);
            #[cfg(not(feature = "otlp"))]
            let spans: Option<tracing_subscriber::layer::Identity> = None;
            tracing_subscriber::registry().with(logs).with(spans).init();
            #[cfg(not(feature = "otlp"))]
            if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
                || std::env::var_os("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
            {
                tracing::warn!(
                    "OTEL_EXPORTER_OTLP_ENDPOINT is set but this gateway is built without the `otlp` feature: no spans are exported"
                );
            }
            let result = runtime.block_on(run(config));
            // After the drain: the last spans go out while the runtime that
            // sends them still runs.
            #[cfg(feature = "otlp")]
            if let Some(export) = &export {
                if let Err(e) = export.shutdown() {
                    eprintln!("{e}");
                }
            }
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The runtime: one thread when the process may use one CPU (pinned, or a
/// one-core container) and `TOKIO_WORKER_THREADS` does not ask for more,
/// else Tokio's multi-threaded scheduler (a worker per CPU, or
/// `TOKIO_WORKER_THREADS`). On one CPU a single-threaded scheduler does the
/// same work without the multi-threaded one's cross-thread queues and
/// wake-ups, and the accept loop runs on the same thread as the
/// connections (docs/performance.md, "The engines' HTTP client").
fn runtime_builder() -> tokio::runtime::Builder {
    let one_cpu = std::thread::available_parallelism().map_or(true, |n| n.get() == 1);
    if one_cpu && std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    }
}

#[expect(clippy::print_stdout, reason = "the server prints how to call it")]
async fn run(config: GatewayConfig) -> Result<(), String> {
    let gateway = build_gateway(&config).map_err(|e| e.to_string())?;
    gateway.check_health().await;
    let listener = TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.server.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("gateway listening on http://{addr}");
    for m in &config.models {
        println!("model: {}", m.name);
    }
    if config.tenants.iter().any(|t| t.key.matches(DEMO_API_KEY)) {
        println!("demo key: {DEMO_API_KEY}");
        println!(
            "try: curl -N http://{addr}/v1/chat/completions -H 'Authorization: Bearer sk-demo' \\\n       -H 'Content-Type: application/json' \\\n       -d '{{\"model\":\"{}\",\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"Hello\"}}]}}'",
            config
                .models
                .first()
                .map_or("sim-small", |m| m.name.as_str())
        );
    }

    let health = {
        let gateway = gateway.clone();
        tokio::spawn(async move {
            // The first check ran before the listener opened.
            tokio::time::sleep(HEALTH_EVERY).await;
            gateway
                .health_checks(HEALTH_EVERY, futures::future::pending())
                .await;
        })
    };
    let app = router(gateway.clone(), router_options(&config));
    // Each signal is one item: the first starts the readiness phase, a
    // second cuts it short.
    let signals = futures::stream::unfold((), |()| async {
        wait_for_signal().await;
        Some(((), ()))
    });
    let served = serve_and_drain(
        listener,
        app,
        &gateway,
        serve_options(&config),
        config.server.ready_drain,
        signals,
    )
    .await;
    health.abort();
    let report = served.map_err(|e| e.to_string())?;
    println!(
        "stopped: {} streams aborted at shutdown, {} unsettled",
        report.aborted, report.unsettled
    );
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // No signal handling available: run until killed.
        return futures::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
