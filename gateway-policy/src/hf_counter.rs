//! [`HfTokenCounter`]: exact token counts from a Hugging Face tokenizer.

use std::path::Path;

use std::sync::Arc;

use gateway_core::{
    ByteBound, ChatInputs, ChatMessage, Prompt, TokenCount, TokenCounter, tools_allowance,
};
use tokenizers::Tokenizer;

use crate::ChatTemplate;

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
#[derive(Debug, Clone)]
pub struct HfTokenCounter {
    tokenizer: Tokenizer,
    add_special_tokens: bool,
    markup: ByteBound,
    template: Option<Arc<ChatTemplate>>,
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
        Ok(HfTokenCounter {
            tokenizer,
            add_special_tokens,
            markup: ByteBound::default(),
            template: None,
        })
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
        self.encode_ids(&text, false)
    }

    fn chat(&self, messages: &[ChatMessage], inputs: ChatInputs<'_>) -> TokenCount {
        let rendered = self
            .template
            .as_ref()
            .and_then(|t| t.render_request(messages, inputs, true).ok())
            .and_then(|text| self.encode_len(&text, false));
        if let Some(n) = rendered {
            return TokenCount::Exact(n);
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
        match self.encode_len(text, false) {
            Some(n) => TokenCount::Exact(n),
            None => self.markup.count_text(text),
        }
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
