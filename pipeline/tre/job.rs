//! Query jobs as records with a state machine: the store the server, the job's child
//! process and the release path share.
//!
//! Owns `projects/<p>/results/<job>/job.json` (a sealed [`JobRecord`]: who, why, the SQL,
//! the limits, the state and, once done, the outcome) and the states
//! queued → running → succeeded / failed / killed, each end state with a reason. The
//! process machinery that moves a job through them is [`crate::jobs`], above this module.
//! Danger: a job's result may be row-level; nothing here shows result rows, and the reason
//! a job failed is already reduced (no DataFusion text that may quote values).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::tre::id::Id;
use crate::tre::query::{QueryLimits, QueryOutcome, job_dir};
use crate::tre::workspace::{Workspace, WorkspaceError, create_private_dir};

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for a worker.
    Queued,
    /// Its child process is running.
    Running,
    /// Done; its result is checked.
    Succeeded,
    /// Refused or failed (bad SQL, row limit, ...).
    Failed,
    /// Stopped by a limit (time, CPU, memory).
    Killed,
}

impl JobState {
    /// Whether the job is over.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Killed
        )
    }
}

/// The server's record of one job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRecord {
    /// The job.
    pub job: Id,
    /// The project.
    pub project: Id,
    /// Who submitted it.
    pub submitter: Id,
    /// Why.
    pub purpose: String,
    /// The SQL.
    pub sql: String,
    /// Its limits, fixed at submission from the policy.
    pub limits: QueryLimits,
    /// Where it is.
    pub state: JobState,
    /// Why it ended as it did (failed or killed).
    pub reason: Option<String>,
    /// When it was submitted.
    #[serde(with = "crate::tre::stamp")]
    pub submitted_at: DateTime<Utc>,
    /// When its process started.
    #[serde(with = "crate::tre::stamp::opt")]
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    #[serde(with = "crate::tre::stamp::opt")]
    pub finished_at: Option<DateTime<Utc>>,
    /// What it produced.
    pub outcome: Option<QueryOutcome>,
    /// Peak resident memory of its process, in KiB, as sampled.
    pub peak_rss_kib: Option<u64>,
}

/// Job record errors.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// No such job.
    #[error("no job {job} in project {project}")]
    NotFound {
        /// The project.
        project: Id,
        /// The job.
        job: Id,
    },
    /// The job already exists.
    #[error("job {job} already exists")]
    Exists {
        /// The job.
        job: Id,
    },
    /// The job queue is closed (the server is stopping).
    #[error("the server is shutting down; submit the job again later")]
    QueueClosed,
    /// Workspace trouble.
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
}

impl crate::error::Classify for JobError {
    fn kind(&self) -> crate::error::ErrorKind {
        match self {
            JobError::Workspace(w) => crate::error::Classify::kind(w),
            JobError::QueueClosed => crate::error::ErrorKind::Failed,
            _ => crate::error::ErrorKind::Refused,
        }
    }
}

fn record_path(ws: &Workspace, project: &Id, job: &Id) -> std::path::PathBuf {
    job_dir(ws, project, job).join("job.json")
}

/// Create a new job's folder and record (state queued).
pub fn create(ws: &Workspace, rec: &JobRecord) -> Result<(), JobError> {
    let dir = job_dir(ws, &rec.project, &rec.job);
    if dir.exists() {
        return Err(JobError::Exists {
            job: rec.job.clone(),
        });
    }
    create_private_dir(&dir)?;
    save(ws, rec)
}

/// Replace a job's record.
pub fn save(ws: &Workspace, rec: &JobRecord) -> Result<(), JobError> {
    ws.write_record(&record_path(ws, &rec.project, &rec.job), rec)?;
    Ok(())
}

/// Load a job's record (refused if it was edited on disk).
pub fn load(ws: &Workspace, project: &Id, job: &Id) -> Result<JobRecord, JobError> {
    ws.read_record(&record_path(ws, project, job))?
        .ok_or_else(|| JobError::NotFound {
            project: project.clone(),
            job: job.clone(),
        })
}
