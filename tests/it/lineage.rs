//! Lineage of query results from DataFusion's optimized plan: each trick from issue 11 as
//! a named test (refused, or classified so the checker treats it right), the differencing
//! ledger, and purge by lineage.

use std::sync::Arc;

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use tre_pipeline::lineage::ledger::{Ledger, LedgerCell, LedgerEntry, Published};
use tre_pipeline::lineage::rules::FindingKind;
use tre_pipeline::lineage::{
    OutputColumn, PopulationLineage, ResultLineage, Role, SourceCatalog, SourceClass,
    ValueTransform, blocking_findings, classify, population,
};
use tre_pipeline::policy::Policy;
use tre_pipeline::schema::SchemaSet;

use crate::util::repo;

fn demo_policy() -> Policy {
    Policy::load(&repo().join("policies/demo.toml"), &SchemaSet::builtin()).expect("demo policy")
}

/// A session with the demo extract's tables (empty, with the extract's output schemas).
fn session(policy: &Policy) -> SessionContext {
    let ctx = SessionContext::new();
    for t in &policy.tables {
        let schema = tre_pipeline::transform::output_schema(t);
        let table = MemTable::try_new(schema, vec![vec![]]).expect("memtable");
        ctx.register_table(t.name(), Arc::new(table))
            .expect("register");
    }
    ctx
}

fn plan(sql: &str) -> (LogicalPlan, SourceCatalog) {
    let policy = demo_policy();
    let ctx = session(&policy);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let plan = rt.block_on(async {
        ctx.sql(sql)
            .await
            .expect("plans")
            .into_optimized_plan()
            .expect("optimizes")
    });
    (plan, SourceCatalog::from_policy(&policy))
}

fn cols(sql: &str) -> Vec<OutputColumn> {
    let (p, c) = plan(sql);
    classify(&p, &c).expect("classifies")
}

fn role<'a>(cols: &'a [OutputColumn], name: &str) -> &'a Role {
    &cols
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no column {name} in {cols:?}"))
        .role
}

fn kinds(cols: &[OutputColumn], allow_min_max: bool) -> Vec<FindingKind> {
    blocking_findings(cols, allow_min_max)
        .iter()
        .map(|f| f.kind)
        .collect()
}

#[test]
fn count_distinct_named_patients_beside_constant_n_is_checked_as_the_count() {
    let c = cols(
        "SELECT sex, COUNT(DISTINCT patient_pseudonym) AS patients, 10 AS n FROM patients GROUP BY sex",
    );
    assert_eq!(role(&c, "sex"), &Role::GroupKey);
    assert_eq!(role(&c, "patients"), &Role::Count { distinct: true });
    assert_eq!(
        role(&c, "n"),
        &Role::Constant,
        "a constant is never a count"
    );
    assert!(kinds(&c, false).is_empty());
}

#[test]
fn record_packed_into_one_text_column_with_constant_n_is_refused() {
    let c = cols(
        "SELECT concat(patient_pseudonym, '|', sex, '|', age_band, '|', lsoa) AS record, 10 AS n FROM patients",
    );
    let k = kinds(&c, false);
    assert!(k.contains(&FindingKind::RowLevel), "{k:?}");
    assert!(
        k.contains(&FindingKind::IdentifierInStringFunction),
        "{k:?}"
    );
    assert!(k.contains(&FindingKind::NoAggregate), "{k:?}");
    // Without the pseudonym, still row-level.
    let c = cols("SELECT sex || '|' || age_band || '|' || lsoa AS record, 10 AS n FROM patients");
    assert_eq!(
        kinds(&c, false),
        vec![FindingKind::RowLevel, FindingKind::NoAggregate]
    );
}

#[test]
fn pseudonym_prefix_of_63_characters_is_refused() {
    let c = cols(
        "SELECT substr(patient_pseudonym, 1, 63) AS who, COUNT(*) AS n FROM clinical_events GROUP BY substr(patient_pseudonym, 1, 63)",
    );
    let k = kinds(&c, false);
    assert!(k.contains(&FindingKind::IdentifierGroupKey), "{k:?}");
    assert!(
        k.contains(&FindingKind::IdentifierInStringFunction),
        "{k:?}"
    );
    let who = c.iter().find(|c| c.name == "who").expect("who");
    assert!(who.derives_from(SourceClass::Pseudonym));
    assert_eq!(
        who.transform,
        Some(ValueTransform::Substr {
            arg: Box::new(ValueTransform::Source),
            start: 1,
            len: Some(63)
        })
    );
}

#[test]
fn prefixed_pseudonym_p_dash_is_refused_and_its_transform_recorded() {
    let c = cols(
        "SELECT 'p-' || patient_pseudonym AS id, snomed_code FROM clinical_events WHERE snomed_code IS NOT NULL",
    );
    let k = kinds(&c, false);
    assert!(k.contains(&FindingKind::RowLevel), "{k:?}");
    assert!(
        k.contains(&FindingKind::IdentifierInStringFunction),
        "{k:?}"
    );
    let id = c.iter().find(|c| c.name == "id").expect("id");
    assert_eq!(
        id.transform.as_ref().map(|t| t.apply("abc")),
        Some("p-abc".to_string())
    );
    let c = cols("SELECT upper(patient_pseudonym) AS pid FROM patients");
    assert_eq!(
        c[0].transform.as_ref().map(|t| t.apply("ab")),
        Some("AB".to_string())
    );
}

