//! Jobs over HTTP: submit (`POST /api/projects/{p}/jobs`), status
//! (`GET .../jobs/{job}`) and the safe table (`GET .../jobs/{job}/safe.csv`).
//!
//! Every read of a result is audited before it is answered: the status of a finished
//! job (`job.read`, its report and verdict), the safe table (`job.safe`, with its hash).
//! A result `tre purge` withdrew is never served: its safe table is refused (410 Gone,
//! with the purge's message) and its status says only the job, its state and that
//! message; both refusals are audited.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::App;
use super::auth::Caller;
use super::error::ApiError;
use crate::audit::{EntryDraft, HashRef};
use crate::jobs::{self, JobRecord, JobState};
use crate::tre::id::Id;
use crate::tre::query::{QueryLimits, job_dir};

/// Longest SQL text accepted.
pub const MAX_SQL_BYTES: usize = 64 * 1024;
/// Longest purpose accepted.
pub const MAX_PURPOSE_CHARS: usize = 2000;

/// `POST /api/projects/{p}/jobs` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
    /// One SQL query.
    pub sql: String,
    /// Why the job is run.
    pub purpose: String,
}

/// Turn a JSON body rejection into a 400 (serde's message names fields and positions),
/// or a 413 when the body was over axum's own limit.
pub fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(t)| t).map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge {
                limit: super::http::MAX_BODY_BYTES,
            }
        } else {
            ApiError::BadBody {
                problem: e.body_text().chars().take(300).collect(),
            }
        }
    })
}

/// Queue a job: 202 `{"job", "state"}`.
pub async fn submit(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(p): Path<String>,
    b: Result<Json<SubmitBody>, JsonRejection>,
) -> Response {
    let result = submit_inner(&app, &caller, &p, b);
    app.finish(&caller.user, "job.submit", Some(&p), result)
}

fn submit_inner(
    app: &App,
    caller: &Caller,
    p: &str,
    b: Result<Json<SubmitBody>, JsonRejection>,
) -> Result<impl IntoResponse + use<>, ApiError> {
    let analyst = caller.analyst(app, p)?.0;
    let b = body(b)?;
    if b.sql.trim().is_empty() || b.sql.len() > MAX_SQL_BYTES {
        return Err(ApiError::BadField {
            field: "sql",
            problem: "must be one query of at most 64 KiB",
        });
    }
    if b.purpose.trim().chars().count() < 3 || b.purpose.chars().count() > MAX_PURPOSE_CHARS {
        return Err(ApiError::BadField {
            field: "purpose",
            problem: "must say why the job is run (3 to 2000 characters)",
        });
    }
    let job = Id::random("job").map_err(|_| ApiError::BadField {
        field: "job",
        problem: "could not be given an id (the OS random source failed)",
    })?;
    let rec = JobRecord {
        job: job.clone(),
        project: analyst.project.clone(),
        submitter: analyst.user.clone(),
        purpose: b.purpose.clone(),
        sql: b.sql.clone(),
        limits: QueryLimits::for_policy(&analyst.policy),
        state: JobState::Queued,
        reason: None,
        submitted_at: app.auditor.clock().now(),
        started_at: None,
        finished_at: None,
        outcome: None,
        peak_rss_kib: None,
    };
    app.record(
        EntryDraft::new(analyst.user.as_str(), "job.submit")
            .project(analyst.project.as_str())
            .purpose(b.purpose.as_str())
            .detail("job", job.as_str())
            .detail("sql_sha256", crate::digest::sha256_hex(b.sql.as_bytes())),
    )?;
    jobs::create(&app.ws, &rec)?;
    app.queue.push(rec.project.clone(), job.clone())?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "job": job, "state": JobState::Queued })),
    ))
}

fn load(app: &App, caller: &Caller, p: &str, job: &str) -> Result<JobRecord, ApiError> {
    let m = caller.member(app, p)?;
    let job = Id::parse("job", job)?;
    Ok(jobs::load(&app.ws, &m.project, &job)?)
}

/// `{"job", "state", "reason"?, "releasable", ...}`.
pub async fn show(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path((p, job)): Path<(String, String)>,
) -> Response {
    let result = load(&app, &caller, &p, &job).and_then(|rec| {
        if let Some(message) = withdrawn(&app, &rec)? {
            refuse_read(&app, &caller, &rec, "status", &message)?;
            return Ok(Json(withdrawn_json(&rec, &message)));
        }
        if rec.state.is_final() {
            audit_read(&app, &caller, &rec, "status")?;
        }
        let audience = Audience::of(&caller.member(&app, &p)?.roles);
        Ok(Json(status_json(&rec, audience)))
    });
    app.finish(&caller.user, "job.status", Some(&p), result)
}

/// Audit a read of a job's result (`what`: `status`, `page`) before it is answered.
/// Polls of a queued or running job carry no result and are not audited, so a client
/// waiting for its job does not fill the log; the safe table has its own entry
/// (`job.safe`, with the file's hash).
pub fn audit_read(app: &App, caller: &Caller, rec: &JobRecord, what: &str) -> Result<(), ApiError> {
    app.record(
        EntryDraft::new(caller.user.as_str(), "job.read")
            .project(rec.project.as_str())
            .detail("job", rec.job.as_str())
            .detail("read", what)
            .detail("state", rec.state.name()),
    )
}

