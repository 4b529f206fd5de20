//! [`HfTokenCounter`]: exact token counts from a Hugging Face tokenizer.

use std::path::Path;

use std::sync::Arc;

use gateway_core::{
    ByteBound, ChatInputs, ChatMessage, Prompt, TokenCount, TokenCounter, tools_allowance,
};
use tokenizers::Tokenizer;

use crate::ChatTemplate;
use crate::DEFAULT_TOKENIZER_CACHE_BYTES;
use crate::segment_cache::{SegmentEncoder, TokenizerCacheStats};

/// A tokenizer file that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("cannot load tokenizer {path}: {reason}")]
pub struct TokenizerError {
    /// The file.
    pub path: String,
    /// Why.
    pub reason: String,
}

/// Counts tokens exactly with the model's own `tokenizer.json`.
///
/// Text prompts count as the engine counts them: the tokenizer's
/// post-processor adds BOS when `add_special_tokens` is set (as vLLM does
/// for completions). Chat prompts with the model's [`ChatTemplate`] are
/// exact too: the template is rendered with the generation prompt (and
/// the request's tools and `chat_template_kwargs`,
/// [`count_request`](TokenCounter::count_request))
/// and the text encoded without adding special tokens (the template
/// writes its own), as vLLM does. Without a template this counter returns an
/// [`TokenCount::UpperBound`]: exact content tokens plus [`ByteBound`]'s
/// allowance for the template's markup.
///
/// Rendered chat prompts are encoded piece by piece, split on the
/// tokenizer's added tokens (the template's `</s>`, `<|eot_id|>`…), each
/// piece by the tokenizer's normalizer, pre-tokenizer and model without
/// the rest of `encode_fast`, and the pieces' ids kept in a bounded
/// cache, per [`ChatInputs::scope`] (the tenant): a shared system prompt
/// is tokenized once, not with every request, and the template's short
/// fixed pieces once they recur. The ids are the same as the
/// whole text's, exactly; a tokenizer for which that is not certain is
/// never encoded so (see [`with_tokenizer_cache_bytes`](Self::with_tokenizer_cache_bytes)).
/// Clones share the cache.
#[derive(Debug, Clone)]
pub struct HfTokenCounter {
    tokenizer: Tokenizer,
    add_special_tokens: bool,
    markup: ByteBound,
    template: Option<Arc<ChatTemplate>>,
    segments: Option<Arc<SegmentEncoder>>,
    /// Counts of short texts (streamed output pieces, which the output cap
    /// counts one by one and which repeat), shared by clones.
    short: Arc<ShortCounts>,
}

/// The counts of texts of at most [`ShortCounts::MAX_BYTES`] bytes, at most
/// [`ShortCounts::MAX_ENTRIES`] of them (emptied when full): a lookup costs
/// a hash of a few bytes where an encode costs microseconds.
#[derive(Debug, Default)]
struct ShortCounts {
    counts: std::sync::Mutex<std::collections::HashMap<Box<str>, u64>>,
}

impl ShortCounts {
    const MAX_BYTES: usize = 48;
    const MAX_ENTRIES: usize = 1 << 16;

    fn get(&self, text: &str) -> Option<u64> {
        let counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        counts.get(text).copied()
    }

    fn put(&self, text: &str, n: u64) {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if counts.len() >= Self::MAX_ENTRIES {
            counts.clear();
        }
        counts.insert(text.into(), n);
    }
}

