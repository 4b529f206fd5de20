//! The conformance kit passes on the mock backend and names the broken rule
//! of each deliberately broken backend.

use std::sync::Arc;

use futures::StreamExt;
use gateway_core::testkit::conformance::{
    self, ConformanceConfig, ConformanceTarget, EngineProbe, Instance, Outcome, Rule, Scenario,
};
use gateway_core::testkit::{MockBackend, MockTarget};
use gateway_core::*;

#[tokio::test(start_paused = true)]
async fn mock_backend_conforms() {
    let report = conformance::run(&MockTarget, &ConformanceConfig::default()).await;
    println!("{report}");
    report.assert_passed();
    assert_eq!(report.outcomes.len(), Rule::ALL.len());
    // One measured latency per cancel rule that reaches the engine.
    assert_eq!(report.abort_latency.len(), 5);
}

/// How a [`Broken`] backend breaks the contract.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Flaw {
    /// Starts the engine with a handle of its own: cancels never reach it.
    IgnoresCancel,
    /// Sends one more Delta after Finished.
    DeltaAfterFinished,
    /// Reports every failure as after the first token.
    WrongErrorPhase,
    /// Ignores the completion cap.
    IgnoresCap,
    /// Reports one completion token more than it sent.
    MiscountsUsage,
    /// Never sends Started.
    NoStarted,
    /// Keeps only the text of each delta (how an adapter that reads text
    /// alone passes reasoning and tool calls on: tokens without output).
    TextOnly,
    /// Never forgets a request: `abort(id)` finds it after it ended, and
    /// `pressure().inflight` counts every request ever started.
    LeaksRequests,
}

/// A mock behind a flawed wrapper.
#[derive(Debug)]
struct Broken {
    inner: MockBackend,
    flaw: Flaw,
    /// Every request id started (for `LeaksRequests`).
    seen: std::sync::Mutex<Vec<RequestId>>,
}

impl Broken {
    fn seen(&self) -> std::sync::MutexGuard<'_, Vec<RequestId>> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl Backend for Broken {
    fn info(&self) -> &BackendInfo {
        self.inner.info()
    }
    fn pressure(&self) -> Pressure {
        let mut pressure = self.inner.pressure();
        if self.flaw == Flaw::LeaksRequests {
            pressure.inflight = self.seen().len() as u32;
        }
        pressure
    }
    async fn start(
        &self,
        mut request: BackendRequest,
        cancel: CancelHandle,
    ) -> Result<TokenStream, BackendError> {
        let flaw = self.flaw;
        self.seen().push(request.request.id.clone());
        if flaw == Flaw::IgnoresCap {
            request.budget.max_completion_tokens = u32::MAX;
        }
        let inner_cancel = if flaw == Flaw::IgnoresCancel {
            CancelHandle::new()
        } else {
            cancel
        };
        let stream = self
            .inner
            .start(request, inner_cancel)
            .await
            .map_err(|e| match flaw {
                Flaw::WrongErrorPhase => e.after_first_token(),
                _ => e,
            })?;
        let mapped = stream.flat_map(move |item| {
            let items: Vec<TokenResult> = match (flaw, item) {
                (Flaw::DeltaAfterFinished, Ok(TokenEvent::Finished(r))) => vec![
                    Ok(TokenEvent::Finished(r)),
                    Ok(TokenEvent::Delta(Delta::text("late", 1))),
                ],
                (Flaw::WrongErrorPhase, Err(e)) => vec![Err(e.after_first_token())],
                (Flaw::MiscountsUsage, Ok(TokenEvent::Usage(u))) => {
                    vec![Ok(TokenEvent::Usage(Usage::new(
                        u.prompt(),
                        u.completion() + 1,
                    )))]
                }
                (Flaw::NoStarted, Ok(TokenEvent::Started(_))) => vec![],
                (Flaw::TextOnly, Ok(TokenEvent::Delta(d))) => {
                    vec![Ok(TokenEvent::Delta(Delta::text(d.text, d.tokens)))]
                }
                (_, item) => vec![item],
            };
            futures::stream::iter(items)
        });
        Ok(TokenStream::new(mapped))
    }
    async fn abort(&self, id: &RequestId) -> Result<bool, BackendError> {
        let found = self.inner.abort(id).await?;
        Ok(found || (self.flaw == Flaw::LeaksRequests && self.seen().contains(id)))
    }
    async fn health(&self) -> Health {
        self.inner.health().await
    }
}

