//! Primary and secondary (complementary) cell suppression over a table's grid of cells.
//!
//! The table's rows are laid on a grid: each dimension's categories plus a total position,
//! so a 2-D table with margins is an (R+1)×(C+1) grid. Every line of the grid (one
//! dimension varying, the others fixed) is an equation: its cells add up to its total. A
//! total the table does not include is taken as known when the rules say totals are
//! published elsewhere (`assume_totals_known`), and as unknown otherwise.
//!
//! Secondary suppression method (stated in every report):
//! 1. Line rule. A line whose total is known must hold either no hidden cell, or at least
//!    two hidden cells whose combined count is itself publishable (at least the threshold,
//!    and never zero). Otherwise one complementary cell is added in that line: the
//!    candidate with the least cost, where cost = the candidate's own value plus, for every
//!    other line through it that holds no hidden cell yet, the smallest published value of
//!    that line (the complement it will force there next). Candidates that make the hidden
//!    combined count publishable are preferred; ties go to the lowest grid position.
//! 2. Cycle rule (1-D and 2-D tables). In a 2-D table with margins, write totals with a
//!    minus sign: then every row and every column sums to zero, and hidden cells are the
//!    edges of a bipartite graph between row and column nodes. A hidden cell is exactly
//!    derivable from the published cells and totals if and only if it is a bridge of that
//!    graph (it lies on no cycle). For each bridge we add the cheapest published cell that
//!    joins the two sides the bridge separates, which closes a cycle through it.
//!
//! Steps 1 and 2 repeat until neither adds a cell (three or more dimensions: step 1 only).
//! This heuristic is now the fallback of `protect` (the hypercube method), whose result the
//! LP attacker audits whatever method chose the cells. This module never reads files or
//! rules text and never rounds: it only decides which cells are hidden.

use std::collections::{HashMap, VecDeque};

use super::DisclosureError;

/// The state of one grid cell for one value column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Published with its (true) value.
    Published,
    /// Hidden because it breaks a primary rule.
    Primary,
    /// Hidden to protect other hidden cells.
    Secondary,
    /// Hidden by an earlier `--apply`, value unknown to us.
    Hidden,
    /// Not in the table, and the reader does not know it (a total not published anywhere).
    Free,
    /// Not in the table but known to the reader (a total published elsewhere, or an absent
    /// interior combination read as zero). Never a complement candidate.
    Known,
}

impl State {
    pub(crate) fn unknown(self) -> bool {
        matches!(
            self,
            State::Primary | State::Secondary | State::Hidden | State::Free
        )
    }
    fn needs_protection(self) -> bool {
        matches!(self, State::Primary | State::Secondary | State::Hidden)
    }
}

/// The grid layout of a table: categories per dimension and the row behind each cell.
#[derive(Debug, Clone)]
pub(crate) struct Grid {
    /// Categories per dimension (without the total label), in first-seen order.
    pub cats: Vec<Vec<String>>,
    /// Radix per dimension (categories + 1 for the total).
    pub radix: Vec<usize>,
    /// Table row behind each cell, if any.
    pub row_of: Vec<Option<u32>>,
    /// Grid cell of each table row.
    pub cell_of_row: Vec<usize>,
    /// Lines: (members, total cell).
    pub lines: Vec<(Vec<u32>, u32)>,
    /// Lines through each cell.
    pub lines_of: Vec<Vec<u32>>,
}

/// Largest grid we build (cells), to refuse absurdly sparse tables rather than run out of memory.
const MAX_GRID: usize = 50_000_000;

