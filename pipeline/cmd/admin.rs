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
///   tre admin refresh --workspace /srv/tre demo --input /srv/gp/latest \
///       --ndoo-allow-list /srv/mesh/demo-reply.dat --key-file /srv/keys/demo.key
///   tre admin dataset list --workspace /srv/tre demo
///   tre admin dataset drop --workspace /srv/tre demo 1
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
    /// Install extracts, list and drop dataset versions.
    Dataset {
        #[command(subcommand)]
        command: DatasetCommand,
    },
    /// A project's scheduled extract, end to end: extract the input with the installed
    /// policy, the newest opt-out list and the project key; install it as the next
    /// dataset version (jobs starting after it read it); remove the newer opt-outs from
    /// every earlier version still held and from the results computed over them; record
    /// every step in the audit log. A refresh stopped part-way is finished by running
    /// the same command again. Exit 1 when a rule refuses it (wrong key, stale or older
    /// list, unknown project), 2 on bad input.
    Refresh(RefreshArgs),
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
    /// List the project's dataset versions held (the current one last).
    List {
        /// The workspace folder.
        #[arg(long)]
        workspace: PathBuf,
        /// The project id.
        project: String,
    },
    /// Stop holding an earlier dataset version and remove its files (never the current).
    Drop {
        /// The workspace folder.
        #[arg(long)]
        workspace: PathBuf,
        /// The project id.
        project: String,
        /// The version number (see `tre admin dataset list`).
        version: u32,
    },
}

/// `tre admin refresh`.
#[derive(Debug, clap::Args)]
struct RefreshArgs {
    /// The workspace folder.
    #[arg(long)]
    workspace: PathBuf,
    /// The project id.
    project: String,
    /// Directory holding <table>.csv or <table>.parquet for each table in the policy.
    #[arg(long)]
    input: PathBuf,
    /// The "Check for National Data Opt-outs" service's reply: the patients who may be
    /// used (see `tre extract --ndoo-allow-list`).
    #[arg(
        long,
        required_unless_present = "opt_outs",
        conflicts_with = "opt_outs"
    )]
    ndoo_allow_list: Option<PathBuf>,
    /// A National Data Opt-out deny-list instead.
    #[arg(long)]
    opt_outs: Option<PathBuf>,
    /// The list's "as of" date (YYYY-MM-DD; default: the file's modification date).
    #[arg(long, value_parser = |s: &str| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| format!("{s:?} is not YYYY-MM-DD")))]
    opt_outs_as_of: Option<chrono::NaiveDate>,
    /// Project key file (the one its dataset was pseudonymised with).
    #[arg(long)]
    key_file: PathBuf,
    /// Where the extract (and its quarantine, STAGING.quarantine) is written before it
    /// is installed; outside the workspace. Default: WORKSPACE.refresh/PROJECT.
    #[arg(long)]
    staging: Option<PathBuf>,
    /// Worker threads for the extract (default: all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
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
        Command::Refresh(a) => refresh(a, ctx)?,
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
            DatasetCommand::List { workspace, project } => {
                let r = open(&workspace)?
                    .dataset(&project)
                    .map_err(CmdError::classified)?;
                println!("version\tinstalled\textracted\topt-outs as of\tmanifest sha256");
                for v in r.versions() {
                    let current = if v.version == r.version {
                        " (current)"
                    } else {
                        ""
                    };
                    println!(
                        "{}{current}\t{}\t{}\t{}\t{}",
                        v.version,
                        v.installed_at,
                        v.extracted_at.as_deref().unwrap_or("-"),
                        v.opt_outs_as_of.as_deref().unwrap_or("-"),
                        v.manifest_sha256
                    );
                }
            }
            DatasetCommand::Drop {
                workspace,
                project,
                version,
            } => {
                open(&workspace)?
                    .drop_dataset_version(&project, version)
                    .map_err(CmdError::classified)?;
                say(format!(
                    "project {project}: dataset version {version} dropped"
                ));
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}

/// Run `tre admin refresh`: the extraction step is the `tre extract` library path
/// (`ExtractPlan`), handed to the refresh action, which owns the order and the audit.
fn refresh(a: RefreshArgs, ctx: &Ctx) -> Result<(), CmdError> {
    use tre_pipeline::clock::Clock;
    use tre_pipeline::error::Classify;
    use tre_pipeline::extract::{ExtractOptions, ExtractPlan};
    use tre_pipeline::tre::actions::admin::RefreshInput;
    use tre_pipeline::tre::refresh::RefreshError;
    let staging = a.staging.clone().unwrap_or_else(|| {
        // Components drop a trailing slash: `/srv/tre/` gives `/srv/tre.refresh`.
        let ws: PathBuf = a.workspace.components().collect();
        let mut s = ws.into_os_string();
        s.push(".refresh");
        PathBuf::from(s).join(&a.project)
    });
    let (list, allow_list) = match (&a.ndoo_allow_list, &a.opt_outs) {
        (Some(l), _) => (l.clone(), true),
        (None, Some(l)) => (l.clone(), false),
        (None, None) => unreachable!("clap requires one of them"),
    };
    let input = RefreshInput {
        project: a.project.clone(),
        list,
        allow_list,
        opt_outs_as_of: a.opt_outs_as_of,
        key_file: a.key_file.clone(),
        staging,
    };
    let failed = |message: String, refused: bool| RefreshError::Extract { message, refused };
    let extract = |policy: &tre_pipeline::policy::Policy,
                   list: &tre_pipeline::optout::OptOutList,
                   out: &std::path::Path| {
        let clock = SystemClock;
        let key = tre_pipeline::key_file::load_project_key(&a.key_file).map_err(|e| {
            failed(
                e.to_string(),
                e.kind() == tre_pipeline::error::ErrorKind::Refused,
            )
        })?;
        let mut options = ExtractOptions::new(&a.input, out);
        options.overwrite = true;
        options.threads = a.threads;
        options.progress = ctx.progress();
        let bad = |e: tre_pipeline::extract::ExtractError| {
            failed(
                e.to_string(),
                e.kind() == tre_pipeline::error::ErrorKind::Refused,
            )
        };
        let plan = ExtractPlan::new(
            policy.clone(),
            key,
            Some(list.clone()),
            &SchemaSet::builtin(),
            options,
            &clock as &dyn Clock,
        )
        .map_err(bad)?;
        let type1 = plan.type1_opt_outs().map_err(bad)?;
        plan.run(&clock).map_err(bad)?;
        Ok(type1)
    };
    let r = open(&a.workspace)?
        .refresh(&input, &extract)
        .map_err(CmdError::classified)?;
    if !ctx.quiet {
        for (v, tables) in &r.earlier {
            let rows: u64 = tables.values().sum();
            println!("earlier version {v}: {rows} rows of newly opted-out patients removed");
        }
        for j in &r.results_withdrawn {
            println!("result {j}: computed over them; withdrawn (re-run the job)");
        }
        for rel in &r.releases_affected {
            println!("earlier release {rel} was computed over data that held them");
        }
        println!(
            "project {}: dataset version {} is current ({}; earlier versions purged of {} patients the list no longer clears and {} Type 1 dissenters)",
            a.project, r.version, r.id, r.not_cleared, r.type1_dissenters
        );
    }
    Ok(())
}
