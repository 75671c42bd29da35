//! The HTTP surface's one mapping of an [`ActionError`] to a response: its status (from
//! [`ActionError::status`]), a JSON body `{"error": message}`, and `Retry-After` for a
//! blocked sign-in.
//!
//! Owns turning a refusal into HTTP, in one place; the refusal itself was already
//! audited by the action (or by [`super::App::refuse`] for what the adapter refused
//! before calling one). Internal failures are logged in full and shown as a plain 500.
//! Danger: the message goes to the caller; it is the action's user-facing message,
//! never a token or a data value.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::tre::actions::ActionError;

impl IntoResponse for ActionError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        self.log();
        let mut r = (
            status,
            Json(serde_json::json!({ "error": self.public_message() })),
        )
            .into_response();
        if let Some(s) = self.retry_after() {
            r.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, s.into());
        }
        r
    }
}

/// Turn a JSON body rejection into a 400 (serde's message names fields and positions),
/// or a 413 when the body was over axum's own limit.
pub fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ActionError> {
    b.map(|Json(t)| t).map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ActionError::TooLarge {
                limit: super::http::MAX_BODY_BYTES,
            }
        } else {
            ActionError::BadBody {
                problem: e.body_text().chars().take(300).collect(),
            }
        }
    })
}
