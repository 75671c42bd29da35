//! The tamper-evident audit trail: who did what to which project's data, when and why.
//!
//! Owns the audit log format and its two operations: [`AuditLog::append`], which every
//! command (extract, query, release, purge, init, and their refusals) calls once, and
//! [`verify`], which walks the log and names the first entry that was edited, removed,
//! reordered or inserted. It sits at the end of every flow; nothing reads it back to make
//! a decision except `tre audit`. A refusal is recorded under the action that was
//! attempted, with outcome `refused` and the reason in `detail.reason`. Verification and
//! its damage report live in `audit/verify.rs`, re-exported here.
//!
//! **Format.** `audit.jsonl` holds one JSON object per line ([`AuditEntry`]), fields in a
//! fixed order with `hash` last. `hash` is the lowercase hex SHA-256 of the exact bytes of
//! the line with its `,"hash":"…"` member removed, so any change to any byte of an entry
//! is an edit; `prev` is the previous entry's `hash` (64 zeros for the first) and `seq`
//! counts from 1, so removing, reordering or inserting an entry breaks the chain at a
//! place [`verify`] can name. Because verification hashes the stored bytes rather than a
//! re-serialisation, it does not depend on how `serde_json` orders or formats values.
//!
//! **The head file.** A hash chain cannot show that its last entries were cut off. Every
//! append therefore also writes the new last `seq` and `hash` to a sidecar file
//! (`audit.head` next to `audit.jsonl`, see [`head_path_for`]) atomically (temporary
//! file, `fsync`, rename, directory `fsync`), and [`verify`] compares the log's tail with
//! it. Anyone who can rewrite both files can still forge a consistent history: the chain
//! makes tampering evident, it does not prevent it. For stronger assurance, record the
//! head hash that `tre audit verify` prints somewhere the writer cannot change.
//!
//! **Concurrency and durability.** An append takes an exclusive `flock` on the log file
//! through the safe `std::fs::File::lock` (no `unsafe`; the lock dies with the process, so
//! a crash never leaves a stale lock file behind), checks the tail entry and the head
//! file, writes the line with `O_APPEND`, `fsync`s it (and the directory when the log is
//! new), then replaces the head file. The log is created with mode 0640. If a crash falls
//! between the log `fsync` and the head rename, the head lags by one entry; this looks
//! exactly like a forged append, so both [`verify`] and later appends report it and refuse
//! (fail closed) until someone has looked.
//!
//! **Danger.** Entries must never hold row-level data or key material. Callers build
//! `detail` themselves, so [`EntryDraft::check`] (run by every append) rejects any string
//! anywhere in the entry that looks like an NHS number, and any entry longer than
//! [`MAX_ENTRY_BYTES`]. It cannot recognise a leaked key (keys and pseudonyms are both 64
//! hex characters), so never put a key, a pseudonym or a row into an entry: record
//! counts, ids, fingerprints and file hashes.

use crate::digest::{hex, is_sha256_hex, sha256_hex};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use chrono::SecondsFormat;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::clock::Clock;

mod verify;
pub use verify::{Tamper, TamperKind, VerifyOptions, VerifyReport, verify, verify_with};

/// `prev` of the first entry: 64 zeros.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The longest entry (one line, in bytes) an append accepts. Entries hold counts, ids and
/// hashes; a longer one almost certainly carries rows. This is a format limit, not policy.
pub const MAX_ENTRY_BYTES: usize = 16 * 1024;

/// The head file's name for a log at `log` (`audit.jsonl` -> `audit.head`).
pub fn head_path_for(log: &Path) -> PathBuf {
    log.with_extension("head")
}

/// The audit log of a TRE workspace: `DIR/audit/audit.jsonl`.
pub fn workspace_log_path(workspace: &Path) -> PathBuf {
    workspace.join("audit").join("audit.jsonl")
}

// ---------------------------------------------------------------------------------------
// Errors

