//! Output rules: the thresholds, rounding and dominance parameters that `tre check` applies.
//!
//! Rules are data (`policies/output-rules/<preset>.toml`, embedded here as presets and also
//! loadable from any path), parsed strictly (`deny_unknown_fields`) and validated once into
//! [`Rules`]. Every preset file cites its published source in comments. This module never
//! reads a table and never decides a cell: it only says what the rules are.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::DisclosureError;

/// The built-in presets: (name, TOML text).
const PRESETS: &[(&str, &str)] = &[
    (
        "opensafely",
        include_str!("../../policies/output-rules/opensafely.toml"),
    ),
    (
        "opensafely-midpoint6",
        include_str!("../../policies/output-rules/opensafely-midpoint6.toml"),
    ),
    (
        "acro-default",
        include_str!("../../policies/output-rules/acro-default.toml"),
    ),
    (
        "ons-srs",
        include_str!("../../policies/output-rules/ons-srs.toml"),
    ),
    (
        "nhse-sde",
        include_str!("../../policies/output-rules/nhse-sde.toml"),
    ),
];

/// A validated set of output rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// Format version of the rules file (1).
    pub version: u32,
    /// Short name (the preset name for presets).
    pub name: String,
    /// The published source these rules follow.
    pub source: String,
    /// Small-count suppression.
    pub suppression: Suppression,
    /// Rounding of published counts.
    pub rounding: Rounding,
    /// Dominance rules for magnitude cells.
    #[serde(default)]
    pub dominance: Dominance,
    /// Row-level data detection.
    pub row_level: RowLevel,
    /// Order statistics (MIN, MAX, median, first/last value of a group).
    #[serde(default)]
    pub min_max: MinMax,
    /// Structural zeros: combinations of dimension values that cannot occur (male x
    /// pregnant), each a map `dimension = value`; a cell whose key has every listed value is
    /// zero by definition. The attacker knows them, so they are published as 0, never hidden
    /// and never counted as protection (issue 22 point 7a). An entry naming a dimension the
    /// table does not have does not apply to it. In TOML, before the first `[section]`:
    /// `structural_zeros = [{ sex = "M", pregnant = "yes" }]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub structural_zeros: Vec<std::collections::BTreeMap<String, String>>,
}

/// Whether order statistics may leave. Each is one person's value (the earliest date, the
/// largest reading), so they are refused unless the rules allow them; when allowed, one is
/// published only where its group's count passes the threshold (and is not a complement).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinMax {
    /// Allow MIN/MAX columns (default false).
    #[serde(default)]
    pub allow: bool,
}

/// Small-count (primary) and complementary (secondary) suppression.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suppression {
    /// The smallest count that may be published; counts below it (except zeros, unless
    /// `zeros_disclosive`) are suppressed. 0 turns primary suppression off.
    pub min_count: u64,
    /// Whether a zero count is disclosive (suppressed like a small count).
    pub zeros_disclosive: bool,
    /// Whether to add complementary suppressions so suppressed cells cannot be derived.
    pub secondary: bool,
    /// Whether row, column and grand totals are taken as known even when the table does not
    /// include them (they usually are published elsewhere).
    pub assume_totals_known: bool,
    /// How far (in counts) the attacker interval of a small count must reach on each side of
    /// its value (tau-Argus' safety range); by default the threshold `min_count`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety_range: Option<u64>,
}

/// How published counts are rounded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rounding {
    /// The rounding method.
    pub method: RoundingMethod,
    /// The rounding base (5 for nearest-5, 6 for midpoint 6); ignored for `none`.
    #[serde(default)]
    pub base: u64,
}

/// A rounding method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoundingMethod {
    /// No rounding.
    None,
    /// Round to the nearest multiple of `base` (halves away from zero).
    Nearest,
    /// OpenSAFELY midpoint rounding: `ceil(x/base)*base - floor(base/2)` for `x != 0`.
    Midpoint,
}

/// Dominance rules for magnitude cells (need the largest contributions per cell).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dominance {
    /// p-ratio (p%) rule: a cell fails when `(total - x1 - x2) / x1 < p_ratio`.
    #[serde(default)]
    pub p_ratio: Option<f64>,
    /// (n,k) rules: a cell fails when its `n` largest contributions exceed `k` of the total.
    #[serde(default)]
    pub nk: Vec<NkRule>,
}

/// One (n,k) dominance rule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NkRule {
    /// Number of largest contributors.
    pub n: usize,
    /// Largest share of the cell total they may hold (0..1).
    pub k: f64,
}

