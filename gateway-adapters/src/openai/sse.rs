//! Server-sent events: a frame writer for responses and an incremental
//! [`SseDecoder`] for engines' streams.

use std::fmt;

use bytes::BytesMut;

/// The frame that ends a successful OpenAI stream.
pub const DONE_FRAME: &[u8] = b"data: [DONE]\n\n";

/// The data of the `[DONE]` event.
pub const DONE: &str = "[DONE]";

/// Writes one event: `data: <line>\n` per line of `data` (split at `\n`,
/// `\r\n` or `\r`, so the decoder gets `data` back), then a blank line.
pub fn write_data(out: &mut BytesMut, data: &str) {
    write_event(out, None, data);
}

/// Writes one event with an `event:` name (cut at its first line break,
/// which a name cannot hold) and `data`.
pub fn write_event(out: &mut BytesMut, event: Option<&str>, data: &str) {
    out.reserve(data.len() + 16);
    if let Some(name) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(first_line(name).as_bytes());
        out.extend_from_slice(b"\n");
    }
    for line in lines(data) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\n");
    }
    out.extend_from_slice(b"\n");
}

/// Writes a comment block (`: <text>\n` per line, then a blank line), for
/// keep-alives; decoders ignore it.
pub fn write_comment(out: &mut BytesMut, text: &str) {
    for line in lines(text) {
        out.extend_from_slice(b": ");
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\n");
    }
    out.extend_from_slice(b"\n");
}

fn first_line(s: &str) -> &str {
    s.split(['\n', '\r']).next().unwrap_or_default()
}

/// The lines of `s` split at `\n`, `\r\n` and `\r`; always at least one.
fn lines(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let s = rest?;
        match s.find(['\n', '\r']) {
            Some(i) => {
                let line = s.get(..i).unwrap_or_default();
                let tail = s.get(i..).unwrap_or_default();
                let tail = tail
                    .strip_prefix("\r\n")
                    .or_else(|| tail.strip_prefix('\n'))
                    .or_else(|| tail.strip_prefix('\r'))
                    .unwrap_or_default();
                rest = Some(tail);
                Some(line)
            }
            None => {
                rest = None;
                Some(s)
            }
        }
    })
}

/// One decoded event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` name, if the event had one.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n` (each without trailing spaces
    /// and tabs).
    pub data: String,
}

impl SseEvent {
    /// Whether this is the `data: [DONE]` end marker.
    pub fn is_done(&self) -> bool {
        self.data == DONE
    }
}

/// A stream that cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SseError {
    /// A complete event was not valid UTF-8; the event is dropped and
    /// decoding goes on with the next one.
    InvalidUtf8,
    /// An event grew beyond the decoder's limit; its bytes are dropped up
    /// to the next blank line, where decoding goes on.
    EventTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
}

impl fmt::Display for SseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SseError::InvalidUtf8 => f.write_str("server-sent event is not valid UTF-8"),
            SseError::EventTooLarge { limit } => {
                write!(f, "server-sent event exceeds {limit} bytes")
            }
        }
    }
}

impl std::error::Error for SseError {}

/// An incremental decoder of an event stream, for any split of the bytes.
///
/// Feed each transport read with [`push`](Self::push), then take the
/// complete events with [`next_event`](Self::next_event) (or
/// [`events`](Self::events)) until `None`; at the end of the body call
/// [`finish`](Self::finish) and take the rest.
///
/// Parsing follows the SSE specification, with these choices:
/// - lines end in `\n`, `\r\n` or `\r`; a blank line ends an event; a
///   leading byte-order mark is skipped;
/// - `data:` lines (one space after the colon is dropped) are joined with
///   `\n`, each without trailing spaces and tabs (trtllm-serve writes
///   `data: {json} \n\n`);
/// - `event:` sets the name; `:` comments, `id:`, `retry:` and unknown
///   fields are ignored;
/// - an event is given if it had a `data:` or an `event:` line, so a
///   data-less `event: error` (older Dynamo) is seen;
/// - bytes are kept until the event is complete, so characters and lines
///   split across reads come out whole; UTF-8 is checked per event
///   ([`SseError::InvalidUtf8`]);
/// - an event (the bytes of its lines, without line ends) may not exceed
///   [`max_event_bytes`](Self::with_max_event_bytes) (1 MiB by default):
///   beyond, [`SseError::EventTooLarge`] and its bytes are dropped;
/// - at [`finish`](Self::finish), an unterminated last line and event are
///   completed (Triton may end the body without the blank line).
///
/// Memory: the bytes of one event plus what was pushed and not yet taken;
/// take the events after each push.
///
/// ```
/// use gateway_adapters::openai::SseDecoder;
///
/// let mut dec = SseDecoder::new();
/// dec.push(b"data: {\"a\":1}\n\nda");
/// assert_eq!(dec.next_event().unwrap().unwrap().data, "{\"a\":1}");
/// assert!(dec.next_event().is_none());
/// dec.push(b"ta: [DONE]");
/// assert!(dec.next_event().is_none());
/// dec.finish();
/// assert!(dec.next_event().unwrap().unwrap().is_done());
/// assert!(dec.next_event().is_none());
/// ```
#[derive(Debug, Clone)]
pub struct SseDecoder {
    /// Bytes not yet parsed start at `pos`.
    buf: Vec<u8>,
    pos: usize,
    /// Bytes after `pos` already searched for a line end in vain, so a
    /// long line arriving in small reads is scanned once.
    searched: usize,
    max_event_bytes: usize,
    /// The current event.
    data: Vec<u8>,
    has_data: bool,
    name: Option<Vec<u8>>,
    /// Bytes of the current event's lines so far.
    event_bytes: usize,
    /// The last line ended in `\r` at the end of the bytes: a `\n` that
    /// comes next belongs to it.
    skip_lf: bool,
    /// Dropping the rest of a too large event, up to the next blank line.
    discarding: bool,
    /// While discarding: the bytes of an unterminated line were dropped,
    /// so the line is not blank whatever follows.
    line_dropped: bool,
    bom_checked: bool,
    eof: bool,
}

