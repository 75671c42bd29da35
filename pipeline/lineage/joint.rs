//! The joint LP audit on the release path: a new release against every earlier release
//! over the same population.
//!
//! Turns ledger cells (what each release published, and the true counts kept privately)
//! into the tables [`crate::disclosure::joint::audit_with_earlier`] audits: a published
//! count is exact, or the interval its rounding stands for; a hidden count needs its
//! protection interval (`[x - safety, x + safety]`, clamped at 0) when it is small under the
//! rules, and otherwise only not to be exactly recoverable; when the rules take totals as
//! known, every margin is added as an exact cell (the attacker knows the true totals). It
//! also pairs each new table with the earlier releases' count columns and audits them at
//! once, and says which earlier releases were involved. A cell the earlier releases already
//! expose without the new one's published cells does not block it (it is not what reveals
//! it). Sits between the release gate
//! (`gate`) and the disclosure module; it never writes anything, and its findings name
//! releases, columns and group labels, never a value.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::disclosure::Rules;
use crate::disclosure::joint::{
    JointError, JointFinding, Released, ReleasedCell, ReleasedTable, audit_with_earlier,
};
use crate::disclosure::rules::RoundingMethod;

use super::ledger::{LedgerCell, LedgerEntry, Published};

/// The label joint tables use for a margin (never a real category: it has a NUL).
const TOTAL: &str = "\u{0}total";

/// Why the joint audit refuses a new release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JointBlock {
    /// A hidden cell (new or earlier) the releases together pin or narrow.
    Narrowed {
        /// The releases audited with the new one.
        earlier: Vec<String>,
        /// The cell's release (`this release` for the new one).
        table: String,
        /// The count column.
        column: String,
        /// The cell's group labels.
        key: Vec<String>,
        /// Whether it is exactly recoverable (else narrowed below its interval).
        exact: bool,
    },
    /// A recorded release's cells do not match its group keys: refused (fail closed).
    Unauditable {
        /// The releases audited with the new one.
        earlier: Vec<String>,
    },
    /// The releases together are too large to audit as one LP: refused (fail closed).
    TooLarge {
        /// The releases audited with the new one.
        earlier: Vec<String>,
        /// Fine cells the audit would need.
        cells: usize,
    },
}

impl std::fmt::Display for JointBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JointBlock::Narrowed {
                earlier,
                table,
                column,
                key,
                exact,
            } => write!(
                f,
                "audited jointly with earlier release(s) {} over the same population, the hidden cell [{}] of {column:?} in {table} is {}; hide more cells or combine categories so the releases together do not reveal it",
                earlier.join(", "),
                key.join(", "),
                if *exact {
                    "exactly recoverable"
                } else {
                    "narrowed below its protection interval"
                }
            ),
            JointBlock::Unauditable { earlier } => write!(
                f,
                "the release cannot be audited jointly with earlier release(s) {}: their recorded cells do not match their group keys; ask the operator to check the project's ledger",
                earlier.join(", ")
            ),
            JointBlock::TooLarge { earlier, cells } => write!(
                f,
                "the release cannot be audited jointly with earlier release(s) {} ({cells} cells together, too many for one audit); release coarser categories",
                earlier.join(", ")
            ),
        }
    }
}

/// What the joint tables need from the rules.
#[derive(Debug, Clone)]
pub struct JointRules {
    rules: Rules,
    safety: f64,
}

impl JointRules {
    /// From the project's output rules.
    pub fn new(rules: &Rules) -> Self {
        let s = &rules.suppression;
        JointRules {
            safety: s.safety_range.unwrap_or(s.min_count) as f64,
            rules: rules.clone(),
        }
    }
}

/// Audit a new release (its ledger cells and group-key names) jointly with the earlier
/// releases over the same population. Pairs that contradict each other are different
/// statistics (a count of events beside a count of patients) and are not audited together.
pub fn audit(
    cells: &[LedgerCell],
    dims: &[String],
    earlier: &[LedgerEntry],
    rules: &JointRules,
) -> Vec<JointBlock> {
    if earlier.is_empty() {
        return Vec::new();
    }
    let olds: Vec<ReleasedTable> = earlier
        .iter()
        .flat_map(|e| {
            let dims = if e.dims.is_empty() {
                &e.population.group_keys
            } else {
                &e.dims
            };
            tables(&e.release, &e.cells, dims, rules)
        })
        .collect();
    let mut out = Vec::new();
    for new in tables("this release", cells, dims, rules) {
        match revealed(&new, &olds) {
            Ok(b) => out.extend(b),
            Err(JointError::Inconsistent) => {
                for old in &olds {
                    out.extend(revealed(&new, std::slice::from_ref(old)).unwrap_or_default());
                }
            }
            Err(JointError::TooLarge { cells }) => out.push(JointBlock::TooLarge {
                earlier: names(&olds),
                cells,
            }),
            Err(JointError::BadKey { .. }) => out.push(JointBlock::Unauditable {
                earlier: names(&olds),
            }),
        }
    }
    out.dedup();
    out
}

