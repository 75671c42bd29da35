//! Purge: re-apply a newer National Data Opt-out list to a project's data in the TRE.
//!
//! Owns removing, from every dataset of a project's extract and from every stored job
//! result that carries `patient_pseudonym`, the rows of patients on a newer opt-out list,
//! matched through their pseudonyms under the project key. Each file is rewritten
//! atomically (temporary name, fsync, rename, directory fsync) and the extract manifest is
//! rewritten last with new hashes, counts (purged rows count as `rows_removed_ndoo`, so
//! the accounting equation still holds) and a purge record. Danger: a wrong key would
//! match nobody and purge nothing while looking successful, so the key's fingerprint must
//! equal the one the extract was made with; a run that stops half-way leaves files whose
//! hashes no longer match the manifest, which the workspace refuses to query until the
//! purge is run again (it is idempotent).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use arrow::array::{Array, BooleanArray, StringArray};
use serde::Serialize;

use crate::durable::{FileRecord, Mode, write_atomic};
use crate::extract::{Manifest, OutputRecord, PurgeRecord};
use crate::nhs_number::NhsNumber;
use crate::optout::OptOutList;
use crate::output::{OutputError, ParquetSink};
use crate::policy::Policy;
use crate::pseudonym::ProjectKey;
use crate::tre::workspace::Workspace;

/// Purge failures.
#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    /// Refused by a rule (wrong key, stale list).
    #[error("{0}")]
    Refused(String),
    /// A file could not be read.
    #[error("{0}")]
    Read(String),
    /// Writing failed.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// A durable write failed.
    #[error(transparent)]
    Durable(#[from] crate::durable::DurableError),
}

/// What a purge did.
#[derive(Debug, Clone, Serialize)]
pub struct PurgeReport {
    /// Rows removed per dataset.
    pub datasets: BTreeMap<String, u64>,
    /// Rows removed per job result.
    pub results: BTreeMap<String, u64>,
    /// Patients on the list.
    pub list_entries: u64,
}

/// Rewrite one Parquet file without the rows whose `patient_pseudonym` is in `drop`.
/// Returns (rows removed, new file record) or `None` when the file has no such column.
fn filter_file(
    path: &Path,
    drop: &HashSet<String>,
) -> Result<Option<(u64, FileRecord)>, PurgeError> {
    let read = |e: &dyn std::fmt::Display| PurgeError::Read(format!("{}: {e}", path.display()));
    let f = std::fs::File::open(path).map_err(|e| read(&e))?;
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .map_err(|e| read(&e))?;
    let schema = builder.schema().clone();
    let Ok(col) = schema.index_of(crate::policy::PSEUDONYM_COLUMN) else {
        return Ok(None);
    };
    let reader = builder.build().map_err(|e| read(&e))?;
    let mut sink = ParquetSink::create(path, schema)?;
    let mut removed = 0u64;
    for b in reader {
        let b = b.map_err(|e| read(&e))?;
        let as_utf8 = arrow::compute::cast(b.column(col), &arrow::datatypes::DataType::Utf8)
            .map_err(|_| read(&"patient_pseudonym is not a string column"))?;
        let Some(p) = as_utf8.as_any().downcast_ref::<StringArray>() else {
            return Err(read(&"patient_pseudonym is not a string column"));
        };
        let keep: BooleanArray = p
            .iter()
            .map(|v| Some(!v.is_some_and(|v| drop.contains(v))))
            .collect();
        removed += (keep.len() - keep.true_count()) as u64;
        let kept = arrow::compute::filter_record_batch(&b, &keep).map_err(|e| read(&e))?;
        if kept.num_rows() > 0 {
            sink.write(&kept)?;
        }
    }
    let (rec, _) = sink.finish()?;
    Ok(Some((removed, rec)))
}

/// Purge a project's datasets and results of the patients on `list`.
pub fn purge(
    ws: &Workspace,
    policy: &Policy,
    key: &ProjectKey,
    list: &OptOutList,
    now: &str,
) -> Result<PurgeReport, PurgeError> {
    let id = &policy.project.id;
    let data = ws.project_dir(id).join("data");
    let mpath = data.join("manifest.json");
    let bytes = std::fs::read(&mpath)
        .map_err(|_| PurgeError::Read(format!("no extract manifest at {}", mpath.display())))?;
    let mut manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| PurgeError::Read(format!("{}: {e}", mpath.display())))?;
    if manifest.key_fingerprint != key.fingerprint() {
        return Err(PurgeError::Refused(format!(
            "the key file's fingerprint {} is not the one project {id}'s data was pseudonymised with ({}); with the wrong key no patient would match",
            key.fingerprint(),
            manifest.key_fingerprint
        )));
    }
    let p = key.pseudonymiser();
    let drop: HashSet<String> = list
        .set
        .numbers()
        .iter()
        .filter_map(|&n| NhsNumber::from_u64(n))
        .map(|n| p.pseudonym(n))
        .collect();
    let mut report = PurgeReport {
        datasets: BTreeMap::new(),
        results: BTreeMap::new(),
        list_entries: list.entries,
    };
    let names: Vec<String> = manifest.tables.keys().cloned().collect();
    for name in names {
        let Some(entry) = manifest.tables.get_mut(&name) else {
            continue;
        };
        let Some(out) = entry.output.clone() else {
            continue;
        };
        let path = data.join(&out.path);
        if let Some((removed, rec)) = filter_file(&path, &drop)? {
            entry.rows_written -= removed.min(entry.rows_written);
            entry.rows_removed_ndoo += removed;
            entry.output = Some(OutputRecord {
                path: out.path.clone(),
                sha256: rec.sha256.clone(),
                bytes: rec.size,
            });
            if let Some(f) = manifest.files.iter_mut().find(|f| f.path == out.path) {
                f.sha256 = rec.sha256;
                f.size = rec.size;
            }
            report.datasets.insert(name, removed);
        }
    }
    manifest.purges.push(PurgeRecord {
        at: now.to_string(),
        opt_outs_as_of: list.as_of.to_string(),
        opt_outs_sha256: list.sha256.clone(),
        rows_removed: report.datasets.clone(),
    });
    let text = serde_json::to_vec_pretty(&manifest).map_err(|e| PurgeError::Read(e.to_string()))?;
    write_atomic(&mpath, &text, Mode::Shared)?;
    let results = ws.project_dir(id).join("results");
    if let Ok(dir) = std::fs::read_dir(&results) {
        let mut jobs: Vec<_> = dir.flatten().map(|e| e.path()).collect();
        jobs.sort();
        for job in jobs {
            let r = job.join("result.parquet");
            if r.is_file()
                && let Some((removed, _)) = filter_file(&r, &drop)?
            {
                report.results.insert(
                    job.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    removed,
                );
            }
        }
    }
    Ok(report)
}
