//! JSON the way Python's `json` module reads and writes it, on minijinja
//! values: [`parse`] is `json.loads` (objects keep their key order, as
//! Python's dicts do; integers stay integers, other numbers are floats) and
//! [`tojson`] is transformers' `tojson` filter, `json.dumps(x,
//! ensure_ascii=False, indent=indent, separators=separators,
//! sort_keys=False)`, floats written as Python's `repr` writes them.
//!
//! Differences from Python, all refused rather than rendered differently:
//! integers beyond the 128-bit range and strings with a lone surrogate
//! escape (`"\ud800"`), which Python reads and Rust strings cannot hold.

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Error, ErrorKind, Value};

/// Why a text could not be read as JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ParseError {
    /// Python's `json.loads` refuses it too.
    Invalid(String),
    /// Python reads it, but it has no value here (see the module docs).
    Unsupported(String),
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::Invalid(why) => write!(f, "invalid JSON: {why}"),
            ParseError::Unsupported(why) => write!(f, "unsupported JSON: {why}"),
        }
    }
}

/// Nesting deeper than this is refused (Python's default recursion limit
/// is about 1000 frames as well).
const MAX_DEPTH: usize = 512;

/// Reads `text` as `json.loads` does: the whole text is one JSON value,
/// with whitespace around it.
pub(super) fn parse(text: &str) -> Result<Value, ParseError> {
    let mut p = Parser {
        s: text.as_bytes(),
        text,
        i: 0,
    };
    p.ws();
    let v = p.value(0)?;
    p.ws();
    if p.i != p.s.len() {
        return Err(p.invalid("extra data"));
    }
    Ok(v)
}

struct Parser<'a> {
    s: &'a [u8],
    text: &'a str,
    i: usize,
}

