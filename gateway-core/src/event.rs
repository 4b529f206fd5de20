//! Token events and the fixed order they come in.

use std::fmt;

use crate::Usage;

/// What the engine reported on accepting a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Started {
    /// Prompt tokens, when the engine tells them up front.
    pub prompt_tokens: Option<u64>,
    /// Prompt tokens served from its prefix cache, when known.
    pub cached_tokens: Option<u64>,
}

/// A piece of generated output: text, and whatever else the model produced
/// in the same step (reasoning, tool-call fragments, a refusal, the
/// tokens' log-probabilities).
///
/// Every kind of output counts alike: a delta that carries any of it is the
/// first token when it comes first, and its `tokens` are metered and
/// charged as delivered. [`has_output`](Self::has_output) says whether there
/// is anything to show a client; a delta with none only carries tokens.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delta {
    /// The text, always whole UTF-8 characters (engines hold back a split
    /// character until it completes).
    pub text: String,
    /// Reasoning ("thinking") text, from an engine's reasoning parser.
    pub reasoning: String,
    /// The field the engine named the reasoning with, so a client gets it
    /// under the same name.
    pub reasoning_field: ReasoningField,
    /// Fragments of tool calls (OpenAI's `delta.tool_calls`).
    pub tool_calls: Vec<ToolCallDelta>,
    /// Refusal text (OpenAI's `delta.refusal`).
    pub refusal: String,
    /// How many completion tokens this piece carries (at least 1 unless the
    /// engine sent output without token accounting).
    pub tokens: u32,
    /// The token ids, when the engine gives them.
    pub token_ids: Vec<u32>,
    /// The prompt's token ids as the engine tokenized it (chat template
    /// rendered), on the first delta of a stream whose engine gives them
    /// (vLLM with `return_token_ids`); `None` otherwise. A continuation
    /// checks its own prompt ids against them.
    pub prompt_token_ids: Option<std::sync::Arc<[u32]>>,
    /// Log-probabilities of the tokens, when requested and given: one entry
    /// per token, in order.
    pub logprobs: Vec<TokenLogprob>,
}

impl Delta {
    /// A piece of `tokens` tokens of text.
    pub fn text(text: impl Into<String>, tokens: u32) -> Self {
        Delta {
            text: text.into(),
            tokens,
            ..Delta::default()
        }
    }

    /// A piece of `tokens` tokens of reasoning, named `field` on the wire.
    pub fn reasoning(text: impl Into<String>, field: ReasoningField, tokens: u32) -> Self {
        Delta {
            reasoning: text.into(),
            reasoning_field: field,
            tokens,
            ..Delta::default()
        }
    }

    /// A piece of `tokens` tokens of one tool call.
    pub fn tool_call(call: ToolCallDelta, tokens: u32) -> Self {
        Delta {
            tool_calls: vec![call],
            tokens,
            ..Delta::default()
        }
    }

    /// Whether there is anything to show a client: text, reasoning, a
    /// tool-call fragment, a refusal or logprobs.
    pub fn has_output(&self) -> bool {
        !self.text.is_empty()
            || !self.reasoning.is_empty()
            || !self.tool_calls.is_empty()
            || !self.refusal.is_empty()
            || !self.logprobs.is_empty()
    }

    /// Whether the piece has output other than text.
    pub fn has_structured_output(&self) -> bool {
        !self.reasoning.is_empty()
            || !self.tool_calls.is_empty()
            || !self.refusal.is_empty()
            || !self.logprobs.is_empty()
    }

    /// Bytes of client-visible output this piece carries (text, reasoning,
    /// refusal, tool names, ids and arguments), for bounds.
    pub fn output_bytes(&self) -> usize {
        let calls: usize = self
            .tool_calls
            .iter()
            .map(|c| {
                c.arguments.len()
                    + c.id.as_ref().map_or(0, String::len)
                    + c.name.as_ref().map_or(0, String::len)
            })
            .sum();
        let logprobs: usize = self.logprobs.iter().map(TokenLogprob::approx_bytes).sum();
        self.text.len() + self.reasoning.len() + self.refusal.len() + calls + logprobs
    }
}

/// Which field an engine streams reasoning in: vLLM 0.32 writes
/// `reasoning`, SGLang and DeepSeek's API `reasoning_content`, some vLLM
/// versions both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ReasoningField {
    /// `reasoning`.
    #[default]
    Reasoning,
    /// `reasoning_content`.
    ReasoningContent,
    /// Both, with the same text.
    Both,
}