#[test]
fn min_max_event_date_per_code_is_refused_unless_allowed() {
    let c = cols(
        "SELECT snomed_code, MIN(event_date) AS first_seen, MAX(event_date) AS last_seen, COUNT(*) AS n FROM clinical_events GROUP BY snomed_code",
    );
    assert!(matches!(role(&c, "first_seen"), Role::MinMax { function } if function == "min"));
    assert_eq!(
        kinds(&c, false),
        vec![FindingKind::OrderStatistic, FindingKind::OrderStatistic]
    );
    assert!(kinds(&c, true).is_empty());
    // MAX of the pseudonym is refused even where min/max is allowed.
    let c =
        cols("SELECT sex, MAX(patient_pseudonym) AS p, COUNT(*) AS n FROM patients GROUP BY sex");
    assert_eq!(kinds(&c, true), vec![FindingKind::IdentifierValue]);
}

#[test]
fn pct_and_mean_beside_counts_are_derived_from_the_counts() {
    let c = cols(
        "SELECT sex, COUNT(*) AS n, 100.0 * COUNT(*) / (SELECT COUNT(*) FROM patients) AS pct FROM patients GROUP BY sex",
    );
    let Role::Ratio {
        numerator,
        denominator,
    } = role(&c, "pct")
    else {
        panic!("pct is not a ratio: {c:?}");
    };
    assert_eq!(*numerator.role, Role::Count { distinct: false });
    assert_eq!(numerator.column.as_deref(), Some("n"));
    assert_eq!(*denominator.role, Role::Count { distinct: false });
    assert!(kinds(&c, false).is_empty());

    let c = cols(
        "SELECT snomed_code, COUNT(numeric_value) AS n, SUM(numeric_value) AS total, AVG(numeric_value) AS mean_value, SUM(numeric_value) / COUNT(numeric_value) AS mean2 FROM clinical_events GROUP BY snomed_code",
    );
    for m in ["mean_value", "mean2"] {
        let Role::Mean {
            numerator,
            denominator,
        } = role(&c, m)
        else {
            panic!("{m} is not a mean: {c:?}");
        };
        assert_eq!(*numerator.role, Role::Magnitude, "{m}");
        assert_eq!(*denominator.role, Role::Count { distinct: false }, "{m}");
        assert_eq!(denominator.column.as_deref(), Some("n"), "{m}");
        assert_eq!(numerator.column.as_deref(), Some("total"), "{m}");
    }

    // A share of the total through a window over the counts.
    let c = cols(
        "SELECT sex, COUNT(*) AS n, 100.0 * COUNT(*) / SUM(COUNT(*)) OVER () AS share FROM patients GROUP BY sex",
    );
    assert!(matches!(role(&c, "share"), Role::Ratio { .. }), "{c:?}");
    assert!(kinds(&c, false).is_empty());
}

#[test]
fn cast_count_to_double_is_still_a_count() {
    let c = cols("SELECT sex, CAST(COUNT(*) AS DOUBLE) AS n FROM patients GROUP BY sex");
    assert_eq!(role(&c, "n"), &Role::Count { distinct: false });
}

#[test]
fn negated_counts_are_still_counts() {
    let c = cols(
        "SELECT sex, -COUNT(*) AS a, 0 - COUNT(*) AS b, COUNT(*) * -1 AS c FROM patients GROUP BY sex",
    );
    for n in ["a", "b", "c"] {
        assert_eq!(role(&c, n), &Role::Count { distinct: false }, "{n}");
    }
}

#[test]
fn column_names_do_not_matter() {
    let c = cols(
        "SELECT dmd_code, COUNT(*) AS registrations_total, COUNT(DISTINCT patient_pseudonym) AS generated_sum, SUM(quantity) AS ratio_count FROM medications GROUP BY dmd_code",
    );
    assert_eq!(
        role(&c, "registrations_total"),
        &Role::Count { distinct: false }
    );
    assert_eq!(role(&c, "generated_sum"), &Role::Count { distinct: true });
    assert_eq!(role(&c, "ratio_count"), &Role::Magnitude);
}

#[test]
fn sums_of_counts_are_counts() {
    let c = cols(
        "SELECT sex, SUM(n) AS total FROM (SELECT sex, lsoa, COUNT(*) AS n FROM patients GROUP BY sex, lsoa) t GROUP BY sex",
    );
    assert_eq!(role(&c, "total"), &Role::Count { distinct: false });
}

#[test]
fn counts_hidden_in_text_or_tests_are_unclassified() {
    let c = cols(
        "SELECT sex, 'n=' || CAST(COUNT(*) AS VARCHAR) AS label, COUNT(*) > 5 AS big FROM patients GROUP BY sex",
    );
    assert_eq!(role(&c, "label"), &Role::Unclassified);
    assert_eq!(role(&c, "big"), &Role::Unclassified);
    let k = kinds(&c, false);
    assert_eq!(
        k.iter()
            .filter(|k| **k == FindingKind::Unclassified)
            .count(),
        2,
        "{k:?}"
    );
}

