//! Serde types of the OpenAI wire format, as clients and engines speak it.
//!
//! Decoding is lenient in the ways engines differ (ENGINES.md §1.1):
//! unknown keys are ignored, absent keys take their default, and `null`
//! is accepted wherever a value may be absent, also for fields that are
//! not `Option`s (they take their default). Encoding leaves out absent
//! optional request fields, so engines that refuse `null` are not
//! bothered.

use gateway_core::{ChatMessage, FinishReason, GenerateRequest, Prompt, Usage};
use serde::{Deserialize, Deserializer, Serialize};

/// Deserializes `null` as the default value.
fn nullable<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Stop sequences: a string, an array of strings, or `null`.
fn stop_list<'de, D>(deserializer: D) -> Result<Vec<String>, D::Error>
where
    D: Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stop {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<Stop>::deserialize(deserializer)? {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    })
}

/// `stream_options` of a streamed request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamOptions {
    /// Ask for a final chunk with `choices: []` and `usage`.
    #[serde(deserialize_with = "nullable")]
    pub include_usage: bool,
}

/// One content part of a chat message (`{"type":"text","text":...}`, or a
/// media part such as `{"type":"image_url","image_url":{...}}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContentPart {
    /// The part type (`text`, `image_url`, `input_audio`, `video_url`).
    #[serde(rename = "type", deserialize_with = "nullable")]
    pub kind: String,
    /// The text of a `text` part.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The other fields of the part (the media object).
    #[serde(flatten)]
    pub rest: serde_json::Map<String, serde_json::Value>,
}

/// The content of a chat message: a string or an array of parts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Content parts.
    Parts(Vec<ContentPart>),
}

/// The function of a [`RequestToolCall`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FunctionCall {
    /// The function's name.
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    /// Its arguments as JSON text.
    #[serde(deserialize_with = "nullable")]
    pub arguments: String,
}

/// A tool call of an assistant message in a request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RequestToolCall {
    /// The call's id.
    #[serde(deserialize_with = "nullable")]
    pub id: String,
    /// `function`.
    #[serde(rename = "type", deserialize_with = "nullable")]
    pub kind: String,
    /// The function called.
    #[serde(deserialize_with = "nullable")]
    pub function: FunctionCall,
}

/// One message of a chat request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RequestMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    #[serde(deserialize_with = "nullable")]
    pub role: String,
    /// The content; absent or `null` for an assistant message with tool calls.
    pub content: Option<MessageContent>,
    /// An assistant message's tool calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<RequestToolCall>>,
    /// The call a `tool` message answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// The author's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl RequestMessage {
    /// The wire form of a contract message: a content array when the
    /// client sent one (media parts as they came), `content: null` for an
    /// assistant message with tool calls and no text.
    pub fn from_message(m: &ChatMessage) -> Self {
        let content = if !m.parts.is_empty() {
            Some(MessageContent::Parts(
                m.parts.iter().map(ContentPart::from_part).collect(),
            ))
        } else if m.content.is_empty() && !m.tool_calls.is_empty() {
            None
        } else {
            Some(MessageContent::Text(m.content.clone()))
        };
        RequestMessage {
            role: m.role.as_str().to_owned(),
            content,
            tool_calls: (!m.tool_calls.is_empty()).then(|| {
                m.tool_calls
                    .iter()
                    .map(|c| RequestToolCall {
                        id: c.id.clone(),
                        kind: "function".to_owned(),
                        function: FunctionCall {
                            name: c.name.clone(),
                            arguments: c.arguments.clone(),
                        },
                    })
                    .collect()
            }),
            tool_call_id: m.tool_call_id.clone(),
            name: m.name.clone(),
        }
    }
}

impl ContentPart {
    /// The wire form of a contract content part.
    pub fn from_part(part: &gateway_core::ContentPart) -> Self {
        match part {
            gateway_core::ContentPart::Text(text) => ContentPart {
                kind: "text".to_owned(),
                text: Some(text.clone()),
                rest: serde_json::Map::new(),
            },
            gateway_core::ContentPart::Media(media) => {
                // The part was checked to be a JSON object with a type.
                serde_json::from_str(&media.json).unwrap_or_default()
            }
        }
    }
}

