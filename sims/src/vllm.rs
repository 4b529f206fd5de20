//! A wire-faithful vLLM simulator over loopback HTTP/1.1 (ENGINES.md §2,
//! §10), with modes for the engines that speak vLLM's OpenAI-style wire
//! with their own quirks ([`SimEngine`]: trtllm-serve, the Dynamo
//! frontend, NIM; plain vLLM also stands in for a generic OpenAI-compatible
//! server).
//!
//! It speaks raw HTTP on a `tokio` socket so every byte and every write is
//! under control: chunked SSE bodies with vLLM's exact chunk sequence (role
//! chunk with `content:""`, one chunk per token, the finish reason on the
//! last token's chunk, a `choices: []` usage chunk, `data: [DONE]`), its
//! error bodies (int `code`), in-stream error frames followed by `[DONE]`,
//! `/health`, `/v1/models` and `/metrics` with live gauges. Only streamed
//! requests are served (the gateway's adapters always stream); a
//! non-streamed one gets a 400.
//!
//! Requests queue for a fixed number of slots (FIFO), spend a prefill time,
//! then decode one token per interval ([`token_text`]). The simulator
//! watches the socket in every phase and counts a client's close as an
//! abort in the phase it was in, with the time it noticed. Faults
//! ([`Fault`]) are scripted per arriving generation request; with
//! [`SimOptions::api_key`] the `/v1` routes want `Authorization: Bearer`.

mod embed;

use std::sync::Arc;
use std::time::Duration;

use gateway_core::EnginePhase;
#[cfg(doc)]
use gateway_core::testkit::conformance::EngineProbe;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::http::{
    self, FASTAPI_404, HttpRequest, Next, Wake, closed, frame, js, split_inside_chars, wait,
    write_chunk, write_full, write_full_with,
};
use crate::output::Output;
use crate::sim::{Basics, Engine, Sim, SimCore};
use crate::slots::prefill_time;
pub use crate::vocab::{VOCABULARY, text_of, token_id, token_text};
use crate::vocab::{chat_prompt_tokens, continued_from, words};
pub use embed::{MAX_MODEL_LEN, embedding_of, text_ids};

/// vLLM 0.32's admission rejection body (`--max-num-queued-reqs`).
pub const BUSY_503: &str = r#"{"error":{"message":"The engine is currently busy and cannot accept new requests. Please try again later or on a different instance.","type":"Service Unavailable","param":null,"code":503}}"#;

/// TV-04: prompt longer than the context.
pub const CONTEXT_400: &str = r#"{"error":{"message":"This model's maximum context length is 8192 tokens. However, your request has 8200 input tokens. Please reduce the length of the input messages.","type":"BadRequestError","param":"input_tokens","code":400}}"#;

/// A plain 400 (`max_tokens` below 1).
pub const INVALID_400: &str = r#"{"error":{"message":"max_tokens must be at least 1, got 0. (parameter=max_tokens, value=0)","type":"BadRequestError","param":"max_tokens","code":400}}"#;

/// vLLM's answer to a bad key (`--api-key`).
pub const UNAUTHORIZED_401: &str = r#"{"error":"Unauthorized"}"#;

/// TV-05 for model `model`.
pub fn not_found_404(model: &str) -> String {
    format!(
        r#"{{"error":{{"message":"The model `{model}` does not exist.","type":"NotFoundError","param":"model","code":404}}}}"#
    )
}

/// Which engine's wire behaviour the simulator reproduces on top of the
/// shared queue/prefill/decode model (ENGINES.md §0 and the engine's
/// section).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SimEngine {
    /// vLLM (§2): the default.
    #[default]
    Vllm,
    /// trtllm-serve (§4, `serve/openai_server.py@e7f7345e31e5`,
    /// `postprocess_handlers.py@7b437aaa73bf`, 2026-08 build): unknown
    /// fields → 400 flat body; first frame `data: {json} \n\n`; a new
    /// `id` per chunk; `reasoning_content:""` and
    /// `avg_decoded_tokens_per_iter` in deltas; continuous usage; an
    /// `ErrorFrame` fault cuts a chat stream (no frame, no `[DONE]`, no
    /// end of the chunked body) and is a `server_error` frame + `[DONE]` on
    /// completions; no model check; Prometheus at `/prometheus/metrics`
    /// (`trtllm_*`), JSON `[]` at `/metrics`.
    TrtLlm,
    /// Dynamo frontend, 2026 (§7, `error.rs@43a0bb22fbd0`, `disconnect.rs`
    /// seen 2026-08), with what a real ai-dynamo 1.6.1 frontend did
    /// (docs/real-engine-dynamo.md): flat error bodies, queue-full **529**
    /// (`"type":"Overloaded"`, no `Retry-After`), error frame
    /// `{"error":{message,type,code}}` + `[DONE]`, `/health` JSON,
    /// `dynamo_frontend_*` gauges labelled `model` at `/metrics`. Strict
    /// validation: an unknown top-level field is a 400 `Validation:
    /// Unsupported parameter(s)`, an unknown `nvext` key a 400 listing the
    /// allowed ones. Chat streams have no role-only chunk (the first
    /// content delta carries `"role":"assistant"`); on both routes the
    /// finish reason comes in a chunk of its own (an empty `delta`, an
    /// empty `text`), after the last token; completions chunks carry
    /// `"usage":null`; the usage chunk always has
    /// `prompt_tokens_details.cached_tokens`.
    Dynamo,
    /// An older Dynamo (`disconnect.rs@02acc07eff50`,
    /// `busy_threshold.rs@c54c6d44158a`): queue-full 503, mid-stream
    /// `event: error` with the text in a comment, then the end.
    DynamoOld,
    /// NIM 1.x with a vLLM profile (§6, NVIDIA docs): vLLM's wire, health
    /// at `/v1/health/ready` (`/health` is 404), unprefixed gauges at
    /// `/v1/metrics` (no key needed on the management routes).
    Nim,
}

/// trtllm-serve's flat 400 (`create_error_response(str(e))`).
pub fn trtllm_400(message: &str) -> String {
    format!(
        r#"{{"object":"error","message":{},"type":"BadRequestError","param":null,"code":400}}"#,
        js(message)
    )
}

/// Dynamo's overload answer (TV-18; the `type` as ai-dynamo 1.6.1 sends
/// it).
pub const DYNAMO_529: &str =
    r#"{"message":"Service temporarily overloaded","type":"Overloaded","code":529}"#;

/// An older Dynamo's busy answer (503).
pub const DYNAMO_503: &str =
    r#"{"message":"Service temporarily unavailable","type":"Service Unavailable","code":503}"#;

/// Dynamo's unknown model.
pub const DYNAMO_404: &str = r#"{"message":"Model not found","type":"Not Found","code":404}"#;

/// The top-level fields trtllm-serve's request models accept
/// (`serve/openai_protocol.py@54cf7be08a35`, ENGINES.md §4.2): OpenAI's
/// plus the extensions. Chat-only and completions-only ones are split.
const TRTLLM_COMMON: &[&str] = &[
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "n",
    "stream",
    "stream_options",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "user",
    "top_k",
    "top_p_min",
    "min_p",
    "repetition_penalty",
    "length_penalty",
    "use_beam_search",
    "early_stopping",
    "stop_token_ids",
    "include_stop_str_in_output",
    "ignore_eos",
    "min_tokens",
    "skip_special_tokens",
    "truncate_prompt_tokens",
    "return_context_logits",
    "detokenize",
    "add_special_tokens",
    "response_format",
    "disaggregated_params",
    "lora_request",
];
const TRTLLM_CHAT: &[&str] = &[
    "messages",
    "max_completion_tokens",
    "logprobs",
    "top_logprobs",
    "tools",
    "tool_choice",
    "chat_template",
    "chat_template_kwargs",
    "documents",
    "add_generation_prompt",
    "prompt_token_ids",
    "cache_salt",
];
const TRTLLM_COMPLETION: &[&str] = &["prompt", "echo", "best_of"];

