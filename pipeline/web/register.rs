//! `GET /register`: the public data-uses register as a page, without sign-in.
//!
//! Owns only serving [`crate::transparency::render::html`] of the register the API
//! builds ([`crate::transparency::service::current_register`]), under the pages' security headers.
//! Danger: it takes no session and shows nothing but the register.

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};

use super::Web;
use crate::transparency::render;

/// `GET /register`.
pub async fn page(State(web): State<Web>) -> Response {
    match crate::transparency::service::current_register(&web.tre).and_then(|r| {
        render::html(&r, render::SERVED).map_err(crate::tre::actions::ActionError::from)
    }) {
        Ok(html) => Html(html).into_response(),
        Err(e) => super::error::WebError::from(e).into_response(),
    }
}
