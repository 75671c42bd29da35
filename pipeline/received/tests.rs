//! The classic attacks on a series of tables, built directly as received tables with
//! their memberships; the ledger on disk; the guard's speed on realistic sizes.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use super::table::write_membership;
use super::*;

/// A generated patient.
#[derive(Clone, Copy)]
pub(super) struct Patient {
    pub id: u32,
    pub age: u32,
    pub sex: u32,
    pub region: u32,
    pub lsoa: u32,
    pub practice: u32,
    pub ethnicity: u32,
    pub imd: u32,
    pub events: u32,
    pub years: f64,
}

/// A deterministic generator (splitmix64).
pub(super) struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        super::system::mix(self.0)
    }
    pub fn below(&mut self, n: u32) -> u32 {
        (self.next() % u64::from(n)) as u32
    }
}

pub(super) fn population(n: u32, seed: u64) -> Vec<Patient> {
    let mut r = Rng(seed);
    (0..n)
        .map(|id| {
            let s = r.below(1000);
            Patient {
                id,
                age: r.below(10),
                // About 0.4% indeterminate or unknown.
                sex: s % 2,
                region: r.below(7),
                lsoa: r.below(400),
                practice: r.below(200),
                ethnicity: r.below(5),
                imd: r.below(5),
                events: 1 + r.below(6),
                years: f64::from(20 + r.below(60)),
            }
        })
        .collect()
}

/// A table of patients (and rows, sum of years) by `key` over the patients `keep`s, each
/// cell hidden below `t` patients (a single table without totals needs nothing more).
pub(super) fn tabulate(
    id: &str,
    pop: &[Patient],
    t: u32,
    keep: impl Fn(&Patient) -> bool,
    key: impl Fn(&Patient) -> String,
    measures: &[&str],
) -> Release {
    let mut cells: BTreeMap<String, Vec<&Patient>> = BTreeMap::new();
    for p in pop.iter().filter(|p| keep(p)) {
        cells.entry(key(p)).or_default().push(p);
    }
    let contribution = |m: &str, p: &Patient| match m {
        "patients" => 1.0,
        "rows" => f64::from(p.events),
        _ => p.years,
    };
    let mut table = ReceivedTable {
        format: 1,
        table: id.into(),
        threshold: t,
        measures: measures.iter().map(|m| m.to_string()).collect(),
        cells: Vec::new(),
        totals: Vec::new(),
        sum_protection: None,
    };
    let mut membership = Membership::new(measures.len());
    for (i, (k, ps)) in cells.iter().enumerate() {
        let small = (ps.len() as u32) < t;
        let values = measures
            .iter()
            .map(|m| {
                if small {
                    Published::Hidden
                } else {
                    Published::Exact(ps.iter().map(|p| contribution(m, p)).sum())
                }
            })
            .collect();
        table.cells.push(ReceivedCell {
            key: vec![k.clone()],
            values,
        });
        for p in ps {
            let c: Vec<f64> = measures.iter().map(|m| contribution(m, p)).collect();
            membership.push(p.id, i as u32, &c);
        }
    }
    Release { table, membership }
}

fn count(
    id: &str,
    pop: &[Patient],
    keep: impl Fn(&Patient) -> bool,
    key: impl Fn(&Patient) -> String,
) -> Release {
    tabulate(id, pop, 10, keep, key, &["patients"])
}

/// The earlier table a refusal names, `"alone"` when the new table on its own is the cause.
fn refused_by(v: &GuardVerdict) -> Option<&str> {
    match v {
        GuardVerdict::Refused { earlier_table, .. } => {
            Some(earlier_table.as_deref().unwrap_or("alone"))
        }
        GuardVerdict::Clear => None,
    }
}

fn sex(p: &Patient) -> String {
    ["F", "M", "I"][p.sex as usize].to_string()
}

