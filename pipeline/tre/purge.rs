//! Purge: re-apply a newer National Data Opt-out list to a project's data in the TRE.
//!
//! Owns removing the patients on a newer opt-out list from everything the TRE holds of a
//! project: the rows of every dataset (matched through their pseudonyms under the project
//! key), in every dataset version the project holds (`tre admin refresh` purges the
//! earlier versions through [`purge_held`]); every stored job result that carries a pseudonym at row level, found through the
//! result's recorded column lineage (`lineage.json`), not its column names, so a renamed,
//! upper-cased, prefixed or concatenated pseudonym is matched by recomputing the same
//! transformation of each purged patient's pseudonym, and a result whose transformation
//! cannot be recomputed is marked purged-and-unreleasable; aggregates computed over data
//! that held them are marked stale (never releasable, re-run the job): found by value in
//! the patients each table recorded (`membership.parquet`, see [`crate::received`]) and
//! through its lineage; every result
//! whose stored outputs (status, safe table) were computed over them is withdrawn
//! ([`WITHDRAWN_FILE`], read through [`result_withdrawn`]: never served nor released,
//! `withdrawn by purge <id>: re-run the job`); their raw rows in
//! the extract's quarantine files (matched by normalised NHS number); and it lists every
//! earlier release (from the differencing ledger) that was computed over data that held
//! them. Results are dealt with first, datasets and quarantines next, the extract
//! manifest last (new hashes, counts: purged rows count as `rows_removed_ndoo`, so the
//! accounting equation still holds, and a purge record). Danger: a wrong key would match
//! nobody and purge nothing while looking successful, so the key's fingerprint must equal
//! the one the extract was made with; a run that stops half-way leaves files whose hashes
//! no longer match the manifest, which the workspace refuses to query until the purge is
//! run again (it is idempotent). Every file it rewrites is private (0600, whatever the
//! umask). It is audited first, through the workspace's [`Auditor`] ([`purge_audited`]):
//! a `purge.start` entry (project, list SHA-256 and as-of date) before any file is
//! rewritten, then a `purge` entry with the outcome. Never prints, logs or audits a
//! pseudonym or NHS number.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use arrow::array::{Array, BooleanArray, StringArray};
use arrow::record_batch::RecordBatch;
use serde::Serialize;

use crate::audit::{AuditError, EntryDraft, HashRef};
use crate::durable::{AtomicFile, FileRecord, Mode, write_atomic};
pub use crate::lineage::gate::{
    PURGE_MARK_FILE, PurgeMark, ResultAction, WITHDRAWN_FILE, Withdrawal,
};
use crate::lineage::ledger::{Ledger, LedgerError};
use crate::lineage::{LineageError, OutputColumn, Role, SourceClass, StoredLineage};
use crate::manifest::{Manifest, OutputRecord, PurgeRecord};
use crate::nhs_number::NhsNumber;
use crate::optout::{OptOutList, OptOutSet};
use crate::output::OutputError;
use crate::policy::Policy;
use crate::pseudonym::ProjectKey;
use crate::tre::auditor::Auditor;
use crate::tre::workspace::{Change, Workspace};

/// Purge failures.
#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    /// The key is not the one the data was pseudonymised with.
    #[error(
        "the key file's fingerprint {given} is not the one project {project}'s data was pseudonymised with ({expected}); with the wrong key no patient would match. Use the project's key file"
    )]
    WrongKey {
        /// The project.
        project: String,
        /// The given key's fingerprint.
        given: String,
        /// The manifest's.
        expected: String,
    },
    /// The project has no extract manifest.
    #[error("no extract manifest at {}; add the project's dataset first (`tre admin dataset add`)", path.display())]
    NoManifest {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A file could not be read or parsed.
    #[error("{}: {message}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What failed (never a row value).
        message: String,
    },
    /// Writing failed.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// A durable write failed.
    #[error(transparent)]
    Durable(#[from] crate::durable::DurableError),
    /// A result's lineage file is unreadable.
    #[error(transparent)]
    Lineage(#[from] LineageError),
    /// The ledger is unreadable.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The workspace's dataset record could not be read or resealed.
    #[error(transparent)]
    Workspace(#[from] crate::tre::workspace::WorkspaceError),
    /// The purge's intent entry could not be written: nothing was purged.
    #[error("the audit log could not be written, so nothing was purged: {0}")]
    AuditFirst(AuditError),
    /// The purge was done but its outcome entry could not be written.
    #[error(
        "purge {purge} was done, but its outcome could not be written to the audit log ({source}); fix the log and run the same purge again (it is idempotent) to record it"
    )]
    AuditOutcome {
        /// The purge's id.
        purge: String,
        /// Why the entry could not be written.
        source: AuditError,
    },
}

impl crate::error::Classify for PurgeError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            PurgeError::WrongKey { .. } => ErrorKind::Refused,
            PurgeError::Lineage(e) => e.kind(),
            PurgeError::Ledger(e) => e.kind(),
            PurgeError::Workspace(e) => e.kind(),
            PurgeError::AuditFirst(e) | PurgeError::AuditOutcome { source: e, .. } => e.kind(),
            _ => ErrorKind::Failed,
        }
    }
}

