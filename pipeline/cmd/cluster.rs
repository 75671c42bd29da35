//! `tre cluster scheduler|executor`: the processes of a DataFusion Ballista cluster with
//! the `tre_*` functions compiled in (built with `--features cluster`).
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::anyhow;

use super::{CmdError, CmdResult, Ctx};

/// Run a Ballista scheduler or executor for `tre extract --scheduler` and `tre serve
/// --scheduler` (docs/scale-out.md).
///
/// Only executors started with --trusted and a project's --key-file compute that project's
/// pseudonyms; the scheduler sends them the stages that do. Keep every port on a trusted
/// network: Ballista's ports are not authenticated.
///
/// Examples:
///   tre cluster scheduler --listen 127.0.0.1:50050
///   tre cluster executor --scheduler 127.0.0.1:50050 --port 50051 --grpc-port 50052
///   tre cluster executor --scheduler 127.0.0.1:50050 --port 50061 --grpc-port 50062 \
///       --trusted --key-file project.key
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    role: Role,
}

#[derive(Debug, clap::Subcommand)]
enum Role {
    /// A scheduler: plans jobs into stages and places their tasks.
    Scheduler(SchedulerArgs),
    /// An executor: runs tasks; with --trusted, pseudonymises for the keys it is given.
    Executor(ExecutorArgs),
}

#[derive(Debug, clap::Args)]
struct SchedulerArgs {
    /// Address to listen on (gRPC for clients and executors).
    #[arg(long, default_value = "127.0.0.1:50050")]
    listen: SocketAddr,
}

#[derive(Debug, clap::Args)]
struct ExecutorArgs {
    /// The scheduler, HOST:PORT.
    #[arg(long)]
    scheduler: String,
    /// Address to bind and advertise.
    #[arg(long, default_value = "127.0.0.1")]
    bind: std::net::IpAddr,
    /// Arrow Flight port (shuffles, results).
    #[arg(long, default_value_t = 50051)]
    port: u16,
    /// gRPC port.
    #[arg(long, default_value_t = 50052)]
    grpc_port: u16,
    /// Concurrent tasks (default: the cores of this machine).
    #[arg(long)]
    concurrent_tasks: Option<usize>,
    /// Directory for shuffle files (default: a temporary directory).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Memory, in bytes, all this executor's tasks share (default: 70% of the machine's).
    /// A TRE job's tasks are also held to the job's own memory limit.
    #[arg(long)]
    memory_pool_size: Option<u64>,
    /// Hold project keys and compute their pseudonyms (requires --key-file).
    #[arg(long, requires = "key_file")]
    trusted: bool,
    /// A project key file (mode 0600, `tre keygen`); repeat for several projects.
    /// Only with --trusted. The key is read here and never sent anywhere.
    #[arg(long, requires = "trusted")]
    key_file: Vec<PathBuf>,
}

/// Run.
pub fn run(args: Args, _ctx: &Ctx) -> CmdResult {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CmdError::Failed(anyhow!("cannot start the runtime: {e}")))?;
    let classify = CmdError::classified::<tre_pipeline::cluster::ClusterError>;
    match args.role {
        Role::Scheduler(a) => {
            eprintln!("tre cluster scheduler: listening on {}", a.listen);
            runtime
                .block_on(tre_pipeline::cluster::process::run_scheduler(a.listen))
                .map_err(classify)?;
        }
        Role::Executor(a) => {
            let scheduler =
                tre_pipeline::cluster::remote::check_scheduler(&a.scheduler).map_err(classify)?;
            let ring = if a.trusted {
                let mut ring = tre_pipeline::cluster::keyed::KeyRing::default();
                for path in &a.key_file {
                    let key = tre_pipeline::key_file::load_project_key(path)
                        .map_err(CmdError::classified)?;
                    ring.insert(&key);
                }
                Some(ring)
            } else {
                None
            };
            let opts = tre_pipeline::cluster::process::ExecutorOptions {
                scheduler,
                bind: a.bind,
                port: a.port,
                grpc_port: a.grpc_port,
                vcores: a
                    .concurrent_tasks
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
                work_dir: a.work_dir,
                ring,
                memory_pool_size: a.memory_pool_size,
            };
            runtime
                .block_on(tre_pipeline::cluster::process::run_executor(opts))
                .map_err(classify)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
