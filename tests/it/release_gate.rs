//! The release gate over HTTP: every attack class of issue 22 (derived count columns,
//! indicator sums and means, packed and rank keys, a named patient through a join, an
//! aliased non-patient column) in at least four SQL spellings each, against the real
//! `tre serve` on the demo data. Each shows that no published cell of what the analyst
//! receives (status, `safe.csv`) is supported by fewer than T patients, checked against
//! ground truth this test computes itself with DataFusion over the installed datasets
//! (never from the gate's own files). Also: ordinary tables are releasable, and the
//! analyst and a checker see different reports; ratios, percentages and medians are
//! derived by the TRE from published cells only (issue 22 point 2).

use std::collections::HashMap;
use std::time::Duration;

use datafusion::prelude::SessionContext;
use serde_json::Value;
use tre_pipeline::client::Client;
use tre_pipeline::tre::users::Token;

use crate::util::{Server, Tre, TreSetup, audit_entries, demo_policy_path};

/// The opensafely preset's threshold: counts below 8 are hidden.
const T: i64 = 8;

struct Gate {
    server: Server,
    tre: Tre,
    truth: SessionContext,
    rt: tokio::runtime::Runtime,
}

/// What one job gave the analyst.
struct Seen {
    job: String,
    status: Value,
    safe: Option<String>,
}

impl Gate {
    fn start() -> Gate {
        Gate::with(TreSetup::demo(2000, 5))
    }

    fn with(setup: TreSetup) -> Gate {
        let tre = setup.users(&["analyst", "checker1", "checker2"]).build();
        let server = tre.serve(&[]);
        let (rt, truth) = tre.installed_datasets();
        Gate {
            server,
            tre,
            truth,
            rt,
        }
    }

    fn client(&self, user: &str) -> Client {
        Client::new(&self.server.base, Token::new(self.tre.tokens[user].clone()))
    }

    fn run(&self, sql: &str) -> Seen {
        let c = self.client("analyst");
        let v = c.submit("demo", sql, "release gate test").expect("submit");
        let job = v["job"].as_str().expect("job id").to_string();
        let status = c
            .wait("demo", &job, Duration::from_secs(120))
            .expect("status");
        let safe = c.safe("demo", &job).ok();
        Seen { job, status, safe }
    }

    /// Ground truth: `sql` returns (key as text..., support) rows.
    fn truth(&self, sql: &str, keys: usize) -> HashMap<Vec<String>, i64> {
        let batches = self
            .rt
            .block_on(async { self.truth.sql(sql).await?.collect().await })
            .expect("truth query");
        let mut out = HashMap::new();
        for b in batches {
            let cols: Vec<_> = (0..=keys)
                .map(|i| {
                    arrow::compute::cast(b.column(i), &arrow::datatypes::DataType::Utf8)
                        .expect("text")
                })
                .collect();
            for r in 0..b.num_rows() {
                let text = |i: usize| {
                    let a = cols[i]
                        .as_any()
                        .downcast_ref::<arrow::array::StringArray>()
                        .expect("utf8");
                    if arrow::array::Array::is_null(a, r) {
                        String::new()
                    } else {
                        a.value(r).to_string()
                    }
                };
                let key: Vec<String> = (0..keys).map(text).collect();
                let n: i64 = text(keys).parse().expect("a count");
                out.insert(key, n);
            }
        }
        out
    }

    fn one_value(&self, sql: &str) -> String {
        self.truth(&format!("SELECT ({sql}), 0"), 1)
            .into_keys()
            .next()
            .expect("a value")
            .remove(0)
    }
}

/// Rows of a safe table (header dropped).
fn rows(csv: &str) -> Vec<Vec<String>> {
    csv.lines()
        .skip(1)
        .map(|l| l.split(',').map(String::from).collect())
        .collect()
}

/// Every published value of column `col` of the safe table is in a row whose key (the
/// first `keys` columns) has at least T patients of support in `truth`, or is a zero (no
/// patient at all: the opensafely rules do not treat zeros as disclosive). Returns how
/// many non-zero values were published.
fn supported(seen: &Seen, keys: usize, col: usize, truth: &HashMap<Vec<String>, i64>) -> usize {
    let Some(csv) = &seen.safe else { return 0 };
    let mut published = 0;
    for r in rows(csv) {
        if r.get(col)
            .is_none_or(|v| v.is_empty() || v.parse::<f64>() == Ok(0.0))
        {
            continue;
        }
        published += 1;
        let key = r[..keys].to_vec();
        let n = truth.get(&key).copied().unwrap_or(0);
        assert!(
            n >= T,
            "job {}: a published cell has {n} patients of support (< {T}): {key:?}",
            seen.job
        );
    }
    published
}

/// The job has no safe table and its verdict, as the analyst reads it, is a refusal.
fn refused(seen: &Seen, why: &str) {
    assert_eq!(seen.status["state"], "succeeded", "{}", seen.status);
    assert!(seen.safe.is_none(), "job {}: {:?}", seen.job, seen.safe);
    assert_eq!(seen.status["releasable"], false);
    let verdict = seen.status["verdict"].as_str().unwrap_or_default();
    assert!(
        verdict.starts_with("refused") && verdict.contains(why),
        "job {}: {verdict}",
        seen.job
    );
}

