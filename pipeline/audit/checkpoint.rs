//! Signed audit checkpoints: the log's head, signed with the workspace's ed25519 key, in a
//! small file the operator copies off-host.
//!
//! Owns the checkpoint key (created once per workspace by [`CheckpointKey::generate_into`]
//! at `WS/keys/audit-checkpoint.key`, mode 0600, its public half at
//! `WS/audit/checkpoint.pub`), the checkpoint file (`checkpoint-<seq>.json`, see
//! [`CheckpointRecord`]) and the byte string that is signed. The server calls
//! [`write_checkpoint`] every N entries and at shutdown; `tre audit verify --checkpoints`
//! checks copies against the log. Danger: the private key lives in the workspace, so a
//! checkpoint proves only what was true when it was copied off-host; never print, log or
//! `Debug` the key, and never replace it (older checkpoints are signed with it).

use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::error::{AuditError, durable_err, io_err, ser_err};
use super::head::Head;
use super::{AuditLog, GENESIS};
use crate::clock::Clock;
use crate::durable::{Mode, write_new};

/// The `format` of a checkpoint file, also the first line of what is signed.
pub const CHECKPOINT_FORMAT: &str = "tre-audit-checkpoint/1";

/// The private key file of a workspace: `WS/keys/audit-checkpoint.key`.
pub fn key_path(workspace: &Path) -> PathBuf {
    workspace.join("keys").join("audit-checkpoint.key")
}

/// The public key file of a workspace: `WS/audit/checkpoint.pub` (keep a copy off-host).
pub fn public_key_path(workspace: &Path) -> PathBuf {
    workspace.join("audit").join("checkpoint.pub")
}

/// Where the server writes a workspace's checkpoints: `WS/audit/checkpoints`.
pub fn workspace_checkpoint_dir(workspace: &Path) -> PathBuf {
    workspace.join("audit").join("checkpoints")
}

/// A checkpoint public key (ed25519), as 64 hex characters in files and records.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

impl PublicKey {
    /// Lowercase hex of the 32 key bytes.
    pub fn to_hex(&self) -> String {
        crate::digest::hex(self.0.as_bytes())
    }

    /// Parse 64 hex characters; `None` when they are not a valid key.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).ok()?;
        VerifyingKey::from_bytes(&bytes).ok().map(PublicKey)
    }

    /// Read a public key file (64 hex characters and an optional newline).
    pub fn load(path: &Path) -> Result<Self, AuditError> {
        let text = std::fs::read_to_string(path).map_err(io_err("read", path))?;
        PublicKey::from_hex(text.trim_end_matches('\n')).ok_or_else(|| AuditError::KeyInvalid {
            path: path.to_path_buf(),
            what: "checkpoint public key",
        })
    }
}

/// The workspace's checkpoint signing key. Its `Debug` shows the public half only.
pub struct CheckpointKey {
    signing: SigningKey,
}

impl std::fmt::Debug for CheckpointKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CheckpointKey(public {})", self.public_key().to_hex())
    }
}

impl CheckpointKey {
    /// Create the workspace's key from the OS random source: the private key at
    /// [`key_path`] (mode 0600, in a 0700 `keys` folder) and the public key at
    /// [`public_key_path`]. Refuses ([`AuditError::KeyExists`]) when either exists.
    pub fn generate_into(workspace: &Path) -> Result<Self, AuditError> {
        let path = key_path(workspace);
        let public = public_key_path(workspace);
        for p in [&path, &public] {
            if p.exists() {
                return Err(AuditError::KeyExists { path: p.clone() });
            }
        }
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut_slice()).map_err(|e| AuditError::Io {
            op: "draw random bytes for",
            path: path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let key = CheckpointKey {
            signing: SigningKey::from_bytes(&seed),
        };
        create_private_dir(path.parent().unwrap_or(workspace))?;
        let text = Zeroizing::new(format!("{}\n", crate::digest::hex(seed.as_slice())));
        write_new(&path, text.as_bytes(), Mode::Private).map_err(durable_err("write the key"))?;
        let pub_text = format!("{}\n", key.public_key().to_hex());
        if let Some(dir) = public.parent() {
            create_private_dir(dir)?;
        }
        write_new(&public, pub_text.as_bytes(), Mode::GroupRead)
            .map_err(durable_err("write the public key"))?;
        Ok(key)
    }

    /// Read the workspace's key. Refuses a key file readable by group or others.
    pub fn load(workspace: &Path) -> Result<Self, AuditError> {
        Self::load_file(&key_path(workspace))
    }

    /// Read a key file kept anywhere (the operator's path outside the workspace, given
    /// to the server). Refuses a key file readable by group or others.
    pub fn load_file(path: &Path) -> Result<Self, AuditError> {
        let path = path.to_path_buf();
        let meta = match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(AuditError::KeyMissing { path });
            }
            other => other.map_err(io_err("read", &path))?,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(AuditError::KeyExposed { path, mode });
            }
        }
        let text = Zeroizing::new(std::fs::read_to_string(&path).map_err(io_err("read", &path))?);
        let mut seed = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim_end_matches('\n'), seed.as_mut_slice()).map_err(|_| {
            AuditError::KeyInvalid {
                path: path.clone(),
                what: "checkpoint signing key",
            }
        })?;
        Ok(CheckpointKey {
            signing: SigningKey::from_bytes(&seed),
        })
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key())
    }

    /// A key from a fixed seed (tests and reproducible demos only).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        CheckpointKey {
            signing: SigningKey::from_bytes(&seed),
        }
    }
}

