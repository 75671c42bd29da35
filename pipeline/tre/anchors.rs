//! Anchors for the audit log, as the TRE uses them: the audit head `(seq, hash)` recorded
//! in installed-dataset records and release manifests, the checkpoint key created by
//! `tre admin init`, and the checkpoints the server writes every N entries and at
//! shutdown.
//!
//! This is the single seam between the TRE and the audit module's anchoring API.
//! MERGE: audit. The helper "audit" adds `AuditLog::head()`, `audit::checkpoint`
//! (`CheckpointKey::generate_into`, `CheckpointKey::load`, `write_checkpoint`); until then
//! the bodies below are stand-ins: the head is read from the log's own head file, no key
//! is made, and a "checkpoint" is an unsigned copy of the head. Swap the bodies at merge;
//! the signatures are what the rest of the TRE calls. Danger: never sign or record
//! anything but the head: no entry content leaves the log through here.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::audit::{AuditError, AuditLog};
use crate::clock::Clock;

/// The audit head at some moment: the last entry's `seq` and `hash`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditHead {
    /// The last entry's `seq`.
    pub seq: u64,
    /// The last entry's `hash`.
    pub hash: String,
}

/// The current audit head of the workspace's log (`None` when the log is empty).
pub fn audit_head(log: &AuditLog) -> Result<Option<AuditHead>, AuditError> {
    // MERGE: audit — replace with `log.head()` mapped into AuditHead.
    match std::fs::read(log.head_path()) {
        Ok(bytes) => {
            let h: crate::audit::Head =
                serde_json::from_slice(&bytes).map_err(|e| AuditError::Broken {
                    path: log.head_path().to_path_buf(),
                    reason: format!("the head file is not valid ({e})"),
                })?;
            Ok(Some(AuditHead {
                seq: h.seq,
                hash: h.hash,
            }))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(AuditError::Io {
            op: "read",
            path: log.head_path().to_path_buf(),
            source,
        }),
    }
}

/// Create the workspace's checkpoint signing key (at `tre admin init`).
pub fn create_checkpoint_key(_workspace: &Path) -> Result<(), AuditError> {
    // MERGE: audit — `CheckpointKey::generate_into(workspace)`.
    Ok(())
}

/// Write a checkpoint of the current head into `dir`.
pub fn write_checkpoint(log: &AuditLog, dir: &Path, _clock: &dyn Clock) -> Result<(), AuditError> {
    // MERGE: audit — `write_checkpoint(log, &CheckpointKey::load(workspace)?, dir, clock)`.
    let Some(head) = audit_head(log)? else {
        return Ok(());
    };
    let text = serde_json::to_vec(&head)
        .map_err(|e| AuditError::Bug(format!("cannot serialise the head: {e}")))?;
    let path = dir.join(format!("head-{:012}.json", head.seq));
    crate::durable::write_atomic(&path, &text, crate::durable::Mode::Private).map_err(|e| {
        AuditError::Io {
            op: "write a checkpoint",
            path,
            source: e.source,
        }
    })?;
    Ok(())
}
