//! Crash-safe files: the one atomic writer of the crate.
//!
//! Owns the durability contract (docs/contracts.md, Durability): a file is written under
//! a random temporary name in its final directory (created with `O_CREAT|O_EXCL`, so a
//! planted file or symlink at that name is never followed or overwritten), `fsync`ed,
//! renamed into place and the directory `fsync`ed; any write, `fsync` or rename error
//! aborts, with no retry. Files are hashed as they are written, so a manifest's sha256
//! and size need no second read. Infrastructure, below every stage: it imports only
//! [`crate::digest`] (and `rustix` for the no-follow walk).
//! Danger: a half-written file must never carry a final name: an [`AtomicFile`] dropped
//! without [`AtomicFile::commit`] removes its temporary file, on every failure path.
//!
//! Crash points (debug builds only): every durable step (a temporary file created, its
//! bytes written out, `fsync`, rename, hard link, directory `fsync`) calls
//! [`crash_point`]. With `TRE_CRASH_AT=N` in the environment of a debug build, each step
//! is numbered on stderr and the process aborts at step N, so a test can enumerate
//! every point of a run at which a crash may leave the disk (`tests/it/crash.rs`).
//! Release builds compile the hook to nothing and never read the variable.
//!
//! No-follow paths: a folder registered with [`register_root`] (the TRE workspace, when a
//! process opens it) is walked component by component with `openat(O_NOFOLLOW)` by
//! [`open_nofollow`], [`read_dir_nofollow`] and before every [`AtomicFile::create`] under
//! it, so a symlink planted anywhere below the root (a job folder, a request file) is
//! refused at the moment of use, not only at start. Staged writes ([`stage`], then
//! [`publish_new`]) give callers a two-step write: bytes durable under a name no reader
//! trusts, then a no-replace rename (hard link + unlink) into place.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::HashingWriter;

/// A file could not be written durably. The caller must abort.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {}: {source}", path.display())]
pub struct DurableError {
    /// The file (its final name).
    pub path: PathBuf,
    /// The underlying error.
    #[source]
    pub source: std::io::Error,
}

impl DurableError {
    /// A durable-write error at `path`.
    pub fn new(path: &Path, source: std::io::Error) -> Self {
        DurableError {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Who may read a new file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 0600: raw rows, workspace records, keys.
    Private,
    /// 0640: files an auditors' group may read (the audit log and its head).
    GroupRead,
    /// 0644: released outputs.
    Shared,
}

impl Mode {
    fn bits(self) -> u32 {
        match self {
            Mode::Private => 0o600,
            Mode::GroupRead => 0o640,
            Mode::Shared => 0o644,
        }
    }
}

/// The environment variable naming the durable step at which a debug build aborts.
pub const CRASH_AT_VAR: &str = "TRE_CRASH_AT";

/// A durable step has just completed: in a debug build run with `TRE_CRASH_AT=N`, number
/// it on stderr (`durable step K: WHAT`) and abort the process at step N (0: never), as
/// a crash or `kill -9` would, with no destructor run. A no-op in release builds.
#[cfg(debug_assertions)]
pub fn crash_point(what: &'static str) {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static AT: OnceLock<Option<u64>> = OnceLock::new();
    static STEPS: AtomicU64 = AtomicU64::new(0);
    let at = AT.get_or_init(|| {
        std::env::var(CRASH_AT_VAR)
            .ok()
            .and_then(|v| v.trim().parse().ok())
    });
    let Some(at) = *at else {
        return;
    };
    let step = STEPS.fetch_add(1, Ordering::SeqCst) + 1;
    eprintln!("durable step {step}: {what}");
    if step == at {
        std::process::abort();
    }
}

/// A durable step has just completed (release build: nothing happens).
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn crash_point(_what: &'static str) {}

/// `fsync` the directory holding `path`, so a rename in it is durable.
pub fn fsync_parent(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()?;
    crash_point("directory fsync");
    Ok(())
}

/// A file's final name, size and SHA-256.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileRecord {
    /// Path (relative to the output directory in manifests).
    pub path: String,
    /// Size in bytes.
    #[serde(alias = "bytes")]
    pub size: u64,
    /// Lowercase hex SHA-256.
    pub sha256: String,
}

/// A random temporary sibling of `target`: `.<name>.tmp-<16 hex>`.
fn temporary_name(target: &Path) -> std::io::Result<PathBuf> {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| std::io::Error::other("the target has no file name"))?;
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(target.with_file_name(format!(".{name}.tmp-{}", crate::digest::hex(&nonce))))
}

/// A file written under a temporary name and renamed into place on `commit`.
pub struct AtomicFile {
    writer: Option<HashingWriter<BufWriter<File>>>,
    tmp: PathBuf,
    target: PathBuf,
}

impl std::fmt::Debug for AtomicFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AtomicFile({})", self.target.display())
    }
}

