//! Output disclosure checking: statistical disclosure control (SDC) for aggregate tables.
//!
//! This is the last gate before anything leaves the TRE: `tre check` calls [`check`] on a
//! file (roles inferred from names where not given), and every query job calls it on the
//! table the TRE computed from counted patients (every role given). It owns primary suppression (small counts, disclosive zeros,
//! dominance), protection of every hidden cell against an attacker who solves the table's
//! additivity as a linear programme (`attack`, `protect`), rounding, derived statistics
//! recomputed from the protected counts, the block on row-level data, the joint audit with
//! earlier releases ([`joint`]), and the report. [`Report::apply`] gives the safe table, in
//! which every hidden cell is the same empty value: why it is hidden is said only in the
//! private report. Its danger is a silent pass: every doubt (malformed table, unknown column
//! role, unchecked dominance, a cell the audit cannot prove protected) is an error or a
//! failing finding, never a pass, and `apply` refuses what the audit could not protect. It
//! never writes files and never logs cell values.
//!
//! Submodules: [`rules`] (presets and rules files), [`table`] (reading and roles),
//! `suppress` (grid, line and cycle heuristics), `attack` (the LP attacker), `protect`
//! (protection needs and the hypercube pattern), `exact` (the integer programme's pattern
//! for small tables), `passes` (the checks, pass by pass),
//! `bound` (lower bounds on information loss), [`joint`], [`round`], [`dominance`],
//! `report` (text, Markdown, HTML rendering).

mod attack;
mod bound;
mod cleanup;
mod derived;
pub mod dominance;
mod exact;
pub mod joint;
mod need;
mod passes;
mod protect;
mod report;
pub mod round;
pub mod rules;
mod suggest;
mod suppress;
pub mod table;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use serde::{Serialize, Serializer};

pub use report::Format;
pub use rules::{NkRule, Overrides, Rounding, RoundingMethod, Rules};
pub use table::{
    DerivedKind, DerivedSpec, ResolvedRole, ResolvedRoles, RoleSpec, is_parquet, read_csv,
    read_table,
};

/// The key of the Parquet (and Arrow schema) metadata entry holding each published column's
/// per-cell status, as JSON `{"column": ["published", "hidden", "rounded(5)", ...]}`.
pub const CELL_STATUS_KEY: &str = "tre.sdc.cell_status";

/// Errors from checking a table. A table that fails the rules is not an error: it is a
/// [`Report`] whose verdict says so.
#[derive(Debug, thiserror::Error)]
pub enum DisclosureError {
    /// The table could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The table is not a well-formed aggregate table.
    #[error("malformed table: {message}")]
    Malformed {
        /// What is wrong and how to fix it (row numbers, never values).
        message: String,
    },
    /// The rules file or preset is invalid.
    #[error("invalid output rules {origin}: {message}")]
    Rules {
        /// File path or preset name.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// `apply` was asked for a table that looks like row-level data.
    #[error(
        "the table looks like row-level data and cannot be made safe by suppression; aggregate it first"
    )]
    RowLevel,
    /// `apply` was asked for a table with cells the audit could not protect.
    #[error(
        "{cells} hidden cells of {columns} cannot be protected (the LP attacker narrows them below their protection interval); nothing was written: combine categories or drop the columns, then check again"
    )]
    Unprotected {
        /// How many cells.
        cells: usize,
        /// Which value columns (names).
        columns: String,
    },
    /// A bug in this module.
    #[error("internal error in the disclosure checker (a bug): {0}")]
    Internal(String),
}

impl crate::error::Classify for DisclosureError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            DisclosureError::Io { .. } => ErrorKind::Failed,
            DisclosureError::Malformed { .. } | DisclosureError::Rules { .. } => ErrorKind::Failed,
            DisclosureError::RowLevel | DisclosureError::Unprotected { .. } => ErrorKind::Refused,
            DisclosureError::Internal(_) => ErrorKind::Bug,
        }
    }
}

/// The overall outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Safe to release as it is.
    Releasable,
    /// Not safe as it is; `--apply` makes a safe version (unless a finding says it cannot).
    NotReleasable,
    /// Looks like row-level data: never releasable, and `--apply` refuses.
    Blocked,
}

/// Why a cell fails (private: the report only, never the safe table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// A count below the threshold.
    Threshold,
    /// A zero count under rules that treat zeros as disclosive.
    Zero,
    /// A magnitude failing the p% rule.
    PRatio,
    /// A magnitude failing an (n,k) dominance rule.
    NkRule,
    /// A negative magnitude (dominance rules assume non-negative contributions).
    Negative,
    /// Hidden to protect other hidden cells.
    Secondary,
    /// The LP attacker narrows it below its protection interval, and no pattern found fixes it.
    Unprotected,
    /// A derived statistic that differs from its value recomputed from the published counts.
    Derived,
}

impl Rule {
    /// The rule's id, as in reports and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Threshold => "threshold",
            Rule::Zero => "zero",
            Rule::PRatio => "p-ratio",
            Rule::NkRule => "nk-rule",
            Rule::Negative => "negative",
            Rule::Secondary => "secondary",
            Rule::Unprotected => "unprotected",
            Rule::Derived => "derived",
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// What `--apply` does with a failing cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Hide it.
    Suppress,
    /// Recompute it from the published cells.
    Recompute,
    /// Nothing automatic: a person must change the table (`--apply` refuses or leaves it).
    Review,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Action::Suppress => "suppress",
            Action::Recompute => "recompute",
            Action::Review => "review",
        })
    }
}

/// One failing cell.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Finding {
    /// The rule.
    pub rule: Rule,
    /// The value column.
    pub column: String,
    /// 1-based data row of the input table (`None` for a total the table does not include).
    pub row: Option<usize>,
    /// The cell's dimension values.
    pub key: Vec<String>,
    /// The cell's value in the input.
    pub value: Option<f64>,
    /// What `--apply` does.
    pub action: Action,
    /// Why.
    pub reason: String,
}

/// A finding about the whole table.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TableFinding {
    /// Rule id: `row-level`, `rounding`, `dominance-unchecked`, `absent-cells`,
    /// `unprotected`, `derived`, `refused-column`, `note`.
    pub rule: String,
    /// Whether it stops release as is.
    pub fails: bool,
    /// Why.
    pub reason: String,
}

/// What a reader of the safe table sees in one cell (never why).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellStatus {
    /// Published with its true value.
    Published,
    /// Hidden (empty in CSV, null in Parquet).
    Hidden,
    /// Published rounded to the nearest multiple of `base`.
    Rounded {
        /// The rounding base.
        base: u64,
    },
    /// Published as the midpoint of its band of width `base` (OpenSAFELY midpoint 6).
    Midpoint {
        /// The band width.
        base: u64,
    },
    /// Recomputed from the published (rounded) counts.
    Recomputed,
}

impl std::fmt::Display for CellStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CellStatus::Published => f.write_str("published"),
            CellStatus::Hidden => f.write_str("hidden"),
            CellStatus::Rounded { base } => write!(f, "rounded({base})"),
            CellStatus::Midpoint { base } => write!(f, "midpoint{base}"),
            CellStatus::Recomputed => f.write_str("recomputed"),
        }
    }
}

