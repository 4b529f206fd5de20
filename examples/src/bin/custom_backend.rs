//! A custom backend that passes the conformance kit: a toy engine with one
//! slot (other requests queue) that "prefills" for a while, then echoes the
//! prompt's words, cycling, one token every 20 ms, up to 1000 tokens. The
//! engine only produces events and moves its phase; `gateway_core::live`
//! does the rest of the contract: the registry behind `abort(id)`, the
//! in-flight count and the pressure (`LiveRequests`), and the cancel,
//! deadline, cap and error-phase rules (`LiveGuard::track`).
//!
//! Run it: `cargo run -p gateway-examples --bin custom_backend`. It runs the
//! conformance suite and exits non-zero if any rule fails.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::{once, select, unfold};
use gateway_core::testkit::conformance::{self, ConformanceConfig, ConformanceTarget};
use gateway_core::testkit::conformance::{Instance, Scenario};
use gateway_core::*;
use tokio::sync::{Semaphore, mpsc};

/// The most tokens the engine produces for one request.
const LENGTH: u32 = 1000;
/// Time per token.
const TOKEN_TIME: Duration = Duration::from_millis(20);

#[derive(Debug)]
struct EchoBackend {
    info: BackendInfo,
    slot: Arc<Semaphore>,
    live: LiveRequests,
    prefill: Duration,
    /// Fail (instead of the next token) after this many tokens.
    fail_after: Option<u32>,
}

#[async_trait]
impl Backend for EchoBackend {
    fn info(&self) -> &BackendInfo {
        &self.info
    }

    fn pressure(&self) -> Pressure {
        let mut pressure = self.live.pressure();
        pressure.limit = Some(1);
        pressure
    }

    async fn start(
        &self,
        req: BackendRequest,
        cancel: CancelHandle,
    ) -> Result<TokenStream, BackendError> {
        let Prompt::Text(text) = &req.request.prompt else {
            return Err(BackendError::unsupported("prompts other than text"));
        };
        if text.trim().is_empty() || !self.info.serves(&req.served_model) {
            let why = "no words to echo, or not model `echo`";
            return Err(BackendError::new(FailureKind::InvalidRequest, why));
        }
        let live = self.live.register(&req.request.id, &cancel)?; // Queued
        // The engine runs as its stream is polled, so it takes a free slot
        // now, as an engine's scheduler does on arrival.
        let permit = self.slot.clone().try_acquire_owned().ok();
        if permit.is_some() {
            live.enter(EnginePhase::Prefill);
        }
        let prompt = req.counter.count_prompt(&req.request.prompt).value();
        let n = LENGTH.min(req.budget.max_completion_tokens);
        let (text, prefill, fail_after) = (text.clone(), self.prefill, self.fail_after);
        let (attempt, slot, (tx, rx)) = (live.attempt(), self.slot.clone(), mpsc::channel(4));
        let engine = async move {
            let _slot = match permit {
                Some(permit) => permit,
                None => slot.acquire_owned().await.ok()?,
            };
            attempt.enter(EnginePhase::Prefill);
            tokio::time::sleep(prefill).await;
            tx.send(Ok(TokenEvent::Started(Started::default())))
                .await
                .ok()?;
            for (i, word) in (0..n).zip(text.split_whitespace().cycle()) {
                if fail_after == Some(i) {
                    let failed = BackendError::new(FailureKind::Internal, "echo engine failed");
                    return tx.send(Err(failed)).await.ok();
                }
                tokio::time::sleep(TOKEN_TIME).await;
                let delta = Delta::text(format!("{word} "), 1);
                tx.send(Ok(TokenEvent::Delta(delta))).await.ok()?;
            }
            let usage = Usage::new(prompt, n.into());
            tx.send(Ok(TokenEvent::Usage(usage))).await.ok()?;
            let finish = if n < LENGTH {
                FinishReason::Length
            } else {
                FinishReason::Stop
            };
            tx.send(Ok(TokenEvent::Finished(finish))).await.ok()
        };
        // The engine's work and its events as one stream: dropping it stops
        // both. `track` does the cancel, deadline, cap and error phases.
        let work = once(engine).filter_map(|_| async { None });
        let events = unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) });
        Ok(live.track(select(work, events), req.budget))
    }

    async fn abort(&self, id: &RequestId) -> Result<bool, BackendError> {
        Ok(self.live.abort(id))
    }

    async fn health(&self) -> Health {
        Health::Healthy
    }
}

/// Sets the echo engine up for each scenario of the conformance suite.
struct EchoTarget;

#[async_trait]
impl ConformanceTarget for EchoTarget {
    async fn instance(&self, scenario: Scenario) -> Option<Instance> {
        let (prefill, fail_after) = match scenario {
            Scenario::Normal | Scenario::LongDecode => (0, None),
            Scenario::LongPrefill | Scenario::Saturated => (3, None),
            Scenario::FailBeforeFirstToken => (0, Some(0)),
            Scenario::FailAfterFirstToken => (0, Some(2)),
            _ => return None, // no reasoning or tool calls: the optional rule is skipped
        };
        let (name, models) = ("echo-0".to_owned(), vec!["echo".to_owned()]);
        let info = BackendInfo {
            name,
            engine: EngineKind::Custom,
            models,
        };
        let (slot, prefill) = (Arc::new(Semaphore::new(1)), Duration::from_secs(prefill));
        let live = LiveRequests::new(64);
        // In-process, the registry is the engine's own view: it is the probe.
        let probe = Arc::new(live.clone());
        let backend = Arc::new(EchoBackend {
            info,
            slot,
            live,
            prefill,
            fail_after,
        });
        let model = "echo".to_owned();
        Some(Instance {
            backend,
            probe,
            model,
        })
    }
}

#[tokio::main]
#[expect(clippy::print_stdout, reason = "an example prints what it shows")]
async fn main() -> ExitCode {
    let report = conformance::run(&EchoTarget, &ConformanceConfig::default()).await;
    print!("{report}");
    let skipped = report.skipped();
    if !report.passed() {
        println!("conformance: FAILED {:?}", report.failed());
        return ExitCode::FAILURE;
    }
    let required = report.outcomes.len() - skipped.len();
    let n = skipped.len();
    println!("conformance: all {required} required rules pass ({n} optional skipped: {skipped:?})");
    ExitCode::SUCCESS
}
