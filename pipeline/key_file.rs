//! Loading a project key file for real use: [`crate::pseudonym::ProjectKey::load`]'s rules
//! (64 hex characters, mode 0600, a regular file of ours, not obviously weak) plus one
//! more: the key docs/contracts.md publishes as its test vector (bytes `00 01 .. 1f`) is
//! refused.
//!
//! Sits in front of every command that reads a key file (`tre extract`, `tre purge`);
//! `tre keygen` and `tre demo` draw keys from the OS random source. Anyone can recompute
//! every pseudonym made under the published key, so data pseudonymised with it would be
//! re-identifiable by anyone holding an NHS number list. Tests use other fixed keys; the
//! vector itself is checked as a unit test of the HMAC, never through this loader.
//! Danger: the key is the project's one secret; errors name the file, never its content.

use std::path::{Path, PathBuf};

use crate::pseudonym::{KeyError, ProjectKey};

/// The fingerprint of the published test key of docs/contracts.md (`000102...1e1f`).
pub const PUBLISHED_TEST_KEY_FINGERPRINT: &str = "ad3e1ee3fff41f02";

/// Why a key file cannot be used as a project key.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The key file itself is unusable (unreadable, exposed, malformed, weak).
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The key is the published test vector of docs/contracts.md.
    #[error(
        "key file {} holds the published test-vector key (00 01 .. 1f from docs/contracts.md, fingerprint {PUBLISHED_TEST_KEY_FINGERPRINT}): anyone can recompute its pseudonyms, so it is never a project key; generate one with `tre keygen --out FILE`",
        path.display()
    )]
    PublishedTestKey {
        /// The key file.
        path: PathBuf,
    },
}

impl crate::error::Classify for KeyFileError {
    fn kind(&self) -> crate::error::ErrorKind {
        match self {
            KeyFileError::Key(e) => crate::error::Classify::kind(e),
            KeyFileError::PublishedTestKey { .. } => crate::error::ErrorKind::Refused,
        }
    }
}

/// Load a project key file, refusing everything [`ProjectKey::load`] refuses and the
/// published test-vector key.
pub fn load_project_key(path: &Path) -> Result<ProjectKey, KeyFileError> {
    let key = ProjectKey::load(path)?;
    refuse_published(key, path)
}

/// `key` unless it is the published test-vector key.
fn refuse_published(key: ProjectKey, path: &Path) -> Result<ProjectKey, KeyFileError> {
    if key.fingerprint() == PUBLISHED_TEST_KEY_FINGERPRINT {
        return Err(KeyFileError::PublishedTestKey {
            path: path.to_path_buf(),
        });
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_file(dir: &Path, hex: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("k.key");
        std::fs::write(&p, format!("{hex}\n")).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        p
    }

    #[test]
    fn the_fingerprint_constant_is_the_published_keys() {
        let published = ProjectKey::from_bytes(std::array::from_fn(|i| i as u8));
        assert_eq!(published.fingerprint(), PUBLISHED_TEST_KEY_FINGERPRINT);
    }

    #[test]
    fn defect_10_the_published_test_vector_key_is_refused() {
        let t = tempfile::tempdir().expect("tmp");
        let p = key_file(
            t.path(),
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        );
        let e = load_project_key(&p).expect_err("refused");
        assert!(matches!(e, KeyFileError::PublishedTestKey { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("k.key") && msg.contains("test-vector"),
            "{msg}"
        );
        assert!(!msg.contains("0001020304"), "{msg}");
        assert_eq!(
            crate::error::Classify::kind(&e),
            crate::error::ErrorKind::Refused
        );
        // Upper-case hex is the same key.
        let p = key_file(
            t.path(),
            "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F",
        );
        assert!(matches!(
            load_project_key(&p),
            Err(KeyFileError::PublishedTestKey { .. })
        ));
    }

    #[test]
    fn other_keys_load() {
        let t = tempfile::tempdir().expect("tmp");
        let p = key_file(
            t.path(),
            "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f",
        );
        let k = load_project_key(&p).expect("loads");
        assert_eq!(k.fingerprint(), "28290daffd0cb76c");
    }
}
