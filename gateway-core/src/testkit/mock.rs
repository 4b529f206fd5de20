//! [`MockBackend`]: a backend that plays scripts, with a [`MockHandle`] to
//! script it and see what reached it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::live::{LiveGuard, LiveRequests};
use crate::{
    AbortCounts, Backend, BackendError, BackendInfo, BackendRequest, CancelHandle, Delta,
    EngineKind, EnginePhase, FailureKind, FailurePhase, FinishReason, Health, Pressure,
    ReasoningField, RequestId, Started, TokenEvent, TokenResult, TokenStream, ToolCallDelta, Usage,
};

/// One step of a [`Script`].
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Wait in the queue (phase `Queued`, counted as waiting).
    Queue(Duration),
    /// Compute the prompt (phase `Prefill`).
    Prefill(Duration),
    /// After `delay`, emit one token of `text` (phase `Decode`).
    Token {
        /// The token's text.
        text: String,
        /// Time to produce it.
        delay: Duration,
    },
    /// After `delay`, emit `delta` as it is, text or not (phase `Decode`;
    /// its `tokens` count).
    Output {
        /// The piece of output.
        delta: Delta,
        /// Time to produce it.
        delay: Duration,
    },
    /// Produce nothing until canceled.
    Stall,
    /// End with a failure of this kind.
    Fail(FailureKind),
}

/// What the mock does with one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    /// Refuse at `start` with this failure.
    pub reject: Option<FailureKind>,
    /// Prompt tokens reported in `Started` and `Usage`; `None` counts with
    /// the request's token counter.
    pub prompt_tokens: Option<u64>,
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// How a script that runs out of steps finishes.
    pub finish: FinishReason,
    /// Whether to send a `Usage` event before `Finished`.
    pub usage: bool,
    /// A faulty engine: play every step whatever the request's
    /// `max_tokens` (by default the mock stops at the cap).
    pub ignore_max_tokens: bool,
}

impl Default for Script {
    fn default() -> Self {
        Script::tokens(&["Hello", ",", " world"], Duration::ZERO)
    }
}

impl Script {
    /// Emits `tokens`, one every `delay`, then `Usage` and `Finished(Stop)`.
    pub fn tokens(tokens: &[&str], delay: Duration) -> Self {
        Script {
            reject: None,
            prompt_tokens: None,
            steps: tokens
                .iter()
                .map(|t| Step::Token {
                    text: (*t).to_owned(),
                    delay,
                })
                .collect(),
            finish: FinishReason::Stop,
            usage: true,
            ignore_max_tokens: false,
        }
    }

    /// Refuses at `start` with `kind`.
    pub fn reject(kind: FailureKind) -> Self {
        Script {
            reject: Some(kind),
            steps: Vec::new(),
            ..Script::default()
        }
    }

    /// `n` tokens of `"tok "`, one every `delay`.
    pub fn repeat(n: usize, delay: Duration) -> Self {
        Script {
            steps: vec![
                Step::Token {
                    text: "tok ".to_owned(),
                    delay
                };
                n
            ],
            ..Script::tokens(&[], delay)
        }
    }

    /// What a reasoning model calling a tool streams, one piece every
    /// `delay`: two pieces of reasoning, a tool call (`get_weather`, its
    /// arguments in two fragments), then `Usage` and
    /// `Finished(ToolCalls)`; 9 tokens.
    pub fn structured(delay: Duration) -> Self {
        let output = |delta: Delta| Step::Output { delta, delay };
        let fragment = |arguments: &str| ToolCallDelta {
            arguments: arguments.to_owned(),
            ..ToolCallDelta::default()
        };
        Script {
            steps: vec![
                output(Delta::reasoning(
                    "The user wants",
                    ReasoningField::Reasoning,
                    3,
                )),
                output(Delta::reasoning(
                    " the weather.",
                    ReasoningField::Reasoning,
                    2,
                )),
                output(Delta::tool_call(
                    ToolCallDelta {
                        index: 0,
                        id: Some("call-0".to_owned()),
                        kind: Some("function".to_owned()),
                        name: Some("get_weather".to_owned()),
                        arguments: String::new(),
                    },
                    1,
                )),
                output(Delta::tool_call(fragment("{\"city\": "), 2)),
                output(Delta::tool_call(fragment("\"Paris\"}"), 1)),
            ],
            finish: FinishReason::ToolCalls,
            ..Script::tokens(&[], delay)
        }
    }

    /// Puts a queue wait first.
    #[must_use]
    pub fn queued(mut self, wait: Duration) -> Self {
        self.steps.insert(0, Step::Queue(wait));
        self
    }

    /// Puts a prefill after any queue wait.
    #[must_use]
    pub fn prefill(mut self, time: Duration) -> Self {
        let at = self
            .steps
            .iter()
            .take_while(|s| matches!(s, Step::Queue(_)))
            .count();
        self.steps.insert(at, Step::Prefill(time));
        self
    }

    /// Appends a step.
    #[must_use]
    pub fn then(mut self, step: Step) -> Self {
        self.steps.push(step);
        self
    }