impl Serialize for CellStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Information loss of one value column, against a lower bound.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Loss {
    /// The value column.
    pub column: String,
    /// Hidden cells (primary and secondary, margins included).
    pub hidden_cells: usize,
    /// Of which primary.
    pub primary_cells: usize,
    /// Sum of the hidden cells' values (interior cells).
    pub hidden_value: f64,
    /// No protecting pattern hides fewer cells than this (see `bound_method`).
    pub lower_bound_cells: Option<usize>,
    /// No protecting pattern hides less value than this.
    pub lower_bound_value: Option<f64>,
    /// How the bound was found.
    pub bound_method: String,
}

/// The result of a check.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The verdict.
    pub verdict: Verdict,
    /// The rules used (after overrides).
    pub rules: Rules,
    /// The roles used for each column, and how each was decided.
    pub roles: ResolvedRoles,
    /// Number of data rows checked.
    pub rows: usize,
    /// Failing cells per rule.
    pub summary: BTreeMap<String, usize>,
    /// Every failing cell.
    pub findings: Vec<Finding>,
    /// Findings about the whole table.
    pub table_findings: Vec<TableFinding>,
    /// Per value column: the status of every data row's cell in the safe table.
    pub cell_status: BTreeMap<String, Vec<CellStatus>>,
    /// Cells and value hidden, against a lower bound.
    pub loss: Vec<Loss>,
    /// What the attacker is assumed to know, and what is guaranteed.
    pub attacker_model: Vec<String>,
    /// How the checks work, including where we are stricter than ACRO.
    pub method: Vec<String>,
    #[serde(skip)]
    plan: Plan,
}

/// What `apply` writes, decided during the check.
#[derive(Debug, Clone, Default)]
struct Plan {
    /// Dimension and constant columns, published as they are.
    keys: Vec<(String, ArrayRef)>,
    /// Value columns in output order.
    values: Vec<PlannedColumn>,
    /// Per count column, what a reader of the safe table knows (for the joint audit).
    released: Vec<joint::ReleasedTable>,
}

/// One value column of the safe table.
#[derive(Debug, Clone)]
struct PlannedColumn {
    name: String,
    /// Counts are written as integers, everything else as floats.
    is_count: bool,
    values: Vec<Option<f64>>,
    /// An allowed MIN/MAX column: written as its own array (its type kept), emptied where
    /// the flag is false; `values` is then all `None`.
    original: Option<(ArrayRef, Vec<bool>)>,
}

impl Report {
    /// Whether the table may be released as it is.
    pub fn releasable(&self) -> bool {
        self.verdict == Verdict::Releasable
    }

    /// The safe version of the table: every hidden cell empty (one symbol, no reason),
    /// published counts rounded, derived columns recomputed, contributor columns dropped; each
    /// value column's per-cell status in the schema metadata under [`CELL_STATUS_KEY`].
    /// Refused for row-level data and for tables with cells the audit could not protect.
    pub fn apply(&self) -> Result<RecordBatch, DisclosureError> {
        if self.verdict == Verdict::Blocked {
            return Err(DisclosureError::RowLevel);
        }
        let bad: Vec<&Finding> = self
            .findings
            .iter()
            .filter(|f| f.rule == Rule::Unprotected)
            .collect();
        if !bad.is_empty() {
            let mut cols: Vec<&str> = bad.iter().map(|f| f.column.as_str()).collect();
            cols.dedup();
            return Err(DisclosureError::Unprotected {
                cells: bad.len(),
                columns: cols.join(", "),
            });
        }
        let mut fields = Vec::new();
        let mut arrays: Vec<ArrayRef> = Vec::new();
        for (name, arr) in &self.plan.keys {
            fields.push(Field::new(name, arr.data_type().clone(), true));
            arrays.push(arr.clone());
        }
        for col in &self.plan.values {
            if let Some((arr, published)) = &col.original {
                let hide: arrow::array::BooleanArray = published.iter().map(|p| Some(!p)).collect();
                let a = arrow::compute::nullif(arr, &hide)
                    .map_err(|e| DisclosureError::Internal(format!("hiding cells: {e}")))?;
                fields.push(Field::new(&col.name, a.data_type().clone(), true));
                arrays.push(a);
            } else if col.is_count {
                let a: Int64Array = col.values.iter().map(|v| v.map(|x| x as i64)).collect();
                fields.push(Field::new(&col.name, DataType::Int64, true));
                arrays.push(Arc::new(a));
            } else {
                let a: Float64Array = col.values.iter().copied().collect();
                fields.push(Field::new(&col.name, DataType::Float64, true));
                arrays.push(Arc::new(a));
            }
        }
        let status = serde_json::to_string(&self.cell_status)
            .map_err(|e| DisclosureError::Internal(format!("cell status as JSON: {e}")))?;
        let schema = Schema::new(fields).with_metadata(
            [(CELL_STATUS_KEY.to_string(), status)]
                .into_iter()
                .collect(),
        );
        RecordBatch::try_new(Arc::new(schema), arrays)
            .map_err(|e| DisclosureError::Internal(format!("building the safe table: {e}")))
    }

    /// What the safe table releases, per count column, named `id`: store these in the
    /// project's (private) ledger and pass them as `earlier` to
    /// [`joint::audit_with_earlier`] when a later table over the same population is checked.
    pub fn released_tables(&self, id: &str) -> Vec<joint::ReleasedTable> {
        self.plan
            .released
            .iter()
            .map(|t| joint::ReleasedTable {
                id: id.to_string(),
                ..t.clone()
            })
            .collect()
    }

    /// Render the report for people.
    pub fn render(&self, format: Format) -> String {
        report::render(self, format)
    }
}

