//! What a client asks for: [`GenerateRequest`] and its parts.

use std::fmt;
use std::sync::Arc;

use tokio::time::Instant;

use crate::Capabilities;

/// A request id: the gateway's own name of a request, sent to engines that
/// take one (vLLM's `x-request-id` header, SGLang's `rid`), used to abort a
/// request explicitly and to key its ledger hold.
///
/// The HTTP server gives every request a fresh [`RequestId::generate`]; a
/// client's `x-request-id` is never used as one (it is kept for correlation
/// only), so one client cannot name, and abort, another's generation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(Arc<str>);

/// The prefix of a generated id.
const GENERATED_PREFIX: &str = "gw-";

impl RequestId {
    /// Wraps an id.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        RequestId(id.into())
    }

    /// A new id, unique and unguessable: `gw-` and 128 bits from the
    /// operating system's random source as 32 lowercase hex digits. The
    /// bits are read from the OS 4 KiB at a time per thread (one system
    /// call per 256 ids), each handed out once.
    ///
    /// Should the OS source fail (it does not on a running Linux), the bits
    /// come from SipHash keyed with std's per-process random keys over a
    /// counter and the clock, still unique within the process; a warning is
    /// logged once.
    ///
    /// ```
    /// use gateway_core::RequestId;
    ///
    /// let a = RequestId::generate();
    /// let b = RequestId::generate();
    /// assert_ne!(a, b);
    /// assert!(a.as_str().starts_with("gw-"));
    /// assert_eq!(a.as_str().len(), 3 + 32);
    /// assert!(a.as_str()[3..].bytes().all(|c| c.is_ascii_hexdigit()));
    /// ```
    pub fn generate() -> Self {
        let bytes = random_bits().unwrap_or_else(fallback_bits);
        let mut id = String::with_capacity(GENERATED_PREFIX.len() + 32);
        id.push_str(GENERATED_PREFIX);
        for b in bytes {
            id.push(hex_digit(b >> 4));
            id.push(hex_digit(b & 0x0f));
        }
        RequestId(id.into())
    }

    /// Whether the id has the shape of a [`RequestId::generate`]d one.
    pub fn is_generated(&self) -> bool {
        self.0.strip_prefix(GENERATED_PREFIX).is_some_and(|hex| {
            hex.len() == 32 && hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        })
    }
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for RequestId {
    fn from(s: &str) -> Self {
        RequestId::new(s)
    }
}

impl From<String> for RequestId {
    fn from(s: String) -> Self {
        RequestId::new(s)
    }
}

/// The tenant a request is charged to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(Arc<str>);

impl TenantId {
    /// Wraps an id.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        TenantId(id.into())
    }
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for TenantId {
    fn from(s: &str) -> Self {
        TenantId::new(s)
    }
}

/// The author of a chat message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Role {
    /// Instructions from the application.
    System,
    /// The end user.
    #[default]
    User,
    /// The model.
    Assistant,
    /// A tool's result.
    Tool,
}

impl Role {
    /// The OpenAI name of the role.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// One chat message.
///
/// `content` is the message's text: a string content as sent, or the text
/// parts of a content array joined with `\n` (how vLLM renders an array
/// for a chat template that takes strings). When the client sent an array,
/// `parts` keeps every part in order, media included, and engines get the
/// array.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChatMessage {
    /// Who wrote it.
    pub role: Role,
    /// Its text.
    pub content: String,
    /// The content array as sent; empty when the content was a string (or
    /// absent).
    pub parts: Vec<ContentPart>,
    /// The tool calls of an assistant message.
    pub tool_calls: Vec<ToolCall>,
    /// The call a `tool` message answers.
    pub tool_call_id: Option<String>,
    /// The author's name (`name`), when given.
    pub name: Option<String>,
}

impl ChatMessage {
    /// A message from `role`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        ChatMessage {
            role,
            content: content.into(),
            ..ChatMessage::default()
        }
    }
    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        ChatMessage::new(Role::User, content)
    }
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        ChatMessage::new(Role::System, content)
    }
    /// How many media parts of `kind` the content holds.
    pub fn media_count(&self, kind: MediaKind) -> usize {
        self.parts
            .iter()
            .filter(|p| matches!(p, ContentPart::Media(m) if m.kind == kind))
            .count()
    }
    /// The UTF-8 bytes of what a chat template writes of the message
    /// as text: its text, tool calls, tool call id and name (media parts
    /// are counted apart).
    pub fn text_bytes(&self) -> usize {
        let calls: usize = self
            .tool_calls
            .iter()
            .map(|c| c.id.len() + c.name.len() + c.arguments.len())
            .sum();
        self.content.len()
            + calls
            + self.tool_call_id.as_ref().map_or(0, String::len)
            + self.name.as_ref().map_or(0, String::len)
    }

    /// The message's size in UTF-8 bytes: [`text_bytes`](Self::text_bytes)
    /// and the media parts' JSON, for size limits.
    pub fn byte_len(&self) -> usize {
        let media: usize = self
            .parts
            .iter()
            .map(|p| match p {
                ContentPart::Text(_) => 0,
                ContentPart::Media(m) => m.json.len(),
            })
            .sum();
        self.text_bytes() + media
    }
}

