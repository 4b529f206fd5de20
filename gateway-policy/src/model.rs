//! [`ModelSpec`]: a public model's price, window and token counter.

use std::fmt;
use std::sync::Arc;

use gateway_core::{Pricing, TokenCounter};

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
}

impl fmt::Debug for ModelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelSpec")
            .field("name", &self.name)
            .field("pricing", &self.pricing)
            .field("context_window", &self.context_window)
            .field("default_max_tokens", &self.default_max_tokens)
            .finish_non_exhaustive()
    }
}
