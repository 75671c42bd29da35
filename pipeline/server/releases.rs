//! Releases over HTTP: request (`POST /api/projects/{p}/releases`), review
//! (`POST .../releases/{r}/reviews`; the second distinct approval exports), export retry
//! (`POST .../releases/{r}/export`) and status (`GET .../releases/{r}`).
//!
//! Every change to a request happens under [`App::releases`] with the request re-read
//! from disk, so concurrent reviews are never lost; each change is one bound write (its
//! audit entry names the request file, see [`crate::tre::records`]), and an export
//! follows the crash-consistent steps of [`release::export`]: a failed export is rolled
//! back and audited, and `POST .../export` retries it (or finishes one left `exporting`).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::App;
use super::auth::Caller;
use super::error::ApiError;
use super::jobs::body;
use crate::audit::{EntryDraft, HashRef};
use crate::tre::id::Id;
use crate::tre::release::{self, Decision, ReleaseState, Request, Review};

/// `POST /api/projects/{p}/releases` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestBody {
    /// The job whose safe table should leave.
    pub job: String,
    /// Why it should leave.
    pub justification: String,
    /// What the table is and how it was made.
    pub context: String,
}

/// `POST .../reviews` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewBody {
    /// approve or reject.
    pub decision: Decision,
    /// Why.
    pub comment: String,
}

/// Longest justification, context or comment.
pub const MAX_TEXT_CHARS: usize = 4000;

fn bounded(field: &'static str, s: &str) -> Result<(), ApiError> {
    if s.chars().count() > MAX_TEXT_CHARS {
        return Err(ApiError::BadField {
            field,
            problem: "is longer than 4000 characters",
        });
    }
    Ok(())
}

/// A request's public view.
pub fn view(r: &Request) -> serde_json::Value {
    let state = if r.exporting.is_some() {
        serde_json::json!("exporting")
    } else {
        serde_json::json!(r.state)
    };
    let mut v = serde_json::json!({
        "release": r.release,
        "state": state,
        "approvals": r.approvals(),
        "job": r.job,
        "requester": r.requester,
        "reviews": r.reviews.iter().map(|x| serde_json::json!({
            "checker": x.checker, "decision": x.decision, "comment": x.comment, "at": crate::tre::stamp::text(&x.at),
        })).collect::<Vec<_>>(),
    });
    if r.state == ReleaseState::Exported {
        let files = r
            .files
            .iter()
            .map(|f| serde_json::json!({ "path": f.path, "size": f.size, "sha256": f.sha256 }));
        v["files"] = files.collect::<Vec<_>>().into();
    }
    v
}

/// Request a release: 201 `{"release", "state"}`.
pub async fn request(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(p): Path<String>,
    b: Result<Json<RequestBody>, JsonRejection>,
) -> Response {
    let result = request_inner(&app, &caller, &p, b);
    app.finish(&caller.user, "release.request", Some(&p), result)
}

fn request_inner(
    app: &App,
    caller: &Caller,
    p: &str,
    b: Result<Json<RequestBody>, JsonRejection>,
) -> Result<impl IntoResponse + use<>, ApiError> {
    let analyst = caller.analyst(app, p)?.0;
    let b = body(b)?;
    bounded("justification", &b.justification)?;
    bounded("context", &b.context)?;
    let job = Id::parse("job", &b.job)?;
    let rec = crate::jobs::load(&app.ws, &analyst.project, &job)?;
    let id = Id::random("rel").map_err(|_| ApiError::BadField {
        field: "release",
        problem: "could not be given an id (the OS random source failed)",
    })?;
    let r = release::draft(
        &app.ws,
        &analyst.policy,
        &rec,
        &analyst.user,
        id,
        &b.justification,
        &b.context,
        app.auditor.clock().now(),
    )?;
    release::save(
        &app.ws,
        &app.auditor,
        EntryDraft::new(analyst.user.as_str(), "release.request")
            .project(r.project.as_str())
            .purpose(r.justification.as_str())
            .detail("release", r.release.as_str())
            .detail("job", r.job.as_str())
            .detail("rules_sha256", r.rules_sha256.as_str())
            .input(HashRef::new(
                format!("projects/{}/results/{}/result.parquet", r.project, r.job),
                r.result_sha256.clone(),
            )),
        &r,
    )?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "release": r.release, "state": r.state })),
    ))
}

