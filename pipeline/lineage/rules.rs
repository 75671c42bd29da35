//! The blocking rules: which classified results may never leave, whatever their names.
//!
//! Owns the decision "this result is not an aggregate table" from column lineage alone:
//! identifiers (pseudonym, NHS number, direct identifiers, free text) published as
//! values, group keys, order statistics or through string functions; row-level columns;
//! results with no real aggregate; order statistics (MIN/MAX) unless the project's rules
//! allow them; columns the walker could not classify. Danger: a finding here means the
//! result can never be released; a missed finding lets row-level data out, so every
//! unknown is a finding.

use serde::Serialize;

use super::{OutputColumn, PopulationLineage, Role};

/// Why a result is blocked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// No column is a real aggregate (constants and keys only, or raw rows).
    NoAggregate,
    /// A column holds one row's value.
    RowLevel,
    /// A group key derived from an identifier: one group per person.
    IdentifierGroupKey,
    /// An identifier's value published through an aggregate (MIN, MAX, SUM, ...).
    IdentifierValue,
    /// An identifier inside a string function (prefix, concat, upper, ...).
    IdentifierInStringFunction,
    /// MIN/MAX or another order statistic, not allowed by the rules.
    OrderStatistic,
    /// A column the plan walker cannot classify.
    Unclassified,
    /// A filter compares a patient identifier with a literal: it picks out patients.
    IdentifierFilter,
}

/// One reason a result is blocked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineageFinding {
    /// The output column (None: the result as a whole).
    pub column: Option<String>,
    /// The rule.
    pub kind: FindingKind,
    /// The source columns involved, as `table.column` (names only, never values).
    pub sources: Vec<String>,
}

impl std::fmt::Display for LineageFinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let col = self.column.as_deref().unwrap_or("(result)");
        let from = if self.sources.is_empty() {
            String::new()
        } else {
            format!(" (from {})", self.sources.join(", "))
        };
        let why = match self.kind {
            FindingKind::NoAggregate => {
                "the result has no COUNT, SUM or AVG: it is row-level data and can never be released"
            }
            FindingKind::RowLevel => {
                "holds one row's value (neither a GROUP BY key nor an aggregate): the result is row-level"
            }
            FindingKind::IdentifierGroupKey => {
                "groups by a patient identifier: one group per person; count patients instead"
            }
            FindingKind::IdentifierValue => {
                "publishes a patient identifier's value through an aggregate"
            }
            FindingKind::IdentifierInStringFunction => {
                "passes a patient identifier through a string function; identifiers may only be counted"
            }
            FindingKind::OrderStatistic => {
                "is a MIN/MAX-type statistic, which publishes one patient's value; the project's output rules do not allow it"
            }
            FindingKind::IdentifierFilter => {
                "a filter picks out patients by an identifier (a pseudonym compared with a value); statistics about named patients can never be released"
            }
            FindingKind::Unclassified => {
                "mixes statistics in a way output checks cannot follow (a count inside text, a comparison of counts); publish the counts themselves"
            }
        };
        write!(f, "column {col}{from}: {why}")
    }
}

fn identifier_sources(c: &OutputColumn) -> Vec<String> {
    c.sources
        .iter()
        .filter(|s| s.class.identifies())
        .map(|s| format!("{}.{}", s.table, s.column))
        .collect()
}

fn finding(c: &OutputColumn, kind: FindingKind, sources: Vec<String>) -> LineageFinding {
    LineageFinding {
        column: Some(c.name.clone()),
        kind,
        sources,
    }
}

/// Findings for one column.
fn column_findings(c: &OutputColumn, allow_min_max: bool) -> Vec<LineageFinding> {
    let ids = identifier_sources(c);
    let mut out = Vec::new();
    match &c.role {
        Role::RowLevel => out.push(finding(c, FindingKind::RowLevel, ids.clone())),
        Role::Unclassified => out.push(finding(c, FindingKind::Unclassified, ids.clone())),
        Role::GroupKey if !ids.is_empty() => {
            out.push(finding(c, FindingKind::IdentifierGroupKey, ids.clone()));
        }
        Role::MinMax { .. } | Role::Magnitude | Role::Mean { .. } if !ids.is_empty() => {
            out.push(finding(c, FindingKind::IdentifierValue, ids.clone()));
        }
        Role::MinMax { .. } if !allow_min_max => {
            let all = c
                .sources
                .iter()
                .map(|s| format!("{}.{}", s.table, s.column))
                .collect();
            out.push(finding(c, FindingKind::OrderStatistic, all));
        }
        _ => {}
    }
    // A string function over an identifier is refused unless the result is only counted.
    let counted = matches!(c.role, Role::Count { .. } | Role::Ratio { .. });
    if c.string_function && !ids.is_empty() && !counted {
        out.push(finding(c, FindingKind::IdentifierInStringFunction, ids));
    }
    out
}