impl Grid {
    /// Lay the table rows on a grid; error on duplicate keys.
    pub(crate) fn build(
        dims: &[(String, Vec<String>)],
        nrows: usize,
        total_labels: &[String],
    ) -> Result<Grid, DisclosureError> {
        let is_total = |v: &str| total_labels.iter().any(|t| t.eq_ignore_ascii_case(v));
        let mut cats: Vec<Vec<String>> = Vec::new();
        let mut idx_of: Vec<HashMap<&str, usize>> = Vec::new();
        for (_, vals) in dims {
            let mut c = Vec::new();
            let mut m: HashMap<&str, usize> = HashMap::new();
            for v in vals {
                if !is_total(v) && !m.contains_key(v.as_str()) {
                    m.insert(v.as_str(), c.len());
                    c.push(v.clone());
                }
            }
            cats.push(c);
            idx_of.push(m);
        }
        let radix: Vec<usize> = cats.iter().map(|c| c.len() + 1).collect();
        let size = radix
            .iter()
            .try_fold(1usize, |a, r| a.checked_mul(*r))
            .filter(|s| *s <= MAX_GRID.max(nrows.saturating_mul(4)))
            .ok_or_else(|| DisclosureError::Malformed {
                message: format!(
                    "the dimensions' categories span more than {MAX_GRID} cells; the table is too sparse to check as a cross-tabulation (split it, or give fewer --dims)"
                ),
            })?;
        let mut row_of: Vec<Option<u32>> = vec![None; size];
        let mut cell_of_row = Vec::with_capacity(nrows);
        for r in 0..nrows {
            let mut cell = 0usize;
            for (d, (_, vals)) in dims.iter().enumerate() {
                let v = vals[r].as_str();
                let i = if is_total(v) {
                    radix[d] - 1
                } else {
                    *idx_of[d]
                        .get(v)
                        .ok_or_else(|| DisclosureError::Internal("category index".into()))?
                };
                cell = cell * radix[d] + i;
            }
            if let Some(prev) = row_of[cell] {
                return Err(DisclosureError::Malformed {
                    message: format!(
                        "duplicate dimension keys: data rows {} and {} have the same values in every dimension column; aggregate them or add the missing dimension with --dims",
                        prev + 1,
                        r + 1
                    ),
                });
            }
            row_of[cell] = Some(r as u32);
            cell_of_row.push(cell);
        }
        let (lines, lines_of) = grid_lines(&radix, size);
        Ok(Grid {
            cats,
            radix,
            row_of,
            cell_of_row,
            lines,
            lines_of,
        })
    }

    /// Coordinates of a cell.
    pub(crate) fn coords(&self, cell: usize) -> Vec<usize> {
        let mut c = vec![0; self.radix.len()];
        let mut rest = cell;
        for d in (0..self.radix.len()).rev() {
            c[d] = rest % self.radix[d];
            rest /= self.radix[d];
        }
        c
    }

    /// Whether a cell is a total in some dimension.
    pub(crate) fn is_margin(&self, cell: usize) -> bool {
        let mut rest = cell;
        for r in self.radix.iter().rev() {
            if rest % r == r - 1 {
                return true;
            }
            rest /= r;
        }
        false
    }

    /// Dimension values of a cell ("Total" for margins).
    pub(crate) fn key(&self, cell: usize, total_label: &str) -> Vec<String> {
        self.coords(cell)
            .iter()
            .enumerate()
            .map(|(d, c)| {
                self.cats[d]
                    .get(*c)
                    .cloned()
                    .unwrap_or_else(|| total_label.to_string())
            })
            .collect()
    }
}

/// The lines of a grid: for each dimension and each combination of the other coordinates,
/// the members along that dimension and their total; and the lines through each cell.
type Lines = (Vec<(Vec<u32>, u32)>, Vec<Vec<u32>>);

fn grid_lines(radix: &[usize], size: usize) -> Lines {
    // Lines: for each dim d and each combination of the other coordinates.
    let k = radix.len();
    let mut lines = Vec::new();
    let mut lines_of: Vec<Vec<u32>> = vec![Vec::new(); size];
    if k > 0 {
        let mut stride = vec![1usize; k];
        for d in (0..k.saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * radix[d + 1];
        }
        for d in 0..k {
            // Iterate over all cells whose coordinate d is 0: those are line starts.
            for start in 0..size {
                if !(start / stride[d]).is_multiple_of(radix[d]) {
                    continue;
                }
                let members: Vec<u32> = (0..radix[d] - 1)
                    .map(|i| (start + i * stride[d]) as u32)
                    .collect();
                let total = (start + (radix[d] - 1) * stride[d]) as u32;
                let li = lines.len() as u32;
                for m in &members {
                    lines_of[*m as usize].push(li);
                }
                lines_of[total as usize].push(li);
                lines.push((members, total));
            }
        }
    }
    (lines, lines_of)
}

