//! The release gate of a job: what of the TRE-computed table the analyst may see.
//!
//! Owns [`judge`]: it lays the computed cells out as a table for the disclosure checks
//! with the PATIENT count as the first count (so threshold and secondary suppression run
//! on patients: rows and non-null counts are hidden wherever patients are), each sum with
//! its per-patient largest contributions (dominance) and its number of patients giving
//! it a non-zero value (a sum needs the threshold of those), then writes the analyst's
//! columns: `result.parquet` (exact, private), `safe.csv` (published values only; a mean
//! is shown only where its sum and its count are; a ratio is registered with the
//! disclosure check as a derived column and recomputed there from the PUBLISHED values
//! of its two statistics in the same cell; a share is the cell's published value over
//! the sum of its partition's published values, hidden for the whole partition when any
//! cell of it is hidden; a median, like MIN/MAX, only where the cell's count is
//! published), `check.json` and the report (checkers only), and `cells.json` (what the
//! analyst saw per cell, for the received ledger: the additive statistics, including a
//! ratio's or a share's operands, never the derived values, which add no fact), and
//! decides the [`JobVerdict`]. Danger: a value reaches `safe.csv` only through the
//! disclosure machinery's per-cell status; the analyst's words never carry a hidden value.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;

use super::cells::{Cell, Computed, membership_measures, summed};
use super::spec::{Output, Stat, TableSpec};
use super::{QueryError, QueryOutcome};
use crate::disclosure::{self, CellStatus, DerivedKind, DerivedSpec, RoleSpec, Rules};
use crate::durable::{FileRecord, Mode, write_atomic};
use crate::output::ParquetSink;
use crate::tre::verdict::{JobVerdict, RefusalReason};

pub use crate::received::CELLS_FILE;
use crate::received::{Published as Seen, ReceivedCell, ReceivedTable};

/// The check table's column for a statistic.
fn check_column(spec: &TableSpec, s: Stat) -> String {
    match s {
        Stat::Mean(i) => spec.label(Stat::Sum(i)),
        other => spec.label(other),
    }
}

/// A cell's exact value of an additive statistic (`None` for the others).
fn exact(c: &Cell, s: Stat) -> Option<f64> {
    match s {
        Stat::Patients => Some(c.patients as f64),
        Stat::Rows => Some(c.rows as f64),
        Stat::NonNull(i) => c.nonnull.get(i).map(|v| *v as f64),
        Stat::Sum(i) => c.sums.get(i).copied(),
        _ => None,
    }
}

/// `scale * num / den`, where the denominator is not zero.
fn divide(num: Option<f64>, den: Option<f64>, percent: bool) -> Option<f64> {
    let scale = if percent { 100.0 } else { 1.0 };
    match (num, den) {
        (Some(n), Some(d)) if d != 0.0 => Some(scale * n / d),
        _ => None,
    }
}

/// A cell's partition for a share: its values of the keys `by`.
fn partition(c: &Cell, by: &[usize]) -> Vec<String> {
    by.iter()
        .map(|k| c.key.get(*k).cloned().unwrap_or_default())
        .collect()
}

/// Shares: each cell's value over its partition's total, `None` where the value is
/// `None` or (when `all_or_none`) where any cell of its partition is `None`.
fn shares(
    cells: &[Cell],
    values: &[Option<f64>],
    by: &[usize],
    percent: bool,
    all_or_none: bool,
) -> Vec<Option<f64>> {
    let mut parts: HashMap<Vec<String>, (f64, bool)> = HashMap::new();
    for (c, v) in cells.iter().zip(values) {
        let e = parts.entry(partition(c, by)).or_insert((0.0, false));
        match v {
            Some(v) => e.0 += v,
            None => e.1 = true,
        }
    }
    cells
        .iter()
        .zip(values)
        .map(|(c, v)| {
            let (total, any_hidden) = parts.get(&partition(c, by)).copied()?;
            if all_or_none && any_hidden {
                return None;
            }
            divide(*v, Some(total), percent)
        })
        .collect()
}

