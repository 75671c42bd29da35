//! The property: random small populations, random tables over them (patients,
//! rows and sums; random filters, dimensions, totals and rounding) released in sequence
//! through the guard; an independent attacker (its own grouping and its own linear
//! programmes, written without the guard's code) never pins a small group or narrows its
//! count, rows or sum below its protection interval over what was released.

use std::collections::BTreeMap;

use microlp::{ComparisonOp, OptimizationDirection, Problem};
use proptest::prelude::*;

use super::tests::Rng;
use super::*;

const T: u32 = 3;
const MEASURES: [&str; 3] = ["patients", "rows", "sum:v"];

#[derive(Clone, Copy)]
struct P {
    attr: [u32; 3],
    rows: f64,
    v: f64,
    /// Which of four codes the patient has (a table of patients by code puts them in the
    /// cell of each: cells that share patients).
    codes: [bool; 4],
}

fn people(rng: &mut Rng, n: u32) -> Vec<P> {
    (0..n)
        .map(|_| P {
            attr: [rng.below(3), rng.below(3), rng.below(2)],
            rows: f64::from(1 + rng.below(3)),
            v: f64::from(rng.below(20)),
            codes: [0, 1, 2, 3].map(|_| rng.below(3) == 0),
        })
        .collect()
}

/// A random table: filter, one or two dimensions, some measures, small cells hidden,
/// sometimes a grand total, sometimes counts rounded to an interval; or, one time in
/// four, patients by code (cells that share patients).
fn random_table(rng: &mut Rng, id: usize, pop: &[P]) -> Release {
    if rng.below(4) == 0 {
        return by_code(rng, id, pop);
    }
    let filter = match rng.below(4) {
        0 => None,
        _ => Some((rng.below(3) as usize, rng.below(3), rng.below(2) == 0)),
    };
    let skip = (rng.below(3) == 0).then(|| rng.below(pop.len() as u32));
    let d1 = rng.below(3) as usize;
    let d2 = (rng.below(2) == 0).then(|| rng.below(3) as usize);
    let mut measures = vec![];
    for m in MEASURES {
        if rng.below(3) != 0 {
            measures.push(m);
        }
    }
    if measures.is_empty() {
        measures.push("patients");
    }
    let round = rng.below(4) == 0;
    let total = rng.below(3) == 0;
    let mut cells: BTreeMap<(u32, u32), Vec<u32>> = BTreeMap::new();
    for (i, p) in pop.iter().enumerate() {
        let keep = filter.is_none_or(|(a, v, eq)| (p.attr[a] == v) == eq) && skip != Some(i as u32);
        if keep {
            let k = (p.attr[d1], d2.map_or(0, |d| p.attr[d]));
            cells.entry(k).or_default().push(i as u32);
        }
    }
    let value = |m: &str, p: &P| match m {
        "patients" => 1.0,
        "rows" => p.rows,
        _ => p.v,
    };
    let mut table = ReceivedTable {
        format: 1,
        table: format!("job-{id}"),
        threshold: T,
        measures: measures.iter().map(|m| m.to_string()).collect(),
        cells: vec![],
        totals: vec![],
        sum_protection: None,
    };
    let mut membership = Membership::new(measures.len());
    for (c, (k, ids)) in cells.iter().enumerate() {
        let small = (ids.len() as u32) < T;
        let values = measures
            .iter()
            .map(|m| {
                let x: f64 = ids.iter().map(|i| value(m, &pop[*i as usize])).sum();
                if small {
                    Published::Hidden
                } else if round && *m == "patients" {
                    Published::Interval(x - 1.0, x + 1.0)
                } else {
                    Published::Exact(x)
                }
            })
            .collect();
        table.cells.push(ReceivedCell {
            key: vec![format!("{}|{}", k.0, k.1)],
            values,
        });
        for i in ids {
            let p = &pop[*i as usize];
            let v: Vec<f64> = measures.iter().map(|m| value(m, p)).collect();
            membership.push(*i, c as u32, &v);
        }
    }
    let n: usize = cells.values().map(Vec::len).sum();
    if total && n as u32 >= T {
        table.totals.push(ReceivedTotal {
            cells: (0..cells.len() as u32).collect(),
            values: measures
                .iter()
                .map(|m| {
                    Published::Exact(
                        cells
                            .values()
                            .flatten()
                            .map(|i| value(m, &pop[*i as usize]))
                            .sum(),
                    )
                })
                .collect(),
        });
    }
    Release { table, membership }
}

