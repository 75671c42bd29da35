//! The differencing ledger: every table a project has exported, kept to audit new ones.
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
//! audit head at export. It answers two questions before a new release: which earlier
//! releases describe the same population up to filters (for the joint LP audit of the
//! disclosure checker), and whether the new table differs from one of them only by added
//! filter conjuncts that remove fewer than T patients, which would reveal those patients
//! by subtraction. Danger: the ledger holds true counts, so it never leaves the workspace
//! and findings name releases, columns and group labels, never a patient's value.

use std::collections::BTreeMap;
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
    /// The group keys' names in cell-key order (source columns and functions), for the
    /// joint audit; empty in entries written before it was recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dims: Vec<String>,
    /// The released cells.
    pub cells: Vec<LedgerCell>,
    /// The audit head at export, if given.
    pub audit_head: Option<AuditHead>,
}

impl LedgerEntry {
    /// Per count column, the total of its cells (true values where known).
    pub fn count_totals(&self) -> BTreeMap<String, f64> {
        count_totals(&self.cells)
    }
}

fn count_totals(cells: &[LedgerCell]) -> BTreeMap<String, f64> {
    let mut t = BTreeMap::new();
    for c in cells.iter().filter(|c| c.count) {
        let v = c.true_value.or(match c.published {
            Published::Value { value } => Some(value),
            _ => None,
        });
        *t.entry(c.column.clone()).or_insert(0.0) += v.unwrap_or(0.0);
    }
    t
}

/// Which side has the extra filter conjuncts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtraFilterOn {
    /// The new table adds conjuncts to the earlier one's filters.
    New,
    /// The earlier table had conjuncts the new one drops.
    Earlier,
}

/// Two populations that differ only by filter conjuncts one side adds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FilterDifference {
    /// Which side has the extra conjuncts.
    pub extra_on: ExtraFilterOn,
    /// The extra conjuncts, normalised.
    pub conjuncts: Vec<String>,
}

/// Whether `new` and `earlier` have the same tables, joins and keys and their filters
/// differ only by conjuncts one side adds to the other's.
pub fn filter_difference(
    new: &PopulationLineage,
    earlier: &PopulationLineage,
) -> Option<FilterDifference> {
    if new.shape_sha256 != earlier.shape_sha256 || new.filters == earlier.filters {
        return None;
    }
    let extra = |big: &[String], small: &[String]| -> Option<Vec<String>> {
        small
            .iter()
            .all(|f| big.contains(f))
            .then(|| big.iter().filter(|f| !small.contains(f)).cloned().collect())
    };
    if let Some(conjuncts) = extra(&new.filters, &earlier.filters) {
        return Some(FilterDifference {
            extra_on: ExtraFilterOn::New,
            conjuncts,
        });
    }
    extra(&earlier.filters, &new.filters).map(|conjuncts| FilterDifference {
        extra_on: ExtraFilterOn::Earlier,
        conjuncts,
    })
}

/// A new table that reveals fewer than T patients by subtraction from an earlier release.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DifferencingFinding {
    /// The earlier release.
    pub earlier_release: String,
    /// The filter conjuncts that tell the two apart.
    pub difference: FilterDifference,
    /// The count column.
    pub column: String,
    /// The row's group labels, or None for the grand total.
    pub key: Option<Vec<String>>,
}

impl std::fmt::Display for DifferencingFinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let place = match &self.key {
            None => "its total".to_string(),
            Some(k) => format!("row ({})", k.join(", ")),
        };
        write!(
            f,
            "blocked: this table differs from earlier release {} only by the filter {} and {place} of {} differs from it by fewer patients than the threshold; subtracting one from the other would reveal them",
            self.earlier_release,
            self.difference.conjuncts.join(" AND "),
            self.column
        )
    }
}

/// Whether `d` is a difference of 1..T-1 patients (in either direction).
fn small(d: f64, threshold: f64) -> bool {
    let d = d.abs();
    d >= 1.0 - 1e-9 && d < threshold - 1e-9
}

