//! Output tables: atomic Parquet files and quarantine CSVs, the last stage of the extract.
//!
//! Owns how tables are encoded (zstd Parquet, deterministic properties, row groups
//! encoded by workers and appended in order); every byte goes through
//! [`crate::durable::AtomicFile`], so DESIGN.md's durability contract holds here too.
//! Danger: a half-written file must never carry a final name, and quarantine files hold
//! raw rejected rows: they are created with mode 0600.

use std::path::{Path, PathBuf};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use std::sync::Arc;

use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::{ArrowColumnChunk, ArrowRowGroupWriterFactory, compute_leaves};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::ColumnPath;

use crate::durable::{AtomicFile, DurableError, FileRecord, Mode};

/// An output could not be written. The run must abort.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The durable writer failed.
    #[error(transparent)]
    Durable(#[from] DurableError),
    /// A write, fsync or rename failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Parquet encoding failed.
    #[error("cannot encode {path} as Parquet: {message}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The encoder's message.
        message: String,
    },
}

/// Writer properties for every Parquet output: zstd, statistics, deterministic.
pub fn parquet_properties() -> WriterProperties {
    let level = ZstdLevel::try_new(3).unwrap_or_default();
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_statistics_enabled(EnabledStatistics::Chunk)
        // Min/max of keyed hashes prune nothing and cost a comparison per row.
        .set_column_statistics_enabled(
            ColumnPath::from(crate::policy::PSEUDONYM_COLUMN),
            EnabledStatistics::None,
        )
        // Pseudonyms are random hex: only zstd's entropy coding helps, and level 1 gets
        // it at a fraction of level 3's match-finding time.
        .set_column_compression(
            ColumnPath::from(crate::policy::PSEUDONYM_COLUMN),
            Compression::ZSTD(ZstdLevel::try_new(1).unwrap_or_default()),
        )
        .set_max_row_group_row_count(Some(1 << 20))
        .set_created_by(format!("tre-pipeline {}", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Commit a Parquet file whose writer has just written its footer.
fn commit_parquet(
    footer: parquet::errors::Result<AtomicFile>,
    target: &Path,
) -> Result<FileRecord, OutputError> {
    let file = footer.map_err(|e| OutputError::Parquet {
        path: target.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(file.commit()?)
}

/// A Parquet table written atomically.
pub struct ParquetSink {
    writer: ArrowWriter<AtomicFile>,
    target: PathBuf,
    rows: u64,
}

impl std::fmt::Debug for ParquetSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ParquetSink({}, {} rows)",
            self.target.display(),
            self.rows
        )
    }
}

impl ParquetSink {
    /// Start writing `target` with `schema`.
    pub fn create(target: &Path, schema: SchemaRef) -> Result<Self, OutputError> {
        let file = AtomicFile::create(target, Mode::Shared)?;
        let writer =
            ArrowWriter::try_new(file, schema, Some(parquet_properties())).map_err(|e| {
                OutputError::Parquet {
                    path: target.to_path_buf(),
                    message: e.to_string(),
                }
            })?;
        Ok(ParquetSink {
            writer,
            target: target.to_path_buf(),
            rows: 0,
        })
    }

    /// Append a batch.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), OutputError> {
        self.rows += batch.num_rows() as u64;
        self.writer.write(batch).map_err(|e| OutputError::Parquet {
            path: self.target.clone(),
            message: e.to_string(),
        })
    }

    /// Finish the file and commit it durably.
    pub fn finish(self) -> Result<(FileRecord, u64), OutputError> {
        Ok((
            commit_parquet(self.writer.into_inner(), &self.target)?,
            self.rows,
        ))
    }
}

/// A Parquet table written one row group per [`RowGroupEncoder::encode`] call, so the
/// expensive part (column encoding and zstd) runs on worker threads while one thread
/// appends finished row groups in order. The bytes depend only on the batches and their
/// order, never on which thread encoded them.
pub struct RowGroupSink {
    writer: SerializedFileWriter<AtomicFile>,
    factory: Arc<ArrowRowGroupWriterFactory>,
    target: PathBuf,
    rows: u64,
    row_groups: usize,
}

impl std::fmt::Debug for RowGroupSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RowGroupSink({}, {} rows in {} row groups)",
            self.target.display(),
            self.rows,
            self.row_groups
        )
    }
}