/// Check an aggregate table against the rules, with column roles from `roles` or, where it
/// leaves them open, inferred from names and types (the fallback for `tre check` on a file).
pub fn check(
    batches: &[RecordBatch],
    roles: &RoleSpec,
    rules: &Rules,
) -> Result<Report, DisclosureError> {
    passes::run(batches, roles, rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(csv: &str, rules: &str) -> Report {
        let b = read_csv(csv.as_bytes(), "t").unwrap_or_else(|e| panic!("{e}"));
        let r = Rules::resolve(rules).unwrap_or_else(|e| panic!("{e}"));
        check(&[b], &RoleSpec::default(), &r).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn opensafely_redacts_counts_of_7_or_less_worked_example() {
        // OpenSAFELY "Releasing files" example: heart disease 3, 8, 16, 23 by age band;
        // 3 (<= 7) is redacted, the rest rounded to 5: 10, 15, 25.
        let rep = run(
            "age_band,heart_disease_count\n21-30,3\n31-40,8\n41-50,16\n51+,23\n",
            "opensafely",
        );
        assert_eq!(rep.verdict, Verdict::NotReleasable);
        assert_eq!(rep.summary.get("threshold"), Some(&1));
        let safe = rep.apply().unwrap_or_else(|e| panic!("{e}"));
        let col = safe
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .cloned();
        let got: Vec<Option<i64>> = col.iter().flat_map(|a| a.iter()).collect();
        // With the total known, 3 alone could be derived: one complement is hidden too; the
        // cheapest that makes the hidden sum reach 8 is 8 itself.
        assert_eq!(got, vec![None, None, Some(15), Some(25)]);
    }

    #[test]
    fn zeros_disclosive_under_acro_not_under_opensafely() {
        let t = "sex,n\nF,0\nM,40\nX,30\n";
        assert!(run(t, "acro-default").summary.contains_key("zero"));
        assert!(!run(t, "opensafely").summary.contains_key("zero"));
    }

    #[test]
    fn pseudonym_column_blocks() {
        let rep = run("patient_pseudonym,n\nab,12\ncd,13\n", "opensafely");
        assert_eq!(rep.verdict, Verdict::Blocked);
        assert!(rep.apply().is_err());
    }

    #[test]
    fn mostly_ones_blocks() {
        let mut t = String::from("code,n\n");
        for i in 0..20 {
            t.push_str(&format!("c{i},1\n"));
        }
        assert_eq!(run(&t, "acro-default").verdict, Verdict::Blocked);
    }

    #[test]
    fn duplicate_keys_are_an_error() {
        let b = read_csv("sex,n\nF,10\nF,12\n".as_bytes(), "t").unwrap_or_else(|e| panic!("{e}"));
        let r = Rules::preset("acro-default").unwrap_or_else(|e| panic!("{e}"));
        let e = check(&[b], &RoleSpec::default(), &r)
            .err()
            .map(|e| e.to_string());
        assert!(
            e.is_some_and(|m| m.contains("duplicate dimension keys") && m.contains("rows 1 and 2"))
        );
    }

    #[test]
    fn wrong_margin_is_an_error() {
        let b = read_csv("sex,n\nF,10\nM,12\nTotal,30\n".as_bytes(), "t")
            .unwrap_or_else(|e| panic!("{e}"));
        let r = Rules::preset("acro-default").unwrap_or_else(|e| panic!("{e}"));
        let e = check(&[b], &RoleSpec::default(), &r)
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|m| m.contains("does not equal the sum")));
    }

    #[test]
    fn applied_output_rechecks_clean() {
        let t = "a,b,n\nx,p,3\nx,q,40\nx,r,55\ny,p,60\ny,q,2\ny,r,70\nz,p,80\nz,q,90\nz,r,95\n";
        let rep = run(t, "opensafely");
        assert_eq!(rep.verdict, Verdict::NotReleasable);
        let safe = rep.apply().unwrap_or_else(|e| panic!("{e}"));
        let rep2 =
            check(&[safe], &RoleSpec::default(), &rep.rules).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            rep2.verdict,
            Verdict::Releasable,
            "{}",
            rep2.render(Format::Text)
        );
    }
}

/// The issue's worked examples and property tests: an LP attacker who reads only the safe
/// table (and knows the true totals the table leaves out) never pins a hidden cell, and
/// never narrows a primary below its protection interval.
#[cfg(test)]
mod attacker_tests {
    use super::attack::{self, Domain};
    use super::suppress::{self, Grid, Layer};
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Int64Type;
    use microlp::OptimizationDirection;
    use proptest::prelude::*;

    fn rules(preset: &str, round: Option<u64>) -> Rules {
        let r = Rules::preset(preset).expect("preset");
        match round {
            None => r,
            Some(b) => r
                .with_overrides(&Overrides {
                    rounding: Some(Rounding {
                        method: RoundingMethod::Nearest,
                        base: b,
                    }),
                    ..Overrides::default()
                })
                .expect("overrides"),
        }
    }

    fn check_csv(csv: &str, rules: &Rules) -> (RecordBatch, Report) {
        let b = read_csv(csv.as_bytes(), "t").expect("csv");
        let rep = check(std::slice::from_ref(&b), &RoleSpec::default(), rules).expect("check");
        (b, rep)
    }

    /// Attacker intervals for every hidden count cell of the safe table: (row, lo, hi).
    fn attack_safe(
        input: &RecordBatch,
        safe: &RecordBatch,
        rules: &Rules,
    ) -> Vec<(usize, f64, f64)> {
        let t = table::resolve(std::slice::from_ref(input), &RoleSpec::default()).expect("resolve");
        let grid = Grid::build(&t.dims, t.nrows, &t.total_labels).expect("grid");
        let (mut truth, _) = Layer::from_rows(&grid, &t.counts[0].values);
        suppress::complete(&grid, &mut truth, rules.suppression.assume_totals_known);
        let n = safe
            .column_by_name(&t.counts[0].name)
            .expect("count column")
            .as_primitive::<Int64Type>()
            .clone();
        let half = match rules.rounding.method {
            RoundingMethod::Nearest => rules.rounding.base as f64 / 2.0,
            _ => 0.0,
        };
        // The model: the attacker knows every total that passes the primary rules (a total
        // that fails them is never published under these rules), whatever the table shows.
        let known_total = |c: usize| {
            rules.suppression.assume_totals_known && !rules.count_is_small(truth.value[c])
        };
        let mut dom: Vec<Domain> = (0..truth.value.len())
            .map(|c| {
                if grid.is_margin(c) && grid.row_of[c].is_none() && !known_total(c) {
                    Domain::Range(0.0, f64::INFINITY)
                } else {
                    Domain::Fixed(truth.value[c])
                }
            })
            .collect();
        for r in 0..t.nrows {
            let c = grid.cell_of_row[r];
            if grid.is_margin(c) && known_total(c) {
                continue; // true totals are known, whatever the table shows
            }
            dom[c] = if n.is_null(r) {
                Domain::Range(0.0, f64::INFINITY)
            } else if half > 0.0 {
                let v = n.value(r) as f64;
                Domain::Range((v - half).max(0.0), v + half)
            } else {
                Domain::Fixed(n.value(r) as f64)
            };
        }
        let vars: Vec<usize> = (0..dom.len())
            .filter(|c| matches!(dom[*c], Domain::Range(..)))
            .collect();
        // The attacker does not know the true values: only the domains count.
        let blind = Layer {
            value: vec![f64::NAN; truth.value.len()],
            state: truth.state.clone(),
            totals_known: false,
        };
        (0..t.nrows)
            .filter(|r| n.is_null(*r) && matches!(dom[grid.cell_of_row[*r]], Domain::Range(..)))
            .map(|r| {
                let (lo, hi) = lp_interval(&grid, &blind, &dom, &vars, grid.cell_of_row[r]);
                (r, lo, hi)
            })
            .collect()
    }

    /// The LP attacker's interval for `cell` over the domains `dom` (its unknowns `vars`).
    fn lp_interval(
        grid: &Grid,
        blind: &Layer,
        dom: &[Domain],
        vars: &[usize],
        cell: usize,
    ) -> (f64, f64) {
        let bound = |dir| attack::solve(grid, blind, dom, vars, cell, dir).expect("lp bound");
        (
            bound(OptimizationDirection::Minimize),
            bound(OptimizationDirection::Maximize),
        )
    }

    /// The attacker's interval for `cell` from the known totals alone (totals that pass the
    /// rules exactly, absent interior cells as zeros, everything else unknown), by LP over
    /// the whole grid: the model's cap on any need.
    fn a_priori_interval(grid: &Grid, truth: &Layer, rules: &Rules, cell: usize) -> (f64, f64) {
        let dom: Vec<Domain> = (0..truth.value.len())
            .map(|c| {
                let v = truth.value[c];
                let known = grid.is_margin(c)
                    && rules.suppression.assume_totals_known
                    && !rules.count_is_small(v);
                if known || (grid.row_of[c].is_none() && !grid.is_margin(c)) {
                    Domain::Fixed(v)
                } else {
                    Domain::Range(0.0, f64::INFINITY)
                }
            })
            .collect();
        let vars: Vec<usize> = (0..dom.len())
            .filter(|c| matches!(dom[*c], Domain::Range(..)))
            .collect();
        let blind = Layer {
            value: vec![f64::NAN; truth.value.len()],
            state: truth.state.clone(),
            totals_known: false,
        };
        let lo = attack::solve(
            grid,
            &blind,
            &dom,
            &vars,
            cell,
            OptimizationDirection::Minimize,
        )
        .expect("a priori min");
        let hi = attack::solve(
            grid,
            &blind,
            &dom,
            &vars,
            cell,
            OptimizationDirection::Maximize,
        )
        .unwrap_or(f64::INFINITY);
        (lo, hi)
    }

