//! Verifying the log against anchors kept outside it: signed checkpoints and the
//! `audit_head` that manifests record.
//!
//! Owns [`AuditAnchor`] (the `(seq, hash)` other modules embed in their manifests) and
//! [`verify_anchored`], which runs the chain check of [`super::verify`] and then asks,
//! for every anchor, whether the log still holds an entry with exactly that `seq` and
//! `hash`. A log shorter than an anchor was cut; a different hash at that `seq` means the
//! chain was recomputed; a missing log with anchors was deleted. Only reads. Danger: a
//! checkpoint is trusted only under a public key given by the caller (ideally a copy kept
//! off-host), never under the key the checkpoint names itself.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::GENESIS;
use super::checkpoint::{PublicKey, SignatureProblem, list_checkpoints, read_checkpoint};
use super::error::{AuditError, io_err};
use super::head::Head;
use super::verify::{VerifyOptions, VerifyReport, check_log, load, parse_links};

/// The audit head a manifest records at its time: embed it as `audit_head` at the top
/// level of the manifest's JSON, from [`super::AuditLog::head`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditAnchor {
    /// The last entry's `seq` when the manifest was written (0: the log was empty).
    pub seq: u64,
    /// That entry's `hash` ([`GENESIS`] when `seq` is 0).
    pub hash: String,
}

impl From<Head> for AuditAnchor {
    fn from(h: Head) -> Self {
        AuditAnchor {
            seq: h.seq,
            hash: h.hash,
        }
    }
}

impl AuditAnchor {
    /// The anchor of an empty log.
    pub fn genesis() -> Self {
        AuditAnchor {
            seq: 0,
            hash: GENESIS.to_string(),
        }
    }
}

/// What to check the log against.
#[derive(Debug, Clone, Default)]
pub struct Anchors {
    /// Folders of `checkpoint-<seq>.json` files; each must hold at least one.
    pub checkpoint_dirs: Vec<PathBuf>,
    /// Manifests with a top-level `audit_head`.
    pub manifests: Vec<PathBuf>,
    /// The key checkpoints must be signed with (required when there are checkpoints).
    pub public_key: Option<PublicKey>,
}

impl Anchors {
    /// Whether there is anything to check.
    pub fn is_empty(&self) -> bool {
        self.checkpoint_dirs.is_empty() && self.manifests.is_empty()
    }
}

/// Where an anchor came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AnchorKind {
    /// A signed checkpoint file.
    Checkpoint,
    /// A manifest's `audit_head`.
    Manifest,
}

/// Why an anchor does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum AnchorProblem {
    /// The file is not a checkpoint (or a manifest without a valid `audit_head`).
    NotAnAnchor,
    /// The checkpoint is signed with another key.
    ForeignKey,
    /// The checkpoint's signature does not match its contents.
    BadSignature,
    /// The log file does not exist, but the anchor vouches for entries.
    LogMissing,
    /// The log ends before the anchor's entry.
    Truncated {
        /// The log's last `seq` (0 when empty).
        log_last: u64,
    },
    /// The log holds a different entry at the anchor's `seq`.
    Rewritten,
    /// The anchor's `seq` is inside the log's range but no line carries it.
    EntryMissing,
}

impl std::fmt::Display for AnchorProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AnchorProblem::NotAnAnchor => {
                f.write_str("it is not a checkpoint or has no valid `audit_head` {seq, hash}")
            }
            AnchorProblem::ForeignKey => {
                f.write_str("it is signed with a different key than the trusted public key")
            }
            AnchorProblem::BadSignature => {
                f.write_str("its signature does not match its contents: edited or forged")
            }
            AnchorProblem::LogMissing => {
                f.write_str("the log file is missing: the log (and its head) were deleted")
            }
            AnchorProblem::Truncated { log_last } => write!(
                f,
                "the log ends at seq {log_last}: entries after it were removed (the head \
                 file was rewritten to match)"
            ),
            AnchorProblem::Rewritten => f.write_str(
                "the log's entry at that seq has a different hash: the chain was rewritten \
                 at or before it and its hashes recomputed",
            ),
            AnchorProblem::EntryMissing => f.write_str("no line of the log holds that seq"),
        }
    }
}