/// Top-level fields a Dynamo 1.6.1 frontend accepted on both routes (each
/// sent to a real one; others, e.g. `priority`, `request_id`,
/// `return_token_ids`, `vllm_xargs`, `verbosity`, were refused).
const DYNAMO_COMMON: &[&str] = &[
    "model",
    "max_tokens",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "n",
    "stop",
    "seed",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "logprobs",
    "user",
    "metadata",
    "nvext",
    "top_k",
    "min_p",
    "repetition_penalty",
    "ignore_eos",
    "min_tokens",
    "stop_token_ids",
    "include_stop_str_in_output",
    "skip_special_tokens",
    "guided_json",
    "cache_salt",
];
/// Chat-only fields Dynamo 1.6.1 accepted (`safety_identifier`,
/// `documents`, `chat_template`, `add_special_tokens` were refused).
const DYNAMO_CHAT: &[&str] = &[
    "messages",
    "max_completion_tokens",
    "top_logprobs",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "reasoning_effort",
    "store",
    "service_tier",
    "prompt_cache_key",
    "modalities",
    "prediction",
    "audio",
    "web_search_options",
    "chat_template_kwargs",
    "add_generation_prompt",
    "continue_final_message",
    "mm_processor_kwargs",
];
const DYNAMO_COMPLETION: &[&str] = &["prompt", "best_of", "echo", "suffix"];

/// The keys of Dynamo 1.6.1's `nvext` object, in the order its 400 lists
/// them.
pub const DYNAMO_NVEXT_KEYS: &[&str] = &[
    "greed_sampling",
    "use_raw_prompt",
    "annotations",
    "backend_instance_id",
    "token_data",
    "max_thinking_tokens",
    "cache_salt",
    "extra_fields",
    "metadata_upload",
    "prefill_worker_id",
    "decode_worker_id",
    "dp_rank",
    "prefill_dp_rank",
    "agent_hints",
    "request_timestamp_ms",
    "routing_constraints",
    "router",
];

/// Dynamo's 400 for top-level fields it does not know, named in the order
/// of the body.
pub fn dynamo_unsupported_400(fields: &[&str]) -> String {
    let names: Vec<String> = fields.iter().map(|f| format!("`{f}`")).collect();
    format!(
        r#"{{"message":{},"type":"Bad Request","code":400}}"#,
        js(&format!(
            "Validation: Unsupported parameter(s): {}",
            names.join(", ")
        ))
    )
}

/// Dynamo's 400 for an unknown `nvext` key (serde's message, with the
/// column just after the key in the body).
pub fn dynamo_nvext_400(key: &str, column: usize) -> String {
    let expected: Vec<String> = DYNAMO_NVEXT_KEYS.iter().map(|k| format!("`{k}`")).collect();
    format!(
        r#"{{"message":{},"type":"Bad Request","code":400}}"#,
        js(&format!(
            "Failed to deserialize the JSON body into the target type: unknown field `{key}`, expected one of {} at line 1 column {column}",
            expected.join(", ")
        ))
    )
}

/// Dynamo's refusal of `body` (`raw` as sent), if it has one: the first
/// unknown `nvext` key (serde stops there, before the field check), else
/// the unknown top-level fields.
fn dynamo_refusal(body: &Value, raw: &str, chat: bool) -> Option<String> {
    // Where `"key"` ends in the raw body (from `from` on).
    let end_of = |key: &str, from: usize| {
        let quoted = format!("\"{key}\"");
        raw[from..].find(&quoted).map(|i| from + i + quoted.len())
    };
    if let Some(nvext) = body["nvext"].as_object() {
        let start = end_of("nvext", 0).unwrap_or(0);
        let first_unknown = nvext
            .keys()
            .filter(|k| !DYNAMO_NVEXT_KEYS.contains(&k.as_str()))
            .map(|k| (end_of(k, start).unwrap_or(usize::MAX), k))
            .min();
        if let Some((column, key)) = first_unknown {
            return Some(dynamo_nvext_400(key, column));
        }
    }
    let allowed = |k: &str| {
        DYNAMO_COMMON.contains(&k)
            || (chat && DYNAMO_CHAT.contains(&k))
            || (!chat && DYNAMO_COMPLETION.contains(&k))
    };
    let mut unknown: Vec<(usize, &str)> = body
        .as_object()?
        .keys()
        .filter(|k| !allowed(k.as_str()))
        .map(|k| (end_of(k, 0).unwrap_or(usize::MAX), k.as_str()))
        .collect();
    if unknown.is_empty() {
        return None;
    }
    unknown.sort_unstable();
    let names: Vec<&str> = unknown.into_iter().map(|(_, k)| k).collect();
    Some(dynamo_unsupported_400(&names))
}

/// What a scripted request does differently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Behave normally.
    None,
    /// Answer `status` with `body` (JSON, or empty) before any stream.
    Http {
        /// The status.
        status: u16,
        /// The body.
        body: String,
        /// A `Retry-After` header, in seconds.
        retry_after: Option<u64>,
    },
    /// After `after_tokens` tokens (0: before the role chunk), an in-stream
    /// error frame with `code`, then `[DONE]`.
    ErrorFrame {
        /// Tokens sent first.
        after_tokens: u32,
        /// The int `code` (500, 503, 400...).
        code: u16,
        /// The `type`.
        kind: String,
        /// The message.
        message: String,
    },
    /// After `after_tokens` tokens, send nothing more (the connection stays
    /// open until the client closes it).
    Stall {
        /// Tokens sent first.
        after_tokens: u32,
    },
    /// After `after_tokens` tokens, a frame whose JSON is cut short.
    Malformed {
        /// Tokens sent first.
        after_tokens: u32,
    },
    /// Token `at_token` has the text `é🙂` and its frame is written in
    /// three writes split inside both characters (TV-06).
    SplitUtf8 {
        /// Which token.
        at_token: u32,
    },
    /// Every frame is written `bytes` bytes at a time.
    SplitFrames {
        /// Bytes per write.
        bytes: usize,
    },
    /// After `after_tokens` tokens, reset the connection (RST).
    Reset {
        /// Tokens sent first.
        after_tokens: u32,
    },
    /// After `after_tokens` tokens, end the body cleanly without a finish
    /// reason or `[DONE]`.
    Truncate {
        /// Tokens sent first.
        after_tokens: u32,
    },
    /// A runaway engine: ignores `max_tokens` and streams `chunks` chunks
    /// of `tokens_per_chunk` tokens' text each, every chunk with
    /// `"token_ids":[]` (no count the gateway could trust), then `stop`.
    Runaway {
        /// Chunks sent.
        chunks: u32,
        /// Tokens of text in each chunk.
        tokens_per_chunk: u32,
    },
}

