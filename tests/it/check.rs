//! `tre check`: the output disclosure checker, end to end, plus the suppression property test
//! and the side-by-side comparison with ACRO.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use arrow::array::{Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use proptest::prelude::*;
use tre_pipeline::disclosure::{self, RoleSpec, Rules, Verdict};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/check")
        .join(name)
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Run the real `tre` in a fresh temp dir with a cleared environment.
fn tre(dir: &Path, args: &[&str]) -> Out {
    let o = Command::new(env!("CARGO_BIN_EXE_tre"))
        .current_dir(dir)
        .env_clear()
        .arg("check")
        .args(args)
        .output()
        .unwrap();
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn safe_table_exits_0() {
    let d = tempfile::tempdir().unwrap();
    for rules in ["acro-default", "opensafely", "ons-srs", "nhse-sde"] {
        let o = tre(d.path(), &[p(&data("safe.csv")), "--rules", rules]);
        assert_eq!(o.code, 0, "{rules}: {}{}", o.stdout, o.stderr);
        assert!(o.stdout.starts_with("RELEASABLE"));
    }
}

#[test]
fn a_closed_stdout_keeps_the_verdict_and_the_applied_table() {
    let d = tempfile::tempdir().unwrap();
    let run = |table: &str, apply: &Path| {
        crate::util::tre_closed_stdout(
            d.path(),
            &[
                "check",
                p(&data(table)),
                "--rules",
                "opensafely",
                "--apply",
                p(apply),
            ],
        )
    };
    let out = run("safe.csv", &d.path().join("a.csv"));
    assert_eq!(out.status.code(), Some(0), "{}", crate::util::show(&out));
    let out = run("two_dim.csv", &d.path().join("b.csv"));
    assert_eq!(out.status.code(), Some(1), "{}", crate::util::show(&out));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("panicked"),
        "{}",
        crate::util::show(&out)
    );
    assert!(d.path().join("b.csv").is_file(), "--apply still writes");
}

#[test]
fn small_cells_exit_1_with_json_findings_and_apply_is_safe() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("safe.csv");
    let o = tre(
        d.path(),
        &[
            p(&data("two_dim.csv")),
            "--rules",
            "opensafely",
            "--json",
            "--apply",
            p(&out),
        ],
    );
    assert_eq!(o.code, 1, "{}", o.stderr);
    let j: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(j["verdict"], "not-releasable");
    let findings = j["findings"].as_array().unwrap();
    let rows = |rule: &str| -> Vec<u64> {
        findings
            .iter()
            .filter(|f| f["rule"] == rule)
            .map(|f| f["row"].as_u64().unwrap())
            .collect()
    };
    // 3 (row 1) and 2 (row 4) are at or below 7.
    assert_eq!(rows("threshold"), vec![1, 4]);
    // With known row and column totals, 3 must be able to rise by 8 and fall to 0: the box
    // through (18-64, M) = 2 cannot let it fall by 3, so the box through 65+ is hidden too.
    assert_eq!(rows("secondary"), vec![2, 3, 5, 6]);
    let roles = j["roles"]["columns"].as_array().unwrap();
    assert!(roles.iter().any(|c| c["name"] == "n"
        && c["role"] == "count"
        && c["how"].as_str().unwrap().starts_with("inferred")));
    assert!(j["method"][1].as_str().unwrap().contains("hypercube"));
    assert!(
        j["attacker_model"][0]
            .as_str()
            .unwrap()
            .contains("true totals")
    );

    let written = std::fs::read_to_string(&out).unwrap();
    assert_eq!(
        written,
        "age_band,sex,n\n0-17,F,\n0-17,M,\n18-64,F,\n18-64,M,\n65+,F,\n65+,M,\n"
    );
    // The safe version passes.
    let again = tre(d.path(), &[p(&out), "--rules", "opensafely"]);
    assert_eq!(again.code, 0, "{}", again.stdout);
}

