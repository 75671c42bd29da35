//! The job's table specification, recognised from the analyst's aggregate SQL.
//!
//! Owns [`recognise`]: the SQL's (unoptimised) plan must end in one `Aggregate`, with
//! only `Sort`, subquery aliases, projections and one kind of window above it, and its
//! aggregates from the closed set (patients: `COUNT(DISTINCT patient_pseudonym)`; rows:
//! `COUNT(*)`, `COUNT(x)`; `SUM(x)`; `AVG(x)`; `MIN`, `MAX` and `MEDIAN` where the rules
//! allow order statistics; with `FILTER` folded into the argument). Above the aggregate
//! a projection may select or rename its outputs, or derive two statistics the TRE
//! recomputes itself from PUBLISHED cells: a ratio `agg1 / agg2` and a share
//! `agg / SUM(agg) OVER ([PARTITION BY keys])`, each optionally times 100 and with casts
//! (see [`Output`]). What it returns is the POPULATION (the aggregate's input, projected
//! to the group keys as text, the measure arguments and the rows' `patient_pseudonym`)
//! and what each output column is: the TRE then computes the table itself (see `cells`).
//! Anything else is refused with a message that shows how to write it. Danger: this
//! module decides no disclosure question; it only refuses shapes the TRE cannot compute
//! itself, so a mistake here can refuse a good job but never publish a value the TRE did
//! not compute from counted patients (the SQL's own arithmetic is never run).

use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, cast, lit, when};
use datafusion::prelude::Column;

/// The column every aggregated row must carry.
pub const PATIENT_COLUMN: &str = "patient_pseudonym";

/// How the analyst's aggregate must look (said with every refusal of its shape).
pub const FORM: &str = "write the job as one aggregate: SELECT a, b, COUNT(*) AS n, COUNT(DISTINCT patient_pseudonym) AS patients, SUM(x) AS total, AVG(x) AS mean FROM ... WHERE ... GROUP BY a, b (any read-only SQL may define the rows in FROM; the TRE computes the table and decides what is published). The only statistics derived from the aggregates are a ratio, SUM(x) / COUNT(*) AS per_row, and a percentage, 100.0 * COUNT(*) / SUM(COUNT(*)) OVER (PARTITION BY a) AS pct (or OVER () for the whole table; without 100.0 a proportion): the TRE computes both from the published cells";

/// One statistic of the closed set, over a measure argument (index into `args`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stat {
    /// Distinct patients.
    Patients,
    /// Rows (`COUNT(*)`).
    Rows,
    /// Rows where the argument is not null (`COUNT(x)`, `COUNT(*) FILTER (...)`).
    NonNull(usize),
    /// Sum of the argument.
    Sum(usize),
    /// Mean of the argument (its sum over its non-null rows), derived by the TRE.
    Mean(usize),
    /// Smallest value (only where the rules allow order statistics).
    Min(usize),
    /// Largest value (only where the rules allow order statistics).
    Max(usize),
    /// The exact median (only where the rules allow order statistics).
    Median(usize),
}

/// A recognised job: the population to run and what each output column is.
#[derive(Debug, Clone)]
pub struct TableSpec {
    /// The population plan: columns `k0..`, `a0..`, `p` (see the module header).
    pub population: LogicalPlan,
    /// The analyst's group-key output names, in key order.
    pub keys: Vec<String>,
    /// Number of measure arguments (`a0..`).
    pub args: usize,
    /// A label per argument, for the private report and `cells.json` (the SQL's own text).
    pub arg_labels: Vec<String>,
    /// The analyst's output columns in order: (name, what it is).
    pub outputs: Vec<(String, Output)>,
}

/// What one output column of the analyst's SQL is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Group key `i`.
    Key(usize),
    /// A statistic.
    Stat(Stat),
    /// `num / den` (times 100 if `percent`) of the same cell, computed by the TRE from
    /// the two PUBLISHED values: hidden where either is hidden.
    Ratio {
        /// The numerator (an additive statistic: patients, rows, non-null rows, sum).
        num: Stat,
        /// The denominator (the same kinds).
        den: Stat,
        /// Times 100.
        percent: bool,
    },
    /// The cell's `of` over the sum of `of` over its partition (the cells sharing its
    /// values of the keys `by`; all cells when empty), times 100 if `percent`, computed
    /// by the TRE from the PUBLISHED cells: the denominator is the sum of the partition's
    /// published values, and a partition with any hidden cell has all its shares hidden.
    Share {
        /// The statistic shared out (additive).
        of: Stat,
        /// The partition's key indices.
        by: Vec<usize>,
        /// Times 100.
        percent: bool,
    },
}