impl ReasoningField {
    /// The field for an engine that sent `reasoning` and/or
    /// `reasoning_content`; `None` when it sent neither.
    pub const fn from_presence(reasoning: bool, reasoning_content: bool) -> Option<Self> {
        match (reasoning, reasoning_content) {
            (true, true) => Some(ReasoningField::Both),
            (true, false) => Some(ReasoningField::Reasoning),
            (false, true) => Some(ReasoningField::ReasoningContent),
            (false, false) => None,
        }
    }

    /// Whether the `reasoning` field is written.
    pub const fn writes_reasoning(self) -> bool {
        matches!(self, ReasoningField::Reasoning | ReasoningField::Both)
    }

    /// Whether the `reasoning_content` field is written.
    pub const fn writes_reasoning_content(self) -> bool {
        matches!(
            self,
            ReasoningField::ReasoningContent | ReasoningField::Both
        )
    }
}

/// One fragment of a streamed tool call (OpenAI's
/// `delta.tool_calls[]`): the first fragment of a call carries its id, type
/// and function name, the following ones pieces of its arguments.
///
/// Only one choice is served per request, so the choice index is always 0.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolCallDelta {
    /// Which call of the message this fragment belongs to (0 for the first
    /// call, 1 for a parallel second call, ...).
    pub index: u32,
    /// The call's id, on its first fragment.
    pub id: Option<String>,
    /// The call's type (`function`), on its first fragment.
    pub kind: Option<String>,
    /// The function's name, on its first fragment.
    pub name: Option<String>,
    /// The next piece of the arguments' JSON text (may be empty).
    pub arguments: String,
}

/// The log-probability of one generated token, with the most likely
/// alternatives when asked for (`top_logprobs`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenLogprob {
    /// The token as text.
    pub token: String,
    /// Its log-probability.
    pub logprob: f64,
    /// The token's UTF-8 bytes, when the engine gives them.
    pub bytes: Option<Vec<u8>>,
    /// The most likely tokens at this position, most likely first.
    pub top_logprobs: Vec<TopLogprob>,
}

impl TokenLogprob {
    /// A rough size in bytes, for bounds.
    fn approx_bytes(&self) -> usize {
        let top: usize = self.top_logprobs.iter().map(|t| t.token.len() + 24).sum();
        self.token.len() + 24 + top
    }
}

/// One alternative of [`TokenLogprob::top_logprobs`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopLogprob {
    /// The token as text.
    pub token: String,
    /// Its log-probability.
    pub logprob: f64,
    /// The token's UTF-8 bytes, when the engine gives them.
    pub bytes: Option<Vec<u8>>,
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FinishReason {
    /// A stop token or stop sequence.
    Stop,
    /// The completion-token cap (`max_tokens` or the budget's cap).
    Length,
    /// The model called a tool.
    ToolCalls,
    /// The engine's content filter stopped it.
    ContentFilter,
}

impl FinishReason {
    /// The OpenAI name.
    pub const fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
        }
    }
}

impl fmt::Display for FinishReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event of a [`TokenStream`](crate::TokenStream).
///
/// The order is fixed: `Started`, then any number of `Delta`, then at most
/// one `Usage`, then `Finished`; an `Err` item may replace any event and
/// ends the stream. Nothing follows `Finished` or an error.
/// [`EventOrder`] checks it.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenEvent {
    /// The engine accepted the request.
    Started(Started),
    /// Generated output.
    Delta(Delta),
    /// Authoritative token counts from the engine.
    Usage(Usage),
    /// Generation ended normally.
    Finished(FinishReason),
}

impl TokenEvent {
    /// A short name of the event's variant.
    pub const fn name(&self) -> &'static str {
        match self {
            TokenEvent::Started(_) => "Started",
            TokenEvent::Delta(_) => "Delta",
            TokenEvent::Usage(_) => "Usage",
            TokenEvent::Finished(_) => "Finished",
        }
    }
}

/// Where a stream is in the event order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    Fresh,
    Started,
    Usage,
    Ended,
}

/// An event that breaks the fixed order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event {got} after {after}: {rule}")]
pub struct OrderViolation {
    /// The offending event (`"Error"` for an error item).
    pub got: &'static str,
    /// What came before it.
    pub after: &'static str,
    /// The rule it breaks.
    pub rule: &'static str,
}

/// Checks the fixed event order of a stream, one item at a time.
///
/// The gateway runs every backend stream through one of these, so a
/// backend that breaks the contract yields a
/// [`ProtocolViolation`](crate::FailureKind::ProtocolViolation) instead of
/// confusing a client; the conformance kit uses it to judge backends.
#[derive(Debug, Clone)]
pub struct EventOrder {
    position: Position,
    last: &'static str,
    deltas: u64,
}

impl Default for EventOrder {
    fn default() -> Self {
        EventOrder::new()
    }
}

