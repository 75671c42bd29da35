//! The job verdict: a type stored in the job record, turned into words at the edges.
//!
//! Owns [`JobVerdict`] (what the release gate decided about a job's table) and its two
//! renderings: [`JobVerdict::for_analyst`] (the verdict and what to change, never a
//! hidden cell's value, never a reason per cell, never a data-dependent detail beyond one
//! bit) and [`JobVerdict::for_checker`] (the same, with the counts an output checker
//! needs; the full disclosure report is kept beside it for checkers only). Danger: a
//! verdict must never carry a patient value or a hidden count; the analyst's words are
//! built only from the table's shape (cells hidden, categories to combine), never from
//! the values behind a hidden cell.

use serde::{Deserialize, Serialize};

/// Why the gate refused a job's table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RefusalReason {
    /// The SQL is not of the closed aggregate form; `message` says how to write it (it
    /// quotes the SQL's own expressions, never data).
    NotATable {
        /// What is wrong and how to write it.
        message: String,
    },
    /// The rows aggregated do not carry a `patient_pseudonym` column.
    NoPatientColumn,
    /// Some rows aggregated carry a `patient_pseudonym` that is not a patient of the
    /// project's datasets (or none): one bit, audited.
    UnknownPatients,
    /// More cells than the gate checks.
    TooManyCells {
        /// The limit.
        limit: usize,
    },
    /// No suppression pattern protects every hidden cell.
    Unprotectable {
        /// How many hidden cells could not be protected.
        cells: usize,
    },
    /// The table would let the analyst difference it against a table already received.
    Differencing {
        /// The earlier table (a job id); the job's own id when the table alone is the
        /// cause or could not be proven safe.
        earlier_table: String,
        /// The guard's message (no patient value).
        message: String,
        /// The table alone is the cause (no earlier table is involved).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        alone: bool,
    },
}

/// What the release gate decided about a job's table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case", deny_unknown_fields)]
pub enum JobVerdict {
    /// Every cell is published (counts rounded as the rules say).
    Releasable,
    /// Published with some cells hidden; `advice` names what to change for fewer.
    ReleasableWithHidden {
        /// Cells hidden (primary and secondary, all measures).
        hidden_cells: usize,
        /// What to change (combine categories), from the shape of the table only.
        advice: Vec<String>,
    },
    /// No safe table.
    Refused {
        /// Why.
        reason: RefusalReason,
    },
    /// The population is empty: nothing to release.
    Empty,
}

impl JobVerdict {
    /// Whether the job has a safe table the analyst may read and request for release.
    pub fn has_safe_table(&self) -> bool {
        matches!(
            self,
            JobVerdict::Releasable | JobVerdict::ReleasableWithHidden { .. }
        )
    }

    /// The verdict's kind as one word (for the audit trail): `releasable`,
    /// `releasable_with_hidden`, `empty`, or `refused_<reason>`.
    pub fn kind(&self) -> String {
        match self {
            JobVerdict::Releasable => "releasable".into(),
            JobVerdict::ReleasableWithHidden { .. } => "releasable_with_hidden".into(),
            JobVerdict::Empty => "empty".into(),
            JobVerdict::Refused { reason } => format!(
                "refused_{}",
                match reason {
                    RefusalReason::NotATable { .. } => "not_a_table",
                    RefusalReason::NoPatientColumn => "no_patient_column",
                    RefusalReason::UnknownPatients => "unknown_patients",
                    RefusalReason::TooManyCells { .. } => "too_many_cells",
                    RefusalReason::Unprotectable { .. } => "unprotectable",
                    RefusalReason::Differencing { .. } => "differencing",
                }
            ),
        }
    }

    /// The verdict in words for the analyst: no hidden value, no reason per cell.
    pub fn for_analyst(&self) -> String {
        match self {
            JobVerdict::Releasable => {
                "releasable: every cell of the table is published (counts rounded as the project's rules say)".into()
            }
            JobVerdict::ReleasableWithHidden { advice, .. } => {
                let mut s = String::from(
                    "releasable with some cells hidden: hidden cells are empty in the safe table",
                );
                if !advice.is_empty() {
                    s.push_str("; to hide fewer: ");
                    s.push_str(&advice.join("; "));
                }
                s
            }
            JobVerdict::Empty => "empty: no rows match, nothing to release".into(),
            JobVerdict::Refused { reason } => format!("refused: {}", analyst_reason(reason)),
        }
    }