impl TableSpec {
    /// The distinct statistics the table computes, in output order: the published ones
    /// and the operands of ratios and shares (which count as published: the derived
    /// value is a function of them).
    pub fn stats(&self) -> Vec<Stat> {
        let mut v = Vec::new();
        let mut add = |s: Stat| {
            if !v.contains(&s) {
                v.push(s);
            }
        };
        for (_, o) in &self.outputs {
            match o {
                Output::Key(_) => {}
                Output::Stat(s) => add(*s),
                Output::Ratio { num, den, .. } => {
                    add(*num);
                    add(*den);
                }
                Output::Share { of, .. } => add(*of),
            }
        }
        v
    }

    /// The check table's (and the safe table's) column of a ratio.
    pub fn ratio_label(&self, num: Stat, den: Stat, percent: bool) -> String {
        format!(
            "{}ratio:{}/{}",
            if percent { "100*" } else { "" },
            self.label(num),
            self.label(den)
        )
    }

    /// A stable label for a statistic (`patients`, `rows`, `rows:x`, `sum:x`, `mean:x`).
    pub fn label(&self, s: Stat) -> String {
        let arg = |i: usize| self.arg_labels.get(i).cloned().unwrap_or_default();
        match s {
            Stat::Patients => "patients".into(),
            Stat::Rows => "rows".into(),
            Stat::NonNull(i) => format!("rows:{}", arg(i)),
            Stat::Sum(i) => format!("sum:{}", arg(i)),
            Stat::Mean(i) => format!("mean:{}", arg(i)),
            Stat::Min(i) => format!("min:{}", arg(i)),
            Stat::Max(i) => format!("max:{}", arg(i)),
            Stat::Median(i) => format!("median:{}", arg(i)),
        }
    }
}

/// Why a job is not of the closed form (the message shows how to write it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Not the closed form.
    #[error("{what}; {FORM}")]
    Form {
        /// What is wrong, quoting the SQL's expressions (never data).
        what: String,
    },
    /// The aggregate's input has no `patient_pseudonym`.
    #[error("the rows you aggregate must carry patient_pseudonym")]
    NoPatientColumn,
    /// Building the population plan failed (a planning error, no data).
    #[error("the SQL does not plan as a population: {0}")]
    Plan(String),
}

fn form(what: impl Into<String>) -> SpecError {
    SpecError::Form { what: what.into() }
}

/// What a column above the aggregate is, by aggregate output index.
#[derive(Debug, Clone)]
enum Col {
    /// Aggregate output `i` (keys first, then aggregates).
    Agg(usize),
    /// `SUM(agg) OVER (PARTITION BY keys)`: aggregate output `of` summed over the
    /// partition of the keys `by` (aggregate output indices, all keys).
    Total { of: usize, by: Vec<usize> },
    /// `num / den` of aggregate outputs.
    Ratio {
        num: usize,
        den: usize,
        percent: bool,
    },
    /// `num / SUM(of) OVER (PARTITION BY by)`.
    Share {
        num: usize,
        of: usize,
        by: Vec<usize>,
        percent: bool,
    },
}

/// How a ratio or a share may be written (said when one is not recognised).
const DERIVED_FORM: &str = "a derived column must be a ratio of two of the table's statistics, SUM(x) / COUNT(*), or a share, 100.0 * COUNT(*) / SUM(COUNT(*)) OVER (PARTITION BY a), each optionally times 100 (the TRE computes it from the published cells)";

