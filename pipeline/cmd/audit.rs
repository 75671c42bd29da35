//! `tre audit`: show and verify the tamper-evident audit trail.
//!
//! Read-only: neither subcommand appends to the log (an auditor needs only read access,
//! and verifying must not change what it verifies). Also home of [`current_actor`], the
//! one place the acting user is read from the environment, for commands that append.
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use tre_pipeline::audit::{self, AuditEntry, Filter, VerifyOptions};

use super::{CmdError, CmdResult, Ctx};

/// Show and verify the tamper-evident audit trail: one JSON line per action (extract,
/// query, release, purge, and every refusal), chained by SHA-256 hashes so that an edited,
/// removed, reordered or inserted entry is detected.
///
/// Examples:
///   tre audit verify --workspace tre-ws
///   tre audit verify --log tre-ws/audit/audit.jsonl --json
///   tre audit show --workspace tre-ws --project P042 --user alice
///   tre audit show --log audit.jsonl --action release --json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(subcommand)]
    pub command: AuditCommand,
}

/// `tre audit` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Check every entry's hash and the chain between them, and the last entry against
    /// the head file (`audit.head`). Names the first bad entry by line and seq.
    ///
    /// Exit status: 0 intact, 1 tampered or damaged, 2 unreadable or bad usage.
    ///
    /// Examples:
    ///   tre audit verify --workspace tre-ws
    ///   tre audit verify --log audit.jsonl --no-head
    #[command(verbatim_doc_comment)]
    Verify(VerifyArgs),
    /// List who did what, when and why, oldest first.
    ///
    /// Examples:
    ///   tre audit show --workspace tre-ws --project P042
    ///   tre audit show --workspace tre-ws --user alice --action release
    ///   tre audit show --log audit.jsonl --json
    #[command(verbatim_doc_comment)]
    Show(ShowArgs),
}

/// Where the log is.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct LogArgs {
    /// The audit log file (its head file is the sibling `.head` file).
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// A TRE workspace: its log is WORKSPACE/audit/audit.jsonl.
    #[arg(long)]
    pub workspace: Option<PathBuf>,
}

impl LogArgs {
    fn path(&self) -> PathBuf {
        match (&self.log, &self.workspace) {
            (Some(log), _) => log.clone(),
            (None, Some(ws)) => audit::workspace_log_path(ws),
            // clap's group makes one of them required.
            (None, None) => PathBuf::from("audit.jsonl"),
        }
    }
}