#[test]
fn string_agg_packs_rows_and_is_refused() {
    let c = cols(
        "SELECT sex, string_agg(patient_pseudonym, ',') AS everyone, COUNT(*) AS n FROM patients GROUP BY sex",
    );
    let k = kinds(&c, false);
    assert!(k.contains(&FindingKind::RowLevel), "{k:?}");
}

#[test]
fn plain_row_level_select_of_a_renamed_pseudonym_is_refused() {
    let c = cols("SELECT patient_pseudonym AS pid, snomed_code FROM clinical_events");
    assert_eq!(role(&c, "pid"), &Role::RowLevel);
    assert_eq!(c[0].transform, Some(ValueTransform::Source));
    let k = kinds(&c, false);
    assert!(k.contains(&FindingKind::NoAggregate), "{k:?}");
    // Grouping by the pseudonym is one group per patient.
    let c = cols(
        "SELECT patient_pseudonym, COUNT(*) AS n FROM clinical_events GROUP BY patient_pseudonym",
    );
    assert_eq!(kinds(&c, false), vec![FindingKind::IdentifierGroupKey]);
    // DISTINCT over quasi-identifiers alone is not an aggregate.
    let c = cols("SELECT DISTINCT lsoa FROM patients");
    assert_eq!(kinds(&c, false), vec![FindingKind::NoAggregate]);
}

fn pop(sql: &str) -> PopulationLineage {
    let (p, c) = plan(sql);
    population(&p, &c).expect("population")
}

#[test]
fn population_lineage_ignores_aliases_and_separates_filters() {
    let a = pop("SELECT sex, COUNT(*) AS n FROM patients GROUP BY sex");
    let b = pop(
        "SELECT p.sex, COUNT(*) AS n FROM patients p WHERE p.lsoa <> 'E01001927' GROUP BY p.sex",
    );
    let b2 = pop("SELECT sex, COUNT(*) AS n FROM patients WHERE lsoa <> 'E01001927' GROUP BY sex");
    assert_eq!(a.tables, vec!["patients".to_string()]);
    assert_eq!(a.group_keys, vec!["patients.sex".to_string()]);
    assert_eq!(a.shape_sha256, b.shape_sha256);
    assert_ne!(a.sha256, b.sha256);
    assert_eq!(b.sha256, b2.sha256, "{b:?} {b2:?}");
    assert_eq!(b.filters.len(), 1, "{b:?}");
    assert!(a.filters.is_empty(), "{a:?}");
    let other = pop("SELECT lsoa, COUNT(*) AS n FROM patients GROUP BY lsoa");
    assert_ne!(other.shape_sha256, a.shape_sha256);
}

fn cells(rows: &[(&str, f64)]) -> Vec<LedgerCell> {
    rows.iter()
        .map(|(k, v)| LedgerCell {
            key: vec![k.to_string()],
            column: "n".into(),
            count: true,
            published: Published::Value {
                value: (v / 5.0).round() * 5.0,
            },
            true_value: Some(*v),
        })
        .collect()
}

fn entry(release: &str, population: PopulationLineage, cells: Vec<LedgerCell>) -> LedgerEntry {
    LedgerEntry {
        format: 1,
        project: "demo".into(),
        release: release.into(),
        job: Some(format!("job-{release}")),
        exported_at: "2026-11-30T12:00:00Z".into(),
        population,
        dims: vec![],
        cells,
        audit_head: None,
    }
}

