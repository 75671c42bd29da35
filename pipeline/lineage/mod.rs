//! Lineage: what each column of a query result is, read from the query plan, not its name.
//!
//! Owns the classification of a query job's output columns. [`classify`] walks
//! DataFusion's optimized `LogicalPlan` and gives every output column a [`Role`] (group
//! key, count, magnitude, mean, ratio, min/max, constant, row-level) with the source
//! columns it comes from and the functions it went through; [`rules::blocking_findings`]
//! applies the rules that refuse a result whatever its column names say (identifiers at
//! row level or as group keys, packed records, min/max, no real aggregate);
//! [`population`] describes the population a result counts (tables, filters, group keys,
//! with a stable hash) for the differencing [`ledger`]; [`store`] and [`load`] keep a
//! result's lineage beside it (`lineage.json`) so that `tre purge` can follow a renamed
//! or transformed pseudonym column. It sits between the query job (which plans the SQL)
//! and the disclosure checks and release (which consume the roles). Danger: a column the
//! walker cannot explain must block the result (fail closed), never default to a
//! harmless role; this module never reads row values, so it can never leak one.

pub mod gate;
mod kinds;
pub mod ledger;
mod plan;
pub mod rules;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use datafusion::logical_expr::LogicalPlan;
use serde::{Deserialize, Serialize};

use crate::durable::{Mode, write_atomic};
use crate::policy::{Policy, Transform};
use crate::schema::IdentifierClass;

pub use gate::{
    PurgeMark, ResultAction, ResultLineage, analyse, cells_from_batches, for_job, key_dims,
    record_release,
};
pub use rules::{LineageFinding, blocking_findings, population_findings};

/// The file, next to a job's result, holding its lineage.
pub const LINEAGE_FILE: &str = "lineage.json";

/// Lineage failures.
#[derive(Debug, thiserror::Error)]
pub enum LineageError {
    /// The plan holds a node this module does not understand: the result is blocked.
    #[error(
        "the query plan holds a {node} step that output checks cannot follow; rewrite the query without it (plain SELECT, WHERE, JOIN, GROUP BY, UNION)"
    )]
    UnsupportedPlan {
        /// The plan node's name.
        node: String,
    },
    /// The plan holds an expression this module does not understand.
    #[error(
        "the query uses {expr}, which output checks cannot follow; rewrite the query without it"
    )]
    UnsupportedExpr {
        /// The kind of expression.
        expr: String,
    },
    /// A column reference did not resolve against its input: a bug.
    #[error("bug: column {column} does not resolve in the query plan's input; please report it")]
    Unresolved {
        /// The column.
        column: String,
    },
    /// The lineage file could not be read or written.
    #[error("{}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// A durable write failed.
    #[error(transparent)]
    Durable(#[from] crate::durable::DurableError),
}

impl crate::error::Classify for LineageError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            LineageError::UnsupportedPlan { .. } | LineageError::UnsupportedExpr { .. } => {
                ErrorKind::Refused
            }
            LineageError::Unresolved { .. } => ErrorKind::Bug,
            LineageError::File { .. } | LineageError::Durable(_) => ErrorKind::Failed,
        }
    }
}

/// How identifying a source column is, as the project receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceClass {
    /// `patient_pseudonym`: one value per patient.
    Pseudonym,
    /// The NHS number itself (never in a proper extract, refused if it is).
    NhsNumber,
    /// A direct identifier kept raw.
    Direct,
    /// Free text.
    FreeText,
    /// A quasi-identifier (sex, ethnicity, LSOA, age band, generalised postcode or date).
    Quasi,
    /// Clinical content.
    Clinical,
    /// Not in the catalog (a column the policy does not describe): treated as an
    /// identifier (fail closed).
    Unknown,
}

impl SourceClass {
    /// Whether values of this class identify a person on their own: never published as a
    /// value, a group key or through a string function.
    pub fn identifies(self) -> bool {
        matches!(
            self,
            SourceClass::Pseudonym
                | SourceClass::NhsNumber
                | SourceClass::Direct
                | SourceClass::FreeText
                | SourceClass::Unknown
        )
    }
}

/// One column of a source table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SourceColumn {
    /// The dataset (table) name.
    pub table: String,
    /// The column name in the dataset.
    pub column: String,
    /// Its identifier class.
    pub class: SourceClass,
}

/// The identifier class of every column of the project's datasets.
#[derive(Debug, Clone, Default)]
pub struct SourceCatalog {
    classes: BTreeMap<(String, String), SourceClass>,
}

