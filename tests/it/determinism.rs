//! The extract's determinism: two runs give byte-identical Parquet files.
//!
//! The Python side of interoperability (the real `tre extract` output read and re-derived
//! by pyarrow, pandas, polars, DuckDB and Python's own `hmac`; the ACRO side-by-side) runs
//! from `tests/interop/run.sh`, which `.ci/run` calls after `cargo test`.

use std::path::{Path, PathBuf};
use std::process::Output;

use super::util::{repo, s, today, tre_in_ok};

/// The real binary, in `dir`, with a cleared environment; must succeed.
fn tre(dir: &Path, args: &[&str]) -> Output {
    tre_in_ok(dir, args)
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
