//! A strict fast path for an engine's streamed chunk (the JSON of one SSE
//! `data:` line): the shapes vLLM, trtllm-serve, Dynamo and NIM send for
//! plain text, read by hand into the same [`Chunk`] `serde_json` makes of
//! them. `ChunkFrames::on_event` takes its answer and asks `serde_json`
//! only where it has none.
//!
//! Read here: the top-level `object`, `choices` (at most one) and `usage`
//! (with its details objects); a choice's `index`, `delta`, `text`,
//! `finish_reason` and `token_ids`; a delta's `role`, `content`,
//! `reasoning` and `reasoning_content` (a reasoning model's thinking, and
//! trtllm-serve's `"reasoning_content": ""` on every chat chunk); any
//! other key whose value is a scalar (`id`, `model`, `created`,
//! `stop_reason`, `system_fingerprint`, ...), skipped as serde skips it;
//! `null` for every optional field (`logprobs`, `prompt_token_ids`,
//! `metrics`, `refusal`, `tool_calls`, ...), which is what serde makes of
//! an absent one; strings with every JSON escape; whitespace anywhere JSON
//! allows it.
//!
//! Left to serde (`None`): anything else, among it a non-null `logprobs`,
//! `prompt_token_ids`, `metrics`, `refusal` or `tool_calls`; any `error`
//! key; more than one choice; an object or array under an unknown key; a
//! field given twice; a key with an escape; a number that is not a plain
//! unsigned integer in range where one is read; a string serde refuses;
//! anything that is not one JSON object. Every answer equals serde's (the
//! tests here and the `chunk_differential` fuzz target compare them), so
//! the adapter behaves as before on every input.
//!
//! Why: a short request is ~18 such chunks, and serde's read of them was
//! 11% of the gateway's CPU under load (docs/performance.md).
//!
//! And faster still, the chunks of one stream mostly differ only in their
//! text: the reader keeps the last chunk it read whole with the place of
//! its string of output (`delta.content`, a reasoning field or `text`:
//! the non-empty one, content first, when there are several) as a
//! [`Shape`], and a chunk byte-for-byte equal to it before and after that
//! string is read by reading the string alone (the rest parses as it did,
//! so the result is what a whole read gives).

use super::Chunk;
use crate::openai::chunk::{WireChoice, WireDelta};
use crate::openai::json::strict::Strict;
use crate::openai::types::{CompletionTokensDetails, CompletionUsage, PromptTokensDetails};

/// After this many chunks in a row that the fast path left to serde, a
/// stream's chunks go to serde alone: a chunk it leaves late (logprobs
/// or a tool call after the text fields) costs its work on top of serde's
/// (~1.3-1.4x serde alone in the `sse` bench), and streams that have such
/// chunks tend to have them on every chunk.
const MISSES: u8 = 3;

/// The chunk reader of one stream: the fast path, else serde (the same
/// result wherever both read a chunk); serde alone once the fast path
/// left [`MISSES`] chunks in a row to it.
#[derive(Debug, Default)]
pub(super) struct ChunkReader {
    misses: u8,
    /// The last chunk read whole, when it had a string of output.
    shape: Option<Box<Shape>>,
    /// Chunks in a row that did not match `shape`: after [`MISSES`], no
    /// shape is kept (a stream whose chunks differ elsewhere, such as in
    /// their token ids, would pay for the copy of each).
    shape_misses: u8,
}

impl ChunkReader {
    /// The chunk `data`; `None` if serde cannot read it either.
    pub(super) fn read(&mut self, data: &str) -> Option<Chunk> {
        if let Some(shape) = &self.shape {
            if let Some(chunk) = shape.read(data) {
                self.shape_misses = 0;
                return Some(chunk);
            }
            self.shape_misses = self.shape_misses.saturating_add(1);
            if self.shape_misses >= MISSES {
                self.shape = None;
            }
        }
        if self.misses < MISSES {
            let mut span = None;
            if let Some(chunk) = read_spanned(data, &mut span) {
                self.misses = 0;
                if let Some(span) = span
                    && self.shape_misses < MISSES
                {
                    self.shape = Some(Box::new(Shape::new(data, span, &chunk)));
                }
                return Some(chunk);
            }
            self.misses += 1;
        }
        serde_json::from_str(data).ok()
    }
}

/// The chunk `data` by the fast path; `None` where it leaves it to serde
/// (the tests' and the fuzz targets' view of it; a stream's reader also
/// keeps the chunk's shape).
#[cfg(any(test, feature = "fuzzing"))]
pub(super) fn read(data: &str) -> Option<Chunk> {
    read_spanned(data, &mut None)
}

/// [`read`], and in `span` where the chunk's string of output is, if it
/// has one.
fn read_spanned(data: &str, span: &mut Option<Span>) -> Option<Chunk> {
    let mut chunk = Chunk::default();
    let mut c = Strict::new(data);
    c.ws();
    read_chunk(&mut c, &mut chunk, span)?;
    c.ws();
    c.at_end().then_some(chunk)
}

