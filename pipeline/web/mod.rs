//! The web pages of `tre serve`: sign-in, the analyst's projects, jobs and release
//! requests, the output checker's queue and review page, and the audit trail.
//!
//! Owns server-rendered HTML (maud, no JavaScript) as a thin adapter over the action
//! library ([`crate::tre::actions`]): every action and every read (submit, request,
//! review, a job's page, a safe table, the queue) is one call there, which checks the
//! role, audits and refuses; the pages render its typed answer and never restate a rule
//! (who may review is [`crate::tre::actions::releases::may_review`]). It never uses the
//! JSON API's handlers ([`crate::tre::actions`] is what both share). [`session`] turns a
//! sign-in into a short-lived server-side session and guards every form against
//! cross-site requests; [`security_headers`] sets a strict Content-Security-Policy on
//! every page. Danger: a page must never show row-level data; only a job's safe table
//! (checked against its recorded sha256 by the action) and the disclosure report are
//! shown.

pub mod alerts;
pub mod audit_page;
pub mod checker;
pub mod diff;
pub mod error;
pub mod jobs;
pub mod layout;
pub mod register;
pub mod report;
pub mod session;
pub mod signin;
pub mod table;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::tre::actions::Tre;
use session::Sessions;

/// The Content-Security-Policy of every page: nothing but this server's stylesheet and
/// images, forms posted only back to it, never framed.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// How the pages behave.
#[derive(Debug, Clone)]
pub struct WebOptions {
    /// Mark the session cookie `Secure` (set when a TLS reverse proxy serves the pages).
    pub secure_cookies: bool,
    /// Session lifetime in minutes (absolute, from sign-in).
    pub session_minutes: i64,
    /// The origin people's browsers use (`https://tre.example.org`); when `None`, the
    /// request's `Host` with `http`, or `https` when `secure_cookies` is set.
    pub public_origin: Option<String>,
}

impl Default for WebOptions {
    fn default() -> Self {
        WebOptions {
            secure_cookies: false,
            session_minutes: 30,
            public_origin: None,
        }
    }
}

/// State of the pages: the service's state plus the session store.
#[derive(Debug, Clone)]
pub struct Web {
    /// The actions' shared state.
    pub tre: Arc<Tre>,
    /// Signed-in sessions.
    pub sessions: Arc<Sessions>,
    /// Options.
    pub opts: Arc<WebOptions>,
}

/// The pages with default options, ready to merge into the API router (after its own
/// header layer, so this module's headers apply to the pages).
pub fn routes<S: Clone + Send + Sync + 'static>(tre: Arc<Tre>) -> Router<S> {
    routes_with(tre, WebOptions::default())
}

/// The pages with `opts`.
pub fn routes_with<S: Clone + Send + Sync + 'static>(tre: Arc<Tre>, opts: WebOptions) -> Router<S> {
    let web = Web {
        tre,
        sessions: Arc::new(Sessions::default()),
        opts: Arc::new(opts),
    };
    Router::new()
        .route("/", get(jobs::home))
        .route("/static/tre.css", get(stylesheet))
        .route("/sign-in", get(signin::form).post(signin::sign_in))
        .route("/sign-out", post(signin::sign_out))
        .route("/projects/{p}", get(jobs::project).post(jobs::submit))
        .route(
            "/projects/{p}/jobs/{job}",
            get(jobs::job).post(jobs::request_release),
        )
        .route("/queue", get(checker::queue))
        .route(
            "/projects/{p}/releases/{r}",
            get(checker::release).post(checker::review),
        )
        .route(
            "/projects/{p}/releases/{r}/versions",
            post(checker::resubmit),
        )
        .route("/audit", get(audit_page::trail))
        .route("/register", get(register::page))
        .route("/alerts", get(alerts::list))
        .route("/alerts/{id}", post(alerts::ack))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(web)
}

/// Set the security headers on every page response.
pub async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("tre.css"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_middleware_sets_every_security_header() {
        let r = security_headers("page".into_response()).await;
        let h = |n: header::HeaderName| {
            r.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        assert_eq!(h(header::CONTENT_SECURITY_POLICY).as_deref(), Some(CSP));
        assert_eq!(
            CSP,
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        );
        assert_eq!(
            h(header::X_CONTENT_TYPE_OPTIONS).as_deref(),
            Some("nosniff")
        );
        assert_eq!(h(header::REFERRER_POLICY).as_deref(), Some("no-referrer"));
        assert_eq!(h(header::X_FRAME_OPTIONS).as_deref(), Some("DENY"));
    }
}
