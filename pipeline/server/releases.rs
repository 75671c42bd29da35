//! Releases over HTTP: request (`POST /api/projects/{p}/releases`), review
//! (`POST .../releases/{r}/reviews`; the second distinct approval exports), export retry
//! (`POST .../releases/{r}/export`) and status (`GET .../releases/{r}`).
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
use crate::tre::actions::releases::{self, Decide, NewRequest};
use crate::tre::actions::{ActionError, Decision, ReleaseState, Request};

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
            "checker": x.checker, "decision": x.decision, "comment": x.comment, "at": crate::tre::actions::stamp::text(&x.at),
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

fn answer(r: Result<Request, ActionError>) -> Response {
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
