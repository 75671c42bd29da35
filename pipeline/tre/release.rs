//! Release: the two-checker gate between a job's safe table and the project's outbox.
//!
//! Owns release requests (`projects/<p>/requests/<release>.json`, sealed records) and
//! their rules: an analyst of the project asks for a succeeded job's safe table to leave,
//! with a justification and context; output checkers of the project review it (never the
//! requester, each once, a comment required; one rejection or one "return for changes"
//! ends the version); the second approval by a distinct checker exports it. A rejected or
//! returned request may be answered by its requester with a new VERSION ([`resubmit`]):
//! the same release id, version 2, 3, ..., pointing at a new job's result; the earlier
//! versions (job, decisions, comments) are kept in the record's `history` and shown to
//! every reader, the checkers of the new version included. No approval shopping: a version
//! needs two fresh approvals of its own, earlier approvals never count, and the earlier
//! rejections and returns stay on the record the new version is reviewed and exported
//! from. Export re-verifies, against the bytes on disk, the
//! result's sha256 and the safe table's sha256 recorded at request time and the rules'
//! sha256, then writes the safe table and a release manifest (with the audit head) into
//! the project's configured outbox, never over an existing file.
//!
//! An export is crash-consistent steps ([`export`]): (a) one bound write (see
//! [`crate::tre::records`]) under the audit entry `release.export.start` records the
//! intent in the request (`exporting`: the prepared manifest and its sha256) and the
//! release's ledger entry; (b) the table and the manifest are staged in the outbox as
//! `.tmp-<release>-<name>`, names no reader trusts; (c) the table, then the manifest
//! last, are linked to their final names (never over an existing file) and the folder
//! `fsync`ed; (d) the request becomes `exported` under the one `release.export` entry.
//! A failure rolls back (staged files and an unpublished table removed, the ledger entry
//! removed, the request back to `requested`) under a `release.export` entry with outcome
//! error, so `POST .../export` can retry once the cause is fixed. [`recover`] (at server
//! start) finishes every release left `exporting` whose checks still pass, rolls back the
//! others, removes stale staged files, and audits each as `release.recover`. Invariant:
//! after any failure and [`recover`], the outbox files, the manifest, the ledger entry
//! and the request's state agree. Danger: this is the only door out of the TRE; nothing
//! here trusts a file it has not checked by hash.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::audit::{EntryDraft, HashRef};
use crate::durable::{FileRecord, Mode};
use crate::policy::Policy;
use crate::tre::anchors::AuditHead;
use crate::tre::auditor::Auditor;
use crate::tre::id::Id;
use crate::tre::job::{JobRecord, JobState};
use crate::tre::query::{QueryError, job_dir, project_rules};
use crate::tre::workspace::{Change, Workspace, WorkspaceError, open_nofollow};

/// The shortest justification, context and review comment accepted.
pub const MIN_TEXT: usize = 3;

/// Where a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseState {
    /// Waiting for reviews.
    Requested,
    /// A checker rejected it (its requester may answer with a new version).
    Rejected,
    /// A checker returned it for changes (its requester may answer with a new version).
    Returned,
    /// Exported to the outbox.
    Exported,
}

/// A checker's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Approve.
    Approve,
    /// Reject.
    Reject,
    /// Return for changes: the version is closed; the comment says what must change.
    Return,
}

impl Decision {
    /// The decision in words (`approved`, `rejected`, `returned for changes`).
    pub fn words(self) -> &'static str {
        match self {
            Decision::Approve => "approved",
            Decision::Reject => "rejected",
            Decision::Return => "returned for changes",
        }
    }
}

/// An earlier version of a request, as it was when a checker closed it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Version {
    /// Its number (1 for the first request).
    pub version: u32,
    /// The job whose safe table it asked to release.
    pub job: Id,
    /// Its justification.
    pub justification: String,
    /// Its context.
    pub context: String,
    /// When it was asked for.
    #[serde(with = "crate::tre::stamp")]
    pub created_at: DateTime<Utc>,
    /// SHA-256 of that job's safe table.
    pub safe_sha256: String,
    /// The rules it was checked under.
    pub rules: String,
    /// How it ended (`rejected` or `returned`).
    pub state: ReleaseState,
    /// Its reviews, in order.
    pub reviews: Vec<Review>,
}

/// One review.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Review {
    /// The checker.
    pub checker: Id,
    /// Approve, reject or return for changes.
    pub decision: Decision,
    /// Why.
    pub comment: String,
    /// When.
    #[serde(with = "crate::tre::stamp")]
    pub at: DateTime<Utc>,
}

/// A release request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Request id.
    pub release: Id,
    /// Project.
    pub project: Id,
    /// Job whose safe table is to leave.
    pub job: Id,
    /// Who asked.
    pub requester: Id,
    /// Why it should leave.
    pub justification: String,
    /// What the table is and how it was made.
    pub context: String,
    /// When.
    #[serde(with = "crate::tre::stamp")]
    pub created_at: DateTime<Utc>,
    /// SHA-256 of the job's result at request time.
    pub result_sha256: String,
    /// SHA-256 of the safe table at request time.
    pub safe_sha256: String,
    /// The rules' name and SHA-256.
    pub rules: String,
    /// SHA-256 of the rules (canonical JSON).
    pub rules_sha256: String,
    /// Where it is.
    pub state: ReleaseState,
    /// Reviews in order.
    pub reviews: Vec<Review>,
    /// Files exported, once exported.
    pub files: Vec<FileRecord>,
    /// While an export is under way (or was interrupted): what it is writing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exporting: Option<ExportIntent>,
    /// This version's number: 1 for the first request, then 2, 3, ... (see [`resubmit`]).
    #[serde(default = "first_version", skip_serializing_if = "is_first_version")]
    pub version: u32,
    /// The earlier versions, oldest first, with their decisions and comments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Version>,
}