impl Default for SseDecoder {
    fn default() -> Self {
        SseDecoder::new()
    }
}

impl SseDecoder {
    /// The default bound on one event.
    pub const DEFAULT_MAX_EVENT_BYTES: usize = 1 << 20;

    /// A decoder with the default bound.
    pub fn new() -> Self {
        SseDecoder {
            buf: Vec::new(),
            pos: 0,
            searched: 0,
            max_event_bytes: Self::DEFAULT_MAX_EVENT_BYTES,
            data: Vec::new(),
            has_data: false,
            name: None,
            event_bytes: 0,
            skip_lf: false,
            discarding: false,
            line_dropped: false,
            bom_checked: false,
            eof: false,
        }
    }

    /// Sets the bound on one event's bytes.
    #[must_use]
    pub fn with_max_event_bytes(mut self, limit: usize) -> Self {
        self.max_event_bytes = limit;
        self
    }

    /// Adds the next bytes of the stream (ignored after
    /// [`finish`](Self::finish)).
    pub fn push(&mut self, bytes: &[u8]) {
        if self.eof {
            return;
        }
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
            // Give back the room a large event took.
            if self.buf.capacity() > 64 * 1024 && self.buf.len() < self.buf.capacity() / 4 {
                self.buf.shrink_to(self.buf.len().max(8 * 1024));
            }
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Marks the end of the stream: the next calls of
    /// [`next_event`](Self::next_event) also give an event cut short by the
    /// end (with its unterminated last line).
    pub fn finish(&mut self) {
        self.eof = true;
    }

    /// Whether bytes of an incomplete event (or line) are held: at the end
    /// of the stream, after the events were taken, a sign of truncation.
    pub fn has_partial(&self) -> bool {
        self.buf.len() > self.pos || self.has_data || self.name.is_some()
    }

    /// The bytes held now: pushed and not yet parsed, plus the current
    /// event's data and name (for the fuzz targets' memory bound).
    #[cfg(feature = "fuzzing")]
    pub(crate) fn buffered(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
            + self.data.len()
            + self.name.as_ref().map_or(0, Vec::len)
    }

    /// An iterator over the complete events available now.
    pub fn events(&mut self) -> Events<'_> {
        Events { decoder: self }
    }

    /// The next complete event, an error, or `None` until more bytes come.
    pub fn next_event(&mut self) -> Option<Result<SseEvent, SseError>> {
        loop {
            if !self.bom_checked && !self.check_bom() {
                return None;
            }
            if self.skip_lf {
                match self.buf.get(self.pos) {
                    Some(b'\n') => {
                        self.pos += 1;
                        self.skip_lf = false;
                    }
                    Some(_) => self.skip_lf = false,
                    None if self.eof => self.skip_lf = false,
                    None => return None,
                }
            }
            let rest = self.buf.get(self.pos..).unwrap_or_default();
            let unsearched = rest.get(self.searched..).unwrap_or_default();
            match find_line_end(unsearched).map(|i| self.searched + i) {
                Some(len) => {
                    self.searched = 0;
                    let start = self.pos;
                    let end = start + len;
                    let mut next = end + 1;
                    if self.buf.get(end) == Some(&b'\r') {
                        match self.buf.get(next) {
                            Some(b'\n') => next += 1,
                            Some(_) => {}
                            None => self.skip_lf = true,
                        }
                    }
                    self.pos = next;
                    if let Some(item) = self.line(start, end) {
                        return Some(item);
                    }
                }
                None if self.eof => {
                    self.searched = 0;
                    if !rest.is_empty() || self.line_dropped {
                        // The unterminated last line.
                        let (start, end) = (self.pos, self.buf.len());
                        self.pos = end;
                        if let Some(item) = self.line(start, end) {
                            return Some(item);
                        }
                        continue;
                    }
                    // The end completes a pending event like a blank line.
                    return self.line(self.pos, self.pos);
                }
                None => {
                    let pending = rest.len();
                    self.searched = pending;
                    if !self.discarding
                        && self.event_bytes.saturating_add(pending) > self.max_event_bytes
                    {
                        self.start_discarding();
                        self.line_dropped = true;
                        self.pos = self.buf.len();
                        self.searched = 0;
                        return Some(Err(SseError::EventTooLarge {
                            limit: self.max_event_bytes,
                        }));
                    }
                    if self.discarding && pending > 0 {
                        self.line_dropped = true;
                        self.pos = self.buf.len();
                        self.searched = 0;
                    }
                    return None;
                }
            }
        }
    }

