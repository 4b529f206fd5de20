//! Parsing and validating client requests into the contract's types.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use gateway_core::http::StatusCode;
use gateway_core::{
    ChatMessage, ContentPart, GenerateRequest, MediaKind, MediaPart, Prompt, Role, SamplingParams,
    ToolCall,
};
use serde_json::Value;

use super::json::{self, RawEntry};
use super::pass_through::{BodyLimits, NVEXT_PROMPT_FIELDS, PROMPT_FIELDS, too_deep};

/// Most stop sequences a request may carry (as OpenAI).
pub const MAX_STOP_SEQUENCES: usize = 4;

/// What the gateway takes from a chat or completions request.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedRequest {
    /// The public model name.
    pub model: String,
    /// [`Prompt::Chat`] for chat; [`Prompt::Text`] or [`Prompt::Tokens`]
    /// for legacy completions.
    pub prompt: Prompt,
    /// Temperature, top_p, seed and stop sequences.
    pub sampling: SamplingParams,
    /// `max_tokens` (chat: `max_completion_tokens` wins when both are set).
    pub max_tokens: Option<u32>,
    /// Whether the answer is streamed as SSE.
    pub stream: bool,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
    /// Every top-level field the gateway does not interpret, as the text
    /// of a JSON object: keys and values exactly as the client wrote them,
    /// in its order. `None` when there are none.
    pub extra: Option<String>,
    /// Chat: the `tools` array, as the client wrote it (checked to be an
    /// array of tool definitions). Sent to the engine and counted in the
    /// prompt estimate.
    pub tools: Option<String>,
}

/// A parsed chat request.
pub type ChatParsed = ParsedRequest;
/// A parsed legacy completions request.
pub type CompletionParsed = ParsedRequest;

impl ParsedRequest {
    /// The contract's request: `max_tokens` or else `default_max_tokens`,
    /// a fresh id, the default tenant (set them with the builders), and
    /// its [`needs`](super::needs).
    pub fn into_generate_request(self, default_max_tokens: u32) -> GenerateRequest {
        let needs = super::needs(&self);
        let mut request = GenerateRequest::new(
            self.model,
            self.prompt,
            self.max_tokens.unwrap_or(default_max_tokens),
        );
        request.sampling = self.sampling;
        request.extra = self.extra.map(Arc::from);
        request.tools = self.tools.map(Arc::from);
        request.needs = needs;
        request
    }
}

/// A request the gateway refuses: `400` with code `invalid_request`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    /// What is wrong, safe to show to the client.
    pub message: String,
    /// The field at fault (`temperature`, `messages[1].role`, ...).
    pub param: Option<String>,
}

impl RequestError {
    /// The error code of every request error.
    pub const CODE: &'static str = gateway_core::ErrorCode::InvalidRequest.as_str();

    /// An error about `param`, or about the whole body with `None`.
    pub fn new(message: impl Into<String>, param: Option<&str>) -> Self {
        RequestError {
            message: message.into(),
            param: param.map(str::to_owned),
        }
    }

    fn at(param: impl Into<String>, message: impl Into<String>) -> Self {
        RequestError {
            message: message.into(),
            param: Some(param.into()),
        }
    }

    /// `400 Bad Request` (the `invalid_request` row of the error table).
    pub fn status(&self) -> StatusCode {
        gateway_core::ErrorCode::InvalidRequest.status()
    }

