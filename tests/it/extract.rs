//! End-to-end tests of `tre extract` (and `tre keygen`) through the real binary.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::util::{
    TEST_KEY_FINGERPRINT, TEST_KEY_HEX, Workdir, chmod, parquet_column, parquet_strings, repo,
    today,
};

const TABLES: [&str; 5] = [
    "appointments",
    "clinical_events",
    "medications",
    "patients",
    "registrations",
];

/// An HMAC computed without the crate's pseudonym module.
fn independent_pseudonym(nhs10: &str) -> String {
    let key: Vec<u8> = hex::decode(crate::util::TEST_KEY_HEX).expect("hex");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("key");
    mac.update(nhs10.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Normalise and Modulus-11 check, written independently of the crate.
fn valid_nhs(raw: &str) -> Option<String> {
    let d: String = raw.chars().filter(|c| *c != ' ' && *c != '-').collect();
    if d.len() != 10 || !d.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let v: Vec<u32> = d.bytes().map(|b| u32::from(b - b'0')).collect();
    let sum: u32 = (0..9).map(|i| v[i] * (10 - i as u32)).sum();
    let check = (11 - sum % 11) % 11;
    (check != 10 && check == v[9]).then_some(d)
}

/// The opted-out patients, worked out from the raw inputs.
fn opted_out(input: &Path) -> HashSet<String> {
    let mut out: HashSet<String> = std::fs::read_to_string(input.join("opt_outs.txt"))
        .expect("list")
        .lines()
        .filter_map(valid_nhs)
        .collect();
    let codes: HashMap<String, bool> =
        csv::Reader::from_path(repo().join("policies/codelists/type1-opt-out.csv"))
            .expect("codelist")
            .records()
            .map(|r| {
                let r = r.expect("row");
                (r[0].to_string(), &r[2] == "dissent")
            })
            .collect();
    let mut latest: HashMap<String, (String, bool)> = HashMap::new();
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(input.join("clinical_events.csv"))
        .expect("events");
    for r in rdr.byte_records() {
        let r = r.expect("row");
        if r.len() != 5 {
            continue;
        }
        let code = String::from_utf8_lossy(&r[2]).to_string();
        let Some(&dissent) = codes.get(&code) else {
            continue;
        };
        let Some(n) = valid_nhs(&String::from_utf8_lossy(&r[0])) else {
            continue;
        };
        let date = String::from_utf8_lossy(&r[1]).to_string();
        let e = latest.entry(n).or_insert((date.clone(), dissent));
        if date > e.0 || (date == e.0 && dissent) {
            *e = (date, dissent);
        }
    }
    out.extend(latest.into_iter().filter(|(_, (_, d))| *d).map(|(n, _)| n));
    out
}

fn all_input_numbers(input: &Path) -> HashSet<String> {
    let mut out = HashSet::new();
    for t in TABLES {
        let mut rdr = csv::ReaderBuilder::new()
            .flexible(true)
            .from_path(input.join(format!("{t}.csv")))
            .expect("csv");
        for r in rdr.byte_records().flatten() {
            if let Some(n) = valid_nhs(&String::from_utf8_lossy(&r[0])) {
                out.insert(n);
            }
        }
    }
    out
}

fn manifest(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("manifest.json")).expect("manifest"))
        .expect("json")
}

fn generate(w: &Workdir, patients: &str) -> std::path::PathBuf {
    w.tre_ok(&[
        "generate",
        "--patients",
        patients,
        "--seed",
        "11",
        "--out",
        "in",
    ]);
    w.join("in")
}

fn run_extract(w: &Workdir, out: &str, extra: &[&str]) -> std::process::Output {
    let policy = repo().join("policies/demo.toml");
    w.extract_output(policy.to_str().expect("utf8 path"), "in", out, extra)
}