/// Patients and events by code over a random filter, small cells hidden, no total.
fn by_code(rng: &mut Rng, id: usize, pop: &[P]) -> Release {
    let filter = (rng.below(2) == 0).then(|| (rng.below(3) as usize, rng.below(3)));
    let mut table = ReceivedTable {
        format: 1,
        table: format!("job-{id}"),
        threshold: T,
        measures: vec!["patients".into(), "rows".into()],
        cells: vec![],
        totals: vec![],
        sum_protection: None,
    };
    let mut membership = Membership::new(2);
    for c in 0..4 {
        let ids: Vec<u32> = (0..pop.len() as u32)
            .filter(|i| {
                let p = &pop[*i as usize];
                p.codes[c] && filter.is_none_or(|(a, v)| p.attr[a] == v)
            })
            .collect();
        // A patient's events of code c: 1 to 3, from their rows and the code.
        let events = |i: u32| (pop[i as usize].rows + c as f64) % 3.0 + 1.0;
        let small = (ids.len() as u32) < T;
        let value = |v: f64| {
            if small {
                Published::Hidden
            } else {
                Published::Exact(v)
            }
        };
        table.cells.push(ReceivedCell {
            key: vec![format!("code{c}")],
            values: vec![
                value(ids.len() as f64),
                value(ids.iter().map(|i| events(*i)).sum()),
            ],
        });
        for i in ids {
            membership.push(i, c as u32, &[1.0, events(i)]);
        }
    }
    Release { table, membership }
}

/// The attacker's published facts about measure `m`: each is (table, patients' cells it
/// covers, lo, hi).
struct Fact {
    table: usize,
    cells: Vec<u32>,
    lo: f64,
    hi: f64,
}

fn facts(released: &[Release], m: &str) -> Vec<Fact> {
    let mut out = vec![];
    for (t, r) in released.iter().enumerate() {
        let Some(mi) = r.table.measures.iter().position(|x| x == m) else {
            continue;
        };
        for (c, cell) in r.table.cells.iter().enumerate() {
            match cell.values[mi] {
                Published::Exact(v) => out.push(Fact {
                    table: t,
                    cells: vec![c as u32],
                    lo: v,
                    hi: v,
                }),
                Published::Interval(lo, hi) => out.push(Fact {
                    table: t,
                    cells: vec![c as u32],
                    lo,
                    hi,
                }),
                Published::Hidden => {}
            }
        }
        for tot in &r.table.totals {
            if let Published::Exact(v) = tot.values[mi] {
                out.push(Fact {
                    table: t,
                    cells: tot.cells.clone(),
                    lo: v,
                    hi: v,
                });
            }
        }
    }
    out
}

/// One patient's cells per table, with their contributions.
type CellsOf = BTreeMap<usize, Vec<(u32, Vec<f64>)>>;

/// The key of a group's one patients unknown in a table (it stands in all its cells).
const ALL_CELLS: u32 = u32::MAX;

/// A patient's contribution to measure `mi` in cell `c` of table `t` (0 outside it).
fn contribution(cells: &CellsOf, t: usize, c: u32, mi: usize) -> f64 {
    present(cells, t, c, mi).unwrap_or(0.0)
}

/// A patient's contribution to cell `c` of table `t`, `None` when they are not in it (a
/// patient absent from a cell and one in it with 0 do not contribute "alike": only the
/// same statistic over the same rows is known to be equal).
fn present(cells: &CellsOf, t: usize, c: u32, mi: usize) -> Option<f64> {
    cells
        .get(&t)
        .and_then(|cs| cs.iter().find(|(cc, _)| *cc == c))
        .map(|(_, v)| v[mi])
}