    /// A faulty engine that streams past `max_tokens`.
    #[must_use]
    pub fn ignoring_max_tokens(mut self) -> Self {
        self.ignore_max_tokens = true;
        self
    }

    /// Sets the reported prompt tokens.
    #[must_use]
    pub fn with_prompt_tokens(mut self, n: u64) -> Self {
        self.prompt_tokens = Some(n);
        self
    }
}

#[derive(Debug, Default)]
struct State {
    scripts: VecDeque<Script>,
    default_script: Script,
    starts: u64,
    completed: u64,
    requests: VecDeque<BackendRequest>,
    healthy: bool,
}

/// Most recent requests the handle keeps.
const KEPT_REQUESTS: usize = 256;

/// Most requests live at once.
const LIVE_CAPACITY: u32 = 4096;

#[derive(Debug, Clone)]
struct Shared {
    state: Arc<Mutex<State>>,
    /// The live requests, their phases and the aborts per phase.
    live: LiveRequests,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A scriptable backend for tests: each `start` plays the next queued
/// [`Script`] (or the default one), honouring the cancel handle, the
/// completion cap and the deadline in every step.
#[derive(Debug, Clone)]
pub struct MockBackend {
    info: BackendInfo,
    shared: Shared,
}

/// Scripts a [`MockBackend`] and reports what reached it.
#[derive(Debug, Clone)]
pub struct MockHandle {
    shared: Shared,
}

impl MockBackend {
    /// A mock named `name` serving `model`, and its handle.
    pub fn new(name: &str, model: &str) -> (MockBackend, MockHandle) {
        let shared = Shared {
            state: Arc::new(Mutex::new(State {
                healthy: true,
                ..State::default()
            })),
            live: LiveRequests::new(LIVE_CAPACITY),
        };
        (
            MockBackend {
                info: BackendInfo {
                    name: name.to_owned(),
                    engine: EngineKind::Custom,
                    models: vec![model.to_owned()],
                },
                shared: shared.clone(),
            },
            MockHandle { shared },
        )
    }
}

impl MockHandle {
    /// Queues a script for the next `start`.
    pub fn push(&self, script: Script) {
        self.shared.lock().scripts.push_back(script);
    }

    /// Sets the script played when none is queued.
    pub fn set_default(&self, script: Script) {
        self.shared.lock().default_script = script;
    }

    /// Sets what `health` answers.
    pub fn set_healthy(&self, healthy: bool) {
        self.shared.lock().healthy = healthy;
    }

    /// How many times `start` was called.
    pub fn starts(&self) -> u64 {
        self.shared.lock().starts
    }

    /// Requests that finished or failed on their own (not canceled).
    pub fn completed(&self) -> u64 {
        self.shared.lock().completed
    }

    /// Aborts seen, per phase.
    pub fn aborts(&self) -> AbortCounts {
        self.shared.live.aborts()
    }

    /// The phase of a live request.
    pub fn phase(&self, id: &RequestId) -> Option<EnginePhase> {
        self.shared.live.phase(id)
    }

    /// Requests running or queued now.
    pub fn live(&self) -> usize {
        self.shared.live.inflight() as usize
    }

    /// The requests `start` received, oldest first (the last 256).
    pub fn requests(&self) -> Vec<BackendRequest> {
        self.shared.lock().requests.iter().cloned().collect()
    }
}

#[async_trait::async_trait]
impl Backend for MockBackend {
    fn info(&self) -> &BackendInfo {
        &self.info
    }

    fn pressure(&self) -> Pressure {
        self.shared.live.pressure()
    }

    async fn start(
        &self,
        request: BackendRequest,
        cancel: CancelHandle,
    ) -> Result<TokenStream, BackendError> {
        let script = {
            let mut state = self.shared.lock();
            state.starts += 1;
            if state.requests.len() == KEPT_REQUESTS {
                state.requests.pop_front();
            }
            state.requests.push_back(request.clone());
            let script = match state.scripts.pop_front() {
                Some(s) => s,
                None => state.default_script.clone(),
            };
            if let Some(kind) = script.reject {
                return Err(BackendError::new(kind, "rejected by script"));
            }
            if !self.info.serves(&request.served_model) {
                return Err(BackendError::new(
                    FailureKind::ModelNotFound,
                    format!("model {} not served", request.served_model),
                ));
            }
            script
        };
        let live = self.shared.live.register(&request.request.id, &cancel)?;
        if !matches!(script.steps.first(), Some(Step::Queue(_))) {
            live.enter(EnginePhase::Prefill);
        }
        let (tx, rx) = mpsc::channel(4);
        let run = Run {
            shared: self.shared.clone(),
            live: Some(live),
            cancel: cancel.clone(),
            tx,
            delivered: 0,
        };
        tokio::spawn(run.play(script, request));
        Ok(
            TokenStream::new(futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            }))
            .cancel_on_drop(cancel),
        )
    }

    async fn abort(&self, id: &RequestId) -> Result<bool, BackendError> {
        Ok(self.shared.live.abort(id))
    }

    async fn health(&self) -> Health {
        if self.shared.lock().healthy {
            Health::Healthy
        } else {
            Health::Unhealthy("set unhealthy by the test".to_owned())
        }
    }
}