    /// The OpenAI error body for this error.
    pub fn to_body(&self) -> Bytes {
        super::code_error_body(
            gateway_core::ErrorCode::InvalidRequest,
            &self.message,
            self.param.as_deref(),
        )
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.param {
            Some(param) => write!(f, "{} (param {param})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for RequestError {}

/// Parses and validates a `POST /v1/chat/completions` body.
///
/// # Errors
/// A [`RequestError`] for malformed JSON, a field of the wrong type or a
/// value out of range (the message and `param` say which).
pub fn parse_chat(body: &[u8]) -> Result<ChatParsed, RequestError> {
    parse(body, Api::Chat, &BodyLimits::default())
}

/// [`parse_chat`] with the caps `limits` (the default caps in
/// [`parse_chat`]).
///
/// # Errors
/// As [`parse_chat`]; also a body nested deeper than
/// `limits.max_json_depth` (`param`: the top-level field holding it), an
/// extra field nested deeper than `limits.max_extra_depth` (`param`: the
/// field), extra fields larger than `limits.max_extra_bytes` together
/// (`param`: the largest of them), and a field of
/// [`PROMPT_FIELDS`](super::pass_through::PROMPT_FIELDS).
pub fn parse_chat_with(body: &[u8], limits: &BodyLimits) -> Result<ChatParsed, RequestError> {
    parse(body, Api::Chat, limits)
}

/// Parses and validates a `POST /v1/completions` body.
///
/// # Errors
/// As [`parse_chat`].
pub fn parse_completion(body: &[u8]) -> Result<CompletionParsed, RequestError> {
    parse(body, Api::Completion, &BodyLimits::default())
}

/// [`parse_completion`] with the caps `limits`.
///
/// # Errors
/// As [`parse_chat_with`].
pub fn parse_completion_with(
    body: &[u8],
    limits: &BodyLimits,
) -> Result<CompletionParsed, RequestError> {
    parse(body, Api::Completion, limits)
}

/// Adds the fields of `extra` (the text of a JSON object, as
/// [`ParsedRequest::extra`]) to the serialized JSON object `body`, for an
/// engine that accepts extra fields. Keys `body` already has are left
/// out, so the adapter's own fields win; the rest keep their bytes and
/// order.
///
/// # Errors
/// A [`RequestError`] (param `extra`) if `extra` is not a JSON object, or
/// `body` does not end in `}`; `body` is then unchanged.
pub fn merge_extra(body: &mut Vec<u8>, extra: &str) -> Result<(), RequestError> {
    let invalid = || RequestError::new("extra fields must be a JSON object", Some("extra"));
    if serde_json::from_str::<serde::de::IgnoredAny>(extra).is_err() {
        return Err(invalid());
    }
    let extra_entries = json::object_entries(extra).ok_or_else(invalid)?;
    let base = std::str::from_utf8(body).map_err(|_| invalid())?;
    let base_entries = json::object_entries(base).ok_or_else(invalid)?;
    let present: HashSet<Cow<'_, str>> = base_entries.iter().filter_map(|e| e.key_text()).collect();
    let mut tail = Vec::new();
    let mut first = base_entries.is_empty();
    for entry in &extra_entries {
        if entry.key_text().is_some_and(|k| present.contains(&k)) {
            continue;
        }
        if !first {
            tail.push(b',');
        }
        first = false;
        push_entry(&mut tail, entry);
    }
    let close = body.iter().rposition(|&b| b == b'}').ok_or_else(invalid)?;
    body.truncate(close);
    body.extend_from_slice(&tail);
    body.push(b'}');
    Ok(())
}

pub(crate) fn push_entry(out: &mut Vec<u8>, entry: &RawEntry<'_>) {
    out.extend_from_slice(entry.key.as_bytes());
    out.push(b':');
    out.extend_from_slice(entry.value.as_bytes());
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Chat,
    Completion,
}

/// The raw values of the fields the gateway interprets.
#[derive(Default)]
struct Known<'a> {
    model: Option<&'a str>,
    messages: Option<&'a str>,
    prompt: Option<&'a str>,
    temperature: Option<&'a str>,
    top_p: Option<&'a str>,
    seed: Option<&'a str>,
    stop: Option<&'a str>,
    max_tokens: Option<&'a str>,
    max_completion_tokens: Option<&'a str>,
    n: Option<&'a str>,
    best_of: Option<&'a str>,
    stream: Option<&'a str>,
    stream_options: Option<&'a str>,
    tools: Option<&'a str>,
}

impl<'a> Known<'a> {
    /// The slot for `key`, if the gateway interprets it on `api`.
    fn slot(&mut self, api: Api, key: &str) -> Option<&mut Option<&'a str>> {
        Some(match (api, key) {
            (_, "model") => &mut self.model,
            (Api::Chat, "messages") => &mut self.messages,
            (Api::Completion, "prompt") => &mut self.prompt,
            (_, "temperature") => &mut self.temperature,
            (_, "top_p") => &mut self.top_p,
            (_, "seed") => &mut self.seed,
            (_, "stop") => &mut self.stop,
            (_, "max_tokens") => &mut self.max_tokens,
            (Api::Chat, "max_completion_tokens") => &mut self.max_completion_tokens,
            (_, "n") => &mut self.n,
            (Api::Completion, "best_of") => &mut self.best_of,
            (_, "stream") => &mut self.stream,
            (_, "stream_options") => &mut self.stream_options,
            (Api::Chat, "tools") => &mut self.tools,
            _ => return None,
        })
    }
}

fn parse(body: &[u8], api: Api, limits: &BodyLimits) -> Result<ParsedRequest, RequestError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| RequestError::new("request body is not valid UTF-8", None))?;
    // Before serde_json, whose own recursion limit (128) gives a less
    // helpful error.
    if let Some(key) = too_deep(text, limits.max_json_depth) {
        let key = key.and_then(|k| {
            RawEntry { key: k, value: "" }
                .key_text()
                .map(Cow::into_owned)
        });
        return Err(RequestError::new(
            format!(
                "the request body nests deeper than {} levels",
                limits.max_json_depth
            ),
            key.as_deref().map(clip).as_deref(),
        ));
    }
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(text) {
        return Err(RequestError::new(format!("malformed JSON: {e}"), None));
    }
    let entries = json::object_entries(text)
        .ok_or_else(|| RequestError::new("request body must be a JSON object", None))?;

