//! The pass-through policy: what of a request's extra fields (the
//! top-level fields the gateway does not interpret) may reach an engine.
//!
//! - **Caps** ([`BodyLimits`], checked by the request parser): the whole
//!   body's JSON nesting depth, each extra field's nesting depth and the
//!   serialized size of all extra fields together. A request over a cap is
//!   a 400 naming the field.
//! - **Prompt fields** ([`PROMPT_FIELDS`], refused by the parser whatever
//!   the engine): fields that change what the engine counts as prompt
//!   (a chat template override, documents, pre-tokenized input, ...). The
//!   gateway reserves budget for the prompt it counts; a field it cannot
//!   count would buy prefill nobody reserved for.
//! - **Forwarded fields** ([`EngineFields`], per engine, kept as const data
//!   in each engine's module): OpenAI's documented fields
//!   ([`OPENAI_CHAT`], [`OPENAI_COMPLETIONS`]) plus the engine's documented
//!   extras. A model accepts a field when every engine serving it (and its
//!   fallbacks) forwards it ([`ModelFields`]); any other field is refused
//!   with a 400 naming it, or dropped, by [`UnknownFields`].

use std::collections::HashMap;

use super::encode::Endpoint;
use super::json::{self, RawEntry};
use super::request::{ParsedRequest, RequestError};

/// Default [`BodyLimits::max_extra_bytes`]: 64 KiB.
pub const DEFAULT_MAX_EXTRA_BYTES: usize = 64 * 1024;
/// Default [`BodyLimits::max_extra_depth`].
pub const DEFAULT_MAX_EXTRA_DEPTH: usize = 32;
/// Default [`BodyLimits::max_json_depth`].
pub const DEFAULT_MAX_JSON_DEPTH: usize = 64;
/// The highest [`BodyLimits::max_json_depth`]: `serde_json`'s own
/// recursion limit.
pub const MAX_JSON_DEPTH_LIMIT: usize = 128;

/// Size and depth caps on a request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// Most bytes of all extra fields together, serialized as the client
    /// wrote them (`"key":value` pairs and their separators).
    pub max_extra_bytes: usize,
    /// Deepest nesting of one extra field's value (a scalar is 0, `{}` and
    /// `[]` are 1, `{"a":[1]}` is 2).
    pub max_extra_depth: usize,
    /// Deepest nesting of the whole body (the top-level object is 1).
    pub max_json_depth: usize,
}

impl Default for BodyLimits {
    fn default() -> Self {
        BodyLimits {
            max_extra_bytes: DEFAULT_MAX_EXTRA_BYTES,
            max_extra_depth: DEFAULT_MAX_EXTRA_DEPTH,
            max_json_depth: DEFAULT_MAX_JSON_DEPTH,
        }
    }
}

/// What happens to an extra field the model's engines do not forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownFields {
    /// A 400 `invalid_request` naming the field (the default: a client
    /// learns at once that its field has no effect).
    #[default]
    Reject,
    /// Removed from the request; the rest is served.
    Drop,
}

impl UnknownFields {
    /// `reject` or `drop`, as in the config.
    pub const fn as_str(self) -> &'static str {
        match self {
            UnknownFields::Reject => "reject",
            UnknownFields::Drop => "drop",
        }
    }
}

/// OpenAI's documented chat fields that the gateway does not interpret
/// itself and that do not change the prompt: sent on to engines that take
/// OpenAI's fields.
pub const OPENAI_CHAT: &[&str] = &[
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "user",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "reasoning_effort",
    "metadata",
    "store",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
];

/// OpenAI's documented completions fields that the gateway does not
/// interpret and that do not change the prompt (`suffix` and `echo` do:
/// they are [`PROMPT_FIELDS`]).
pub const OPENAI_COMPLETIONS: &[&str] = &[
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "logprobs",
    "user",
];

