//! `tre generate`: determinism, one file per schema table with the schema's header, the
//! opt-out list, and the injected faults at their documented shares, counted here
//! independently of the generator (own Modulus 11 check, own CSV reading).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Output;

use super::util::{show, tre_in, tre_in_ok};

use tre_pipeline::generate::{GenerateConfig, GenerateFormat, GenerateSummary, RowOrder, generate};
use tre_pipeline::schema::SchemaSet;

fn tre(dir: &Path, args: &[&str]) -> Output {
    tre_in(dir, args, &[])
}

fn gen_cli(dir: &Path, out: &str, patients: &str, seed: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "generate",
        "--patients",
        patients,
        "--seed",
        seed,
        "--out",
        out,
    ];
    args.extend_from_slice(extra);
    tre_in_ok(dir, &args)
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap_or_else(|e| panic!("{e}")).path())
        .map(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let bytes =
                std::fs::read(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
            (name, bytes)
        })
        .collect()
}

fn mod11_valid(s: &str) -> bool {
    let d: Vec<u32> = s
        .chars()
        .filter(|c| *c != ' ' && *c != '-')
        .map(|c| c.to_digit(10).unwrap_or(99))
        .collect();
    if d.len() != 10 || d.iter().any(|&x| x > 9) {
        return false;
    }
    let sum: u32 = d[..9].iter().zip((2..=10).rev()).map(|(x, w)| x * w).sum();
    let check = match 11 - sum % 11 {
        11 => 0,
        10 => return false,
        c => c,
    };
    check == d[9]
}

#[test]
fn same_seed_same_bytes_and_another_seed_differs() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = tmp.path();
    gen_cli(dir, "a", "3000", "5", &[]);
    gen_cli(dir, "b", "3000", "5", &["--quiet"]);
    gen_cli(dir, "c", "3000", "6", &[]);
    let (a, b, c) = (
        files(&dir.join("a")),
        files(&dir.join("b")),
        files(&dir.join("c")),
    );
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, bytes) in &a {
        assert!(
            b[name] == *bytes,
            "{name} differs between two runs with the same seed"
        );
        assert!(c[name] != *bytes, "{name} is identical for seeds 5 and 6");
    }
}

#[test]
fn every_schema_table_and_the_opt_out_list_are_written() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let out = gen_cli(tmp.path(), "gp", "2000", "1", &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let got = files(&tmp.path().join("gp"));
    let schemas = SchemaSet::builtin();
    for t in schemas.tables() {
        let name = format!("{}.csv", t.name);
        let bytes = got
            .get(&name)
            .unwrap_or_else(|| panic!("{name} missing; have {:?}", got.keys()));
        let header = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
        let want: Vec<&str> = t.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            String::from_utf8_lossy(header),
            want.join(","),
            "{name} header"
        );
        assert!(
            bytes.iter().filter(|&&b| b == b'\n').count() > 2000 / 2,
            "{name} has rows"
        );
        assert!(
            stdout.contains(&format!("{}: ", t.name)),
            "summary line for {}:\n{stdout}",
            t.name
        );
    }
    let list = String::from_utf8_lossy(&got["opt_outs.txt"]).into_owned();
    let mut lines = list.lines();
    assert_eq!(lines.next(), Some("nhs_number"));
    let entries: Vec<&str> = lines.collect();
    assert_eq!(entries.len(), 100, "5% of 2000 patients");
    assert!(
        entries.iter().all(|n| mod11_valid(n)),
        "every opt-out entry is a valid NHS number"
    );
    assert!(
        entries.iter().all(|n| n.starts_with('9')),
        "synthetic numbers only"
    );
    assert!(
        !got.keys().any(|k| k.starts_with('.')),
        "no temporary files left: {:?}",
        got.keys()
    );
}

#[test]
fn non_empty_output_needs_overwrite() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    gen_cli(tmp.path(), "gp", "100", "1", &[]);
    let again = tre(
        tmp.path(),
        &["generate", "--patients", "100", "--out", "gp"],
    );
    assert_eq!(again.status.code(), Some(2), "{}", show(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("--overwrite"),
        "{}",
        show(&again)
    );
    // Switching format with --overwrite leaves no stale CSV next to the Parquet files.
    gen_cli(
        tmp.path(),
        "gp",
        "100",
        "1",
        &["--overwrite", "--format", "parquet"],
    );
    let got = files(&tmp.path().join("gp"));
    assert!(
        got.contains_key("patients.parquet") && !got.contains_key("patients.csv"),
        "{:?}",
        got.keys()
    );
    let bad = tre(
        tmp.path(),
        &[
            "generate",
            "--patients",
            "10",
            "--out",
            "x",
            "--opt-out-share",
            "1.5",
        ],
    );
    assert_eq!(bad.status.code(), Some(2), "{}", show(&bad));
}

