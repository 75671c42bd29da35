//! Loading a project key file for real use: [`crate::pseudonym::ProjectKey::load`]'s rules
//! (64 hex characters, mode 0600, a regular file of ours, not obviously weak) plus two
//! more: the key docs/contracts.md publishes as its test vector (bytes `00 01 .. 1f`) is refused,
//! and so is any key with visible structure ([`structure`]): hex that repeats with a
//! period of up to 32 characters, a run of bytes or hex digits stepping by a constant
//! (`00 01 02 ..`, `01 23 45 67 ..`, a block of zeros), or fewer than 16 distinct byte
//! values among the 32. A random key shows none of these except with a probability below
//! 10^-10; a typed, patterned or test key shows at least one.
//!
//! Sits in front of every command that reads a key file (`tre extract`, `tre purge`);
//! `tre keygen` and `tre demo` draw keys from the OS random source. Anyone can recompute
//! every pseudonym made under the published key, and can search a structured key's small
//! space, so data pseudonymised with either would be re-identifiable by anyone holding an
//! NHS number list. The vector itself is checked as a unit test of the HMAC, never through
//! this loader; the integration tests use a fixed key drawn once from a random source.
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

/// Load a project key file, refusing everything [`ProjectKey::load`] refuses, the
/// published test-vector key and any key with visible structure.
pub fn load_project_key(path: &Path) -> Result<ProjectKey, KeyFileError> {
    let key = refuse_published(ProjectKey::load(path)?, path)?;
    // The file was read and checked by `load`; read again for its bytes (the key type
    // never hands them out), and make sure it is the same key.
    let content =
        zeroize::Zeroizing::new(crate::trusted_file::read(path, 1024).map_err(KeyError::from)?);
    let bytes = zeroize::Zeroizing::new(key_bytes(&content).ok_or_else(|| changed(path))?);
    if ProjectKey::from_bytes(*bytes).fingerprint() != key.fingerprint() {
        return Err(changed(path).into());
    }
    match structure(&bytes) {
        Some(reason) => Err(KeyError::Weak {
            path: path.to_path_buf(),
            reason: format!("{reason}; a project key must be 32 bytes from a random source"),
        }
        .into()),
        None => Ok(key),
    }
}

fn changed(path: &Path) -> KeyError {
    KeyError::Malformed {
        path: path.to_path_buf(),
        reason: "it changed while it was being read".into(),
    }
}

/// The 32 bytes of a key file's content (64 hex digits and an optional newline).
fn key_bytes(content: &[u8]) -> Option<[u8; 32]> {
    let body = content
        .strip_suffix(b"\r\n")
        .or_else(|| content.strip_suffix(b"\n"))
        .unwrap_or(content);
    if body.len() != 64 {
        return None;
    }
    let hex = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(body.chunks_exact(2)) {
        *o = (hex(pair[0])? << 4) | hex(pair[1])?;
    }
    Some(out)
}

/// The fewest distinct byte values a key may hold (a random key has about 30 of 32).
const MIN_DISTINCT_BYTES: usize = 16;
/// The longest run of bytes stepping by one constant (`00 01 02`, `7f 7f 7f`) a key may
/// hold: a random key holds a run of 8 with probability about 10^-13.
const MAX_BYTE_RUN: usize = 7;
/// The longest run of hex digits stepping by one constant (`0123456789`): a random key
/// holds a run of 12 with probability about 10^-11.
const MAX_NIBBLE_RUN: usize = 11;

/// Why a key's bytes are not plausibly random, if they are not (never naming a byte).
pub fn structure(bytes: &[u8; 32]) -> Option<String> {
    let nibbles: Vec<u8> = bytes.iter().flat_map(|b| [b >> 4, b & 0xf]).collect();
    if let Some(p) = (1..=32).find(|&p| (p..64).all(|i| nibbles[i] == nibbles[i - p])) {
        return Some(format!("its 64 hex digits repeat every {p}"));
    }
    let run = longest_step_run(bytes, |a, b| b.wrapping_sub(a));
    if run > MAX_BYTE_RUN {
        return Some(format!(
            "{run} bytes in a row step by one constant (an ascending, descending or repeated run)"
        ));
    }
    let run = longest_step_run(&nibbles, |a, b| b.wrapping_sub(a) & 0xf);
    if run > MAX_NIBBLE_RUN {
        return Some(format!(
            "{run} hex digits in a row step by one constant (an ascending, descending or repeated run)"
        ));
    }
    let mut seen = [false; 256];
    bytes.iter().for_each(|&b| seen[usize::from(b)] = true);
    let distinct = seen.iter().filter(|&&s| s).count();
    if distinct < MIN_DISTINCT_BYTES {
        return Some(format!(
            "only {distinct} distinct byte values among 32, where a random key has about 30"
        ));
    }
    None
}

