//! Clean-up of a suppression pattern: publish again every complement the pattern does not
//! need.
//!
//! After any pattern (integer programme, boxes or line heuristic) has passed the audit, each
//! complement is tried in a fixed order (cells of the smallest connected group of hidden
//! cells first, then largest value, then grid position): it is published, and kept published
//! only if the audit (`need::prove`, the LP attacker of `attack`, the same one the re-check
//! uses) still proves every need it can affect. Each proof keeps its support, the cells its
//! witness tables move (`attack::Support`); a witness stays a table the attacker must
//! consider when a cell outside its support is published at its true value, so a try
//! re-audits only the needs whose support holds the cell, and a kept try replaces their
//! supports with those of the new proofs. Where supports are not tracked (a one-dimensional
//! table, audited in closed form, or hidden cells of unknown true value) a try re-audits
//! every need of the cell's connected group of hidden cells, as groups only split when a
//! cell is published. The work is capped (`AUDIT_BUDGET` need audits per layer) so that a
//! huge table cannot stall the check; the cap is deterministic. This module never hides a
//! cell and never weakens a need: when in doubt the complement stays hidden (fail closed).

use std::collections::HashMap;

use super::attack::{self, Domain, Protection, Support};
use super::need::{self, NeedSpec};
use super::suppress::{Grid, Layer, State};

/// Need audits spent per layer on trying complements before the clean-up stops.
pub(crate) const AUDIT_BUDGET: usize = 200_000;

/// Publish again every complement whose removal leaves every need met. Returns the number of
/// complements published again.
pub(crate) fn remove_redundant(
    grid: &Grid,
    layer: &mut Layer,
    protections: &[Protection],
    unit: f64,
) -> usize {
    remove_within(grid, layer, protections, unit, AUDIT_BUDGET)
}

/// [`remove_redundant`] within `budget` need audits.
fn remove_within(
    grid: &Grid,
    layer: &mut Layer,
    protections: &[Protection],
    unit: f64,
    budget: usize,
) -> usize {
    let n = layer.state.len();
    let mut dom = attack::domains(grid, layer, 0.0);
    let specs = need::needs(layer, protections, unit);
    // Connected groups of unknown cells through lines (union-find).
    let mut parent: Vec<usize> = (0..n).collect();
    let unknown = |d: &Domain| matches!(d, Domain::Range(..));
    for (members, total) in &grid.lines {
        let mut first: Option<usize> = None;
        for m in members.iter().chain(std::iter::once(total)) {
            let m = *m as usize;
            if !unknown(&dom[m]) {
                continue;
            }
            match first {
                None => first = Some(m),
                Some(f) => union(&mut parent, f, m),
            }
        }
    }
    let mut group_specs: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, s) in specs.iter().enumerate() {
        let g = find(&mut parent, s.cell());
        group_specs.entry(g).or_default().push(i);
    }
    let mut tries: Vec<(usize, f64, usize)> = (0..n)
        .filter(|c| layer.state[*c] == State::Secondary && !layer.value[*c].is_nan())
        .map(|c| {
            let g = find(&mut parent, c);
            let size = group_specs.get(&g).map_or(0, Vec::len);
            (size, layer.value[c], c)
        })
        .collect();
    tries.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)).then(a.2.cmp(&b.2)));

    // Supports of the current proofs, and per cell the needs whose support may hold it.
    let tracked = attack::line_intervals(grid, &dom).is_none()
        && !layer
            .state
            .iter()
            .zip(&layer.value)
            .any(|(s, v)| s.unknown() && v.is_nan());
    let mut spent = 0usize;
    let mut support: Vec<Support> = vec![Support::All; specs.len()];
    let mut users: Vec<Vec<u32>> = vec![Vec::new(); n];
    if tracked && !tries.is_empty() {
        spent += specs.len();
        for (i, s) in specs.iter().enumerate() {
            // A need the audit cannot prove now keeps every try of its group from passing.
            support[i] = need::prove(grid, layer, &dom, *s).unwrap_or(Support::All);
            note_users(&mut users, &support[i], i);
        }
    }
    // Per group, the needs whose support is not known: every try of the group audits them.
    let mut always: HashMap<usize, Vec<usize>> = HashMap::new();
    for (g, ix) in &group_specs {
        let all: Vec<usize> = ix
            .iter()
            .copied()
            .filter(|i| support[*i] == Support::All)
            .collect();
        if !all.is_empty() {
            always.insert(*g, all);
        }
    }
    let mut published = vec![false; n];
    let mut removed = 0usize;
    for (_, value, c) in tries {
        let g = find(&mut parent, c);
        let mut check: Vec<usize> = always
            .get(&g)
            .into_iter()
            .flatten()
            .copied()
            .chain(users[c].iter().map(|i| *i as usize))
            .filter(|i| specs[*i].cell() != c && !published[specs[*i].cell()])
            .filter(|i| support[*i].holds(c))
            .collect();
        check.sort_unstable();
        check.dedup();
        if spent + check.len() > budget {
            break;
        }
        spent += check.len();
        let before = dom[c];
        layer.state[c] = State::Published;
        dom[c] = Domain::Fixed(value);
        published[c] = true;
        let kept = if tracked {
            let proofs: Option<Vec<Support>> = check
                .iter()
                .map(|i| need::prove(grid, layer, &dom, specs[*i]).ok())
                .collect();
            proofs.map(|proofs| {
                for (i, s) in check.iter().zip(proofs) {
                    if s == Support::All && support[*i] != Support::All {
                        always.entry(g).or_default().push(*i);
                    }
                    note_users(&mut users, &s, *i);
                    support[*i] = s;
                }
            })
        } else {
            let check: Vec<NeedSpec> = check.iter().map(|i| specs[*i]).collect();
            need::audit(grid, layer, &dom, &check)
                .is_empty()
                .then_some(())
        };
        if kept.is_some() {
            removed += 1;
        } else {
            layer.state[c] = State::Secondary;
            dom[c] = before;
            published[c] = false;
        }
    }
    removed
}