/// Encodes batches into row groups for a [`RowGroupSink`]; cheap to share across threads.
#[derive(Clone)]
pub struct RowGroupEncoder {
    factory: Arc<ArrowRowGroupWriterFactory>,
    schema: SchemaRef,
    target: PathBuf,
}

impl std::fmt::Debug for RowGroupEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RowGroupEncoder({})", self.target.display())
    }
}

/// One encoded (compressed) row group, ready to append.
pub struct EncodedRowGroup {
    chunks: Vec<ArrowColumnChunk>,
    rows: usize,
}

impl std::fmt::Debug for EncodedRowGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EncodedRowGroup({} rows)", self.rows)
    }
}

impl EncodedRowGroup {
    /// Rows in the group.
    pub fn rows(&self) -> usize {
        self.rows
    }
}

impl RowGroupEncoder {
    fn err(&self, e: impl std::fmt::Display) -> OutputError {
        OutputError::Parquet {
            path: self.target.clone(),
            message: e.to_string(),
        }
    }

    /// Encode and compress `batch` as one row group (any thread).
    pub fn encode(&self, batch: &RecordBatch) -> Result<EncodedRowGroup, OutputError> {
        // The row group index only matters for encryption, which outputs never use.
        let mut writers = self
            .factory
            .create_column_writers(0)
            .map_err(|e| self.err(e))?;
        let mut leaves = writers.iter_mut();
        for (field, column) in self.schema.fields().iter().zip(batch.columns()) {
            for leaf in compute_leaves(field, column).map_err(|e| self.err(e))? {
                let w = leaves
                    .next()
                    .ok_or_else(|| self.err("batch has more leaf columns than the schema"))?;
                w.write(&leaf).map_err(|e| self.err(e))?;
            }
        }
        let chunks = writers
            .into_iter()
            .map(|w| w.close().map_err(|e| self.err(e)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(EncodedRowGroup {
            chunks,
            rows: batch.num_rows(),
        })
    }
}

impl RowGroupSink {
    /// Start writing `target` with `schema` (same properties as [`ParquetSink`]).
    pub fn create(target: &Path, schema: SchemaRef) -> Result<Self, OutputError> {
        let err = |e: parquet::errors::ParquetError| OutputError::Parquet {
            path: target.to_path_buf(),
            message: e.to_string(),
        };
        let file = AtomicFile::create(target, Mode::Shared)?;
        let (writer, factory) = ArrowWriter::try_new(file, schema, Some(parquet_properties()))
            .and_then(ArrowWriter::into_serialized_writer)
            .map_err(err)?;
        Ok(RowGroupSink {
            writer,
            factory: Arc::new(factory),
            target: target.to_path_buf(),
            rows: 0,
            row_groups: 0,
        })
    }

    /// An encoder for worker threads.
    pub fn encoder(&self, schema: SchemaRef) -> RowGroupEncoder {
        RowGroupEncoder {
            factory: Arc::clone(&self.factory),
            schema,
            target: self.target.clone(),
        }
    }

    /// Append an encoded row group (in output order). Empty groups are skipped.
    pub fn append(&mut self, group: EncodedRowGroup) -> Result<(), OutputError> {
        if group.rows == 0 {
            return Ok(());
        }
        let err = |e: parquet::errors::ParquetError| OutputError::Parquet {
            path: self.target.clone(),
            message: e.to_string(),
        };
        let mut rg = self.writer.next_row_group().map_err(err)?;
        for chunk in group.chunks {
            chunk.append_to_row_group(&mut rg).map_err(err)?;
        }
        rg.close().map_err(err)?;
        self.rows += group.rows as u64;
        self.row_groups += 1;
        Ok(())
    }

    /// Finish the file and commit it durably.
    pub fn finish(self) -> Result<(FileRecord, u64), OutputError> {
        Ok((
            commit_parquet(self.writer.into_inner(), &self.target)?,
            self.rows,
        ))
    }
}