fn read_err(path: &Path, e: &dyn std::fmt::Display) -> PurgeError {
    PurgeError::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Where purge finds a project's files: the one function that knows the workspace layout.
#[derive(Debug, Clone)]
pub struct PurgePaths {
    /// The current dataset version's folder (its tables and `manifest.json`).
    pub data: PathBuf,
    /// Every dataset version held, oldest first, with its folder (the current one last).
    pub versions: Vec<(u32, PathBuf)>,
    /// Job results, one folder per job holding `result.parquet` and `lineage.json`.
    pub results: PathBuf,
    /// The differencing ledger.
    pub ledger: PathBuf,
    /// Quarantine folders of the extract (those that exist are purged).
    pub quarantines: Vec<PathBuf>,
}

/// The paths of `project` in `ws`.
pub fn purge_paths(ws: &Workspace, project: &str) -> PurgePaths {
    let dir = ws.project_dir(project);
    // Without a readable record (no dataset installed), the one folder `data/`.
    let versions: Vec<(u32, PathBuf)> = crate::tre::id::Id::parse("project", project)
        .ok()
        .filter(|_| ws.dataset_installed(project))
        .and_then(|p| ws.dataset(&p).ok())
        .map(|r| {
            r.versions()
                .iter()
                .map(|v| (v.version, ws.version_dir(project, v.version)))
                .collect()
        })
        .unwrap_or_else(|| vec![(1, dir.join("data"))]);
    PurgePaths {
        data: versions
            .last()
            .map_or_else(|| dir.join("data"), |(_, d)| d.clone()),
        versions,
        results: dir.join("results"),
        ledger: dir.join("ledger"),
        quarantines: vec![dir.join("data.quarantine")],
    }
}

/// One result's purge.
#[derive(Debug, Clone, Serialize)]
pub struct ResultPurge {
    /// What was done.
    pub action: ResultAction,
    /// Rows removed.
    pub rows_removed: u64,
    /// The columns through which purged patients were matched (or could not be).
    pub columns: Vec<String>,
    /// Whether the result is withdrawn ([`WITHDRAWN_FILE`]): never served nor released.
    pub withdrawn: bool,
}

/// An earlier release made from data that held purged patients.
#[derive(Debug, Clone, Serialize)]
pub struct AffectedRelease {
    /// The release.
    pub release: String,
    /// Its job.
    pub job: Option<String>,
    /// When it was exported.
    pub exported_at: String,
    /// The tables it was computed from that held purged patients.
    pub tables: Vec<String>,
}

/// What a purge did (of [`purge_held`]: `list_entries` is 0, the caller's to fill).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PurgeReport {
    /// The purge's id, named in every result it withdrew.
    pub id: String,
    /// Rows removed per dataset (summed over the versions held).
    pub datasets: BTreeMap<String, u64>,
    /// Rows removed per table of each dataset version held.
    pub versions: BTreeMap<u32, BTreeMap<String, u64>>,
    /// Per job result.
    pub results: BTreeMap<String, ResultPurge>,
    /// Rows removed per quarantine file.
    pub quarantine: BTreeMap<String, u64>,
    /// Earlier releases computed over data that held purged patients.
    pub releases: Vec<AffectedRelease>,
    /// Patients on the list.
    pub list_entries: u64,
}

/// A purge's id: `purge-<UTC time, to the second>-<first 8 hex of the list's SHA-256>`,
/// e.g. `purge-20261204T070653-3f2a9c1b`.
pub fn purge_id(now: &str, opt_outs_sha256: &str) -> String {
    let time: String = now
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .take(15)
        .collect();
    let sha: String = opt_outs_sha256.chars().take(8).collect();
    format!("purge-{time}-{sha}")
}

/// Why the result of `job` in `project` may not be served, if it may not: the message
/// to show instead of its status, its safe table or a release (`withdrawn by purge
/// <id> (<time>): ...; re-run the job`). Readers of a job's stored outputs call this
/// first and refuse on `Some`, and on `Err` (an unreadable record fails closed).
pub fn result_withdrawn(
    ws: &Workspace,
    project: &crate::tre::id::Id,
    job: &crate::tre::id::Id,
) -> Result<Option<String>, PurgeError> {
    let dir = purge_paths(ws, project.as_str()).results.join(job.as_str());
    withdrawn_in(ws, &dir)
}

/// The withdrawal record of a job's result folder, if any. Marks and withdrawals are
/// sealed records bound to the purge's audit entry (`purge.withdraw`): one edited,
/// copied from another job, or deleted after the purge wrote it is refused (an error,
/// which every reader takes as "not served"), never read as absent.
pub fn withdrawal(ws: &Workspace, job_dir: &Path) -> Result<Option<Withdrawal>, PurgeError> {
    Ok(ws.read_record(&job_dir.join(WITHDRAWN_FILE))?)
}

/// The purge mark of a job's result folder, if any (sealed as [`withdrawal`]): a
/// marked result is never released.
pub fn purge_mark(ws: &Workspace, job_dir: &Path) -> Result<Option<PurgeMark>, PurgeError> {
    Ok(ws.read_record(&job_dir.join(PURGE_MARK_FILE))?)
}

/// [`result_withdrawn`] for a job's result folder. A result marked by a purge that
/// predates withdrawal records (a purge mark alone) is withdrawn too.
pub fn withdrawn_in(ws: &Workspace, job_dir: &Path) -> Result<Option<String>, PurgeError> {
    if let Some(w) = withdrawal(ws, job_dir)? {
        return Ok(Some(w.message()));
    }
    Ok(purge_mark(ws, job_dir)?.map(|m| {
        format!(
            "withdrawn by the purge of {}: the result was computed from data holding patients who have since opted out; re-run the job",
            m.at
        )
    }))
}

/// Rewrite one Parquet file keeping the rows `keep` says, as a private file (0600);
/// returns (rows removed, record).
fn filter_parquet(
    path: &Path,
    keep: impl Fn(&RecordBatch) -> Result<BooleanArray, PurgeError>,
) -> Result<(u64, FileRecord), PurgeError> {
    filter_parquet_to(path, path, keep)
}

/// [`filter_parquet`], writing the kept rows to `out` (atomically) instead.
fn filter_parquet_to(
    path: &Path,
    out: &Path,
    keep: impl Fn(&RecordBatch) -> Result<BooleanArray, PurgeError>,
) -> Result<(u64, FileRecord), PurgeError> {
    let f = std::fs::File::open(path).map_err(|e| read_err(path, &e))?;
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .map_err(|e| read_err(path, &e))?;
    let schema = builder.schema().clone();
    let reader = builder.build().map_err(|e| read_err(path, &e))?;
    let werr = |e: parquet::errors::ParquetError| read_err(path, &format!("cannot write: {e}"));
    let file = AtomicFile::create(out, Mode::Private)?;
    let mut w = parquet::arrow::ArrowWriter::try_new(
        file,
        schema,
        Some(crate::output::parquet_properties()),
    )
    .map_err(werr)?;
    let mut removed = 0u64;
    for b in reader {
        let b = b.map_err(|e| read_err(path, &e))?;
        let mask = keep(&b)?;
        removed += (mask.len() - mask.true_count()) as u64;
        let kept =
            arrow::compute::filter_record_batch(&b, &mask).map_err(|e| read_err(path, &e))?;
        if kept.num_rows() > 0 {
            w.write(&kept).map_err(werr)?;
        }
    }
    let rec = w.into_inner().map_err(werr)?.commit()?;
    Ok((removed, rec))
}

/// A column as text (pseudonyms are strings; any other type is cast).
fn text_column(path: &Path, b: &RecordBatch, col: usize) -> Result<StringArray, PurgeError> {
    let as_utf8 = arrow::compute::cast(b.column(col), &arrow::datatypes::DataType::Utf8)
        .map_err(|_| read_err(path, &"a pseudonym column cannot be read as text"))?;
    as_utf8
        .as_any()
        .downcast_ref::<StringArray>()
        .cloned()
        .ok_or_else(|| read_err(path, &"a pseudonym column cannot be read as text"))
}

