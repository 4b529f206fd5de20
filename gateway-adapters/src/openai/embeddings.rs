//! OpenAI's embeddings wire: the client's `POST /v1/embeddings` body
//! ([`parse_embeddings`]), the gateway's answer ([`embeddings_body`]),
//! and the engine side: the upstream body ([`upstream_embeddings_body`])
//! and the engine's answer ([`parse_upstream_embeddings`]).

use std::borrow::Cow;
use std::collections::HashSet;

use bytes::Bytes;
#[cfg(feature = "engines")]
use gateway_core::{EmbedRequest, Embeddings};
use gateway_core::{Embedding, EmbeddingVector, EncodingFormat, Prompt};
#[cfg(feature = "engines")]
use serde::Deserialize;
use serde_json::Value;

use super::json::{self, Sink};
use super::request::RequestError;

/// Most inputs in one request (OpenAI's limit).
pub const MAX_EMBEDDING_INPUTS: usize = 2048;

/// A validated `POST /v1/embeddings` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingsParsed {
    /// The public model name.
    pub model: String,
    /// The inputs: texts, or token-id arrays.
    pub inputs: Vec<Prompt>,
    /// `encoding_format` (default `float`).
    pub encoding_format: EncodingFormat,
    /// `dimensions`, if set.
    pub dimensions: Option<u32>,
    /// Every other field (`user`, an engine's own), verbatim, as the text
    /// of a JSON object.
    pub extra: Option<String>,
}

/// Parses and validates a `POST /v1/embeddings` body: `model` (a
/// non-empty string), `input` (a string, an array of strings, an array of
/// token ids or an array of token-id arrays; not empty, at most
/// [`MAX_EMBEDDING_INPUTS`] items, no empty token array),
/// `encoding_format` (`float` or `base64`), `dimensions` (a positive
/// integer); the other fields are kept verbatim as `extra`.
///
/// # Errors
/// A [`RequestError`] naming the field.
pub fn parse_embeddings(body: &[u8]) -> Result<EmbeddingsParsed, RequestError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| RequestError::new("request body is not valid UTF-8", None))?;
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(text) {
        return Err(RequestError::new(format!("malformed JSON: {e}"), None));
    }
    let entries = json::object_entries(text)
        .ok_or_else(|| RequestError::new("request body must be a JSON object", None))?;
    let (mut model, mut input, mut format, mut dimensions) = (None, None, None, None);
    let mut seen: HashSet<Cow<'_, str>> = HashSet::with_capacity(entries.len());
    let mut extra = Vec::new();
    for entry in &entries {
        let key = entry
            .key_text()
            .ok_or_else(|| RequestError::new("malformed JSON: invalid key", None))?;
        if seen.contains(&key) {
            return Err(RequestError::new(
                format!("duplicate field '{}'", clip(&key)),
                Some(&clip(&key)),
            ));
        }
        match &*key {
            "model" => model = Some(entry.value),
            "input" => input = Some(entry.value),
            "encoding_format" => format = Some(entry.value),
            "dimensions" => dimensions = Some(entry.value),
            _ => {
                extra.push(if extra.is_empty() { b'{' } else { b',' });
                extra.extend_from_slice(entry.key.as_bytes());
                extra.push(b':');
                extra.extend_from_slice(entry.value.as_bytes());
            }
        }
        seen.insert(key);
    }
    let extra = if extra.is_empty() {
        None
    } else {
        extra.push(b'}');
        String::from_utf8(extra).ok()
    };
    let at = |param: &str, message: &str| RequestError::new(message, Some(param));
    let model = match parsed(model, "model")? {
        Some(Value::String(s)) if !s.is_empty() => s,
        Some(Value::String(_)) => return Err(at("model", "model must not be empty")),
        Some(_) => return Err(at("model", "model must be a string")),
        None => return Err(at("model", "model is required")),
    };
    let inputs = inputs(parsed(input, "input")?)?;
    let encoding_format = match parsed(format, "encoding_format")? {
        None | Some(Value::Null) => EncodingFormat::Float,
        Some(Value::String(name)) => EncodingFormat::from_name(&name).ok_or_else(|| {
            at(
                "encoding_format",
                "encoding_format must be \"float\" or \"base64\"",
            )
        })?,
        Some(_) => return Err(at("encoding_format", "encoding_format must be a string")),
    };
    let dimensions = match parsed(dimensions, "dimensions")? {
        None | Some(Value::Null) => None,
        Some(n) => Some(
            n.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n >= 1)
                .ok_or_else(|| at("dimensions", "dimensions must be a positive integer"))?,
        ),
    };
    Ok(EmbeddingsParsed {
        model,
        inputs,
        encoding_format,
        dimensions,
        extra,
    })
}

