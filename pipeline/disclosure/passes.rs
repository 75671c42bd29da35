//! The checks, pass by pass: row-level data, counts, magnitudes, derived statistics.
//!
//! [`run`] resolves the table's roles, lays it on a grid, and runs one pass per concern,
//! each adding findings and planning what `apply` publishes. Every count and additive
//! magnitude column gets its suppression pattern from `protect` and is audited by the LP
//! attacker before the report is made; a cell the audit cannot prove protected becomes an
//! `unprotected` finding, which blocks `apply`. This module never reads files and never puts
//! a cell value anywhere but the private report.

use std::collections::BTreeMap;

use arrow::record_batch::RecordBatch;

use super::attack::{self, Domain, Protection};
use super::joint::{Released, ReleasedCell, ReleasedTable};
use super::need;
use super::protect;
use super::suppress::{self, Grid, Layer, State};
use super::table::{self, Table};
use super::{
    Action, CellStatus, DisclosureError, Finding, Loss, Plan, PlannedColumn, Report, RoleSpec,
    RoundingMethod, Rule, Rules, TableFinding, Verdict, bound, dominance, round,
};

/// Column names that contain an identifier's name (`postcode`) but are aggregate-level
/// geographies (thousands of addresses each), never blocked by name (issue 22 point 8).
const AGGREGATE_GEOGRAPHIES: &[&str] = &["postcode_district", "postcode_area", "postcode_sector"];

/// Largest grid cells x primaries for which each primary's a priori interval is found by
/// LP (beyond it, the direct line totals cap the need).
const A_PRIORI_BUDGET: usize = 400_000;

/// The state of one check in progress.
pub(super) struct Checker<'a> {
    pub t: Table,
    pub rules: &'a Rules,
    pub grid: Grid,
    pub total_label: String,
    pub blocked: bool,
    pub findings: Vec<Finding>,
    pub table_findings: Vec<TableFinding>,
    pub method: Vec<String>,
    pub plan: Plan,
    pub status: BTreeMap<String, Vec<CellStatus>>,
    pub loss: Vec<Loss>,
    /// Final state of the first count column (the pattern means follow).
    pub count_state: Option<Vec<State>>,
    /// Primary cells of the first count column.
    pub count_primary: Option<Vec<bool>>,
    /// True values of the first count column over the whole grid (totals completed).
    pub count_values: Option<Vec<f64>>,
}

/// Check a table: see the module documentation.
pub(super) fn run(
    batches: &[RecordBatch],
    spec: &RoleSpec,
    rules: &Rules,
) -> Result<Report, DisclosureError> {
    run_inner(batches, spec, rules, true)
}

/// [`run`] without looking for categories to combine (the check of a combined table).
pub(super) fn run_without_suggestion(
    batches: &[RecordBatch],
    spec: &RoleSpec,
    rules: &Rules,
) -> Result<Report, DisclosureError> {
    run_inner(batches, spec, rules, false)
}

fn run_inner(
    batches: &[RecordBatch],
    spec: &RoleSpec,
    rules: &Rules,
    suggest: bool,
) -> Result<Report, DisclosureError> {
    let t = table::resolve(batches, spec)?;
    let batch = arrow::compute::concat_batches(
        &batches
            .first()
            .map(|b| b.schema())
            .ok_or_else(|| DisclosureError::Internal("no batches".into()))?,
        batches,
    )
    .map_err(|e| DisclosureError::Internal(e.to_string()))?;
    let grid = Grid::build(&t.dims, t.nrows, &t.total_labels)?;
    let total_label = t
        .total_labels
        .first()
        .cloned()
        .unwrap_or_else(|| "Total".to_string());
    let mut c = Checker {
        t,
        rules,
        grid,
        total_label,
        blocked: false,
        findings: Vec::new(),
        table_findings: Vec::new(),
        method: Vec::new(),
        plan: Plan::default(),
        status: BTreeMap::new(),
        loss: Vec::new(),
        count_state: None,
        count_primary: None,
        count_values: None,
    };
    c.row_level();
    c.absent_cells();
    c.plan_keys(&batch)?;
    for ci in 0..c.t.counts.len() {
        c.count_column(ci)?;
    }
    c.rounding_note();
    for mi in 0..c.t.magnitudes.len() {
        c.magnitude_column(mi);
    }
    for oi in 0..c.t.order_stats.len() {
        c.order_stat_column(oi);
    }
    for di in 0..c.t.derived.len() {
        c.derived_column(di);
    }
    c.describe();
    if suggest {
        c.refusal_advice();
    }
    Ok(c.finish())
}

