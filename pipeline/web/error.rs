//! The pages' one error type, with the right status code (`layout` shows it as a page).
//!
//! Owns what a refusal says: the action's own message when an action refused (so
//! a person sees exactly what the JSON client would), a cross-site or malformed form, or
//! a failure of the pages themselves. It renders nothing, so the page shell may name
//! the session's types without an import circle. Danger: a message is shown to
//! the person; it carries only what the API already says or fixed text, never a value
//! from the data.

use axum::http::StatusCode;

/// Why a page could not be shown or a form was refused.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The service refused or failed (its own message and status).
    #[error("{message}")]
    Api {
        /// The service's status code.
        status: u16,
        /// The service's message.
        message: String,
    },
    /// A cross-site request, or a form without this session's token.
    #[error("refused: {why}")]
    Csrf {
        /// What was wrong.
        why: &'static str,
    },
    /// A form that could not be read.
    #[error("the form could not be read: {problem}")]
    Form {
        /// serde's message (field names, no values).
        problem: String,
    },
    /// A token that was not accepted at sign-in.
    #[error("that token was not accepted; check it, or ask the operator for a new one")]
    SignIn,
    /// The OS random source failed.
    #[error("the operating system's random source failed; try again")]
    Random,
    /// The service answered in a way the pages do not understand (a bug).
    #[error("internal error (a bug): the service's answer to {what} could not be read")]
    Bug {
        /// Which call.
        what: &'static str,
    },
}

impl From<crate::tre::actions::ActionError> for WebError {
    /// An action's refusal (already audited by the action), with its own status and
    /// message; a failure is logged and shown without its details.
    fn from(e: crate::tre::actions::ActionError) -> Self {
        e.log();
        WebError::Api {
            status: e.status(),
            message: e.public_message(),
        }
    }
}

impl WebError {
    /// The status code.
    pub fn status(&self) -> StatusCode {
        match self {
            WebError::Api { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
            WebError::Csrf { .. } => StatusCode::FORBIDDEN,
            WebError::Form { .. } => StatusCode::BAD_REQUEST,
            WebError::SignIn => StatusCode::UNAUTHORIZED,
            WebError::Random | WebError::Bug { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl crate::error::Classify for WebError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            WebError::Bug { .. } => ErrorKind::Bug,
            WebError::Random => ErrorKind::Failed,
            e if e.status().is_server_error() => ErrorKind::Failed,
            _ => ErrorKind::Refused,
        }
    }
}
