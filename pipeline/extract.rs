//! The extract: one project's research dataset from a GP extract, end to end.
//!
//! Owns the order of the flow and the accounting: for each table the policy names,
//! ingest → NHS number check → opt-outs (National Data Opt-out, then Type 1) → row
//! filters → minimise/pseudonymise → atomic Parquet, with rejected rows to the
//! quarantine; then `manifest.json`, last. Chunks are parsed and transformed in parallel
//! (rayon, through [`crate::ordered`]) while the next chunk is read, and appended in input
//! order as Parquet row groups encoded by the workers, so outputs are identical whatever
//! the thread count and memory stays bounded by a window of chunks. Danger:
//! this is where every rule of the product meets; everything that can be checked is
//! checked before the first byte is written, every input row is counted exactly once,
//! and any failure leaves no `manifest.json`, so nothing half-written looks complete.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow::array::{Array, BooleanArray, Date32Array, StringArray, UInt64Array};
use arrow::datatypes::SchemaRef;
use serde::Serialize;

use crate::clock::Clock;
use crate::durable::{FileRecord, Mode, write_atomic};
use crate::ingest::{
    self, CsvChunker, IngestError, InputFile, ParquetInput, Parsed, RawChunk, Rejected,
};
use crate::optout::{OptOutList, OptOutSet, Type1Tracker};
use crate::ordered::ordered_map;
use crate::output::{EncodedRowGroup, OutputError, QuarantineSink, RowGroupEncoder, RowGroupSink};
use crate::policy::{Exemption, Policy, TablePolicy};
use crate::pseudonym::{ProjectKey, Pseudonymiser};
use crate::schema::TableSchema;
use crate::transform::{self, TransformBug};

/// Why an extract did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// Refused by a rule: nothing was written.
    #[error("{0}")]
    Refused(String),
    /// Bad usage (e.g. an existing output directory).
    #[error("{0}")]
    Usage(String),
    /// An input file is unusable.
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// Writing failed; the run was aborted and no manifest was written.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// A bug.
    #[error(transparent)]
    Bug(#[from] TransformBug),
}

impl crate::error::Classify for ExtractError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            ExtractError::Refused(_) => ErrorKind::Refused,
            _ => ErrorKind::Failed,
        }
    }
}

/// Options of a run that are not in the policy.
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// Directory holding `<table>.csv` or `<table>.parquet`.
    pub input_dir: PathBuf,
    /// Output directory.
    pub out_dir: PathBuf,
    /// Quarantine directory (default: `OUT.quarantine`).
    pub quarantine_dir: Option<PathBuf>,
    /// Replace an existing non-empty output directory.
    pub overwrite: bool,
    /// Worker threads for parsing and transforming (0: all cores).
    pub threads: usize,
    /// Size of a raw CSV chunk.
    pub chunk_bytes: usize,
    /// Draw progress bars on stderr.
    pub progress: bool,
}

impl ExtractOptions {
    /// Defaults for the given directories.
    pub fn new(input_dir: impl Into<PathBuf>, out_dir: impl Into<PathBuf>) -> Self {
        ExtractOptions {
            input_dir: input_dir.into(),
            out_dir: out_dir.into(),
            quarantine_dir: None,
            overwrite: false,
            threads: 0,
            chunk_bytes: ingest::DEFAULT_CHUNK_BYTES,
            progress: false,
        }
    }

    /// The quarantine directory: the given one, or `OUT.quarantine`.
    pub fn quarantine(&self) -> PathBuf {
        self.quarantine_dir.clone().unwrap_or_else(|| {
            let mut s = self.out_dir.as_os_str().to_owned();
            s.push(".quarantine");
            PathBuf::from(s)
        })
    }
}

/// A file read by the run.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct InputRecord {
    /// Path as given.
    pub path: String,
    /// SHA-256 of its bytes.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// An output file in a table's entry.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct OutputRecord {
    /// Path relative to the output directory.
    pub path: String,
    /// SHA-256.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// One table's accounting. `rows_read = rows_rejected + rows_removed_ndoo +
