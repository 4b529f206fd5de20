//! SGLang (ENGINES.md §3), through its native `POST /generate`.
//!
//! - Text and token prompts go to `POST /generate` as
//!   `{"text" | "input_ids", "sampling_params": {"max_new_tokens", "temperature",
//!   "top_p", "stop"}, "stream": true, "rid": <request id>}`. The stream
//!   carries the **cumulative** `text` per event (unless the server runs
//!   `--incremental-streaming-output`, see [`SglangOptions`]); deltas are
//!   the character-prefix difference (TV-07). A text that does not extend
//!   what was already forwarded fails the stream loudly (protocol
//!   violation). Trailing U+FFFD is held back until it resolves.
//! - Each delta carries the new tokens' ids from `output_ids` (cumulative
//!   like the text, or per event), when they are exactly its tokens: a
//!   stream of a text or token prompt can then continue on another backend
//!   from them (a chat stream, on the OpenAI route, has none).
//! - `meta_info` of the final event gives the usage: `prompt_tokens`,
//!   `completion_tokens`, `cached_tokens`, and speculative-decoding drafts
//!   (`spec_proposed_drafts`/`spec_num_proposed_drafts` drafted,
//!   `spec_accepted_drafts`/`spec_num_correct_drafts` accepted, §3.8).
//! - Chat prompts: the native route takes text and the gateway has no chat
//!   template, so chat goes to SGLang's OpenAI route
//!   `/v1/chat/completions` through the shared OpenAI-compatible client,
//!   with `rid` added to the body so it can be aborted the same way.
//! - Failures: a non-2xx answer (native `400 {"error":{"message"}}`,
//!   flat OpenAI bodies, 503) is typed by status and message; an
//!   in-stream `{"error":...}` event (which may be the first event, e.g.
//!   the 503 `SERVICE_UNAVAILABLE` of a full queue) is typed by its code,
//!   type or message, in the phase given by whether a delta was forwarded;
//!   a final `finish_reason` `{"type":"abort","status_code":N}` is typed by
//!   `N`, one without a status code (someone aborted the rid) ends the
//!   stream as canceled (`Aborted`).
//! - Cancel: in every phase the connection is dropped **and**
//!   `POST /abort_request {"rid"}` is sent on a spawned task with a short
//!   timeout (closing alone only aborts 2 s later in SGLang, §3.6); the
//!   stream's end never waits for it.
//! - Logprobs on the native route: asked for by the request's extra fields,
//!   SGLang's own `return_logprob` (+ `top_logprobs_num`) or OpenAI's
//!   `logprobs` (`true` with `top_logprobs`, or the completions count of
//!   alternatives), sent as `return_logprob`, `top_logprobs_num` (when
//!   above 0) and `return_text_in_logprobs` (for the token texts).
//!   `meta_info.output_token_logprobs` / `output_top_logprobs` (cumulative
//!   like the text, only the new tokens' entries taken; per event with
//!   `--incremental-streaming-output`) become each delta's logprobs; no
//!   token bytes (SGLang gives none).
//! - Not sent on the native route: the served model name (one model per
//!   server) and the request's other extra fields (`GenerateReqInput` has
//!   its own field set); a seed goes as `sampling_params.sampling_seed`.
//! - Pressure: `sglang:num_running_reqs`, `sglang:num_queue_reqs`,
//!   `sglang:token_usage` from `/metrics` (`--enable-metrics`), for the
//!   served model's `model_name`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use gateway_core::http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use gateway_core::{
    Backend, BackendError, BackendInfo, BackendRequest, CancelHandle, CancelReason, Delta,
    EngineKind, FailureKind, FailurePhase, FinishReason, Health, LiveGuard, LiveRequests, Pressure,
    Prompt, RequestId, TokenEvent, TokenLogprob, TokenStream, TopLogprob, Usage,
};
use http_body_util::Full;
use serde::de::{IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::openai_compat::{
    EngineError, HealthCheck, OpenAiCompatBackend, Quirks, Routes, UpstreamConfig, kind_for_status,
    says_bad_input,
};
use super::pressure_cell::{Gauges, HasPressure, PressureCell};
use super::prometheus;
use super::reader::{self, EVENT_BUFFER, Emit, Flow, Frames, Reader, Settings};
use super::scrape::Scraper;
use super::upstream::{
    self, HttpClient, SIDE_CALL_TIMEOUT, deadline_passed, parse_uri, protocol, read_limited,
    retry_after, total_timeout, transport_error,
};
use crate::openai::pass_through::EngineFields;
use crate::openai::types::{ErrorCode, ErrorDetail};
use crate::openai::{SseEvent, parse_upstream_error};

/// SGLang's extras on its OpenAI chat route (ENGINES.md §3.2), besides
/// OpenAI's fields. Left out: `rid` (the gateway's), the prompt fields
/// (`continue_final_message`, `session_params`),
/// `bootstrap_*` (disaggregation internals) and `return_hidden_states`
/// (an answer the gateway does not pass on).
pub const CHAT_EXTRA: &[&str] = &[
    "top_k",
    "min_p",
    "min_tokens",
    "regex",
    "ebnf",
    "repetition_penalty",
    "stop_token_ids",
    "no_stop_trim",
    "ignore_eos",
    "skip_special_tokens",
    "lora_path",
    "separate_reasoning",
    "stream_reasoning",
    // Reasoning switches (`enable_thinking`): template variables, counted
    // by the estimate as on vLLM.
    "chat_template_kwargs",
];

/// What the native `/generate` route takes of a completions request's
/// extra fields: only the logprob asks it reads (OpenAI's `logprobs`,
/// SGLang's `return_logprob` and `top_logprobs_num`); `GenerateReqInput`
/// has its own field set, so nothing else is sent.
pub const COMPLETION_EXTRA: &[&str] = &["logprobs", "return_logprob", "top_logprobs_num"];

/// The fields SGLang gets: chat, OpenAI's and [`CHAT_EXTRA`]; completions,
/// [`COMPLETION_EXTRA`] only.
pub const FIELDS: EngineFields = EngineFields {
    openai: false,
    chat: SGLANG_CHAT_FIELDS,
    completions: COMPLETION_EXTRA,
};

/// OpenAI's chat fields ([`OPENAI_CHAT`]) and [`CHAT_EXTRA`].
///
/// [`OPENAI_CHAT`]: crate::openai::pass_through::OPENAI_CHAT
const SGLANG_CHAT_FIELDS: &[&str] = &[
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
    "top_k",
    "min_p",
    "min_tokens",
    "regex",
    "ebnf",
    "repetition_penalty",
    "stop_token_ids",
    "no_stop_trim",
    "ignore_eos",
    "skip_special_tokens",
    "lora_path",
    "separate_reasoning",
    "stream_reasoning",
    "chat_template_kwargs",
];

const MAX_ERROR_BODY: usize = 64 * 1024;
const MAX_MESSAGE_CHARS: usize = 512;

/// SGLang's OpenAI routes, used for chat prompts (no scrape of its own:
/// the SGLang adapter scrapes).
pub const OPENAI_ROUTES: Routes = Routes {
    engine: EngineKind::Sglang,
    chat: "/v1/chat/completions",
    completions: "/v1/completions",
    health: HealthCheck::Status("/health"),
    metrics: None,
};

/// The native generation route.
pub const GENERATE: &str = "/generate";
/// The abort route.
pub const ABORT: &str = "/abort_request";
/// The health route.
pub const HEALTH: &str = "/health";
/// The default metrics route.
pub const METRICS: &str = "/metrics";

/// SGLang specifics beyond [`UpstreamConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SglangOptions {
    /// The server runs `--incremental-streaming-output`: each event's
    /// `text` is the new piece, not the whole text so far.
    pub incremental_streaming_output: bool,
    /// How long an `/abort_request` call may take (it runs on its own task).
    pub abort_timeout: Duration,
}

