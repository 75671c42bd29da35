//! Derived statistics: percentages and ratios recomputed from the published counts.
//!
//! A percentage beside suppressed or rounded counts solves back to them (n = pct × total),
//! so `apply` never publishes one as it came: it is recomputed from the published
//! (suppressed, rounded) values of its numerator and denominator, and hidden where either is
//! hidden. With the formula given (from the query plan) those are named columns; for a file,
//! the checker tries the first count over each line total and over the grand total, at scale
//! 1 and 100, and takes the one that reproduces every input value; when none does, the
//! column is left empty and the report says so. This module publishes nothing itself.

use super::passes::Checker;
use super::suppress::State;
use super::{Action, CellStatus, PlannedColumn, Rule, round};

/// How a derived column is computed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Formula {
    /// `scale * plan[num] / plan[den]`, by output column index.
    Columns(usize, usize, f64),
    /// `scale * count / total`, the total along dimension `Some(d)` or the grand total.
    Share(Option<usize>, f64),
}

impl Checker<'_> {
    /// One derived column: find its formula, recompute it from what is published.
    pub(super) fn derived_column(&mut self, di: usize) {
        let d = self.t.derived[di].clone();
        let name = d.spec.column.clone();
        let formula = self.formula(&d.spec.numerator, &d.spec.denominator, &d.values);
        let Some(formula) = formula else {
            self.table_finding_pub("derived", true, format!(
                "{name:?} looks like a percentage or ratio, but no formula over the table's counts reproduces it; it would solve back to hidden or rounded counts, so --apply leaves it empty (give its numerator and denominator, or drop it)"
            ));
            self.plan_derived(&name, vec![None; self.t.nrows]);
            return;
        };
        let mut out = vec![None; self.t.nrows];
        for (r, slot) in out.iter_mut().enumerate() {
            let (num, den) = self.published_pair(formula, r);
            *slot = match (num, den) {
                (Some(n), Some(d)) if d != 0.0 => Some(scale(formula) * n / d),
                _ => None,
            };
            let input = d.values[r];
            let differs = match (input, *slot) {
                (Some(a), Some(b)) => (a - b).abs() > tol(scale(formula)),
                (Some(_), None) => true,
                _ => false,
            };
            if differs {
                let cell = self.grid.cell_of_row[r];
                self.finding(Rule::Derived, &name, cell, input, Action::Recompute,
                    "differs from its value recomputed from the published counts: as it is, it would reveal hidden or rounded counts".into());
            }
        }
        self.plan_derived(&name, out);
    }

    fn plan_derived(&mut self, name: &str, values: Vec<Option<f64>>) {
        let status = values
            .iter()
            .map(|v| {
                if v.is_some() {
                    CellStatus::Recomputed
                } else {
                    CellStatus::Hidden
                }
            })
            .collect();
        self.status.insert(name.to_string(), status);
        self.plan.values.push(PlannedColumn {
            name: name.to_string(),
            is_count: false,
            values,
            original: None,
        });
    }

    /// The formula: given columns (scale detected) or the first share that fits.
    fn formula(
        &self,
        num: &Option<String>,
        den: &Option<String>,
        values: &[Option<f64>],
    ) -> Option<Formula> {
        if let (Some(n), Some(d)) = (num, den) {
            let ni = self.plan.values.iter().position(|c| &c.name == n)?;
            let di = self.plan.values.iter().position(|c| &c.name == d)?;
            for s in [100.0, 1.0] {
                let f = Formula::Columns(ni, di, s);
                if self.fits(f, values) {
                    return Some(f);
                }
            }
            return Some(Formula::Columns(ni, di, 1.0));
        }
        self.count_values.as_ref()?;
        let mut dims: Vec<Option<usize>> = (0..self.grid.radix.len()).rev().map(Some).collect();
        dims.push(None);
        for d in dims {
            for s in [100.0, 1.0] {
                if self.fits(Formula::Share(d, s), values) {
                    return Some(Formula::Share(d, s));
                }
            }
        }
        None
    }

    /// Whether a formula over the true values reproduces every input value.
    fn fits(&self, f: Formula, values: &[Option<f64>]) -> bool {
        let mut any = false;
        for (r, v) in values.iter().enumerate() {
            let Some(v) = v else { continue };
            let (n, d) = self.true_pair(f, r);
            match (n, d) {
                (Some(n), Some(d)) if d != 0.0 => {
                    if (v - scale(f) * n / d).abs() > tol(scale(f)) {
                        return false;
                    }
                    any = true;
                }
                _ => return false,
            }
        }
        any
    }

    fn true_pair(&self, f: Formula, r: usize) -> (Option<f64>, Option<f64>) {
        match f {
            Formula::Columns(ni, di, _) => {
                let col = |i: usize| -> Option<f64> {
                    let name = &self.plan.values.get(i)?.name;
                    self.t
                        .counts
                        .iter()
                        .chain(self.t.magnitudes.iter())
                        .find(|c| &c.name == name)?
                        .values[r]
                };
                (col(ni), col(di))
            }
            Formula::Share(d, _) => {
                let vals = self.count_values.as_ref();
                let cell = self.grid.cell_of_row[r];
                let total = self.total_cell(cell, d);
                (
                    vals.map(|v| v[cell]),
                    vals.map(|v| v[total]).filter(|x| !x.is_nan()),
                )
            }
        }
    }

    fn published_pair(&self, f: Formula, r: usize) -> (Option<f64>, Option<f64>) {
        match f {
            Formula::Columns(ni, di, _) => (
                self.plan.values.get(ni).and_then(|c| c.values[r]),
                self.plan.values.get(di).and_then(|c| c.values[r]),
            ),
            Formula::Share(d, _) => {
                let count = self.plan.values.first();
                let cell = self.grid.cell_of_row[r];
                let total = self.total_cell(cell, d);
                let den = match self.grid.row_of[total] {
                    Some(tr) => count.and_then(|c| c.values[tr as usize]),
                    None => self.known_total(total),
                };
                (count.and_then(|c| c.values[r]), den)
            }
        }
    }

    /// A total the table does not include: known (rounded as published counts are) when
    /// the rules take totals as known, else unknown.
    fn known_total(&self, total: usize) -> Option<f64> {
        let state = self.count_state.as_ref()?[total];
        let v = self.count_values.as_ref()?[total];
        (state == State::Known && !v.is_nan()).then(|| round::round_count(v, &self.rules.rounding))
    }

    /// The total cell of `cell` along dimension `d` (all dimensions for `None`).
    fn total_cell(&self, cell: usize, d: Option<usize>) -> usize {
        let k = self.grid.radix.len();
        let mut c = cell;
        for dim in 0..k {
            if d.is_none_or(|d| d == dim) {
                c = super::attack::with_coord(&self.grid, c, dim, self.grid.radix[dim] - 1);
            }
        }
        c
    }
}

fn scale(f: Formula) -> f64 {
    match f {
        Formula::Columns(_, _, s) | Formula::Share(_, s) => s,
    }
}

/// Tolerance for a value rounded to one decimal place (of a percentage) or three (of a
/// proportion).
fn tol(scale: f64) -> f64 {
    0.051 * scale / 100.0 + 1e-9
}
