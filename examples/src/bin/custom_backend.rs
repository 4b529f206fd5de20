//! A minimal custom backend, checked with the conformance kit.
//!
//! `EchoBackend` is a toy engine: it runs one request at a time (others
//! queue), "prefills" for a configured time, then echoes the prompt's words
//! back one token at a time. It keeps every rule of the contract: fixed
//! event order, the completion cap and the deadline, typed errors with the
//! right phase, and cancellation in every phase — by its cancel handle, by
//! `abort(id)`, or by dropping the stream (an RAII guard counts the abort
//! in whatever phase the request was in).
//!
//! Run it: `cargo run -p gateway-examples --bin custom_backend`. It streams
//! one request, then runs the conformance suite and exits non-zero if any
//! rule fails.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use gateway_core::testkit::conformance::{
    self, ConformanceConfig, ConformanceTarget, EngineProbe, Instance, Scenario,
};
use gateway_core::*;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// How the toy engine behaves.
#[derive(Debug, Clone, Default)]
struct EchoConfig {
    prefill: Duration,
    per_token: Duration,
    /// Tokens to produce (cycling through the prompt's words).
    length: usize,
    refuse: bool,
    fail_after: Option<u64>,
}

#[derive(Debug, Default)]
struct Registry {
    live: HashMap<RequestId, (EnginePhase, CancelHandle)>,
    aborts: AbortCounts,
}