/// Keep-mask: rows whose value in each `(column, set)` is not in its set.
fn keep_unmatched(
    path: &Path,
    b: &RecordBatch,
    matchers: &[(String, HashSet<String>)],
) -> Result<BooleanArray, PurgeError> {
    let mut keep = vec![true; b.num_rows()];
    for (name, set) in matchers {
        let Ok(col) = b.schema().index_of(name) else {
            return Err(read_err(
                path,
                &format!("column {name} named by its lineage is missing"),
            ));
        };
        let values = text_column(path, b, col)?;
        for (k, v) in keep.iter_mut().zip(values.iter()) {
            *k &= !v.is_some_and(|v| set.contains(v));
        }
    }
    Ok(BooleanArray::from(keep))
}

/// Rows of listed patients in a dataset, counted without rewriting it.
fn count_listed(path: &Path, drop: &HashSet<String>) -> Result<u64, PurgeError> {
    let f = std::fs::File::open(path).map_err(|e| read_err(path, &e))?;
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .map_err(|e| read_err(path, &e))?;
    let Ok(col) = builder.schema().index_of(crate::policy::PSEUDONYM_COLUMN) else {
        return Ok(0);
    };
    let mask = parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), [col]);
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(|e| read_err(path, &e))?;
    let mut n = 0u64;
    for b in reader {
        let b = b.map_err(|e| read_err(path, &e))?;
        let v = text_column(path, &b, 0)?;
        n += v
            .iter()
            .filter(|v| v.is_some_and(|v| drop.contains(v)))
            .count() as u64;
    }
    Ok(n)
}

/// The pseudonyms of the project's dataset versions held (every one but the current)
/// that are not in `cleared`: with an allow-list, the patients an earlier version holds
/// whom the newest list does not clear. Read from each table's pseudonym column only.
pub fn held_outside(
    ws: &Workspace,
    project: &str,
    cleared: &HashSet<String>,
) -> Result<HashSet<String>, PurgeError> {
    let paths = purge_paths(ws, project);
    let mut out = HashSet::new();
    for (_, dir) in paths.versions.iter().filter(|(_, d)| *d != paths.data) {
        finish_dataset_rewrite(dir)?;
        let mpath = dir.join("manifest.json");
        let bytes = std::fs::read(&mpath).map_err(|_| PurgeError::NoManifest {
            path: mpath.clone(),
        })?;
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| read_err(&mpath, &e))?;
        for entry in manifest.tables.values() {
            if let Some(o) = &entry.output {
                pseudonyms_outside(&dir.join(&o.path), cleared, &mut out)?;
            }
        }
    }
    Ok(out)
}

/// Add to `out` the pseudonyms of a dataset file that are not in `cleared`.
fn pseudonyms_outside(
    path: &Path,
    cleared: &HashSet<String>,
    out: &mut HashSet<String>,
) -> Result<(), PurgeError> {
    let f = std::fs::File::open(path).map_err(|e| read_err(path, &e))?;
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .map_err(|e| read_err(path, &e))?;
    let Ok(col) = builder.schema().index_of(crate::policy::PSEUDONYM_COLUMN) else {
        return Ok(());
    };
    let mask = parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), [col]);
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(|e| read_err(path, &e))?;
    for b in reader {
        let b = b.map_err(|e| read_err(path, &e))?;
        let v = text_column(path, &b, 0)?;
        for p in v.iter().flatten() {
            if !cleared.contains(p) && !out.contains(p) {
                out.insert(p.to_string());
            }
        }
    }
    Ok(())
}

/// The audit action written before a purge touches any file (its intent).
pub const PURGE_START_ACTION: &str = "purge.start";
/// The audit action of a purge's outcome (ok, refused or error).
pub const PURGE_ACTION: &str = "purge";
/// The audit action under which a purge's marks and withdrawal records are written
/// (bound records: see [`crate::tre::records`]).
pub const PURGE_WITHDRAW_ACTION: &str = "purge.withdraw";

/// A purge to run: everything `tre purge` loaded and checked before anything is audited.
#[derive(Debug, Clone, Copy)]
pub struct PurgePlan<'a> {
    /// The acting operator (see [`crate::tre::actions::admin::operator`]).
    pub actor: &'a str,
    /// The project's policy.
    pub policy: &'a Policy,
    /// The project key the data was pseudonymised with.
    pub key: &'a ProjectKey,
    /// The newer opt-out list.
    pub list: &'a OptOutList,
    /// The list's file as the operator named it (recorded with its SHA-256).
    pub list_file: &'a str,
    /// Quarantine folders outside the workspace (the extract's own).
    pub extra_quarantines: &'a [PathBuf],
}

impl PurgePlan<'_> {
    /// The entry both audit entries start from: who, which project, which list (file and
    /// SHA-256), its as-of date and size, the key's fingerprint and the purge's id.
    fn entry(&self, action: &str, purge: &str) -> EntryDraft {
        EntryDraft::new(self.actor, action)
            .project(self.policy.project.id.as_str())
            .input(HashRef::new(self.list_file, self.list.sha256.clone()))
            .detail("purge", purge)
            .detail("opt_outs_as_of", self.list.as_of.to_string())
            .detail("list_entries", self.list.entries)
            .detail("key_fingerprint", self.key.fingerprint())
    }
}

/// Run a purge audit-first: the intent entry ([`PURGE_START_ACTION`]) before any file is
/// read for rewriting, then [`purge`], then the outcome entry ([`PURGE_ACTION`]): ok with
/// the counts per dataset and result and the releases affected, or refused / error with
/// the reason. If the intent cannot be written nothing is done.
pub fn purge_audited(
    ws: &Workspace,
    auditor: &Auditor,
    plan: &PurgePlan<'_>,
) -> Result<PurgeReport, PurgeError> {
    let now = auditor
        .clock()
        .now()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let id = purge_id(&now, &plan.list.sha256);
    auditor
        .record(plan.entry(PURGE_START_ACTION, &id))
        .map_err(PurgeError::AuditFirst)?;
    let result = purge(ws, auditor, plan, &now);
    let d = plan.entry(PURGE_ACTION, &id);
    let d = match &result {
        Ok(report) => {
            let releases: Vec<&str> = report.releases.iter().map(|r| r.release.as_str()).collect();
            d.detail("rows_removed", recordable(&report.datasets))
                .detail("results", recordable(&report.results))
                .detail("releases_affected", recordable(&releases))
        }
        Err(e) if crate::error::Classify::kind(e) == crate::error::ErrorKind::Refused => {
            d.refused(e.to_string())
        }
        Err(e) => d.failed(e.to_string()),
    };
    match (auditor.record(d), result) {
        (Ok(_), result) => result,
        (Err(source), Ok(_)) => Err(PurgeError::AuditOutcome { purge: id, source }),
        // The purge's own failure is the one to fix first; its intent entry stands.
        (Err(_), Err(e)) => Err(e),
    }
}

