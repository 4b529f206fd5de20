//! An engine's streamed choice (chat or completions) read into a
//! [`Delta`]: text, reasoning (under the field name the engine used), tool
//! call fragments, refusal, logprobs (chat's `content[]` or the legacy
//! completions shape) and the token count.
//!
//! Every engine that speaks OpenAI-style SSE (vLLM, trtllm-serve, Dynamo,
//! NIM, SGLang's OpenAI routes) sends these shapes; ENGINES.md §2.

use std::fmt;

use gateway_core::{Delta, ReasoningField, TokenLogprob, ToolCallDelta, TopLogprob};
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// Deserializes `null` as the default value.
fn nullable<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// One choice of a streamed chunk, read leniently.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub(crate) struct WireChoice {
    pub(crate) index: Option<u32>,
    /// Chat: what is new.
    pub(crate) delta: Option<WireDelta>,
    /// Completions: the next text.
    pub(crate) text: Option<String>,
    pub(crate) finish_reason: Option<String>,
    /// vLLM with `return_token_ids`.
    pub(crate) token_ids: Option<Vec<u32>>,
    /// vLLM with `return_token_ids`: the prompt's ids, on a completions
    /// stream's first choice.
    pub(crate) prompt_token_ids: Option<Vec<u32>>,
    /// Whether the choice has `logprobs`: they are read in a second pass
    /// over the chunk ([`WireChoice::take_delta`]), as reading them with
    /// the rest slows every plain text chunk by a quarter (the `sse` bench).
    pub(crate) logprobs: Present,
}

/// Whether a field holds a value other than `null` (skipped unread).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(crate) struct Present(bool);

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Option::<serde::de::IgnoredAny>::deserialize(deserializer).map(|v| Present(v.is_some()))
    }
}

/// The second pass: the chunk's choices with only their logprobs.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct LogprobsChunk {
    #[serde(deserialize_with = "nullable")]
    choices: Vec<LogprobsChoice>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct LogprobsChoice {
    index: Option<u32>,
    logprobs: Option<WireLogprobs>,
}

/// The logprobs of choice `index` of the chunk `data`.
fn choice_logprobs(data: &str, index: u32) -> Vec<TokenLogprob> {
    serde_json::from_str::<LogprobsChunk>(data)
        .ok()
        .and_then(|chunk| {
            chunk
                .choices
                .into_iter()
                .find(|c| c.index.unwrap_or(0) == index)
        })
        .and_then(|c| c.logprobs)
        .map(WireLogprobs::into_tokens)
        .unwrap_or_default()
}

/// A chat choice's `delta`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub(crate) struct WireDelta {
    pub(crate) role: Option<String>,
    pub(crate) content: Option<String>,
    pub(crate) reasoning: Option<String>,
    pub(crate) reasoning_content: Option<String>,
    pub(crate) refusal: Option<String>,
    #[serde(deserialize_with = "nullable")]
    pub(crate) tool_calls: Vec<WireToolCall>,
}

/// One entry of `delta.tool_calls`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub(crate) struct WireToolCall {
    pub(crate) index: Option<u32>,
    pub(crate) id: Option<String>,
    #[serde(rename = "type")]
    pub(crate) kind: Option<String>,
    pub(crate) function: Option<WireFunction>,
}

/// `tool_calls[].function`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub(crate) struct WireFunction {
    pub(crate) name: Option<String>,
    pub(crate) arguments: Option<String>,
}

/// A choice's `logprobs`: chat's `{"content":[...]}` or the legacy
/// completions `{"tokens","token_logprobs","top_logprobs","text_offset"}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct WireLogprobs {
    #[serde(deserialize_with = "nullable")]
    pub(crate) content: Vec<WireLogprob>,
    #[serde(deserialize_with = "nullable")]
    pub(crate) tokens: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub(crate) token_logprobs: Vec<Option<f64>>,
    #[serde(deserialize_with = "nullable")]
    pub(crate) top_logprobs: Vec<Option<OrderedLogprobs>>,
}

/// One entry of chat's `logprobs.content`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct WireLogprob {
    #[serde(deserialize_with = "nullable")]
    pub(crate) token: String,
    #[serde(deserialize_with = "nullable")]
    pub(crate) logprob: f64,
    pub(crate) bytes: Option<Vec<u8>>,
    #[serde(deserialize_with = "nullable")]
    pub(crate) top_logprobs: Vec<WireTopLogprob>,
}

