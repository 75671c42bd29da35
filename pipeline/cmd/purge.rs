//! `tre purge`: apply a newer opt-out list to a project's data already in the TRE.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chrono::NaiveDate;
use tre_pipeline::clock::{Clock, SystemClock};
use tre_pipeline::optout::OptOutList;
use tre_pipeline::schema::SchemaSet;
use tre_pipeline::tre::purge::{PurgeReport, ResultAction, purge};
use tre_pipeline::tre::workspace::Workspace;

use tre_pipeline::audit::{EntryDraft, HashRef};

use super::{AuditFacts, CmdError, CmdResult, Ctx};

/// Remove every patient on a newer National Data Opt-out list from a project's datasets,
/// stored job results and quarantine files, matching through their pseudonyms (and, in
/// results, through each column's recorded lineage: renamed, upper-cased or concatenated
/// pseudonyms are found too). Aggregates computed over them are marked stale, results
/// that hold them in a form that cannot be matched are marked unreleasable, and every
/// earlier release computed over data that held them is listed. Files are rewritten
/// atomically and the extract manifest records the purge.
///
/// Examples:
///   tre purge --workspace /srv/tre --project demo --opt-outs ndoo-2026-12.txt --key-file demo.key
///   tre purge --workspace /srv/tre --project demo --opt-outs ndoo.txt --key-file demo.key --quarantine /data/out.quarantine
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The workspace.
    #[arg(long)]
    pub workspace: PathBuf,
    /// The project.
    #[arg(long)]
    pub project: String,
    /// The newer opt-out list.
    #[arg(long)]
    pub opt_outs: PathBuf,
    /// The list's "as of" date (default: its modification date).
    #[arg(long, value_parser = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| format!("{s:?} is not YYYY-MM-DD")))]
    pub opt_outs_as_of: Option<NaiveDate>,
    /// The project key the data was pseudonymised with.
    #[arg(long)]
    pub key_file: PathBuf,
    /// A quarantine folder of the project's extract outside the workspace (repeatable);
    /// the workspace's own `data.quarantine` is always purged.
    #[arg(long)]
    pub quarantine: Vec<PathBuf>,
}

fn print_report(project: &str, report: &PurgeReport) {
    for (t, n) in &report.datasets {
        println!("{t:<16} {n:>8} rows removed");
    }
    for (j, r) in &report.results {
        match r.action {
            ResultAction::RowsRemoved => println!(
                "result {j}: {} rows removed (matched through {}){}",
                r.rows_removed,
                r.columns.join(", "),
                if r.withdrawn {
                    format!(
                        "; its safe table predates the purge: withdrawn by {} (re-run the job)",
                        report.id
                    )
                } else {
                    String::new()
                }
            ),
            ResultAction::PurgedUnreleasable => println!(
                "result {j}: holds purged patients at row level; marked unreleasable and withdrawn by {} (re-run the job)",
                report.id
            ),
            ResultAction::Stale => println!(
                "result {j}: aggregate over purged patients; marked stale and withdrawn by {} (re-run the job)",
                report.id
            ),
            ResultAction::Untouched => {}
        }
    }
    for (q, n) in report.quarantine.iter().filter(|(_, n)| **n > 0) {
        println!("quarantine {q}: {n} rows removed");
    }
    for r in &report.releases {
        println!(
            "earlier release {} (job {}, exported {}) was computed over data that held purged patients ({})",
            r.release,
            r.job.as_deref().unwrap_or("?"),
            r.exported_at,
            r.tables.join(", ")
        );
    }
    println!(
        "purged project {project} with a list of {} entries ({})",
        report.list_entries, report.id
    );
}

/// Run.
pub fn run(args: Args, ctx: &Ctx) -> CmdResult {
    let clock = SystemClock;
    let ws = Workspace::open(&args.workspace).map_err(|e| CmdError::Failed(e.into()))?;
    let draft =
        EntryDraft::new(tre_pipeline::tre::admin::operator(), "purge").project(&args.project);
    let report = super::audited(ws.root(), draft, || {
        let policy = ws
            .project(&args.project, &SchemaSet::builtin())
            .map_err(|e| CmdError::Refused(e.into()))?;
        let key = tre_pipeline::key_file::load_project_key(&args.key_file)
            .map_err(CmdError::classified)?;
        let list =
            OptOutList::load(&args.opt_outs, args.opt_outs_as_of).map_err(CmdError::classified)?;
        list.check_fresh(clock.today(), policy.opt_outs.max_age_days)
            .map_err(|e| CmdError::Refused(e.into()))?;
        let now = clock
            .now()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let report = purge(&ws, &policy, &key, &list, &now, &args.quarantine)
            .map_err(CmdError::classified)?;
        let mut facts = AuditFacts::default();
        facts.detail("purge", report.id.clone());
        facts.detail("key_fingerprint", key.fingerprint());
        facts.detail("opt_outs_as_of", list.as_of.to_string());
        let json = |what: &str, v: serde_json::Result<serde_json::Value>| {
            v.with_context(|| format!("bug: cannot record the purge's {what} in the audit entry"))
        };
        facts.detail(
            "rows_removed",
            json("row counts", serde_json::to_value(&report.datasets))?,
        );
        facts.detail(
            "results",
            json("results", serde_json::to_value(&report.results))?,
        );
        let releases: Vec<_> = report.releases.iter().map(|r| r.release.clone()).collect();
        facts.detail(
            "releases_affected",
            json("releases", serde_json::to_value(releases))?,
        );
        facts.inputs.push(HashRef::new(
            args.opt_outs.to_string_lossy().into_owned(),
            list.sha256.clone(),
        ));
        Ok((report, facts))
    })?;
    if !ctx.quiet {
        print_report(&args.project, &report);
    }
    Ok(ExitCode::SUCCESS)
}