/// Values and states of one value column over the grid.
#[derive(Debug, Clone)]
pub(crate) struct Layer {
    /// True value (NaN if unknown to us).
    pub value: Vec<f64>,
    /// State per cell.
    pub state: Vec<State>,
    /// Whether the reader knows every total's true value (set by [`complete`]).
    pub totals_known: bool,
}

impl Layer {
    /// One value column laid on the grid: each row's value in its cell, and a missing
    /// value's cell hidden. Also returns the rows whose value is missing.
    pub fn from_rows(grid: &Grid, values: &[Option<f64>]) -> (Layer, Vec<usize>) {
        let size = grid.row_of.len();
        let mut layer = Layer {
            value: vec![f64::NAN; size],
            state: vec![State::Published; size],
            totals_known: false,
        };
        let mut missing = Vec::new();
        for (r, v) in values.iter().enumerate() {
            let cell = grid.cell_of_row[r];
            match v {
                Some(v) => layer.value[cell] = *v,
                None => {
                    layer.state[cell] = State::Hidden;
                    missing.push(r);
                }
            }
        }
        (layer, missing)
    }

    /// Whether the reader knows this cell as a total: the rules take totals as known, the
    /// cell is a total, and it does not fail the primary rules itself. A total that fails
    /// them (a small subtotal) is never published by a release under these rules, so it is
    /// not assumed known: it is a hidden cell like any other, with its own protection need.
    /// A total hidden only as a complement passes the rules, so it stays known.
    pub fn known_total(&self, grid: &Grid, c: usize) -> bool {
        self.totals_known && grid.is_margin(c) && self.state[c] != State::Primary
    }
}

/// A cell that could not be protected.
#[derive(Debug, Clone)]
pub(crate) struct Unprotected {
    pub cell: usize,
}

/// Fill virtual cells: absent interior cells are known zeros, absent totals are computed and
/// known or free. `value` must hold table values at table cells and NaN elsewhere.
pub(crate) fn complete(grid: &Grid, layer: &mut Layer, assume_totals_known: bool) {
    layer.totals_known = assume_totals_known;
    let size = layer.value.len();
    let k = grid.radix.len();
    // Absent interior cells: zero, known.
    for c in 0..size {
        if grid.row_of[c].is_none() && !grid.is_margin(c) {
            layer.value[c] = 0.0;
            layer.state[c] = State::Known;
        }
    }
    // Absent margins: compute from interior, in order of the number of total coordinates,
    // so a grand total sums already-computed subtotals (any line gives the same sum).
    let mut margins: Vec<(usize, usize)> = (0..size)
        .filter(|c| grid.row_of[*c].is_none() && grid.is_margin(*c))
        .map(|c| {
            let n = grid
                .coords(c)
                .iter()
                .zip(&grid.radix)
                .filter(|(x, r)| **x == **r - 1)
                .count();
            (n, c)
        })
        .collect();
    margins.sort();
    for (_, c) in margins {
        // Use the line along the first dimension in which c is a total.
        let coords = grid.coords(c);
        let d = (0..k)
            .find(|d| coords[*d] == grid.radix[*d] - 1)
            .unwrap_or(0);
        let line = grid.lines_of[c]
            .iter()
            .map(|l| &grid.lines[*l as usize])
            .find(|(m, t)| {
                *t as usize == c
                    && m.first()
                        .is_some_and(|m0| grid.coords(*m0 as usize)[d] == 0)
            });
        let v = line
            .map(|(m, _)| m.iter().map(|x| layer.value[*x as usize]).sum::<f64>())
            .unwrap_or(f64::NAN);
        layer.value[c] = v;
        layer.state[c] = if assume_totals_known {
            State::Known
        } else {
            State::Free
        };
    }
}