    /// Assert the guarantee on one table; returns whether it was releasable after apply.
    fn assert_protected(csv: &str, rules: &Rules) -> bool {
        let (input, rep) = check_csv(csv, rules);
        let Ok(safe) = rep.apply() else {
            assert!(
                rep.findings.iter().any(|f| f.rule == Rule::Unprotected)
                    || rep.verdict == Verdict::Blocked
            );
            return false;
        };
        let safety = rules
            .suppression
            .safety_range
            .unwrap_or(rules.suppression.min_count) as f64;
        let t = table::resolve(std::slice::from_ref(&input), &RoleSpec::default()).expect("t");
        let counts = t.counts[0].values.clone();
        // The model: the upper protection never asks for more than the known totals of the
        // cell's lines allow a priori.
        let grid = suppress::Grid::build(&t.dims, t.nrows, &t.total_labels).expect("grid");
        let (mut layer, _) = suppress::Layer::from_rows(&grid, &counts);
        suppress::complete(&grid, &mut layer, rules.suppression.assume_totals_known);
        for (r, lo, hi) in attack_safe(&input, &safe, rules) {
            assert!(
                hi - lo > 1e-6,
                "row {} exactly recoverable in\n{csv}",
                r + 1
            );
            let x = counts[r].expect("value");
            let primary = rep
                .findings
                .iter()
                .any(|f| f.row == Some(r + 1) && matches!(f.rule, Rule::Threshold | Rule::Zero));
            if primary {
                let c = grid.cell_of_row[r];
                let up = passes::a_priori(&grid, &layer, c, safety);
                // Reduced protection: never more than the known totals alone allow.
                let (ap_lo, ap_hi) = a_priori_interval(&grid, &layer, rules, c);
                let need_lo = (x - safety).max(0.0).max(ap_lo);
                let need_hi = (x + up).min(ap_hi);
                assert!(
                    lo <= need_lo + 1e-6 && hi >= need_hi - 1e-6,
                    "row {} = {x} narrowed to [{lo}, {hi}] (a priori [{ap_lo}, {ap_hi}]) in\n{csv}",
                    r + 1
                );
            }
        }
        let again = check(&[safe], &RoleSpec::default(), rules).expect("recheck");
        assert!(
            !again.findings.iter().any(|f| f.rule == Rule::Unprotected),
            "{}",
            again.render(Format::Text)
        );
        true
    }

    #[test]
    fn ons_one_dim_example_no_longer_pins_r0_and_r1() {
        let csv = "a,n\nr0,1\nr1,10\nr2,40\nr3,49\nTotal,100\n";
        let r = rules("ons-srs", None);
        assert!(assert_protected(csv, &r));
        let (_, rep) = check_csv(csv, &r);
        let safe = rep.apply().expect("apply");
        // One symbol: no marker columns, and the status metadata says only "hidden".
        assert_eq!(safe.num_columns(), 2);
        let status = safe.schema().metadata()[CELL_STATUS_KEY].clone();
        assert!(
            status.contains("hidden")
                && !status.contains("primary")
                && !status.contains("secondary")
        );
    }

    #[test]
    fn three_by_three_example_gets_threshold_wide_intervals() {
        let csv = "a,b,n\nx,p,32\nx,q,8\nx,r,2\ny,p,5\ny,q,32\ny,r,62\nz,p,8\nz,q,48\nz,r,50\n";
        for preset in ["ons-srs", "acro-default", "opensafely"] {
            assert!(assert_protected(csv, &rules(preset, None)), "{preset}");
        }
        assert!(assert_protected(csv, &rules("ons-srs", Some(5))));
    }

    #[test]
    fn three_dim_table_with_margins_is_protected_and_audited() {
        // 2x3x3 with every margin; one primary 8 (ons-srs: threshold 10).
        let mut csv = String::from("a,b,c,n\n");
        let v = [
            [[8, 20, 31], [25, 40, 12], [30, 22, 18]],
            [[15, 28, 33], [21, 19, 26], [35, 17, 24]],
        ];
        let lab = |i: usize, n: usize, p: &str| {
            if i == n {
                "Total".to_string()
            } else {
                format!("{p}{i}")
            }
        };
        for i in 0..=2 {
            for j in 0..=3 {
                for k in 0..=3 {
                    let s: i64 = (0..2)
                        .filter(|a| i == 2 || *a == i)
                        .flat_map(|a| {
                            (0..3)
                                .filter(move |b| j == 3 || *b == j)
                                .map(move |b| (a, b))
                        })
                        .flat_map(|(a, b)| {
                            (0..3)
                                .filter(move |c| k == 3 || *c == k)
                                .map(move |c| v[a][b][c])
                        })
                        .sum();
                    csv.push_str(&format!(
                        "{},{},{},{s}\n",
                        lab(i, 2, "a"),
                        lab(j, 3, "b"),
                        lab(k, 3, "c")
                    ));
                }
            }
        }
        let r = rules("ons-srs", None);
        assert!(assert_protected(&csv, &r));
        let (_, rep) = check_csv(&csv, &r);
        assert!(
            rep.summary.get("secondary").is_some_and(|n| *n >= 7),
            "{}",
            rep.render(Format::Text)
        );
    }

    #[test]
    fn dominated_magnitude_gets_its_p_percent_protection() {
        // 950 of 1000 from one contributor: p% (10%) needs 95 either side.
        let csv = "a,n,cost_sum,cost_sum_top1,cost_sum_top2\nr0,20,1000,950,20\nr1,30,60,10,9\nr2,25,70,12,10\nr3,40,900,60,50\nTotal,115,2030,950,60\n";
        let r = rules("acro-default", None);
        let (_, rep) = check_csv(csv, &r);
        assert!(
            rep.findings
                .iter()
                .any(|f| f.rule == Rule::PRatio && f.row == Some(1))
        );
        let safe = rep.apply().expect("apply");
        let cost = safe
            .column_by_name("cost_sum")
            .expect("col")
            .as_primitive::<arrow::datatypes::Float64Type>()
            .clone();
        assert!(cost.is_null(0));
        // The complement must absorb 95: r3 (900) rather than r1 (60) or r2 (70).
        assert!(cost.is_null(3), "{:?}", cost);
        assert!(!cost.is_null(1) && !cost.is_null(2));
    }

    #[test]
    fn percentages_are_recomputed_from_rounded_counts() {
        let csv = "sex,n,pct\nM,906,49.08\nF,939,50.87\nU,1,0.05\n";
        let (_, rep) = check_csv(csv, &rules("opensafely", None));
        let safe = rep.apply().expect("apply");
        let n = safe
            .column_by_name("n")
            .expect("n")
            .as_primitive::<Int64Type>()
            .clone();
        let pct = safe
            .column_by_name("pct")
            .expect("pct")
            .as_primitive::<arrow::datatypes::Float64Type>()
            .clone();
        for r in 0..3 {
            assert_eq!(n.is_null(r), pct.is_null(r));
        }
        for r in (0..3).filter(|r| !n.is_null(*r)) {
            // The grand total is taken as known, and published rounded like any count.
            assert!((pct.value(r) - 100.0 * n.value(r) as f64 / 1845.0).abs() < 1e-9);
        }
        assert!(rep.findings.iter().any(|f| f.rule == Rule::Derived));
    }

