//! Output disclosure checking: statistical disclosure control (SDC) for aggregate tables.
//!
//! This is the last gate before anything leaves the TRE: `tre check` and every query job
//! call [`check`] on a result. It owns primary suppression (small counts, disclosive zeros,
//! dominance), secondary suppression (so no hidden cell can be worked out from the published
//! cells and totals), rounding, the block on row-level data, and the report that says what
//! failed and why. [`Report::apply`] gives the safe table. Its danger is a silent pass: every
//! doubt (malformed table, unknown column role, unchecked dominance) is an error or a failing
//! finding, never a pass. It never writes files and never logs cell values.
//!
//! Submodules: [`rules`] (presets and rules files), [`table`] (reading and roles),
//! `suppress` (grid, primary and secondary suppression), [`round`], [`dominance`],
//! `report` (text, Markdown, HTML rendering).

pub mod dominance;
mod report;
pub mod round;
pub mod rules;
mod suppress;
pub mod table;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use serde::Serialize;

pub use report::Format;
pub use rules::{NkRule, Overrides, Rounding, RoundingMethod, Rules};
pub use table::{ColumnRole, ResolvedRoles, RoleSpec, is_parquet, read_csv, read_table};

use suppress::{Grid, Layer, State};

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
    /// A bug in this module.
    #[error("internal error in the disclosure checker (a bug): {0}")]
    Internal(String),
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

/// One failing cell.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Finding {
    /// Rule id: `threshold`, `zero`, `p-ratio`, `nk-rule`, `negative`, `missing`,
    /// `secondary`, `unprotected`.
    pub rule: String,
    /// The value column.
    pub column: String,
    /// 1-based data row of the input table (`None` for a total the table does not include).
    pub row: Option<usize>,
    /// The cell's dimension values.
    pub key: Vec<String>,
    /// The cell's value in the input.
    pub value: Option<f64>,
    /// What `--apply` does: `suppress` or `review`.
    pub action: String,
    /// Why.
    pub reason: String,
}

/// A finding about the whole table.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TableFinding {
    /// Rule id: `row-level`, `rounding`, `dominance-unchecked`, `absent-cells`, `note`.
    pub rule: String,
    /// Whether it stops release as is.
    pub fails: bool,
    /// Why.
    pub reason: String,
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
    /// How the checks work, including where we are stricter than ACRO.
    pub method: Vec<String>,
    #[serde(skip)]
    plan: Plan,
}

/// What `apply` writes, decided during the check.
#[derive(Debug, Clone, Default)]
struct Plan {
    dims: Vec<(String, ArrayRef)>,
    values: Vec<PlannedColumn>,
}

/// One value column of the safe table: (name, is_count, output values, marker per row).
type PlannedColumn = (String, bool, Vec<Option<f64>>, Vec<Option<String>>);

impl Report {
    /// Whether the table may be released as it is.
    pub fn releasable(&self) -> bool {
        self.verdict == Verdict::Releasable
    }

    /// The safe version of the table: suppressed cells empty with a `<column>_sdc` marker,
    /// published counts rounded, contributor columns dropped. Refused for row-level data.
    pub fn apply(&self) -> Result<RecordBatch, DisclosureError> {
        if self.verdict == Verdict::Blocked {
            return Err(DisclosureError::Malformed {
                message: "the table looks like row-level data and cannot be made safe by suppression; aggregate it first".to_string(),
            });
        }
        let mut fields = Vec::new();
        let mut arrays: Vec<ArrayRef> = Vec::new();
        for (name, arr) in &self.plan.dims {
            fields.push(Field::new(name, arr.data_type().clone(), true));
            arrays.push(arr.clone());
        }
        for (name, is_count, vals, marks) in &self.plan.values {
            if *is_count {
                let a: Int64Array = vals.iter().map(|v| v.map(|x| x as i64)).collect();
                fields.push(Field::new(name, DataType::Int64, true));
                arrays.push(Arc::new(a));
            } else {
                let a: Float64Array = vals.iter().copied().collect();
                fields.push(Field::new(name, DataType::Float64, true));
                arrays.push(Arc::new(a));
            }
            let m: StringArray = marks.iter().map(|m| m.as_deref()).collect();
            fields.push(Field::new(format!("{name}_sdc"), DataType::Utf8, true));
            arrays.push(Arc::new(m));
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
            .map_err(|e| DisclosureError::Internal(format!("building the safe table: {e}")))
    }

    /// Render the report for people.
    pub fn render(&self, format: Format) -> String {
        report::render(self, format)
    }
}

fn is_additive(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ![
        "mean",
        "avg",
        "average",
        "median",
        "rate",
        "ratio",
        "pct",
        "percent",
        "proportion",
    ]
    .iter()
    .any(|k| n.contains(k))
}

fn looks_like_identifier_value(v: &str) -> bool {
    let hex64 = v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit());
    let digits: String = v
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect();
    let nhs = digits.len() == 10 && digits.bytes().all(|b| b.is_ascii_digit()) && v.len() <= 12;
    hex64 || nhs
}