    let mut known = Known::default();
    let mut seen: HashSet<Cow<'_, str>> = HashSet::with_capacity(entries.len());
    let mut extra = Vec::new();
    let mut largest: Option<(&RawEntry<'_>, usize)> = None;
    for entry in &entries {
        let key = entry
            .key_text()
            .ok_or_else(|| RequestError::new("malformed JSON: invalid key", None))?;
        if seen.contains(&key) {
            return Err(RequestError::at(
                clip(&key),
                format!("duplicate field '{}'", clip(&key)),
            ));
        }
        match known.slot(api, &key) {
            Some(slot) => *slot = Some(entry.value),
            None => {
                check_extra(&key, entry.value, limits)?;
                extra.push(if extra.is_empty() { b'{' } else { b',' });
                push_entry(&mut extra, entry);
                let size = entry.key.len() + 1 + entry.value.len();
                if largest.is_none_or(|(_, s)| size > s) {
                    largest = Some((entry, size));
                }
            }
        }
        seen.insert(key);
    }
    // The braces around the pairs are not counted.
    if extra.len().saturating_sub(1) > limits.max_extra_bytes {
        let param = largest.and_then(|(e, _)| e.key_text().map(|k| clip(&k).into_owned()));
        return Err(RequestError::new(
            format!(
                "the extra fields take {} bytes, more than the limit of {}",
                extra.len().saturating_sub(1),
                limits.max_extra_bytes
            ),
            param.as_deref(),
        ));
    }
    let extra = if extra.is_empty() {
        None
    } else {
        extra.push(b'}');
        // Slices of valid UTF-8 split at ASCII delimiters stay valid.
        String::from_utf8(extra).ok()
    };

    let model = match value(known.model, "model")? {
        Some(Value::String(s)) if !s.is_empty() => s,
        Some(Value::String(_)) => return Err(RequestError::at("model", "model must not be empty")),
        Some(_) => return Err(RequestError::at("model", "model must be a string")),
        None => return Err(RequestError::at("model", "model is required")),
    };
    let prompt = match api {
        Api::Chat => chat_prompt(value(known.messages, "messages")?)?,
        Api::Completion => completion_prompt(value(known.prompt, "prompt")?)?,
    };
    let sampling = SamplingParams {
        temperature: number_in(
            known.temperature,
            "temperature",
            |t| (0.0..=2.0).contains(&t),
            "temperature must be between 0 and 2",
        )?,
        top_p: number_in(
            known.top_p,
            "top_p",
            |p| p > 0.0 && p <= 1.0,
            "top_p must be greater than 0 and at most 1",
        )?,
        seed: seed(known.seed)?,
        stop: stop(known.stop)?,
    };
    let max_tokens = count(known.max_tokens, "max_tokens")?;
    let max_completion_tokens = count(known.max_completion_tokens, "max_completion_tokens")?;
    match integer(known.n, "n")? {
        None | Some(1) => {}
        Some(_) => {
            return Err(RequestError::at(
                "n",
                "n must be 1: only one choice is supported",
            ));
        }
    }
    match integer(known.best_of, "best_of")? {
        None | Some(1) => {}
        Some(_) => return Err(RequestError::at("best_of", "best_of must be 1")),
    }
    let stream = match value(known.stream, "stream")? {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(_) => return Err(RequestError::at("stream", "stream must be a boolean")),
    };
    let include_usage = match value(known.stream_options, "stream_options")? {
        None | Some(Value::Null) => false,
        Some(Value::Object(options)) => {
            if !stream {
                return Err(RequestError::at(
                    "stream_options",
                    "stream_options is only allowed when stream is true",
                ));
            }
            match options.get("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(RequestError::at(
                        "stream_options.include_usage",
                        "stream_options.include_usage must be a boolean",
                    ));
                }
            }
        }
        Some(_) => {
            return Err(RequestError::at(
                "stream_options",
                "stream_options must be an object",
            ));
        }
    };
    let tools = tools(known.tools)?;
    Ok(ParsedRequest {
        model,
        prompt,
        sampling,
        max_tokens: max_completion_tokens.or(max_tokens),
        stream,
        include_usage,
        extra,
        tools,
    })
}

