//! The review workflow over HTTP and the pages (issue 22, point 6 and point 7's joint
//! audit after a rules change), against the real `tre serve` on the demo data:
//! - a request returned for changes or rejected is resubmitted as a new version of the
//!   same request, pointing at a new job; its checkers see every earlier decision and
//!   comment (API and page), the new version needs two approvals of its own, and the
//!   export's manifest names the earlier decisions;
//! - before a checker has decided on a version, no other checker's decision or comment
//!   on that version reaches them: not in the request's JSON, not on the review page, not
//!   on the audit page; once they decide, they see it;
//! - the review page compares the table under review with the project's exported
//!   releases and the requester's received tables by their real key and measure columns
//!   (a cell hidden in the earlier table and given by the cells shown now is named);
//! - the same table released again after the project's rules changed (another
//!   threshold) is checked jointly with its earlier release: the guard refuses it, or no
//!   cell hidden in both is exactly determined by the two safe tables and the margins.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use tre_pipeline::client::{Client, ClientError};
use tre_pipeline::tre::users::Token;

use crate::util::{
    Server, Tre, TreSetup, Workdir, audit_entries, http, policy_with, repo, sign_in,
};

const CHECKERS: [&str; 2] = ["checker1", "checker2"];

struct Svc {
    server: Server,
    tre: Tre,
}

impl Svc {
    fn start(setup: TreSetup) -> Svc {
        let tre = setup.users(&["analyst", "checker1", "checker2"]).build();
        let server = tre.serve(&[]);
        Svc { server, tre }
    }

    fn as_(&self, user: &str) -> Client {
        Client::new(&self.server.base, Token::new(self.tre.tokens[user].clone()))
    }

    /// Submit `sql` as the analyst and wait for it: (job id, status).
    fn job(&self, sql: &str) -> (String, Value) {
        let c = self.as_("analyst");
        let v = c
            .submit("demo", sql, "review workflow test")
            .expect("submit");
        let job = v["job"].as_str().expect("job id").to_string();
        let status = c
            .wait("demo", &job, Duration::from_secs(180))
            .expect("status");
        assert_eq!(status["state"], "succeeded", "{status}");
        (job, status)
    }

    fn request(&self, job: &str) -> String {
        let r = self
            .as_("analyst")
            .request(
                "demo",
                job,
                "Table 1 of the paper",
                "counts from the demo data",
            )
            .expect("request");
        r["release"].as_str().expect("release id").to_string()
    }

    fn decide(&self, who: &str, rel: &str, decision: &str, comment: &str) -> Value {
        self.as_(who)
            .post(
                &format!("/api/projects/demo/releases/{rel}/reviews"),
                &json!({ "decision": decision, "comment": comment }),
            )
            .unwrap_or_else(|e| panic!("{who} {decision}: {e}"))
    }

    fn resubmit(&self, who: &str, rel: &str, job: &str) -> Result<Value, ClientError> {
        self.as_(who).post(
            &format!("/api/projects/demo/releases/{rel}/versions"),
            &json!({
                "job": job,
                "justification": "changed as the checkers asked",
                "context": "counts from the demo data",
            }),
        )
    }

    fn addr(&self) -> String {
        self.server
            .base
            .strip_prefix("http://")
            .expect("http base")
            .to_string()
    }

    /// A page as the holder of the session `cookie`: (status, body).
    fn page(&self, cookie: &str, path: &str) -> (u16, String) {
        let addr = self.addr();
        let (status, _, body) = http(
            &addr,
            format!(
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
            ),
        );
        (status, body)
    }
}

/// The refusal's message, insisting on its status.
fn refused(r: Result<Value, ClientError>, want: u16) -> String {
    match r {
        Err(ClientError::Status { status, message }) if status == want => message,
        other => panic!("expected a {want} refusal, got {other:?}"),
    }
}

fn tre_section(rules: &str) -> String {
    format!(
        "users = [\"analyst\"]\noutput_checkers = [\"checker1\", \"checker2\"]\noutput_rules = \"{rules}\"\nmax_query_seconds = 120\n"
    )
}

