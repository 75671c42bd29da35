//! Audit entries: the stored line ([`AuditEntry`]), its canonical form and hash, and the
//! draft a command fills in ([`EntryDraft`]).
//!
//! Owns the field order of a line (part of the format: `hash` last) and the builder every
//! caller uses. A draft holds what the caller said; [`super::sanitise`] turns it into what
//! may be stored. Danger: a draft may hold anything a user typed, so it is never written
//! as it is, and its `Debug` is for tests only.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::{AuditError, DraftProblem, io_err, ser_err};
use crate::digest::{is_sha256_hex, sha256_hex};

/// A file named by an entry, by path and content hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashRef {
    /// The file's path as the command saw it.
    pub path: String,
    /// Lowercase hex SHA-256 of its contents.
    pub sha256: String,
}

impl HashRef {
    /// A reference from a path and a hash already computed (checked on append).
    pub fn new(path: impl Into<String>, sha256: impl Into<String>) -> Self {
        HashRef {
            path: path.into(),
            sha256: sha256.into(),
        }
    }

    /// Hash a file's contents.
    pub fn of_file(path: &Path) -> Result<Self, AuditError> {
        let (sha256, _) = crate::digest::sha256_file(path).map_err(io_err("read", path))?;
        Ok(HashRef {
            path: path.to_string_lossy().into_owned(),
            sha256,
        })
    }
}

impl From<&crate::durable::FileRecord> for HashRef {
    fn from(r: &crate::durable::FileRecord) -> Self {
        HashRef::new(r.path.clone(), r.sha256.clone())
    }
}

/// How the recorded action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It was done.
    Ok,
    /// A rule refused it (exit 1): the action names what was attempted.
    Refused,
    /// It failed (exit 2).
    Error,
}

impl Outcome {
    /// `ok`, `refused` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::Error => "error",
        }
    }
}

/// One line of the audit log. Field order is the serialisation order and part of the
/// format; `hash` must stay last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    /// Position in the log, from 1.
    pub seq: u64,
    /// When, RFC 3339 in UTC, from the injected clock.
    pub time: String,
    /// Who: the authenticated user, or the operator for local commands; resolved by the
    /// caller, never by this module.
    pub actor: String,
    /// What was attempted: `extract`, `query`, `release.request`, `release.review`,
    /// `release.export`, `purge`, `init`, ...
    pub action: String,
    /// How it ended.
    pub outcome: Outcome,
    /// The project, when the action concerns one.
    pub project: Option<String>,
    /// Why: the declared purpose, when there is one.
    pub purpose: Option<String>,
    /// Small structured facts: counts, ids, fingerprints, the reason for a refusal.
    pub detail: Value,
    /// Files read, by hash.
    pub inputs: Vec<HashRef>,
    /// Files written, by hash.
    pub outputs: Vec<HashRef>,
    /// The previous entry's `hash` ([`super::GENESIS`] for the first).
    pub prev: String,
    /// SHA-256 of this entry's line without its `hash` member.
    pub hash: String,
}

/// The entry without `hash`: what is hashed. Same order as [`AuditEntry`].
#[derive(Serialize)]
struct Body<'a> {
    seq: u64,
    time: &'a str,
    actor: &'a str,
    action: &'a str,
    outcome: Outcome,
    project: &'a Option<String>,
    purpose: &'a Option<String>,
    detail: &'a Value,
    inputs: &'a [HashRef],
    outputs: &'a [HashRef],
    prev: &'a str,
}

/// The `"hash"` member that ends every line: `,"hash":"` + 64 hex + `"}`.
pub(super) const HASH_PREFIX: &str = ",\"hash\":\"";
pub(super) const HASH_SUFFIX_LEN: usize = HASH_PREFIX.len() + 64 + 2;

impl AuditEntry {
    pub(super) fn body(&self) -> Result<String, AuditError> {
        serde_json::to_string(&Body {
            seq: self.seq,
            time: &self.time,
            actor: &self.actor,
            action: &self.action,
            outcome: self.outcome,
            project: &self.project,
            purpose: &self.purpose,
            detail: &self.detail,
            inputs: &self.inputs,
            outputs: &self.outputs,
            prev: &self.prev,
        })
        .map_err(ser_err("an audit entry"))
    }

    /// The hash this entry's contents should carry (what [`super::AuditLog::append`] stores).
    pub fn compute_hash(&self) -> Result<String, AuditError> {
        Ok(sha256_hex(self.body()?.as_bytes()))
    }

