//! The tamper-evident audit trail: who did what to which project's data, when and why.
//!
//! Owns the audit log format and its operations: [`AuditLog::append`], which every
//! action (extract, query, release, purge, init, and their refusals) calls before its
//! effect is visible; [`AuditLog::head`], the `(seq, hash)` that manifests record as an
//! [`AuditAnchor`]; [`checkpoint::write_checkpoint`], which signs the head so a copy kept
//! off-host can vouch for it; and [`verify`] / [`verify_anchored`], which walk the log and
//! name the first entry that was edited, removed, reordered or inserted, and every anchor
//! the log no longer matches. It sits at the end of every flow; nothing reads it back to
//! make a decision except `tre audit`. A refusal is recorded under the action that was
//! attempted, with outcome `refused` and the reason in `detail.reason`.
//!
//! Where things are: [`entry`] (the line and the draft), [`sanitise`] (what may be
//! stored), `head` (reading a line back, the head file), `log` (appending), `show`
//! (listing), `verify` (the chain), `anchors` (checkpoints and manifests against the log),
//! [`checkpoint`] (signing keys and checkpoint files), [`tail`] (reading on from where a
//! reader left off).
//!
//! **Format.** `audit.jsonl` holds one JSON object per line ([`AuditEntry`]), fields in a
//! fixed order with `hash` last. `hash` is the lowercase hex SHA-256 of the exact bytes of
//! the line with its `,"hash":"…"` member removed, so any change to any byte of an entry
//! is an edit; `prev` is the previous entry's `hash` (64 zeros for the first) and `seq`
//! counts from 1, so removing, reordering or inserting an entry breaks the chain at a
//! place [`verify`] can name. Because verification hashes the stored bytes rather than a
//! re-serialisation, it does not depend on how `serde_json` orders or formats values.
//!
//! **The head file and anchors.** A hash chain cannot show that its last entries were cut
//! off. Every append therefore also writes the new last `seq` and `hash` to a sidecar
//! file (`audit.head`, see [`head_path_for`]) atomically, and [`verify`] compares the
//! log's tail with it. Anyone who can rewrite both files can still forge a consistent
//! history, so the head is also recorded outside the log: in every manifest
//! ([`AuditAnchor`]) and in signed checkpoints (ed25519; the server writes one every N
//! entries and at shutdown, the operator copies them off-host). [`verify_anchored`] finds
//! a cut tail, a recomputed chain or a deleted log against any of them.
//!
//! **Concurrency and durability.** An append takes an exclusive `flock` on the log file
//! through the safe `std::fs::File::lock` (the lock dies with the process), checks the
//! tail entry and the head file, writes the line with `O_APPEND`, `fsync`s it (and the
//! directory when the log is new), then replaces the head file. The log is created with
//! mode 0640. A failed write or `fsync` (a full disk) cuts the log back to where it was.
//! A crash can still leave two things ([`Interrupted`]): a torn last line (never
//! acknowledged, at most one entry long), or a durable last entry the head file does
//! not name yet. The next append, and [`AuditLog::recover`] at every start of the
//! service, cut the one and bring the head up to the other, and record what they did in
//! an `audit.recover` entry; [`verify`] reports them as interrupted, not as tampering.
//! Anything else (a head ahead of the log, a mismatched hash, a long unterminated tail)
//! is still refused as tampering (fail closed).
//!
//! **Danger.** Entries must never hold row-level data or key material, and no input may
//! make an action unauditable. Every append therefore sanitises the draft
//! ([`sanitise::sanitise`]): control characters escaped, anything that looks like an NHS
//! number redacted, long text stored as a prefix and its hash, and an entry over
//! [`MAX_ENTRY_BYTES`] shrunk by hashing its largest parts; it is never refused for what
//! it says. The guard cannot recognise a leaked key (keys and pseudonyms are both 64 hex
//! characters), so never put a key, a pseudonym or a row into an entry: record counts,
//! ids, fingerprints and file hashes.

use std::path::{Path, PathBuf};

mod anchors;
pub mod checkpoint;
pub mod entry;
mod error;
pub mod follow;
mod head;
mod log;
pub mod sanitise;
mod show;
pub mod tail;
#[cfg(test)]
pub(crate) mod testutil;
mod verify;

pub use anchors::{
    AnchorFinding, AnchorKind, AnchorProblem, Anchors, AuditAnchor, FullReport, verify_anchored,
};
pub use checkpoint::{CheckpointKey, CheckpointRecord, PublicKey, write_checkpoint};
pub use entry::{AuditEntry, EntryDraft, HashRef, Outcome};
pub use error::{AuditError, DraftProblem, Interrupted, LineProblem, TailProblem};
pub use head::Head;
pub use log::{AuditLog, RECOVERY_ACTION, RECOVERY_ACTOR};
pub use sanitise::{NOTES_KEY, REDACTED, escape_control, looks_like_nhs_number};
pub use show::{Filter, escape_json_text, read_entries, write_json_lines, write_table};
pub use verify::{Tamper, TamperKind, VerifyOptions, VerifyReport, verify, verify_with};

/// `prev` of the first entry: 64 zeros.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The longest entry (one line, in bytes) stored. Entries hold counts, ids and hashes;
/// a longer one is shrunk by hashing its largest parts. This is a format limit, not policy.
pub const MAX_ENTRY_BYTES: usize = 16 * 1024;

/// The head file's name for a log at `log` (`audit.jsonl` -> `audit.head`).
pub fn head_path_for(log: &Path) -> PathBuf {
    log.with_extension("head")
}

/// The audit log of a TRE workspace: `DIR/audit/audit.jsonl`.
pub fn workspace_log_path(workspace: &Path) -> PathBuf {
    workspace.join("audit").join("audit.jsonl")
}