impl Default for SglangOptions {
    fn default() -> Self {
        SglangOptions {
            incremental_streaming_output: false,
            abort_timeout: Duration::from_secs(2),
        }
    }
}

/// An SGLang backend with default [`SglangOptions`].
///
/// # Errors
/// [`EngineError::InvalidUrl`] for a URL that is not `http(s)://host...`,
/// [`EngineError::Tls`] for an unusable `ca_file`.
pub fn backend(config: UpstreamConfig) -> Result<SglangBackend, EngineError> {
    SglangBackend::new(config, SglangOptions::default())
}

/// SGLang as a [`Backend`]: native `/generate` for text and token prompts,
/// the OpenAI chat route for chat prompts, `/abort_request` on every
/// cancel, pressure from `/metrics`.
#[derive(Clone)]
pub struct SglangBackend {
    inner: Arc<Inner>,
}

impl fmt::Debug for SglangBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SglangBackend")
            .field("info", &self.inner.info)
            .field("generate", &self.inner.generate_uri)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

struct Inner {
    info: BackendInfo,
    served_model: String,
    client: HttpClient,
    generate_uri: Uri,
    health_uri: Uri,
    auth: Option<HeaderValue>,
    options: SglangOptions,
    max_event_bytes: usize,
    shared: Arc<Shared>,
    chat: OpenAiCompatBackend,
    /// The metrics scrape; it stops when the backend is dropped.
    scraper: Scraper,
}

/// What the reader tasks, the abort tasks and the scraper share.
struct Shared {
    live: LiveRequests,
    client: HttpClient,
    abort_uri: Uri,
    auth: Option<HeaderValue>,
    abort_timeout: Duration,
    pressure: PressureCell,
}

impl Shared {
    /// Sends `POST /abort_request {"rid"}` on its own task; never waits.
    fn fire_abort(&self, rid: &RequestId) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let body = serde_json::json!({ "rid": rid.as_str() }).to_string();
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(self.abort_uri.clone())
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(auth) = &self.auth {
            builder = builder.header(header::AUTHORIZATION, auth.clone());
        }
        let Ok(request) = builder.body(Full::new(Bytes::from(body))) else {
            return;
        };
        let client = self.client.clone();
        let timeout = self.abort_timeout;
        runtime.spawn(async move {
            let call = async {
                if let Ok(response) = client.request(request).await {
                    let _ = read_limited(response.into_body(), MAX_ERROR_BODY).await;
                }
            };
            let _ = tokio::time::timeout(timeout, call).await;
        });
    }
}

impl HasPressure for Shared {
    fn pressure(&self) -> &PressureCell {
        &self.pressure
    }
}

/// Sends `/abort_request` for its rid when dropped, unless disarmed once
/// the engine itself ended the request.
struct AbortGuard {
    shared: Arc<Shared>,
    rid: RequestId,
    armed: bool,
}

impl AbortGuard {
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        if self.armed {
            self.shared.fire_abort(&self.rid);
        }
    }
}

