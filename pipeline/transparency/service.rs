//! The register and the alerts as actions of the service: what `server/` and `web/`
//! call for `/register`, `/api/alerts` and the alerts page.
//!
//! Owns who may see and acknowledge alerts (auditors of a project: that project's alerts
//! and the service-wide ones), the audited refusals of those reads, and building the
//! register as of now. It is built on the action library ([`crate::tre::actions`]): an
//! [`Actor`] only comes from authentication, and every refusal is audited through the
//! one auditor before it is answered. Danger: the register is public, so it is built
//! only by [`crate::transparency::register`], which holds no patient value; an alert's
//! evidence is shown only to auditors.

use std::collections::BTreeSet;

use super::TransparencyError;
use super::alerts::{self, AlertState};
use super::register::{self, Register};
use crate::tre::actions::{ActionError, Actor, Class, Tre};
use crate::tre::workspace::{Role, roles_of};

impl From<TransparencyError> for ActionError {
    fn from(e: TransparencyError) -> Self {
        let class = match e {
            TransparencyError::NoAlert(_) => Class::NotFound,
            TransparencyError::NoNote => Class::Invalid,
            TransparencyError::NotAuditor(_) => Class::Forbidden,
            _ => Class::Unavailable,
        };
        ActionError::Service {
            class,
            message: e.to_string(),
        }
    }
}

/// The projects `actor` audits; refused when none.
fn audited_projects(tre: &Tre, actor: &Actor) -> Result<BTreeSet<String>, ActionError> {
    let mut out = BTreeSet::new();
    for p in tre.ws.projects()? {
        let policy = tre.ws.project(&p, &tre.schemas)?;
        if roles_of(&policy, actor.user().as_str()).contains(&Role::Auditor) {
            out.insert(p.to_string());
        }
    }
    if out.is_empty() {
        return Err(TransparencyError::NotAuditor(actor.user().to_string()).into());
    }
    Ok(out)
}

fn visible_unaudited(tre: &Tre, actor: &Actor) -> Result<Vec<AlertState>, ActionError> {
    let projects = audited_projects(tre, actor)?;
    let entries = alerts::entries_of(&tre.ws)?;
    Ok(alerts::states(&entries)
        .into_iter()
        .filter(|a| a.project.as_ref().is_none_or(|p| projects.contains(p)))
        .collect())
}

/// The alerts `actor` may see, in the order raised (`alert.list`; a refusal is audited).
pub fn visible(tre: &Tre, actor: &Actor) -> Result<Vec<AlertState>, ActionError> {
    let result = visible_unaudited(tre, actor);
    tre.audited(actor, "alert.list", None, result)
}

/// Acknowledge alert `id` as `actor`, if they may see it (`alert.ack`, written by
/// [`alerts::ack`] before the acknowledgement shows; a refusal is audited).
pub fn acknowledge(
    tre: &Tre,
    actor: &Actor,
    id: &str,
    note: &str,
) -> Result<AlertState, ActionError> {
    let result = (|| {
        if note.chars().count() > crate::tre::actions::releases::MAX_TEXT_CHARS {
            return Err(ActionError::BadField {
                field: "note",
                problem: "is longer than 4000 characters",
            });
        }
        let seen = visible_unaudited(tre, actor)?;
        if !seen.iter().any(|a| a.id == id) {
            return Err(TransparencyError::NoAlert(id.to_string()).into());
        }
        let entries = alerts::entries_of(&tre.ws)?;
        Ok(alerts::ack(
            &tre.auditor,
            &entries,
            id,
            actor.user().as_str(),
            note,
        )?)
    })();
    tre.audited(actor, alerts::ACK, None, result)
}

/// The public register as of now (no sign-in: it holds nothing personal).
pub fn current_register(tre: &Tre) -> Result<Register, ActionError> {
    let entries = alerts::entries_of(&tre.ws)?;
    let checkpoints = register::checkpoint_seqs(&tre.ws.checkpoints_dir());
    let now = crate::tre::stamp::text(&tre.auditor.clock().now());
    Ok(register::build(
        &tre.ws,
        &tre.schemas,
        &entries,
        &checkpoints,
        &now,
    )?)
}
