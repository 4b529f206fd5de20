//! Embeddings: what a client asks for ([`EmbedRequest`]), one attempt of
//! it at a backend ([`EmbedAttempt`], taken by
//! [`Backend::embed`](crate::Backend::embed)) and the answer
//! ([`Embeddings`]). Usage is prompt tokens only.

use std::sync::Arc;

use tokio::time::Instant;

use crate::{LatencyClass, Prompt, RequestId, TenantId, TokenCounter};

/// How the vectors travel: JSON numbers, or the base64 of their
/// little-endian `f32` bytes (OpenAI's `encoding_format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum EncodingFormat {
    /// A JSON array of numbers (the default).
    #[default]
    Float,
    /// A base64 string of little-endian `f32`s.
    Base64,
}

impl EncodingFormat {
    /// The wire name: `float` or `base64`.
    pub const fn as_str(self) -> &'static str {
        match self {
            EncodingFormat::Float => "float",
            EncodingFormat::Base64 => "base64",
        }
    }

    /// The format named `name` on the wire.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "float" => Some(EncodingFormat::Float),
            "base64" => Some(EncodingFormat::Base64),
            _ => None,
        }
    }
}

/// An embeddings request as the client sent it, defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedRequest {
    /// The gateway's id of the request (sent to the engine; see
    /// [`RequestId::generate`]).
    pub id: RequestId,
    /// The client's own id (its `x-request-id`), for correlation only: on
    /// the request span as `client_request_id`; adapters never send it.
    pub client_id: Option<Arc<str>>,
    /// The public model name.
    pub model: String,
    /// The inputs, in order: [`Prompt::Text`] or [`Prompt::Tokens`] each
    /// (the gateway refuses chat messages); one vector comes back per input.
    pub inputs: Vec<Prompt>,
    /// How the client wants the vectors.
    pub encoding_format: EncodingFormat,
    /// OpenAI's `dimensions`: the length to cut the vectors to, for models
    /// that allow it (the engine decides; others answer 400).
    pub dimensions: Option<u32>,
    /// Who pays.
    pub tenant: TenantId,
    /// Interactive or batch.
    pub latency_class: LatencyClass,
    /// When the request must be over.
    pub deadline: Option<Instant>,
    /// Fields passed through to the engine as they are (`user` and the
    /// engine's own, e.g. vLLM's `truncate_prompt_tokens`), as the text of
    /// a JSON object.
    pub extra: Option<Arc<str>>,
}

impl EmbedRequest {
    /// A request for `model` embedding `inputs`, with defaults: floats, no
    /// `dimensions`, tenant `default`, interactive, no deadline, no extra
    /// fields, a [`RequestId::generate`]d id.
    pub fn new(model: impl Into<String>, inputs: Vec<Prompt>) -> Self {
        EmbedRequest {
            id: RequestId::generate(),
            client_id: None,
            model: model.into(),
            inputs,
            encoding_format: EncodingFormat::Float,
            dimensions: None,
            tenant: TenantId::new("default"),
            latency_class: LatencyClass::Interactive,
            deadline: None,
            extra: None,
        }
    }
}

/// One attempt of an [`EmbedRequest`] at one backend.
#[derive(Debug, Clone)]
pub struct EmbedAttempt {
    /// The request as the client sent it.
    pub request: Arc<EmbedRequest>,
    /// The model name at the engine.
    pub served_model: String,
    /// The model's token counter.
    pub counter: Arc<dyn TokenCounter>,
    /// When the attempt must be over: past it the backend answers
    /// [`TotalTimeout`](crate::FailureKind::TotalTimeout).
    pub deadline: Option<Instant>,
}

impl EmbedAttempt {
    /// An attempt for `request` at an engine serving it under the same
    /// name, with the request's deadline.
    pub fn new(request: EmbedRequest, counter: Arc<dyn TokenCounter>) -> Self {
        EmbedAttempt {
            served_model: request.model.clone(),
            deadline: request.deadline,
            request: Arc::new(request),
            counter,
        }
    }
}

