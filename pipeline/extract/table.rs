//! One table's run: chunks read in order, parsed, filtered and encoded by the workers,
//! appended in input order to the table's Parquet file, rejects to its quarantine file.

use std::path::Path;

use arrow::array::{Array, BooleanArray, UInt64Array};
use arrow::datatypes::SchemaRef;

use super::ExtractError;
use crate::ingest::{
    self, CsvChunker, IngestError, InputFile, ParquetInput, Parsed, RawChunk, Rejected,
};
use crate::manifest::{InputRecord, OutputRecord, TableReport};
use crate::optout::{ListKind, OptOutRules, OptOutSet, RowDecision};
use crate::ordered::ordered_map;
use crate::output::{EncodedRowGroup, OutputError, RowGroupEncoder, RowGroupSink};
use crate::policy::TablePolicy;
use crate::pseudonym::{PseudonymCache, Pseudonymiser};
use crate::quarantine::QuarantineSink;
use crate::transform::{self, TransformBug};

/// Where one table's files go.
pub(super) struct TableTargets<'a> {
    /// The output directory.
    pub out: &'a Path,
    /// The quarantine directory.
    pub quarantine: &'a Path,
    /// How CSV inputs are cut.
    pub csv_limits: crate::ingest::CsvLimits,
}

/// Run one table: read, filter, write; its accounting, with its output and input records.
pub(super) fn run_table(
    pool: &rayon::ThreadPool,
    table: &TablePolicy,
    input: &InputFile,
    ctx: &Filters<'_>,
    targets: &TableTargets<'_>,
    bar: &indicatif::ProgressBar,
) -> Result<TableReport, ExtractError> {
    let schema = transform::output_schema(table);
    let out_path = targets.out.join(format!("{}.parquet", table.name()));
    let q_path = targets.quarantine.join(format!("{}.csv", table.name()));
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
    let pseudonyms: Vec<usize> = table
        .columns
        .iter()
        .enumerate()
        .filter(|(_, c)| c.transform == crate::policy::Transform::Pseudonymise)
        .map(|(i, _)| i)
        .collect();
    let encoder = writer.sink.encoder(&schema, &pseudonyms)?;
    let work =
        |parsed: &mut dyn Iterator<Item = Parsed>| process_group(parsed, table, ctx, &encoder);
    let input_record = match input {
        InputFile::Csv(p) => run_csv(pool, table, p, &targets.csv_limits, &work, &mut writer)?,
        InputFile::Parquet(p) => run_parquet(pool, table, p, &work, &mut writer)?,
    };
    let mut report = writer.finish(&out_path)?;
    report.inputs = vec![input_record];
    Ok(report)
}

fn run_csv(
    pool: &rayon::ThreadPool,
    table: &TablePolicy,
    p: &Path,
    limits: &crate::ingest::CsvLimits,
    work: &Work<'_>,
    writer: &mut TableWriter<'_>,
) -> Result<InputRecord, ExtractError> {
    let mut chunker = CsvChunker::open_with(p, &table.schema, limits)?;
    let field_map = chunker.field_map.clone();
    let mut done = false;
    ordered_map(
        pool,
        groups_in_flight(pool),
        || next_group(&mut done, || chunker.next_chunk()),
        |group: Vec<RawChunk>| {
            let n = group.iter().map(|c| c.bytes.len() as u64).sum();
            // Each chunk is parsed, encoded and dropped before the next is parsed.
            let mut parsed = group
                .into_iter()
                .map(|c| ingest::parse_csv_chunk(&c, &table.schema, &field_map));
            Ok((work(&mut parsed)?, n))
        },
        |(p, n)| writer.append(p, n),
        || worker_panicked(table.name()),
    )?;
    match chunker.finish_hash() {
        Some((sha256, bytes)) => Ok(InputRecord {
            path: p.to_string_lossy().into_owned(),
            sha256,
            bytes,
        }),
        None => hash_input(p),
    }
}

