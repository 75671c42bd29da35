//! Protection patterns: the hidden cells that give each cell what it needs (the needs and
//! their audit are `need`'s).
//!
//! A primary cell needs its attacker interval (see `attack`) to cover `[x - LPL, x + UPL]`
//! (clamped at zero): for a small count the rules' safety range (by default the threshold
//! itself), for a dominated magnitude the protection its rule implies (p% of the largest
//! contribution for the p% rule; for an (n,k) rule, the amount by which the n largest
//! contributions exceed k of the cell). A complementary (secondary) cell needs only not to be
//! exactly recoverable.
//!
//! On a table of at most `exact::EXACT_LIMIT` grid cells the first pattern is the integer
//! programme's (`exact`, seeded with the boxes below); otherwise, or when it finds none, the
//! pattern is built by the hypercube method: for each primary, the cheapest box of cells
//! (two positions per dimension, 2^k corners) whose corners can absorb the required move in
//! both directions while every line keeps its sum; a box proves its own protection. Zeros and
//! cells the reader knows (totals taken as known, absent cells) are never complements. Then
//! every need is audited by the LP attacker, and cells still short get another box, then the
//! older line-and-cycle heuristic, and finally are reported as unprotected. Once every need
//! is met, `cleanup` publishes again each complement the pattern does not need. This module
//! never writes anything; the caller turns shortfalls into findings that block release.

use super::attack::{self, Protection, Shortfall};
use super::cleanup;
use super::exact;
use super::need::{audit, needs};
use super::suppress::{self, Grid, Layer, State};

/// Rounds of "audit, then add boxes for what is short" before giving up.
const ROUNDS: usize = 6;

/// The first pattern on a one-dimensional table with a known total, in n log n time: the
/// attacker's interval of a hidden cell is `[0, S]` (S the sum of the hidden cells) when at
/// least two are hidden, so every primary is protected once `S` reaches its need's upper
/// end. Hides the one smallest published cell that reaches it when one does (fewest cells,
/// then least value), else the largest cells until it is reached. Returns false (nothing
/// changed) when the table is not of that shape; the audit checks the result either way.
fn line_pattern(grid: &Grid, layer: &mut Layer, protections: &[Protection]) -> bool {
    if grid.radix.len() != 1 || grid.lines.len() != 1 || protections.is_empty() {
        return false;
    }
    let (members, total) = &grid.lines[0];
    let t = *total as usize;
    if !layer.known_total(grid, t) || layer.value[t].is_nan() {
        return false;
    }
    let mut hidden_sum = 0.0;
    let mut hidden = 0usize;
    for m in members {
        let c = *m as usize;
        if layer.state[c].unknown() {
            if layer.value[c].is_nan() {
                return false;
            }
            hidden_sum += layer.value[c];
            hidden += 1;
        }
    }
    let target = protections
        .iter()
        .map(|p| layer.value[p.cell] + p.upl)
        .fold(0.0, f64::max);
    let mut cands: Vec<(f64, usize)> = members
        .iter()
        .map(|m| *m as usize)
        .filter(|c| candidate(grid, layer, *c))
        .map(|c| (layer.value[c], c))
        .collect();
    cands.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let deficit = target - hidden_sum;
    if deficit <= 1e-9 && hidden >= 2 {
        return true;
    }
    let need = deficit.max(0.0);
    let at = cands.partition_point(|(v, _)| *v < need - 1e-9);
    if let Some((_, c)) = cands.get(at) {
        layer.state[*c] = State::Secondary;
        return true;
    }
    let mut sum = hidden_sum;
    for (n, (v, c)) in (hidden..).zip(cands.iter().rev()) {
        if sum >= target - 1e-9 && n >= 2 {
            break;
        }
        layer.state[*c] = State::Secondary;
        sum += v;
    }
    true
}

