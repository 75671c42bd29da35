//! The public data-uses register as data: `GET /register.json` and
//! `GET /register/{file}.csv`, served without sign-in (the page is
//! [`crate::web`]'s `GET /register`).
//!
//! Owns building the register for a request from the service's own workspace and log
//! ([`crate::transparency::register::build`]); everything it shows is public by design
//! and has passed the identifier guard. Danger: no route here may take a token or show
//! anything but the register; reads of it are not audited (it is public).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::App;
use crate::transparency::render;
use crate::transparency::service::current_register;
use crate::tre::actions::ActionError;

/// `GET /register.json`.
pub async fn json(State(app): State<Arc<App>>) -> Response {
    match current_register(&app.tre).and_then(|r| render::json(&r).map_err(ActionError::from)) {
        Ok(text) => ([(header::CONTENT_TYPE, "application/json")], text).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /register/{file}`: one of the CSV sections.
pub async fn csv(State(app): State<Arc<App>>, Path(file): Path<String>) -> Response {
    if !render::CSV_FILES.contains(&file.as_str()) {
        return (StatusCode::NOT_FOUND, "no such register file").into_response();
    }
    match current_register(&app.tre).and_then(|r| render::csv(&r, &file).map_err(ActionError::from))
    {
        Ok(Some(text)) => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{file}\""),
                ),
            ],
            text,
        )
            .into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, "no such register file").into_response(),
        Err(e) => e.into_response(),
    }
}
