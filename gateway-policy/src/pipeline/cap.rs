//! The gateway's own completion cap: `max_tokens` enforced on what is
//! delivered, whatever the engine does with it.
//!
//! Every delta is counted by the gateway before it is relayed:
//! - by its `token_ids` when the engine gives them, else by its logprob
//!   entries (one per token): an exact count, cut exactly at the cap;
//! - else, when the model's counter counts text exactly (a tokenizer is
//!   configured), by the tokens of its output text (text, reasoning,
//!   refusal, tool names and arguments), each field counted on its own as
//!   a continuation of the output before it, never below one for a piece
//!   with output. Re-tokenizing generated text does not always give back
//!   the generated tokens (a model may emit a non-canonical split, `"ab"`
//!   as `"a"`,`"b"`; an engine may merge several tokens into one chunk), so
//!   this count is an estimate. While it stays within a slack ([`slack`]:
//!   1/16 of the cap, at least 4) of the engine's own count (its chunks,
//!   and its usage at the end), the engine's count is charged and the
//!   stream is cut only past the cap plus the slack, so an engine that
//!   honoured `max_tokens` is not cut. Once the text runs further ahead (an
//!   engine that sends many tokens' text in a chunk it counts as one, or
//!   with `token_ids: []`), the text's count is charged, everything
//!   delivered before included, and the stream is cut at the cap;
//! - else (no tokenizer) by the engine's own count, at least one per piece
//!   with output.
//!
//! The client is metered and charged that count, never more than the
//! cap. A delta that would pass the limit is cut to the tokens left: its
//! ids and logprobs to that many entries, its text to the longest prefix
//! that counts at most that many tokens (found by binary search over
//! character boundaries with the tokenizer; without one, in proportion to
//! the piece's characters). The stream then ends with `Finished(Length)`
//! and the engine is aborted.

use std::sync::Arc;

use gateway_core::{Delta, TokenCounter};

/// What to do with one delta.
#[derive(Debug, PartialEq)]
pub(super) enum Admit {
    /// Within the cap: relay it (its `tokens` are what the client is
    /// charged for it).
    Pass(Delta),
    /// The cap is reached: relay the piece that fits, if any, then end the
    /// stream with `Length`.
    Cut(Option<Delta>),
}

/// How far a count of the output's text may pass the cap before the
/// stream is cut: 1/16 of the cap, at least 4 tokens.
pub(super) fn slack(cap: u64) -> u64 {
    (cap / 16).max(4)
}

/// One delta's count.
#[derive(Debug, Clone, Copy)]
struct Count {
    /// The engine's count (its ids or logprobs, else its chunk count).
    engine: u64,
    /// The gateway's count: the same when exact, else by the tokenizer.
    text: u64,
    /// Whether `text` is the tokenizer's estimate.
    estimated: bool,
}

/// Counts the deltas of one stream against its cap.
#[derive(Debug)]
pub(super) struct OutputCap {
    cap: u64,
    /// [`slack`] of the cap.
    slack: u64,
    /// The engine's running count.
    engine: u64,
    /// The gateway's running count (exact counts, text estimates).
    text: u64,
    /// What the deltas relayed so far were given as their `tokens`.
    charged: u64,
    /// Whether the engine's count is within the slack of the text's: then
    /// it is what is charged, and the text may pass the cap by the slack.
    trust_engine: bool,
    /// Whether the piece that was cut took the engine's own count past
    /// the cap.
    engine_past_cap: bool,
    counter: Arc<dyn TokenCounter>,
    /// [`LEAD`]'s own tokens, when the counter counts exactly.
    lead: Option<u64>,
}

impl OutputCap {
    /// A cap of `cap` tokens, counting text with `counter` when it counts
    /// exactly.
    pub(super) fn new(cap: u64, counter: Arc<dyn TokenCounter>) -> Self {
        let lead = counter.count_text(LEAD);
        OutputCap {
            cap,
            slack: slack(cap),
            engine: 0,
            text: 0,
            charged: 0,
            trust_engine: true,
            engine_past_cap: false,
            lead: lead.is_exact().then(|| lead.value()),
            counter,
        }
    }

    /// Tokens charged so far (within the cap).
    #[cfg(test)]
    pub(super) fn counted(&self) -> u64 {
        self.charged
    }

    /// Whether the engine's own count is still within the cap: then a cut
    /// was the gateway's text count's, and the engine, asked for at most
    /// the cap, stops there by itself.
    pub(super) fn engine_within_cap(&self) -> bool {
        !self.engine_past_cap
    }

    /// The engine's own count so far.
    pub(super) fn engine_count(&self) -> u64 {
        self.engine
    }