/// A `POST /v1/chat/completions` request body (the fields the gateway
/// knows; see [`merge_extra`](super::merge_extra) for the rest).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChatCompletionRequest {
    /// Model name.
    #[serde(deserialize_with = "nullable")]
    pub model: String,
    /// The conversation.
    #[serde(deserialize_with = "nullable")]
    pub messages: Vec<RequestMessage>,
    /// Most completion tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Newer name of `max_tokens`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    /// Sampling temperature.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Nucleus sampling mass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// Sampling seed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Stop sequences (a string or an array on the wire).
    #[serde(deserialize_with = "stop_list", skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// Number of choices.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// Stream the answer as SSE.
    #[serde(deserialize_with = "nullable")]
    pub stream: bool,
    /// Streaming options.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
}

impl ChatCompletionRequest {
    /// The upstream request for `request`, addressed to `model` (the
    /// engine's name of it); with `stream`, usage is asked for too.
    /// `None` if the prompt is not [`Prompt::Chat`].
    pub fn from_generate(request: &GenerateRequest, model: &str, stream: bool) -> Option<Self> {
        let Prompt::Chat(messages) = &request.prompt else {
            return None;
        };
        Some(ChatCompletionRequest {
            model: model.to_owned(),
            messages: messages.iter().map(RequestMessage::from_message).collect(),
            max_tokens: Some(request.max_tokens),
            max_completion_tokens: None,
            temperature: request.sampling.temperature,
            top_p: request.sampling.top_p,
            seed: request.sampling.seed,
            stop: request.sampling.stop.clone(),
            n: None,
            stream,
            stream_options: stream.then_some(StreamOptions {
                include_usage: true,
            }),
        })
    }
}

/// The `prompt` of a legacy completions request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PromptInput {
    /// One text prompt.
    Text(String),
    /// Several text prompts (the gateway accepts exactly one).
    Texts(Vec<String>),
    /// One prompt as token ids.
    Tokens(Vec<u32>),
    /// Several prompts as token ids (the gateway accepts exactly one).
    TokenBatches(Vec<Vec<u32>>),
}

impl Default for PromptInput {
    fn default() -> Self {
        PromptInput::Text(String::new())
    }
}

/// A `POST /v1/completions` request body (the fields the gateway knows).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CompletionRequest {
    /// Model name.
    #[serde(deserialize_with = "nullable")]
    pub model: String,
    /// The prompt.
    #[serde(deserialize_with = "nullable")]
    pub prompt: PromptInput,
    /// Most completion tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Nucleus sampling mass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// Sampling seed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Stop sequences (a string or an array on the wire).
    #[serde(deserialize_with = "stop_list", skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// Number of choices.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// Stream the answer as SSE.
    #[serde(deserialize_with = "nullable")]
    pub stream: bool,
    /// Streaming options.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
}

impl CompletionRequest {
    /// The upstream request for `request`, addressed to `model`; with
    /// `stream`, usage is asked for too. `None` if the prompt is
    /// [`Prompt::Chat`].
    pub fn from_generate(request: &GenerateRequest, model: &str, stream: bool) -> Option<Self> {
        let prompt = match &request.prompt {
            Prompt::Text(text) => PromptInput::Text(text.clone()),
            Prompt::Tokens(ids) => PromptInput::Tokens(ids.clone()),
            Prompt::Chat(_) => return None,
        };
        Some(CompletionRequest {
            model: model.to_owned(),
            prompt,
            max_tokens: Some(request.max_tokens),
            temperature: request.sampling.temperature,
            top_p: request.sampling.top_p,
            seed: request.sampling.seed,
            stop: request.sampling.stop.clone(),
            n: None,
            stream,
            stream_options: stream.then_some(StreamOptions {
                include_usage: true,
            }),
        })
    }
}

/// `usage.prompt_tokens_details`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PromptTokensDetails {
    /// Prompt tokens served from the prefix cache.
    #[serde(deserialize_with = "nullable")]
    pub cached_tokens: u64,
}

/// `usage.completion_tokens_details`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CompletionTokensDetails {
    /// Reasoning tokens, when the engine reports them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u64>,
    /// Accepted predicted (here: speculative draft) tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accepted_prediction_tokens: Option<u64>,
    /// Rejected predicted (here: speculative draft) tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected_prediction_tokens: Option<u64>,
}