/// Secondary suppression on one layer. `protection` is the smallest combined hidden count a
/// line with a known total may show (0 means only "at least two hidden cells and non-zero").
/// Returns the cells that cannot be protected.
pub(crate) fn secondary(grid: &Grid, layer: &mut Layer, protection: f64) -> Vec<Unprotected> {
    let mut unprotected: Vec<Unprotected> = Vec::new();
    let mut given_up = vec![false; grid.lines.len()];
    let mut cache = Cache::new(grid, layer);
    loop {
        line_rule(
            grid,
            layer,
            protection,
            &mut given_up,
            &mut unprotected,
            &mut cache,
        );
        if grid.radix.len() != 2 {
            break;
        }
        if !cycle_rule(grid, layer, &mut unprotected, &mut cache) {
            break;
        }
    }
    unprotected.sort_by_key(|u| u.cell);
    unprotected.dedup_by_key(|u| u.cell);
    unprotected
}

fn line_status(grid: &Grid, layer: &Layer, l: usize) -> (usize, bool, f64, bool) {
    // (hidden count among members+total, total unknown, hidden mass of members, any needs protection)
    let (members, total) = &grid.lines[l];
    let mut n = 0;
    let mut mass = 0.0;
    let mut needs = false;
    for m in members {
        let s = layer.state[*m as usize];
        if s.unknown() {
            n += 1;
            let v = layer.value[*m as usize];
            mass += if s == State::Free || v.is_nan() {
                f64::INFINITY
            } else {
                v
            };
            needs |= s.needs_protection();
        }
    }
    let ts = layer.state[*total as usize];
    if ts.unknown() {
        n += 1;
        needs |= ts.needs_protection();
    }
    (n, ts.unknown(), mass, needs)
}

/// Per-line caches: number of unknown cells, and the two smallest published table cells.
struct Cache {
    hidden: Vec<u32>,
    min2: Vec<Option<[(f64, usize); 2]>>,
}

impl Cache {
    fn new(grid: &Grid, layer: &Layer) -> Cache {
        let hidden = (0..grid.lines.len())
            .map(|l| line_status(grid, layer, l).0 as u32)
            .collect();
        Cache {
            hidden,
            min2: vec![None; grid.lines.len()],
        }
    }

    /// Mark a published cell hidden (secondary) and update the caches.
    fn hide(&mut self, grid: &Grid, layer: &mut Layer, c: usize) {
        layer.state[c] = State::Secondary;
        for l in &grid.lines_of[c] {
            self.hidden[*l as usize] += 1;
            self.min2[*l as usize] = None;
        }
    }

    fn min2(&mut self, grid: &Grid, layer: &Layer, l: usize) -> [(f64, usize); 2] {
        if let Some(m) = self.min2[l] {
            return m;
        }
        let (members, total) = &grid.lines[l];
        let mut m = [(f64::INFINITY, usize::MAX); 2];
        for x in members
            .iter()
            .chain(std::iter::once(total))
            .map(|x| *x as usize)
        {
            if layer.state[x] == State::Published && grid.row_of[x].is_some() {
                let v = (layer.value[x], x);
                if v.0 < m[0].0 {
                    m[1] = m[0];
                    m[0] = v;
                } else if v.0 < m[1].0 {
                    m[1] = v;
                }
            }
        }
        self.min2[l] = Some(m);
        m
    }
}

fn candidate_cost(
    grid: &Grid,
    layer: &Layer,
    cache: &mut Cache,
    c: usize,
    skip_line: usize,
) -> f64 {
    let mut cost = layer.value[c];
    for l in &grid.lines_of[c] {
        let l = *l as usize;
        if l == skip_line || cache.hidden[l] != 0 {
            continue;
        }
        // The next complement this line will need: its smallest other published value.
        let m = cache.min2(grid, layer, l);
        let next = if m[0].1 == c { m[1].0 } else { m[0].0 };
        cost += if next.is_finite() { next } else { 1e12 };
    }
    cost
}