#[test]
fn extract_removes_opted_out_patients_and_accounts_for_every_row() {
    let w = Workdir::new();
    let input = generate(&w, "3000");
    w.test_key();
    let out = run_extract(&w, "out", &[]);
    assert!(out.status.success(), "{}", crate::util::show(&out));
    let m = manifest(&w.join("out"));
    assert_eq!(m["key_fingerprint"], TEST_KEY_FINGERPRINT);
    assert_eq!(m["project"], "demo");

    let opted = opted_out(&input);
    assert!(opted.len() > 100, "the generator makes opt-outs");
    let opted_pseudonyms: HashSet<String> =
        opted.iter().map(|n| independent_pseudonym(n)).collect();
    let valid_pseudonyms: HashSet<String> = all_input_numbers(&input)
        .iter()
        .map(|n| independent_pseudonym(n))
        .collect();
    let raw_numbers = all_input_numbers(&input);

    for t in TABLES {
        let e = &m["tables"][t];
        let n = |k: &str| e[k].as_u64().unwrap_or_else(|| panic!("{t}.{k}"));
        assert_eq!(
            n("rows_read"),
            n("rows_rejected")
                + n("rows_removed_ndoo")
                + n("rows_removed_type1")
                + n("rows_filtered")
                + n("rows_written"),
            "{t}: manifest equation"
        );
        assert!(
            n("rows_removed_ndoo") > 0 && n("rows_removed_type1") > 0 && n("rows_rejected") > 0,
            "{t}: {e}"
        );
        let path = w.join("out").join(format!("{t}.parquet"));
        let pseudonyms = parquet_column(&path, "patient_pseudonym");
        assert_eq!(pseudonyms.len() as u64, n("rows_written"), "{t}");
        for p in &pseudonyms {
            assert!(
                !opted_pseudonyms.contains(p),
                "{t}: an opted-out patient is in the output"
            );
            assert!(
                valid_pseudonyms.contains(p),
                "{t}: pseudonym does not match an independent HMAC"
            );
        }
        let (_, strings) = parquet_strings(&path);
        for s in strings {
            let digits: String = s.chars().filter(|c| *c != ' ').collect();
            assert!(
                !raw_numbers.contains(&digits),
                "{t}: a raw NHS number is in the output"
            );
        }
    }
    // Neither the key nor a raw NHS number appears in any byte of the output folder.
    for entry in std::fs::read_dir(w.join("out")).expect("out") {
        let bytes = std::fs::read(entry.expect("entry").path()).expect("read");
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(TEST_KEY_HEX));
        for n in raw_numbers.iter().take(500) {
            assert!(!text.contains(n.as_str()));
        }
    }
    // Every manifest file entry verifies.
    for f in m["files"].as_array().expect("files") {
        let bytes =
            std::fs::read(w.join("out").join(f["path"].as_str().expect("path"))).expect("file");
        assert_eq!(bytes.len() as u64, f["size"].as_u64().expect("size"));
        assert_eq!(
            tre_pipeline::digest::sha256_hex(&bytes),
            f["sha256"].as_str().expect("sha")
        );
    }
    // The quarantine is a private sibling, with line numbers and reasons.
    use std::os::unix::fs::PermissionsExt;
    let q = w.join("out.quarantine/patients.csv");
    assert_eq!(
        std::fs::metadata(&q)
            .expect("quarantine")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let qtext = std::fs::read_to_string(&q)
        .unwrap_or_else(|_| String::from_utf8_lossy(&std::fs::read(&q).expect("q")).into_owned());
    assert!(qtext.starts_with("line,reason,column,nhs_number"));

    // A re-run, with one thread, gives byte-identical Parquet.
    let again = run_extract(&w, "out2", &["--threads", "1"]);
    assert!(again.status.success(), "{}", crate::util::show(&again));
    for t in TABLES {
        let a = std::fs::read(w.join(&format!("out/{t}.parquet"))).expect("a");
        let b = std::fs::read(w.join(&format!("out2/{t}.parquet"))).expect("b");
        assert!(a == b, "{t}: re-run differs");
    }
}

#[test]
fn parquet_input_gives_the_same_accounting_rules() {
    let w = Workdir::new();
    w.tre_ok(&[
        "generate",
        "--patients",
        "800",
        "--seed",
        "3",
        "--out",
        "in",
        "--format",
        "parquet",
    ]);
    w.test_key();
    let out = run_extract(&w, "out", &[]);
    assert!(out.status.success(), "{}", crate::util::show(&out));
    let m = manifest(&w.join("out"));
    for t in TABLES {
        let e = &m["tables"][t];
        assert!(e["rows_written"].as_u64().expect("n") > 0, "{t}");
        let n = |k: &str| e[k].as_u64().expect("n");
        assert_eq!(
            n("rows_read"),
            n("rows_rejected")
                + n("rows_removed_ndoo")
                + n("rows_removed_type1")
                + n("rows_filtered")
                + n("rows_written")
        );
    }
}

/// A minimal valid input folder: every table with a header and a few good rows.
fn tiny_input(w: &Workdir) {
    w.write("in/patients.csv", "nhs_number,name,date_of_birth,sex,ethnicity_code,postcode,lsoa,date_of_death\n943 476 5919,\"O'Brien, Mary\",1980-05-01,F,A,LS1 4AP,E01011229,\n9434765870,Bob,1950-01-01,M,,M1 1AE,,2024-02-03\n");
    w.write(
        "in/registrations.csv",
        "nhs_number,practice_code,start_date,end_date\n9434765919,B82005,2001-01-01,\n",
    );
    w.write(
        "in/clinical_events.csv",
        "nhs_number,event_date,snomed_code,numeric_value,unit\n9434765919,2020-01-01,38341003,,\n",
    );
    w.write(
        "in/medications.csv",
        "nhs_number,issue_date,dmd_code,quantity\n9434765919,2020-01-01,325278007,56\n",
    );
    w.write("in/appointments.csv", "nhs_number,practice_code,booked_date,appointment_date,status,mode\n9434765919,B82005,2020-01-01,2020-01-02,attended,telephone\n");
    // One patient who is not in the data: a list that names nobody is refused.
    w.write("in/opt_outs.txt", "nhs_number\n4010232137\n");
}

