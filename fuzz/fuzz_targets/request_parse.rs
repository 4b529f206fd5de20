//! Client request parsing (`/v1/chat/completions` and `/v1/completions`
//! bodies) on arbitrary bytes, and the merge of the extra fields it keeps
//! into an engine body. Asserts: an accepted request keeps its documented
//! ranges (non-empty model, at most 4 non-empty stop sequences, temperature
//! in 0..=2, top_p in (0, 1], max_tokens >= 1, include_usage only when
//! streaming, extra a non-empty JSON object, tools JSON); its extra fields
//! merge into an adapter's body with the adapter's fields winning and the
//! rest byte for byte; a refused one gets a 400 with a JSON error body.
#![no_main]

use gateway_adapters::fuzzing;
use gateway_adapters::openai::{MAX_STOP_SEQUENCES, merge_extra, parse_chat, parse_completion};
use gateway_core::http::StatusCode;
use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;

const BASE: &str = r#"{"model":"served","stream":true,"max_tokens":16}"#;

fn is_json(text: &[u8]) -> bool {
    serde_json::from_slice::<IgnoredAny>(text).is_ok()
}

fuzz_target!(|data: &[u8]| {
    let Some((&api, body)) = data.split_first() else {
        return;
    };
    let parsed = if api & 1 == 0 {
        parse_chat(body)
    } else {
        parse_completion(body)
    };
    let parsed = match parsed {
        Ok(parsed) => parsed,
        Err(error) => {
            assert_eq!(error.status(), StatusCode::BAD_REQUEST);
            assert!(!error.message.is_empty());
            assert!(is_json(&error.to_body()), "error body is not JSON");
            return;
        }
    };
    assert!(is_json(body), "accepted a body that is not JSON");
    assert!(!parsed.model.is_empty());
    let sampling = &parsed.sampling;
    assert!(sampling.stop.len() <= MAX_STOP_SEQUENCES);
    assert!(sampling.stop.iter().all(|s| !s.is_empty()));
    assert!(
        sampling
            .temperature
            .is_none_or(|t| (0.0..=2.0).contains(&t))
    );
    assert!(sampling.top_p.is_none_or(|p| p > 0.0 && p <= 1.0));
    assert!(parsed.max_tokens.is_none_or(|n| n >= 1));
    assert!(!parsed.include_usage || parsed.stream);
    if let Some(tools) = &parsed.tools {
        assert!(is_json(tools.as_bytes()), "tools are not JSON");
    }
    if let Some(extra) = &parsed.extra {
        assert!(is_json(extra.as_bytes()), "extra is not JSON: {extra}");
        let entries = fuzzing::object_entries(extra).expect("extra is an object");
        assert!(!entries.is_empty());
        let mut merged = BASE.as_bytes().to_vec();
        merge_extra(&mut merged, extra).expect("the parser's extra merges");
        assert!(is_json(&merged), "merged body is not JSON");
        let merged = String::from_utf8(merged).expect("merged body is UTF-8");
        let got = fuzzing::object_entries(&merged).expect("merged body is an object");
        let base = fuzzing::object_entries(BASE).expect("base is an object");
        let base_keys: Vec<String> = base
            .iter()
            .filter_map(|(k, _)| fuzzing::key_text(k))
            .collect();
        let mut want = base.clone();
        want.extend(
            entries
                .iter()
                .filter(|(k, _)| fuzzing::key_text(k).is_none_or(|k| !base_keys.contains(&k))),
        );
        assert_eq!(got, want, "merge of {extra}");
    }
    let _ = parsed.into_generate_request(256);
});