    /// The entry as one canonical log line (no trailing newline), with `hash` as stored.
    pub fn to_line(&self) -> Result<String, AuditError> {
        let body = self.body()?;
        Ok(seal_line(&body, &self.hash))
    }
}

/// `{...}` + hash -> `{...,"hash":"<hash>"}`.
pub(super) fn seal_line(body: &str, hash: &str) -> String {
    let open = body.strip_suffix('}').unwrap_or(body);
    format!("{open}{HASH_PREFIX}{hash}\"}}")
}

/// An entry before it is numbered, timed and chained: what a command fills in. Its
/// `Debug` names the action only: the free text is unsanitised and may hold anything.
#[derive(Clone)]
pub struct EntryDraft {
    pub(super) actor: String,
    pub(super) action: String,
    pub(super) outcome: Outcome,
    pub(super) project: Option<String>,
    pub(super) purpose: Option<String>,
    pub(super) detail: Map<String, Value>,
    pub(super) inputs: Vec<HashRef>,
    pub(super) outputs: Vec<HashRef>,
}

impl std::fmt::Debug for EntryDraft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntryDraft")
            .field("action", &self.action)
            .field("outcome", &self.outcome)
            .field("detail_keys", &self.detail.len())
            .field("inputs", &self.inputs.len())
            .field("outputs", &self.outputs.len())
            .finish_non_exhaustive()
    }
}

impl EntryDraft {
    /// A successful `action` by `actor`, with no project, purpose, detail or files yet.
    pub fn new(actor: impl Into<String>, action: impl Into<String>) -> Self {
        EntryDraft {
            actor: actor.into(),
            action: action.into(),
            outcome: Outcome::Ok,
            project: None,
            purpose: None,
            detail: Map::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
        }
    }

    /// Set the outcome.
    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }

    /// Mark as refused by a rule, recording why in `detail.reason`. The reason should not
    /// quote a patient's values; anything that looks like an NHS number is redacted.
    pub fn refused(self, reason: impl Into<String>) -> Self {
        self.outcome(Outcome::Refused)
            .detail("reason", reason.into())
    }

    /// Mark as failed, recording why in `detail.reason`.
    pub fn failed(self, reason: impl Into<String>) -> Self {
        self.outcome(Outcome::Error).detail("reason", reason.into())
    }

    /// The project concerned.
    pub fn project(mut self, project: impl Into<String>) -> Self {
        self.project = Some(project.into());
        self
    }

    /// The declared purpose.
    pub fn purpose(mut self, purpose: impl Into<String>) -> Self {
        self.purpose = Some(purpose.into());
        self
    }

    /// Add (or replace) one fact in `detail`: a count, an id, a fingerprint, a reason.
    pub fn detail(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.detail.insert(key.into(), value.into());
        self
    }

    /// Add a file read.
    pub fn input(mut self, file: HashRef) -> Self {
        self.inputs.push(file);
        self
    }

    /// Add a file written.
    pub fn output(mut self, file: HashRef) -> Self {
        self.outputs.push(file);
        self
    }

    /// The structural check run by every append: a non-empty actor, an action that is a
    /// short lowercase name, and file hashes that are SHA-256 hex. These come from the
    /// calling code, never from a user, so a failure is a bug ([`AuditError::Invalid`]).
    /// Free text is never refused: [`super::sanitise`] escapes, redacts and shortens it.
    pub fn check(&self) -> Result<(), AuditError> {
        let invalid = |field: &str, problem| AuditError::Invalid {
            field: field.to_string(),
            problem,
        };
        if self.actor.trim().is_empty() {
            return Err(invalid("actor", DraftProblem::Empty));
        }
        if !is_action_name(&self.action) {
            return Err(invalid("action", DraftProblem::NotAnActionName));
        }
        for (name, files) in [("inputs", &self.inputs), ("outputs", &self.outputs)] {
            for (i, f) in files.iter().enumerate() {
                if !is_sha256_hex(&f.sha256) {
                    return Err(invalid(
                        &format!("{name}[{i}].sha256"),
                        DraftProblem::NotSha256,
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `extract`, `release.review`: lowercase ASCII, digits and `._-`, starting with a
/// letter, at most 64 characters.
fn is_action_name(action: &str) -> bool {
    action.len() <= 64
        && action.starts_with(|c: char| c.is_ascii_lowercase())
        && action
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
}
