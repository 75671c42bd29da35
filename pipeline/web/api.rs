//! The pages' bridge to the JSON API: its handlers are called in-process and their
//! answers read back, and refusals of direct library checks are audited the way the API
//! audits them.
//!
//! Owns nothing but the plumbing: [`json`] and [`bytes`] turn a handler's response into
//! a value or a [`WebError`] carrying the API's own status and message; [`refused`]
//! audits a refusal through [`crate::server::App::refusal`]. Danger: never decide a rule
//! here; if a page needs a new action, add it to the API and call it from here.

use axum::response::Response;

use super::error::WebError;
use crate::server::App;
use crate::server::error::ApiError;

/// Largest answer read back from a handler (a safe table is far smaller).
const MAX_BODY: usize = 64 * 1024 * 1024;

/// The body of a successful answer, or the API's refusal.
pub async fn bytes(r: Response, what: &'static str) -> Result<Vec<u8>, WebError> {
    let status = r.status();
    let body = axum::body::to_bytes(r.into_body(), MAX_BODY)
        .await
        .map_err(|_| WebError::Bug { what })?;
    if status.is_success() {
        return Ok(body.to_vec());
    }
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .ok_or(WebError::Bug { what })?;
    Err(WebError::Api {
        status: status.as_u16(),
        message,
    })
}

/// A successful JSON answer, or the API's refusal.
pub async fn json(r: Response, what: &'static str) -> Result<serde_json::Value, WebError> {
    let b = bytes(r, what).await?;
    serde_json::from_slice(&b).map_err(|_| WebError::Bug { what })
}

/// Audit a refusal of `action` (as the API does) and turn it into a page error.
pub fn refused(
    app: &App,
    actor: &str,
    action: &str,
    project: Option<&str>,
    err: ApiError,
) -> WebError {
    let status = err.status().as_u16();
    let message = err.to_string();
    let r = app.refusal(actor, action, project, Some("web".into()), err);
    if r.status().is_server_error() && status < 500 {
        return WebError::Api {
            status: 500,
            message: "the audit log could not be written, so nothing was done".into(),
        };
    }
    if status >= 500 {
        return WebError::Api {
            status,
            message: "internal error; the operator can find it in the server log".into(),
        };
    }
    WebError::Api { status, message }
}
