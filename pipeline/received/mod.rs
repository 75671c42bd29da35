//! What the analyst receives is a release: the ledger of every safe table an analyst could
//! read, with each cell's patients, and the differencing guard over it.
//!
//! Sits in the output checks, after `disclosure` (which makes ONE table safe) and before
//! anything becomes readable. The gate writes, beside each job's result in
//! `projects/<p>/results/<job>/`, `cells.json` ([`ReceivedTable`]: what the analyst saw of
//! each cell) and `membership.parquet` (one row per (patient, cell): `patient_pseudonym`,
//! `cell`, one Float64 column per measure); see `docs/attacker-model.md`, "Differencing
//! between tables", for the model and the guarantee.
//!
//! **Entry point** (the job path calls it before a job's safe table becomes readable):
//! ```ignore
//! let verdict = received::check_new_table(&new, &earlier, &GuardRules::new(threshold))?;
//! ```
//! with `new = ReceivedTableOnDisk::new(results_dir, job)` and `earlier` every table the
//! same user already received in the project plus the project's exported releases, from
//! [`list_received`] filtered by the caller through the sealed job records (this module,
//! in an earlier layer than `tre`, never reads `job.json`). [`GuardVerdict::Refused`]
//! names the earlier table and what to change; the safe table must then never be
//! readable. [`tables_containing`] lists the tables holding given patients, for `tre
//! purge`. The pure core is [`check`] over in-memory [`Release`]s.
//!
//! Danger: memberships are patient data. Nothing here writes a file, logs, or puts a
//! pseudonym, a cell value or a group's size in an error, a verdict or a `Debug`; work is
//! bounded by [`GuardRules`] (entries, groups, linear programmes, box tries), never by the
//! clock, and a check that runs out of budget refuses.

mod guard;
mod system;
pub mod table;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use arrow::array::{Array, StringArray};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

pub use guard::{GuardRules, GuardVerdict, Release, check};
pub use table::{Membership, PatientIds, Published, ReceivedCell, ReceivedTable, ReceivedTotal};

/// The file holding what the analyst saw.
pub const CELLS_FILE: &str = "cells.json";
/// The file holding each cell's patients.
pub const MEMBERSHIP_FILE: &str = "membership.parquet";
/// Largest `cells.json` read.
const MAX_CELLS_BYTES: u64 = 64 << 20;

/// Errors of the ledger and the guard. None holds a patient value.
#[derive(Debug, thiserror::Error)]
pub enum ReceivedError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// `cells.json` is not a valid received table.
    #[error("{} is not a valid received table: {reason}", path.display())]
    BadTable {
        /// The file.
        path: PathBuf,
        /// What is wrong (never a value from the file).
        reason: String,
    },
    /// `membership.parquet` does not match its table.
    #[error("{} is not a valid membership file: {reason}", path.display())]
    BadMembership {
        /// The file.
        path: PathBuf,
        /// What is wrong (never a value from the file).
        reason: String,
    },
    /// The check's memory bound was reached while loading.
    #[error(
        "the received tables are too large to check jointly: {what}; ask the output checkers to raise the guard's budget"
    )]
    Budget {
        /// What overflowed.
        what: String,
    },
}

impl crate::error::Classify for ReceivedError {
    fn kind(&self) -> crate::error::ErrorKind {
        match self {
            ReceivedError::Budget { .. } => crate::error::ErrorKind::Refused,
            _ => crate::error::ErrorKind::Failed,
        }
    }
}

/// A row count in which every patient contributes exactly one row to its cell IS a
/// patient count (a patient-level table such as `patients`): it is then checked as one,
/// with its protection interval, not only for exactness. Row counts of event tables
/// (several rows per patient) keep the exactness check only.
fn rows_as_patients(table: &mut ReceivedTable, membership: &Membership) {
    if table.measures.iter().any(|m| m == table::PATIENTS) {
        return;
    }
    let Some(i) = table.measures.iter().position(|m| m == "rows") else {
        return;
    };
    if membership
        .contribution
        .get(i)
        .is_some_and(|c| c.iter().all(|v| *v == 1.0))
    {
        table.measures[i] = table::PATIENTS.to_string();
    }
}

/// One job's received table on disk: `<results>/<job>/cells.json` and
/// `membership.parquet`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedTableOnDisk {
    /// The job id (the folder's name).
    pub job: String,
    /// The job's folder.
    pub dir: PathBuf,
}

impl ReceivedTableOnDisk {
    /// The table of `job` under a project's `results` folder.
    pub fn new(results: &Path, job: &str) -> Self {
        ReceivedTableOnDisk {
            job: job.to_string(),
            dir: results.join(job),
        }
    }

    /// Its `cells.json`.
    pub fn cells_path(&self) -> PathBuf {
        self.dir.join(CELLS_FILE)
    }

    /// Its `membership.parquet`.
    pub fn membership_path(&self) -> PathBuf {
        self.dir.join(MEMBERSHIP_FILE)
    }

