//! `tre release`: request and review releases (HTTP API only).
use std::process::ExitCode;

use super::job::Connection;
use super::{CmdError, CmdResult, Ctx};

/// Ask for a job's safe table to leave the TRE (analysts) and review such requests
/// (output checkers). Two different checkers of the project, never the requester, must
/// approve; the second approval exports the safe table and a release manifest into the
/// project's outbox.
///
/// Examples:
///   tre release request --project demo --job job-0123 --justification "Table 2 of the paper" --context "counts by age band and sex"
///   tre release review --project demo rel-abcd --approve --comment "small counts suppressed"
///   tre release status --project demo rel-abcd
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Request the release of a job's safe table; prints the release id.
    Request {
        #[command(flatten)]
        conn: Connection,
        /// The project.
        #[arg(long)]
        project: String,
        /// The job.
        #[arg(long)]
        job: String,
        /// Why it should leave.
        #[arg(long)]
        justification: String,
        /// What the table is and how it was made.
        #[arg(long)]
        context: String,
    },
    /// Approve or reject a request (output checkers).
    Review {
        #[command(flatten)]
        conn: Connection,
        /// The project.
        #[arg(long)]
        project: String,
        /// The release id.
        release: String,
        /// Approve.
        #[arg(long, conflicts_with = "reject", required_unless_present = "reject")]
        approve: bool,
        /// Reject.
        #[arg(long)]
        reject: bool,
        /// Why (required).
        #[arg(long)]
        comment: String,
    },
    /// A request's state, approvals and exported files (JSON).
    Status {
        #[command(flatten)]
        conn: Connection,
        /// The project.
        #[arg(long)]
        project: String,
        /// The release id.
        release: String,
    },
}

/// Run.
pub fn run(args: Args, _ctx: &Ctx) -> CmdResult {
    let v = match args.command {
        Command::Request { conn, project, job, justification, context } => {
            let v = conn
                .client()?
                .request(&project, &job, &justification, &context)
                .map_err(CmdError::classified)?;
            println!("{}", v["release"].as_str().unwrap_or_default());
            return Ok(ExitCode::SUCCESS);
        }
        Command::Review { conn, project, release, approve, comment, .. } => conn
            .client()?
            .review(&project, &release, approve, &comment)
            .map_err(CmdError::classified)?,
        Command::Status { conn, project, release } => conn
            .client()?
            .release(&project, &release)
            .map_err(CmdError::classified)?,
    };
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    Ok(ExitCode::SUCCESS)
}
