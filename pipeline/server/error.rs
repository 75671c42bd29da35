//! The HTTP surface's one error type: every refusal and failure a handler can return,
//! with its status code (docs/service.md, HTTP API: 401, 403, 404, 400, 409, 410 for a
//! result a purge withdrew; and 408, 413, 429 from the connection layer and the sign-in
//! limiter) and a JSON body `{"error": message}`.
//!
//! Owns the mapping from library errors to status codes, decided by variant. Internal
//! failures are logged in full and shown as a plain 500. Danger: a message goes to the
//! caller and to the audit log; it must never quote a token or a data value (library
//! errors are already reduced; this module adds nothing from the request but ids).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::audit::AuditError;
use crate::jobs::JobError;
use crate::tre::id::{Id, IdError};
use crate::tre::release::ReleaseError;
use crate::tre::users::UserError;
use crate::tre::workspace::{Role, WorkspaceError};

/// Why a request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No `Authorization: Bearer` header.
    #[error("no bearer token: send `Authorization: Bearer TOKEN`")]
    NoToken,
    /// The token was not accepted.
    #[error(transparent)]
    BadToken(UserError),
    /// The caller lacks the role in this project.
    #[error("{user} is not an approved {} of project {project}", role.name())]
    Forbidden {
        /// The caller.
        user: Id,
        /// The role needed.
        role: Role,
        /// The project.
        project: Id,
    },
    /// A malformed id in the path or body.
    #[error(transparent)]
    BadId(#[from] IdError),
    /// A malformed body.
    #[error("malformed request body: {problem}")]
    BadBody {
        /// What is wrong (serde's message: positions and field names, no values).
        problem: String,
    },
    /// A field outside its bounds.
    #[error("{field} {problem}")]
    BadField {
        /// The field.
        field: &'static str,
        /// What is wrong.
        problem: &'static str,
    },
    /// A job problem.
    #[error(transparent)]
    Job(#[from] JobError),
    /// A release problem.
    #[error(transparent)]
    Release(#[from] ReleaseError),
    /// A workspace problem.
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    /// The job has no safe table to show.
    #[error("job {job} has no safe table ({why})")]
    NoSafeTable {
        /// The job.
        job: Id,
        /// Why.
        why: &'static str,
    },
    /// The job's result was withdrawn by `tre purge`: the purge's own message (its id,
    /// when, and "re-run the job"); never a data value.
    #[error("job {job}: {message}")]
    Withdrawn {
        /// The job.
        job: Id,
        /// [`crate::tre::purge::result_withdrawn`]'s message.
        message: String,
    },
    /// Whether a job's result was withdrawn could not be read: it is not served.
    #[error(
        "job {job}: its result is not served, because whether `tre purge` withdrew it could not be read ({problem}); the operator should check the result folder"
    )]
    WithdrawalUnreadable {
        /// The job.
        job: Id,
        /// What failed (a path and the reason, never a row).
        problem: String,
    },
    /// A request body over the limit.
    #[error(
        "the request body is over the limit of {limit} bytes; send less (a query of at most 64 KiB)"
    )]
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// A request body that did not arrive in time.
    #[error("the request body did not arrive within {seconds} s; send it again")]
    SlowBody {
        /// The limit, in seconds.
        seconds: u64,
    },
    /// Too many failed sign-ins from this address or with this token prefix.
    #[error(
        "too many failed sign-ins from this address or with this token; try again in {retry_after} s (ask the operator if your token stopped working)"
    )]
    TooManyFailures {
        /// Seconds until the block ends.
        retry_after: u64,
    },
    /// The audit log could not be written: nothing happened.
    #[error("the audit log could not be written, so nothing was done")]
    Audit(#[from] AuditError),
    /// The register or an alert.
    #[error(transparent)]
    Transparency(#[from] crate::transparency::TransparencyError),
}

impl ApiError {
    /// The status code, by variant.
    pub fn status(&self) -> StatusCode {
        use crate::error::Classify;
        match self {
            ApiError::NoToken
            | ApiError::BadToken(UserError::UnknownToken)
            | ApiError::BadToken(UserError::Revoked { .. })
            | ApiError::BadToken(UserError::Expired { .. }) => StatusCode::UNAUTHORIZED,
            ApiError::Audit(AuditError::Invalid { .. }) => StatusCode::BAD_REQUEST,
            ApiError::BadToken(_) | ApiError::Audit(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::BadId(_) | ApiError::BadBody { .. } | ApiError::BadField { .. } => {
                StatusCode::BAD_REQUEST
            }
            ApiError::Job(JobError::NotFound { .. })
            | ApiError::Release(ReleaseError::NotFound { .. })
            | ApiError::Workspace(WorkspaceError::UnknownProject { .. }) => StatusCode::NOT_FOUND,
            ApiError::Release(ReleaseError::MissingText { .. }) => StatusCode::BAD_REQUEST,
            ApiError::NoSafeTable { .. } => StatusCode::CONFLICT,
            ApiError::Withdrawn { .. } | ApiError::Release(ReleaseError::Withdrawn { .. }) => {
                StatusCode::GONE
            }
            ApiError::WithdrawalUnreadable { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::SlowBody { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooManyFailures { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Job(e) => kind_status(e.kind()),
            ApiError::Release(e) => kind_status(e.kind()),
            ApiError::Workspace(e) => kind_status(e.kind()),
            ApiError::Transparency(e) => crate::transparency::status_of(e),
        }
    }

    /// Whether this is a refusal (recorded as `refused`) rather than a failure.
    pub fn is_refusal(&self) -> bool {
        self.status().is_client_error()
    }
}

fn kind_status(kind: crate::error::ErrorKind) -> StatusCode {
    match kind {
        crate::error::ErrorKind::Refused => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = if status.is_server_error() {
            eprintln!("tre serve: internal error: {self}");
            "internal error; the operator can find it in the server log".to_string()
        } else {
            self.to_string()
        };
        let retry = match &self {
            ApiError::TooManyFailures { retry_after } => Some(*retry_after),
            _ => None,
        };
        let mut r = (status, Json(serde_json::json!({ "error": message }))).into_response();
        if let Some(s) = retry {
            r.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, s.into());
        }
        r
    }
}