/// Why the result of `rec` may not be served, if `tre purge` withdrew it (see
/// [`crate::tre::purge::result_withdrawn`]); an unreadable withdrawal record refuses
/// too (fail closed).
pub fn withdrawn(app: &App, rec: &JobRecord) -> Result<Option<String>, ApiError> {
    crate::tre::purge::result_withdrawn(&app.ws, &rec.project, &rec.job).map_err(|e| {
        ApiError::WithdrawalUnreadable {
            job: rec.job.clone(),
            problem: e.to_string(),
        }
    })
}

/// Audit a read of a withdrawn result (`what`: `status`, `page`) as refused, with the
/// purge's message, before the refusal is answered.
pub fn refuse_read(
    app: &App,
    caller: &Caller,
    rec: &JobRecord,
    what: &str,
    message: &str,
) -> Result<(), ApiError> {
    app.record(
        EntryDraft::new(caller.user.as_str(), "job.read")
            .project(rec.project.as_str())
            .detail("job", rec.job.as_str())
            .detail("read", what)
            .detail("state", rec.state.name())
            .refused(message),
    )
}

/// The status of a job whose result was withdrawn: its id, its state and the purge's
/// message; no report, no verdict, no row or column count.
pub fn withdrawn_json(rec: &JobRecord, message: &str) -> serde_json::Value {
    serde_json::json!({
        "job": rec.job,
        "state": rec.state,
        "withdrawn": message,
    })
}

/// A job's status as JSON: never rows; the disclosure report and verdict only.
pub fn status_json(rec: &JobRecord, audience: Audience) -> serde_json::Value {
    let o = rec.outcome.as_ref();
    let checker = audience == Audience::Checker;
    // Run time and memory depend on the data: analysts see them coarsened.
    let time = |t: &chrono::DateTime<chrono::Utc>| {
        if checker {
            crate::tre::stamp::text(t)
        } else {
            t.format("%Y-%m-%dT%H:%M:00Z").to_string()
        }
    };
    let peak = rec.peak_rss_kib.map(|k| {
        if checker {
            k
        } else {
            k.div_ceil(COARSE_PEAK_KIB) * COARSE_PEAK_KIB
        }
    });
    let mut v = serde_json::json!({
        "job": rec.job,
        "state": rec.state,
        "releasable": o.is_some_and(|o| o.releasable_after_apply && o.safe.is_some()),
        "passes_as_is": o.is_some_and(|o| o.releasable),
        "submitter": rec.submitter,
        "submitted_at": crate::tre::stamp::text(&rec.submitted_at),
        "started_at": rec.started_at.as_ref().map(time),
        "finished_at": rec.finished_at.as_ref().map(time),
        "peak_rss_kib": peak,
    });
    if let Some(r) = &rec.reason {
        v["reason"] = r.as_str().into();
    }
    if let Some(o) = o {
        v["rows"] = o.rows.into();
        v["columns"] = o.columns.clone().into();
        v["verdict"] = o.verdict.for_analyst().into();
        v["rules"] = o.rules.as_str().into();
        // The private report names hidden cells and why: checkers only.
        if let Some(r) = o.report.as_ref().filter(|_| checker) {
            v["report"] = r.as_str().into();
        }
    }
    v
}

/// Who reads a job's status: output checkers see the private disclosure report and the
/// exact run time and memory; everyone else (the analyst) the verdict, and run time and
/// memory coarsened (they depend on the data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// An output checker of the project.
    Checker,
    /// Anyone else with a role in the project.
    Analyst,
}

impl Audience {
    /// The audience of someone with `roles` in the project.
    pub fn of(roles: &[crate::tre::workspace::Role]) -> Audience {
        if roles.contains(&crate::tre::workspace::Role::Checker) {
            Audience::Checker
        } else {
            Audience::Analyst
        }
    }
}

/// The step analysts see peak memory in: 16 MiB.
const COARSE_PEAK_KIB: u64 = 16 * 1024;

/// The safe table (hidden cells empty), checked against its recorded sha256.
pub async fn safe(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path((p, job)): Path<(String, String)>,
) -> Response {
    let result = safe_inner(&app, &caller, &p, &job);
    app.finish(&caller.user, "job.safe", Some(&p), result)
}

fn safe_inner(app: &App, caller: &Caller, p: &str, job: &str) -> Result<Response, ApiError> {
    let rec = load(app, caller, p, job)?;
    if let Some(message) = withdrawn(app, &rec)? {
        return Err(ApiError::Withdrawn {
            job: rec.job.clone(),
            message,
        });
    }
    let no = |why| ApiError::NoSafeTable {
        job: rec.job.clone(),
        why,
    };
    let o = rec
        .outcome
        .as_ref()
        .ok_or_else(|| no("the job has not succeeded"))?;
    let safe = o
        .safe
        .as_ref()
        .ok_or_else(|| no("its result is not an aggregate table that can be made safe"))?;
    let path = job_dir(&app.ws, &rec.project, &rec.job).join("safe.csv");
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut crate::tre::workspace::open_nofollow(&path)?,
        &mut bytes,
    )
    .map_err(|source| crate::tre::workspace::WorkspaceError::Io { path, source })?;
    let sha = crate::digest::sha256_hex(&bytes);
    if sha != safe.sha256 {
        return Err(no(
            "its safe table was changed on disk; it will not be shown",
        ));
    }
    app.record(
        EntryDraft::new(caller.user.as_str(), "job.safe")
            .project(rec.project.as_str())
            .detail("job", rec.job.as_str())
            .output(HashRef::new(
                format!("projects/{}/results/{}/safe.csv", rec.project, rec.job),
                sha,
            )),
    )?;
    Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], bytes).into_response())
}
