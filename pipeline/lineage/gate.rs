//! The two places lineage meets a job: when its result is written, and when it is released.
//!
//! Owns the one call the query job runner makes ([`for_job`]: optimise the plan, classify
//! its columns, describe its population, apply the blocking rules, store `lineage.json`)
//! and the calls the release path makes ([`release_parts`]: the cells and population the
//! ledger entry records; [`record_release`] after export), plus the form of the purge
//! mark and withdrawal record that `tre purge` leaves beside a result (written and read
//! as sealed records by [`crate::tre::purge`], never here). Whether a release discloses
//! is not decided here: that is the received ledger's guard ([`crate::received`]). Danger: every failure here must block the
//! release, never let it through; a plan the walker cannot follow becomes a blocking
//! finding, not a silent pass.

use std::collections::BTreeMap;
use std::path::Path;

use arrow::array::{Array, Float64Array, StringArray};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use datafusion::dataframe::DataFrame;
use serde::{Deserialize, Serialize};

use super::ledger::{AuditHead, Ledger, LedgerCell, LedgerEntry, LedgerError, Published};
use super::rules::{LineageFinding, blocking_findings, population_findings};
use super::{
    LineageError, OutputColumn, PopulationLineage, Role, SourceCatalog, classify, population,
};
use crate::policy::Policy;

/// The file, next to a job's result, that marks it stale or purged-and-unreleasable.
pub const PURGE_MARK_FILE: &str = "purge.json";

/// What `tre purge` did to one stored result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultAction {
    /// Row-level pseudonym columns matched: the purged patients' rows were removed.
    RowsRemoved,
    /// It holds purged patients at row level in a form that cannot be matched: it is
    /// kept for the analyst but can never be released.
    PurgedUnreleasable,
    /// An aggregate over data that held purged patients: not releasable; re-run the job.
    Stale,
    /// Its data never held a purged patient.
    Untouched,
}

/// The mark left beside a stale or purged-and-unreleasable result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeMark {
    /// Stale or purged-and-unreleasable.
    pub action: ResultAction,
    /// When.
    pub at: String,
    /// SHA-256 of the opt-out list.
    pub opt_outs_sha256: String,
}

/// The file, next to a job's result, that withdraws it: written by `tre purge` for every
/// result computed before the purge from data holding the purged patients whose stored
/// outputs (safe table, status) still reflect them. A withdrawn result is never served
/// nor released; the job must be re-run.
pub const WITHDRAWN_FILE: &str = "withdrawn.json";

/// Why a job's result was withdrawn: which purge, when, and what it did to the result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Withdrawal {
    /// The purge's id (`purge-<UTC time>-<opt-out list hash prefix>`).
    pub purge: String,
    /// When the purge ran.
    pub at: String,
    /// SHA-256 of the opt-out list it applied.
    pub opt_outs_sha256: String,
    /// What it did to the result.
    pub action: ResultAction,
}

impl Withdrawal {
    /// The message a reader of the result gets instead of it.
    pub fn message(&self) -> String {
        format!(
            "withdrawn by purge {} ({}): the result was computed from data holding patients who have since opted out; re-run the job",
            self.purge, self.at
        )
    }
}

/// A result's lineage, analysed.
#[derive(Debug, Clone)]
pub struct ResultLineage {
    /// Output columns with roles.
    pub columns: Vec<OutputColumn>,
    /// The population.
    pub population: PopulationLineage,
    /// Reasons the result may never be released (empty: check it as an aggregate table
    /// with [`super::disclosure_roles`]).
    pub findings: Vec<LineageFinding>,
    /// Why the plan could not be followed, if it could not (then `findings` blocks).
    pub unsupported: Option<String>,
}

impl ResultLineage {
    /// Whether the result may never be released.
    pub fn blocked(&self) -> bool {
        !self.findings.is_empty()
    }

    /// The findings as one message per line, for the job's verdict.
    pub fn message(&self) -> String {
        let mut lines: Vec<String> = self.findings.iter().map(ToString::to_string).collect();
        if let Some(u) = &self.unsupported {
            lines.insert(0, u.clone());
        }
        lines.join("\n")
    }
}

