//! The job's table specification, recognised from the analyst's aggregate SQL.
//!
//! Owns [`recognise`]: the SQL's (unoptimised) plan must end in one `Aggregate`, with
//! only `Sort`, subquery aliases and projections that select or rename its outputs
//! above it, and its aggregates from the closed set (patients: `COUNT(DISTINCT
//! patient_pseudonym)`; rows: `COUNT(*)`, `COUNT(x)`; `SUM(x)`; `AVG(x)`; with `FILTER`
//! folded into the argument). What it returns is the POPULATION (the aggregate's input,
//! projected to the group keys as text, the measure arguments and the rows'
//! `patient_pseudonym`) and what each output column is: the TRE then computes the table
//! itself (see `cells`). Anything else is refused with a message that shows how to write
//! it. Danger: this module decides no disclosure question; it only refuses shapes the TRE
//! cannot compute itself, so a mistake here can refuse a good job but never publish a
//! value the TRE did not compute from counted patients.

use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, cast, lit, when};
use datafusion::prelude::Column;

/// The column every aggregated row must carry.
pub const PATIENT_COLUMN: &str = "patient_pseudonym";

/// How the analyst's aggregate must look (said with every refusal of its shape).
pub const FORM: &str = "write the job as one aggregate: SELECT a, b, COUNT(*) AS n, COUNT(DISTINCT patient_pseudonym) AS patients, SUM(x) AS total, AVG(x) AS mean FROM ... WHERE ... GROUP BY a, b (any read-only SQL may define the rows in FROM; the TRE computes the table and decides what is published, so derive nothing from the aggregates)";

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Group key `i`.
    Key(usize),
    /// A statistic.
    Stat(Stat),
}

impl TableSpec {
    /// The distinct statistics the table publishes, in output order.
    pub fn stats(&self) -> Vec<Stat> {
        let mut v = Vec::new();
        for (_, o) in &self.outputs {
            if let Output::Stat(s) = o
                && !v.contains(s)
            {
                v.push(*s);
            }
        }
        v
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

/// Recognise the analyst's plan (unoptimised, as the SQL planner made it).
/// `allow_min_max`: the project's rules allow order statistics (MIN, MAX).
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
    for (i, field) in schema.fields().iter().enumerate() {
        let at = map[i];
        let what = if at < n_keys {
            keys[at] = field.name().clone();
            Output::Key(at)
        } else {
            Output::Stat(stats[at - n_keys])
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

/// Walk down from the top: sorts, aliases and pure projections, to the aggregate; for
/// each output column, the index of the aggregate output it shows.
fn walk(plan: &LogicalPlan) -> Result<(&LogicalPlan, Vec<usize>), SpecError> {
    match plan {
        LogicalPlan::Aggregate(a) => Ok((plan, (0..a.schema.fields().len()).collect())),
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
            let mut map = Vec::new();
            for e in &p.expr {
                let Expr::Column(c) = strip(e) else {
                    return Err(form(format!(
                        "the output column {} is computed from the aggregates; select the aggregates themselves (the TRE derives means and ratios)",
                        e.schema_name()
                    )));
                };
                let idx = p
                    .input
                    .schema()
                    .index_of_column(c)
                    .map_err(|e| SpecError::Plan(e.to_string()))?;
                map.push(inner[idx]);
            }
            Ok((agg, map))
        }
        LogicalPlan::Filter(_) => Err(form(
            "HAVING is not allowed: the TRE hides small cells itself; filter rows with WHERE instead",
        )),
        LogicalPlan::Limit(_) => Err(form(
            "LIMIT is not allowed: every cell of the table is computed and checked",
        )),
        LogicalPlan::Window(_) => Err(form("window functions over the aggregate are not allowed")),
        LogicalPlan::Distinct(_) => Err(form("SELECT DISTINCT is not an aggregate table")),
        other => Err(form(format!(
            "the query ends in a {} step, not in a GROUP BY aggregate",
            other.display()
        ))),
    }
}

fn strip(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => strip(&a.expr),
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
        other => Err(form(format!(
            "{other} is not one of the statistics the TRE publishes (patients, rows, SUM, AVG; MIN and MAX where the rules allow)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    async fn spec(sql: &str) -> Result<TableSpec, SpecError> {
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
        recognise(df.logical_plan(), false)
    }

    fn run(sql: &str) -> Result<TableSpec, SpecError> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt")
            .block_on(spec(sql))
    }

    #[test]
    fn the_plain_forms_are_recognised() {
        let s = run("SELECT sex, COUNT(*) AS n, COUNT(DISTINCT patient_pseudonym) AS p, SUM(age) AS s, AVG(age) AS m FROM patients GROUP BY sex ORDER BY sex").expect("form");
        assert_eq!(s.keys, vec!["sex"]);
        let stats: Vec<Output> = s.outputs.iter().map(|(_, o)| *o).collect();
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
