//! The job queue and its workers: each job runs in a child process under limits.
//!
//! Owns moving jobs from queued to an end state: N workers take job ids from one queue,
//! start `tre internal-run-job` for each (see [`super::child`]), sample its peak memory,
//! kill it at the project's wall-clock limit, classify how it ended, write the audit
//! entry, and only then the job's final record (audit first, then the effect). Danger:
//! a worker must never hang on a job: the wall-clock kill is the one bound that always
//! holds, whatever the child does.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::sync::{Mutex, mpsc};

use super::child::ChildReport;
use super::{JobError, JobRecord, JobState};
use crate::audit::{EntryDraft, HashRef, Outcome};
use crate::tre::auditor::Auditor;
use crate::tre::id::Id;
use crate::tre::workspace::Workspace;

/// The hidden subcommand that runs one job (`tre internal-run-job`).
pub const CHILD_COMMAND: &str = "internal-run-job";

/// Handle for submitting jobs to the workers.
#[derive(Debug, Clone)]
pub struct JobQueue {
    tx: mpsc::UnboundedSender<(Id, Id)>,
}

impl JobQueue {
    /// Queue a job whose record (state queued) already exists.
    pub fn push(&self, project: Id, job: Id) -> Result<(), JobError> {
        self.tx
            .send((project, job))
            .map_err(|_| JobError::QueueClosed)
    }
}

/// What the workers need.
#[derive(Debug, Clone)]
pub struct Runner {
    /// The workspace.
    pub ws: Workspace,
    /// The audit log.
    pub auditor: Auditor,
    /// The `tre` binary to start for each job.
    pub exe: PathBuf,
}

/// Start `workers` workers; they stop when every [`JobQueue`] is dropped.
pub fn start(runner: Runner, workers: usize) -> (JobQueue, Vec<tokio::task::JoinHandle<()>>) {
    let (tx, rx) = mpsc::unbounded_channel::<(Id, Id)>();
    let rx = Arc::new(Mutex::new(rx));
    let runner = Arc::new(runner);
    let handles = (0..workers.max(1))
        .map(|_| {
            let rx = rx.clone();
            let runner = runner.clone();
            tokio::spawn(async move {
                loop {
                    let next = rx.lock().await.recv().await;
                    let Some((project, job)) = next else { break };
                    if let Err(e) = run_one(&runner, &project, &job).await {
                        eprintln!("tre serve: job {job} of project {project}: {e}");
                    }
                }
            })
        })
        .collect();
    (JobQueue { tx }, handles)
}

/// How a child ended, before the record is written.
struct Ending {
    state: JobState,
    reason: Option<String>,
    report: Option<ChildReport>,
    peak_rss_kib: Option<u64>,
}

async fn run_one(r: &Runner, project: &Id, job: &Id) -> Result<(), JobError> {
    let mut rec = super::load(&r.ws, project, job)?;
    rec.state = JobState::Running;
    rec.started_at = Some(r.auditor.clock().now());
    super::save(&r.ws, &rec)?;
    let ending = supervise(r, &rec).await;
    finish(r, rec, ending)
}

/// Start the child and watch it until it ends or its time is up.
async fn supervise(r: &Runner, rec: &JobRecord) -> Ending {
    let failed = |reason: String| Ending {
        state: JobState::Failed,
        reason: Some(reason),
        report: None,
        peak_rss_kib: None,
    };
    let mut child = match tokio::process::Command::new(&r.exe)
        .arg(CHILD_COMMAND)
        .arg("--workspace")
        .arg(r.ws.root())
        .args(["--project", rec.project.as_str(), "--job", rec.job.as_str()])
        .env_clear()
        .env("MALLOC_ARENA_MAX", "2")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return failed(format!("cannot start the job's process: {e}")),
    };
    let pid = child.id();
    let out = read_all(child.stdout.take());
    let err = read_all(child.stderr.take());
    let limit = Duration::from_secs(rec.limits.max_seconds);
    let started = Instant::now();
    let mut peak = None;
    let mut timed_out = false;
    let status = loop {
        if let Some(p) = pid.and_then(peak_rss_kib) {
            peak = Some(peak.map_or(p, |q: u64| q.max(p)));
        }
        match tokio::time::timeout(Duration::from_millis(100), child.wait()).await {
            Ok(s) => break s,
            Err(_) if started.elapsed() >= limit => {
                timed_out = true;
                let _ = child.start_kill();
            }
            Err(_) => {}
        }
    };
    let stdout = out.await.unwrap_or_default();
    let stderr = err.await.unwrap_or_default();
    let mut ending = classify(status, timed_out, &stdout, &stderr, rec);
    ending.peak_rss_kib = peak;
    ending
}