/// Refuses an extra field that changes the prompt or nests too deep.
fn check_extra(key: &str, value: &str, limits: &BodyLimits) -> Result<(), RequestError> {
    // `null` is the field's absence.
    if PROMPT_FIELDS.contains(&key) && value != "null" {
        return Err(RequestError::at(
            key,
            format!(
                "field '{key}' changes the prompt the engine counts, which the gateway cannot count beforehand; it is not accepted"
            ),
        ));
    }
    if too_deep(value, limits.max_extra_depth).is_some() {
        let key = clip(key);
        return Err(RequestError::at(
            key.as_ref(),
            format!(
                "field '{key}' nests deeper than {} levels",
                limits.max_extra_depth
            ),
        ));
    }
    if key == "nvext" {
        if let Ok(Value::Object(nvext)) = serde_json::from_str::<Value>(value) {
            if let Some(inner) = NVEXT_PROMPT_FIELDS.iter().find(|k| nvext.contains_key(**k)) {
                return Err(RequestError::at(
                    format!("nvext.{inner}"),
                    format!(
                        "field 'nvext.{inner}' changes the prompt the engine counts, which the gateway cannot count beforehand; it is not accepted"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The value of a known field, parsed; numbers too large for `f64` are
/// refused here.
fn value(raw: Option<&str>, param: &str) -> Result<Option<Value>, RequestError> {
    raw.map(|raw| {
        serde_json::from_str(raw).map_err(|e| {
            // Positions would be within the field, not the body: drop them.
            let reason = e.to_string();
            let reason = reason.split(" at line ").next().unwrap_or_default();
            RequestError::at(param, format!("invalid value for {param}: {reason}"))
        })
    })
    .transpose()
}

/// An optional number accepted by `ok`, else the error `range`.
fn number_in(
    raw: Option<&str>,
    param: &str,
    ok: impl Fn(f64) -> bool,
    range: &str,
) -> Result<Option<f32>, RequestError> {
    match value(raw, param)? {
        None | Some(Value::Null) => Ok(None),
        // The contract keeps f32; the checked ranges are small.
        Some(Value::Number(n)) => match n.as_f64() {
            Some(x) if ok(x) => Ok(Some(x as f32)),
            _ => Err(RequestError::at(param, range)),
        },
        Some(_) => Err(RequestError::at(param, format!("{param} must be a number"))),
    }
}

/// An optional non-negative integer.
fn integer(raw: Option<&str>, param: &str) -> Result<Option<u64>, RequestError> {
    match value(raw, param)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(n) => Ok(Some(n)),
            None if n.is_i64() => Err(RequestError::at(
                param,
                format!("{param} must be a non-negative integer"),
            )),
            None => Err(RequestError::at(
                param,
                format!("{param} must be an integer"),
            )),
        },
        Some(_) => Err(RequestError::at(
            param,
            format!("{param} must be an integer"),
        )),
    }
}

/// An optional token count in `1..=u32::MAX`.
fn count(raw: Option<&str>, param: &str) -> Result<Option<u32>, RequestError> {
    match integer(raw, param)? {
        None => Ok(None),
        Some(0) => Err(RequestError::at(
            param,
            format!("{param} must be at least 1"),
        )),
        Some(n) => u32::try_from(n)
            .map(Some)
            .map_err(|_| RequestError::at(param, format!("{param} must be at most {}", u32::MAX))),
    }
}

fn seed(raw: Option<&str>) -> Result<Option<u64>, RequestError> {
    integer(raw, "seed")
}

fn stop(raw: Option<&str>) -> Result<Vec<String>, RequestError> {
    let list = match value(raw, "stop")? {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![Value::String(s)],
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(RequestError::at(
                "stop",
                "stop must be a string or an array of strings",
            ));
        }
    };
    if list.len() > MAX_STOP_SEQUENCES {
        return Err(RequestError::at(
            "stop",
            format!("stop may hold at most {MAX_STOP_SEQUENCES} sequences"),
        ));
    }
    let mut stops = Vec::with_capacity(list.len());
    for (i, item) in list.into_iter().enumerate() {
        match item {
            // An empty stop sequence would match everywhere; it is dropped.
            Value::String(s) if s.is_empty() => {}
            Value::String(s) => stops.push(s),
            _ => {
                return Err(RequestError::at(
                    format!("stop[{i}]"),
                    "stop sequences must be strings",
                ));
            }
        }
    }
    Ok(stops)
}

fn chat_prompt(messages: Option<Value>) -> Result<Prompt, RequestError> {
    let messages = match messages {
        Some(Value::Array(messages)) => messages,
        None | Some(Value::Null) => {
            return Err(RequestError::at("messages", "messages is required"));
        }
        Some(_) => return Err(RequestError::at("messages", "messages must be an array")),
    };
    if messages.is_empty() {
        return Err(RequestError::at("messages", "messages must not be empty"));
    }
    messages
        .into_iter()
        .enumerate()
        .map(|(i, message)| chat_message(i, message))
        .collect::<Result<Vec<_>, _>>()
        .map(Prompt::Chat)
}

fn chat_message(i: usize, message: Value) -> Result<ChatMessage, RequestError> {
    let Value::Object(mut message) = message else {
        return Err(RequestError::at(
            format!("messages[{i}]"),
            "each message must be an object",
        ));
    };
    let role = match message.get("role") {
        Some(Value::String(role)) => match role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            other => {
                return Err(RequestError::at(
                    format!("messages[{i}].role"),
                    format!(
                        "unknown role '{}': expected system, developer, user, assistant or tool",
                        clip(other)
                    ),
                ));
            }
        },
        None | Some(Value::Null) => {
            return Err(RequestError::at(
                format!("messages[{i}].role"),
                "role is required",
            ));
        }
        Some(_) => {
            return Err(RequestError::at(
                format!("messages[{i}].role"),
                "role must be a string",
            ));
        }
    };
    let param = || format!("messages[{i}].content");
    let mut parts = Vec::new();
    let content = match message.remove("content") {
        Some(Value::String(text)) => text,
        None | Some(Value::Null) if role == Role::Assistant => String::new(),
        None | Some(Value::Null) => return Err(RequestError::at(param(), "content is required")),
        Some(Value::Array(items)) => {
            let mut text = String::new();
            let mut texts = 0;
            for (j, part) in items.into_iter().enumerate() {
                let part = content_part(i, j, part)?;
                if let ContentPart::Text(part_text) = &part {
                    if texts > 0 {
                        text.push('\n');
                    }
                    texts += 1;
                    text.push_str(part_text);
                }
                parts.push(part);
            }
            text
        }
        Some(_) => {
            return Err(RequestError::at(
                param(),
                "content must be a string or an array of content parts",
            ));
        }
    };
    let tool_calls = match message.remove("tool_calls") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(calls)) if role == Role::Assistant => calls
            .into_iter()
            .enumerate()
            .map(|(k, call)| tool_call(i, k, call))
            .collect::<Result<_, _>>()?,
        Some(Value::Array(_)) => {
            return Err(RequestError::at(
                format!("messages[{i}].tool_calls"),
                "only assistant messages may have tool_calls",
            ));
        }
        Some(_) => {
            return Err(RequestError::at(
                format!("messages[{i}].tool_calls"),
                "tool_calls must be an array",
            ));
        }
    };
    let tool_call_id = optional_string(&mut message, i, "tool_call_id")?;
    if role == Role::Tool && tool_call_id.is_none() {
        return Err(RequestError::at(
            format!("messages[{i}].tool_call_id"),
            "a tool message needs the tool_call_id it answers",
        ));
    }
    let name = optional_string(&mut message, i, "name")?;
    Ok(ChatMessage {
        role,
        content,
        parts,
        tool_calls,
        tool_call_id,
        name,
    })
}

/// An optional string field of message `i`.
fn optional_string(
    message: &mut serde_json::Map<String, Value>,
    i: usize,
    key: &str,
) -> Result<Option<String>, RequestError> {
    match message.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(RequestError::at(
            format!("messages[{i}].{key}"),
            format!("{key} must be a string"),
        )),
    }
}

