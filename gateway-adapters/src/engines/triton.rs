//! Triton Inference Server with a TensorRT-LLM model (ENGINES.md §5),
//! through `POST /v2/models/{model}/generate_stream`.
//!
//! Wire format taken from `triton-inference-server/server:src/http_server.cc@e1db8a603d86`
//! and the TRT-LLM `ensemble` model configuration cited in ENGINES.md §5.2.
//!
//! - Request: Triton's flat JSON keyed by the model's **input tensor
//!   names**: `{"id", "text_input", "max_tokens" (the budget's cap),
//!   "stream": true, "temperature"?, "top_p"?, "seed"?, "stop_words"?,
//!   "return_num_input_tokens": true, "return_num_output_tokens": true}`.
//!   The two `return_num_*` inputs are sent only with
//!   [`TritonOptions::request_token_counts`] (on by default). `generate`
//!   takes a key the model does not declare as a request parameter when its
//!   value is a number, a bool or a string (ignored by the model), and
//!   answers 400 "parameter 'X' has invalid type" to an array, an object or
//!   null (tritonserver 2.51, seen): so the count inputs are harmless for a
//!   model without them, while `stop_words` (an array) needs a model that
//!   declares it, as TensorRT-LLM's ensemble does. Extra request fields are
//!   not sent; there are no bad words in the gateway's sampling parameters,
//!   so `bad_words` is never sent.
//! - Prompts: text only. Chat and token prompts are refused with
//!   `InvalidRequest`: the ensemble's preprocessing tokenizes `text_input`
//!   as is, and the gateway has no chat template for the model, so any
//!   rendering it made up ("role: content" lines) would silently degrade
//!   the answer and mis-count the prompt; route chat to a backend that
//!   applies the model's template.
//! - Stream: `data: {json}` per model response; `text_output` is the new
//!   text of the step (the default ensemble), or the whole text so far with
//!   [`TritonOptions::cumulative_output`] (BLS with `accumulate_tokens`),
//!   turned into deltas by character prefix. There is **no `[DONE]`** and
//!   no finish reason: the end of the chunked body is the end (the final
//!   response flag closes it), and a connection cut before that end is a
//!   `Connect` failure (truncated). The finish is inferred: `Length` when
//!   the completion tokens reached `max_tokens`, else `Stop`.
//! - Tokens: with `num_output_tokens` in a response, that many tokens are
//!   in **this** response: the TRT-LLM backend fills it with the size of the
//!   response's output ids (`ModelInstanceState::fillTritonResponse` in
//!   `NVIDIA/TensorRT-LLM:triton_backend/inflight_batcher_llm/src/model_instance_state.cc`),
//!   which in streaming holds the step's new tokens only (the backend never
//!   sets `returnAllGeneratedTokens`); Triton renders the `[1]` tensor as a
//!   JSON number (seen). Without it, one token per response (one decoding
//!   step). Usage: prompt from `num_input_tokens`,
//!   else from the request's token counter; completion = tokens delivered.
//! - Output: text only. The ensemble has no reasoning or tool-call parser,
//!   and its logprob outputs (`output_log_probs`, with the
//!   `return_log_probs` input) are bare floats per token, without the
//!   token texts or alternatives OpenAI logprobs need: they are neither
//!   asked for nor read.
//! - Split characters: a trailing U+FFFD of a response is held back; the
//!   next response with other text replaces it (the engine re-sends the
//!   character whole); at the end it is passed on as is. In cumulative
//!   mode the next cumulative text resolves it. A character split across
//!   transport reads is reassembled by the SSE decoder (TV-06).
//! - Failures: an error before the stream is `{"error":"msg"}` with a
//!   status, typed by status and message ("Exceeds maximum queue size" →
//!   `Overloaded`, "out of memory" → `OutOfMemory`, context length →
//!   `ContextLengthExceeded`): JSON from the frontend and the scheduler
//!   (unknown model 404, a missing input or a bad parameter 400, malformed
//!   JSON or a wrong input type 500, queue full 503, also on
//!   `generate_stream`). A model's error response before its first token
//!   comes SSE-framed with status **400 whatever its error code**
//!   (tritonserver 2.51, seen with UNAVAILABLE and INTERNAL, and for an
//!   exception in the model): such a 400 is typed by its message like an
//!   in-stream error (`Internal` unless the message says otherwise), not
//!   as the request's fault. An
//!   in-stream `data: {"error":"msg"}` is typed by its message alone
//!   (queue size → `Overloaded`, out of memory → `OutOfMemory`, else
//!   `Internal`), in the phase given by whether a delta was forwarded.
//! - `start`: Triton sends the response head only with the first model
//!   response (at the first token). `start` waits [`TritonOptions::accept_window`]
//!   for it, so immediate refusals (queue full, unknown model, bad input,
//!   connection refused) are its error; after that the request is with the
//!   engine and the stream is returned, still waiting for the head.
//! - Cancel (every phase): the connection is closed; Triton's request-fini
//!   hook cancels the request, and the TRT-LLM backend stops it at its next
//!   cancellation check (every 100 ms by default).
//! - Health: `GET /v2/health/ready`, then `GET /v2/models/{model}/ready`.
//! - Pressure: only with `metrics_url` (Triton's metrics port, 8002 by
//!   default): waiting = the larger of `nv_inference_pending_request_count`
//!   (summed over the served and the TRT-LLM model) and
//!   `nv_trt_llm_request_metrics{request_type="waiting"}`; running =
//!   `nv_trt_llm_request_metrics{request_type="active"}` (else
//!   `"scheduled"`); KV use = `nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction"}`.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gateway_core::http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use gateway_core::{
    Backend, BackendError, BackendInfo, BackendRequest, CancelHandle, CancelReason, Delta,
    EngineKind, FailureKind, FailurePhase, Health, LiveGuard, LiveRequests, PackedResult, Pressure,
    Prompt, RequestId, Started, TokenEvent, TokenStream, Usage,
};
use http_body_util::Full;
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::openai_compat::{EngineError, UpstreamConfig, kind_for_status, says_bad_input};
use super::pressure_cell::{Gauges, HasPressure, PressureCell};
use super::prometheus;
use super::reader::{self, EVENT_BUFFER, Emit, Flow, Frames, Reader, Settings};
use super::scrape::Scraper;
use super::upstream::{
    self, HttpClient, SIDE_CALL_TIMEOUT, UpstreamBody, UpstreamError, deadline_passed, parse_uri,
    protocol, read_limited, retry_after, total_timeout, transport_error,
};
use crate::openai::pass_through::EngineFields;
use crate::openai::{SseEvent, parse_upstream_error};