#[test]
fn derived_count_columns_and_packed_or_ranked_keys_publish_no_small_cell() {
    let g = Gate::start();
    // Arithmetic on aggregates is refused with the form to write instead.
    for sql in [
        "SELECT sex, COUNT(*) AS n, COUNT(*) * 10 AS n10 FROM patients GROUP BY sex",
        "SELECT sex, COUNT(*) AS n, COUNT(*) + 1000 AS m FROM patients GROUP BY sex",
        "SELECT sex, n * 10 AS n10 FROM (SELECT sex, COUNT(*) AS n FROM patients GROUP BY sex) t",
        "WITH c AS (SELECT sex, COUNT(*) AS n FROM patients GROUP BY sex) SELECT sex, n, n + 1000 AS m FROM c",
        "SELECT sex, CAST(COUNT(*) AS DOUBLE) * 10 AS n FROM patients GROUP BY sex ORDER BY sex",
    ] {
        refused(&g.run(sql), "GROUP BY a, b");
    }
    // Spellings that ARE of the closed form: the TRE counts the patients behind them.
    let by_sex = g.truth(
        "SELECT sex, COUNT(DISTINCT patient_pseudonym) FROM patients GROUP BY sex",
        1,
    );
    assert!(
        by_sex.values().any(|n| *n < T),
        "the demo data has a small sex category: {by_sex:?}"
    );
    for sql in [
        // A per-patient count times ten, summed per sex.
        "SELECT sex, SUM(n10) AS s FROM (SELECT sex, patient_pseudonym, COUNT(*) * 10 AS n10 FROM patients GROUP BY sex, patient_pseudonym) t GROUP BY sex",
        // The count doubled by a UNION ALL of the same rows.
        "SELECT sex, COUNT(*) AS n FROM (SELECT sex, patient_pseudonym FROM patients UNION ALL SELECT sex, patient_pseudonym FROM patients) t GROUP BY sex",
        // Plus 1000 as rows of a join with a 1000-row table.
        "SELECT p.sex, COUNT(*) AS n FROM patients p CROSS JOIN (SELECT * FROM generate_series(1, 1000)) g GROUP BY p.sex",
        "SELECT sex, COUNT(*) AS n, COUNT(DISTINCT patient_pseudonym) AS p FROM patients GROUP BY sex ORDER BY n DESC",
    ] {
        let seen = g.run(sql);
        assert!(seen.safe.is_some(), "{sql}: {}", seen.status);
        assert!(supported(&seen, 1, 1, &by_sex) > 0, "{sql}");
        let safe = seen.safe.as_deref().unwrap_or_default();
        for (sex, n) in &by_sex {
            if *n < T {
                assert!(
                    rows(safe).iter().any(|r| r[0] == sex[0] && r[1].is_empty())
                        || !rows(safe).iter().any(|r| r[0] == sex[0]),
                    "{sql}: the small category {sex:?} is hidden: {safe}"
                );
            }
        }
    }

    // Packed keys: every record its own key (with a doubled count, so a "mostly ones" test
    // would not fire), in four spellings; truth per packed key.
    let packed = "concat_ws('|', lsoa, age_band, sex, CAST(date_of_death AS VARCHAR))";
    let truth = g.truth(
        &format!("SELECT {packed}, COUNT(DISTINCT patient_pseudonym) FROM patients GROUP BY 1"),
        1,
    );
    for sql in [
        format!(
            "SELECT k, COUNT(*) AS n FROM (SELECT {packed} AS k, patient_pseudonym FROM patients UNION ALL SELECT {packed} AS k, patient_pseudonym FROM patients) t GROUP BY k"
        ),
        format!("SELECT {packed} AS k, COUNT(*) AS n FROM patients GROUP BY {packed}"),
        format!(
            "WITH r AS (SELECT {packed} AS k, patient_pseudonym FROM patients) SELECT k, COUNT(DISTINCT patient_pseudonym) AS n FROM r GROUP BY k ORDER BY k"
        ),
        "SELECT lsoa || '|' || age_band || '|' || sex || '|' || COALESCE(CAST(date_of_death AS VARCHAR), '') AS k, SUM(2) AS n FROM patients GROUP BY 1".replace(
            "lsoa || '|' || age_band || '|' || sex || '|' || COALESCE(CAST(date_of_death AS VARCHAR), '')",
            packed,
        ),
    ] {
        let seen = g.run(&sql);
        supported(&seen, 1, 1, &truth);
    }

    // Rank keys: ROW_NUMBER() over the pseudonyms packed into the key.
    let ranked = "SELECT ROW_NUMBER() OVER (ORDER BY patient_pseudonym) AS rk, sex, lsoa, patient_pseudonym FROM patients";
    let truth = g.truth(
        &format!(
            "SELECT CAST(rk AS VARCHAR) || '|' || sex || '|' || lsoa, COUNT(DISTINCT patient_pseudonym) FROM ({ranked}) GROUP BY 1"
        ),
        1,
    );
    for sql in [
        format!(
            "SELECT CAST(rk AS VARCHAR) || '|' || sex || '|' || lsoa AS k, COUNT(*) AS n FROM ({ranked}) t GROUP BY 1"
        ),
        format!(
            "WITH r AS ({ranked}) SELECT concat_ws('|', rk, sex, lsoa) AS k, COUNT(*) AS n FROM r GROUP BY concat_ws('|', rk, sex, lsoa)"
        ),
        format!(
            "SELECT k, COUNT(*) AS n FROM (SELECT CAST(rk AS VARCHAR) || '|' || sex || '|' || lsoa AS k, patient_pseudonym FROM ({ranked}) a UNION ALL SELECT CAST(rk AS VARCHAR) || '|' || sex || '|' || lsoa AS k, patient_pseudonym FROM ({ranked}) b) t GROUP BY k"
        ),
        format!(
            "SELECT concat(CAST(rk AS VARCHAR), '|', sex, '|', lsoa) AS k, COUNT(DISTINCT patient_pseudonym) AS n FROM ({ranked}) t GROUP BY 1 ORDER BY 1"
        ),
    ] {
        let seen = g.run(&sql);
        assert_eq!(
            supported(&seen, 1, 1, &truth),
            0,
            "no rank cell is published: {sql}"
        );
    }
}

