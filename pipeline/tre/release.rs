//! Release: the two-checker gate between a query result and the outside world.
//!
//! Owns release requests (`projects/<id>/requests/<request>.json`): an analyst requests
//! the release of a job's result with a justification; output checkers review it (never
//! the requester; each checker once); export happens only when two different checkers
//! approved, nobody rejected, the result file is unchanged since the request, and every
//! failing rule that suppression and rounding cannot fix was approved as a written
//! exception by both checkers (as ACRO allows). What leaves is always the safe version
//! (suppressed and rounded) with a release manifest of hashes. Danger: this is the only
//! door out of the TRE; every check is re-run at export time, against the bytes on disk,
//! and row-level results can never pass it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::disclosure::{self, RoleSpec, Rules, Verdict};
use crate::durable::{FileRecord, Mode, write_atomic};
use crate::output::OutputError;
use crate::policy::Policy;
use crate::tre::query::{MAX_CHECKED_ROWS, job_dir};
use crate::tre::workspace::{Role, Workspace, WorkspaceError};

/// Release failures and refusals.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// Refused by a rule.
    #[error("{0}")]
    Refused(String),
    /// Not found or unreadable.
    #[error("{0}")]
    NotFound(String),
    /// Workspace trouble.
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    /// Writing failed.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// A durable write failed.
    #[error(transparent)]
    Durable(#[from] crate::durable::DurableError),
    /// The disclosure check could not run.
    #[error(transparent)]
    Disclosure(#[from] disclosure::DisclosureError),
}

impl crate::error::Classify for ReleaseError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            ReleaseError::Refused(_) => ErrorKind::Refused,
            ReleaseError::Workspace(w) => crate::error::Classify::kind(w),
            _ => ErrorKind::Failed,
        }
    }
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
pub struct Review {
    /// The checker.
    pub checker: String,
    /// Approve or reject.
    pub decision: Decision,
    /// Why.
    pub comment: String,
    /// Rules this checker accepts an exception for.
    #[serde(default)]
    pub exceptions: Vec<String>,
    /// When.
    pub at: String,
}

/// A release request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// Request id.
    pub id: String,
    /// Project.
    pub project: String,
    /// Job whose result is to leave.
    pub job: String,
    /// Who asked.
    pub requester: String,
    /// Why it should leave.
    pub justification: String,
    /// When.
    pub created_at: String,
    /// SHA-256 of the result when requested.
    pub result_sha256: String,
    /// Rules the result was checked with.
    pub rules: String,
    /// Verdict at request time.
    pub verdict: String,
    /// Rules failing at request time that suppression cannot fix.
    pub unfixable_rules: Vec<String>,
    /// Reviews in order.
    pub reviews: Vec<Review>,
    /// Set once exported.
    pub exported_to: Option<String>,
}

fn request_path(ws: &Workspace, project: &str, id: &str) -> PathBuf {
    ws.project_dir(project)
        .join("requests")
        .join(format!("{id}.json"))
}

fn save(ws: &Workspace, r: &Request) -> Result<FileRecord, ReleaseError> {
    let text = serde_json::to_vec_pretty(r).map_err(|e| ReleaseError::NotFound(e.to_string()))?;
    Ok(write_atomic(
        &request_path(ws, &r.project, &r.id),
        &text,
        Mode::Shared,
    )?)
}

