//! A TRE workspace on disk, owned by one service account.
//!
//! Layout: `workspace.toml`; `seal.key` (the key that seals the server's own records);
//! `audit/` (the audit log); `checkpoints/`; `users/<user>.json`; and per project
//! `projects/<id>/` with its installed policy (`policy.toml`, the codelists it names and
//! its own `output-rules.toml`, all listed with their sha256 in the sealed
//! `installed.json`), `outbox.json` (where releases go), `data/` (dataset version 1 and
//! the sealed record `dataset.json` of every version held), `versions/<N>/` (later dataset
//! versions, installed by `tre admin refresh`, whose journal is `refresh.json`),
//! `results/<job>/` (jobs), `requests/<release>.json`
//! (releases) and `ledger/` (what left).
//!
//! Owns the layout, the permission rule (the workspace and everything in it belongs to
//! the service account, nothing is writable by group or others, no symlinks; files are
//! created 0600 and folders 0700) and the server's records: every JSON record is sealed
//! under `seal.key`, bound to its workspace-relative path and to the audit entry that
//! wrote it (see [`crate::tre::records`] for the design), so a record edited, forged,
//! copied from another folder or rolled back to an earlier version is refused when it
//! is read. Installed policy, codelists and rules files are checked against
//! `installed.json` on every load. Every open, create and listing of a workspace path
//! walks the path without following a symlink (the root is registered with
//! [`crate::durable::register_root`] when the workspace is opened), so a symlink
//! planted while the server runs is refused, not followed. Ids ([`Id`]) are the only
//! names that reach a path. Danger: this module decides which bytes count as the
//! workspace's own; it never reads row data, and it never follows a symlink.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex};

use serde::{Serialize, de::DeserializeOwned};

use crate::audit::{AuditEntry, AuditError, EntryDraft};
use crate::durable::{DurableError, Mode, NoFollow, write_atomic};
use crate::policy::{Policy, PolicyError};
use crate::schema::SchemaSet;
use crate::tre::id::{Id, IdError};
use crate::tre::records::{self, Latest, RecordIndex, SealProblem, Version};

/// Marker file identifying a workspace.
pub const WORKSPACE_FILE: &str = "workspace.toml";
const SEAL_KEY: &str = "seal.key";

