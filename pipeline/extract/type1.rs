//! The Type 1 scan: a first pass over the table that records Type 1 codes, finding every
//! patient whose latest code is a dissent, before any table is written.

use std::path::Path;

use arrow::array::{Array, Date32Array, StringArray, UInt64Array};

use super::ExtractError;
use super::table::{chunks_in_flight, worker_panicked};
use crate::ingest::{
    self, CsvChunker, CsvLimits, InputFile, ParquetInput, Parsed, RawChunk, Rejected,
};
use crate::optout::{Type1Codelist, Type1Kind, Type1Tracker};
use crate::ordered::ordered_map;
use crate::schema::TableSchema;

/// What the scan looks at: the table's code, date and NHS number columns, and the
/// codelist's dissent codes for the raw-text check of rejected rows.
struct Scan<'a> {
    schema: &'a TableSchema,
    path: &'a Path,
    codelist: &'a Type1Codelist,
    dissent_codes: Vec<memchr::memmem::Finder<'static>>,
    /// (code, date, NHS number) column indices.
    cols: (usize, usize, usize),
    /// For each input field, its schema column (identity for Parquet).
    field_map: Vec<usize>,
    tracker: Type1Tracker,
}

/// First pass over the Type 1 table: every patient's latest Type 1 code. For CSV, only
/// lines that contain a Type 1 code are parsed. A rejected row whose raw text holds a
/// dissent code counts as a dissent for its NHS number; when that number does not parse,
/// the run is refused.
pub(super) fn scan_type1(
    pool: &rayon::ThreadPool,
    schema: &TableSchema,
    file: &InputFile,
    codelist: &Type1Codelist,
    limits: &CsvLimits,
    bar: &indicatif::ProgressBar,
) -> Result<Type1Tracker, ExtractError> {
    let Some(t1) = &schema.type1_codes else {
        return Ok(Type1Tracker::default());
    };
    let (Some(ci), Some(di), Some(ni)) = (
        schema.column_index(&t1.code),
        schema.column_index(&t1.date),
        schema.nhs_number_index(),
    ) else {
        return Ok(Type1Tracker::default());
    };
    let mut scan = Scan {
        schema,
        path: file.path(),
        codelist,
        dissent_codes: codelist
            .codes()
            .filter(|c| codelist.kind(c) == Some(Type1Kind::Dissent))
            .map(|c| memchr::memmem::Finder::new(c.as_bytes()).into_owned())
            .collect(),
        cols: (ci, di, ni),
        field_map: (0..schema.columns.len()).collect(),
        tracker: Type1Tracker::default(),
    };
    match file {
        InputFile::Csv(p) => scan_csv(pool, &mut scan, p, limits, bar)?,
        InputFile::Parquet(p) => scan_parquet(pool, &mut scan, p)?,
    }
    Ok(scan.tracker)
}

fn scan_csv(
    pool: &rayon::ThreadPool,
    scan: &mut Scan<'_>,
    path: &Path,
    limits: &CsvLimits,
    bar: &indicatif::ProgressBar,
) -> Result<(), ExtractError> {
    let schema = scan.schema;
    // An over-long record is kept only as a prefix: the chunker searches all of it for
    // dissent codes, so one past the cut still counts.
    let mut chunker = CsvChunker::open_with(path, schema, limits)?
        .without_hash()
        .with_watch(scan.dissent_codes.clone());
    let field_map = chunker.field_map.clone();
    scan.field_map = field_map.clone();
    // One SIMD substring search per code (memmem's rare-byte pairs beat a multi-pattern
    // automaton here: the codes start with digits, which are everywhere in an events file).
    // A code that contains another code (`9Nu0.` holds `9Nu0`) finds no line the shorter
    // one misses: one search each for the rest.
    let codes: Vec<&str> = scan.codelist.codes().collect();
    let finders: Vec<memchr::memmem::Finder<'static>> = codes
        .iter()
        .filter(|c| !codes.iter().any(|o| o.len() < c.len() && c.contains(o)))
        .map(|c| memchr::memmem::Finder::new(c.as_bytes()).into_owned())
        .collect();
    ordered_map(
        pool,
        chunks_in_flight(pool),
        || Ok(chunker.next_chunk()?),
        |c: RawChunk| {
            let n = c.bytes.len() as u64;
            Ok((type1_parse(&c, schema, &field_map, &finders), n))
        },
        |(parsed, n)| {
            if let Some(p) = parsed {
                scan.observe(&p)?;
            }
            bar.inc(n);
            Ok::<(), ExtractError>(())
        },
        || worker_panicked(&schema.name),
    )
}