/// Why the audit log could not be read, extended or verified.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A read, write, `fsync`, lock or rename failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done ("read", "append to", ...).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The log's tail does not verify, so it will not be extended.
    #[error(
        "audit log {path} is damaged or was tampered with ({reason}); it will not be \
         extended. Run `tre audit verify --log {path}` and investigate before anything \
         else is recorded"
    )]
    Broken {
        /// The log.
        path: PathBuf,
        /// What is wrong with its tail.
        reason: String,
    },
    /// A string in the entry looks like an NHS number (the value is never shown).
    #[error(
        "audit entry refused: {field} looks like an NHS number; audit entries must never \
         hold patient data (record counts, ids or file hashes instead)"
    )]
    PatientData {
        /// Where in the entry: `purpose`, `detail.reason`, `inputs[0].path`, ...
        field: String,
    },
    /// A field of the entry is malformed.
    #[error("audit entry refused: {field} {problem}")]
    Invalid {
        /// The field.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The entry is longer than [`MAX_ENTRY_BYTES`].
    #[error(
        "audit entry refused: it is {bytes} bytes, more than the {limit}-byte limit; \
         entries hold counts, ids and hashes, never rows"
    )]
    TooLarge {
        /// The entry's length.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// A bug in this module (an entry that cannot be serialised).
    #[error("bug in the audit module: {0}")]
    Bug(String),
}

impl crate::error::Classify for AuditError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            AuditError::Broken { .. }
            | AuditError::PatientData { .. }
            | AuditError::Invalid { .. }
            | AuditError::TooLarge { .. } => ErrorKind::Refused,
            _ => ErrorKind::Failed,
        }
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> AuditError + 'a {
    move |source| AuditError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

// ---------------------------------------------------------------------------------------
// Entries

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
    /// Who: the OS login or `TRE_USER`, resolved by the command line.
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
    /// The previous entry's `hash` ([`GENESIS`] for the first).
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
const HASH_PREFIX: &str = ",\"hash\":\"";
const HASH_SUFFIX_LEN: usize = HASH_PREFIX.len() + 64 + 2;

impl AuditEntry {
    fn body(&self) -> Result<String, AuditError> {
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
        .map_err(|e| AuditError::Bug(format!("cannot serialise an audit entry: {e}")))
    }

    /// The hash this entry's contents should carry (what [`AuditLog::append`] stores).
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
fn seal_line(body: &str, hash: &str) -> String {
    let open = body.strip_suffix('}').unwrap_or(body);
    format!("{open}{HASH_PREFIX}{hash}\"}}")
}

/// An entry before it is numbered, timed and chained: what a command fills in.
#[derive(Debug, Clone)]
pub struct EntryDraft {
    actor: String,
    action: String,
    outcome: Outcome,
    project: Option<String>,
    purpose: Option<String>,
    detail: Map<String, Value>,
    inputs: Vec<HashRef>,
    outputs: Vec<HashRef>,
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

    /// Mark as refused by a rule, recording why in `detail.reason`. The reason must not
    /// quote a patient's values (the append refuses one that looks like an NHS number).
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