    /// Counts `delta`; cuts it when it would pass the cap.
    pub(super) fn admit(&mut self, mut delta: Delta) -> Admit {
        let count = self.count(&delta);
        let engine_after = self.engine + count.engine;
        let text_after = self.text + count.text;
        if text_after > engine_after + self.slack {
            // The engine's count is not the output's: the text is counted
            // from now on, and cut at the cap itself.
            self.trust_engine = false;
        }
        let limit = if self.trust_engine {
            self.cap + self.slack
        } else {
            self.cap
        };
        if engine_after <= self.cap && text_after <= limit {
            self.engine = engine_after;
            self.text = text_after;
            delta.tokens = self.charge();
            return Admit::Pass(delta);
        }
        self.engine_past_cap = engine_after > self.cap;
        let engine_room = self.cap.saturating_sub(self.engine);
        let text_room = limit.saturating_sub(self.text);
        let kept = if engine_room == 0 || text_room == 0 {
            0
        } else if count.estimated {
            self.cut(&mut delta, count.text, text_room.min(count.text))
        } else {
            self.cut(&mut delta, count.engine, engine_room.min(count.engine))
        };
        if kept == 0 {
            delta = Delta::default();
        }
        self.text += kept;
        self.engine += count.engine.min(engine_room).min(kept);
        // What was delivered before, counted as now trusted, is charged
        // with the last piece.
        delta.tokens = self.charge();
        Admit::Cut((delta.tokens > 0 || delta.has_output()).then_some(delta))
    }

    /// The tokens the next relayed delta is charged: what the running
    /// count (the engine's while it is trusted, else the larger of the
    /// two; at most the cap) grew by.
    fn charge(&mut self) -> u32 {
        let count = if self.trust_engine {
            self.engine
        } else {
            self.engine.max(self.text)
        };
        let total = count.min(self.cap).max(self.charged);
        let grew = total - self.charged;
        self.charged = total;
        u32::try_from(grew).unwrap_or(u32::MAX)
    }

    /// The gateway's count of one delta.
    fn count(&self, delta: &Delta) -> Count {
        let exact = |n: usize| Count {
            engine: n as u64,
            text: n as u64,
            estimated: false,
        };
        // The adapter may have added to a piece the tokens of output-less
        // pieces before it (a parser's held tokens): never below that.
        let claimed = delta.tokens as usize;
        if !delta.token_ids.is_empty() {
            return exact(delta.token_ids.len().max(claimed));
        }
        if !delta.logprobs.is_empty() {
            return exact(delta.logprobs.len().max(claimed));
        }
        let at_least_one = u64::from(delta.has_output());
        if self.lead.is_some()
            && let Some(text) = self.exact_text_tokens(delta)
        {
            return Count {
                engine: u64::from(delta.tokens).max(at_least_one),
                text: text.max(at_least_one),
                estimated: true,
            };
        }
        let n = u64::from(delta.tokens).max(at_least_one);
        Count {
            engine: n,
            text: n,
            estimated: false,
        }
    }

    /// The tokens of the delta's output text by the counter, when it counts
    /// exactly.
    fn exact_text_tokens(&self, delta: &Delta) -> Option<u64> {
        let mut total: u64 = 0;
        for field in fields(delta) {
            if field.is_empty() {
                continue;
            }
            total = total.saturating_add(piece_tokens(self.counter.as_ref(), self.lead, field)?);
        }
        Some(total)
    }

    /// Cuts `delta` (counted `tokens`) to at most `room` tokens; the
    /// tokens it keeps. Counted by ids or logprobs, or without a tokenizer,
    /// that is `room`; counted by the tokenizer, the tokens of the text
    /// kept, which is below `room` when no character boundary lands on it
    /// (a character of several byte tokens).
    fn cut(&self, delta: &mut Delta, tokens: u64, room: u64) -> u64 {
        let keep = usize::try_from(room).unwrap_or(usize::MAX);
        let by_count = !delta.token_ids.is_empty() || !delta.logprobs.is_empty();
        delta.token_ids.truncate(keep);
        delta.logprobs.truncate(keep);
        let total_chars: u64 = fields(delta).map(|f| f.chars().count() as u64).sum();
        let exact = self.exact_text_tokens(delta).is_some();
        let counter = &self.counter;
        let lead = self.lead;
        let measure = |s: &str| -> u64 {
            if exact {
                piece_tokens(counter.as_ref(), lead, s).unwrap_or(0)
            } else {
                proportional(s, tokens, total_chars)
            }
        };
        let mut budget = room;
        let mut budget_closed = false;
        let mut cut_field = |s: &mut String| {
            if budget_closed {
                s.clear();
            }
            if s.is_empty() {
                return;
            }
            let n = measure(s);
            if n <= budget {
                budget -= n;
                return;
            }
            let end = longest_prefix(s, budget, &measure);
            s.truncate(end);
            budget -= measure(s).min(budget);
            // Nothing after a cut field goes out.
            budget_closed = true;
        };
        cut_field(&mut delta.reasoning);
        cut_field(&mut delta.text);
        cut_field(&mut delta.refusal);
        for call in &mut delta.tool_calls {
            cut_field(&mut call.arguments);
        }
        delta.tool_calls.retain(|c| {
            c.id.is_some() || c.kind.is_some() || c.name.is_some() || !c.arguments.is_empty()
        });
        let kept = if exact && !by_count {
            room - budget
        } else {
            room
        };
        delta.tokens = u32::try_from(kept).unwrap_or(u32::MAX);
        kept
    }
}

