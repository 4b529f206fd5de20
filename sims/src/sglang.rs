//! A wire-faithful SGLang simulator over loopback HTTP/1.1 (ENGINES.md §3,
//! TV-07, TV-08, TV-10).
//!
//! - `POST /generate` (native): SSE events `{"text","output_ids","meta_info"}`
//!   with **cumulative** `text` and `output_ids` (or incremental with
//!   `incremental_output`), `meta_info.finish_reason` a dict on the final
//!   event only, speculative counts on the final event, then `data: [DONE]`.
//!   With `return_logprob`, `meta_info` carries `output_token_logprobs`
//!   (`[logprob, token_id, text]` per token, the text `null` unless
//!   `return_text_in_logprobs`) and, with `top_logprobs_num`,
//!   `output_top_logprobs` (that many `[logprob, token_id, text]` per
//!   token): cumulative like the text, only the new tokens' entries with
//!   `incremental_output` (SGLang's `tokenizer_manager.py`, seen 2026-08).
//! - `POST /v1/chat/completions`: OpenAI deltas, a separate finish chunk with
//!   an empty delta and `matched_stop`, a `choices: []` usage chunk,
//!   `[DONE]`; `rid` read from the body.
//! - `POST /abort_request {"rid"}`: 200 empty; an in-flight rid is aborted
//!   at once (recorded with its phase and time) and its stream ends with
//!   `finish_reason {"type":"abort",...}` + `[DONE]`; unknown rids are a no-op.
//! - A client's close is noticed in every phase; like SGLang it aborts the
//!   request only `disconnect_abort_delay` later (2 s by default).
//! - Slots (FIFO) and a bounded queue (`max_queued`: the overflow gets a
//!   200 stream whose **first** event is the 503 `SERVICE_UNAVAILABLE`
//!   error), `/metrics` with `sglang:*` gauges, `/health`.

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
    write_chunk, write_full, write_last, write_pieces,
};
pub use crate::sim::Recorded;
use crate::sim::{Basics, Engine, Sim, SimCore};
use crate::slots::prefill_time;
pub use crate::vocab::{VOCABULARY, text_of, token_text};
use crate::vocab::{chat_prompt_tokens, continued_from, words};

/// Native 400 for a prompt longer than the context (§3.5).
pub const CONTEXT_400: &str = r#"{"error":{"message":"The input (9000 tokens) is longer than the model's context length (8192 tokens)."}}"#;

/// Native 400 for a bad parameter.
pub const INVALID_400: &str =
    r#"{"error":{"message":"max_new_tokens must be at least 0, got -1."}}"#;

/// TV-08: queue full as an in-stream event.
pub const QUEUE_FULL_EVENT: &str = r#"{"error": {"object": "error", "message": "The request queue is full.", "type": "SERVICE_UNAVAILABLE", "param": null, "code": 503}}"#;

/// A native mid-stream `ValueError` (§3.3): no type, no code.
pub const VALUE_ERROR_EVENT: &str = r#"{"error": {"message": "Detokenization failed."}}"#;

/// A scheduler abort with status 500 as an in-stream event.
pub const INTERNAL_EVENT: &str = r#"{"error": {"object": "error", "message": "Internal server error", "type": "INTERNAL_SERVER_ERROR", "param": null, "code": 500}}"#;

/// What a scripted generation request does differently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Behave normally.
    None,
    /// Answer `status` with `body` before any stream.
    Http {
        /// The status.
        status: u16,
        /// The body (JSON).
        body: String,
    },
    /// After `after_tokens` tokens (0: as the first event), the in-stream
    /// error event `json`, then `[DONE]`.
    ErrorEvent {
        /// Tokens sent first.
        after_tokens: u32,
        /// The event's JSON.
        json: String,
    },
    /// After `after_tokens` tokens, a final event with finish reason
    /// `{"type":"abort","message",["status_code"]}`, then `[DONE]`.
    AbortFinish {
        /// Tokens sent first.
        after_tokens: u32,
        /// The status code, if any.
        status_code: Option<u16>,
        /// The message.
        message: String,
    },
    /// After `after_tokens` tokens, send nothing more.
    Stall {
        /// Tokens sent first.
        after_tokens: u32,
    },
    /// Token `at_token` is `é🙂`, and its event is written in three writes
    /// split inside both characters.
    SplitUtf8 {
        /// Which token.
        at_token: u32,
    },
    /// Event `at_token` carries a text that does not extend the previous.
    NotAPrefix {
        /// Which token.
        at_token: u32,
    },
    /// After `after_tokens` tokens, end the body without a final event.
    Truncate {
        /// Tokens sent first.
        after_tokens: u32,
    },
}