fn parsed(raw: Option<&str>, param: &str) -> Result<Option<Value>, RequestError> {
    raw.map(|raw| {
        serde_json::from_str(raw)
            .map_err(|e| RequestError::new(format!("{param}: invalid value: {e}"), Some(param)))
    })
    .transpose()
}

fn inputs(input: Option<Value>) -> Result<Vec<Prompt>, RequestError> {
    let err = |message: &str| RequestError::new(message, Some("input"));
    let shape = "input must be a string, an array of strings, an array of token ids or an array of token-id arrays";
    let items = match input {
        Some(Value::String(text)) => return Ok(vec![Prompt::Text(text)]),
        Some(Value::Array(items)) => items,
        None | Some(Value::Null) => return Err(err("input is required")),
        Some(_) => return Err(err(shape)),
    };
    if items.is_empty() {
        return Err(err("input must not be empty"));
    }
    let ids = |i: Option<usize>, values: &[Value]| -> Result<Vec<u32>, RequestError> {
        let param = match i {
            Some(i) => format!("input[{i}]"),
            None => "input".to_owned(),
        };
        if values.is_empty() {
            return Err(RequestError::new(
                format!("{param} must not be an empty token array"),
                Some(&param),
            ));
        }
        values
            .iter()
            .map(|v| v.as_u64().and_then(|id| u32::try_from(id).ok()))
            .collect::<Option<Vec<u32>>>()
            .ok_or_else(|| {
                RequestError::new(
                    format!("{param}: token ids must be integers between 0 and 4294967295"),
                    Some(&param),
                )
            })
    };
    // An array of numbers is one tokenized input.
    if items.first().is_some_and(Value::is_number) {
        return Ok(vec![Prompt::Tokens(ids(None, &items)?)]);
    }
    if items.len() > MAX_EMBEDDING_INPUTS {
        return Err(err("input must hold at most 2048 items"));
    }
    let strings = items.first().is_some_and(Value::is_string);
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match (item, strings) {
            (Value::String(text), true) => Ok(Prompt::Text(text)),
            (Value::Array(values), false) => ids(Some(i), &values).map(Prompt::Tokens),
            _ => Err(RequestError::new(
                format!("input[{i}]: every item must be a string, or every item a token-id array"),
                Some(&format!("input[{i}]")),
            )),
        })
        .collect()
}

/// At most 64 characters of client text, for error messages.
fn clip(s: &str) -> Cow<'_, str> {
    match s.char_indices().nth(64) {
        Some((end, _)) => Cow::Owned(format!("{}...", s.get(..end).unwrap_or_default())),
        None => Cow::Borrowed(s),
    }
}

