//! The shared client of OpenAI-compatible engines: one pooled HTTP/1.1
//! client, the upstream request body, the SSE stream turned into
//! [`TokenEvent`]s, typed failures, cancellation by closing the
//! connection, and pressure from a background metrics scrape.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gateway_core::http::{self, HeaderValue, Method, Request, StatusCode, Uri, header};
use gateway_core::{
    Backend, BackendError, BackendInfo, BackendRequest, CancelHandle, EmbedAttempt, Embeddings,
    EngineKind, FailureKind, FailurePhase, FinishReason, Health, LiveRequests, Pressure, Prompt,
    RequestId, TokenStream, Usage,
};
use http_body_util::Full;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::OnDisconnect;
use super::pressure_cell::{Gauges, HasPressure, PressureCell};
use super::prometheus;
use super::reader::{self, Drain, EVENT_BUFFER, Emit, Flow, Frames, Reader, Settings};
use super::scrape::Scraper;
use super::upstream::{
    self, HttpClient, SIDE_CALL_TIMEOUT, UpstreamError, deadline_passed, parse_uri, protocol,
    read_limited, retry_after, total_timeout, transport_error,
};
use crate::openai::chunk::WireChoice;
use crate::openai::types::{
    ChatCompletionRequest, CompletionRequest, CompletionUsage, ErrorCode, ErrorDetail, ModelList,
    parse_finish_reason,
};
use crate::openai::{SseDecoder, SseEvent, merge_extra, parse_upstream_error};

mod chunk_fast;
mod embed;

use chunk_fast::ChunkReader;

/// Most bytes of an error body read.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Most bytes of a `/v1/models` answer read.
const MAX_MODELS_BODY: usize = 1024 * 1024;
/// Longest engine message passed on in an error.
const MAX_MESSAGE_CHARS: usize = 512;

/// Why an engine adapter could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// A URL that cannot be used.
    #[error("invalid URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The environment variable holding the API key is unset or empty.
    #[error("environment variable `{0}` (api_key_env) is not set")]
    MissingApiKey(String),
    /// The engine needs an API key (`api_key_env`) and none is configured.
    #[error("engine `{0}` needs an API key: set api_key_env")]
    ApiKeyRequired(EngineKind),
    /// An engine kind this module has no adapter for.
    #[error("engine `{0}` has no OpenAI-compatible adapter")]
    UnsupportedEngine(EngineKind),
    /// `on_disconnect = "drain"` for an engine whose adapter only aborts.
    #[error("engine `{0}` does not drain: on_disconnect must be \"abort\"")]
    DrainUnsupported(EngineKind),
    /// The TLS settings cannot be used (`ca_file` unreadable or without a
    /// certificate).
    #[error("TLS setup with `{path}`: {reason}")]
    Tls {
        /// The CA file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// Where an engine is and how to talk to it.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// The backend's unique name (labels, logs).
    pub name: String,
    /// Public model names it serves.
    pub models: Vec<String>,
    /// The model's name at the engine, sent unless a request names another
    /// (`BackendRequest::served_model`); `None`: the first public name.
    pub served_model: Option<String>,
    /// The engine's base URL, `http://host:port` or `https://host` (a
    /// trailing `/` or `/v1` is dropped; the routes add `/v1/...`
    /// themselves).
    pub url: String,
    /// Where to scrape Prometheus metrics; `None` uses the engine's
    /// default route, if it has one.
    pub metrics_url: Option<String>,
    /// The credential sent as `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// How many requests the gateway sends at once, if limited (reported in
    /// [`Pressure::limit`]).
    pub max_concurrency: Option<u32>,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// How often metrics are scraped.
    pub scrape_interval: Duration,
    /// Idle pooled connections kept.
    pub pool_max_idle: usize,
    /// Hard cap on requests in flight through this adapter (beyond it,
    /// `start` answers `Overloaded` at once).
    pub max_inflight: u32,
    /// Bound on one server-sent event.
    pub max_event_bytes: usize,
    /// What a client's leaving does to a started stream: abort (close the
    /// connection, the default) or drain it to its end, bounded by
    /// `max_tokens` and the drain timeout
    /// ([`Backend::drain_on_client_gone`]).
    pub on_disconnect: OnDisconnect,
    /// A PEM file of certificates trusted for `https` besides the Mozilla
    /// roots (a private CA).
    pub ca_file: Option<PathBuf>,
}

impl fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("name", &self.name)
            .field("models", &self.models)
            .field("served_model", &self.served_model)
            .field("url", &self.url)
            .field("metrics_url", &self.metrics_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("max_concurrency", &self.max_concurrency)
            .field("connect_timeout", &self.connect_timeout)
            .field("scrape_interval", &self.scrape_interval)
            .field("pool_max_idle", &self.pool_max_idle)
            .field("max_inflight", &self.max_inflight)
            .field("max_event_bytes", &self.max_event_bytes)
            .field("on_disconnect", &self.on_disconnect)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl UpstreamConfig {
    /// A backend named `name` at `url` serving public model `model`, with
    /// defaults: no key, connect timeout 2 s, scrape every 1 s, 32 idle
    /// connections, at most 4096 in flight, events up to 1 MiB, abort on
    /// disconnect.
    pub fn new(name: impl Into<String>, url: impl Into<String>, model: impl Into<String>) -> Self {
        UpstreamConfig {
            name: name.into(),
            models: vec![model.into()],
            served_model: None,
            url: url.into(),
            metrics_url: None,
            api_key: None,
            max_concurrency: None,
            connect_timeout: Duration::from_secs(2),
            scrape_interval: Duration::from_secs(1),
            pool_max_idle: 32,
            max_inflight: 4096,
            max_event_bytes: SseDecoder::DEFAULT_MAX_EVENT_BYTES,
            on_disconnect: OnDisconnect::Abort,
            ca_file: None,
        }
    }
}

/// How an engine answers whether it can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthCheck {
    /// `GET <path>`: 200 is healthy (vLLM's `/health`).
    Status(&'static str),
    /// `GET <path>` answers an OpenAI model list, which must hold the
    /// served model (`/v1/models`).
    Models(&'static str),
}

/// Which of a request's pass-through extra fields reach the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtraFields {
    /// All of them (engines that accept or ignore unknown fields).
    PassThrough,
    /// Only the named top-level fields, per route; the rest are dropped
    /// (engines that answer 400 to an unknown field).
    Only {
        /// Allowed on the chat route.
        chat: &'static [&'static str],
        /// Allowed on the completions route.
        completions: &'static [&'static str],
    },
}

/// The Prometheus gauges an engine's load is read from. For each gauge the
/// first name in its list that has samples wins; running and waiting are
/// summed over the model's label sets, KV use is averaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricNames {
    /// Requests being computed.
    pub running: &'static [&'static str],
    /// Requests queued.
    pub waiting: &'static [&'static str],
    /// KV-cache use, 0..1.
    pub kv_usage: &'static [&'static str],
    /// Labels naming the model; samples of another model are skipped.
    pub model_labels: &'static [&'static str],
    /// Whether the running gauge counts the waiting requests too (then
    /// running = running − waiting).
    pub running_includes_waiting: bool,
}

