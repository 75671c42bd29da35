//! Issue 21 end to end: crash-consistent export (failure, retry, a crash at every durable
//! step of the second approval, then `release::recover`), sealed records bound to their
//! path and to the audit log (rollback and copy refused), one forged user refusing only
//! that user, symlinks planted while the server runs, and installed policy and ledger
//! edits refused on the next load.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tre_pipeline::client::{Client, ClientError};
use tre_pipeline::tre::users::Token;

use crate::util::{Server, Tre, TreSetup, Workdir, repo};

const COUNTS: &str =
    "SELECT age_band, COUNT(*) AS n FROM patients GROUP BY age_band ORDER BY age_band";

const TRE: &str = "users = [\"analyst\"]\noutput_checkers = [\"checker1\", \"checker2\"]\noutput_rules = \"opensafely\"\nmax_query_seconds = 60\n";

fn policy() -> String {
    let text = std::fs::read_to_string(repo().join("policies/demo.toml")).expect("policy");
    let head = text.split("[tre]").next().expect("has [tre]");
    format!("{head}[tre]\n{TRE}\n")
}

struct Svc {
    server: Server,
    w: Workdir,
    tokens: std::collections::BTreeMap<String, String>,
}

impl Svc {
    fn start() -> Svc {
        let Tre { w, tokens, .. } = TreSetup::demo(600, 7)
            .policy_text(policy())
            .users(&["analyst", "checker1", "checker2"])
            .build();
        let server = Server::start(&w, &[]);
        Svc { server, w, tokens }
    }

    fn as_(&self, user: &str) -> Client {
        Client::new(&self.server.base, Token::new(self.tokens[user].clone()))
    }

    fn ws(&self) -> PathBuf {
        self.w.join("ws")
    }

    fn outbox(&self) -> PathBuf {
        self.w.join("outbox")
    }

    fn audit(&self) -> Vec<Value> {
        crate::util::audit_entries(&self.ws())
    }

    /// A succeeded job and a release request for it.
    fn requested(&self) -> (String, String) {
        let c = self.as_("analyst");
        let v = c.submit("demo", COUNTS, "issue 21 tests").expect("submit");
        let job = v["job"].as_str().expect("job").to_string();
        let v = c
            .wait("demo", &job, Duration::from_secs(120))
            .expect("wait");
        assert_eq!(v["state"], "succeeded", "{v}");
        let r = c
            .request("demo", &job, "for the paper", "counts by age band")
            .expect("request");
        (job, r["release"].as_str().expect("release").to_string())
    }
}

