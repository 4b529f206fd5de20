//! The prompt's estimate: its token count and, when the routing policy
//! wants them and they are known exactly, its leading token ids (for
//! prefix-cache affinity on token blocks). One tokenization gives both.

use std::sync::Arc;

use gateway_core::{ChatInputs, MediaKind, Prompt, TokenCount, TokenCounter};

use crate::MediaCosts;

/// The bytes a tokenizer reads for `prompt` (token ids count 4 each).
pub(super) fn prompt_bytes(prompt: &Prompt) -> usize {
    match prompt {
        Prompt::Text(text) => text.len(),
        Prompt::Tokens(ids) => ids.len().saturating_mul(4),
        Prompt::Chat(messages) => messages.iter().map(|m| m.text_bytes()).sum(),
    }
}

/// A prompt's count, leading token ids and, when kept, all its ids.
#[derive(Debug, Clone)]
pub(super) struct Estimate {
    pub(super) count: TokenCount,
    /// At most the `want` first ids given to [`estimate`]; `None` when
    /// none were wanted or the counter does not know them.
    pub(super) prefix: Option<Arc<[u32]>>,
    /// Every id of the prompt as the engine gets it, when `keep` was
    /// asked and the counter knows them exactly (a continuation starts
    /// from them).
    pub(super) ids: Option<Arc<[u32]>>,
}

/// Counts `prompt` (with the chat request's tools and template variables,
/// `inputs`) with `counter`; with
/// `want > 0`, also keeps its first `want` token ids when the prompt is
/// tokens or the counter encodes it exactly (then the count is their
/// number); with `keep`, all of them.
pub(super) fn estimate(
    counter: &dyn TokenCounter,
    prompt: &Prompt,
    inputs: ChatInputs<'_>,
    want: usize,
    keep: bool,
) -> Estimate {
    let leading = |ids: &[u32]| Arc::from(&ids[..ids.len().min(want)]);
    if want > 0 || keep {
        if let Prompt::Tokens(ids) = prompt {
            return Estimate {
                count: counter.count_prompt(prompt),
                prefix: (want > 0).then(|| leading(ids)),
                ids: keep.then(|| Arc::from(ids.as_slice())),
            };
        }
        if let Some(ids) = counter.encode_request(prompt, inputs) {
            return Estimate {
                count: TokenCount::Exact(ids.len() as u64),
                prefix: (want > 0).then(|| leading(&ids)),
                ids: keep.then(|| Arc::from(ids)),
            };
        }
    }
    Estimate {
        count: counter.count_request(prompt, inputs),
        prefix: None,
        ids: None,
    }
}