#[test]
fn indicator_sums_and_means_named_patients_and_false_pseudonyms_publish_no_small_cell() {
    let g = Gate::start();
    // Indicator sums of a small sub-population per practice: the support of a published
    // sum or mean is the number of I patients in that practice.
    let truth = g.truth(
        "SELECT r.practice_code, COUNT(DISTINCT CASE WHEN p.sex = 'U' THEN p.patient_pseudonym END) FROM patients p JOIN registrations r ON p.patient_pseudonym = r.patient_pseudonym GROUP BY r.practice_code",
        1,
    );
    assert!(truth.values().any(|n| *n < T && *n > 0), "{truth:?}");
    let join = "FROM patients p JOIN registrations r ON p.patient_pseudonym = r.patient_pseudonym";
    for sql in [
        format!(
            "SELECT r.practice_code, SUM(CASE WHEN p.sex = 'U' THEN 1 ELSE 0 END) AS i {join} GROUP BY r.practice_code"
        ),
        format!(
            "SELECT r.practice_code, AVG(CASE WHEN p.sex = 'U' THEN 1 ELSE 0 END) AS i {join} GROUP BY r.practice_code"
        ),
        format!(
            "SELECT r.practice_code, COUNT(*) FILTER (WHERE p.sex = 'U') AS i {join} GROUP BY r.practice_code"
        ),
        format!(
            "SELECT r.practice_code, COUNT(CASE WHEN p.sex = 'U' THEN 1 END) AS i {join} GROUP BY r.practice_code"
        ),
        "WITH x AS (SELECT r.practice_code AS practice, CAST(p.sex = 'U' AS INT) AS i, p.patient_pseudonym FROM registrations r JOIN patients p USING (patient_pseudonym)) SELECT practice, AVG(i) AS i FROM x GROUP BY practice".to_string(),
        format!(
            "SELECT r.practice_code, SUM(CASE WHEN p.sex = 'U' THEN 1000 ELSE 0 END) + 0 AS i {join} GROUP BY r.practice_code"
        ),
    ] {
        let seen = g.run(&sql);
        supported(&seen, 1, 1, &truth);
    }

    // A named patient, by join, IN, semi-join, CTE and WHERE: one patient in every cell.
    let pp = g.one_value("SELECT MIN(patient_pseudonym) FROM patients");
    let truth = g.truth(
        &format!(
            "SELECT sex, COUNT(DISTINCT patient_pseudonym) FROM patients WHERE patient_pseudonym = '{pp}' GROUP BY sex"
        ),
        1,
    );
    for sql in [
        format!(
            "SELECT p.sex, COUNT(*) AS n FROM patients p JOIN (VALUES ('{pp}')) v(x) ON p.patient_pseudonym = v.x GROUP BY p.sex"
        ),
        format!(
            "SELECT sex, COUNT(*) AS n FROM patients WHERE patient_pseudonym IN (SELECT column1 FROM (VALUES ('{pp}'))) GROUP BY sex"
        ),
        format!(
            "SELECT sex, COUNT(*) AS n FROM patients p WHERE EXISTS (SELECT 1 FROM (VALUES ('{pp}')) v(x) WHERE v.x = p.patient_pseudonym) GROUP BY sex"
        ),
        format!(
            "WITH one AS (SELECT * FROM patients WHERE patient_pseudonym = '{pp}') SELECT sex, COUNT(DISTINCT patient_pseudonym) AS n, SUM(1000) AS s FROM one GROUP BY sex"
        ),
        format!(
            "SELECT v.x AS who, COUNT(*) AS n FROM (VALUES ('{pp}')) v(x) JOIN patients p ON p.patient_pseudonym = v.x GROUP BY v.x"
        ),
    ] {
        let seen = g.run(&sql);
        assert_eq!(supported(&seen, 1, 1, &truth), 0, "{sql}");
        if let Some(safe) = &seen.safe {
            assert!(!safe.contains(&pp), "the pseudonym as a key is hidden too");
        }
    }

    // Another column as patient_pseudonym: refused from the plan (it is not the rows'
    // own patient's pseudonym), in four spellings; a NULL pseudonym from an outer join
    // passes the plan and is refused by value (one audited bit); a missing patient
    // column is refused by name.
    for sql in [
        "SELECT sex, COUNT(*) AS n FROM (SELECT sex, lsoa AS patient_pseudonym FROM patients) t GROUP BY sex",
        "SELECT sex, COUNT(*) AS n FROM (SELECT p.sex, r.practice_code AS patient_pseudonym FROM patients p JOIN registrations r USING (patient_pseudonym)) t GROUP BY sex",
        "WITH t AS (SELECT sex, 'x' AS patient_pseudonym FROM patients) SELECT sex, COUNT(DISTINCT patient_pseudonym) AS n FROM t GROUP BY sex",
        "SELECT sex, COUNT(*) AS n FROM (SELECT sex, UPPER(patient_pseudonym) AS patient_pseudonym FROM patients) t GROUP BY sex",
    ] {
        refused(&g.run(sql), "not each one patient's");
    }
    refused(
        &g.run("SELECT sex, COUNT(*) AS n FROM (SELECT p.sex, e.patient_pseudonym FROM patients p LEFT JOIN clinical_events e ON p.patient_pseudonym = e.patient_pseudonym AND e.snomed_code = 'no such code') t GROUP BY sex"),
        "patient of this project",
    );
    refused(
        &g.run("SELECT sex, COUNT(*) AS n FROM (SELECT sex FROM patients) t GROUP BY sex"),
        "must carry patient_pseudonym",
    );
    let bits = audit_entries(&g.tre.ws())
        .iter()
        .filter(|e| {
            e["action"] == "job.run" && e["detail"]["verdict"] == "refused_unknown_patients"
        })
        .count();
    assert_eq!(bits, 1, "every one-bit refusal is audited");
}

