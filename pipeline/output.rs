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

impl crate::error::Classify for OutputError {
    fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Failed
    }
}

/// Writer properties for every Parquet output: zstd, statistics, deterministic.
pub fn parquet_properties() -> WriterProperties {
    properties_builder().build()
}

/// [`parquet_properties`] with the pseudonym column plain-encoded: for row groups where
/// almost every pseudonym is new, a dictionary only costs a hash per row.
fn plain_pseudonym_properties() -> WriterProperties {
    properties_builder()
        .set_column_dictionary_enabled(ColumnPath::from(crate::policy::PSEUDONYM_COLUMN), false)
        .build()
}

/// A row group's pseudonyms are dictionary-encoded when at most this share of them are
/// distinct (measured per row group; `benches/compare.sh` shows both row orders).
pub const DICTIONARY_MAX_DISTINCT_SHARE: f64 = 0.5;

/// Most rows in one row group.
const MAX_ROW_GROUP_ROWS: usize = 1 << 20;

/// Room for every distinct pseudonym of the largest row group that gets a dictionary
/// (64 hex characters plus a 4-byte length each, at most half the rows distinct).
const PSEUDONYM_DICTIONARY_LIMIT: usize = MAX_ROW_GROUP_ROWS / 2 * 68 + 1;

fn properties_builder() -> parquet::file::properties::WriterPropertiesBuilder {
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
        // A dictionary chosen by `dictionary_pays` must hold all of a row group's distinct
        // pseudonyms: at the default 1 MiB limit the writer fell back to plain after 16k
        // of them and event-order output was twice polars' size.
        .set_column_dictionary_page_size_limit(
            ColumnPath::from(crate::policy::PSEUDONYM_COLUMN),
            PSEUDONYM_DICTIONARY_LIMIT,
        )
        .set_max_row_group_row_count(Some(MAX_ROW_GROUP_ROWS))
        .set_created_by(format!("tre-pipeline {}", env!("CARGO_PKG_VERSION")))
}

/// Whether a dictionary pays for this pseudonym column: few enough distinct values.
/// Counts distinct 64-bit fingerprints (exact for keyed hashes up to chance collisions,
/// which only nudge the choice); deterministic, so the bytes never depend on threads.
fn dictionary_pays(column: &dyn arrow::array::Array) -> bool {
    use arrow::array::Array;
    let Some(values) = column.as_any().downcast_ref::<arrow::array::StringArray>() else {
        return true;
    };
    let rows = values.len() - values.null_count();
    let limit = (rows as f64 * DICTIONARY_MAX_DISTINCT_SHARE) as usize;
    let mut seen: std::collections::HashSet<u64, std::hash::BuildHasherDefault<Prehashed>> =
        std::collections::HashSet::with_capacity_and_hasher(limit + 1, Default::default());
    let mut previous: Option<&str> = None;
    for v in values.iter().flatten() {
        // Runs of one patient's rows are the common case: skip them cheaply.
        if previous == Some(v) {
            continue;
        }
        previous = Some(v);
        seen.insert(fingerprint(v.as_bytes()));
        if seen.len() > limit {
            return false;
        }
    }
    true
}

/// A 64-bit fingerprint of a value. Pseudonyms are uniformly random hex, so their first
/// and last 8 bytes carry 64 bits between them and are all that is mixed; shorter values
/// are mixed a byte at a time.
fn fingerprint(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = bytes.len() as u64;
    match (bytes.first_chunk::<8>(), bytes.last_chunk::<8>()) {
        (Some(head), Some(tail)) if bytes.len() >= 16 => {
            h = (h ^ u64::from_le_bytes(*head))
                .wrapping_mul(K)
                .rotate_left(29);
            h = (h ^ u64::from_le_bytes(*tail)).wrapping_mul(K);
        }
        _ => {
            for &b in bytes {
                h = (h ^ u64::from(b)).wrapping_mul(K);
            }
        }
    }
    h ^ (h >> 32)
}

/// A hasher for values that are already fingerprints.
#[derive(Default)]
struct Prehashed(u64);

impl std::hash::Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = fingerprint(bytes);
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
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

/// A Parquet table written one row group per [`RowGroupEncoder::begin`] and its
/// builder, so the expensive part (column encoding and zstd) runs on worker threads while one thread
/// appends finished row groups in order. The bytes depend only on the batches and their
/// order, never on which thread encoded them.
pub struct RowGroupSink {
    writer: SerializedFileWriter<AtomicFile>,
    factory: Arc<ArrowRowGroupWriterFactory>,
    plain: Arc<ArrowRowGroupWriterFactory>,
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
    /// The same, with the pseudonym column plain-encoded.
    plain: Arc<ArrowRowGroupWriterFactory>,
    /// The pseudonym column's index, when the table has one.
    pseudonym: Option<usize>,
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

