//! A wire-faithful simulator of Triton Inference Server serving a
//! TensorRT-LLM `ensemble` through `generate_stream` (ENGINES.md §5,
//! TV-15..TV-17; `triton-inference-server/server:src/http_server.cc@e1db8a603d86`).
//!
//! - `POST /v2/models/{model}/generate_stream`: flat JSON keyed by input
//!   tensor names (`text_input`, `max_tokens`, `stream`, ...). A key that
//!   is not a declared input (`return_num_*_tokens` too unless
//!   `token_count_outputs`) is a request parameter, as in tritonserver
//!   2.51: a number, bool or string is accepted and ignored, an array,
//!   object or null is a 400 "parameter 'X' has invalid type". Malformed
//!   JSON, a body that is not an object and a `max_tokens` that is not an
//!   integer are 500s, a missing `max_tokens` a 400, all JSON.
//! - The response head goes out with the **first** model response (no
//!   bytes while queued or in prefill), then one `data: {json}\n\n` per
//!   step with `text_output` (the step's text, or the text so far with
//!   `cumulative_output`), `num_input_tokens` and `num_output_tokens` (the
//!   tokens of that response, as the TRT-LLM backend counts) when asked;
//!   **no `[DONE]`**: the chunked body just ends.
//! - Errors: a scripted first response with any status (SSE-framed or
//!   JSON `{"error":"msg"}`); a model error after N tokens: after the
//!   first token an in-stream `data: {"error":"msg"}` in the 200 stream,
//!   before it (N = 0) a **400** SSE-framed `data: {"error":"msg"}` (real
//!   Triton answers 400 to every model error before the first response,
//!   whatever its code); a full queue (`max_queued`) answered at once with
//!   `503 {"error":"Exceeds maximum queue size"}` as plain JSON; unknown
//!   model 404.
//! - Split characters: as U+FFFD in one response fixed by the next
//!   (`é🙂` re-sent whole), or as a raw byte split across writes.
//! - A client's close is noticed in every phase; like the TRT-LLM backend
//!   the request is stopped at the next cancellation check
//!   (`cancel_check_period`, 100 ms by default) and counted per phase.
//! - Metrics on a separate listener (Triton's port 8002): `/metrics` with
//!   `nv_inference_pending_request_count`, `nv_trt_llm_request_metrics`,
//!   `nv_trt_llm_kv_cache_block_metrics`; `/v2/health/ready` and
//!   `/v2/models/{model}/ready` on the main one.

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
    self, HttpRequest, Next, Wake, closed, frame, split_inside_chars, sse_head, wait, write_chunk,
    write_full, write_pieces,
};
pub use crate::sim::Recorded;
use crate::sim::{Basics, Engine, Sim, SimCore};
use crate::slots::prefill_time;
use crate::vocab::words;
pub use crate::vocab::{VOCABULARY, text_of, token_text};

/// The queue-full message of Triton's scheduler.
pub const QUEUE_FULL: &str = "Exceeds maximum queue size";

/// Inputs the simulated ensemble declares (ENGINES.md §5.2).
const INPUTS: [&str; 12] = [
    "text_input",
    "max_tokens",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop_words",
    "bad_words",
    "end_id",
    "pad_id",
    "exclude_input_in_output",
];

/// What a scripted generation request does differently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Behave normally.
    None,
    /// The first response is an error: `status` with body
    /// `{"error": message}`, SSE-framed (`sse`) or plain JSON.
    Http {
        /// The status.
        status: u16,
        /// The message.
        message: String,
        /// `text/event-stream` with `data: {...}` (else `application/json`).
        sse: bool,
    },
    /// After `after_tokens` tokens, `data: {"error": message}`, then the
    /// body ends; with 0, as Triton answers a model's error before its
    /// first response: status 400, SSE-framed.
    ErrorEvent {
        /// Tokens sent first.
        after_tokens: u32,
        /// The message.
        message: String,
    },
    /// After `after_tokens` tokens, send nothing more.
    Stall {
        /// Tokens sent first.
        after_tokens: u32,
    },
    /// Token `at_token` is sent as U+FFFD and token `at_token + 1` as
    /// `é🙂`, the character re-sent whole.
    ReplacementThenFix {
        /// Which token.
        at_token: u32,
    },
    /// Token `at_token` is `é🙂`, its response written in three writes
    /// split inside both characters.
    RawSplit {
        /// Which token.
        at_token: u32,
    },
    /// After `after_tokens` tokens, close the connection without ending
    /// the chunked body.
    Cut {
        /// Tokens sent first.
        after_tokens: u32,
    },
}

