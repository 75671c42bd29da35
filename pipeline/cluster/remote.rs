//! The client side of a cluster: a DataFusion session whose plans run on a Ballista
//! scheduler, and the extract's pseudonym stage sent there (only with the `cluster`
//! feature).
//!
//! Owns [`remote_context`] (checks the scheduler answers, then builds a Ballista session
//! with the keyless `tre_*` functions known to the planner) and [`ClusterPseudonyms`],
//! which sends one chunk's distinct, already filtered NHS numbers to the cluster as a
//! private Parquet file and gets their pseudonyms back from a trusted executor. Also owns
//! the Ballista job ids of a TRE job ([`recording_job_ids`], [`recorded_job_ids`]) and
//! asking the scheduler to cancel them or report their state ([`cancel_jobs`],
//! [`job_states`]). Danger: the plan names only the key's fingerprint; the numbers travel
//! in a file (never as plan literals, which the scheduler keeps and may log), written
//! owner-only and removed after the job; no error quotes a number.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arrow::array::{Array, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use ballista::prelude::{SessionConfigExt, SessionContextExt};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::registry::FunctionRegistry;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext, col, lit};

use super::ClusterError;
use super::keyed::PSEUDONYM_FUNCTION;
use crate::pseudonym::PseudonymService;

/// Resolve `HOST:PORT` and check something accepts connections there, so a scheduler
/// that is down is one clear error before any work starts.
pub fn check_scheduler(scheduler: &str) -> Result<SocketAddr, ClusterError> {
    let addr = scheduler
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| ClusterError::BadAddress {
            address: scheduler.to_string(),
        })?;
    TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| {
        ClusterError::SchedulerDown {
            address: scheduler.to_string(),
            message: e.to_string(),
        }
    })?;
    Ok(addr)
}

/// A session whose queries run on the Ballista scheduler at `scheduler` (`HOST:PORT`),
/// with `config`'s options and the local `runtime` for what stays on the client.
pub async fn remote_context(
    scheduler: &str,
    config: SessionConfig,
    runtime: Arc<RuntimeEnv>,
) -> Result<SessionContext, ClusterError> {
    let addr = check_scheduler(scheduler)?;
    let config = config.upgrade_for_ballista();
    let state = SessionStateBuilder::new()
        .with_default_features()
        .with_config(config)
        .with_runtime_env(runtime)
        .build();
    let ctx = SessionContext::remote_with_state(&format!("df://{addr}"), state)
        .await
        .map_err(|e| ClusterError::SchedulerDown {
            address: scheduler.to_string(),
            message: e.to_string(),
        })?;
    Ok(ctx)
}

/// `config` with Ballista's client in pull mode: it submits a job, gets its id back at
/// once, and asks for the job's status until it ends.
pub fn client_pull(config: SessionConfig) -> Result<SessionConfig, ClusterError> {
    let mut config = config.upgrade_for_ballista();
    config
        .options_mut()
        .set(ballista_core::config::BALLISTA_CLIENT_PULL, "true")
        .map_err(|e| ClusterError::Start {
            role: "client",
            message: e.to_string(),
        })?;
    Ok(config)
}

/// Ballista's client plan for one query (a whole query runs as one Ballista job).
type ClientPlan = ballista_core::execution_plans::DistributedQueryExec<
    datafusion_proto::protobuf::LogicalPlanNode,
>;

/// `ctx` with every Ballista job its queries submit listed, one id a line, in `file`
/// (appended, owner-only, never through a symlink), as soon as the scheduler accepts it:
/// the server reads the list to cancel them when it kills the job's process. `ctx` must
/// be in Ballista's pull mode ([`client_pull`]): in push mode the client learns a job's
/// id only with its first status update, which Ballista 55 sends when the job ends.
pub fn recording_job_ids(ctx: SessionContext, file: PathBuf) -> SessionContext {
    let state = ctx.state();
    let inner = Arc::clone(state.query_planner());
    let state = SessionStateBuilder::new_from_existing(state)
        .with_query_planner(Arc::new(RecordingPlanner { inner, file }))
        .build();
    SessionContext::new_with_state(state)
}

