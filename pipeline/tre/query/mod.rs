//! Query jobs: the analyst's aggregate SQL defines a population; the TRE computes and
//! judges the table itself, counting patients from the data.
//!
//! Owns running one job inside the job's child process (see [`crate::jobs`]): only the
//! project's installed datasets are registered (by table name), DDL, DML and other
//! statements are refused (no `COPY`, no `CREATE EXTERNAL TABLE`, so no other file can be
//! read), and DataFusion's memory pool is capped. [`spec`] recognises the closed form
//! (one GROUP BY aggregate of patients, rows, sums and means; ratios and shares of them
//! the TRE derives from published cells; MIN/MAX/MEDIAN where the rules allow) and takes
//! the aggregate's INPUT as the population; `cells` checks by value that every row carries a patient of
//! the installed datasets and computes each cell's patients, rows, sums and per-patient
//! contributions (writing `membership.parquet`); `gate` runs the disclosure checks on
//! those patient counts and writes `result.parquet` (exact, private), `safe.csv`,
//! `check.json` and `cells.json`, and decides the [`JobVerdict`]. [`received_guard`] is
//! the seam to the differencing guard. DataFusion's error text can quote data (a failed
//! CAST names the value), so errors are reduced to their kind ([`SqlFailure`]) before
//! they leave this module. Danger: nothing the analyst's SQL computes is ever published:
//! only what the TRE computed from counted patients and the checks let through.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{ParquetReadOptions, SQLOptions, SessionConfig};
use serde::{Deserialize, Serialize};

use crate::disclosure::{self, Rules};
use crate::durable::FileRecord;
use crate::output::OutputError;
use crate::policy::Policy;
use crate::tre::id::Id;
use crate::tre::verdict::{JobVerdict, RefusalReason};
use crate::tre::workspace::{Workspace, WorkspaceError};

mod cells;
mod flow;
mod gate;
mod pairs;
pub mod spec;

/// Results with more rows than this are treated as row-level: never releasable.
pub const MAX_CHECKED_ROWS: usize = 100_000;

/// What kind of SQL failure, without any text that might quote data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SqlFailure {
    /// The SQL does not parse or plan (a wrong name, a type error at planning).
    Plan,
    /// Running it failed (a failed cast, a division error, ...); details withheld
    /// because they may quote values.
    Execution,
    /// It needed more memory than the job may use.
    ResourcesExhausted,
}

/// Query job failures.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The engine could not be reached (`tre serve --scheduler`: the cluster is down).
    #[error("{0}")]
    Cluster(String),
    /// The differencing guard could not check the table (it is then never readable).
    #[error("the table could not be checked against the tables already received: {0}")]
    Guard(String),
    /// The query plan could not be classified (the lineage could not be stored).
    #[error(transparent)]
    Lineage(#[from] crate::lineage::LineageError),
    /// The SQL does not plan: DataFusion's planning message (it quotes the SQL and the
    /// schema, never data).
    #[error("the SQL does not plan: {message}{hint}")]
    Plan {
        /// DataFusion's planning message.
        message: String,
        /// A hint (the datasets there are).
        hint: String,
    },
    /// The SQL failed while running; its text is withheld.
    #[error(
        "the query failed while running ({failure:?}); details are withheld because they may quote data values: check casts and arithmetic"
    )]
    Run {
        /// The kind of failure.
        failure: SqlFailure,
    },
    /// The result passed the row limit.
    #[error(
        "the job was stopped: its result passed the project's limit of {limit} rows; group by fewer or coarser columns, or narrow the population"
    )]
    RowLimit {
        /// The limit.
        limit: u64,
    },
    /// The output rules are not usable in the service.
    #[error(
        "the project's output_rules {spec:?} is neither a preset nor a rules file installed with the project"
    )]
    Rules {
        /// The policy's `output_rules`.
        spec: String,
    },
    /// Workspace trouble.
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    /// Writing the result failed.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// A durable write failed.
    #[error(transparent)]
    Durable(#[from] crate::durable::DurableError),
    /// The disclosure check could not run.
    #[error(transparent)]
    Disclosure(#[from] disclosure::DisclosureError),
    /// A tokio runtime could not start.
    #[error("cannot start the query runtime: {0}")]
    Runtime(std::io::Error),
}

impl crate::error::Classify for QueryError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            QueryError::Plan { .. }
            | QueryError::Run { .. }
            | QueryError::RowLimit { .. }
            | QueryError::Rules { .. } => ErrorKind::Refused,
            QueryError::Workspace(w) => crate::error::Classify::kind(w),
            _ => ErrorKind::Failed,
        }
    }
}

