//! Following the log from outside: copy each new signed checkpoint to a folder the
//! service account cannot rewrite (another host, a write-once mount), and check the log
//! against every copy.
//!
//! Owns one round of `tre audit follow` ([`follow_once`]): new `checkpoint-<seq>.json`
//! files and the public key are copied (never over a file already there: a different
//! file under the same name is itself a finding), then the log is verified against the
//! copies with the copied public key. A cut tail, a rewritten chain, a deleted or
//! restarted log, or a checkpoint replaced in the workspace is found at the next round,
//! however the workspace's own files were changed. Danger: it only reads the workspace;
//! the copy is trusted from its first round, so start it when the workspace is new.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::anchors::{Anchors, verify_anchored};
use super::checkpoint::{PublicKey, list_checkpoints, public_key_path, workspace_checkpoint_dir};
use super::error::{AuditError, io_err};
use super::verify::VerifyOptions;
use crate::durable::{Mode, write_new};

/// What one round found.
#[derive(Debug, Clone, Serialize)]
pub struct FollowReport {
    /// The checkpoints copied this round, by `seq`.
    pub copied: Vec<u64>,
    /// The newest checkpoint held in the copy.
    pub newest: Option<u64>,
    /// What does not hold, in words (`None`: the log holds every copied checkpoint).
    pub alert: Option<String>,
}

/// One round: copy what is new from `workspace` to `to`, then check the log against
/// every copy. `Err` only when something could not be read or written.
pub fn follow_once(workspace: &Path, to: &Path) -> Result<FollowReport, AuditError> {
    std::fs::create_dir_all(to).map_err(io_err("create", to))?;
    let mut alerts = Vec::new();
    let own_pub = public_key_path(workspace);
    let copy_pub = to.join("checkpoint.pub");
    copy_new(&own_pub, &copy_pub, &mut alerts)?;
    let src = workspace_checkpoint_dir(workspace);
    let mut copied = Vec::new();
    if src.is_dir() {
        for (seq, path) in list_checkpoints(&src)? {
            let name = path.file_name().map(PathBuf::from).unwrap_or_default();
            if copy_new(&path, &to.join(name), &mut alerts)? {
                copied.push(seq);
            }
        }
    }
    let held = list_checkpoints(to)?;
    let newest = held.last().map(|(s, _)| *s);
    if newest.is_some() {
        let anchors = Anchors {
            checkpoint_dirs: vec![to.to_path_buf()],
            manifests: Vec::new(),
            public_key: Some(PublicKey::load(&copy_pub)?),
        };
        let log = super::workspace_log_path(workspace);
        let report = verify_anchored(&log, VerifyOptions::default(), &anchors)?;
        if let Some(p) = &report.chain.problem {
            alerts.push(format!(
                "the log does not verify: the first bad entry is {p}"
            ));
        }
        if let Some(a) = report.first_bad_anchor() {
            alerts.push(format!(
                "the log no longer holds an off-host checkpoint: {a}"
            ));
        }
    }
    Ok(FollowReport {
        copied,
        newest,
        alert: (!alerts.is_empty()).then(|| alerts.join("; ")),
    })
}

/// Copy `from` to `to` when `to` does not exist (`true`); a different file already at
/// `to` is an alert, never replaced.
fn copy_new(from: &Path, to: &Path, alerts: &mut Vec<String>) -> Result<bool, AuditError> {
    let bytes = std::fs::read(from).map_err(io_err("read", from))?;
    match std::fs::read(to) {
        Ok(held) if held == bytes => Ok(false),
        Ok(_) => {
            alerts.push(format!(
                "{} differs from the copy kept at {}: it was replaced in the workspace",
                from.display(),
                to.display()
            ));
            Ok(false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            write_new(to, &bytes, Mode::GroupRead).map_err(|e| AuditError::Io {
                op: "copy a checkpoint to",
                path: e.path,
                source: e.source,
            })?;
            Ok(true)
        }
        Err(e) => Err(io_err("read", to)(e)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::audit::testutil::{clock, draft};
    use crate::audit::{AuditLog, CheckpointKey, write_checkpoint};

    fn workspace() -> (tempfile::TempDir, AuditLog, CheckpointKey) {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("audit")).unwrap();
        let key = CheckpointKey::generate_into(d.path()).unwrap();
        let log = AuditLog::in_workspace(d.path()).unwrap();
        (d, log, key)
    }

    #[test]
    fn a_cut_or_restarted_log_is_found_against_the_copies() {
        let (d, log, key) = workspace();
        let copy = tempfile::tempdir().unwrap();
        let dir = workspace_checkpoint_dir(d.path());
        for i in 0..5 {
            log.append(draft(i), &clock(i as i64)).unwrap();
        }
        write_checkpoint(&log, &key, &dir, &clock(5)).unwrap();
        let r = follow_once(d.path(), copy.path()).unwrap();
        assert_eq!(
            (r.copied.clone(), r.newest, r.alert),
            (vec![5], Some(5), None)
        );
        let again = follow_once(d.path(), copy.path()).unwrap();
        assert!(again.copied.is_empty() && again.alert.is_none());

        // The log deleted with its head and checkpoints, and restarted at seq 1.
        std::fs::remove_file(log.path()).unwrap();
        std::fs::remove_file(log.head_path()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        log.append(draft(9), &clock(9)).unwrap();
        let r = follow_once(d.path(), copy.path()).unwrap();
        let alert = r.alert.expect("an alert");
        assert!(alert.contains("seq 5"), "{alert}");
    }

    #[test]
    fn a_replaced_checkpoint_is_an_alert_and_the_copy_is_kept() {
        let (d, log, key) = workspace();
        let copy = tempfile::tempdir().unwrap();
        let dir = workspace_checkpoint_dir(d.path());
        log.append(draft(0), &clock(0)).unwrap();
        write_checkpoint(&log, &key, &dir, &clock(1)).unwrap();
        follow_once(d.path(), copy.path()).unwrap();
        let name = "checkpoint-1.json";
        let kept = std::fs::read(copy.path().join(name)).unwrap();
        std::fs::write(dir.join(name), b"{}").unwrap();
        let r = follow_once(d.path(), copy.path()).unwrap();
        assert!(r.alert.expect("alert").contains("replaced"));
        assert_eq!(std::fs::read(copy.path().join(name)).unwrap(), kept);
    }
}