fn line_rule(
    grid: &Grid,
    layer: &mut Layer,
    protection: f64,
    given_up: &mut [bool],
    unprotected: &mut Vec<Unprotected>,
    cache: &mut Cache,
) {
    let mut queue: VecDeque<usize> = (0..grid.lines.len()).collect();
    let mut queued = vec![true; grid.lines.len()];
    while let Some(l) = queue.pop_front() {
        queued[l] = false;
        if given_up[l] {
            continue;
        }
        let (n, total_unknown, mass, needs) = line_status(grid, layer, l);
        if !needs {
            continue;
        }
        let exposed = n == 1 || (!total_unknown && (mass <= 0.0 || mass < protection));
        if !exposed {
            continue;
        }
        let shortfall = if total_unknown {
            0.0
        } else {
            (protection - mass).max(0.0)
        };
        let (members, total) = &grid.lines[l];
        let best = members
            .iter()
            .chain(std::iter::once(total))
            .map(|x| *x as usize)
            .filter(|x| layer.state[*x] == State::Published && grid.row_of[*x].is_some())
            .map(|x| {
                let v = layer.value[x];
                let helps = x == *total as usize || (v >= shortfall && (mass > 0.0 || v > 0.0));
                (!helps, candidate_cost(grid, layer, cache, x, l), x)
            })
            .min_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).then(a.2.cmp(&b.2)));
        match best {
            Some((_, _, c)) => {
                cache.hide(grid, layer, c);
                for l2 in &grid.lines_of[c] {
                    let l2 = *l2 as usize;
                    if !queued[l2] {
                        queued[l2] = true;
                        queue.push_back(l2);
                    }
                }
                if !queued[l] {
                    queued[l] = true;
                    queue.push_back(l);
                }
            }
            None => {
                given_up[l] = true;
                for m in members.iter().chain(std::iter::once(total)) {
                    let m = *m as usize;
                    if layer.state[m].needs_protection() {
                        unprotected.push(Unprotected { cell: m });
                    }
                }
            }
        }
    }
}

/// Find bridges among hidden cells of a 2-D grid and close a cycle through each. Returns
/// whether any cell was added.
fn cycle_rule(
    grid: &Grid,
    layer: &mut Layer,
    unprotected: &mut Vec<Unprotected>,
    cache: &mut Cache,
) -> bool {
    let (rr, cc) = (grid.radix[0], grid.radix[1]);
    let nodes = rr + cc;
    // Edges: hidden or free cells.
    let edges: Vec<usize> = (0..layer.state.len())
        .filter(|c| layer.state[*c].unknown())
        .collect();
    let ends = |c: usize| (c / cc, rr + c % cc);
    let mut adj: Vec<Vec<(usize, usize)>> = vec![Vec::new(); nodes];
    for (ei, c) in edges.iter().enumerate() {
        let (a, b) = ends(*c);
        adj[a].push((b, ei));
        adj[b].push((a, ei));
    }
    let bridges = find_bridges(&adj, edges.len());
    let mut added = false;
    let mut touched = vec![false; nodes];
    for ei in bridges {
        let c = edges[ei];
        if !layer.state[c].needs_protection() {
            continue;
        }
        let (a, b) = ends(c);
        if touched[a] || touched[b] {
            continue;
        }
        // The two sides the bridge separates: nodes reachable from each end without it.
        let side = reach(&adj, a, ei);
        let comp_b = reach(&adj, b, ei);
        let best = cheapest_joining(grid, layer, cache, &side, &comp_b);
        for n in side
            .iter()
            .zip(comp_b.iter())
            .enumerate()
            .filter(|(_, (s, t))| **s || **t)
            .map(|(i, _)| i)
        {
            touched[n] = true;
        }
        match best {
            Some((_, x)) => {
                cache.hide(grid, layer, x);
                added = true;
            }
            None => unprotected.push(Unprotected { cell: c }),
        }
    }
    added
}

