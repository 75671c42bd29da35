//! Query jobs: analyst SQL over one project's pseudonymised datasets, with DataFusion.
//!
//! Owns running a job: only the project's verified datasets are registered (by table
//! name), DDL, DML and other statements are refused (no `COPY`, no `CREATE EXTERNAL
//! TABLE`, so no other file can be read), memory is capped by DataFusion's memory pool
//! (operators spill or fail, never grow without bound) and results stream batch by batch
//! into `results/<job>/result.parquet`. A row or time limit ends the job with a clear
//! message. Every result is put through [`crate::disclosure::check`] with the project's
//! output rules and the verdict stored beside it. Danger: results may be row-level; this
//! module never prints result rows, and a result too large to be an aggregate is marked
//! as not releasable without further ado.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{ParquetReadOptions, SQLOptions, SessionConfig, SessionContext};
use futures::StreamExt;
use serde::Serialize;

use crate::disclosure::{self, RoleSpec, Rules};
use crate::durable::{FileRecord, Mode, write_atomic};
use crate::output::{OutputError, ParquetSink};
use crate::policy::Policy;
use crate::tre::workspace::{Workspace, WorkspaceError};

/// Results with more rows than this are treated as row-level: never releasable.
pub const MAX_CHECKED_ROWS: usize = 100_000;

/// Query job failures.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The SQL does not plan or run.
    #[error("SQL error: {message}{hint}")]
    Sql {
        /// DataFusion's message.
        message: String,
        /// A hint (e.g. the datasets there are).
        hint: String,
    },
    /// The result passed the row limit.
    #[error(
        "the job was stopped: its result passed the project's limit of {limit} rows; aggregate further or add a LIMIT"
    )]
    RowLimit {
        /// The limit.
        limit: u64,
    },
    /// The job ran too long.
    #[error("the job was stopped after the project's time limit of {seconds} s")]
    TimeLimit {
        /// The limit.
        seconds: u64,
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
}

