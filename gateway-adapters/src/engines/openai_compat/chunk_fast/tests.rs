//! The fast path against serde: every chunk it reads, serde reads the same;
//! the engines' plain chunks it does read.

use proptest::collection::vec;
use proptest::prelude::*;
use serde::de::{self, Deserializer, Visitor};

use super::super::{Chunk, ChunkMetrics};
use super::{ChunkReader, MISSES, Shape, read, read_spanned};
use crate::openai::chunk::{WireChoice, WireDelta};
use crate::openai::types::{CompletionTokensDetails, CompletionUsage, PromptTokensDetails};

fn serde(text: &str) -> Option<Chunk> {
    serde_json::from_str(text).ok()
}

/// A stream's first chunk as the adapters read it (the fast path, else
/// serde).
fn read_chunk(text: &str) -> Option<Chunk> {
    ChunkReader::default().read(text)
}

/// The fast path's read of `text`, which must be there and equal serde's.
#[track_caller]
fn fast(text: &str) -> Chunk {
    let Some(chunk) = read(text) else {
        panic!("fell back on {text}");
    };
    assert_eq!(Some(&chunk), serde(text).as_ref(), "{text}");
    chunk
}

/// `text` is left to serde, and the adapter reads what serde reads.
#[track_caller]
fn falls_back(text: &str) {
    assert_eq!(read(text), None, "{text}");
    assert_eq!(read_chunk(text), serde(text), "{text}");
}

fn choice0(chunk: &Chunk) -> &WireChoice {
    &chunk.choices.as_ref().expect("choices")[0]
}

fn content(chunk: &Chunk) -> Option<&str> {
    choice0(chunk).delta.as_ref()?.content.as_deref()
}

const HEAD: &str = r#""id":"chatcmpl-req-5f3a2b-17","object":"chat.completion.chunk","created":1767225600,"model":"meta-llama/Llama-3.1-8B-Instruct""#;