fn status_of(r: Result<Value, ClientError>) -> (u16, String) {
    match r {
        Err(ClientError::Status { status, message }) => (status, message),
        Ok(v) => (200, v.to_string()),
        Err(e) => (0, e.to_string()),
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Outbox files, manifest, ledger entry and request state agree.
fn assert_consistent(ws: &Path, outbox: &Path, rel: &str, why: &str) -> String {
    let w = tre_pipeline::tre::workspace::Workspace::open(ws).expect("open ws");
    let project = tre_pipeline::tre::id::Id::parse("project", "demo").expect("id");
    let id = tre_pipeline::tre::id::Id::parse("release", rel).expect("id");
    let r = tre_pipeline::tre::release::load(&w, &project, &id).unwrap_or_else(|e| {
        if let Ok(d) = std::env::var("TRE_TEST_KEEP") {
            let _ = Command::new("cp").arg("-a").arg(ws).arg(&d).status();
        }
        panic!("{why}: the request loads: {e}")
    });
    assert!(r.exporting.is_none(), "{why}: nothing left exporting");
    let ledger = tre_pipeline::lineage::ledger::Ledger::open(&ws.join("projects/demo/ledger"));
    let entry = ledger.entry(rel).expect("ledger readable");
    let files = names(outbox);
    assert!(
        files.iter().all(|f| !f.starts_with(".tmp-")),
        "{why}: no staged file left: {files:?}"
    );
    let csv = format!("demo-{rel}.csv");
    let manifest = format!("demo-{rel}.manifest.json");
    let state = serde_json::to_value(r.state).expect("state");
    if state == "exported" {
        assert_eq!(files, vec![csv.clone(), manifest.clone()], "{why}");
        assert!(entry.is_some(), "{why}: exported is in the ledger");
        let m: Value =
            serde_json::from_slice(&std::fs::read(outbox.join(&manifest)).expect("manifest"))
                .expect("json");
        let sha = tre_pipeline::digest::sha256_hex(&std::fs::read(outbox.join(&csv)).expect("csv"));
        assert_eq!(m["files"][0]["sha256"], Value::from(sha), "{why}");
        assert_eq!(r.files.len(), 2, "{why}");
    } else {
        assert_eq!(state, "requested", "{why}");
        assert!(files.is_empty(), "{why}: nothing in the outbox: {files:?}");
        assert!(entry.is_none(), "{why}: not in the ledger");
    }
    state.as_str().unwrap_or_default().to_string()
}

#[test]
fn a_failed_export_leaves_nothing_trusted_and_can_be_retried() {
    let svc = Svc::start();
    let (_, rel) = svc.requested();
    svc.as_("checker1")
        .review("demo", &rel, true, "checked")
        .expect("first");
    // The manifest's final name is taken (a folder), so the export fails after the table
    // was published: it must be rolled back.
    let blocker = svc.outbox().join(format!("demo-{rel}.manifest.json"));
    std::fs::create_dir(&blocker).expect("block");
    let (code, msg) = status_of(svc.as_("checker2").review("demo", &rel, true, "agree"));
    assert!(code == 409 || code == 500, "{code}: {msg}");
    assert!(msg.contains("export again"), "{msg}");
    assert_eq!(
        names(&svc.outbox()),
        vec![format!("demo-{rel}.manifest.json")],
        "only the blocker is left"
    );
    std::fs::remove_dir(&blocker).expect("unblock");
    assert_consistent(&svc.ws(), &svc.outbox(), &rel, "after the failure");
    assert_eq!(
        crate::util::audit_count(&svc.ws(), "release.export", "error"),
        1
    );
    assert_eq!(
        crate::util::audit_count(&svc.ws(), "release.export", "ok"),
        0
    );
    let v = svc.as_("checker1").release("demo", &rel).expect("status");
    assert_eq!(v["state"], "requested", "{v}");

    // Fixed: the retry exports.
    let v = svc
        .as_("checker2")
        .post(&format!("/api/projects/demo/releases/{rel}/export"), &())
        .expect("retry");
    assert_eq!(v["state"], "exported", "{v}");
    assert_eq!(
        assert_consistent(&svc.ws(), &svc.outbox(), &rel, "after the retry"),
        "exported"
    );
    assert_eq!(
        crate::util::audit_count(&svc.ws(), "release.export", "ok"),
        1
    );
    // Exported once: again is refused, and nothing changes.
    let (code, _) = status_of(
        svc.as_("checker2")
            .post(&format!("/api/projects/demo/releases/{rel}/export"), &()),
    );
    assert_eq!(code, 409);
}

fn copy_dir(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .args(["-a"])
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(st.success());
}

fn restore(snap: &Path, w: &Workdir) {
    for d in ["ws", "outbox"] {
        let _ = std::fs::remove_dir_all(w.join(d));
        copy_dir(&snap.join(d), &w.join(d));
    }
}

fn serve_crashing(w: &Workdir, at: Option<u32>) -> (Child, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tre"));
    cmd.args(["serve", "--workspace", "ws", "--listen", "127.0.0.1:0"])
        .current_dir(w.path())
        .env_clear()
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(w.join("serve.err")).expect("stderr"));
    if let Some(at) = at {
        cmd.env(tre_pipeline::durable::CRASH_AT_VAR, at.to_string());
    }
    let mut child = cmd.spawn().expect("serve");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("address");
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_default()
        .to_string();
    (child, base)
}

/// `release::recover`, as the server runs it at start; `None` when the crash left the
/// audit log's head file behind its last entry (the audit module refuses to append
/// then, so nothing can be recovered until the operator repairs the log).
fn recover(ws: &Path) -> Option<Vec<tre_pipeline::tre::release::Recovered>> {
    let w = tre_pipeline::tre::workspace::Workspace::open(ws).expect("open");
    let a =
        tre_pipeline::tre::auditor::Auditor::new(&w, Arc::new(tre_pipeline::clock::SystemClock), 0)
            .expect("auditor");
    if a.head().is_err() {
        return None;
    }
    match tre_pipeline::tre::release::recover(&w, &a) {
        Ok(v) => Some(v),
        Err(e) if e.to_string().contains("audit") => None,
        Err(e) => panic!("recover: {e}"),
    }
}

#[test]
fn a_crash_at_any_durable_step_of_an_export_is_recovered_consistently() {
    let mut svc = Svc::start();
    let (_, rel) = svc.requested();
    svc.as_("checker1")
        .review("demo", &rel, true, "checked")
        .expect("first");
    svc.server.stop();
    let snap = tempfile::tempdir().expect("snapshot");
    for d in ["ws", "outbox"] {
        copy_dir(&svc.w.join(d), &snap.path().join(d));
    }
    let mut finished = false;
    let mut states = std::collections::BTreeMap::new();
    for at in 1..200 {
        restore(snap.path(), &svc.w);
        let (mut child, base) = serve_crashing(&svc.w, Some(at));
        let c = Client::new(&base, Token::new(svc.tokens["checker2"].clone()));
        let r = if base.is_empty() {
            Err(ClientError::Status {
                status: 0,
                message: "crashed at start".into(),
            })
        } else {
            c.review("demo", &rel, true, "agree")
        };
        let crashed = child.try_wait().ok().flatten().is_some() || {
            std::thread::sleep(Duration::from_millis(50));
            child.try_wait().ok().flatten().is_some()
        };
        let _ = child.kill();
        let _ = child.wait();
        if recover(&svc.w.join("ws")).is_none() {
            *states.entry("audit head behind".to_string()).or_insert(0) += 1;
            continue;
        }
        let state = assert_consistent(
            &svc.w.join("ws"),
            &svc.w.join("outbox"),
            &rel,
            &format!("crash at step {at}"),
        );
        *states.entry(state.clone()).or_insert(0) += 1;
        if !crashed {
            assert!(r.is_ok(), "step {at}: {r:?}");
            finished = true;
            break;
        }
        // Whatever the crash left, the release can still leave once: review again if
        // the second approval was lost, else export.
        if state == "requested" {
            let (mut s, base) = serve_crashing(&svc.w, None);
            let c = Client::new(&base, Token::new(svc.tokens["checker2"].clone()));
            let v = c.release("demo", &rel).unwrap_or_else(|e| {
                panic!(
                    "step {at}: status: {e}; server said {}",
                    std::fs::read_to_string(svc.w.join("serve.err")).unwrap_or_default()
                )
            });
            let v = if v["approvals"].as_array().map(Vec::len) == Some(2) {
                c.post(&format!("/api/projects/demo/releases/{rel}/export"), &())
            } else {
                c.review("demo", &rel, true, "agree")
            }
            .unwrap_or_else(|e| panic!("step {at}: the release still leaves: {e}"));
            assert_eq!(v["state"], "exported", "step {at}: {v}");
            let _ = s.kill();
            let _ = s.wait();
            assert_consistent(
                &svc.w.join("ws"),
                &svc.w.join("outbox"),
                &rel,
                &format!("after step {at}"),
            );
        }
    }
    assert!(finished, "the export completes without a crash eventually");
    assert!(
        states.contains_key("requested") && states.contains_key("exported"),
        "both outcomes were met: {states:?}"
    );
}

#[test]
fn a_request_rolled_back_or_copied_is_refused_naming_the_file() {
    let svc = Svc::start();
    let (job, rel) = svc.requested();
    let path = svc.ws().join(format!("projects/demo/requests/{rel}.json"));
    let before = std::fs::read(&path).expect("read");
    svc.as_("checker1")
        .review("demo", &rel, false, "too small cells")
        .expect("reject");
    // Rolled back to the version before the rejection: refused.
    let rejected = std::fs::read(&path).expect("read");
    std::fs::write(&path, &before).expect("roll back");
    let (code, msg) = status_of(svc.as_("checker2").release("demo", &rel));
    assert_eq!(code, 409, "{msg}");
    assert!(msg.contains(&format!("{rel}.json")), "{msg}");
    assert!(msg.contains("audit"), "{msg}");
    let (code, _) = status_of(svc.as_("checker2").review("demo", &rel, true, "undo"));
    assert_eq!(code, 409);
    std::fs::write(&path, &rejected).expect("restore");
    let v = svc.as_("checker2").release("demo", &rel).expect("status");
    assert_eq!(v["state"], "rejected");

    // A request copied under another name (as from another project's folder): refused.
    let r2 = svc
        .as_("analyst")
        .request("demo", &job, "again please", "the same counts")
        .expect("request");
    let rel2 = r2["release"].as_str().expect("id").to_string();
    let path2 = svc.ws().join(format!("projects/demo/requests/{rel2}.json"));
    std::fs::copy(&path, &path2).expect("copy");
    let (code, msg) = status_of(svc.as_("checker2").release("demo", &rel2));
    assert_eq!(code, 409, "{msg}");
    assert!(msg.contains(&format!("{rel2}.json")), "{msg}");
    assert!(crate::util::audit_count(&svc.ws(), "release.status", "refused") >= 2);
}

#[test]
fn a_forged_user_record_refuses_only_that_user() {
    let svc = Svc::start();
    let p = svc.ws().join("users/checker2.json");
    let text = std::fs::read_to_string(&p).expect("read");
    std::fs::write(&p, text.replace("false", "true ")).expect("forge");
    assert!(
        svc.as_("analyst").get("/api/me").is_ok(),
        "others still sign in"
    );
    assert!(svc.as_("checker1").get("/api/me").is_ok());
    let (code, _) = status_of(svc.as_("checker2").get("/api/me"));
    assert_eq!(code, 401);
}

#[test]
fn symlinks_planted_while_the_server_runs_are_refused() {
    let svc = Svc::start();
    let (job, rel) = svc.requested();
    // A job folder replaced by a symlink to a copy of itself.
    let results = svc.ws().join("projects/demo/results");
    let copy = svc.w.join("elsewhere-job");
    copy_dir(&results.join(&job), &copy);
    std::fs::remove_dir_all(results.join(&job)).expect("rm");
    std::os::unix::fs::symlink(&copy, results.join(&job)).expect("plant");
    let (code, msg) = status_of(svc.as_("analyst").job("demo", &job));
    assert_eq!(code, 409, "{msg}");
    assert!(msg.contains("symlink"), "{msg}");
    let (code, msg) = status_of(svc.as_("analyst").safe("demo", &job).map(Value::from));
    assert!(code == 409 || code == 404, "{code} {msg}");
    // A request file replaced by a symlink to its own copy.
    let req = svc.ws().join(format!("projects/demo/requests/{rel}.json"));
    let elsewhere = svc.w.join("elsewhere.json");
    std::fs::copy(&req, &elsewhere).expect("copy");
    std::fs::remove_file(&req).expect("rm");
    std::os::unix::fs::symlink(&elsewhere, &req).expect("plant");
    let (code, msg) = status_of(svc.as_("checker1").review("demo", &rel, true, "ok"));
    assert_eq!(code, 409, "{msg}");
    assert!(msg.contains("symlink"), "{msg}");
    assert_eq!(
        std::fs::read(&elsewhere).expect("read"),
        std::fs::read(&elsewhere).expect("read"),
    );
}

#[test]
fn installed_policy_and_ledger_edited_on_disk_are_refused_and_audited() {
    let svc = Svc::start();
    let (job, rel) = svc.requested();
    svc.as_("checker1")
        .review("demo", &rel, true, "looks fine")
        .expect("one");
    svc.as_("checker2")
        .review("demo", &rel, true, "looks fine")
        .expect("two");
    // The ledger entry of the export, edited: the next release check that reads the
    // ledger is refused.
    let entry = svc.ws().join(format!("projects/demo/ledger/{rel}.json"));
    let text = std::fs::read_to_string(&entry).expect("ledger entry");
    std::fs::write(&entry, text.replacen("\"project\"", "\"project\" ", 1)).expect("edit");
    let (code, msg) = status_of(svc.as_("analyst").request("demo", &job, "again", "same"));
    assert!(code == 409 || code == 500, "{code}: {msg}");
    assert!(msg.contains("ledger"), "{msg}");
    std::fs::write(&entry, text).expect("restore");
    // The installed policy, edited: the next action that loads it is refused.
    let p = svc.ws().join("projects/demo/policy.toml");
    let text = std::fs::read_to_string(&p).expect("policy");
    std::fs::write(&p, text.replace("checker2", "analyst2")).expect("edit");
    let (code, msg) = status_of(svc.as_("checker1").release("demo", &rel));
    assert_eq!(code, 409, "{msg}");
    assert!(msg.contains("policy.toml"), "{msg}");
    assert!(msg.contains("installed"), "{msg}");
    assert!(crate::util::audit_count(&svc.ws(), "release.status", "refused") >= 1);
}

#[test]
fn an_installed_dataset_record_edited_on_disk_fails_the_next_job_and_is_audited() {
    let svc = Svc::start();
    let p = svc.ws().join("projects/demo/data/dataset.json");
    let text = std::fs::read_to_string(&p).expect("dataset record");
    std::fs::write(&p, text.replacen("\"tables\"", "\"tables\" ", 1)).expect("edit");
    let c = svc.as_("analyst");
    let v = c.submit("demo", COUNTS, "after an edit").expect("submit");
    let job = v["job"].as_str().expect("job").to_string();
    let v = c
        .wait("demo", &job, Duration::from_secs(120))
        .expect("wait");
    assert_eq!(v["state"], "failed", "{v}");
    let reason = v["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("dataset.json"), "{v}");
    assert!(
        svc.audit()
            .iter()
            .any(|e| e["action"] == "job.run" && e.to_string().contains("dataset.json")),
        "the refusal is audited"
    );
}
