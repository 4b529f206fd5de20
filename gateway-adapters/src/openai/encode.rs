//! Responses to clients: the streamed chunk sequence ([`ChunkEncoder`])
//! and the non-streamed body ([`Assembler`]).
//!
//! The JSON is written by hand around precomputed prefixes, with the same
//! string escaping as `serde_json`; the tests check every shape against
//! the serde [`types`](super::types).

use std::fmt;

use bytes::{Bytes, BytesMut};
use gateway_core::{
    Delta, FailureKind, FinishReason, ReasoningField, TokenEvent, TokenLogprob, Usage,
};

use super::json::{Sink, escape_into, string_into, u64_into};
use super::output::{
    Members, ToolCallParts, chat_delta_fields_into, chat_logprobs_into, gather_tool_call,
    legacy_logprobs_into, tool_calls_into,
};
use super::sse::DONE_FRAME;

/// Which OpenAI API a response belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/completions` (legacy).
    Completion,
}

impl Endpoint {
    /// The prefix of response ids: `chatcmpl-` or `cmpl-`.
    pub const fn id_prefix(self) -> &'static str {
        match self {
            Endpoint::Chat => "chatcmpl-",
            Endpoint::Completion => "cmpl-",
        }
    }

    /// The `object` of a non-streamed response.
    pub const fn object(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat.completion",
            Endpoint::Completion => "text_completion",
        }
    }

    /// The `object` of a stream chunk.
    pub const fn chunk_object(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat.completion.chunk",
            Endpoint::Completion => "text_completion",
        }
    }
}

/// Writes the OpenAI usage object: `prompt_tokens`, `completion_tokens`,
/// `total_tokens`, `prompt_tokens_details.cached_tokens` (always), and
/// `completion_tokens_details` with `reasoning_tokens` when the engine
/// counted any and `{accepted,rejected}_prediction_tokens` when anything
/// was drafted.
pub(crate) fn usage_into(out: &mut impl Sink, usage: &Usage) {
    out.put(b"{\"prompt_tokens\":");
    u64_into(out, usage.prompt());
    out.put(b",\"completion_tokens\":");
    u64_into(out, usage.completion());
    out.put(b",\"total_tokens\":");
    u64_into(out, usage.total());
    out.put(b",\"prompt_tokens_details\":{\"cached_tokens\":");
    u64_into(out, usage.cached());
    out.put(b"}");
    if usage.drafted() > 0 || usage.reasoning() > 0 {
        out.put(b",\"completion_tokens_details\":{");
        if usage.reasoning() > 0 {
            out.put(b"\"reasoning_tokens\":");
            u64_into(out, usage.reasoning());
            if usage.drafted() > 0 {
                out.put(b",");
            }
        }
        if usage.drafted() > 0 {
            out.put(b"\"accepted_prediction_tokens\":");
            u64_into(out, usage.accepted());
            out.put(b",\"rejected_prediction_tokens\":");
            u64_into(out, usage.rejected());
        }
        out.put(b"}");
    }
    out.put(b"}");
}

/// `{"id":"<prefix><request id>","object":"<object>","created":N,"model":"<model>",`
fn head_into(out: &mut impl Sink, id: &str, object: &str, created: u64, model: &str) {
    out.put(b"{\"id\":");
    string_into(out, id);
    out.put(b",\"object\":\"");
    out.put(object.as_bytes());
    out.put(b"\",\"created\":");
    u64_into(out, created);
    out.put(b",\"model\":");
    string_into(out, model);
    out.put(b",");
}

const CHAT_ROLE_CHOICE: &[u8] = b"\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n";
const CHAT_DELTA_OPEN: &[u8] = b"\"choices\":[{\"index\":0,\"delta\":{\"content\":\"";
const CHAT_DELTA_CLOSE: &[u8] = b"\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n";
const TEXT_DELTA_OPEN: &[u8] = b"\"choices\":[{\"text\":\"";
const TEXT_DELTA_CLOSE: &[u8] = b"\",\"index\":0,\"logprobs\":null,\"finish_reason\":null}]}\n\n";

