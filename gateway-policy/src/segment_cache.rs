//! The tokenizer's segment cache: a prompt's tokenization in pieces, the
//! pieces seen recently (a shared system prompt, the template's fixed
//! text) not tokenized again.
//!
//! A Hugging Face tokenizer first splits its input on the added tokens
//! (`AddedVocabulary::extract_and_normalize`: an Aho-Corasick automaton,
//! leftmost-longest, over the added tokens' contents), then normalizes,
//! pre-tokenizes and tokenizes each remaining piece on its own. So a
//! text's ids are the concatenation, piece by piece, of each added token's
//! id and each text piece's ids. A piece's ids depend on its text and on
//! one fact about its place: whether it starts the input (Metaspace's
//! `prepend_scheme: first` prepends `▁` only at offset 0; no other
//! normalizer, pre-tokenizer or model reads the offset). So each piece is
//! run through the tokenizer's normalizer, pre-tokenizer and model
//! ([`piece_ids`]) with its start at offset 0 if it starts the text, else
//! at offset 1: as in the whole text, exactly, and without the `Encoding`
//! (offsets, words, type ids…) that `Tokenizer::encode_fast` builds.
//!
//! [`SegmentEncoder::new`] takes the segmented path only where that holds
//! (every added token matched on the raw text, with no stripping or word
//! rule; no truncation, padding, or `encode_special_tokens`) and checks it
//! on sample texts; otherwise the counter encodes the whole text.
//!
//! The cache maps (scope, first-or-not, piece text) to the piece's ids;
//! a hit compares the stored text (the 128-bit hash only finds it). Its
//! bytes are bounded: two generations, each at most half the bound; a
//! full young generation becomes the old one (the old one dropped), a hit
//! in the old one moves the entry back to the young one. Pieces of at
//! least [`MIN_CACHED_BYTES`] are stored at their first sighting; shorter
//! ones in a second such cache, the short-piece memo (a sixteenth of the
//! bound), at their second, so that one-off user turns do not push out
//! the pieces that recur.
//!
//! A piece not found is encoded; with a BPE model, word by word
//! ([`words`]): a SentencePiece-style model merges a whole piece as one
//! split, and the cut into words, where no merge can cross, lets the
//! words' ids come from a third cache (another sixteenth of the bound),
//! shared by every scope. A new 10 KB prompt then costs a lookup per
//! word and the encoding of the words not seen before, not one merge of
//! ten thousand characters.

use std::collections::HashSet;
use std::fmt;
use std::hash::BuildHasherDefault;
use std::sync::Mutex;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use tokenizers::normalizer::Range;
use tokenizers::{
    Model, NormalizedString, Normalizer, OffsetReferential, OffsetType, PreTokenizedString,
    PreTokenizer, Tokenizer,
};

mod store;
mod words;

use store::{Cache, Key, Prehashed};
use words::Words;

/// Pieces from this size on are kept in the cache at their first
/// sighting; shorter ones (a user turn, the template's fixed text between
/// two added tokens) in the short-piece memo, at their second.
pub(crate) const MIN_CACHED_BYTES: usize = 256;

/// The share of the bound that the short-piece memo takes
/// (`bound / SHORT_SHARE`), its seen-once hashes included.
const SHORT_SHARE: usize = 16;

/// What a seen-once hash costs in the short-piece memo: 16 bytes and the
/// table's slack.
const SEEN_BYTES: usize = 32;

/// What an entry costs besides its text and ids: the maps' slots, the
/// boxes' headers, the `Arc`'s counts.
const ENTRY_OVERHEAD: usize = 96;

