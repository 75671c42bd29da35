//! The table the TRE computes itself: per cell, its patients, rows, sums and the
//! per-patient contributions, from the population the analyst's SQL defines.
//!
//! Owns [`compute`]: the rows stream in from DataFusion once; each row's patient is
//! interned (see `pairs`); then it checks BY VALUE that every one of those patients is a
//! patient of the project's installed datasets ([`known_patients`]: their
//! `patient_pseudonym` values mark the population's, the smallest dataset first and the
//! others only while some is unmarked; any unknown or missing one refuses the job with
//! one bit, before anything is written), then aggregates per (cell, patient) and per
//! cell: each cell's distinct patients, rows, non-null rows and sum per
//! argument, the number of patients giving a sum a non-zero value, and the largest
//! per-patient contributions (for dominance). A NULL key and an empty one are one cell,
//! grouped as one. Cells come out in key order and pairs in (patient, cell) order, the
//! same on every run; each pair is written to `membership.parquet` (the received
//! ledger's file), encoded on a thread of its own. Danger: this module holds patient
//! values; it never puts one in an error, a log or a Debug string, and it never decides
//! what is published (see `gate`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayAccessor, ArrayRef, AsArray, Float64Array, StringArray, UInt32Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::prelude::{DataFrame, SessionContext};
use futures::StreamExt;

use super::pairs::{Interner, Pair, Rows};
use super::spec::{PATIENT_COLUMN, Stat, TableSpec};
use super::{QueryError, QueryLimits};
use crate::output::ParquetSink;

/// The population's view name inside the job's session.
const POPULATION: &str = "tre_population";

/// One cell, as computed.
#[derive(Debug, Clone, Default)]
pub struct Cell {
    /// Group-key values as text (a NULL key is the empty string).
    pub key: Vec<String>,
    /// Distinct patients.
    pub patients: u64,
    /// Rows.
    pub rows: u64,
    /// Per argument: rows where it is not null.
    pub nonnull: Vec<u64>,
    /// Per argument: patients with at least one row where it is not null.
    pub nonnull_holders: Vec<u64>,
    /// Per argument: its sum (summed arguments only).
    pub sums: Vec<f64>,
    /// Per argument: patients whose own sum is not zero.
    pub holders: Vec<u64>,
    /// Per argument: the largest per-patient sums, largest first (at most `top` kept).
    pub top: Vec<Vec<f64>>,
}

/// The computed table: cells in key order (the numbers of `membership.parquet`).
#[derive(Debug, Clone, Default)]
pub struct Computed {
    /// The cells.
    pub cells: Vec<Cell>,
    /// Allowed MIN/MAX/MEDIAN statistics: their values in cell order (their own type).
    pub order_stats: Vec<(Stat, ArrayRef)>,
}

/// Where [`compute`]'s time went.
#[derive(Debug, Clone, Copy, Default)]
pub struct ComputeTimes {
    /// The by-value check of the population's patients ([`known_patients`]).
    pub patient_check: std::time::Duration,
    /// Encoding and writing `membership.parquet`.
    pub membership: std::time::Duration,
}

/// Why [`compute`] gave no table (the job is refused, not failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotComputed {
    /// The table passes this many cells.
    TooManyCells(usize),
    /// Some population row does not carry a patient of the installed datasets.
    UnknownPatients,
}

/// How the population failed the patient check (one bit for the analyst).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PopulationCheck {
    /// Every row carries a known patient.
    Known,
    /// Some row does not.
    Unknown,
}