/// How the simulator behaves.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// The served model name.
    pub model: String,
    /// Requests running at once.
    pub slots: usize,
    /// Waiting requests beyond which new ones get [`BUSY_503`].
    pub max_waiting: Option<usize>,
    /// Prefill time of each request.
    pub prefill: Duration,
    /// Prefill time of the first request, if different.
    pub first_prefill: Option<Duration>,
    /// Time between two tokens (zero: none, and no timer between them).
    pub token_interval: Duration,
    /// Tokens generated when `max_tokens` allows (then `stop`).
    pub natural_tokens: u32,
    /// Whether usage has `prompt_tokens_details`
    /// (`--enable-prompt-tokens-details`).
    pub prompt_tokens_details: bool,
    /// Cached prompt tokens reported (capped at the prompt).
    pub cached_tokens: u64,
    /// KV-cache size in tokens.
    pub kv_capacity_tokens: u64,
    /// A key required on `/v1` routes (`--api-key`).
    pub api_key: Option<String>,
    /// Report a request's phase through [`EngineProbe::phase`] only once
    /// `/metrics` has shown it to a scraper that finished reading it (the
    /// answer to the next scrape has started), so a check that reads a
    /// scraped backend's pressure right after the phase sees it.
    pub lagged_probe: bool,
    /// Publish `vllm:gpu_cache_usage_perc` instead of
    /// `vllm:kv_cache_usage_perc` (vLLM before 0.11).
    pub old_kv_metric: bool,
    /// Faults of the arriving generation requests, in order; then none.
    pub script: Vec<Fault>,
    /// Whose wire behaviour to reproduce.
    pub engine: SimEngine,
    /// Speculative decoding as vLLM streams it (plain vLLM mode only).
    pub speculative: Option<SimSpec>,
    /// Chat: the first tokens stream as reasoning (`delta.reasoning`), as
    /// with a reasoning parser.
    pub reasoning_tokens: u32,
    /// Chat: every answer (after its reasoning) is an auto tool call of
    /// this function, finished with `tool_calls`. A request whose
    /// `tool_choice` names a function gets a call of it either way.
    pub tool_call: Option<String>,
    /// `POST /v1/embeddings` is served (as by a pooling model; the
    /// generation routes stay too). Off: FastAPI's 404 there, as from a
    /// server of a generative model.
    pub embeddings: bool,
    /// The length of the embedding vectors.
    pub embedding_dims: usize,
}

/// Speculative decoding in the vLLM simulator: each decode step yields
/// `tokens_per_step` tokens (its accepted drafts plus one) in ONE chunk
/// without token ids, as vLLM streams accepted drafts, and the usage chunk
/// carries vLLM's per-request `metrics.speculative_decoding`
/// (`--per-request-spec-decode-metrics`): `draft_tokens` drafted per step,
/// `tokens_per_step - 1` of them accepted (the last step: what is left).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimSpec {
    /// Tokens per step and chunk, at least 1.
    pub tokens_per_step: u32,
    /// Draft tokens proposed per step, at least `tokens_per_step - 1`.
    pub draft_tokens: u32,
}

impl SimSpec {
    /// Steps, draft tokens and accepted draft tokens of an `n`-token
    /// completion.
    pub fn counts(&self, n: u32) -> (u32, u64, u64) {
        let per_step = self.tokens_per_step.max(1);
        let steps = n.div_ceil(per_step);
        let drafted = u64::from(steps) * u64::from(self.draft_tokens.max(per_step - 1));
        (steps, drafted, u64::from(n - steps))
    }
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            model: "m".to_owned(),
            slots: 4,
            max_waiting: None,
            prefill: Duration::from_millis(5),
            first_prefill: None,
            token_interval: Duration::from_millis(2),
            natural_tokens: 16,
            prompt_tokens_details: false,
            cached_tokens: 0,
            kv_capacity_tokens: 100_000,
            api_key: None,
            lagged_probe: false,
            old_kv_metric: false,
            script: Vec::new(),
            engine: SimEngine::Vllm,
            speculative: None,
            reasoning_tokens: 0,
            tool_call: None,
            embeddings: true,
            embedding_dims: 8,
        }
    }
}

/// One request the simulator received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body as sent.
    pub body: String,
    /// Prompt tokens the simulator counted (generation requests).
    pub prompt_tokens: u64,
}

impl Recorded {
    /// The value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One abort the simulator noticed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbortRecord {
    /// The request id (`X-Request-Id`).
    pub id: String,
    /// Where the request was.
    pub phase: EnginePhase,
    /// When the simulator noticed the close.
    pub at: Instant,
}

/// The vLLM family as a [`Sim`] engine.
#[derive(Debug)]
pub enum Vllm {}

/// A running vLLM-family simulator; stops when dropped.
pub type VllmSim = Sim<Vllm>;

type Inner = SimCore<Vllm>;

impl Engine for Vllm {
    const NAME: &'static str = "vLLM";
    type Options = SimOptions;
    type Fault = Fault;
    type Record = Recorded;
    type Abort = AbortRecord;
    /// Token chunks written to clients, all requests.
    type Extra = u64;

    fn basics(o: &SimOptions) -> Basics<'_, Fault> {
        Basics {
            slots: o.slots,
            kv_capacity_tokens: o.kv_capacity_tokens,
            lagged_probe: o.lagged_probe,
            script: &o.script,
        }
    }

    fn is_generation(record: &Recorded) -> bool {
        record.method == "POST"
    }

    fn serve(core: &Arc<Inner>, listener: TcpListener, stop: &CancellationToken) {
        http::serve(core, listener, stop, |inner, request, rd, wr| {
            Box::pin(handle(inner, request, rd, wr))
        });
    }
}

impl Inner {
    /// Counts the client's close of `id` in `phase` (if it is still in
    /// flight); the connection closes.
    fn aborted(&self, id: &str, phase: EnginePhase) -> Next {
        let at = Instant::now();
        self.abort_with(id, |_| {
            let record = AbortRecord {
                id: id.to_owned(),
                phase,
                at,
            };
            (phase, record)
        });
        Next::Close
    }

    /// One more token chunk of `id` written.
    fn token_sent(&self, id: &str) {
        let mut st = self.state();
        st.extra += 1;
        st.live.add_token(id);
    }
}

impl VllmSim {
    /// Token chunks written to clients so far (all requests): what the
    /// engine generated and sent before any close.
    pub fn tokens_sent(&self) -> u64 {
        self.core.state().extra
    }
}

