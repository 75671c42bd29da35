//! The TRE's one library of actions: submit a job, read its status and safe table,
//! request, review and export a release, read the lists the pages show, and sign in.
//!
//! Owns every action as ONE function with typed inputs and outputs, taking an
//! authenticated [`Actor`] (which only [`auth`] can make), doing its role check, writing
//! its audit entry through the one [`Auditor`] before its effect, and auditing its own
//! refusals; every refusal or failure is one [`ActionError`] with a user-facing message
//! and a class ([`error::Class`]). [`Tre`] is the state the actions share (workspace,
//! schemas, auditor, job queue, sign-in limiter, the release lock). The JSON API
//! ([`crate::server`]) and the pages ([`crate::web`]) are thin adapters over it and never
//! call each other. The operator's actions (`tre admin ...`, `tre purge`) are here too
//! ([`admin`], [`purge`]), acting as the service account ([`admin::operator`]) through
//! the same auditor and error type. Danger: no rule (authorisation, self-approval, audit-first, withdrawn
//! results) may have a second implementation in an adapter; add it here.

pub mod admin;
pub mod auth;
pub mod error;
pub mod jobs;
pub mod limiter;
pub mod purge;
pub mod reads;
pub mod releases;

use crate::audit::EntryDraft;
use crate::schema::SchemaSet;
use crate::tre::auditor::Auditor;
use crate::tre::workspace::Workspace;

pub use crate::tre::anchors::AuditHead;
pub use crate::tre::id::Id;
pub use crate::tre::job::{JobError, JobRecord, JobState};
pub use crate::tre::release::{Decision, ReleaseState, Request, Review};
pub use crate::tre::stamp;
pub use crate::tre::users::{Token, UserError};
pub use crate::tre::workspace::Role;
pub use auth::{Actor, Analyst, Checker, Member};
pub use error::{ActionError, Class};

/// Where a submitted job waits for a worker (the job runner's queue, which lives above
/// this library).
pub trait Enqueue: Send + Sync + std::fmt::Debug {
    /// Queue `job` of `project`.
    fn push(&self, project: Id, job: Id) -> Result<(), JobError>;
}

/// The state every action shares.
#[derive(Debug)]
pub struct Tre {
    /// The workspace.
    pub ws: Workspace,
    /// Table schemas (for loading policies).
    pub schemas: SchemaSet,
    /// The audit log.
    pub auditor: Auditor,
    /// Failed sign-ins, per address and token prefix.
    pub limiter: limiter::Limiter,
    queue: Box<dyn Enqueue>,
    /// Held while a release request is read, changed and written: one writer, so
    /// concurrent reviews are never lost.
    releases: std::sync::Mutex<()>,
}

impl Tre {
    /// The actions' state over `ws`, writing to `auditor`, queueing jobs on `queue`.
    pub fn new(ws: Workspace, auditor: Auditor, queue: Box<dyn Enqueue>) -> Tre {
        Tre {
            ws,
            schemas: SchemaSet::builtin(),
            auditor,
            limiter: limiter::Limiter::default(),
            queue,
            releases: std::sync::Mutex::new(()),
        }
    }

    /// Audit a refusal (or failure) of `action` by `actor` (`route`: where it came from,
    /// when the adapter knows). If even that entry cannot be written, the error becomes
    /// [`ActionError::Audit`] (nothing was done).
    pub fn refusal(
        &self,
        actor: &str,
        action: &str,
        project: Option<&str>,
        route: Option<String>,
        err: ActionError,
    ) -> ActionError {
        let mut d = EntryDraft::new(actor, action);
        d = if err.is_refusal() {
            d.refused(err.to_string())
        } else {
            d.failed(err.to_string())
        };
        if let Some(p) = project {
            match Id::parse("project", p) {
                Ok(id) => d = d.project(id.as_str()),
                Err(_) => d = d.detail("project_id", "malformed"),
            }
        }
        if let Some(r) = route {
            d = d.detail("route", r);
        }
        d = d.detail("status", err.status());
        match self.auditor.record(d) {
            Ok(_) => err,
            Err(a) => {
                if !err.is_refusal() {
                    err.log();
                }
                ActionError::Audit(a)
            }
        }
    }

    /// An action's result, its refusal audited on the way (see [`Tre::refusal`]).
    pub(crate) fn audited<T>(
        &self,
        actor: &Actor,
        action: &str,
        project: Option<&str>,
        result: Result<T, ActionError>,
    ) -> Result<T, ActionError> {
        result.map_err(|e| self.refusal(actor.user().as_str(), action, project, None, e))
    }

    /// Append an action's entry; its effect may become visible only after `Ok`.
    pub(crate) fn record(&self, draft: EntryDraft) -> Result<(), ActionError> {
        self.auditor.record(draft)?;
        Ok(())
    }

    /// Write the aggregated failed sign-ins of closed windows (and, at shutdown, of all).
    pub fn audit_failures(&self, aggregates: Vec<limiter::Aggregate>) -> Result<(), ActionError> {
        for a in aggregates {
            self.auditor.record(a.draft())?;
        }
        Ok(())
    }
}