/// Bytes a frame needs beyond its text, as a first reservation.
const FRAME_SLACK: usize = 64;
/// Capacity of the encoder's reusable buffer; frames are split off it.
const BLOCK: usize = 4096;

/// Encodes one streamed response as SSE frames, built once per request.
///
/// The sequence is OpenAI's (and vLLM's):
/// 1. chat only: a chunk with `delta: {"role":"assistant","content":""}`;
/// 2. one chunk per non-empty [`Delta`](gateway_core::Delta) with
///    `delta.content` (chat) or `text` (completions);
/// 3. a chunk with an empty delta (or text) and `finish_reason`;
/// 4. with `include_usage`: a chunk with `choices: []` and `usage`;
/// 5. `data: [DONE]`.
///
/// The role chunk is held back until the first delta (or the end), so
/// nothing reaches the client before the first token and a request that
/// fails before it can still be retried or answered with an HTTP error
/// ([`has_output`](Self::has_output) says whether anything was sent).
/// A failure after that is one [`error`](Self::error) frame and no
/// `[DONE]`.
///
/// Frames are written into one reusable buffer and split off as
/// [`Bytes`]: once the frames handed out are dropped, the buffer's memory
/// is used again, so the per-token path does not allocate.
///
/// ```
/// use gateway_adapters::openai::{ChunkEncoder, Endpoint};
/// use gateway_core::{Delta, FinishReason, Started, TokenEvent, Usage};
///
/// let mut enc = ChunkEncoder::new(Endpoint::Chat, "r1", 1700000000, "m", true);
/// assert_eq!(enc.encode(&TokenEvent::Started(Started::default())), None);
/// let first = enc.encode(&TokenEvent::Delta(Delta::text("Hi", 1))).unwrap();
/// assert!(first.starts_with(b"data: {\"id\":\"chatcmpl-r1\""));
/// assert_eq!(enc.encode(&TokenEvent::Usage(Usage::new(5, 1))), None);
/// let end = enc.encode(&TokenEvent::Finished(FinishReason::Stop)).unwrap();
/// assert!(end.ends_with(b"data: [DONE]\n\n"));
/// ```
#[derive(Debug)]
pub struct ChunkEncoder {
    endpoint: Endpoint,
    include_usage: bool,
    id: Box<str>,
    /// `data: {"id":...,"model":...,`
    head: Box<[u8]>,
    /// `head` and the opening of a content delta, up to the text.
    delta_open: Box<[u8]>,
    buf: BytesMut,
    role_sent: bool,
    output: bool,
    ended: bool,
    usage: Option<Usage>,
    /// Completions: characters of text sent, the first `text_offset` of the
    /// next piece's logprobs.
    text_chars: u64,
}

impl ChunkEncoder {
    /// An encoder for the response to `request_id` (the id becomes
    /// `chatcmpl-<request_id>` or `cmpl-<request_id>`), created at
    /// `created` unix seconds (see [`unix_now`](super::unix_now)), naming
    /// `model` (the model the client asked for).
    pub fn new(
        endpoint: Endpoint,
        request_id: &str,
        created: u64,
        model: &str,
        include_usage: bool,
    ) -> Self {
        let id: Box<str> = format!("{}{request_id}", endpoint.id_prefix()).into();
        let mut head = b"data: ".to_vec();
        head_into(&mut head, &id, endpoint.chunk_object(), created, model);
        let mut delta_open = head.clone();
        delta_open.extend_from_slice(match endpoint {
            Endpoint::Chat => CHAT_DELTA_OPEN,
            Endpoint::Completion => TEXT_DELTA_OPEN,
        });
        ChunkEncoder {
            endpoint,
            include_usage,
            id,
            head: head.into(),
            delta_open: delta_open.into(),
            buf: BytesMut::with_capacity(BLOCK),
            role_sent: false,
            output: false,
            ended: false,
            usage: None,
            text_chars: 0,
        }
    }

    /// The response id every chunk carries.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The API the chunks are for.
    pub fn endpoint(&self) -> Endpoint {
        self.endpoint
    }

    /// Whether any frame was handed out: after that, the HTTP status is
    /// sent and a failure can only be reported with [`error`](Self::error).
    pub fn has_output(&self) -> bool {
        self.output
    }