/// Differencing findings of `new_cells` against one earlier entry.
fn difference_findings(
    earlier: &LedgerEntry,
    difference: &FilterDifference,
    new_cells: &[LedgerCell],
    threshold: f64,
) -> Vec<DifferencingFinding> {
    let mut out = Vec::new();
    let old_totals = earlier.count_totals();
    for (column, total) in count_totals(new_cells) {
        if let Some(old) = old_totals.get(&column)
            && small(total - old, threshold)
        {
            out.push(DifferencingFinding {
                earlier_release: earlier.release.clone(),
                difference: difference.clone(),
                column,
                key: None,
            });
        }
    }
    for c in new_cells.iter().filter(|c| c.count) {
        let old = earlier
            .cells
            .iter()
            .find(|o| o.count && o.column == c.column && o.key == c.key);
        if let (Some(v), Some(Some(o))) = (c.true_value, old.map(|o| o.true_value))
            && small(v - o, threshold)
        {
            out.push(DifferencingFinding {
                earlier_release: earlier.release.clone(),
                difference: difference.clone(),
                column: c.column.clone(),
                key: Some(c.key.clone()),
            });
        }
    }
    out
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

    /// Earlier releases over the same population up to filters (same tables, joins and
    /// group keys): the tables to audit jointly with a new one.
    pub fn same_population(
        &self,
        population: &PopulationLineage,
    ) -> Result<Vec<LedgerEntry>, LedgerError> {
        Ok(self
            .entries()?
            .into_iter()
            .filter(|e| e.population.shape_sha256 == population.shape_sha256)
            .collect())
    }

    /// Earlier releases over the same rows (same tables, joins and filters; any group
    /// keys): one system of equations with a new table, so the joint LP audit takes them
    /// all. (A release over other filters is another population: the differencing rule
    /// covers it.)
    pub fn same_rows(
        &self,
        population: &PopulationLineage,
    ) -> Result<Vec<LedgerEntry>, LedgerError> {
        Ok(self
            .entries()?
            .into_iter()
            .filter(|e| {
                e.population.tables == population.tables
                    && e.population.joins == population.joins
                    && e.population.filters == population.filters
            })
            .collect())
    }

    /// Block a new table that differs from an earlier release only by added filter
    /// conjuncts when a count total or a count cell differs by 1..T-1 (`threshold` = T).
    pub fn differencing(
        &self,
        population: &PopulationLineage,
        cells: &[LedgerCell],
        threshold: f64,
    ) -> Result<Vec<DifferencingFinding>, LedgerError> {
        let mut out = Vec::new();
        for earlier in self.same_population(population)? {
            if let Some(d) = filter_difference(population, &earlier.population) {
                out.extend(difference_findings(&earlier, &d, cells, threshold));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pop(filters: &[&str]) -> PopulationLineage {
        PopulationLineage::new(
            vec!["patients".into()],
            filters.iter().map(|f| f.to_string()).collect(),
            vec![],
            vec!["patients.sex".into()],
        )
    }

    #[test]
    fn filter_differences_are_found_in_both_directions() {
        let all = pop(&["a"]);
        let fewer = pop(&["a", "b"]);
        let d = filter_difference(&fewer, &all).expect("difference");
        assert_eq!(
            (d.extra_on, d.conjuncts),
            (ExtraFilterOn::New, vec!["b".into()])
        );
        let d = filter_difference(&all, &fewer).expect("difference");
        assert_eq!(d.extra_on, ExtraFilterOn::Earlier);
        assert_eq!(filter_difference(&all, &all), None);
        assert_eq!(
            filter_difference(&pop(&["c"]), &all),
            None,
            "a changed filter"
        );
    }

    #[test]
    fn small_differences_are_one_to_t_minus_one() {
        assert!(!small(0.0, 10.0));
        assert!(small(1.0, 10.0));
        assert!(small(-9.0, 10.0));
        assert!(!small(10.0, 10.0));
    }

    #[test]
    fn release_ids_are_ids() {
        assert!(valid_id("r-1.a_b"));
        assert!(!valid_id(""));
        assert!(!valid_id("../x"));
        assert!(!valid_id("R1"));
        assert!(!valid_id(&"a".repeat(65)));
    }
}