/// Workspace errors.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    /// File system trouble.
    #[error("workspace file {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A durable write failed.
    #[error(transparent)]
    Durable(#[from] DurableError),
    /// Not a workspace.
    #[error(
        "{0} is not a TRE workspace (no workspace.toml); create one with `tre admin init --workspace DIR`"
    )]
    NotWorkspace(PathBuf),
    /// `init` on a non-empty folder.
    #[error("{0} exists and is not empty; `tre admin init` needs a new or empty folder")]
    NotEmpty(PathBuf),
    /// Something in the workspace breaks the permission rule.
    #[error(
        "{path} {problem}; the workspace must belong to the service account alone (files 0600, folders 0700, no symlinks)"
    )]
    Unsafe {
        /// The offending path.
        path: PathBuf,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A record does not carry a valid seal: edited or forged on disk, or copied from
    /// another place (the seal binds the record's path).
    #[error(
        "{path} has been changed outside the server or copied from another folder (its seal does not match this file at this path); refusing to use it; restore it from a backup or redo the action through the server or `tre admin`"
    )]
    Forged {
        /// The record.
        path: PathBuf,
    },
    /// A record whose seal verifies but which is not the version the audit log last
    /// recorded for its path: an earlier copy put back (rollback), or a removed record.
    #[error(
        "{path} is not the version the audit log last recorded ({problem}); an earlier copy was put back or it was replaced outside the server, so it is refused; restore the version written at audit entry {latest} from a backup"
    )]
    Stale {
        /// The record.
        path: PathBuf,
        /// What disagrees.
        problem: String,
        /// The audit entry that last wrote it.
        latest: u64,
    },
    /// A record the audit log says exists is missing.
    #[error(
        "{path} is missing, but audit entry {latest} wrote it; it was deleted outside the server; restore it from a backup"
    )]
    Missing {
        /// The record.
        path: PathBuf,
        /// The audit entry that last wrote it.
        latest: u64,
    },
    /// A record sealed by an earlier version of tre.
    #[error(
        "{path} is sealed in the old format (not bound to its path and version); stop the server and run `tre admin migrate --workspace DIR` once to re-seal the workspace's records"
    )]
    OldSeal {
        /// The record.
        path: PathBuf,
    },
    /// An installed file does not match the hash recorded when it was installed.
    #[error(
        "{path} has been changed since it was installed (its sha256 is not the one in installed.json); the operator reinstalls it with `tre admin project add`"
    )]
    InstalledChanged {
        /// The file.
        path: PathBuf,
    },
    /// The audit entry that authorises a record write could not be written.
    #[error("the audit log could not be written, so the record was not changed: {0}")]
    Audit(#[from] AuditError),
    /// A record's JSON is not what the server writes.
    #[error("{path}: not a valid record ({source})")]
    Corrupt {
        /// The record.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// No such project.
    #[error(
        "no project {project:?} in this workspace; the operator adds it with `tre admin project add`"
    )]
    UnknownProject {
        /// The project asked for.
        project: Id,
    },
    /// The project has no outbox configured.
    #[error(
        "project {project} has no outbox; the operator sets one with `tre admin project outbox {project} DIR`"
    )]
    NoOutbox {
        /// The project.
        project: Id,
    },
    /// The project has no installed dataset.
    #[error(
        "project {project} has no dataset; the operator installs one with `tre admin dataset add {project} EXTRACT_DIR`"
    )]
    NoDataset {
        /// The project.
        project: Id,
    },
    /// The policy's own output rules file is missing or invalid.
    #[error("the output rules file {} named by the policy cannot be installed: {source}", path.display())]
    Rules {
        /// The rules file, as the policy names it (resolved beside the policy).
        path: PathBuf,
        /// Why.
        #[source]
        source: crate::disclosure::DisclosureError,
    },
    /// A dataset already installed.
    #[error("project {project} already has a dataset installed")]
    DatasetExists {
        /// The project.
        project: Id,
    },
    /// A dataset version that is not held.
    #[error(
        "project {project} holds no earlier dataset version {version} (the current version cannot be dropped; `tre admin dataset list {project}` shows the versions held)"
    )]
    NoVersion {
        /// The project.
        project: Id,
        /// The version asked for.
        version: u32,
    },
    /// An extract to install does not verify.
    #[error("extract {dir}: {problem}")]
    BadExtract {
        /// The extract folder.
        dir: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A bad id.
    #[error(transparent)]
    Id(#[from] IdError),
    /// A policy problem.
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

impl crate::error::Classify for WorkspaceError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            WorkspaceError::Unsafe { .. }
            | WorkspaceError::Forged { .. }
            | WorkspaceError::Stale { .. }
            | WorkspaceError::Missing { .. }
            | WorkspaceError::OldSeal { .. }
            | WorkspaceError::InstalledChanged { .. }
            | WorkspaceError::UnknownProject { .. }
            | WorkspaceError::NoOutbox { .. }
            | WorkspaceError::NoDataset { .. }
            | WorkspaceError::DatasetExists { .. }
            | WorkspaceError::NoVersion { .. }
            | WorkspaceError::BadExtract { .. }
            | WorkspaceError::Rules { .. } => ErrorKind::Refused,
            WorkspaceError::Policy(e) => e.kind(),
            WorkspaceError::Audit(e) => e.kind(),
            _ => ErrorKind::Failed,
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WorkspaceError + '_ {
    move |source| WorkspaceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Create a folder (and missing parents) with mode 0700; refused if the folder, or one
/// between the workspace root and it, is a symlink.
pub fn create_private_dir(path: &Path) -> Result<(), WorkspaceError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && parent.exists()
    {
        check_dir(parent)?;
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io(path))?;
    check_dir(path)
}

/// Open a regular file for reading without following a symlink at its name or, under
/// an opened workspace, at any folder between the workspace root and it.
pub fn open_nofollow(path: &Path) -> Result<std::fs::File, WorkspaceError> {
    crate::durable::open_nofollow(path).map_err(nofollow)
}

/// The entry names of a workspace folder, listed without following a symlink.
pub fn list_dir(dir: &Path) -> Result<Vec<String>, WorkspaceError> {
    Ok(crate::durable::read_dir_nofollow(dir)
        .map_err(nofollow)?
        .into_iter()
        .map(|n| n.to_string_lossy().into_owned())
        .collect())
}

/// Refuse unless `dir` is a real folder reached without a symlink.
pub fn check_dir(dir: &Path) -> Result<(), WorkspaceError> {
    crate::durable::open_dir_nofollow(dir)
        .map(|_| ())
        .map_err(nofollow)
}

fn nofollow(e: NoFollow) -> WorkspaceError {
    match e {
        NoFollow::Symlink(path) => WorkspaceError::Unsafe {
            path,
            problem: "is a symlink",
        },
        NoFollow::NotRegular(path) => WorkspaceError::Unsafe {
            path,
            problem: "is not a regular file or folder",
        },
        NoFollow::Io(path, source) => WorkspaceError::Io { path, source },
    }
}

fn not_found(e: &WorkspaceError) -> bool {
    matches!(e, WorkspaceError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

/// One change of a [`Workspace::commit`].
#[derive(Debug)]
pub enum Change {
    /// Write this body (JSON) as the record at this path.
    Write {
        /// The record.
        path: PathBuf,
        /// Its JSON body.
        body: Vec<u8>,
    },
    /// Remove the record at this path.
    Remove {
        /// The record.
        path: PathBuf,
    },
}

impl Change {
    /// Write `value` as the record at `path`.
    pub fn write<T: Serialize>(path: &Path, value: &T) -> Result<Change, WorkspaceError> {
        let body = serde_json::to_vec_pretty(value).map_err(|source| WorkspaceError::Corrupt {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Change::Write {
            path: path.to_path_buf(),
            body,
        })
    }

    fn path(&self) -> &Path {
        match self {
            Change::Write { path, .. } | Change::Remove { path } => path,
        }
    }
}

/// An opened workspace.
#[derive(Clone)]
pub struct Workspace {
    root: PathBuf,
    seal: zeroize::Zeroizing<Vec<u8>>,
    index: Arc<Mutex<RecordIndex>>,
}

impl std::fmt::Debug for Workspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Workspace({})", self.root.display())
    }
}

impl Workspace {
    /// Create a new workspace in an empty or missing folder: layout, mode 0700 folders,
    /// a fresh seal key.
    pub fn init(root: &Path) -> Result<Self, WorkspaceError> {
        if root.exists() && std::fs::read_dir(root).map_err(io(root))?.next().is_some() {
            return Err(WorkspaceError::NotEmpty(root.to_path_buf()));
        }
        for d in ["", "audit", "users", "projects"] {
            create_private_dir(&root.join(d))?;
        }
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700)).map_err(io(root))?;
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(key.as_mut()).map_err(|e| WorkspaceError::Io {
            path: root.join(SEAL_KEY),
            source: std::io::Error::other(e.to_string()),
        })?;
        crate::durable::write_new(&root.join(SEAL_KEY), key.as_ref(), Mode::Private)?;
        write_atomic(
            &root.join(WORKSPACE_FILE),
            b"# tre workspace, owned by the service account\nformat = 2\n",
            Mode::Private,
        )?;
        Workspace::open(root)
    }

    /// Open an existing workspace (no permission walk; see [`Workspace::check_permissions`]).
    pub fn open(root: &Path) -> Result<Self, WorkspaceError> {
        if !root.join(WORKSPACE_FILE).is_file() {
            return Err(WorkspaceError::NotWorkspace(root.to_path_buf()));
        }
        crate::durable::register_root(root);
        let mut seal = zeroize::Zeroizing::new(Vec::new());
        open_nofollow(&root.join(SEAL_KEY))?
            .read_to_end(&mut seal)
            .map_err(io(root))?;
        crate::durable::register_root(root);
        Ok(Workspace {
            root: root.to_path_buf(),
            seal,
            index: records::index_for(root),
        })
    }

    /// Refuse unless the workspace and everything in it is owned by this process's user,
    /// writable by nobody else, and free of symlinks and special files.
    pub fn check_permissions(&self) -> Result<(), WorkspaceError> {
        let me = rustix::process::geteuid().as_raw();
        let mut stack = vec![self.root.clone()];
        while let Some(p) = stack.pop() {
            let m = std::fs::symlink_metadata(&p).map_err(io(&p))?;
            let unsafe_ = |problem| WorkspaceError::Unsafe {
                path: p.clone(),
                problem,
            };
            if m.file_type().is_symlink() {
                return Err(unsafe_("is a symlink"));
            }
            if m.uid() != me {
                return Err(unsafe_("is owned by another user"));
            }
            if m.mode() & 0o022 != 0 {
                return Err(unsafe_("is writable by group or others"));
            }
            if m.is_dir() {
                for e in std::fs::read_dir(&p).map_err(io(&p))? {
                    stack.push(e.map_err(io(&p))?.path());
                }
            } else if !m.is_file() {
                return Err(unsafe_("is not a regular file or folder"));
            }
        }
        Ok(())
    }

    /// The seal key (for `tre admin migrate`, which checks format-1 seals).
    pub fn seal_key(&self) -> &[u8] {
        &self.seal
    }

    /// The workspace folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The folder for signed audit checkpoints (`audit/checkpoints`, where
    /// `tre audit verify --workspace` looks for them).
    pub fn checkpoints_dir(&self) -> PathBuf {
        crate::audit::checkpoint::workspace_checkpoint_dir(&self.root)
    }

    /// The folder of user records.
    pub fn users_dir(&self) -> PathBuf {
        self.root.join("users")
    }

    /// A project's folder. Pass an [`Id`]; a plain string is accepted only for local
    /// operator commands that have already checked it.
    pub fn project_dir(&self, id: &(impl AsRef<str> + ?Sized)) -> PathBuf {
        self.root.join("projects").join(id.as_ref())
    }

    // -- sealed records ------------------------------------------------------------------

    /// `path` relative to the workspace root, as seals and audit entries name it.
    pub fn rel(&self, path: &Path) -> Result<String, WorkspaceError> {
        path.strip_prefix(&self.root)
            .ok()
            .filter(|r| {
                r.components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)))
            })
            .map(|r| r.to_string_lossy().into_owned())
            .ok_or_else(|| WorkspaceError::Unsafe {
                path: path.to_path_buf(),
                problem: "is not a record inside the workspace",
            })
    }

    fn audit_log_path(&self) -> PathBuf {
        crate::audit::workspace_log_path(&self.root)
    }

    /// Every entry of the audit log, numbered by line from 1, read in the same pass that
    /// first fills the record index (so a start-up reads the log once for both); `None`
    /// when the index was already filled (then read the log itself).
    pub fn log_entries_once(
        &self,
    ) -> Result<Option<Vec<(u64, crate::audit::AuditEntry)>>, WorkspaceError> {
        let mut idx = self.index.lock().unwrap_or_else(|p| p.into_inner());
        if !idx.is_empty() {
            return Ok(None);
        }
        let log = self.audit_log_path();
        let mut entries = Vec::new();
        let mut line_no = 0u64;
        idx.refresh_with(&log, |line| {
            line_no += 1;
            if let Ok(e) = serde_json::from_slice(line) {
                entries.push((line_no, e));
            }
        })
        .map_err(io(&log))?;
        Ok(Some(entries))
    }

    fn lock_index(&self) -> Result<std::sync::MutexGuard<'_, RecordIndex>, WorkspaceError> {
        let mut idx = self.index.lock().unwrap_or_else(|p| p.into_inner());
        let log = self.audit_log_path();
        idx.refresh(&log).map_err(io(&log))?;
        Ok(idx)
    }

    fn read_bytes(path: &Path) -> Result<Option<Vec<u8>>, WorkspaceError> {
        let mut file = match open_nofollow(path) {
            Ok(f) => f,
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut text = Vec::new();
        file.read_to_end(&mut text).map_err(io(path))?;
        Ok(Some(text))
    }

    fn unseal<'a>(
        &self,
        path: &Path,
        rel: &str,
        text: &'a [u8],
    ) -> Result<(Version, &'a [u8]), WorkspaceError> {
        records::unseal(&self.seal, rel, text).map_err(|p| match p {
            SealProblem::Forged => WorkspaceError::Forged {
                path: path.to_path_buf(),
            },
            SealProblem::OldFormat => WorkspaceError::OldSeal {
                path: path.to_path_buf(),
            },
        })
    }

    /// Write a record, sealed, atomically, mode 0600. Returns its sha256. A record the
    /// audit log already binds (see [`crate::tre::records`]) is rewritten through
    /// [`Workspace::commit_self`], with its own audit entry (`record.write`); any other
    /// is written unbound (job records).
    pub fn write_record<T: Serialize>(
        &self,
        path: &Path,
        value: &T,
    ) -> Result<String, WorkspaceError> {
        let change = Change::write(path, value)?;
        let rel = self.rel(path)?;
        let idx = self.lock_index()?;
        if idx.get(&rel).is_some() {
            drop(idx);
            self.commit_self("service", "record.write", None, vec![change])?;
            let text = Self::read_bytes(path)?.unwrap_or_default();
            return Ok(crate::digest::sha256_hex(&text));
        }
        let Change::Write { body, .. } = change else {
            return Ok(String::new());
        };
        let text = records::seal(&self.seal, &rel, Version::Unbound, &body);
        Ok(write_atomic(path, &text, Mode::Private)?.sha256)
    }

    /// Read a sealed record; `Ok(None)` when it does not exist (and the audit log does
    /// not say it should); refused when its seal does not match its path (edited,
    /// forged, copied), when it is not the version the audit log last recorded (rolled
    /// back), or when it is a symlink or under one.
    pub fn read_record<T: DeserializeOwned>(
        &self,
        path: &Path,
    ) -> Result<Option<T>, WorkspaceError> {
        let Some(body) = self.read_record_bytes(path)? else {
            return Ok(None);
        };
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|source| WorkspaceError::Corrupt {
                path: path.to_path_buf(),
                source,
            })
    }

    /// The checked JSON body of a record (see [`Workspace::read_record`]).
    pub fn read_record_bytes(&self, path: &Path) -> Result<Option<Vec<u8>>, WorkspaceError> {
        let rel = self.rel(path)?;
        let mut idx = self.lock_index()?;
        let text = Self::read_bytes(path)?;
        let opened = match &text {
            Some(t) => Some(self.unseal(path, &rel, t)?),
            None => None,
        };
        let latest = idx.get(&rel).cloned();
        match (opened, &latest) {
            (None, None) | (None, Some(Latest { sha256: None, .. })) => Ok(None),
            (Some((Version::Unbound, body)), None) => Ok(Some(body.to_vec())),
            (Some((Version::At(s), body)), Some(l))
                if l.seq == s
                    && l.sha256.as_deref() == Some(crate::digest::sha256_hex(body).as_str()) =>
            {
                Ok(Some(body.to_vec()))
            }
            (opened, _) => {
                // The last audited write may not have finished (a crash between its
                // audit entry and its rename): finish it from the staged copy.
                if let Some(l) = &latest
                    && let Some(body) = self.roll_forward(path, &rel, l)?
                {
                    idx.set(&rel, l.clone());
                    return Ok(body);
                }
                let problem = match (&opened, &latest) {
                    (None, Some(l)) => {
                        return Err(WorkspaceError::Missing {
                            path: path.to_path_buf(),
                            latest: l.seq,
                        });
                    }
                    (Some((Version::At(s), _)), None) => {
                        format!("its seal names audit entry {s}, which does not record writing it")
                    }
                    (Some((Version::At(s), _)), Some(l)) if *s == l.seq => {
                        "its contents are not the ones audited".to_string()
                    }
                    (Some((Version::At(s), _)), Some(_)) => {
                        format!("it was sealed at audit entry {s}")
                    }
                    (Some((Version::Unbound, _)), Some(_)) => {
                        "it carries no audit entry".to_string()
                    }
                    (Some((Version::Pending, _)), _) => "it is a staged copy".to_string(),
                    _ => "it does not match".to_string(),
                };
                let latest = latest.map(|l| l.seq).unwrap_or(0);
                Err(WorkspaceError::Stale {
                    path: path.to_path_buf(),
                    problem,
                    latest,
                })
            }
        }
    }

    /// Finish the audited write `l` of `path` from its staged copy, or its audited
    /// removal; `Ok(None)` when there is nothing to finish.
    #[allow(clippy::option_option)]
    fn roll_forward(
        &self,
        path: &Path,
        rel: &str,
        l: &Latest,
    ) -> Result<Option<Option<Vec<u8>>>, WorkspaceError> {
        let Some(sha) = &l.sha256 else {
            crate::durable::remove_durably(path)?;
            return Ok(Some(None));
        };
        let pending = records::pending_path(path);
        let Some(text) = Self::read_bytes(&pending)? else {
            return Ok(None);
        };
        match records::unseal(&self.seal, rel, &text) {
            Ok((Version::Pending, body)) if crate::digest::sha256_hex(body) == *sha => {
                let sealed = records::seal(&self.seal, rel, Version::At(l.seq), body);
                write_atomic(path, &sealed, Mode::Private)?;
                crate::durable::remove_durably(&pending)?;
                Ok(Some(Some(body.to_vec())))
            }
            _ => Ok(None),
        }
    }

    /// Make `changes` under the audit entry `draft`, as one bound write (see
    /// [`crate::tre::records`]): each new body is staged beside its record, then the
    /// entry is appended naming every path and body hash, then each record is written
    /// sealed with the entry's seq (or removed) and its staged copy removed. If the
    /// entry cannot be written nothing changes; a crash after it is finished by the next
    /// read. Returns the entry.
    pub fn commit(
        &self,
        auditor: &dyn Journal,
        draft: EntryDraft,
        changes: Vec<Change>,
    ) -> Result<AuditEntry, WorkspaceError> {
        self.commit_with(|d| Ok(auditor.record(d)?), draft, changes)
    }

    /// [`Workspace::commit`] with an entry `action` by `actor` appended straight to the
    /// workspace's audit log (for writes outside a server or admin action).
    pub fn commit_self(
        &self,
        actor: &str,
        action: &str,
        project: Option<&str>,
        changes: Vec<Change>,
    ) -> Result<AuditEntry, WorkspaceError> {
        let log = crate::audit::AuditLog::in_workspace(&self.root)?;
        let mut d = EntryDraft::new(actor, action);
        if let Some(p) = project {
            d = d.project(p);
        }
        self.commit_with(
            |d| Ok(log.append(d, &crate::clock::SystemClock)?),
            d,
            changes,
        )
    }

    fn commit_with(
        &self,
        append: impl Fn(EntryDraft) -> Result<AuditEntry, WorkspaceError>,
        draft: EntryDraft,
        changes: Vec<Change>,
    ) -> Result<AuditEntry, WorkspaceError> {
        let mut idx = self.lock_index()?;
        let mut named = Vec::new();
        let mut staged = Vec::new();
        for c in &changes {
            let rel = self.rel(c.path())?;
            match c {
                Change::Write { path, body } => {
                    let pending = records::pending_path(path);
                    let text = records::seal(&self.seal, &rel, Version::Pending, body);
                    let r = write_atomic(&pending, &text, Mode::Private);
                    if let Err(e) = r {
                        for p in &staged {
                            let _ = std::fs::remove_file(p);
                        }
                        return Err(e.into());
                    }
                    staged.push(pending);
                    named.push(serde_json::json!({
                        "path": rel, "sha256": crate::digest::sha256_hex(body)
                    }));
                }
                Change::Remove { .. } => {
                    named.push(serde_json::json!({ "path": rel, "sha256": null }));
                }
            }
        }
        let records_detail = serde_json::Value::Array(named.clone());
        let entry = match append(draft.detail(records::RECORDS_KEY, records_detail.clone())) {
            Ok(e) if e.detail.get(records::RECORDS_KEY).is_some() => Ok(e),
            // The entry was too large and its detail summarised: name the records in an
            // entry of their own.
            Ok(_) => append(
                EntryDraft::new("service", "record.write")
                    .detail(records::RECORDS_KEY, records_detail),
            ),
            Err(e) => Err(e),
        }
        .inspect_err(|_| {
            for p in &staged {
                let _ = std::fs::remove_file(p);
            }
        })?;
        for (c, n) in changes.iter().zip(&named) {
            let rel = self.rel(c.path())?;
            let sha256 = n["sha256"].as_str().map(String::from);
            match c {
                Change::Write { path, body } => {
                    let text = records::seal(&self.seal, &rel, Version::At(entry.seq), body);
                    write_atomic(path, &text, Mode::Private)?;
                    crate::durable::remove_durably(&records::pending_path(path))?;
                }
                Change::Remove { path } => crate::durable::remove_durably(path)?,
            }
            idx.set(
                &rel,
                Latest {
                    seq: entry.seq,
                    sha256,
                },
            );
        }
        Ok(entry)
    }

    /// Every record path the audit log says exists (for recovery and checks).
    pub fn audited_records(&self) -> Result<Vec<String>, WorkspaceError> {
        Ok(self.lock_index()?.live_paths())
    }

    // -- projects ------------------------------------------------------------------------

    /// Install (or replace) a project from its policy: the policy, the codelists it names
    /// and its own rules file are copied into `projects/<id>/`, then `installed.json`
    /// (their sha256s) is committed under the audit entry `draft`, last: until it is,
    /// the copied files are trusted by nothing.
    pub fn add_project(
        &self,
        policy_path: &Path,
        schemas: &SchemaSet,
        auditor: &dyn Journal,
        draft: EntryDraft,
    ) -> Result<Policy, WorkspaceError> {
        let policy = Policy::load(policy_path, schemas)?;
        let id = Id::parse("project", &policy.project.id)?;
        let dir = self.project_dir(&id);
        let base = policy_path.parent().unwrap_or(Path::new("."));
        let mut files = Vec::new();
        // The rules file first: an invalid one leaves no half-installed project behind.
        if let Some(f) = self.install_rules(&policy, base, &dir)? {
            files.push(f);
        }
        for d in ["data", "results", "requests"] {
            create_private_dir(&dir.join(d))?;
        }
        let mut referenced: Vec<PathBuf> = policy
            .tables
            .iter()
            .filter_map(|t| t.codelist.as_ref().map(|c| c.path.clone()))
            .collect();
        referenced.push(policy.opt_outs.type1_codelist.path.clone());
        for p in referenced {
            if let Ok(rel) = p.strip_prefix(base)
                && p.is_file()
            {
                let target = dir.join(rel);
                if let Some(parent) = target.parent() {
                    create_private_dir(parent)?;
                }
                let bytes = std::fs::read(&p).map_err(io(&p))?;
                let rec = write_atomic(&target, &bytes, Mode::Private)?;
                files.push(InstalledFile {
                    path: rel.to_string_lossy().into_owned(),
                    sha256: rec.sha256,
                });
            }
        }
        let bytes = std::fs::read(policy_path).map_err(io(policy_path))?;
        let rec = write_atomic(&dir.join("policy.toml"), &bytes, Mode::Private)?;
        files.push(InstalledFile {
            path: "policy.toml".into(),
            sha256: rec.sha256,
        });
        files.sort_by(|a, b| a.path.cmp(&b.path));
        files.dedup_by(|a, b| a.path == b.path);
        let installed = Installed { project: id, files };
        self.commit(
            auditor,
            draft,
            vec![Change::write(&dir.join(INSTALLED_FILE), &installed)?],
        )?;
        Ok(policy)
    }

    /// A policy whose `[tre] output_rules` is not a preset names a rules file (beside the
    /// policy): it is checked now and installed as the project's
    /// [`PROJECT_RULES_FILE`], the only rules file a job of the project ever reads.
    fn install_rules(
        &self,
        policy: &Policy,
        base: &Path,
        dir: &Path,
    ) -> Result<Option<InstalledFile>, WorkspaceError> {
        let Some(spec) = policy.tre.as_ref().and_then(|t| t.output_rules.clone()) else {
            return Ok(None);
        };
        if crate::disclosure::Rules::preset_names().contains(&spec.as_str()) {
            return Ok(None);
        }
        let path = base.join(&spec);
        crate::disclosure::Rules::load(&path).map_err(|source| WorkspaceError::Rules {
            path: path.clone(),
            source,
        })?;
        let mut bytes = Vec::new();
        open_nofollow(&path)?
            .read_to_end(&mut bytes)
            .map_err(io(&path))?;
        create_private_dir(dir)?;
        let rec = write_atomic(&dir.join(PROJECT_RULES_FILE), &bytes, Mode::Private)?;
        Ok(Some(InstalledFile {
            path: PROJECT_RULES_FILE.into(),
            sha256: rec.sha256,
        }))
    }

    /// The project's sealed record of its installed files.
    pub fn installed(&self, project: &Id) -> Result<Installed, WorkspaceError> {
        self.read_record(&self.project_dir(project).join(INSTALLED_FILE))?
            .ok_or_else(|| WorkspaceError::UnknownProject {
                project: project.clone(),
            })
    }

    /// Read an installed file of the project (`policy.toml`, a codelist, the rules),
    /// refused unless its sha256 is the one `installed.json` recorded at install.
    pub fn installed_file(&self, project: &Id, name: &str) -> Result<Vec<u8>, WorkspaceError> {
        let installed = self.installed(project)?;
        let path = self.project_dir(project).join(name);
        let want = installed
            .files
            .iter()
            .find(|f| f.path == name)
            .ok_or_else(|| WorkspaceError::InstalledChanged { path: path.clone() })?;
        let mut bytes = Vec::new();
        open_nofollow(&path)?
            .read_to_end(&mut bytes)
            .map_err(io(&path))?;
        if crate::digest::sha256_hex(&bytes) != want.sha256 {
            return Err(WorkspaceError::InstalledChanged { path });
        }
        Ok(bytes)
    }

    /// Installed project ids.
    pub fn projects(&self) -> Result<Vec<Id>, WorkspaceError> {
        let dir = self.root.join("projects");
        let mut v = Vec::new();
        for name in list_dir(&dir)? {
            if let Ok(id) = Id::parse("project", &name)
                && self.project_dir(&id).join(INSTALLED_FILE).is_file()
            {
                v.push(id);
            }
        }
        v.sort();
        Ok(v)
    }

    /// Load an installed project's policy, after checking every installed file against
    /// the sha256 recorded at install (an edit on disk is refused).
    pub fn project(
        &self,
        id: &(impl AsRef<str> + ?Sized),
        schemas: &SchemaSet,
    ) -> Result<Policy, WorkspaceError> {
        let id = Id::parse("project", id.as_ref())?;
        let dir = self.project_dir(&id);
        let installed = self.installed(&id)?;
        for f in &installed.files {
            if f.path != "policy.toml" {
                self.installed_file(&id, &f.path)?;
            }
        }
        let bytes = self.installed_file(&id, "policy.toml")?;
        let path = dir.join("policy.toml");
        let text = String::from_utf8(bytes)
            .map_err(|_| WorkspaceError::InstalledChanged { path: path.clone() })?;
        Ok(Policy::from_toml(&text, &path, &dir, schemas)?)
    }

    /// Set the project's outbox: an existing folder outside the workspace, recorded by
    /// its canonical path, under the audit entry `draft`.
    pub fn set_outbox(
        &self,
        project: &Id,
        dir: &Path,
        auditor: &dyn Journal,
        draft: EntryDraft,
    ) -> Result<PathBuf, WorkspaceError> {
        self.installed(project)?;
        let canon = std::fs::canonicalize(dir).map_err(io(dir))?;
        let root = std::fs::canonicalize(&self.root).map_err(io(&self.root))?;
        if !canon.is_dir() || canon.starts_with(&root) {
            return Err(WorkspaceError::Unsafe {
                path: canon,
                problem: "cannot be an outbox (it must be an existing folder outside the workspace)",
            });
        }
        self.commit(
            auditor,
            draft,
            vec![Change::write(
                &self.project_dir(project).join("outbox.json"),
                &Outbox { dir: canon.clone() },
            )?],
        )?;
        Ok(canon)
    }

    /// The project's outbox, checked now: still a real folder at the same canonical path
    /// (a symlink swapped in anywhere along it is refused).
    pub fn outbox(&self, project: &Id) -> Result<PathBuf, WorkspaceError> {
        let rec: Outbox = self
            .read_record(&self.project_dir(project).join("outbox.json"))?
            .ok_or_else(|| WorkspaceError::NoOutbox {
                project: project.clone(),
            })?;
        let now = std::fs::canonicalize(&rec.dir).map_err(io(&rec.dir))?;
        let m = std::fs::symlink_metadata(&rec.dir).map_err(io(&rec.dir))?;
        if now != rec.dir || !m.is_dir() {
            return Err(WorkspaceError::Unsafe {
                path: rec.dir,
                problem: "is no longer the folder that was configured as the outbox (a symlink was planted)",
            });
        }
        Ok(rec.dir)
    }

    // -- datasets ------------------------------------------------------------------------
    //
    // A project's dataset is held in versions: version 1 (the first install, `tre admin
    // dataset add`) in `data/`, version N >= 2 (`tre admin refresh`) in `versions/<N>/`,
    // each folder holding its table files and its extract's `manifest.json`. The one
    // sealed record `data/dataset.json` says which version is current (the one jobs read)
    // and lists the earlier versions still held, with their hashes; a folder it does not
    // name is trusted by nothing.

    /// The project's installed dataset record.
    pub fn dataset(&self, project: &Id) -> Result<DatasetRecord, WorkspaceError> {
        self.read_record(&self.dataset_record_path(project))?
            .ok_or_else(|| WorkspaceError::NoDataset {
                project: project.clone(),
            })
    }

    /// Whether a dataset record exists for `project` (installed by `tre admin dataset add`).
    pub fn dataset_installed(&self, project: &str) -> bool {
        Id::parse("project", project).is_ok_and(|p| {
            std::fs::symlink_metadata(self.dataset_record_path(&p)).is_ok_and(|m| m.is_file())
        })
    }

    fn dataset_record_path(&self, project: &Id) -> PathBuf {
        self.project_dir(project).join("data").join("dataset.json")
    }

    /// The folder of dataset version `version` of `project`: `data/` for version 1,
    /// `versions/<N>/` after it (computed, never read from a record).
    pub fn version_dir(&self, project: &(impl AsRef<str> + ?Sized), version: u32) -> PathBuf {
        let dir = self.project_dir(project);
        if version <= 1 {
            dir.join("data")
        } else {
            dir.join("versions").join(version.to_string())
        }
    }

    /// The project's current dataset version (the one a job starting now reads); `None`
    /// when no dataset is installed or its record cannot be read.
    pub fn current_dataset_version(&self, project: &Id) -> Option<u32> {
        if !self.dataset_installed(project.as_str()) {
            return None;
        }
        self.dataset(project).ok().map(|r| r.version)
    }

    /// The project's readable tables, from the server's own record (hashes were verified
    /// once, at install), narrowed to the policy's `datasets` list: always the current
    /// version's. Each file is checked to be a regular file, never a symlink.
    pub fn datasets(&self, policy: &Policy) -> Result<Vec<(String, PathBuf)>, WorkspaceError> {
        let id = Id::parse("project", &policy.project.id)?;
        let rec = self.dataset(&id)?;
        let allowed = policy.tre.as_ref().and_then(|t| t.datasets.clone());
        let data = self.version_dir(&id, rec.version);
        let mut out = Vec::new();
        for t in rec.tables {
            if allowed.as_ref().is_some_and(|a| !a.contains(&t.name)) {
                continue;
            }
            let path = data.join(t.file.as_str());
            open_nofollow(&path)?;
            out.push((t.name, path));
        }
        Ok(out)
    }

    /// Install an extract as the project's dataset, version 1: each table file is copied
    /// in while its sha256 is computed (one streamed read), compared with the extract
    /// manifest, and the record (with the audit head at install time) committed under the
    /// audit entry `draft`, last.
    #[allow(clippy::too_many_arguments)]
    pub fn add_dataset(
        &self,
        project: &Id,
        extract: &Path,
        installed_at: String,
        audit_head: Option<crate::tre::anchors::AuditHead>,
        auditor: &dyn Journal,
        draft: EntryDraft,
    ) -> Result<DatasetRecord, WorkspaceError> {
        self.installed(project)?;
        if self.dataset_record_path(project).exists() {
            return Err(WorkspaceError::DatasetExists {
                project: project.clone(),
            });
        }
        let v = self.copy_version(project, extract, 1, installed_at)?;
        let rec = DatasetRecord::first(project.clone(), v, audit_head);
        self.commit(
            auditor,
            draft,
            vec![Change::write(&self.dataset_record_path(project), &rec)?],
        )?;
        Ok(rec)
    }

    /// Install an extract as the project's next dataset version (`tre admin refresh`):
    /// its files are copied into `versions/<N>/` verified against its manifest, then the
    /// record naming it current (and the version it replaces as held) is committed under
    /// `draft`, last; until then the new folder is trusted by nothing, and a folder an
    /// interrupted install left is replaced. With no dataset yet, this is version 1.
    #[allow(clippy::too_many_arguments)]
    pub fn install_version(
        &self,
        project: &Id,
        extract: &Path,
        installed_at: String,
        audit_head: Option<crate::tre::anchors::AuditHead>,
        auditor: &dyn Journal,
        draft: EntryDraft,
    ) -> Result<DatasetRecord, WorkspaceError> {
        self.installed(project)?;
        if !self.dataset_installed(project.as_str()) {
            return self.add_dataset(project, extract, installed_at, audit_head, auditor, draft);
        }
        let old = self.dataset(project)?;
        let next = old.version + 1;
        let dir = self.version_dir(project, next);
        if dir.exists() {
            remove_version_dir(&dir)?;
        }
        create_private_dir(&self.project_dir(project).join("versions"))?;
        let v = self.copy_version(project, extract, next, installed_at)?;
        let rec = old.superseded_by(v, audit_head);
        self.commit(
            auditor,
            draft,
            vec![Change::write(&self.dataset_record_path(project), &rec)?],
        )?;
        Ok(rec)
    }

    /// Drop an earlier dataset version still held: the record stops naming it (under the
    /// audit entry `draft`), then its files are removed. The current version is never
    /// dropped. A folder an interrupted drop left (no longer named) is removed too.
    pub fn drop_version(
        &self,
        project: &Id,
        version: u32,
        auditor: &dyn Journal,
        draft: EntryDraft,
    ) -> Result<DatasetRecord, WorkspaceError> {
        let mut rec = self.dataset(project)?;
        let gone = WorkspaceError::NoVersion {
            project: project.clone(),
            version,
        };
        if version == rec.version || version == 0 {
            return Err(gone);
        }
        let dir = self.version_dir(project, version);
        match rec.earlier.iter().position(|v| v.version == version) {
            Some(i) => {
                let v = rec.earlier.remove(i);
                self.commit(
                    auditor,
                    draft,
                    vec![Change::write(&self.dataset_record_path(project), &rec)?],
                )?;
                remove_version_files(&dir, &v.tables)?;
            }
            // What an interrupted drop left (no longer named): its files.
            None if version > 1 && dir.exists() && version < rec.version => {
                remove_version_dir(&dir)?;
            }
            None if version == 1 && dir.join("manifest.json").exists() => {
                let bytes = std::fs::read(dir.join("manifest.json")).map_err(io(&dir))?;
                let m: crate::manifest::Manifest =
                    serde_json::from_slice(&bytes).map_err(|e| WorkspaceError::BadExtract {
                        dir: dir.clone(),
                        problem: format!("manifest.json is not an extract manifest ({e})"),
                    })?;
                let tables: Vec<DatasetTable> = m
                    .tables
                    .iter()
                    .filter_map(|(name, t)| {
                        let o = t.output.as_ref()?;
                        Some(DatasetTable {
                            name: name.clone(),
                            file: Id::parse("file", &o.path).ok()?,
                            sha256: o.sha256.clone(),
                            size: o.bytes,
                        })
                    })
                    .collect();
                remove_version_files(&dir, &tables)?;
            }
            None => return Err(gone),
        }
        Ok(rec)
    }

    /// Copy an extract's tables and manifest into version `version`'s folder, each
    /// verified against the manifest while it streams.
    fn copy_version(
        &self,
        project: &Id,
        extract: &Path,
        version: u32,
        installed_at: String,
    ) -> Result<DatasetVersion, WorkspaceError> {
        let bad = |problem: String| WorkspaceError::BadExtract {
            dir: extract.to_path_buf(),
            problem,
        };
        let mpath = extract.join("manifest.json");
        let mut mbytes = Vec::new();
        open_nofollow(&mpath)?
            .read_to_end(&mut mbytes)
            .map_err(io(&mpath))?;
        let manifest: crate::manifest::Manifest = serde_json::from_slice(&mbytes)
            .map_err(|e| bad(format!("manifest.json is not an extract manifest ({e})")))?;
        if manifest.project != project.as_str() {
            return Err(bad(format!(
                "it was extracted for project {:?}, not {project}",
                manifest.project
            )));
        }
        let data = self.version_dir(project, version);
        create_private_dir(&data)?;
        let mut tables = Vec::new();
        for (name, entry) in &manifest.tables {
            let Some(o) = &entry.output else { continue };
            let file = Id::parse("file", &o.path).map_err(|_| {
                bad(format!(
                    "table {name}: output path {:?} is not a plain file name",
                    o.path
                ))
            })?;
            let size = copy_verified(
                &extract.join(file.as_str()),
                &data.join(file.as_str()),
                &o.sha256,
            )
            .map_err(|e| match e {
                CopyError::Mismatch => bad(format!(
                    "{} does not match its manifest (sha256); it changed after the extract",
                    file
                )),
                CopyError::Ws(w) => w,
            })?;
            tables.push(DatasetTable {
                name: name.clone(),
                file,
                sha256: o.sha256.clone(),
                size,
            });
        }
        write_atomic(&data.join("manifest.json"), &mbytes, Mode::Private)?;
        Ok(DatasetVersion {
            version,
            installed_at,
            extracted_at: Some(manifest.finished_at.clone()),
            manifest_sha256: crate::digest::sha256_hex(&mbytes),
            opt_outs_sha256: manifest.opt_outs.sha256.clone(),
            opt_outs_as_of: manifest.opt_outs.as_of.clone(),
            tables,
        })
    }
}