/// How the simulator behaves.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// The served model name (`model_name` label).
    pub model: String,
    /// Requests running at once.
    pub slots: usize,
    /// Waiting requests beyond which new ones get the queue-full event.
    pub max_queued: Option<usize>,
    /// Prefill time of each request.
    pub prefill: Duration,
    /// Prefill time of the first request, if different.
    pub first_prefill: Option<Duration>,
    /// Time between two tokens.
    pub token_interval: Duration,
    /// Tokens generated when `max_new_tokens` allows (then `stop`).
    pub natural_tokens: u32,
    /// Cached prompt tokens reported (capped at the prompt).
    pub cached_tokens: u64,
    /// Speculative decoding with this `num_draft_tokens` (each verify pass
    /// accepts up to 2 drafts plus the bonus token).
    pub spec_num_draft_tokens: Option<u64>,
    /// Use the newest spec key names (`spec_num_correct_drafts`, ...).
    pub spec_new_names: bool,
    /// `--incremental-streaming-output`.
    pub incremental_output: bool,
    /// How long after a client's close the request is aborted.
    pub disconnect_abort_delay: Duration,
    /// KV-cache size in tokens.
    pub kv_capacity_tokens: u64,
    /// Report a phase through [`EngineProbe::phase`] only once `/metrics`
    /// has shown it to a finished scrape.
    pub lagged_probe: bool,
    /// Faults of the arriving generation requests, in order; then none.
    pub script: Vec<Fault>,
    /// Chat: the first tokens stream as `delta.reasoning_content`, as with
    /// `--reasoning-parser`.
    pub reasoning_tokens: u32,
    /// Chat: the tokens after the reasoning are a call of this function
    /// (`delta.tool_calls`, as with `--tool-call-parser`), finished with
    /// `tool_calls`.
    pub tool_call: Option<String>,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            model: "m".to_owned(),
            slots: 4,
            max_queued: None,
            prefill: Duration::from_millis(5),
            first_prefill: None,
            token_interval: Duration::from_millis(2),
            natural_tokens: 16,
            cached_tokens: 0,
            spec_num_draft_tokens: None,
            spec_new_names: false,
            incremental_output: false,
            disconnect_abort_delay: Duration::from_secs(2),
            kv_capacity_tokens: 100_000,
            lagged_probe: false,
            script: Vec::new(),
            reasoning_tokens: 0,
            tool_call: None,
        }
    }
}

/// How an abort reached the simulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortSource {
    /// `POST /abort_request`.
    AbortRequest,
    /// The client's close, `disconnect_abort_delay` later.
    Disconnect,
}

/// One abort the simulator counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbortRecord {
    /// The rid.
    pub rid: String,
    /// Where the request was.
    pub phase: EnginePhase,
    /// When it was aborted.
    pub at: Instant,
    /// How.
    pub source: AbortSource,
}

/// SGLang's own records: the `/abort_request` calls and the client
/// closes noticed.
#[derive(Debug, Default)]
pub struct Calls {
    abort_calls: Vec<(String, Instant)>,
    disconnects: Vec<(String, EnginePhase, Instant)>,
}

/// SGLang as a [`Sim`] engine.
#[derive(Debug)]
pub enum Sglang {}

/// A running SGLang simulator; stops when dropped.
pub type SglangSim = Sim<Sglang>;

type Inner = SimCore<Sglang>;

impl Engine for Sglang {
    const NAME: &'static str = "SGLang";
    type Options = SimOptions;
    type Fault = Fault;
    type Record = Recorded;
    type Abort = AbortRecord;
    type Extra = Calls;

    fn basics(o: &SimOptions) -> Basics<'_, Fault> {
        Basics {
            slots: o.slots,
            kv_capacity_tokens: o.kv_capacity_tokens,
            lagged_probe: o.lagged_probe,
            script: &o.script,
        }
    }

    fn is_generation(record: &Recorded) -> bool {
        record.path == "/generate" || record.path.starts_with("/v1/")
    }

    fn serve(core: &Arc<Inner>, listener: TcpListener, stop: &CancellationToken) {
        http::serve(core, listener, stop, |inner, request, rd, wr| {
            Box::pin(handle(inner, request, rd, wr))
        });
    }
}