impl Checker<'_> {
    /// Record a failing cell (no key or value once the table is blocked as row-level).
    pub fn finding(
        &mut self,
        rule: Rule,
        column: &str,
        cell: usize,
        value: Option<f64>,
        action: Action,
        reason: String,
    ) {
        let blocked = self.blocked;
        self.findings.push(Finding {
            rule,
            column: column.to_string(),
            row: self.grid.row_of[cell].map(|r| r as usize + 1),
            key: if blocked {
                Vec::new()
            } else {
                self.grid.key(cell, &self.total_label)
            },
            value: if blocked { None } else { value },
            action,
            reason,
        });
    }

    /// Record a finding about the whole table (for sibling modules).
    pub(super) fn table_finding_pub(&mut self, rule: &str, fails: bool, reason: String) {
        self.table_finding(rule, fails, reason);
    }

    fn table_finding(&mut self, rule: &str, fails: bool, reason: String) {
        self.table_findings.push(TableFinding {
            rule: rule.to_string(),
            fails,
            reason,
        });
    }

    /// Dimension and constant columns, as they are.
    fn plan_keys(&mut self, batch: &RecordBatch) -> Result<(), DisclosureError> {
        let names: Vec<String> = self
            .t
            .dims
            .iter()
            .map(|(n, _)| n.clone())
            .chain(self.t.constants.iter().cloned())
            .collect();
        for name in names {
            let idx = batch
                .schema()
                .index_of(&name)
                .map_err(|e| DisclosureError::Internal(e.to_string()))?;
            self.plan.keys.push((name, batch.column(idx).clone()));
        }
        Ok(())
    }

    /// Row-level data: identifier names and values, mostly-ones counts, refused columns.
    fn row_level(&mut self) {
        let mut reasons = Vec::new();
        for c in &self.t.roles.columns {
            let n = c.name.to_ascii_lowercase();
            if self.rules.row_level.identifier_columns.iter().any(|p| {
                let p = p.to_ascii_lowercase();
                n == p
                    || (p.len() >= 8
                        && n.contains(&p)
                        && !AGGREGATE_GEOGRAPHIES.contains(&n.as_str()))
            }) {
                reasons.push(format!("column {:?} is named like a person identifier; row-level data may not leave the TRE", c.name));
            }
        }
        for (name, vals) in &self.t.dims {
            let non_empty = vals.iter().filter(|v| !v.is_empty()).count();
            let ids = vals
                .iter()
                .filter(|v| looks_like_identifier_value(v))
                .count();
            if non_empty > 0 && ids * 2 > non_empty {
                reasons.push(format!("most values of column {name:?} look like NHS numbers or pseudonyms; row-level data may not leave the TRE"));
            }
        }
        for (name, why) in &self.t.refused {
            reasons.push(format!("column {name:?} may not be published ({why})"));
        }
        if let Some(r) = self.mostly_ones() {
            reasons.push(r);
        }
        for r in reasons {
            self.blocked = true;
            self.table_finding("row-level", true, r);
        }
    }

    fn mostly_ones(&self) -> Option<String> {
        let first = self.t.counts.first()?;
        let interior: Vec<f64> = (0..self.t.nrows)
            .filter(|r| !self.grid.is_margin(self.grid.cell_of_row[*r]))
            .filter_map(|r| first.values[r])
            .collect();
        let ones = interior.iter().filter(|v| **v == 1.0).count();
        let rl = &self.rules.row_level;
        (interior.len() >= rl.min_cells_for_ones_check
            && ones as f64 > rl.max_share_of_ones * interior.len() as f64)
            .then(|| {
                format!(
                    "{ones} of {} cells of {:?} equal 1 (more than {:.0}%): this looks like row-level data, not an aggregate",
                    interior.len(),
                    first.name,
                    rl.max_share_of_ones * 100.0
                )
            })
    }

    fn absent_cells(&mut self) {
        let size = self.grid.row_of.len();
        let absent = (0..size)
            .filter(|c| self.grid.row_of[*c].is_none() && !self.grid.is_margin(*c))
            .count();
        if absent == 0 {
            return;
        }
        let zd = self.rules.suppression.zeros_disclosive;
        self.table_finding(
            "absent-cells",
            zd,
            format!(
                "{absent} combinations of the dimension categories are not in the table; a reader takes them as zeros{}",
                if zd {
                    ", which these rules treat as disclosive: add them as rows with 0 so they can be checked, or drop the rule if they are structural"
                } else {
                    " (checked as published zeros)"
                }
            ),
        );
    }

    /// How much protection a small count needs on each side.
    fn safety(&self) -> f64 {
        self.rules
            .suppression
            .safety_range
            .unwrap_or(self.rules.suppression.min_count) as f64
    }

    /// One count column: primaries, pattern, audit, rounding, plan.
    fn count_column(&mut self, ci: usize) -> Result<(), DisclosureError> {
        let name = self.t.counts[ci].name.clone();
        let (mut layer, missing) = Layer::from_rows(&self.grid, &self.t.counts[ci].values);
        check_margins(&self.grid, &layer, &name, &self.rules.rounding)?;
        suppress::complete(
            &self.grid,
            &mut layer,
            self.rules.suppression.assume_totals_known,
        );
        self.structural_zeros(&mut layer, &name)?;
        let mut protections = self.count_primaries(ci, &name, &mut layer);
        self.cap_to_a_priori(&name, &layer, &mut protections);
        if ci == 0 {
            self.count_primary = Some(layer.state.iter().map(|s| *s == State::Primary).collect());
        }
        self.secure(&name, &mut layer, &protections, 1.0, true);
        if !missing.is_empty() {
            self.table_finding("note", false, format!(
                "{} cells of {name:?} are empty in the input: taken as hidden earlier, and audited as not exactly recoverable (their protection interval needs their values: check the table they came from)",
                missing.len()
            ));
        }
        self.rounding_audit(&name, &layer);
        self.plan_counts(&name, &layer);
        let released = self.released(&name, &layer, &protections);
        self.plan.released.push(released);
        if ci == 0 {
            self.count_state = Some(layer.state.clone());
            self.count_values = Some(layer.value.clone());
        }
        Ok(())
    }

    /// Mark small counts (and disclosive zeros) primary; their protection needs.
    /// A later count column (rows beside patients) is also primary wherever the first
    /// count column is: a cell of few patients is never published through another count.
    fn count_primaries(&mut self, ci: usize, name: &str, layer: &mut Layer) -> Vec<Protection> {
        let safety = self.safety();
        let mut out = Vec::new();
        for r in 0..self.t.nrows {
            let cell = self.grid.cell_of_row[r];
            let v = layer.value[cell];
            if layer.state[cell] != State::Published {
                continue;
            }
            let first_small = ci > 0 && self.count_primary.as_ref().is_some_and(|p| p[cell]);
            if first_small && !self.rules.count_is_small(v) {
                layer.state[cell] = State::Primary;
                out.push(Protection {
                    cell,
                    lpl: safety,
                    upl: a_priori(&self.grid, layer, cell, safety),
                });
                let t = self.rules.suppression.min_count;
                let first = self.t.counts[0].name.clone();
                let reason = format!("its {first:?} count is below the threshold {t}");
                self.finding(
                    Rule::Threshold,
                    name,
                    cell,
                    Some(v),
                    Action::Suppress,
                    reason,
                );
                continue;
            }
            let few = self.t.count_holders[ci]
                .as_ref()
                .and_then(|h| h.values[r])
                .is_some_and(|h| v != 0.0 && h < self.rules.suppression.min_count as f64);
            if few {
                layer.state[cell] = State::Primary;
                out.push(Protection {
                    cell,
                    lpl: safety,
                    upl: a_priori(&self.grid, layer, cell, safety),
                });
                let t = self.rules.suppression.min_count;
                let reason = format!("fewer than {t} patients give it a non-zero value");
                self.finding(
                    Rule::Threshold,
                    name,
                    cell,
                    Some(v),
                    Action::Suppress,
                    reason,
                );
                continue;
            }
            if !self.rules.count_is_small(v) {
                continue;
            }
            layer.state[cell] = State::Primary;
            out.push(Protection {
                cell,
                lpl: safety,
                upl: a_priori(&self.grid, layer, cell, safety),
            });
            let (rule, reason) = if v == 0.0 {
                (
                    Rule::Zero,
                    "a zero count, and these rules treat zeros as disclosive".to_string(),
                )
            } else {
                let t = self.rules.suppression.min_count;
                (
                    Rule::Threshold,
                    format!("count {v} is below the threshold {t}"),
                )
            };
            self.finding(rule, name, cell, Some(v), Action::Suppress, reason);
        }
        // Totals the table leaves out are cells too (issue 22 point 8): one that fails the
        // threshold is never published under these rules, so the attacker is not assumed to
        // know it, and it needs the protection of any small count.
        if layer.totals_known {
            for cell in self.absent_totals() {
                let v = layer.value[cell];
                if v.is_nan() || !self.rules.count_is_small(v) || ci > 0 {
                    continue;
                }
                layer.state[cell] = State::Primary;
                out.push(Protection {
                    cell,
                    lpl: safety,
                    upl: a_priori(&self.grid, layer, cell, safety),
                });
                let t = self.rules.suppression.min_count;
                let reason = format!(
                    "a total the table leaves out, below the threshold {t}: not taken as known, and protected like a hidden cell"
                );
                let rule = if v == 0.0 {
                    Rule::Zero
                } else {
                    Rule::Threshold
                };
                self.finding(rule, name, cell, Some(v), Action::Suppress, reason);
            }
        }
        out
    }

    /// Mark the cells the rules declare structurally zero as known to the reader: they are
    /// published as 0, never hidden, never a complement, and so never counted as protection
    /// of another cell (issue 22 point 7a). A declared structural zero that is not zero in
    /// the table is an error (the rules or the table are wrong).
    fn structural_zeros(&self, layer: &mut Layer, name: &str) -> Result<(), DisclosureError> {
        if self.rules.structural_zeros.is_empty() {
            return Ok(());
        }
        let dims: Vec<&str> = self.t.dims.iter().map(|(n, _)| n.as_str()).collect();
        // Each applicable entry as (dimension index, value) pairs.
        let entries: Vec<Vec<(usize, &str)>> = self
            .rules
            .structural_zeros
            .iter()
            .filter_map(|z| {
                z.iter()
                    .map(|(d, v)| dims.iter().position(|n| n == d).map(|i| (i, v.as_str())))
                    .collect::<Option<Vec<_>>>()
            })
            .collect();
        if entries.is_empty() {
            return Ok(());
        }
        for c in 0..layer.state.len() {
            let coords = self.grid.coords(c);
            let is_zero = entries.iter().any(|e| {
                e.iter().all(|(d, v)| {
                    self.grid.cats[*d]
                        .get(coords[*d])
                        .is_some_and(|cat| cat == v)
                })
            });
            if !is_zero {
                continue;
            }
            let v = layer.value[c];
            if !v.is_nan() && v != 0.0 {
                return Err(DisclosureError::Malformed {
                    message: format!(
                        "column {name:?}: a cell the rules declare a structural zero is not zero (data row {}); fix the rules' structural_zeros or the table",
                        self.grid.row_of[c].map_or(0, |r| r as usize + 1)
                    ),
                });
            }
            layer.value[c] = 0.0;
            layer.state[c] = State::Known;
        }
        Ok(())
    }

    /// The band a published count stands for under the rules' rounding: `(lo, hi)`.
    fn rounding_band(&self, v: f64) -> (f64, f64) {
        let r = &self.rules.rounding;
        let b = r.base as f64;
        let p = round::round_count(v, r);
        match r.method {
            RoundingMethod::None => (v, v),
            RoundingMethod::Nearest => ((p - b / 2.0).max(0.0), p + b / 2.0),
            RoundingMethod::Midpoint if p == 0.0 => (0.0, 0.0),
            RoundingMethod::Midpoint => {
                ((p - (b / 2.0).floor() + 1.0).max(0.0), p + (b / 2.0).ceil())
            }
        }
    }

    /// Rounding is protection only if the attacker cannot undo it (issue 22 point 8: under
    /// midpoint 6 with the true totals known, `r0,1 / r1,49 / Total,50` pins r0 = 1). The
    /// LP attacker reads every published count as its rounding band, the known totals
    /// exactly and hidden cells as unknown; a published small count (below the threshold,
    /// or in the first bands when rounding replaces the threshold) whose interval then holds
    /// a single whole number is pinned,
    /// and is reported unprotected (release refused: combine categories).
    fn rounding_audit(&mut self, name: &str, layer: &Layer) {
        if self.rules.rounding.method == RoundingMethod::None {
            return;
        }
        // Counts at or above the threshold need no protection; with no threshold (midpoint
        // rounding in its place), the counts of the first bands (1-7 for midpoint 6) do.
        let small = match self.rules.suppression.min_count {
            0 => self.rules.rounding.base + 2,
            t => t,
        };
        let dom: Vec<Domain> = (0..layer.state.len())
            .map(|c| {
                let v = layer.value[c];
                if layer.known_total(&self.grid, c) && !v.is_nan() {
                    Domain::Fixed(v)
                } else if layer.state[c] == State::Published && !v.is_nan() {
                    let (lo, hi) = self.rounding_band(v);
                    if lo == hi {
                        Domain::Fixed(lo)
                    } else {
                        Domain::Range(lo, hi)
                    }
                } else if layer.state[c] == State::Known && !v.is_nan() {
                    Domain::Fixed(v)
                } else {
                    Domain::Range(0.0, f64::INFINITY)
                }
            })
            .collect();
        let line = attack::line_intervals(&self.grid, &dom);
        let mut pinned = 0usize;
        for r in 0..self.t.nrows {
            let c = self.grid.cell_of_row[r];
            let v = layer.value[c];
            if layer.state[c] != State::Published
                || self.grid.is_margin(c)
                || v.is_nan()
                || v <= 0.0
                || v >= small as f64
                || !matches!(dom[c], Domain::Range(..))
            {
                continue;
            }
            let (lo, hi) = match &line {
                Some(iv) => iv[c],
                None => {
                    let i = attack::lp_interval(&self.grid, layer, &dom, c);
                    (i.lo, i.hi)
                }
            };
            if (lo - 1e-6).ceil() < (hi + 1e-6).floor() {
                continue;
            }
            pinned += 1;
            self.finding(
                Rule::Unprotected,
                name,
                c,
                Some(v),
                Action::Review,
                "published rounded, but the known totals and the other rounded cells pin its true value: combine categories (or hide it with its complements by a rules threshold)".to_string(),
            );
        }
        if pinned > 0 {
            self.table_finding("unprotected", true, format!(
                "{pinned} published counts of {name:?} are recoverable through their rounding from the known totals: --apply refuses, and the table may not be released"
            ));
        }
    }

    /// Never ask a hidden cell for more than the known totals allow a priori (issue 22
    /// point 5; tau-Argus' reduced protection): the attacker's interval from the known
    /// totals alone (every other cell unknown) bounds what any pattern can give, so each
    /// need is cut to it, and a note says how many were. Exact by closed form on 1-D tables
    /// and by LP where the cell's block is small; elsewhere the direct line totals only
    /// (`a_priori`). A cell the known totals alone pin keeps its full need: it is refused,
    /// never passed as protected.
    fn cap_to_a_priori(&mut self, name: &str, layer: &Layer, protections: &mut [Protection]) {
        if !layer.totals_known || protections.is_empty() {
            return;
        }
        let dom: Vec<Domain> = (0..layer.state.len())
            .map(|c| {
                let v = layer.value[c];
                let fixed = (layer.known_total(&self.grid, c) || layer.state[c] == State::Known)
                    && !v.is_nan();
                if fixed {
                    Domain::Fixed(v)
                } else {
                    Domain::Range(0.0, f64::INFINITY)
                }
            })
            .collect();
        let line = attack::line_intervals(&self.grid, &dom);
        let lp_ok = line.is_none()
            && layer.state.len().saturating_mul(protections.len()) <= A_PRIORI_BUDGET;
        let mut reduced = 0usize;
        for p in protections.iter_mut() {
            let x = layer.value[p.cell];
            if x.is_nan() {
                continue;
            }
            // Re-derive the upper cap with every primary (and unknown total) now marked.
            let base = p.lpl;
            let upl = a_priori(&self.grid, layer, p.cell, base);
            let (lo, hi) = match &line {
                Some(iv) => iv[p.cell],
                None if lp_ok => {
                    let i = attack::lp_interval(&self.grid, layer, &dom, p.cell);
                    if i.exact {
                        (i.lo, i.hi)
                    } else {
                        (0.0, f64::INFINITY)
                    }
                }
                None => (0.0, f64::INFINITY),
            };
            if hi - lo < 1.0 - 1e-9 || hi.is_nan() || lo.is_nan() {
                let absent_total =
                    self.grid.is_margin(p.cell) && self.grid.row_of[p.cell].is_none();
                if absent_total && !hi.is_nan() && !lo.is_nan() {
                    // A small total the table leaves out, which the known totals determine
                    // (the grand total less the others): under the model the attacker has
                    // it already, from totals published elsewhere; nothing this table
                    // publishes or hides changes that (reduced protection: none). A total
                    // the table includes keeps its need: the table would publish the
                    // totals that give it away.
                    p.lpl = 0.0;
                    p.upl = 0.0;
                    reduced += 1;
                } else {
                    p.upl = upl;
                }
                continue;
            }
            let lpl = base.min((x - lo).max(0.0));
            let upl_ap = upl.min((hi - x).max(0.0));
            // Reduced: the need's lower end is above its usual clamp at 0, or its upper end
            // below the cap of the cell's own line totals.
            if x - lpl > (x - base).max(0.0) + 1e-9 || upl_ap < upl - 1e-9 {
                reduced += 1;
            }
            p.lpl = lpl;
            p.upl = upl_ap;
        }
        if reduced > 0 {
            self.table_finding("note", false, format!(
                "{reduced} hidden cells of {name:?} get a narrower protection interval than the rules' safety range, because the known totals alone already bound them that closely (reduced protection, as tau-Argus reports it): their attacker interval reaches as far as the totals allow"
            ));
        }
    }

    /// When some hidden cells cannot be protected: name them (by key) and the smallest
    /// change found that makes the table releasable (two categories to combine, checked).
    fn refusal_advice(&mut self) {
        let bad: Vec<String> = self
            .findings
            .iter()
            .filter(|f| f.rule == Rule::Unprotected)
            .map(|f| format!("{} [{}]", f.column, f.key.join(", ")))
            .collect();
        if bad.is_empty() || self.blocked {
            return;
        }
        let shown = bad.iter().take(10).cloned().collect::<Vec<_>>().join("; ");
        let more = if bad.len() > 10 {
            format!(" and {} more", bad.len() - 10)
        } else {
            String::new()
        };
        let change = match super::suggest::combine(
            &self.t,
            &self.grid,
            self.rules,
            &self.findings,
            run_without_suggestion,
        )
        {
            Some(c) => format!(
                "combine {:?} and {:?} of {:?} (checked: the combined table is releasable after suppression)",
                c.a, c.b, c.dimension
            ),
            None => "no combination of two categories of one dimension was found that makes it releasable: combine more categories, or drop a dimension".to_string(),
        };
        self.table_finding(
            "refusal",
            true,
            format!("cells that cannot be protected: {shown}{more}; smallest change: {change}"),
        );
    }

    /// Grid cells that are totals the table does not include.
    fn absent_totals(&self) -> Vec<usize> {
        (0..self.grid.row_of.len())
            .filter(|c| self.grid.row_of[*c].is_none() && self.grid.is_margin(*c))
            .collect()
    }

    /// The `n` largest contributions to an absent total of magnitude `mi`, merged from the
    /// largest contributions of the table's interior cells under it (the n largest of a
    /// union are among the n largest of each part).
    fn total_tops(&self, mi: usize, cell: usize, n: usize) -> Vec<f64> {
        let want = self.grid.coords(cell);
        let last: Vec<usize> = self.grid.radix.iter().map(|r| r - 1).collect();
        let mut tops: Vec<f64> = Vec::new();
        for r in 0..self.t.nrows {
            let c = self.grid.cell_of_row[r];
            if self.grid.is_margin(c) {
                continue;
            }
            let coords = self.grid.coords(c);
            let under = (0..want.len()).all(|d| want[d] == last[d] || want[d] == coords[d]);
            if !under {
                continue;
            }
            for col in &self.t.contributors[mi] {
                if let Some(v) = col.values[r] {
                    tops.push(v);
                }
            }
            if tops.len() > 4 * n.max(1) {
                tops.sort_by(|a, b| b.total_cmp(a));
                tops.truncate(n);
            }
        }
        tops.sort_by(|a, b| b.total_cmp(a));
        tops.truncate(n);
        tops
    }

    /// Build the pattern (if secondary suppression is on) and audit it; shortfalls become
    /// `unprotected` findings; loss against its lower bound is recorded.
    pub fn secure(
        &mut self,
        name: &str,
        layer: &mut Layer,
        protections: &[Protection],
        unit: f64,
        is_count: bool,
    ) {
        let primary: Vec<bool> = layer.state.iter().map(|s| *s == State::Primary).collect();
        let short = if self.rules.suppression.secondary {
            let line = if is_count {
                self.rules.suppression.min_count as f64
            } else {
                0.0
            };
            protect::protect(&self.grid, layer, protections, unit, line)
        } else {
            let dom = super::attack::domains(&self.grid, layer, 0.0);
            need::audit(
                &self.grid,
                layer,
                &dom,
                &need::needs(layer, protections, unit),
            )
        };
        for s in &short {
            let cell = s.need.cell;
            let (lo, hi) = (s.got.lo, s.got.hi);
            self.finding(
                Rule::Unprotected,
                name,
                cell,
                Some(layer.value[cell]),
                Action::Review,
                format!(
                    "the LP attacker narrows it to [{lo:.6}, {hi:.6}], short of the protection interval [{:.6}, {:.6}]; no suppression pattern found protects it: combine categories",
                    s.need.lo, s.need.hi
                ),
            );
        }
        if !short.is_empty() {
            self.table_finding("unprotected", true, format!(
                "{} hidden cells of {name:?} cannot be protected: --apply refuses, and the table may not be released",
                short.len()
            ));
        }
        for c in 0..layer.state.len() {
            if layer.state[c] == State::Secondary && self.grid.row_of[c].is_some() {
                let reason = "hidden so that other hidden cells cannot be worked out or narrowed from the totals".to_string();
                self.finding(
                    Rule::Secondary,
                    name,
                    c,
                    Some(layer.value[c]),
                    Action::Suppress,
                    reason,
                );
            }
        }
        self.loss
            .push(bound::loss(&self.grid, layer, &primary, protections, name));
    }

    /// What a reader of the safe table knows about each cell of one count column, with each
    /// hidden cell's need, for the joint audit with later releases (the ledger is private).
    fn released(&self, name: &str, layer: &Layer, protections: &[Protection]) -> ReleasedTable {
        let rounding = &self.rules.rounding;
        let b = rounding.base as f64;
        let mut cells = Vec::new();
        for c in 0..layer.state.len() {
            let v = layer.value[c];
            let known_total = layer.known_total(&self.grid, c) && !v.is_nan();
            let value = if known_total || (layer.state[c] == State::Known && !v.is_nan()) {
                Released::Exact { value: v }
            } else if layer.state[c] == State::Published && self.grid.row_of[c].is_some() {
                let r = round::round_count(v, rounding);
                match rounding.method {
                    RoundingMethod::None => Released::Exact { value: v },
                    RoundingMethod::Nearest => Released::Interval {
                        lo: (r - b / 2.0).max(0.0),
                        hi: r + b / 2.0,
                    },
                    RoundingMethod::Midpoint => Released::Interval {
                        lo: (r - (b / 2.0).floor() + 1.0).max(0.0),
                        hi: r + (b / 2.0).ceil(),
                    },
                }
            } else if layer.state[c].unknown() && self.grid.row_of[c].is_some() {
                let p = protections.iter().find(|p| p.cell == c);
                let (lo, hi) = p.map_or((v, v), |p| ((v - p.lpl).max(0.0), v + p.upl));
                Released::Hidden {
                    need_lo: lo,
                    need_hi: hi,
                }
            } else {
                continue;
            };
            cells.push(ReleasedCell {
                key: self.grid.key(c, &self.total_label),
                value,
            });
        }
        ReleasedTable {
            id: String::new(),
            column: name.to_string(),
            dims: self.t.dims.iter().map(|(n, _)| n.clone()).collect(),
            total_label: self.total_label.clone(),
            cells,
        }
    }

    /// What the safe table shows for one count column.
    fn plan_counts(&mut self, name: &str, layer: &Layer) {
        let rounding = &self.rules.rounding;
        let published = match rounding.method {
            RoundingMethod::None => CellStatus::Published,
            RoundingMethod::Nearest => CellStatus::Rounded {
                base: rounding.base,
            },
            RoundingMethod::Midpoint => CellStatus::Midpoint {
                base: rounding.base,
            },
        };
        let mut values = vec![None; self.t.nrows];
        let mut status = vec![CellStatus::Hidden; self.t.nrows];
        for r in 0..self.t.nrows {
            let cell = self.grid.cell_of_row[r];
            if layer.state[cell] == State::Published {
                values[r] = Some(round::round_count(layer.value[cell], rounding));
                status[r] = published;
            } else if layer.state[cell] == State::Known && layer.value[cell] == 0.0 {
                // A structural zero: known to every reader.
                values[r] = Some(0.0);
                status[r] = CellStatus::Published;
            }
        }
        self.status.insert(name.to_string(), status);
        self.plan.values.push(PlannedColumn {
            name: name.to_string(),
            is_count: true,
            values,
            original: None,
        });
    }

    /// A table finding if published counts are not rounded as the rules require.
    fn rounding_note(&mut self) {
        let rounding = self.rules.rounding.clone();
        let mut unrounded = 0usize;
        for (ci, col) in self.t.counts.iter().enumerate() {
            let Some(planned) = self.plan.values.get(ci) else {
                continue;
            };
            for (r, v) in col.values.iter().enumerate() {
                if planned.values[r].is_some()
                    && v.is_some_and(|v| !round::is_rounded(v, &rounding))
                {
                    unrounded += 1;
                }
            }
        }
        if unrounded == 0 {
            return;
        }
        let how = match rounding.method {
            RoundingMethod::Nearest => format!("nearest {}", rounding.base),
            RoundingMethod::Midpoint => format!("midpoint {}", rounding.base),
            RoundingMethod::None => "none".into(),
        };
        self.table_finding("rounding", true, format!(
            "{unrounded} published counts are not rounded as the rules require ({how}); --apply rounds them after suppression"
        ));
    }

    /// One magnitude column: threshold and dominance primaries, pattern and audit (sums), or
    /// the count's pattern (means).
    fn magnitude_column(&mut self, mi: usize) {
        let name = self.t.magnitudes[mi].name.clone();
        let additive = self.t.mag_additive[mi];
        let (mut layer, _) = Layer::from_rows(&self.grid, &self.t.magnitudes[mi].values);
        if additive {
            suppress::complete(
                &self.grid,
                &mut layer,
                self.rules.suppression.assume_totals_known,
            );
        }
        self.dominance_note(mi);
        if additive && let Err(e) = self.structural_zeros(&mut layer, &name) {
            self.table_finding("structural-zero", true, e.to_string());
        }
        let mut protections = self.magnitude_primaries(mi, &name, &mut layer);
        if additive {
            self.cap_to_a_priori(&name, &layer, &mut protections);
        }
        if additive {
            let unit = Self::magnitude_unit(&layer);
            self.secure(&name, &mut layer, &protections, unit, false);
        } else if let Some(states) = &self.count_state {
            for (c, s) in states.iter().enumerate() {
                if s.unknown() && layer.state[c] == State::Published {
                    layer.state[c] = State::Secondary;
                }
            }
        }
        let mut values = vec![None; self.t.nrows];
        let mut status = vec![CellStatus::Hidden; self.t.nrows];
        for r in 0..self.t.nrows {
            let cell = self.grid.cell_of_row[r];
            if layer.state[cell] == State::Published
                || (layer.state[cell] == State::Known && layer.value[cell] == 0.0)
            {
                values[r] = Some(layer.value[cell]);
                status[r] = CellStatus::Published;
            }
        }
        self.status.insert(name.clone(), status);
        self.plan.values.push(PlannedColumn {
            name,
            is_count: false,
            values,
            original: None,
        });
    }

    /// One allowed MIN/MAX column: a single person's value, so it is published only where
    /// the group's count (the first count column) is published after suppression, and
    /// hidden wherever that count is hidden (primary or complement).
    fn order_stat_column(&mut self, oi: usize) {
        let (name, arr) = self.t.order_stats[oi].clone();
        let published: Vec<bool> = (0..self.t.nrows)
            .map(|r| {
                let cell = self.grid.cell_of_row[r];
                self.count_state
                    .as_ref()
                    .is_some_and(|s| s[cell] == State::Published)
            })
            .collect();
        let status = published
            .iter()
            .map(|p| {
                if *p {
                    CellStatus::Published
                } else {
                    CellStatus::Hidden
                }
            })
            .collect();
        self.status.insert(name.clone(), status);
        self.plan.values.push(PlannedColumn {
            name,
            is_count: false,
            values: vec![None; self.t.nrows],
            original: Some((arr, published)),
        });
    }

    fn dominance_note(&mut self, mi: usize) {
        let needed = self.rules.contributors_needed();
        let have = self.t.contributors[mi].len();
        if needed > 0 && have < needed {
            let name = self.t.magnitudes[mi].name.clone();
            self.table_finding("dominance-unchecked", true, format!(
                "the rules have dominance tests needing the {needed} largest contributions per cell, but {name:?} has {have}; add columns {name}_top1..{name}_top{needed} (or --contributors)"
            ));
        }
    }

    /// Cells of a magnitude hidden with a small count or failing a dominance rule.
    fn magnitude_primaries(&mut self, mi: usize, name: &str, layer: &mut Layer) -> Vec<Protection> {
        let needed = self.rules.contributors_needed();
        let dominance_on = needed > 0 && self.t.contributors[mi].len() >= needed;
        let additive = self.t.mag_additive[mi];
        let unit = Self::magnitude_unit(layer);
        let mut out = Vec::new();
        for r in 0..self.t.nrows {
            let cell = self.grid.cell_of_row[r];
            if layer.state[cell] != State::Published {
                continue;
            }
            let v = layer.value[cell];
            if v < 0.0 {
                self.finding(Rule::Negative, name, cell, Some(v), Action::Review, "a negative magnitude: dominance rules assume non-negative contributions; review by hand".into());
            }
            let n = self
                .t
                .counts
                .first()
                .and_then(|c| c.values[r])
                .unwrap_or(0.0);
            let mut need: Option<f64> = None;
            if self.count_primary.as_ref().is_some_and(|p| p[cell]) {
                let t = self.rules.suppression.min_count;
                self.finding(
                    Rule::Threshold,
                    name,
                    cell,
                    Some(v),
                    Action::Suppress,
                    format!("based on {n} contributors, below the threshold {t}"),
                );
                need = Some(self.magnitude_safety(v, unit));
            }
            let holders = self.t.holders[mi].as_ref().and_then(|h| h.values[r]);
            if let Some(h) =
                holders.filter(|h| need.is_none() && *h < self.rules.suppression.min_count as f64)
            {
                let t = self.rules.suppression.min_count;
                self.finding(
                    Rule::Threshold,
                    name,
                    cell,
                    Some(v),
                    Action::Suppress,
                    format!("{h} contributors give it a non-zero value, below the threshold {t}"),
                );
                need = Some(self.magnitude_safety(v, unit));
            }
            if dominance_on {
                let top: Vec<f64> = self.t.contributors[mi]
                    .iter()
                    .map(|c| c.values[r].unwrap_or(0.0))
                    .collect();
                let total = if additive { v } else { v * n };
                let zd = self.rules.suppression.zeros_disclosive;
                let fails = dominance::check_cell(total, n, &top, &self.rules.dominance, zd);
                if !fails.is_empty() {
                    let p = dominance::protection(total, &top, &self.rules.dominance);
                    need = Some(need.unwrap_or(0.0).max(p));
                }
                for f in fails {
                    let rule = if f.rule == "p-ratio" {
                        Rule::PRatio
                    } else {
                        Rule::NkRule
                    };
                    self.finding(rule, name, cell, Some(v), Action::Suppress, f.reason);
                }
            }
            if let Some(p) = need {
                layer.state[cell] = State::Primary;
                out.push(Protection {
                    cell,
                    lpl: p,
                    upl: a_priori(&self.grid, layer, cell, p),
                });
            }
        }
        // A sum's totals the table leaves out are cells too: with a small count or failing
        // a dominance rule (its largest contributions merged from the cells under it), such
        // a total is not taken as known and is protected like a hidden cell.
        if additive && layer.totals_known {
            for cell in self.absent_totals() {
                let v = layer.value[cell];
                if v.is_nan() {
                    continue;
                }
                let n = self
                    .count_values
                    .as_ref()
                    .and_then(|c| c.get(cell).copied())
                    .unwrap_or(f64::NAN);
                let mut need: Option<f64> = None;
                if self.count_primary.as_ref().is_some_and(|p| p[cell]) {
                    let t = self.rules.suppression.min_count;
                    self.finding(Rule::Threshold, name, cell, Some(v), Action::Suppress, format!(
                        "a total the table leaves out, based on fewer than {t} contributors: not taken as known"
                    ));
                    need = Some(self.magnitude_safety(v, unit));
                }
                if dominance_on && !n.is_nan() {
                    let top = self.total_tops(mi, cell, needed);
                    let zd = self.rules.suppression.zeros_disclosive;
                    let fails = dominance::check_cell(v, n, &top, &self.rules.dominance, zd);
                    if !fails.is_empty() {
                        let p = dominance::protection(v, &top, &self.rules.dominance);
                        need = Some(need.unwrap_or(0.0).max(p).max(unit));
                    }
                    for f in fails {
                        let rule = if f.rule == "p-ratio" {
                            Rule::PRatio
                        } else {
                            Rule::NkRule
                        };
                        let reason = format!("a total the table leaves out: {}", f.reason);
                        self.finding(rule, name, cell, Some(v), Action::Suppress, reason);
                    }
                }
                if let Some(p) = need {
                    layer.state[cell] = State::Primary;
                    out.push(Protection {
                        cell,
                        lpl: p,
                        upl: a_priori(&self.grid, layer, cell, p),
                    });
                }
            }
        }
        out
    }

    /// The protection a magnitude hidden with its small count needs on each side: the
    /// rules' p% (10% when they set none) of its value, so that a sum hidden with its count
    /// can never be worked out from the totals (issue 22 point 8); at least the column's unit.
    fn magnitude_safety(&self, v: f64, unit: f64) -> f64 {
        let p = self.rules.sum_protection();
        (p * v.abs()).max(unit)
    }

    /// The smallest move a hidden magnitude must be able to make (complements, and hidden
    /// cells of unknown value on a re-check): one unit of the measure, or the smallest
    /// non-zero magnitude of the column when its values are fractions. Never zero: a hidden
    /// sum of width 0 is a published sum.
    fn magnitude_unit(layer: &Layer) -> f64 {
        let smallest = layer
            .value
            .iter()
            .filter(|v| v.is_finite() && **v > 0.0)
            .fold(f64::INFINITY, |a, b| a.min(*b));
        if smallest.is_finite() {
            smallest.min(1.0)
        } else {
            1.0
        }
    }

    /// The attacker model and the method, for the report.
    fn describe(&mut self) {
        let s = &self.rules.suppression;
        self.method.push(format!(
            "Primary suppression: counts below {} are suppressed{}; magnitude cells are suppressed with their count and when they fail a dominance rule.",
            s.min_count,
            if s.zeros_disclosive { ", and zeros" } else { "; zeros are published" }
        ));
        if s.secondary {
            self.method.push(format!(
                "Secondary suppression: on tables of at most 100 grid cells, an integer programme (fewest cells hidden, then least value) in which every primary must be able to move by its protection in both directions along a table of hidden cells that keeps every line total; on larger tables (or if it finds nothing) the hypercube method: for each primary cell, the cheapest box of cells (two categories per dimension) that lets it move by its protection in both directions while every line keeps its total; zeros and cells the reader knows are never complements. Each small count needs its attacker interval to cover [x - {0}, x + {0}] (the safety range; clamped at 0 below and, above, at the known total of each of its lines, which no cell can exceed a priori); a dominated magnitude needs p% of its largest contribution (p% rule) or what its (n,k) rule implies. Cells still short get another box, then a line-and-cycle heuristic, then are reported unprotected.",
                self.safety()
            ));
            self.method.push("Stricter than ACRO: ACRO flags cells by threshold, p-ratio and nk-rule but leaves secondary suppression to the output checker; the cells marked `secondary` here are ones ACRO would not flag.".to_string());
        }
        if self.rules.rounding.method != RoundingMethod::None {
            self.method.push("Rounding: applied after suppression to every published count (whatever its column type), totals included, each from its own true value.".to_string());
        }
        if !self.t.derived.is_empty() {
            self.method.push("Derived statistics: percentages and ratios are recomputed from the published (suppressed, rounded) counts, and hidden where either is hidden; means are hidden wherever their count is hidden.".to_string());
        }
    }

    fn finish(self) -> Report {
        let mut summary: BTreeMap<String, usize> = BTreeMap::new();
        for f in &self.findings {
            *summary.entry(f.rule.as_str().to_string()).or_default() += 1;
        }
        let verdict = if self.blocked {
            Verdict::Blocked
        } else if self.findings.is_empty() && self.table_findings.iter().all(|f| !f.fails) {
            Verdict::Releasable
        } else {
            Verdict::NotReleasable
        };
        Report {
            verdict,
            rules: self.rules.clone(),
            roles: self.t.roles.clone(),
            rows: self.t.nrows,
            summary,
            findings: self.findings,
            table_findings: self.table_findings,
            cell_status: self.status,
            loss: self.loss,
            attacker_model: attacker_model(self.rules),
            method: self.method,
            plan: self.plan,
        }
    }
}

