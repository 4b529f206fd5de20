//! The JSON of output beyond text, in OpenAI's shapes: a chat delta's
//! fields (`content`, `reasoning` / `reasoning_content`, `refusal`,
//! `tool_calls`), whole tool calls of a non-streamed message, chat
//! `logprobs.content[]`, and the legacy completions `logprobs`.

use gateway_core::{Delta, ReasoningField, TokenLogprob, ToolCallDelta};

use super::json::{Sink, f64_into, string_into, u64_into};

/// Writes the members of a chat `delta` object (no braces): each kind of
/// output the piece has, in the order `content`, reasoning, `refusal`,
/// `tool_calls`; `"content":""` when it has none of them (a piece with only
/// logprobs).
pub(crate) fn chat_delta_fields_into(out: &mut impl Sink, delta: &Delta) {
    let mut members = Members { out, any: false };
    if !delta.text.is_empty() {
        members.string(b"\"content\":", &delta.text);
    }
    members.reasoning(&delta.reasoning, delta.reasoning_field);
    if !delta.refusal.is_empty() {
        members.string(b"\"refusal\":", &delta.refusal);
    }
    if !delta.tool_calls.is_empty() {
        members.key(b"\"tool_calls\":[");
        for (i, call) in delta.tool_calls.iter().enumerate() {
            if i > 0 {
                members.out.put(b",");
            }
            tool_call_delta_into(members.out, call);
        }
        members.out.put(b"]");
    }
    if !members.any {
        members.out.put(b"\"content\":\"\"");
    }
}

/// Members of a JSON object being written, with the commas between them.
pub(crate) struct Members<'a, S: Sink> {
    pub(crate) out: &'a mut S,
    /// Whether a member was written.
    pub(crate) any: bool,
}

impl<S: Sink> Members<'_, S> {
    /// Starts a member: a comma if one came before, then `key` (which
    /// includes its quotes and colon).
    pub(crate) fn key(&mut self, key: &[u8]) {
        if self.any {
            self.out.put(b",");
        }
        self.any = true;
        self.out.put(key);
    }

    /// A member with a string value.
    pub(crate) fn string(&mut self, key: &[u8], value: &str) {
        self.key(key);
        string_into(self.out, value);
    }

    /// The reasoning members (none for empty text) under the names `field`
    /// says.
    pub(crate) fn reasoning(&mut self, text: &str, field: ReasoningField) {
        if text.is_empty() {
            return;
        }
        if field.writes_reasoning() {
            self.string(b"\"reasoning\":", text);
        }
        if field.writes_reasoning_content() {
            self.string(b"\"reasoning_content\":", text);
        }
    }
}

/// `{"index":N[,"id":..][,"type":..],"function":{["name":..,]"arguments":..}}`
fn tool_call_delta_into(out: &mut impl Sink, call: &ToolCallDelta) {
    out.put(b"{\"index\":");
    u64_into(out, u64::from(call.index));
    if let Some(id) = &call.id {
        out.put(b",\"id\":");
        string_into(out, id);
    }
    if let Some(kind) = &call.kind {
        out.put(b",\"type\":");
        string_into(out, kind);
    }
    out.put(b",\"function\":{");
    if let Some(name) = &call.name {
        out.put(b"\"name\":");
        string_into(out, name);
        out.put(b",");
    }
    out.put(b"\"arguments\":");
    string_into(out, &call.arguments);
    out.put(b"}}");
}

/// A whole tool call of a non-streamed message, gathered from its
/// fragments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ToolCallParts {
    pub(crate) index: u32,
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) arguments: String,
}

/// Adds `fragment` to the call with its index in `calls` (a new call when
/// none has it yet).
pub(crate) fn gather_tool_call(calls: &mut Vec<ToolCallParts>, fragment: &ToolCallDelta) {
    let at = match calls.iter().position(|c| c.index == fragment.index) {
        Some(at) => at,
        None => {
            calls.push(ToolCallParts {
                index: fragment.index,
                ..ToolCallParts::default()
            });
            calls.len() - 1
        }
    };
    if let Some(call) = calls.get_mut(at) {
        if let Some(id) = &fragment.id {
            call.id.clone_from(id);
        }
        if let Some(name) = &fragment.name {
            call.name.push_str(name);
        }
        call.arguments.push_str(&fragment.arguments);
    }
}

