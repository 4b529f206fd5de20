//! [`ModelSpec`]: a public model's price, window and token counter.

use std::fmt;
use std::sync::Arc;

use gateway_core::{ByteBound, MediaKind, Pricing, TokenCounter};

/// What the gateway knows of one public model.
#[derive(Clone)]
pub struct ModelSpec {
    /// The name clients send (a label value: from configuration only).
    pub name: String,
    /// Prices per token.
    pub pricing: Pricing,
    /// Most prompt plus completion tokens.
    pub context_window: u32,
    /// `max_tokens` when the request sets none.
    pub default_max_tokens: u32,
    /// Counts prompt tokens: exact with a tokenizer, else a bound.
    pub counter: Arc<dyn TokenCounter>,
    /// What media parts cost the prompt, for the reservation.
    pub media: MediaCosts,
}

/// The prompt tokens one media part (an image, an audio clip, a video)
/// costs a model, reserved per part before the request runs; the charge is
/// the engine's count. `None`: the model takes no such input, and a request
/// that sends it is refused (400) before it reaches an engine, so media
/// cannot slip past the budget unpriced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MediaCosts {
    /// Tokens per image (`image_url` part).
    pub image: Option<u32>,
    /// Tokens per audio clip (`input_audio` / `audio_url` part).
    pub audio: Option<u32>,
    /// Tokens per video (`video_url` part).
    pub video: Option<u32>,
}

impl MediaCosts {
    /// The cost of one part of `kind`, `None` when the model takes none.
    pub const fn per_part(&self, kind: MediaKind) -> Option<u32> {
        match kind {
            MediaKind::Image => self.image,
            MediaKind::Audio => self.audio,
            MediaKind::Video => self.video,
        }
    }
}

impl ModelSpec {
    /// `default_max_tokens` of [`ModelSpec::new`] (lowered to the context
    /// window), as the config file's `models[].default_max_tokens`.
    pub const DEFAULT_MAX_TOKENS: u32 = 256;

    /// A model named `name` with a context window of `context_window`
    /// tokens, and the config file's defaults for the rest: free (zero
    /// prices), `default_max_tokens` [`ModelSpec::DEFAULT_MAX_TOKENS`]
    /// (at most the window), prompts counted with [`ByteBound`] (an upper
    /// bound, no tokenizer), no media input. The `with_` methods set the
    /// rest.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use gateway_core::{ByteBound, Pricing};
    /// use gateway_policy::{MediaCosts, ModelSpec};
    ///
    /// let model = ModelSpec::new("llama-3-8b", 8192)
    ///     .with_pricing(Pricing::per_million(0.50, Some(0.05), 1.50).unwrap())
    ///     .with_default_max_tokens(512)
    ///     .with_counter(Arc::new(ByteBound::default()))
    ///     .with_media(MediaCosts { image: Some(576), ..MediaCosts::default() });
    /// assert_eq!((model.name.as_str(), model.context_window), ("llama-3-8b", 8192));
    /// assert_eq!(model.default_max_tokens, 512);
    /// assert_eq!(model.media.image, Some(576));
    ///
    /// let small = ModelSpec::new("tiny", 128);
    /// assert_eq!(small.default_max_tokens, 128);
    /// assert_eq!(small.pricing, Pricing::default());
    /// ```
    pub fn new(name: impl Into<String>, context_window: u32) -> Self {
        ModelSpec {
            name: name.into(),
            pricing: Pricing::default(),
            context_window,
            default_max_tokens: ModelSpec::DEFAULT_MAX_TOKENS.min(context_window).max(1),
            counter: Arc::new(ByteBound::default()),
            media: MediaCosts::default(),
        }
    }

    /// Sets the prices per token ([`Pricing::per_million`] takes them as
    /// price lists give them).
    #[must_use]
    pub fn with_pricing(mut self, pricing: Pricing) -> Self {
        self.pricing = pricing;
        self
    }

    /// Sets the `max_tokens` of a request that sets none.
    #[must_use]
    pub fn with_default_max_tokens(mut self, default_max_tokens: u32) -> Self {
        self.default_max_tokens = default_max_tokens;
        self
    }

    /// Sets the prompt-token counter (exact with a tokenizer, e.g.
    /// `HfTokenCounter` with feature `tokenizers`).
    #[must_use]
    pub fn with_counter(mut self, counter: Arc<dyn TokenCounter>) -> Self {
        self.counter = counter;
        self
    }

    /// Sets what media parts cost the prompt (and so which the model takes).
    #[must_use]
    pub fn with_media(mut self, media: MediaCosts) -> Self {
        self.media = media;
        self
    }
}

impl fmt::Debug for ModelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelSpec")
            .field("name", &self.name)
            .field("pricing", &self.pricing)
            .field("context_window", &self.context_window)
            .field("default_max_tokens", &self.default_max_tokens)
            .field("media", &self.media)
            .finish_non_exhaustive()
    }
}
