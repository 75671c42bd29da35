//! Query jobs: analyst SQL over one project's pseudonymised datasets, with DataFusion.
//!
//! Owns running one job's SQL, inside the job's child process (see [`crate::jobs`]): only
//! the project's installed datasets are registered (by table name), DDL, DML and other
//! statements are refused (no `COPY`, no `CREATE EXTERNAL TABLE`, so no other file can be
//! read), DataFusion's memory pool is capped, and results stream batch by batch into
//! `results/<job>/result.parquet`. Every result then goes through [`check_result`] (the
//! one place a result is judged) and its safe version is written as `safe.csv`.
//! DataFusion's error text can quote data (a failed CAST names the value), so errors are
//! reduced to their kind ([`SqlFailure`]) before they leave this module. Danger: results
//! may be row-level; this module never prints result rows, and a result too large to be
//! an aggregate is marked as never releasable.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{ParquetReadOptions, SQLOptions, SessionConfig};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::disclosure::{self, Rules};
use crate::durable::{FileRecord, Mode, write_atomic};
use crate::output::{OutputError, ParquetSink};
use crate::policy::Policy;
use crate::tre::id::Id;
use crate::tre::workspace::{Workspace, WorkspaceError};

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
        "the job was stopped: its result passed the project's limit of {limit} rows; aggregate further or add a LIMIT"
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
    /// One-line verdict for people.
    pub verdict: String,
    /// Rules used.
    pub rules: String,
    /// SHA-256 of the rules used (their canonical JSON).
    pub rules_sha256: String,
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

/// Run a job's SQL, write its result, check it: the body of the job's child process.
pub fn run_query(
    ws: &Workspace,
    policy: &Policy,
    sql: &str,
    dir: &Path,
    limits: &QueryLimits,
) -> Result<QueryOutcome, QueryError> {
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
    let result_path = dir.join("result.parquet");
    let (rows, columns, kept, record, lineage) = rt.block_on(execute(
        &datasets,
        policy,
        &rules,
        sql,
        &result_path,
        limits,
    ))?;
    let mut outcome = QueryOutcome {
        rows,
        columns,
        result: FileRecord {
            path: "result.parquet".into(),
            ..record
        },
        safe: None,
        report: None,
        releasable: false,
        releasable_after_apply: false,
        verdict: String::new(),
        rules: spec,
        rules_sha256,
    };
    check_result(&kept, rows, &rules, &lineage, dir, &mut outcome)?;
    Ok(outcome)
}

type Executed = (
    u64,
    Vec<String>,
    Option<Vec<RecordBatch>>,
    FileRecord,
    crate::lineage::ResultLineage,
);

/// Plan and stream the SQL into the result file; keep the batches if the result is
/// small enough to be an aggregate.
async fn execute(
    datasets: &[(String, PathBuf)],
    policy: &Policy,
    rules: &Rules,
    sql: &str,
    result_path: &Path,
    limits: &QueryLimits,
) -> Result<Executed, QueryError> {
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
    // What each output column is comes from the optimised plan (stored as lineage.json
    // beside the result), never from its name.
    let dir = result_path.parent().unwrap_or(Path::new("."));
    let lineage = crate::lineage::for_job(&df, policy, rules.min_max.allow, dir)?;
    let schema: Arc<arrow::datatypes::Schema> = Arc::new(df.schema().as_arrow().clone());
    let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let mut stream = df.execute_stream().await.map_err(err)?;
    let mut sink = ParquetSink::create(result_path, schema)?;
    let mut rows = 0u64;
    let mut kept: Option<Vec<RecordBatch>> = Some(Vec::new());
    while let Some(b) = stream.next().await {
        let b = b.map_err(err)?;
        rows += b.num_rows() as u64;
        if rows > limits.max_rows {
            return Err(QueryError::RowLimit {
                limit: limits.max_rows,
            });
        }
        sink.write(&b)?;
        if rows > MAX_CHECKED_ROWS as u64 {
            kept = None;
        } else if let Some(k) = kept.as_mut() {
            k.push(b);
        }
    }
    let (record, _) = sink.finish()?;
    Ok((rows, columns, kept, record, lineage))
}

/// Judge a result: the one place a job's result is checked (disclosure rules now; the
/// plan-lineage classifier joins here). Writes `check.json`, and `safe.csv` when the
/// result can be made safe, and fills in the outcome's verdict.
pub fn check_result(
    kept: &Option<Vec<RecordBatch>>,
    rows: u64,
    rules: &Rules,
    lineage: &crate::lineage::ResultLineage,
    dir: &Path,
    outcome: &mut QueryOutcome,
) -> Result<(), QueryError> {
    if lineage.blocked() {
        outcome.verdict = format!(
            "blocked by the query plan: it can never be released\n{}",
            lineage.message()
        );
        return Ok(());
    }
    let batches = match kept {
        _ if rows == 0 => {
            outcome.verdict = "empty result: nothing to release".into();
            return Ok(());
        }
        None => {
            outcome.verdict = format!(
                "row-level result ({rows} rows): it stays in the workspace and can never be released"
            );
            return Ok(());
        }
        Some(b) => b,
    };
    let roles = crate::lineage::disclosure_roles(&lineage.columns);
    let report = match disclosure::check_with_roles(batches, &roles, rules) {
        Ok(r) => r,
        Err(e) => {
            outcome.verdict =
                format!("cannot be checked as an aggregate table ({e}); it can never be released");
            return Ok(());
        }
    };
    let json = serde_json::to_vec_pretty(&report).map_err(|_| QueryError::Rules {
        spec: outcome.rules.clone(),
    })?;
    write_atomic(&dir.join("check.json"), &json, Mode::Private)?;
    outcome.report = Some(report.render(disclosure::Format::Markdown));
    let blocked = report.verdict == disclosure::Verdict::Blocked;
    outcome.releasable = report.releasable();
    outcome.releasable_after_apply = !blocked;
    outcome.verdict = if report.releasable() {
        "passes the disclosure checks: may be released as it is".into()
    } else if blocked {
        "blocked: looks like row-level data; can never be released".into()
    } else {
        let rules: Vec<&str> = report
            .table_findings
            .iter()
            .filter(|f| f.fails)
            .map(|f| f.rule.as_str())
            .collect();
        let mut why = format!("{} cells flagged", report.findings.len());
        if !rules.is_empty() {
            why.push_str(&format!("; table rules: {}", rules.join(", ")));
        }
        format!(
            "fails the disclosure checks ({why}); its safe version (suppressed and rounded) may be requested"
        )
    };
    if !blocked {
        let safe = match report.apply() {
            Ok(safe) => safe,
            Err(e @ disclosure::DisclosureError::Unprotected { .. }) => {
                outcome.releasable_after_apply = false;
                outcome.verdict =
                    format!("fails the disclosure checks and cannot be made safe: {e}");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let csv = safe_csv(&safe)?;
        let rec = write_atomic(&dir.join("safe.csv"), &csv, Mode::Private)?;
        outcome.safe = Some(FileRecord {
            path: "safe.csv".into(),
            ..rec
        });
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
}