impl Inner {
    /// Aborts `rid` if still in flight; returns whether it was.
    fn abort(&self, rid: &str, source: AbortSource) -> bool {
        let at = Instant::now();
        self.abort_with(rid, |live| {
            live.abort.cancel();
            let record = AbortRecord {
                rid: rid.to_owned(),
                phase: live.phase,
                at,
                source,
            };
            (live.phase, record)
        })
    }
}

impl SglangSim {
    /// Every `/abort_request` call (rid, time), effective or not.
    pub fn abort_calls(&self) -> Vec<(String, Instant)> {
        self.core.state().extra.abort_calls.clone()
    }

    /// Every client close noticed during a request (rid, phase, time).
    pub fn disconnects(&self) -> Vec<(String, EnginePhase, Instant)> {
        self.core.state().extra.disconnects.clone()
    }
}

async fn handle(
    inner: &Arc<Inner>,
    request: HttpRequest,
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
) -> Next {
    let record = Recorded::of(&request);
    match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/health") => {
            inner.record(record);
            write_full(wr, 200, "application/json", "").await
        }
        ("GET", "/metrics") => {
            inner.state().live.scraped();
            let body = metrics_text(inner);
            write_full(wr, 200, "text/plain; version=0.0.4; charset=utf-8", &body).await
        }
        ("POST", "/abort_request") => {
            let at = record.at;
            inner.record(record);
            let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
            if let Some(rid) = body["rid"].as_str() {
                inner.state().extra.abort_calls.push((rid.to_owned(), at));
                inner.abort(rid, AbortSource::AbortRequest);
            }
            write_full(wr, 200, "application/json", "").await
        }
        ("POST", "/generate") => generate(inner, request, record, false, rd, wr).await,
        ("POST", "/v1/chat/completions") => generate(inner, request, record, true, rd, wr).await,
        _ => {
            inner.record(record);
            write_full(wr, 404, "application/json", FASTAPI_404).await
        }
    }
}

fn metrics_text(inner: &Inner) -> String {
    let (running, waiting, kv) = inner.gauges();
    let m = &inner.options.model;
    let labels = format!(
        "engine_type=\"unified\",model_name=\"{m}\",moe_ep_rank=\"0\",pp_rank=\"0\",tp_rank=\"0\""
    );
    let aborts = inner.state().aborts.total();
    format!(
        "# HELP sglang:num_running_reqs The number of running requests.\n\
# TYPE sglang:num_running_reqs gauge\n\
sglang:num_running_reqs{{{labels}}} {running}.0\n\
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.\n\
# TYPE sglang:num_queue_reqs gauge\n\
sglang:num_queue_reqs{{{labels}}} {waiting}.0\n\
# HELP sglang:token_usage The token usage.\n\
# TYPE sglang:token_usage gauge\n\
sglang:token_usage{{{labels}}} {kv:?}\n\
# HELP sglang:cache_hit_rate The prefix cache hit rate.\n\
# TYPE sglang:cache_hit_rate gauge\n\
sglang:cache_hit_rate{{{labels}}} 0.0\n\
# HELP sglang:num_aborted_requests_total Number of requests aborted.\n\
# TYPE sglang:num_aborted_requests_total counter\n\
sglang:num_aborted_requests_total{{{labels}}} {aborts}.0\n"
    )
}

/// Prompt tokens: words plus 1 for text, ids for `input_ids`, words plus 3
/// per chat message.
fn count_prompt(body: &Value, chat: bool) -> u64 {
    if chat {
        return chat_prompt_tokens(body);
    }
    match (&body["text"], &body["input_ids"]) {
        (Value::String(s), _) => 1 + words(s),
        (_, Value::Array(ids)) => ids.len() as u64,
        _ => 0,
    }
}

/// The log-probability the simulator gives token `i` of a generation.
pub fn token_logprob(i: u32) -> f64 {
    -0.25 * f64::from(i % 4 + 1)
}

/// The `rank`-th most likely token at position `i` (rank 0 is the token
/// generated, whose text is the generation's): its id, text and
/// log-probability.
pub fn top_logprob(i: u32, rank: u32) -> (u32, String, f64) {
    if rank == 0 {
        (1000 + i, token_text(i).to_owned(), token_logprob(i))
    } else {
        (
            2000 + rank,
            format!("<alt{rank}>"),
            token_logprob(i) - f64::from(rank),
        )
    }
}

