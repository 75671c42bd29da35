//! `tre generate`: realistic synthetic GP extracts for development, tests and benchmarks.
//!
//! Owns making a complete extract for every table in a [`SchemaSet`] (CSV or Parquet, one
//! file per table) and its matching National Data Opt-out list (`opt_outs.txt`), with a
//! known small share of the faults real extracts have: invalid and missing NHS numbers,
//! malformed rows, and Type 1 dissent/withdrawal codes in `clinical_events`. The same
//! config gives the same bytes on any machine and any thread count: patients are made in
//! fixed chunks of [`CHUNK_PATIENTS`], each from its own random stream, in parallel, and
//! written in order, a bounded window at a time, so memory stays flat at any size.
//!
//! Danger: the output looks like patient data but must never contain any. NHS numbers
//! come only from ranges beginning with 9, never issued to patients (see `nhs`), names
//! and places are drawn from short public lists, and nothing is read from real data.
//! This module never prints or logs a generated value.

mod format;
mod model;
mod nhs;
mod order;
mod reference;
mod rng;
mod sink;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{Datelike, NaiveDate};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use rayon::prelude::*;

use crate::durable::{AtomicFile, Mode};
use crate::schema::SchemaSet;
use model::{ChunkOut, OptOutStats, TablePlan, TableStats, World, generate_chunk};
use reference::Reference;
use sink::{ArrowSink, CsvSink, Sink};

/// Patients per chunk. Part of the determinism contract: changing it changes the bytes.
pub const CHUNK_PATIENTS: u64 = 10_000;

/// File name of the generated opt-out list.
pub const OPT_OUTS_FILE: &str = "opt_outs.txt";

/// Errors generating an extract.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// A config value is out of range.
    #[error("invalid generate option {option}: {message}")]
    InvalidConfig {
        /// The option (as on the command line, without dashes).
        option: &'static str,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// More patients than there are synthetic NHS numbers.
    #[error("cannot generate {requested} patients: at most {max} have synthetic NHS numbers")]
    TooManyPatients {
        /// Patients asked for.
        requested: u64,
        /// The most that can be numbered.
        max: u64,
    },
    /// Writing an output file failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Encoding a Parquet file failed.
    #[error("cannot write Parquet file {path}: {source}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: parquet::errors::ParquetError,
    },
    /// Building an Arrow batch failed (a bug: the generator produced mismatched columns).
    #[error("bug: generated batch for table {table} is inconsistent: {source}")]
    Arrow {
        /// The table.
        table: String,
        /// The underlying error.
        source: arrow::error::ArrowError,
    },
    /// Compiled-in reference data is invalid (a bug in this build, not a user error).
    #[error("bug: {message}")]
    Bug {
        /// What is wrong.
        message: String,
    },
}

impl crate::error::Classify for GenerateError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            GenerateError::InvalidConfig { .. }
            | GenerateError::TooManyPatients { .. }
            | GenerateError::Io { .. }
            | GenerateError::Parquet { .. } => ErrorKind::Failed,
            GenerateError::Arrow { .. } | GenerateError::Bug { .. } => ErrorKind::Bug,
        }
    }
}

/// Output file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GenerateFormat {
    /// RFC 4180 CSV with a header row (the default); can carry malformed rows.
    #[default]
    Csv,
    /// Parquet (zstd), typed by the schema; malformed rows cannot be represented and are
    /// left out (invalid NHS numbers are kept).
    Parquet,
}

impl GenerateFormat {
    /// The file extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            GenerateFormat::Csv => "csv",
            GenerateFormat::Parquet => "parquet",
        }
    }
}

/// The order of rows within each generated table (other than `patients`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RowOrder {
    /// Each patient's rows together, patient after patient (the default).
    #[default]
    Patient,
    /// By each row's main date (event, issue, registration start, booking), patients
    /// interleaved, as many GP system exports are: rows are sorted by date within each
    /// block of [`EVENT_ORDER_BLOCK_PATIENTS`] patients, so memory stays bounded and a
    /// patient's rows lie megabytes apart.
    Event,
}