#[test]
fn differencing_by_an_anti_join_is_refused_naming_the_first_table() {
    let pop = population(3000, 1);
    let rules = GuardRules::new(10);
    let all = count("job-all", &pop, |_| true, sex);
    // Everyone except LSOA 7 (a handful of patients), by sex.
    let anti = count("job-anti", &pop, |p| p.lsoa != 7, sex);
    let v = check(&anti, std::slice::from_ref(&all), &rules);
    assert_eq!(refused_by(&v), Some("job-all"), "{v:?}");
    let GuardVerdict::Refused { message, .. } = &v else {
        unreachable!()
    };
    assert!(
        message.contains("job-all") && message.contains("fewer than 10"),
        "{message}"
    );
    // The same with an unrelated table in the ledger first: the first involved is named.
    let other = count("job-other", &population(50, 9), |_| true, sex);
    let v = check(&anti, &[other, all], &rules);
    assert_eq!(refused_by(&v), Some("job-all"), "{v:?}");
}

#[test]
fn the_refusal_holds_no_patient_value_or_group_size() {
    let pop = population(3000, 1);
    let all = count("job-all", &pop, |_| true, sex);
    let anti = count("job-anti", &pop, |p| p.lsoa != 7, sex);
    let small = pop.iter().filter(|p| p.lsoa == 7).count();
    let v = check(&anti, &[all], &GuardRules::new(10));
    let GuardVerdict::Refused { message, .. } = v else {
        panic!("expected a refusal")
    };
    let digits: String = message
        .split(|c: char| !c.is_ascii_digit())
        .filter(|d| !d.is_empty() && *d != "10")
        .collect();
    assert!(
        digits.is_empty() || !digits.contains(&small.to_string()),
        "{message}"
    );
    assert!(!message.contains(&format!(" {small} ")), "{message}");
}

#[test]
fn a_named_single_patient_is_refused() {
    let pop = population(2000, 2);
    let named = pop[123].id;
    let all = count("job-all", &pop, |_| true, sex);
    let but_one = count("job-but-one", &pop, |p| p.id != named, sex);
    let v = check(&but_one, std::slice::from_ref(&all), &GuardRules::new(10));
    assert_eq!(refused_by(&v), Some("job-all"), "{v:?}");
    // Asking for the one patient alone gives a hidden cell: nothing to combine.
    let alone = count("job-alone", &pop, |p| p.id == named, sex);
    assert!(
        alone
            .table
            .cells
            .iter()
            .all(|c| c.values[0] == Published::Hidden)
    );
    assert_eq!(
        check(&alone, &[all], &GuardRules::new(10)),
        GuardVerdict::Clear
    );
}

#[test]
fn an_identical_table_is_clear() {
    let pop = population(2000, 3);
    let a = count("job-a", &pop, |_| true, |p| format!("{}|{}", p.age, sex(p)));
    let mut b = a.clone();
    b.table.table = "job-b".into();
    assert_eq!(check(&b, &[a], &GuardRules::new(10)), GuardVerdict::Clear);
}

#[test]
fn ordinary_analysis_on_twenty_thousand_patients_is_clear() {
    let pop = population(20_000, 4);
    let rules = GuardRules::new(10);
    let age_sex = count(
        "job-age-sex",
        &pop,
        |_| true,
        |p| format!("{}|{}", p.age, sex(p)),
    );
    let age_region = count(
        "job-age-region",
        &pop,
        |_| true,
        |p| format!("{}|{}", p.age, p.region),
    );
    let started = Instant::now();
    let v = check(&age_region, std::slice::from_ref(&age_sex), &rules);
    eprintln!("age x region after age x sex: {:?}", started.elapsed());
    assert_eq!(v, GuardVerdict::Clear);
    // A third over the same population, and a sub-population's table.
    let age_imd = count(
        "job-age-imd",
        &pop,
        |_| true,
        |p| format!("{}|{}", p.age, p.imd),
    );
    let v = check(&age_imd, &[age_sex.clone(), age_region.clone()], &rules);
    assert_eq!(v, GuardVerdict::Clear);
    let region_sex_old = count(
        "job-old",
        &pop,
        |p| p.age >= 6,
        |p| format!("{}|{}", p.region, sex(p)),
    );
    let v = check(&region_sex_old, &[age_sex, age_region, age_imd], &rules);
    assert_eq!(v, GuardVerdict::Clear);
}