#[test]
fn parquet_in_parquet_out() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("t.parquet");
    let schema = Arc::new(Schema::new(vec![
        Field::new("region", DataType::Utf8, false),
        Field::new("n", DataType::Int64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec!["a", "b", "c"])),
            Arc::new(Int64Array::from(vec![4, 50, 61])),
        ],
    )
    .unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&input).unwrap(), schema, None)
            .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let out = d.path().join("safe.parquet");
    let o = tre(
        d.path(),
        &[p(&input), "--rules", "acro-default", "--apply", p(&out)],
    );
    assert_eq!(o.code, 1, "{}", o.stderr);
    let b = disclosure::read_table(&out).unwrap();
    let n = b[0]
        .column(1)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    assert_eq!(n.iter().collect::<Vec<_>>(), vec![None, None, Some(61)]);
}

#[test]
fn malformed_tables_exit_2_with_a_clear_message() {
    let d = tempfile::tempdir().unwrap();
    for (file, extra, want) in [
        ("no_count.csv", vec![], "no count column"),
        (
            "non_numeric_count.csv",
            vec!["--counts", "n"],
            "data row 2 is not a number",
        ),
        ("duplicate_keys.csv", vec![], "duplicate dimension keys"),
        ("margins_wrong.csv", vec![], "does not equal the sum"),
        (
            "margins_missing.csv",
            vec!["--margins"],
            "margins were claimed present",
        ),
    ] {
        let mut args = vec![
            p(&data(file)).to_string(),
            "--rules".into(),
            "acro-default".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let o = tre(d.path(), &args);
        assert_eq!(o.code, 2, "{file}: {}{}", o.stdout, o.stderr);
        assert!(o.stderr.contains(want), "{file}: {}", o.stderr);
        assert!(!o.stderr.contains("abc"), "{file}: echoes a value");
    }
    let o = tre(
        d.path(),
        &[p(&data("safe.csv")), "--rules", "no-such-preset"],
    );
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("acro-default"));
}

#[test]
fn margins_in_the_table_are_checked_and_can_be_complements() {
    let d = tempfile::tempdir().unwrap();
    let o = tre(
        d.path(),
        &[
            p(&data("margins_ok.csv")),
            "--rules",
            "acro-default",
            "--json",
        ],
    );
    assert_eq!(o.code, 0, "{}", o.stdout);
    let j: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(j["roles"]["margins_present"], true);
}

#[test]
fn row_level_data_is_blocked_and_apply_refused() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("x.csv");
    let o = tre(
        d.path(),
        &[
            p(&data("row_level.csv")),
            "--rules",
            "opensafely",
            "--apply",
            p(&out),
        ],
    );
    assert_eq!(o.code, 1);
    assert!(o.stdout.starts_with("BLOCKED"));
    assert!(
        !o.stdout.contains("dd5c602e"),
        "the report echoes a pseudonym"
    );
    assert!(!out.exists());
}

#[test]
fn dominance_needs_contributors_and_flags_dominated_cells() {
    let d = tempfile::tempdir().unwrap();
    let o = tre(
        d.path(),
        &[
            p(&data("dominance.csv")),
            "--rules",
            "acro-default",
            "--json",
        ],
    );
    assert_eq!(o.code, 1);
    let j: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    let f = j["findings"].as_array().unwrap();
    // North: 950 + 10 of 1000 -> nk 96% > 90%; p = (1000-960)/950 = 4% < 10%.
    for rule in ["p-ratio", "nk-rule"] {
        assert!(
            f.iter()
                .any(|x| x["rule"] == rule && x["row"] == 1 && x["column"] == "cost_sum"),
            "{rule}"
        );
    }
    // Without contributor columns the dominance rules cannot be checked: that fails too.
    let o = tre(
        d.path(),
        &[
            p(&data("dominance.csv")),
            "--rules",
            "acro-default",
            "--magnitudes",
            "cost_sum",
            "--dims",
            "region",
            "--counts",
            "n",
        ],
    );
    assert_eq!(o.code, 1);
    assert!(
        o.stdout.contains("dominance-unchecked") || o.stdout.contains("p-ratio"),
        "{}",
        o.stdout
    );
}