fn run_parquet(
    pool: &rayon::ThreadPool,
    table: &TablePolicy,
    p: &Path,
    work: &Work<'_>,
    writer: &mut TableWriter<'_>,
) -> Result<InputRecord, ExtractError> {
    let mut reader = ParquetInput::open(p, &table.schema, 64 * 1024)?;
    let mut done = false;
    ordered_map(
        pool,
        groups_in_flight(pool),
        || next_group(&mut done, || reader.next_batch()),
        |group: Vec<ingest::ParquetBatch>| {
            let mut parsed = group
                .into_iter()
                .map(|pb| ingest::parse_arrow_batch(&pb, &table.schema));
            Ok((work(&mut parsed)?, 0))
        },
        |(p, n)| writer.append(p, n),
        || worker_panicked(table.name()),
    )?;
    hash_input(p)
}

/// How many chunks may be read ahead, being processed or waiting to be written: enough to
/// keep every worker busy while one chunk is read and one appended; this bounds memory.
pub(super) fn chunks_in_flight(pool: &rayon::ThreadPool) -> usize {
    pool.current_num_threads().max(1) * 2 + 1
}

/// Input chunks (4 MiB of CSV, or 64k Parquet rows) per output row group. A larger row
/// group finds more repeats of each pseudonym when patients' rows are interleaved (a
/// quarter of the rows are distinct in 16 MiB of an event-order extract, 43% in 4 MiB),
/// so the dictionary and the output are smaller; memory grows only by the row group's
/// encoded pages, since each chunk is dropped once encoded (`benches/extract_memory.sh`).
pub const CHUNKS_PER_ROW_GROUP: usize = 4;

/// How many row groups may be read ahead, being encoded or waiting to be appended.
fn groups_in_flight(pool: &rayon::ThreadPool) -> usize {
    pool.current_num_threads().max(1) + 1
}

/// The next [`CHUNKS_PER_ROW_GROUP`] items of `next` (fewer at the end); `None` once it
/// is exhausted, which `done` remembers so `next` is never called past its end.
fn next_group<T, E>(
    done: &mut bool,
    mut next: impl FnMut() -> Result<Option<T>, E>,
) -> Result<Option<Vec<T>>, ExtractError>
where
    ExtractError: From<E>,
{
    let mut group = Vec::with_capacity(CHUNKS_PER_ROW_GROUP);
    while !*done && group.len() < CHUNKS_PER_ROW_GROUP {
        match next()? {
            Some(item) => group.push(item),
            None => *done = true,
        }
    }
    Ok((!group.is_empty()).then_some(group))
}

/// What a worker does with one row group's parsed chunks.
type Work<'a> =
    dyn Fn(&mut dyn Iterator<Item = Parsed>) -> Result<Processed, ExtractError> + Sync + 'a;

pub(super) fn worker_panicked(table: &str) -> ExtractError {
    ExtractError::WorkerPanicked {
        table: table.to_string(),
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

pub(super) struct Filters<'a> {
    /// The National Data Opt-out set.
    pub ndoo: &'a OptOutSet,
    /// Whether `ndoo` is a deny-list or the service's allow-list.
    pub ndoo_kind: ListKind,
    /// Whether the policy declares an NDOO exemption.
    pub ndoo_exempt: bool,
    /// Type 1 dissenters.
    pub type1: &'a OptOutSet,
    /// Whether the policy declares a Type 1 exemption.
    pub type1_exempt: bool,
    /// The keyed pseudonymiser.
    pub pseudonymiser: Pseudonymiser,
    /// Pseudonyms from a cluster's trusted executors instead (`--scheduler`).
    pub remote: Option<std::sync::Arc<dyn crate::pseudonym::PseudonymService>>,
}

impl Filters<'_> {
    fn rules(&self) -> OptOutRules<'_> {
        OptOutRules {
            ndoo: self.ndoo,
            ndoo_kind: self.ndoo_kind,
            ndoo_exempt: self.ndoo_exempt,
            type1: self.type1,
            type1_exempt: self.type1_exempt,
        }
    }
}

/// One row group's result.
struct Processed {
    /// `None` when no row of the group's chunks was kept.
    group: Option<EncodedRowGroup>,
    rejected: Vec<Rejected>,
    report: TableReport,
}

