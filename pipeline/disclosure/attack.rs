//! The LP attacker: how far a reader can narrow each hidden cell of a published table.
//!
//! The attacker knows the table's structure (every line of the grid adds up to its total),
//! that cells are non-negative, every published cell (a rounded cell as the interval its
//! rounding allows), and the true totals (the rules' `assume_totals_known`). For a hidden cell
//! the attacker's interval is the minimum and maximum of that cell over every table that fits
//! what they know, found here by linear programming (`microlp`).
//!
//! [`audit`] checks every hidden cell that needs protection. It first looks for a *box
//! certificate*: a table that differs from the true one only on hidden cells, moving the cell
//! by the required amount while keeping every line sum (two corners of each line move in
//! opposite directions), which proves the interval reaches that far. Failing that it solves
//! the LP over the cell's connected block of hidden cells. A block larger than
//! [`FULL_LIMIT`] cells is cut to the hidden cells nearest the target, and every hidden cell
//! outside the cut is held at its true value: that only removes tables the attacker must
//! consider, so the interval found is inside the true one, and a pass is still a proof.
//! It also owns the shape of what a primary needs, [`Protection`] (how far below and above
//! its value the attacker's interval must reach), shared by `protect`, `exact` and `bound`.
//! This module decides nothing about which cells to hide; it only measures.

use std::collections::{HashMap, VecDeque};

use microlp::{ComparisonOp, OptimizationDirection, Problem};

use super::suppress::{Grid, Layer, State};

/// Largest block of unknown cells solved as one LP; larger blocks are cut (see the module).
pub(crate) const FULL_LIMIT: usize = 400;

/// How much each primary needs, per cell: (lower protection, upper protection).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Protection {
    /// The grid cell.
    pub cell: usize,
    /// Lower protection level (how far below the value the interval must reach).
    pub lpl: f64,
    /// Upper protection level (how far above).
    pub upl: f64,
}

/// What the attacker knows about one cell.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Domain {
    /// The value is known exactly (published, or a known total).
    Fixed(f64),
    /// The value lies in `[lo, hi]` (hidden: `[0, inf)`; rounded: its rounding interval).
    Range(f64, f64),
}

/// The protection one hidden cell needs: its attacker interval must reach down to `lo` and
/// up to `hi`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Need {
    /// The grid cell.
    pub cell: usize,
    /// The interval must reach at least this low.
    pub lo: f64,
    /// The interval must reach at least this high.
    pub hi: f64,
}

/// The attacker's interval for one cell, and how it was established.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Interval {
    /// Lowest value the attacker cannot rule out (a proven lower end of it).
    pub lo: f64,
    /// Highest value the attacker cannot rule out (a proven lower bound of it).
    pub hi: f64,
    /// Whether the LP covered the whole connected block (exact interval) or a cut/box.
    pub exact: bool,
}

/// A cell whose attacker interval is narrower than it needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Shortfall {
    /// What it needed.
    pub need: Need,
    /// What the attacker gets (as far as the audit could prove).
    pub got: Interval,
}

/// What the attacker knows about every cell of one layer. `rounded_halfwidth` gives the
/// half-width of the interval a published value stands for (0 when published exactly), used
/// only when some hidden cell's true value is unknown to us. When the rules take totals as
/// known, every total (in the table or not, hidden or not) is known to the attacker.
pub(crate) fn domains(grid: &Grid, layer: &Layer, rounded_halfwidth: f64) -> Vec<Domain> {
    let unknown_truth = layer
        .state
        .iter()
        .zip(&layer.value)
        .any(|(s, v)| s.unknown() && v.is_nan());
    layer
        .state
        .iter()
        .zip(&layer.value)
        .enumerate()
        .map(|(c, (s, v))| {
            if layer.known_total(grid, c) && !v.is_nan() {
                Domain::Fixed(*v)
            } else if s.unknown() || v.is_nan() {
                Domain::Range(0.0, f64::INFINITY)
            } else if unknown_truth && rounded_halfwidth > 0.0 && *s == State::Published {
                Domain::Range((v - rounded_halfwidth).max(0.0), v + rounded_halfwidth)
            } else {
                Domain::Fixed(*v)
            }
        })
        .collect()
}