impl AtomicFile {
    /// Create `target`'s temporary sibling with `mode`. The temporary name is random and
    /// created exclusively: an existing file or symlink there is an error, never followed.
    pub fn create(target: &Path, mode: Mode) -> Result<Self, DurableError> {
        check_parent(target).map_err(|e| DurableError::new(target, e))?;
        let tmp = temporary_name(target).map_err(|e| DurableError::new(target, e))?;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(mode.bits());
        }
        let file = opts.open(&tmp).map_err(|e| DurableError::new(&tmp, e))?;
        crash_point("temporary file created");
        Ok(AtomicFile {
            writer: Some(HashingWriter::new(BufWriter::with_capacity(1 << 20, file))),
            tmp,
            target: target.to_path_buf(),
        })
    }

    /// The final name.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Flush, `fsync`, rename into place, `fsync` the directory. On any error the
    /// temporary file is removed.
    pub fn commit(mut self) -> Result<FileRecord, DurableError> {
        let Some(w) = self.writer.take() else {
            return Err(DurableError::new(
                &self.target,
                std::io::Error::other("bug: file committed twice"),
            ));
        };
        let result = Self::finish(w, &self.tmp, &self.target);
        if result.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        result
    }

    fn finish(
        w: HashingWriter<BufWriter<File>>,
        tmp: &Path,
        target: &Path,
    ) -> Result<FileRecord, DurableError> {
        let err = |e| DurableError::new(target, e);
        let (inner, sha256, size) = w.finish();
        let file = inner.into_inner().map_err(|e| err(e.into_error()))?;
        crash_point("written");
        file.sync_all().map_err(err)?;
        crash_point("fsync");
        drop(file);
        std::fs::rename(tmp, target).map_err(err)?;
        crash_point("rename");
        fsync_parent(target).map_err(err)?;
        Ok(FileRecord {
            path: target.to_string_lossy().into_owned(),
            size,
            sha256,
        })
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.writer {
            Some(w) => w.write(buf),
            None => Err(std::io::Error::other("file already committed")),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.writer {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Write `bytes` atomically to `target`, replacing any file of that name.
pub fn write_atomic(target: &Path, bytes: &[u8], mode: Mode) -> Result<FileRecord, DurableError> {
    let mut f = AtomicFile::create(target, mode)?;
    f.write_all(bytes)
        .map_err(|e| DurableError::new(target, e))?;
    f.commit()
}

/// Write `bytes` atomically to `target`, which must not exist yet: the file is linked
/// into place with `link(2)`, which fails rather than replace an existing name.
pub fn write_new(target: &Path, bytes: &[u8], mode: Mode) -> Result<FileRecord, DurableError> {
    let tmp = temporary_name(target).map_err(|e| DurableError::new(target, e))?;
    let staged = tmp.with_file_name(format!(
        "{}.staged",
        tmp.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let mut f = AtomicFile::create(&staged, mode)?;
    f.write_all(bytes)
        .map_err(|e| DurableError::new(target, e))?;
    let rec = f.commit()?;
    let linked = std::fs::hard_link(&staged, target);
    if linked.is_ok() {
        crash_point("hard link");
    }
    let _ = std::fs::remove_file(&staged);
    linked.map_err(|e| DurableError::new(target, e))?;
    fsync_parent(target).map_err(|e| DurableError::new(target, e))?;
    Ok(FileRecord {
        path: target.to_string_lossy().into_owned(),
        ..rec
    })
}

// -- no-follow paths under registered roots ------------------------------------------------

static ROOTS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Register `root` (as given and canonical): every path under it is from now on opened
/// by walking its components without following a symlink.
pub fn register_root(root: &Path) {
    let mut roots = ROOTS.lock().unwrap_or_else(|p| p.into_inner());
    let mut add = |p: PathBuf| {
        if !roots.contains(&p) {
            roots.push(p);
        }
    };
    add(root.to_path_buf());
    if let Ok(c) = std::fs::canonicalize(root) {
        add(c);
    }
}

/// The registered root `path` lies under, and the components below it.
fn under_root(path: &Path) -> Option<(PathBuf, Vec<std::ffi::OsString>)> {
    let roots = ROOTS.lock().unwrap_or_else(|p| p.into_inner());
    let root = roots
        .iter()
        .filter(|r| path.starts_with(r))
        .max_by_key(|r| r.components().count())?
        .clone();
    let rest = path.strip_prefix(&root).ok()?;
    let mut comps = Vec::new();
    for c in rest.components() {
        match c {
            std::path::Component::Normal(n) => comps.push(n.to_os_string()),
            std::path::Component::CurDir => {}
            _ => return Some((root, vec![std::ffi::OsString::from("..")])),
        }
    }
    Some((root, comps))
}

/// Why a no-follow walk refused a path.
#[derive(Debug)]
pub enum NoFollow {
    /// This path (a prefix of the one asked for) is a symlink.
    Symlink(PathBuf),
    /// This path is not a folder or regular file where one is needed.
    NotRegular(PathBuf),
    /// Other I/O trouble at this path.
    Io(PathBuf, std::io::Error),
}

impl NoFollow {
    /// As an I/O error (for callers that report `std::io::Error`).
    pub fn into_io(self) -> std::io::Error {
        match self {
            NoFollow::Symlink(p) => std::io::Error::other(format!(
                "{} is a symlink; the workspace never follows one",
                p.display()
            )),
            NoFollow::NotRegular(p) => {
                std::io::Error::other(format!("{} is not a regular file or folder", p.display()))
            }
            NoFollow::Io(_, e) => e,
        }
    }
}

fn nofollow_err(
    at: PathBuf,
    e: rustix::io::Errno,
    dirfd: &impl std::os::fd::AsFd,
    name: &std::ffi::OsStr,
) -> NoFollow {
    let link = rustix::fs::statat(dirfd, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
        .map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Symlink)
        .unwrap_or(false);
    if link || e == rustix::io::Errno::LOOP {
        NoFollow::Symlink(at)
    } else if e == rustix::io::Errno::NOTDIR {
        NoFollow::NotRegular(at)
    } else {
        NoFollow::Io(at, std::io::Error::from_raw_os_error(e.raw_os_error()))
    }
}

/// Open the folder `dir` without following a symlink at or below a registered root (a
/// folder outside every root is opened normally).
pub fn open_dir_nofollow(dir: &Path) -> Result<std::os::fd::OwnedFd, NoFollow> {
    use rustix::fs::{Mode as M, OFlags};
    let dflags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let Some((root, comps)) = under_root(dir) else {
        return rustix::fs::open(dir, dflags, M::empty()).map_err(|e| {
            NoFollow::Io(
                dir.to_path_buf(),
                std::io::Error::from_raw_os_error(e.raw_os_error()),
            )
        });
    };
    let mut fd = rustix::fs::open(&root, dflags, M::empty()).map_err(|e| {
        NoFollow::Io(
            root.clone(),
            std::io::Error::from_raw_os_error(e.raw_os_error()),
        )
    })?;
    let mut at = root;
    for c in comps {
        at.push(&c);
        if c == ".." {
            return Err(NoFollow::NotRegular(at));
        }
        fd = match rustix::fs::openat(&fd, c.as_os_str(), dflags | OFlags::NOFOLLOW, M::empty()) {
            Ok(f) => f,
            Err(e) => return Err(nofollow_err(at, e, &fd, &c)),
        };
    }
    Ok(fd)
}

/// Open a regular file for reading without following a symlink, at its name or (under a
/// registered root) at any folder between the root and it.
pub fn open_nofollow(path: &Path) -> Result<File, NoFollow> {
    use rustix::fs::{Mode as M, OFlags};
    let (parent, name) = match (path.parent(), path.file_name()) {
        (Some(p), Some(n)) => (p, n),
        _ => return Err(NoFollow::NotRegular(path.to_path_buf())),
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let dir = open_dir_nofollow(parent)?;
    let fd = rustix::fs::openat(
        &dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        M::empty(),
    )
    .map_err(|e| nofollow_err(path.to_path_buf(), e, &dir, name))?;
    let file = File::from(fd);
    match file.metadata() {
        Ok(m) if m.is_file() => Ok(file),
        Ok(_) => Err(NoFollow::NotRegular(path.to_path_buf())),
        Err(e) => Err(NoFollow::Io(path.to_path_buf(), e)),
    }
}

/// The entry names of folder `dir` (no `.`/`..`), opened as [`open_dir_nofollow`] does.
pub fn read_dir_nofollow(dir: &Path) -> Result<Vec<std::ffi::OsString>, NoFollow> {
    use std::os::unix::ffi::OsStrExt;
    let fd = open_dir_nofollow(dir)?;
    let io = |e: rustix::io::Errno| {
        NoFollow::Io(
            dir.to_path_buf(),
            std::io::Error::from_raw_os_error(e.raw_os_error()),
        )
    };
    let mut names = Vec::new();
    for e in rustix::fs::Dir::new(fd).map_err(io)? {
        let e = e.map_err(io)?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(std::ffi::OsStr::from_bytes(n).to_os_string());
        }
    }
    names.sort();
    Ok(names)
}

/// Refuse when a folder between a registered root and `path`'s folder is a symlink.
fn check_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() && under_root(p).is_some() => {
            open_dir_nofollow(p).map(|_| ()).map_err(NoFollow::into_io)
        }
        _ => Ok(()),
    }
}

// -- staged writes ---------------------------------------------------------------------------

/// Write `bytes` durably as the new file `staged` (never over an existing file or
/// symlink): created `O_EXCL`, written, `fsync`ed, folder `fsync`ed. A staged file is
/// under a name no reader trusts; [`publish_new`] gives it its final name.
pub fn stage(staged: &Path, bytes: &[u8], mode: Mode) -> Result<FileRecord, DurableError> {
    let err = |e| DurableError::new(staged, e);
    check_parent(staged).map_err(err)?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode.bits());
        opts.custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
    }
    let mut file = opts.open(staged).map_err(err)?;
    crash_point("staged file created");
    let result = file
        .write_all(bytes)
        .and_then(|_| {
            crash_point("staged file written");
            file.sync_all()
        })
        .and_then(|_| {
            crash_point("staged file fsync");
            fsync_parent(staged)
        });
    if let Err(e) = result {
        let _ = std::fs::remove_file(staged);
        return Err(err(e));
    }
    Ok(FileRecord {
        path: staged.to_string_lossy().into_owned(),
        size: bytes.len() as u64,
        sha256: crate::digest::sha256_hex(bytes),
    })
}

/// Give the staged file `staged` the name `target` without ever replacing an existing
/// file or symlink (hard link, then unlink the staged name), and `fsync` the folder.
pub fn publish_new(staged: &Path, target: &Path) -> Result<(), DurableError> {
    let err = |e| DurableError::new(target, e);
    check_parent(target).map_err(err)?;
    std::fs::hard_link(staged, target).map_err(err)?;
    crash_point("published (hard link)");
    std::fs::remove_file(staged).map_err(err)?;
    crash_point("staged name removed");
    fsync_parent(target).map_err(err)
}

/// Remove `path` if it exists (never following a symlink: a symlink is removed, not its
/// referent) and `fsync` its folder.
pub fn remove_durably(path: &Path) -> Result<(), DurableError> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            crash_point("removed");
            fsync_parent(path).map_err(|e| DurableError::new(path, e))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DurableError::new(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leftovers(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn dropped_atomic_file_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("t.bin");
        let mut f = AtomicFile::create(&target, Mode::Shared).expect("create");
        f.write_all(b"half").expect("write");
        drop(f);
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn commit_hashes_and_renames() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("t.bin");
        let rec = write_atomic(&target, b"abc", Mode::Private).expect("write");
        assert_eq!(rec.size, 3);
        assert_eq!(rec.sha256, crate::digest::sha256_hex(b"abc"));
        assert_eq!(leftovers(dir.path()), vec!["t.bin".to_string()]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&target)
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn defect_9_a_failed_commit_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The final name is a non-empty folder, so the rename fails after the write.
        let target = dir.path().join("out.parquet");
        std::fs::create_dir(&target).expect("dir");
        std::fs::write(target.join("x"), b"x").expect("x");
        let mut f = AtomicFile::create(&target, Mode::Shared).expect("create");
        f.write_all(&vec![7u8; 1 << 20]).expect("write");
        assert!(f.commit().is_err());
        assert_eq!(leftovers(dir.path()), vec!["out.parquet".to_string()]);
    }

    #[test]
    fn write_new_never_replaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("m.json");
        write_new(&target, b"first", Mode::Shared).expect("first");
        let again = write_new(&target, b"second", Mode::Shared);
        assert!(again.is_err());
        assert_eq!(std::fs::read(&target).expect("read"), b"first");
        assert_eq!(leftovers(dir.path()), vec!["m.json".to_string()]);
    }

    #[cfg(unix)]
    #[test]
    fn planted_symlink_is_never_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").expect("victim");
        let target = dir.path().join("out.json");
        // Temporary names are random, so plant links at every name a writer could pick:
        // the target itself is replaced by rename (the link, not its referent).
        std::os::unix::fs::symlink(&victim, &target).expect("symlink");
        write_atomic(&target, b"new", Mode::Shared).expect("write");
        assert_eq!(std::fs::read(&victim).expect("victim"), b"keep");
        assert!(
            !std::fs::symlink_metadata(&target)
                .expect("meta")
                .file_type()
                .is_symlink()
        );
    }
}