    /// Start a row group that will hold `first` and the batches after it (written in
    /// order by one thread). The pseudonym column's encoding is chosen from `first`:
    /// a dictionary where its pseudonyms repeat enough, plain otherwise.
    pub fn begin(&self, first: &RecordBatch) -> Result<RowGroupBuilder<'_>, OutputError> {
        let factory = match self.pseudonym.and_then(|i| first.columns().get(i)) {
            Some(column) if !dictionary_pays(column.as_ref()) => &self.plain,
            _ => &self.factory,
        };
        // The row group index only matters for encryption, which outputs never use.
        let writers = factory.create_column_writers(0).map_err(|e| self.err(e))?;
        Ok(RowGroupBuilder {
            encoder: self,
            writers,
            rows: 0,
        })
    }
}

/// A row group being encoded from consecutive batches: each batch is encoded and
/// compressed as it is written, so only the encoded pages (and the pseudonym
/// dictionary) stay in memory until [`RowGroupBuilder::finish`].
pub struct RowGroupBuilder<'a> {
    encoder: &'a RowGroupEncoder,
    writers: Vec<parquet::arrow::arrow_writer::ArrowColumnWriter>,
    rows: usize,
}

impl std::fmt::Debug for RowGroupBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RowGroupBuilder({} rows)", self.rows)
    }
}