/// rows_removed_type1 + rows_filtered + rows_written`.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct TableReport {
    /// The input file(s).
    pub inputs: Vec<InputRecord>,
    /// Rows read.
    pub rows_read: u64,
    /// Rows sent to quarantine.
    pub rows_rejected: u64,
    /// Rejected rows by reason.
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// Rows removed for the National Data Opt-out.
    pub rows_removed_ndoo: u64,
    /// Rows removed for a Type 1 dissent (and not also on the NDOO list).
    pub rows_removed_type1: u64,
    /// Rows left out by the policy's row filters.
    pub rows_filtered: u64,
    /// Rows written.
    pub rows_written: u64,
    /// Rows of opted-out patients kept under a declared exemption.
    pub rows_kept_under_exemption: u64,
    /// The output file.
    pub output: Option<OutputRecord>,
    /// The quarantine file, if rows were rejected.
    pub quarantine: Option<OutputRecord>,
}

impl TableReport {
    /// Whether the accounting equation holds.
    pub fn balances(&self) -> bool {
        self.rows_read
            == self.rows_rejected
                + self.rows_removed_ndoo
                + self.rows_removed_type1
                + self.rows_filtered
                + self.rows_written
    }
}

/// The opt-out list used.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct OptOutRecord {
    /// The list's as-of date (`None` when exempt and no list was given).
    pub as_of: Option<String>,
    /// SHA-256 of the list.
    pub sha256: Option<String>,
    /// Entries on the list.
    pub entries: u64,
    /// The declared exemption, if any.
    pub exemption: Option<serde_json::Value>,
}

/// Type 1 handling.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Type1Record {
    /// Patients whose latest Type 1 code is a dissent.
    pub dissenters: u64,
    /// SHA-256 of the codelist used.
    pub codelist_sha256: String,
    /// The declared exemption, if any.
    pub exemption: Option<serde_json::Value>,
}

/// `manifest.json`: the record of one extract, written last.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Manifest {
    /// Manifest format.
    pub format: String,
    /// Version of tre.
    pub tool_version: String,
    /// Project id.
    pub project: String,
    /// Purpose (from the policy).
    pub purpose: String,
    /// SHA-256 of the policy file.
    pub policy_sha256: String,
    /// Fingerprint of the project key.
    pub key_fingerprint: String,
    /// National Data Opt-out list.
    pub opt_outs: OptOutRecord,
    /// Type 1 opt-outs.
    pub type1: Type1Record,
    /// Start time (RFC 3339).
    pub started_at: String,
    /// End time (RFC 3339).
    pub finished_at: String,
    /// Per table accounting.
    pub tables: BTreeMap<String, TableReport>,
    /// Every file in the output directory except the manifest.
    pub files: Vec<FileRecord>,
    /// Later purges of newly opted-out patients (`tre purge`); their rows are counted in
    /// `rows_removed_ndoo`, so the accounting equation still holds.
    #[serde(default)]
    pub purges: Vec<PurgeRecord>,
}

/// One `tre purge` applied to an extract.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PurgeRecord {
    /// When.
    pub at: String,
    /// The opt-out list's as-of date.
    pub opt_outs_as_of: String,
    /// SHA-256 of the list.
    pub opt_outs_sha256: String,
    /// Rows removed per table.
    pub rows_removed: BTreeMap<String, u64>,
}

/// Everything a run needs, validated.
#[derive(Debug)]
pub struct ExtractPlan {
    policy: Policy,
    key: ProjectKey,
    opt_outs: Option<OptOutList>,
    inputs: Vec<(TablePolicy, InputFile)>,
    type1_source: Option<(TableSchema, InputFile)>,
    options: ExtractOptions,
}

fn exemption_json(e: &Option<Exemption>) -> Option<serde_json::Value> {
    e.as_ref().and_then(|e| serde_json::to_value(e).ok())
}