/// Recognise the analyst's plan (unoptimised, as the SQL planner made it).
/// `allow_min_max`: the project's rules allow order statistics (MIN, MAX, MEDIAN).
pub fn recognise(plan: &LogicalPlan, allow_min_max: bool) -> Result<TableSpec, SpecError> {
    let (agg, map) = walk(plan)?;
    let LogicalPlan::Aggregate(a) = agg else {
        return Err(form("the query has no GROUP BY aggregate at its top"));
    };
    let input = a.input.clone();
    let pp = patient_column(&input, &a.aggr_expr)?;
    let mut args: Vec<Expr> = Vec::new();
    let mut arg_labels = Vec::new();
    let mut add_arg = |e: Expr| -> usize {
        if let Some(i) = args.iter().position(|x| *x == e) {
            return i;
        }
        arg_labels.push(e.to_string());
        args.push(e);
        args.len() - 1
    };
    let mut key_exprs = Vec::new();
    for g in &a.group_expr {
        if matches!(g, Expr::GroupingSet(_)) {
            return Err(form("GROUPING SETS, ROLLUP and CUBE are not supported"));
        }
        key_exprs.push(g.clone());
    }
    let mut stats = Vec::new();
    for e in &a.aggr_expr {
        stats.push(stat_of(e, allow_min_max, &mut add_arg)?);
    }
    let n_keys = key_exprs.len();
    let schema = plan.schema();
    let mut outputs = Vec::new();
    let mut keys = vec![String::new(); n_keys];
    // An aggregate output as a statistic (never a key).
    let stat = |at: usize| -> Result<Stat, SpecError> {
        at.checked_sub(n_keys)
            .and_then(|i| stats.get(i).copied())
            .ok_or_else(|| form(DERIVED_FORM))
    };
    // An operand of a ratio or a share: additive.
    let operand = |at: usize| -> Result<Stat, SpecError> {
        let s = stat(at)?;
        match s {
            Stat::Patients | Stat::Rows | Stat::NonNull(_) | Stat::Sum(_) => Ok(s),
            _ => Err(form(
                "a ratio or a share is of counts and sums (COUNT(*), COUNT(DISTINCT patient_pseudonym), COUNT(x), SUM(x)), not of means or order statistics",
            )),
        }
    };
    for (i, field) in schema.fields().iter().enumerate() {
        let what = match &map[i] {
            Col::Agg(at) if *at < n_keys => {
                keys[*at] = field.name().clone();
                Output::Key(*at)
            }
            Col::Agg(at) => Output::Stat(stat(*at)?),
            Col::Total { .. } => {
                return Err(form(format!(
                    "the output column {} is a total over cells, which may include hidden ones; the TRE publishes shares of the published cells: 100.0 * COUNT(*) / SUM(COUNT(*)) OVER (PARTITION BY a)",
                    field.name()
                )));
            }
            Col::Ratio { num, den, percent } => Output::Ratio {
                num: operand(*num)?,
                den: operand(*den)?,
                percent: *percent,
            },
            Col::Share {
                num,
                of,
                by,
                percent,
            } => {
                let s = operand(*num)?;
                if operand(*of)? != s {
                    return Err(form(format!(
                        "the share {} divides one statistic by the total of another; write 100.0 * COUNT(*) / SUM(COUNT(*)) OVER (PARTITION BY a), the same statistic above and below",
                        field.name()
                    )));
                }
                Output::Share {
                    of: s,
                    by: by.clone(),
                    percent: *percent,
                }
            }
        };
        outputs.push((field.name().clone(), what));
    }
    for (i, k) in keys.iter_mut().enumerate() {
        if k.is_empty() {
            // A key grouped by but not selected: it still splits cells; name it by its
            // expression for the private report.
            *k = key_exprs[i].schema_name().to_string();
        }
    }
    let mut proj: Vec<Expr> = key_exprs
        .iter()
        .enumerate()
        .map(|(i, e)| cast(e.clone(), DataType::Utf8).alias(format!("k{i}")))
        .collect();
    proj.extend(
        args.iter()
            .enumerate()
            .map(|(i, e)| e.clone().alias(format!("a{i}"))),
    );
    proj.push(cast(Expr::Column(pp), DataType::Utf8).alias("p"));
    let population = LogicalPlanBuilder::from(Arc::unwrap_or_clone(input))
        .project(proj)
        .and_then(|b| b.build())
        .map_err(|e| SpecError::Plan(e.to_string()))?;
    Ok(TableSpec {
        population,
        keys,
        args: args.len(),
        arg_labels,
        outputs,
    })
}

