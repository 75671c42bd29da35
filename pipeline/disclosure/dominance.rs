//! Dominance rules for magnitude cells: the p% (p-ratio) rule and (n,k) rules.
//!
//! A magnitude cell (a sum, or a mean of `count` contributions) is dominated when a few
//! contributors make up most of it, so that one of them could estimate another's value. The
//! rules need each cell's largest contributions (shadow columns `<magnitude>_top1`, `_top2`,
//! ...), which never leave the TRE. Definitions follow ACRO (acro/acro_tables.py) so that a
//! cell ACRO fails also fails here. This module only judges one cell at a time.

use super::rules::Dominance;

/// A dominance failure: the rule id (`p-ratio`, `nk-rule`) and the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct DominanceFailure {
    /// `p-ratio` or `nk-rule`.
    pub rule: &'static str,
    /// Why, in words.
    pub reason: String,
}

/// Check one cell. `total` is the sum of all contributions, `n` the number of contributors,
/// `top` the largest contributions in descending order (missing ones count as 0).
pub fn check_cell(
    total: f64,
    n: f64,
    top: &[f64],
    rules: &Dominance,
    zeros_disclosive: bool,
) -> Vec<DominanceFailure> {
    let mut out = Vec::new();
    let x = |i: usize| top.get(i).copied().unwrap_or(0.0).max(0.0);
    if let Some(p) = rules.p_ratio {
        // ACRO agg_p_percent: a total <= 0 or at most one contributor fails when zeros are
        // disclosive; otherwise p = (total - x1 - x2) / x1 must be at least p.
        if total <= 0.0 || n <= 1.0 {
            if zeros_disclosive || (n == 1.0 && total > 0.0) {
                out.push(DominanceFailure {
                    rule: "p-ratio",
                    reason: if n <= 1.0 && total > 0.0 {
                        "a single contributor: the cell is its value".to_string()
                    } else {
                        "no positive contributions, and zeros are disclosive".to_string()
                    },
                });
            }
        } else {
            let ratio = (total - x(0) - x(1)) / x(0);
            if ratio < p {
                out.push(DominanceFailure {
                    rule: "p-ratio",
                    reason: format!(
                        "the rest of the cell after the two largest contributions is {:.1}% of the largest, below {:.1}%",
                        ratio * 100.0,
                        p * 100.0
                    ),
                });
            }
        }
    }
    for r in &rules.nk {
        if total > 0.0 && n > 0.0 {
            let top_n: f64 = (0..r.n).map(x).sum();
            if top_n / total > r.k {
                out.push(DominanceFailure {
                    rule: "nk-rule",
                    reason: format!(
                        "the {} largest contributions are {:.1}% of the cell, above {:.1}%",
                        r.n,
                        top_n / total * 100.0,
                        r.k * 100.0
                    ),
                });
            }
        } else if zeros_disclosive && n <= 0.0 {
            // ACRO fills cells without contributions as failing every rule.
            out.push(DominanceFailure {
                rule: "nk-rule",
                reason: "no contributions, and zeros are disclosive".to_string(),
            });
        }
    }
    out
}

/// The protection a dominated cell needs, as in tau-Argus: for the p% rule, p% of the
/// largest contribution (so the second largest contributor cannot estimate the largest
/// within p%); for an (n,k) rule, the amount by which the cell would have to grow for the n
/// largest contributions to be k of it. The largest over the rules; 0 when none applies.
pub fn protection(total: f64, top: &[f64], rules: &Dominance) -> f64 {
    let x = |i: usize| top.get(i).copied().unwrap_or(0.0).max(0.0);
    let mut need: f64 = 0.0;
    if let Some(p) = rules.p_ratio {
        need = need.max(p * x(0));
    }
    for r in &rules.nk {
        let top_n: f64 = (0..r.n).map(x).sum();
        if r.k > 0.0 {
            need = need.max(top_n / r.k - total);
        }
    }
    need.max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disclosure::rules::NkRule;

    fn acro() -> Dominance {
        // ACRO default.yaml: safe_pratio_p 0.10, safe_nk_n 2, safe_nk_k 0.90.
        Dominance {
            p_ratio: Some(0.10),
            nk: vec![NkRule { n: 2, k: 0.90 }],
        }
    }

    #[test]
    fn p_ratio_worked_example() {
        // Contributions 100, 50, 10, 2: (162 - 100 - 50) / 100 = 0.12 >= 0.10 -> safe.
        assert!(
            check_cell(162.0, 4.0, &[100.0, 50.0], &acro(), true)
                .iter()
                .all(|f| f.rule != "p-ratio")
        );
        // Contributions 100, 50, 5, 2: (157 - 150) / 100 = 0.07 < 0.10 -> fails.
        let f = check_cell(157.0, 4.0, &[100.0, 50.0], &acro(), true);
        assert!(f.iter().any(|f| f.rule == "p-ratio"));
    }

    #[test]
    fn nk_rule_worked_example() {
        // (2, 90%): 100 + 50 of 162 = 92.6% > 90% -> fails; of 200 = 75% -> safe.
        assert!(
            check_cell(162.0, 4.0, &[100.0, 50.0], &acro(), true)
                .iter()
                .any(|f| f.rule == "nk-rule")
        );
        assert!(check_cell(200.0, 10.0, &[100.0, 50.0], &acro(), true).is_empty());
    }

    #[test]
    fn protection_of_a_dominated_cell() {
        // 950 of 1000 from one contributor: p% (10%) needs 95; (1, 50%) needs 1900 - 1000.
        let d = Dominance {
            p_ratio: Some(0.10),
            nk: vec![NkRule { n: 1, k: 0.50 }],
        };
        assert!((protection(1000.0, &[950.0, 20.0], &d) - 900.0).abs() < 1e-9);
        assert!((protection(1000.0, &[950.0, 20.0], &acro()) - 95.0).abs() < 1e-9);
    }

    #[test]
    fn single_contributor_and_empty_cells() {
        assert!(!check_cell(7.0, 1.0, &[7.0], &acro(), false).is_empty());
        let empty = check_cell(0.0, 0.0, &[], &acro(), true);
        assert!(
            empty.iter().any(|f| f.rule == "p-ratio") && empty.iter().any(|f| f.rule == "nk-rule")
        );
        assert!(check_cell(0.0, 0.0, &[], &acro(), false).is_empty());
    }
}
