//! The BPE model's words: each pre-tokenized split cut where no merge can
//! cross, each part's ids cached.
//!
//! A BPE model turns a split into one symbol per character, then merges
//! adjacent symbols, lowest rank first, until no adjacent pair is in its
//! merge table; every merge's result is a token of its vocabulary (the
//! model refuses to load otherwise). So if no token has a character other
//! than `▁` right before a `▁`, no merge ever joins a symbol ending in
//! such a character to one starting with `▁`: the two sides of each such
//! place are merged apart, in the same order, into the same symbols as
//! in the whole split. SentencePiece-style models (Llama, Mistral,
//! TinyLlama) meet this and have no pre-tokenizer that splits on spaces
//! (Metaspace with `split: false`): a piece of text, however long, is one
//! split, merged whole, with a work list that grows with its length and
//! no cache (the model caches splits under 256 bytes). Cut into words at
//! those places, each word is short and most recur.
//!
//! The cut also needs the model to build a word's first symbols as the
//! split's (no continuing-subword prefix, no end-of-word suffix), not to
//! take a whole split from the vocabulary before merging
//! (`ignore_merges`), no dropout, and `▁` in the vocabulary (an unknown
//! character's `<unk>` is fused with its unknown neighbours; a known `▁`
//! starts every word after a cut, so no fusion crosses one).
//!
//! Such a model's split is, moreover, simple to build: with no normalizer
//! and a Metaspace pre-tokenizer that does not split, it is the piece with
//! each space replaced by `▁`, and `▁` put first where the scheme says.
//! [`Words::metaspace`] builds it as a plain string, without the
//! tokenizer's `NormalizedString`, which keeps each byte's offsets.
//!
//! The words' ids are kept in a cache of their own, shared by every
//! scope: a word's ids are a function of its text and the model alone (the
//! model's own word cache is shared the same way), and a word is not a
//! tenant's prompt. Any other deterministic BPE model gets the cache
//! without the cut: each split is looked up whole.

use tokenizers::models::ModelWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::metaspace::PrependScheme;
use tokenizers::{Model, Tokenizer};
use xxhash_rust::xxh3::xxh3_128;

use super::TokenizerCacheStats;
use super::store::{Cache, Key};

/// The metaspace: SentencePiece's stand-in for a space.
const META: char = '▁';

/// Longer words are encoded each time (the model's own cache stops at
/// the same length).
const MAX_WORD_BYTES: usize = 256;

/// The word cache of a BPE model, and whether its splits may be cut.
pub(super) struct Words {
    cut: bool,
    /// The Metaspace pre-tokenizer's replacement and scheme, when it is
    /// the tokenizer's only step before the model and does not split.
    metaspace: Option<(char, PrependScheme)>,
    cache: Cache,
}

impl Words {
    /// The words of `tokenizer`'s model, their cache bounded to `bound`
    /// bytes; `None` if the model is not a deterministic BPE or `bound` is
    /// 0.
    pub(super) fn new(tokenizer: &Tokenizer, bound: usize) -> Option<Self> {
        let ModelWrapper::BPE(bpe) = tokenizer.get_model() else {
            return None;
        };
        if bound == 0 || bpe.dropout.is_some_and(|p| p > 0.0) {
            return None;
        }
        let cut = bpe.continuing_subword_prefix.is_none()
            && bpe.end_of_word_suffix.is_none()
            && !bpe.ignore_merges
            && bpe.token_to_id("▁").is_some()
            && !bpe.get_vocab().keys().any(|token| cut_inside(token));
        let metaspace = match tokenizer.get_pre_tokenizer() {
            Some(PreTokenizerWrapper::Metaspace(m))
                if !m.get_split() && tokenizer.get_normalizer().is_none() =>
            {
                Some((m.get_replacement(), m.get_prepend_scheme()))
            }
            _ => None,
        };
        Some(Words {
            cut,
            metaspace,
            cache: Cache::new(bound),
        })
    }

    /// Whether splits are cut into words.
    #[cfg(test)]
    pub(super) fn cuts(&self) -> bool {
        self.cut
    }