/// Independent counts from one CSV file.
#[derive(Debug, Default)]
struct Counts {
    rows: u64,
    invalid_nhs: u64,
    missing_nhs: u64,
    wrong_field_count: u64,
    spaced: u64,
}

fn count_csv(path: &Path) -> (Counts, Vec<csv::ByteRecord>) {
    let mut r = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let width = r.byte_headers().map(|h| h.len()).unwrap_or(0);
    let mut c = Counts::default();
    let mut records = Vec::new();
    for rec in r.byte_records() {
        let rec = rec.unwrap_or_else(|e| panic!("{} is not RFC 4180 CSV: {e}", path.display()));
        c.rows += 1;
        if rec.len() != width {
            c.wrong_field_count += 1;
            continue;
        }
        let nhs = String::from_utf8_lossy(rec.get(0).unwrap_or_default()).into_owned();
        if nhs.is_empty() {
            c.missing_nhs += 1;
        } else if !mod11_valid(&nhs) {
            c.invalid_nhs += 1;
        } else if nhs.contains(' ') {
            c.spaced += 1;
        }
        records.push(rec);
    }
    (c, records)
}

fn lib_generate(dir: &Path, patients: u64, format: GenerateFormat) -> GenerateSummary {
    let cfg = GenerateConfig {
        patients,
        seed: 11,
        format,
        ..GenerateConfig::default()
    };
    generate(&SchemaSet::builtin(), &cfg, dir).unwrap_or_else(|e| panic!("generate failed: {e}"))
}

#[test]
fn faults_and_type1_codes_match_the_summary_and_shares() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir: PathBuf = tmp.path().join("gp");
    let patients = 20_000;
    let s = lib_generate(&dir, patients, GenerateFormat::Csv);
    assert_eq!(s.patients, patients);
    assert_eq!(s.opt_outs, 1000);
    for (name, t) in &s.tables {
        let (c, _) = count_csv(&dir.join(format!("{name}.csv")));
        assert_eq!(c.rows, t.rows, "{name}: rows");
        // Malformed rows with a wrong field count are counted apart; the others (bad date,
        // number or UTF-8) still have a valid NHS number here.
        assert_eq!(c.invalid_nhs, t.invalid_nhs, "{name}: invalid NHS numbers");
        assert_eq!(c.missing_nhs, t.missing_nhs, "{name}: missing NHS numbers");
        assert!(
            c.wrong_field_count <= t.malformed,
            "{name}: field-count faults are malformed rows"
        );
        let share = |n: u64| n as f64 / t.rows as f64;
        if t.rows >= 20_000 {
            assert!(
                (0.003..0.008).contains(&share(t.invalid_nhs)),
                "{name}: invalid share {}",
                share(t.invalid_nhs)
            );
            assert!(
                (0.0008..0.0035).contains(&share(t.missing_nhs)),
                "{name}: missing share {}",
                share(t.missing_nhs)
            );
            assert!(
                (0.0003..0.002).contains(&share(t.malformed)),
                "{name}: malformed share {}",
                share(t.malformed)
            );
            assert!(
                (0.08..0.12).contains(&share(c.spaced)),
                "{name}: spaced share {}",
                share(c.spaced)
            );
        }
    }
    let events = s.tables["clinical_events"].rows as f64 / patients as f64;
    assert!(
        (9.0..11.5).contains(&events),
        "about 10 events per patient, got {events}"
    );

    // Type 1: the latest code per patient, from the codelist the extract uses.
    let codelist = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/codelists/type1-opt-out.csv"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let kinds: HashMap<String, bool> = codelist
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Some((f.first()?.to_string(), *f.get(2)? == "dissent"))
        })
        .collect();
    let (_, recs) = count_csv(&dir.join("clinical_events.csv"));
    let mut latest: HashMap<String, (String, bool)> = HashMap::new();
    let mut legacy = 0;
    for r in &recs {
        let code = String::from_utf8_lossy(r.get(2).unwrap_or_default()).into_owned();
        let Some(&dissent) = kinds.get(&code) else {
            continue;
        };
        legacy += u64::from(!code.starts_with("827"));
        let nhs: String = String::from_utf8_lossy(r.get(0).unwrap_or_default())
            .chars()
            .filter(|c| c.is_ascii_digit())
            .collect();
        assert!(mod11_valid(&nhs), "Type 1 rows carry valid NHS numbers");
        let date = String::from_utf8_lossy(r.get(1).unwrap_or_default()).into_owned();
        let e = latest.entry(nhs).or_insert((date.clone(), dissent));
        if (date.clone(), dissent) > *e {
            *e = (date, dissent);
        }
    }
    let dissenters = latest.values().filter(|(_, d)| *d).count() as u64;
    assert_eq!(latest.len() as u64, s.type1_patients);
    assert_eq!(dissenters, s.type1_dissenters);
    assert!(
        s.type1_withdrawn > 0 && legacy > 0,
        "some withdrawals and some Read/CTV3 codes"
    );
    let share = s.type1_patients as f64 / patients as f64;
    assert!(
        (0.02..0.04).contains(&share),
        "about 3% of patients have Type 1 codes: {share}"
    );
    assert!(
        s.type1_dissenters_on_opt_out_list > 0
            && s.type1_dissenters_on_opt_out_list < s.type1_dissenters
    );
}