async fn handle(
    inner: &Arc<Inner>,
    request: HttpRequest,
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
) -> Next {
    let record = Recorded {
        method: request.method.clone(),
        path: request.path.clone(),
        headers: request.headers.clone(),
        body: String::from_utf8_lossy(&request.body).into_owned(),
        prompt_tokens: 0,
    };
    let engine = inner.options.engine;
    let management = engine == SimEngine::Nim
        && (request.path.starts_with("/v1/health") || request.path == "/v1/metrics");
    if request.path.starts_with("/v1")
        && !management
        && let Some(key) = &inner.options.api_key
        && request.header("authorization") != Some(format!("Bearer {key}").as_str())
    {
        inner.record(record);
        return write_full(wr, 401, "application/json", UNAUTHORIZED_401).await;
    }
    let metrics_path = match engine {
        SimEngine::TrtLlm => "/prometheus/metrics",
        SimEngine::Nim => "/v1/metrics",
        _ => "/metrics",
    };
    if request.method == "GET" && request.path == metrics_path {
        inner.state().live.scraped();
        let body = match engine {
            SimEngine::Vllm => metrics_text(inner),
            _ => engine_metrics_text(inner),
        };
        return write_full(wr, 200, "text/plain; version=0.0.4; charset=utf-8", &body).await;
    }
    match (engine, request.method.as_str(), request.path.as_str()) {
        (SimEngine::TrtLlm, "GET", "/metrics") => {
            inner.record(record);
            write_full(wr, 200, "application/json", "[]").await
        }
        (SimEngine::Dynamo | SimEngine::DynamoOld, "GET", "/health") => {
            inner.record(record);
            let body = r#"{"status":"healthy","endpoints":["dyn://dynamo.backend.generate"],"instances":[]}"#;
            write_full(wr, 200, "application/json", body).await
        }
        (SimEngine::Nim, "GET", "/v1/health/ready" | "/v1/health/live") => {
            inner.record(record);
            let body = r#"{"object":"health.response","message":"Service is ready."}"#;
            write_full(wr, 200, "application/json", body).await
        }
        (SimEngine::Nim, "GET", "/health" | "/metrics") => {
            inner.record(record);
            write_full(wr, 404, "application/json", FASTAPI_404).await
        }
        (_, "GET", "/health") => {
            inner.record(record);
            write_full(wr, 200, "application/json", "").await
        }
        (SimEngine::Dynamo, "GET", "/v1/models") => {
            inner.record(record);
            let body = format!(
                r#"{{"object":"list","data":[{{"id":{},"object":"model","created":1,"owned_by":"nvidia","context_window":0}}]}}"#,
                js(&inner.options.model)
            );
            write_full(wr, 200, "application/json", &body).await
        }
        (_, "GET", "/v1/models") => {
            inner.record(record);
            let body = format!(
                r#"{{"object":"list","data":[{{"id":"{m}","object":"model","created":1,"owned_by":"vllm","root":"{m}","parent":null,"max_model_len":8192,"permission":[]}}]}}"#,
                m = inner.options.model
            );
            write_full(wr, 200, "application/json", &body).await
        }
        (_, "POST", "/v1/chat/completions") => generate(inner, request, record, true, rd, wr).await,
        (_, "POST", "/v1/completions") => generate(inner, request, record, false, rd, wr).await,
        (_, "POST", "/v1/embeddings") => embed::embeddings(inner, request, record, rd, wr).await,
        _ => write_full(wr, 404, "application/json", FASTAPI_404).await,
    }
}

fn metrics_text(inner: &Inner) -> String {
    let (running, waiting, kv) = inner.gauges();
    let m = &inner.options.model;
    let kv_name = if inner.options.old_kv_metric {
        "vllm:gpu_cache_usage_perc"
    } else {
        "vllm:kv_cache_usage_perc"
    };
    let aborts = inner.state().aborts.total();
    format!(
        "# HELP python_info Python platform information\n\
# TYPE python_info gauge\n\
python_info{{implementation=\"CPython\",major=\"3\",minor=\"11\"}} 1.0\n\
# HELP vllm:num_requests_running Number of requests in model execution batches.\n\
# TYPE vllm:num_requests_running gauge\n\
vllm:num_requests_running{{engine=\"0\",model_name=\"{m}\"}} {running}.0\n\
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n\
# TYPE vllm:num_requests_waiting gauge\n\
vllm:num_requests_waiting{{engine=\"0\",model_name=\"{m}\"}} {waiting}.0\n\
# HELP vllm:num_requests_waiting_by_reason Number of requests waiting, by reason.\n\
# TYPE vllm:num_requests_waiting_by_reason gauge\n\
vllm:num_requests_waiting_by_reason{{engine=\"0\",model_name=\"{m}\",reason=\"capacity\"}} {waiting}.0\n\
vllm:num_requests_waiting_by_reason{{engine=\"0\",model_name=\"{m}\",reason=\"deferred\"}} 0.0\n\
# HELP {kv_name} KV-cache usage. 1 means 100 percent usage.\n\
# TYPE {kv_name} gauge\n\
{kv_name}{{engine=\"0\",model_name=\"{m}\"}} {kv:?}\n\
# HELP vllm:request_success_total Count of successfully processed requests.\n\
# TYPE vllm:request_success_total counter\n\
vllm:request_success_total{{engine=\"0\",finished_reason=\"abort\",model_name=\"{m}\"}} {aborts}.0\n\
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.\n\
# TYPE vllm:time_to_first_token_seconds histogram\n\
vllm:time_to_first_token_seconds_bucket{{engine=\"0\",le=\"0.001\",model_name=\"{m}\"}} 0.0\n\
vllm:time_to_first_token_seconds_bucket{{engine=\"0\",le=\"+Inf\",model_name=\"{m}\"}} 0.0\n"
    )
}

/// The gauges of the non-vLLM engines, in their names.
fn engine_metrics_text(inner: &Inner) -> String {
    let (running, waiting, kv) = inner.gauges();
    let m = &inner.options.model;
    match inner.options.engine {
        SimEngine::TrtLlm => format!(
            "# HELP trtllm_num_requests_running Number of requests currently running.\n\
# TYPE trtllm_num_requests_running gauge\n\
trtllm_num_requests_running{{engine_type=\"trtllm\",model_name=\"{m}\"}} {running}.0\n\
# HELP trtllm_num_requests_waiting Number of requests waiting.\n\
# TYPE trtllm_num_requests_waiting gauge\n\
trtllm_num_requests_waiting{{engine_type=\"trtllm\",model_name=\"{m}\"}} {waiting}.0\n\
# HELP trtllm_kv_cache_utilization KV-cache utilization.\n\
# TYPE trtllm_kv_cache_utilization gauge\n\
trtllm_kv_cache_utilization{{engine_type=\"trtllm\",model_name=\"{m}\"}} {kv:?}\n\
trtllm_kv_cache_hit_rate{{engine_type=\"trtllm\",model_name=\"{m}\"}} 0.0\n\
# TYPE trtllm_request_success_total counter\n\
trtllm_request_success_total{{engine_type=\"trtllm\",finished_reason=\"stop\",model_name=\"{m}\"}} 0.0\n"
        ),
        SimEngine::Dynamo | SimEngine::DynamoOld => {
            // In-flight counts queued requests too (handler start to the
            // end of the response); queued: start to first token.
            let inflight = running + waiting;
            format!(
                "# HELP dynamo_frontend_inflight_requests Number of inflight requests\n\
# TYPE dynamo_frontend_inflight_requests gauge\n\
dynamo_frontend_inflight_requests{{model=\"{m}\"}} {inflight}\n\
dynamo_frontend_inflight_requests{{model=\"other\"}} 9\n\
dynamo_frontend_inflight_requests{{model=\"unknown_model\"}} 0\n\
# HELP dynamo_frontend_active_requests Number of active requests\n\
# TYPE dynamo_frontend_active_requests gauge\n\
dynamo_frontend_active_requests{{model=\"{m}\"}} {inflight}\n\
# HELP dynamo_frontend_queued_requests Number of requests in HTTP processing queue\n\
# TYPE dynamo_frontend_queued_requests gauge\n\
dynamo_frontend_queued_requests{{model=\"{m}\"}} {waiting}\n\
# TYPE dynamo_frontend_disconnected_clients gauge\n\
dynamo_frontend_disconnected_clients 0\n"
            )
        }
        SimEngine::Nim | SimEngine::Vllm => format!(
            "# HELP num_requests_running Number of requests currently running on GPU.\n\
# TYPE num_requests_running gauge\n\
num_requests_running{{model_name=\"{m}\"}} {running}.0\n\
# HELP num_requests_waiting Number of requests waiting to be processed.\n\
# TYPE num_requests_waiting gauge\n\
num_requests_waiting{{model_name=\"{m}\"}} {waiting}.0\n\
# TYPE num_request_max gauge\n\
num_request_max{{model_name=\"{m}\"}} 256.0\n\
# HELP gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.\n\
# TYPE gpu_cache_usage_perc gauge\n\
gpu_cache_usage_perc{{model_name=\"{m}\"}} {kv:?}\n"
        ),
    }
}