/// A report's counts as an audit detail (ids and numbers only, never a row).
fn recordable(v: &impl Serialize) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_else(|e| {
        serde_json::Value::String(format!("internal error (a bug): not recordable: {e}"))
    })
}

/// Purge a project's datasets (every version held), results and quarantines of the
/// patients on `list`. `extra_quarantines` adds quarantine folders outside the workspace
/// (the extract's own). The command runs it through [`purge_audited`].
fn purge(
    ws: &Workspace,
    auditor: &Auditor,
    plan: &PurgePlan<'_>,
    now: &str,
) -> Result<PurgeReport, PurgeError> {
    let (policy, key, list) = (plan.policy, plan.key, plan.list);
    let extra_quarantines = plan.extra_quarantines;
    let id = &policy.project.id;
    let mut paths = purge_paths(ws, id);
    paths.quarantines.extend(extra_quarantines.iter().cloned());
    let p = key.pseudonymiser();
    let drop: HashSet<String> = list
        .set
        .numbers()
        .iter()
        .filter_map(|&n| NhsNumber::from_u64(n))
        .map(|n| p.pseudonym(n))
        .collect();
    let stamp = DropStamp {
        at: now.to_string(),
        opt_outs_as_of: list.as_of.to_string(),
        opt_outs_sha256: list.sha256.clone(),
    };
    let withdraw = plan.entry(PURGE_WITHDRAW_ACTION, &purge_id(now, &list.sha256));
    let held = purge_held(
        ws,
        (auditor, withdraw),
        id,
        key,
        &drop,
        &stamp,
        false,
        Some((&paths.quarantines, &list.set)),
    )?;
    Ok(PurgeReport {
        list_entries: list.entries,
        ..held
    })
}

/// When and by which list a set of patients is purged (recorded in each manifest's
/// purge record and in the result marks).
#[derive(Debug, Clone)]
pub struct DropStamp {
    /// When (RFC 3339).
    pub at: String,
    /// The list's "as of" date.
    pub opt_outs_as_of: String,
    /// The list's SHA-256.
    pub opt_outs_sha256: String,
}

/// One dataset version opened for purging.
struct HeldVersion {
    version: u32,
    dir: PathBuf,
    manifest: Manifest,
    touched: BTreeSet<String>,
}

/// Remove the patients whose pseudonyms are `drop` from the project's dataset versions
/// held (every one, or with `earlier_only` every one but the current), its stored results
/// (marked and withdrawn as `tre purge` does, the marks committed under the audit entry
/// `withdraw` through its auditor) and, given `(folders, numbers)`, its
/// quarantine files (accounted in the current version's manifest). Every version's key
/// fingerprint is checked first, then which tables hold them (before anything is
/// rewritten, so a re-run after a crash still marks the results), then results, then
/// each version through its journal, then its manifest and sealed record. Idempotent.
#[allow(clippy::too_many_arguments)]
pub fn purge_held(
    ws: &Workspace,
    withdraw: (&Auditor, EntryDraft),
    project: &str,
    key: &ProjectKey,
    drop: &HashSet<String>,
    stamp: &DropStamp,
    earlier_only: bool,
    quarantines: Option<(&[PathBuf], &OptOutSet)>,
) -> Result<PurgeReport, PurgeError> {
    let paths = purge_paths(ws, project);
    let mut held = Vec::new();
    for (version, dir) in &paths.versions {
        if earlier_only && *dir == paths.data {
            continue;
        }
        let mpath = dir.join("manifest.json");
        finish_dataset_rewrite(dir)?;
        let bytes = std::fs::read(&mpath).map_err(|_| PurgeError::NoManifest {
            path: mpath.clone(),
        })?;
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| read_err(&mpath, &e))?;
        if manifest.key_fingerprint != key.fingerprint() {
            return Err(PurgeError::WrongKey {
                project: project.to_string(),
                given: key.fingerprint(),
                expected: manifest.key_fingerprint.clone(),
            });
        }
        let mut touched = BTreeSet::new();
        for (name, entry) in &manifest.tables {
            if let Some(out) = &entry.output
                && count_listed(&dir.join(&out.path), drop)? > 0
            {
                touched.insert(name.clone());
            }
        }
        held.push(HeldVersion {
            version: *version,
            dir: dir.clone(),
            manifest,
            touched,
        });
    }
    let touched: BTreeSet<String> = held.iter().flat_map(|h| h.touched.clone()).collect();
    let mark = PurgeMark {
        action: ResultAction::Stale,
        at: stamp.at.clone(),
        opt_outs_sha256: stamp.opt_outs_sha256.clone(),
    };
    let id = purge_id(&stamp.at, &stamp.opt_outs_sha256);
    let (results, marks) = purge_results(ws, &paths.results, drop, &touched, &mark, &id)?;
    if !marks.is_empty() {
        let jobs: Vec<&str> = results
            .iter()
            .filter(|(_, r)| r.withdrawn || r.action != ResultAction::Untouched)
            .map(|(j, _)| j.as_str())
            .collect();
        let (auditor, draft) = withdraw;
        ws.commit(auditor, draft.detail("jobs", recordable(&jobs)), marks)?;
    }
    let mut out = PurgeReport {
        results,
        id,
        ..PurgeReport::default()
    };
    let record = crate::tre::id::Id::parse("project", project)
        .ok()
        .filter(|_| ws.dataset_installed(project));
    for mut h in held {
        let mpath = h.dir.join("manifest.json");
        let removed = purge_datasets(&h.dir, &mut h.manifest, drop, &h.touched)?;
        h.manifest.purges.push(PurgeRecord {
            at: stamp.at.clone(),
            opt_outs_as_of: stamp.opt_outs_as_of.clone(),
            opt_outs_sha256: stamp.opt_outs_sha256.clone(),
            rows_removed: removed.clone(),
        });
        commit_dataset_rewrite(&h.dir, &h.manifest)?;
        if h.dir == paths.data
            && let Some((dirs, set)) = quarantines
        {
            out.quarantine = purge_quarantines(dirs, set, &mut h.manifest)?;
        }
        let text = serde_json::to_vec_pretty(&h.manifest).map_err(|e| read_err(&mpath, &e))?;
        write_atomic(&mpath, &text, Mode::Private)?;
        // The server trusts its sealed dataset record, not the files: record the new
        // hashes.
        if let Some(p) = &record {
            ws.reseal_version(p, h.version, &text)?;
        }
        for (t, n) in &removed {
            *out.datasets.entry(t.clone()).or_insert(0) += n;
        }
        out.versions.insert(h.version, removed);
    }
    out.releases = affected_releases(&paths.ledger, &touched)?;
    Ok(out)
}

