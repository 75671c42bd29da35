//! Crash-point enumeration of `tre serve` (issue 21, "What it must show").
//!
//! A debug build numbers every durable step (file created, written, fsynced, renamed,
//! folder fsynced, audit line written and fsynced, torn audit line cut) on stderr when
//! `TRE_CRASH_AT` is set, and aborts at step N (`pipeline/durable.rs`). The test counts
//! the steps of one whole flow as the service runs it (start, job submitted and run,
//! release requested, two approvals, export, shutdown), and of two such flows at once,
//! then for every step: from a copy
//! of the same workspace, runs the flow with the server aborting at that step, restarts
//! the server as an operator would (no flag, no repair command) and checks that
//! - it starts, and the audit log and its checkpoints verify;
//! - no job is left queued or running, and none ran twice;
//! - nothing is in the outbox unless its release is exported with two approvals, every
//!   outbox table has its manifest, and a release recorded as exported has both files;
//! - a fresh flow then exports.
//!
//! Beside it: a full disk (a small tmpfs under the workspace), and the anchors outside
//! the workspace (the checkpoint key given from outside, a deleted or restarted log).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tre_pipeline::client::Client;
use tre_pipeline::tre::users::Token;

use crate::util::{Server, Tre, TreSetup, Workdir, audit_entries as audit, s};

const COUNTS: &str =
    "SELECT age_band, COUNT(*) AS n FROM patients GROUP BY age_band ORDER BY age_band";

/// The job -> request -> two approvals flow; stops at the first error (the server died).
/// Returns the release id once the second approval answered.
fn flow(base: &str, tokens: &BTreeMap<String, String>) -> Result<String, String> {
    let as_ = |u: &str| Client::new(base, Token::new(tokens[u].clone()));
    let e = |what: &'static str| move |err| format!("{what}: {err:?}");
    let analyst = as_("analyst");
    let v = analyst
        .submit("demo", COUNTS, "crash-point enumeration")
        .map_err(e("submit"))?;
    let job = v["job"].as_str().ok_or("no job id")?.to_string();
    let v = analyst
        .wait("demo", &job, Duration::from_secs(120))
        .map_err(e("wait"))?;
    if v["state"] != "succeeded" {
        return Err(format!("the job ended {}", v["state"]));
    }
    let r = analyst
        .request("demo", &job, "Table 1 of the paper", "counts by age band")
        .map_err(e("request"))?;
    let rel = r["release"].as_str().ok_or("no release id")?.to_string();
    as_("checker1")
        .review("demo", &rel, true, "suppressed and rounded")
        .map_err(e("review 1"))?;
    let v = as_("checker2")
        .review("demo", &rel, true, "agree")
        .map_err(e("review 2"))?;
    if v["state"] != "exported" {
        return Err(format!("the release is {}", v["state"]));
    }
    Ok(rel)
}

/// The durable steps a server printed on stderr.
fn steps(stderr: &Path) -> Vec<String> {
    std::fs::read_to_string(stderr)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("durable step "))
        .map(str::to_string)
        .collect()
}

/// The ids in a folder of the workspace (`projects/demo/<what>`), without extensions.
fn ids(ws: &Path, what: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(ws.join("projects/demo").join(what)) else {
        return Vec::new();
    };
    let mut v: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .map(|n| n.trim_end_matches(".json").to_string())
        .collect();
    v.sort();
    v
}