    /// Read and validate `cells.json`; its `table` must be the folder's job id.
    pub fn read_table(&self) -> Result<ReceivedTable, ReceivedError> {
        let path = self.cells_path();
        let bytes =
            crate::trusted_file::read(&path, MAX_CELLS_BYTES).map_err(|e| ReceivedError::Io {
                path: path.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
        let text = std::str::from_utf8(&bytes).map_err(|_| ReceivedError::BadTable {
            path: path.clone(),
            reason: "not UTF-8 text".into(),
        })?;
        let t = ReceivedTable::parse(text, &path)?;
        if t.table != self.job {
            return Err(ReceivedError::BadTable {
                path,
                reason: format!("it names another job than its folder ({})", self.job),
            });
        }
        Ok(t)
    }

    /// Read the table and its membership, interning patients in `ids`.
    pub fn load(&self, ids: &mut PatientIds, max_entries: usize) -> Result<Release, ReceivedError> {
        let mut table = self.read_table()?;
        let membership = Membership::read(&self.membership_path(), &table, ids, max_entries)?;
        rows_as_patients(&mut table, &membership);
        Ok(Release { table, membership })
    }
}

/// Every job under a project's `results` folder that has a received table, sorted by job
/// id. The caller keeps those of one user (and the exported releases) by their sealed job
/// records. A missing folder has none; a symlink is skipped, never followed.
pub fn list_received(results: &Path) -> Result<Vec<ReceivedTableOnDisk>, ReceivedError> {
    let io = |e| ReceivedError::Io {
        path: results.to_path_buf(),
        source: e,
    };
    let entries = match std::fs::read_dir(results) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io)?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let dir = entry.path();
        let is_dir = std::fs::symlink_metadata(&dir).is_ok_and(|m| m.file_type().is_dir());
        let has_cells =
            std::fs::symlink_metadata(dir.join(CELLS_FILE)).is_ok_and(|m| m.file_type().is_file());
        if is_dir && has_cells {
            out.push(ReceivedTableOnDisk { job: name, dir });
        }
    }
    out.sort_by(|a, b| a.job.cmp(&b.job));
    Ok(out)
}

/// The guard's entry point: load `new` and `earlier` (bounded by `rules.max_entries`
/// entries in all) and [`check`] them. A load over the budget is a refusal, not an error.
pub fn check_new_table(
    new: &ReceivedTableOnDisk,
    earlier: &[ReceivedTableOnDisk],
    rules: &GuardRules,
) -> Result<GuardVerdict, ReceivedError> {
    let mut ids = PatientIds::default();
    let mut left = rules.max_entries;
    let mut load = |t: &ReceivedTableOnDisk| -> Result<Release, ReceivedError> {
        let r = t.load(&mut ids, left)?;
        left -= r.membership.len();
        Ok(r)
    };
    let outcome = (|| {
        let n = load(new)?;
        let e = earlier
            .iter()
            .map(&mut load)
            .collect::<Result<Vec<_>, _>>()?;
        Ok::<_, ReceivedError>((n, e))
    })();
    match outcome {
        Ok((n, e)) => Ok(check(&n, &e, rules)),
        Err(ReceivedError::Budget { what }) => Ok(GuardVerdict::Refused {
            earlier_table: earlier.first().map(|t| t.job.clone()),
            message: format!(
                "this table could not be checked against the tables you already received: \
                 {what}, beyond the guard's budget. Ask for fewer or smaller tables, or ask \
                 the output checkers to raise the budget."
            ),
        }),
        Err(e) => Err(e),
    }
}

/// The jobs (of `tables`) whose membership holds any of `pseudonyms`, in the order given:
/// what `tre purge` withdraws. Reads only the pseudonym column, batch by batch.
pub fn tables_containing(
    tables: &[ReceivedTableOnDisk],
    pseudonyms: &HashSet<String>,
) -> Result<Vec<String>, ReceivedError> {
    let mut out = Vec::new();
    for t in tables {
        let path = t.membership_path();
        let bad = |reason: &str| ReceivedError::BadMembership {
            path: path.clone(),
            reason: reason.to_string(),
        };
        let file = crate::durable::open_nofollow(&path).map_err(|e| ReceivedError::Io {
            path: path.clone(),
            source: e.into_io(),
        })?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|_| bad("not a readable Parquet file"))?;
        let column = builder
            .parquet_schema()
            .columns()
            .iter()
            .position(|c| c.name() == "patient_pseudonym")
            .ok_or_else(|| bad("column patient_pseudonym is missing"))?;
        let mask = ProjectionMask::leaves(builder.parquet_schema(), [column]);
        let reader = builder
            .with_projection(mask)
            .with_batch_size(8192)
            .build()
            .map_err(|_| bad("not a readable Parquet file"))?;
        let mut found = false;
        for batch in reader {
            let batch = batch.map_err(|_| bad("a batch could not be decoded"))?;
            let col = batch
                .column(0)
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| bad("column patient_pseudonym is not Utf8"))?;
            if (0..col.len()).any(|i| col.is_valid(i) && pseudonyms.contains(col.value(i))) {
                found = true;
                break;
            }
        }
        if found {
            out.push(t.job.clone());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod prop;
#[cfg(test)]
mod tests;