#[test]
fn markdown_and_html_reports() {
    let d = tempfile::tempdir().unwrap();
    let md = tre(
        d.path(),
        &[
            p(&data("two_dim.csv")),
            "--rules",
            "nhse-sde",
            "--format",
            "markdown",
        ],
    );
    assert!(md.stdout.starts_with("# Output check: NOT RELEASABLE"));
    assert!(md.stdout.contains("| threshold | suppress | 1 |"));
    let html = tre(
        d.path(),
        &[
            p(&data("two_dim.csv")),
            "--rules",
            "nhse-sde",
            "--format",
            "html",
        ],
    );
    assert!(
        html.stdout.starts_with("<!doctype html>") && html.stdout.contains("<td>secondary</td>")
    );
}

// ---------------------------------------------------------------------------------------
// Property test: after apply, every published cell meets the threshold and every suppressed
// cell's feasible interval (given published cells, totals and non-negativity) has width > 0.
// The interval is found by an exhaustive integer search, independent of the checker's graph
// method.

/// A cell of the verifier's model: known value or unknown variable.
#[derive(Clone, Copy, Debug)]
enum V {
    Known(i64),
    Var(usize),
}

/// Lines: sum(members) == total.
struct Model {
    lines: Vec<(Vec<V>, V)>,
    nvars: usize,
}

/// Exhaustive search for every variable's min and max over integer solutions >= 0.
fn bounds(m: &Model, budget: &mut u64) -> Option<Vec<(i64, i64)>> {
    let mut best = vec![(i64::MAX, i64::MIN); m.nvars];
    let mut assign: Vec<Option<i64>> = vec![None; m.nvars];
    fn val(v: V, a: &[Option<i64>]) -> Option<i64> {
        match v {
            V::Known(x) => Some(x),
            V::Var(i) => a[i],
        }
    }
    fn rec(
        m: &Model,
        a: &mut Vec<Option<i64>>,
        best: &mut Vec<(i64, i64)>,
        budget: &mut u64,
    ) -> bool {
        if *budget == 0 {
            return false;
        }
        *budget -= 1;
        // Check lines; find a forced variable or the tightest upper bound.
        let mut next: Option<(usize, i64, i64)> = None;
        for (members, total) in &m.lines {
            let unknown: Vec<V> = members
                .iter()
                .chain(std::iter::once(total))
                .copied()
                .filter(|v| val(*v, a).is_none())
                .collect();
            let s: i64 = members.iter().filter_map(|v| val(*v, a)).sum();
            let t = val(*total, a);
            match (unknown.len(), t) {
                (0, Some(t)) if s != t => return true,
                (_, Some(t)) if s > t => return true,
                (1, Some(t)) => {
                    if let V::Var(i) = unknown[0] {
                        next = Some((i, t - s, t - s));
                        break;
                    }
                }
                (1, None) => {
                    if let V::Var(i) = unknown[0] {
                        next = Some((i, s, s));
                        break;
                    }
                }
                _ => {}
            }
        }
        let (i, lo, hi) = match next {
            Some(n) => n,
            None => {
                let Some(i) = (0..a.len()).find(|i| a[*i].is_none()) else {
                    for (j, x) in a.iter().enumerate() {
                        let x = x.unwrap();
                        best[j].0 = best[j].0.min(x);
                        best[j].1 = best[j].1.max(x);
                    }
                    return true;
                };
                // Upper bound: smallest known remaining total of a line containing i.
                let mut hi = 100_000;
                for (members, total) in &m.lines {
                    if members.iter().any(|v| matches!(v, V::Var(j) if *j == i))
                        && let Some(t) = val(*total, a)
                    {
                        let s: i64 = members.iter().filter_map(|v| val(*v, a)).sum();
                        hi = hi.min(t - s);
                    }
                }
                (i, 0, hi)
            }
        };
        if lo < 0 || hi < lo {
            return true;
        }
        for x in lo..=hi {
            a[i] = Some(x);
            if !rec(m, a, best, budget) {
                return false;
            }
        }
        a[i] = None;
        true
    }
    if !rec(m, &mut assign, &mut best, budget) {
        return None;
    }
    Some(best)
}

