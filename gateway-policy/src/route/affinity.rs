//! Prefix-cache affinity with power-of-two-choices.
//!
//! Engines keep the KV cache of recent prompt prefixes (vLLM's and SGLang's
//! prefix caching): a request whose prompt starts like an earlier one's is
//! cheaper on the backend that served the earlier one. The prompt's leading
//! blocks are hashed (block by block, so a longer shared prefix is a
//! stronger match): blocks of token ids as the engine sees them when the
//! model's counter knows them (a `tokenizer.json`, with the chat template
//! for chat; token prompts), which is what the engine's prefix cache keys
//! on, else blocks of the prompt's bytes; a backend that recently served the longest matching
//! block goes first, unless it is saturated. Without a match, two healthy
//! backends are drawn at random and the less loaded one goes first
//! (power of two choices: near least-loaded, without every gateway herding
//! onto the same backend). The random source is injected, so tests are
//! deterministic.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Mutex, MutexGuard, PoisonError};

use gateway_core::Prompt;
use gateway_core::rng::{Rng, SplitMix64};

use super::{Candidate, RoutePolicy, RouteRequest, load_score, rank};

/// Bytes per prefix block.
pub const BLOCK_BYTES: usize = 256;
/// Token ids per prefix block, when the prompt's tokens are known.
pub const BLOCK_TOKENS: usize = 64;
/// Blocks hashed per prompt (the first 1 KiB).
pub const BLOCKS: usize = 4;

/// Load (see [`load_score`]) above which an affinity match is ignored, by
/// default.
pub const SATURATED: f64 = 1.0;

/// How prefix affinity hashes prompts and when it gives up on a match.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AffinityConfig {
    /// Bytes per prefix block (at least 1), for prompts whose tokens are
    /// not known. Default [`BLOCK_BYTES`].
    pub block_bytes: usize,
    /// Token ids per prefix block (at least 1), for prompts whose tokens
    /// are known. Default [`BLOCK_TOKENS`]; a multiple of the engine's KV
    /// block size (vLLM: 16 on GPUs) matches its cache best.
    pub block_tokens: usize,
    /// Blocks hashed per prompt (at least 1). Default [`BLOCKS`].
    pub blocks: usize,
    /// Load (see [`load_score`]: in-flight over the concurrency limit) at
    /// or above which a backend's affinity match is ignored. Default
    /// [`SATURATED`] (full).
    pub saturation: f64,
}

impl Default for AffinityConfig {
    fn default() -> Self {
        AffinityConfig {
            block_bytes: BLOCK_BYTES,
            block_tokens: BLOCK_TOKENS,
            blocks: BLOCKS,
            saturation: SATURATED,
        }
    }
}

/// Hashes of the prompt's leading blocks: the hash of the first block, of
/// the first two, and so on (at most [`BLOCKS`]); only whole blocks.
/// Chat prompts hash their messages' roles and contents in order.
pub fn prefix_hashes(prompt: &Prompt) -> Vec<u64> {
    prefix_hashes_with(prompt, BLOCK_BYTES, BLOCKS)
}

