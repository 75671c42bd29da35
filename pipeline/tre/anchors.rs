//! Anchors for the audit log, as the TRE uses them: the audit head `(seq, hash)` recorded
//! in installed-dataset records and release manifests, the checkpoint key created by
//! `tre admin init`, and the signed checkpoints the server writes every N entries and at
//! shutdown.
//!
//! The single seam between the TRE and the audit module's anchoring API
//! ([`crate::audit::AuditLog::head`], [`crate::audit::CheckpointKey`],
//! [`crate::audit::write_checkpoint`]). Danger: never sign or record anything but the
//! head: no entry content leaves the log through here.

use std::path::Path;

use crate::audit::{AuditError, AuditLog, CheckpointKey};
use crate::clock::Clock;

/// The audit head at some moment: the last entry's `seq` and `hash`, as manifests embed
/// it (`audit_head`) and `tre audit verify --manifest` checks it.
pub type AuditHead = crate::audit::AuditAnchor;

/// The current audit head of the workspace's log (`None` when the log is empty).
pub fn audit_head(log: &AuditLog) -> Result<Option<AuditHead>, AuditError> {
    Ok(log.head()?.map(AuditHead::from))
}

/// Create the workspace's checkpoint signing key (at `tre admin init`).
pub fn create_checkpoint_key(workspace: &Path) -> Result<(), AuditError> {
    CheckpointKey::generate_into(workspace).map(|_| ())
}

/// Load the workspace's checkpoint signing key (the server, at start).
pub fn checkpoint_key(workspace: &Path) -> Result<CheckpointKey, AuditError> {
    CheckpointKey::load(workspace)
}

/// Sign the current head with `key` and write it into `dir`.
pub fn write_checkpoint(
    log: &AuditLog,
    key: &CheckpointKey,
    dir: &Path,
    clock: &dyn Clock,
) -> Result<(), AuditError> {
    crate::audit::write_checkpoint(log, key, dir, clock).map(|_| ())
}
