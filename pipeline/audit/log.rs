//! Appending to the log: [`AuditLog`], the one writer of `audit.jsonl` and `audit.head`.
//!
//! Owns the append protocol (lock, check the tail against the head file, repair what an
//! interrupted append left and record it, sanitise, number, chain, write, `fsync`,
//! replace the head), [`AuditLog::recover`] (the same repair at start), and
//! [`AuditLog::head`], the current `(seq, hash)` that manifests and checkpoints record.
//! The log is the truth and the head file is derived from it. Danger: an append is the
//! moment an action becomes accountable; it must never fail because of what a user typed
//! (see [`super::sanitise`]), must never extend a log whose tail does not verify, and
//! must never repair anything a crash does not explain.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use chrono::SecondsFormat;
use serde_json::Value;

use super::entry::{AuditEntry, EntryDraft, seal_line};
use super::error::{AuditError, Interrupted, TailProblem, io_err, ser_err};
use super::head::{Head, head_one_behind, parse_line, read_head, torn_tail_explained, write_head};
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
    /// Refuses ([`AuditError::Broken`]) when the tail does not verify, or an interrupted
    /// append is not repaired yet ([`AuditLog::recover`]): an anchor must never vouch for
    /// a damaged log.
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
        let tail = self.inspect_tail(&mut file, len)?;
        match tail.interrupted.first() {
            None => Ok(tail.last),
            Some(i) => Err(self.broken(TailProblem::Interrupted { what: i.clone() })),
        }
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
    /// What an interrupted append left ([`Interrupted`]) is repaired first and recorded
    /// in an entry of its own. Refuses ([`AuditError::Broken`]) to extend a log whose
    /// last entry does not verify or does not match the head file in a way no crash
    /// explains. A write that fails (a full disk) leaves the log exactly as it was.
    pub fn append(&self, draft: EntryDraft, clock: &dyn Clock) -> Result<AuditEntry, AuditError> {
        draft.check()?;
        let draft = sanitise(draft);
        let mut file = open_for_append(&self.path)?;
        file.lock().map_err(io_err("lock", &self.path))?;
        let len = file.metadata().map_err(io_err("read", &self.path))?.len();
        let tail = self.inspect_tail(&mut file, len)?;
        let (last, len) = self.repair(&mut file, len, tail, clock)?;
        // The lock is released when `file` is dropped, after the head is in place.
        self.write_entry(&mut file, len, draft, last.as_ref(), clock)
    }

    /// Repair what an interrupted append left (a torn last line, a head file one entry
    /// behind), record the repair as an `audit.recover` entry, and remove the head
    /// file's stale temporary copies. Returns what was repaired (empty: nothing was).
    /// Run at every start of the service; appends do the same on their own. Refuses
    /// ([`AuditError::Broken`]) damage that no crash explains.
    pub fn recover(&self, clock: &dyn Clock) -> Result<Vec<Interrupted>, AuditError> {
        let mut file = match OpenOptions::new().read(true).append(true).open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return match read_head(&self.head)? {
                    None => Ok(Vec::new()),
                    Some(h) => Err(self.broken(TailProblem::EmptyButHead { head_seq: h.seq })),
                };
            }
            Err(e) => return Err(io_err("open", &self.path)(e)),
        };
        file.lock().map_err(io_err("lock", &self.path))?;
        remove_stale_head_copies(&self.head);
        let len = file.metadata().map_err(io_err("read", &self.path))?.len();
        let tail = self.inspect_tail(&mut file, len)?;
        let found = tail.interrupted.clone();
        self.repair(&mut file, len, tail, clock)?;
        Ok(found)
    }

    fn broken(&self, problem: TailProblem) -> AuditError {
        AuditError::Broken {
            path: self.path.clone(),
            problem,
        }
    }

    /// The tail of a locked log of `len` bytes: its last complete entry, checked against
    /// its own hash and the head file, and what an interrupted append left after it.
    fn inspect_tail(&self, file: &mut File, len: u64) -> Result<Tail, AuditError> {
        let head = read_head(&self.head)?;
        let mut interrupted = Vec::new();
        let mut complete = len;
        if len > 0 {
            let last = read_last_line(file, len).map_err(io_err("read", &self.path))?;
            if !last.ends_with(b"\n") {
                if !torn_tail_explained(last.len()) {
                    return Err(self.broken(TailProblem::Incomplete));
                }
                complete = len - last.len() as u64;
                interrupted.push(Interrupted::TornTail {
                    bytes: last.len() as u64,
                    sha256: crate::digest::sha256_hex(&last),
                });
            }
        }
        if complete == 0 {
            return match head {
                Some(h) => Err(self.broken(TailProblem::EmptyButHead { head_seq: h.seq })),
                None => Ok(Tail {
                    last: None,
                    complete,
                    interrupted,
                }),
            };
        }
        let line = read_last_line(file, complete).map_err(io_err("read", &self.path))?;
        let line = line.strip_suffix(b"\n").unwrap_or(&line);
        let last = parse_line(line)
            .map_err(|e| self.broken(TailProblem::Damaged { problem: e.problem }))?;
        let named = Head {
            seq: last.seq,
            hash: last.hash.clone(),
        };
        match head {
            Some(h) if h == named => {}
            h if head_one_behind(h.as_ref(), last.seq, &last.prev) => {
                interrupted.push(Interrupted::HeadBehind {
                    head_seq: h.map(|h| h.seq),
                    last_seq: last.seq,
                });
            }
            None => {
                return Err(self.broken(TailProblem::HeadMissing {
                    head: self.head.clone(),
                }));
            }
            Some(h) => {
                return Err(self.broken(TailProblem::HeadMismatch {
                    last_seq: last.seq,
                    head_seq: h.seq,
                }));
            }
        }
        Ok(Tail {
            last: Some(named),
            complete,
            interrupted,
        })
    }

    /// Repair a locked log of `len` bytes whose tail is `tail`: cut a torn line, bring
    /// the head file up to the last entry, and record both in an `audit.recover` entry.
    /// Returns the last entry and the log's length afterwards.
    fn repair(
        &self,
        file: &mut File,
        len: u64,
        tail: Tail,
        clock: &dyn Clock,
    ) -> Result<(Option<Head>, u64), AuditError> {
        if tail.interrupted.is_empty() {
            return Ok((tail.last, len));
        }
        if tail.complete < len {
            file.set_len(tail.complete)
                .and_then(|()| file.sync_all())
                .map_err(io_err("cut the torn last line of", &self.path))?;
            crate::durable::crash_point("audit torn line cut");
        }
        // The head first: an entry chained two past the head would look forged.
        if let Some(last) = &tail.last {
            write_head(&self.head, last)?;
        }
        let what = serde_json::to_value(&tail.interrupted).map_err(ser_err("the repair"))?;
        let draft = EntryDraft::new(RECOVERY_ACTOR, RECOVERY_ACTION)
            .detail("interrupted", what)
            .detail(
                "note",
                "an append was interrupted (crash, kill or full disk); repaired before the \
                 next entry",
            );
        let entry = self.write_entry(file, tail.complete, draft, tail.last.as_ref(), clock)?;
        let len = file.metadata().map_err(io_err("read", &self.path))?.len();
        Ok((
            Some(Head {
                seq: entry.seq,
                hash: entry.hash,
            }),
            len,
        ))
    }

    /// Number, time and chain a sanitised `draft` onto `last`, append it to the locked
    /// log of `len` bytes, `fsync`, and replace the head file. A failed write or `fsync`
    /// cuts the log back to `len` bytes, so a full disk leaves no torn line behind. Once
    /// the line is durable the entry stands: if the head file cannot be replaced then,
    /// the next append or start repairs it (see [`Interrupted::HeadBehind`]).
    fn write_entry(
        &self,
        file: &mut File,
        len: u64,
        draft: EntryDraft,
        last: Option<&Head>,
        clock: &dyn Clock,
    ) -> Result<AuditEntry, AuditError> {
        let path = &self.path;
        let (seq, prev) = match last {
            None => (1, GENESIS.to_string()),
            Some(last) => (last.seq + 1, last.hash.clone()),
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
        let written = file.write_all(line.as_bytes()).and_then(|()| {
            crate::durable::crash_point("audit line written");
            file.sync_all()
        });
        if let Err(e) = written {
            // Best effort: if even the cut fails, the next append finds a torn line.
            let _ = file.set_len(len).and_then(|()| file.sync_all());
            return Err(io_err("append to", path)(e));
        }
        crate::durable::crash_point("audit line fsync");
        if len == 0 {
            crate::durable::fsync_parent(path).map_err(io_err("fsync the folder of", path))?;
        }
        // Derived from the log: a failure here is repaired (and recorded) later.
        let _ = write_head(
            &self.head,
            &Head {
                seq: entry.seq,
                hash: entry.hash.clone(),
            },
        );
        Ok(entry)
    }
}

