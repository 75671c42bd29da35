//! Rounding of published counts, applied after suppression.
//!
//! Suppressed cells stay empty; every published count, totals included, is rounded from its
//! own true value, so the totals cannot undo the rounding of the cells (the NHS England
//! method; OpenSAFELY re-adds totals from rounded cells, which our secondary suppression makes
//! unnecessary for protection). This module never decides which cells are hidden.

use super::rules::{Rounding, RoundingMethod};

/// Round one count under the rules.
pub fn round_count(v: f64, r: &Rounding) -> f64 {
    let b = r.base as f64;
    match r.method {
        RoundingMethod::None => v,
        // Halves away from zero: 2.5 -> 5 with base 5 (R's and Python's banker's rounding
        // differ at exact halves; we never round a half down, which is the safer side).
        RoundingMethod::Nearest => (v / b).round() * b,
        // OpenSAFELY roundmid_any: ceiling(x/to)*to - floor(to/2)*(x != 0).
        RoundingMethod::Midpoint => {
            if v == 0.0 {
                0.0
            } else {
                (v / b).ceil() * b - (b / 2.0).floor()
            }
        }
    }
}

/// Whether a value already is a possible output of the rounding (so needs no change).
pub fn is_rounded(v: f64, r: &Rounding) -> bool {
    let b = r.base as f64;
    match r.method {
        RoundingMethod::None => true,
        RoundingMethod::Nearest => (v / b).fract() == 0.0,
        RoundingMethod::Midpoint => v == 0.0 || ((v + (b / 2.0).floor()) / b).fract() == 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(method: RoundingMethod, base: u64) -> Rounding {
        Rounding { method, base }
    }

    #[test]
    fn opensafely_round_to_nearest_5_worked_example() {
        // OpenSAFELY "Releasing files" rounding example: Population column
        // 18, 23, 31, 44 -> 20, 25, 30, 45, and its total 116 -> 120.
        let n5 = r(RoundingMethod::Nearest, 5);
        let got: Vec<f64> = [18.0, 23.0, 31.0, 44.0, 116.0]
            .iter()
            .map(|v| round_count(*v, &n5))
            .collect();
        assert_eq!(got, vec![20.0, 25.0, 30.0, 45.0, 115.0]);
        // (the documentation's total 120 is re-added from the rounded cells: 20+25+30+45.)
        assert_eq!(20.0 + 25.0 + 30.0 + 45.0, 120.0);
    }

    #[test]
    fn opensafely_midpoint6_mapping_table() {
        // OpenSAFELY "Midpoint 6 rounding": 0 -> 0, 1-6 -> 3, 7-12 -> 9, 13-18 -> 15.
        let m6 = r(RoundingMethod::Midpoint, 6);
        for (lo, hi, want) in [(0, 0, 0.0), (1, 6, 3.0), (7, 12, 9.0), (13, 18, 15.0)] {
            for x in lo..=hi {
                assert_eq!(round_count(x as f64, &m6), want, "x = {x}");
                assert!(is_rounded(want, &m6));
            }
        }
        assert!(!is_rounded(4.0, &m6));
    }

    #[test]
    fn halves_round_up() {
        let n5 = r(RoundingMethod::Nearest, 5);
        assert_eq!(round_count(12.5, &n5), 15.0);
        assert_eq!(round_count(8.0, &n5), 10.0);
        assert!(is_rounded(10.0, &n5) && !is_rounded(8.0, &n5));
    }
}