/// Load a request by id.
pub fn load(ws: &Workspace, project: &str, id: &str) -> Result<Request, ReleaseError> {
    let p = request_path(ws, project, id);
    let bytes = std::fs::read(&p).map_err(|_| {
        ReleaseError::NotFound(format!("no release request {id:?} in project {project}"))
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ReleaseError::NotFound(format!("{}: unreadable ({e})", p.display())))
}

/// Read a job's result and check it now, from the bytes on disk.
fn check_result(
    ws: &Workspace,
    policy: &Policy,
    job: &str,
) -> Result<(Vec<RecordBatch>, disclosure::Report, String, String), ReleaseError> {
    let path = job_dir(ws, &policy.project.id, job).join("result.parquet");
    let not_found = |_| {
        ReleaseError::NotFound(format!(
            "no result for job {job:?} in project {}",
            policy.project.id
        ))
    };
    // Streamed: a result is never read whole into memory to be hashed.
    let (sha, _) = crate::digest::sha256_file(&path).map_err(not_found)?;
    let file = std::fs::File::open(&path).map_err(not_found)?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| ReleaseError::NotFound(format!("{}: {e}", path.display())))?;
    let mut batches = Vec::new();
    let mut rows = 0;
    for b in reader {
        let b = b.map_err(|e| ReleaseError::NotFound(format!("{}: {e}", path.display())))?;
        rows += b.num_rows();
        if rows > MAX_CHECKED_ROWS {
            return Err(ReleaseError::Refused(format!(
                "job {job} has a row-level result; it can never be released"
            )));
        }
        batches.push(b);
    }
    if rows == 0 {
        return Err(ReleaseError::Refused(format!(
            "job {job} has an empty result; there is nothing to release"
        )));
    }
    let spec = policy
        .tre
        .as_ref()
        .and_then(|t| t.output_rules.clone())
        .unwrap_or_else(|| "opensafely".into());
    let rules = Rules::resolve(&spec)?;
    let report = disclosure::check(&batches, &RoleSpec::default(), &rules).map_err(|e| {
        ReleaseError::Refused(format!("job {job}'s result cannot be checked as an aggregate table ({e}); it can never be released"))
    })?;
    if report.verdict == Verdict::Blocked {
        return Err(ReleaseError::Refused(format!(
            "job {job}'s result looks like row-level data; it can never be released"
        )));
    }
    Ok((batches, report, sha, spec))
}

/// Table-level rules that the safe version (`Report::apply`) itself satisfies.
const FIXED_BY_APPLY: &[&str] = &["rounding"];

fn unfixable(report: &disclosure::Report) -> Vec<String> {
    let set: BTreeSet<String> = report
        .table_findings
        .iter()
        .filter(|f| f.fails && !FIXED_BY_APPLY.contains(&f.rule.as_str()))
        .map(|f| f.rule.clone())
        .collect();
    set.into_iter().collect()
}

/// An analyst asks for a job's result to be released.
pub fn request(
    ws: &Workspace,
    policy: &Policy,
    user: &str,
    job: &str,
    justification: &str,
    now: &str,
    id: &str,
) -> Result<Request, ReleaseError> {
    ws.authorise(policy, user, Role::Analyst)?;
    if justification.trim().len() < 10 {
        return Err(ReleaseError::Refused(
            "a release request needs a written justification (at least a sentence)".into(),
        ));
    }
    let (_, report, sha, rules) = check_result(ws, policy, job)?;
    let r = Request {
        id: id.to_string(),
        project: policy.project.id.clone(),
        job: job.to_string(),
        requester: user.to_string(),
        justification: justification.to_string(),
        created_at: now.to_string(),
        result_sha256: sha,
        rules,
        verdict: format!("{:?}", report.verdict),
        unfixable_rules: unfixable(&report),
        reviews: Vec::new(),
        exported_to: None,
    };
    if request_path(ws, &r.project, id).exists() {
        return Err(ReleaseError::Refused(format!(
            "release request {id} already exists"
        )));
    }
    save(ws, &r)?;
    Ok(r)
}

/// An output checker reviews a request; `review.checker` is the acting user.
pub fn review(
    ws: &Workspace,
    policy: &Policy,
    id: &str,
    review: Review,
) -> Result<Request, ReleaseError> {
    let user = review.checker.as_str();
    ws.authorise(policy, user, Role::Checker)?;
    let mut r = load(ws, &policy.project.id, id)?;
    if r.requester == user {
        return Err(ReleaseError::Refused(format!(
            "{user} requested release {id} and cannot review it; another output checker must"
        )));
    }
    if r.reviews.iter().any(|x| x.checker == user) {
        return Err(ReleaseError::Refused(format!(
            "{user} has already reviewed release {id}"
        )));
    }
    if r.exported_to.is_some() {
        return Err(ReleaseError::Refused(format!(
            "release {id} has already been exported"
        )));
    }
    if review.comment.trim().len() < 3 {
        return Err(ReleaseError::Refused("a review needs a comment".into()));
    }
    for e in &review.exceptions {
        if !r.unfixable_rules.contains(e) {
            return Err(ReleaseError::Refused(format!(
                "no exception is needed or possible for rule {e:?}; the rules failing that suppression cannot fix are: [{}]",
                r.unfixable_rules.join(", ")
            )));
        }
    }
    r.reviews.push(review);
    save(ws, &r)?;
    Ok(r)
}