/// Create `dir` and any missing parents with mode 0700 (existing folders keep theirs).
fn create_private_dir(dir: &Path) -> Result<(), AuditError> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir).map_err(io_err("create", dir))
}

/// One checkpoint file: the log's head at `time`, signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointRecord {
    /// [`CHECKPOINT_FORMAT`].
    pub format: String,
    /// The last entry's `seq` (0 for an empty log).
    pub seq: u64,
    /// The last entry's `hash` ([`GENESIS`] for an empty log).
    pub hash: String,
    /// When it was signed, RFC 3339 in UTC, from the injected clock.
    pub time: String,
    /// The signing key's public half, hex.
    pub public_key: String,
    /// The ed25519 signature of [`CheckpointRecord::signed_bytes`], hex.
    pub signature: String,
}

/// Why a checkpoint's signature does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureProblem {
    /// Signed by another key than the trusted one.
    ForeignKey,
    /// The signature does not match the contents (edited, or forged).
    Invalid,
    /// Not a checkpoint of this format.
    WrongFormat,
}

impl CheckpointRecord {
    /// The canonical byte string that is signed: the format, `seq`, `hash` and `time`, one
    /// `name=value` per line.
    pub fn signed_bytes(seq: u64, hash: &str, time: &str) -> Vec<u8> {
        format!("{CHECKPOINT_FORMAT}\nseq={seq}\nhash={hash}\ntime={time}\n").into_bytes()
    }

    /// The file name for a checkpoint of `seq`.
    pub fn file_name(seq: u64) -> String {
        format!("checkpoint-{seq}.json")
    }

    /// Sign `head` at `time`.
    pub fn sign(key: &CheckpointKey, head: &Head, time: String) -> Self {
        let sig = key
            .signing
            .sign(&Self::signed_bytes(head.seq, &head.hash, &time));
        CheckpointRecord {
            format: CHECKPOINT_FORMAT.to_string(),
            seq: head.seq,
            hash: head.hash.clone(),
            time,
            public_key: key.public_key().to_hex(),
            signature: crate::digest::hex(&sig.to_bytes()),
        }
    }

    /// Check the signature under `trusted` (not under the key the record names).
    pub fn check_signature(&self, trusted: &PublicKey) -> Result<(), SignatureProblem> {
        if self.format != CHECKPOINT_FORMAT {
            return Err(SignatureProblem::WrongFormat);
        }
        if self.public_key != trusted.to_hex() {
            return Err(SignatureProblem::ForeignKey);
        }
        let mut sig = [0u8; 64];
        hex::decode_to_slice(&self.signature, &mut sig).map_err(|_| SignatureProblem::Invalid)?;
        let msg = Self::signed_bytes(self.seq, &self.hash, &self.time);
        trusted
            .0
            .verify_strict(&msg, &Signature::from_bytes(&sig))
            .map_err(|_| SignatureProblem::Invalid)
    }
}

/// Sign the log's current head and write it as `DIR/checkpoint-<seq>.json`, mode 0640
/// (`DIR` is created with mode 0700 if needed; a file is never replaced). Writing the same head twice returns the
/// existing checkpoint; a different hash for the same `seq` is
/// [`AuditError::CheckpointConflict`]. Refuses to sign a log whose tail does not verify.
pub fn write_checkpoint(
    log: &AuditLog,
    key: &CheckpointKey,
    dir: &Path,
    clock: &dyn Clock,
) -> Result<CheckpointRecord, AuditError> {
    let head = log.head()?.unwrap_or_else(|| Head {
        seq: 0,
        hash: GENESIS.to_string(),
    });
    let time = clock
        .now()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let record = CheckpointRecord::sign(key, &head, time);
    let mut text = serde_json::to_string_pretty(&record).map_err(ser_err("a checkpoint"))?;
    text.push('\n');
    create_private_dir(dir)?;
    let path = dir.join(CheckpointRecord::file_name(head.seq));
    match write_new(&path, text.as_bytes(), Mode::GroupRead) {
        Ok(_) => Ok(record),
        Err(e) if e.source.kind() == std::io::ErrorKind::AlreadyExists => {
            let existing = read_checkpoint(&path)?;
            match existing {
                Some(c) if c.seq == head.seq && c.hash == head.hash => Ok(c),
                _ => Err(AuditError::CheckpointConflict {
                    path,
                    dir: dir.to_path_buf(),
                    seq: head.seq,
                }),
            }
        }
        Err(e) => Err(durable_err("write the checkpoint")(e)),
    }
}

