//! The gateway's own completion cap: `max_tokens` enforced on what is
//! delivered, whatever the engine does with it.
//!
//! Every delta is counted by the gateway before it is relayed:
//! - by its `token_ids` when the engine gives them, else by its logprob
//!   entries (one per token);
//! - else, when the model's counter counts text exactly (a tokenizer is
//!   configured), by the tokens of its output text (text, reasoning,
//!   refusal, tool names and arguments), each field counted on its own;
//! - never below the engine's own count, nor below one for a piece with
//!   output.
//!
//! That count is what the client is metered and charged for. A delta that
//! would pass the cap is cut to the tokens left: its ids and logprobs to
//! that many entries, its text to the longest prefix that counts at most
//! that many tokens (found by binary search over character boundaries with
//! the tokenizer; without one, in proportion to the piece's characters).
//! The stream then ends with `Finished(Length)` and the engine is aborted.

use std::sync::Arc;

use gateway_core::{Delta, TokenCounter};

/// What to do with one delta.
#[derive(Debug, PartialEq)]
pub(super) enum Admit {
    /// Within the cap: relay it (its `tokens` are the gateway's count).
    Pass(Delta),
    /// The cap is reached: relay the piece that fits, if any, then end the
    /// stream with `Length`.
    Cut(Option<Delta>),
}

/// Counts the deltas of one stream against its cap.
#[derive(Debug)]
pub(super) struct OutputCap {
    cap: u64,
    counted: u64,
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
            counted: 0,
            lead: lead.is_exact().then(|| lead.value()),
            counter,
        }
    }

    /// Tokens counted so far (within the cap).
    #[cfg(test)]
    pub(super) fn counted(&self) -> u64 {
        self.counted
    }

    /// Counts `delta`; cuts it when it would pass the cap.
    pub(super) fn admit(&mut self, mut delta: Delta) -> Admit {
        let tokens = self.count(&delta);
        let room = self.cap.saturating_sub(self.counted);
        if tokens <= room {
            self.counted += tokens;
            delta.tokens = u32::try_from(tokens).unwrap_or(u32::MAX);
            return Admit::Pass(delta);
        }
        if room == 0 {
            return Admit::Cut(None);
        }
        let kept = self.cut(&mut delta, tokens, room);
        self.counted += kept;
        Admit::Cut((kept > 0 || delta.has_output()).then_some(delta))
    }

    /// The gateway's count of one delta.
    fn count(&self, delta: &Delta) -> u64 {
        if !delta.token_ids.is_empty() {
            return delta.token_ids.len() as u64;
        }
        if !delta.logprobs.is_empty() {
            return delta.logprobs.len() as u64;
        }
        let by_text = self.exact_text_tokens(delta).unwrap_or(0);
        by_text
            .max(u64::from(delta.tokens))
            .max(u64::from(delta.has_output()))
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
    fn text_without_ids_counts_by_the_tokenizer_and_never_below_one() {
        let mut c = words(100);
        // `token_ids: []` with five words of text: five tokens.
        let Admit::Pass(d) = c.admit(Delta::text("one two three four five", 1)) else {
            panic!("passes")
        };
        assert_eq!(d.tokens, 5);
        // Whitespace only: the tokenizer says 0, the piece still counts 1.
        let Admit::Pass(d) = c.admit(Delta::text("  ", 0)) else {
            panic!("passes")
        };
        assert_eq!(d.tokens, 1);
        // The engine's own count wins when higher.
        let Admit::Pass(d) = c.admit(Delta::text("x", 4)) else {
            panic!("passes")
        };
        assert_eq!(d.tokens, 4);
        assert_eq!(c.counted(), 10);
        // A bound (no tokenizer) is not used: one per piece.
        let mut b = OutputCap::new(100, Arc::new(ByteBound::default()));
        let Admit::Pass(d) = b.admit(Delta::text("one two three", 1)) else {
            panic!("passes")
        };
        assert_eq!(d.tokens, 1);
    }

    #[test]
    fn a_piece_past_the_cap_is_cut_at_a_token_boundary() {
        let mut c = words(4);
        assert!(matches!(c.admit(Delta::text("a b", 1)), Admit::Pass(_)));
        // The longest prefix of two words (the word counter counts the
        // space after them as nothing).
        let cut = c.admit(Delta::text("c d e f", 1));
        assert_eq!(cut, Admit::Cut(Some(Delta::text("c d ", 2))));
        assert_eq!(c.counted(), 4);
        // At the cap, anything more is dropped.
        assert_eq!(c.admit(Delta::text("g", 1)), Admit::Cut(None));
        assert_eq!(c.admit(Delta::text("", 1)), Admit::Cut(None));
    }

    #[test]
    fn the_cut_goes_through_reasoning_then_text_then_tool_arguments() {
        let mut c = words(3);
        let d = Delta {
            reasoning: "r1 r2".into(),
            text: "t1 t2".into(),
            tool_calls: vec![ToolCallDelta {
                arguments: "{\"a\": 1}".into(),
                ..ToolCallDelta::default()
            }],
            ..Delta::default()
        };
        let Admit::Cut(Some(d)) = c.admit(d) else {
            panic!("cut")
        };
        assert_eq!((d.reasoning.as_str(), d.text.as_str()), ("r1 r2", "t1 "));
        assert!(d.tool_calls.is_empty());
        assert_eq!(d.tokens, 3);
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
    fn a_cut_inside_a_character_keeps_less_than_the_room_and_counts_that() {
        let mut c = OutputCap::new(4, Arc::new(Bytes));
        assert!(matches!(c.admit(Delta::text("ab", 1)), Admit::Pass(_)));
        // Room 2; `x` fits, `é` (2 bytes) would pass it.
        let Admit::Cut(Some(d)) = c.admit(Delta::text("xé", 1)) else {
            panic!("cut")
        };
        assert_eq!((d.text.as_str(), d.tokens), ("x", 1));
        assert_eq!(c.counted(), 3);
        // Room 1: nothing of `é` fits, nothing goes out.
        assert_eq!(c.admit(Delta::text("é", 1)), Admit::Cut(None));
        assert_eq!(c.counted(), 3);
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
