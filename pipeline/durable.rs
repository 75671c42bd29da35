//! Crash-safe files: the one atomic writer of the crate.
//!
//! Owns the durability contract (docs/contracts.md, Durability): a file is written under
//! a random temporary name in its final directory (created with `O_CREAT|O_EXCL`, so a
//! planted file or symlink at that name is never followed or overwritten), `fsync`ed,
//! renamed into place and the directory `fsync`ed; any write, `fsync` or rename error
//! aborts, with no retry. Files are hashed as they are written, so a manifest's sha256
//! and size need no second read. Infrastructure, below every stage: it imports only
//! [`crate::digest`].
//! Danger: a half-written file must never carry a final name: an [`AtomicFile`] dropped
//! without [`AtomicFile::commit`] removes its temporary file, on every failure path.
//!
//! Crash points (debug builds only): every durable step (a temporary file created, its
//! bytes written out, `fsync`, rename, hard link, directory `fsync`) calls
//! [`crash_point`]. With `TRE_CRASH_AT=N` in the environment of a debug build, each step
//! is numbered on stderr and the process aborts at step N, so a test can enumerate
//! every point of a run at which a crash may leave the disk (`tests/it/crash.rs`).
//! Release builds compile the hook to nothing and never read the variable.

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
    fn new(path: &Path, source: std::io::Error) -> Self {
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
