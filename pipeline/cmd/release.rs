//! `tre release`: request and review releases (HTTP API only).
use std::process::ExitCode;

use super::job::Connection;
use super::{CmdError, CmdResult, Ctx};

/// Ask for a job's safe table to leave the TRE (analysts) and review such requests
/// (output checkers). Two different checkers of the project, never the requester, must
/// approve; the second approval exports the safe table and a release manifest into the
/// project's outbox. One rejection, or one return for changes, closes the request's
/// version; its requester may then resubmit it as a new version pointing at a new job,
/// which needs two approvals of its own, its checkers seeing every earlier decision.
///
/// Examples:
///   tre release request --project demo --job job-0123 --justification "Table 2 of the paper" --context "counts by age band and sex"
///   tre release review --project demo rel-abcd --approve --comment "small counts suppressed"
///   tre release review --project demo rel-abcd --return --comment "combine the I and U rows"
///   tre release resubmit --project demo rel-abcd --job job-0456 --justification "I and U combined" --context "counts by age band and sex"
///   tre release status --project demo rel-abcd
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

/// What a request (or a new version of one) asks to release.
#[derive(Debug, clap::Args)]
struct Submission {
    /// The job whose safe table is to leave.
    #[arg(long)]
    job: String,
    /// Why it should leave.
    #[arg(long)]
    justification: String,
    /// What the table is and how it was made.
    #[arg(long)]
    context: String,
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
        #[command(flatten)]
        what: Submission,
    },
    /// Approve, reject or return a request for changes (output checkers).
    #[command(group(clap::ArgGroup::new("decision").required(true).multiple(false)))]
    Review {
        #[command(flatten)]
        conn: Connection,
        /// The project.
        #[arg(long)]
        project: String,
        /// The release id.
        release: String,
        /// Approve.
        #[arg(long, group = "decision")]
        approve: bool,
        /// Reject.
        #[arg(long, group = "decision")]
        reject: bool,
        /// Return for changes (the requester may resubmit a new version).
        #[arg(long = "return", group = "decision")]
        return_: bool,
        /// Why (required).
        #[arg(long)]
        comment: String,
    },
    /// Resubmit a rejected or returned request as a new version pointing at a new job;
    /// prints the new version's number (the requester).
    Resubmit {
        #[command(flatten)]
        conn: Connection,
        /// The project.
        #[arg(long)]
        project: String,
        /// The release id.
        release: String,
        /// The new version: its job, why it should leave (what changed) and its context.
        #[command(flatten)]
        what: Submission,
    },
    /// A request's state, version, approvals, reviews, earlier versions and exported
    /// files (JSON).
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
        Command::Request {
            conn,
            project,
            what,
        } => {
            let v = conn
                .client()?
                .request(&project, &what.job, &what.justification, &what.context)
                .map_err(CmdError::classified)?;
            println!("{}", v["release"].as_str().unwrap_or_default());
            return Ok(ExitCode::SUCCESS);
        }
        Command::Review {
            conn,
            project,
            release,
            approve,
            reject,
            return_,
            comment,
        } => {
            let decision = match (approve, reject, return_) {
                (true, _, _) => "approve",
                (_, true, _) => "reject",
                _ => "return",
            };
            conn.client()?
                .post(
                    &format!("/api/projects/{project}/releases/{release}/reviews"),
                    &serde_json::json!({ "decision": decision, "comment": comment }),
                )
                .map_err(CmdError::classified)?
        }
        Command::Resubmit {
            conn,
            project,
            release,
            what:
                Submission {
                    job,
                    justification,
                    context,
                },
        } => {
            let v = conn
                .client()?
                .post(
                    &format!("/api/projects/{project}/releases/{release}/versions"),
                    &serde_json::json!({
                        "job": job, "justification": justification, "context": context,
                    }),
                )
                .map_err(CmdError::classified)?;
            println!("{}", v["version"]);
            return Ok(ExitCode::SUCCESS);
        }
        Command::Status {
            conn,
            project,
            release,
        } => conn
            .client()?
            .release(&project, &release)
            .map_err(CmdError::classified)?,
    };
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    Ok(ExitCode::SUCCESS)
}
