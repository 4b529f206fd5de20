//! vLLM's `POST /v1/embeddings` as a pooling model serves it (vLLM 0.32,
//! `--runner pooling --convert embed`, observed on the CPU build): the
//! inputs (a string, strings, token ids, token-id arrays) queue for a slot
//! like generations, spend the prefill time, and come back in one JSON
//! body with a deterministic vector per input ([`embedding_of`] of the
//! input's token ids, [`text_ids`] for a text) and usage counted like a
//! completion's prompt (1 + words for a text, the ids for tokens).
//!
//! Errors as vLLM writes them: no input → 400 `You must pass at least one
//! prompt`; `dimensions` → 400 (the model is not Matryoshka); an input
//! longer than the context → 400 with `param: input_tokens`; an unknown
//! `encoding_format` → 400; a bad model → the engine's 404; a full queue →
//! 503. A server of a generative model ([`SimOptions::embeddings`] off),
//! and trtllm-serve, have no such route: FastAPI's 404. Scripted
//! [`Fault::Http`] and [`Fault::Stall`] apply (the others are about
//! streams).

use std::sync::Arc;

use gateway_core::{EnginePhase, base64_encode};
use serde_json::Value;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::{DYNAMO_404, Fault, Inner, Recorded, SimEngine, SimOptions, not_found_404};
use crate::http::{
    FASTAPI_404, HttpRequest, Next, Wake, closed, js, wait, write_full, write_full_with,
};
use crate::slots::prefill_time;

/// The simulated model's context (its `/v1/models` `max_model_len`).
pub const MAX_MODEL_LEN: u64 = 8192;

/// The token ids the simulator gives a text: BOS (1), then one id per
/// whitespace-separated word (an FNV-1a hash of it, below 32000).
pub fn text_ids(text: &str) -> Vec<u32> {
    let mut ids = vec![1];
    ids.extend(text.split_whitespace().map(|w| {
        let mut h: u32 = 0x811c_9dc5;
        for b in w.bytes() {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
        2 + h % 31_998
    }));
    ids
}

/// The simulator's vector of token ids `ids`: `dims` values, each a sum of
/// sines of the ids and positions, L2-normalized (like vLLM's default
/// pooling activation), as `f32`.
pub fn embedding_of(ids: &[u32], dims: usize) -> Vec<f32> {
    let mut v = vec![0f64; dims];
    for (pos, id) in ids.iter().enumerate() {
        for (j, x) in v.iter_mut().enumerate() {
            let phase = f64::from(*id) * 0.618_033_988_75 * (j as f64 + 1.0) + pos as f64 * 0.3;
            *x += phase.sin();
        }
    }
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    v.iter()
        .map(|x| if norm > 0.0 { (x / norm) as f32 } else { 0.0 })
        .collect()
}

/// vLLM's 400 body with `message` (and `param`).
fn bad_request(message: &str, param: Option<&str>) -> String {
    format!(
        r#"{{"error":{{"message":{},"type":"BadRequestError","param":{},"code":400}}}}"#,
        js(message),
        param.map_or_else(|| "null".to_owned(), js)
    )
}

/// The inputs' token ids, or vLLM's 400 body.
fn inputs(body: &Value) -> Result<Vec<Vec<u32>>, String> {
    let ids = |values: &[Value]| -> Option<Vec<u32>> {
        values
            .iter()
            .map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()))
            .collect()
    };
    let invalid = || {
        bad_request(
            "1 validation error:\n  {'type': 'value_error', 'loc': ('body', 'input'), 'msg': 'Input should be a valid string or list'}",
            None,
        )
    };
    match &body["input"] {
        Value::String(text) => Ok(vec![text_ids(text)]),
        Value::Array(items) if items.is_empty() => {
            Err(bad_request("You must pass at least one prompt", None))
        }
        Value::Array(items) if items[0].is_number() => {
            ids(items).map(|v| vec![v]).ok_or_else(invalid)
        }
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(text) => Some(text_ids(text)),
                Value::Array(values) => ids(values),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(invalid),
        _ => Err(invalid()),
    }
}

/// The number as Python prints a float32 widened to a float: the shortest
/// text that reads back as the same `f64`.
fn float_text(x: f32) -> String {
    format!("{:?}", f64::from(x))
}

