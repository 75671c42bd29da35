//! Refresh: a project's recurring extract, end to end (`tre admin refresh`).
//!
//! Owns the order and the record of a scheduled extract: check (the project is
//! installed, the key is the one its data was pseudonymised with, the opt-out list is
//! not older than the one the current version was made with, no other refresh is
//! unfinished), then, audited first (`refresh.start`), extract with the installed policy
//! into a staging folder outside the workspace (the extraction itself is handed in by the
//! command, which owns the extract driver: this layer reads an extract only through its
//! manifest), install it as the next dataset version (`refresh.install`, a bound write of
//! the dataset record: jobs starting after it read the new version), re-apply the newer
//! opt-outs to every earlier version still held and to the stored results computed over
//! them ([`crate::tre::purge::purge_held`]), and record the outcome (`refresh`). "The newer
//! opt-outs" are: with a deny-list, everyone on it; with the service's allow-list, every
//! patient an earlier version holds whom the new list does not clear (opted out since,
//! or absent from the new input and so not checked: fail closed); and, with either, the
//! new input's Type 1 dissenters. A journal (`projects/<id>/refresh.json`, sealed)
//! stands from the intent to the outcome: a refresh stopped at any point is finished by
//! running the same refresh again (same list), and no other refresh may start
//! meanwhile. Danger: a wrong key would install a version no earlier one links to and
//! purge nobody, so the key is checked before anything is written. Never logs, audits
//! or prints a pseudonym or NHS number: counts only.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::audit::{AuditError, EntryDraft, HashRef};
use crate::nhs_number::NhsNumber;
use crate::optout::{ListKind, OptOutList, OptOutSet};
use crate::pseudonym::ProjectKey;
use crate::tre::auditor::Auditor;
use crate::tre::id::Id;
use crate::tre::purge::{DropStamp, PurgeError, held_outside, purge_held};
use crate::tre::workspace::{Workspace, WorkspaceError};

/// The audit action written before a refresh extracts anything (its intent).
pub const REFRESH_START_ACTION: &str = "refresh.start";
/// The audit action under which the new version's record is committed.
pub const REFRESH_INSTALL_ACTION: &str = "refresh.install";
/// The audit action of a refresh's outcome (ok, refused or error).
pub const REFRESH_ACTION: &str = "refresh";
/// The journal of a refresh under way, in the project's folder.
pub const JOURNAL_FILE: &str = "refresh.json";

/// Refresh failures.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// The key is not the one the installed data was pseudonymised with.
    #[error(
        "the key file's fingerprint {given} is not the one project {project}'s dataset was pseudonymised with ({expected}); a new version made with it would link to no earlier one and purge nobody. Use the project's key file"
    )]
    WrongKey {
        /// The project.
        project: Id,
        /// The given key's fingerprint.
        given: String,
        /// The installed version's.
        expected: String,
    },
    /// The list is older than the one the current version was made with.
    #[error(
        "the opt-out list is as of {given}, older than the list dataset version {version} of project {project} was extracted with ({installed}); fetch the newest reply from the \"Check for National Data Opt-outs\" service"
    )]
    OlderList {
        /// The project.
        project: Id,
        /// The list's as-of date.
        given: String,
        /// The current version's list date.
        installed: String,
        /// The current version.
        version: u32,
    },
    /// Another refresh of the project stopped part-way and must be finished first.
    #[error(
        "refresh {id} of project {project} stopped part-way with another opt-out list (sha256 {list_sha256}); run that refresh again with the same list to finish it, then this one"
    )]
    Unfinished {
        /// The project.
        project: Id,
        /// The unfinished refresh.
        id: String,
        /// Its list's SHA-256.
        list_sha256: String,
    },
    /// The extraction step failed or was refused.
    #[error("the extract for the refresh did not complete: {message}")]
    Extract {
        /// Why (the extract's own message, never a row value).
        message: String,
        /// Whether a rule refused it (exit 1) rather than a failure (exit 2).
        refused: bool,
    },
    /// Purging the earlier versions failed.
    #[error(transparent)]
    Purge(#[from] PurgeError),
    /// A workspace record could not be read or written.
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    /// The refresh's intent entry could not be written: nothing was done.
    #[error("the audit log could not be written, so nothing was refreshed: {0}")]
    AuditFirst(AuditError),
    /// The refresh was done but its outcome entry could not be written.
    #[error(
        "refresh {refresh} was done, but its outcome could not be written to the audit log ({source}); fix the log and run the same refresh again to record it"
    )]
    AuditOutcome {
        /// The refresh's id.
        refresh: String,
        /// Why.
        source: AuditError,
    },
}