/// Everything the attacker finds wrong over `released`: (measure, group size, what).
fn attack(released: &[Release], patients: usize) -> Vec<String> {
    let mut found = vec![];
    for m in MEASURES {
        let facts = facts(released, m);
        if facts.is_empty() {
            continue;
        }
        // Each patient: which facts they are in (a bit string); their cells per table (one,
        // or one per code in a table by code).
        let mut cell_of: Vec<CellsOf> = vec![BTreeMap::new(); patients];
        for (t, r) in released.iter().enumerate() {
            for i in 0..r.membership.len() {
                let c: Vec<f64> = r.membership.contribution.iter().map(|col| col[i]).collect();
                cell_of[r.membership.patient[i] as usize]
                    .entry(t)
                    .or_default()
                    .push((r.membership.cell[i], c));
            }
        }
        let mut groups: BTreeMap<Vec<bool>, Vec<usize>> = BTreeMap::new();
        for (p, cells) in cell_of.iter().enumerate() {
            let bits: Vec<bool> = facts
                .iter()
                .map(|f| {
                    cells
                        .get(&f.table)
                        .is_some_and(|cs| cs.iter().any(|(c, _)| f.cells.contains(c)))
                })
                .collect();
            if bits.iter().any(|b| *b) {
                groups.entry(bits).or_default().push(p);
            }
        }
        // Unknowns: for patients one per group; else one per group and cell, those of
        // cells of different tables one unknown where the group's members contribute
        // alike to both (never two cells of one table: they hold different rows).
        let groups: Vec<(Vec<bool>, Vec<usize>)> = groups.into_iter().collect();
        let mut unknown_of: BTreeMap<(usize, usize, u32), usize> = BTreeMap::new();
        let mut owner: Vec<usize> = vec![];
        for (g, (bits, members)) in groups.iter().enumerate() {
            let mut patterns: Vec<(Vec<u64>, usize, Vec<usize>)> = vec![];
            for (t, r) in released.iter().enumerate() {
                if !facts.iter().zip(bits).any(|(f, b)| *b && f.table == t) {
                    continue;
                }
                let mi = r.table.measures.iter().position(|x| x == m).unwrap_or(0);
                let mut cells: Vec<u32> = members
                    .iter()
                    .flat_map(|p| cell_of[*p].get(&t).into_iter().flatten().map(|(c, _)| *c))
                    .collect();
                cells.sort_unstable();
                cells.dedup();
                if m == "patients" {
                    cells = vec![ALL_CELLS];
                }
                for c in cells {
                    let pattern: Vec<u64> = members
                        .iter()
                        .map(|p| {
                            if m == "patients" {
                                1
                            } else {
                                present(&cell_of[*p], t, c, mi).map_or(u64::MAX, f64::to_bits)
                            }
                        })
                        .collect();
                    let found = patterns
                        .iter_mut()
                        .find(|x| x.0 == pattern && (m == "patients" || !x.2.contains(&t)));
                    let id = match found {
                        Some(x) => {
                            x.2.push(t);
                            x.1
                        }
                        None => {
                            owner.push(g);
                            patterns.push((pattern, owner.len() - 1, vec![t]));
                            owner.len() - 1
                        }
                    };
                    unknown_of.insert((g, t, c), id);
                }
            }
        }
        // The unknowns of group `g` in fact `f`.
        let in_fact = |g: usize, f: &Fact| -> Vec<usize> {
            if m == "patients" {
                return unknown_of
                    .get(&(g, f.table, ALL_CELLS))
                    .into_iter()
                    .copied()
                    .collect();
            }
            f.cells
                .iter()
                .filter_map(|c| unknown_of.get(&(g, f.table, *c)).copied())
                .collect()
        };
        let solve = |target: usize, dir: OptimizationDirection| -> Option<f64> {
            let mut p = Problem::new(dir);
            let vars: Vec<_> = (0..owner.len())
                .map(|u| p.add_var(if u == target { 1.0 } else { 0.0 }, (0.0, f64::INFINITY)))
                .collect();
            for (fi, f) in facts.iter().enumerate() {
                let expr: Vec<_> = groups
                    .iter()
                    .enumerate()
                    .filter(|(_, (bits, _))| bits[fi])
                    .flat_map(|(g, _)| in_fact(g, f))
                    .map(|u| (vars[u], 1.0))
                    .collect();
                if f.lo == f.hi {
                    p.add_constraint(expr.as_slice(), ComparisonOp::Eq, f.lo);
                } else {
                    p.add_constraint(expr.as_slice(), ComparisonOp::Ge, f.lo);
                    p.add_constraint(expr.as_slice(), ComparisonOp::Le, f.hi);
                }
            }
            match p.solve() {
                Ok(o) => o.into_solution().ok().map(|s| s.var_value(vars[target])),
                Err(microlp::Error::Unbounded) => Some(f64::INFINITY),
                Err(_) => None,
            }
        };
        for (g, (bits, members)) in groups.iter().enumerate() {
            let n = members.len() as u32;
            if n >= T {
                continue;
            }
            let mut ids: Vec<usize> = unknown_of
                .iter()
                .filter(|((gg, _, _), _)| *gg == g)
                .map(|(_, u)| *u)
                .collect();
            ids.sort_unstable();
            ids.dedup();
            for u in ids {
                let lo = solve(u, OptimizationDirection::Minimize);
                let hi = solve(u, OptimizationDirection::Maximize);
                let (Some(lo), Some(hi)) = (lo, hi) else {
                    found.push(format!("{m}: the attacker's programme failed"));
                    continue;
                };
                if m == "patients" {
                    let n = f64::from(n);
                    let cap = facts
                        .iter()
                        .zip(bits)
                        .filter(|(_, b)| **b)
                        .map(|(f, _)| f.hi)
                        .fold(f64::INFINITY, f64::min);
                    let need_lo = (n - f64::from(T)).max(0.0);
                    let need_hi = (n + f64::from(T)).min(cap).max(n);
                    if lo > need_lo + 1e-6 || hi < need_hi - 1e-6 {
                        found.push(format!(
                            "patients: a group of {n} has [{lo}, {hi}], needs [{need_lo}, {need_hi}]"
                        ));
                    }
                } else {
                    // The unknown's truth and the published upper bounds over it (all
                    // contributions are >= 0 here), computed afresh from the members.
                    let at: Vec<(usize, u32)> = unknown_of
                        .iter()
                        .filter(|((gg, _, _), uu)| *gg == g && **uu == u)
                        .map(|((_, t, c), _)| (*t, *c))
                        .collect();
                    let (t, c) = at.first().copied().unwrap_or((0, 0));
                    let mi = released[t]
                        .table
                        .measures
                        .iter()
                        .position(|x| x == m)
                        .unwrap_or(0);
                    let x: f64 = members
                        .iter()
                        .map(|p| contribution(&cell_of[*p], t, c, mi))
                        .sum();
                    let cap = facts
                        .iter()
                        .zip(bits)
                        .filter(|(f, b)| {
                            **b && at.iter().any(|(t, c)| f.table == *t && f.cells.contains(c))
                        })
                        .map(|(f, _)| f.hi)
                        .fold(f64::INFINITY, f64::min);
                    let q = if m.starts_with("sum:") {
                        0.10 * x.abs().max(1.0)
                    } else {
                        f64::from(T)
                    };
                    let need_lo = (x - q).max(0.0);
                    let need_hi = (x + q).min(cap).max(x);
                    let tol = 1e-6 * x.abs().max(1.0);
                    if lo > need_lo + tol || hi < need_hi - tol {
                        found.push(format!(
                            "{m}: a group of {n} has [{lo}, {hi}], needs [{need_lo}, {need_hi}]"
                        ));
                    }
                }
            }
        }
    }
    found
}