/// Check an aggregate table against the rules.
pub fn check(
    batches: &[RecordBatch],
    roles: &RoleSpec,
    rules: &Rules,
) -> Result<Report, DisclosureError> {
    let t = table::resolve(batches, roles)?;
    let batch = arrow::compute::concat_batches(
        &batches
            .first()
            .map(|b| b.schema())
            .ok_or_else(|| DisclosureError::Internal("no batches".into()))?,
        batches,
    )
    .map_err(|e| DisclosureError::Internal(e.to_string()))?;
    let total_label = t
        .total_labels
        .first()
        .cloned()
        .unwrap_or_else(|| "Total".to_string());
    let grid = Grid::build(&t.dims, t.nrows, &t.total_labels)?;
    let size = grid.row_of.len();
    let mut findings: Vec<Finding> = Vec::new();
    let mut table_findings: Vec<TableFinding> = Vec::new();
    let mut method: Vec<String> = Vec::new();

    // Row-level block.
    let mut blocked = false;
    for c in &t.roles.columns {
        let n = c.name.to_ascii_lowercase();
        if rules.row_level.identifier_columns.iter().any(|p| {
            n == p.to_ascii_lowercase() || (p.len() >= 8 && n.contains(&p.to_ascii_lowercase()))
        }) {
            blocked = true;
            table_findings.push(TableFinding {
                rule: "row-level".into(),
                fails: true,
                reason: format!("column {:?} is named like a person identifier; row-level data may not leave the TRE", c.name),
            });
        }
    }
    for (name, vals) in &t.dims {
        let non_empty = vals.iter().filter(|v| !v.is_empty()).count();
        let ids = vals
            .iter()
            .filter(|v| looks_like_identifier_value(v))
            .count();
        if non_empty > 0 && ids * 2 > non_empty {
            blocked = true;
            table_findings.push(TableFinding {
                rule: "row-level".into(),
                fails: true,
                reason: format!("most values of column {name:?} look like NHS numbers or pseudonyms; row-level data may not leave the TRE"),
            });
        }
    }
    if let Some(first) = t.counts.first() {
        let interior: Vec<f64> = (0..t.nrows)
            .filter(|r| !grid.is_margin(grid.cell_of_row[*r]))
            .filter_map(|r| first.values[r])
            .collect();
        let ones = interior.iter().filter(|v| **v == 1.0).count();
        if interior.len() >= rules.row_level.min_cells_for_ones_check
            && ones as f64 > rules.row_level.max_share_of_ones * interior.len() as f64
        {
            blocked = true;
            table_findings.push(TableFinding {
                rule: "row-level".into(),
                fails: true,
                reason: format!(
                    "{ones} of {} cells of {:?} equal 1 (more than {:.0}%): this looks like row-level data, not an aggregate",
                    interior.len(),
                    first.name,
                    rules.row_level.max_share_of_ones * 100.0
                ),
            });
        }
    }

    let absent = (0..size)
        .filter(|c| grid.row_of[*c].is_none() && !grid.is_margin(*c))
        .count();
    if absent > 0 {
        table_findings.push(TableFinding {
            rule: "absent-cells".into(),
            fails: rules.suppression.zeros_disclosive,
            reason: format!(
                "{absent} combinations of the dimension categories are not in the table; a reader takes them as zeros{}",
                if rules.suppression.zeros_disclosive {
                    ", which these rules treat as disclosive: add them as rows with 0 so they can be checked, or drop the rule if they are structural"
                } else {
                    " (checked as published zeros)"
                }
            ),
        });
    }

    let mut plan = Plan::default();
    for (name, _) in &t.dims {
        let idx = batch
            .schema()
            .index_of(name)
            .map_err(|e| DisclosureError::Internal(e.to_string()))?;
        plan.dims.push((name.clone(), batch.column(idx).clone()));
    }
    let mut finding = |rule: &str,
                       column: &str,
                       cell: usize,
                       value: Option<f64>,
                       action: &str,
                       reason: String| {
        findings.push(Finding {
            rule: rule.to_string(),
            column: column.to_string(),
            row: grid.row_of[cell].map(|r| r as usize + 1),
            key: if blocked {
                Vec::new()
            } else {
                grid.key(cell, &total_label)
            },
            value: if blocked { None } else { value },
            action: action.to_string(),
            reason,
        });
    };

    let rounding = &rules.rounding;
    let mut unrounded = 0usize;
    let mut count_primary: Vec<Vec<State>> = Vec::new();
    let protection = rules.suppression.min_count as f64;
    for (ci, col) in t.counts.iter().enumerate() {
        let (mut layer, missing) = Layer::from_rows(&grid, &col.values);
        for r in missing {
            if !t.already_suppressed[ci][r] {
                finding("missing", &col.name, grid.cell_of_row[r], None, "review", "the count is missing: a reader cannot tell a suppressed cell from a lost one; fill it or mark it suppressed".into());
            }
        }
        check_margins(&grid, &layer, &col.name, rounding)?;
        suppress::complete(&grid, &mut layer, rules.suppression.assume_totals_known);
        for r in 0..t.nrows {
            let cell = grid.cell_of_row[r];
            if layer.state[cell] != State::Published {
                continue;
            }
            let v = layer.value[cell];
            if v < 0.0 {
                finding(
                    "negative",
                    &col.name,
                    cell,
                    Some(v),
                    "review",
                    "a negative count: the table is not a frequency table as it stands".into(),
                );
            } else if rules.count_is_small(v) {
                layer.state[cell] = State::Primary;
                let (rule, reason) = if v == 0.0 {
                    (
                        "zero",
                        "a zero count, and these rules treat zeros as disclosive".to_string(),
                    )
                } else {
                    (
                        "threshold",
                        format!(
                            "count {v} is below the threshold {}",
                            rules.suppression.min_count
                        ),
                    )
                };
                finding(rule, &col.name, cell, Some(v), "suppress", reason);
            }
        }
        count_primary.push(layer.state.clone());
        if rules.suppression.secondary {
            let unprotected = suppress::secondary(&grid, &mut layer, protection);
            for u in unprotected {
                finding(
                    "unprotected",
                    &col.name,
                    u.cell,
                    Some(layer.value[u.cell]),
                    "review",
                    format!(
                        "cannot be protected by suppression: {}; combine categories",
                        u.reason
                    ),
                );
            }
        }
        let mut out = vec![None; t.nrows];
        let mut marks = vec![None; t.nrows];
        for r in 0..t.nrows {
            let cell = grid.cell_of_row[r];
            match layer.state[cell] {
                State::Published => {
                    let v = layer.value[cell];
                    if !round::is_rounded(v, rounding) {
                        unrounded += 1;
                    }
                    out[r] = Some(round::round_count(v, rounding));
                }
                State::Secondary => {
                    finding("secondary", &col.name, cell, Some(layer.value[cell]), "suppress", "suppressed so that the cells suppressed for small counts cannot be worked out from the totals".into());
                    marks[r] = Some("suppressed (secondary)".to_string());
                }
                State::Primary => marks[r] = Some("suppressed (primary)".to_string()),
                _ => marks[r] = Some("suppressed".to_string()),
            }
        }
        plan.values.push((col.name.clone(), true, out, marks));
    }
    if unrounded > 0 {
        table_findings.push(TableFinding {
            rule: "rounding".into(),
            fails: true,
            reason: format!(
                "{unrounded} published counts are not rounded as the rules require ({}); --apply rounds them after suppression",
                match rounding.method {
                    RoundingMethod::Nearest => format!("nearest {}", rounding.base),
                    RoundingMethod::Midpoint => format!("midpoint {}", rounding.base),
                    RoundingMethod::None => "none".into(),
                }
            ),
        });
    }

    // Magnitudes.
    let needed = rules.contributors_needed();
    for (mi, col) in t.magnitudes.iter().enumerate() {
        let additive = is_additive(&col.name);
        let contrib = &t.contributors[mi];
        let dominance_on = needed > 0 && contrib.len() >= needed;
        if needed > 0 && contrib.len() < needed {
            table_findings.push(TableFinding {
                rule: "dominance-unchecked".into(),
                fails: true,
                reason: format!(
                    "the rules have dominance tests needing the {needed} largest contributions per cell, but {:?} has {}; add columns {0}_top1..{0}_top{needed} (or --contributors)",
                    col.name,
                    contrib.len()
                ),
            });
        }
        let (mut layer, missing) = Layer::from_rows(&grid, &col.values);
        for r in missing {
            if !t.mag_already_suppressed[mi][r] {
                finding(
                    "missing",
                    &col.name,
                    grid.cell_of_row[r],
                    None,
                    "review",
                    "the value is missing; fill it or mark it suppressed".into(),
                );
            }
        }
        if additive {
            suppress::complete(&grid, &mut layer, rules.suppression.assume_totals_known);
        }
        for r in 0..t.nrows {
            let cell = grid.cell_of_row[r];
            if layer.state[cell] != State::Published {
                continue;
            }
            let v = layer.value[cell];
            if v < 0.0 {
                finding("negative", &col.name, cell, Some(v), "review", "a negative magnitude: dominance rules assume non-negative contributions; review by hand".into());
            }
            let n = t.counts.first().and_then(|c| c.values[r]).unwrap_or(0.0);
            if count_primary
                .first()
                .is_some_and(|s| s[cell] == State::Primary)
            {
                layer.state[cell] = State::Primary;
                finding(
                    "threshold",
                    &col.name,
                    cell,
                    Some(v),
                    "suppress",
                    format!(
                        "based on {n} contributors, below the threshold {}",
                        rules.suppression.min_count
                    ),
                );
            }
            if dominance_on {
                let top: Vec<f64> = contrib.iter().map(|c| c.values[r].unwrap_or(0.0)).collect();
                let total = if additive { v } else { v * n };
                for f in dominance::check_cell(
                    total,
                    n,
                    &top,
                    &rules.dominance,
                    rules.suppression.zeros_disclosive,
                ) {
                    layer.state[cell] = State::Primary;
                    finding(f.rule, &col.name, cell, Some(v), "suppress", f.reason);
                }
            }
        }
        if additive && rules.suppression.secondary {
            for u in suppress::secondary(&grid, &mut layer, 0.0) {
                finding(
                    "unprotected",
                    &col.name,
                    u.cell,
                    Some(layer.value[u.cell]),
                    "review",
                    format!("cannot be protected by suppression: {}", u.reason),
                );
            }
        }
        let mut out = vec![None; t.nrows];
        let mut marks = vec![None; t.nrows];
        for r in 0..t.nrows {
            let cell = grid.cell_of_row[r];
            match layer.state[cell] {
                State::Published => out[r] = Some(layer.value[cell]),
                State::Secondary => {
                    finding("secondary", &col.name, cell, Some(layer.value[cell]), "suppress", "suppressed so that the suppressed cells of this sum cannot be worked out from the totals".into());
                    marks[r] = Some("suppressed (secondary)".to_string());
                }
                State::Primary => marks[r] = Some("suppressed (primary)".to_string()),
                _ => marks[r] = Some("suppressed".to_string()),
            }
        }
        plan.values.push((col.name.clone(), false, out, marks));
    }

    method.push(format!(
        "Primary suppression: counts below {} are suppressed{}; magnitude cells are suppressed with their count and when they fail a dominance rule.",
        rules.suppression.min_count,
        if rules.suppression.zeros_disclosive { ", and zeros" } else { "; zeros are published" }
    ));
    if rules.suppression.secondary {
        method.push(format!(
            "Secondary suppression: totals are taken as {}. Every row, column and total line must hold no hidden cell, or at least two whose combined count is at least {}; a line that does not gets the complementary cell of least cost (its own value plus the smallest published value of each other line it opens), lowest grid position on ties. In 2-D tables every hidden cell must also lie on a cycle of hidden cells (a hidden cell that is a bridge can be derived exactly by adding and subtracting totals); each bridge gets the cheapest published cell that closes a cycle through it.",
            if rules.suppression.assume_totals_known { "known, even when the table does not include them" } else { "known only where the table includes them" },
            rules.suppression.min_count.max(1)
        ));
        if t.dims.len() > 2 {
            table_findings.push(TableFinding {
                rule: "note".into(),
                fails: false,
                reason: format!("a {}-dimensional table: secondary suppression applied the line rule only; derivations that combine lines across three or more dimensions are not audited", t.dims.len()),
            });
        }
        method.push("Stricter than ACRO: ACRO flags cells by threshold, p-ratio and nk-rule but leaves secondary suppression to the output checker; the cells marked `secondary` here are ones ACRO would not flag.".to_string());
    }
    if rounding.method != RoundingMethod::None {
        method.push("Rounding: applied after suppression to every published count, totals included, each from its own true value.".to_string());
    }

    let mut summary: BTreeMap<String, usize> = BTreeMap::new();
    for f in &findings {
        *summary.entry(f.rule.clone()).or_default() += 1;
    }
    let verdict = if blocked {
        Verdict::Blocked
    } else if findings.is_empty() && table_findings.iter().all(|f| !f.fails) {
        Verdict::Releasable
    } else {
        Verdict::NotReleasable
    };
    Ok(Report {
        verdict,
        rules: rules.clone(),
        roles: t.roles.clone(),
        rows: t.nrows,
        summary,
        findings,
        table_findings,
        method,
        plan,
    })
}

