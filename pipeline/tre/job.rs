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

use crate::audit::{AuditEntry, EntryDraft};
use crate::tre::id::Id;
use crate::tre::query::{QueryLimits, QueryOutcome, job_dir};
use crate::tre::workspace::{Change, Journal, Workspace, WorkspaceError, create_private_dir};

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
    /// The state's name, as the API and the audit log say it.
    pub fn name(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Killed => "killed",
        }
    }

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
    /// Peak resident memory of its process, in KiB: the larger of the child's own final
    /// VmHWM and the server's samples (only the samples when it was killed).
    pub peak_rss_kib: Option<u64>,
    /// It failed or was killed while running over the data (an error in a function or
    /// cast, a time, memory or size limit): what went wrong depends on the data, so the
    /// analyst is told only that it did not complete (one bit); the state and reason
    /// are for output checkers and the audit trail.
    #[serde(default)]
    pub failed_while_running: bool,
    /// The dataset version it ran on, set when it started (`None` for a job that never
    /// started, or one recorded before dataset versions).
    #[serde(default)]
    pub dataset_version: Option<u32>,
}

/// What an analyst is told of a job that failed while running over the data.
pub const FAILED_WHILE_RUNNING: &str = "the job did not complete while running over the data (an error in a function or a cast, or a time, memory or size limit); what went wrong depends on the data and is shown to the project's output checkers only. Check casts and arithmetic, or ask for less";

impl JobRecord {
    /// The record as an analyst may see it: a job that failed while running is only
    /// `failed`, with [`FAILED_WHILE_RUNNING`] as its reason (the one bit); any other
    /// record as it is.
    pub fn for_analyst(&self) -> JobRecord {
        let mut r = self.clone();
        if r.failed_while_running && matches!(r.state, JobState::Failed | JobState::Killed) {
            r.state = JobState::Failed;
            r.reason = Some(FAILED_WHILE_RUNNING.to_string());
        }
        r
    }
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
    /// The audit log could not be written, so the job's state was not changed.
    #[error("the audit log could not be written, so the job was left as it was: {0}")]
    Audit(#[from] crate::audit::AuditError),
}

impl crate::error::Classify for JobError {
    fn kind(&self) -> crate::error::ErrorKind {
        match self {
            JobError::Workspace(w) => crate::error::Classify::kind(w),
            JobError::QueueClosed | JobError::Audit(_) => crate::error::ErrorKind::Failed,
            _ => crate::error::ErrorKind::Refused,
        }
    }
}

fn record_path(ws: &Workspace, project: &Id, job: &Id) -> std::path::PathBuf {
    job_dir(ws, project, job).join("job.json")
}

/// Create a new job's folder and its record (state queued), bound to the audit entry
/// `draft` (`job.submit`): the entry is appended first and names the record's hash, and
/// the record is sealed with the entry's seq (see [`crate::tre::records`]).
pub fn create(
    ws: &Workspace,
    journal: &dyn Journal,
    draft: EntryDraft,
    rec: &JobRecord,
) -> Result<AuditEntry, JobError> {
    let dir = job_dir(ws, &rec.project, &rec.job);
    if dir.exists() {
        return Err(JobError::Exists {
            job: rec.job.clone(),
        });
    }
    create_private_dir(&dir)?;
    // Nothing is left of a job that was never recorded (a full disk): the folder made
    // here goes with it.
    commit(ws, journal, draft, rec).inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&dir);
        let _ = crate::durable::fsync_parent(&dir);
    })
}

/// Replace a job's record under the audit entry `draft` (`job.start`, `job.run`,
/// `job.recover`), as one bound write: if the entry cannot be written the record is left
/// as it was, and a record rolled back to an earlier state on disk is refused on read.
pub fn commit(
    ws: &Workspace,
    journal: &dyn Journal,
    draft: EntryDraft,
    rec: &JobRecord,
) -> Result<AuditEntry, JobError> {
    let change = Change::write(&record_path(ws, &rec.project, &rec.job), rec)?;
    Ok(ws.commit(journal, draft, vec![change])?)
}

