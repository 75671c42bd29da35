//! The job queue and its workers: each job runs in a child process under limits.
//!
//! Owns moving jobs from queued to an end state: N workers take job ids from one queue;
//! for each, the start is audited (`job.start`) and the record saved as running, durably,
//! BEFORE `tre internal-run-job` is spawned (see [`super::child`]) in its own process
//! group; the worker samples its peak memory (and takes the child's own final figure),
//! kills the group at the project's wall-clock limit, classifies how it ended, writes the
//! audit entry, and only then the job's final record (audit first, then the effect).
//! [`recover`] runs at the server's start: a job a dead server left running is marked
//! failed ("interrupted"), never run again; only jobs never started are queued again.
//! [`Workers::stop`] ends the running jobs' process groups when the server stops.
//! Danger: a worker must never hang on a job (the wall-clock kill is the one bound that
//! always holds, whatever the child does), and a job must never run twice.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::sync::{Mutex, mpsc, watch};

use super::child::{ChildLine, ChildReport};
use super::{JobError, JobRecord, JobState};
use crate::audit::{EntryDraft, HashRef, Outcome};
use crate::tre::auditor::Auditor;
use crate::tre::id::Id;
use crate::tre::query::QueryLimits;
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
    /// `tre serve --scheduler`: jobs run on this Ballista cluster (`crate::cluster`).
    pub scheduler: Option<String>,
}

/// Why a job ended because the server stopped.
pub const STOPPED_REASON: &str = "the server stopped while it ran; submit it again";
/// Why a job a previous server left running was failed at this server's start.
pub const INTERRUPTED_REASON: &str =
    "interrupted: the server stopped while it ran; submit it again";

/// What the workers share with [`Workers::stop`].
#[derive(Debug)]
struct Control {
    /// Set once: no job starts after it, and running ones are killed.
    stopping: AtomicBool,
    /// Tells idle workers to leave.
    stop_tx: watch::Sender<bool>,
    /// The process group of each running job's child, by job id.
    running: std::sync::Mutex<HashMap<String, i32>>,
}

