//! The README's in-process example compiles, runs, and is the same code as
//! here (the markers below delimit it).

use std::sync::Arc;

use futures::StreamExt;
use gateway_adapters::sim::{SimBackend, SimConfig};
use gateway_core::*;

#[tokio::test]
#[rustfmt::skip]
async fn readme_example_runs() -> Result<(), BackendError> {
    // README begin
    let backend: Arc<dyn Backend> = Arc::new(SimBackend::new(SimConfig::default()));
    let request = GenerateRequest::new("sim", Prompt::Text("Tell me a story".into()), 64);
    let guard = CancelHandle::guarded(); // dropping guard cancels, even mid-prefill
    let mut stream = backend.start(BackendRequest::new(request, Arc::new(ByteBound::default())), guard.handle().clone()).await?;
    while let Some(event) = stream.next().await {
        if let TokenEvent::Delta(d) = event? { print!("{}", d.text) }
    }
    // README end
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
