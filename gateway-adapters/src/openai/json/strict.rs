//! A strict, validating reader of JSON over a byte cursor, for hand-written
//! fast paths that fall back to `serde_json` on anything they do not fully
//! understand (the engines' streamed chunks: `engines::openai_compat`).
//!
//! Each method reads one piece of JSON at the cursor and returns `None`
//! where the text is not exactly that piece. What it accepts, `serde_json`
//! reads the same way: strings are unescaped as `serde_json` does (a
//! control character or an unpaired surrogate is refused, as it refuses
//! them), integers are plain unsigned decimals in range (no sign, fraction
//! or exponent), and a skipped scalar is checked against JSON's grammar.
//! It may refuse more than `serde_json` (keys with escapes, nested values
//! where a scalar is skipped); the caller then falls back. Work is linear
//! in the text: every byte is looked at a bounded number of times.

use super::skip_ws;

/// A cursor over JSON text.
#[derive(Debug)]
pub(crate) struct Strict<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Strict<'a> {
    /// At the start of `text`.
    pub(crate) fn new(text: &'a str) -> Self {
        Strict { text, at: 0 }
    }

    /// At byte `at` of `text`.
    pub(crate) fn starting_at(text: &'a str, at: usize) -> Self {
        Strict { text, at }
    }

    /// The cursor's byte offset.
    pub(crate) fn offset(&self) -> usize {
        self.at
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.at).copied()
    }

    /// Skips JSON whitespace (space, tab, line feed, carriage return).
    pub(crate) fn ws(&mut self) {
        self.at = skip_ws(self.bytes(), self.at);
    }

    /// Whether the cursor is past the last byte.
    pub(crate) fn at_end(&self) -> bool {
        self.at >= self.text.len()
    }

    /// Takes `byte` if it is next.
    fn eat(&mut self, byte: u8) -> bool {
        let next = self.peek() == Some(byte);
        self.at += usize::from(next);
        next
    }

    /// Takes `word` if it is next.
    fn eat_word(&mut self, word: &[u8]) -> bool {
        let next = self
            .bytes()
            .get(self.at..)
            .is_some_and(|b| b.starts_with(word));
        if next {
            self.at += word.len();
        }
        next
    }

    /// Takes `null` if it is next.
    pub(crate) fn null(&mut self) -> bool {
        self.eat_word(b"null")
    }

    /// The members of the object that starts at the cursor: `member` gets
    /// each key (its raw bytes; a key with an escape is refused) with the
    /// cursor on the value, and must read the value. Whitespace anywhere
    /// JSON allows it.
    pub(crate) fn object(
        &mut self,
        mut member: impl FnMut(&'a [u8], &mut Self) -> Option<()>,
    ) -> Option<()> {
        if !self.eat(b'{') {
            return None;
        }
        self.ws();
        if self.eat(b'}') {
            return Some(());
        }
        loop {
            let key = self.key()?;
            self.ws();
            if !self.eat(b':') {
                return None;
            }
            self.ws();
            member(key, self)?;
            self.ws();
            if self.eat(b',') {
                self.ws();
            } else if self.eat(b'}') {
                return Some(());
            } else {
                return None;
            }
        }
    }

    /// The items of the array that starts at the cursor: `item` is called
    /// with the cursor on each one and must read it.
    pub(crate) fn array(&mut self, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        if !self.eat(b'[') {
            return None;
        }
        self.ws();
        if self.eat(b']') {
            return Some(());
        }
        loop {
            item(self)?;
            self.ws();
            if self.eat(b',') {
                self.ws();
            } else if self.eat(b']') {
                return Some(());
            } else {
                return None;
            }
        }
    }

    /// A key without escapes: its bytes between the quotes.
    fn key(&mut self) -> Option<&'a [u8]> {
        if !self.eat(b'"') {
            return None;
        }
        let bytes = self.bytes();
        let start = self.at;
        let end = string_stop(bytes, start);
        if bytes.get(end) != Some(&b'"') {
            return None;
        }
        self.at = end + 1;
        bytes.get(start..end)
    }

    /// The string at the cursor, unescaped.
    pub(crate) fn string(&mut self) -> Option<String> {
        let (raw, escaped) = self.scan_string()?;
        if escaped {
            unescape(raw)
        } else {
            Some(raw.to_owned())
        }
    }

    /// `null` as `None`, else the string at the cursor.
    pub(crate) fn nullable_string(&mut self) -> Option<Option<String>> {
        if self.null() {
            Some(None)
        } else {
            self.string().map(Some)
        }
    }

    /// Checks the string at the cursor and moves past it: its text between
    /// the quotes, raw, and whether it holds an escape.
    fn scan_string(&mut self) -> Option<(&'a str, bool)> {
        if !self.eat(b'"') {
            return None;
        }
        let bytes = self.bytes();
        let start = self.at;
        let mut i = start;
        let mut escaped = false;
        loop {
            i = string_stop(bytes, i);
            match *bytes.get(i)? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    i = escape_end(bytes, i)?;
                }
                _ => return None,
            }
        }
        self.at = i + 1;
        // Quotes and backslashes are ASCII: both ends are char boundaries.
        Some((self.text.get(start..i)?, escaped))
    }

    /// The unsigned integer at the cursor: digits only, no leading zero,
    /// not followed by a fraction or exponent, at most `u64::MAX`.
    pub(crate) fn u64(&mut self) -> Option<u64> {
        let bytes = self.bytes();
        let start = self.at;
        let mut i = start;
        let mut n: u64 = 0;
        while let Some(&b) = bytes.get(i) {
            if !b.is_ascii_digit() {
                break;
            }
            n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
            i += 1;
        }
        let digits = i - start;
        if digits == 0
            || (digits > 1 && bytes.get(start) == Some(&b'0'))
            || matches!(bytes.get(i), Some(b'.' | b'e' | b'E'))
        {
            return None;
        }
        self.at = i;
        Some(n)
    }

    /// The integer at the cursor as a `u32` (see [`Strict::u64`]).
    pub(crate) fn u32(&mut self) -> Option<u32> {
        let at = self.at;
        let n = u32::try_from(self.u64()?).ok();
        if n.is_none() {
            self.at = at;
        }
        n
    }

    /// `null` as `None`, else the integer at the cursor.
    pub(crate) fn nullable_u64(&mut self) -> Option<Option<u64>> {
        if self.null() {
            Some(None)
        } else {
            self.u64().map(Some)
        }
    }

    /// Moves past the scalar at the cursor (string, number, `true`,
    /// `false`, `null`), checking it; an object or array is refused.
    pub(crate) fn skip_scalar(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.scan_string().map(drop),
            b'n' => self.null().then_some(()),
            b't' => self.eat_word(b"true").then_some(()),
            b'f' => self.eat_word(b"false").then_some(()),
            b'-' | b'0'..=b'9' => self.skip_number(),
            _ => None,
        }
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn skip_number(&mut self) -> Option<()> {
        self.eat(b'-');
        if !self.eat(b'0') {
            if !matches!(self.peek(), Some(b'1'..=b'9')) {
                return None;
            }
            self.digits();
        }
        if self.eat(b'.') && self.digits() == 0 {
            return None;
        }
        if self.eat(b'e') || self.eat(b'E') {
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            if self.digits() == 0 {
                return None;
            }
        }
        Some(())
    }

    /// Moves past the digits at the cursor; how many.
    fn digits(&mut self) -> usize {
        let start = self.at;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
        self.at - start
    }
}