impl SourceCatalog {
    /// The catalog of a project's extract: each output column of the policy with the
    /// class its transform leaves (pseudonymised NHS number: pseudonym; generalised
    /// direct identifiers and dates: quasi; kept columns: their schema class).
    pub fn from_policy(policy: &Policy) -> Self {
        let mut c = SourceCatalog::default();
        for t in &policy.tables {
            for rule in &t.columns {
                let class = t
                    .schema
                    .column(&rule.input)
                    .map_or(SourceClass::Unknown, |col| {
                        class_after(col.class, &rule.transform)
                    });
                c.insert(t.name(), &rule.output, class);
            }
        }
        c
    }

    /// Add or replace one column's class.
    pub fn insert(&mut self, table: &str, column: &str, class: SourceClass) {
        self.classes
            .insert((table.to_string(), column.to_string()), class);
    }

    /// A column's class (`Unknown` when not described; the pseudonym column is always
    /// `Pseudonym`, whatever the catalog says).
    pub fn class(&self, table: &str, column: &str) -> SourceClass {
        if column == crate::policy::PSEUDONYM_COLUMN {
            return SourceClass::Pseudonym;
        }
        self.classes
            .get(&(table.to_string(), column.to_string()))
            .copied()
            .unwrap_or(SourceClass::Unknown)
    }
}

fn class_after(class: IdentifierClass, transform: &Transform) -> SourceClass {
    match (class, transform) {
        (_, Transform::Pseudonymise) => SourceClass::Pseudonym,
        (IdentifierClass::NhsNumber, _) => SourceClass::NhsNumber,
        (IdentifierClass::FreeText, _) => SourceClass::FreeText,
        (IdentifierClass::Direct, Transform::Keep) => SourceClass::Direct,
        (IdentifierClass::Direct | IdentifierClass::Quasi, _) => SourceClass::Quasi,
        (IdentifierClass::Clinical, _) => SourceClass::Clinical,
    }
}

/// Where a derived statistic's numerator or denominator comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Operand {
    /// The operand's own role (`count`, `magnitude`, ...).
    pub role: Box<Role>,
    /// Its source columns.
    pub sources: Vec<SourceColumn>,
    /// The output column carrying the same statistic, if the result has one.
    pub column: Option<String>,
}

/// What an output column is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Role {
    /// A GROUP BY key.
    GroupKey,
    /// A count of rows or distinct values, through casts, negation, arithmetic with
    /// constants or sums of counts.
    Count {
        /// `COUNT(DISTINCT ...)` somewhere in its making.
        distinct: bool,
    },
    /// A sum of values (a magnitude).
    Magnitude,
    /// A mean: a magnitude over a count.
    Mean {
        /// The numerator.
        numerator: Operand,
        /// The denominator.
        denominator: Operand,
    },
    /// A ratio or percentage of two statistics.
    Ratio {
        /// The numerator.
        numerator: Operand,
        /// The denominator.
        denominator: Operand,
    },
    /// An order statistic: MIN, MAX, median, first or last value.
    MinMax {
        /// The aggregate function.
        function: String,
    },
    /// A literal, the same in every row: never a count.
    Constant,
    /// A value of one row: neither a group key nor an aggregate.
    RowLevel,
    /// A mix the walker cannot name (a group key combined with an aggregate, a string
    /// function of an aggregate): blocks the result.
    Unclassified,
}

impl Role {
    /// Whether this is an aggregate statistic.
    pub fn is_aggregate(&self) -> bool {
        matches!(
            self,
            Role::Count { .. }
                | Role::Magnitude
                | Role::Mean { .. }
                | Role::Ratio { .. }
                | Role::MinMax { .. }
        )
    }

    /// A short name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            Role::GroupKey => "group key",
            Role::Count { .. } => "count",
            Role::Magnitude => "magnitude",
            Role::Mean { .. } => "mean",
            Role::Ratio { .. } => "ratio",
            Role::MinMax { .. } => "min/max",
            Role::Constant => "constant",
            Role::RowLevel => "row-level",
            Role::Unclassified => "unclassified",
        }
    }
}