#[test]
fn hidden_cells_pinned_across_tables_are_refused() {
    // By region, one small region hidden; then regions 0 and 1 merged: region 1 published
    // in the first table, so region 0 is the difference.
    let mut pop = population(2000, 5);
    for p in pop.iter_mut() {
        if p.region == 0 {
            p.region = 2;
        }
    }
    for p in pop.iter_mut().take(4) {
        p.region = 0;
    }
    let moved_ones = pop.clone();
    let by_region = count("job-region", &pop, |_| true, |p| p.region.to_string());
    assert_eq!(by_region.table.cells[0].values[0], Published::Hidden);
    let merged = count(
        "job-merged",
        &pop,
        |_| true,
        |p| {
            if p.region <= 1 {
                "0-1".into()
            } else {
                p.region.to_string()
            }
        },
    );
    let v = check(
        &merged,
        std::slice::from_ref(&by_region),
        &GuardRules::new(10),
    );
    assert_eq!(refused_by(&v), Some("job-region"), "{v:?}");
    // Merged with another hidden region instead: both stay hidden, the pair is protected.
    let mut pop = moved_ones;
    for p in pop.iter_mut() {
        if p.region == 1 {
            p.region = 3;
        }
    }
    for p in pop.iter_mut().skip(4).take(3) {
        p.region = 1;
    }
    let by_region = count("job-region", &pop, |_| true, |p| p.region.to_string());
    let merged = count(
        "job-merged",
        &pop,
        |_| true,
        |p| {
            if p.region <= 1 {
                "0-1".into()
            } else {
                p.region.to_string()
            }
        },
    );
    assert_eq!(
        check(&merged, &[by_region], &GuardRules::new(10)),
        GuardVerdict::Clear
    );
}

#[test]
fn a_sum_of_a_small_group_is_refused_even_without_its_count() {
    let pop = population(3000, 6);
    let all = tabulate(
        "job-all",
        &pop,
        10,
        |_| true,
        sex,
        &["patients", "sum:years"],
    );
    let anti = tabulate("job-anti", &pop, 10, |p| p.lsoa != 7, sex, &["sum:years"]);
    let v = check(&anti, &[all], &GuardRules::new(10));
    assert_eq!(refused_by(&v), Some("job-all"), "{v:?}");
    let GuardVerdict::Refused { message, .. } = v else {
        unreachable!()
    };
    assert!(message.contains("sum:years"), "{message}");
}

#[test]
fn rounding_too_narrow_to_protect_a_difference_is_refused_wide_rounding_is_not() {
    let pop = population(3000, 7);
    let all = count("job-all", &pop, |_| true, sex);
    let round = |r: &Release, half: f64| {
        let mut r = r.clone();
        for c in &mut r.table.cells {
            if let Published::Exact(v) = c.values[0] {
                c.values[0] = Published::Interval((v - half).max(0.0), v + half);
            }
        }
        r
    };
    let anti = count("job-anti", &pop, |p| p.lsoa != 7, sex);
    let v = check(
        &round(&anti, 2.0),
        std::slice::from_ref(&all),
        &GuardRules::new(10),
    );
    assert_eq!(refused_by(&v), Some("job-all"), "{v:?}");
    let v = check(&round(&anti, 25.0), &[all], &GuardRules::new(10));
    assert_eq!(v, GuardVerdict::Clear);
}

#[test]
fn a_published_total_counts_as_a_row() {
    // Sex with I hidden, then the same with a grand total: I is the total minus F and M.
    let mut pop = population(2000, 8);
    for p in pop.iter_mut().take(5) {
        p.sex = 2;
    }
    let plain = count("job-plain", &pop, |_| true, sex);
    assert!(
        plain
            .table
            .cells
            .iter()
            .any(|c| c.values[0] == Published::Hidden)
    );
    let mut with_total = plain.clone();
    with_total.table.table = "job-total".into();
    with_total.table.totals.push(ReceivedTotal {
        cells: (0..plain.table.cells.len() as u32).collect(),
        values: vec![Published::Exact(pop.len() as f64)],
    });
    let v = check(&with_total, &[plain], &GuardRules::new(10));
    assert!(refused_by(&v).is_some(), "{v:?}");
}