/// Walk down from the top: sorts, aliases, projections and windows, to the aggregate;
/// for each output column, what it is in terms of the aggregate's outputs.
fn walk(plan: &LogicalPlan) -> Result<(&LogicalPlan, Vec<Col>), SpecError> {
    match plan {
        LogicalPlan::Aggregate(a) => {
            Ok((plan, (0..a.schema.fields().len()).map(Col::Agg).collect()))
        }
        LogicalPlan::Sort(s) => {
            if s.fetch.is_some() {
                return Err(form(
                    "LIMIT is not allowed: every cell of the table is computed and checked",
                ));
            }
            walk(&s.input)
        }
        LogicalPlan::SubqueryAlias(s) => walk(&s.input),
        LogicalPlan::Projection(p) => {
            let (agg, inner) = walk(&p.input)?;
            let n_keys = keys_of(agg);
            let mut map = Vec::new();
            for e in &p.expr {
                map.push(column_of(e, &p.input, &inner, n_keys)?);
            }
            Ok((agg, map))
        }
        LogicalPlan::Window(w) => {
            let (agg, inner) = walk(&w.input)?;
            let n_keys = keys_of(agg);
            let mut map = inner.clone();
            for e in &w.window_expr {
                map.push(window_total(e, &w.input, &inner, n_keys)?);
            }
            Ok((agg, map))
        }
        LogicalPlan::Filter(_) => Err(form(
            "HAVING is not allowed: the TRE hides small cells itself; filter rows with WHERE instead",
        )),
        LogicalPlan::Limit(_) => Err(form(
            "LIMIT is not allowed: every cell of the table is computed and checked",
        )),
        LogicalPlan::Distinct(_) => Err(form("SELECT DISTINCT is not an aggregate table")),
        other => Err(form(format!(
            "the query ends in a {} step, not in a GROUP BY aggregate",
            other.display()
        ))),
    }
}

/// The number of group keys of the aggregate `walk` reached.
fn keys_of(agg: &LogicalPlan) -> usize {
    match agg {
        LogicalPlan::Aggregate(a) => a.group_expr.len(),
        _ => 0,
    }
}

/// What a column of `input` (described by `inner`) is.
fn input_column<'a>(
    c: &Column,
    input: &LogicalPlan,
    inner: &'a [Col],
) -> Result<&'a Col, SpecError> {
    let idx = input
        .schema()
        .index_of_column(c)
        .map_err(|e| SpecError::Plan(e.to_string()))?;
    inner
        .get(idx)
        .ok_or_else(|| SpecError::Plan(format!("no column {idx} below the projection")))
}

/// One projected expression: a column passed through, or a ratio or a share.
fn column_of(
    e: &Expr,
    input: &LogicalPlan,
    inner: &[Col],
    n_keys: usize,
) -> Result<Col, SpecError> {
    if let Expr::Column(c) = strip(e) {
        return input_column(c, input, inner).cloned();
    }
    let refuse = || {
        form(format!(
            "the output column {} is computed from the aggregates; {DERIVED_FORM}",
            e.schema_name()
        ))
    };
    let mut factors = Vec::new();
    let mut scale = 1.0f64;
    flatten(e, true, input, inner, &mut factors, &mut scale).map_err(|_| refuse())?;
    let percent = if (scale - 100.0).abs() < 1e-9 {
        true
    } else if (scale - 1.0).abs() < 1e-9 {
        false
    } else {
        return Err(refuse());
    };
    let (mut above, mut below) = (Vec::new(), Vec::new());
    for (c, up) in factors {
        if up {
            above.push(c);
        } else {
            below.push(c);
        }
    }
    let ([Col::Agg(num)], [den]) = (above.as_slice(), below.as_slice()) else {
        return Err(refuse());
    };
    if *num < n_keys {
        return Err(refuse());
    }
    match den {
        Col::Agg(den) if *den >= n_keys => Ok(Col::Ratio {
            num: *num,
            den: *den,
            percent,
        }),
        Col::Total { of, by } => Ok(Col::Share {
            num: *num,
            of: *of,
            by: by.clone(),
            percent,
        }),
        _ => Err(refuse()),
    }
}

