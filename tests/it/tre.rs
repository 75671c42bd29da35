//! The research environment end to end: extract into a workspace, query, check, the
//! two-checker release, refusals, and purge.

use crate::util::{Workdir, parquet_column, repo, today};

fn setup(w: &Workdir) {
    w.tre_ok(&[
        "generate",
        "--patients",
        "3000",
        "--seed",
        "21",
        "--out",
        "in",
    ]);
    w.test_key();
    let policy = repo().join("policies/demo.toml");
    w.tre_ok(&["init", "ws", "--policy", policy.to_str().expect("utf8")]);
    let today = today();
    w.tre_ok(&[
        "extract",
        "--policy",
        "ws/projects/demo/policy.toml",
        "--input",
        "in",
        "--opt-outs",
        "in/opt_outs.txt",
        "--opt-outs-as-of",
        &today,
        "--key-file",
        "project.key",
        "--out",
        "ws/projects/demo/data",
        "-q",
    ]);
}

fn as_user(w: &Workdir, user: &str, args: &[&str]) -> std::process::Output {
    w.tre_env(args, &[("TRE_USER", user)])
}

fn ok_as(w: &Workdir, user: &str, args: &[&str]) -> String {
    let out = as_user(w, user, args);
    assert!(
        out.status.success(),
        "{user}: tre {args:?}\n{}",
        crate::util::show(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn code_as(w: &Workdir, user: &str, args: &[&str], code: i32) -> String {
    let out = as_user(w, user, args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{user}: tre {args:?}\n{}",
        crate::util::show(&out)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn whole_story_query_check_two_checker_release_and_purge() {
    let w = Workdir::new();
    setup(&w);
    w.write("counts.sql", "SELECT sex, age_band, COUNT(*) AS n FROM patients GROUP BY sex, age_band ORDER BY sex, age_band\n");
    let q = [
        "query",
        "--workspace",
        "ws",
        "--project",
        "demo",
        "--sql",
        "counts.sql",
        "--purpose",
        "age-sex table",
        "--job",
        "agesex",
    ];
    // Unapproved users are refused.
    let err = code_as(&w, "mallory", &q, 1);
    assert!(err.contains("not an approved analyst"), "{err}");
    let out = ok_as(&w, "analyst", &q);
    assert!(out.contains("disclosure check"), "{out}");
    assert!(!out.contains("F,"), "results are never printed");

    // SQL errors and datasets outside the project end with clear messages.
    w.write("bad.sql", "SELECT * FROM other_project_table");
    let err = code_as(
        &w,
        "analyst",
        &[
            "query",
            "--workspace",
            "ws",
            "--project",
            "demo",
            "--sql",
            "bad.sql",
            "--purpose",
            "bad table",
        ],
        2,
    );
    assert!(
        err.contains("not found") && err.contains("datasets are"),
        "{err}"
    );
    w.write(
        "ddl.sql",
        "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
    );
    let err = code_as(
        &w,
        "analyst",
        &[
            "query",
            "--workspace",
            "ws",
            "--project",
            "demo",
            "--sql",
            "ddl.sql",
            "--purpose",
            "escape",
        ],
        2,
    );
    assert!(err.contains("SQL error"), "{err}");

    // Release: the requester cannot approve; one approval is not enough; two are.
    let rel = [
        "release",
        "request",
        "agesex",
        "--workspace",
        "ws",
        "--project",
        "demo",
        "--justification",
        "Table 1 of the paper",
    ];
    ok_as(&w, "analyst", &rel);
    let review = |user: &str| -> Vec<String> {
        [
            "release",
            "review",
            "rel-agesex",
            "--workspace",
            "ws",
            "--project",
            "demo",
            "--approve",
            "--comment",
            &format!("checked by {user}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let r = review("analyst");
    let r: Vec<&str> = r.iter().map(String::as_str).collect();
    let err = code_as(&w, "analyst", &r, 1);
    assert!(err.contains("not an approved output checker"), "{err}");
    let r1 = review("checker1");
    let r1: Vec<&str> = r1.iter().map(String::as_str).collect();
    ok_as(&w, "checker1", &r1);
    let err = code_as(&w, "checker1", &r1, 1);
    assert!(err.contains("already reviewed"), "{err}");
    let outbox = w.join("outbox");
    let export = [
        "release",
        "export",
        "rel-agesex",
        "--workspace",
        "ws",
        "--project",
        "demo",
        "--to",
        outbox.to_str().expect("utf8"),
    ];
    let err = code_as(&w, "checker1", &export, 1);
    assert!(err.contains("1 approval(s)"), "{err}");
    assert!(!outbox.join("release-manifest.json").exists());
    let r2 = review("checker2");
    let r2: Vec<&str> = r2.iter().map(String::as_str).collect();
    ok_as(&w, "checker2", &r2);
    ok_as(&w, "checker1", &export);

    // The exported table holds only safe values: suppressed cells empty, the rest rounded
    // (OpenSAFELY midpoint-6 rounding publishes multiples of 5 at or above 10... or empty).
    let text = std::fs::read_to_string(outbox.join("demo-agesex.csv")).expect("export");
    let mut rdr = csv::Reader::from_reader(text.as_bytes());
    let headers = rdr.headers().expect("header").clone();
    let n = headers.iter().position(|h| h == "n").expect("n column");
    let mut published = 0;
    for rec in rdr.records() {
        let rec = rec.expect("row");
        if rec[n].is_empty() {
            continue;
        }
        let v: i64 = rec[n].parse().expect("count");
        assert!(v > 7, "no small count leaves: {v}");
        published += 1;
    }
    assert!(published > 0);
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(outbox.join("release-manifest.json")).expect("manifest"),
    )
    .expect("json");
    assert_eq!(
        m["approved_by"],
        serde_json::json!(["checker1", "checker2"])
    );
    let f = &m["files"][0];
    assert_eq!(
        tre_pipeline::digest::sha256_hex(text.as_bytes()),
        f["sha256"].as_str().expect("sha")
    );

    // Row-level results may stay but can never be released.
    w.write(
        "rows.sql",
        "SELECT patient_pseudonym, snomed_code FROM clinical_events",
    );
    let out = ok_as(
        &w,
        "analyst",
        &[
            "query",
            "--workspace",
            "ws",
            "--project",
            "demo",
            "--sql",
            "rows.sql",
            "--purpose",
            "row level",
            "--job",
            "rows",
        ],
    );
    assert!(out.contains("can never be released"), "{out}");
    let err = code_as(
        &w,
        "analyst",
        &[
            "release",
            "request",
            "rows",
            "--workspace",
            "ws",
            "--project",
            "demo",
            "--justification",
            "I would like the rows please",
        ],
        1,
    );
    assert!(err.contains("never be released"), "{err}");

    // Purge: a newly opted-out patient disappears from every dataset and later results.
    let before = parquet_column(
        &w.join("ws/projects/demo/data/patients.parquet"),
        "patient_pseudonym",
    );
    let victim_nhs = {
        let mut rdr = csv::ReaderBuilder::new()
            .flexible(true)
            .from_path(w.join("in/patients.csv"))
            .expect("patients");
        let key: Vec<u8> = (0u8..32).collect();
        let mut found = None;
        for r in rdr.byte_records().flatten() {
            let raw: String = String::from_utf8_lossy(&r[0])
                .chars()
                .filter(|c| c.is_ascii_digit())
                .collect();
            use hmac::Mac;
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("key");
            mac.update(raw.as_bytes());
            let p: String = mac
                .finalize()
                .into_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            if before.contains(&p) {
                found = Some((raw, p));
                break;
            }
        }
        found.expect("a released patient")
    };
    w.write("newer.txt", format!("nhs_number\n{}\n", victim_nhs.0));
    let today = today();
    // The wrong key is refused rather than silently matching nobody.
    w.tre_ok(&["keygen", "--out", "other.key"]);
    let err = w.tre_code(
        &[
            "purge",
            "--workspace",
            "ws",
            "--project",
            "demo",
            "--opt-outs",
            "newer.txt",
            "--opt-outs-as-of",
            &today,
            "--key-file",
            "other.key",
        ],
        1,
    );
    assert!(err.contains("fingerprint"), "{err}");
    w.tre_ok(&[
        "purge",
        "--workspace",
        "ws",
        "--project",
        "demo",
        "--opt-outs",
        "newer.txt",
        "--opt-outs-as-of",
        &today,
        "--key-file",
        "project.key",
    ]);
    for t in [
        "appointments",
        "clinical_events",
        "medications",
        "patients",
        "registrations",
    ] {
        let p = parquet_column(
            &w.join(&format!("ws/projects/demo/data/{t}.parquet")),
            "patient_pseudonym",
        );
        assert!(
            !p.contains(&victim_nhs.1),
            "{t} still holds the purged patient"
        );
    }
    let rows_after = parquet_column(
        &w.join("ws/projects/demo/results/rows/result.parquet"),
        "patient_pseudonym",
    );
    assert!(
        !rows_after.contains(&victim_nhs.1),
        "stored results are purged too"
    );
    w.write(
        "victim.sql",
        format!(
            "SELECT COUNT(*) AS n FROM clinical_events WHERE patient_pseudonym = '{}'",
            victim_nhs.1
        ),
    );
    ok_as(
        &w,
        "analyst",
        &[
            "query",
            "--workspace",
            "ws",
            "--project",
            "demo",
            "--sql",
            "victim.sql",
            "--purpose",
            "check purge",
            "--job",
            "victim",
        ],
    );
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(w.join("ws/projects/demo/data/manifest.json")).expect("m"),
    )
    .expect("json");
    assert_eq!(m["purges"].as_array().map(Vec::len), Some(1));
    for (t, e) in m["tables"].as_object().expect("tables") {
        let n = |k: &str| e[k].as_u64().expect("n");
        assert_eq!(
            n("rows_read"),
            n("rows_rejected")
                + n("rows_removed_ndoo")
                + n("rows_removed_type1")
                + n("rows_filtered")
                + n("rows_written"),
            "{t}"
        );
    }
    // Every step, refusals included, is in the hash-chained audit log; it verifies, and it
    // holds no NHS number and no key material.
    let out = w.tre(&["audit", "verify", "--workspace", "ws"]);
    assert!(out.status.success(), "{}", crate::util::show(&out));
    let shown = w.tre_ok(&["audit", "show", "--workspace", "ws", "--user", "mallory"]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("query") && shown.contains("refused"),
        "{shown}"
    );
    let log = std::fs::read_to_string(w.join("ws/audit/audit.jsonl")).expect("log");
    for action in [
        "\"init\"",
        "\"project.approve\"",
        "\"extract\"",
        "\"query\"",
        "\"release.request\"",
        "\"release.review\"",
        "\"release.export\"",
        "\"purge\"",
    ] {
        assert!(log.contains(action), "audit log lacks {action}");
    }
    assert!(
        !log.contains(&victim_nhs.0),
        "no NHS number in the audit log"
    );
    assert!(
        !log.contains("000102030405060708090a0b0c0d0e0f"),
        "no key material in the audit log"
    );
}

#[test]
fn tampered_dataset_is_refused() {
    let w = Workdir::new();
    setup(&w);
    let p = w.join("ws/projects/demo/data/medications.parquet");
    let mut bytes = std::fs::read(&p).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&p, bytes).expect("write");
    w.write("q.sql", "SELECT COUNT(*) AS n FROM patients");
    let err = code_as(
        &w,
        "analyst",
        &[
            "query",
            "--workspace",
            "ws",
            "--project",
            "demo",
            "--sql",
            "q.sql",
            "--purpose",
            "count",
        ],
        1,
    );
    assert!(err.contains("does not match its manifest"), "{err}");
}