/// Analyse a result's plan (infallible: a plan the walker cannot follow gives one
/// `Unclassified` column per output and a blocking finding).
pub fn analyse(
    plan: &datafusion::logical_expr::LogicalPlan,
    catalog: &SourceCatalog,
    allow_min_max: bool,
) -> ResultLineage {
    match (classify(plan, catalog), population(plan, catalog)) {
        (Ok(columns), Ok(population)) => {
            let mut findings = blocking_findings(&columns, allow_min_max);
            findings.extend(population_findings(&population));
            ResultLineage {
                findings,
                columns,
                population,
                unsupported: None,
            }
        }
        (Err(e), _) | (_, Err(e)) => {
            let columns: Vec<OutputColumn> = plan
                .schema()
                .fields()
                .iter()
                .map(|f| OutputColumn {
                    name: f.name().clone(),
                    role: Role::Unclassified,
                    sources: scanned_sources(plan, catalog),
                    through: Vec::new(),
                    string_function: true,
                    transform: None,
                })
                .collect();
            ResultLineage {
                findings: blocking_findings(&columns, allow_min_max),
                population: PopulationLineage::new(scanned_tables(plan), vec![], vec![], vec![]),
                columns,
                unsupported: Some(e.to_string()),
            }
        }
    }
}

fn scans(plan: &datafusion::logical_expr::LogicalPlan) -> Vec<(String, Vec<String>)> {
    use datafusion::common::tree_node::TreeNodeRecursion;
    let mut out = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let datafusion::logical_expr::LogicalPlan::TableScan(s) = node {
            out.push((
                s.table_name.table().to_string(),
                s.projected_schema
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .collect(),
            ));
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out
}

fn scanned_tables(plan: &datafusion::logical_expr::LogicalPlan) -> Vec<String> {
    scans(plan).into_iter().map(|(t, _)| t).collect()
}

fn scanned_sources(
    plan: &datafusion::logical_expr::LogicalPlan,
    catalog: &SourceCatalog,
) -> Vec<super::SourceColumn> {
    let mut v: Vec<super::SourceColumn> = scans(plan)
        .into_iter()
        .flat_map(|(t, cols)| {
            cols.into_iter().map(move |c| super::SourceColumn {
                class: catalog.class(&t, &c),
                table: t.clone(),
                column: c,
            })
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The query job runner's one call: optimise the job's plan, analyse it against the
/// project's catalog and store `lineage.json` in the job's folder `dir`.
pub fn for_job(
    df: &DataFrame,
    policy: &Policy,
    allow_min_max: bool,
    dir: &Path,
) -> Result<ResultLineage, LineageError> {
    let plan = df
        .clone()
        .into_optimized_plan()
        .map_err(|e| LineageError::UnsupportedPlan {
            node: format!("plan that does not optimise ({e})"),
        })?;
    let r = analyse(&plan, &SourceCatalog::from_policy(policy), allow_min_max);
    super::store(dir, &r.columns, &r.population)?;
    Ok(r)
}

/// Release-gate failures.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// Lineage or purge mark unreadable.
    #[error(transparent)]
    Lineage(#[from] LineageError),
    /// Ledger unreadable or unwritable.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

impl crate::error::Classify for GateError {
    fn kind(&self) -> crate::error::ErrorKind {
        match self {
            GateError::Lineage(e) => e.kind(),
            GateError::Ledger(e) => e.kind(),
        }
    }
}

/// Why a release is refused, by lineage.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum ReleaseBlock {
    /// The result has no stored lineage (run before lineage was recorded): re-run it.
    NoLineage,
}

impl std::fmt::Display for ReleaseBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReleaseBlock::NoLineage => write!(
                f,
                "the result has no recorded lineage (it predates lineage checks); re-run the job"
            ),
        }
    }
}

/// What lineage says about a release request.
#[derive(Debug, Clone)]
pub struct ReleaseCheck {
    /// Reasons to refuse (empty: lineage does not object).
    pub blocks: Vec<ReleaseBlock>,
    /// The result's population (None: no stored lineage).
    pub population: Option<PopulationLineage>,
    /// The release's cells: true values and what the safe table publishes.
    pub cells: Vec<LedgerCell>,
    /// The group keys' names in cell-key order (see [`key_dims`]).
    pub dims: Vec<String>,
}

impl ReleaseCheck {
    /// Whether lineage refuses the release.
    pub fn blocked(&self) -> bool {
        !self.blocks.is_empty()
    }

    /// The ledger entry to record once the release is exported (None when the result
    /// has no lineage, which [`release_parts`] blocks anyway).
    pub fn entry(
        &self,
        project: &str,
        release: &str,
        job: &str,
        exported_at: &str,
        audit_head: Option<AuditHead>,
    ) -> Option<LedgerEntry> {
        Some(LedgerEntry {
            format: 1,
            project: project.to_string(),
            release: release.to_string(),
            job: Some(job.to_string()),
            exported_at: exported_at.to_string(),
            population: self.population.clone()?,
            dims: self.dims.clone(),
            cells: self.cells.clone(),
            audit_head,
        })
    }
}

/// A check of a result with no stored lineage: blocked.
fn no_lineage() -> ReleaseCheck {
    ReleaseCheck {
        blocks: vec![ReleaseBlock::NoLineage],
        population: None,
        cells: Vec::new(),
        dims: Vec::new(),
    }
}

/// What the release path needs of lineage, before export: the release's population,
/// cells and keys for its ledger entry ([`ReleaseCheck::entry`]), or a `NoLineage` block.
/// The release's disclosure check is not here: it is the patient-counting guard
/// ([`crate::received`]), and purge withdrawals are sealed records read by
/// [`crate::tre::purge`]. `result` is the job's result as stored, `published` the safe
/// table that would be exported.
pub fn release_parts(
    job_dir: &Path,
    result: &[RecordBatch],
    published: &[RecordBatch],
) -> Result<ReleaseCheck, GateError> {
    let Some(stored) = super::load(job_dir)? else {
        return Ok(no_lineage());
    };
    Ok(ReleaseCheck {
        blocks: Vec::new(),
        dims: key_dims(&stored.columns),
        cells: cells_from_batches(result, published, &stored.columns),
        population: Some(stored.population),
    })
}

/// The name of each group key of a result, in cell-key order: its source columns and the
/// functions it went through (so two releases name the same key the same way).
pub fn key_dims(columns: &[OutputColumn]) -> Vec<String> {
    columns
        .iter()
        .filter(|c| c.role == Role::GroupKey)
        .map(|c| {
            let src: Vec<String> = c
                .sources
                .iter()
                .map(|s| format!("{}.{}", s.table, s.column))
                .collect();
            format!("{}({})", c.through.join("."), src.join(","))
        })
        .collect()
}

/// After export: record the release in the ledger (the entry from
/// [`ReleaseCheck::entry`]).
pub fn record_release(ledger_dir: &Path, entry: &LedgerEntry) -> Result<(), GateError> {
    Ledger::open(ledger_dir).record(entry)?;
    Ok(())
}

fn strings(b: &RecordBatch, i: usize) -> Option<StringArray> {
    let c = arrow::compute::cast(b.column(i), &DataType::Utf8).ok()?;
    c.as_any().downcast_ref::<StringArray>().cloned()
}

fn numbers(b: &RecordBatch, i: usize) -> Option<Float64Array> {
    let c = arrow::compute::cast(b.column(i), &DataType::Float64).ok()?;
    c.as_any().downcast_ref::<Float64Array>().cloned()
}

/// Rows of `batches` as (group key labels, statistic values by column).
type Rows = Vec<(Vec<String>, BTreeMap<String, Option<f64>>)>;

fn rows(batches: &[RecordBatch], columns: &[OutputColumn]) -> Rows {
    let mut out = Vec::new();
    for b in batches {
        let schema = b.schema();
        let idx = |n: &str| schema.index_of(n).ok();
        let keys: Vec<Option<StringArray>> = columns
            .iter()
            .filter(|c| c.role == Role::GroupKey)
            .map(|c| idx(&c.name).and_then(|i| strings(b, i)))
            .collect();
        let stats: Vec<(String, Option<Float64Array>)> = columns
            .iter()
            .filter(|c| c.role.is_aggregate())
            .map(|c| (c.name.clone(), idx(&c.name).and_then(|i| numbers(b, i))))
            .collect();
        for r in 0..b.num_rows() {
            let key = keys
                .iter()
                .map(|k| {
                    k.as_ref()
                        .filter(|a| a.is_valid(r))
                        .map_or(String::new(), |a| a.value(r).to_string())
                })
                .collect();
            let vals = stats
                .iter()
                .map(|(n, a)| {
                    let v = a.as_ref().filter(|a| a.is_valid(r)).map(|a| a.value(r));
                    (n.clone(), v)
                })
                .collect();
            out.push((key, vals));
        }
    }
    out
}

/// Ledger cells of a result: group labels, the true values (`result`) and what the safe
/// table published (`published`, matched by group labels; missing or empty = hidden).
pub fn cells_from_batches(
    result: &[RecordBatch],
    published: &[RecordBatch],
    columns: &[OutputColumn],
) -> Vec<LedgerCell> {
    let shown: BTreeMap<Vec<String>, BTreeMap<String, Option<f64>>> =
        rows(published, columns).into_iter().collect();
    let mut out = Vec::new();
    for (key, vals) in rows(result, columns) {
        for c in columns.iter().filter(|c| c.role.is_aggregate()) {
            let is_count = matches!(c.role, Role::Count { .. });
            let published = match shown
                .get(&key)
                .and_then(|r| r.get(&c.name))
                .copied()
                .flatten()
            {
                Some(value) => Published::Value { value },
                None => Published::Hidden,
            };
            out.push(LedgerCell {
                key: key.clone(),
                column: c.name.clone(),
                count: is_count,
                published,
                true_value: if is_count {
                    vals.get(&c.name).copied().flatten()
                } else {
                    None
                },
            });
        }
    }
    out
}