/// What a piece is counted after: a character that no tokenizer merges
/// with the text after it.
const LEAD: &str = "\n";

/// The tokens of `piece` as the continuation of earlier output, when the
/// counter counts exactly: counted on its own, a piece would be a fresh
/// start, and a SentencePiece tokenizer (Llama's) prepends a word marker to
/// it, so the one-token piece `" world"` would count two. Counted after
/// [`LEAD`] and less [`LEAD`]'s own tokens, it counts as it does inside the
/// text the engine generated.
fn piece_tokens(counter: &dyn TokenCounter, lead: Option<u64>, piece: &str) -> Option<u64> {
    let lead = lead?;
    let mut led = String::with_capacity(LEAD.len() + piece.len());
    led.push_str(LEAD);
    led.push_str(piece);
    let both = counter.count_text(&led);
    both.is_exact().then(|| both.value().saturating_sub(lead))
}

/// The delta's output text fields, in the order they are cut.
fn fields(delta: &Delta) -> impl Iterator<Item = &str> {
    [
        delta.reasoning.as_str(),
        delta.text.as_str(),
        delta.refusal.as_str(),
    ]
    .into_iter()
    .chain(delta.tool_calls.iter().map(|c| c.arguments.as_str()))
}

/// `s`'s share of a piece of `tokens` tokens and `total_chars` characters,
/// rounded up.
fn proportional(s: &str, tokens: u64, total_chars: u64) -> u64 {
    if total_chars == 0 {
        return 0;
    }
    let chars = s.chars().count() as u64;
    chars.saturating_mul(tokens).div_ceil(total_chars)
}

