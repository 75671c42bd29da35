//! The operator's local actions on a workspace (`tre admin ...`), each audited first.
//!
//! Owns the admin side of the service contract: create a workspace (with its seal key
//! and checkpoint key), add and revoke users (tokens), install projects from policies,
//! set a project's outbox, install an extract as a project's dataset, and re-seal a
//! workspace made by an earlier tre (`tre admin migrate`). Every action is checked, then
//! its records are committed under its audit entry (a bound write, see
//! [`crate::tre::records`]: the entry names each record it writes, and no record is
//! trusted before its entry is on disk); an action that fails records an entry with
//! outcome error (after its own entry, if the failure came later). The acting operator is the service account, named
//! by its numeric uid (never an environment variable). Danger: these commands run as
//! the service account and write the workspace directly; they refuse a workspace that
//! fails the permission check, exactly as the server does.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::ActionError;
use crate::audit::{EntryDraft, HashRef};
use crate::clock::Clock;
use crate::optout::{OptOutList, OptOutSet};
use crate::policy::Policy;
use crate::schema::SchemaSet;
use crate::tre::anchors;
use crate::tre::auditor::Auditor;
use crate::tre::id::Id;
use crate::tre::refresh::{self, RefreshError, RefreshPlan, RefreshReport};
use crate::tre::users::{self, Token};
use crate::tre::workspace::{Change, DatasetRecord, Workspace, WorkspaceError};

/// The acting operator: the service account's uid.
pub fn operator() -> String {
    format!("operator-uid-{}", rustix::process::geteuid().as_raw())
}

/// An opened, checked workspace with its auditor.
#[derive(Debug)]
pub struct Admin {
    /// The workspace.
    pub ws: Workspace,
    auditor: Auditor,
}

impl Admin {
    /// Create a new workspace (layout, seal key, checkpoint key) and audit it.
    pub fn init(root: &Path, clock: Arc<dyn Clock>) -> Result<Admin, ActionError> {
        let ws = Workspace::init(root)?;
        anchors::create_checkpoint_key(ws.root())?;
        let admin = Admin::from_ws(ws, clock)?;
        admin
            .auditor
            .record(EntryDraft::new(operator(), "admin.init"))?;
        Ok(admin)
    }

    /// Open and check an existing workspace.
    pub fn open(root: &Path, clock: Arc<dyn Clock>) -> Result<Admin, ActionError> {
        let ws = Workspace::open(root)?;
        ws.check_permissions()?;
        Admin::from_ws(ws, clock)
    }

    /// The auditor, for an operator action that lives in its own module (`tre purge`:
    /// [`crate::tre::purge::purge_audited`]) and audits through it.
    pub fn auditor(&self) -> &Auditor {
        &self.auditor
    }

    /// The checks an operator command makes before its intent entry, audited: on a
    /// refusal (a bad policy, key or list), the outcome entry of `action` alone, refused
    /// or failed with the reason, then the refusal itself.
    pub(crate) fn refused_before_intent<T>(
        &self,
        actor: &str,
        action: &str,
        project: &str,
        prepared: Result<T, ActionError>,
    ) -> Result<T, ActionError> {
        prepared.or_else(|e| {
            self.auditor
                .record_refusal(actor, action, project, e.is_refusal(), &e.to_string())?;
            Err(e)
        })
    }

    fn from_ws(ws: Workspace, clock: Arc<dyn Clock>) -> Result<Admin, ActionError> {
        let auditor = Auditor::new(&ws, clock, 0)?;
        Ok(Admin { ws, auditor })
    }

    /// Run `f`, which commits its records under the audit entry it is given (see
    /// [`Workspace::commit`]); if it fails, a second entry records the failure.
    fn act_commit<T, E: Into<ActionError>>(
        &self,
        draft: EntryDraft,
        f: impl FnOnce(EntryDraft) -> Result<T, E>,
    ) -> Result<T, ActionError> {
        let failed = draft.clone();
        f(draft).map_err(Into::into).inspect_err(|e| {
            let _ = self.auditor.record(failed.failed(e.to_string()));
        })
    }

