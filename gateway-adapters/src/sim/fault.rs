//! [`FaultPlan`]: failures injected into the simulated engine on purpose.

use gateway_core::{FailureKind, Prompt};

/// Which requests a [`FaultRule`] applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultTrigger {
    /// Every request.
    Always,
    /// The `n`-th call of `start` on the backend, counting from 1 (refused
    /// calls count too).
    NthRequest(u64),
    /// Requests whose text prompt, or any of whose chat messages, contains
    /// the string. Token-id prompts never match.
    PromptContains(String),
}

impl FaultTrigger {
    /// Whether the trigger fires for start call number `call` (1-based)
    /// with `prompt`.
    pub fn matches(&self, call: u64, prompt: &Prompt) -> bool {
        match self {
            FaultTrigger::Always => true,
            FaultTrigger::NthRequest(n) => *n == call,
            FaultTrigger::PromptContains(needle) => match prompt {
                Prompt::Text(text) => text.contains(needle.as_str()),
                Prompt::Chat(messages) => {
                    messages.iter().any(|m| m.content.contains(needle.as_str()))
                }
                Prompt::Tokens(_) => false,
            },
        }
    }
}

/// What goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// `start` refuses the request with this kind (an `Overloaded` refusal
    /// carries the configured `retry_after`).
    FailBeforeFirstToken(FailureKind),
    /// The request is accepted; when it gets a slot, its stream ends with
    /// this error before any token (phase `BeforeFirstToken`).
    FailAtPrefill(FailureKind),
    /// The engine sends this many tokens, then produces nothing more until
    /// the request is canceled (or its deadline passes). `StallAfter(0)`
    /// stalls at the end of prefill. No effect if the request ends sooner.
    StallAfter(u32),
    /// The engine sends this many tokens, then ends the stream with this
    /// error (phase `AfterFirstToken` when at least one token was sent).
    /// No effect if the request ends sooner.
    ErrorAfter(u32, FailureKind),
}

/// One rule of a [`FaultPlan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRule {
    /// Which requests.
    pub trigger: FaultTrigger,
    /// What happens to them.
    pub fault: Fault,
}

/// Rules checked in order for every `start`; the first rule whose trigger
/// matches decides the request's fault. Empty by default: no faults.
///
/// ```
/// use gateway_adapters::sim::{Fault, FaultPlan, FaultTrigger};
/// use gateway_core::FailureKind;
///
/// let plan = FaultPlan::new()
///     .with(FaultTrigger::NthRequest(3), Fault::FailAtPrefill(FailureKind::Internal))
///     .with(FaultTrigger::PromptContains("stall".into()), Fault::StallAfter(2));
/// assert_eq!(plan.rules().len(), 2);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultPlan {
    rules: Vec<FaultRule>,
}

impl FaultPlan {
    /// No faults.
    pub const fn new() -> Self {
        FaultPlan { rules: Vec::new() }
    }

    /// Every request meets `fault`.
    pub fn always(fault: Fault) -> Self {
        FaultPlan::new().with(FaultTrigger::Always, fault)
    }

    /// Adds a rule after the existing ones.
    #[must_use]
    pub fn with(mut self, trigger: FaultTrigger, fault: Fault) -> Self {
        self.rules.push(FaultRule { trigger, fault });
        self
    }

    /// The rules, in the order they are checked.
    pub fn rules(&self) -> &[FaultRule] {
        &self.rules
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The fault of start call number `call` (1-based) with `prompt`: that
    /// of the first matching rule.
    pub fn fault_for(&self, call: u64, prompt: &Prompt) -> Option<Fault> {
        self.rules
            .iter()
            .find(|rule| rule.trigger.matches(call, prompt))
            .map(|rule| rule.fault)
    }
}

impl FromIterator<FaultRule> for FaultPlan {
    fn from_iter<I: IntoIterator<Item = FaultRule>>(iter: I) -> Self {
        FaultPlan {
            rules: iter.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_core::ChatMessage;

    #[test]
    fn first_matching_rule_wins() {
        let plan = FaultPlan::new()
            .with(FaultTrigger::NthRequest(2), Fault::StallAfter(1))
            .with(
                FaultTrigger::PromptContains("boom".into()),
                Fault::FailAtPrefill(FailureKind::Internal),
            )
            .with(
                FaultTrigger::Always,
                Fault::ErrorAfter(3, FailureKind::Connect),
            );
        let text = Prompt::Text("a boom".into());
        assert_eq!(plan.fault_for(2, &text), Some(Fault::StallAfter(1)));
        assert_eq!(
            plan.fault_for(1, &text),
            Some(Fault::FailAtPrefill(FailureKind::Internal))
        );
        let chat = Prompt::Chat(vec![ChatMessage::system("x"), ChatMessage::user("boom!")]);
        assert_eq!(
            plan.fault_for(5, &chat),
            Some(Fault::FailAtPrefill(FailureKind::Internal))
        );
        assert_eq!(
            plan.fault_for(5, &Prompt::Tokens(vec![1, 2])),
            Some(Fault::ErrorAfter(3, FailureKind::Connect))
        );
        assert_eq!(FaultPlan::new().fault_for(1, &text), None);
    }
}