#[test]
fn tables_over_other_patients_are_not_involved() {
    let pop = population(2000, 10);
    let (a, b): (Vec<Patient>, Vec<Patient>) = pop.iter().partition(|p| p.id % 2 == 0);
    let left = count("job-left", &a, |_| true, sex);
    let right = count("job-right", &b, |_| true, sex);
    let new = count("job-new", &a, |_| true, |p| p.age.to_string());
    let input = guard_related(&new, &[right.clone(), left.clone()]);
    assert_eq!(input, vec!["job-new", "job-left"]);
    assert_eq!(
        check(&new, &[right, left], &GuardRules::new(10)),
        GuardVerdict::Clear
    );
}

fn guard_related(new: &Release, earlier: &[Release]) -> Vec<String> {
    // The same pruning as the guard's: tables sharing patients, transitively.
    let mut reached: HashSet<u32> = new.membership.patient.iter().copied().collect();
    let mut out = vec![new.table.table.clone()];
    let mut taken = vec![false; earlier.len()];
    loop {
        let mut grew = false;
        for (i, e) in earlier.iter().enumerate() {
            if !taken[i] && e.membership.patient.iter().any(|p| reached.contains(p)) {
                taken[i] = true;
                grew = true;
                reached.extend(e.membership.patient.iter().copied());
                out.push(e.table.table.clone());
            }
        }
        if !grew {
            break;
        }
    }
    out
}

fn pseudonym(i: u32) -> String {
    format!("pseudo-{i:06}")
}

fn write(results: &std::path::Path, r: &Release, names: &[String]) -> ReceivedTableOnDisk {
    let on_disk = ReceivedTableOnDisk::new(results, &r.table.table);
    std::fs::create_dir_all(&on_disk.dir).expect("dir");
    std::fs::write(
        on_disk.cells_path(),
        serde_json::to_vec(&r.table).expect("json"),
    )
    .expect("write");
    write_membership(&on_disk.membership_path(), &r.table, &r.membership, names);
    on_disk
}

#[test]
fn the_ledger_lists_loads_checks_and_finds_patients_for_purge() {
    let dir = tempfile::tempdir().expect("tmp");
    let results = dir.path().join("results");
    assert!(
        list_received(&results)
            .expect("missing is empty")
            .is_empty()
    );
    let pop = population(1500, 11);
    let names: Vec<String> = (0..pop.len() as u32).map(pseudonym).collect();
    let all = write(&results, &count("job-1", &pop, |_| true, sex), &names);
    let anti = write(
        &results,
        &count("job-2", &pop, |p| p.lsoa != 7, sex),
        &names,
    );
    let fine = write(
        &results,
        &count("job-3", &pop, |_| true, |p| p.age.to_string()),
        &names,
    );
    std::fs::create_dir_all(results.join("job-4")).expect("a job without a table");
    let listed = list_received(&results).expect("list");
    assert_eq!(listed, vec![all.clone(), anti.clone(), fine.clone()]);
    let rules = GuardRules::new(10);
    let v = check_new_table(&anti, &[all.clone(), fine.clone()], &rules).expect("check");
    assert_eq!(refused_by(&v), Some("job-1"), "{v:?}");
    assert_eq!(
        check_new_table(&fine, std::slice::from_ref(&all), &rules).expect("check"),
        GuardVerdict::Clear
    );
    // A tight entry budget refuses rather than reading on.
    let tight = GuardRules {
        max_entries: 2000,
        ..rules.clone()
    };
    let v = check_new_table(&fine, std::slice::from_ref(&all), &tight).expect("check");
    assert!(refused_by(&v).is_some(), "{v:?}");
    // Purge: the tables holding a patient of LSOA 7 are all three; one outside job-2 only
    // the two others.
    let in_7 = pop
        .iter()
        .find(|p| p.lsoa == 7)
        .expect("someone in LSOA 7")
        .id;
    let wanted: HashSet<String> = [pseudonym(in_7)].into();
    assert_eq!(
        tables_containing(&listed, &wanted).expect("purge"),
        vec!["job-1", "job-3"]
    );
    let nobody: HashSet<String> = ["pseudo-none".to_string()].into();
    assert!(
        tables_containing(&listed, &nobody)
            .expect("purge")
            .is_empty()
    );
    // A cells.json naming another job is refused.
    std::fs::copy(all.cells_path(), fine.cells_path()).expect("copy");
    assert!(matches!(
        fine.read_table(),
        Err(ReceivedError::BadTable { .. })
    ));
}