/// Check by value that every population row carries a patient of the installed datasets:
/// `patients` holds the population's distinct pseudonyms (as [`compute`] interned them),
/// `missing` says a row had none.
///
/// The known patients are the union of the datasets' `patient_pseudonym` values. The
/// datasets are read smallest first (by file size), each marking the population's
/// patients it holds, until every one is marked: most populations draw all their
/// patients from each dataset they touch, so the smallest one alone usually settles it,
/// and the answer is the union's either way. Only the pseudonym column is read, and the
/// population is not scanned again.
pub async fn known_patients(
    ctx: &SessionContext,
    datasets: &[(String, std::path::PathBuf)],
    patients: &Interner,
    missing: bool,
    err: &impl Fn(DataFusionError) -> QueryError,
) -> Result<PopulationCheck, QueryError> {
    if missing {
        return Ok(PopulationCheck::Unknown);
    }
    let mut known = Vec::new();
    for (name, path) in datasets {
        let table = ctx.table(name.as_str()).await.map_err(err)?;
        if table
            .schema()
            .has_column_with_unqualified_name(PATIENT_COLUMN)
        {
            let size = std::fs::metadata(path).map_or(u64::MAX, |m| m.len());
            known.push((size, name));
        }
    }
    if known.is_empty() {
        return Ok(PopulationCheck::Unknown);
    }
    known.sort();
    let mut found = vec![false; patients.len()];
    let mut left = patients.len();
    for (_, name) in known {
        if left == 0 {
            break;
        }
        let sql = format!(
            "SELECT CAST({PATIENT_COLUMN} AS VARCHAR) AS known_pseudonym FROM \"{}\"",
            name.replace('"', "\"\"")
        );
        let mut stream = ctx
            .sql(&sql)
            .await
            .map_err(err)?
            .execute_stream()
            .await
            .map_err(err)?;
        while let Some(b) = stream.next().await {
            let b = b.map_err(err)?;
            let c = arrow::compute::cast(b.column(0), &DataType::Utf8).map_err(run_failed)?;
            let c = c.as_string::<i32>();
            for i in 0..c.len() {
                if c.is_valid(i)
                    && let Some(id) = patients.find(c.value(i).as_bytes())
                    && !found[id as usize]
                {
                    found[id as usize] = true;
                    left -= 1;
                }
            }
            if left == 0 {
                break;
            }
        }
    }
    Ok(if left == 0 {
        PopulationCheck::Known
    } else {
        PopulationCheck::Unknown
    })
}

/// Register the population.
pub async fn register(
    ctx: &SessionContext,
    spec: &TableSpec,
    err: &impl Fn(DataFusionError) -> QueryError,
) -> Result<(), QueryError> {
    let df = DataFrame::new(ctx.state(), spec.population.clone());
    ctx.register_table(POPULATION, df.into_view())
        .map_err(err)?;
    Ok(())
}

/// Which arguments are summed (sums and means).
pub fn summed(spec: &TableSpec) -> Vec<bool> {
    let mut v = vec![false; spec.args];
    for s in spec.stats() {
        if let Stat::Sum(i) | Stat::Mean(i) = s {
            v[i] = true;
        }
    }
    v
}

/// The membership file's contribution columns: one per additive published statistic.
pub fn membership_measures(spec: &TableSpec) -> Vec<Stat> {
    spec.stats()
        .into_iter()
        .filter(|s| {
            !matches!(
                s,
                Stat::Mean(_) | Stat::Min(_) | Stat::Max(_) | Stat::Median(_)
            )
        })
        .collect()
}