/// The fields Triton gets: none. Its request is keyed by the model's input
/// tensors, and an unknown tensor is a 400, so no extra field is sent.
pub const FIELDS: EngineFields = EngineFields {
    openai: false,
    chat: &[],
    completions: &[],
};

type HeadFuture = Pin<
    Box<
        dyn std::future::Future<Output = Result<hyper::Response<UpstreamBody>, UpstreamError>>
            + Send
            + 'static,
    >,
>;

const MAX_ERROR_BODY: usize = 64 * 1024;
const MAX_MESSAGE_CHARS: usize = 512;
const REPLACEMENT: char = '\u{FFFD}';

/// The server readiness route.
pub const HEALTH: &str = "/v2/health/ready";

/// Pending-request gauge (per model).
pub const PENDING: &str = "nv_inference_pending_request_count";
/// TRT-LLM request gauges, by `request_type`.
pub const TRT_REQUESTS: &str = "nv_trt_llm_request_metrics";
/// TRT-LLM KV-cache gauges, by `kv_cache_block_type`.
pub const TRT_KV: &str = "nv_trt_llm_kv_cache_block_metrics";

/// Triton specifics beyond [`UpstreamConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TritonOptions {
    /// `text_output` is the whole text so far (BLS `accumulate_tokens`),
    /// not the step's new text.
    pub cumulative_output: bool,
    /// Send `return_num_input_tokens` / `return_num_output_tokens` (the
    /// model must declare them as inputs).
    pub request_token_counts: bool,
    /// How long `start` waits for the response head before handing out
    /// the stream.
    pub accept_window: Duration,
    /// The TRT-LLM model's name in metric labels (`model`).
    pub trtllm_model: String,
}

impl Default for TritonOptions {
    fn default() -> Self {
        TritonOptions {
            cumulative_output: false,
            request_token_counts: true,
            accept_window: Duration::from_millis(20),
            trtllm_model: "tensorrt_llm".to_owned(),
        }
    }
}

/// A Triton backend with default [`TritonOptions`].
///
/// # Errors
/// [`EngineError::InvalidUrl`] for a URL that is not `http(s)://host...`,
/// [`EngineError::Tls`] for an unusable `ca_file`.
pub fn backend(config: UpstreamConfig) -> Result<TritonBackend, EngineError> {
    TritonBackend::new(config, TritonOptions::default())
}

/// Triton (`generate_stream`) as a [`Backend`].
#[derive(Clone)]
pub struct TritonBackend {
    inner: Arc<Inner>,
}

impl fmt::Debug for TritonBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TritonBackend")
            .field("info", &self.inner.info)
            .field("base", &self.inner.base)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

struct Inner {
    info: BackendInfo,
    served_model: String,
    client: HttpClient,
    base: String,
    auth: Option<HeaderValue>,
    options: TritonOptions,
    max_event_bytes: usize,
    shared: Arc<Shared>,
    /// The metrics scrape; it stops when the backend is dropped.
    scraper: Scraper,
}

struct Shared {
    live: LiveRequests,
    pressure: PressureCell,
}

impl HasPressure for Shared {
    fn pressure(&self) -> &PressureCell {
        &self.pressure
    }
}

