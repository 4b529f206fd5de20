//! Counting prompt tokens: [`TokenCounter`], exactly with a tokenizer or as
//! an upper bound ([`ByteBound`]).

use std::fmt::Debug;

use crate::{ChatMessage, Prompt};

/// A token count and whether it is exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCount {
    /// What the engine will count.
    Exact(u64),
    /// Never below what the engine will count.
    UpperBound(u64),
}

impl TokenCount {
    /// The number, exact or bound.
    pub const fn value(self) -> u64 {
        match self {
            TokenCount::Exact(n) | TokenCount::UpperBound(n) => n,
        }
    }

    /// Whether it is exact.
    pub const fn is_exact(self) -> bool {
        matches!(self, TokenCount::Exact(_))
    }
}

/// Counts the tokens of a prompt the way a model's engine will, or bounds
/// them from above. Used to price a request before it runs; an engine may
/// use it as its tokenizer (the `sim` engine does).
pub trait TokenCounter: Send + Sync + Debug + 'static {
    /// Tokens of a whole prompt as the engine will see it (chat template,
    /// BOS and other special tokens included).
    fn count_prompt(&self, prompt: &Prompt) -> TokenCount;

    /// Tokens of a piece of text on its own (no special tokens).
    fn count_text(&self, text: &str) -> TokenCount;

    /// The prompt's token ids as the engine will see them, when this
    /// counter knows them exactly: then their number is what
    /// [`count_prompt`](TokenCounter::count_prompt) returns, as
    /// [`TokenCount::Exact`]. Used for prefix-cache affinity on token
    /// blocks. Default `None` (bounds and counts only).
    fn encode_prompt(&self, prompt: &Prompt) -> Option<Vec<u32>> {
        let _ = prompt;
        None
    }

    /// Tokens of a whole request's prompt: [`count_prompt`] when `tools` is
    /// `None`; with the chat request's tool definitions (`tools`, the JSON
    /// array as the client sent it), what the engine counts once its chat
    /// template has rendered them too.
    ///
    /// The default adds a generous allowance for the tools' text to
    /// [`count_prompt`] and calls it an upper bound (templates write tool
    /// schemas as JSON with some instructions around them); a counter that
    /// renders the model's template overrides it to be exact.
    ///
    /// [`count_prompt`]: TokenCounter::count_prompt
    fn count_request(&self, prompt: &Prompt, tools: Option<&str>) -> TokenCount {
        let base = self.count_prompt(prompt);
        match (tools, prompt) {
            (Some(tools), Prompt::Chat(_)) => TokenCount::UpperBound(
                base.value()
                    .saturating_add(tools_allowance(self.count_text(tools).value())),
            ),
            _ => base,
        }
    }

    /// The ids of a whole request's prompt, as [`encode_prompt`] and with
    /// `tools` as [`count_request`]; `None` when not known exactly (the
    /// default with tools).
    ///
    /// [`encode_prompt`]: TokenCounter::encode_prompt
    /// [`count_request`]: TokenCounter::count_request
    fn encode_request(&self, prompt: &Prompt, tools: Option<&str>) -> Option<Vec<u32>> {
        match (tools, prompt) {
            (Some(_), Prompt::Chat(_)) => None,
            _ => self.encode_prompt(prompt),
        }
    }
}

/// The bound on what tool definitions of `tokens` tokens (as plain text)
/// add to a chat prompt: the templates re-serialize the JSON with spaces
/// after separators and wrap it in instructions.
pub fn tools_allowance(tokens: u64) -> u64 {
    tokens.saturating_mul(2).saturating_add(256)
}

/// A safe upper bound from bytes, for models without a tokenizer file.
///
/// Byte-level BPE and SentencePiece with byte fallback never produce more
/// tokens than the text has bytes, plus a dummy-prefix token; on top come
/// special tokens (`fixed`, e.g. BOS) and, for chat, the template's markup
/// around each message (`per_message`, in tokens, which the template's
/// markup must not exceed for the bound to hold).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteBound {
    /// Tokens added once per prompt (BOS, dummy prefix, generation prompt).
    pub fixed: u64,
    /// Tokens the chat template adds around each message.
    pub per_message: u64,
}

impl Default for ByteBound {
    fn default() -> Self {
        ByteBound {
            fixed: 2,
            per_message: 32,
        }
    }
}

impl ByteBound {
    fn messages(&self, messages: &[ChatMessage]) -> u64 {
        messages.iter().fold(self.fixed, |acc, m| {
            acc.saturating_add(m.text_bytes() as u64)
                .saturating_add(self.per_message)
        })
    }
}

impl TokenCounter for ByteBound {
    fn count_prompt(&self, prompt: &Prompt) -> TokenCount {
        match prompt {
            Prompt::Chat(messages) => TokenCount::UpperBound(self.messages(messages)),
            Prompt::Text(text) => {
                TokenCount::UpperBound((text.len() as u64).saturating_add(self.fixed))
            }
            Prompt::Tokens(ids) => TokenCount::Exact(ids.len() as u64),
        }
    }

    fn count_text(&self, text: &str) -> TokenCount {
        // One possible dummy-prefix token on top of one per byte.
        TokenCount::UpperBound((text.len() as u64).saturating_add(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_bound_counts() {
        let b = ByteBound::default();
        assert_eq!(
            b.count_prompt(&Prompt::Text("héllo".into())),
            TokenCount::UpperBound(8)
        );
        assert_eq!(
            b.count_prompt(&Prompt::Tokens(vec![7; 5])),
            TokenCount::Exact(5)
        );
        let chat = Prompt::Chat(vec![ChatMessage::system("ab"), ChatMessage::user("cde")]);
        assert_eq!(
            b.count_prompt(&chat),
            TokenCount::UpperBound(2 + 2 + 3 + 2 * 32)
        );
        assert_eq!(b.count_text("日"), TokenCount::UpperBound(4));
        assert!(!b.count_text("x").is_exact());
        assert_eq!(TokenCount::Exact(3).value(), 3);
    }
}
