//! The TRE's one way to write its audit log: append, then checkpoint every N entries and
//! every T seconds.
//!
//! Owns "audit first, then act" for the server and the admin commands: callers append
//! the entry for an action and only make its effect visible once [`Auditor::record`]
//! returned `Ok` (the entry is on disk and `fsync`ed). If it fails, the action does not
//! happen. Opening an auditor is also where the log is held to its anchors: it repairs,
//! and records, what an interrupted append left ([`crate::audit::AuditLog::recover`]),
//! then refuses a log that no longer holds an entry a signed checkpoint vouches for
//! (entries cut from the end, a rewritten chain, a deleted or restarted log), checked
//! against the workspace's checkpoints and any off-host copies the operator names. The
//! checkpoint signing key may live outside the workspace ([`AuditorOptions::key`]), where
//! a process that can write the workspace cannot read it; its public half must then
//! match the workspace's `audit/checkpoint.pub`. Danger: appends block on an `fsync`;
//! call from blocking contexts (or accept the short stall in a handler). Never put a
//! token, a key or a row in an entry.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::audit::checkpoint::{public_key_path, workspace_checkpoint_dir};
use crate::audit::{
    Anchors, AuditEntry, AuditError, AuditLog, CheckpointKey, EntryDraft, PublicKey, VerifyOptions,
    verify_anchored,
};
use crate::clock::Clock;
use crate::tre::anchors::{self, AuditHead};
use crate::tre::workspace::Workspace;

/// How an [`Auditor`] checkpoints and where its anchors are.
#[derive(Debug, Clone, Default)]
pub struct AuditorOptions {
    /// Write a checkpoint every this many entries (0: never, except on
    /// [`Auditor::checkpoint`]).
    pub every: u64,
    /// Also write one when an entry comes this long after the last checkpoint (`None`:
    /// by count only).
    pub every_seconds: Option<u64>,
    /// The checkpoint signing key's file, kept outside the workspace (`None`: the
    /// workspace's own `keys/audit-checkpoint.key`).
    pub key: Option<PathBuf>,
    /// Off-host copies of the checkpoints (`tre audit follow --to DIR`), checked at open
    /// like the workspace's own.
    pub anchor_dirs: Vec<PathBuf>,
}

/// Appends entries to the workspace log and writes checkpoints.
#[derive(Clone)]
pub struct Auditor {
    log: AuditLog,
    clock: Arc<dyn Clock>,
    checkpoints: PathBuf,
    key: Arc<CheckpointKey>,
    key_outside: bool,
    every: u64,
    every_seconds: Option<u64>,
    since: Arc<AtomicU64>,
    last_checkpoint: Arc<Mutex<Instant>>,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Auditor({})", self.log.path().display())
    }
}

impl Auditor {
    /// The auditor of `ws`, checkpointing every `every` entries (0: never, except on
    /// [`Auditor::checkpoint`]) with the workspace's own key. See [`Auditor::open`].
    pub fn new(ws: &Workspace, clock: Arc<dyn Clock>, every: u64) -> Result<Self, AuditError> {
        Auditor::open(
            ws,
            clock,
            AuditorOptions {
                every,
                ..AuditorOptions::default()
            },
        )
    }

    /// The auditor of `ws`. First repairs, and records, what an interrupted append left
    /// in the log; refuses a log damaged in a way no crash explains, or one that no
    /// longer holds an entry a checkpoint (the workspace's, or an off-host copy's)
    /// vouches for; refuses a key outside the workspace whose public half is not the
    /// workspace's.
    pub fn open(
        ws: &Workspace,
        clock: Arc<dyn Clock>,
        opts: AuditorOptions,
    ) -> Result<Self, AuditError> {
        let log = AuditLog::in_workspace(ws.root())?;
        log.recover(clock.as_ref())?;
        let (key, key_outside) = match &opts.key {
            Some(path) => (load_outside_key(ws, path)?, true),
            None => (anchors::checkpoint_key(ws.root())?, false),
        };
        check_anchors(ws, &log, &opts.anchor_dirs)?;
        Ok(Auditor {
            log,
            clock,
            checkpoints: ws.checkpoints_dir(),
            key: Arc::new(key),
            key_outside,
            every: opts.every,
            every_seconds: opts.every_seconds,
            since: Arc::new(AtomicU64::new(0)),
            last_checkpoint: Arc::new(Mutex::new(Instant::now())),
        })
    }

    /// Record `action` by `actor` on `project` as refused (or, when `refused` is false,
    /// failed) with `why`, before any intent entry was written (the checks of an operator
    /// command): the outcome entry alone.
    pub fn record_refusal(
        &self,
        actor: &str,
        action: &str,
        project: &str,
        refused: bool,
        why: &str,
    ) -> Result<AuditEntry, AuditError> {
        let d = EntryDraft::new(actor, action).project(project);
        self.record(if refused {
            d.refused(why)
        } else {
            d.failed(why)
        })
    }