/// Parse only a chunk's lines that hold a Type 1 code; `None` when there are none.
fn type1_parse(
    c: &RawChunk,
    schema: &TableSchema,
    field_map: &[usize],
    finders: &[memchr::memmem::Finder<'_>],
) -> Option<Parsed> {
    // The prefix of a record past the size limit: always one rejected row to look at.
    if c.overlong.is_some() {
        return Some(ingest::parse_csv_chunk(c, schema, field_map));
    }
    let lines = type1_lines(&c.bytes, finders);
    if lines.is_empty() {
        return None;
    }
    let mut sub = Vec::new();
    for (s, e) in lines {
        sub.extend_from_slice(&c.bytes[s..e]);
        sub.push(b'\n');
    }
    let sub = RawChunk {
        max_fields: c.max_fields,
        max_record_bytes: c.max_record_bytes,
        ..RawChunk::new(sub, 0)
    };
    let parsed = ingest::parse_csv_chunk(&sub, schema, field_map);
    // A Type 1 line that did not parse on its own (a quoted newline split it, or the row
    // is malformed): parse the whole chunk, so rejects carry their true line numbers.
    if parsed.rejected.is_empty() {
        Some(parsed)
    } else {
        Some(ingest::parse_csv_chunk(c, schema, field_map))
    }
}

fn scan_parquet(
    pool: &rayon::ThreadPool,
    scan: &mut Scan<'_>,
    path: &Path,
) -> Result<(), ExtractError> {
    let schema = scan.schema;
    let mut reader = ParquetInput::open(path, schema, 64 * 1024)?;
    ordered_map(
        pool,
        chunks_in_flight(pool),
        || Ok(reader.next_batch()?),
        |pb| Ok(ingest::parse_arrow_batch(&pb, schema)),
        |parsed| scan.observe(&parsed),
        || worker_panicked(&schema.name),
    )
}

impl Scan<'_> {
    fn observe(&mut self, p: &Parsed) -> Result<(), ExtractError> {
        let (ci, di, ni) = self.cols;
        if let (Some(n), Some(d), Some(c)) = (
            p.batch.column(ni).as_any().downcast_ref::<UInt64Array>(),
            p.batch.column(di).as_any().downcast_ref::<Date32Array>(),
            p.batch.column(ci).as_any().downcast_ref::<StringArray>(),
        ) {
            self.tracker.observe_arrays(self.codelist, n, d, c);
        }
        for r in &p.rejected {
            self.observe_rejected(r)?;
        }
        Ok(())
    }

    /// A rejected row whose raw text holds a dissent code anywhere counts as a dissent
    /// (dated "latest": fail closed) for its NHS number; if the number does not parse,
    /// the row cannot be attributed and the run is refused rather than guess.
    fn observe_rejected(&mut self, r: &Rejected) -> Result<(), ExtractError> {
        let has_dissent = r.watched
            || r.fields
                .iter()
                .any(|f| self.dissent_codes.iter().any(|d| d.find(f).is_some()));
        if !has_dissent {
            return Ok(());
        }
        let ni = self.cols.2;
        // Fields are in schema order unless the row was structurally broken; then they
        // came in input order.
        let pos = if r.reason.is_structural() {
            self.field_map.iter().position(|&c| c == ni)
        } else {
            Some(ni)
        };
        let number = pos
            .and_then(|i| r.fields.get(i))
            .and_then(|f| crate::nhs_number::parse_bytes(f).ok());
        match number {
            Some(n) => {
                self.tracker.observe(n.get(), None, Type1Kind::Dissent);
                Ok(())
            }
            None => Err(ExtractError::Type1Unattributable {
                path: self.path.to_path_buf(),
                line: r.line,
                reason: r.reason,
            }),
        }
    }
}

/// Byte ranges of the lines in `buf` that contain any of the codes.
fn type1_lines(buf: &[u8], finders: &[memchr::memmem::Finder<'_>]) -> Vec<(usize, usize)> {
    let mut hits: Vec<usize> = finders.iter().flat_map(|f| f.find_iter(buf)).collect();
    hits.sort_unstable();
    let mut lines: Vec<(usize, usize)> = Vec::new();
    for h in hits {
        if lines.last().is_some_and(|&(_, e)| h < e) {
            continue;
        }
        let s = memchr::memrchr(b'\n', &buf[..h]).map_or(0, |p| p + 1);
        let e = memchr::memchr(b'\n', &buf[h..]).map_or(buf.len(), |p| h + p);
        lines.push((s, e));
    }
    lines
}