#[test]
fn ledger_entries_are_recorded_once_under_valid_ids_and_kept_private() {
    let dir = tempfile::tempdir().expect("tmp");
    let ledger = Ledger::open(&dir.path().join("ledger"));
    let all = pop("SELECT sex, COUNT(*) AS n FROM patients GROUP BY sex");
    let other = pop("SELECT lsoa, COUNT(*) AS n FROM patients GROUP BY lsoa");
    ledger
        .record(&entry(
            "r1",
            all.clone(),
            cells(&[("F", 939.0), ("M", 906.0)]),
        ))
        .expect("record r1");
    ledger
        .record(&entry("r2", other, cells(&[("E01", 40.0)])))
        .expect("record r2");
    // A release is recorded once, under a valid id.
    assert!(
        ledger
            .record(&entry("r1", all.clone(), Vec::new()))
            .is_err()
    );
    assert!(
        ledger
            .record(&entry("../x", all.clone(), Vec::new()))
            .is_err()
    );

    // The ledger files are private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("ledger/r1.json"))
        .expect("file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0);
}

// ---------------------------------------------------------------------------------------
// Purge by lineage.

use crate::util::{DEMO, Workdir, demo_policy_path, http, parquet_column, s, sign_in, today};
use tre_pipeline::tre::purge::{PurgeMark, ResultAction, purge_mark};

/// A workspace with the demo project's extract of `patients` synthetic patients, with one
/// row of `victim_line`'s patient (and one of another patient) pushed into quarantine.
fn purge_setup(w: &Workdir) -> (String, String) {
    w.generate(300, 1, "in");
    w.test_key();
    w.admin_init();
    w.admin_project(s(&demo_policy_path()));
    // Two clinical events with a broken date: they go to quarantine with their raw rows.
    let path = w.join("in/clinical_events.csv");
    let mut rdr = csv::Reader::from_path(&path).expect("events");
    let header = rdr.headers().expect("header").clone();
    let date = header
        .iter()
        .position(|h| h == "event_date")
        .expect("event_date");
    let nhs = header
        .iter()
        .position(|h| h == "nhs_number")
        .expect("nhs_number");
    let records: Vec<csv::StringRecord> = rdr.records().map(|r| r.expect("row")).collect();
    let broken = |r: &csv::StringRecord| {
        let mut f: Vec<String> = r.iter().map(str::to_string).collect();
        f[date] = "not-a-date".into();
        f
    };
    let mut wtr = csv::WriterBuilder::new().from_writer(
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("append"),
    );
    // The bytes of crate::util::TEST_KEY_HEX.
    let key: Vec<u8> = hex::decode(crate::util::TEST_KEY_HEX).expect("hex");
    let pseudo = |n: &str| -> String {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("key");
        mac.update(n.as_bytes());
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let digits = |s: &str| s.chars().filter(char::is_ascii_digit).collect::<String>();
    let victim = digits(&records[0][nhs]);
    let other = records
        .iter()
        .find(|r| digits(&r[nhs]) != victim)
        .expect("another patient");
    wtr.write_record(broken(&records[0])).expect("write");
    wtr.write_record(broken(other)).expect("write");
    wtr.flush().expect("flush");
    drop(wtr);
    w.extract(
        "ws/projects/demo/policy.toml",
        "in",
        "ext",
        &["--quarantine", "ext.quarantine"],
    );
    w.admin_dataset(DEMO, "ext");
    let p = pseudo(&victim);
    let events = parquet_column(
        &w.join("ws/projects/demo/data/clinical_events.parquet"),
        "patient_pseudonym",
    );
    assert!(events.contains(&p), "the victim is in the extract");
    (victim, p)
}

/// Run `sql` over the project's datasets and store it as job `job` with its lineage,
/// through the job runner's one lineage call (`lineage::for_job`).
fn store_result(w: &Workdir, job: &str, sql: &str) -> (ResultLineage, Vec<RecordBatch>) {
    let policy = demo_policy();
    let dir = w.join(&format!("ws/projects/demo/results/{job}"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let ctx = SessionContext::new();
        for t in &policy.tables {
            let p = w.join(&format!("ws/projects/demo/data/{}.parquet", t.name()));
            ctx.register_parquet(t.name(), p.to_str().expect("utf8"), Default::default())
                .await
                .expect("register");
        }
        let df = ctx.sql(sql).await.expect("sql");
        let lineage = tre_pipeline::lineage::for_job(&df, &policy, false, &dir).expect("lineage");
        let batches = df.collect().await.expect("run");
        let schema = batches[0].schema();
        let mut sink =
            tre_pipeline::output::ParquetSink::create(&dir.join("result.parquet"), schema)
                .expect("sink");
        for b in &batches {
            sink.write(b).expect("write");
        }
        sink.finish().expect("finish");
        (lineage, batches)
    })
}

/// Run [`crate::util::purge_args`], insisting on exit 0.
fn purge_newer(w: &Workdir) -> std::process::Output {
    w.tre_ok(&crate::util::purge_args(&today(), "ext.quarantine"))
}

fn rows(path: &std::path::Path) -> usize {
    crate::util::parquet_strings(path).0
}

#[test]
fn purge_follows_lineage_through_renamed_transformed_and_concatenated_pseudonyms() {
    let w = Workdir::new();
    let (victim, p) = purge_setup(&w);
    let jobs = [
        (
            "aliased",
            "SELECT patient_pseudonym AS pid, snomed_code FROM clinical_events",
        ),
        (
            "upper",
            "SELECT upper(patient_pseudonym) AS who, snomed_code FROM clinical_events",
        ),
        (
            "concat",
            "SELECT 'p-' || patient_pseudonym || '-x' AS tag, snomed_code FROM clinical_events",
        ),
        (
            "perpatient",
            "SELECT patient_pseudonym AS p, COUNT(*) AS n FROM clinical_events GROUP BY patient_pseudonym",
        ),
        (
            "hashed",
            "SELECT reverse(patient_pseudonym) AS h, snomed_code FROM clinical_events",
        ),
        (
            "agesex",
            "SELECT sex, age_band, COUNT(*) AS n FROM patients GROUP BY sex, age_band",
        ),
    ];
    for (job, sql) in jobs {
        store_result(&w, job, sql);
    }
    let res = |job: &str| w.join(&format!("ws/projects/demo/results/{job}/result.parquet"));
    let before: Vec<usize> = jobs.iter().map(|(j, _)| rows(&res(j))).collect();
    let hashed_before = std::fs::read(res("hashed")).expect("hashed");
    assert!(parquet_column(&res("upper"), "who").contains(&p.to_uppercase()));

    // Earlier releases in the ledger: one over the patients table, one over no table the
    // victim was in.
    let ledger = Ledger::open(&w.join("ws/projects/demo/ledger"));
    let agesex = pop("SELECT sex, age_band, COUNT(*) AS n FROM patients GROUP BY sex, age_band");
    ledger
        .record(&entry("r1", agesex, cells(&[("F", 150.0)])))
        .expect("r1");
    let elsewhere = PopulationLineage::new(vec!["elsewhere".into()], vec![], vec![], vec![]);
    ledger
        .record(&entry("r0", elsewhere, Vec::new()))
        .expect("r0");

    w.write("newer.txt", format!("nhs_number\n{victim}\n"));
    let out = purge_newer(&w);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ws = tre_pipeline::tre::workspace::Workspace::open(&w.join("ws")).expect("workspace");
    assert!(
        !stdout.contains(&victim) && !stdout.contains(&p) && !stderr.contains(&victim),
        "no patient value is printed"
    );
    // Renamed, upper-cased and concatenated pseudonyms: the victim's rows are gone, the
    // others stay.
    for (i, (job, col, value)) in [
        ("aliased", "pid", p.clone()),
        ("upper", "who", p.to_uppercase()),
        ("concat", "tag", format!("p-{p}-x")),
        ("perpatient", "p", p.clone()),
    ]
    .into_iter()
    .enumerate()
    {
        let values = parquet_column(&res(job), col);
        assert!(
            !values.contains(&value),
            "{job} still holds the purged patient"
        );
        assert!(
            values.len() < before[i] && !values.is_empty(),
            "{job}: {} rows",
            values.len()
        );
        assert_eq!(
            purge_mark(&ws, &res(job).with_file_name("")).expect("mark"),
            None,
            "{job}"
        );
        assert!(stdout.contains(&format!("result {job}: ")), "{stdout}");
    }
    // A reversed pseudonym (a function purge does not recompute) cannot be matched: kept, but never releasable.
    assert_eq!(std::fs::read(res("hashed")).expect("hashed"), hashed_before);
    let mark = |job: &str| -> Option<PurgeMark> {
        purge_mark(&ws, &w.join(&format!("ws/projects/demo/results/{job}"))).expect("mark")
    };
    assert_eq!(
        mark("hashed").map(|m| m.action),
        Some(ResultAction::PurgedUnreleasable)
    );
    // The aggregate computed over the victim is stale.
    assert_eq!(mark("agesex").map(|m| m.action), Some(ResultAction::Stale));
    assert_eq!(rows(&res("agesex")), before[5]);
    // Earlier releases over data that held the victim are listed.
    assert!(stdout.contains("earlier release r1"), "{stdout}");
    assert!(!stdout.contains("earlier release r0"), "{stdout}");

    // Quarantine: the victim's raw row is gone, the other patient's stays.
    let q =
        std::fs::read_to_string(w.join("ext.quarantine/clinical_events.csv")).expect("quarantine");
    let q_numbers: Vec<String> = q
        .lines()
        .map(|l| l.chars().filter(char::is_ascii_digit).collect())
        .collect();
    assert!(
        !q_numbers.iter().any(|l: &String| l.contains(&victim)),
        "the victim's quarantined row is removed"
    );
    assert_eq!(q.matches("not-a-date").count(), 1, "{}", q.lines().count());
    // The manifest's accounting still balances.
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(w.join("ws/projects/demo/data/manifest.json")).expect("m"),
    )
    .expect("json");
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
    // A second run changes nothing and keeps the marks.
    purge_newer(&w);
    assert_eq!(mark("agesex").map(|m| m.action), Some(ResultAction::Stale));
}

#[test]
fn purge_audits_before_it_prints_even_to_a_closed_stdout() {
    let w = Workdir::new();
    let (victim, _) = purge_setup(&w);
    w.write("newer.txt", format!("nhs_number\n{victim}\n"));
    let today = today();
    let out = crate::util::tre_closed_stdout(
        w.path(),
        &crate::util::purge_args(&today, "ext.quarantine"),
    );
    assert_eq!(out.status.code(), Some(0), "{}", crate::util::show(&out));
    let log = std::fs::read_to_string(w.join("ws/audit/audit.jsonl")).expect("log");
    let purge: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("entry"))
        .filter(|e: &serde_json::Value| e["action"] == "purge")
        .collect();
    assert_eq!(purge.len(), 1, "{log}");
    assert_eq!(purge[0]["outcome"], "ok", "{log}");
    // Audit first: the intent (the list's hash, its as-of date, the purge's id) is on
    // disk before the purge, and the outcome names the same purge.
    let starts: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("entry"))
        .filter(|e: &serde_json::Value| e["action"] == "purge.start")
        .collect();
    assert_eq!(starts.len(), 1, "{log}");
    let seq = |e: &serde_json::Value| e["seq"].as_u64().expect("seq");
    assert!(seq(&starts[0]) < seq(&purge[0]), "{log}");
    assert_eq!(starts[0]["detail"]["purge"], purge[0]["detail"]["purge"]);
    assert_eq!(starts[0]["detail"]["opt_outs_as_of"], today.as_str());
    assert_eq!(starts[0]["inputs"][0]["path"], "newer.txt", "{log}");
    assert_eq!(
        starts[0]["inputs"][0]["sha256"].as_str().map(str::len),
        Some(64),
        "{log}"
    );
    assert!(purge[0]["detail"]["rows_removed"].is_object(), "{log}");
}