/// vLLM's gauges (`/metrics`).
pub const VLLM_METRICS: MetricNames = MetricNames {
    running: &["vllm:num_requests_running"],
    waiting: &["vllm:num_requests_waiting"],
    kv_usage: &["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"],
    model_labels: &["model_name"],
    running_includes_waiting: false,
};

/// A failure kind chosen by the engine's message: when the status (HTTP,
/// or the `code` of an error frame) is `status` (`None`: any, frames
/// without a code included) and the lowercased message contains
/// `contains`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageRule {
    /// The status it applies to; `None` for any.
    pub status: Option<u16>,
    /// A lowercase fragment of the message.
    pub contains: &'static str,
    /// The kind it means.
    pub kind: FailureKind,
}

/// How one engine departs from vLLM's wire behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quirks {
    /// Which extra fields are sent.
    pub extra: ExtraFields,
    /// The load gauges.
    pub metrics: MetricNames,
    /// Failure kinds read from messages, checked before the defaults.
    pub message_rules: &'static [MessageRule],
    /// Whether a body cut without its end (the connection closed inside
    /// the chunked body) is the engine's way to fail a stream: then it is
    /// a `ProtocolViolation` (a truncated stream) instead of `Connect`.
    pub cut_body_is_truncation: bool,
    /// The request field that, set to `true`, makes the engine send each
    /// chunk's token ids (vLLM's `return_token_ids`): the gateway then
    /// counts the output exactly instead of re-tokenizing its text, which
    /// does not always give back the generated tokens.
    pub ask_token_ids: Option<&'static str>,
    /// Whether a chunk with a finish reason and no output (an empty
    /// `delta`, `"text":""`) only marks the end. Dynamo's frontend sends
    /// the finish reason in a chunk of its own after the last token; vLLM
    /// puts it on the last token's chunk, whose text may be empty (an end
    /// token that decodes to nothing), and that chunk is a token.
    pub finish_chunk_is_marker: bool,
}

impl Quirks {
    /// vLLM's behaviour: extras passed through, vLLM gauges, no message
    /// rules, a cut body is a transport failure, token ids asked for with
    /// `return_token_ids`.
    pub const VLLM: Quirks = Quirks {
        extra: ExtraFields::PassThrough,
        metrics: VLLM_METRICS,
        message_rules: &[],
        cut_body_is_truncation: false,
        ask_token_ids: Some("return_token_ids"),
        finish_chunk_is_marker: false,
    };

    /// Any OpenAI-compatible server: as [`VLLM`](Self::VLLM), but nothing
    /// beyond OpenAI's fields is added to a request.
    pub const OPENAI: Quirks = Quirks {
        ask_token_ids: None,
        ..Quirks::VLLM
    };
}

impl Default for Quirks {
    fn default() -> Self {
        Quirks::VLLM
    }
}

/// The routes of an OpenAI-compatible engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routes {
    /// Which engine this is.
    pub engine: EngineKind,
    /// Chat completions (`/v1/chat/completions`).
    pub chat: &'static str,
    /// Legacy completions (`/v1/completions`).
    pub completions: &'static str,
    /// The health check.
    pub health: HealthCheck,
    /// The default Prometheus route, scraped when no metrics URL is given.
    pub metrics: Option<&'static str>,
}

/// An OpenAI-compatible engine as a [`Backend`]: vLLM
/// ([`vllm::backend`](super::vllm::backend)) or any OpenAI-style server
/// ([`openai::backend`](super::openai::backend)).
///
/// - `start` sends one streamed request (`stream: true`, usage asked for,
///   `max_tokens` = the budget's cap, the served model name, the request's
///   extra fields merged in, `X-Request-Id` = the request id) and resolves
///   when the response head arrives; the body becomes `Started`, one
///   `Delta` per content chunk (one token each unless the chunk carries
///   `token_ids`), `Usage` from the usage chunk, `Finished`.
/// - Canceling the handle, dropping the stream, `abort(id)` or passing the
///   deadline closes the HTTP connection, which is how vLLM aborts.
/// - `pressure()` returns the last background scrape of the engine's
///   Prometheus gauges; the scraper stops when the backend is dropped.
#[derive(Clone)]
pub struct OpenAiCompatBackend {
    inner: Arc<Inner>,
}

impl fmt::Debug for OpenAiCompatBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiCompatBackend")
            .field("info", &self.inner.info)
            .field("url", &self.inner.base)
            .field("served_model", &self.inner.served_model)
            .finish_non_exhaustive()
    }
}

struct Inner {
    info: BackendInfo,
    base: String,
    served_model: String,
    client: HttpClient,
    chat_uri: Uri,
    completions_uri: Uri,
    health: (HealthCheck, Uri),
    auth: Option<HeaderValue>,
    quirks: Quirks,
    max_event_bytes: usize,
    /// `Some(timeout)`: drain on a client's leaving.
    drain: Option<Duration>,
    shared: Arc<Shared>,
    /// The metrics scrape; it stops when the backend is dropped.
    scraper: Scraper,
}

/// State shared with the reader tasks and the scraper.
struct Shared {
    /// The live attempts, for `abort(id)` and the in-flight count.
    live: LiveRequests,
    pressure: PressureCell,
}

impl HasPressure for Shared {
    fn pressure(&self) -> &PressureCell {
        &self.pressure
    }
}

/// The base URL without a trailing `/` or `/v1`.
fn base_url(url: &str) -> &str {
    let url = url.trim_end_matches('/');
    url.strip_suffix("/v1").unwrap_or(url)
}

impl OpenAiCompatBackend {
    /// An adapter for the engine with `routes`, described by `config`.
    ///
    /// Starts the metrics scraper if a runtime is running (else on the
    /// first `start` or `health`).
    ///
    /// # Errors
    /// [`EngineError::InvalidUrl`] for a URL that is not `http(s)://host...`,
    /// [`EngineError::Tls`] for an unusable `ca_file`.
    pub fn new(routes: Routes, config: UpstreamConfig) -> Result<Self, EngineError> {
        Self::with_quirks(routes, Quirks::VLLM, config)
    }