/// Limits of one job.
#[derive(Debug, Clone)]
pub struct QueryLimits {
    /// Most result rows.
    pub max_rows: u64,
    /// Longest run.
    pub max_seconds: u64,
    /// DataFusion memory pool size.
    pub memory_bytes: usize,
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
            memory_bytes: 512 << 20,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

/// What a job produced.
#[derive(Debug, Clone, Serialize)]
pub struct QueryOutcome {
    /// Job id.
    pub job: String,
    /// Result rows.
    pub rows: u64,
    /// Result columns.
    pub columns: Vec<String>,
    /// The result file (inside the workspace).
    pub result: FileRecord,
    /// Whether the result may be released as it is (after the checks).
    pub releasable: bool,
    /// Whether the result can be released at all (false for row-level results).
    pub releasable_after_apply: bool,
    /// One-line verdict for people.
    pub verdict: String,
    /// Rules used.
    pub rules: String,
}

/// Where a job's files live.
pub fn job_dir(ws: &Workspace, project: &str, job: &str) -> PathBuf {
    ws.project_dir(project).join("results").join(job)
}

/// Run a job and check its result.
pub fn run_query(
    ws: &Workspace,
    policy: &Policy,
    sql: &str,
    job: &str,
    limits: &QueryLimits,
) -> Result<QueryOutcome, QueryError> {
    let datasets = ws.datasets(policy)?;
    let dir = job_dir(ws, &policy.project.id, job);
    std::fs::create_dir_all(&dir).map_err(|source| OutputError::Io {
        path: dir.clone(),
        source,
    })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(limits.threads.max(1))
        .enable_all()
        .build()
        .map_err(|source| OutputError::Io {
            path: dir.clone(),
            source,
        })?;
    let names: Vec<String> = datasets.iter().map(|(n, _)| n.clone()).collect();
    let sql_err = |e: datafusion::error::DataFusionError| {
        let message = e.to_string();
        let hint = if message.contains("not found") {
            format!("; this project's datasets are: {}", names.join(", "))
        } else {
            String::new()
        };
        QueryError::Sql { message, hint }
    };
    let result_path = dir.join("result.parquet");
    let (rows, columns, kept, record) = rt.block_on(async {
        let config = SessionConfig::new()
            .with_target_partitions(limits.threads.max(1))
            .with_information_schema(false);
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(limits.memory_bytes, 1.0)
            .build_arc()
            .map_err(sql_err)?;
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        for (name, path) in &datasets {
            ctx.register_parquet(
                name.as_str(),
                path.to_string_lossy().as_ref(),
                ParquetReadOptions::default(),
            )
            .await
            .map_err(sql_err)?;
        }
        let options = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let work = async {
            let df = ctx.sql_with_options(sql, options).await.map_err(sql_err)?;
            let schema: Arc<arrow::datatypes::Schema> = Arc::new(df.schema().as_arrow().clone());
            let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
            let mut stream = df.execute_stream().await.map_err(sql_err)?;
            let mut sink = ParquetSink::create(&result_path, schema)?;
            let mut rows = 0u64;
            let mut kept: Vec<RecordBatch> = Vec::new();
            let mut kept_rows = 0usize;
            while let Some(b) = stream.next().await {
                let b = b.map_err(sql_err)?;
                rows += b.num_rows() as u64;
                if rows > limits.max_rows {
                    return Err(QueryError::RowLimit {
                        limit: limits.max_rows,
                    });
                }
                sink.write(&b)?;
                if kept_rows <= MAX_CHECKED_ROWS {
                    kept_rows += b.num_rows();
                    kept.push(b);
                }
            }
            if kept_rows > MAX_CHECKED_ROWS {
                kept.clear();
            }
            let (record, _) = sink.finish()?;
            Ok::<_, QueryError>((rows, columns, kept, record))
        };
        match tokio::time::timeout(Duration::from_secs(limits.max_seconds), work).await {
            Ok(r) => r,
            Err(_) => Err(QueryError::TimeLimit {
                seconds: limits.max_seconds,
            }),
        }
    })?;
    let rules_spec = policy
        .tre
        .as_ref()
        .and_then(|t| t.output_rules.clone())
        .unwrap_or_else(|| "opensafely".into());
    let rules = Rules::resolve(&rules_spec)?;
    let (releasable, after_apply, verdict) = if rows == 0 {
        (false, false, "empty result: nothing to release".to_string())
    } else if kept.is_empty() {
        (
            false,
            false,
            format!(
                "row-level result ({rows} rows): may stay in the workspace but can never be released"
            ),
        )
    } else {
        match disclosure::check(&kept, &RoleSpec::default(), &rules) {
            Ok(report) => {
                write_atomic(
                    &dir.join("check.json"),
                    serde_json::to_string_pretty(&report)
                        .unwrap_or_default()
                        .as_bytes(),
                    Mode::Shared,
                )?;
                write_atomic(
                    &dir.join("check.md"),
                    report.render(disclosure::Format::Markdown).as_bytes(),
                    Mode::Shared,
                )?;
                let blocked = report.verdict == disclosure::Verdict::Blocked;
                let v = if report.releasable() {
                    "passes the disclosure checks: may be released as it is".to_string()
                } else if blocked {
                    "blocked: looks like row-level data; can never be released".to_string()
                } else {
                    format!(
                        "fails the disclosure checks ({} cells); its safe version (suppressed and rounded) may be requested",
                        report.findings.len()
                    )
                };
                (report.releasable(), !blocked, v)
            }
            Err(e) => (
                false,
                false,
                format!(
                    "cannot be checked as an aggregate table ({e}); it can never be released as is"
                ),
            ),
        }
    };
    let outcome = QueryOutcome {
        job: job.to_string(),
        rows,
        columns,
        result: FileRecord {
            path: format!("results/{job}/result.parquet"),
            size: record.size,
            sha256: record.sha256,
        },
        releasable,
        releasable_after_apply: after_apply,
        verdict,
        rules: rules_spec,
    };
    write_atomic(
        &dir.join("job.json"),
        serde_json::to_string_pretty(&outcome)
            .unwrap_or_default()
            .as_bytes(),
        Mode::Shared,
    )?;
    Ok(outcome)
}
