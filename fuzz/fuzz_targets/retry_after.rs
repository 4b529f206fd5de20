//! `Retry-After` of an engine's error answer: arbitrary header bytes.
//! Asserts: never above an hour; a plain number of seconds is read as such.
#![no_main]

use std::time::Duration;

use gateway_adapters::fuzzing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(wait) = fuzzing::retry_after(data) else {
        return;
    };
    assert!(wait <= Duration::from_secs(3600), "{wait:?} above an hour");
    let text = std::str::from_utf8(data)
        .expect("a read value is text")
        .trim();
    let secs: f64 = text.parse().expect("a read value is a number");
    assert!(secs >= 0.0 && secs.is_finite());
    if secs <= 3600.0 {
        assert!(
            (wait.as_secs_f64() - secs).abs() < 1e-6,
            "{text:?} read as {wait:?}"
        );
    }
});
