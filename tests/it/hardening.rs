//! Hostile and mistaken inputs to `tre extract` (issue 12): one test per numbered defect,
//! named after it.

use std::path::Path;

use crate::util::{Workdir, chmod, repo, show, today};

/// A minimal valid input folder: every table of the demo policy with a few good rows.
fn tiny_input(w: &Workdir, events: &str) {
    w.write("in/patients.csv", "nhs_number,name,date_of_birth,sex,ethnicity_code,postcode,lsoa,date_of_death\n9434765919,Ann,1980-05-01,F,A,LS1 4AP,E01011229,\n9434765870,Bob,1950-01-01,M,,M1 1AE,,\n");
    w.write(
        "in/registrations.csv",
        "nhs_number,practice_code,start_date,end_date\n9434765919,B82005,2001-01-01,\n9434765870,B82005,2001-01-01,\n",
    );
    w.write("in/clinical_events.csv", events);
    w.write(
        "in/medications.csv",
        "nhs_number,issue_date,dmd_code,quantity\n9434765919,2020-01-01,325278007,56\n",
    );
    w.write("in/appointments.csv", "nhs_number,practice_code,booked_date,appointment_date,status,mode\n9434765919,B82005,2020-01-01,2020-01-02,attended,telephone\n");
    w.write("in/opt_outs.txt", "nhs_number\n");
    w.test_key();
}

const EVENTS_HEADER: &str = "nhs_number,event_date,snomed_code,numeric_value,unit\n";

fn extract(w: &Workdir, out: &str, extra: &[&str]) -> std::process::Output {
    let policy = repo().join("policies/demo.toml");
    let mut extra = extra.to_vec();
    extra.push("--allow-empty-opt-outs");
    w.extract_output(policy.to_str().expect("utf8"), "in", out, &extra)
}

fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest"))
        .expect("json")
}

fn written(m: &serde_json::Value, table: &str) -> u64 {
    m["tables"][table]["rows_written"].as_u64().expect("count")
}

#[test]
fn defect_1_type1_dissent_in_a_malformed_row_removes_the_patient() {
    let w = Workdir::new();
    let events = format!(
        "{EVENTS_HEADER}9434765919,2020-01-01,38341003,,\n9434765919,2020-01-01,827241000000103,5.5,mmol/L,extra\n9434765870,2020-01-01,38341003,,\n"
    );
    tiny_input(&w, &events);
    let out = extract(&w, "out", &[]);
    assert!(out.status.success(), "{}", show(&out));
    let m = manifest(&w.join("out"));
    assert_eq!(written(&m, "patients"), 1, "only Bob is left: {m}");
    assert_eq!(m["type1"]["dissenters"], 1);
}

#[test]
fn defect_1_reordered_header_keeps_dissent_and_quarantine_labels() {
    let w = Workdir::new();
    // Header in a different order; the dissent row has a bad date.
    let events = "event_date,snomed_code,nhs_number,numeric_value,unit\n2020-01-01,38341003,9434765919,,\n2020-13-45,827241000000103,9434765919,,\n2020-01-01,38341003,9434765870,,\n";
    tiny_input(&w, events);
    let out = extract(&w, "out", &[]);
    assert!(out.status.success(), "{}", show(&out));
    let m = manifest(&w.join("out"));
    assert_eq!(written(&m, "patients"), 1, "{m}");
    // The quarantine file labels each field by its schema column.
    let mut r = csv::Reader::from_path(w.join("out.quarantine/clinical_events.csv")).expect("q");
    let headers = r.headers().expect("h").clone();
    let row = r.records().next().expect("row").expect("row");
    let col = |name: &str| {
        let i = headers.iter().position(|h| h == name).expect("column");
        row[i].to_string()
    };
    assert_eq!(col("nhs_number"), "9434765919");
    assert_eq!(col("event_date"), "2020-13-45");
    assert_eq!(col("snomed_code"), "827241000000103");
}