/// The segment cache's counters ([`HfTokenCounter::tokenizer_cache_stats`](crate::HfTokenCounter::tokenizer_cache_stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenizerCacheStats {
    /// Pieces found in the cache.
    pub hits: u64,
    /// Pieces long enough to cache and not found (then encoded and
    /// stored, if they fit).
    pub misses: u64,
    /// Entries held now.
    pub entries: usize,
    /// Their bytes (text, ids and a fixed overhead each), at most the bound.
    pub bytes: usize,
    /// Short pieces (under 256 bytes) found in the short-piece memo.
    pub short_hits: u64,
    /// Short pieces looked up there and not found (then encoded, and
    /// stored if seen once before).
    pub short_misses: u64,
    /// The short-piece memo's entries.
    pub short_entries: usize,
    /// Their bytes, counted as the cache's, at most a sixteenth of the
    /// bound.
    pub short_bytes: usize,
    /// Words (a BPE model's pieces cut where no merge crosses) found in
    /// the word cache, shared by every scope.
    pub word_hits: u64,
    /// Words looked up there and not found (then encoded and stored).
    pub word_misses: u64,
    /// The word cache's entries.
    pub word_entries: usize,
    /// Their bytes, counted as the cache's, at most a sixteenth of the
    /// bound.
    pub word_bytes: usize,
}

/// Encodes a text piece by piece (split on the added tokens), with the
/// pieces' ids cached per scope: the long ones at once, the short ones
/// when they recur.
pub(crate) struct SegmentEncoder {
    /// The added tokens' contents, leftmost-longest.
    splitter: AhoCorasick,
    /// The id of each of `splitter`'s patterns.
    ids: Vec<u32>,
    /// An added token that no other extends, put in [`agrees`](Self::agrees)'s
    /// sample texts.
    lead: String,
    cache: Cache,
    short: ShortMemo,
    /// The model's words, when it is a BPE.
    words: Option<Words>,
}

impl fmt::Debug for SegmentEncoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentEncoder")
            .field("added_tokens", &self.ids.len())
            .field("lead", &self.lead)
            .field("stats", &self.cache.stats())
            .finish_non_exhaustive()
    }
}

impl SegmentEncoder {
    /// The encoder for `tokenizer`, its cache bounded to `bound` bytes;
    /// `None` when piecewise encoding is not provably the whole text's
    /// (see the module's documentation) or `bound` is 0.
    pub(crate) fn new(tokenizer: &Tokenizer, bound: usize) -> Option<Self> {
        if bound == 0
            || tokenizer.get_truncation().is_some()
            || tokenizer.get_padding().is_some()
            || tokenizer.get_encode_special_tokens()
        {
            return None;
        }
        let mut added: Vec<(u32, String)> = Vec::new();
        for (id, token) in tokenizer.get_added_tokens_decoder() {
            if token.normalized
                || token.lstrip
                || token.rstrip
                || token.single_word
                || token.content.is_empty()
                // The tokenizer matches the content to this id.
                || tokenizer.token_to_id(&token.content) != Some(id)
            {
                return None;
            }
            added.push((id, token.content));
        }
        added.sort_unstable();
        let mut contents: Vec<&str> = added.iter().map(|(_, c)| c.as_str()).collect();
        contents.sort_unstable();
        if contents.windows(2).any(|w| w[0] == w[1]) {
            return None;
        }
        // A sample token no other added token extends: the automaton
        // resumes exactly where the next piece starts.
        let (_, lead) = added
            .iter()
            .find(|(_, c)| {
                !added
                    .iter()
                    .any(|(_, other)| other.len() > c.len() && other.starts_with(c.as_str()))
            })?
            .clone();
        let splitter = AhoCorasickBuilder::new()
            .match_kind(MatchKind::LeftmostLongest)
            .build(added.iter().map(|(_, c)| c))
            .ok()?;
        let encoder = SegmentEncoder {
            splitter,
            ids: added.iter().map(|(id, _)| *id).collect(),
            lead,
            cache: Cache::new(bound - 2 * (bound / SHORT_SHARE)),
            short: ShortMemo::new(bound / SHORT_SHARE),
            words: Words::new(tokenizer, bound / SHORT_SHARE),
        };
        encoder.agrees(tokenizer).then_some(encoder)
    }