#[test]
fn ordinary_tables_are_releasable_and_only_checkers_see_the_report() {
    let g = Gate::start();
    let seen = g.run(
        "SELECT age_band, sex, COUNT(*) AS n FROM patients GROUP BY age_band, sex ORDER BY age_band, sex",
    );
    assert_eq!(seen.status["releasable"], true, "{}", seen.status);
    let safe = seen.safe.clone().expect("a safe table");
    assert!(safe.starts_with("age_band,sex,n\n"), "{safe}");
    let truth = g.truth(
        "SELECT age_band, sex, COUNT(DISTINCT patient_pseudonym) FROM patients GROUP BY age_band, sex",
        2,
    );
    assert!(supported(&seen, 2, 2, &truth) > 10);
    // The same table with its patients and a mean with its count.
    let seen = g.run(
        "SELECT sex, COUNT(DISTINCT patient_pseudonym) AS patients, COUNT(numeric_value) AS n, AVG(numeric_value) AS mean FROM clinical_events e JOIN patients p USING (patient_pseudonym) GROUP BY sex",
    );
    assert!(seen.safe.is_some(), "{}", seen.status);
    let by_sex = g.truth(
        "SELECT sex, COUNT(DISTINCT patient_pseudonym) FROM clinical_events e JOIN patients p USING (patient_pseudonym) WHERE numeric_value IS NOT NULL GROUP BY sex",
        1,
    );
    supported(&seen, 1, 3, &by_sex);

    // Analyst vs checker: the analyst reads the verdict and what to change, never the
    // report; a checker reads the report with the hidden cells' reasons.
    let seen = g.run("SELECT sex, COUNT(*) AS n FROM patients GROUP BY sex");
    let verdict = seen.status["verdict"].as_str().expect("verdict");
    assert!(verdict.contains("hidden"), "{verdict}");
    assert!(verdict.contains("combine"), "{verdict}");
    assert!(seen.status.get("report").is_none(), "{}", seen.status);
    let checker = g
        .client("checker1")
        .job("demo", &seen.job)
        .expect("checker reads the status");
    let report = checker["report"].as_str().expect("the checker's report");
    assert!(report.contains("below the threshold"), "{report}");
    // The private files the received ledger reads are there, and private.
    let dir = g.tre.ws().join("projects/demo/results").join(&seen.job);
    for f in ["cells.json", "membership.parquet"] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.join(f)).expect(f).permissions(),
        );
        assert_eq!(mode & 0o077, 0, "{f} is private");
    }
    let cells: Value =
        serde_json::from_slice(&std::fs::read(dir.join("cells.json")).expect("cells"))
            .expect("json");
    assert_eq!(cells["threshold"], T);
    assert_eq!(cells["measures"], serde_json::json!(["rows"]));
    assert!(cells["cells"].as_array().is_some_and(|c| c.len() >= 3));
}