fn chat(choice: &str) -> String {
    format!(r#"{{{HEAD},"choices":[{choice}]}}"#)
}

#[test]
fn reads_the_engines_plain_chunks() {
    // vLLM chat: the role chunk, text, the finish chunk, the usage chunk.
    let role = fast(&format!(
        r#"{{{HEAD},"choices":[{{"index":0,"delta":{{"role":"assistant","content":""}},"logprobs":null,"finish_reason":null}}],"prompt_token_ids":null}}"#
    ));
    assert_eq!(role.object.as_deref(), Some("chat.completion.chunk"));
    let delta = choice0(&role).delta.as_ref().unwrap();
    assert_eq!(
        (delta.role.as_deref(), delta.content.as_deref()),
        (Some("assistant"), Some(""))
    );
    let text = fast(&chat(
        r#"{"index":0,"delta":{"content":" \"open\"\n"},"logprobs":null,"finish_reason":null}"#,
    ));
    assert_eq!(content(&text), Some(" \"open\"\n"));
    let finish = fast(&chat(
        r#"{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop","stop_reason":null,"token_ids":null}"#,
    ));
    assert_eq!(choice0(&finish).finish_reason.as_deref(), Some("stop"));
    assert_eq!(choice0(&finish).delta, Some(WireDelta::default()));
    let ids = fast(&chat(
        r#"{"index":0,"delta":{"content":"ab"},"logprobs":null,"finish_reason":"length","stop_reason":7,"token_ids":[1,22,4294967295]}"#,
    ));
    assert_eq!(choice0(&ids).token_ids, Some(vec![1, 22, u32::MAX]));
    let usage = fast(&format!(
        r#"{{{HEAD},"choices":[],"usage":{{"prompt_tokens":12,"total_tokens":30,"completion_tokens":18,"prompt_tokens_details":{{"cached_tokens":4}}}},"metrics":null}}"#
    ));
    assert_eq!(usage.choices, Some(vec![]));
    assert_eq!(
        usage.usage,
        Some(CompletionUsage {
            prompt_tokens: 12,
            completion_tokens: 18,
            total_tokens: 30,
            prompt_tokens_details: Some(PromptTokensDetails { cached_tokens: 4 }),
            completion_tokens_details: None,
        })
    );
    let reasoning = fast(
        r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":null,"total_tokens":7,"prompt_tokens_details":null,"completion_tokens_details":{"reasoning_tokens":3,"accepted_prediction_tokens":null}}}"#,
    );
    assert_eq!(
        reasoning.usage.unwrap().completion_tokens_details,
        Some(CompletionTokensDetails {
            reasoning_tokens: Some(3),
            ..CompletionTokensDetails::default()
        })
    );
    // vLLM completions; Dynamo's; trtllm-serve's (with a space after it,
    // as its first frame has).
    let completion = fast(
        r#"{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{"index":0,"text":" world","logprobs":null,"finish_reason":null,"stop_reason":null}]}"#,
    );
    assert_eq!(choice0(&completion).text.as_deref(), Some(" world"));
    fast(
        r#"{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{"text":"x","index":0}],"system_fingerprint":null,"usage":null}"#,
    );
    fast(
        r#"{"id":"cmpl-1-0","object":"text_completion","created":1,"model":"m","choices":[{"index":0,"text":"x","avg_decoded_tokens_per_iter":1.0,"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"total_tokens":6,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":0}}} "#,
    );
    // SGLang's OpenAI route: the other fields, all null.
    fast(&chat(
        r#"{"index":0,"delta":{"role":null,"content":"x","reasoning_content":null,"tool_calls":null},"logprobs":null,"finish_reason":null,"matched_stop":null}"#,
    ));
    // Whitespace anywhere JSON has it.
    let value: serde_json::Value = serde_json::from_str(&chat(
        r#"{"index":0,"delta":{"content":"x"},"token_ids":[1,2],"logprobs":null,"finish_reason":null}"#,
    ))
    .unwrap();
    let pretty = serde_json::to_string_pretty(&value).unwrap();
    assert_eq!(content(&fast(&pretty)), Some("x"));
    assert_eq!(content(&fast(&format!(" \t\r\n{pretty}\n"))), Some("x"));
    assert_eq!(fast("{}"), Chunk::default());
}

#[test]
fn reads_every_escape() {
    let chunk = fast(&chat(
        r#"{"delta":{"content":"q\"b\\s\/\b\f\n\r\t\u0000\u001F\u00e9\u00E9\u20ac \ud83d\ude42\uD83D\uDE42 é🙂"}}"#,
    ));
    assert_eq!(
        content(&chunk),
        Some("q\"b\\s/\u{8}\u{c}\n\r\t\u{0}\u{1f}éé€ 🙂🙂 é🙂")
    );
    // In skipped values too.
    fast(&format!(
        r#"{{"id":"a\"\\\u0041\ud83d\ude42","choices":[{}]}}"#,
        r#"{"stop_reason":"\n"}"#
    ));
}

#[test]
fn leaves_the_rest_to_serde() {
    let cases = [
        // Output beyond text, logprobs, ids, metrics, errors.
        chat(r#"{"index":0,"delta":{"refusal":"no"}}"#),
        chat(r#"{"index":0,"delta":{"tool_calls":[]}}"#),
        chat(
            r#"{"index":0,"delta":{"content":"x"},"logprobs":{"content":[{"token":"x","logprob":-0.5,"top_logprobs":[]}]}}"#,
        ),
        chat(r#"{"index":0,"text":"x","prompt_token_ids":[1,2]}"#),
        chat(r#"{"index":0,"text":"x","logprobs":true}"#),
        chat(r#"{"index":0,"text":"x","logprobs":""}"#),
        r#"{"choices":[{"delta":{"content":"x"}}],"prompt_token_ids":[1]}"#.to_owned(),
        r#"{"choices":[],"usage":{"prompt_tokens":1},"metrics":{"speculative_decoding":{"num_draft_tokens":2}}}"#.to_owned(),
        r#"{"error":{"message":"boom","type":"InternalServerError","code":500}}"#.to_owned(),
        r#"{"error":null,"choices":[]}"#.to_owned(),
        // Two choices.
        chat(r#"{"index":1,"text":"b"},{"index":0,"text":"a"}"#),
        // A field twice (serde refuses), a key with an escape.
        chat(r#"{"delta":{"content":"a","content":"b"}}"#),
        r#"{"choices":[],"choices":[]}"#.to_owned(),
        chat(r#"{"delta":{"con\u0074ent":"a"}}"#),
        // Numbers that are not plain unsigned integers in range.
        chat(r#"{"index":0.0,"text":"a"}"#),
        chat(r#"{"index":-0,"text":"a"}"#),
        chat(r#"{"index":-1,"text":"a"}"#),
        chat(r#"{"index":4294967296,"text":"a"}"#),
        chat(r#"{"index":01,"text":"a"}"#),
        chat(r#"{"text":"a","token_ids":[1e2]}"#),
        r#"{"usage":{"prompt_tokens":18446744073709551616}}"#.to_owned(),
        // Nested values under unknown keys, other types where one is read.
        r#"{"kv_transfer_params":{},"choices":[]}"#.to_owned(),
        r#"{"choices":[{"delta":{"content":"x"},"extra":[1]}]}"#.to_owned(),
        r#"{"object":1}"#.to_owned(),
        r#"{"choices":{}}"#.to_owned(),
        r#"{"choices":[null]}"#.to_owned(),
        r#"{"usage":[]}"#.to_owned(),
        // Strings serde refuses or reads as something else.
        chat(r#"{"delta":{"content":"\ud83d"}}"#),
        chat(r#"{"delta":{"content":"\ude42"}}"#),
        chat(r#"{"delta":{"content":"\ud83d\u0041"}}"#),
        chat("{\"delta\":{\"content\":\"a\u{1}b\"}}"),
        chat(r#"{"delta":{"content":"\x41"}}"#),
        // Not one JSON object.
        "[]".to_owned(),
        "{} x".to_owned(),
        "{}{}".to_owned(),
        "\u{feff}{}".to_owned(),
        "{\u{c}}".to_owned(),
        r#"{"choices":[],}"#.to_owned(),
        r#"{"choices":[{"text":"a"},]}"#.to_owned(),
        r#"{"choices":[{"text":"a"}]"#.to_owned(),
        r#"{"id":nul}"#.to_owned(),
        r#"{"id":True}"#.to_owned(),
        String::new(),
    ];
    for text in &cases {
        falls_back(text);
    }
    // Among them, the ones serde reads (the adapter behaves as before).
    assert!(cases.iter().filter(|t| serde(t).is_some()).count() >= 15);
}

/// A stream whose chunks the fast path keeps leaving to serde stops
/// trying it; until then a chunk it reads puts the count back to zero.
/// Every chunk is read as serde reads it either way.
#[test]
fn a_stream_of_misses_goes_to_serde() {
    let plain = chat(r#"{"index":0,"delta":{"content":"x"},"logprobs":null}"#);
    let logprobs = chat(
        r#"{"index":0,"delta":{"content":"x"},"logprobs":{"content":[{"token":"x","logprob":-0.5,"top_logprobs":[]}]}}"#,
    );
    let mut reader = ChunkReader::default();
    for text in [&logprobs, &logprobs, &plain] {
        assert_eq!(reader.read(text), serde(text));
    }
    assert_eq!(reader.misses, 0);
    for _ in 0..MISSES {
        assert_eq!(reader.read(&logprobs), serde(&logprobs));
    }
    assert_eq!(reader.misses, MISSES);
    for text in [&plain, &logprobs, &plain, "{", ""] {
        assert_eq!(reader.read(text), serde(text));
    }
    assert_eq!(reader.misses, MISSES);
}

/// A stream's chunks as vLLM sends them: the role chunk, text chunks that
/// differ only in their text (read by the shape, with every escape), the
/// finish chunk, the usage chunk; each read as serde reads it.
#[test]
fn chunks_that_differ_only_in_their_text_are_read_by_the_shape() {
    let text = |t: &str| {
        chat(&format!(
            r#"{{"index":0,"delta":{{"content":{}}},"logprobs":null,"finish_reason":null}}"#,
            serde_json::to_string(t).unwrap()
        ))
    };
    let role = chat(
        r#"{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}"#,
    );
    let finish = chat(
        r#"{"index":0,"delta":{"content":""},"logprobs":null,"finish_reason":"length","stop_reason":null}"#,
    );
    let usage = format!(
        r#"{{{HEAD},"choices":[],"usage":{{"prompt_tokens":5,"total_tokens":9,"completion_tokens":4}}}}"#
    );
    let texts = [
        " Hello",
        "",
        " \"quoted\" \\ back",
        "\n\t\u{1}",
        "é🙂 漢字",
        "\u{2028}",
    ];
    let mut reader = ChunkReader::default();
    assert_eq!(reader.read(&role), serde(&role));
    assert_eq!(reader.read(&text("first")), serde(&text("first")));
    for t in texts {
        let chunk = text(t);
        // The shape alone reads it, as serde does.
        let by_shape = reader.shape.as_ref().and_then(|s| s.read(&chunk));
        assert_eq!(by_shape.as_ref(), serde(&chunk).as_ref(), "{chunk}");
        assert_eq!(content(by_shape.as_ref().unwrap()), Some(t));
        assert_eq!(reader.read(&chunk), serde(&chunk));
    }
    // Escaped as JSON allows other than serde writes it: the same text.
    let escaped = chat(
        r#"{"index":0,"delta":{"content":"\u0041\/\ud83d\ude42"},"logprobs":null,"finish_reason":null}"#,
    );
    let by_shape = reader.shape.as_ref().and_then(|s| s.read(&escaped));
    assert_eq!(content(by_shape.as_ref().unwrap()), Some("A/🙂"));
    assert_eq!(by_shape, serde(&escaped));
    for chunk in [&escaped, &finish, &usage] {
        assert_eq!(reader.read(chunk), serde(chunk));
    }
}

/// A reasoning model's chunks: its thinking in `reasoning_content` (vLLM
/// before 0.10, SGLang) or `reasoning` (vLLM since), then its answer, and
/// trtllm-serve's `"reasoning_content": ""` beside each token's content:
/// read by the fast path, then by the shape with the string that changes,
/// each as serde reads it.
#[test]
fn reasoning_chunks_are_read_and_their_shape_follows_the_changing_string() {
    let chunk = |delta: &str| {
        chat(&format!(
            r#"{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":null}}"#
        ))
    };
    let streams: [Vec<String>; 4] = [
        (0..4)
            .map(|i| chunk(&format!(r#"{{"reasoning_content":"step {i}"}}"#)))
            .chain((0..3).map(|i| chunk(&format!(r#"{{"content":"answer {i}"}}"#))))
            .collect(),
        (0..4)
            .map(|i| chunk(&format!(r#"{{"role":null,"reasoning":"think \"{i}\""}}"#)))
            .collect(),
        (0..4)
            .map(|i| chunk(&format!(r#"{{"content":"tok{i}","reasoning_content":""}}"#)))
            .collect(),
        (0..4)
            .map(|i| {
                chunk(&format!(
                    r#"{{"reasoning_content":"step {i}","content":""}}"#
                ))
            })
            .collect(),
    ];
    for stream in streams {
        let mut reader = ChunkReader::default();
        let mut by_shape = 0;
        for text in &stream {
            fast(text);
            by_shape += usize::from(reader.shape.as_ref().and_then(|s| s.read(text)).is_some());
            assert_eq!(reader.read(text), serde(text), "{text}");
        }
        // All but the first chunk of each phase.
        let phases = if stream.len() == 7 { 2 } else { 1 };
        assert_eq!(by_shape, stream.len() - phases, "{stream:?}");
    }
}

/// A chunk that matches the shape's head and tail but not as one string
/// between them, or with a string serde refuses, or with anything else
/// changed, is not read by the shape; the reader still reads what serde
/// reads.
#[test]
fn the_shape_reads_only_one_string_between_its_head_and_tail() {
    let base = chat(r#"{"index":0,"delta":{"content":"abc"},"logprobs":null}"#);
    let mut span = None;
    let chunk = read_spanned(&base, &mut span).unwrap();
    let span = span.unwrap();
    assert_eq!(&base[span.open..span.close], r#""abc""#);
    let shape = Shape::new(&base, span, &chunk);
    let with = |middle: &str| format!("{}{middle}{}", &base[..span.open], &base[span.close..]);
    assert!(shape.read(&with(r#""xyz""#)).is_some());
    for middle in [
        r#""a","b""#,
        r#""a"},"x":{"b""#,
        r#""a\"#,
        r#""\ud800""#,
        "\"a\u{1}\"",
        "null",
        r#""a" "#,
        r#"""#,
        "",
    ] {
        let text = with(middle);
        assert_eq!(shape.read(&text), None, "{text}");
        let mut reader = ChunkReader::default();
        assert_eq!(reader.read(&base), serde(&base));
        assert_eq!(reader.read(&text), serde(&text), "{text}");
    }
    // Another field changed: a whole read, not the shape's.
    let other = base.replace("chatcmpl-req", "chatcmpl-other");
    assert_eq!(shape.read(&other), None);
}

/// Records the field names serde's derive gives a struct.
struct Probe<'a>(&'a mut Vec<&'static str>);

impl<'de> Deserializer<'de> for Probe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.extend_from_slice(fields);
        Err(de::Error::custom("probed"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
        enum identifier ignored_any
    }
}

fn fields<T: de::DeserializeOwned>() -> Vec<&'static str> {
    let mut fields = Vec::new();
    let _ = T::deserialize(Probe(&mut fields));
    assert!(!fields.is_empty());
    fields
}

/// Every field serde reads, at every level, is one the fast path knows:
/// given twice, serde refuses the chunk and the fast path leaves it to
/// serde (a field added to one of these structs and not to the fast path
/// fails here). An unknown field given twice, both read.
#[test]
fn knows_every_field_serde_reads() {
    let levels: [(&str, Vec<&str>); 6] = [
        ("{F}", fields::<Chunk>()),
        (r#"{"choices":[{F}]}"#, fields::<WireChoice>()),
        (r#"{"choices":[{"delta":{F}}]}"#, fields::<WireDelta>()),
        (r#"{"usage":{F}}"#, fields::<CompletionUsage>()),
        (
            r#"{"usage":{"prompt_tokens_details":{F}}}"#,
            fields::<PromptTokensDetails>(),
        ),
        (
            r#"{"usage":{"completion_tokens_details":{F}}}"#,
            fields::<CompletionTokensDetails>(),
        ),
    ];
    assert!(fields::<ChunkMetrics>().contains(&"speculative_decoding"));
    for (template, names) in levels {
        for name in names.iter().chain(&["unknown_field"]) {
            let text = template.replace('F', &format!(r#""{name}":null,"{name}":null"#));
            if *name == "unknown_field" {
                fast(&text);
            } else {
                assert!(serde(&text).is_none(), "{text}");
                falls_back(&text);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The differential property: generated chunks of the engines' shapes, with
// arbitrary strings, numbers, optional fields, key order and whitespace,
// then (for half of them) mutated.

/// A JSON value to write out: keys, strings and numbers as raw text.
#[derive(Debug, Clone)]
enum J {
    Raw(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

fn raw(text: impl Into<String>) -> J {
    J::Raw(text.into())
}

fn key(name: &str) -> String {
    format!("\"{name}\"")
}

/// The generator's decisions, from proptest's values (cycled).
struct Gen {
    picks: Vec<u8>,
    at: usize,
    texts: Vec<String>,
    t: usize,
    nums: Vec<u64>,
    n: usize,
    /// Whitespace between tokens.
    spaced: bool,
    /// Nothing but the plain shapes so far: the fast path must read it.
    plain: bool,
}

/// Fields serde reads somewhere in a chunk, for putting at the wrong level.
const KNOWN: [&str; 16] = [
    "object",
    "choices",
    "usage",
    "index",
    "delta",
    "text",
    "finish_reason",
    "token_ids",
    "logprobs",
    "role",
    "content",
    "prompt_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "prompt_token_ids",
    "tool_calls",
];

/// Values of another type than the field's, or numbers serde may read
/// differently from a plain integer.
const ODD: [&str; 22] = [
    "null",
    "true",
    "false",
    "\"x\"",
    "\"\"",
    "[]",
    "[1]",
    "{}",
    r#"{"a":1}"#,
    "01",
    "-0",
    "-1",
    "1.0",
    "1e2",
    "1E2",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "0.5",
    "[null]",
    "[1,2.5]",
    r#"[{"index":0}]"#,
];

/// Text to insert somewhere.
const FRAGMENTS: [&str; 18] = [
    ",", "}", "]", "{", "[", ":", "\"", "\\", "null", "nul", "1", "-", " ", "\u{c}", "\u{a0}",
    "\u{1}", "\\u", "x",
];

impl Gen {
    fn pick(&mut self, n: usize) -> usize {
        let b = self.picks.get(self.at % self.picks.len().max(1)).copied();
        self.at += 1;
        usize::from(b.unwrap_or(0)) % n.max(1)
    }

    /// Like `pick`, for `n` beyond 256.
    fn pick_wide(&mut self, n: usize) -> usize {
        (self.pick(256) << 8 | self.pick(256)) % n.max(1)
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.pick(one_in) == 0
    }

    fn text(&mut self) -> String {
        let t = self.texts.get(self.t % self.texts.len().max(1)).cloned();
        self.t += 1;
        t.unwrap_or_default()
    }

    fn num(&mut self) -> u64 {
        let n = self.nums.get(self.n % self.nums.len().max(1)).copied();
        self.n += 1;
        n.unwrap_or(0)
    }

    /// `s` as a JSON string, each character written one of the ways JSON
    /// allows.
    fn string(&mut self, s: &str) -> J {
        let mut out = String::from("\"");
        match self.pick(3) {
            0 => return raw(serde_json::to_string(s).unwrap()),
            1 => {
                let upper = self.chance(2);
                for unit in s.encode_utf16() {
                    out.push_str(&u_escape(unit, upper));
                }
            }
            _ => {
                for ch in s.chars() {
                    let short = match ch {
                        '"' => Some("\\\""),
                        '\\' => Some("\\\\"),
                        '/' => Some("\\/"),
                        '\u{8}' => Some("\\b"),
                        '\u{c}' => Some("\\f"),
                        '\n' => Some("\\n"),
                        '\r' => Some("\\r"),
                        '\t' => Some("\\t"),
                        _ => None,
                    };
                    let must = ch == '"' || ch == '\\' || ch < ' ';
                    match (self.pick(4), short) {
                        (0, _) | (_, None) if must || self.chance(2) => {
                            let upper = self.chance(2);
                            let mut units = [0u16; 2];
                            for unit in ch.encode_utf16(&mut units) {
                                out.push_str(&u_escape(*unit, upper));
                            }
                        }
                        (1, Some(short)) => out.push_str(short),
                        (_, Some(short)) if must => out.push_str(short),
                        _ => out.push(ch),
                    }
                }
            }
        }
        out.push('"');
        raw(out)
    }

    /// A string serde refuses to read as a `String`.
    fn bad_string(&mut self) -> J {
        self.plain = false;
        let bad = [
            "\\ud800",
            "\\udc00",
            "\\ud83d\\u0041",
            "\\ud83d\\n",
            "\\ud83d",
            "\u{1}",
            "\t",
            "\\x",
            "\\u12 ",
            "\\U0041",
            "\\u00g0",
        ][self.pick(11)];
        let text = serde_json::to_string(&self.text()).unwrap();
        let inner = &text[1..text.len() - 1];
        raw(format!("\"{inner}{bad}{inner}\""))
    }

    /// A scalar for a field serde skips.
    fn scalar(&mut self) -> J {
        let n = self.num();
        match self.pick(12) {
            0 => raw("null"),
            1 => raw("true"),
            2 => raw("false"),
            3 | 4 => {
                let t = self.text();
                self.string(&t)
            }
            5 => raw(format!("-{n}")),
            6 => raw(format!("{n}.{}", self.num())),
            7 => raw(format!(
                "{}e{}{}",
                n % 1000,
                ["", "+", "-"][self.pick(3)],
                n % 400
            )),
            8 => raw(format!("-0.{n}E-{}", n % 7)),
            9 => raw("123456789012345678901234567890.5e-3"),
            _ => raw(n.to_string()),
        }
    }

    fn u32(&mut self) -> J {
        raw((self.num() % (u64::from(u32::MAX) + 1)).to_string())
    }

    fn nullable(&mut self, one_in: usize, value: impl FnOnce(&mut Self) -> J) -> J {
        if self.chance(one_in) {
            raw("null")
        } else {
            value(self)
        }
    }

    fn text_value(&mut self) -> J {
        let t = self.text();
        self.string(&t)
    }

    /// Each of `entries` kept with probability 1 - 1/`drop`, in an order
    /// of the generator's choosing.
    fn object(&mut self, entries: Vec<(&str, J)>, drop: usize) -> J {
        let mut kept: Vec<(String, J)> = entries
            .into_iter()
            .filter(|_| !self.chance(drop))
            .map(|(k, v)| (key(k), v))
            .collect();
        for i in (1..kept.len()).rev() {
            let j = self.pick(i + 1);
            kept.swap(i, j);
        }
        J::Obj(kept)
    }

    fn chunk(&mut self) -> J {
        let chat = self.chance(2);
        let object = match self.pick(4) {
            0 => raw("null"),
            1 => self.text_value(),
            _ if chat => raw("\"chat.completion.chunk\""),
            _ => raw("\"text_completion\""),
        };
        let choices = match self.pick(6) {
            0 => raw("null"),
            1 => J::Arr(vec![]),
            _ => J::Arr(vec![self.choice(chat)]),
        };
        let usage = if self.chance(3) {
            self.usage()
        } else {
            raw("null")
        };
        let entries = vec![
            ("id", self.text_value()),
            ("object", object),
            ("created", self.scalar()),
            ("model", self.text_value()),
            ("system_fingerprint", self.scalar()),
            ("choices", choices),
            ("usage", usage),
            ("prompt_token_ids", raw("null")),
            ("metrics", raw("null")),
            ("service_tier", self.scalar()),
        ];
        self.object(entries, 3)
    }

    fn choice(&mut self, chat: bool) -> J {
        let index = self.nullable(5, Self::u32);
        let finish = match self.pick(5) {
            0 => raw("\"stop\""),
            1 => raw("\"length\""),
            2 => self.text_value(),
            _ => raw("null"),
        };
        let ids = self.nullable(3, |g| {
            let ids = (0..g.pick(5)).map(|_| g.u32()).collect();
            J::Arr(ids)
        });
        let mut entries = vec![
            ("index", index),
            ("logprobs", raw("null")),
            ("finish_reason", finish),
            ("stop_reason", self.scalar()),
            ("token_ids", ids),
            ("prompt_token_ids", raw("null")),
            ("avg_decoded_tokens_per_iter", raw("1.0")),
        ];
        if chat {
            let delta = self.nullable(8, Self::delta);
            entries.push(("delta", delta));
        } else {
            let text = self.nullable(8, Self::text_value);
            entries.push(("text", text));
        }
        self.object(entries, 3)
    }

    fn delta(&mut self) -> J {
        let role = match self.pick(3) {
            0 => raw("\"assistant\""),
            1 => raw("null"),
            _ => self.text_value(),
        };
        let content = self.nullable(6, Self::text_value);
        let reasoning = self.nullable(2, Self::text_value);
        let reasoning_content = self.nullable(2, Self::text_value);
        let entries = vec![
            ("role", role),
            ("content", content),
            ("reasoning", reasoning),
            ("reasoning_content", reasoning_content),
            ("refusal", raw("null")),
            ("tool_calls", raw("null")),
            ("function_call", self.scalar()),
        ];
        self.object(entries, 2)
    }

    fn count(&mut self) -> J {
        self.nullable(6, |g| raw(g.num().to_string()))
    }

    fn usage(&mut self) -> J {
        let prompt = {
            let entries = vec![
                ("cached_tokens", self.count()),
                ("audio_tokens", self.scalar()),
            ];
            let details = self.object(entries, 3);
            if self.chance(2) { raw("null") } else { details }
        };
        let completion = {
            let entries = vec![
                ("reasoning_tokens", self.count()),
                ("accepted_prediction_tokens", self.count()),
                ("rejected_prediction_tokens", self.count()),
            ];
            let details = self.object(entries, 2);
            if self.chance(2) { raw("null") } else { details }
        };
        let entries = vec![
            ("prompt_tokens", self.count()),
            ("completion_tokens", self.count()),
            ("total_tokens", self.count()),
            ("prompt_tokens_details", prompt),
            ("completion_tokens_details", completion),
        ];
        self.object(entries, 4)
    }

    /// A field the fast path reads only as `null`, with another value:
    /// what the engines send there, or a scalar.
    fn rich(&mut self) -> (&'static str, J) {
        if self.chance(3) {
            let name = [
                "logprobs",
                "prompt_token_ids",
                "metrics",
                "reasoning",
                "reasoning_content",
                "refusal",
                "tool_calls",
                "error",
            ][self.pick(8)];
            let value = ["true", "false", "0", "1.5", "\"\"", "\"x\""][self.pick(6)];
            return (name, raw(value));
        }
        match self.pick(8) {
            0 => ("reasoning_content", self.text_value()),
            1 => ("reasoning", self.text_value()),
            2 => ("refusal", self.text_value()),
            3 => (
                "tool_calls",
                raw(r#"[{"index":0,"function":{"arguments":"{}"}}]"#),
            ),
            4 => (
                "logprobs",
                raw(r#"{"content":[{"token":"a","logprob":-0.5,"top_logprobs":[]}]}"#),
            ),
            5 => ("prompt_token_ids", raw("[1,2,3]")),
            6 => (
                "metrics",
                raw(r#"{"speculative_decoding":{"num_draft_tokens":3}}"#),
            ),
            _ => ("error", raw(r#"{"message":"boom","code":500}"#)),
        }
    }

    /// One change to the tree: somewhere, a field given twice, a field
    /// the fast path leaves to serde, a value of another type, a known
    /// field at another level, a key with an escape, a nested value under
    /// an unknown key, a second item in an array, a string serde refuses.
    fn mutate_tree(&mut self, tree: &mut J) {
        self.plain = false;
        let mut paths = Vec::new();
        containers(tree, &mut Vec::new(), &mut paths);
        let path = paths[self.pick(paths.len())].clone();
        let op = self.pick(8);
        let odd = raw(ODD[self.pick(ODD.len())]);
        let known = KNOWN[self.pick(KNOWN.len())];
        let rich = self.rich();
        let bad = self.bad_string();
        let node = at_path(tree, &path);
        match node {
            J::Obj(entries) => {
                let len = entries.len();
                let at = self.pick(len + 1);
                match op {
                    0 if len > 0 => {
                        let copy = entries[self.pick(len)].clone();
                        entries.insert(at, copy);
                    }
                    1 => entries.insert(at, (key(rich.0), rich.1)),
                    2 if len > 0 => entries[self.pick(len)].1 = odd,
                    3 => entries.insert(at, (key(known), odd)),
                    4 if len > 0 => {
                        let i = self.pick(len);
                        let k = &entries[i].0;
                        if let Some(first) = k[1..].chars().next() {
                            let escaped = format!(
                                "\"\\u{:04x}{}",
                                u32::from(first),
                                &k[1 + first.len_utf8()..]
                            );
                            entries[i].0 = escaped;
                        }
                    }
                    5 => entries.insert(at, (key("kv_transfer_params"), raw(r#"{"a":[1]}"#))),
                    6 if len > 0 => {
                        let i = self.pick(len);
                        if matches!(&entries[i].1, J::Raw(t) if t.starts_with('"')) {
                            entries[i].1 = bad;
                        } else {
                            entries[i].1 = odd;
                        }
                    }
                    _ => entries.insert(at, (key(known), raw("null"))),
                }
            }
            J::Arr(items) => {
                if let Some(first) = items.first().cloned()
                    && op % 2 == 0
                {
                    items.push(first);
                } else {
                    items.push(odd);
                }
            }
            J::Raw(_) => {}
        }
    }

    /// One change to the text: cut, a fragment inserted, a byte removed.
    fn mutate_text(&mut self, text: &mut String) {
        self.plain = false;
        let cuts: Vec<usize> = (0..=text.len())
            .filter(|&i| text.is_char_boundary(i))
            .collect();
        let at = cuts[self.pick_wide(cuts.len())];
        match self.pick(3) {
            0 => text.truncate(at),
            1 => text.insert_str(at, FRAGMENTS[self.pick(FRAGMENTS.len())]),
            _ => {
                if at < text.len() {
                    text.remove(at);
                }
            }
        }
    }

    fn ws(&mut self, out: &mut String) {
        if self.spaced {
            out.push_str(["", " ", "\n  ", "\t", "\r\n"][self.pick(5)]);
        }
    }

    fn render(&mut self, j: &J, out: &mut String) {
        match j {
            J::Raw(text) => out.push_str(text),
            J::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    self.ws(out);
                    if i > 0 {
                        out.push(',');
                        self.ws(out);
                    }
                    self.render(item, out);
                }
                self.ws(out);
                out.push(']');
            }
            J::Obj(entries) => {
                out.push('{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    self.ws(out);
                    if i > 0 {
                        out.push(',');
                        self.ws(out);
                    }
                    out.push_str(k);
                    self.ws(out);
                    out.push(':');
                    self.ws(out);
                    self.render(v, out);
                }
                self.ws(out);
                out.push('}');
            }
        }
    }
}

fn u_escape(unit: u16, upper: bool) -> String {
    if upper {
        format!("\\u{unit:04X}")
    } else {
        format!("\\u{unit:04x}")
    }
}

/// The paths (child indexes) to every object and array in `j`.
fn containers(j: &J, path: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
    let children: Vec<&J> = match j {
        J::Raw(_) => return,
        J::Arr(items) => items.iter().collect(),
        J::Obj(entries) => entries.iter().map(|(_, v)| v).collect(),
    };
    out.push(path.clone());
    for (i, child) in children.into_iter().enumerate() {
        path.push(i);
        containers(child, path, out);
        path.pop();
    }
}

fn at_path<'a>(j: &'a mut J, path: &[usize]) -> &'a mut J {
    let Some((&first, rest)) = path.split_first() else {
        return j;
    };
    match j {
        J::Arr(items) => at_path(&mut items[first], rest),
        J::Obj(entries) => at_path(&mut entries[first].1, rest),
        J::Raw(_) => j,
    }
}

/// Strings with what is hard to get right: quotes, backslashes, slashes,
/// control characters, non-ASCII, beyond the BMP, U+2028, U+FFFF.
fn hard_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[\"\\\\/ aé🙂\\x00-\\x1f\\x7f\\u{2028}\\u{ffff}\\u{10000}\\u{10ffff}]{0,10}",
        Just(String::new()),
        "[a-z ]{0,6}",
    ]
}

fn number() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..100, any::<u32>().prop_map(u64::from), any::<u64>()]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    /// Whenever the fast path reads a chunk, serde reads the same; the
    /// adapter's read (fast path, else serde) always equals serde's; and an
    /// unmutated chunk of the engines' shapes is read by the fast path.
    #[test]
    fn the_fast_path_reads_what_serde_reads(
        picks in vec(any::<u8>(), 1..256),
        texts in vec(hard_text(), 1..6),
        nums in vec(number(), 1..8),
        spaced in any::<bool>(),
        tree_edits in 0usize..3,
        text_edits in 0usize..2,
    ) {
        let mut g = Gen { picks, at: 0, texts, t: 0, nums, n: 0, spaced, plain: true };
        let mut tree = g.chunk();
        for _ in 0..tree_edits {
            g.mutate_tree(&mut tree);
        }
        let mut text = String::new();
        g.render(&tree, &mut text);
        for _ in 0..text_edits {
            g.mutate_text(&mut text);
        }
        let fast = read(&text);
        let serde = serde(&text);
        if let Some(fast) = &fast {
            prop_assert_eq!(Some(fast), serde.as_ref(), "{}", text);
        }
        prop_assert_eq!(read_chunk(&text), serde, "{}", text);
        if g.plain {
            prop_assert!(fast.is_some(), "fell back on a plain chunk: {}", text);
        }
    }

    /// A stream's second chunk: the first with another string of output
    /// (any text, written any way JSON allows), then maybe edited
    /// anywhere; read after the first, it is read as serde reads it, and
    /// unedited by the shape.
    #[test]
    fn a_chunk_after_another_is_read_as_serde_reads_it(
        picks in vec(any::<u8>(), 1..256),
        texts in vec(hard_text(), 1..6),
        nums in vec(number(), 1..8),
        spaced in any::<bool>(),
        text_edits in 0usize..3,
    ) {
        let mut g = Gen { picks, at: 0, texts, t: 0, nums, n: 0, spaced, plain: true };
        let tree = g.chunk();
        let mut first = String::new();
        g.render(&tree, &mut first);
        let mut span = None;
        if read_spanned(&first, &mut span).is_none() {
            return Ok(());
        }
        let Some(span) = span else {
            return Ok(());
        };
        let new_text = g.text();
        let J::Raw(string) = g.string(&new_text) else { unreachable!() };
        let mut second = format!("{}{string}{}", &first[..span.open], &first[span.close..]);
        for _ in 0..text_edits {
            g.mutate_text(&mut second);
        }
        let mut reader = ChunkReader::default();
        prop_assert_eq!(reader.read(&first), serde(&first));
        let by_shape = reader.shape.as_ref().and_then(|s| s.read(&second));
        let expected = serde(&second);
        if by_shape.is_some() {
            prop_assert_eq!(&by_shape, &expected, "{}", second);
        }
        prop_assert_eq!(reader.read(&second), expected, "{}", second);
        if text_edits == 0 {
            prop_assert!(by_shape.is_some(), "not read by the shape: {}", second);
        }
    }

    /// Strings serde refuses, in the content of a plain chunk: left to it.
    #[test]
    fn refused_strings_fall_back(picks in vec(any::<u8>(), 1..16), texts in vec(hard_text(), 1..3)) {
        let mut g = Gen { picks, at: 0, texts, t: 0, nums: vec![0], n: 0, spaced: false, plain: true };
        let J::Raw(bad) = g.bad_string() else { unreachable!() };
        let text = chat(&format!(r#"{{"index":0,"delta":{{"content":{bad}}}}}"#));
        prop_assert_eq!(read(&text), None, "{}", text);
        prop_assert_eq!(serde(&text), None, "{}", text);
    }
}