/// Aggregate the registered population per (cell, patient) and per cell, here in Rust
/// (see `pairs`): the population's rows stream in from DataFusion, then the pairs come
/// out in (patient, cell) order, cells in key order, and `membership.parquet` is written
/// into `dir` as they do (on its own thread; `membership_time`: that thread's busy time,
/// for the benchmark).
#[allow(clippy::too_many_arguments)]
pub async fn compute(
    ctx: &SessionContext,
    datasets: &[(String, std::path::PathBuf)],
    spec: &TableSpec,
    top: usize,
    limits: &QueryLimits,
    max_cells: usize,
    dir: &Path,
    times: &mut ComputeTimes,
    err: &impl Fn(DataFusionError) -> QueryError,
) -> Result<Result<Computed, NotComputed>, QueryError> {
    let nk = spec.keys.len();
    let sums = summed(spec);
    let keys: Vec<String> = (0..nk).map(|i| format!("k{i}")).collect();
    let mut stream = ctx
        .sql(&rows_sql(&keys, &sums))
        .await
        .map_err(err)?
        .execute_stream()
        .await
        .map_err(err)?;
    let mut index = CellIndex::new(nk);
    let mut patients = Interner::default();
    let mut rows = Rows::new(&sums);
    let mut out = Computed::default();
    let mut patient_ids = Vec::new();
    let mut missing = false;
    while let Some(b) = stream.next().await {
        let b = b.map_err(err)?;
        let Some(cell_ids) = index.cells_of(&b, &mut out, &sums, max_cells)? else {
            return Ok(Err(NotComputed::TooManyCells(max_cells)));
        };
        // The project's result-row limit counts the table's rows (its cells), not the
        // (cell, patient) pairs behind them.
        if out.cells.len() as u64 > limits.max_rows {
            return Err(QueryError::RowLimit {
                limit: limits.max_rows,
            });
        }
        let p = b.column(nk);
        missing |= p.null_count() > 0;
        patient_ids.clear();
        match p.data_type() {
            DataType::Utf8View => {
                intern_column(p.as_string_view(), &mut patients, &mut patient_ids)
            }
            DataType::Utf8 => intern_column(p.as_string::<i32>(), &mut patients, &mut patient_ids),
            _ => {
                let p = arrow::compute::cast(p, &DataType::Utf8).map_err(run_failed)?;
                intern_column(p.as_string::<i32>(), &mut patients, &mut patient_ids);
            }
        }
        let args: Vec<&dyn Array> = (0..sums.len())
            .map(|i| b.column(nk + 1 + i).as_ref())
            .collect();
        rows.push(&cell_ids, &patient_ids, &args)
            .map_err(run_failed)?;
    }
    drop(stream);
    // Every patient must be known by value before anything is written.
    let started = std::time::Instant::now();
    let check = known_patients(ctx, datasets, &patients, missing, err).await?;
    times.patient_check = started.elapsed();
    if check == PopulationCheck::Unknown {
        return Ok(Err(NotComputed::UnknownPatients));
    }
    // Cells in key order: the pattern of hidden cells and every output follow it.
    let mut order: Vec<usize> = (0..out.cells.len()).collect();
    order.sort_by(|a, b| out.cells[*a].key.cmp(&out.cells[*b].key));
    let mut cell_to = vec![0u32; order.len()];
    for (new, old) in order.iter().enumerate() {
        cell_to[*old] = new as u32;
    }
    let mut cells: Vec<Option<Cell>> = std::mem::take(&mut out.cells)
        .into_iter()
        .map(Some)
        .collect();
    out.cells = order.iter().filter_map(|old| cells[*old].take()).collect();
    let (by_rank, rank) = patients.ranks();
    let measures = membership_measures(spec);
    let mut writer = MembershipWriter::start(spec, &measures, dir)?;
    let mut batch = MembershipBatch::new(measures.len());
    // A patient's pairs are adjacent: its pseudonym is read back as text once.
    let mut current: Option<(u32, &str)> = None;
    rows.pairs(&cell_to, &rank, |pair| -> Result<(), QueryError> {
        let cell = out
            .cells
            .get_mut(pair.cell as usize)
            .ok_or_else(|| run_failed(()))?;
        accumulate(cell, pair, &sums, top);
        let pseudonym = match current {
            Some((p, text)) if p == pair.patient => text,
            _ => {
                // Pseudonyms come from a text column: the bytes are text.
                let bytes = patients.get(by_rank[pair.patient as usize]);
                let text = std::str::from_utf8(bytes).map_err(run_failed)?;
                current = Some((pair.patient, text));
                text
            }
        };
        batch.push(pseudonym, pair, &measures);
        if batch.len() >= MEMBERSHIP_BATCH {
            writer.send(std::mem::replace(
                &mut batch,
                MembershipBatch::new(measures.len()),
            ))?;
        }
        Ok(())
    })?;
    writer.send(batch)?;
    times.membership = writer.finish()?;
    let index = index.by_key(&out);
    for s in spec.stats() {
        let (f, i) = match s {
            Stat::Min(i) => ("MIN", i),
            Stat::Max(i) => ("MAX", i),
            // DataFusion's `median` is exact (its argument is cast to a float by `spec`).
            Stat::Median(i) => ("median", i),
            _ => continue,
        };
        let a = order_stat(ctx, &keys, &format!("{f}(a{i})"), &index, err).await?;
        out.order_stats.push((s, a));
    }
    Ok(Ok(out))
}

/// Each row's patient number (a NULL pseudonym is the empty string; the caller refuses
/// it), read in place: a view column is never copied. A row of the same patient as the
/// row before (the usual case: extracts hold a patient's rows together) reuses its
/// number without hashing.
fn intern_column<'a>(
    col: impl ArrayAccessor<Item = &'a str>,
    patients: &mut Interner,
    out: &mut Vec<u32>,
) {
    let mut last: Option<(&str, u32)> = None;
    for i in 0..col.len() {
        let v = if col.is_null(i) { "" } else { col.value(i) };
        let id = match last {
            Some((l, id)) if l == v => id,
            _ => patients.intern(v.as_bytes()),
        };
        last = Some((v, id));
        out.push(id);
    }
}

/// (cell, patient) pairs per batch of `membership.parquet`.
const MEMBERSHIP_BATCH: usize = 65_536;

/// A key as its cell names it: a NULL key is the empty string, so the two are ONE group
/// (as two groups, one patient would count twice in the cell).
fn cell_key(k: &str) -> String {
    format!("COALESCE({k}, '')")
}