/// A model name as one path segment (unreserved characters kept, the rest
/// percent-encoded).
fn path_segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl TritonBackend {
    /// A Triton adapter described by `config` and `options`.
    ///
    /// # Errors
    /// [`EngineError::InvalidUrl`] for a URL that is not `http(s)://host...`,
    /// [`EngineError::Tls`] for an unusable `ca_file`.
    pub fn new(config: UpstreamConfig, options: TritonOptions) -> Result<Self, EngineError> {
        parse_uri(&config.url)?;
        let base = config.url.trim_end_matches('/').to_owned();
        parse_uri(&format!("{base}{HEALTH}"))?;
        let metrics_uri = match &config.metrics_url {
            Some(url) => Some(parse_uri(url)?),
            None => None,
        };
        let auth = upstream::auth_header(&config)?;
        let client = upstream::client(&config)?;
        let served_model = upstream::served_model(&config);
        let shared = Arc::new(Shared {
            live: LiveRequests::new(config.max_inflight),
            pressure: PressureCell::new(config.max_concurrency),
        });
        let inner = Inner {
            info: BackendInfo {
                name: config.name,
                engine: EngineKind::Triton,
                models: config.models,
            },
            served_model,
            client,
            base,
            auth,
            options,
            max_event_bytes: config.max_event_bytes,
            shared,
            scraper: Scraper::new(metrics_uri, config.scrape_interval),
        };
        let backend = TritonBackend {
            inner: Arc::new(inner),
        };
        backend.inner.ensure_scraper();
        Ok(backend)
    }

    /// The options in force.
    pub fn options(&self) -> &TritonOptions {
        &self.inner.options
    }
}

impl Inner {
    fn ensure_scraper(&self) {
        let models = [self.served_model.clone(), self.options.trtllm_model.clone()];
        self.scraper
            .ensure(&self.client, &self.shared, move |text| {
                triton_gauges(text, &models)
            });
    }

    fn uri(&self, path: &str) -> Result<Uri, BackendError> {
        format!("{}{path}", self.base).parse().map_err(|_| {
            BackendError::new(
                FailureKind::InvalidRequest,
                "the model name does not make a valid URL",
            )
        })
    }

    /// The `generate_stream` body.
    fn generate_body(&self, request: &BackendRequest) -> Result<Bytes, BackendError> {
        let generate = request.request.as_ref();
        let text = match &generate.prompt {
            Prompt::Text(text) => text.as_str(),
            Prompt::Chat(_) => {
                return Err(BackendError::new(
                    FailureKind::InvalidRequest,
                    "triton takes text prompts only: the gateway has no chat template for this model",
                ));
            }
            Prompt::Tokens(_) => {
                return Err(BackendError::new(
                    FailureKind::InvalidRequest,
                    "triton takes text prompts only, not token ids",
                ));
            }
        };
        let mut body = Map::new();
        body.insert("id".to_owned(), Value::from(generate.id.as_str()));
        body.insert("text_input".to_owned(), Value::from(text));
        body.insert(
            "max_tokens".to_owned(),
            Value::from(request.budget.max_completion_tokens),
        );
        body.insert("stream".to_owned(), Value::Bool(true));
        if let Some(t) = generate.sampling.temperature {
            body.insert("temperature".to_owned(), Value::from(f64::from(t)));
        }
        if let Some(p) = generate.sampling.top_p {
            body.insert("top_p".to_owned(), Value::from(f64::from(p)));
        }
        if let Some(seed) = generate.sampling.seed {
            body.insert("seed".to_owned(), Value::from(seed));
        }
        if !generate.sampling.stop.is_empty() {
            body.insert(
                "stop_words".to_owned(),
                Value::from(generate.sampling.stop.clone()),
            );
        }
        if self.options.request_token_counts {
            body.insert("return_num_input_tokens".to_owned(), Value::Bool(true));
            body.insert("return_num_output_tokens".to_owned(), Value::Bool(true));
        }
        serde_json::to_vec(&Value::Object(body))
            .map(Bytes::from)
            .map_err(|e| {
                BackendError::new(
                    FailureKind::Internal,
                    "the request could not be encoded for the engine",
                )
                .with_source(e)
            })
    }

    fn post(
        &self,
        model: &str,
        id: &RequestId,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, BackendError> {
        let uri = self.uri(&format!(
            "/v2/models/{}/generate_stream",
            path_segment(model)
        ))?;
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "text/event-stream");
        if let Ok(value) = HeaderValue::try_from(id.as_str()) {
            builder = builder.header("x-request-id", value);
        }
        if let Some(auth) = &self.auth {
            builder = builder.header(header::AUTHORIZATION, auth.clone());
        }
        builder.body(Full::new(body)).map_err(|e| {
            BackendError::new(
                FailureKind::Internal,
                "could not build the upstream request",
            )
            .with_source(e)
        })
    }

