//! The smallest change that makes a refused table releasable (issue 22 point 5).
//!
//! When some hidden cells cannot be protected, [`combine`] tries combining one category of
//! the first such cell with another category of the same dimension (smallest categories
//! first), checks each combined table with the same rules and roles, and returns the first
//! combination whose table is releasable after suppression. Only tables of counts and sums
//! (which add up when categories are combined) of modest size are tried. It only proposes:
//! the report says which categories to combine, the table itself is never changed here, and
//! it never puts a cell value in the proposal (dimension labels only).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;

use super::suppress::Grid;
use super::table::Table;
use super::{Finding, RoleSpec, Rule, Rules};

/// The check of a combined table, without suggestions (`passes` hands it in, so this
/// module never imports the passes that call it).
pub(super) type Check = fn(
    &[arrow::record_batch::RecordBatch],
    &RoleSpec,
    &Rules,
) -> Result<super::Report, super::DisclosureError>;

/// Largest table (rows) for which combinations are tried.
const MAX_ROWS: usize = 2_000;
/// Largest number of combined tables checked per refusal.
const MAX_TRIES: usize = 12;

/// A proposal: which dimension, and the two categories to combine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Combine {
    pub dimension: String,
    pub a: String,
    pub b: String,
}

/// The first combination of two categories that makes the table releasable, if any is
/// found within the budget; `None` when the table is not of a shape this can combine.
pub(super) fn combine(
    t: &Table,
    grid: &Grid,
    rules: &Rules,
    findings: &[Finding],
    check: Check,
) -> Option<Combine> {
    let simple = t.derived.is_empty()
        && t.order_stats.is_empty()
        && t.contributors.iter().all(|c| c.is_empty())
        && t.holders.iter().all(|h| h.is_none())
        && t.count_holders.iter().all(|h| h.is_none())
        && t.mag_additive.iter().all(|a| *a)
        && t.refused.is_empty()
        && t.constants.is_empty()
        && t.nrows <= MAX_ROWS
        && !t.counts.is_empty();
    if !simple {
        return None;
    }
    let bad = findings.iter().find(|f| f.rule == Rule::Unprotected)?;
    let mut tries = 0usize;
    for (d, (dim, _)) in t.dims.iter().enumerate() {
        let cats = grid.cats.get(d)?;
        if cats.len() < 3 {
            continue;
        }
        let Some(own) = bad.key.get(d).filter(|k| cats.contains(k)) else {
            continue;
        };
        // Partners: the other categories, smallest first (by the first count column).
        let mut size: BTreeMap<&str, f64> = BTreeMap::new();
        for r in 0..t.nrows {
            let v = t.counts[0].values[r].unwrap_or(0.0);
            let cell = grid.cell_of_row[r];
            if grid.is_margin(cell) {
                continue;
            }
            *size.entry(t.dims[d].1[r].as_str()).or_default() += v;
        }
        let mut partners: Vec<(&str, f64)> = size
            .iter()
            .filter(|(c, _)| **c != own.as_str())
            .map(|(c, v)| (*c, *v))
            .collect();
        partners.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(b.0)));
        for (p, _) in partners.into_iter().take(3) {
            if tries >= MAX_TRIES {
                return None;
            }
            tries += 1;
            let Some((batch, spec)) = combined(t, d, own, p) else {
                continue;
            };
            let Ok(rep) = check(&[batch], &spec, rules) else {
                continue;
            };
            if rep.verdict != super::Verdict::Blocked
                && !rep.findings.iter().any(|f| f.rule == Rule::Unprotected)
                && rep.table_findings.iter().all(|f| f.rule != "unprotected")
            {
                return Some(Combine {
                    dimension: dim.clone(),
                    a: own.clone(),
                    b: p.to_string(),
                });
            }
        }
    }
    None
}

/// The table with categories `a` and `b` of dimension `d` combined (labelled `a+b`), every
/// count and sum added; and the roles to check it with.
fn combined(t: &Table, d: usize, a: &str, b: &str) -> Option<(RecordBatch, RoleSpec)> {
    let label = format!("{a}+{b}");
    let mut groups: BTreeMap<Vec<String>, usize> = BTreeMap::new();
    let mut keys: Vec<Vec<String>> = Vec::new();
    let cols: Vec<&super::table::NumCol> = t.counts.iter().chain(&t.magnitudes).collect();
    let mut sums: Vec<Vec<Option<f64>>> = vec![Vec::new(); cols.len()];
    for r in 0..t.nrows {
        let mut key: Vec<String> = t.dims.iter().map(|(_, v)| v[r].clone()).collect();
        if key[d] == a || key[d] == b {
            key[d] = label.clone();
        }
        let at = *groups.entry(key.clone()).or_insert_with(|| {
            keys.push(key);
            for s in sums.iter_mut() {
                s.push(Some(0.0));
            }
            keys.len() - 1
        });
        for (i, c) in cols.iter().enumerate() {
            sums[i][at] = match (sums[i][at], c.values[r]) {
                (Some(s), Some(v)) => Some(s + v),
                _ => None,
            };
        }
    }
    let mut fields = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    for (i, (name, _)) in t.dims.iter().enumerate() {
        fields.push(Field::new(name, DataType::Utf8, false));
        let a: StringArray = keys.iter().map(|k| Some(k[i].as_str())).collect();
        arrays.push(Arc::new(a));
    }
    for (i, c) in cols.iter().enumerate() {
        fields.push(Field::new(&c.name, DataType::Float64, true));
        arrays.push(Arc::new(Float64Array::from(sums[i].clone())));
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).ok()?;
    let spec = RoleSpec {
        dims: Some(t.dims.iter().map(|(n, _)| n.clone()).collect()),
        counts: Some(t.counts.iter().map(|c| c.name.clone()).collect()),
        magnitudes: Some(t.magnitudes.iter().map(|c| c.name.clone()).collect()),
        margins: Some(t.roles.margins_present),
        total_labels: t.total_labels.clone(),
        ..RoleSpec::default()
    };
    Some((batch, spec))
}
