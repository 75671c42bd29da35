//! `tre release request|review|export`: the two-checker release of a job's result.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::anyhow;
use tre_pipeline::clock::{Clock, SystemClock};
use tre_pipeline::schema::SchemaSet;
use tre_pipeline::tre::release::{self, Decision, ReleaseError};
use tre_pipeline::tre::workspace::Workspace;

use tre_pipeline::audit::{EntryDraft, HashRef};

use super::{AuditFacts, CmdError, CmdResult, Ctx};

/// Request, review and export the release of a query job's result. Export needs two
/// approvals by different output checkers (never the requester) and writes only the safe
/// (suppressed and rounded) table plus release-manifest.json.
///
/// Examples:
///   tre release request job-1 --workspace /srv/tre --project demo --justification "Table 1 of the paper"
///   TRE_USER=checker1 tre release review rel-job-1 --workspace /srv/tre --project demo --approve --comment "ok"
///   tre release export rel-job-1 --workspace /srv/tre --project demo --to /outbox
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Args)]
struct Common {
    /// The workspace.
    #[arg(long)]
    workspace: PathBuf,
    /// The project.
    #[arg(long)]
    project: String,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Ask for a job's result to be released (analyst).
    Request {
        /// The job whose result should leave.
        result: String,
        #[command(flatten)]
        common: Common,
        /// Why it should leave.
        #[arg(long)]
        justification: String,
    },
    /// Approve or reject a request (output checker, never the requester).
    Review {
        /// The request id.
        request: String,
        #[command(flatten)]
        common: Common,
        /// Approve the release.
        #[arg(long, conflicts_with = "reject", required_unless_present = "reject")]
        approve: bool,
        /// Reject the release.
        #[arg(long)]
        reject: bool,
        /// The reviewer's comment.
        #[arg(long)]
        comment: String,
        /// Approve a written exception for a named failing rule (repeatable).
        #[arg(long)]
        exception: Vec<String>,
    },
    /// Export an approved request's safe table.
    Export {
        /// The request id.
        request: String,
        #[command(flatten)]
        common: Common,
        /// Destination folder outside the TRE.
        #[arg(long)]
        to: PathBuf,
    },
}

fn classify(e: ReleaseError) -> CmdError {
    CmdError::classified(e)
}

/// Run.
pub fn run(args: Args, ctx: &Ctx) -> CmdResult {
    let user = super::audit::current_actor();
    let now = SystemClock
        .now()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let (common, action) = match &args.action {
        Action::Request { common, .. } => (common, "release.request"),
        Action::Review { common, .. } => (common, "release.review"),
        Action::Export { common, .. } => (common, "release.export"),
    };
    let ws = Workspace::open(&common.workspace).map_err(|e| CmdError::Failed(e.into()))?;
    let draft = EntryDraft::new(&user, action).project(&common.project);
    super::audited(ws.root(), draft, || {
        let policy = ws
            .project(&common.project, &SchemaSet::builtin())
            .map_err(|e| CmdError::Refused(e.into()))?;
        let mut facts = AuditFacts::default();
        match &args.action {
            Action::Request {
                result,
                justification,
                ..
            } => {
                let id = format!("rel-{result}");
                let r = release::request(&ws, &policy, &user, result, justification, &now, &id)
                    .map_err(classify)?;
                facts.detail("request", r.id.as_str());
                facts.detail("job", r.job.as_str());
                facts.detail("justification", justification.as_str());
                facts.inputs.push(HashRef::new(
                    format!("results/{}/result.parquet", r.job),
                    r.result_sha256.clone(),
                ));
                if !ctx.quiet {
                    println!(
                        "release request {} for job {} (verdict at request: {}); two output checkers must now review it",
                        r.id, r.job, r.verdict
                    );
                }
            }
            Action::Review {
                request,
                approve,
                comment,
                exception,
                ..
            } => {
                let decision = if *approve {
                    Decision::Approve
                } else {
                    Decision::Reject
                };
                let review = release::Review {
                    checker: user.clone(),
                    decision,
                    comment: comment.clone(),
                    exceptions: exception.clone(),
                    at: now.clone(),
                };
                let r = release::review(&ws, &policy, request, review).map_err(classify)?;
                facts.detail("request", r.id.as_str());
                facts.detail("decision", if *approve { "approve" } else { "reject" });
                facts.detail("comment", comment.as_str());
                facts.detail("exceptions", exception.clone());
                if !ctx.quiet {
                    let n = r
                        .reviews
                        .iter()
                        .filter(|x| x.decision == Decision::Approve)
                        .count();
                    println!(
                        "{} {:?}d release {} ({} approval(s) so far)",
                        user, decision, r.id, n
                    );
                }
            }
            Action::Export { request, to, .. } => {
                let abs = |p: &std::path::Path| {
                    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
                };
                if abs(to).starts_with(abs(ws.root())) {
                    return Err(CmdError::Failed(anyhow!(
                        "--to must be outside the workspace"
                    )));
                }
                let m = release::export(&ws, &policy, request, to, &now).map_err(classify)?;
                facts.detail("request", m.request.as_str());
                facts.detail("approved_by", m.approved_by.clone());
                facts.detail("exceptions", m.exceptions.clone());
                facts.inputs.push(HashRef::new(
                    format!("results/{}/result.parquet", m.job),
                    m.source_sha256.clone(),
                ));
                for f in &m.files {
                    facts.outputs.push(HashRef::new(
                        to.join(&f.path).to_string_lossy().into_owned(),
                        f.sha256.clone(),
                    ));
                }
                if !ctx.quiet {
                    println!(
                        "exported release {} to {} (approved by {})",
                        m.request,
                        to.display(),
                        m.approved_by.join(" and ")
                    );
                }
            }
        }
        Ok((ExitCode::SUCCESS, facts))
    })
}
