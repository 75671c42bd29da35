//! Releases over HTTP: request (`POST /api/projects/{p}/releases`), review
//! (`POST .../releases/{r}/reviews`: approve, reject or return; the second distinct
//! approval exports), a new version of a rejected or returned request
//! (`POST .../releases/{r}/versions`), export retry (`POST .../releases/{r}/export`) and
//! status (`GET .../releases/{r}`). A checker who has not decided on the open current
//! version gets it without that version's reviews (`"reviews_sealed": true`); earlier
//! versions (`history`) are always shown.
//!
//! Owns only the HTTP shape: each handler reads its request, calls the action in
//! [`crate::tre::actions::releases`] (which takes the release lock, checks the role,
//! audits and refuses) and maps the request it returns to JSON.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::App;
use super::auth::Caller;
use super::error::body;
use crate::tre::actions::releases::{self, Decide, NewRequest, Shown};
use crate::tre::actions::{ActionError, Decision, ReleaseState};

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
    /// approve, reject or return (for changes).
    pub decision: Decision,
    /// Why.
    pub comment: String,
}

fn review_json(x: &crate::tre::actions::Review) -> serde_json::Value {
    serde_json::json!({
        "checker": x.checker, "decision": x.decision, "comment": x.comment,
        "at": crate::tre::actions::stamp::text(&x.at),
    })
}

/// A request's public view, as one reader may see it ([`releases::seal`]).
pub fn view(shown: &Shown) -> serde_json::Value {
    let r = &shown.request;
    let state = if r.exporting.is_some() {
        serde_json::json!("exporting")
    } else {
        serde_json::json!(r.state)
    };
    let mut v = serde_json::json!({
        "release": r.release,
        "version": r.version,
        "state": state,
        "approvals": r.approvals(),
        "job": r.job,
        "requester": r.requester,
        "reviews": r.reviews.iter().map(review_json).collect::<Vec<_>>(),
        "history": r.history.iter().map(|h| serde_json::json!({
            "version": h.version,
            "job": h.job,
            "state": h.state,
            "justification": h.justification,
            "context": h.context,
            "requested_at": crate::tre::actions::stamp::text(&h.created_at),
            "reviews": h.reviews.iter().map(review_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    if shown.sealed {
        v["reviews_sealed"] = true.into();
    }
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
    Caller(actor): Caller,
    Path(p): Path<String>,
    b: Result<Json<RequestBody>, JsonRejection>,
) -> Response {
    let b = match body(b) {
        Ok(b) => b,
        Err(e) => return app.refuse(&actor, "release.request", Some(&p), e),
    };
    let new = NewRequest {
        job: b.job,
        justification: b.justification,
        context: b.context,
    };
    match releases::request(&app.tre, &actor, &p, new) {
        Ok(r) => (
            StatusCode::CREATED,
            Json(serde_json::json!({ "release": r.release, "state": r.state })),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

fn answer(r: Result<Shown, ActionError>) -> Response {
    match r {
        Ok(req) => Json(view(&req)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// A request's status.
pub async fn show(
    State(app): State<Arc<App>>,
    Caller(actor): Caller,
    Path((p, r)): Path<(String, String)>,
) -> Response {
    answer(releases::show(&app.tre, &actor, &p, &r))
}

/// Answer a rejected or returned request with a new version: 201 `{"release",
/// "version", "state"}`.
pub async fn resubmit(
    State(app): State<Arc<App>>,
    Caller(actor): Caller,
    Path((p, r)): Path<(String, String)>,
    b: Result<Json<RequestBody>, JsonRejection>,
) -> Response {
    let b = match body(b) {
        Ok(b) => b,
        Err(e) => return app.refuse(&actor, "release.resubmit", Some(&p), e),
    };
    let new = NewRequest {
        job: b.job,
        justification: b.justification,
        context: b.context,
    };
    match releases::resubmit(&app.tre, &actor, &p, &r, new) {
        Ok(req) => (
            StatusCode::CREATED,
            Json(serde_json::json!({
                "release": req.release, "version": req.version, "state": req.state,
            })),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

/// Review a request; the second distinct approval exports. 200 with the request's view.
pub async fn review(
    State(app): State<Arc<App>>,
    Caller(actor): Caller,
    Path((p, r)): Path<(String, String)>,
    b: Result<Json<ReviewBody>, JsonRejection>,
) -> Response {
    let b = match body(b) {
        Ok(b) => b,
        Err(e) => return app.refuse(&actor, "release.review", Some(&p), e),
    };
    let d = Decide {
        decision: b.decision,
        comment: b.comment,
    };
    answer(releases::review(&app.tre, &actor, &p, &r, d))
}

/// Export an approved request again (after an outbox problem was fixed), or finish (or
/// roll back) one left `exporting`; refused unless two distinct checkers approved.
pub async fn export(
    State(app): State<Arc<App>>,
    Caller(actor): Caller,
    Path((p, r)): Path<(String, String)>,
) -> Response {
    answer(releases::export(&app.tre, &actor, &p, &r))
}
