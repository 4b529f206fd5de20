//! The settle journal of the Redis ledger: settles that Redis has not
//! confirmed yet, kept in a bounded file (or, without a directory, in
//! memory) so that a slow or unreachable Redis never makes the gateway
//! drop a charge.
//!
//! # Format
//!
//! One line per record, appended:
//!
//! - `a <seq> <payload> <check>`: an entry (a settle or a release, as the
//!   ledger encodes it: printable ASCII without newlines);
//! - `d <seq> <check>`: the entry `seq` was applied in Redis.
//!
//! `<check>` is the first 8 bytes of the SHA-256 of the text before it, in
//! hex. Entries are fsynced before they count as durable; done records are
//! not (a lost done record replays its entry, which the ledger's settled
//! marker turns into a no-op). A line that does not end in a newline or
//! fails its check (a torn write at a crash) is skipped and counted.
//!
//! # Compaction
//!
//! When nothing is pending the file is truncated; when done records
//! outnumber the pending entries by more than [`COMPACT_SLACK`] lines, the
//! pending entries are written to a new file that replaces the old one
//! (write, fsync, rename, fsync of the directory).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The journal's file name inside its directory.
pub(crate) const FILE_NAME: &str = "ledger.journal";

/// Lines beyond the pending entries tolerated before a compaction.
pub(crate) const COMPACT_SLACK: usize = 4096;

fn check(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The line of an entry.
pub(crate) fn entry_line(seq: u64, payload: &str) -> String {
    let body = format!("a {seq} {payload}");
    let sum = check(&body);
    format!("{body} {sum}\n")
}

/// The line that marks `seq` applied.
pub(crate) fn done_line(seq: u64) -> String {
    let body = format!("d {seq}");
    let sum = check(&body);
    format!("{body} {sum}\n")
}

/// What reading a journal found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Replayed {
    /// Entries without a done record, by sequence number.
    pub(crate) pending: BTreeMap<u64, String>,
    /// One more than the highest sequence number seen (1 for none).
    pub(crate) next_seq: u64,
    /// Lines skipped: torn (no newline at the end) or failing their check.
    pub(crate) skipped: usize,
    /// Lines read, skipped ones included.
    pub(crate) lines: usize,
}

/// Reads a journal's text: the pending entries, in order.
pub(crate) fn replay(text: &str) -> Replayed {
    let mut out = Replayed {
        next_seq: 1,
        ..Replayed::default()
    };
    let mut rest = text;
    while !rest.is_empty() {
        out.lines += 1;
        let Some(end) = rest.find('\n') else {
            // A torn last line: the write never finished.
            out.skipped += 1;
            break;
        };
        let line = &rest[..end];
        rest = &rest[end + 1..];
        if !apply_line(line, &mut out) {
            out.skipped += 1;
        }
    }
    out
}

/// Applies one complete line; false when it is not a valid record.
fn apply_line(line: &str, out: &mut Replayed) -> bool {
    let Some((body, sum)) = line.rsplit_once(' ') else {
        return false;
    };
    if check(body) != sum {
        return false;
    }
    let mut parts = body.splitn(3, ' ');
    let (Some(kind), Some(seq)) = (parts.next(), parts.next()) else {
        return false;
    };
    let Ok(seq) = seq.parse::<u64>() else {
        return false;
    };
    match (kind, parts.next()) {
        ("a", Some(payload)) => {
            out.pending.insert(seq, payload.to_owned());
        }
        ("d", None) => {
            out.pending.remove(&seq);
        }
        _ => return false,
    }
    out.next_seq = out.next_seq.max(seq.saturating_add(1));
    true
}

/// The text of a compacted journal holding `pending`.
pub(crate) fn compacted<'a>(pending: impl IntoIterator<Item = (&'a u64, &'a String)>) -> String {
    pending
        .into_iter()
        .map(|(seq, payload)| entry_line(*seq, payload))
        .collect()
}

/// An opened journal, the entries pending from an earlier run, and the
/// lines skipped.
pub(crate) type Opened = (Journal, Vec<(u64, String)>, usize);

