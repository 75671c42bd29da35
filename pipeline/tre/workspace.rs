//! A TRE workspace on disk, owned by one service account.
//!
//! Layout: `workspace.toml`; `seal.key` (the key that seals the server's own records);
//! `audit/` (the audit log); `checkpoints/`; `users/<user>.json`; and per project
//! `projects/<id>/` with its installed policy (`policy.toml` and the codelists it names),
//! `outbox.json` (where releases go), `data/` (an installed extract and its record
//! `dataset.json`), `results/<job>/` (jobs) and `requests/<release>.json` (releases).
//!
//! Owns the layout, the permission rule (the workspace and everything in it belongs to
//! the service account, nothing is writable by group or others, no symlinks; files are
//! created 0600 and folders 0700) and the server's records: every JSON record is sealed
//! with an HMAC under `seal.key`, so a record edited or forged on disk is refused when it
//! is read. Ids ([`Id`]) are the only names that reach a path. Danger: this module
//! decides which bytes count as the workspace's own; it never reads row data, and it
//! never follows a symlink it did not create.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use serde::{Serialize, de::DeserializeOwned};
use sha2::Sha256;

use crate::durable::{DurableError, Mode, write_atomic};
use crate::policy::{Policy, PolicyError};
use crate::schema::SchemaSet;
use crate::tre::id::{Id, IdError};

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
    /// A record does not carry a valid seal: edited or forged on disk.
    #[error(
        "{path} has been changed outside the server (its seal does not match); refusing to use it"
    )]
    Forged {
        /// The record.
        path: PathBuf,
    },
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
            | WorkspaceError::UnknownProject { .. }
            | WorkspaceError::NoOutbox { .. }
            | WorkspaceError::NoDataset { .. }
            | WorkspaceError::DatasetExists { .. }
            | WorkspaceError::BadExtract { .. }
            | WorkspaceError::Rules { .. } => ErrorKind::Refused,
            WorkspaceError::Policy(e) => e.kind(),
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

/// Create a folder (and missing parents) with mode 0700.
pub fn create_private_dir(path: &Path) -> Result<(), WorkspaceError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io(path))
}

/// Open a regular file for reading without following a symlink at its name.
pub fn open_nofollow(path: &Path) -> Result<std::fs::File, WorkspaceError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
                WorkspaceError::Unsafe {
                    path: path.to_path_buf(),
                    problem: "is a symlink",
                }
            } else {
                io(path)(e)
            }
        })?;
    if !file.metadata().map_err(io(path))?.is_file() {
        return Err(WorkspaceError::Unsafe {
            path: path.to_path_buf(),
            problem: "is not a regular file",
        });
    }
    Ok(file)
}

/// An opened workspace.
#[derive(Clone)]
pub struct Workspace {
    root: PathBuf,
    seal: zeroize::Zeroizing<Vec<u8>>,
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
        let mut seal = zeroize::Zeroizing::new(Vec::new());
        open_nofollow(&root.join(SEAL_KEY))?
            .read_to_end(&mut seal)
            .map_err(io(root))?;
        Ok(Workspace {
            root: root.to_path_buf(),
            seal,
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

    fn mac(&self, body: &[u8]) -> Result<Hmac<Sha256>, WorkspaceError> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.seal).map_err(|_| WorkspaceError::Forged {
                path: self.root.join(SEAL_KEY),
            })?;
        mac.update(body);
        Ok(mac)
    }

    /// Write a record, sealed, atomically, mode 0600. Returns its sha256.
    pub fn write_record<T: Serialize>(
        &self,
        path: &Path,
        value: &T,
    ) -> Result<String, WorkspaceError> {
        let body = serde_json::to_vec_pretty(value).map_err(|source| WorkspaceError::Corrupt {
            path: path.to_path_buf(),
            source,
        })?;
        let tag = crate::digest::hex(&self.mac(&body)?.finalize().into_bytes());
        let mut text = Vec::with_capacity(body.len() + 66);
        text.extend_from_slice(tag.as_bytes());
        text.push(b'\n');
        text.extend_from_slice(&body);
        Ok(write_atomic(path, &text, Mode::Private)?.sha256)
    }