/// The journal of a dataset rewrite: the staged files and the manifest they make, written
/// once every purged file is staged (its commit point).
const DATASET_JOURNAL: &str = ".purge-journal.json";

/// The staged name of a purged dataset file.
fn staged_name(file: &str) -> String {
    format!(".{file}.purged")
}

#[derive(Debug, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DatasetJournal {
    /// Dataset files (plain names) whose staged purged copy replaces them.
    files: Vec<String>,
    /// The extract manifest once they are in place.
    manifest: Manifest,
}

/// The commit point of a dataset rewrite: journal the staged files and the new manifest,
/// then move them into place ([`finish_dataset_rewrite`]). A crash before the journal is
/// written leaves the dataset as it was (the staged copies are removed by the next run);
/// a crash after it is finished by the next run, so the files and the manifest always
/// agree and a re-run of the purge carries on from there.
fn commit_dataset_rewrite(data: &Path, manifest: &Manifest) -> Result<(), PurgeError> {
    let files = manifest
        .tables
        .values()
        .filter_map(|e| e.output.as_ref())
        .map(|o| o.path.clone())
        .filter(|f| data.join(staged_name(f)).exists())
        .collect();
    let journal = DatasetJournal {
        files,
        manifest: manifest.clone(),
    };
    let path = data.join(DATASET_JOURNAL);
    let text = serde_json::to_vec(&journal).map_err(|e| read_err(&path, &e))?;
    write_atomic(&path, &text, Mode::Private)?;
    finish_dataset_rewrite(data)
}

/// Finish a dataset rewrite whose journal stands (move each staged file into place, then
/// the manifest, then remove the journal); without a journal, remove staged copies an
/// interrupted run left before its commit point. Idempotent.
fn finish_dataset_rewrite(data: &Path) -> Result<(), PurgeError> {
    let path = data.join(DATASET_JOURNAL);
    let journal: Option<DatasetJournal> = match std::fs::read(&path) {
        Ok(b) => Some(serde_json::from_slice(&b).map_err(|e| read_err(&path, &e))?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(read_err(&path, &e)),
    };
    let Some(journal) = journal else {
        for entry in std::fs::read_dir(data)
            .map_err(|e| read_err(data, &e))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".purged") {
                std::fs::remove_file(entry.path()).map_err(|e| read_err(&entry.path(), &e))?;
            }
        }
        return Ok(());
    };
    for f in &journal.files {
        let staged = data.join(staged_name(f));
        if staged.exists() {
            std::fs::rename(&staged, data.join(f)).map_err(|e| read_err(&staged, &e))?;
        }
    }
    crate::durable::fsync_parent(&path).map_err(|e| read_err(data, &e))?;
    let mpath = data.join("manifest.json");
    let text = serde_json::to_vec_pretty(&journal.manifest).map_err(|e| read_err(&mpath, &e))?;
    write_atomic(&mpath, &text, Mode::Private)?;
    std::fs::remove_file(&path).map_err(|e| read_err(&path, &e))?;
    crate::durable::fsync_parent(&path).map_err(|e| read_err(data, &e))?;
    Ok(())
}

/// Remove listed patients from every dataset, each into a staged copy; update the
/// manifest's records (nothing is in place until [`commit_dataset_rewrite`]).
fn purge_datasets(
    data: &Path,
    manifest: &mut Manifest,
    drop: &HashSet<String>,
    touched: &BTreeSet<String>,
) -> Result<BTreeMap<String, u64>, PurgeError> {
    let mut report = BTreeMap::new();
    let matchers = [(crate::policy::PSEUDONYM_COLUMN.to_string(), drop.clone())];
    for (name, entry) in manifest.tables.iter_mut() {
        let Some(out) = entry.output.clone() else {
            continue;
        };
        let path = data.join(&out.path);
        if !touched.contains(name) {
            report.insert(name.clone(), 0);
            continue;
        }
        // Staged beside it: the dataset is rewritten all at once, at the journal's
        // commit point ([`commit_dataset_rewrite`]), never one file at a time.
        let staged = data.join(staged_name(&out.path));
        let (removed, rec) =
            filter_parquet_to(&path, &staged, |b| keep_unmatched(&path, b, &matchers))?;
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
        report.insert(name.clone(), removed);
    }
    Ok(report)
}

/// How a stored result's columns let purged patients be found.
struct ResultPlan {
    /// Columns whose values can be recomputed from a pseudonym, with the values to drop.
    matchers: Vec<(String, HashSet<String>)>,
    /// Row-level columns derived from a pseudonym that cannot be recomputed.
    unmatchable: Vec<String>,
    /// Whether the result is row-level in some column (not only grouped).
    row_level: bool,
    /// Whether the result holds an aggregate.
    aggregate: bool,
    /// Source tables.
    tables: BTreeSet<String>,
}

fn result_plan(stored: &StoredLineage, drop: &HashSet<String>) -> ResultPlan {
    let mut plan = ResultPlan {
        matchers: Vec::new(),
        unmatchable: Vec::new(),
        row_level: false,
        aggregate: false,
        tables: stored.population.tables.iter().cloned().collect(),
    };
    for c in &stored.columns {
        plan.tables
            .extend(c.sources.iter().map(|s| s.table.clone()));
        plan.aggregate |= c.role.is_aggregate();
        let per_row = matches!(c.role, Role::RowLevel | Role::GroupKey | Role::Unclassified);
        plan.row_level |= matches!(c.role, Role::RowLevel | Role::Unclassified);
        if !per_row || !c.derives_from(SourceClass::Pseudonym) {
            continue;
        }
        match recomputable(c) {
            Some(t) => plan
                .matchers
                .push((c.name.clone(), drop.iter().map(|p| t.apply(p)).collect())),
            None => plan.unmatchable.push(c.name.clone()),
        }
    }
    plan
}

/// The transformation of a column computed from the pseudonym alone.
fn recomputable(c: &OutputColumn) -> Option<&crate::lineage::ValueTransform> {
    match c.sources.as_slice() {
        [s] if s.class == SourceClass::Pseudonym => c.transform.as_ref(),
        _ => None,
    }
}

/// The marks and withdrawals a purge writes, as bound record changes for its
/// `purge.withdraw` entry.
type MarkChanges = Vec<Change>;

