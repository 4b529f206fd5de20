//! Walking a parsed TOML table by hand: typed accessors that record a
//! [`ConfigProblem`] with the key's path instead of stopping at the first
//! error.

use toml::Value;

use super::ConfigProblem;

/// Marks a value that was invalid; its problem is already recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Reported;

/// The outcome of reading one key: the value, or [`Reported`].
pub(super) type Check<T> = Result<T, Reported>;

/// The problems found so far, in the order they were found.
#[derive(Debug, Default)]
pub(super) struct Problems(Vec<ConfigProblem>);

impl Problems {
    /// Records a problem at `path`.
    pub(super) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigProblem {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Records a problem and returns [`Reported`], for `return Err(...)`.
    pub(super) fn report(
        &mut self,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Reported {
        self.push(path, message);
        Reported
    }

    /// Whether nothing was found.
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The problems, in order.
    pub(super) fn into_vec(self) -> Vec<ConfigProblem> {
        self.0
    }
}

/// `parent.key`, quoting `key` when it is not a bare TOML key.
pub(super) fn join(parent: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key = if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

/// `parent[index]`.
pub(super) fn index(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

/// The article and name of a TOML value's type, for messages.
pub(super) fn kind(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a datetime",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// `expected X, found Y`.
pub(super) fn wrong_type(expected: &str, found: &Value) -> String {
    format!("expected {expected}, found {}", kind(found))
}

/// One TOML table being read, with its path. Unknown keys are reported
/// when it is opened.
#[derive(Debug, Clone)]
pub(super) struct Reader<'a> {
    table: &'a toml::Table,
    path: String,
}

impl<'a> Reader<'a> {
    /// Opens `table` at `path`, reporting every key not in `known`.
    pub(super) fn open(
        table: &'a toml::Table,
        path: impl Into<String>,
        known: &[&str],
        problems: &mut Problems,
    ) -> Self {
        let path = path.into();
        for key in table.keys() {
            if !known.contains(&key.as_str()) {
                let message = match suggest(key, known) {
                    Some(close) => format!("unknown key (did you mean `{close}`?)"),
                    None => "unknown key".to_owned(),
                };
                problems.push(join(&path, key), message);
            }
        }
        Reader { table, path }
    }

    /// The table's own path.
    pub(super) fn path(&self) -> &str {
        &self.path
    }

    /// The path of `key` in this table.
    pub(super) fn key_path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// Whether `key` is present.
    pub(super) fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    /// The raw value of `key`.
    pub(super) fn raw(&self, key: &str) -> Option<&'a Value> {
        self.table.get(key)
    }

    /// A required value: reports `missing required key` when absent.
    pub(super) fn required<T>(
        &self,
        key: &str,
        value: Check<Option<T>>,
        problems: &mut Problems,
    ) -> Check<T> {
        match value? {
            Some(v) => Ok(v),
            None => Err(problems.report(self.key_path(key), "missing required key")),
        }
    }

    /// A string.
    pub(super) fn string(&self, key: &str, problems: &mut Problems) -> Check<Option<&'a str>> {
        match self.table.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(problems.report(self.key_path(key), wrong_type("a string", other))),
        }
    }

    /// A non-empty string.
    pub(super) fn non_empty(&self, key: &str, problems: &mut Problems) -> Check<Option<&'a str>> {
        match self.string(key, problems)? {
            Some("") => Err(problems.report(self.key_path(key), "must not be empty")),
            other => Ok(other),
        }
    }

    /// A boolean.
    pub(super) fn boolean(&self, key: &str, problems: &mut Problems) -> Check<Option<bool>> {
        match self.table.get(key) {
            None => Ok(None),
            Some(Value::Boolean(b)) => Ok(Some(*b)),
            Some(other) => Err(problems.report(self.key_path(key), wrong_type("a boolean", other))),
        }
    }

    /// An integer in `min..=max`.
    pub(super) fn integer(
        &self,
        key: &str,
        min: i64,
        max: i64,
        problems: &mut Problems,
    ) -> Check<Option<i64>> {
        match self.table.get(key) {
            None => Ok(None),
            Some(Value::Integer(n)) if *n < min => Err(problems.report(
                self.key_path(key),
                format!("must be at least {min}, found {n}"),
            )),
            Some(Value::Integer(n)) if *n > max => Err(problems.report(
                self.key_path(key),
                format!("must be at most {max}, found {n}"),
            )),
            Some(Value::Integer(n)) => Ok(Some(*n)),
            Some(other) => {
                Err(problems.report(self.key_path(key), wrong_type("an integer", other)))
            }
        }
    }