/// Where a chunk's string of output is: the byte offsets of its opening
/// quote and just past its closing one, and which field it is (of choice
/// 0, the only one the fast path reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    open: usize,
    close: usize,
    field: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    /// `delta.content` (chat).
    Content,
    /// `delta.reasoning`.
    Reasoning,
    /// `delta.reasoning_content`.
    ReasoningContent,
    /// `text` (completions).
    Text,
}

/// A chunk read whole, and where its string of output was.
#[derive(Debug)]
struct Shape {
    /// The text before the string's opening quote.
    head: Box<str>,
    /// The text after its closing quote.
    tail: Box<str>,
    field: Output,
    chunk: Chunk,
}

impl Shape {
    fn new(data: &str, span: Span, chunk: &Chunk) -> Shape {
        Shape {
            head: data.get(..span.open).unwrap_or_default().into(),
            tail: data.get(span.close..).unwrap_or_default().into(),
            field: span.field,
            chunk: chunk.clone(),
        }
    }

    /// `data`, if it is this shape's text with another string of output:
    /// the same bytes before the string and after it, the string valid
    /// (read as the whole read reads it). Everything outside the string
    /// parses as it did, so the chunk is this one with the new string.
    fn read(&self, data: &str) -> Option<Chunk> {
        let end = data.len().checked_sub(self.tail.len())?;
        if end <= self.head.len() || !data.starts_with(&*self.head) || !data.ends_with(&*self.tail)
        {
            return None;
        }
        let mut c = Strict::starting_at(data, self.head.len());
        let text = c.string()?;
        if c.offset() != end {
            return None;
        }
        let mut chunk = self.chunk.clone();
        let choice = chunk.choices.as_mut()?.first_mut()?;
        match self.field {
            Output::Content => choice.delta.as_mut()?.content = Some(text),
            Output::Reasoning => choice.delta.as_mut()?.reasoning = Some(text),
            Output::ReasoningContent => choice.delta.as_mut()?.reasoning_content = Some(text),
            Output::Text => choice.text = Some(text),
        }
        Some(chunk)
    }
}

// Each reader below fills a default value in place (a `WireChoice` is some
// 250 bytes: building values and moving them up cost more than the
// reading), and refuses a field it has already seen, as serde does.

fn read_chunk(c: &mut Strict<'_>, chunk: &mut Chunk, span: &mut Option<Span>) -> Option<()> {
    let mut seen = Seen::default();
    c.object(|key, c| {
        match key {
            b"object" => {
                seen.first(0)?;
                chunk.object = c.nullable_string()?;
            }
            b"choices" => {
                seen.first(1)?;
                or_null(c, &mut chunk.choices, |c, list| choices(c, list, span))?;
            }
            b"usage" => {
                seen.first(2)?;
                or_null(c, &mut chunk.usage, usage)?;
            }
            b"prompt_token_ids" => {
                seen.first(3)?;
                null(c)?;
            }
            b"metrics" => {
                seen.first(4)?;
                null(c)?;
            }
            b"error" => return None,
            _ => c.skip_scalar()?,
        }
        Some(())
    })
}

/// The fields of one object read so far: serde refuses a repeated one.
#[derive(Debug, Default)]
struct Seen(u8);

impl Seen {
    /// `None` if field `bit` was seen before.
    fn first(&mut self, bit: u8) -> Option<()> {
        let mask = 1 << bit;
        let first = self.0 & mask == 0;
        self.0 |= mask;
        first.then_some(())
    }
}

/// `null` leaves `slot` at `None` (where it is, the field being new);
/// anything else is read into a default value there by `read`.
fn or_null<'a, T: Default>(
    c: &mut Strict<'a>,
    slot: &mut Option<T>,
    read: impl FnOnce(&mut Strict<'a>, &mut T) -> Option<()>,
) -> Option<()> {
    if c.null() {
        Some(())
    } else {
        read(c, slot.insert(T::default()))
    }
}

/// `null`, and nothing else.
fn null(c: &mut Strict<'_>) -> Option<()> {
    c.null().then_some(())
}

fn choices(
    c: &mut Strict<'_>,
    choices: &mut Vec<WireChoice>,
    span: &mut Option<Span>,
) -> Option<()> {
    c.array(|c| {
        if !choices.is_empty() {
            return None;
        }
        choices.reserve_exact(1);
        choices.push(WireChoice::default());
        choice(c, choices.last_mut()?, span)
    })
}