#[test]
fn parquet_has_the_same_rows_minus_malformed_ones() {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let csv = lib_generate(&tmp.path().join("csv"), 3000, GenerateFormat::Csv);
    let pq = lib_generate(&tmp.path().join("pq"), 3000, GenerateFormat::Parquet);
    assert_eq!(csv.opt_outs, pq.opt_outs);
    for (name, t) in &csv.tables {
        let p = &pq.tables[name];
        assert_eq!(p.rows, t.rows - t.malformed, "{name}");
        assert_eq!(p.malformed, 0);
        let file = std::fs::File::open(&p.files[0]).unwrap_or_else(|e| panic!("{e}"));
        let reader = SerializedFileReader::new(file).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            reader.metadata().file_metadata().num_rows() as u64,
            p.rows,
            "{name}"
        );
    }
    assert_eq!(
        std::fs::read(tmp.path().join("csv/opt_outs.txt")).ok(),
        std::fs::read(tmp.path().join("pq/opt_outs.txt")).ok()
    );
}

#[test]
fn no_faults_gives_input_the_extract_accepts_whole() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = tmp.path();
    gen_cli(dir, "gp", "500", "3", &["--no-faults"]);
    for name in SchemaSet::builtin().names() {
        let (c, _) = count_csv(&dir.join("gp").join(format!("{name}.csv")));
        assert!(c.rows > 0, "{name}: no rows");
        assert_eq!(
            (c.invalid_nhs, c.missing_nhs, c.wrong_field_count),
            (0, 0, 0),
            "{name}: faults injected despite --no-faults"
        );
    }
    tre_in_ok(dir, &["keygen", "--out", "key"]);
    let policy = super::util::repo().join("policies/demo.toml");
    let today = super::util::today();
    tre_in_ok(
        dir,
        &[
            "extract",
            "--policy",
            super::util::s(&policy),
            "--input",
            "gp",
            "--opt-outs",
            "gp/opt_outs.txt",
            "--opt-outs-as-of",
            &today,
            "--key-file",
            "key",
            "--out",
            "out",
        ],
    );
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("out/manifest.json")).unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let tables = manifest["tables"]
        .as_object()
        .unwrap_or_else(|| panic!("no tables in {manifest}"));
    assert!(!tables.is_empty());
    for (name, t) in tables {
        assert_eq!(t["rows_rejected"], 0, "{name}: {t}");
    }
}

fn lib_generate_order(dir: &Path, order: RowOrder, format: GenerateFormat) -> GenerateSummary {
    let cfg = GenerateConfig {
        patients: 3000,
        seed: 5,
        format,
        faults: false,
        order,
        ..GenerateConfig::default()
    };
    generate(&SchemaSet::builtin(), &cfg, dir).unwrap_or_else(|e| panic!("generate failed: {e}"))
}

fn csv_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .lines()
        .map(str::to_string)
        .collect()
}

/// How often consecutive data rows change patient (NHS number in column 0).
fn patient_changes(lines: &[String]) -> usize {
    let nhs: Vec<String> = lines[1..]
        .iter()
        .map(|l| l.split(',').next().unwrap_or("").replace([' ', '-'], ""))
        .collect();
    nhs.windows(2).filter(|w| w[0] != w[1]).count()
}

