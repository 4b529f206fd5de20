//! Authentication: [`Authenticator`] and the default [`StaticKeys`], which
//! keeps only SHA-256 hashes of tenant keys and compares in constant time.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::Tenant;

/// Finds the tenant a presented API key belongs to.
pub trait Authenticator: Send + Sync + fmt::Debug + 'static {
    /// The tenant for `key`, or `None` if the key is unknown.
    fn authenticate(&self, key: &str) -> Option<Arc<Tenant>>;
}

/// The SHA-256 of a key.
pub fn key_hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Tenant keys from configuration, held as SHA-256 hashes.
///
/// A presented key is hashed, the hash looked up, and the stored hash
/// compared with the presented one in constant time, so neither the lookup
/// nor the comparison reveals how much of a key was right.
#[derive(Clone, Default)]
pub struct StaticKeys {
    by_hash: HashMap<[u8; 32], Arc<Tenant>>,
}

impl fmt::Debug for StaticKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticKeys")
            .field("keys", &self.by_hash.len())
            .finish()
    }
}

impl StaticKeys {
    /// No keys.
    pub fn new() -> Self {
        StaticKeys::default()
    }

    /// Adds a key, given as its SHA-256 hash, for `tenant`.
    pub fn insert_hash(&mut self, hash: [u8; 32], tenant: Arc<Tenant>) {
        self.by_hash.insert(hash, tenant);
    }

    /// Adds a plaintext key (hashed here; the plaintext is not kept).
    pub fn insert(&mut self, key: &str, tenant: Arc<Tenant>) {
        self.insert_hash(key_hash(key), tenant);
    }
}

impl Authenticator for StaticKeys {
    fn authenticate(&self, key: &str) -> Option<Arc<Tenant>> {
        let presented = key_hash(key);
        let (stored, tenant) = self.by_hash.get_key_value(&presented)?;
        bool::from(stored.ct_eq(&presented)).then(|| tenant.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_tenants_by_key_only() {
        let mut keys = StaticKeys::new();
        let a = Arc::new(Tenant::new("team-a"));
        keys.insert("sk-a", a.clone());
        keys.insert_hash(key_hash("sk-b"), Arc::new(Tenant::new("team-b")));
        assert_eq!(
            keys.authenticate("sk-a").map(|t| t.id.to_string()),
            Some("team-a".into())
        );
        assert_eq!(
            keys.authenticate("sk-b").map(|t| t.id.to_string()),
            Some("team-b".into())
        );
        assert!(keys.authenticate("sk-").is_none());
        assert!(keys.authenticate("").is_none());
        assert!(!format!("{keys:?}").contains("sk-a"));
    }

    #[test]
    fn hash_is_sha256() {
        // sha256("abc")
        let h = key_hash("abc");
        assert_eq!(h[..4], [0xba, 0x78, 0x16, 0xbf]);
    }
}
