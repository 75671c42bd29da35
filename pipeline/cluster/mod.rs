//! Scale-out on Apache DataFusion Ballista 55: the scheduler and executor processes with
//! the `tre_*` functions compiled in, the extract's pseudonym stage and analysts' jobs
//! sent to a cluster (docs/scale-out.md).
//!
//! Owns the cluster's roles and what each may hold: [`keyed`] (always built: the keyed
//! pseudonym function and the executor's key ring), and with the `cluster` cargo feature
//! the processes, the trusted placement, the client and a job's memory limit on the
//! executors (`memory`). Also the seams the TRE's jobs use: [`job_context`], which without
//! the feature builds the embedded engine and refuses a scheduler, and
//! [`cancel_recorded_jobs`] for the job runner. Danger: a key, or
//! the HMAC state derived from it, only ever lives in a trusted executor's own process,
//! loaded from its own key file; a plan, a config option, a shuffle or a log carries the
//! key's fingerprint at most.

pub mod keyed;
#[cfg(feature = "cluster")]
pub mod memory;
#[cfg(feature = "cluster")]
pub mod placement;
#[cfg(feature = "cluster")]
pub mod process;
#[cfg(feature = "cluster")]
pub mod remote;

use std::sync::Arc;

use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::prelude::{SessionConfig, SessionContext};

/// Executors started `--trusted` register under ids starting with this; the scheduler
/// sends pseudonymising stages only to them.
pub const TRUSTED_PREFIX: &str = "trusted-";

/// Why a cluster role could not start or answer. Never holds a number or key material.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// `HOST:PORT` does not resolve.
    #[error("{address:?} is not a HOST:PORT address of a Ballista scheduler")]
    BadAddress {
        /// What was given.
        address: String,
    },
    /// Nothing answers at the scheduler's address.
    #[error(
        "the Ballista scheduler at {address} does not answer ({message}); start it with `tre cluster scheduler --listen {address}` or run without --scheduler"
    )]
    SchedulerDown {
        /// The scheduler's address.
        address: String,
        /// The connection error.
        message: String,
    },
    /// A process could not start (a port in use, a scheduler that went away).
    #[error("the {role} could not run: {message}")]
    Start {
        /// `scheduler`, `executor` or `client`.
        role: &'static str,
        /// Ballista's error.
        message: String,
    },
    /// A local file or runtime could not be set up.
    #[error("cannot {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `--scheduler` in a build without the `cluster` feature.
    #[error(
        "this tre was built without the `cluster` feature, so it cannot use a Ballista scheduler; rebuild with `cargo build --features cluster` or run without --scheduler"
    )]
    NotBuilt,
}

impl crate::error::Classify for ClusterError {
    fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Failed
    }
}

/// The environment variable that carries `tre serve --scheduler` to a job's child
/// process (set only by the job runner, which clears the child's environment otherwise).
pub const JOB_SCHEDULER_ENV: &str = "TRE_JOB_SCHEDULER";

/// The file in a job's folder where the job's process lists, one a line, the Ballista jobs
/// its queries submitted (ids, nothing else), so the server can cancel them.
pub const CLUSTER_JOBS_FILE: &str = "cluster-jobs.txt";

/// The job folder of this process, when it is a TRE job's process ([`record_cluster_jobs_in`]).
static JOB_FOLDER: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Called by a job's process before its query: the Ballista jobs its queries submit are
/// listed in `dir`/[`CLUSTER_JOBS_FILE`] (only when it runs on a cluster).
pub fn record_cluster_jobs_in(dir: &std::path::Path) {
    let _ = JOB_FOLDER.set(dir.to_path_buf());
}

/// The session a TRE job plans and runs its SQL in: embedded (this process, `runtime`'s
/// memory pool) unless the job's process was started with [`JOB_SCHEDULER_ENV`], then on
/// the Ballista cluster at that `HOST:PORT`. On the cluster, `runtime`'s memory limit
/// travels with the job's session (`tre.job_memory_bytes`): each executor holds the job's
/// tasks there to it ([`memory`]); and each Ballista job the session submits is listed in
/// the job's folder ([`record_cluster_jobs_in`]) for [`cancel_recorded_jobs`]. The row
/// limit, the time limit and every result check stay where they are. No `tre_*` function
/// is registered in either: an analyst's SQL cannot name one.
pub async fn job_context(
    config: SessionConfig,
    runtime: Arc<RuntimeEnv>,
) -> Result<SessionContext, ClusterError> {
    let scheduler = std::env::var(JOB_SCHEDULER_ENV)
        .ok()
        .filter(|s| !s.is_empty());
    match scheduler.as_deref() {
        None => Ok(SessionContext::new_with_config_rt(config, runtime)),
        #[cfg(feature = "cluster")]
        Some(s) => {
            let config = match runtime.memory_pool.memory_limit() {
                datafusion::execution::memory_pool::MemoryLimit::Finite(n) => {
                    memory::with_job_memory(config, u64::try_from(n).unwrap_or(u64::MAX))
                }
                _ => config,
            };
            let config = remote::client_pull(config)?;
            let ctx = remote::remote_context(s, config, runtime).await?;
            Ok(match JOB_FOLDER.get() {
                Some(dir) => remote::recording_job_ids(ctx, dir.join(CLUSTER_JOBS_FILE)),
                None => ctx,
            })
        }
        #[cfg(not(feature = "cluster"))]
        Some(_) => Err(ClusterError::NotBuilt),
    }
}

/// After the server ended a job's process early (its time limit, a stop, a crash): ask
/// the scheduler at `scheduler` to cancel every Ballista job the process listed in its
/// folder `dir`, so none keeps running for a job that is over. Returns how many were
/// listed. Without the `cluster` feature there is nothing to cancel.
pub async fn cancel_recorded_jobs(
    scheduler: &str,
    dir: &std::path::Path,
) -> Result<usize, ClusterError> {
    #[cfg(feature = "cluster")]
    {
        let ids = remote::recorded_job_ids(&dir.join(CLUSTER_JOBS_FILE))?;
        // Bounded: the job's ending waits for this.
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            remote::cancel_jobs(scheduler, &ids),
        )
        .await
        .map_err(|_| ClusterError::SchedulerDown {
            address: scheduler.to_string(),
            message: "no answer to the cancellation within 10 s".into(),
        })??;
        Ok(ids.len())
    }
    #[cfg(not(feature = "cluster"))]
    {
        let _ = (scheduler, dir);
        Ok(0)
    }
}