/// What the new table reveals together with `olds`: the joint findings, less those the
/// earlier releases expose without it.
fn revealed(new: &ReleasedTable, olds: &[ReleasedTable]) -> Result<Vec<JointBlock>, JointError> {
    let found = audit_with_earlier(new, olds)?;
    if found.is_empty() {
        return Ok(Vec::new());
    }
    let already = exposed_without(new, olds);
    Ok(found
        .iter()
        .filter(|f| !already.contains(&(f.table.clone(), f.key.clone())))
        .map(|f| narrowed(f, olds, new))
        .collect())
}

/// Hidden cells (earlier or new) that the earlier releases already expose without what
/// the new one publishes (its published cells withheld, the totals the rules take as
/// known kept): the new release is not what reveals them, so they do not block it.
fn exposed_without(new: &ReleasedTable, olds: &[ReleasedTable]) -> Vec<(String, Vec<String>)> {
    let withheld = ReleasedTable {
        cells: new
            .cells
            .iter()
            .map(|c| match c.value {
                Released::Exact { .. } | Released::Interval { .. }
                    if !c.key.iter().any(|k| k == TOTAL) =>
                {
                    ReleasedCell {
                        key: c.key.clone(),
                        value: Released::Hidden {
                            need_lo: f64::INFINITY,
                            need_hi: f64::NEG_INFINITY,
                        },
                    }
                }
                _ => c.clone(),
            })
            .collect(),
        ..new.clone()
    };
    audit_with_earlier(&withheld, olds)
        .map(|f| f.into_iter().map(|f| (f.table, f.key)).collect())
        .unwrap_or_default()
}

fn names(tables: &[ReleasedTable]) -> Vec<String> {
    let mut v: Vec<String> = tables.iter().map(|t| t.id.clone()).collect();
    v.dedup();
    v
}

fn narrowed(f: &JointFinding, olds: &[ReleasedTable], new: &ReleasedTable) -> JointBlock {
    let column = std::iter::once(new)
        .chain(olds)
        .find(|t| t.id == f.table)
        .map(|t| t.column.clone())
        .unwrap_or_default();
    let new_id = new.id.as_str();
    JointBlock::Narrowed {
        earlier: names(olds),
        table: if f.table == new_id {
            "this release".into()
        } else {
            format!("release {}", f.table)
        },
        column,
        key: f
            .key
            .iter()
            .map(|k| {
                if k == TOTAL {
                    "Total".into()
                } else {
                    k.clone()
                }
            })
            .collect(),
        exact: f.got.1 - f.got.0 < 1e-6,
    }
}

/// One joint table per count column of a release.
pub fn tables(
    id: &str,
    cells: &[LedgerCell],
    dims: &[String],
    rules: &JointRules,
) -> Vec<ReleasedTable> {
    let mut by_column: BTreeMap<&str, Vec<&LedgerCell>> = BTreeMap::new();
    for c in cells
        .iter()
        .filter(|c| c.count && c.key.len() == dims.len())
    {
        by_column.entry(c.column.as_str()).or_default().push(c);
    }
    by_column
        .into_iter()
        .map(|(column, cs)| {
            let mut out: Vec<ReleasedCell> = cs.iter().map(|c| released(c, rules)).collect();
            if rules.rules.suppression.assume_totals_known {
                out.extend(margins(&cs, dims.len()));
            }
            ReleasedTable {
                id: id.to_string(),
                column: column.to_string(),
                dims: dims.to_vec(),
                total_label: TOTAL.to_string(),
                cells: out,
            }
        })
        .collect()
}

