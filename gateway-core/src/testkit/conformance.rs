//! The backend conformance suite: checks any [`Backend`] against the
//! contract and names every rule it breaks.
//!
//! A backend under test is described by a [`ConformanceTarget`], which
//! builds a fresh [`Instance`] for each [`Scenario`] (a fresh engine, or a
//! simulator set up for it) together with an [`EngineProbe`] that tells
//! what the engine saw: its aborts per phase and each live request's phase.
//! That is how the kit proves a cancel *reached the engine*, not only that
//! the stream stopped. For an in-process engine, its
//! [`LiveRequests`](crate::LiveRequests) registry is that probe (it
//! implements [`EngineProbe`]); a backend in front of a remote engine needs
//! the engine's (or a fake engine's) own view.
//!
//! `docs/backend-contract.md` lists which [`Scenario`] each [`Rule`] runs
//! in, and the prompt, `max_tokens` and deadline each rule sends;
//! [`crate::live`] has a complete backend with its target, run through this
//! kit as a doctest.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use crate::{
    AbortCounts, Backend, BackendError, BackendRequest, ByteBound, CancelHandle, CancelReason,
    ChatMessage, Delta, EnginePhase, EventOrder, FailureKind, FailurePhase, FinishReason,
    GenerateRequest, Health, OrderViolation, Prompt, RequestId, TokenCounter, TokenEvent,
    TokenStream,
};

/// What the engine behind a backend saw.
pub trait EngineProbe: Send + Sync + fmt::Debug {
    /// Aborts the engine counted, per phase.
    fn aborts(&self) -> AbortCounts;
    /// The phase of a live request at the engine; `None` once it ended.
    fn phase(&self, id: &RequestId) -> Option<EnginePhase>;
}

/// How a fresh instance must behave for one group of checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scenario {
    /// Serves the model and finishes a request of up to 64 tokens
    /// promptly, with at least one token.
    Normal,
    /// Its first request spends at least 2 s in prefill before any token.
    LongPrefill,
    /// Its first request sends its first token promptly, then at least 100
    /// more, at least 20 ms apart.
    LongDecode,
    /// It runs one request at a time, and a request holds the slot for at
    /// least 2 s; the next one waits in its queue.
    Saturated,
    /// Its first request fails (not canceled) before any token.
    FailBeforeFirstToken,
    /// Its first request sends at least one token, then fails.
    FailAfterFirstToken,
    /// Its first request streams output other than text before any text:
    /// reasoning, then a tool call (a first fragment with the call's id and
    /// function name, then pieces of its arguments), then finishes.
    /// Optional: a backend whose engine has no such output skips it.
    StructuredOutput,
}

/// A backend set up for one scenario, and the probe into its engine.
#[derive(Debug, Clone)]
pub struct Instance {
    /// The backend under test.
    pub backend: Arc<dyn Backend>,
    /// What its engine saw.
    pub probe: Arc<dyn EngineProbe>,
    /// The model to request.
    pub model: String,
}

/// Builds instances of the backend under test.
#[async_trait::async_trait]
pub trait ConformanceTarget: Send + Sync {
    /// A fresh instance for `scenario`, or `None` if this target cannot
    /// produce it (the rules that need it are reported as skipped, and a
    /// skipped required rule fails [`ConformanceReport::assert_passed`]).
    /// Called once per rule, not once per scenario: every rule starts from
    /// a fresh engine.
    async fn instance(&self, scenario: Scenario) -> Option<Instance>;
}

/// Tunables of a run.
#[derive(Debug, Clone)]
pub struct ConformanceConfig {
    /// How soon after a cancel the stream must end and the engine must
    /// count the abort.
    pub abort_bound: Duration,
    /// How long to wait for a request to reach a phase or an event to come.
    pub setup_bound: Duration,
    /// The counter passed to the backend.
    pub counter: Arc<dyn TokenCounter>,
}

impl Default for ConformanceConfig {
    fn default() -> Self {
        ConformanceConfig {
            abort_bound: Duration::from_millis(250),
            setup_bound: Duration::from_secs(10),
            counter: Arc::new(ByteBound::default()),
        }
    }
}

