//! Start-up reconciliation: the audit log is the journal of intent, and every action it
//! records since the last start either took effect or is rolled back and said so.
//!
//! Owns the one rule by which the service survives a crash between an audit entry and
//! its effect ("audit first, then act" makes every entry an intent): at each start,
//! before `serve.start` is written, [`reconcile`] reads the entries written since the
//! previous `serve.start` (all of them on the first start), asks of each action whether
//! its effect is there (a job record for `job.submit`, a request for `release.request`,
//! the checker's review in the request for `release.review`, the user (added or
//! revoked), project, outbox, dataset or dropped version for the admin commands, an
//! outcome after a `purge.start` or a `refresh.start`), removes what a half-done action
//! left that no reader trusts (a job folder with no record, also one no entry names),
//! and records one
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
    // At start-up the log is read once, for this and the record index together.
    let entries = match ws.log_entries_once().ok().flatten() {
        Some(e) => e,
        None => {
            let log = crate::audit::workspace_log_path(ws.root());
            match read_entries(&log) {
                Ok(e) => e,
                Err(AuditError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    Vec::new()
                }
                Err(e) => return Err(e.into()),
            }
        }
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
    for (i, (_, e)) in entries.iter().enumerate().skip(since) {
        if recorded.contains(&e.seq) {
            continue;
        }
        let found = match e.action.as_str() {
            crate::tre::purge::PURGE_START_ACTION => purge_unfinished(e, &entries[i + 1..]),
            crate::tre::refresh::REFRESH_START_ACTION => refresh_unfinished(e, &entries[i + 1..]),
            _ => check(ws, e),
        };
        if let Some(what) = found {
            undone.push(Undone {
                seq: e.seq,
                action: e.action.clone(),
                what,
            });
        }
    }
    sweep_unrecorded_jobs(ws);
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
        "admin.user.revoke" => {
            let user = id("user", "user")?;
            let revoked = crate::tre::users::list(ws)
                .is_ok_and(|l| l.iter().any(|u| u.user == user && u.revoked));
            (!revoked).then(|| {
                format!("the token of user {user} was never revoked; rolled back (revoke again)")
            })
        }
        "admin.project.outbox" => {
            let p = project()?;
            // A relative folder was named from the operator's working folder, unknown
            // here: then only that an outbox is set can be checked.
            let now = ws.outbox(&p).ok();
            let set = match e.detail.get("outbox").and_then(|v| v.as_str()) {
                Some(d) if std::path::Path::new(d).is_absolute() => {
                    now.is_some() && std::fs::canonicalize(d).ok() == now
                }
                _ => now.is_some(),
            };
            (!set).then(|| {
                format!("the outbox of project {p} was never set; rolled back (set it again)")
            })
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
        "admin.dataset.drop" => {
            let p = project()?;
            let v = e.detail.get("version").and_then(|v| v.as_u64())?;
            let held = ws
                .dataset(&p)
                .is_ok_and(|r| r.earlier.iter().any(|x| u64::from(x.version) == v));
            held.then(|| {
                format!(
                    "dataset version {v} of project {p} was never dropped; rolled back (drop it again)"
                )
            })
        }
        _ => None,
    }
}

/// A purge whose intent stands with no outcome after it: stopped half-way by a crash.
/// Nothing is rolled back (its rewritten files no longer match their records, so the
/// workspace refuses to query them); running it again finishes it.
fn purge_unfinished(start: &AuditEntry, later: &[(u64, AuditEntry)]) -> Option<String> {
    if start.outcome != Outcome::Ok {
        return None;
    }
    let id = start.detail.get("purge")?;
    let ended = later.iter().any(|(_, e)| {
        e.action == crate::tre::purge::PURGE_ACTION && e.detail.get("purge") == Some(id)
    });
    (!ended).then(|| {
        format!(
            "purge {} stopped before it finished; run `tre purge` again with the same list \
             (it is idempotent): until then the half-purged dataset is refused",
            id.as_str().unwrap_or("?")
        )
    })
}

/// A refresh whose intent stands with no outcome after it: stopped part-way by a crash.
/// Nothing is rolled back: its journal stands (no other refresh of the project may
/// start), a version it installed is current, and running the same refresh again (same
/// list) finishes it.
fn refresh_unfinished(start: &AuditEntry, later: &[(u64, AuditEntry)]) -> Option<String> {
    if start.outcome != Outcome::Ok {
        return None;
    }
    let id = start.detail.get("refresh")?;
    let ended = later.iter().any(|(_, e)| {
        e.action == crate::tre::refresh::REFRESH_ACTION && e.detail.get("refresh") == Some(id)
    });
    (!ended).then(|| {
        format!(
            "refresh {} stopped before it finished; run the same `tre admin refresh` again \
             (same opt-out list) to finish it",
            id.as_str().unwrap_or("?")
        )
    })
}

