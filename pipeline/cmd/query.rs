//! `tre query`: an analyst's SQL job over the project's pseudonymised datasets.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::anyhow;
use tre_pipeline::clock::{Clock, SystemClock};
use tre_pipeline::schema::SchemaSet;
use tre_pipeline::tre::query::{QueryError, QueryLimits, run_query};
use tre_pipeline::tre::workspace::{Role, Workspace};

use tre_pipeline::audit::{EntryDraft, HashRef};

use super::{AuditFacts, CmdError, CmdResult, Ctx};

/// Run a SQL query job over one project's datasets (registered as tables by name). The
/// result stays in the workspace (DIR/projects/P/results/JOB/), is never printed, and is
/// checked for disclosure risk with the project's output rules; the job's report says
/// whether it could be released. The acting user is TRE_USER, else the login name.
///
/// Examples:
///   tre query --workspace /srv/tre --project demo --sql counts.sql --purpose "age-sex counts"
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The workspace.
    #[arg(long)]
    pub workspace: PathBuf,
    /// The project.
    #[arg(long)]
    pub project: String,
    /// File holding one SQL query.
    #[arg(long)]
    pub sql: PathBuf,
    /// Why this job is run (recorded in the audit log).
    #[arg(long)]
    pub purpose: String,
    /// Job name (default: generated from the time).
    #[arg(long)]
    pub job: Option<String>,
}

/// Run.
pub fn run(args: Args, ctx: &Ctx) -> CmdResult {
    let user = super::audit::current_actor();
    let ws = Workspace::open(&args.workspace).map_err(|e| CmdError::Failed(e.into()))?;
    let draft = EntryDraft::new(&user, "query")
        .project(&args.project)
        .purpose(&args.purpose);
    super::audited(ws.root(), draft, || {
        if args.purpose.trim().len() < 3 {
            return Err(CmdError::Failed(anyhow!(
                "--purpose must say why the job is run"
            )));
        }
        let policy = ws
            .project(&args.project, &SchemaSet::builtin())
            .map_err(|e| CmdError::Refused(e.into()))?;
        ws.authorise(&policy, &user, Role::Analyst)
            .map_err(|e| CmdError::Refused(e.into()))?;
        let sql = std::fs::read_to_string(&args.sql)
            .map_err(|e| CmdError::Failed(anyhow!("cannot read {}: {e}", args.sql.display())))?;
        let job = match &args.job {
            Some(j)
                if !j.is_empty()
                    && j.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
            {
                j.clone()
            }
            Some(j) => {
                return Err(CmdError::Failed(anyhow!(
                    "job name {j:?} must be letters, digits, - or _"
                )));
            }
            None => format!("job-{}", SystemClock.now().format("%Y%m%dT%H%M%S%3f")),
        };
        let limits = QueryLimits::for_policy(&policy);
        let outcome = run_query(&ws, &policy, &sql, &job, &limits).map_err(|e| match e {
            QueryError::Workspace(w) if tre_pipeline::error::Classify::is_refusal(&w) => {
                CmdError::Refused(w.into())
            }
            e @ (QueryError::RowLimit { .. } | QueryError::TimeLimit { .. }) => {
                CmdError::Refused(e.into())
            }
            e => CmdError::Failed(e.into()),
        })?;
        if !ctx.quiet {
            println!(
                "job {} for project {} by {}",
                outcome.job, args.project, user
            );
            println!(
                "result: {} rows x {} columns in {}",
                outcome.rows,
                outcome.columns.len(),
                outcome.result.path
            );
            println!("disclosure check ({}): {}", outcome.rules, outcome.verdict);
        }
        let mut facts = AuditFacts::default();
        facts.detail("job", outcome.job.as_str());
        facts.detail("rows", outcome.rows);
        facts.detail("releasable", outcome.releasable);
        facts.detail(
            "sql_sha256",
            tre_pipeline::digest::sha256_hex(sql.as_bytes()),
        );
        facts.outputs.push(HashRef::new(
            outcome.result.path.clone(),
            outcome.result.sha256.clone(),
        ));
        Ok((ExitCode::SUCCESS, facts))
    })
}
