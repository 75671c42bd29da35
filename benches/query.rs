//! Benchmark driver: query jobs through the TRE's job path, as the job's child process runs
//! them (`tre_pipeline::jobs::child`): the project's limits as rlimits first, then
//! `run_query` (plan, patient check, aggregation with `membership.parquet`, disclosure
//! checks and the job's files), then the differencing guard. Prints one JSON line per
//! job: wall seconds, the time of each phase, the verdict (with the guard's words when it
//! refuses: budget or exposure; they name no patient value), cells and cells hidden, and
//! this process's peak RSS so far.
//!
//! It is driven by `benches/query.sh` (speed against DuckDB) and `benches/usefulness.sh`
//! (30+ analyst tables), which build the workspace first; run without arguments it only
//! says so. It is a binary (`cargo build --release --bin tre-bench-query`), not a
//! `[[bench]]`, so it links the release library `tre` uses. Arguments:
//!
//! ```text
//! tre-bench-query --workspace WS --project ID --analyst ID --tables FILE [--only NAME]... [--repeat N]
//! ```
//!
//! `FILE` holds the jobs, each headed by a line `-- name: NAME`. Each job runs in a fresh
//! job folder that is removed afterwards, so the guard always sees an empty ledger (each
//! table is judged alone).
#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use tre_pipeline::jobs::child::{apply_limits, own_peak_rss_kib};
use tre_pipeline::schema::SchemaSet;
use tre_pipeline::tre::id::Id;
use tre_pipeline::tre::query::{
    GuardOutcome, QueryLimits, apply_guard, job_dir, received_guard, run_query_timed,
};
use tre_pipeline::tre::verdict::JobVerdict;
use tre_pipeline::tre::workspace::Workspace;

struct Args {
    workspace: PathBuf,
    project: String,
    analyst: String,
    tables: PathBuf,
    only: Vec<String>,
    repeat: usize,
}

fn parse_args() -> anyhow::Result<Option<Args>> {
    let mut workspace = None;
    let mut project = None;
    let mut analyst = None;
    let mut tables = None;
    let mut only = Vec::new();
    let mut repeat = 1;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow!("{a} needs a value"));
        match a.as_str() {
            "--workspace" => workspace = Some(PathBuf::from(value()?)),
            "--project" => project = Some(value()?),
            "--analyst" => analyst = Some(value()?),
            "--tables" => tables = Some(PathBuf::from(value()?)),
            "--only" => only.push(value()?),
            "--repeat" => repeat = value()?.parse().context("--repeat takes a number")?,
            other => bail!("unknown argument {other}; see benches/query.rs"),
        }
    }
    let Some(workspace) = workspace else {
        return Ok(None);
    };
    Ok(Some(Args {
        workspace,
        project: project.unwrap_or_else(|| "demo".into()),
        analyst: analyst.unwrap_or_else(|| "analyst".into()),
        tables: tables.ok_or_else(|| anyhow!("--tables FILE is needed"))?,
        only,
        repeat: repeat.max(1),
    }))
}

/// The jobs of a tables file: (name, SQL), each headed by `-- name: NAME`.
fn read_tables(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path:?}"))?;
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.trim().strip_prefix("-- name:") {
            out.push((name.trim().to_string(), String::new()));
        } else if let Some((_, sql)) = out.last_mut() {
            sql.push_str(line);
            sql.push('\n');
        }
    }
    if out.is_empty() {
        bail!("{path:?} has no job headed by `-- name: NAME`");
    }
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    let Some(args) = parse_args()? else {
        eprintln!(
            "query bench: run benches/query.sh (speed against DuckDB) or benches/usefulness.sh (analyst tables); they build the workspace this driver needs"
        );
        return Ok(());
    };
    let ws = Workspace::open(&args.workspace)?;
    let project = Id::parse("project", &args.project)?;
    let analyst = Id::parse("user", &args.analyst)?;
    let policy = ws.project(&project, &SchemaSet::builtin())?;
    let limits = QueryLimits::for_policy(&policy);
    // As the job's child does: the address-space limit before any dataset is opened.
    apply_limits(&limits).context("setting the job's rlimits")?;
    let tables = read_tables(&args.tables)?;
    for (name, sql) in &tables {
        if !args.only.is_empty() && !args.only.contains(name) {
            continue;
        }
        for run in 0..args.repeat {
            let job = Id::parse("job", &format!("bench-{run}"))?;
            let dir = job_dir(&ws, &project, &job);
            if dir.exists() {
                std::fs::remove_dir_all(&dir)?;
            }
            std::fs::create_dir_all(&dir)?;
            let started = Instant::now();
            let result = run_query_timed(&ws, &policy, sql, &dir, &limits);
            let (mut outcome, times) = match result {
                Ok(r) => r,
                Err(e) => {
                    println!(
                        "{}",
                        serde_json::json!({"table": name, "run": run, "error": e.to_string(),
                            "seconds": started.elapsed().as_secs_f64()})
                    );
                    std::fs::remove_dir_all(&dir)?;
                    continue;
                }
            };
            let guard_started = Instant::now();
            // The guard's words when it refuses (they name cells and tables, never a
            // patient value): what a usefulness run needs to tell budget from exposure.
            let mut guard_message = None;
            if outcome.verdict.has_safe_table() {
                let guard = received_guard(&ws, &project, &analyst, &dir)?;
                if let GuardOutcome::Refused { message, .. } = &guard {
                    guard_message = Some(message.clone());
                }
                apply_guard(&mut outcome, guard, &dir)?;
            }
            let guard = guard_started.elapsed();
            let seconds = started.elapsed();
            let hidden = match &outcome.verdict {
                JobVerdict::ReleasableWithHidden { hidden_cells, .. } => *hidden_cells,
                _ => 0,
            };
            let membership = std::fs::metadata(dir.join("membership.parquet"))
                .map(|m| m.len())
                .unwrap_or(0);
            println!(
                "{}",
                serde_json::json!({
                    "table": name,
                    "run": run,
                    "seconds": seconds.as_secs_f64(),
                    "plan": times.plan.as_secs_f64(),
                    "patient_check": times.patient_check.as_secs_f64(),
                    "aggregate": times.aggregate.as_secs_f64(),
                    "membership": times.membership.as_secs_f64(),
                    "judge": times.judge.as_secs_f64(),
                    "guard": guard.as_secs_f64(),
                    "verdict": outcome.verdict.kind(),
                    "guard_message": guard_message,
                    "cells": outcome.rows,
                    "hidden": hidden,
                    "membership_bytes": membership,
                    "peak_rss_kib": own_peak_rss_kib(),
                    "memory_limit_kib": limits.memory_bytes / 1024,
                })
            );
            std::fs::remove_dir_all(&dir)?;
        }
    }
    Ok(())
}