/// Read one checkpoint file: `Ok(None)` when it is not a checkpoint record.
pub fn read_checkpoint(path: &Path) -> Result<Option<CheckpointRecord>, AuditError> {
    let bytes = std::fs::read(path).map_err(io_err("read", path))?;
    Ok(serde_json::from_slice(&bytes).ok())
}

/// The `checkpoint-<seq>.json` files in `dir`, sorted by `seq`.
pub fn list_checkpoints(dir: &Path) -> Result<Vec<(u64, PathBuf)>, AuditError> {
    let mut found = Vec::new();
    for item in std::fs::read_dir(dir).map_err(io_err("list", dir))? {
        let item = item.map_err(io_err("list", dir))?;
        let name = item.file_name();
        let seq = name
            .to_str()
            .and_then(|n| n.strip_prefix("checkpoint-"))
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(seq) = seq {
            found.push((seq, item.path()));
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::audit::testutil::{build, clock, draft};

    #[test]
    fn sign_and_verify_round_trip() {
        let (dir, path) = build(3);
        let log = AuditLog::open(&path).unwrap();
        let key = CheckpointKey::from_seed([7; 32]);
        let out = dir.path().join("checkpoints");
        let c = write_checkpoint(&log, &key, &out, &clock(9)).unwrap();
        assert_eq!(c.seq, 3);
        assert_eq!(Some(c.hash.clone()), log.head().unwrap().map(|h| h.hash));
        let back = read_checkpoint(&out.join("checkpoint-3.json"))
            .unwrap()
            .unwrap();
        assert_eq!(back, c);
        assert_eq!(back.check_signature(&key.public_key()), Ok(()));
        assert_eq!(
            list_checkpoints(&out).unwrap(),
            vec![(3, out.join("checkpoint-3.json"))]
        );
        // The same head again is the same checkpoint; a new head is a new file.
        assert_eq!(write_checkpoint(&log, &key, &out, &clock(10)).unwrap(), c);
        log.append(draft(3), &clock(11)).unwrap();
        assert_eq!(
            write_checkpoint(&log, &key, &out, &clock(12)).unwrap().seq,
            4
        );
    }

    #[test]
    fn forged_or_foreign_signatures_are_refused() {
        let key = CheckpointKey::from_seed([7; 32]);
        let head = Head {
            seq: 5,
            hash: crate::audit::testutil::H.into(),
        };
        let good = CheckpointRecord::sign(&key, &head, "2025-01-01T00:00:00.000Z".into());
        let trusted = key.public_key();

        let mut moved = good.clone();
        moved.seq = 3; // claims an earlier head with the same signature
        assert_eq!(
            moved.check_signature(&trusted),
            Err(SignatureProblem::Invalid)
        );

        let mallory = CheckpointKey::from_seed([9; 32]);
        let forged = CheckpointRecord::sign(&mallory, &head, good.time.clone());
        assert_eq!(
            forged.check_signature(&trusted),
            Err(SignatureProblem::ForeignKey)
        );
        // Even claiming the trusted key, the signature does not hold.
        let mut claimed = forged;
        claimed.public_key = trusted.to_hex();
        assert_eq!(
            claimed.check_signature(&trusted),
            Err(SignatureProblem::Invalid)
        );

        let mut garbage = good.clone();
        garbage.signature = "zz".into();
        assert_eq!(
            garbage.check_signature(&trusted),
            Err(SignatureProblem::Invalid)
        );
    }

    #[test]
    fn a_rewritten_log_cannot_be_checkpointed_over_an_old_one() {
        let (dir, path) = build(3);
        let log = AuditLog::open(&path).unwrap();
        let key = CheckpointKey::from_seed([7; 32]);
        let out = dir.path().join("cp");
        write_checkpoint(&log, &key, &out, &clock(9)).unwrap();
        // Rebuild a different log of the same length in place.
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_file(crate::audit::head_path_for(&path)).unwrap();
        for i in 10..13 {
            log.append(draft(i), &clock(i as i64)).unwrap();
        }
        let err = write_checkpoint(&log, &key, &out, &clock(20)).unwrap_err();
        assert!(
            matches!(err, AuditError::CheckpointConflict { seq: 3, .. }),
            "{err}"
        );
    }

    #[test]
    fn workspace_key_files() {
        let ws = tempfile::tempdir().unwrap();
        let key = CheckpointKey::generate_into(ws.path()).unwrap();
        let again = CheckpointKey::load(ws.path()).unwrap();
        assert_eq!(key.public_key(), again.public_key());
        assert_eq!(
            PublicKey::load(&public_key_path(ws.path())).unwrap(),
            key.public_key()
        );
        assert!(
            !format!("{key:?}").contains(
                &std::fs::read_to_string(key_path(ws.path()))
                    .unwrap()
                    .trim()
                    .to_string()
            )
        );
        assert!(matches!(
            CheckpointKey::generate_into(ws.path()),
            Err(AuditError::KeyExists { .. })
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let p = key_path(ws.path());
            assert_eq!(
                std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
            assert!(matches!(
                CheckpointKey::load(ws.path()),
                Err(AuditError::KeyExposed { mode: 0o640, .. })
            ));
        }
    }
}