/// Load a job's record (refused if it was edited on disk).
pub fn load(ws: &Workspace, project: &Id, job: &Id) -> Result<JobRecord, JobError> {
    ws.read_record(&record_path(ws, project, job))?
        .ok_or_else(|| JobError::NotFound {
            project: project.clone(),
            job: job.clone(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tre::auditor::Auditor;

    fn setup() -> (tempfile::TempDir, Workspace, Auditor) {
        let t = tempfile::tempdir().expect("tempdir");
        let w = Workspace::init(&t.path().join("ws")).expect("init");
        crate::tre::anchors::create_checkpoint_key(w.root()).expect("checkpoint key");
        let a =
            Auditor::new(&w, std::sync::Arc::new(crate::clock::SystemClock), 0).expect("auditor");
        (t, w, a)
    }

    fn entry(action: &str, rec: &JobRecord) -> EntryDraft {
        EntryDraft::new("analyst", action)
            .project(rec.project.as_str())
            .detail("job", rec.job.as_str())
    }

    fn queued(job: &str) -> JobRecord {
        let id = |kind, s| Id::parse(kind, s).expect("id");
        JobRecord {
            job: id("job", job),
            project: id("project", "demo"),
            submitter: id("user", "analyst"),
            purpose: "counts by age band".into(),
            sql: "SELECT age_band, COUNT(*) AS n FROM patients GROUP BY age_band".into(),
            limits: QueryLimits {
                max_rows: 1000,
                max_seconds: 60,
                memory_bytes: 512 << 20,
                threads: 1,
            },
            state: JobState::Queued,
            reason: None,
            submitted_at: DateTime::parse_from_rfc3339("2026-01-01T09:00:00Z")
                .expect("date")
                .with_timezone(&Utc),
            started_at: None,
            finished_at: None,
            outcome: None,
            peak_rss_kib: None,
            failed_while_running: false,
            dataset_version: None,
        }
    }

    #[test]
    fn only_the_end_states_are_final() {
        assert!(!JobState::Queued.is_final());
        assert!(!JobState::Running.is_final());
        assert!(JobState::Succeeded.is_final());
        assert!(JobState::Failed.is_final());
        assert!(JobState::Killed.is_final());
    }

    #[test]
    fn a_record_is_created_once_then_saved_and_loaded() {
        let (_t, w, a) = setup();
        let mut rec = queued("job-1");
        create(&w, &a, entry("job.submit", &rec), &rec).expect("create");
        assert!(matches!(
            create(&w, &a, entry("job.submit", &rec), &rec),
            Err(JobError::Exists { .. })
        ));
        rec.state = JobState::Killed;
        rec.reason = Some("over the project's time limit of 60 s".into());
        commit(&w, &a, entry("job.run", &rec), &rec).expect("save");
        let back = load(&w, &rec.project, &rec.job).expect("load");
        assert_eq!(back.state, JobState::Killed);
        assert_eq!(back.reason, rec.reason);
        assert_eq!(back.sql, rec.sql);
        assert_eq!(back.submitted_at, rec.submitted_at);
    }

    #[test]
    fn a_job_record_rolled_back_to_an_earlier_state_is_refused() {
        // Each state change is bound to the audit entry that made it: a copy of the
        // record taken while it was queued, put back after it ran, is not accepted.
        let (_t, w, a) = setup();
        let mut rec = queued("job-3");
        create(&w, &a, entry("job.submit", &rec), &rec).expect("create");
        let path = record_path(&w, &rec.project, &rec.job);
        let queued_copy = std::fs::read(&path).expect("read");
        rec.state = JobState::Failed;
        rec.reason = Some("refused".into());
        commit(&w, &a, entry("job.run", &rec), &rec).expect("save");
        std::fs::write(&path, &queued_copy).expect("roll back");
        let e = load(&w, &rec.project, &rec.job).expect_err("rolled back");
        assert!(
            matches!(e, JobError::Workspace(WorkspaceError::Stale { .. })),
            "{e}"
        );
        // And a deleted record is missing, not absent.
        std::fs::remove_file(&path).expect("rm");
        let e = load(&w, &rec.project, &rec.job).expect_err("deleted");
        assert!(
            matches!(e, JobError::Workspace(WorkspaceError::Missing { .. })),
            "{e}"
        );
    }

    #[test]
    fn a_missing_job_is_not_found_and_an_edited_record_is_refused() {
        let (_t, w, a) = setup();
        let rec = queued("job-2");
        let missing = load(&w, &rec.project, &rec.job).expect_err("no such job");
        assert!(matches!(missing, JobError::NotFound { .. }), "{missing}");
        assert!(crate::error::Classify::is_refusal(&missing));
        create(&w, &a, entry("job.submit", &rec), &rec).expect("create");
        let path = record_path(&w, &rec.project, &rec.job);
        let text = std::fs::read_to_string(&path).expect("read");
        std::fs::write(&path, text.replace("queued", "succeeded")).expect("edit");
        let edited = load(&w, &rec.project, &rec.job).expect_err("edited on disk");
        assert!(
            matches!(edited, JobError::Workspace(WorkspaceError::Forged { .. })),
            "{edited}"
        );
    }
}