/// One anchor checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AnchorFinding {
    /// Checkpoint or manifest.
    pub kind: AnchorKind,
    /// The file.
    pub file: PathBuf,
    /// The `seq` it vouches for, when it could be read.
    pub seq: Option<u64>,
    /// What is wrong, or `None` when the log holds the anchored entry.
    pub problem: Option<AnchorProblem>,
}

impl std::fmt::Display for AnchorFinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            AnchorKind::Checkpoint => "checkpoint",
            AnchorKind::Manifest => "manifest",
        };
        write!(f, "{kind} {}", self.file.display())?;
        if let Some(seq) = self.seq {
            write!(f, " (seq {seq})")?;
        }
        match &self.problem {
            Some(p) => write!(f, ": {p}"),
            None => f.write_str(": the log holds this entry"),
        }
    }
}

/// The chain report and every anchor's finding.
#[derive(Debug, Clone, Serialize)]
pub struct FullReport {
    /// The chain and head-file check (flattened in JSON, so the report of a verify
    /// without anchors keeps its shape).
    #[serde(flatten)]
    pub chain: VerifyReport,
    /// Checkpoints by `seq`, then manifests in the order given.
    pub anchors: Vec<AnchorFinding>,
}

impl FullReport {
    /// Whether the chain and every anchor verified.
    pub fn is_intact(&self) -> bool {
        self.chain.is_intact() && self.first_bad_anchor().is_none()
    }

    /// The first anchor that does not hold.
    pub fn first_bad_anchor(&self) -> Option<&AnchorFinding> {
        self.anchors.iter().find(|a| a.problem.is_some())
    }
}

/// Verify the chain (as [`super::verify_with`]) and every anchor. With anchors, a
/// missing log is not an error but a finding. An `Err` means something could not be read
/// (a folder with no checkpoint, checkpoints without a public key); damage is in the
/// report. Never writes.
pub fn verify_anchored(
    log: &Path,
    opts: VerifyOptions,
    anchors: &Anchors,
) -> Result<FullReport, AuditError> {
    let opts = VerifyOptions {
        missing_log_is_empty: opts.missing_log_is_empty || !anchors.is_empty(),
        ..opts
    };
    let log_exists = log.exists();
    let (bytes, head) = load(log, opts)?;
    let chain = check_log(log, &bytes, &head);
    let (links, _) = parse_links(&bytes);
    let mut held: HashMap<u64, Vec<String>> = HashMap::new();
    for l in links.into_iter().flatten() {
        held.entry(l.seq).or_default().push(l.hash);
    }
    let index = LogIndex {
        exists: log_exists,
        last: held.keys().copied().max().unwrap_or(0),
        held,
    };
    let mut findings = Vec::new();
    for dir in &anchors.checkpoint_dirs {
        findings.extend(check_checkpoints(dir, anchors.public_key.as_ref(), &index)?);
    }
    for m in &anchors.manifests {
        findings.push(check_manifest(m, &index)?);
    }
    Ok(FullReport {
        chain,
        anchors: findings,
    })
}

/// The entries a log holds, by `seq`.
struct LogIndex {
    exists: bool,
    last: u64,
    held: HashMap<u64, Vec<String>>,
}

impl LogIndex {
    /// Whether the log holds exactly `(seq, hash)`.
    fn check(&self, seq: u64, hash: &str) -> Option<AnchorProblem> {
        if seq == 0 {
            return (hash != GENESIS).then_some(AnchorProblem::Rewritten);
        }
        if !self.exists {
            return Some(AnchorProblem::LogMissing);
        }
        match self.held.get(&seq) {
            Some(hashes) if hashes.iter().any(|h| h == hash) => None,
            Some(_) => Some(AnchorProblem::Rewritten),
            None if seq > self.last => Some(AnchorProblem::Truncated {
                log_last: self.last,
            }),
            None => Some(AnchorProblem::EntryMissing),
        }
    }
}