impl SglangBackend {
    /// An SGLang adapter described by `config` and `options`.
    ///
    /// # Errors
    /// [`EngineError::InvalidUrl`] for a URL that is not `http(s)://host...`,
    /// [`EngineError::Tls`] for an unusable `ca_file`.
    pub fn new(config: UpstreamConfig, options: SglangOptions) -> Result<Self, EngineError> {
        parse_uri(&config.url)?;
        let trimmed = config.url.trim_end_matches('/');
        let base = trimmed.strip_suffix("/v1").unwrap_or(trimmed).to_owned();
        let route = |path: &str| parse_uri(&format!("{base}{path}"));
        let generate_uri = route(GENERATE)?;
        let abort_uri = route(ABORT)?;
        let health_uri = route(HEALTH)?;
        let metrics_uri = match &config.metrics_url {
            Some(url) => parse_uri(url)?,
            None => route(METRICS)?,
        };
        let auth = upstream::auth_header(&config)?;
        let mut chat_config = config.clone();
        chat_config.metrics_url = None;
        let chat = OpenAiCompatBackend::with_quirks(OPENAI_ROUTES, Quirks::OPENAI, chat_config)?;
        let client = upstream::client(&config)?;
        let served_model = upstream::served_model(&config);
        let shared = Arc::new(Shared {
            live: LiveRequests::new(config.max_inflight),
            client: client.clone(),
            abort_uri,
            auth: auth.clone(),
            abort_timeout: options.abort_timeout,
            pressure: PressureCell::new(config.max_concurrency),
        });
        let inner = Inner {
            info: BackendInfo {
                name: config.name,
                engine: EngineKind::Sglang,
                models: config.models,
            },
            served_model,
            client,
            generate_uri,
            health_uri,
            auth,
            options,
            max_event_bytes: config.max_event_bytes,
            shared,
            chat,
            scraper: Scraper::new(Some(metrics_uri), config.scrape_interval),
        };
        let backend = SglangBackend {
            inner: Arc::new(inner),
        };
        backend.inner.ensure_scraper();
        Ok(backend)
    }

    /// The options in force.
    pub fn options(&self) -> SglangOptions {
        self.inner.options
    }
}

impl Inner {
    fn ensure_scraper(&self) {
        let model = self.served_model.clone();
        self.scraper
            .ensure(&self.client, &self.shared, move |text| {
                sglang_gauges(text, &model)
            });
    }

