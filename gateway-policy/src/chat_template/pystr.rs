//! What Jinja2 prints for `{{ x }}`: Python's `str(x)`. `True`/`False`,
//! `None`, floats as `repr`, lists and dicts as their `repr` (`['a', 1]`,
//! `{'k': None}`), where minijinja would write `true`, `none`, `["a", 1]`.
//!
//! Only the output of `{{ }}` is Python's; `~` and the `string` filter
//! still convert with minijinja's spelling. A string inside a printed list
//! or dict is quoted and escaped as Python's `repr` does, with one
//! approximation: Python also escapes unassigned code points, which are
//! kept here (no Unicode tables).

use std::fmt::Write;

use minijinja::value::ValueKind;
use minijinja::{Error, Output, State, Value};

use super::pyjson::float_repr;

/// The template's formatter: `{{ x }}` writes `str(x)`.
pub(super) fn format(
    out: &mut Output<'_>,
    _state: &State<'_, '_>,
    value: &Value,
) -> Result<(), Error> {
    let text = match value.kind() {
        // Jinja2's Undefined prints as nothing, as minijinja's does.
        ValueKind::Undefined => return Ok(()),
        ValueKind::String => return write(out, value.as_str().unwrap_or_default()),
        _ => py_str(value, 0),
    };
    write(out, &text)
}

fn write(out: &mut Output<'_>, text: &str) -> Result<(), Error> {
    out.write_str(text).map_err(Error::from)
}

/// Containers nested deeper than this print as `...` (Python raises).
const MAX_DEPTH: usize = 256;

/// `str(value)`.
fn py_str(value: &Value, depth: usize) -> String {
    match value.kind() {
        ValueKind::String => value.as_str().unwrap_or_default().to_owned(),
        _ => py_repr(value, depth),
    }
}

/// `repr(value)`.
fn py_repr(value: &Value, depth: usize) -> String {
    if depth > MAX_DEPTH {
        return "...".into();
    }
    match value.kind() {
        ValueKind::Undefined => "Undefined".into(),
        ValueKind::None => "None".into(),
        ValueKind::Bool => if value.is_true() { "True" } else { "False" }.into(),
        ValueKind::Number if value.is_integer() => value.to_string(),
        ValueKind::Number => {
            f64::try_from(value.clone()).map_or_else(|_| value.to_string(), float_repr)
        }
        ValueKind::String => str_repr(value.as_str().unwrap_or_default()),
        ValueKind::Seq => {
            let items: Vec<String> = value
                .try_iter()
                .map(|it| it.map(|v| py_repr(&v, depth + 1)).collect())
                .unwrap_or_default();
            format!("[{}]", items.join(", "))
        }
        ValueKind::Map => {
            let mut items = Vec::new();
            if let Ok(keys) = value.try_iter() {
                for key in keys {
                    let v = value.get_item(&key).unwrap_or_default();
                    items.push(format!(
                        "{}: {}",
                        py_repr(&key, depth + 1),
                        py_repr(&v, depth + 1)
                    ));
                }
            }
            format!("{{{}}}", items.join(", "))
        }
        _ => value.to_string(),
    }
}

/// Python's `str.isprintable()` for a non-ASCII character, without
/// Unicode tables: false for the separators, format characters, C1
/// controls and private-use characters, true otherwise.
fn printable(c: char) -> bool {
    !matches!(
        c as u32,
        0x80..=0xA0
            | 0xAD
            | 0x061C
            | 0x1680
            | 0x180E
            | 0x2000..=0x200F
            | 0x2028..=0x202F
            | 0x205F..=0x2064
            | 0x2066..=0x206F
            | 0x3000
            | 0xE000..=0xF8FF
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0xFFFE..=0xFFFF
            | 0xE0001
            | 0xE0020..=0xE007F
            | 0xF0000..
    )
}

/// `repr(s)` of a Python string.
fn str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            c if c == quote || c == '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c < ' ' || c == '\x7f' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_ascii() || printable(c) => out.push(c),
            c => {
                let n = c as u32;
                let _ = match n {
                    0..=0xFF => write!(out, "\\x{n:02x}"),
                    0x100..=0xFFFF => write!(out, "\\u{n:04x}"),
                    _ => write!(out, "\\U{n:08x}"),
                };
            }
        }
    }
    out.push(quote);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_repr_like_python() {
        // Expected: Python 3.11 repr().
        let cases = [
            ("plain", "'plain'"),
            ("it's", "\"it's\""),
            ("it's \"q\"", "'it\\'s \"q\"'"),
            ("a\\b\tc\nd\re\u{1}\u{7f}", "'a\\\\b\\tc\\nd\\re\\x01\\x7f'"),
            ("é東京🦀", "'é東京🦀'"),
            (
                "\u{a0}\u{ad}\u{200b}\u{feff}\u{e000}\u{f0000}",
                "'\\xa0\\xad\\u200b\\ufeff\\ue000\\U000f0000'",
            ),
        ];
        for (s, want) in cases {
            assert_eq!(str_repr(s), want, "{s:?}");
        }
    }
}
