//! The table the TRE computes itself: per cell, its patients, rows, sums and the
//! per-patient contributions, from the population the analyst's SQL defines.
//!
//! Owns [`compute`]: it checks BY VALUE that every row of the population carries the
//! pseudonym of a patient of the project's installed datasets (an anti-join against the
//! union of their `patient_pseudonym` values; any unknown or missing one refuses the job
//! with one bit), then aggregates per (cell, patient) in DataFusion and per cell here,
//! streaming: each cell's distinct patients, rows, non-null rows and sum per argument,
//! the number of patients giving a sum a non-zero value, and the largest per-patient
//! contributions (for dominance). Each (patient, cell) pair is written as it streams to
//! `membership.parquet` (the received ledger's file). Danger: this module holds patient
//! values; it never puts one in an error, a log or a Debug string, and it never decides
//! what is published (see `gate`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};
use arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::prelude::{DataFrame, SessionContext};
use futures::StreamExt;

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

/// The computed table: cells in first-seen order (the order of `membership.parquet`).
#[derive(Debug, Clone, Default)]
pub struct Computed {
    /// The cells.
    pub cells: Vec<Cell>,
    /// Allowed MIN/MAX statistics: their values in cell order (their own type).
    pub order_stats: Vec<(Stat, ArrayRef)>,
}

/// How the population failed the patient check (one bit for the analyst).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PopulationCheck {
    /// Every row carries a known patient.
    Known,
    /// Some row does not.
    Unknown,
}

/// Check by value that every population row carries a patient of the installed datasets.
pub async fn check_patients(
    ctx: &SessionContext,
    datasets: &[(String, std::path::PathBuf)],
    err: &impl Fn(DataFusionError) -> QueryError,
) -> Result<PopulationCheck, QueryError> {
    let mut known = Vec::new();
    for (name, _) in datasets {
        let table = ctx.table(name.as_str()).await.map_err(err)?;
        if table
            .schema()
            .has_column_with_unqualified_name(PATIENT_COLUMN)
        {
            known.push(format!(
                "SELECT CAST({PATIENT_COLUMN} AS VARCHAR) AS known_pseudonym FROM \"{}\"",
                name.replace('"', "\"\"")
            ));
        }
    }
    if known.is_empty() {
        return Ok(PopulationCheck::Unknown);
    }
    let sql = format!(
        "SELECT COUNT(*) AS n FROM {POPULATION} pop LEFT JOIN (SELECT DISTINCT known_pseudonym FROM ({}) u) k ON pop.p = k.known_pseudonym WHERE k.known_pseudonym IS NULL",
        known.join(" UNION ALL ")
    );
    let batches = ctx
        .sql(&sql)
        .await
        .map_err(err)?
        .collect()
        .await
        .map_err(err)?;
    let unknown: i64 = batches
        .iter()
        .filter(|b| b.num_rows() > 0)
        .map(|b| b.column(0).as_primitive::<Int64Type>().value(0))
        .sum();
    Ok(if unknown == 0 {
        PopulationCheck::Known
    } else {
        PopulationCheck::Unknown
    })
}

/// Register the population and check its patients.
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
        .filter(|s| !matches!(s, Stat::Mean(_) | Stat::Min(_) | Stat::Max(_)))
        .collect()
}