/// Build the suppression pattern for one layer whose primaries are already marked, so that
/// every need is met; returns the needs still short after every method (to be reported as
/// unprotected, which blocks release).
pub(crate) fn protect(
    grid: &Grid,
    layer: &mut Layer,
    protections: &[Protection],
    unit: f64,
    line_protection: f64,
) -> Vec<Shortfall> {
    initial_pattern(grid, layer, protections);
    let mut heuristic_used = false;
    for _ in 0..ROUNDS {
        let dom = attack::domains(grid, layer, 0.0);
        let specs = needs(layer, protections, unit);
        let short = audit(grid, layer, &dom, &specs);
        if short.is_empty() {
            cleanup::remove_redundant(grid, layer, protections, unit);
            return short;
        }
        let mut added = false;
        for s in &short {
            let x = layer.value[s.need.cell];
            let up = (s.need.hi - x).max(unit);
            let down = (x - s.need.lo).max(0.0).min(x);
            added |= hide_box_for(grid, layer, s.need.cell, up, down);
        }
        if !added {
            if heuristic_used {
                return short;
            }
            heuristic_used = true;
            suppress::secondary(grid, layer, line_protection);
        }
    }
    let dom = attack::domains(grid, layer, 0.0);
    audit(grid, layer, &dom, &needs(layer, protections, unit))
}

/// The first pattern: one cheapest box per primary; on a small table, the integer
/// programme's pattern instead (seeded with the boxes), when it finds one.
fn initial_pattern(grid: &Grid, layer: &mut Layer, protections: &[Protection]) {
    if layer.state.len() > exact::EXACT_LIMIT && line_pattern(grid, layer, protections) {
        return;
    }
    let hide_boxes = |l: &mut Layer| {
        for p in protections {
            let down = p.lpl.min(l.value[p.cell]);
            hide_box_for(grid, l, p.cell, p.upl, down);
        }
    };
    if layer.state.len() > exact::EXACT_LIMIT {
        hide_boxes(layer);
        return;
    }
    let mut boxes = layer.clone();
    hide_boxes(&mut boxes);
    let seed: Vec<usize> = (0..boxes.state.len())
        .filter(|c| boxes.state[*c] == State::Secondary && layer.state[*c] == State::Published)
        .collect();
    match exact::pattern(grid, layer, protections, &seed) {
        Some(cells) => {
            for c in cells {
                layer.state[c] = State::Secondary;
            }
        }
        None => *layer = boxes,
    }
}

/// Whether a cell may become a complement: in the table, published, not zero.
fn candidate(grid: &Grid, layer: &Layer, c: usize) -> bool {
    layer.state[c] == State::Published
        && grid.row_of[c].is_some()
        && layer.value[c] > 0.0
        && !layer.known_total(grid, c)
}

/// Whether a cell can be a box corner: hidden already (of known value) or a candidate.
fn corner_ok(grid: &Grid, layer: &Layer, c: usize) -> bool {
    let known_total = layer.known_total(grid, c);
    (layer.state[c].unknown() && !layer.value[c].is_nan() && !known_total)
        || candidate(grid, layer, c)
}

/// Hide the cheapest box through `cell` that lets it move `up` and `down`; true if any
/// cell was newly hidden.
fn hide_box_for(grid: &Grid, layer: &mut Layer, cell: usize, up: f64, down: f64) -> bool {
    if layer.value[cell].is_nan() {
        return false;
    }
    let Some(corners) = best_box(grid, layer, cell, up, down) else {
        return false;
    };
    let mut added = false;
    for c in corners {
        if layer.state[c] == State::Published {
            layer.state[c] = State::Secondary;
            added = true;
        }
    }
    added
}

/// Candidates per dimension, cheapest first, at most `keep` of them.
fn partners(grid: &Grid, layer: &Layer, cell: usize, keep: usize) -> Option<Vec<Vec<usize>>> {
    let coords = grid.coords(cell);
    let mut out = Vec::with_capacity(coords.len());
    for (d, &own) in coords.iter().enumerate() {
        let mut p: Vec<(f64, usize)> = (0..grid.radix[d])
            .filter(|i| *i != own)
            .map(|i| (i, attack::with_coord(grid, cell, d, i)))
            .filter(|(_, c)| corner_ok(grid, layer, *c))
            .map(|(i, c)| {
                (
                    if layer.state[c].unknown() {
                        0.0
                    } else {
                        layer.value[c]
                    },
                    i,
                )
            })
            .collect();
        if p.is_empty() {
            return None;
        }
        p.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        // Keep the cheapest, and the cheapest of those large enough to absorb the move.
        let mut keepers: Vec<usize> = p.iter().take(keep).map(|x| x.1).collect();
        keepers.extend(p.iter().rev().take(keep).map(|x| x.1));
        keepers.sort_unstable();
        keepers.dedup();
        out.push(keepers);
    }
    Some(out)
}