    /// Add a user (or give them a new token): returns the token, to be shown once.
    pub fn add_user(&self, name: &str, days: i64) -> Result<Token, ActionError> {
        let user = Id::parse("user", name)?;
        let d = EntryDraft::new(operator(), "admin.user.add")
            .detail("user", user.as_str())
            .detail("days", days);
        let now = self.auditor.clock().now();
        self.act_commit(d, |d| {
            let (token, rec) = users::make(&user, days, now)?;
            self.ws.commit(
                &self.auditor,
                d,
                vec![Change::write(&users::record_path(&self.ws, &user), &rec)?],
            )?;
            Ok::<_, ActionError>(token)
        })
    }

    /// Revoke a user's token.
    pub fn revoke_user(&self, name: &str) -> Result<(), ActionError> {
        let user = Id::parse("user", name)?;
        let d = EntryDraft::new(operator(), "admin.user.revoke").detail("user", user.as_str());
        self.act_commit(d, |d| {
            let rec = users::revoked(&self.ws, &user)?;
            self.ws.commit(
                &self.auditor,
                d,
                vec![Change::write(&users::record_path(&self.ws, &user), &rec)?],
            )?;
            Ok::<_, ActionError>(())
        })
    }

    /// Every user record.
    pub fn users(&self) -> Result<Vec<users::UserRecord>, ActionError> {
        Ok(users::list(&self.ws)?)
    }

    /// Install a project from its policy.
    pub fn add_project(&self, policy: &Path, schemas: &SchemaSet) -> Result<Policy, ActionError> {
        let checked = Policy::load(policy, schemas).map_err(WorkspaceError::from)?;
        // The public data-uses register publishes these; no project without them.
        checked.require_public().map_err(WorkspaceError::from)?;
        let id = Id::parse("project", &checked.project.id)?;
        let d = EntryDraft::new(operator(), "admin.project.add")
            .project(id.as_str())
            .purpose(checked.project.purpose.as_str())
            .input(HashRef::new(
                policy.to_string_lossy().into_owned(),
                checked.sha256.clone(),
            ));
        self.act_commit(d, |d| {
            self.ws.add_project(policy, schemas, &self.auditor, d)
        })
    }

    /// Set a project's outbox.
    pub fn set_outbox(&self, project: &str, dir: &Path) -> Result<PathBuf, ActionError> {
        let id = Id::parse("project", project)?;
        let d = EntryDraft::new(operator(), "admin.project.outbox")
            .project(id.as_str())
            .detail("outbox", dir.to_string_lossy().as_ref());
        self.act_commit(d, |d| self.ws.set_outbox(&id, dir, &self.auditor, d))
    }

    /// Install an extract as a project's dataset (hashes verified by one streamed read).
    pub fn add_dataset(&self, project: &str, extract: &Path) -> Result<DatasetRecord, ActionError> {
        let id = Id::parse("project", project)?;
        let head = self.auditor.head()?;
        let d = EntryDraft::new(operator(), "admin.dataset.add")
            .project(id.as_str())
            .detail("extract", extract.to_string_lossy().as_ref());
        let now = self.auditor.clock().now().to_rfc3339();
        self.act_commit(d, |d| {
            self.ws
                .add_dataset(&id, extract, now, head, &self.auditor, d)
        })
    }
}

/// What the operator names for `tre admin refresh`.
#[derive(Debug, Clone)]
pub struct RefreshInput {
    /// The project.
    pub project: String,
    /// The newest National Data Opt-out list.
    pub list: PathBuf,
    /// Whether it is the service's allow-list (`--ndoo-allow-list`) rather than a
    /// deny-list (`--opt-outs`).
    pub allow_list: bool,
    /// The list's "as of" date (default: its modification date).
    pub opt_outs_as_of: Option<chrono::NaiveDate>,
    /// The project key file.
    pub key_file: PathBuf,
    /// The staging folder the extract is written to (outside the workspace).
    pub staging: PathBuf,
}