/// What a native request asked of logprobs.
#[derive(Debug, Clone, Copy)]
struct Logprobs {
    top: u32,
    text: bool,
}

impl Logprobs {
    /// From a `/generate` body: `return_logprob`, `top_logprobs_num`,
    /// `return_text_in_logprobs`.
    fn of(body: &Value) -> Option<Self> {
        (body["return_logprob"] == Value::Bool(true)).then(|| Logprobs {
            top: body["top_logprobs_num"]
                .as_u64()
                .map_or(0, |n| u32::try_from(n.min(20)).unwrap_or(20)),
            text: body["return_text_in_logprobs"] == Value::Bool(true),
        })
    }

    /// One `[logprob, token_id, text]` entry.
    fn entry(self, logprob: f64, id: u32, text: &str) -> Value {
        let text = if self.text {
            Value::from(text)
        } else {
            Value::Null
        };
        Value::Array(vec![Value::from(logprob), Value::from(id), text])
    }
}

/// How a stream formats its events.
struct Format<'a> {
    chat: bool,
    incremental: bool,
    logprobs: Option<Logprobs>,
    rid: &'a str,
    prompt_tokens: u64,
    cached: u64,
    model: &'a str,
    /// The id of this request's first output token (1000, or later when
    /// it continues the engine's own output).
    first_id: u32,
}

impl Format<'_> {
    fn meta(&self, completion: u32, finish: &str, extra: &str) -> String {
        format!(
            r#"{{"id":{},"finish_reason":{finish},"prompt_tokens":{},"completion_tokens":{completion},"cached_tokens":{},"cached_tokens_details":null,"weight_version":"default","num_retractions":0{extra}}}"#,
            js(self.rid),
            self.prompt_tokens,
            self.cached
        )
    }

    /// The logprob keys of `meta_info` after `k` tokens whose texts are
    /// `texts`: every token's entries (cumulative), or the last token's
    /// (incremental; none for an event without new text).
    fn logprob_meta(&self, texts: &[String], k: u32) -> String {
        let Some(asked) = self.logprobs else {
            return String::new();
        };
        let positions: Vec<u32> = if self.incremental {
            let new = texts.last().is_some_and(|t| !t.is_empty());
            if new && k > 0 { vec![k - 1] } else { vec![] }
        } else {
            (0..k).collect()
        };
        let text = |i: u32| {
            texts
                .get(i as usize)
                .map_or_else(|| token_text(i), String::as_str)
                .to_owned()
        };
        let tokens: Vec<Value> = positions
            .iter()
            .map(|&i| asked.entry(token_logprob(i), 1000 + i, &text(i)))
            .collect();
        let mut meta = format!(
            r#","input_token_logprobs":[],"output_token_logprobs":{}"#,
            Value::Array(tokens)
        );
        if asked.top > 0 {
            let tops: Vec<Value> = positions
                .iter()
                .map(|&i| {
                    let alternatives = (0..asked.top)
                        .map(|rank| {
                            let (id, alt, logprob) = top_logprob(i, rank);
                            let alt = if rank == 0 { text(i) } else { alt };
                            asked.entry(logprob, id, &alt)
                        })
                        .collect();
                    Value::Array(alternatives)
                })
                .collect();
            meta.push_str(&format!(
                r#","input_top_logprobs":[],"output_top_logprobs":{}"#,
                Value::Array(tops)
            ));
        }
        meta
    }

    /// The native event after `k` tokens whose texts are `texts`.
    fn native(&self, texts: &[String], k: u32, finish: &str, extra: &str) -> String {
        let extra = format!("{}{extra}", self.logprob_meta(texts, k));
        let first = self.first_id;
        let (text, ids): (String, Vec<u32>) = if self.incremental {
            let last = k.saturating_sub(1);
            (
                texts.last().cloned().unwrap_or_default(),
                if k == 0 { vec![] } else { vec![first + last] },
            )
        } else {
            (texts.concat(), (0..k).map(|i| first + i).collect())
        };
        format!(
            r#"{{"text":{},"output_ids":{},"meta_info":{}}}"#,
            js(&text),
            Value::from(ids),
            self.meta(k, finish, &extra)
        )
    }

    fn chat_head(&self) -> String {
        format!(
            r#"{{"id":{},"object":"chat.completion.chunk","created":1,"model":{},"#,
            js(self.rid),
            js(self.model)
        )
    }
}