    async fn get_ok(&self, path: &str) -> Result<(), String> {
        let uri = self.uri(path).map_err(|e| e.to_string())?;
        let mut builder = Request::builder().method(Method::GET).uri(uri);
        if let Some(auth) = &self.auth {
            builder = builder.header(header::AUTHORIZATION, auth.clone());
        }
        let request = builder
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("bad health request: {e}"))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| format!("engine unreachable: {e}"))?;
        let status = response.status();
        let _ = read_limited(response.into_body(), MAX_ERROR_BODY).await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("{path} answered {status}"))
        }
    }
}

/// A kind read from a Triton / TRT-LLM message alone.
fn message_kind(message: &str) -> Option<FailureKind> {
    let lower = message.to_ascii_lowercase();
    if lower.contains("maximum queue size") || lower.contains("queue is full") {
        Some(FailureKind::Overloaded)
    } else if lower.contains("out of memory") {
        Some(FailureKind::OutOfMemory)
    } else if lower.contains("context length")
        || lower.contains("maximum input length")
        || lower.contains("max_input_len")
        || lower.contains("max_seq_len")
    {
        Some(FailureKind::ContextLengthExceeded)
    } else {
        None
    }
}

fn short(message: &str) -> String {
    let mut out: String = message.trim().chars().take(MAX_MESSAGE_CHARS).collect();
    if out.len() < message.trim().len() {
        out.push('…');
    }
    format!("engine: {out}")
}

/// The message of an error body: `{"error":"msg"}` as JSON or as SSE
/// `data:` lines.
fn error_message(body: &[u8]) -> Option<String> {
    if let Some(detail) = parse_upstream_error(body) {
        return Some(detail.message);
    }
    let text = std::str::from_utf8(body).ok()?;
    text.lines().find_map(|line| {
        let data = line.strip_prefix("data:")?.trim();
        parse_upstream_error(data.as_bytes()).map(|d| d.message)
    })
}

/// The error of a non-2xx first response; `sse`: the body is
/// `text/event-stream` (a model's error response, not the frontend's).
fn status_error(
    status: StatusCode,
    body: Option<&[u8]>,
    retry_after: Option<Duration>,
    sse: bool,
) -> BackendError {
    let message = body.and_then(error_message).unwrap_or_default();
    let mut kind = kind_for_status(status.as_u16(), &message, None);
    if sse && status == StatusCode::BAD_REQUEST {
        // Triton answers 400 to any error response the model sends before
        // its first token, whatever the error's code: the message decides.
        kind = match message_kind(&message) {
            Some(k) => k,
            None if says_bad_input(&message) => FailureKind::InvalidRequest,
            None => FailureKind::Internal,
        };
    }
    if let Some(k) = message_kind(&message)
        && (matches!(kind, FailureKind::Internal | FailureKind::UpstreamStatus)
            || (kind == FailureKind::InvalidRequest && k == FailureKind::ContextLengthExceeded))
    {
        kind = k;
    }
    let text = if message.trim().is_empty() {
        format!("engine: the engine answered {status}")
    } else {
        short(&message)
    };
    let mut error = BackendError::new(kind, text).with_upstream_status(status.as_u16());
    if let Some(after) = retry_after {
        error = error.with_retry_after(after);
    }
    error
}

/// The error of an in-stream `{"error":"msg"}` response.
fn event_error(message: &str, phase: FailurePhase) -> BackendError {
    let kind = match message_kind(message) {
        None if says_bad_input(message) => FailureKind::InvalidRequest,
        Some(FailureKind::ContextLengthExceeded) | None => FailureKind::Internal,
        Some(kind) => kind,
    };
    let text = if message.trim().is_empty() {
        "engine: the engine failed the stream".to_owned()
    } else {
        short(message)
    };
    BackendError::new(kind, text).with_phase(phase)
}

/// A count output: a number or a one-element array.
fn count_of(value: Option<&Value>) -> Option<u64> {
    match value? {
        Value::Number(n) => n.as_u64(),
        Value::Array(items) => items.first().and_then(Value::as_u64),
        _ => None,
    }
}

/// `text_output`: a string or an array of strings (concatenated).
fn text_of(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => Some(items.iter().filter_map(Value::as_str).collect()),
        _ => None,
    }
}

/// Where the response head is.
enum Head {
    Ready(Box<hyper::Response<UpstreamBody>>),
    Pending(HeadFuture),
}

/// Triton's model responses, for the shared [`Reader`]: step texts (or
/// cumulative ones) turned into exact deltas with a trailing U+FFFD held
/// back, tokens from `num_output_tokens`, in-stream errors; the clean end of
/// the body is the finish (no `[DONE]`, no finish reason).
struct TritonFrames {
    shared: Arc<Shared>,
    cumulative: bool,
    /// Cumulative mode: the text forwarded so far, and the last full text.
    forwarded: String,
    last_text: String,
    /// Incremental mode: held-back trailing U+FFFD.
    held: String,
    prompt_tokens: Option<u64>,
    fallback_prompt: u64,
}

