//! The extract: one project's research dataset from a GP extract, end to end.
//!
//! Owns the order of the flow and the accounting: for each table the policy names,
//! ingest → NHS number check → opt-outs (National Data Opt-out as a deny-list or the
//! service's allow-list, then Type 1) → row
//! filters → minimise/pseudonymise → atomic Parquet, with rejected rows to the
//! quarantine; then `manifest.json`, last. Chunks are parsed and transformed in parallel
//! (rayon, through [`crate::ordered`]) while the next chunk is read, and appended in input
//! order as Parquet row groups encoded by the workers, so outputs are identical whatever
//! the thread count and memory stays bounded by a window of chunks. Danger:
//! this is where every rule of the product meets; everything that can be checked is
//! checked before the first byte is written, every input row is counted exactly once,
//! and any failure leaves no `manifest.json`, so nothing half-written looks complete.

mod guard;
mod paths;
mod plan;
mod progress;
mod table;
mod type1;

use std::path::PathBuf;

use crate::ingest::{self, IngestError};
use crate::output::OutputError;
use crate::quarantine::RejectReason;
use crate::transform::TransformBug;

pub use self::paths::PathError;
pub use self::plan::ExtractPlan;
// The manifest's types live in `crate::manifest`; re-exported for existing callers.
pub use crate::manifest::{
    InputRecord, Manifest, OptOutRecord, OutputRecord, PurgeRecord, TableReport, Type1Record,
};

/// Why an extract did not complete. Nothing here ever holds a value from a data row or
/// a list: files, lines, tables and reasons only.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// No opt-out list (deny-list or allow-list) and no declared exemption.
    #[error(
        "the National Data Opt-out list is required (--opt-outs FILE, or the \"Check for National Data Opt-outs\" service's reply as --ndoo-allow-list FILE); only a policy declaring a lawful exemption may run without it"
    )]
    OptOutsRequired,
    /// The opt-out list is stale or unusable.
    #[error(transparent)]
    OptOuts(#[from] crate::optout::OptOutError),
    /// A table without an NHS number column, while opt-outs must be applied.
    #[error("table {table} has no nhs_number column, so opt-outs cannot be applied to it")]
    NoNhsNumberColumn {
        /// The table.
        table: String,
    },
    /// No input for any table that records Type 1 codes.
    #[error(
        "Type 1 opt-outs cannot be checked: no input in {} for a table that records them ({tables}); supply it or declare a type1_exemption",
        dir.display()
    )]
    NoType1Source {
        /// The input directory.
        dir: PathBuf,
        /// The tables that record Type 1 codes.
        tables: String,
    },
    /// A malformed row holds a Type 1 dissent code but no NHS number that parses.
    #[error(
        "{}, line {line}: a rejected row ({reason}) holds a Type 1 dissent code but its NHS number cannot be read, so the dissent cannot be applied; correct the row (see the quarantine rules) and rerun",
        path.display()
    )]
    Type1Unattributable {
        /// The Type 1 table's input.
        path: PathBuf,
        /// The row's line (CSV) or row number (Parquet).
        line: u64,
        /// Why the row was rejected.
        reason: RejectReason,
    },
    /// The output, quarantine and input directories are unusable together.
    #[error(transparent)]
    Paths(#[from] PathError),
    /// The worker pool could not start.
    #[error("cannot start {threads} worker threads: {source}")]
    Threads {
        /// Threads asked for.
        threads: usize,
        /// The underlying error.
        source: rayon::ThreadPoolBuildError,
    },
    /// An input file is unusable.
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// Writing failed; the run was aborted and no manifest was written.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// A bug in a transform.
    #[error(transparent)]
    Bug(#[from] TransformBug),
    /// A worker thread panicked: a bug in tre.
    #[error(
        "bug: a worker thread panicked while processing table {table}; no manifest was written. Please report this"
    )]
    WorkerPanicked {
        /// The table being processed.
        table: String,
    },
    /// The cluster did not return the pseudonyms (`--scheduler`); nothing of the run is
    /// released and no manifest was written.
    #[error("the cluster could not pseudonymise: {message}; no manifest was written")]
    Cluster {
        /// What failed (never a number or key material).
        message: String,
    },
    /// The manifest could not be serialised: a bug.
    #[error("bug: cannot serialise the manifest: {0}")]
    Manifest(serde_json::Error),
}

impl crate::error::Classify for ExtractError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            ExtractError::OptOutsRequired
            | ExtractError::NoNhsNumberColumn { .. }
            | ExtractError::NoType1Source { .. }
            | ExtractError::Type1Unattributable { .. } => ErrorKind::Refused,
            ExtractError::OptOuts(e) => crate::error::Classify::kind(e),
            ExtractError::Paths(e) => crate::error::Classify::kind(e),
            ExtractError::Ingest(e) => crate::error::Classify::kind(e),
            ExtractError::Output(e) => crate::error::Classify::kind(e),
            ExtractError::Threads { .. } | ExtractError::Cluster { .. } => ErrorKind::Failed,
            ExtractError::Bug(_)
            | ExtractError::WorkerPanicked { .. }
            | ExtractError::Manifest(_) => ErrorKind::Bug,
        }
    }
}

/// Options of a run that are not in the policy.
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// Directory holding `<table>.csv` or `<table>.parquet`.
    pub input_dir: PathBuf,
    /// Output directory.
    pub out_dir: PathBuf,
    /// Quarantine directory (default: `OUT.quarantine`).
    pub quarantine_dir: Option<PathBuf>,
    /// Replace the files an earlier extract wrote (only those its manifest or listing names).
    pub overwrite: bool,
    /// Accept an opt-out list with no entries.
    pub allow_empty_opt_outs: bool,
    /// Worker threads for parsing and transforming (0: all cores).
    pub threads: usize,
    /// How CSV inputs are cut: chunk size, longest record, most fields.
    pub csv_limits: ingest::CsvLimits,
    /// Draw progress bars on stderr.
    pub progress: bool,
    /// Where pseudonyms are computed when not with the local key: a Ballista cluster's
    /// trusted executors (`tre extract --scheduler`, `crate::cluster`). Everything else
    /// of the run (and so the output bytes) is unchanged.
    pub pseudonyms: Option<std::sync::Arc<dyn crate::pseudonym::PseudonymService>>,
}

impl ExtractOptions {
    /// Defaults for the given directories.
    pub fn new(input_dir: impl Into<PathBuf>, out_dir: impl Into<PathBuf>) -> Self {
        ExtractOptions {
            input_dir: input_dir.into(),
            out_dir: out_dir.into(),
            quarantine_dir: None,
            overwrite: false,
            allow_empty_opt_outs: false,
            threads: 0,
            csv_limits: ingest::CsvLimits::default(),
            progress: false,
            pseudonyms: None,
        }
    }

    /// The quarantine directory: the given one, or `OUT.quarantine`.
    pub fn quarantine(&self) -> PathBuf {
        self.quarantine_dir.clone().unwrap_or_else(|| {
            let mut s = self.out_dir.as_os_str().to_owned();
            s.push(".quarantine");
            PathBuf::from(s)
        })
    }
}