/// Ballista's planner, with a watcher on each client plan it makes that writes down the
/// plan's Ballista job id once the scheduler has given one.
#[derive(Debug)]
struct RecordingPlanner {
    inner: Arc<dyn QueryPlanner + Send + Sync>,
    file: PathBuf,
}

#[async_trait::async_trait]
impl QueryPlanner for RecordingPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session_state: &dyn datafusion::catalog::Session,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let plan = self
            .inner
            .create_physical_plan(logical_plan, session_state)
            .await?;
        if plan.downcast_ref::<ClientPlan>().is_some() {
            tokio::spawn(watch_job_id(Arc::clone(&plan), self.file.clone()));
        }
        Ok(plan)
    }
}

/// Wait for `plan`'s job id and append it to `file`. DataFusion drops the plan as soon
/// as it has its result stream, and the job is submitted on the stream's first poll, so
/// a dropped plan still gets its id a moment later; one that never got one within
/// [`SUBMIT_GRACE`] of being dropped was never run.
async fn watch_job_id(plan: Arc<dyn ExecutionPlan>, file: PathBuf) {
    let mut dropped_at = None;
    loop {
        let Some(client) = plan.downcast_ref::<ClientPlan>() else {
            return;
        };
        if let Some(id) = client.job_id() {
            if let Err(e) = append_line(&file, id.as_ref()) {
                eprintln!(
                    "tre: cannot note the cluster job in {}: {e} (it cannot be cancelled if the job is killed)",
                    file.display()
                );
            }
            return;
        }
        if Arc::strong_count(&plan) == 1 {
            let since = *dropped_at.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() > SUBMIT_GRACE {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// How long a client plan that was dropped may still be getting its job id.
const SUBMIT_GRACE: Duration = Duration::from_secs(60);

fn append_line(file: &Path, line: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(file)?;
    f.write_all(format!("{line}\n").as_bytes())?;
    f.sync_data()
}

/// The Ballista job ids listed in `file` (missing file: none). Lines that are not a
/// plausible id are skipped.
pub fn recorded_job_ids(file: &Path) -> Result<Vec<String>, ClusterError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut text = String::new();
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(file)
    {
        Ok(mut f) => {
            f.read_to_string(&mut text).map_err(|e| ClusterError::Io {
                what: format!("read {}", file.display()),
                source: e,
            })?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(ClusterError::Io {
                what: format!("read {}", file.display()),
                source: e,
            });
        }
    }
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && l.len() <= 64
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(str::to_string)
        .collect())
}

/// A gRPC client of the scheduler at `scheduler` (a macro: tonic's types are not named
/// here, this crate does not depend on tonic itself).
macro_rules! scheduler_client {
    ($scheduler:expr) => {{
        // Resolved, not probed: a blocking connect test has no place on an async task.
        let addr = $scheduler
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| ClusterError::BadAddress {
                address: $scheduler.to_string(),
            })?;
        ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient::connect(
            format!("http://{addr}"),
        )
        .await
        .map_err(|e| ClusterError::SchedulerDown {
            address: $scheduler.to_string(),
            message: e.to_string(),
        })?
    }};
}

/// Ask the scheduler at `scheduler` to cancel the Ballista jobs `ids` (their running
/// tasks are stopped, their queued ones dropped). Cancelling a job that already ended
/// changes nothing.
pub async fn cancel_jobs(scheduler: &str, ids: &[String]) -> Result<(), ClusterError> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut client = scheduler_client!(scheduler);
    for id in ids {
        client
            .cancel_job(ballista_core::serde::protobuf::CancelJobParams { job_id: id.clone() })
            .await
            .map_err(|e| ClusterError::Start {
                role: "scheduler",
                message: format!("cancelling cluster job {id}: {}", e.message()),
            })?;
    }
    Ok(())
}