/// Twenty tables of 10 to 200 cells over one population of 20,000 patients, each checked
/// against those before it, as an analyst would build them up: the figures of the
/// module's report (run with `--ignored --nocapture`; minutes in a debug build).
#[test]
#[ignore = "measures the guard at scale; minutes in a debug build"]
fn twenty_tables_over_twenty_thousand_patients() {
    let pop = population(20_000, 12);
    let rules = GuardRules::new(10);
    type Key = fn(&Patient) -> String;
    let keys: [(&str, Key); 20] = [
        ("age", |p| p.age.to_string()),
        ("sex", |p| sex(p)),
        ("region", |p| p.region.to_string()),
        ("age-sex", |p| format!("{}|{}", p.age, sex(p))),
        ("age-region", |p| format!("{}|{}", p.age, p.region)),
        ("sex-region", |p| format!("{}|{}", sex(p), p.region)),
        ("imd", |p| p.imd.to_string()),
        ("eth", |p| p.ethnicity.to_string()),
        ("age-imd", |p| format!("{}|{}", p.age, p.imd)),
        ("age-eth", |p| format!("{}|{}", p.age, p.ethnicity)),
        ("region-imd", |p| format!("{}|{}", p.region, p.imd)),
        ("region-eth", |p| format!("{}|{}", p.region, p.ethnicity)),
        ("sex-imd", |p| format!("{}|{}", sex(p), p.imd)),
        ("practice", |p| p.practice.to_string()),
        ("age-sex-region", |p| {
            format!("{}|{}|{}", p.age, sex(p), p.region)
        }),
        ("imd-eth", |p| format!("{}|{}", p.imd, p.ethnicity)),
        ("age-region-old", |p| format!("{}|{}", p.age, p.region)),
        ("sex-eth", |p| format!("{}|{}", sex(p), p.ethnicity)),
        ("age-imd-sex", |p| format!("{}|{}|{}", p.age, p.imd, sex(p))),
        ("region-practice", |p| {
            format!("{}|{}", p.region, p.practice / 20)
        }),
    ];
    let mut released: Vec<Release> = Vec::new();
    let mut refused = Vec::new();
    let mut slowest = std::time::Duration::ZERO;
    let started = Instant::now();
    for (name, key) in keys {
        let r = tabulate(
            &format!("job-{name}"),
            &pop,
            10,
            |_| true,
            key,
            &["patients", "rows"],
        );
        let t = Instant::now();
        let v = check(&r, &released, &rules);
        let took = t.elapsed();
        slowest = slowest.max(took);
        let said = match &v {
            GuardVerdict::Clear => "clear",
            GuardVerdict::Refused { message, .. } if message.contains("budget") => {
                "refused (budget)"
            }
            GuardVerdict::Refused { .. } => "refused (a small group exposed)",
        };
        eprintln!("{name}: {} cells, {took:?}, {said}", r.table.cells.len());
        match v {
            GuardVerdict::Clear => released.push(r),
            GuardVerdict::Refused { .. } => refused.push(name),
        }
    }
    eprintln!(
        "20 tables: {} released, refused {refused:?}; total {:?}, slowest check {slowest:?}",
        released.len(),
        started.elapsed()
    );
    // Each table, over the whole population, is a margin of the others: none singles out.
    assert!(released.len() >= 15, "refused {refused:?}");
}

#[test]
fn a_membership_file_reached_through_a_symlink_is_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let results = dir.path().join("results");
    let pop = population(200, 3);
    let names: Vec<String> = (0..pop.len() as u32).map(pseudonym).collect();
    let t = write(&results, &count("job-1", &pop, |_| true, sex), &names);
    let real = dir.path().join("elsewhere.parquet");
    std::fs::rename(t.membership_path(), &real).expect("move");
    std::os::unix::fs::symlink(&real, t.membership_path()).expect("symlink");
    let mut ids = PatientIds::default();
    let err = t.load(&mut ids, 1_000_000).expect_err("refused");
    assert!(err.to_string().contains("symlink"), "{err}");
}