impl TritonFrames {
    /// Prompt from `num_input_tokens`, else the request's counter;
    /// completion = the tokens delivered.
    fn usage(&self, delivered: u64) -> Usage {
        Usage::new(
            self.prompt_tokens.unwrap_or(self.fallback_prompt),
            delivered,
        )
    }
}

impl Frames for TritonFrames {
    const BODY_END_FINISHES: bool = true;

    fn on_event(&mut self, event: SseEvent, emit: &mut Emit) -> Flow {
        if event.data.is_empty() {
            return Flow::Continue;
        }
        if event.is_done() {
            // Triton never sends it; tolerate it as an end marker.
            return Flow::Continue;
        }
        let Ok(Value::Object(response)) = serde_json::from_str::<Value>(&event.data) else {
            return emit.fail(protocol("the engine sent malformed JSON", emit.phase()));
        };
        if let Some(error) = response.get("error") {
            let message = match error {
                Value::String(s) => s.clone(),
                other => parse_upstream_error(event.data.as_bytes())
                    .map_or_else(|| other.to_string(), |d| d.message),
            };
            let error = event_error(&message, emit.phase());
            if error.kind() == FailureKind::Overloaded {
                self.shared.pressure.mark_overloaded(None);
            }
            return emit.fail(error);
        }
        if let Some(n) = count_of(response.get("num_input_tokens")) {
            self.prompt_tokens = Some(n);
        }
        let has_text = response.contains_key("text_output");
        // The tokens of this response (TRT-LLM's count is per response).
        let tokens = count_of(response.get("num_output_tokens")).unwrap_or(u64::from(has_text));
        let text = text_of(response.get("text_output")).unwrap_or_default();
        let piece = if self.cumulative {
            if !text.starts_with(self.forwarded.as_str()) {
                return emit.fail(protocol(
                    "the engine's cumulative text does not extend the text already sent",
                    emit.phase(),
                ));
            }
            let stable = text.trim_end_matches(REPLACEMENT);
            let new = stable
                .get(self.forwarded.len()..)
                .unwrap_or_default()
                .to_owned();
            self.forwarded.push_str(&new);
            self.last_text = text;
            new
        } else {
            let stable_len = text.trim_end_matches(REPLACEMENT).len();
            if stable_len == 0 {
                self.held.push_str(&text);
                String::new()
            } else {
                // A held U+FFFD is replaced by the character re-sent whole.
                self.held = text[stable_len..].to_owned();
                text[..stable_len].to_owned()
            }
        };
        emit.output(Delta::text(
            piece,
            u32::try_from(tokens).unwrap_or(u32::MAX),
        ))
    }

    /// What was held back goes out as is at the end.
    fn held(&mut self) -> Delta {
        let rest = if self.cumulative {
            self.last_text
                .get(self.forwarded.len()..)
                .unwrap_or_default()
                .to_owned()
        } else {
            std::mem::take(&mut self.held)
        };
        Delta::text(rest, 0)
    }

    fn final_usage(&mut self, delivered: u64) -> Option<Usage> {
        Some(self.usage(delivered))
    }

    fn usage_at_cap(&mut self, delivered: u64) -> Option<Usage> {
        Some(self.usage(delivered))
    }
}

/// Waits for the response head if `start` handed out the stream before
/// it, then reads the body with the shared reader.
async fn read(
    head: Head,
    tx: mpsc::Sender<PackedResult>,
    live: LiveGuard,
    reader: Reader<TritonFrames>,
    cancel: CancelHandle,
    deadline: Option<Instant>,
    shared: Arc<Shared>,
) -> Option<UpstreamBody> {
    let response = match head {
        Head::Ready(response) => *response,
        Head::Pending(future) => match await_head(future, &tx, &cancel, deadline, &shared).await {
            Some(response) => response,
            None => return None,
        },
    };
    reader.run(response.into_body(), tx, live).await
}

/// The response head, or `None` once the stream was ended (with an error,
/// unless nobody reads it).
async fn await_head(
    future: HeadFuture,
    tx: &mpsc::Sender<PackedResult>,
    cancel: &CancelHandle,
    deadline: Option<Instant>,
    shared: &Shared,
) -> Option<hyper::Response<UpstreamBody>> {
    let before = FailurePhase::BeforeFirstToken;
    let stopped = |stop: Stop| match stop {
        Stop::Canceled(reason) => Some(BackendError::canceled(reason).with_phase(before)),
        Stop::Deadline => Some(total_timeout(before)),
        Stop::Gone => None,
    };
    let result = tokio::select! {
        biased;
        reason = cancel.canceled() => Err(Stop::Canceled(reason)),
        () = deadline_passed(deadline) => Err(Stop::Deadline),
        () = tx.closed() => Err(Stop::Gone),
        response = future => Ok(response),
    };
    let error = match result {
        Err(stop) => stopped(stop),
        Ok(Err(e)) => Some(transport_error(e, before)),
        Ok(Ok(response)) if response.status().is_success() => return Some(response),
        Ok(Ok(response)) => match read_status_error(response, cancel, deadline).await {
            Ok(error) => {
                if error.kind() == FailureKind::Overloaded {
                    shared.pressure.mark_overloaded(error.retry_after());
                }
                Some(error)
            }
            Err(stop) => stopped(stop),
        },
    };
    if let Some(error) = error {
        let _ = tx.send(Err(error).into()).await;
    }
    None
}

