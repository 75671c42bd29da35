//! Joint audit of a new table with earlier releases over the same population.
//!
//! Two tables over the same patients are one system of equations to an attacker: a cell
//! hidden in each may be recoverable from both together, and two tables that differ only by
//! a filter reveal the few patients the filter removed by subtraction. [`audit_with_earlier`]
//! lays every table's cells over one fine grid (the union of their dimensions; a table's
//! cell is the sum of the fine cells that match its key, its total label matching anything)
//! and runs the LP attacker on all of them at once: every published cell fixed (or within
//! its rounding interval), every count non-negative; each hidden cell, earlier or new, must
//! keep the interval it needs. [`differs_by_small_filter`] catches the subtraction. Which
//! earlier releases share a population is decided elsewhere (the lineage ledger); this
//! module only audits the tables it is given, and never writes them.

use std::collections::{BTreeMap, HashMap};

use microlp::{ComparisonOp, OptimizationDirection, Problem, Variable};
use serde::{Deserialize, Serialize};

/// Largest fine grid audited jointly (cells).
pub const JOINT_LIMIT: usize = 20_000;

/// What a reader of a released table knows about one cell.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Released {
    /// Published exactly.
    Exact {
        /// The value.
        value: f64,
    },
    /// Published rounded: the true value is in `[lo, hi]`.
    Interval {
        /// Lowest possible true value.
        lo: f64,
        /// Highest possible true value.
        hi: f64,
    },
    /// Hidden; its attacker interval must reach `need_lo` and `need_hi` (private: the
    /// ledger that stores this stays inside the TRE).
    Hidden {
        /// How low its interval must reach.
        need_lo: f64,
        /// How high its interval must reach.
        need_hi: f64,
    },
}

/// One cell of a released table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleasedCell {
    /// Dimension values in the table's dimension order; the total label for a margin.
    pub key: Vec<String>,
    /// What was released.
    pub value: Released,
}

/// A released count column with everything the joint audit needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleasedTable {
    /// Release id (or the job id for a new table).
    pub id: String,
    /// The count column.
    pub column: String,
    /// Dimension names.
    pub dims: Vec<String>,
    /// The label that marks a total.
    pub total_label: String,
    /// Every cell, margins included (totals the rules take as known are `Exact`).
    pub cells: Vec<ReleasedCell>,
}

/// A cell the joint audit finds under-protected.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JointFinding {
    /// The release (or new table) the cell belongs to.
    pub table: String,
    /// The cell's key.
    pub key: Vec<String>,
    /// What the attacker gets from all the tables together.
    pub got: (f64, f64),
    /// What it needs.
    pub need: (f64, f64),
    /// Why, naming the earlier releases audited with it.
    pub reason: String,
}

/// Errors of the joint audit.
#[derive(Debug, thiserror::Error)]
pub enum JointError {
    /// The fine grid is too large to audit as one LP.
    #[error(
        "the tables span {cells} fine cells together, more than {JOINT_LIMIT}; audit them in smaller groups or coarsen the categories"
    )]
    TooLarge {
        /// Fine cells needed.
        cells: usize,
    },
    /// A key's length does not match its table's dimensions.
    #[error("release {table}: a cell has {got} key values for {want} dimensions")]
    BadKey {
        /// The release id.
        table: String,
        /// Key values found.
        got: usize,
        /// Dimensions.
        want: usize,
    },
    /// The tables contradict each other (not the same population).
    #[error(
        "the tables cannot all be true of one population (their published cells contradict each other); are they really over the same population?"
    )]
    Inconsistent,
}

impl crate::error::Classify for JointError {
    fn kind(&self) -> crate::error::ErrorKind {
        match self {
            JointError::TooLarge { .. } | JointError::BadKey { .. } => {
                crate::error::ErrorKind::Failed
            }
            JointError::Inconsistent => crate::error::ErrorKind::Refused,
        }
    }
}

/// The union grid: dimensions and their categories.
struct Fine {
    dims: Vec<String>,
    cats: Vec<Vec<String>>,
}

impl Fine {
    fn build(tables: &[&ReleasedTable]) -> Result<Fine, JointError> {
        let mut cats: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for t in tables {
            for c in &t.cells {
                if c.key.len() != t.dims.len() {
                    return Err(JointError::BadKey {
                        table: t.id.clone(),
                        got: c.key.len(),
                        want: t.dims.len(),
                    });
                }
                for (d, v) in t.dims.iter().zip(&c.key) {
                    let e = cats.entry(d.clone()).or_default();
                    if v != &t.total_label && !e.contains(v) {
                        e.push(v.clone());
                    }
                }
            }
        }
        let size = cats
            .values()
            .map(|c| c.len().max(1))
            .try_fold(1usize, |a, n| a.checked_mul(n));
        match size {
            Some(s) if s <= JOINT_LIMIT => {}
            s => {
                return Err(JointError::TooLarge {
                    cells: s.unwrap_or(usize::MAX),
                });
            }
        }
        Ok(Fine {
            dims: cats.keys().cloned().collect(),
            cats: cats.into_values().collect(),
        })
    }

