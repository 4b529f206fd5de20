//! [`PackedResult`]: a token result in 32 bytes, for queues.

use crate::{Delta, FinishReason, ReasoningField, TokenEvent, TokenResult};

/// A [`TokenResult`] packed for a queue between the tasks of a stream.
///
/// A [`TokenResult`] is as large as its largest event (a [`Delta`] with
/// every kind of output: 168 bytes), and a queue slot is as large as its
/// item, used or not: Tokio's channels allocate 32 slots at a time. Nearly
/// every item of a stream is a plain text delta, so that one is kept inline
/// (its text and token count) together with `Finished`; anything else
/// (`Started`, `Usage`, a delta with reasoning, tool calls, logprobs or
/// token ids, an error) is boxed. Packing and unpacking move the fields;
/// nothing is copied or lost:
///
/// ```
/// use gateway_core::{Delta, PackedResult, TokenEvent};
///
/// let event = TokenEvent::Delta(Delta::text("Hello", 1));
/// let packed = PackedResult::from(Ok(event.clone()));
/// assert!(packed.is_inline());
/// assert_eq!(packed.unpack().unwrap(), event);
/// assert_eq!(std::mem::size_of::<PackedResult>(), 32);
/// ```
#[derive(Debug)]
pub enum PackedResult {
    /// A delta with text and tokens only.
    Text {
        /// [`Delta::text`].
        text: String,
        /// [`Delta::tokens`].
        tokens: u32,
    },
    /// `Finished`.
    Finished(FinishReason),
    /// Any other item.
    Boxed(Box<TokenResult>),
}

impl PackedResult {
    /// Whether the item is held without a box of its own.
    pub fn is_inline(&self) -> bool {
        !matches!(self, PackedResult::Boxed(_))
    }

    /// The item as it was packed.
    pub fn unpack(self) -> TokenResult {
        match self {
            PackedResult::Text { text, tokens } => Ok(TokenEvent::Delta(Delta::text(text, tokens))),
            PackedResult::Finished(reason) => Ok(TokenEvent::Finished(reason)),
            PackedResult::Boxed(item) => *item,
        }
    }
}

/// Whether `delta` holds nothing but its text and token count (so
/// [`Delta::text`] rebuilds it exactly).
fn text_only(delta: &Delta) -> bool {
    let Delta {
        text: _,
        tokens: _,
        reasoning,
        reasoning_field,
        tool_calls,
        refusal,
        token_ids,
        prompt_token_ids,
        logprobs,
    } = delta;
    reasoning.is_empty()
        && *reasoning_field == ReasoningField::default()
        && tool_calls.is_empty()
        && refusal.is_empty()
        && token_ids.is_empty()
        && prompt_token_ids.is_none()
        && logprobs.is_empty()
}

impl From<TokenResult> for PackedResult {
    fn from(item: TokenResult) -> Self {
        match item {
            Ok(TokenEvent::Delta(delta)) if text_only(&delta) => PackedResult::Text {
                text: delta.text,
                tokens: delta.tokens,
            },
            Ok(TokenEvent::Finished(reason)) => PackedResult::Finished(reason),
            other => PackedResult::Boxed(Box::new(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        BackendError, FailureKind, Started, TokenLogprob, ToolCallDelta, TopLogprob, Usage,
    };
    use std::sync::Arc;

    fn round_trip(item: TokenResult, inline: bool) {
        let packed = PackedResult::from(match &item {
            Ok(event) => Ok(event.clone()),
            Err(_) => Err(BackendError::new(FailureKind::Overloaded, "busy")),
        });
        assert_eq!(packed.is_inline(), inline, "{item:?}");
        match (packed.unpack(), item) {
            (Ok(back), Ok(event)) => assert_eq!(back, event),
            (Err(back), Err(e)) => {
                assert_eq!((back.kind(), back.to_string()), (e.kind(), e.to_string()));
            }
            (back, item) => panic!("{item:?} came back as {back:?}"),
        }
    }

    #[test]
    fn every_item_comes_back_as_it_went_in() {
        round_trip(Ok(TokenEvent::Delta(Delta::text("é🙂", 2))), true);
        round_trip(Ok(TokenEvent::Delta(Delta::text("", 1))), true);
        round_trip(Ok(TokenEvent::Finished(FinishReason::Length)), true);
        round_trip(
            Ok(TokenEvent::Started(Started {
                prompt_tokens: Some(7),
                cached_tokens: Some(3),
            })),
            false,
        );
        round_trip(Ok(TokenEvent::Usage(Usage::new(7, 3))), false);
        round_trip(
            Err(BackendError::new(FailureKind::Overloaded, "busy")),
            false,
        );
        let mut rich = Vec::new();
        let mut d = Delta::text("a", 1);
        d.reasoning = "hm".into();
        rich.push(d);
        let mut d = Delta::text("a", 1);
        d.reasoning_field = ReasoningField::ReasoningContent;
        rich.push(d);
        rich.push(Delta::tool_call(
            ToolCallDelta {
                index: 1,
                id: Some("call_1".into()),
                kind: None,
                name: Some("f".into()),
                arguments: "{}".into(),
            },
            1,
        ));
        let mut d = Delta::text("", 0);
        d.refusal = "no".into();
        rich.push(d);
        let mut d = Delta::text("a", 1);
        d.token_ids = vec![5];
        rich.push(d);
        let mut d = Delta::text("a", 1);
        d.prompt_token_ids = Some(Arc::from(vec![1_u32, 2]));
        rich.push(d);
        let mut d = Delta::text("a", 1);
        d.logprobs = vec![TokenLogprob {
            token: "a".into(),
            logprob: -0.5,
            bytes: None,
            top_logprobs: vec![TopLogprob {
                token: "a".into(),
                logprob: -0.5,
                bytes: None,
            }],
        }];
        rich.push(d);
        for d in rich {
            round_trip(Ok(TokenEvent::Delta(d)), false);
        }
    }
}