    /// An adapter for the engine with `routes` and `quirks`, described by
    /// `config`.
    ///
    /// # Errors
    /// [`EngineError::InvalidUrl`] for a URL that is not `http(s)://host...`,
    /// [`EngineError::Tls`] for an unusable `ca_file`.
    pub fn with_quirks(
        routes: Routes,
        quirks: Quirks,
        config: UpstreamConfig,
    ) -> Result<Self, EngineError> {
        parse_uri(&config.url)?;
        let base = base_url(&config.url).to_owned();
        let route = |path: &str| parse_uri(&format!("{base}{path}"));
        let chat_uri = route(routes.chat)?;
        let completions_uri = route(routes.completions)?;
        let health = match routes.health {
            HealthCheck::Status(path) | HealthCheck::Models(path) => (routes.health, route(path)?),
        };
        let metrics_uri = match (&config.metrics_url, routes.metrics) {
            (Some(url), _) => Some(parse_uri(url)?),
            (None, Some(path)) => Some(route(path)?),
            (None, None) => None,
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
                engine: routes.engine,
                models: config.models,
            },
            base,
            served_model,
            client,
            chat_uri,
            completions_uri,
            health,
            auth,
            quirks,
            max_event_bytes: config.max_event_bytes,
            drain: config.on_disconnect.drain_timeout(),
            shared,
            scraper: Scraper::new(metrics_uri, config.scrape_interval),
        };
        let backend = OpenAiCompatBackend {
            inner: Arc::new(inner),
        };
        backend.inner.ensure_scraper();
        Ok(backend)
    }

    /// The model name sent to the engine by default (a request's
    /// `served_model` wins).
    pub fn served_model(&self) -> &str {
        &self.inner.served_model
    }
}

impl Inner {
    fn ensure_scraper(&self) {
        let (model, names) = (self.served_model.clone(), self.quirks.metrics);
        self.scraper
            .ensure(&self.client, &self.shared, move |text| {
                engine_gauges(text, &model, &names)
            });
    }

    /// The route, the chunk shape and the JSON body for `request`.
    fn upstream_body(&self, request: &BackendRequest) -> Result<(Uri, Bytes), BackendError> {
        let generate = request.request.as_ref();
        let model = if request.served_model.is_empty() {
            self.served_model.as_str()
        } else {
            request.served_model.as_str()
        };
        let cap = Some(request.budget.max_completion_tokens);
        let chat = matches!(generate.prompt, Prompt::Chat(_));
        let encoded = match generate.prompt {
            Prompt::Chat(_) => {
                ChatCompletionRequest::from_generate(generate, model, true).map(|mut body| {
                    body.max_tokens = cap;
                    (self.chat_uri.clone(), serde_json::to_vec(&body))
                })
            }
            Prompt::Text(_) | Prompt::Tokens(_) => {
                CompletionRequest::from_generate(generate, model, true).map(|mut body| {
                    body.max_tokens = cap;
                    (self.completions_uri.clone(), serde_json::to_vec(&body))
                })
            }
        };
        let Some((uri, Ok(mut body))) = encoded else {
            return Err(BackendError::new(
                FailureKind::Internal,
                "the request could not be encoded for the engine",
            ));
        };
        if let Some(field) = self.quirks.ask_token_ids {
            // Before the extras, so that this value wins over a client's.
            ask_true(&mut body, field);
        }
        if let Some(extra) = &generate.extra {
            let filtered;
            let extra = match self.quirks.extra {
                ExtraFields::PassThrough => &**extra,
                ExtraFields::Only {
                    chat: on_chat,
                    completions,
                } => {
                    let allowed = if chat { on_chat } else { completions };
                    filtered = allowed_extra(extra, allowed)?;
                    filtered.as_str()
                }
            };
            merge_extra(&mut body, extra).map_err(|e| {
                BackendError::new(FailureKind::InvalidRequest, e.to_string()).with_source(e)
            })?;
        }
        if chat && let Some(tools) = &generate.tools {
            // As the client wrote them: the engine's template renders them,
            // and the estimate counted these bytes.
            merge_extra(&mut body, &format!("{{\"tools\":{tools}}}")).map_err(|e| {
                BackendError::new(FailureKind::InvalidRequest, e.to_string()).with_source(e)
            })?;
        }
        Ok((uri, Bytes::from(body)))
    }

    fn post(
        &self,
        uri: Uri,
        id: &RequestId,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, BackendError> {
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

    fn get(&self, uri: Uri, with_auth: bool) -> Result<Request<Full<Bytes>>, http::Error> {
        let mut builder = Request::builder().method(Method::GET).uri(uri);
        if with_auth && let Some(auth) = &self.auth {
            builder = builder.header(header::AUTHORIZATION, auth.clone());
        }
        builder.body(Full::new(Bytes::new()))
    }
}

/// Adds `"field":true` to the JSON object `body` (serde's output: `{...}`
/// with at least one member).
fn ask_true(body: &mut Vec<u8>, field: &str) {
    if body.last() == Some(&b'}') {
        body.pop();
        body.extend_from_slice(b",\"");
        body.extend_from_slice(field.as_bytes());
        body.extend_from_slice(b"\":true}");
    }
}

/// The top-level fields of `extra` (a JSON object) that are in `allowed`,
/// as a JSON object (keys sorted).
fn allowed_extra(extra: &str, allowed: &[&str]) -> Result<String, BackendError> {
    let invalid = || {
        BackendError::new(
            FailureKind::InvalidRequest,
            "extra fields must be a JSON object",
        )
    };
    let mut object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(extra).map_err(|_| invalid())?;
    object.retain(|key, _| allowed.contains(&key.as_str()));
    serde_json::to_string(&object).map_err(|_| invalid())
}

#[async_trait::async_trait]
impl Backend for OpenAiCompatBackend {
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
        let (uri, body) = inner.upstream_body(&request)?;
        let http_request = inner.post(uri, &id, body)?;
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
            let retry_after = retry_after(response.headers());
            let read = read_limited(response.into_body(), MAX_ERROR_BODY);
            let body = tokio::select! {
                biased;
                reason = cancel.canceled() => return Err(BackendError::canceled(reason)),
                () = deadline_passed(deadline) => return Err(total_timeout(before)),
                body = tokio::time::timeout(SIDE_CALL_TIMEOUT, read) => body.ok().flatten(),
            };
            let error = match inner.quirks.message_rules {
                [] => status_error(status, body.as_deref(), retry_after),
                rules => status_error_with(status, body.as_deref(), retry_after, rules),
            };
            if error.kind() == FailureKind::Overloaded {
                inner.shared.pressure.mark_overloaded(error.retry_after());
            }
            return Err(error);
        }
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let frames = ChunkFrames {
            shared: inner.shared.clone(),
            quirks: inner.quirks,
            usage: None,
            prompt_ids: PromptIds::Waiting,
            reader: ChunkReader::default(),
        };
        let reader = Reader::new(
            frames,
            Settings {
                cap: u64::from(request.budget.max_completion_tokens),
                deadline,
                cancel: cancel.clone(),
                max_event_bytes: inner.max_event_bytes,
                drain: inner.drain.map(|timeout| Drain {
                    timeout,
                    abort: live.attempt().abort_token().clone(),
                }),
                started: true,
            },
        );
        let read = reader.run(response.into_body(), tx, live);
        Ok(reader::stream(read, rx, cancel))
    }