impl Workspace {
    /// After `tre purge` rewrote a project's dataset files and its manifest: re-hash each
    /// installed file (streamed), require it to match the purged manifest, and reseal the
    /// dataset record, so the server keeps trusting only what the operator's purge wrote.
    pub fn reseal_dataset(
        &self,
        project: &Id,
        manifest: &[u8],
    ) -> Result<DatasetRecord, WorkspaceError> {
        let version = self.dataset(project)?.version;
        self.reseal_version(project, version, manifest)
    }

    /// [`Workspace::reseal_dataset`] for dataset version `version` (current or earlier).
    pub fn reseal_version(
        &self,
        project: &Id,
        version: u32,
        manifest: &[u8],
    ) -> Result<DatasetRecord, WorkspaceError> {
        let data = self.version_dir(project, version);
        let bad = |problem: String| WorkspaceError::BadExtract {
            dir: data.clone(),
            problem,
        };
        let m: crate::manifest::Manifest = serde_json::from_slice(manifest)
            .map_err(|e| bad(format!("manifest.json is not an extract manifest ({e})")))?;
        let mut rec = self.dataset(project)?;
        let (tables, manifest_sha256) = if version == rec.version {
            (&mut rec.tables, &mut rec.manifest_sha256)
        } else {
            let Some(v) = rec.earlier.iter_mut().find(|v| v.version == version) else {
                return Err(WorkspaceError::NoVersion {
                    project: project.clone(),
                    version,
                });
            };
            (&mut v.tables, &mut v.manifest_sha256)
        };
        for t in tables.iter_mut() {
            let path = data.join(t.file.as_str());
            let (sha, size) = crate::digest::sha256_file(&path).map_err(io(&path))?;
            let listed = m.tables.get(&t.name).and_then(|e| e.output.as_ref());
            if listed.map(|o| o.sha256.as_str()) != Some(sha.as_str()) {
                return Err(bad(format!(
                    "{} does not match the purged manifest (sha256)",
                    t.file
                )));
            }
            t.sha256 = sha;
            t.size = size;
        }
        *manifest_sha256 = crate::digest::sha256_hex(manifest);
        self.commit_self(
            "service",
            "dataset.reseal",
            Some(project.as_str()),
            vec![Change::write(&self.dataset_record_path(project), &rec)?],
        )?;
        Ok(rec)
    }
}