fn tiny_extract(w: &Workdir, extra: &[&str]) -> std::process::Output {
    run_extract(w, "out", extra)
}

fn assert_nothing_written(w: &Workdir) {
    assert!(
        !w.join("out/manifest.json").exists(),
        "no manifest after a refusal"
    );
    let files: Vec<_> = std::fs::read_dir(w.join("out"))
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(
        files.is_empty(),
        "nothing written after a refusal: {files:?}"
    );
}

#[test]
fn tiny_input_runs_and_keeps_names_out() {
    let w = Workdir::new();
    tiny_input(&w);
    w.test_key();
    let out = tiny_extract(&w, &[]);
    assert!(out.status.success(), "{}", crate::util::show(&out));
    let (rows, strings) = parquet_strings(&w.join("out/patients.parquet"));
    assert_eq!(rows, 2);
    assert!(
        strings.contains(
            &"31345669ac40fdcd7aea9102bad6688bea8230d70aebb255794c58c7a4e7a858".to_string()
        )
    );
    assert!(
        strings.contains(&"LS1".to_string()),
        "postcode district kept"
    );
    assert!(
        !strings
            .iter()
            .any(|s| s.contains("Brien") || s.contains("4AP")),
        "names and full postcodes never leave"
    );
}

#[test]
fn file_level_faults_name_the_file_and_write_nothing() {
    let cases: [(&str, &str, &str); 4] = [
        (
            "unknown column",
            "nhs_number,name,date_of_birth,sex,ethnicity_code,postcode,lsoa,date_of_death,shoe_size\n",
            "unknown column \"shoe_size\"",
        ),
        (
            "missing column",
            "nhs_number,name,date_of_birth,sex,ethnicity_code,postcode,lsoa\n",
            "missing column(s) date_of_death",
        ),
        ("empty file", "", "is empty"),
        (
            "duplicate column",
            "nhs_number,nhs_number,name,date_of_birth,sex,ethnicity_code,postcode,lsoa,date_of_death\n",
            "appears twice",
        ),
    ];
    for (what, content, expect) in cases {
        let w = Workdir::new();
        tiny_input(&w);
        w.test_key();
        w.write("in/patients.csv", content);
        let out = tiny_extract(&w, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {err}");
        assert!(
            err.contains("patients.csv") && err.contains(expect),
            "{what}: {err}"
        );
        assert_nothing_written(&w);
    }
    // Unreadable: a folder where the file should be.
    let w = Workdir::new();
    tiny_input(&w);
    w.test_key();
    std::fs::remove_file(w.join("in/medications.csv")).expect("rm");
    std::fs::create_dir(w.join("in/medications.csv")).expect("mkdir");
    let out = tiny_extract(&w, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", crate::util::show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("medications.csv"));
    assert_nothing_written(&w);
    // Missing input table.
    std::fs::remove_dir(w.join("in/medications.csv")).expect("rm");
    let err = String::from_utf8_lossy(&tiny_extract(&w, &[]).stderr).into_owned();
    assert!(err.contains("no input for table medications"), "{err}");
}

#[test]
fn bad_rows_go_to_quarantine_with_line_and_reason() {
    let w = Workdir::new();
    tiny_input(&w);
    w.test_key();
    let mut events = b"nhs_number,event_date,snomed_code,numeric_value,unit\n\
9434765919,2020-01-01,38341003,,\n\
9434765919,2020-02-30,38341003,,\n\
9434765919,2020-01-01,38341003\n\
9434765918,2020-01-01,38341003,,\n\
943476591,2020-01-01,38341003,,\n\
,2020-01-01,38341003,,\n\
9434765919,,38341003,,\n\
9434765919,2020-01-01,271649006,high,mmHg\r\n\
9434765919,2020-01-01,\"a\nb\",1,\"mm\"\n"
        .to_vec();
    events.extend_from_slice(b"9434765919,2020-01-01,27164\xff9006,1,mmHg\n");
    w.write("in/clinical_events.csv", events);
    let out = tiny_extract(&w, &[]);
    assert!(out.status.success(), "{}", crate::util::show(&out));
    let q = std::fs::read(w.join("out.quarantine/clinical_events.csv")).expect("quarantine");
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(q.as_slice());
    let got: Vec<(String, String)> = rdr
        .byte_records()
        .map(|r| {
            let r = r.expect("row");
            (
                String::from_utf8_lossy(&r[0]).into(),
                String::from_utf8_lossy(&r[1]).into(),
            )
        })
        .collect();
    let want = [
        ("3", "unparsable_date"),
        ("4", "wrong_column_count"),
        ("5", "nhs_number_check_digit"),
        ("6", "nhs_number_format"),
        ("7", "nhs_number_missing"),
        ("8", "missing_value"),
        ("9", "unparsable_number"),
        ("12", "invalid_utf8"), // the quoted newline makes the record before it span lines 10-11
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(got, want);
    let m = manifest(&w.join("out"));
    let e = &m["tables"]["clinical_events"];
    assert_eq!(e["rows_read"], 10);
    assert_eq!(e["rows_rejected"], 8);
    assert_eq!(e["rows_written"], 2);
    // No patient value in what the tool printed.
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!printed.contains("943476591"));
}

/// The quarantine file's (line, reason, column) triples.
fn quarantined(w: &Workdir, table: &str) -> Vec<(String, String, String)> {
    let q = std::fs::read(w.join(&format!("out.quarantine/{table}.csv"))).expect("quarantine");
    csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(q.as_slice())
        .byte_records()
        .map(|r| {
            let r = r.expect("row");
            let f = |i: usize| String::from_utf8_lossy(&r[i]).into_owned();
            (f(0), f(1), f(2))
        })
        .collect()
}

fn triples(v: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    v.iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect()
}

#[test]
fn defect_1_nhs_numbers_in_kept_numeric_columns_are_quarantined() {
    let w = Workdir::new();
    tiny_input(&w);
    w.test_key();
    // 4945807302 passes Modulus 11; 4945807301 does not; 494580730 is nine digits.
    w.write(
        "in/clinical_events.csv",
        "nhs_number,event_date,snomed_code,numeric_value,unit\n\
9434765919,2020-01-01,38341003,4945807302,\n\
9434765919,2020-01-01,38341003,4945807302.0,mmHg\n\
9434765919,2020-01-01,38341003,-4945807302,mmHg\n\
9434765919,2020-01-01,38341003,4945807301,mmHg\n\
9434765919,2020-01-01,38341003,494580730,mmHg\n\
9434765919,2020-01-01,38341003,120.5,mmHg\n",
    );
    w.write(
        "in/medications.csv",
        "nhs_number,issue_date,dmd_code,quantity\n9434765919,2020-01-01,325278007,56\n9434765919,2020-01-01,325278007,9434765919\n",
    );
    let out = tiny_extract(&w, &[]);
    assert!(out.status.success(), "{}", crate::util::show(&out));
    assert_eq!(
        quarantined(&w, "clinical_events"),
        triples(&[
            ("2", "nhs_number_in_value", "numeric_value"),
            ("3", "nhs_number_in_value", "numeric_value"),
            ("4", "nhs_number_in_value", "numeric_value"),
        ])
    );
    assert_eq!(
        quarantined(&w, "medications"),
        triples(&[("3", "nhs_number_in_value", "quantity")])
    );
    let m = manifest(&w.join("out"));
    let e = &m["tables"]["clinical_events"];
    assert_eq!(e["rejected_by_reason"]["nhs_number_in_value"], 3);
    assert_eq!(
        (e["rows_read"].as_u64(), e["rows_written"].as_u64()),
        (Some(6), Some(3))
    );
    assert_eq!(
        m["tables"]["medications"]["rejected_by_reason"]["nhs_number_in_value"],
        1
    );
    let values = parquet_column(&w.join("out/clinical_events.parquet"), "numeric_value");
    assert!(
        !values.iter().any(|v| v.contains("4945807302")),
        "the number never leaves: {values:?}"
    );
    assert!(
        values.iter().any(|v| v.contains("4945807301")),
        "{values:?}"
    );
    let quantities = parquet_column(&w.join("out/medications.parquet"), "quantity");
    assert!(!quantities.iter().any(|v| v.contains("9434765919")));
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!printed.contains("4945807302"));
}

#[test]
fn defect_2_parquet_dates_and_timestamps_get_the_csv_date_range_check() {
    use arrow::array::{ArrayRef, Date64Array, Float64Array, StringArray, TimestampSecondArray};
    use std::sync::Arc;
    let w = Workdir::new();
    tiny_input(&w);
    w.test_key();
    std::fs::remove_file(w.join("in/clinical_events.csv")).expect("rm");
    let day = 86_400i64;
    // Seconds since 1970 of: 2020-01-01; 1799-12-31 12:00 (before 1800, though its
    // truncated day is 1800-01-01); 1800-01-01; 9999-12-31; year 12000; year 300000
    // (past what a date can hold).
    let event_dates = vec![
        Some(18_262 * day),
        Some(-62_092 * day + day / 2),
        Some(-62_091 * day),
        Some(2_932_896 * day),
        Some(3_155_695_200 * 100),
        Some(9_400_000_000_000),
        None,
    ];
    let n = event_dates.len();
    let text = |v: &str| -> ArrayRef { Arc::new(StringArray::from(vec![v; n])) };
    let batch = arrow::record_batch::RecordBatch::try_from_iter(vec![
        ("nhs_number", text("9434765919")),
        (
            "event_date",
            Arc::new(TimestampSecondArray::from(event_dates)) as ArrayRef,
        ),
        ("snomed_code", text("38341003")),
        (
            "numeric_value",
            Arc::new(Float64Array::from(vec![1.0; n])) as ArrayRef,
        ),
        ("unit", text("mmHg")),
    ])
    .expect("batch");
    let write = |batch: &arrow::record_batch::RecordBatch| {
        let f = std::fs::File::create(w.join("in/clinical_events.parquet")).expect("create");
        let mut pw = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), None).expect("writer");
        pw.write(batch).expect("write");
        pw.close().expect("close");
    };
    write(&batch);
    let out = tiny_extract(&w, &[]);
    assert!(out.status.success(), "{}", crate::util::show(&out));
    assert_eq!(
        quarantined(&w, "clinical_events"),
        triples(&[
            ("2", "date_out_of_range", "event_date"),
            ("5", "date_out_of_range", "event_date"),
            ("6", "date_out_of_range", "event_date"),
            ("7", "missing_value", "event_date"),
        ])
    );
    let m = manifest(&w.join("out"));
    let e = &m["tables"]["clinical_events"];
    assert_eq!(e["rejected_by_reason"]["date_out_of_range"], 3);
    assert_eq!(
        (e["rows_read"].as_u64(), e["rows_written"].as_u64()),
        (Some(7), Some(3))
    );

    // The same for a Date64 column (milliseconds), floored to its day.
    let ms = 1_000 * day;
    let batch = arrow::record_batch::RecordBatch::try_from_iter(vec![
        ("nhs_number", text("9434765919")),
        (
            "event_date",
            Arc::new(Date64Array::from(vec![
                Some(18_262 * ms),
                Some(-62_092 * ms + ms / 2),
                Some(-62_091 * ms),
                Some(2_932_896 * ms),
                Some(2_932_897 * ms),
                Some(i64::MAX),
                Some(18_262 * ms),
            ])) as ArrayRef,
        ),
        ("snomed_code", text("38341003")),
        (
            "numeric_value",
            Arc::new(Float64Array::from(vec![1.0; n])) as ArrayRef,
        ),
        ("unit", text("mmHg")),
    ])
    .expect("batch");
    write(&batch);
    let out = tiny_extract(&w, &["--overwrite"]);
    assert!(out.status.success(), "{}", crate::util::show(&out));
    assert_eq!(
        quarantined(&w, "clinical_events"),
        triples(&[
            ("2", "date_out_of_range", "event_date"),
            ("5", "date_out_of_range", "event_date"),
            ("6", "date_out_of_range", "event_date"),
        ])
    );
}