/// The exact attacker interval of every cell of a one-dimensional grid, in closed form
/// (`None` for any other grid). One line: the members add up to the total, each cell in
/// its domain. Projecting that box cut by one hyperplane onto a cell gives, for a member
/// `i`, `[max(lo_i, tlo - sum_{j != i} hi_j), min(hi_i, thi - sum_{j != i} lo_j)]` and for the
/// total `[max(tlo, sum lo), min(thi, sum hi)]`: the LP's optimum, in linear time for the
/// whole line (issue 22 point 8: a 1-D table of 200,000 rows). Independent of how the
/// pattern was chosen: it reads only the domains.
pub(crate) fn line_intervals(grid: &Grid, dom: &[Domain]) -> Option<Vec<(f64, f64)>> {
    if grid.radix.len() != 1 || grid.lines.len() != 1 {
        return None;
    }
    let (members, total) = &grid.lines[0];
    let bounds = |c: usize| match dom[c] {
        Domain::Fixed(v) => (v, v),
        Domain::Range(lo, hi) => (lo, hi),
    };
    let mut sum_lo = 0.0;
    let mut sum_hi = 0.0;
    let mut inf_hi = 0usize;
    for m in members {
        let (lo, hi) = bounds(*m as usize);
        sum_lo += lo;
        if hi.is_finite() {
            sum_hi += hi;
        } else {
            inf_hi += 1;
        }
    }
    let t = *total as usize;
    let (tlo, thi) = bounds(t);
    let mut out = vec![(f64::NAN, f64::NAN); dom.len()];
    for m in members {
        let c = *m as usize;
        let (lo, hi) = bounds(c);
        let others_lo = sum_lo - lo;
        let others_inf = inf_hi - usize::from(!hi.is_finite());
        let min = if others_inf > 0 {
            lo
        } else {
            lo.max(tlo - (sum_hi - if hi.is_finite() { hi } else { 0.0 }))
        };
        let max = hi.min(thi - others_lo);
        out[c] = (min, max);
    }
    let tmax = if inf_hi > 0 { thi } else { thi.min(sum_hi) };
    out[t] = (tlo.max(sum_lo), tmax);
    Some(out)
}

/// Audit every need; returns those the audit cannot prove.
pub(crate) fn audit(grid: &Grid, layer: &Layer, dom: &[Domain], needs: &[Need]) -> Vec<Shortfall> {
    let mut out = Vec::new();
    for need in needs {
        let got = interval_for(grid, layer, dom, *need);
        if got.lo > need.lo + tol(need.lo) || got.hi < need.hi - tol(need.hi) {
            out.push(Shortfall { need: *need, got });
        }
    }
    out
}

fn tol(x: f64) -> f64 {
    1e-6 * x.abs().max(1.0)
}

/// The attacker interval for a need: a box certificate if one exists, else the LP.
pub(crate) fn interval_for(grid: &Grid, layer: &Layer, dom: &[Domain], need: Need) -> Interval {
    let x = layer.value[need.cell];
    if !x.is_nan() {
        let up = need.hi - x;
        let down = x - need.lo;
        let up_ok = up <= 0.0 || box_certificate(grid, layer, dom, need.cell, up, true);
        let down_ok = down <= 0.0 || box_certificate(grid, layer, dom, need.cell, down, false);
        if up_ok && down_ok {
            return Interval {
                lo: need.lo.min(x),
                hi: need.hi.max(x),
                exact: false,
            };
        }
    }
    lp_interval(grid, layer, dom, need.cell)
}

/// Whether the cell can move by `amount` (up or down) along a box of unknown cells with
/// every line sum kept: see the module documentation. Only cells of known true value count.
fn box_certificate(
    grid: &Grid,
    layer: &Layer,
    dom: &[Domain],
    cell: usize,
    amount: f64,
    up: bool,
) -> bool {
    let coords = grid.coords(cell);
    let k = coords.len();
    let movable = |c: usize| matches!(dom[c], Domain::Range(..)) && !layer.value[c].is_nan();
    // Partners per dimension: other unknown positions on the cell's line along d.
    let mut partners: Vec<Vec<usize>> = Vec::with_capacity(k);
    for (d, &own) in coords.iter().enumerate() {
        let mut p = Vec::new();
        for i in 0..grid.radix[d] {
            if i != own && movable(with_coord(grid, cell, d, i)) {
                p.push(i);
            }
        }
        if p.is_empty() {
            return false;
        }
        partners.push(p);
    }
    let mut idx = vec![0usize; k];
    let mut tried = 0usize;
    loop {
        tried += 1;
        if box_fits(grid, layer, dom, cell, &coords, &partners, &idx, amount, up) {
            return true;
        }
        if tried > 4096 || !advance(&mut idx, &partners) {
            return false;
        }
    }
}