/// Remove a version's table files and manifest (version 1 shares `data/` with the
/// record, so only what the version names goes).
fn remove_version_files(dir: &Path, tables: &[DatasetTable]) -> Result<(), WorkspaceError> {
    for t in tables {
        crate::durable::remove_durably(&dir.join(t.file.as_str()))?;
    }
    crate::durable::remove_durably(&dir.join("manifest.json"))?;
    if dir.file_name().is_some_and(|n| n != "data") {
        remove_version_dir(dir)?;
    }
    Ok(())
}

/// Remove a `versions/<N>/` folder and the plain files in it (never following a link).
fn remove_version_dir(dir: &Path) -> Result<(), WorkspaceError> {
    for name in list_dir(dir)? {
        let p = dir.join(&name);
        let m = std::fs::symlink_metadata(&p).map_err(io(&p))?;
        if m.is_dir() {
            return Err(WorkspaceError::Unsafe {
                path: p,
                problem: "is a folder inside a dataset version folder; remove it by hand",
            });
        }
        std::fs::remove_file(&p).map_err(io(&p))?;
    }
    std::fs::remove_dir(dir).map_err(io(dir))?;
    crate::durable::fsync_parent(dir).map_err(io(dir))?;
    Ok(())
}

enum CopyError {
    Mismatch,
    Ws(WorkspaceError),
}