    /// The verdict in words for an output checker (the full report is shown beside it).
    pub fn for_checker(&self) -> String {
        match self {
            JobVerdict::ReleasableWithHidden {
                hidden_cells,
                advice,
            } => {
                let mut s = format!("releasable with {hidden_cells} cells hidden");
                if !advice.is_empty() {
                    s.push_str(&format!(" (analyst told: {})", advice.join("; ")));
                }
                s
            }
            JobVerdict::Refused {
                reason: RefusalReason::Unprotectable { cells },
            } => format!(
                "refused: {cells} hidden cells cannot be protected by any suppression pattern found (see the report)"
            ),
            JobVerdict::Refused {
                reason:
                    RefusalReason::Differencing {
                        earlier_table,
                        message,
                        alone,
                    },
            } => {
                if *alone {
                    format!("refused by the differencing guard on this table alone: {message}")
                } else {
                    format!("refused by the differencing guard against {earlier_table}: {message}")
                }
            }
            other => other.for_analyst(),
        }
    }
}

fn analyst_reason(reason: &RefusalReason) -> String {
    match reason {
        RefusalReason::NotATable { message } => message.clone(),
        RefusalReason::NoPatientColumn => {
            "the rows you aggregate must carry patient_pseudonym: keep the column patient_pseudonym of a project dataset in the FROM of the aggregate (the TRE counts patients from it)".into()
        }
        RefusalReason::UnknownPatients => {
            "the rows you aggregate must each carry the patient_pseudonym of a patient of this project's datasets; some do not (a renamed column, a missing value after an outer join, or a constant). This refusal is recorded in the audit log".into()
        }
        RefusalReason::TooManyCells { limit } => format!(
            "the table has more than {limit} cells: group by fewer or coarser categories"
        ),
        RefusalReason::Unprotectable { .. } => {
            "the table cannot be made safe: too many of its cells are supported by too few patients. Combine small categories (for example fewer age bands), or drop a grouping column".into()
        }
        RefusalReason::Differencing { alone: true, .. } => {
            "this table on its own could single out a small group of patients (as when its cells share patients: the same patients counted in several cells, as in counts by code). Combine small categories, or group by fewer or coarser categories".into()
        }
        RefusalReason::Differencing { earlier_table, .. } => format!(
            "together with table {earlier_table} you already received, this table would single out a small group of patients: change the population or the grouping so that it is not a near-copy of {earlier_table}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verdict_round_trips_as_json_and_refuses_unknown_fields() {
        let v = JobVerdict::Refused {
            reason: RefusalReason::TooManyCells { limit: 5 },
        };
        let text = serde_json::to_string(&v).expect("json");
        assert_eq!(serde_json::from_str::<JobVerdict>(&text).expect("back"), v);
        assert!(
            serde_json::from_str::<JobVerdict>(
                r#"{"verdict":"releasable_with_hidden","hidden_cells":1,"advice":[],"x":1}"#
            )
            .is_err()
        );
    }

    #[test]
    fn the_analyst_never_sees_the_guards_detail_but_the_checker_does() {
        let v = JobVerdict::Refused {
            reason: RefusalReason::Differencing {
                earlier_table: "job-1".into(),
                message: "group of 3 patients pinned".into(),
                alone: false,
            },
        };
        assert!(v.for_analyst().contains("job-1"));
        assert!(!v.for_analyst().contains("3 patients"));
        assert!(v.for_checker().contains("3 patients"));
        let hidden = JobVerdict::ReleasableWithHidden {
            hidden_cells: 4,
            advice: vec!["combine I and U in sex".into()],
        };
        assert!(!hidden.for_analyst().contains('4'));
        assert!(hidden.for_analyst().contains("combine I and U"));
        assert!(hidden.has_safe_table());
        let alone = JobVerdict::Refused {
            reason: RefusalReason::Differencing {
                earlier_table: "job-2".into(),
                message: "budget".into(),
                alone: true,
            },
        };
        assert!(
            alone.for_analyst().contains("on its own"),
            "{}",
            alone.for_analyst()
        );
        assert!(!alone.for_analyst().contains("already received"));
        assert!(alone.for_checker().contains("this table alone: budget"));
        let text = serde_json::to_string(&alone).expect("json");
        assert_eq!(
            serde_json::from_str::<JobVerdict>(&text).expect("back"),
            alone
        );
        // Files written before `alone` read as an earlier table's refusal.
        assert!(!serde_json::to_string(&v).expect("json").contains("alone"));
    }
}
