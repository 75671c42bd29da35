//! The Type 1 scan: a first pass over the table that records Type 1 codes, finding every
//! patient whose latest code is a dissent, before any table is written.

use arrow::array::{Date32Array, StringArray, UInt64Array};

use super::ExtractError;
use super::table::{chunks_in_flight, worker_panicked};
use crate::ingest::{self, CsvChunker, InputFile, ParquetInput, Parsed, RawChunk, Rejected};
use crate::optout::Type1Tracker;
use crate::ordered::ordered_map;
use crate::schema::TableSchema;

/// First pass over the Type 1 table: every patient's latest Type 1 code. For CSV, only
/// lines that contain a Type 1 code are parsed.
pub(super) fn scan_type1(
    pool: &rayon::ThreadPool,
    schema: &TableSchema,
    file: &InputFile,
    codelist: &crate::optout::Type1Codelist,
    chunk_bytes: usize,
    bar: &indicatif::ProgressBar,
) -> Result<Type1Tracker, ExtractError> {
    let Some(cols) = &schema.type1_codes else {
        return Ok(Type1Tracker::default());
    };
    let (Some(ci), Some(di), Some(ni)) = (
        schema.column_index(&cols.code),
        schema.column_index(&cols.date),
        schema.nhs_number_index(),
    ) else {
        return Ok(Type1Tracker::default());
    };
    let mut tracker = Type1Tracker::default();
    let mut observe = |p: &Parsed| {
        if let (Some(n), Some(d), Some(c)) = (
            p.batch.column(ni).as_any().downcast_ref::<UInt64Array>(),
            p.batch.column(di).as_any().downcast_ref::<Date32Array>(),
            p.batch.column(ci).as_any().downcast_ref::<StringArray>(),
        ) {
            tracker.observe_arrays(codelist, n, d, c);
        }
        observe_rejected_dissent(&mut tracker, &p.rejected, schema, codelist);
    };
    let window = chunks_in_flight(pool);
    let panicked = || worker_panicked(&schema.name);
    match file {
        InputFile::Csv(p) => {
            let mut chunker = CsvChunker::open(p, schema, chunk_bytes)?.without_hash();
            let field_map = chunker.field_map.clone();
            // One SIMD substring search per code (memmem's rare-byte pairs beat a
            // multi-pattern automaton here: the codes start with digits, which are
            // everywhere in an events file).
            let finders: Vec<memchr::memmem::Finder<'static>> = codelist
                .codes()
                .map(|c| memchr::memmem::Finder::new(c.as_bytes()).into_owned())
                .collect();
            ordered_map(
                pool,
                window,
                || Ok(chunker.next_chunk()?),
                |c: RawChunk| {
                    let n = c.bytes.len() as u64;
                    let lines = type1_lines(&c.bytes, &finders);
                    if lines.is_empty() {
                        return Ok((None, n));
                    }
                    let mut sub = Vec::new();
                    for (s, e) in lines {
                        sub.extend_from_slice(&c.bytes[s..e]);
                        sub.push(b'\n');
                    }
                    let parsed = ingest::parse_csv_chunk(
                        &RawChunk {
                            bytes: sub,
                            first_line: 0,
                        },
                        schema,
                        &field_map,
                    );
                    // A Type 1 line that did not parse on its own (e.g. a quoted newline
                    // split it): parse the whole chunk instead.
                    let split = parsed
                        .rejected
                        .iter()
                        .any(|r| r.reason == "wrong_column_count" || r.reason == "unparsable_date");
                    if split {
                        return Ok((Some(ingest::parse_csv_chunk(&c, schema, &field_map)), n));
                    }
                    Ok((Some(parsed), n))
                },
                |(parsed, n)| {
                    if let Some(p) = parsed {
                        observe(&p);
                    }
                    bar.inc(n);
                    Ok::<(), ExtractError>(())
                },
                panicked,
            )?;
        }
        InputFile::Parquet(p) => {
            let mut reader = ParquetInput::open(p, schema, 64 * 1024)?;
            ordered_map(
                pool,
                window,
                || Ok(reader.next_batch()?),
                |(b, first)| Ok(ingest::parse_arrow_batch(&b, schema, first)),
                |parsed| {
                    observe(&parsed);
                    Ok::<(), ExtractError>(())
                },
                panicked,
            )?;
        }
    }
    Ok(tracker)
}

/// A row rejected for an unparsable date that carries a dissent code and a valid NHS
/// number still counts as a dissent (fail closed), dated "latest".
fn observe_rejected_dissent(
    tracker: &mut Type1Tracker,
    rejected: &[Rejected],
    schema: &TableSchema,
    codelist: &crate::optout::Type1Codelist,
) {
    let Some(cols) = &schema.type1_codes else {
        return;
    };
    let (Some(ci), Some(ni)) = (schema.column_index(&cols.code), schema.nhs_number_index()) else {
        return;
    };
    for r in rejected {
        if r.fields.len() != schema.columns.len() {
            continue;
        }
        let code = std::str::from_utf8(&r.fields[ci]).unwrap_or("");
        if codelist.kind(code) == Some(crate::optout::Type1Kind::Dissent)
            && let Ok(n) = crate::nhs_number::parse_bytes(&r.fields[ni])
        {
            tracker.observe(n.get(), None, crate::optout::Type1Kind::Dissent);
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
