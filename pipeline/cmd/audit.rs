//! `tre audit`: show and verify the tamper-evident audit trail.
//!
//! `show` and `verify` only read (an auditor needs only read access, and verifying must
//! not change what it verifies); `checkpoint` writes a signed checkpoint file, never the
//! log. No environment variable names anyone: the local operator commands that append
//! (extract, purge) record the operator by user id (`tre::admin::operator`).
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use tre_pipeline::audit::{
    self, Anchors, AuditEntry, AuditLog, CheckpointKey, CheckpointRecord, Filter, FullReport,
    PublicKey, VerifyOptions, checkpoint,
};
use tre_pipeline::clock::{Clock, SystemClock};

use super::{CmdError, CmdResult, Ctx};

/// Show and verify the tamper-evident audit trail: one JSON line per action (extract,
/// query, release, purge, and every refusal), chained by SHA-256 hashes so that an edited,
/// removed, reordered or inserted entry is detected, and anchored by signed checkpoints
/// kept off-host so that a cut, recomputed or deleted log is detected too.
///
/// Examples:
///   tre audit verify --workspace tre-ws
///   tre audit verify --workspace tre-ws --checkpoints /mnt/offhost/checkpoints
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
    /// the head file (`audit.head`). Names the first bad entry by line and seq. With
    /// signed checkpoints or manifests (anchors kept outside the log), also checks that
    /// the log still holds each anchored entry: this finds a cut tail whose head file was
    /// rewritten, a recomputed chain, and a deleted log. Never writes.
    ///
    /// Exit status: 0 intact, 1 tampered or damaged, 2 unreadable or bad usage.
    ///
    /// Examples:
    ///   tre audit verify --workspace tre-ws
    ///   tre audit verify --workspace tre-ws --checkpoints /mnt/copy/checkpoints \
    ///       --public-key /mnt/copy/checkpoint.pub
    ///   tre audit verify --workspace tre-ws --manifest extracts/2025-03/manifest.json
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
    /// Sign the log's current head with the workspace's checkpoint key and write it as
    /// `checkpoint-<seq>.json` (the server does this every N entries and at shutdown).
    /// Copy the checkpoints folder and `WORKSPACE/audit/checkpoint.pub` off-host: later,
    /// `tre audit verify --checkpoints COPY --public-key COPY.pub` finds a cut, rewritten
    /// or deleted log. Run as the service account; it never writes the log.
    ///
    /// Examples:
    ///   tre audit checkpoint --workspace tre-ws
    ///   tre audit checkpoint --workspace tre-ws --out /mnt/offhost/checkpoints
    ///   tre audit checkpoint --workspace old-ws --new-key
    #[command(verbatim_doc_comment)]
    Checkpoint(CheckpointArgs),
    /// Follow the log from outside the workspace: every round, copy each new signed
    /// checkpoint (and the public key, on the first round) into DIR, which should be on
    /// another host or a mount the service account cannot rewrite, then check the log
    /// against every copy. A cut tail, a rewritten chain, a deleted or restarted log, or
    /// a checkpoint replaced in the workspace is reported as an ALERT line and exit
    /// status 1. Run it from a systemd timer with --once, or as a service.
    ///
    /// Examples:
    ///   tre audit follow --workspace tre-ws --to /mnt/offhost/tre-checkpoints --once
    ///   tre audit follow --workspace tre-ws --to /mnt/offhost/tre-checkpoints --interval 60
    #[command(verbatim_doc_comment)]
    Follow(FollowArgs),
}

/// `tre audit follow`.
#[derive(Debug, clap::Args)]
pub struct FollowArgs {
    /// The TRE workspace.
    #[arg(long)]
    pub workspace: PathBuf,
    /// The off-host folder that keeps the copies.
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// Seconds between rounds.
    #[arg(long, default_value_t = 60)]
    pub interval: u64,
    /// One round, then exit.
    #[arg(long)]
    pub once: bool,
}

