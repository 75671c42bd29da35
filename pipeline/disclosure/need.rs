//! What each hidden cell of a pattern needs, and the audit of a pattern against it: a
//! primary's protection interval, a complement's not being exactly recoverable, a hidden
//! cell of unknown value's width. `protect` builds patterns and `cleanup` thins them; both
//! ask this module whether a pattern is enough. The audit is the LP attacker of `attack`
//! (closed form on one line); this module never chooses or changes a pattern.

use super::attack::{self, Domain, Interval, Need, Protection, Shortfall};
use super::suppress::{Grid, Layer, State};

/// The needs of every hidden cell of a layer: primaries from `protections`, any other
/// hidden cell of known value must not be exactly recoverable (move by `unit` up or down);
/// hidden cells of unknown value (hidden by an earlier `--apply`) must have width >= `unit`.
pub(crate) fn needs(layer: &Layer, protections: &[Protection], unit: f64) -> Vec<NeedSpec> {
    let mut out = Vec::new();
    let mut is_primary = vec![false; layer.state.len()];
    for p in protections {
        let x = layer.value[p.cell];
        is_primary[p.cell] = true;
        out.push(NeedSpec::Both(Need {
            cell: p.cell,
            lo: (x - p.lpl).max(0.0),
            hi: x + p.upl,
        }));
    }
    for (c, s) in layer.state.iter().enumerate() {
        if is_primary[c] || !matches!(s, State::Primary | State::Secondary | State::Hidden) {
            continue;
        }
        let x = layer.value[c];
        if x.is_nan() {
            out.push(NeedSpec::Width(c, unit));
        } else {
            out.push(NeedSpec::Either(c, unit));
        }
    }
    out
}

/// One requirement on a hidden cell.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum NeedSpec {
    /// The interval must reach both ends of the need.
    Both(Need),
    /// The cell (known value) must be able to move by this much up or down.
    Either(usize, f64),
    /// The cell (unknown value) must have an interval at least this wide.
    Width(usize, f64),
}

impl NeedSpec {
    /// The hidden cell the requirement is on.
    pub(crate) fn cell(&self) -> usize {
        match *self {
            NeedSpec::Both(n) => n.cell,
            NeedSpec::Either(c, _) | NeedSpec::Width(c, _) => c,
        }
    }
}

/// Audit every need; what the audit cannot prove.
pub(crate) fn audit(
    grid: &Grid,
    layer: &Layer,
    dom: &[Domain],
    specs: &[NeedSpec],
) -> Vec<Shortfall> {
    if let Some(iv) = attack::line_intervals(grid, dom) {
        return audit_line(layer, &iv, specs);
    }
    let mut out = Vec::new();
    for s in specs {
        match *s {
            NeedSpec::Both(n) => out.extend(attack::audit(grid, layer, dom, &[n])),
            NeedSpec::Either(c, u) => {
                // One interval answers both ways: a failed box falls back to the LP, whose
                // interval has both ends.
                let x = layer.value[c];
                let up = Need {
                    cell: c,
                    lo: x,
                    hi: x + u,
                };
                let got = attack::interval_for(grid, layer, dom, up);
                let tol = 1e-6 * x.abs().max(1.0);
                if got.hi >= x + u - tol || (x >= u && got.lo <= x - u + tol) {
                    continue;
                }
                out.push(Shortfall { need: up, got });
            }
            NeedSpec::Width(c, u) => {
                let n = Need {
                    cell: c,
                    lo: f64::NAN,
                    hi: f64::NAN,
                };
                let got = attack::interval_for(grid, layer, dom, n);
                if got.hi - got.lo < u - 1e-9 {
                    out.push(Shortfall {
                        need: Need {
                            cell: c,
                            lo: got.lo,
                            hi: got.lo + u,
                        },
                        got,
                    });
                }
            }
        }
    }
    out
}

/// [`audit`] on a one-dimensional table, from the closed-form intervals of every cell.
fn audit_line(layer: &Layer, iv: &[(f64, f64)], specs: &[NeedSpec]) -> Vec<Shortfall> {
    let tol = |x: f64| 1e-6 * x.abs().max(1.0);
    let got = |c: usize| Interval {
        lo: iv[c].0,
        hi: iv[c].1,
        exact: true,
    };
    let mut out = Vec::new();
    for s in specs {
        match *s {
            NeedSpec::Both(n) => {
                let g = got(n.cell);
                if g.lo > n.lo + tol(n.lo) || g.hi < n.hi - tol(n.hi) {
                    out.push(Shortfall { need: n, got: g });
                }
            }
            NeedSpec::Either(c, u) => {
                let x = layer.value[c];
                let g = got(c);
                let t = tol(x);
                if g.hi >= x + u - t || (x >= u && g.lo <= x - u + t) {
                    continue;
                }
                let need = Need {
                    cell: c,
                    lo: x,
                    hi: x + u,
                };
                out.push(Shortfall { need, got: g });
            }
            NeedSpec::Width(c, u) => {
                let g = got(c);
                if g.hi - g.lo < u - 1e-9 {
                    let need = Need {
                        cell: c,
                        lo: g.lo,
                        hi: g.lo + u,
                    };
                    out.push(Shortfall { need, got: g });
                }
            }
        }
    }
    out
}