fn first_version() -> u32 {
    1
}

fn is_first_version(v: &u32) -> bool {
    *v == 1
}

/// An export under way, recorded in the request before any outbox file is written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportIntent {
    /// The outbox it writes into.
    pub outbox: PathBuf,
    /// The table's file name.
    pub table: String,
    /// The manifest's file name.
    pub manifest_file: String,
    /// The prepared manifest.
    pub manifest: ReleaseManifest,
    /// SHA-256 of the manifest's bytes.
    pub manifest_sha256: String,
}

impl ExportIntent {
    fn manifest_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(&self.manifest).unwrap_or_default()
    }
}

impl Request {
    /// The distinct checkers who approved.
    pub fn approvals(&self) -> BTreeSet<&str> {
        self.reviews
            .iter()
            .filter(|r| r.decision == Decision::Approve)
            .map(|r| r.checker.as_str())
            .collect()
    }

    /// Whether this version is still open for reviews.
    pub fn is_open(&self) -> bool {
        self.state == ReleaseState::Requested && self.exporting.is_none()
    }

    /// The checkers who rejected or returned an earlier version, with the version, in
    /// order (shown to the checkers of the current one).
    pub fn earlier_refusals(&self) -> Vec<(u32, &Review)> {
        self.history
            .iter()
            .flat_map(|v| v.reviews.iter().map(move |r| (v.version, r)))
            .filter(|(_, r)| r.decision != Decision::Approve)
            .collect()
    }
}

/// Release refusals and failures.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// The result's lineage refuses it (purge mark, blocking finding, or differencing
    /// against an earlier release of the project).
    #[error("job {job} may not be released: {}", reasons.join("; "))]
    Lineage {
        /// The job.
        job: Id,
        /// Each reason, in words (names the earlier release for differencing).
        reasons: Vec<String>,
    },
    /// The lineage or the ledger could not be read or written.
    #[error(transparent)]
    Gate(#[from] crate::lineage::gate::GateError),
    /// No such request.
    #[error("no release {release} in project {project}")]
    NotFound {
        /// The project.
        project: Id,
        /// The release.
        release: Id,
    },
    /// A text field is missing or too short.
    #[error("a release {field} is required (at least {MIN_TEXT} characters)")]
    MissingText {
        /// Which field.
        field: &'static str,
    },
    /// The job cannot be released.
    #[error("job {job} cannot be released: {why}")]
    NotReleasable {
        /// The job.
        job: Id,
        /// Why.
        why: &'static str,
    },
    /// `tre purge` withdrew the job's result (or whether it did could not be read).
    #[error("job {job} cannot be released: {message}")]
    Withdrawn {
        /// The job.
        job: Id,
        /// The purge's message (`withdrawn by purge <id> (<time>): ...; re-run the job`).
        message: String,
    },
    /// The requester tried to review.
    #[error("{user} requested release {release} and cannot review it; another output checker must")]
    SelfReview {
        /// The user.
        user: Id,
        /// The release.
        release: Id,
    },
    /// A second review by the same checker.
    #[error("{user} has already reviewed release {release}")]
    AlreadyReviewed {
        /// The user.
        user: Id,
        /// The release.
        release: Id,
    },
    /// Only a rejected or returned request can be answered with a new version.
    #[error(
        "release {release} is {state:?}; only a request a checker rejected or returned for changes can be resubmitted as a new version"
    )]
    NotResubmittable {
        /// The release.
        release: Id,
        /// Its state.
        state: ReleaseState,
    },
    /// Someone other than the requester tried to resubmit.
    #[error("{user} did not request release {release}; only its requester can resubmit it")]
    NotRequester {
        /// The user.
        user: Id,
        /// The release.
        release: Id,
    },
    /// A new version must point at a new job.
    #[error(
        "job {job} was already version {version} of release {release}; run the changed job and resubmit with its id"
    )]
    SameJob {
        /// The job.
        job: Id,
        /// The version that used it.
        version: u32,
        /// The release.
        release: Id,
    },
    /// The request is no longer open.
    #[error("release {release} is {state:?}; it can no longer be reviewed")]
    Closed {
        /// The release.
        release: Id,
        /// Its state.
        state: ReleaseState,
    },
    /// Export without two approvals.
    #[error(
        "release {release} has {approvals} approval(s); two different output checkers must approve before export"
    )]
    TooFewApprovals {
        /// The release.
        release: Id,
        /// Approvals so far.
        approvals: usize,
    },
    /// A file no longer matches its recorded hash.
    #[error(
        "{what} of release {release} no longer matches the sha256 recorded when it was requested; it was changed on disk and will not be released"
    )]
    Changed {
        /// The release.
        release: Id,
        /// Which file.
        what: &'static str,
    },
    /// A job file the release gate reads is not a readable table.
    #[error("{} is not a readable {format} table ({message}); re-run the job", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// `Parquet` or `CSV`.
        format: &'static str,
        /// The reader's message (a format error: no cell values).
        message: String,
    },
    /// Writing into the outbox failed (an existing file is never replaced).
    #[error(
        "cannot export into the outbox: {0}; nothing was released (the export was rolled back); fix the outbox and export again with POST .../export"
    )]
    Outbox(#[source] crate::durable::DurableError),
    /// An export of this release is under way or was interrupted.
    #[error(
        "release {release} is being exported; its review is closed (an interrupted export is finished or rolled back by POST .../export or at server start)"
    )]
    Exporting {
        /// The release.
        release: Id,
    },
    /// The audit log could not be written.
    #[error("the audit log could not be written, so the export did not go on: {0}")]
    Audit(#[from] crate::audit::AuditError),
    /// The ledger could not be read or written.
    #[error(transparent)]
    Ledger(#[from] crate::lineage::ledger::LedgerError),
    /// Workspace trouble (forged records included).
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    /// Rules trouble.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// A durable write failed.
    #[error(transparent)]
    Durable(#[from] crate::durable::DurableError),
}

impl crate::error::Classify for ReleaseError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            ReleaseError::Lineage { .. } => ErrorKind::Refused,
            ReleaseError::Gate(g) => crate::error::Classify::kind(g),
            ReleaseError::Workspace(w) => crate::error::Classify::kind(w),
            ReleaseError::Query(q) => crate::error::Classify::kind(q),
            ReleaseError::Durable(_) | ReleaseError::Unreadable { .. } => ErrorKind::Failed,
            ReleaseError::Audit(a) => crate::error::Classify::kind(a),
            ReleaseError::Ledger(l) => crate::error::Classify::kind(l),
            _ => ErrorKind::Refused,
        }
    }
}