/// Everything that must hold after a crash at `step` and a restart.
fn check_after_restart(w: &Workdir, tre: &Tre, base: &str, step: usize, what: &str) {
    let at = format!("after a crash at step {step} ({what})");
    let ws = w.join("ws");
    let out = w.tre(&["audit", "verify", "--workspace", "ws"]);
    assert!(
        out.status.success(),
        "{at}: the audit does not verify\n{}",
        crate::util::show(&out)
    );
    let analyst = Client::new(base, Token::new(tre.tokens["analyst"].clone()));
    let checker = Client::new(base, Token::new(tre.tokens["checker1"].clone()));
    for job in ids(&ws, "results") {
        let v = analyst
            .wait("demo", &job, Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("{at}: job {job}: {e:?}"));
        let state = v["state"].as_str().unwrap_or_default().to_string();
        assert!(
            !matches!(state.as_str(), "queued" | "running"),
            "{at}: job {job} is left {state}"
        );
        let runs = audit(&ws)
            .iter()
            .filter(|e| e["action"] == "job.run" && e["detail"]["job"] == job.as_str())
            .filter(|e| e["outcome"] == "ok")
            .count();
        assert!(runs <= 1, "{at}: job {job} ran {runs} times");
    }
    let outbox = w.join("outbox");
    let files: Vec<String> = std::fs::read_dir(&outbox)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    for f in &files {
        assert!(
            f.ends_with(".csv") || f.ends_with(".manifest.json"),
            "{at}: a file no reader should see in the outbox: {f}"
        );
    }
    for rel in ids(&ws, "requests") {
        let v = checker
            .release("demo", &rel)
            .unwrap_or_else(|e| panic!("{at}: release {rel}: {e:?}"));
        let csv = files.contains(&format!("demo-{rel}.csv"));
        let manifest = files.contains(&format!("demo-{rel}.manifest.json"));
        let exported = v["state"] == "exported";
        let approvals = v["approvals"].as_array().map_or(0, Vec::len);
        assert!(
            !(csv || manifest) || exported,
            "{at}: outbox files for release {rel} recorded as {}",
            v["state"]
        );
        assert_eq!(
            (csv, manifest),
            (exported, exported),
            "{at}: release {rel} is {} but the outbox holds csv {csv}, manifest {manifest}",
            v["state"]
        );
        assert!(
            !exported || approvals >= 2,
            "{at}: release {rel} exported with {approvals} approvals"
        );
    }
    assert_eq!(
        files.len(),
        2 * files.iter().filter(|f| f.ends_with(".csv")).count(),
        "{at}: every outbox table has its manifest: {files:?}"
    );
}

#[test]
fn a_crash_at_any_durable_step_of_the_service_is_survived() {
    enumerate_crashes(1, 21);
}

#[test]
fn a_crash_at_any_durable_step_of_two_concurrent_flows_is_survived() {
    enumerate_crashes(2, 24);
}

/// `flows` flows at once, as many threads.
fn flows(base: &str, tokens: &BTreeMap<String, String>, flows: usize) -> Result<(), String> {
    std::thread::scope(|scope| {
        let running: Vec<_> = (0..flows)
            .map(|_| scope.spawn(|| flow(base, tokens)))
            .collect();
        running
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|_| Err("a flow panicked".into())))
            .collect::<Result<Vec<_>, _>>()
            .map(|_| ())
    })
}

