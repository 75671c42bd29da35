//! `GET /api/me`: who the token belongs to and their roles per project.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::Response;

use super::App;
use super::auth::Caller;
use super::error::ApiError;
use crate::tre::workspace::roles_of;

/// `{"user", "projects": {ID: [roles]}}`.
pub async fn show(State(app): State<Arc<App>>, caller: Caller) -> Response {
    let result = me(&app, &caller);
    app.finish(&caller.user, "me", None, result)
}

fn me(app: &App, caller: &Caller) -> Result<Json<serde_json::Value>, ApiError> {
    let mut projects = BTreeMap::new();
    for p in app.ws.projects().map_err(ApiError::from)? {
        let policy = app.ws.project(&p, &app.schemas)?;
        let roles: Vec<&str> = roles_of(&policy, caller.user.as_str())
            .into_iter()
            .map(|r| r.name())
            .collect();
        if !roles.is_empty() {
            projects.insert(p.to_string(), roles);
        }
    }
    Ok(Json(serde_json::json!({
        "user": caller.user,
        "projects": projects,
    })))
}
