//! The exact suppression pattern for small tables: an integer programme (`microlp`).
//!
//! For a table of at most [`EXACT_LIMIT`] grid cells (margins included) this module chooses
//! the complementary cells by mixed-integer programming, in the compact form of Fischetti
//! and Salazar's model: one binary per candidate cell (1 = hide it), and for every primary
//! and each direction it must be able to move, a *deviation table* `f` over the grid that
//! keeps every line sum (`sum of members - total = 0`), moves the primary by exactly its
//! protection (up by `UPL`, down by `LPL` clamped at its value), never takes a cell below
//! zero (`f_c >= -x_c`), and moves only hidden cells (`-min(x_c, a) z_c <= f_c <= a z_c`
//! for a candidate, `a` the primary's move: in a 1-D or 2-D table no cell of a minimal
//! deviation moves further; published cells, known totals, zeros and absent cells stay
//! fixed). A feasible
//! deviation table is a table the attacker cannot rule out, so every primary's attacker
//! interval covers its protection interval. The objective is the number of cells hidden,
//! ties broken by the value hidden. The heuristic pattern seeds the search, and a node limit
//! keeps it deterministic; an unproven incumbent is still a valid pattern.
//!
//! Scope and danger: the model protects primaries only; complements are then audited by
//! the LP attacker like any pattern (`protect`), and anything still short gets the
//! heuristic's boxes. This module never marks a cell itself: it returns the cells to hide.

use microlp::{ComparisonOp, LinearExpr, OptimizationDirection, Problem, SolveOptions, Variable};

use super::attack::Protection;
use super::suppress::{Grid, Layer, State};

/// Largest grid (cells, margins included) solved exactly; larger tables use the heuristic.
pub(crate) const EXACT_LIMIT: usize = 100;

/// Largest model (deviation variables: two tables per primary, one variable per cell)
/// solved exactly: about 24 primaries on an 8 x 8 table with margins.
const MODEL_LIMIT: usize = 4_000;

/// Branch-and-bound nodes before the best pattern found so far is taken.
const NODE_LIMIT: u64 = 60;

#[cfg(test)]
thread_local! {
    /// Figures only: when set, `pattern` solves to proven optimality (no node limit) and
    /// records the number of complements of each optimum here.
    pub(crate) static PROVE_OPTIMUM: std::cell::RefCell<Option<Vec<usize>>> =
        const { std::cell::RefCell::new(None) };
}

/// What the model knows about one grid cell.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cell {
    /// Fixed: the attacker knows it (published, a known total, an absent cell).
    Fixed,
    /// Hidden already (a primary, or a total nobody publishes): moves freely, never below 0.
    Free,
    /// May become a complement: moves only if its binary is 1.
    Candidate(usize),
}

/// The cells to hide besides the primaries, or `None` when the table is too large, holds a
/// hidden cell of unknown value, or the programme has no solution within its node limit.
/// `seed` is a pattern known to be feasible (the heuristic's), used as a warm start.
pub(crate) fn pattern(
    grid: &Grid,
    layer: &Layer,
    protections: &[Protection],
    seed: &[usize],
) -> Option<Vec<usize>> {
    let size = layer.state.len();
    if size > EXACT_LIMIT || protections.is_empty() || 2 * protections.len() * size > MODEL_LIMIT {
        return None;
    }
    if (0..size).any(|c| layer.state[c].unknown() && !layer.value[c].is_finite()) {
        return None;
    }
    let (kind, candidates) = cells(grid, layer);
    // A primary the reader knows (a total taken as known) cannot move: not this model's.
    if protections.iter().any(|p| kind[p.cell] == Cell::Fixed) {
        return None;
    }
    let total_value: f64 = candidates.iter().map(|c| layer.value[*c]).sum();
    let mut p = Problem::new(OptimizationDirection::Minimize);
    let z: Vec<Variable> = candidates
        .iter()
        .map(|c| p.add_binary_var(1.0 + layer.value[*c] / (1.0 + total_value)))
        .collect();
    for pr in protections {
        let x = layer.value[pr.cell];
        for amount in [pr.upl, -pr.lpl.min(x)] {
            if amount != 0.0 {
                deviation_table(&mut p, grid, layer, &kind, &z, pr.cell, amount);
            }
        }
    }
    let warm: Vec<(Variable, f64)> = candidates
        .iter()
        .zip(&z)
        .map(|(c, v)| (*v, if seed.contains(c) { 1.0 } else { 0.0 }))
        .collect();
    let mut options = SolveOptions::default();
    options.node_limit = Some(NODE_LIMIT);
    options.warm_start = Some(warm);
    #[cfg(test)]
    let prove = PROVE_OPTIMUM.with(|o| o.borrow().is_some());
    #[cfg(test)]
    if prove {
        options.node_limit = None;
    }
    // Optimal, or the best incumbent within the node limit: either is a valid pattern.
    let sol = p.solve_with(options).ok()?.into_solution().ok()?;
    #[cfg(test)]
    if prove {
        let n = z.iter().filter(|v| sol.var_value(**v) > 0.5).count();
        PROVE_OPTIMUM.with(|o| o.borrow_mut().as_mut().map(|v| v.push(n)));
    }
    Some(
        candidates
            .iter()
            .zip(&z)
            .filter(|(_, v)| sol.var_value(**v) > 0.5)
            .map(|(c, _)| *c)
            .collect(),
    )
}