    /// The native `/generate` body; `logprobs`: the top alternatives per
    /// token when logprobs are asked for ([`logprob_ask`]).
    fn generate_body(
        &self,
        request: &BackendRequest,
        logprobs: Option<u64>,
    ) -> Result<Bytes, BackendError> {
        let generate = request.request.as_ref();
        let mut sampling = Map::new();
        sampling.insert(
            "max_new_tokens".to_owned(),
            Value::from(request.budget.max_completion_tokens),
        );
        if let Some(t) = generate.sampling.temperature {
            sampling.insert("temperature".to_owned(), Value::from(f64::from(t)));
        }
        if let Some(p) = generate.sampling.top_p {
            sampling.insert("top_p".to_owned(), Value::from(f64::from(p)));
        }
        if !generate.sampling.stop.is_empty() {
            sampling.insert(
                "stop".to_owned(),
                Value::from(generate.sampling.stop.clone()),
            );
        }
        if let Some(seed) = generate.sampling.seed {
            sampling.insert("sampling_seed".to_owned(), Value::from(seed));
        }
        let mut body = Map::new();
        match &generate.prompt {
            Prompt::Text(text) => {
                body.insert("text".to_owned(), Value::from(text.as_str()));
            }
            Prompt::Tokens(ids) => {
                body.insert("input_ids".to_owned(), Value::from(ids.clone()));
            }
            Prompt::Chat(_) => {
                return Err(BackendError::new(
                    FailureKind::Internal,
                    "chat prompts go to the OpenAI route",
                ));
            }
        }
        body.insert("sampling_params".to_owned(), Value::Object(sampling));
        body.insert("stream".to_owned(), Value::Bool(true));
        body.insert("rid".to_owned(), Value::from(generate.id.as_str()));
        if let Some(top) = logprobs {
            body.insert("return_logprob".to_owned(), Value::Bool(true));
            if top > 0 {
                body.insert("top_logprobs_num".to_owned(), Value::from(top));
            }
            // The token texts: without it SGLang sends only the ids.
            body.insert("return_text_in_logprobs".to_owned(), Value::Bool(true));
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

    fn post(&self, id: &RequestId, body: Bytes) -> Result<Request<Full<Bytes>>, BackendError> {
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(self.generate_uri.clone())
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

    /// A chat request through the OpenAI route, with `rid` in the body and
    /// `/abort_request` on any end but a finish.
    async fn start_chat(
        &self,
        request: BackendRequest,
        cancel: CancelHandle,
        live: LiveGuard,
    ) -> Result<TokenStream, BackendError> {
        let id = request.request.id.clone();
        let mut generate = request.request.as_ref().clone();
        let mut extra: Map<String, Value> = match &generate.extra {
            Some(text) => serde_json::from_str(text).map_err(|e| {
                BackendError::new(
                    FailureKind::InvalidRequest,
                    "the extra request fields are not a JSON object",
                )
                .with_source(e)
            })?,
            None => Map::new(),
        };
        extra.insert("rid".to_owned(), Value::from(id.as_str()));
        generate.extra = Some(Value::Object(extra).to_string().into());
        let request = BackendRequest {
            request: Arc::new(generate),
            ..request
        };
        // Dropping this future before the answer aborts by rid.
        let mut guard = AbortGuard {
            shared: self.shared.clone(),
            rid: id.clone(),
            armed: true,
        };
        let result = self.chat.start(request, cancel.clone()).await;
        guard.disarm();
        let stream = match result {
            Ok(stream) => stream,
            Err(e) => {
                if matches!(e.kind(), FailureKind::Canceled | FailureKind::TotalTimeout) {
                    // The engine may hold it already.
                    self.shared.fire_abort(&id);
                }
                if e.kind() == FailureKind::Overloaded {
                    self.shared.pressure.mark_overloaded(e.retry_after());
                }
                return Err(e);
            }
        };
        // A cancel (also by `abort(id)` or dropping the stream) sends
        // `/abort_request` at once, whether or not the stream is polled.
        let done = CancellationToken::new();
        let watcher = {
            let shared = self.shared.clone();
            let cancel = cancel.clone();
            let done = done.clone();
            let rid = id.clone();
            async move {
                tokio::select! {
                    biased;
                    _ = cancel.canceled() => shared.fire_abort(&rid),
                    () = done.cancelled() => {}
                }
            }
        };
        tokio::spawn(watcher);
        let shared = self.shared.clone();
        let mut live = Some(live);
        let done_on_drop = done.clone().drop_guard();
        let stream = stream.map(move |item| {
            let _ = &done_on_drop;
            match &item {
                Ok(TokenEvent::Finished(_)) => {
                    done.cancel();
                    if let Some(live) = live.take() {
                        live.end();
                    }
                }
                Err(e) => {
                    if matches!(
                        e.kind(),
                        FailureKind::TotalTimeout
                            | FailureKind::Connect
                            | FailureKind::ProtocolViolation
                    ) {
                        // The engine may still be generating.
                        shared.fire_abort(&id);
                    }
                    let live = live.take();
                    if e.kind() != FailureKind::Canceled {
                        done.cancel();
                        if let Some(live) = live {
                            live.end();
                        }
                    }
                }
                Ok(_) => {}
            }
            item
        });
        Ok(TokenStream::new(stream).cancel_on_drop(cancel))
    }
}

#[async_trait::async_trait]
impl Backend for SglangBackend {
    fn info(&self) -> &BackendInfo {
        &self.inner.info
    }

    fn pressure(&self) -> Pressure {
        let shared = &self.inner.shared;
        let mut p = shared.pressure.snapshot(shared.live.inflight());
        let chat = self.inner.chat.pressure();
        p.overloaded |= chat.overloaded;
        p
    }

    async fn start(
        &self,
        request: BackendRequest,
        cancel: CancelHandle,
    ) -> Result<TokenStream, BackendError> {
        let inner = &self.inner;
        inner.ensure_scraper();
        let live = inner.shared.live.register(&request.request.id, &cancel)?;
        if matches!(request.request.prompt, Prompt::Chat(_)) {
            return inner.start_chat(request, cancel, live).await;
        }
        let logprobs = logprob_ask(request.request.extra.as_deref());
        let body = inner.generate_body(&request, logprobs)?;
        let id = request.request.id.clone();
        let http_request = inner.post(&id, body)?;
        // From here on the engine may hold the request: any end but the
        // engine's own sends `/abort_request` (also when this future is
        // dropped).
        let mut guard = AbortGuard {
            shared: inner.shared.clone(),
            rid: id,
            armed: true,
        };
        let deadline = request.budget.deadline;
        let before = FailurePhase::BeforeFirstToken;
        let response = tokio::select! {
            biased;
            reason = cancel.canceled() => return Err(BackendError::canceled(reason)),
            () = deadline_passed(deadline) => return Err(total_timeout(before)),
            response = inner.client.request(http_request) => {
                response.map_err(|e| transport_error(e, before))?
            }
        };
        let status = response.status();
        if !status.is_success() {
            guard.disarm();
            let retry = retry_after(response.headers());
            let read = read_limited(response.into_body(), MAX_ERROR_BODY);
            let body = tokio::select! {
                biased;
                reason = cancel.canceled() => return Err(BackendError::canceled(reason)),
                () = deadline_passed(deadline) => return Err(total_timeout(before)),
                body = tokio::time::timeout(SIDE_CALL_TIMEOUT, read) => body.ok().flatten(),
            };
            let error = status_error(status, body.as_deref(), retry);
            if error.kind() == FailureKind::Overloaded {
                inner.shared.pressure.mark_overloaded(error.retry_after());
            }
            return Err(error);
        }
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let frames = NativeFrames {
            shared: inner.shared.clone(),
            abort: Some(guard),
            incremental: inner.options.incremental_streaming_output,
            logprobs: logprobs.is_some(),
            forwarded: String::new(),
            seen_tokens: 0,
            seen_ids: 0,
            seen_logprobs: 0,
            last_meta: None,
        };
        let reader = Reader::new(
            frames,
            Settings {
                cap: u64::from(request.budget.max_completion_tokens),
                deadline,
                cancel: cancel.clone(),
                max_event_bytes: inner.max_event_bytes,
                drain: None,
                started: true,
            },
        );
        let read = reader.run(response.into_body(), tx, live);
        Ok(reader::stream(read, rx, cancel))
    }

    async fn abort(&self, id: &RequestId) -> Result<bool, BackendError> {
        Ok(self.inner.shared.live.abort(id))
    }

    /// SGLang's OpenAI route `/v1/embeddings` (servers started with
    /// `--is-embedding`), through the shared OpenAI-compatible client.
    async fn embed(
        &self,
        request: gateway_core::EmbedAttempt,
        cancel: CancelHandle,
    ) -> Result<gateway_core::Embeddings, BackendError> {
        self.inner.chat.embed(request, cancel).await
    }

    async fn health(&self) -> Health {
        let inner = &self.inner;
        inner.ensure_scraper();
        let mut builder = Request::builder()
            .method(Method::GET)
            .uri(inner.health_uri.clone());
        if let Some(auth) = &inner.auth {
            builder = builder.header(header::AUTHORIZATION, auth.clone());
        }
        let request = match builder.body(Full::new(Bytes::new())) {
            Ok(r) => r,
            Err(e) => return Health::Unhealthy(format!("bad health request: {e}")),
        };
        let call = async {
            let response = inner
                .client
                .request(request)
                .await
                .map_err(|e| format!("engine unreachable: {e}"))?;
            let status = response.status();
            let _ = read_limited(response.into_body(), MAX_ERROR_BODY).await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("health check answered {status}"))
            }
        };
        match tokio::time::timeout(SIDE_CALL_TIMEOUT, call).await {
            Ok(Ok(())) => Health::Healthy,
            Ok(Err(why)) => Health::Unhealthy(why),
            Err(_) => Health::Unhealthy("health check timed out".to_owned()),
        }
    }
}

/// Whether a request asks for logprobs, from its extra fields, and how
/// many alternatives per token: SGLang's own `return_logprob` (with
/// `top_logprobs_num`) wins; else OpenAI's `logprobs` — `true` (chat, with
/// `top_logprobs`) or the completions count of alternatives (`0`: the
/// tokens' own logprobs only). `None`: not asked (or `false`).
fn logprob_ask(extra: Option<&str>) -> Option<u64> {
    let extra = extra.filter(|e| e.contains("logprob"))?;
    let fields: Map<String, Value> = serde_json::from_str(extra).ok()?;
    let asked = match (fields.get("return_logprob"), fields.get("logprobs")) {
        (Some(Value::Bool(asked)), _) | (None | Some(Value::Null), Some(Value::Bool(asked))) => {
            *asked
        }
        (None | Some(Value::Null), Some(Value::Number(n))) => n.as_u64().is_some(),
        _ => false,
    };
    if !asked {
        return None;
    }
    let count = |key: &str| fields.get(key).and_then(Value::as_u64);
    Some(
        count("top_logprobs_num")
            .or_else(|| count("top_logprobs"))
            .or_else(|| count("logprobs"))
            .unwrap_or(0),
    )
}

/// A kind read from an SGLang message alone (native errors carry no code
/// or type).
fn message_kind(message: &str) -> Option<FailureKind> {
    let lower = message.to_ascii_lowercase();
    if lower.contains("queue is full")
        || lower.contains("503:")
        || lower.contains("service unavailable")
    {
        Some(FailureKind::Overloaded)
    } else if lower.contains("context length") || lower.contains("context window") {
        Some(FailureKind::ContextLengthExceeded)
    } else if lower.contains("out of memory") {
        Some(FailureKind::OutOfMemory)
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

/// The error of a non-2xx answer before the stream: by status, then by
/// SGLang's messages (`500 "Internal server error: 503: The request queue
/// is full."`).
fn status_error(
    status: StatusCode,
    body: Option<&[u8]>,
    retry_after: Option<Duration>,
) -> BackendError {
    let detail = body.and_then(parse_upstream_error);
    let message = detail.as_ref().map_or("", |d| d.message.as_str());
    let mut kind = kind_for_status(
        status.as_u16(),
        message,
        detail.as_ref().and_then(|d| d.param.as_deref()),
    );
    if matches!(kind, FailureKind::Internal | FailureKind::UpstreamStatus)
        && let Some(k) = message_kind(message)
    {
        kind = k;
    }
    let text = if message.trim().is_empty() {
        format!("engine: the engine answered {status}")
    } else {
        short(message)
    };
    let mut error = BackendError::new(kind, text).with_upstream_status(status.as_u16());
    if let Some(after) = retry_after {
        error = error.with_retry_after(after);
    }
    error
}

/// The error of an in-stream `{"error": ...}` event: by its `code`, else
/// its `type`, else its message.
fn event_error(detail: &ErrorDetail, phase: FailurePhase) -> BackendError {
    let code = match &detail.code {
        Some(ErrorCode::Number(n)) => u16::try_from(*n).ok(),
        Some(ErrorCode::Text(t)) => t.trim().parse().ok(),
        None => None,
    }
    .or_else(|| detail.kind.trim().parse().ok());
    let by_message = message_kind(&detail.message);
    let kind = match code {
        Some(code) => {
            let kind = kind_for_status(code, &detail.message, detail.param.as_deref());
            match by_message {
                Some(k) if matches!(kind, FailureKind::Internal | FailureKind::UpstreamStatus) => k,
                _ => kind,
            }
        }
        None => {
            let lower: String = detail
                .kind
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .collect::<String>()
                .to_ascii_lowercase();
            if lower.contains("unavailable") || lower.contains("overload") {
                FailureKind::Overloaded
            } else if lower.contains("badrequest") || lower.contains("invalid") {
                kind_for_status(400, &detail.message, detail.param.as_deref())
            } else if by_message.is_none() && says_bad_input(&detail.message) {
                FailureKind::InvalidRequest
            } else {
                by_message.unwrap_or(FailureKind::Internal)
            }
        }
    };
    let message = if detail.message.trim().is_empty() {
        "engine: the engine failed the stream".to_owned()
    } else {
        short(&detail.message)
    };
    let mut error = BackendError::new(kind, message).with_phase(phase);
    if let Some(code) = code {
        error = error.with_upstream_status(code);
    }
    error
}

/// One native `/generate` event, read leniently.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct NativeChunk {
    text: Option<String>,
    output_ids: Option<Vec<u32>>,
    meta_info: Option<MetaInfo>,
    index: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MetaInfo {
    finish_reason: Option<Value>,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    cached_tokens: Option<u64>,
    #[serde(alias = "spec_num_correct_drafts")]
    spec_accepted_drafts: Option<u64>,
    #[serde(alias = "spec_num_proposed_drafts")]
    spec_proposed_drafts: Option<u64>,
    /// `[[logprob, token_id, text], ...]` with `return_logprob`.
    output_token_logprobs: Option<Value>,
    /// Per token, `null` or its top alternatives as `[logprob, token_id,
    /// text]`, with `top_logprobs_num`.
    output_top_logprobs: Option<Value>,
}

/// Logprob given for a token SGLang sends without one (`null`): OpenAI's
/// "very unlikely".
const UNLIKELY: f64 = -9999.0;

/// One `(logprob, token_id, token_text)` entry of SGLang's logprob lists;
/// the text is `null` unless `return_text_in_logprobs`.
#[derive(Debug, Default)]
struct LogprobEntry {
    logprob: f64,
    text: String,
}

impl<'de> Deserialize<'de> for LogprobEntry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entry;
        impl<'de> Visitor<'de> for Entry {
            type Value = LogprobEntry;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a [logprob, token_id, text] entry")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<LogprobEntry, A::Error> {
                let logprob = seq.next_element::<Option<f64>>()?.flatten();
                let _id = seq.next_element::<IgnoredAny>()?;
                let text = seq.next_element::<Option<String>>()?.flatten();
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(LogprobEntry {
                    logprob: logprob.unwrap_or(UNLIKELY),
                    text: text.unwrap_or_default(),
                })
            }
        }
        deserializer.deserialize_seq(Entry)
    }
}