/// Release a random sequence through the guard; what the attacker finds, and how many
/// tables were refused.
fn run(seed: u64, patients: u32, tables: usize) -> (Vec<String>, usize, usize) {
    let mut rng = Rng(seed);
    let pop = people(&mut rng, patients);
    let rules = GuardRules::new(T);
    let mut released: Vec<Release> = vec![];
    let mut refused = 0;
    for id in 0..tables {
        let t = random_table(&mut rng, id, &pop);
        match check(&t, &released, &rules) {
            GuardVerdict::Clear => released.push(t),
            GuardVerdict::Refused { .. } => refused += 1,
        }
    }
    (attack(&released, pop.len()), released.len(), refused)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]
    #[test]
    fn the_attacker_never_pins_or_narrows_a_small_group(
        seed in any::<u64>(),
        patients in 8u32..36,
        tables in 2usize..6,
    ) {
        let (found, _, _) = run(seed, patients, tables);
        prop_assert!(found.is_empty(), "{found:#?}");
    }
}

/// The property is not vacuous: over fixed seeds the guard both releases and refuses, and
/// without the guard the attacker does find small groups.
#[test]
fn the_property_has_teeth() {
    let (mut released, mut refused, mut unguarded) = (0, 0, 0);
    for seed in 0..60 {
        let (found, r, x) = run(seed, 24, 4);
        assert!(found.is_empty(), "seed {seed}: {found:#?}");
        released += r;
        refused += x;
        let mut rng = Rng(seed);
        let pop = people(&mut rng, 24);
        let all: Vec<Release> = (0..4).map(|id| random_table(&mut rng, id, &pop)).collect();
        unguarded += usize::from(!attack(&all, pop.len()).is_empty());
    }
    assert!(
        released > 60 && refused > 5,
        "released {released}, refused {refused}"
    );
    assert!(
        unguarded > 5,
        "the unguarded sequences exposed {unguarded} times"
    );
}