/// Patients per block sorted together in [`RowOrder::Event`]. Part of the determinism
/// contract for that order.
pub const EVENT_ORDER_BLOCK_PATIENTS: u64 = 16 * CHUNK_PATIENTS;

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateConfig {
    /// Number of patients.
    pub patients: u64,
    /// Seed: the same config gives the same bytes.
    pub seed: u64,
    /// Output format.
    pub format: GenerateFormat,
    /// Average clinical events per patient (older patients have more).
    pub events_per_patient: f64,
    /// Share of patients on the National Data Opt-out list.
    pub opt_out_share: f64,
    /// Inject invalid/missing NHS numbers and malformed rows (default true).
    pub faults: bool,
    /// Row order within each table.
    pub order: RowOrder,
    /// The date the extract is taken: no recorded event is later, except appointments
    /// booked for the following four weeks.
    pub extract_date: NaiveDate,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        GenerateConfig {
            patients: 1000,
            seed: 1,
            format: GenerateFormat::Csv,
            events_per_patient: 10.0,
            opt_out_share: 0.05,
            faults: true,
            order: RowOrder::Patient,
            extract_date: NaiveDate::from_ymd_opt(2025, 3, 31).unwrap_or_default(),
        }
    }
}

impl GenerateConfig {
    /// Check ranges; called by [`generate`].
    pub fn validate(&self) -> Result<(), GenerateError> {
        if !(self.events_per_patient.is_finite()
            && (0.0..=10_000.0).contains(&self.events_per_patient))
        {
            return Err(GenerateError::InvalidConfig {
                option: "events-per-patient",
                message: "must be a number from 0 to 10000".into(),
            });
        }
        if !(self.opt_out_share.is_finite() && (0.0..=1.0).contains(&self.opt_out_share)) {
            return Err(GenerateError::InvalidConfig {
                option: "opt-out-share",
                message: "must be a share from 0 to 1 (e.g. 0.05)".into(),
            });
        }
        if !(1900..=9000).contains(&self.extract_date.year()) {
            return Err(GenerateError::InvalidConfig {
                option: "extract-date",
                message: "must be a year from 1900 to 9000".into(),
            });
        }
        let max = model_max_patients();
        if self.patients > max {
            return Err(GenerateError::TooManyPatients {
                requested: self.patients,
                max,
            });
        }
        Ok(())
    }
}

fn model_max_patients() -> u64 {
    nhs::NhsAllocator::max_patients()
}

/// What was written for one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableSummary {
    /// Data rows written (malformed ones included; header excluded).
    pub rows: u64,
    /// Rows whose NHS number is present but invalid (bad check digit, wrong length, letters).
    pub invalid_nhs: u64,
    /// Rows with an empty NHS number.
    pub missing_nhs: u64,
    /// Malformed rows (wrong field count, unparsable date or number, invalid UTF-8);
    /// always 0 for Parquet.
    pub malformed: u64,
    /// Files written for the table.
    pub files: Vec<PathBuf>,
}

impl TableSummary {
    /// Rows a correct ingest must reject: invalid + missing NHS numbers + malformed.
    pub fn faulty(&self) -> u64 {
        self.invalid_nhs + self.missing_nhs + self.malformed
    }
}

/// What was generated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GenerateSummary {
    /// Patients generated.
    pub patients: u64,
    /// Per table, by name.
    pub tables: BTreeMap<String, TableSummary>,
    /// Entries on the opt-out list.
    pub opt_outs: u64,
    /// The opt-out list file.
    pub opt_outs_path: PathBuf,
    /// Patients with any Type 1 code.
    pub type1_patients: u64,
    /// Patients whose latest Type 1 code is a dissent (opted out).
    pub type1_dissenters: u64,
    /// Patients whose dissent was later withdrawn (not opted out).
    pub type1_withdrawn: u64,
    /// Type 1 dissenters who are also on the opt-out list.
    pub type1_dissenters_on_opt_out_list: u64,
}

impl GenerateSummary {
    /// Patients opted out by either route (list or Type 1 dissent).
    pub fn opted_out_patients(&self) -> u64 {
        self.opt_outs + self.type1_dissenters - self.type1_dissenters_on_opt_out_list
    }
}

/// Generate an extract for every table in `schemas` into `out` (created if missing;
/// existing files of the same names are replaced).
pub fn generate(
    schemas: &SchemaSet,
    cfg: &GenerateConfig,
    out: &Path,
) -> Result<GenerateSummary, GenerateError> {
    generate_with_progress(schemas, cfg, out, &mut |_, _| {})
}

