//! Transparency and breach detection end to end: the public data-uses register after
//! the demo story (served without sign-in and built as a static site), and each alert
//! rule fired by a scripted attack and not by the ordinary story, acknowledged by an
//! auditor and reported for the data protection officer. Screenshots of the register
//! and alerts pages go to docs/ for the README.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use tre_pipeline::client::{Client, ClientError};
use tre_pipeline::tre::users::Token;

use crate::util::{Server, Tre, TreSetup, parquet_column, repo, s, show};

const COUNTS: &str =
    "SELECT age_band, COUNT(*) AS n FROM patients GROUP BY age_band ORDER BY age_band";
const TRE: &str = "users = [\"analyst\"]\noutput_checkers = [\"checker1\", \"checker2\"]\nauditors = [\"auditor\"]\noutput_rules = \"opensafely\"\nmax_query_seconds = 60\n";
const PEOPLE: &[&str] = &["analyst", "checker1", "checker2", "auditor", "outsider"];

/// Rules tight enough for a short attack; the ordinary story must stay under them.
const RULES: &str = "schedule_seconds = 1\n[failed_sign_ins]\ncount = 10\nwindow_minutes = 10\n[refused_jobs]\ncount = 3\nwindow_minutes = 60\n[repeated_jobs]\ncount = 4\nwindow_minutes = 60\n[result_reads]\ncount = 25\nwindow_minutes = 60\n";

/// The demo policy with an auditor, and its approval dates replaced when given.
fn policy(dates: Option<(&str, &str)>) -> String {
    let text = std::fs::read_to_string(repo().join("policies/demo.toml")).expect("policy");
    let mut head = text.split("[tre]").next().expect("has [tre]").to_string();
    if let Some((from, to)) = dates {
        head = head
            .replace(
                "approved = \"2026-01-01\"",
                &format!("approved = \"{from}\""),
            )
            .replace("ends = \"2030-12-31\"", &format!("ends = \"{to}\""));
    }
    format!("{head}[tre]\n{TRE}")
}

struct Svc {
    /// First, so that the server stops before the folder is removed.
    server: Server,
    tre: Tre,
}

impl Svc {
    fn start(dates: Option<(&str, &str)>, rules: Option<&str>) -> Svc {
        let tre = TreSetup::demo(2000, 5)
            .policy_text(policy(dates))
            .users(PEOPLE)
            .build();
        if let Some(r) = rules {
            tre.w.write("ws/alert-rules.toml", r);
        }
        let server = tre.serve(&["--checkpoint-every", "10"]);
        Svc { server, tre }
    }

    fn as_(&self, user: &str) -> Client {
        Client::new(&self.server.base, Token::new(self.tre.tokens[user].clone()))
    }

    fn audit(&self) -> Vec<Value> {
        crate::util::audit_entries(&self.tre.ws())
    }

    fn alerts_raised(&self) -> Vec<Value> {
        self.audit()
            .into_iter()
            .filter(|e| e["action"] == "alert.raised")
            .collect()
    }

