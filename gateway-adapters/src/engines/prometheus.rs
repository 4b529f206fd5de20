//! Just enough of the Prometheus text format to read an engine's load
//! gauges: `name{labels} value [timestamp]` lines; comments (`#`), blank
//! and malformed lines are skipped.

use std::borrow::Cow;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    /// The metric name (`vllm:num_requests_running`).
    pub name: &'a str,
    /// The labels, in line order, values unescaped.
    pub labels: Vec<(&'a str, Cow<'a, str>)>,
    /// The value.
    pub value: f64,
}

impl Sample<'_> {
    /// The value of label `name`, if present.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_ref())
    }
}

/// The samples of a scrape body, skipping comments and lines that do not
/// parse.
pub fn samples(text: &str) -> impl Iterator<Item = Sample<'_>> {
    text.lines().filter_map(parse_line)
}

/// The name a sample line starts with (without parsing the rest); `None`
/// for comments and blank lines.
pub fn line_name(line: &str) -> Option<&str> {
    let line = line.trim_start();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    // A byte search: the three ends are ASCII, so it cannot stop inside a
    // multi-byte character. (About as fast as a char search in a normal
    // build; under the fuzzer's instrumentation the char search cost several
    // traced comparisons per character, half the `prometheus` target's time.)
    let end = line
        .bytes()
        .position(|b| matches!(b, b'{' | b' ' | b'\t'))
        .unwrap_or(line.len());
    line.get(..end).filter(|n| !n.is_empty())
}

/// Parses one line; `None` for comments, blank and malformed lines.
pub fn parse_line(line: &str) -> Option<Sample<'_>> {
    let name = line_name(line)?;
    let line = line.trim_start();
    let mut rest = line.get(name.len()..)?;
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inner)?;
        labels = parsed;
        rest = after;
    }
    let mut fields = rest.split_ascii_whitespace();
    let value = parse_value(fields.next()?)?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

type Labels<'a> = Vec<(&'a str, Cow<'a, str>)>;

/// Parses `name="value",...}` and returns the labels and what follows `}`.
fn parse_labels(mut s: &str) -> Option<(Labels<'_>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = s.find('=')?;
        let name = s.get(..eq)?.trim();
        if name.is_empty() {
            return None;
        }
        s = s.get(eq + 1..)?.trim_start().strip_prefix('"')?;
        let (value, after) = parse_quoted(s)?;
        labels.push((name, value));
        s = after.trim_start();
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        }
    }
}

/// Reads a label value up to its closing quote (`\\`, `\"` and `\n`
/// escapes); returns it and what follows the quote.
fn parse_quoted(s: &str) -> Option<(Cow<'_, str>, &str)> {
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut owned: Option<String> = None;
    let mut start = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => {
                let value = match owned {
                    Some(mut o) => {
                        o.push_str(s.get(start..i)?);
                        Cow::Owned(o)
                    }
                    None => Cow::Borrowed(s.get(..i)?),
                };
                return Some((value, s.get(i + 1..)?));
            }
            b'\\' => {
                let o = owned.get_or_insert_with(String::new);
                o.push_str(s.get(start..i)?);
                match bytes.get(i + 1)? {
                    b'n' => o.push('\n'),
                    b'\\' => o.push('\\'),
                    b'"' => o.push('"'),
                    other => {
                        o.push('\\');
                        o.push(char::from(*other));
                    }
                }
                i += 2;
                start = i;
            }
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_labels_and_values() {
        let text = "# HELP vllm:num_requests_running Number of requests.\n\
# TYPE vllm:num_requests_running gauge\n\
vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 3.0\n\
\n\
plain_metric 7\n\
with_ts{a=\"x\"} 1.5 1712345678000\n\
escaped{a=\"q\\\"uo\\\\te\\n\", b = \"2\" ,} -2e3\n\
broken{a=\"x\" 1\n\
no_value{a=\"x\"}\n\
inf_metric +Inf\n";
        let all: Vec<Sample<'_>> = samples(text).collect();
        assert_eq!(all.len(), 5, "{all:?}");
        assert_eq!(all[0].name, "vllm:num_requests_running");
        assert_eq!(all[0].label("model_name"), Some("m"));
        assert_eq!(all[0].value, 3.0);
        assert_eq!((all[1].name, all[1].value), ("plain_metric", 7.0));
        assert!(all[1].labels.is_empty());
        assert_eq!(all[2].value, 1.5);
        assert_eq!(all[3].label("a"), Some("q\"uo\\te\n"));
        assert_eq!(all[3].label("b"), Some("2"));
        assert_eq!(all[3].value, -2000.0);
        assert!(all[4].value.is_infinite());
    }

    #[test]
    fn names_are_exact() {
        assert_eq!(
            line_name("vllm:num_requests_waiting_by_reason{reason=\"capacity\"} 0"),
            Some("vllm:num_requests_waiting_by_reason")
        );
        assert_eq!(line_name("# TYPE x gauge"), None);
        assert_eq!(line_name("   "), None);
    }

    /// The name as the character search read it before the byte search.
    fn line_name_by_chars(line: &str) -> Option<&str> {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
        line.get(..end).filter(|n| !n.is_empty())
    }

    #[test]
    fn names_end_at_ascii_delimiters_only() {
        let cases = [
            ("\u{3000}\tgpu_温度{a=\"x\"} 1", Some("gpu_温度")),
            ("na\u{a0}me 1", Some("na\u{a0}me")),
            ("é\tx 1", Some("é")),
            ("ü", Some("ü")),
            ("{a=\"x\"} 1", None),
            ("\u{2028}# comment", None),
        ];
        for (line, name) in cases {
            assert_eq!(line_name(line), name, "{line:?}");
            assert_eq!(line_name_by_chars(line), name, "{line:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn byte_search_reads_the_names_the_char_search_did(
            line in "[ \t\u{a0}\u{3000}#{}a-cé温]{0,12}"
        ) {
            proptest::prop_assert_eq!(line_name(&line), line_name_by_chars(&line));
        }
    }
}