/// A table of patients by code where one patient has several codes (a cell per code,
/// each patient in every cell of their codes), cells below `t` hidden.
fn by_code(id: &str, codes_of: &[Vec<u32>], t: u32) -> Release {
    let codes = codes_of.iter().flatten().max().map_or(0, |m| m + 1);
    let mut table = ReceivedTable {
        format: 1,
        table: id.into(),
        threshold: t,
        measures: vec!["patients".into()],
        cells: Vec::new(),
        totals: Vec::new(),
        sum_protection: None,
    };
    let mut membership = Membership::new(1);
    for c in 0..codes {
        let n = codes_of.iter().filter(|cs| cs.contains(&c)).count();
        let value = if (n as u32) < t {
            Published::Hidden
        } else {
            Published::Exact(n as f64)
        };
        table.cells.push(ReceivedCell {
            key: vec![format!("code{c}")],
            values: vec![value],
        });
        for (p, cs) in codes_of.iter().enumerate() {
            if cs.contains(&c) {
                membership.push(p as u32, c, &[1.0]);
            }
        }
    }
    Release { table, membership }
}

/// Each patient's codes (sorted, distinct) among `codes`: half the patients one code,
/// the others two to `1 + extra` draws.
fn code_sets(r: &mut Rng, patients: u32, codes: u32, extra: u32) -> Vec<Vec<u32>> {
    (0..patients)
        .map(|_| {
            let k = if r.below(2) == 0 {
                1
            } else {
                2 + r.below(extra)
            };
            let mut cs: Vec<u32> = (0..k).map(|_| r.below(codes)).collect();
            cs.sort_unstable();
            cs.dedup();
            cs
        })
        .collect()
}

#[test]
fn a_table_whose_cells_share_patients_is_clear_on_its_own() {
    // Counts per code, half the patients with one of thirty codes, the others with two
    // to nine: thousands of combinations held by one patient each, too many for one
    // programme each (without splits the guard runs out of budget); each is a small group
    // the reader could move to the codes' own groups (splits), so none is pinned or
    // narrowed.
    let codes_of = code_sets(&mut Rng(11), 6000, 30, 8);
    let t = by_code("job-codes", &codes_of, 10);
    assert_eq!(check(&t, &[], &GuardRules::new(10)), GuardVerdict::Clear);
}

#[test]
fn a_rare_code_beside_common_ones_is_proven_one_group_at_a_time() {
    // Counts per code: twenty common codes (half the patients with one of them alone)
    // and one rare code held by twelve patients, each with two to four common codes too.
    // The block is made too large for block-wide programmes, so each small group of the
    // rare code is proven by its own neighbourhood: the reader can move up to eleven of
    // the rare code's patients into any one of its groups only by emptying the others,
    // whose common codes the single-code groups make up. A neighbourhood grown breadth
    // first over one common code never reaches them; one that takes the rare row whole
    // and the largest group of every row does.
    let mut r = Rng(23);
    let mut codes_of = code_sets(&mut r, 3000, 20, 5);
    for _ in 0..12 {
        let k = 2 + r.below(3);
        let mut cs: Vec<u32> = (0..k).map(|_| r.below(20)).collect();
        cs.push(20);
        cs.sort_unstable();
        cs.dedup();
        codes_of.push(cs);
    }
    let t = by_code("job-rare", &codes_of, 10);
    let rules = GuardRules {
        block_groups: 50,
        ..GuardRules::new(10)
    };
    assert_eq!(check(&t, &[], &rules), GuardVerdict::Clear);
}

#[test]
fn a_small_group_pinned_inside_one_table_whose_cells_share_patients_is_refused() {
    // Every patient with code 1 also has code 0, and three have code 0 alone: the table
    // (503 with code 0, 500 with code 1) gives those three away as 503 - 500.
    let mut codes_of = vec![vec![0, 1]; 500];
    codes_of.extend(vec![vec![0]; 3]);
    let t = by_code("job-nested", &codes_of, 10);
    assert_eq!(
        refused_by(&check(&t, &[], &GuardRules::new(10))),
        Some("alone")
    );
}
