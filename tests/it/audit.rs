//! End-to-end tests of `tre audit verify` and `tre audit show`: a real log is written
//! through the library, tampered with on disk, and checked by the real binary.

use std::path::{Path, PathBuf};

use chrono::{TimeZone, Utc};
use sha2::{Digest, Sha256};
use tre_pipeline::audit::{AuditLog, EntryDraft, HashRef};
use tre_pipeline::clock::FixedClock;

use crate::util::{Workdir, s, show, tre_closed_stdout};

const H: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Six entries by three users over two projects, in WORKDIR/ws/audit/audit.jsonl.
fn real_log(w: &Workdir) -> PathBuf {
    std::fs::create_dir_all(w.join("ws/audit")).expect("mkdir");
    let log = AuditLog::in_workspace(&w.join("ws")).expect("open");
    let steps = [
        ("op", "extract", "P1", "diabetes outcomes"),
        ("alice", "query", "P1", "diabetes outcomes"),
        ("bob", "query", "P2", "asthma prescribing"),
        ("alice", "release.request", "P1", "diabetes outcomes"),
        ("carol", "release.review", "P1", "diabetes outcomes"),
        ("alice", "query", "P2", "asthma prescribing"),
    ];
    for (i, (actor, action, project, purpose)) in steps.iter().enumerate() {
        let clock = FixedClock(
            Utc.with_ymd_and_hms(2025, 3, 1, 9, i as u32, 0)
                .single()
                .expect("time"),
        );
        let mut d = EntryDraft::new(*actor, *action)
            .project(*project)
            .purpose(*purpose)
            .detail("rows", (i as u64 + 1) * 100)
            .input(HashRef::new(format!("data/{project}/in{i}.parquet"), H))
            .output(HashRef::new(format!("out/{i}.csv"), H));
        if i == 2 {
            d = d.refused("the result has a cell below the threshold");
        }
        log.append(d, &clock).expect("append");
    }
    log.path().to_path_buf()
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .expect("read log")
        .lines()
        .map(str::to_string)
        .collect()
}

fn put_lines(p: &Path, ls: &[String]) {
    std::fs::write(p, ls.join("\n") + "\n").expect("write log");
}