/// A nullable string, and its span in `span` when it is a string that
/// ranks above the one there: a non-empty string above an empty one (the
/// empty one is trtllm-serve's `"reasoning_content": ""` beside each
/// token's content), then the content or the text above a reasoning
/// field.
fn output(c: &mut Strict<'_>, span: &mut Option<Span>, field: Output) -> Option<Option<String>> {
    let open = c.offset();
    let text = c.nullable_string()?;
    if let Some(text) = &text {
        let close = c.offset();
        let rank =
            |empty: bool, field: Output| (!empty, matches!(field, Output::Content | Output::Text));
        // Quotes alone: the string is empty.
        let above = span
            .is_none_or(|s| rank(text.is_empty(), field) > rank(s.close - s.open == 2, s.field));
        if above {
            *span = Some(Span { open, close, field });
        }
    }
    Some(text)
}

fn choice(c: &mut Strict<'_>, choice: &mut WireChoice, span: &mut Option<Span>) -> Option<()> {
    let mut seen = Seen::default();
    c.object(|key, c| {
        match key {
            b"index" => {
                seen.first(0)?;
                choice.index = if c.null() { None } else { Some(c.u32()?) };
            }
            b"delta" => {
                seen.first(1)?;
                or_null(c, &mut choice.delta, |c, d| delta(c, d, span))?;
            }
            b"text" => {
                seen.first(2)?;
                choice.text = output(c, span, Output::Text)?;
            }
            b"finish_reason" => {
                seen.first(3)?;
                choice.finish_reason = c.nullable_string()?;
            }
            b"token_ids" => {
                seen.first(4)?;
                or_null(c, &mut choice.token_ids, ids)?;
            }
            b"prompt_token_ids" => {
                seen.first(5)?;
                null(c)?;
            }
            // `Present(false)`, the default.
            b"logprobs" => {
                seen.first(6)?;
                null(c)?;
            }
            _ => c.skip_scalar()?,
        }
        Some(())
    })
}

fn delta(c: &mut Strict<'_>, delta: &mut WireDelta, span: &mut Option<Span>) -> Option<()> {
    let mut seen = Seen::default();
    c.object(|key, c| {
        match key {
            b"role" => {
                seen.first(0)?;
                delta.role = c.nullable_string()?;
            }
            b"content" => {
                seen.first(1)?;
                delta.content = output(c, span, Output::Content)?;
            }
            b"reasoning" => {
                seen.first(2)?;
                delta.reasoning = output(c, span, Output::Reasoning)?;
            }
            b"reasoning_content" => {
                seen.first(3)?;
                delta.reasoning_content = output(c, span, Output::ReasoningContent)?;
            }
            b"refusal" => {
                seen.first(4)?;
                null(c)?;
            }
            // `null` is an empty list to serde (`nullable`).
            b"tool_calls" => {
                seen.first(5)?;
                null(c)?;
            }
            _ => c.skip_scalar()?,
        }
        Some(())
    })
}

fn ids(c: &mut Strict<'_>, ids: &mut Vec<u32>) -> Option<()> {
    c.array(|c| {
        ids.push(c.u32()?);
        Some(())
    })
}

fn usage(c: &mut Strict<'_>, usage: &mut CompletionUsage) -> Option<()> {
    let mut seen = Seen::default();
    c.object(|key, c| {
        // The counts are `nullable`: `null` is 0.
        match key {
            b"prompt_tokens" => {
                seen.first(0)?;
                usage.prompt_tokens = c.nullable_u64()?.unwrap_or_default();
            }
            b"completion_tokens" => {
                seen.first(1)?;
                usage.completion_tokens = c.nullable_u64()?.unwrap_or_default();
            }
            b"total_tokens" => {
                seen.first(2)?;
                usage.total_tokens = c.nullable_u64()?.unwrap_or_default();
            }
            b"prompt_tokens_details" => {
                seen.first(3)?;
                or_null(c, &mut usage.prompt_tokens_details, prompt_details)?;
            }
            b"completion_tokens_details" => {
                seen.first(4)?;
                or_null(c, &mut usage.completion_tokens_details, completion_details)?;
            }
            _ => c.skip_scalar()?,
        }
        Some(())
    })
}

fn prompt_details(c: &mut Strict<'_>, details: &mut PromptTokensDetails) -> Option<()> {
    let mut seen = Seen::default();
    c.object(|key, c| {
        match key {
            b"cached_tokens" => {
                seen.first(0)?;
                details.cached_tokens = c.nullable_u64()?.unwrap_or_default();
            }
            _ => c.skip_scalar()?,
        }
        Some(())
    })
}

fn completion_details(c: &mut Strict<'_>, details: &mut CompletionTokensDetails) -> Option<()> {
    let mut seen = Seen::default();
    c.object(|key, c| {
        match key {
            b"reasoning_tokens" => {
                seen.first(0)?;
                details.reasoning_tokens = c.nullable_u64()?;
            }
            b"accepted_prediction_tokens" => {
                seen.first(1)?;
                details.accepted_prediction_tokens = c.nullable_u64()?;
            }
            b"rejected_prediction_tokens" => {
                seen.first(2)?;
                details.rejected_prediction_tokens = c.nullable_u64()?;
            }
            _ => c.skip_scalar()?,
        }
        Some(())
    })
}

#[cfg(test)]
mod tests;