/// One vector, as the engine sent it.
#[derive(Debug, Clone, PartialEq)]
pub enum EmbeddingVector {
    /// Numbers (kept as `f64` so an engine's digits pass through as sent).
    Float(Vec<f64>),
    /// The base64 text of the vector's bytes, as sent (little-endian
    /// `f32`s unless the client asked the engine for another dtype).
    Base64(String),
}

impl EmbeddingVector {
    /// The vector in `format`: unchanged when it already is; numbers are
    /// encoded as little-endian `f32`s; base64 is decoded as such. `None`
    /// for base64 that is not whole `f32`s.
    pub fn into_format(self, format: EncodingFormat) -> Option<EmbeddingVector> {
        match (self, format) {
            (v @ EmbeddingVector::Float(_), EncodingFormat::Float)
            | (v @ EmbeddingVector::Base64(_), EncodingFormat::Base64) => Some(v),
            (EmbeddingVector::Float(values), EncodingFormat::Base64) => {
                let mut bytes = Vec::with_capacity(values.len() * 4);
                for v in values {
                    // Narrowing to the wire's f32 is the format's point.
                    bytes.extend_from_slice(&(v as f32).to_le_bytes());
                }
                Some(EmbeddingVector::Base64(base64_encode(&bytes)))
            }
            (EmbeddingVector::Base64(text), EncodingFormat::Float) => Some(EmbeddingVector::Float(
                decode_f32s(&text)?.into_iter().map(f64::from).collect(),
            )),
        }
    }

    /// The vector's values as `f32`s (base64 decoded as little-endian
    /// `f32`s); `None` for base64 that is not whole `f32`s.
    pub fn to_f32s(&self) -> Option<Vec<f32>> {
        match self {
            EmbeddingVector::Float(values) => Some(values.iter().map(|v| *v as f32).collect()),
            EmbeddingVector::Base64(text) => decode_f32s(text),
        }
    }
}

fn decode_f32s(text: &str) -> Option<Vec<f32>> {
    let bytes = base64_decode(text)?;
    if bytes.len() % 4 != 0 {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

/// One input's vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    /// The input's position in the request.
    pub index: u32,
    /// Its vector.
    pub vector: EmbeddingVector,
}

/// A backend's answer to an [`EmbedAttempt`].
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// One vector per input (each input's `index` once).
    pub data: Vec<Embedding>,
    /// The engine's `usage.prompt_tokens` for all inputs, when it reports
    /// it (what the request is charged; else the gateway's estimate).
    pub prompt_tokens: Option<u64>,
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding optional); `None` if it is not.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xFF) as u8);
        }
    }
    // A lone trailing character carries fewer than 8 bits: not base64.
    (bits < 6).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_and_matches_known_values() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        for n in 0..40u8 {
            let bytes: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37) ^ 0xA5).collect();
            assert_eq!(base64_decode(&base64_encode(&bytes)), Some(bytes));
        }
        assert_eq!(base64_decode("Zm9vYg"), Some(b"foob".to_vec()));
        assert_eq!(base64_decode("Zm9v!"), None);
        assert_eq!(base64_decode("Z"), None);
    }

    #[test]
    fn vectors_convert_between_formats() {
        let floats = EmbeddingVector::Float(vec![1.0, -0.5, 0.1f32 as f64]);
        let b64 = floats.clone().into_format(EncodingFormat::Base64).unwrap();
        let EmbeddingVector::Base64(text) = &b64 else {
            panic!("not base64: {b64:?}");
        };
        assert_eq!(text, "AACAPwAAAL/NzMw9");
        assert_eq!(b64.to_f32s(), Some(vec![1.0, -0.5, 0.1]));
        assert_eq!(b64.into_format(EncodingFormat::Float), Some(floats.clone()));
        assert_eq!(
            floats.clone().into_format(EncodingFormat::Float),
            Some(floats)
        );
        // Not whole f32s.
        let odd = EmbeddingVector::Base64(base64_encode(&[1, 2, 3]));
        assert_eq!(odd.to_f32s(), None);
        assert_eq!(odd.into_format(EncodingFormat::Float), None);
        assert_eq!(
            EncodingFormat::from_name("base64"),
            Some(EncodingFormat::Base64)
        );
        assert_eq!(EncodingFormat::from_name("bytes"), None);
    }
}
