//! The OpenAI-compatible adapter's stream reader (vLLM, trtllm-serve,
//! Dynamo, NIM quirks): arbitrary bytes in arbitrary reads; see
//! `gateway_fuzz::check_stream` for what is asserted.
#![no_main]

use gateway_adapters::fuzzing::Engine;
use gateway_fuzz::{StreamInput, check_stream};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(input) = StreamInput::parse(data) else {
        return;
    };
    let engine = match input.flags & 3 {
        0 => Engine::Vllm,
        1 => Engine::TrtLlm,
        2 => Engine::Dynamo,
        _ => Engine::Nim,
    };
    check_stream(engine, &input, input.flags & 4 != 0);
});