/// Differencing between two safe tables the analyst can read, before any release: all
/// patients by sex, then all but one small LSOA by sex, in four spellings (filter,
/// anti-join, NOT IN, NOT EXISTS). Each second table is refused, naming the first, and
/// none of them becomes readable; an unrelated ordinary table stays releasable after.
#[test]
fn differencing_between_safe_tables_the_analyst_received_is_refused() {
    let g = Gate::start();
    // An LSOA of fewer than T patients, some of them female (F is published in the
    // first table, so the female patients of that LSOA are the group the attack pins).
    let small = g.truth(
        "SELECT lsoa, COUNT(DISTINCT patient_pseudonym) FROM patients WHERE lsoa IS NOT NULL GROUP BY lsoa HAVING SUM(CASE WHEN sex = 'F' THEN 1 ELSE 0 END) > 0",
        1,
    );
    let (lsoa, n) = small
        .iter()
        .filter(|(_, n)| (1..T).contains(*n))
        .map(|(k, n)| (k[0].clone(), *n))
        .min()
        .expect("a small LSOA with a female patient in the demo data");
    assert!(n < T);
    let first = g.run("SELECT sex, COUNT(*) AS n FROM patients GROUP BY sex");
    assert!(first.safe.is_some(), "{}", first.status);
    for sql in [
        format!(
            "SELECT sex, COUNT(*) AS n FROM patients WHERE lsoa <> '{lsoa}' OR lsoa IS NULL GROUP BY sex"
        ),
        format!(
            "SELECT p.sex, COUNT(*) AS n FROM patients p LEFT JOIN (SELECT patient_pseudonym AS q FROM patients WHERE lsoa = '{lsoa}') x ON p.patient_pseudonym = x.q WHERE x.q IS NULL GROUP BY p.sex"
        ),
        format!(
            "SELECT sex, COUNT(*) AS n FROM patients WHERE patient_pseudonym NOT IN (SELECT patient_pseudonym FROM patients WHERE lsoa = '{lsoa}') GROUP BY sex"
        ),
        format!(
            "SELECT sex, COUNT(DISTINCT patient_pseudonym) AS n FROM patients p WHERE NOT EXISTS (SELECT 1 FROM patients q WHERE q.patient_pseudonym = p.patient_pseudonym AND q.lsoa = '{lsoa}') GROUP BY sex"
        ),
    ] {
        let seen = g.run(&sql);
        refused(&seen, "");
        let verdict = seen.status["verdict"].as_str().unwrap_or_default();
        assert!(
            verdict.contains(&first.job),
            "job {}: the refusal names the earlier table: {verdict}",
            seen.job
        );
        assert!(!verdict.contains(&lsoa), "{verdict}");
    }
    let later = g.run("SELECT age_band, sex, COUNT(*) AS n FROM patients GROUP BY age_band, sex");
    assert!(later.safe.is_some(), "{}", later.status);
}

#[test]
fn one_patients_data_in_other_patients_rows_is_refused_from_the_plan() {
    let g = Gate::start();
    // A patient with events: their rows paired with every other pseudonym would be
    // counted as thousands of patients (amplification), in four spellings; one patient's
    // value put in everyone's row, or deciding who is counted, in three more.
    let pp = g.one_value(
        "SELECT MIN(patient_pseudonym) FROM clinical_events WHERE numeric_value IS NOT NULL",
    );
    let one = format!("e.patient_pseudonym = '{pp}'");
    for sql in [
        format!(
            "SELECT e.snomed_code, COUNT(DISTINCT o.patient_pseudonym) AS n, SUM(e.numeric_value) AS s FROM clinical_events e CROSS JOIN patients o WHERE {one} GROUP BY e.snomed_code"
        ),
        format!(
            "SELECT e.snomed_code, COUNT(*) AS n, AVG(e.numeric_value) AS m FROM clinical_events e JOIN patients o ON e.snomed_code <> o.sex WHERE {one} GROUP BY e.snomed_code"
        ),
        format!(
            "SELECT o.sex, SUM(e.numeric_value) AS s, COUNT(DISTINCT o.patient_pseudonym) AS n FROM clinical_events e, patients o WHERE {one} AND o.lsoa IS NOT NULL GROUP BY o.sex"
        ),
        format!(
            "WITH mine AS (SELECT snomed_code, numeric_value FROM clinical_events e WHERE {one}) SELECT m.snomed_code, COUNT(*) AS n, SUM(m.numeric_value) AS s FROM patients p JOIN mine m ON TRUE GROUP BY m.snomed_code"
        ),
        format!(
            "SELECT sex, (SELECT MAX(e.numeric_value) FROM clinical_events e WHERE {one}) AS v, COUNT(*) AS n FROM patients GROUP BY sex, v"
        ),
        format!(
            "SELECT sex, COUNT(*) AS n FROM patients WHERE (SELECT MAX(e.numeric_value) FROM clinical_events e WHERE {one}) > 5 GROUP BY sex"
        ),
        format!(
            "SELECT sex, COUNT(*) AS n FROM patients WHERE lsoa IN (SELECT p2.lsoa FROM patients p2 JOIN clinical_events e ON p2.patient_pseudonym = e.patient_pseudonym WHERE {one}) GROUP BY sex"
        ),
    ] {
        let seen = g.run(&sql);
        refused(&seen, "not each one patient's");
        let verdict = seen.status["verdict"].as_str().unwrap_or_default();
        assert!(!verdict.contains(&pp), "no pseudonym in the refusal");
    }
    // The same population written patient-wise is computed (and counted as one patient).
    let seen = g.run(&format!(
        "SELECT e.snomed_code, COUNT(*) AS n FROM clinical_events e JOIN patients o ON e.patient_pseudonym = o.patient_pseudonym WHERE {one} GROUP BY e.snomed_code"
    ));
    assert_eq!(seen.status["state"], "succeeded", "{}", seen.status);
    let truth = g.truth(
        &format!(
            "SELECT e.snomed_code, COUNT(DISTINCT e.patient_pseudonym) FROM clinical_events e WHERE {one} GROUP BY e.snomed_code"
        ),
        1,
    );
    assert_eq!(
        supported(&seen, 1, 1, &truth),
        0,
        "nothing of one patient is published"
    );
}

