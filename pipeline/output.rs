//! Output tables: atomic Parquet files and quarantine CSVs, the last stage of the extract.
//!
//! Owns how tables are encoded (zstd Parquet, deterministic properties, row groups
//! encoded by workers and appended in order); every byte goes through
//! [`crate::durable::AtomicFile`], so the durability contract (docs/contracts.md,
//! Durability) holds here too.
//! Danger: a half-written file must never carry a final name, and quarantine files hold
//! raw rejected rows: they are created with mode 0600.

use std::path::{Path, PathBuf};

use arrow::array::{Array, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use std::sync::Arc;

use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::{ArrowColumnChunk, ArrowRowGroupWriterFactory, compute_leaves};
use parquet::basic::{Compression, ZstdLevel};
use parquet::column::writer::ColumnCloseResult;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::{ColumnDescPtr, ColumnPath};

mod pseudonym_chunk;
pub use pseudonym_chunk::Hex;
use pseudonym_chunk::{Layout, PseudonymChunk};

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

/// A row group's pseudonyms are dictionary-encoded when at most this share of its first
/// batch's are distinct (`benches/compare.sh` shows both row orders).
pub const DICTIONARY_MAX_DISTINCT_SHARE: f64 = 0.5;

/// zstd level of pseudonym columns: random hex gains only from entropy coding, which
/// level 1 gets at a fraction of level 3's match-finding time.
const PSEUDONYM_ZSTD_LEVEL: i32 = 1;

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
        .set_column_compression(
            ColumnPath::from(crate::policy::PSEUDONYM_COLUMN),
            Compression::ZSTD(ZstdLevel::try_new(PSEUDONYM_ZSTD_LEVEL).unwrap_or_default()),
        )
        // Where Parquet's own writer encodes pseudonyms (rewrites such as purge), the
        // dictionary must hold all of a row group's distinct pseudonyms: at the default
        // 1 MiB limit it fell back to plain after 16k of them. The extract's row groups
        // encode the pseudonym column by hand (`pseudonym_chunk`), at the same level.
        .set_column_dictionary_page_size_limit(
            ColumnPath::from(crate::policy::PSEUDONYM_COLUMN),
            PSEUDONYM_DICTIONARY_LIMIT,
        )
        .set_max_row_group_row_count(Some(MAX_ROW_GROUP_ROWS))
        .set_created_by(format!("tre-pipeline {}", env!("CARGO_PKG_VERSION")))
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
    /// Start writing `target` with `schema` (mode 0644).
    pub fn create(target: &Path, schema: SchemaRef) -> Result<Self, OutputError> {
        Self::create_with_mode(target, schema, Mode::Shared)
    }

    /// Start writing `target` with `schema`, with this file mode.
    pub fn create_with_mode(
        target: &Path,
        schema: SchemaRef,
        mode: Mode,
    ) -> Result<Self, OutputError> {
        let file = AtomicFile::create(target, mode)?;
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
///
/// Its builders take batches in [`RowGroupEncoder::input_schema`]: the table's output
/// schema, except that each pseudonym column holds *slots* (`UInt32`), indices into the
/// row group's distinct pseudonyms in order of first appearance (the extract's
/// [`crate::pseudonym::PseudonymCache`]). Those columns are encoded by
/// `pseudonym_chunk` straight from the slots; the others by Parquet's Arrow writer.
#[derive(Clone)]
pub struct RowGroupEncoder {
    factory: Arc<ArrowRowGroupWriterFactory>,
    /// Each pseudonym column's index and Parquet descriptor.
    pseudonyms: Vec<(usize, ColumnDescPtr)>,
    /// Most entries in a pseudonym dictionary page.
    max_dictionary: usize,
    input: SchemaRef,
    target: PathBuf,
}

impl std::fmt::Debug for RowGroupEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RowGroupEncoder({})", self.target.display())
    }
}

/// One column of an encoded row group.
enum EncodedColumn {
    /// Encoded by Parquet's Arrow writer.
    Arrow(ArrowColumnChunk),
    /// A hand-encoded pseudonym chunk: its bytes and metadata (offsets into the bytes).
    Spliced(Bytes, ColumnCloseResult),
}