/// The index of the first byte from `at` on that ends a string's plain
/// run: a quote, a backslash or a control character (below 0x20); the
/// length if none. Eight bytes at a time (the bit tricks of "Bit Twiddling
/// Hacks", as `serde_json` scans strings): a flag marks the first such byte
/// of a word exactly (wrong flags can only follow a right one).
fn string_stop(bytes: &[u8], mut at: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    while let Some(word) = bytes.get(at..at + 8) {
        let Ok(word) = <[u8; 8]>::try_from(word) else {
            break;
        };
        let x = u64::from_le_bytes(word);
        let quote = x ^ (ONES * u64::from(b'"'));
        let backslash = x ^ (ONES * u64::from(b'\\'));
        let flags = (quote.wrapping_sub(ONES) & !quote
            | backslash.wrapping_sub(ONES) & !backslash
            | x.wrapping_sub(ONES * 0x20) & !x)
            & HIGH;
        if flags != 0 {
            // At most 7: the cast cannot truncate.
            return at + (flags.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    while let Some(&b) = bytes.get(at) {
        if b == b'"' || b == b'\\' || b < 0x20 {
            break;
        }
        at += 1;
    }
    at
}

/// `at` is on a backslash inside a string: the index just past its escape,
/// if the escape is one `serde_json` reads into a `String` (a `\u` high
/// surrogate must be followed by a `\u` low one; a lone low one is
/// refused).
fn escape_end(bytes: &[u8], at: usize) -> Option<usize> {
    match bytes.get(at + 1)? {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(at + 2),
        b'u' => match hex4(bytes, at + 2)? {
            0xD800..=0xDBFF => {
                if bytes.get(at + 6..at + 8)? != b"\\u" {
                    return None;
                }
                matches!(hex4(bytes, at + 8)?, 0xDC00..=0xDFFF).then_some(at + 12)
            }
            0xDC00..=0xDFFF => None,
            _ => Some(at + 6),
        },
        _ => None,
    }
}

/// The four hex digits at `at` (either case).
fn hex4(bytes: &[u8], at: usize) -> Option<u32> {
    let mut n = 0;
    for &b in bytes.get(at..at + 4)? {
        n = n << 4 | char::from(b).to_digit(16)?;
    }
    Some(n)
}

/// The text of a string checked by `scan_string` (between the quotes,
/// escapes in it), unescaped.
fn unescape(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes.get(i) != Some(&b'\\') {
            i += 1;
            continue;
        }
        out.push_str(raw.get(start..i)?);
        let end = escape_end(bytes, i)?;
        let c = match bytes.get(i + 1)? {
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let high = hex4(bytes, i + 2)?;
                let code = if end == i + 12 {
                    0x10000 + ((high - 0xD800) << 10 | (hex4(bytes, i + 8)? - 0xDC00))
                } else {
                    high
                };
                char::from_u32(code)?
            }
            &other => char::from(other),
        };
        out.push(c);
        i = end;
        start = end;
    }
    out.push_str(raw.get(start..)?);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The string the strict reader reads from `json` (the whole text).
    fn strict_string(json: &str) -> Option<String> {
        let mut c = Strict::new(json);
        let s = c.string()?;
        c.at_end().then_some(s)
    }

    #[test]
    fn strings_unescape_like_serde_json() {
        for json in [
            r#""""#,
            r#""plain café 🙂""#,
            r#""q\"b\\s\/\b\f\n\r\t""#,
            r#""\u0000\u001f\u00e9\u00E9\u20ac""#,
            r#""\ud83d\ude42 and \uD83D\uDE42""#,
            r#""a\\u0041""#,
        ] {
            let want: String = serde_json::from_str(json).unwrap();
            assert_eq!(strict_string(json), Some(want), "{json}");
        }
        // serde_json refuses each of these as a `String`: so does this.
        for json in [
            "\"a\u{1}b\"",
            "\"tab\tin\"",
            r#""\ud83d""#,
            r#""\ud83d x""#,
            r#""\ud83d\u0041""#,
            r#""\ude42""#,
            r#""\x41""#,
            r#""\u00g1""#,
            r#""\u00e""#,
            r#""open"#,
            r#""\"#,
        ] {
            assert!(serde_json::from_str::<String>(json).is_err(), "{json}");
            assert_eq!(strict_string(json), None, "{json}");
        }
    }

    #[test]
    fn integers_are_plain_unsigned_decimals_in_range() {
        let read = |text: &str| {
            let mut c = Strict::new(text);
            let n = c.u64();
            (n, c.at)
        };
        assert_eq!(read("0"), (Some(0), 1));
        assert_eq!(read("18446744073709551615,"), (Some(u64::MAX), 20));
        for text in [
            "18446744073709551616",
            "01",
            "-1",
            "1.0",
            "1e2",
            "1E2",
            "",
            "x",
        ] {
            assert_eq!(read(text), (None, 0), "{text}");
        }
        let mut c = Strict::new("4294967296");
        assert_eq!((c.u32(), c.at), (None, 0));
        let mut c = Strict::new("4294967295");
        assert_eq!(c.u32(), Some(u32::MAX));
    }

    #[test]
    fn skipped_scalars_follow_the_grammar() {
        let skips = |text: &str| {
            let mut c = Strict::new(text);
            c.skip_scalar().is_some() && c.at_end()
        };
        for text in [
            "0", "-0", "12", "-1.5e3", "1E+2", "2e-0", "0.25", "true", "false", "null", r#""s\n""#,
        ] {
            assert!(skips(text), "{text}");
            assert!(serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok());
        }
        for text in [
            "01", "-", "1.", ".5", "1e", "1e+", "+1", "nul", "tru", "[]", "{}", "\"a",
        ] {
            assert!(!skips(text), "{text}");
        }
    }

    proptest! {
        /// Any string, escaped the way serde_json writes it or with every
        /// character as `\u` escapes (surrogate pairs beyond the BMP, either
        /// hex case): read back exactly.
        #[test]
        fn strings_round_trip(s in any::<String>(), upper in any::<bool>()) {
            let plain = serde_json::to_string(&s).unwrap();
            prop_assert_eq!(strict_string(&plain), Some(s.clone()));
            let mut all = String::from("\"");
            for unit in s.encode_utf16() {
                all.push_str(&if upper { format!("\\u{unit:04X}") } else { format!("\\u{unit:04x}") });
            }
            all.push('"');
            prop_assert_eq!(strict_string(&all), Some(s));
        }

        /// The word-at-a-time scan stops where a byte-at-a-time one does.
        #[test]
        fn string_stop_is_the_first_stop_byte(
            bytes in proptest::collection::vec(prop_oneof![3 => b' '..=0x7f_u8, 1 => any::<u8>()], 0..40),
            at in 0usize..40,
        ) {
            let want = (at..bytes.len())
                .find(|&i| matches!(bytes[i], b'"' | b'\\' | 0..=0x1f))
                .unwrap_or(bytes.len().max(at));
            prop_assert_eq!(string_stop(&bytes, at), want);
        }

        /// On any text, a string read is what serde_json reads.
        #[test]
        fn strings_agree_with_serde_json(s in "\"([^\"\\\\]|\\\\[\"\\\\/bfnrtux0-9a-fA-FdD]){0,12}\"?") {
            if let Some(got) = strict_string(&s) {
                prop_assert_eq!(Some(got), serde_json::from_str::<String>(&s).ok());
            }
        }
    }
}