/// A request's status.
pub async fn show(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path((p, r)): Path<(String, String)>,
) -> Response {
    let result = show_inner(&app, &caller, &p, &r);
    app.finish(&caller.user, "release.status", Some(&p), result)
}

fn show_inner(
    app: &App,
    caller: &Caller,
    p: &str,
    r: &str,
) -> Result<Json<serde_json::Value>, ApiError> {
    let m = caller.member(app, p)?;
    let r = Id::parse("release", r)?;
    let req = release::load(&app.ws, &m.project, &r)?;
    Ok(Json(view(&req)))
}

/// Review a request; the second distinct approval exports. 200 `{"release", "state",
/// "approvals"}`.
pub async fn review(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path((p, r)): Path<(String, String)>,
    b: Result<Json<ReviewBody>, JsonRejection>,
) -> Response {
    let _one_writer = app.releases.lock().await;
    let result = review_inner(&app, &caller, &p, &r, b);
    app.finish(&caller.user, "release.review", Some(&p), result)
}

fn review_inner(
    app: &App,
    caller: &Caller,
    p: &str,
    r: &str,
    b: Result<Json<ReviewBody>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let checker = caller.checker(app, p)?;
    let b = body(b)?;
    bounded("comment", &b.comment)?;
    let id = Id::parse("release", r)?;
    let mut req = release::load(&app.ws, &checker.0.project, &id)?;
    release::review(
        &mut req,
        Review {
            checker: checker.0.user.clone(),
            decision: b.decision,
            comment: b.comment.clone(),
            at: app.auditor.clock().now(),
        },
    )?;
    let export_due = req.state == ReleaseState::Requested && req.approvals().len() >= 2;
    let prepared = if export_due {
        let head = app.auditor.head()?;
        Some(release::prepare_export(
            &app.ws,
            &checker.0.policy,
            &req,
            app.auditor.clock().now(),
            head,
        )?)
    } else {
        None
    };
    release::save(
        &app.ws,
        &app.auditor,
        EntryDraft::new(checker.0.user.as_str(), "release.review")
            .project(req.project.as_str())
            .detail("release", req.release.as_str())
            .detail("decision", format!("{:?}", b.decision).to_lowercase())
            .detail("comment", b.comment.as_str())
            .detail("approvals", req.approvals().len()),
        &req,
    )?;
    if let Some(e) = prepared {
        release::export(
            &app.ws,
            &app.auditor,
            &checker.0.policy,
            &mut req,
            &e,
            checker.0.user.as_str(),
        )?;
    }
    Ok(Json(view(&req)))
}

/// Export an approved request again (after an outbox problem was fixed), or finish (or
/// roll back) one left `exporting`; refused unless two distinct checkers approved.
pub async fn export(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path((p, r)): Path<(String, String)>,
) -> Response {
    let _one_writer = app.releases.lock().await;
    let result = export_inner(&app, &caller, &p, &r);
    app.finish(&caller.user, "release.export", Some(&p), result)
}

fn export_inner(
    app: &App,
    caller: &Caller,
    p: &str,
    r: &str,
) -> Result<Json<serde_json::Value>, ApiError> {
    let checker = caller.checker(app, p)?;
    let id = Id::parse("release", r)?;
    let mut req = release::load(&app.ws, &checker.0.project, &id)?;
    if req.exporting.is_some() {
        release::resume(
            &app.ws,
            &app.auditor,
            &checker.0.policy,
            &mut req,
            checker.0.user.as_str(),
        )?;
        return Ok(Json(view(&req)));
    }
    let head = app.auditor.head()?;
    let e = release::prepare_export(
        &app.ws,
        &checker.0.policy,
        &req,
        app.auditor.clock().now(),
        head,
    )?;
    release::export(
        &app.ws,
        &app.auditor,
        &checker.0.policy,
        &mut req,
        &e,
        checker.0.user.as_str(),
    )?;
    Ok(Json(view(&req)))
}
