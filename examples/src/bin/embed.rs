//! In-process use of the gateway pipeline: a `Gateway` over the simulated
//! engine, with a tenant that has a budget and a priced model. One request
//! streams to its end; a second is cancelled by dropping its guard after a
//! few tokens (the client leaving), which aborts it at the engine. After
//! each, the tenant's account is read once the request has settled: exact,
//! nothing held.
//!
//! Run it: `cargo run --release -p gateway-examples --bin embed`.

use std::error::Error;
use std::process::ExitCode;
use std::sync::Arc;

use futures::StreamExt;
use gateway_adapters::sim::{SimBackend, SimConfig};
use gateway_core::*;
use gateway_policy::{ClientRequest, Gateway, ModelSpec, Settings, Tenant};

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
    // An engine like a small GPU server: 4 slots, 50 tokens/s decode.
    let sim = SimBackend::new(SimConfig {
        name: "sim-0".into(),
        models: vec!["sim-small".into()],
        slots: 4,
        decode_tokens_per_sec: Some(50.0),
        seed: 42,
        ..SimConfig::default()
    });
    // $0.50 per million prompt tokens ($0.05 cached), $1.50 per million
    // completion tokens; the tenant may spend $1.
    let pricing = Pricing::per_million(0.50, Some(0.05), 1.50)?;
    let gateway = Gateway::builder(Settings::default())
        .tenant_with_api_key(Tenant::new("team-a").with_budget_usd(1.0)?, "sk-team-a")
        .model(ModelSpec::new("sim-small", 8192).with_pricing(pricing))
        .backend(Arc::new(sim.clone()), "sim-small", "sim-small", None)
        .build()?;
    let tenant = gateway.authenticate(Some("sk-team-a"))?;
    let prompt = || Prompt::Text("Say something in a few languages.".into());

    // 1. A request read to its end.
    let mut request = ClientRequest::with_generated_id("sim-small", prompt());
    request.max_tokens = Some(24);
    let id = request.id.clone();
    // The guard stays with whoever reads the stream: dropping it cancels
    // the request (the client left).
    let guard = gateway.request_cancel();
    let mut stream = gateway
        .generate(&tenant, request, guard.handle().clone())
        .await?;
    let mut text = String::new();
    while let Some(event) = stream.next().await {
        if let TokenEvent::Delta(d) = event? {
            text.push_str(&d.text);
        }
    }
    guard.disarm();
    println!("text: {text:?}");
    // The request settles in the background once its stream ended: wait
    // for it, then the account is exact.
    gateway.settled(&id).await;
    print_account("after one request", &gateway, &tenant.id)?;

    // 2. A request whose client leaves after 5 tokens.
    let mut request = ClientRequest::with_generated_id("sim-small", prompt());
    request.max_tokens = Some(24);
    let id = request.id.clone();
    let guard = gateway.request_cancel();
    let mut stream = gateway
        .generate(&tenant, request, guard.handle().clone())
        .await?;
    let mut read = 0;
    while read < 5 {
        match stream.next().await {
            Some(Ok(TokenEvent::Delta(d))) => read += d.tokens,
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => return Err("the stream ended early".into()),
        }
    }
    // The client goes: dropping the guard cancels the request
    // (`client_gone`), and the engine aborts it mid-decode.
    drop(guard);
    drop(stream);
    gateway.settled(&id).await;
    println!(
        "cancelled after {read} tokens: engine aborts in decode {}",
        sim.aborts().decode
    );
    print_account("after the cancelled one", &gateway, &tenant.id)?;
    Ok(())
}

#[expect(clippy::print_stdout, reason = "an example prints what it shows")]
fn print_account(when: &str, gateway: &Gateway, tenant: &TenantId) -> Result<(), Box<dyn Error>> {
    let account = gateway.account(tenant).ok_or("no account")?;
    println!(
        "account {when}: {} request(s), {} prompt + {} completion tokens, spent {}, held {}, budget {}",
        account.requests,
        account.usage.prompt(),
        account.usage.completion(),
        account.spent,
        account.reserved,
        account.budget.unwrap_or_default(),
    );
    Ok(())
}