/// Part `j` of message `i`'s content array: text, or a media part of a
/// known type (kept as JSON for the engine).
fn content_part(i: usize, j: usize, part: Value) -> Result<ContentPart, RequestError> {
    let at = |field: &str| format!("messages[{i}].content[{j}]{field}");
    let Value::Object(part) = part else {
        return Err(RequestError::at(
            at(""),
            "each content part must be an object",
        ));
    };
    let kind = match part.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        _ => {
            return Err(RequestError::at(
                at(".type"),
                "content part type must be a string",
            ));
        }
    };
    if kind == "text" {
        return match part.get("text") {
            Some(Value::String(text)) => Ok(ContentPart::Text(text.clone())),
            _ => Err(RequestError::at(
                at(".text"),
                "text part must have a string text",
            )),
        };
    }
    let Some(media) = MediaKind::from_part_type(kind) else {
        return Err(RequestError::at(
            at(".type"),
            format!(
                "unsupported content part type '{}': expected text, image_url, input_audio, audio_url or video_url",
                clip(kind)
            ),
        ));
    };
    if !part.get(kind).is_some_and(Value::is_object) {
        return Err(RequestError::at(
            at(&format!(".{kind}")),
            format!("a part of type {kind} needs the object {kind}"),
        ));
    }
    let json = serde_json::to_string(&Value::Object(part))
        .map_err(|_| RequestError::at(at(""), "content part is not valid JSON"))?;
    Ok(ContentPart::Media(MediaPart {
        kind: media,
        json: Arc::from(json),
    }))
}