/// `"tool_calls":[{"id":..,"type":"function","function":{"name":..,"arguments":..}},...]`
/// (a call without an id from the engine gets `call_<index>`).
pub(crate) fn tool_calls_into(out: &mut impl Sink, calls: &[ToolCallParts]) {
    out.put(b"\"tool_calls\":[");
    for (i, call) in calls.iter().enumerate() {
        if i > 0 {
            out.put(b",");
        }
        out.put(b"{\"id\":");
        if call.id.is_empty() {
            out.put(b"\"call_");
            u64_into(out, u64::from(call.index));
            out.put(b"\"");
        } else {
            string_into(out, &call.id);
        }
        out.put(b",\"type\":\"function\",\"function\":{\"name\":");
        string_into(out, &call.name);
        out.put(b",\"arguments\":");
        string_into(out, &call.arguments);
        out.put(b"}}");
    }
    out.put(b"]");
}

/// Chat's `{"content":[{"token","logprob","bytes","top_logprobs":[...]}]}`.
pub(crate) fn chat_logprobs_into(out: &mut impl Sink, logprobs: &[TokenLogprob]) {
    out.put(b"{\"content\":[");
    for (i, entry) in logprobs.iter().enumerate() {
        if i > 0 {
            out.put(b",");
        }
        logprob_entry_into(out, &entry.token, entry.logprob, entry.bytes.as_deref());
        out.put(b",\"top_logprobs\":[");
        for (j, top) in entry.top_logprobs.iter().enumerate() {
            if j > 0 {
                out.put(b",");
            }
            logprob_entry_into(out, &top.token, top.logprob, top.bytes.as_deref());
            out.put(b"}");
        }
        out.put(b"]}");
    }
    out.put(b"]}");
}

/// `{"token":..,"logprob":..,"bytes":[..]` (open: the caller closes it);
/// without bytes from the engine, the token's UTF-8 bytes.
fn logprob_entry_into(out: &mut impl Sink, token: &str, logprob: f64, bytes: Option<&[u8]>) {
    out.put(b"{\"token\":");
    string_into(out, token);
    out.put(b",\"logprob\":");
    f64_into(out, logprob);
    out.put(b",\"bytes\":[");
    let bytes = bytes.unwrap_or(token.as_bytes());
    for (k, b) in bytes.iter().enumerate() {
        if k > 0 {
            out.put(b",");
        }
        u64_into(out, u64::from(*b));
    }
    out.put(b"]");
}

/// The legacy completions shape:
/// `{"text_offset":[..],"token_logprobs":[..],"tokens":[..],"top_logprobs":[{token: logprob}]}`.
/// Offsets count characters: the first is `offset`, each next one adds the
/// previous token's length (as vLLM does).
pub(crate) fn legacy_logprobs_into(out: &mut impl Sink, logprobs: &[TokenLogprob], offset: u64) {
    out.put(b"{\"text_offset\":[");
    let mut at = offset;
    for (i, entry) in logprobs.iter().enumerate() {
        if i > 0 {
            out.put(b",");
        }
        u64_into(out, at);
        at = at.saturating_add(entry.token.chars().count() as u64);
    }
    out.put(b"],\"token_logprobs\":[");
    for (i, entry) in logprobs.iter().enumerate() {
        if i > 0 {
            out.put(b",");
        }
        f64_into(out, entry.logprob);
    }
    out.put(b"],\"tokens\":[");
    for (i, entry) in logprobs.iter().enumerate() {
        if i > 0 {
            out.put(b",");
        }
        string_into(out, &entry.token);
    }
    out.put(b"],\"top_logprobs\":[");
    for (i, entry) in logprobs.iter().enumerate() {
        if i > 0 {
            out.put(b",");
        }
        out.put(b"{");
        for (j, top) in entry.top_logprobs.iter().enumerate() {
            if j > 0 {
                out.put(b",");
            }
            string_into(out, &top.token);
            out.put(b":");
            f64_into(out, top.logprob);
        }
        out.put(b"}");
    }
    out.put(b"]}");
}