pub(super) async fn embeddings(
    inner: &Arc<Inner>,
    request: HttpRequest,
    mut record: Recorded,
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
) -> Next {
    let opts: &SimOptions = &inner.options;
    let engine = opts.engine;
    if !opts.embeddings || engine == SimEngine::TrtLlm {
        inner.record(record);
        return write_full(wr, 404, "application/json", FASTAPI_404).await;
    }
    let Ok(body) = serde_json::from_slice::<Value>(&request.body) else {
        inner.record(record);
        let bad = r#"{"error":{"message":"1 validation error:\n  {'type': 'json_invalid', 'loc': 'body.1', 'msg': 'JSON decode error'}","type":"Bad Request","param":"body.1","code":400}}"#;
        return write_full(wr, 400, "application/json", bad).await;
    };
    let parsed = inputs(&body);
    if let Ok(all) = &parsed {
        record.prompt_tokens = all.iter().map(|ids| ids.len() as u64).sum();
    }
    let (fault, arrival) = inner.arrive(record);
    if let Some(model) = body["model"].as_str()
        && model != opts.model
    {
        let body = match engine {
            SimEngine::Dynamo | SimEngine::DynamoOld => DYNAMO_404.to_owned(),
            _ => not_found_404(model),
        };
        return write_full(wr, 404, "application/json", &body).await;
    }
    match fault {
        Some(Fault::Http {
            status,
            body,
            retry_after,
        }) => {
            let headers: Vec<(&str, String)> = retry_after
                .iter()
                .map(|s| ("retry-after", s.to_string()))
                .collect();
            return write_full_with(wr, status, "application/json", &body, &headers).await;
        }
        Some(Fault::Stall { .. }) => {
            let id = request
                .header("x-request-id")
                .map_or_else(|| format!("sim-{arrival}"), str::to_owned);
            inner.state().live.insert(&id, 0);
            inner.set_phase(&id, EnginePhase::Prefill);
            closed(rd).await;
            return inner.aborted(&id, EnginePhase::Prefill);
        }
        _ => {}
    }
    let all = match parsed {
        Ok(all) => all,
        Err(body) => return write_full(wr, 400, "application/json", &body).await,
    };
    let base64 = match &body["encoding_format"] {
        Value::Null => false,
        Value::String(f) if f == "float" => false,
        Value::String(f) if f == "base64" => true,
        _ => {
            let bad = r#"{"error":{"message":"1 validation error:\n  {'type': 'literal_error', 'loc': 'body.encoding_format', 'msg': \"Input should be 'float', 'base64', 'bytes' or 'bytes_only'\"}","type":"Bad Request","param":null,"code":400}}"#;
            return write_full(wr, 400, "application/json", bad).await;
        }
    };
    if let Some(n) = body["dimensions"].as_u64() {
        let message = format!(
            "Model '{}' does not support Matryoshka embeddings; dimensions must be unset (received dimensions={n}).",
            opts.model
        );
        return write_full(wr, 400, "application/json", &bad_request(&message, None)).await;
    }
    if let Some(long) = all.iter().map(Vec::len).find(|n| *n as u64 > MAX_MODEL_LEN) {
        let message = format!(
            "This model's maximum context length is {MAX_MODEL_LEN} tokens. However, your prompt contains at least {long} input tokens, which exceeds this limit even without any output tokens. Please reduce the length of the input prompt. (parameter=input_tokens, value={long})"
        );
        return write_full(
            wr,
            400,
            "application/json",
            &bad_request(&message, Some("input_tokens")),
        )
        .await;
    }
    if inner.queue_full(opts.max_waiting) {
        return write_full(wr, 503, "application/json", super::BUSY_503).await;
    }
    let prompt_tokens: u64 = all.iter().map(|ids| ids.len() as u64).sum();
    let id = request
        .header("x-request-id")
        .map_or_else(|| format!("sim-{arrival}"), str::to_owned);
    inner.state().live.insert(&id, prompt_tokens);
    let permit = tokio::select! {
        permit = inner.slots.clone().acquire_owned() => permit,
        () = closed(rd) => return inner.aborted(&id, EnginePhase::Queued),
    };
    let Ok(permit) = permit else {
        return inner.aborted(&id, EnginePhase::Queued);
    };
    inner.set_phase(&id, EnginePhase::Prefill);
    let prefill = prefill_time(arrival, opts.prefill, opts.first_prefill);
    if wait(prefill, rd, None).await == Wake::Closed {
        return inner.aborted(&id, EnginePhase::Prefill);
    }
    let mut data = String::new();
    for (i, ids) in all.iter().enumerate() {
        let vector = embedding_of(ids, opts.embedding_dims);
        let embedding = if base64 {
            let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
            js(&base64_encode(&bytes))
        } else {
            let numbers: Vec<String> = vector.iter().map(|x| float_text(*x)).collect();
            format!("[{}]", numbers.join(","))
        };
        if i > 0 {
            data.push(',');
        }
        data.push_str(&format!(
            r#"{{"index":{i},"object":"embedding","embedding":{embedding}}}"#
        ));
    }
    let answer = format!(
        r#"{{"id":"embd-{arrival}","object":"list","created":1,"model":{},"data":[{data}],"usage":{{"prompt_tokens":{prompt_tokens},"total_tokens":{prompt_tokens},"completion_tokens":0,"prompt_tokens_details":null}}}}"#,
        js(&opts.model)
    );
    let next = write_full(wr, 200, "application/json", &answer).await;
    inner.finish(&id);
    drop(permit);
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_are_deterministic_unit_length_and_differ_by_input() {
        let a = embedding_of(&text_ids("Hello world"), 8);
        assert_eq!(
            a,
            embedding_of(&[1, text_ids("Hello")[1], text_ids("world")[1]], 8)
        );
        assert_eq!(a.len(), 8);
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        assert_ne!(a, embedding_of(&text_ids("Hello there"), 8));
        assert_eq!(text_ids("  "), [1]);
        assert_eq!(float_text(0.1), "0.10000000149011612");
    }
}