/// Purge every stored job result under `results`; withdraw those whose stored outputs
/// were computed over the purged patients (as purge `id`). The marks and withdrawal
/// records are returned as changes, for the caller to commit under one audit entry;
/// a result already marked or withdrawn (by this purge run before a crash, or an
/// earlier one) keeps its record.
fn purge_results(
    ws: &Workspace,
    results: &Path,
    drop: &HashSet<String>,
    touched: &BTreeSet<String>,
    mark: &PurgeMark,
    id: &str,
) -> Result<(BTreeMap<String, ResultPurge>, MarkChanges), PurgeError> {
    let mut report = BTreeMap::new();
    let mut changes = Vec::new();
    let Ok(dir) = std::fs::read_dir(results) else {
        return Ok((report, changes));
    };
    let mut jobs: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
    jobs.sort();
    for job in jobs {
        let file = job.join("result.parquet");
        if !file.is_file() {
            continue;
        }
        let name = job
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut outcome = purge_result(&job, &file, drop, touched)?;
        // By value: a table whose recorded patients (its membership, what the release
        // gate counted) include a purged patient was computed over them, whatever its
        // lineage says. Lineage still adds the tables it names (a value attributed to
        // another patient's pseudonym is not in the membership under theirs).
        if outcome.action == ResultAction::Untouched && holds_purged(results, &name, drop)? {
            outcome.action = ResultAction::Stale;
        }
        if matches!(
            outcome.action,
            ResultAction::Stale | ResultAction::PurgedUnreleasable
        ) && purge_mark(ws, &job)?.is_none()
        {
            let m = PurgeMark {
                action: outcome.action,
                ..mark.clone()
            };
            changes.push(Change::write(&job.join(PURGE_MARK_FILE), &m)?);
        }
        outcome.withdrawn = withdraws(outcome.action, &job);
        if outcome.withdrawn && withdrawal(ws, &job)?.is_none() {
            let w = Withdrawal {
                purge: id.to_string(),
                at: mark.at.clone(),
                opt_outs_sha256: mark.opt_outs_sha256.clone(),
                action: outcome.action,
            };
            changes.push(Change::write(&job.join(WITHDRAWN_FILE), &w)?);
        }
        report.insert(name, outcome);
    }
    Ok((report, changes))
}

/// Whether the received table of `job` (its `membership.parquet`, when it has one)
/// holds any of the purged patients, found by value ([`crate::received::tables_containing`]).
fn holds_purged(results: &Path, job: &str, drop: &HashSet<String>) -> Result<bool, PurgeError> {
    let table = crate::received::ReceivedTableOnDisk::new(results, job);
    if !std::fs::symlink_metadata(table.membership_path()).is_ok_and(|m| m.is_file()) {
        return Ok(false);
    }
    let found =
        crate::received::tables_containing(std::slice::from_ref(&table), drop).map_err(|e| {
            PurgeError::Read {
                path: table.membership_path(),
                message: e.to_string(),
            }
        })?;
    Ok(!found.is_empty())
}

/// Whether a result's stored outputs still reflect the purged patients: a stale
/// aggregate, a result holding them in a form that cannot be matched, or one whose rows
/// were removed after its safe table was made from them.
fn withdraws(action: ResultAction, job: &Path) -> bool {
    match action {
        ResultAction::Stale | ResultAction::PurgedUnreleasable => true,
        ResultAction::RowsRemoved => job.join("safe.csv").exists(),
        ResultAction::Untouched => false,
    }
}

/// Purge one result: match through its lineage, or by the pseudonym column's name when
/// it has no lineage (results from before lineage was recorded).
fn purge_result(
    job: &Path,
    file: &Path,
    drop: &HashSet<String>,
    touched: &BTreeSet<String>,
) -> Result<ResultPurge, PurgeError> {
    let plan = match crate::lineage::load(job)? {
        Some(stored) => result_plan(&stored, drop),
        None => ResultPlan {
            matchers: vec![(crate::policy::PSEUDONYM_COLUMN.to_string(), drop.clone())],
            unmatchable: Vec::new(),
            row_level: false,
            aggregate: true,
            tables: touched.clone(),
        },
    };
    let mut rows_removed = 0;
    let mut columns: Vec<String> = plan.matchers.iter().map(|(n, _)| n.clone()).collect();
    let present = parquet_columns(file)?;
    let matchers: Vec<_> = plan
        .matchers
        .into_iter()
        .filter(|(n, _)| present.contains(n))
        .collect();
    if !matchers.is_empty() {
        rows_removed = filter_parquet(file, |b| keep_unmatched(file, b, &matchers))?.0;
    }
    let touches = plan.tables.iter().any(|t| touched.contains(t));
    let action = if touches && !plan.unmatchable.is_empty() {
        columns.extend(plan.unmatchable);
        ResultAction::PurgedUnreleasable
    } else if rows_removed > 0 {
        ResultAction::RowsRemoved
    } else if !matchers.is_empty() {
        // Per-patient rows were checked and none was a purged patient's.
        ResultAction::Untouched
    } else if touches && plan.row_level {
        ResultAction::PurgedUnreleasable
    } else if touches && plan.aggregate {
        ResultAction::Stale
    } else {
        ResultAction::Untouched
    };
    Ok(ResultPurge {
        action,
        rows_removed,
        columns,
        withdrawn: false,
    })
}

fn parquet_columns(path: &Path) -> Result<Vec<String>, PurgeError> {
    let f = std::fs::File::open(path).map_err(|e| read_err(path, &e))?;
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .map_err(|e| read_err(path, &e))?;
    Ok(builder
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect())
}

/// An NHS number field normalised (spaces and hyphens stripped) to its number.
fn nhs_value(field: &[u8]) -> Option<u64> {
    let digits: Vec<u8> = field
        .iter()
        .copied()
        .filter(|c| *c != b' ' && *c != b'-')
        .collect();
    if digits.len() != 10 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// Remove listed patients' rows from every quarantine CSV in `dirs`.
fn purge_quarantines(
    dirs: &[PathBuf],
    set: &OptOutSet,
    manifest: &mut Manifest,
) -> Result<BTreeMap<String, u64>, PurgeError> {
    let schemas = crate::schema::SchemaSet::builtin();
    let mut report = BTreeMap::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "csv"))
            .collect();
        files.sort();
        for file in files {
            let table = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let nhs_col = schemas
                .get(&table)
                .and_then(|t| t.nhs_number_index().map(|i| t.columns[i].name.clone()))
                .unwrap_or_else(|| "nhs_number".to_string());
            let (removed, reasons, old_sha, rec) = purge_quarantine_file(&file, &nhs_col, set)?;
            if removed > 0
                && let (Some(rec), Some(entry)) = (rec, manifest.tables.get_mut(&table))
            {
                account_quarantine(entry, removed, &reasons, &old_sha, &rec);
            }
            report.insert(file.display().to_string(), removed);
        }
    }
    Ok(report)
}