    /// The one split of `piece` (at the text's start if `first`) when the
    /// tokenizer has only a Metaspace pre-tokenizer that does not split
    /// before its model: the piece's spaces replaced by `▁`, and `▁`
    /// prepended unless there already, always or at the start only, as
    /// the scheme says. `None` for any other tokenizer, or an empty piece.
    pub(super) fn metaspace(&self, piece: &str, first: bool) -> Option<String> {
        let (replacement, scheme) = self.metaspace?;
        if piece.is_empty() {
            return None;
        }
        let prepend = match scheme {
            PrependScheme::Always => true,
            PrependScheme::First => first,
            PrependScheme::Never => false,
        };
        let mut split = String::with_capacity(piece.len() + 2 * replacement.len_utf8());
        // Replaced, the piece starts with the replacement if it starts
        // with a space or with the replacement itself.
        if prepend && !piece.starts_with([' ', replacement]) {
            split.push(replacement);
        }
        for (i, part) in piece.split(' ').enumerate() {
            if i > 0 {
                split.push(replacement);
            }
            split.push_str(part);
        }
        Some(split)
    }

    /// Appends the ids of `split` (one pre-tokenized split, normalized) to
    /// `out`, word by word when the model allows the cut, each from the
    /// cache when there; `None` if the model fails.
    pub(super) fn ids(&self, model: &ModelWrapper, split: &str, out: &mut Vec<u32>) -> Option<()> {
        if !self.cut {
            return self.word(model, split, out);
        }
        let mut start = 0;
        for cut in cuts(split) {
            self.word(model, &split[start..cut], out)?;
            start = cut;
        }
        self.word(model, &split[start..], out)
    }

    fn word(&self, model: &ModelWrapper, word: &str, out: &mut Vec<u32>) -> Option<()> {
        if word.is_empty() {
            return Some(());
        }
        if word.len() >= MAX_WORD_BYTES {
            out.extend(model.tokenize(word).ok()?.iter().map(|t| t.id));
            return Some(());
        }
        let key = Key {
            scope: "",
            first: false,
            text: word,
        };
        let hash = xxh3_128(word.as_bytes());
        if let Some(ids) = self.cache.get(hash, &key) {
            out.extend_from_slice(&ids);
            return Some(());
        }
        let start = out.len();
        out.extend(model.tokenize(word).ok()?.iter().map(|t| t.id));
        self.cache.insert(hash, &key, out[start..].to_vec());
        Some(())
    }

    pub(super) fn stats(&self) -> TokenizerCacheStats {
        self.cache.stats()
    }
}

/// Whether `token` has a `▁` right after another character: a merge
/// could make it across a cut.
fn cut_inside(token: &str) -> bool {
    token
        .match_indices(META)
        .any(|(at, _)| token[..at].chars().next_back().is_some_and(|c| c != META))
}

/// The places where `split` is cut: before each `▁` that follows another
/// character.
fn cuts(split: &str) -> impl Iterator<Item = usize> + '_ {
    split
        .match_indices(META)
        .map(|(at, _)| at)
        .filter(|&at| split[..at].chars().next_back().is_some_and(|c| c != META))
}

#[cfg(test)]
mod tests {
    use super::super::piece_ids;
    use super::super::tests::{tinyllama, whole};
    use super::*;
    use proptest::prelude::*;
    use std::sync::LazyLock;

    /// The ids of `text` (no added token in it) from `words`, where it
    /// starts the text and after `</s>`, against the whole text's.
    fn check(tokenizer: &Tokenizer, words: &Words, text: &str) -> Result<(), TestCaseError> {
        let mut first = Vec::new();
        piece_ids(tokenizer, Some(words), text, true, &mut first).unwrap();
        prop_assert_eq!(&first, &whole(text), "{:?}", text);
        let mut after = vec![2];
        piece_ids(tokenizer, Some(words), text, false, &mut after).unwrap();
        prop_assert_eq!(&after, &whole(&format!("</s>{text}")), "{:?}", text);
        Ok(())
    }

    #[test]
    fn tinyllama_is_cut_and_prose_comes_out_exact_cold_and_warm() {
        let words = Words::new(tinyllama(), 1 << 20).unwrap();
        assert!(words.cuts());
        let prose = "The gateway routes requests to engines under load, while tenants share \
                     budgets.  Two  spaces,\ttabs,\nnew lines, ▁metaspaces▁▁inside, é🙂 漢字 \
                     and a word longer than the cache keeps: "
            .to_owned()
            + &"x".repeat(300);
        check(tinyllama(), &words, &prose).unwrap();
        let cold = words.stats();
        assert!(
            cold.misses > 20 && cold.entries as u64 == cold.misses,
            "{cold:?}"
        );
        check(tinyllama(), &words, &prose).unwrap();
        let warm = words.stats();
        // Every word seen: the second pass (twice, at the start and after
        // `</s>`) finds them all; only the long one is encoded again.
        assert_eq!(warm.misses, cold.misses, "{warm:?}");
        assert!(warm.hits >= cold.hits + cold.misses, "{warm:?}");
    }