/// Why a run stopped early.
enum Stop {
    Canceled,
    Deadline,
    ConsumerGone,
}

struct Run {
    shared: Shared,
    /// The request's place among the live ones; `None` once it ended.
    live: Option<LiveGuard>,
    cancel: CancelHandle,
    tx: mpsc::Sender<TokenResult>,
    delivered: u64,
}

impl Run {
    fn failure_phase(&self) -> FailurePhase {
        if self.delivered > 0 {
            FailurePhase::AfterFirstToken
        } else {
            FailurePhase::BeforeFirstToken
        }
    }

    fn enter(&self, phase: EnginePhase) {
        if let Some(live) = &self.live {
            live.enter(phase);
        }
    }

    /// Waits `d` (forever if `None`) unless canceled or past the deadline.
    async fn wait(&self, d: Option<Duration>, deadline: Option<Instant>) -> Result<(), Stop> {
        let sleep = async {
            match d {
                Some(d) => tokio::time::sleep(d).await,
                None => futures::future::pending().await,
            }
        };
        let past_deadline = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => futures::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = self.cancel.canceled() => Err(Stop::Canceled),
            () = past_deadline => Err(Stop::Deadline),
            () = sleep => Ok(()),
        }
    }

    async fn send(&self, item: TokenResult) -> Result<(), Stop> {
        tokio::select! {
            biased;
            _ = self.cancel.canceled() => Err(Stop::Canceled),
            sent = self.tx.send(item) => sent.map_err(|_| Stop::ConsumerGone),
        }
    }

    async fn play(mut self, script: Script, request: BackendRequest) {
        let result = self.steps(&script, &request).await;
        let Some(live) = self.live.take() else { return };
        match result {
            Ok(()) => {
                live.end();
                self.shared.lock().completed += 1;
            }
            Err(Stop::Canceled | Stop::ConsumerGone) => {
                let phase = live.phase();
                // Dropped un-ended: counted as an abort in `phase`.
                drop(live);
                let reason = self
                    .cancel
                    .reason()
                    .unwrap_or(crate::CancelReason::ClientGone);
                let err = BackendError::canceled(reason)
                    .with_phase(self.failure_phase())
                    .with_engine_phase(phase);
                // The consumer may be gone; then nobody needs the error.
                let _ = self.tx.try_send(Err(err));
            }
            Err(Stop::Deadline) => {
                live.end();
                self.shared.lock().completed += 1;
                let err = BackendError::new(FailureKind::TotalTimeout, "deadline passed")
                    .with_phase(self.failure_phase());
                let _ = self.tx.try_send(Err(err));
            }
        }
    }

    async fn steps(&mut self, script: &Script, request: &BackendRequest) -> Result<(), Stop> {
        let prompt = script.prompt_tokens.unwrap_or_else(|| {
            request
                .counter
                .count_prompt(&request.request.prompt)
                .value()
        });
        let cap = if script.ignore_max_tokens {
            u64::MAX
        } else {
            u64::from(request.budget.max_completion_tokens)
        };
        let deadline = request.budget.deadline;
        self.send(Ok(TokenEvent::Started(Started {
            prompt_tokens: Some(prompt),
            cached_tokens: Some(0),
        })))
        .await?;
        let mut finish = script.finish;
        for step in &script.steps {
            match step {
                Step::Queue(d) => {
                    self.enter(EnginePhase::Queued);
                    self.wait(Some(*d), deadline).await?;
                    self.enter(EnginePhase::Prefill);
                }
                Step::Prefill(d) => {
                    self.enter(EnginePhase::Prefill);
                    self.wait(Some(*d), deadline).await?;
                }
                Step::Token { text, delay } => {
                    if self.delivered >= cap {
                        finish = FinishReason::Length;
                        break;
                    }
                    self.enter(EnginePhase::Decode);
                    self.wait(Some(*delay), deadline).await?;
                    self.send(Ok(TokenEvent::Delta(Delta::text(text.clone(), 1))))
                        .await?;
                    self.delivered += 1;
                }
                Step::Output { delta, delay } => {
                    let tokens = u64::from(delta.tokens);
                    if self.delivered.saturating_add(tokens) > cap {
                        finish = FinishReason::Length;
                        break;
                    }
                    self.enter(EnginePhase::Decode);
                    self.wait(Some(*delay), deadline).await?;
                    self.send(Ok(TokenEvent::Delta(delta.clone()))).await?;
                    self.delivered += tokens;
                }
                Step::Stall => self.wait(None, deadline).await?,
                Step::Fail(kind) => {
                    let err = BackendError::new(*kind, "failed by script")
                        .with_phase(self.failure_phase());
                    return self.send(Err(err)).await;
                }
            }
        }
        if script.usage {
            self.send(Ok(TokenEvent::Usage(Usage::new(prompt, self.delivered))))
                .await?;
        }
        self.send(Ok(TokenEvent::Finished(finish))).await
    }
}