/// A safe table's column as numbers (`None` where empty).
fn column(csv: &str, col: usize) -> Vec<Option<f64>> {
    rows(csv)
        .iter()
        .map(|r| r.get(col).and_then(|v| v.parse::<f64>().ok()))
        .collect()
}

/// The safe table of a job that has one.
fn safe_of(seen: &Seen) -> String {
    seen.safe
        .clone()
        .unwrap_or_else(|| panic!("job {}: no safe table: {}", seen.job, seen.status))
}

/// Columns `n` (a count), `d` (a count) and `r` (their ratio, times `scale`) of a safe
/// table: the ratio is shown exactly where both counts are, and is then their PUBLISHED
/// values' ratio (so nothing hidden or unrounded is in it).
fn ratio_of_published(csv: &str, n: usize, d: usize, r: usize, scale: f64) -> usize {
    let (n, d, r) = (column(csv, n), column(csv, d), column(csv, r));
    let mut shown = 0;
    for i in 0..r.len() {
        match (n[i], d[i], r[i]) {
            (Some(n), Some(d), Some(r)) if d != 0.0 => {
                assert!((r - scale * n / d).abs() < 1e-9, "row {i}: {csv}");
                shown += 1;
            }
            (_, _, r) => assert!(r.is_none(), "row {i}: a ratio of a hidden count: {csv}"),
        }
    }
    shown
}

/// A share column `p` of count column `n` partitioned by the key columns `by`: in each
/// partition either every share is hidden (some count of it is) or every count is
/// published and each share is its count over their sum (times `scale`). Returns
/// (partitions shown, partitions hidden).
fn shares_of_published(csv: &str, by: &[usize], n: usize, p: usize, scale: f64) -> (usize, usize) {
    let rows = rows(csv);
    /// A partition's cells: (count, share).
    type Cells = Vec<(Option<f64>, Option<f64>)>;
    let mut parts: HashMap<Vec<String>, Cells> = HashMap::new();
    for r in &rows {
        let key = by.iter().map(|k| r[*k].clone()).collect();
        parts
            .entry(key)
            .or_default()
            .push((r[n].parse().ok(), r[p].parse().ok()));
    }
    let (mut shown, mut hidden) = (0, 0);
    for (key, cells) in &parts {
        if cells.iter().any(|(n, _)| n.is_none()) {
            assert!(
                cells.iter().all(|(_, p)| p.is_none()),
                "partition {key:?} has a hidden count, so no share: {csv}"
            );
            hidden += 1;
            continue;
        }
        let total: f64 = cells.iter().filter_map(|(n, _)| *n).sum();
        for (n, p) in cells {
            let (Some(n), Some(p)) = (n, p) else {
                panic!("partition {key:?}: every count is published, so every share: {csv}");
            };
            assert!((p - scale * n / total).abs() < 1e-9, "{key:?}: {csv}");
        }
        shown += 1;
    }
    (shown, hidden)
}

/// Each attempt on a fresh TRE, so that the received guard (which compares a table with
/// every table the analyst already received) does not refuse a spelling as a near-copy of
/// the one before: what is checked here is the single table's derived columns.
fn fresh(sql: &str) -> (Gate, Seen) {
    let g = Gate::start();
    let seen = g.run(sql);
    (g, seen)
}

