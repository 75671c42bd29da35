//! Lineage of query results from DataFusion's optimized plan: each trick from issue 11 as
//! a named test (refused, or classified so the checker treats it right), the differencing
//! ledger, and purge by lineage.

use std::sync::Arc;

use datafusion::datasource::MemTable;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use tre_pipeline::lineage::ledger::{
    ExtraFilterOn, Ledger, LedgerCell, LedgerEntry, Published, filter_difference,
};
use tre_pipeline::lineage::rules::FindingKind;
use tre_pipeline::lineage::{
    CheckerRole, OutputColumn, PopulationLineage, Role, SourceCatalog, SourceClass, ValueTransform,
    blocking_findings, checker_roles, classify, population,
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
    let roles = checker_roles(&c, false);
    assert_eq!(
        roles,
        vec![
            ("sex".to_string(), CheckerRole::Dimension),
            ("patients".to_string(), CheckerRole::Count),
            ("n".to_string(), CheckerRole::Ignore),
        ]
    );
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
    assert_eq!(checker_roles(&c, false)[0].1, CheckerRole::Block);
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
    assert_eq!(
        checker_roles(&c, false)[2].1,
        CheckerRole::Derived {
            numerator: Some("n".into()),
            denominator: None
        }
    );

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
    assert_eq!(checker_roles(&c, false)[1].1, CheckerRole::Count);
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
    let d = filter_difference(&b, &a).expect("differs by a filter");
    assert_eq!(d.extra_on, ExtraFilterOn::New);
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
        cells,
        audit_head: None,
    }
}

#[test]
fn ledger_finds_the_same_population_and_blocks_a_one_patient_filter_difference() {
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

    let minus_one =
        pop("SELECT sex, COUNT(*) AS n FROM patients WHERE lsoa <> 'E01001927' GROUP BY sex");
    let same = ledger.same_population(&minus_one).expect("same");
    assert_eq!(
        same.iter().map(|e| e.release.as_str()).collect::<Vec<_>>(),
        vec!["r1"]
    );
    let new_cells = cells(&[("F", 938.0), ("M", 906.0)]);
    let findings = ledger
        .differencing(&minus_one, &new_cells, 10.0)
        .expect("differencing");
    assert!(!findings.is_empty());
    assert!(findings.iter().all(|f| f.earlier_release == "r1"));
    assert!(findings.iter().any(|f| f.key.is_none()), "grand total");
    let text = findings[0].to_string();
    assert!(text.contains("r1") && text.contains("E01001927"), "{text}");
    // A filter that removes many patients is not a differencing attack by this rule.
    let big = cells(&[("F", 700.0), ("M", 650.0)]);
    assert!(
        ledger
            .differencing(&minus_one, &big, 10.0)
            .expect("differencing")
            .is_empty()
    );
    // The ledger files are private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("ledger/r1.json"))
        .expect("file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0);
}