/// The OpenAI usage object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CompletionUsage {
    /// Prompt tokens, cached ones included.
    #[serde(deserialize_with = "nullable")]
    pub prompt_tokens: u64,
    /// Completion tokens.
    #[serde(deserialize_with = "nullable")]
    pub completion_tokens: u64,
    /// `prompt_tokens + completion_tokens`.
    #[serde(deserialize_with = "nullable")]
    pub total_tokens: u64,
    /// Prompt details (cached tokens).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
    /// Completion details (speculative counts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_tokens_details: Option<CompletionTokensDetails>,
}

impl From<&Usage> for CompletionUsage {
    /// The gateway's mapping: cached tokens always present, reasoning only
    /// when the engine counted some, speculative counts only when something
    /// was drafted.
    fn from(usage: &Usage) -> Self {
        CompletionUsage {
            prompt_tokens: usage.prompt(),
            completion_tokens: usage.completion(),
            total_tokens: usage.total(),
            prompt_tokens_details: Some(PromptTokensDetails {
                cached_tokens: usage.cached(),
            }),
            completion_tokens_details: (usage.drafted() > 0 || usage.reasoning() > 0).then(|| {
                let drafted = usage.drafted() > 0;
                CompletionTokensDetails {
                    reasoning_tokens: (usage.reasoning() > 0).then_some(usage.reasoning()),
                    accepted_prediction_tokens: drafted.then_some(usage.accepted()),
                    rejected_prediction_tokens: drafted.then_some(usage.rejected()),
                }
            }),
        }
    }
}

impl CompletionUsage {
    /// The counts as a [`Usage`], forced valid ([`Usage::clamped`]):
    /// accepted and rejected prediction tokens are read back as
    /// speculative counts (what this gateway writes there).
    pub fn to_usage(&self) -> Usage {
        let cached = self.prompt_tokens_details.map_or(0, |d| d.cached_tokens);
        let (accepted, rejected) = self.completion_tokens_details.map_or((0, 0), |d| {
            (
                d.accepted_prediction_tokens.unwrap_or(0),
                d.rejected_prediction_tokens.unwrap_or(0),
            )
        });
        let reasoning = self
            .completion_tokens_details
            .and_then(|d| d.reasoning_tokens)
            .unwrap_or(0);
        Usage::clamped(
            self.prompt_tokens,
            cached,
            self.completion_tokens,
            accepted.saturating_add(rejected),
            accepted,
            0,
        )
        .with_reasoning(reasoning)
    }
}

/// The assistant message of a non-streamed chat choice.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ResponseMessage {
    /// `assistant`.
    pub role: Option<String>,
    /// The generated text (`null` with tool calls).
    pub content: Option<String>,
}

/// One choice of a `chat.completion`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChatChoice {
    /// Choice index.
    #[serde(deserialize_with = "nullable")]
    pub index: u32,
    /// The answer.
    #[serde(deserialize_with = "nullable")]
    pub message: ResponseMessage,
    /// Why generation stopped.
    pub finish_reason: Option<String>,
}

/// A non-streamed chat answer (`"object": "chat.completion"`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChatCompletion {
    /// `chatcmpl-...`.
    #[serde(deserialize_with = "nullable")]
    pub id: String,
    /// `chat.completion`.
    #[serde(deserialize_with = "nullable")]
    pub object: String,
    /// Unix seconds.
    #[serde(deserialize_with = "nullable")]
    pub created: u64,
    /// Model name.
    #[serde(deserialize_with = "nullable")]
    pub model: String,
    /// The choices.
    #[serde(deserialize_with = "nullable")]
    pub choices: Vec<ChatChoice>,
    /// Token counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<CompletionUsage>,
}

/// The `delta` of a streamed chat choice.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChunkDelta {
    /// `assistant`, on the first chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The next piece of text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// One choice of a `chat.completion.chunk`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChunkChoice {
    /// Choice index.
    #[serde(deserialize_with = "nullable")]
    pub index: u32,
    /// What is new.
    #[serde(deserialize_with = "nullable")]
    pub delta: ChunkDelta,
    /// Why generation stopped, on the last choice chunk.
    pub finish_reason: Option<String>,
}