/// Detection of row-level (unit record) data, which is never releasable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowLevel {
    /// Block when more than this share of count cells equal 1.
    pub max_share_of_ones: f64,
    /// Apply the share-of-ones test only to tables with at least this many count cells.
    pub min_cells_for_ones_check: usize,
    /// Column names (case-insensitive, exact or as a `_`-separated part) that identify people.
    pub identifier_columns: Vec<String>,
}

/// Values given on the command line (or by a query job) that replace a preset's.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Replace `suppression.min_count`.
    pub min_count: Option<u64>,
    /// Replace `suppression.zeros_disclosive`.
    pub zeros_disclosive: Option<bool>,
    /// Replace `suppression.secondary`.
    pub secondary: Option<bool>,
    /// Replace the rounding.
    pub rounding: Option<Rounding>,
    /// Replace `dominance.p_ratio`.
    pub p_ratio: Option<f64>,
    /// Replace `dominance.nk`.
    pub nk: Option<Vec<NkRule>>,
}

/// The share of its value a hidden sum must be able to move either way when the rules set
/// no p% rule (tau-Argus' usual 10% safety range for magnitudes).
pub const DEFAULT_SUM_PROTECTION: f64 = 0.10;

impl Rules {
    /// How far a reader's interval for a hidden sum (or a small group's sum, in the
    /// received ledger's guard) must reach each side, as a share of its value: the rules'
    /// p% (`dominance.p_ratio`), else 10%.
    pub fn sum_protection(&self) -> f64 {
        self.dominance.p_ratio.unwrap_or(DEFAULT_SUM_PROTECTION)
    }

