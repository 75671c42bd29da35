//! Reading small trusted inputs (the project key, opt-out lists) safely.
//!
//! Owns one rule: such a file must be a regular file (never a FIFO, socket or device,
//! which could hang the run or be read until memory runs out), owned by the running user
//! or root, and no larger than a cap; it is opened without blocking and without
//! following a final symlink to a special file. Infrastructure below the stages: imports
//! nothing from them. Danger: the bytes read are secret or patient data; errors name the
//! file, never its content.

use std::io::Read;
use std::path::{Path, PathBuf};

/// Why a trusted input could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TrustedFileError {
    /// Opening, inspecting or reading failed.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Not a regular file.
    #[error("{} is not a regular file (a FIFO, device or directory); give a plain file", path.display())]
    NotRegular {
        /// The file.
        path: PathBuf,
    },
    /// Owned by another user.
    #[error("{} is owned by another user (uid {owner}); only files owned by you or root are trusted", path.display())]
    ForeignOwner {
        /// The file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
    },
    /// Larger than the cap.
    #[error("{} is larger than {max_bytes} bytes; this is not a file of the expected kind", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The cap.
        max_bytes: u64,
    },
}

impl crate::error::Classify for TrustedFileError {
    fn kind(&self) -> crate::error::ErrorKind {
        match self {
            TrustedFileError::Io { .. } => crate::error::ErrorKind::Failed,
            _ => crate::error::ErrorKind::Refused,
        }
    }
}

/// Whether a file owned by `owner` may be trusted by a process running as `me`: its own
/// files and root's, never another user's.
fn trusted_owner(owner: u32, me: u32) -> bool {
    owner == me || owner == 0
}

/// Read `path` whole: a regular file owned by us or root, at most `max_bytes`.
pub fn read(path: &Path, max_bytes: u64) -> Result<Vec<u8>, TrustedFileError> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let io = |source| TrustedFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        // A FIFO opened for reading would block until a writer appears.
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(TrustedFileError::NotRegular {
            path: path.to_path_buf(),
        });
    }
    if !trusted_owner(meta.uid(), rustix::process::getuid().as_raw()) {
        return Err(TrustedFileError::ForeignOwner {
            path: path.to_path_buf(),
            owner: meta.uid(),
        });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len().min(max_bytes)).unwrap_or(0));
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > max_bytes {
        return Err(TrustedFileError::TooLarge {
            path: path.to_path_buf(),
            max_bytes,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_small_file_is_read() {
        let t = tempfile::tempdir().expect("tmp");
        let p = t.path().join("f");
        std::fs::write(&p, b"abc").expect("write");
        assert_eq!(read(&p, 3).expect("read"), b"abc");
        assert!(matches!(
            read(&p, 2),
            Err(TrustedFileError::TooLarge { .. })
        ));
    }

    #[test]
    fn defect_10_a_file_owned_by_another_user_is_not_trusted() {
        assert!(trusted_owner(1000, 1000));
        assert!(trusted_owner(0, 1000), "root's files are trusted");
        assert!(!trusted_owner(1001, 1000));
        assert!(!trusted_owner(1000, 0), "not even by root");
    }

    #[test]
    fn directories_and_devices_are_refused() {
        let t = tempfile::tempdir().expect("tmp");
        assert!(matches!(
            read(t.path(), 10),
            Err(TrustedFileError::NotRegular { .. })
        ));
        assert!(matches!(
            read(Path::new("/dev/zero"), 10),
            Err(TrustedFileError::NotRegular { .. })
        ));
    }

    #[test]
    fn fifo_is_refused_without_hanging() {
        let t = tempfile::tempdir().expect("tmp");
        let p = t.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &p,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .expect("mkfifo");
        assert!(matches!(
            read(&p, 10),
            Err(TrustedFileError::NotRegular { .. })
        ));
    }
}