/// The entries of a logprob list from index `skip` on (unreadable ones
/// left out).
fn entries_from<T: serde::de::DeserializeOwned>(list: Option<Value>, skip: usize) -> Vec<T> {
    match list {
        Some(Value::Array(items)) => items
            .into_iter()
            .skip(skip)
            .filter_map(|item| serde_json::from_value(item).ok())
            .collect(),
        _ => Vec::new(),
    }
}

/// SGLang's native events, for the shared [`Reader`]: cumulative (or
/// incremental) text turned into exact deltas, each event's tokens from
/// `completion_tokens`, the logprobs asked for, usage from the final
/// `meta_info`, in-stream errors and `abort` finishes.
struct NativeFrames {
    shared: Arc<Shared>,
    /// Sends `/abort_request` when dropped, unless the engine ended the
    /// request itself.
    abort: Option<AbortGuard>,
    incremental: bool,
    /// Whether the request asked for logprobs.
    logprobs: bool,
    /// The text forwarded so far (cumulative mode).
    forwarded: String,
    /// `completion_tokens` of the last event.
    seen_tokens: u64,
    /// `output_ids.len()` of the last event.
    seen_ids: u64,
    /// Entries of `output_token_logprobs` already forwarded (cumulative mode).
    seen_logprobs: usize,
    /// The final event's `meta_info`.
    last_meta: Option<MetaInfo>,
}

