//! A TRE workspace on disk: `workspace.toml`, `audit/`, and `projects/<id>/` holding the
//! project's policy (`policy.toml` and the codelists it names), its datasets (`data/`, an
//! extract's output with its manifest), query results (`results/`), release requests
//! (`requests/`) and released outputs (`released/`).
//!
//! Owns the layout and access decisions: who may act on a project (the policy's `[tre]`
//! users and output checkers) and which datasets a project may read (those its verified
//! extract manifest names, narrowed by the policy's `datasets` list). It never reads row
//! data.

use std::path::{Path, PathBuf};

use crate::digest::sha256_hex;
use crate::extract::Manifest;
use crate::policy::{Policy, PolicyError};
use crate::schema::SchemaSet;

/// Marker file identifying a workspace.
pub const WORKSPACE_FILE: &str = "workspace.toml";

/// Workspace errors.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    /// File system trouble.
    #[error("workspace {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Not a workspace.
    #[error("{0} is not a TRE workspace (no workspace.toml); create one with `tre init DIR`")]
    NotWorkspace(PathBuf),
    /// `init` on a non-empty folder.
    #[error("{0} exists and is not empty; `tre init` needs a new or empty folder")]
    NotEmpty(PathBuf),
    /// Unknown project.
    #[error("project {project:?} is not approved in workspace {root} (approved: {known})")]
    UnknownProject {
        /// The workspace.
        root: PathBuf,
        /// The project asked for.
        project: String,
        /// The projects there are.
        known: String,
    },
    /// The acting user may not do this.
    #[error("user {user:?} is not an approved {role} of project {project}")]
    NotApproved {
        /// The acting user.
        user: String,
        /// The role needed.
        role: &'static str,
        /// The project.
        project: String,
    },
    /// A policy problem.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The project's data is missing or its manifest does not verify.
    #[error("project {project}: {message}")]
    Data {
        /// The project.
        project: String,
        /// What is wrong.
        message: String,
    },
}

impl crate::error::Classify for WorkspaceError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            WorkspaceError::NotApproved { .. }
            | WorkspaceError::UnknownProject { .. }
            | WorkspaceError::Data { .. } => ErrorKind::Refused,
            _ => ErrorKind::Failed,
        }
    }
}

/// An opened workspace.
#[derive(Debug, Clone)]
pub struct Workspace {
    root: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WorkspaceError + '_ {
    move |source| WorkspaceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Workspace {
    /// Create a new workspace in an empty or missing folder.
    pub fn init(root: &Path) -> Result<Self, WorkspaceError> {
        if root.exists() && std::fs::read_dir(root).map_err(io(root))?.next().is_some() {
            return Err(WorkspaceError::NotEmpty(root.to_path_buf()));
        }
        for d in ["", "audit", "projects"] {
            std::fs::create_dir_all(root.join(d)).map_err(io(root))?;
        }
        crate::durable::write_atomic(
            &root.join(WORKSPACE_FILE),
            b"# tre workspace\nformat = 1\n",
            crate::durable::Mode::Shared,
        )
        .map_err(|e| WorkspaceError::Io {
            path: root.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
        Ok(Workspace {
            root: root.to_path_buf(),
        })
    }

    /// Open an existing workspace.
    pub fn open(root: &Path) -> Result<Self, WorkspaceError> {
        if !root.join(WORKSPACE_FILE).is_file() {
            return Err(WorkspaceError::NotWorkspace(root.to_path_buf()));
        }
        Ok(Workspace {
            root: root.to_path_buf(),
        })
    }

    /// The workspace folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The audit log file.
    pub fn audit_log(&self) -> PathBuf {
        self.root.join("audit").join("audit.jsonl")
    }

    /// A project's folder.
    pub fn project_dir(&self, id: &str) -> PathBuf {
        self.root.join("projects").join(id)
    }

    /// Approve a project: copy its policy (and the codelists it names) into the workspace.
    pub fn add_project(
        &self,
        policy_path: &Path,
        schemas: &SchemaSet,
    ) -> Result<Policy, WorkspaceError> {
        let policy = Policy::load(policy_path, schemas)?;
        let dir = self.project_dir(&policy.project.id);
        for d in ["data", "results", "requests", "released"] {
            std::fs::create_dir_all(dir.join(d)).map_err(io(&dir))?;
        }
        let base = policy_path.parent().unwrap_or(Path::new("."));
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
                    std::fs::create_dir_all(parent).map_err(io(&target))?;
                }
                std::fs::copy(&p, &target).map_err(io(&target))?;
            }
        }
        std::fs::copy(policy_path, dir.join("policy.toml")).map_err(io(&dir))?;
        Ok(policy)
    }

    /// Project ids.
    pub fn projects(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.root.join("projects"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().join("policy.toml").is_file())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Load an approved project's policy.
    pub fn project(&self, id: &str, schemas: &SchemaSet) -> Result<Policy, WorkspaceError> {
        let path = self.project_dir(id).join("policy.toml");
        if !path.is_file() {
            return Err(WorkspaceError::UnknownProject {
                root: self.root.clone(),
                project: id.to_string(),
                known: self.projects().join(", "),
            });
        }
        Ok(Policy::load(&path, schemas)?)
    }

    /// Refuse unless `user` holds `role` ("analyst" or "output checker") in the project.
    pub fn authorise(&self, policy: &Policy, user: &str, role: Role) -> Result<(), WorkspaceError> {
        let tre = policy.tre.as_ref();
        let list = match role {
            Role::Analyst => tre.map(|t| &t.users),
            Role::Checker => tre.map(|t| &t.output_checkers),
        };
        if list.is_some_and(|l| l.iter().any(|u| u == user)) {
            Ok(())
        } else {
            Err(WorkspaceError::NotApproved {
                user: user.to_string(),
                role: role.name(),
                project: policy.project.id.clone(),
            })
        }
    }

    /// The project's readable datasets: every table its extract manifest names and whose
    /// bytes verify, narrowed to the policy's `datasets` list if it has one.
    pub fn datasets(&self, policy: &Policy) -> Result<Vec<(String, PathBuf)>, WorkspaceError> {
        let id = &policy.project.id;
        let data = self.project_dir(id).join("data");
        let err = |message: String| WorkspaceError::Data {
            project: id.clone(),
            message,
        };
        let bytes = std::fs::read(data.join("manifest.json")).map_err(|_| {
            err(format!(
                "no extract manifest in {}; run `tre extract --out {}`",
                data.display(),
                data.display()
            ))
        })?;
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| err(format!("unreadable manifest.json: {e}")))?;
        if manifest.project != *id {
            return Err(err(format!(
                "the data in {} was extracted for project {:?}",
                data.display(),
                manifest.project
            )));
        }
        let allowed = policy.tre.as_ref().and_then(|t| t.datasets.clone());
        let mut out = Vec::new();
        for (table, entry) in &manifest.tables {
            if allowed.as_ref().is_some_and(|a| !a.contains(table)) {
                continue;
            }
            let Some(o) = &entry.output else { continue };
            let path = data.join(&o.path);
            let b = std::fs::read(&path).map_err(|e| err(format!("{}: {e}", path.display())))?;
            if sha256_hex(&b) != o.sha256 {
                return Err(err(format!(
                    "{} does not match its manifest (sha256); it has been changed since the extract",
                    path.display()
                )));
            }
            out.push((table.clone(), path));
        }
        Ok(out)
    }
}

/// A role in a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An approved analyst.
    Analyst,
    /// An approved output checker.
    Checker,
}

impl Role {
    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Role::Analyst => "analyst",
            Role::Checker => "output checker",
        }
    }
}