impl crate::error::Classify for RefreshError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            RefreshError::WrongKey { .. }
            | RefreshError::OlderList { .. }
            | RefreshError::Unfinished { .. } => ErrorKind::Refused,
            RefreshError::Extract { refused, .. } => {
                if *refused {
                    ErrorKind::Refused
                } else {
                    ErrorKind::Failed
                }
            }
            RefreshError::Purge(e) => e.kind(),
            RefreshError::Workspace(e) => e.kind(),
            RefreshError::AuditFirst(e) | RefreshError::AuditOutcome { source: e, .. } => e.kind(),
        }
    }
}

/// A refresh to run: everything the command loaded and checked.
#[derive(Debug, Clone, Copy)]
pub struct RefreshPlan<'a> {
    /// The acting operator.
    pub actor: &'a str,
    /// The project.
    pub project: &'a Id,
    /// The project key.
    pub key: &'a ProjectKey,
    /// The newest opt-out list (deny-list or the service's allow-list).
    pub list: &'a OptOutList,
    /// The list's file as the operator named it (recorded with its SHA-256).
    pub list_file: &'a str,
    /// The staging folder the extract is written to (outside the workspace).
    pub staging: &'a Path,
}

/// The extraction step, supplied by the command: extract the project's input with its
/// installed policy, the plan's key and list into the folder given (replacing what an
/// earlier refresh wrote there), and return the NHS numbers of the input's Type 1
/// dissenters.
pub type Extract<'a> = dyn Fn(&Path) -> Result<OptOutSet, RefreshError> + 'a;

/// What a refresh did.
#[derive(Debug, Clone, Serialize)]
pub struct RefreshReport {
    /// The refresh's id.
    pub id: String,
    /// The dataset version now current.
    pub version: u32,
    /// Whether this run installed it (false when an interrupted run had).
    pub installed: bool,
    /// Rows removed per table of each earlier version.
    pub earlier: BTreeMap<u32, BTreeMap<String, u64>>,
    /// With an allow-list: patients an earlier version held whom the new list does not
    /// clear (purged from it). With a deny-list: 0 (everyone on the list is purged).
    pub not_cleared: u64,
    /// The new input's Type 1 dissenters (purged from the earlier versions too).
    pub type1_dissenters: u64,
    /// Stored results withdrawn (re-run the job).
    pub results_withdrawn: Vec<String>,
    /// Earlier releases computed over data that held purged patients.
    pub releases_affected: Vec<String>,
}

/// The journal of a refresh under way.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Journal {
    /// The refresh's id.
    id: String,
    /// Its list's SHA-256 (a re-run must bring the same list).
    list_sha256: String,
    /// The version it installs.
    version: u32,
    /// When it started (its purge records carry this time).
    started_at: String,
}

fn journal_path(ws: &Workspace, project: &Id) -> PathBuf {
    ws.project_dir(project).join(JOURNAL_FILE)
}

/// A refresh's id: `refresh-<UTC time, to the second>-<first 8 hex of the list's SHA-256>`.
pub fn refresh_id(now: &str, list_sha256: &str) -> String {
    let time: String = now
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .take(15)
        .collect();
    let sha: String = list_sha256.chars().take(8).collect();
    format!("refresh-{time}-{sha}")
}

/// The project's current dataset version: the one a job starting now reads, recorded in
/// its job record when it starts. `None` when no dataset is installed.
pub fn current_dataset_version(ws: &Workspace, project: &Id) -> Option<u32> {
    ws.current_dataset_version(project)
}

/// Whether a refresh of `project` stopped part-way (its journal stands).
pub fn unfinished(ws: &Workspace, project: &Id) -> bool {
    journal_path(ws, project).exists()
}