#[test]
fn a_returned_or_rejected_request_is_resubmitted_as_a_new_version_its_checkers_see_the_history() {
    let svc = Svc::start(TreSetup::demo(2000, 5));
    let (j1, _) = svc.job("SELECT sex, COUNT(*) AS n FROM patients GROUP BY sex");
    let rel = svc.request(&j1);

    // Version 1 is returned for changes: it closes; nobody else decides on it.
    let v = svc.decide("checker1", &rel, "return", "combine U with another row");
    assert_eq!(v["state"], "returned", "{v}");
    assert_eq!(v["version"], 1);
    assert_eq!(v["reviews"][0]["decision"], "return");
    let m = refused(
        svc.as_("checker2").post(
            &format!("/api/projects/demo/releases/{rel}/reviews"),
            &json!({ "decision": "approve", "comment": "fine by me" }),
        ),
        409,
    );
    assert!(m.contains("can no longer be reviewed"), "{m}");

    // Only its requester resubmits, and only with a new job.
    refused(svc.resubmit("checker1", &rel, &j1), 403);
    let m = refused(svc.resubmit("analyst", &rel, &j1), 409);
    assert!(m.contains("already version 1"), "{m}");

    let (j2, _) = svc.job("SELECT age_band, COUNT(*) AS n FROM patients GROUP BY age_band");
    let v = svc.resubmit("analyst", &rel, &j2).expect("version 2");
    assert_eq!(
        v,
        json!({ "release": rel, "version": 2, "state": "requested" })
    );
    // An open version cannot be resubmitted over.
    let m = refused(svc.resubmit("analyst", &rel, &j1), 409);
    assert!(m.contains("only a request a checker rejected"), "{m}");

    // Version 2's checkers see version 1's decision and comment before they decide.
    let v = svc.as_("checker2").release("demo", &rel).expect("status");
    assert_eq!(v["version"], 2);
    assert_eq!(v["job"], j2.as_str());
    assert_eq!(v["reviews"], json!([]));
    assert_eq!(v["history"][0]["version"], 1);
    assert_eq!(v["history"][0]["job"], j1.as_str());
    assert_eq!(v["history"][0]["state"], "returned");
    assert_eq!(v["history"][0]["reviews"][0]["checker"], "checker1");
    assert_eq!(
        v["history"][0]["reviews"][0]["comment"],
        "combine U with another row"
    );
    let v = svc.decide(
        "checker2",
        &rel,
        "reject",
        "the age bands over 90 are too thin",
    );
    assert_eq!(v["state"], "rejected", "{v}");

    // A rejection is answered the same way: version 3, with both earlier decisions.
    let (j3, _) = svc.job(
        "SELECT age_band, COUNT(DISTINCT patient_pseudonym) AS patients FROM patients GROUP BY age_band",
    );
    // The requester's page offers the resubmission; the form makes version 3.
    let addr = svc.addr();
    let a = sign_in(&addr, &svc.tre.tokens["analyst"]);
    let (_, page) = svc.page(&a, &format!("/projects/demo/releases/{rel}"));
    assert!(page.contains("Resubmit as a new version"), "{page}");
    assert!(
        page.contains("the age bands over 90 are too thin"),
        "{page}"
    );
    let form_token = page
        .split("name=\"form_token\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a form token");
    let form = format!(
        "form_token={form_token}&job={j3}&justification=thin+bands+hidden&context=patients+by+age+band"
    );
    let (status, _, body) = http(
        &addr,
        format!(
            "POST /projects/demo/releases/{rel}/versions HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://{addr}\r\nCookie: {a}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
            form.len()
        ),
    );
    assert_eq!(status, 303, "{body}");
    let v = svc.as_("analyst").release("demo", &rel).expect("status");
    assert_eq!(v["version"], 3, "{v}");
    assert_eq!(v["job"], j3.as_str());

    // checker1 approves version 3 (earlier approvals never count: this is its first).
    let v = svc.decide("checker1", &rel, "approve", "the thin bands are hidden now");
    assert_eq!(v["approvals"], json!(["checker1"]), "{v}");
    assert_eq!(v["reviews"][0]["comment"], "the thin bands are hidden now");

    // checker2 has not decided on version 3: its JSON, page and audit page show no
    // decision of it, while the history (their own rejection included) is shown.
    let v = svc.as_("checker2").release("demo", &rel).expect("status");
    assert_eq!(v["reviews_sealed"], true, "{v}");
    assert_eq!(v["reviews"], json!([]));
    assert_eq!(v["approvals"], json!([]));
    assert_eq!(v["history"].as_array().map(Vec::len), Some(2), "{v}");
    assert!(!v.to_string().contains("thin bands are hidden"), "{v}");
    // The analyst and the deciding checker see it.
    let v = svc.as_("analyst").release("demo", &rel).expect("status");
    assert_eq!(v["approvals"], json!(["checker1"]));
    assert!(v.get("reviews_sealed").is_none(), "{v}");

    let c2 = sign_in(&addr, &svc.tre.tokens["checker2"]);
    let (status, page) = svc.page(&c2, &format!("/projects/demo/releases/{rel}"));
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Earlier versions"), "{page}");
    assert!(page.contains("combine U with another row"), "{page}");
    assert!(
        page.contains("the age bands over 90 are too thin"),
        "{page}"
    );
    assert!(page.contains("returned for changes"), "{page}");
    assert!(page.contains("shown after you decide"), "{page}");
    assert!(
        page.contains("value=\"return\""),
        "the return decision is offered"
    );
    assert!(!page.contains("thin bands are hidden"), "{page}");
    let (status, audit) = svc.page(&c2, "/audit?action=release");
    assert_eq!(status, 200, "{audit}");
    assert!(
        audit.contains("combine U with another row"),
        "history stays"
    );
    assert!(
        !audit.contains("thin bands are hidden"),
        "the audit page shows another checker's undecided-version comment"
    );
    let c1 = sign_in(&addr, &svc.tre.tokens["checker1"]);
    let (_, audit) = svc.page(&c1, "/audit?action=release");
    assert!(
        audit.contains("thin bands are hidden"),
        "their own decision"
    );

    // checker2 approves: the version exports; the manifest carries the earlier decisions.
    let v = svc.decide("checker2", &rel, "approve", "agree");
    assert_eq!(v["state"], "exported", "{v}");
    assert_eq!(v["approvals"], json!(["checker1", "checker2"]));
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(svc.tre.outbox.join(format!("demo-{rel}.manifest.json"))).expect("manifest"),
    )
    .expect("json");
    assert_eq!(manifest["version"], 3);
    assert_eq!(manifest["job"], j3.as_str());
    assert_eq!(
        manifest["earlier_decisions"],
        json!([
            "version 1: checker1 returned for changes",
            "version 2: checker2 rejected"
        ])
    );
    let (_, audit) = svc.page(&c2, "/audit?action=release");
    assert!(audit.contains("thin bands are hidden"), "decided: shown");
    let m = refused(svc.resubmit("analyst", &rel, &j1), 409);
    assert!(m.contains("Exported"), "{m}");

    // Every step is audited, the resubmissions with their versions and earlier decisions.
    let entries = audit_entries(&svc.tre.ws());
    let resubmits: Vec<&Value> = entries
        .iter()
        .filter(|e| e["action"] == "release.resubmit" && e["outcome"] == "ok")
        .collect();
    assert_eq!(resubmits.len(), 2);
    assert_eq!(resubmits[1]["detail"]["version"], 3);
    assert_eq!(resubmits[1]["detail"]["previous_job"], j2.as_str());
    assert_eq!(
        resubmits[1]["detail"]["earlier_decisions"],
        "v1:checker1:return,v2:checker2:reject"
    );
    let reviews = entries
        .iter()
        .filter(|e| e["action"] == "release.review" && e["outcome"] == "ok")
        .map(|e| e["detail"]["version"].as_u64().unwrap_or(0))
        .collect::<Vec<_>>();
    assert_eq!(reviews, vec![1, 2, 3, 3]);
}

