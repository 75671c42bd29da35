//! Alerts over HTTP, for auditors: `GET /api/alerts` and `POST /api/alerts/{id}/ack`.
//!
//! Owns who sees which alert: an auditor of a project sees its alerts, and an auditor of
//! any project sees the service-wide ones (sign-ins, integrity). The rules, the alert
//! entries and acknowledgements are [`crate::transparency::alerts`]'s; an
//! acknowledgement is its own audit entry (`alert.ack`), written before the answer.
//! Danger: alerts name users and projects, so nobody but an auditor sees them.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use serde::Deserialize;

use super::App;
use super::auth::Caller;
use super::error::ApiError;
use crate::transparency::TransparencyError;
use crate::transparency::alerts::{self, AlertState};
use crate::tre::id::Id;
use crate::tre::workspace::{Role, roles_of};

/// `POST /api/alerts/{id}/ack` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckBody {
    /// What was done about it.
    pub note: String,
}

/// The projects `user` audits; refused when none.
fn audited(app: &App, user: &Id) -> Result<BTreeSet<String>, ApiError> {
    let mut out = BTreeSet::new();
    for p in app.ws.projects()? {
        let policy = app.ws.project(&p, &app.schemas)?;
        if roles_of(&policy, user.as_str()).contains(&Role::Auditor) {
            out.insert(p.to_string());
        }
    }
    if out.is_empty() {
        return Err(TransparencyError::NotAuditor(user.to_string()).into());
    }
    Ok(out)
}

/// The alerts `user` may see, in the order raised.
pub fn visible(app: &App, user: &Id) -> Result<Vec<AlertState>, ApiError> {
    let projects = audited(app, user)?;
    let entries = alerts::entries_of(&app.ws)?;
    Ok(alerts::states(&entries)
        .into_iter()
        .filter(|a| a.project.as_ref().is_none_or(|p| projects.contains(p)))
        .collect())
}

/// Acknowledge alert `id` as `user`, if they may see it.
pub fn acknowledge(app: &App, user: &Id, id: &str, note: &str) -> Result<AlertState, ApiError> {
    if note.chars().count() > super::releases::MAX_TEXT_CHARS {
        return Err(ApiError::BadField {
            field: "note",
            problem: "is longer than 4000 characters",
        });
    }
    let seen = visible(app, user)?;
    if !seen.iter().any(|a| a.id == id) {
        return Err(TransparencyError::NoAlert(id.to_string()).into());
    }
    let entries = alerts::entries_of(&app.ws)?;
    Ok(alerts::ack(
        &app.auditor,
        &entries,
        id,
        user.as_str(),
        note,
    )?)
}

/// `GET /api/alerts`: `{"alerts": [...]}`.
pub async fn list(State(app): State<Arc<App>>, caller: Caller) -> Response {
    let result = visible(&app, &caller.user).map(|a| Json(serde_json::json!({ "alerts": a })));
    app.finish(&caller.user, "alert.list", None, result)
}

/// `POST /api/alerts/{id}/ack` with `{"note"}`: the alert with its acknowledgements.
pub async fn ack(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Json<AckBody>, JsonRejection>,
) -> Response {
    let result = match body {
        Ok(Json(b)) => acknowledge(&app, &caller.user, &id, &b.note).map(Json),
        Err(e) => Err(ApiError::BadBody {
            problem: e.body_text(),
        }),
    };
    app.finish(&caller.user, alerts::ACK, None, result)
}