/// Count the durable steps of `n` concurrent flows, then crash the server at each one in
/// turn (from a copy of the same workspace), restart it and check. With two flows the
/// interleaving differs from run to run, so step N is not always the same operation: the
/// runs together still cover every kind of step, and each run checks every invariant.
fn enumerate_crashes(n: usize, seed: u64) {
    let tre = TreSetup::demo(300, seed)
        .users(&["analyst", "checker1", "checker2"])
        .build();

    // Count the durable steps (0: number them, never abort).
    let probe = tre.w.copy();
    probe.admin_outbox("demo", "outbox");
    let log = probe.join("server.err");
    let mut server = Server::start_env(&probe, &[], &[("TRE_CRASH_AT", "0")], Some(&log));
    flows(&server.base, &tre.tokens, n).expect("the flows without a crash");
    server.stop();
    let all = steps(&log);
    assert!(all.len() > 10, "too few durable steps: {all:?}");

    let only: Option<usize> = std::env::var("TRE_CRASH_STEP")
        .ok()
        .and_then(|v| v.parse().ok());
    let mut failures = Vec::new();
    for (i, what) in all.iter().enumerate() {
        let step = i + 1;
        if only.is_some_and(|o| o != step) {
            continue;
        }
        let one = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            crash_and_restart(&tre, n, step, what)
        }));
        if let Err(e) = one {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("step {step} ({what}): {msg}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} crash points fail:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}

/// Crash the server at `step` of `n` concurrent flows, restart it, check, and run a
/// fresh flow.
fn crash_and_restart(tre: &Tre, n: usize, step: usize, what: &str) {
    let w = tre.w.copy();
    w.admin_outbox("demo", "outbox");
    let err = w.join("server.err");
    let at = step.to_string();
    let mut server = Server::start_env(&w, &[], &[("TRE_CRASH_AT", at.as_str())], Some(&err));
    let _ = flows(&server.base, &tre.tokens, n);
    server.stop();
    let restarted = Server::start_env(&w, &[], &[], Some(&err));
    check_after_restart(&w, tre, &restarted.base, step, what);
    flow(&restarted.base, &tre.tokens).unwrap_or_else(|e| {
        panic!(
            "after a crash at step {step} ({what}) and a restart, a fresh flow fails: {e}\n{}",
            std::fs::read_to_string(&err).unwrap_or_default()
        )
    });
    drop(restarted);
    let out = w.tre(&["audit", "verify", "--workspace", s(&w.join("ws"))]);
    assert!(
        out.status.success(),
        "step {step}: {}",
        crate::util::show(&out)
    );
}

/// A small tmpfs mounted over a test's workspace, unmounted when dropped.
struct SmallDisk {
    at: std::path::PathBuf,
}

impl SmallDisk {
    /// Move `w/ws` onto a tmpfs with `spare` bytes free beyond what it holds.
    fn under_workspace(w: &Workdir, spare: u64) -> SmallDisk {
        let ws = w.join("ws");
        let aside = w.join("ws.orig");
        std::fs::rename(&ws, &aside).expect("move the workspace aside");
        std::fs::create_dir(&ws).expect("mount point");
        let used = dir_size(&aside);
        let size = format!("size={},mode=0700", used + spare);
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &size, "tmpfs"])
            .arg(&ws)
            .output();
        match mounted {
            Ok(o) if o.status.success() => {}
            other => panic!(
                "this test mounts a small tmpfs (run as root, as CI does): {:?}",
                other.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            ),
        }
        let disk = SmallDisk { at: ws.clone() };
        let mut from = aside.into_os_string();
        from.push("/.");
        crate::util::run_ok(
            std::process::Command::new("cp")
                .arg("-a")
                .arg(from)
                .arg(&ws),
            "copy the workspace onto the tmpfs",
        );
        disk
    }

    /// Fill what is free with a file; returns it.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.at.join(".filler");
        let mut f = std::fs::File::create(&path).expect("filler");
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.at)
            .output();
    }
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(m) = e.metadata() else { continue };
        total += if m.is_dir() {
            dir_size(&e.path()) + 4096
        } else {
            m.len().div_ceil(4096) * 4096
        };
    }
    total
}

#[test]
fn a_full_disk_gives_clean_refusals_and_the_tre_works_again_once_space_is_freed() {
    let tre = TreSetup::demo(300, 22)
        .users(&["analyst", "checker1", "checker2"])
        .build();
    let disk = SmallDisk::under_workspace(&tre.w, 4 << 20);
    let server = Server::start(&tre.w, &[]);
    let analyst = Client::new(&server.base, Token::new(tre.tokens["analyst"].clone()));
    let filler = disk.fill();
    // Every action is refused while the disk is full: nothing half-written.
    for _ in 0..3 {
        let r = analyst.submit("demo", COUNTS, "while the disk is full");
        assert!(r.is_err(), "an action went through on a full disk: {r:?}");
    }
    let out = tre.w.tre(&["audit", "verify", "--workspace", "ws"]);
    assert!(
        out.status.success(),
        "a full disk damaged the audit log\n{}",
        crate::util::show(&out)
    );
    std::fs::remove_file(&filler).expect("free the space");
    // The same server works again, with no restart and no repair by hand.
    flow(&server.base, &tre.tokens).expect("the flow once space is freed");
    drop(server);
    let out = tre.w.tre(&["audit", "verify", "--workspace", "ws"]);
    assert!(out.status.success(), "{}", crate::util::show(&out));
    let jobs = ids(&tre.w.join("ws"), "results");
    assert_eq!(
        jobs.len(),
        1,
        "only the job submitted once space was freed: {jobs:?}"
    );
    drop(disk);
}