#[test]
fn the_cli_asks_for_exactly_one_decision_and_every_part_of_a_request() {
    let w = Workdir::new();
    for args in [
        vec![
            "release",
            "review",
            "--project",
            "demo",
            "rel-x",
            "--comment",
            "hi",
        ],
        vec![
            "release",
            "review",
            "--project",
            "demo",
            "rel-x",
            "--approve",
            "--return",
            "--comment",
            "hi",
        ],
    ] {
        let err = w.tre_code(&args, 2);
        assert!(
            err.contains("--return") || err.contains("--approve"),
            "{err}"
        );
    }
    // A request and a new version ask for the same three things, all required.
    for command in ["request", "resubmit"] {
        let err = w.tre_code(&["release", command, "--project", "demo", "rel-x"], 2);
        for arg in ["--job", "--justification", "--context"] {
            assert!(err.contains(arg), "{command}: {err}");
        }
    }
}

/// Rows of a safe table: key columns (the first `keys`) -> the value of column `col`
/// (`None` hidden).
fn cells(csv: &str, keys: usize, col: usize) -> BTreeMap<Vec<String>, Option<f64>> {
    let mut r = csv::ReaderBuilder::new().from_reader(csv.as_bytes());
    r.records()
        .map(|rec| {
            let rec = rec.expect("a csv row");
            let key = (0..keys).map(|i| rec[i].to_string()).collect();
            let v = rec
                .get(col)
                .filter(|v| !v.is_empty())
                .map(|v| v.parse::<f64>().expect("a number"));
            (key, v)
        })
        .collect()
}

