//! [`MockTarget`]: the [`MockBackend`] set up for each conformance scenario.

use std::sync::Arc;
use std::time::Duration;

use super::conformance::{ConformanceTarget, EngineProbe, Instance, Scenario};
use super::{MockBackend, MockHandle, Script, Step};
use crate::{AbortCounts, EnginePhase, FailureKind, RequestId};

impl EngineProbe for MockHandle {
    fn aborts(&self) -> AbortCounts {
        MockHandle::aborts(self)
    }
    fn phase(&self, id: &RequestId) -> Option<EnginePhase> {
        MockHandle::phase(self, id)
    }
}

/// Builds a fresh [`MockBackend`] per scenario, scripted to behave as the
/// scenario asks; also the model of how to write a target.
#[derive(Debug, Clone, Copy, Default)]
pub struct MockTarget;

/// The model every mock instance serves.
const MODEL: &str = "mock-model";

impl MockTarget {
    /// The model every mock instance serves.
    pub const MODEL: &'static str = MODEL;

    /// A fresh mock scripted for `scenario`, and its handle.
    pub fn scripted(scenario: Scenario) -> (MockBackend, MockHandle) {
        let (backend, handle) = MockBackend::new("mock-0", MODEL);
        let tick = Duration::from_millis(20);
        match scenario {
            Scenario::Normal => {}
            Scenario::LongPrefill => {
                handle.push(Script::repeat(200, tick).prefill(Duration::from_secs(5)));
            }
            Scenario::LongDecode => handle.push(Script::repeat(1000, tick)),
            Scenario::Saturated => {
                handle.push(Script::repeat(1000, tick).prefill(Duration::from_secs(3)));
                handle.push(Script::repeat(16, tick).queued(Duration::from_secs(5)));
            }
            Scenario::FailBeforeFirstToken => handle.push(Script::reject(FailureKind::Overloaded)),
            Scenario::StructuredOutput => handle.push(Script::structured(Duration::ZERO)),
            Scenario::FailAfterFirstToken => {
                handle.push(
                    Script::repeat(2, Duration::ZERO).then(Step::Fail(FailureKind::Internal)),
                );
            }
        }
        (backend, handle)
    }
}

#[async_trait::async_trait]
impl ConformanceTarget for MockTarget {
    async fn instance(&self, scenario: Scenario) -> Option<Instance> {
        let (backend, handle) = MockTarget::scripted(scenario);
        Some(Instance {
            backend: Arc::new(backend),
            probe: Arc::new(handle),
            model: MODEL.to_owned(),
        })
    }
}
