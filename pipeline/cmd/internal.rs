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
}

/// Run.
pub fn run(args: Args) -> CmdResult {
    let project = Id::parse("project", &args.project).map_err(CmdError::classified)?;
    let job = Id::parse("job", &args.job).map_err(CmdError::classified)?;
    let report = child::run(&args.workspace, &project, &job);
    let line = serde_json::to_string(&report)
        .map_err(|e| CmdError::Failed(anyhow!("cannot encode the job report: {e}")))?;
    println!("{line}");
    Ok(ExitCode::SUCCESS)
}