    /// The frames for one event of the backend's stream, or `None` when it
    /// gives none yet: `Started` and `Usage` (kept for the end) give none,
    /// an empty `Delta` gives none, `Finished` gives the closing frames.
    /// After `Finished` or [`error`](Self::error), nothing.
    pub fn encode(&mut self, event: &TokenEvent) -> Option<Bytes> {
        if self.ended {
            return None;
        }
        match event {
            TokenEvent::Started(_) => None,
            TokenEvent::Delta(delta) if !delta.has_output() => None,
            TokenEvent::Delta(delta) if delta.has_structured_output() => {
                Some(self.structured_delta(delta))
            }
            TokenEvent::Delta(delta) => Some(self.delta(&delta.text)),
            TokenEvent::Usage(usage) => {
                self.set_usage(*usage);
                None
            }
            TokenEvent::Finished(reason) => Some(self.finish(*reason)),
        }
    }

    /// Sets the usage of the closing usage chunk (the gateway's settled
    /// counts, if they differ from the engine's `Usage` event).
    pub fn set_usage(&mut self, usage: Usage) {
        self.usage = Some(usage);
    }

    /// The frame of one piece of text (chat: preceded, the first time, by
    /// the role chunk).
    pub fn delta(&mut self, text: &str) -> Bytes {
        self.buf
            .reserve(self.delta_open.len() + text.len() + FRAME_SLACK);
        self.role_into_buf();
        self.buf.extend_from_slice(&self.delta_open);
        escape_into(&mut self.buf, text);
        self.buf.extend_from_slice(match self.endpoint {
            Endpoint::Chat => CHAT_DELTA_CLOSE,
            Endpoint::Completion => {
                self.text_chars += text.chars().count() as u64;
                TEXT_DELTA_CLOSE
            }
        });
        self.take()
    }

    /// The frame of a piece with more than text: chat writes each kind in
    /// its `delta` field and the logprobs in `choices[0].logprobs.content`;
    /// completions write the text and the legacy `logprobs` (reasoning and
    /// tool calls have no place there).
    pub fn structured_delta(&mut self, delta: &Delta) -> Bytes {
        self.buf
            .reserve(self.head.len() + delta.output_bytes() + 2 * FRAME_SLACK);
        self.role_into_buf();
        self.buf.extend_from_slice(&self.head);
        match self.endpoint {
            Endpoint::Chat => {
                self.buf.put(b"\"choices\":[{\"index\":0,\"delta\":{");
                chat_delta_fields_into(&mut self.buf, delta);
                self.buf.put(b"},\"logprobs\":");
                if delta.logprobs.is_empty() {
                    self.buf.put(b"null");
                } else {
                    chat_logprobs_into(&mut self.buf, &delta.logprobs);
                }
            }
            Endpoint::Completion => {
                self.buf.put(b"\"choices\":[{\"text\":");
                string_into(&mut self.buf, &delta.text);
                self.buf.put(b",\"index\":0,\"logprobs\":");
                if delta.logprobs.is_empty() {
                    self.buf.put(b"null");
                } else {
                    legacy_logprobs_into(&mut self.buf, &delta.logprobs, self.text_chars);
                }
                self.text_chars += delta.text.chars().count() as u64;
            }
        }
        self.buf.put(b",\"finish_reason\":null}]}\n\n");
        self.take()
    }

    /// The closing frames: the role chunk if no delta came, the chunk with
    /// `finish_reason`, the usage chunk (with `include_usage` and a usage
    /// set or seen), and `data: [DONE]`.
    pub fn finish(&mut self, reason: FinishReason) -> Bytes {
        self.ended = true;
        self.buf.reserve(3 * self.head.len() + 4 * FRAME_SLACK);
        self.role_into_buf();
        self.buf.extend_from_slice(&self.head);
        self.buf.extend_from_slice(match self.endpoint {
            Endpoint::Chat => {
                b"\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\""
            }
            Endpoint::Completion => {
                b"\"choices\":[{\"text\":\"\",\"index\":0,\"logprobs\":null,\"finish_reason\":\""
            }
        });
        self.buf.extend_from_slice(reason.as_str().as_bytes());
        self.buf.extend_from_slice(b"\"}]}\n\n");
        if let (true, Some(usage)) = (self.include_usage, self.usage) {
            self.buf.extend_from_slice(&self.head);
            self.buf.extend_from_slice(b"\"choices\":[],\"usage\":");
            usage_into(&mut self.buf, &usage);
            self.buf.extend_from_slice(b"}\n\n");
        }
        self.buf.extend_from_slice(DONE_FRAME);
        self.take()
    }

