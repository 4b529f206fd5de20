//! Triton's `generate_stream` reader (step or cumulative text): arbitrary
//! bytes in arbitrary reads; see `gateway_fuzz::check_stream` for what is
//! asserted.
#![no_main]

use gateway_adapters::fuzzing::Engine;
use gateway_fuzz::{StreamInput, check_stream};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(input) = StreamInput::parse(data) else {
        return;
    };
    let engine = Engine::Triton {
        cumulative: input.flags & 1 != 0,
    };
    check_stream(engine, &input, input.flags & 4 != 0);
});
