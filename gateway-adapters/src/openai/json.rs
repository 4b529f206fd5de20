//! Small JSON helpers for the hot paths: string escaping identical to
//! `serde_json`'s, integer formatting, a scanner that splits a
//! (validated) top-level JSON object into raw key and value slices so
//! uninterpreted fields can be passed on byte for byte, and (`strict`) a
//! validating reader for fast paths that fall back to `serde_json`.

use bytes::BytesMut;

#[cfg(feature = "engines")]
pub(crate) mod strict;

/// Something bytes can be appended to.
pub(crate) trait Sink {
    /// Appends `bytes`.
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for BytesMut {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl Sink for Vec<u8> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// `0`: copy as is; `u`: `\u00XX`; anything else: backslash and that byte.
const ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        table[i] = b'u';
        i += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes `s` as the inside of a JSON string (no quotes), escaped exactly
/// as `serde_json` does: `"`, `\` and control characters; everything else,
/// non-ASCII included, raw.
pub(crate) fn escape_into(out: &mut impl Sink, s: &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        let escape = ESCAPE[usize::from(byte)];
        if escape == 0 {
            continue;
        }
        out.put(bytes.get(start..i).unwrap_or_default());
        start = i + 1;
        if escape == b'u' {
            out.put(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xf)],
            ]);
        } else {
            out.put(&[b'\\', escape]);
        }
    }
    out.put(bytes.get(start..).unwrap_or_default());
}

/// Writes `s` as a quoted JSON string.
pub(crate) fn string_into(out: &mut impl Sink, s: &str) {
    out.put(b"\"");
    escape_into(out, s);
    out.put(b"\"");
}

/// Writes `n` in decimal.
pub(crate) fn u64_into(out: &mut impl Sink, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        // `n % 10` is below 10, so the cast cannot truncate.
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put(digits.get(at..).unwrap_or_default());
}

/// Writes `x` as serde_json does (shortest round-trip form); a value that
/// is not finite as `-9999.0`, vLLM's stand-in for a log-probability of
/// minus infinity (JSON has no infinities).
pub(crate) fn f64_into(out: &mut impl Sink, x: f64) {
    let x = if x.is_finite() { x } else { -9999.0 };
    match serde_json::to_string(&x) {
        Ok(text) => out.put(text.as_bytes()),
        Err(_) => out.put(b"-9999.0"),
    }
}

/// One `"key": value` pair of a top-level object, as raw slices of the
/// source text (the key with its quotes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawEntry<'a> {
    /// The key, quotes and escapes included, exactly as written.
    pub(crate) key: &'a str,
    /// The value, exactly as written, without surrounding whitespace.
    pub(crate) value: &'a str,
}

impl RawEntry<'_> {
    /// The key's text between the quotes, unescaped; `None` if it is not
    /// a valid JSON string.
    pub(crate) fn key_text(&self) -> Option<std::borrow::Cow<'_, str>> {
        let inner = self
            .key
            .strip_prefix('"')
            .and_then(|k| k.strip_suffix('"'))?;
        if inner.contains('\\') {
            serde_json::from_str::<String>(self.key)
                .ok()
                .map(std::borrow::Cow::Owned)
        } else {
            Some(std::borrow::Cow::Borrowed(inner))
        }
    }
}

/// The entries of the top-level object of `text`, which must already be
/// valid JSON. `None` if the top-level value is not an object (or, should
/// the text not be valid JSON after all, if the scan gets lost).
pub(crate) fn object_entries(text: &str) -> Option<Vec<RawEntry<'_>>> {
    let bytes = text.as_bytes();
    let mut at = skip_ws(bytes, 0);
    if bytes.get(at) != Some(&b'{') {
        return None;
    }
    at = skip_ws(bytes, at + 1);
    let mut entries = Vec::new();
    if bytes.get(at) == Some(&b'}') {
        return (skip_ws(bytes, at + 1) == bytes.len()).then_some(entries);
    }
    loop {
        if bytes.get(at) != Some(&b'"') {
            return None;
        }
        let key_end = skip_string(bytes, at)?;
        let key = text.get(at..key_end)?;
        at = skip_ws(bytes, key_end);
        if bytes.get(at) != Some(&b':') {
            return None;
        }
        let value_start = skip_ws(bytes, at + 1);
        let value_end = skip_value(bytes, value_start)?;
        entries.push(RawEntry {
            key,
            value: text.get(value_start..value_end)?,
        });
        at = skip_ws(bytes, value_end);
        match bytes.get(at) {
            Some(b',') => at = skip_ws(bytes, at + 1),
            Some(b'}') => {
                return (skip_ws(bytes, at + 1) == bytes.len()).then_some(entries);
            }
            _ => return None,
        }
    }
}