/// The population's rows as the aggregation reads them: keys, `p`, then each argument
/// (summed ones as they are, Float64; the others only for their nulls).
fn rows_sql(keys: &[String], sums: &[bool]) -> String {
    let mut select: Vec<String> = keys
        .iter()
        .map(|k| format!("{} AS {k}", cell_key(k)))
        .collect();
    select.push("p".into());
    select.extend((0..sums.len()).map(|i| format!("a{i}")));
    format!("SELECT {} FROM {POPULATION}", select.join(", "))
}

fn run_failed<E>(_: E) -> QueryError {
    QueryError::Run {
        failure: super::SqlFailure::Execution,
    }
}

/// Each row's key to its cell, cells numbered as first seen (`compute` puts them in key
/// order at the end): each key column's text (a NULL key is the empty string) is
/// interned to a small id, and the ids of a row name its cell, so no string is allocated
/// per row.
struct CellIndex {
    values: Vec<hashbrown::HashMap<String, u32>>,
    cells: hashbrown::HashMap<Vec<u32>, usize>,
    ids: Vec<u32>,
}

impl CellIndex {
    fn new(keys: usize) -> Self {
        CellIndex {
            values: vec![hashbrown::HashMap::new(); keys],
            cells: hashbrown::HashMap::new(),
            ids: Vec::with_capacity(keys),
        }
    }

    /// The cell of each row of `b` (whose first columns are the keys); `None` when the
    /// table passes `max_cells`.
    fn cells_of(
        &mut self,
        b: &RecordBatch,
        out: &mut Computed,
        sums: &[bool],
        max_cells: usize,
    ) -> Result<Option<Vec<u32>>, QueryError> {
        let nk = self.values.len();
        let text: Vec<ArrayRef> = (0..nk)
            .map(|i| arrow::compute::cast(b.column(i), &DataType::Utf8).map_err(run_failed))
            .collect::<Result<_, _>>()?;
        let text: Vec<&StringArray> = text.iter().map(|a| a.as_string::<i32>()).collect();
        let mut ids = Vec::with_capacity(b.num_rows());
        for row in 0..b.num_rows() {
            self.ids.clear();
            for (k, col) in text.iter().enumerate() {
                let v = if col.is_null(row) { "" } else { col.value(row) };
                let next = self.values[k].len() as u32;
                let id = match self.values[k].get(v) {
                    Some(id) => *id,
                    None => {
                        self.values[k].insert(v.to_string(), next);
                        next
                    }
                };
                self.ids.push(id);
            }
            let cell = match self.cells.get(self.ids.as_slice()) {
                Some(c) => *c,
                None => {
                    if out.cells.len() >= max_cells {
                        return Ok(None);
                    }
                    self.cells.insert(self.ids.clone(), out.cells.len());
                    out.cells.push(Cell {
                        key: (0..nk)
                            .map(|k| {
                                if text[k].is_null(row) {
                                    String::new()
                                } else {
                                    text[k].value(row).to_string()
                                }
                            })
                            .collect(),
                        nonnull: vec![0; sums.len()],
                        nonnull_holders: vec![0; sums.len()],
                        sums: vec![0.0; sums.len()],
                        holders: vec![0; sums.len()],
                        top: vec![Vec::new(); sums.len()],
                        ..Cell::default()
                    });
                    out.cells.len() - 1
                }
            };
            ids.push(u32::try_from(cell).unwrap_or(u32::MAX));
        }
        Ok(Some(ids))
    }

    /// Key text to cell (for the order statistics).
    fn by_key(&self, out: &Computed) -> HashMap<Vec<String>, usize> {
        out.cells
            .iter()
            .enumerate()
            .map(|(i, c)| (c.key.clone(), i))
            .collect()
    }
}

/// Add one (cell, patient) pair to its cell (`sums`: which arguments are summed).
fn accumulate(cell: &mut Cell, pair: &Pair, sums: &[bool], top: usize) {
    cell.patients += 1;
    cell.rows += pair.rows;
    for (i, summed) in sums.iter().enumerate() {
        let n = pair.nonnull[i];
        cell.nonnull[i] += n;
        if n > 0 {
            cell.nonnull_holders[i] += 1;
        }
        if *summed {
            let v = pair.sum[i];
            cell.sums[i] += v;
            if v != 0.0 {
                cell.holders[i] += 1;
            }
            keep_top(&mut cell.top[i], v, top);
        }
    }
}

/// Membership rows waiting to be sent to the writer.
struct MembershipBatch {
    patients: arrow::array::StringBuilder,
    cells: Vec<u32>,
    contrib: Vec<Vec<f64>>,
}

