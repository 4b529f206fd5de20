//! The request parser against `serde_json::Value` on arbitrary bytes (first
//! byte: chat or completions). For input serde_json rejects as JSON, the
//! parser rejects too. For a JSON object: duplicate keys are refused; a
//! missing, empty or non-string `model` is refused with param `model`; an
//! accepted request's model, stream, include_usage, max_tokens, seed,
//! temperature, top_p, stop, prompt, tools and extra fields equal what
//! `Value` sees. Also checks the raw object scanner (keys and values equal
//! `Value`'s) and the JSON string escaper (equal to serde_json's).
#![no_main]

use gateway_adapters::fuzzing;
use gateway_adapters::openai::{parse_chat, parse_completion};
use gateway_core::Prompt;
use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;
use serde_json::{Map, Value};

/// Fields the parser interprets on both APIs: never among the extra fields.
const KNOWN: &[&str] = &[
    "model",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "max_tokens",
    "n",
    "stream",
    "stream_options",
];

fn check_scanner(text: &str, map: &Map<String, Value>) -> bool {
    let entries = fuzzing::object_entries(text).expect("the scanner splits a JSON object");
    let mut last = Map::new();
    for (key, value) in &entries {
        let key = fuzzing::key_text(key).expect("a JSON key unescapes");
        // Values serde_json can hold (numbers beyond f64 are refused).
        if let Ok(value) = serde_json::from_str::<Value>(value) {
            last.insert(key, value);
        } else {
            assert!(serde_json::from_str::<IgnoredAny>(value).is_ok());
            return false;
        }
    }
    assert_eq!(&last, map, "the scanner and serde_json disagree");
    entries.len() == map.len()
}

fuzz_target!(|data: &[u8]| {
    let Some((&api, body)) = data.split_first() else {
        return;
    };
    if let Ok(text) = std::str::from_utf8(body) {
        assert_eq!(
            fuzzing::json_string(text),
            serde_json::to_string(text).unwrap()
        );
    }
    let parsed = if api & 1 == 0 {
        parse_chat(body)
    } else {
        parse_completion(body)
    };
    if serde_json::from_slice::<IgnoredAny>(body).is_err() {
        assert!(parsed.is_err(), "accepted what serde_json rejects");
        return;
    }
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        // Valid JSON with a number beyond f64: no Value to compare with.
        return;
    };
    let Value::Object(map) = value else {
        assert!(parsed.is_err(), "accepted a body that is not an object");
        return;
    };
    let text = std::str::from_utf8(body).expect("JSON is UTF-8");
    if !check_scanner(text, &map) {
        assert!(parsed.is_err(), "accepted duplicate keys");
        return;
    }
    match map.get("model") {
        Some(Value::String(model)) if !model.is_empty() => {}
        _ => {
            let error = parsed.expect_err("accepted a request without a model");
            // The model's absence, or a field of the body refused first
            // (the pass-through policy checks extra fields before it).
            let param = error.param.as_deref().unwrap_or("");
            let field = param.split('.').next().unwrap_or("");
            assert!(param == "model" || map.contains_key(field), "{error:?}");
            return;
        }
    }
    let Ok(parsed) = parsed else {
        return;
    };
    assert_eq!(Some(&Value::String(parsed.model.clone())), map.get("model"));
    let flag = |key: &str| map.get(key).and_then(Value::as_bool).unwrap_or(false);
    assert_eq!(parsed.stream, flag("stream"));
    let include_usage = map
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    assert_eq!(parsed.include_usage, include_usage);
    let uint = |key: &str| map.get(key).and_then(Value::as_u64);
    let max_tokens = if api & 1 == 0 {
        uint("max_completion_tokens").or(uint("max_tokens"))
    } else {
        uint("max_tokens")
    };
    assert_eq!(parsed.max_tokens.map(u64::from), max_tokens);
    assert_eq!(parsed.sampling.seed, uint("seed"));
    let float = |key: &str| map.get(key).and_then(Value::as_f64).map(|x| x as f32);
    assert_eq!(parsed.sampling.temperature, float("temperature"));
    assert_eq!(parsed.sampling.top_p, float("top_p"));
    let stops: Vec<String> = match map.get("stop") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    let stops: Vec<String> = stops.into_iter().filter(|s| !s.is_empty()).collect();
    assert_eq!(parsed.sampling.stop, stops);
    match &parsed.prompt {
        Prompt::Chat(messages) => {
            let Some(Value::Array(items)) = map.get("messages") else {
                panic!("chat prompt without messages");
            };
            assert_eq!(messages.len(), items.len());
            for (message, item) in messages.iter().zip(items) {
                if let Some(Value::String(content)) = item.get("content") {
                    assert_eq!(&message.content, content);
                }
                if let Some(name) = item.get("name").and_then(Value::as_str) {
                    assert_eq!(message.name.as_deref(), Some(name));
                }
            }
        }
        Prompt::Text(text) => match map.get("prompt") {
            Some(Value::String(want)) => assert_eq!(text, want),
            Some(Value::Array(items)) => {
                assert_eq!(items.len(), 1);
                assert_eq!(items[0].as_str(), Some(text.as_str()));
            }
            other => panic!("text prompt from {other:?}"),
        },
        Prompt::Tokens(ids) => {
            let Some(Value::Array(items)) = map.get("prompt") else {
                panic!("token prompt without an array");
            };
            let flat: Vec<&Value> = match items.as_slice() {
                [Value::Array(inner)] => inner.iter().collect(),
                items => items.iter().collect(),
            };
            let want: Vec<u32> = flat
                .iter()
                .filter_map(|v| v.as_u64())
                .map(|n| n as u32)
                .collect();
            assert_eq!(ids, &want);
        }
    }
    if let Some(tools) = &parsed.tools {
        let tools: Value = serde_json::from_str(tools).expect("tools are JSON");
        assert_eq!(Some(&tools), map.get("tools"));
    }
    let extra: Map<String, Value> = match &parsed.extra {
        Some(extra) => serde_json::from_str(extra).expect("extra is a JSON object"),
        None => Map::new(),
    };
    // Every field passed on is the client's, unchanged; the fields the
    // gateway itself reads never are. (Which other fields pass is the
    // pass-through policy's business.)
    for (key, value) in &extra {
        assert_eq!(map.get(key), Some(value), "extra field {key}");
    }
    for key in KNOWN {
        assert!(!extra.contains_key(*key), "{key} interpreted and passed on");
    }
});