/// Nodes reachable from `start` without crossing edge `skip`.
fn reach(adj: &[Vec<(usize, usize)>], start: usize, skip: usize) -> Vec<bool> {
    let mut seen = vec![false; adj.len()];
    let mut stack = vec![start];
    seen[start] = true;
    while let Some(x) = stack.pop() {
        for (y, e) in &adj[x] {
            if *e != skip && !seen[*y] {
                seen[*y] = true;
                stack.push(*y);
            }
        }
    }
    seen
}

/// The cheapest published table cell with one end (row or column node) on side `a` and
/// the other on side `b`: hiding it closes a cycle through the bridge between them.
fn cheapest_joining(
    grid: &Grid,
    layer: &Layer,
    cache: &mut Cache,
    a: &[bool],
    b: &[bool],
) -> Option<(f64, usize)> {
    let (rr, cc) = (grid.radix[0], grid.radix[1]);
    let rows = |s: &[bool]| (0..rr).filter(|r| s[*r]).collect::<Vec<usize>>();
    let cols = |s: &[bool]| (0..cc).filter(|j| s[rr + j]).collect::<Vec<usize>>();
    let mut best: Option<(f64, usize)> = None;
    for (rs, cs) in [(rows(a), cols(b)), (rows(b), cols(a))] {
        for r in &rs {
            for j in &cs {
                let x = r * cc + j;
                if layer.state[x] == State::Published && grid.row_of[x].is_some() {
                    let cost = candidate_cost(grid, layer, cache, x, usize::MAX);
                    if best.is_none_or(|(bc, bx)| cost < bc || (cost == bc && x < bx)) {
                        best = Some((cost, x));
                    }
                }
            }
        }
    }
    best
}

/// Bridges of an undirected multigraph (iterative Tarjan). Returns edge ids, sorted.
fn find_bridges(adj: &[Vec<(usize, usize)>], n_edges: usize) -> Vec<usize> {
    let n = adj.len();
    let mut disc = vec![usize::MAX; n];
    let mut low = vec![0usize; n];
    let mut is_bridge = vec![false; n_edges];
    let mut t = 0;
    for s in 0..n {
        if disc[s] != usize::MAX {
            continue;
        }
        // stack of (node, parent edge, next adj index)
        let mut stack: Vec<(usize, usize, usize)> = vec![(s, usize::MAX, 0)];
        disc[s] = t;
        low[s] = t;
        t += 1;
        while let Some(&mut (u, pe, ref mut i)) = stack.last_mut() {
            if *i < adj[u].len() {
                let (v, e) = adj[u][*i];
                *i += 1;
                if e == pe {
                    continue;
                }
                if disc[v] == usize::MAX {
                    disc[v] = t;
                    low[v] = t;
                    t += 1;
                    stack.push((v, e, 0));
                } else {
                    low[u] = low[u].min(disc[v]);
                }
            } else {
                stack.pop();
                if let Some(&(p, _, _)) = stack.last() {
                    low[p] = low[p].min(low[u]);
                    if low[u] > disc[p] {
                        is_bridge[pe] = true;
                    }
                }
            }
        }
    }
    (0..n_edges).filter(|e| is_bridge[*e]).collect()
}