    #[test]
    fn float_counts_are_rounded_and_negative_counts_refused() {
        let (_, rep) = check_csv("sex,n\nF,12.0\nM,23.0\n", &rules("opensafely", None));
        let safe = rep.apply().expect("apply");
        let n = safe
            .column_by_name("n")
            .expect("n")
            .as_primitive::<Int64Type>()
            .clone();
        assert_eq!((n.value(0), n.value(1)), (10, 25));
        let b = read_csv("sex,n\nF,-12\nM,23\n".as_bytes(), "t").expect("csv");
        let e = check(&[b], &RoleSpec::default(), &rules("opensafely", None))
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|m| m.contains("negative")));
    }

    #[test]
    fn a_later_release_that_pins_an_earlier_hidden_cell_is_caught() {
        let r = rules("ons-srs", None);
        let (_, first) = check_csv("a,n\nr0,3\nr1,12\nr2,40\n", &r);
        let earlier = first.released_tables("rel-1");
        // Alone, the first release keeps its hidden cells protected.
        assert!(
            joint::audit_with_earlier(&earlier[0], &[])
                .expect("joint")
                .is_empty()
        );
        // A later table publishing r1 (as a safe table of its own would) pins r0 = 3.
        let later = joint::ReleasedTable {
            id: "job-2".into(),
            cells: vec![
                joint::ReleasedCell {
                    key: vec!["r1".into()],
                    value: joint::Released::Exact { value: 12.0 },
                },
                joint::ReleasedCell {
                    key: vec!["Total".into()],
                    value: joint::Released::Exact { value: 55.0 },
                },
            ],
            ..earlier[0].clone()
        };
        let f = joint::audit_with_earlier(&later, &earlier).expect("joint");
        assert!(
            f.iter()
                .any(|f| f.table == "rel-1" && f.key == vec!["r0".to_string()]),
            "{f:?}"
        );
    }

    #[test]
    fn postcode_district_is_a_geography_not_an_identifier() {
        let b = read_csv(
            "postcode_district,n\nLS1,40\nLS2,50\nLS3,60\n".as_bytes(),
            "t",
        )
        .expect("csv");
        let rep = check(&[b], &RoleSpec::default(), &rules("ons-srs", None)).expect("check");
        assert_ne!(rep.verdict, Verdict::Blocked, "{:?}", rep.table_findings);
        let b = read_csv("postcode,n\nLS1 1AA,40\nLS2 2BB,50\n".as_bytes(), "t").expect("csv");
        let rep = check(&[b], &RoleSpec::default(), &rules("ons-srs", None)).expect("check");
        assert_eq!(rep.verdict, Verdict::Blocked, "a full postcode still is");
    }

    #[test]
    fn plan_roles_decide_not_names() {
        // `patients` is a COUNT DISTINCT; `n` is the constant 10: names would get it wrong.
        let b =
            read_csv("code,patients,n\na,1,10\nb,2,10\nc,60,10\n".as_bytes(), "t").expect("csv");
        let roles = RoleSpec {
            dims: Some(vec!["code".into()]),
            counts: Some(vec!["patients".into()]),
            magnitudes: Some(Vec::new()),
            constants: vec!["n".into()],
            ..RoleSpec::default()
        };
        let rep = check(&[b], &roles, &rules("ons-srs", None)).expect("check");
        assert!(
            rep.findings
                .iter()
                .any(|f| f.column == "patients" && f.rule == Rule::Threshold)
        );
        assert!(rep.findings.iter().all(|f| f.column != "n"));
    }

    /// First event date per code beside its count: a date column (Date32) as the plan
    /// would give it.
    fn first_dates() -> RecordBatch {
        use arrow::array::{Date32Array, Int64Array, StringArray};
        let schema = Schema::new(vec![
            Field::new("code", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
            Field::new("first_date", DataType::Date32, false),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from(vec!["a", "b", "c", "d"])),
                Arc::new(Int64Array::from(vec![1, 40, 55, 70])),
                Arc::new(Date32Array::from(vec![19000, 19100, 19200, 19300])),
            ],
        )
        .expect("batch")
    }

    /// The roles of `first_dates`, with the date an allowed order statistic or refused.
    fn min_max_roles(allow: bool) -> RoleSpec {
        let mut spec = RoleSpec {
            dims: Some(vec!["code".into()]),
            counts: Some(vec!["n".into()]),
            magnitudes: Some(Vec::new()),
            ..RoleSpec::default()
        };
        if allow {
            spec.order_stats.push("first_date".into());
        } else {
            spec.refused
                .push(("first_date".into(), "min/max: one person's value".into()));
        }
        spec
    }

    #[test]
    fn min_max_of_a_date_is_refused_by_default() {
        let r = rules("ons-srs", None);
        assert!(!r.min_max.allow, "presets do not allow order statistics");
        let rep = check(&[first_dates()], &min_max_roles(r.min_max.allow), &r).expect("check");
        assert_eq!(rep.verdict, Verdict::Blocked, "{:?}", rep.table_findings);
        assert!(rep.apply().is_err());
    }

    #[test]
    fn min_max_allowed_by_the_rules_is_still_hidden_with_a_small_count() {
        let mut r = rules("ons-srs", None);
        r.min_max.allow = true;
        let rep = check(&[first_dates()], &min_max_roles(true), &r).expect("check");
        assert_ne!(rep.verdict, Verdict::Blocked);
        let safe = rep.apply().expect("safe table");
        let dates = safe.column(2);
        assert_eq!(dates.data_type(), &DataType::Date32, "its type is kept");
        let n = safe
            .column(1)
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .expect("counts");
        // The date of the one-patient code is hidden, and so is every date whose count is.
        assert!(dates.is_null(0));
        for row in 0..safe.num_rows() {
            assert_eq!(dates.is_null(row), n.is_null(row), "row {row}");
        }
        assert!((0..safe.num_rows()).any(|row| !dates.is_null(row)));
        // The rules file says so in words: `[min_max] allow = true`.
        let text = include_str!("../../policies/output-rules/ons-srs.toml")
            .replace("allow = false", "allow = true");
        assert!(Rules::parse(&text, "test").expect("rules").min_max.allow);
    }

    /// An independent LP attacker on one column of the safe table of a 1-D or 2-D table:
    /// published cells exactly (or as their rounding band when `band` is given), hidden
    /// cells in [0, inf), the totals in `known` exactly. Returns (row, lo, hi) per hidden row.
    fn attack_column(
        input: &RecordBatch,
        safe: &RecordBatch,
        column: &str,
        known: &dyn Fn(usize, &Grid) -> bool,
        band: Option<&dyn Fn(f64) -> (f64, f64)>,
    ) -> Vec<(usize, f64, f64)> {
        let t = table::resolve(std::slice::from_ref(input), &RoleSpec::default()).expect("resolve");
        let grid = Grid::build(&t.dims, t.nrows, &t.total_labels).expect("grid");
        let col = t
            .counts
            .iter()
            .chain(&t.magnitudes)
            .find(|c| c.name == column)
            .expect("column");
        let (mut truth, _) = Layer::from_rows(&grid, &col.values);
        suppress::complete(&grid, &mut truth, true);
        let out = arrow::compute::cast(
            safe.column_by_name(column).expect("col"),
            &DataType::Float64,
        )
        .expect("cast");
        let out = out.as_primitive::<arrow::datatypes::Float64Type>().clone();
        let mut dom: Vec<Domain> = (0..truth.value.len())
            .map(|c| {
                if grid.is_margin(c) && !known(c, &grid) {
                    Domain::Range(0.0, f64::INFINITY)
                } else {
                    Domain::Fixed(truth.value[c])
                }
            })
            .collect();
        for r in 0..t.nrows {
            let c = grid.cell_of_row[r];
            if grid.is_margin(c) && known(c, &grid) {
                continue;
            }
            dom[c] = if out.is_null(r) {
                Domain::Range(0.0, f64::INFINITY)
            } else if let Some(b) = band {
                let (lo, hi) = b(out.value(r));
                Domain::Range(lo, hi)
            } else {
                Domain::Fixed(out.value(r))
            };
        }
        let vars: Vec<usize> = (0..dom.len())
            .filter(|c| matches!(dom[*c], Domain::Range(..)))
            .collect();
        let blind = Layer {
            value: vec![f64::NAN; truth.value.len()],
            state: truth.state.clone(),
            totals_known: false,
        };
        (0..t.nrows)
            .filter(|r| matches!(dom[grid.cell_of_row[*r]], Domain::Range(..)))
            .map(|r| {
                let (lo, hi) = lp_interval(&grid, &blind, &dom, &vars, grid.cell_of_row[r]);
                (r, lo, hi)
            })
            .collect()
    }

    const SUMS: &str =
        "a,n,cost_sum\nr0,3,120\nr1,40,900\nr2,55,1300\nr3,60,1500\nTotal,158,3820\n";

    #[test]
    fn a_sum_hidden_with_its_small_count_is_not_recoverable_from_the_totals() {
        // Issue 22 point 8: 120 = 3820 - 900 - 1300 - 1500 once only r0's sum is hidden.
        for preset in ["opensafely", "nhse-sde", "ons-srs"] {
            let r = rules(preset, None);
            let (input, rep) = check_csv(SUMS, &r);
            assert!(
                rep.findings
                    .iter()
                    .any(|f| f.column == "cost_sum" && f.rule == Rule::Secondary),
                "{preset}: {}",
                rep.render(Format::Text)
            );
            let safe = rep.apply().expect("apply");
            let all_known = |_: usize, _: &Grid| true;
            let got = attack_column(&input, &safe, "cost_sum", &all_known, None);
            let r0 = got.iter().find(|g| g.0 == 0).expect("r0 hidden");
            // p% (10% unless the rules set one) either side of 120.
            assert!(
                r0.1 <= 108.0 + 1e-6 && r0.2 >= 132.0 - 1e-6,
                "{preset}: {r0:?}"
            );
            for (row, lo, hi) in &got {
                assert!(hi - lo >= 1.0 - 1e-6, "{preset}: row {row} pinned");
            }
            // The re-check of the safe table passes, with nothing left to hide.
            let again = check(&[safe], &RoleSpec::default(), &r).expect("recheck");
            assert!(again.findings.iter().all(|f| f.rule != Rule::Unprotected));
        }
    }

    #[test]
    fn the_recheck_tests_width_for_hidden_sums() {
        // A "safe" table in which only r0's sum is hidden: width 0, so it fails.
        let csv = "a,n,cost_sum\nr0,,\nr1,,900\nr2,55,1300\nr3,60,1500\nTotal,158,3820\n";
        let (_, rep) = check_csv(csv, &rules("ons-srs", None));
        assert_ne!(rep.verdict, Verdict::Releasable);
        assert!(
            rep.findings
                .iter()
                .any(|f| f.column == "cost_sum"
                    && matches!(f.rule, Rule::Unprotected | Rule::Secondary)),
            "{}",
            rep.render(Format::Text)
        );
    }

    #[test]
    fn a_small_total_the_table_leaves_out_is_not_assumed_known() {
        // Rows x and w are small (totals 3 and 6): under the stated model a total below the
        // threshold is never published, so neither is known (their sum, 9, is: the grand
        // total less the other rows'); each is a hidden cell with its own need, capped at
        // what the known totals allow a priori, and the table is releasable.
        let csv = "a,b,n\nx,p,3\nx,q,0\nw,p,2\nw,q,4\ny,p,50\ny,q,60\nz,p,40\nz,q,70\n";
        let r = rules("opensafely", None);
        let (_, rep) = check_csv(csv, &r);
        assert!(
            rep.findings
                .iter()
                .any(|f| f.row.is_none() && f.key == vec!["x".to_string(), "Total".to_string()]),
            "{}",
            rep.render(Format::Text)
        );
        assert!(assert_protected(csv, &r), "{}", rep.render(Format::Text));
    }

    fn midpoint_band(v: f64) -> (f64, f64) {
        if v == 0.0 {
            (0.0, 0.0)
        } else {
            (v - 2.0, v + 3.0)
        }
    }

    #[test]
    fn midpoint6_totals_are_rounded_and_never_pin_a_band() {
        // Issue 22 point 8: r0,1 / r1,49 / Total,50 with the true total known pins r0 = 1.
        let csv = "a,n\nr0,1\nr1,49\nTotal,50\n";
        let r = rules("opensafely-midpoint6", None);
        assert!(!r.suppression.assume_totals_known, "totals are rounded too");
        let (input, rep) = check_csv(csv, &r);
        let safe = rep.apply().expect("apply");
        let n = safe.column(1).as_primitive::<Int64Type>().clone();
        assert_eq!((n.value(0), n.value(1), n.value(2)), (3, 51, 51));
        // Every published count is its band, the total too: r0 keeps [1, 5].
        let none_known = |_: usize, _: &Grid| false;
        let band: &dyn Fn(f64) -> (f64, f64) = &midpoint_band;
        let got = attack_column(&input, &safe, "n", &none_known, Some(band));
        let r0 = got.iter().find(|g| g.0 == 0).expect("r0");
        assert!(r0.2 - r0.1 >= 1.0, "{r0:?}");
        // With the true totals taken as known, the audit sees the pin and refuses.
        let mut known = r.clone();
        known.suppression.assume_totals_known = true;
        let (_, rep) = check_csv(csv, &known);
        assert!(
            rep.findings
                .iter()
                .any(|f| f.rule == Rule::Unprotected && f.row == Some(1)),
            "{}",
            rep.render(Format::Text)
        );
        assert!(rep.apply().is_err());
    }

    /// Male x pregnant: under acro-default (zeros disclosive) the structural zero M,yes is
    /// hidden like any zero unless the rules declare it.
    const PREGNANT: &str = "sex,pregnant,n\nF,yes,5\nF,no,300\nM,yes,0\nM,no,280\n";

    #[test]
    fn a_structural_zero_is_never_counted_as_protection() {
        let plain = rules("acro-default", None);
        // Undeclared, the zero is a disclosive zero, hidden like any other.
        let (_, rep) = check_csv(PREGNANT, &plain);
        assert!(
            rep.findings
                .iter()
                .any(|f| f.row == Some(3) && f.rule == Rule::Zero)
        );
        let mut declared = plain.clone();
        declared.structural_zeros = vec![
            [
                ("sex".to_string(), "M".to_string()),
                ("pregnant".to_string(), "yes".to_string()),
            ]
            .into_iter()
            .collect(),
        ];
        let (_, rep) = check_csv(PREGNANT, &declared);
        // Published as 0 and never hidden; F,yes (5) then equals its row total less F,no,
        // which equals the "no" total less M,no = M's total: no pattern protects it.
        assert_eq!(rep.cell_status["n"][2], CellStatus::Published);
        assert!(rep.findings.iter().all(|f| f.row != Some(3)));
        assert!(
            rep.findings
                .iter()
                .any(|f| f.rule == Rule::Unprotected && f.row == Some(1)),
            "{}",
            rep.render(Format::Text)
        );
        assert!(rep.apply().is_err());
        // With a second small pregnancy category the table is releasable, the zero shown,
        // and an attacker who knows it (it is published) cannot narrow F,yes below its need.
        let csv =
            "sex,pregnant,n\nF,yes,5\nF,no,300\nF,unknown,4\nM,yes,0\nM,no,280\nM,unknown,3\n";
        let (input, rep) = check_csv(csv, &declared);
        let safe = rep.apply().expect("apply");
        let n = safe.column(2).as_primitive::<Int64Type>().clone();
        assert!(!n.is_null(3) && n.value(3) == 0);
        assert!(n.is_null(0));
        let known = |c: usize, g: &Grid| {
            // Totals passing the threshold: the "no" column, each sex, the grand total.
            let k = g.coords(c);
            !(k[0] == 2 && (k[1] == 0 || k[1] == 2))
        };
        for (row, lo, hi) in attack_column(&input, &safe, "n", &known, None) {
            assert!(hi - lo >= 1.0 - 1e-6, "row {} pinned", row + 1);
        }
        // A declared structural zero that is not zero is an error in the rules or the table.
        let b = read_csv(
            "sex,pregnant,n\nF,yes,5\nM,yes,2\nM,no,20\nF,no,30\n".as_bytes(),
            "t",
        )
        .expect("csv");
        let e = check(&[b], &RoleSpec::default(), &declared)
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|m| m.contains("structural zero")));
    }

    #[test]
    fn a_long_one_dim_table_takes_the_closed_form_path() {
        // Not timed (no timed tests): the closed-form path is what runs, and it protects.
        let mut csv = String::from("code,n\n");
        let mut x: u64 = 7;
        for i in 0..20_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let v = if (x >> 33).is_multiple_of(3) {
                (x >> 40) % 8 + 1
            } else {
                (x >> 40) % 400 + 10
            };
            csv.push_str(&format!("c{i},{v}\n"));
        }
        let r = rules("ons-srs", None);
        let (_, rep) = check_csv(&csv, &r);
        let safe = rep.apply().expect("apply");
        let again = check(&[safe], &RoleSpec::default(), &r).expect("recheck");
        assert!(again.findings.iter().all(|f| f.rule != Rule::Unprotected));
        // One complement at most: the hidden small counts need only a total of 10 beside each.
        assert!(
            rep.summary.get("secondary").is_none_or(|n| *n <= 1),
            "{:?}",
            rep.summary
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

        #[test]
        fn the_closed_form_line_interval_is_the_lp_interval(
            vals in proptest::collection::vec(0u32..60, 2..9),
            hidden in proptest::collection::vec(any::<bool>(), 9),
            total_known: bool,
        ) {
            let mut labels: Vec<String> = (0..vals.len()).map(|i| format!("r{i}")).collect();
            labels.push("Total".into());
            let mut v: Vec<Option<f64>> = vals.iter().map(|x| Some(f64::from(*x))).collect();
            v.push(Some(vals.iter().map(|x| f64::from(*x)).sum()));
            let g = Grid::build(&[("a".into(), labels)], v.len(), &["Total".into()]).expect("grid");
            let (l, _) = Layer::from_rows(&g, &v);
            let dom: Vec<Domain> = (0..v.len()).map(|c| {
                let x = l.value[c];
                let is_total = c == v.len() - 1;
                if (is_total && !total_known) || (!is_total && hidden[c]) {
                    Domain::Range(0.0, f64::INFINITY)
                } else if !is_total && c % 3 == 1 {
                    Domain::Range((x - 2.5).max(0.0), x + 2.5)
                } else {
                    Domain::Fixed(x)
                }
            }).collect();
            let iv = attack::line_intervals(&g, &dom).expect("1-D");
            let vars: Vec<usize> = (0..dom.len()).filter(|c| matches!(dom[*c], Domain::Range(..))).collect();
            for &c in &vars {
                let lo = attack::solve(&g, &l, &dom, &vars, c, OptimizationDirection::Minimize);
                let hi = attack::solve(&g, &l, &dom, &vars, c, OptimizationDirection::Maximize);
                prop_assert!(lo.is_some_and(|lo| (lo - iv[c].0).abs() < 1e-6), "{c}: {lo:?} vs {:?}", iv[c]);
                match hi {
                    Some(hi) if hi.is_infinite() => prop_assert!(iv[c].1.is_infinite()),
                    Some(hi) => prop_assert!((hi - iv[c].1).abs() < 1e-6, "{c}: {hi} vs {:?}", iv[c]),
                    None => prop_assert!(iv[c].1.is_infinite()),
                }
            }
        }
    }

    #[test]
    fn a_refusal_names_the_cells_and_a_checked_combination() {
        // Row x holds 3 and two structural zeros: x's total (the grand total less y's and
        // z's) pins the 3, whatever is hidden.
        let csv = "a,b,n\nx,p,3\nx,q,0\nx,r,0\ny,p,50\ny,q,60\ny,r,55\nz,p,40\nz,q,70\nz,r,45\n";
        let mut r = rules("acro-default", None);
        r.structural_zeros = ["q", "r"]
            .iter()
            .map(|b| {
                [
                    ("a".to_string(), "x".to_string()),
                    ("b".to_string(), b.to_string()),
                ]
                .into_iter()
                .collect()
            })
            .collect();
        let (_, rep) = check_csv(csv, &r);
        assert!(
            rep.findings
                .iter()
                .any(|f| f.rule == Rule::Unprotected
                    && f.key == vec!["x".to_string(), "p".to_string()]),
            "{}",
            rep.render(Format::Text)
        );
        let advice = rep
            .table_findings
            .iter()
            .find(|f| f.rule == "refusal")
            .expect("refusal advice");
        assert!(advice.reason.contains("n [x, p]"), "{}", advice.reason);
        assert!(
            advice.reason.contains("combine \"x\" and \"z\" of \"a\""),
            "{}",
            advice.reason
        );
        // And the advice holds: the combined table is releasable after suppression.
        let merged = "a,b,n\nx+z,p,43\nx+z,q,70\nx+z,r,45\ny,p,50\ny,q,60\ny,r,55\n";
        let (_, again) = check_csv(merged, &r);
        assert!(again.apply().is_ok(), "{}", again.render(Format::Text));
    }

    fn table_csv(k: usize, sizes: &[usize], vals: &[u32], margins: bool) -> String {
        let dims: Vec<String> = (0..k).map(|d| format!("d{d}")).collect();
        let mut out = format!("{},n\n", dims.join(","));
        let radix: Vec<usize> = sizes.iter().map(|s| s + usize::from(margins)).collect();
        let size: usize = radix.iter().product();
        for cell in 0..size {
            let mut rest = cell;
            let mut coords = vec![0; k];
            for d in (0..k).rev() {
                coords[d] = rest % radix[d];
                rest /= radix[d];
            }
            let mut sum = 0u64;
            let interior: usize = sizes.iter().product();
            for f in 0..interior {
                let mut r2 = f;
                let mut ok = true;
                for d in (0..k).rev() {
                    let c = r2 % sizes[d];
                    r2 /= sizes[d];
                    ok &= coords[d] == sizes[d] || coords[d] == c;
                }
                if ok {
                    sum += u64::from(vals[f % vals.len()]);
                }
            }
            let key: Vec<String> = coords
                .iter()
                .enumerate()
                .map(|(d, c)| {
                    if *c == sizes[d] {
                        "Total".into()
                    } else {
                        format!("c{c}")
                    }
                })
                .collect();
            out.push_str(&format!("{},{sum}\n", key.join(",")));
        }
        out
    }

    fn cell_value() -> impl Strategy<Value = u32> {
        prop_oneof![3 => 10u32..120, 2 => 1u32..10, 1 => Just(0u32)]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

        #[test]
        fn no_hidden_cell_is_pinned_or_narrowed(
            k in 1usize..=3,
            sizes in proptest::collection::vec(2usize..=4, 3),
            vals in proptest::collection::vec(cell_value(), 64),
            margins: bool,
            preset in prop_oneof![Just("ons-srs"), Just("acro-default"), Just("opensafely")],
            round in prop_oneof![Just(None), Just(Some(5u64))],
        ) {
            let sizes: Vec<usize> = sizes.iter().take(k).map(|s| if k == 3 { (*s).min(3) } else { *s }).collect();
            let csv = table_csv(k, &sizes, &vals, margins);
            assert_protected(&csv, &rules(preset, round));
        }

        #[test]
        fn zero_columns_and_single_small_lines(
            n in 3usize..=5,
            small in 1u32..10,
            big in 10u32..200,
        ) {
            // A 2-D table with a column of zeros and one line holding a single small cell.
            let mut vals = vec![big; n * n];
            for r in 0..n { vals[r * n] = 0; }
            vals[n + 1] = small;
            let csv = table_csv(2, &[n, n], &vals, true);
            assert_protected(&csv, &rules("ons-srs", None));
        }
    }
}