/// `tre audit checkpoint`.
#[derive(Debug, clap::Args)]
pub struct CheckpointArgs {
    /// The TRE workspace (its key is WORKSPACE/keys/audit-checkpoint.key).
    #[arg(long)]
    pub workspace: PathBuf,
    /// Where to write the checkpoint (default WORKSPACE/audit/checkpoints).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Create the workspace's checkpoint key first: once, for a workspace made before
    /// checkpoint keys existed. Refused when a key exists.
    #[arg(long, conflicts_with = "key")]
    pub new_key: bool,
    /// The checkpoint signing key kept outside the workspace (as given to `tre serve
    /// --checkpoint-key`); default WORKSPACE/keys/audit-checkpoint.key.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
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
    /// A folder of signed checkpoints (`checkpoint-<seq>.json`), ideally the copy kept
    /// off-host; repeatable. With --workspace, WORKSPACE/audit/checkpoints is checked
    /// too when it holds any.
    #[arg(long, value_name = "DIR")]
    pub checkpoints: Vec<PathBuf>,
    /// A manifest whose top-level `audit_head` {seq, hash} the log must still hold;
    /// repeatable.
    #[arg(long, value_name = "FILE")]
    pub manifest: Vec<PathBuf>,
    /// The checkpoint public key (64 hex characters); default
    /// WORKSPACE/audit/checkpoint.pub. Prefer a copy kept off-host.
    #[arg(long, value_name = "FILE")]
    pub public_key: Option<PathBuf>,
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
        AuditCommand::Checkpoint(a) => run_checkpoint(a, ctx),
        AuditCommand::Follow(a) => run_follow(a),
    }
}