/// `estimate` with the media parts of `prompt` added at their cost per
/// part; then the count is a bound (the engine's count is charged). `Err`
/// names a kind of media the prompt holds and the model takes none of.
pub(super) fn with_media(
    mut estimate: Estimate,
    prompt: &Prompt,
    costs: &MediaCosts,
) -> Result<Estimate, MediaKind> {
    let Prompt::Chat(messages) = prompt else {
        return Ok(estimate);
    };
    let mut extra: u64 = 0;
    let mut any = false;
    for kind in [MediaKind::Image, MediaKind::Audio, MediaKind::Video] {
        let parts: usize = messages.iter().map(|m| m.media_count(kind)).sum();
        if parts == 0 {
            continue;
        }
        let per_part = costs.per_part(kind).ok_or(kind)?;
        any = true;
        extra = extra.saturating_add((parts as u64).saturating_mul(u64::from(per_part)));
    }
    if any {
        estimate.count = TokenCount::UpperBound(estimate.count.value().saturating_add(extra));
        // The prompt's ids are not known past the first media part.
        estimate.prefix = None;
        estimate.ids = None;
    }
    Ok(estimate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_core::ByteBound;

    /// Knows the ids of text prompts: one per byte.
    #[derive(Debug)]
    struct Bytes;

    impl TokenCounter for Bytes {
        fn count_prompt(&self, prompt: &Prompt) -> TokenCount {
            match prompt {
                Prompt::Text(t) => TokenCount::Exact(t.len() as u64),
                other => ByteBound::default().count_prompt(other),
            }
        }
        fn count_text(&self, text: &str) -> TokenCount {
            TokenCount::Exact(text.len() as u64)
        }
        fn encode_prompt(&self, prompt: &Prompt) -> Option<Vec<u32>> {
            match prompt {
                Prompt::Text(t) => Some(t.bytes().map(u32::from).collect()),
                _ => None,
            }
        }
    }

    #[test]
    fn media_parts_add_their_cost_or_are_refused() {
        use gateway_core::{ChatMessage, ContentPart, MediaPart};
        let image = || {
            ContentPart::Media(MediaPart {
                kind: MediaKind::Image,
                json: r#"{"type":"image_url","image_url":{"url":"data:,"}}"#.into(),
            })
        };
        let prompt = Prompt::Chat(vec![
            ChatMessage {
                parts: vec![image(), ContentPart::Text("what?".into()), image()],
                ..ChatMessage::user("what?")
            },
            ChatMessage {
                parts: vec![image()],
                ..ChatMessage::user("")
            },
        ]);
        let base = || Estimate {
            count: TokenCount::Exact(20),
            prefix: Some(Arc::from(&[1, 2][..])),
            ids: Some(Arc::from(&[1, 2, 3][..])),
        };
        let costs = MediaCosts {
            image: Some(576),
            ..MediaCosts::default()
        };
        let e = with_media(base(), &prompt, &costs).unwrap();
        assert_eq!(e.count, TokenCount::UpperBound(20 + 3 * 576));
        assert_eq!((e.prefix, e.ids), (None, None));
        assert_eq!(
            with_media(base(), &prompt, &MediaCosts::default()).unwrap_err(),
            MediaKind::Image
        );
        // No media: unchanged, whatever the costs.
        let text = Prompt::Chat(vec![ChatMessage::user("hi")]);
        let e = with_media(base(), &text, &MediaCosts::default()).unwrap();
        assert_eq!(e.count, TokenCount::Exact(20));
        assert!(e.prefix.is_some());
    }

    #[test]
    fn the_prefix_is_kept_only_when_wanted_and_known() {
        let text = Prompt::Text("abcdef".into());
        let e = estimate(&Bytes, &text, ChatInputs::default(), 4, false);
        assert_eq!(e.count, TokenCount::Exact(6));
        assert_eq!(e.prefix.as_deref(), Some(&[97, 98, 99, 100][..]));
        let e = estimate(&Bytes, &text, ChatInputs::default(), 0, false);
        assert_eq!((e.count, e.prefix), (TokenCount::Exact(6), None));
        let e = estimate(&Bytes, &text, ChatInputs::default(), 100, false);
        assert_eq!(e.prefix.map(|p| p.len()), Some(6));
        // Token prompts give their own ids; bounds give none.
        let tokens = Prompt::Tokens(vec![5, 6, 7]);
        let e = estimate(
            &ByteBound::default(),
            &tokens,
            ChatInputs::default(),
            2,
            false,
        );
        assert_eq!(
            (e.count, e.prefix.as_deref()),
            (TokenCount::Exact(3), Some(&[5, 6][..]))
        );
        let e = estimate(
            &ByteBound::default(),
            &text,
            ChatInputs::default(),
            4,
            false,
        );
        assert_eq!(e.prefix, None);
        assert!(!e.count.is_exact());
    }

    #[test]
    fn all_ids_are_kept_when_asked_and_known() {
        let text = Prompt::Text("abc".into());
        let e = estimate(&Bytes, &text, ChatInputs::default(), 0, true);
        assert_eq!(
            (e.count, e.prefix, e.ids.as_deref()),
            (TokenCount::Exact(3), None, Some(&[97, 98, 99][..]))
        );
        let e = estimate(&Bytes, &text, ChatInputs::default(), 2, true);
        assert_eq!(
            (e.prefix.as_deref(), e.ids.as_deref()),
            (Some(&[97, 98][..]), Some(&[97, 98, 99][..]))
        );
        let e = estimate(&Bytes, &text, ChatInputs::default(), 2, false);
        assert_eq!(e.ids, None);
        let tokens = Prompt::Tokens(vec![5, 6, 7]);
        let e = estimate(
            &ByteBound::default(),
            &tokens,
            ChatInputs::default(),
            0,
            true,
        );
        assert_eq!(e.ids.as_deref(), Some(&[5, 6, 7][..]));
        // A bound knows no ids.
        let e = estimate(&ByteBound::default(), &text, ChatInputs::default(), 0, true);
        assert_eq!(e.ids, None);
    }
}