    /// Read a sealed record; `Ok(None)` when it does not exist; refused when its seal
    /// does not match (edited or forged) or it is a symlink.
    pub fn read_record<T: DeserializeOwned>(
        &self,
        path: &Path,
    ) -> Result<Option<T>, WorkspaceError> {
        let mut file = match open_nofollow(path) {
            Ok(f) => f,
            Err(WorkspaceError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let mut text = Vec::new();
        file.read_to_end(&mut text).map_err(io(path))?;
        let forged = || WorkspaceError::Forged {
            path: path.to_path_buf(),
        };
        let nl = text.iter().position(|&b| b == b'\n').ok_or_else(forged)?;
        let (tag, body) = (&text[..nl], &text[nl + 1..]);
        let tag = hex::decode(tag).map_err(|_| forged())?;
        self.mac(body)?.verify_slice(&tag).map_err(|_| forged())?;
        serde_json::from_slice(body)
            .map(Some)
            .map_err(|source| WorkspaceError::Corrupt {
                path: path.to_path_buf(),
                source,
            })
    }

    // -- projects ------------------------------------------------------------------------

    /// Install (or replace) a project from its policy: the policy and the codelists it
    /// names are copied into `projects/<id>/`.
    pub fn add_project(
        &self,
        policy_path: &Path,
        schemas: &SchemaSet,
    ) -> Result<Policy, WorkspaceError> {
        let policy = Policy::load(policy_path, schemas)?;
        let id = Id::parse("project", &policy.project.id)?;
        let dir = self.project_dir(&id);
        let base = policy_path.parent().unwrap_or(Path::new("."));
        // The rules file first: an invalid one leaves no half-installed project behind.
        self.install_rules(&policy, base, &dir)?;
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
                write_atomic(&target, &bytes, Mode::Private)?;
            }
        }
        let bytes = std::fs::read(policy_path).map_err(io(policy_path))?;
        write_atomic(&dir.join("policy.toml"), &bytes, Mode::Private)?;
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
    ) -> Result<(), WorkspaceError> {
        let Some(spec) = policy.tre.as_ref().and_then(|t| t.output_rules.clone()) else {
            return Ok(());
        };
        if crate::disclosure::Rules::preset_names().contains(&spec.as_str()) {
            return Ok(());
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
        write_atomic(&dir.join(PROJECT_RULES_FILE), &bytes, Mode::Private)?;
        Ok(())
    }

    /// Installed project ids.
    pub fn projects(&self) -> Result<Vec<Id>, WorkspaceError> {
        let dir = self.root.join("projects");
        let mut v = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let e = e.map_err(io(&dir))?;
            if let Ok(id) = Id::parse("project", &e.file_name().to_string_lossy())
                && e.path().join("policy.toml").is_file()
            {
                v.push(id);
            }
        }
        v.sort();
        Ok(v)
    }

