//! Reading the log back: one line checked against its own hash ([`parse_line`]), and the
//! head file that records the last entry ([`Head`], [`read_head`], [`write_head`]).
//!
//! Shared by appending (which checks the tail before extending it), by
//! [`super::AuditLog::head`], and by verification. Danger: a line of a tampered log may
//! hold anything, so errors here never quote a line's values.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::entry::{AuditEntry, HASH_PREFIX, HASH_SUFFIX_LEN};
use super::error::{AuditError, TailProblem, durable_err, io_err, ser_err};
use crate::digest::{hex, is_sha256_hex};

/// What is wrong with one line, on its own.
pub(super) enum LineError {
    /// Not JSON at all.
    Garbled(String),
    /// JSON, but not an audit entry, or its bytes do not match its hash.
    Edited { seq: Option<u64>, message: String },
}

/// Parse one line (without its newline) and check its own hash against its bytes.
pub(super) fn parse_line(line: &[u8]) -> Result<AuditEntry, LineError> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Err(LineError::Garbled("the line is blank".into()));
    }
    let value: Value = serde_json::from_slice(line).map_err(|e| {
        LineError::Garbled(format!(
            "the line is not JSON (error at column {})",
            e.column()
        ))
    })?;
    let seq = value.get("seq").and_then(Value::as_u64);
    // Deliberately not quoting serde's message: it can echo a value.
    let entry: AuditEntry = serde_json::from_value(value).map_err(|_| LineError::Edited {
        seq,
        message: "the line is JSON but not an audit entry (fields missing, added, \
                  repeated or of the wrong type)"
            .into(),
    })?;
    let edited = |message: &str| LineError::Edited {
        seq: Some(entry.seq),
        message: message.to_string(),
    };
    if line.len() < HASH_SUFFIX_LEN + 2 {
        return Err(edited("the line is too short to be an audit entry"));
    }
    let (body_open, suffix) = line.split_at(line.len() - HASH_SUFFIX_LEN);
    let stored = &suffix[HASH_PREFIX.len()..HASH_PREFIX.len() + 64];
    if !suffix.starts_with(HASH_PREFIX.as_bytes())
        || !suffix.ends_with(b"\"}")
        || stored != entry.hash.as_bytes()
    {
        return Err(edited(
            "the line is not in canonical form (its `hash` is not the last member)",
        ));
    }
    let mut hasher = Sha256::new();
    hasher.update(body_open);
    hasher.update(b"}");
    if hex(&hasher.finalize()) != entry.hash {
        return Err(edited("its contents do not match its hash"));
    }
    Ok(entry)
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