/// Four ethnicity codes, the rest together.
const ETH5: &str =
    "CASE WHEN ethnicity_code IN ('A', 'C', 'D', 'H') THEN ethnicity_code ELSE 'other' END";

#[test]
fn the_review_page_compares_with_exported_and_received_tables_by_their_real_columns() {
    let svc = Svc::start(TreSetup::demo(2000, 5));
    // An exported release by ethnicity of the men, with few of code C kept (about one in
    // sixteen): the C cell is hidden there.
    let (j1, status) = svc.job(&format!(
        "SELECT eth, COUNT(*) AS n FROM (SELECT {ETH5} AS eth, patient_pseudonym FROM patients WHERE sex = 'M' AND (COALESCE(ethnicity_code, '') <> 'C' OR patient_pseudonym < '1')) t GROUP BY eth"
    ));
    let safe1 = svc
        .as_("analyst")
        .safe("demo", &j1)
        .unwrap_or_else(|e| panic!("safe 1: {e}: {status}"));
    let t1 = cells(&safe1, 1, 1);
    assert_eq!(t1.get(&vec!["C".to_string()]), Some(&None), "{safe1}");
    assert!(t1.values().any(Option::is_some), "{safe1}");
    let rel1 = svc.request(&j1);
    for c in CHECKERS {
        svc.decide(c, &rel1, "approve", "small cells hidden");
    }
    // A table the analyst received and never exported.
    let (j0, _) = svc.job("SELECT age_band, COUNT(*) AS n FROM patients GROUP BY age_band");
    // The table under review: ethnicity by sex of everyone, its key columns not first.
    let (j2, status) = svc.job(&format!(
        "SELECT COUNT(*) AS n, eth, sex FROM (SELECT {ETH5} AS eth, sex, patient_pseudonym FROM patients WHERE sex IN ('F', 'M')) t GROUP BY eth, sex"
    ));
    let safe2 = svc
        .as_("analyst")
        .safe("demo", &j2)
        .unwrap_or_else(|e| panic!("safe 2: {e}: {status}"));
    let mut c_total = 0.0;
    let mut r = csv::ReaderBuilder::new().from_reader(safe2.as_bytes());
    for rec in r.records() {
        let rec = rec.expect("row");
        if &rec[1] == "C" {
            c_total += rec[0].parse::<f64>().expect("the C cells are shown");
        }
    }
    assert!(c_total > 100.0, "{safe2}");
    let rel2 = svc.request(&j2);

    let c1 = sign_in(&svc.addr(), &svc.tre.tokens["checker1"]);
    let (status, page) = svc.page(&c1, &format!("/projects/demo/releases/{rel2}"));
    assert_eq!(status, 200, "{page}");
    let expect = [
        format!("Compared with the most similar earlier table, release {rel1}"),
        "Shared key columns: eth.".to_string(),
        "This table is summed over sex to compare.".to_string(),
        "Measures in common: n.".to_string(),
        format!("{} cells in common", t1.len()),
        format!("n for eth=C: hidden in the earlier table; the cells shown here give {c_total}"),
        format!("job {j0} (received by the requester)"),
    ];
    for e in &expect {
        assert!(page.contains(e.as_str()), "{e}: {safe1}\n{safe2}\n{page}");
    }
    // The analyst's view of their own request has no comparison (checkers only).
    let a = sign_in(&svc.addr(), &svc.tre.tokens["analyst"]);
    let (_, page) = svc.page(&a, &format!("/projects/demo/releases/{rel2}"));
    assert!(page.contains(&rel2), "{page}");
    assert!(!page.contains("Compared with earlier releases"), "{page}");
}