    /// Whether pieces give the whole text's ids on sample texts with added
    /// tokens at the start, the middle and the end, spaces and `▁` at
    /// the pieces' edges, and no added token at all: a check of the
    /// reasoning above against this tokenizer's components.
    fn agrees(&self, tokenizer: &Tokenizer) -> bool {
        let lead = self.lead.as_str();
        let samples = [
            format!("Hello world{lead} how are you?\n {lead}  x"),
            format!("{lead}Hello{lead}{lead} world ▁ é🙂 {lead}"),
            format!(" leading space\n{lead}\n trailing "),
            format!("▁x{lead}▁y{lead}\n\n\t12345 "),
            "no added token at all, just text".to_owned(),
        ];
        samples.iter().all(|text| {
            let whole = tokenizer.encode_fast(text.as_str(), false).ok();
            let pieces = self.encode(tokenizer, text, None);
            whole.is_some() && whole.map(|e| e.get_ids().to_vec()) == pieces
        })
    }

    /// The ids of `text` (without special tokens added), the long pieces'
    /// from the cache of `scope` when there, the others encoded (and the
    /// long ones stored); `None` if the tokenizer fails. `scope` `None`:
    /// nothing is looked up nor stored.
    pub(crate) fn encode(
        &self,
        tokenizer: &Tokenizer,
        text: &str,
        scope: Option<&str>,
    ) -> Option<Vec<u32>> {
        if text.is_empty() {
            return Some(tokenizer.encode_fast(text, false).ok()?.get_ids().to_vec());
        }
        let mut out = Vec::with_capacity(text.len() / 3);
        let mut start = 0;
        for m in self.splitter.find_iter(text) {
            if m.start() > start {
                self.piece(
                    tokenizer,
                    &text[start..m.start()],
                    start == 0,
                    scope,
                    &mut out,
                )?;
            }
            out.push(self.ids[m.pattern().as_usize()]);
            start = m.end();
        }
        if start < text.len() {
            self.piece(tokenizer, &text[start..], start == 0, scope, &mut out)?;
        }
        Some(out)
    }

    /// Appends the ids of `piece` (no added token in it) to `out`, as in
    /// a text where it starts at offset 0 if `first`, else after an added
    /// token: from the cache or the short-piece memo of `scope` when
    /// there, else encoded (and stored).
    fn piece(
        &self,
        tokenizer: &Tokenizer,
        piece: &str,
        first: bool,
        scope: Option<&str>,
        out: &mut Vec<u32>,
    ) -> Option<()> {
        let words = self.words.as_ref();
        let Some(scope) = scope else {
            return piece_ids(tokenizer, words, piece, first, out);
        };
        let key = Key {
            scope,
            first,
            text: piece,
        };
        let short = piece.len() < MIN_CACHED_BYTES;
        let cache = if short {
            &self.short.cache
        } else {
            &self.cache
        };
        let hash = key.hash();
        if let Some(ids) = cache.get(hash, &key) {
            out.extend_from_slice(&ids);
            return Some(());
        }
        let start = out.len();
        piece_ids(tokenizer, words, piece, first, out)?;
        if !short || self.short.admit(hash) {
            cache.insert(hash, &key, out[start..].to_vec());
        }
        Some(())
    }

    pub(crate) fn stats(&self) -> TokenizerCacheStats {
        let short = self.short.cache.stats();
        let words = self.words.as_ref().map(Words::stats).unwrap_or_default();
        TokenizerCacheStats {
            short_hits: short.hits,
            short_misses: short.misses,
            short_entries: short.entries,
            short_bytes: short.bytes,
            word_hits: words.hits,
            word_misses: words.misses,
            word_entries: words.entries,
            word_bytes: words.bytes,
            ..self.cache.stats()
        }
    }
}

