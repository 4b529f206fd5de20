//! What a client asks for: [`GenerateRequest`] and its parts.

use std::fmt;
use std::sync::Arc;

use tokio::time::Instant;

/// A request id: echoed to clients as `x-request-id`, sent to engines that
/// take one (SGLang `rid`), used to abort a request explicitly.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(Arc<str>);

impl RequestId {
    /// Wraps an id.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        RequestId(id.into())
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Instructions from the application.
    System,
    /// The end user.
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// Who wrote it.
    pub role: Role,
    /// Its text.
    pub content: String,
}

impl ChatMessage {
    /// A message from `role`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        ChatMessage {
            role,
            content: content.into(),
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
            Prompt::Chat(messages) => messages.iter().map(|m| m.content.len()).sum(),
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
}

impl GenerateRequest {
    /// A request with defaults: a generated id, tenant `default`,
    /// interactive, no deadline, no sampling overrides.
    pub fn new(model: impl Into<String>, prompt: Prompt, max_tokens: u32) -> Self {
        GenerateRequest {
            id: RequestId::new(next_request_id()),
            model: model.into(),
            prompt,
            sampling: SamplingParams::default(),
            max_tokens,
            tenant: TenantId::new("default"),
            latency_class: LatencyClass::Interactive,
            deadline: None,
            extra: None,
        }
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

/// Process-unique ids: a random-ish per-process prefix and a counter.
fn next_request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("req-{:x}-{n}", process_tag())
}

fn process_tag() -> u32 {
    use std::sync::OnceLock;
    static TAG: OnceLock<u32> = OnceLock::new();
    *TAG.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        nanos ^ std::process::id().rotate_left(16)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_unique() {
        let a = GenerateRequest::new("m", Prompt::Text("hi".into()), 4);
        let b = GenerateRequest::new("m", Prompt::Text("hi".into()), 4);
        assert_ne!(a.id, b.id);
        assert!(a.id.as_str().starts_with("req-"));
    }

    #[test]
    fn byte_len_counts_each_form() {
        assert_eq!(Prompt::Text("héllo".into()).byte_len(), 6);
        assert_eq!(Prompt::Tokens(vec![1, 2, 3]).byte_len(), 12);
        let chat = Prompt::Chat(vec![ChatMessage::system("ab"), ChatMessage::user("日本")]);
        assert_eq!(chat.byte_len(), 8);
    }
}