/// Aggregate the registered population per (cell, patient) in DataFusion, then per cell
/// here, writing `membership.parquet` into `dir` as it goes (`membership_time`: time
/// spent writing it, for the benchmark).
#[allow(clippy::too_many_arguments)]
pub async fn compute(
    ctx: &SessionContext,
    spec: &TableSpec,
    top: usize,
    limits: &QueryLimits,
    max_cells: usize,
    dir: &Path,
    membership_time: &mut std::time::Duration,
    err: &impl Fn(DataFusionError) -> QueryError,
) -> Result<Result<Computed, usize>, QueryError> {
    let nk = spec.keys.len();
    let sums = summed(spec);
    let keys: Vec<String> = (0..nk).map(|i| format!("k{i}")).collect();
    let mut select: Vec<String> = keys.clone();
    select.push("p".into());
    select.push("COUNT(*) AS r".into());
    for (i, s) in sums.iter().enumerate() {
        select.push(format!("COUNT(a{i}) AS c{i}"));
        if *s {
            select.push(format!("SUM(a{i}) AS s{i}"));
        }
    }
    let mut group = keys.clone();
    group.push("p".into());
    let sql = format!(
        "SELECT {} FROM {POPULATION} GROUP BY {}",
        select.join(", "),
        group.join(", ")
    );
    let measures = membership_measures(spec);
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
    let mut stream = ctx
        .sql(&sql)
        .await
        .map_err(err)?
        .execute_stream()
        .await
        .map_err(err)?;
    let mut index: HashMap<Vec<String>, usize> = HashMap::new();
    let mut out = Computed::default();
    let mut pairs = 0u64;
    while let Some(b) = stream.next().await {
        let b = b.map_err(err)?;
        pairs += b.num_rows() as u64;
        if pairs > limits.max_rows {
            return Err(QueryError::RowLimit {
                limit: limits.max_rows,
            });
        }
        let text = |i: usize| -> Result<ArrayRef, QueryError> {
            arrow::compute::cast(b.column(i), &DataType::Utf8).map_err(|_| QueryError::Run {
                failure: super::SqlFailure::Execution,
            })
        };
        let key_cols: Vec<ArrayRef> = (0..nk).map(text).collect::<Result<_, _>>()?;
        let key_cols: Vec<&StringArray> = key_cols.iter().map(|a| a.as_string::<i32>()).collect();
        let p = text(nk)?;
        let p = p.as_string::<i32>();
        let r = b.column(nk + 1).as_primitive::<Int64Type>();
        let mut col = nk + 2;
        let mut arg_cols = Vec::new();
        for s in &sums {
            let c = b.column(col).as_primitive::<Int64Type>().clone();
            col += 1;
            let sum = if *s {
                col += 1;
                Some(b.column(col - 1).as_primitive::<Float64Type>().clone())
            } else {
                None
            };
            arg_cols.push((c, sum));
        }
        let mut cell_ids = Vec::with_capacity(b.num_rows());
        let mut contrib: Vec<Vec<f64>> = vec![Vec::with_capacity(b.num_rows()); measures.len()];
        for row in 0..b.num_rows() {
            let key: Vec<String> = key_cols
                .iter()
                .map(|k| {
                    if k.is_null(row) {
                        String::new()
                    } else {
                        k.value(row).to_string()
                    }
                })
                .collect();
            let id = match index.get(&key) {
                Some(i) => *i,
                None => {
                    if out.cells.len() >= max_cells {
                        return Ok(Err(max_cells));
                    }
                    index.insert(key.clone(), out.cells.len());
                    out.cells.push(Cell {
                        key,
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
            let cell = &mut out.cells[id];
            let rows = r.value(row).max(0) as u64;
            cell.patients += 1;
            cell.rows += rows;
            let mut own_sum = vec![0.0; sums.len()];
            let mut own_nonnull = vec![0u64; sums.len()];
            for (i, (c, s)) in arg_cols.iter().enumerate() {
                own_nonnull[i] = c.value(row).max(0) as u64;
                cell.nonnull[i] += own_nonnull[i];
                if own_nonnull[i] > 0 {
                    cell.nonnull_holders[i] += 1;
                }
                if let Some(s) = s {
                    let v = if s.is_null(row) { 0.0 } else { s.value(row) };
                    own_sum[i] = v;
                    cell.sums[i] += v;
                    if v != 0.0 {
                        cell.holders[i] += 1;
                    }
                    keep_top(&mut cell.top[i], v, top);
                }
            }
            cell_ids.push(u32::try_from(id).unwrap_or(u32::MAX));
            for (m, stat) in measures.iter().enumerate() {
                contrib[m].push(match stat {
                    Stat::Patients => 1.0,
                    Stat::Rows => rows as f64,
                    Stat::NonNull(i) => own_nonnull[*i] as f64,
                    Stat::Sum(i) => own_sum[*i],
                    Stat::Mean(_) | Stat::Min(_) | Stat::Max(_) => 0.0,
                });
            }
        }
        let mut arrays: Vec<ArrayRef> = vec![
            Arc::new(p.clone()) as ArrayRef,
            Arc::new(UInt32Array::from(cell_ids)),
        ];
        arrays.extend(
            contrib
                .into_iter()
                .map(|v| Arc::new(Float64Array::from(v)) as ArrayRef),
        );
        let batch = RecordBatch::try_new(schema.clone(), arrays).map_err(|_| QueryError::Run {
            failure: super::SqlFailure::Execution,
        })?;
        let started = std::time::Instant::now();
        sink.write(&batch)?;
        *membership_time += started.elapsed();
    }
    let started = std::time::Instant::now();
    sink.finish()?;
    *membership_time += started.elapsed();
    for s in spec.stats() {
        let (f, i) = match s {
            Stat::Min(i) => ("MIN", i),
            Stat::Max(i) => ("MAX", i),
            _ => continue,
        };
        let a = order_stat(ctx, &keys, &format!("{f}(a{i})"), &index, err).await?;
        out.order_stats.push((s, a));
    }
    Ok(Ok(out))
}

/// One MIN/MAX per cell, in cell order (a cell the query does not return is null).
async fn order_stat(
    ctx: &SessionContext,
    keys: &[String],
    agg: &str,
    index: &HashMap<Vec<String>, usize>,
    err: &impl Fn(DataFusionError) -> QueryError,
) -> Result<ArrayRef, QueryError> {
    let mut select = keys.to_vec();
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
}