impl MembershipBatch {
    fn new(measures: usize) -> Self {
        MembershipBatch {
            patients: arrow::array::StringBuilder::with_capacity(
                MEMBERSHIP_BATCH,
                MEMBERSHIP_BATCH * 64,
            ),
            cells: Vec::with_capacity(MEMBERSHIP_BATCH),
            contrib: vec![Vec::with_capacity(MEMBERSHIP_BATCH); measures],
        }
    }

    fn len(&self) -> usize {
        self.cells.len()
    }

    /// One pair of the patient with pseudonym `patient`.
    fn push(&mut self, patient: &str, pair: &Pair, measures: &[Stat]) {
        self.patients.append_value(patient);
        self.cells.push(pair.cell);
        for (m, stat) in measures.iter().enumerate() {
            self.contrib[m].push(match stat {
                Stat::Patients => 1.0,
                Stat::Rows => pair.rows as f64,
                Stat::NonNull(i) => pair.nonnull[*i] as f64,
                Stat::Sum(i) => pair.sum[*i],
                Stat::Mean(_) | Stat::Min(_) | Stat::Max(_) | Stat::Median(_) => 0.0,
            });
        }
    }
}

/// `membership.parquet`, encoded and written on its own thread. Dropped without
/// [`MembershipWriter::finish`], the file is never committed.
struct MembershipWriter {
    schema: Arc<Schema>,
    tx: Option<std::sync::mpsc::SyncSender<Option<RecordBatch>>>,
    thread: Option<std::thread::JoinHandle<Result<std::time::Duration, QueryError>>>,
}

