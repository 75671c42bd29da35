//! `tre extract`: one project's research extract.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::anyhow;
use chrono::NaiveDate;
use tre_pipeline::clock::{Clock, SystemClock};
use tre_pipeline::extract::{ExtractOptions, ExtractPlan, Manifest};
use tre_pipeline::optout::OptOutList;
use tre_pipeline::policy::Policy;
use tre_pipeline::pseudonym::ProjectKey;
use tre_pipeline::schema::SchemaSet;

use super::{CmdError, CmdResult, Ctx};

/// Run a research extract: remove opted-out patients, pseudonymise NHS numbers, keep only
/// what the project's policy allows, and write Parquet plus manifest.json.
///
/// Exit status: 0 done, 1 refused by a rule (stale opt-out list, weak key, policy
/// violation), 2 bad usage or unreadable input.
///
/// Examples:
///   tre extract --policy policies/demo.toml --input extract/ --opt-outs extract/opt_outs.txt \
///       --key-file project.key --out released/demo
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Project policy (TOML).
    #[arg(long)]
    pub policy: PathBuf,
    /// Directory holding <table>.csv or <table>.parquet for each table in the policy.
    #[arg(long)]
    pub input: PathBuf,
    /// National Data Opt-out list (one NHS number per line). Required unless the policy
    /// declares an exemption.
    #[arg(long)]
    pub opt_outs: Option<PathBuf>,
    /// The list's "as of" date (YYYY-MM-DD); default: the file's modification date.
    #[arg(long, value_parser = parse_date)]
    pub opt_outs_as_of: Option<NaiveDate>,
    /// Project key file (64 hex characters, mode 0600; see `tre keygen`).
    #[arg(long)]
    pub key_file: PathBuf,
    /// Output directory (must not exist or be empty, unless --overwrite).
    #[arg(long)]
    pub out: PathBuf,
    /// Quarantine directory for rejected rows (default: OUT.quarantine).
    #[arg(long)]
    pub quarantine: Option<PathBuf>,
    /// Replace the files an earlier extract wrote in OUT and the quarantine directory
    /// (only files its manifest or listing names; anything else is left alone).
    #[arg(long)]
    pub overwrite: bool,
    /// Accept an opt-out list with no entries (empty, blank or header only).
    #[arg(long)]
    pub allow_empty_opt_outs: bool,
    /// Worker threads (default: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// The longest CSV record read whole, in bytes. A longer record is quarantined as
    /// record_too_long (cut to its first 64 KiB, its length noted) and read past with
    /// flat memory.
    #[arg(long, default_value_t = tre_pipeline::ingest::MAX_RECORD_BYTES)]
    pub max_record_bytes: usize,
    /// The most fields in a CSV record. A record with more is quarantined as
    /// too_many_fields.
    #[arg(long, default_value_t = tre_pipeline::ingest::MAX_FIELDS)]
    pub max_fields: usize,
    /// Directory of table schemas (default: the built-in schemas/).
    #[arg(long)]
    pub schemas: Option<PathBuf>,
}

fn parse_date(s: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|_| format!("{s:?} is not a date (YYYY-MM-DD)"))
}

/// Load policy, key and opt-out list, refusing by the rules' exit codes.
pub fn load(args: &Args) -> Result<(SchemaSet, Policy, ProjectKey, Option<OptOutList>), CmdError> {
    let schemas = match &args.schemas {
        Some(d) => SchemaSet::load_dir(d).map_err(CmdError::classified)?,
        None => SchemaSet::builtin(),
    };
    let policy = Policy::load(&args.policy, &schemas).map_err(CmdError::classified)?;
    let key =
        tre_pipeline::key_file::load_project_key(&args.key_file).map_err(CmdError::classified)?;
    let opt_outs = match &args.opt_outs {
        Some(p) => Some(OptOutList::load(p, args.opt_outs_as_of).map_err(CmdError::classified)?),
        None => None,
    };
    Ok((schemas, policy, key, opt_outs))
}

/// Plan and run an extract with the given clock.
pub fn execute(args: &Args, ctx: &Ctx, clock: &dyn Clock) -> Result<Manifest, CmdError> {
    let (schemas, policy, key, opt_outs) = load(args)?;
    let mut options = ExtractOptions::new(&args.input, &args.out);
    options.quarantine_dir = args.quarantine.clone();
    options.overwrite = args.overwrite;
    options.allow_empty_opt_outs = args.allow_empty_opt_outs;
    options.threads = args.threads;
    options.csv_limits.max_record_bytes = args.max_record_bytes;
    options.csv_limits.max_fields = args.max_fields;
    options.progress = ctx.progress();
    let classify = CmdError::classified::<tre_pipeline::extract::ExtractError>;
    let plan =
        ExtractPlan::new(policy, key, opt_outs, &schemas, options, clock).map_err(classify)?;
    plan.run(clock).map_err(classify)
}

/// Print the per-table summary.
pub fn print_summary(m: &Manifest, out: &std::path::Path) {
    println!(
        "{:<16} {:>10} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "table", "read", "rejected", "ndoo", "type1", "filtered", "written"
    );
    for (name, t) in &m.tables {
        println!(
            "{:<16} {:>10} {:>9} {:>9} {:>9} {:>9} {:>10}",
            name,
            t.rows_read,
            t.rows_rejected,
            t.rows_removed_ndoo,
            t.rows_removed_type1,
            t.rows_filtered,
            t.rows_written
        );
    }
    println!(
        "outputs: {} (manifest.json; key fingerprint {})",
        out.display(),
        m.key_fingerprint
    );
}

/// Run.
pub fn run(args: Args, ctx: &Ctx) -> CmdResult {
    if args.max_record_bytes == 0 || args.max_fields == 0 {
        return Err(CmdError::Failed(anyhow!(
            "--max-record-bytes and --max-fields must be at least 1"
        )));
    }
    if args.threads > 1024 {
        return Err(CmdError::Failed(anyhow!(
            "--threads {} is not a sensible thread count",
            args.threads
        )));
    }
    keep_freed_chunks_mapped();
    // Never into a workspace (the path rules refuse one): a dataset enters the TRE by
    // `tre admin dataset add`, which is audited there.
    let m = execute(&args, ctx, &SystemClock)?;
    if !ctx.quiet {
        print_summary(&m, &args.out);
    }
    Ok(ExitCode::SUCCESS)
}

/// Allocator settings for the batch run. Every chunk allocates buffers of a few MiB (the
/// 4 MiB read, its pseudonym column, the encoder's pages); glibc's defaults mapped each
/// from the kernel, zero-filled it on first touch and returned it on free, which was a
/// tenth of an event-order extract's CPU (`benches/compare.sh`). Buffers under 32 MiB
/// now come from the heap and up to 32 MiB of freed heap waits for reuse; peak RSS stays
/// within the extract's bound (`benches/extract_memory.sh`) and no output byte changes.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn keep_freed_chunks_mapped() {
    // SAFETY: `mallopt` sets a glibc malloc tuning parameter under glibc's own locks; it
    // has no memory-safety precondition, and a refused value leaves the default.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20);
    }
}

/// Other C libraries keep their allocator defaults.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_chunks_mapped() {}