/// Tool call `k` of assistant message `i`:
/// `{"id","type":"function","function":{"name","arguments"}}`.
fn tool_call(i: usize, k: usize, call: Value) -> Result<ToolCall, RequestError> {
    let at = |field: &str| format!("messages[{i}].tool_calls[{k}]{field}");
    let Value::Object(mut call) = call else {
        return Err(RequestError::at(at(""), "each tool call must be an object"));
    };
    let id = match call.remove("id") {
        Some(Value::String(id)) => id,
        None | Some(Value::Null) => String::new(),
        Some(_) => return Err(RequestError::at(at(".id"), "id must be a string")),
    };
    match call.get("type") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) if t == "function" => {}
        Some(_) => {
            return Err(RequestError::at(
                at(".type"),
                "tool call type must be \"function\"",
            ));
        }
    }
    let Some(Value::Object(mut function)) = call.remove("function") else {
        return Err(RequestError::at(
            at(".function"),
            "a tool call needs a function object",
        ));
    };
    let name = match function.remove("name") {
        Some(Value::String(name)) if !name.is_empty() => name,
        _ => {
            return Err(RequestError::at(
                at(".function.name"),
                "a tool call needs a function name",
            ));
        }
    };
    let arguments = match function.remove("arguments") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(arguments)) => arguments,
        // Some clients send the arguments as an object.
        Some(other @ Value::Object(_)) => other.to_string(),
        Some(_) => {
            return Err(RequestError::at(
                at(".function.arguments"),
                "arguments must be a JSON string",
            ));
        }
    };
    Ok(ToolCall {
        id,
        name,
        arguments,
    })
}