/// Why the reader stopped early.
enum Stop {
    Canceled(CancelReason),
    Deadline,
    Gone,
}

async fn read_status_error(
    response: hyper::Response<UpstreamBody>,
    cancel: &CancelHandle,
    deadline: Option<Instant>,
) -> Result<BackendError, Stop> {
    let status = response.status();
    let retry = retry_after(response.headers());
    let sse = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        });
    let read = read_limited(response.into_body(), MAX_ERROR_BODY);
    let body = tokio::select! {
        biased;
        reason = cancel.canceled() => return Err(Stop::Canceled(reason)),
        () = deadline_passed(deadline) => return Err(Stop::Deadline),
        body = tokio::time::timeout(SIDE_CALL_TIMEOUT, read) => body.ok().flatten(),
    };
    Ok(status_error(status, body.as_deref(), retry, sse))
}

#[async_trait::async_trait]
impl Backend for TritonBackend {
    fn info(&self) -> &BackendInfo {
        &self.inner.info
    }

    fn pressure(&self) -> Pressure {
        let shared = &self.inner.shared;
        shared.pressure.snapshot(shared.live.inflight())
    }

    async fn start(
        &self,
        request: BackendRequest,
        cancel: CancelHandle,
    ) -> Result<TokenStream, BackendError> {
        let inner = &self.inner;
        inner.ensure_scraper();
        let id = request.request.id.clone();
        let live = inner.shared.live.register(&id, &cancel)?;
        let body = inner.generate_body(&request)?;
        let http_request = inner.post(&request.served_model, &id, body)?;
        let deadline = request.budget.deadline;
        let before = FailurePhase::BeforeFirstToken;
        let mut future: HeadFuture = Box::pin(inner.client.request(http_request));
        // Immediate refusals come back at once; after the window the
        // request is with the engine (the head comes with the first token).
        let head = tokio::select! {
            biased;
            reason = cancel.canceled() => return Err(BackendError::canceled(reason)),
            () = deadline_passed(deadline) => return Err(total_timeout(before)),
            response = &mut future => {
                let response = response.map_err(|e| transport_error(e, before))?;
                if !response.status().is_success() {
                    let error = match read_status_error(response, &cancel, deadline).await {
                        Ok(error) => error,
                        Err(Stop::Canceled(reason)) => BackendError::canceled(reason),
                        Err(_) => total_timeout(before),
                    };
                    if error.kind() == FailureKind::Overloaded {
                        inner.shared.pressure.mark_overloaded(error.retry_after());
                    }
                    return Err(error);
                }
                Head::Ready(Box::new(response))
            }
            () = tokio::time::sleep(inner.options.accept_window) => Head::Pending(future),
        };
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let fallback_prompt = request
            .counter
            .count_prompt(&request.request.prompt)
            .value();
        let frames = TritonFrames {
            shared: inner.shared.clone(),
            cumulative: inner.options.cumulative_output,
            forwarded: String::new(),
            last_text: String::new(),
            held: String::new(),
            prompt_tokens: None,
            fallback_prompt,
        };
        let reader = Reader::new(
            frames,
            Settings {
                cap: u64::from(request.budget.max_completion_tokens),
                deadline,
                cancel: cancel.clone(),
                max_event_bytes: inner.max_event_bytes,
                drain: None,
                started: false,
            },
        );
        // `Started` goes first: the engine holds the request now.
        tx.try_send(Ok(TokenEvent::Started(Started::default())).into())
            .map_err(|_| BackendError::new(FailureKind::Internal, "event channel full"))?;
        let shared = inner.shared.clone();
        let read = read(head, tx, live, reader, cancel.clone(), deadline, shared);
        Ok(reader::stream(read, rx, cancel))
    }

    async fn abort(&self, id: &RequestId) -> Result<bool, BackendError> {
        Ok(self.inner.shared.live.abort(id))
    }

    async fn health(&self) -> Health {
        let inner = &self.inner;
        inner.ensure_scraper();
        let model = format!("/v2/models/{}/ready", path_segment(&inner.served_model));
        let call = async {
            inner.get_ok(HEALTH).await?;
            inner.get_ok(&model).await
        };
        match tokio::time::timeout(SIDE_CALL_TIMEOUT, call).await {
            Ok(Ok(())) => Health::Healthy,
            Ok(Err(why)) => Health::Unhealthy(why),
            Err(_) => Health::Unhealthy("health check timed out".to_owned()),
        }
    }
}

