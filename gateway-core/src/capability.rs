//! What a backend can serve beyond plain text, and what a request asks
//! for: [`Capability`] and the set [`Capabilities`].
//!
//! Backends of one model are not always interchangeable: one engine was
//! started with a tool-call parser and another without, one takes images,
//! one has a smaller context window. A request that asks for tools must go
//! only where tools are parsed; routing, retries and fallbacks consider
//! only backends whose [`Capabilities`] contain the request's
//! [`GenerateRequest::needs`](crate::GenerateRequest::needs).

use std::fmt;

use crate::EngineKind;

/// One thing a request may ask for beyond plain text generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Capability {
    /// Tool calls parsed out of the output (`tools` with a `tool_choice`
    /// other than `"none"`): the engine runs a tool-call parser.
    Tools,
    /// Reasoning separated from the answer (`reasoning_effort`,
    /// `chat_template_kwargs.enable_thinking`, ...): the engine runs a
    /// reasoning parser.
    Reasoning,
    /// Structured output / guided decoding (`response_format` with a JSON
    /// schema or JSON object, `structured_outputs`, `guided_*`, ...).
    StructuredOutput,
    /// Image content parts in the messages.
    ImageInput,
    /// Token logprobs in the answer (`logprobs`, `top_logprobs`).
    Logprobs,
}

impl Capability {
    /// Every capability, in a fixed order (the order of messages and docs).
    pub const ALL: [Capability; 5] = [
        Capability::Tools,
        Capability::Reasoning,
        Capability::StructuredOutput,
        Capability::ImageInput,
        Capability::Logprobs,
    ];

    /// The name used in config files and error messages.
    pub const fn as_str(self) -> &'static str {
        match self {
            Capability::Tools => "tools",
            Capability::Reasoning => "reasoning",
            Capability::StructuredOutput => "structured_output",
            Capability::ImageInput => "image_input",
            Capability::Logprobs => "logprobs",
        }
    }

    /// The capability named `name` ([`Capability::as_str`]).
    pub fn from_name(name: &str) -> Option<Self> {
        Capability::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// What in an OpenAI request asks for it, for error messages.
    pub const fn asked_by(self) -> &'static str {
        match self {
            Capability::Tools => "`tools`",
            Capability::Reasoning => {
                "`reasoning_effort` or a thinking switch in `chat_template_kwargs`"
            }
            Capability::StructuredOutput => {
                "`response_format`, `structured_outputs` or a `guided_*` field"
            }
            Capability::ImageInput => "an `image_url` content part",
            Capability::Logprobs => "`logprobs`",
        }
    }

    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of [`Capability`]s: what a backend serves, or what a request
/// needs.
///
/// ```
/// use gateway_core::{Capabilities, Capability};
///
/// let backend = Capabilities::NONE.with(Capability::Tools).with(Capability::Logprobs);
/// let needs = Capabilities::from_iter([Capability::Tools]);
/// assert!(backend.contains_all(needs));
/// let needs = needs.with(Capability::ImageInput);
/// assert_eq!(needs.missing_from(backend), Capabilities::NONE.with(Capability::ImageInput));
/// assert_eq!(needs.to_string(), "tools, image_input");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Capabilities(u8);

impl Capabilities {
    /// The empty set: plain text only (what a plain request needs).
    pub const NONE: Capabilities = Capabilities(0);
    /// Every capability.
    pub const ALL: Capabilities = Capabilities(
        Capability::Tools.bit()
            | Capability::Reasoning.bit()
            | Capability::StructuredOutput.bit()
            | Capability::ImageInput.bit()
            | Capability::Logprobs.bit(),
    );

    /// The set with `capability` added.
    #[must_use]
    pub const fn with(self, capability: Capability) -> Self {
        Capabilities(self.0 | capability.bit())
    }

    /// The set without `capability`.
    #[must_use]
    pub const fn without(self, capability: Capability) -> Self {
        Capabilities(self.0 & !capability.bit())
    }

    /// Adds `capability`.
    pub fn insert(&mut self, capability: Capability) {
        *self = self.with(capability);
    }

    /// Whether `capability` is in the set.
    pub const fn contains(self, capability: Capability) -> bool {
        self.0 & capability.bit() != 0
    }

    /// Whether every capability of `other` is in the set.
    pub const fn contains_all(self, other: Capabilities) -> bool {
        other.0 & !self.0 == 0
    }