/// Fields that change what the engine counts as prompt, refused on every
/// engine with a 400 naming the field: the estimate could not count them.
///
/// - `chat_template`: another template;
/// - `documents`: rendered into the prompt by the template;
/// - `add_generation_prompt`, `continue_final_message`,
///   `add_special_tokens`: change the prompt's markup and special tokens;
/// - `mm_processor_kwargs`, `media_io_kwargs`: change how many tokens a
///   media part becomes;
/// - `prompt_token_ids`, `prompt_embeds`, `input_ids`, `input_embeds`:
///   replace the prompt;
/// - `functions`: OpenAI's deprecated tool definitions, rendered into the
///   prompt (send `tools`, which are counted);
/// - `suffix`: appended to a completions prompt (fill-in-the-middle);
/// - `echo`: the prompt returned as output, which the gateway would meter
///   as completion;
/// - `session_params`: SGLang continues an earlier session's prompt.
pub const PROMPT_FIELDS: &[&str] = &[
    "chat_template",
    "documents",
    "add_generation_prompt",
    "continue_final_message",
    "add_special_tokens",
    "mm_processor_kwargs",
    "media_io_kwargs",
    "prompt_token_ids",
    "prompt_embeds",
    "input_ids",
    "input_embeds",
    "functions",
    "suffix",
    "echo",
    "session_params",
];

/// Keys of Dynamo's and NIM's `nvext` object that replace the prompt:
/// `token_data` (pre-tokenized input) and `use_raw_prompt` (the prompt
/// without the chat template). Refused as `nvext.<key>`.
pub const NVEXT_PROMPT_FIELDS: &[&str] = &["token_data", "use_raw_prompt"];

/// The extra fields one engine forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineFields {
    /// Whether OpenAI's documented fields ([`OPENAI_CHAT`],
    /// [`OPENAI_COMPLETIONS`]) are forwarded besides the lists below.
    pub openai: bool,
    /// The engine's own fields on chat.
    pub chat: &'static [&'static str],
    /// The engine's own fields on completions.
    pub completions: &'static [&'static str],
}

impl EngineFields {
    /// Whether `key` is forwarded on `endpoint`.
    pub fn forwards(&self, endpoint: Endpoint, key: &str) -> bool {
        let (openai, own) = match endpoint {
            Endpoint::Chat => (OPENAI_CHAT, self.chat),
            Endpoint::Completion => (OPENAI_COMPLETIONS, self.completions),
        };
        (self.openai && openai.contains(&key)) || own.contains(&key)
    }
}

/// The engines of one model: a field is accepted when all of them forward
/// it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelFields {
    engines: Vec<EngineFields>,
    unknown: Option<UnknownFields>,
}

impl ModelFields {
    /// The fields of the engines in `engines` (duplicates are harmless).
    pub fn new(engines: impl IntoIterator<Item = EngineFields>) -> Self {
        let mut list: Vec<EngineFields> = Vec::new();
        for engine in engines {
            if !list.contains(&engine) {
                list.push(engine);
            }
        }
        ModelFields {
            engines: list,
            unknown: None,
        }
    }

    /// This model's own [`UnknownFields`], over the policy's.
    #[must_use]
    pub fn with_unknown(mut self, unknown: Option<UnknownFields>) -> Self {
        self.unknown = unknown;
        self
    }

    /// Whether every engine forwards `key` on `endpoint` (a model without
    /// engines forwards nothing).
    pub fn forwards(&self, endpoint: Endpoint, key: &str) -> bool {
        !self.engines.is_empty() && self.engines.iter().all(|e| e.forwards(endpoint, key))
    }
}

/// The policy the server applies to every chat and completions request.
#[derive(Debug, Clone, Default)]
pub struct PassThrough {
    /// The caps, checked by the parser.
    pub limits: BodyLimits,
    /// What happens to a field the model's engines do not forward.
    pub unknown: UnknownFields,
    models: HashMap<String, ModelFields>,
}

impl PassThrough {
    /// A policy with no models yet: every extra field of a request for a
    /// model it does not know is passed on (the gateway then answers 404
    /// for the model).
    pub fn new(limits: BodyLimits, unknown: UnknownFields) -> Self {
        PassThrough {
            limits,
            unknown,
            models: HashMap::new(),
        }
    }

    /// Adds (or replaces) model `name`'s fields.
    #[must_use]
    pub fn with_model(mut self, name: impl Into<String>, fields: ModelFields) -> Self {
        self.models.insert(name.into(), fields);
        self
    }