    /// A BPE whose vocabulary has `a▁` (a merge across the place a cut
    /// would be): not cut, and cut it would be wrong.
    #[test]
    fn a_model_with_a_merge_across_the_cut_is_not_cut() {
        let json = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
            "normalizer":null,
            "pre_tokenizer":{"type":"Metaspace","replacement":"▁","prepend_scheme":"first","split":false},
            "post_processor":null,"decoder":null,
            "model":{"type":"BPE","dropout":null,"unk_token":null,"continuing_subword_prefix":null,
              "end_of_word_suffix":null,"fuse_unk":false,"byte_fallback":false,"ignore_merges":false,
              "vocab":{"▁":0,"a":1,"b":2,"a▁":3,"a▁b":4,"▁b":5},"merges":["a ▁","a▁ b","▁ b"]}}"#;
        let tokenizer: Tokenizer = json.parse().unwrap();
        let whole = |text: &str| {
            tokenizer
                .encode_fast(text, false)
                .unwrap()
                .get_ids()
                .to_vec()
        };
        assert_eq!(whole("a b"), vec![0, 4]);
        let ids = |words: &Words| {
            let mut out = Vec::new();
            piece_ids(&tokenizer, Some(words), "a b", true, &mut out).unwrap();
            out
        };
        let words = Words::new(&tokenizer, 1 << 20).unwrap();
        assert!(!words.cuts());
        assert_eq!(ids(&words), vec![0, 4]);
        let forced = Words {
            cut: true,
            metaspace: None,
            cache: Cache::new(1 << 20),
        };
        assert_eq!(ids(&forced), vec![0, 1, 5]);
    }

    /// The plain split equals the pre-tokenizer's under each prepend
    /// scheme, at the start and after an added token.
    #[test]
    fn the_metaspace_split_is_the_pre_tokenizers_under_each_scheme() {
        use tokenizers::pre_tokenizers::metaspace::Metaspace;
        for scheme in [
            PrependScheme::First,
            PrependScheme::Always,
            PrependScheme::Never,
        ] {
            let mut tokenizer = tinyllama().clone();
            tokenizer.with_pre_tokenizer(Some(Metaspace::new('▁', scheme, false)));
            let words = Words::new(&tokenizer, 1 << 20).unwrap();
            assert!(words.metaspace.is_some());
            for piece in [
                "Hello world",
                " leading",
                "▁meta",
                "  two",
                "trailing ",
                "▁ mixed▁ ",
                " ",
                "é 🙂\n\t x",
            ] {
                for first in [true, false] {
                    let (mut general, mut plain) = (Vec::new(), Vec::new());
                    piece_ids(&tokenizer, None, piece, first, &mut general).unwrap();
                    piece_ids(&tokenizer, Some(&words), piece, first, &mut plain).unwrap();
                    assert_eq!(plain, general, "{scheme:?} {piece:?} first: {first}");
                }
            }
        }
    }

    fn word() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "the",
            "gateway",
            "a",
            "Hello",
            " ",
            "  ",
            "   ",
            "\n",
            "\t",
            "▁",
            "▁▁",
            "_",
            ",",
            ".",
            "'s",
            "12",
            "2026",
            "é",
            "e\u{301}",
            "🙂",
            "漢字",
            "\u{3000}",
            "\u{10ffff}",
            "\u{200d}",
            "<s",
            "x",
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Texts of words, spaces, metaspaces and characters the model
        /// only has bytes for, cold and warm, or of any characters.
        #[test]
        fn words_give_the_whole_texts_ids(
            parts in prop::collection::vec(word(), 0..60),
            any in any::<String>(),
        ) {
            static WORDS: LazyLock<Words> =
                LazyLock::new(|| Words::new(tinyllama(), 1 << 20).unwrap());
            let text: String = parts.concat();
            for text in [&text, &text, &any] {
                if !text.is_empty() && !text.contains("</s>") && !text.contains("<s>") && !text.contains("<unk>") {
                    check(tinyllama(), &WORDS, text)?;
                }
            }
        }
    }

    #[test]
    fn cuts_before_a_metaspace_after_another_character_only() {
        let at = |s: &str| cuts(s).collect::<Vec<_>>();
        assert_eq!(at("▁Hello▁world"), vec![8]);
        assert_eq!(at("▁▁x▁▁▁y▁"), vec![7, 17]);
        assert_eq!(at("plain"), Vec::<usize>::new());
        assert_eq!(at("é▁"), vec![2]);
        assert!(cut_inside("a▁"));
        assert!(cut_inside("▁a▁b"));
        assert!(!cut_inside("▁▁▁a"));
        assert!(!cut_inside("▁"));
    }
}