/// The extraction step of a refresh, supplied by the command (which owns the extract
/// driver): extract with this policy and list into the folder given; return the input's
/// Type 1 dissenters.
pub type RefreshExtract<'a> =
    dyn Fn(&Policy, &OptOutList, &Path) -> Result<OptOutSet, RefreshError> + 'a;

impl Admin {
    /// `tre admin refresh`: check the project, key and list (a refusal here is audited
    /// as a `refresh` entry and changes nothing), then run the audit-first refresh
    /// ([`crate::tre::refresh::refresh_audited`]).
    pub fn refresh(
        &self,
        input: &RefreshInput,
        extract: &RefreshExtract<'_>,
    ) -> Result<RefreshReport, ActionError> {
        let actor = operator();
        let clock = self.auditor.clock();
        let prepared = (|| {
            let project = Id::parse("project", &input.project)?;
            let policy = self
                .ws
                .project(&project, &SchemaSet::builtin())
                .map_err(|e| ActionError::Precondition {
                    message: e.to_string(),
                })?;
            let key = crate::key_file::load_project_key(&input.key_file)?;
            let list = if input.allow_list {
                OptOutList::load_allow(&input.list, input.opt_outs_as_of)?
            } else {
                OptOutList::load(&input.list, input.opt_outs_as_of)?
            };
            list.check_not_empty(false)
                .and_then(|()| list.check_fresh(clock.today(), policy.opt_outs.max_age_days))
                .map_err(|e| ActionError::Precondition {
                    message: e.to_string(),
                })?;
            let staging = std::path::absolute(&input.staging).unwrap_or(input.staging.clone());
            if staging.starts_with(self.ws.root()) {
                return Err(ActionError::Precondition {
                    message: format!(
                        "the staging folder {} is inside the workspace; give a folder outside it (--staging DIR)",
                        staging.display()
                    ),
                });
            }
            Ok::<_, ActionError>((project, policy, key, list))
        })();
        let (project, policy, key, list) =
            self.refused_before_intent(&actor, refresh::REFRESH_ACTION, &input.project, prepared)?;
        let list_file = input.list.to_string_lossy();
        let plan = RefreshPlan {
            actor: &actor,
            project: &project,
            key: &key,
            list: &list,
            list_file: &list_file,
            staging: &input.staging,
        };
        Ok(refresh::refresh_audited(
            &self.ws,
            &self.auditor,
            &plan,
            &|out| extract(&policy, &list, out),
        )?)
    }

    /// `tre admin dataset drop`: stop holding an earlier dataset version (never the
    /// current one) and remove its files.
    pub fn drop_dataset_version(
        &self,
        project: &str,
        version: u32,
    ) -> Result<DatasetRecord, ActionError> {
        let id = Id::parse("project", project)?;
        let d = EntryDraft::new(operator(), "admin.dataset.drop")
            .project(id.as_str())
            .detail("version", version);
        self.act_commit(d, |d| self.ws.drop_version(&id, version, &self.auditor, d))
    }

    /// The project's dataset record (current version and earlier versions held).
    pub fn dataset(&self, project: &str) -> Result<DatasetRecord, ActionError> {
        let id = Id::parse("project", project)?;
        Ok(self.ws.dataset(&id)?)
    }
}

