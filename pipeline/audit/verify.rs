//! Verifying the audit log: walk every line, check each entry's hash against its bytes
//! and its place in the chain, compare the tail with the head file, and name the first
//! bad entry.
//!
//! Owns the classification of damage ([`TamperKind`]): a line that is not JSON, an edited
//! entry (its bytes do not match its hash), an entry rewritten with a fresh hash (the next
//! entry, or the head file, still vouches for the original), an inserted entry (its
//! neighbours chain past it), removed entries (a gap in `seq`), reordered entries, and a
//! tail that was cut off or rewritten (only the head file can show those). What a crash
//! explains ([`Interrupted`]: a torn last line, a head file one entry behind) is reported
//! apart, as interrupted rather than tampered, by the same rule the writer repairs it
//! by. It only reads: it never repairs a log. Danger: a line of a tampered log may hold anything, so reports
//! never quote a line's values, only line numbers, `seq` and what is wrong.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::error::{AuditError, Interrupted, io_err};
use super::head::{Head, LineError, head_one_behind, parse_line, read_head, torn_tail_explained};
use super::{GENESIS, head_path_for};

/// What kind of damage [`verify`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TamperKind {
    /// A line that is not JSON (garbage, a blank line).
    Garbled,
    /// The last line has no newline: an interrupted append, or a cut file.
    Incomplete,
    /// An entry whose bytes do not match its hash, or that is not an entry.
    Edited,
    /// An entry that was rewritten with a fresh hash: the chain breaks after it.
    Replaced,
    /// An entry that does not belong to the chain.
    Inserted,
    /// Entries missing from the middle of the log.
    Removed,
    /// Entries out of order.
    Reordered,
    /// The last entries were removed: the log ends before the head file's entry.
    TailRemoved,
    /// The last entry differs from the one recorded in the head file.
    TailRewritten,
    /// Entries after the head file's entry: appended by something other than `tre`, or
    /// an append interrupted before it updated the head.
    HeadBehind,
    /// The head file is missing or unreadable.
    HeadMissing,
}

impl std::fmt::Display for TamperKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TamperKind::Garbled => "garbled line",
            TamperKind::Incomplete => "incomplete line",
            TamperKind::Edited => "edited entry",
            TamperKind::Replaced => "replaced entry",
            TamperKind::Inserted => "inserted entry",
            TamperKind::Removed => "removed entry",
            TamperKind::Reordered => "reordered entry",
            TamperKind::TailRemoved => "removed last entries",
            TamperKind::TailRewritten => "rewritten last entry",
            TamperKind::HeadBehind => "entry not in the head file",
            TamperKind::HeadMissing => "missing head file",
        })
    }
}

/// The first bad entry in a log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tamper {
    /// Line number (from 1) of the first bad entry; for removed last entries, the line
    /// where the first missing entry belongs.
    pub line: u64,
    /// That entry's `seq`, when known.
    pub seq: Option<u64>,
    /// What kind of damage.
    pub kind: TamperKind,
    /// What is wrong, in words.
    pub message: String,
}

impl std::fmt::Display for Tamper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}", self.line)?;
        if let Some(seq) = self.seq {
            write!(f, " (seq {seq})")?;
        }
        write!(f, ": {}: {}", self.kind, self.message)
    }
}

/// The result of [`verify`].
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// The log.
    pub log: PathBuf,
    /// Lines read.
    pub lines: u64,
    /// The last entry's `seq` and `hash` when the log is intact: record the hash outside
    /// the TRE to anchor the log.
    pub last: Option<Head>,
    /// The head file, when it was read.
    pub head: Option<Head>,
    /// The first bad entry, or `None` when the log is intact.
    pub problem: Option<Tamper>,
    /// What an interrupted append left (repaired, and recorded, at the next append or
    /// start of the service): not tampering.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub interrupted: Vec<Interrupted>,
}

impl VerifyReport {
    /// Whether the log verified.
    pub fn is_intact(&self) -> bool {
        self.problem.is_none()
    }
}

/// How strictly to verify.
#[derive(Debug, Clone, Copy)]
pub struct VerifyOptions {
    /// Compare the tail with the head file (default). Turn off only for a copy of a log
    /// kept without its head: removal of the last entries then goes unnoticed.
    pub check_head: bool,
    /// Treat a missing log with no head file as an empty log instead of an error. Set it
    /// when external anchors (checkpoints, manifests) are checked as well: they are what
    /// shows that a deleted log once held entries.
    pub missing_log_is_empty: bool,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            check_head: true,
            missing_log_is_empty: false,
        }
    }
}

