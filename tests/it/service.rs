//! The research environment as a service, end to end over HTTP on loopback: the real
//! `tre serve` started by each test on 127.0.0.1 port 0 and stopped at its end; the
//! operator's `tre admin` commands; the client library; and every attack class refused
//! with a clear message and an audit entry.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use tre_pipeline::client::{Client, ClientError};
use tre_pipeline::tre::users::Token;

use crate::util::{Server, Tre, TreSetup, Workdir, policy_with, repo, s, show};

const COUNTS: &str =
    "SELECT age_band, COUNT(*) AS n FROM patients GROUP BY age_band ORDER BY age_band";

/// A workspace with the demo project installed, three people, and a running server.
struct Service {
    /// First, so that the server stops before the folder is removed.
    server: Server,
    w: Workdir,
    tokens: std::collections::BTreeMap<String, String>,
}

const DEFAULT_TRE: &str = "users = [\"analyst\"]\noutput_checkers = [\"checker1\", \"checker2\"]\noutput_rules = \"opensafely\"\nmax_query_seconds = 60\n";

impl Service {
    fn start() -> Service {
        Service::with_policy(
            DEFAULT_TRE,
            &["analyst", "checker1", "checker2", "outsider"],
        )
    }

    fn with_policy(tre: &str, users: &[&str]) -> Service {
        let Tre { w, tokens, .. } = TreSetup::demo(2000, 5)
            .policy_text(policy_with(tre))
            .users(users)
            .build();
        let server = Server::start(&w, &["--checkpoint-every", "10"]);
        Service { server, w, tokens }
    }

    fn stop(&mut self) {
        self.server.stop();
    }

    fn base(&self) -> &str {
        &self.server.base
    }

    fn as_(&self, user: &str) -> Client {
        Client::new(self.base(), Token::new(self.tokens[user].clone()))
    }

    fn raw(&self, token: &str) -> Client {
        Client::new(self.base(), Token::new(token))
    }

    fn ws(&self) -> PathBuf {
        self.w.join("ws")
    }

    /// Submit a job as the analyst and wait for it to end.
    fn job(&self, user: &str, sql: &str) -> (String, Value) {
        let c = self.as_(user);
        let v = c
            .submit("demo", sql, "a test of the service")
            .expect("submit");
        assert_eq!(v["state"], "queued", "{v}");
        let job = v["job"].as_str().expect("job id").to_string();
        let v = c
            .wait("demo", &job, Duration::from_secs(120))
            .expect("status");
        (job, v)
    }

    fn audit(&self) -> Vec<Value> {
        crate::util::audit_entries(&self.ws())
    }

    fn verify(&self) {
        let log = self.ws().join("audit/audit.jsonl");
        self.w.tre_ok(&["audit", "verify", "--log", s(&log)]);
    }
}