/// The `tools` of a chat request, checked: an array of objects, each with
/// a `type`, and for `function` tools a `function` object with a `name`.
/// Kept as the client's JSON text.
fn tools(raw: Option<&str>) -> Result<Option<String>, RequestError> {
    let list = match value(raw, "tools")? {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(RequestError::at("tools", "tools must be an array")),
    };
    for (k, tool) in list.iter().enumerate() {
        let at = |field: &str| format!("tools[{k}]{field}");
        let Value::Object(tool) = tool else {
            return Err(RequestError::at(at(""), "each tool must be an object"));
        };
        match tool.get("type") {
            Some(Value::String(t)) if t == "function" => {}
            Some(Value::String(_)) => continue,
            _ => return Err(RequestError::at(at(".type"), "tool type must be a string")),
        }
        let name = tool
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str);
        if name.is_none_or(str::is_empty) {
            return Err(RequestError::at(
                at(".function.name"),
                "a function tool needs a function name",
            ));
        }
    }
    Ok(raw.map(str::to_owned))
}

fn completion_prompt(prompt: Option<Value>) -> Result<Prompt, RequestError> {
    let err = |message: &str| RequestError::at("prompt", message);
    let items = match prompt {
        Some(Value::String(text)) => return Ok(Prompt::Text(text)),
        Some(Value::Array(items)) => items,
        None | Some(Value::Null) => return Err(err("prompt is required")),
        Some(_) => {
            return Err(err(
                "prompt must be a string, an array of one string or an array of token ids",
            ));
        }
    };
    let mut items = items.into_iter();
    match (items.next(), items.len()) {
        (None, _) => Err(err("prompt must not be empty")),
        (Some(Value::String(text)), 0) => Ok(Prompt::Text(text)),
        (Some(Value::Array(ids)), 0) => token_ids(&ids).map(Prompt::Tokens),
        (Some(Value::String(_) | Value::Array(_)), _) => Err(err(
            "batched prompts are not supported: send one prompt per request",
        )),
        (Some(first), _) => {
            token_ids(&std::iter::once(first).chain(items).collect::<Vec<_>>()).map(Prompt::Tokens)
        }
    }
}

fn token_ids(ids: &[Value]) -> Result<Vec<u32>, RequestError> {
    if ids.is_empty() {
        return Err(RequestError::at("prompt", "prompt must not be empty"));
    }
    ids.iter()
        .map(|id| {
            id.as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| {
                    RequestError::at(
                        "prompt",
                        "token ids must be integers between 0 and 4294967295",
                    )
                })
        })
        .collect()
}

/// At most 64 characters of client text, for error messages.
pub(crate) fn clip(s: &str) -> Cow<'_, str> {
    match s.char_indices().nth(64) {
        Some((end, _)) => Cow::Owned(format!("{}...", s.get(..end).unwrap_or_default())),
        None => Cow::Borrowed(s),
    }
}
