//! The OpenAI-compatible adapters' strict fast path for an engine's
//! streamed chunk (the JSON of one `data:` line) against `serde_json`, on
//! arbitrary text: whenever the fast path reads a chunk, serde reads the
//! same (every field the adapters read, and choice 0 as a `Delta`); the
//! adapters' read (the fast path, else serde) always equals serde's. Text
//! with a line break is two chunks of one stream: the second, read after
//! the first (by its shape when only the string of output differs),
//! equals serde's read of it.
#![no_main]

use gateway_adapters::fuzzing::{ChunkPath, engine_chunk, engine_chunk_after, engine_chunk_delta};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The SSE decoder hands the adapters text; invalid UTF-8 becomes U+FFFD.
    let text = String::from_utf8_lossy(data);
    let serde = engine_chunk(&text, ChunkPath::Serde);
    if let Some(fast) = engine_chunk(&text, ChunkPath::Fast) {
        assert_eq!(
            Some(&fast),
            serde.as_ref(),
            "the fast path and serde disagree"
        );
        assert_eq!(
            engine_chunk_delta(&text, ChunkPath::Fast),
            engine_chunk_delta(&text, ChunkPath::Serde),
            "their deltas disagree"
        );
    }
    assert_eq!(engine_chunk(&text, ChunkPath::Adapter), serde);
    if let Some((prev, data)) = text.split_once('\n') {
        assert_eq!(
            engine_chunk_after(prev, data),
            engine_chunk(data, ChunkPath::Serde),
            "a second chunk read after the first disagrees with serde"
        );
    }
});