impl From<WorkspaceError> for CopyError {
    fn from(e: WorkspaceError) -> Self {
        CopyError::Ws(e)
    }
}

/// Copy `from` to `to` (atomic, 0400), hashing as it streams; keep it only if the hash
/// is `sha256`.
fn copy_verified(from: &Path, to: &Path, sha256: &str) -> Result<u64, CopyError> {
    let mut src = open_nofollow(from)?;
    let out =
        crate::durable::AtomicFile::create(to, Mode::Private).map_err(WorkspaceError::from)?;
    let mut w = crate::digest::HashingWriter::new(out);
    std::io::copy(&mut src, &mut w).map_err(io(from))?;
    w.flush().map_err(io(to))?;
    let (out, sha, size) = w.finish();
    if sha != sha256 {
        return Err(CopyError::Mismatch);
    }
    out.commit().map_err(WorkspaceError::from)?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o400)).map_err(io(to))?;
    Ok(size)
}

/// Where a project's releases go.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Outbox {
    dir: PathBuf,
}

/// One installed table.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetTable {
    /// Table name (as registered for SQL).
    pub name: String,
    /// File name inside `data/`.
    pub file: Id,
    /// SHA-256 verified at install.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// The sealed record of a project's installed files.
pub const INSTALLED_FILE: &str = "installed.json";

