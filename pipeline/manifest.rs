//! The extract manifest: `manifest.json`, the record of one extract, written last.
//!
//! Owns the manifest's types (docs/contracts.md, manifest.json, names their fields: keep
//! them, extend them).
//! Infrastructure below the stages: the extract fills it in, `tre purge` and the
//! research environment read it. Danger: a reader trusts only files a verifying
//! manifest names, so nothing here may be written before every file it lists.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::durable::FileRecord;

/// The manifest format written by this version.
pub const FORMAT: &str = "tre-extract-manifest/1";

/// A file read by the run.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct InputRecord {
    /// Path as given.
    pub path: String,
    /// SHA-256 of its bytes.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// An output file in a table's entry.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct OutputRecord {
    /// Path relative to the output directory.
    pub path: String,
    /// SHA-256.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// One table's accounting. `rows_read = rows_rejected + rows_removed_ndoo +
/// rows_removed_type1 + rows_filtered + rows_written`.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct TableReport {
    /// The input file(s).
    pub inputs: Vec<InputRecord>,
    /// Rows read.
    pub rows_read: u64,
    /// Rows sent to quarantine.
    pub rows_rejected: u64,
    /// Rejected rows by reason.
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// Rows removed for the National Data Opt-out.
    pub rows_removed_ndoo: u64,
    /// Rows removed for a Type 1 dissent (and not also on the NDOO list).
    pub rows_removed_type1: u64,
    /// Rows left out by the policy's row filters.
    pub rows_filtered: u64,
    /// Rows written.
    pub rows_written: u64,
    /// Rows of opted-out patients kept under a declared exemption.
    pub rows_kept_under_exemption: u64,
    /// The output file.
    pub output: Option<OutputRecord>,
    /// The quarantine file, if rows were rejected.
    pub quarantine: Option<OutputRecord>,
}

impl TableReport {
    /// Whether the accounting equation holds.
    pub fn balances(&self) -> bool {
        self.rows_read
            == self.rows_rejected
                + self.rows_removed_ndoo
                + self.rows_removed_type1
                + self.rows_filtered
                + self.rows_written
    }
}

/// The opt-out list used.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct OptOutRecord {
    /// The list's as-of date (`None` when exempt and no list was given).
    pub as_of: Option<String>,
    /// SHA-256 of the list.
    pub sha256: Option<String>,
    /// Entries on the list.
    pub entries: u64,
    /// The declared exemption, if any.
    pub exemption: Option<serde_json::Value>,
    /// The list's form: `"deny"` (`--opt-outs`: everyone on it removed) or `"allow"`
    /// (`--ndoo-allow-list`: everyone not on it removed); `None` when exempt and no list
    /// was given, and in manifests written before the field existed.
    #[serde(default)]
    pub kind: Option<String>,
    /// The list's file name (its last path component); `None` as for `kind`.
    #[serde(default)]
    pub file: Option<String>,
}

/// Type 1 handling.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Type1Record {
    /// Patients whose latest Type 1 code is a dissent.
    pub dissenters: u64,
    /// SHA-256 of the codelist used.
    pub codelist_sha256: String,
    /// The declared exemption, if any.
    pub exemption: Option<serde_json::Value>,
}

/// `manifest.json`: the record of one extract, written last.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Manifest {
    /// Manifest format.
    pub format: String,
    /// Version of tre.
    pub tool_version: String,
    /// Project id.
    pub project: String,
    /// Purpose (from the policy).
    pub purpose: String,
    /// SHA-256 of the policy file.
    pub policy_sha256: String,
    /// Fingerprint of the project key.
    pub key_fingerprint: String,
    /// National Data Opt-out list.
    pub opt_outs: OptOutRecord,
    /// Type 1 opt-outs.
    pub type1: Type1Record,
    /// Start time (RFC 3339).
    pub started_at: String,
    /// End time (RFC 3339).
    pub finished_at: String,
    /// Per table accounting.
    pub tables: BTreeMap<String, TableReport>,
    /// Every file in the output directory except the manifest.
    pub files: Vec<FileRecord>,
    /// Later purges of newly opted-out patients (`tre purge`); their rows are counted in
    /// `rows_removed_ndoo`, so the accounting equation still holds.
    #[serde(default)]
    pub purges: Vec<PurgeRecord>,
}

/// One `tre purge` applied to an extract.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PurgeRecord {
    /// When.
    pub at: String,
    /// The opt-out list's as-of date.
    pub opt_outs_as_of: String,
    /// SHA-256 of the list.
    pub opt_outs_sha256: String,
    /// Rows removed per table.
    pub rows_removed: BTreeMap<String, u64>,
}

/// Why an output directory cannot be trusted against its `manifest.json`.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The manifest could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The manifest.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The manifest is not an extract manifest.
    #[error("{} is not an extract manifest ({reason}); trust nothing in its folder", path.display())]
    NotAManifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong (a JSON error: names a position, never a data value).
        reason: String,
    },
    /// A file the manifest names is not a plain name inside the output directory.
    #[error("{} names {name:?}, which is not a file name inside its folder; trust nothing in it", path.display())]
    BadName {
        /// The manifest.
        path: PathBuf,
        /// The name.
        name: String,
    },
    /// A named file is missing or differs from its record.
    #[error("{} does not match manifest.json ({what}); trust nothing in its folder and rerun the extract", file.display())]
    Mismatch {
        /// The file.
        file: PathBuf,
        /// What differs: missing, size or sha256.
        what: &'static str,
    },
}

impl crate::error::Classify for VerifyError {
    fn kind(&self) -> crate::error::ErrorKind {
        match self {
            VerifyError::Io { .. } => crate::error::ErrorKind::Failed,
            _ => crate::error::ErrorKind::Refused,
        }
    }
}

/// Read `out/manifest.json` and check every file it names (`files`, and each table's
/// output and quarantine record) against its size and sha256, streaming each file once.
pub fn verify_dir(out: &Path) -> Result<Manifest, VerifyError> {
    let path = out.join("manifest.json");
    let bytes = std::fs::read(&path).map_err(|source| VerifyError::Io {
        path: path.clone(),
        source,
    })?;
    let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| VerifyError::NotAManifest {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let plain = |name: &str| -> Result<PathBuf, VerifyError> {
        let mut c = Path::new(name).components();
        match (c.next(), c.next()) {
            (Some(std::path::Component::Normal(n)), None) => Ok(out.join(n)),
            _ => Err(VerifyError::BadName {
                path: path.clone(),
                name: name.to_string(),
            }),
        }
    };
    let mut checks: Vec<(PathBuf, u64, &str)> = Vec::new();
    for f in &m.files {
        checks.push((plain(&f.path)?, f.size, &f.sha256));
    }
    for t in m.tables.values() {
        if let Some(o) = &t.output {
            checks.push((plain(&o.path)?, o.bytes, &o.sha256));
        }
        if let Some(q) = &t.quarantine {
            checks.push((PathBuf::from(&q.path), q.bytes, &q.sha256));
        }
    }
    for (file, size, sha256) in checks {
        check_file(&file, size, sha256)?;
    }
    Ok(m)
}

fn check_file(file: &Path, size: u64, sha256: &str) -> Result<(), VerifyError> {
    let mismatch = |what| VerifyError::Mismatch {
        file: file.to_path_buf(),
        what,
    };
    let (got_sha, got_size) = crate::digest::sha256_file(file).map_err(|_| mismatch("missing"))?;
    if got_size != size {
        return Err(mismatch("size"));
    }
    if got_sha != sha256 {
        return Err(mismatch("sha256"));
    }
    Ok(())
}