#[derive(Debug, Clone, Default)]
struct Shared(Arc<Mutex<Registry>>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl EngineProbe for Shared {
    fn aborts(&self) -> AbortCounts {
        self.lock().aborts
    }
    fn phase(&self, id: &RequestId) -> Option<EnginePhase> {
        self.lock().live.get(id).map(|(p, _)| *p)
    }
}

#[derive(Debug)]
struct EchoBackend {
    info: BackendInfo,
    config: EchoConfig,
    slot: Arc<Semaphore>,
    shared: Shared,
}

impl EchoBackend {
    fn new(config: EchoConfig) -> Self {
        EchoBackend {
            info: BackendInfo {
                name: "echo-0".into(),
                engine: EngineKind::Custom,
                models: vec!["echo".into()],
            },
            config,
            slot: Arc::new(Semaphore::new(1)),
            shared: Shared::default(),
        }
    }
}

/// Removes the request from the registry when its stream goes away, and
/// counts an abort if it had not ended on its own.
struct Tracker {
    shared: Shared,
    id: RequestId,
    phase: EnginePhase,
    ended: bool,
}

impl Tracker {
    fn enter(&mut self, phase: EnginePhase) {
        self.phase = phase;
        if let Some(entry) = self.shared.lock().live.get_mut(&self.id) {
            entry.0 = phase;
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        let mut registry = self.shared.lock();
        registry.live.remove(&self.id);
        if !self.ended {
            registry.aborts.add(self.phase);
        }
    }
}

/// Everything one request's stream carries between polls.
struct Run {
    tracker: Tracker,
    cancel: CancelHandle,
    deadline: Option<Instant>,
    slot: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
    config: EchoConfig,
    words: Vec<String>,
    prompt_tokens: u64,
    cap: u64,
    sent: u64,
    step: Step,
}

enum Step {
    Start,
    Prefill,
    Decode,
    Finish(FinishReason),
    Done,
}

enum Wake {
    Canceled(CancelReason),
    Deadline,
    Ready,
}

impl Run {
    fn phase(&self) -> FailurePhase {
        if self.sent > 0 {
            FailurePhase::AfterFirstToken
        } else {
            FailurePhase::BeforeFirstToken
        }
    }

    /// Waits for `ready` unless canceled or past the deadline first.
    async fn wait<T>(&self, ready: impl Future<Output = T>) -> (Wake, Option<T>) {
        let deadline = async {
            match self.deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => futures::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            reason = self.cancel.canceled() => (Wake::Canceled(reason), None),
            () = deadline => (Wake::Deadline, None),
            value = ready => (Wake::Ready, Some(value)),
        }
    }

    /// The next item of the stream, or `None` when it is over.
    async fn next(&mut self) -> Option<TokenResult> {
        let (wake, event) = match self.step {
            Step::Done => return None,
            Step::Start => {
                self.step = Step::Prefill;
                let started = Started {
                    prompt_tokens: Some(self.prompt_tokens),
                    cached_tokens: None,
                };
                return Some(Ok(TokenEvent::Started(started)));
            }
            Step::Prefill => {
                // Queued requests wait for the slot here; the first one
                // took it in `start`, as an engine's scheduler would.
                let wake = if self.permit.is_none() {
                    let (wake, permit) = self.wait(self.slot.clone().acquire_owned()).await;
                    self.permit = permit.and_then(Result::ok);
                    wake
                } else {
                    Wake::Ready
                };
                if !matches!(wake, Wake::Ready) {
                    (wake, None)
                } else {
                    self.tracker.enter(EnginePhase::Prefill);
                    let (wake, _) = self.wait(tokio::time::sleep(self.config.prefill)).await;
                    if matches!(wake, Wake::Ready) {
                        self.tracker.enter(EnginePhase::Decode);
                        self.step = Step::Decode;
                    }
                    (wake, None)
                }
            }
            Step::Decode => {
                if self.config.fail_after == Some(self.sent) {
                    self.tracker.ended = true;
                    self.step = Step::Done;
                    let err = BackendError::new(FailureKind::Internal, "echo engine failed")
                        .with_phase(self.phase());
                    return Some(Err(err));
                }
                if self.sent >= self.cap || self.sent as usize >= self.config.length {
                    let reason = if self.sent >= self.cap {
                        FinishReason::Length
                    } else {
                        FinishReason::Stop
                    };
                    self.step = Step::Finish(reason);
                    (
                        Wake::Ready,
                        Some(TokenEvent::Usage(Usage::new(self.prompt_tokens, self.sent))),
                    )
                } else {
                    let (wake, _) = self.wait(tokio::time::sleep(self.config.per_token)).await;
                    let word = self
                        .words
                        .get(self.sent as usize % self.words.len())
                        .map_or("", String::as_str);
                    (
                        wake,
                        Some(TokenEvent::Delta(Delta::text(format!("{word} "), 1))),
                    )
                }
            }
            Step::Finish(reason) => {
                self.tracker.ended = true;
                self.step = Step::Done;
                (Wake::Ready, Some(TokenEvent::Finished(reason)))
            }
        };
        match wake {
            Wake::Canceled(reason) => {
                // The tracker's drop counts the abort in the current phase.
                self.step = Step::Done;
                Some(Err(BackendError::canceled(reason).with_phase(self.phase())))
            }
            Wake::Deadline => {
                self.step = Step::Done;
                self.tracker.ended = true;
                Some(Err(BackendError::new(
                    FailureKind::TotalTimeout,
                    "deadline passed",
                )
                .with_phase(self.phase())))
            }
            Wake::Ready => match event {
                Some(TokenEvent::Delta(d)) => {
                    self.sent += 1;
                    Some(Ok(TokenEvent::Delta(d)))
                }
                Some(event) => Some(Ok(event)),
                // Prefill finished: go on to the first token.
                None => Box::pin(self.next()).await,
            },
        }
    }
}

#[async_trait]
impl Backend for EchoBackend {
    fn info(&self) -> &BackendInfo {
        &self.info
    }

    fn pressure(&self) -> Pressure {
        let registry = self.shared.lock();
        let waiting = registry
            .live
            .values()
            .filter(|(p, _)| *p == EnginePhase::Queued)
            .count() as u32;
        let running = 1 - self.slot.available_permits().min(1) as u32;
        Pressure {
            running,
            waiting,
            inflight: registry.live.len() as u32,
            limit: Some(1),
            updated_at: Some(Instant::now()),
            ..Pressure::default()
        }
    }

    async fn start(
        &self,
        req: BackendRequest,
        cancel: CancelHandle,
    ) -> Result<TokenStream, BackendError> {
        if self.config.refuse {
            return Err(
                BackendError::new(FailureKind::Overloaded, "echo engine is full")
                    .with_retry_after(Duration::from_secs(1)),
            );
        }
        if !self.info.serves(&req.request.model) {
            return Err(BackendError::new(
                FailureKind::ModelNotFound,
                "echo serves only `echo`",
            ));
        }
        let words: Vec<String> = match &req.request.prompt {
            Prompt::Text(t) => t.split_whitespace().map(str::to_owned).collect(),
            Prompt::Chat(m) => m
                .iter()
                .flat_map(|m| m.content.split_whitespace().map(str::to_owned))
                .collect(),
            Prompt::Tokens(_) => Vec::new(),
        };
        if words.is_empty() {
            return Err(BackendError::new(
                FailureKind::InvalidRequest,
                "nothing to echo",
            ));
        }
        let id = req.request.id.clone();
        let permit = self.slot.clone().try_acquire_owned().ok();
        let phase = if permit.is_some() {
            EnginePhase::Prefill
        } else {
            EnginePhase::Queued
        };
        self.shared
            .lock()
            .live
            .insert(id.clone(), (phase, cancel.clone()));
        let run = Run {
            tracker: Tracker {
                shared: self.shared.clone(),
                id,
                phase,
                ended: false,
            },
            cancel: cancel.clone(),
            deadline: req.budget.deadline,
            slot: self.slot.clone(),
            permit,
            config: self.config.clone(),
            words,
            prompt_tokens: req.counter.count_prompt(&req.request.prompt).value(),
            cap: u64::from(req.budget.max_completion_tokens),
            sent: 0,
            step: Step::Start,
        };
        let stream = futures::stream::unfold(run, |mut run| async move {
            let item = run.next().await?;
            Some((item, run))
        });
        Ok(TokenStream::new(stream).cancel_on_drop(cancel))
    }

    async fn abort(&self, id: &RequestId) -> Result<bool, BackendError> {
        let handle = self.shared.lock().live.get(id).map(|(_, h)| h.clone());
        Ok(handle.is_some_and(|h| h.cancel(CancelReason::Aborted)))
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
        let tick = Duration::from_millis(20);
        let config = match scenario {
            Scenario::Normal => EchoConfig {
                length: 8,
                per_token: Duration::from_millis(1),
                ..EchoConfig::default()
            },
            Scenario::LongPrefill => EchoConfig {
                prefill: Duration::from_secs(5),
                per_token: tick,
                length: 100,
                ..EchoConfig::default()
            },
            Scenario::LongDecode => EchoConfig {
                per_token: tick,
                length: 1000,
                ..EchoConfig::default()
            },
            Scenario::Saturated => EchoConfig {
                prefill: Duration::from_secs(3),
                per_token: tick,
                length: 100,
                ..EchoConfig::default()
            },
            Scenario::FailBeforeFirstToken => EchoConfig {
                refuse: true,
                ..EchoConfig::default()
            },
            Scenario::FailAfterFirstToken => EchoConfig {
                length: 10,
                fail_after: Some(2),
                ..EchoConfig::default()
            },
            _ => return None,
        };
        let backend = EchoBackend::new(config);
        let probe = Arc::new(backend.shared.clone());
        Some(Instance {
            backend: Arc::new(backend),
            probe,
            model: "echo".into(),
        })
    }
}

#[tokio::main]
#[expect(clippy::print_stdout, reason = "an example prints what it shows")]
async fn main() -> ExitCode {
    let backend = EchoBackend::new(EchoConfig {
        length: 6,
        per_token: Duration::from_millis(5),
        ..EchoConfig::default()
    });
    let request = GenerateRequest::new("echo", Prompt::Text("the quick brown fox".into()), 16);
    let counter: Arc<dyn TokenCounter> = Arc::new(ByteBound::default());
    let guard = CancelHandle::guarded();
    let mut stream = match backend
        .start(
            BackendRequest::new(request, counter),
            guard.handle().clone(),
        )
        .await
    {
        Ok(stream) => stream,
        Err(e) => {
            println!("start failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut text = String::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(TokenEvent::Delta(d)) => text.push_str(&d.text),
            Ok(TokenEvent::Usage(u)) => println!("usage: {u}"),
            Ok(TokenEvent::Finished(r)) => println!("finished: {r}"),
            Ok(TokenEvent::Started(_)) => {}
            Err(e) => println!("error: {e}"),
        }
    }
    println!("text: {}", text.trim_end());

    let report = conformance::run(&EchoTarget, &ConformanceConfig::default()).await;
    print!("{report}");
    if report.passed() {
        // The echo engine has no reasoning or tool calls: the optional
        // structured_output rule is skipped.
        let skipped = report.skipped();
        println!(
            "conformance: all {} required rules pass ({} optional skipped: {skipped:?})",
            report.outcomes.len() - skipped.len(),
            skipped.len()
        );
        ExitCode::SUCCESS
    } else {
        println!("conformance: FAILED {:?}", report.failed());
        ExitCode::FAILURE
    }
}