/// What the attacker is assumed to know, and what the check guarantees.
pub(super) fn attacker_model(rules: &Rules) -> Vec<String> {
    let s = &rules.suppression;
    vec![
        format!(
            "The attacker knows the table's structure (its categories, and that every row, column and total line adds up), that counts and sums are not negative, every published cell (a rounded cell as the interval its rounding allows), the rules used (structural zeros included), and the true totals{}.",
            if s.assume_totals_known { " that pass the rules, even those the table does not include (a total that fails them is never published under these rules: it is a hidden cell with its own need)" } else { " the table includes (as published, rounded like every count)" }
        ),
        "The attacker does not learn from the safe table why a cell is hidden: every hidden cell is the same empty value; the reasons are only in this private report.".to_string(),
        format!(
            "Guaranteed before anything is written: for every hidden cell, the smallest and largest values the attacker can prove (by linear programming over those facts) are at least as far apart as the rules require: a small count x anywhere in [max(0, x - {0}), x + {0}], a sum hidden with its count within p% of its value (10% unless the rules set p), a dominated magnitude within the protection its dominance rule implies, any other hidden cell (count or sum) not exactly recoverable; each need cut to what the known totals alone allow a priori (reduced protection, noted). A published rounded count the attacker pins through its band is reported too. A cell the audit cannot prove protected blocks release and --apply.",
            s.safety_range.unwrap_or(s.min_count)
        ),
        "Not covered by this check alone: earlier releases (the TRE's release path audits a new release jointly with every earlier release over the same rows, and refuses it if together they pin or narrow a hidden cell, or if it differs from one by a filter isolating fewer than the threshold), and knowledge outside the releases (an attacker who knows some patients' values).".to_string(),
    ]
}

