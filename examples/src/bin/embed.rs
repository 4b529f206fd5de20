//! In-process use: build a simulated engine, start a request, print the
//! tokens as they stream and the usage at the end; then run a request
//! through a `Gateway` on the same engine (a tenant with a budget, a priced
//! model) and print the tenant's exact account once it has settled.
//!
//! Run it: `cargo run --release -p gateway-examples --bin embed`.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use futures::StreamExt;
use gateway_adapters::sim::{SimBackend, SimConfig, Speculative};
use gateway_core::*;
use gateway_policy::{ClientRequest, Gateway, ModelSpec, Settings, Tenant};
use tokio::time::Instant;

#[tokio::main]
#[expect(clippy::print_stdout, reason = "an example prints what it shows")]
async fn main() -> ExitCode {
    // An engine like a small GPU server: 4 slots, 200 tokens/s decode,
    // speculative decoding with 4 draft tokens accepted 70% of the time.
    let sim = SimBackend::new(SimConfig {
        name: "sim-0".into(),
        models: vec!["sim-small".into()],
        slots: 4,
        decode_tokens_per_sec: Some(200.0),
        speculative: Some(Speculative::new(4, 0.7)),
        seed: 42,
        ..SimConfig::default()
    });
    let backend: Arc<dyn Backend> = Arc::new(sim.clone());

    let request = GenerateRequest::new(
        "sim-small",
        Prompt::Chat(vec![
            ChatMessage::system("You are terse."),
            ChatMessage::user("Say something in a few languages."),
        ]),
        48,
    );
    let counter: Arc<dyn TokenCounter> = Arc::new(ByteBound::default());
    let meter = UsageMeter::new();
    // Dropping the guard cancels the request (`ClientGone`): it is kept to
    // the end of `main`.
    let guard = CancelHandle::guarded();
    let started = Instant::now();
    let mut stream = match backend
        .start(
            BackendRequest::new(request, counter),
            guard.handle().clone(),
        )
        .await
    {
        Ok(stream) => stream.metered(meter.clone()),
        Err(e) => {
            println!("start failed: {e}");
            return ExitCode::FAILURE;
        }
    };

    let mut first_token = None;
    let mut out = std::io::stdout();
    while let Some(item) = stream.next().await {
        match item {
            Ok(TokenEvent::Started(s)) => {
                println!("started: {} prompt tokens", s.prompt_tokens.unwrap_or(0))
            }
            Ok(TokenEvent::Delta(d)) => {
                first_token.get_or_insert_with(|| started.elapsed());
                print!("{}", d.text);
                let _ = out.flush();
            }
            Ok(TokenEvent::Usage(u)) => println!("\nusage: {u}"),
            Ok(TokenEvent::Finished(reason)) => println!("finished: {reason}"),
            Err(e) => {
                println!("\nerror: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let delivered = meter.snapshot();
    println!(
        "time to first token: {:?}, total: {:?}, delivered tokens: {}",
        first_token.unwrap_or_default(),
        started.elapsed(),
        delivered.completion()
    );
    println!("engine: {:?}", sim.stats());
    through_the_gateway(sim).await
}

/// The same engine behind a [`Gateway`]: authentication, the budget,
/// the charge, settled exactly once.
#[expect(clippy::print_stdout, reason = "an example prints what it shows")]
async fn through_the_gateway(sim: SimBackend) -> ExitCode {
    let built = Pricing::per_million(0.50, Some(0.05), 1.50)
        .map_err(|e| e.to_string())
        .and_then(|pricing| {
            let tenant = Tenant::new("team-a")
                .with_budget_usd(1.0)
                .map_err(|e| e.to_string())?;
            Gateway::builder(Settings::default())
                .tenant_with_api_key(tenant, "sk-team-a")
                .model(ModelSpec::new("sim-small", 8192).with_pricing(pricing))
                .backend(Arc::new(sim), "sim-small", "sim-small", None)
                .build()
                .map_err(|e| e.to_string())
        });
    let gateway = match built {
        Ok(g) => g,
        Err(e) => {
            println!("gateway: {e}");
            return ExitCode::FAILURE;
        }
    };
    let tenant = match gateway.authenticate(Some("sk-team-a")) {
        Ok(t) => t,
        Err(e) => {
            println!("gateway: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut request = ClientRequest::with_generated_id(
        "sim-small",
        Prompt::Text("Say something in a few languages.".into()),
    );
    request.max_tokens = Some(24);
    let id = request.id.clone();
    // Dropping the guard would cancel the request (the client left).
    let guard = gateway.request_cancel();
    let mut stream = match gateway
        .generate(&tenant, request, guard.handle().clone())
        .await
    {
        Ok(s) => s,
        Err(e) => {
            println!("gateway: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut text = String::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(TokenEvent::Delta(d)) => text.push_str(&d.text),
            Ok(_) => {}
            Err(e) => {
                println!("gateway: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    guard.disarm();
    println!("gateway text: {text}");
    // The request settles in the background once the stream ended: wait for
    // it, then the account is exact.
    gateway.settled(&id).await;
    let Some(account) = gateway.account(&tenant.id) else {
        return ExitCode::FAILURE;
    };
    println!(
        "gateway account: {} request(s), {} prompt + {} completion tokens, spent {}, held {}, budget {}",
        account.requests,
        account.usage.prompt(),
        account.usage.completion(),
        account.spent,
        account.reserved,
        account.budget.unwrap_or_default(),
    );
    ExitCode::SUCCESS
}