    fn size(&self) -> usize {
        self.cats.iter().map(|c| c.len().max(1)).product()
    }

    /// The fine cells a table cell sums.
    fn members(&self, t: &ReleasedTable, key: &[String]) -> Vec<usize> {
        let want: HashMap<&str, &str> = t
            .dims
            .iter()
            .zip(key)
            .filter(|(_, v)| **v != t.total_label)
            .map(|(d, v)| (d.as_str(), v.as_str()))
            .collect();
        (0..self.size())
            .filter(|f| {
                let mut rest = *f;
                let mut ok = true;
                for d in (0..self.dims.len()).rev() {
                    let n = self.cats[d].len().max(1);
                    let i = rest % n;
                    rest /= n;
                    if let Some(v) = want.get(self.dims[d].as_str()) {
                        ok &= self.cats[d].get(i).is_some_and(|c| c == v);
                    }
                }
                ok
            })
            .collect()
    }
}

/// Audit a new table jointly with earlier releases over the same population: every hidden
/// cell of any of them that the tables together pin exactly, or narrow below what it needs.
pub fn audit_with_earlier(
    new: &ReleasedTable,
    earlier: &[ReleasedTable],
) -> Result<Vec<JointFinding>, JointError> {
    let tables: Vec<&ReleasedTable> = std::iter::once(new).chain(earlier.iter()).collect();
    let fine = Fine::build(&tables)?;
    let mut sums: Vec<(usize, usize, Vec<usize>)> = Vec::new();
    for (ti, t) in tables.iter().enumerate() {
        for (ci, c) in t.cells.iter().enumerate() {
            sums.push((ti, ci, fine.members(t, &c.key)));
        }
    }
    let names: Vec<&str> = earlier.iter().map(|t| t.id.as_str()).collect();
    let mut out = Vec::new();
    for (ti, ci, members) in &sums {
        let cell = &tables[*ti].cells[*ci];
        let Released::Hidden { need_lo, need_hi } = cell.value else {
            continue;
        };
        let lo = solve(
            &fine,
            &tables,
            &sums,
            members,
            OptimizationDirection::Minimize,
        )?;
        let hi = solve(
            &fine,
            &tables,
            &sums,
            members,
            OptimizationDirection::Maximize,
        )?;
        let short = lo > need_lo + 1e-6 || hi < need_hi - 1e-6 || hi - lo < 1e-6;
        if short {
            out.push(JointFinding {
                table: tables[*ti].id.clone(),
                key: cell.key.clone(),
                got: (lo, hi),
                need: (need_lo, need_hi),
                reason: format!(
                    "{} this hidden cell is {} ([{lo}, {hi}], needs [{need_lo}, {need_hi}])",
                    if names.is_empty() {
                        "on its own,".to_string()
                    } else {
                        format!("together with the earlier releases {},", names.join(", "))
                    },
                    if hi - lo < 1e-6 {
                        "exactly recoverable"
                    } else {
                        "narrowed below its protection interval"
                    }
                ),
            });
        }
    }
    Ok(out)
}

/// Minimise or maximise the sum of `target` fine cells subject to every table's cells.
fn solve(
    fine: &Fine,
    tables: &[&ReleasedTable],
    sums: &[(usize, usize, Vec<usize>)],
    target: &[usize],
    dir: OptimizationDirection,
) -> Result<f64, JointError> {
    let mut p = Problem::new(dir);
    let vars: Vec<Variable> = (0..fine.size())
        .map(|f| {
            p.add_var(
                if target.contains(&f) { 1.0 } else { 0.0 },
                (0.0, f64::INFINITY),
            )
        })
        .collect();
    for (ti, ci, members) in sums {
        let e: Vec<(Variable, f64)> = members.iter().map(|m| (vars[*m], 1.0)).collect();
        match tables[*ti].cells[*ci].value {
            Released::Exact { value } => p.add_constraint(e.as_slice(), ComparisonOp::Eq, value),
            Released::Interval { lo, hi } => {
                p.add_constraint(e.as_slice(), ComparisonOp::Ge, lo);
                p.add_constraint(e.as_slice(), ComparisonOp::Le, hi);
            }
            Released::Hidden { .. } => {}
        }
    }
    match p.solve() {
        Ok(out) => out
            .into_solution()
            .ok()
            .map(|s| s.objective())
            .ok_or(JointError::Inconsistent),
        Err(microlp::Error::Unbounded) => Ok(match dir {
            OptimizationDirection::Maximize => f64::INFINITY,
            OptimizationDirection::Minimize => 0.0,
        }),
        Err(_) => Err(JointError::Inconsistent),
    }
}