/// How Ballista's client says a logical plan could not be encoded for the scheduler.
const CLUSTER_ENCODING_FAILED: &str = "failed to serialize logical plan";

/// Reduce a DataFusion error to what may be shown: planning messages (which quote the
/// SQL and the schema) are kept; anything raised while running is reduced to its kind.
pub fn reduce(e: &DataFusionError, tables: &[String]) -> QueryError {
    match e.find_root() {
        DataFusionError::SQL(..)
        | DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(_)
        | DataFusionError::Configuration(_) => {
            let message = e.find_root().to_string();
            let hint = if message.contains("not found") {
                format!("; this project's datasets are: {}", tables.join(", "))
            } else {
                String::new()
            };
            QueryError::Plan { message, hint }
        }
        // Ballista sends the plan to the scheduler; a table function without a cluster
        // encoding cannot travel. The message names the SQL's shape, never data.
        DataFusionError::Internal(m) if m.starts_with(CLUSTER_ENCODING_FAILED) => {
            QueryError::Plan {
                message: "this query cannot be sent to the cluster: it uses a table function \
                          (such as generate_series) that has no cluster encoding"
                    .into(),
                hint: "; write the numbers as a VALUES list instead".into(),
            }
        }
        DataFusionError::ResourcesExhausted(_) => QueryError::Run {
            failure: SqlFailure::ResourcesExhausted,
        },
        _ => QueryError::Run {
            failure: SqlFailure::Execution,
        },
    }
}

/// Limits of one job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueryLimits {
    /// Most result rows.
    pub max_rows: u64,
    /// Longest run (wall clock), enforced by the parent process.
    pub max_seconds: u64,
    /// Most memory of the job's process (address space), in bytes.
    pub memory_bytes: u64,
    /// Worker threads / partitions.
    pub threads: usize,
}

impl QueryLimits {
    /// The project's limits (policy `[tre]`), with defaults.
    pub fn for_policy(policy: &Policy) -> Self {
        let tre = policy.tre.as_ref();
        QueryLimits {
            max_rows: tre.and_then(|t| t.max_result_rows).unwrap_or(10_000_000),
            max_seconds: tre.and_then(|t| t.max_query_seconds).unwrap_or(3600),
            memory_bytes: tre.and_then(|t| t.max_query_memory_mb).unwrap_or(1024) << 20,
            threads: 2,
        }
    }

    /// DataFusion's pool: a third of the process limit, leaving room for the binary,
    /// thread stacks and the result check.
    pub fn pool_bytes(&self) -> usize {
        usize::try_from(self.memory_bytes / 3).unwrap_or(usize::MAX)
    }
}

/// What a job produced (written by the child, sealed into the job record by the server).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueryOutcome {
    /// Result rows.
    pub rows: u64,
    /// Result columns.
    pub columns: Vec<String>,
    /// The result file, by name inside the job folder.
    pub result: FileRecord,
    /// The safe table (suppressed and rounded), when the result can be released at all.
    pub safe: Option<FileRecord>,
    /// The disclosure report (Markdown), when the result was checked.
    pub report: Option<String>,
    /// Whether the result passes the checks as it is.
    pub releasable: bool,
    /// Whether its safe version may be requested for release.
    pub releasable_after_apply: bool,
    /// The gate's verdict (turned into words by [`JobVerdict::for_analyst`] and
    /// [`JobVerdict::for_checker`]).
    pub verdict: JobVerdict,
    /// Rules used.
    pub rules: String,
    /// SHA-256 of the rules used (their canonical JSON).
    pub rules_sha256: String,
}