#[test]
fn the_release_path_takes_its_ledger_entry_from_lineage_and_refuses_a_result_without_one() {
    use tre_pipeline::lineage::gate::{ReleaseBlock, release_parts};
    let w = Workdir::new();
    purge_setup(&w);
    let job_dir = |j: &str| w.join(&format!("ws/projects/demo/results/{j}"));
    let (all, rows) = store_result(
        &w,
        "bysex",
        "SELECT sex, COUNT(*) AS n FROM patients GROUP BY sex",
    );
    assert!(!all.blocked(), "{}", all.message());
    let parts = release_parts(&job_dir("bysex"), &rows, &rows).expect("parts");
    assert!(!parts.blocked());
    let entry = parts
        .entry("demo", "r1", "bysex", "2026-12-04T00:00:00Z", None)
        .expect("an entry");
    assert_eq!(entry.population.tables, vec!["patients".to_string()]);
    assert!(entry.cells.iter().any(|c| c.count), "{:?}", entry.cells);
    // A result stored before lineage was recorded is refused: re-run the job.
    std::fs::create_dir_all(job_dir("old")).expect("mkdir");
    let parts = release_parts(&job_dir("old"), &[], &[]).expect("parts");
    assert_eq!(parts.blocks, vec![ReleaseBlock::NoLineage]);
    assert!(
        parts
            .entry("demo", "r2", "old", "2026-12-04T00:00:00Z", None)
            .is_none()
    );
}