/// Ground truth over the installed dataset: `sql` gives (key..., count) rows.
fn truth(tre: &Tre, sql: &str, keys: usize) -> BTreeMap<Vec<String>, f64> {
    let (rt, ctx) = tre.installed_datasets();
    let batches = rt
        .block_on(async { ctx.sql(sql).await?.collect().await })
        .expect("truth query");
    let mut out = BTreeMap::new();
    for b in batches {
        let cols: Vec<_> = (0..=keys)
            .map(|i| {
                arrow::compute::cast(b.column(i), &arrow::datatypes::DataType::Utf8).expect("text")
            })
            .collect();
        for r in 0..b.num_rows() {
            let text = |i: usize| {
                let a = cols[i]
                    .as_any()
                    .downcast_ref::<arrow::array::StringArray>()
                    .expect("utf8");
                a.value(r).to_string()
            };
            let key = (0..keys).map(text).collect();
            out.insert(key, text(keys).parse().expect("a count"));
        }
    }
    out
}

/// The cells hidden in both tables that the two tables together with every margin of
/// the true table (rows, columns, grand total: the attacker model assumes all totals
/// known) determine exactly: Gaussian elimination over the hidden cells' constraints.
fn exactly_determined(
    a: &BTreeMap<Vec<String>, Option<f64>>,
    b: &BTreeMap<Vec<String>, Option<f64>>,
    truth: &BTreeMap<Vec<String>, f64>,
) -> Vec<Vec<String>> {
    let unknown: Vec<&Vec<String>> = truth
        .keys()
        .filter(|k| {
            let known = |t: &BTreeMap<Vec<String>, Option<f64>>| t.get(*k).copied().flatten();
            known(a).is_none() && known(b).is_none()
        })
        .collect();
    // One constraint per margin (key 0 fixed, key 1 fixed) and the grand total.
    let mut lines: Vec<Vec<f64>> = vec![vec![1.0; unknown.len()]];
    for dim in 0..2 {
        let values: std::collections::BTreeSet<&String> = truth.keys().map(|k| &k[dim]).collect();
        for v in values {
            lines.push(
                unknown
                    .iter()
                    .map(|k| f64::from(u8::from(&k[dim] == v)))
                    .collect(),
            );
        }
    }
    // Row-reduce, then test each unit vector against the reduced rows.
    let mut basis: Vec<(usize, Vec<f64>)> = Vec::new();
    for mut l in lines {
        for (p, row) in &basis {
            let f = l[*p];
            if f != 0.0 {
                l.iter_mut().zip(row).for_each(|(x, y)| *x -= f * y);
            }
        }
        if let Some(p) = l.iter().position(|x| x.abs() > 1e-9) {
            let f = l[p];
            l.iter_mut().for_each(|x| *x /= f);
            for (_, row) in basis.iter_mut() {
                let g = row[p];
                if g != 0.0 {
                    row.iter_mut().zip(&l).for_each(|(x, y)| *x -= g * y);
                }
            }
            basis.push((p, l));
        }
    }
    (0..unknown.len())
        .filter(|&j| {
            let mut e = vec![0.0; unknown.len()];
            e[j] = 1.0;
            for (p, row) in &basis {
                let f = e[*p];
                if f != 0.0 {
                    e.iter_mut().zip(row).for_each(|(x, y)| *x -= f * y);
                }
            }
            e.iter().all(|x| x.abs() < 1e-9)
        })
        .map(|j| unknown[j].clone())
        .collect()
}

/// The ethnicity grouping of the rules-change test.
const ETH: &str = "CASE WHEN ethnicity_code IN ('A', 'B', 'C', 'D', 'H', 'M') THEN ethnicity_code ELSE 'other' END";

