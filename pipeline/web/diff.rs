//! What a release would add to what already left: the safe table under review compared
//! with the safe tables of the project's exported releases and the requester's other
//! received tables, by their real key and measure columns.
//!
//! A safe table is the analyst's columns in the analyst's order (group keys and measures,
//! hidden cells empty). Which columns are keys and which measures add up over cells
//! (counts of patients or rows, sums) is read from the job's `cells.json` ([`shape`]):
//! a key column holds, row for row, one component of the cells' keys; an additive column
//! agrees with one of the cell's additive measures wherever it is shown. A mean (or any
//! other column) is compared only cell for cell. Tables from before `cells.json` fall
//! back to the `<value>_sdc` marker columns they carried ([`Shape::legacy`]).
//!
//! Owns [`compare`]: both tables are brought to the key columns they share (a finer
//! table is summed over its other keys), and for each shared cell and common measure it
//! says what the two together show: a cell hidden in the earlier table whose value the
//! cells shown here give (revealed), a cell hidden here that the earlier table and the
//! other cells here give (exposed), and differences that are small counts under the
//! project's rules. This is a checker's aid that assumes both tables count the same
//! population; the received ledger's guard (`crate::received`), which compares patient
//! sets, is the gate. Danger: it reads only published values (never `result.parquet`),
//! so it shows the checker nothing the analyst does not already hold.

use std::collections::BTreeMap;

use maud::{Markup, html};

use super::table::{SafeTable, hidden_cell};
use crate::disclosure::rules::Rules;
use crate::received::ReceivedTable;

/// Which columns of a safe table are keys and which measures add up over cells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// Key columns, in key order.
    pub keys: Vec<usize>,
    /// Measure columns whose values add up over cells (counts, sums).
    pub additive: Vec<usize>,
    /// Every other non-key column (means, order statistics), compared cell for cell.
    pub other: Vec<usize>,
}

impl Shape {
    /// The shape of a table written with `<value>_sdc` marker columns (before
    /// `cells.json`): values are the columns with a marker, keys the rest.
    pub fn legacy(t: &SafeTable) -> Shape {
        Shape {
            keys: t.key_columns(),
            additive: t.value_columns(),
            other: Vec::new(),
        }
    }