/// Usefulness figures (issue 22 points 5 and 8), printed, not asserted on time: run with
/// `cargo test --release --lib disclosure::figures -- --ignored --nocapture`
/// (`SDC_FIGURES_LARGE=1` adds the 316x316 grid).
#[cfg(test)]
mod figures {
    use super::*;

    fn lcg(x: &mut u64) -> u64 {
        *x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *x >> 33
    }

    fn two_dim(rows: usize, cols: usize, seed: u64) -> String {
        let mut x = seed;
        let mut csv = String::from("a,b,n\n");
        for r in 0..rows {
            for c in 0..cols {
                let v = match lcg(&mut x) % 10 {
                    0..=1 => lcg(&mut x) % 8 + 1,
                    2 => 0,
                    _ => lcg(&mut x) % 200 + 10,
                };
                csv.push_str(&format!("r{r},c{c},{v}\n"));
            }
        }
        csv
    }

    fn report(csv: &str, preset: &str) -> Report {
        let b = read_csv(csv.as_bytes(), "t").expect("csv");
        let r = Rules::preset(preset).expect("rules");
        check(&[b], &RoleSpec::default(), &r).expect("check")
    }

    #[test]
    #[ignore]
    fn figures() {
        for preset in ["opensafely", "ons-srs", "acro-default"] {
            let (mut hidden, mut bound, mut over, mut refused, mut tables) = (0, 0, 0, 0, 0);
            let (mut proven, mut opt_hidden, mut opt_model, mut over_opt, mut opt_pattern) =
                (0, 0, 0, 0, 0);
            let mut opt_time = 0.0;
            let mut product_time = 0.0;
            for i in 0..200u64 {
                let rows = 2 + (i % 7) as usize;
                let cols = 2 + ((i / 7) % 7) as usize;
                let csv = two_dim(rows, cols, i + 1);
                let t = std::time::Instant::now();
                let rep = report(&csv, preset);
                product_time += t.elapsed().as_secs_f64();
                tables += 1;
                if rep.findings.iter().any(|f| f.rule == Rule::Unprotected) {
                    refused += 1;
                    continue;
                }
                let l = &rep.loss[0];
                hidden += l.hidden_cells;
                // The same table with the integer programme solved to proven optimality
                // (tables up to 5x5 only: larger ones take minutes in a debug build).
                if rows <= 5 && cols <= 5 {
                    exact::PROVE_OPTIMUM.with(|o| *o.borrow_mut() = Some(Vec::new()));
                    let t = std::time::Instant::now();
                    let opt_rep = report(&csv, preset);
                    opt_time += t.elapsed().as_secs_f64();
                    let optima = exact::PROVE_OPTIMUM
                        .with(|o| o.borrow_mut().take())
                        .unwrap_or_default();
                    let ol = &opt_rep.loss[0];
                    if optima.len() == 1 {
                        opt_pattern += ol.hidden_cells;
                        let m = l.primary_cells + optima[0];
                        proven += 1;
                        opt_hidden += l.hidden_cells;
                        opt_model += m;
                        if l.hidden_cells > m {
                            over_opt += 1;
                        }
                    }
                }
                let lb = l.lower_bound_cells.unwrap_or(l.primary_cells);
                bound += lb;
                assert!(
                    l.hidden_cells >= lb,
                    "a lower bound above a protecting pattern"
                );
                if l.hidden_cells > lb {
                    over += 1;
                }
            }
            println!(
                "{preset}: {tables} random 2-D tables up to 8x8: {refused} refused; {hidden} cells hidden against a lower bound of {bound} (+{:.1}%), {over} tables above the bound; {:.2} s",
                100.0 * (hidden as f64 - bound as f64) / (bound.max(1) as f64),
                product_time
            );
            println!(
                "{preset}: proven optimum on {proven} tables: product {opt_hidden} cells hidden against the optimum of the primaries' model {opt_model} (+{:.1}%), {over_opt} tables above it; the optimal pattern after audit and clean-up hides {opt_pattern} on those tables; {:.2} s solving to optimality",
                100.0 * (opt_hidden as f64 - opt_model as f64) / (opt_model.max(1) as f64),
                opt_time
            );
        }
        let mut x = 99u64;
        let mut csv = String::from("code,n\n");
        for i in 0..200_000 {
            let v = if lcg(&mut x).is_multiple_of(3) {
                lcg(&mut x) % 9 + 1
            } else {
                lcg(&mut x) % 400 + 10
            };
            csv.push_str(&format!("c{i},{v}\n"));
        }
        let start = std::time::Instant::now();
        let rep = report(&csv, "ons-srs");
        println!(
            "1-D table of 200,000 rows: {:.2} s, {} hidden ({} primary), verdict {:?}",
            start.elapsed().as_secs_f64(),
            rep.loss[0].hidden_cells,
            rep.loss[0].primary_cells,
            rep.verdict
        );
        if std::env::var("SDC_FIGURES_LARGE").is_ok() {
            let start = std::time::Instant::now();
            let rep = report(&two_dim(316, 316, 7), "opensafely");
            println!(
                "316x316: {:.2} s, {} hidden, {} primary, lower bound {:?}",
                start.elapsed().as_secs_f64(),
                rep.loss[0].hidden_cells,
                rep.loss[0].primary_cells,
                rep.loss[0].lower_bound_cells
            );
        }
    }
}