/// How the simulator behaves.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// The served model name (route and `model` label).
    pub model: String,
    /// Requests running at once (TRT-LLM max batch).
    pub slots: usize,
    /// Waiting requests beyond which new ones get the queue-full 503.
    pub max_queued: Option<usize>,
    /// Prefill time of each request.
    pub prefill: Duration,
    /// Prefill time of the first request, if different.
    pub first_prefill: Option<Duration>,
    /// Time between two tokens.
    pub token_interval: Duration,
    /// Tokens generated when `max_tokens` allows.
    pub natural_tokens: u32,
    /// The model declares `return_num_input_tokens` /
    /// `return_num_output_tokens`.
    pub token_count_outputs: bool,
    /// `text_output` is the text so far (BLS `accumulate_tokens`).
    pub cumulative_output: bool,
    /// The TRT-LLM backend's `cancellation_check_period_ms`.
    pub cancel_check_period: Duration,
    /// KV-cache size in tokens.
    pub kv_capacity_tokens: u64,
    /// Report a phase through [`EngineProbe::phase`] only once `/metrics`
    /// has shown it to a finished scrape.
    pub lagged_probe: bool,
    /// Faults of the arriving generation requests, in order; then none.
    pub script: Vec<Fault>,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            model: "ensemble".to_owned(),
            slots: 4,
            max_queued: None,
            prefill: Duration::from_millis(5),
            first_prefill: None,
            token_interval: Duration::from_millis(2),
            natural_tokens: 16,
            token_count_outputs: true,
            cumulative_output: false,
            cancel_check_period: Duration::from_millis(100),
            kv_capacity_tokens: 100_000,
            lagged_probe: false,
            script: Vec::new(),
        }
    }
}

/// One abort the simulator counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbortRecord {
    /// The request's `id`.
    pub id: String,
    /// Where the request was.
    pub phase: EnginePhase,
    /// When the client's close was noticed.
    pub closed_at: Instant,
    /// When the backend's cancellation check stopped it.
    pub at: Instant,
}

/// Triton (a TensorRT-LLM ensemble) as a [`Sim`] engine.
#[derive(Debug)]
pub enum Triton {}

/// A running Triton simulator; stops when dropped.
pub type TritonSim = Sim<Triton>;

type Inner = SimCore<Triton>;

impl Engine for Triton {
    const NAME: &'static str = "Triton";
    const METRICS_LISTENER: bool = true;
    type Options = SimOptions;
    type Fault = Fault;
    type Record = Recorded;
    type Abort = AbortRecord;
    type Extra = ();

    fn basics(o: &SimOptions) -> Basics<'_, Fault> {
        Basics {
            slots: o.slots,
            kv_capacity_tokens: o.kv_capacity_tokens,
            lagged_probe: o.lagged_probe,
            script: &o.script,
        }
    }

    fn is_generation(record: &Recorded) -> bool {
        record.path.ends_with("/generate_stream")
    }

    fn serve(core: &Arc<Inner>, listener: TcpListener, stop: &CancellationToken) {
        http::serve(core, listener, stop, |inner, request, rd, wr| {
            Box::pin(handle(inner, request, rd, wr))
        });
    }
}

impl TritonSim {
    /// `http://127.0.0.1:<port>/metrics` (Triton's metrics port).
    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.metrics_addr)
    }
}