impl QueryOutcome {
    /// Nothing produced yet, under the rules `rules` (their SHA-256 `rules_sha256`).
    pub fn empty(rules: String, rules_sha256: String) -> QueryOutcome {
        QueryOutcome {
            rows: 0,
            columns: Vec::new(),
            result: FileRecord {
                path: String::new(),
                size: 0,
                sha256: String::new(),
            },
            safe: None,
            report: None,
            releasable: false,
            releasable_after_apply: false,
            verdict: JobVerdict::Empty,
            rules,
            rules_sha256,
        }
    }
}

/// Where a job's files live.
pub fn job_dir(ws: &Workspace, project: &Id, job: &Id) -> PathBuf {
    ws.project_dir(project).join("results").join(job.as_str())
}

/// The project's output rules and their sha256: a preset, or a rules file installed in
/// the project folder under a plain file name.
pub fn project_rules(
    ws: &Workspace,
    policy: &Policy,
) -> Result<(String, Rules, String), QueryError> {
    let spec = policy
        .tre
        .as_ref()
        .and_then(|t| t.output_rules.clone())
        .unwrap_or_else(|| "opensafely".into());
    let rules = if Rules::preset_names().contains(&spec.as_str()) {
        Rules::preset(&spec)?
    } else {
        // Never the path the policy names: the copy `tre admin project add` checked and
        // installed in the project's folder.
        let project = Id::parse("project", &policy.project.id).map_err(WorkspaceError::from)?;
        let path = ws
            .project_dir(&project)
            .join(crate::tre::workspace::PROJECT_RULES_FILE);
        // Checked against the sha256 `installed.json` recorded at install: an edit on
        // disk is refused.
        ws.installed_file(&project, crate::tre::workspace::PROJECT_RULES_FILE)?;
        Rules::load(&path)?
    };
    let canonical =
        serde_json::to_vec(&rules).map_err(|_| QueryError::Rules { spec: spec.clone() })?;
    Ok((spec, rules, crate::digest::sha256_hex(&canonical)))
}

/// Most cells a job's table may have (more is row-level in all but name).
pub const MAX_CELLS: usize = MAX_CHECKED_ROWS;

/// The received ledger's per-table membership file (one row per (patient, cell)).
pub const MEMBERSHIP_FILE: &str = "membership.parquet";

/// Where one job's time went (`benches/query.rs` reports it; never shown to analysts).
#[derive(Debug, Clone, Copy, Default)]
pub struct PhaseTimes {
    /// Registering the datasets, planning the SQL, recognising the table, its lineage.
    pub plan: Duration,
    /// The by-value check of the population's patients (after the aggregation's scan,
    /// before anything is written; not part of `aggregate`).
    pub patient_check: Duration,
    /// The aggregation per (cell, patient) and per cell, with `membership.parquet`.
    pub aggregate: Duration,
    /// Of `aggregate`: encoding and writing `membership.parquet`.
    pub membership: Duration,
    /// The disclosure checks and writing the result, safe table, report and cells.
    pub judge: Duration,
}

/// Run a job: recognise its table, compute it from counted patients, judge it: the body
/// of the job's child process.
pub fn run_query(
    ws: &Workspace,
    policy: &Policy,
    sql: &str,
    dir: &Path,
    limits: &QueryLimits,
) -> Result<QueryOutcome, QueryError> {
    run_query_timed(ws, policy, sql, dir, limits).map(|(outcome, _)| outcome)
}