    /// Append `draft` durably. Only after `Ok` may the action's effect become visible.
    pub fn record(&self, draft: EntryDraft) -> Result<AuditEntry, AuditError> {
        let entry = self.log.append(draft, self.clock.as_ref())?;
        let by_count =
            self.every > 0 && self.since.fetch_add(1, Ordering::SeqCst) + 1 >= self.every;
        let by_time = self.every_seconds.is_some_and(|s| {
            self.last_checkpoint
                .lock()
                .map(|t| t.elapsed() >= Duration::from_secs(s))
                .unwrap_or(true)
        });
        if by_count || by_time {
            self.checkpoint()?;
        }
        Ok(entry)
    }

    /// Write a checkpoint of the current head now.
    pub fn checkpoint(&self) -> Result<(), AuditError> {
        self.since.store(0, Ordering::SeqCst);
        if let Ok(mut t) = self.last_checkpoint.lock() {
            *t = Instant::now();
        }
        anchors::write_checkpoint(&self.log, &self.key, &self.checkpoints, self.clock.as_ref())
    }

    /// Whether the checkpoint key was given from outside the workspace.
    pub fn key_outside_workspace(&self) -> bool {
        self.key_outside
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

/// Load a checkpoint key kept outside the workspace: never inside it, never readable by
/// group or others, and the half the workspace publishes.
fn load_outside_key(ws: &Workspace, path: &std::path::Path) -> Result<CheckpointKey, AuditError> {
    let inside = |p: &std::path::Path| {
        let (Ok(p), Ok(root)) = (std::fs::canonicalize(p), std::fs::canonicalize(ws.root())) else {
            return false;
        };
        p.starts_with(root)
    };
    if inside(path) {
        return Err(AuditError::KeyInvalid {
            path: path.to_path_buf(),
            what: "checkpoint signing key (it must be kept outside the workspace)",
        });
    }
    let left = crate::audit::checkpoint::key_path(ws.root());
    if left.exists() {
        return Err(AuditError::KeyInvalid {
            path: left,
            what: "checkpoint signing key (a key is given from outside the workspace, so \
                   this copy inside it must be removed)",
        });
    }
    let key = CheckpointKey::load_file(path)?;
    let public = public_key_path(ws.root());
    if PublicKey::load(&public)? != key.public_key() {
        return Err(AuditError::KeyInvalid {
            path: path.to_path_buf(),
            what: "checkpoint signing key (its public half is not the workspace's \
                   audit/checkpoint.pub)",
        });
    }
    Ok(key)
}

/// Refuse a log that no longer holds an entry a checkpoint vouches for.
fn check_anchors(ws: &Workspace, log: &AuditLog, extra: &[PathBuf]) -> Result<(), AuditError> {
    match anchor_problem(ws, extra)? {
        None => Ok(()),
        Some(finding) => Err(AuditError::AnchorLost {
            path: log.path().to_path_buf(),
            finding,
        }),
    }
}

/// What is wrong with the workspace's audit log against its signed checkpoints (the
/// workspace's own, and the off-host copies in `extra`): the first bad entry, or the
/// first checkpoint the log no longer matches (a cut tail, a recomputed or deleted
/// log, a checkpoint whose signature fails); `None` when every checkpoint holds.
pub fn anchor_problem(ws: &Workspace, extra: &[PathBuf]) -> Result<Option<String>, AuditError> {
    Ok(anchored_report(ws, extra)?
        .as_ref()
        .and_then(anchor_finding))
}

/// What [`anchor_problem`] says of a report of [`anchored_report`].
pub fn anchor_finding(report: &crate::audit::FullReport) -> Option<String> {
    if let Some(p) = &report.chain.problem {
        return Some(format!("the first bad entry is {p}"));
    }
    report.first_bad_anchor().map(|a| a.to_string())
}

/// The workspace's audit log verified, in one read, against its signed checkpoints (the
/// workspace's own, and the off-host copies in `extra`): its chain and head file, and
/// every checkpoint; `None` when there is no checkpoint to check against.
pub fn anchored_report(
    ws: &Workspace,
    extra: &[PathBuf],
) -> Result<Option<crate::audit::FullReport>, AuditError> {
    let log = crate::audit::workspace_log_path(ws.root());
    let own = workspace_checkpoint_dir(ws.root());
    let mut dirs = Vec::new();
    let has_any = |d: &std::path::Path| {
        crate::audit::checkpoint::list_checkpoints(d).is_ok_and(|c| !c.is_empty())
    };
    if has_any(&own) {
        dirs.push(own);
    }
    dirs.extend(extra.iter().filter(|d| has_any(d)).cloned());
    if dirs.is_empty() {
        return Ok(None);
    }
    let public = public_key_path(ws.root());
    let anchors = Anchors {
        checkpoint_dirs: dirs,
        manifests: Vec::new(),
        public_key: Some(PublicKey::load(&public)?),
    };
    verify_anchored(&log, VerifyOptions::default(), &anchors).map(Some)
}
