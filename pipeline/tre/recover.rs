//! Start-up reconciliation: the audit log is the journal of intent, and every action it
//! records since the last start either took effect or is rolled back and said so.
//!
//! Owns the one rule by which the service survives a crash between an audit entry and
//! its effect ("audit first, then act" makes every entry an intent): at each start,
//! before `serve.start` is written, [`reconcile`] reads the entries written since the
//! previous `serve.start` (all of them on the first start), asks of each action whether
//! its effect is there (a job record for `job.submit`, a request for `release.request`,
//! the checker's review in the request for `release.review`, the user, project, outbox
//! or dataset for the admin commands), removes what a half-done action left that no
//! reader trusts (a job or request folder with no record), and records one
//! `service.recover` entry per action that did not take effect, naming its `seq`. Steps
//! that finish by themselves (a job left running, an export under way) are recovered by
//! their owners ([`crate::jobs`], [`crate::tre::release`]) and only checked here.
//! Danger: it decides from records the server sealed, never from a file's presence
//! alone, and it never deletes a record: only a folder that holds none.

use std::collections::BTreeSet;

use crate::audit::{AuditEntry, AuditError, EntryDraft, Outcome, read_entries};
use crate::tre::auditor::Auditor;
use crate::tre::id::Id;
use crate::tre::workspace::Workspace;

/// The action recorded for each entry that did not take effect.
pub const RECOVER_ACTION: &str = "service.recover";

/// One action whose audit entry stands but whose effect a crash stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undone {
    /// The entry's `seq`.
    pub seq: u64,
    /// Its action.
    pub action: String,
    /// What was found, in words.
    pub what: String,
}

/// Why reconciliation could not run.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// The audit log could not be read or extended.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

impl crate::error::Classify for RecoverError {
    fn kind(&self) -> crate::error::ErrorKind {
        match self {
            RecoverError::Audit(a) => crate::error::Classify::kind(a),
        }
    }
}

/// Check every action recorded since the previous start; roll back and record each one
/// that did not take effect. Returns them (empty after a clean stop).
pub fn reconcile(ws: &Workspace, auditor: &Auditor) -> Result<Vec<Undone>, RecoverError> {
    let log = crate::audit::workspace_log_path(ws.root());
    let entries = match read_entries(&log) {
        Ok(e) => e,
        Err(AuditError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Vec::new()
        }
        Err(e) => return Err(e.into()),
    };
    let since = entries
        .iter()
        .rposition(|(_, e)| e.action == "serve.start")
        .map_or(0, |i| i + 1);
    // An interrupted reconciliation already recorded some: never twice.
    let recorded: BTreeSet<u64> = entries[since..]
        .iter()
        .filter(|(_, e)| e.action == RECOVER_ACTION)
        .filter_map(|(_, e)| e.detail.get("seq").and_then(|v| v.as_u64()))
        .collect();
    let mut undone = Vec::new();
    for (_, e) in &entries[since..] {
        if recorded.contains(&e.seq) {
            continue;
        }
        if let Some(what) = check(ws, e) {
            undone.push(Undone {
                seq: e.seq,
                action: e.action.clone(),
                what,
            });
        }
    }
    for u in &undone {
        let mut d = EntryDraft::new(crate::audit::RECOVERY_ACTOR, RECOVER_ACTION)
            .outcome(Outcome::Ok)
            .detail("seq", u.seq)
            .detail("action", u.action.as_str())
            .detail("found", u.what.as_str());
        if let Some((_, e)) = entries.iter().find(|(_, e)| e.seq == u.seq)
            && let Some(p) = &e.project
        {
            d = d.project(p.as_str());
        }
        auditor.record(d)?;
    }
    Ok(undone)
}

/// `None` when the effect of `e` is there (or `e` has no effect to check); otherwise
/// what was found, after removing what a half-done action left.
fn check(ws: &Workspace, e: &AuditEntry) -> Option<String> {
    if e.outcome != Outcome::Ok {
        return None;
    }
    let project = || {
        e.project
            .as_deref()
            .and_then(|p| Id::parse("project", p).ok())
    };
    let id = |kind: &'static str, key: &str| {
        e.detail
            .get(key)
            .and_then(|v| v.as_str())
            .and_then(|v| Id::parse(kind, v).ok())
    };
    match e.action.as_str() {
        "job.submit" => {
            let (p, job) = (project()?, id("job", "job")?);
            if crate::tre::job::load(ws, &p, &job).is_ok() {
                return None;
            }
            let dir = crate::tre::query::job_dir(ws, &p, &job);
            remove_if_recordless(&dir, "job.json");
            Some(format!(
                "job {job} was never created (no job record); rolled back"
            ))
        }
        "job.start" => {
            let (p, job) = (project()?, id("job", "job")?);
            let queued = crate::tre::job::load(ws, &p, &job)
                .is_ok_and(|r| r.state == crate::tre::job::JobState::Queued);
            queued.then(|| {
                format!(
                    "job {job} never started (its record is still queued); it runs from the queue"
                )
            })
        }
        "release.request" => {
            let (p, rel) = (project()?, id("release", "release")?);
            match crate::tre::release::load(ws, &p, &rel) {
                Ok(_) => None,
                Err(_) => Some(format!(
                    "release request {rel} was never saved; rolled back (request it again)"
                )),
            }
        }
        "release.review" => {
            let (p, rel) = (project()?, id("release", "release")?);
            let reviewed = crate::tre::release::load(ws, &p, &rel)
                .is_ok_and(|r| r.reviews.iter().any(|v| v.checker.as_str() == e.actor));
            (!reviewed).then(|| {
                format!(
                    "the review of release {rel} by {} was never saved; rolled back (review \
                     it again)",
                    e.actor
                )
            })
        }
        "admin.user.add" => {
            let user = id("user", "user")?;
            let found = crate::tre::users::list(ws)
                .is_ok_and(|l| l.iter().any(|u| u.user.as_str() == user.as_str()));
            (!found).then(|| format!("user {user} was never added; rolled back (add again)"))
        }
        "admin.project.add" => {
            let p = project()?;
            (ws.project(&p, &crate::schema::SchemaSet::builtin())
                .is_err())
            .then(|| format!("project {p} was never installed; rolled back (add again)"))
        }
        "admin.dataset.add" => {
            let p = project()?;
            (!ws.dataset_installed(p.as_str())).then(|| {
                format!("the dataset of project {p} was never installed; rolled back (add again)")
            })
        }
        _ => None,
    }
}

/// Remove `dir` when it holds no `record` (only what a half-done create left: nothing,
/// or temporary files). Best effort: a folder with a record is never touched.
fn remove_if_recordless(dir: &std::path::Path, record: &str) {
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() || dir.join(record).exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let only_temporaries = entries.flatten().all(|e| {
        e.file_type().is_ok_and(|t| t.is_file()) && e.file_name().to_string_lossy().starts_with('.')
    });
    if only_temporaries {
        let _ = std::fs::remove_dir_all(dir);
        let _ = crate::durable::fsync_parent(dir);
    }
}