/// Appends to `out` the ids of `piece` (no added token in it) as the
/// tokenizer gives them inside a whole text, where it starts at offset 0
/// if `first`, else after an added token: the normalizer, the
/// pre-tokenizer and the model, each as `Tokenizer::encode_fast` runs
/// them on one of the text's pieces, with no `Encoding` built and no
/// search for added tokens (the caller split on them). The piece's start
/// is given to the pre-tokenizer as offset 0 or 1, the only fact about
/// its place that a component reads (Metaspace's `prepend_scheme:
/// first`). `None` if a component fails.
fn piece_ids(
    tokenizer: &Tokenizer,
    words: Option<&Words>,
    piece: &str,
    first: bool,
    out: &mut Vec<u32>,
) -> Option<()> {
    let model = tokenizer.get_model();
    if let Some(words) = words
        && let Some(split) = words.metaspace(piece, first)
    {
        return words.ids(model, &split, out);
    }
    let mut split = if first {
        PreTokenizedString::from(piece)
    } else {
        // A slice from offset 1 of a text one byte longer: the same
        // characters and alignments, its start not at 0.
        let mut text = String::with_capacity(piece.len() + 1);
        text.push(' ');
        text.push_str(piece);
        PreTokenizedString::from(NormalizedString::from(text).slice(Range::Original(1..))?)
    };
    if let Some(normalizer) = tokenizer.get_normalizer() {
        split.normalize(|s| normalizer.normalize(s)).ok()?;
    }
    if let Some(pre_tokenizer) = tokenizer.get_pre_tokenizer() {
        pre_tokenizer.pre_tokenize(&mut split).ok()?;
    }
    if let Some(words) = words {
        for (text, _, tokens) in split.get_splits(OffsetReferential::Normalized, OffsetType::None) {
            match tokens {
                Some(tokens) => out.extend(tokens.iter().map(|t| t.id)),
                None => words.ids(model, text, out)?,
            }
        }
        return Some(());
    }
    split.tokenize(|s| model.tokenize(s.get())).ok()?;
    for (_, _, tokens) in split.get_splits(OffsetReferential::Original, OffsetType::None) {
        out.extend(tokens.iter().flatten().map(|t| t.id));
    }
    Some(())
}

/// The ids of short pieces that recur: the template's fixed text between
/// two added tokens (`\n<|assistant|>\n`), a short system prompt. A piece
/// is stored at its second sighting, so one-off user turns do not take
/// the place of the recurring pieces; the hashes of pieces seen once are
/// kept in a set, emptied when full.
struct ShortMemo {
    cache: Cache,
    /// Hashes of the pieces seen once and not stored.
    seen: Mutex<HashSet<u128, BuildHasherDefault<Prehashed>>>,
    /// The most hashes `seen` holds.
    seen_max: usize,
}

impl ShortMemo {
    /// A memo of at most `bound` bytes: a quarter for the seen-once
    /// hashes, the rest for the entries.
    fn new(bound: usize) -> Self {
        let seen = bound / 4;
        ShortMemo {
            cache: Cache::new(bound - seen),
            seen: Mutex::default(),
            seen_max: seen / SEEN_BYTES,
        }
    }