/// One rule of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rule {
    /// Name, models and health describe the backend.
    Descriptor,
    /// Started, Delta*, Usage?, Finished; nothing after the end.
    EventOrder,
    /// Usage agrees with the deltas and with `Started`.
    UsageInvariants,
    /// No more completion tokens than the cap; `Length` at the cap.
    CompletionCap,
    /// The stream ends with `TotalTimeout` at the deadline.
    Deadline,
    /// A cancel while queued ends the stream and reaches the engine.
    CancelQueued,
    /// A cancel during prefill ends the stream and reaches the engine.
    CancelPrefill,
    /// A cancel during decode ends the stream and reaches the engine.
    CancelDecode,
    /// Dropping the stream aborts at the engine.
    DropCancels,
    /// `Backend::abort(id)` ends the request; unknown ids, and the request
    /// once it ended, report false.
    ExplicitAbort,
    /// A failure before any token is typed and in phase `BeforeFirstToken`.
    ErrorBeforeFirstToken,
    /// A failure after a token is typed and in phase `AfterFirstToken`.
    ErrorAfterFirstToken,
    /// Pressure shows running and waiting work and returns to idle, nothing
    /// in flight.
    PressureMoves,
    /// Reasoning and tool calls come as typed deltas that count as output:
    /// the first of them is the first token, each carries its tokens, the
    /// usage counts them, and each tool call's first fragment names it.
    /// Optional (see [`Rule::is_optional`]).
    StructuredOutput,
}

impl Rule {
    /// Every rule, in the order they run.
    pub const ALL: [Rule; 14] = [
        Rule::Descriptor,
        Rule::EventOrder,
        Rule::UsageInvariants,
        Rule::CompletionCap,
        Rule::Deadline,
        Rule::CancelQueued,
        Rule::CancelPrefill,
        Rule::CancelDecode,
        Rule::DropCancels,
        Rule::ExplicitAbort,
        Rule::ErrorBeforeFirstToken,
        Rule::ErrorAfterFirstToken,
        Rule::PressureMoves,
        Rule::StructuredOutput,
    ];

    /// Whether a target may skip the rule (its engine has no such output):
    /// [`ConformanceReport::assert_passed`] accepts the skip.
    pub const fn is_optional(self) -> bool {
        matches!(self, Rule::StructuredOutput)
    }

    /// The rule's name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Rule::Descriptor => "descriptor",
            Rule::EventOrder => "event_order",
            Rule::UsageInvariants => "usage_invariants",
            Rule::CompletionCap => "completion_cap",
            Rule::Deadline => "deadline",
            Rule::CancelQueued => "cancel_queued",
            Rule::CancelPrefill => "cancel_prefill",
            Rule::CancelDecode => "cancel_decode",
            Rule::DropCancels => "drop_cancels",
            Rule::ExplicitAbort => "explicit_abort",
            Rule::ErrorBeforeFirstToken => "error_before_first_token",
            Rule::ErrorAfterFirstToken => "error_after_first_token",
            Rule::PressureMoves => "pressure_moves",
            Rule::StructuredOutput => "structured_output",
        }
    }

    const fn scenario(self) -> Scenario {
        match self {
            Rule::Descriptor | Rule::EventOrder | Rule::UsageInvariants => Scenario::Normal,
            Rule::CompletionCap
            | Rule::Deadline
            | Rule::CancelDecode
            | Rule::DropCancels
            | Rule::ExplicitAbort => Scenario::LongDecode,
            Rule::CancelQueued | Rule::PressureMoves => Scenario::Saturated,
            Rule::CancelPrefill => Scenario::LongPrefill,
            Rule::ErrorBeforeFirstToken => Scenario::FailBeforeFirstToken,
            Rule::ErrorAfterFirstToken => Scenario::FailAfterFirstToken,
            Rule::StructuredOutput => Scenario::StructuredOutput,
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of one rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The backend keeps the rule.
    Pass,
    /// The backend breaks it, and how.
    Fail(String),
    /// The target could not set up the rule's scenario.
    Skipped(String),
}

/// Every rule's outcome, plus measured abort latencies.
#[derive(Debug, Clone, Default)]
pub struct ConformanceReport {
    /// Outcomes in rule order.
    pub outcomes: Vec<(Rule, Outcome)>,
    /// Cancel-to-engine-abort latency measured per phase.
    pub abort_latency: Vec<(EnginePhase, Duration)>,
}

impl ConformanceReport {
    /// The outcome of `rule`.
    pub fn outcome(&self, rule: Rule) -> Option<&Outcome> {
        self.outcomes
            .iter()
            .find(|(r, _)| *r == rule)
            .map(|(_, o)| o)
    }

    /// Rules the backend broke.
    pub fn failed(&self) -> Vec<Rule> {
        self.outcomes
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Fail(_)))
            .map(|(r, _)| *r)
            .collect()
    }

    /// Rules that could not run.
    pub fn skipped(&self) -> Vec<Rule> {
        self.outcomes
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Skipped(_)))
            .map(|(r, _)| *r)
            .collect()
    }

    /// Whether the backend conforms: no rule failed, and every rule that
    /// is not [optional](Rule::is_optional) ran.
    pub fn passed(&self) -> bool {
        self.failed().is_empty() && self.skipped().iter().all(|r| r.is_optional())
    }

    /// Panics, naming each broken or skipped rule, unless
    /// [`passed`](Self::passed).
    pub fn assert_passed(&self) {
        if !self.passed() {
            #[expect(clippy::panic, reason = "a test assertion helper")]
            {
                panic!("backend does not conform:\n{self}");
            }
        }
    }
}

