//! Ingest: GP extract files (CSV or Parquet) into typed Arrow batches, bad rows to quarantine.
//!
//! Owns reading one table's input file: checking its header against the table schema
//! (file-level faults are errors naming the file), cutting a CSV into bounded chunks of
//! whole records (quote-aware, so RFC 4180 fields may hold newlines), and parsing each
//! chunk into a [`Parsed`] batch typed by the schema. The NHS number is normalised and
//! Modulus-11 checked here, row by row, and carried on as `UInt64`. A row that does not
//! fit (wrong field count, invalid UTF-8, unparsable value, missing required value,
//! invalid NHS number) becomes a [`Rejected`] with its line number and reason. Danger:
//! rejected rows carry raw patient values; they may only go to the quarantine writer,
//! never into an error message or a log. Memory is bounded by the chunk size and the
//! maximum record size: a longer record is streamed past and kept only as a prefix
//! ([`overlong`]).

mod csv;
pub mod decoder;
pub mod overlong;
mod parquet;
mod values;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::schema::{IdentifierClass, TableSchema};

pub use self::csv::{
    CsvChunker, CsvLimits, MAX_FIELDS, MAX_RECORD_BYTES, RawChunk, parse_csv_chunk,
};
pub use self::parquet::{ParquetBatch, ParquetInput, parse_arrow_batch};
pub use self::values::{days_from_civil, parse_date, parse_f64};
pub use crate::quarantine::Rejected;

/// Default size of a raw CSV chunk.
pub const DEFAULT_CHUNK_BYTES: usize = 4 << 20;

/// The name of the line-number column carried beside parsed data.
pub const LINE_COLUMN: &str = "__line";

/// File-level faults: the whole table is refused and nothing is written.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The input file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is empty (no header line).
    #[error("{path} is empty: expected a header line naming the columns of table {table}")]
    Empty {
        /// The input file.
        path: PathBuf,
        /// The table.
        table: String,
    },
    /// The header does not match the schema.
    #[error("{path}, line 1: {message}")]
    Header {
        /// The input file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A Parquet file cannot be read or does not match the schema.
    #[error("{path}: {message}")]
    Parquet {
        /// The input file.
        path: PathBuf,
        /// What is wrong (never a value).
        message: String,
    },
    /// A quoted field is never closed.
    #[error("{}, line {line}: a quoted field opened here is never closed; fix the quoting", path.display())]
    UnterminatedQuote {
        /// The input file.
        path: PathBuf,
        /// The line where the quote opened.
        line: u64,
    },
    /// Lines end in a carriage return alone.
    #[error("{} uses CR-only line endings (old Mac style); convert it to LF or CRLF line endings", path.display())]
    CrOnlyLineEndings {
        /// The input file.
        path: PathBuf,
    },
    /// Neither `<table>.csv` nor `<table>.parquet` exists.
    #[error("no input for table {table}: expected {dir}/{table}.csv or {dir}/{table}.parquet")]
    Missing {
        /// The input directory.
        dir: PathBuf,
        /// The table.
        table: String,
    },
    /// Both a CSV and a Parquet file exist for a table.
    #[error("ambiguous input for table {table} in {dir}: both .csv and .parquet exist; keep one")]
    Ambiguous {
        /// The input directory.
        dir: PathBuf,
        /// The table.
        table: String,
    },
}

impl crate::error::Classify for IngestError {
    /// A file that cannot be read or does not fit its schema is bad input (exit 2).
    fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Failed
    }
}

/// A parsed chunk: accepted rows as a batch (schema columns, the NHS number as `UInt64`,
/// then [`LINE_COLUMN`]) and the rejected rows.
#[derive(Debug)]
pub struct Parsed {
    /// Accepted rows.
    pub batch: RecordBatch,
    /// Rejected rows.
    pub rejected: Vec<Rejected>,
    /// Rows read (accepted + rejected).
    pub rows_read: u64,
}

/// The Arrow schema of parsed batches for a table.
pub fn parsed_schema(table: &TableSchema) -> SchemaRef {
    let mut fields: Vec<Field> = table
        .columns
        .iter()
        .map(|c| {
            let ty = if c.class == IdentifierClass::NhsNumber {
                DataType::UInt64
            } else {
                c.ty.arrow_type()
            };
            Field::new(&c.name, ty, true)
        })
        .collect();
    fields.push(Field::new(LINE_COLUMN, DataType::UInt64, false));
    Arc::new(Schema::new(fields))
}

/// Where a table's input is and in which format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputFile {
    /// A CSV file.
    Csv(PathBuf),
    /// A Parquet file.
    Parquet(PathBuf),
}

impl InputFile {
    /// Find `<dir>/<table>.csv` or `.parquet`.
    pub fn locate(dir: &Path, table: &str) -> Result<Self, IngestError> {
        let csv = dir.join(format!("{table}.csv"));
        let pq = dir.join(format!("{table}.parquet"));
        match (csv.exists(), pq.exists()) {
            (true, false) => Ok(InputFile::Csv(csv)),
            (false, true) => Ok(InputFile::Parquet(pq)),
            (true, true) => Err(IngestError::Ambiguous {
                dir: dir.to_path_buf(),
                table: table.to_string(),
            }),
            (false, false) => Err(IngestError::Missing {
                dir: dir.to_path_buf(),
                table: table.to_string(),
            }),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        match self {
            InputFile::Csv(p) | InputFile::Parquet(p) => p,
        }
    }
}

fn check_header(names: &[String], table: &TableSchema) -> Result<Vec<usize>, String> {
    let mut map = Vec::with_capacity(names.len());
    let mut seen = vec![false; table.columns.len()];
    for (i, n) in names.iter().enumerate() {
        match table.column_index(n) {
            Some(idx) if seen[idx] => {
                return Err(format!(
                    "column {} appears twice (field {})",
                    describe_name(n),
                    i + 1
                ));
            }
            Some(idx) => {
                seen[idx] = true;
                map.push(idx);
            }
            None => {
                return Err(format!(
                    "unknown column {} (field {}) is not in schema {} ({}); the extract must match the schema exactly (is the header line missing?)",
                    describe_name(n),
                    i + 1,
                    table.name,
                    table.source.display()
                ));
            }
        }
    }
    let missing: Vec<&str> = table
        .columns
        .iter()
        .zip(&seen)
        .filter(|(_, s)| !**s)
        .map(|(c, _)| c.name.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "missing column(s) {} required by schema {}",
            missing.join(", "),
            table.name
        ));
    }
    Ok(map)
}

/// A header name fit to quote in a message, or a description of it: a name holding a
/// digit, an `@` or more than 64 characters may be a value from a data row (an NHS
/// number, a date), so it is described, never quoted.
pub fn describe_name(n: &str) -> String {
    let safe = n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphabetic() || matches!(c, '_' | ' ' | '-'));
    if safe {
        format!("{n:?}")
    } else {
        format!(
            "(a name of {} characters that looks like a value, not shown)",
            n.chars().count()
        )
    }
}
