//! The extract: one project's research dataset from a GP extract, end to end.
//!
//! Owns the order of the flow and the accounting: for each table the policy names,
//! ingest → NHS number check → opt-outs (National Data Opt-out, then Type 1) → row
//! filters → minimise/pseudonymise → atomic Parquet, with rejected rows to the
//! quarantine; then `manifest.json`, last. Chunks are parsed and transformed in parallel
//! (rayon, through [`crate::ordered`]) while the next chunk is read, and appended in input
//! order as Parquet row groups encoded by the workers, so outputs are identical whatever
//! the thread count and memory stays bounded by a window of chunks. Danger:
//! this is where every rule of the product meets; everything that can be checked is
//! checked before the first byte is written, every input row is counted exactly once,
//! and any failure leaves no `manifest.json`, so nothing half-written looks complete.

mod plan;
mod progress;
mod table;
mod type1;

use std::path::PathBuf;

use crate::ingest::{self, IngestError};
use crate::output::OutputError;
use crate::transform::TransformBug;

pub use self::plan::ExtractPlan;
// The manifest's types live in `crate::manifest`; re-exported for existing callers.
pub use crate::manifest::{
    InputRecord, Manifest, OptOutRecord, OutputRecord, PurgeRecord, TableReport, Type1Record,
};

/// Why an extract did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// Refused by a rule: nothing was written.
    #[error("{0}")]
    Refused(String),
    /// Bad usage (e.g. an existing output directory).
    #[error("{0}")]
    Usage(String),
    /// An input file is unusable.
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// Writing failed; the run was aborted and no manifest was written.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// A bug.
    #[error(transparent)]
    Bug(#[from] TransformBug),
}

impl crate::error::Classify for ExtractError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            ExtractError::Refused(_) => ErrorKind::Refused,
            _ => ErrorKind::Failed,
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
    /// Replace an existing non-empty output directory.
    pub overwrite: bool,
    /// Worker threads for parsing and transforming (0: all cores).
    pub threads: usize,
    /// Size of a raw CSV chunk.
    pub chunk_bytes: usize,
    /// Draw progress bars on stderr.
    pub progress: bool,
}

impl ExtractOptions {
    /// Defaults for the given directories.
    pub fn new(input_dir: impl Into<PathBuf>, out_dir: impl Into<PathBuf>) -> Self {
        ExtractOptions {
            input_dir: input_dir.into(),
            out_dir: out_dir.into(),
            quarantine_dir: None,
            overwrite: false,
            threads: 0,
            chunk_bytes: ingest::DEFAULT_CHUNK_BYTES,
            progress: false,
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
