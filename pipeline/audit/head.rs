//! Reading the log back: one line checked against its own hash ([`parse_line`]), and the
//! head file that records the last entry ([`Head`], [`read_head`], [`write_head`]).
//!
//! Shared by appending (which checks the tail before extending it), by
//! [`super::AuditLog::head`], and by verification, which must agree on one rule: what a
//! crash can leave ([`Interrupted`]) is repaired by the next writer and recorded, and
//! everything else is tampering. Danger: a line of a tampered log may hold anything, so
//! errors here never quote a line's values.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::entry::{AuditEntry, HASH_PREFIX, HASH_SUFFIX_LEN};
use super::error::{AuditError, LineProblem, TailProblem, durable_err, io_err, ser_err};
use crate::digest::{hex, is_sha256_hex};

/// One line's problem and, when it could be read, its `seq`.
#[derive(Debug, Clone, Copy)]
pub(super) struct LineError {
    pub(super) seq: Option<u64>,
    pub(super) problem: LineProblem,
}

/// Parse one line (without its newline) and check its own hash against its bytes.
pub(super) fn parse_line(line: &[u8]) -> Result<AuditEntry, LineError> {
    let fail = |seq, problem| LineError { seq, problem };
    if line.iter().all(u8::is_ascii_whitespace) {
        return Err(fail(None, LineProblem::Blank));
    }
    let value: Value = serde_json::from_slice(line)
        .map_err(|e| fail(None, LineProblem::NotJson { column: e.column() }))?;
    let seq = value.get("seq").and_then(Value::as_u64);
    // Deliberately not quoting serde's message: it can echo a value.
    let entry: AuditEntry =
        serde_json::from_value(value).map_err(|_| fail(seq, LineProblem::NotAnEntry))?;
    let seq = Some(entry.seq);
    if line.len() < HASH_SUFFIX_LEN + 2 {
        return Err(fail(seq, LineProblem::TooShort));
    }
    let (body_open, suffix) = line.split_at(line.len() - HASH_SUFFIX_LEN);
    let stored = &suffix[HASH_PREFIX.len()..HASH_PREFIX.len() + 64];
    if !suffix.starts_with(HASH_PREFIX.as_bytes())
        || !suffix.ends_with(b"\"}")
        || stored != entry.hash.as_bytes()
    {
        return Err(fail(seq, LineProblem::NotCanonical));
    }
    let mut hasher = Sha256::new();
    hasher.update(body_open);
    hasher.update(b"}");
    if hex(&hasher.finalize()) != entry.hash {
        return Err(fail(seq, LineProblem::HashMismatch));
    }
    Ok(entry)
}

/// Whether bytes after the last newline are short enough to be one interrupted append.
pub(super) fn torn_tail_explained(bytes: usize) -> bool {
    bytes <= super::MAX_ENTRY_BYTES
}

/// Whether a head file that does not name the last entry (`last_seq`, chained onto
/// `last_prev`) is one interrupted append behind it.
pub(super) fn head_one_behind(head: Option<&Head>, last_seq: u64, last_prev: &str) -> bool {
    match head {
        None => last_seq == 1,
        Some(h) => h.seq + 1 == last_seq && h.hash == last_prev,
    }
}

/// The head file: the last entry's `seq` and `hash`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    /// The last entry's `seq`.
    pub seq: u64,
    /// The last entry's `hash`.
    pub hash: String,
}

/// Read the head file: `Ok(None)` when it does not exist, `Err(reason)` when unreadable.
pub(super) fn read_head(path: &Path) -> Result<Option<Head>, AuditError> {
    match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice::<Head>(&bytes) {
            Ok(h) if is_sha256_hex(&h.hash) => Ok(Some(h)),
            _ => Err(AuditError::Broken {
                path: path.to_path_buf(),
                problem: TailProblem::HeadInvalid {
                    head: path.to_path_buf(),
                },
            }),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", path)(e)),
    }
}

/// Replace the head file atomically (mode 0640, the log's, which an auditors' group
/// needs to verify).
pub(super) fn write_head(path: &Path, head: &Head) -> Result<(), AuditError> {
    let mut text = serde_json::to_string(head).map_err(ser_err("the head"))?;
    text.push('\n');
    crate::durable::write_atomic(path, text.as_bytes(), crate::durable::Mode::GroupRead)
        .map_err(durable_err("write the head file"))?;
    Ok(())
}
