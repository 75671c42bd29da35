//! Sealed records bound to where and when they are: the seal format and the audit-log
//! index that says which version of each record is the current one.
//!
//! Owns the on-disk form of every server record (`users/*.json`, `requests/*.json`,
//! `job.json`, `dataset.json`, `outbox.json`, `installed.json`, ledger entries) and the
//! rule that decides whether a record read back is the one the server last wrote there.
//!
//! Design. A record file is one header line and the JSON body:
//! `tre-seal 2 <version> <hmac>`, where the HMAC-SHA256 under `seal.key` covers the
//! record's workspace-relative path, the version and the body. The path binding refuses
//! a record copied to another place (a request copied from project A into project B's
//! folder). The version is the `seq` of the audit entry that authorised the write
//! ("bound" records), `-` for a record written without one ("unbound": job records,
//! which the job runner writes) or `pending` for the staged copy of a bound write.
//! The authority on versions is the audit log, which is hash-chained, checkpointed and
//! append-only: a bound write ([`crate::tre::workspace::Workspace::commit`]) stages the
//! new body as `.<name>.pending`, appends its audit entry with a `records` detail
//! (`[{path, sha256}]`, `sha256: null` for a removal), then writes the record sealed with
//! that entry's seq and removes the staged copy. [`RecordIndex`] is the server's
//! in-memory map path → (seq, sha256) of the latest entry that wrote each path, built
//! from the audit log at first use and brought up to date (incrementally) before every
//! check. A record is accepted only if its seal verifies for its path and, when the
//! index knows the path, its version and body hash are the latest the log records. So a
//! request file rolled back to an earlier sealed version is refused (its seq is older
//! than the log's), and so is a bound record that was deleted. A crash between the audit
//! entry and the final write leaves the staged copy, whose hash the entry names: the
//! next read finishes the write (roll forward); a staged copy no entry names is ignored.
//!
//! Existing workspaces: a record sealed the old way (format 1: a bare HMAC of the body)
//! is refused with a message that tells the operator to run `tre admin migrate`, which
//! re-seals every format-1 record whose old seal verifies, under one audited entry.
//!
//! Danger: this module decides which bytes count as the server's own. It never puts a
//! record's body in an error or an audit entry (only workspace-relative paths and
//! hashes), and a record the log says is newer than the one on disk is never accepted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header of a format-2 seal.
pub const SEAL_V2: &str = "tre-seal 2";

/// The audit detail key naming the records an entry wrote.
pub const RECORDS_KEY: &str = "records";

/// A record's version, as sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Written without an authorising audit entry (job records).
    Unbound,
    /// The staged copy of a bound write, before its audit entry.
    Pending,
    /// Bound to the audit entry with this seq.
    At(u64),
}

impl Version {
    fn text(self) -> String {
        match self {
            Version::Unbound => "-".into(),
            Version::Pending => "pending".into(),
            Version::At(n) => n.to_string(),
        }
    }

    fn parse(s: &str) -> Option<Version> {
        match s {
            "-" => Some(Version::Unbound),
            "pending" => Some(Version::Pending),
            n => n.parse().ok().map(Version::At),
        }
    }
}

/// Why a sealed file did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealProblem {
    /// The seal does not match (edited, forged, or copied from another path).
    Forged,
    /// A format-1 seal that verifies: the workspace needs `tre admin migrate`.
    OldFormat,
}

fn mac(key: &[u8], rel: &str, version: Version, body: &[u8]) -> Option<Hmac<Sha256>> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).ok()?;
    m.update(SEAL_V2.as_bytes());
    m.update(b"\n");
    m.update(rel.as_bytes());
    m.update(b"\n");
    m.update(version.text().as_bytes());
    m.update(b"\n");
    m.update(body);
    Some(m)
}

/// The file bytes of `body` sealed at `rel` with `version`.
pub fn seal(key: &[u8], rel: &str, version: Version, body: &[u8]) -> Vec<u8> {
    let tag = mac(key, rel, version, body)
        .map(|m| crate::digest::hex(&m.finalize().into_bytes()))
        .unwrap_or_default();
    let mut out = format!("{SEAL_V2} {} {tag}\n", version.text()).into_bytes();
    out.extend_from_slice(body);
    out
}

