//! The TRE's one way to write its audit log: append, then checkpoint every N entries.
//!
//! Owns "audit first, then act" for the server and the admin commands: callers append
//! the entry for an action and only make its effect visible once [`Auditor::record`]
//! returned `Ok` (the entry is on disk and `fsync`ed). If it fails, the action does not
//! happen. Danger: appends block on an `fsync`; call from blocking contexts (or accept
//! the short stall in a handler). Never put a token, a key or a row in an entry.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::audit::{AuditEntry, AuditError, AuditLog, EntryDraft};
use crate::clock::Clock;
use crate::tre::anchors::{self, AuditHead};
use crate::tre::workspace::Workspace;

/// Appends entries to the workspace log and writes checkpoints.
#[derive(Clone)]
pub struct Auditor {
    log: AuditLog,
    clock: Arc<dyn Clock>,
    checkpoints: std::path::PathBuf,
    key: Arc<crate::audit::CheckpointKey>,
    every: u64,
    since: Arc<AtomicU64>,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Auditor({})", self.log.path().display())
    }
}

impl Auditor {
    /// The auditor of `ws`, checkpointing every `every` entries (0: never, except on
    /// [`Auditor::checkpoint`]). First repairs, and records, what an interrupted append
    /// left in the log ([`AuditLog::recover`]); refuses a log damaged in a way no crash
    /// explains.
    pub fn new(ws: &Workspace, clock: Arc<dyn Clock>, every: u64) -> Result<Self, AuditError> {
        let log = AuditLog::in_workspace(ws.root())?;
        log.recover(clock.as_ref())?;
        Ok(Auditor {
            log,
            clock,
            checkpoints: ws.checkpoints_dir(),
            key: Arc::new(anchors::checkpoint_key(ws.root())?),
            every,
            since: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Append `draft` durably. Only after `Ok` may the action's effect become visible.
    pub fn record(&self, draft: EntryDraft) -> Result<AuditEntry, AuditError> {
        let entry = self.log.append(draft, self.clock.as_ref())?;
        if self.every > 0 && self.since.fetch_add(1, Ordering::SeqCst) + 1 >= self.every {
            self.since.store(0, Ordering::SeqCst);
            self.checkpoint()?;
        }
        Ok(entry)
    }

    /// Write a checkpoint of the current head now.
    pub fn checkpoint(&self) -> Result<(), AuditError> {
        anchors::write_checkpoint(&self.log, &self.key, &self.checkpoints, self.clock.as_ref())
    }

    /// The current head.
    pub fn head(&self) -> Result<Option<AuditHead>, AuditError> {
        anchors::audit_head(&self.log)
    }

    /// The clock.
    pub fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }
}
