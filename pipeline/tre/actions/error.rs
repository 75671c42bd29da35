//! The action library's one error type: every refusal and failure an action can
//! return, each with a user-facing message and the status both adapters answer with
//! (docs/service.md, HTTP API: 401, 403, 404, 400, 409, 410 for a result a purge
//! withdrew; 408, 413, 429 from the connection layer and the sign-in limiter).
//!
//! Owns the mapping from library errors to a [`Class`] (not found, forbidden, conflict,
//! invalid, gone, ...) and from a class to its status, decided by variant, in one place
//! ([`ActionError::status`]): the JSON API and the pages both use it. Danger: a message
//! goes to the caller and to the audit log; it must never quote a token or a data value
//! (library errors are already reduced; this module adds nothing from the request but
//! ids).

use crate::audit::AuditError;
use crate::tre::id::{Id, IdError};
use crate::tre::job::JobError;
use crate::tre::release::ReleaseError;
use crate::tre::users::UserError;
use crate::tre::workspace::{Role, WorkspaceError};

/// Why a request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// A refusal or failure of a service module built on the actions (the public
    /// register and the alerts): its class and its message (never a data value).
    #[error("{message}")]
    Service {
        /// How the adapters answer it.
        class: Class,
        /// What to tell the caller.
        message: String,
    },
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
    /// The audit log could not be written: nothing happened (the cause is shown to the
    /// operator; the API and the pages show a plain internal error).
    #[error("the audit log could not be written, so nothing was done: {0}")]
    Audit(#[from] AuditError),
    /// An operator action's precondition does not hold (an unknown project, a stale
    /// opt-out list): its message says what to fix.
    #[error("{message}")]
    Precondition {
        /// What is wrong and what to do.
        message: String,
    },
    /// A purge problem.
    #[error(transparent)]
    Purge(#[from] crate::tre::purge::PurgeError),
    /// A refresh failed or was refused.
    #[error(transparent)]
    Refresh(#[from] crate::tre::refresh::RefreshError),
    /// A key file problem.
    #[error(transparent)]
    KeyFile(#[from] crate::key_file::KeyFileError),
    /// An opt-out list problem.
    #[error(transparent)]
    OptOut(#[from] crate::optout::OptOutError),
    /// A user record problem in an admin action (adding, revoking, listing people).
    #[error(transparent)]
    User(#[from] UserError),
}

/// What kind of refusal or failure an [`ActionError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// No identity, or one not accepted (401).
    Unauthenticated,
    /// The actor lacks the role (403).
    Forbidden,
    /// No such project, job or request (404).
    NotFound,
    /// A malformed or out-of-bounds input (400).
    Invalid,
    /// Not possible in the record's current state (409).
    Conflict,
    /// Withdrawn by `tre purge` (410).
    Gone,
    /// A request body over the limit (413).
    TooLarge,
    /// A request body that did not arrive in time (408).
    TimedOut,
    /// Too many failed sign-ins (429).
    TooManyFailures,
    /// The service failed (500); nothing was done.
    Unavailable,
}

impl Class {
    /// The HTTP status the API and the pages answer with.
    pub fn status(self) -> u16 {
        match self {
            Class::Unauthenticated => 401,
            Class::Forbidden => 403,
            Class::NotFound => 404,
            Class::Invalid => 400,
            Class::Conflict => 409,
            Class::Gone => 410,
            Class::TooLarge => 413,
            Class::TimedOut => 408,
            Class::TooManyFailures => 429,
            Class::Unavailable => 500,
        }
    }
}

impl ActionError {
    /// Its class, by variant.
    pub fn class(&self) -> Class {
        use crate::error::Classify;
        match self {
            ActionError::NoToken
            | ActionError::BadToken(UserError::UnknownToken)
            | ActionError::BadToken(UserError::Revoked { .. })
            | ActionError::BadToken(UserError::Expired { .. }) => Class::Unauthenticated,
            ActionError::Audit(AuditError::Invalid { .. }) => Class::Invalid,
            ActionError::BadToken(_) | ActionError::Audit(_) => Class::Unavailable,
            ActionError::Forbidden { .. } => Class::Forbidden,
            ActionError::Service { class, .. } => *class,
            ActionError::BadId(_) | ActionError::BadBody { .. } | ActionError::BadField { .. } => {
                Class::Invalid
            }
            ActionError::Job(JobError::NotFound { .. })
            | ActionError::Release(ReleaseError::NotFound { .. })
            | ActionError::Workspace(WorkspaceError::UnknownProject { .. }) => Class::NotFound,
            ActionError::Release(ReleaseError::MissingText { .. }) => Class::Invalid,
            ActionError::NoSafeTable { .. } => Class::Conflict,
            ActionError::Withdrawn { .. }
            | ActionError::Release(ReleaseError::Withdrawn { .. }) => Class::Gone,
            ActionError::WithdrawalUnreadable { .. } => Class::Unavailable,
            ActionError::TooLarge { .. } => Class::TooLarge,
            ActionError::SlowBody { .. } => Class::TimedOut,
            ActionError::TooManyFailures { .. } => Class::TooManyFailures,
            ActionError::Precondition { .. } => Class::Conflict,
            ActionError::User(e) => by_kind(e.kind()),
            ActionError::Purge(e) => by_kind(e.kind()),
            ActionError::Refresh(e) => by_kind(e.kind()),
            ActionError::KeyFile(e) => by_kind(e.kind()),
            ActionError::OptOut(e) => by_kind(e.kind()),
            ActionError::Job(e) => by_kind(e.kind()),
            ActionError::Release(e) => by_kind(e.kind()),
            ActionError::Workspace(e) => by_kind(e.kind()),
        }
    }

    /// The HTTP status both adapters answer with.
    pub fn status(&self) -> u16 {
        self.class().status()
    }

    /// Whether this is a refusal (recorded as `refused`) rather than a failure.
    pub fn is_refusal(&self) -> bool {
        self.class() != Class::Unavailable
    }

    /// What a person is shown: the message of a refusal; for a failure, only that the
    /// operator can find it in the server log (where [`ActionError::log`] wrote it).
    pub fn public_message(&self) -> String {
        if self.is_refusal() {
            self.to_string()
        } else {
            "internal error; the operator can find it in the server log".to_string()
        }
    }

    /// Write a failure to the server log (standard error) in full.
    pub fn log(&self) {
        if !self.is_refusal() {
            eprintln!("tre serve: internal error: {self}");
        }
    }

    /// Seconds to wait before trying again, for a blocked sign-in.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ActionError::TooManyFailures { retry_after } => Some(*retry_after),
            _ => None,
        }
    }
}

fn by_kind(kind: crate::error::ErrorKind) -> Class {
    match kind {
        crate::error::ErrorKind::Refused => Class::Conflict,
        _ => Class::Unavailable,
    }
}

impl crate::error::Classify for ActionError {
    fn kind(&self) -> crate::error::ErrorKind {
        match self {
            ActionError::Purge(e) => e.kind(),
            ActionError::Refresh(e) => e.kind(),
            ActionError::KeyFile(e) => e.kind(),
            ActionError::OptOut(e) => e.kind(),
            ActionError::Job(e) => e.kind(),
            ActionError::Release(e) => e.kind(),
            ActionError::Workspace(e) => e.kind(),
            ActionError::User(e) | ActionError::BadToken(e) => e.kind(),
            ActionError::Audit(e) => e.kind(),
            ActionError::BadId(e) => e.kind(),
            e if e.is_refusal() => crate::error::ErrorKind::Refused,
            _ => crate::error::ErrorKind::Failed,
        }
    }
}