impl MembershipWriter {
    fn start(spec: &TableSpec, measures: &[Stat], dir: &Path) -> Result<Self, QueryError> {
        let mut fields = vec![
            Field::new(PATIENT_COLUMN, DataType::Utf8, false),
            Field::new("cell", DataType::UInt32, false),
        ];
        fields.extend(
            measures
                .iter()
                .map(|m| Field::new(spec.label(*m), DataType::Float64, false)),
        );
        let schema = Arc::new(Schema::new(fields));
        let mut sink = ParquetSink::create_with_mode(
            &dir.join(super::MEMBERSHIP_FILE),
            schema.clone(),
            crate::durable::Mode::Private,
        )?;
        // A few batches in flight: the aggregation waits for the encoder only when it is
        // that far behind.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Option<RecordBatch>>(4);
        let thread = std::thread::Builder::new()
            .name("membership".into())
            .spawn(move || -> Result<std::time::Duration, QueryError> {
                let mut busy = std::time::Duration::ZERO;
                loop {
                    match rx.recv() {
                        Ok(Some(batch)) => {
                            let started = std::time::Instant::now();
                            sink.write(&batch)?;
                            busy += started.elapsed();
                        }
                        Ok(None) => {
                            let started = std::time::Instant::now();
                            sink.finish()?;
                            return Ok(busy + started.elapsed());
                        }
                        // Abandoned (the job stopped): the sink is dropped uncommitted.
                        Err(_) => return Err(run_failed(())),
                    }
                }
            })
            .map_err(QueryError::Runtime)?;
        Ok(MembershipWriter {
            schema,
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queue one batch of membership rows.
    fn send(&mut self, mut rows: MembershipBatch) -> Result<(), QueryError> {
        if rows.len() == 0 {
            return Ok(());
        }
        let mut arrays: Vec<ArrayRef> = vec![
            Arc::new(rows.patients.finish()),
            Arc::new(UInt32Array::from(rows.cells)),
        ];
        arrays.extend(
            rows.contrib
                .into_iter()
                .map(|v| Arc::new(Float64Array::from(v)) as ArrayRef),
        );
        let batch = RecordBatch::try_new(self.schema.clone(), arrays).map_err(run_failed)?;
        let sent = self.tx.as_ref().map(|tx| tx.send(Some(batch)).is_ok());
        if sent == Some(true) {
            return Ok(());
        }
        // The writer stopped: its error says why.
        self.join().and(Err(run_failed(())))
    }

    /// Finish and commit the file; the writer's busy time.
    fn finish(mut self) -> Result<std::time::Duration, QueryError> {
        if let Some(tx) = self.tx.take() {
            // A failed send means the writer already stopped: join says why.
            let _ = tx.send(None);
        }
        self.join()
    }

    fn join(&mut self) -> Result<std::time::Duration, QueryError> {
        self.tx = None;
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) | None => Err(run_failed(())),
        }
    }
}

/// One MIN/MAX per cell, in cell order (a cell the query does not return is null).
async fn order_stat(
    ctx: &SessionContext,
    keys: &[String],
    agg: &str,
    index: &HashMap<Vec<String>, usize>,
    err: &impl Fn(DataFusionError) -> QueryError,
) -> Result<ArrayRef, QueryError> {
    let keys: Vec<String> = keys.iter().map(|k| cell_key(k)).collect();
    let mut select: Vec<String> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{k} AS k{i}"))
        .collect();
    select.push(format!("{agg} AS v"));
    let group = if keys.is_empty() {
        String::new()
    } else {
        format!(" GROUP BY {}", keys.join(", "))
    };
    let sql = format!("SELECT {} FROM {POPULATION}{group}", select.join(", "));
    let df = ctx.sql(&sql).await.map_err(err)?;
    let schema = Arc::new(df.schema().as_arrow().clone());
    let batches = df.collect().await.map_err(err)?;
    let all = arrow::compute::concat_batches(&schema, &batches).map_err(|_| QueryError::Run {
        failure: super::SqlFailure::Execution,
    })?;
    let failed = |_| QueryError::Run {
        failure: super::SqlFailure::Execution,
    };
    let key_cols: Vec<ArrayRef> = (0..keys.len())
        .map(|i| arrow::compute::cast(all.column(i), &DataType::Utf8).map_err(failed))
        .collect::<Result<_, _>>()?;
    let mut take: Vec<Option<u32>> = vec![None; index.len()];
    for row in 0..all.num_rows() {
        let key: Vec<String> = key_cols
            .iter()
            .map(|k| {
                let k = k.as_string::<i32>();
                if k.is_null(row) {
                    String::new()
                } else {
                    k.value(row).to_string()
                }
            })
            .collect();
        if let Some(cell) = index.get(&key) {
            take[*cell] = u32::try_from(row).ok();
        }
    }
    arrow::compute::take(all.column(keys.len()), &UInt32Array::from(take), None).map_err(failed)
}

/// Keep the `k` largest values, largest first.
fn keep_top(top: &mut Vec<f64>, v: f64, k: usize) {
    if k == 0 {
        return;
    }
    let at = top.iter().position(|x| v > *x).unwrap_or(top.len());
    if at < k {
        top.insert(at, v);
        top.truncate(k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Float64Type;

    #[test]
    fn the_largest_contributions_are_kept_in_order() {
        let mut t = Vec::new();
        for v in [3.0, 1.0, 5.0, 4.0, 2.0] {
            keep_top(&mut t, v, 3);
        }
        assert_eq!(t, vec![5.0, 4.0, 3.0]);
        let mut none = Vec::new();
        keep_top(&mut none, 1.0, 0);
        assert!(none.is_empty());
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt")
    }

    /// A session with two datasets (`patients` holds a and b; `events` also c) and the
    /// population view over `pop_sql`.
    async fn session(pop_sql: &str) -> SessionContext {
        let ctx = SessionContext::new();
        for sql in [
            "CREATE TABLE patients (patient_pseudonym VARCHAR) AS VALUES ('a'), ('b')",
            "CREATE TABLE events (patient_pseudonym VARCHAR) AS VALUES ('a'), ('c'), ('c')",
        ] {
            ctx.sql(sql)
                .await
                .expect("create")
                .collect()
                .await
                .expect("run");
        }
        let df = ctx.sql(pop_sql).await.expect("population");
        ctx.register_table(POPULATION, df.into_view())
            .expect("view");
        ctx
    }

    fn check(pop_sql: &str) -> PopulationCheck {
        rt().block_on(async {
            let ctx = session(pop_sql).await;
            // No files: both datasets sort as the same size, `patients` first.
            let datasets = vec![
                (
                    "patients".to_string(),
                    std::path::PathBuf::from("/nonexistent/p"),
                ),
                (
                    "events".to_string(),
                    std::path::PathBuf::from("/nonexistent/e"),
                ),
            ];
            let err = |e: DataFusionError| super::super::reduce(&e, &[]);
            // The population's patients, interned as `compute` interns them.
            let batches = ctx
                .sql(&format!("SELECT CAST(p AS VARCHAR) AS p FROM {POPULATION}"))
                .await
                .expect("plans")
                .collect()
                .await
                .expect("runs");
            let (mut patients, mut missing) = (Interner::default(), false);
            for b in &batches {
                let c = arrow::compute::cast(b.column(0), &DataType::Utf8).expect("text");
                let c = c.as_string::<i32>();
                missing |= c.null_count() > 0;
                for i in (0..c.len()).filter(|i| c.is_valid(*i)) {
                    patients.intern(c.value(i).as_bytes());
                }
            }
            known_patients(&ctx, &datasets, &patients, missing, &err)
                .await
                .expect("check")
        })
    }

    #[test]
    fn a_population_of_known_patients_passes_through_the_first_dataset_or_the_union() {
        // All in the first dataset tried.
        assert_eq!(
            check("SELECT patient_pseudonym AS p FROM events WHERE patient_pseudonym = 'a'"),
            PopulationCheck::Known
        );
        // c is only in the second: the union decides.
        assert_eq!(
            check("SELECT patient_pseudonym AS p FROM events"),
            PopulationCheck::Known
        );
    }

    #[test]
    fn patients_are_numbered_in_place_from_view_and_plain_columns_alike() {
        use arrow::array::StringViewArray;
        let rows = [
            Some("p1"),
            Some("p1"),
            None,
            Some("p2"),
            Some("p1"),
            Some(""),
        ];
        let mut patients = Interner::default();
        let (mut from_view, mut from_plain) = (Vec::new(), Vec::new());
        intern_column(
            &StringViewArray::from(rows.to_vec()),
            &mut patients,
            &mut from_view,
        );
        intern_column(
            &StringArray::from(rows.to_vec()),
            &mut patients,
            &mut from_plain,
        );
        // A NULL is the empty string (the caller refuses it); repeats share a number.
        assert_eq!(from_view, vec![0, 0, 1, 2, 0, 1]);
        assert_eq!(from_plain, from_view);
        assert_eq!(patients.len(), 3);
    }

    #[test]
    fn a_job_over_a_made_up_patient_is_refused_before_anything_is_written() {
        let create = "CREATE TABLE t (patient_pseudonym VARCHAR, k VARCHAR, x DOUBLE) AS VALUES ('a', 'x', 1.0), ('b', 'y', 2.0)";
        // One row's pseudonym is not a patient of the dataset (a literal).
        let (c, membership) = try_computed(
            create,
            "SELECT k, COUNT(*) FROM (SELECT CASE WHEN k = 'y' THEN 'zz' ELSE patient_pseudonym END AS patient_pseudonym, k FROM t) GROUP BY k",
        );
        assert_eq!(c.err(), Some(NotComputed::UnknownPatients));
        assert!(
            membership.is_none(),
            "nothing is written for refused patients"
        );
        // The same job over the real pseudonyms is computed.
        let (c, membership) = try_computed(create, "SELECT k, COUNT(*) FROM t GROUP BY k");
        assert_eq!(c.map(|c| c.cells.len()).ok(), Some(2));
        assert!(membership.is_some());
    }

    #[test]
    fn a_made_up_or_missing_patient_fails_the_check() {
        assert_eq!(
            check("SELECT 'zz' AS p FROM patients"),
            PopulationCheck::Unknown
        );
        assert_eq!(
            check("SELECT CAST(NULL AS VARCHAR) AS p FROM patients"),
            PopulationCheck::Unknown
        );
        assert_eq!(
            check(
                "SELECT CASE WHEN patient_pseudonym = 'c' THEN 'x' ELSE patient_pseudonym END AS p FROM events"
            ),
            PopulationCheck::Unknown
        );
    }

    #[test]
    fn rows_find_their_cells_in_first_seen_order_and_null_keys_join_the_empty_key() {
        let k0 = Arc::new(StringArray::from(vec![
            Some("F"),
            Some("M"),
            None,
            Some(""),
            Some("F"),
        ]));
        let k1 = Arc::new(StringArray::from(vec!["1", "1", "2", "2", "2"]));
        let b = RecordBatch::try_from_iter(vec![("k0", k0 as ArrayRef), ("k1", k1 as ArrayRef)])
            .expect("batch");
        let mut index = CellIndex::new(2);
        let mut out = Computed::default();
        let ids = index
            .cells_of(&b, &mut out, &[false], 10)
            .expect("cells")
            .expect("under the limit");
        assert_eq!(ids, vec![0, 1, 2, 2, 3]);
        let keys: Vec<Vec<String>> = out.cells.iter().map(|c| c.key.clone()).collect();
        assert_eq!(
            keys,
            vec![
                vec!["F", "1"],
                vec!["M", "1"],
                vec!["", "2"],
                vec!["F", "2"]
            ]
        );
        assert_eq!(
            index
                .by_key(&out)
                .get(["F".to_string(), "2".to_string()].as_slice()),
            Some(&3)
        );
        // One more cell than allowed: the table is refused, not truncated.
        let mut out = Computed::default();
        assert!(
            CellIndex::new(2)
                .cells_of(&b, &mut out, &[false], 3)
                .expect("cells")
                .is_none()
        );
    }

    /// Run `job` over a session holding the table `create` makes: the computed table
    /// and the bytes of its membership file.
    fn computed(create: &str, job: &str) -> (Computed, Vec<u8>) {
        let (c, membership) = try_computed(create, job);
        (
            c.expect("under the cell limit, known patients"),
            membership.expect("membership written"),
        )
    }

    /// [`compute`] over table `t` made by `create`, for the job `job`: the table or why
    /// not, and the membership file's bytes if one was written.
    fn try_computed(create: &str, job: &str) -> (Result<Computed, NotComputed>, Option<Vec<u8>>) {
        rt().block_on(async {
            let ctx = SessionContext::new();
            ctx.sql(create)
                .await
                .expect("create")
                .collect()
                .await
                .expect("run");
            let df = ctx.sql(job).await.expect("plans");
            let spec = super::super::spec::recognise(df.logical_plan(), true).expect("form");
            let err = |e: DataFusionError| super::super::reduce(&e, &[]);
            register(&ctx, &spec, &err).await.expect("register");
            let dir = tempfile::tempdir().expect("dir");
            let limits = QueryLimits {
                max_rows: 100,
                max_seconds: 10,
                memory_bytes: 1 << 30,
                threads: 1,
            };
            let datasets = vec![("t".to_string(), std::path::PathBuf::from("/nonexistent/t"))];
            let mut spent = ComputeTimes::default();
            let c = compute(
                &ctx,
                &datasets,
                &spec,
                2,
                &limits,
                10,
                dir.path(),
                &mut spent,
                &err,
            )
            .await
            .expect("compute");
            let membership = std::fs::read(dir.path().join(super::super::MEMBERSHIP_FILE)).ok();
            (c, membership)
        })
    }

    #[test]
    fn a_patient_under_a_null_key_and_an_empty_key_is_one_patient_of_one_cell() {
        let (c, _) = computed(
            "CREATE TABLE t (patient_pseudonym VARCHAR, k VARCHAR, x DOUBLE) AS VALUES ('a', NULL, 1.0), ('a', '', 2.0), ('b', 'x', 3.0)",
            "SELECT k, COUNT(*) AS n, MAX(x) AS m FROM t GROUP BY k",
        );
        let keys: Vec<&str> = c.cells.iter().map(|c| c.key[0].as_str()).collect();
        assert_eq!(keys, vec!["", "x"], "cells in key order");
        assert_eq!((c.cells[0].patients, c.cells[0].rows), (1, 2));
        // The order statistic is the whole cell's, not one of its spellings'.
        let (_, max) = &c.order_stats[0];
        let max = max.as_primitive::<Float64Type>();
        assert_eq!(max.value(0), 2.0);
    }

    #[test]
    fn the_table_and_its_membership_do_not_depend_on_the_order_rows_arrive_in() {
        let rows = [
            "('p2', 'M', 0.1)",
            "('p1', 'F', 0.2)",
            "('p3', 'F', NULL)",
            "('p1', 'F', 0.3)",
            "('p2', 'F', 1e16)",
            "('p2', 'F', -1e16)",
            "('p4', NULL, 7.0)",
        ];
        let job = "SELECT k, COUNT(*) AS n, COUNT(DISTINCT patient_pseudonym) AS p, SUM(x) AS s, AVG(x) AS m FROM t GROUP BY k";
        let run = |rows: &[&str]| {
            computed(
                &format!(
                    "CREATE TABLE t (patient_pseudonym VARCHAR, k VARCHAR, x DOUBLE) AS VALUES {}",
                    rows.join(", ")
                ),
                job,
            )
        };
        let (first, first_membership) = run(&rows);
        let figures = |c: &Computed| {
            c.cells
                .iter()
                .map(|c| {
                    format!(
                        "{:?} {} {} {:?} {:?} {:?}",
                        c.key, c.patients, c.rows, c.nonnull, c.sums, c.top
                    )
                })
                .collect::<Vec<_>>()
        };
        let keys: Vec<&str> = first.cells.iter().map(|c| c.key[0].as_str()).collect();
        assert_eq!(keys, vec!["", "F", "M"]);
        assert_eq!((first.cells[1].patients, first.cells[1].rows), (3, 5));
        assert_eq!(first.cells[1].nonnull, vec![4]);
        let mut reversed = rows;
        reversed.reverse();
        for order in [
            reversed,
            [
                rows[4], rows[0], rows[6], rows[5], rows[2], rows[3], rows[1],
            ],
        ] {
            let (again, membership) = run(&order);
            assert_eq!(figures(&again), figures(&first));
            assert!(membership == first_membership, "membership.parquet differs");
        }
    }
}