    /// The one frame that ends a stream after a failure:
    /// `data: {"error":{"message":..,"type":"upstream_error","code":"<kind>"}}`
    /// and no `[DONE]`.
    pub fn error(&mut self, kind: FailureKind, message: &str) -> Bytes {
        self.ended = true;
        self.buf.reserve(message.len() + 2 * FRAME_SLACK);
        super::error_body::stream_error_into(&mut self.buf, kind, message);
        self.take()
    }

    fn role_into_buf(&mut self) {
        if self.role_sent {
            return;
        }
        self.role_sent = true;
        if self.endpoint == Endpoint::Chat {
            self.buf.extend_from_slice(&self.head);
            self.buf.extend_from_slice(CHAT_ROLE_CHOICE);
        }
    }

    fn take(&mut self) -> Bytes {
        self.output = true;
        self.buf.split().freeze()
    }
}

/// Why an [`Assembler`] cannot give a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AssembleError {
    /// The text grew beyond the assembler's limit.
    TextTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// No `Finished` event was pushed.
    NotFinished,
    /// No usage was pushed or set.
    MissingUsage,
}

impl fmt::Display for AssembleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AssembleError::TextTooLarge { limit } => {
                write!(f, "completion text exceeds {limit} bytes")
            }
            AssembleError::NotFinished => f.write_str("the stream did not finish"),
            AssembleError::MissingUsage => f.write_str("no usage was reported"),
        }
    }
}

impl std::error::Error for AssembleError {}

/// Collects a backend's events into the non-streamed response body
/// (`chat.completion` with `choices[0].message.content`, or
/// `text_completion` with `choices[0].text`; `finish_reason`; `usage`).
///
/// ```
/// use gateway_adapters::openai::{Assembler, Endpoint};
/// use gateway_core::{Delta, FinishReason, TokenEvent, Usage};
///
/// let mut asm = Assembler::new(Endpoint::Completion, "r1", 1, "m");
/// asm.push(&TokenEvent::Delta(Delta::text("Hi", 1))).unwrap();
/// asm.push(&TokenEvent::Usage(Usage::new(3, 1))).unwrap();
/// asm.push(&TokenEvent::Finished(FinishReason::Stop)).unwrap();
/// let body = asm.body().unwrap();
/// assert!(body.starts_with(b"{\"id\":\"cmpl-r1\",\"object\":\"text_completion\""));
/// ```
#[derive(Debug, Clone)]
pub struct Assembler {
    endpoint: Endpoint,
    id: Box<str>,
    created: u64,
    model: Box<str>,
    text: String,
    reasoning: String,
    reasoning_field: ReasoningField,
    refusal: String,
    tool_calls: Vec<ToolCallParts>,
    logprobs: Vec<TokenLogprob>,
    /// Bytes of output collected, against `max_text_bytes`.
    collected: usize,
    max_text_bytes: usize,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
}

impl Assembler {
    /// Default bound on the collected text.
    pub const DEFAULT_MAX_TEXT_BYTES: usize = 8 << 20;

    /// An assembler for the response to `request_id` (see
    /// [`ChunkEncoder::new`] for the arguments).
    pub fn new(endpoint: Endpoint, request_id: &str, created: u64, model: &str) -> Self {
        Assembler {
            endpoint,
            id: format!("{}{request_id}", endpoint.id_prefix()).into(),
            created,
            model: model.into(),
            text: String::new(),
            reasoning: String::new(),
            reasoning_field: ReasoningField::default(),
            refusal: String::new(),
            tool_calls: Vec::new(),
            logprobs: Vec::new(),
            collected: 0,
            max_text_bytes: Self::DEFAULT_MAX_TEXT_BYTES,
            finish: None,
            usage: None,
        }
    }

