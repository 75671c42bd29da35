//! Shared helpers for CLI tests: run the real `tre` binary in a fresh folder with a
//! cleared environment, and small readers for its outputs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The tests' fixed project key (bytes 20 21 .. 3f), as a key file holds it.
pub const TEST_KEY_HEX: &str = "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f";
/// The fingerprint of [`TEST_KEY_HEX`].
pub const TEST_KEY_FINGERPRINT: &str = "28290daffd0cb76c";

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh temporary folder per test.
pub struct Workdir {
    dir: tempfile::TempDir,
}

impl Workdir {
    pub fn new() -> Self {
        Workdir {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Run `tre` with a cleared environment (PATH and HOME only, plus `env`).
    pub fn tre_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        tre_in(self.path(), args, env)
    }

    pub fn tre(&self, args: &[&str]) -> Output {
        self.tre_env(args, &[])
    }

    /// Run and insist on exit 0.
    pub fn tre_ok(&self, args: &[&str]) -> Output {
        tre_in_ok(self.path(), args)
    }

    /// Run and insist on a given exit code; returns stderr.
    pub fn tre_code(&self, args: &[&str], code: i32) -> String {
        let out = self.tre(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "tre {args:?}:\n{}",
            show(&out)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Write a file (creating parent folders).
    pub fn write(&self, rel: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let p = self.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, content).expect("write");
        p
    }

    /// A key file with mode 0600 holding the tests' fixed key [`TEST_KEY_HEX`] (bytes
    /// 20 21 .. 3f; DESIGN.md's published vector 00 .. 1f is refused as a project key).
    pub fn test_key(&self) -> PathBuf {
        let p = self.write("project.key", format!("{TEST_KEY_HEX}\n"));
        chmod(&p, 0o600);
        p
    }
}

/// Run the real `tre` in `dir` with a cleared environment (PATH and HOME only, plus `env`).
pub fn tre_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tre"));
    cmd.args(args).current_dir(dir).env_clear();
    for k in ["PATH", "HOME"] {
        if let Ok(v) = std::env::var(k) {
            cmd.env(k, v);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run tre")
}

/// [`tre_in`] without extra environment, insisting on exit 0.
pub fn tre_in_ok(dir: &Path, args: &[&str]) -> Output {
    let out = tre_in(dir, args, &[]);
    assert!(out.status.success(), "tre {args:?} failed:\n{}", show(&out));
    out
}

/// Run any command to completion; panic with its output unless it succeeds.
pub fn run_ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    assert!(out.status.success(), "{what} failed\n{}", show(&out));
    out
}

/// A path as `&str` (temporary paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

pub fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

pub fn show(out: &Output) -> String {
    format!(
        "status: {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Today (UTC) as YYYY-MM-DD: what the binary compares opt-out list dates with.
pub fn today() -> String {
    #[allow(clippy::disallowed_methods)]
    chrono::Utc::now().date_naive().to_string()
}

/// Every value of every string column of a Parquet file, plus its row count.
pub fn parquet_strings(path: &Path) -> (usize, Vec<String>) {
    use arrow::array::{Array, StringArray};
    let f = std::fs::File::open(path).expect("open parquet");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .expect("parquet")
        .build()
        .expect("reader");
    let mut rows = 0;
    let mut out = Vec::new();
    for b in reader {
        let b = b.expect("batch");
        rows += b.num_rows();
        for c in b.columns() {
            if let Some(s) = c.as_any().downcast_ref::<StringArray>() {
                out.extend(s.iter().flatten().map(str::to_string));
            }
        }
    }
    (rows, out)
}

/// The values of one string column of a Parquet file.
pub fn parquet_column(path: &Path, name: &str) -> Vec<String> {
    use arrow::array::{Array, StringArray};
    let f = std::fs::File::open(path).expect("open parquet");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .expect("parquet")
        .build()
        .expect("reader");
    let mut out = Vec::new();
    for b in reader {
        let b = b.expect("batch");
        let c = b.column_by_name(name).expect("column");
        let c =
            arrow::compute::cast(c, &arrow::datatypes::DataType::Utf8).expect("a string column");
        let s = c
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("string column");
        out.extend(s.iter().flatten().map(str::to_string));
    }
    out
}