/// One part of a chat message's content array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentPart {
    /// `{"type":"text","text":...}`.
    Text(String),
    /// An image, audio clip or video.
    Media(MediaPart),
}

/// A media content part, kept as the client's JSON so engines get every
/// field of it (`detail`, `format`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaPart {
    /// What it is.
    pub kind: MediaKind,
    /// The part's JSON object, as the client wrote it.
    pub json: Arc<str>,
}

/// The kind of a media content part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKind {
    /// `image_url`.
    Image,
    /// `input_audio` (or vLLM's `audio_url`).
    Audio,
    /// `video_url`.
    Video,
}

impl MediaKind {
    /// The kind of a part's `type`, `None` for text and unknown types.
    pub fn from_part_type(kind: &str) -> Option<Self> {
        match kind {
            "image_url" => Some(MediaKind::Image),
            "input_audio" | "audio_url" => Some(MediaKind::Audio),
            "video_url" => Some(MediaKind::Video),
            _ => None,
        }
    }

    /// A stable name for messages and labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            MediaKind::Image => "image",
            MediaKind::Audio => "audio",
            MediaKind::Video => "video",
        }
    }
}

/// A tool call an assistant message made (OpenAI's
/// `{"id","type":"function","function":{"name","arguments"}}`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolCall {
    /// The call's id, which the `tool` message answering it names.
    pub id: String,
    /// The function's name.
    pub name: String,
    /// The arguments, as the JSON text the model wrote.
    pub arguments: String,
}

/// The prompt, in the form the client sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// Chat messages, rendered by the model's chat template at the engine.
    Chat(Vec<ChatMessage>),
    /// Plain text (legacy completions).
    Text(String),
    /// Token ids, already tokenized by the client.
    Tokens(Vec<u32>),
}

impl Prompt {
    /// The prompt's size in UTF-8 bytes (4 per token id), for bounds.
    pub fn byte_len(&self) -> usize {
        match self {
            Prompt::Chat(messages) => messages.iter().map(ChatMessage::byte_len).sum(),
            Prompt::Text(text) => text.len(),
            Prompt::Tokens(ids) => ids.len().saturating_mul(4),
        }
    }
}

/// Sampling parameters, passed through to the engine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SamplingParams {
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Nucleus sampling mass.
    pub top_p: Option<f32>,
    /// Seed for reproducible sampling.
    pub seed: Option<u64>,
    /// Stop sequences.
    pub stop: Vec<String>,
}

/// How urgent a request is; interactive work goes ahead of batch work
/// under contention.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LatencyClass {
    /// A person is waiting for the first token.
    #[default]
    Interactive,
    /// Throughput matters, latency does not.
    Batch,
}

impl LatencyClass {
    /// A stable name for labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            LatencyClass::Interactive => "interactive",
            LatencyClass::Batch => "batch",
        }
    }
}

/// A generation request as the gateway sees it, before routing.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    /// Unique id of the request.
    pub id: RequestId,
    /// The public model name the client asked for.
    pub model: String,
    /// The prompt.
    pub prompt: Prompt,
    /// Sampling parameters.
    pub sampling: SamplingParams,
    /// Most completion tokens the client wants (`max_tokens`).
    pub max_tokens: u32,
    /// Who pays.
    pub tenant: TenantId,
    /// Interactive or batch.
    pub latency_class: LatencyClass,
    /// When the request must be done, if bounded.
    pub deadline: Option<Instant>,
    /// Request fields the gateway does not interpret, as the text of a JSON
    /// object, passed through to engines that accept extra fields.
    pub extra: Option<Arc<str>>,
    /// The chat request's `tools` (a JSON array of tool definitions, as the
    /// client wrote it): sent to the engine, and rendered by the chat
    /// template when the prompt is counted, as the engine does.
    pub tools: Option<Arc<str>>,
    /// What the request asks for beyond plain text (tools, reasoning,
    /// structured output, images, logprobs): only backends whose
    /// capabilities hold all of it are tried. The OpenAI server computes it
    /// from the request (`gateway_adapters::openai::needs`); empty by
    /// default.
    pub needs: Capabilities,
}

impl GenerateRequest {
    /// A request with defaults: a generated id, tenant `default`,
    /// interactive, no deadline, no sampling overrides.
    pub fn new(model: impl Into<String>, prompt: Prompt, max_tokens: u32) -> Self {
        GenerateRequest {
            id: RequestId::generate(),
            model: model.into(),
            prompt,
            sampling: SamplingParams::default(),
            max_tokens,
            tenant: TenantId::new("default"),
            latency_class: LatencyClass::Interactive,
            deadline: None,
            extra: None,
            tools: None,
            needs: Capabilities::NONE,
        }
    }

