//! An engine's HTTP/1.1 answer as the adapters' own client reads it:
//! arbitrary bytes, cut into socket reads at arbitrary points (the first
//! byte picks the read size). Asserts: no panic, and the same answer
//! (status, body, clean end) or the same error whether the bytes come in
//! one read or in many.
#![no_main]

use gateway_adapters::fuzzing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&step, wire)) = data.split_first() else {
        return;
    };
    let whole = fuzzing::upstream_answer(&[wire]);
    let reads: Vec<&[u8]> = wire.chunks(usize::from(step % 17) + 1).collect();
    let split = fuzzing::upstream_answer(&reads);
    assert_eq!(whole, split, "one read and reads of {} bytes differ", step % 17 + 1);
    if let Ok((status, body, _)) = &whole {
        assert!((200..=999).contains(status));
        assert!(body.len() <= wire.len());
    }
});