impl Parser<'_> {
    fn invalid(&self, why: &str) -> ParseError {
        ParseError::Invalid(format!("{why} at byte {}", self.i))
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.s.get(self.i) {
            self.i += 1;
        }
    }

    fn eat(&mut self, lit: &str) -> bool {
        if self.s[self.i..].starts_with(lit.as_bytes()) {
            self.i += lit.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, ParseError> {
        if depth > MAX_DEPTH {
            return Err(ParseError::Unsupported("nested too deeply".into()));
        }
        match self.s.get(self.i) {
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => self.string().map(Value::from),
            Some(b'-' | b'0'..=b'9') => {
                // Python also reads the constants NaN, Infinity, -Infinity.
                if self.eat("-Infinity") {
                    return Ok(Value::from(f64::NEG_INFINITY));
                }
                self.number()
            }
            _ if self.eat("true") => Ok(Value::from(true)),
            _ if self.eat("false") => Ok(Value::from(false)),
            _ if self.eat("null") => Ok(Value::from(())),
            _ if self.eat("NaN") => Ok(Value::from(f64::NAN)),
            _ if self.eat("Infinity") => Ok(Value::from(f64::INFINITY)),
            _ => Err(self.invalid("expected a value")),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, ParseError> {
        self.i += 1;
        let mut entries: Vec<(Value, Value)> = Vec::new();
        self.ws();
        if self.eat("}") {
            return Ok(Value::from_iter(entries));
        }
        loop {
            if self.s.get(self.i) != Some(&b'"') {
                return Err(self.invalid("expected a key"));
            }
            let key = self.string()?;
            self.ws();
            if !self.eat(":") {
                return Err(self.invalid("expected ':'"));
            }
            self.ws();
            let value = self.value(depth + 1)?;
            entries.push((Value::from(key), value));
            self.ws();
            if self.eat(",") {
                self.ws();
            } else if self.eat("}") {
                // A repeated key keeps its first place and its last value,
                // as in a Python dict (and in the map built here).
                return Ok(Value::from_iter(entries));
            } else {
                return Err(self.invalid("expected ',' or '}'"));
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, ParseError> {
        self.i += 1;
        let mut items = Vec::new();
        self.ws();
        if self.eat("]") {
            return Ok(Value::from(items));
        }
        loop {
            items.push(self.value(depth + 1)?);
            self.ws();
            if self.eat(",") {
                self.ws();
            } else if self.eat("]") {
                return Ok(Value::from(items));
            } else {
                return Err(self.invalid("expected ',' or ']'"));
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.s.get(self.i) {
            self.i += 1;
        }
        self.i - start
    }

    /// `-?(0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)?`: an integer without a
    /// fraction or exponent, else a float.
    fn number(&mut self) -> Result<Value, ParseError> {
        let start = self.i;
        self.eat("-");
        match self.s.get(self.i) {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.invalid("expected a digit")),
        }
        let mut float = false;
        if self.s.get(self.i) == Some(&b'.') && matches!(self.s.get(self.i + 1), Some(b'0'..=b'9'))
        {
            self.i += 1;
            self.digits();
            float = true;
        }
        if let Some(b'e' | b'E') = self.s.get(self.i) {
            let mark = self.i;
            self.i += 1;
            if let Some(b'+' | b'-') = self.s.get(self.i) {
                self.i += 1;
            }
            if self.digits() == 0 {
                // Python stops the number before the `e` (then fails on
                // the extra data).
                self.i = mark;
            } else {
                float = true;
            }
        }
        let text = &self.text[start..self.i];
        if float {
            // Rust's parse rounds correctly, as Python's float() does; out
            // of range is ±inf in both.
            text.parse::<f64>()
                .map(Value::from)
                .map_err(|_| self.invalid("bad number"))
        } else {
            text.parse::<i128>()
                .map(Value::from)
                .map_err(|_| ParseError::Unsupported(format!("integer {text} is too large")))
        }
    }

    fn hex4(&mut self) -> Result<u32, ParseError> {
        let digits = self
            .text
            .get(self.i..self.i + 4)
            .filter(|d| d.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| self.invalid("bad \\u escape"))?;
        self.i += 4;
        u32::from_str_radix(digits, 16).map_err(|_| self.invalid("bad \\u escape"))
    }

    fn string(&mut self) -> Result<String, ParseError> {
        self.i += 1;
        let mut out = String::new();
        loop {
            let run = self.i;
            while let Some(&b) = self.s.get(self.i) {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.i += 1;
            }
            out.push_str(&self.text[run..self.i]);
            match self.s.get(self.i) {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.i += 1;
                    let Some(&e) = self.s.get(self.i) else {
                        return Err(self.invalid("unterminated string"));
                    };
                    self.i += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let c = if (0xD800..0xDC00).contains(&hi) && self.eat("\\u") {
                                let lo = self.hex4()?;
                                if (0xDC00..0xE000).contains(&lo) {
                                    char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
                                } else {
                                    None
                                }
                            } else {
                                char::from_u32(hi)
                            };
                            let Some(c) = c else {
                                return Err(ParseError::Unsupported("a lone surrogate".into()));
                            };
                            out.push(c);
                        }
                        _ => return Err(self.invalid("bad escape")),
                    }
                }
                Some(_) => return Err(self.invalid("control character in string")),
                None => return Err(self.invalid("unterminated string")),
            }
        }
    }
}

/// How [`dumps`] writes: `json.dumps`' arguments.
#[derive(Debug, Clone)]
pub(super) struct Style {
    /// Escape every non-ASCII character as `\uXXXX`.
    pub(super) ensure_ascii: bool,
    /// Pretty-print with this indentation per level.
    pub(super) indent: Option<String>,
    /// Between items and between a key and its value.
    pub(super) item_separator: String,
    pub(super) key_separator: String,
    /// Sort each object's keys.
    pub(super) sort_keys: bool,
}

impl Default for Style {
    /// transformers' `tojson` defaults.
    fn default() -> Self {
        Style {
            ensure_ascii: false,
            indent: None,
            item_separator: ", ".into(),
            key_separator: ": ".into(),
            sort_keys: false,
        }
    }
}

fn not_serializable(v: &Value) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!(
            "tojson: a value of kind {} is not JSON serializable",
            v.kind()
        ),
    )
}

/// `json.dumps(value, ...)`.
pub(super) fn dumps(value: &Value, style: &Style) -> Result<String, Error> {
    let mut out = String::new();
    write_value(&mut out, value, style, 0)?;
    Ok(out)
}

fn newline(out: &mut String, style: &Style, level: usize) {
    if let Some(indent) = &style.indent {
        out.push('\n');
        for _ in 0..level {
            out.push_str(indent);
        }
    }
}

fn write_value(out: &mut String, v: &Value, style: &Style, level: usize) -> Result<(), Error> {
    if level > MAX_DEPTH {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "tojson: nested too deeply",
        ));
    }
    match v.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&number(v)?),
        ValueKind::String => write_str(out, v.as_str().unwrap_or_default(), style.ensure_ascii),
        ValueKind::Seq => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (k, item) in items.iter().enumerate() {
                if k > 0 {
                    out.push_str(&style.item_separator);
                }
                newline(out, style, level + 1);
                write_value(out, item, style, level + 1)?;
            }
            newline(out, style, level);
            out.push(']');
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in v.try_iter()? {
                let value = v.get_item(&key)?;
                entries.push((map_key(&key)?, value));
            }
            if entries.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if style.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            out.push('{');
            for (k, (key, value)) in entries.iter().enumerate() {
                if k > 0 {
                    out.push_str(&style.item_separator);
                }
                newline(out, style, level + 1);
                write_str(out, key, style.ensure_ascii);
                out.push_str(&style.key_separator);
                write_value(out, value, style, level + 1)?;
            }
            newline(out, style, level);
            out.push('}');
        }
        _ => return Err(not_serializable(v)),
    }
    Ok(())
}