impl fmt::Display for ConformanceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (rule, outcome) in &self.outcomes {
            match outcome {
                Outcome::Pass => writeln!(f, "PASS {rule}")?,
                Outcome::Fail(why) => writeln!(f, "FAIL {rule}: {why}")?,
                Outcome::Skipped(why) => writeln!(f, "SKIP {rule}: {why}")?,
            }
        }
        for (phase, latency) in &self.abort_latency {
            writeln!(f, "abort latency {phase}: {latency:?}")?;
        }
        Ok(())
    }
}

/// Runs every rule against `target`.
pub async fn run(target: &dyn ConformanceTarget, config: &ConformanceConfig) -> ConformanceReport {
    let mut report = ConformanceReport::default();
    for rule in Rule::ALL {
        let outcome = match target.instance(rule.scenario()).await {
            None => Outcome::Skipped(format!("target has no {:?} scenario", rule.scenario())),
            Some(instance) => {
                let kit = Kit {
                    instance,
                    config,
                    latencies: Vec::new(),
                };
                kit.check(rule, &mut report.abort_latency).await
            }
        };
        report.outcomes.push((rule, outcome));
    }
    report
}

/// What a stream yielded until it ended or a bound passed.
#[derive(Debug, Default)]
struct Drained {
    events: Vec<TokenEvent>,
    error: Option<BackendError>,
    violation: Option<OrderViolation>,
    ended: bool,
}

impl Drained {
    fn delta_tokens(&self) -> u64 {
        self.events
            .iter()
            .map(|e| match e {
                TokenEvent::Delta(d) => u64::from(d.tokens),
                _ => 0,
            })
            .sum()
    }
    fn finish(&self) -> Option<FinishReason> {
        self.events.iter().find_map(|e| match e {
            TokenEvent::Finished(r) => Some(*r),
            _ => None,
        })
    }
}

type Check = Result<(), String>;

struct Kit<'a> {
    instance: Instance,
    config: &'a ConformanceConfig,
    latencies: Vec<(EnginePhase, Duration)>,
}