/// Build a table (1-D or 2-D, margins in the table or not) as CSV text and the true grid.
fn table_csv(rows: usize, cols: usize, vals: &[i64], margins: bool) -> String {
    let mut s = if cols == 0 {
        "a,n\n".to_string()
    } else {
        "a,b,n\n".to_string()
    };
    let r = rows.max(1);
    let c = cols.max(1);
    let cell = |i: usize, j: usize| vals[i * c + j];
    for i in 0..r {
        for j in 0..c {
            if cols == 0 {
                s.push_str(&format!("r{i},{}\n", cell(i, j)));
            } else {
                s.push_str(&format!("r{i},c{j},{}\n", cell(i, j)));
            }
        }
        if margins && cols > 0 {
            s.push_str(&format!(
                "r{i},Total,{}\n",
                (0..c).map(|j| cell(i, j)).sum::<i64>()
            ));
        }
    }
    if margins {
        if cols > 0 {
            for j in 0..c {
                s.push_str(&format!(
                    "Total,c{j},{}\n",
                    (0..r).map(|i| cell(i, j)).sum::<i64>()
                ));
            }
            s.push_str(&format!("Total,Total,{}\n", vals.iter().sum::<i64>()));
        } else {
            s.push_str(&format!("Total,{}\n", vals.iter().sum::<i64>()));
        }
    }
    s
}

fn property_rules(zeros: bool) -> Rules {
    // acro-default's threshold, rounding off so published values are exact for the verifier.
    let text = include_str!("../../policies/output-rules/acro-default.toml").replace(
        "zeros_disclosive = true",
        &format!("zeros_disclosive = {zeros}"),
    );
    Rules::parse(&text, "property").unwrap()
}

