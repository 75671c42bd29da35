//! Appending to the log: [`AuditLog`], the one writer of `audit.jsonl` and `audit.head`.
//!
//! Owns the append protocol (lock, check the tail against the head file, sanitise,
//! number, chain, write, `fsync`, replace the head) and [`AuditLog::head`], the current
//! `(seq, hash)` that manifests and checkpoints record. Danger: an append is the moment
//! an action becomes accountable; it must never fail because of what a user typed (see
//! [`super::sanitise`]) and must never extend a log whose tail does not verify.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use chrono::SecondsFormat;
use serde_json::Value;

use super::entry::{AuditEntry, EntryDraft, seal_line};
use super::error::{AuditError, TailProblem, io_err};
use super::head::{Head, parse_line, read_head, write_head};
use super::sanitise::{sanitise, shrink_to_fit};
use super::{GENESIS, MAX_ENTRY_BYTES, head_path_for, workspace_log_path};
use crate::clock::Clock;

/// An append-only audit log file and its head file.
#[derive(Debug, Clone)]
pub struct AuditLog {
    path: PathBuf,
    head: PathBuf,
}

impl AuditLog {
    /// The log at `path` (created by the first append). Its folder must exist.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, AuditError> {
        let path = path.into();
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            return Err(AuditError::Io {
                op: "open the audit folder",
                path: dir,
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        let head = head_path_for(&path);
        Ok(AuditLog { path, head })
    }

    /// The log of a TRE workspace, `DIR/audit/audit.jsonl`.
    pub fn in_workspace(workspace: &Path) -> Result<Self, AuditError> {
        AuditLog::open(workspace_log_path(workspace))
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The head file.
    pub fn head_path(&self) -> &Path {
        &self.head
    }

    /// The current head: the last entry's `seq` and `hash`, read under a shared lock and
    /// checked against the head file, for callers to record in a manifest (as
    /// [`super::AuditAnchor`]) or a checkpoint. `Ok(None)` for a log with no entries yet.
    /// Refuses ([`AuditError::Broken`]) when the tail does not verify: an anchor must
    /// never vouch for a damaged log.
    pub fn head(&self) -> Result<Option<Head>, AuditError> {
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return match read_head(&self.head)? {
                    None => Ok(None),
                    Some(h) => Err(self.broken(TailProblem::EmptyButHead { head_seq: h.seq })),
                };
            }
            Err(e) => return Err(io_err("open", &self.path)(e)),
        };
        file.lock_shared().map_err(io_err("lock", &self.path))?;
        let len = file.metadata().map_err(io_err("read", &self.path))?.len();
        self.check_tail(&mut file, len)
    }

    /// [`AuditLog::head`] as the anchor a manifest embeds: [`super::AuditAnchor::genesis`]
    /// for a log with no entries yet.
    pub fn anchor(&self) -> Result<super::AuditAnchor, AuditError> {
        Ok(self
            .head()?
            .map_or_else(super::AuditAnchor::genesis, super::AuditAnchor::from))
    }

    /// Check `draft`'s structure, sanitise it (escape, redact, shorten: never refused for
    /// its content), number, time and chain it onto the last entry, and write it durably.
    /// Refuses ([`AuditError::Broken`]) to extend a log whose last entry does not verify
    /// or does not match the head file.
    pub fn append(&self, draft: EntryDraft, clock: &dyn Clock) -> Result<AuditEntry, AuditError> {
        draft.check()?;
        let draft = sanitise(draft);
        let path = &self.path;
        let mut file = open_for_append(path)?;
        file.lock().map_err(io_err("lock", path))?;
        let len = file.metadata().map_err(io_err("read", path))?.len();
        let (seq, prev) = match self.check_tail(&mut file, len)? {
            None => (1, GENESIS.to_string()),
            Some(last) => (last.seq + 1, last.hash),
        };
        let mut entry = AuditEntry {
            seq,
            time: clock.now().to_rfc3339_opts(SecondsFormat::Millis, true),
            actor: draft.actor,
            action: draft.action,
            outcome: draft.outcome,
            project: draft.project,
            purpose: draft.purpose,
            detail: Value::Object(draft.detail),
            inputs: draft.inputs,
            outputs: draft.outputs,
            prev,
            hash: String::new(),
        };
        let body = shrink_to_fit(&mut entry, MAX_ENTRY_BYTES - super::entry::HASH_SUFFIX_LEN)?;
        entry.hash = crate::digest::sha256_hex(body.as_bytes());
        let mut line = seal_line(&body, &entry.hash);
        line.push('\n');
        file.write_all(line.as_bytes())
            .map_err(io_err("append to", path))?;
        file.sync_all().map_err(io_err("fsync", path))?;
        if len == 0 {
            crate::durable::fsync_parent(path).map_err(io_err("fsync the folder of", path))?;
        }
        write_head(
            &self.head,
            &Head {
                seq: entry.seq,
                hash: entry.hash.clone(),
            },
        )?;
        // The lock is released when `file` is dropped, after the head is in place.
        drop(file);
        Ok(entry)
    }