/// One installed file of a project.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstalledFile {
    /// Its path inside the project folder.
    pub path: String,
    /// Its sha256 at install.
    pub sha256: String,
}

/// What `tre admin project add` installed: the only policy, codelists and rules files
/// the server trusts, by hash.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Installed {
    /// The project.
    pub project: Id,
    /// Its files.
    pub files: Vec<InstalledFile>,
}

/// The project's own output rules, installed by `tre admin project add` when the policy
/// names a rules file rather than a preset.
pub const PROJECT_RULES_FILE: &str = "output-rules.toml";

/// The server's record of a project's installed dataset.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetRecord {
    /// The project.
    pub project: Id,
    /// The current version (what jobs read); 1 for a record written before versions.
    #[serde(default = "first_version")]
    pub version: u32,
    /// When it was installed.
    pub installed_at: String,
    /// When its extract finished (the manifest's `finished_at`).
    #[serde(default)]
    pub extracted_at: Option<String>,
    /// SHA-256 of the extract's manifest.json.
    pub manifest_sha256: String,
    /// SHA-256 of the National Data Opt-out list it was extracted with.
    #[serde(default)]
    pub opt_outs_sha256: Option<String>,
    /// That list's "as of" date.
    #[serde(default)]
    pub opt_outs_as_of: Option<String>,
    /// The tables.
    pub tables: Vec<DatasetTable>,
    /// The audit head when it was installed.
    pub audit_head: Option<crate::tre::anchors::AuditHead>,
    /// Earlier versions still held (oldest first), each purged of every later refresh's
    /// opt-outs; `tre admin dataset drop` removes one.
    #[serde(default)]
    pub earlier: Vec<DatasetVersion>,
}