/// A streamed chat chunk (`"object": "chat.completion.chunk"`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChatCompletionChunk {
    /// `chatcmpl-...` (some engines change it per chunk).
    #[serde(deserialize_with = "nullable")]
    pub id: String,
    /// `chat.completion.chunk`.
    #[serde(deserialize_with = "nullable")]
    pub object: String,
    /// Unix seconds.
    #[serde(deserialize_with = "nullable")]
    pub created: u64,
    /// Model name.
    #[serde(deserialize_with = "nullable")]
    pub model: String,
    /// The choices; empty on the usage chunk.
    #[serde(deserialize_with = "nullable")]
    pub choices: Vec<ChunkChoice>,
    /// Token counts (usage chunk, or every chunk with continuous usage).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<CompletionUsage>,
}

/// One choice of a legacy completion (streamed or not).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CompletionChoice {
    /// Choice index.
    #[serde(deserialize_with = "nullable")]
    pub index: u32,
    /// The text (all of it, or the next piece when streamed).
    #[serde(deserialize_with = "nullable")]
    pub text: String,
    /// Why generation stopped.
    pub finish_reason: Option<String>,
}

/// A legacy completion (`"object": "text_completion"`), also the shape
/// of its stream chunks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Completion {
    /// `cmpl-...`.
    #[serde(deserialize_with = "nullable")]
    pub id: String,
    /// `text_completion`.
    #[serde(deserialize_with = "nullable")]
    pub object: String,
    /// Unix seconds.
    #[serde(deserialize_with = "nullable")]
    pub created: u64,
    /// Model name.
    #[serde(deserialize_with = "nullable")]
    pub model: String,
    /// The choices; empty on the usage chunk.
    #[serde(deserialize_with = "nullable")]
    pub choices: Vec<CompletionChoice>,
    /// Token counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<CompletionUsage>,
}

/// A streamed legacy completion chunk: the same shape as [`Completion`].
pub type CompletionChunk = Completion;

/// One entry of `GET /v1/models`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelCard {
    /// The model name clients send.
    #[serde(deserialize_with = "nullable")]
    pub id: String,
    /// `model`.
    #[serde(deserialize_with = "nullable")]
    pub object: String,
    /// Unix seconds.
    #[serde(deserialize_with = "nullable")]
    pub created: u64,
    /// The owner.
    #[serde(deserialize_with = "nullable")]
    pub owned_by: String,
}

/// `GET /v1/models`: `{"object":"list","data":[...]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelList {
    /// `list`.
    #[serde(deserialize_with = "nullable")]
    pub object: String,
    /// The models.
    #[serde(deserialize_with = "nullable")]
    pub data: Vec<ModelCard>,
}

/// The `code` of an error: OpenAI sends a string, vLLM and SGLang the
/// HTTP status as a number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ErrorCode {
    /// A numeric code (usually the HTTP status).
    Number(i64),
    /// A string code such as `invalid_request`.
    Text(String),
}

/// The inside of an error body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ErrorDetail {
    /// A human-readable message.
    #[serde(deserialize_with = "nullable")]
    pub message: String,
    /// The error class (`invalid_request_error`, `upstream_error`, ...).
    #[serde(rename = "type", deserialize_with = "nullable")]
    pub kind: String,
    /// The machine-readable code.
    pub code: Option<ErrorCode>,
    /// The request field at fault.
    pub param: Option<String>,
}

/// An error body: `{"error":{"message","type","code","param"}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ErrorBody {
    /// The error.
    #[serde(deserialize_with = "nullable")]
    pub error: ErrorDetail,
}

/// The [`FinishReason`] of an OpenAI `finish_reason` string (`stop`,
/// `length`, `tool_calls`, the older `function_call`, `content_filter`);
/// `None` for engine-specific values such as vLLM's `abort`, which the
/// adapter has to judge.
pub fn parse_finish_reason(reason: &str) -> Option<FinishReason> {
    match reason {
        "stop" => Some(FinishReason::Stop),
        "length" => Some(FinishReason::Length),
        "tool_calls" | "function_call" => Some(FinishReason::ToolCalls),
        "content_filter" => Some(FinishReason::ContentFilter),
        _ => None,
    }
}