    async fn abort(&self, id: &RequestId) -> Result<bool, BackendError> {
        Ok(self.inner.shared.live.abort(id))
    }

    fn drain_on_client_gone(&self) -> Option<Duration> {
        self.inner.drain
    }

    async fn embed(
        &self,
        request: EmbedAttempt,
        cancel: CancelHandle,
    ) -> Result<Embeddings, BackendError> {
        embed::embed(&self.inner, request, cancel).await
    }

    async fn health(&self) -> Health {
        let inner = &self.inner;
        inner.ensure_scraper();
        let (check, uri) = &inner.health;
        let request = match inner.get(uri.clone(), true) {
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
            if !status.is_success() {
                return Err(format!("health check answered {status}"));
            }
            match check {
                HealthCheck::Status(_) => Ok(()),
                HealthCheck::Models(_) => {
                    let body = read_limited(response.into_body(), MAX_MODELS_BODY)
                        .await
                        .ok_or_else(|| "unreadable model list".to_owned())?;
                    let list: ModelList = serde_json::from_slice(&body)
                        .map_err(|_| "the model list is not JSON".to_owned())?;
                    if list.data.iter().any(|m| m.id == inner.served_model) {
                        Ok(())
                    } else {
                        Err(format!(
                            "the engine does not list model `{}`",
                            inner.served_model
                        ))
                    }
                }
            }
        };
        match tokio::time::timeout(SIDE_CALL_TIMEOUT, call).await {
            Ok(Ok(())) => Health::Healthy,
            Ok(Err(why)) => Health::Unhealthy(why),
            Err(_) => Health::Unhealthy("health check timed out".to_owned()),
        }
    }
}

fn engine_message(detail: Option<&ErrorDetail>, fallback: &str) -> String {
    let text = detail
        .map(|d| d.message.trim())
        .filter(|m| !m.is_empty())
        .unwrap_or(fallback);
    let mut message: String = text.chars().take(MAX_MESSAGE_CHARS).collect();
    if message.len() < text.len() {
        message.push('…');
    }
    format!("engine: {message}")
}

fn is_context_length(message: &str, param: Option<&str>) -> bool {
    let lower = message.to_ascii_lowercase();
    param == Some("input_tokens")
        || lower.contains("context length")
        || lower.contains("max_model_len")
        || lower.contains("context window")
}

/// The kind a message rule gives `status` (`None` for a frame without a
/// code) and `message`.
fn rule_kind(rules: &[MessageRule], status: Option<u16>, message: &str) -> Option<FailureKind> {
    if rules.is_empty() {
        return None;
    }
    let lower = message.to_ascii_lowercase();
    rules
        .iter()
        .find(|r| r.status.is_none_or(|s| Some(s) == status) && lower.contains(r.contains))
        .map(|r| r.kind)
}

/// The failure kind of an engine status (HTTP, or the `code` of an error
/// frame) and its message.
///
/// Every 4xx but 401/403 (credentials), 404 (model), 408/499 (the engine's
/// own timeouts and cancels) and 429 (overload) is the request's fault:
/// `InvalidRequest` (or `ContextLengthExceeded`). A 500 whose message says
/// the input was bad ([`says_bad_input`]) is too: engines wrap validation
/// and grammar errors in 500s (SGLang's `Internal server error: 400: ..`,
/// a failed grammar compile).
pub(crate) fn kind_for_status(status: u16, message: &str, param: Option<&str>) -> FailureKind {
    match status {
        400 if is_context_length(message, param) => FailureKind::ContextLengthExceeded,
        401 | 403 => FailureKind::Unauthorized,
        404 => FailureKind::ModelNotFound,
        408 | 499 => FailureKind::UpstreamStatus,
        429 | 503 | 529 => FailureKind::Overloaded,
        400..=499 => FailureKind::InvalidRequest,
        500 if message.to_ascii_lowercase().contains("out of memory") => FailureKind::OutOfMemory,
        500 if says_bad_input(message) => FailureKind::InvalidRequest,
        500 => FailureKind::Internal,
        _ => FailureKind::UpstreamStatus,
    }
}

/// Lowercase fragments of an engine's 5xx message (or error `type`) that
/// mean the request's input was at fault: validation errors passed
/// through as 500s, and structured-output specs (grammars, JSON schemas,
/// regexes) the engine could not compile.
const BAD_INPUT_MARKERS: &[&str] = &[
    "badrequesterror",
    "bad request",
    "validationerror",
    "validation error",
    "invalid request",
    "grammar",
    "json schema",
    "jsonschema",
    "regex",
    "ebnf",
];

/// Whether an engine's 5xx message (or error `type`) says the request's
/// input was bad: one of [`BAD_INPUT_MARKERS`], or a wrapped 4xx
/// (`Internal server error: 400: ..`, SGLang's handler wrapping an
/// `HTTPException`) that [`kind_for_status`] calls the request's.
pub(crate) fn says_bad_input(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    if BAD_INPUT_MARKERS.iter().any(|m| lower.contains(m)) {
        return true;
    }
    lower
        .split_once("error: ")
        .and_then(|(_, rest)| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok())
        .is_some_and(|code| {
            (400..500).contains(&code)
                && kind_for_status(code, "", None) == FailureKind::InvalidRequest
        })
}

/// The error of a non-2xx answer before the stream.
pub(crate) fn status_error(
    status: StatusCode,
    body: Option<&[u8]>,
    retry_after: Option<Duration>,
) -> BackendError {
    status_error_with(status, body, retry_after, &[])
}

/// [`status_error`] with an engine's message rules.
pub(crate) fn status_error_with(
    status: StatusCode,
    body: Option<&[u8]>,
    retry_after: Option<Duration>,
    rules: &[MessageRule],
) -> BackendError {
    let detail = body.and_then(parse_upstream_error);
    let message = detail.as_ref().map_or("", |d| d.message.as_str());
    // An engine's message rule decides first; else the status, where a 500
    // whose `type` names a bad request is the request's.
    let kind = rule_kind(rules, Some(status.as_u16()), message).unwrap_or_else(|| {
        match kind_for_status(
            status.as_u16(),
            message,
            detail.as_ref().and_then(|d| d.param.as_deref()),
        ) {
            FailureKind::Internal if detail.as_ref().is_some_and(|d| says_bad_input(&d.kind)) => {
                FailureKind::InvalidRequest
            }
            kind => kind,
        }
    });
    let fallback = format!("the engine answered {status}");
    let mut error = BackendError::new(kind, engine_message(detail.as_ref(), &fallback))
        .with_upstream_status(status.as_u16());
    if let Some(after) = retry_after {
        error = error.with_retry_after(after);
    }
    error
}

/// The error of an in-stream error frame.
pub(crate) fn frame_error(detail: &ErrorDetail, phase: FailurePhase) -> BackendError {
    frame_error_with(detail, phase, &[])
}

