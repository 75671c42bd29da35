//! `tre internal-run-job`: the body of a job's child process (hidden; started by
//! `tre serve`'s workers, never by people).
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::anyhow;
use tre_pipeline::jobs::child;
use tre_pipeline::tre::id::Id;

use super::{CmdError, CmdResult};

/// Run one queued job under its limits and report on stdout.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The workspace.
    #[arg(long)]
    pub workspace: PathBuf,
    /// The project id.
    #[arg(long)]
    pub project: String,
    /// The job id.
    #[arg(long)]
    pub job: String,
    /// The pid of the server that started this process: the job runs only while it lives.
    #[arg(long)]
    pub server_pid: u32,
}

/// Run.
pub fn run(args: Args) -> CmdResult {
    // First: die with the server, and not run at all if it is already gone.
    child::die_with_server(args.server_pid).map_err(|e| CmdError::Failed(e.into()))?;
    let project = Id::parse("project", &args.project).map_err(CmdError::classified)?;
    let job = Id::parse("job", &args.job).map_err(CmdError::classified)?;
    let report = child::run(&args.workspace, &project, &job);
    let line = child::ChildLine {
        report,
        peak_rss_kib: child::own_peak_rss_kib(),
    };
    let line = serde_json::to_string(&line)
        .map_err(|e| CmdError::Failed(anyhow!("cannot encode the job report: {e}")))?;
    println!("{line}");
    Ok(ExitCode::SUCCESS)
}