/// A full 2-D test table with margins (row totals, column totals, the grand total), every
/// cell published: its grid and layer. Cell `(i, j)` of `vals` is at `i * (cols + 1) + j`.
#[cfg(test)]
pub(crate) fn grid_with_margins<R: AsRef<[f64]>>(vals: &[R]) -> (Grid, Layer) {
    let r = vals.len();
    let c = vals[0].as_ref().len();
    let (mut a, mut b, mut v) = (Vec::new(), Vec::new(), Vec::new());
    let label = |k: usize, n: usize, p: &str| {
        if k == n {
            "Total".to_string()
        } else {
            format!("{p}{k}")
        }
    };
    for i in 0..=r {
        for j in 0..=c {
            a.push(label(i, r, "r"));
            b.push(label(j, c, "c"));
            let x = if i < r && j < c {
                vals[i].as_ref()[j]
            } else if i < r {
                vals[i].as_ref().iter().sum()
            } else if j < c {
                vals.iter().map(|row| row.as_ref()[j]).sum()
            } else {
                vals.iter().flat_map(|row| row.as_ref().iter()).sum()
            };
            v.push(Some(x));
        }
    }
    let dims = vec![("a".to_string(), a), ("b".to_string(), b)];
    let g = Grid::build(&dims, v.len(), &["Total".to_string()]).expect("grid");
    let (layer, _) = Layer::from_rows(&g, &v);
    (g, layer)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2-D grid with interior values (row-major) and computed, assumed-known margins.
    fn grid2(vals: &[&[f64]]) -> (Grid, Layer) {
        let r = vals.len();
        let c = vals[0].len();
        let mut d0 = Vec::new();
        let mut d1 = Vec::new();
        for i in 0..r {
            for j in 0..c {
                d0.push(format!("r{i}"));
                d1.push(format!("c{j}"));
            }
        }
        let dims = vec![("a".to_string(), d0), ("b".to_string(), d1)];
        let g = Grid::build(&dims, r * c, &["Total".to_string()]).unwrap_or_else(|e| panic!("{e}"));
        let size = g.row_of.len();
        let mut layer = Layer {
            value: vec![f64::NAN; size],
            state: vec![State::Published; size],
            totals_known: false,
        };
        for (i, row) in vals.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                layer.value[g.cell_of_row[i * c + j]] = *v;
            }
        }
        complete(&g, &mut layer, true);
        (g, layer)
    }

    fn hidden(layer: &Layer) -> usize {
        layer.state.iter().filter(|s| s.needs_protection()).count()
    }

    #[test]
    fn one_dim_single_small_cell_gets_a_complement() {
        // 1-D: [3, 50, 60], total known. 3 is primary; one complement needed, and the line's
        // hidden sum must reach the threshold 10: the cheapest such is 50.
        let dims = vec![("a".to_string(), vec!["x".into(), "y".into(), "z".into()])];
        let g = Grid::build(&dims, 3, &["Total".to_string()]).unwrap_or_else(|e| panic!("{e}"));
        let mut layer = Layer {
            value: vec![3.0, 50.0, 60.0, f64::NAN],
            state: vec![
                State::Primary,
                State::Published,
                State::Published,
                State::Published,
            ],
            totals_known: false,
        };
        complete(&g, &mut layer, true);
        let u = secondary(&g, &mut layer, 10.0);
        assert!(u.is_empty());
        assert_eq!(layer.state[1], State::Secondary);
        assert_eq!(layer.state[2], State::Published);
    }

    #[test]
    fn two_dim_bridge_is_closed_into_a_cycle() {
        let (g, mut layer) = grid2(&[&[3.0, 20.0, 30.0], &[25.0, 40.0, 2.0], &[50.0, 60.0, 70.0]]);
        layer.state[0] = State::Primary; // (0,0) = 3
        layer.state[g.radix[1] + 2] = State::Primary; // (1,2) = 2
        let u = secondary(&g, &mut layer, 10.0);
        assert!(u.is_empty(), "{u:?}");
        assert!(hidden(&layer) >= 4);
        // no bridges remain
        let mut l2 = layer.clone();
        let mut cache = Cache::new(&g, &l2);
        assert!(!cycle_rule(&g, &mut l2, &mut Vec::new(), &mut cache));
    }

    #[test]
    fn bridges_found() {
        // Triangle plus a pendant edge: only the pendant is a bridge.
        let adj = vec![
            vec![(1, 0), (2, 2)],
            vec![(0, 0), (2, 1)],
            vec![(1, 1), (0, 2), (3, 3)],
            vec![(2, 3)],
        ];
        assert_eq!(find_bridges(&adj, 4), vec![3]);
    }
}
