//! What the vLLM simulator streams beyond text, in vLLM 0.32's shapes
//! (docs/real-engine.md, "Tool calls, reasoning, logprobs"):
//!
//! - reasoning: the first [`SimOptions::reasoning_tokens`] tokens of a chat
//!   answer as `{"reasoning": ...}` deltas (vLLM's reasoning parsers; never
//!   `reasoning_content` in 0.32);
//! - a tool call: for a chat request whose `tool_choice` names a function
//!   (finish `stop`, as vLLM), or every chat request when
//!   [`SimOptions::tool_call`] is set (an auto call, finish `tool_calls`):
//!   the first token's chunk names the call
//!   (`{"content":null,"tool_calls":[{"id","type","index","function":{"name"}}]}`),
//!   each next one carries a piece of the arguments;
//! - logprobs as the request asks: chat `logprobs: true` (+ `top_logprobs`)
//!   one `content[]` entry per chunk, completions `logprobs: N` the legacy
//!   shape with `text_offset` counting characters from 0.
//!
//! Values are made up but deterministic: token `i` has log-probability
//! `-(i + 1) / 8`; its alternatives are `alt1`, `alt2`, ... each 1 lower.
//!
//! [`SimOptions::reasoning_tokens`]: crate::vllm::SimOptions::reasoning_tokens
//! [`SimOptions::tool_call`]: crate::vllm::SimOptions::tool_call

use serde_json::Value;

use crate::http::js;

/// Most `top_logprobs` the simulator gives (vLLM's default limit).
const MAX_TOP: u64 = 20;

/// How one request's tokens are streamed.
#[derive(Debug, Clone, Default)]
pub(crate) struct Output {
    reasoning_tokens: u32,
    /// The function called, and the finish reason of a natural end.
    tool: Option<(String, &'static str)>,
    logprobs: Option<Logprobs>,
    /// Characters of text sent (legacy `text_offset`).
    text_chars: u64,
}

#[derive(Debug, Clone, Copy)]
enum Logprobs {
    Chat { top: u64 },
    Legacy { top: u64 },
}

impl Output {
    /// The output of a request with `body`; `reasoning_tokens` and the
    /// auto `tool_call` come from the simulator's options.
    pub(crate) fn new(
        body: &Value,
        chat: bool,
        reasoning_tokens: u32,
        tool_call: Option<&str>,
    ) -> Self {
        let named = body["tool_choice"]["function"]["name"].as_str();
        let tool = match (chat, named, tool_call) {
            (false, _, _) => None,
            (true, Some(name), _) => Some((name.to_owned(), "stop")),
            (true, None, Some(name)) => Some((name.to_owned(), "tool_calls")),
            (true, None, None) => None,
        };
        let logprobs = if chat {
            (body["logprobs"] == Value::Bool(true)).then(|| Logprobs::Chat {
                top: body["top_logprobs"].as_u64().unwrap_or(0).min(MAX_TOP),
            })
        } else {
            body["logprobs"].as_u64().map(|top| Logprobs::Legacy {
                top: top.min(MAX_TOP),
            })
        };
        Output {
            reasoning_tokens: if chat { reasoning_tokens } else { 0 },
            tool,
            logprobs,
            text_chars: 0,
        }
    }

    /// Whether anything beyond plain text is streamed.
    pub(crate) fn is_plain(&self) -> bool {
        self.reasoning_tokens == 0 && self.tool.is_none() && self.logprobs.is_none()
    }

    /// The finish reason of a natural end (`length` stays `length`).
    pub(crate) fn finish<'a>(&self, natural: &'a str) -> &'a str {
        match &self.tool {
            Some((_, finish)) if natural == "stop" => finish,
            _ => natural,
        }
    }

    /// The chat `delta` object of token `i` with `text`, for request number
    /// `arrival`.
    pub(crate) fn chat_delta(&self, i: u32, text: &str, arrival: u64) -> String {
        if i < self.reasoning_tokens {
            return format!(r#"{{"reasoning":{}}}"#, js(text));
        }
        match &self.tool {
            Some((name, _)) if i == self.reasoning_tokens => format!(
                r#"{{"content":null,"tool_calls":[{{"id":"chatcmpl-tool-{arrival:016x}","type":"function","index":0,"function":{{"name":{}}}}}]}}"#,
                js(name)
            ),
            Some(_) => format!(
                r#"{{"content":null,"tool_calls":[{{"index":0,"function":{{"arguments":{}}}}}]}}"#,
                js(text)
            ),
            None => format!(r#"{{"content":{}}}"#, js(text)),
        }
    }

    /// The `logprobs` value of token `i` with `text` (`null` when not
    /// asked for).
    pub(crate) fn logprobs(&mut self, i: u32, text: &str) -> String {
        let logprob = -(f64::from(i) + 1.0) / 8.0;
        let value = match self.logprobs {
            None => return "null".to_owned(),
            Some(Logprobs::Chat { top }) => {
                let entry = |token: &str, logprob: f64| serde_json::json!({"token": token, "logprob": logprob, "bytes": token.as_bytes()});
                let mut tops = vec![entry(text, logprob)];
                tops.extend((1..top).map(|k| entry(&format!("alt{k}"), logprob - k as f64)));
                tops.truncate(top as usize);
                let mut first = entry(text, logprob);
                first["top_logprobs"] = Value::Array(tops);
                serde_json::json!({"content": [first]})
            }
            Some(Logprobs::Legacy { top }) => {
                // Written by hand: a JSON map here keeps the engine's order
                // (the chosen token, then the most likely).
                let mut tops = format!("{}:{}", js(text), Value::from(logprob));
                for k in 1..=top {
                    tops.push_str(&format!(r#","alt{k}":{}"#, Value::from(logprob - k as f64)));
                }
                let offset = self.text_chars;
                self.text_chars += text.chars().count() as u64;
                return format!(
                    r#"{{"text_offset":[{offset}],"token_logprobs":[{}],"tokens":[{}],"top_logprobs":[{{{tops}}}]}}"#,
                    Value::from(logprob),
                    js(text)
                );
            }
        };
        value.to_string()
    }
}