pub(crate) fn skip_ws(bytes: &[u8], mut at: usize) -> usize {
    while matches!(bytes.get(at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        at += 1;
    }
    at
}

/// `at` is on an opening quote; returns the index just past the closing one.
/// Prompts are long strings with few escapes, so the scan jumps from one
/// quote or backslash to the next (`memchr2`, a word at a time) rather
/// than stepping byte by byte.
pub(crate) fn skip_string(bytes: &[u8], at: usize) -> Option<usize> {
    let mut i = at + 1;
    loop {
        i += memchr::memchr2(b'"', b'\\', bytes.get(i..)?)?;
        match bytes.get(i)? {
            b'"' => return Some(i + 1),
            _ => i += 2,
        }
    }
}

/// Returns the index just past the value starting at `at`.
fn skip_value(bytes: &[u8], at: usize) -> Option<usize> {
    match bytes.get(at)? {
        b'"' => skip_string(bytes, at),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = at;
            loop {
                match bytes.get(i)? {
                    b'"' => {
                        i = skip_string(bytes, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            let mut i = at;
            while let Some(b) = bytes.get(i) {
                if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                    break;
                }
                i += 1;
            }
            (i > at).then_some(i)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn escaped(s: &str) -> String {
        let mut out = Vec::new();
        string_into(&mut out, s);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn escapes_like_serde_json() {
        for s in [
            "",
            "plain",
            "q\"b\\",
            "\u{0}\u{1f}\u{7f}\n\r\t\u{8}\u{c}",
            "é🙂",
        ] {
            assert_eq!(escaped(s), serde_json::to_string(s).unwrap());
        }
    }

    #[test]
    fn formats_integers() {
        for n in [0, 7, 10, 99, 1234567890, u64::MAX] {
            let mut out = Vec::new();
            u64_into(&mut out, n);
            assert_eq!(String::from_utf8(out).unwrap(), n.to_string());
        }
    }

    #[test]
    fn splits_top_level_objects() {
        let text = r#" { "a" : 1 , "b\"c":{"x":[1,"]}"]} ,"d":"}" , "e":null,"f":-1.5e3 } "#;
        let entries = object_entries(text).unwrap();
        let pairs: Vec<(&str, &str)> = entries.iter().map(|e| (e.key, e.value)).collect();
        assert_eq!(
            pairs,
            vec![
                ("\"a\"", "1"),
                ("\"b\\\"c\"", "{\"x\":[1,\"]}\"]}"),
                ("\"d\"", "\"}\""),
                ("\"e\"", "null"),
                ("\"f\"", "-1.5e3"),
            ]
        );
        assert_eq!(entries[1].key_text().unwrap(), "b\"c");
        assert_eq!(object_entries("{}").unwrap(), vec![]);
        assert_eq!(object_entries("[1]"), None);
        assert_eq!(object_entries("{\"a\":1} x"), None);
    }

    proptest! {
        #[test]
        fn escaping_matches_serde_json(s in any::<String>()) {
            prop_assert_eq!(escaped(&s), serde_json::to_string(&s).unwrap());
        }

        #[test]
        fn scanner_never_panics(s in any::<String>()) {
            let _ = object_entries(&s);
        }

        #[test]
        fn a_string_ends_where_serde_json_wrote_its_end(s in any::<String>(), tail in "[,}\\]\\\\\" ]{0,3}") {
            let written = serde_json::to_string(&s).unwrap();
            let text = format!("{written}{tail}");
            prop_assert_eq!(skip_string(text.as_bytes(), 0), Some(written.len()));
            // Cut anywhere before its closing quote, it has no end.
            for cut in 1..written.len() {
                prop_assert_eq!(skip_string(&written.as_bytes()[..cut], 0), None);
            }
        }
    }
}