fn check_property(
    rows: usize,
    cols: usize,
    vals: Vec<i64>,
    margins: bool,
    zeros: bool,
) -> Result<(), TestCaseError> {
    let csv = table_csv(rows, cols, &vals, margins);
    let batch = disclosure::read_csv(csv.as_bytes(), "gen").unwrap();
    let rules = property_rules(zeros);
    let rep = disclosure::check(&[batch], &RoleSpec::default(), &rules).unwrap();
    if rep.summary.contains_key("unprotected") {
        // The checker says it cannot protect this table: it must not call it releasable.
        prop_assert_ne!(rep.verdict, Verdict::Releasable);
        return Ok(());
    }
    let safe = rep.apply().unwrap();
    let ncols = safe.num_columns();
    let n = safe
        .column(ncols - 1)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .clone();
    let key = |row: usize| -> (String, String) {
        let s = |c: usize| {
            safe.column(c)
                .as_any()
                .downcast_ref::<StringArray>()
                .map(|a| a.value(row).to_string())
                .unwrap_or_default()
        };
        (s(0), if cols > 0 { s(1) } else { String::new() })
    };
    // Every published cell meets the threshold (zeros only where zeros are safe).
    for i in 0..n.len() {
        if !n.is_null(i) {
            let v = n.value(i);
            prop_assert!(
                v >= 10 || (v == 0 && !zeros),
                "published {v} at row {i}\n{csv}"
            );
        }
    }
    // Verifier model over the full grid (R+1)x(C+1) (1-D: R+1 cells).
    let (r, c) = if cols == 0 { (rows, 1) } else { (rows, cols) };
    let mut grid: Vec<V> = Vec::new();
    let mut truth: Vec<i64> = Vec::new();
    let idx = |i: usize, j: usize| i * (c + 1) + j;
    for i in 0..=r {
        for j in 0..=c {
            let t = match (i == r, j == c) {
                (false, false) => vals[i * c + j],
                (false, true) => (0..c).map(|j| vals[i * c + j]).sum(),
                (true, false) => (0..r).map(|i| vals[i * c + j]).sum(),
                (true, true) => vals.iter().sum(),
            };
            truth.push(t);
            grid.push(V::Known(t)); // totals not in the table: see the model below
        }
    }
    let mut nvars = 0;
    let mut var_cells = Vec::new();
    for row in 0..n.len() {
        if n.is_null(row) {
            let (a, b) = key(row);
            let i = if a == "Total" {
                r
            } else {
                a[1..].parse::<usize>().unwrap()
            };
            let j = if cols == 0 {
                0
            } else if b == "Total" {
                c
            } else {
                b[1..].parse::<usize>().unwrap()
            };
            let j = if cols == 0 && a == "Total" { 0 } else { j };
            let cell = if cols == 0 && a == "Total" {
                idx(r, 0)
            } else {
                idx(i, j)
            };
            grid[cell] = V::Var(nvars);
            var_cells.push(cell);
            nvars += 1;
        }
    }
    // The model (docs/attacker-model.md, single-table model): a total the table leaves out
    // is known only when it passes the rules (a total below the threshold, or a disclosive
    // zero, is never published under them).
    for i in 0..=r {
        for j in 0..=c {
            let margin = i == r || j == c;
            let t = truth[idx(i, j)];
            let fails = t < 10 && (t != 0 || zeros);
            if margin && fails && matches!(grid[idx(i, j)], V::Known(_)) {
                grid[idx(i, j)] = V::Var(nvars);
                nvars += 1;
            }
        }
    }
    let mut lines = Vec::new();
    if cols == 0 {
        lines.push(((0..r).map(|i| grid[idx(i, 0)]).collect(), grid[idx(r, 0)]));
    } else {
        for i in 0..=r {
            lines.push(((0..c).map(|j| grid[idx(i, j)]).collect(), grid[idx(i, c)]));
        }
        for j in 0..=c {
            lines.push(((0..r).map(|i| grid[idx(i, j)]).collect(), grid[idx(r, j)]));
        }
    }
    let model = Model { lines, nvars };
    let mut budget = 3_000_000u64;
    let Some(b) = bounds(&model, &mut budget) else {
        return Ok(()); // too many solutions to enumerate: certainly not exactly determined
    };
    for (k, cell) in var_cells.iter().enumerate() {
        let (lo, hi) = b[k];
        prop_assert!(
            lo <= truth[*cell] && truth[*cell] <= hi,
            "true value outside the bounds\n{csv}"
        );
        prop_assert!(
            hi > lo,
            "suppressed cell {cell} (true {}) is determined exactly: [{lo}, {hi}]\n{csv}",
            truth[*cell]
        );
        if cols == 0 {
            // 1-D: each hidden cell's interval spans at least the threshold, or all the
            // known total allows a priori (a cell lies in [0, total] whatever is hidden).
            let total = truth[idx(r, 0)];
            prop_assert!(
                hi - lo >= 10.min(total),
                "1-D interval [{lo}, {hi}] narrower than the threshold\n{csv}"
            );
        }
    }
    // And the safe table passes a re-check.
    let again = disclosure::check(&[safe], &RoleSpec::default(), &rules).unwrap();
    prop_assert_eq!(
        again.verdict,
        Verdict::Releasable,
        "{}",
        again.render(disclosure::Format::Text)
    );
    Ok(())
}

fn value() -> impl Strategy<Value = i64> {
    prop_oneof![3 => 0i64..10, 5 => 10i64..40]
}

proptest! {
    // Each case runs the real binary and an exhaustive attacker: 40 cases keep the suite
    // inside CI's budget; the library's own property tests cover the LP audit more widely.
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn one_dim_tables_are_protected(
        (rows, vals) in (2usize..7).prop_flat_map(|r| (Just(r), proptest::collection::vec(value(), r))),
        margins in any::<bool>(),
        zeros in any::<bool>(),
    ) {
        check_property(rows, 0, vals, margins, zeros)?;
    }

    #[test]
    fn two_dim_tables_are_protected(
        (rows, cols, vals) in (2usize..5, 2usize..5).prop_flat_map(|(r, c)| (Just(r), Just(c), proptest::collection::vec(value(), r * c))),
        margins in any::<bool>(),
        zeros in any::<bool>(),
    ) {
        check_property(rows, cols, vals, margins, zeros)?;
    }
}

// The ACRO side-by-side (tests/acro/side_by_side.py) runs from tests/interop/run.sh, with
// pinned versions, outside `cargo test`.

// ---------------------------------------------------------------------------------------
// Case files: `tests/cases/check/NAME.csv` is a table whose leading `# args:` line gives the
// `tre check` arguments; `NAME.expected` holds the exit status, the text report and the safe
// table (pretty-printed). `BLESS=1 cargo test --test it check::cases` rewrites expectations.