/// Move purged quarantine rows from `rows_rejected` to `rows_removed_ndoo` and update the
/// quarantine file's record, when the manifest names this very file (same old hash).
fn account_quarantine(
    entry: &mut crate::manifest::TableReport,
    removed: u64,
    reasons: &BTreeMap<String, u64>,
    old_sha: &str,
    rec: &FileRecord,
) {
    let Some(q) = entry.quarantine.as_mut() else {
        return;
    };
    if q.sha256 != old_sha {
        return;
    }
    q.sha256 = rec.sha256.clone();
    q.bytes = rec.size;
    entry.rows_rejected -= removed.min(entry.rows_rejected);
    entry.rows_removed_ndoo += removed;
    for (reason, n) in reasons {
        if let Some(c) = entry.rejected_by_reason.get_mut(reason) {
            *c -= (*n).min(*c);
        }
    }
}

type QuarantineOutcome = (u64, BTreeMap<String, u64>, String, Option<FileRecord>);

/// Rewrite one quarantine CSV without listed patients' rows (header: line, reason,
/// column, then the table's columns). Returns rows removed, by reason, the old hash, and
/// the new file's record when it was rewritten.
fn purge_quarantine_file(
    path: &Path,
    nhs_col: &str,
    set: &OptOutSet,
) -> Result<QuarantineOutcome, PurgeError> {
    let (old_sha, _) = crate::digest::sha256_file(path).map_err(|e| read_err(path, &e))?;
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .has_headers(true)
        .from_path(path)
        .map_err(|e| read_err(path, &e))?;
    let header = rdr.byte_headers().map_err(|e| read_err(path, &e))?.clone();
    let Some(col) = header.iter().position(|h| h == nhs_col.as_bytes()) else {
        return Ok((0, BTreeMap::new(), old_sha, None));
    };
    // Kept rows stream into a temporary file that replaces the old one only if a row
    // was removed (an uncommitted AtomicFile removes itself).
    let file = AtomicFile::create(path, Mode::Private)?;
    let mut w = csv::WriterBuilder::new().flexible(true).from_writer(file);
    let werr = |e: csv::Error| read_err(path, &format!("cannot write: {e}"));
    w.write_byte_record(&header).map_err(werr)?;
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    let mut removed = 0u64;
    for (i, r) in rdr.byte_records().enumerate() {
        let r = r.map_err(|_| read_err(path, &format!("record {} is not valid CSV", i + 1)))?;
        if r.get(col)
            .and_then(nhs_value)
            .is_some_and(|n| set.contains(n))
        {
            removed += 1;
            let reason = String::from_utf8_lossy(r.get(1).unwrap_or_default()).into_owned();
            *reasons.entry(reason).or_insert(0) += 1;
        } else {
            w.write_byte_record(&r).map_err(werr)?;
        }
    }
    if removed == 0 {
        return Ok((0, reasons, old_sha, None));
    }
    let file = w
        .into_inner()
        .map_err(|e| read_err(path, &format!("cannot write: {}", e.error())))?;
    let rec = file.commit()?;
    Ok((removed, reasons, old_sha, Some(rec)))
}

