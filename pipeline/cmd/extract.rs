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
/// The National Data Opt-out comes in one of two forms (exactly one is required, unless
/// the policy declares an exemption): --opt-outs, a deny-list of everyone who opted out,
/// or --ndoo-allow-list, the reply of the NHS "Check for National Data Opt-outs" service
/// (MESH) listing the submitted patients who may be used; everyone not on it is removed.
///
/// Examples:
///   tre extract --policy policies/demo.toml --input extract/ --opt-outs extract/opt_outs.txt \
///       --key-file project.key --out released/demo
///   tre extract --policy policies/demo.toml --input extract/ \
///       --ndoo-allow-list mesh/reply.dat --opt-outs-as-of 2026-01-09 \
///       --key-file project.key --out released/demo
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Project policy (TOML).
    #[arg(long)]
    pub policy: PathBuf,
    /// Directory holding <table>.csv or <table>.parquet for each table in the policy.
    #[arg(long)]
    pub input: PathBuf,
    /// National Data Opt-out deny-list (one NHS number per line): everyone on it is
    /// removed. This or --ndoo-allow-list is required unless the policy declares an
    /// exemption.
    #[arg(long)]
    pub opt_outs: Option<PathBuf>,
    /// National Data Opt-out allow-list: the "Check for National Data Opt-outs" service's
    /// reply, one 10-digit NHS number and a comma per line (`9434765919,`), LF endings.
    /// Every patient NOT on it is removed. Refused: an empty file, a header, the service's
    /// reply listing invalid NHS numbers, CR LF endings, a missing comma, spaces, a number
    /// failing Modulus 11. Cannot be combined with --opt-outs.
    #[arg(long, conflicts_with_all = ["opt_outs", "allow_empty_opt_outs"])]
    pub ndoo_allow_list: Option<PathBuf>,
    /// The opt-out list's "as of" date (YYYY-MM-DD), for either form; default: the
    /// file's modification date. The policy's max_age_days applies.
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
    /// Accept an opt-out deny-list with no entries (empty, blank or header only). An
    /// allow-list with no entries is always refused.
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
    /// Compute the pseudonyms on the DataFusion Ballista cluster of this scheduler
    /// (HOST:PORT; `tre cluster`), on its executors started --trusted with this project's
    /// key. Everything else runs here, and the output is the same bytes. Needs a build
    /// with the `cluster` feature.
    #[arg(long, value_name = "HOST:PORT")]
    pub scheduler: Option<String>,
    /// With --scheduler: a directory the executors read at the same path, for the files of
    /// NHS numbers sent to them (created owner-only; default: a private directory under
    /// the system's temporary directory).
    #[arg(long, requires = "scheduler")]
    pub cluster_scratch: Option<PathBuf>,
    /// With --scheduler: give up (and write no manifest) when the cluster has not
    /// returned one chunk's pseudonyms within this many seconds.
    #[arg(long, default_value_t = 600, requires = "scheduler")]
    pub cluster_timeout: u64,
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
    // clap refuses both together; the plan refuses neither without an exemption.
    let opt_outs = match (&args.opt_outs, &args.ndoo_allow_list) {
        (Some(p), _) => Some(OptOutList::load(p, args.opt_outs_as_of)),
        (None, Some(p)) => Some(OptOutList::load_allow(p, args.opt_outs_as_of)),
        (None, None) => None,
    }
    .transpose()
    .map_err(CmdError::classified)?;
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
    if let Some(s) = &args.scheduler {
        let (scratch, timeout) = (args.cluster_scratch.as_deref(), args.cluster_timeout);
        options.pseudonyms = Some(cluster_pseudonyms(s, &key, scratch, timeout)?);
    }
    let classify = CmdError::classified::<tre_pipeline::extract::ExtractError>;
    let plan =
        ExtractPlan::new(policy, key, opt_outs, &schemas, options, clock).map_err(classify)?;
    plan.run(clock).map_err(classify)
}

/// The cluster's pseudonym stage for `key`'s project (only its fingerprint is sent).
#[cfg(feature = "cluster")]
fn cluster_pseudonyms(
    scheduler: &str,
    key: &ProjectKey,
    scratch: Option<&std::path::Path>,
    timeout_seconds: u64,
) -> Result<std::sync::Arc<dyn tre_pipeline::pseudonym::PseudonymService>, CmdError> {
    let scratch = scratch.map(PathBuf::from).unwrap_or_else(|| {
        std::env::temp_dir().join(format!("tre-cluster-{}", std::process::id()))
    });
    let p = tre_pipeline::cluster::remote::ClusterPseudonyms::connect(
        scheduler,
        &key.fingerprint(),
        &scratch,
        std::time::Duration::from_secs(timeout_seconds.max(1)),
    )
    .map_err(CmdError::classified)?;
    Ok(std::sync::Arc::new(p))
}

/// Without the `cluster` feature, --scheduler is refused.
#[cfg(not(feature = "cluster"))]
fn cluster_pseudonyms(
    _scheduler: &str,
    _key: &ProjectKey,
    _scratch: Option<&std::path::Path>,
    _timeout_seconds: u64,
) -> Result<std::sync::Arc<dyn tre_pipeline::pseudonym::PseudonymService>, CmdError> {
    Err(CmdError::classified(
        tre_pipeline::cluster::ClusterError::NotBuilt,
    ))
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