/// A product of factors: columns above (`true`) or below the line, literals into `scale`.
fn flatten(
    e: &Expr,
    up: bool,
    input: &LogicalPlan,
    inner: &[Col],
    factors: &mut Vec<(Col, bool)>,
    scale: &mut f64,
) -> Result<(), ()> {
    use datafusion::logical_expr::{BinaryExpr, Operator};
    match strip_casts(e) {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let right_up = match op {
                Operator::Multiply => up,
                Operator::Divide => !up,
                _ => return Err(()),
            };
            flatten(left, up, input, inner, factors, scale)?;
            flatten(right, right_up, input, inner, factors, scale)
        }
        Expr::Literal(v, _) => {
            let f = match v.cast_to(&DataType::Float64) {
                Ok(datafusion::scalar::ScalarValue::Float64(Some(f))) if f != 0.0 => f,
                _ => return Err(()),
            };
            if up {
                *scale *= f;
            } else {
                *scale /= f;
            }
            Ok(())
        }
        Expr::Column(c) => {
            let col = input_column(c, input, inner).map_err(|_| ())?;
            factors.push((col.clone(), up));
            Ok(())
        }
        _ => Err(()),
    }
}

/// A window over the aggregate: only `SUM(agg) OVER ([PARTITION BY keys])` over the
/// whole partition.
fn window_total(
    e: &Expr,
    input: &LogicalPlan,
    inner: &[Col],
    n_keys: usize,
) -> Result<Col, SpecError> {
    use datafusion::logical_expr::{WindowFrameBound, WindowFunctionDefinition};
    let refuse = || {
        form(format!(
            "the window function {} is not allowed; the one window is a share's total, 100.0 * COUNT(*) / SUM(COUNT(*)) OVER (PARTITION BY a) (no ORDER BY or frame)",
            e.schema_name()
        ))
    };
    let Expr::WindowFunction(w) = strip(e) else {
        return Err(refuse());
    };
    let WindowFunctionDefinition::AggregateUDF(f) = &w.fun else {
        return Err(refuse());
    };
    let p = &w.params;
    let whole = matches!(&p.window_frame.start_bound, WindowFrameBound::Preceding(v) if v.is_null())
        && matches!(&p.window_frame.end_bound, WindowFrameBound::Following(v) if v.is_null());
    if !f.name().eq_ignore_ascii_case("sum")
        || p.args.len() != 1
        || !p.order_by.is_empty()
        || p.filter.is_some()
        || p.distinct
        || !whole
    {
        return Err(refuse());
    }
    let Expr::Column(c) = strip_casts(&p.args[0]) else {
        return Err(refuse());
    };
    let of = match input_column(c, input, inner)? {
        Col::Agg(i) if *i >= n_keys => *i,
        _ => return Err(refuse()),
    };
    let mut by = Vec::new();
    for k in &p.partition_by {
        let Expr::Column(c) = strip_casts(k) else {
            return Err(refuse());
        };
        match input_column(c, input, inner)? {
            Col::Agg(i) if *i < n_keys => by.push(*i),
            _ => return Err(refuse()),
        }
    }
    by.sort_unstable();
    by.dedup();
    Ok(Col::Total { of, by })
}

fn strip(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => strip(&a.expr),
        other => other,
    }
}

/// Aliases and casts removed (a cast changes no value the TRE computes itself).
fn strip_casts(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => strip_casts(&a.expr),
        Expr::Cast(c) => strip_casts(&c.expr),
        Expr::TryCast(c) => strip_casts(&c.expr),
        other => other,
    }
}

/// The aggregate input's `patient_pseudonym`: the one `COUNT(DISTINCT ...)` names if it
/// names one, else the first of that name.
fn patient_column(input: &LogicalPlan, aggs: &[Expr]) -> Result<Column, SpecError> {
    let schema = input.schema();
    let candidates: Vec<Column> = schema
        .iter()
        .filter(|(_, f)| f.name() == PATIENT_COLUMN)
        .map(|(q, f)| Column::new(q.cloned(), f.name()))
        .collect();
    for e in aggs {
        if let Expr::AggregateFunction(f) = strip(e)
            && f.params.distinct
            && let Some(Expr::Column(c)) = f.params.args.first().map(strip)
            && candidates.contains(c)
        {
            return Ok(c.clone());
        }
    }
    candidates
        .into_iter()
        .next()
        .ok_or(SpecError::NoPatientColumn)
}

