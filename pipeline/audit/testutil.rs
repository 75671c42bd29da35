//! Test helpers shared by the audit module's unit tests: a fixed clock, sample drafts,
//! a log of `n` entries in a fresh folder, and line-level readers and writers.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use chrono::{TimeZone, Utc};

use super::{AuditEntry, AuditLog, EntryDraft, HashRef, Tamper, verify};
use crate::clock::FixedClock;

/// The SHA-256 of nothing.
pub const H: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// A clock `n` seconds after a fixed instant.
pub fn clock(n: i64) -> FixedClock {
    FixedClock(Utc.timestamp_opt(1_714_000_000 + n, 0).unwrap())
}

/// The `i`th sample draft.
pub fn draft(i: usize) -> EntryDraft {
    let actors = ["alice", "bob", "carol"];
    let projects = ["p1", "p2"];
    EntryDraft::new(
        actors[i % 3],
        if i.is_multiple_of(2) {
            "extract"
        } else {
            "query"
        },
    )
    .project(projects[i % 2])
    .purpose(format!("study {i}"))
    .detail("rows_written", i as u64 * 10)
    .input(HashRef::new(format!("in/{i}.csv"), H))
    .output(HashRef::new(format!("out/{i}.parquet"), H))
}

/// A log of `n` entries in a fresh folder.
pub fn build(n: usize) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&path).unwrap();
    for i in 0..n {
        log.append(draft(i), &clock(i as i64)).unwrap();
    }
    (dir, path)
}

/// The log's lines.
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Replace the log with these lines.
pub fn write_lines(path: &Path, lines: &[String]) {
    let mut s = lines.join("\n");
    s.push('\n');
    std::fs::write(path, s).unwrap();
}

/// Parse one line.
pub fn entry(line: &str) -> AuditEntry {
    serde_json::from_str(line).unwrap()
}

/// The damage verification reports (it must find some).
pub fn problem(path: &Path) -> Tamper {
    verify(path).unwrap().problem.expect("tampering detected")
}