    /// Sets the bound on the collected text.
    #[must_use]
    pub fn with_max_text_bytes(mut self, limit: usize) -> Self {
        self.max_text_bytes = limit;
        self
    }

    /// Takes one event: text is appended, usage and the finish reason kept.
    ///
    /// # Errors
    /// [`AssembleError::TextTooLarge`] if the text would exceed the bound
    /// (the piece is not appended).
    pub fn push(&mut self, event: &TokenEvent) -> Result<(), AssembleError> {
        match event {
            TokenEvent::Started(_) => {}
            TokenEvent::Delta(delta) => {
                let collected = self.collected.saturating_add(delta.output_bytes());
                if collected > self.max_text_bytes {
                    return Err(AssembleError::TextTooLarge {
                        limit: self.max_text_bytes,
                    });
                }
                self.collected = collected;
                self.text.push_str(&delta.text);
                if !delta.reasoning.is_empty() {
                    self.reasoning.push_str(&delta.reasoning);
                    self.reasoning_field = delta.reasoning_field;
                }
                self.refusal.push_str(&delta.refusal);
                for fragment in &delta.tool_calls {
                    gather_tool_call(&mut self.tool_calls, fragment);
                }
                self.logprobs.extend(delta.logprobs.iter().cloned());
            }
            TokenEvent::Usage(usage) => self.usage = Some(*usage),
            TokenEvent::Finished(reason) => self.finish = Some(*reason),
        }
        Ok(())
    }

    /// Sets the usage reported in the body.
    pub fn set_usage(&mut self, usage: Usage) {
        self.usage = Some(usage);
    }

    /// The text so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The finish reason, once `Finished` was pushed.
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.finish
    }

    /// The response body.
    ///
    /// # Errors
    /// [`AssembleError::NotFinished`] before `Finished`,
    /// [`AssembleError::MissingUsage`] without a usage.
    pub fn body(&self) -> Result<Bytes, AssembleError> {
        let reason = self.finish.ok_or(AssembleError::NotFinished)?;
        let usage = self.usage.ok_or(AssembleError::MissingUsage)?;
        let mut out = BytesMut::with_capacity(self.collected + 384);
        head_into(
            &mut out,
            &self.id,
            self.endpoint.object(),
            self.created,
            &self.model,
        );
        match self.endpoint {
            Endpoint::Chat => {
                out.put(b"\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\"");
                let mut members = Members {
                    out: &mut out,
                    any: true,
                };
                members.key(b"\"content\":");
                if self.text.is_empty()
                    && (!self.tool_calls.is_empty() || !self.reasoning.is_empty())
                {
                    // OpenAI's shape for a message of tool calls (or only
                    // reasoning): no content at all.
                    members.out.put(b"null");
                } else {
                    string_into(members.out, &self.text);
                }
                members.reasoning(&self.reasoning, self.reasoning_field);
                if !self.refusal.is_empty() {
                    members.string(b"\"refusal\":", &self.refusal);
                }
                if !self.tool_calls.is_empty() {
                    members.out.put(b",");
                    tool_calls_into(members.out, &self.tool_calls);
                }
                out.put(b"},\"logprobs\":");
                if self.logprobs.is_empty() {
                    out.put(b"null");
                } else {
                    chat_logprobs_into(&mut out, &self.logprobs);
                }
                out.put(b",\"finish_reason\":\"");
            }
            Endpoint::Completion => {
                out.put(b"\"choices\":[{\"text\":\"");
                escape_into(&mut out, &self.text);
                out.put(b"\",\"index\":0,\"logprobs\":");
                if self.logprobs.is_empty() {
                    out.put(b"null");
                } else {
                    legacy_logprobs_into(&mut out, &self.logprobs, 0);
                }
                out.put(b",\"finish_reason\":\"");
            }
        }
        out.put(reason.as_str().as_bytes());
        out.put(b"\"}],\"usage\":");
        usage_into(&mut out, &usage);
        out.put(b"}");
        Ok(out.freeze())
    }
}