/// [`run_query`], also saying where the time went.
pub fn run_query_timed(
    ws: &Workspace,
    policy: &Policy,
    sql: &str,
    dir: &Path,
    limits: &QueryLimits,
) -> Result<(QueryOutcome, PhaseTimes), QueryError> {
    // The job folder must be reached without a symlink (one planted while the server
    // runs is refused here, and every write below re-checks its folder).
    crate::tre::workspace::check_dir(dir)?;
    let datasets = ws.datasets(policy)?;
    let (spec, rules, rules_sha256) = project_rules(ws, policy)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(limits.threads.max(1))
        .enable_all()
        .build()
        .map_err(QueryError::Runtime)?;
    let mut outcome = QueryOutcome::empty(spec, rules_sha256);
    let mut times = PhaseTimes::default();
    rt.block_on(execute(
        &datasets,
        policy,
        &rules,
        sql,
        dir,
        limits,
        &mut outcome,
        &mut times,
    ))?;
    outcome.releasable = outcome.verdict == JobVerdict::Releasable;
    outcome.releasable_after_apply = outcome.verdict.has_safe_table() && outcome.safe.is_some();
    Ok((outcome, times))
}

/// Plan the SQL, recognise its table, check its patients, compute and judge it.
#[allow(clippy::too_many_arguments)]
async fn execute(
    datasets: &[(String, PathBuf)],
    policy: &Policy,
    rules: &Rules,
    sql: &str,
    dir: &Path,
    limits: &QueryLimits,
    outcome: &mut QueryOutcome,
    times: &mut PhaseTimes,
) -> Result<(), QueryError> {
    let started = Instant::now();
    let names: Vec<String> = datasets.iter().map(|(n, _)| n.clone()).collect();
    let err = |e: DataFusionError| reduce(&e, &names);
    let config = SessionConfig::new()
        .with_target_partitions(limits.threads.max(1))
        .with_information_schema(false);
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_limit(limits.pool_bytes(), 1.0)
        .build_arc()
        .map_err(err)?;
    // The one engine seam (`tre serve --scheduler`): embedded, or the Ballista cluster.
    let ctx = crate::cluster::job_context(config, runtime)
        .await
        .map_err(|e| QueryError::Cluster(e.to_string()))?;
    for (name, path) in datasets {
        ctx.register_parquet(
            name.as_str(),
            path.to_string_lossy().as_ref(),
            ParquetReadOptions::default(),
        )
        .await
        .map_err(err)?;
    }
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let df = ctx.sql_with_options(sql, options).await.map_err(err)?;
    // `tre purge` and the release path read the plan's lineage beside the result.
    crate::lineage::for_job(&df, policy, rules.min_max.allow, dir)?;
    let refuse = |reason| JobVerdict::Refused { reason };
    let table = match spec::recognise(df.logical_plan(), rules.min_max.allow) {
        Ok(t) => t,
        Err(spec::SpecError::NoPatientColumn) => {
            outcome.verdict = refuse(RefusalReason::NoPatientColumn);
            return Ok(());
        }
        Err(e @ spec::SpecError::Form { .. }) => {
            outcome.verdict = refuse(RefusalReason::NotATable {
                message: e.to_string(),
            });
            return Ok(());
        }
        Err(spec::SpecError::Plan(message)) => {
            return Err(QueryError::Plan {
                message,
                hint: String::new(),
            });
        }
    };
    // Every row must carry only its own patient's data (no amplification, no one
    // patient's value in everyone's row): checked on the optimised plan.
    let optimised = ctx.state().optimize(&table.population).map_err(err)?;
    if let Err(e) = flow::check(&optimised) {
        outcome.verdict = refuse(RefusalReason::NotATable {
            message: e.to_string(),
        });
        return Ok(());
    }
    cells::register(&ctx, &table, &err).await?;
    times.plan = started.elapsed();
    let started = Instant::now();
    let top = rules.contributors_needed();
    let mut spent = cells::ComputeTimes::default();
    let computed = cells::compute(
        &ctx, datasets, &table, top, limits, MAX_CELLS, dir, &mut spent, &err,
    )
    .await?;
    times.aggregate = started.elapsed().saturating_sub(spent.patient_check);
    times.patient_check = spent.patient_check;
    times.membership = spent.membership;
    let computed = match computed {
        Ok(c) => c,
        Err(cells::NotComputed::TooManyCells(limit)) => {
            outcome.verdict = refuse(RefusalReason::TooManyCells { limit });
            return Ok(());
        }
        Err(cells::NotComputed::UnknownPatients) => {
            outcome.verdict = refuse(RefusalReason::UnknownPatients);
            return Ok(());
        }
    };
    if computed.cells.is_empty() {
        outcome.verdict = JobVerdict::Empty;
        return Ok(());
    }
    let started = Instant::now();
    let judged = gate::judge(&table, &computed, rules, dir, outcome);
    times.judge = started.elapsed();
    judged
}