#[test]
fn defect_1_unattributable_dissent_refuses_the_run() {
    let w = Workdir::new();
    let events = format!(
        "{EVENTS_HEADER}9434765919,2020-01-01,38341003,,\n94347659XX,2020-01-01,827241000000103,,\n"
    );
    tiny_input(&w, &events);
    let out = extract(&w, "out", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3"), "{err}");
    assert!(!w.join("out/manifest.json").exists());
}

#[test]
fn defect_2_path_mistakes_never_destroy_data() {
    let w = Workdir::new();
    tiny_input(
        &w,
        &format!("{EVENTS_HEADER}9434765919,2020-01-01,38341003,,\n"),
    );
    let before = std::fs::read(w.join("in/patients.csv")).expect("input");
    // Quarantine equal to the input.
    let out = extract(&w, "out", &["--quarantine", "in"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    // OUT reaching the input through `..`, with --overwrite.
    std::fs::create_dir(w.join("x")).expect("x");
    let out = extract(&w, "x/../in", &["--overwrite"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    // Quarantine inside OUT through `..`.
    let out = extract(&w, "out", &["--quarantine", "x/../out/q"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert_eq!(
        std::fs::read(w.join("in/patients.csv")).expect("input"),
        before
    );
    // --overwrite on an unrelated folder leaves it alone.
    w.write("unrelated/keep.txt", "precious");
    let out = extract(&w, "unrelated", &["--overwrite"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(w.join("unrelated/keep.txt").exists());
    // A shared (1777) folder as quarantine is refused, never re-moded.
    std::fs::create_dir(w.join("shared")).expect("shared");
    chmod(&w.join("shared"), 0o1777);
    let out = extract(&w, "out2", &["--quarantine", "shared"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(w.join("shared"))
        .expect("m")
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o1777);
}

#[test]
fn defect_2_overwrite_replaces_only_what_the_last_run_wrote() {
    let w = Workdir::new();
    tiny_input(
        &w,
        &format!("{EVENTS_HEADER}9434765919,2020-01-01,38341003,,\n"),
    );
    let first = extract(&w, "out", &[]);
    assert!(first.status.success(), "{}", show(&first));
    let hash = std::fs::read(w.join("out/patients.parquet")).expect("p");
    w.write("out/notes.txt", "mine");
    let again = extract(&w, "out", &["--overwrite"]);
    assert!(again.status.success(), "{}", show(&again));
    assert!(w.join("out/notes.txt").exists(), "unlisted files are kept");
    assert_eq!(
        std::fs::read(w.join("out/patients.parquet")).expect("p"),
        hash
    );
    assert!(!w.join("out/.tre-extract.json").exists());
}

#[test]
fn defect_6_a_missing_header_never_prints_the_number() {
    let w = Workdir::new();
    tiny_input(&w, "9434765919,2020-01-01,38341003,,\n");
    let out = extract(&w, "out", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains("9434765919"), "{all}");
    assert!(all.contains("clinical_events.csv"), "{all}");
}

#[test]
fn defect_7_a_second_extract_into_a_locked_out_is_refused() {
    let w = Workdir::new();
    tiny_input(
        &w,
        &format!("{EVENTS_HEADER}9434765919,2020-01-01,38341003,,\n"),
    );
    std::fs::create_dir(w.join("out")).expect("out");
    let held = std::fs::File::open(w.join("out")).expect("open");
    held.lock().expect("lock");
    let out = extract(&w, "out", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another extract"));
    held.unlock().expect("unlock");
    let out = extract(&w, "out", &[]);
    assert!(out.status.success(), "{}", show(&out));
}

#[test]
fn defect_8_opt_out_lists_that_remove_nobody_are_refused() {
    let w = Workdir::new();
    tiny_input(
        &w,
        &format!("{EVENTS_HEADER}9434765919,2020-01-01,38341003,,\n"),
    );
    let policy = repo().join("policies/demo.toml");
    for (i, list) in ["", "nhs_number\n", "\n\n", "943476591X\n9434765870\n"]
        .iter()
        .enumerate()
    {
        w.write("in/opt_outs.txt", list);
        let out_dir = format!("out{i}");
        let out = w.extract_output(policy.to_str().expect("utf8"), "in", &out_dir, &[]);
        assert_eq!(out.status.code(), Some(1), "list {list:?}: {}", show(&out));
        assert!(!String::from_utf8_lossy(&out.stderr).contains("943476591"));
    }
}

#[test]
fn defect_9_fifo_and_device_keys_are_refused_without_hanging() {
    let w = Workdir::new();
    tiny_input(
        &w,
        &format!("{EVENTS_HEADER}9434765919,2020-01-01,38341003,,\n"),
    );
    let fifo = w.join("fifo.key");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .expect("mkfifo");
    std::fs::remove_file(w.join("project.key")).expect("rm");
    std::os::unix::fs::symlink(&fifo, w.join("project.key")).expect("link");
    let out = extract(&w, "out", &[]);
    assert_ne!(out.status.code(), Some(0), "{}", show(&out));
    std::fs::remove_file(w.join("project.key")).expect("rm");
    std::os::unix::fs::symlink("/dev/zero", w.join("project.key")).expect("link");
    let out = extract(&w, "out", &[]);
    assert_ne!(out.status.code(), Some(0), "{}", show(&out));
}

#[test]
fn defect_10_placeholder_numbers_and_early_dates_are_quarantined() {
    let w = Workdir::new();
    let events = format!(
        "{EVENTS_HEADER}9434765919,2020-01-01,38341003,,\n0000000000,2020-01-01,38341003,,\n9999999999,2020-01-01,38341003,,\n9434765870,0000-01-01,38341003,,\n9434765870,1799-12-31,38341003,,\n"
    );
    tiny_input(&w, &events);
    let out = extract(&w, "out", &[]);
    assert!(out.status.success(), "{}", show(&out));
    let m = manifest(&w.join("out"));
    let by = &m["tables"]["clinical_events"]["rejected_by_reason"];
    assert_eq!(by["nhs_number_placeholder"], 2, "{m}");
    assert_eq!(by["date_out_of_range"], 2, "{m}");
    assert_eq!(written(&m, "clinical_events"), 1);
}

#[test]
fn defect_3_quotes_and_line_endings_never_give_silent_wrong_data() {
    let w = Workdir::new();
    // A literal quote inside an unquoted field, then a quoted multi-line value.
    let events = format!(
        "{EVENTS_HEADER}9434765919,2020-01-01,38341003,,5'11\"\n9434765870,2020-01-01,38341003,,\"mm\nHg\"\n9434765870,2020-01-02,38341003,,\n"
    );
    tiny_input(&w, &events);
    let out = extract(&w, "out", &[]);
    assert!(out.status.success(), "{}", show(&out));
    let m = manifest(&w.join("out"));
    assert_eq!(m["tables"]["clinical_events"]["rows_read"], 3, "{m}");
    // An unterminated quote is refused with the line where it opened.
    let events = format!(
        "{EVENTS_HEADER}9434765919,2020-01-01,38341003,,\n9434765870,2020-01-01,38341003,,\"mm\n9434765870,2020-01-02,38341003,,\n"
    );
    w.write("in/clinical_events.csv", events);
    let out = extract(&w, "out2", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 3"),
        "{}",
        show(&out)
    );
    // CR-only line endings are refused, not read as zero rows.
    let events = EVENTS_HEADER.replace('\n', "\r") + "9434765919,2020-01-01,38341003,,\r";
    w.write("in/clinical_events.csv", events);
    let out = extract(&w, "out3", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("CR-only"),
        "{}",
        show(&out)
    );
}

#[test]
fn defect_4_hostile_parquet_is_a_clear_error_not_a_crash() {
    let w = Workdir::new();
    tiny_input(
        &w,
        &format!("{EVENTS_HEADER}9434765919,2020-01-01,38341003,,\n"),
    );
    std::fs::remove_file(w.join("in/clinical_events.csv")).expect("rm");
    let hostile =
        hex::decode("504152311502191c480161150000160019fcffffffff071300000050415231").expect("hex");
    w.write("in/clinical_events.parquet", hostile);
    let start = std::time::Instant::now();
    let out = extract(&w, "out", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("clinical_events.parquet"), "{err}");
    assert!(start.elapsed() < std::time::Duration::from_secs(30));
    assert!(!w.join("out/manifest.json").exists());
}

/// The quarantine file's rows as (line, reason, column note, first field).
fn quarantine_rows(path: &Path) -> Vec<(String, String, String, String)> {
    let mut r = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .expect("quarantine");
    r.records()
        .map(|rec| {
            let rec = rec.expect("row");
            let f = |i: usize| rec.get(i).unwrap_or("").to_string();
            (f(0), f(1), f(2), f(3))
        })
        .collect()
}

#[test]
fn defect_5_an_overlong_record_is_quarantined_cut_with_its_length() {
    let w = Workdir::new();
    let long_row = format!("9434765870,2020-01-01,38341003,,{}", ",".repeat(17 << 20));
    let events = format!(
        "{EVENTS_HEADER}9434765919,2020-01-01,38341003,,\n{long_row}\n9434765870,2020-01-02,38341003,,\n"
    );
    tiny_input(&w, &events);
    let out = extract(&w, "out", &[]);
    assert!(out.status.success(), "{}", show(&out));
    let m = manifest(&w.join("out"));
    let t = &m["tables"]["clinical_events"];
    assert_eq!(t["rows_read"], 3, "{m}");
    assert_eq!(t["rejected_by_reason"]["record_too_long"], 1, "{m}");
    assert_eq!(written(&m, "clinical_events"), 2);
    let q = w.join("out.quarantine/clinical_events.csv");
    assert!(
        std::fs::metadata(&q).expect("q").len() < 256 << 10,
        "the quarantine holds a cut-down record"
    );
    let rows = quarantine_rows(&q);
    assert_eq!(rows.len(), 1);
    let (line, reason, note, first) = &rows[0];
    assert_eq!((line.as_str(), reason.as_str()), ("3", "record_too_long"));
    assert!(
        note.contains(&(long_row.len() + 1).to_string()),
        "the original length is noted: {note}"
    );
    assert_eq!(first, "9434765870");
}

#[test]
fn defect_5_a_dissent_past_the_cut_of_an_overlong_record_still_counts() {
    for (what, size, extra) in [
        (
            "streamed past",
            5usize << 20,
            vec!["--max-record-bytes", "100000"],
        ),
        ("inside a chunk", 5000, vec!["--max-record-bytes", "1000"]),
    ] {
        let w = Workdir::new();
        let events = format!(
            "{EVENTS_HEADER}9434765919,2020-01-01,38341003,,\n9434765919,2020-01-01,38341003,,{} 827241000000103\n9434765870,2020-01-01,38341003,,\n",
            "u".repeat(size)
        );
        tiny_input(&w, &events);
        let out = extract(&w, "out", &extra);
        assert!(out.status.success(), "{what}: {}", show(&out));
        let m = manifest(&w.join("out"));
        assert_eq!(m["type1"]["dissenters"], 1, "{what}: {m}");
        assert_eq!(written(&m, "patients"), 1, "{what}: only Bob is left: {m}");
        assert_eq!(
            m["tables"]["clinical_events"]["rejected_by_reason"]["record_too_long"], 1,
            "{what}: {m}"
        );
        // The same record with no NHS number to attribute it to: refused.
        let events = events.replacen(
            "9434765919,2020-01-01,38341003,,u",
            "94347659XX,2020-01-01,38341003,,u",
            1,
        );
        w.write("in/clinical_events.csv", events);
        let out = extract(&w, "out2", &extra);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", show(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("line 3"),
            "{what}"
        );
    }
}

#[test]
fn defect_5_too_many_fields_are_quarantined() {
    let w = Workdir::new();
    let events = format!(
        "{EVENTS_HEADER}9434765919,2020-01-01,38341003,,\n9434765870,2020-01-01,38341003,,{}\n",
        ",x".repeat(50)
    );
    tiny_input(&w, &events);
    let out = extract(&w, "out", &["--max-fields", "20"]);
    assert!(out.status.success(), "{}", show(&out));
    let m = manifest(&w.join("out"));
    assert_eq!(
        m["tables"]["clinical_events"]["rejected_by_reason"]["too_many_fields"], 1,
        "{m}"
    );
    let rows = quarantine_rows(&w.join("out.quarantine/clinical_events.csv"));
    assert!(rows[0].2.contains("55 fields"), "{:?}", rows[0].2);
}

/// `count` valid, non-placeholder NHS numbers (Modulus 11 computed here).
fn canaries(count: usize) -> Vec<String> {
    (9_000_000_000u64..)
        .map(|n| n.to_string())
        .filter(|d| {
            let v: Vec<u32> = d.bytes().map(|b| u32::from(b - b'0')).collect();
            let sum: u32 = (0..9).map(|i| v[i] * (10 - i as u32)).sum();
            let check = (11 - sum % 11) % 11;
            check != 10 && check == v[9] && !v.iter().all(|&x| x == v[0])
        })
        .take(count)
        .collect()
}

/// Every form a canary may take: raw, spaced 3-3-4, hyphenated 3-3-4.
fn forms(c: &str) -> [String; 3] {
    let (a, b, d) = (&c[..3], &c[3..6], &c[6..]);
    [
        c.to_string(),
        format!("{a} {b} {d}"),
        format!("{a}-{b}-{d}"),
    ]
}

fn assert_no_canary(what: &str, text: &str, canaries: &[String]) {
    for c in canaries {
        for f in forms(c) {
            assert!(!text.contains(&f), "{what} holds a canary NHS number");
        }
    }
}

/// Everything a run may show: its stdout and stderr, and every file under `out` (manifest
/// text, Parquet string values).
fn visible(out: &std::process::Output, dir: &Path) -> String {
    let mut all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "parquet") {
            all.push_str(&crate::util::parquet_strings(&p).1.join("\n"));
        } else if p.is_file() {
            all.push_str(&String::from_utf8_lossy(&std::fs::read(&p).expect("read")));
        }
    }
    all
}

#[test]
fn canary_nhs_numbers_never_leave_the_quarantine() {
    let w = Workdir::new();
    let cs = canaries(1000);
    let mut patients = String::from(
        "nhs_number,name,date_of_birth,sex,ethnicity_code,postcode,lsoa,date_of_death\n9434765919,Ann,1980-05-01,F,A,LS1 4AP,E01011229,\n",
    );
    let mut events = format!("{EVENTS_HEADER}9434765919,2020-01-01,38341003,,\n");
    for (i, c) in cs.iter().enumerate() {
        let f = &forms(c)[i % 3];
        // A dropped column of a good row, and malformed rows of every kind.
        patients.push_str(&format!("9434765870,{f},1950-01-01,M,,M1 1AE,,\n"));
        events.push_str(&format!("{f},2020-01-01,38341003,,,extra\n"));
        events.push_str(&format!("9434765870,{f},38341003,,\n"));
        events.push_str(&format!("{f}X,2020-01-01,38341003,,\n"));
        // Columns the policy keeps as they are: alone, inside text, as a whole code.
        events.push_str(&format!("9434765870,2020-01-01,38341003,1,mmol {f}\n"));
        events.push_str(&format!("9434765870,2020-01-01,{c},1,mmHg\n"));
        patients.push_str(&format!("9434765870,Bob,1950-01-01,M,{f},M1 1AE,,\n"));
        patients.push_str(&format!("9434765870,Bob,1950-01-01,M,,M1 1AE,E{f},\n"));
    }
    tiny_input(&w, &events);
    w.write("in/patients.csv", &patients);
    let ok = extract(&w, "out", &[]);
    assert!(ok.status.success(), "{}", show(&ok));
    assert_no_canary("a successful run", &visible(&ok, &w.join("out")), &cs);
    let m = manifest(&w.join("out"));
    assert_eq!(
        m["tables"]["clinical_events"]["rejected_by_reason"]["nhs_number_in_value"], 2000,
        "kept text holding a number is quarantined: {m}"
    );
    assert_eq!(
        m["tables"]["patients"]["rejected_by_reason"]["nhs_number_in_value"], 2000,
        "{m}"
    );
    assert!(
        std::fs::read_to_string(w.join("out.quarantine/clinical_events.csv"))
            .expect("q")
            .contains(&cs[0]),
        "the quarantine is where the rows went"
    );
    // Failing runs: a data row as the header, a list with a typo, a list as the policy,
    // a key file holding numbers.
    let header_row = format!("{},2020-01-01,38341003,,\n", cs[1]);
    w.write(
        "in/clinical_events.csv",
        format!("{header_row}{header_row}"),
    );
    let bad = extract(&w, "out2", &[]);
    assert_eq!(bad.status.code(), Some(2));
    assert_no_canary("a refused header", &visible(&bad, &w.join("out2")), &cs);
    w.write("in/clinical_events.csv", &events);
    w.write("in/opt_outs.txt", format!("{}\n{}x\n", cs[2], cs[3]));
    let bad = extract(&w, "out3", &[]);
    assert_eq!(bad.status.code(), Some(1), "{}", show(&bad));
    assert_no_canary("a refused list", &visible(&bad, &w.join("out3")), &cs);
    let bad = w.tre(&[
        "extract",
        "--policy",
        "in/opt_outs.txt",
        "--input",
        "in",
        "--opt-outs",
        "in/opt_outs.txt",
        "--key-file",
        "project.key",
        "--out",
        "out4",
    ]);
    assert_ne!(bad.status.code(), Some(0));
    assert_no_canary(
        "a list given as the policy",
        &visible(&bad, &w.join("out4")),
        &cs,
    );
    w.write("bad.key", format!("{}{}\n", cs[4], cs[5]));
    chmod(&w.join("bad.key"), 0o600);
    let bad = w.tre(&[
        "extract",
        "--policy",
        "in/opt_outs.txt",
        "--input",
        "in",
        "--key-file",
        "bad.key",
        "--out",
        "out5",
    ]);
    assert_ne!(bad.status.code(), Some(0));
    assert_no_canary("a bad key file", &visible(&bad, &w.join("out5")), &cs);
    canaries_through_the_workspace(&w, &cs);
}

/// The same canaries through the research environment's operator commands: installing
/// the extract, purging with a list of canaries (and a refused list), the audit trail.
fn canaries_through_the_workspace(w: &Workdir, cs: &[String]) {
    let policy = repo().join("policies/demo.toml");
    let mut shown = String::new();
    let mut run = |args: &[&str], code: i32| {
        let out = w.tre(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "tre {args:?}: {}",
            show(&out)
        );
        shown.push_str(&String::from_utf8_lossy(&out.stdout));
        shown.push_str(&String::from_utf8_lossy(&out.stderr));
    };
    run(&["admin", "init", "--workspace", "ws"], 0);
    let p = policy.to_str().expect("utf8");
    run(&["admin", "project", "add", "--workspace", "ws", p], 0);
    run(
        &[
            "admin",
            "dataset",
            "add",
            "--workspace",
            "ws",
            "demo",
            "out",
        ],
        0,
    );
    let list: String = cs[10..20].iter().map(|c| format!("{c}\n")).collect();
    w.write("newer.txt", format!("nhs_number\n9434765870\n{list}"));
    let today = today();
    let purge = crate::util::purge_args(&today, "out.quarantine");
    run(&purge, 0);
    w.write("newer.txt", format!("{list}{}x\n", cs[21]));
    run(&purge, 1);
    run(&["audit", "show", "--workspace", "ws"], 0);
    run(&["audit", "verify", "--workspace", "ws"], 0);
    assert_no_canary("operator commands' output", &shown, cs);
    let audit = std::fs::read_to_string(w.join("ws/audit/audit.jsonl")).expect("audit log");
    assert!(audit.contains("purge"), "the purges are audited");
    assert_no_canary("the audit log", &audit, cs);
}

#[test]
fn fuzz_parquet_input_never_crashes_the_extract() {
    let w = Workdir::new();
    tiny_input(
        &w,
        &format!("{EVENTS_HEADER}9434765919,2020-01-01,38341003,,\n"),
    );
    // A valid Parquet clinical_events file, then byte flips of it.
    w.tre_ok(&[
        "generate",
        "--patients",
        "20",
        "--seed",
        "3",
        "--format",
        "parquet",
        "--out",
        "pq",
    ]);
    let valid = std::fs::read(w.join("pq/clinical_events.parquet")).expect("pq");
    std::fs::remove_file(w.join("in/clinical_events.csv")).expect("rm");
    let cases: usize = std::env::var("TRE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..cases {
        let mut bytes = valid.clone();
        for _ in 0..1 + i % 8 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let at = (seed as usize) % bytes.len();
            bytes[at] = (seed >> 32) as u8;
        }
        w.write("in/clinical_events.parquet", &bytes);
        let out = extract(&w, &format!("out{i}"), &[]);
        let code = out.status.code();
        assert!(
            matches!(code, Some(0..=2)),
            "case {i}: exit {code:?} (a crash): {}",
            show(&out)
        );
    }
}

fn write_events_parquet(path: &Path, dates: arrow::array::ArrayRef, values: Vec<f64>) {
    write_events_parquet_unit(path, dates, values, "mmHg");
}

fn write_events_parquet_unit(
    path: &Path,
    dates: arrow::array::ArrayRef,
    values: Vec<f64>,
    unit: &str,
) {
    use arrow::array::{ArrayRef, Float64Array, StringArray};
    use std::sync::Arc;
    let n = values.len();
    let s = |v: &str| -> ArrayRef { Arc::new(StringArray::from(vec![v; n])) };
    let batch = arrow::record_batch::RecordBatch::try_from_iter([
        ("nhs_number", s("9434765919")),
        ("event_date", dates),
        ("snomed_code", s("38341003")),
        (
            "numeric_value",
            Arc::new(Float64Array::from(values)) as ArrayRef,
        ),
        ("unit", s(unit)),
    ])
    .expect("batch");
    let f = std::fs::File::create(path).expect("create");
    let mut w = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), None).expect("writer");
    w.write(&batch).expect("write");
    w.close().expect("close");
}

#[test]
fn defect_10_parquet_follows_the_csv_row_rules() {
    use arrow::array::{ArrayRef, Int64Array, StringArray};
    use std::sync::Arc;
    let w = Workdir::new();
    tiny_input(
        &w,
        &format!("{EVENTS_HEADER}9434765919,2020-01-01,38341003,,\n"),
    );
    std::fs::remove_file(w.join("in/clinical_events.csv")).expect("rm");
    let dates: ArrayRef = Arc::new(StringArray::from(vec![
        "2020-01-01",
        "2020-01-02",
        "2020-13-45",
        "2020-01-03",
    ]));
    write_events_parquet(
        &w.join("in/clinical_events.parquet"),
        dates,
        vec![1.0, f64::NAN, 2.0, f64::INFINITY],
    );
    let out = extract(&w, "out", &[]);
    assert!(out.status.success(), "{}", show(&out));
    let m = manifest(&w.join("out"));
    let by = &m["tables"]["clinical_events"]["rejected_by_reason"];
    assert_eq!(by["unparsable_number"], 2, "{m}");
    assert_eq!(by["unparsable_date"], 1, "{m}");
    assert_eq!(written(&m, "clinical_events"), 1);
    // An integer column is never read as a date.
    let dates: ArrayRef = Arc::new(Int64Array::from(vec![18000]));
    write_events_parquet(&w.join("in/clinical_events.parquet"), dates, vec![1.0]);
    let out = extract(&w, "out2", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
}

#[test]
fn canary_in_a_kept_parquet_column_is_quarantined() {
    use arrow::array::{ArrayRef, StringArray};
    use std::sync::Arc;
    let w = Workdir::new();
    tiny_input(
        &w,
        &format!("{EVENTS_HEADER}9434765919,2020-01-01,38341003,,\n"),
    );
    std::fs::remove_file(w.join("in/clinical_events.csv")).expect("rm");
    let c = &canaries(1)[0];
    let dates: ArrayRef = Arc::new(StringArray::from(vec!["2020-01-01", "2020-01-02"]));
    write_events_parquet_unit(
        &w.join("in/clinical_events.parquet"),
        dates,
        vec![1.0, 2.0],
        &format!("ref {}", forms(c)[2]),
    );
    let out = extract(&w, "out", &[]);
    assert!(out.status.success(), "{}", show(&out));
    let m = manifest(&w.join("out"));
    let t = &m["tables"]["clinical_events"];
    assert_eq!(t["rejected_by_reason"]["nhs_number_in_value"], 2, "{m}");
    assert_eq!(written(&m, "clinical_events"), 0);
    assert_no_canary(
        "a Parquet extract",
        &visible(&out, &w.join("out")),
        std::slice::from_ref(c),
    );
}
