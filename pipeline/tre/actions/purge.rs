//! The purge action (`tre purge`): apply a newer opt-out list to a project's data already
//! in the TRE.
//!
//! Owns checking what the operator named (the project's installed policy, its key, the
//! list and its freshness; a refusal here is audited as a `purge` entry) and then the
//! audit-first purge itself ([`crate::tre::purge::purge_audited`], which owns the
//! rewriting, its journal and its marks). Danger: never rewrite a file here.

use std::path::PathBuf;

use chrono::NaiveDate;

use super::admin::{Admin, operator};
use super::error::ActionError;
use crate::optout::OptOutList;
use crate::schema::SchemaSet;
use crate::tre::purge::{PURGE_ACTION, PurgePlan, PurgeReport, purge_audited};

/// What the operator names.
#[derive(Debug, Clone)]
pub struct PurgeInput {
    /// The project.
    pub project: String,
    /// The newer opt-out list.
    pub opt_outs: PathBuf,
    /// The list's "as of" date (default: its modification date).
    pub opt_outs_as_of: Option<NaiveDate>,
    /// The project key the data was pseudonymised with.
    pub key_file: PathBuf,
    /// Quarantine folders of the project's extract outside the workspace.
    pub quarantine: Vec<PathBuf>,
}

/// Purge: check the input (a refusal audited as `purge`), then purge audit-first.
pub fn purge(admin: &Admin, input: &PurgeInput) -> Result<PurgeReport, ActionError> {
    let actor = operator();
    let clock = admin.auditor().clock();
    let prepared = (|| {
        let policy = admin
            .ws
            .project(&input.project, &SchemaSet::builtin())
            .map_err(|e| ActionError::Precondition {
                message: e.to_string(),
            })?;
        let key = crate::key_file::load_project_key(&input.key_file)?;
        let list = OptOutList::load(&input.opt_outs, input.opt_outs_as_of)?;
        list.check_fresh(clock.today(), policy.opt_outs.max_age_days)
            .map_err(|e| ActionError::Precondition {
                message: e.to_string(),
            })?;
        Ok::<_, ActionError>((policy, key, list))
    })();
    let (policy, key, list) =
        admin.refused_before_intent(&actor, PURGE_ACTION, &input.project, prepared)?;
    let list_file = input.opt_outs.to_string_lossy();
    let plan = PurgePlan {
        actor: &actor,
        policy: &policy,
        key: &key,
        list: &list,
        list_file: &list_file,
        extra_quarantines: &input.quarantine,
    };
    Ok(purge_audited(&admin.ws, admin.auditor(), &plan)?)
}
