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

/// What a counter's cache of tokenized pieces did and holds
/// ([`TokenCounter::cache_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterCacheStats {
    /// Pieces found in the cache.
    pub hits: u64,
    /// Pieces long enough to cache and not found.
    pub misses: u64,
    /// Entries held now.
    pub entries: usize,
    /// Their bytes (text, ids and overhead).
    pub bytes: usize,
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

    /// The ids of a piece of text on its own (no special tokens), when this
    /// counter has the model's tokenizer. A model's generated text does not
    /// always tokenize back to the tokens it generated, so these ids are
    /// not token-exact (used to continue a stream whose engine gave no ids,
    /// when so configured). Default `None`.
    fn encode_text(&self, text: &str) -> Option<Vec<u32>> {
        let _ = text;
        None
    }

    /// The counter's cache of tokenized pieces, if it keeps one (the
    /// gateway exports these as metrics). Default `None`.
    fn cache_stats(&self) -> Option<CounterCacheStats> {
        None
    }

    /// Tokens of a whole request's prompt: [`count_prompt`] when `inputs`
    /// is empty; with the chat request's tool definitions and template
    /// variables ([`ChatInputs`]), what the engine counts once its chat
    /// template has rendered them too.
    ///
    /// The default adds generous allowances for them to [`count_prompt`]
    /// and calls it an upper bound (templates write tool schemas as JSON
    /// with some instructions around them, and may print a template
    /// variable or switch a block on with it); a counter that renders the
    /// model's template overrides it to be exact.
    ///
    /// [`count_prompt`]: TokenCounter::count_prompt
    fn count_request(&self, prompt: &Prompt, inputs: ChatInputs<'_>) -> TokenCount {
        let base = self.count_prompt(prompt);
        if !matches!(prompt, Prompt::Chat(_)) {
            return base;
        }
        let mut total = base.value();
        let mut exact = base.is_exact();
        if let Some(tools) = inputs.tools {
            total = total.saturating_add(tools_allowance(self.count_text(tools).value()));
            exact = false;
        }
        if let Some(extra) = inputs.template_kwargs_text() {
            total = total.saturating_add(tools_allowance(self.count_text(extra).value()));
            exact = false;
        }
        if exact {
            TokenCount::Exact(total)
        } else {
            TokenCount::UpperBound(total)
        }
    }

    /// The ids of a whole request's prompt, as [`encode_prompt`] and with
    /// `inputs` as [`count_request`]; `None` when not known exactly (the
    /// default with tools or template variables).
    ///
    /// [`encode_prompt`]: TokenCounter::encode_prompt
    /// [`count_request`]: TokenCounter::count_request
    fn encode_request(&self, prompt: &Prompt, inputs: ChatInputs<'_>) -> Option<Vec<u32>> {
        match prompt {
            Prompt::Chat(_) if !inputs.is_empty() => None,
            _ => self.encode_prompt(prompt),
        }
    }
}

/// What a chat request hands its model's chat template besides the
/// messages: the engine renders these into the prompt too.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChatInputs<'a> {
    /// The request's `tools`: the JSON array as the client sent it.
    pub tools: Option<&'a str>,
    /// The request's pass-through fields, the text of a JSON object
    /// ([`GenerateRequest::extra`](crate::GenerateRequest::extra)). Only
    /// its `chat_template_kwargs` matter here: vLLM, SGLang and
    /// trtllm-serve add that object's keys to the template's variables.
    pub extra: Option<&'a str>,
    /// Cached tokenizations are reused only within one scope (the
    /// pipeline sets the tenant's id): a counter that caches the
    /// tokenization of text it has seen keeps each scope's entries apart,
    /// so one scope's text is never served to, nor timed by, another.
    /// `None`: nothing is cached. It never changes the rendered prompt.
    pub scope: Option<&'a str>,
}

/// The top-level key whose value the engines add to the chat template's
/// variables.
pub const CHAT_TEMPLATE_KWARGS: &str = "chat_template_kwargs";

impl<'a> ChatInputs<'a> {
    /// Inputs with `tools` only.
    pub const fn tools(tools: Option<&'a str>) -> Self {
        ChatInputs {
            tools,
            extra: None,
            scope: None,
        }
    }

    /// These inputs with `scope` (see [`ChatInputs::scope`]).
    #[must_use]
    pub const fn with_scope(self, scope: Option<&'a str>) -> Self {
        ChatInputs { scope, ..self }
    }

    /// `extra` when it may hold [`CHAT_TEMPLATE_KWARGS`], else `None`: a
    /// substring check, no parse. A key can only spell the name otherwise
    /// with `\u` escapes, so text holding `\u` may hold it too.
    pub fn template_kwargs_text(&self) -> Option<&'a str> {
        self.extra
            .filter(|e| e.contains(CHAT_TEMPLATE_KWARGS) || e.contains("\\u"))
    }

    /// Whether nothing here can change the rendered prompt.
    pub fn is_empty(&self) -> bool {
        self.tools.is_none() && self.template_kwargs_text().is_none()
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

    /// The default bounds tools and template variables with an allowance
    /// each; extras without `chat_template_kwargs` change nothing.
    #[test]
    fn the_default_bounds_tools_and_template_variables() {
        let b = ByteBound::default();
        let chat = Prompt::Chat(vec![ChatMessage::user("hi")]);
        let base = 2 + 2 + 32;
        let extra = r#"{"chat_template_kwargs":{"enable_thinking":false}}"#;
        let inputs = ChatInputs {
            tools: None,
            extra: Some(extra),
            scope: None,
        };
        assert_eq!(inputs.template_kwargs_text(), Some(extra));
        assert_eq!(
            b.count_request(&chat, inputs),
            TokenCount::UpperBound(base + (extra.len() as u64 + 1) * 2 + 256)
        );
        let both = ChatInputs {
            tools: Some("[]"),
            ..inputs
        };
        assert_eq!(
            b.count_request(&chat, both),
            TokenCount::UpperBound(base + 3 * 2 + 256 + (extra.len() as u64 + 1) * 2 + 256)
        );
        let plain = ChatInputs {
            tools: None,
            extra: Some(r#"{"top_k":20}"#),
            scope: Some("tenant"),
        };
        assert!(plain.is_empty());
        assert_eq!(b.count_request(&chat, plain), TokenCount::UpperBound(base));
        // An escaped key may spell the name: not skipped.
        let escaped = ChatInputs {
            tools: None,
            extra: Some(r#"{"chat\u005ftemplate_kwargs":{}}"#),
            scope: None,
        };
        assert!(!escaped.is_empty());
        // Text prompts have no template.
        let text = Prompt::Text("abc".into());
        assert_eq!(b.count_request(&text, inputs), TokenCount::UpperBound(5));
        let tokens = Prompt::Tokens(vec![1, 2]);
        assert_eq!(b.count_request(&tokens, inputs), TokenCount::Exact(2));
    }
}
