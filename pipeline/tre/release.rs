//! Release: the two-checker gate between a job's safe table and the project's outbox.
//!
//! Owns release requests (`projects/<p>/requests/<release>.json`, sealed records) and
//! their rules: an analyst of the project asks for a succeeded job's safe table to leave,
//! with a justification and context; output checkers of the project review it (never the
//! requester, each once, a comment required; one rejection ends it); the second approval
//! by a distinct checker exports it. Export re-verifies, against the bytes on disk, the
//! result's sha256 and the safe table's sha256 recorded at request time and the rules'
//! sha256, then writes the safe table and a release manifest (with the audit head) into
//! the project's configured outbox, never over an existing file. Danger: this is the only
//! door out of the TRE; nothing here trusts a file it has not checked by hash.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::durable::{FileRecord, Mode, write_new};
use crate::policy::Policy;
use crate::tre::anchors::AuditHead;
use crate::tre::id::Id;
use crate::tre::job::{JobRecord, JobState};
use crate::tre::query::{QueryError, job_dir, project_rules};
use crate::tre::workspace::{Workspace, WorkspaceError, open_nofollow};

/// The shortest justification, context and review comment accepted.
pub const MIN_TEXT: usize = 3;

/// Where a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseState {
    /// Waiting for reviews.
    Requested,
    /// A checker rejected it.
    Rejected,
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
}

/// One review.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Review {
    /// The checker.
    pub checker: Id,
    /// Approve or reject.
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
    #[error("cannot export into the outbox: {0}")]
    Outbox(#[source] crate::durable::DurableError),
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
            _ => ErrorKind::Refused,
        }
    }
}

fn request_path(ws: &Workspace, project: &Id, release: &Id) -> PathBuf {
    ws.project_dir(project)
        .join("requests")
        .join(format!("{release}.json"))
}

/// Save a request.
pub fn save(ws: &Workspace, r: &Request) -> Result<(), ReleaseError> {
    ws.write_record(&request_path(ws, &r.project, &r.release), r)?;
    Ok(())
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

/// The lineage gate of a release: purge marks, blocking findings stored with the result,
/// and the differencing rule against every earlier release in the project's ledger.
fn lineage_gate(
    ws: &Workspace,
    policy: &Policy,
    job: &Id,
    dir: &Path,
) -> Result<crate::lineage::gate::ReleaseCheck, ReleaseError> {
    let (_, rules, _) = project_rules(ws, policy)?;
    let result = read_parquet(&dir.join("result.parquet"))?;
    let published = read_csv(&dir.join("safe.csv"))?;
    let ledger = crate::tre::purge::purge_paths(ws, &policy.project.id).ledger;
    let mut check = crate::lineage::check_release(
        dir,
        &ledger,
        &result,
        &published,
        rules.suppression.min_count as f64,
        rules.min_max.allow,
    )?;
    check.audit_jointly(&rules);
    if check.blocked() {
        return Err(ReleaseError::Lineage {
            job: job.clone(),
            reasons: check.blocks.iter().map(ToString::to_string).collect(),
        });
    }
    Ok(check)
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
    // `tre purge` marks results that held newly opted-out patients: never released.
    match crate::lineage::purge_mark(&dir) {
        Ok(None) => {}
        Ok(Some(_)) | Err(_) => {
            return Err(not(
                "tre purge marked its result (it held newly opted-out patients)",
            ));
        }
    }
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
    })
}

/// Apply a review to a request (in memory): the caller audits, then saves, and exports
/// when [`Request::approvals`] reaches two.
pub fn review(r: &mut Request, review: Review) -> Result<(), ReleaseError> {
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
    if review.decision == Decision::Reject {
        r.state = ReleaseState::Rejected;
    }
    r.reviews.push(review);
    Ok(())
}

/// What an export will write, prepared (and checked) before anything is written.
#[derive(Debug)]
pub struct Export {
    /// The outbox.
    pub outbox: PathBuf,
    /// The project's ledger folder and this release's entry, recorded before the files
    /// are written (a release that fails to leave still counts against differencing).
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

/// Write a prepared export into the outbox: each file new (never over an existing file
/// or symlink), the manifest last.
pub fn write_export(e: &Export) -> Result<Vec<FileRecord>, ReleaseError> {
    crate::lineage::record_release(&e.ledger.0, &e.ledger.1)?;
    let mut out = Vec::new();
    for (name, bytes) in [&e.table, &e.manifest] {
        let mut rec =
            write_new(&e.outbox.join(name), bytes, Mode::Shared).map_err(ReleaseError::Outbox)?;
        rec.path = name.clone();
        out.push(rec);
    }
    Ok(out)
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