/// [`frame_error`] with an engine's message rules.
pub(crate) fn frame_error_with(
    detail: &ErrorDetail,
    phase: FailurePhase,
    rules: &[MessageRule],
) -> BackendError {
    let code = match &detail.code {
        Some(ErrorCode::Number(n)) => u16::try_from(*n).ok(),
        Some(ErrorCode::Text(t)) => t.trim().parse().ok(),
        None => None,
    }
    .or_else(|| detail.kind.trim().parse().ok());
    let kind = rule_kind(rules, code, &detail.message).unwrap_or_else(|| {
        let kind = match code {
            Some(code) => kind_for_status(code, &detail.message, detail.param.as_deref()),
            None => kind_for_type(&detail.kind, &detail.message, detail.param.as_deref()),
        };
        if kind == FailureKind::Internal && says_bad_input(&detail.kind) {
            FailureKind::InvalidRequest
        } else {
            kind
        }
    });
    BackendError::new(
        kind,
        engine_message(Some(detail), "the engine failed the stream"),
    )
    .with_phase(phase)
}

fn kind_for_type(kind: &str, message: &str, param: Option<&str>) -> FailureKind {
    let lower: String = kind
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase();
    if lower.contains("unavailable") || lower.contains("overload") || lower.contains("ratelimit") {
        FailureKind::Overloaded
    } else if lower.contains("notfound") {
        FailureKind::ModelNotFound
    } else if lower.contains("auth") || lower.contains("permission") {
        FailureKind::Unauthorized
    } else if lower.contains("badrequest") || lower.contains("invalid") {
        kind_for_status(400, message, param)
    } else {
        FailureKind::Internal
    }
}

/// One streamed chunk, chat or completion, read leniently.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default)]
struct Chunk {
    error: Option<serde::de::IgnoredAny>,
    object: Option<String>,
    /// vLLM with `return_token_ids`: the prompt's ids, on a chat stream's
    /// role chunk.
    prompt_token_ids: Option<Vec<u32>>,
    choices: Option<Vec<WireChoice>>,
    usage: Option<CompletionUsage>,
    /// vLLM's per-request metrics (with `--per-request-spec-decode-metrics`),
    /// on the usage chunk.
    metrics: Option<ChunkMetrics>,
}

/// vLLM's top-level `metrics` object; only its speculative-decoding
/// summary is read.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default)]
struct ChunkMetrics {
    speculative_decoding: Option<SpecDecoding>,
}

/// vLLM's `metrics.speculative_decoding` (ENGINES.md §2; the field is
/// experimental in vLLM 0.32): draft tokens proposed and accepted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Deserialize)]
#[serde(default)]
struct SpecDecoding {
    num_draft_tokens: u64,
    num_accepted_draft_tokens: u64,
}

/// The OpenAI-style chunks of a streamed answer, for the shared
/// [`Reader`]: typed deltas (text, reasoning, tool calls, refusal,
/// logprobs), the usage chunk, in-stream error frames, `[DONE]`.
struct ChunkFrames {
    shared: Arc<Shared>,
    quirks: Quirks,
    usage: Option<Usage>,
    prompt_ids: PromptIds,
    /// The strict fast path for the common chunks, else serde.
    reader: ChunkReader,
}

/// The engine's prompt ids, passed on with the stream's first delta.
#[derive(Debug)]
enum PromptIds {
    /// None seen yet.
    Waiting,
    /// Seen, for the next delta.
    Held(Arc<[u32]>),
    /// Passed on (or a delta went out without them).
    Done,
}

impl ChunkFrames {
    /// The error of an in-stream error frame, with the engine's rules.
    fn frame_error(&self, detail: &ErrorDetail, phase: FailurePhase) -> BackendError {
        match self.quirks.message_rules {
            [] => frame_error(detail, phase),
            rules => frame_error_with(detail, phase, rules),
        }
    }
}

impl Frames for ChunkFrames {
    fn on_event(&mut self, event: SseEvent, emit: &mut Emit) -> Flow {
        if event.event.as_deref() == Some("error") {
            let detail =
                parse_upstream_error(event.data.as_bytes()).unwrap_or_else(|| ErrorDetail {
                    message: event.data.clone(),
                    ..ErrorDetail::default()
                });
            return emit.fail(self.frame_error(&detail, emit.phase()));
        }
        if event.data.is_empty() {
            return Flow::Continue;
        }
        if event.is_done() {
            return emit.end_marker();
        }
        let Some(chunk) = self.reader.read(&event.data) else {
            return emit.fail(protocol("the engine sent malformed JSON", emit.phase()));
        };
        if chunk.error.is_some() || chunk.object.as_deref() == Some("error") {
            let detail = parse_upstream_error(event.data.as_bytes()).unwrap_or_default();
            let error = self.frame_error(&detail, emit.phase());
            if error.kind() == FailureKind::Overloaded {
                self.shared.pressure.mark_overloaded(None);
            }
            return emit.fail(error);
        }
        if let Some(usage) = chunk.usage {
            let spec = chunk.metrics.and_then(|m| m.speculative_decoding);
            self.usage = Some(upstream_usage(&usage, spec));
        }
        if let (PromptIds::Waiting, Some(ids)) = (&self.prompt_ids, chunk.prompt_token_ids) {
            self.prompt_ids = PromptIds::Held(ids.into());
        }
        let mut choices = chunk.choices.unwrap_or_default();
        let Some(choice) = WireChoice::first(&mut choices) else {
            return Flow::Continue;
        };
        if emit.finish_seen() {
            // Nothing but usage may follow the finish.
            return Flow::Continue;
        }
        // Completions put the prompt's ids on the first choice.
        if let (PromptIds::Waiting, Some(ids)) = (&self.prompt_ids, choice.prompt_token_ids.take())
        {
            self.prompt_ids = PromptIds::Held(ids.into());
        }
        if let Some(mut delta) = choice.take_delta(&event.data)
            && !(self.quirks.finish_chunk_is_marker
                && choice.finish_reason.is_some()
                && !delta.has_output()
                && delta.token_ids.is_empty())
            && {
                if let PromptIds::Held(ids) =
                    std::mem::replace(&mut self.prompt_ids, PromptIds::Done)
                {
                    delta.prompt_token_ids = Some(ids);
                }
                emit.output(delta) == Flow::End
            }
        {
            return Flow::End;
        }
        if let Some(reason) = choice.finish_reason.as_deref() {
            match finish_reason(reason) {
                Ok(reason) => emit.set_finish(reason),
                Err(error) => return emit.fail(error.with_phase(emit.phase())),
            }
        }
        Flow::Continue
    }

    fn reported_completion(&self) -> Option<u64> {
        self.usage.map(|u| u.completion())
    }

    fn final_usage(&mut self, _delivered: u64) -> Option<Usage> {
        self.usage.take()
    }