/// Ledger releases computed from any table that held purged patients.
fn affected_releases(
    ledger: &Path,
    touched: &BTreeSet<String>,
) -> Result<Vec<AffectedRelease>, PurgeError> {
    Ok(Ledger::open(ledger)
        .entries()?
        .into_iter()
        .filter_map(|e| {
            let tables: Vec<String> = e
                .population
                .tables
                .iter()
                .filter(|t| touched.contains(*t))
                .cloned()
                .collect();
            (!tables.is_empty()).then_some(AffectedRelease {
                release: e.release,
                job: e.job,
                exported_at: e.exported_at,
                tables,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nhs_numbers_in_quarantine_are_normalised() {
        assert_eq!(nhs_value(b"943 476 5919"), Some(9434765919));
        assert_eq!(nhs_value(b"943-476-5919"), Some(9434765919));
        assert_eq!(nhs_value(b"94347659"), None);
        assert_eq!(nhs_value(b"94347659x9"), None);
    }

    use arrow::array::{ArrayRef, Int64Array};
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("meta").permissions().mode() & 0o777
    }

    /// A Parquet file of `columns`, written 0644 as any tool would under umask 022.
    fn parquet_file(path: &Path, columns: Vec<(&str, ArrayRef)>) {
        let batch = RecordBatch::try_from_iter(columns).expect("batch");
        let f = std::fs::File::create(path).expect("create");
        let mut w = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), None).expect("writer");
        w.write(&batch).expect("write");
        w.close().expect("close");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }

    fn pseudonyms(v: &[&str]) -> ArrayRef {
        Arc::new(StringArray::from(v.to_vec()))
    }

    #[test]
    fn defect_6_rewritten_files_are_private() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("clinical_events.parquet");
        parquet_file(
            &p,
            vec![(
                crate::policy::PSEUDONYM_COLUMN,
                pseudonyms(&["a", "b", "a"]),
            )],
        );
        assert_eq!(mode(&p), 0o644);
        let matchers = [(
            crate::policy::PSEUDONYM_COLUMN.to_string(),
            HashSet::from(["a".to_string()]),
        )];
        let (removed, _) =
            filter_parquet(&p, |b| keep_unmatched(&p, b, &matchers)).expect("filter");
        assert_eq!(removed, 2);
        assert_eq!(mode(&p), 0o600, "a rewritten dataset is private");
    }

    fn mark() -> PurgeMark {
        PurgeMark {
            action: ResultAction::Stale,
            at: "2026-12-04T07:00:00.000Z".into(),
            opt_outs_sha256: "3f2a9c1b00".into(),
        }
    }

    #[test]
    fn defect_6_results_computed_over_purged_patients_are_withdrawn() {
        let ws_dir = tempfile::tempdir().expect("tmp");
        let ws = Workspace::init(&ws_dir.path().join("ws")).expect("ws");
        let project = crate::tre::id::Id::parse("project", "demo").expect("id");
        let results = purge_paths(&ws, "demo").results;
        let job = |name: &str| {
            let d = results.join(name);
            std::fs::create_dir_all(&d).expect("mkdir");
            d
        };
        // An aggregate (no lineage: taken as computed over every touched table).
        let agg = job("agg");
        parquet_file(
            &agg.join("result.parquet"),
            vec![("n", Arc::new(Int64Array::from(vec![12, 30])) as ArrayRef)],
        );
        std::fs::write(agg.join("safe.csv"), "sex,n\nF,12\nM,30\n").expect("safe");
        // Per-patient rows and a safe table made from them before the purge.
        let rows = job("rows");
        parquet_file(
            &rows.join("result.parquet"),
            vec![(
                crate::policy::PSEUDONYM_COLUMN,
                pseudonyms(&["victim", "other"]),
            )],
        );
        std::fs::write(rows.join("safe.csv"), "x\n1\n").expect("safe");
        // Per-patient rows of other patients only.
        let clean = job("clean");
        parquet_file(
            &clean.join("result.parquet"),
            vec![(crate::policy::PSEUDONYM_COLUMN, pseudonyms(&["other"]))],
        );
        let drop = HashSet::from(["victim".to_string()]);
        let touched = BTreeSet::from(["clinical_events".to_string()]);
        let id = purge_id(&mark().at, &mark().opt_outs_sha256);
        assert_eq!(id, "purge-20261204T070000-3f2a9c1b");
        crate::tre::anchors::create_checkpoint_key(ws.root()).expect("checkpoint key");
        let auditor = Auditor::new(&ws, Arc::new(crate::clock::SystemClock), 0).expect("auditor");
        let run = |id: &str| {
            let (report, marks) =
                purge_results(&ws, &results, &drop, &touched, &mark(), id).expect("purge");
            if !marks.is_empty() {
                ws.commit(
                    &auditor,
                    EntryDraft::new("operator", PURGE_WITHDRAW_ACTION).detail("purge", id),
                    marks,
                )
                .expect("commit marks");
            }
            report
        };
        let report = run(&id);
        let withdrawn = |name: &str| {
            result_withdrawn(
                &ws,
                &project,
                &crate::tre::id::Id::parse("job", name).expect("id"),
            )
            .expect("readable")
        };
        for name in ["agg", "rows"] {
            let msg = withdrawn(name).unwrap_or_else(|| panic!("{name} is withdrawn"));
            assert!(
                msg.contains("withdrawn by purge purge-20261204T070000-3f2a9c1b")
                    && msg.contains("re-run the job"),
                "{msg}"
            );
            assert!(report[name].withdrawn, "{name}");
            assert_eq!(mode(&results.join(name).join(WITHDRAWN_FILE)), 0o600);
        }
        assert_eq!(report["rows"].action, ResultAction::RowsRemoved);
        assert_eq!(mode(&rows.join("result.parquet")), 0o600);
        assert_eq!(withdrawn("clean"), None);
        assert!(!report["clean"].withdrawn);
        // A second purge keeps the first one's id.
        let later = purge_id("2026-12-05T07:00:00Z", "ffff0000");
        run(&later);
        assert!(withdrawn("agg").is_some_and(|m| m.contains("3f2a9c1b")));
        // The records are sealed and bound to the purge's entry: deleted, copied to
        // another job or written by hand, they are refused, never read as "not
        // withdrawn" (every reader takes an error as "not served").
        let refused = |name: &str| {
            result_withdrawn(
                &ws,
                &project,
                &crate::tre::id::Id::parse("job", name).expect("id"),
            )
            .is_err()
        };
        let record = agg.join(WITHDRAWN_FILE);
        let kept = std::fs::read(&record).expect("read");
        std::fs::remove_file(&record).expect("rm");
        assert!(refused("agg"), "a deleted withdrawal is refused");
        std::fs::write(&record, &kept).expect("restore");
        assert!(withdrawn("agg").is_some());
        std::fs::write(clean.join(WITHDRAWN_FILE), &kept).expect("copy");
        assert!(
            refused("clean"),
            "a withdrawal copied from another job is refused"
        );
        let old = job("old");
        write_atomic(
            &old.join(PURGE_MARK_FILE),
            &serde_json::to_vec(&mark()).expect("json"),
            Mode::Private,
        )
        .expect("mark");
        assert!(refused("old"), "an unsealed mark is refused");
    }

    #[test]
    fn a_table_whose_recorded_patients_include_a_purged_one_is_stale_by_value() {
        let ws_dir = tempfile::tempdir().expect("tmp");
        let ws = Workspace::init(&ws_dir.path().join("ws")).expect("ws");
        let results = purge_paths(&ws, "demo").results;
        for (name, members) in [("holds", ["other", "victim"]), ("clean", ["other", "more"])] {
            let d = results.join(name);
            std::fs::create_dir_all(&d).expect("mkdir");
            parquet_file(
                &d.join("result.parquet"),
                vec![("n", Arc::new(Int64Array::from(vec![12, 30])) as ArrayRef)],
            );
            parquet_file(
                &d.join(crate::received::MEMBERSHIP_FILE),
                vec![(crate::policy::PSEUDONYM_COLUMN, pseudonyms(&members))],
            );
        }
        // No dataset table is touched (as lineage would see it): only the membership,
        // read by value, finds the purged patient.
        let drop = HashSet::from(["victim".to_string()]);
        let (report, marks) =
            purge_results(&ws, &results, &drop, &BTreeSet::new(), &mark(), "purge-x")
                .expect("purge");
        assert_eq!(report["holds"].action, ResultAction::Stale);
        assert!(report["holds"].withdrawn);
        assert_eq!(report["clean"].action, ResultAction::Untouched);
        assert!(!report["clean"].withdrawn);
        assert_eq!(
            marks.len(),
            2,
            "a mark and a withdrawal for the stale table"
        );
    }

    #[test]
    fn quarantine_rows_of_listed_patients_are_removed() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("patients.csv");
        std::fs::write(
            &p,
            "line,reason,column,nhs_number,name\n2,bad date,date_of_birth,943 476 5919,A\n3,bad date,date_of_birth,9434765870,B\n",
        )
        .expect("write");
        let set = OptOutSet::from_numbers(vec![9434765919]);
        let (removed, reasons, _, rec) =
            purge_quarantine_file(&p, "nhs_number", &set).expect("purge");
        assert_eq!(removed, 1);
        assert_eq!(reasons.get("bad date"), Some(&1));
        assert!(rec.is_some());
        let text = std::fs::read_to_string(&p).expect("read");
        assert!(
            !text.contains("943 476 5919") && text.contains("9434765870"),
            "{text}"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode();
        assert_eq!(mode & 0o077, 0, "quarantine stays private");
        // Nothing to remove: the file is left as it is and no temporary file remains.
        let (removed, _, _, rec) = purge_quarantine_file(&p, "nhs_number", &set).expect("again");
        assert_eq!((removed, rec.is_none()), (0, true));
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1);
    }
}
