//! Alerts over HTTP, for auditors: `GET /api/alerts` and `POST /api/alerts/{id}/ack`.
//!
//! A thin adapter: who sees which alert and the audited acknowledgement are
//! [`crate::transparency::service`]'s actions (an auditor of a project sees its alerts,
//! an auditor of any project the service-wide ones); this file parses the request and
//! answers JSON.
//! Danger: alerts name users and projects, so nobody but an auditor sees them.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::App;
use super::auth::Caller;
use crate::transparency::service;
use crate::tre::actions::ActionError;

/// `POST /api/alerts/{id}/ack` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckBody {
    /// What was done about it.
    pub note: String,
}

/// `GET /api/alerts`: `{"alerts": [...]}`.
pub async fn list(State(app): State<Arc<App>>, Caller(actor): Caller) -> Response {
    match service::visible(&app.tre, &actor) {
        Ok(a) => Json(serde_json::json!({ "alerts": a })).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /api/alerts/{id}/ack` with `{"note"}`: the alert with its acknowledgements.
pub async fn ack(
    State(app): State<Arc<App>>,
    Caller(actor): Caller,
    Path(id): Path<String>,
    body: Result<Json<AckBody>, JsonRejection>,
) -> Response {
    let note = match body {
        Ok(Json(b)) => b.note,
        Err(e) => {
            let err = ActionError::BadBody {
                problem: e.body_text(),
            };
            return app
                .tre
                .refusal(
                    actor.user().as_str(),
                    crate::transparency::alerts::ACK,
                    None,
                    None,
                    err,
                )
                .into_response();
        }
    };
    match service::acknowledge(&app.tre, &actor, &id, &note) {
        Ok(a) => Json(a).into_response(),
        Err(e) => e.into_response(),
    }
}