/// What the differencing guard (`pipeline/received`, issue 22 point 3) says of a job's
/// new table, against every table the same analyst already received in the project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardOutcome {
    /// No small group is exposed.
    Clear,
    /// Refused: the earlier table (a job id; `None` when the table on its own is the
    /// cause) and the guard's message (no patient value).
    Refused {
        /// The earlier table.
        earlier_table: Option<String>,
        /// Why.
        message: String,
    },
}

/// The differencing guard (`crate::received`), called by the job's process for a table
/// with a safe version, BEFORE the job record makes it readable. `dir` holds the new
/// table's `cells.json` and `membership.parquet`; `analyst` is the job's submitter. The
/// earlier tables are every table that analyst could read in the project (a finished job
/// of theirs with a safe version) and every table the project exported (whoever asked
/// for it). A record that cannot be read is refused, never skipped (fail closed).
pub fn received_guard(
    ws: &Workspace,
    project: &Id,
    analyst: &Id,
    dir: &Path,
) -> Result<GuardOutcome, QueryError> {
    use crate::received::{self, GuardRules, GuardVerdict, ReceivedTableOnDisk};
    let guard_failed = |e: String| QueryError::Guard(e);
    let results = ws.project_dir(project).join("results");
    let this = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let new = ReceivedTableOnDisk::new(&results, &this);
    let table = new.read_table().map_err(|e| guard_failed(e.to_string()))?;
    // Tables the project exported, whoever asked for them.
    let mut exported = std::collections::BTreeSet::new();
    let requests = ws.project_dir(project).join("requests");
    if requests.exists() {
        for name in
            crate::tre::workspace::list_dir(&requests).map_err(|e| guard_failed(e.to_string()))?
        {
            let Some(stem) = name.strip_suffix(".json") else {
                continue;
            };
            let Ok(id) = Id::parse("release", stem) else {
                continue;
            };
            let r = crate::tre::release::load(ws, project, &id)
                .map_err(|e| guard_failed(e.to_string()))?;
            if r.state == crate::tre::release::ReleaseState::Exported {
                exported.insert(r.job.to_string());
            }
        }
    }
    let mut earlier = Vec::new();
    for t in received::list_received(&results).map_err(|e| guard_failed(e.to_string()))? {
        if t.job == this {
            continue;
        }
        if exported.contains(&t.job) {
            earlier.push(t);
            continue;
        }
        let Ok(job) = Id::parse("job", &t.job) else {
            continue;
        };
        let rec =
            crate::tre::job::load(ws, project, &job).map_err(|e| guard_failed(e.to_string()))?;
        let readable = rec.submitter == *analyst
            && rec.state == crate::tre::job::JobState::Succeeded
            && rec
                .outcome
                .as_ref()
                .is_some_and(|o| o.verdict.has_safe_table());
        if readable {
            earlier.push(t);
        }
    }
    let mut rules = GuardRules::new(table.threshold);
    // Sums keep the protection of the rules the new table was checked under (their p%).
    if let Some(p) = table.sum_protection.filter(|p| *p > 0.0 && *p < 1.0) {
        rules.sum_protection = p;
    }
    match received::check_new_table(&new, &earlier, &rules)
        .map_err(|e| guard_failed(e.to_string()))?
    {
        GuardVerdict::Clear => Ok(GuardOutcome::Clear),
        GuardVerdict::Refused {
            earlier_table,
            message,
        } => Ok(GuardOutcome::Refused {
            earlier_table,
            message,
        }),
    }
}