/// Margins in the table must equal the sum of their cells (within rounding, if the table
/// looks rounded already).
fn check_margins(
    grid: &Grid,
    layer: &Layer,
    column: &str,
    rounding: &super::Rounding,
) -> Result<(), DisclosureError> {
    for (members, total) in &grid.lines {
        let t = *total as usize;
        let Some(trow) = grid.row_of[t] else { continue };
        if layer.state[t] != State::Published {
            continue;
        }
        let mut sum = 0.0;
        let mut all_rounded = round::is_rounded(layer.value[t], rounding);
        let mut complete = true;
        for m in members.iter().map(|m| *m as usize) {
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

/// Whether a dimension value looks like an NHS number or a pseudonym (or a piece of one).
/// The upper protection a hidden cell can have at all: never more than the known totals
/// of its lines allow a priori (a cell can never exceed a known line total, so asking
/// for more would make every pattern fail; issue 22 point 5).
pub(super) fn a_priori(grid: &Grid, layer: &Layer, cell: usize, upl: f64) -> f64 {
    if !layer.totals_known {
        return upl;
    }
    let x = layer.value[cell];
    let cap = grid.lines_of[cell]
        .iter()
        .map(|l| grid.lines[*l as usize].1 as usize)
        .filter(|t| *t != cell && !layer.value[*t].is_nan() && layer.known_total(grid, *t))
        .map(|t| (layer.value[t] - x).max(0.0))
        .fold(upl, f64::min);
    // A zero in a line whose known total is zero cannot move at all: it keeps the full
    // need, so it is reported unprotected rather than passed as "protected" with width 0.
    if cap <= 0.0 && x <= 0.0 { upl } else { cap }
}

fn looks_like_identifier_value(v: &str) -> bool {
    let mut run = 0usize;
    let mut longest = 0usize;
    for b in v.bytes() {
        run = if b.is_ascii_hexdigit() { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let hex = longest >= 16 && v.bytes().any(|b| b.is_ascii_alphabetic());
    let digits: String = v
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect();
    let nhs = digits.len() == 10 && digits.bytes().all(|b| b.is_ascii_digit()) && v.len() <= 12;
    hex || nhs
}