/// Check a sealed file read from `rel`: its version and body.
pub fn unseal<'a>(
    key: &[u8],
    rel: &str,
    text: &'a [u8],
) -> Result<(Version, &'a [u8]), SealProblem> {
    let nl = text
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(SealProblem::Forged)?;
    let (head, body) = (&text[..nl], &text[nl + 1..]);
    let head = std::str::from_utf8(head).map_err(|_| SealProblem::Forged)?;
    let Some(rest) = head.strip_prefix(SEAL_V2).and_then(|r| r.strip_prefix(' ')) else {
        return Err(if old_seal_verifies(key, head, body) {
            SealProblem::OldFormat
        } else {
            SealProblem::Forged
        });
    };
    let (v, tag) = rest.split_once(' ').ok_or(SealProblem::Forged)?;
    let version = Version::parse(v).ok_or(SealProblem::Forged)?;
    let tag = hex::decode(tag).map_err(|_| SealProblem::Forged)?;
    mac(key, rel, version, body)
        .ok_or(SealProblem::Forged)?
        .verify_slice(&tag)
        .map_err(|_| SealProblem::Forged)?;
    Ok((version, body))
}

fn old_seal_verifies(key: &[u8], head: &str, body: &[u8]) -> bool {
    let Ok(tag) = hex::decode(head) else {
        return false;
    };
    let Ok(mut m) = Hmac::<Sha256>::new_from_slice(key) else {
        return false;
    };
    m.update(body);
    m.verify_slice(&tag).is_ok()
}

/// The body of a format-1 record whose old seal verifies (for `tre admin migrate`).
pub fn old_body<'a>(key: &[u8], text: &'a [u8]) -> Option<&'a [u8]> {
    let nl = text.iter().position(|&b| b == b'\n')?;
    let head = std::str::from_utf8(&text[..nl]).ok()?;
    old_seal_verifies(key, head, &text[nl + 1..]).then_some(&text[nl + 1..])
}

/// The staged copy of a bound write to `path`: `.<name>.pending` beside it.
pub fn pending_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.pending"))
}

/// The latest write of one path the audit log records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Latest {
    /// The audit entry.
    pub seq: u64,
    /// The body's sha256, or `None` when the entry removed the record.
    pub sha256: Option<String>,
}

/// Path → latest audited write, read from the audit log (see the module docs).
#[derive(Debug, Default)]
pub struct RecordIndex {
    tail: crate::audit::tail::LogTail,
    latest: HashMap<String, Latest>,
}

impl RecordIndex {
    /// Read the log's entries appended since the last call.
    pub fn refresh(&mut self, log: &Path) -> std::io::Result<()> {
        self.refresh_with(log, |_| {})
    }

    /// Whether nothing has been read into the index yet (its next refresh reads the whole
    /// log).
    pub fn is_empty(&self) -> bool {
        self.tail.is_empty()
    }

    /// [`RecordIndex::refresh`], handing each complete line it reads to `each`, in order:
    /// on an empty index, the whole log in one read (start-up reconciliation uses it so
    /// the log is read once for both). Another log file, or a shorter one, is read from
    /// the start, and nothing is kept from the old map (the audit check refuses a
    /// truncated log).
    pub fn refresh_with(&mut self, log: &Path, mut each: impl FnMut(&[u8])) -> std::io::Result<()> {
        let RecordIndex { tail, latest } = self;
        tail.read_new(log, |e| match e {
            crate::audit::tail::TailEvent::Restart => latest.clear(),
            crate::audit::tail::TailEvent::Line(line) => {
                apply_line(latest, line);
                each(line);
            }
        })
    }
}

