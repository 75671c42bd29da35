//! Durable output files: atomic Parquet tables, quarantine CSVs and JSON documents.
//!
//! Owns the durability contract of DESIGN.md: every file is written under a temporary
//! name in its final directory, `fsync`ed, renamed into place and the directory
//! `fsync`ed; any write, `fsync` or rename error aborts (no retry). Files are hashed as
//! they are written, so the manifest's sha256 and size need no second read. Danger: a
//! half-written file must never carry a final name — an [`AtomicFile`] that is dropped
//! without `commit` removes its temporary file. Quarantine files hold raw rejected rows
//! and are created with mode 0600.

use std::fs::File;
use std::io::{BufWriter, Write};
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
use serde::Serialize;
use sha2::{Digest, Sha256};

/// An output could not be written. The run must abort.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
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

/// `fsync` the directory holding `path`, so a rename in it is durable.
pub fn fsync_parent(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// A file's final name, size and SHA-256.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct FileRecord {
    /// Path (relative to the output directory in manifests).
    pub path: String,
    /// Size in bytes.
    #[serde(alias = "bytes")]
    pub size: u64,
    /// Lowercase hex SHA-256.
    pub sha256: String,
}

/// A writer that hashes and counts what passes through.
pub struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A file written under a temporary name and renamed into place on `commit`.
pub struct AtomicFile {
    writer: Option<HashingWriter<BufWriter<File>>>,
    tmp: PathBuf,
    target: PathBuf,
}

impl std::fmt::Debug for AtomicFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AtomicFile({})", self.target.display())
    }
}

impl AtomicFile {
    /// Create `target`'s temporary sibling. `private` sets mode 0600.
    pub fn create(target: &Path, private: bool) -> Result<Self, OutputError> {
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = target.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(if private { 0o600 } else { 0o644 });
        }
        let file = opts.open(&tmp).map_err(|source| OutputError::Io {
            path: tmp.clone(),
            source,
        })?;
        Ok(AtomicFile {
            writer: Some(HashingWriter {
                inner: BufWriter::with_capacity(1 << 20, file),
                hasher: Sha256::new(),
                bytes: 0,
            }),
            tmp,
            target: target.to_path_buf(),
        })
    }

    fn io(&self, source: std::io::Error) -> OutputError {
        OutputError::Io {
            path: self.target.clone(),
            source,
        }
    }

    /// Flush, `fsync`, rename into place, `fsync` the directory.
    pub fn commit(mut self) -> Result<FileRecord, OutputError> {
        let Some(w) = self.writer.take() else {
            return Err(self.io(std::io::Error::other("bug: file committed twice")));
        };
        let HashingWriter {
            inner,
            hasher,
            bytes,
        } = w;
        let file = inner.into_inner().map_err(|e| self.io(e.into_error()))?;
        file.sync_all().map_err(|e| self.io(e))?;
        drop(file);
        std::fs::rename(&self.tmp, &self.target).map_err(|e| self.io(e))?;
        fsync_parent(&self.target).map_err(|e| self.io(e))?;
        let mut hex = [0u8; 64];
        crate::pseudonym::hex_into(&hasher.finalize(), &mut hex);
        Ok(FileRecord {
            path: self.target.to_string_lossy().into_owned(),
            size: bytes,
            sha256: String::from_utf8_lossy(&hex).into_owned(),
        })
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.writer {
            Some(w) => w.write(buf),
            None => Err(std::io::Error::other("file already committed")),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.writer {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Write `bytes` atomically to `target`.
pub fn write_atomic(target: &Path, bytes: &[u8], private: bool) -> Result<FileRecord, OutputError> {
    let mut f = AtomicFile::create(target, private)?;
    f.write_all(bytes).map_err(|source| OutputError::Io {
        path: target.to_path_buf(),
        source,
    })?;
    f.commit()
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
    file.commit()
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
        let file = AtomicFile::create(target, false)?;
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
        let file = AtomicFile::create(target, false)?;
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
    pub fn create(target: &Path, columns: &[String]) -> Result<Self, OutputError> {
        let file = AtomicFile::create(target, true)?;
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
    pub fn write(&mut self, rows: &[crate::ingest::Rejected]) -> Result<(), OutputError> {
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
    pub fn finish(self) -> Result<(FileRecord, u64), OutputError> {
        let target = self.target.clone();
        let file = self.writer.into_inner().map_err(|e| OutputError::Io {
            path: target.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        Ok((file.commit()?, self.rows))
    }
}

fn csv_err(path: &Path, e: csv::Error) -> OutputError {
    OutputError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_atomic_file_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tmp");
        let target = dir.path().join("t.parquet");
        {
            let mut f = AtomicFile::create(&target, false).expect("create");
            f.write_all(b"partial").expect("write");
        }
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
    }

    #[test]
    fn commit_hashes_and_renames() {
        let dir = tempfile::tempdir().expect("tmp");
        let target = dir.path().join("x.txt");
        let rec = write_atomic(&target, b"abc", true).expect("write");
        assert_eq!(rec.size, 3);
        assert_eq!(
            rec.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&target)
                .expect("meta")
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600);
        }
    }
}