impl NativeFrames {
    /// The engine ended the request itself: no `/abort_request` for it.
    fn engine_ended(&mut self) {
        if let Some(guard) = self.abort.as_mut() {
            guard.disarm();
        }
    }

    /// The logprobs of the tokens `meta` adds: SGLang's lists are
    /// cumulative like the text (only the new entries are taken), or hold
    /// only the new tokens with `--incremental-streaming-output`.
    fn new_logprobs(&mut self, meta: &mut MetaInfo) -> Vec<TokenLogprob> {
        let skip = if self.incremental {
            0
        } else {
            self.seen_logprobs
        };
        let tokens: Vec<LogprobEntry> = entries_from(meta.output_token_logprobs.take(), skip);
        let mut tops: Vec<Option<Vec<LogprobEntry>>> =
            entries_from(meta.output_top_logprobs.take(), skip);
        if !self.incremental {
            self.seen_logprobs += tokens.len();
        }
        tokens
            .into_iter()
            .enumerate()
            .map(|(i, entry)| TokenLogprob {
                token: entry.text,
                logprob: entry.logprob,
                bytes: None,
                top_logprobs: tops
                    .get_mut(i)
                    .and_then(Option::take)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|top| TopLogprob {
                        token: top.text,
                        logprob: top.logprob,
                        bytes: None,
                    })
                    .collect(),
            })
            .collect()
    }
}

impl Frames for NativeFrames {
    fn on_event(&mut self, event: SseEvent, emit: &mut Emit) -> Flow {
        if event.data.is_empty() {
            return Flow::Continue;
        }
        if event.is_done() {
            return emit.end_marker();
        }
        if emit.finished() {
            // Only `[DONE]` may follow the final event.
            return Flow::Continue;
        }
        let value: Value = match serde_json::from_str(&event.data) {
            Ok(value) => value,
            Err(_) => return emit.fail(protocol("the engine sent malformed JSON", emit.phase())),
        };
        if value.get("error").is_some() {
            let detail = parse_upstream_error(event.data.as_bytes()).unwrap_or_default();
            let error = event_error(&detail, emit.phase());
            if error.kind() == FailureKind::Overloaded {
                self.shared.pressure.mark_overloaded(None);
            }
            self.engine_ended();
            return emit.fail(error);
        }
        let chunk: NativeChunk = match serde_json::from_value(value) {
            Ok(chunk) => chunk,
            Err(_) => {
                return emit.fail(protocol(
                    "the engine sent an unreadable event",
                    emit.phase(),
                ));
            }
        };
        if chunk.index.unwrap_or(0) != 0 {
            return Flow::Continue;
        }
        let mut meta = chunk.meta_info.unwrap_or_default();
        let finish = match meta.finish_reason.take() {
            None | Some(Value::Null) => None,
            Some(reason) => Some(reason),
        };
        // Tokens this event adds.
        let ids = chunk.output_ids.as_ref().map(|ids| ids.len() as u64);
        let ids_before = self.seen_ids;
        let tokens = match (meta.completion_tokens, ids) {
            (Some(total), _) => total.saturating_sub(self.seen_tokens),
            (None, Some(n)) if self.incremental => n,
            (None, Some(n)) => n.saturating_sub(self.seen_ids),
            (None, None) => 1,
        };
        if let Some(total) = meta.completion_tokens {
            self.seen_tokens = self.seen_tokens.max(total);
        }
        if let Some(n) = ids {
            self.seen_ids = self.seen_ids.max(n);
        }
        let text = chunk.text.unwrap_or_default();
        let piece = if self.incremental {
            text
        } else {
            if !text.starts_with(self.forwarded.as_str()) {
                return emit.fail(protocol(
                    "the engine's cumulative text does not extend the text already sent",
                    emit.phase(),
                ));
            }
            // Hold back a trailing U+FFFD until it resolves (not at the end).
            let stable = if finish.is_some() {
                text.as_str()
            } else {
                text.trim_end_matches('\u{FFFD}')
            };
            let new = stable
                .get(self.forwarded.len()..)
                .unwrap_or_default()
                .to_owned();
            self.forwarded.push_str(&new);
            new
        };
        let mut delta = Delta::text(piece, u32::try_from(tokens).unwrap_or(u32::MAX));
        // The new tokens' ids (`output_ids`: cumulative, or this event's with
        // incremental output), when they are exactly the tokens it adds.
        let new_ids = match chunk.output_ids {
            Some(ids) if self.incremental => ids,
            Some(ids) => usize::try_from(ids_before)
                .ok()
                .and_then(|from| ids.get(from..))
                .map(<[u32]>::to_vec)
                .unwrap_or_default(),
            None => Vec::new(),
        };
        if new_ids.len() as u64 == tokens {
            delta.token_ids = new_ids;
        }
        if self.logprobs {
            delta.logprobs = self.new_logprobs(&mut meta);
        }
        if emit.output(delta) == Flow::End {
            return Flow::End;
        }
        let Some(reason) = finish else {
            return Flow::Continue;
        };
        self.engine_ended();
        match finish_of(&reason) {
            Ok(reason) => {
                self.last_meta = Some(meta);
                emit.finish_now(Some(reason));
                Flow::Continue
            }
            Err(error) => {
                let error = error.with_phase(emit.phase());
                if error.kind() == FailureKind::Overloaded {
                    self.shared.pressure.mark_overloaded(None);
                }
                emit.fail(error)
            }
        }
    }