/// The longest run of values whose consecutive differences (`step`) are all equal.
fn longest_step_run(v: &[u8], step: impl Fn(u8, u8) -> u8) -> usize {
    let mut best = v.len().min(1);
    let mut len = best;
    let mut last: Option<u8> = None;
    for w in v.windows(2) {
        let d = step(w[0], w[1]);
        len = if last == Some(d) { len + 1 } else { 2 };
        last = Some(d);
        best = best.max(len);
    }
    best
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

    /// 32 bytes from a fixed random draw (`od -An -tx1 -N32 /dev/urandom`).
    const RANDOM_HEX: &str = "8f3a61c2d90be47a15f03c6e29b8d4a7703e9c12f6b54a8de17c0923b6fa5e41";

    #[test]
    fn other_keys_load() {
        let t = tempfile::tempdir().expect("tmp");
        let p = key_file(t.path(), RANDOM_HEX);
        assert!(load_project_key(&p).is_ok());
        // Upper-case hex and a CRLF ending are the same key.
        std::fs::write(&p, format!("{}\r\n", RANDOM_HEX.to_uppercase())).expect("write");
        assert!(load_project_key(&p).is_ok());
    }

    fn bytes_of(hex: &str) -> [u8; 32] {
        key_bytes(hex.as_bytes()).expect("64 hex digits")
    }

    #[test]
    fn defect_4_structured_keys_are_refused_as_a_class() {
        let cases = [
            ("0123456789abcdef".repeat(4), "repeat every 16"),
            ("deadbeef".repeat(8), "repeat every 8"),
            ("a5".repeat(32), "repeat every 2"),
            ("0".repeat(64), "repeat every 1"),
            (
                format!("{}{}", &RANDOM_HEX[..32], &RANDOM_HEX[..32]),
                "repeat every 32",
            ),
            (
                "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f".into(),
                "step",
            ),
            (
                "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f".into(),
                "step",
            ),
            (
                "fffefdfcfbfaf9f8f7f6f5f4f3f2f1f0efeeedecebeae9e8e7e6e5e4e3e2e1e0".into(),
                "step",
            ),
            (
                "00020406080a0c0e10121416181a1c1e20222426282a2c2e30323436383a3c3e".into(),
                "step",
            ),
            // Half random, half zeros.
            (format!("{}{}", &RANDOM_HEX[..32], "0".repeat(32)), "step"),
            // A random half, then an ascending run of hex digits.
            (
                format!("{}0123456789abcdef01237", &RANDOM_HEX[..43]),
                "hex digits",
            ),
            // 8 values shuffled over 32 bytes: no run, no period, few distinct bytes.
            (
                "1177aa33ee55cc99aa1133ee77cc5599ee33115599cc77aa55ee99aa33cc1177".into(),
                "distinct",
            ),
        ];
        for (hex, why) in &cases {
            let reason = structure(&bytes_of(hex)).unwrap_or_else(|| panic!("{hex} passed"));
            assert!(reason.contains(why), "{hex}: {reason}");
            assert!(
                !reason.contains(&hex[..8]),
                "the reason never shows the key: {reason}"
            );
        }
        assert_eq!(structure(&bytes_of(RANDOM_HEX)), None);
    }

    #[test]
    fn defect_4_random_keys_pass() {
        // A simple deterministic generator (splitmix64): 2000 keys, none refused.
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        for _ in 0..2000 {
            let mut k = [0u8; 32];
            for c in k.chunks_exact_mut(8) {
                c.copy_from_slice(&next().to_le_bytes());
            }
            assert_eq!(structure(&k), None);
        }
    }

    #[test]
    fn defect_4_a_structured_key_file_is_refused_without_showing_it() {
        let t = tempfile::tempdir().expect("tmp");
        let p = key_file(t.path(), &"0123456789abcdef".repeat(4));
        let e = load_project_key(&p).expect_err("refused");
        let msg = e.to_string();
        assert!(msg.contains("k.key") && msg.contains("weak"), "{msg}");
        assert!(!msg.contains("0123456789"), "{msg}");
        assert_eq!(
            crate::error::Classify::kind(&e),
            crate::error::ErrorKind::Refused
        );
    }
}