/// Prompt tokens as the simulator counts them: words plus 3 per chat
/// message, words plus 1 for text, ids for token prompts.
fn count_prompt(body: &Value, chat: bool) -> u64 {
    if chat {
        chat_prompt_tokens(body)
    } else {
        match &body["prompt"] {
            Value::String(s) => 1 + words(s),
            Value::Array(ids) => ids.len() as u64,
            _ => 0,
        }
    }
}

struct Stream<'a> {
    wr: &'a mut OwnedWriteHalf,
    split: Option<usize>,
}

impl Stream<'_> {
    /// Writes SSE bytes as one chunk, or in pieces with `SplitFrames`.
    async fn send(&mut self, data: &[u8]) -> bool {
        match self.split {
            Some(n) => {
                for piece in data.chunks(n.max(1)) {
                    if !write_chunk(self.wr, piece).await {
                        return false;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                true
            }
            None => write_chunk(self.wr, data).await,
        }
    }

    /// Writes pieces as separate chunks, pausing so each is its own read.
    async fn send_pieces(&mut self, pieces: &[&[u8]]) -> bool {
        for piece in pieces {
            if !write_chunk(self.wr, piece).await {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Ends the chunked body.
    async fn end(&mut self) -> bool {
        self.wr.write_all(b"0\r\n\r\n").await.is_ok()
    }
}

/// One trtllm-serve token chunk and what it needs.
struct TrtFrame<'a> {
    model: &'a str,
    chat: bool,
    arrival: u64,
    i: u32,
    text: &'a str,
    finish: Option<&'a str>,
    /// Prompt and cached tokens, for continuous usage.
    usage: Option<(u64, u64)>,
}

/// trtllm-serve's frames for token `i` (TV-11): a fresh `id` per chunk,
/// `exclude_none` (no null keys), the role chunk `{"role":"assistant"}`,
/// `reasoning_content:""` and `avg_decoded_tokens_per_iter` in deltas,
/// usage on every chunk, and the first frame of the choice written with a
/// space before the blank line.
fn trtllm_token_frames(f: &TrtFrame<'_>) -> Vec<u8> {
    let (prefix, object) = if f.chat {
        ("chatcmpl", "chat.completion.chunk")
    } else {
        ("cmpl", "text_completion")
    };
    let usage = |k: u32| match f.usage {
        Some((prompt, cached)) => format!(
            r#","usage":{{"prompt_tokens":{prompt},"total_tokens":{},"completion_tokens":{k},"prompt_tokens_details":{{"cached_tokens":{cached}}}}}"#,
            prompt + u64::from(k)
        ),
        None => String::new(),
    };
    let head = |n: &str| {
        format!(
            r#"{{"id":"{prefix}-{}-{n}","object":"{object}","created":1,"model":{},"#,
            f.arrival,
            js(f.model)
        )
    };
    let first_frame = |json: &str| format!("data: {json} \n\n").into_bytes();
    let finish = f
        .finish
        .map(|r| format!(r#","finish_reason":"{r}""#))
        .unwrap_or_default();
    let mut bytes = Vec::new();
    if f.chat && f.i == 0 {
        bytes.extend(first_frame(&format!(
            r#"{}"choices":[{{"index":0,"delta":{{"role":"assistant"}}}}]{}}}"#,
            head("r"),
            usage(0)
        )));
    }
    let token = if f.chat {
        format!(
            r#"{}"choices":[{{"index":0,"delta":{{"content":{},"reasoning_content":""}},"avg_decoded_tokens_per_iter":1.0{finish}}}]{}}}"#,
            head(&f.i.to_string()),
            js(f.text),
            usage(f.i + 1)
        )
    } else {
        format!(
            r#"{}"choices":[{{"index":0,"text":{},"avg_decoded_tokens_per_iter":1.0{finish}}}]{}}}"#,
            head(&f.i.to_string()),
            js(f.text),
            usage(f.i + 1)
        )
    };
    if !f.chat && f.i == 0 {
        bytes.extend(first_frame(&token));
    } else {
        bytes.extend(frame(&token));
    }
    bytes
}

async fn generate(
    inner: &Arc<Inner>,
    request: HttpRequest,
    mut record: Recorded,
    chat: bool,
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
) -> Next {
    let opts = &inner.options;
    let Ok(body) = serde_json::from_slice::<Value>(&request.body) else {
        inner.record(record);
        let bad = r#"{"error":{"message":"1 validation error:\n  {'type': 'json_invalid', 'loc': 'body.1', 'msg': 'JSON decode error'}","type":"Bad Request","param":"body.1","code":400}}"#;
        return write_full(wr, 400, "application/json", bad).await;
    };
    let prompt_tokens = count_prompt(&body, chat);
    record.prompt_tokens = prompt_tokens;
    let (fault, arrival) = inner.arrive(record);
    let fault = fault.unwrap_or(Fault::None);
    let engine = opts.engine;
    if engine == SimEngine::TrtLlm {
        let allowed = |k: &str| {
            TRTLLM_COMMON.contains(&k)
                || (chat && TRTLLM_CHAT.contains(&k))
                || (!chat && TRTLLM_COMPLETION.contains(&k))
        };
        if let Some(unknown) = body
            .as_object()
            .and_then(|o| o.keys().find(|k| !allowed(k.as_str())))
        {
            let message = format!(
                "1 validation error for {}\n{unknown}\n  Extra inputs are not permitted [type=extra_forbidden, input_value=..., input_type=dict]",
                if chat {
                    "ChatCompletionRequest"
                } else {
                    "CompletionRequest"
                }
            );
            return write_full(wr, 400, "application/json", &trtllm_400(&message)).await;
        }
    }
    if engine == SimEngine::Dynamo
        && let Some(refusal) = dynamo_refusal(&body, &String::from_utf8_lossy(&request.body), chat)
    {
        return write_full(wr, 400, "application/json", &refusal).await;
    }
    if let Some(model) = body["model"].as_str()
        && model != opts.model
    {
        match engine {
            // trtllm-serve does not check the model name (unverified).
            SimEngine::TrtLlm => {}
            SimEngine::Dynamo | SimEngine::DynamoOld => {
                return write_full(wr, 404, "application/json", DYNAMO_404).await;
            }
            SimEngine::Vllm | SimEngine::Nim => {
                return write_full(wr, 404, "application/json", &not_found_404(model)).await;
            }
        }
    }
    if let Fault::Http {
        status,
        body,
        retry_after,
    } = &fault
    {
        let headers: Vec<(&str, String)> = retry_after
            .iter()
            .map(|s| ("retry-after", s.to_string()))
            .collect();
        return write_full_with(wr, *status, "application/json", body, &headers).await;
    }
    let max_tokens = body["max_completion_tokens"]
        .as_u64()
        .or_else(|| body["max_tokens"].as_u64())
        .unwrap_or(u64::from(opts.natural_tokens));
    if max_tokens == 0 {
        return write_full(wr, 400, "application/json", INVALID_400).await;
    }
    if body["stream"] != Value::Bool(true) {
        let msg = r#"{"error":{"message":"the simulator only streams","type":"BadRequestError","param":"stream","code":400}}"#;
        return write_full(wr, 400, "application/json", msg).await;
    }
    let include_usage = body["stream_options"].is_object()
        && body["stream_options"]["include_usage"] != Value::Bool(false);
    if inner.queue_full(opts.max_waiting) {
        let (status, body) = match engine {
            SimEngine::Dynamo => (529, DYNAMO_529),
            SimEngine::DynamoOld => (503, DYNAMO_503),
            _ => (503, BUSY_503),
        };
        return write_full(wr, status, "application/json", body).await;
    }
    let id = request
        .header("x-request-id")
        .map_or_else(|| format!("sim-{arrival}"), str::to_owned);
    inner.state().live.insert(&id, prompt_tokens);
    if wr.write_all(http::sse_head(200).as_bytes()).await.is_err() {
        return inner.aborted(&id, EnginePhase::Queued);
    }
    // Queued: wait for a slot.
    let permit = tokio::select! {
        permit = inner.slots.clone().acquire_owned() => permit,
        () = closed(rd) => return inner.aborted(&id, EnginePhase::Queued),
    };
    // The semaphore is never closed.
    let Ok(permit) = permit else {
        return inner.aborted(&id, EnginePhase::Queued);
    };
    inner.set_phase(&id, EnginePhase::Prefill);
    let prefill = prefill_time(arrival, opts.prefill, opts.first_prefill);
    if wait(prefill, rd, None).await == Wake::Closed {
        return inner.aborted(&id, EnginePhase::Prefill);
    }
    inner.set_phase(&id, EnginePhase::Decode);
    let runaway = match fault {
        Fault::Runaway {
            chunks,
            tokens_per_chunk,
        } => Some((chunks, tokens_per_chunk.max(1))),
        _ => None,
    };
    // vLLM continuing its own output: a token-id prompt ending in this
    // engine's first `resume` tokens (what the gateway's continuation of a
    // stream sends) decodes on from token `resume`, as a greedy model would,
    // and ends where the whole answer would have.
    let resume = if engine == SimEngine::Vllm && !chat && runaway.is_none() {
        continued_from(&body["prompt"], opts.natural_tokens, |i| {
            u64::from(token_id(i))
        })
    } else {
        0
    };
    let natural = u64::from(opts.natural_tokens.saturating_sub(resume));
    let n = match runaway {
        Some((chunks, _)) => chunks,
        None => natural.min(max_tokens) as u32,
    };
    let mut output = Output::new(
        &body,
        chat,
        opts.reasoning_tokens,
        opts.tool_call.as_deref(),
    );
    let finish = output.finish(if runaway.is_none() && max_tokens <= natural {
        "length"
    } else {
        "stop"
    });
    let (prefix, object) = if chat {
        ("chatcmpl", "chat.completion.chunk")
    } else {
        ("cmpl", "text_completion")
    };
    let head_json = format!(
        r#"{{"id":"{prefix}-{arrival}","object":"{object}","created":1,"model":{},"#,
        js(&opts.model)
    );
    let split = match fault {
        Fault::SplitFrames { bytes } => Some(bytes),
        _ => None,
    };
    let mut out = Stream { wr, split };
    let decode_abort = |inner: &Inner| inner.aborted(&id, EnginePhase::Decode);
    // Speculative steps: the texts of a step's tokens, sent as one chunk
    // (plain text only).
    let step = match opts.speculative {
        Some(spec) if engine == SimEngine::Vllm && output.is_plain() => spec.tokens_per_step.max(1),
        _ => 1,
    };
    let mut step_text = String::new();
    // vLLM 0.32 with `"return_token_ids": true`: each chunk's ids, and the
    // prompt's in the first chunk (§2.2).
    let return_ids = engine == SimEngine::Vllm && body["return_token_ids"] == Value::Bool(true);
    let mut step_ids: Vec<u32> = Vec::new();
    for i in 0..n {
        // No interval: no timer either (a zero sleep still waits for the
        // timer's next tick); a closed client then shows as a failed write.
        if i > 0
            && !opts.token_interval.is_zero()
            && wait(opts.token_interval, rd, None).await == Wake::Closed
        {
            return decode_abort(inner);
        }
        match &fault {
            Fault::ErrorFrame {
                after_tokens,
                code,
                kind,
                message,
            } if *after_tokens == i => {
                let bytes = match engine {
                    SimEngine::TrtLlm if chat => {
                        // The generator re-raises: the stream is cut, no
                        // error frame, no [DONE], no end of the body.
                        inner.state().live.remove(&id);
                        return Next::Close;
                    }
                    SimEngine::TrtLlm => {
                        let error = format!(
                            r#"{{"error":{{"message":{},"type":"server_error","code":null,"param":null}}}}"#,
                            js(message)
                        );
                        let mut bytes = frame(&error);
                        bytes.extend_from_slice(b"data: [DONE]\n\n");
                        bytes
                    }
                    SimEngine::Dynamo => {
                        let error = format!(
                            r#"{{"error":{{"message":{},"type":{},"code":{code}}}}}"#,
                            js(message),
                            js(kind)
                        );
                        let mut bytes = frame(&error);
                        bytes.extend_from_slice(b"data: [DONE]\n\n");
                        bytes
                    }
                    SimEngine::DynamoOld => format!("event: error\n: {message}\n\n").into_bytes(),
                    SimEngine::Vllm | SimEngine::Nim => {
                        let error = format!(
                            r#"{{"error": {{"message": {}, "type": {}, "param": null, "code": {code}}}}}"#,
                            js(message),
                            js(kind)
                        );
                        let mut bytes = frame(&error);
                        bytes.extend_from_slice(b"data: [DONE]\n\n");
                        bytes
                    }
                };
                if !out.send(&bytes).await || !out.end().await {
                    return decode_abort(inner);
                }
                inner.state().live.remove(&id);
                return Next::KeepAlive;
            }
            Fault::Stall { after_tokens } if *after_tokens == i => {
                closed(rd).await;
                return decode_abort(inner);
            }
            Fault::Malformed { after_tokens } if *after_tokens == i => {
                let bad =
                    format!(r#"{head_json}"choices":[{{"index":0,"delta":{{"content":"oops"}}"#);
                if !out.send(&frame(&bad)).await {
                    return decode_abort(inner);
                }
                closed(rd).await;
                return decode_abort(inner);
            }
            Fault::Reset { after_tokens } if *after_tokens == i => {
                inner.state().live.remove(&id);
                return Next::Reset;
            }
            Fault::Truncate { after_tokens } if *after_tokens == i => {
                inner.state().live.remove(&id);
                return Next::keep_alive_if(out.end().await);
            }
            _ => {}
        }
        let split_here = matches!(fault, Fault::SplitUtf8 { at_token } if at_token == i);
        let text = if split_here {
            "é🙂"
        } else {
            token_text(i + resume)
        };
        let last = i + 1 == n;
        // Dynamo: the finish reason comes in a chunk of its own, below.
        let dynamo = engine == SimEngine::Dynamo;
        let finish_json = if last && !dynamo {
            format!(r#""finish_reason":"{finish}","stop_reason":null"#)
        } else {
            r#""finish_reason":null"#.to_owned()
        };
        let mut bytes = Vec::new();
        if engine == SimEngine::TrtLlm {
            bytes = trtllm_token_frames(&TrtFrame {
                model: &opts.model,
                chat,
                arrival,
                i,
                text,
                finish: last.then_some(finish),
                usage: include_usage
                    .then(|| (prompt_tokens, opts.cached_tokens.min(prompt_tokens))),
            });
        } else if chat && i == 0 && !dynamo {
            let prompt_ids = if return_ids {
                id_list((0..prompt_tokens).map(|_| 1))
            } else {
                "null".to_owned()
            };
            bytes.extend(frame(&format!(
                r#"{head_json}"choices":[{{"index":0,"delta":{{"role":"assistant","content":""}},"logprobs":null,"finish_reason":null}}],"prompt_token_ids":{prompt_ids}}}"#
            )));
        }
        step_ids.push(token_id(i + resume));
        if step > 1 {
            step_text.push_str(text);
            if !last && (i + 1) % step != 0 {
                // Mid-step: the token is produced, its chunk comes later.
                if !bytes.is_empty() && !out.send(&bytes).await {
                    return decode_abort(inner);
                }
                inner.token_sent(&id);
                continue;
            }
        }
        let merged = match runaway {
            Some((_, per)) => (i * per..(i + 1) * per).map(token_text).collect(),
            None => std::mem::take(&mut step_text),
        };
        let text = if step > 1 || runaway.is_some() {
            merged.as_str()
        } else {
            text
        };
        let logprobs = output.logprobs(i, text);
        let step_ids = std::mem::take(&mut step_ids);
        let ids = if runaway.is_some() {
            r#","token_ids":[]"#.to_owned()
        } else if dynamo {
            String::new()
        } else if return_ids {
            format!(r#","token_ids":{}"#, id_list(step_ids.into_iter()))
        } else if chat && last {
            r#","token_ids":null"#.to_owned()
        } else {
            String::new()
        };
        let token = if chat && dynamo {
            let mut delta = output.chat_delta(i, text, arrival);
            if i == 0 {
                // No role-only chunk: the role rides on the first delta.
                delta.pop();
                delta.push_str(r#","role":"assistant"}"#);
            }
            format!(
                r#"{head_json}"choices":[{{"index":0,"delta":{delta},{finish_json},"logprobs":{logprobs}}}]}}"#
            )
        } else if chat {
            format!(
                r#"{head_json}"choices":[{{"index":0,"delta":{},"logprobs":{logprobs},{finish_json}{ids}}}]}}"#,
                output.chat_delta(i, text, arrival)
            )
        } else if dynamo {
            let logprobs = if logprobs == "null" {
                String::new()
            } else {
                format!(r#","logprobs":{logprobs}"#)
            };
            format!(
                r#"{head_json}"choices":[{{"text":{},"index":0{logprobs}}}],"system_fingerprint":null,"usage":null}}"#,
                js(text)
            )
        } else {
            let stop = if last { "" } else { r#","stop_reason":null"# };
            format!(
                r#"{head_json}"choices":[{{"index":0,"text":{},"logprobs":{logprobs},{finish_json}{stop}{ids}}}]}}"#,
                js(text)
            )
        };
        if engine != SimEngine::TrtLlm {
            bytes.extend(frame(&token));
        }
        if last && dynamo {
            bytes.extend(frame(&if chat {
                format!(
                    r#"{head_json}"choices":[{{"index":0,"delta":{{}},"finish_reason":"{finish}","logprobs":null}}]}}"#
                )
            } else {
                format!(
                    r#"{head_json}"choices":[{{"text":"","index":0,"finish_reason":"{finish}"}}],"system_fingerprint":null,"usage":null}}"#
                )
            }));
        }
        // TV-06: cut after the first byte of `é`, then after the first two
        // bytes of `🙂`.
        let pieces = split_here.then(|| split_inside_chars(&bytes)).flatten();
        let ok = match pieces {
            Some(pieces) => out.send_pieces(&pieces).await,
            None => out.send(&bytes).await,
        };
        if !ok {
            return decode_abort(inner);
        }
        inner.token_sent(&id);
    }
    let mut tail = Vec::new();
    if include_usage && engine == SimEngine::TrtLlm {
        // The usage chunk is a chat chunk on both routes, details always.
        let cached = opts.cached_tokens.min(prompt_tokens);
        tail.extend(frame(&format!(
            r#"{{"id":"chatcmpl-{arrival}-u","object":"chat.completion.chunk","created":1,"model":{},"choices":[],"usage":{{"prompt_tokens":{prompt_tokens},"total_tokens":{},"completion_tokens":{n},"prompt_tokens_details":{{"cached_tokens":{cached}}}}}}}"#,
            js(&opts.model),
            prompt_tokens + u64::from(n)
        )));
    } else if include_usage {
        let cached = opts.cached_tokens.min(prompt_tokens);
        let details = if engine == SimEngine::Dynamo {
            // Always there, 0 without a prefix hit.
            if chat {
                format!(r#","prompt_tokens_details":{{"cached_tokens":{cached}}}"#)
            } else {
                format!(
                    r#","prompt_tokens_details":{{"audio_tokens":null,"cached_tokens":{cached}}}"#
                )
            }
        } else if opts.prompt_tokens_details {
            if chat {
                format!(
                    r#","prompt_tokens_details":{{"cached_tokens":{cached},"created_cache_tokens":0}}"#
                )
            } else {
                format!(
                    r#","prompt_tokens_details":{{"cached_tokens":{cached},"created_cache_tokens":null}}"#
                )
            }
        } else {
            String::new()
        };
        let metrics = match opts.speculative {
            Some(spec) if engine == SimEngine::Vllm => {
                let (steps, drafted, accepted) = spec.counts(n);
                format!(
                    r#","metrics":{{"speculative_decoding":{{"num_spec_steps":{steps},"num_accepted_draft_tokens":{accepted},"num_draft_tokens":{drafted},"num_spec_tokens":{}}}}}"#,
                    spec.draft_tokens
                )
            }
            _ => String::new(),
        };
        tail.extend(frame(&format!(
            r#"{head_json}"choices":[],"usage":{{"prompt_tokens":{prompt_tokens},"total_tokens":{},"completion_tokens":{n}{details}}}{metrics}}}"#,
            prompt_tokens + u64::from(n)
        )));
    }
    tail.extend_from_slice(b"data: [DONE]\n\n");
    // The last frames and the end of the body in one write: once it is
    // out, the request is over and a close is no abort.
    let ok = if out.split.is_some() {
        out.send(&tail).await && out.end().await
    } else {
        http::write_last(out.wr, &tail).await
    };
    if !ok {
        return decode_abort(inner);
    }
    {
        let mut st = inner.state();
        st.live.remove(&id);
        st.completed += 1;
    }
    drop(permit);
    Next::KeepAlive
}

/// A JSON list of token ids.
fn id_list(ids: impl Iterator<Item = u32>) -> String {
    let mut out = String::from("[");
    for (k, id) in ids.enumerate() {
        if k > 0 {
            out.push(',');
        }
        out.push_str(&id.to_string());
    }
    out.push(']');
    out
}

#[cfg(test)]
mod dynamo_tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    /// POSTs `body` to `path` of `sim` and returns the status and the body
    /// (de-chunked).
    async fn post(sim: &VllmSim, path: &str, body: &str) -> (u16, String) {
        let addr = sim.url().trim_start_matches("http://").to_owned();
        let mut s = TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(body.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let n = tokio::time::timeout_at(until, s.read(&mut buf))
                .await
                .expect("the simulator answered in time")
                .unwrap();
            raw.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&raw);
            let Some(split) = text.find("\r\n\r\n") else {
                continue;
            };
            let (head, rest) = (&text[..split], &text[split + 4..]);
            let status: u16 = head[9..12].parse().unwrap();
            let length = head.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(|v| v.trim().parse::<usize>().unwrap())
            });
            match length {
                Some(len) if rest.len() >= len => return (status, rest[..len].to_owned()),
                Some(_) => {}
                None if rest.ends_with("0\r\n\r\n") => return (status, dechunk(rest)),
                None => {}
            }
            assert!(n > 0, "closed early: {text}");
        }
    }

    fn dechunk(mut rest: &str) -> String {
        let mut out = String::new();
        loop {
            let line_end = rest.find("\r\n").unwrap();
            let size = usize::from_str_radix(&rest[..line_end], 16).unwrap();
            if size == 0 {
                return out;
            }
            out.push_str(&rest[line_end + 2..line_end + 2 + size]);
            rest = &rest[line_end + 2 + size + 2..];
        }
    }

    async fn sim(model: &str) -> Arc<VllmSim> {
        VllmSim::start(SimOptions {
            engine: SimEngine::Dynamo,
            model: model.to_owned(),
            natural_tokens: 16,
            ..SimOptions::default()
        })
        .await
    }

    /// A chat stream as ai-dynamo 1.6.1 writes it: the role on the first
    /// content delta (no role-only chunk), the finish reason in a chunk of
    /// its own with an empty delta, then the usage chunk with
    /// `prompt_tokens_details`, then `[DONE]`.
    #[tokio::test]
    async fn chat_stream_has_no_role_chunk_and_a_finish_chunk_of_its_own() {
        let sim = sim("tiny").await;
        let (status, body) = post(
            &sim,
            "/v1/chat/completions",
            r#"{"model":"tiny","messages":[{"role":"user","content":"Hi"}],"max_tokens":2,"stream":true,"stream_options":{"include_usage":true}}"#,
        )
        .await;
        assert_eq!(status, 200);
        let head =
            r#"{"id":"chatcmpl-0","object":"chat.completion.chunk","created":1,"model":"tiny","#;
        let expected = [
            format!(
                r#"{head}"choices":[{{"index":0,"delta":{{"content":{},"role":"assistant"}},"finish_reason":null,"logprobs":null}}]}}"#,
                js(token_text(0))
            ),
            format!(
                r#"{head}"choices":[{{"index":0,"delta":{{"content":{}}},"finish_reason":null,"logprobs":null}}]}}"#,
                js(token_text(1))
            ),
            format!(
                r#"{head}"choices":[{{"index":0,"delta":{{}},"finish_reason":"length","logprobs":null}}]}}"#
            ),
            format!(
                r#"{head}"choices":[],"usage":{{"prompt_tokens":4,"total_tokens":6,"completion_tokens":2,"prompt_tokens_details":{{"cached_tokens":0}}}}}}"#
            ),
            "[DONE]".to_owned(),
        ];
        let expected: String = expected.iter().map(|d| format!("data: {d}\n\n")).collect();
        assert_eq!(body, expected);
    }

    /// Completions: every chunk with `"usage":null`, the finish reason in
    /// a chunk with an empty text, the usage chunk with
    /// `prompt_tokens_details{audio_tokens,cached_tokens}`.
    #[tokio::test]
    async fn completion_stream_ends_with_an_empty_text_finish_chunk() {
        let sim = sim("tiny").await;
        let (status, body) = post(
            &sim,
            "/v1/completions",
            r#"{"model":"tiny","prompt":"Hello world","max_tokens":20,"stream":true,"stream_options":{"include_usage":true}}"#,
        )
        .await;
        assert_eq!(status, 200);
        let head = r#"{"id":"cmpl-0","object":"text_completion","created":1,"model":"tiny","#;
        let mut expected: Vec<String> = (0..16)
            .map(|i| {
                format!(
                    r#"{head}"choices":[{{"text":{},"index":0}}],"system_fingerprint":null,"usage":null}}"#,
                    js(token_text(i))
                )
            })
            .collect();
        expected.push(format!(
            r#"{head}"choices":[{{"text":"","index":0,"finish_reason":"stop"}}],"system_fingerprint":null,"usage":null}}"#
        ));
        expected.push(format!(
            r#"{head}"choices":[],"usage":{{"prompt_tokens":3,"total_tokens":19,"completion_tokens":16,"prompt_tokens_details":{{"audio_tokens":null,"cached_tokens":0}}}}}}"#
        ));
        expected.push("[DONE]".to_owned());
        let expected: String = expected.iter().map(|d| format!("data: {d}\n\n")).collect();
        assert_eq!(body, expected);
    }

    /// Strict validation, as ai-dynamo 1.6.1 answers it: unknown top-level
    /// fields (named in body order), and an unknown `nvext` key (serde's
    /// message, checked first); known fields and keys pass.
    #[tokio::test]
    async fn unknown_fields_and_nvext_keys_are_400() {
        let sim = sim("tiny-llama").await;
        let chat = |extra: &str| {
            format!(
                r#"{{"model":"tiny-llama","messages":[{{"role":"user","content":"Hi"}}],"max_tokens":2{extra}}}"#
            )
        };
        let (status, body) = post(
            &sim,
            "/v1/chat/completions",
            &chat(r#","zeta":1,"safety_identifier":"s","stream":true"#),
        )
        .await;
        assert_eq!(status, 400);
        assert_eq!(
            body,
            r#"{"message":"Validation: Unsupported parameter(s): `zeta`, `safety_identifier`","type":"Bad Request","code":400}"#
        );
        // The same bytes as the real frontend's answer (column 97).
        let (status, body) = post(
            &sim,
            "/v1/chat/completions",
            &chat(r#","nvext":{"bogus":1}"#),
        )
        .await;
        assert_eq!(status, 400);
        assert_eq!(
            body,
            "{\"message\":\"Failed to deserialize the JSON body into the target type: unknown field `bogus`, expected one of `greed_sampling`, `use_raw_prompt`, `annotations`, `backend_instance_id`, `token_data`, `max_thinking_tokens`, `cache_salt`, `extra_fields`, `metadata_upload`, `prefill_worker_id`, `decode_worker_id`, `dp_rank`, `prefill_dp_rank`, `agent_hints`, `request_timestamp_ms`, `routing_constraints`, `router` at line 1 column 97\",\"type\":\"Bad Request\",\"code\":400}"
        );
        let (status, body) = post(
            &sim,
            "/v1/completions",
            r#"{"model":"tiny-llama","prompt":"Hi","max_tokens":2,"messages":[]}"#,
        )
        .await;
        assert_eq!(
            (status, body.as_str()),
            (
                400,
                r#"{"message":"Validation: Unsupported parameter(s): `messages`","type":"Bad Request","code":400}"#
            )
        );
        let (status, _) = post(
            &sim,
            "/v1/chat/completions",
            &chat(
                r#","stream":true,"nvext":{"greed_sampling":true,"extra_fields":["timing"]},"top_k":3,"ignore_eos":true,"metadata":{"a":"b"}"#,
            ),
        )
        .await;
        assert_eq!(status, 200);
    }
}