/// Run `tre audit verify --log LOG`, insist on exit 1, and return stdout + stderr.
fn tampered(w: &Workdir, log: &Path) -> String {
    let out = w.tre(&["audit", "verify", "--log", log.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Rewrite a line's `hash` to match its (changed) contents, computed independently of
/// the crate: SHA-256 of the line without its final `,"hash":"…"` member.
fn rehash(line: &str) -> String {
    let cut = line.rfind(",\"hash\":\"").expect("hash member");
    let body = format!("{}}}", &line[..cut]);
    format!("{},\"hash\":\"{}\"}}", &line[..cut], sha256_hex(&body))
}

fn field(line: &str, name: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(line).expect("json");
    v[name].clone()
}

fn set_field(line: &str, name: &str, value: serde_json::Value) -> String {
    // Replace the member in place, keeping the order of the others.
    let old = format!("\"{name}\":{}", field(line, name));
    let new = format!("\"{name}\":{value}");
    assert!(line.contains(&old), "{old} in {line}");
    line.replacen(&old, &new, 1)
}

#[test]
fn intact_log_verifies() {
    let w = Workdir::new();
    let log = real_log(&w);
    let out = w.tre_ok(&["audit", "verify", "--workspace", "ws"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let last_hash = field(&lines(&log)[5], "hash");
    assert!(text.contains("6 entries"), "{text}");
    assert!(
        text.contains(last_hash.as_str().expect("str")),
        "prints the anchor hash: {text}"
    );
    let out = w.tre_ok(&["audit", "verify", "--log", "ws/audit/audit.jsonl", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["problem"], serde_json::Value::Null);
    assert_eq!(v["last"]["seq"], 6);
}

#[test]
fn edited_entry_is_named() {
    let w = Workdir::new();
    let log = real_log(&w);
    let mut ls = lines(&log);
    ls[3] = set_field(&ls[3], "actor", serde_json::json!("mallory"));
    put_lines(&log, &ls);
    let msg = tampered(&w, &log);
    assert!(
        msg.contains("line 4 (seq 4)") && msg.contains("edited"),
        "{msg}"
    );
}

#[test]
fn edited_and_rehashed_entry_is_named() {
    let w = Workdir::new();
    let log = real_log(&w);
    let mut ls = lines(&log);
    ls[2] = rehash(&set_field(&ls[2], "outcome", serde_json::json!("ok")));
    put_lines(&log, &ls);
    let msg = tampered(&w, &log);
    assert!(
        msg.contains("line 3 (seq 3)") && msg.contains("replaced"),
        "{msg}"
    );
}

#[test]
fn deleted_entry_is_named() {
    let w = Workdir::new();
    let log = real_log(&w);
    for k in [0usize, 2, 4] {
        let w = Workdir::new();
        let log = real_log(&w);
        let mut ls = lines(&log);
        ls.remove(k);
        put_lines(&log, &ls);
        let msg = tampered(&w, &log);
        let want = format!("line {} (seq {})", k + 1, k + 2);
        assert!(
            msg.contains(&want) && msg.contains("removed"),
            "k={k}: {msg}"
        );
        assert!(msg.contains(&format!("seq {} is missing", k + 1)), "{msg}");
    }
    // The last entry: only the head file shows it is gone.
    let mut ls = lines(&log);
    ls.pop();
    put_lines(&log, &ls);
    let msg = tampered(&w, &log);
    assert!(
        msg.contains("line 6 (seq 6)") && msg.contains("removed"),
        "{msg}"
    );
    // Without the head it passes: that limit is documented, and --no-head says so.
    w.tre_ok(&["audit", "verify", "--workspace", "ws", "--no-head"]);
}

#[test]
fn reordered_entries_are_named() {
    let w = Workdir::new();
    let log = real_log(&w);
    let mut ls = lines(&log);
    ls.swap(1, 2);
    put_lines(&log, &ls);
    let msg = tampered(&w, &log);
    assert!(
        msg.contains("line 2 (seq 3)") && msg.contains("reordered"),
        "{msg}"
    );
}

#[test]
fn inserted_forgery_is_named() {
    let w = Workdir::new();
    let log = real_log(&w);
    let mut ls = lines(&log);
    // A forged entry that claims seq 4 and chains onto entry 3, with its own hash right.
    let forged = rehash(&set_field(&ls[3], "actor", serde_json::json!("mallory")));
    ls.insert(3, forged);
    put_lines(&log, &ls);
    let msg = tampered(&w, &log);
    assert!(
        msg.contains("line 4 (seq 4)") && msg.contains("inserted"),
        "{msg}"
    );

    // Two forged onto the end, chained and numbered correctly: the head file catches it.
    // (One alone looks exactly like an append interrupted before it replaced the head:
    // verify reports it as interrupted, and the next append or start records its repair.
    // Anyone who can append can also rewrite the head; off-host checkpoints are what
    // catch that.)
    let w = Workdir::new();
    let log = real_log(&w);
    let mut ls = lines(&log);
    for seq in [7u64, 8] {
        let last = ls[ls.len() - 1].clone();
        let mut forged = set_field(&last, "seq", seq.into());
        forged = set_field(&forged, "prev", field(&last, "hash"));
        ls.push(rehash(&forged));
    }
    put_lines(&log, &ls);
    let msg = tampered(&w, &log);
    assert!(msg.contains("line 7 (seq 7)"), "{msg}");
    ls.pop();
    put_lines(&log, &ls);
    let out = w.tre(&["audit", "verify", "--log", log.to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("interrupted"),
        "{}",
        show(&out)
    );
}

#[test]
fn garbage_is_named() {
    let w = Workdir::new();
    let log = real_log(&w);
    let mut text = std::fs::read_to_string(&log).expect("read");
    text.push_str("{\"seq\":7,\"oops\n");
    std::fs::write(&log, text).expect("write");
    let msg = tampered(&w, &log);
    assert!(msg.contains("line 7") && msg.contains("garbled"), "{msg}");
}

#[test]
fn unreadable_log_and_bad_usage_exit_2() {
    let w = Workdir::new();
    w.tre_code(&["audit", "verify", "--log", "nope.jsonl"], 2);
    w.tre_code(&["audit", "verify"], 2);
    w.tre_code(&["audit", "show", "--log", "a", "--workspace", "b"], 2);
}

#[test]
fn appending_to_a_tampered_log_is_refused() {
    let w = Workdir::new();
    let log = real_log(&w);
    let mut ls = lines(&log);
    ls[5] = set_field(&ls[5], "purpose", serde_json::json!("something else"));
    put_lines(&log, &ls);
    let err = AuditLog::open(&log)
        .expect("open")
        .append(
            EntryDraft::new("op", "purge"),
            &FixedClock(Utc.timestamp_opt(0, 0).single().expect("t")),
        )
        .expect_err("refused");
    assert!(tre_pipeline::error::Classify::is_refusal(&err), "{err}");
    assert_eq!(lines(&log).len(), 6, "nothing appended");
}

#[test]
fn show_filters_by_project_user_and_action() {
    let w = Workdir::new();
    real_log(&w);
    let rows = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut all = vec!["audit", "show", "--workspace", "ws", "--json"];
        all.extend_from_slice(args);
        let out = w.tre_ok(&all);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect()
    };
    let seqs = |rs: &[serde_json::Value]| -> Vec<u64> {
        rs.iter().map(|r| r["seq"].as_u64().expect("seq")).collect()
    };
    assert_eq!(seqs(&rows(&[])), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(
        seqs(&rows(&["--project", "P1", "--user", "alice"])),
        vec![2, 4]
    );
    assert_eq!(seqs(&rows(&["--project", "P2"])), vec![3, 6]);
    assert_eq!(seqs(&rows(&["--action", "release"])), vec![4, 5]);
    assert_eq!(seqs(&rows(&["--user", "nobody"])), Vec::<u64>::new());
    let refused = rows(&["--user", "bob"]);
    assert_eq!(refused[0]["outcome"], "refused");
    assert!(refused[0]["detail"]["reason"].is_string());

    // The table: who did what and why.
    let out = w.tre_ok(&[
        "audit",
        "show",
        "--workspace",
        "ws",
        "--project",
        "P1",
        "--user",
        "alice",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].starts_with("SEQ") && lines[0].contains("PURPOSE"),
        "{text}"
    );
    assert!(
        lines[1].contains("alice") && lines[1].contains("query"),
        "{text}"
    );
    assert!(lines[2].contains("release.request") && lines[2].contains("diabetes outcomes"));
}

#[test]
fn show_warns_about_a_tampered_log() {
    let w = Workdir::new();
    let log = real_log(&w);
    let mut ls = lines(&log);
    ls.remove(2);
    put_lines(&log, &ls);
    let out = w.tre_ok(&["audit", "show", "--workspace", "ws"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not verify") && err.contains("line 3"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------
// Anchors outside the log: signed checkpoints and manifests

/// `real_log`, a checkpoint key in the workspace, signed checkpoints at seq 3 and 6 in
/// WORKDIR/offhost (the operator's copy, with the public key), and a manifest anchored at
/// seq 4.
fn anchored_log(w: &Workdir) -> PathBuf {
    use tre_pipeline::audit::{AuditAnchor, CheckpointKey, write_checkpoint};
    let log_path = real_log(w);
    let ws = w.join("ws");
    let key = CheckpointKey::generate_into(&ws).expect("checkpoint key");
    let offhost = w.join("offhost");
    std::fs::create_dir_all(&offhost).expect("mkdir");
    std::fs::copy(
        tre_pipeline::audit::checkpoint::public_key_path(&ws),
        offhost.join("checkpoint.pub"),
    )
    .expect("copy the public key");
    // Checkpoint at seq 3 of a copy of the log cut to three entries, as the server
    // would have written it then; then the real one at seq 6.
    let ls = lines(&log_path);
    let early = w.join("early");
    std::fs::create_dir_all(&early).expect("mkdir");
    put_lines(&early.join("audit.jsonl"), &ls[..3]);
    let third = field(&ls[2], "hash");
    std::fs::write(
        early.join("audit.head"),
        serde_json::json!({"seq": 3, "hash": third}).to_string(),
    )
    .expect("head");
    let clock = FixedClock(Utc.timestamp_opt(1_740_000_000, 0).single().expect("t"));
    let cps = offhost.join("checkpoints");
    let early_log = AuditLog::open(early.join("audit.jsonl")).expect("open");
    write_checkpoint(&early_log, &key, &cps, &clock).expect("checkpoint 3");
    let log = AuditLog::open(&log_path).expect("open");
    write_checkpoint(&log, &key, &cps, &clock).expect("checkpoint 6");
    let fourth = field(&ls[3], "hash");
    let anchor = AuditAnchor {
        seq: 4,
        hash: fourth.as_str().expect("hash").to_string(),
    };
    let manifest = serde_json::json!({"project": "P1", "audit_head": anchor});
    std::fs::write(offhost.join("manifest.json"), manifest.to_string()).expect("manifest");
    log_path
}

const ANCHORED: &[&str] = &[
    "audit",
    "verify",
    "--workspace",
    "ws",
    "--checkpoints",
    "offhost/checkpoints",
    "--public-key",
    "offhost/checkpoint.pub",
    "--manifest",
    "offhost/manifest.json",
];

/// Run the anchored verify, insist on exit 1, and return stdout + stderr.
fn anchored_tampered(w: &Workdir) -> String {
    let out = w.tre(ANCHORED);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Rewrite the head file to name line `k` (0-based) of the log.
fn rewrite_head(log: &Path, k: usize) {
    let ls = lines(log);
    let head = serde_json::json!({"seq": k as u64 + 1, "hash": field(&ls[k], "hash")});
    std::fs::write(log.with_extension("head"), head.to_string()).expect("head");
}

/// Every file under `dir` with its bytes and modification time, to show a command wrote
/// nothing.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>, std::time::SystemTime)> {
    let mut all = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for item in std::fs::read_dir(&d).expect("list") {
            let p = item.expect("entry").path();
            let meta = std::fs::symlink_metadata(&p).expect("stat");
            if meta.is_dir() {
                todo.push(p);
            } else {
                let bytes = std::fs::read(&p).expect("read");
                all.push((p, bytes, meta.modified().expect("mtime")));
            }
        }
    }
    all.sort();
    all
}

#[test]
fn anchored_log_verifies() {
    let w = Workdir::new();
    anchored_log(&w);
    let before = snapshot(w.path());
    let out = w.tre_ok(ANCHORED);
    assert_eq!(snapshot(w.path()), before, "verification wrote nothing");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("6 entries"), "{text}");
    assert!(
        text.contains("ok checkpoint") && text.contains("checkpoint-3.json (seq 3)"),
        "{text}"
    );
    assert!(text.contains("checkpoint-6.json (seq 6)"), "{text}");
    assert!(
        text.contains("ok manifest") && text.contains("(seq 4)"),
        "{text}"
    );
    let out = w.tre_ok(&[ANCHORED, &["--json"]].concat());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["anchors"].as_array().expect("anchors").len(), 3);
}

#[test]
fn truncation_with_a_rewritten_head_is_caught_by_a_checkpoint() {
    let w = Workdir::new();
    let log = anchored_log(&w);
    let ls = lines(&log);
    put_lines(&log, &ls[..4]);
    rewrite_head(&log, 3);
    // The log and its head agree: alone, they pass.
    w.tre_ok(&["audit", "verify", "--workspace", "ws"]);
    let msg = anchored_tampered(&w);
    assert!(
        msg.contains("checkpoint-6.json (seq 6)") && msg.contains("ends at seq 4"),
        "{msg}"
    );
}

#[test]
fn a_recomputed_chain_is_caught_by_a_checkpoint() {
    let w = Workdir::new();
    let log = anchored_log(&w);
    let mut ls = lines(&log);
    // Rewrite entry 2 and re-chain everything after it, hashes recomputed.
    ls[1] = rehash(&set_field(&ls[1], "actor", serde_json::json!("mallory")));
    for k in 2..ls.len() {
        let prev = field(&ls[k - 1], "hash");
        ls[k] = rehash(&set_field(&ls[k], "prev", prev));
    }
    put_lines(&log, &ls);
    rewrite_head(&log, 5);
    w.tre_ok(&["audit", "verify", "--workspace", "ws"]);
    let msg = anchored_tampered(&w);
    assert!(
        msg.contains("the first bad one is checkpoint")
            && msg.contains("checkpoint-3.json (seq 3)")
            && msg.contains("recomputed"),
        "{msg}"
    );
}

#[test]
fn a_deleted_log_and_head_are_caught_by_a_checkpoint() {
    let w = Workdir::new();
    let log = anchored_log(&w);
    std::fs::remove_file(&log).expect("rm log");
    std::fs::remove_file(log.with_extension("head")).expect("rm head");
    // Without anchors the log is simply unreadable (exit 2) ...
    w.tre_code(&["audit", "verify", "--workspace", "ws"], 2);
    // ... with them, it is tampering (exit 1), naming the first checkpoint it breaks.
    let before = snapshot(w.path());
    let msg = anchored_tampered(&w);
    assert_eq!(snapshot(w.path()), before, "verification created nothing");
    assert!(
        msg.contains("checkpoint-3.json (seq 3)") && msg.contains("missing"),
        "{msg}"
    );
}

#[test]
fn a_manifest_anchor_mismatch_is_caught() {
    let w = Workdir::new();
    let log = anchored_log(&w);
    // Rewrite entry 4 alone, re-hash it and everything after it, and check against the
    // manifest only.
    let mut ls = lines(&log);
    ls[3] = rehash(&set_field(
        &ls[3],
        "purpose",
        serde_json::json!("something else"),
    ));
    for k in 4..ls.len() {
        let prev = field(&ls[k - 1], "hash");
        ls[k] = rehash(&set_field(&ls[k], "prev", prev));
    }
    put_lines(&log, &ls);
    rewrite_head(&log, 5);
    let out = w.tre(&[
        "audit",
        "verify",
        "--log",
        "ws/audit/audit.jsonl",
        "--manifest",
        "offhost/manifest.json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(
        msg.contains("manifest") && msg.contains("(seq 4)") && msg.contains("different hash"),
        "{msg}"
    );
}

#[test]
fn a_forged_checkpoint_is_refused() {
    let w = Workdir::new();
    anchored_log(&w);
    let cp = w.join("offhost/checkpoints/checkpoint-6.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cp).expect("read")).expect("json");
    v["time"] = serde_json::json!("2031-01-01T00:00:00.000Z");
    std::fs::write(&cp, v.to_string()).expect("write");
    let msg = anchored_tampered(&w);
    assert!(
        msg.contains("checkpoint-6.json") && msg.contains("signature"),
        "{msg}"
    );
}

#[test]
fn show_never_prints_terminal_escapes() {
    let w = Workdir::new();
    let log_path = real_log(&w);
    let log = AuditLog::open(&log_path).expect("open");
    let clock = FixedClock(Utc.timestamp_opt(1_740_000_000, 0).single().expect("t"));
    // Through the library: sanitised on the way in.
    log.append(
        EntryDraft::new("alice", "query")
            .project("P1")
            .purpose("\x1b[2J\x1b]0;owned\x07 9434765919"),
        &clock,
    )
    .expect("append");
    // As stored by hand (or an older tre): a raw escape in a correctly chained entry.
    let ls = lines(&log_path);
    let mut e: tre_pipeline::audit::AuditEntry = serde_json::from_str(&ls[6]).expect("entry");
    e.seq = 8;
    e.prev = e.hash.clone();
    e.purpose = Some("\x1b[2J\u{9b}31m\u{202e}gnp.exe".into());
    e.hash = e.compute_hash().expect("hash");
    let mut ls = ls;
    ls.push(e.to_line().expect("line"));
    put_lines(&log_path, &ls);
    rewrite_head(&log_path, 7);
    for extra in [&[][..], &["--json"][..]] {
        let out = w.tre_ok(&[&["audit", "show", "--workspace", "ws"][..], extra].concat());
        for stream in [&out.stdout, &out.stderr] {
            assert!(
                !stream.contains(&0x1b),
                "{}",
                String::from_utf8_lossy(stream)
            );
            let text = String::from_utf8_lossy(stream);
            assert!(
                !text.contains('\u{9b}') && !text.contains('\u{202e}') && !text.contains('\x07'),
                "{text}"
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("[2J"), "the text is shown, escaped: {text}");
        assert!(!text.contains("9434765919"), "{text}");
    }
}

#[test]
fn checkpoint_command_anchors_a_workspace_log() {
    let w = Workdir::new();
    // `tre admin init` makes the checkpoint key and appends the first entry.
    w.admin_init();
    let out = w.tre_ok(&["audit", "checkpoint", "--workspace", "ws"]);
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        path.ends_with(".json") && path.contains("checkpoint-"),
        "{path}"
    );
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(w.join(&path)).expect("read")).expect("json");
    assert!(record["seq"].as_u64() >= Some(1), "{record}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(w.join("ws/keys/audit-checkpoint.key"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // A second key is refused; the same head again is the same checkpoint.
    w.tre_code(
        &["audit", "checkpoint", "--workspace", "ws", "--new-key"],
        1,
    );
    w.tre_ok(&["audit", "checkpoint", "--workspace", "ws"]);
    // The workspace's own checkpoints are checked by a plain verify ...
    let out = w.tre_ok(&["audit", "verify", "--workspace", "ws"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ok checkpoint"), "{text}");
    // ... so deleting the log and its head is tampering, not an unreadable log.
    std::fs::remove_file(w.join("ws/audit/audit.jsonl")).expect("rm");
    std::fs::remove_file(w.join("ws/audit/audit.head")).expect("rm");
    let out = w.tre(&["audit", "verify", "--workspace", "ws"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("checkpoint-1.json (seq 1)"),
        "{}",
        show(&out)
    );
}

#[test]
fn a_closed_stdout_ends_cleanly_after_the_work_and_never_hides_a_tampered_log() {
    let w = Workdir::new();
    let log = real_log(&w);
    let log_arg = s(&log);
    let clean = |args: &[&str], code: i32| -> String {
        let out = tre_closed_stdout(w.path(), args);
        assert_eq!(out.status.code(), Some(code), "{args:?}\n{}", show(&out));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{args:?}: {err}"
        );
        err
    };
    // `tre audit show | head`: done, nothing to report.
    clean(&["audit", "show", "--log", log_arg], 0);
    clean(&["audit", "show", "--log", log_arg, "--json"], 0);
    clean(&["audit", "verify", "--log", log_arg], 0);
    // The verdict does not depend on anyone reading the report.
    let ls = lines(&log);
    let mut edited = ls.clone();
    edited[1] = set_field(&ls[1], "actor", serde_json::json!("mallory"));
    put_lines(&log, &edited);
    let err = clean(&["audit", "verify", "--log", log_arg], 1);
    assert!(err.contains("does not verify"), "{err}");
    put_lines(&log, &ls);

    // Work that prints after it is done is done, and audited, before the print fails.
    let w = Workdir::new();
    w.admin_init();
    let clean = |args: &[&str]| {
        let out = tre_closed_stdout(w.path(), args);
        assert_eq!(out.status.code(), Some(0), "{args:?}\n{}", show(&out));
    };
    clean(&["admin", "user", "add", "--workspace", "ws", "alice"]);
    let entries = lines(&w.join("ws/audit/audit.jsonl"));
    assert!(
        entries.iter().any(|l| l.contains("alice")),
        "the user's audit entry is written: {entries:?}"
    );
    clean(&["audit", "checkpoint", "--workspace", "ws"]);
    let checkpoints = std::fs::read_dir(w.join("ws/audit/checkpoints"))
        .expect("checkpoints")
        .count();
    assert_eq!(checkpoints, 1, "the checkpoint is written");
}