    fn reported_completion(&self) -> Option<u64> {
        self.last_meta.as_ref().and_then(|m| m.completion_tokens)
    }

    fn final_usage(&mut self, delivered: u64) -> Option<Usage> {
        let meta = self.last_meta.as_ref()?;
        Some(Usage::clamped(
            meta.prompt_tokens?,
            meta.cached_tokens.unwrap_or(0),
            delivered,
            meta.spec_proposed_drafts.unwrap_or(0),
            meta.spec_accepted_drafts.unwrap_or(0),
            0,
        ))
    }

    fn on_close(&mut self) {
        drop(self.abort.take());
    }
}

/// The finish of a `meta_info.finish_reason` (a dict, or a plain string
/// in some builds).
fn finish_of(reason: &Value) -> Result<FinishReason, BackendError> {
    let kind = match reason {
        Value::String(s) => s.as_str(),
        Value::Object(o) => o.get("type").and_then(Value::as_str).unwrap_or("stop"),
        _ => "stop",
    };
    match kind {
        "length" => Ok(FinishReason::Length),
        "abort" => {
            let message = reason
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("the engine aborted the request");
            match reason.get("status_code").and_then(Value::as_u64) {
                Some(code) => {
                    let code = u16::try_from(code).unwrap_or(500);
                    let mut kind = kind_for_status(code, message, None);
                    if matches!(kind, FailureKind::Internal | FailureKind::UpstreamStatus)
                        && let Some(k) = message_kind(message)
                    {
                        kind = k;
                    }
                    Err(BackendError::new(kind, short(message)).with_upstream_status(code))
                }
                None => Err(BackendError::new(
                    FailureKind::Canceled,
                    format!(
                        "request canceled: {} ({})",
                        CancelReason::Aborted,
                        short(message)
                    ),
                )),
            }
        }
        // `stop` and engine-specific stops.
        _ => Ok(FinishReason::Stop),
    }
}

/// SGLang's gauges for `model` in a scrape: running and waiting summed
/// over the model's label sets (ranks), KV use averaged.
pub(crate) fn sglang_gauges(text: &str, model: &str) -> Option<Gauges> {
    const RUNNING: &str = "sglang:num_running_reqs";
    const WAITING: &str = "sglang:num_queue_reqs";
    const KV: &str = "sglang:token_usage";
    let mut gauges = Gauges::default();
    let (mut seen, mut kv) = (false, (0.0, 0u32));
    for line in text.lines() {
        let Some(name) = prometheus::line_name(line) else {
            continue;
        };
        if !matches!(name, RUNNING | WAITING | KV) {
            continue;
        }
        let Some(sample) = prometheus::parse_line(line) else {
            continue;
        };
        if sample.label("model_name").is_some_and(|m| m != model) || !sample.value.is_finite() {
            continue;
        }
        match name {
            RUNNING => {
                gauges.running += sample.value;
                seen = true;
            }
            WAITING => {
                gauges.waiting += sample.value;
                seen = true;
            }
            _ => kv = (kv.0 + sample.value, kv.1 + 1),
        }
    }
    if kv.1 > 0 {
        gauges.kv_usage = kv.0 / f64::from(kv.1);
    }
    seen.then_some(gauges)
}