    /// Sets what the request needs beyond plain text.
    #[must_use]
    pub fn with_needs(mut self, needs: Capabilities) -> Self {
        self.needs = needs;
        self
    }

    /// Sets the id.
    #[must_use]
    pub fn with_id(mut self, id: impl Into<RequestId>) -> Self {
        self.id = id.into();
        self
    }

    /// Sets the tenant.
    #[must_use]
    pub fn with_tenant(mut self, tenant: impl Into<TenantId>) -> Self {
        self.tenant = tenant.into();
        self
    }

    /// Sets the deadline.
    #[must_use]
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Sets the latency class.
    #[must_use]
    pub fn with_latency_class(mut self, class: LatencyClass) -> Self {
        self.latency_class = class;
        self
    }
}

fn hex_digit(nibble: u8) -> char {
    char::from(b"0123456789abcdef"[usize::from(nibble & 0x0f)])
}

/// 128 bits when the OS source failed: SipHash under std's random
/// per-process keys, over a process-wide counter and the clock.
/// 16 bytes from the OS random source, read ahead 4 KiB at a time per
/// thread; `None` when the source fails.
fn random_bits() -> Option<[u8; 16]> {
    use std::cell::RefCell;
    const AHEAD: usize = 4096;
    thread_local! {
        // The bytes read ahead and how many of them are used.
        static POOL: RefCell<(Box<[u8; AHEAD]>, usize)> =
            RefCell::new((Box::new([0; AHEAD]), AHEAD));
    }
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let (bytes, used) = &mut *pool;
        if *used == AHEAD {
            getrandom::fill(&mut bytes[..]).ok()?;
            *used = 0;
        }
        let mut out = [0u8; 16];
        out.copy_from_slice(&bytes[*used..*used + 16]);
        // Handed out once: zeroed behind.
        bytes[*used..*used + 16].fill(0);
        *used += 16;
        Some(out)
    })
}

fn fallback_bits() -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!("the OS random source failed; request ids fall back to keyed SipHash");
    }
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut out = [0u8; 16];
    for (half, chunk) in out.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(n);
        h.write_u128(nanos);
        h.write_usize(half);
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_unique() {
        let a = GenerateRequest::new("m", Prompt::Text("hi".into()), 4);
        let b = GenerateRequest::new("m", Prompt::Text("hi".into()), 4);
        assert_ne!(a.id, b.id);
        assert!(a.id.is_generated(), "{}", a.id);
    }

    /// 100,000 ids: all distinct, all well-formed, and no two consecutive
    /// ones a small step apart (a counter, or a counter under a fixed
    /// permutation's low bits, would be).
    #[test]
    fn generated_ids_are_unique_and_not_sequential() {
        let n = 100_000;
        let ids: Vec<RequestId> = (0..n).map(|_| RequestId::generate()).collect();
        assert!(ids.iter().all(RequestId::is_generated));
        let distinct: std::collections::HashSet<&str> = ids.iter().map(RequestId::as_str).collect();
        assert_eq!(distinct.len(), n);
        let value = |id: &RequestId| u128::from_str_radix(&id.as_str()[3..], 16).unwrap_or(0);
        let close = ids
            .windows(2)
            .filter(|w| value(&w[0]).abs_diff(value(&w[1])) < 1 << 64)
            .count();
        assert_eq!(close, 0);
        // Every hex position takes many values: the bits are spread, not
        // a fixed prefix with a changing tail.
        for pos in 3..35 {
            let seen: std::collections::HashSet<u8> = ids
                .iter()
                .take(1000)
                .map(|id| id.as_str().as_bytes()[pos])
                .collect();
            assert_eq!(seen.len(), 16, "position {pos}");
        }
    }

    #[test]
    fn fallback_bits_differ() {
        assert_ne!(fallback_bits(), fallback_bits());
    }

    #[test]
    fn is_generated_checks_the_shape() {
        assert!(!RequestId::new("gw-123").is_generated());
        assert!(!RequestId::new("my-id").is_generated());
        assert!(!RequestId::new(format!("gw-{}", "A".repeat(32))).is_generated());
        assert!(RequestId::new(format!("gw-{}", "a".repeat(32))).is_generated());
    }

    #[test]
    fn byte_len_counts_each_form() {
        assert_eq!(Prompt::Text("héllo".into()).byte_len(), 6);
        assert_eq!(Prompt::Tokens(vec![1, 2, 3]).byte_len(), 12);
        let chat = Prompt::Chat(vec![ChatMessage::system("ab"), ChatMessage::user("日本")]);
        assert_eq!(chat.byte_len(), 8);
    }
}