/// What the scheduler says of each of the Ballista jobs `ids`: `queued`, `running`,
/// `failed` (cancelled jobs are failed), `successful`, or `unknown`.
pub async fn job_states(
    scheduler: &str,
    ids: &[String],
) -> Result<Vec<(String, &'static str)>, ClusterError> {
    use ballista_core::serde::protobuf::job_status::Status;
    let mut client = scheduler_client!(scheduler);
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let got = client
            .get_job_status(ballista_core::serde::protobuf::GetJobStatusParams {
                job_id: id.clone(),
            })
            .await
            .map_err(|e| ClusterError::Start {
                role: "scheduler",
                message: format!("asking for cluster job {id}: {}", e.message()),
            })?
            .into_inner();
        let state = match got.status.and_then(|s| s.status) {
            Some(Status::Queued(_)) => "queued",
            Some(Status::Running(_)) => "running",
            Some(Status::Failed(_)) => "failed",
            Some(Status::Successful(_)) => "successful",
            None => "unknown",
        };
        out.push((id.clone(), state));
    }
    Ok(out)
}

/// How many times one chunk's job is submitted before the extract gives up.
const ATTEMPTS: usize = 3;

/// The extract's pseudonym stage on a cluster: chunk by chunk, the distinct numbers go to
/// a trusted executor holding the key of `fingerprint`.
pub struct ClusterPseudonyms {
    runtime: tokio::runtime::Runtime,
    ctx: SessionContext,
    fingerprint: String,
    scratch: PathBuf,
    next: AtomicU64,
    timeout: Duration,
}

impl std::fmt::Debug for ClusterPseudonyms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterPseudonyms(key {})", self.fingerprint)
    }
}

impl ClusterPseudonyms {
    /// Connect to `scheduler` for the project key of `fingerprint`; the number files go to
    /// `scratch`, a directory every executor reads at the same path (created owner-only).
    pub fn connect(
        scheduler: &str,
        fingerprint: &str,
        scratch: &Path,
        timeout: Duration,
    ) -> Result<Self, ClusterError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| ClusterError::Io {
                what: "start the client runtime".into(),
                source: e,
            })?;
        let config = SessionConfig::new()
            .with_target_partitions(1)
            .with_ballista_job_name("tre extract: pseudonyms");
        let ctx = runtime.block_on(remote_context(
            scheduler,
            config,
            Arc::new(RuntimeEnv::default()),
        ))?;
        for f in super::process::functions(Arc::new(super::keyed::KeyRing::default())) {
            ctx.register_udf(f);
        }
        create_private_dir(scratch).map_err(|e| ClusterError::Io {
            what: format!("create the scratch directory {}", scratch.display()),
            source: e,
        })?;
        Ok(ClusterPseudonyms {
            runtime,
            ctx,
            fingerprint: fingerprint.to_string(),
            scratch: scratch.to_path_buf(),
            next: AtomicU64::new(0),
            timeout,
        })
    }

    async fn run(&self, path: &Path, numbers: &[u64]) -> Result<Vec<[u8; 64]>, String> {
        let f = self
            .ctx
            .udf(PSEUDONYM_FUNCTION)
            .map_err(|e| format!("the pseudonym function is not known: {e}"))?;
        let df = self
            .ctx
            .read_parquet(
                path.to_string_lossy().as_ref(),
                ParquetReadOptions::default(),
            )
            .await
            .map_err(|e| format!("cannot plan the pseudonym stage: {e}"))?
            .select(vec![
                col("n"),
                f.call(vec![lit(self.fingerprint.as_str()), col("n")])
                    .alias("p"),
            ])
            .map_err(|e| format!("cannot plan the pseudonym stage: {e}"))?;
        let batches = df
            .collect()
            .await
            .map_err(|e| format!("the cluster job failed: {}", first_line(&e.to_string())))?;
        let mut by_number = std::collections::HashMap::with_capacity(numbers.len());
        for b in &batches {
            let (Some(n), Some(p)) = (
                b.column(0).as_any().downcast_ref::<UInt64Array>(),
                b.column(1).as_any().downcast_ref::<StringArray>(),
            ) else {
                return Err("the cluster returned columns of the wrong type".into());
            };
            for i in 0..b.num_rows() {
                let mut hex = [0u8; 64];
                if n.is_null(i) || p.is_null(i) || p.value(i).len() != 64 {
                    return Err("the cluster returned a row without a pseudonym".into());
                }
                hex.copy_from_slice(p.value(i).as_bytes());
                by_number.insert(n.value(i), hex);
            }
        }
        numbers
            .iter()
            .map(|v| {
                by_number
                    .get(v)
                    .copied()
                    .ok_or_else(|| "the cluster returned fewer pseudonyms than numbers sent".into())
            })
            .collect()
    }
}