#[test]
fn event_order_has_the_same_rows_sorted_by_date_with_patients_interleaved() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (by_patient, by_event) = (tmp.path().join("p"), tmp.path().join("e"));
    let a = lib_generate_order(&by_patient, RowOrder::Patient, GenerateFormat::Csv);
    let b = lib_generate_order(&by_event, RowOrder::Event, GenerateFormat::Csv);
    assert_eq!(
        a.tables.values().map(|t| t.rows).collect::<Vec<_>>(),
        b.tables.values().map(|t| t.rows).collect::<Vec<_>>()
    );
    for same in ["patients.csv", "opt_outs.txt"] {
        assert_eq!(
            files(&by_patient)[same],
            files(&by_event)[same],
            "{same} depends on the order"
        );
    }
    let p = csv_lines(&by_patient.join("clinical_events.csv"));
    let e = csv_lines(&by_event.join("clinical_events.csv"));
    assert_eq!(p[0], e[0], "header");
    let date_col = e[0]
        .split(',')
        .position(|h| h == "event_date")
        .unwrap_or_else(|| panic!("no event_date in {}", e[0]));
    let dates: Vec<&str> = e[1..]
        .iter()
        .map(|l| l.split(',').nth(date_col).unwrap_or(""))
        .collect();
    assert!(
        dates.windows(2).all(|w| w[0] <= w[1]),
        "event order is not sorted by event_date"
    );
    let (mut ps, mut es) = (p[1..].to_vec(), e[1..].to_vec());
    ps.sort();
    es.sort();
    assert_eq!(ps, es, "event order must hold exactly the same rows");
    // Patient order changes patient about once per patient; event order almost every row.
    assert!(patient_changes(&p) < 3100, "{}", patient_changes(&p));
    assert!(
        patient_changes(&e) > e.len() * 9 / 10,
        "{} of {}",
        patient_changes(&e),
        e.len()
    );
}

#[test]
fn event_order_is_deterministic_in_both_formats() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for format in [GenerateFormat::Csv, GenerateFormat::Parquet] {
        let (x, y) = (
            tmp.path().join(format!("{format:?}-x")),
            tmp.path().join(format!("{format:?}-y")),
        );
        lib_generate_order(&x, RowOrder::Event, format);
        lib_generate_order(&y, RowOrder::Event, format);
        assert_eq!(files(&x), files(&y), "{format:?}");
    }
    let pq = tmp.path().join("Parquet-x/clinical_events.parquet");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(&pq).unwrap_or_else(|e| panic!("{e}")),
    )
    .and_then(|b| b.build())
    .unwrap_or_else(|e| panic!("{e}"));
    let mut dates = Vec::new();
    for batch in reader {
        let batch = batch.unwrap_or_else(|e| panic!("{e}"));
        let col = batch
            .column_by_name("event_date")
            .unwrap_or_else(|| panic!("no event_date"));
        let col = col
            .as_any()
            .downcast_ref::<arrow::array::Date32Array>()
            .unwrap_or_else(|| panic!("event_date is not a date"));
        dates.extend(col.iter().flatten());
    }
    assert!(dates.len() > 20_000, "{}", dates.len());
    assert!(
        dates.windows(2).all(|w| w[0] <= w[1]),
        "Parquet rows are not in date order"
    );
}

#[test]
fn cli_order_event_feeds_an_extract_that_is_the_same_for_any_threads() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = tmp.path();
    gen_cli(dir, "gp", "3000", "2", &["--no-faults", "--order", "event"]);
    tre_in_ok(dir, &["keygen", "--out", "key"]);
    let policy = super::util::repo().join("policies/bench.toml");
    let today = super::util::today();
    let mut outputs = Vec::new();
    for threads in ["1", "2", "3"] {
        let out = format!("out{threads}");
        tre_in_ok(
            dir,
            &[
                "extract",
                "--policy",
                super::util::s(&policy),
                "--input",
                "gp",
                "--opt-outs",
                "gp/opt_outs.txt",
                "--opt-outs-as-of",
                &today,
                "--key-file",
                "key",
                "--out",
                &out,
                "--threads",
                threads,
            ],
        );
        outputs.push(
            std::fs::read(dir.join(&out).join("clinical_events.parquet"))
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    assert!(
        outputs.windows(2).all(|w| w[0] == w[1]),
        "output bytes depend on --threads"
    );
}