    /// The capabilities of this set that `other` lacks.
    #[must_use]
    pub const fn missing_from(self, other: Capabilities) -> Capabilities {
        Capabilities(self.0 & !other.0)
    }

    /// The capabilities in both sets.
    #[must_use]
    pub const fn intersection(self, other: Capabilities) -> Capabilities {
        Capabilities(self.0 & other.0)
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The capabilities in the set, in [`Capability::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Capability> {
        Capability::ALL
            .into_iter()
            .filter(move |c| self.contains(*c))
    }
}

impl FromIterator<Capability> for Capabilities {
    fn from_iter<I: IntoIterator<Item = Capability>>(iter: I) -> Self {
        iter.into_iter()
            .fold(Capabilities::NONE, Capabilities::with)
    }
}

impl fmt::Debug for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// The names joined with `, ` (empty for the empty set).
impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(c.as_str())?;
        }
        Ok(())
    }
}

impl EngineKind {
    /// What a backend of this engine serves when its configuration says
    /// nothing: what the engine can do when its server was started for it
    /// (docs/engines.md, "Capabilities", gives the flags). A backend started
    /// without a parser declares less (`[[backends]] capabilities`).
    ///
    /// - `vllm`, `sglang`, `nim` (which bundles vLLM or SGLang), `dynamo`,
    ///   `trtllm`, `openai`: all of them. Tool calls and reasoning need the
    ///   server's tool-call and reasoning parsers, structured output its
    ///   guided-decoding backend, images a multimodal model;
    ///   the gateway's adapters carry each of them (docs/engines.md,
    ///   "Output beyond text").
    /// - `triton`: none. The TensorRT-LLM ensemble's `generate_stream`
    ///   takes text only, runs no tool-call or reasoning parser, and its
    ///   logprob outputs are bare floats without token texts, which the
    ///   adapter neither asks for nor reads.
    /// - `sim` and `custom`: all of them, as every backend was taken to be
    ///   before backends declared capabilities (the in-process simulator
    ///   accepts every field and generates text).
    pub const fn default_capabilities(self) -> Capabilities {
        match self {
            EngineKind::Triton => Capabilities::NONE,
            EngineKind::Sim
            | EngineKind::Vllm
            | EngineKind::Sglang
            | EngineKind::TrtLlm
            | EngineKind::Nim
            | EngineKind::Dynamo
            | EngineKind::OpenAi
            | EngineKind::Custom => Capabilities::ALL,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for c in Capability::ALL {
            assert_eq!(Capability::from_name(c.as_str()), Some(c));
        }
        assert_eq!(Capability::from_name("vision"), None);
        assert_eq!(
            Capabilities::ALL.to_string(),
            "tools, reasoning, structured_output, image_input, logprobs"
        );
        assert_eq!(Capabilities::NONE.to_string(), "");
    }

    #[test]
    fn set_operations() {
        let a = Capabilities::from_iter([Capability::Tools, Capability::Logprobs]);
        assert!(a.contains(Capability::Tools));
        assert!(!a.contains(Capability::Reasoning));
        assert!(Capabilities::ALL.contains_all(a));
        assert!(!a.contains_all(Capabilities::ALL));
        assert!(a.contains_all(Capabilities::NONE));
        assert_eq!(
            Capabilities::ALL.missing_from(a),
            Capabilities::from_iter([
                Capability::Reasoning,
                Capability::StructuredOutput,
                Capability::ImageInput
            ])
        );
        assert_eq!(
            a.without(Capability::Tools),
            Capabilities::NONE.with(Capability::Logprobs)
        );
        assert_eq!(format!("{a:?}"), "{Tools, Logprobs}");
        assert_eq!(Capabilities::ALL.iter().count(), 5);
    }

    #[test]
    fn engine_defaults() {
        assert_eq!(
            EngineKind::Triton.default_capabilities(),
            Capabilities::NONE
        );
        for e in [
            EngineKind::Sim,
            EngineKind::Vllm,
            EngineKind::Sglang,
            EngineKind::TrtLlm,
            EngineKind::Nim,
            EngineKind::Dynamo,
            EngineKind::OpenAi,
            EngineKind::Custom,
        ] {
            assert_eq!(e.default_capabilities(), Capabilities::ALL, "{e}");
        }
    }
}
