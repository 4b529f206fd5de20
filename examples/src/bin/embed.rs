//! In-process use: build a simulated engine, start a request, print the
//! tokens as they stream and the usage at the end.
//!
//! Run it: `cargo run --release -p gateway-examples --bin embed`.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use futures::StreamExt;
use gateway_adapters::sim::{SimBackend, SimConfig, Speculative};
use gateway_core::*;
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
    ExitCode::SUCCESS
}