#[test]
fn defect_3_a_lone_cr_quarantines_its_row_and_keeps_the_line_numbers() {
    let w = Workdir::new();
    tiny_input(&w);
    w.test_key();
    w.write(
        "in/clinical_events.csv",
        "nhs_number,event_date,snomed_code,numeric_value,unit\r\n\
9434765919,2020-01-01,38341003,1,mm\rHg\r\n\
9434765919,2020-01-02,38341003,2,mmHg\r\n\
9434765919,2020-01-03,38341003,3,\"mm\rHg\"\r\n\
9434765919,2020-02-30,38341003,4,mmHg\r\n",
    );
    let out = tiny_extract(&w, &[]);
    assert!(out.status.success(), "{}", crate::util::show(&out));
    assert_eq!(
        quarantined(&w, "clinical_events"),
        triples(&[
            ("2", "bare_carriage_return", "unit"),
            ("5", "unparsable_date", "event_date"),
        ])
    );
    let m = manifest(&w.join("out"));
    let e = &m["tables"]["clinical_events"];
    assert_eq!(
        (e["rows_read"].as_u64(), e["rows_written"].as_u64()),
        (Some(4), Some(2))
    );
    assert_eq!(e["rejected_by_reason"]["bare_carriage_return"], 1);
}

#[test]
fn opt_out_list_rules_fail_closed() {
    let w = Workdir::new();
    tiny_input(&w);
    w.test_key();
    let policy = repo().join("policies/demo.toml");
    let policy = policy.to_str().expect("utf8");
    let base = [
        "extract",
        "--policy",
        policy,
        "--input",
        "in",
        "--key-file",
        "project.key",
        "--out",
        "out",
    ];
    // No list at all.
    let err = w.tre_code(&base, 1);
    assert!(
        err.contains("National Data Opt-out list is required"),
        "{err}"
    );
    assert_nothing_written(&w);
    // Stale list.
    let mut args = base.to_vec();
    args.extend([
        "--opt-outs",
        "in/opt_outs.txt",
        "--opt-outs-as-of",
        "2020-01-01",
    ]);
    let err = w.tre_code(&args, 1);
    assert!(
        err.contains("stale") && err.contains("at most 30 days"),
        "{err}"
    );
    assert_nothing_written(&w);
    // An invalid entry names its line, never the value.
    w.write("in/opt_outs.txt", "nhs_number\n9434765919\n1234567890\n");
    let today = today();
    let mut args = base.to_vec();
    args.extend(["--opt-outs", "in/opt_outs.txt", "--opt-outs-as-of", &today]);
    let err = w.tre_code(&args, 1);
    assert!(
        err.contains("line 3") && !err.contains("1234567890"),
        "{err}"
    );
    assert_nothing_written(&w);
    // Missing file.
    let mut args = base.to_vec();
    args.extend(["--opt-outs", "in/nope.txt"]);
    let err = w.tre_code(&args, 2);
    assert!(err.contains("nope.txt"), "{err}");
    // The list works: the patient on it is removed from every table.
    w.write("in/opt_outs.txt", "nhs_number\n943 476 5919\n");
    let mut args = base.to_vec();
    args.extend(["--opt-outs", "in/opt_outs.txt", "--opt-outs-as-of", &today]);
    w.tre_ok(&args);
    let m = manifest(&w.join("out"));
    assert_eq!(m["tables"]["clinical_events"]["rows_removed_ndoo"], 1);
    assert_eq!(m["tables"]["patients"]["rows_written"], 1);
    assert_eq!(m["opt_outs"]["entries"], 1);
}