/// [`generate`], calling `progress(patients_done, patients_total)` after each chunk.
pub fn generate_with_progress(
    schemas: &SchemaSet,
    cfg: &GenerateConfig,
    out: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<GenerateSummary, GenerateError> {
    cfg.validate()?;
    let reference = Reference::builtin()?;
    let plans: Vec<TablePlan> = schemas
        .tables()
        .map(|t| TablePlan::new(t, &reference))
        .collect();
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
    let extract_day = (cfg.extract_date - epoch).num_days() as i32;
    let world =
        World::new(reference, plans, cfg, extract_day).ok_or(GenerateError::TooManyPatients {
            requested: cfg.patients,
            max: model_max_patients(),
        })?;
    std::fs::create_dir_all(out).map_err(|source| GenerateError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    match cfg.format {
        GenerateFormat::Csv => run::<CsvSink, _>(&world, out, progress, &|_, hint| {
            CsvSink::with_capacity(hint * 48)
        }),
        GenerateFormat::Parquet => run::<ArrowSink, _>(&world, out, progress, &|plan, hint| {
            ArrowSink::new(plan.arrow_schema.clone(), &plan.types, hint)
        }),
    }
}

/// Where one table's chunks are written.
trait TableWriter<S> {
    fn write_chunk(&mut self, sink: S) -> Result<(), GenerateError>;
    /// The table's file, complete but not yet committed.
    fn finish(self: Box<Self>) -> Result<AtomicFile, GenerateError>;
}

/// Every output is an [`AtomicFile`]: nothing carries its final name until every table
/// is complete, and a failed run leaves no temporary file behind.
fn create(path: &Path) -> Result<AtomicFile, GenerateError> {
    AtomicFile::create(path, Mode::Shared).map_err(|e| GenerateError::Io {
        path: e.path,
        source: e.source,
    })
}

fn commit(file: AtomicFile) -> Result<(), GenerateError> {
    file.commit().map(|_| ()).map_err(|e| GenerateError::Io {
        path: e.path,
        source: e.source,
    })
}

struct CsvTable {
    path: PathBuf,
    w: AtomicFile,
}

impl TableWriter<CsvSink> for CsvTable {
    fn write_chunk(&mut self, sink: CsvSink) -> Result<(), GenerateError> {
        self.w
            .write_all(&sink.buf)
            .map_err(|source| GenerateError::Io {
                path: self.path.clone(),
                source,
            })
    }

    fn finish(self: Box<Self>) -> Result<AtomicFile, GenerateError> {
        Ok(self.w)
    }
}

struct ParquetTable {
    path: PathBuf,
    table: String,
    w: ArrowWriter<AtomicFile>,
}

impl TableWriter<ArrowSink> for ParquetTable {
    fn write_chunk(&mut self, sink: ArrowSink) -> Result<(), GenerateError> {
        if sink.rows() == 0 {
            return Ok(());
        }
        let batch = sink.finish().map_err(|source| GenerateError::Arrow {
            table: self.table.clone(),
            source,
        })?;
        self.w
            .write(&batch)
            .map_err(|source| GenerateError::Parquet {
                path: self.path.clone(),
                source,
            })
    }

    fn finish(self: Box<Self>) -> Result<AtomicFile, GenerateError> {
        let ParquetTable { path, w, .. } = *self;
        w.into_inner()
            .map_err(|source| GenerateError::Parquet { path, source })
    }
}

/// Open one writer per table (CSV writes its header now).
trait OpenTable: Sink + Sized {
    /// The file extension for this sink's format.
    const FORMAT: GenerateFormat;
    fn open(plan: &TablePlan, path: &Path) -> Result<Box<dyn TableWriter<Self>>, GenerateError>;
}

impl OpenTable for CsvSink {
    const FORMAT: GenerateFormat = GenerateFormat::Csv;
    fn open(plan: &TablePlan, path: &Path) -> Result<Box<dyn TableWriter<Self>>, GenerateError> {
        let mut w = create(path)?;
        let mut header = Vec::new();
        for (i, h) in plan.headers.iter().enumerate() {
            if i > 0 {
                header.push(b',');
            }
            format::push_field(&mut header, h.as_bytes());
        }
        header.push(b'\n');
        w.write_all(&header).map_err(|source| GenerateError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Box::new(CsvTable {
            path: path.to_path_buf(),
            w,
        }))
    }
}

impl OpenTable for ArrowSink {
    const FORMAT: GenerateFormat = GenerateFormat::Parquet;
    fn open(plan: &TablePlan, path: &Path) -> Result<Box<dyn TableWriter<Self>>, GenerateError> {
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
            .set_created_by(format!(
                "tre-pipeline {} (tre generate)",
                env!("CARGO_PKG_VERSION")
            ))
            .build();
        let w = ArrowWriter::try_new(create(path)?, plan.arrow_schema.clone(), Some(props))
            .map_err(|source| GenerateError::Parquet {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Box::new(ParquetTable {
            path: path.to_path_buf(),
            table: plan.name.clone(),
            w,
        }))
    }
}

/// The open output files of one run and what has been written to them.
struct Outputs<S> {
    writers: Vec<Box<dyn TableWriter<S>>>,
    opt_path: PathBuf,
    opt_w: AtomicFile,
    stats: Vec<TableStats>,
    opt: OptOutStats,
}

impl<S: OpenTable> Outputs<S> {
    /// Open every table's file and the opt-out list (headers written).
    fn open(world: &World, out: &Path) -> Result<Self, GenerateError> {
        let ext = S::FORMAT.extension();
        let writers = world
            .plans
            .iter()
            .map(|plan| S::open(plan, &out.join(format!("{}.{ext}", plan.name))))
            .collect::<Result<Vec<_>, _>>()?;
        let opt_path = out.join(OPT_OUTS_FILE);
        let mut opt_w = create(&opt_path)?;
        opt_w
            .write_all(b"nhs_number\n")
            .map_err(|source| GenerateError::Io {
                path: opt_path.clone(),
                source,
            })?;
        Ok(Outputs {
            writers,
            opt_path,
            opt_w,
            stats: vec![TableStats::default(); world.plans.len()],
            opt: OptOutStats::default(),
        })
    }

    /// Append one chunk (or merged block) in order.
    fn write(&mut self, chunk: ChunkOut<S>) -> Result<(), GenerateError> {
        let tables = self.writers.iter_mut().zip(chunk.sinks);
        for ((w, sink), (total, st)) in tables.zip(self.stats.iter_mut().zip(&chunk.stats)) {
            w.write_chunk(sink)?;
            total.add(st);
        }
        self.opt_w
            .write_all(&chunk.opt_out_lines)
            .map_err(|source| GenerateError::Io {
                path: self.opt_path.clone(),
                source,
            })?;
        self.opt.add(&chunk.opt_outs);
        Ok(())
    }

    /// Commit every file (tables first, the opt-out list last) and summarise.
    fn finish(self, world: &World, out: &Path) -> Result<GenerateSummary, GenerateError> {
        let mut complete = self
            .writers
            .into_iter()
            .map(|w| w.finish())
            .collect::<Result<Vec<_>, _>>()?;
        complete.push(self.opt_w);
        for file in complete {
            commit(file)?;
        }
        let ext = S::FORMAT.extension();
        let tables = world.plans.iter().zip(self.stats).map(|(plan, st)| {
            let summary = TableSummary {
                files: vec![out.join(format!("{}.{ext}", plan.name))],
                rows: st.rows,
                invalid_nhs: st.invalid_nhs,
                missing_nhs: st.missing_nhs,
                malformed: st.malformed,
            };
            (plan.name.clone(), summary)
        });
        Ok(GenerateSummary {
            patients: world.patients,
            tables: tables.collect(),
            opt_outs: self.opt.opt_outs,
            opt_outs_path: self.opt_path,
            type1_patients: self.opt.type1_patients,
            type1_dissenters: self.opt.type1_dissenters,
            type1_withdrawn: self.opt.type1_withdrawn,
            type1_dissenters_on_opt_out_list: self.opt.dissenters_on_list,
        })
    }
}

/// Generate every chunk, a bounded window at a time in parallel, and write them in order;
/// in event order each window is one fixed block, merged before writing.
fn run<S, F>(
    world: &World,
    out: &Path,
    progress: &mut dyn FnMut(u64, u64),
    make_sink: &F,
) -> Result<GenerateSummary, GenerateError>
where
    S: OpenTable,
    F: Fn(&TablePlan, usize) -> S + Sync,
{
    let mut outputs = Outputs::<S>::open(world, out)?;
    let names: Vec<String> = world.plans.iter().map(|p| p.name.clone()).collect();
    let chunks = world.chunks();
    let window = match world.order {
        RowOrder::Patient => (rayon::current_num_threads() as u64 * 2).max(2),
        RowOrder::Event => EVENT_ORDER_BLOCK_PATIENTS / CHUNK_PATIENTS,
    };
    let mut next = 0u64;
    while next < chunks {
        let end = (next + window).min(chunks);
        let outs: Vec<ChunkOut<S>> = (next..end)
            .into_par_iter()
            .map(|c| generate_chunk(world, c, make_sink))
            .collect();
        if world.order == RowOrder::Event {
            outputs.write(order::merge_block(outs, &names)?)?;
        } else {
            for chunk in outs {
                outputs.write(chunk)?;
            }
        }
        next = end;
        progress((end * CHUNK_PATIENTS).min(world.patients), world.patients);
    }
    outputs.finish(world, out)
}
