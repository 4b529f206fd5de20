//! [`TenantKey`]: an API key kept only as its SHA-256 digest.

use std::fmt;

use sha2::{Digest, Sha256};

/// An API key as the gateway keeps it: never in plain text, only as a
/// digest. A plaintext key from the config file is hashed at load time.
///
/// ```
/// use gateway_adapters::config::TenantKey;
///
/// let key = TenantKey::from_plaintext("sk-demo");
/// assert!(key.matches("sk-demo"));
/// assert!(!key.matches("sk-demo "));
/// assert_eq!(TenantKey::from_sha256_hex(&key.to_hex()), Some(key));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TenantKey {
    /// The SHA-256 digest of the key's UTF-8 bytes.
    Sha256([u8; 32]),
}

impl TenantKey {
    /// The key whose plain text is `key`.
    pub fn from_plaintext(key: &str) -> TenantKey {
        TenantKey::Sha256(Sha256::digest(key.as_bytes()).into())
    }

    /// The key whose SHA-256 digest is `hex` (64 hexadecimal digits, either
    /// case); `None` if `hex` is not that.
    pub fn from_sha256_hex(hex: &str) -> Option<TenantKey> {
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut digest = [0u8; 32];
        for (out, pair) in digest.iter_mut().zip(bytes.chunks_exact(2)) {
            let (hi, lo) = (hex_value(pair[0])?, hex_value(pair[1])?);
            *out = (hi << 4) | lo;
        }
        Some(TenantKey::Sha256(digest))
    }

    /// The SHA-256 digest.
    pub const fn sha256(&self) -> &[u8; 32] {
        match self {
            TenantKey::Sha256(digest) => digest,
        }
    }

    /// The digest in lowercase hexadecimal.
    pub fn to_hex(&self) -> String {
        self.sha256().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether `presented` (as a client sent it) is this key. The digests
    /// are compared in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        let TenantKey::Sha256(theirs) = TenantKey::from_plaintext(presented);
        let diff = self
            .sha256()
            .iter()
            .zip(theirs.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

impl fmt::Debug for TenantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantKey::Sha256({})", self.to_hex())
    }
}

/// The value of one hexadecimal digit.
fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}