/// The ratios of the table (distinct check columns): (label, numerator, denominator, percent).
fn ratios(spec: &TableSpec) -> Vec<(String, Stat, Stat, bool)> {
    let mut v: Vec<(String, Stat, Stat, bool)> = Vec::new();
    for (_, o) in &spec.outputs {
        if let Output::Ratio { num, den, percent } = o {
            let label = spec.ratio_label(*num, *den, *percent);
            if !v.iter().any(|(l, ..)| *l == label) {
                v.push((label, *num, *den, *percent));
            }
        }
    }
    v
}

/// Judge the computed table; write the job's files; fill in the outcome.
pub fn judge(
    spec: &TableSpec,
    computed: &Computed,
    rules: &Rules,
    dir: &Path,
    outcome: &mut QueryOutcome,
) -> Result<(), QueryError> {
    let n = computed.cells.len();
    debug_assert!(
        computed.cells.windows(2).all(|w| w[0].key <= w[1].key),
        "cells come in key order"
    );
    write_result(spec, computed, dir, outcome)?;
    if let Some(why) = single_patient_cells(computed, rules) {
        // Row-level in all but name: refused before the (costly) suppression search, as
        // the disclosure checks' own "mostly ones" rule would block it.
        outcome.report = Some(format!("Blocked as row-level data: {why}.\n"));
        outcome.verdict = JobVerdict::Refused {
            reason: RefusalReason::NotATable {
                message: ROW_LEVEL.into(),
            },
        };
        return Ok(());
    }
    let batch = check_table(spec, computed, rules)?;
    let names: Vec<String> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let role_spec = role_spec(spec, &names, rules);
    let report = disclosure::check(std::slice::from_ref(&batch), &role_spec, rules)?;
    let json = serde_json::to_vec_pretty(&report).map_err(|_| QueryError::Rules {
        spec: outcome.rules.clone(),
    })?;
    write_atomic(&dir.join("check.json"), &json, Mode::Private)?;
    outcome.report = Some(report.render(disclosure::Format::Markdown));
    if report.verdict == disclosure::Verdict::Blocked {
        outcome.verdict = JobVerdict::Refused {
            reason: RefusalReason::NotATable {
                message: ROW_LEVEL.into(),
            },
        };
        return Ok(());
    }
    let safe = match report.apply() {
        Ok(s) => s,
        Err(disclosure::DisclosureError::Unprotected { cells, .. }) => {
            outcome.verdict = JobVerdict::Refused {
                reason: RefusalReason::Unprotectable { cells },
            };
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let status = |col: &str, row: usize| -> CellStatus {
        report
            .cell_status
            .get(col)
            .and_then(|v| v.get(row).copied())
            .unwrap_or(CellStatus::Hidden)
    };
    let value = |col: &str, row: usize| -> Option<f64> {
        let i = safe.schema().index_of(col).ok()?;
        let a = arrow::compute::cast(safe.column(i), &DataType::Float64).ok()?;
        let a = a.as_any().downcast_ref::<Float64Array>()?;
        (!arrow::array::Array::is_null(a, row)).then(|| a.value(row))
    };
    // The analyst's columns, cells in key order.
    let mut fields = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    let mut hidden = vec![false; n];
    for (name, what) in &spec.outputs {
        match what {
            Output::Key(k) => {
                let a: StringArray = (0..n)
                    .map(|r| Some(computed.cells[r].key[*k].clone()))
                    .collect();
                fields.push(Field::new(name, DataType::Utf8, true));
                arrays.push(Arc::new(a));
            }
            Output::Stat(Stat::Mean(i)) => {
                let sum = spec.label(Stat::Sum(*i));
                let count = spec.label(Stat::NonNull(*i));
                let vals: Vec<Option<f64>> = (0..n)
                    .map(|r| {
                        let shown = status(&sum, r) != CellStatus::Hidden
                            && status(&count, r) != CellStatus::Hidden
                            && status("patients", r) != CellStatus::Hidden;
                        let c = &computed.cells[r];
                        let v =
                            (shown && c.nonnull[*i] > 0).then(|| c.sums[*i] / c.nonnull[*i] as f64);
                        if v.is_none() {
                            hidden[r] = true;
                        }
                        v
                    })
                    .collect();
                fields.push(Field::new(name, DataType::Float64, true));
                arrays.push(Arc::new(Float64Array::from(vals)));
            }
            Output::Ratio { num, den, percent } => {
                // Recomputed by the disclosure check from the published operands.
                let col = spec.ratio_label(*num, *den, *percent);
                let i = safe
                    .schema()
                    .index_of(&col)
                    .map_err(|e| disclosure::DisclosureError::Internal(e.to_string()))?;
                let a = safe.column(i).clone();
                let a = arrow::compute::cast(&a, &DataType::Float64)
                    .map_err(|e| disclosure::DisclosureError::Internal(e.to_string()))?;
                for (r, h) in hidden.iter_mut().enumerate() {
                    *h |= arrow::array::Array::is_null(&a, r);
                }
                fields.push(Field::new(name, DataType::Float64, true));
                arrays.push(a);
            }
            Output::Share { of, by, percent } => {
                let col = check_column(spec, *of);
                let published: Vec<Option<f64>> = (0..n)
                    .map(|r| {
                        (status(&col, r) != CellStatus::Hidden)
                            .then(|| value(&col, r))
                            .flatten()
                    })
                    .collect();
                let v = shares(&computed.cells, &published, by, *percent, true);
                let vals: Vec<Option<f64>> = (0..n)
                    .map(|r| {
                        if v[r].is_none() {
                            hidden[r] = true;
                        }
                        v[r]
                    })
                    .collect();
                fields.push(Field::new(name, DataType::Float64, true));
                arrays.push(Arc::new(Float64Array::from(vals)));
            }
            Output::Stat(s @ (Stat::Min(_) | Stat::Max(_) | Stat::Median(_))) => {
                let col = spec.label(*s);
                let i = safe
                    .schema()
                    .index_of(&col)
                    .map_err(|e| disclosure::DisclosureError::Internal(e.to_string()))?;
                let a = safe.column(i).clone();
                for (r, h) in hidden.iter_mut().enumerate() {
                    *h |= arrow::array::Array::is_null(&a, r);
                }
                fields.push(Field::new(name, a.data_type().clone(), true));
                arrays.push(a);
            }
            Output::Stat(s) => {
                let col = check_column(spec, *s);
                let vals: Vec<Option<f64>> = (0..n)
                    .map(|r| {
                        let v = (status(&col, r) != CellStatus::Hidden)
                            .then(|| value(&col, r))
                            .flatten();
                        if v.is_none() {
                            hidden[r] = true;
                        }
                        v
                    })
                    .collect();
                if matches!(s, Stat::Sum(_)) {
                    fields.push(Field::new(name, DataType::Float64, true));
                    arrays.push(Arc::new(Float64Array::from(vals)));
                } else {
                    let a: Int64Array = vals.iter().map(|v| v.map(|x| x as i64)).collect();
                    fields.push(Field::new(name, DataType::Int64, true));
                    arrays.push(Arc::new(a));
                }
            }
        }
    }
    let table = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
        .map_err(|e| disclosure::DisclosureError::Internal(e.to_string()))?;
    let csv = super::safe_csv(&table)?;
    let rec = write_atomic(&dir.join("safe.csv"), &csv, Mode::Private)?;
    outcome.safe = Some(FileRecord {
        path: "safe.csv".into(),
        ..rec
    });
    write_cells(spec, computed, rules, dir, &status, &value)?;
    let hidden_cells = hidden.iter().filter(|h| **h).count();
    outcome.verdict = if hidden_cells == 0 {
        JobVerdict::Releasable
    } else {
        JobVerdict::ReleasableWithHidden {
            hidden_cells,
            advice: advice(spec, computed, &hidden),
        }
    };
    Ok(())
}

/// What the analyst is told of a table blocked as row-level.
const ROW_LEVEL: &str = "this table is row-level data, not an aggregate (its keys single out patients); group by coarser categories";

/// The disclosure checks' "mostly ones" rule on the patient counts: more than the rules'
/// share of the cells hold one patient.
fn single_patient_cells(computed: &Computed, rules: &Rules) -> Option<String> {
    let rl = &rules.row_level;
    let n = computed.cells.len();
    let ones = computed.cells.iter().filter(|c| c.patients == 1).count();
    (n >= rl.min_cells_for_ones_check && ones as f64 > rl.max_share_of_ones * n as f64).then(|| {
        format!(
            "{ones} of {n} cells hold a single patient (more than {:.0}%)",
            rl.max_share_of_ones * 100.0
        )
    })
}

/// The table the disclosure checks see.
fn check_table(
    spec: &TableSpec,
    computed: &Computed,
    rules: &Rules,
) -> Result<RecordBatch, QueryError> {
    let cells = &computed.cells;
    let mut fields = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    for (k, name) in dim_names(spec).iter().enumerate() {
        let a: StringArray = cells
            .iter()
            .map(|c| Some(c.key.get(k).cloned().unwrap_or_else(|| "everyone".into())))
            .collect();
        fields.push(Field::new(name, DataType::Utf8, false));
        arrays.push(Arc::new(a));
    }
    let mut push = |name: String, a: ArrayRef| {
        fields.push(Field::new(name, a.data_type().clone(), false));
        arrays.push(a);
    };
    let int = |v: Vec<i64>| Arc::new(Int64Array::from(v)) as ArrayRef;
    let float = |v: Vec<f64>| Arc::new(Float64Array::from(v)) as ArrayRef;
    for s in count_stats(spec) {
        let v = cells
            .iter()
            .map(|c| match s {
                Stat::Patients => c.patients as i64,
                Stat::Rows => c.rows as i64,
                Stat::NonNull(i) => c.nonnull[i] as i64,
                _ => 0,
            })
            .collect();
        push(spec.label(s), int(v));
        if let Stat::NonNull(i) = s {
            push(
                format!("{} holders", spec.label(s)),
                int(cells.iter().map(|c| c.nonnull_holders[i] as i64).collect()),
            );
        }
    }
    let top = rules.contributors_needed();
    for (i, s) in summed(spec).iter().enumerate() {
        if !s {
            continue;
        }
        let label = spec.label(Stat::Sum(i));
        push(
            format!("{label} holders"),
            int(cells.iter().map(|c| c.holders[i] as i64).collect()),
        );
        push(
            label.clone(),
            float(cells.iter().map(|c| c.sums[i]).collect()),
        );
        for t in 0..top {
            push(
                format!("{label} top{}", t + 1),
                float(
                    cells
                        .iter()
                        .map(|c| c.top[i].get(t).copied().unwrap_or(0.0))
                        .collect(),
                ),
            );
        }
    }
    for (s, a) in &computed.order_stats {
        fields.push(Field::new(spec.label(*s), a.data_type().clone(), true));
        arrays.push(a.clone());
    }
    for (label, num, den, percent) in ratios(spec) {
        let v: Float64Array = cells
            .iter()
            .map(|c| divide(exact(c, num), exact(c, den), percent))
            .collect();
        fields.push(Field::new(label, DataType::Float64, true));
        arrays.push(Arc::new(v));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
        .map_err(|e| disclosure::DisclosureError::Internal(e.to_string()).into())
}

/// The check table's dimension names: the analyst's key names (prefixed if one is named
/// like a measure), or one constant dimension for a table without keys.
fn dim_names(spec: &TableSpec) -> Vec<String> {
    if spec.keys.is_empty() {
        return vec!["population".into()];
    }
    spec.keys
        .iter()
        .map(|k| {
            if k == "patients" || k == "rows" || k.contains(':') {
                format!("key {k}")
            } else {
                k.clone()
            }
        })
        .collect()
}

/// The count columns: patients first, then rows and non-null counts (means' too).
fn count_stats(spec: &TableSpec) -> Vec<Stat> {
    let mut v = vec![Stat::Patients];
    for s in spec.stats() {
        let c = match s {
            Stat::Rows | Stat::NonNull(_) => s,
            Stat::Mean(i) => Stat::NonNull(i),
            _ => continue,
        };
        if !v.contains(&c) {
            v.push(c);
        }
    }
    v
}

fn role_spec(spec: &TableSpec, names: &[String], rules: &Rules) -> RoleSpec {
    let counts: Vec<String> = count_stats(spec).iter().map(|s| spec.label(*s)).collect();
    let mut magnitudes = Vec::new();
    let mut contributors = Vec::new();
    // A non-null count counts rows of a sub-population: it needs T patients too.
    let mut holders: Vec<(String, String)> = count_stats(spec)
        .into_iter()
        .filter(|s| matches!(s, Stat::NonNull(_)))
        .map(|s| (spec.label(s), format!("{} holders", spec.label(s))))
        .collect();
    for (i, s) in summed(spec).iter().enumerate() {
        if !s {
            continue;
        }
        let label = spec.label(Stat::Sum(i));
        let top: Vec<String> = (0..rules.contributors_needed())
            .map(|t| format!("{label} top{}", t + 1))
            .filter(|c| names.contains(c))
            .collect();
        contributors.push((label.clone(), top));
        holders.push((label.clone(), format!("{label} holders")));
        magnitudes.push(label);
    }
    let order_stats = spec
        .stats()
        .into_iter()
        .filter(|s| matches!(s, Stat::Min(_) | Stat::Max(_) | Stat::Median(_)))
        .map(|s| spec.label(s))
        .collect();
    let derived = ratios(spec)
        .into_iter()
        .map(|(label, num, den, _)| DerivedSpec {
            column: label,
            kind: DerivedKind::Ratio,
            numerator: Some(check_column(spec, num)),
            denominator: Some(check_column(spec, den)),
        })
        .collect();
    RoleSpec {
        order_stats,
        derived,
        dims: Some(dim_names(spec)),
        counts: Some(counts),
        magnitudes: Some(magnitudes),
        contributors,
        holders,
        margins: Some(false),
        how: Some("computed by the TRE from counted patients".into()),
        ..RoleSpec::default()
    }
}

/// `result.parquet`: the analyst's columns with their exact values (never leaves).
fn write_result(
    spec: &TableSpec,
    computed: &Computed,
    dir: &Path,
    outcome: &mut QueryOutcome,
) -> Result<(), QueryError> {
    let cells = &computed.cells;
    let n = cells.len();
    let mut fields = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    for (name, what) in &spec.outputs {
        let (dt, a): (DataType, ArrayRef) = match what {
            Output::Ratio { num, den, percent } => (
                DataType::Float64,
                Arc::new(
                    (0..n)
                        .map(|r| divide(exact(&cells[r], *num), exact(&cells[r], *den), *percent))
                        .collect::<Float64Array>(),
                ),
            ),
            Output::Share { of, by, percent } => {
                let values: Vec<Option<f64>> = cells.iter().map(|c| exact(c, *of)).collect();
                let v = shares(cells, &values, by, *percent, false);
                (
                    DataType::Float64,
                    Arc::new((0..n).map(|r| v[r]).collect::<Float64Array>()),
                )
            }
            Output::Stat(s @ (Stat::Min(_) | Stat::Max(_) | Stat::Median(_))) => {
                let a = computed
                    .order_stats
                    .iter()
                    .find(|(x, _)| x == s)
                    .map(|(_, a)| a.clone())
                    .ok_or_else(|| {
                        disclosure::DisclosureError::Internal("order statistic".into())
                    })?;
                (a.data_type().clone(), a)
            }
            Output::Key(k) => (
                DataType::Utf8,
                Arc::new(
                    (0..n)
                        .map(|r| Some(cells[r].key[*k].clone()))
                        .collect::<StringArray>(),
                ),
            ),
            Output::Stat(s @ (Stat::Sum(_) | Stat::Mean(_))) => (
                DataType::Float64,
                Arc::new(Float64Array::from(
                    (0..n)
                        .map(|r| {
                            let c = &cells[r];
                            match s {
                                Stat::Sum(i) => Some(c.sums[*i]),
                                Stat::Mean(i) if c.nonnull[*i] > 0 => {
                                    Some(c.sums[*i] / c.nonnull[*i] as f64)
                                }
                                _ => None,
                            }
                        })
                        .collect::<Vec<_>>(),
                )),
            ),
            Output::Stat(s) => (
                DataType::Int64,
                Arc::new(Int64Array::from(
                    (0..n)
                        .map(|r| {
                            let c = &cells[r];
                            match s {
                                Stat::Patients => c.patients as i64,
                                Stat::Rows => c.rows as i64,
                                Stat::NonNull(i) => c.nonnull[*i] as i64,
                                _ => 0,
                            }
                        })
                        .collect::<Vec<_>>(),
                )),
            ),
        };
        fields.push(Field::new(name, dt, true));
        arrays.push(a);
    }
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), arrays)
        .map_err(|e| disclosure::DisclosureError::Internal(e.to_string()))?;
    let mut sink =
        ParquetSink::create_with_mode(&dir.join("result.parquet"), schema, Mode::Private)?;
    sink.write(&batch)?;
    let (record, _) = sink.finish()?;
    outcome.rows = cells.len() as u64;
    outcome.columns = spec.outputs.iter().map(|(n, _)| n.clone()).collect();
    outcome.result = FileRecord {
        path: "result.parquet".into(),
        ..record
    };
    Ok(())
}

/// `cells.json`: what the analyst saw of each additive measure, per cell.
fn write_cells(
    spec: &TableSpec,
    computed: &Computed,
    rules: &Rules,
    dir: &Path,
    status: &impl Fn(&str, usize) -> CellStatus,
    value: &impl Fn(&str, usize) -> Option<f64>,
) -> Result<(), QueryError> {
    let measures = membership_measures(spec);
    let labels: Vec<String> = measures.iter().map(|m| spec.label(*m)).collect();
    let cells = computed
        .cells
        .iter()
        .enumerate()
        .map(|(r, c)| ReceivedCell {
            key: c.key.clone(),
            values: labels
                .iter()
                .map(|l| match (status(l, r), value(l, r)) {
                    (CellStatus::Hidden, _) | (_, None) => Seen::Hidden,
                    (CellStatus::Rounded { base }, Some(v)) => {
                        let b = base as f64 / 2.0;
                        Seen::Interval((v - b).max(0.0), v + b)
                    }
                    (CellStatus::Midpoint { base }, Some(v)) => {
                        let b = base as f64 / 2.0;
                        Seen::Interval((v - b.floor() + 1.0).max(0.0), v + b.ceil())
                    }
                    (_, Some(v)) => Seen::Exact(v),
                })
                .collect(),
        })
        .collect();
    let file = ReceivedTable {
        format: crate::received::table::FORMAT,
        table: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        threshold: u32::try_from(rules.suppression.min_count).unwrap_or(u32::MAX),
        measures: labels,
        cells,
        totals: Vec::new(),
        sum_protection: Some(rules.sum_protection()),
    };
    let json = serde_json::to_vec(&file).map_err(|_| QueryError::Rules {
        spec: "cells.json".into(),
    })?;
    write_atomic(&dir.join(CELLS_FILE), &json, Mode::Private)?;
    Ok(())
}

/// What to change, from the shape of the published table only (which cells are empty):
/// the categories of each key with hidden cells, to combine with their neighbours.
fn advice(spec: &TableSpec, computed: &Computed, hidden: &[bool]) -> Vec<String> {
    let mut per_dim: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for (r, h) in hidden.iter().enumerate() {
        if !h {
            continue;
        }
        for (k, v) in computed.cells[r].key.iter().enumerate() {
            let cats = per_dim.entry(k).or_default();
            if !cats.contains(v) {
                cats.push(v.clone());
            }
        }
    }
    per_dim
        .into_iter()
        .filter_map(|(k, mut cats)| {
            let name = spec.keys.get(k)?;
            cats.sort();
            let total = computed
                .cells
                .iter()
                .map(|c| &c.key[k])
                .collect::<std::collections::BTreeSet<_>>()
                .len();
            if cats.len() == total || cats.len() > 10 {
                return Some(format!("group {name} into fewer, larger categories"));
            }
            Some(format!(
                "combine {} in {name} (with each other or a neighbouring category)",
                cats.join(" and ")
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::logical_expr::LogicalPlanBuilder;

    fn spec() -> TableSpec {
        TableSpec {
            population: LogicalPlanBuilder::empty(false).build().expect("plan"),
            keys: vec!["sex".into()],
            args: 0,
            arg_labels: Vec::new(),
            outputs: vec![
                ("sex".into(), Output::Key(0)),
                ("n".into(), Output::Stat(Stat::Rows)),
            ],
        }
    }

    fn cell(sex: &str, patients: u64, rows: u64) -> Cell {
        Cell {
            key: vec![sex.into()],
            patients,
            rows,
            ..Cell::default()
        }
    }

    fn outcome() -> QueryOutcome {
        QueryOutcome::empty("opensafely".into(), String::new())
    }

    #[test]
    fn rows_of_few_patients_are_hidden_however_many_rows_they_are() {
        let dir = tempfile::tempdir().expect("dir");
        let computed = Computed {
            cells: vec![
                cell("F", 900, 900),
                // Two patients with 500 rows each: the row count passes any threshold.
                cell("I", 2, 1000),
                cell("M", 880, 880),
                cell("U", 40, 40),
            ],
            order_stats: Vec::new(),
        };
        let rules = Rules::preset("opensafely").expect("preset");
        let mut o = outcome();
        judge(&spec(), &computed, &rules, dir.path(), &mut o).expect("judge");
        assert!(o.verdict.has_safe_table(), "{:?}", o.verdict);
        let safe = std::fs::read_to_string(dir.path().join("safe.csv")).expect("safe");
        assert!(safe.contains("I,\n"), "the I row is hidden: {safe}");
        assert!(!safe.contains("1000"), "{safe}");
        let JobVerdict::ReleasableWithHidden { advice, .. } = &o.verdict else {
            panic!("{:?}", o.verdict);
        };
        assert!(advice.iter().any(|a| a.contains('I')), "{advice:?}");
        assert!(!o.verdict.for_analyst().contains("1000"));
        let cells: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(CELLS_FILE)).expect("cells"))
                .expect("json");
        assert_eq!(cells["measures"], serde_json::json!(["rows"]));
        assert_eq!(
            cells["cells"][1]["values"][0],
            serde_json::json!({"hidden": null})
        );
        assert_eq!(cells["threshold"], 8);
        // The guard protects small groups' sums by the rules' p% (10% without one).
        assert_eq!(cells["sum_protection"], rules.sum_protection());
    }

    fn cell2(age: &str, sex: &str, patients: u64) -> Cell {
        Cell {
            key: vec![age.into(), sex.into()],
            patients,
            rows: 2 * patients,
            ..Cell::default()
        }
    }

    #[test]
    fn ratios_and_shares_are_computed_from_published_cells_only() {
        let dir = tempfile::tempdir().expect("dir");
        let spec = TableSpec {
            population: LogicalPlanBuilder::empty(false).build().expect("plan"),
            keys: vec!["age".into(), "sex".into()],
            args: 0,
            arg_labels: Vec::new(),
            outputs: vec![
                ("age".into(), Output::Key(0)),
                ("sex".into(), Output::Key(1)),
                ("n".into(), Output::Stat(Stat::Rows)),
                (
                    "per_patient".into(),
                    Output::Ratio {
                        num: Stat::Rows,
                        den: Stat::Patients,
                        percent: false,
                    },
                ),
                (
                    "pct".into(),
                    Output::Share {
                        of: Stat::Rows,
                        by: vec![0],
                        percent: true,
                    },
                ),
                (
                    "all".into(),
                    Output::Share {
                        of: Stat::Rows,
                        by: vec![],
                        percent: false,
                    },
                ),
            ],
        };
        let computed = Computed {
            cells: vec![
                cell2("0-9", "F", 101),
                cell2("0-9", "I", 2),
                cell2("0-9", "M", 99),
                cell2("10-19", "F", 120),
                cell2("10-19", "M", 130),
                cell2("20-29", "F", 140),
                cell2("20-29", "I", 40),
                cell2("20-29", "M", 150),
            ],
            order_stats: Vec::new(),
        };
        let rules = Rules::preset("opensafely").expect("preset");
        let mut o = outcome();
        judge(&spec, &computed, &rules, dir.path(), &mut o).expect("judge");
        assert!(o.verdict.has_safe_table(), "{:?}", o.verdict);
        let safe = std::fs::read_to_string(dir.path().join("safe.csv")).expect("safe");
        let rows: Vec<Vec<String>> = safe
            .lines()
            .skip(1)
            .map(|l| l.split(',').map(String::from).collect())
            .collect();
        assert_eq!(rows.len(), 8, "{safe}");
        let num = |v: &str| v.parse::<f64>().ok();
        for r in &rows {
            let (n, ratio, pct, all) = (num(&r[2]), num(&r[3]), num(&r[4]), num(&r[5]));
            // Hidden where the count is hidden; else the published count over the
            // published patients (rounded to 5 under opensafely), never exact values.
            assert_eq!(n.is_none(), ratio.is_none(), "{safe}");
            // A share over the whole table is hidden everywhere (one cell is hidden).
            assert!(all.is_none(), "{safe}");
            let part: Vec<&Vec<String>> = rows.iter().filter(|x| x[0] == r[0]).collect();
            let any_hidden = part.iter().any(|x| x[2].is_empty());
            assert_eq!(pct.is_none(), any_hidden, "{safe}");
            if let (Some(n), Some(pct)) = (n, pct) {
                let total: f64 = part.iter().filter_map(|x| num(&x[2])).sum();
                assert!((pct - 100.0 * n / total).abs() < 1e-9, "{safe}");
            }
        }
        // The small cell's row is hidden in every statistic.
        let i = rows
            .iter()
            .find(|r| r[0] == "0-9" && r[1] == "I")
            .expect("I");
        assert!(i[2..].iter().all(|v| v.is_empty()), "{safe}");
        // The ratio is recomputed from the published (rounded) counts: 240 / 120.
        let f = rows
            .iter()
            .find(|r| r[0] == "10-19" && r[1] == "F")
            .expect("F");
        assert_eq!(num(&f[3]), Some(2.0), "{safe}");
        assert_eq!(num(&f[4]), Some(48.0), "{safe}");
        // cells.json records the operands (published), never the derived columns.
        let cells: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(CELLS_FILE)).expect("cells"))
                .expect("json");
        assert_eq!(cells["measures"], serde_json::json!(["rows", "patients"]));
        // The private result holds the exact values.
        assert!(dir.path().join("result.parquet").exists());
    }

    #[test]
    fn a_ratio_of_a_sum_is_recomputed_from_the_published_sum_and_count() {
        let dir = tempfile::tempdir().expect("dir");
        let spec = TableSpec {
            population: LogicalPlanBuilder::empty(false).build().expect("plan"),
            keys: vec!["sex".into()],
            args: 1,
            arg_labels: vec!["x".into()],
            outputs: vec![
                ("sex".into(), Output::Key(0)),
                (
                    "per_patient".into(),
                    Output::Ratio {
                        num: Stat::Sum(0),
                        den: Stat::Patients,
                        percent: true,
                    },
                ),
            ],
        };
        let cell = |sex: &str, patients: u64, sum: f64| Cell {
            key: vec![sex.into()],
            patients,
            rows: patients,
            nonnull: vec![patients],
            nonnull_holders: vec![patients],
            sums: vec![sum],
            holders: vec![patients],
            top: vec![vec![sum / patients as f64; 2]],
        };
        let computed = Computed {
            cells: vec![
                cell("F", 900, 4500.0),
                cell("I", 2, 400.0),
                cell("M", 880, 1760.0),
                cell("U", 40, 80.0),
            ],
            order_stats: Vec::new(),
        };
        let rules = Rules::preset("opensafely").expect("preset");
        let mut o = outcome();
        judge(&spec, &computed, &rules, dir.path(), &mut o).expect("judge");
        let safe = std::fs::read_to_string(dir.path().join("safe.csv")).expect("safe");
        assert!(safe.starts_with("sex,per_patient\n"), "{safe}");
        assert!(safe.contains("\nF,500.0\n"), "{safe}");
        assert!(safe.contains("\nI,\n"), "the small cell is hidden: {safe}");
        assert!(!safe.contains("20000"), "{safe}");
        let cells: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(CELLS_FILE)).expect("cells"))
                .expect("json");
        assert_eq!(cells["measures"], serde_json::json!(["sum:x", "patients"]));
    }
}
