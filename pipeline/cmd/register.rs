//! `tre register build` (the public data-uses register as a static site) and
//! `tre admin alerts` (list, check, acknowledge, report).
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use tre_pipeline::clock::{Clock, SystemClock};
use tre_pipeline::schema::SchemaSet;
use tre_pipeline::transparency::{alerts, incident, register, render, rules::AlertRules};
use tre_pipeline::tre::actions::admin::{Admin, operator};

use super::{CmdError, CmdResult, Ctx};

/// The public data-uses register: projects, analyses run and results released, from
/// the installed policies and the audit trail; no personal data, no pseudonyms.
///
/// Examples:
///   tre register build --workspace /srv/tre --out /srv/www/register
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Write the register as a static site (index.html, register.json, CSV files, one
    /// SDC record per release) into a folder, for publishing elsewhere.
    Build {
        /// The workspace folder.
        #[arg(long)]
        workspace: PathBuf,
        /// The folder to write (created if needed; its files are replaced atomically).
        #[arg(long)]
        out: PathBuf,
    },
}

fn open(ws: &std::path::Path) -> Result<Admin, CmdError> {
    Admin::open(ws, Arc::new(SystemClock)).map_err(CmdError::classified)
}

fn now() -> String {
    tre_pipeline::tre::stamp::text(&SystemClock.now())
}

/// Run `tre register`.
pub fn run(args: Args, ctx: &Ctx) -> CmdResult {
    match args.command {
        Command::Build { workspace, out } => {
            let admin = open(&workspace)?;
            let entries = alerts::entries_of(&admin.ws).map_err(CmdError::classified)?;
            let checkpoints = register::checkpoint_seqs(&admin.ws.checkpoints_dir());
            let reg = register::build(
                &admin.ws,
                &SchemaSet::builtin(),
                &entries,
                &checkpoints,
                &now(),
            )
            .map_err(CmdError::classified)?;
            let files = render::write_site(&reg, &out).map_err(CmdError::classified)?;
            if !ctx.quiet {
                eprintln!(
                    "register: {} projects, {} jobs, {} releases, {} incidents; {} files in {}",
                    reg.projects.len(),
                    reg.jobs.len(),
                    reg.releases.len(),
                    reg.incidents.len(),
                    files.len(),
                    out.display()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `tre admin alerts`: the alerts raised over the audit trail. Without a subcommand,
/// lists them (id, raised, rule, project, status, summary).
///
/// Examples:
///   tre admin alerts --workspace /srv/tre
///   tre admin alerts --workspace /srv/tre check
///   tre admin alerts --workspace /srv/tre ack alert-0123456789abcdef --note "analyst retrained"
///   tre admin alerts --workspace /srv/tre report alert-0123456789abcdef --out incident.md
#[derive(Debug, clap::Args)]
pub struct AlertsArgs {
    /// The workspace folder.
    #[arg(long)]
    workspace: PathBuf,
    #[command(subcommand)]
    command: Option<AlertsCommand>,
}

#[derive(Debug, clap::Subcommand)]
enum AlertsCommand {
    /// List the alerts (the default).
    List {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Evaluate the rules now (and check the workspace's integrity), raising new alerts.
    Check,
    /// Acknowledge an alert, saying what was done (audited as `alert.ack`).
    Ack {
        /// The alert id.
        id: String,
        /// What was done about it.
        #[arg(long)]
        note: String,
    },
    /// Write the incident report for the data protection officer (Markdown).
    Report {
        /// The alert id.
        id: String,
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Run `tre admin alerts`.
pub fn run_alerts(args: AlertsArgs, ctx: &Ctx) -> CmdResult {
    // A log that fails verification cannot be opened for appending: that is the alert.
    let ws = tre_pipeline::tre::workspace::Workspace::open(&args.workspace)
        .map_err(CmdError::classified)?;
    alerts::audit_alarm(&ws).map_err(CmdError::classified)?;
    let admin = open(&args.workspace)?;
    let entries = || alerts::entries_of(&admin.ws).map_err(CmdError::classified);
    match args.command.unwrap_or(AlertsCommand::List { json: false }) {
        AlertsCommand::List { json } => {
            for a in alerts::states(&entries()?) {
                if json {
                    println!(
                        "{}",
                        serde_json::to_string(&a).map_err(anyhow::Error::from)?
                    );
                } else {
                    let status = if a.acks.is_empty() {
                        "open"
                    } else {
                        "acknowledged"
                    };
                    println!(
                        "{}\t{}\t{}\t{}\t{}\t{}",
                        a.id,
                        a.raised,
                        a.rule,
                        a.project.as_deref().unwrap_or("service"),
                        status,
                        a.summary
                    );
                }
            }
        }
        AlertsCommand::Check => {
            let rules = AlertRules::for_workspace(&args.workspace).map_err(CmdError::classified)?;
            let raised = alerts::check(
                &admin.ws,
                &SchemaSet::builtin(),
                admin.auditor(),
                &rules,
                true,
            )
            .map_err(CmdError::classified)?;
            for c in &raised {
                println!("{}\t{}\t{}", c.id, c.rule.name(), c.summary);
            }
            if !ctx.quiet {
                eprintln!("{} new alerts", raised.len());
            }
        }
        AlertsCommand::Ack { id, note } => {
            let a = alerts::ack(admin.auditor(), &entries()?, &id, &operator(), &note)
                .map_err(CmdError::classified)?;
            if !ctx.quiet {
                eprintln!("alert {} acknowledged", a.id);
            }
        }
        AlertsCommand::Report { id, out } => {
            let text = incident::report(&admin.ws, &SchemaSet::builtin(), &entries()?, &id, &now())
                .map_err(CmdError::classified)?;
            tre_pipeline::durable::write_atomic(
                &out,
                text.as_bytes(),
                tre_pipeline::durable::Mode::Private,
            )
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
            if !ctx.quiet {
                eprintln!("incident report written to {}", out.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