fn first_version() -> u32 {
    1
}

/// One dataset version (the current one is in [`DatasetRecord`] itself).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetVersion {
    /// Its number (1, 2, ...).
    pub version: u32,
    /// When it was installed.
    pub installed_at: String,
    /// When its extract finished.
    pub extracted_at: Option<String>,
    /// SHA-256 of its manifest.json (as it is now, after any purge).
    pub manifest_sha256: String,
    /// SHA-256 of the opt-out list it was extracted with.
    pub opt_outs_sha256: Option<String>,
    /// That list's "as of" date.
    pub opt_outs_as_of: Option<String>,
    /// Its tables.
    pub tables: Vec<DatasetTable>,
}

impl DatasetRecord {
    /// The record of a first install.
    fn first(
        project: Id,
        v: DatasetVersion,
        audit_head: Option<crate::tre::anchors::AuditHead>,
    ) -> Self {
        DatasetRecord {
            project,
            version: v.version,
            installed_at: v.installed_at,
            extracted_at: v.extracted_at,
            manifest_sha256: v.manifest_sha256,
            opt_outs_sha256: v.opt_outs_sha256,
            opt_outs_as_of: v.opt_outs_as_of,
            tables: v.tables,
            audit_head,
            earlier: Vec::new(),
        }
    }

    /// This record with `v` current and the version it replaces held as earlier.
    fn superseded_by(
        self,
        v: DatasetVersion,
        audit_head: Option<crate::tre::anchors::AuditHead>,
    ) -> Self {
        let mut earlier = self.earlier.clone();
        earlier.push(self.current());
        DatasetRecord {
            earlier,
            ..DatasetRecord::first(self.project, v, audit_head)
        }
    }

    /// The current version, as a [`DatasetVersion`].
    pub fn current(&self) -> DatasetVersion {
        DatasetVersion {
            version: self.version,
            installed_at: self.installed_at.clone(),
            extracted_at: self.extracted_at.clone(),
            manifest_sha256: self.manifest_sha256.clone(),
            opt_outs_sha256: self.opt_outs_sha256.clone(),
            opt_outs_as_of: self.opt_outs_as_of.clone(),
            tables: self.tables.clone(),
        }
    }

    /// Every version held, oldest first (the current one last).
    pub fn versions(&self) -> Vec<DatasetVersion> {
        let mut all = self.earlier.clone();
        all.push(self.current());
        all
    }
}

/// What a bound write needs of the audit log: append an entry durably and hand it back;
/// only then may the write's effect be seen. The TRE's auditor is the one journal (the
/// implementation sits in the `tre` folder's root, so that this module never imports
/// the auditor, which itself opens a workspace).
pub trait Journal {
    /// Append `draft` durably.
    fn record(&self, draft: EntryDraft) -> Result<AuditEntry, AuditError>;
}

/// A role in a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// An approved analyst.
    Analyst,
    /// An approved output checker.
    Checker,
    /// An auditor: reads the audit trail only.
    Auditor,
}

impl Role {
    /// Its name in messages and in `GET /api/me`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Analyst => "analyst",
            Role::Checker => "output_checker",
            Role::Auditor => "auditor",
        }
    }
}

