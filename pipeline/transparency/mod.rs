//! Transparency and breach detection: the public data-uses register and the alerts that
//! watch the audit trail.
//!
//! Owns what the TRE tells the public and its auditors about itself. [`register`] builds
//! the data-uses register (projects, jobs, releases, incidents) from the installed
//! policies, the workspace's sealed records and the typed audit entries; [`render`]
//! turns it into HTML, JSON and CSV (and a static site). [`rules`] is the alert rules
//! file; [`alerts`] evaluates the rules over the audit stream and raises each alert once
//! as an `alert.raised` entry (its id is derived from its evidence, so a restart, a
//! second evaluation or the schedule never raises it twice) and records
//! acknowledgements (`alert.ack`); [`incident`] writes the report for the data
//! protection officer. Danger: the register is public. It holds no row-level data, no
//! pseudonym and no NHS number: it is built only from policies, counts, ids and hashes
//! the audit log already holds, and every rendering is refused if it contains anything
//! shaped like an NHS number ([`guard`]). Nothing here decides access to data; it only
//! reads, and appends its own entries.

pub mod alerts;
pub mod incident;
pub mod register;
pub mod render;
pub mod rules;
pub mod service;

use std::path::PathBuf;

use crate::audit::AuditError;
use crate::policy::PolicyError;
use crate::tre::workspace::WorkspaceError;

/// Why the register or the alerts could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum TransparencyError {
    /// The audit log could not be read or written.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// A workspace record could not be read (edited, missing, unsealed).
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    /// A release record could not be read.
    #[error(transparent)]
    Release(#[from] crate::tre::release::ReleaseError),
    /// A policy could not be used.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The alert rules file is unusable.
    #[error("alert rules {path}: {message}")]
    Rules {
        /// The rules file.
        path: PathBuf,
        /// What is wrong, with its line.
        message: String,
    },
    /// No alert has this id.
    #[error("no alert {0:?}; list them with `tre admin alerts --workspace WS`")]
    NoAlert(String),
    /// The audit log fails verification: the alert is raised as this error, because the
    /// log refuses every new entry until it is restored.
    #[error(
        "ALERT {alert} (audit_verification): {summary}; the log refuses new entries, so this alert cannot be recorded in it: restore the log from a backup and investigate with `tre audit verify`"
    )]
    Tampered {
        /// The alert's id.
        alert: String,
        /// What verification found.
        summary: String,
    },
    /// Only a project's auditors see alerts.
    #[error("{0} is not an auditor of any project, so sees no alerts")]
    NotAuditor(String),
    /// An acknowledgement without a note.
    #[error("an acknowledgement needs a note saying what was done (at least 3 characters)")]
    NoNote,
    /// A rendering held something shaped like an NHS number: nothing was published.
    #[error("the {0} holds a value shaped like an NHS number; nothing was published")]
    Identifier(&'static str),
    /// Writing an output failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Serialising failed.
    #[error("cannot serialise the {0}")]
    Serialise(&'static str),
}

impl crate::error::Classify for TransparencyError {
    fn kind(&self) -> crate::error::ErrorKind {
        match self {
            TransparencyError::Audit(e) => e.kind(),
            TransparencyError::Workspace(e) => e.kind(),
            TransparencyError::Policy(e) => e.kind(),
            TransparencyError::Release(e) => e.kind(),
            TransparencyError::Rules { .. }
            | TransparencyError::NoAlert(_)
            | TransparencyError::NoNote
            | TransparencyError::Tampered { .. }
            | TransparencyError::NotAuditor(_)
            | TransparencyError::Identifier(_) => crate::error::ErrorKind::Refused,
            TransparencyError::Write { .. } | TransparencyError::Serialise(_) => {
                crate::error::ErrorKind::Failed
            }
        }
    }
}

/// Refuse `text` (a rendering of `what`) if anything in it is shaped like an NHS
/// number (ten digits, alone or spaced `3 3 4`; see [`crate::audit::looks_like_nhs_number`]).
pub fn guard(what: &'static str, text: &str) -> Result<(), TransparencyError> {
    if crate::audit::looks_like_nhs_number(text) {
        return Err(TransparencyError::Identifier(what));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_refuses_nhs_numbers_and_passes_hashes_and_dates() {
        assert!(guard("register", "patient 9434765919 here").is_err());
        assert!(guard("register", "943 476 5919").is_err());
        assert!(guard("register", "2026-01-01 12:00, 42 jobs").is_ok());
        // Digits inside a hash (16+ hex characters) are not a number on their own.
        assert!(guard("register", "sha256 ab9434765919cdef01").is_ok());
    }
}