fn status_of(r: Result<Value, ClientError>) -> (u16, String) {
    match r {
        Err(ClientError::Status { status, message }) => (status, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn outbox_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("outbox")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn whole_story_over_http() {
    let mut svc = Service::start();
    let me = svc.as_("checker1").get("/api/me").expect("me");
    assert_eq!(me["user"], "checker1");
    assert_eq!(
        me["projects"]["demo"],
        serde_json::json!(["output_checker"])
    );

    let (job, v) = svc.job("analyst", COUNTS);
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(v["releasable"], true, "{v}");
    assert!(
        v.get("report").is_none(),
        "the private report is not shown to the analyst: {v}"
    );
    assert_eq!(
        v["peak_rss_kib"].as_u64().map(|k| k % (16 * 1024)),
        Some(0),
        "{v}"
    );
    let seen = svc
        .as_("checker1")
        .job("demo", &job)
        .expect("status as a checker");
    assert!(
        seen["report"].as_str().is_some(),
        "the checker sees the report: {seen}"
    );
    let safe = svc.as_("analyst").safe("demo", &job).expect("safe table");
    assert!(
        safe.starts_with("age_band,n"),
        "the safe table: {}",
        &safe[..safe.len().min(40)]
    );

    let r = svc
        .as_("analyst")
        .request(
            "demo",
            &job,
            "Table 1 of the paper",
            "patients by sex and age band",
        )
        .expect("request");
    assert_eq!(r["state"], "requested");
    let rel = r["release"].as_str().expect("release id").to_string();

    let v = svc
        .as_("checker1")
        .review("demo", &rel, true, "suppressed and rounded")
        .expect("review 1");
    assert_eq!(v["state"], "requested");
    assert_eq!(v["approvals"], serde_json::json!(["checker1"]));
    assert!(
        outbox_files(&svc.w.join("outbox")).is_empty(),
        "nothing leaves on one approval"
    );

    let v = svc
        .as_("checker2")
        .review("demo", &rel, true, "agree")
        .expect("review 2");
    assert_eq!(v["state"], "exported", "{v}");
    let files = outbox_files(&svc.w.join("outbox"));
    assert_eq!(
        files,
        vec![
            format!("demo-{rel}.csv"),
            format!("demo-{rel}.manifest.json")
        ]
    );
    let released = std::fs::read_to_string(svc.w.join("outbox").join(&files[0])).expect("csv");
    assert_eq!(
        released, safe,
        "what leaves is the safe table the checkers saw"
    );
    let m: Value = serde_json::from_str(
        &std::fs::read_to_string(svc.w.join("outbox").join(&files[1])).expect("manifest"),
    )
    .expect("json");
    assert_eq!(
        m["approved_by"],
        serde_json::json!(["checker1", "checker2"])
    );
    assert_eq!(m["rules_sha256"].as_str().map(str::len), Some(64));
    assert_eq!(m["result_sha256"].as_str().map(str::len), Some(64));
    assert!(m["audit_head"]["seq"].as_u64().is_some(), "{m}");

    let (code, msg) = status_of(svc.as_("checker1").review("demo", &rel, true, "again"));
    assert_eq!(code, 409, "{msg}");

    svc.stop();
    for (action, n) in [
        ("job.submit", 1),
        ("job.run", 1),
        ("release.request", 1),
        ("release.review", 2),
        ("release.export", 1),
        ("admin.dataset.add", 1),
    ] {
        assert_eq!(
            crate::util::audit_count(&svc.ws(), action, "ok"),
            n,
            "{action}"
        );
    }
    svc.verify();
    assert!(
        std::fs::read_dir(svc.ws().join("audit/checkpoints"))
            .expect("checkpoints")
            .count()
            > 0,
        "a checkpoint at shutdown"
    );
}

#[test]
fn spoofed_identity_is_refused_and_audited() {
    let svc = Service::start();
    let me = "/api/me";
    let anon = Client::new(svc.base(), Token::new(""));
    assert_eq!(status_of(anon.get(me)).0, 401);
    let (code, msg) = status_of(svc.raw("tre_0000").get(me));
    assert_eq!(code, 401);
    assert!(msg.contains("token is not known"), "{msg}");

    svc.w.tre_ok(&[
        "admin",
        "user",
        "revoke",
        "--workspace",
        "ws",
        "checker2",
        "-q",
    ]);
    let (code, msg) = status_of(svc.as_("checker2").get(me));
    assert_eq!(code, 401);
    assert!(msg.contains("revoked"), "{msg}");

    // An expired token: made by the library with a creation time two days ago.
    let ws = tre_pipeline::tre::workspace::Workspace::open(&svc.ws()).expect("ws");
    let id = tre_pipeline::tre::id::Id::parse("user", "old").expect("id");
    #[allow(clippy::disallowed_methods)]
    let then = chrono::Utc::now() - chrono::Duration::days(2);
    let old = tre_pipeline::tre::users::add(&ws, &id, 1, then).expect("add");
    let (code, msg) = status_of(svc.raw(old.expose()).get(me));
    assert_eq!(code, 401);
    assert!(msg.contains("expired"), "{msg}");

    // Another project's role / no role: 403.
    let (code, msg) = status_of(svc.as_("outsider").submit("demo", COUNTS, "curious"));
    assert_eq!(code, 403, "{msg}");
    let (code, _) = status_of(svc.as_("checker1").submit("demo", COUNTS, "not an analyst"));
    assert_eq!(code, 403);
    let (code, _) = status_of(svc.as_("analyst").review("demo", "rel-1", true, "self"));
    assert_eq!(code, 403, "an analyst is not a checker");
    let (code, _) = status_of(svc.as_("analyst").submit("nosuch", COUNTS, "x"));
    assert_eq!(code, 404);

    // The first failure of the address's window and those naming a person one by
    // one; the anonymous wrong token is counted into the window's aggregate entry.
    assert_eq!(
        crate::util::audit_count(&svc.ws(), "auth", "refused"),
        3,
        "no token, revoked, expired"
    );
    assert!(crate::util::audit_count(&svc.ws(), "job.submit", "refused") >= 3);
    assert_eq!(
        crate::util::audit_count(&svc.ws(), "release.review", "refused"),
        1
    );
    assert_eq!(crate::util::audit_count(&svc.ws(), "job.submit", "ok"), 0);
    let text = std::fs::read_to_string(svc.ws().join("audit/audit.jsonl")).expect("log");
    assert!(
        !text.contains(&svc.tokens["checker2"]),
        "tokens never reach the audit log"
    );
    let mut svc = svc;
    svc.stop();
    let aggregated: Vec<Value> = svc
        .audit()
        .into_iter()
        .filter(|e| e["action"] == "auth.failed")
        .collect();
    assert_eq!(aggregated.len(), 1, "{aggregated:?}");
    assert_eq!(aggregated[0]["detail"]["count"], 1, "the wrong token");
    svc.verify();
}

#[test]
fn self_approval_double_review_and_too_few_approvals_are_refused() {
    let svc = Service::start();
    let (job, v) = svc.job("analyst", COUNTS);
    assert_eq!(v["state"], "succeeded", "{v}");
    let r = svc
        .as_("analyst")
        .request("demo", &job, "my own table", "by sex and age")
        .expect("request");
    let rel = r["release"].as_str().expect("id").to_string();
    // The policy changes: the requester becomes an output checker.
    let tre = "users = [\"checker1\"]\noutput_checkers = [\"analyst\", \"checker2\", \"outsider\"]\noutput_rules = \"opensafely\"\n";
    svc.w.write("policy2.toml", policy_with(tre));
    svc.w.admin_project("policy2.toml");
    let (code, msg) = status_of(
        svc.as_("analyst")
            .review("demo", &rel, true, "looks fine to me"),
    );
    assert_eq!(code, 409);
    assert!(msg.contains("cannot review it"), "{msg}");
    svc.as_("checker2")
        .review("demo", &rel, true, "checked it")
        .expect("first approval");
    let (code, msg) = status_of(
        svc.as_("checker2")
            .review("demo", &rel, true, "checked again"),
    );
    assert_eq!(code, 409);
    assert!(msg.contains("already reviewed"), "{msg}");
    let (code, msg) = status_of(
        svc.as_("checker2")
            .post(&format!("/api/projects/demo/releases/{rel}/export"), &()),
    );
    assert_eq!(code, 409);
    assert!(msg.contains("two different output checkers"), "{msg}");
    let (code, _) = status_of(svc.as_("outsider").review("demo", &rel, true, ""));
    assert_eq!(code, 400, "a comment is required");
    assert!(outbox_files(&svc.w.join("outbox")).is_empty());
    svc.as_("outsider")
        .review("demo", &rel, true, "agree, checked")
        .expect("second approval");
    assert_eq!(outbox_files(&svc.w.join("outbox")).len(), 2);
    assert_eq!(
        crate::util::audit_count(&svc.ws(), "release.review", "refused"),
        3
    );
    assert_eq!(
        crate::util::audit_count(&svc.ws(), "release.export", "refused"),
        1
    );
    svc.verify();
}

#[test]
fn ids_that_are_paths_are_refused() {
    let svc = Service::start();
    let c = svc.as_("analyst");
    let long = "a".repeat(65);
    for p in [
        "..",
        "%2E%2E",
        "a%2Fb",
        "%2Fetc",
        "a%00b",
        long.as_str(),
        "Demo",
    ] {
        let (code, msg) = status_of(c.get(&format!("/api/projects/{p}/jobs/job-1")));
        assert_eq!(code, 400, "{p}: {msg}");
        let (code, _) = status_of(c.get(&format!("/api/projects/demo/jobs/{p}")));
        assert_eq!(code, 400, "job {p}");
    }
    for job in ["../../x", "/etc/passwd", "a\u{0}b", long.as_str()] {
        let (code, _) = status_of(c.request("demo", job, "justified", "context"));
        assert_eq!(code, 400, "{job:?}");
    }
    let (code, _) = status_of(c.post("/api/projects/demo/jobs", &serde_json::json!({"sql": 1})));
    assert_eq!(code, 400, "malformed body");
    assert!(crate::util::audit_count(&svc.ws(), "job.status", "refused") >= 7);
    assert_eq!(
        crate::util::audit_count(&svc.ws(), "release.request", "refused"),
        4
    );
    assert_eq!(
        crate::util::audit_count(&svc.ws(), "job.submit", "refused"),
        1
    );
    svc.verify();
}

#[test]
fn forged_files_are_detected_by_hash_and_refused() {
    let svc = Service::start();
    let (job, _) = svc.job("analyst", COUNTS);
    let dir = svc.ws().join("projects/demo/results").join(&job);
    let r = svc
        .as_("analyst")
        .request("demo", &job, "for the paper", "counts")
        .expect("request");
    let rel = r["release"].as_str().expect("id").to_string();

    // A request file with approvals appended by hand.
    let req = svc
        .ws()
        .join("projects/demo/requests")
        .join(format!("{rel}.json"));
    let text = std::fs::read_to_string(&req).expect("request file");
    let forged = text.replace("\"reviews\": []", "\"reviews\": [{\"checker\": \"checker1\", \"decision\": \"approve\", \"comment\": \"x\", \"at\": \"2026-01-01T00:00:00Z\"}]");
    assert_ne!(forged, text);
    std::fs::write(&req, &forged).expect("forge");
    let (code, msg) = status_of(
        svc.as_("checker2")
            .review("demo", &rel, true, "ok, checked"),
    );
    assert_eq!(code, 409);
    assert!(msg.contains("changed outside the server"), "{msg}");
    std::fs::write(&req, &text).expect("restore");

    // A result edited after the request.
    let result = dir.join("result.parquet");
    let mut bytes = std::fs::read(&result).expect("result");
    bytes.push(0);
    std::fs::write(&result, &bytes).expect("edit");
    svc.as_("checker1")
        .review("demo", &rel, true, "ok, checked")
        .expect("first");
    let (code, msg) = status_of(
        svc.as_("checker2")
            .review("demo", &rel, true, "ok, checked"),
    );
    assert_eq!(code, 409);
    assert!(msg.contains("changed on disk"), "{msg}");
    // A second request over the edited result is refused too.
    let (code, _) = status_of(
        svc.as_("analyst")
            .request("demo", &job, "again please", "counts"),
    );
    assert_eq!(code, 409);

    // A job record edited to point elsewhere.
    let rec = dir.join("job.json");
    let t = std::fs::read_to_string(&rec).expect("job record");
    std::fs::write(&rec, t.replace("\"succeeded\"", "\"queued\"")).expect("edit");
    let (code, _) = status_of(svc.as_("analyst").job("demo", &job));
    assert_eq!(code, 409);
    assert!(outbox_files(&svc.w.join("outbox")).is_empty());
    assert!(crate::util::audit_count(&svc.ws(), "release.review", "refused") >= 2);
    svc.verify();
}

#[test]
fn symlinks_in_the_workspace_or_outbox_are_refused() {
    let mut svc = Service::start();
    let (job, _) = svc.job("analyst", COUNTS);
    let r = svc
        .as_("analyst")
        .request("demo", &job, "for the paper", "counts")
        .expect("request");
    let rel = r["release"].as_str().expect("id").to_string();
    svc.as_("checker1")
        .review("demo", &rel, true, "ok, checked")
        .expect("first");

    // A symlink planted at the export's file name in the outbox is never followed.
    let target = svc.w.join("elsewhere.txt");
    std::fs::write(&target, "untouched").expect("write");
    let planted = svc.w.join("outbox").join(format!("demo-{rel}.csv"));
    std::os::unix::fs::symlink(&target, &planted).expect("symlink");
    let (code, msg) = status_of(
        svc.as_("checker2")
            .review("demo", &rel, true, "ok, checked"),
    );
    assert!(code == 409 || code == 500, "{code}: {msg}");
    assert_eq!(std::fs::read_to_string(&target).expect("read"), "untouched");
    std::fs::remove_file(&planted).expect("unplant");
    assert_eq!(
        crate::util::audit_count(&svc.ws(), "release.export", "error"),
        1
    );

    // The outbox swapped for a symlink after it was configured.
    let outbox = svc.w.join("outbox");
    std::fs::rename(&outbox, svc.w.join("outbox.real")).expect("move");
    std::os::unix::fs::symlink(svc.w.join("elsewhere"), &outbox).expect("symlink");
    std::fs::create_dir(svc.w.join("elsewhere")).expect("mkdir");
    let (code, msg) = status_of(
        svc.as_("checker2")
            .post(&format!("/api/projects/demo/releases/{rel}/export"), &()),
    );
    assert_eq!(code, 409, "{msg}");
    assert!(msg.contains("symlink"), "{msg}");
    assert!(outbox_files(&svc.w.join("elsewhere")).is_empty());

    // A symlink planted inside the workspace: the server refuses to start.
    svc.stop();
    std::os::unix::fs::symlink("/etc/passwd", svc.ws().join("users/evil.json")).expect("plant");
    let out = svc
        .w
        .tre(&["serve", "--workspace", "ws", "--listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("symlink"),
        "{}",
        show(&out)
    );
    std::fs::remove_file(svc.ws().join("users/evil.json")).expect("unplant");
    crate::util::chmod(&svc.ws().join("projects"), 0o770);
    let out = svc
        .w
        .tre(&["serve", "--workspace", "ws", "--listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("writable by group"),
        "{}",
        show(&out)
    );
}

#[test]
fn jobs_over_their_time_or_memory_limit_are_killed() {
    let tre = "users = [\"analyst\"]\noutput_checkers = [\"checker1\", \"checker2\"]\nmax_query_seconds = 3\nmax_query_memory_mb = 600\n";
    let svc = Service::with_policy(tre, &["analyst", "checker1"]);
    let started = Instant::now();
    let (job, v) = svc.job(
        "analyst",
        "SELECT SUM(LENGTH(p.patient_pseudonym || p.sex) + g.value) AS n FROM patients p CROSS JOIN generate_series(1, 10000000) g",
    );
    // The analyst learns one bit: it did not complete while running over the data.
    assert_eq!(v["state"], "failed", "{v}");
    let one_bit = |v: &Value| {
        v["reason"].as_str().unwrap_or_default() == tre_pipeline::tre::job::FAILED_WHILE_RUNNING
    };
    assert!(one_bit(&v), "{v}");
    // The output checkers (and the audit trail) see why.
    let c = svc
        .as_("checker1")
        .job("demo", &job)
        .expect("checker's status");
    assert_eq!(c["state"], "killed", "{c}");
    assert!(
        c["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("time limit"),
        "{c}"
    );
    // The analyst sees times to the minute; the audit has them to the millisecond.
    let at = |action: &str| {
        let e = svc
            .audit()
            .into_iter()
            .find(|e| e["action"] == action && e["detail"]["job"] == job.as_str())
            .unwrap_or_else(|| panic!("no {action} entry"));
        chrono::DateTime::parse_from_rfc3339(e["time"].as_str().expect("time")).expect("t")
    };
    let (t0, t1) = (at("job.start"), at("job.run"));
    let ran = (t1 - t0).num_milliseconds();
    assert!(
        ran <= 5_000,
        "killed within 2 s of the 3 s limit, ran {ran} ms"
    );
    assert!(started.elapsed() < Duration::from_secs(60));

    let (job2, v) = svc.job(
        "analyst",
        "SELECT SUM(LENGTH(REPEAT(patient_pseudonym, 200000))) AS n FROM patients",
    );
    assert_eq!(v["state"], "failed", "{v}");
    assert!(one_bit(&v), "{v}");
    let c = svc
        .as_("checker1")
        .job("demo", &job2)
        .expect("checker's status");
    assert_eq!(c["state"], "killed", "{c}");
    assert!(
        c["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("memory limit"),
        "{c}"
    );
    // A run-time error (a cast of a value) is the same one bit; a planning error (an
    // unknown column: no data involved) keeps its message.
    let (job3, v) = svc.job(
        "analyst",
        "SELECT sex, SUM(CAST(lsoa AS INT)) AS n FROM patients GROUP BY sex",
    );
    assert_eq!(v["state"], "failed", "{v}");
    assert!(one_bit(&v), "{v}");
    let c = svc
        .as_("checker1")
        .job("demo", &job3)
        .expect("checker's status");
    assert!(!one_bit(&c), "{c}");
    let (_, v) = svc.job(
        "analyst",
        "SELECT nosuch, COUNT(*) AS n FROM patients GROUP BY nosuch",
    );
    assert_eq!(v["state"], "failed", "{v}");
    assert!(
        !one_bit(&v) && v["reason"].as_str().unwrap_or_default().contains("nosuch"),
        "{v}"
    );
    let bits = svc
        .audit()
        .into_iter()
        .filter(|e| e["action"] == "job.run" && e["detail"]["failed_while_running"] == true)
        .count();
    assert_eq!(bits, 3, "each data-dependent failure is on the trail");
    let peak = v["peak_rss_kib"].as_u64().unwrap_or(0);
    assert!(peak <= (600 + 100) * 1024, "peak RSS {peak} KiB");
    assert_eq!(crate::util::audit_count(&svc.ws(), "job.run", "refused"), 2);
    svc.verify();
}

#[test]
fn twenty_clients_at_once_lose_nothing() {
    let svc = Service::start();
    let (job, v) = svc.job("analyst", COUNTS);
    assert_eq!(v["state"], "succeeded", "{v}");
    let releases: Vec<String> = (0..7)
        .map(|i| {
            let r = svc
                .as_("analyst")
                .request("demo", &job, &format!("request number {i}"), "counts")
                .expect("request");
            r["release"].as_str().expect("id").to_string()
        })
        .collect();
    std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for i in 0..20 {
            let svc = &svc;
            let releases = &releases;
            let job = &job;
            handles.push(scope.spawn(move || {
                match i {
                    0..=6 => svc
                        .as_("checker1")
                        .review("demo", &releases[i], true, "ok by one")
                        .map(|_| ()),
                    7..=13 => svc
                        .as_("checker2")
                        .review("demo", &releases[i - 7], true, "ok by two")
                        .map(|_| ()),
                    14..=16 => svc
                        .as_("analyst")
                        .submit("demo", COUNTS, "concurrent job")
                        .map(|_| ()),
                    _ => svc
                        .as_("analyst")
                        .request("demo", job, "concurrent request", "counts")
                        .map(|_| ()),
                }
            }));
        }
        for h in handles {
            h.join().expect("thread").expect("request succeeded");
        }
    });
    for r in &releases {
        let v = svc.as_("analyst").release("demo", r).expect("status");
        assert_eq!(v["state"], "exported", "{v}");
        assert_eq!(v["approvals"], serde_json::json!(["checker1", "checker2"]));
    }
    assert_eq!(outbox_files(&svc.w.join("outbox")).len(), 14);
    assert_eq!(
        crate::util::audit_count(&svc.ws(), "release.review", "ok"),
        14
    );
    assert_eq!(
        crate::util::audit_count(&svc.ws(), "release.export", "ok"),
        7
    );
    assert_eq!(
        crate::util::audit_count(&svc.ws(), "release.request", "ok"),
        10
    );
    assert_eq!(crate::util::audit_count(&svc.ws(), "job.submit", "ok"), 4);
    svc.verify();
}

#[test]
fn the_token_file_must_be_private() {
    let svc = Service::start();
    let tok = svc.w.write("tok", &svc.tokens["analyst"]);
    crate::util::chmod(&tok, 0o644);
    svc.w.write("q.sql", COUNTS);
    let args = [
        "job",
        "submit",
        "--server",
        svc.base(),
        "--token-file",
        "tok",
        "--project",
        "demo",
        "--sql",
        "q.sql",
        "--purpose",
        "from the CLI",
    ];
    let err = svc.w.tre_code(&args, 1);
    assert!(err.contains("chmod 600"), "{err}");
    crate::util::chmod(&tok, 0o600);
    let out = svc.w.tre_ok(&args);
    let job = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(job.starts_with("job-"), "{job}");
    let out = svc.w.tre_ok(&[
        "job",
        "status",
        "--server",
        svc.base(),
        "--token-file",
        "tok",
        "--project",
        "demo",
        &job,
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&job));
}

#[test]
fn a_policys_own_rules_file_is_checked_and_installed_never_read_from_its_path() {
    let w = Workdir::new();
    w.admin_init();
    let rules =
        std::fs::read_to_string(repo().join("policies/output-rules/ons-srs.toml")).expect("preset");
    w.write("strict.toml", &rules);
    w.write(
        "policy.toml",
        policy_with(
            "users = [\"analyst\"]\noutput_checkers = [\"checker1\", \"checker2\"]\noutput_rules = \"strict.toml\"\n",
        ),
    );
    w.admin_project("policy.toml");
    let installed =
        std::fs::read_to_string(w.join("ws/projects/demo/output-rules.toml")).expect("installed");
    assert_eq!(
        installed, rules,
        "the rules file is copied into the project"
    );
    // An invalid rules file is refused at install, naming it; nothing is installed.
    w.write("strict.toml", "version = 1\nnot_a_rule = true\n");
    w.write(
        "policy2.toml",
        policy_with(
            "users = [\"analyst\"]\noutput_checkers = [\"checker1\", \"checker2\"]\noutput_rules = \"strict.toml\"\n",
        )
        .replace("id = \"demo\"", "id = \"demo2\""),
    );
    let err = w.tre_code(
        &[
            "admin",
            "project",
            "add",
            "--workspace",
            "ws",
            "policy2.toml",
        ],
        1,
    );
    assert!(err.contains("strict.toml"), "{err}");
    assert!(
        !w.join("ws/projects/demo2").exists(),
        "nothing of the refused project is installed"
    );
}

#[test]
fn an_auditor_reads_the_trail_only_never_jobs_or_tables() {
    let tre = "users = [\"analyst\"]\noutput_checkers = [\"checker1\", \"checker2\"]\nauditors = [\"auditor\"]\noutput_rules = \"opensafely\"\nmax_query_seconds = 60\n";
    let svc = Service::with_policy(tre, &["analyst", "checker1", "checker2", "auditor"]);
    let me = svc.as_("auditor").get("/api/me").expect("me");
    assert_eq!(me["projects"]["demo"], serde_json::json!(["auditor"]));
    let (job, _) = svc.job("analyst", COUNTS);
    let (code, _) = status_of(svc.as_("auditor").job("demo", &job));
    assert_eq!(code, 403, "an auditor does not see jobs");
    let (code, _) = status_of(svc.as_("auditor").safe("demo", &job).map(Value::String));
    assert_eq!(code, 403, "an auditor does not see safe tables");
    let (code, _) = status_of(svc.as_("auditor").submit("demo", COUNTS, "try"));
    assert_eq!(code, 403, "an auditor cannot submit jobs");
}

/// Rules under which totals are not taken as known and counts are not rounded: a table
/// that publishes the grand total then gives away a hidden cell of an earlier one.
fn rules_without_known_totals(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("policies/output-rules/ons-srs.toml"))
        .expect("preset")
        .replace("assume_totals_known = true", "assume_totals_known = false")
        .replace("name = \"ons-srs\"", "name = \"no-known-totals\"");
    assert!(text.contains("assume_totals_known = false"));
    let path = dir.join("no-known-totals.toml");
    std::fs::write(&path, text).expect("rules");
    path
}

#[test]
fn a_release_that_reveals_an_earlier_hidden_cell_jointly_is_refused_naming_it() {
    let rules_dir = tempfile::tempdir().expect("tempdir");
    let rules = rules_without_known_totals(rules_dir.path());
    let svc = Service::with_policy(
        &format!(
            "users = [\"analyst\"]\noutput_checkers = [\"checker1\", \"checker2\"]\noutput_rules = \"{}\"\nmax_query_seconds = 60\n",
            rules.display()
        ),
        &["analyst", "checker1", "checker2"],
    );
    // Counts by sex: the few patients of unknown sex are hidden; the total is unknown.
    let (first, v) = svc.job(
        "analyst",
        "SELECT sex, COUNT(*) AS n FROM patients GROUP BY sex ORDER BY sex",
    );
    assert_eq!(v["state"], "succeeded", "{v}");
    let safe = svc.as_("analyst").safe("demo", &first).expect("safe");
    assert!(
        safe.lines().any(|l| l == "U,"),
        "the small cell is hidden: {safe}"
    );
    let r = svc
        .as_("analyst")
        .request("demo", &first, "Table 1 of the paper", "patients by sex")
        .expect("request");
    let rel = r["release"].as_str().expect("release").to_string();
    for c in ["checker1", "checker2"] {
        svc.as_(c)
            .review("demo", &rel, true, "looked at it")
            .expect("review");
    }
    // The grand total over the same rows: alone it is safe, but with the first table
    // (received by the analyst, and exported) it gives the hidden cell exactly (total -
    // F - M). The differencing guard refuses it when the job runs, naming the first
    // table, so it is never readable and can never be requested.
    let (second, v) = svc.job("analyst", "SELECT COUNT(*) AS n FROM patients");
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(v["releasable"], false, "{v}");
    let verdict = v["verdict"].as_str().unwrap_or_default();
    assert!(
        verdict.contains(&first),
        "names the earlier table: {verdict}"
    );
    assert!(
        !verdict.contains("U,"),
        "no values in the verdict: {verdict}"
    );
    assert!(svc.as_("analyst").safe("demo", &second).is_err());
    let (code, msg) =
        status_of(
            svc.as_("analyst")
                .request("demo", &second, "the denominator", "all patients"),
        );
    assert!(code == 409 || code == 403 || code == 400, "{code} {msg}");
    assert_eq!(
        outbox_files(&svc.w.join("outbox")).len(),
        2,
        "only the first release left"
    );
}

/// The demo service under the `ons-srs` rules, with order statistics allowed or not.
fn service_with_min_max(allow: bool, dir: &Path) -> Service {
    let text = std::fs::read_to_string(repo().join("policies/output-rules/ons-srs.toml"))
        .expect("preset")
        .replace("allow = false", &format!("allow = {allow}"));
    let path = dir.join("rules.toml");
    std::fs::write(&path, text).expect("rules");
    Service::with_policy(
        &format!(
            "users = [\"analyst\"]\noutput_checkers = [\"checker1\", \"checker2\"]\noutput_rules = \"{}\"\nmax_query_seconds = 60\n",
            path.display()
        ),
        &["analyst", "checker1", "checker2"],
    )
}

const FIRST_DATES: &str = "SELECT snomed_code, COUNT(*) AS n, MIN(event_date) AS first_seen FROM clinical_events GROUP BY snomed_code ORDER BY snomed_code";

#[test]
fn min_max_of_a_date_is_refused_unless_the_rules_allow_it_and_then_follows_the_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    let svc = service_with_min_max(false, dir.path());
    let (job, v) = svc.job("analyst", FIRST_DATES);
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(v["releasable"], false, "{v}");
    let (code, msg) = status_of(
        svc.as_("analyst")
            .request("demo", &job, "dates", "first dates"),
    );
    assert!(code >= 400, "{code} {msg}");
    drop(svc);

    let dir = tempfile::tempdir().expect("tempdir");
    let svc = service_with_min_max(true, dir.path());
    let (job, v) = svc.job("analyst", FIRST_DATES);
    assert_eq!(v["state"], "succeeded", "{v}");
    let safe = svc.as_("analyst").safe("demo", &job).expect("safe table");
    let mut lines = safe.lines();
    assert_eq!(lines.next(), Some("snomed_code,n,first_seen"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert!(!rows.is_empty());
    for r in &rows {
        assert_eq!(
            r[1].is_empty(),
            r[2].is_empty(),
            "a date is published exactly where its count is: {r:?}"
        );
        if !r[2].is_empty() {
            assert_eq!(r[2].len(), 10, "still a date: {r:?}");
        }
    }
    assert!(rows.iter().any(|r| !r[2].is_empty()), "{safe}");
    assert!(
        rows.iter().any(|r| r[2].is_empty()),
        "the dates of small codes are hidden: {safe}"
    );
}