    /// Load an installed project's policy.
    pub fn project(
        &self,
        id: &(impl AsRef<str> + ?Sized),
        schemas: &SchemaSet,
    ) -> Result<Policy, WorkspaceError> {
        let id = Id::parse("project", id.as_ref())?;
        let path = self.project_dir(&id).join("policy.toml");
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => Ok(Policy::load(&path, schemas)?),
            Ok(_) => Err(WorkspaceError::Unsafe {
                path,
                problem: "is not a regular file",
            }),
            Err(_) => Err(WorkspaceError::UnknownProject { project: id }),
        }
    }

    /// Set the project's outbox: an existing folder outside the workspace, recorded by
    /// its canonical path.
    pub fn set_outbox(&self, project: &Id, dir: &Path) -> Result<PathBuf, WorkspaceError> {
        if !self.project_dir(project).join("policy.toml").is_file() {
            return Err(WorkspaceError::UnknownProject {
                project: project.clone(),
            });
        }
        let canon = std::fs::canonicalize(dir).map_err(io(dir))?;
        let root = std::fs::canonicalize(&self.root).map_err(io(&self.root))?;
        if !canon.is_dir() || canon.starts_with(&root) {
            return Err(WorkspaceError::Unsafe {
                path: canon,
                problem: "cannot be an outbox (it must be an existing folder outside the workspace)",
            });
        }
        self.write_record(
            &self.project_dir(project).join("outbox.json"),
            &Outbox { dir: canon.clone() },
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

    /// The project's installed dataset record.
    pub fn dataset(&self, project: &Id) -> Result<DatasetRecord, WorkspaceError> {
        self.read_record(&self.dataset_record_path(project))?
            .ok_or_else(|| WorkspaceError::NoDataset {
                project: project.clone(),
            })
    }

    /// Whether a dataset record exists for `project` (installed by `tre admin dataset add`).
    pub fn dataset_installed(&self, project: &str) -> bool {
        Id::parse("project", project).is_ok_and(|p| self.dataset_record_path(&p).is_file())
    }

    fn dataset_record_path(&self, project: &Id) -> PathBuf {
        self.project_dir(project).join("data").join("dataset.json")
    }

    /// The project's readable tables, from the server's own record (hashes were verified
    /// once, at install), narrowed to the policy's `datasets` list. Each file is checked
    /// to be a regular file, never a symlink.
    pub fn datasets(&self, policy: &Policy) -> Result<Vec<(String, PathBuf)>, WorkspaceError> {
        let id = Id::parse("project", &policy.project.id)?;
        let rec = self.dataset(&id)?;
        let allowed = policy.tre.as_ref().and_then(|t| t.datasets.clone());
        let data = self.project_dir(&id).join("data");
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

    /// Install an extract as the project's dataset: each table file is copied in while
    /// its sha256 is computed (one streamed read), compared with the extract manifest, and
    /// the record (with the audit head at install time) sealed.
    pub fn add_dataset(
        &self,
        project: &Id,
        extract: &Path,
        installed_at: String,
        audit_head: Option<crate::tre::anchors::AuditHead>,
    ) -> Result<DatasetRecord, WorkspaceError> {
        if !self.project_dir(project).join("policy.toml").is_file() {
            return Err(WorkspaceError::UnknownProject {
                project: project.clone(),
            });
        }
        if self.dataset_record_path(project).exists() {
            return Err(WorkspaceError::DatasetExists {
                project: project.clone(),
            });
        }
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
        let data = self.project_dir(project).join("data");
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
        let rec = DatasetRecord {
            project: project.clone(),
            installed_at,
            manifest_sha256: crate::digest::sha256_hex(&mbytes),
            tables,
            audit_head,
        };
        self.write_record(&self.dataset_record_path(project), &rec)?;
        Ok(rec)
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
        let data = self.project_dir(project).join("data");
        let bad = |problem: String| WorkspaceError::BadExtract {
            dir: data.clone(),
            problem,
        };
        let m: crate::manifest::Manifest = serde_json::from_slice(manifest)
            .map_err(|e| bad(format!("manifest.json is not an extract manifest ({e})")))?;
        let mut rec = self.dataset(project)?;
        for t in rec.tables.iter_mut() {
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
        rec.manifest_sha256 = crate::digest::sha256_hex(manifest);
        self.write_record(&self.dataset_record_path(project), &rec)?;
        Ok(rec)
    }
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

/// The project's own output rules, installed by `tre admin project add` when the policy
/// names a rules file rather than a preset.
pub const PROJECT_RULES_FILE: &str = "output-rules.toml";

/// The server's record of a project's installed dataset.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetRecord {
    /// The project.
    pub project: Id,
    /// When it was installed.
    pub installed_at: String,
    /// SHA-256 of the extract's manifest.json.
    pub manifest_sha256: String,
    /// The tables.
    pub tables: Vec<DatasetTable>,
    /// The audit head when it was installed.
    pub audit_head: Option<crate::tre::anchors::AuditHead>,
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
}