/// A key as `json.dumps` writes it: strings as they are; numbers, booleans
/// and None as their JSON text.
fn map_key(key: &Value) -> Result<String, Error> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_owned()),
        ValueKind::Number => number(key),
        ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.into()),
        ValueKind::None => Ok("null".into()),
        _ => Err(not_serializable(key)),
    }
}

fn number(v: &Value) -> Result<String, Error> {
    if v.is_integer() {
        // Display of an integer value is its decimal digits.
        Ok(v.to_string())
    } else {
        let f = f64::try_from(v.clone())?;
        Ok(match float_repr(f).as_str() {
            "nan" => "NaN".into(),
            "inf" => "Infinity".into(),
            "-inf" => "-Infinity".into(),
            repr => repr.to_owned(),
        })
    }
}

/// A float as Python's `repr` (and `str`) writes it: the shortest digits
/// that read back to it, positional when the decimal exponent is in
/// -4..16, else `d.ddde±XX`; `nan`, `inf`, `-inf`.
pub(super) fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.into();
    }
    let sign = if f.is_sign_negative() { "-" } else { "" };
    if f == 0.0 {
        return format!("{sign}0.0");
    }
    // Rust's `{:e}` gives the shortest round-trip digits, as Python's repr.
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let n = digits.len() as i32;
    // The point sits after `decpt` digits.
    let decpt = exp + 1;
    if -4 < decpt && decpt <= 16 {
        if decpt <= 0 {
            format!(
                "{sign}0.{}{digits}",
                "0".repeat(decpt.unsigned_abs() as usize)
            )
        } else if decpt >= n {
            format!(
                "{sign}{digits}{}.0",
                "0".repeat((decpt - n).unsigned_abs() as usize)
            )
        } else {
            let (int, frac) = digits.split_at(decpt.unsigned_abs() as usize);
            format!("{sign}{int}.{frac}")
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let dot = if rest.is_empty() { "" } else { "." };
        let e = decpt - 1;
        let esign = if e < 0 { '-' } else { '+' };
        format!("{sign}{first}{dot}{rest}e{esign}{:02}", e.unsigned_abs())
    }
}

