//! What a release would add to what already left: the safe table under review compared,
//! cell by cell, with the safe tables of the project's earlier releases.
//!
//! Owns [`compare`] (cells matched by their dimension values and column name) and its
//! rendering: the earlier releases side by side with how much each overlaps, and for
//! the most similar one the changed, new and dropped cells, population totals, and what
//! would become derivable (a cell hidden in one release but shown in the other, or a
//! difference that is a small count under the project's rules). MERGE: disclosure — when
//! the disclosure module gains a joint audit across releases, show its findings here
//! instead of (or beside) this cell-level diff.

use std::collections::BTreeMap;

use maud::{Markup, html};

use super::table::{SafeTable, hidden_cell};
use crate::disclosure::rules::Rules;

/// How one cell differs.
#[derive(Debug, Clone, PartialEq)]
pub enum CellChange {
    /// Shown in both, with different values.
    Changed {
        /// Earlier value.
        before: String,
        /// Value now.
        after: String,
        /// Whether the difference is a small count under the rules.
        small: bool,
    },
    /// Hidden earlier, shown now: the earlier hidden value becomes known.
    Revealed {
        /// Value now.
        after: String,
    },
    /// Shown earlier, hidden now: hiding it now protects nothing.
    HiddenNow {
        /// Earlier value.
        before: String,
    },
}

/// A comparison of the table under review with one earlier table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Diff {
    /// Cells in both tables (same dimension values, same column).
    pub shared: usize,
    /// Changed cells: (dimension values, column, change).
    pub changes: Vec<(Vec<String>, String, CellChange)>,
    /// Rows only in the table under review.
    pub new_rows: usize,
    /// Rows only in the earlier table.
    pub dropped_rows: usize,
    /// Per value column: (column, earlier total of shown cells, total now, both fully shown).
    pub populations: Vec<(String, f64, f64, bool)>,
}

impl Diff {
    /// Whether anything would become derivable.
    pub fn derivable(&self) -> Vec<String> {
        let mut v = Vec::new();
        for (key, col, ch) in &self.changes {
            match ch {
                CellChange::Revealed { .. } => v.push(format!(
                    "{col} for {}: hidden in the earlier release, shown here, so its hidden value becomes known",
                    key.join(", ")
                )),
                CellChange::Changed { before, after, small: true } => v.push(format!(
                    "{col} for {}: changed from {before} to {after}; the difference is a small count that can be derived by subtraction",
                    key.join(", ")
                )),
                _ => {}
            }
        }
        v
    }
}

fn rows_by_key(t: &SafeTable, keys: &[usize]) -> BTreeMap<Vec<String>, usize> {
    (0..t.rows.len())
        .map(|r| (keys.iter().map(|&k| t.rows[r][k].clone()).collect(), r))
        .collect()
}

fn col(t: &SafeTable, name: &str) -> Option<usize> {
    t.header.iter().position(|h| h == name)
}

fn total(t: &SafeTable, c: usize) -> (f64, bool) {
    let mut sum = 0.0;
    let mut full = true;
    for row in &t.rows {
        match row[c].parse::<f64>() {
            Ok(v) => sum += v,
            Err(_) => full = false,
        }
    }
    (sum, full)
}

fn change(before: &str, after: &str, rules: &Rules) -> Option<CellChange> {
    match (before.is_empty(), after.is_empty()) {
        (true, true) => None,
        (true, false) => Some(CellChange::Revealed {
            after: after.into(),
        }),
        (false, true) => Some(CellChange::HiddenNow {
            before: before.into(),
        }),
        (false, false) if before == after => None,
        (false, false) => {
            let small = match (before.parse::<f64>(), after.parse::<f64>()) {
                (Ok(a), Ok(b)) => rules.count_is_small((a - b).abs()),
                _ => false,
            };
            Some(CellChange::Changed {
                before: before.into(),
                after: after.into(),
                small,
            })
        }
    }
}

/// Compare `now` with `earlier`: `None` when they share no dimension columns.
pub fn compare(now: &SafeTable, earlier: &SafeTable, rules: &Rules) -> Option<Diff> {
    let keys_now = now.key_columns();
    let names: Vec<&str> = keys_now.iter().map(|&k| now.header[k].as_str()).collect();
    let keys_then: Vec<usize> = names
        .iter()
        .map(|n| col(earlier, n))
        .collect::<Option<_>>()?;
    let a = rows_by_key(now, &keys_now);
    let b = rows_by_key(earlier, &keys_then);
    let mut d = Diff {
        new_rows: a.keys().filter(|k| !b.contains_key(*k)).count(),
        dropped_rows: b.keys().filter(|k| !a.contains_key(*k)).count(),
        ..Diff::default()
    };
    for v in now.value_columns() {
        let name = &now.header[v];
        let Some(w) = col(earlier, name) else {
            continue;
        };
        for (key, &ra) in &a {
            let Some(&rb) = b.get(key) else { continue };
            d.shared += 1;
            if let Some(ch) = change(&earlier.rows[rb][w], &now.rows[ra][v], rules) {
                d.changes.push((key.clone(), name.clone(), ch));
            }
        }
        let ((t1, f1), (t2, f2)) = (total(earlier, w), total(now, v));
        d.populations.push((name.clone(), t1, t2, f1 && f2));
    }
    Some(d)
}