/// One aggregate of the closed set.
fn stat_of(
    e: &Expr,
    allow_min_max: bool,
    add_arg: &mut impl FnMut(Expr) -> usize,
) -> Result<Stat, SpecError> {
    let Expr::AggregateFunction(f) = strip(e) else {
        return Err(form(format!("{} is not an aggregate", e.schema_name())));
    };
    let name = f.func.name().to_ascii_lowercase();
    let p = &f.params;
    if !p.order_by.is_empty() {
        return Err(form(format!("{} has an ORDER BY", e.schema_name())));
    }
    let arg = p.args.first().cloned();
    // FILTER (WHERE c) is the same as CASE WHEN c THEN x END.
    let filtered = |x: Expr| -> Result<Expr, SpecError> {
        match &p.filter {
            None => Ok(x),
            Some(c) => when(*c.clone(), x)
                .end()
                .map_err(|e| SpecError::Plan(e.to_string())),
        }
    };
    let one_arg = || -> Result<Expr, SpecError> {
        match (&arg, p.args.len()) {
            (Some(a), 1) => Ok(a.clone()),
            _ => Err(form(format!("{} takes one argument", e.schema_name()))),
        }
    };
    match name.as_str() {
        "count" if p.distinct => {
            let is_patient = matches!(arg.as_ref().map(strip), Some(Expr::Column(c)) if c.name == PATIENT_COLUMN);
            if !is_patient || p.args.len() != 1 {
                return Err(form(format!(
                    "{}: the only distinct count is COUNT(DISTINCT patient_pseudonym)",
                    e.schema_name()
                )));
            }
            if p.filter.is_some() {
                return Err(form(
                    "COUNT(DISTINCT patient_pseudonym) FILTER (...) is not supported: filter the rows with WHERE",
                ));
            }
            Ok(Stat::Patients)
        }
        "count" => {
            let a = one_arg()?;
            let star = matches!(strip(&a), Expr::Literal(v, _) if !v.is_null());
            if star && p.filter.is_none() {
                Ok(Stat::Rows)
            } else {
                let x = if star { lit(1i64) } else { a };
                Ok(Stat::NonNull(add_arg(filtered(x)?)))
            }
        }
        "sum" | "avg" | "mean" => {
            if p.distinct {
                return Err(form(format!(
                    "{}: DISTINCT sums and means are not supported",
                    e.schema_name()
                )));
            }
            let x = add_arg(filtered(cast(one_arg()?, DataType::Float64))?);
            Ok(if name == "sum" {
                Stat::Sum(x)
            } else {
                Stat::Mean(x)
            })
        }
        "min" | "max" if allow_min_max => {
            let x = add_arg(filtered(one_arg()?)?);
            Ok(if name == "min" {
                Stat::Min(x)
            } else {
                Stat::Max(x)
            })
        }
        "min" | "max" => Err(form(format!(
            "{}: MIN and MAX are one patient's value, and this project's output rules do not allow order statistics",
            e.schema_name()
        ))),
        "median" if allow_min_max => {
            if p.distinct {
                return Err(form(format!(
                    "{}: MEDIAN(DISTINCT ...) is not supported; write MEDIAN(x)",
                    e.schema_name()
                )));
            }
            Ok(Stat::Median(add_arg(filtered(cast(
                one_arg()?,
                DataType::Float64,
            ))?)))
        }
        "median" => Err(form(format!(
            "{}: a median is one or two patients' values, and this project's output rules do not allow order statistics",
            e.schema_name()
        ))),
        "approx_median"
        | "approx_percentile_cont"
        | "approx_percentile_cont_with_weight"
        | "percentile_cont" => Err(form(format!(
            "{}: write MEDIAN(x), which the TRE computes exactly per cell (where the rules allow order statistics)",
            e.schema_name()
        ))),
        other => Err(form(format!(
            "{other} is not one of the statistics the TRE publishes (patients, rows, SUM, AVG; MIN, MAX and MEDIAN where the rules allow)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    async fn spec(sql: &str, allow_order_stats: bool) -> Result<TableSpec, SpecError> {
        let ctx = SessionContext::new();
        ctx.sql(
            "CREATE TABLE patients (patient_pseudonym VARCHAR, sex VARCHAR, age INT, practice VARCHAR) AS VALUES ('a', 'F', 3, 'P1')",
        )
        .await
        .expect("create")
        .collect()
        .await
        .expect("run");
        let df = ctx.sql(sql).await.expect("plans");
        recognise(df.logical_plan(), allow_order_stats)
    }

    fn run(sql: &str) -> Result<TableSpec, SpecError> {
        run_with(sql, false)
    }

    fn run_with(sql: &str, allow_order_stats: bool) -> Result<TableSpec, SpecError> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt")
            .block_on(spec(sql, allow_order_stats))
    }

    fn outputs(s: &TableSpec) -> Vec<Output> {
        s.outputs.iter().map(|(_, o)| o.clone()).collect()
    }

    #[test]
    fn ratios_are_recognised_in_several_spellings() {
        let ratio = |num, den, percent| Output::Ratio { num, den, percent };
        for (sql, want) in [
            (
                "SELECT sex, SUM(age) / COUNT(*) AS per_row FROM patients GROUP BY sex",
                ratio(Stat::Sum(0), Stat::Rows, false),
            ),
            (
                "SELECT sex, 100.0 * COUNT(*) / COUNT(DISTINCT patient_pseudonym) AS r FROM patients GROUP BY sex",
                ratio(Stat::Rows, Stat::Patients, true),
            ),
            (
                "SELECT sex, CAST(COUNT(*) AS DOUBLE) / COUNT(DISTINCT patient_pseudonym) * 100 AS r FROM patients GROUP BY sex",
                ratio(Stat::Rows, Stat::Patients, true),
            ),
            (
                "SELECT sex, (COUNT(*) * 1.0) / (COUNT(DISTINCT patient_pseudonym)) AS r FROM patients GROUP BY sex",
                ratio(Stat::Rows, Stat::Patients, false),
            ),
            (
                "SELECT sex, r FROM (SELECT sex, COUNT(*) / COUNT(DISTINCT patient_pseudonym) AS r FROM patients GROUP BY sex) t ORDER BY sex",
                ratio(Stat::Rows, Stat::Patients, false),
            ),
        ] {
            let s = run(sql).expect(sql);
            assert_eq!(outputs(&s), vec![Output::Key(0), want], "{sql}");
            // The operands are computed (and count as published).
            assert!(s.stats().len() >= 2, "{sql}");
        }
    }

    #[test]
    fn shares_are_recognised_with_and_without_a_partition() {
        let s = run("SELECT sex, COUNT(*) AS n, 100.0 * COUNT(*) / SUM(COUNT(*)) OVER () AS pct FROM patients GROUP BY sex").expect("share");
        assert_eq!(
            outputs(&s)[2],
            Output::Share {
                of: Stat::Rows,
                by: vec![],
                percent: true
            }
        );
        let s = run("SELECT practice, sex, COUNT(DISTINCT patient_pseudonym) * 100 / SUM(COUNT(DISTINCT patient_pseudonym)) OVER (PARTITION BY practice) AS pct FROM patients GROUP BY practice, sex ORDER BY practice, sex").expect("partition");
        assert_eq!(
            outputs(&s)[2],
            Output::Share {
                of: Stat::Patients,
                by: vec![0],
                percent: true
            }
        );
        let s = run("SELECT sex, CAST(COUNT(*) AS DOUBLE) / SUM(COUNT(*)) OVER () AS share FROM patients GROUP BY sex").expect("proportion");
        assert_eq!(
            outputs(&s)[1],
            Output::Share {
                of: Stat::Rows,
                by: vec![],
                percent: false
            }
        );
    }

    #[test]
    fn other_arithmetic_and_windows_are_refused_with_the_form() {
        for sql in [
            "SELECT sex, COUNT(*) / 7 AS n FROM patients GROUP BY sex",
            "SELECT sex, COUNT(*) * 1000 / COUNT(DISTINCT patient_pseudonym) AS n FROM patients GROUP BY sex",
            "SELECT sex, COUNT(*) * COUNT(*) / COUNT(DISTINCT patient_pseudonym) AS n FROM patients GROUP BY sex",
            "SELECT sex, COUNT(*) / (COUNT(*) - 1) AS n FROM patients GROUP BY sex",
            "SELECT sex, SUM(COUNT(*)) OVER () AS total FROM patients GROUP BY sex",
            "SELECT sex, COUNT(*) / SUM(COUNT(*)) OVER (ORDER BY sex) AS running FROM patients GROUP BY sex",
            "SELECT sex, COUNT(*) / SUM(SUM(age)) OVER () AS mixed FROM patients GROUP BY sex",
            "SELECT sex, ROW_NUMBER() OVER (ORDER BY sex) AS rank, COUNT(*) AS n FROM patients GROUP BY sex",
            "SELECT sex, AVG(age) / COUNT(*) AS n FROM patients GROUP BY sex",
            "SELECT sex, age, COUNT(*) / age AS n FROM patients GROUP BY sex, age",
            "SELECT sex, MEDIAN(age) AS m FROM patients GROUP BY sex",
            "SELECT sex, APPROX_MEDIAN(age) AS m FROM patients GROUP BY sex",
        ] {
            let e = run(sql).expect_err(sql);
            assert!(e.to_string().contains("GROUP BY a, b"), "{sql}: {e}");
        }
        let e = run("SELECT sex, COUNT(*) * 10 AS n FROM patients GROUP BY sex").expect_err("x10");
        assert!(e.to_string().contains("SUM(COUNT(*)) OVER"), "{e}");
    }

    #[test]
    fn the_median_is_an_order_statistic() {
        let s = run_with(
            "SELECT sex, MEDIAN(age) AS m FROM patients GROUP BY sex",
            true,
        )
        .expect("allowed");
        assert_eq!(outputs(&s)[1], Output::Stat(Stat::Median(0)));
        assert_eq!(
            s.label(Stat::Median(0)),
            format!("median:{}", s.arg_labels[0])
        );
        let e = run_with(
            "SELECT sex, APPROX_MEDIAN(age) AS m FROM patients GROUP BY sex",
            true,
        )
        .expect_err("approx");
        assert!(e.to_string().contains("MEDIAN(x)"), "{e}");
        let e = run("SELECT sex, MEDIAN(age) AS m FROM patients GROUP BY sex").expect_err("rules");
        assert!(e.to_string().contains("order statistics"), "{e}");
    }

    #[test]
    fn the_plain_forms_are_recognised() {
        let s = run("SELECT sex, COUNT(*) AS n, COUNT(DISTINCT patient_pseudonym) AS p, SUM(age) AS s, AVG(age) AS m FROM patients GROUP BY sex ORDER BY sex").expect("form");
        assert_eq!(s.keys, vec!["sex"]);
        let stats = outputs(&s);
        assert_eq!(
            stats,
            vec![
                Output::Key(0),
                Output::Stat(Stat::Rows),
                Output::Stat(Stat::Patients),
                Output::Stat(Stat::Sum(0)),
                Output::Stat(Stat::Mean(0)),
            ]
        );
        let s = run("SELECT COUNT(*) FILTER (WHERE sex = 'I') AS i, practice FROM patients GROUP BY practice").expect("filter");
        assert_eq!(s.outputs[0].1, Output::Stat(Stat::NonNull(0)));
        assert_eq!(s.outputs[1].1, Output::Key(0));
    }

    #[test]
    fn derived_columns_having_limit_and_other_aggregates_are_refused_with_the_form() {
        for sql in [
            "SELECT sex, COUNT(*) * 10 AS n FROM patients GROUP BY sex",
            "SELECT sex, COUNT(*) + 1000 AS n FROM patients GROUP BY sex",
            "SELECT sex, COUNT(*) AS n FROM patients GROUP BY sex HAVING COUNT(*) > 1",
            "SELECT sex, COUNT(*) AS n FROM patients GROUP BY sex LIMIT 1",
            "SELECT sex, COUNT(DISTINCT practice) AS n FROM patients GROUP BY sex",
            "SELECT sex, STDDEV(age) AS n FROM patients GROUP BY sex",
            "SELECT sex, age FROM patients",
        ] {
            let e = run(sql).expect_err(sql);
            assert!(e.to_string().contains("GROUP BY a, b"), "{sql}: {e}");
        }
    }

    #[test]
    fn the_rows_must_carry_patient_pseudonym() {
        let e = run("SELECT sex, COUNT(*) FROM (SELECT sex FROM patients) t GROUP BY sex")
            .expect_err("no patient");
        assert_eq!(e, SpecError::NoPatientColumn);
    }
}
