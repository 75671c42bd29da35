//! The job's child process: `tre internal-run-job`, started by the server's workers.
//!
//! Owns what happens inside the job's process: rlimits first (address space, CPU
//! seconds, no core file), then the query over the project's installed datasets, then
//! one JSON line on stdout ([`ChildReport`]) for the parent. The parent alone writes the
//! job record and the audit entry. Danger: this process runs analyst SQL; it must set its
//! limits before it opens a single dataset, and it never prints rows.

use serde::{Deserialize, Serialize};

use crate::error::{Classify, ErrorKind};
use crate::schema::SchemaSet;
use crate::tre::id::Id;
use crate::tre::query::{QueryLimits, QueryOutcome, job_dir, run_query};
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
    },
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
    let failed = |_kind: ErrorKind, reason: String| ChildReport::Failed { reason };
    let ws = match Workspace::open(workspace) {
        Ok(w) => w,
        Err(e) => return failed(e.kind(), e.to_string()),
    };
    let rec = match crate::jobs::load(&ws, project, job) {
        Ok(r) => r,
        Err(e) => return failed(e.kind(), e.to_string()),
    };
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
    match run_query(&ws, &policy, &rec.sql, &dir, &rec.limits) {
        Ok(outcome) => ChildReport::Done {
            outcome: Box::new(outcome),
        },
        Err(crate::tre::query::QueryError::Run {
            failure: crate::tre::query::SqlFailure::ResourcesExhausted,
        }) => ChildReport::OutOfMemory,
        Err(e) => failed(e.kind(), e.to_string()),
    }
}