/// The checks before the intent: the project is installed; with a dataset installed, the
/// key matches its current version's manifest and the list is not older than that
/// version's; no other refresh is unfinished. Returns the journal of an unfinished run
/// of this same refresh, if any.
fn check(ws: &Workspace, plan: &RefreshPlan<'_>) -> Result<Option<Journal>, RefreshError> {
    let project = plan.project;
    ws.installed(project)?;
    let journal: Option<Journal> = ws.read_record(&journal_path(ws, project))?;
    if let Some(j) = &journal
        && j.list_sha256 != plan.list.sha256
    {
        return Err(RefreshError::Unfinished {
            project: project.clone(),
            id: j.id.clone(),
            list_sha256: j.list_sha256.clone(),
        });
    }
    if ws.dataset_installed(project.as_str()) {
        let rec = ws.dataset(project)?;
        let mpath = ws.version_dir(project, rec.version).join("manifest.json");
        let manifest: crate::manifest::Manifest = std::fs::read(&mpath)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| PurgeError::NoManifest {
                path: mpath.clone(),
            })?;
        if manifest.key_fingerprint != plan.key.fingerprint() {
            return Err(RefreshError::WrongKey {
                project: project.clone(),
                given: plan.key.fingerprint(),
                expected: manifest.key_fingerprint,
            });
        }
        let given = plan.list.as_of.to_string();
        // An interrupted run of this refresh may have installed its version already.
        let resumed = journal.as_ref().is_some_and(|j| j.version == rec.version);
        if let Some(installed) = &rec.opt_outs_as_of
            && given < *installed
            && !resumed
        {
            return Err(RefreshError::OlderList {
                project: project.clone(),
                given,
                installed: installed.clone(),
                version: rec.version,
            });
        }
    }
    Ok(journal)
}

fn entry(plan: &RefreshPlan<'_>, action: &str, id: &str) -> EntryDraft {
    EntryDraft::new(plan.actor, action)
        .project(plan.project.as_str())
        .input(HashRef::new(plan.list_file, plan.list.sha256.clone()))
        .detail("refresh", id)
        .detail("opt_outs_kind", plan.list.kind.as_str())
        .detail("opt_outs_as_of", plan.list.as_of.to_string())
        .detail("list_entries", plan.list.entries)
        .detail("key_fingerprint", plan.key.fingerprint())
}

fn recordable(v: &impl Serialize) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_else(|e| {
        serde_json::Value::String(format!("internal error (a bug): not recordable: {e}"))
    })
}

/// Run a refresh audit-first (see the module documentation). A refusal before the
/// intent is recorded as a `refresh` entry alone and changes nothing.
pub fn refresh_audited(
    ws: &Workspace,
    auditor: &Auditor,
    plan: &RefreshPlan<'_>,
    extract: &Extract<'_>,
) -> Result<RefreshReport, RefreshError> {
    let journal = match check(ws, plan) {
        Ok(j) => j,
        Err(e) => {
            let refused = crate::error::Classify::kind(&e) == crate::error::ErrorKind::Refused;
            auditor
                .record_refusal(
                    plan.actor,
                    REFRESH_ACTION,
                    plan.project.as_str(),
                    refused,
                    &e.to_string(),
                )
                .map_err(RefreshError::AuditFirst)?;
            return Err(e);
        }
    };
    let now = auditor
        .clock()
        .now()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let resumed = journal.is_some();
    let journal = match journal {
        Some(j) => j,
        None => Journal {
            id: refresh_id(&now, &plan.list.sha256),
            list_sha256: plan.list.sha256.clone(),
            version: ws
                .current_dataset_version(plan.project)
                .map_or(1, |v| v + 1),
            started_at: now.clone(),
        },
    };
    let id = journal.id.clone();
    auditor
        .record(
            entry(plan, REFRESH_START_ACTION, &id)
                .detail("version", journal.version)
                .detail("resumed", resumed),
        )
        .map_err(RefreshError::AuditFirst)?;
    let result = (|| {
        if !resumed {
            ws.write_record(&journal_path(ws, plan.project), &journal)?;
        }
        run(ws, auditor, plan, extract, &journal)
    })();
    let d = entry(plan, REFRESH_ACTION, &id);
    let d = match &result {
        Ok(r) => d
            .detail("version", r.version)
            .detail("installed", r.installed)
            .detail("rows_removed", recordable(&r.earlier))
            .detail("patients_not_cleared", r.not_cleared)
            .detail("type1_dissenters", r.type1_dissenters)
            .detail("results_withdrawn", recordable(&r.results_withdrawn))
            .detail("releases_affected", recordable(&r.releases_affected)),
        Err(e) if crate::error::Classify::kind(e) == crate::error::ErrorKind::Refused => {
            d.refused(e.to_string())
        }
        Err(e) => d.failed(e.to_string()),
    };
    match (auditor.record(d), result) {
        (Ok(_), Ok(r)) => {
            crate::durable::remove_durably(&journal_path(ws, plan.project))
                .map_err(WorkspaceError::from)?;
            Ok(r)
        }
        (Ok(_), Err(e)) => Err(e),
        (Err(source), Ok(_)) => Err(RefreshError::AuditOutcome {
            refresh: id,
            source,
        }),
        (Err(_), Err(e)) => Err(e),
    }
}

