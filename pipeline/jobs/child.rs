//! The job's child process: `tre internal-run-job`, started by the server's workers.
//!
//! Owns what happens inside the job's process: first [`die_with_server`] (the kernel
//! kills this process with SIGKILL when the server dies, and it exits at once if the
//! server is already gone), then rlimits (address space, CPU seconds, no core file),
//! then the query over the project's installed datasets, then one JSON line on stdout
//! ([`ChildLine`]: the report and this process's own peak memory) for the parent. The
//! parent alone writes the job record and the audit entry. Danger: this process runs
//! analyst SQL; it must set its limits before it opens a single dataset, it never prints
//! rows, and it must never outlive the server that started it (a restarted server would
//! not know it runs).

use serde::{Deserialize, Serialize};

use crate::error::{Classify, ErrorKind};
use crate::schema::SchemaSet;
use crate::tre::id::Id;
use crate::tre::query::{
    QueryLimits, QueryOutcome, apply_guard, job_dir, received_guard, run_query,
};
use crate::tre::workspace::Workspace;

/// What the child tells its parent on stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ChildReport {
    /// The query ran and its result was checked.
    Done {
        /// The outcome.
        outcome: Box<QueryOutcome>,
    },
    /// DataFusion's memory pool ran out: the job is over its memory limit.
    OutOfMemory,
    /// Refused by a rule or failed; the reason is already safe to show.
    Failed {
        /// Why (no data values).
        reason: String,
        /// It failed while running over the data (not while planning or checking the
        /// SQL): the analyst learns only that it did not complete.
        #[serde(default)]
        while_running: bool,
    },
}

/// The one line the child prints: its report and its own peak resident memory.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChildLine {
    /// How the job ended.
    #[serde(flatten)]
    pub report: ChildReport,
    /// This process's peak resident memory (VmHWM) in KiB, read just before printing:
    /// exact whatever the job's length, where the parent's sampling misses short jobs.
    #[serde(default)]
    pub peak_rss_kib: Option<u64>,
}

/// Why the child will not run.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    /// The parent-death signal could not be set.
    #[error("cannot ask the kernel to end this job with the server: {0}")]
    DeathSignal(std::io::Error),
    /// The server that started the job is gone (or this was not started by it).
    #[error(
        "the server that started this job (pid {server}) is gone; the job is not run (tre internal-run-job is started by tre serve only)"
    )]
    ServerGone {
        /// The server's pid, as passed.
        server: u32,
    },
}

/// Ask the kernel to SIGKILL this process when its parent (the server) dies, then
/// check that the parent is still `server`: if the server died between `fork` and this
/// call, the signal will never come, and this process is already re-parented.
pub fn die_with_server(server: u32) -> Result<(), ChildError> {
    use rustix::process::{Signal, getppid, set_parent_process_death_signal};
    set_parent_process_death_signal(Some(Signal::KILL))
        .map_err(|e| ChildError::DeathSignal(e.into()))?;
    let parent = getppid().map_or(0, |p| p.as_raw_pid());
    if u32::try_from(parent).ok() != Some(server) {
        return Err(ChildError::ServerGone { server });
    }
    Ok(())
}

/// This process's peak resident memory (VmHWM), in KiB.
pub fn own_peak_rss_kib() -> Option<u64> {
    peak_rss_kib_of("/proc/self/status")
}

/// VmHWM from a `/proc/PID/status` file, in KiB.
pub fn peak_rss_kib_of(status: &str) -> Option<u64> {
    let text = std::fs::read_to_string(status).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Apply the job's limits to this process: address space, CPU seconds (wall seconds ×
/// threads, plus one: the parent's wall clock is the real bound), no core file.
pub fn apply_limits(limits: &QueryLimits) -> std::io::Result<()> {
    use rustix::process::{Resource, Rlimit, setrlimit};
    let set = |r, v: u64| {
        setrlimit(
            r,
            Rlimit {
                current: Some(v),
                maximum: Some(v),
            },
        )
    };
    set(Resource::Core, 0)?;
    set(Resource::As, limits.memory_bytes)?;
    let cpu = limits
        .max_seconds
        .saturating_mul(limits.threads.max(1) as u64)
        .saturating_add(1);
    set(Resource::Cpu, cpu)?;
    Ok(())
}

/// The child's body: limits, then the query. Never panics on input; every failure
/// becomes a [`ChildReport::Failed`].
pub fn run(workspace: &std::path::Path, project: &Id, job: &Id) -> ChildReport {
    let failed = |_kind: ErrorKind, reason: String| ChildReport::Failed {
        reason,
        while_running: false,
    };
    let ws = match Workspace::open(workspace) {
        Ok(w) => w,
        Err(e) => return failed(e.kind(), e.to_string()),
    };
    let rec = match crate::jobs::load(&ws, project, job) {
        Ok(r) => r,
        Err(e) => return failed(e.kind(), e.to_string()),
    };
    if rec.state != crate::jobs::JobState::Running {
        return failed(
            ErrorKind::Bug,
            format!(
                "the job is {}, not running: only the server starts a job (this is a bug in tre)",
                rec.state.name()
            ),
        );
    }
    if let Err(e) = apply_limits(&rec.limits) {
        return failed(
            ErrorKind::Failed,
            format!("cannot set the job's limits: {e}"),
        );
    }
    let policy = match ws.project(project, &SchemaSet::builtin()) {
        Ok(p) => p,
        Err(e) => return failed(e.kind(), e.to_string()),
    };
    let dir = job_dir(&ws, project, job);
    // On a cluster, the Ballista jobs of this job are listed in its folder, so the server
    // can cancel them if it kills this process.
    crate::cluster::record_cluster_jobs_in(&dir);
    match run_query(&ws, &policy, &rec.sql, &dir, &rec.limits).and_then(|mut outcome| {
        // The differencing guard sees every table with a safe version before the job's
        // record makes it readable.
        if outcome.verdict.has_safe_table() {
            let guard = received_guard(&ws, project, &rec.submitter, &dir)?;
            apply_guard(&mut outcome, guard, &dir)?;
        }
        Ok(outcome)
    }) {
        Ok(outcome) => ChildReport::Done {
            outcome: Box::new(outcome),
        },
        Err(crate::tre::query::QueryError::Run {
            failure: crate::tre::query::SqlFailure::ResourcesExhausted,
        }) => ChildReport::OutOfMemory,
        Err(e) => ChildReport::Failed {
            while_running: matches!(
                e,
                crate::tre::query::QueryError::Run { .. }
                    | crate::tre::query::QueryError::RowLimit { .. }
            ),
            reason: e.to_string(),
        },
    }
}
