//! `tre serve`: the research environment.
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tre_pipeline::clock::SystemClock;
use tre_pipeline::server::{self, ServeOptions};

use super::{CmdError, CmdResult, Ctx};

/// Run the research environment: the HTTP API over the workspace, and the job workers.
/// Refuses to start when the workspace (or anything in it) is writable by group or
/// others, owned by another user, or holds a symlink. Listens on loopback only; put a
/// TLS reverse proxy in front for remote users. Stops on Ctrl-C or SIGTERM: open
/// requests get --shutdown-seconds to finish, running jobs are killed (a job's process
/// also dies if the server is killed), and the stop is audited and checkpointed.
///
/// Examples:
///   tre serve --workspace /srv/tre --listen 127.0.0.1:8080
///   tre serve --workspace /srv/tre --shutdown-seconds 30
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The workspace folder.
    #[arg(long)]
    pub workspace: PathBuf,
    /// Address to listen on (loopback; port 0 picks a free port, printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Job workers (each job runs in its own process).
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Write an audit checkpoint every this many entries.
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: u64,
    /// Also write one when an entry comes this many seconds after the last checkpoint
    /// (0: by count only), so an off-host copy (`tre audit follow`) is never far behind.
    #[arg(long, default_value_t = 60)]
    pub checkpoint_seconds: u64,
    /// The audit checkpoint signing key, kept outside the workspace (mode 0400 or 0600,
    /// owned by the service account): move WORKSPACE/keys/audit-checkpoint.key there
    /// after `tre admin init`. Default: the key inside the workspace (weaker: a process
    /// that can write the workspace can then sign a forged history).
    #[arg(long, value_name = "FILE")]
    pub checkpoint_key: Option<PathBuf>,
    /// An off-host copy of the checkpoints (`tre audit follow --to DIR`), checked at
    /// start: the server refuses a log that no longer holds a checkpointed entry.
    /// Repeatable.
    #[arg(long, value_name = "DIR")]
    pub anchors: Vec<PathBuf>,
    /// Mark the pages' session cookie `Secure`: set it when a TLS reverse proxy serves
    /// the pages (browsers then send the cookie over HTTPS only).
    #[arg(long)]
    pub secure_cookies: bool,
    /// The origin browsers use, e.g. `https://tre.example.org` (checked against the
    /// `Origin` of every form post); default: the request's host.
    #[arg(long)]
    pub public_origin: Option<String>,
    /// Page session lifetime in minutes, from sign-in.
    #[arg(long, default_value_t = 30)]
    pub session_minutes: i64,
    /// At Ctrl-C or SIGTERM, seconds open requests get to finish before their
    /// connections are dropped; running jobs are then killed and recorded as failed.
    #[arg(long, default_value_t = 10)]
    pub shutdown_seconds: u64,
    /// Seconds a client gets to send a request's whole header (also how long an idle
    /// keep-alive connection stays open).
    #[arg(long, default_value_t = 10)]
    pub header_read_seconds: u64,
    /// Seconds a client gets to send a request's whole body.
    #[arg(long, default_value_t = 30)]
    pub body_read_seconds: u64,
    /// Run analysts' jobs on the DataFusion Ballista cluster of this scheduler (HOST:PORT;
    /// `tre cluster`) instead of in the job's own process: same limits on rows and time,
    /// same checks of every result. Needs a build with the `cluster` feature.
    #[arg(long, value_name = "HOST:PORT")]
    pub scheduler: Option<String>,
}

/// Run.
pub fn run(args: Args, ctx: &Ctx) -> CmdResult {
    let exe = std::env::current_exe().context("cannot find the tre binary to run jobs")?;
    if let Some(s) = &args.scheduler {
        check_scheduler(s)?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the server runtime")?;
    let web_opts = tre_pipeline::web::WebOptions {
        secure_cookies: args.secure_cookies,
        session_minutes: args.session_minutes.max(1),
        public_origin: args.public_origin.clone(),
    };
    rt.block_on(async {
        let opts = ServeOptions {
            workspace: args.workspace.clone(),
            workers: args.workers,
            exe,
            scheduler: args.scheduler.clone(),
            audit: tre_pipeline::tre::auditor::AuditorOptions {
                every: args.checkpoint_every,
                every_seconds: (args.checkpoint_seconds > 0).then_some(args.checkpoint_seconds),
                key: args.checkpoint_key.clone(),
                anchor_dirs: args.anchors.clone(),
            },
        };
        // The stop signals are caught from here on: a SIGTERM that arrives once the
        // address is printed (or while the server starts) stops it cleanly, with its
        // audit entry and checkpoint, instead of killing it by the default action.
        let stop = shutdown_signal().context("cannot watch for SIGTERM and Ctrl-C")?;
        let app = server::start(&opts, Arc::new(SystemClock)).map_err(CmdError::classified)?;
        let listener = server::bind(&args.listen)
            .await
            .map_err(CmdError::classified)?;
        let addr = listener.local_addr().context("local address")?;
        println!("listening on http://{addr}");
        if !ctx.quiet {
            eprintln!("tre serve: workspace {}", args.workspace.display());
        }
        let http = server::http::HttpOptions {
            header_read: Duration::from_secs(args.header_read_seconds.max(1)),
            body_read: Duration::from_secs(args.body_read_seconds.max(1)),
            shutdown: Duration::from_secs(args.shutdown_seconds),
            ..server::http::HttpOptions::default()
        };
        server::serve_with(app.clone(), service(&app, web_opts), listener, http, stop)
            .await
            .map_err(CmdError::classified)?;
        Ok(ExitCode::SUCCESS)
    })
}

/// A future that completes at the first SIGTERM or SIGINT (Ctrl-C) after this call.
/// The handlers are installed here, not when the future is first polled: a signal sent
/// between the two would otherwise be lost, or kill the process by its default action.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    })
}

/// A scheduler that does not answer is refused at the start, not at the first job.
#[cfg(feature = "cluster")]
fn check_scheduler(s: &str) -> Result<(), CmdError> {
    tre_pipeline::cluster::remote::check_scheduler(s)
        .map(|_| ())
        .map_err(CmdError::classified)
}

/// Without the `cluster` feature, --scheduler is refused.
#[cfg(not(feature = "cluster"))]
fn check_scheduler(_s: &str) -> Result<(), CmdError> {
    Err(CmdError::classified(
        tre_pipeline::cluster::ClusterError::NotBuilt,
    ))
}

/// The whole service: the JSON API ([`server::app`], with its own security headers) and
/// the pages (with theirs), both adapters over the same actions' state. Built here, above
/// both, so neither depends on the other.
pub fn service(app: &Arc<server::App>, opts: tre_pipeline::web::WebOptions) -> axum::Router {
    server::app(app.clone()).merge(tre_pipeline::web::routes_with(app.tre.clone(), opts))
}