    fn tre(&self, args: &[&str]) -> String {
        let out = self.tre.w.tre_ok(args);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The demo story: a job, its release requested and approved by two checkers.
    fn story(&self) -> (String, String) {
        let a = self.as_("analyst");
        let v = a
            .submit("demo", COUNTS, "patients by age band")
            .expect("submit");
        let job = v["job"].as_str().expect("job").to_string();
        let v = a
            .wait("demo", &job, Duration::from_secs(120))
            .expect("wait");
        assert_eq!(v["state"], "succeeded", "{v}");
        a.safe("demo", &job).expect("safe table");
        let r = a
            .request("demo", &job, "Table 1", "patients by age band")
            .expect("request");
        let rel = r["release"].as_str().expect("release").to_string();
        self.as_("checker1")
            .review("demo", &rel, true, "safe to release")
            .expect("review 1");
        let v = self
            .as_("checker2")
            .review("demo", &rel, true, "safe to release")
            .expect("review 2");
        assert_eq!(v["state"], "exported", "{v}");
        (job, rel)
    }

    /// Wait until the watcher has raised an alert of `rule`.
    fn wait_alert(&self, rule: &str) -> Value {
        let start = Instant::now();
        loop {
            if let Some(a) = self
                .alerts_raised()
                .into_iter()
                .find(|a| a["detail"]["rule"] == rule)
            {
                return a;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no {rule} alert; raised: {:?}",
                self.alerts_raised()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// GET without a token: status, content type, body.
fn public(base: &str, path: &str) -> (u16, String, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .max_redirects_will_error(false)
        .build()
        .into();
    let mut r = agent.get(format!("{base}{path}")).call().expect("GET");
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = r.body_mut().read_to_string().unwrap_or_default();
    (r.status().as_u16(), ct, body)
}

/// The demo data's NHS numbers (input) and pseudonyms (extract).
fn identifiers(tre: &Tre) -> Vec<String> {
    let mut out = parquet_column(&tre.w.join("extract/patients.parquet"), "patient_pseudonym");
    assert!(out.len() > 1000, "pseudonyms read");
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(tre.w.join("in/patients.csv"))
        .expect("input");
    let col = rdr
        .headers()
        .expect("header")
        .iter()
        .position(|h| h == "nhs_number")
        .expect("nhs_number column");
    let before = out.len();
    for r in rdr.records() {
        if let Some(n) = r.ok().and_then(|r| r.get(col).map(str::to_string)) {
            out.push(n);
        }
    }
    assert!(out.len() > before + 1000, "NHS numbers read");
    // Quarantined rows may hold an empty or short value: only real identifiers count.
    out.retain(|id| id.len() >= 10);
    out
}

fn assert_no_identifier(what: &str, text: &str, ids: &[String]) {
    for id in ids {
        assert!(
            !text.contains(id.as_str()),
            "{what} holds a patient identifier"
        );
    }
    assert!(
        !tre_pipeline::audit::looks_like_nhs_number(text),
        "{what} holds something shaped like an NHS number"
    );
}

fn csv_rows(text: &str) -> Vec<Vec<String>> {
    csv::Reader::from_reader(text.as_bytes())
        .records()
        .map(|r| r.expect("csv row").iter().map(str::to_string).collect())
        .collect()
}

#[test]
fn the_register_after_the_demo_story_is_public_complete_and_holds_no_identifier() {
    let mut svc = Svc::start(None, None);
    let (job, rel) = svc.story();
    let base = svc.server.base.clone();
    let ids = identifiers(&svc.tre);

    // The page, the JSON and the CSV files: no token needed.
    let (st, ct, html) = public(&base, "/register");
    assert_eq!(st, 200, "{html}");
    assert!(ct.starts_with("text/html"), "{ct}");
    for want in [
        "Demonstration extract on synthetic data",
        "Demonstration TRE (synthetic data)",
        "We count synthetic patients by age band",
        "Not applicable: synthetic data, no special category data",
        &rel,
        "checker1, checker2",
        "Incidents",
        "No alerts have been raised.",
    ] {
        assert!(html.contains(want), "the page lacks {want:?}");
    }
    let (st, _, json) = public(&base, "/register.json");
    assert_eq!(st, 200);
    let reg: Value = serde_json::from_str(&json).expect("register JSON");
    let p = &reg["projects"][0];
    assert_eq!(p["id"], "demo");
    assert_eq!(p["organisation"], "Demonstration TRE (synthetic data)");
    assert_eq!(p["national_data_opt_out"], "applied");
    assert_eq!(p["type1_opt_out"], "applied");
    assert_eq!(p["approved"], "2026-01-01");
    assert_eq!(p["ends"], "2030-12-31");
    assert_eq!(p["extract_versions"].as_array().map(Vec::len), Some(1));
    assert!(
        p["extract_versions"][0]["manifest_sha256"]
            .as_str()
            .is_some()
    );
    let j = &reg["jobs"][0];
    assert_eq!(reg["jobs"].as_array().map(Vec::len), Some(1));
    assert_eq!(j["job"], job.as_str());
    assert_eq!(j["user"], "analyst");
    assert_eq!(j["purpose"], "patients by age band");
    assert_eq!(
        j["sql_sha256"],
        tre_pipeline::digest::sha256_hex(COUNTS.as_bytes())
    );
    assert_eq!(j["outcome"], "succeeded");
    assert_eq!(j["extract_version"], 1);
    assert!(
        j["datasets"]
            .as_array()
            .is_some_and(|d| d.iter().any(|x| x == "patients"))
    );
    assert!(
        j.get("rows").is_none() && j.get("result").is_none(),
        "never results: {j}"
    );
    let r = &reg["releases"][0];
    assert_eq!(r["release"], rel.as_str());
    assert_eq!(r["checkers"], serde_json::json!(["checker1", "checker2"]));
    assert_eq!(r["sdc"]["rules"], "opensafely");
    assert_eq!(r["sdc"]["approvals"], 2);
    assert!(
        r["sdc"]["tool"]
            .as_str()
            .is_some_and(|t| t.starts_with("tre-pipeline "))
    );
    // Each released file is in the outbox with the hash the register gives.
    for f in r["files"].as_array().expect("files") {
        let path = svc.tre.outbox.join(f["name"].as_str().expect("name"));
        let (sha, _) = tre_pipeline::digest::sha256_file(&path).expect("outbox file");
        assert_eq!(f["sha256"], sha.as_str());
    }
    assert!(reg["last_updated"].as_str().is_some());

    // CSV and JSON agree.
    let mut csvs = Vec::new();
    for f in ["projects.csv", "jobs.csv", "releases.csv", "incidents.csv"] {
        let (st, ct, text) = public(&base, &format!("/register/{f}"));
        assert_eq!(st, 200, "{f}");
        assert!(ct.starts_with("text/csv"), "{ct}");
        csvs.push(text);
    }
    let jobs = csv_rows(&csvs[1]);
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0][0], job);
    assert_eq!(jobs[0][3], "analyst");
    assert_eq!(jobs[0][5], j["sql_sha256"].as_str().unwrap_or_default());
    assert_eq!(jobs[0][8], "succeeded");
    let releases = csv_rows(&csvs[2]);
    assert_eq!(releases[0][0], rel);
    assert_eq!(releases[0][4], "checker1; checker2");
    for f in r["files"].as_array().expect("files") {
        assert!(releases[0][3].contains(f["sha256"].as_str().unwrap_or("-")));
    }
    let projects = csv_rows(&csvs[0]);
    assert_eq!(
        projects[0][4],
        p["organisation"].as_str().unwrap_or_default()
    );
    assert_eq!(projects[0][13], "2026-01-01");
    assert!(csv_rows(&csvs[3]).is_empty());
    assert_eq!(public(&base, "/register/secrets.csv").0, 404);

    // Nothing else without a token.
    for path in [
        "/api/me",
        "/api/alerts",
        &format!("/api/projects/demo/jobs/{job}"),
        &format!("/api/projects/demo/jobs/{job}/safe.csv"),
        &format!("/api/projects/demo/releases/{rel}"),
    ] {
        assert_eq!(public(&base, path).0, 401, "{path} without a token");
    }
    for path in ["/audit", "/alerts", "/queue", "/projects/demo"] {
        let (st, _, body) = public(&base, path);
        assert!(st == 303 || st == 401, "{path} without a session: {st}");
        assert!(!body.contains("demo-rel"), "{path}");
    }

    // No pseudonym and no NHS number anywhere in it, served or built.
    assert_no_identifier("the register page", &html, &ids);
    assert_no_identifier("the register JSON", &json, &ids);
    for c in &csvs {
        assert_no_identifier("a register CSV", c, &ids);
    }
    svc.server.stop();
    svc.tre(&[
        "register",
        "build",
        "--workspace",
        "ws",
        "--out",
        "site",
        "-q",
    ]);
    let site = svc.tre.w.join("site");
    let mut names = BTreeSet::new();
    for e in walk(&site) {
        let text = std::fs::read_to_string(&e).expect("site file");
        assert_no_identifier(s(&e), &text, &ids);
        names.insert(
            e.strip_prefix(&site)
                .expect("under")
                .to_string_lossy()
                .into_owned(),
        );
    }
    for want in [
        "index.html",
        "register.json",
        "jobs.csv",
        "releases.csv",
        "projects.csv",
        "incidents.csv",
        "tre.css",
        &format!("sdc/{rel}.json"),
    ] {
        assert!(names.contains(want), "the site lacks {want}: {names:?}");
    }
    let built: Value =
        serde_json::from_str(&std::fs::read_to_string(site.join("register.json")).expect("json"))
            .expect("json");
    assert_eq!(built["jobs"], reg["jobs"]);
    assert_eq!(built["releases"][0]["files"], reg["releases"][0]["files"]);
    // After the stop a checkpoint covers the export.
    assert!(
        built["releases"][0]["checkpoint_seq"].as_u64().is_some(),
        "{}",
        built["releases"][0]
    );
    let sdc: Value = serde_json::from_str(
        &std::fs::read_to_string(site.join(format!("sdc/{rel}.json"))).expect("sdc"),
    )
    .expect("sdc");
    assert_eq!(sdc["format"], "tre-sdc-record/1");
    assert_eq!(sdc["rules"], "opensafely");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_policy_without_the_register_fields_is_refused_at_project_add() {
    let text = policy(None);
    let without: String = text
        .lines()
        .filter(|l| !l.starts_with("lay_summary") && !l.starts_with("ends"))
        .map(|l| format!("{l}\n"))
        .collect();
    let w = crate::util::Workdir::new();
    w.write("p.toml", without);
    w.admin_init();
    let msg = w.tre_code(
        &["admin", "project", "add", "--workspace", "ws", "p.toml"],
        1,
    );
    assert!(msg.contains("lay_summary") && msg.contains("ends"), "{msg}");
    assert!(!w.join("ws/projects/demo/installed.json").exists());
}

#[test]
fn the_story_raises_no_alert_and_each_attack_raises_its_own_once() {
    let mut svc = Svc::start(None, Some(RULES));
    let (job, _) = svc.story();
    // The watcher has looked (schedule 1 s) and found nothing.
    std::thread::sleep(Duration::from_secs(3));
    assert!(svc.alerts_raised().is_empty(), "{:?}", svc.alerts_raised());
    assert_eq!(
        svc.tre(&["admin", "alerts", "--workspace", "ws", "check", "-q"]),
        ""
    );

    // Many reads of the result.
    let a = svc.as_("analyst");
    for _ in 0..25 {
        a.job("demo", &job).expect("read");
    }
    let reads = svc.wait_alert("result_reads");
    assert_eq!(reads["actor"], "tre-alerts");
    assert_eq!(reads["project"], "demo");
    assert_eq!(reads["detail"]["subject"], "analyst");

    // The same SQL again and again.
    let mut jobs = Vec::new();
    for _ in 0..4 {
        let v = a.submit("demo", COUNTS, "again").expect("submit");
        jobs.push(v["job"].as_str().expect("job").to_string());
    }
    svc.wait_alert("repeated_jobs");

    // Jobs the checks refuse (identifiers, impossible SQL).
    for sql in [
        "SELECT patient_pseudonym FROM patients",
        "SELECT * FROM no_such_table",
        "SELECT patient_pseudonym, sex FROM patients",
    ] {
        match a.submit("demo", sql, "probe") {
            Ok(v) => {
                let j = v["job"].as_str().expect("job").to_string();
                let end = a.wait("demo", &j, Duration::from_secs(120)).expect("wait");
                assert_eq!(end["releasable"], false, "{sql}: {end}");
            }
            Err(ClientError::Status { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    svc.wait_alert("refused_jobs");

    for j in &jobs {
        a.wait("demo", j, Duration::from_secs(120)).expect("wait");
    }
    // A burst of bad tokens (last: the limiter then blocks this address).
    let bad = Client::new(
        &svc.server.base,
        Token::new("tre_not-a-real-token-at-all-0000"),
    );
    for _ in 0..15 {
        assert!(bad.get("/api/me").is_err());
    }
    svc.server.stop();
    // The limiter's aggregate is written at the stop; the next check finds the burst.
    let out = svc.tre(&["admin", "alerts", "--workspace", "ws", "check", "-q"]);
    assert!(out.contains("failed_sign_ins"), "{out}");

    // A workspace record changed outside the service, and an edited audit entry.
    let outbox = svc.tre.ws().join("projects/demo/outbox.json");
    let mut bytes = std::fs::read(&outbox).expect("record");
    bytes.push(b' ');
    std::fs::write(&outbox, bytes).expect("edit");
    let out = svc.tre(&["admin", "alerts", "--workspace", "ws", "check", "-q"]);
    assert!(
        out.contains("record_changed") && out.contains("outbox.json"),
        "{out}"
    );
    // A dataset file changed outside the service: re-hashed against the sealed dataset
    // record on every scheduled (integrity) check.
    let data = svc.tre.ws().join("projects/demo/data");
    let file = walk(&data)
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "parquet"))
        .expect("a dataset file");
    let name = file
        .file_name()
        .expect("name")
        .to_string_lossy()
        .to_string();
    let original = std::fs::read(&file).expect("dataset file");
    let mut changed = original.clone();
    changed.push(0);
    std::fs::write(&file, &changed).expect("edit the dataset");
    let out = svc.tre(&["admin", "alerts", "--workspace", "ws", "check", "-q"]);
    assert!(
        out.contains("record_changed") && out.contains(&name),
        "{out}"
    );
    std::fs::write(&file, &original).expect("restore the dataset");
    // A signed checkpoint that no longer holds (edited after it was signed).
    let checkpoint = walk(&svc.tre.ws().join("audit/checkpoints"))
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .expect("a checkpoint");
    let kept = std::fs::read(&checkpoint).expect("checkpoint");
    let mut cp: serde_json::Value = serde_json::from_slice(&kept).expect("json");
    cp["time"] = serde_json::Value::String("2020-01-01T00:00:00Z".into());
    std::fs::write(&checkpoint, serde_json::to_vec(&cp).expect("json")).expect("edit");
    // The auditor refuses to extend such a log (fail closed), so the alert is the
    // refusal itself.
    let err = svc
        .tre
        .w
        .tre_code(&["admin", "alerts", "--workspace", "ws", "check"], 1);
    assert!(
        err.contains("ALERT") && err.contains("audit_verification") && err.contains("checkpoint"),
        "{err}"
    );
    std::fs::write(&checkpoint, &kept).expect("restore the checkpoint");

    let log = svc.tre.ws().join("audit/audit.jsonl");
    let text = std::fs::read_to_string(&log).expect("log");
    let edited = text.replacen(
        "\"purpose\":\"patients by age band\"",
        "\"purpose\":\"patients by age band!\"",
        1,
    );
    assert_ne!(edited, text);
    std::fs::write(&log, edited).expect("edit the log");
    // The log now refuses every entry (fail closed), so the alert is the refusal itself.
    let err = svc
        .tre
        .w
        .tre_code(&["admin", "alerts", "--workspace", "ws", "check"], 1);
    assert!(
        err.contains("ALERT") && err.contains("audit_verification"),
        "{err}"
    );
    std::fs::write(&log, text).expect("restore the log");

    // Never twice: again, from the CLI, finds nothing new.
    assert_eq!(
        svc.tre(&["admin", "alerts", "--workspace", "ws", "check", "-q"]),
        ""
    );
    let raised = svc.alerts_raised();
    let rules: BTreeSet<String> = raised
        .iter()
        .map(|a| a["detail"]["rule"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        rules,
        [
            "failed_sign_ins",
            "record_changed",
            "refused_jobs",
            "repeated_jobs",
            "result_reads"
        ]
        .into_iter()
        .map(str::to_string)
        .collect()
    );
    let ids: BTreeSet<&str> = raised
        .iter()
        .filter_map(|a| a["detail"]["alert"].as_str())
        .collect();
    assert_eq!(ids.len(), raised.len(), "an alert raised twice: {raised:?}");
    let listed = svc.tre(&["admin", "alerts", "--workspace", "ws"]);
    assert_eq!(listed.lines().count(), raised.len(), "{listed}");
}

#[test]
fn actions_outside_the_project_dates_raise_an_alert_that_an_auditor_acknowledges_and_reports() {
    let mut svc = Svc::start(Some(("2020-01-01", "2021-01-01")), None);
    let (_, rel) = svc.story();
    let alert = svc.wait_alert("outside_project_dates");
    let id = alert["detail"]["alert"].as_str().expect("id").to_string();
    assert_eq!(alert["project"], "demo");

    // Auditors see it; nobody else does.
    let seen = svc.as_("auditor").get("/api/alerts").expect("alerts");
    assert!(
        seen["alerts"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["id"] == id.as_str())),
        "{seen}"
    );
    for who in ["analyst", "checker1", "outsider"] {
        match svc.as_(who).get("/api/alerts") {
            Err(ClientError::Status { status, .. }) => assert_eq!(status, 403, "{who}"),
            other => panic!("{who} saw the alerts: {other:?}"),
        }
    }
    match svc.as_("analyst").post(
        &format!("/api/alerts/{id}/ack"),
        &serde_json::json!({"note": "nothing to see"}),
    ) {
        Err(ClientError::Status { status, .. }) => assert_eq!(status, 403),
        other => panic!("the analyst acknowledged: {other:?}"),
    }
    match svc.as_("auditor").post(
        &format!("/api/alerts/{id}/ack"),
        &serde_json::json!({"note": ""}),
    ) {
        Err(ClientError::Status { status, .. }) => assert_eq!(status, 400),
        other => panic!("an empty note: {other:?}"),
    }
    let v = svc
        .as_("auditor")
        .post(
            &format!("/api/alerts/{id}/ack"),
            &serde_json::json!({"note": "approval renewal pending; project paused"}),
        )
        .expect("ack");
    assert_eq!(v["acks"][0]["by"], "auditor");
    let acks: Vec<Value> = svc
        .audit()
        .into_iter()
        .filter(|e| e["action"] == "alert.ack" && e["outcome"] == "ok")
        .collect();
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0]["actor"], "auditor");

    // The public register shows the incident, acknowledged, without its evidence.
    let (_, _, json) = public(&svc.server.base, "/register.json");
    let reg: Value = serde_json::from_str(&json).expect("json");
    let inc = &reg["incidents"][0];
    assert_eq!(inc["id"], id.as_str());
    assert_eq!(inc["status"], "acknowledged");
    assert!(
        inc.get("subject").is_none() && inc.get("evidence").is_none(),
        "{inc}"
    );

    // Screenshots of the alerts page and the register page, for the README.
    screenshots(&svc);

    svc.server.stop();
    let out = svc.tre.w.tre(&[
        "admin",
        "alerts",
        "--workspace",
        "ws",
        "report",
        &id,
        "--out",
        "incident.md",
    ]);
    assert!(out.status.success(), "{}", show(&out));
    let report = std::fs::read_to_string(svc.tre.w.join("incident.md")).expect("report");
    for want in [
        "# Incident report",
        "outside_project_dates",
        "Demonstration extract on synthetic data",
        "Datasets: ",
        &rel,
        "approval renewal pending",
        "| seq | time | who | action |",
        "job.submit",
    ] {
        assert!(
            report.contains(want),
            "the report lacks {want:?}:\n{report}"
        );
    }
    assert_no_identifier("the incident report", &report, &identifiers(&svc.tre));
    let bad = svc.tre.w.tre_code(
        &[
            "admin",
            "alerts",
            "--workspace",
            "ws",
            "report",
            "alert-0000000000000000",
            "--out",
            "x.md",
        ],
        1,
    );
    assert!(bad.contains("no alert"), "{bad}");
}

/// The register and the alerts page in headless Chromium, saved into docs/.
fn screenshots(svc: &Svc) {
    use crate::web::{Browser, start_driver};
    let driver = start_driver();
    let shots = repo().join("target").join("screenshots");
    let b = Browser::open(&driver, &shots);
    let base = &svc.server.base;
    b.go(&format!("{base}/register"));
    assert!(b.source().contains("Data-uses register"));
    b.screenshot("register-page");
    b.sign_in(base, &svc.tre.tokens["auditor"]);
    b.go(&format!("{base}/alerts"));
    assert!(
        b.source().contains("outside project dates"),
        "{}",
        b.source()
    );
    b.screenshot("alerts-page");
    for name in ["register-page", "alerts-page"] {
        std::fs::copy(
            shots.join(format!("{name}.png")),
            repo().join("docs").join(format!("{name}.png")),
        )
        .expect("copy the screenshot into docs/");
    }
}