    /// Every measure column.
    fn measures(&self) -> impl Iterator<Item = usize> + '_ {
        self.additive.iter().chain(&self.other).copied()
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The shape of `t` from what the analyst saw of its cells (`cells.json`); `None` when
/// the two do not describe the same cells (then nothing is compared by shape).
pub fn shape(t: &SafeTable, cells: &ReceivedTable) -> Option<Shape> {
    let n = cells.cells.len();
    if n == 0 || n != t.rows.len() {
        return None;
    }
    let width = cells.cells[0].key.len();
    let mut keys: Vec<usize> = Vec::new();
    for k in 0..width {
        let want = sorted(
            cells
                .cells
                .iter()
                .filter_map(|c| c.key.get(k).cloned())
                .collect(),
        );
        let c = (0..t.header.len()).find(|c| {
            !keys.contains(c)
                && sorted(
                    t.rows
                        .iter()
                        .map(|r| r.get(*c).cloned().unwrap_or_default())
                        .collect(),
                ) == want
        })?;
        keys.push(c);
    }
    let index: BTreeMap<&[String], usize> = cells
        .cells
        .iter()
        .enumerate()
        .map(|(i, c)| (c.key.as_slice(), i))
        .collect();
    let mut cell_of = Vec::with_capacity(n);
    for row in &t.rows {
        let key: Vec<String> = keys.iter().map(|&k| row[k].clone()).collect();
        cell_of.push(*index.get(key.as_slice())?);
    }
    let mut distinct = cell_of.clone();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() != n {
        return None;
    }
    let agrees = |c: usize, m: usize| {
        let mut shown = 0;
        for (r, row) in t.rows.iter().enumerate() {
            let seen = cells.cells[cell_of[r]].values.get(m).copied();
            match (row[c].is_empty(), seen.and_then(|p| p.bounds())) {
                (true, None) => {}
                (false, Some((lo, hi))) => match row[c].parse::<f64>() {
                    Ok(x)
                        if x >= lo - 1e-9 * lo.abs().max(1.0)
                            && x <= hi + 1e-9 * hi.abs().max(1.0) =>
                    {
                        shown += 1
                    }
                    _ => return false,
                },
                _ => return false,
            }
        }
        shown > 0
    };
    let (mut additive, mut other) = (Vec::new(), Vec::new());
    for c in (0..t.header.len()).filter(|c| !keys.contains(c)) {
        if (0..cells.measures.len()).any(|m| agrees(c, m)) {
            additive.push(c);
        } else {
            other.push(c);
        }
    }
    Some(Shape {
        keys,
        additive,
        other,
    })
}

/// How one shared cell differs.
#[derive(Debug, Clone, PartialEq)]
pub enum CellChange {
    /// Known in both, with different values.
    Changed {
        /// Earlier value.
        before: String,
        /// Value now.
        after: String,
        /// Whether the difference is a small count under the rules.
        small: bool,
    },
    /// Hidden in the earlier table; the cells shown here give its value.
    Revealed {
        /// The value the cells here give.
        after: String,
    },
    /// Hidden here; the earlier table (and the other cells here) give its value.
    Exposed {
        /// The value the earlier table gives.
        before: String,
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
    /// The key columns both tables have (by name), in this table's key order.
    pub shared_keys: Vec<String>,
    /// This table's other key columns (summed over to compare).
    pub finer_here: Vec<String>,
    /// The earlier table's other key columns (summed over to compare).
    pub finer_earlier: Vec<String>,
    /// The measure columns both tables have (by name).
    pub measures: Vec<String>,
    /// Cells in both tables at the shared keys, times common measures.
    pub shared: usize,
    /// Cells at the shared keys present in both tables.
    pub overlap: usize,
    /// What differs: (shared key values, column, change).
    pub changes: Vec<(Vec<String>, String, CellChange)>,
    /// Cells at the shared keys only in the table under review.
    pub new_rows: usize,
    /// Cells at the shared keys only in the earlier table.
    pub dropped_rows: usize,
    /// Per additive column: (column, earlier total of shown cells, total now, both fully
    /// shown).
    pub populations: Vec<(String, f64, f64, bool)>,
}

impl Diff {
    /// What would become derivable from the two tables together, in words.
    pub fn derivable(&self) -> Vec<String> {
        let mut v = Vec::new();
        for (key, col, ch) in &self.changes {
            let at = self.at(key);
            match ch {
                CellChange::Revealed { after } => v.push(format!(
                    "{col} for {at}: hidden in the earlier table; the cells shown here give {after}"
                )),
                CellChange::Exposed { before } => v.push(format!(
                    "{col} for {at}: hidden here; the earlier table and the cells shown here give {before}"
                )),
                CellChange::Changed {
                    before,
                    after,
                    small: true,
                } => v.push(format!(
                    "{col} for {at}: {before} earlier, {after} here; the difference is a small count that can be derived by subtraction"
                )),
                _ => {}
            }
        }
        v
    }

