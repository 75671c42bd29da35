//! Output disclosure checking: statistical disclosure control (SDC) for aggregate tables.
//!
//! This is the last gate before anything leaves the TRE: `tre check` and every query job
//! call [`check`] (roles inferred from names, for a file) or [`check_with_roles`] (roles from
//! the query plan) on a result. It owns primary suppression (small counts, disclosive zeros,
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
//! (protection needs and the hypercube pattern), `passes` (the checks, pass by pass),
//! `bound` (lower bounds on information loss), [`joint`], [`round`], [`dominance`],
//! `report` (text, Markdown, HTML rendering).

mod attack;
mod bound;
mod derived;
pub mod dominance;
pub mod joint;
mod passes;
mod protect;
mod report;
pub mod round;
pub mod rules;
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
    ColumnRole, DerivedKind, DerivedSpec, ResolvedRole, ResolvedRoles, RoleSpec, is_parquet,
    read_csv, read_table,
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
            DisclosureError::Malformed { .. } | DisclosureError::Rules { .. } => {
                ErrorKind::Failed
            }
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
        f.write_str(self.as_str())
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
        f.write_str(match self {
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
}

/// One value column of the safe table.
#[derive(Debug, Clone)]
struct PlannedColumn {
    name: String,
    /// Counts are written as integers, everything else as floats.
    is_count: bool,
    values: Vec<Option<f64>>,
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
            if col.is_count {
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
        let schema = Schema::new(fields)
            .with_metadata([(CELL_STATUS_KEY.to_string(), status)].into_iter().collect());
        RecordBatch::try_new(Arc::new(schema), arrays)
            .map_err(|e| DisclosureError::Internal(format!("building the safe table: {e}")))
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

/// Check a query result whose column roles the query plan decided: one role per output
/// column, in order. Names decide nothing here; a count is a count because the plan says so.
pub fn check_with_roles(
    batches: &[RecordBatch],
    roles: &[ColumnRole],
    rules: &Rules,
) -> Result<Report, DisclosureError> {
    let Some(first) = batches.first() else {
        return Err(DisclosureError::Malformed {
            message: "the table is empty (no batches)".into(),
        });
    };
    let schema = first.schema();
    if schema.fields().len() != roles.len() {
        return Err(DisclosureError::Internal(format!(
            "{} roles for {} columns",
            roles.len(),
            schema.fields().len()
        )));
    }
    let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    passes::run(batches, &spec_from_roles(&names, roles), rules)
}

/// The [`RoleSpec`] that says exactly what the plan's roles say (nothing left to infer).
fn spec_from_roles(names: &[String], roles: &[ColumnRole]) -> RoleSpec {
    let mut spec = RoleSpec {
        dims: Some(Vec::new()),
        counts: Some(Vec::new()),
        magnitudes: Some(Vec::new()),
        how: Some("from the query plan".into()),
        ..RoleSpec::default()
    };
    let mut contributors: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (n, r) in names.iter().zip(roles) {
        let n = n.clone();
        match r {
            ColumnRole::GroupKey => spec.dims.get_or_insert_default().push(n),
            ColumnRole::Count => spec.counts.get_or_insert_default().push(n),
            ColumnRole::Magnitude => spec.magnitudes.get_or_insert_default().push(n),
            ColumnRole::Contributor { of } => contributors.entry(of.clone()).or_default().push(n),
            ColumnRole::Mean { denominator } => spec.derived.push(DerivedSpec {
                column: n,
                kind: DerivedKind::Mean,
                numerator: None,
                denominator: denominator.clone(),
            }),
            ColumnRole::Ratio {
                numerator,
                denominator,
            } => spec.derived.push(DerivedSpec {
                column: n,
                kind: DerivedKind::Ratio,
                numerator: numerator.clone(),
                denominator: denominator.clone(),
            }),
            ColumnRole::Constant => spec.constants.push(n),
            ColumnRole::MinMax => spec
                .refused
                .push((n, "min/max: one person's value; refused".into())),
            ColumnRole::RowLevel => spec
                .refused
                .push((n, "row-level: neither a group key nor an aggregate".into())),
        }
    }
    spec.contributors = contributors.into_iter().collect();
    spec
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