/// Triton's gauges in a scrape, for samples whose `model` label (if any)
/// is one of `models`. `None` if no request gauge is there.
pub(crate) fn triton_gauges(text: &str, models: &[String]) -> Option<Gauges> {
    let (mut pending, mut trt_waiting, mut active, mut scheduled) =
        (None::<f64>, None::<f64>, None::<f64>, None::<f64>);
    let mut kv = (0.0, 0u32);
    let add = |slot: &mut Option<f64>, v: f64| *slot = Some(slot.unwrap_or(0.0) + v);
    for line in text.lines() {
        let Some(name) = prometheus::line_name(line) else {
            continue;
        };
        if !matches!(name, PENDING | TRT_REQUESTS | TRT_KV) {
            continue;
        }
        let Some(sample) = prometheus::parse_line(line) else {
            continue;
        };
        if sample
            .label("model")
            .is_some_and(|m| !models.iter().any(|x| x == m))
            || !sample.value.is_finite()
        {
            continue;
        }
        match name {
            PENDING => add(&mut pending, sample.value),
            TRT_REQUESTS => match sample.label("request_type") {
                Some("waiting") => add(&mut trt_waiting, sample.value),
                Some("active") => add(&mut active, sample.value),
                Some("scheduled") => add(&mut scheduled, sample.value),
                _ => {}
            },
            _ => {
                if sample.label("kv_cache_block_type") == Some("fraction") {
                    kv = (kv.0 + sample.value, kv.1 + 1);
                }
            }
        }
    }
    if pending.is_none() && trt_waiting.is_none() && active.is_none() && scheduled.is_none() {
        return None;
    }
    let mut gauges = Gauges {
        running: active.or(scheduled).unwrap_or(0.0),
        waiting: pending.unwrap_or(0.0).max(trt_waiting.unwrap_or(0.0)),
        kv_usage: 0.0,
    };
    if kv.1 > 0 {
        gauges.kv_usage = kv.0 / f64::from(kv.1);
    }
    Some(gauges)
}