    /// Skips a leading byte-order mark; `false` while too few bytes came
    /// to tell.
    fn check_bom(&mut self) -> bool {
        const BOM: &[u8] = b"\xef\xbb\xbf";
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let n = rest.len().min(BOM.len());
        if rest.get(..n) != BOM.get(..n) {
            self.bom_checked = true;
        } else if n == BOM.len() {
            self.pos += BOM.len();
            self.bom_checked = true;
        } else if self.eof {
            self.bom_checked = true;
        }
        self.bom_checked
    }

    fn start_discarding(&mut self) {
        self.discarding = true;
        self.reset_event();
    }

    fn reset_event(&mut self) {
        // Drop the room a too large event took.
        self.data = Vec::new();
        self.has_data = false;
        self.name = None;
        self.event_bytes = 0;
    }

    /// Handles the line `buf[start..end]`; returns an item when it ends an
    /// event or breaks a rule.
    fn line(&mut self, start: usize, end: usize) -> Option<Result<SseEvent, SseError>> {
        let line = self.buf.get(start..end).unwrap_or_default();
        let dropped = std::mem::take(&mut self.line_dropped);
        if line.is_empty() && !dropped {
            if self.discarding {
                self.discarding = false;
                self.reset_event();
                return None;
            }
            return self.dispatch();
        }
        if self.discarding {
            return None;
        }
        self.event_bytes = self.event_bytes.saturating_add(line.len());
        if self.event_bytes > self.max_event_bytes {
            self.start_discarding();
            return Some(Err(SseError::EventTooLarge {
                limit: self.max_event_bytes,
            }));
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(0) => return None,
            Some(colon) => {
                let value = line.get(colon + 1..).unwrap_or_default();
                (
                    line.get(..colon).unwrap_or_default(),
                    value.strip_prefix(b" ").unwrap_or(value),
                )
            }
            None => (line, &[][..]),
        };
        match field {
            b"data" => {
                let value = value.trim_ascii_end_spaces();
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.has_data = true;
                self.data.extend_from_slice(value);
            }
            b"event" => self.name = Some(value.to_vec()),
            _ => {}
        }
        None
    }

    /// Ends the current event at a blank line.
    fn dispatch(&mut self) -> Option<Result<SseEvent, SseError>> {
        self.event_bytes = 0;
        if !self.has_data && self.name.is_none() {
            return None;
        }
        self.has_data = false;
        let data = std::mem::take(&mut self.data);
        let name = self.name.take();
        let data = String::from_utf8(data).map_err(|_| SseError::InvalidUtf8);
        let name = name
            .map(String::from_utf8)
            .transpose()
            .map_err(|_| SseError::InvalidUtf8);
        Some(match (name, data) {
            (Ok(event), Ok(data)) => Ok(SseEvent { event, data }),
            _ => Err(SseError::InvalidUtf8),
        })
    }
}

/// The index of the first `\n` or `\r`, eight bytes at a time.
fn find_line_end(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Whether some byte of `word` equals `byte` (exact: no false answers).
    let has = |word: u64, byte: u8| {
        let x = word ^ (ONES * u64::from(byte));
        x.wrapping_sub(ONES) & !x & HIGH != 0
    };
    let is_end = |b: &u8| *b == b'\n' || *b == b'\r';
    let mut chunks = bytes.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word);
        if has(word, b'\n') || has(word, b'\r') {
            return chunk.iter().position(is_end).map(|i| offset + i);
        }
        offset += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(is_end)
        .map(|i| offset + i)
}

trait TrimSpaces {
    fn trim_ascii_end_spaces(&self) -> &Self;
}

impl TrimSpaces for [u8] {
    fn trim_ascii_end_spaces(&self) -> &[u8] {
        let keep = self
            .iter()
            .rposition(|&b| b != b' ' && b != b'\t')
            .map_or(0, |i| i + 1);
        self.get(..keep).unwrap_or_default()
    }
}

/// The complete events available now; see [`SseDecoder::events`].
#[derive(Debug)]
pub struct Events<'a> {
    decoder: &'a mut SseDecoder,
}

impl Iterator for Events<'_> {
    type Item = Result<SseEvent, SseError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.decoder.next_event()
    }
}