/// An earlier release for the page: its id, when, who approved, and its safe table.
#[derive(Debug, Clone)]
pub struct Earlier {
    /// Release id.
    pub release: String,
    /// Job id.
    pub job: String,
    /// When it was requested.
    pub when: String,
    /// Who approved it.
    pub approved_by: Vec<String>,
    /// Its safe table.
    pub table: SafeTable,
}

/// The section of the review page.
pub fn render(now: &SafeTable, earlier: &[Earlier], rules: &Rules) -> Markup {
    if earlier.is_empty() {
        return html! { p.notice { "No earlier releases of this project: nothing to compare with." } };
    }
    let diffs: Vec<Option<Diff>> = earlier
        .iter()
        .map(|e| compare(now, &e.table, rules))
        .collect();
    let best = diffs
        .iter()
        .enumerate()
        .filter_map(|(i, d)| d.as_ref().map(|d| (i, d.shared)))
        .max_by_key(|&(_, s)| s)
        .map(|(i, _)| i);
    html! {
        div.scroll { table {
            caption { "Earlier releases of this project" }
            thead { tr { th scope="col" { "Release" } th scope="col" { "Job" } th scope="col" { "Requested" }
                th scope="col" { "Approved by" } th scope="col" { "Rows" } th scope="col" { "Cells in common" } } }
            tbody { @for (e, d) in earlier.iter().zip(&diffs) { tr {
                td { (e.release) } td { (e.job) } td { (e.when) } td { (e.approved_by.join(", ")) }
                td.num { (e.table.rows.len()) }
                td.num { @match d { Some(d) => (d.shared), None => "none (different dimensions)" } }
            } } }
        } }
        @match best.and_then(|i| diffs[i].as_ref().map(|d| (&earlier[i], d))) {
            None => p.notice { "No earlier release shares this table's dimensions." },
            Some((e, d)) => (detail(e, d)),
        }
    }
}

fn detail(e: &Earlier, d: &Diff) -> Markup {
    let derivable = d.derivable();
    html! {
        h3 { "Compared with the most similar earlier release, " (e.release) }
        ul {
            li { (d.shared) " cells in common; " (d.changes.len()) " differ." }
            li { (d.new_rows) " rows are new here; " (d.dropped_rows) " rows of the earlier release are not here." }
            @for (c, before, after, full) in &d.populations {
                li { "Population (" (c) " total of shown cells): " (before) " earlier, " (after) " here"
                    @if !full { " (some cells hidden, so totals are lower bounds)" } "." }
            }
        }
        @if derivable.is_empty() {
            p.notice { "Nothing becomes derivable from this release and the earlier one together, as far as a cell-by-cell comparison shows." }
        } @else {
            div.warn role="note" { p { strong { "What would become derivable:" } } ul { @for w in &derivable { li { (w) } } } }
        }
        @if !d.changes.is_empty() {
            div.scroll { table {
                caption { "Cells that differ (first 200)" }
                thead { tr { th scope="col" { "Cell" } th scope="col" { "Column" } th scope="col" { "Earlier" } th scope="col" { "Here" } } }
                tbody { @for (k, c, ch) in d.changes.iter().take(200) { tr {
                    td { (k.join(", ")) } td { (c) }
                    @match ch {
                        CellChange::Changed { before, after, .. } => { td.num { (before) } td.num { (after) } }
                        CellChange::Revealed { after } => { td.num { (hidden_cell(None)) } td.num { (after) } }
                        CellChange::HiddenNow { before } => { td.num { (before) } td.num { (hidden_cell(None)) } }
                    }
                } } }
            } }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(csv: &str) -> SafeTable {
        SafeTable::from_csv(csv.as_bytes()).expect("csv")
    }

    #[test]
    fn revealed_cells_and_small_differences_are_derivable() {
        let rules = Rules::preset("opensafely").expect("preset");
        let before = t("practice,n,n_sdc\nA,100,\nB,,suppressed\nC,50,\n");
        let now = t("practice,n,n_sdc\nA,103,\nB,40,\nC,50,\nD,60,\n");
        let d = compare(&now, &before, &rules).expect("comparable");
        assert_eq!(d.shared, 3);
        assert_eq!(d.new_rows, 1);
        assert_eq!(d.dropped_rows, 0);
        assert_eq!(d.changes.len(), 2);
        let w = d.derivable();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("A") && w[0].contains("small count"), "{w:?}");
        assert!(w[1].contains("hidden in the earlier release"), "{w:?}");
        assert_eq!(d.populations, vec![("n".into(), 150.0, 253.0, false)]);
    }

    #[test]
    fn tables_without_shared_dimensions_are_not_compared() {
        let rules = Rules::preset("opensafely").expect("preset");
        let a = t("practice,n,n_sdc\nA,100,\n");
        let b = t("region,n,n_sdc\nX,100,\n");
        assert!(compare(&a, &b, &rules).is_none());
    }
}