#[test]
fn exemption_keeps_opted_out_rows_and_is_recorded() {
    let w = Workdir::new();
    tiny_input(&w);
    w.test_key();
    let text = std::fs::read_to_string(repo().join("policies/demo.toml")).expect("policy").replace(
        "max_age_days = 30",
        "max_age_days = 30\nnational_data_opt_out_exemption = { basis = \"s251\", reference = \"CAG 21/CAG/0001\" }",
    );
    w.write("exempt.toml", text);
    w.write("in/opt_outs.txt", "9434765919\n");
    w.extract("exempt.toml", "in", "out", &[]);
    let m = manifest(&w.join("out"));
    assert_eq!(m["opt_outs"]["exemption"]["basis"], "s251");
    assert_eq!(m["opt_outs"]["exemption"]["reference"], "CAG 21/CAG/0001");
    assert_eq!(m["tables"]["clinical_events"]["rows_removed_ndoo"], 0);
    assert_eq!(
        m["tables"]["clinical_events"]["rows_kept_under_exemption"],
        1
    );
}

#[test]
fn type1_latest_code_decides() {
    let w = Workdir::new();
    tiny_input(&w);
    w.test_key();
    // 9434765919: dissent then withdrawal (kept); 9434765870: withdrawal then dissent (removed).
    w.write("in/clinical_events.csv", "nhs_number,event_date,snomed_code,numeric_value,unit\n\
9434765919,2019-01-01,827241000000103,,\n9434765919,2020-01-01,827261000000102,,\n9434765919,2021-01-01,38341003,,\n\
9434765870,2019-01-01,827261000000102,,\n9434765870,2020-01-01,XaZ89,,\n9434765870,2021-01-01,38341003,,\n");
    let out = tiny_extract(&w, &[]);
    assert!(out.status.success(), "{}", crate::util::show(&out));
    let m = manifest(&w.join("out"));
    assert_eq!(m["type1"]["dissenters"], 1);
    assert_eq!(m["tables"]["clinical_events"]["rows_removed_type1"], 3);
    assert_eq!(m["tables"]["patients"]["rows_removed_type1"], 1);
    let kept = parquet_column(&w.join("out/patients.parquet"), "patient_pseudonym");
    assert_eq!(kept, [independent_pseudonym("9434765919")]);
}

