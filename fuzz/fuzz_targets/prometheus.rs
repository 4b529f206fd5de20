//! The Prometheus text parser and every engine's gauges read from a scrape:
//! arbitrary text. Asserts: each sample comes from its own line, later
//! samples from later lines; its name is its line's name; its label names
//! are slices of that line; the pressure stored from a scrape has a KV
//! usage within 0..=1.
//!
//! One parse of the text: the loop goes over `samples` (every line through
//! `parse_line`) and finds each sample's line from where its name lies in
//! the text, instead of parsing every line again.
#![no_main]

use gateway_adapters::engines::prometheus;
use gateway_adapters::fuzzing;
use libfuzzer_sys::fuzz_target;

/// Where `part` starts in `whole`, if it is a slice of it.
fn offset_in(whole: &str, part: &str) -> Option<usize> {
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    (start + part.len() <= whole.len()).then_some(start)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The model name: the first label value the text has, else "m".
    let mut model = None;
    // The end of the previous sample's line.
    let mut previous_end = None;
    for sample in prometheus::samples(text) {
        assert!(!sample.name.is_empty());
        let at = offset_in(text, sample.name).expect("a sample's name is a slice of the text");
        // Its line, as `str::lines` cuts it (a `\r` before the `\n` kept:
        // the name and labels end before the value, so it changes neither).
        let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
        let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
        let line = &text[start..end];
        if let Some(previous) = previous_end {
            assert!(start > previous, "two samples from one line: {line:?}");
        }
        previous_end = Some(end);
        assert_eq!(Some(sample.name), prometheus::line_name(line));
        for (name, _) in &sample.labels {
            let from = offset_in(text, name);
            assert!(
                from.is_some_and(|from| from >= start && from + name.len() <= end),
                "label {name:?} not in {line:?}"
            );
        }
        if model.is_none() {
            model = sample.labels.first().map(|(_, v)| v.to_string());
        }
    }
    let model = model.unwrap_or_else(|| "m".to_owned());
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
