//! The trusted research environment: the workspace the service owns, its people, jobs
//! and releases.
//!
//! Owns what happens after an extract lands inside the TRE. A [`workspace::Workspace`]
//! holds installed projects (policy), their datasets (installed extracts), job results
//! and release requests, all as sealed records; [`users`] holds bearer tokens (hashed);
//! [`query`] runs analyst SQL over one project's datasets (inside a job's child process,
//! see [`crate::jobs`]) and puts every result through the disclosure checks; [`release`]
//! is the two-checker airlock; [`actions`] is the one library of TRE actions the API,
//! the pages and the operator's commands call. [`auditor`] writes the audit entry before
//! any effect;
//! [`anchors`] is the seam to the audit module's head and checkpoints. Danger: this is
//! where analysts touch data, so every access is decided here from ids (never paths),
//! tokens (never environment variables) and the installed policy; nothing in this module
//! prints row-level results.

pub mod actions;
pub mod anchors;
pub mod auditor;
pub mod id;
pub mod job;
pub mod purge;
pub mod query;
pub mod records;
pub mod recover;
pub mod refresh;
pub mod release;
pub mod stamp;
pub mod users;
pub mod verdict;
pub mod workspace;

/// The auditor is the workspace's journal: bound writes ([`workspace::Workspace::commit`])
/// append their entry through it. Declared here, beside both, so that `workspace` never
/// imports `auditor` (which opens a workspace) and `tre/` has no import circle.
impl workspace::Journal for auditor::Auditor {
    fn record(
        &self,
        draft: crate::audit::EntryDraft,
    ) -> Result<crate::audit::AuditEntry, crate::audit::AuditError> {
        auditor::Auditor::record(self, draft)
    }
}