/// What a reader knows about one released cell.
fn released(c: &LedgerCell, rules: &JointRules) -> ReleasedCell {
    let r = &rules.rules.rounding;
    let b = r.base as f64;
    let value = match (&c.published, c.true_value) {
        (Published::Value { value }, _) => match r.method {
            RoundingMethod::None => Released::Exact { value: *value },
            RoundingMethod::Nearest => Released::Interval {
                lo: (value - b / 2.0).max(0.0),
                hi: value + b / 2.0,
            },
            RoundingMethod::Midpoint => Released::Interval {
                lo: (value - (b / 2.0).floor() + 1.0).max(0.0),
                hi: value + (b / 2.0).ceil(),
            },
        },
        (Published::Interval { lo, hi }, _) => Released::Interval { lo: *lo, hi: *hi },
        (Published::Hidden, Some(x)) if rules.rules.count_is_small(x) => Released::Hidden {
            need_lo: (x - rules.safety).max(0.0),
            need_hi: x + rules.safety,
        },
        // A complement (or a cell of unknown value) needs only not to be pinned.
        (Published::Hidden, _) => Released::Hidden {
            need_lo: f64::INFINITY,
            need_hi: f64::NEG_INFINITY,
        },
    };
    ReleasedCell {
        key: c.key.clone(),
        value,
    }
}

/// Every margin of a release's cells, from their true values (skipped where one is unknown).
fn margins(cells: &[&LedgerCell], k: usize) -> Vec<ReleasedCell> {
    let mut out = Vec::new();
    for mask in 1u32..(1u32 << k) {
        let mut sums: BTreeMap<Vec<String>, Option<f64>> = BTreeMap::new();
        for c in cells {
            let key: Vec<String> = (0..k)
                .map(|d| {
                    if mask & (1 << d) != 0 {
                        TOTAL.to_string()
                    } else {
                        c.key[d].clone()
                    }
                })
                .collect();
            let e = sums.entry(key).or_insert(Some(0.0));
            *e = e.zip(c.true_value).map(|(a, b)| a + b);
        }
        out.extend(sums.into_iter().filter_map(|(key, v)| {
            v.map(|value| ReleasedCell {
                key,
                value: Released::Exact { value },
            })
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lineage::PopulationLineage;

    fn cell(key: &str, published: Option<f64>, truth: f64) -> LedgerCell {
        LedgerCell {
            key: vec![key.to_string()],
            column: "n".into(),
            count: true,
            published: published.map_or(Published::Hidden, |value| Published::Value { value }),
            true_value: Some(truth),
        }
    }

    fn entry(release: &str, cells: Vec<LedgerCell>) -> LedgerEntry {
        LedgerEntry {
            format: 1,
            project: "demo".into(),
            release: release.into(),
            job: None,
            exported_at: String::new(),
            population: PopulationLineage::new(
                vec!["patients".into()],
                vec![],
                vec![],
                vec!["patients.age_band".into()],
            ),
            dims: vec!["age_band".into()],
            cells,
            audit_head: None,
        }
    }

    fn rules() -> JointRules {
        let mut r = Rules::preset("ons-srs").expect("preset");
        r.rounding.method = RoundingMethod::None;
        JointRules::new(&r)
    }

    #[test]
    fn a_new_release_that_pins_an_earlier_hidden_cell_is_refused_naming_it() {
        // Earlier: a=3 hidden with b=40 as its complement (total 93 known).
        let earlier = entry(
            "r-1",
            vec![
                cell("a", None, 3.0),
                cell("b", None, 40.0),
                cell("c", Some(50.0), 50.0),
            ],
        );
        // New: the same population with b published: a = 93 - 40 - 50 = 3.
        let new = vec![
            cell("a", None, 3.0),
            cell("b", Some(40.0), 40.0),
            cell("c", None, 50.0),
        ];
        let dims = vec!["age_band".to_string()];
        let blocks = audit(&new, &dims, std::slice::from_ref(&earlier), &rules());
        assert!(!blocks.is_empty());
        assert!(
            blocks.iter().all(|b| b.to_string().contains("r-1")),
            "{blocks:?}"
        );
        // Alone, each is protected.
        assert!(audit(&new, &dims, &[], &rules()).is_empty());
    }

    #[test]
    fn what_earlier_releases_already_expose_does_not_block_a_new_one() {
        let first = vec![
            cell("a", None, 3.0),
            cell("b", None, 40.0),
            cell("c", Some(50.0), 50.0),
        ];
        let second = vec![
            cell("a", None, 3.0),
            cell("b", Some(40.0), 40.0),
            cell("c", None, 50.0),
        ];
        let earlier = [entry("r-1", first.clone()), entry("r-2", second)];
        let dims = vec!["age_band".to_string()];
        assert_eq!(audit(&first, &dims, &earlier, &rules()), vec![]);
    }

    #[test]
    fn a_release_that_adds_nothing_passes() {
        let cells = vec![
            cell("a", None, 3.0),
            cell("b", None, 40.0),
            cell("c", Some(50.0), 50.0),
        ];
        let earlier = entry("r-1", cells.clone());
        let dims = vec!["age_band".to_string()];
        assert_eq!(audit(&cells, &dims, &[earlier], &rules()), vec![]);
    }
}
