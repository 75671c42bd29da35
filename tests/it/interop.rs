//! Interop: the real `tre extract` output, read and re-derived by an independent checker
//! (`tests/interop/verify_extract.py`: pyarrow, pandas, polars, DuckDB and Python's own
//! `hmac`), and the extract's determinism (two runs give byte-identical Parquet files).
//!
//! These tests need Python 3.11 and PyPI, through `tests/interop/setup_venv.sh`
//! (`target/venv-interop`); a missing tool fails the test loudly, it never skips.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::util::{repo, run_ok, s, show, today, tre_in_ok};

/// The real binary, in `dir`, with a cleared environment; must succeed.
fn tre(dir: &Path, args: &[&str]) -> Output {
    tre_in_ok(dir, args)
}

/// The interop venv's python (created on first use; fatal if it cannot be).
fn venv_python() -> PathBuf {
    let out = run_ok(
        Command::new("bash").arg(repo().join("tests/interop/setup_venv.sh")),
        "tests/interop/setup_venv.sh",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default().trim().to_string();
    assert!(
        Path::new(&last).is_file(),
        "setup_venv.sh did not print the venv python\n{}",
        show(&out)
    );
    PathBuf::from(last)
}

/// `tre generate --patients 2000 --seed 7` and `tre keygen` into `dir`; returns (input, key).
fn generate_and_key(dir: &Path) -> (PathBuf, PathBuf) {
    let input = dir.join("in");
    let key = dir.join("key");
    tre(
        dir,
        &[
            "generate",
            "--patients",
            "2000",
            "--seed",
            "7",
            "--out",
            s(&input),
        ],
    );
    tre(dir, &["keygen", "--out", s(&key)]);
    (input, key)
}

fn extract(dir: &Path, input: &Path, key: &Path, out: &Path) {
    let policy = repo().join("policies/demo.toml");
    let opt_outs = input.join("opt_outs.txt");
    let as_of = today();
    tre(
        dir,
        &[
            "extract",
            "--policy",
            s(&policy),
            "--input",
            s(input),
            "--opt-outs",
            s(&opt_outs),
            "--key-file",
            s(key),
            "--out",
            s(out),
            "--opt-outs-as-of",
            &as_of,
        ],
    );
}

fn parquet_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".parquet"))
        .collect();
    names.sort();
    names
}

#[test]
fn checker_catches_planted_faults() {
    // The checker itself, on hand-made fixtures: clean passes, each planted leak is caught.
    run_ok(
        Command::new("bash").arg(repo().join("tests/interop/selftest.sh")),
        "tests/interop/selftest.sh",
    );
}

#[test]
fn extract_output_passes_independent_checker() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let (input, key) = generate_and_key(dir);
    let out = dir.join("out");
    extract(dir, &input, &key, &out);

    let python = venv_python();
    let policy = repo().join("policies/demo.toml");
    let verify = Command::new(&python)
        .arg(repo().join("tests/interop/verify_extract.py"))
        .args([s(&input), s(&out), s(&key), "--policy", s(&policy)])
        .output()
        .expect("cannot start verify_extract.py");
    assert!(
        verify.status.success(),
        "verify_extract.py found problems in the extract\n{}",
        show(&verify)
    );
}

#[test]
fn extract_is_deterministic() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let (input, key) = generate_and_key(dir);
    let (out1, out2) = (dir.join("out1"), dir.join("out2"));
    extract(dir, &input, &key, &out1);
    extract(dir, &input, &key, &out2);

    let names = parquet_files(&out1);
    assert!(!names.is_empty(), "the extract wrote no Parquet files");
    assert_eq!(
        names,
        parquet_files(&out2),
        "the two runs wrote different files"
    );
    for name in &names {
        let a = std::fs::read(out1.join(name)).expect("read run 1 output");
        let b = std::fs::read(out2.join(name)).expect("read run 2 output");
        assert!(
            a == b,
            "{name} differs between two runs on the same input and key ({} vs {} bytes)",
            a.len(),
            b.len()
        );
    }
}