/// What an export wrote.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseManifest {
    /// Request id.
    pub request: String,
    /// Project.
    pub project: String,
    /// Job.
    pub job: String,
    /// Requester.
    pub requester: String,
    /// Approving checkers.
    pub approved_by: Vec<String>,
    /// Exceptions both checkers approved.
    pub exceptions: Vec<String>,
    /// Rules used.
    pub rules: String,
    /// SHA-256 of the result inside the TRE.
    pub source_sha256: String,
    /// When.
    pub exported_at: String,
    /// Files released.
    pub files: Vec<FileRecord>,
}

/// Export an approved request's safe table to `to`.
pub fn export(
    ws: &Workspace,
    policy: &Policy,
    id: &str,
    to: &Path,
    now: &str,
) -> Result<ReleaseManifest, ReleaseError> {
    let mut r = load(ws, &policy.project.id, id)?;
    if let Some(prev) = &r.exported_to {
        return Err(ReleaseError::Refused(format!(
            "release {id} was already exported to {prev}"
        )));
    }
    if let Some(rej) = r.reviews.iter().find(|x| x.decision == Decision::Reject) {
        return Err(ReleaseError::Refused(format!(
            "release {id} was rejected by {}: {}",
            rej.checker, rej.comment
        )));
    }
    let checkers = policy
        .tre
        .as_ref()
        .map(|t| t.output_checkers.clone())
        .unwrap_or_default();
    let approvers: Vec<&Review> = r
        .reviews
        .iter()
        .filter(|x| {
            x.decision == Decision::Approve
                && x.checker != r.requester
                && checkers.contains(&x.checker)
        })
        .collect();
    let distinct: BTreeSet<&str> = approvers.iter().map(|x| x.checker.as_str()).collect();
    if distinct.len() < 2 {
        return Err(ReleaseError::Refused(format!(
            "release {id} has {} approval(s); two different output checkers must approve before export",
            distinct.len()
        )));
    }
    let (batches, report, sha, _) = check_result(ws, policy, &r.job)?;
    if sha != r.result_sha256 {
        return Err(ReleaseError::Refused(format!(
            "the result of job {} changed after release {id} was requested; request again",
            r.job
        )));
    }
    let mut agreed: Vec<String> = Vec::new();
    for rule in unfixable(&report) {
        if approvers
            .iter()
            .filter(|a| a.exceptions.contains(&rule))
            .count()
            >= 2
        {
            agreed.push(rule);
        } else {
            return Err(ReleaseError::Refused(format!(
                "rule {rule:?} fails and cannot be fixed by suppression; both approving checkers must approve a written exception for it (--exception {rule})"
            )));
        }
    }
    drop(batches);
    let safe = report.apply()?;
    std::fs::create_dir_all(to).map_err(|source| OutputError::Io {
        path: to.to_path_buf(),
        source,
    })?;
    let name = format!("{}-{}.csv", r.project, r.job);
    let mut csv = Vec::new();
    {
        let mut w = arrow::csv::WriterBuilder::new()
            .with_header(true)
            .build(&mut csv);
        w.write(&safe)
            .map_err(|e| ReleaseError::NotFound(format!("cannot encode the safe table: {e}")))?;
    }
    let mut rec = write_atomic(&to.join(&name), &csv, Mode::Shared)?;
    rec.path = name;
    let manifest = ReleaseManifest {
        request: r.id.clone(),
        project: r.project.clone(),
        job: r.job.clone(),
        requester: r.requester.clone(),
        approved_by: distinct.iter().map(|s| s.to_string()).collect(),
        exceptions: agreed,
        rules: r.rules.clone(),
        source_sha256: sha,
        exported_at: now.to_string(),
        files: vec![rec],
    };
    let text =
        serde_json::to_vec_pretty(&manifest).map_err(|e| ReleaseError::NotFound(e.to_string()))?;
    write_atomic(&to.join("release-manifest.json"), &text, Mode::Shared)?;
    let released = ws.project_dir(&r.project).join("released").join(&r.id);
    std::fs::create_dir_all(&released).map_err(|source| OutputError::Io {
        path: released.clone(),
        source,
    })?;
    write_atomic(&released.join("release-manifest.json"), &text, Mode::Shared)?;
    r.exported_to = Some(to.to_string_lossy().into_owned());
    save(ws, &r)?;
    Ok(manifest)
}