/// Record need `i` as a user of every cell of its support (`All` needs are found through
/// their group instead).
fn note_users(users: &mut [Vec<u32>], support: &Support, i: usize) {
    if let Support::Cells(cells) = support {
        for c in cells {
            users[*c].push(i as u32);
        }
    }
}

fn find(parent: &mut [usize], mut x: usize) -> usize {
    while parent[x] != x {
        parent[x] = parent[parent[x]];
        x = parent[x];
    }
    x
}

fn union(parent: &mut [usize], a: usize, b: usize) {
    let (ra, rb) = (find(parent, a), find(parent, b));
    if ra != rb {
        parent[ra.max(rb)] = ra.min(rb);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disclosure::attack::{Need, audit};

    /// A full 2-D table with margins (totals known), every interior cell listed in `hidden`
    /// hidden as a complement and `primaries` as primaries.
    fn grid2(vals: &[Vec<f64>], hidden: &[usize], primaries: &[usize]) -> (Grid, Layer) {
        let c = vals[0].len();
        let (g, mut layer) = crate::disclosure::suppress::grid_with_margins(vals);
        layer.totals_known = true;
        for h in hidden {
            let (i, j) = (h / c, h % c);
            layer.state[i * (c + 1) + j] = State::Secondary;
        }
        for p in primaries {
            let (i, j) = (p / c, p % c);
            layer.state[i * (c + 1) + j] = State::Primary;
        }
        (g, layer)
    }

    /// Every primary's need, audited by the LP attacker alone; and every other hidden cell
    /// not exactly recoverable.
    fn shortfalls(g: &Grid, l: &Layer, prot: &[Protection]) -> usize {
        let dom = attack::domains(g, l, 0.0);
        let needs: Vec<Need> = prot
            .iter()
            .map(|p| Need {
                cell: p.cell,
                lo: (l.value[p.cell] - p.lpl).max(0.0),
                hi: l.value[p.cell] + p.upl,
            })
            .collect();
        let mut n = audit(g, l, &dom, &needs).len();
        for c in 0..l.state.len() {
            if l.state[c] == State::Secondary {
                let iv = attack::lp_interval(g, l, &dom, c);
                if iv.hi - iv.lo < 1.0 - 1e-9 {
                    n += 1;
                }
            }
        }
        n
    }

    fn protections(l: &Layer) -> Vec<Protection> {
        (0..l.state.len())
            .filter(|c| l.state[*c] == State::Primary)
            .map(|c| Protection {
                cell: c,
                lpl: l.value[c].min(5.0),
                upl: 5.0,
            })
            .collect()
    }

    #[test]
    fn a_planted_unnecessary_complement_is_published_again() {
        // Primary r0/c0 = 2; the whole interior hidden. r2/c2 = 90 is not needed: its row
        // and column keep two hidden cells each without it.
        let vals = vec![
            vec![2.0, 20.0, 30.0],
            vec![30.0, 40.0, 50.0],
            vec![25.0, 35.0, 90.0],
        ];
        let (g, mut l) = grid2(&vals, &(1..9).collect::<Vec<_>>(), &[0]);
        let prot = protections(&l);
        assert_eq!(shortfalls(&g, &l, &prot), 0, "the planted pattern protects");
        let removed = remove_redundant(&g, &mut l, &prot, 1.0);
        let planted = 2 * 4 + 2;
        assert_eq!(
            l.state[planted],
            State::Published,
            "the planted cell is published"
        );
        assert!(removed >= 1);
        let hidden = l.state.iter().filter(|s| s.unknown()).count();
        assert_eq!(hidden, 9 - removed);
        assert_eq!(
            shortfalls(&g, &l, &prot),
            0,
            "still protected after the clean-up"
        );
    }

    #[test]
    fn a_try_re_audits_only_the_needs_whose_witnesses_move_the_cell() {
        // A 12 x 12 table with its whole interior hidden: 144 needs, one connected group.
        // Re-auditing every need of the group at each try, a budget of ten rounds of needs
        // allows nine tries; with the proofs' supports the clean-up does all it does
        // without a limit (96 complements published again).
        let mut x = 777u64;
        let mut next = move || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            x >> 33
        };
        let (r, c) = (12, 12);
        let mut vals = vec![vec![0.0; c]; r];
        let mut primaries = Vec::new();
        for (i, row) in vals.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = if next() % 5 == 0 {
                    primaries.push(i * c + j);
                    (next() % 4 + 1) as f64
                } else {
                    (next() % 60 + 6) as f64
                };
            }
        }
        let (g, l) = grid2(&vals, &(0..r * c).collect::<Vec<_>>(), &primaries);
        let prot = protections(&l);
        assert_eq!(shortfalls(&g, &l, &prot), 0, "the full pattern protects");
        let mut unlimited = l.clone();
        let all = remove_within(&g, &mut unlimited, &prot, 1.0, usize::MAX);
        let mut tight = l.clone();
        let within = remove_within(&g, &mut tight, &prot, 1.0, 10 * r * c);
        assert!(all > 9, "only {all} complements published again");
        assert_eq!(
            within, all,
            "the budget stopped a clean-up that needs far less"
        );
        assert_eq!(tight.state, unlimited.state);
        assert_eq!(
            shortfalls(&g, &tight, &prot),
            0,
            "a need left short by the clean-up"
        );
    }

    #[test]
    fn the_clean_up_never_leaves_a_primary_short() {
        // Random tables, every interior cell hidden (which protects each primary), then
        // cleaned up; the LP attacker must still find every need met. Deterministic seeds.
        let mut x = 12345u64;
        let mut next = move || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            x >> 33
        };
        let mut cleaned = 0;
        for _ in 0..60 {
            let r = 2 + (next() % 4) as usize;
            let c = 2 + (next() % 4) as usize;
            let mut vals = vec![vec![0.0; c]; r];
            let mut primaries = Vec::new();
            for (i, row) in vals.iter_mut().enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = if next() % 4 == 0 {
                        primaries.push(i * c + j);
                        (next() % 4 + 1) as f64
                    } else {
                        (next() % 60 + 6) as f64
                    };
                }
            }
            let (g, mut l) = grid2(&vals, &(0..r * c).collect::<Vec<_>>(), &primaries);
            let prot = protections(&l);
            if shortfalls(&g, &l, &prot) != 0 {
                continue;
            }
            cleaned += remove_redundant(&g, &mut l, &prot, 1.0);
            assert_eq!(
                shortfalls(&g, &l, &prot),
                0,
                "a need left short by the clean-up"
            );
        }
        assert!(
            cleaned > 0,
            "the clean-up removed nothing on 60 over-hidden tables"
        );
    }
}
