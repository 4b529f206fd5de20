//! The segment cache's store: ids by (scope, first-or-not, text), in
//! two generations bounded in bytes.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use xxhash_rust::xxh3::Xxh3;

use super::{ENTRY_OVERHEAD, TokenizerCacheStats};

/// What an entry is found by.
pub(super) struct Key<'a> {
    pub(super) scope: &'a str,
    pub(super) first: bool,
    pub(super) text: &'a str,
}

impl Key<'_> {
    pub(super) fn hash(&self) -> u128 {
        let mut h = Xxh3::new();
        h.update(&(self.scope.len() as u64).to_le_bytes());
        h.update(self.scope.as_bytes());
        h.update(&[u8::from(self.first)]);
        h.update(self.text.as_bytes());
        h.digest128()
    }
}

struct Entry {
    scope: Box<str>,
    first: bool,
    text: Box<str>,
    ids: Arc<[u32]>,
}

impl Entry {
    fn matches(&self, key: &Key<'_>) -> bool {
        self.first == key.first && *self.scope == *key.scope && *self.text == *key.text
    }

    fn bytes(&self) -> usize {
        entry_bytes(self.scope.len(), self.text.len(), self.ids.len())
    }
}

fn entry_bytes(scope: usize, text: usize, ids: usize) -> usize {
    scope
        .saturating_add(text)
        .saturating_add(ids.saturating_mul(4))
        .saturating_add(ENTRY_OVERHEAD)
}

/// The keys are already hashes: the map takes their low 64 bits.
#[derive(Default)]
pub(super) struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes.iter().take(8) {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u128(&mut self, n: u128) {
        // The low half of the 128-bit hash.
        self.0 = n as u64;
    }
}

type Map = HashMap<u128, Entry, BuildHasherDefault<Prehashed>>;

#[derive(Default)]
struct Generations {
    young: Map,
    young_bytes: usize,
    old: Map,
    old_bytes: usize,
}

pub(super) struct Cache {
    /// Each generation holds at most this many bytes.
    half: usize,
    /// Larger entries are not stored: one would flush much of the rest.
    max_entry: usize,
    maps: Mutex<Generations>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Cache {
    pub(super) fn new(bound: usize) -> Self {
        Cache {
            half: bound / 2,
            max_entry: bound / 8,
            maps: Mutex::new(Generations::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The lock, held only to look up or store (never while encoding); a
    /// panic while it was held left the maps consistent.
    fn lock(&self) -> MutexGuard<'_, Generations> {
        self.maps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The ids of `key`, whose [`Key::hash`] is `hash`.
    pub(super) fn get(&self, hash: u128, key: &Key<'_>) -> Option<Arc<[u32]>> {
        let found = {
            let mut g = self.lock();
            if let Some(e) = g.young.get(&hash).filter(|e| e.matches(key)) {
                Some(Arc::clone(&e.ids))
            } else if g.old.get(&hash).is_some_and(|e| e.matches(key)) {
                // Promoted: it stays while it is used.
                let g = &mut *g;
                g.old.remove(&hash).map(|entry| {
                    let ids = Arc::clone(&entry.ids);
                    g.old_bytes -= entry.bytes();
                    Self::put(g, self.half, hash, entry);
                    ids
                })
            } else {
                None
            }
        };
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Stores `ids` for `key`, whose [`Key::hash`] is `hash`.
    pub(super) fn insert(&self, hash: u128, key: &Key<'_>, ids: Vec<u32>) {
        let bytes = entry_bytes(key.scope.len(), key.text.len(), ids.len());
        if bytes > self.max_entry {
            return;
        }
        // Built before the lock is taken.
        let entry = Entry {
            scope: key.scope.into(),
            first: key.first,
            text: key.text.into(),
            ids: ids.into(),
        };
        Self::put(&mut self.lock(), self.half, hash, entry);
    }

    /// Stores `entry` in the young generation, first making the young one
    /// old if it would pass `half`.
    fn put(g: &mut Generations, half: usize, hash: u128, entry: Entry) {
        let bytes = entry.bytes();
        if let Some(previous) = g.young.remove(&hash) {
            g.young_bytes -= previous.bytes();
        }
        if g.young_bytes + bytes > half {
            g.old = std::mem::take(&mut g.young);
            g.old_bytes = std::mem::take(&mut g.young_bytes);
        }
        // Not in both: the old one's copy (a collision's, or the same
        // text stored twice by racing misses) goes.
        if let Some(previous) = g.old.remove(&hash) {
            g.old_bytes -= previous.bytes();
        }
        g.young_bytes += bytes;
        g.young.insert(hash, entry);
    }

    pub(super) fn stats(&self) -> TokenizerCacheStats {
        let g = self.lock();
        TokenizerCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: g.young.len() + g.old.len(),
            bytes: g.young_bytes + g.old_bytes,
            ..TokenizerCacheStats::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(cache: &Cache, key: &Key<'_>) -> Option<Arc<[u32]>> {
        cache.get(key.hash(), key)
    }

    fn insert(cache: &Cache, key: &Key<'_>, ids: Vec<u32>) {
        cache.insert(key.hash(), key, ids);
    }

    fn key<'a>(scope: &'a str, text: &'a str) -> Key<'a> {
        Key {
            scope,
            first: false,
            text,
        }
    }

    #[test]
    fn the_cache_keeps_scopes_and_first_apart_and_stays_under_its_bound() {
        let cache = Cache::new(1 << 20);
        let text = "x".repeat(300);
        insert(&cache, &key("a", &text), vec![1, 2, 3]);
        assert_eq!(
            get(&cache, &key("a", &text)).as_deref(),
            Some(&[1, 2, 3][..])
        );
        assert!(get(&cache, &key("b", &text)).is_none());
        let first = Key {
            first: true,
            ..key("a", &text)
        };
        assert!(get(&cache, &first).is_none());
        // A scope whose bytes run on into the text is another key.
        assert!(get(&cache, &key("ax", &text[1..])).is_none());
        let s = cache.stats();
        assert_eq!((s.hits, s.misses, s.entries), (1, 3, 1));

        for i in 0..10_000 {
            let text = format!("{i:>400}");
            insert(&cache, &key("a", &text), vec![7; 100]);
            assert!(cache.stats().bytes <= 1 << 20);
        }
        let s = cache.stats();
        assert!(s.entries > 100, "{s:?}");
        assert!(s.bytes <= 1 << 20 && s.bytes > (1 << 20) / 4, "{s:?}");
        // The recent entries are there, the first long gone.
        assert!(get(&cache, &key("a", &format!("{:>400}", 9_999))).is_some());
        assert!(get(&cache, &key("a", &format!("{:>400}", 0))).is_none());
    }

    #[test]
    fn a_hit_in_the_old_generation_survives_the_next_turnover() {
        let cache = Cache::new(64 << 10);
        let hot = "h".repeat(1000);
        insert(&cache, &key("a", &hot), vec![1; 10]);
        for i in 0..2_000 {
            let text = format!("{i:>1000}");
            insert(&cache, &key("a", &text), vec![2; 10]);
            assert!(get(&cache, &key("a", &hot)).is_some(), "lost after {i}");
        }
        assert!(cache.stats().bytes <= 64 << 10);
    }

    #[test]
    fn an_entry_over_an_eighth_of_the_bound_is_not_stored() {
        let cache = Cache::new(8 << 10);
        let text = "y".repeat(2000);
        insert(&cache, &key("a", &text), vec![0; 10]);
        assert_eq!(cache.stats().entries, 0);
    }
}