fn error_json(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

async fn handle(
    inner: &Arc<Inner>,
    request: HttpRequest,
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
) -> Next {
    let record = Recorded::of(&request);
    let model_path = format!("/v2/models/{}", inner.options.model);
    match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/v2/health/ready" | "/v2/health/live") => {
            inner.record(record);
            write_full(wr, 200, "text/plain", "").await
        }
        ("GET", "/metrics") => {
            inner.state().live.scraped();
            let body = metrics_text(inner);
            write_full(wr, 200, "text/plain; charset=utf-8", &body).await
        }
        ("GET", path) if path == format!("{model_path}/ready") => {
            inner.record(record);
            write_full(wr, 200, "text/plain", "").await
        }
        ("POST", path) if path.ends_with("/generate_stream") => {
            if path == format!("{model_path}/generate_stream") {
                generate(inner, request, record, rd, wr).await
            } else {
                inner.record(record);
                let name = path
                    .trim_start_matches("/v2/models/")
                    .trim_end_matches("/generate_stream");
                let message = format!("Request for unknown model: '{name}' is not found");
                write_full(wr, 404, "application/json", &error_json(&message)).await
            }
        }
        (method, _) if method != "POST" && request.path.starts_with("/v2/models/") => {
            inner.record(record);
            write_full(
                wr,
                405,
                "application/json",
                &error_json("Method Not Allowed"),
            )
            .await
        }
        _ => {
            inner.record(record);
            write_full(wr, 404, "application/json", &error_json("Not Found")).await
        }
    }
}

fn metrics_text(inner: &Inner) -> String {
    let (running, waiting, kv) = inner.gauges();
    let m = &inner.options.model;
    let slots = inner.options.slots;
    let aborts = inner.state().aborts.total();
    format!(
        "# HELP nv_inference_request_failure Number of failed inference requests, all batch sizes\n\
# TYPE nv_inference_request_failure counter\n\
nv_inference_request_failure{{model=\"{m}\",reason=\"CANCELED\",version=\"1\"}} {aborts}\n\
# HELP nv_inference_pending_request_count Instantaneous number of pending requests awaiting execution per-model.\n\
# TYPE nv_inference_pending_request_count gauge\n\
nv_inference_pending_request_count{{model=\"{m}\",version=\"1\"}} {waiting}\n\
nv_inference_pending_request_count{{model=\"tensorrt_llm\",version=\"1\"}} 0\n\
# HELP nv_trt_llm_request_metrics TRT LLM request metrics\n\
# TYPE nv_trt_llm_request_metrics gauge\n\
nv_trt_llm_request_metrics{{model=\"tensorrt_llm\",request_type=\"context\",version=\"1\"}} 0\n\
nv_trt_llm_request_metrics{{model=\"tensorrt_llm\",request_type=\"scheduled\",version=\"1\"}} {running}\n\
nv_trt_llm_request_metrics{{model=\"tensorrt_llm\",request_type=\"max\",version=\"1\"}} {slots}\n\
nv_trt_llm_request_metrics{{model=\"tensorrt_llm\",request_type=\"active\",version=\"1\"}} {running}\n\
nv_trt_llm_request_metrics{{model=\"tensorrt_llm\",request_type=\"waiting\",version=\"1\"}} {waiting}\n\
# HELP nv_trt_llm_kv_cache_block_metrics TRT LLM KV cache block metrics\n\
# TYPE nv_trt_llm_kv_cache_block_metrics gauge\n\
nv_trt_llm_kv_cache_block_metrics{{kv_cache_block_type=\"fraction\",model=\"tensorrt_llm\",version=\"1\"}} {kv:?}\n\
nv_trt_llm_kv_cache_block_metrics{{kv_cache_block_type=\"tokens_per\",model=\"tensorrt_llm\",version=\"1\"}} 64\n"
    )
}

/// Writes `tail` and the end of the chunked body in one write.
async fn write_last(wr: &mut OwnedWriteHalf, tail: &[u8]) -> Next {
    Next::keep_alive_if(http::write_last(wr, tail).await)
}

/// One model response carrying `tokens` tokens.
struct Format<'a> {
    id: Option<&'a str>,
    model: &'a str,
    counts: bool,
    cumulative: bool,
    prompt_tokens: u64,
}

impl Format<'_> {
    fn response(&self, texts: &[String], tokens: u32) -> String {
        let text = if self.cumulative {
            texts.concat()
        } else {
            texts.last().cloned().unwrap_or_default()
        };
        let mut out = serde_json::Map::new();
        if let Some(id) = self.id {
            out.insert("id".into(), Value::from(id));
        }
        out.insert("model_name".into(), Value::from(self.model));
        out.insert("model_version".into(), Value::from("1"));
        if self.counts {
            out.insert("num_input_tokens".into(), Value::from(self.prompt_tokens));
            // The tokens of this response (one per step), not a total.
            out.insert("num_output_tokens".into(), Value::from(tokens));
        }
        out.insert("text_output".into(), Value::from(text));
        Value::Object(out).to_string()
    }
}

