//! Issue 23 point 4 end to end: `tre admin refresh`, a project's scheduled extract as
//! one command. Version 1 is installed, a patient then opts out (present in version 1,
//! not on the newer allow-list), the refresh installs version 2 and removes the patient
//! from version 1 too; jobs say which version they ran on, the register shows both
//! versions, and the audit log verifies. Refusals (wrong key, a bad or older list, an
//! unknown project) leave nothing installed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tre_pipeline::client::Client;
use tre_pipeline::nhs_number::NhsNumber;
use tre_pipeline::tre::users::Token;

use crate::util::{
    Tre, TreSetup, Workdir, audit_count, parquet_column, parquet_strings, show, today,
};

const COUNTS: &str =
    "SELECT age_band, COUNT(*) AS n FROM patients GROUP BY age_band ORDER BY age_band";
const PSEUDONYM: &str = "patient_pseudonym";

/// The demo workspace with version 1 installed (`in/`, its deny-list, `project.key`).
fn demo() -> Tre {
    TreSetup::demo(400, 23).users(&["analyst"]).build()
}

fn project_dir(tre: &Tre) -> PathBuf {
    tre.ws().join("projects/demo")
}

/// The valid NHS numbers of every input table (the numbers a practice submits to the
/// "Check for National Data Opt-outs" service), normalised, patients first.
fn input_numbers(w: &Workdir) -> Vec<NhsNumber> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(w.join("in"))
        .expect("input")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .collect();
    files.sort_by_key(|p| !p.ends_with("patients.csv"));
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for f in files {
        let mut rdr = csv::ReaderBuilder::new()
            .flexible(true)
            .from_path(&f)
            .expect("input");
        let Some(col) = rdr
            .headers()
            .expect("header")
            .iter()
            .position(|h| h == "nhs_number")
        else {
            continue;
        };
        out.extend(
            rdr.records()
                .filter_map(|r| r.ok()?.get(col).map(str::to_string))
                .filter_map(|n| tre_pipeline::nhs_number::parse(&n).ok())
                .filter(|n| seen.insert(n.get())),
        );
    }
    out
}

/// The NHS numbers on the input's deny-list.
fn denied(w: &Workdir) -> BTreeSet<u64> {
    std::fs::read_to_string(w.join("in/opt_outs.txt"))
        .expect("opt-outs")
        .lines()
        .filter_map(|l| tre_pipeline::nhs_number::parse(l.trim()).ok())
        .map(|n| n.get())
        .collect()
}

fn digits(n: NhsNumber) -> String {
    String::from_utf8_lossy(&n.ascii_digits()).into_owned()
}

/// Every string value of every table of a dataset version's folder.
fn values_in(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut tables = 0;
    for e in std::fs::read_dir(dir).expect("version folder").flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "parquet") {
            tables += 1;
            out.extend(parquet_strings(&p).1);
        }
    }
    assert!(tables >= 2, "tables read in {}", dir.display());
    out
}

/// The patients of a dataset version (the pseudonyms of its patients table).
fn patients_in(dir: &Path) -> BTreeSet<String> {
    parquet_column(&dir.join("patients.parquet"), PSEUDONYM)
        .into_iter()
        .collect()
}

/// Refresh entries refused or failed.
fn refusals(ws: &Path) -> usize {
    audit_count(ws, "refresh", "refused") + audit_count(ws, "refresh", "error")
}

/// The service's allow-list reply, clearing every valid input patient except `except`
/// and the deny-list's.
fn allow_list(w: &Workdir, name: &str, except: &[NhsNumber]) -> PathBuf {
    let denied = denied(w);
    let skip: BTreeSet<u64> = except.iter().map(|n| n.get()).collect();
    let text: String = input_numbers(w)
        .into_iter()
        .filter(|n| !denied.contains(&n.get()) && !skip.contains(&n.get()))
        .map(|n| format!("{},\n", digits(n)))
        .collect();
    w.write(name, text)
}

fn refresh_args<'a>(list: &'a str, as_of: &'a str, key: &'a str) -> Vec<&'a str> {
    vec![
        "admin",
        "refresh",
        "--workspace",
        "ws",
        "demo",
        "--input",
        "in",
        "--ndoo-allow-list",
        list,
        "--opt-outs-as-of",
        as_of,
        "--key-file",
        key,
        "--staging",
        "stage/demo",
        "-q",
    ]
}

fn analyst(tre: &Tre, base: &str) -> Client {
    Client::new(base, Token::new(tre.tokens["analyst"].clone()))
}

fn run_job(tre: &Tre, base: &str) -> (String, Value) {
    let c = analyst(tre, base);
    let v = c.submit("demo", COUNTS, "refresh test").expect("submit");
    let job = v["job"].as_str().expect("job").to_string();
    let v = c
        .wait("demo", &job, Duration::from_secs(120))
        .expect("wait");
    assert_eq!(v["state"], "succeeded", "{v}");
    (job, v)
}