#[test]
fn ratios_and_percentages_are_derived_from_published_cells_only() {
    // A ratio (registrations per patient) beside its counts, in four spellings: hidden
    // where either count is (so ratio x published count never gives a hidden count),
    // else the ratio of the two published (rounded) counts.
    let regs = "FROM patients p JOIN registrations r USING (patient_pseudonym)";
    for (sql, scale) in [
        (
            format!(
                "SELECT age_band, sex, COUNT(*) AS n, COUNT(DISTINCT patient_pseudonym) AS patients, CAST(COUNT(*) AS DOUBLE) / COUNT(DISTINCT patient_pseudonym) AS per_patient {regs} GROUP BY age_band, sex"
            ),
            1.0,
        ),
        (
            format!(
                "SELECT age_band, sex, COUNT(*) AS n, COUNT(DISTINCT patient_pseudonym) AS patients, COUNT(*) / COUNT(DISTINCT patient_pseudonym) AS per_patient {regs} GROUP BY age_band, sex ORDER BY age_band, sex"
            ),
            1.0,
        ),
        (
            format!(
                "SELECT age_band, sex, n, p, 100.0 * n / p AS per_100 FROM (SELECT age_band, sex, COUNT(*) AS n, COUNT(DISTINCT patient_pseudonym) AS p {regs} GROUP BY age_band, sex) t"
            ),
            100.0,
        ),
        (
            format!(
                "WITH rg AS (SELECT p.age_band, p.sex, r.patient_pseudonym {regs}) SELECT age_band, sex, COUNT(*) AS n, COUNT(DISTINCT patient_pseudonym) AS p, COUNT(*) * 100 / CAST(COUNT(DISTINCT patient_pseudonym) AS DOUBLE) AS per_100 FROM rg GROUP BY age_band, sex"
            ),
            100.0,
        ),
    ] {
        let (g, seen) = fresh(&sql);
        let truth = g.truth(
            &format!(
                "SELECT age_band, sex, COUNT(DISTINCT patient_pseudonym) {regs} GROUP BY age_band, sex"
            ),
            2,
        );
        assert!(truth.values().any(|n| *n < T), "{truth:?}");
        let safe = safe_of(&seen);
        assert!(
            ratio_of_published(&safe, 2, 3, 4, scale) > 10,
            "{sql}: {safe}"
        );
        assert!(supported(&seen, 2, 4, &truth) > 10, "{sql}");
        assert!(
            column(&safe, 4).iter().any(Option::is_none),
            "{sql}: the small cells' ratios are hidden: {safe}"
        );
        // The case that matters is exercised: a cell whose patients are published but
        // whose count is hidden (ratio x patients would give the count) shows no ratio.
        let (n, p) = (column(&safe, 2), column(&safe, 3));
        assert!(
            n.iter().zip(&p).any(|(n, p)| n.is_none() && p.is_some()),
            "{sql}: {safe}"
        );
    }
    // A ratio of an indicator count (U patients' registrations per practice over all):
    // never published where the indicator count has fewer than T patients.
    let join = "FROM patients p JOIN registrations r ON p.patient_pseudonym = r.patient_pseudonym";
    for sql in [
        format!(
            "SELECT r.practice_code, 100.0 * COUNT(*) FILTER (WHERE p.sex = 'U') / COUNT(*) AS pct_u {join} GROUP BY r.practice_code"
        ),
        format!(
            "SELECT r.practice_code, SUM(CASE WHEN p.sex = 'U' THEN 1 ELSE 0 END) / COUNT(DISTINCT p.patient_pseudonym) AS share_u {join} GROUP BY r.practice_code"
        ),
    ] {
        let (g, seen) = fresh(&sql);
        let truth = g.truth(
            &format!(
                "SELECT r.practice_code, COUNT(DISTINCT CASE WHEN p.sex = 'U' THEN p.patient_pseudonym END) {join} GROUP BY r.practice_code"
            ),
            1,
        );
        supported(&seen, 1, 1, &truth);
    }

    // Percentages within each age band, in four spellings: a band with a hidden count
    // shows no percentage at all (so a percentage times a published count or total never
    // gives a hidden count); in the others each is the published count's share of the
    // band's published counts.
    for (sql, scale) in [
        (
            "SELECT age_band, sex, COUNT(*) AS n, 100.0 * COUNT(*) / SUM(COUNT(*)) OVER (PARTITION BY age_band) AS pct FROM patients GROUP BY age_band, sex ORDER BY age_band, sex",
            100.0,
        ),
        (
            "SELECT age_band, sex, COUNT(*) AS n, COUNT(*) * 100.0 / SUM(COUNT(*)) OVER (PARTITION BY age_band) AS pct FROM patients GROUP BY age_band, sex",
            100.0,
        ),
        (
            "SELECT age_band, sex, COUNT(DISTINCT patient_pseudonym) AS n, CAST(COUNT(DISTINCT patient_pseudonym) AS DOUBLE) / SUM(COUNT(DISTINCT patient_pseudonym)) OVER (PARTITION BY age_band) AS proportion FROM patients GROUP BY age_band, sex",
            1.0,
        ),
        (
            "WITH t AS (SELECT age_band AS band, sex, patient_pseudonym FROM patients) SELECT band, sex, COUNT(*) AS n, 100 * COUNT(*) / SUM(COUNT(*)) OVER (PARTITION BY band) AS pct FROM t GROUP BY band, sex ORDER BY band",
            100.0,
        ),
    ] {
        let (g, seen) = fresh(sql);
        let truth = g.truth(
            "SELECT age_band, sex, COUNT(DISTINCT patient_pseudonym) FROM patients GROUP BY age_band, sex",
            2,
        );
        let safe = safe_of(&seen);
        let (shown, hidden) = shares_of_published(&safe, &[0], 2, 3, scale);
        assert!(shown > 5 && hidden > 0, "{sql}: {shown} {hidden}: {safe}");
        assert!(supported(&seen, 2, 3, &truth) > 10, "{sql}");
        // What two checkers release is the same safe table, percentages included.
        let r = g
            .client("analyst")
            .request("demo", &seen.job, "for the paper", "shares by age band")
            .expect("release request");
        let rel = r["release"].as_str().expect("release id").to_string();
        for c in ["checker1", "checker2"] {
            g.client(c)
                .review("demo", &rel, true, "checked")
                .expect("approve");
        }
        let exported: Vec<String> = std::fs::read_dir(&g.tre.outbox)
            .expect("outbox")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "csv"))
            .map(|p| std::fs::read_to_string(p).expect("exported"))
            .collect();
        assert_eq!(exported, vec![safe.clone()], "{sql}");
    }
    // Over the whole table (OVER ()): one hidden sex hides every percentage.
    let (_g, seen) = fresh(
        "SELECT sex, COUNT(*) AS n, 100.0 * COUNT(*) / SUM(COUNT(*)) OVER () AS pct FROM patients GROUP BY sex",
    );
    let safe = safe_of(&seen);
    assert_eq!(
        shares_of_published(&safe, &[], 1, 2, 100.0),
        (0, 1),
        "{safe}"
    );

    // The old attacks, and derived columns that are not a ratio or a share of the
    // table's own statistics, stay refused with the form to write.
    let g = Gate::start();
    for sql in [
        "SELECT sex, COUNT(*) AS n, COUNT(*) * 10 AS n10 FROM patients GROUP BY sex",
        "SELECT sex, COUNT(*) AS n, COUNT(*) + 1000 AS m FROM patients GROUP BY sex",
        "SELECT sex, COUNT(*) * 10 / COUNT(DISTINCT patient_pseudonym) AS r FROM patients GROUP BY sex",
        "SELECT sex, (COUNT(*) + 1000) / COUNT(*) AS r FROM patients GROUP BY sex",
        "SELECT sex, COUNT(*) / 0.001 AS r FROM patients GROUP BY sex",
        "SELECT sex, SUM(COUNT(*)) OVER () - COUNT(*) AS rest FROM patients GROUP BY sex",
        "SELECT sex, SUM(COUNT(*)) OVER () AS total FROM patients GROUP BY sex",
        "SELECT sex, 100.0 * COUNT(*) / SUM(COUNT(*)) OVER (ORDER BY sex) AS running FROM patients GROUP BY sex",
        "SELECT sex, 100.0 * COUNT(*) / SUM(COUNT(DISTINCT patient_pseudonym)) OVER () AS mixed FROM patients GROUP BY sex",
    ] {
        refused(&g.run(sql), "GROUP BY a, b");
    }
}