/// One chunk's kept rows (output schema), its rejects and its accounting.
struct Filtered {
    out: arrow::record_batch::RecordBatch,
    rejected: Vec<Rejected>,
    report: TableReport,
}

/// A row group's chunks, each filtered, minimised and encoded into one row group in
/// order; rejects and accounting summed in input order.
fn process_group(
    parsed: &mut dyn Iterator<Item = Parsed>,
    table: &TablePolicy,
    ctx: &Filters<'_>,
    encoder: &RowGroupEncoder,
) -> Result<Processed, ExtractError> {
    let mut report = TableReport::default();
    let mut rejected = Vec::new();
    let mut builder = None;
    // Each patient is hashed once per row group, however their rows are spread.
    let mut cache = match &ctx.remote {
        Some(r) => PseudonymCache::remote(std::sync::Arc::clone(r)),
        None => PseudonymCache::default(),
    };
    for p in parsed {
        let f = process(p, table, ctx, &mut cache, encoder.input_schema())?;
        // `tre extract --scheduler`: a chunk whose pseudonyms the cluster did not return
        // is never encoded.
        if let Some(message) = cache.take_failure() {
            return Err(ExtractError::Cluster { message });
        }
        merge(&mut report, &f.report);
        rejected.extend(f.rejected);
        if f.out.num_rows() == 0 {
            continue;
        }
        let b = match &mut builder {
            Some(b) => b,
            None => builder.insert(encoder.begin(&f.out, cache.values())?),
        };
        b.write(&f.out, cache.values())?;
    }
    Ok(Processed {
        group: builder.map(|b| b.finish(cache.values())).transpose()?,
        rejected,
        report,
    })
}

/// Opt-outs, row filters and minimisation for one parsed chunk.
fn process(
    parsed: Parsed,
    table: &TablePolicy,
    ctx: &Filters<'_>,
    cache: &mut PseudonymCache,
    schema: &SchemaRef,
) -> Result<Filtered, ExtractError> {
    let Parsed {
        batch,
        mut rejected,
        rows_read,
    } = parsed;
    let (batch, in_value) = super::guard::guard_kept_values(batch, table)?;
    if !in_value.is_empty() {
        rejected.extend(in_value);
        rejected.sort_by_key(|r| r.line);
    }
    let mut report = TableReport {
        rows_read,
        rows_rejected: rejected.len() as u64,
        ..Default::default()
    };
    for r in &rejected {
        *report
            .rejected_by_reason
            .entry(r.reason.code().to_string())
            .or_default() += 1;
    }
    let mut keep = vec![true; batch.num_rows()];
    if let Some(ni) = table.schema.nhs_number_index()
        && let Some(nhs) = batch.column(ni).as_any().downcast_ref::<UInt64Array>()
    {
        for (k, d) in keep.iter_mut().zip(ctx.rules().decisions(nhs)) {
            match d {
                RowDecision::Keep => {}
                RowDecision::KeepExempt => report.rows_kept_under_exemption += 1,
                RowDecision::RemoveNdoo => report.rows_removed_ndoo += 1,
                RowDecision::RemoveType1 => report.rows_removed_type1 += 1,
            }
            *k = !d.removes();
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
    let out = transform::minimise(&kept, table, &ctx.pseudonymiser, cache, schema)?;
    report.rows_written = out.num_rows() as u64;
    Ok(Filtered {
        out,
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
        if let Some(group) = p.group {
            self.sink.append(group)?;
        }
        if !p.rejected.is_empty() {
            if self.quarantine.is_none() {
                self.quarantine = Some(
                    QuarantineSink::create(self.q_path, self.columns).map_err(OutputError::from)?,
                );
            }
            if let Some(q) = self.quarantine.as_mut() {
                q.write(&p.rejected).map_err(OutputError::from)?;
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
            let (rec, _) = q.finish().map_err(OutputError::from)?;
            report.quarantine = Some(OutputRecord {
                path: rec.path,
                sha256: rec.sha256,
                bytes: rec.size,
            });
        }
        Ok(report)
    }
}
