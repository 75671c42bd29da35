//! Crash-point enumeration of `tre extract` (issue 12, "What it must show").
//!
//! A debug build of `tre` numbers every durable step (temporary file created, bytes
//! written, fsync, rename, directory fsync, row group appended, earlier file removed) on
//! stderr when `TRE_CRASH_AT` is set, and aborts at step N (`pipeline/durable.rs`). The
//! test counts the steps of a real extract (two tables and a quarantine file), then for
//! every step, from an empty folder and over an earlier complete extract, aborts the run
//! there and checks what a crash leaves: either a manifest that verifies, or no manifest
//! and every final-named file accounted for by the run's listing; then a rerun with
//! `--overwrite` completes and writes exactly the bytes of a clean run.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use crate::util::{Workdir, show};

const POLICY: &str = r#"version = 1
[project]
id = "crash"
title = "Crash-point enumeration"
purpose = "Show that a crash at any durable step leaves a folder a reader can trust"
legal_basis = "Synthetic data: no personal data is processed"

[opt_outs]
max_age_days = 30

[tables.patients.columns]
nhs_number = "pseudonymise"
sex = "keep"

[tables.clinical_events.columns]
nhs_number = "pseudonymise"
event_date = "keep"
snomed_code = "keep"
numeric_value = "keep"
"#;

/// Generated input for the two tables, plus rows the quarantine must take.
fn input(w: &Workdir) {
    w.tre_ok(&[
        "generate",
        "--patients",
        "40",
        "--seed",
        "11",
        "--out",
        "in",
    ]);
    let events = w.join("in/clinical_events.csv");
    let mut text = std::fs::read_to_string(&events).expect("events");
    text.push_str("9434765870,2020-13-45,38341003,,\n9434765870,2020-01-01,38341003,abc,\n");
    std::fs::write(&events, text).expect("events");
    w.write("policy.toml", POLICY);
    w.test_key();
}

fn extract(w: &Workdir, crash_at: Option<u64>) -> Output {
    let n = crash_at.map(|n| n.to_string());
    let env: Vec<(&str, &str)> = n.iter().map(|n| ("TRE_CRASH_AT", n.as_str())).collect();
    let extra = ["--overwrite", "--threads", "2"];
    w.extract_env("policy.toml", "in", "out", &extra, &env)
}

/// Every file of a folder by name, with its bytes (the manifest without its times).
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for e in std::fs::read_dir(dir).expect("dir").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let mut bytes = std::fs::read(e.path()).expect("read");
        if name == "manifest.json" {
            let mut m: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
            m["started_at"] = serde_json::Value::Null;
            m["finished_at"] = serde_json::Value::Null;
            bytes = serde_json::to_vec_pretty(&m).expect("json");
        }
        files.insert(name, bytes);
    }
    files
}

/// After a crash: a manifest in `manifest_dir` that verifies (it covers the quarantine
/// too), or no manifest and every final-named file in `dir` named by `dir`'s listing
/// (temporaries only of listed names).
fn assert_trustworthy(dir: &Path, manifest_dir: &Path, what: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if manifest_dir.join("manifest.json").exists() {
        tre_pipeline::manifest::verify_dir(manifest_dir)
            .unwrap_or_else(|e| panic!("{what}: a manifest that does not verify: {e}"));
        return;
    }
    let listed: Vec<String> = match std::fs::read(dir.join(".tre-extract.json")) {
        Ok(b) => {
            let v: serde_json::Value = serde_json::from_slice(&b).expect("listing json");
            v["files"]
                .as_array()
                .expect("files")
                .iter()
                .map(|f| f.as_str().expect("name").to_string())
                .collect()
        }
        Err(_) => Vec::new(),
    };
    for n in &names {
        let ours = n == ".tre-extract.json"
            || n.starts_with("..tre-extract.json.tmp-")
            || listed
                .iter()
                .any(|l| n == l || n.starts_with(&format!(".{l}.tmp-")));
        assert!(
            ours,
            "{what}: {n} is in {} with no manifest and no listing naming it",
            dir.display()
        );
    }
}

fn reset(w: &Workdir) {
    for d in ["out", "out.quarantine"] {
        if w.join(d).exists() {
            std::fs::remove_dir_all(w.join(d)).expect("rm");
        }
    }
}

/// The steps a run takes, from its stderr.
fn steps(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("durable step "))
        .map(str::to_string)
        .collect()
}

#[cfg(debug_assertions)]
#[test]
fn crash_at_every_durable_step_leaves_old_or_new_and_rerun_is_identical() {
    use std::os::unix::process::ExitStatusExt;
    let w = Workdir::new();
    input(&w);
    let clean = extract(&w, None);
    assert!(clean.status.success(), "{}", show(&clean));
    let want_out = snapshot(&w.join("out"));
    let want_q = snapshot(&w.join("out.quarantine"));
    assert!(
        want_q.contains_key("clinical_events.csv"),
        "rows quarantined"
    );
    for over_earlier in [false, true] {
        // Count the steps of this kind of run (0: never abort).
        reset(&w);
        if over_earlier {
            assert!(extract(&w, None).status.success());
        }
        let counted = extract(&w, Some(0));
        assert!(counted.status.success(), "{}", show(&counted));
        let all = steps(&counted);
        assert!(
            (20..=200).contains(&all.len()),
            "{} durable steps: {all:?}",
            all.len()
        );
        for n in 1..=all.len() as u64 {
            let what = format!(
                "crash at {} (over an earlier extract: {over_earlier})",
                all[n as usize - 1]
            );
            reset(&w);
            if over_earlier {
                assert!(extract(&w, None).status.success(), "{what}");
            }
            let crashed = extract(&w, Some(n));
            assert_eq!(
                crashed.status.signal(),
                Some(6),
                "{what}: the run did not abort there\n{}",
                show(&crashed)
            );
            assert_eq!(steps(&crashed).len() as u64, n, "{what}");
            assert_trustworthy(&w.join("out"), &w.join("out"), &what);
            assert_trustworthy(&w.join("out.quarantine"), &w.join("out"), &what);
            let rerun = extract(&w, None);
            assert!(rerun.status.success(), "{what}: rerun\n{}", show(&rerun));
            assert_eq!(snapshot(&w.join("out")), want_out, "{what}: rerun output");
            assert_eq!(
                snapshot(&w.join("out.quarantine")),
                want_q,
                "{what}: rerun quarantine"
            );
        }
    }
}

/// Release builds have no crash hook: the variable is never read.
#[cfg(not(debug_assertions))]
#[test]
fn release_builds_have_no_crash_hook() {
    let w = Workdir::new();
    input(&w);
    let out = extract(&w, Some(1));
    assert!(out.status.success(), "{}", show(&out));
    assert!(steps(&out).is_empty());
}