fn check_checkpoints(
    dir: &Path,
    trusted: Option<&PublicKey>,
    index: &LogIndex,
) -> Result<Vec<AnchorFinding>, AuditError> {
    let files = list_checkpoints(dir)?;
    if files.is_empty() {
        return Err(AuditError::NoCheckpoints {
            dir: dir.to_path_buf(),
        });
    }
    let trusted = trusted.ok_or(AuditError::NoPublicKey)?;
    let mut out = Vec::with_capacity(files.len());
    for (seq, file) in files {
        let finding = |problem| AnchorFinding {
            kind: AnchorKind::Checkpoint,
            file: file.clone(),
            seq: Some(seq),
            problem,
        };
        let Some(record) = read_checkpoint(&file)? else {
            out.push(finding(Some(AnchorProblem::NotAnAnchor)));
            continue;
        };
        let problem = match record.check_signature(trusted) {
            Err(SignatureProblem::WrongFormat) => Some(AnchorProblem::NotAnAnchor),
            Err(SignatureProblem::ForeignKey) => Some(AnchorProblem::ForeignKey),
            Err(SignatureProblem::Invalid) => Some(AnchorProblem::BadSignature),
            // A renamed file is judged by what was signed, not by its name.
            Ok(()) if record.seq != seq => Some(AnchorProblem::NotAnAnchor),
            Ok(()) => index.check(record.seq, &record.hash),
        };
        out.push(finding(problem));
    }
    Ok(out)
}

