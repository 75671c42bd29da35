//! The `tre` command line: parse, dispatch, map errors to exit codes.
//!
//! Exit status: 0 done, 1 refused by a rule (stale opt-out list, weak key, policy
//! violation, a table that may not be released), 2 bad usage or unreadable input.
//! Business rules live in the library; each command is one file under `cmd/`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

/// tre: pseudonymisation and trusted-research-environment pipeline for NHS GP data.
#[derive(Debug, Parser)]
#[command(name = "tre", version, about, long_about = None)]
struct Cli {
    /// Print only errors (no progress bar, no summary chatter).
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a research extract for one project: opt-outs, pseudonyms, minimisation.
    Extract(cmd::extract::Args),
    /// Write a new project key file (32 random bytes as hex, mode 0600).
    Keygen(cmd::keygen::Args),
    /// Write a realistic synthetic GP extract and its opt-out list.
    Generate(cmd::generate::Args),
    /// Run the whole flow on freshly generated synthetic data.
    Demo(cmd::demo::Args),
    /// Check an aggregate table for disclosure risk before it leaves the TRE.
    Check(cmd::check::Args),
    /// Show and verify the tamper-evident audit trail.
    Audit(cmd::audit::Args),
    /// Operator: create the TRE workspace, add people, projects, outboxes and datasets.
    Admin(cmd::admin::Args),
    /// Run the research environment (HTTP API and job workers) over a workspace.
    Serve(cmd::serve::Args),
    /// Analyst: submit query jobs and read their checked outcome (via the server).
    Job(cmd::job::Args),
    /// Request and review (two checkers) the release of a job's safe table (via the server).
    Release(cmd::release::Args),
    /// The public data-uses register (static site for publishing).
    Register(cmd::register::Args),
    /// Operator: remove patients on a newer opt-out list from a project's data in the TRE.
    Purge(cmd::purge::Args),
    /// Operator: run a Ballista scheduler or executor for --scheduler (cargo feature
    /// `cluster`).
    #[cfg(feature = "cluster")]
    Cluster(cmd::cluster::Args),
    /// Runs one job inside its child process (started by `tre serve`).
    #[command(name = "internal-run-job", hide = true)]
    InternalRunJob(cmd::run_job::Args),
    /// Child processes of the extract (untrusted Parquet decoding under limits).
    #[command(hide = true)]
    Internal(cmd::internal::Args),
}

fn main() -> ExitCode {
    quiet_on_broken_pipe();
    let cli = Cli::parse();
    cmd::init_logging(cli.quiet);
    let ctx = cmd::Ctx { quiet: cli.quiet };
    // A closed stdout (`tre audit show | head`) is not an error: `println!` panics on it
    // after the work (and its audit entry) is done; that one panic ends the run with 0.
    match std::panic::catch_unwind(move || dispatch(cli.command, &ctx)) {
        Ok(Ok(code)) => code,
        Ok(Err(e)) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Ok(Err(e)) => e.report(),
        Err(p) if is_broken_pipe(p.as_ref()) => ExitCode::SUCCESS,
        Err(p) => std::panic::resume_unwind(p),
    }
}

fn dispatch(command: Command, ctx: &cmd::Ctx) -> cmd::CmdResult {
    match command {
        Command::Extract(a) => cmd::extract::run(a, ctx),
        Command::Keygen(a) => cmd::keygen::run(a, ctx),
        Command::Generate(a) => cmd::generate::run(a, ctx),
        Command::Demo(a) => cmd::demo::run(a, ctx),
        Command::Check(a) => cmd::check::run(a, ctx),
        Command::Audit(a) => cmd::audit::run(a, ctx),
        Command::Admin(a) => cmd::admin::run(a, ctx),
        Command::Serve(a) => cmd::serve::run(a, ctx),
        Command::Job(a) => cmd::job::run(a, ctx),
        Command::Release(a) => cmd::release::run(a, ctx),
        Command::InternalRunJob(a) => cmd::run_job::run(a),
        Command::Purge(a) => cmd::purge::run(a, ctx),
        #[cfg(feature = "cluster")]
        Command::Cluster(a) => cmd::cluster::run(a, ctx),
        Command::Register(a) => cmd::register::run(a, ctx),
        Command::Internal(a) => cmd::internal::run(a, ctx),
    }
}

/// Whether a panic is `println!` failing on a closed stdout.
fn is_broken_pipe(payload: &(dyn std::any::Any + Send)) -> bool {
    let text = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("");
    text.contains("failed printing to stdout") && text.contains("Broken pipe")
}

/// Keep the default panic message for every panic but a closed stdout.
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !is_broken_pipe(info.payload()) {
            default(info);
        }
    }));
}