/// [`prefix_hashes`] with `blocks` blocks of `block_bytes` bytes (each at
/// least 1).
pub fn prefix_hashes_with(prompt: &Prompt, block_bytes: usize, blocks: usize) -> Vec<u64> {
    let block_bytes = block_bytes.max(1);
    let total = block_bytes.saturating_mul(blocks.max(1));
    let mut bytes: Vec<u8> = Vec::with_capacity(total.min(1 << 20));
    match prompt {
        Prompt::Text(t) => bytes.extend(t.as_bytes().iter().take(total)),
        Prompt::Chat(messages) => {
            for m in messages {
                if bytes.len() >= total {
                    break;
                }
                bytes.extend_from_slice(m.role.as_str().as_bytes());
                bytes.push(0);
                bytes.extend_from_slice(m.content.as_bytes());
                bytes.push(0);
            }
            bytes.truncate(total);
        }
        Prompt::Tokens(ids) => {
            for id in ids.iter().take(total / 4) {
                bytes.extend_from_slice(&id.to_le_bytes());
            }
        }
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes
        .chunks_exact(block_bytes)
        .map(|block| {
            block.hash(&mut hasher);
            hasher.finish()
        })
        .collect()
}

/// Hashes of the leading blocks of `ids`, as [`prefix_hashes_with`] does
/// for bytes: the first block, the first two, and so on (at most `blocks`
/// blocks of `block_tokens` ids, each at least 1); only whole blocks.
pub fn token_prefix_hashes(ids: &[u32], block_tokens: usize, blocks: usize) -> Vec<u64> {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    // Token hashes never equal the byte hashes of the same prompt.
    "tokens".hash(&mut hasher);
    ids.chunks_exact(block_tokens.max(1))
        .take(blocks.max(1))
        .map(|block| {
            block.hash(&mut hasher);
            hasher.finish()
        })
        .collect()
}

/// Most prefixes remembered; past it the oldest half is forgotten.
const REMEMBERED: usize = 65_536;

#[derive(Debug)]
struct State {
    /// Prefix hash -> (backend name, when last used).
    seen: HashMap<u64, (String, u64)>,
    clock: u64,
    rng: SplitMix64,
}

/// The default routing policy: prefix affinity, else power of two choices.
#[derive(Debug)]
pub struct PrefixAffinity {
    state: Mutex<State>,
    /// Backend names by candidate index, to remember affinity across pool
    /// changes.
    names: Vec<String>,
    config: AffinityConfig,
}

impl PrefixAffinity {
    /// A policy over backends named `names` (by candidate index), drawing
    /// from a generator seeded with `seed`.
    pub fn new(names: Vec<String>, seed: u64) -> Self {
        PrefixAffinity::with_config(names, seed, AffinityConfig::default())
    }

    /// [`PrefixAffinity::new`] with its hashing and saturation settings.
    pub fn with_config(names: Vec<String>, seed: u64, config: AffinityConfig) -> Self {
        PrefixAffinity {
            state: Mutex::new(State {
                seen: HashMap::new(),
                clock: 0,
                rng: SplitMix64::new(seed),
            }),
            names,
            config,
        }
    }

    /// Its settings.
    pub fn config(&self) -> &AffinityConfig {
        &self.config
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The prefix hashes of `request` as this policy keys them.
    pub(super) fn hashes(&self, request: &RouteRequest<'_>) -> Vec<u64> {
        match request.prefix_tokens {
            Some(ids) => token_prefix_hashes(ids, self.config.block_tokens, self.config.blocks),
            None => prefix_hashes_with(request.prompt, self.config.block_bytes, self.config.blocks),
        }
    }

    /// The backend (by candidate index) that most recently served the
    /// longest of the request's prefix blocks (`hashes`), and about how
    /// many of the prompt's leading tokens those blocks hold: what that
    /// engine's prefix cache likely has (byte blocks count 4 bytes a
    /// token).
    pub(super) fn cached_prefix_hashed(
        &self,
        request: &RouteRequest<'_>,
        hashes: &[u64],
    ) -> Option<(usize, u32)> {
        let state = self.state();
        let (blocks, backend) = hashes
            .iter()
            .enumerate()
            .rev()
            .find_map(|(i, h)| state.seen.get(h).map(|(name, _)| (i + 1, name)))?;
        let index = self.names.iter().position(|n| n == backend)?;
        let per_block = match request.prefix_tokens {
            Some(_) => self.config.block_tokens,
            None => self.config.block_bytes / 4,
        };
        let tokens = blocks.saturating_mul(per_block);
        Some((index, u32::try_from(tokens).unwrap_or(u32::MAX)))
    }

    /// Notes that `request` went to the backend at `index`: its prefix
    /// blocks now point there.
    pub fn remember_choice(&self, request: &RouteRequest<'_>, index: usize) {
        self.remember_hashed(&self.hashes(request), index);
    }

    /// [`PrefixAffinity::remember_choice`] from the request's hashes.
    pub(super) fn remember_hashed(&self, hashes: &[u64], index: usize) {
        if let Some(name) = self.names.get(index) {
            PrefixAffinity::remember(&mut self.state(), hashes, name);
        }
    }

    /// Its order for a request whose prefix hashes are `hashes`.
    pub(super) fn rank_hashed(&self, hashes: &[u64], candidates: &[Candidate]) -> Vec<usize> {
        let mut order = rank(candidates);
        if order.is_empty() {
            return order;
        }
        let mut state = self.state();
        let name_of = |index: usize| self.names.get(index).map(String::as_str);
        // The longest matching block whose backend is eligible and not saturated.
        let affine = hashes.iter().rev().find_map(|h| {
            let (backend, _) = state.seen.get(h)?;
            let c = candidates
                .iter()
                .find(|c| name_of(c.index) == Some(backend.as_str()))?;
            (order.contains(&c.index) && load_score(&c.pressure) < self.config.saturation)
                .then_some(c.index)
        });
        let first = match affine {
            Some(index) => index,
            None if order.len() >= 2 => {
                // Two distinct draws among the eligible; the less loaded wins.
                let n = order.len() as u64;
                let a = state.rng.below(n) as usize;
                let b = (a + 1 + state.rng.below(n - 1) as usize) % order.len();
                let (ia, ib) = (order.get(a).copied(), order.get(b).copied());
                let score = |index: usize| {
                    candidates
                        .iter()
                        .find(|c| c.index == index)
                        .map_or(f64::MAX, |c| load_score(&c.pressure))
                };
                match (ia, ib) {
                    // The less loaded of the two; on a tie the first drawn.
                    (Some(ia), Some(ib)) => {
                        if score(ib) < score(ia) {
                            ib
                        } else {
                            ia
                        }
                    }
                    _ => order[0],
                }
            }
            None => order[0],
        };
        if let Some(pos) = order.iter().position(|i| *i == first) {
            order.remove(pos);
            order.insert(0, first);
        }
        if let Some(name) = name_of(first) {
            PrefixAffinity::remember(&mut state, hashes, name);
        }
        order
    }

    fn remember(state: &mut State, hashes: &[u64], backend: &str) {
        state.clock += 1;
        if state.seen.len() + hashes.len() > REMEMBERED {
            let mut ages: Vec<u64> = state.seen.values().map(|(_, at)| *at).collect();
            ages.sort_unstable();
            let cutoff = ages.get(ages.len() / 2).copied().unwrap_or(0);
            state.seen.retain(|_, (_, at)| *at > cutoff);
        }
        for h in hashes {
            state.seen.insert(*h, (backend.to_owned(), state.clock));
        }
    }
}

impl RoutePolicy for PrefixAffinity {
    fn rank(&self, request: &RouteRequest<'_>, candidates: &[Candidate]) -> Vec<usize> {
        if !candidates.iter().any(|c| c.healthy && c.has_capacity) {
            return Vec::new();
        }
        self.rank_hashed(&self.hashes(request), candidates)
    }

    /// Enough for every token block, unless affinity is off (saturation 0).
    fn prefix_tokens(&self) -> usize {
        if self.config.saturation > 0.0 {
            self.config.block_tokens.saturating_mul(self.config.blocks)
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_core::{LatencyClass, Pressure};

    fn cands(loads: &[u32]) -> Vec<Candidate> {
        loads
            .iter()
            .enumerate()
            .map(|(index, running)| Candidate {
                index,
                healthy: true,
                has_capacity: true,
                pressure: Pressure {
                    running: *running,
                    limit: Some(8),
                    ..Pressure::default()
                },
            })
            .collect()
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("b{i}")).collect()
    }

    fn req(prompt: &Prompt) -> RouteRequest<'_> {
        RouteRequest {
            model: "m",
            prompt,
            prefix_tokens: None,
            class: LatencyClass::Interactive,
            prompt_tokens: 0,
            slo: super::super::Slo::default(),
        }
    }

    #[test]
    fn token_hashes_cover_whole_blocks_of_ids_only() {
        let ids: Vec<u32> = (0..150).collect();
        assert!(token_prefix_hashes(&ids[..63], 64, 4).is_empty());
        let h = token_prefix_hashes(&ids, 64, 4);
        assert_eq!(h.len(), 2);
        // The same first block, another second one.
        let mut other = ids.clone();
        other[100] = 7;
        let h2 = token_prefix_hashes(&other, 64, 4);
        assert_eq!((h2[0] == h[0], h2[1] == h[1]), (true, false));
        assert_eq!(token_prefix_hashes(&[1; 1000], 8, 3).len(), 3);
        // Never the byte hash of the same data.
        let bytes: Vec<u8> = ids[..64].iter().flat_map(|i| i.to_le_bytes()).collect();
        let text = Prompt::Tokens(ids[..64].to_vec());
        assert_ne!(
            token_prefix_hashes(&ids[..64], 64, 1),
            prefix_hashes_with(&text, bytes.len(), 1)
        );
    }

    #[test]
    fn known_tokens_route_by_token_blocks() {
        let policy = PrefixAffinity::new(names(4), 1);
        assert_eq!(policy.prefix_tokens(), BLOCK_TOKENS * BLOCKS);
        let c = cands(&[0, 0, 0, 0]);
        // Two different texts whose token ids share the first block: they
        // land together, whatever their bytes.
        let ids_a: Vec<u32> = (0..130).collect();
        let mut ids_b = ids_a.clone();
        ids_b[70] = 9;
        let (pa, pb) = (Prompt::Text("a".into()), Prompt::Text("b".into()));
        let first = policy.rank(
            &RouteRequest {
                prefix_tokens: Some(&ids_a),
                ..req(&pa)
            },
            &c,
        )[0];
        for _ in 0..20 {
            let again = policy.rank(
                &RouteRequest {
                    prefix_tokens: Some(&ids_b),
                    ..req(&pb)
                },
                &c,
            )[0];
            assert_eq!(again, first);
        }
        let off = PrefixAffinity::with_config(
            names(2),
            1,
            AffinityConfig {
                saturation: 0.0,
                ..AffinityConfig::default()
            },
        );
        assert_eq!(off.prefix_tokens(), 0);
    }

    #[test]
    fn hashes_cover_whole_blocks_only() {
        assert!(prefix_hashes(&Prompt::Text("short".into())).is_empty());
        let long = "x".repeat(BLOCK_BYTES * 2 + 10);
        let h = prefix_hashes(&Prompt::Text(long.clone()));
        assert_eq!(h.len(), 2);
        let other = format!("{}{}", &long[..BLOCK_BYTES], "y".repeat(BLOCK_BYTES));
        let h2 = prefix_hashes(&Prompt::Text(other));
        assert_eq!(h[0], h2[0]);
        assert_ne!(h[1], h2[1]);
        assert_eq!(
            prefix_hashes(&Prompt::Text("z".repeat(10_000))).len(),
            BLOCKS
        );
    }

    #[test]
    fn repeated_prefixes_stick_and_fresh_ones_spread() {
        let policy = PrefixAffinity::new(names(4), 7);
        let system = "You are a helpful assistant. ".repeat(40);
        let mut landed = [0usize; 4];
        for i in 0..100 {
            let prompt = Prompt::Text(format!("{system} question {i}"));
            // Loads vary a little; the prefix's backend is never saturated.
            let loads = [1 + (i % 3) as u32, 2, 1, 3];
            let first = policy.rank(&req(&prompt), &cands(&loads))[0];
            landed[first] += 1;
        }
        println!("100 requests sharing a 1 KiB prefix landed {landed:?}");
        assert_eq!(landed.iter().filter(|n| **n > 0).count(), 1, "{landed:?}");

        let mut spread = [0usize; 4];
        for i in 0..400 {
            let prompt = Prompt::Text(format!("{i:04} {}", "unique ".repeat(60)));
            let first = policy.rank(&req(&prompt), &cands(&[2, 2, 2, 2]))[0];
            spread[first] += 1;
        }
        println!("400 requests with distinct prefixes at equal load spread {spread:?}");
        assert!(spread.iter().all(|n| *n >= 60), "{spread:?}");
    }

    #[test]
    fn a_saturated_or_unhealthy_affinity_target_is_bypassed() {
        let policy = PrefixAffinity::new(names(2), 1);
        let prompt = Prompt::Text("p".repeat(BLOCK_BYTES * 2));
        let first = policy.rank(&req(&prompt), &cands(&[0, 0]))[0];
        let other = 1 - first;
        // Saturated (8 of 8): the other backend goes first.
        let mut loads = [0u32; 2];
        loads[first] = 8;
        assert_eq!(policy.rank(&req(&prompt), &cands(&loads))[0], other);
        // Unhealthy: left out entirely.
        let mut cs = cands(&[0, 0]);
        cs[other].healthy = false;
        assert_eq!(policy.rank(&req(&prompt), &cs), vec![first]);
    }

    #[test]
    fn power_of_two_choices_prefers_the_less_loaded_of_two() {
        let policy = PrefixAffinity::new(names(3), 5);
        let mut firsts = [0usize; 3];
        for i in 0..300 {
            let prompt = Prompt::Text(format!("{i}"));
            firsts[policy.rank(&req(&prompt), &cands(&[0, 4, 7]))[0]] += 1;
        }
        // The most loaded can never win a pair; the least loaded wins every pair it is in.
        assert_eq!(firsts[2], 0, "{firsts:?}");
        assert!(firsts[0] > firsts[1], "{firsts:?}");
    }

    #[test]
    fn block_size_and_saturation_are_settings() {
        let config = AffinityConfig {
            block_bytes: 8,
            block_tokens: 4,
            blocks: 2,
            saturation: 0.5,
        };
        let prompt = Prompt::Text("abcdefgh12345678zzzzzzzz".into());
        assert_eq!(prefix_hashes_with(&prompt, 8, 2).len(), 2);
        assert_eq!(prefix_hashes_with(&prompt, 8, 9).len(), 3);
        assert_eq!(prefix_hashes_with(&prompt, 100, 4).len(), 0);
        let policy = PrefixAffinity::with_config(names(2), 1, config);
        assert_eq!(policy.config(), &config);
        let first = policy.rank(&req(&prompt), &cands(&[0, 0]))[0];
        let other = 1 - first;
        // 4 of 8 is half loaded: at the 0.5 threshold the match is ignored.
        let mut loads = [0u32; 2];
        loads[first] = 4;
        assert_eq!(policy.rank(&req(&prompt), &cands(&loads))[0], other);
        // That request went to `other`, so the prefix sticks there now; 3 of
        // 8 is below the threshold: the match holds although `first` is idle.
        let mut loads = [0u32; 2];
        loads[other] = 3;
        assert_eq!(policy.rank(&req(&prompt), &cands(&loads))[0], other);
    }
}