/// Every reason the classified result `cols` may never be released (empty: it may be
/// checked as an aggregate table). `allow_min_max` comes from the project's output rules.
pub fn blocking_findings(cols: &[OutputColumn], allow_min_max: bool) -> Vec<LineageFinding> {
    let mut out: Vec<LineageFinding> = cols
        .iter()
        .flat_map(|c| column_findings(c, allow_min_max))
        .collect();
    if !cols.iter().any(|c| c.role.is_aggregate()) {
        out.push(LineageFinding {
            column: None,
            kind: FindingKind::NoAggregate,
            sources: Vec::new(),
        });
    }
    out
}

/// Findings from a result's population: filters that single patients out by identifier.
/// The finding names no filter text (its literal could be a pseudonym).
pub fn population_findings(p: &PopulationLineage) -> Vec<LineageFinding> {
    if p.identifier_filters.is_empty() {
        return Vec::new();
    }
    vec![LineageFinding {
        column: None,
        kind: FindingKind::IdentifierFilter,
        sources: Vec::new(),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lineage::{SourceClass, SourceColumn};

    fn col(
        name: &str,
        role: Role,
        class: Option<SourceClass>,
        string_function: bool,
    ) -> OutputColumn {
        OutputColumn {
            name: name.into(),
            role,
            sources: class
                .map(|class| SourceColumn {
                    table: "patients".into(),
                    column: "c".into(),
                    class,
                })
                .into_iter()
                .collect(),
            through: Vec::new(),
            string_function,
            transform: None,
        }
    }

    fn kinds(f: &[LineageFinding]) -> Vec<FindingKind> {
        f.iter().map(|f| f.kind).collect()
    }

    #[test]
    fn constants_alone_are_row_level() {
        let f = blocking_findings(&[col("n", Role::Constant, None, false)], false);
        assert_eq!(kinds(&f), vec![FindingKind::NoAggregate]);
    }

    #[test]
    fn counting_pseudonyms_is_fine() {
        let cols = [
            col("sex", Role::GroupKey, Some(SourceClass::Quasi), false),
            col(
                "patients",
                Role::Count { distinct: true },
                Some(SourceClass::Pseudonym),
                true,
            ),
        ];
        assert!(blocking_findings(&cols, false).is_empty());
    }

    #[test]
    fn identifier_keys_values_and_strings_block() {
        let cols = [
            col("k", Role::GroupKey, Some(SourceClass::Pseudonym), false),
            col(
                "m",
                Role::MinMax {
                    function: "max".into(),
                },
                Some(SourceClass::Pseudonym),
                true,
            ),
            col("n", Role::Count { distinct: false }, None, false),
        ];
        assert_eq!(
            kinds(&blocking_findings(&cols, true)),
            vec![
                FindingKind::IdentifierGroupKey,
                FindingKind::IdentifierValue,
                FindingKind::IdentifierInStringFunction
            ]
        );
    }

    #[test]
    fn min_max_needs_the_rules_to_allow_it() {
        let cols = [col(
            "first",
            Role::MinMax {
                function: "min".into(),
            },
            Some(SourceClass::Clinical),
            false,
        )];
        assert_eq!(
            kinds(&blocking_findings(&cols, false)),
            vec![FindingKind::OrderStatistic]
        );
        assert!(blocking_findings(&cols, true).is_empty());
    }

    #[test]
    fn messages_name_columns_not_values() {
        let f = blocking_findings(
            &[col(
                "x",
                Role::RowLevel,
                Some(SourceClass::Pseudonym),
                false,
            )],
            false,
        );
        let text = f[0].to_string();
        assert!(
            text.contains("column x") && text.contains("patients.c"),
            "{text}"
        );
    }
}