/// One entry of `top_logprobs` (chat).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct WireTopLogprob {
    #[serde(deserialize_with = "nullable")]
    pub(crate) token: String,
    #[serde(deserialize_with = "nullable")]
    pub(crate) logprob: f64,
    pub(crate) bytes: Option<Vec<u8>>,
}

/// A legacy `top_logprobs` entry, `{token: logprob, ...}`, in the order the
/// engine wrote it (most likely first).
#[derive(Debug, Default)]
pub(crate) struct OrderedLogprobs(pub(crate) Vec<(String, f64)>);

impl<'de> Deserialize<'de> for OrderedLogprobs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Pairs;
        impl<'de> Visitor<'de> for Pairs {
            type Value = OrderedLogprobs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of token logprobs")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some((token, logprob)) = map.next_entry::<String, Option<f64>>()? {
                    pairs.push((token, logprob.unwrap_or_default()));
                }
                Ok(OrderedLogprobs(pairs))
            }
        }
        deserializer.deserialize_map(Pairs)
    }
}

impl WireLogprobs {
    /// The entries as the contract's typed logprobs, one per token.
    fn into_tokens(self) -> Vec<TokenLogprob> {
        if !self.content.is_empty() {
            return self
                .content
                .into_iter()
                .map(|e| TokenLogprob {
                    token: e.token,
                    logprob: e.logprob,
                    bytes: e.bytes,
                    top_logprobs: e
                        .top_logprobs
                        .into_iter()
                        .map(|t| TopLogprob {
                            token: t.token,
                            logprob: t.logprob,
                            bytes: t.bytes,
                        })
                        .collect(),
                })
                .collect();
        }
        let mut logprobs = self.token_logprobs.into_iter();
        let mut tops = self.top_logprobs.into_iter();
        self.tokens
            .into_iter()
            .map(|token| TokenLogprob {
                token,
                logprob: logprobs.next().flatten().unwrap_or_default(),
                bytes: None,
                top_logprobs: tops
                    .next()
                    .flatten()
                    .map(|top| {
                        top.0
                            .into_iter()
                            .map(|(token, logprob)| TopLogprob {
                                token,
                                logprob,
                                bytes: None,
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect()
    }
}

/// The parts of a streamed chunk [`chunk_delta`] reads.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WireChunk {
    #[serde(deserialize_with = "nullable")]
    choices: Vec<WireChoice>,
}

/// The output of choice 0 of one OpenAI-style stream chunk (the JSON of a
/// `data:` line, chat or completions) as a [`Delta`], with its tokens
/// counted as the gateway's OpenAI-compatible adapters count them: the
/// number of `token_ids` when given, else of logprob entries, else one for
/// a chunk with output; `None` when the choice carries neither output nor
/// tokens (the role chunk, the finish chunk, the usage chunk), or the text
/// is not such a chunk.
///
/// ```
/// use gateway_adapters::openai::chunk_delta;
/// use gateway_core::ReasoningField;
///
/// let d = chunk_delta(r#"{"choices":[{"index":0,"delta":{"reasoning":"Hm"}}]}"#).unwrap();
/// assert_eq!((d.reasoning.as_str(), d.reasoning_field, d.tokens), ("Hm", ReasoningField::Reasoning, 1));
/// let call = r#"{"choices":[{"index":0,"delta":{"content":null,"tool_calls":[{"index":0,"function":{"arguments":"{}"}}]}}]}"#;
/// assert_eq!(chunk_delta(call).unwrap().tool_calls[0].arguments, "{}");
/// assert_eq!(chunk_delta(r#"{"choices":[],"usage":{"prompt_tokens":1}}"#), None);
/// ```
pub fn chunk_delta(data: &str) -> Option<Delta> {
    let mut chunk: WireChunk = serde_json::from_str(data).ok()?;
    WireChoice::first(&mut chunk.choices)?.take_delta(data)
}

impl WireChoice {
    /// Choice 0 of a chunk's `choices` (a missing `index` is 0), by
    /// reference: moving it out of the list copies its ~250 bytes.
    pub(crate) fn first(choices: &mut [WireChoice]) -> Option<&mut WireChoice> {
        choices.iter_mut().find(|c| c.index.unwrap_or(0) == 0)
    }

    /// The choice's output as a [`Delta`] (tokens counted as below), or
    /// `None` for a choice without output (the role chunk, the finish
    /// chunk) that carries no tokens either. `data` is the chunk's JSON
    /// the choice was read from (its logprobs are read from it).
    ///
    /// Tokens: the number of `token_ids` when given, else the number of
    /// logprob entries when given (one per token), else one for a chunk
    /// with any output. A chunk whose output is empty but that has a
    /// non-role delta (a token that decoded to nothing yet) counts one
    /// token and has no output.
    pub(crate) fn take_delta(&mut self, data: &str) -> Option<Delta> {
        let mut delta = Delta::default();
        let mut seen = false;
        let mut role_only = false;
        if let Some(wire) = self.delta.take() {
            // Empty strings are no output: SGLang sends `reasoning_content: ""`
            // when no reasoning parser runs.
            let some = |s: &Option<String>| s.as_ref().is_some_and(|s| !s.is_empty());
            let has_other = some(&wire.reasoning)
                || some(&wire.reasoning_content)
                || some(&wire.refusal)
                || !wire.tool_calls.is_empty();
            role_only = wire.role.is_some() && !has_other;
            seen = wire.content.is_some() || has_other;
            delta.text = wire.content.unwrap_or_default();
            let (reasoning, reasoning_content) = (
                wire.reasoning.filter(|r| !r.is_empty()),
                wire.reasoning_content.filter(|r| !r.is_empty()),
            );
            if let Some(field) =
                ReasoningField::from_presence(reasoning.is_some(), reasoning_content.is_some())
            {
                delta.reasoning_field = field;
                delta.reasoning = reasoning.or(reasoning_content).unwrap_or_default();
            }
            delta.refusal = wire.refusal.unwrap_or_default();
            delta.tool_calls = wire
                .tool_calls
                .into_iter()
                .map(|call| {
                    let function = call.function.unwrap_or_default();
                    ToolCallDelta {
                        index: call.index.unwrap_or(0),
                        id: call.id.filter(|id| !id.is_empty()),
                        kind: call.kind.filter(|k| !k.is_empty()),
                        name: function.name.filter(|n| !n.is_empty()),
                        arguments: function.arguments.unwrap_or_default(),
                    }
                })
                .filter(|c| {
                    c.id.is_some()
                        || c.kind.is_some()
                        || c.name.is_some()
                        || !c.arguments.is_empty()
                })
                .collect();
        } else if let Some(text) = self.text.take() {
            seen = true;
            delta.text = text;
        }
        if self.logprobs.0 {
            delta.logprobs = choice_logprobs(data, self.index.unwrap_or(0));
        }
        let ids = self.token_ids.take().unwrap_or_default();
        let tokens = if !ids.is_empty() {
            u32::try_from(ids.len()).unwrap_or(u32::MAX)
        } else if !delta.logprobs.is_empty() {
            u32::try_from(delta.logprobs.len()).unwrap_or(u32::MAX)
        } else if role_only {
            u32::from(!delta.text.is_empty())
        } else {
            u32::from(seen)
        };
        delta.token_ids = ids;
        delta.tokens = tokens;
        (tokens > 0 || delta.has_output()).then_some(delta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(json: &str) -> Option<Delta> {
        chunk_delta(&format!(r#"{{"choices":[{json}]}}"#))
    }

    #[test]
    fn role_and_finish_chunks_carry_nothing() {
        assert_eq!(
            delta(r#"{"index":0,"delta":{"role":"assistant","content":""}}"#),
            None
        );
        assert_eq!(
            delta(r#"{"index":0,"delta":{},"finish_reason":"stop"}"#),
            None
        );
        let d = delta(r#"{"delta":{"content":"Hel"}}"#).unwrap();
        assert_eq!((d.text.as_str(), d.tokens), ("Hel", 1));
        let d = delta(r#"{"text":"ab","token_ids":[1,2,3]}"#).unwrap();
        assert_eq!(
            (d.text.as_str(), d.tokens, d.token_ids),
            ("ab", 3, vec![1, 2, 3])
        );
        // A token that decoded to nothing yet: counted, nothing to show.
        let d = delta(r#"{"delta":{"content":""}}"#).unwrap();
        assert_eq!((d.tokens, d.has_output()), (1, false));
    }

    #[test]
    fn reasoning_keeps_its_field_name() {
        let d = delta(r#"{"delta":{"reasoning":"hm"}}"#).unwrap();
        assert_eq!(d, Delta::reasoning("hm", ReasoningField::Reasoning, 1));
        let d = delta(r#"{"delta":{"reasoning_content":"hm","content":null}}"#).unwrap();
        assert_eq!(
            d,
            Delta::reasoning("hm", ReasoningField::ReasoningContent, 1)
        );
        let d = delta(r#"{"delta":{"reasoning":"hm","reasoning_content":"hm"}}"#).unwrap();
        assert_eq!(d.reasoning_field, ReasoningField::Both);
        // SGLang without a reasoning parser: `reasoning_content: ""`.
        let d = delta(r#"{"delta":{"content":"Hi","reasoning_content":""}}"#).unwrap();
        assert_eq!(d, Delta::text("Hi", 1));
    }

    #[test]
    fn tool_call_fragments_are_typed() {
        let first = delta(
            r#"{"delta":{"tool_calls":[{"id":"chatcmpl-tool-1","type":"function","index":0,"function":{"name":"get_weather"}}]}}"#,
        )
        .unwrap();
        assert_eq!(
            first,
            Delta::tool_call(
                ToolCallDelta {
                    index: 0,
                    id: Some("chatcmpl-tool-1".into()),
                    kind: Some("function".into()),
                    name: Some("get_weather".into()),
                    arguments: String::new(),
                },
                1
            )
        );
        let next =
            delta(r#"{"delta":{"tool_calls":[{"index":1,"function":{"arguments":"{\"ci"}}]}}"#)
                .unwrap();
        assert_eq!(next.tool_calls[0].index, 1);
        assert_eq!(next.tool_calls[0].arguments, "{\"ci");
        assert_eq!(next.tool_calls[0].name, None);
    }

    #[test]
    fn logprobs_of_both_shapes_count_tokens() {
        let chat = delta(
            r#"{"delta":{"content":"ab"},"logprobs":{"content":[{"token":"a","logprob":-0.5,"bytes":[97],"top_logprobs":[{"token":"a","logprob":-0.5,"bytes":[97]},{"token":"c","logprob":-1.25,"bytes":null}]},{"token":"b","logprob":-9999.0,"bytes":[98],"top_logprobs":[]}]}}"#,
        )
        .unwrap();
        assert_eq!(chat.tokens, 2);
        assert_eq!(chat.logprobs[0].top_logprobs[1].token, "c");
        assert_eq!(chat.logprobs[0].top_logprobs[1].bytes, None);
        assert_eq!(chat.logprobs[1].logprob, -9999.0);
        let legacy = delta(
            r#"{"text":" xy","logprobs":{"tokens":[" x","y"],"token_logprobs":[-0.1,null],"top_logprobs":[{"z":-0.05," x":-0.1},null],"text_offset":[0,2]}}"#,
        )
        .unwrap();
        assert_eq!(legacy.tokens, 2);
        assert_eq!(legacy.logprobs[0].token, " x");
        // The engine's order (most likely first), not sorted.
        let top: Vec<_> = legacy.logprobs[0]
            .top_logprobs
            .iter()
            .map(|t| t.token.as_str())
            .collect();
        assert_eq!(top, ["z", " x"]);
        assert_eq!(legacy.logprobs[1].logprob, 0.0);
        assert!(legacy.logprobs[1].top_logprobs.is_empty());
    }

    #[test]
    fn logprobs_keep_every_digit() {
        // serde_json's fast float parser is off by one ulp here without
        // `float_roundtrip` (seen against a real vLLM).
        let d = delta(
            r#"{"delta":{"content":"x"},"logprobs":{"content":[{"token":"x","logprob":-9.777124404907227,"top_logprobs":[]}]}}"#,
        )
        .unwrap();
        assert_eq!(d.logprobs[0].logprob.to_string(), "-9.777124404907227");
    }
}