#[test]
fn a_table_released_again_after_the_rules_changed_is_checked_jointly_with_its_earlier_release() {
    // Rules A: the ons-srs preset (threshold 10, exact counts).
    let mut svc =
        Svc::start(TreSetup::demo(2000, 5).policy_text(policy_with(&tre_section("ons-srs"))));
    // Ethnicity (a few codes, the rest together) by sex: cells of 5 to 10 patients, so
    // the two thresholds hide different cells.
    let sql = &format!(
        "SELECT eth, sex, COUNT(*) AS n FROM (SELECT {ETH} AS eth, sex, patient_pseudonym FROM patients WHERE sex IN ('F', 'M')) t GROUP BY eth, sex"
    );
    let (j1, status) = svc.job(sql);
    let safe1 = svc
        .as_("analyst")
        .safe("demo", &j1)
        .unwrap_or_else(|e| panic!("safe 1: {e}: {status}"));
    let rel1 = svc.request(&j1);
    for c in CHECKERS {
        let v = svc.decide(c, &rel1, "approve", "checked under ons-srs");
        assert_ne!(v["state"], "rejected");
    }
    assert_eq!(
        svc.as_("analyst").release("demo", &rel1).expect("status")["state"],
        "exported"
    );

    // The operator changes the project's rules to another threshold (8, still exact),
    // with `tre admin project add` (the command that installs or updates a project).
    svc.server.stop();
    let rules = std::fs::read_to_string(repo().join("policies/output-rules/ons-srs.toml"))
        .expect("preset")
        .replace("min_count = 10", "min_count = 8");
    assert!(rules.contains("min_count = 8"));
    svc.tre.w.write("threshold8.toml", rules);
    svc.tre
        .w
        .write("policy.toml", policy_with(&tre_section("threshold8.toml")));
    svc.tre.w.admin_project("policy.toml");
    svc.server = svc.tre.serve(&[]);

    // The same table again under the new rules.
    let (j2, status) = svc.job(sql);
    let truth = truth(
        &svc.tre,
        &format!(
            "SELECT eth, sex, COUNT(*) FROM (SELECT {ETH} AS eth, sex FROM patients WHERE sex IN ('F', 'M')) t GROUP BY eth, sex"
        ),
        2,
    );
    let a = cells(&safe1, 2, 2);
    let hidden_a = a.values().filter(|v| v.is_none()).count();
    assert!(hidden_a > 0, "the first table hides cells: {safe1}");
    match svc.as_("analyst").safe("demo", &j2) {
        Err(_) => {
            // The guard refused it at run, naming the earlier table.
            let verdict = status["verdict"].as_str().unwrap_or_default();
            assert!(verdict.starts_with("refused"), "{status}");
            assert!(verdict.contains(&j1), "the refusal names {j1}: {verdict}");
        }
        Ok(safe2) => {
            let b = cells(&safe2, 2, 2);
            // Same cells, whatever the rules.
            assert_eq!(
                a.keys().collect::<Vec<_>>(),
                b.keys().collect::<Vec<_>>(),
                "{safe1}\n{safe2}"
            );
            // A cell hidden under the first rules and published under the second is a
            // publication under the rules now in force: it must meet their threshold.
            for (k, v) in &b {
                if a[k].is_none()
                    && let Some(v) = v
                {
                    assert!(
                        truth[k] >= 8.0 && *v == truth[k],
                        "{k:?} published as {v} ({} patients)",
                        truth[k]
                    );
                }
            }
            let pinned = exactly_determined(&a, &b, &truth);
            assert!(
                pinned.is_empty(),
                "cells hidden in both releases are exactly determined by the two safe tables and the margins: {pinned:?}\nunder the first rules:\n{safe1}\nunder the second:\n{safe2}"
            );
            // Its release is checked again at request: refused naming the earlier
            // release, or requested.
            match svc.as_("analyst").request(
                "demo",
                &j2,
                "Table 1 again",
                "the same counts under the new rules",
            ) {
                Ok(v) => assert_eq!(v["state"], "requested", "{v}"),
                Err(e) => {
                    let m = refused(Err(e), 409);
                    assert!(m.contains(&j1) || m.contains(&rel1), "{m}");
                }
            }
        }
    }
}
