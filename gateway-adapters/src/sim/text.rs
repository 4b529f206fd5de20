//! Deterministic text: a small vocabulary of word pieces, some of them
//! multi-byte UTF-8, drawn from a seeded [`SplitMix64`].

use gateway_core::rng::{Rng, SplitMix64};
use gateway_core::{Prompt, Role};

/// The simulated model's vocabulary: token id `i` is `VOCABULARY[i]`.
///
/// Every piece is whole UTF-8 characters, so every
/// [`Delta`](gateway_core::Delta) is too; several pieces are multi-byte
/// (accents, CJK, emoji) so consumers that split text by bytes break.
pub const VOCABULARY: [&str; 32] = [
    " the", " model", " token", " stream", " gateway", " engine", " fast", " and", " of", " to",
    " a", " in", ".", ",", "\n", " é", " café", " naïve", " Grüße", " 日本", "語", " 🦀", " ✓",
    " Ω", " —", " ñ", " über", " 你好", " 🚀", " ok", " is", " data",
];

/// The text of token `id`, if it is in the [`VOCABULARY`].
pub fn token_text(id: u32) -> Option<&'static str> {
    VOCABULARY.get(id as usize).copied()
}

/// 64-bit FNV-1a, stable across builds (unlike `std`'s hasher).
#[derive(Debug, Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    const fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// A stable hash of a prompt, its form and roles included.
pub(crate) fn prompt_hash(prompt: &Prompt) -> u64 {
    let mut h = Fnv::new();
    match prompt {
        Prompt::Text(text) => {
            h.write(b"t");
            h.write(text.as_bytes());
        }
        Prompt::Chat(messages) => {
            h.write(b"c");
            for m in messages {
                let role: &[u8] = match m.role {
                    Role::System => b"s",
                    Role::User => b"u",
                    Role::Assistant => b"a",
                    Role::Tool => b"o",
                };
                h.write(role);
                h.write(&(m.content.len() as u64).to_le_bytes());
                h.write(m.content.as_bytes());
            }
        }
        Prompt::Tokens(ids) => {
            h.write(b"k");
            for id in ids {
                h.write(&id.to_le_bytes());
            }
        }
    }
    h.0
}

/// Mixes two seeds into one (one SplitMix64 output of their combination).
pub(crate) fn mix(a: u64, b: u64) -> u64 {
    SplitMix64::new(a ^ b.rotate_left(32) ^ 0x5851_F42D_4C95_7F2D).next_u64()
}

/// The random sources of one request, all derived from its seed.
#[derive(Debug, Clone)]
pub(crate) struct RequestRng {
    /// Draws the text.
    pub(crate) text: SplitMix64,
    /// Draws speculative acceptances.
    pub(crate) accept: SplitMix64,
    /// Draws the natural length.
    pub(crate) length: SplitMix64,
}

impl RequestRng {
    /// The sources for config seed `config`, request seed `request` (if the
    /// client sent one) and prompt hash `prompt`.
    pub(crate) fn new(config: u64, request: Option<u64>, prompt: u64) -> Self {
        let mut seed = mix(config, prompt);
        if let Some(request) = request {
            seed = mix(seed, request);
        }
        RequestRng {
            text: SplitMix64::new(mix(seed, 1)),
            accept: SplitMix64::new(mix(seed, 2)),
            length: SplitMix64::new(mix(seed, 3)),
        }
    }

    /// Draws the natural length in `[min, max]`.
    pub(crate) fn natural_length(&mut self, min: u32, max: u32) -> u32 {
        let span = u64::from(max.saturating_sub(min)) + 1;
        // below(span) < span <= u32::MAX + 1, so the sum fits in u32.
        min.saturating_add(self.length.below(span) as u32)
    }

    /// Appends `n` tokens to `text` and `ids`.
    pub(crate) fn tokens(&mut self, n: u32, text: &mut String, ids: &mut Vec<u32>) {
        for _ in 0..n {
            let id = self.text.below(VOCABULARY.len() as u64) as u32;
            text.push_str(VOCABULARY[id as usize % VOCABULARY.len()]);
            ids.push(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_core::ChatMessage;

    #[test]
    fn vocabulary_has_multibyte_pieces() {
        assert!(VOCABULARY.iter().any(|p| p.len() > p.chars().count()));
        assert!(VOCABULARY.iter().all(|p| !p.is_empty()));
        assert_eq!(token_text(21), Some(" 🦀"));
        assert_eq!(token_text(99), None);
    }

    #[test]
    fn same_seed_same_text() {
        let draw = |config, request, prompt| {
            let mut rng = RequestRng::new(config, request, prompt);
            let (mut text, mut ids) = (String::new(), Vec::new());
            rng.tokens(20, &mut text, &mut ids);
            (text, ids)
        };
        assert_eq!(draw(1, None, 7), draw(1, None, 7));
        assert_ne!(draw(1, None, 7), draw(2, None, 7));
        assert_ne!(draw(1, None, 7), draw(1, Some(0), 7));
        assert_ne!(draw(1, None, 7), draw(1, None, 8));
        let (text, ids) = draw(3, Some(4), 5);
        let rebuilt: String = ids.iter().filter_map(|id| token_text(*id)).collect();
        assert_eq!(text, rebuilt);
    }

    #[test]
    fn prompt_hash_tells_forms_and_roles_apart() {
        let text = prompt_hash(&Prompt::Text("hi".into()));
        let user = prompt_hash(&Prompt::Chat(vec![ChatMessage::user("hi")]));
        let system = prompt_hash(&Prompt::Chat(vec![ChatMessage::system("hi")]));
        assert_ne!(text, user);
        assert_ne!(user, system);
        assert_eq!(text, prompt_hash(&Prompt::Text("hi".into())));
    }

    #[test]
    fn natural_length_stays_in_range() {
        let mut rng = RequestRng::new(0, None, 0);
        for _ in 0..1000 {
            let n = rng.natural_length(3, 9);
            assert!((3..=9).contains(&n));
        }
        assert_eq!(rng.natural_length(5, 5), 5);
        // The widest range does not overflow.
        let _ = rng.natural_length(0, u32::MAX);
    }
}
