//! `GET /api/me`: who the token belongs to and their roles per project
//! ([`crate::tre::actions::reads::me`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::App;
use super::auth::Caller;
use crate::tre::actions::reads;

/// `{"user", "projects": {ID: [roles]}}`.
pub async fn show(State(app): State<Arc<App>>, Caller(actor): Caller) -> Response {
    match reads::me(&app.tre, &actor) {
        Ok(mine) => {
            let projects: BTreeMap<String, Vec<&str>> = mine
                .iter()
                .map(|p| {
                    let roles = p.roles.iter().map(|r| r.name()).collect();
                    (p.project.to_string(), roles)
                })
                .collect();
            Json(serde_json::json!({ "user": actor.user(), "projects": projects })).into_response()
        }
        Err(e) => e.into_response(),
    }
}
