//! `GET /register`: the public data-uses register as a page, without sign-in.
//!
//! Owns only serving [`crate::transparency::render::html`] of the register the API
//! builds ([`crate::server::register::current`]), under the pages' security headers.
//! Danger: it takes no session and shows nothing but the register.

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};

use super::Web;
use crate::transparency::render;

/// `GET /register`.
pub async fn page(State(web): State<Web>) -> Response {
    match crate::server::register::current(&web.app)
        .and_then(|r| Ok(render::html(&r, render::SERVED)?))
    {
        Ok(html) => Html(html).into_response(),
        Err(e) => e.into_response(),
    }
}