/// Whether two tables over the same keys differ by a filter that isolates fewer than
/// `threshold` people: every published count of one is at least the other's, and the
/// difference in total is between 1 and `threshold - 1`.
pub fn differs_by_small_filter(
    a: &ReleasedTable,
    b: &ReleasedTable,
    threshold: u64,
) -> Option<JointFinding> {
    if a.dims != b.dims {
        return None;
    }
    let exact = |t: &ReleasedTable| -> BTreeMap<Vec<String>, f64> {
        t.cells
            .iter()
            .filter_map(|c| match c.value {
                Released::Exact { value } => Some((c.key.clone(), value)),
                _ => None,
            })
            .collect()
    };
    let (ea, eb) = (exact(a), exact(b));
    let keys: Vec<&Vec<String>> = ea.keys().filter(|k| eb.contains_key(*k)).collect();
    if keys.is_empty() {
        return None;
    }
    let diffs: Vec<f64> = keys.iter().map(|k| ea[*k] - eb[*k]).collect();
    let all_ge = diffs.iter().all(|d| *d >= 0.0);
    let all_le = diffs.iter().all(|d| *d <= 0.0);
    let grand: Vec<String> = vec![a.total_label.clone(); a.dims.len()];
    let total = match (ea.get(&grand), eb.get(&grand)) {
        (Some(x), Some(y)) => (x - y).abs(),
        _ => keys
            .iter()
            .filter(|k| !k.contains(&a.total_label))
            .map(|k| (ea[*k] - eb[*k]).abs())
            .sum(),
    };
    ((all_ge || all_le) && total >= 1.0 && total < threshold as f64).then(|| JointFinding {
        table: a.id.clone(),
        key: grand.clone(),
        got: (total, total),
        need: (threshold as f64, threshold as f64),
        reason: format!(
            "differs from release {} only by {total} people in total (fewer than {threshold}): subtracting one from the other reveals them",
            b.id
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(id: &str, cells: &[(&str, Released)]) -> ReleasedTable {
        ReleasedTable {
            id: id.into(),
            column: "n".into(),
            dims: vec!["a".into()],
            total_label: "Total".into(),
            cells: cells
                .iter()
                .map(|(k, v)| ReleasedCell {
                    key: vec![k.to_string()],
                    value: *v,
                })
                .collect(),
        }
    }
    fn ex(v: f64) -> Released {
        Released::Exact { value: v }
    }
    fn hid(lo: f64, hi: f64) -> Released {
        Released::Hidden {
            need_lo: lo,
            need_hi: hi,
        }
    }

    #[test]
    fn two_safe_tables_together_pin_a_cell() {
        // Earlier: r0, r1 hidden (3 and 20), r2 = 40, total 63. New: r1 published = 20.
        let earlier = t(
            "rel-1",
            &[
                ("r0", hid(0.0, 13.0)),
                ("r1", hid(10.0, 23.0)),
                ("r2", ex(40.0)),
                ("Total", ex(63.0)),
            ],
        );
        let new = t(
            "job-2",
            &[
                ("r0", hid(0.0, 13.0)),
                ("r1", ex(20.0)),
                ("r2", ex(40.0)),
                ("Total", ex(63.0)),
            ],
        );
        let f = audit_with_earlier(&new, std::slice::from_ref(&earlier)).expect("audit");
        assert!(
            f.iter()
                .any(|f| f.key == vec!["r0".to_string()] && f.got.1 - f.got.0 < 1e-6),
            "{f:?}"
        );
        // Alone, the earlier table keeps r0 in [0, 23].
        let alone = audit_with_earlier(&earlier, &[]).expect("audit");
        assert!(alone.is_empty(), "{alone:?}");
    }

    #[test]
    fn a_filter_removing_one_patient_is_caught() {
        let a = t(
            "rel-1",
            &[("r0", ex(20.0)), ("r1", ex(40.0)), ("Total", ex(60.0))],
        );
        let b = t(
            "job-2",
            &[("r0", ex(19.0)), ("r1", ex(40.0)), ("Total", ex(59.0))],
        );
        assert!(differs_by_small_filter(&b, &a, 10).is_some());
        let c = t(
            "job-3",
            &[("r0", ex(5.0)), ("r1", ex(40.0)), ("Total", ex(45.0))],
        );
        assert!(differs_by_small_filter(&c, &a, 10).is_none());
    }

    #[test]
    fn released_tables_round_trip_as_json() {
        let a = t("rel-1", &[("r0", hid(0.0, 13.0)), ("Total", ex(60.0))]);
        let s = serde_json::to_string(&a).expect("json");
        let b: ReleasedTable = serde_json::from_str(&s).expect("parse");
        assert_eq!(a, b);
    }
}