/// For the fuzz targets: `chunks` read as SGLang's native `/generate`
/// stream (`incremental`: `--incremental-streaming-output`; `logprobs`: the
/// request asked for them), through the shared reader. No `/abort_request`
/// is armed.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_read(
    incremental: bool,
    logprobs: bool,
    cap: u64,
    max_event_bytes: usize,
    chunks: &[&[u8]],
    end: super::reader::BodyEnd,
) -> Option<(Vec<gateway_core::TokenResult>, usize)> {
    static SHARED: std::sync::OnceLock<Option<Arc<Shared>>> = std::sync::OnceLock::new();
    let shared = SHARED
        .get_or_init(|| {
            let config = UpstreamConfig::new("fuzz", "http://127.0.0.1:9", "m");
            Some(Arc::new(Shared {
                live: LiveRequests::new(1),
                client: upstream::client(&config).ok()?,
                abort_uri: parse_uri("http://127.0.0.1:9/abort_request").ok()?,
                auth: None,
                abort_timeout: Duration::from_secs(1),
                pressure: PressureCell::new(None),
            }))
        })
        .clone()?;
    let frames = NativeFrames {
        shared,
        abort: None,
        incremental,
        logprobs,
        forwarded: String::new(),
        seen_tokens: 0,
        seen_ids: 0,
        seen_logprobs: 0,
        last_meta: None,
    };
    Some(super::reader::read_chunks(
        frames,
        cap,
        max_event_bytes,
        chunks,
        end,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_read_sglang_names_for_the_model() {
        let text = "# TYPE sglang:num_queue_reqs gauge\n\
sglang:num_queue_reqs{engine_type=\"unified\",model_name=\"m\",moe_ep_rank=\"0\",pp_rank=\"0\",tp_rank=\"0\"} 7.0\n\
sglang:num_running_reqs{engine_type=\"unified\",model_name=\"m\",moe_ep_rank=\"0\",pp_rank=\"0\",tp_rank=\"0\"} 2.0\n\
sglang:num_running_reqs{engine_type=\"unified\",model_name=\"other\",moe_ep_rank=\"0\",pp_rank=\"0\",tp_rank=\"0\"} 9.0\n\
sglang:token_usage{engine_type=\"unified\",model_name=\"m\",moe_ep_rank=\"0\",pp_rank=\"0\",tp_rank=\"0\"} 0.42\n";
        let g = sglang_gauges(text, "m").unwrap_or_default();
        assert_eq!((g.running, g.waiting), (2.0, 7.0));
        assert!((g.kv_usage - 0.42).abs() < 1e-9);
        assert_eq!(sglang_gauges("python_info 1\n", "m"), None);
    }

    #[test]
    fn finish_dicts_map_to_reasons_and_errors() {
        let stop = serde_json::json!({"type": "stop", "matched": 151_645});
        assert_eq!(finish_of(&stop).ok(), Some(FinishReason::Stop));
        let length = serde_json::json!({"type": "length", "length": 8});
        assert_eq!(finish_of(&length).ok(), Some(FinishReason::Length));
        let full = serde_json::json!({"type": "abort", "status_code": 503, "message": "The request queue is full."});
        assert_eq!(
            finish_of(&full).err().map(|e| e.kind()),
            Some(FailureKind::Overloaded)
        );
        let aborted = serde_json::json!({"type": "abort", "message": "Abort before prefill"});
        assert_eq!(
            finish_of(&aborted).err().map(|e| e.kind()),
            Some(FailureKind::Canceled)
        );
    }

    #[test]
    fn chat_fields_are_openai_and_sglang_extras() {
        use crate::openai::pass_through::OPENAI_CHAT;
        let expected: Vec<&str> = OPENAI_CHAT.iter().chain(CHAT_EXTRA).copied().collect();
        assert_eq!(SGLANG_CHAT_FIELDS, expected.as_slice());
    }

    #[test]
    fn logprob_asks_read_sglang_then_openai_fields() {
        let ask = |extra: &str| logprob_ask(Some(extra));
        assert_eq!(
            ask(r#"{"return_logprob":true,"top_logprobs_num":3}"#),
            Some(3)
        );
        assert_eq!(ask(r#"{"return_logprob":true}"#), Some(0));
        assert_eq!(ask(r#"{"return_logprob":false,"logprobs":2}"#), None);
        assert_eq!(ask(r#"{"logprobs":2}"#), Some(2));
        assert_eq!(ask(r#"{"logprobs":0}"#), Some(0));
        assert_eq!(ask(r#"{"logprobs":true,"top_logprobs":5}"#), Some(5));
        assert_eq!(ask(r#"{"logprobs":false,"top_logprobs":5}"#), None);
        assert_eq!(ask(r#"{"logprobs":null}"#), None);
        assert_eq!(ask(r#"{"logprobs":-1}"#), None);
        assert_eq!(ask(r#"{"top_logprobs_num":2}"#), None);
        assert_eq!(ask(r#"{"temperature_logprob_like":1}"#), None);
        assert_eq!(logprob_ask(None), None);
    }

    #[test]
    fn logprob_entries_are_read_leniently() {
        let list = serde_json::json!([[-0.5, 7, "a"], [null, 8, null], [-1.0, 9, "c", "x"], "bad"]);
        let entries: Vec<LogprobEntry> = entries_from(Some(list.clone()), 0);
        let read: Vec<(f64, &str)> = entries
            .iter()
            .map(|e| (e.logprob, e.text.as_str()))
            .collect();
        assert_eq!(read, [(-0.5, "a"), (UNLIKELY, ""), (-1.0, "c")]);
        let entries: Vec<LogprobEntry> = entries_from(Some(list), 2);
        assert_eq!(entries.len(), 1);
        assert!(entries_from::<LogprobEntry>(Some(Value::Null), 0).is_empty());
    }

    #[test]
    fn native_messages_are_typed() {
        assert_eq!(
            message_kind("The request queue is full."),
            Some(FailureKind::Overloaded)
        );
        assert_eq!(
            message_kind(
                "The input (9000 tokens) is longer than the model's context length (8192 tokens)."
            ),
            Some(FailureKind::ContextLengthExceeded)
        );
        assert_eq!(message_kind("boom"), None);
    }
}
