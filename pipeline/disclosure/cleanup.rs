//! Clean-up of a suppression pattern: publish again every complement the pattern does not
//! need.
//!
//! After any pattern (integer programme, boxes or line heuristic) has passed the audit, each
//! complement is tried in a fixed order (cells of the smallest connected group of hidden
//! cells first, then largest value, then grid position): it is published, and kept published
//! only if the audit (`need::audit`, the LP attacker of `attack`, the same one the
//! re-check uses) still proves every need of the hidden cells it can affect. Publishing a
//! cell changes the attacker's linear programme only for the hidden cells connected to it
//! through lines holding hidden cells (its connected group), so only their needs are
//! re-audited; groups only split when a cell is published, so the groups computed once
//! before the first try stay a safe superset. The work is capped (`AUDIT_BUDGET` need audits
//! per layer) so that a huge connected group cannot stall the check; the cap is
//! deterministic. This module never hides a cell and never weakens a need: when in doubt the
//! complement stays hidden (fail closed).

use super::attack::{self, Domain, Protection};
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
    let mut group_specs: std::collections::HashMap<usize, Vec<usize>> = Default::default();
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
    let mut published = vec![false; n];
    let mut spent = 0usize;
    let mut removed = 0usize;
    for (size, value, c) in tries {
        if spent + size > AUDIT_BUDGET {
            break;
        }
        spent += size;
        let g = find(&mut parent, c);
        let before = dom[c];
        layer.state[c] = State::Published;
        dom[c] = Domain::Fixed(value);
        published[c] = true;
        let check: Vec<NeedSpec> = group_specs
            .get(&g)
            .map(|ix| {
                ix.iter()
                    .map(|i| specs[*i])
                    .filter(|s| !published[s.cell()])
                    .collect()
            })
            .unwrap_or_default();
        if need::audit(grid, layer, &dom, &check).is_empty() {
            removed += 1;
        } else {
            layer.state[c] = State::Secondary;
            dom[c] = before;
            published[c] = false;
        }
    }
    removed
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
