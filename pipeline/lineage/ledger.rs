//! The release ledger: every table a project has exported, with the lineage of its
//! population.
//!
//! Owns one JSON file per release (`<release>.json`, mode 0600) in a directory the caller
//! chooses, written once with [`crate::durable::write_new`]. Recording the same entry
//! again is not an error (it is an export's retry); a different entry for the same
//! release is. Inside a TRE workspace the export writes each entry as a sealed record of
//! the workspace (bound to its path and audit entry), and the TRE checks every entry's
//! seal before it trusts the ledger (`tre::release`); this module, below the TRE, only
//! reads past a seal's header line and never judges it. An entry holds the
//! release's population lineage (tables, joins, filters, group keys and their hashes),
//! its cells (published value, interval or hidden, and the true value for counts) and the
//! audit head at export; `tre purge` reads it to list the earlier releases computed over
//! data that held purged patients. Whether a new table discloses together with earlier
//! ones is not decided here: that is the received ledger's guard ([`crate::received`]),
//! which counts patients. Danger: the ledger holds true counts, so it never leaves the
//! workspace.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::PopulationLineage;
use crate::durable::{Mode, write_new};

/// Ledger failures.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// A release id that is not an id.
    #[error(
        "release id {id:?} is not a valid id (lowercase letters, digits, '.', '_', '-', at most 64, starting with a letter or digit)"
    )]
    BadId {
        /// The id.
        id: String,
    },
    /// The release is already in the ledger.
    #[error("release {release} is already in the ledger at {}; a release is recorded once", path.display())]
    Exists {
        /// The release.
        release: String,
        /// Its file.
        path: PathBuf,
    },
    /// A ledger file could not be read or parsed.
    #[error("ledger file {}: {message}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// A durable write failed.
    #[error(transparent)]
    Durable(#[from] crate::durable::DurableError),
}

impl crate::error::Classify for LedgerError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            LedgerError::BadId { .. } | LedgerError::Exists { .. } => ErrorKind::Refused,
            LedgerError::Read { .. } | LedgerError::Durable(_) => ErrorKind::Failed,
        }
    }
}

/// What a released cell showed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Published {
    /// Published as this value (possibly rounded).
    Value {
        /// The value.
        value: f64,
    },
    /// Hidden; an attacker's interval for it.
    Interval {
        /// Lower bound.
        lo: f64,
        /// Upper bound.
        hi: f64,
    },
    /// Hidden, interval unknown.
    Hidden,
}

/// One released cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerCell {
    /// Group key values of the row (category labels), in key order.
    pub key: Vec<String>,
    /// The statistic's column.
    pub column: String,
    /// Whether the column is a count.
    pub count: bool,
    /// What was published.
    pub published: Published,
    /// The true value (counts), for later differencing checks; never exported.
    pub true_value: Option<f64>,
}

/// The audit head at export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHead {
    /// Sequence number.
    pub seq: u64,
    /// Entry hash.
    pub hash: String,
}

/// One exported table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerEntry {
    /// Format version (1).
    pub format: u32,
    /// The project.
    pub project: String,
    /// The release id.
    pub release: String,
    /// The job whose result was released.
    pub job: Option<String>,
    /// When it was exported (RFC 3339, from the caller's clock).
    pub exported_at: String,
    /// The result's population lineage.
    pub population: PopulationLineage,
    /// The group keys' names in cell-key order (source columns and functions); empty in
    /// entries written before it was recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dims: Vec<String>,
    /// The released cells.
    pub cells: Vec<LedgerCell>,
    /// The audit head at export, if given.
    pub audit_head: Option<AuditHead>,
}

fn valid_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(&c))
}

/// A project's ledger directory.
#[derive(Debug, Clone)]
pub struct Ledger {
    dir: PathBuf,
}

/// The JSON of a ledger file: past the seal's header line when the TRE sealed it (the
/// TRE checks the seal; see the module docs).
fn json_of(bytes: &[u8]) -> &[u8] {
    if bytes.starts_with(b"tre-seal ")
        && let Some(nl) = bytes.iter().position(|&b| b == b'\n')
    {
        return &bytes[nl + 1..];
    }
    bytes
}

fn parse(path: &Path, bytes: &[u8]) -> Result<LedgerEntry, LedgerError> {
    serde_json::from_slice(json_of(bytes)).map_err(|e| LedgerError::Read {
        path: path.to_path_buf(),
        message: format!("not a ledger entry: {e}"),
    })
}

impl Ledger {
    /// The ledger in `dir` (created on first record).
    pub fn open(dir: &Path) -> Self {
        Ledger {
            dir: dir.to_path_buf(),
        }
    }

    /// The ledger's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of `release`'s entry.
    pub fn entry_path(&self, release: &str) -> Result<PathBuf, LedgerError> {
        if !valid_id(release) {
            return Err(LedgerError::BadId {
                id: release.to_string(),
            });
        }
        Ok(self.dir.join(format!("{release}.json")))
    }

    /// Record an exported table as `<release>.json`. Recording the same entry again is
    /// not an error (an export's retry); a different entry for the release is.
    pub fn record(&self, entry: &LedgerEntry) -> Result<PathBuf, LedgerError> {
        let path = self.entry_path(&entry.release)?;
        if let Some(existing) = self.entry(&entry.release)? {
            if existing == *entry {
                return Ok(path);
            }
            return Err(LedgerError::Exists {
                release: entry.release.clone(),
                path,
            });
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| LedgerError::Read {
            path: self.dir.clone(),
            message: format!("cannot create the ledger directory: {e}"),
        })?;
        let text = serde_json::to_vec_pretty(entry).map_err(|e| LedgerError::Read {
            path: path.clone(),
            message: e.to_string(),
        })?;
        write_new(&path, &text, Mode::Private)?;
        Ok(path)
    }

    /// The entry of `release`, if recorded.
    pub fn entry(&self, release: &str) -> Result<Option<LedgerEntry>, LedgerError> {
        let path = self.entry_path(release)?;
        match crate::durable::open_nofollow(&path) {
            Ok(mut f) => {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut f, &mut bytes).map_err(|e| LedgerError::Read {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                parse(&path, &bytes).map(Some)
            }
            Err(crate::durable::NoFollow::Io(_, e)) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => Err(LedgerError::Read {
                path,
                message: e.into_io().to_string(),
            }),
        }
    }

    /// Every recorded release, in release-id order.
    pub fn entries(&self) -> Result<Vec<LedgerEntry>, LedgerError> {
        let names = match crate::durable::read_dir_nofollow(&self.dir) {
            Ok(n) => n,
            Err(crate::durable::NoFollow::Io(_, e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Vec::new());
            }
            Err(e) => {
                return Err(LedgerError::Read {
                    path: self.dir.clone(),
                    message: e.into_io().to_string(),
                });
            }
        };
        let mut out = Vec::new();
        for name in names {
            let name = name.to_string_lossy();
            if let Some(release) = name.strip_suffix(".json").filter(|r| valid_id(r))
                && let Some(e) = self.entry(release)?
            {
                out.push(e);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_ids_are_ids() {
        assert!(valid_id("r-1.a_b"));
        assert!(!valid_id(""));
        assert!(!valid_id("../x"));
        assert!(!valid_id("R1"));
        assert!(!valid_id(&"a".repeat(65)));
    }
}