/// Each cell's part in the model, and the candidate cells in grid order.
fn cells(grid: &Grid, layer: &Layer) -> (Vec<Cell>, Vec<usize>) {
    let mut candidates = Vec::new();
    let kind = (0..layer.state.len())
        .map(|c| {
            let known_total = layer.known_total(grid, c);
            match layer.state[c] {
                s if s.unknown() && !known_total => Cell::Free,
                State::Published
                    if grid.row_of[c].is_some() && layer.value[c] > 0.0 && !known_total =>
                {
                    candidates.push(c);
                    Cell::Candidate(candidates.len() - 1)
                }
                _ => Cell::Fixed,
            }
        })
        .collect();
    (kind, candidates)
}

/// One deviation table: the primary `cell` moves by `amount` (signed), every line keeps
/// its sum, every cell stays non-negative, and only hidden cells move.
#[allow(clippy::too_many_arguments)]
fn deviation_table(
    p: &mut Problem,
    grid: &Grid,
    layer: &Layer,
    kind: &[Cell],
    z: &[Variable],
    cell: usize,
    amount: f64,
) {
    // No other cell moves by more than the primary does: in a 1-D or 2-D table every
    // minimal deviation is a sum of cycles through the primary, each carrying part of
    // `amount`; elsewhere this only narrows the witnesses sought (still a proof).
    let reach = amount.abs();
    let f: Vec<Option<Variable>> = kind
        .iter()
        .enumerate()
        .map(|(c, k)| match k {
            Cell::Fixed => None,
            _ if c == cell => Some(p.add_var(0.0, (amount, amount))),
            Cell::Free => Some(p.add_var(0.0, (-layer.value[c].min(reach), reach))),
            Cell::Candidate(i) => {
                let down = layer.value[c].min(reach);
                let v = p.add_var(0.0, (-down, reach));
                p.add_constraint([(v, 1.0), (z[*i], down)], ComparisonOp::Ge, 0.0);
                p.add_constraint([(v, 1.0), (z[*i], -reach)], ComparisonOp::Le, 0.0);
                Some(v)
            }
        })
        .collect();
    for (members, total) in &grid.lines {
        let mut e = LinearExpr::empty();
        let mut any = false;
        for m in members {
            if let Some(v) = f[*m as usize] {
                e.add(v, 1.0);
                any = true;
            }
        }
        if let Some(v) = f[*total as usize] {
            e.add(v, -1.0);
            any = true;
        }
        if any {
            p.add_constraint(e, ComparisonOp::Eq, 0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disclosure::attack::{self, Need};
    use crate::disclosure::suppress::complete;

    /// A 2-D table with margins taken as known.
    fn grid2(vals: &[&[f64]]) -> (Grid, Layer) {
        let (r, c) = (vals.len(), vals[0].len());
        let (mut d0, mut d1, mut v) = (Vec::new(), Vec::new(), Vec::new());
        for (i, row) in vals.iter().enumerate() {
            for (j, x) in row.iter().enumerate() {
                d0.push(format!("r{i}"));
                d1.push(format!("c{j}"));
                v.push(Some(*x));
            }
        }
        let dims = vec![("a".to_string(), d0), ("b".to_string(), d1)];
        let g = Grid::build(&dims, r * c, &["Total".to_string()]).expect("grid");
        let (mut layer, _) = Layer::from_rows(&g, &v);
        complete(&g, &mut layer, true);
        (g, layer)
    }

    fn protect_cells(g: &Grid, l: &mut Layer, small: &[usize], safety: f64) -> Vec<Protection> {
        small
            .iter()
            .map(|c| {
                l.state[*c] = State::Primary;
                Protection {
                    cell: *c,
                    lpl: safety,
                    upl: safety,
                }
            })
            .inspect(|p| assert!(g.row_of[p.cell].is_some()))
            .collect()
    }

    #[test]
    fn a_single_primary_in_a_2d_table_needs_exactly_a_four_cell_box() {
        let (g, mut l) = grid2(&[&[3.0, 20.0, 30.0], &[25.0, 40.0, 50.0], &[50.0, 60.0, 70.0]]);
        let p = protect_cells(&g, &mut l, &[0], 5.0);
        let cells = pattern(&g, &l, &p, &[]).expect("pattern");
        assert_eq!(cells.len(), 3, "{cells:?}");
        for c in &cells {
            l.state[*c] = State::Secondary;
        }
        let dom = attack::domains(&g, &l, 0.0);
        let need = Need {
            cell: 0,
            lo: 0.0,
            hi: 8.0,
        };
        assert!(attack::audit(&g, &l, &dom, &[need]).is_empty());
    }

    #[test]
    fn zeros_and_known_totals_are_never_chosen() {
        let (g, mut l) = grid2(&[&[2.0, 0.0, 30.0], &[0.0, 40.0, 50.0], &[50.0, 60.0, 70.0]]);
        let p = protect_cells(&g, &mut l, &[0], 5.0);
        let cells = pattern(&g, &l, &p, &[]).expect("pattern");
        for c in cells {
            assert!(l.value[c] > 0.0 && !g.is_margin(c), "cell {c}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 24, .. proptest::prelude::ProptestConfig::default() })]

        /// The programme's pattern alone (no boxes, no heuristic after it) gives every
        /// primary its whole protection interval under the LP attacker.
        #[test]
        fn the_exact_pattern_alone_protects_every_primary(
            r in 2usize..=5,
            c in 2usize..=5,
            vals in proptest::collection::vec(proptest::prop_oneof![0u32..10, 10u32..120], 25),
        ) {
            let rows: Vec<Vec<f64>> = (0..r)
                .map(|i| (0..c).map(|j| f64::from(vals[i * 5 + j])).collect())
                .collect();
            let refs: Vec<&[f64]> = rows.iter().map(Vec::as_slice).collect();
            let (g, mut l) = grid2(&refs);
            let small: Vec<usize> = (0..g.cell_of_row.len())
                .map(|row| g.cell_of_row[row])
                .filter(|cell| l.value[*cell] > 0.0 && l.value[*cell] < 10.0)
                .collect();
            let p = protect_cells(&g, &mut l, &small, 10.0);
            // A table with no primary, or one no pattern can protect, is not this test's
            // case (proptest fails if too many are rejected).
            let found = pattern(&g, &l, &p, &[]);
            proptest::prop_assume!(!p.is_empty() && found.is_some());
            for c in found.unwrap_or_default() {
                proptest::prop_assert!(l.value[c] > 0.0 && !g.is_margin(c));
                l.state[c] = State::Secondary;
            }
            let dom = attack::domains(&g, &l, 0.0);
            let needs: Vec<Need> = p
                .iter()
                .map(|p| Need { cell: p.cell, lo: (l.value[p.cell] - p.lpl).max(0.0), hi: l.value[p.cell] + p.upl })
                .collect();
            let short = attack::audit(&g, &l, &dom, &needs);
            proptest::prop_assert!(short.is_empty(), "{short:?}");
        }
    }

    #[test]
    fn tables_over_the_limit_are_left_to_the_heuristic() {
        let row: Vec<f64> = vec![20.0; 11];
        let rows: Vec<&[f64]> = (0..11).map(|_| row.as_slice()).collect();
        let (g, mut l) = grid2(&rows);
        let p = protect_cells(&g, &mut l, &[0], 5.0);
        assert!(l.state.len() > EXACT_LIMIT);
        assert_eq!(pattern(&g, &l, &p, &[]), None);
    }
}