/// For the fuzz targets: `chunks` read as Triton's `generate_stream` body
/// (`cumulative`: `cumulative_output` mode), through the shared reader.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_read(
    cumulative: bool,
    cap: u64,
    max_event_bytes: usize,
    chunks: &[&[u8]],
    end: super::reader::BodyEnd,
) -> (Vec<gateway_core::TokenResult>, usize) {
    let frames = TritonFrames {
        shared: Arc::new(Shared {
            live: LiveRequests::new(1),
            pressure: PressureCell::new(None),
        }),
        cumulative,
        forwarded: String::new(),
        last_text: String::new(),
        held: String::new(),
        prompt_tokens: None,
        fallback_prompt: 7,
    };
    super::reader::read_chunks(frames, cap, max_event_bytes, chunks, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models() -> [String; 2] {
        ["ensemble".to_owned(), "tensorrt_llm".to_owned()]
    }

    #[test]
    fn gauges_read_triton_and_trtllm_names() {
        let text = "# TYPE nv_inference_pending_request_count gauge\n\
nv_inference_pending_request_count{model=\"ensemble\",version=\"1\"} 3\n\
nv_inference_pending_request_count{model=\"other\",version=\"1\"} 9\n\
nv_trt_llm_request_metrics{model=\"tensorrt_llm\",request_type=\"waiting\",version=\"1\"} 5\n\
nv_trt_llm_request_metrics{model=\"tensorrt_llm\",request_type=\"active\",version=\"1\"} 2\n\
nv_trt_llm_request_metrics{model=\"tensorrt_llm\",request_type=\"scheduled\",version=\"1\"} 1\n\
nv_trt_llm_request_metrics{model=\"tensorrt_llm\",request_type=\"max\",version=\"1\"} 64\n\
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=\"fraction\",model=\"tensorrt_llm\",version=\"1\"} 0.42\n\
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=\"used\",model=\"tensorrt_llm\",version=\"1\"} 420\n";
        let g = triton_gauges(text, &models()).unwrap_or_default();
        assert_eq!((g.running, g.waiting), (2.0, 5.0));
        assert!((g.kv_usage - 0.42).abs() < 1e-9);
        // Only the core gauge: waiting from it, nothing running.
        let core = "nv_inference_pending_request_count{model=\"ensemble\",version=\"1\"} 4\n";
        let g = triton_gauges(core, &models()).unwrap_or_default();
        assert_eq!((g.running, g.waiting, g.kv_usage), (0.0, 4.0, 0.0));
        // `scheduled` stands in for a missing `active`.
        let sched = "nv_trt_llm_request_metrics{model=\"tensorrt_llm\",request_type=\"scheduled\",version=\"1\"} 6\n";
        assert_eq!(
            triton_gauges(sched, &models()).map(|g| g.running),
            Some(6.0)
        );
        assert_eq!(triton_gauges("nv_gpu_utilization 1\n", &models()), None);
    }

    #[test]
    fn messages_are_typed() {
        let queue_full = br#"{"error":"[request id: <id_unknown>] Exceeds maximum queue size"}"#;
        assert_eq!(
            status_error(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(queue_full),
                None,
                false
            )
            .kind(),
            FailureKind::Overloaded
        );
        // The frontend's refusals (JSON) are the request's.
        let missing = br#"{"error":"[request id: <id_unknown>] expected number of inputs between 2 and 10 but got 1 inputs for model 'ensemble'."}"#;
        let e = status_error(StatusCode::BAD_REQUEST, Some(missing), None, false);
        assert_eq!(
            (e.kind(), e.upstream_status()),
            (FailureKind::InvalidRequest, Some(400))
        );
        // A model's error response before its first token: 400 and
        // SSE-framed whatever its code (tritonserver 2.51), typed by its
        // message like an in-stream error.
        let sse = |message: &str| format!("data: {{\"error\":\"{message}\"}}\n\n");
        let typed = |message: &str| {
            let e = status_error(
                StatusCode::BAD_REQUEST,
                Some(sse(message).as_bytes()),
                None,
                true,
            );
            (e.kind(), e.upstream_status(), e.message().to_owned())
        };
        assert_eq!(
            typed("the model is unavailable"),
            (
                FailureKind::Internal,
                Some(400),
                "engine: the model is unavailable".to_owned()
            )
        );
        assert_eq!(typed("CUDA out of memory").0, FailureKind::OutOfMemory);
        assert_eq!(
            typed("Exceeds maximum queue size").0,
            FailureKind::Overloaded
        );
        assert_eq!(
            typed("Prompt length (9000) exceeds maximum input length (8192).").0,
            FailureKind::ContextLengthExceeded
        );
        assert_eq!(
            typed("BadRequestError: bad stop words").0,
            FailureKind::InvalidRequest
        );
        // The same 400 as JSON stays the request's fault.
        assert_eq!(
            status_error(
                StatusCode::BAD_REQUEST,
                Some(br#"{"error":"the model is unavailable"}"#),
                None,
                false
            )
            .kind(),
            FailureKind::InvalidRequest
        );
        assert_eq!(
            status_error(StatusCode::NOT_IMPLEMENTED, None, None, false).kind(),
            FailureKind::UpstreamStatus
        );
        assert_eq!(
            event_error("CUDA out of memory", FailurePhase::AfterFirstToken).kind(),
            FailureKind::OutOfMemory
        );
        assert_eq!(
            event_error("boom", FailurePhase::BeforeFirstToken).kind(),
            FailureKind::Internal
        );
        assert_eq!(path_segment("a b/c"), "a%20b%2Fc");
    }

    /// `num_output_tokens` counts the tokens of its own response, as the
    /// TRT-LLM backend fills it; the frames are real tritonserver 2.51
    /// bytes (a scalar count, no `[DONE]`).
    #[cfg(feature = "fuzzing")]
    #[test]
    fn num_output_tokens_counts_each_response() {
        use super::super::reader::BodyEnd;
        let frame = |text: &str, n: u32| {
            format!(
                "data: {{\"id\":\"a1\",\"model_name\":\"ensemble\",\"model_version\":\"1\",\
                 \"num_input_tokens\":3,\"num_output_tokens\":{n},\"text_output\":\"{text}\"}}\n\n"
            )
        };
        // One token, then a step of two (speculative decoding), then one.
        let chunks = [
            frame("alpha ", 1),
            frame("beta gamma ", 2),
            frame("delta ", 1),
        ];
        let chunks: Vec<&[u8]> = chunks.iter().map(|c| c.as_bytes()).collect();
        let (events, _) = fuzz_read(false, 100, 64 * 1024, &chunks, BodyEnd::Clean);
        let mut pieces = Vec::new();
        let mut usage = None;
        let mut finish = None;
        for event in events {
            match event.expect("no error") {
                TokenEvent::Delta(d) if !d.text.is_empty() => pieces.push((d.text, d.tokens)),
                TokenEvent::Usage(u) => usage = Some(u),
                TokenEvent::Finished(reason) => finish = Some(reason),
                _ => {}
            }
        }
        assert_eq!(
            pieces,
            vec![
                ("alpha ".to_owned(), 1),
                ("beta gamma ".to_owned(), 2),
                ("delta ".to_owned(), 1)
            ]
        );
        assert_eq!(usage, Some(Usage::new(3, 4)));
        assert_eq!(finish, Some(gateway_core::FinishReason::Stop));
        // At the cap: Length, the tokens counted per response.
        let (events, _) = fuzz_read(false, 3, 64 * 1024, &chunks, BodyEnd::Clean);
        let last = events.into_iter().last().map(|e| e.expect("no error"));
        assert!(
            matches!(
                last,
                Some(TokenEvent::Finished(gateway_core::FinishReason::Length))
            ),
            "{last:?}"
        );
    }
}