/// Verify the log at `path` against its head file. An `Err` means it could not be read;
/// damage is reported in [`VerifyReport::problem`].
pub fn verify(path: &Path) -> Result<VerifyReport, AuditError> {
    verify_with(path, VerifyOptions::default())
}

/// [`verify`] with options.
pub fn verify_with(path: &Path, opts: VerifyOptions) -> Result<VerifyReport, AuditError> {
    let (bytes, head) = load(path, opts)?;
    Ok(check_log(path, &bytes, &head))
}

/// The log's bytes and its head file, read under a shared lock so both are read between
/// two appends. Never writes.
pub(super) fn load(path: &Path, opts: VerifyOptions) -> Result<(Vec<u8>, HeadState), AuditError> {
    let head_path = head_path_for(path);
    let head = |opts: VerifyOptions| {
        if opts.check_head {
            read_head_for_verify(&head_path)
        } else {
            Ok(HeadState::Unchecked)
        }
    };
    match File::open(path) {
        Ok(mut f) => {
            f.lock_shared().map_err(io_err("lock", path))?;
            let mut bytes = Vec::new();
            f.read_to_end(&mut bytes).map_err(io_err("read", path))?;
            Ok((bytes, head(opts)?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A missing log whose head file survives has had every entry removed.
            match read_head_for_verify(&head_path)? {
                HeadState::Present(h) if opts.check_head => Ok((Vec::new(), HeadState::Present(h))),
                HeadState::Missing if opts.missing_log_is_empty => {
                    Ok((Vec::new(), HeadState::Missing))
                }
                _ => Err(io_err("read", path)(e)),
            }
        }
        Err(e) => Err(io_err("read", path)(e)),
    }
}

/// The head file as verification sees it.
pub(super) enum HeadState {
    Unchecked,
    Missing,
    Garbled,
    Present(Head),
}

fn read_head_for_verify(path: &Path) -> Result<HeadState, AuditError> {
    match read_head(path) {
        Ok(Some(h)) => Ok(HeadState::Present(h)),
        Ok(None) => Ok(HeadState::Missing),
        Err(AuditError::Broken { .. }) => Ok(HeadState::Garbled),
        Err(e) => Err(e),
    }
}

/// The chain facts of one line that parsed and matched its own hash.
#[derive(Clone)]
pub(super) struct Link {
    pub(super) seq: u64,
    pub(super) prev: String,
    pub(super) hash: String,
}

/// Every line of `bytes`, parsed, and whether the last one ended with a newline.
pub(super) fn parse_links(bytes: &[u8]) -> (Vec<Result<Link, LineError>>, bool) {
    let mut lines: Vec<&[u8]> = bytes.split(|&c| c == b'\n').collect();
    let terminated = bytes.is_empty() || bytes.ends_with(b"\n");
    if terminated {
        lines.pop();
    }
    let parsed = lines
        .iter()
        .map(|l| {
            parse_line(l).map(|e| Link {
                seq: e.seq,
                prev: e.prev,
                hash: e.hash,
            })
        })
        .collect();
    (parsed, terminated)
}

/// A [`Tamper`] at 0-based line `i`.
fn tamper(i: usize, seq: Option<u64>, kind: TamperKind, message: String) -> Tamper {
    Tamper {
        line: i as u64 + 1,
        seq,
        kind,
        message,
    }
}

pub(super) fn check_log(path: &Path, bytes: &[u8], head: &HeadState) -> VerifyReport {
    // A torn last line that one interrupted append explains is set aside, as the writer
    // would cut it.
    let mut interrupted = Vec::new();
    let mut bytes = bytes;
    if !bytes.is_empty() && !bytes.ends_with(b"\n") {
        let complete = bytes.iter().rposition(|&c| c == b'\n').map_or(0, |i| i + 1);
        let torn = &bytes[complete..];
        if torn_tail_explained(torn.len()) {
            interrupted.push(Interrupted::TornTail {
                bytes: torn.len() as u64,
                sha256: crate::digest::sha256_hex(torn),
            });
            bytes = &bytes[..complete];
        }
    }
    let (parsed, terminated) = parse_links(bytes);
    let head_entry = match head {
        HeadState::Present(h) => Some(h.clone()),
        _ => None,
    };
    let mut report = VerifyReport {
        log: path.to_path_buf(),
        lines: parsed.len() as u64,
        last: None,
        head: head_entry.clone(),
        problem: walk_chain(&parsed, terminated, head_entry.as_ref()),
        interrupted,
    };
    if report.problem.is_some() {
        return report;
    }
    let last = parsed.last().and_then(|p| p.as_ref().ok()).map(|l| Head {
        seq: l.seq,
        hash: l.hash.clone(),
    });
    let last_link = parsed.last().and_then(|p| p.as_ref().ok());
    let behind = match (head, last_link) {
        (HeadState::Missing, Some(l)) if head_one_behind(None, l.seq, &l.prev) => Some(None),
        (HeadState::Present(h), Some(l)) if head_one_behind(Some(h), l.seq, &l.prev) => {
            Some(Some(h.seq))
        }
        _ => None,
    };
    match (behind, last_link) {
        (Some(head_seq), Some(l)) => report.interrupted.push(Interrupted::HeadBehind {
            head_seq,
            last_seq: l.seq,
        }),
        _ => report.problem = compare_head(path, &parsed, last.as_ref(), head),
    }
    if report.problem.is_none() {
        report.last = last;
    }
    report
}

/// The first line that is not the next link of the chain, if any.
fn walk_chain(
    parsed: &[Result<Link, LineError>],
    terminated: bool,
    head: Option<&Head>,
) -> Option<Tamper> {
    let mut expected_seq = 1u64;
    let mut expected_prev = GENESIS.to_string();
    let mut prev_before = GENESIS.to_string(); // the expected `prev` of the line before
    for (i, p) in parsed.iter().enumerate() {
        if i + 1 == parsed.len() && !terminated {
            let seq = p.as_ref().ok().map(|l| l.seq);
            return Some(tamper(
                i,
                seq,
                TamperKind::Incomplete,
                "the last line has no newline: an append was interrupted or the file was cut"
                    .into(),
            ));
        }
        let cur = match p {
            Ok(l) => l,
            Err(e) if e.problem.is_garbled() => {
                return Some(tamper(i, None, TamperKind::Garbled, e.problem.to_string()));
            }
            Err(e) => {
                return Some(tamper(i, e.seq, TamperKind::Edited, e.problem.to_string()));
            }
        };
        if cur.seq == expected_seq && cur.prev == expected_prev {
            prev_before = std::mem::replace(&mut expected_prev, cur.hash.clone());
            expected_seq += 1;
            continue;
        }
        let at = Expected {
            seq: expected_seq,
            prev: &expected_prev,
            prev_before: &prev_before,
        };
        return Some(classify(parsed, i, &at, head));
    }
    None
}

/// Compare an intact chain's last entry with the head file.
fn compare_head(
    path: &Path,
    parsed: &[Result<Link, LineError>],
    last: Option<&Head>,
    head: &HeadState,
) -> Option<Tamper> {
    let n = parsed.len();
    let last_seq = last.map_or(0, |l| l.seq);
    let head_file = head_path_for(path);
    match head {
        HeadState::Unchecked => None,
        HeadState::Missing if n > 0 => Some(tamper(
            n - 1,
            Some(last_seq),
            TamperKind::HeadMissing,
            format!(
                "the head file {} is missing, so removal of the last entries cannot be \
                 ruled out (use --no-head to check the chain alone)",
                head_file.display()
            ),
        )),
        HeadState::Missing => None,
        HeadState::Garbled => Some(tamper(
            n.saturating_sub(1),
            last.map(|l| l.seq),
            TamperKind::HeadMissing,
            format!("the head file {} is not valid", head_file.display()),
        )),
        HeadState::Present(h) if h.seq > last_seq => {
            let missing = if h.seq == last_seq + 1 {
                format!("entry seq {} was removed", h.seq)
            } else {
                format!("entries seq {} to {} were removed", last_seq + 1, h.seq)
            };
            Some(tamper(
                n,
                Some(last_seq + 1),
                TamperKind::TailRemoved,
                format!(
                    "the log ends at seq {last_seq} but the head file records seq {}: {missing} \
                     from the end",
                    h.seq
                ),
            ))
        }
        HeadState::Present(h) if h.seq < last_seq => Some(head_behind(parsed, h, last_seq)),
        HeadState::Present(h) if last.is_some_and(|l| l.hash != h.hash) => Some(tamper(
            n - 1,
            Some(last_seq),
            TamperKind::TailRewritten,
            "the last entry is not the one recorded in the head file: it was rewritten \
             with a fresh hash"
                .into(),
        )),
        HeadState::Present(_) => None,
    }
}

/// The head file names an entry before the end of an intact chain.
fn head_behind(parsed: &[Result<Link, LineError>], h: &Head, last_seq: u64) -> Tamper {
    // The chain is intact, so line k holds seq k.
    let first = h.seq as usize;
    let matches = h.seq == 0
        || parsed
            .get(first - 1)
            .and_then(|p| p.as_ref().ok())
            .is_some_and(|l| l.hash == h.hash);
    let why = if matches {
        "they were appended by something other than tre, or the last append was \
         interrupted before it updated the head"
    } else {
        "and the head's hash does not match the entry it names"
    };
    tamper(
        first,
        Some(h.seq + 1),
        TamperKind::HeadBehind,
        format!(
            "the head file records seq {} but the log goes on to seq {last_seq}: {why}",
            h.seq
        ),
    )
}

/// What the chain expected at the line that broke it.
struct Expected<'a> {
    seq: u64,
    prev: &'a str,
    /// The expected `prev` of the line before.
    prev_before: &'a str,
}

/// Explain why line `i` (0-based) does not follow the chain; every earlier line did.
fn classify(
    parsed: &[Result<Link, LineError>],
    i: usize,
    want: &Expected<'_>,
    head: Option<&Head>,
) -> Tamper {
    let link = |j: usize| parsed.get(j).and_then(|p| p.as_ref().ok());
    let Some(cur) = link(i) else {
        return tamper(
            i,
            None,
            TamperKind::Garbled,
            "bug: classify called on an unparsed line".into(),
        );
    };
    if let Some(t) = out_of_place(parsed, i, cur, want) {
        return t;
    }
    if cur.seq != want.seq {
        return wrong_seq(parsed, i, cur, want.seq);
    }
    // Right seq, wrong prev. If this entry is vouched for by the next one (or, at the
    // end, by the head file), the previous entry was rewritten and re-hashed.
    let vouched = match link(i + 1) {
        Some(next) => next.prev == cur.hash,
        None => head.is_some_and(|h| h.seq == cur.seq && h.hash == cur.hash),
    };
    if i > 0 && vouched {
        let before = link(i - 1).map_or(0, |l| l.seq);
        return tamper(
            i - 1,
            Some(before),
            TamperKind::Replaced,
            format!(
                "it was rewritten with a fresh hash: line {} (seq {}) was chained to \
                 a different entry",
                i + 1,
                cur.seq
            ),
        );
    }
    let what = if i == 0 {
        "it is the first entry but its prev is not the genesis value".to_string()
    } else {
        format!(
            "its prev is not the hash of line {i}: this entry (or line {i}) was rewritten \
             with a fresh hash"
        )
    };
    tamper(i, Some(cur.seq), TamperKind::Replaced, what)
}

/// A copy of an earlier entry, an inserted entry, or two swapped entries, told apart by
/// how the neighbours chain.
fn out_of_place(
    parsed: &[Result<Link, LineError>],
    i: usize,
    cur: &Link,
    want: &Expected<'_>,
) -> Option<Tamper> {
    let link = |j: usize| parsed.get(j).and_then(|p| p.as_ref().ok());
    let line_no = i + 1;
    // A verbatim copy of an earlier entry.
    if let Some(j) = (0..i).find(|&j| link(j).is_some_and(|l| l.hash == cur.hash)) {
        let msg = format!("it is a copy of line {}", j + 1);
        return Some(tamper(i, Some(cur.seq), TamperKind::Inserted, msg));
    }
    // This line chains straight past the previous one: the previous one was inserted.
    if i > 0 && cur.prev == want.prev_before {
        let before = link(i - 1).map_or(0, |l| l.seq);
        let anchor = if i == 1 {
            "as the first entry".to_string()
        } else {
            format!("directly after line {}", i - 1)
        };
        let msg = format!(
            "it is not part of the chain: line {line_no} (seq {}) was written {anchor}",
            cur.seq
        );
        return Some(tamper(i - 1, Some(before), TamperKind::Inserted, msg));
    }
    // The next line chains to the previous one: this one is out of place.
    let next = link(i + 1).filter(|n| n.prev == want.prev)?;
    if cur.prev == next.hash {
        let msg = format!(
            "lines {line_no} and {} are swapped (expected seq {} here, found seq {})",
            line_no + 1,
            want.seq,
            cur.seq
        );
        return Some(tamper(i, Some(cur.seq), TamperKind::Reordered, msg));
    }
    let msg = format!(
        "it is not part of the chain: line {} (seq {}) follows the entry before it",
        line_no + 1,
        next.seq
    );
    Some(tamper(i, Some(cur.seq), TamperKind::Inserted, msg))
}

/// An entry whose `seq` is not the next one: reordered, or entries removed before it.
fn wrong_seq(parsed: &[Result<Link, LineError>], i: usize, cur: &Link, expected: u64) -> Tamper {
    let later = (i + 1..parsed.len()).find(|&j| {
        parsed
            .get(j)
            .and_then(|p| p.as_ref().ok())
            .is_some_and(|l| l.seq == expected)
    });
    let (kind, msg) = if let Some(j) = later {
        (
            TamperKind::Reordered,
            format!(
                "expected seq {expected} here but found seq {}; seq {expected} is at line {}",
                cur.seq,
                j + 1
            ),
        )
    } else if cur.seq > expected {
        let missing = if cur.seq == expected + 1 {
            format!("entry seq {expected} is missing")
        } else {
            format!("entries seq {expected} to {} are missing", cur.seq - 1)
        };
        (TamperKind::Removed, format!("{missing} before this line"))
    } else {
        (
            TamperKind::Reordered,
            format!("seq goes backwards (expected seq {expected})"),
        )
    };
    tamper(i, Some(cur.seq), kind, msg)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::audit::AuditEntry;
    use crate::audit::testutil::{H, build, entry, lines, problem, write_lines};
    use proptest::prelude::*;

    #[test]
    fn intact_log_verifies_and_chains() {
        let (_d, path) = build(4);
        let r = verify(&path).unwrap();
        assert!(r.is_intact(), "{:?}", r.problem);
        assert_eq!(r.lines, 4);
        let ls = lines(&path);
        let e: Vec<AuditEntry> = ls.iter().map(|l| entry(l)).collect();
        assert_eq!(e[0].prev, GENESIS);
        assert_eq!(e[0].seq, 1);
        assert_eq!(e[3].seq, 4);
        for k in 1..4 {
            assert_eq!(e[k].prev, e[k - 1].hash);
        }
        assert_eq!(r.last.unwrap().hash, e[3].hash);
        // The stored line is exactly the canonical serialisation.
        for (l, e) in ls.iter().zip(&e) {
            assert_eq!(&e.to_line().unwrap(), l);
            assert_eq!(e.compute_hash().unwrap(), e.hash);
        }
        assert_eq!(e[0].time, "2024-04-24T23:06:40.000Z");
        assert!(ls[0].ends_with(&format!(",\"hash\":\"{}\"}}", e[0].hash)));
    }

    #[test]
    fn empty_or_absent_log_is_intact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        assert!(
            verify(&path).is_err(),
            "absent log without head is unreadable"
        );
        std::fs::write(&path, "").unwrap();
        assert!(verify(&path).unwrap().is_intact());
    }

    #[test]
    fn edited_field_is_named() {
        let (_d, path) = build(5);
        let mut ls = lines(&path);
        ls[2] = ls[2].replace("\"actor\":\"carol\"", "\"actor\":\"mallory\"");
        write_lines(&path, &ls);
        let p = problem(&path);
        assert_eq!((p.line, p.seq, p.kind), (3, Some(3), TamperKind::Edited));
    }

    #[test]
    fn rehashed_edit_is_named() {
        for k in 0..5 {
            let (_d, path) = build(5);
            let mut ls = lines(&path);
            let mut e = entry(&ls[k]);
            e.purpose = Some("something else".into());
            e.hash = e.compute_hash().unwrap();
            ls[k] = e.to_line().unwrap();
            write_lines(&path, &ls);
            let p = problem(&path);
            assert_eq!(p.line, k as u64 + 1, "k={k}: {p}");
            assert_eq!(p.seq, Some(k as u64 + 1));
        }
    }

    #[test]
    fn removed_entry_is_named() {
        let (_d, path) = build(5);
        let mut ls = lines(&path);
        ls.remove(1);
        write_lines(&path, &ls);
        let p = problem(&path);
        assert_eq!((p.line, p.seq, p.kind), (2, Some(3), TamperKind::Removed));
        assert!(p.message.contains("seq 2 is missing"), "{p}");
    }

    #[test]
    fn removed_last_entry_is_caught_by_the_head() {
        let (_d, path) = build(5);
        let mut ls = lines(&path);
        ls.pop();
        write_lines(&path, &ls);
        let p = problem(&path);
        assert_eq!(
            (p.line, p.seq, p.kind),
            (5, Some(5), TamperKind::TailRemoved)
        );
        // Without the head it goes unnoticed: that is what the head is for.
        let r = verify_with(
            &path,
            VerifyOptions {
                check_head: false,
                ..VerifyOptions::default()
            },
        )
        .unwrap();
        assert!(r.is_intact());
    }

    #[test]
    fn swapped_entries_are_named() {
        let (_d, path) = build(5);
        let mut ls = lines(&path);
        ls.swap(2, 3);
        write_lines(&path, &ls);
        let p = problem(&path);
        assert_eq!((p.line, p.seq, p.kind), (3, Some(4), TamperKind::Reordered));
    }

    #[test]
    fn inserted_forgery_is_named() {
        let (_d, path) = build(5);
        let mut ls = lines(&path);
        let before = entry(&ls[1]);
        let mut forged = entry(&ls[2]);
        forged.actor = "mallory".into();
        forged.prev = before.hash;
        forged.hash = forged.compute_hash().unwrap();
        ls.insert(2, forged.to_line().unwrap());
        write_lines(&path, &ls);
        let p = problem(&path);
        assert_eq!((p.line, p.seq, p.kind), (3, Some(3), TamperKind::Inserted));
    }

    #[test]
    fn garbage_and_incomplete_lines_are_named() {
        let (_d, path) = build(3);
        let mut ls = lines(&path);
        ls.push("{\"seq\": 4, garbage".into());
        write_lines(&path, &ls);
        let p = problem(&path);
        assert_eq!((p.line, p.kind), (4, TamperKind::Garbled));

        let (_d, path) = build(3);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, &text[..text.len() - 10]).unwrap();
        let p = problem(&path);
        // The head file had recorded seq 3, so its line was durable: a cut, not a crash.
        assert_eq!((p.line, p.kind), (3, TamperKind::TailRemoved));

        // Longer than any entry: no interrupted append explains it.
        let (_d, path) = build(3);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(&"x".repeat(crate::audit::MAX_ENTRY_BYTES + 1));
        std::fs::write(&path, text).unwrap();
        let p = problem(&path);
        assert_eq!((p.line, p.kind), (4, TamperKind::Incomplete));
    }

    #[test]
    fn what_a_crash_leaves_is_interrupted_not_tampered() {
        // A torn line after the entry the head names.
        let (_d, path) = build(3);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"seq\":4,\"time\":\"2026");
        std::fs::write(&path, text).unwrap();
        let r = verify(&path).unwrap();
        assert!(r.is_intact(), "{:?}", r.problem);
        assert!(matches!(
            r.interrupted[..],
            [Interrupted::TornTail { bytes: 21, .. }]
        ));
        assert_eq!(r.last.map(|h| h.seq), Some(3));

        // The last entry durable, the head one behind it (or missing after the first).
        for n in [1, 3] {
            let (_d, path) = build(n);
            let head_path = head_path_for(&path);
            if n == 1 {
                std::fs::remove_file(&head_path).unwrap();
            } else {
                let ls = lines(&path);
                let before: crate::audit::AuditEntry = serde_json::from_str(&ls[1]).unwrap();
                let head = Head {
                    seq: 2,
                    hash: before.hash,
                };
                std::fs::write(&head_path, serde_json::to_string(&head).unwrap()).unwrap();
            }
            let r = verify(&path).unwrap();
            assert!(r.is_intact(), "{:?}", r.problem);
            assert_eq!(
                r.interrupted,
                vec![Interrupted::HeadBehind {
                    head_seq: (n > 1).then_some(2),
                    last_seq: n as u64
                }]
            );
        }

        // Two behind is not one crash.
        let (_d, path) = build(3);
        let ls = lines(&path);
        let first: crate::audit::AuditEntry = serde_json::from_str(&ls[0]).unwrap();
        let head = Head {
            seq: 1,
            hash: first.hash,
        };
        std::fs::write(head_path_for(&path), serde_json::to_string(&head).unwrap()).unwrap();
        assert_eq!(problem(&path).kind, TamperKind::HeadBehind);
    }

    #[derive(Debug, Clone)]
    enum Tamp {
        Edit(usize),
        Rehash(usize),
        Delete(usize),
        Swap(usize),
        Insert(usize, u64, bool),
        Duplicate(usize),
        Garbage,
        Truncate(usize),
    }

    fn tamper_strategy() -> impl Strategy<Value = (usize, Tamp)> {
        (2usize..=20).prop_flat_map(|n| {
            let t = prop_oneof![
                (0..n).prop_map(Tamp::Edit),
                (0..n).prop_map(Tamp::Rehash),
                (0..n).prop_map(Tamp::Delete),
                (0..n - 1).prop_map(Tamp::Swap),
                (0..=n, 0u64..25, any::<bool>()).prop_map(|(k, s, p)| Tamp::Insert(k, s, p)),
                (0..n).prop_map(Tamp::Duplicate),
                Just(Tamp::Garbage),
                (1usize..60).prop_map(Tamp::Truncate),
            ];
            (Just(n), t)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]
        #[test]
        fn any_single_tamper_is_detected((n, t) in tamper_strategy()) {
            let (_d, path) = build(n);
            let mut ls = lines(&path);
            // Where the first bad entry is, when the tamper pins it down.
            let expect_line: Option<u64> = match t.clone() {
                Tamp::Edit(k) => {
                    let mut e = entry(&ls[k]);
                    e.detail = serde_json::json!({"rows_written": 999_999});
                    ls[k] = e.to_line().unwrap();
                    Some(k as u64 + 1)
                }
                Tamp::Rehash(k) => {
                    let mut e = entry(&ls[k]);
                    e.actor = "mallory".into();
                    e.hash = e.compute_hash().unwrap();
                    ls[k] = e.to_line().unwrap();
                    Some(k as u64 + 1)
                }
                Tamp::Delete(k) => {
                    ls.remove(k);
                    Some(k as u64 + 1)
                }
                Tamp::Swap(k) => {
                    ls.swap(k, k + 1);
                    Some(k as u64 + 1)
                }
                Tamp::Insert(k, seq, chain) => {
                    let mut e = entry(&ls[0]);
                    e.actor = "mallory".into();
                    e.seq = seq;
                    e.prev = if chain && k > 0 { entry(&ls[k - 1]).hash } else if chain { GENESIS.into() } else { H.into() };
                    e.hash = e.compute_hash().unwrap();
                    ls.insert(k, e.to_line().unwrap());
                    Some(k as u64 + 1)
                }
                Tamp::Duplicate(k) => {
                    let l = ls[k].clone();
                    ls.insert(k + 1, l);
                    Some(k as u64 + 2)
                }
                Tamp::Garbage => {
                    ls.push("\u{0}\u{1}garbage".into());
                    Some(n as u64 + 1)
                }
                Tamp::Truncate(cut) => {
                    let text = ls.join("\n") + "\n";
                    let keep = text.len().saturating_sub(cut);
                    std::fs::write(&path, &text.as_bytes()[..keep]).unwrap();
                    let p = problem(&path);
                    prop_assert_eq!(p.line, n as u64, "{}", p);
                    return Ok(());
                }
            };
            write_lines(&path, &ls);
            let r = verify(&path).unwrap();
            let p = r.problem.clone();
            prop_assert!(p.is_some(), "undetected {:?}", t);
            let p = p.unwrap();
            if let Some(line) = expect_line {
                prop_assert_eq!(p.line, line, "{:?}: {}", t, p);
            } else {
                prop_assert!(p.line >= 1);
            }
        }

    }
}