/// A request's record file.
pub fn request_path(ws: &Workspace, project: &Id, release: &Id) -> PathBuf {
    ws.project_dir(project)
        .join("requests")
        .join(format!("{release}.json"))
}

/// Save a request under the audit entry `draft` (one bound write: the entry names the
/// request file and its hash; see [`crate::tre::records`]).
pub fn save(
    ws: &Workspace,
    auditor: &Auditor,
    draft: EntryDraft,
    r: &Request,
) -> Result<crate::audit::AuditEntry, ReleaseError> {
    let path = request_path(ws, &r.project, &r.release);
    Ok(ws.commit(auditor, draft, vec![Change::write(&path, r)?])?)
}

/// Load a request (refused if it was edited on disk).
pub fn load(ws: &Workspace, project: &Id, release: &Id) -> Result<Request, ReleaseError> {
    ws.read_record(&request_path(ws, project, release))?
        .ok_or_else(|| ReleaseError::NotFound {
            project: project.clone(),
            release: release.clone(),
        })
}

fn text_ok(s: &str) -> bool {
    s.trim().chars().count() >= MIN_TEXT
}

/// Stream-hash a file of a job folder (never a symlink).
fn file_sha(path: &Path) -> Result<String, WorkspaceError> {
    let f = open_nofollow(path)?;
    crate::digest::sha256_reader(f)
        .map(|(s, _)| s)
        .map_err(|source| WorkspaceError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// The gate of a release, again at request and at export: a purge mark or withdrawal
/// (sealed records, [`crate::tre::purge::result_withdrawn`]) refuses it, and the
/// differencing guard ([`crate::received`], through [`crate::tre::query::received_guard`])
/// checks the table's patient groups against every table the project exported and every
/// table its analyst could read, as they are NOW (the ledger may have gained releases
/// since the job ran). The job's table was computed and checked from counted patients
/// when it ran; the SQL plan is not a gate (one gate: the data, not the SQL). The stored
/// lineage gives the ledger entry that the export records; a result without one is
/// refused.
fn lineage_gate(
    ws: &Workspace,
    policy: &Policy,
    job: &Id,
    dir: &Path,
) -> Result<crate::lineage::gate::ReleaseCheck, ReleaseError> {
    let project = Id::parse("project", &policy.project.id).map_err(WorkspaceError::from)?;
    verify_ledger(ws, &project)?;
    refuse_withdrawn(ws, &project, job)?;
    let result = read_parquet(&dir.join("result.parquet"))?;
    let published = read_csv(&dir.join("safe.csv"))?;
    let check = crate::lineage::gate::release_parts(dir, &result, &published)?;
    let submitter = crate::tre::job::load(ws, &project, job)
        .map_err(|e| ReleaseError::Lineage {
            job: job.clone(),
            reasons: vec![format!("its job record cannot be read ({e})")],
        })?
        .submitter;
    if let crate::tre::query::GuardOutcome::Refused {
        earlier_table,
        message,
    } = crate::tre::query::received_guard(ws, &project, &submitter, dir)?
    {
        let reason = match earlier_table {
            None => format!("on its own: {message}"),
            Some(t) => format!("together with {t}, already received or released: {message}"),
        };
        return Err(ReleaseError::Lineage {
            job: job.clone(),
            reasons: vec![reason],
        });
    }
    if check.blocked() {
        return Err(ReleaseError::Lineage {
            job: job.clone(),
            reasons: check.blocks.iter().map(ToString::to_string).collect(),
        });
    }
    Ok(check)
}

/// `tre purge` withdraws (or marks) results that held newly opted-out patients: never
/// released, and the requester is told which purge and to re-run the job. A withdrawal
/// record that cannot be read (edited, deleted after the purge wrote it) refuses too.
fn refuse_withdrawn(ws: &Workspace, project: &Id, job: &Id) -> Result<(), ReleaseError> {
    match crate::tre::purge::result_withdrawn(ws, project, job) {
        Ok(None) => Ok(()),
        Ok(Some(message)) => Err(ReleaseError::Withdrawn {
            job: job.clone(),
            message,
        }),
        Err(e) => Err(ReleaseError::Withdrawn {
            job: job.clone(),
            message: format!(
                "whether `tre purge` withdrew its result could not be read ({e}); the operator should check the result folder"
            ),
        }),
    }
}

/// Check the seal of every entry of the project's ledger (and that every entry the audit
/// log says was written is there) before the lineage gate, which reads it, is trusted.
pub fn verify_ledger(ws: &Workspace, project: &Id) -> Result<(), ReleaseError> {
    let dir = crate::tre::purge::purge_paths(ws, project.as_str()).ledger;
    let mut names = match crate::tre::workspace::list_dir(&dir) {
        Ok(n) => n,
        Err(WorkspaceError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Vec::new()
        }
        Err(e) => return Err(e.into()),
    };
    let prefix = format!("{}/", ws.rel(&dir)?);
    for audited in ws.audited_records()? {
        if let Some(name) = audited.strip_prefix(&prefix) {
            names.push(name.to_string());
        }
    }
    names.sort();
    names.dedup();
    let ledger = crate::lineage::ledger::Ledger::open(&dir);
    for name in names {
        let Some(release) = name.strip_suffix(".json") else {
            continue;
        };
        let path = ledger.entry_path(release)?;
        match ws.read_record::<crate::lineage::ledger::LedgerEntry>(&path)? {
            Some(e) if e.release == release => {}
            Some(_) => return Err(WorkspaceError::Forged { path }.into()),
            None => {}
        }
    }
    Ok(())
}

fn read_parquet(path: &Path) -> Result<Vec<arrow::record_batch::RecordBatch>, ReleaseError> {
    let bad = |e: &dyn std::fmt::Display| ReleaseError::Unreadable {
        path: path.to_path_buf(),
        format: "Parquet",
        message: e.to_string(),
    };
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(open_nofollow(path)?)
        .and_then(|b| b.build())
        .map_err(|e| bad(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))
}

fn read_csv(path: &Path) -> Result<Vec<arrow::record_batch::RecordBatch>, ReleaseError> {
    let table = crate::disclosure::read_csv(open_nofollow(path)?, "safe.csv").map_err(|e| {
        ReleaseError::Unreadable {
            path: path.to_path_buf(),
            format: "CSV",
            message: e.to_string(),
        }
    })?;
    Ok(vec![table])
}

/// Draft a request for a succeeded job's safe table; checks the files against the job
/// record now. The caller audits, then [`save`]s it.
#[allow(clippy::too_many_arguments)]
pub fn draft(
    ws: &Workspace,
    policy: &Policy,
    job: &JobRecord,
    requester: &Id,
    release: Id,
    justification: &str,
    context: &str,
    now: DateTime<Utc>,
) -> Result<Request, ReleaseError> {
    if !text_ok(justification) {
        return Err(ReleaseError::MissingText {
            field: "justification",
        });
    }
    if !text_ok(context) {
        return Err(ReleaseError::MissingText { field: "context" });
    }
    refuse_withdrawn(ws, &job.project, &job.job)?;
    let not = |why| ReleaseError::NotReleasable {
        job: job.job.clone(),
        why,
    };
    let outcome = match (&job.state, &job.outcome) {
        (JobState::Succeeded, Some(o)) => o,
        _ => return Err(not("it has not succeeded")),
    };
    let Some(safe) = outcome
        .safe
        .as_ref()
        .filter(|_| outcome.releasable_after_apply)
    else {
        return Err(not(
            "its result is not an aggregate table that can be made safe",
        ));
    };
    let dir = job_dir(ws, &job.project, &job.job);
    if file_sha(&dir.join("result.parquet"))? != outcome.result.sha256 {
        return Err(ReleaseError::Changed {
            release,
            what: "the job's result",
        });
    }
    if file_sha(&dir.join("safe.csv"))? != safe.sha256 {
        return Err(ReleaseError::Changed {
            release,
            what: "the job's safe table",
        });
    }
    lineage_gate(ws, policy, &job.job, &dir)?;
    let (rules, _, rules_sha256) = project_rules(ws, policy)?;
    Ok(Request {
        release,
        project: job.project.clone(),
        job: job.job.clone(),
        requester: requester.clone(),
        justification: justification.to_string(),
        context: context.to_string(),
        created_at: now,
        result_sha256: outcome.result.sha256.clone(),
        safe_sha256: safe.sha256.clone(),
        rules,
        rules_sha256,
        state: ReleaseState::Requested,
        reviews: Vec::new(),
        files: Vec::new(),
        exporting: None,
        version: 1,
        history: Vec::new(),
    })
}

/// Answer a rejected or returned request with a new version pointing at `job` (a new
/// job's result, checked as [`draft`] checks a first request): only its requester may,
/// with a job no earlier version used. The closed version moves into `history` with its
/// decisions and comments; the new version starts with no reviews (it needs two
/// approvals of its own). The caller audits, then [`save`]s it.
#[allow(clippy::too_many_arguments)]
pub fn resubmit(
    ws: &Workspace,
    policy: &Policy,
    current: &Request,
    job: &JobRecord,
    requester: &Id,
    justification: &str,
    context: &str,
    now: DateTime<Utc>,
) -> Result<Request, ReleaseError> {
    if !matches!(
        current.state,
        ReleaseState::Rejected | ReleaseState::Returned
    ) || current.exporting.is_some()
    {
        return Err(ReleaseError::NotResubmittable {
            release: current.release.clone(),
            state: current.state,
        });
    }
    if *requester != current.requester {
        return Err(ReleaseError::NotRequester {
            user: requester.clone(),
            release: current.release.clone(),
        });
    }
    let used = std::iter::once((current.version, &current.job))
        .chain(current.history.iter().map(|v| (v.version, &v.job)));
    for (version, used) in used {
        if *used == job.job {
            return Err(ReleaseError::SameJob {
                job: job.job.clone(),
                version,
                release: current.release.clone(),
            });
        }
    }
    let mut next = draft(
        ws,
        policy,
        job,
        requester,
        current.release.clone(),
        justification,
        context,
        now,
    )?;
    next.version = current.version.saturating_add(1);
    next.history = current.history.clone();
    next.history.push(Version {
        version: current.version,
        job: current.job.clone(),
        justification: current.justification.clone(),
        context: current.context.clone(),
        created_at: current.created_at,
        safe_sha256: current.safe_sha256.clone(),
        rules: current.rules.clone(),
        state: current.state,
        reviews: current.reviews.clone(),
    });
    Ok(next)
}

/// Apply a review to a request's current version (in memory): the caller audits, then
/// saves, and exports when [`Request::approvals`] reaches two. A rejection or a return
/// for changes closes the version.
pub fn review(r: &mut Request, review: Review) -> Result<(), ReleaseError> {
    if r.exporting.is_some() {
        return Err(ReleaseError::Exporting {
            release: r.release.clone(),
        });
    }
    if r.state != ReleaseState::Requested {
        return Err(ReleaseError::Closed {
            release: r.release.clone(),
            state: r.state,
        });
    }
    if review.checker == r.requester {
        return Err(ReleaseError::SelfReview {
            user: review.checker,
            release: r.release.clone(),
        });
    }
    if r.reviews.iter().any(|x| x.checker == review.checker) {
        return Err(ReleaseError::AlreadyReviewed {
            user: review.checker,
            release: r.release.clone(),
        });
    }
    if !text_ok(&review.comment) {
        return Err(ReleaseError::MissingText {
            field: "review comment",
        });
    }
    match review.decision {
        Decision::Approve => {}
        Decision::Reject => r.state = ReleaseState::Rejected,
        Decision::Return => r.state = ReleaseState::Returned,
    }
    r.reviews.push(review);
    Ok(())
}

/// What an export will write, prepared (and checked) before anything is written.
#[derive(Debug)]
pub struct Export {
    /// The outbox.
    pub outbox: PathBuf,
    /// The project's ledger folder and this release's entry, recorded with the export's
    /// intent, before any outbox file (while an export is under way it already counts
    /// against differencing); removed again if the export is rolled back.
    pub ledger: (PathBuf, crate::lineage::ledger::LedgerEntry),
    /// The safe table's file name and bytes.
    pub table: (String, Vec<u8>),
    /// The manifest's file name and bytes.
    pub manifest: (String, Vec<u8>),
    /// The manifest.
    pub record: ReleaseManifest,
}

/// What an export wrote, as recorded in the outbox beside the table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseManifest {
    /// Request id.
    pub release: Id,
    /// Project.
    pub project: Id,
    /// Job.
    pub job: Id,
    /// Requester.
    pub requester: Id,
    /// Approving checkers.
    pub approved_by: Vec<String>,
    /// Rules used.
    pub rules: String,
    /// SHA-256 of the rules.
    pub rules_sha256: String,
    /// SHA-256 of the job's result inside the TRE.
    pub result_sha256: String,
    /// When.
    #[serde(with = "crate::tre::stamp")]
    pub exported_at: DateTime<Utc>,
    /// The audit head before the export entry.
    pub audit_head: Option<AuditHead>,
    /// The released table.
    pub files: Vec<FileRecord>,
    /// The request's version that was exported (absent for a first version).
    #[serde(default = "first_version", skip_serializing_if = "is_first_version")]
    pub version: u32,
    /// The earlier versions' rejections and returns, in words (`version 1: checker1
    /// rejected`), so the record that leaves shows the request's whole review.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier_decisions: Vec<String>,
}

/// Check everything an export needs, against the bytes on disk, and prepare its files.
pub fn prepare_export(
    ws: &Workspace,
    policy: &Policy,
    r: &Request,
    now: DateTime<Utc>,
    audit_head: Option<AuditHead>,
) -> Result<Export, ReleaseError> {
    let approvals = r.approvals();
    if r.exporting.is_some() {
        return Err(ReleaseError::Exporting {
            release: r.release.clone(),
        });
    }
    if approvals.len() < 2 || r.state != ReleaseState::Requested {
        return Err(ReleaseError::TooFewApprovals {
            release: r.release.clone(),
            approvals: approvals.len(),
        });
    }
    let dir = job_dir(ws, &r.project, &r.job);
    let bytes = verified_safe_table(ws, policy, r, &dir)?;
    // Again at export: the ledger may have gained releases since the request.
    let gate = lineage_gate(ws, policy, &r.job, &dir)?;
    let ledger_head = audit_head
        .as_ref()
        .map(|h| crate::lineage::ledger::AuditHead {
            seq: h.seq,
            hash: h.hash.clone(),
        });
    let entry = gate
        .entry(
            r.project.as_str(),
            r.release.as_str(),
            r.job.as_str(),
            &now.to_rfc3339(),
            ledger_head,
        )
        .ok_or_else(|| changed(r, "the result's lineage"))?;
    let ledger = (
        crate::tre::purge::purge_paths(ws, &policy.project.id).ledger,
        entry,
    );
    let outbox = ws.outbox(&r.project)?;
    let name = format!("{}-{}.csv", r.project, r.release);
    let record = ReleaseManifest {
        release: r.release.clone(),
        project: r.project.clone(),
        job: r.job.clone(),
        requester: r.requester.clone(),
        approved_by: approvals.iter().map(|s| s.to_string()).collect(),
        rules: r.rules.clone(),
        rules_sha256: r.rules_sha256.clone(),
        result_sha256: r.result_sha256.clone(),
        exported_at: now,
        audit_head,
        files: vec![FileRecord {
            path: name.clone(),
            size: bytes.len() as u64,
            sha256: r.safe_sha256.clone(),
        }],
        version: r.version,
        earlier_decisions: r
            .earlier_refusals()
            .iter()
            .map(|(v, x)| format!("version {v}: {} {}", x.checker, x.decision.words()))
            .collect(),
    };
    let manifest = serde_json::to_vec_pretty(&record).map_err(|_| changed(r, "the manifest"))?;
    Ok(Export {
        ledger,
        outbox,
        table: (name, bytes),
        manifest: (
            format!("{}-{}.manifest.json", r.project, r.release),
            manifest,
        ),
        record,
    })
}

fn changed(r: &Request, what: &'static str) -> ReleaseError {
    ReleaseError::Changed {
        release: r.release.clone(),
        what,
    }
}

/// The safe table's bytes, once the result, the safe table and the rules are checked
/// against the hashes recorded at request time.
fn verified_safe_table(
    ws: &Workspace,
    policy: &Policy,
    r: &Request,
    dir: &Path,
) -> Result<Vec<u8>, ReleaseError> {
    if file_sha(&dir.join("result.parquet"))? != r.result_sha256 {
        return Err(changed(r, "the job's result"));
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut open_nofollow(&dir.join("safe.csv"))?, &mut bytes).map_err(
        |source| WorkspaceError::Io {
            path: dir.join("safe.csv"),
            source,
        },
    )?;
    if crate::digest::sha256_hex(&bytes) != r.safe_sha256 {
        return Err(changed(r, "the job's safe table"));
    }
    if project_rules(ws, policy)?.2 != r.rules_sha256 {
        return Err(changed(r, "the project's output rules"));
    }
    Ok(bytes)
}

/// The staged (untrusted) name of an outbox file of `release`.
fn staged_name(release: &Id, name: &str) -> String {
    format!(".tmp-{release}-{name}")
}

/// The prefix of every staged outbox file.
const STAGED_PREFIX: &str = ".tmp-";

/// Export a prepared release (see the module docs for the steps): `actor` is the checker
/// whose approval (or whose `POST .../export`) triggered it. On failure the export is
/// rolled back (audited) and the error returned; the request is then `requested` again
/// and may be exported once the cause is fixed.
pub fn export(
    ws: &Workspace,
    auditor: &Auditor,
    policy: &Policy,
    r: &mut Request,
    e: &Export,
    actor: &str,
) -> Result<(), ReleaseError> {
    let manifest: ReleaseManifest =
        serde_json::from_slice(&e.manifest.1).map_err(|_| changed(r, "the manifest"))?;
    let intent = ExportIntent {
        outbox: e.outbox.clone(),
        table: e.table.0.clone(),
        manifest_file: e.manifest.0.clone(),
        manifest_sha256: crate::digest::sha256_hex(
            &serde_json::to_vec_pretty(&manifest).unwrap_or_default(),
        ),
        manifest,
    };
    let ledger = crate::lineage::ledger::Ledger::open(&e.ledger.0);
    let ledger_path = ledger.entry_path(r.release.as_str())?;
    let mut changes = Vec::new();
    match ws.read_record::<crate::lineage::ledger::LedgerEntry>(&ledger_path)? {
        Some(existing) if existing == e.ledger.1 => {}
        Some(_) => {
            return Err(crate::lineage::ledger::LedgerError::Exists {
                release: r.release.to_string(),
                path: ledger_path,
            }
            .into());
        }
        None => {
            crate::tre::workspace::create_private_dir(&e.ledger.0)?;
            changes.push(Change::write(&ledger_path, &e.ledger.1)?);
        }
    }
    let mut next = r.clone();
    next.exporting = Some(intent.clone());
    changes.insert(
        0,
        Change::write(&request_path(ws, &r.project, &r.release), &next)?,
    );
    // (a) The intent and the ledger entry, under the audit entry that starts the export.
    ws.commit(
        auditor,
        EntryDraft::new(actor, "release.export.start")
            .project(r.project.as_str())
            .detail("release", r.release.as_str())
            .detail("job", r.job.as_str())
            .detail("approved_by", intent.manifest.approved_by.join(","))
            .detail("manifest_sha256", intent.manifest_sha256.as_str())
            .detail("outbox", intent.outbox.to_string_lossy().as_ref()),
        changes,
    )?;
    *r = next;
    match complete(ws, auditor, policy, r, actor, "release.export") {
        Ok(()) => Ok(()),
        Err(err) => {
            rollback(ws, auditor, r, actor, "release.export", &err.to_string())?;
            Err(err)
        }
    }
}

/// Steps (b) to (d) of an export whose intent is recorded: check the files again, stage
/// them in the outbox, publish the table then the manifest, mark the request exported
/// under the entry `action` by `actor`.
fn complete(
    ws: &Workspace,
    auditor: &Auditor,
    policy: &Policy,
    r: &mut Request,
    actor: &str,
    action: &str,
) -> Result<(), ReleaseError> {
    let Some(intent) = r.exporting.clone() else {
        return Ok(());
    };
    let dir = job_dir(ws, &r.project, &r.job);
    let table = verified_safe_table(ws, policy, r, &dir)?;
    let manifest = intent.manifest_bytes();
    if crate::digest::sha256_hex(&manifest) != intent.manifest_sha256 {
        return Err(changed(r, "the prepared manifest"));
    }
    let ledger = crate::lineage::ledger::Ledger::open(
        &crate::tre::purge::purge_paths(ws, r.project.as_str()).ledger,
    );
    let entry_path = ledger.entry_path(r.release.as_str())?;
    if ws
        .read_record::<crate::lineage::ledger::LedgerEntry>(&entry_path)?
        .is_none()
    {
        return Err(changed(r, "the ledger entry"));
    }
    let outbox = ws.outbox(&r.project)?;
    if outbox != intent.outbox {
        return Err(changed(r, "the outbox"));
    }
    let mut files = Vec::new();
    for (name, bytes) in [(&intent.table, &table), (&intent.manifest_file, &manifest)] {
        let target = outbox.join(name);
        let sha256 = crate::digest::sha256_hex(bytes);
        let staged = outbox.join(staged_name(&r.release, name));
        if !is_ours(&target, &sha256) {
            // (b) staged under a name no reader trusts, then (c) linked into place.
            crate::durable::remove_durably(&staged).map_err(ReleaseError::Outbox)?;
            crate::durable::stage(&staged, bytes, Mode::Shared).map_err(ReleaseError::Outbox)?;
            crate::durable::publish_new(&staged, &target).map_err(ReleaseError::Outbox)?;
        } else {
            crate::durable::remove_durably(&staged).map_err(ReleaseError::Outbox)?;
        }
        files.push(FileRecord {
            path: name.clone(),
            size: bytes.len() as u64,
            sha256,
        });
    }
    // (d) The request is exported, under the one entry that says so.
    let mut done = r.clone();
    done.state = ReleaseState::Exported;
    done.files = files;
    done.exporting = None;
    let mut d = EntryDraft::new(actor, action)
        .project(r.project.as_str())
        .detail("release", r.release.as_str())
        .detail("job", r.job.as_str())
        .detail("approved_by", intent.manifest.approved_by.join(","))
        .detail("rules_sha256", r.rules_sha256.as_str())
        .detail("outbox", outbox.to_string_lossy().as_ref())
        .input(HashRef::new(
            format!("projects/{}/results/{}/result.parquet", r.project, r.job),
            r.result_sha256.clone(),
        ));
    if action != "release.export" {
        d = d.detail("result", "finished");
    }
    for f in &done.files {
        d = d.output(HashRef::new(f.path.clone(), f.sha256.clone()));
    }
    save(ws, auditor, d, &done)?;
    *r = done;
    Ok(())
}

/// Whether `path` is a regular file (never a symlink) with this sha256.
fn is_ours(path: &Path, sha256: &str) -> bool {
    let Ok(m) = std::fs::symlink_metadata(path) else {
        return false;
    };
    if !m.is_file() {
        return false;
    }
    crate::durable::open_nofollow(path)
        .ok()
        .and_then(|f| crate::digest::sha256_reader(f).ok())
        .is_some_and(|(s, _)| s == sha256)
}

/// Undo an export that did not publish its manifest: staged files and an unpublished
/// table removed, the ledger entry removed, the request `requested` again, all under
/// one entry `action` (outcome error, with `reason`).
fn rollback(
    ws: &Workspace,
    auditor: &Auditor,
    r: &mut Request,
    actor: &str,
    action: &str,
    reason: &str,
) -> Result<(), ReleaseError> {
    let Some(intent) = r.exporting.clone() else {
        return Ok(());
    };
    let manifest = intent.outbox.join(&intent.manifest_file);
    if is_ours(&manifest, &intent.manifest_sha256) {
        // The manifest is out: the export happened; it is finished, never undone.
        return Err(ReleaseError::Exporting {
            release: r.release.clone(),
        });
    }
    for name in [&intent.table, &intent.manifest_file] {
        let staged = intent.outbox.join(staged_name(&r.release, name));
        let _ = crate::durable::remove_durably(&staged);
    }
    let table = intent.outbox.join(&intent.table);
    let safe = intent
        .manifest
        .files
        .first()
        .map(|f| f.sha256.clone())
        .unwrap_or_default();
    if is_ours(&table, &safe) {
        let _ = crate::durable::remove_durably(&table);
    }
    let ledger_dir = crate::tre::purge::purge_paths(ws, r.project.as_str()).ledger;
    let ledger_path =
        crate::lineage::ledger::Ledger::open(&ledger_dir).entry_path(r.release.as_str())?;
    let mut back = r.clone();
    back.exporting = None;
    back.state = ReleaseState::Requested;
    let mut d = EntryDraft::new(actor, action)
        .project(r.project.as_str())
        .detail("release", r.release.as_str())
        .detail("rolled_back", true);
    d = if action == "release.export" {
        d.failed(reason)
    } else {
        d.detail("result", "rolled back").detail("reason", reason)
    };
    ws.commit(
        auditor,
        d,
        vec![
            Change::write(&request_path(ws, &r.project, &r.release), &back)?,
            Change::Remove { path: ledger_path },
        ],
    )?;
    *r = back;
    Ok(())
}

/// Resume an interrupted export of `r` (`POST .../export` on a request left
/// `exporting`): finish it if its checks still pass, else roll it back and say why.
pub fn resume(
    ws: &Workspace,
    auditor: &Auditor,
    policy: &Policy,
    r: &mut Request,
    actor: &str,
) -> Result<(), ReleaseError> {
    match complete(ws, auditor, policy, r, actor, "release.export") {
        Ok(()) => Ok(()),
        Err(err) => {
            rollback(ws, auditor, r, actor, "release.export", &err.to_string())?;
            Err(err)
        }
    }
}

/// What [`recover`] did to one release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovered {
    /// An interrupted export finished: the release is exported.
    Finished {
        /// The project.
        project: Id,
        /// The release.
        release: Id,
    },
    /// An interrupted export rolled back: the release is requested again.
    RolledBack {
        /// The project.
        project: Id,
        /// The release.
        release: Id,
    },
    /// A release approved twice whose export never started (a crash between the second
    /// approval and the export's first step): exported now.
    Exported {
        /// The project.
        project: Id,
        /// The release.
        release: Id,
    },
    /// Staged outbox files no export owns, removed.
    StaleRemoved {
        /// The project.
        project: Id,
        /// How many files.
        files: usize,
    },
}