/// Who records a repair of the log.
pub const RECOVERY_ACTOR: &str = "service";
/// The action of a repair of the log.
pub const RECOVERY_ACTION: &str = "audit.recover";

/// A locked log's tail, as [`AuditLog::inspect_tail`] found it.
struct Tail {
    /// The last complete entry.
    last: Option<Head>,
    /// The log's length up to the end of that entry's line.
    complete: u64,
    /// What an interrupted append left, to repair before the next entry.
    interrupted: Vec<Interrupted>,
}

/// Remove the temporary copies of the head file that an interrupted replace left
/// (`.audit.head.tmp-*`, see [`crate::durable`]). Best effort: they are never read.
fn remove_stale_head_copies(head: &Path) {
    let (Some(dir), Some(name)) = (head.parent(), head.file_name()) else {
        return;
    };
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let is_file = e.file_type().is_ok_and(|t| t.is_file());
        if is_file && e.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(e.path());
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
    fn interrupted_appends_are_repaired_and_recorded() {
        use crate::audit::{Interrupted, head_path_for};
        // A torn line: cut, recorded, and the next entry chains on the last whole one.
        let (_d, path) = build(3);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"seq\":4,\"ti");
        std::fs::write(&path, &text).unwrap();
        let log = AuditLog::open(&path).unwrap();
        assert!(matches!(
            log.head(),
            Err(AuditError::Broken {
                problem: TailProblem::Interrupted { .. },
                ..
            })
        ));
        let e = log.append(draft(9), &clock(9)).unwrap();
        assert_eq!(e.seq, 5);
        let entries = crate::audit::read_entries(&path).unwrap();
        let repair = &entries[3].1;
        assert_eq!((repair.seq, repair.action.as_str()), (4, RECOVERY_ACTION));
        assert_eq!(repair.detail["interrupted"][0]["kind"], "torn_tail");
        assert_eq!(repair.detail["interrupted"][0]["bytes"], 12);
        let r = verify(&path).unwrap();
        assert!(r.is_intact() && r.interrupted.is_empty(), "{r:?}");

        // The head one behind (a crash between the log's fsync and the head's rename),
        // repaired at start by `recover`, which also removes stale head copies.
        let (_d, path) = build(3);
        let ls = lines(&path);
        let second: AuditEntry = serde_json::from_str(&ls[1]).unwrap();
        let head_path = head_path_for(&path);
        let behind = Head {
            seq: 2,
            hash: second.hash,
        };
        std::fs::write(&head_path, serde_json::to_string(&behind).unwrap()).unwrap();
        let stale = path.with_file_name(".audit.head.tmp-0011223344556677");
        std::fs::write(&stale, "{}").unwrap();
        let log = AuditLog::open(&path).unwrap();
        let found = log.recover(&clock(9)).unwrap();
        assert_eq!(
            found,
            vec![Interrupted::HeadBehind {
                head_seq: Some(2),
                last_seq: 3
            }]
        );
        assert!(!stale.exists());
        assert_eq!(log.head().unwrap().map(|h| h.seq), Some(4));
        assert!(log.recover(&clock(9)).unwrap().is_empty(), "nothing left");
        assert!(verify(&path).unwrap().is_intact());

        // Not explainable by a crash: still refused, nothing written.
        let (_d, path) = build(3);
        std::fs::write(
            head_path_for(&path),
            serde_json::to_string(&Head {
                seq: 1,
                hash: "0".repeat(64),
            })
            .unwrap(),
        )
        .unwrap();
        let before = std::fs::read(&path).unwrap();
        let log = AuditLog::open(&path).unwrap();
        assert!(matches!(
            log.recover(&clock(9)),
            Err(AuditError::Broken { .. })
        ));
        assert!(log.append(draft(9), &clock(9)).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), before);
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