    /// A `u32` of at least `min`.
    pub(super) fn u32(&self, key: &str, min: u32, problems: &mut Problems) -> Check<Option<u32>> {
        let n = self.integer(key, i64::from(min), i64::from(u32::MAX), problems)?;
        Ok(n.and_then(|n| u32::try_from(n).ok()))
    }

    /// A `u64` of at least `min` (TOML integers end at `i64::MAX`).
    pub(super) fn u64(&self, key: &str, min: u32, problems: &mut Problems) -> Check<Option<u64>> {
        let n = self.integer(key, i64::from(min), i64::MAX, problems)?;
        Ok(n.and_then(|n| u64::try_from(n).ok()))
    }

    /// A finite number (integer or float) in `min..=max`.
    pub(super) fn number(
        &self,
        key: &str,
        min: f64,
        max: f64,
        problems: &mut Problems,
    ) -> Check<Option<f64>> {
        let n = match self.table.get(key) {
            None => return Ok(None),
            Some(Value::Float(f)) => *f,
            Some(Value::Integer(i)) => *i as f64,
            Some(other) => {
                return Err(problems.report(self.key_path(key), wrong_type("a number", other)));
            }
        };
        if !n.is_finite() {
            Err(problems.report(
                self.key_path(key),
                format!("must be a finite number, found {n}"),
            ))
        } else if n < min {
            Err(problems.report(
                self.key_path(key),
                format!("must be at least {min}, found {n}"),
            ))
        } else if n > max {
            Err(problems.report(
                self.key_path(key),
                format!("must be at most {max}, found {n}"),
            ))
        } else {
            Ok(Some(n))
        }
    }

    /// A table.
    pub(super) fn table(
        &self,
        key: &str,
        problems: &mut Problems,
    ) -> Check<Option<&'a toml::Table>> {
        match self.table.get(key) {
            None => Ok(None),
            Some(Value::Table(t)) => Ok(Some(t)),
            Some(other) => Err(problems.report(self.key_path(key), wrong_type("a table", other))),
        }
    }

    /// An array.
    pub(super) fn array(&self, key: &str, problems: &mut Problems) -> Check<Option<&'a [Value]>> {
        match self.table.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a.as_slice())),
            Some(other) => Err(problems.report(self.key_path(key), wrong_type("an array", other))),
        }
    }

    /// An array of strings, each element's problem reported at its index.
    pub(super) fn strings(
        &self,
        key: &str,
        problems: &mut Problems,
    ) -> Check<Option<Vec<(String, &'a str)>>> {
        let Some(items) = self.array(key, problems)? else {
            return Ok(None);
        };
        let base = self.key_path(key);
        let mut out = Vec::with_capacity(items.len());
        let mut bad = false;
        for (i, item) in items.iter().enumerate() {
            match item {
                Value::String(s) => out.push((index(&base, i), s.as_str())),
                other => {
                    problems.push(index(&base, i), wrong_type("a string", other));
                    bad = true;
                }
            }
        }
        if bad { Err(Reported) } else { Ok(Some(out)) }
    }

    /// An array of tables (`[[key]]`), each with its path; elements that
    /// are not tables are reported and skipped.
    pub(super) fn tables(
        &self,
        key: &str,
        problems: &mut Problems,
    ) -> Check<Option<Vec<(String, &'a toml::Table)>>> {
        let base = self.key_path(key);
        let items = match self.table.get(key) {
            None => return Ok(None),
            Some(Value::Array(a)) => a,
            Some(other) => {
                let expected = format!("an array of tables ([[{key}]])");
                return Err(problems.report(base, wrong_type(&expected, other)));
            }
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match item {
                Value::Table(t) => out.push((index(&base, i), t)),
                other => problems.push(index(&base, i), wrong_type("a table", other)),
            }
        }
        Ok(Some(out))
    }
}

/// The known key closest to an unknown one, if it is plausibly a typo.
fn suggest<'k>(unknown: &str, known: &[&'k str]) -> Option<&'k str> {
    let lower = unknown.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (edit_distance(&lower, k), *k))
        .filter(|(d, k)| *d <= 2 && *d < k.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == *cb {
                diagonal
            } else {
                1 + diagonal.min(above).min(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_quote_keys_that_are_not_bare() {
        assert_eq!(join("", "server"), "server");
        assert_eq!(join("server", "listen"), "server.listen");
        assert_eq!(join("server", "a b"), "server.\"a b\"");
        assert_eq!(join("server", ""), "server.\"\"");
        assert_eq!(index("tenants", 3), "tenants[3]");
    }

    #[test]
    fn suggestions_catch_typos_only() {
        let known = ["listen", "admin_key", "max_body_bytes"];
        assert_eq!(suggest("lisen", &known), Some("listen"));
        assert_eq!(suggest("Admin_Key", &known), Some("admin_key"));
        assert_eq!(suggest("colour", &known), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "ab"), 2);
    }
}