/// The gateway's answer, OpenAI's shape:
/// `{"object":"list","data":[{"object":"embedding","index":i,"embedding":[...] or "<base64>"}],
/// "model":...,"usage":{"prompt_tokens":n,"total_tokens":n}}`.
pub fn embeddings_body(data: &[Embedding], model: &str, prompt_tokens: u64) -> Bytes {
    let values: usize = data
        .iter()
        .map(|e| match &e.vector {
            EmbeddingVector::Float(v) => v.len() * 12,
            EmbeddingVector::Base64(s) => s.len(),
        })
        .sum();
    let mut out: Vec<u8> = Vec::with_capacity(values + data.len() * 48 + 128);
    out.put(br#"{"object":"list","data":["#);
    for (i, e) in data.iter().enumerate() {
        if i > 0 {
            out.put(b",");
        }
        out.put(br#"{"object":"embedding","index":"#);
        json::u64_into(&mut out, u64::from(e.index));
        out.put(br#","embedding":"#);
        match &e.vector {
            EmbeddingVector::Float(values) => {
                out.put(b"[");
                for (j, v) in values.iter().enumerate() {
                    if j > 0 {
                        out.put(b",");
                    }
                    float_into(&mut out, *v);
                }
                out.put(b"]");
            }
            EmbeddingVector::Base64(text) => json::string_into(&mut out, text),
        }
        out.put(b"}");
    }
    out.put(br#"],"model":"#);
    json::string_into(&mut out, model);
    out.put(br#","usage":{"prompt_tokens":"#);
    json::u64_into(&mut out, prompt_tokens);
    out.put(br#","total_tokens":"#);
    json::u64_into(&mut out, prompt_tokens);
    out.put(b"}}");
    Bytes::from(out)
}

/// `x` in its shortest round-trip form (a non-finite value, which JSON
/// cannot carry, as `0.0`).
fn float_into(out: &mut Vec<u8>, x: f64) {
    let x = if x.is_finite() { x } else { 0.0 };
    match serde_json::to_string(&x) {
        Ok(text) => out.put(text.as_bytes()),
        Err(_) => out.put(b"0.0"),
    }
}

/// Why an embeddings request cannot go to an engine as it is.
#[cfg(feature = "engines")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UpstreamBodyError {
    /// Texts and token arrays mixed in one request (OpenAI's wire has no
    /// such input).
    MixedInputs,
    /// A chat input.
    ChatInput,
    /// The extra fields are not a JSON object.
    Extra(RequestError),
}

/// The engine's body: `model` (the served name), `input` (an array of
/// strings or of token-id arrays), `encoding_format`, `dimensions` when
/// set, then the request's extra fields (`user`, ...) that the body does
/// not already have.
#[cfg(feature = "engines")]
pub(crate) fn upstream_embeddings_body(
    request: &EmbedRequest,
    model: &str,
) -> Result<Vec<u8>, UpstreamBodyError> {
    let mut out: Vec<u8> = Vec::with_capacity(256);
    out.put(br#"{"model":"#);
    json::string_into(&mut out, model);
    out.put(br#","input":["#);
    let texts = request
        .inputs
        .first()
        .is_some_and(|p| matches!(p, Prompt::Text(_)));
    for (i, input) in request.inputs.iter().enumerate() {
        if i > 0 {
            out.put(b",");
        }
        match (input, texts) {
            (Prompt::Text(text), true) => json::string_into(&mut out, text),
            (Prompt::Tokens(ids), false) => {
                out.put(b"[");
                for (j, id) in ids.iter().enumerate() {
                    if j > 0 {
                        out.put(b",");
                    }
                    json::u64_into(&mut out, u64::from(*id));
                }
                out.put(b"]");
            }
            (Prompt::Chat(_), _) => return Err(UpstreamBodyError::ChatInput),
            _ => return Err(UpstreamBodyError::MixedInputs),
        }
    }
    out.put(br#"],"encoding_format":"#);
    json::string_into(&mut out, request.encoding_format.as_str());
    if let Some(n) = request.dimensions {
        out.put(br#","dimensions":"#);
        json::u64_into(&mut out, u64::from(n));
    }
    out.put(b"}");
    if let Some(extra) = &request.extra {
        super::merge_extra(&mut out, extra).map_err(UpstreamBodyError::Extra)?;
    }
    Ok(out)
}

#[cfg(feature = "engines")]
#[derive(Deserialize)]
struct WireAnswer {
    data: Vec<WireEmbedding>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[cfg(feature = "engines")]
#[derive(Deserialize)]
struct WireEmbedding {
    index: u32,
    embedding: WireVector,
}

#[cfg(feature = "engines")]
#[derive(Deserialize)]
#[serde(untagged)]
enum WireVector {
    Float(Vec<f64>),
    Base64(String),
}

#[cfg(feature = "engines")]
#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
}

/// An engine's embeddings answer (OpenAI's shape; other keys ignored).
///
/// # Errors
/// What is wrong with it, for a protocol-violation message.
#[cfg(feature = "engines")]
pub(crate) fn parse_upstream_embeddings(body: &[u8]) -> Result<Embeddings, String> {
    let answer: WireAnswer = serde_json::from_slice(body)
        .map_err(|e| format!("the engine's embeddings answer is not valid: {e}"))?;
    Ok(Embeddings {
        data: answer
            .data
            .into_iter()
            .map(|e| Embedding {
                index: e.index,
                vector: match e.embedding {
                    WireVector::Float(v) => EmbeddingVector::Float(v),
                    WireVector::Base64(s) => EmbeddingVector::Base64(s),
                },
            })
            .collect(),
        prompt_tokens: answer.usage.and_then(|u| u.prompt_tokens),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(body: &str) -> Option<String> {
        parse_embeddings(body.as_bytes()).unwrap_err().param
    }

    #[test]
    fn every_input_shape_parses() {
        let p = parse_embeddings(br#"{"model":"m","input":"hi"}"#).unwrap();
        assert_eq!(p.inputs, [Prompt::Text("hi".into())]);
        assert_eq!(
            (p.encoding_format, p.dimensions, p.extra),
            (EncodingFormat::Float, None, None)
        );
        let p = parse_embeddings(br#"{"model":"m","input":["a","b"],"encoding_format":"base64","dimensions":8,"user":"u-1","truncate_prompt_tokens":5}"#).unwrap();
        assert_eq!(
            p.inputs,
            [Prompt::Text("a".into()), Prompt::Text("b".into())]
        );
        assert_eq!(
            (p.encoding_format, p.dimensions),
            (EncodingFormat::Base64, Some(8))
        );
        assert_eq!(
            p.extra.as_deref(),
            Some(r#"{"user":"u-1","truncate_prompt_tokens":5}"#)
        );
        let p = parse_embeddings(br#"{"model":"m","input":[1,2,3]}"#).unwrap();
        assert_eq!(p.inputs, [Prompt::Tokens(vec![1, 2, 3])]);
        let p = parse_embeddings(br#"{"model":"m","input":[[1],[2,3]],"encoding_format":null}"#)
            .unwrap();
        assert_eq!(
            p.inputs,
            [Prompt::Tokens(vec![1]), Prompt::Tokens(vec![2, 3])]
        );
    }

    #[test]
    fn refusals_name_the_field() {
        assert_eq!(param(r#"{"input":"x"}"#).as_deref(), Some("model"));
        assert_eq!(
            param(r#"{"model":"","input":"x"}"#).as_deref(),
            Some("model")
        );
        assert_eq!(param(r#"{"model":"m"}"#).as_deref(), Some("input"));
        assert_eq!(
            param(r#"{"model":"m","input":[]}"#).as_deref(),
            Some("input")
        );
        assert_eq!(
            param(r#"{"model":"m","input":7}"#).as_deref(),
            Some("input")
        );
        assert_eq!(
            param(r#"{"model":"m","input":[-1]}"#).as_deref(),
            Some("input")
        );
        assert_eq!(
            param(r#"{"model":"m","input":["a",[1]]}"#).as_deref(),
            Some("input[1]")
        );
        assert_eq!(
            param(r#"{"model":"m","input":[[1],[]]}"#).as_deref(),
            Some("input[1]")
        );
        assert_eq!(
            param(r#"{"model":"m","input":[[1],"a"]}"#).as_deref(),
            Some("input[1]")
        );
        assert_eq!(
            param(r#"{"model":"m","input":"x","encoding_format":"bytes"}"#).as_deref(),
            Some("encoding_format")
        );
        for bad in ["0", "-2", "1.5", "\"8\""] {
            let body = format!(r#"{{"model":"m","input":"x","dimensions":{bad}}}"#);
            assert_eq!(param(&body).as_deref(), Some("dimensions"), "{bad}");
        }
        let many = format!(
            r#"{{"model":"m","input":[{}]}}"#,
            vec!["\"a\""; 2049].join(",")
        );
        assert_eq!(param(&many).as_deref(), Some("input"));
        assert_eq!(
            param(r#"{"model":"m","model":"n","input":"x"}"#).as_deref(),
            Some("model")
        );
        assert_eq!(parse_embeddings(b"[1]").unwrap_err().param, None);
        assert_eq!(parse_embeddings(b"{").unwrap_err().param, None);
    }

    #[test]
    fn the_answer_has_openais_shape() {
        let data = [
            Embedding {
                index: 0,
                vector: EmbeddingVector::Float(vec![0.5, -0.13352496922016144, 1e-7]),
            },
            Embedding {
                index: 1,
                vector: EmbeddingVector::Base64("AACAPw==".into()),
            },
        ];
        let body = embeddings_body(&data, "m\"x", 7);
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.5,-0.13352496922016144,1e-7]},{"object":"embedding","index":1,"embedding":"AACAPw=="}],"model":"m\"x","usage":{"prompt_tokens":7,"total_tokens":7}}"#
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v["data"][0]["embedding"][1].as_f64(),
            Some(-0.13352496922016144)
        );
    }

    #[test]
    fn upstream_bodies_and_answers() {
        let mut r = EmbedRequest::new(
            "pub",
            vec![Prompt::Text("a".into()), Prompt::Text("é".into())],
        );
        r.extra = Some(r#"{"user":"u","model":"sneaky"}"#.into());
        r.dimensions = Some(4);
        let body = upstream_embeddings_body(&r, "served").unwrap();
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"model":"served","input":["a","é"],"encoding_format":"float","dimensions":4,"user":"u"}"#
        );
        r.inputs = vec![Prompt::Tokens(vec![1, 2]), Prompt::Tokens(vec![3])];
        r.encoding_format = EncodingFormat::Base64;
        r.extra = None;
        r.dimensions = None;
        let body = upstream_embeddings_body(&r, "s").unwrap();
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"model":"s","input":[[1,2],[3]],"encoding_format":"base64"}"#
        );
        r.inputs.push(Prompt::Text("x".into()));
        assert_eq!(
            upstream_embeddings_body(&r, "s"),
            Err(UpstreamBodyError::MixedInputs)
        );

        // vLLM 0.32's answer (the pooling tiny-llama), trimmed.
        let answer = br#"{"id":"embd-1","object":"list","created":1,"model":"tiny-llama","data":[{"index":1,"object":"embedding","embedding":"AACAPw=="},{"index":0,"object":"embedding","embedding":[-0.13352496922016144,0.041481103748083115]}],"usage":{"prompt_tokens":3,"total_tokens":3,"completion_tokens":0,"prompt_tokens_details":null}}"#;
        let e = parse_upstream_embeddings(answer).unwrap();
        assert_eq!(e.prompt_tokens, Some(3));
        assert_eq!(e.data[0].index, 1);
        assert_eq!(e.data[0].vector, EmbeddingVector::Base64("AACAPw==".into()));
        assert_eq!(
            e.data[1].vector,
            EmbeddingVector::Float(vec![-0.13352496922016144, 0.041481103748083115])
        );
        let e = parse_upstream_embeddings(br#"{"data":[]}"#).unwrap();
        assert_eq!((e.data.len(), e.prompt_tokens), (0, None));
        assert!(parse_upstream_embeddings(br#"{"data":[{"index":0,"embedding":{}}]}"#).is_err());
        assert!(parse_upstream_embeddings(b"not json").is_err());
    }
}