/// One encoded (compressed) row group, ready to append.
pub struct EncodedRowGroup {
    chunks: Vec<EncodedColumn>,
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

/// The layout for a row group whose first batch has these slots: a dictionary where
/// at most [`DICTIONARY_MAX_DISTINCT_SHARE`] of them are distinct. Exact and
/// deterministic, so the bytes never depend on threads.
fn layout_for(slots: &UInt32Array, dictionary_len: usize) -> Layout {
    let limit = (slots.len() as f64 * DICTIONARY_MAX_DISTINCT_SHARE) as usize;
    let mut seen = vec![false; dictionary_len];
    let mut distinct = 0usize;
    for &s in slots.values() {
        if let Some(x) = seen.get_mut(s as usize)
            && !*x
        {
            *x = true;
            distinct += 1;
        }
    }
    if distinct <= limit {
        Layout::Dictionary
    } else {
        Layout::Plain
    }
}

impl RowGroupEncoder {
    fn err(&self, e: impl std::fmt::Display) -> OutputError {
        OutputError::Parquet {
            path: self.target.clone(),
            message: e.to_string(),
        }
    }

    /// The schema of the batches its builders take (see [`RowGroupEncoder`]).
    pub fn input_schema(&self) -> &SchemaRef {
        &self.input
    }

    /// Start a row group that will hold `first` and the batches after it (written in
    /// order by one thread); `dictionary` is the group's distinct pseudonyms so far. Each
    /// pseudonym column's layout is chosen from `first`: a dictionary where its
    /// pseudonyms repeat enough, plain otherwise.
    pub fn begin(
        &self,
        first: &RecordBatch,
        dictionary: &[Hex],
    ) -> Result<RowGroupBuilder<'_>, OutputError> {
        // The row group index only matters for encryption, which outputs never use.
        let writers = self
            .factory
            .create_column_writers(0)
            .map_err(|e| self.err(e))?;
        let mut columns: Vec<ColumnBuilder> = writers
            .into_iter()
            .map(|w| ColumnBuilder::Arrow(Box::new(w)))
            .collect();
        for (i, descr) in &self.pseudonyms {
            let slots = slots_of(first, *i).map_err(|m| self.err(m))?;
            let layout = layout_for(slots, dictionary.len());
            let chunk = PseudonymChunk::new(Arc::clone(descr), layout, self.max_dictionary)
                .map_err(|e| self.err(e))?;
            columns[*i] = ColumnBuilder::Pseudonym(chunk);
        }
        Ok(RowGroupBuilder {
            encoder: self,
            columns,
            rows: 0,
        })
    }
}

/// Column `i` of `batch` as slots.
fn slots_of(batch: &RecordBatch, i: usize) -> Result<&UInt32Array, &'static str> {
    batch
        .columns()
        .get(i)
        .and_then(|c| c.as_any().downcast_ref::<UInt32Array>())
        .ok_or("a pseudonym column is not given as slots")
}

/// One column of a row group being built.
enum ColumnBuilder {
    Arrow(Box<parquet::arrow::arrow_writer::ArrowColumnWriter>),
    Pseudonym(PseudonymChunk),
}

/// A row group being encoded from consecutive batches: each batch is encoded and
/// compressed as it is written, so only the encoded pages (and the pseudonym
/// dictionary) stay in memory until [`RowGroupBuilder::finish`].
pub struct RowGroupBuilder<'a> {
    encoder: &'a RowGroupEncoder,
    columns: Vec<ColumnBuilder>,
    rows: usize,
}

impl std::fmt::Debug for RowGroupBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RowGroupBuilder({} rows)", self.rows)
    }
}

