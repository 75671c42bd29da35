//! Where the extract may write: output, quarantine and input directories resolved (after
//! `..` and symlinks), kept distinct and un-nested, never inside a research-environment
//! workspace; an advisory lock on each for the whole run; and `--overwrite` limited to
//! files a previous run named.
//!
//! Each directory the extract writes gets a listing (`.tre-extract.json`) naming the files
//! the run will produce before the first of them is created; it is removed after the
//! manifest. `--overwrite` deletes only the files a listing or a previous manifest names
//! (and their temporary siblings), so a mistyped path never empties an unrelated folder.
//! Danger: this module deletes files; every name it deletes is a single plain file name
//! read from our own listing or manifest, joined to a directory that was checked here.

use std::fs::File;
use std::path::{Component, Path, PathBuf};

use crate::durable::{Mode, write_atomic};

/// The listing file's name.
pub const LISTING: &str = ".tre-extract.json";

/// A directory problem. Always bad usage (exit 2); nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// Two roles resolve to the same directory.
    #[error("the {a} directory and the {b} directory are the same ({}); give distinct directories", path.display())]
    Same {
        /// First role.
        a: &'static str,
        /// Second role.
        b: &'static str,
        /// The resolved directory.
        path: PathBuf,
    },
    /// One directory lies inside another.
    #[error("the {inner} directory {} lies inside the {outer} directory {}; give directories that do not contain each other", inner_path.display(), outer_path.display())]
    Nested {
        /// The inner role.
        inner: &'static str,
        /// The inner directory (resolved).
        inner_path: PathBuf,
        /// The outer role.
        outer: &'static str,
        /// The outer directory (resolved).
        outer_path: PathBuf,
    },
    /// The directory is inside a research-environment workspace.
    #[error("the {role} directory {} is inside the workspace {}; extract outside it and install with `tre admin dataset add`", path.display(), workspace.display())]
    InsideWorkspace {
        /// The role.
        role: &'static str,
        /// The directory (resolved).
        path: PathBuf,
        /// The workspace root.
        workspace: PathBuf,
    },
    /// The directory holds files and `--overwrite` was not given.
    #[error("the {role} directory {} exists and is not empty; choose a new one or pass --overwrite", path.display())]
    NotEmpty {
        /// The role.
        role: &'static str,
        /// The directory.
        path: PathBuf,
    },
    /// `--overwrite` on a directory that no extract wrote.
    #[error("the {role} directory {} is not empty and holds no extract listing or manifest, so --overwrite will not touch it; choose a new directory", path.display())]
    NotOurs {
        /// The role.
        role: &'static str,
        /// The directory.
        path: PathBuf,
    },
    /// An existing quarantine directory that others may read or that another user owns.
    #[error("the quarantine directory {} already exists with mode {mode:o} or another owner; the extract creates its own (mode 0700): give a path that does not exist yet", path.display())]
    SharedQuarantine {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Another extract holds the directory's lock.
    #[error("another extract is writing to {}; wait for it to finish", path.display())]
    Locked {
        /// The directory.
        path: PathBuf,
    },
    /// A file-system call failed.
    #[error("cannot prepare {}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl crate::error::Classify for PathError {
    /// Always bad usage (exit 2): nothing was written.
    fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Failed
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PathError + '_ {
    move |source| PathError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `p` made absolute with symlinks resolved in its longest existing prefix and `..`
/// resolved in the rest.
pub fn resolve(p: &Path) -> Result<PathBuf, PathError> {
    let abs = std::path::absolute(p).map_err(io(p))?;
    let mut rest = Vec::new();
    let mut base = abs.as_path();
    let canon = loop {
        match base.canonicalize() {
            Ok(c) => break c,
            Err(_) => match (base.parent(), base.file_name()) {
                (Some(parent), Some(_)) | (Some(parent), None) => {
                    rest.push(base.components().next_back());
                    base = parent;
                }
                (None, _) => break base.to_path_buf(),
            },
        }
    };
    let mut out = canon;
    for c in rest.into_iter().rev().flatten() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    Ok(out)
}

/// The three directories, resolved.
#[derive(Debug, Clone)]
pub(super) struct Dirs {
    pub out: PathBuf,
    pub quarantine: PathBuf,
    pub input: PathBuf,
}

impl Dirs {
    /// Resolve and check: distinct, not nested, not inside a workspace; OUT and
    /// quarantine empty unless `overwrite` and written by an extract; an existing
    /// quarantine private and ours.
    pub fn check(
        out: &Path,
        quarantine: &Path,
        input: &Path,
        overwrite: bool,
    ) -> Result<Self, PathError> {
        let d = Dirs {
            out: resolve(out)?,
            quarantine: resolve(quarantine)?,
            input: resolve(input)?,
        };
        let roles = [
            ("output", &d.out),
            ("quarantine", &d.quarantine),
            ("input", &d.input),
        ];
        for (i, (a, pa)) in roles.iter().enumerate() {
            for (b, pb) in &roles[i + 1..] {
                if pa == pb {
                    return Err(PathError::Same {
                        a,
                        b,
                        path: pa.to_path_buf(),
                    });
                }
                for ((inner, ip), (outer, op)) in [((a, pa), (b, pb)), ((b, pb), (a, pa))] {
                    if ip.starts_with(op) {
                        return Err(PathError::Nested {
                            inner,
                            inner_path: ip.to_path_buf(),
                            outer,
                            outer_path: op.to_path_buf(),
                        });
                    }
                }
            }
        }
        for (role, p) in [("output", &d.out), ("quarantine", &d.quarantine)] {
            if let Some(ws) = workspace_of(p) {
                return Err(PathError::InsideWorkspace {
                    role,
                    path: p.clone(),
                    workspace: ws,
                });
            }
            check_reusable(role, p, overwrite)?;
        }
        check_private(&d.quarantine)?;
        Ok(d)
    }
}

/// The research-environment workspace holding `p` (a folder with `workspace.toml`), if
/// any: the extract never writes into one.
pub fn workspace_of(p: &Path) -> Option<PathBuf> {
    p.ancestors()
        .find(|a| a.join("workspace.toml").is_file())
        .map(Path::to_path_buf)
}

fn check_reusable(role: &'static str, dir: &Path, overwrite: bool) -> Result<(), PathError> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    // A folder holding only a listing's temporary (a run that crashed while claiming it)
    // counts as empty: nothing in it was ever named.
    let listing_tmp = format!(".{LISTING}.tmp-");
    let mut rd = rd.filter(|e| {
        e.as_ref().map_or(true, |e| {
            !e.file_name().to_string_lossy().starts_with(&listing_tmp)
        })
    });
    if rd.next().is_none() {
        return Ok(());
    }
    if !overwrite {
        return Err(PathError::NotEmpty {
            role,
            path: dir.to_path_buf(),
        });
    }
    if !dir.join(LISTING).is_file()
        && !dir.join("manifest.json").is_file()
        && !has_sibling_manifest(dir)
    {
        return Err(PathError::NotOurs {
            role,
            path: dir.to_path_buf(),
        });
    }
    Ok(())
}

/// A quarantine directory of an earlier run is recognised by its listing; the default
/// `OUT.quarantine` also by the manifest in `OUT`.
fn has_sibling_manifest(dir: &Path) -> bool {
    let s = dir.as_os_str().to_string_lossy();
    s.strip_suffix(".quarantine")
        .is_some_and(|out| Path::new(out).join("manifest.json").is_file())
}

fn check_private(dir: &Path) -> Result<(), PathError> {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::symlink_metadata(dir) else {
        return Ok(());
    };
    let mode = m.mode() & 0o7777;
    if !m.is_dir() || mode != 0o700 || m.uid() != rustix::process::getuid().as_raw() {
        return Err(PathError::SharedQuarantine {
            path: dir.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Create `dir` (mode 0700 when `private`) if it does not exist, and take its lock.
pub(super) fn create_and_lock(dir: &Path, private: bool) -> Result<File, PathError> {
    if !dir.exists() {
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let mut b = std::fs::DirBuilder::new();
        {
            use std::os::unix::fs::DirBuilderExt;
            b.mode(if private { 0o700 } else { 0o755 });
        }
        match b.create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(dir)(e)),
        }
        crate::durable::fsync_parent(dir).map_err(io(dir))?;
    }
    let f = File::open(dir).map_err(io(dir))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(PathError::Locked {
            path: dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(io(dir)(e)),
    }
}

/// The listing written into a directory before any of its files.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Listing {
    format: String,
    files: Vec<String>,
}

/// A single plain file name (no separators, no `..`).
fn plain(name: &str) -> Option<&str> {
    let mut c = Path::new(name).components();
    match (c.next(), c.next()) {
        (Some(Component::Normal(_)), None) if !name.contains('/') => Some(name),
        _ => None,
    }
}

/// Names of files an earlier run in `dir` said it wrote: its listing, `manifest_names`.
fn earlier_names(dir: &Path, manifest_names: &[String]) -> Vec<String> {
    let mut names: Vec<String> = manifest_names.to_vec();
    if let Ok(bytes) = std::fs::read(dir.join(LISTING))
        && let Ok(l) = serde_json::from_slice::<Listing>(&bytes)
    {
        names.extend(l.files);
    }
    names.retain(|n| plain(n).is_some() && n != LISTING);
    names.sort();
    names.dedup();
    names
}

/// Under the lock: refuse a directory that another run filled meanwhile, then write this
/// run's listing, naming its own files and (with `overwrite`) every file an earlier run
/// named. Returns those earlier names, for [`clear`]. Claim every directory before
/// clearing any: then, at every instant, each final-named file is named by a manifest
/// that still verifies or by a listing, so a crash at any point leaves nothing a rerun
/// with `--overwrite` does not recognise.
pub(super) fn claim(
    role: &'static str,
    dir: &Path,
    overwrite: bool,
    manifest_names: &[String],
    files: &[String],
) -> Result<Vec<String>, PathError> {
    check_reusable(role, dir, overwrite)?;
    let earlier = if overwrite {
        earlier_names(dir, manifest_names)
    } else {
        Vec::new()
    };
    let mut listed: Vec<String> = files.iter().chain(&earlier).cloned().collect();
    listed.sort();
    listed.dedup();
    let listing = Listing {
        format: "tre-extract-listing/1".into(),
        files: listed,
    };
    let json =
        serde_json::to_vec_pretty(&listing).map_err(|e| io(dir)(std::io::Error::other(e)))?;
    write_atomic(&dir.join(LISTING), &json, Mode::Private).map_err(|e| io(dir)(e.source))?;
    Ok(earlier)
}

/// After [`claim`]: delete the earlier manifest, the `earlier` files and temporaries a
/// crashed run left (of those names and of the listing).
pub(super) fn clear(dir: &Path, earlier: Vec<String>) -> Result<(), PathError> {
    let manifest = dir.join("manifest.json");
    if manifest.exists() {
        std::fs::remove_file(&manifest).map_err(io(&manifest))?;
        crate::durable::crash_point("earlier manifest removed");
        crate::durable::fsync_parent(&manifest).map_err(io(&manifest))?;
    }
    let mut names = earlier;
    names.push(LISTING.to_string());
    remove_named(dir, &names)
}

/// Delete `dir/<name>` and its temporary siblings `.<name>.tmp-*` for each name; the
/// listing itself always stays (only its temporaries go).
fn remove_named(dir: &Path, names: &[String]) -> Result<(), PathError> {
    let entries: Vec<String> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect();
    for e in entries {
        let ours = names
            .iter()
            .any(|n| e == *n || e.starts_with(&format!(".{n}.tmp-")))
            && e != LISTING;
        if ours {
            let p = dir.join(&e);
            if p.symlink_metadata()
                .is_ok_and(|m| m.is_file() || m.is_symlink())
            {
                std::fs::remove_file(&p).map_err(io(&p))?;
                crate::durable::crash_point("earlier file removed");
            }
        }
    }
    crate::durable::fsync_parent(&dir.join("x")).map_err(io(dir))
}

/// After the manifest: the listing is no longer needed.
pub(super) fn release(dir: &Path) -> Result<(), PathError> {
    let p = dir.join(LISTING);
    match std::fs::remove_file(&p) {
        Ok(()) => {
            crate::durable::crash_point("listing removed");
            crate::durable::fsync_parent(&p).map_err(io(&p))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(&p)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_handles_dotdot_through_missing_parts() {
        let t = tempfile::tempdir().expect("tmp");
        let base = resolve(t.path()).expect("base");
        std::fs::create_dir(t.path().join("x")).expect("x");
        let r = resolve(&t.path().join("x/../out/q")).expect("r");
        assert_eq!(r, base.join("out/q"));
        let r = resolve(&t.path().join("missing/../out")).expect("r");
        assert_eq!(r, base.join("out"));
    }

    #[test]
    fn plain_names_only() {
        assert_eq!(plain("a.parquet"), Some("a.parquet"));
        assert_eq!(plain("../a"), None);
        assert_eq!(plain("a/b"), None);
        assert_eq!(plain("/a"), None);
    }
}