/// Record the writes an audit line names in `latest`.
fn apply_line(latest: &mut HashMap<String, Latest>, line: &[u8]) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
        return;
    };
    let Some(seq) = v.get("seq").and_then(|s| s.as_u64()) else {
        return;
    };
    let Some(records) = v
        .get("detail")
        .and_then(|d| d.get(RECORDS_KEY))
        .and_then(|r| r.as_array())
    else {
        return;
    };
    for r in records {
        if let Some(path) = r.get("path").and_then(|p| p.as_str()) {
            let sha256 = r.get("sha256").and_then(|s| s.as_str()).map(String::from);
            set_latest(latest, path, Latest { seq, sha256 });
        }
    }
}

/// Keep `l` as the latest write of `rel` unless a later one is known.
fn set_latest(latest: &mut HashMap<String, Latest>, rel: &str, l: Latest) {
    if latest.get(rel).is_none_or(|k| k.seq <= l.seq) {
        latest.insert(rel.to_string(), l);
    }
}

impl RecordIndex {
    /// Record a write this process just made (also found again by the next refresh).
    pub fn set(&mut self, rel: &str, latest: Latest) {
        set_latest(&mut self.latest, rel, latest);
    }

    /// The latest audited write of `rel`.
    pub fn get(&self, rel: &str) -> Option<&Latest> {
        self.latest.get(rel)
    }

    /// Every path the log records as written (not removed).
    pub fn live_paths(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .latest
            .iter()
            .filter(|(_, l)| l.sha256.is_some())
            .map(|(p, _)| p.clone())
            .collect();
        v.sort();
        v
    }
}

static INDEXES: Mutex<Vec<(PathBuf, Arc<Mutex<RecordIndex>>)>> = Mutex::new(Vec::new());

/// The process-wide index of the workspace at `root` (one per workspace, shared by every
/// [`crate::tre::workspace::Workspace`] opened on it, so it is also the commit lock).
pub fn index_for(root: &Path) -> Arc<Mutex<RecordIndex>> {
    let key = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let mut all = INDEXES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, i)) = all.iter().find(|(k, _)| *k == key) {
        return i.clone();
    }
    let i = Arc::new(Mutex::new(RecordIndex::default()));
    all.push((key, i.clone()));
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn a_seal_binds_path_and_version() {
        let s = seal(KEY, "projects/a/requests/r.json", Version::At(7), b"{}");
        assert_eq!(
            unseal(KEY, "projects/a/requests/r.json", &s),
            Ok((Version::At(7), &b"{}"[..]))
        );
        assert_eq!(
            unseal(KEY, "projects/b/requests/r.json", &s),
            Err(SealProblem::Forged)
        );
        let edited = String::from_utf8(s.clone())
            .expect("utf8")
            .replace(" 7 ", " 8 ");
        assert_eq!(
            unseal(KEY, "projects/a/requests/r.json", edited.as_bytes()),
            Err(SealProblem::Forged)
        );
    }

    #[test]
    fn a_format_one_seal_asks_for_migration() {
        let mut m = Hmac::<Sha256>::new_from_slice(KEY).expect("key");
        m.update(b"{}");
        let old = format!("{}\n{{}}", crate::digest::hex(&m.finalize().into_bytes()));
        assert_eq!(
            unseal(KEY, "x.json", old.as_bytes()),
            Err(SealProblem::OldFormat)
        );
        assert_eq!(old_body(KEY, old.as_bytes()), Some(&b"{}"[..]));
    }

    #[test]
    fn the_index_keeps_the_latest_write_and_removals() {
        let t = tempfile::tempdir().expect("tempdir");
        let log = t.path().join("audit.jsonl");
        std::fs::write(
            &log,
            concat!(
                r#"{"seq":1,"detail":{"records":[{"path":"a","sha256":"x"}]}}"#,
                "\n",
                r#"{"seq":2,"detail":{}}"#,
                "\n",
                r#"{"seq":3,"detail":{"records":[{"path":"a","sha256":null}]}}"#,
                "\n",
                r#"{"seq":4,"detail":{"records":[{"path":"b","sha"#
            ),
        )
        .expect("log");
        let mut i = RecordIndex::default();
        i.refresh(&log).expect("refresh");
        assert_eq!(
            i.get("a"),
            Some(&Latest {
                seq: 3,
                sha256: None
            })
        );
        assert_eq!(i.get("b"), None, "a partial last line is not read yet");
    }
}
