//! SGLang's native `/generate` stream reader (cumulative or incremental
//! text, with or without logprobs): arbitrary bytes in arbitrary reads; see
//! `gateway_fuzz::check_stream` for what is asserted.
#![no_main]

use gateway_adapters::fuzzing::Engine;
use gateway_fuzz::{StreamInput, check_stream};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(input) = StreamInput::parse(data) else {
        return;
    };
    let engine = Engine::Sglang {
        incremental: input.flags & 1 != 0,
        logprobs: input.flags & 2 != 0,
    };
    check_stream(engine, &input, input.flags & 4 != 0);
});