    /// The names of the built-in presets.
    pub fn preset_names() -> Vec<&'static str> {
        PRESETS.iter().map(|(n, _)| *n).collect()
    }

    /// A built-in preset by name.
    pub fn preset(name: &str) -> Result<Rules, DisclosureError> {
        let (_, text) =
            PRESETS
                .iter()
                .find(|(n, _)| *n == name)
                .ok_or_else(|| DisclosureError::Rules {
                    origin: name.to_string(),
                    message: format!(
                        "no preset named {name:?}; presets are {}",
                        Self::preset_names().join(", ")
                    ),
                })?;
        Self::parse(text, &format!("preset {name}"))
    }

    /// Load a rules file.
    pub fn load(path: &Path) -> Result<Rules, DisclosureError> {
        let text = std::fs::read_to_string(path).map_err(|e| DisclosureError::Rules {
            origin: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// A preset name, or else a path to a rules file.
    pub fn resolve(spec: &str) -> Result<Rules, DisclosureError> {
        if PRESETS.iter().any(|(n, _)| *n == spec) {
            return Self::preset(spec);
        }
        let path = Path::new(spec);
        if path.exists() {
            return Self::load(path);
        }
        Err(DisclosureError::Rules {
            origin: spec.to_string(),
            message: format!(
                "neither a preset nor a file; presets are {}",
                Self::preset_names().join(", ")
            ),
        })
    }

    /// Parse and validate rules TOML; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Rules, DisclosureError> {
        let rules: Rules = toml::from_str(text).map_err(|e| DisclosureError::Rules {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        rules.validate(origin)?;
        Ok(rules)
    }

    /// Apply overrides and re-validate.
    pub fn with_overrides(mut self, o: &Overrides) -> Result<Rules, DisclosureError> {
        if let Some(v) = o.min_count {
            self.suppression.min_count = v;
        }
        if let Some(v) = o.zeros_disclosive {
            self.suppression.zeros_disclosive = v;
        }
        if let Some(v) = o.secondary {
            self.suppression.secondary = v;
        }
        if let Some(r) = &o.rounding {
            self.rounding = r.clone();
        }
        if let Some(p) = o.p_ratio {
            self.dominance.p_ratio = Some(p);
        }
        if let Some(nk) = &o.nk {
            self.dominance.nk = nk.clone();
        }
        let origin = format!("{} with overrides", self.name);
        self.validate(&origin)?;
        Ok(self)
    }

    fn validate(&self, origin: &str) -> Result<(), DisclosureError> {
        let bad = |message: String| {
            Err(DisclosureError::Rules {
                origin: origin.to_string(),
                message,
            })
        };
        if self.version != 1 {
            return bad(format!(
                "version {} is not supported (expected 1)",
                self.version
            ));
        }
        if self.rounding.method != RoundingMethod::None && self.rounding.base < 2 {
            return bad(format!(
                "rounding.base must be at least 2 for method {:?}",
                self.rounding.method
            ));
        }
        if let Some(p) = self.dominance.p_ratio
            && !(p > 0.0 && p < 1.0)
        {
            return bad(format!("dominance.p_ratio {p} must be between 0 and 1"));
        }
        for r in &self.dominance.nk {
            if r.n == 0 || !(r.k > 0.0 && r.k <= 1.0) {
                return bad(format!(
                    "dominance.nk rule n={} k={} needs n >= 1 and 0 < k <= 1",
                    r.n, r.k
                ));
            }
        }
        if self.structural_zeros.iter().any(|z| z.is_empty()) {
            return bad(
                "structural_zeros: an empty entry would make every cell zero; list at least one `dimension = value`"
                    .to_string(),
            );
        }
        if !(0.0..=1.0).contains(&self.row_level.max_share_of_ones) {
            return bad("row_level.max_share_of_ones must be between 0 and 1".to_string());
        }
        Ok(())
    }

    /// Whether a published count value is disclosive under the primary rule.
    pub fn count_is_small(&self, v: f64) -> bool {
        if v == 0.0 {
            self.suppression.zeros_disclosive
        } else {
            v < self.suppression.min_count as f64
        }
    }

    /// The number of largest contributions the dominance rules need per cell.
    pub fn contributors_needed(&self) -> usize {
        let nk = self.dominance.nk.iter().map(|r| r.n).max().unwrap_or(0);
        let p = if self.dominance.p_ratio.is_some() {
            2
        } else {
            0
        };
        nk.max(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_loads_and_validates() {
        for name in Rules::preset_names() {
            let r = Rules::preset(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(r.name, name);
            assert!(!r.source.is_empty());
        }
    }

    #[test]
    fn presets_on_disk_match_embedded() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/output-rules");
        for name in Rules::preset_names() {
            let r = Rules::load(&dir.join(format!("{name}.toml"))).map_err(|e| e.to_string());
            assert_eq!(r, Rules::preset(name).map_err(|e| e.to_string()));
        }
    }

    #[test]
    fn acro_default_matches_default_yaml() {
        // ACRO acro/default.yaml: safe_threshold 10, safe_pratio_p 0.10, safe_nk_n 2,
        // safe_nk_k 0.90, zeros_are_disclosive True.
        let r = Rules::preset("acro-default").map_err(|e| e.to_string());
        let r = r.as_ref().map_err(|e| e.as_str());
        let Ok(r) = r else { panic!("acro-default") };
        assert_eq!(r.suppression.min_count, 10);
        assert!(r.suppression.zeros_disclosive);
        assert_eq!(r.dominance.p_ratio, Some(0.10));
        assert_eq!(r.dominance.nk, vec![NkRule { n: 2, k: 0.90 }]);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = include_str!("../../policies/output-rules/opensafely.toml")
            .replace("secondary = true", "secondary = true\nthreshhold = 3");
        let e = Rules::parse(&text, "t").err().map(|e| e.to_string());
        assert!(e.is_some_and(|m| m.contains("threshhold")));
    }

    #[test]
    fn overrides_replace_preset_values() {
        let r = Rules::preset("opensafely")
            .and_then(|r| {
                r.with_overrides(&Overrides {
                    min_count: Some(10),
                    ..Default::default()
                })
            })
            .map_err(|e| e.to_string());
        assert_eq!(r.map(|r| r.suppression.min_count), Ok(10));
    }

    #[test]
    fn structural_zeros_are_read_from_the_rules_file() {
        let text = format!(
            "structural_zeros = [{{ sex = \"M\", pregnant = \"yes\" }}]\n{}",
            include_str!("../../policies/output-rules/acro-default.toml")
        );
        let r = Rules::parse(&text, "t").map_err(|e| e.to_string());
        let z = r.map(|r| r.structural_zeros);
        assert_eq!(
            z.ok()
                .and_then(|z| z.first().and_then(|e| e.get("sex").cloned())),
            Some("M".to_string())
        );
        let empty = format!(
            "structural_zeros = [{{}}]\n{}",
            include_str!("../../policies/output-rules/acro-default.toml")
        );
        assert!(Rules::parse(&empty, "t").is_err());
    }

    #[test]
    fn unknown_preset_lists_the_presets() {
        let e = Rules::resolve("opensafly").err().map(|e| e.to_string());
        assert!(e.is_some_and(|m| m.contains("acro-default")));
    }
}
