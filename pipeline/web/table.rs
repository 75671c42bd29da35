//! A safe table as people see it: read from the API's safe CSV, hidden cells shown as one
//! symbol with an accessible label, and long tables split into server-side pages.
//!
//! Owns [`SafeTable`] (header, rows, which columns are values and which carry the
//! `<column>_sdc` marker) and its paginated rendering. Danger: this only ever receives a
//! safe table (suppressed and rounded, checked against its sha256 by the API); never
//! hand it a job's result.

use maud::{Markup, html};

use super::error::WebError;

/// The most cells on one page of a table.
pub const CELLS_PER_PAGE: usize = 600;

/// A safe table.
#[derive(Debug, Clone, PartialEq)]
pub struct SafeTable {
    /// Column names, as in the CSV (marker columns included).
    pub header: Vec<String>,
    /// Rows of cells (empty: hidden).
    pub rows: Vec<Vec<String>>,
}

impl SafeTable {
    /// Read the API's safe CSV.
    pub fn from_csv(bytes: &[u8]) -> Result<SafeTable, WebError> {
        let bad = |_| WebError::Bug {
            what: "the safe table",
        };
        let mut r = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(bytes);
        let header = r
            .headers()
            .map_err(bad)?
            .iter()
            .map(str::to_string)
            .collect();
        let mut rows = Vec::new();
        for rec in r.records() {
            rows.push(rec.map_err(bad)?.iter().map(str::to_string).collect());
        }
        Ok(SafeTable { header, rows })
    }

    /// Whether column `i` is a `<value>_sdc` marker column.
    pub fn is_marker(&self, i: usize) -> bool {
        self.header[i]
            .strip_suffix("_sdc")
            .is_some_and(|v| self.header.iter().any(|h| h == v))
    }

    /// Value columns: those with a marker column.
    pub fn value_columns(&self) -> Vec<usize> {
        (0..self.header.len())
            .filter(|&i| self.header.contains(&format!("{}_sdc", self.header[i])))
            .collect()
    }

    /// Dimension columns: neither values nor markers.
    pub fn key_columns(&self) -> Vec<usize> {
        let values = self.value_columns();
        (0..self.header.len())
            .filter(|&i| !values.contains(&i) && !self.is_marker(i))
            .collect()
    }

    /// The marker for row `r`, value column `c`.
    pub fn marker(&self, r: usize, c: usize) -> Option<&str> {
        let want = format!("{}_sdc", self.header[c]);
        let m = self.header.iter().position(|h| *h == want)?;
        self.rows[r]
            .get(m)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    /// Rows per page for this table's width.
    pub fn rows_per_page(&self) -> usize {
        (CELLS_PER_PAGE / self.header.len().max(1)).clamp(10, 200)
    }

    /// Number of pages (at least one).
    pub fn pages(&self) -> usize {
        self.rows.len().div_ceil(self.rows_per_page()).max(1)
    }
}

/// One hidden cell: one symbol, with a label for screen readers.
pub fn hidden_cell(marker: Option<&str>) -> Markup {
    let label = match marker {
        Some(m) => format!("hidden ({m})"),
        None => "hidden".to_string(),
    };
    html! {
        span.hidden-cell title=(label) {
            span aria-hidden="true" { "—" }
            span.visually-hidden { (label) }
        }
    }
}

/// Page `page` (from 1) of `t`, with links to the other pages at `base` (`?page=N`).
pub fn render(t: &SafeTable, page: usize, base: &str, caption: &str) -> Markup {
    let per = t.rows_per_page();
    let pages = t.pages();
    let page = page.clamp(1, pages);
    let start = (page - 1) * per;
    let end = (start + per).min(t.rows.len());
    let shown: Vec<usize> = (0..t.header.len()).filter(|&i| !t.is_marker(i)).collect();
    let values = t.value_columns();
    html! {
        div.scroll {
            table {
                caption {
                    (caption) " — rows " (if t.rows.is_empty() { 0 } else { start + 1 }) "–" (end)
                    " of " (t.rows.len())
                }
                thead { tr { @for &i in &shown { th scope="col" { (t.header[i]) } } } }
                tbody {
                    @for r in start..end {
                        tr {
                            @for &c in &shown {
                                @let v = t.rows[r].get(c).map(String::as_str).unwrap_or("");
                                @if values.contains(&c) {
                                    td.num {
                                        @if v.is_empty() { (hidden_cell(t.marker(r, c))) } @else { (v) }
                                    }
                                } @else {
                                    td { (v) }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if pages > 1 {
            nav.pager aria-label=(format!("{caption} pages")) {
                @if page > 1 { a href=(format!("{base}?page={}", page - 1)) rel="prev" { "Previous page" } }
                span { "Page " (page) " of " (pages) }
                @if page < pages { a href=(format!("{base}?page={}", page + 1)) rel="next" { "Next page" } }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> SafeTable {
        SafeTable::from_csv(b"practice,sex,count,count_sdc\nA,F,10,\nA,M,,suppressed\n")
            .expect("csv")
    }

    #[test]
    fn columns_are_told_apart_by_their_marker() {
        let t = t();
        assert_eq!(t.value_columns(), vec![2]);
        assert_eq!(t.key_columns(), vec![0, 1]);
        assert!(t.is_marker(3));
        assert_eq!(t.marker(1, 2), Some("suppressed"));
        assert_eq!(t.marker(0, 2), None);
    }

    #[test]
    fn hidden_cells_are_one_symbol_with_a_label() {
        let html = render(&t(), 1, "/x", "Safe table").into_string();
        assert_eq!(html.matches('—').count(), 2, "{html}"); // caption dash + one cell
        assert!(html.contains("hidden (suppressed)"), "{html}");
        assert!(!html.contains(">count_sdc<"), "{html}");
    }

    #[test]
    fn long_tables_paginate() {
        let mut csv = String::from("k,v,v_sdc\n");
        for i in 0..1000 {
            csv.push_str(&format!("{i},{i},\n"));
        }
        let t = SafeTable::from_csv(csv.as_bytes()).expect("csv");
        assert_eq!(t.rows_per_page(), 200);
        assert_eq!(t.pages(), 5);
        let html = render(&t, 2, "/x", "Safe table").into_string();
        assert!(html.contains("rows 201–400 of 1000"), "{html}");
        assert!(
            html.contains("?page=3") && html.contains("?page=1"),
            "{html}"
        );
        assert!(!html.contains(">999<"), "{html}");
    }
}