    fn broken(&self, problem: TailProblem) -> AuditError {
        AuditError::Broken {
            path: self.path.clone(),
            problem,
        }
    }

    /// The last entry of a locked log of `len` bytes, checked against its own hash and
    /// the head file; `None` when the log is empty and no head file says otherwise.
    fn check_tail(&self, file: &mut File, len: u64) -> Result<Option<Head>, AuditError> {
        let head = read_head(&self.head)?;
        if len == 0 {
            return match head {
                Some(h) => Err(self.broken(TailProblem::EmptyButHead { head_seq: h.seq })),
                None => Ok(None),
            };
        }
        let tail = read_last_line(file, len).map_err(io_err("read", &self.path))?;
        let Some(tail) = tail.strip_suffix(b"\n") else {
            return Err(self.broken(TailProblem::Incomplete));
        };
        let last = parse_line(tail)
            .map_err(|e| self.broken(TailProblem::Damaged { problem: e.problem }))?;
        match head {
            None => Err(self.broken(TailProblem::HeadMissing {
                head: self.head.clone(),
            })),
            Some(h) if h.seq != last.seq || h.hash != last.hash => {
                Err(self.broken(TailProblem::HeadMismatch {
                    last_seq: last.seq,
                    head_seq: h.seq,
                }))
            }
            Some(h) => Ok(Some(h)),
        }
    }
}

/// Open (creating with mode 0640) for reading and appending.
fn open_for_append(path: &Path) -> Result<File, AuditError> {
    let mut opts = OpenOptions::new();
    opts.read(true).append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o640);
    }
    opts.open(path).map_err(io_err("open", path))
}