/// A row-level transformation of one source column that can be applied again to a
/// known value (used by `tre purge` to find a purged patient's pseudonym in a result
/// column that renamed, upper-cased or concatenated it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ValueTransform {
    /// The source value itself (also through casts to text).
    Source,
    /// A literal text.
    Literal {
        /// The text.
        text: String,
    },
    /// `upper(x)`.
    Upper {
        /// The argument.
        arg: Box<ValueTransform>,
    },
    /// `lower(x)`.
    Lower {
        /// The argument.
        arg: Box<ValueTransform>,
    },
    /// `concat(a, b, ...)` or `a || b`.
    Concat {
        /// The parts, in order.
        parts: Vec<ValueTransform>,
    },
    /// `substr(x, start[, len])`, 1-based, in characters; `left(x, n)` is `substr(x, 1, n)`.
    Substr {
        /// The argument.
        arg: Box<ValueTransform>,
        /// 1-based start.
        start: i64,
        /// Length, if given.
        len: Option<i64>,
    },
    /// `right(x, n)`: the last `n` characters.
    Right {
        /// The argument.
        arg: Box<ValueTransform>,
        /// How many characters.
        n: i64,
    },
}

impl ValueTransform {
    /// Apply to a source value.
    pub fn apply(&self, value: &str) -> String {
        match self {
            ValueTransform::Source => value.to_string(),
            ValueTransform::Literal { text } => text.clone(),
            ValueTransform::Upper { arg } => arg.apply(value).to_uppercase(),
            ValueTransform::Lower { arg } => arg.apply(value).to_lowercase(),
            ValueTransform::Concat { parts } => parts.iter().map(|p| p.apply(value)).collect(),
            ValueTransform::Substr { arg, start, len } => {
                let s = arg.apply(value);
                // SQL semantics: characters from `start` (may be < 1) for `len`.
                let (from, to) = match len {
                    Some(l) => (*start, start.saturating_add((*l).max(0))),
                    None => (*start, i64::MAX),
                };
                s.chars()
                    .enumerate()
                    .filter(|(i, _)| {
                        let pos = *i as i64 + 1;
                        pos >= from && pos < to
                    })
                    .map(|(_, c)| c)
                    .collect()
            }
            ValueTransform::Right { arg, n } => {
                let s: Vec<char> = arg.apply(value).chars().collect();
                let n = usize::try_from((*n).max(0)).unwrap_or(0).min(s.len());
                s[s.len() - n..].iter().collect()
            }
        }
    }
}

/// One output column of a query result, with its role and lineage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputColumn {
    /// The column name in the result.
    pub name: String,
    /// What it is.
    pub role: Role,
    /// The source columns it is computed from (sorted, unique).
    pub sources: Vec<SourceColumn>,
    /// The functions and operators it went through, innermost first.
    pub through: Vec<String>,
    /// Whether a string function (concat, substr, upper, ...) touched it.
    pub string_function: bool,
    /// For a row-level or group-key column that is a known transformation of exactly one
    /// source column: that transformation (so a value can be recomputed from the source).
    pub transform: Option<ValueTransform>,
}

impl OutputColumn {
    /// Whether any source column is of `class`.
    pub fn derives_from(&self, class: SourceClass) -> bool {
        self.sources.iter().any(|s| s.class == class)
    }
}

/// Classify every output column of an optimized logical plan.
pub fn classify(
    plan: &LogicalPlan,
    catalog: &SourceCatalog,
) -> Result<Vec<OutputColumn>, LineageError> {
    plan::Walker::new(catalog).classify(plan)
}

/// The population a result describes: which tables, under which filters, grouped by
/// which keys. Two results with the same tables and keys but different filters describe
/// overlapping populations and can be subtracted from each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PopulationLineage {
    /// Source tables (sorted, unique).
    pub tables: Vec<String>,
    /// Filter conjuncts, normalised (columns named `table.column`, sorted, unique).
    pub filters: Vec<String>,
    /// Join conditions, normalised.
    pub joins: Vec<String>,
    /// Group keys of the outermost aggregate, normalised.
    pub group_keys: Vec<String>,
    /// SHA-256 over tables, joins, filters and group keys.
    pub sha256: String,
    /// SHA-256 over tables, joins and group keys only: equal for "the same population up
    /// to filters".
    pub shape_sha256: String,
    /// Filter conjuncts (also in `filters`) that compare an identifier with a literal:
    /// they single patients out. Their literals are stored as SHA-256 digests.
    #[serde(default)]
    pub identifier_filters: Vec<String>,
}

