//! Gateway policies written against the `gateway-core` contract.
//!
//! This crate grows into the whole request pipeline (authentication,
//! estimation, ledgers, limits, fairness, routing, health). It starts with
//! token estimation:
//!
//! - [`HfTokenCounter`] (feature `tokenizers`): exact prompt-token counts
//!   from a Hugging Face `tokenizer.json`, the way the engine counts them;
//! - [`gateway_core::ByteBound`] remains the fallback upper bound for
//!   models without a tokenizer file.
//!
//! # Examples
//!
//! ```
//! # #[cfg(feature = "tokenizers")] {
//! use gateway_core::{Prompt, TokenCount, TokenCounter};
//! use gateway_policy::HfTokenCounter;
//!
//! let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/tokenizers/tinyllama.json");
//! let counter = HfTokenCounter::from_file(path, true).unwrap();
//! // `<s>`, `▁Hello`, `▁world`
//! assert_eq!(counter.count_prompt(&Prompt::Text("Hello world".into())), TokenCount::Exact(3));
//! # }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

#[cfg(feature = "tokenizers")]
mod hf_counter;

#[cfg(feature = "tokenizers")]
pub use hf_counter::{HfTokenCounter, TokenizerError};
