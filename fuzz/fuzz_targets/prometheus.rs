//! The Prometheus text parser and every engine's gauges read from a scrape:
//! arbitrary text. Asserts: each sample's name is its line's name and
//! appears in the line; label names and values come from the line; the
//! pressure stored from a scrape has a KV usage within 0..=1.
#![no_main]

use gateway_adapters::engines::prometheus;
use gateway_adapters::fuzzing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for line in text.lines() {
        let Some(sample) = prometheus::parse_line(line) else {
            continue;
        };
        assert_eq!(Some(sample.name), prometheus::line_name(line));
        assert!(!sample.name.is_empty());
        for (name, _) in &sample.labels {
            assert!(line.contains(name), "label {name:?} not in {line:?}");
        }
    }
    let count = prometheus::samples(text).count();
    assert!(count <= text.lines().count());
    // The model name: the first label value the text has, else "m".
    let model = prometheus::samples(text)
        .find_map(|s| s.labels.first().map(|(_, v)| v.to_string()))
        .unwrap_or_else(|| "m".to_owned());
    for pressure in fuzzing::scrape_pressures(text, &model)
        .into_iter()
        .flatten()
    {
        assert!(
            (0.0..=1.0).contains(&pressure.kv_usage),
            "kv usage {} out of range",
            pressure.kv_usage
        );
    }
});