impl RowGroupBuilder<'_> {
    /// Append `batch` (the table's output schema) to the row group.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), OutputError> {
        let e = self.encoder;
        let mut leaves = self.writers.iter_mut();
        for (field, column) in e.schema.fields().iter().zip(batch.columns()) {
            for leaf in compute_leaves(field, column).map_err(|x| e.err(x))? {
                let w = leaves
                    .next()
                    .ok_or_else(|| e.err("batch has more leaf columns than the schema"))?;
                w.write(&leaf).map_err(|x| e.err(x))?;
            }
        }
        self.rows += batch.num_rows();
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Close every column: the finished row group, ready to append in order.
    pub fn finish(self) -> Result<EncodedRowGroup, OutputError> {
        let e = self.encoder;
        let chunks = self
            .writers
            .into_iter()
            .map(|w| w.close().map_err(|x| e.err(x)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(EncodedRowGroup {
            chunks,
            rows: self.rows,
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
        // The plain factory's own writer only ever sees the header: its column chunks are
        // appended to `writer`, whose schema is the same.
        let (_, plain) = ArrowWriter::try_new(
            std::io::sink(),
            schema.clone(),
            Some(plain_pseudonym_properties()),
        )
        .and_then(ArrowWriter::into_serialized_writer)
        .map_err(err)?;
        let (writer, factory) = ArrowWriter::try_new(file, schema, Some(parquet_properties()))
            .and_then(ArrowWriter::into_serialized_writer)
            .map_err(err)?;
        Ok(RowGroupSink {
            writer,
            factory: Arc::new(factory),
            plain: Arc::new(plain),
            target: target.to_path_buf(),
            rows: 0,
            row_groups: 0,
        })
    }

    /// An encoder for worker threads.
    pub fn encoder(&self, schema: SchemaRef) -> RowGroupEncoder {
        RowGroupEncoder {
            factory: Arc::clone(&self.factory),
            plain: Arc::clone(&self.plain),
            pseudonym: schema.index_of(crate::policy::PSEUDONYM_COLUMN).ok(),
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
        crate::durable::crash_point("row group appended");
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;
    use arrow::datatypes::{DataType, Field, Schema};

    fn pseudonyms(n: usize, per_value: usize) -> RecordBatch {
        batch_of(
            (0..n)
                .map(|i| format!("{:064x}", (i / per_value) as u128 * 0x9e37_79b9_7f4a_7c15))
                .collect(),
        )
    }

    /// `batch` encoded and compressed as one row group.
    fn encode(enc: &RowGroupEncoder, batch: &RecordBatch) -> EncodedRowGroup {
        let mut group = enc.begin(batch).expect("begun");
        group.write(batch).expect("written");
        group.finish().expect("encoded")
    }

    fn has_dictionary(batch: &RecordBatch) -> bool {
        let dir = tempfile::tempdir().expect("temp dir");
        let sink =
            RowGroupSink::create(&dir.path().join("t.parquet"), batch.schema()).expect("sink");
        let group = encode(&sink.encoder(batch.schema()), batch);
        group.chunks[0]
            .close()
            .metadata
            .dictionary_page_offset()
            .is_some()
    }

    #[test]
    fn repeated_pseudonyms_get_a_dictionary_and_distinct_ones_do_not() {
        assert!(has_dictionary(&pseudonyms(10_000, 10)));
        assert!(!has_dictionary(&pseudonyms(10_000, 1)));
    }

    #[test]
    fn the_choice_follows_the_distinct_share() {
        let share = |per_value| {
            let b = pseudonyms(1000, per_value);
            dictionary_pays(b.column(0).as_ref())
        };
        assert!(share(2)); // half distinct: at the limit, a dictionary
        assert!(!share(1));
        // Repeats need not be adjacent.
        let mut values: Vec<String> = (0..1000).map(|i| format!("{:064x}", i % 100)).collect();
        values.reverse();
        assert!(dictionary_pays(&StringArray::from(values)));
    }

    #[test]
    fn files_mixing_both_encodings_read_back_exactly() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("t.parquet");
        let (a, b) = (pseudonyms(5000, 10), pseudonyms(5000, 1));
        let mut sink = RowGroupSink::create(&path, a.schema()).expect("sink");
        let enc = sink.encoder(a.schema());
        for batch in [&a, &b] {
            sink.append(encode(&enc, batch)).expect("appended");
        }
        sink.finish().expect("committed");
        let file = std::fs::File::open(&path).expect("open");
        let batches: Vec<RecordBatch> =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                .and_then(|r| r.build())
                .expect("reader")
                .collect::<Result<_, _>>()
                .expect("read");
        let read = arrow::compute::concat_batches(&a.schema(), &batches).expect("concat");
        let written = arrow::compute::concat_batches(&a.schema(), [&a, &b]).expect("concat");
        assert_eq!(read, written);
    }

    /// 64 hex characters that look random, one per `key`.
    fn hex_of(key: u128) -> String {
        let a = key.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
        let b = (key ^ 0x5555).wrapping_mul(0xc2b2_ae3d_27d4_eb4f_1656_67b1_9e37_79f9);
        format!("{a:032x}{b:032x}")
    }

    fn batch_of(values: Vec<String>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new(
            crate::policy::PSEUDONYM_COLUMN,
            DataType::Utf8,
            true,
        )]));
        RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(values))])
            .expect("valid batch")
    }

    #[test]
    fn a_large_row_groups_dictionary_holds_every_distinct_pseudonym() {
        // 200,000 rows, 80,000 patients interleaved: far past the writer's default 1 MiB
        // dictionary page, where it used to fall back to plain hex for the rest.
        let rows = 200_000u128;
        let batch = batch_of((0..rows).map(|i| hex_of((i * 7919) % 80_000)).collect());
        let dir = tempfile::tempdir().expect("temp dir");
        let sink =
            RowGroupSink::create(&dir.path().join("t.parquet"), batch.schema()).expect("sink");
        let group = encode(&sink.encoder(batch.schema()), &batch);
        let meta = &group.chunks[0].close().metadata;
        assert!(meta.dictionary_page_offset().is_some());
        // Plain hex under zstd costs at least 32 bytes a row; the dictionary, 80,000
        // values once plus ~17-bit indices.
        let per_row = meta.compressed_size() as f64 / rows as f64;
        assert!(per_row < 20.0, "{per_row} bytes per row");
    }

    #[test]
    fn a_row_group_built_from_several_batches_reads_back_as_one() {
        let batches: Vec<RecordBatch> = (0..3u128)
            .map(|b| batch_of((0..1000).map(|i| hex_of(b * 400 + i % 700)).collect()))
            .collect();
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("t.parquet");
        let schema = batches[0].schema();
        let mut sink = RowGroupSink::create(&path, schema.clone()).expect("sink");
        let enc = sink.encoder(schema.clone());
        let mut builder = enc.begin(&batches[0]).expect("begun");
        for b in &batches {
            builder.write(b).expect("written");
        }
        assert_eq!(builder.rows(), 3000);
        sink.append(builder.finish().expect("finished"))
            .expect("appended");
        sink.finish().expect("committed");
        let file = std::fs::File::open(&path).expect("open");
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .expect("reader");
        assert_eq!(reader.metadata().num_row_groups(), 1);
        let read: Vec<RecordBatch> = reader
            .build()
            .expect("reader")
            .collect::<Result<_, _>>()
            .expect("read");
        let read = arrow::compute::concat_batches(&schema, &read).expect("concat");
        let written = arrow::compute::concat_batches(&schema, &batches).expect("concat");
        assert_eq!(read, written);
    }
}