impl HfTokenCounter {
    /// Loads `tokenizer.json` from `path`. `add_special_tokens` as the
    /// model's `tokenizer_config.json` says (`add_bos_token`).
    ///
    /// # Errors
    /// [`TokenizerError`] if the file is missing or not a tokenizer.
    pub fn from_file(
        path: impl AsRef<Path>,
        add_special_tokens: bool,
    ) -> Result<Self, TokenizerError> {
        let path = path.as_ref();
        let tokenizer = Tokenizer::from_file(path).map_err(|e| TokenizerError {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let segments = SegmentEncoder::new(&tokenizer, DEFAULT_TOKENIZER_CACHE_BYTES).map(Arc::new);
        Ok(HfTokenCounter {
            tokenizer,
            add_special_tokens,
            markup: ByteBound::default(),
            template: None,
            segments,
            short: Arc::default(),
        })
    }

    /// Bounds the tokenizer's segment cache to `bytes` (text, ids and a
    /// fixed overhead per entry; default
    /// [`DEFAULT_TOKENIZER_CACHE_BYTES`](crate::DEFAULT_TOKENIZER_CACHE_BYTES));
    /// 0 turns it off: every prompt is encoded whole. Pieces of at least
    /// 256 bytes are kept at their first sighting, in fifteen sixteenths
    /// of the bound and none larger than an eighth of that; shorter ones
    /// at their second, in the rest.
    ///
    /// The cache is used only when piecewise encoding is the whole text's
    /// for this tokenizer: every added token matched as written (not
    /// `normalized`, no `lstrip`, `rstrip` or `single_word`), no truncation
    /// or padding configured, and sample texts agreeing. See
    /// [`tokenizer_cache_stats`](Self::tokenizer_cache_stats).
    #[must_use]
    pub fn with_tokenizer_cache_bytes(mut self, bytes: usize) -> Self {
        self.segments = SegmentEncoder::new(&self.tokenizer, bytes).map(Arc::new);
        self
    }

    /// The segment cache's hits, misses and size; `None` when there is no
    /// cache (turned off, or not exact for this tokenizer).
    pub fn tokenizer_cache_stats(&self) -> Option<TokenizerCacheStats> {
        self.segments.as_ref().map(|s| s.stats())
    }

    /// Counts chat prompts exactly by rendering them with `template`.
    #[must_use]
    pub fn with_chat_template(mut self, template: ChatTemplate) -> Self {
        self.template = Some(Arc::new(template));
        self
    }

    /// The number of tokens of `text`, with special tokens if `special`.
    fn encode_len(&self, text: &str, special: bool) -> Option<u64> {
        self.tokenizer
            .encode_fast(text, special)
            .ok()
            .map(|e| e.len() as u64)
    }

    /// Token ids of `text`, with special tokens if `special`.
    fn encode_ids(&self, text: &str, special: bool) -> Option<Vec<u32>> {
        self.tokenizer
            .encode_fast(text, special)
            .ok()
            .map(|e| e.get_ids().to_vec())
    }

    /// The ids of `messages` (with the request's tools and template
    /// variables) rendered by the template; `None` without a template or
    /// when rendering fails.
    fn chat_ids(&self, messages: &[ChatMessage], inputs: ChatInputs<'_>) -> Option<Vec<u32>> {
        let text = self
            .template
            .as_ref()?
            .render_request(messages, inputs, true)
            .ok()?;
        self.rendered_ids(&text, inputs.scope)
    }

    /// The ids of a rendered chat prompt (no special tokens added: the
    /// template wrote them): piece by piece through the segment cache of
    /// `scope` when there is one (with no scope, nothing is looked up),
    /// else at once.
    fn rendered_ids(&self, text: &str, scope: Option<&str>) -> Option<Vec<u32>> {
        match &self.segments {
            Some(segments) => segments.encode(&self.tokenizer, text, scope),
            None => self.encode_ids(text, false),
        }
    }

    fn chat(&self, messages: &[ChatMessage], inputs: ChatInputs<'_>) -> TokenCount {
        let rendered = self
            .template
            .as_ref()
            .and_then(|t| t.render_request(messages, inputs, true).ok())
            .and_then(|text| self.rendered_ids(&text, inputs.scope));
        if let Some(ids) = rendered {
            return TokenCount::Exact(ids.len() as u64);
        }
        // As the trait's default: the tools' and the template variables'
        // tokens, generously.
        let mut total = self.chat_bound(messages).value();
        for text in [inputs.tools, inputs.template_kwargs_text()]
            .into_iter()
            .flatten()
        {
            total = total.saturating_add(tools_allowance(self.count_text(text).value()));
        }
        TokenCount::UpperBound(total)
    }

    fn chat_bound(&self, messages: &[ChatMessage]) -> TokenCount {
        let fallback = self.markup.count_prompt(&Prompt::Chat(messages.to_vec()));
        let mut total = self.markup.fixed;
        for m in messages {
            let Some(n) = self.encode_len(&m.content, false) else {
                return fallback;
            };
            total = total
                .saturating_add(n)
                .saturating_add(self.markup.per_message);
        }
        TokenCount::UpperBound(total)
    }
}

impl TokenCounter for HfTokenCounter {
    fn count_prompt(&self, prompt: &Prompt) -> TokenCount {
        match prompt {
            Prompt::Text(text) => match self.encode_len(text, self.add_special_tokens) {
                Some(n) => TokenCount::Exact(n),
                None => self.markup.count_prompt(prompt),
            },
            Prompt::Chat(messages) => self.chat(messages, ChatInputs::default()),
            Prompt::Tokens(ids) => TokenCount::Exact(ids.len() as u64),
        }
    }

    fn count_text(&self, text: &str) -> TokenCount {
        let short = text.len() <= ShortCounts::MAX_BYTES;
        if short && let Some(n) = self.short.get(text) {
            return TokenCount::Exact(n);
        }
        match self.encode_len(text, false) {
            Some(n) => {
                if short {
                    self.short.put(text, n);
                }
                TokenCount::Exact(n)
            }
            None => self.markup.count_text(text),
        }
    }

    /// The tokenizer's ids of `text`, without special tokens.
    fn encode_text(&self, text: &str) -> Option<Vec<u32>> {
        self.encode_ids(text, false)
    }

    /// The segment cache's counters: the long pieces' hits, misses and
    /// entries, and the bytes of the long pieces, the short-piece memo
    /// and the word cache.
    fn cache_stats(&self) -> Option<gateway_core::CounterCacheStats> {
        self.tokenizer_cache_stats()
            .map(|s| gateway_core::CounterCacheStats {
                hits: s.hits,
                misses: s.misses,
                entries: s.entries,
                bytes: s.bytes + s.short_bytes + s.word_bytes,
            })
    }

    /// Text prompts, and chat prompts with the model's template; `None` for
    /// chat without a template (only bounded) and for token prompts (the
    /// caller has their ids).
    fn encode_prompt(&self, prompt: &Prompt) -> Option<Vec<u32>> {
        match prompt {
            Prompt::Text(text) => self.encode_ids(text, self.add_special_tokens),
            Prompt::Chat(messages) => self.chat_ids(messages, ChatInputs::default()),
            Prompt::Tokens(_) => None,
        }
    }

    /// Exact for chat with tools and template variables when the template
    /// renders them (as vLLM does); without a template, the trait's bound.
    fn count_request(&self, prompt: &Prompt, inputs: ChatInputs<'_>) -> TokenCount {
        match prompt {
            Prompt::Chat(messages) => self.chat(messages, inputs),
            _ => self.count_prompt(prompt),
        }
    }

    /// As [`encode_prompt`](TokenCounter::encode_prompt), chat rendered
    /// with `inputs`.
    fn encode_request(&self, prompt: &Prompt, inputs: ChatInputs<'_>) -> Option<Vec<u32>> {
        match prompt {
            Prompt::Chat(messages) => self.chat_ids(messages, inputs),
            _ => self.encode_prompt(prompt),
        }
    }
}
