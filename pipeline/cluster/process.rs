//! The cluster's long-running processes: a Ballista scheduler and Ballista executors with
//! the `tre_*` functions compiled in (only with the `cluster` feature).
//!
//! Owns what each role registers. Every role knows the names and signatures of
//! `tre_nhs_number` and [`PSEUDONYM_FUNCTION`] (the scheduler must, to decode the plans it
//! is sent); only an executor started trusted with a project's key file can evaluate the
//! pseudonym function for that project, from its own [`KeyRing`]. Danger: nothing here
//! puts a key, a key path's content or an HMAC state into a Ballista config option, a
//! codec, a plan or a log line; the key files are read once, here, and only the
//! fingerprints are logged.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::{SchedulerConfig, TaskDistributionPolicy};
use datafusion::execution::SessionState;
use datafusion::execution::registry::FunctionRegistry;
use datafusion::logical_expr::ScalarUDF;
use datafusion::prelude::SessionConfig;

use super::keyed::{KeyRing, keyed_pseudonym_udf};
use super::placement::TrustedPlacement;
use super::{ClusterError, TRUSTED_PREFIX};

/// The functions of a role: the keyless ones, and the pseudonym function over `ring`
/// (empty anywhere but on a trusted executor, where it fails closed).
pub fn functions(ring: Arc<KeyRing>) -> Vec<ScalarUDF> {
    vec![crate::udf::nhs_number_udf(), keyed_pseudonym_udf(ring)]
}

/// Register [`functions`] (with no key) on a session state: the scheduler's and a
/// client's.
pub fn register_keyless(state: &mut SessionState) -> datafusion::error::Result<()> {
    for f in functions(Arc::new(KeyRing::default())) {
        state.register_udf(Arc::new(f))?;
    }
    Ok(())
}

/// Run a scheduler on `listen` until the process ends.
pub async fn run_scheduler(listen: SocketAddr) -> Result<(), ClusterError> {
    let builder: ballista_scheduler::scheduler_server::SessionBuilder =
        Arc::new(|config: SessionConfig| {
            let mut state = ballista_core::utils::default_session_builder(config)?;
            register_keyless(&mut state)?;
            Ok(state)
        });
    let config = SchedulerConfig {
        bind_host: listen.ip().to_string(),
        bind_port: listen.port(),
        external_host: listen.ip().to_string(),
        override_session_builder: Some(builder),
        // Sessions start knowing the `tre.*` options, so a job's memory limit reaches
        // the tasks' configs (an unknown option is dropped here).
        override_config_producer: Some(Arc::new(super::memory::config_with_tre_options)),
        // Stages that pseudonymise go only to executors registered as trusted. Executors
        // pull their tasks from the scheduler (so every task plan crosses one port).
        task_distribution: TaskDistributionPolicy::Custom(Arc::new(TrustedPlacement)),
        scheduling_policy: TaskSchedulingPolicy::PullStaged,
        // An executor silent for 30 s is lost: its tasks are run again elsewhere.
        executor_timeout_seconds: 30,
        expire_dead_executor_interval_seconds: 5,
        ..Default::default()
    };
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(|e| ClusterError::Start {
            role: "scheduler",
            message: e.to_string(),
        })?;
    ballista_scheduler::scheduler_process::start_server(cluster, listen, Arc::new(config))
        .await
        .map_err(|e| ClusterError::Start {
            role: "scheduler",
            message: e.to_string(),
        })
}

/// How to start one executor.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The scheduler, `HOST:PORT`.
    pub scheduler: SocketAddr,
    /// Address to bind (Flight on `port`, gRPC on `grpc_port`).
    pub bind: std::net::IpAddr,
    /// Arrow Flight port (shuffles and results).
    pub port: u16,
    /// gRPC port.
    pub grpc_port: u16,
    /// Concurrent tasks.
    pub vcores: usize,
    /// Shuffle and spill directory.
    pub work_dir: Option<PathBuf>,
    /// The project keys (already loaded and checked), when started `--trusted`.
    pub ring: Option<KeyRing>,
    /// The executor's memory pool in bytes, shared by all its tasks (default: 70% of
    /// the machine's memory).
    pub memory_pool_size: Option<u64>,
}

/// Run one executor until the process ends.
pub async fn run_executor(opts: ExecutorOptions) -> Result<(), ClusterError> {
    let trusted = opts.ring.is_some();
    let ring = Arc::new(opts.ring.unwrap_or_default());
    let mut registry = BallistaFunctionRegistry::default();
    for f in functions(Arc::clone(&ring)) {
        registry
            .scalar_functions
            .insert(f.name().to_string(), Arc::new(f));
    }
    // The executor id says whether the executor holds keys: the scheduler's placement
    // reads it. A false claim gains nothing: without the key the function fails.
    let id_prefix = if trusted { TRUSTED_PREFIX } else { "" };
    // Memory: one executor-wide pool; a session that carries a TRE job's limit gets a
    // pool capped at it on top (`super::memory`). Ballista's own per-task pool is off
    // (`Some(0)`), so the runtime producer's pool is the one the tasks use.
    let budget = match opts.memory_pool_size {
        Some(b) if b > 0 => b,
        _ => super::memory::default_executor_budget()?,
    };
    let work_dir = opts.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let runtime_producer =
        super::memory::runtime_producer(super::memory::executor_pool(budget), work_dir);
    let config = ExecutorProcessConfig {
        executor_id: format!(
            "{id_prefix}{}",
            ExecutorProcessConfig::default().executor_id
        ),
        bind_host: opts.bind.to_string(),
        external_host: Some(opts.bind.to_string()),
        port: opts.port,
        grpc_port: opts.grpc_port,
        scheduler_host: opts.scheduler.ip().to_string(),
        scheduler_port: opts.scheduler.port(),
        vcores: opts.vcores.max(1),
        task_scheduling_policy: TaskSchedulingPolicy::PullStaged,
        work_dir: opts.work_dir.map(|p| p.to_string_lossy().into_owned()),
        executor_heartbeat_interval_seconds: 5,
        override_function_registry: Some(Arc::new(registry)),
        memory_pool_size: Some(0),
        override_runtime_producer: Some(runtime_producer),
        override_config_producer: Some(Arc::new(super::memory::config_with_tre_options)),
        ..Default::default()
    };
    eprintln!(
        "tre cluster executor {}: scheduler {}, {} (keys: {:?}), memory pool {budget} bytes",
        config.executor_id,
        opts.scheduler,
        if trusted { "trusted" } else { "untrusted" },
        ring.fingerprints()
    );
    start_executor_process(Arc::new(config))
        .await
        .map_err(|e| ClusterError::Start {
            role: "executor",
            message: e.to_string(),
        })
}