/// Apply the guard's answer: a refused table loses its safe version (deleted) and the
/// job's verdict names the earlier table.
pub fn apply_guard(
    outcome: &mut QueryOutcome,
    guard: GuardOutcome,
    dir: &Path,
) -> Result<(), QueryError> {
    if let GuardOutcome::Refused {
        earlier_table,
        message,
    } = guard
    {
        outcome.safe = None;
        outcome.releasable = false;
        outcome.releasable_after_apply = false;
        // The verdict names the job itself (its folder's name) when no earlier table is
        // involved.
        let alone = earlier_table.is_none();
        let earlier_table = earlier_table.unwrap_or_else(|| {
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        outcome.verdict = JobVerdict::Refused {
            reason: RefusalReason::Differencing {
                earlier_table,
                message,
                alone,
            },
        };
        match std::fs::remove_file(dir.join("safe.csv")) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(QueryError::Output(OutputError::Io {
                    path: PathBuf::from("safe.csv"),
                    source,
                }));
            }
        }
    }
    Ok(())
}

/// The safe table as CSV with a header (hidden cells empty).
pub fn safe_csv(batch: &RecordBatch) -> Result<Vec<u8>, QueryError> {
    let mut csv = Vec::new();
    {
        let mut w = arrow::csv::WriterBuilder::new()
            .with_header(true)
            .build(&mut csv);
        w.write(batch).map_err(|e| {
            QueryError::Output(OutputError::Io {
                path: PathBuf::from("safe.csv"),
                source: std::io::Error::other(e.to_string()),
            })
        })?;
    }
    Ok(csv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planning_errors_keep_their_message() {
        let e = DataFusionError::Plan("table 'x' not found".into());
        let q = reduce(&e, &["patients".into()]);
        let text = q.to_string();
        assert!(
            text.contains("not found") && text.contains("patients"),
            "{text}"
        );
    }

    #[test]
    fn execution_errors_never_quote_values() {
        let e = DataFusionError::Execution("Cannot cast string '9434765919' to Int32".into());
        let text = reduce(&e, &[]).to_string();
        assert!(!text.contains("9434765919"), "{text}");
        assert!(matches!(
            reduce(&DataFusionError::ResourcesExhausted("x".into()), &[]),
            QueryError::Run {
                failure: SqlFailure::ResourcesExhausted
            }
        ));
    }

    #[test]
    fn arrow_errors_are_reduced_too() {
        let e = DataFusionError::ArrowError(
            Box::new(arrow::error::ArrowError::CastError(
                "value 'secret' bad".into(),
            )),
            None,
        );
        assert!(!reduce(&e, &[]).to_string().contains("secret"));
    }

    #[test]
    fn a_plan_the_cluster_cannot_encode_is_a_planning_refusal_that_says_what_to_write() {
        let e = DataFusionError::Internal(format!(
            "{CLUSTER_ENCODING_FAILED}: Context(\"Error serializing custom table\", NotImplemented(\"LogicalExtensionCodec is not provided\"))"
        ));
        let q = reduce(&e, &[]);
        let text = q.to_string();
        assert!(matches!(q, QueryError::Plan { .. }), "{text}");
        assert!(
            text.contains("generate_series") && text.contains("VALUES"),
            "{text}"
        );
        // Any other internal error stays withheld.
        let other = reduce(&DataFusionError::Internal("row 9434765919".into()), &[]);
        assert!(matches!(other, QueryError::Run { .. }), "{other}");
    }
}
