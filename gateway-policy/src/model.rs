//! [`ModelSpec`]: a public model's price, window and token counter.

use std::fmt;
use std::sync::Arc;

use gateway_core::{MediaKind, Pricing, TokenCounter};

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
