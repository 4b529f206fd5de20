//! What the stream targets share: the input layout (a small header, then the
//! body split into chunks at points the header gives) and the checks of the
//! typed stream contract.
//!
//! Input layout (read with [`arbitrary::Unstructured`], front to back):
//! `flags: u8, cap: u8, max_event: u8, n: u8, sizes: [u8; n % 8], body...`.
//! A seed is a 4-byte header `[flags, cap, 0, 0]` and a raw transcript.

use arbitrary::{Result, Unstructured};
use gateway_adapters::fuzzing::{self, Engine};
use gateway_core::{EventOrder, FailurePhase, TokenEvent};

/// One stream input.
#[derive(Debug)]
pub struct StreamInput<'a> {
    /// Engine-specific switches.
    pub flags: u8,
    /// The completion cap, 1..=256.
    pub cap: u64,
    /// The bound on one event: the default 1 MiB, or 8..=2040 bytes.
    pub max_event_bytes: usize,
    /// The body, cut into transport reads.
    pub chunks: Vec<&'a [u8]>,
    /// The body in one piece.
    pub body: &'a [u8],
}

impl<'a> StreamInput<'a> {
    /// Reads the layout above; `None` if the header is incomplete.
    pub fn parse(data: &'a [u8]) -> Option<Self> {
        Self::read(Unstructured::new(data)).ok()
    }

    fn read(mut u: Unstructured<'a>) -> Result<Self> {
        let flags: u8 = u.arbitrary()?;
        let cap: u8 = u.arbitrary()?;
        let max_event: u8 = u.arbitrary()?;
        let n: u8 = u.arbitrary()?;
        let mut sizes = Vec::new();
        for _ in 0..n % 8 {
            let size: u8 = u.arbitrary()?;
            sizes.push(size);
        }
        let body = u.take_rest();
        Ok(StreamInput {
            flags,
            cap: u64::from(cap) + 1,
            max_event_bytes: match max_event {
                0 => gateway_adapters::openai::SseDecoder::DEFAULT_MAX_EVENT_BYTES,
                m => usize::from(m) * 8,
            },
            chunks: split(body, &sizes),
            body,
        })
    }

    /// The largest chunk.
    pub fn largest_chunk(&self) -> usize {
        self.chunks.iter().map(|c| c.len()).max().unwrap_or(0)
    }
}

/// `body` cut into pieces of the sizes given (cycled; size `s` is
/// `s % 64 + 1` bytes, 255 the rest); one piece without sizes.
pub fn split<'a>(body: &'a [u8], sizes: &[u8]) -> Vec<&'a [u8]> {
    if sizes.is_empty() {
        return vec![body];
    }
    let mut chunks = Vec::new();
    let mut rest = body;
    let mut i = 0;
    while !rest.is_empty() {
        let size = match sizes[i % sizes.len()] {
            255 => rest.len(),
            s => usize::from(s % 64) + 1,
        };
        let (head, tail) = rest.split_at(size.min(rest.len()));
        chunks.push(head);
        rest = tail;
        i += 1;
    }
    chunks
}

/// Reads `input` as `engine`'s stream, split and whole, and checks the
/// contract: `Started` first, the fixed order, exactly one terminal item
/// (`Finished` or an error) and nothing after it, errors in the right phase,
/// delta tokens within the cap, the decoder's memory within the event bound
/// plus one read, and the same events for any split of the bytes.
pub fn check_stream(engine: Engine, input: &StreamInput<'_>, quiet_end: bool) {
    let Some(read) = fuzzing::read_stream(
        engine,
        input.cap,
        input.max_event_bytes,
        &input.chunks,
        quiet_end,
    ) else {
        return;
    };
    let events = &read.events;
    assert!(
        matches!(events.first(), Some(Ok(TokenEvent::Started(_)))),
        "the stream must open with Started: {events:?}"
    );
    let mut order = EventOrder::new();
    let mut tokens = 0u64;
    let mut any_delta = false;
    for item in events {
        match item {
            Ok(event) => {
                if let Err(e) = order.observe(event) {
                    panic!("order violated: {e}: {events:?}");
                }
                if let TokenEvent::Delta(delta) = event {
                    tokens += u64::from(delta.tokens);
                    any_delta = true;
                }
            }
            Err(error) => {
                if let Err(e) = order.observe_error() {
                    panic!("order violated: {e}: {events:?}");
                }
                let phase = if any_delta {
                    FailurePhase::AfterFirstToken
                } else {
                    FailurePhase::BeforeFirstToken
                };
                assert_eq!(error.phase(), phase, "error phase: {events:?}");
            }
        }
    }
    assert!(order.is_ended(), "no terminal event: {events:?}");
    assert!(
        tokens <= input.cap,
        "{tokens} delta tokens above the cap {}: {events:?}",
        input.cap
    );
    let bound = input.max_event_bytes + input.largest_chunk();
    assert!(
        read.held <= bound,
        "decoder held {} bytes, bound {bound}",
        read.held
    );
    // The same answer whatever the transport reads were.
    if input.chunks.len() > 1 {
        let whole = fuzzing::read_stream(
            engine,
            input.cap,
            input.max_event_bytes,
            &[input.body],
            quiet_end,
        );
        if let Some(whole) = whole {
            assert_eq!(
                format!("{:?}", whole.events),
                format!("{events:?}"),
                "the split changed the events"
            );
        }
    }
}