    fn body_error(&self, error: UpstreamError, phase: FailurePhase) -> BackendError {
        if self.quirks.cut_body_is_truncation && error.is_cut_body() {
            protocol(
                "the engine's stream was cut without [DONE] (a failed stream)",
                phase,
            )
        } else {
            transport_error(error, phase)
        }
    }
}

/// The engine's usage: prompt, cached and completion tokens, and the
/// speculative-decoding drafts when vLLM reports them per request in the
/// chunk's `metrics` (the usage's prediction-token details are OpenAI's
/// Predicted Outputs, not speculative decoding, and are not read).
fn upstream_usage(usage: &CompletionUsage, spec: Option<SpecDecoding>) -> Usage {
    let cached = usage.prompt_tokens_details.map_or(0, |d| d.cached_tokens);
    let spec = spec.unwrap_or_default();
    let reasoning = usage
        .completion_tokens_details
        .and_then(|d| d.reasoning_tokens)
        .unwrap_or(0);
    Usage::clamped(
        usage.prompt_tokens,
        cached,
        usage.completion_tokens,
        spec.num_draft_tokens,
        spec.num_accepted_draft_tokens,
        0,
    )
    .with_reasoning(reasoning)
}

fn finish_reason(reason: &str) -> Result<FinishReason, BackendError> {
    match parse_finish_reason(reason) {
        Some(reason) => Ok(reason),
        None => match reason {
            "abort" => Err(BackendError::new(
                FailureKind::Internal,
                "the engine aborted the request",
            )),
            "error" => Err(BackendError::new(
                FailureKind::Internal,
                "the engine failed the request",
            )),
            // vLLM's `repetition` and other engine-specific stops.
            _ => Ok(FinishReason::Stop),
        },
    }
}

/// vLLM's gauges for `model` in a scrape: running and waiting summed over
/// the model's label sets (data-parallel engines), KV use averaged over
/// them (`vllm:kv_cache_usage_perc`, else `vllm:gpu_cache_usage_perc`).
/// `None` if neither running nor waiting is there.
#[cfg(test)]
pub(crate) fn vllm_gauges(text: &str, model: &str) -> Option<Gauges> {
    engine_gauges(text, model, &VLLM_METRICS)
}

/// An engine's gauges for `model` in a scrape, by `names`. `None` if
/// neither running nor waiting is there.
pub(crate) fn engine_gauges(text: &str, model: &str, names: &MetricNames) -> Option<Gauges> {
    // (sum, samples) per name of each list.
    let mut running = vec![(0.0, 0u32); names.running.len()];
    let mut waiting = vec![(0.0, 0u32); names.waiting.len()];
    let mut kv = vec![(0.0, 0u32); names.kv_usage.len()];
    let index = |list: &[&str], name: &str| list.iter().position(|n| *n == name);
    for line in text.lines() {
        let Some(name) = prometheus::line_name(line) else {
            continue;
        };
        let (r, w, k) = (
            index(names.running, name),
            index(names.waiting, name),
            index(names.kv_usage, name),
        );
        if r.is_none() && w.is_none() && k.is_none() {
            continue;
        }
        let Some(sample) = prometheus::parse_line(line) else {
            continue;
        };
        let other_model = names
            .model_labels
            .iter()
            .any(|l| sample.label(l).is_some_and(|m| m != model));
        if other_model || !sample.value.is_finite() {
            continue;
        }
        for (slot, at) in [(&mut running, r), (&mut waiting, w), (&mut kv, k)] {
            if let Some(entry) = at.and_then(|i| slot.get_mut(i)) {
                entry.0 += sample.value;
                entry.1 += 1;
            }
        }
    }
    let first = |list: &[(f64, u32)]| list.iter().copied().find(|(_, n)| *n > 0);
    let (run, wait) = (first(&running), first(&waiting));
    if run.is_none() && wait.is_none() {
        return None;
    }
    let mut gauges = Gauges {
        running: run.map_or(0.0, |(sum, _)| sum),
        waiting: wait.map_or(0.0, |(sum, _)| sum),
        kv_usage: 0.0,
    };
    if names.running_includes_waiting {
        gauges.running = (gauges.running - gauges.waiting).max(0.0);
    }
    if let Some((sum, n)) = first(&kv) {
        gauges.kv_usage = sum / f64::from(n);
    }
    Some(gauges)
}

/// For the fuzz targets: `chunks` read as the streamed answer of an engine
/// with `quirks`, through the shared reader (see
/// [`read_chunks`](super::reader::read_chunks)).
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_read(
    quirks: Quirks,
    cap: u64,
    max_event_bytes: usize,
    chunks: &[&[u8]],
    end: super::reader::BodyEnd,
) -> (Vec<gateway_core::TokenResult>, usize) {
    let frames = ChunkFrames {
        shared: Arc::new(Shared {
            live: LiveRequests::new(1),
            pressure: PressureCell::new(None),
        }),
        quirks,
        usage: None,
        prompt_ids: PromptIds::Waiting,
        reader: ChunkReader::default(),
    };
    super::reader::read_chunks(frames, cap, max_event_bytes, chunks, end)
}

/// For the fuzz targets and the `sse` bench: the chunk `data` read by
/// `path` (`None`: the fast path leaves it to serde, or serde refuses it).
#[cfg(feature = "fuzzing")]
fn read_chunk_by(data: &str, path: crate::fuzzing::ChunkPath) -> Option<Chunk> {
    use crate::fuzzing::ChunkPath;
    match path {
        ChunkPath::Serde => serde_json::from_str(data).ok(),
        ChunkPath::Fast => chunk_fast::read(data),
        ChunkPath::Adapter => ChunkReader::default().read(data),
    }
}

/// For the fuzz targets: the chunk `data` read by `path`, in its `Debug`
/// form (every field the adapter reads).
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_chunk(data: &str, path: crate::fuzzing::ChunkPath) -> Option<String> {
    read_chunk_by(data, path).map(|chunk| format!("{chunk:?}"))
}

/// For the fuzz targets: the chunk `data` as a stream's reader reads it
/// right after the chunk `prev` (by `prev`'s shape, when it matches), in
/// its `Debug` form.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_chunk_after(prev: &str, data: &str) -> Option<String> {
    let mut reader = ChunkReader::default();
    drop(reader.read(prev));
    reader.read(data).map(|chunk| format!("{chunk:?}"))
}