/// At server start (before serving): finish or roll back every release left
/// `exporting` by a crash, export every release approved twice whose export never
/// started, then remove staged outbox files no export owns; each action
/// audited as `release.recover` by `service`. A project that cannot be loaded is skipped
/// (its requests are refused when used, with the reason).
pub fn recover(ws: &Workspace, auditor: &Auditor) -> Result<Vec<Recovered>, ReleaseError> {
    let schemas = crate::schema::SchemaSet::builtin();
    let mut done = Vec::new();
    for project in ws.projects()? {
        let Ok(policy) = ws.project(&project, &schemas) else {
            continue;
        };
        let dir = ws.project_dir(&project).join("requests");
        let names = crate::tre::workspace::list_dir(&dir).unwrap_or_default();
        for name in names {
            let Some(id) = name
                .strip_suffix(".json")
                .and_then(|s| Id::parse("release", s).ok())
            else {
                continue;
            };
            let Ok(mut r) = load(ws, &project, &id) else {
                continue;
            };
            if r.exporting.is_none() {
                // Approved twice but never started: the second approval's export is due.
                // A failure is audited and rolled back by `export`; the request stays
                // requested for `POST .../export`, and the start goes on.
                if r.state == ReleaseState::Requested && r.approvals().len() >= 2 {
                    let prepared = auditor
                        .head()
                        .map_err(ReleaseError::from)
                        .and_then(|h| prepare_export(ws, &policy, &r, auditor.clock().now(), h));
                    if let Ok(e) = prepared
                        && export(ws, auditor, &policy, &mut r, &e, "service").is_ok()
                    {
                        done.push(Recovered::Exported {
                            project: project.clone(),
                            release: id,
                        });
                    }
                }
                continue;
            }
            match complete(ws, auditor, &policy, &mut r, "service", "release.recover") {
                Ok(()) => done.push(Recovered::Finished {
                    project: project.clone(),
                    release: id,
                }),
                Err(err) => {
                    rollback(
                        ws,
                        auditor,
                        &mut r,
                        "service",
                        "release.recover",
                        &err.to_string(),
                    )?;
                    done.push(Recovered::RolledBack {
                        project: project.clone(),
                        release: id,
                    });
                }
            }
        }
        let Ok(outbox) = ws.outbox(&project) else {
            continue;
        };
        let stale: Vec<String> = std::fs::read_dir(&outbox)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(STAGED_PREFIX) && n.contains(&format!("-{project}-")))
                    .collect()
            })
            .unwrap_or_default();
        if !stale.is_empty() {
            auditor.record(
                EntryDraft::new("service", "release.recover")
                    .project(project.as_str())
                    .detail("result", "removed staged outbox files")
                    .detail("files", stale.len()),
            )?;
            for n in &stale {
                crate::durable::remove_durably(&outbox.join(n)).map_err(ReleaseError::Outbox)?;
            }
            done.push(Recovered::StaleRemoved {
                project: project.clone(),
                files: stale.len(),
            });
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Id {
        Id::parse("test", s).expect("id")
    }

    fn request() -> Request {
        Request {
            release: id("r-1"),
            project: id("demo"),
            job: id("job-1"),
            requester: id("analyst"),
            justification: "for the paper".into(),
            context: "counts by age".into(),
            created_at: DateTime::<Utc>::default(),
            result_sha256: String::new(),
            safe_sha256: String::new(),
            rules: "opensafely".into(),
            rules_sha256: String::new(),
            state: ReleaseState::Requested,
            reviews: vec![],
            files: vec![],
            exporting: None,
            version: 1,
            history: vec![],
        }
    }

    fn rv(who: &str, d: Decision) -> Review {
        Review {
            checker: id(who),
            decision: d,
            comment: "looked at it".into(),
            at: DateTime::<Utc>::default(),
        }
    }

    #[test]
    fn the_requester_cannot_review() {
        let mut r = request();
        assert!(matches!(
            review(&mut r, rv("analyst", Decision::Approve)),
            Err(ReleaseError::SelfReview { .. })
        ));
    }

    #[test]
    fn each_checker_reviews_once_and_two_approve() {
        let mut r = request();
        review(&mut r, rv("c1", Decision::Approve)).expect("first");
        assert!(matches!(
            review(&mut r, rv("c1", Decision::Approve)),
            Err(ReleaseError::AlreadyReviewed { .. })
        ));
        review(&mut r, rv("c2", Decision::Approve)).expect("second");
        assert_eq!(r.approvals().len(), 2);
    }

    #[test]
    fn a_rejection_closes_the_request() {
        let mut r = request();
        review(&mut r, rv("c1", Decision::Reject)).expect("reject");
        assert_eq!(r.state, ReleaseState::Rejected);
        assert!(matches!(
            review(&mut r, rv("c2", Decision::Approve)),
            Err(ReleaseError::Closed { .. })
        ));
    }

    #[test]
    fn a_return_for_changes_closes_the_version() {
        let mut r = request();
        review(&mut r, rv("c1", Decision::Return)).expect("return");
        assert_eq!(r.state, ReleaseState::Returned);
        assert!(!r.is_open());
        assert!(matches!(
            review(&mut r, rv("c2", Decision::Approve)),
            Err(ReleaseError::Closed { .. })
        ));
    }

    #[test]
    fn a_first_version_serialises_as_before() {
        let v = serde_json::to_value(request()).expect("json");
        assert!(
            v.get("version").is_none() && v.get("history").is_none(),
            "{v}"
        );
        let back: Request = serde_json::from_value(v).expect("old records still load");
        assert_eq!(back.version, 1);
    }

    #[test]
    fn earlier_refusals_list_rejections_and_returns_of_earlier_versions() {
        let mut r = request();
        r.version = 3;
        for (n, d) in [(1, Decision::Reject), (2, Decision::Return)] {
            r.history.push(Version {
                version: n,
                job: id(&format!("job-{n}")),
                justification: "j".into(),
                context: "c".into(),
                created_at: DateTime::<Utc>::default(),
                safe_sha256: String::new(),
                rules: "opensafely".into(),
                state: ReleaseState::Rejected,
                reviews: vec![rv("c0", Decision::Approve), rv("c1", d)],
            });
        }
        let refusals: Vec<(u32, Decision)> = r
            .earlier_refusals()
            .iter()
            .map(|(v, x)| (*v, x.decision))
            .collect();
        assert_eq!(refusals, vec![(1, Decision::Reject), (2, Decision::Return)]);
        // Earlier approvals never count towards the current version.
        assert!(r.approvals().is_empty());
    }

    #[test]
    fn a_review_needs_a_comment() {
        let mut r = request();
        let mut x = rv("c1", Decision::Approve);
        x.comment = " ".into();
        assert!(matches!(
            review(&mut r, x),
            Err(ReleaseError::MissingText { .. })
        ));
    }
}
