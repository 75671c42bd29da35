//! `tre admin`: the operator's local commands, run as the service account.
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use tre_pipeline::clock::SystemClock;
use tre_pipeline::schema::SchemaSet;
use tre_pipeline::tre::actions::admin::Admin;

use super::{CmdError, CmdResult, Ctx};

/// Set up and run the research environment's workspace, as the service account that
/// runs `tre serve`: create it, add people (tokens), install projects (policies), set
/// each project's outbox and install extracts as datasets. Every action is audited
/// before it is done.
///
/// Examples:
///   tre admin init --workspace /srv/tre
///   tre admin user add --workspace /srv/tre alice --days 90 > alice.token
///   tre admin project add --workspace /srv/tre policies/demo.toml
///   tre admin project outbox --workspace /srv/tre demo /srv/outbox/demo
///   tre admin dataset add --workspace /srv/tre demo /srv/extracts/demo-2026-01
///   tre admin migrate --workspace /srv/tre
///   tre admin alerts --workspace /srv/tre
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Create a new workspace (new or empty folder; mode 0700).
    Init {
        /// The workspace folder.
        #[arg(long)]
        workspace: PathBuf,
    },
    /// Add, revoke and list people.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Install projects and set their outboxes.
    Project {
        #[command(subcommand)]
        command: ProjectCommand,
    },
    /// Install extracts.
    Dataset {
        #[command(subcommand)]
        command: DatasetCommand,
    },
    /// The alerts raised over the audit trail: list, check, acknowledge, report.
    Alerts(super::register::AlertsArgs),
    /// Re-seal a workspace made by an earlier tre (records sealed without their path and
    /// audit entry, projects without installed.json), once, with the server stopped;
    /// only records whose old seal verifies are re-sealed, under one audited entry.
    Migrate {
        /// The workspace folder.
        #[arg(long)]
        workspace: PathBuf,
    },
}

#[derive(Debug, clap::Subcommand)]
enum UserCommand {
    /// Add a user (or replace their token); prints the new token alone on stdout, once.
    Add {
        /// The workspace folder.
        #[arg(long)]
        workspace: PathBuf,
        /// The user id (as named in project policies).
        name: String,
        /// Days until the token expires.
        #[arg(long, default_value_t = 90)]
        days: i64,
    },
    /// Revoke a user's token.
    Revoke {
        /// The workspace folder.
        #[arg(long)]
        workspace: PathBuf,
        /// The user id.
        name: String,
    },
    /// List users, their token expiry and whether revoked (never tokens).
    List {
        /// The workspace folder.
        #[arg(long)]
        workspace: PathBuf,
    },
}

#[derive(Debug, clap::Subcommand)]
enum ProjectCommand {
    /// Install (or update) a project from its approved policy.
    Add {
        /// The workspace folder.
        #[arg(long)]
        workspace: PathBuf,
        /// The policy file.
        policy: PathBuf,
    },
    /// Set the folder the project's approved releases are exported to.
    Outbox {
        /// The workspace folder.
        #[arg(long)]
        workspace: PathBuf,
        /// The project id.
        project: String,
        /// An existing folder outside the workspace.
        dir: PathBuf,
    },
}

#[derive(Debug, clap::Subcommand)]
enum DatasetCommand {
    /// Install an extract (`tre extract --out DIR`) as the project's dataset; its files
    /// are verified against its manifest once, while they are copied in.
    Add {
        /// The workspace folder.
        #[arg(long)]
        workspace: PathBuf,
        /// The project id.
        project: String,
        /// The extract folder.
        extract_dir: PathBuf,
    },
}

fn open(ws: &std::path::Path) -> Result<Admin, CmdError> {
    Admin::open(ws, Arc::new(SystemClock)).map_err(CmdError::classified)
}

/// Run.
pub fn run(args: Args, ctx: &Ctx) -> CmdResult {
    let say = |s: String| {
        if !ctx.quiet {
            eprintln!("{s}");
        }
    };
    match args.command {
        Command::Init { workspace } => {
            Admin::init(&workspace, Arc::new(SystemClock)).map_err(CmdError::classified)?;
            say(format!("workspace ready: {}", workspace.display()));
        }
        Command::User { command } => match command {
            UserCommand::Add {
                workspace,
                name,
                days,
            } => {
                let token = open(&workspace)?
                    .add_user(&name, days)
                    .map_err(CmdError::classified)?;
                println!("{}", token.expose());
                say(format!(
                    "user {name} added; the token above is shown once and expires in {days} days"
                ));
            }
            UserCommand::Revoke { workspace, name } => {
                open(&workspace)?
                    .revoke_user(&name)
                    .map_err(CmdError::classified)?;
                say(format!("user {name}: token revoked"));
            }
            UserCommand::List { workspace } => {
                for u in open(&workspace)?.users().map_err(CmdError::classified)? {
                    let state = if u.revoked { "revoked" } else { "active" };
                    println!(
                        "{}\t{}\texpires {}",
                        u.user,
                        state,
                        u.expires_at.to_rfc3339()
                    );
                }
            }
        },
        Command::Project { command } => match command {
            ProjectCommand::Add { workspace, policy } => {
                let p = open(&workspace)?
                    .add_project(&policy, &SchemaSet::builtin())
                    .map_err(CmdError::classified)?;
                say(format!(
                    "installed project {} ({})",
                    p.project.id, p.project.title
                ));
            }
            ProjectCommand::Outbox {
                workspace,
                project,
                dir,
            } => {
                let d = open(&workspace)?
                    .set_outbox(&project, &dir)
                    .map_err(CmdError::classified)?;
                say(format!("project {project}: releases go to {}", d.display()));
            }
        },
        Command::Alerts(a) => return super::register::run_alerts(a, ctx),
        Command::Migrate { workspace } => {
            let n = open(&workspace)?
                .migrate(&SchemaSet::builtin())
                .map_err(CmdError::classified)?;
            say(format!("re-sealed {n} records"));
        }
        Command::Dataset { command } => match command {
            DatasetCommand::Add {
                workspace,
                project,
                extract_dir,
            } => {
                let r = open(&workspace)?
                    .add_dataset(&project, &extract_dir)
                    .map_err(CmdError::classified)?;
                say(format!(
                    "project {project}: installed {} tables, verified by sha256",
                    r.tables.len()
                ));
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}