/// For the `sse` bench and the fuzz targets: the chunk `data` read by
/// `path`, then choice 0's delta taken as [`ChunkFrames::on_event`] takes
/// it.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_chunk_delta(
    data: &str,
    path: crate::fuzzing::ChunkPath,
) -> Option<Option<gateway_core::Delta>> {
    let chunk = read_chunk_by(data, path)?;
    let mut choices = chunk.choices.unwrap_or_default();
    Some(WireChoice::first(&mut choices).and_then(|choice| choice.take_delta(data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// vLLM's prompt ids (chat: top level of the role chunk; completions:
    /// on the first choice) ride on the stream's first delta only.
    #[cfg(feature = "fuzzing")]
    #[test]
    fn the_engines_prompt_ids_come_with_the_first_delta() {
        let deltas = |chunks: &[&[u8]]| -> Vec<(String, Option<Vec<u32>>)> {
            let (events, _) = fuzz_read(
                Quirks::VLLM,
                100,
                1 << 20,
                chunks,
                super::super::reader::BodyEnd::Clean,
            );
            events
                .into_iter()
                .filter_map(|e| match e {
                    Ok(gateway_core::TokenEvent::Delta(d)) => {
                        Some((d.text, d.prompt_token_ids.map(|ids| ids.to_vec())))
                    }
                    _ => None,
                })
                .collect()
        };
        let chat: &[&[u8]] = &[
            br#"data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}],"prompt_token_ids":[5,6,7]}

"#,
            br#"data: {"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null,"token_ids":[11]}]}

"#,
            br#"data: {"choices":[{"index":0,"delta":{"content":"b"},"finish_reason":"stop","token_ids":[12]}]}

data: [DONE]

"#,
        ];
        assert_eq!(
            deltas(chat),
            [
                ("a".to_owned(), Some(vec![5, 6, 7])),
                ("b".to_owned(), None)
            ]
        );
        let completions: &[&[u8]] = &[
            br#"data: {"choices":[{"index":0,"text":"a","finish_reason":null,"prompt_token_ids":[5,6],"token_ids":[11]}]}

"#,
            br#"data: {"choices":[{"index":0,"text":"b","finish_reason":"stop","prompt_token_ids":null,"token_ids":[12]}]}

data: [DONE]

"#,
        ];
        assert_eq!(
            deltas(completions),
            [("a".to_owned(), Some(vec![5, 6])), ("b".to_owned(), None)]
        );
        // An engine that sends none: no delta has any.
        let plain: &[&[u8]] = &[
            br#"data: {"choices":[{"index":0,"text":"a","finish_reason":"stop"}]}

data: [DONE]

"#,
        ];
        assert_eq!(deltas(plain), [("a".to_owned(), None)]);
    }

    #[test]
    fn statuses_map_to_kinds() {
        let cases = [
            (
                400,
                "This model's maximum context length is 8192 tokens.",
                None,
                FailureKind::ContextLengthExceeded,
            ),
            (
                400,
                "whatever",
                Some("input_tokens"),
                FailureKind::ContextLengthExceeded,
            ),
            (
                400,
                "max_tokens=100000 cannot be greater than max_model_len=2048.",
                Some("max_tokens"),
                FailureKind::ContextLengthExceeded,
            ),
            (
                400,
                "max_tokens must be at least 1, got 0.",
                Some("max_tokens"),
                FailureKind::InvalidRequest,
            ),
            (401, "Unauthorized", None, FailureKind::Unauthorized),
            (403, "", None, FailureKind::Unauthorized),
            (
                404,
                "The model `x` does not exist.",
                Some("model"),
                FailureKind::ModelNotFound,
            ),
            (429, "", None, FailureKind::Overloaded),
            (503, "", None, FailureKind::Overloaded),
            (529, "", None, FailureKind::Overloaded),
            (500, "", None, FailureKind::Internal),
            (500, "CUDA out of memory", None, FailureKind::OutOfMemory),
            (501, "", None, FailureKind::UpstreamStatus),
            (502, "", None, FailureKind::UpstreamStatus),
            // Every other 4xx is the request's; the engine's own timeouts
            // and cancels are not.
            (405, "", None, FailureKind::InvalidRequest),
            (413, "", None, FailureKind::InvalidRequest),
            (422, "", None, FailureKind::InvalidRequest),
            (451, "", None, FailureKind::InvalidRequest),
            (408, "", None, FailureKind::UpstreamStatus),
            (499, "", None, FailureKind::UpstreamStatus),
            // A 500 that says the input was bad is the request's.
            (
                500,
                "Internal server error: 400: Input validation error: `temperature` must be positive",
                None,
                FailureKind::InvalidRequest,
            ),
            (
                500,
                "Failed to compile the grammar: unexpected token at 3",
                None,
                FailureKind::InvalidRequest,
            ),
            (
                500,
                "Invalid JSON schema: 'type' is required",
                None,
                FailureKind::InvalidRequest,
            ),
            (
                500,
                "Internal server error: 503: The request queue is full.",
                None,
                FailureKind::Internal,
            ),
            (
                500,
                "Internal server error: 429: slow down",
                None,
                FailureKind::Internal,
            ),
            (500, "Internal server error", None, FailureKind::Internal),
        ];
        for (status, message, param, kind) in cases {
            assert_eq!(
                kind_for_status(status, message, param),
                kind,
                "{status} {message}"
            );
        }
    }

    #[test]
    fn a_500_typed_as_a_bad_request_is_the_requests() {
        let body = br#"{"object":"error","message":"boom","type":"BadRequestError","param":null,"code":500}"#;
        let err = status_error(StatusCode::INTERNAL_SERVER_ERROR, Some(body), None);
        assert_eq!(
            (err.kind(), err.blame(), err.is_retryable()),
            (
                FailureKind::InvalidRequest,
                gateway_core::Blame::Request,
                false
            )
        );
        let body =
            br#"{"object":"error","message":"boom","type":"InternalServerError","code":500}"#;
        let err = status_error(StatusCode::INTERNAL_SERVER_ERROR, Some(body), None);
        assert_eq!(
            (err.kind(), err.blame(), err.is_retryable()),
            (FailureKind::Internal, gateway_core::Blame::Backend, true)
        );
        let frame = ErrorDetail {
            message: "boom".into(),
            kind: "ValidationError".into(),
            code: Some(ErrorCode::Number(500)),
            param: None,
        };
        assert_eq!(
            frame_error(&frame, FailurePhase::BeforeFirstToken).kind(),
            FailureKind::InvalidRequest
        );
    }

    #[test]
    fn the_usage_chunk_carries_vllm_speculative_counts() {
        // vLLM 0.32 with `--per-request-spec-decode-metrics summary`: the
        // final usage chunk of a chat stream (numbers from a real run).
        let data = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":30,"total_tokens":230,"completion_tokens":200,"prompt_tokens_details":null},"metrics":{"speculative_decoding":{"mean_acceptance_length":3.58,"draft_acceptance_rate":0.87,"acceptance_histogram":[3,2,0,26],"num_spec_steps":31,"num_accepted_draft_tokens":80,"num_draft_tokens":92,"num_spec_tokens":3,"per_step_accepted":null,"per_step_drafted":null}}}"#;
        let chunk: Chunk = serde_json::from_str(data).unwrap();
        let spec = chunk.metrics.and_then(|m| m.speculative_decoding);
        let usage = upstream_usage(&chunk.usage.unwrap(), spec);
        assert_eq!(usage, Usage::new(30, 200).with_speculative(92, 80).unwrap());
        assert_eq!(usage.rejected(), 12);
        // Without the flag vLLM sends `"metrics": null`: no drafts.
        let data = r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7},"metrics":null}"#;
        let chunk: Chunk = serde_json::from_str(data).unwrap();
        let spec = chunk.metrics.and_then(|m| m.speculative_decoding);
        assert_eq!(
            upstream_usage(&chunk.usage.unwrap(), spec),
            Usage::new(3, 4)
        );
        // Reasoning tokens (SGLang, vLLM with a reasoning parser).
        let data = r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7,"completion_tokens_details":{"reasoning_tokens":3}}}"#;
        let chunk: Chunk = serde_json::from_str(data).unwrap();
        let usage = upstream_usage(&chunk.usage.unwrap(), None);
        assert_eq!(usage, Usage::new(3, 4).with_reasoning(3));
        // Counts that break the usage invariants are clamped, not refused.
        let data = r#"{"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7},"metrics":{"speculative_decoding":{"num_draft_tokens":2,"num_accepted_draft_tokens":9}}}"#;
        let chunk: Chunk = serde_json::from_str(data).unwrap();
        let spec = chunk.metrics.and_then(|m| m.speculative_decoding);
        let usage = upstream_usage(&chunk.usage.unwrap(), spec);
        assert_eq!((usage.drafted(), usage.accepted()), (2, 2));
    }

    #[test]
    fn frame_errors_use_code_then_type() {
        let detail = |code: Option<ErrorCode>, kind: &str| ErrorDetail {
            message: "m".into(),
            kind: kind.into(),
            code,
            param: None,
        };
        let after = FailurePhase::AfterFirstToken;
        let e = frame_error(
            &detail(Some(ErrorCode::Number(500)), "InternalServerError"),
            after,
        );
        assert_eq!((e.kind(), e.phase()), (FailureKind::Internal, after));
        let e = frame_error(&detail(None, "SERVICE_UNAVAILABLE"), after);
        assert_eq!(e.kind(), FailureKind::Overloaded);
        let e = frame_error(&detail(Some(ErrorCode::Text("503".into())), "x"), after);
        assert_eq!(e.kind(), FailureKind::Overloaded);
        let e = frame_error(&detail(None, "503"), after);
        assert_eq!(e.kind(), FailureKind::Overloaded);
        let e = frame_error(&detail(None, "internal_server_error"), after);
        assert_eq!(e.kind(), FailureKind::Internal);
    }

    #[test]
    fn gauges_sum_running_and_average_kv_for_the_model() {
        let text = "# TYPE vllm:num_requests_running gauge\n\
vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 2.0\n\
vllm:num_requests_running{engine=\"1\",model_name=\"m\"} 1.0\n\
vllm:num_requests_running{engine=\"0\",model_name=\"other\"} 9.0\n\
vllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} 4.0\n\
vllm:num_requests_waiting_by_reason{engine=\"0\",model_name=\"m\",reason=\"capacity\"} 40.0\n\
vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\"} 0.2\n\
vllm:kv_cache_usage_perc{engine=\"1\",model_name=\"m\"} 0.4\n";
        let g = vllm_gauges(text, "m").unwrap();
        assert_eq!((g.running, g.waiting), (3.0, 4.0));
        assert!((g.kv_usage - 0.3).abs() < 1e-9);
        let old = "vllm:num_requests_running{model_name=\"m\"} 1\nvllm:gpu_cache_usage_perc{model_name=\"m\"} 0.5\n";
        assert_eq!(vllm_gauges(old, "m").unwrap().kv_usage, 0.5);
        assert_eq!(vllm_gauges("python_info 1\n", "m"), None);
    }

    #[test]
    fn engine_gauges_follow_the_names_given() {
        let dynamo = MetricNames {
            running: &["dynamo_frontend_inflight_requests"],
            waiting: &["dynamo_frontend_queued_requests"],
            kv_usage: &[],
            model_labels: &["model"],
            running_includes_waiting: true,
        };
        let text = "dynamo_frontend_inflight_requests{model=\"m\"} 5\n\
dynamo_frontend_inflight_requests{model=\"x\"} 9\n\
dynamo_frontend_queued_requests{model=\"m\"} 2\n";
        let g = engine_gauges(text, "m", &dynamo).unwrap();
        assert_eq!((g.running, g.waiting, g.kv_usage), (3.0, 2.0, 0.0));
        // The first name with samples wins.
        let nim = MetricNames {
            running: &["num_requests_running", "vllm:num_requests_running"],
            waiting: &["num_requests_waiting", "vllm:num_requests_waiting"],
            kv_usage: &["gpu_cache_usage_perc", "vllm:kv_cache_usage_perc"],
            model_labels: &["model_name"],
            running_includes_waiting: false,
        };
        let v2 = "vllm:num_requests_running{model_name=\"m\"} 4\nvllm:kv_cache_usage_perc{model_name=\"m\"} 0.5\n";
        let g = engine_gauges(v2, "m", &nim).unwrap();
        assert_eq!((g.running, g.waiting, g.kv_usage), (4.0, 0.0, 0.5));
        let both = "num_requests_running 1\nvllm:num_requests_running{model_name=\"m\"} 4\n";
        assert_eq!(engine_gauges(both, "m", &nim).unwrap().running, 1.0);
        assert_eq!(engine_gauges("up 1\n", "m", &nim), None);
    }

    #[test]
    fn extras_are_filtered_and_rules_read_messages() {
        let kept = allowed_extra(r#"{"b":1,"x":{"y":[1]},"a":"é"}"#, &["a", "b"]).unwrap();
        assert_eq!(kept, r#"{"a":"é","b":1}"#);
        assert!(allowed_extra("[1]", &["a"]).is_err());
        let rules = [MessageRule {
            status: Some(400),
            contains: "out of memory",
            kind: FailureKind::OutOfMemory,
        }];
        let body = br#"{"object":"error","message":"CUDA Out Of Memory","type":"BadRequestError","param":null,"code":400}"#;
        let e = status_error_with(StatusCode::BAD_REQUEST, Some(body), None, &rules);
        assert_eq!(e.kind(), FailureKind::OutOfMemory);
        let e = status_error_with(StatusCode::INTERNAL_SERVER_ERROR, Some(body), None, &rules);
        assert_eq!(e.kind(), FailureKind::OutOfMemory);
        let e = status_error(StatusCode::BAD_REQUEST, Some(body), None);
        assert_eq!(e.kind(), FailureKind::InvalidRequest);
    }

    #[test]
    fn base_urls_drop_v1_and_slashes() {
        assert_eq!(base_url("http://h:1/v1/"), "http://h:1");
        assert_eq!(base_url("http://h:1"), "http://h:1");
        assert_eq!(base_url("http://h:1/prefix"), "http://h:1/prefix");
        assert!(parse_uri("https://h").is_ok());
        assert!(parse_uri("h:1").is_err());
    }
}
