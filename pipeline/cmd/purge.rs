//! `tre purge`: apply a newer opt-out list to a project's data already in the TRE.
//!
//! A thin adapter over the purge action ([`tre_pipeline::tre::actions::purge`]), which
//! checks what the operator named and audits first. It never rewrites a file itself.
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use chrono::NaiveDate;
use tre_pipeline::clock::SystemClock;
use tre_pipeline::tre::actions::admin::Admin;
use tre_pipeline::tre::actions::purge::{PurgeInput, purge};
use tre_pipeline::tre::purge::{PurgeReport, ResultAction};

use super::{CmdError, CmdResult, Ctx};

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

/// Run: open the workspace and its auditor (as `tre admin` does) and run the purge
/// action ([`tre_pipeline::tre::actions::purge::purge`]: checks, audited refusals, then
/// the audit-first purge); print what was done.
pub fn run(args: Args, ctx: &Ctx) -> CmdResult {
    let admin =
        Admin::open(&args.workspace, Arc::new(SystemClock)).map_err(CmdError::classified)?;
    let input = PurgeInput {
        project: args.project.clone(),
        opt_outs: args.opt_outs,
        opt_outs_as_of: args.opt_outs_as_of,
        key_file: args.key_file,
        quarantine: args.quarantine,
    };
    let report = purge(&admin, &input).map_err(CmdError::classified)?;
    if !ctx.quiet {
        print_report(&args.project, &report);
    }
    Ok(ExitCode::SUCCESS)
}