    /// A shared cell in words (`sex=M`, or `all cells` when no key is shared).
    pub fn at(&self, key: &[String]) -> String {
        if self.shared_keys.is_empty() {
            return "all cells".into();
        }
        self.shared_keys
            .iter()
            .zip(key)
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One measure over the cells of a shared-key group: the sum of the shown cells, the
/// hidden cells, all cells, and the one raw value when the group is one cell.
#[derive(Debug, Clone, Default)]
struct Group {
    shown: f64,
    hidden: usize,
    cells: usize,
    raw: String,
}

fn groups(t: &SafeTable, keys: &[usize], col: usize) -> BTreeMap<Vec<String>, Group> {
    let mut out: BTreeMap<Vec<String>, Group> = BTreeMap::new();
    for row in &t.rows {
        let g = out
            .entry(keys.iter().map(|&k| row[k].clone()).collect())
            .or_default();
        g.cells += 1;
        g.raw = row[col].clone();
        match row[col].parse::<f64>() {
            Ok(v) if !row[col].is_empty() => g.shown += v,
            _ => g.hidden += 1,
        }
    }
    out
}

fn number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

fn same_cell(before: &str, after: &str, counts: bool, rules: &Rules) -> Option<CellChange> {
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
                (Ok(a), Ok(b)) => counts && rules.count_is_small((a - b).abs()),
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

fn grouped(now: &Group, then: &Group, additive: bool, rules: &Rules) -> Option<CellChange> {
    if now.cells == 1 && then.cells == 1 {
        return same_cell(&then.raw, &now.raw, additive, rules);
    }
    match (now.hidden, then.hidden) {
        (0, 0) if (now.shown - then.shown).abs() > 1e-9 => Some(CellChange::Changed {
            before: number(then.shown),
            after: number(now.shown),
            small: rules.count_is_small((now.shown - then.shown).abs()),
        }),
        (0, 1) => Some(CellChange::Revealed {
            after: number(now.shown - then.shown),
        }),
        (1, 0) => Some(CellChange::Exposed {
            before: number(then.shown - now.shown),
        }),
        _ => None,
    }
}

fn total(t: &SafeTable, c: usize) -> (f64, bool) {
    let mut sum = 0.0;
    let mut full = true;
    for row in &t.rows {
        match row[c].parse::<f64>() {
            Ok(v) if !row[c].is_empty() => sum += v,
            _ => full = false,
        }
    }
    (sum, full)
}

/// Compare `now` (shape `sn`) with `earlier` (shape `se`): `None` when they have no
/// measure column in common. Both are brought to their shared key columns (none shared:
/// the grand totals are compared); additive measures are summed over the other keys,
/// others compared only where both groups are single cells.
pub fn compare(
    now: &SafeTable,
    sn: &Shape,
    earlier: &SafeTable,
    se: &Shape,
    rules: &Rules,
) -> Option<Diff> {
    let name = |t: &SafeTable, c: usize| t.header[c].clone();
    let mut kn = Vec::new();
    let mut ke = Vec::new();
    let mut d = Diff::default();
    for &k in &sn.keys {
        match se
            .keys
            .iter()
            .find(|&&j| earlier.header[j] == now.header[k])
        {
            Some(&j) => {
                kn.push(k);
                ke.push(j);
                d.shared_keys.push(name(now, k));
            }
            None => d.finer_here.push(name(now, k)),
        }
    }
    d.finer_earlier = se
        .keys
        .iter()
        .filter(|j| !ke.contains(j))
        .map(|&j| name(earlier, j))
        .collect();
    let pairs: Vec<(usize, usize, bool)> = sn
        .measures()
        .filter_map(|c| {
            let w = se
                .measures()
                .find(|&w| earlier.header[w] == now.header[c])?;
            Some((c, w, sn.additive.contains(&c) && se.additive.contains(&w)))
        })
        .collect();
    if pairs.is_empty() {
        return None;
    }
    for (i, &(c, w, additive)) in pairs.iter().enumerate() {
        let a = groups(now, &kn, c);
        let b = groups(earlier, &ke, w);
        if i == 0 {
            d.new_rows = a.keys().filter(|k| !b.contains_key(*k)).count();
            d.dropped_rows = b.keys().filter(|k| !a.contains_key(*k)).count();
            d.overlap = a.keys().filter(|k| b.contains_key(*k)).count();
        }
        d.measures.push(name(now, c));
        for (key, ga) in &a {
            let Some(gb) = b.get(key) else { continue };
            let comparable = additive || (ga.cells == 1 && gb.cells == 1);
            if !comparable {
                continue;
            }
            d.shared += 1;
            if let Some(ch) = grouped(ga, gb, additive, rules) {
                d.changes.push((key.clone(), name(now, c), ch));
            }
        }
        if additive {
            let ((t1, f1), (t2, f2)) = (total(earlier, w), total(now, c));
            d.populations.push((name(now, c), t1, t2, f1 && f2));
        }
    }
    Some(d)
}

/// An earlier table for the page.
#[derive(Debug, Clone)]
pub struct Earlier {
    /// `release rel-…` or `job job-… (received by the requester)`.
    pub label: String,
    /// Job id.
    pub job: String,
    /// When it was requested or submitted.
    pub when: String,
    /// Who approved it (empty for a table only received).
    pub approved_by: Vec<String>,
    /// Its safe table.
    pub table: SafeTable,
    /// Its shape, when known.
    pub shape: Option<Shape>,
}

/// The section of the review page: `now` (shape `shape`) against each earlier table.
pub fn render(
    now: &SafeTable,
    shape: Option<&Shape>,
    earlier: &[Earlier],
    rules: &Rules,
) -> Markup {
    if earlier.is_empty() {
        return html! { p.notice { "No exported release of this project and no other table received by the requester: nothing to compare with." } };
    }
    let diffs: Vec<Option<Diff>> = earlier
        .iter()
        .map(|e| match (shape, &e.shape) {
            (Some(a), Some(b)) => compare(now, a, &e.table, b, rules),
            _ => None,
        })
        .collect();
    let best = diffs
        .iter()
        .enumerate()
        .filter_map(|(i, d)| d.as_ref().map(|d| (i, (d.shared_keys.len(), d.overlap))))
        .max_by_key(|&(_, s)| s)
        .map(|(i, _)| i);
    let flagged: Vec<usize> = diffs
        .iter()
        .enumerate()
        .filter(|(i, d)| Some(*i) != best && d.as_ref().is_some_and(|d| !d.derivable().is_empty()))
        .map(|(i, _)| i)
        .collect();
    html! {
        @if shape.is_none() {
            p.warn { "The key and measure columns of the table under review could not be told apart (its job has no readable cells.json), so it is not compared cell by cell." }
        }
        div.scroll { table {
            caption { "Earlier tables: the project's exported releases, then what the requester already received" }
            thead { tr { th scope="col" { "Table" } th scope="col" { "Job" } th scope="col" { "When" }
                th scope="col" { "Approved by" } th scope="col" { "Rows" } th scope="col" { "Shared keys" } th scope="col" { "Cells in common" } } }
            tbody { @for (e, d) in earlier.iter().zip(&diffs) { tr {
                td { (e.label) } td { (e.job) } td { (e.when) } td { (e.approved_by.join(", ")) }
                td.num { (e.table.rows.len()) }
                @match d {
                    Some(d) => {
                        td { @if d.shared_keys.is_empty() { "none (grand totals)" } @else { (d.shared_keys.join(", ")) } }
                        td.num { (d.overlap) }
                    }
                    None => { td { "not comparable" } td.num { "0" } }
                }
            } } }
        } }
        @match best.and_then(|i| diffs[i].as_ref().map(|d| (&earlier[i], d))) {
            None => p.notice { "No earlier table shares a measure column with this one." },
            Some((e, d)) => (detail(e, d, "Compared with the most similar earlier table, ")),
        }
        @for i in flagged {
            @if let Some(d) = &diffs[i] { (detail(&earlier[i], d, "Also compared with ")) }
        }
    }
}

fn detail(e: &Earlier, d: &Diff, title: &str) -> Markup {
    let derivable = d.derivable();
    html! {
        h3 { (title) (e.label) }
        ul {
            li { "Shared key columns: " @if d.shared_keys.is_empty() { "none, so the grand totals are compared" } @else { (d.shared_keys.join(", ")) } "."
                @if !d.finer_here.is_empty() { " This table is summed over " (d.finer_here.join(", ")) " to compare." }
                @if !d.finer_earlier.is_empty() { " The earlier table is summed over " (d.finer_earlier.join(", ")) " to compare." } }
            li { "Measures in common: " (d.measures.join(", ")) "." }
            li { (d.overlap) " cells in common; " (d.changes.len()) " differ." }
            li { (d.new_rows) " cells are new here; " (d.dropped_rows) " cells of the earlier table are not here." }
            @for (c, before, after, full) in &d.populations {
                li { "Population (" (c) " total of shown cells): " (number(*before)) " earlier, " (number(*after)) " here"
                    @if !full { " (some cells hidden, so totals are lower bounds)" } "." }
            }
        }
        @if derivable.is_empty() {
            p.notice { "Nothing becomes derivable from this table and the earlier one together, as far as comparing their cells shows." }
        } @else {
            div.warn role="note" { p { strong { "What would become derivable (if both count the same population):" } } ul { @for w in &derivable { li { (w) } } } }
        }
        @if !d.changes.is_empty() {
            div.scroll { table {
                caption { "Cells that differ (first 200)" }
                thead { tr { th scope="col" { "Cell" } th scope="col" { "Column" } th scope="col" { "Earlier" } th scope="col" { "Here" } } }
                tbody { @for (k, c, ch) in d.changes.iter().take(200) { tr {
                    td { (d.at(k)) } td { (c) }
                    @match ch {
                        CellChange::Changed { before, after, .. } => { td.num { (before) } td.num { (after) } }
                        CellChange::Revealed { after } => { td.num { (hidden_cell(None)) } td.num { (after) } }
                        CellChange::Exposed { before } => { td.num { (before) } td.num { (hidden_cell(None)) } }
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
    use crate::received::{Published, ReceivedCell};

    fn t(csv: &str) -> SafeTable {
        SafeTable::from_csv(csv.as_bytes()).expect("csv")
    }

    /// `cells.json` for a table: keys, then (measure) values, `None` hidden.
    fn cells(measures: &[&str], rows: &[(&[&str], &[Option<f64>])]) -> ReceivedTable {
        ReceivedTable {
            format: crate::received::table::FORMAT,
            table: "job-x".into(),
            threshold: 8,
            measures: measures.iter().map(|m| m.to_string()).collect(),
            cells: rows
                .iter()
                .map(|(k, v)| ReceivedCell {
                    key: k.iter().map(|s| s.to_string()).collect(),
                    values: v
                        .iter()
                        .map(|x| x.map_or(Published::Hidden, Published::Exact))
                        .collect(),
                })
                .collect(),
            totals: Vec::new(),
            sum_protection: None,
        }
    }

    #[test]
    fn shape_reads_keys_and_additive_measures_in_any_column_order() {
        // COUNT(*) first, then the key, then a mean: the analyst's order.
        let table = t("n,sex,mean\n100,F,2.5\n,I,\n90,M,3.0\n");
        let c = cells(
            &["rows"],
            &[
                (&["M"], &[Some(90.0)]),
                (&["F"], &[Some(100.0)]),
                (&["I"], &[None]),
            ],
        );
        let s = shape(&table, &c).expect("a shape");
        assert_eq!(s.keys, vec![1]);
        assert_eq!(s.additive, vec![0]);
        assert_eq!(s.other, vec![2]);
    }

    #[test]
    fn a_cells_file_of_another_table_gives_no_shape() {
        let table = t("sex,n\nF,100\nM,90\n");
        let c = cells(&["rows"], &[(&["F"], &[Some(100.0)])]);
        assert!(shape(&table, &c).is_none());
        let c = cells(
            &["rows"],
            &[(&["X"], &[Some(100.0)]), (&["M"], &[Some(90.0)])],
        );
        assert!(shape(&table, &c).is_none());
    }

    #[test]
    fn a_cell_hidden_earlier_is_revealed_by_a_finer_table_shown_in_full() {
        let rules = Rules::preset("opensafely").expect("preset");
        let before = t("sex,n\nF,100\nM,\n");
        let sb = Shape {
            keys: vec![0],
            additive: vec![1],
            other: vec![],
        };
        let now = t("sex,age_band,n\nF,0-9,40\nF,10-19,60\nM,0-9,30\nM,10-19,25\n");
        let sn = Shape {
            keys: vec![0, 1],
            additive: vec![2],
            other: vec![],
        };
        let d = compare(&now, &sn, &before, &sb, &rules).expect("comparable");
        assert_eq!(d.shared_keys, vec!["sex".to_string()]);
        assert_eq!(d.finer_here, vec!["age_band".to_string()]);
        assert_eq!(d.overlap, 2);
        let w = d.derivable();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("sex=M") && w[0].contains("give 55"), "{w:?}");
        assert_eq!(
            d.changes,
            vec![(
                vec!["M".to_string()],
                "n".to_string(),
                CellChange::Revealed { after: "55".into() }
            )]
        );
    }

    #[test]
    fn a_cell_hidden_here_is_exposed_by_a_coarser_earlier_table() {
        let rules = Rules::preset("opensafely").expect("preset");
        let before = t("sex,n\nF,100\nM,55\n");
        let sb = Shape {
            keys: vec![0],
            additive: vec![1],
            other: vec![],
        };
        let now = t("sex,age_band,n\nF,0-9,40\nF,10-19,60\nM,0-9,\nM,10-19,50\n");
        let sn = Shape {
            keys: vec![0, 1],
            additive: vec![2],
            other: vec![],
        };
        let d = compare(&now, &sn, &before, &sb, &rules).expect("comparable");
        let w = d.derivable();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("hidden here") && w[0].contains("give 5"),
            "{w:?}"
        );
    }

    #[test]
    fn same_keys_compare_cell_for_cell_with_small_differences_flagged() {
        let rules = Rules::preset("opensafely").expect("preset");
        let s = Shape {
            keys: vec![0],
            additive: vec![1],
            other: vec![2],
        };
        let before = t("practice,n,mean\nA,100,1.5\nB,,\nC,50,2.0\n");
        let now = t("practice,n,mean\nA,103,1.5\nB,40,2.5\nC,50,2.5\nD,60,1.0\n");
        let d = compare(&now, &s, &before, &s, &rules).expect("comparable");
        assert_eq!(d.overlap, 3);
        assert_eq!(d.new_rows, 1);
        assert_eq!(d.dropped_rows, 0);
        let w = d.derivable();
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(
            w.iter()
                .any(|x| x.contains("practice=A") && x.contains("small count")),
            "{w:?}"
        );
        assert!(
            w.iter()
                .filter(|x| x.contains("practice=B") && x.contains("hidden in the earlier"))
                .count()
                == 2,
            "{w:?}"
        );
        assert_eq!(d.populations, vec![("n".into(), 150.0, 253.0, false)]);
    }

    #[test]
    fn means_are_never_summed_over_keys() {
        let rules = Rules::preset("opensafely").expect("preset");
        let before = t("sex,mean\nF,2.0\nM,\n");
        let sb = Shape {
            keys: vec![0],
            additive: vec![],
            other: vec![1],
        };
        let now = t("sex,age_band,mean\nM,0-9,1.0\nM,10-19,3.0\n");
        let sn = Shape {
            keys: vec![0, 1],
            additive: vec![],
            other: vec![2],
        };
        let d = compare(&now, &sn, &before, &sb, &rules).expect("comparable");
        assert!(d.changes.is_empty(), "{:?}", d.changes);
        assert_eq!(d.shared, 0);
    }

    #[test]
    fn tables_without_a_common_measure_are_not_compared() {
        let rules = Rules::preset("opensafely").expect("preset");
        let s = Shape {
            keys: vec![0],
            additive: vec![1],
            other: vec![],
        };
        let a = t("practice,n\nA,100\n");
        let b = t("region,patients\nX,100\n");
        assert!(compare(&a, &s, &b, &s, &rules).is_none());
    }

    #[test]
    fn legacy_marker_tables_keep_their_shape() {
        let a = t("practice,n,n_sdc\nA,100,\n");
        assert_eq!(
            Shape::legacy(&a),
            Shape {
                keys: vec![0],
                additive: vec![1],
                other: vec![]
            }
        );
    }
}