/// Extract, install, purge the earlier versions.
fn run(
    ws: &Workspace,
    auditor: &Auditor,
    plan: &RefreshPlan<'_>,
    extract: &Extract<'_>,
    journal: &Journal,
) -> Result<RefreshReport, RefreshError> {
    let project = plan.project;
    let type1 = extract(plan.staging)?;
    let current = ws.current_dataset_version(project);
    let installed = current.is_none_or(|v| v < journal.version);
    if installed {
        let head = auditor.head().map_err(WorkspaceError::from)?;
        let now = auditor.clock().now().to_rfc3339();
        let draft =
            entry(plan, REFRESH_INSTALL_ACTION, &journal.id).detail("version", journal.version);
        let rec = ws.install_version(project, plan.staging, now, head, auditor, draft)?;
        if rec.version != journal.version {
            return Err(RefreshError::Extract {
                message: format!(
                    "internal error (a bug): installed version {} where the journal says {}",
                    rec.version, journal.version
                ),
                refused: false,
            });
        }
    }
    let (drop, not_cleared) = newer_opt_outs(ws, plan, &type1)?;
    let stamp = DropStamp {
        at: journal.started_at.clone(),
        opt_outs_as_of: plan.list.as_of.to_string(),
        opt_outs_sha256: plan.list.sha256.clone(),
    };
    let withdraw = entry(plan, crate::tre::purge::PURGE_WITHDRAW_ACTION, &journal.id);
    let held = purge_held(
        ws,
        (auditor, withdraw),
        project.as_str(),
        plan.key,
        &drop,
        &stamp,
        true,
        None,
    )?;
    Ok(RefreshReport {
        id: journal.id.clone(),
        version: journal.version,
        installed,
        earlier: held.versions,
        not_cleared,
        type1_dissenters: type1.len() as u64,
        results_withdrawn: held
            .results
            .iter()
            .filter(|(_, r)| r.withdrawn)
            .map(|(j, _)| j.clone())
            .collect(),
        releases_affected: held.releases.iter().map(|r| r.release.clone()).collect(),
    })
}

/// The pseudonyms to purge from the earlier versions (see the module documentation),
/// and how many of them an allow-list did not clear.
fn newer_opt_outs(
    ws: &Workspace,
    plan: &RefreshPlan<'_>,
    type1: &OptOutSet,
) -> Result<(HashSet<String>, u64), RefreshError> {
    let p = plan.key.pseudonymiser();
    let of = |set: &OptOutSet| -> HashSet<String> {
        set.numbers()
            .iter()
            .filter_map(|&n| NhsNumber::from_u64(n))
            .map(|n| p.pseudonym(n))
            .collect()
    };
    let mut drop = of(type1);
    let mut not_cleared = 0;
    match plan.list.kind {
        ListKind::Deny => drop.extend(of(&plan.list.set)),
        ListKind::Allow => {
            let cleared = of(&plan.list.set);
            let outside = held_outside(ws, plan.project.as_str(), &cleared)?;
            not_cleared = outside.len() as u64;
            drop.extend(outside);
        }
    }
    Ok((drop, not_cleared))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refresh_id_names_its_time_and_list() {
        assert_eq!(
            refresh_id("2026-12-04T13:37:38.581Z", "3a3a27a4dab1feb2"),
            "refresh-20261204T133738-3a3a27a4"
        );
    }

    #[test]
    fn a_refusal_before_the_intent_is_a_refusal() {
        let p = Id::parse("project", "demo").expect("id");
        let e = RefreshError::OlderList {
            project: p,
            given: "2026-01-01".into(),
            installed: "2026-02-01".into(),
            version: 2,
        };
        assert_eq!(
            crate::error::Classify::kind(&e),
            crate::error::ErrorKind::Refused
        );
        assert!(
            e.to_string()
                .contains("older than the list dataset version 2")
        );
        let e = RefreshError::Extract {
            message: "disk full".into(),
            refused: false,
        };
        assert_eq!(
            crate::error::Classify::kind(&e),
            crate::error::ErrorKind::Failed
        );
    }
}