fn advance(idx: &mut [usize], partners: &[Vec<usize>]) -> bool {
    for d in (0..idx.len()).rev() {
        idx[d] += 1;
        if idx[d] < partners[d].len() {
            return true;
        }
        idx[d] = 0;
    }
    false
}

/// One box: corner signs follow the line structure (two members of a line move opposite
/// ways; a member and its line's total move the same way).
#[allow(clippy::too_many_arguments)]
fn box_fits(
    grid: &Grid,
    layer: &Layer,
    dom: &[Domain],
    cell: usize,
    coords: &[usize],
    partners: &[Vec<usize>],
    idx: &[usize],
    amount: f64,
    up: bool,
) -> bool {
    let k = coords.len();
    for mask in 1u64..(1u64 << k) {
        let mut c = cell;
        let mut sign = 1.0;
        for d in 0..k {
            if mask & (1 << d) != 0 {
                let to = partners[d][idx[d]];
                let total = grid.radix[d] - 1;
                if coords[d] != total && to != total {
                    sign = -sign;
                }
                c = with_coord(grid, c, d, to);
            }
        }
        if !matches!(dom[c], Domain::Range(..)) || layer.value[c].is_nan() {
            return false;
        }
        let decreases = (sign < 0.0) == up;
        if decreases && layer.value[c] < amount - tol(amount) {
            return false;
        }
        if let Domain::Range(_, hi) = dom[c]
            && !decreases
            && layer.value[c] + amount > hi + tol(hi)
        {
            return false;
        }
    }
    true
}

/// The cell with coordinate `d` replaced by `i`.
pub(crate) fn with_coord(grid: &Grid, cell: usize, d: usize, i: usize) -> usize {
    let stride: usize = grid.radix[d + 1..].iter().product();
    let cur = (cell / stride) % grid.radix[d];
    cell - cur * stride + i * stride
}

/// The unknown cells connected to `start` through lines (breadth first, nearest first),
/// stopping after `limit` cells. Returns the cells and whether the whole block was reached.
pub(crate) fn block(grid: &Grid, dom: &[Domain], start: usize, limit: usize) -> (Vec<usize>, bool) {
    let mut seen: HashMap<usize, ()> = HashMap::new();
    let mut order = Vec::new();
    let mut queue = VecDeque::from([start]);
    seen.insert(start, ());
    while let Some(c) = queue.pop_front() {
        if order.len() >= limit {
            return (order, false);
        }
        order.push(c);
        for l in &grid.lines_of[c] {
            let (members, total) = &grid.lines[*l as usize];
            for m in members.iter().chain(std::iter::once(total)) {
                let m = *m as usize;
                if matches!(dom[m], Domain::Range(..)) && seen.insert(m, ()).is_none() {
                    queue.push_back(m);
                }
            }
        }
    }
    (order, true)
}

/// The LP interval of `cell` over its block; outside a cut block, unknown cells of known true
/// value are held at it (an inner bound), others keep their domain.
pub(crate) fn lp_interval(grid: &Grid, layer: &Layer, dom: &[Domain], cell: usize) -> Interval {
    let (vars, whole) = block(grid, dom, cell, FULL_LIMIT);
    let lo = solve(
        grid,
        layer,
        dom,
        &vars,
        cell,
        OptimizationDirection::Minimize,
    );
    let hi = solve(
        grid,
        layer,
        dom,
        &vars,
        cell,
        OptimizationDirection::Maximize,
    );
    match (lo, hi) {
        (Some(lo), Some(hi)) => Interval {
            lo,
            hi,
            exact: whole,
        },
        // An LP that fails proves nothing: report the cell as pinned to its value.
        _ => {
            let x = layer.value[cell];
            Interval {
                lo: x,
                hi: x,
                exact: false,
            }
        }
    }
}