impl ExtractPlan {
    /// Check everything that can be checked before writing: opt-out list present and
    /// fresh (unless exempt), inputs present with matching headers, output directory.
    pub fn new(
        policy: Policy,
        key: ProjectKey,
        opt_outs: Option<OptOutList>,
        schemas: &crate::schema::SchemaSet,
        options: ExtractOptions,
        clock: &dyn Clock,
    ) -> Result<Self, ExtractError> {
        let today = clock.today();
        match (&opt_outs, &policy.opt_outs.ndoo_exemption) {
            (None, None) => {
                return Err(ExtractError::Refused(
                    "the National Data Opt-out list is required (--opt-outs FILE); only a policy declaring a lawful exemption may run without it".into(),
                ));
            }
            (Some(l), _) => l
                .check_fresh(today, policy.opt_outs.max_age_days)
                .map_err(|e| ExtractError::Refused(e.to_string()))?,
            (None, Some(_)) => {}
        }
        let mut inputs = Vec::new();
        for t in &policy.tables {
            if t.schema.nhs_number_index().is_none()
                && (policy.opt_outs.ndoo_exemption.is_none()
                    || policy.opt_outs.type1_exemption.is_none())
            {
                return Err(ExtractError::Refused(format!(
                    "table {} has no nhs_number column, so opt-outs cannot be applied to it",
                    t.name()
                )));
            }
            let f = InputFile::locate(&options.input_dir, t.name())?;
            open_check(&f, &t.schema)?;
            inputs.push((t.clone(), f));
        }
        let type1_source = if policy.opt_outs.type1_exemption.is_some() {
            None
        } else {
            let mut found = None;
            for s in schemas.tables().filter(|s| s.type1_codes.is_some()) {
                match InputFile::locate(&options.input_dir, &s.name) {
                    Ok(f) => {
                        open_check(&f, s)?;
                        found = Some((s.clone(), f));
                        break;
                    }
                    Err(IngestError::Missing { .. }) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            if found.is_none() {
                return Err(ExtractError::Refused(format!(
                    "Type 1 opt-outs cannot be checked: no input in {} for a table that records them ({}); supply it or declare a type1_exemption",
                    options.input_dir.display(),
                    schemas
                        .tables()
                        .filter(|s| s.type1_codes.is_some())
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            found
        };
        let out = &options.out_dir;
        let quarantine = options.quarantine();
        let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        if abs(&quarantine).starts_with(abs(out)) {
            return Err(ExtractError::Usage(format!(
                "quarantine directory {} must not be inside the output directory {}",
                quarantine.display(),
                out.display()
            )));
        }
        if abs(out) == abs(&options.input_dir) {
            return Err(ExtractError::Usage(
                "the output directory must differ from the input directory".into(),
            ));
        }
        if let Ok(mut rd) = std::fs::read_dir(out)
            && rd.next().is_some()
            && !options.overwrite
        {
            return Err(ExtractError::Usage(format!(
                "output directory {} exists and is not empty; choose a new one or pass --overwrite",
                out.display()
            )));
        }
        Ok(ExtractPlan {
            policy,
            key,
            opt_outs,
            inputs,
            type1_source,
            options,
        })
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Run the extract. On error, no manifest exists in the output directory.
    pub fn run(&self, clock: &dyn Clock) -> Result<Manifest, ExtractError> {
        let started_at = clock.now();
        let out = &self.options.out_dir;
        let quarantine = self.options.quarantine();
        prepare_dir(out, self.options.overwrite, false)?;
        prepare_dir(&quarantine, self.options.overwrite, true)?;
        let threads = if self.options.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.options.threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| {
                ExtractError::Usage(format!("cannot start {threads} worker threads: {e}"))
            })?;
        let progress = Progress::new(self.options.progress);

        let ndoo = match (&self.opt_outs, &self.policy.opt_outs.ndoo_exemption) {
            (Some(l), _) => l.set.clone(),
            (None, _) => OptOutSet::default(),
        };
        let codelist = &self.policy.opt_outs.type1_codelist;
        let type1 = match &self.type1_source {
            Some((schema, file)) => {
                let bar = progress.bar(file, &format!("{} (Type 1 scan)", schema.name));
                let t = scan_type1(
                    &pool,
                    schema,
                    file,
                    codelist,
                    self.options.chunk_bytes,
                    &bar,
                )?;
                bar.finish_and_clear();
                t.dissenters()
            }
            None => OptOutSet::default(),
        };
        let ctx = Filters {
            ndoo: &ndoo,
            ndoo_exempt: self.policy.opt_outs.ndoo_exemption.is_some(),
            type1: &type1,
            type1_exempt: self.policy.opt_outs.type1_exemption.is_some(),
            pseudonymiser: self.key.pseudonymiser(),
        };

        let mut tables = BTreeMap::new();
        let mut files = Vec::new();
        for (table, input) in &self.inputs {
            let bar = progress.bar(input, table.name());
            let report = self.run_table(&pool, table, input, &ctx, out, &quarantine, &bar)?;
            bar.finish_and_clear();
            if let Some(o) = &report.output {
                files.push(FileRecord {
                    path: o.path.clone(),
                    size: o.bytes,
                    sha256: o.sha256.clone(),
                });
            }
            if !report.balances() {
                return Err(ExtractError::Bug(TransformBug::accounting(table.name())));
            }
            tables.insert(table.name().to_string(), report);
        }
        let finished_at = clock.now();
        let manifest = Manifest {
            format: "tre-extract-manifest/1".into(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            project: self.policy.project.id.clone(),
            purpose: self.policy.project.purpose.clone(),
            policy_sha256: self.policy.sha256.clone(),
            key_fingerprint: self.key.fingerprint(),
            opt_outs: OptOutRecord {
                as_of: self.opt_outs.as_ref().map(|l| l.as_of.to_string()),
                sha256: self.opt_outs.as_ref().map(|l| l.sha256.clone()),
                entries: self.opt_outs.as_ref().map_or(0, |l| l.entries),
                exemption: exemption_json(&self.policy.opt_outs.ndoo_exemption),
            },
            type1: Type1Record {
                dissenters: type1.len() as u64,
                codelist_sha256: codelist.sha256.clone(),
                exemption: exemption_json(&self.policy.opt_outs.type1_exemption),
            },
            started_at: started_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            finished_at: finished_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            tables,
            files,
            purges: Vec::new(),
        };
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| OutputError::Io {
            path: out.join("manifest.json"),
            source: std::io::Error::other(e),
        })?;
        write_atomic(&out.join("manifest.json"), &json, Mode::Shared).map_err(OutputError::from)?;
        Ok(manifest)
    }

    // The stage's inputs are independent borrowed pieces of the plan.
    #[allow(clippy::too_many_arguments)]
    fn run_table(
        &self,
        pool: &rayon::ThreadPool,
        table: &TablePolicy,
        input: &InputFile,
        ctx: &Filters<'_>,
        out: &Path,
        quarantine: &Path,
        bar: &indicatif::ProgressBar,
    ) -> Result<TableReport, ExtractError> {
        let schema = transform::output_schema(table);
        let out_path = out.join(format!("{}.parquet", table.name()));
        let q_path = quarantine.join(format!("{}.csv", table.name()));
        let columns: Vec<String> = table
            .schema
            .columns
            .iter()
            .map(|c| c.name.clone())
            .collect();
        let mut writer = TableWriter {
            sink: RowGroupSink::create(&out_path, schema.clone())?,
            quarantine: None,
            q_path: &q_path,
            columns: &columns,
            report: TableReport::default(),
            bar,
        };
        let encoder = writer.sink.encoder(schema.clone());
        let window = chunks_in_flight(pool);
        let work = |parsed: Parsed| process(parsed, table, ctx, &schema, &encoder);
        let input_record = match input {
            InputFile::Csv(p) => {
                let mut chunker = CsvChunker::open(p, &table.schema, self.options.chunk_bytes)?;
                let field_map = chunker.field_map.clone();
                ordered_map(
                    pool,
                    window,
                    || Ok(chunker.next_chunk()?),
                    |c: RawChunk| {
                        let n = c.bytes.len() as u64;
                        Ok((
                            work(ingest::parse_csv_chunk(&c, &table.schema, &field_map))?,
                            n,
                        ))
                    },
                    |(p, n)| writer.append(p, n),
                    || worker_panicked(table.name()),
                )?;
                match chunker.finish_hash() {
                    Some((sha256, bytes)) => InputRecord {
                        path: p.to_string_lossy().into_owned(),
                        sha256,
                        bytes,
                    },
                    None => hash_input(p)?,
                }
            }
            InputFile::Parquet(p) => {
                let mut reader = ParquetInput::open(p, &table.schema, 64 * 1024)?;
                ordered_map(
                    pool,
                    window,
                    || Ok(reader.next_batch()?),
                    |(b, first)| {
                        let parsed = ingest::parse_arrow_batch(&b, &table.schema, first);
                        Ok((work(parsed)?, 0))
                    },
                    |(p, n)| writer.append(p, n),
                    || worker_panicked(table.name()),
                )?;
                hash_input(p)?
            }
        };
        let mut report = writer.finish(&out_path)?;
        report.inputs = vec![input_record];
        Ok(report)
    }
}

/// How many chunks may be read ahead, being processed or waiting to be written: enough to
/// keep every worker busy while one chunk is read and one appended; this bounds memory.
fn chunks_in_flight(pool: &rayon::ThreadPool) -> usize {
    pool.current_num_threads().max(1) * 2 + 1
}

fn worker_panicked(table: &str) -> ExtractError {
    ExtractError::Output(OutputError::Io {
        path: PathBuf::from(format!("{table}.parquet")),
        source: std::io::Error::other("a worker thread panicked"),
    })
}

/// Fails the run on a Parquet/CSV header mismatch before anything is written.
fn open_check(f: &InputFile, schema: &TableSchema) -> Result<(), IngestError> {
    match f {
        InputFile::Csv(p) => CsvChunker::open(p, schema, 1 << 16).map(|_| ()),
        InputFile::Parquet(p) => ParquetInput::open(p, schema, 1024).map(|_| ()),
    }
}

fn hash_input(path: &Path) -> Result<InputRecord, ExtractError> {
    let (sha256, bytes) = crate::digest::sha256_file(path).map_err(|source| IngestError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(InputRecord {
        path: path.to_string_lossy().into_owned(),
        sha256,
        bytes,
    })
}

/// Make `dir` exist and be empty; with `overwrite`, remove the old manifest first so a
/// crash mid-way never leaves an old manifest beside new files.
fn prepare_dir(dir: &Path, overwrite: bool, private: bool) -> Result<(), ExtractError> {
    let io = |source| OutputError::Io {
        path: dir.to_path_buf(),
        source,
    };
    if dir.exists() {
        let manifest = dir.join("manifest.json");
        if manifest.exists() {
            std::fs::remove_file(&manifest).map_err(io)?;
            crate::durable::fsync_parent(&manifest).map_err(io)?;
        }
        if overwrite {
            for e in std::fs::read_dir(dir).map_err(io)? {
                let p = e.map_err(io)?.path();
                if p.is_dir() {
                    std::fs::remove_dir_all(&p).map_err(io)?;
                } else {
                    std::fs::remove_file(&p).map_err(io)?;
                }
            }
        }
    } else {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    let _ = private;
    crate::durable::fsync_parent(&dir.join("x")).map_err(io)?;
    Ok(())
}

struct Filters<'a> {
    ndoo: &'a OptOutSet,
    ndoo_exempt: bool,
    type1: &'a OptOutSet,
    type1_exempt: bool,
    pseudonymiser: Pseudonymiser,
}

/// One chunk's result.
struct Processed {
    group: EncodedRowGroup,
    rejected: Vec<Rejected>,
    report: TableReport,
}

/// Opt-outs, row filters and minimisation for one parsed chunk.
fn process(
    parsed: Parsed,
    table: &TablePolicy,
    ctx: &Filters<'_>,
    schema: &SchemaRef,
    encoder: &RowGroupEncoder,
) -> Result<Processed, ExtractError> {
    let Parsed {
        batch,
        rejected,
        rows_read,
    } = parsed;
    let mut report = TableReport {
        rows_read,
        rows_rejected: rejected.len() as u64,
        ..Default::default()
    };
    for r in &rejected {
        *report
            .rejected_by_reason
            .entry(r.reason.to_string())
            .or_default() += 1;
    }
    let n = batch.num_rows();
    let mut keep = vec![true; n];
    if let Some(ni) = table.schema.nhs_number_index()
        && let Some(nhs) = batch.column(ni).as_any().downcast_ref::<UInt64Array>()
    {
        // Rows come clustered by patient: look each run of one number up once.
        let mut last: Option<(u64, bool, bool)> = None;
        for (i, k) in keep.iter_mut().enumerate() {
            if nhs.is_null(i) {
                continue;
            }
            let v = nhs.value(i);
            let (on_ndoo, on_type1) = match last {
                Some((p, a, b)) if p == v => (a, b),
                _ => {
                    let hit = (ctx.ndoo.contains(v), ctx.type1.contains(v));
                    last = Some((v, hit.0, hit.1));
                    hit
                }
            };
            if on_ndoo {
                if ctx.ndoo_exempt {
                    report.rows_kept_under_exemption += 1;
                } else {
                    report.rows_removed_ndoo += 1;
                    *k = false;
                }
            } else if on_type1 {
                if ctx.type1_exempt {
                    report.rows_kept_under_exemption += 1;
                } else {
                    report.rows_removed_type1 += 1;
                    *k = false;
                }
            }
        }
    }
    if let Some(mask) = transform::row_filter_mask(&batch, table)? {
        for (i, k) in keep.iter_mut().enumerate() {
            if *k && !mask.value(i) {
                *k = false;
                report.rows_filtered += 1;
            }
        }
    }
    let kept = if keep.iter().all(|k| *k) {
        batch
    } else {
        arrow::compute::filter_record_batch(&batch, &BooleanArray::from(keep))
            .map_err(|e| TransformBug::arrow("filter", &e))?
    };
    let out = transform::minimise(&kept, table, &ctx.pseudonymiser, schema)?;
    report.rows_written = out.num_rows() as u64;
    Ok(Processed {
        group: encoder.encode(&out)?,
        rejected,
        report,
    })
}

fn merge(into: &mut TableReport, r: &TableReport) {
    into.rows_read += r.rows_read;
    into.rows_rejected += r.rows_rejected;
    into.rows_removed_ndoo += r.rows_removed_ndoo;
    into.rows_removed_type1 += r.rows_removed_type1;
    into.rows_filtered += r.rows_filtered;
    into.rows_written += r.rows_written;
    into.rows_kept_under_exemption += r.rows_kept_under_exemption;
    for (k, v) in &r.rejected_by_reason {
        *into.rejected_by_reason.entry(k.clone()).or_default() += v;
    }
}

/// The in-order end of a table's pipeline: appends row groups and quarantined rows and
/// sums the accounting.
struct TableWriter<'a> {
    sink: RowGroupSink,
    quarantine: Option<QuarantineSink>,
    q_path: &'a Path,
    columns: &'a [String],
    report: TableReport,
    bar: &'a indicatif::ProgressBar,
}

impl TableWriter<'_> {
    fn append(&mut self, p: Processed, input_bytes: u64) -> Result<(), ExtractError> {
        self.sink.append(p.group)?;
        if !p.rejected.is_empty() {
            if self.quarantine.is_none() {
                self.quarantine = Some(QuarantineSink::create(self.q_path, self.columns)?);
            }
            if let Some(q) = self.quarantine.as_mut() {
                q.write(&p.rejected)?;
            }
        }
        merge(&mut self.report, &p.report);
        self.bar.inc(input_bytes);
        Ok(())
    }

    fn finish(self, out_path: &Path) -> Result<TableReport, ExtractError> {
        let mut report = self.report;
        let (rec, _) = self.sink.finish()?;
        report.output = Some(OutputRecord {
            path: out_path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            sha256: rec.sha256,
            bytes: rec.size,
        });
        if let Some(q) = self.quarantine {
            let (rec, _) = q.finish()?;
            report.quarantine = Some(OutputRecord {
                path: rec.path,
                sha256: rec.sha256,
                bytes: rec.size,
            });
        }
        Ok(report)
    }
}

/// First pass over the Type 1 table: every patient's latest Type 1 code. For CSV, only
/// lines that contain a Type 1 code are parsed.
fn scan_type1(
    pool: &rayon::ThreadPool,
    schema: &TableSchema,
    file: &InputFile,
    codelist: &crate::optout::Type1Codelist,
    chunk_bytes: usize,
    bar: &indicatif::ProgressBar,
) -> Result<Type1Tracker, ExtractError> {
    let Some(cols) = &schema.type1_codes else {
        return Ok(Type1Tracker::default());
    };
    let (Some(ci), Some(di), Some(ni)) = (
        schema.column_index(&cols.code),
        schema.column_index(&cols.date),
        schema.nhs_number_index(),
    ) else {
        return Ok(Type1Tracker::default());
    };
    let mut tracker = Type1Tracker::default();
    let mut observe = |p: &Parsed| {
        if let (Some(n), Some(d), Some(c)) = (
            p.batch.column(ni).as_any().downcast_ref::<UInt64Array>(),
            p.batch.column(di).as_any().downcast_ref::<Date32Array>(),
            p.batch.column(ci).as_any().downcast_ref::<StringArray>(),
        ) {
            tracker.observe_arrays(codelist, n, d, c);
        }
        observe_rejected_dissent(&mut tracker, &p.rejected, schema, codelist);
    };
    let window = chunks_in_flight(pool);
    let panicked = || worker_panicked(&schema.name);
    match file {
        InputFile::Csv(p) => {
            let mut chunker = CsvChunker::open(p, schema, chunk_bytes)?.without_hash();
            let field_map = chunker.field_map.clone();
            // One SIMD substring search per code (memmem's rare-byte pairs beat a
            // multi-pattern automaton here: the codes start with digits, which are
            // everywhere in an events file).
            let finders: Vec<memchr::memmem::Finder<'static>> = codelist
                .codes()
                .map(|c| memchr::memmem::Finder::new(c.as_bytes()).into_owned())
                .collect();
            ordered_map(
                pool,
                window,
                || Ok(chunker.next_chunk()?),
                |c: RawChunk| {
                    let n = c.bytes.len() as u64;
                    let lines = type1_lines(&c.bytes, &finders);
                    if lines.is_empty() {
                        return Ok((None, n));
                    }
                    let mut sub = Vec::new();
                    for (s, e) in lines {
                        sub.extend_from_slice(&c.bytes[s..e]);
                        sub.push(b'\n');
                    }
                    let parsed = ingest::parse_csv_chunk(
                        &RawChunk {
                            bytes: sub,
                            first_line: 0,
                        },
                        schema,
                        &field_map,
                    );
                    // A Type 1 line that did not parse on its own (e.g. a quoted newline
                    // split it): parse the whole chunk instead.
                    let split = parsed
                        .rejected
                        .iter()
                        .any(|r| r.reason == "wrong_column_count" || r.reason == "unparsable_date");
                    if split {
                        return Ok((Some(ingest::parse_csv_chunk(&c, schema, &field_map)), n));
                    }
                    Ok((Some(parsed), n))
                },
                |(parsed, n)| {
                    if let Some(p) = parsed {
                        observe(&p);
                    }
                    bar.inc(n);
                    Ok::<(), ExtractError>(())
                },
                panicked,
            )?;
        }
        InputFile::Parquet(p) => {
            let mut reader = ParquetInput::open(p, schema, 64 * 1024)?;
            ordered_map(
                pool,
                window,
                || Ok(reader.next_batch()?),
                |(b, first)| Ok(ingest::parse_arrow_batch(&b, schema, first)),
                |parsed| {
                    observe(&parsed);
                    Ok::<(), ExtractError>(())
                },
                panicked,
            )?;
        }
    }
    Ok(tracker)
}

/// A row rejected for an unparsable date that carries a dissent code and a valid NHS
/// number still counts as a dissent (fail closed), dated "latest".
fn observe_rejected_dissent(
    tracker: &mut Type1Tracker,
    rejected: &[Rejected],
    schema: &TableSchema,
    codelist: &crate::optout::Type1Codelist,
) {
    let Some(cols) = &schema.type1_codes else {
        return;
    };
    let (Some(ci), Some(ni)) = (schema.column_index(&cols.code), schema.nhs_number_index()) else {
        return;
    };
    for r in rejected {
        if r.fields.len() != schema.columns.len() {
            continue;
        }
        let code = std::str::from_utf8(&r.fields[ci]).unwrap_or("");
        if codelist.kind(code) == Some(crate::optout::Type1Kind::Dissent)
            && let Ok(n) = crate::nhs_number::parse_bytes(&r.fields[ni])
        {
            tracker.observe(n.get(), None, crate::optout::Type1Kind::Dissent);
        }
    }
}

/// Byte ranges of the lines in `buf` that contain any of the codes.
fn type1_lines(buf: &[u8], finders: &[memchr::memmem::Finder<'_>]) -> Vec<(usize, usize)> {
    let mut hits: Vec<usize> = finders.iter().flat_map(|f| f.find_iter(buf)).collect();
    hits.sort_unstable();
    let mut lines: Vec<(usize, usize)> = Vec::new();
    for h in hits {
        if lines.last().is_some_and(|&(_, e)| h < e) {
            continue;
        }
        let s = memchr::memrchr(b'\n', &buf[..h]).map_or(0, |p| p + 1);
        let e = memchr::memchr(b'\n', &buf[h..]).map_or(buf.len(), |p| h + p);
        lines.push((s, e));
    }
    lines
}

struct Progress {
    enabled: bool,
}

impl Progress {
    fn new(enabled: bool) -> Self {
        Progress { enabled }
    }

    fn bar(&self, input: &InputFile, label: &str) -> indicatif::ProgressBar {
        if !self.enabled {
            return indicatif::ProgressBar::hidden();
        }
        let len = std::fs::metadata(input.path()).map_or(0, |m| m.len());
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(len),
            indicatif::ProgressDrawTarget::stderr(),
        );
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg:28} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(label.to_string());
        bar
    }
}