#[test]
fn joins_subqueries_unions_and_having_are_followed() {
    // IN (subquery) becomes a semi join; its population names both tables.
    let sql = "SELECT sex, COUNT(*) AS n FROM patients WHERE patient_pseudonym IN (SELECT patient_pseudonym FROM clinical_events WHERE snomed_code = '44054006') GROUP BY sex HAVING COUNT(*) > 10";
    let c = cols(sql);
    assert_eq!(role(&c, "n"), &Role::Count { distinct: false });
    assert!(kinds(&c, false).is_empty());
    let p = pop(sql);
    assert_eq!(
        p.tables,
        vec!["clinical_events".to_string(), "patients".to_string()]
    );
    assert!(
        p.filters
            .iter()
            .any(|f| f.contains("clinical_events.snomed_code")),
        "{p:?}"
    );
    // A margin row by UNION ALL keeps the roles.
    let c = cols(
        "SELECT sex, COUNT(*) AS n FROM patients GROUP BY sex UNION ALL SELECT 'Total', COUNT(*) FROM patients",
    );
    assert_eq!(role(&c, "sex"), &Role::GroupKey);
    assert_eq!(role(&c, "n"), &Role::Count { distinct: false });
    // A self join with aliases.
    let c = cols(
        "SELECT a.sex, COUNT(DISTINCT b.patient_pseudonym) AS n FROM patients a JOIN clinical_events b ON a.patient_pseudonym = b.patient_pseudonym GROUP BY a.sex",
    );
    assert_eq!(role(&c, "n"), &Role::Count { distinct: true });
    let p = pop(
        "SELECT a.sex, COUNT(DISTINCT b.patient_pseudonym) AS n FROM patients a JOIN clinical_events b ON a.patient_pseudonym = b.patient_pseudonym GROUP BY a.sex",
    );
    assert_eq!(p.joins.len(), 1, "{p:?}");
    assert!(p.joins[0].contains("patients.patient_pseudonym"), "{p:?}");
}