/// `tre audit verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub at: LogArgs,
    /// Check the chain only, without the head file (for a copy of a log kept without
    /// it). Removal of the last entries then goes unnoticed.
    #[arg(long)]
    pub no_head: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `tre audit show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub at: LogArgs,
    /// Only entries for this project.
    #[arg(long)]
    pub project: Option<String>,
    /// Only entries by this user.
    #[arg(long)]
    pub user: Option<String>,
    /// Only this action or its sub-actions (`release` matches `release.review`).
    #[arg(long)]
    pub action: Option<String>,
    /// Print the entries as JSON lines.
    #[arg(long)]
    pub json: bool,
}

/// Run.
pub fn run(args: Args, ctx: &Ctx) -> CmdResult {
    match args.command {
        AuditCommand::Verify(a) => run_verify(a, ctx),
        AuditCommand::Show(a) => run_show(a, ctx),
    }
}

fn run_verify(args: VerifyArgs, ctx: &Ctx) -> CmdResult {
    let path = args.at.path();
    let report = audit::verify_with(
        &path,
        VerifyOptions {
            check_head: !args.no_head,
        },
    )
    .map_err(|e| CmdError::Failed(e.into()))?;
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        let text = serde_json::to_string_pretty(&report).context("serialising the report")?;
        writeln!(out, "{text}")
    } else {
        match (&report.problem, &report.last) {
            (Some(p), _) => writeln!(out, "TAMPERED {}: {p}", path.display()),
            (None, Some(last)) => writeln!(
                out,
                "ok {}: {} entries, chain intact{}; last entry seq {} hash {}",
                path.display(),
                report.lines,
                if args.no_head {
                    " (head file not checked)"
                } else {
                    ", matches the head file"
                },
                last.seq,
                last.hash
            ),
            (None, None) => writeln!(out, "ok {}: empty log", path.display()),
        }
    };
    ignore_broken_pipe(written)?;
    match report.problem {
        Some(p) => Err(CmdError::Refused(anyhow!(
            "audit log {} does not verify: the first bad entry is {p}",
            path.display()
        ))),
        None => {
            if !ctx.quiet && !args.json && report.lines > 0 {
                eprintln!("tre: record the last hash outside the TRE to anchor this log");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn run_show(args: ShowArgs, ctx: &Ctx) -> CmdResult {
    let path = args.at.path();
    let entries = audit::read_entries(&path).map_err(|e| CmdError::Failed(e.into()))?;
    // Listing is not verifying, but nobody should read a damaged log unawares.
    match audit::verify(&path) {
        Ok(r) => {
            if let Some(p) = r.problem {
                eprintln!(
                    "tre: warning: {} does not verify ({p}); entries may have been altered",
                    path.display()
                );
            }
        }
        Err(e) => eprintln!("tre: warning: could not verify {}: {e}", path.display()),
    }
    let filter = Filter {
        project: args.project,
        actor: args.user,
        action: args.action,
    };
    let chosen: Vec<&AuditEntry> = entries
        .iter()
        .map(|(_, e)| e)
        .filter(|e| filter.matches(e))
        .collect();
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        chosen.iter().try_for_each(|e| {
            let line = serde_json::to_string(e).map_err(std::io::Error::other)?;
            writeln!(out, "{line}")
        })
    } else {
        write_table(&mut out, &chosen)
    };
    ignore_broken_pipe(written)?;
    if !ctx.quiet && !args.json {
        eprintln!("tre: {} of {} entries shown", chosen.len(), entries.len());
    }
    Ok(ExitCode::SUCCESS)
}

/// A plain text table: time, actor, action, outcome, project, purpose, detail.
fn write_table(out: &mut impl Write, entries: &[&AuditEntry]) -> std::io::Result<()> {
    let header = [
        "SEQ", "TIME", "ACTOR", "ACTION", "OUTCOME", "PROJECT", "PURPOSE", "DETAIL",
    ];
    let rows: Vec<[String; 8]> = entries
        .iter()
        .map(|e| {
            [
                e.seq.to_string(),
                e.time.clone(),
                e.actor.clone(),
                e.action.clone(),
                e.outcome.as_str().to_string(),
                e.project.clone().unwrap_or_else(|| "-".into()),
                shorten(e.purpose.as_deref().unwrap_or("-"), 40),
                shorten(&short_detail(&e.detail), 60),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: &[&str]| -> std::io::Result<()> {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        writeln!(out, "{}", s.trim_end())
    };
    line(out, &header)?;
    for r in &rows {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        line(out, &cells)?;
    }
    Ok(())
}

/// `key=value` pairs of the top-level detail.
fn short_detail(detail: &serde_json::Value) -> String {
    match detail {
        serde_json::Value::Object(m) if m.is_empty() => "-".into(),
        serde_json::Value::Object(m) => m
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

fn shorten(s: &str, max: usize) -> String {
    let s = s.replace(['\n', '\r', '\t'], " ");
    if s.chars().count() <= max {
        return s;
    }
    let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
    t.push('…');
    t
}

fn ignore_broken_pipe(r: std::io::Result<()>) -> Result<(), CmdError> {
    match r {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(CmdError::Failed(anyhow!(e).context("writing to stdout")))
        }
        _ => Ok(()),
    }
}

/// Who is acting, for audit entries: `TRE_USER` when set, else the OS login (`USER`,
/// then `LOGNAME`), else the numeric user id. The only place the library's callers learn
/// the user; the library itself never reads the environment.
#[allow(dead_code)] // Called by the commands that append (extract, query, release, purge).
pub fn current_actor() -> String {
    for var in ["TRE_USER", "USER", "LOGNAME"] {
        if let Ok(v) = std::env::var(var) {
            let v = v.trim();
            if !v.is_empty() {
                return v.to_string();
            }
        }
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let Ok(m) = std::fs::metadata("/proc/self") {
            return format!("uid:{}", m.uid());
        }
    }
    "unknown".to_string()
}