/// The cheapest feasible box (corners other than `cell`), or None.
fn best_box(grid: &Grid, layer: &Layer, cell: usize, up: f64, down: f64) -> Option<Vec<usize>> {
    let k = grid.radix.len();
    let keep = match k {
        0 => return None,
        1 | 2 => 12,
        3 => 4,
        _ => 2,
    };
    let parts = partners(grid, layer, cell, keep)?;
    let coords = grid.coords(cell);
    let mut idx = vec![0usize; k];
    let mut best: Option<(f64, Vec<usize>)> = None;
    loop {
        if let Some((cost, corners)) = box_cost(grid, layer, cell, &coords, &parts, &idx, up, down)
            && best.as_ref().is_none_or(|b| cost < b.0)
        {
            best = Some((cost, corners));
        }
        if !next(&mut idx, &parts) {
            break;
        }
    }
    best.map(|b| b.1)
}

fn next(idx: &mut [usize], parts: &[Vec<usize>]) -> bool {
    for d in (0..idx.len()).rev() {
        idx[d] += 1;
        if idx[d] < parts[d].len() {
            return true;
        }
        idx[d] = 0;
    }
    false
}

/// Cost (value newly hidden) and corners of one box, if every corner may take part and the
/// decreasing corners can absorb the moves.
#[allow(clippy::too_many_arguments)]
fn box_cost(
    grid: &Grid,
    layer: &Layer,
    cell: usize,
    coords: &[usize],
    parts: &[Vec<usize>],
    idx: &[usize],
    up: f64,
    down: f64,
) -> Option<(f64, Vec<usize>)> {
    let k = coords.len();
    let mut cost = 0.0;
    let mut corners = Vec::with_capacity((1 << k) - 1);
    for mask in 1u64..(1u64 << k) {
        let mut c = cell;
        let mut sign = 1.0;
        for d in 0..k {
            if mask & (1 << d) != 0 {
                let to = parts[d][idx[d]];
                let total = grid.radix[d] - 1;
                if coords[d] != total && to != total {
                    sign = -sign;
                }
                c = attack::with_coord(grid, c, d, to);
            }
        }
        if !corner_ok(grid, layer, c) {
            return None;
        }
        let v = layer.value[c];
        // Moving the cell up, corners of sign -1 go down; moving it down, corners of sign +1 do.
        let need = if sign < 0.0 { up } else { down };
        if v < need - 1e-9 {
            return None;
        }
        if layer.state[c] == State::Published {
            cost += v;
        }
        corners.push(c);
    }
    Some((cost, corners))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disclosure::attack::{Need, domains};

    fn one_dim(vals: &[f64]) -> (Grid, Layer) {
        let mut a: Vec<String> = (0..vals.len()).map(|i| format!("r{i}")).collect();
        a.push("Total".into());
        let mut v: Vec<Option<f64>> = vals.iter().map(|x| Some(*x)).collect();
        v.push(Some(vals.iter().sum()));
        let g = Grid::build(&[("a".into(), a)], v.len(), &["Total".into()]).expect("grid");
        (g.clone(), Layer::from_rows(&g, &v).0)
    }

    #[test]
    fn ons_example_hides_a_complement_of_at_least_the_threshold() {
        // a,n / r0,1 / r1,10 / r2,40 / r3,49 / Total,100 under a threshold of 10.
        let (g, mut l) = one_dim(&[1.0, 10.0, 40.0, 49.0]);
        l.state[0] = State::Primary;
        let p = [Protection {
            cell: 0,
            lpl: 10.0,
            upl: 10.0,
        }];
        let short = protect(&g, &mut l, &p, 1.0, 10.0);
        assert!(short.is_empty(), "{short:?}");
        assert_eq!(l.state[1], State::Secondary);
        let dom = domains(&g, &l, 0.0);
        let i = attack::interval_for(
            &g,
            &l,
            &dom,
            Need {
                cell: 0,
                lo: 0.0,
                hi: 11.0,
            },
        );
        assert!(i.hi >= 11.0 - 1e-9 && i.lo <= 0.0 + 1e-9, "{i:?}");
    }

    #[test]
    fn zeros_are_never_complements() {
        let (g, mut l) = one_dim(&[3.0, 0.0, 40.0]);
        l.state[0] = State::Primary;
        let p = [Protection {
            cell: 0,
            lpl: 10.0,
            upl: 10.0,
        }];
        let short = protect(&g, &mut l, &p, 1.0, 10.0);
        assert!(short.is_empty());
        assert_eq!(l.state[1], State::Published);
        assert_eq!(l.state[2], State::Secondary);
    }
}