/// `tre serve` with `extra` arguments must refuse to start (exit 1): its stderr.
fn refused_start(w: &Workdir, extra: &[&str]) -> String {
    let mut args = vec!["serve", "--workspace", "ws", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let out = w.tre(&args);
    assert_eq!(out.status.code(), Some(1), "{}", crate::util::show(&out));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// One round of `tre audit follow` into `to`.
fn follow(w: &Workdir, to: &Path) -> std::process::Output {
    w.tre(&[
        "audit",
        "follow",
        "--workspace",
        "ws",
        "--to",
        s(to),
        "--once",
    ])
}

#[test]
fn the_checkpoint_key_lives_outside_and_a_deleted_or_restarted_log_is_refused() {
    let tre = TreSetup::demo(300, 23).users(&["analyst"]).build();
    let w = &tre.w;
    // The operator moves the signing key out of the workspace.
    let inside = w.join("ws/keys/audit-checkpoint.key");
    let outside = w.join("ckpt.key");
    std::fs::copy(&inside, &outside).expect("copy the key");
    crate::util::chmod(&outside, 0o400);
    let key_arg = ["--checkpoint-key", s(&outside)];
    // A copy left inside is refused: the point is that the workspace cannot sign.
    assert!(refused_start(w, &key_arg).contains("must be removed"));
    std::fs::remove_file(&inside).expect("remove the key from the workspace");
    // A key inside the workspace is refused as the outside key.
    let planted = w.join("ws/audit/k.key");
    std::fs::copy(&outside, &planted).expect("copy");
    refused_start(w, &["--checkpoint-key", s(&planted)]);
    std::fs::remove_file(&planted).expect("remove");

    let server = Server::start_env(w, &key_arg, &[], Some(&w.join("server.err")));
    let c = Client::new(&server.base, Token::new(tre.tokens["analyst"].clone()));
    c.get("/api/me").expect("me");
    drop(server); // SIGTERM: a checkpoint at the stop, signed with the outside key
    let start = audit(&w.join("ws"))
        .into_iter()
        .rfind(|e| e["action"] == "serve.start")
        .expect("serve.start");
    assert_eq!(start["detail"]["checkpoint_key"], "outside the workspace");
    // Off-host copies, then the log deleted and restarted with its head: refused at start.
    let offhost = w.join("offhost");
    let out = follow(w, &offhost);
    assert!(out.status.success(), "{}", crate::util::show(&out));
    std::fs::remove_file(w.join("ws/audit/audit.jsonl")).expect("delete the log");
    std::fs::remove_file(w.join("ws/audit/audit.head")).expect("delete the head");
    let said = refused_start(w, &key_arg);
    assert!(said.contains("does not match its checkpoints"), "{said}");
    // With the workspace's checkpoints deleted too, only the off-host copy can tell.
    std::fs::remove_dir_all(w.join("ws/audit/checkpoints")).expect("delete checkpoints");
    let out = follow(w, &offhost);
    assert_eq!(out.status.code(), Some(1), "{}", crate::util::show(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ALERT"));
    refused_start(w, &[key_arg[0], key_arg[1], "--anchors", s(&offhost)]);
}

/// The operator's commands in the order a TRE is set up and then maintained, each with
/// its audit action and a check that its effect holds.
struct OpStep {
    name: &'static str,
    args: Vec<String>,
    action: &'static str,
}

fn op_steps() -> Vec<OpStep> {
    let a = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let policy = s(&crate::util::demo_policy_path()).to_string();
    vec![
        OpStep {
            name: "project add",
            args: a(&[
                "admin",
                "project",
                "add",
                "--workspace",
                "ws",
                &policy,
                "-q",
            ]),
            action: "admin.project.add",
        },
        OpStep {
            name: "project outbox",
            args: a(&[
                "admin",
                "project",
                "outbox",
                "--workspace",
                "ws",
                "demo",
                "outbox",
                "-q",
            ]),
            action: "admin.project.outbox",
        },
        OpStep {
            name: "dataset add",
            args: a(&[
                "admin",
                "dataset",
                "add",
                "--workspace",
                "ws",
                "demo",
                "extract",
                "-q",
            ]),
            action: "admin.dataset.add",
        },
        OpStep {
            name: "user add",
            args: a(&["admin", "user", "add", "--workspace", "ws", "dora", "-q"]),
            action: "admin.user.add",
        },
        OpStep {
            name: "user revoke",
            args: a(&["admin", "user", "revoke", "--workspace", "ws", "dora", "-q"]),
            action: "admin.user.revoke",
        },
        OpStep {
            name: "purge",
            args: a(&crate::util::purge_with(&crate::util::today(), &["-q"])),
            action: "purge.start",
        },
        OpStep {
            name: "refresh",
            args: a(&[
                "admin",
                "refresh",
                "--workspace",
                "ws",
                "demo",
                "--input",
                "in",
                "--opt-outs",
                "full.txt",
                "--opt-outs-as-of",
                &crate::util::today(),
                "--key-file",
                "project.key",
                "--staging",
                "stage/demo",
                "--threads",
                "1",
                "-q",
            ]),
            action: "refresh.start",
        },
    ]
}

/// After a crash of an operator command: the server starts (and reconciles) and the audit
/// verifies; when the command's effect is not there, every intent it recorded since
/// `before` is named by a `service.recover` entry (the audit says it did not happen).
fn check_operator_crash(w: &Workdir, op: &OpStep, before: usize, at: &str) {
    let err = w.join("server.err");
    let mut server = Server::start_env(w, &[], &[], Some(&err));
    server.stop();
    let out = w.tre(&["audit", "verify", "--workspace", "ws"]);
    assert!(out.status.success(), "{at}: {}", crate::util::show(&out));
    let log = audit(&w.join("ws"));
    let recovered: Vec<u64> = log
        .iter()
        .filter(|e| e["action"] == "service.recover")
        .filter_map(|e| e["detail"]["seq"].as_u64())
        .collect();
    if operator_effect(w, op) {
        return;
    }
    for e in log[before.min(log.len())..]
        .iter()
        .filter(|e| e["action"] == op.action && e["outcome"] == "ok")
    {
        let seq = e["seq"].as_u64().unwrap_or_default();
        assert!(
            recovered.contains(&seq),
            "{at}: entry {seq} ({}) did not take effect and no recovery entry says so",
            op.action
        );
    }
}

/// Whether `op`'s effect is in the workspace (its record is written by an atomic rename,
/// so its presence is the effect).
fn operator_effect(w: &Workdir, op: &OpStep) -> bool {
    let users = || {
        String::from_utf8_lossy(
            &w.tre(&["admin", "user", "list", "--workspace", "ws"])
                .stdout,
        )
        .into_owned()
    };
    let project = w.join("ws/projects/demo");
    match op.action {
        "admin.user.add" => users().lines().any(|l| l.starts_with("dora\tactive")),
        "admin.user.revoke" => users().lines().any(|l| l.starts_with("dora\trevoked")),
        "admin.project.add" => project.join("installed.json").is_file(),
        "admin.project.outbox" => project.join("outbox.json").is_file(),
        "admin.dataset.add" => project.join("data/dataset.json").is_file(),
        "refresh.start" => audit(&w.join("ws"))
            .iter()
            .any(|e| e["action"] == "refresh" && e["outcome"] == "ok"),
        _ => audit(&w.join("ws"))
            .iter()
            .any(|e| e["action"] == "purge" && e["outcome"] == "ok"),
    }
}

#[test]
fn a_crash_at_any_durable_step_of_the_operator_commands_is_survived() {
    // The state before each command: a workspace with its people, then each command in
    // turn (the purge's list names ten patients of the extract).
    let tre = TreSetup::demo(200, 26)
        .users(&["analyst", "checker1", "checker2"])
        .build();
    let base = Workdir::new();
    let mut from = tre.w.path().as_os_str().to_owned();
    from.push("/.");
    crate::util::run_ok(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(from)
            .arg(base.path()),
        "copy",
    );
    std::fs::remove_dir_all(base.join("ws")).expect("a fresh workspace");
    base.admin_init();
    let patients = std::fs::read_to_string(base.join("in/patients.csv")).expect("patients");
    let mut rdr = csv::Reader::from_reader(patients.as_bytes());
    let nhs = rdr
        .headers()
        .expect("header")
        .iter()
        .position(|h| h == "nhs_number")
        .expect("nhs_number");
    let victims: Vec<String> = rdr
        .records()
        .take(10)
        .map(|r| r.expect("row")[nhs].to_string())
        .collect();
    base.write("newer.txt", format!("nhs_number\n{}\n", victims.join("\n")));
    // The refresh's deny-list: everyone opted out so far and the purge's ten.
    let earlier = std::fs::read_to_string(base.join("in/opt_outs.txt")).expect("opt-outs");
    base.write(
        "full.txt",
        format!("{}\n{}\n", earlier.trim_end(), victims.join("\n")),
    );

    let only: Option<usize> = std::env::var("TRE_CRASH_STEP")
        .ok()
        .and_then(|v| v.parse().ok());
    let mut failures = Vec::new();
    let mut counted = 0;
    for op in op_steps() {
        let args: Vec<&str> = op.args.iter().map(String::as_str).collect();
        // Count its steps on a copy.
        let probe = base.copy();
        let out = probe.tre_env(&args, &[("TRE_CRASH_AT", "0")]);
        assert!(
            out.status.success(),
            "{}: {}",
            op.name,
            crate::util::show(&out)
        );
        let all: Vec<String> = String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter_map(|l| l.strip_prefix("durable step "))
            .map(str::to_string)
            .collect();
        assert!(!all.is_empty(), "{}: no durable step", op.name);
        let before = audit(&base.join("ws")).len();
        for (i, what) in all.iter().enumerate() {
            counted += 1;
            if only.is_some_and(|o| o != counted) {
                continue;
            }
            let step = (i + 1).to_string();
            let at = format!("{} crashed at its step {step} ({what})", op.name);
            let one = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let w = base.copy();
                let out = w.tre_env(&args, &[("TRE_CRASH_AT", step.as_str())]);
                assert!(!out.status.success(), "{at}: the command did not stop");
                check_operator_crash(&w, &op, before, &at);
                // Unless it took effect, the operator runs it again, as the recovery
                // entry tells them; then it holds, the audit verifies and the server
                // starts.
                if !operator_effect(&w, &op) {
                    let again = w.tre(&args);
                    assert!(
                        again.status.success(),
                        "{at}: the re-run fails: {}",
                        crate::util::show(&again)
                    );
                }
                assert!(
                    operator_effect(&w, &op),
                    "{at}: the re-run did not take effect"
                );
                let out = w.tre(&["audit", "verify", "--workspace", "ws"]);
                assert!(out.status.success(), "{at}: {}", crate::util::show(&out));
                drop(Server::start_env(&w, &[], &[], Some(&w.join("server.err"))));
            }));
            if let Err(e) = one {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(msg);
            }
        }
        // The next command starts from this one's effect.
        base.tre_ok(&args);
    }
    assert!(
        failures.is_empty(),
        "{} of {counted} crash points fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