impl Kit<'_> {
    async fn check(mut self, rule: Rule, latencies: &mut Vec<(EnginePhase, Duration)>) -> Outcome {
        let budget = self.config.setup_bound * 3;
        let result = match tokio::time::timeout(budget, self.rule(rule)).await {
            Ok(result) => result,
            Err(_) => Err(format!("the check did not finish within {budget:?}")),
        };
        latencies.append(&mut self.latencies);
        match result {
            Ok(()) => Outcome::Pass,
            Err(why) => Outcome::Fail(why),
        }
    }

    async fn rule(&mut self, rule: Rule) -> Check {
        match rule {
            Rule::Descriptor => self.descriptor().await,
            Rule::EventOrder => self.event_order().await,
            Rule::UsageInvariants => self.usage_invariants().await,
            Rule::CompletionCap => self.completion_cap().await,
            Rule::Deadline => self.deadline().await,
            Rule::CancelQueued => self.cancel_queued().await,
            Rule::CancelPrefill => self.cancel_prefill().await,
            Rule::CancelDecode => self.cancel_decode().await,
            Rule::DropCancels => self.drop_cancels().await,
            Rule::ExplicitAbort => self.explicit_abort().await,
            Rule::ErrorBeforeFirstToken => self.error_before().await,
            Rule::ErrorAfterFirstToken => self.error_after().await,
            Rule::PressureMoves => self.pressure_moves().await,
            Rule::StructuredOutput => self.structured_output().await,
        }
    }

    fn backend(&self) -> &dyn Backend {
        self.instance.backend.as_ref()
    }

    fn request(&self, max_tokens: u32) -> BackendRequest {
        let request = GenerateRequest::new(
            self.instance.model.clone(),
            Prompt::Text("conformance check: tell me about the sea".to_owned()),
            max_tokens,
        );
        BackendRequest::new(request, self.config.counter.clone())
    }

    async fn start(
        &self,
        request: BackendRequest,
        cancel: CancelHandle,
    ) -> Result<TokenStream, String> {
        match tokio::time::timeout(
            self.config.setup_bound,
            self.backend().start(request, cancel),
        )
        .await
        {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(format!("start failed: {e}")),
            Err(_) => Err(format!(
                "start did not resolve within {:?}",
                self.config.setup_bound
            )),
        }
    }

    /// Reads until the stream ends (and checks that nothing follows), or
    /// until `bound` passes.
    async fn drain(stream: &mut TokenStream, order: &mut EventOrder, bound: Duration) -> Drained {
        let mut out = Drained::default();
        let until = Instant::now() + bound;
        loop {
            let Ok(item) = tokio::time::timeout_at(until, stream.next()).await else {
                return out;
            };
            if out.ended {
                // One more poll after the end: anything but `None` breaks the order.
                if let Some(item) = item {
                    let got = match &item {
                        Ok(e) => order.observe(e),
                        Err(_) => order.observe_error(),
                    };
                    if let Err(v) = got {
                        out.violation.get_or_insert(v);
                    }
                }
                return out;
            }
            match item {
                None => {
                    if !order.is_ended() && out.violation.is_none() {
                        out.violation = Some(OrderViolation {
                            got: "end of stream",
                            after: "an unfinished stream",
                            rule: "a stream ends with Finished or an error",
                        });
                    }
                    out.ended = true;
                    return out;
                }
                Some(Ok(event)) => {
                    if let Err(v) = order.observe(&event) {
                        out.violation.get_or_insert(v);
                    }
                    let terminal = matches!(event, TokenEvent::Finished(_));
                    out.events.push(event);
                    out.ended = terminal;
                }
                Some(Err(e)) => {
                    if let Err(v) = order.observe_error() {
                        out.violation.get_or_insert(v);
                    }
                    out.error = Some(e);
                    out.ended = true;
                }
            }
        }
    }

    /// Reads until the first `Delta`.
    async fn first_delta(&self, stream: &mut TokenStream, order: &mut EventOrder) -> Check {
        let until = Instant::now() + self.config.setup_bound;
        loop {
            match tokio::time::timeout_at(until, stream.next()).await {
                Err(_) => return Err("no token arrived within the setup bound".to_owned()),
                Ok(None) => return Err("stream ended before its first token".to_owned()),
                Ok(Some(Err(e))) => {
                    return Err(format!("stream failed before its first token: {e}"));
                }
                Ok(Some(Ok(event))) => {
                    order.observe(&event).map_err(|v| v.to_string())?;
                    if matches!(event, TokenEvent::Delta(_)) {
                        return Ok(());
                    }
                }
            }
        }
    }

    async fn wait_phase(&self, id: &RequestId, want: &[EnginePhase]) -> Check {
        let until = Instant::now() + self.config.setup_bound;
        loop {
            let phase = self.instance.probe.phase(id);
            if phase.is_some_and(|p| want.contains(&p)) {
                return Ok(());
            }
            if Instant::now() >= until {
                return Err(format!(
                    "request never reached phase {want:?} (last seen {phase:?})"
                ));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Cancels via `fire`, then checks the stream ends with `Canceled` and
    /// the engine counts an abort in `phase`, both within the abort bound.
    async fn cancel_reaches_engine(
        &mut self,
        phase: EnginePhase,
        stream: &mut TokenStream,
        order: &mut EventOrder,
        delivered: bool,
        fire: impl FnOnce(),
    ) -> Check {
        let before = self.instance.probe.aborts();
        let t0 = Instant::now();
        fire();
        self.ends_canceled(phase, stream, order, delivered).await?;
        self.engine_abort(phase, before, t0).await
    }

    /// Checks that the stream ends, within the abort bound, with one
    /// `Canceled` error in the right phase.
    async fn ends_canceled(
        &self,
        phase: EnginePhase,
        stream: &mut TokenStream,
        order: &mut EventOrder,
        delivered: bool,
    ) -> Check {
        let drained = Self::drain(stream, order, self.config.abort_bound).await;
        if let Some(v) = drained.violation {
            return Err(format!("after cancel: {v}"));
        }
        let Some(err) = drained.error else {
            return Err(if drained.ended {
                "stream ended without a Canceled error after cancel".to_owned()
            } else {
                format!(
                    "stream still open {:?} after cancel",
                    self.config.abort_bound
                )
            });
        };
        if err.kind() != FailureKind::Canceled {
            return Err(format!(
                "stream ended with {} instead of canceled",
                err.kind()
            ));
        }
        let want_phase = if delivered {
            FailurePhase::AfterFirstToken
        } else {
            FailurePhase::BeforeFirstToken
        };
        if err.phase() != want_phase {
            return Err(format!(
                "canceled error has phase {:?}, expected {want_phase:?}",
                err.phase()
            ));
        }
        if let Some(reported) = err.engine_phase()
            && reported != phase
        {
            return Err(format!(
                "canceled error reports engine phase {reported}, expected {phase}"
            ));
        }
        Ok(())
    }

    /// Waits until the engine counted one more abort in `phase` than `before`.
    async fn engine_abort(
        &mut self,
        phase: EnginePhase,
        before: AbortCounts,
        t0: Instant,
    ) -> Check {
        let until = t0 + self.config.abort_bound;
        loop {
            let now = self.instance.probe.aborts();
            if now.get(phase) > before.get(phase) {
                self.latencies.push((phase, t0.elapsed()));
                let others: u64 = EnginePhase::ALL
                    .iter()
                    .filter(|p| **p != phase)
                    .map(|p| now.get(*p) - before.get(*p))
                    .sum();
                if now.get(phase) - before.get(phase) != 1 || others != 0 {
                    return Err(format!(
                        "one abort in {phase} expected, engine counted {now:?} (before {before:?})"
                    ));
                }
                return Ok(());
            }
            if Instant::now() >= until {
                return Err(format!(
                    "engine counted no abort in {phase} within {:?} (aborts {now:?})",
                    self.config.abort_bound
                ));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn normal(&self) -> Result<Drained, String> {
        let mut stream = self.start(self.request(64), CancelHandle::new()).await?;
        let mut order = EventOrder::new();
        let drained = Self::drain(&mut stream, &mut order, self.config.setup_bound).await;
        if !drained.ended {
            return Err("a normal request did not end within the setup bound".to_owned());
        }
        Ok(drained)
    }

    async fn descriptor(&mut self) -> Check {
        let info = self.backend().info();
        if info.name.is_empty() {
            return Err("backend name is empty".to_owned());
        }
        if !info.serves(&self.instance.model) {
            return Err(format!(
                "descriptor does not list model {}",
                self.instance.model
            ));
        }
        match self.backend().health().await {
            Health::Healthy => Ok(()),
            Health::Unhealthy(why) => Err(format!("a normal instance reports unhealthy: {why}")),
        }
    }

    async fn event_order(&mut self) -> Check {
        let d = self.normal().await?;
        if let Some(v) = d.violation {
            return Err(v.to_string());
        }
        if let Some(e) = d.error {
            return Err(format!("a normal request failed: {e}"));
        }
        if d.finish().is_none() {
            return Err("stream did not end with Finished".to_owned());
        }
        if d.delta_tokens() == 0 {
            return Err("a normal request produced no token".to_owned());
        }
        Ok(())
    }

    async fn usage_invariants(&mut self) -> Check {
        let d = self.normal().await?;
        if let Some(v) = d.violation {
            return Err(v.to_string());
        }
        let started = d.events.iter().find_map(|e| match e {
            TokenEvent::Started(s) => Some(*s),
            _ => None,
        });
        let usage = d.events.iter().find_map(|e| match e {
            TokenEvent::Usage(u) => Some(*u),
            _ => None,
        });
        let Some(usage) = usage else { return Ok(()) };
        if usage.completion() != d.delta_tokens() {
            return Err(format!(
                "usage says {} completion tokens, deltas carried {}",
                usage.completion(),
                d.delta_tokens()
            ));
        }
        if let Some(prompt) = started.and_then(|s| s.prompt_tokens)
            && prompt != usage.prompt()
        {
            return Err(format!(
                "Started says {prompt} prompt tokens, Usage says {}",
                usage.prompt()
            ));
        }
        if usage.canceled() != 0 {
            return Err(format!(
                "a finished request reports {} canceled tokens",
                usage.canceled()
            ));
        }
        Ok(())
    }

    async fn completion_cap(&mut self) -> Check {
        let mut stream = self.start(self.request(3), CancelHandle::new()).await?;
        let mut order = EventOrder::new();
        let d = Self::drain(&mut stream, &mut order, self.config.setup_bound).await;
        if let Some(v) = d.violation {
            return Err(v.to_string());
        }
        if let Some(e) = d.error {
            return Err(format!("a capped request failed: {e}"));
        }
        match (d.delta_tokens(), d.finish()) {
            (3, Some(FinishReason::Length)) => Ok(()),
            (n, finish) => Err(format!(
                "cap 3 on a long generation gave {n} tokens and finish {finish:?}, expected 3 and Length"
            )),
        }
    }

    async fn deadline(&mut self) -> Check {
        let mut request = self.request(10_000);
        let deadline = Instant::now() + Duration::from_millis(200);
        request.budget.deadline = Some(deadline);
        let mut stream = self.start(request, CancelHandle::new()).await?;
        let mut order = EventOrder::new();
        let d = Self::drain(
            &mut stream,
            &mut order,
            Duration::from_millis(200) + self.config.abort_bound,
        )
        .await;
        if let Some(v) = d.violation {
            return Err(v.to_string());
        }
        match d.error {
            Some(e) if e.kind() == FailureKind::TotalTimeout => Ok(()),
            Some(e) => Err(format!(
                "past the deadline the stream failed with {} instead of total_timeout",
                e.kind()
            )),
            None if d.ended => Err("stream finished instead of hitting the deadline".to_owned()),
            None => Err("stream still open after the deadline".to_owned()),
        }
    }

    async fn cancel_queued(&mut self) -> Check {
        let blocker_req = self.request(10_000);
        let blocker_id = blocker_req.request.id.clone();
        let blocker_cancel = CancelHandle::new();
        let blocker = self.start(blocker_req, blocker_cancel.clone()).await?;
        self.wait_phase(&blocker_id, &[EnginePhase::Prefill, EnginePhase::Decode])
            .await?;
        let request = self.request(16);
        let id = request.request.id.clone();
        let cancel = CancelHandle::new();
        let mut stream = self.start(request, cancel.clone()).await?;
        self.wait_phase(&id, &[EnginePhase::Queued]).await?;
        let mut order = EventOrder::new();
        let result = self
            .cancel_reaches_engine(EnginePhase::Queued, &mut stream, &mut order, false, || {
                cancel.cancel(CancelReason::ClientGone);
            })
            .await;
        blocker_cancel.cancel(CancelReason::Shutdown);
        drop(blocker);
        result
    }

    async fn cancel_prefill(&mut self) -> Check {
        let request = self.request(16);
        let id = request.request.id.clone();
        let cancel = CancelHandle::new();
        let mut stream = self.start(request, cancel.clone()).await?;
        self.wait_phase(&id, &[EnginePhase::Prefill]).await?;
        let mut order = EventOrder::new();
        self.cancel_reaches_engine(EnginePhase::Prefill, &mut stream, &mut order, false, || {
            cancel.cancel(CancelReason::Timeout);
        })
        .await
    }

    async fn cancel_decode(&mut self) -> Check {
        let cancel = CancelHandle::new();
        let mut stream = self.start(self.request(10_000), cancel.clone()).await?;
        let mut order = EventOrder::new();
        self.first_delta(&mut stream, &mut order).await?;
        self.cancel_reaches_engine(EnginePhase::Decode, &mut stream, &mut order, true, || {
            cancel.cancel(CancelReason::Budget);
        })
        .await
    }

    async fn drop_cancels(&mut self) -> Check {
        let mut stream = self
            .start(self.request(10_000), CancelHandle::new())
            .await?;
        let mut order = EventOrder::new();
        self.first_delta(&mut stream, &mut order).await?;
        let before = self.instance.probe.aborts();
        let t0 = Instant::now();
        drop(stream);
        self.engine_abort(EnginePhase::Decode, before, t0).await
    }

    async fn explicit_abort(&mut self) -> Check {
        let unknown = RequestId::new("conformance-no-such-request");
        match self.backend().abort(&unknown).await {
            Ok(false) => {}
            Ok(true) => return Err("abort of an unknown id reported found".to_owned()),
            Err(e) => return Err(format!("abort of an unknown id failed: {e}")),
        }
        let request = self.request(10_000);
        let id = request.request.id.clone();
        let mut stream = self.start(request, CancelHandle::new()).await?;
        let mut order = EventOrder::new();
        self.first_delta(&mut stream, &mut order).await?;
        let before = self.instance.probe.aborts();
        let t0 = Instant::now();
        match self.backend().abort(&id).await {
            Ok(true) => {}
            Ok(false) => return Err("abort of a live request reported not found".to_owned()),
            Err(e) => return Err(format!("abort of a live request failed: {e}")),
        }
        self.ends_canceled(EnginePhase::Decode, &mut stream, &mut order, true)
            .await?;
        self.engine_abort(EnginePhase::Decode, before, t0).await?;
        // Ended: no longer live, so not found (a registry that keeps ended
        // requests leaks, and its in-flight count with it).
        let until = Instant::now() + self.config.abort_bound;
        loop {
            match self.backend().abort(&id).await {
                Ok(false) => return Ok(()),
                Ok(true) if Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Ok(true) => {
                    return Err(format!(
                        "abort of a request that ended {:?} ago still reported found",
                        self.config.abort_bound
                    ));
                }
                Err(e) => return Err(format!("abort of an ended request failed: {e}")),
            }
        }
    }

    async fn error_before(&mut self) -> Check {
        let err = match self
            .backend()
            .start(self.request(16), CancelHandle::new())
            .await
        {
            Err(e) => e,
            Ok(mut stream) => {
                let mut order = EventOrder::new();
                let d = Self::drain(&mut stream, &mut order, self.config.setup_bound).await;
                if let Some(v) = d.violation {
                    return Err(v.to_string());
                }
                if d.delta_tokens() > 0 {
                    return Err("the failing scenario produced tokens".to_owned());
                }
                match d.error {
                    Some(e) => e,
                    None => return Err("the failing scenario did not fail".to_owned()),
                }
            }
        };
        if err.kind() == FailureKind::Canceled {
            return Err("a failure reported as canceled".to_owned());
        }
        if err.phase() != FailurePhase::BeforeFirstToken {
            return Err(format!(
                "failure before any token reported phase {:?}",
                err.phase()
            ));
        }
        Ok(())
    }

    async fn error_after(&mut self) -> Check {
        let mut stream = self
            .start(self.request(10_000), CancelHandle::new())
            .await?;
        let mut order = EventOrder::new();
        let d = Self::drain(&mut stream, &mut order, self.config.setup_bound).await;
        if let Some(v) = d.violation {
            return Err(v.to_string());
        }
        if d.delta_tokens() == 0 {
            return Err("the scenario failed before any token".to_owned());
        }
        let Some(err) = d.error else {
            return Err("the failing scenario did not fail".to_owned());
        };
        if err.kind() == FailureKind::Canceled {
            return Err("a failure reported as canceled".to_owned());
        }
        if err.phase() != FailurePhase::AfterFirstToken {
            return Err(format!(
                "failure after a token reported phase {:?}",
                err.phase()
            ));
        }
        Ok(())
    }

    async fn structured_output(&mut self) -> Check {
        // Reasoning and tool calls are chat output.
        let mut request = self.request(64);
        request.request = Arc::new(GenerateRequest::new(
            self.instance.model.clone(),
            Prompt::Chat(vec![ChatMessage::user(
                "conformance check: what is the weather in Paris?",
            )]),
            64,
        ));
        let mut stream = self.start(request, CancelHandle::new()).await?;
        let mut order = EventOrder::new();
        let d = Self::drain(&mut stream, &mut order, self.config.setup_bound).await;
        if !d.ended {
            return Err("the request did not end within the setup bound".to_owned());
        }
        if let Some(v) = d.violation {
            return Err(v.to_string());
        }
        if let Some(e) = d.error {
            return Err(format!("the request failed: {e}"));
        }
        if d.finish().is_none() {
            return Err("stream did not end with Finished".to_owned());
        }
        let deltas: Vec<&Delta> = d
            .events
            .iter()
            .filter_map(|e| match e {
                TokenEvent::Delta(delta) => Some(delta),
                _ => None,
            })
            .collect();
        let Some(first) = deltas.first() else {
            return Err("no delta came".to_owned());
        };
        if !first.has_structured_output() || !first.text.is_empty() {
            return Err(format!(
                "the first delta must carry the reasoning or tool call that came before any text, got {first:?}"
            ));
        }
        if !deltas.iter().any(|d| !d.reasoning.is_empty()) {
            return Err("no delta carried reasoning".to_owned());
        }
        if let Some(d) = deltas
            .iter()
            .find(|d| d.has_structured_output() && d.tokens == 0)
        {
            return Err(format!(
                "a delta with non-text output carries no token (it is output, and charged): {d:?}"
            ));
        }
        let mut named: Vec<u32> = Vec::new();
        for call in deltas.iter().flat_map(|d| d.tool_calls.iter()) {
            if !named.contains(&call.index) {
                if call.name.is_none() || call.id.is_none() {
                    return Err(format!(
                        "the first fragment of tool call {} has no id or name: {call:?}",
                        call.index
                    ));
                }
                named.push(call.index);
            } else if call.name.is_some() || call.id.is_some() {
                return Err(format!(
                    "tool call {} is named again after its first fragment",
                    call.index
                ));
            }
        }
        if named.is_empty() {
            return Err("no delta carried a tool call".to_owned());
        }
        let usage = d.events.iter().find_map(|e| match e {
            TokenEvent::Usage(u) => Some(*u),
            _ => None,
        });
        if let Some(usage) = usage
            && usage.completion() != d.delta_tokens()
        {
            return Err(format!(
                "usage says {} completion tokens, deltas carried {}",
                usage.completion(),
                d.delta_tokens()
            ));
        }
        Ok(())
    }

    async fn pressure_moves(&mut self) -> Check {
        let idle = self.backend().pressure();
        if idle.queued_and_running() != 0 || idle.inflight != 0 {
            return Err(format!("a fresh instance reports load {idle:?}"));
        }
        let first = self.request(10_000);
        let first_id = first.request.id.clone();
        let a = self.start(first, CancelHandle::new()).await?;
        self.wait_phase(&first_id, &[EnginePhase::Prefill, EnginePhase::Decode])
            .await?;
        let second = self.request(16);
        let second_id = second.request.id.clone();
        let b = self.start(second, CancelHandle::new()).await?;
        self.wait_phase(&second_id, &[EnginePhase::Queued]).await?;
        // Backends that scrape their engine see the load one scrape later:
        // poll until the setup bound.
        let until = Instant::now() + self.config.setup_bound;
        loop {
            let busy = self.backend().pressure();
            if busy.running >= 1 && busy.waiting >= 1 {
                break;
            }
            if Instant::now() >= until {
                return Err(format!(
                    "with one running and one queued, pressure says {busy:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        drop(b);
        drop(a);
        // Aborts reach the engine within the abort bound (other rules check
        // that); a scraped pressure shows it one scrape later.
        let until = Instant::now() + self.config.setup_bound;
        loop {
            let now = self.backend().pressure();
            if now.queued_and_running() == 0 && now.inflight == 0 {
                return Ok(());
            }
            if Instant::now() >= until {
                return Err(format!(
                    "pressure did not return to idle after both requests ended: {now:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}