/// The byte length of the longest prefix of `s`, at a character boundary,
/// that `measure` counts at most `budget` tokens (binary search: exact when
/// the count grows with the prefix, as it does for tokenizers in all but
/// rare merges).
fn longest_prefix(s: &str, budget: u64, measure: &dyn Fn(&str) -> u64) -> usize {
    let ends: Vec<usize> = s
        .char_indices()
        .map(|(i, _)| i)
        .skip(1)
        .chain(std::iter::once(s.len()))
        .collect();
    // `ends[k]` is the end of the first k+1 characters; find how many fit.
    let (mut lo, mut hi) = (0usize, ends.len());
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if measure(&s[..ends[mid - 1]]) <= budget {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    if lo == 0 { 0 } else { ends[lo - 1] }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_core::{ByteBound, Prompt, TokenCount, TokenLogprob, ToolCallDelta};

    /// Counts whitespace-separated words, exactly.
    #[derive(Debug)]
    struct Words;

    impl TokenCounter for Words {
        fn count_prompt(&self, prompt: &Prompt) -> TokenCount {
            ByteBound::default().count_prompt(prompt)
        }
        fn count_text(&self, text: &str) -> TokenCount {
            TokenCount::Exact(text.split_whitespace().count() as u64)
        }
    }

    fn words(cap: u64) -> OutputCap {
        OutputCap::new(cap, Arc::new(Words))
    }

    #[test]
    fn ids_and_logprobs_count_before_text() {
        let mut c = words(100);
        let d = Delta {
            token_ids: vec![1, 2],
            ..Delta::text("a b c d", 1)
        };
        assert_eq!(c.admit(d.clone()), Admit::Pass(Delta { tokens: 2, ..d }));
        let d = Delta {
            logprobs: vec![TokenLogprob::default(); 3],
            ..Delta::text("a", 1)
        };
        let Admit::Pass(d) = c.admit(d) else {
            panic!("passes")
        };
        assert_eq!(d.tokens, 3);
        assert_eq!(c.counted(), 5);
    }

    #[test]
    fn text_without_ids_is_charged_the_engines_count_until_the_text_runs_past_the_slack() {
        let mut c = words(100);
        assert_eq!(slack(100), 6);
        // `token_ids: []` with five words of text: the engine says one,
        // the text says five, within the slack: one.
        let Admit::Pass(d) = c.admit(Delta::text("one two three four five", 1)) else {
            panic!("passes")
        };
        assert_eq!(d.tokens, 1);
        // Five more: the text (10) is more than the slack ahead of the
        // engine's 2. The text is charged, the first piece's words too.
        let Admit::Pass(d) = c.admit(Delta::text("a b c d e", 1)) else {
            panic!("passes")
        };
        assert_eq!((d.tokens, c.counted()), (9, 10));
        // Whitespace only: the tokenizer says 0, the piece still counts 1.
        let Admit::Pass(d) = c.admit(Delta::text("  ", 0)) else {
            panic!("passes")
        };
        assert_eq!((d.tokens, c.counted()), (1, 11));
        // The engine's own count wins when higher.
        let Admit::Pass(d) = c.admit(Delta::text("x", 20)) else {
            panic!("passes")
        };
        assert_eq!((d.tokens, c.counted()), (12, 23));
        // A bound (no tokenizer) is not used: the engine's count, one per
        // piece at least.
        let mut b = OutputCap::new(100, Arc::new(ByteBound::default()));
        let Admit::Pass(d) = b.admit(Delta::text("one two three", 0)) else {
            panic!("passes")
        };
        assert_eq!(d.tokens, 1);
    }

    #[test]
    fn an_engine_that_honours_the_cap_is_not_cut_when_its_text_counts_a_little_more() {
        // Sixteen one-token chunks, one of which re-tokenizes as two (a
        // non-canonical split): 17 by text, 16 by the engine.
        let mut c = words(16);
        let mut total: u64 = 0;
        for i in 0..16 {
            let piece = if i == 7 { "w w " } else { "w " };
            let Admit::Pass(d) = c.admit(Delta::text(piece, 1)) else {
                panic!("chunk {i} passes")
            };
            total += u64::from(d.tokens);
        }
        assert_eq!((total, c.counted()), (16, 16));
    }

    #[test]
    fn merged_chunks_without_ids_are_charged_by_their_text() {
        // Speculative decoding without ids: ten chunks of three tokens,
        // each counted one by the adapter, then the usage's remainder as an
        // output-less delta. From the third chunk the text is trusted.
        let mut c = words(30);
        let mut charged = Vec::new();
        for _ in 0..10 {
            let Admit::Pass(d) = c.admit(Delta::text("a b c ", 1)) else {
                panic!("passes")
            };
            charged.push(d.tokens);
        }
        assert_eq!(charged, [1, 1, 7, 3, 3, 3, 3, 3, 3, 3]);
        let Admit::Pass(d) = c.admit(Delta::text("", 20)) else {
            panic!("passes")
        };
        assert_eq!((d.tokens, c.counted()), (0, 30));
    }

    #[test]
    fn text_far_ahead_of_the_engines_count_is_cut_at_the_cap() {
        let mut c = words(10);
        assert_eq!(slack(10), 4);
        let Admit::Pass(d) = c.admit(Delta::text("a b c d e f", 1)) else {
            panic!("passes")
        };
        assert_eq!(d.tokens, 6);
        // Four words left: the longest prefix of four (the word counter
        // counts the space after them as nothing).
        let cut = c.admit(Delta::text("g h i j k l", 1));
        assert_eq!(cut, Admit::Cut(Some(Delta::text("g h i j ", 4))));
        assert_eq!(c.counted(), 10);
        // Cut by the text; the engine, by its own count, is within the cap.
        assert!(c.engine_within_cap());
        // At the cap, anything more is dropped.
        assert_eq!(c.admit(Delta::text("m", 1)), Admit::Cut(None));
    }

    #[test]
    fn a_runaway_trusted_within_the_slack_is_charged_what_it_delivered() {
        // Cap 4, slack 4: two chunks whose text (6) is within the slack of
        // their count (2), then one that shows the engine runs away: it is
        // dropped, and the text delivered is charged (up to the cap).
        let mut c = words(4);
        assert!(matches!(c.admit(Delta::text("a b", 1)), Admit::Pass(_)));
        assert!(matches!(c.admit(Delta::text("c d e f", 1)), Admit::Pass(_)));
        assert_eq!(c.counted(), 2);
        let cut = c.admit(Delta::text("g h i j", 1));
        assert_eq!(cut, Admit::Cut(Some(Delta::text("", 2))));
        assert_eq!(c.counted(), 4);
    }

    #[test]
    fn held_tokens_merged_into_a_piece_with_ids_are_counted() {
        // vLLM's reasoning parser sends `</think>` as `{"delta":{}}` with
        // its id; the adapter adds that token to the next piece, whose ids
        // are its own one.
        let mut c = words(12);
        let d = Delta {
            token_ids: vec![26051],
            ..Delta::text(" notify", 2)
        };
        let Admit::Pass(d) = c.admit(d) else {
            panic!("passes")
        };
        assert_eq!((d.tokens, c.counted()), (2, 2));
    }

    #[test]
    fn ids_past_the_cap_are_cut_exactly_at_it() {
        let mut c = words(4);
        let ids = |ids: Vec<u32>, text: &str| Delta {
            token_ids: ids,
            ..Delta::text(text, 1)
        };
        assert!(matches!(
            c.admit(ids(vec![1, 2, 3], "a b c")),
            Admit::Pass(_)
        ));
        let Admit::Cut(Some(d)) = c.admit(ids(vec![4, 5], "d e")) else {
            panic!("cut")
        };
        assert_eq!((d.token_ids, d.tokens, c.counted()), (vec![4], 1, 4));
        // The engine itself went past the cap: it is aborted.
        assert!(!c.engine_within_cap());
    }

    #[test]
    fn the_cut_goes_through_reasoning_then_text_then_tool_arguments() {
        let mut c = words(5);
        let d = Delta {
            reasoning: "r1 r2 r3".into(),
            text: "t1 t2 t3".into(),
            tool_calls: vec![ToolCallDelta {
                arguments: "{\"a\": 1}".into(),
                ..ToolCallDelta::default()
            }],
            ..Delta::default()
        };
        let Admit::Cut(Some(d)) = c.admit(d) else {
            panic!("cut")
        };
        assert_eq!(
            (d.reasoning.as_str(), d.text.as_str()),
            ("r1 r2 r3", "t1 t2 ")
        );
        assert!(d.tool_calls.is_empty());
        assert_eq!((d.tokens, c.counted()), (5, 5));
    }

    /// Counts bytes, exactly: a character can be several tokens.
    #[derive(Debug)]
    struct Bytes;

    impl TokenCounter for Bytes {
        fn count_prompt(&self, prompt: &Prompt) -> TokenCount {
            ByteBound::default().count_prompt(prompt)
        }
        fn count_text(&self, text: &str) -> TokenCount {
            TokenCount::Exact(text.len() as u64)
        }
    }

    #[test]
    fn a_cut_inside_a_character_keeps_less_than_the_room() {
        let mut c = OutputCap::new(8, Arc::new(Bytes));
        // Six bytes counted one by the engine: the text is trusted.
        assert!(matches!(c.admit(Delta::text("abcdef", 0)), Admit::Pass(_)));
        assert_eq!(c.counted(), 6);
        // Room 2; `x` fits, `é` (2 bytes) would pass it.
        let Admit::Cut(Some(d)) = c.admit(Delta::text("xé", 0)) else {
            panic!("cut")
        };
        assert_eq!((d.text.as_str(), d.tokens), ("x", 1));
        assert_eq!(c.counted(), 7);
        // Room 1: nothing of `é` fits, nothing goes out.
        assert_eq!(c.admit(Delta::text("é", 0)), Admit::Cut(None));
        assert_eq!(c.counted(), 7);
    }

    #[test]
    fn without_a_tokenizer_ids_cut_the_text_in_proportion() {
        let mut c = OutputCap::new(2, Arc::new(ByteBound::default()));
        let d = Delta {
            token_ids: vec![7, 8, 9, 10],
            ..Delta::text("abcdefgh", 4)
        };
        let Admit::Cut(Some(d)) = c.admit(d) else {
            panic!("cut")
        };
        assert_eq!((d.text.as_str(), d.tokens), ("abcd", 2));
        assert_eq!(d.token_ids, vec![7, 8]);
    }

    #[test]
    fn the_prefix_search_respects_characters() {
        let measure = |s: &str| s.chars().count() as u64;
        assert_eq!(longest_prefix("héllo", 2, &measure), "hé".len());
        assert_eq!(longest_prefix("héllo", 0, &measure), 0);
        assert_eq!(longest_prefix("héllo", 9, &measure), "héllo".len());
        assert_eq!(longest_prefix("", 3, &measure), 0);
        assert_eq!(proportional("ab", 4, 8), 1);
        assert_eq!(proportional("abc", 4, 8), 2);
    }
}