/// The roles `user` holds in `policy`'s project.
pub fn roles_of(policy: &Policy, user: &str) -> Vec<Role> {
    let mut v = Vec::new();
    if let Some(t) = &policy.tre {
        if t.users.iter().any(|u| u == user) {
            v.push(Role::Analyst);
        }
        if t.output_checkers.iter().any(|u| u == user) {
            v.push(Role::Checker);
        }
        if t.auditors.iter().any(|u| u == user) {
            v.push(Role::Auditor);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws() -> (tempfile::TempDir, Workspace) {
        let t = tempfile::tempdir().expect("tempdir");
        let w = Workspace::init(&t.path().join("ws")).expect("init");
        (t, w)
    }

    #[test]
    fn a_new_workspace_passes_its_own_permission_check() {
        let (_t, w) = ws();
        w.check_permissions().expect("fresh workspace is safe");
    }

    #[test]
    fn group_writable_and_symlinks_are_refused() {
        let (t, w) = ws();
        let p = w.root().join("users");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o770)).expect("chmod");
        assert!(matches!(
            w.check_permissions(),
            Err(WorkspaceError::Unsafe { .. })
        ));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        std::os::unix::fs::symlink(t.path(), p.join("x.json")).expect("symlink");
        let e = w.check_permissions().expect_err("symlink");
        assert!(e.to_string().contains("symlink"), "{e}");
    }

    #[test]
    fn records_round_trip_and_edits_are_detected() {
        let (_t, w) = ws();
        let p = w.users_dir().join("r.json");
        w.write_record(&p, &vec![1, 2, 3]).expect("write");
        let back: Vec<i32> = w.read_record(&p).expect("read").expect("exists");
        assert_eq!(back, vec![1, 2, 3]);
        let text = std::fs::read_to_string(&p).expect("read");
        std::fs::write(&p, text.replace('3', "4")).expect("edit");
        assert!(matches!(
            w.read_record::<Vec<i32>>(&p),
            Err(WorkspaceError::Forged { .. })
        ));
        assert!(
            w.read_record::<Vec<i32>>(&w.users_dir().join("none.json"))
                .expect("ok")
                .is_none()
        );
    }

    fn auditor(w: &Workspace) -> crate::tre::auditor::Auditor {
        crate::tre::anchors::create_checkpoint_key(w.root()).expect("checkpoint key");
        crate::tre::auditor::Auditor::new(w, std::sync::Arc::new(crate::clock::SystemClock), 0)
            .expect("auditor")
    }

    fn commit(w: &Workspace, a: &crate::tre::auditor::Auditor, p: &Path, v: &str) -> u64 {
        w.commit(
            a,
            EntryDraft::new("tester", "test.write"),
            vec![Change::write(p, &v).expect("change")],
        )
        .expect("commit")
        .seq
    }

    #[test]
    fn a_record_rolled_back_to_an_earlier_version_is_refused() {
        let (_t, w) = ws();
        let a = auditor(&w);
        let dir = w.project_dir("a").join("requests");
        create_private_dir(&dir).expect("dir");
        let p = dir.join("r.json");
        commit(&w, &a, &p, "requested");
        let old = std::fs::read(&p).expect("read");
        let seq = commit(&w, &a, &p, "rejected");
        assert_eq!(
            w.read_record::<String>(&p).expect("read").as_deref(),
            Some("rejected")
        );
        std::fs::write(&p, &old).expect("roll back");
        let e = w.read_record::<String>(&p).expect_err("rolled back");
        assert!(
            matches!(e, WorkspaceError::Stale { latest, .. } if latest == seq),
            "{e}"
        );
        assert!(e.to_string().contains("r.json"), "{e}");
        // Even a fresh process (a new index built from the audit log) refuses it.
        let w2 = Workspace::open(w.root()).expect("open");
        assert!(w2.read_record::<String>(&p).is_err());
        // A deleted record the log says exists is refused too.
        std::fs::remove_file(&p).expect("delete");
        assert!(matches!(
            w.read_record::<String>(&p),
            Err(WorkspaceError::Missing { .. })
        ));
    }

    #[test]
    fn a_record_copied_from_another_project_is_refused() {
        let (_t, w) = ws();
        let a = auditor(&w);
        for p in ["a", "b"] {
            create_private_dir(&w.project_dir(p).join("requests")).expect("dir");
        }
        let from = w.project_dir("a").join("requests/r.json");
        commit(&w, &a, &from, "approved by a's checkers");
        let to = w.project_dir("b").join("requests/r.json");
        std::fs::copy(&from, &to).expect("copy");
        let e = w.read_record::<String>(&to).expect_err("copied");
        assert!(matches!(e, WorkspaceError::Forged { .. }), "{e}");
        assert!(e.to_string().contains("projects/b/requests/r.json"), "{e}");
        // An unbound record (a job record) is bound to its path as well.
        let job = w.project_dir("a").join("requests/j.json");
        w.write_record(&job, &1).expect("write");
        std::fs::copy(&job, w.project_dir("b").join("requests/j.json")).expect("copy");
        assert!(matches!(
            w.read_record::<i32>(&w.project_dir("b").join("requests/j.json")),
            Err(WorkspaceError::Forged { .. })
        ));
    }

    #[test]
    fn an_interrupted_commit_is_finished_by_the_next_read() {
        let (_t, w) = ws();
        let a = auditor(&w);
        let p = w.users_dir().join("u.json");
        commit(&w, &a, &p, "one");
        let one = std::fs::read(&p).expect("read");
        let seq = commit(&w, &a, &p, "two");
        // As if the process died after the audit entry, before the final rename.
        let staged = records::seal(&w.seal, "users/u.json", Version::Pending, br#""two""#);
        std::fs::write(records::pending_path(&p), staged).expect("stage");
        std::fs::write(&p, &one).expect("old");
        assert_eq!(
            w.read_record::<String>(&p).expect("read").as_deref(),
            Some("two")
        );
        assert!(!records::pending_path(&p).exists());
        assert!(
            String::from_utf8_lossy(&std::fs::read(&p).expect("read"))
                .starts_with(&format!("{} {seq} ", records::SEAL_V2))
        );
        // A staged copy no audit entry names is ignored.
        let stray = records::seal(&w.seal, "users/u.json", Version::Pending, br#""three""#);
        std::fs::write(records::pending_path(&p), stray).expect("stray");
        assert_eq!(
            w.read_record::<String>(&p).expect("read").as_deref(),
            Some("two")
        );
    }

    #[test]
    fn an_old_format_record_asks_for_migration() {
        let (_t, w) = ws();
        let p = w.users_dir().join("old.json");
        let mut m = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(&w.seal).expect("key");
        hmac::Mac::update(&mut m, b"1");
        let tag = crate::digest::hex(&hmac::Mac::finalize(m).into_bytes());
        std::fs::write(&p, format!("{tag}\n1")).expect("write");
        let e = w.read_record::<i32>(&p).expect_err("old");
        assert!(e.to_string().contains("tre admin migrate"), "{e}");
    }

    #[test]
    fn a_symlinked_folder_planted_after_open_is_refused() {
        let (t, w) = ws();
        let elsewhere = t.path().join("elsewhere");
        create_private_dir(&elsewhere).expect("dir");
        std::fs::write(elsewhere.join("job.json"), "x").expect("file");
        let results = w.project_dir("a").join("results");
        create_private_dir(&results).expect("dir");
        std::os::unix::fs::symlink(&elsewhere, results.join("j")).expect("plant");
        let e = open_nofollow(&results.join("j/job.json")).expect_err("followed");
        assert!(e.to_string().contains("symlink"), "{e}");
        let e = w
            .read_record::<String>(&results.join("j/job.json"))
            .expect_err("followed");
        assert!(e.to_string().contains("symlink"), "{e}");
        assert!(list_dir(&results.join("j")).is_err());
        assert!(write_atomic(&results.join("j/new.json"), b"x", Mode::Private).is_err());
        assert!(!elsewhere.join("new.json").exists());
    }

    #[test]
    fn an_installed_rules_file_edited_on_disk_is_refused() {
        let (_t, w) = ws();
        let a = auditor(&w);
        let p = Id::parse("project", "a").expect("id");
        let dir = w.project_dir(&p);
        create_private_dir(&dir).expect("dir");
        let rules =
            write_atomic(&dir.join(PROJECT_RULES_FILE), b"[x]\n", Mode::Private).expect("rules");
        let installed = Installed {
            project: p.clone(),
            files: vec![InstalledFile {
                path: PROJECT_RULES_FILE.into(),
                sha256: rules.sha256,
            }],
        };
        w.commit(
            &a,
            EntryDraft::new("tester", "admin.project.add"),
            vec![Change::write(&dir.join(INSTALLED_FILE), &installed).expect("change")],
        )
        .expect("commit");
        assert_eq!(
            w.installed_file(&p, PROJECT_RULES_FILE)
                .expect("as installed"),
            b"[x]\n"
        );
        std::fs::write(dir.join(PROJECT_RULES_FILE), b"[y]\n").expect("edit");
        let e = w
            .installed_file(&p, PROJECT_RULES_FILE)
            .expect_err("edited");
        assert!(matches!(e, WorkspaceError::InstalledChanged { .. }), "{e}");
        assert!(e.to_string().contains(PROJECT_RULES_FILE), "{e}");
        // And installed.json itself cannot be edited to match.
        let text = std::fs::read_to_string(dir.join(INSTALLED_FILE)).expect("read");
        std::fs::write(dir.join(INSTALLED_FILE), text.replace("\"a\"", "\"a\" ")).expect("edit");
        assert!(matches!(
            w.installed(&p),
            Err(WorkspaceError::Forged { .. })
        ));
    }

    #[test]
    fn files_are_private() {
        let (_t, w) = ws();
        let p = w.users_dir().join("r.json");
        w.write_record(&p, &1).expect("write");
        let m = std::fs::metadata(&p).expect("meta");
        assert_eq!(m.mode() & 0o777, 0o600);
        let m = std::fs::metadata(w.users_dir()).expect("meta");
        assert_eq!(m.mode() & 0o777, 0o700);
    }

    #[test]
    fn a_dataset_record_from_before_versions_reads_as_version_1() {
        let old = r#"{"project":"demo","installed_at":"2026-01-01T09:00:00Z","manifest_sha256":"ab","tables":[{"name":"patients","file":"patients.parquet","sha256":"cd","size":3}],"audit_head":null}"#;
        let rec: DatasetRecord = serde_json::from_str(old).expect("old record");
        assert_eq!(rec.version, 1);
        assert!(rec.earlier.is_empty());
        let all = rec.versions();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].manifest_sha256, "ab");
    }

    #[test]
    fn a_new_version_keeps_the_one_it_replaces_as_held() {
        let v = |n: u32, sha: &str| DatasetVersion {
            version: n,
            installed_at: format!("2026-0{n}-01T09:00:00Z"),
            extracted_at: None,
            manifest_sha256: sha.into(),
            opt_outs_sha256: None,
            opt_outs_as_of: Some(format!("2026-0{n}-01")),
            tables: Vec::new(),
        };
        let p = Id::parse("project", "demo").expect("id");
        let rec = DatasetRecord::first(p.clone(), v(1, "one"), None)
            .superseded_by(v(2, "two"), None)
            .superseded_by(v(3, "three"), None);
        assert_eq!(rec.version, 3);
        assert_eq!(rec.manifest_sha256, "three");
        let held: Vec<u32> = rec.earlier.iter().map(|v| v.version).collect();
        assert_eq!(held, [1, 2]);
        assert_eq!(rec.earlier[1].manifest_sha256, "two");
        let (_t, w) = ws();
        assert!(w.version_dir(&p, 1).ends_with("projects/demo/data"));
        assert!(w.version_dir(&p, 3).ends_with("projects/demo/versions/3"));
    }
}
