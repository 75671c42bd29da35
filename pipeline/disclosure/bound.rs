//! Information loss: cells and value hidden, against a lower bound no protecting pattern can
//! beat.
//!
//! The bound comes from conditions every protecting pattern must meet when the attacker
//! knows the line totals: a hidden cell is never alone in a line whose total is known, and a
//! primary that must be able to rise by `UPL` needs other hidden cells in each of its known
//! lines worth at least `UPL` together (they are the only cells that can fall to make room).
//! On tables of up to [`ILP_LIMIT`] candidate cells the fewest cells and the least value
//! meeting those conditions are found exactly by integer programming (`microlp`), so they
//! bound the true optimum from below; larger tables get the primary cells as the bound. This
//! module only measures.

use std::collections::HashMap;
use std::time::Duration;

use microlp::{ComparisonOp, OptimizationDirection, Problem, SolutionStatus, Variable};

use super::Loss;
use super::protect::Protection;
use super::suppress::{Grid, Layer, State};

/// Largest number of candidate cells for the exact bound.
pub(crate) const ILP_LIMIT: usize = 400;

/// Loss of one layer after protection; `primary` marks the primary cells.
pub(crate) fn loss(
    grid: &Grid,
    layer: &Layer,
    primary: &[bool],
    protections: &[Protection],
    name: &str,
) -> Loss {
    let in_table = |c: usize| grid.row_of[c].is_some();
    let hidden =
        |c: usize| in_table(c) && matches!(layer.state[c], State::Primary | State::Secondary);
    let cells: Vec<usize> = (0..layer.state.len()).filter(|c| hidden(*c)).collect();
    let hidden_value = cells
        .iter()
        .filter(|c| !grid.is_margin(**c))
        .map(|c| layer.value[*c])
        .filter(|v| !v.is_nan())
        .fold(0.0, |a, b| a + b);
    let primaries = (0..primary.len())
        .filter(|c| primary[*c] && in_table(*c))
        .count();
    let candidates: Vec<usize> = (0..layer.state.len())
        .filter(|c| in_table(*c) && !primary[*c] && layer.value[*c] > 0.0)
        .collect();
    let exact = if protections.is_empty() {
        Some((0usize, 0.0f64))
    } else if candidates.len() <= ILP_LIMIT {
        let count = solve(grid, layer, primary, protections, &candidates, false);
        let value = solve(grid, layer, primary, protections, &candidates, true);
        count.map(|c| c.0).zip(value.map(|v| v.1))
    } else {
        None
    };
    let primary_value: f64 = (0..primary.len())
        .filter(|c| primary[*c] && in_table(*c) && !grid.is_margin(*c))
        .map(|c| layer.value[c])
        .fold(0.0, |a, b| a + b);
    let (lb_cells, lb_value, how) = match exact {
        Some((n, v)) => (
            Some(primaries + n),
            Some(primary_value + v),
            "integer programme over the necessary line conditions (fewest cells and least value solved separately)".to_string(),
        ),
        None => (
            Some(primaries),
            Some(primary_value),
            format!("the primary cells alone (the integer programme was over {ILP_LIMIT} candidate cells, had no solution or did not finish)"),
        ),
    };
    Loss {
        column: name.to_string(),
        hidden_cells: cells.len(),
        primary_cells: primaries,
        hidden_value,
        lower_bound_cells: lb_cells,
        lower_bound_value: lb_value,
        bound_method: how,
    }
}

/// Fewest complementary cells (or least value, `by_value`) meeting the necessary conditions.
fn solve(
    grid: &Grid,
    layer: &Layer,
    primary: &[bool],
    protections: &[Protection],
    candidates: &[usize],
    by_value: bool,
) -> Option<(usize, f64)> {
    let mut p = Problem::new(OptimizationDirection::Minimize);
    p.set_time_limit(Duration::from_secs(2));
    let mut y: HashMap<usize, Variable> = HashMap::new();
    for &c in candidates {
        let cost = if by_value { layer.value[c] } else { 1.0 };
        y.insert(c, p.add_binary_var(cost));
    }
    let known_line = |l: usize| !matches!(layer.state[grid.lines[l].1 as usize], State::Free);
    for l in 0..grid.lines.len() {
        if !known_line(l) {
            continue;
        }
        let (members, total) = &grid.lines[l];
        let cells: Vec<usize> = members
            .iter()
            .chain(std::iter::once(total))
            .map(|c| *c as usize)
            .collect();
        // No hidden cell alone: for each candidate c, y_c <= sum of the others (+ primaries).
        let fixed = cells.iter().filter(|c| primary[**c]).count() as f64;
        for &c in &cells {
            let Some(&yc) = y.get(&c) else { continue };
            let mut e: Vec<(Variable, f64)> = vec![(yc, 1.0)];
            e.extend(
                cells
                    .iter()
                    .filter(|o| **o != c)
                    .filter_map(|o| y.get(o))
                    .map(|v| (*v, -1.0)),
            );
            p.add_constraint(e.as_slice(), ComparisonOp::Le, fixed);
        }
        for pr in protections.iter().filter(|pr| cells.contains(&pr.cell)) {
            let others: Vec<usize> = cells.iter().copied().filter(|o| *o != pr.cell).collect();
            let fixed_mass: f64 = others
                .iter()
                .filter(|o| primary[**o])
                .map(|o| layer.value[*o])
                .sum();
            let e: Vec<(Variable, f64)> = others
                .iter()
                .filter_map(|o| y.get(o).map(|v| (*v, layer.value[*o].max(0.0))))
                .collect();
            if pr.upl > 0.0 {
                p.add_constraint(e.as_slice(), ComparisonOp::Ge, pr.upl - fixed_mass);
            }
            let n_fixed = others.iter().filter(|o| primary[**o]).count() as f64;
            let e1: Vec<(Variable, f64)> = others
                .iter()
                .filter_map(|o| y.get(o).map(|v| (*v, 1.0)))
                .collect();
            p.add_constraint(e1.as_slice(), ComparisonOp::Ge, 1.0 - n_fixed);
        }
    }
    let sol = p.solve().ok()?.into_solution().ok()?;
    if sol.status() != SolutionStatus::Optimal {
        return None;
    }
    let n = y.values().filter(|v| sol.var_value(**v) > 0.5).count();
    let value: f64 = y
        .iter()
        .filter(|(_, v)| sol.var_value(**v) > 0.5)
        .map(|(c, _)| layer.value[*c])
        .sum();
    Some((n, value))
}