    /// Applies the policy to `parsed.extra`: a field the model's engines
    /// do not forward is refused or dropped. Returns the dropped keys.
    ///
    /// # Errors
    /// A [`RequestError`] naming the first refused field (`param`).
    pub fn apply(
        &self,
        endpoint: Endpoint,
        parsed: &mut ParsedRequest,
    ) -> Result<Vec<String>, RequestError> {
        let (Some(fields), Some(extra)) = (self.models.get(&parsed.model), &parsed.extra) else {
            return Ok(Vec::new());
        };
        let invalid = || RequestError::new("extra fields must be a JSON object", None);
        let entries = json::object_entries(extra).ok_or_else(invalid)?;
        let mut kept: Vec<RawEntry<'_>> = Vec::with_capacity(entries.len());
        let mut dropped = Vec::new();
        for entry in entries {
            let key = entry.key_text().ok_or_else(invalid)?;
            if fields.forwards(endpoint, &key) {
                kept.push(entry);
                continue;
            }
            match fields.unknown.unwrap_or(self.unknown) {
                UnknownFields::Reject => {
                    let key = super::request::clip(&key);
                    return Err(RequestError::new(
                        format!(
                            "unknown field '{key}': the engines serving model {} do not take it",
                            super::request::clip(&parsed.model)
                        ),
                        Some(&key),
                    ));
                }
                UnknownFields::Drop => dropped.push(key.into_owned()),
            }
        }
        if dropped.is_empty() {
            return Ok(dropped);
        }
        let mut out = Vec::with_capacity(extra.len());
        for entry in &kept {
            out.push(if out.is_empty() { b'{' } else { b',' });
            super::request::push_entry(&mut out, entry);
        }
        parsed.extra = if out.is_empty() {
            None
        } else {
            out.push(b'}');
            String::from_utf8(out).ok()
        };
        Ok(dropped)
    }
}

/// The first place the JSON `text` nests deeper than `max`, if any: `Some`
/// with the top-level key (quoted, as written) whose value holds it, or
/// `Some(None)` when outside any key. Strings are skipped; the text need
/// not be valid JSON (an unterminated string ends the scan).
pub(crate) fn too_deep(text: &str, max: usize) -> Option<Option<&str>> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut key = None;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => {
                let end = json::skip_string(bytes, i)?;
                if depth == 1 && bytes.get(json::skip_ws(bytes, end)) == Some(&b':') {
                    key = text.get(i..end);
                }
                i = end;
                continue;
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return Some(key);
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_scan_names_the_top_level_key() {
        assert_eq!(too_deep(r#"{"a":[[1]]}"#, 3), None);
        assert_eq!(
            too_deep(r#"{"a":1,"b":{"c":[[1]]}}"#, 3),
            Some(Some("\"b\""))
        );
        assert_eq!(too_deep(r#"{"a":"[[[[","b":[]}"#, 2), None);
        assert_eq!(too_deep("[[[]]]", 2), Some(None));
        assert_eq!(too_deep(r#"{"k":"v","x":[{"y":"\"{{"}]}"#, 3), None);
    }

    #[test]
    fn engines_forward_openai_fields_and_their_own() {
        let vllm_like = EngineFields {
            openai: true,
            chat: &["top_k"],
            completions: &["top_k"],
        };
        let strict = EngineFields {
            openai: false,
            chat: &["top_k", "user"],
            completions: &[],
        };
        assert!(vllm_like.forwards(Endpoint::Chat, "tool_choice"));
        assert!(!vllm_like.forwards(Endpoint::Completion, "tool_choice"));
        assert!(vllm_like.forwards(Endpoint::Completion, "top_k"));
        assert!(!strict.forwards(Endpoint::Chat, "tool_choice"));
        let both = ModelFields::new([vllm_like, strict, strict]);
        assert!(both.forwards(Endpoint::Chat, "top_k"));
        assert!(both.forwards(Endpoint::Chat, "user"));
        assert!(!both.forwards(Endpoint::Chat, "logprobs"));
        assert!(!ModelFields::default().forwards(Endpoint::Chat, "user"));
    }
}