/// A job folder a crash left before its `job.submit` entry (only the staged copy of its
/// record, or a temporary): no entry names it, no reader trusts it, and the submitter
/// was told it failed. Removed; a folder whose record opens (rolled forward from an
/// entry that names it) is kept. Only folders without a `job.json` are opened, so a
/// start does not read every job record for this.
fn sweep_unrecorded_jobs(ws: &Workspace) {
    let Ok(projects) = ws.projects() else {
        return;
    };
    for p in projects {
        let results = ws.project_dir(&p).join("results");
        let Ok(entries) = std::fs::read_dir(&results) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(job) = Id::parse("job", &e.file_name().to_string_lossy()) else {
                continue;
            };
            if !e.path().join("job.json").exists() && crate::tre::job::load(ws, &p, &job).is_err() {
                remove_if_recordless(&e.path(), "job.json");
            }
        }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::{Clock, FixedClock};

    fn setup() -> (tempfile::TempDir, Workspace, Auditor) {
        let t = tempfile::tempdir().expect("tempdir");
        let ws = Workspace::init(&t.path().join("ws")).expect("init");
        crate::tre::anchors::create_checkpoint_key(ws.root()).expect("key");
        let clock: Arc<dyn Clock> = Arc::new(FixedClock(
            chrono::DateTime::parse_from_rfc3339("2026-01-01T09:00:00Z")
                .expect("date")
                .with_timezone(&chrono::Utc),
        ));
        let auditor = Auditor::new(&ws, clock, 0).expect("auditor");
        (t, ws, auditor)
    }

    fn actions(ws: &Workspace) -> Vec<String> {
        read_entries(&crate::audit::workspace_log_path(ws.root()))
            .expect("log")
            .into_iter()
            .map(|(_, e)| e.action)
            .collect()
    }

    #[test]
    fn an_action_whose_effect_a_crash_stopped_is_rolled_back_and_recorded_once() {
        let (_t, ws, auditor) = setup();
        // A job submitted (audited) whose record was never written: only a temporary
        // file in its folder, as a crash after the entry leaves it.
        let p = Id::parse("project", "demo").expect("id");
        let job = Id::parse("job", "job-0123456789abcdef").expect("id");
        auditor
            .record(
                EntryDraft::new("alice", "job.submit")
                    .project("demo")
                    .detail("job", job.as_str()),
            )
            .expect("entry");
        let dir = crate::tre::query::job_dir(&ws, &p, &job);
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join(".job.json.tmp-00"), b"{").expect("temp");
        // A purge whose outcome never came.
        auditor
            .record(
                EntryDraft::new("op", crate::tre::purge::PURGE_START_ACTION)
                    .project("demo")
                    .detail("purge", "purge-1"),
            )
            .expect("entry");
        // Refusals and reads have no effect to check.
        auditor
            .record(EntryDraft::new("bob", "job.submit").refused("no"))
            .expect("entry");

        let undone = reconcile(&ws, &auditor).expect("reconcile");
        let seqs: Vec<(u64, &str)> = undone.iter().map(|u| (u.seq, u.action.as_str())).collect();
        assert_eq!(seqs, [(1, "job.submit"), (2, "purge.start")]);
        assert!(!dir.exists(), "the half-made job folder is removed");
        let before = actions(&ws);
        assert_eq!(
            before.iter().filter(|a| *a == RECOVER_ACTION).count(),
            2,
            "{before:?}"
        );
        // Run again (an interrupted start): nothing is recorded twice.
        assert!(reconcile(&ws, &auditor).expect("again").is_empty());
        assert_eq!(actions(&ws), before);
        // Once served, the next start looks only past `serve.start`.
        auditor
            .record(EntryDraft::new("service", "serve.start"))
            .expect("entry");
        assert!(reconcile(&ws, &auditor).expect("after start").is_empty());
    }

    #[test]
    fn a_folder_holding_a_record_is_never_removed() {
        let t = tempfile::tempdir().expect("tempdir");
        let dir = t.path().join("job");
        std::fs::create_dir(&dir).expect("dir");
        std::fs::write(dir.join("job.json"), b"{}").expect("record");
        remove_if_recordless(&dir, "job.json");
        assert!(dir.exists());
        std::fs::remove_file(dir.join("job.json")).expect("rm");
        std::fs::write(dir.join("result.parquet"), b"x").expect("other");
        remove_if_recordless(&dir, "job.json");
        assert!(dir.exists(), "not only temporaries: kept");
    }
}