/// A DataFusion/Ballista error's first line (the rest repeats plans and backtraces).
fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(600).collect()
}

impl PseudonymService for ClusterPseudonyms {
    fn hex(&self, numbers: &[u64]) -> Result<Vec<[u8; 64]>, String> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self
            .scratch
            .join(format!("numbers-{}-{id}.parquet", std::process::id()));
        write_numbers(&path, numbers)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        // A job that failed (an executor lost mid-job, a result fetch that broke) is
        // submitted again, up to ATTEMPTS times, within one deadline; a refusal by the
        // function itself (no executor holds the key) is final.
        let deadline = tokio::time::Instant::now() + self.timeout;
        let got = self.runtime.block_on(async {
            let mut last = String::new();
            for _ in 0..ATTEMPTS {
                match tokio::time::timeout_at(deadline, self.run(&path, numbers)).await {
                    Ok(Ok(hex)) => return Ok(hex),
                    Ok(Err(e)) if e.contains("holds no key") => return Err(e),
                    Ok(Err(e)) => last = e,
                    Err(_) => {
                        return Err(format!(
                            "no answer within {} s (is a trusted executor with this project's key, fingerprint {}, running?){}",
                            self.timeout.as_secs(),
                            self.fingerprint,
                            if last.is_empty() { String::new() } else { format!("; last failure: {last}") }
                        ));
                    }
                }
            }
            Err(format!("{last} (tried {ATTEMPTS} times)"))
        });
        let _ = std::fs::remove_file(&path);
        got
    }
}

impl Drop for ClusterPseudonyms {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.scratch);
    }
}

/// The numbers as a one-column Parquet file, owner-only.
fn write_numbers(path: &Path, numbers: &[u64]) -> Result<(), String> {
    let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::UInt64, false)]));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![Arc::new(UInt64Array::from(numbers.to_vec()))],
    )
    .map_err(|e| e.to_string())?;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| e.to_string())?;
    let mut w =
        parquet::arrow::ArrowWriter::try_new(file, schema, None).map_err(|e| e.to_string())?;
    w.write(&batch).map_err(|e| e.to_string())?;
    w.close().map_err(|e| e.to_string())?;
    Ok(())
}

/// `dir`, created owner-only if missing (an existing one is used as it is).
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_folder_lists_job_ids_and_nothing_else() {
        let dir = tempfile::tempdir().expect("temp");
        let file = dir.path().join(super::super::CLUSTER_JOBS_FILE);
        assert!(recorded_job_ids(&file).expect("no file").is_empty());
        append_line(&file, "038J19KPFP000").expect("append");
        append_line(&file, "abc_DEF-1").expect("append");
        std::fs::write(
            dir.path().join("other"),
            format!("038J19KPFP000\nabc_DEF-1\nnot an id\n{}\n", "x".repeat(65)),
        )
        .expect("write");
        assert_eq!(
            recorded_job_ids(&file).expect("read"),
            vec!["038J19KPFP000".to_string(), "abc_DEF-1".into()]
        );
        assert_eq!(
            recorded_job_ids(&dir.path().join("other")).expect("read"),
            vec!["038J19KPFP000".to_string(), "abc_DEF-1".into()]
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Never through a symlink, neither written nor read.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).expect("symlink");
        assert!(append_line(&link, "X").is_err());
        assert!(recorded_job_ids(&link).is_err());
    }
}
