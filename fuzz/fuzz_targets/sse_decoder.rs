//! The SSE decoder: arbitrary bytes in arbitrary reads. Asserts the same
//! events (and errors) for any split as for the whole body, no event above
//! the bound, and the bytes held after the events are taken within the
//! bound.
#![no_main]

use gateway_adapters::fuzzing;
use gateway_adapters::openai::{SseDecoder, SseError, SseEvent};
use gateway_fuzz::StreamInput;
use libfuzzer_sys::fuzz_target;

fn decode(chunks: &[&[u8]], limit: usize) -> Vec<Result<SseEvent, SseError>> {
    let mut decoder = SseDecoder::new().with_max_event_bytes(limit);
    let mut out = Vec::new();
    for chunk in chunks {
        decoder.push(chunk);
        out.extend(decoder.events());
        let held = fuzzing::sse_buffered(&decoder);
        assert!(held <= limit, "decoder held {held} bytes, bound {limit}");
    }
    decoder.finish();
    out.extend(decoder.events());
    assert!(decoder.next_event().is_none(), "events after the end");
    // Nothing is taken after the end.
    decoder.push(b"data: x\n\n");
    assert!(decoder.next_event().is_none(), "an event after finish");
    out
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = StreamInput::parse(data) else {
        return;
    };
    let limit = input.max_event_bytes;
    let split = decode(&input.chunks, limit);
    for event in split.iter().flatten() {
        let size = event.data.len() + event.event.as_ref().map_or(0, String::len);
        assert!(
            size <= limit,
            "an event of {size} bytes passed the bound {limit}"
        );
    }
    let whole = decode(&[input.body], limit);
    assert_eq!(split, whole, "the split changed the events");
});