struct BrokenTarget(Flaw);

#[async_trait]
impl ConformanceTarget for BrokenTarget {
    async fn instance(&self, scenario: Scenario) -> Option<Instance> {
        let (inner, handle) = MockTarget::scripted(scenario);
        Some(Instance {
            backend: Arc::new(Broken {
                inner,
                flaw: self.0,
                seen: std::sync::Mutex::default(),
            }),
            probe: Arc::new(handle) as Arc<dyn EngineProbe>,
            model: MockTarget::MODEL.to_owned(),
        })
    }
}

async fn failed_rules(flaw: Flaw) -> (Vec<Rule>, String) {
    let report = conformance::run(&BrokenTarget(flaw), &ConformanceConfig::default()).await;
    assert!(report.skipped().is_empty(), "{report}");
    (report.failed(), report.to_string())
}

#[tokio::test(start_paused = true)]
async fn ignoring_cancel_is_caught_in_every_phase() {
    let (failed, text) = failed_rules(Flaw::IgnoresCancel).await;
    assert_eq!(
        failed,
        vec![Rule::CancelQueued, Rule::CancelPrefill, Rule::CancelDecode],
        "{text}"
    );
    assert!(
        text.contains("FAIL cancel_decode: stream still open"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn delta_after_finished_is_caught() {
    let (failed, text) = failed_rules(Flaw::DeltaAfterFinished).await;
    assert_eq!(
        failed,
        vec![
            Rule::EventOrder,
            Rule::UsageInvariants,
            Rule::CompletionCap,
            Rule::StructuredOutput
        ],
        "{text}"
    );
    assert!(
        text.contains(
            "FAIL event_order: event Delta after Finished: nothing may follow Finished or an error"
        ),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn wrong_error_phase_is_caught() {
    let (failed, text) = failed_rules(Flaw::WrongErrorPhase).await;
    assert!(failed.contains(&Rule::ErrorBeforeFirstToken), "{text}");
    assert!(!failed.contains(&Rule::ErrorAfterFirstToken), "{text}");
}

#[tokio::test(start_paused = true)]
async fn ignoring_the_cap_is_caught() {
    let (failed, text) = failed_rules(Flaw::IgnoresCap).await;
    assert_eq!(failed, vec![Rule::CompletionCap], "{text}");
}

#[tokio::test(start_paused = true)]
async fn miscounted_usage_is_caught() {
    let (failed, text) = failed_rules(Flaw::MiscountsUsage).await;
    assert_eq!(
        failed,
        vec![Rule::UsageInvariants, Rule::StructuredOutput],
        "{text}"
    );
    assert!(
        text.contains("usage says 4 completion tokens, deltas carried 3"),
        "{text}"
    );
    assert!(
        text.contains("FAIL structured_output: usage says 10 completion tokens, deltas carried 9"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_non_text_output_is_caught() {
    let (failed, text) = failed_rules(Flaw::TextOnly).await;
    assert_eq!(failed, vec![Rule::StructuredOutput], "{text}");
    assert!(
        text.contains("FAIL structured_output: the first delta must carry the reasoning or tool call that came before any text"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn leaked_requests_are_caught() {
    let (failed, text) = failed_rules(Flaw::LeaksRequests).await;
    assert_eq!(
        failed,
        vec![Rule::ExplicitAbort, Rule::PressureMoves],
        "{text}"
    );
    assert!(
        text.contains(
            "FAIL explicit_abort: abort of a request that ended 250ms ago still reported found"
        ),
        "{text}"
    );
    assert!(
        text.contains("FAIL pressure_moves: pressure did not return to idle"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn missing_started_is_caught() {
    let (failed, text) = failed_rules(Flaw::NoStarted).await;
    assert!(failed.contains(&Rule::EventOrder), "{text}");
    assert!(text.contains("a stream begins with Started"), "{text}");
    assert!(matches!(
        conformance::run(
            &BrokenTarget(Flaw::NoStarted),
            &ConformanceConfig::default()
        )
        .await
        .outcome(Rule::Descriptor),
        Some(Outcome::Pass)
    ));
}
