//! Quarantine: rows that could not be accepted, and the file they go to.
//!
//! Owns [`Rejected`] (a row's line, reason and raw fields, in schema order) and the
//! quarantine sink (one private CSV per table). Sits beside the flow: ingest produces
//! rejects, the extract writes them here. Danger: these are raw patient rows; they go
//! to the quarantine file and nowhere else (never an error, a log or `Debug`).

use std::path::{Path, PathBuf};

use crate::durable::{AtomicFile, DurableError, FileRecord, Mode};

/// A row that could not be accepted.
/// A row that could not be accepted.
#[derive(Clone)]
pub struct Rejected {
    /// 1-based line (CSV, header is line 1) or row (Parquet) number.
    pub line: u64,
    /// Reason code, e.g. `unparsable_date`.
    pub reason: &'static str,
    /// The column at fault, if one.
    pub column: Option<String>,
    /// The row's raw fields (patient data: quarantine only).
    pub fields: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Rejected(line {}, {}, {:?}, <{} fields redacted>)",
            self.line,
            self.reason,
            self.column,
            self.fields.len()
        )
    }
}

/// Quarantine CSV for one table: `line,reason,column,` then the row's original fields.
/// Mode 0600: these are raw patient rows.
pub struct QuarantineSink {
    writer: csv::Writer<AtomicFile>,
    target: PathBuf,
    rows: u64,
}

impl std::fmt::Debug for QuarantineSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QuarantineSink({}, {} rows)",
            self.target.display(),
            self.rows
        )
    }
}

impl QuarantineSink {
    /// Create with the table's column names.
    pub fn create(target: &Path, columns: &[String]) -> Result<Self, DurableError> {
        let file = AtomicFile::create(target, Mode::Private)?;
        let mut writer = csv::WriterBuilder::new().flexible(true).from_writer(file);
        let mut header = vec!["line".to_string(), "reason".into(), "column".into()];
        header.extend(columns.iter().cloned());
        writer
            .write_record(&header)
            .map_err(|e| csv_err(target, e))?;
        Ok(QuarantineSink {
            writer,
            target: target.to_path_buf(),
            rows: 0,
        })
    }

    /// Append rejected rows.
    pub fn write(&mut self, rows: &[Rejected]) -> Result<(), DurableError> {
        for r in rows {
            let line = r.line.to_string();
            let mut rec: Vec<&[u8]> = vec![
                line.as_bytes(),
                r.reason.as_bytes(),
                r.column.as_deref().unwrap_or("").as_bytes(),
            ];
            rec.extend(r.fields.iter().map(Vec::as_slice));
            self.writer
                .write_record(&rec)
                .map_err(|e| csv_err(&self.target, e))?;
            self.rows += 1;
        }
        Ok(())
    }

    /// Commit durably.
    pub fn finish(self) -> Result<(FileRecord, u64), DurableError> {
        let target = self.target.clone();
        let file = self.writer.into_inner().map_err(|e| DurableError {
            path: target.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        Ok((file.commit()?, self.rows))
    }
}

fn csv_err(path: &Path, e: csv::Error) -> DurableError {
    DurableError {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    }
}
