//! `tre init`: a new TRE workspace.
use std::path::PathBuf;
use std::process::ExitCode;

use tre_pipeline::schema::SchemaSet;
use tre_pipeline::tre::workspace::Workspace;

use tre_pipeline::audit::{EntryDraft, HashRef};

use super::{AuditFacts, CmdError, CmdResult, Ctx};

/// Create a TRE workspace folder and approve projects in it by copying their policies
/// (with the codelists they name). Each project's extract then goes to
/// DIR/projects/<id>/data (`tre extract --out DIR/projects/<id>/data`).
///
/// Examples:
///   tre init /srv/tre --policy policies/diabetes-outcomes.toml
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The workspace folder (new or empty).
    pub dir: PathBuf,
    /// Approve a project: its policy file (repeatable).
    #[arg(long)]
    pub policy: Vec<PathBuf>,
}

/// Run.
pub fn run(args: Args, ctx: &Ctx) -> CmdResult {
    let ws = Workspace::init(&args.dir).map_err(|e| CmdError::Failed(e.into()))?;
    let actor = super::audit::current_actor();
    super::audited(ws.root(), EntryDraft::new(&actor, "init"), || {
        Ok((ExitCode::SUCCESS, AuditFacts::default()))
    })?;
    let schemas = SchemaSet::builtin();
    for p in &args.policy {
        super::audited(
            ws.root(),
            EntryDraft::new(&actor, "project.approve"),
            || {
                let policy = ws
                    .add_project(p, &schemas)
                    .map_err(|e| CmdError::Refused(e.into()))?;
                if !ctx.quiet {
                    println!(
                        "approved project {} ({})",
                        policy.project.id, policy.project.title
                    );
                }
                let mut facts = AuditFacts::default();
                facts.detail("project", policy.project.id.as_str());
                facts.detail("purpose", policy.project.purpose.as_str());
                facts.inputs.push(HashRef::new(
                    p.to_string_lossy().into_owned(),
                    policy.sha256.clone(),
                ));
                Ok((ExitCode::SUCCESS, facts))
            },
        )?;
    }
    if !ctx.quiet {
        println!("workspace ready: {}", args.dir.display());
    }
    Ok(ExitCode::SUCCESS)
}