/// Margins in the table must equal the sum of their cells (within rounding, if the table
/// looks rounded already).
fn check_margins(
    grid: &Grid,
    layer: &Layer,
    column: &str,
    rounding: &Rounding,
) -> Result<(), DisclosureError> {
    for (members, total) in &grid.lines {
        let t = *total as usize;
        let Some(trow) = grid.row_of[t] else { continue };
        if layer.state[t] != State::Published {
            continue;
        }
        let mut sum = 0.0;
        let mut complete = true;
        let mut all_rounded = round::is_rounded(layer.value[t], rounding);
        for m in members {
            let m = *m as usize;
            match grid.row_of[m] {
                Some(_) if layer.state[m] == State::Published => {
                    sum += layer.value[m];
                    all_rounded &= round::is_rounded(layer.value[m], rounding);
                }
                Some(_) => complete = false,
                None => {}
            }
        }
        if !complete {
            continue;
        }
        let tol = if rounding.method != RoundingMethod::None && all_rounded {
            (members.len() + 1) as f64 * rounding.base as f64 / 2.0
        } else {
            1e-9 * sum.abs().max(1.0)
        };
        let diff = layer.value[t] - sum;
        if diff.abs() > tol {
            return Err(DisclosureError::Malformed {
                message: format!(
                    "the total at data row {} of column {column:?} does not equal the sum of its {} cells (it differs by {diff}); fix the margins, or give them another label than a total label",
                    trow + 1,
                    members.len()
                ),
            });
        }
    }
    Ok(())
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
