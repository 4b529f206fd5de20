//! The merge of extra fields into an engine body, on arbitrary pairs
//! (`base NUL extra`). Asserts: a refusal leaves the body unchanged; with a
//! JSON object for both, the result is JSON: the base's entries, then the
//! extra entries whose keys the base lacks, byte for byte.
#![no_main]

use gateway_adapters::fuzzing;
use gateway_adapters::openai::merge_extra;
use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;

fn is_json(text: &[u8]) -> bool {
    serde_json::from_slice::<IgnoredAny>(text).is_ok()
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(2, |&b| b == 0);
    let (Some(base), Some(extra)) = (parts.next(), parts.next()) else {
        return;
    };
    let Ok(extra) = std::str::from_utf8(extra) else {
        return;
    };
    let mut body = base.to_vec();
    if merge_extra(&mut body, extra).is_err() {
        assert_eq!(body, base, "a refused merge changed the body");
        return;
    }
    let Ok(base) = std::str::from_utf8(base) else {
        panic!("merged into a body that is not UTF-8");
    };
    let base_entries = is_json(base.as_bytes())
        .then(|| fuzzing::object_entries(base))
        .flatten();
    let Some(base_entries) = base_entries else {
        return;
    };
    let extra_entries = fuzzing::object_entries(extra).expect("merged extra is an object");
    assert!(is_json(&body), "merged body is not JSON");
    let merged = String::from_utf8(body).expect("merged body is UTF-8");
    let got = fuzzing::object_entries(&merged).expect("merged body is an object");
    let base_keys: Vec<Option<String>> = base_entries
        .iter()
        .map(|(k, _)| fuzzing::key_text(k))
        .collect();
    let mut want = base_entries.clone();
    want.extend(extra_entries.iter().filter(|(k, _)| {
        let key = fuzzing::key_text(k);
        key.is_none() || !base_keys.contains(&key)
    }));
    assert_eq!(got, want);
});