/// The journal: pending entries in memory, and (with a directory) the
/// file that keeps them across a crash.
#[derive(Debug)]
pub(crate) struct Journal {
    file: Option<(File, PathBuf)>,
    pending: BTreeMap<u64, String>,
    next_seq: u64,
    /// Lines in the file.
    lines: usize,
}

impl Journal {
    /// A journal kept only in memory (lost with the process).
    pub(crate) fn in_memory() -> Journal {
        Journal {
            file: None,
            pending: BTreeMap::new(),
            next_seq: 1,
            lines: 0,
        }
    }

    /// Opens (creating it) the journal in `dir` and compacts it. Returns it
    /// with the entries still pending from an earlier run and the number of
    /// lines skipped as torn or corrupt. The file is not locked: each
    /// replica needs a directory of its own.
    ///
    /// # Errors
    /// The directory or file cannot be made, read or written.
    pub(crate) fn open(dir: &Path) -> io::Result<Opened> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE_NAME);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let found = replay(&String::from_utf8_lossy(&bytes));
        let mut journal = Journal {
            file: Some((file, path)),
            pending: found.pending,
            next_seq: found.next_seq,
            lines: found.lines,
        };
        journal.compact()?;
        let pending = journal
            .pending
            .iter()
            .map(|(s, p)| (*s, p.clone()))
            .collect();
        Ok((journal, pending, found.skipped))
    }

    /// Whether entries survive the process.
    pub(crate) fn durable(&self) -> bool {
        self.file.is_some()
    }

    /// Entries not applied yet.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Appends the entries and fsyncs them; returns their sequence numbers
    /// and whether the file took them (they are pending in memory even when
    /// the write fails).
    pub(crate) fn append(&mut self, payloads: Vec<String>) -> (Vec<u64>, io::Result<()>) {
        let mut text = String::new();
        let mut seqs = Vec::with_capacity(payloads.len());
        for payload in payloads {
            let seq = self.next_seq;
            self.next_seq += 1;
            text.push_str(&entry_line(seq, &payload));
            self.pending.insert(seq, payload);
            seqs.push(seq);
        }
        let Some((file, _)) = self.file.as_mut() else {
            return (seqs, Ok(()));
        };
        let result = file
            .write_all(text.as_bytes())
            .and_then(|()| file.sync_data());
        self.lines += seqs.len();
        (seqs, result)
    }

    /// Marks entries applied (not synced), truncating or compacting the
    /// file when it is worth it.
    ///
    /// # Errors
    /// The file cannot be written.
    pub(crate) fn done(&mut self, seqs: &[u64]) -> io::Result<()> {
        let mut text = String::new();
        for seq in seqs {
            if self.pending.remove(seq).is_some() {
                text.push_str(&done_line(*seq));
            }
        }
        let Some((file, _)) = self.file.as_mut() else {
            return Ok(());
        };
        if self.pending.is_empty() {
            file.set_len(0)?;
            file.sync_data()?;
            self.lines = 0;
            return Ok(());
        }
        file.write_all(text.as_bytes())?;
        self.lines += seqs.len();
        if self.lines > self.pending.len() + COMPACT_SLACK {
            self.compact()?;
        }
        Ok(())
    }

    /// Rewrites the file with only the pending entries.
    fn compact(&mut self) -> io::Result<()> {
        let Some((file, path)) = self.file.as_mut() else {
            return Ok(());
        };
        if self.pending.is_empty() {
            file.set_len(0)?;
            file.sync_data()?;
            self.lines = 0;
            return Ok(());
        }
        let tmp = path.with_extension("journal.tmp");
        {
            let mut out = File::create(&tmp)?;
            out.write_all(compacted(&self.pending).as_bytes())?;
            out.sync_all()?;
        }
        std::fs::rename(&tmp, &*path)?;
        if let Some(d) = path.parent().and_then(|dir| File::open(dir).ok()) {
            let _ = d.sync_all();
        }
        *file = OpenOptions::new().read(true).append(true).open(&*path)?;
        self.lines = self.pending.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_and_done_records_replay_to_what_is_pending() {
        let text = [
            entry_line(1, "s x"),
            entry_line(2, "s y"),
            done_line(1),
            entry_line(3, "r z"),
        ]
        .concat();
        let r = replay(&text);
        assert_eq!(
            r.pending.into_iter().collect::<Vec<_>>(),
            vec![(2, "s y".to_string()), (3, "r z".to_string())]
        );
        assert_eq!((r.next_seq, r.skipped, r.lines), (4, 0, 4));
        assert_eq!(replay("").next_seq, 1);
    }

    #[test]
    fn a_torn_last_line_and_a_corrupt_line_are_skipped() {
        let full = [entry_line(1, "s a"), entry_line(2, "s b")].concat();
        // Every cut inside the second line: the first entry survives alone.
        let first = entry_line(1, "s a").len();
        for cut in first + 1..full.len() {
            let r = replay(&full[..cut]);
            assert_eq!(
                r.pending.keys().copied().collect::<Vec<_>>(),
                vec![1],
                "cut {cut}"
            );
            assert_eq!(r.skipped, 1, "cut {cut}");
        }
        // A flipped byte in the middle: that line is skipped, the rest read.
        let mut bad = [
            entry_line(1, "s a"),
            entry_line(2, "s b"),
            entry_line(3, "s c"),
        ]
        .concat();
        bad.replace_range(first + 5..first + 6, "X");
        let r = replay(&bad);
        assert_eq!(r.pending.keys().copied().collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(r.skipped, 1);
        assert_eq!(replay("garbage\n\n").skipped, 2);
    }

    #[test]
    fn compaction_keeps_exactly_the_pending_entries() {
        let text = [entry_line(5, "s a"), done_line(5), entry_line(6, "s b")].concat();
        let r = replay(&text);
        let again = replay(&compacted(&r.pending));
        assert_eq!(again.pending, r.pending);
        assert_eq!(again.next_seq, 7);
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "gateway-journal-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_file_journal_survives_reopening_and_truncates_when_empty() {
        let dir = scratch("file");
        let (mut j, old, skipped) = Journal::open(&dir).unwrap();
        assert!(old.is_empty() && skipped == 0 && j.durable());
        let seqs = j
            .append(vec!["s one".into(), "s two".into(), "r three".into()])
            .0;
        assert_eq!(seqs, vec![1, 2, 3]);
        j.done(&[2]).unwrap();
        drop(j);
        // A torn write at the end, as a crash mid-append leaves it.
        let path = dir.join(FILE_NAME);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"a 4 s fo").unwrap();
        drop(f);
        let (mut j, old, skipped) = Journal::open(&dir).unwrap();
        assert_eq!(
            old,
            vec![(1, "s one".to_string()), (3, "r three".to_string())]
        );
        assert_eq!(skipped, 1);
        assert_eq!(j.pending(), 2);
        // Compacted at open: two lines, no torn tail.
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
        assert_eq!(j.append(vec!["s four".into()]).0, vec![4]);
        j.done(&[1, 3, 4]).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        drop(j);
        let (j, old, _) = Journal::open(&dir).unwrap();
        assert!(old.is_empty());
        assert_eq!(j.pending(), 0);
        drop(j);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn many_done_records_are_compacted_away() {
        let dir = scratch("compact");
        let (mut j, _, _) = Journal::open(&dir).unwrap();
        assert!(j.append(vec!["s keep".into()]).1.is_ok());
        for _ in 0..(COMPACT_SLACK / 100 + 2) {
            let seqs = j.append((0..100).map(|i| format!("s {i}")).collect()).0;
            j.done(&seqs).unwrap();
        }
        let text = std::fs::read_to_string(dir.join(FILE_NAME)).unwrap();
        assert!(
            text.lines().count() < COMPACT_SLACK,
            "{}",
            text.lines().count()
        );
        assert_eq!(replay(&text).pending.len(), 1);
        drop(j);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_in_memory_journal_counts_pending_entries() {
        let mut j = Journal::in_memory();
        assert!(!j.durable());
        let seqs = j.append(vec!["s a".into(), "s b".into()]).0;
        j.done(&seqs[..1]).unwrap();
        assert_eq!(j.pending(), 1);
    }
}