fn write_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if c < ' ' || (ensure_ascii && !(' '..='~').contains(&c)) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// transformers' `tojson` filter: `tojson(x, ensure_ascii=False,
/// indent=None, separators=None, sort_keys=False)`, positionally or by
/// name. `indent` is a number of spaces or a string; with it the item
/// separator defaults to `","`.
#[expect(
    clippy::needless_pass_by_value,
    reason = "minijinja hands filters their keyword arguments by value"
)]
pub(super) fn tojson(value: &Value, args: &[Value], kwargs: Kwargs) -> Result<String, Error> {
    if args.len() > 4 {
        return Err(Error::from(ErrorKind::TooManyArguments));
    }
    const NAMES: [&str; 4] = ["ensure_ascii", "indent", "separators", "sort_keys"];
    let mut given: [Option<Value>; 4] = Default::default();
    for (k, name) in NAMES.iter().enumerate() {
        given[k] = match args.get(k) {
            Some(v) => {
                if kwargs.has(name) {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        format!("tojson: {name} given twice"),
                    ));
                }
                Some(v.clone())
            }
            None => kwargs.get::<Option<Value>>(name)?,
        }
        .filter(|v| !v.is_none() && !v.is_undefined());
    }
    let [ensure_ascii, indent, separators, sort_keys] = given;
    let ensure_ascii = ensure_ascii.is_some_and(|v| v.is_true());
    let sort_keys = sort_keys.is_some_and(|v| v.is_true());
    kwargs.assert_all_used()?;
    let mut style = Style {
        ensure_ascii,
        sort_keys,
        ..Style::default()
    };
    if let Some(indent) = indent {
        style.indent = Some(match indent.as_str() {
            Some(s) => s.to_owned(),
            None if indent.is_integer() => {
                let n = i64::try_from(indent)?;
                " ".repeat(usize::try_from(n).unwrap_or(0))
            }
            None => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an integer or a string",
                ));
            }
        });
        style.item_separator = ",".into();
    }
    if let Some(separators) = separators {
        let pair: Vec<Value> = separators.try_iter()?.collect();
        match pair.as_slice() {
            [item, key] if item.as_str().is_some() && key.as_str().is_some() => {
                style.item_separator = item.as_str().unwrap_or_default().to_owned();
                style.key_separator = key.as_str().unwrap_or_default().to_owned();
            }
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: separators must be two strings",
                ));
            }
        }
    }
    dumps(value, &style)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(text: &str) -> String {
        dumps(&parse(text).unwrap(), &Style::default()).unwrap()
    }

    #[test]
    fn floats_read_like_python_repr() {
        // Expected values: Python 3.11, repr(float(x)).
        let cases = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (2.5, "2.5"),
            (-273.15, "-273.15"),
            (0.001, "0.001"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (123456789012345.6, "123456789012345.6"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.25e16, "1.25e+16"),
            (1e300, "1e+300"),
            (0.1 + 0.2, "0.30000000000000004"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (f64::NAN, "nan"),
        ];
        for (f, want) in cases {
            assert_eq!(float_repr(f), want, "{f:e}");
        }
    }

    #[test]
    fn parses_like_json_loads() {
        // Key order kept; repeated keys keep the first place, the last value.
        assert_eq!(
            roundtrip(r#" {"b": 1, "a": [true, null, 1.0, -0, 1E2], "b": "x"} "#),
            r#"{"b": "x", "a": [true, null, 1.0, 0, 100.0]}"#
        );
        assert_eq!(
            roundtrip(r#"[170141183460469231731687303715884105727, -5e-1]"#),
            "[170141183460469231731687303715884105727, -0.5]"
        );
        assert_eq!(roundtrip(r#""\u00e9\ud83e\udd80\n\/""#), "\"é🦀\\n/\"");
        assert_eq!(
            roundtrip("[NaN, -Infinity, 1e400]"),
            "[NaN, -Infinity, Infinity]"
        );
        for bad in [
            "",
            "{",
            "[1,]",
            "01",
            "1.",
            ".5",
            "\"a\nb\"",
            "{\"a\" 1}",
            "[1] x",
            "tru",
        ] {
            assert!(matches!(parse(bad), Err(ParseError::Invalid(_))), "{bad:?}");
        }
        for unsupported in [r#""\ud800""#, "1701411834604692317316873037158841057280"] {
            assert!(
                matches!(parse(unsupported), Err(ParseError::Unsupported(_))),
                "{unsupported:?}"
            );
        }
    }

    #[test]
    fn strings_escape_like_json_dumps() {
        let style = Style::default();
        let s = Value::from("é\"\\\u{1}\u{7f}\t🦀");
        assert_eq!(
            dumps(&s, &style).unwrap(),
            "\"é\\\"\\\\\\u0001\u{7f}\\t🦀\""
        );
        let ascii = Style {
            ensure_ascii: true,
            ..Style::default()
        };
        assert_eq!(
            dumps(&s, &ascii).unwrap(),
            "\"\\u00e9\\\"\\\\\\u0001\\u007f\\t\\ud83e\\udd80\""
        );
    }
}
