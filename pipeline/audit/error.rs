//! The audit module's one error type, [`AuditError`], and the structured reasons it
//! carries.
//!
//! Owns the words an operator reads when the audit trail cannot be extended, read,
//! signed or checked. Danger: a log or a draft may hold anything, so no message here ever
//! quotes a stored value; they name files, `seq` numbers and what is wrong.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// Why the audit log could not be read, extended, signed or verified.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A read, write, `fsync`, lock or rename failed.
    #[error("cannot {op} {}: {source}", path.display())]
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
        "audit log {} is damaged or was tampered with ({problem}); it will not be \
         extended. Run `tre audit verify --log {}` and investigate before anything \
         else is recorded",
        path.display(),
        path.display()
    )]
    Broken {
        /// The log.
        path: PathBuf,
        /// What is wrong with its tail.
        problem: TailProblem,
    },
    /// The log no longer holds an entry that an anchor kept outside it vouches for:
    /// entries were cut from the end, the chain was rewritten, or the log was deleted or
    /// restarted.
    #[error(
        "audit log {} does not match its checkpoints ({finding}); it will not be \
         extended. Restore the log from a backup that holds every checkpointed entry, \
         or investigate with `tre audit verify --workspace WS --checkpoints OFFHOST`",
        path.display()
    )]
    AnchorLost {
        /// The log.
        path: PathBuf,
        /// The first anchor that does not hold, in words.
        finding: String,
    },
    /// The caller built a malformed draft (an empty actor, an action that is not a name,
    /// a file hash that is not SHA-256 hex): a bug in the calling code, never input.
    #[error("bug: audit entry refused: {field} {problem}")]
    Invalid {
        /// The field.
        field: String,
        /// What is wrong with it.
        problem: DraftProblem,
    },
    /// A value could not be serialised (a bug in this module).
    #[error("bug in the audit module: cannot serialise {what}: {source}")]
    Serialise {
        /// What was being serialised.
        what: &'static str,
        /// The serialiser's error.
        source: serde_json::Error,
    },
    /// Sanitising did not bring an entry under the size limit (a bug in this module).
    #[error("bug in the audit module: a sanitised entry is still {bytes} bytes (limit {limit})")]
    StillTooLarge {
        /// The entry's length.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// `generate_into` found a checkpoint key already in place.
    #[error(
        "the audit checkpoint key {} already exists; it is created once per workspace and \
         never replaced (checkpoints already copied off-host are signed with it)",
        path.display()
    )]
    KeyExists {
        /// The key file.
        path: PathBuf,
    },
    /// The checkpoint key file is missing.
    #[error(
        "the audit checkpoint key {} does not exist; it is created once with `tre admin \
         init` (for an older workspace: `tre audit checkpoint --workspace WS --new-key`)",
        path.display()
    )]
    KeyMissing {
        /// The key file.
        path: PathBuf,
    },
    /// The checkpoint key file may be read by group or others.
    #[error(
        "the audit checkpoint key {} has mode {mode:04o}, readable by others; run \
         `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    KeyExposed {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file (private or public) is not 64 hex characters of a valid key.
    #[error("{} is not a valid {what}: it must hold 64 hex characters and a newline", path.display())]
    KeyInvalid {
        /// The file.
        path: PathBuf,
        /// "checkpoint signing key" or "checkpoint public key".
        what: &'static str,
    },
    /// No public key to check checkpoints against.
    #[error(
        "no public key to check audit checkpoints against: give --public-key FILE (the \
         workspace's audit/checkpoint.pub, ideally a copy kept off-host) or --workspace"
    )]
    NoPublicKey,
    /// A checkpoint for this `seq` already exists with a different hash.
    #[error(
        "checkpoint {} already exists and records a different hash for seq {seq}: the log \
         was rewritten since it was signed; run `tre audit verify --checkpoints {}`",
        path.display(),
        dir.display()
    )]
    CheckpointConflict {
        /// The existing checkpoint file.
        path: PathBuf,
        /// Its folder.
        dir: PathBuf,
        /// The seq both name.
        seq: u64,
    },
    /// A checkpoints folder given to verify holds no checkpoint.
    #[error(
        "{} holds no checkpoint-<seq>.json file: nothing to verify against (give the \
         folder the checkpoints were copied to)",
        dir.display()
    )]
    NoCheckpoints {
        /// The folder.
        dir: PathBuf,
    },
}

/// What is wrong with the end of a log that an append or [`super::AuditLog::head`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TailProblem {
    /// The log is empty but the head file records entries.
    EmptyButHead {
        /// The head's seq.
        head_seq: u64,
    },
    /// The last line has no newline and is too long to be one interrupted append.
    Incomplete,
    /// The last line is not an audit entry or does not match its hash.
    Damaged {
        /// What is wrong with it.
        problem: LineProblem,
    },
    /// The head file is missing.
    HeadMissing {
        /// The head file.
        head: PathBuf,
    },
    /// The head file is not valid JSON of the right shape.
    HeadInvalid {
        /// The head file.
        head: PathBuf,
    },
    /// An append was interrupted and is not repaired yet (the next append, or
    /// [`super::AuditLog::recover`] at start, repairs it and records the repair).
    Interrupted {
        /// What it left.
        what: Interrupted,
    },
    /// The last entry is not the one the head file names.
    HeadMismatch {
        /// The last entry's seq.
        last_seq: u64,
        /// The head's seq.
        head_seq: u64,
    },
}