impl Admin {
    /// `tre admin migrate`: re-seal every format-1 record whose old seal verifies (and
    /// every plain ledger entry), and write `installed.json` for projects installed
    /// before it existed (from the files there now: the operator should reinstall a
    /// project whose files may have been edited), all under one `admin.migrate` entry.
    /// Returns how many records were written.
    pub fn migrate(&self, schemas: &SchemaSet) -> Result<usize, ActionError> {
        use crate::tre::workspace::{INSTALLED_FILE, Installed, InstalledFile, list_dir};
        let ws = &self.ws;
        let mut candidates = Vec::new();
        for n in list_dir(&ws.users_dir())? {
            candidates.push(ws.users_dir().join(n));
        }
        let mut changes = Vec::new();
        for name in list_dir(&ws.root().join("projects"))? {
            let Ok(p) = Id::parse("project", &name) else {
                continue;
            };
            let dir = ws.project_dir(&p);
            candidates.push(dir.join("outbox.json"));
            candidates.push(dir.join("data/dataset.json"));
            for sub in ["requests", "ledger"] {
                for n in list_dir(&dir.join(sub)).unwrap_or_default() {
                    candidates.push(dir.join(sub).join(n));
                }
            }
            for n in list_dir(&dir.join("results")).unwrap_or_default() {
                candidates.push(dir.join("results").join(n).join("job.json"));
            }
            let installed = dir.join(INSTALLED_FILE);
            if !installed.exists() && dir.join("policy.toml").is_file() {
                let policy = Policy::load(&dir.join("policy.toml"), schemas)
                    .map_err(WorkspaceError::from)?;
                let mut names: Vec<PathBuf> = policy
                    .tables
                    .iter()
                    .filter_map(|t| t.codelist.as_ref().map(|c| c.path.clone()))
                    .collect();
                names.push(policy.opt_outs.type1_codelist.path.clone());
                names.push(dir.join("policy.toml"));
                names.push(dir.join(crate::tre::workspace::PROJECT_RULES_FILE));
                let mut files = Vec::new();
                for f in names {
                    let Ok(rel) = f.strip_prefix(&dir) else {
                        continue;
                    };
                    if let Ok((sha256, _)) = crate::digest::sha256_file(&f) {
                        files.push(InstalledFile {
                            path: rel.to_string_lossy().into_owned(),
                            sha256,
                        });
                    }
                }
                files.sort_by(|a, b| a.path.cmp(&b.path));
                files.dedup_by(|a, b| a.path == b.path);
                changes.push(Change::write(
                    &installed,
                    &Installed {
                        project: p.clone(),
                        files,
                    },
                )?);
            }
        }
        let key = ws.seal_key();
        for path in candidates {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            if !name.is_some_and(|n| n.ends_with(".json") && !n.starts_with('.')) {
                continue;
            }
            let Ok(text) = std::fs::read(&path) else {
                continue;
            };
            if text.starts_with(crate::tre::records::SEAL_V2.as_bytes()) {
                continue;
            }
            let body = match crate::tre::records::old_body(key, &text) {
                Some(b) => b.to_vec(),
                // Ledger entries were plain JSON.
                None if path.parent().and_then(|p| p.file_name()) == Some("ledger".as_ref())
                    && serde_json::from_slice::<crate::lineage::ledger::LedgerEntry>(&text)
                        .is_ok() =>
                {
                    text.clone()
                }
                None => {
                    return Err(WorkspaceError::Forged { path }.into());
                }
            };
            changes.push(Change::Write { path, body });
        }
        let n = changes.len();
        if n > 0 {
            self.ws.commit(
                &self.auditor,
                EntryDraft::new(operator(), "admin.migrate").detail("count", n),
                changes,
            )?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditEntry, Outcome};
    use crate::clock::FixedClock;

    fn clock() -> Arc<dyn Clock> {
        let t = chrono::DateTime::parse_from_rfc3339("2026-01-01T09:00:00Z")
            .expect("date")
            .with_timezone(&chrono::Utc);
        Arc::new(FixedClock(t))
    }

    fn entries(admin: &Admin) -> Vec<AuditEntry> {
        crate::audit::read_entries(&crate::audit::workspace_log_path(admin.ws.root()))
            .expect("the log reads")
            .into_iter()
            .map(|(_, e)| e)
            .collect()
    }

    fn actions(admin: &Admin) -> Vec<(String, Outcome)> {
        entries(admin)
            .into_iter()
            .map(|e| (e.action, e.outcome))
            .collect()
    }

    #[test]
    fn init_and_each_action_are_audited_by_the_operators_uid() {
        let t = tempfile::tempdir().expect("tempdir");
        let admin = Admin::init(&t.path().join("ws"), clock()).expect("init");
        let token = admin.add_user("alice", 30).expect("add");
        assert!(token.expose().starts_with("tre_"));
        admin.revoke_user("alice").expect("revoke");
        assert_eq!(
            actions(&admin),
            [
                ("admin.init".to_string(), Outcome::Ok),
                ("admin.user.add".to_string(), Outcome::Ok),
                ("admin.user.revoke".to_string(), Outcome::Ok),
            ]
        );
        let log = entries(&admin);
        assert!(log.iter().all(|e| e.actor == operator()));
        assert!(operator().starts_with("operator-uid-"));
        assert!(
            !log.iter()
                .any(|e| e.detail.to_string().contains(token.expose())),
            "a token never reaches the log"
        );
    }

    #[test]
    fn a_failed_action_is_recorded_as_an_error_and_a_bad_id_not_at_all() {
        let t = tempfile::tempdir().expect("tempdir");
        let admin = Admin::init(&t.path().join("ws"), clock()).expect("init");
        let err = admin.revoke_user("nobody").expect_err("no such user");
        assert!(
            matches!(err, ActionError::User(users::UserError::NoSuchUser { .. })),
            "{err}"
        );
        let err = admin.add_user("../etc", 30).expect_err("not an id");
        assert!(matches!(err, ActionError::BadId(_)), "{err}");
        assert_eq!(
            crate::error::Classify::kind(&err),
            crate::error::ErrorKind::Failed,
            "a malformed id is bad usage"
        );
        assert_eq!(
            actions(&admin),
            [
                ("admin.init".to_string(), Outcome::Ok),
                ("admin.user.revoke".to_string(), Outcome::Error),
            ]
        );
    }

    #[test]
    fn open_refuses_a_folder_that_is_not_a_workspace() {
        let t = tempfile::tempdir().expect("tempdir");
        assert!(Admin::open(t.path(), clock()).is_err());
        Admin::init(&t.path().join("ws"), clock()).expect("init");
        Admin::open(&t.path().join("ws"), clock()).expect("a workspace opens");
    }

    #[test]
    fn migrate_reseals_records_of_an_earlier_tre() {
        let t = tempfile::tempdir().expect("tempdir");
        let admin = Admin::init(&t.path().join("ws"), clock()).expect("init");
        // A user record sealed the old way (a bare HMAC of the body).
        let body = br#"{"user":"old","token_sha256":"00","created_at":"2026-01-01T00:00:00Z","expires_at":"2030-01-01T00:00:00Z","revoked":false}"#;
        let mut m = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(admin.ws.seal_key())
            .expect("key");
        hmac::Mac::update(&mut m, body);
        let tag = crate::digest::hex(&hmac::Mac::finalize(m).into_bytes());
        let p = admin.ws.users_dir().join("old.json");
        let mut text = format!("{tag}\n").into_bytes();
        text.extend_from_slice(body);
        std::fs::write(&p, &text).expect("old record");
        let e = admin.users().expect_err("old format");
        assert!(e.to_string().contains("tre admin migrate"), "{e}");
        assert_eq!(admin.migrate(&SchemaSet::builtin()).expect("migrate"), 1);
        assert_eq!(admin.users().expect("users")[0].user.as_str(), "old");
        assert!(actions(&admin).contains(&("admin.migrate".to_string(), Outcome::Ok)));
        // A forged old record is not migrated: the operator must look.
        std::fs::write(&p, b"00\n{}").expect("forged");
        assert!(admin.migrate(&SchemaSet::builtin()).is_err());
    }
}