impl PopulationLineage {
    /// Build from its parts (sorting, removing duplicates, hashing).
    pub fn new(
        tables: Vec<String>,
        filters: Vec<String>,
        joins: Vec<String>,
        group_keys: Vec<String>,
    ) -> Self {
        let norm = |mut v: Vec<String>| {
            v.sort();
            v.dedup();
            v
        };
        let (tables, filters, joins, group_keys) =
            (norm(tables), norm(filters), norm(joins), norm(group_keys));
        let shape = serde_json::json!({"tables": tables, "joins": joins, "group_keys": group_keys});
        let full = serde_json::json!({
            "tables": tables, "joins": joins, "group_keys": group_keys, "filters": filters
        });
        PopulationLineage {
            shape_sha256: crate::digest::sha256_hex(shape.to_string().as_bytes()),
            sha256: crate::digest::sha256_hex(full.to_string().as_bytes()),
            tables,
            filters,
            joins,
            group_keys,
            identifier_filters: Vec::new(),
        }
    }
}

/// The population lineage of an optimized plan.
pub fn population(
    plan: &LogicalPlan,
    catalog: &SourceCatalog,
) -> Result<PopulationLineage, LineageError> {
    plan::Walker::new(catalog).population(plan)
}

/// What `lineage.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredLineage {
    /// Format version.
    pub format: u32,
    /// The output columns.
    pub columns: Vec<OutputColumn>,
    /// The population.
    pub population: PopulationLineage,
}

/// Write a result's lineage as `dir/lineage.json` (atomically, private).
pub fn store(
    dir: &Path,
    cols: &[OutputColumn],
    population: &PopulationLineage,
) -> Result<(), LineageError> {
    let stored = StoredLineage {
        format: 1,
        columns: cols.to_vec(),
        population: population.clone(),
    };
    let path = dir.join(LINEAGE_FILE);
    let text = serde_json::to_vec_pretty(&stored).map_err(|e| LineageError::File {
        path: path.clone(),
        message: e.to_string(),
    })?;
    write_atomic(&path, &text, Mode::Private)?;
    Ok(())
}

/// Read a result's lineage from `dir/lineage.json`; `None` when there is none.
pub fn load(dir: &Path) -> Result<Option<StoredLineage>, LineageError> {
    let path = dir.join(LINEAGE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(LineageError::File {
                path,
                message: e.to_string(),
            });
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| LineageError::File {
            path,
            message: format!("not a lineage file: {e}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transforms_apply_like_sql() {
        let src = Box::new(ValueTransform::Source);
        let up = ValueTransform::Upper { arg: src.clone() };
        assert_eq!(up.apply("ab1"), "AB1");
        let cat = ValueTransform::Concat {
            parts: vec![
                ValueTransform::Literal { text: "p-".into() },
                ValueTransform::Source,
            ],
        };
        assert_eq!(cat.apply("ab"), "p-ab");
        let sub = ValueTransform::Substr {
            arg: src.clone(),
            start: 1,
            len: Some(3),
        };
        assert_eq!(sub.apply("abcdef"), "abc");
        let sub2 = ValueTransform::Substr {
            arg: src.clone(),
            start: 3,
            len: None,
        };
        assert_eq!(sub2.apply("abcdef"), "cdef");
        let r = ValueTransform::Right { arg: src, n: 2 };
        assert_eq!(r.apply("abcdef"), "ef");
    }

    #[test]
    fn population_hash_ignores_order_and_separates_filters() {
        let a = PopulationLineage::new(
            vec!["patients".into()],
            vec!["b".into(), "a".into()],
            vec![],
            vec!["patients.sex".into()],
        );
        let b = PopulationLineage::new(
            vec!["patients".into()],
            vec!["a".into(), "b".into(), "a".into()],
            vec![],
            vec!["patients.sex".into()],
        );
        assert_eq!(a, b);
        let c = PopulationLineage::new(
            vec!["patients".into()],
            vec!["a".into()],
            vec![],
            vec!["patients.sex".into()],
        );
        assert_ne!(a.sha256, c.sha256);
        assert_eq!(a.shape_sha256, c.shape_sha256);
    }

    #[test]
    fn catalog_classes_follow_transforms() {
        let schemas = crate::schema::SchemaSet::builtin();
        let policy = Policy::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/demo.toml"),
            &schemas,
        )
        .expect("demo policy");
        let c = SourceCatalog::from_policy(&policy);
        assert_eq!(
            c.class("patients", "patient_pseudonym"),
            SourceClass::Pseudonym
        );
        assert_eq!(c.class("patients", "age_band"), SourceClass::Quasi);
        assert_eq!(c.class("patients", "postcode_district"), SourceClass::Quasi);
        assert_eq!(c.class("patients", "sex"), SourceClass::Quasi);
        assert_eq!(
            c.class("clinical_events", "snomed_code"),
            SourceClass::Clinical
        );
        assert_eq!(c.class("nowhere", "x"), SourceClass::Unknown);
    }
}