impl RowGroupBuilder<'_> {
    /// Append `batch` (in [`RowGroupEncoder::input_schema`]) to the row group;
    /// `dictionary` is the group's distinct pseudonyms so far, every slot within it.
    pub fn write(&mut self, batch: &RecordBatch, dictionary: &[Hex]) -> Result<(), OutputError> {
        let e = self.encoder;
        if batch.num_columns() != self.columns.len() {
            return Err(e.err("batch does not have the output's columns"));
        }
        let fields = e.input.fields().iter().zip(batch.columns());
        for (i, ((field, column), out)) in fields.zip(&mut self.columns).enumerate() {
            match out {
                ColumnBuilder::Arrow(w) => {
                    for leaf in compute_leaves(field, column).map_err(|x| e.err(x))? {
                        w.write(&leaf).map_err(|x| e.err(x))?;
                    }
                }
                ColumnBuilder::Pseudonym(c) => {
                    let slots = slots_of(batch, i).map_err(|m| e.err(m))?;
                    c.write(slots, dictionary).map_err(|x| e.err(x))?;
                }
            }
        }
        self.rows += batch.num_rows();
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Close every column (`dictionary` is the group's distinct pseudonyms, all of them):
    /// the finished row group, ready to append in order.
    pub fn finish(self, dictionary: &[Hex]) -> Result<EncodedRowGroup, OutputError> {
        let e = self.encoder;
        let chunks = self
            .columns
            .into_iter()
            .map(|c| match c {
                ColumnBuilder::Arrow(w) => w.close().map(EncodedColumn::Arrow),
                ColumnBuilder::Pseudonym(c) => c
                    .finish(dictionary)
                    .map(|(bytes, close)| EncodedColumn::Spliced(bytes, close)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|x| e.err(x))?;
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

    /// An encoder for worker threads. `schema` is the file's schema (flat), and
    /// `pseudonyms` the indices of its pseudonym columns (required strings), which the
    /// encoder's builders take as slots.
    pub fn encoder(
        &self,
        schema: &SchemaRef,
        pseudonyms: &[usize],
    ) -> Result<RowGroupEncoder, OutputError> {
        let err = |m: &str| OutputError::Parquet {
            path: self.target.clone(),
            message: m.to_string(),
        };
        let descr = self.writer.schema_descr();
        if descr.num_columns() != schema.fields().len() {
            return Err(err("nested output columns are not supported"));
        }
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        let mut columns = Vec::with_capacity(pseudonyms.len());
        for &i in pseudonyms {
            match fields.get_mut(i) {
                Some(f) if f.data_type() == &DataType::Utf8 && !f.is_nullable() => {
                    *f = Field::new(f.name(), DataType::UInt32, false);
                }
                _ => return Err(err("a pseudonym column must be a required string")),
            }
            columns.push((i, descr.column(i)));
        }
        Ok(RowGroupEncoder {
            factory: Arc::clone(&self.factory),
            pseudonyms: columns,
            max_dictionary: pseudonym_chunk::MAX_DICTIONARY_ENTRIES,
            input: Arc::new(Schema::new(fields)),
            target: self.target.clone(),
        })
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
            match chunk {
                EncodedColumn::Arrow(c) => c.append_to_row_group(&mut rg),
                EncodedColumn::Spliced(bytes, close) => rg.append_column(&bytes, close),
            }
            .map_err(err)?;
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
    use arrow::array::{ArrayRef, Int32Array, StringArray};
    use parquet::arrow::arrow_reader::{
        ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection, RowSelector,
    };
    use parquet::basic::Encoding;

    /// 64 hex characters that look random, one per `key`.
    fn hex_of(key: u128) -> String {
        let a = key.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
        let b = (key ^ 0x5555).wrapping_mul(0xc2b2_ae3d_27d4_eb4f_1656_67b1_9e37_79f9);
        format!("{a:032x}{b:032x}")
    }

    /// The table the tests write: a date-like column, the pseudonym, a code.
    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("day", DataType::Int32, false),
            Field::new(crate::policy::PSEUDONYM_COLUMN, DataType::Utf8, false),
            Field::new("code", DataType::Utf8, true),
        ]))
    }

    /// Builds batches the way the extract does: one dictionary per row group, each
    /// pseudonym's slot assigned on first appearance.
    #[derive(Default)]
    struct Slotter {
        slot: std::collections::HashMap<u128, u32>,
        dictionary: Vec<Hex>,
    }

    impl Slotter {
        /// A batch of `patients` (keys), in the encoder's input schema; and the same rows
        /// as the file should read back.
        fn batch(
            &mut self,
            enc: &RowGroupEncoder,
            patients: &[u128],
        ) -> (RecordBatch, RecordBatch) {
            let slots: Vec<u32> = patients
                .iter()
                .map(|&p| {
                    let next = self.dictionary.len() as u32;
                    *self.slot.entry(p).or_insert_with(|| {
                        let mut hex = [0u8; 64];
                        hex.copy_from_slice(hex_of(p).as_bytes());
                        self.dictionary.push(hex);
                        next
                    })
                })
                .collect();
            let day: ArrayRef = Arc::new(Int32Array::from_iter_values(
                patients.iter().map(|&p| (p % 9000) as i32),
            ));
            let code: ArrayRef = Arc::new(StringArray::from_iter(
                patients
                    .iter()
                    .map(|&p| (p % 3 != 0).then(|| format!("c{}", p % 50))),
            ));
            let input = RecordBatch::try_new(
                enc.input_schema().clone(),
                vec![
                    day.clone(),
                    Arc::new(UInt32Array::from(slots)),
                    code.clone(),
                ],
            )
            .expect("input batch");
            let hex = StringArray::from_iter_values(patients.iter().map(|&p| hex_of(p)));
            let expected = RecordBatch::try_new(schema(), vec![day, Arc::new(hex), code])
                .expect("expected batch");
            (input, expected)
        }
    }

    /// Write row groups (each a list of batches of patients); read the file back whole.
    fn round_trip(
        groups: &[Vec<Vec<u128>>],
    ) -> (RecordBatch, RecordBatch, PathBuf, tempfile::TempDir) {
        round_trip_with(groups, pseudonym_chunk::MAX_DICTIONARY_ENTRIES)
    }

    /// [`round_trip`] with dictionaries of at most `max_dictionary` entries.
    fn round_trip_with(
        groups: &[Vec<Vec<u128>>],
        max_dictionary: usize,
    ) -> (RecordBatch, RecordBatch, PathBuf, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("t.parquet");
        let mut sink = RowGroupSink::create(&path, schema()).expect("sink");
        let mut enc = sink.encoder(&schema(), &[1]).expect("encoder");
        enc.max_dictionary = max_dictionary;
        let mut expected = Vec::new();
        for group in groups {
            let mut slotter = Slotter::default();
            let mut builder = None;
            for patients in group {
                let (input, want) = slotter.batch(&enc, patients);
                expected.push(want);
                let b = match &mut builder {
                    Some(b) => b,
                    None => builder.insert(enc.begin(&input, &slotter.dictionary).expect("begun")),
                };
                b.write(&input, &slotter.dictionary).expect("written");
            }
            if let Some(b) = builder {
                sink.append(b.finish(&slotter.dictionary).expect("finished"))
                    .expect("appended");
            }
        }
        sink.finish().expect("committed");
        let read = read_back(&path, None);
        let expected = arrow::compute::concat_batches(&schema(), &expected).expect("concat");
        (read, expected, path, dir)
    }

    /// The file's rows (those `selection` picks), with its page index loaded.
    fn read_back(path: &Path, selection: Option<RowSelection>) -> RecordBatch {
        let file = std::fs::File::open(path).expect("open");
        let options = ArrowReaderOptions::new()
            .with_page_index_policy(parquet::file::metadata::PageIndexPolicy::Required);
        let mut builder =
            ParquetRecordBatchReaderBuilder::try_new_with_options(file, options).expect("reader");
        if let Some(s) = selection {
            builder = builder.with_row_selection(s);
        }
        let batches: Vec<RecordBatch> = builder
            .build()
            .expect("reader")
            .collect::<Result<_, _>>()
            .expect("read");
        arrow::compute::concat_batches(&schema(), &batches).expect("concat")
    }

    fn pseudonym_chunks(path: &Path) -> Vec<parquet::file::metadata::ColumnChunkMetaData> {
        let file = std::fs::File::open(path).expect("open");
        let reader = ParquetRecordBatchReaderBuilder::try_new(file).expect("reader");
        reader
            .metadata()
            .row_groups()
            .iter()
            .map(|rg| rg.column(1).clone())
            .collect()
    }

    #[test]
    fn repeated_pseudonyms_get_a_dictionary_and_distinct_ones_do_not() {
        let repeated: Vec<u128> = (0..10_000).map(|i| i / 10).collect();
        let distinct: Vec<u128> = (0..10_000).collect();
        let (read, expected, path, _dir) = round_trip(&[vec![repeated], vec![distinct]]);
        assert_eq!(read, expected);
        let chunks = pseudonym_chunks(&path);
        assert!(chunks[0].dictionary_page_offset().is_some());
        assert!(chunks[1].dictionary_page_offset().is_none());
    }

    #[test]
    fn the_choice_follows_the_distinct_share() {
        let layout = |slots: Vec<u32>| {
            let len = slots.iter().max().map_or(0, |m| *m as usize + 1);
            layout_for(&UInt32Array::from(slots), len)
        };
        // Half distinct: at the limit, a dictionary.
        assert_eq!(
            layout((0..1000).map(|i| i / 2).collect()),
            Layout::Dictionary
        );
        assert_eq!(layout((0..1000).collect()), Layout::Plain);
        // Repeats need not be adjacent.
        assert_eq!(
            layout((0..1000).map(|i| i % 100).rev().collect()),
            Layout::Dictionary
        );
    }

    #[test]
    fn a_large_row_groups_dictionary_holds_every_distinct_pseudonym() {
        // 200,000 rows, 80,000 patients interleaved, many pages: one dictionary page.
        let rows = 200_000u128;
        let patients: Vec<u128> = (0..rows).map(|i| (i * 7919) % 80_000).collect();
        let (read, expected, path, _dir) = round_trip(&[vec![patients]]);
        assert_eq!(read, expected);
        let meta = &pseudonym_chunks(&path)[0];
        assert!(meta.dictionary_page_offset().is_some());
        // Plain hex under zstd costs at least 32 bytes a row; the dictionary, 80,000
        // values once plus ~17-bit indices.
        let per_row = meta.compressed_size() as f64 / rows as f64;
        assert!(per_row < 20.0, "{per_row} bytes per row");
    }

    #[test]
    fn row_groups_built_from_several_batches_read_back_exactly() {
        // Patients recur across batches and groups; the dictionary grows between batches.
        let batch = |b: u128, n: u128| (0..n).map(|i| b * 400 + i % 700).collect::<Vec<_>>();
        let groups = vec![
            vec![batch(0, 1000), batch(1, 1000), batch(2, 1000)],
            vec![batch(1, 40_000)],
            vec![(0..50_000).collect(), batch(3, 10)],
        ];
        let (read, expected, path, _dir) = round_trip(&groups);
        assert_eq!(read, expected);
        let file = std::fs::File::open(&path).expect("open");
        let reader = ParquetRecordBatchReaderBuilder::try_new(file).expect("reader");
        assert_eq!(reader.metadata().num_row_groups(), 3);
    }

    #[test]
    fn the_offset_index_finds_the_hand_written_pages() {
        // Patient order (runs of one patient) and event order (all distinct), each over
        // several pages; a selection that skips pages must land on the right rows.
        let runs: Vec<u128> = (0..60_000).map(|i| i / 7).collect();
        let distinct: Vec<u128> = (0..60_000).map(|i| i * 31 + 5).collect();
        let (read, expected, path, _dir) = round_trip(&[vec![runs], vec![distinct]]);
        assert_eq!(read, expected);
        let pick = [(33_000, 17), (70_000, 5), (119_990, 10)];
        let mut selectors = Vec::new();
        let mut at = 0;
        for (start, n) in pick {
            selectors.push(RowSelector::skip(start - at));
            selectors.push(RowSelector::select(n));
            at = start + n;
        }
        let some = read_back(&path, Some(RowSelection::from(selectors)));
        let want: Vec<RecordBatch> = pick.iter().map(|&(s, n)| expected.slice(s, n)).collect();
        let want = arrow::compute::concat_batches(&schema(), &want).expect("concat");
        assert_eq!(some, want);
    }

    #[test]
    fn a_dictionary_past_its_limit_leaves_the_rest_of_the_chunk_plain() {
        let repeats: Vec<u128> = (0..3000).map(|i| i / 3).collect();
        let new: Vec<u128> = (10_000..15_000).collect();
        // Group 1 outgrows a 2,000-entry dictionary at its second batch; group 2's first
        // batch is already past a smaller limit.
        let groups = vec![
            vec![repeats.clone(), new, repeats.clone()],
            vec![(20_000..21_000).chain(repeats.clone()).collect()],
        ];
        let (read, expected, path, _dir) = round_trip_with(&groups, 2000);
        assert_eq!(read, expected);
        // The reader folds page encoding stats into a mask of the data pages' encodings.
        let encodings = |c: &parquet::file::metadata::ColumnChunkMetaData| -> Vec<Encoding> {
            c.page_encoding_stats_mask()
                .expect("page encoding stats")
                .encodings()
                .collect()
        };
        let chunks = pseudonym_chunks(&path);
        assert!(chunks[0].dictionary_page_offset().is_some());
        assert_eq!(
            encodings(&chunks[0]),
            [Encoding::PLAIN, Encoding::RLE_DICTIONARY]
        );
        let (read, expected, path, _dir) = round_trip_with(&groups[1..], 500);
        assert_eq!(read, expected);
        let chunks = pseudonym_chunks(&path);
        assert!(chunks[0].dictionary_page_offset().is_none());
        assert_eq!(encodings(&chunks[0]), [Encoding::PLAIN]);
    }

    #[test]
    fn slots_outside_the_dictionary_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let sink = RowGroupSink::create(&dir.path().join("t.parquet"), schema()).expect("sink");
        let enc = sink.encoder(&schema(), &[1]).expect("encoder");
        let mut slotter = Slotter::default();
        let (input, _) = slotter.batch(&enc, &[1, 2, 3]);
        let mut b = enc.begin(&input, &slotter.dictionary).expect("begun");
        let err = b
            .write(&input, &slotter.dictionary[..2])
            .expect_err("refused");
        assert!(
            err.to_string().contains("past the row group's dictionary"),
            "{err}"
        );
        // A pseudonym column given as text, not slots, is refused too.
        let wrong = sink
            .encoder(&schema(), &[0])
            .expect_err("not a string column");
        assert!(wrong.to_string().contains("required string"), "{wrong}");
    }
}