#[test]
fn a_patient_who_opts_out_between_two_versions_disappears_from_both() {
    let tre = demo();
    let w = &tre.w;
    let key = tre_pipeline::key_file::load_project_key(&w.join("project.key")).expect("key");
    let p = key.pseudonymiser();
    let v1_dir = project_dir(&tre).join("data");
    let v1 = patients_in(&v1_dir);
    // A patient in version 1 who now opts out: not on the newer allow-list.
    let denied = denied(w);
    let leaver = input_numbers(w)
        .into_iter()
        .find(|n| !denied.contains(&n.get()) && v1.contains(&p.pseudonym(*n)))
        .expect("a patient of version 1");
    let gone = p.pseudonym(leaver);

    // A job on version 1 says so.
    let (job1, status1) = {
        let server = tre.serve(&[]);
        run_job(&tre, &server.base)
    };
    assert_eq!(status1["dataset_version"], 1, "{status1}");

    allow_list(w, "mesh/reply.dat", &[leaver]);
    let day = today();
    let out = w.tre(&refresh_args("mesh/reply.dat", &day, "project.key"));
    assert!(out.status.success(), "refresh: {}", show(&out));

    // The patient is in neither version; version 2 holds the others.
    let v2_dir = project_dir(&tre).join("versions/2");
    let v2 = patients_in(&v2_dir);
    let v1_after = patients_in(&v1_dir);
    assert!(
        !values_in(&v2_dir).contains(&gone),
        "the opted-out patient is in no table of version 2"
    );
    assert!(
        !values_in(&v1_dir).contains(&gone),
        "the opted-out patient was purged from every table of version 1"
    );
    assert!(
        v1.len() > 50 && v1_after.len() == v1.len() - 1,
        "only they left version 1"
    );
    assert_eq!(v2, v1_after, "the same input makes the same pseudonyms");
    // No staged or journal file is left.
    assert!(!project_dir(&tre).join("refresh.json").exists());
    assert!(!v1_dir.join(".purge-journal.json").exists());

    // The versions held.
    let out = w.tre_ok(&["admin", "dataset", "list", "--workspace", "ws", "demo"]);
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(listing.contains("\n1\t"), "{listing}");
    assert!(listing.contains("\n2 (current)\t"), "{listing}");

    // Jobs now run on version 2 and say so; the earlier job still says 1.
    {
        let server = tre.serve(&[]);
        let (_, status2) = run_job(&tre, &server.base);
        assert_eq!(status2["dataset_version"], 2, "{status2}");
        // The earlier job's count was computed over the patient: withdrawn.
        let v = analyst(&tre, &server.base)
            .job("demo", &job1)
            .expect("earlier job");
        assert!(v["withdrawn"].as_str().is_some(), "{v}");
    }

    // The register shows both versions and each job's version.
    w.tre_ok(&[
        "register",
        "build",
        "--workspace",
        "ws",
        "--out",
        "reg",
        "-q",
    ]);
    let reg: Value =
        serde_json::from_slice(&std::fs::read(w.join("reg/register.json")).expect("register"))
            .expect("register JSON");
    let versions = reg["projects"][0]["extract_versions"]
        .as_array()
        .expect("versions")
        .clone();
    assert_eq!(versions.len(), 2, "{versions:?}");
    assert_eq!(versions[0]["status"], "held");
    assert_eq!(versions[1]["status"], "current");
    for v in &versions {
        assert!(
            v["manifest_sha256"].as_str().is_some_and(|s| s.len() == 64),
            "{v}"
        );
        assert_eq!(v["opt_outs_as_of"], day.as_str(), "{v}");
        assert!(v["extracted"].as_str().is_some(), "{v}");
    }
    let jobs: Vec<u64> = reg["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter_map(|j| j["extract_version"].as_u64())
        .collect();
    assert_eq!(jobs, [1, 2]);
    let page = std::fs::read_to_string(w.join("reg/index.html")).unwrap_or_default();
    assert!(!page.contains(&gone), "no pseudonym in the register");

    // Every step is in the audit log, which verifies.
    let ws = tre.ws();
    assert_eq!(audit_count(&ws, "refresh.start", "ok"), 1);
    assert_eq!(audit_count(&ws, "refresh.install", "ok"), 1);
    assert_eq!(audit_count(&ws, "refresh", "ok"), 1);
    let done = crate::util::audit_entries(&ws)
        .into_iter()
        .find(|e| e["action"] == "refresh")
        .expect("refresh entry");
    assert_eq!(done["detail"]["version"], 2, "{done}");
    assert_eq!(done["detail"]["patients_not_cleared"], 1, "{done}");
    assert_eq!(done["detail"]["rows_removed"]["1"]["patients"], 1, "{done}");
    let log = std::fs::read_to_string(ws.join("audit/audit.jsonl")).expect("log");
    assert!(!log.contains(&gone), "no pseudonym in the audit log");
    assert!(
        !log.contains(&digits(leaver)),
        "no NHS number in the audit log"
    );
    w.tre_ok(&["audit", "verify", "--workspace", "ws", "-q"]);

    // A second refresh with the same list changes nothing of the data, and version 1
    // can be dropped.
    let out = w.tre(&refresh_args("mesh/reply.dat", &day, "project.key"));
    assert!(out.status.success(), "refresh again: {}", show(&out));
    assert_eq!(patients_in(&project_dir(&tre).join("versions/3")), v2);
    w.tre_ok(&[
        "admin",
        "dataset",
        "drop",
        "--workspace",
        "ws",
        "demo",
        "1",
        "-q",
    ]);
    assert!(!v1_dir.join("patients.parquet").exists());
    assert!(v1_dir.join("dataset.json").exists());
    let out = w.tre(&[
        "admin",
        "dataset",
        "drop",
        "--workspace",
        "ws",
        "demo",
        "3",
        "-q",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the current version is never dropped: {}",
        show(&out)
    );

    // `tre purge` removes a patient from every version held (2 and 3).
    let v3_dir = project_dir(&tre).join("versions/3");
    let other = input_numbers(w)
        .into_iter()
        .find(|n| *n != leaver && v2.contains(&p.pseudonym(*n)))
        .expect("another patient");
    w.write("newer.txt", format!("nhs_number\n{}\n", digits(other)));
    w.tre_ok(&crate::util::purge_with(&day, &["-q"]));
    for dir in [&v2_dir, &v3_dir] {
        assert!(
            !values_in(dir).contains(&p.pseudonym(other)),
            "purged from {}",
            dir.display()
        );
    }
    assert_eq!(patients_in(&v2_dir).len(), v2.len() - 1);
    w.tre_ok(&["audit", "verify", "--workspace", "ws", "-q"]);
}

/// Nothing of a refused refresh is installed: still version 1, no `versions/`, and
/// every refusal is audited.
fn assert_nothing_installed(tre: &Tre, refused: usize) {
    assert!(!project_dir(tre).join("versions/2").exists());
    assert!(!project_dir(tre).join("refresh.json").exists());
    let out = tre
        .w
        .tre_ok(&["admin", "dataset", "list", "--workspace", "ws", "demo"]);
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(listing.contains("\n1 (current)\t"), "{listing}");
    assert!(!listing.contains("\n2"), "{listing}");
    assert_eq!(audit_count(&tre.ws(), "refresh.install", "ok"), 0);
    assert_eq!(audit_count(&tre.ws(), "refresh", "ok"), 0);
    assert_eq!(refusals(&tre.ws()), refused, "each refusal is audited");
}

#[test]
fn refused_refreshes_leave_nothing_installed() {
    let tre = demo();
    let w = &tre.w;
    let day = today();
    allow_list(w, "mesh/reply.dat", &[]);

    // The wrong key: refused before anything is extracted.
    w.tre_ok(&["keygen", "--out", "other.key", "-q"]);
    let out = w.tre(&refresh_args("mesh/reply.dat", &day, "other.key"));
    assert_eq!(out.status.code(), Some(1), "wrong key: {}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("fingerprint"),
        "{}",
        show(&out)
    );
    assert!(
        !w.join("stage/demo/manifest.json").exists(),
        "nothing extracted"
    );
    assert_nothing_installed(&tre, 1);

    // A bad allow-list (CR LF endings; a header) and an empty one.
    let good = std::fs::read_to_string(w.join("mesh/reply.dat")).expect("list");
    w.write("mesh/crlf.dat", good.replace('\n', "\r\n"));
    w.write("mesh/header.dat", format!("nhs_number,\n{good}"));
    w.write("mesh/empty.dat", "");
    for bad in ["mesh/crlf.dat", "mesh/header.dat", "mesh/empty.dat"] {
        let out = w.tre(&refresh_args(bad, &day, "project.key"));
        assert!(!out.status.success(), "{bad} refused: {}", show(&out));
    }
    assert_nothing_installed(&tre, 4);

    // A list older than version 1's, and a stale one.
    let days_ago = |n: u64| {
        let d: chrono::NaiveDate = day.parse().expect("today");
        (d - chrono::Days::new(n)).to_string()
    };
    let older = days_ago(2);
    let out = w.tre(&refresh_args("mesh/reply.dat", &older, "project.key"));
    assert_eq!(out.status.code(), Some(1), "older list: {}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("older"),
        "{}",
        show(&out)
    );
    let stale = days_ago(90);
    let out = w.tre(&refresh_args("mesh/reply.dat", &stale, "project.key"));
    assert_eq!(out.status.code(), Some(1), "stale list: {}", show(&out));

    // An unknown project.
    let mut args = refresh_args("mesh/reply.dat", &day, "project.key");
    args[4] = "nosuch";
    let out = w.tre(&args);
    assert!(!out.status.success(), "unknown project: {}", show(&out));
    assert!(!tre.ws().join("projects/nosuch").exists());

    assert_nothing_installed(&tre, 7);
    w.tre_ok(&["audit", "verify", "--workspace", "ws", "-q"]);
}