/// The client closed in `phase`: the TRT-LLM backend notices at its next
/// cancellation check.
async fn disconnected(inner: &Arc<Inner>, id: &str, phase: EnginePhase) -> Next {
    let closed_at = Instant::now();
    let period = inner
        .options
        .cancel_check_period
        .max(Duration::from_millis(1));
    let since = closed_at.saturating_duration_since(inner.started);
    let into = Duration::from_nanos((since.as_nanos() % period.as_nanos()) as u64);
    tokio::time::sleep(period - into).await;
    let at = Instant::now();
    inner.abort_with(id, |_| {
        let record = AbortRecord {
            id: id.to_owned(),
            phase,
            closed_at,
            at,
        };
        (phase, record)
    });
    Next::Close
}

#[expect(clippy::too_many_lines, reason = "one request's whole life")]
async fn generate(
    inner: &Arc<Inner>,
    request: HttpRequest,
    record: Recorded,
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
) -> Next {
    let opts = &inner.options;
    let (fault, arrival) = inner.arrive(record);
    let fault = fault.unwrap_or(Fault::None);
    let body = match serde_json::from_slice::<Value>(&request.body) {
        Ok(Value::Object(body)) => body,
        Ok(_) => {
            let message = "attempt to get members for non-object";
            return write_full(wr, 500, "application/json", &error_json(message)).await;
        }
        Err(_) => {
            let message = "failed to parse the request JSON buffer: Invalid value. at 0";
            return write_full(wr, 500, "application/json", &error_json(message)).await;
        }
    };
    let counts = opts.token_count_outputs;
    let declared = |key: &str| {
        INPUTS.contains(&key)
            || (counts && (key == "return_num_input_tokens" || key == "return_num_output_tokens"))
    };
    for (key, value) in &body {
        // Not an input: a request parameter, which must be a scalar.
        let parameter = !declared(key) && key != "id" && key != "parameters";
        if parameter && !matches!(value, Value::Bool(_) | Value::Number(_) | Value::String(_)) {
            let message = format!(
                "parameter '{key}' has invalid type. It should be either 'int', 'bool', or 'string'."
            );
            return write_full(wr, 400, "application/json", &error_json(&message)).await;
        }
    }
    if let Fault::Http {
        status,
        message,
        sse,
    } = &fault
    {
        return if *sse {
            let _ = wr.write_all(sse_head(*status).as_bytes()).await;
            write_last(wr, &frame(&error_json(message))).await
        } else {
            write_full(wr, *status, "application/json", &error_json(message)).await
        };
    }
    let max_tokens = match body.get("max_tokens") {
        Some(value) => match value.as_i64() {
            Some(n) => u64::try_from(n).unwrap_or(0),
            None => {
                let message = "Unable to parse 'data': attempt to access JSON non-signed-integer as signed-integer";
                return write_full(wr, 500, "application/json", &error_json(message)).await;
            }
        },
        None => {
            let inputs = body.keys().filter(|k| declared(k)).count();
            let most = INPUTS.len() + if counts { 2 } else { 0 };
            let message = format!(
                "[request id: <id_unknown>] expected number of inputs between 2 and {most} but got {inputs} inputs for model '{}'. Got input(s) ['text_input'], but missing required input(s) ['max_tokens']. Please provide all required input(s).",
                opts.model
            );
            return write_full(wr, 400, "application/json", &error_json(&message)).await;
        }
    };
    if body.get("stream") != Some(&Value::Bool(true)) {
        let message = "the simulator only streams (stream: true)";
        return write_full(wr, 400, "application/json", &error_json(message)).await;
    }
    let prompt = body
        .get("text_input")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let prompt_tokens = 1 + words(prompt);
    let id = body
        .get("id")
        .and_then(Value::as_str)
        .map_or_else(|| format!("sim-{arrival}"), str::to_owned);
    if inner.queue_full(opts.max_queued) {
        return write_full(wr, 503, "application/json", &error_json(QUEUE_FULL)).await;
    }
    inner.state().live.insert(&id, prompt_tokens);
    let want_counts = body.get("return_num_output_tokens") == Some(&Value::Bool(true));
    let fmt = Format {
        id: body.get("id").and_then(Value::as_str),
        model: &opts.model,
        counts: counts && want_counts,
        cumulative: opts.cumulative_output,
        prompt_tokens,
    };
    // Queued: nothing on the wire yet.
    let permit = tokio::select! {
        permit = inner.slots.clone().acquire_owned() => permit,
        () = closed(rd) => return disconnected(inner, &id, EnginePhase::Queued).await,
    };
    // The semaphore is never closed.
    let Ok(permit) = permit else {
        return disconnected(inner, &id, EnginePhase::Queued).await;
    };
    inner.set_phase(&id, EnginePhase::Prefill);
    let prefill = prefill_time(arrival, opts.prefill, opts.first_prefill);
    if wait(prefill, rd, None).await == Wake::Closed {
        drop(permit);
        return disconnected(inner, &id, EnginePhase::Prefill).await;
    }
    inner.set_phase(&id, EnginePhase::Decode);
    let n = u64::from(opts.natural_tokens).min(max_tokens) as u32;
    let mut texts: Vec<String> = Vec::new();
    let mut head_sent = false;
    for i in 0..n {
        if i > 0 && wait(opts.token_interval, rd, None).await == Wake::Closed {
            return disconnected(inner, &id, EnginePhase::Decode).await;
        }
        match &fault {
            Fault::ErrorEvent {
                after_tokens,
                message,
            } if *after_tokens == i => {
                inner.state().live.remove(&id);
                // The first response sets the status: 400 for an error.
                let status = if head_sent { 200 } else { 400 };
                if !head_sent && wr.write_all(sse_head(status).as_bytes()).await.is_err() {
                    return Next::Close;
                }
                return write_last(wr, &frame(&error_json(message))).await;
            }
            Fault::Stall { after_tokens } if *after_tokens == i => {
                if !head_sent {
                    let _ = wr.write_all(sse_head(200).as_bytes()).await;
                    let _ = wr.flush().await;
                }
                closed(rd).await;
                return disconnected(inner, &id, EnginePhase::Decode).await;
            }
            Fault::Cut { after_tokens } if *after_tokens == i => {
                inner.state().live.remove(&id);
                if !head_sent {
                    let _ = wr.write_all(sse_head(200).as_bytes()).await;
                }
                let _ = wr.shutdown().await;
                return Next::Close;
            }
            _ => {}
        }
        let text = match &fault {
            Fault::ReplacementThenFix { at_token } if *at_token == i => "\u{FFFD}",
            Fault::ReplacementThenFix { at_token } if *at_token + 1 == i => "é🙂",
            Fault::RawSplit { at_token } if *at_token == i => "é🙂",
            _ => token_text(i),
        };
        if fmt.cumulative
            && matches!(fault, Fault::ReplacementThenFix { at_token } if at_token + 1 == i)
        {
            // The cumulative text resolves the placeholder.
            texts.pop();
            texts.push(String::new());
        }
        texts.push(text.to_owned());
        let mut bytes = if head_sent {
            Vec::new()
        } else {
            head_sent = true;
            // The head goes out with the first response.
            let mut h = sse_head(200).into_bytes();
            if wr.write_all(&h).await.is_err() {
                return disconnected(inner, &id, EnginePhase::Decode).await;
            }
            h.clear();
            h
        };
        bytes.extend(frame(&fmt.response(&texts, 1)));
        let last = i + 1 == n;
        let pieces = matches!(fault, Fault::RawSplit { at_token } if at_token == i)
            .then(|| split_inside_chars(&bytes))
            .flatten();
        let ok = if let Some(pieces) = pieces {
            write_pieces(wr, pieces).await
        } else if last {
            // The final flag rides on the last response: the body ends.
            inner.finish(&id);
            drop(permit);
            return write_last(wr, &bytes).await;
        } else {
            write_chunk(wr, &bytes).await
        };
        if !ok {
            return disconnected(inner, &id, EnginePhase::Decode).await;
        }
        inner.state().live.add_token(&id);
    }
    // Zero tokens (max_tokens 0) or a split last token: end the body.
    inner.finish(&id);
    drop(permit);
    if !head_sent && wr.write_all(sse_head(200).as_bytes()).await.is_err() {
        return Next::Close;
    }
    write_last(wr, &[]).await
}
