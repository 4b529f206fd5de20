//! The README's in-process example compiles, runs, and is the same code as
//! here (the markers below delimit it).

use std::error::Error;
use std::sync::Arc;

use futures::StreamExt;
use gateway_adapters::sim::{SimBackend, SimConfig};
use gateway_core::*;
use gateway_policy::{ClientRequest, Gateway, ModelSpec, Settings, Tenant};

#[tokio::test]
#[rustfmt::skip]
async fn readme_example_runs() -> Result<(), Box<dyn Error>> {
    // README begin
    let sim = SimBackend::new(SimConfig::default()); // an engine serving model `sim`
    let gateway = Gateway::builder(Settings::default())
        .tenant_with_api_key(Tenant::new("team-a").with_budget_usd(5.0)?, "sk-a")
        .model(ModelSpec::new("sim", 8192).with_pricing(Pricing::per_million(0.5, None, 1.5)?))
        .backend(Arc::new(sim), "sim", "sim", None)
        .build()?;
    let tenant = gateway.authenticate(Some("sk-a"))?;
    let request = ClientRequest::with_generated_id("sim", Prompt::Text("Tell me a story".into()));
    let id = request.id.clone();
    let guard = gateway.request_cancel(); // dropping it cancels the request, even mid-prefill
    let mut stream = gateway.generate(&tenant, request, guard.handle().clone()).await?;
    while let Some(event) = stream.next().await {
        if let TokenEvent::Delta(d) = event? { print!("{}", d.text) }
    }
    guard.disarm();
    gateway.settled(&id).await; // settled: the tenant's account is exact
    if let Some(account) = gateway.account(&tenant.id) { println!("\nspent {}", account.spent) }
    // README end
    let account = gateway.account(&tenant.id).ok_or("no account")?;
    assert_eq!((account.requests, account.reserved), (1, Money::ZERO));
    assert!(account.usage.completion() > 0 && account.spent > Money::ZERO);
    Ok(())
}

fn normalize(code: &str) -> Vec<String> {
    code.lines()
        .map(|l| {
            l.split("//")
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn readme_shows_this_code() {
    let readme = include_str!("../../README.md");
    let block = readme
        .split("```rust\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let shown: Vec<String> = normalize(block)
        .into_iter()
        .filter(|l| !l.starts_with("use "))
        .collect();
    let source = include_str!("readme.rs");
    let body = source
        .split("// README begin")
        .nth(1)
        .unwrap()
        .split("// README end")
        .next()
        .unwrap();
    assert_eq!(shown, normalize(body));
}