#[test]
fn a_plan_the_walker_cannot_follow_blocks_the_result() {
    let (p, catalog) = plan("SELECT unnest(make_array(sex, lsoa)) AS v, 10 AS n FROM patients");
    let r = tre_pipeline::lineage::analyse(&p, &catalog, false);
    assert!(r.blocked());
    assert!(r.unsupported.is_some(), "{r:?}");
    assert!(r.columns.iter().all(|c| c.role == Role::Unclassified));
    assert_eq!(r.population.tables, vec!["patients".to_string()]);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
    /// The transformations purge recomputes give what DataFusion gives.
    #[test]
    fn recorded_transforms_match_datafusion(
        value in "[0-9a-f]{8,70}",
        start in -3i64..80,
        len in 0i64..70,
        prefix in "[a-zA-Z_-]{0,4}",
    ) {
        use datafusion::arrow::array::{Array, StringArray};
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        let schema = Arc::new(Schema::new(vec![Field::new("patient_pseudonym", DataType::Utf8, false)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(StringArray::from(vec![value.clone()]))],
        ).expect("batch");
        let ctx = SessionContext::new();
        ctx.register_table("patients", Arc::new(MemTable::try_new(schema, vec![vec![batch]]).expect("mem")))
            .expect("register");
        let mut catalog = SourceCatalog::default();
        catalog.insert("patients", "patient_pseudonym", SourceClass::Pseudonym);
        let sqls = [
            format!("SELECT substr(patient_pseudonym, {start}, {len}) AS v FROM patients"),
            format!("SELECT substr(patient_pseudonym, {start}) AS v FROM patients"),
            format!("SELECT upper('{prefix}' || left(patient_pseudonym, {len})) AS v FROM patients"),
            format!("SELECT concat('{prefix}', right(patient_pseudonym, {len}), '{prefix}') AS v FROM patients"),
            format!("SELECT lower(upper(patient_pseudonym)) || '{prefix}' AS v FROM patients"),
        ];
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("rt");
        for sql in sqls {
            let (cols, got) = rt.block_on(async {
                let df = ctx.sql(&sql).await.expect("sql");
                let plan = df.clone().into_optimized_plan().expect("plan");
                let cols = classify(&plan, &catalog).expect("classify");
                let b = df.collect().await.expect("run");
                let a = datafusion::arrow::compute::cast(b[0].column(0), &DataType::Utf8).expect("cast");
                let a = a.as_any().downcast_ref::<StringArray>().expect("strings").value(0).to_string();
                (cols, a)
            });
            let t = cols[0].transform.as_ref().unwrap_or_else(|| panic!("no transform for {sql}"));
            proptest::prop_assert_eq!(t.apply(&value), got, "{}", sql);
        }
    }
}

#[test]
fn a_filter_picking_out_a_patient_by_pseudonym_blocks_and_is_never_stored_raw() {
    let pseudonym = "dd5c602eeb31d60c7c0d662c897231dda00e13cdf945b14cad185a4a7125826c";
    let sql = format!(
        "SELECT snomed_code, COUNT(*) AS n FROM clinical_events WHERE patient_pseudonym = '{pseudonym}' GROUP BY snomed_code"
    );
    let (p, catalog) = plan(&sql);
    let r = tre_pipeline::lineage::analyse(&p, &catalog, false);
    assert!(
        r.findings
            .iter()
            .any(|f| f.kind == FindingKind::IdentifierFilter),
        "{:?}",
        r.findings
    );
    assert_eq!(r.population.identifier_filters.len(), 1);
    let stored = serde_json::to_string(&r.population).expect("json");
    assert!(!stored.contains(pseudonym), "{stored}");
    assert!(!r.message().contains(pseudonym));
    // Counting distinct pseudonyms in HAVING is not picking anyone out.
    let (p, catalog) = plan(
        "SELECT sex, COUNT(DISTINCT patient_pseudonym) AS n FROM patients GROUP BY sex HAVING COUNT(DISTINCT patient_pseudonym) > 5",
    );
    let r = tre_pipeline::lineage::analyse(&p, &catalog, false);
    assert!(r.findings.is_empty(), "{:?}", r.findings);
}

#[test]
fn a_result_withdrawn_by_a_purge_is_never_served_status_table_page_or_release() {
    use std::time::Duration;
    use tre_pipeline::client::{Client, ClientError};
    use tre_pipeline::tre::users::Token;
    let tre = crate::util::TreSetup::demo(300, 1)
        .users(&["analyst"])
        .build();
    let w = &tre.w;
    let mut srv = tre.serve(&[]);
    let c = Client::new(&srv.base, Token::new(tre.tokens["analyst"].clone()));
    let sql = "SELECT age_band, COUNT(*) AS n FROM patients GROUP BY age_band ORDER BY age_band";
    let v = c.submit(DEMO, sql, "a table to withdraw").expect("submit");
    let job = v["job"].as_str().expect("job id").to_string();
    let v = c
        .wait(DEMO, &job, Duration::from_secs(120))
        .expect("status");
    assert_eq!(v["state"], "succeeded", "{v}");
    c.safe(DEMO, &job)
        .expect("the safe table, before the purge");
    srv.stop();

    // Patients in the extract opt out; the aggregate over them is withdrawn.
    let mut rdr = csv::Reader::from_path(w.join("in/patients.csv")).expect("patients");
    let nhs = rdr
        .byte_headers()
        .expect("header")
        .iter()
        .position(|h| h == b"nhs_number")
        .expect("nhs_number");
    let list: String = rdr
        .byte_records()
        .take(20)
        .map(|r| {
            let r = r.expect("row");
            let digits: String = String::from_utf8_lossy(&r[nhs])
                .chars()
                .filter(char::is_ascii_digit)
                .collect();
            format!("{digits}\n")
        })
        .collect();
    w.write("newer.txt", format!("nhs_number\n{list}"));
    let today = today();
    let out = w.tre_ok(&crate::util::purge_args(&today, "extract.quarantine"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("result {job}: aggregate over purged patients")),
        "{stdout}"
    );

    let srv = tre.serve(&[]);
    let c = Client::new(&srv.base, Token::new(tre.tokens["analyst"].clone()));
    let withdrawn =
        |m: &str| m.contains("withdrawn by purge purge-") && m.contains("re-run the job");
    // The safe table: 410 Gone, with the purge's message.
    match c.safe(DEMO, &job) {
        Err(ClientError::Status { status, message }) => {
            assert_eq!(status, 410, "{message}");
            assert!(withdrawn(&message), "{message}");
        }
        other => panic!("the safe table of a withdrawn result was served: {other:?}"),
    }
    // The status: the job, its state and the message; no report, rows or verdict.
    let v = c.job(DEMO, &job).expect("status");
    let keys: Vec<&str> = v
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["job", "state", "withdrawn"], "{v}");
    assert!(withdrawn(v["withdrawn"].as_str().unwrap_or("")), "{v}");
    // A release request: refused with the same message.
    match c.request(DEMO, &job, "Table 1", "patients by age band") {
        Err(ClientError::Status { status, message }) => {
            assert_eq!(status, 410, "{message}");
            assert!(withdrawn(&message), "{message}");
        }
        other => panic!("a withdrawn result was put up for release: {other:?}"),
    }
    // The page: the message, no table, no report.
    let addr = srv.base.trim_start_matches("http://").to_string();
    let cookie = sign_in(&addr, &tre.tokens["analyst"]);
    let (status, _, page) = http(
        &addr,
        format!(
            "GET /projects/demo/jobs/{job} HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(status, 200, "{page}");
    assert!(withdrawn(&page), "{page}");
    for gone in [
        "Safe table",
        "Disclosure report",
        "Verdict",
        "Request release",
        "<table",
    ] {
        assert!(!page.contains(gone), "the page shows {gone:?}: {page}");
    }
    drop(srv);

    // Every refusal is audited, with the purge's message.
    let log: Vec<serde_json::Value> = std::fs::read_to_string(tre.ws().join("audit/audit.jsonl"))
        .expect("log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("entry"))
        .collect();
    let refused = |action: &str, read: Option<&str>| {
        log.iter().any(|e| {
            let reason = e["detail"]["reason"].as_str().unwrap_or("");
            e["action"] == action
                && e["outcome"] == "refused"
                && (e["detail"]["job"] == job.as_str() || reason.contains(job.as_str()))
                && read.is_none_or(|r| e["detail"]["read"] == r)
                && withdrawn(reason)
        })
    };
    assert!(refused("job.safe", None), "the safe table's refusal");
    assert!(refused("job.read", Some("status")), "the status's refusal");
    assert!(refused("job.read", Some("page")), "the page's refusal");
    assert!(
        log.iter().any(|e| e["action"] == "release.request"
            && e["outcome"] == "refused"
            && withdrawn(e["detail"]["reason"].as_str().unwrap_or(""))),
        "the release request's refusal"
    );
    // Deleting the withdrawal and the mark (file access as the service account) does
    // not bring the result back: both are sealed records bound to the purge's audit
    // entry, so their absence is refused, not read as "never withdrawn".
    let dir = tre.ws().join(format!("projects/demo/results/{job}"));
    std::fs::remove_file(dir.join("withdrawn.json")).expect("rm withdrawal");
    let _ = std::fs::remove_file(dir.join("purge.json"));
    let srv = tre.serve(&[]);
    let c = Client::new(&srv.base, Token::new(tre.tokens["analyst"].clone()));
    match c.safe(DEMO, &job) {
        Err(ClientError::Status { status, message }) => {
            assert!(status == 409 || status == 410, "{status}: {message}");
            assert!(message.contains("withdrawn.json"), "{message}");
        }
        other => panic!("a result whose withdrawal was deleted was served: {other:?}"),
    }
    assert!(
        c.request(DEMO, &job, "try again", "the table").is_err(),
        "a result whose withdrawal was deleted was put up for release"
    );
    drop(srv);
}

#[test]
fn a_purge_with_the_wrong_key_is_refused_after_its_intent_and_touches_nothing() {
    let w = Workdir::new();
    let (victim, _) = purge_setup(&w);
    w.write("newer.txt", format!("nhs_number\n{victim}\n"));
    // Another well-formed key: it would match nobody.
    let wrong = w.write(
        "project.key",
        "3e8a51c07f92d64b1a5e08c3d7f2961b84c0e57a2d39f6b1c8e47a05d2b93f61\n",
    );
    crate::util::chmod(&wrong, 0o600);
    let before = std::fs::read(w.join("ws/projects/demo/data/patients.parquet")).expect("data");
    let msg = w.tre_code(&crate::util::purge_args(&today(), "ext.quarantine"), 1);
    assert!(msg.contains("fingerprint"), "{msg}");
    assert_eq!(
        std::fs::read(w.join("ws/projects/demo/data/patients.parquet")).expect("data"),
        before,
        "nothing was rewritten"
    );
    let log: Vec<serde_json::Value> = std::fs::read_to_string(w.join("ws/audit/audit.jsonl"))
        .expect("log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("entry"))
        .collect();
    let actions: Vec<(&str, &str)> = log
        .iter()
        .filter(|e| e["action"].as_str().is_some_and(|a| a.starts_with("purge")))
        .map(|e| {
            (
                e["action"].as_str().unwrap_or(""),
                e["outcome"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [("purge.start", "ok"), ("purge", "refused")],
        "the intent, then the refusal"
    );
}