impl std::fmt::Display for TailProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TailProblem::EmptyButHead { head_seq } => write!(
                f,
                "the log is empty but the head file records seq {head_seq}: entries were removed"
            ),
            TailProblem::Incomplete => f.write_str(
                "its last line has no newline and is longer than any entry: not an \
                 interrupted append",
            ),
            TailProblem::Damaged { problem } => write!(f, "its last line: {problem}"),
            TailProblem::HeadMissing { head } => {
                write!(f, "the head file {} is missing", head.display())
            }
            TailProblem::HeadInvalid { head } => {
                write!(f, "the head file {} is not valid", head.display())
            }
            TailProblem::Interrupted { what } => write!(
                f,
                "an append was interrupted: {what}; the next append or `tre serve` start \
                 repairs it and records the repair"
            ),
            TailProblem::HeadMismatch { last_seq, head_seq } => write!(
                f,
                "the last entry (seq {last_seq}) does not match the head file (seq {head_seq})"
            ),
        }
    }
}

/// What is wrong with one line of the log, on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineProblem {
    /// An empty or all-whitespace line.
    Blank,
    /// Not JSON at all.
    NotJson {
        /// The column where parsing failed.
        column: usize,
    },
    /// JSON, but not an audit entry (fields missing, added, repeated or mistyped).
    NotAnEntry,
    /// Too short to hold an entry.
    TooShort,
    /// `hash` is not the last member, or not the one the entry carries.
    NotCanonical,
    /// The bytes do not match the stored hash.
    HashMismatch,
}

impl LineProblem {
    /// Whether the line is not even JSON (garbled) rather than an edited entry.
    pub fn is_garbled(self) -> bool {
        matches!(self, LineProblem::Blank | LineProblem::NotJson { .. })
    }
}

impl std::fmt::Display for LineProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LineProblem::Blank => f.write_str("the line is blank"),
            LineProblem::NotJson { column } => {
                write!(f, "the line is not JSON (error at column {column})")
            }
            LineProblem::NotAnEntry => f.write_str(
                "the line is JSON but not an audit entry (fields missing, added, repeated or \
                 of the wrong type)",
            ),
            LineProblem::TooShort => f.write_str("the line is too short to be an audit entry"),
            LineProblem::NotCanonical => {
                f.write_str("the line is not in canonical form (its `hash` is not the last member)")
            }
            LineProblem::HashMismatch => f.write_str("its contents do not match its hash"),
        }
    }
}

/// What an interrupted append leaves behind: the only damage a crash, a kill or a full
/// disk can explain. An append writes its line, `fsync`s it, then replaces the head file,
/// so a crash leaves either bytes after the last newline that were never acknowledged
/// (a torn tail, at most one entry long), or a durable last entry that the head file
/// does not name yet (the head one entry behind, or missing while the log holds only its
/// first entry). [`super::AuditLog`] repairs both before it appends and records the
/// repair as an entry of its own; verification reports them as interrupted, not as
/// tampering.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Interrupted {
    /// Bytes after the last newline.
    TornTail {
        /// How many.
        bytes: u64,
        /// Their SHA-256 (never their contents).
        sha256: String,
    },
    /// The last entry is durable but the head file names the one before it.
    HeadBehind {
        /// The head file's seq (`None`: no head file yet).
        head_seq: Option<u64>,
        /// The last entry's seq.
        last_seq: u64,
    },
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Interrupted::TornTail { bytes, .. } => write!(
                f,
                "{bytes} bytes after the last complete entry (an append interrupted before \
                 its fsync)"
            ),
            Interrupted::HeadBehind {
                head_seq: Some(h),
                last_seq,
            } => write!(
                f,
                "the head file names seq {h} but seq {last_seq} is durable (an append \
                 interrupted before it replaced the head)"
            ),
            Interrupted::HeadBehind {
                head_seq: None,
                last_seq,
            } => write!(
                f,
                "no head file yet but seq {last_seq} is durable (the first append was \
                 interrupted before it wrote the head)"
            ),
        }
    }
}

/// What is wrong with a field of a draft (always the calling code's fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DraftProblem {
    /// An empty actor.
    Empty,
    /// An action that is not a short lowercase name.
    NotAnActionName,
    /// A file hash that is not SHA-256 hex.
    NotSha256,
}

impl std::fmt::Display for DraftProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DraftProblem::Empty => "is empty: every entry names who acted",
            DraftProblem::NotAnActionName => {
                "must be a lowercase name of at most 64 characters such as `extract` or \
                 `release.review`"
            }
            DraftProblem::NotSha256 => "is not 64 lowercase hex characters",
        })
    }
}

impl crate::error::Classify for AuditError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            AuditError::Broken { .. }
            | AuditError::AnchorLost { .. }
            | AuditError::KeyExists { .. }
            | AuditError::KeyExposed { .. }
            | AuditError::KeyInvalid { .. }
            | AuditError::CheckpointConflict { .. } => ErrorKind::Refused,
            AuditError::Invalid { .. }
            | AuditError::Serialise { .. }
            | AuditError::StillTooLarge { .. } => ErrorKind::Bug,
            AuditError::Io { .. }
            | AuditError::KeyMissing { .. }
            | AuditError::NoPublicKey
            | AuditError::NoCheckpoints { .. } => ErrorKind::Failed,
        }
    }
}

/// An `io::Error` mapper naming the operation and the file.
pub(super) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> AuditError + 'a {
    move |source| AuditError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A `serde_json` error mapper for values this module built itself.
pub(super) fn ser_err(what: &'static str) -> impl FnOnce(serde_json::Error) -> AuditError {
    move |source| AuditError::Serialise { what, source }
}

/// A durable write's error as an [`AuditError::Io`].
pub(super) fn durable_err(
    op: &'static str,
) -> impl FnOnce(crate::durable::DurableError) -> AuditError {
    move |e| AuditError::Io {
        op,
        path: e.path,
        source: e.source,
    }
}