#[test]
fn key_file_rules() {
    let w = Workdir::new();
    tiny_input(&w);
    let secretish = "0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0";
    let cases: [(&str, String, u32, &str); 7] = [
        (
            "world-readable",
            format!("{secretish}\n"),
            0o644,
            "readable by group or others",
        ),
        ("short", "00010203\n".to_string(), 0o600, "malformed"),
        (
            "not hex",
            format!("{}zz\n", &secretish[..62]),
            0o600,
            "not a hex digit",
        ),
        ("weak", format!("{}\n", "ab".repeat(32)), 0o600, "weak key"),
        (
            "a repeated block",
            format!("{}\n", "0123456789abcdef".repeat(4)),
            0o600,
            "repeat every 16",
        ),
        (
            "an ascending run",
            format!(
                "{}\n",
                (0x40u8..0x60)
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            ),
            0o600,
            "step by one constant",
        ),
        (
            "the published test vector",
            format!(
                "{}\n",
                (0u8..32).map(|b| format!("{b:02x}")).collect::<String>()
            ),
            0o600,
            "published test-vector key",
        ),
    ];
    for (what, content, mode, expect) in cases {
        let p = w.write("project.key", &content);
        chmod(&p, mode);
        let out = tiny_extract(&w, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert!(err.contains(expect), "{what}: {err}");
        assert!(
            !err.contains(&secretish[..16])
                && !err.contains("abababab")
                && !err.contains("01234567")
                && !err.contains("40414243"),
            "{what}: key material in the error"
        );
        assert_nothing_written(&w);
    }
    // keygen: mode 0600, 64 hex, never overwrites.
    let out = w.tre_ok(&["keygen", "--out", "new.key"]);
    let text = std::fs::read_to_string(w.join("new.key")).expect("key");
    assert_eq!(text.trim_end().len(), 64);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(text.trim_end()),
        "keygen prints only the fingerprint"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(w.join("new.key"))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    w.tre_code(&["keygen", "--out", "new.key"], 1);
}

#[test]
fn policy_faults_name_the_line() {
    let w = Workdir::new();
    tiny_input(&w);
    w.test_key();
    let demo = std::fs::read_to_string(repo().join("policies/demo.toml")).expect("policy");
    let cases = [
        (
            "unknown key",
            demo.replace(
                "[tables.patients.columns]",
                "colour = \"red\"\n[tables.patients.columns]",
            ),
            "colour",
        ),
        (
            "keep a direct identifier",
            demo.replace("postcode = \"postcode_district\"", "postcode = \"keep\""),
            "never be kept raw",
        ),
        (
            "unknown column",
            demo.replace("sex = \"keep\"", "gender = \"keep\""),
            "unknown column \"gender\"",
        ),
    ];
    for (what, text, expect) in cases {
        w.write("bad.toml", &text);
        let today = today();
        let err = w.tre_code(
            &[
                "extract",
                "--policy",
                "bad.toml",
                "--input",
                "in",
                "--opt-outs",
                "in/opt_outs.txt",
                "--opt-outs-as-of",
                &today,
                "--key-file",
                "project.key",
                "--out",
                "out",
            ],
            1,
        );
        assert!(
            err.contains("bad.toml") && err.contains("line ") && err.contains(expect),
            "{what}: {err}"
        );
        assert_nothing_written(&w);
    }
}

/// `--overwrite` replaces an earlier extract, never a folder no extract wrote (issue 12,
/// defect 2: it used to empty any folder).
#[test]
fn existing_output_needs_overwrite() {
    let w = Workdir::new();
    tiny_input(&w);
    w.test_key();
    w.write("out/old.txt", "x");
    let out = tiny_extract(&w, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", crate::util::show(&out));
    let out = tiny_extract(&w, &["--overwrite"]);
    assert_eq!(out.status.code(), Some(2), "{}", crate::util::show(&out));
    assert!(w.join("out/old.txt").exists());
    std::fs::remove_file(w.join("out/old.txt")).expect("rm");
    let out = tiny_extract(&w, &[]);
    assert!(out.status.success(), "{}", crate::util::show(&out));
    let out = tiny_extract(&w, &["--overwrite"]);
    assert!(out.status.success(), "{}", crate::util::show(&out));
    assert!(w.join("out/manifest.json").exists());
}

#[test]
fn killed_run_leaves_no_manifest_and_no_partial_parquet() {
    let w = Workdir::new();
    w.generate(60000, 5, "in");
    w.test_key();
    let policy = repo().join("policies/demo.toml");
    let today = today();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tre"))
        .args([
            "extract",
            "--policy",
            policy.to_str().expect("utf8"),
            "--input",
            "in",
            "--opt-outs",
            "in/opt_outs.txt",
            "--opt-outs-as-of",
            &today,
            "--key-file",
            "project.key",
            "--out",
            "out",
            "--threads",
            "1",
        ])
        .current_dir(w.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    // Kill as soon as the first output file appears (mid-write), or after 20 s.
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(20) {
        let any = std::fs::read_dir(w.join("out"))
            .map(|d| d.count() > 0)
            .unwrap_or(false);
        if any {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().expect("kill");
    let status = child.wait().expect("wait");
    assert!(!status.success(), "the run was killed before it finished");
    assert!(!w.join("out/manifest.json").exists());
    let mut finals = BTreeMap::new();
    for e in std::fs::read_dir(w.join("out")).expect("out").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue; // a temporary name: never trusted
        }
        // Anything under a final name is a complete Parquet file.
        let f = std::fs::File::open(e.path()).expect("open");
        let ok = parquet::file::reader::SerializedFileReader::new(f).is_ok();
        finals.insert(name, ok);
    }
    assert!(
        finals.values().all(|ok| *ok),
        "partial file under a final name: {finals:?}"
    );
}

/// `tre extract` with the service's allow-list instead of `--opt-outs`.
fn allow_extract(w: &Workdir, list: &str, extra: &[&str]) -> std::process::Output {
    let policy = repo().join("policies/demo.toml");
    let mut args = vec![
        "extract",
        "--policy",
        policy.to_str().expect("utf8 path"),
        "--input",
        "in",
        "--ndoo-allow-list",
        list,
        "--key-file",
        "project.key",
        "--out",
        "out",
        "-q",
    ];
    args.extend_from_slice(extra);
    w.tre(&args)
}

#[test]
fn allow_list_removes_every_patient_missing_from_it() {
    let w = Workdir::new();
    let input = generate(&w, "300");
    w.test_key();
    let mut numbers: Vec<String> = all_input_numbers(&input).into_iter().collect();
    numbers.sort();
    let removed: Vec<String> = numbers.drain(..2).collect();
    let list: String = numbers.iter().map(|n| format!("{n},\n")).collect();
    w.write("reply.dat", &list);
    let today = today();
    let out = allow_extract(&w, "reply.dat", &["--opt-outs-as-of", &today]);
    assert!(out.status.success(), "{}", crate::util::show(&out));
    let m = manifest(&w.join("out"));
    let o = &m["opt_outs"];
    assert_eq!(o["kind"], "allow");
    assert_eq!(o["file"], "reply.dat");
    assert_eq!(o["as_of"], today.as_str());
    assert_eq!(o["entries"], numbers.len() as u64);
    let sha = hex::encode(<Sha256 as sha2::Digest>::digest(list.as_bytes()));
    assert_eq!(o["sha256"], sha.as_str());
    let gone: HashSet<String> = removed.iter().map(|n| independent_pseudonym(n)).collect();
    let mut ndoo = 0;
    for t in TABLES {
        let r = &m["tables"][t];
        let n = |k: &str| r[k].as_u64().expect(k);
        assert_eq!(
            n("rows_read"),
            n("rows_rejected")
                + n("rows_removed_ndoo")
                + n("rows_removed_type1")
                + n("rows_filtered")
                + n("rows_written"),
            "{t}: manifest equation"
        );
        ndoo += n("rows_removed_ndoo");
        let kept = parquet_column(&w.join(&format!("out/{t}.parquet")), "patient_pseudonym");
        assert!(
            kept.iter().all(|p| !gone.contains(p)),
            "{t}: a patient missing from the allow-list was written"
        );
    }
    assert!(ndoo >= 1, "the two patients' rows are counted as ndoo");
}

#[test]
fn deny_list_manifest_records_kind_and_file() {
    let w = Workdir::new();
    tiny_input(&w);
    w.test_key();
    w.write("in/opt_outs.txt", "nhs_number\n943 476 5919\n");
    let out = tiny_extract(&w, &[]);
    assert!(out.status.success(), "{}", crate::util::show(&out));
    let m = manifest(&w.join("out"));
    assert_eq!(m["opt_outs"]["kind"], "deny");
    assert_eq!(m["opt_outs"]["file"], "opt_outs.txt");
    assert_eq!(m["opt_outs"]["entries"], 1);
}

#[test]
fn malformed_allow_lists_are_refused_and_nothing_is_written() {
    let w = Workdir::new();
    tiny_input(&w);
    w.test_key();
    let today = today();
    let cases: [(&str, &str, &[&str]); 8] = [
        ("empty", "", &["no entries"]),
        ("header only", "NHS_NUMBER,\n", &["line 1", "header"]),
        (
            "invalid numbers reply",
            "Invalid NHS Numbers\n1234567890,\n",
            &["line 1", "invalid NHS numbers"],
        ),
        ("crlf", "9434765919,\r\n", &["line 1, column 12", "CR LF"]),
        (
            "missing comma",
            "9434765919,\n9434765870\n",
            &["line 2, column 11", "comma"],
        ),
        (
            "modulus 11",
            "9434765919,\n9434765918,\n",
            &["line 2", "Modulus 11"],
        ),
        ("spaces", "943 476 5919,\n", &["line 1, column 4", "space"]),
        ("blank line", "9434765919,\n\n", &["line 2", "blank"]),
    ];
    for (name, text, wants) in cases {
        w.write("reply.dat", text);
        let out = allow_extract(&w, "reply.dat", &["--opt-outs-as-of", &today]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{name}: {}",
            crate::util::show(&out)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("reply.dat"), "{name}: {err}");
        for want in wants {
            assert!(err.contains(want), "{name}: wants {want:?}: {err}");
        }
        assert!(
            !err.contains("9434765918") && !err.contains("1234567890"),
            "{err}"
        );
        assert_nothing_written(&w);
    }
    // Stale, by the policy's max_age_days as for the deny-list.
    w.write("reply.dat", "9434765919,\n");
    let out = allow_extract(&w, "reply.dat", &["--opt-outs-as-of", "2020-01-01"]);
    assert_eq!(out.status.code(), Some(1), "{}", crate::util::show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("stale"));
    assert_nothing_written(&w);
    // Both forms at once is bad usage.
    let out = allow_extract(&w, "reply.dat", &["--opt-outs", "in/opt_outs.txt"]);
    assert_eq!(out.status.code(), Some(2), "{}", crate::util::show(&out));
    assert_nothing_written(&w);
}