#[expect(clippy::too_many_lines, reason = "one request's whole life")]
async fn generate(
    inner: &Arc<Inner>,
    request: HttpRequest,
    record: Recorded,
    chat: bool,
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
) -> Next {
    let opts = &inner.options;
    let (fault, arrival) = inner.arrive(record);
    let fault = fault.unwrap_or(Fault::None);
    let Ok(body) = serde_json::from_slice::<Value>(&request.body) else {
        return write_full(
            wr,
            400,
            "application/json",
            r#"{"error":{"message":"Invalid JSON"}}"#,
        )
        .await;
    };
    if let Fault::Http { status, body } = &fault {
        return write_full(wr, *status, "application/json", body).await;
    }
    let max_tokens = if chat {
        body["max_completion_tokens"]
            .as_u64()
            .or_else(|| body["max_tokens"].as_u64())
    } else {
        body["sampling_params"]["max_new_tokens"].as_u64()
    }
    .unwrap_or(128);
    if body["stream"] != Value::Bool(true) {
        return write_full(
            wr,
            400,
            "application/json",
            r#"{"error":{"message":"the simulator only streams"}}"#,
        )
        .await;
    }
    let prompt_tokens = count_prompt(&body, chat);
    let rid = body["rid"]
        .as_str()
        .map_or_else(|| format!("sim-{arrival}"), str::to_owned);
    let head = http::sse_head(200);
    if inner.queue_full(opts.max_queued) {
        // 2026 builds: a 200 stream whose first event is the 503.
        let mut tail = frame(QUEUE_FULL_EVENT);
        tail.extend_from_slice(b"data: [DONE]\n\n");
        let ok = wr.write_all(head.as_bytes()).await.is_ok() && write_last(wr, &tail).await;
        return Next::keep_alive_if(ok);
    }
    let abort = inner.state().live.insert(&rid, prompt_tokens);
    if wr.write_all(head.as_bytes()).await.is_err() {
        return disconnected(inner, &rid, EnginePhase::Queued).await;
    }
    // Continuing its own output: `input_ids` ending in this engine's first
    // `resume` output ids (1000, 1001, ...; what the gateway's continuation
    // of a stream sends) decode on from token `resume`, as a greedy model
    // would, and end where the whole answer would have.
    let resume = if chat {
        0
    } else {
        continued_from(&body["input_ids"], opts.natural_tokens, |i| {
            1000 + u64::from(i)
        })
    };
    let fmt = Format {
        chat,
        incremental: opts.incremental_output,
        logprobs: if chat { None } else { Logprobs::of(&body) },
        rid: &rid,
        prompt_tokens,
        cached: opts.cached_tokens.min(prompt_tokens),
        model: &opts.model,
        first_id: 1000 + resume,
    };
    // Queued.
    let permit = tokio::select! {
        permit = inner.slots.clone().acquire_owned() => match permit {
            Ok(permit) => Some(permit),
            // The semaphore is never closed.
            Err(_) => return disconnected(inner, &rid, EnginePhase::Queued).await,
        },
        () = closed(rd) => return disconnected(inner, &rid, EnginePhase::Queued).await,
        () = abort.cancelled() => None,
    };
    let Some(permit) = permit else {
        return aborted_end(wr, &fmt, &[], 0, "Abort in waiting queue").await;
    };
    inner.set_phase(&rid, EnginePhase::Prefill);
    let prefill = prefill_time(arrival, opts.prefill, opts.first_prefill);
    match wait(prefill, rd, Some(&abort)).await {
        Wake::Ready => {}
        Wake::Closed => return disconnected(inner, &rid, EnginePhase::Prefill).await,
        Wake::Aborted => {
            drop(permit);
            return aborted_end(wr, &fmt, &[], 0, "Abort before prefill").await;
        }
    }
    inner.set_phase(&rid, EnginePhase::Decode);
    let natural = u64::from(opts.natural_tokens.saturating_sub(resume));
    let n = natural.min(max_tokens) as u32;
    let finish = if max_tokens <= natural {
        format!(r#"{{"type":"length","length":{n}}}"#)
    } else {
        r#"{"type":"stop","matched":151645}"#.to_owned()
    };
    let mut texts: Vec<String> = Vec::new();
    if chat {
        let role = format!(
            r#"{}"choices":[{{"index":0,"delta":{{"role":"assistant","content":"","reasoning_content":null,"tool_calls":null}},"logprobs":null,"finish_reason":null,"matched_stop":null}}],"usage":null}}"#,
            fmt.chat_head()
        );
        if !write_chunk(wr, &frame(&role)).await {
            return disconnected(inner, &rid, EnginePhase::Decode).await;
        }
    }
    for i in 0..n {
        if i > 0 {
            match wait(opts.token_interval, rd, Some(&abort)).await {
                Wake::Ready => {}
                Wake::Closed => return disconnected(inner, &rid, EnginePhase::Decode).await,
                Wake::Aborted => {
                    return aborted_end(wr, &fmt, &texts, i, "Abort in decode").await;
                }
            }
        }
        match &fault {
            Fault::ErrorEvent { after_tokens, json } if *after_tokens == i => {
                let mut tail = frame(json);
                tail.extend_from_slice(b"data: [DONE]\n\n");
                inner.state().live.remove(&rid);
                return Next::keep_alive_if(write_last(wr, &tail).await);
            }
            Fault::AbortFinish {
                after_tokens,
                status_code,
                message,
            } if *after_tokens == i => {
                let code = status_code.map_or(String::new(), |c| format!(r#","status_code":{c}"#));
                let reason = format!(r#"{{"type":"abort","message":{}{code}}}"#, js(message));
                inner.state().live.remove(&rid);
                return end_with(wr, &fmt, &texts, i, &reason, "").await;
            }
            Fault::Stall { after_tokens } if *after_tokens == i => {
                tokio::select! {
                    () = closed(rd) => return disconnected(inner, &rid, EnginePhase::Decode).await,
                    () = abort.cancelled() => {
                        return aborted_end(wr, &fmt, &texts, i, "Abort in decode").await;
                    }
                }
            }
            Fault::Truncate { after_tokens } if *after_tokens == i => {
                inner.state().live.remove(&rid);
                return Next::keep_alive_if(wr.write_all(b"0\r\n\r\n").await.is_ok());
            }
            _ => {}
        }
        let split_here = matches!(fault, Fault::SplitUtf8 { at_token } if at_token == i);
        let text = if split_here {
            "é🙂"
        } else {
            token_text(i + resume)
        };
        texts.push(text.to_owned());
        let last = i + 1 == n;
        let event = if chat {
            format!(
                r#"{}"choices":[{{"index":0,"delta":{},"logprobs":null,"finish_reason":null,"matched_stop":null}}],"usage":null}}"#,
                fmt.chat_head(),
                chat_delta(opts, i, text, arrival)
            )
        } else if matches!(fault, Fault::NotAPrefix { at_token } if at_token == i) {
            let mut json = fmt.native(&texts, i + 1, "null", "");
            json = json.replacen(r#"{"text":"Hel"#, r#"{"text":"Jel"#, 1);
            json
        } else if last {
            let extra = spec_extra(opts, n);
            fmt.native(
                &texts,
                i + 1,
                &finish,
                &format!(r#","e2e_latency":0.12{extra}"#),
            )
        } else {
            fmt.native(&texts, i + 1, "null", "")
        };
        let bytes = frame(&event);
        let pieces = split_here.then(|| split_inside_chars(&bytes)).flatten();
        let ok = match pieces {
            Some(pieces) => write_pieces(wr, pieces).await,
            None => write_chunk(wr, &bytes).await,
        };
        if !ok {
            return disconnected(inner, &rid, EnginePhase::Decode).await;
        }
        inner.state().live.add_token(&rid);
    }
    // The request is over in the engine once its last event is out.
    inner.finish(&rid);
    drop(permit);
    let tail = if chat {
        let reason = if finish.contains("length") {
            "length"
        } else if opts.tool_call.is_some() {
            "tool_calls"
        } else {
            "stop"
        };
        let matched = if reason == "stop" { "151645" } else { "null" };
        let mut tail = frame(&format!(
            r#"{}"choices":[{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"{reason}","matched_stop":{matched}}}],"usage":null}}"#,
            fmt.chat_head()
        ));
        if body["stream_options"]["include_usage"] == Value::Bool(true) {
            tail.extend(frame(&format!(
                r#"{}"choices":[],"usage":{{"prompt_tokens":{prompt_tokens},"total_tokens":{},"completion_tokens":{n},"prompt_tokens_details":null}}}}"#,
                fmt.chat_head(),
                prompt_tokens + u64::from(n)
            )));
        }
        tail.extend_from_slice(b"data: [DONE]\n\n");
        tail
    } else {
        b"data: [DONE]\n\n".to_vec()
    };
    Next::keep_alive_if(write_last(wr, &tail).await)
}

/// The final-event spec keys for `n` tokens (§3.8).
fn spec_extra(opts: &SimOptions, n: u32) -> String {
    let Some(draft) = opts.spec_num_draft_tokens else {
        return String::new();
    };
    let n = u64::from(n);
    let verify = n.div_ceil(3);
    let accepted = n - verify;
    let proposed = verify * (draft - 1);
    let (acc, prop) = if opts.spec_new_names {
        ("spec_num_correct_drafts", "spec_num_proposed_drafts")
    } else {
        ("spec_accepted_drafts", "spec_proposed_drafts")
    };
    format!(
        r#","spec_verify_ct":{verify},"spec_accept_rate":{:.4},"spec_accept_length":{:.4},"{acc}":{accepted},"{prop}":{proposed},"spec_accept_histogram":[0,0,{verify}]"#,
        accepted as f64 / proposed.max(1) as f64,
        n as f64 / verify.max(1) as f64
    )
}

/// A final event with `reason` after `k` tokens, then `[DONE]`.
async fn end_with(
    wr: &mut OwnedWriteHalf,
    fmt: &Format<'_>,
    texts: &[String],
    k: u32,
    reason: &str,
    extra: &str,
) -> Next {
    let mut tail = if fmt.chat {
        let r = if reason.contains("abort") {
            "abort"
        } else {
            "stop"
        };
        frame(&format!(
            r#"{}"choices":[{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"{r}","matched_stop":null}}],"usage":null}}"#,
            fmt.chat_head()
        ))
    } else {
        // Nothing new since the last event: the same text again.
        let texts: Vec<String> = if fmt.incremental {
            vec![String::new()]
        } else {
            texts.to_vec()
        };
        frame(&fmt.native(&texts, k, reason, extra))
    };
    tail.extend_from_slice(b"data: [DONE]\n\n");
    Next::keep_alive_if(write_last(wr, &tail).await)
}

/// The victim's end after `/abort_request` (TV-10).
async fn aborted_end(
    wr: &mut OwnedWriteHalf,
    fmt: &Format<'_>,
    texts: &[String],
    k: u32,
    message: &str,
) -> Next {
    let reason = format!(r#"{{"type":"abort","message":{}}}"#, js(message));
    end_with(wr, fmt, texts, k, &reason, "").await
}

/// The client closed: like SGLang, abort `disconnect_abort_delay` later.
async fn disconnected(inner: &Arc<Inner>, rid: &str, phase: EnginePhase) -> Next {
    inner
        .state()
        .extra
        .disconnects
        .push((rid.to_owned(), phase, Instant::now()));
    let abort = inner.state().live.abort_token(rid);
    let Some(abort) = abort else {
        return Next::Close;
    };
    // An `/abort_request` in the meantime frees the slot at once.
    tokio::select! {
        () = tokio::time::sleep(inner.options.disconnect_abort_delay) => {
            inner.abort(rid, AbortSource::Disconnect);
        }
        () = abort.cancelled() => {}
    }
    Next::Close
}

/// The chat `delta` of token `i` with `text`, in SGLang's shape (every key
/// present, `null` when unused): reasoning first, then the tool call, then
/// content.
fn chat_delta(opts: &SimOptions, i: u32, text: &str, arrival: u64) -> String {
    if i < opts.reasoning_tokens {
        return format!(
            r#"{{"role":null,"content":null,"reasoning_content":{},"tool_calls":null}}"#,
            js(text)
        );
    }
    match &opts.tool_call {
        Some(name) if i == opts.reasoning_tokens => format!(
            r#"{{"role":null,"content":null,"reasoning_content":null,"tool_calls":[{{"id":"call_{arrival:08x}","index":0,"type":"function","function":{{"name":{},"arguments":""}}}}]}}"#,
            js(name)
        ),
        Some(_) => format!(
            r#"{{"role":null,"content":null,"reasoning_content":null,"tool_calls":[{{"id":null,"index":0,"type":"function","function":{{"name":null,"arguments":{}}}}}]}}"#,
            js(text)
        ),
        None => format!(
            r#"{{"role":null,"content":{},"reasoning_content":null,"tool_calls":null}}"#,
            js(text)
        ),
    }
}