impl EventOrder {
    /// A checker for a stream that has yielded nothing yet.
    pub const fn new() -> Self {
        EventOrder {
            position: Position::Fresh,
            last: "start",
            deltas: 0,
        }
    }

    /// Whether the stream has ended (finished or failed).
    pub fn is_ended(&self) -> bool {
        self.position == Position::Ended
    }

    /// How many `Delta` events were seen.
    pub fn deltas(&self) -> u64 {
        self.deltas
    }

    /// Checks the next event.
    ///
    /// # Errors
    /// An [`OrderViolation`] naming the broken rule; the checker then counts
    /// the stream as ended.
    pub fn observe(&mut self, event: &TokenEvent) -> Result<(), OrderViolation> {
        let got = event.name();
        let next = match (self.position, event) {
            (Position::Ended, _) => Err("nothing may follow Finished or an error"),
            (Position::Fresh, TokenEvent::Started(_)) => Ok(Position::Started),
            (Position::Fresh, _) => Err("a stream begins with Started"),
            (Position::Started, TokenEvent::Started(_)) => Err("Started comes once"),
            (Position::Started, TokenEvent::Delta(_)) => Ok(Position::Started),
            (Position::Started, TokenEvent::Usage(_)) => Ok(Position::Usage),
            (Position::Started | Position::Usage, TokenEvent::Finished(_)) => Ok(Position::Ended),
            (Position::Usage, TokenEvent::Started(_) | TokenEvent::Delta(_)) => {
                Err("only Finished may follow Usage")
            }
            (Position::Usage, TokenEvent::Usage(_)) => Err("Usage comes at most once"),
        };
        let after = self.last;
        self.last = got;
        match next {
            Ok(position) => {
                if matches!(event, TokenEvent::Delta(_)) {
                    self.deltas += 1;
                }
                self.position = position;
                Ok(())
            }
            Err(rule) => {
                self.position = Position::Ended;
                Err(OrderViolation { got, after, rule })
            }
        }
    }

    /// Checks an error item: allowed anywhere before the end, and ends it.
    ///
    /// # Errors
    /// An [`OrderViolation`] if the stream had already ended.
    pub fn observe_error(&mut self) -> Result<(), OrderViolation> {
        let after = self.last;
        self.last = "Error";
        if self.position == Position::Ended {
            return Err(OrderViolation {
                got: "Error",
                after,
                rule: "nothing may follow Finished or an error",
            });
        }
        self.position = Position::Ended;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started() -> TokenEvent {
        TokenEvent::Started(Started::default())
    }
    fn delta() -> TokenEvent {
        TokenEvent::Delta(Delta::text("a", 1))
    }
    fn usage() -> TokenEvent {
        TokenEvent::Usage(Usage::new(1, 1))
    }
    fn finished() -> TokenEvent {
        TokenEvent::Finished(FinishReason::Stop)
    }

    fn check(events: &[TokenEvent]) -> Result<(), OrderViolation> {
        let mut order = EventOrder::new();
        events.iter().try_for_each(|e| order.observe(e))
    }

    #[test]
    fn accepts_the_fixed_order() {
        assert_eq!(check(&[started(), finished()]), Ok(()));
        assert_eq!(check(&[started(), delta(), delta(), finished()]), Ok(()));
        assert_eq!(check(&[started(), delta(), usage(), finished()]), Ok(()));
        assert_eq!(check(&[started(), usage(), finished()]), Ok(()));
    }

    #[test]
    fn names_each_broken_rule() {
        let cases: [(&[TokenEvent], &str); 6] = [
            (&[delta()], "a stream begins with Started"),
            (&[started(), started()], "Started comes once"),
            (
                &[started(), usage(), delta()],
                "only Finished may follow Usage",
            ),
            (&[started(), usage(), usage()], "Usage comes at most once"),
            (
                &[started(), finished(), delta()],
                "nothing may follow Finished or an error",
            ),
            (&[finished()], "a stream begins with Started"),
        ];
        for (events, rule) in cases {
            assert_eq!(check(events).unwrap_err().rule, rule, "{events:?}");
        }
        let err = check(&[started(), finished(), delta()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "event Delta after Finished: nothing may follow Finished or an error"
        );
    }

    #[test]
    fn errors_end_the_stream() {
        let mut order = EventOrder::new();
        assert_eq!(order.observe_error(), Ok(()));
        assert!(order.is_ended());
        assert!(order.observe(&started()).is_err());

        let mut order = EventOrder::new();
        order.observe(&started()).unwrap();
        order.observe(&delta()).unwrap();
        order.observe(&finished()).unwrap();
        assert!(order.observe_error().is_err());
        assert_eq!(order.deltas(), 1);
    }
}
