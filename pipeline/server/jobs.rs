//! Jobs over HTTP: submit (`POST /api/projects/{p}/jobs`), status
//! (`GET .../jobs/{job}`) and the safe table (`GET .../jobs/{job}/safe.csv`).
//!
//! Owns only the HTTP shape: each handler reads its request, calls the action in
//! [`crate::tre::actions::jobs`] (which checks the role, audits and refuses) and maps
//! the typed answer to JSON or CSV.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::App;
use super::auth::Caller;
use super::error::body;
use crate::tre::actions::jobs::{self, JobRead, JobView, NewJob};

/// `POST /api/projects/{p}/jobs` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
    /// One SQL query.
    pub sql: String,
    /// Why the job is run.
    pub purpose: String,
}

/// Queue a job: 202 `{"job", "state"}`.
pub async fn submit(
    State(app): State<Arc<App>>,
    Caller(actor): Caller,
    Path(p): Path<String>,
    b: Result<Json<SubmitBody>, JsonRejection>,
) -> Response {
    let b = match body(b) {
        Ok(b) => b,
        Err(e) => return app.refuse(&actor, "job.submit", Some(&p), e),
    };
    let new = NewJob {
        sql: b.sql,
        purpose: b.purpose,
    };
    match jobs::submit(&app.tre, &actor, &p, new) {
        Ok(s) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "job": s.job, "state": s.state })),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

/// `{"job", "state", "reason"?, "releasable", ...}`; for a withdrawn result only
/// `{"job", "state", "withdrawn"}`.
pub async fn show(
    State(app): State<Arc<App>>,
    Caller(actor): Caller,
    Path((p, job)): Path<(String, String)>,
) -> Response {
    match jobs::status(&app.tre, &actor, &p, &job) {
        Ok(JobRead::Withdrawn { record, message }) => Json(serde_json::json!({
            "job": record.job,
            "state": record.state,
            "withdrawn": message,
        }))
        .into_response(),
        Ok(JobRead::Shown(shown)) => Json(status_json(&shown.view)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// A job's status as JSON: never rows; the disclosure report and verdict only.
fn status_json(v: &JobView) -> serde_json::Value {
    let mut j = serde_json::json!({
        "job": v.job,
        "state": v.state,
        "releasable": v.releasable,
        "passes_as_is": v.passes_as_is,
        "submitter": v.submitter,
        "submitted_at": v.submitted_at,
        "started_at": v.started_at,
        "finished_at": v.finished_at,
        "peak_rss_kib": v.peak_rss_kib,
        "dataset_version": v.dataset_version,
    });
    if let Some(r) = &v.reason {
        j["reason"] = r.as_str().into();
    }
    if let Some(o) = &v.result {
        j["rows"] = o.rows.into();
        j["columns"] = o.columns.clone().into();
        j["verdict"] = o.verdict.as_str().into();
        j["rules"] = o.rules.as_str().into();
        if let Some(r) = &o.report {
            j["report"] = r.as_str().into();
        }
    }
    j
}

/// The safe table (hidden cells empty), checked against its recorded sha256.
pub async fn safe(
    State(app): State<Arc<App>>,
    Caller(actor): Caller,
    Path((p, job)): Path<(String, String)>,
) -> Response {
    match jobs::safe_table(&app.tre, &actor, &p, &job) {
        Ok(t) => ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], t.bytes).into_response(),
        Err(e) => e.into_response(),
    }
}