/// The safe table as an aligned text table, so a failure prints something to paste.
fn pretty(path: &Path) -> String {
    let batches = disclosure::read_table(path).unwrap();
    arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string()
}

fn run_case(case: &Path) -> String {
    let text = std::fs::read_to_string(case).unwrap();
    let (args, table): (Vec<&str>, Vec<&str>) = text.lines().partition(|l| l.starts_with('#'));
    let args: Vec<String> = args
        .iter()
        .filter_map(|l| l.strip_prefix("# args:"))
        .flat_map(|l| l.split_whitespace().map(str::to_string))
        .collect();
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("table.csv");
    std::fs::write(&input, table.join("\n") + "\n").unwrap();
    let safe = d.path().join("safe.csv");
    let mut all: Vec<&str> = vec![p(&input)];
    all.extend(args.iter().map(String::as_str));
    all.extend(["--apply", p(&safe)]);
    let o = tre(d.path(), &all);
    let dir = p(d.path()).to_string();
    let mut out = format!(
        "exit: {}\n--- report\n{}",
        o.code,
        o.stdout.replace(&dir, "$DIR")
    );
    if !o.stderr.is_empty() {
        out.push_str(&format!("--- stderr\n{}", o.stderr.replace(&dir, "$DIR")));
    }
    if safe.exists() {
        out.push_str(&format!("--- safe table\n{}\n", pretty(&safe)));
    } else {
        out.push_str("--- safe table\n(not written)\n");
    }
    out
}