/// The last line of a file of `len` bytes, with its newline if it has one.
fn read_last_line(file: &mut File, len: u64) -> std::io::Result<Vec<u8>> {
    let mut chunk = 4096u64;
    loop {
        let start = len.saturating_sub(chunk);
        file.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::with_capacity((len - start) as usize);
        Read::by_ref(file).take(len - start).read_to_end(&mut buf)?;
        let body = buf.strip_suffix(b"\n").unwrap_or(&buf);
        if let Some(nl) = body.iter().rposition(|&c| c == b'\n') {
            return Ok(buf[nl + 1..].to_vec());
        }
        if start == 0 {
            return Ok(buf);
        }
        chunk *= 4;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::audit::testutil::{H, build, clock, draft, lines, write_lines};
    use crate::audit::{HashRef, NOTES_KEY, looks_like_nhs_number, verify};

    #[test]
    fn append_refuses_a_broken_log() {
        let (_d, path) = build(3);
        let mut ls = lines(&path);
        ls[2] = ls[2].replace("study 2", "study X");
        write_lines(&path, &ls);
        let log = AuditLog::open(&path).unwrap();
        let err = log.append(draft(9), &clock(9)).unwrap_err();
        assert!(matches!(err, AuditError::Broken { .. }), "{err}");
        assert!(crate::error::Classify::is_refusal(&err));
        assert!(log.head().is_err(), "no head for a broken log");

        // Tail removed: last line valid but behind the head.
        let (_d, path) = build(3);
        let mut ls = lines(&path);
        ls.pop();
        write_lines(&path, &ls);
        let err = AuditLog::open(&path)
            .unwrap()
            .append(draft(9), &clock(9))
            .unwrap_err();
        assert!(matches!(err, AuditError::Broken { .. }), "{err}");
    }

    #[test]
    fn head_is_the_last_entry() {
        let (_d, path) = build(0);
        let log = AuditLog::open(&path).unwrap();
        assert_eq!(log.head().unwrap(), None);
        assert_eq!(log.anchor().unwrap(), crate::audit::AuditAnchor::genesis());
        let mut last = None;
        for i in 0..3 {
            last = Some(log.append(draft(i), &clock(i as i64)).unwrap());
        }
        let last = last.unwrap();
        assert_eq!(
            log.head().unwrap(),
            Some(Head {
                seq: 3,
                hash: last.hash
            })
        );
        assert_eq!(log.anchor().unwrap().seq, 3);
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(log.head(), Err(AuditError::Broken { .. })));
    }

    #[test]
    fn concurrent_appends_keep_one_chain() {
        let (_d, path) = build(0);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let log = AuditLog::open(&path).unwrap();
                    for i in 0..8 {
                        log.append(draft(t * 8 + i), &clock(i as i64)).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let r = verify(&path).unwrap();
        assert!(r.is_intact(), "{:?}", r.problem);
        assert_eq!(r.last.map(|h| h.seq), Some(32));
    }

    #[test]
    fn patient_data_is_redacted_and_the_action_still_audited() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path().join("audit.jsonl")).unwrap();
        let cases = [
            EntryDraft::new("alice", "query").purpose("patient 9434765919"),
            EntryDraft::new("alice", "extract").refused("bad row 943 476 5919"),
            EntryDraft::new("alice", "extract")
                .detail("rows", serde_json::json!([{"n": "943-476-5919"}])),
            EntryDraft::new("alice", "extract").input(HashRef::new("in/9434765919.csv", H)),
        ];
        for (i, d) in cases.into_iter().enumerate() {
            let e = log.append(d, &clock(i as i64)).unwrap();
            assert_eq!(e.seq, i as u64 + 1);
            assert!(
                e.detail[NOTES_KEY].to_string().contains("redacted"),
                "{e:?}"
            );
        }
        let text = std::fs::read_to_string(log.path()).unwrap();
        assert!(!text.contains("5919"), "{text}");
        assert!(text.lines().all(|l| !looks_like_nhs_number(l)));
        assert!(text.contains("patient [redacted]"));
        assert!(verify(log.path()).unwrap().is_intact());
    }

    #[test]
    fn control_characters_and_a_17_kb_comment_are_stored_safely() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path().join("audit.jsonl")).unwrap();
        let comment = "c".repeat(17 * 1024);
        let e = log
            .append(
                EntryDraft::new("bob", "release.review")
                    .purpose("\x1b[2Jcleared\u{9b}31m")
                    .detail("comment", comment.as_str()),
                &clock(0),
            )
            .unwrap();
        assert_eq!(e.purpose.as_deref(), Some("\\u{1b}[2Jcleared\\u{9b}31m"));
        let stored = e.detail["comment"].as_str().unwrap();
        assert!(stored.len() < 400 && stored.starts_with("ccc"), "{stored}");
        assert!(stored.contains(&crate::digest::sha256_hex(comment.as_bytes())));
        let bytes = std::fs::read(log.path()).unwrap();
        assert!(bytes.len() < MAX_ENTRY_BYTES);
        assert!(!bytes.contains(&0x1b));
    }

    #[test]
    fn an_oversized_entry_is_shrunk_not_refused() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path().join("audit.jsonl")).unwrap();
        let mut d = EntryDraft::new("op", "extract").refused("too many files");
        for i in 0..200 {
            d = d
                .detail(format!("count_{i}"), "x".repeat(900))
                .input(HashRef::new(format!("in/{i}/{}", "p".repeat(500)), H))
                .output(HashRef::new(format!("out/{i}/{}", "q".repeat(500)), H));
        }
        let e = log.append(d, &clock(0)).unwrap();
        let line = std::fs::read_to_string(log.path()).unwrap();
        assert!(line.len() <= MAX_ENTRY_BYTES, "{}", line.len());
        assert_eq!(e.detail["reason"], "too many files");
        assert!(e.detail["_omitted"]["detail"]["sha256"].is_string());
        assert_eq!(e.inputs.len(), 1);
        assert!(e.inputs[0].path.starts_with("[200 files omitted"));
        assert!(verify(log.path()).unwrap().is_intact());
    }

    #[test]
    fn malformed_drafts_are_bugs() {
        let bad = [
            EntryDraft::new("", "extract"),
            EntryDraft::new("alice", "Extract!"),
            EntryDraft::new("alice", "a".repeat(65)),
            EntryDraft::new("alice", "extract").output(HashRef::new("x", "abc")),
        ];
        for d in bad {
            let err = d.check().unwrap_err();
            assert!(matches!(err, AuditError::Invalid { .. }));
            assert_eq!(
                crate::error::Classify::kind(&err),
                crate::error::ErrorKind::Bug
            );
        }
    }

    fn text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            any::<String>(),
            "[0-9 \\-]{0,40}",
            proptest::collection::vec(any::<char>(), 0..20_000)
                .prop_map(|c| c.into_iter().collect::<String>()),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// No text anywhere in a draft can stop an action being audited, and what is
        /// stored is always safe: no NHS-number lookalike, no control character, within
        /// the size limit, and the chain verifies.
        #[test]
        fn any_text_is_audited_safely(
            purpose in text(),
            key in text(),
            value in text(),
            path in text(),
            project in text(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let log = AuditLog::open(dir.path().join("audit.jsonl")).unwrap();
            let d = EntryDraft::new("alice", "release.review")
                .project(project)
                .purpose(purpose)
                .detail(key, value.clone())
                .detail("list", serde_json::json!([value, {"k": "9434765919"}]))
                .input(HashRef::new(path, H));
            let e = log.append(d, &clock(0));
            proptest::prop_assert!(e.is_ok(), "{:?}", e.err());
            let bytes = std::fs::read(log.path()).unwrap();
            proptest::prop_assert!(bytes.len() <= MAX_ENTRY_BYTES);
            let stored: AuditEntry = serde_json::from_slice(&bytes).unwrap();
            let strings = [
                serde_json::to_string(&stored.detail).unwrap(),
                stored.purpose.clone().unwrap_or_default(),
                stored.project.clone().unwrap_or_default(),
                stored.inputs[0].path.clone(),
            ];
            proptest::prop_assert!(!strings.iter().any(|s| looks_like_nhs_number(s)));
            let unsafe_char = |s: &str| s.chars().any(crate::audit::sanitise::is_unsafe_char);
            proptest::prop_assert!(!unsafe_char(stored.purpose.as_deref().unwrap_or("")));
            proptest::prop_assert!(!unsafe_char(&stored.inputs[0].path));
            proptest::prop_assert!(verify(log.path()).unwrap().is_intact());
        }
    }
}