/// Minimise or maximise `target` over `vars`; `None` if the LP fails or is infeasible.
pub(crate) fn solve(
    grid: &Grid,
    layer: &Layer,
    dom: &[Domain],
    vars: &[usize],
    target: usize,
    dir: OptimizationDirection,
) -> Option<f64> {
    let mut p = Problem::new(dir);
    let mut index: HashMap<usize, microlp::Variable> = HashMap::with_capacity(vars.len());
    for &c in vars {
        let (lo, hi) = match dom[c] {
            Domain::Range(lo, hi) => (lo, hi),
            Domain::Fixed(v) => (v, v),
        };
        let obj = if c == target { 1.0 } else { 0.0 };
        index.insert(c, p.add_var(obj, (lo, hi)));
    }
    let mut lines: Vec<u32> = vars
        .iter()
        .flat_map(|c| grid.lines_of[*c].iter().copied())
        .collect();
    lines.sort_unstable();
    lines.dedup();
    for l in lines {
        let (members, total) = &grid.lines[l as usize];
        let mut expr: Vec<(microlp::Variable, f64)> = Vec::new();
        let (mut clo, mut chi) = (0.0, 0.0);
        let cells = members.iter().map(|m| (*m as usize, 1.0));
        for (c, sign) in cells.chain(std::iter::once((*total as usize, -1.0))) {
            if let Some(v) = index.get(&c) {
                expr.push((*v, sign));
                continue;
            }
            let (a, b) = outside(layer, dom, c);
            if sign > 0.0 {
                clo += a;
                chi += b;
            } else {
                clo -= b;
                chi -= a;
            }
        }
        // sum(expr) + C = 0 with C in [clo, chi].
        if clo == chi {
            p.add_constraint(expr.as_slice(), ComparisonOp::Eq, -clo);
        } else {
            if chi.is_finite() {
                p.add_constraint(expr.as_slice(), ComparisonOp::Ge, -chi);
            }
            if clo.is_finite() {
                p.add_constraint(expr.as_slice(), ComparisonOp::Le, -clo);
            }
        }
    }
    match p.solve() {
        Ok(out) => out
            .into_solution()
            .ok()
            .map(|s| s.var_value(index[&target])),
        Err(microlp::Error::Unbounded) => Some(match dir {
            OptimizationDirection::Maximize => f64::INFINITY,
            OptimizationDirection::Minimize => f64::NEG_INFINITY,
        }),
        Err(_) => None,
    }
}

/// The range a cell outside the LP contributes: its true value if known, else its domain.
fn outside(layer: &Layer, dom: &[Domain], c: usize) -> (f64, f64) {
    match dom[c] {
        Domain::Fixed(v) => (v, v),
        Domain::Range(lo, hi) => {
            let v = layer.value[c];
            if v.is_nan() { (lo, hi) } else { (v, v) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disclosure::suppress::Grid;

    fn grid2(vals: &[&[f64]], hidden: &[(usize, usize)]) -> (Grid, Layer) {
        // A full 2-D table with margins; hidden cells by (row, col).
        let c = vals[0].len();
        let (g, mut layer) = crate::disclosure::suppress::grid_with_margins(vals);
        for (i, j) in hidden {
            layer.state[i * (c + 1) + j] = State::Primary;
        }
        (g, layer)
    }

    #[test]
    fn a_rectangle_of_hidden_cells_gives_the_cycle_interval() {
        let (g, l) = grid2(
            &[&[2.0, 20.0], &[30.0, 40.0]],
            &[(0, 0), (0, 1), (1, 0), (1, 1)],
        );
        let dom = domains(&g, &l, 0.0);
        let i = lp_interval(&g, &l, &dom, 0);
        assert!(
            (i.lo - 0.0).abs() < 1e-6 && (i.hi - 22.0).abs() < 1e-6,
            "{i:?}"
        );
    }

    #[test]
    fn a_single_hidden_cell_is_pinned() {
        let (g, l) = grid2(&[&[2.0, 20.0], &[30.0, 40.0]], &[(0, 0)]);
        let dom = domains(&g, &l, 0.0);
        let i = lp_interval(&g, &l, &dom, 0);
        assert!((i.hi - i.lo).abs() < 1e-6, "{i:?}");
        let short = audit(
            &g,
            &l,
            &dom,
            &[Need {
                cell: 0,
                lo: 0.0,
                hi: 12.0,
            }],
        );
        assert_eq!(short.len(), 1);
    }

    #[test]
    fn box_certificate_agrees_with_the_lp() {
        let (g, l) = grid2(
            &[&[2.0, 20.0], &[30.0, 40.0]],
            &[(0, 0), (0, 1), (1, 0), (1, 1)],
        );
        let dom = domains(&g, &l, 0.0);
        assert!(box_certificate(&g, &l, &dom, 0, 20.0, true));
        assert!(!box_certificate(&g, &l, &dom, 0, 21.0, true));
        assert!(box_certificate(&g, &l, &dom, 0, 2.0, false));
    }
}