#[test]
fn cases() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases/check");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 8,
        "expected the case files in {}",
        dir.display()
    );
    let bless = std::env::var("BLESS").is_ok_and(|v| v == "1");
    let mut failed = Vec::new();
    for case in &cases {
        let got = run_case(case);
        let expected_path = case.with_extension("expected");
        if bless {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if got != want {
            failed.push(format!(
                "--- {} (run with BLESS=1 to accept)\n{got}",
                case.display()
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// Write `text` to `name` in `dir`; its path.
fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_sum_hidden_with_its_small_count_gets_a_complement() {
    // Issue 22 point 8: with only r0's sum hidden, 120 = 3820 - 900 - 1300 - 1500.
    let d = tempfile::tempdir().unwrap();
    let table = write(
        d.path(),
        "sums.csv",
        "a,n,cost_sum\nr0,3,120\nr1,40,900\nr2,55,1300\nr3,60,1500\nTotal,158,3820\n",
    );
    for rules in ["opensafely", "nhse-sde"] {
        let out = d.path().join(format!("safe-{rules}.csv"));
        let o = tre(d.path(), &[p(&table), "--rules", rules, "--apply", p(&out)]);
        assert_eq!(o.code, 1, "{rules}: {}{}", o.stdout, o.stderr);
        let written = std::fs::read_to_string(&out).unwrap();
        let hidden_sums = written.lines().skip(1).filter(|l| l.ends_with(',')).count();
        assert!(hidden_sums >= 2, "{rules}: {written}");
        assert!(written.lines().nth(1).unwrap().ends_with(",,"), "{written}");
        // The safe table re-checks clean: hidden sums are tested for width, not passed.
        let again = tre(d.path(), &[p(&out), "--rules", rules]);
        assert_eq!(again.code, 0, "{}", again.stdout);
    }
}

#[test]
fn midpoint6_rounds_the_totals_and_pins_no_band() {
    let d = tempfile::tempdir().unwrap();
    let table = write(d.path(), "m.csv", "a,n\nr0,1\nr1,49\nTotal,50\n");
    let out = d.path().join("safe.csv");
    let o = tre(
        d.path(),
        &[
            p(&table),
            "--rules",
            "opensafely-midpoint6",
            "--apply",
            p(&out),
        ],
    );
    assert_ne!(o.code, 2, "{}{}", o.stdout, o.stderr);
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "a,n\nr0,3\nr1,51\nTotal,51\n"
    );
    // A rules file that takes the true totals as known: the audit sees the pin, refuses.
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("policies/output-rules/opensafely-midpoint6.toml"),
    )
    .unwrap()
    .replace("assume_totals_known = false", "assume_totals_known = true");
    let rules = write(d.path(), "known.toml", &text);
    let refused = d.path().join("refused.csv");
    let o = tre(
        d.path(),
        &[
            p(&table),
            "--rules",
            p(&rules),
            "--json",
            "--apply",
            p(&refused),
        ],
    );
    assert_ne!(o.code, 0, "{}", o.stdout);
    let j: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert!(
        j["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["rule"] == "unprotected" && f["row"] == 1),
        "{}",
        o.stdout
    );
    assert!(!refused.exists());
}

/// The `acro-default` preset with these structural zeros, written as a rules file.
fn acro_with_zeros(dir: &Path, zeros: &str) -> PathBuf {
    let text = format!(
        "structural_zeros = [{zeros}]\n{}",
        include_str!("../../policies/output-rules/acro-default.toml")
    );
    write(dir, "zeros.toml", &text)
}

/// `tre check TABLE --rules RULES --json --apply OUT`: the exit code and the JSON report.
fn check_and_apply(dir: &Path, table: &Path, rules: &Path, out: &Path) -> (i32, serde_json::Value) {
    let o = tre(
        dir,
        &[p(table), "--rules", p(rules), "--json", "--apply", p(out)],
    );
    let j =
        serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}{}", o.stdout, o.stderr));
    (o.code, j)
}

#[test]
fn structural_zeros_declared_in_a_rules_file_are_shown_and_never_protection() {
    let d = tempfile::tempdir().unwrap();
    let rules = acro_with_zeros(d.path(), "{ sex = \"M\", pregnant = \"yes\" }");
    let table = write(
        d.path(),
        "t.csv",
        "sex,pregnant,n\nF,yes,5\nF,no,300\nF,unknown,4\nM,yes,0\nM,no,280\nM,unknown,3\n",
    );
    let out = d.path().join("safe.csv");
    let (code, j) = check_and_apply(d.path(), &table, &rules, &out);
    assert_eq!(code, 1, "{j}");
    // No finding on M,yes (row 4): not a disclosive zero, not a complement.
    assert!(
        j["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["row"] != 4),
        "{j}"
    );
    let written = std::fs::read_to_string(&out).unwrap();
    assert!(written.contains("\nM,yes,0\n"), "{written}");
    assert!(written.contains("\nF,yes,\n"), "{written}");
    // Under the preset alone (no declaration), the zero is hidden as disclosive.
    let o = tre(d.path(), &[p(&table), "--rules", "acro-default", "--json"]);
    let j: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert!(
        j["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["row"] == 4 && f["rule"] == "zero")
    );
}

#[test]
fn a_refusal_names_the_cells_and_the_categories_to_combine() {
    let d = tempfile::tempdir().unwrap();
    let rules = acro_with_zeros(
        d.path(),
        "{ a = \"x\", b = \"q\" }, { a = \"x\", b = \"r\" }",
    );
    let table = write(
        d.path(),
        "r.csv",
        "a,b,n\nx,p,3\nx,q,0\nx,r,0\ny,p,50\ny,q,60\ny,r,55\nz,p,40\nz,q,70\nz,r,45\n",
    );
    let out = d.path().join("safe.csv");
    let (code, j) = check_and_apply(d.path(), &table, &rules, &out);
    assert_ne!(code, 0, "{j}");
    assert!(!out.exists(), "nothing is written for a refused table");
    let advice = j["table_findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["rule"] == "refusal")
        .map(|f| f["reason"].as_str().unwrap().to_string())
        .expect("refusal advice");
    assert!(
        advice.contains("n [x, p]") && advice.contains("combine \"x\" and \"z\" of \"a\""),
        "{advice}"
    );
}

#[test]
fn postcode_district_is_checked_as_a_geography() {
    let d = tempfile::tempdir().unwrap();
    let table = write(
        d.path(),
        "pd.csv",
        "postcode_district,n\nLS1,40\nLS2,50\nLS3,60\n",
    );
    let o = tre(d.path(), &[p(&table), "--rules", "ons-srs"]);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert!(o.stdout.starts_with("RELEASABLE"));
}