impl Control {
    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, i32>> {
        // A panic while holding the lock leaves only whole entries behind.
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

/// Kill a job's whole process group (the child and anything it started).
fn kill_group(pgid: i32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pgid) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// The running workers, for stopping them with the server.
#[derive(Debug)]
pub struct Workers {
    control: Arc<Control>,
    handles: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Workers {
    /// Stop: no queued job starts any more (it stays queued for the next start), every
    /// running job's process group is killed and its job ends failed ("the server
    /// stopped"), audited by its worker; waits up to `grace` for the workers to write
    /// those endings. Returns how many jobs were running.
    pub async fn stop(&self, grace: Duration) -> usize {
        self.control.stopping.store(true, Ordering::SeqCst);
        let _ = self.control.stop_tx.send(true);
        let groups: Vec<i32> = self.control.running().values().copied().collect();
        for g in &groups {
            kill_group(*g);
        }
        let handles = std::mem::take(&mut *self.handles.lock().await);
        let all = futures::future::join_all(handles);
        if tokio::time::timeout(grace, all).await.is_err() {
            eprintln!("tre serve: job workers did not finish within {grace:?}");
        }
        groups.len()
    }
}

/// Start `workers` workers; they stop at [`Workers::stop`] or when every [`JobQueue`]
/// is dropped.
pub fn start(runner: Runner, workers: usize) -> (JobQueue, Workers) {
    let (tx, rx) = mpsc::unbounded_channel::<(Id, Id)>();
    let rx = Arc::new(Mutex::new(rx));
    let (stop_tx, stop_rx) = watch::channel(false);
    let control = Arc::new(Control {
        stopping: AtomicBool::new(false),
        stop_tx,
        running: std::sync::Mutex::new(HashMap::new()),
    });
    let runner = Arc::new(runner);
    let handles = (0..workers.max(1))
        .map(|_| {
            let rx = rx.clone();
            let runner = runner.clone();
            let control = control.clone();
            let mut stop_rx = stop_rx.clone();
            tokio::spawn(async move {
                loop {
                    let next = tokio::select! {
                        n = async { rx.lock().await.recv().await } => n,
                        _ = stop_rx.wait_for(|s| *s) => None,
                    };
                    let Some((project, job)) = next else { break };
                    if control.stopping() {
                        break;
                    }
                    if let Err(e) = run_one(&runner, &control, &project, &job).await {
                        eprintln!("tre serve: job {job} of project {project}: {e}");
                    }
                }
            })
        })
        .collect();
    let workers = Workers {
        control,
        handles: Mutex::new(handles),
    };
    (JobQueue { tx }, workers)
}

/// What [`recover`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// Jobs left running by a previous server, now failed ("interrupted").
    pub interrupted: usize,
    /// Jobs never started, queued again.
    pub requeued: usize,
}

/// At the server's start: a job a previous server left running is marked failed (state
/// failed, [`INTERRUPTED_REASON`]), audited first (`job.recover` by `service`); a job
/// still queued (never started) is queued again. A job is never run twice.
pub fn recover(ws: &Workspace, auditor: &Auditor, queue: &JobQueue) -> Result<Recovered, JobError> {
    let mut done = Recovered::default();
    for p in ws.projects()? {
        let dir = ws.project_dir(&p).join("results");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut jobs: Vec<Id> = entries
            .flatten()
            .filter_map(|e| Id::parse("job", &e.file_name().to_string_lossy()).ok())
            .collect();
        jobs.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        for job in jobs {
            let Ok(mut rec) = super::load(ws, &p, &job) else {
                continue;
            };
            match rec.state {
                JobState::Queued => {
                    queue.push(p.clone(), job)?;
                    done.requeued += 1;
                }
                JobState::Running => {
                    rec.state = JobState::Failed;
                    rec.reason = Some(INTERRUPTED_REASON.into());
                    rec.finished_at = Some(auditor.clock().now());
                    super::commit(
                        ws,
                        auditor,
                        EntryDraft::new("service", "job.recover")
                            .project(p.as_str())
                            .detail("job", job.as_str())
                            .detail("state", JobState::Failed.name())
                            .failed(INTERRUPTED_REASON),
                        &rec,
                    )?;
                    done.interrupted += 1;
                }
                _ => {}
            }
        }
    }
    Ok(done)
}

/// How a child ended, before the record is written.
struct Ending {
    state: JobState,
    reason: Option<String>,
    report: Option<ChildReport>,
    peak_rss_kib: Option<u64>,
    /// It ended while running over the data, in a way that depends on the data (see
    /// [`JobRecord::failed_while_running`]); every kill by a limit does.
    while_running: bool,
}

impl Ending {
    /// An ending without a report, for a reason.
    fn new(state: JobState, reason: String) -> Ending {
        Ending {
            while_running: state == JobState::Killed,
            state,
            reason: Some(reason),
            report: None,
            peak_rss_kib: None,
        }
    }

    /// [`Ending::new`] for an ending that depends on the data.
    fn while_running(state: JobState, reason: String) -> Ending {
        Ending {
            while_running: true,
            ..Ending::new(state, reason)
        }
    }
}

/// Run one queued job: audit its start and save it as running (durably) before its
/// process exists, so a crash from here on is recovered as interrupted, never re-run.
async fn run_one(r: &Runner, control: &Control, project: &Id, job: &Id) -> Result<(), JobError> {
    let mut rec = super::load(&r.ws, project, job)?;
    if rec.state != JobState::Queued || control.stopping() {
        return Ok(());
    }
    rec.state = JobState::Running;
    rec.started_at = Some(r.auditor.clock().now());
    rec.dataset_version = crate::tre::refresh::current_dataset_version(&r.ws, &rec.project);
    // One bound write: the entry, then the record it names. If the audit log cannot be
    // written (a full disk) nothing changes: the job stays queued, and runs from the
    // queue when the server next starts.
    let started = super::commit(
        &r.ws,
        &r.auditor,
        EntryDraft::new(rec.submitter.as_str(), "job.start")
            .project(rec.project.as_str())
            .detail("job", rec.job.as_str()),
        &rec,
    );
    if let Err(e) = started {
        eprintln!("tre serve: job {}: not started: {e}", rec.job);
        return Ok(());
    }
    let ending = supervise(r, control, &rec).await;
    finish(r, rec, ending)
}

/// Start the child in its own process group and watch it until it ends, its time is
/// up, or the server stops. The child's parent-death signal fires when the THREAD that
/// forked it exits: it is spawned from this async task, on one of the runtime's worker
/// threads, which live as long as the server (never from `spawn_blocking`).
async fn supervise(r: &Runner, control: &Control, rec: &JobRecord) -> Ending {
    let failed = |reason: String| Ending::new(JobState::Failed, reason);
    let mut child = match tokio::process::Command::new(&r.exe)
        .arg(CHILD_COMMAND)
        .arg("--workspace")
        .arg(r.ws.root())
        .args(["--project", rec.project.as_str(), "--job", rec.job.as_str()])
        .arg("--server-pid")
        .arg(std::process::id().to_string())
        .env_clear()
        .env("MALLOC_ARENA_MAX", "2")
        .envs(
            r.scheduler
                .iter()
                .map(|s| (crate::cluster::JOB_SCHEDULER_ENV, s)),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return failed(format!("cannot start the job's process: {e}")),
    };
    let pid = child.id();
    let pgid = pid.and_then(|p| i32::try_from(p).ok());
    if let Some(g) = pgid {
        control.running().insert(rec.job.to_string(), g);
    }
    let out = read_all(child.stdout.take());
    let err = read_all(child.stderr.take());
    let limit = Duration::from_secs(rec.limits.max_seconds);
    let started = Instant::now();
    let mut peak = None;
    let mut timed_out = false;
    let mut stopped = false;
    let status = loop {
        if let Some(p) =
            pid.and_then(|p| super::child::peak_rss_kib_of(&format!("/proc/{p}/status")))
        {
            peak = Some(peak.map_or(p, |q: u64| q.max(p)));
        }
        match tokio::time::timeout(Duration::from_millis(100), child.wait()).await {
            Ok(s) => break s,
            Err(_) if control.stopping() => {
                stopped = true;
                if let Some(g) = pgid {
                    kill_group(g);
                }
                let _ = child.start_kill();
            }
            Err(_) if started.elapsed() >= limit => {
                timed_out = true;
                if let Some(g) = pgid {
                    kill_group(g);
                }
                let _ = child.start_kill();
            }
            Err(_) => {}
        }
    };
    control.running().remove(rec.job.as_str());
    // Killed or crashed on a cluster: its Ballista jobs must not run on (issue 24).
    if let Some(s) = r.scheduler.as_deref()
        && (timed_out || stopped || !matches!(&status, Ok(st) if st.success()))
    {
        let dir = crate::tre::query::job_dir(&r.ws, &rec.project, &rec.job);
        if let Err(e) = crate::cluster::cancel_recorded_jobs(s, &dir).await {
            eprintln!("tre serve: job {}: {e}", rec.job);
        }
    }
    let stdout = out.await.unwrap_or_default();
    let stderr = err.await.unwrap_or_default();
    let mut ending = if stopped || (control.stopping() && !matches!(&status, Ok(s) if s.success()))
    {
        Ending::new(JobState::Failed, STOPPED_REASON.into())
    } else {
        classify(status, timed_out, &stdout, &stderr, &rec.limits)
    };
    ending.peak_rss_kib = match (peak, ending.peak_rss_kib) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
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

/// How the job ended, from its exit status and what it printed.
fn classify(
    status: std::io::Result<std::process::ExitStatus>,
    timed_out: bool,
    stdout: &[u8],
    stderr: &[u8],
    limits: &QueryLimits,
) -> Ending {
    if timed_out {
        let s = limits.max_seconds;
        return Ending::new(
            JobState::Killed,
            format!("over the project's time limit of {s} s"),
        );
    }
    match status {
        Err(e) => Ending::new(JobState::Failed, format!("lost the job's process: {e}")),
        Ok(s) if s.success() => from_report(stdout, limits),
        Ok(s) => from_failure(s, stderr, limits),
    }
}

/// A child that exited 0: its one-line JSON report on stdout says how the job ended,
/// and its own peak memory.
fn from_report(stdout: &[u8], limits: &QueryLimits) -> Ending {
    let line = stdout
        .split(|&b| b == b'\n')
        .find(|l| !l.is_empty())
        .unwrap_or(&[]);
    let Ok(ChildLine {
        report,
        peak_rss_kib,
    }) = serde_json::from_slice::<ChildLine>(line)
    else {
        return Ending::new(
            JobState::Failed,
            "the job's process gave no report (this is a bug in tre)".into(),
        );
    };
    let mut ending = match report {
        ChildReport::Done { outcome } => Ending {
            state: JobState::Succeeded,
            reason: None,
            report: Some(ChildReport::Done { outcome }),
            peak_rss_kib: None,
            while_running: false,
        },
        ChildReport::OutOfMemory => over_memory(limits),
        ChildReport::Failed {
            reason,
            while_running: true,
        } => Ending::while_running(JobState::Failed, reason),
        ChildReport::Failed { reason, .. } => Ending::new(JobState::Failed, reason),
    };
    ending.peak_rss_kib = peak_rss_kib;
    ending
}

/// A child that did not exit 0: killed by its CPU or memory limit, or another failure.
fn from_failure(status: std::process::ExitStatus, stderr: &[u8], limits: &QueryLimits) -> Ending {
    use std::os::unix::process::ExitStatusExt;
    // The allocator's message when the address-space limit refuses memory.
    let oom = String::from_utf8_lossy(stderr).contains("memory allocation");
    match status.signal() {
        // SIGXCPU: RLIMIT_CPU reached.
        Some(24) => Ending::new(
            JobState::Killed,
            format!(
                "over the project's CPU limit ({} s per thread)",
                limits.max_seconds
            ),
        ),
        _ if oom => over_memory(limits),
        // A crash of the engine on some value is as data-dependent as an error.
        Some(sig) => Ending::while_running(
            JobState::Failed,
            format!("the job's process was ended by signal {sig}"),
        ),
        None => Ending::while_running(
            JobState::Failed,
            format!(
                "the job's process failed (exit status {})",
                status.code().unwrap_or(-1)
            ),
        ),
    }
}

/// Killed by the memory limit.
fn over_memory(limits: &QueryLimits) -> Ending {
    Ending::new(
        JobState::Killed,
        format!(
            "over the project's memory limit of {} MiB",
            limits.memory_bytes >> 20
        ),
    )
}

/// Audit the ending, then make it visible in the job record.
fn finish(r: &Runner, mut rec: JobRecord, ending: Ending) -> Result<(), JobError> {
    let outcome = match ending.report {
        Some(ChildReport::Done { outcome }) => Some(*outcome),
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
        .detail("state", ending.state.name());
    if let Some(reason) = &ending.reason {
        draft = draft.detail("reason", reason.as_str());
    }
    if ending.while_running {
        // The one bit the analyst learns of a data-dependent failure, on the trail.
        draft = draft.detail("failed_while_running", true);
    }
    if let Some(p) = ending.peak_rss_kib {
        draft = draft.detail("peak_rss_kib", p);
    }
    if let Some(o) = &outcome {
        // The verdict's kind is audited: a data-dependent refusal (unknown patients) is
        // the one bit the analyst learns, and every such bit is on the trail.
        draft = draft
            .detail("rows", o.rows)
            .detail("releasable", o.releasable)
            .detail("verdict", o.verdict.kind());
    }
    if let Some(o) = outcome.as_ref().filter(|o| !o.result.path.is_empty()) {
        draft = draft.output(HashRef::new(
            format!(
                "projects/{}/results/{}/{}",
                rec.project, rec.job, o.result.path
            ),
            o.result.sha256.clone(),
        ));
    }
    rec.finished_at = Some(r.auditor.clock().now());
    rec.peak_rss_kib = ending.peak_rss_kib;
    rec.state = ending.state;
    rec.reason = ending.reason;
    rec.outcome = outcome;
    rec.failed_while_running = ending.while_running;
    // One bound write. If the audit log cannot be written, the record stays running and
    // its result is never served; the next start marks it interrupted (`job.recover`).
    if let Err(e) = super::commit(&r.ws, &r.auditor, draft, &rec) {
        eprintln!(
            "tre serve: job {}: the audit log could not be written; the result is withheld: {e}",
            rec.job
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    use super::*;

    fn limits() -> QueryLimits {
        QueryLimits {
            max_rows: 10,
            max_seconds: 3,
            memory_bytes: 600 << 20,
            threads: 1,
        }
    }

    /// The wait status of a process ended by `sig`, or of one that exited with `code`.
    fn signalled(sig: i32) -> std::io::Result<ExitStatus> {
        Ok(ExitStatus::from_raw(sig))
    }
    fn exited(code: i32) -> std::io::Result<ExitStatus> {
        Ok(ExitStatus::from_raw(code << 8))
    }

    fn ended(
        status: std::io::Result<ExitStatus>,
        timed_out: bool,
        out: &str,
        err: &str,
    ) -> (JobState, String) {
        let e = classify(status, timed_out, out.as_bytes(), err.as_bytes(), &limits());
        (e.state, e.reason.unwrap_or_default())
    }

    #[test]
    fn the_childs_own_peak_memory_comes_with_its_report() {
        let line = "{\"status\":\"failed\",\"reason\":\"no such table\",\"peak_rss_kib\":51200}\n";
        let e = classify(exited(0), false, line.as_bytes(), b"", &limits());
        assert_eq!(e.state, JobState::Failed);
        assert_eq!(e.peak_rss_kib, Some(51200));
        // An older child without the figure still reports.
        let e = classify(
            exited(0),
            false,
            b"{\"status\":\"out_of_memory\"}",
            b"",
            &limits(),
        );
        assert_eq!(e.state, JobState::Killed);
        assert_eq!(e.peak_rss_kib, None);
    }

    #[test]
    fn the_time_limit_wins_over_any_status() {
        let (state, reason) = ended(signalled(9), true, "", "memory allocation failed");
        assert_eq!(state, JobState::Killed);
        assert_eq!(reason, "over the project's time limit of 3 s");
    }

    #[test]
    fn a_lost_process_fails() {
        let (state, reason) = ended(Err(std::io::Error::other("gone")), false, "", "");
        assert_eq!(state, JobState::Failed);
        assert!(reason.starts_with("lost the job's process"), "{reason}");
    }

    #[test]
    fn the_childs_report_decides_after_a_clean_exit() {
        let (state, reason) = ended(exited(0), false, "\n{\"status\":\"out_of_memory\"}\n", "");
        assert_eq!(state, JobState::Killed);
        assert_eq!(reason, "over the project's memory limit of 600 MiB");
        let failed = "{\"status\":\"failed\",\"reason\":\"no such table\"}";
        assert_eq!(
            ended(exited(0), false, failed, ""),
            (JobState::Failed, "no such table".into())
        );
        let (state, reason) = ended(exited(0), false, "not json", "");
        assert_eq!(state, JobState::Failed);
        assert!(reason.contains("this is a bug in tre"), "{reason}");
    }

    #[test]
    fn cpu_limit_then_memory_then_other_endings() {
        let (state, reason) = ended(signalled(24), false, "", "memory allocation failed");
        assert_eq!(state, JobState::Killed);
        assert_eq!(reason, "over the project's CPU limit (3 s per thread)");
        for status in [signalled(6), signalled(11), exited(101)] {
            let (state, reason) = ended(status, false, "", "memory allocation of 8 bytes failed");
            assert_eq!(state, JobState::Killed);
            assert!(reason.contains("memory limit"), "{reason}");
        }
        assert_eq!(
            ended(signalled(11), false, "", ""),
            (
                JobState::Failed,
                "the job's process was ended by signal 11".into()
            )
        );
        assert_eq!(
            ended(exited(3), false, "", ""),
            (
                JobState::Failed,
                "the job's process failed (exit status 3)".into()
            )
        );
    }
}