    /// Whether the piece of `hash` was seen before (then it is stored and
    /// forgotten here); else it is remembered as seen once.
    fn admit(&self, hash: u128) -> bool {
        if self.seen_max == 0 {
            return false;
        }
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.remove(&hash) {
            return true;
        }
        if seen.len() >= self.seen_max {
            seen.clear();
        }
        seen.insert(hash);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::LazyLock;

    /// The real TinyLlama tokenizer: Metaspace `prepend_scheme: first`, no
    /// normalizer, `<unk>`, `<s>`, `</s>` added.
    pub(super) fn tinyllama() -> &'static Tokenizer {
        static T: LazyLock<Tokenizer> = LazyLock::new(|| {
            let path = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../fixtures/tokenizers/tinyllama.json"
            );
            Tokenizer::from_file(path).unwrap()
        });
        &T
    }

    pub(super) fn whole(text: &str) -> Vec<u32> {
        tinyllama()
            .encode_fast(text, false)
            .unwrap()
            .get_ids()
            .to_vec()
    }

    #[test]
    fn tinyllama_takes_the_segmented_path_and_a_tokenizer_that_strips_does_not() {
        let enc = SegmentEncoder::new(tinyllama(), 1 << 20).unwrap();
        assert_eq!((enc.lead.as_str(), enc.ids.len()), ("<unk>", 3));
        assert!(SegmentEncoder::new(tinyllama(), 0).is_none());
        let mut stripping = tinyllama().clone();
        stripping.add_special_tokens(&[tokenizers::AddedToken::from("<|x|>", true).rstrip(true)]);
        assert!(SegmentEncoder::new(&stripping, 1 << 20).is_none());
        let mut normalized = tinyllama().clone();
        normalized.add_tokens(&[tokenizers::AddedToken::from("hello", false)]);
        assert!(SegmentEncoder::new(&normalized, 1 << 20).is_none());
    }

    #[test]
    fn pieces_after_an_added_token_and_at_the_start_differ_and_both_are_exact() {
        let enc = SegmentEncoder::new(tinyllama(), 1 << 20).unwrap();
        let long = "Hello world, ".repeat(40);
        for text in [
            format!("{long}</s>{long}"),
            format!("</s>{long}<s>{long}</s>"),
            format!(" {long}</s> {long}"),
            format!("▁{long}</s>▁{long}"),
        ] {
            let cold = enc.encode(tinyllama(), &text, Some("t")).unwrap();
            let warm = enc.encode(tinyllama(), &text, Some("t")).unwrap();
            assert_eq!(cold, whole(&text), "{text:?}");
            assert_eq!(warm, cold, "{text:?}");
        }
        // The same long text first and after `</s>`: two entries, each
        // with its own ids (▁Hello against Hello).
        assert_ne!(whole(&long), whole(&format!("</s>{long}"))[1..]);
        assert!(enc.stats().hits >= 4, "{:?}", enc.stats());
    }

    fn piece() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "a",
            "b",
            "hello",
            " ",
            "  ",
            "\n",
            "\t",
            "▁",
            "</s>",
            "<s>",
            "<unk>",
            "</",
            "s>",
            "<",
            "é",
            "🙂",
            "12",
            ".",
            "\r\n",
            "\u{3000}",
            "漢字",
            "e\u{301}",
            "\u{200d}",
            "<|user|>\n",
            "x".repeat(300).leak(),
        ])
    }

    /// A piece of [`piece`]'s or any string at all.
    fn any_piece() -> impl Strategy<Value = String> {
        prop_oneof![piece().prop_map(str::to_owned), any::<String>()]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Any text from pieces that stress the pieces' edges: added
        /// tokens next to each other, half tokens, spaces and `▁` around
        /// them, long pieces (cached) and short ones; cold and warm.
        #[test]
        fn segmented_ids_are_the_whole_texts(parts in prop::collection::vec(piece(), 0..40)) {
            static ENC: LazyLock<SegmentEncoder> =
                LazyLock::new(|| SegmentEncoder::new(tinyllama(), 4 << 20).unwrap());
            let text: String = parts.concat();
            let expected = whole(&text);
            // Cold, seen once (the short pieces stored), warm.
            for _ in 0..3 {
                prop_assert_eq!(&ENC.encode(tinyllama(), &text, Some("p")).unwrap(), &expected);
            }
            prop_assert_eq!(&ENC.encode(tinyllama(), &text, None).unwrap(), &expected);
        }

        /// The same with arbitrary strings among the pieces, and each
        /// piece's ids from the pipeline below `encode_fast` against
        /// `encode_fast` of a text where it starts at 0 or after `</s>`.
        #[test]
        fn any_text_and_any_piece_are_exact(parts in prop::collection::vec(any_piece(), 0..12)) {
            static ENC: LazyLock<SegmentEncoder> =
                LazyLock::new(|| SegmentEncoder::new(tinyllama(), 4 << 20).unwrap());
            let text: String = parts.concat();
            let expected = whole(&text);
            for _ in 0..3 {
                prop_assert_eq!(&ENC.encode(tinyllama(), &text, Some("q")).unwrap(), &expected);
            }
            for part in parts.iter().filter(|p| !p.is_empty() && ENC.splitter.find(p.as_str()).is_none()) {
                // Through the model's tokenize, and word by word.
                for words in [None, ENC.words.as_ref()] {
                    let mut first = Vec::new();
                    piece_ids(tinyllama(), words, part, true, &mut first).unwrap();
                    prop_assert_eq!(&first, &whole(part));
                    let mut after = vec![2];
                    piece_ids(tinyllama(), words, part, false, &mut after).unwrap();
                    prop_assert_eq!(&after, &whole(&format!("</s>{part}")));
                }
            }
        }
    }

    #[test]
    fn a_short_piece_is_stored_at_its_second_sighting_in_its_scope_only() {
        let enc = SegmentEncoder::new(tinyllama(), 1 << 20).unwrap();
        let text = "</s>\n<|assistant|>\n";
        let expected = whole(text);
        let stats = |e: &SegmentEncoder| {
            let s = e.stats();
            (s.short_hits, s.short_misses, s.short_entries)
        };
        assert_eq!(enc.encode(tinyllama(), text, Some("a")).unwrap(), expected);
        assert_eq!(stats(&enc), (0, 1, 0));
        assert_eq!(enc.encode(tinyllama(), text, Some("a")).unwrap(), expected);
        assert_eq!(stats(&enc), (0, 2, 1));
        assert_eq!(enc.encode(tinyllama(), text, Some("a")).unwrap(), expected);
        assert_eq!(stats(&enc), (1, 2, 1));
        // Another scope sees it for the first time.
        assert_eq!(enc.encode(tinyllama(), text, Some("b")).unwrap(), expected);
        assert_eq!(stats(&enc), (1, 3, 1));
        // At the start, the same text is another piece (`▁` prepended).
        assert_eq!(
            enc.encode(tinyllama(), &text[4..], Some("a")).unwrap(),
            whole(&text[4..])
        );
        assert_eq!(stats(&enc), (1, 4, 1));
        // No scope: nothing looked up nor stored.
        enc.encode(tinyllama(), text, None).unwrap();
        assert_eq!(stats(&enc), (1, 4, 1));
        // The long pieces' counters are not the short ones'.
        let s = enc.stats();
        assert_eq!((s.hits, s.misses, s.entries), (0, 0, 0));
    }

    #[test]
    fn one_off_short_pieces_stay_within_the_memos_share_of_the_bound() {
        let bound = 64 << 10;
        let enc = SegmentEncoder::new(tinyllama(), bound).unwrap();
        let recurring = "</s>\n<|assistant|>\n";
        for i in 0..3_000 {
            let text = format!("</s>one-off turn {i}</s>");
            enc.encode(tinyllama(), &text, Some("a")).unwrap();
            enc.encode(tinyllama(), &text, Some("a")).unwrap();
            enc.encode(tinyllama(), recurring, Some("a")).unwrap();
            let s = enc.stats();
            assert!(s.short_bytes <= bound / SHORT_SHARE, "{i}: {s:?}");
            assert!(enc.short.seen.lock().unwrap().len() <= enc.short.seen_max);
        }
        let before = enc.stats().short_hits;
        enc.encode(tinyllama(), recurring, Some("a")).unwrap();
        assert_eq!(enc.stats().short_hits, before + 1);
    }
}