fn read_all<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
    r: Option<R>,
) -> tokio::task::JoinHandle<Vec<u8>> {
    tokio::spawn(async move {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf).await;
        }
        buf
    })
}

/// Peak resident memory (VmHWM) of a live process, in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn classify(
    status: std::io::Result<std::process::ExitStatus>,
    timed_out: bool,
    stdout: &[u8],
    stderr: &[u8],
    rec: &JobRecord,
) -> Ending {
    use std::os::unix::process::ExitStatusExt;
    let end = |state, reason: Option<String>, report| Ending {
        state,
        reason,
        report,
        peak_rss_kib: None,
    };
    let mem = || {
        Some(format!(
            "over the project's memory limit of {} MiB",
            rec.limits.memory_bytes >> 20
        ))
    };
    if timed_out {
        let s = rec.limits.max_seconds;
        return end(JobState::Killed, Some(format!("over the project's time limit of {s} s")), None);
    }
    let status = match status {
        Ok(s) => s,
        Err(e) => return end(JobState::Failed, Some(format!("lost the job's process: {e}")), None),
    };
    if status.success() {
        let line = stdout.split(|&b| b == b'\n').find(|l| !l.is_empty()).unwrap_or(&[]);
        return match serde_json::from_slice::<ChildReport>(line) {
            Ok(ChildReport::Done { outcome }) => {
                end(JobState::Succeeded, None, Some(ChildReport::Done { outcome }))
            }
            Ok(ChildReport::OutOfMemory) => end(JobState::Killed, mem(), None),
            Ok(ChildReport::Failed { reason, .. }) => end(JobState::Failed, Some(reason), None),
            Err(_) => end(
                JobState::Failed,
                Some("the job's process gave no report (this is a bug in tre)".into()),
                None,
            ),
        };
    }
    let oom = String::from_utf8_lossy(stderr).contains("memory allocation");
    match status.signal() {
        Some(24) => end(
            JobState::Killed,
            Some(format!(
                "over the project's CPU limit ({} s per thread)",
                rec.limits.max_seconds
            )),
            None,
        ),
        Some(6) | Some(9) | Some(11) if oom => end(JobState::Killed, mem(), None),
        _ if oom => end(JobState::Killed, mem(), None),
        Some(sig) => end(
            JobState::Failed,
            Some(format!("the job's process was ended by signal {sig}")),
            None,
        ),
        None => end(
            JobState::Failed,
            Some(format!(
                "the job's process failed (exit status {})",
                status.code().unwrap_or(-1)
            )),
            None,
        ),
    }
}

/// Audit the ending, then make it visible in the job record.
fn finish(r: &Runner, mut rec: JobRecord, ending: Ending) -> Result<(), JobError> {
    let outcome = match ending.report {
        Some(ChildReport::Done { outcome }) => Some(outcome),
        _ => None,
    };
    let audit_outcome = match ending.state {
        JobState::Succeeded => Outcome::Ok,
        JobState::Killed => Outcome::Refused,
        _ => Outcome::Error,
    };
    let mut draft = EntryDraft::new(rec.submitter.as_str(), "job.run")
        .project(rec.project.as_str())
        .outcome(audit_outcome)
        .detail("job", rec.job.as_str())
        .detail("state", format!("{:?}", ending.state).to_lowercase());
    if let Some(reason) = &ending.reason {
        draft = draft.detail("reason", reason.as_str());
    }
    if let Some(p) = ending.peak_rss_kib {
        draft = draft.detail("peak_rss_kib", p);
    }
    if let Some(o) = &outcome {
        draft = draft
            .detail("rows", o.rows)
            .detail("releasable", o.releasable)
            .output(HashRef::new(
                format!("projects/{}/results/{}/{}", rec.project, rec.job, o.result.path),
                o.result.sha256.clone(),
            ));
    }
    rec.finished_at = Some(r.auditor.clock().now());
    rec.peak_rss_kib = ending.peak_rss_kib;
    match r.auditor.record(draft) {
        Ok(_) => {
            rec.state = ending.state;
            rec.reason = ending.reason;
            rec.outcome = outcome;
        }
        Err(e) => {
            eprintln!("tre serve: audit log: {e}");
            rec.state = JobState::Failed;
            rec.reason = Some("the audit log could not be written; the result is withheld".into());
        }
    }
    super::save(&r.ws, &rec)
}