#[test]
fn a_median_is_published_only_where_the_rules_allow_order_statistics() {
    let events = "FROM clinical_events e JOIN patients p USING (patient_pseudonym) WHERE numeric_value IS NOT NULL";
    let median = format!(
        "SELECT sex, COUNT(DISTINCT patient_pseudonym) AS patients, MEDIAN(numeric_value) AS median {events} GROUP BY sex"
    );
    // The demo project's opensafely rules do not allow order statistics.
    let g = Gate::start();
    refused(&g.run(&median), "order statistics");
    refused(
        &g.run(&format!(
            "SELECT sex, APPROX_MEDIAN(numeric_value) AS m {events} GROUP BY sex"
        )),
        "MEDIAN(x)",
    );
    drop(g);

    // The same rules with order statistics allowed, installed with the project.
    let rules_dir = tempfile::tempdir().expect("dir");
    let rules =
        std::fs::read_to_string(crate::util::repo().join("policies/output-rules/opensafely.toml"))
            .expect("preset")
            .replace("name = \"opensafely\"", "name = \"opensafely-order-stats\"")
            .replace("allow = false", "allow = true");
    let rules_path = rules_dir.path().join("order-stats.toml");
    std::fs::write(&rules_path, rules).expect("write rules");
    let policy = std::fs::read_to_string(demo_policy_path())
        .expect("demo policy")
        .replace(
            "output_rules = \"opensafely\"",
            &format!("output_rules = {:?}", rules_path.to_string_lossy()),
        );
    for (sql, keys, shown_at_least, some_hidden) in [
        (
            format!(
                "SELECT sex, COUNT(DISTINCT patient_pseudonym) AS patients, MEDIAN(numeric_value) AS median {events} GROUP BY sex"
            ),
            1,
            1,
            true,
        ),
        (
            format!(
                "SELECT age_band, COUNT(DISTINCT patient_pseudonym) AS patients, MEDIAN(numeric_value) AS median {events} GROUP BY age_band"
            ),
            1,
            10,
            false,
        ),
    ] {
        let g = Gate::with(TreSetup::demo(2000, 5).policy_text(policy.clone()));
        let seen = g.run(&sql);
        let safe = safe_of(&seen);
        let key = if sql.contains("GROUP BY sex") {
            "sex"
        } else {
            "age_band"
        };
        let patients = g.truth(
            &format!("SELECT {key}, COUNT(DISTINCT patient_pseudonym) {events} GROUP BY {key}"),
            keys,
        );
        let mut shown = 0;
        for r in rows(&safe) {
            if r[2].is_empty() {
                continue;
            }
            let n = patients.get(&r[..1]).copied().unwrap_or(0);
            assert!(n >= T, "a median of {n} patients is published: {safe}");
            assert!(!r[1].is_empty(), "a median only where its count is: {safe}");
            let exact = g.one_value(&format!(
                "SELECT CAST(MEDIAN(CAST(numeric_value AS DOUBLE)) AS VARCHAR) {events} AND {key} = '{}'",
                r[0]
            ));
            let (a, b) = (
                r[2].parse::<f64>().expect("a number"),
                exact.parse::<f64>().expect("a number"),
            );
            assert!((a - b).abs() < 1e-9, "the exact median: {a} vs {b}");
            shown += 1;
        }
        assert!(shown >= shown_at_least, "{sql}: {safe}");
        assert_eq!(
            rows(&safe).iter().any(|r| r[2].is_empty()),
            some_hidden,
            "{sql}: {safe}"
        );
    }
}