fn check_manifest(path: &Path, index: &LogIndex) -> Result<AnchorFinding, AuditError> {
    let bytes = std::fs::read(path).map_err(io_err("read", path))?;
    let anchor = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|mut v| v.get_mut("audit_head").map(serde_json::Value::take))
        .and_then(|v| serde_json::from_value::<AuditAnchor>(v).ok());
    Ok(match anchor {
        None => AnchorFinding {
            kind: AnchorKind::Manifest,
            file: path.to_path_buf(),
            seq: None,
            problem: Some(AnchorProblem::NotAnAnchor),
        },
        Some(a) => AnchorFinding {
            kind: AnchorKind::Manifest,
            file: path.to_path_buf(),
            seq: Some(a.seq),
            problem: index.check(a.seq, &a.hash),
        },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::audit::checkpoint::{CheckpointKey, write_checkpoint};
    use crate::audit::testutil::{build, clock, draft, entry, lines, write_lines};
    use crate::audit::{AuditLog, head_path_for};

    struct Setup {
        _dir: tempfile::TempDir,
        log: PathBuf,
        anchors: Anchors,
    }

    /// A log of 6 entries with checkpoints at seq 3 and 6, and a manifest at seq 4.
    fn setup() -> Setup {
        let (dir, path) = build(0);
        let log = AuditLog::open(&path).unwrap();
        let key = CheckpointKey::from_seed([3; 32]);
        let cps = dir.path().join("cps");
        let manifest = dir.path().join("manifest.json");
        for i in 0..6 {
            log.append(draft(i), &clock(i as i64)).unwrap();
            if i == 2 || i == 5 {
                write_checkpoint(&log, &key, &cps, &clock(i as i64)).unwrap();
            }
            if i == 3 {
                let a = AuditAnchor::from(log.head().unwrap().unwrap());
                let m = serde_json::json!({"project": "p1", "audit_head": a});
                std::fs::write(&manifest, m.to_string()).unwrap();
            }
        }
        Setup {
            _dir: dir,
            log: path,
            anchors: Anchors {
                checkpoint_dirs: vec![cps],
                manifests: vec![manifest],
                public_key: Some(key.public_key()),
            },
        }
    }

    fn first_bad(s: &Setup) -> AnchorFinding {
        let r = verify_anchored(&s.log, VerifyOptions::default(), &s.anchors).unwrap();
        r.first_bad_anchor().cloned().expect("an anchor fails")
    }

    #[test]
    fn intact_log_holds_every_anchor() {
        let s = setup();
        let r = verify_anchored(&s.log, VerifyOptions::default(), &s.anchors).unwrap();
        assert!(r.is_intact(), "{:?}", r.anchors);
        assert_eq!(r.anchors.len(), 3);
    }

    #[test]
    fn truncation_with_a_rewritten_head_is_found() {
        let s = setup();
        let ls = lines(&s.log);
        write_lines(&s.log, &ls[..4]);
        let last = entry(&ls[3]);
        let head = serde_json::json!({"seq": last.seq, "hash": last.hash});
        std::fs::write(head_path_for(&s.log), head.to_string()).unwrap();
        let r = verify_anchored(&s.log, VerifyOptions::default(), &s.anchors).unwrap();
        assert!(r.chain.is_intact(), "the chain alone cannot tell");
        let bad = r.first_bad_anchor().unwrap();
        assert_eq!(bad.seq, Some(6));
        assert_eq!(bad.problem, Some(AnchorProblem::Truncated { log_last: 4 }));
    }

    #[test]
    fn a_recomputed_chain_is_found() {
        let s = setup();
        let mut ls = lines(&s.log);
        let mut prev = entry(&ls[0]).hash;
        for l in ls.iter_mut().skip(1) {
            let mut e = entry(l);
            e.actor = "mallory".into();
            e.prev = prev;
            e.hash = e.compute_hash().unwrap();
            prev = e.hash.clone();
            *l = e.to_line().unwrap();
        }
        write_lines(&s.log, &ls);
        let head = serde_json::json!({"seq": 6, "hash": prev});
        std::fs::write(head_path_for(&s.log), head.to_string()).unwrap();
        let bad = first_bad(&s);
        assert_eq!(
            (bad.seq, bad.problem),
            (Some(3), Some(AnchorProblem::Rewritten))
        );
    }

    #[test]
    fn a_deleted_log_is_found() {
        let s = setup();
        std::fs::remove_file(&s.log).unwrap();
        std::fs::remove_file(head_path_for(&s.log)).unwrap();
        let bad = first_bad(&s);
        assert_eq!(
            (bad.seq, bad.problem),
            (Some(3), Some(AnchorProblem::LogMissing))
        );
        // Without anchors a missing log is unreadable, as before.
        assert!(crate::audit::verify(&s.log).is_err());
    }

    #[test]
    fn checkpoints_need_a_trusted_key_and_a_valid_signature() {
        let mut s = setup();
        s.anchors.public_key = None;
        assert!(matches!(
            verify_anchored(&s.log, VerifyOptions::default(), &s.anchors),
            Err(AuditError::NoPublicKey)
        ));
        let s = setup();
        let cp = s.anchors.checkpoint_dirs[0].join("checkpoint-3.json");
        let text = std::fs::read_to_string(&cp).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["time"] = "2030-01-01T00:00:00.000Z".into();
        std::fs::write(&cp, v.to_string()).unwrap();
        let bad = first_bad(&s);
        assert_eq!(
            (bad.seq, bad.problem),
            (Some(3), Some(AnchorProblem::BadSignature))
        );
    }

    #[test]
    fn a_manifest_anchor_mismatch_is_found() {
        let s = setup();
        let m = &s.anchors.manifests[0];
        let fake = serde_json::json!({"audit_head": {"seq": 4, "hash": crate::audit::testutil::H}});
        std::fs::write(m, fake.to_string()).unwrap();
        let bad = first_bad(&s);
        assert_eq!(bad.kind, AnchorKind::Manifest);
        assert_eq!(bad.problem, Some(AnchorProblem::Rewritten));
        std::fs::write(m, "{\"project\": \"p1\"}").unwrap();
        assert_eq!(first_bad(&s).problem, Some(AnchorProblem::NotAnAnchor));
    }
}