fn run_verify(args: VerifyArgs, ctx: &Ctx) -> CmdResult {
    let path = args.at.path();
    let anchors = anchors(&args).map_err(CmdError::classified)?;
    let opts = VerifyOptions {
        check_head: !args.no_head,
        ..VerifyOptions::default()
    };
    let report = audit::verify_anchored(&path, opts, &anchors).map_err(CmdError::classified)?;
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        let text = serde_json::to_string_pretty(&report).context("serialising the report")?;
        writeln!(out, "{text}")
    } else {
        write_verify_text(&mut out, &path, &report, args.no_head)
    };
    // The verdict first: a tampered log is refused (exit 1) even when nobody reads the
    // report (`tre audit verify | head -1`); main treats a closed stdout as done.
    verdict(&path, &report)?;
    written.context("writing the report to stdout")?;
    if !ctx.quiet && !args.json && report.chain.lines > 0 && report.anchors.is_empty() {
        eprintln!(
            "tre: record the last hash outside the TRE (or verify with --checkpoints) to \
             anchor this log"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Refuse a log whose chain or an anchor does not verify.
fn verdict(path: &Path, report: &FullReport) -> Result<(), CmdError> {
    if let Some(p) = &report.chain.problem {
        return Err(CmdError::Refused(anyhow!(
            "audit log {} does not verify: the first bad entry is {p}",
            path.display()
        )));
    }
    if let Some(a) = report.first_bad_anchor() {
        return Err(CmdError::Refused(anyhow!(
            "audit log {} does not match an anchor kept outside it: the first bad one is {a}",
            path.display()
        )));
    }
    Ok(())
}

/// The anchors named on the command line, plus the workspace's own checkpoints.
fn anchors(args: &VerifyArgs) -> Result<Anchors, audit::AuditError> {
    let mut dirs = args.checkpoints.clone();
    let mut key_file = args.public_key.clone();
    if let Some(ws) = &args.at.workspace {
        let own = checkpoint::workspace_checkpoint_dir(ws);
        let has_any = checkpoint::list_checkpoints(&own).is_ok_and(|c| !c.is_empty());
        if has_any && !dirs.contains(&own) {
            dirs.push(own);
        }
        let public = checkpoint::public_key_path(ws);
        if key_file.is_none() && public.exists() {
            key_file = Some(public);
        }
    }
    let public_key = key_file.as_deref().map(PublicKey::load).transpose()?;
    Ok(Anchors {
        checkpoint_dirs: dirs,
        manifests: args.manifest.clone(),
        public_key,
    })
}

fn write_verify_text(
    out: &mut impl Write,
    path: &Path,
    report: &FullReport,
    no_head: bool,
) -> std::io::Result<()> {
    let chain = &report.chain;
    match (&chain.problem, &chain.last) {
        (Some(p), _) => writeln!(out, "TAMPERED {}: {p}", path.display())?,
        (None, Some(last)) => writeln!(
            out,
            "ok {}: {} entries, chain intact{}; last entry seq {} hash {}",
            path.display(),
            chain.lines,
            if no_head {
                " (head file not checked)"
            } else {
                ", matches the head file"
            },
            last.seq,
            last.hash
        )?,
        (None, None) => writeln!(out, "ok {}: empty log", path.display())?,
    }
    for i in &chain.interrupted {
        writeln!(
            out,
            "interrupted {}: {i}; repaired and recorded at the next append or start",
            path.display()
        )?;
    }
    // A server writes a checkpoint every N entries: list them one by one only while
    // that stays readable; problems are always listed.
    let many = report.anchors.len() > 10;
    for a in &report.anchors {
        match &a.problem {
            Some(_) => writeln!(out, "TAMPERED {a}")?,
            None if !many => writeln!(out, "ok {a}")?,
            None => {}
        }
    }
    let held = report
        .anchors
        .iter()
        .filter(|a| a.problem.is_none())
        .count();
    if many {
        writeln!(
            out,
            "{held} of {} anchors (checkpoints and manifests) are held by the log",
            report.anchors.len()
        )?;
    }
    Ok(())
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
        audit::write_json_lines(&mut out, &chosen)
    } else {
        audit::write_table(&mut out, &chosen)
    };
    written.context("writing the entries to stdout")?;
    if !ctx.quiet && !args.json {
        eprintln!("tre: {} of {} entries shown", chosen.len(), entries.len());
    }
    Ok(ExitCode::SUCCESS)
}

fn run_checkpoint(args: CheckpointArgs, ctx: &Ctx) -> CmdResult {
    let ws = &args.workspace;
    let key = match (&args.key, args.new_key) {
        (Some(file), _) => CheckpointKey::load_file(file),
        (None, true) => CheckpointKey::generate_into(ws),
        (None, false) => CheckpointKey::load(ws),
    }
    .map_err(CmdError::classified)?;
    let public = PublicKey::load(&checkpoint::public_key_path(ws)).map_err(CmdError::classified)?;
    if key.public_key() != public {
        return Err(CmdError::Refused(anyhow!(
            "the checkpoint key's public half is not {}: checkpoints signed with it would \
             not verify",
            checkpoint::public_key_path(ws).display()
        )));
    }
    let log = AuditLog::in_workspace(ws).map_err(CmdError::classified)?;
    let dir = args
        .out
        .unwrap_or_else(|| checkpoint::workspace_checkpoint_dir(ws));
    let record =
        audit::write_checkpoint(&log, &key, &dir, &SystemClock).map_err(CmdError::classified)?;
    let path = dir.join(CheckpointRecord::file_name(record.seq));
    writeln!(std::io::stdout().lock(), "{}", path.display())
        .context("writing the checkpoint's path to stdout")?;
    if !ctx.quiet {
        eprintln!(
            "tre: signed seq {} hash {}; copy {} and {} off-host",
            record.seq,
            record.hash,
            dir.display(),
            checkpoint::public_key_path(ws).display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn run_follow(args: FollowArgs) -> CmdResult {
    loop {
        let r =
            audit::follow::follow_once(&args.workspace, &args.to).map_err(CmdError::classified)?;
        let mut out = std::io::stdout().lock();
        let time = SystemClock
            .now()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        if let Some(alert) = &r.alert {
            writeln!(out, "{time} ALERT {}: {alert}", args.workspace.display())
                .context("writing to stdout")?;
            return Err(CmdError::Refused(anyhow!(
                "the audit log of {} does not match its off-host checkpoints: {alert}",
                args.workspace.display()
            )));
        }
        writeln!(
            out,
            "{time} ok {}: {} new checkpoint(s) copied, newest seq {}",
            args.workspace.display(),
            r.copied.len(),
            r.newest
                .map_or_else(|| "none".to_string(), |s| s.to_string())
        )
        .context("writing to stdout")?;
        drop(out);
        if args.once {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(std::time::Duration::from_secs(args.interval.max(1)));
    }
}