    /// The guard run by every append: well-formed fields, file hashes that are SHA-256
    /// hex, and no string anywhere that looks like an NHS number.
    pub fn check(&self) -> Result<(), AuditError> {
        let invalid = |field: &str, problem: &str| AuditError::Invalid {
            field: field.to_string(),
            problem: problem.to_string(),
        };
        if self.actor.trim().is_empty() {
            return Err(invalid("actor", "is empty: every entry names who acted"));
        }
        if self.actor.chars().any(char::is_control) {
            return Err(invalid("actor", "contains control characters"));
        }
        let action_ok = self.action.starts_with(|c: char| c.is_ascii_lowercase())
            && self
                .action
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
        if !action_ok {
            return Err(invalid(
                "action",
                "must be a lowercase name such as `extract` or `release.review`",
            ));
        }
        check_text("actor", &self.actor)?;
        if let Some(p) = &self.project {
            check_text("project", p)?;
        }
        if let Some(p) = &self.purpose {
            check_text("purpose", p)?;
        }
        let mut field = String::from("detail");
        for (k, v) in &self.detail {
            check_key_value(&mut field, k, v)?;
        }
        for (name, files) in [("inputs", &self.inputs), ("outputs", &self.outputs)] {
            for (i, f) in files.iter().enumerate() {
                check_text(&format!("{name}[{i}].path"), &f.path)?;
                if !is_sha256_hex(&f.sha256) {
                    return Err(invalid(
                        &format!("{name}[{i}].sha256"),
                        "is not 64 lowercase hex characters",
                    ));
                }
            }
        }
        Ok(())
    }
}

fn check_text(field: &str, s: &str) -> Result<(), AuditError> {
    if looks_like_nhs_number(s) {
        return Err(AuditError::PatientData {
            field: field.to_string(),
        });
    }
    Ok(())
}

fn check_key_value(field: &mut String, key: &str, v: &Value) -> Result<(), AuditError> {
    let len = field.len();
    // A key is shown by position only if it is itself suspect.
    if looks_like_nhs_number(key) {
        return Err(AuditError::PatientData {
            field: format!("a key of {field}"),
        });
    }
    field.push('.');
    field.push_str(key);
    check_value(field, v)?;
    field.truncate(len);
    Ok(())
}

fn check_value(field: &mut String, v: &Value) -> Result<(), AuditError> {
    match v {
        Value::String(s) => check_text(field, s),
        Value::Array(items) => {
            let len = field.len();
            for (i, item) in items.iter().enumerate() {
                field.push_str(&format!("[{i}]"));
                check_value(field, item)?;
                field.truncate(len);
            }
            Ok(())
        }
        Value::Object(map) => {
            for (k, item) in map {
                check_key_value(field, k, item)?;
            }
            Ok(())
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
    }
}

/// Whether `s` contains something that looks like an NHS number: ten digits in a row, or
/// digits grouped 3-3-4 by single spaces or hyphens, not part of a longer run of digits.
/// Runs of 16 or more hex characters that contain a letter (hashes, pseudonyms, key
/// fingerprints) are skipped, so a pseudonym never trips it; the check digit is not
/// tested, because an invalid number is still a patient's identifier.
pub fn looks_like_nhs_number(s: &str) -> bool {
    let b = s.as_bytes();
    let mut masked = b.to_vec();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_hexdigit() {
            let start = i;
            while i < b.len() && b[i].is_ascii_hexdigit() {
                i += 1;
            }
            if i - start >= 16 && b[start..i].iter().any(u8::is_ascii_alphabetic) {
                masked[start..i].fill(b'x');
            }
        } else {
            i += 1;
        }
    }
    let digits_at = |from: usize| {
        masked[from.min(masked.len())..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count()
    };
    let mut i = 0;
    while i < masked.len() {
        if !masked[i].is_ascii_digit() || (i > 0 && masked[i - 1].is_ascii_digit()) {
            i += 1;
            continue;
        }
        let first = digits_at(i);
        if first == 10 {
            return true;
        }
        if first == 3 {
            // 3-3-4 with single separators.
            let sep = |at: usize| matches!(masked.get(at), Some(b' ' | b'-'));
            let a = i + 3;
            if sep(a) && digits_at(a + 1) == 3 && sep(a + 4) && digits_at(a + 5) == 4 {
                return true;
            }
        }
        i += first;
    }
    false
}

// ---------------------------------------------------------------------------------------
// Reading one line

/// What is wrong with one line, on its own.
enum LineError {
    /// Not JSON at all.
    Garbled(String),
    /// JSON, but not an audit entry, or its bytes do not match its hash.
    Edited { seq: Option<u64>, message: String },
}

/// Parse one line (without its newline) and check its own hash against its bytes.
fn parse_line(line: &[u8]) -> Result<AuditEntry, LineError> {
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
fn read_head(path: &Path) -> Result<Option<Head>, AuditError> {
    match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice::<Head>(&bytes) {
            Ok(h) if is_sha256_hex(&h.hash) => Ok(Some(h)),
            _ => Err(AuditError::Broken {
                path: path.to_path_buf(),
                reason: format!("the head file {} is not valid", path.display()),
            }),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", path)(e)),
    }
}

// ---------------------------------------------------------------------------------------
// Appending

/// An append-only audit log file and its head file.
#[derive(Debug, Clone)]
pub struct AuditLog {
    path: PathBuf,
    head: PathBuf,
}

impl AuditLog {
    /// The log at `path` (created by the first append). Its folder must exist.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, AuditError> {
        let path = path.into();
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            return Err(AuditError::Io {
                op: "open the audit folder",
                path: dir,
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        let head = head_path_for(&path);
        Ok(AuditLog { path, head })
    }

    /// The log of a TRE workspace, `DIR/audit/audit.jsonl`.
    pub fn in_workspace(workspace: &Path) -> Result<Self, AuditError> {
        AuditLog::open(workspace_log_path(workspace))
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The head file.
    pub fn head_path(&self) -> &Path {
        &self.head
    }

    /// Check `draft`, number, time and chain it onto the last entry, and write it
    /// durably. Refuses ([`AuditError::Broken`]) to extend a log whose last entry does
    /// not verify or does not match the head file.
    pub fn append(&self, draft: EntryDraft, clock: &dyn Clock) -> Result<AuditEntry, AuditError> {
        draft.check()?;
        let path = &self.path;
        let mut opts = OpenOptions::new();
        opts.read(true).append(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o640);
        }
        let mut file = opts.open(path).map_err(io_err("open", path))?;
        file.lock().map_err(io_err("lock", path))?;
        let len = file.metadata().map_err(io_err("read", path))?.len();
        let head = read_head(&self.head)?;
        let broken = |reason: String| AuditError::Broken {
            path: path.clone(),
            reason,
        };
        let (seq, prev) = if len == 0 {
            if let Some(h) = head {
                return Err(broken(format!(
                    "the log is empty but the head file records seq {}: entries were removed",
                    h.seq
                )));
            }
            (1, GENESIS.to_string())
        } else {
            let tail = read_last_line(&mut file, len).map_err(io_err("read", path))?;
            let Some(tail) = tail.strip_suffix(b"\n") else {
                return Err(broken(
                    "its last line is incomplete (an append was interrupted)".into(),
                ));
            };
            let last = parse_line(tail).map_err(|e| {
                broken(match e {
                    LineError::Garbled(m) => format!("its last line is damaged: {m}"),
                    LineError::Edited { message, .. } => format!("its last entry: {message}"),
                })
            })?;
            match head {
                None => {
                    return Err(broken(format!(
                        "the head file {} is missing",
                        self.head.display()
                    )));
                }
                Some(h) if h.seq != last.seq || h.hash != last.hash => {
                    return Err(broken(format!(
                        "the last entry (seq {}) does not match the head file (seq {})",
                        last.seq, h.seq
                    )));
                }
                Some(_) => {}
            }
            (last.seq + 1, last.hash)
        };
        let mut entry = AuditEntry {
            seq,
            time: clock.now().to_rfc3339_opts(SecondsFormat::Millis, true),
            actor: draft.actor,
            action: draft.action,
            outcome: draft.outcome,
            project: draft.project,
            purpose: draft.purpose,
            detail: Value::Object(draft.detail),
            inputs: draft.inputs,
            outputs: draft.outputs,
            prev,
            hash: String::new(),
        };
        let body = entry.body()?;
        if body.len() + HASH_SUFFIX_LEN > MAX_ENTRY_BYTES {
            return Err(AuditError::TooLarge {
                bytes: body.len() + HASH_SUFFIX_LEN,
                limit: MAX_ENTRY_BYTES,
            });
        }
        entry.hash = sha256_hex(body.as_bytes());
        let mut line = seal_line(&body, &entry.hash);
        line.push('\n');
        file.write_all(line.as_bytes())
            .map_err(io_err("append to", path))?;
        file.sync_all().map_err(io_err("fsync", path))?;
        if len == 0 {
            crate::durable::fsync_parent(path).map_err(io_err("fsync the folder of", path))?;
        }
        write_head(
            &self.head,
            &Head {
                seq: entry.seq,
                hash: entry.hash.clone(),
            },
        )?;
        // The lock is released when `file` is dropped, after the head is in place.
        drop(file);
        Ok(entry)
    }
}

/// The last line of a file of `len` bytes, with its newline if it has one.
fn read_last_line(file: &mut File, len: u64) -> std::io::Result<Vec<u8>> {
    let mut chunk = 4096u64;
    loop {
        let start = len.saturating_sub(chunk);
        file.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::with_capacity((len - start) as usize);
        Read::by_ref(file).take(len - start).read_to_end(&mut buf)?;
        let body = buf.strip_suffix(b"\n").unwrap_or(&buf);
        if let Some(nl) = body.iter().rposition(|&c| c == b'\n') {
            return Ok(buf[nl + 1..].to_vec());
        }
        if start == 0 {
            return Ok(buf);
        }
        chunk *= 4;
    }
}

/// Replace the head file atomically (mode 0640, the log's, which an auditors' group
/// needs to verify).
fn write_head(path: &Path, head: &Head) -> Result<(), AuditError> {
    let mut text = serde_json::to_string(head)
        .map_err(|e| AuditError::Bug(format!("cannot serialise the head: {e}")))?;
    text.push('\n');
    crate::durable::write_atomic(path, text.as_bytes(), crate::durable::Mode::GroupRead)
        .map_err(|e| io_err("write the head file", path)(e.source))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Showing

/// Which entries `tre audit show` lists. Empty criteria match everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this project.
    pub project: Option<String>,
    /// Only this actor.
    pub actor: Option<String>,
    /// Only this action, or its sub-actions (`release` matches `release.review`).
    pub action: Option<String>,
}

impl Filter {
    /// Whether `e` passes.
    pub fn matches(&self, e: &AuditEntry) -> bool {
        self.project
            .as_ref()
            .is_none_or(|p| e.project.as_deref() == Some(p.as_str()))
            && self.actor.as_ref().is_none_or(|a| &e.actor == a)
            && self.action.as_ref().is_none_or(|a| {
                e.action == *a
                    || e.action
                        .strip_prefix(a.as_str())
                        .is_some_and(|rest| rest.starts_with('.'))
            })
    }
}

/// Every line of the log that is an audit entry, with its line number, skipping any that
/// is not (run [`verify`] to learn whether the log can be trusted).
pub fn read_entries(path: &Path) -> Result<Vec<(u64, AuditEntry)>, AuditError> {
    let bytes = std::fs::read(path).map_err(io_err("read", path))?;
    Ok(bytes
        .split(|&c| c == b'\n')
        .enumerate()
        .filter_map(|(i, l)| {
            let e: AuditEntry = serde_json::from_slice(l).ok()?;
            Some((i as u64 + 1, e))
        })
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::clock::FixedClock;
    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;

    pub(super) const H: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    pub(super) fn clock(n: i64) -> FixedClock {
        FixedClock(Utc.timestamp_opt(1_714_000_000 + n, 0).unwrap())
    }

    pub(super) fn draft(i: usize) -> EntryDraft {
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
    pub(super) fn build(n: usize) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        for i in 0..n {
            log.append(draft(i), &clock(i as i64)).unwrap();
        }
        (dir, path)
    }

    pub(super) fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    pub(super) fn write_lines(path: &Path, lines: &[String]) {
        let mut s = lines.join("\n");
        s.push('\n');
        std::fs::write(path, s).unwrap();
    }

    pub(super) fn entry(line: &str) -> AuditEntry {
        serde_json::from_str(line).unwrap()
    }

    pub(super) fn problem(path: &Path) -> Tamper {
        verify(path).unwrap().problem.expect("tampering detected")
    }

    #[test]
    fn append_refuses_a_broken_log() {
        let (_d, path) = build(3);
        let mut ls = lines(&path);
        ls[2] = ls[2].replace("study 2", "study X");
        write_lines(&path, &ls);
        let log = AuditLog::open(&path).unwrap();
        let err = log.append(draft(9), &clock(9)).unwrap_err();
        assert!(matches!(err, AuditError::Broken { .. }), "{err}");
        assert!(crate::error::Classify::is_refusal(&err));

        // Tail removed: last line valid but behind the head.
        let (_d, path) = build(3);
        let mut ls = lines(&path);
        ls.pop();
        write_lines(&path, &ls);
        let err = AuditLog::open(&path)
            .unwrap()
            .append(draft(9), &clock(9))
            .unwrap_err();
        assert!(matches!(err, AuditError::Broken { .. }), "{err}");
    }

    #[test]
    fn concurrent_appends_keep_one_chain() {
        let (_d, path) = build(0);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let log = AuditLog::open(&path).unwrap();
                    for i in 0..8 {
                        log.append(draft(t * 8 + i), &clock(i as i64)).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let r = verify(&path).unwrap();
        assert!(r.is_intact(), "{:?}", r.problem);
        assert_eq!(r.last.map(|h| h.seq), Some(32));
    }

    #[test]
    fn guard_rejects_nhs_numbers_without_echoing_them() {
        let log_dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(log_dir.path().join("audit.jsonl")).unwrap();
        let cases = [
            EntryDraft::new("alice", "extract").purpose("patient 9434765919"),
            EntryDraft::new("alice", "extract").refused("bad row 943 476 5919"),
            EntryDraft::new("alice", "extract")
                .detail("rows", serde_json::json!([{"n": "943-476-5919"}])),
            EntryDraft::new("alice", "extract").input(HashRef::new("in/9434765919.csv", H)),
        ];
        for d in cases {
            let err = log.append(d, &clock(0)).unwrap_err();
            assert!(matches!(err, AuditError::PatientData { .. }), "{err}");
            let msg = format!("{err} {err:?}");
            assert!(
                !msg.contains("9434765919") && !msg.contains("5919"),
                "{msg}"
            );
        }
        assert!(!log.path().exists(), "nothing was written");
    }

    #[test]
    fn nhs_number_lookalikes() {
        for yes in [
            "9434765919",
            "x 943 476 5919.",
            "943-476-5919",
            "id=9434765870;",
        ] {
            assert!(looks_like_nhs_number(yes), "{yes}");
        }
        for no in [
            H,
            "dd5c602eeb31d60c7c0d662c897231dda00e13cdf945b14cad185a4a7125826c",
            "ad3e1ee3fff41f02",
            "94347659190",
            "943476591",
            "2024-04-24T23:06:40.000Z",
            "rows 1234 of 56789",
            "123e4567-e89b-12d3-a456-426614174000",
        ] {
            assert!(!looks_like_nhs_number(no), "{no}");
        }
    }

    #[test]
    fn malformed_drafts_are_refused() {
        let bad = [
            EntryDraft::new("", "extract"),
            EntryDraft::new("alice", "Extract!"),
            EntryDraft::new("alice", "extract").output(HashRef::new("x", "abc")),
        ];
        for d in bad {
            assert!(matches!(d.check(), Err(AuditError::Invalid { .. })));
        }
        let big = EntryDraft::new("alice", "extract").detail("blob", "a".repeat(MAX_ENTRY_BYTES));
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path().join("audit.jsonl")).unwrap();
        assert!(matches!(
            log.append(big, &clock(0)),
            Err(AuditError::TooLarge { .. })
        ));
    }

    #[test]
    fn filter_matches_project_actor_and_action_prefix() {
        let (_d, path) = build(6);
        let entries = read_entries(&path).unwrap();
        let f = Filter {
            project: Some("p1".into()),
            actor: Some("alice".into()),
            action: None,
        };
        let got: Vec<u64> = entries
            .iter()
            .filter(|(_, e)| f.matches(e))
            .map(|(l, _)| *l)
            .collect();
        assert_eq!(got, vec![1]);
        let mut e = entries[0].1.clone();
        e.action = "release.review".into();
        let rel = Filter {
            action: Some("release".into()),
            ..Filter::default()
        };
        assert!(rel.matches(&e));
        e.action = "releases".into();
        assert!(!rel.matches(&e));
    }

    proptest! {
        #[test]
        fn pseudonyms_and_hashes_never_look_like_nhs_numbers(bytes in any::<[u8; 32]>()) {
            prop_assert!(!looks_like_nhs_number(&hex(&bytes)));
        }
    }
}
