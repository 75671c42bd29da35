//! CSV input: a header checked against the schema, then bounded chunks of whole records
//! (quote-aware), each parsed into a typed batch and rejects.
//!
//! Records end at a line feed (RFC 4180's CR LF, or LF alone); a CR right before it is
//! part of the line ending. A carriage return anywhere else outside quotes never ends a
//! record: the record holding it is malformed and quarantined whole as
//! `bare_carriage_return`, with its line and the column of the field, so no row is split
//! in two, no half-row is accepted, and the lines after it keep their numbers. Inside a
//! quoted field a CR is data, as RFC 4180 allows.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, UInt64Builder};
use sha2::{Digest, Sha256};

use super::overlong::{KEPT_PREFIX_BYTES, Overlong, RecordStream};
use super::values::{Builder, Value, append, parse_field};
use super::{IngestError, Parsed, check_header, parsed_schema};
use crate::quarantine::{RejectReason, Rejected};
use crate::schema::{IdentifierClass, TableSchema};

/// A chunk of whole CSV records, or the kept prefix of one over-long record.
#[derive(Debug)]
pub struct RawChunk {
    /// The bytes (whole records, each ending in a newline, except perhaps the file's
    /// last; for an over-long record, its first bytes only).
    pub bytes: Vec<u8>,
    /// Line number of the chunk's first byte.
    pub first_line: u64,
    /// Set when `bytes` is the cut-down prefix of one record past a limit.
    pub overlong: Option<Overlong>,
    /// The most fields a record may have; a record with more is quarantined as
    /// `too_many_fields` (its fields past the limit kept as one raw field).
    pub max_fields: usize,
    /// The longest record accepted; a longer one is quarantined as `record_too_long`.
    pub max_record_bytes: usize,
}

impl RawChunk {
    /// Whole records starting at `first_line`, under the default field limit.
    pub fn new(bytes: Vec<u8>, first_line: u64) -> Self {
        RawChunk {
            bytes,
            first_line,
            overlong: None,
            max_fields: MAX_FIELDS,
            max_record_bytes: MAX_RECORD_BYTES,
        }
    }
}

/// Reads a CSV file as header + chunks of whole records.
pub struct CsvChunker {
    file: File,
    path: PathBuf,
    carry: Vec<u8>,
    next_line: u64,
    chunk_bytes: usize,
    eof: bool,
    /// SHA-256 of every byte read so far (the manifest's input hash), unless disabled.
    hasher: Option<Sha256>,
    bytes_read: u64,
    /// For each input field, the schema column index.
    pub field_map: Vec<usize>,
    /// The largest record read whole: memory stays bounded by it whatever the input.
    max_record_bytes: usize,
    /// The most fields a record may have.
    max_fields: usize,
    /// Byte strings searched for in the whole of an over-long record (Type 1 dissents).
    watch: Vec<memchr::memmem::Finder<'static>>,
}

/// The default largest record, 1 MiB (a GP extract's records are well under 10 KB): a
/// longer one is quarantined as `record_too_long`, cut to its first
/// [`KEPT_PREFIX_BYTES`] bytes; one longer than a chunk is streamed to its end with
/// flat memory. What one chunk can cost while parsed (the csv crate's field bounds)
/// grows with the longest record it may hold, so this is kept small.
pub const MAX_RECORD_BYTES: usize = 1 << 20;

/// The default most fields in a record (real extracts have tens): a record with more is
/// quarantined as `too_many_fields` with its first fields only.
pub const MAX_FIELDS: usize = 10_000;

/// How a CSV is cut: the chunk size and the record limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CsvLimits {
    /// Size of a raw chunk.
    pub chunk_bytes: usize,
    /// The longest record read whole ([`MAX_RECORD_BYTES`] by default).
    pub max_record_bytes: usize,
    /// The most fields in a record ([`MAX_FIELDS`] by default).
    pub max_fields: usize,
}

impl Default for CsvLimits {
    fn default() -> Self {
        CsvLimits {
            chunk_bytes: super::DEFAULT_CHUNK_BYTES,
            max_record_bytes: MAX_RECORD_BYTES,
            max_fields: MAX_FIELDS,
        }
    }
}

impl std::fmt::Debug for CsvChunker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CsvChunker({})", self.path.display())
    }
}

/// What a forward scan of whole-record bytes found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RecordScan {
    /// Position just after the last record-ending newline outside quotes.
    last_end: Option<usize>,
    /// Where the quoted field still open at the end of the buffer began, if one is.
    open_quote: Option<usize>,
}

/// Scan `buf` (which starts at a record boundary) with the csv crate's quoting rules: a
/// quote opens a quoted field only as a field's first byte; inside, `""` is an escaped
/// quote and a lone `"` closes the field; a quote anywhere else is a literal byte (so
/// `5'11"` does not flip the quote state). Only quotes, commas and newlines are visited.
fn scan_records(buf: &[u8]) -> RecordScan {
    if memchr::memchr(b'"', buf).is_none() {
        return RecordScan {
            last_end: memchr::memrchr(b'\n', buf).map(|i| i + 1),
            open_quote: None,
        };
    }
    let (mut in_quotes, mut opened, mut field_start) = (false, 0usize, 0usize);
    let mut closed_at: Option<usize> = None;
    let mut last_end = None;
    for i in memchr::memchr3_iter(b'"', b',', b'\n', buf) {
        match buf[i] {
            b'"' if in_quotes => {
                in_quotes = false;
                closed_at = Some(i);
            }
            b'"' if i == field_start => {
                in_quotes = true;
                opened = i;
            }
            // The second quote of an escaped `""` inside a quoted field.
            b'"' if closed_at.is_some_and(|c| c + 1 == i) => in_quotes = true,
            b'"' | b',' | b'\n' if in_quotes => {}
            b',' => field_start = i + 1,
            b'\n' => {
                field_start = i + 1;
                last_end = Some(i + 1);
            }
            _ => {}
        }
    }
    RecordScan {
        last_end,
        open_quote: in_quotes.then_some(opened),
    }
}

/// Position just after the last record-ending newline outside quotes.
fn last_record_end(buf: &[u8]) -> Option<usize> {
    scan_records(buf).last_end
}

/// A header line ended by a carriage return alone: the file uses CR-only line endings,
/// which would make the whole file one record.
fn cr_only_endings(head: &[u8]) -> bool {
    let first_nl = memchr::memchr(b'\n', head).unwrap_or(head.len());
    memchr::memchr(b'\r', &head[..first_nl]).is_some_and(|r| head.get(r + 1) != Some(&b'\n'))
}

/// The header line's names (a UTF-8 byte-order mark dropped, spaces trimmed), or what is
/// wrong with it.
fn header_names(header: &[u8]) -> Result<Vec<String>, String> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(header);
    let mut rec = csv::ByteRecord::new();
    rdr.read_byte_record(&mut rec)
        .map_err(|_| "the header line is not valid CSV".to_string())?;
    let mut names = Vec::new();
    for (i, f) in rec.iter().enumerate() {
        let f = if i == 0 {
            f.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(f)
        } else {
            f
        };
        let s = std::str::from_utf8(f)
            .map_err(|_| format!("header field {} is not valid UTF-8", i + 1))?;
        names.push(s.trim().to_string());
    }
    Ok(names)
}

impl CsvChunker {
    /// Open a CSV and check its header against the schema.
    pub fn open(path: &Path, table: &TableSchema, chunk_bytes: usize) -> Result<Self, IngestError> {
        let io = |source| IngestError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::open(path).map_err(io)?;
        // Read enough for the header line.
        let mut carry = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        let header_end = loop {
            if let Some(p) = last_record_end(&carry).and_then(|_| memchr::memchr(b'\n', &carry)) {
                break Some(p + 1);
            }
            let n = file.read(&mut buf).map_err(io)?;
            if n == 0 {
                break None;
            }
            carry.extend_from_slice(&buf[..n]);
            if carry.len() > 16 << 20 {
                return Err(IngestError::Header {
                    path: path.to_path_buf(),
                    message: "no end of header line in the first 16 MiB".into(),
                });
            }
        };
        let header_end = match header_end {
            Some(e) => e,
            None if carry.iter().all(|b| b.is_ascii_whitespace()) => {
                return Err(IngestError::Empty {
                    path: path.to_path_buf(),
                    table: table.name.clone(),
                });
            }
            None => carry.len(),
        };
        if cr_only_endings(&carry) {
            return Err(IngestError::CrOnlyLineEndings {
                path: path.to_path_buf(),
            });
        }
        let header_err = |message: String| IngestError::Header {
            path: path.to_path_buf(),
            message,
        };
        let names = header_names(&carry[..header_end]).map_err(header_err)?;
        let field_map = check_header(&names, table).map_err(header_err)?;
        let mut hasher = Sha256::new();
        hasher.update(&carry);
        let bytes_read = carry.len() as u64;
        carry.drain(..header_end);
        Ok(CsvChunker {
            file,
            path: path.to_path_buf(),
            carry,
            next_line: 2,
            chunk_bytes,
            eof: false,
            hasher: Some(hasher),
            bytes_read,
            field_map,
            max_record_bytes: MAX_RECORD_BYTES,
            max_fields: MAX_FIELDS,
            watch: Vec::new(),
        })
    }

    /// Stop hashing the input (for passes whose hash nobody needs).
    pub fn without_hash(mut self) -> Self {
        self.hasher = None;
        self
    }

    /// After the last chunk: the file's SHA-256 (lowercase hex) and size in bytes, as
    /// read. `None` before the end or when hashing was turned off.
    pub fn finish_hash(self) -> Option<(String, u64)> {
        if !self.eof {
            return None;
        }
        let digest = self.hasher?.finalize();
        Some((crate::digest::hex(&digest), self.bytes_read))
    }

    /// The next chunk of whole records, or `None` at the end.
    pub fn next_chunk(&mut self) -> Result<Option<RawChunk>, IngestError> {
        loop {
            if self.eof || self.carry.len() >= self.chunk_bytes {
                let end = if self.eof {
                    if let Some(q) = scan_records(&self.carry).open_quote {
                        return Err(IngestError::UnterminatedQuote {
                            path: self.path.clone(),
                            line: self.line_at(q),
                        });
                    }
                    self.carry.len()
                } else {
                    match last_record_end(&self.carry) {
                        Some(e) => e,
                        None if self.carry.len() > self.max_record_bytes => {
                            return self.overlong_record().map(Some);
                        }
                        None => {
                            // One record longer than a chunk (or an unclosed quote): read on.
                            if self.read_more()? == 0 {
                                self.eof = true;
                            }
                            continue;
                        }
                    }
                };
                if end == 0 {
                    return Ok(None);
                }
                let rest = self.carry.split_off(end);
                let bytes = std::mem::replace(&mut self.carry, rest);
                let first_line = self.next_line;
                self.next_line += memchr::memchr_iter(b'\n', &bytes).count() as u64;
                return Ok(Some(RawChunk {
                    max_fields: self.max_fields,
                    max_record_bytes: self.max_record_bytes,
                    ..RawChunk::new(bytes, first_line)
                }));
            }
            if self.read_more()? == 0 {
                self.eof = true;
            }
        }
    }

    /// The line of byte `pos` of the carry.
    fn line_at(&self, pos: usize) -> u64 {
        self.next_line + memchr::memchr_iter(b'\n', &self.carry[..pos]).count() as u64
    }

    /// Set the largest record read whole (default [`MAX_RECORD_BYTES`]).
    pub fn with_max_record_bytes(mut self, max: usize) -> Self {
        self.max_record_bytes = max.max(1);
        self
    }

    /// Open a CSV cut by `limits` (see [`CsvChunker::open`]).
    pub fn open_with(
        path: &Path,
        table: &TableSchema,
        limits: &CsvLimits,
    ) -> Result<Self, IngestError> {
        Ok(Self::open(path, table, limits.chunk_bytes)?
            .with_max_record_bytes(limits.max_record_bytes)
            .with_max_fields(limits.max_fields))
    }

    /// Set the most fields a record may have (default [`MAX_FIELDS`]).
    pub fn with_max_fields(mut self, max: usize) -> Self {
        self.max_fields = max.max(1);
        self
    }

    /// Search every over-long record, whole, for these byte strings
    /// ([`Overlong::watched`]): the Type 1 scan watches for dissent codes.
    pub fn with_watch(mut self, needles: Vec<memchr::memmem::Finder<'static>>) -> Self {
        self.watch = needles;
        self
    }

    /// The carry holds more than the maximum record size and no record end: stream the
    /// record to its end through a fixed buffer, keep its first bytes, and return them
    /// as an over-long chunk. An unclosed quote at the end of the file is refused.
    fn overlong_record(&mut self) -> Result<RawChunk, IngestError> {
        let first_line = self.next_line;
        let mut stream = RecordStream::new(&self.watch);
        let kept = KEPT_PREFIX_BYTES.min(self.max_record_bytes);
        let prefix = self.carry[..kept.min(self.carry.len())].to_vec();
        let mut piece = std::mem::take(&mut self.carry);
        let mut buf = vec![0u8; 1 << 20];
        let rest = loop {
            if let Some(end) = stream.feed(&piece) {
                break piece[end + 1..].to_vec();
            }
            let n = self.read_piece(&mut buf)?;
            if n == 0 {
                self.eof = true;
                if stream.in_quotes() {
                    return Err(IngestError::UnterminatedQuote {
                        path: self.path.clone(),
                        line: first_line,
                    });
                }
                break Vec::new();
            }
            piece.clear();
            piece.extend_from_slice(&buf[..n]);
        };
        self.carry = rest;
        self.next_line += stream.newlines;
        Ok(RawChunk {
            bytes: prefix,
            first_line,
            overlong: Some(Overlong {
                reason: RejectReason::RecordTooLong,
                bytes: stream.bytes,
                watched: stream.watched,
            }),
            max_fields: self.max_fields,
            max_record_bytes: self.max_record_bytes,
        })
    }

    /// Read into `buf` (hashed and counted like every byte of the input).
    fn read_piece(&mut self, buf: &mut [u8]) -> Result<usize, IngestError> {
        let n = self.file.read(buf).map_err(|source| IngestError::Io {
            path: self.path.clone(),
            source,
        })?;
        if let Some(h) = self.hasher.as_mut() {
            h.update(&buf[..n]);
        }
        self.bytes_read += n as u64;
        Ok(n)
    }

    fn read_more(&mut self) -> Result<usize, IngestError> {
        let want = self.chunk_bytes.max(64 << 10);
        self.carry.reserve(want);
        // `take` + `read_to_end` reads into spare capacity without zero-filling it first.
        let n = (&mut self.file)
            .take(want as u64)
            .read_to_end(&mut self.carry)
            .map_err(|source| IngestError::Io {
                path: self.path.clone(),
                source,
            })?;
        if let Some(h) = self.hasher.as_mut() {
            h.update(&self.carry[self.carry.len() - n..]);
        }
        self.bytes_read += n as u64;
        Ok(n)
    }
}

/// The physical line on which a record has its first character.
///
/// The csv crate's `Position` counts the newlines it has consumed, but it records a
/// record's start before consuming a pending terminator (the `\n` of a CRLF, or blank
/// lines), so those bytes are counted here. O(1) per record.
fn record_line(bytes: &[u8], first_line: u64, pos: &csv::Position) -> u64 {
    let start = usize::try_from(pos.byte()).unwrap_or(usize::MAX);
    let pending = bytes
        .get(start..)
        .unwrap_or_default()
        .iter()
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .filter(|&&b| b == b'\n')
        .count() as u64;
    first_line + pos.line().saturating_sub(1) + pending
}

/// Builds one chunk's typed batch and rejects, record by record.
struct ChunkParser<'a> {
    table: &'a TableSchema,
    field_map: &'a [usize],
    utf8_checked: bool,
    builders: Vec<Builder>,
    lines: UInt64Builder,
    rejected: Vec<Rejected>,
    rows_read: u64,
    values: Vec<Value>,
    /// The previous NHS number field and its result: rows come clustered by patient.
    last_nhs: Option<(Vec<u8>, Result<Value, RejectReason>)>,
}

impl<'a> ChunkParser<'a> {
    fn new(table: &'a TableSchema, field_map: &'a [usize], bytes: &[u8]) -> Self {
        let cap = bytes.len() / 40 + 16;
        ChunkParser {
            table,
            field_map,
            utf8_checked: std::str::from_utf8(bytes).is_ok(),
            builders: table.columns.iter().map(|c| Builder::new(c, cap)).collect(),
            lines: UInt64Builder::with_capacity(cap),
            rejected: Vec::new(),
            rows_read: 0,
            values: Vec::with_capacity(table.columns.len()),
            last_nhs: None,
        }
    }

    fn field(&mut self, col: usize, raw: &[u8], i: usize) -> Result<Value, RejectReason> {
        let c = &self.table.columns[col];
        if c.class != IdentifierClass::NhsNumber {
            return parse_field(c, raw, i, self.utf8_checked);
        }
        match &mut self.last_nhs {
            Some((prev, v)) if prev.as_slice() == raw => *v,
            slot => {
                let v = parse_field(c, raw, i, self.utf8_checked);
                match slot {
                    Some((prev, old)) => {
                        prev.clear();
                        prev.extend_from_slice(raw);
                        *old = v;
                    }
                    None => *slot = Some((raw.to_vec(), v)),
                }
                v
            }
        }
    }

    /// Record a reject; its fields in schema order when the row had one per column.
    fn reject(&mut self, line: u64, reason: RejectReason, col: Option<usize>, fields: &[&[u8]]) {
        let fields = if fields.len() == self.field_map.len() && !reason.is_structural() {
            let mut ordered = vec![Vec::new(); fields.len()];
            for (i, f) in fields.iter().enumerate() {
                ordered[self.field_map[i]] = f.to_vec();
            }
            ordered
        } else {
            fields.iter().map(|f| f.to_vec()).collect()
        };
        self.rejected.push(Rejected {
            line,
            reason,
            column: col.map(|c| self.table.columns[c].name.clone()),
            fields,
            watched: false,
        });
    }

    /// A record past a limit: counted, quarantined with every byte it had (the
    /// quarantine file keeps only its first bytes; the Type 1 scan searches them all).
    fn past_limit(&mut self, line: u64, reason: RejectReason, note: String, fields: &[&[u8]]) {
        self.rows_read += 1;
        self.rejected.push(Rejected {
            line,
            reason,
            column: Some(note),
            fields: fields.iter().map(|f| f.to_vec()).collect(),
            watched: false,
        });
    }

    /// A record with a bare carriage return in its input field `field`: counted and
    /// quarantined whole, the field's column named when the record has one per column.
    fn bare_cr(&mut self, line: u64, field: usize, fields: &[&[u8]]) {
        self.rows_read += 1;
        let col = (fields.len() == self.field_map.len())
            .then(|| self.field_map.get(field).copied())
            .flatten();
        self.reject(line, RejectReason::BareCarriageReturn, col, fields);
    }

    /// One record (never a blank line).
    fn record(&mut self, line: u64, fields: &[&[u8]]) {
        self.rows_read += 1;
        if fields.len() != self.field_map.len() {
            self.reject(line, RejectReason::WrongColumnCount, None, fields);
            return;
        }
        self.values.clear();
        self.values.resize(self.table.columns.len(), Value::Null);
        for (i, raw) in fields.iter().enumerate() {
            let col = self.field_map[i];
            match self.field(col, raw, i) {
                Ok(v) => self.values[col] = v,
                Err(reason) => {
                    self.reject(line, reason, Some(col), fields);
                    return;
                }
            }
        }
        for (b, v) in self.builders.iter_mut().zip(self.values.iter()) {
            append(b, *v, fields);
        }
        self.lines.append_value(line);
    }

    /// The kept prefix of a record the chunker streamed past the size limit: one
    /// quarantined row, its fields split from the prefix (the last one cut).
    fn overlong(&mut self, chunk: &RawChunk, o: &Overlong) {
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(chunk.bytes.as_slice());
        let mut rec = csv::ByteRecord::new();
        let fields: Vec<Vec<u8>> = match rdr.read_byte_record(&mut rec) {
            Ok(true) => rec
                .iter()
                .take(chunk.max_fields)
                .map(<[u8]>::to_vec)
                .collect(),
            _ => vec![chunk.bytes.clone()],
        };
        self.rows_read += 1;
        self.rejected.push(Rejected {
            line: chunk.first_line,
            reason: o.reason,
            column: Some(o.note(chunk.bytes.len())),
            fields,
            watched: o.watched,
        });
    }

    fn finish(self) -> Parsed {
        let mut arrays: Vec<ArrayRef> = self.builders.into_iter().map(Builder::finish).collect();
        arrays.push(Arc::new({ self.lines }.finish()));
        let batch = match RecordBatch::try_new(parsed_schema(self.table), arrays) {
            Ok(b) => b,
            Err(e) => panic!("bug: parsed batch does not match its schema: {e}"),
        };
        Parsed {
            batch,
            rejected: self.rejected,
            rows_read: self.rows_read,
        }
    }
}

/// Parse a chunk of CSV records (no header) into a typed batch and rejects.
/// `field_map[i]` is the schema column of input field `i`.
///
/// A chunk without quotes or carriage returns (the common case for machine-written
/// extracts) is split directly on newlines and commas; anything else goes through the
/// csv crate's full RFC 4180 reader. Both give the same records and line numbers.
/// A record longer than the chunk's `max_record_bytes` or with more than `max_fields`
/// fields is one rejected row (`record_too_long`, `too_many_fields`) holding all its
/// bytes (fields past the limit as one raw field); an over-long chunk (the prefix the
/// chunker kept of a record it streamed past) is one such row.
pub fn parse_csv_chunk(chunk: &RawChunk, table: &TableSchema, field_map: &[usize]) -> Parsed {
    parse_chunk_impl(chunk, table, field_map, true)
}

fn parse_chunk_impl(
    chunk: &RawChunk,
    table: &TableSchema,
    field_map: &[usize],
    fast_path: bool,
) -> Parsed {
    let bytes = chunk.bytes.as_slice();
    let mut parser = ChunkParser::new(table, field_map, bytes);
    if let Some(o) = &chunk.overlong {
        parser.overlong(chunk, o);
        return parser.finish();
    }
    if fast_path && memchr::memchr2(b'"', b'\r', bytes).is_none() {
        fast_split(chunk, &mut parser);
        return parser.finish();
    }
    // Only a line feed ends a record: the csv crate's default would also end one at a
    // lone CR, splitting the row (see the module docs).
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .terminator(csv::Terminator::Any(b'\n'))
        .from_reader(bytes);
    let mut rec = csv::ByteRecord::new();
    loop {
        let start = rdr.position().byte();
        match rdr.read_byte_record(&mut rec) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                // csv only fails on I/O or UTF-8 with byte records; count the row as rejected.
                let line = e.position().map_or(chunk.first_line, |p| {
                    record_line(bytes, chunk.first_line, p)
                });
                parser.rows_read += 1;
                parser.reject(line, RejectReason::UnreadableRecord, None, &[]);
                continue;
            }
        }
        let line = rec.position().map_or(chunk.first_line, |p| {
            record_line(bytes, chunk.first_line, p)
        });
        let end = rdr.position().byte();
        let raw = usize::try_from(start)
            .ok()
            .zip(usize::try_from(end).ok())
            .and_then(|(s, e)| bytes.get(s..e))
            .unwrap_or_default();
        // A blank line (LF or CR LF alone) is not a record.
        if rec.len() == 1 && matches!(&rec[0], b"" | b"\r") {
            continue;
        }
        let len = end.saturating_sub(start);
        let too_long = len > chunk.max_record_bytes as u64;
        if !too_long && rec.len() <= chunk.max_fields {
            let mut fields: Vec<&[u8]> = rec.iter().collect();
            strip_line_end_cr(&mut fields, raw);
            match bare_cr_field(raw) {
                Some(field) => parser.bare_cr(line, field, &fields),
                None => parser.record(line, &fields),
            }
            continue;
        }
        let rest = rest_of(&rec, chunk.max_fields);
        let mut fields: Vec<&[u8]> = rec.iter().take(chunk.max_fields).collect();
        if rec.len() > chunk.max_fields {
            fields.push(&rest);
        }
        let (reason, note) = if too_long {
            (RejectReason::RecordTooLong, too_long_note(len))
        } else {
            let note = too_many_note(rec.len(), chunk.max_fields);
            (RejectReason::TooManyFields, note)
        };
        parser.past_limit(line, reason, note, &fields);
    }
    parser.finish()
}

/// Drop the CR of a CR LF line ending (or of a CR ending the data) from the last field:
/// the csv crate, ending records at LF only, leaves it there.
fn strip_line_end_cr(fields: &mut [&[u8]], raw: &[u8]) {
    let ends_in_cr = raw.ends_with(b"\r\n") || raw.ends_with(b"\r");
    if let Some(last) = fields.last_mut()
        && ends_in_cr
        && let Some(cut) = last.strip_suffix(b"\r")
    {
        *last = cut;
    }
}

/// The index of the first field of one record's bytes (`raw`, perhaps after blank
/// lines) holding a carriage return outside quotes that is not the CR of its CR LF
/// ending, if one does. Quotes follow the csv crate's rules, as in [`scan_records`].
fn bare_cr_field(raw: &[u8]) -> Option<usize> {
    let lone = |i: usize| !matches!(raw.get(i + 1), Some(b'\n') | None);
    // The common case (CR LF endings, CRs in quoted fields) costs one search.
    if !memchr::memchr_iter(b'\r', raw).any(lone) {
        return None;
    }
    let begin = raw.iter().take_while(|&&b| b == b'\n').count();
    let (mut in_quotes, mut field, mut field_start) = (false, 0usize, begin);
    let mut closed_at: Option<usize> = None;
    for (i, &b) in raw.iter().enumerate().skip(begin) {
        match b {
            b'"' if in_quotes => {
                in_quotes = false;
                closed_at = Some(i);
            }
            b'"' if i == field_start => in_quotes = true,
            // The second quote of an escaped `""` inside a quoted field.
            b'"' if closed_at.is_some_and(|c| c + 1 == i) => in_quotes = true,
            b',' if !in_quotes => {
                field += 1;
                field_start = i + 1;
            }
            b'\r' if !in_quotes && lone(i) => return Some(field),
            _ => {}
        }
    }
    None
}

/// A record's fields past `max`, joined by commas into one field (empty if none).
fn rest_of(rec: &csv::ByteRecord, max: usize) -> Vec<u8> {
    let mut rest = Vec::new();
    for (i, f) in rec.iter().skip(max).enumerate() {
        if i > 0 {
            rest.push(b',');
        }
        rest.extend_from_slice(f);
    }
    rest
}

fn too_long_note(bytes: u64) -> String {
    format!(
        "(record of {bytes} bytes, cut to its first {} bytes)",
        (bytes as usize).min(KEPT_PREFIX_BYTES)
    )
}

fn too_many_note(fields: usize, max: usize) -> String {
    format!(
        "(record of {fields} fields, more than {max}; cut to its first {KEPT_PREFIX_BYTES} bytes)"
    )
}

/// The direct splitter for chunks without quotes or carriage returns: one pass for both
/// separators; a record past a limit keeps its fields past `max_fields` as one raw slice.
fn fast_split<'a>(chunk: &'a RawChunk, parser: &mut ChunkParser<'_>) {
    let bytes = chunk.bytes.as_slice();
    let mut fields: Vec<&'a [u8]> = Vec::with_capacity(parser.field_map.len() + 1);
    let mut line = chunk.first_line;
    let (mut line_start, mut field_start) = (0, 0);
    // Fields counted in this record, and where the first field past the limit began.
    let (mut count, mut overflow_at) = (0usize, None);
    let mut end_record = |fields: &mut Vec<&'a [u8]>,
                          end: usize,
                          line: u64,
                          count: usize,
                          overflow_at: Option<usize>,
                          line_start: usize| {
        if let Some(at) = overflow_at {
            fields.push(&bytes[at..end]);
        }
        let len = end - line_start;
        if len > chunk.max_record_bytes {
            parser.past_limit(
                line,
                RejectReason::RecordTooLong,
                too_long_note(len as u64),
                fields,
            );
        } else if overflow_at.is_some() {
            parser.past_limit(
                line,
                RejectReason::TooManyFields,
                too_many_note(count, chunk.max_fields),
                fields,
            );
        } else {
            parser.record(line, fields);
        }
        fields.clear();
    };
    for pos in memchr::memchr2_iter(b',', b'\n', bytes) {
        count += 1;
        if count <= chunk.max_fields {
            fields.push(&bytes[field_start..pos]);
        } else if overflow_at.is_none() {
            overflow_at = Some(field_start);
        }
        field_start = pos + 1;
        if bytes[pos] == b'\n' {
            // A blank line is not a record.
            if pos > line_start {
                end_record(&mut fields, pos, line, count, overflow_at, line_start);
            }
            fields.clear();
            (count, overflow_at) = (0, None);
            line += 1;
            line_start = pos + 1;
        }
    }
    if line_start < bytes.len() {
        count += 1;
        if count <= chunk.max_fields {
            fields.push(&bytes[field_start..]);
        } else if overflow_at.is_none() {
            overflow_at = Some(field_start);
        }
        end_record(
            &mut fields,
            bytes.len(),
            line,
            count,
            overflow_at,
            line_start,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::SchemaSet;

    fn events() -> TableSchema {
        SchemaSet::builtin()
            .get("clinical_events")
            .expect("table")
            .clone()
    }

    fn parse(text: &str) -> Parsed {
        let t = events();
        let map: Vec<usize> = (0..t.columns.len()).collect();
        parse_csv_chunk(&RawChunk::new(text.as_bytes().to_vec(), 2), &t, &map)
    }

    proptest::proptest! {
        /// The direct splitter and the csv crate agree on every quote-free chunk: same
        /// batch, same rejects (line, reason, column, fields), same row count.
        #[test]
        fn fast_path_matches_csv_crate(
            lines in proptest::collection::vec(
                proptest::collection::vec(
                    proptest::prop_oneof![
                        proptest::strategy::Just(b"9434765919".to_vec()),
                        proptest::strategy::Just(b"943 476 5919".to_vec()),
                        proptest::strategy::Just(b"9434765918".to_vec()),
                        proptest::strategy::Just(b"2020-01-02".to_vec()),
                        proptest::strategy::Just(b"2020-13-02".to_vec()),
                        proptest::strategy::Just(b"38341003".to_vec()),
                        proptest::strategy::Just(b"12.5".to_vec()),
                        proptest::strategy::Just(b"mmHg".to_vec()),
                        proptest::strategy::Just(b"\xff\xfe".to_vec()),
                        proptest::strategy::Just(b" ".to_vec()),
                        proptest::strategy::Just(Vec::new()),
                    ],
                    0..7,
                ),
                0..40,
            ),
            trailing_newline in proptest::bool::ANY,
        ) {
            let mut text = b"9434765919,2020-01-02,38341003,12.5,mmHg\n\n9434765870,2021-02-03,1,,\n".to_vec();
            for (i, l) in lines.iter().enumerate() {
                text.extend_from_slice(&l.join(&b","[..]));
                if i + 1 < lines.len() || trailing_newline {
                    text.push(b'\n');
                }
            }
            let t = events();
            let map: Vec<usize> = (0..t.columns.len()).collect();
            let chunk = RawChunk::new(text, 2);
            let fast = parse_chunk_impl(&chunk, &t, &map, true);
            let slow = parse_chunk_impl(&chunk, &t, &map, false);
            proptest::prop_assert_eq!(fast.rows_read, slow.rows_read);
            proptest::prop_assert!(fast.batch.num_rows() >= 2);
            proptest::prop_assert_eq!(&fast.batch, &slow.batch);
            let key = |p: &Parsed| -> Vec<String> {
                p.rejected
                    .iter()
                    .map(|r| format!("{} {} {:?} {:?}", r.line, r.reason, r.column, r.fields))
                    .collect()
            };
            proptest::prop_assert_eq!(key(&fast), key(&slow));
        }
    }

    #[test]
    fn good_and_bad_rows() {
        let p = parse(
            "943 476 5919,2020-01-02,38341003,,\r\n\
             9434765870,2020-13-02,38341003,,\n\
             9434765870,2020-01-02,38341003\n\
             9434765918,2020-01-02,38341003,,\n\
             9434765870,2020-01-02,271649006,abc,mmHg\n\
             \"9434765870\",2020-01-02,\"271649006\",\"120\",\"mm\nHg\"\n\
             ,2020-01-02,1,,\n",
        );
        assert_eq!(p.rows_read, 7);
        assert_eq!(p.batch.num_rows(), 2);
        let reasons: Vec<(u64, &str)> = p
            .rejected
            .iter()
            .map(|r| (r.line, r.reason.code()))
            .collect();
        assert_eq!(
            reasons,
            [
                (3, "unparsable_date"),
                (4, "wrong_column_count"),
                (5, "nhs_number_check_digit"),
                (6, "unparsable_number"),
                (9, "nhs_number_missing")
            ]
        );
        assert!(!format!("{:?}", p.rejected).contains("943"));
    }

    #[test]
    fn defect_3_a_lone_cr_in_an_unquoted_field_quarantines_its_row_only() {
        let p = parse(
            "9434765919,2020-01-02,38341003,,mm\rHg\n\
             9434765870,2020-01-02,38341003,,\r\n\
             9434765870,2020-01-02,38341003,1\r5,\n\
             \r\n\
             9434765919,2020-01-02,38341003,,\"mm\rHg\"\r\n\
             9434765919,2020-01-02,38341003,,\"a\"\"b\"\rc\n\
             \r9434765870,2020-01-02,38341003,,\n\
             9434765870,2020-01-03,38341003,2,mmHg\r\n",
        );
        // Every record counted once: none split at its CR, none lost.
        assert_eq!(p.rows_read, 7);
        let rejects: Vec<(u64, &str, Option<&str>)> = p
            .rejected
            .iter()
            .map(|r| (r.line, r.reason.code(), r.column.as_deref()))
            .collect();
        assert_eq!(
            rejects,
            [
                (2, "bare_carriage_return", Some("unit")),
                (4, "bare_carriage_return", Some("numeric_value")),
                (7, "bare_carriage_return", Some("unit")),
                (8, "bare_carriage_return", Some("nhs_number")),
            ]
        );
        // The whole row goes to quarantine, its fields aligned, the CR kept.
        assert_eq!(p.rejected[0].fields[4], b"mm\rHg");
        assert_eq!(p.rejected[1].fields[3], b"1\r5");
        // Kept: the CR LF row (its CR dropped), the CR inside quotes, the last row.
        let lines = p
            .batch
            .column_by_name(crate::ingest::LINE_COLUMN)
            .and_then(|c| c.as_any().downcast_ref::<arrow::array::UInt64Array>())
            .expect("lines");
        assert_eq!(lines.values().to_vec(), [3, 6, 9]);
        let unit = p
            .batch
            .column(4)
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .expect("unit");
        assert_eq!(unit.value(1), "mm\rHg");
        assert_eq!(unit.value(2), "mmHg");
    }

    #[test]
    fn invalid_utf8_is_rejected() {
        let t = events();
        let map: Vec<usize> = (0..t.columns.len()).collect();
        let mut bytes = b"9434765870,2020-01-02,3834".to_vec();
        bytes.push(0xff);
        bytes.extend_from_slice(b",,\n");
        let p = parse_csv_chunk(&RawChunk::new(bytes, 2), &t, &map);
        assert_eq!(p.rejected[0].reason, RejectReason::InvalidUtf8);
    }

    #[test]
    fn chunker_splits_on_record_ends_outside_quotes() {
        assert_eq!(last_record_end(b"a,\"x\ny\"\nb"), Some(8));
        assert_eq!(last_record_end(b"a,\"x\ny"), None);
    }

    #[test]
    fn defect_3_a_literal_quote_inside_a_field_keeps_quote_state() {
        // `5'11"` is a literal quote: the record ends at the first newline.
        let buf = b"a,5'11\",b\nc,\"multi\nline\",d\ne";
        assert_eq!(last_record_end(buf), Some(27));
        assert_eq!(scan_records(buf).open_quote, None);
        // Escaped quotes stay inside the field.
        assert_eq!(last_record_end(b"\"a\"\"\nb\",c\nd"), Some(10));
        // An unterminated quote is reported where it opened.
        assert_eq!(scan_records(b"a,b\nc,\"d\ne\n").open_quote, Some(6));
    }

    #[test]
    fn defect_3_cr_only_endings_are_recognised() {
        assert!(cr_only_endings(b"a,b\r1,2\r"));
        assert!(!cr_only_endings(b"a,b\r\n1,2\r\n"));
        assert!(!cr_only_endings(b"a,b\n1,2\n"));
    }

    /// A CSV file of the events header and `body`, and a chunker over it.
    fn chunker_over(body: &[u8], limits: &CsvLimits) -> (tempfile::TempDir, CsvChunker) {
        let t = tempfile::tempdir().expect("tmp");
        let p = t.path().join("clinical_events.csv");
        let mut text = b"nhs_number,event_date,snomed_code,numeric_value,unit\n".to_vec();
        text.extend_from_slice(body);
        std::fs::write(&p, text).expect("write");
        let c = CsvChunker::open_with(&p, &events(), limits).expect("open");
        (t, c)
    }

    #[test]
    fn defect_5_an_overlong_record_streams_past_with_flat_memory() {
        let mut body =
            b"9434765919,2020-01-01,38341003,,\n9434765870,2020-01-01,38341003,,".to_vec();
        body.extend(std::iter::repeat_n(b'x', 3 << 20));
        body.extend_from_slice(b" 827241000000103\n9434765870,2020-01-02,38341003,,\n");
        let limits = CsvLimits {
            chunk_bytes: 64 << 10,
            max_record_bytes: 100_000,
            max_fields: MAX_FIELDS,
        };
        let (_t, c) = chunker_over(&body, &limits);
        let finder = memchr::memmem::Finder::new(b"827241000000103").into_owned();
        let mut c = c.with_watch(vec![finder]);
        let mut chunks = Vec::new();
        let mut peak = 0;
        while let Some(ch) = c.next_chunk().expect("chunk") {
            peak = peak.max(c.carry.capacity());
            chunks.push(ch);
        }
        assert!(peak < 4 << 20, "carry grew to {peak} bytes");
        let long = chunks
            .iter()
            .find(|ch| ch.overlong.is_some())
            .expect("an overlong chunk");
        let o = long.overlong.as_ref().expect("overlong");
        assert_eq!(long.first_line, 3);
        assert_eq!(o.bytes, 32 + (3 << 20) + 16 + 1);
        assert!(o.watched, "the dissent past the cut was seen");
        assert_eq!(long.bytes.len(), KEPT_PREFIX_BYTES);
        let p = parse_csv_chunk(long, &events(), &(0..5).collect::<Vec<_>>());
        assert_eq!(p.rows_read, 1);
        assert_eq!(p.rejected[0].reason, RejectReason::RecordTooLong);
        assert!(p.rejected[0].watched);
        let note = p.rejected[0].column.clone().expect("note");
        assert!(note.contains(&o.bytes.to_string()), "{note}");
        // The next record is read whole, with its true line number.
        let last = chunks.last().expect("last");
        assert!(last.overlong.is_none());
        let p = parse_csv_chunk(last, &events(), &(0..5).collect::<Vec<_>>());
        assert_eq!(p.batch.num_rows(), 1);
        let lines = p
            .batch
            .column(5)
            .as_any()
            .downcast_ref::<arrow::array::UInt64Array>()
            .expect("lines");
        assert_eq!(lines.value(0), 4);
    }

    #[test]
    fn defect_5_an_unclosed_quote_in_an_overlong_record_is_refused() {
        let mut body = b"9434765870,2020-01-01,38341003,,\"".to_vec();
        body.extend(std::iter::repeat_n(b'x', 300_000));
        let limits = CsvLimits {
            chunk_bytes: 64 << 10,
            max_record_bytes: 100_000,
            max_fields: MAX_FIELDS,
        };
        let (_t, mut c) = chunker_over(&body, &limits);
        let e = loop {
            match c.next_chunk() {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("no error"),
                Err(e) => break e,
            }
        };
        assert!(
            matches!(e, IngestError::UnterminatedQuote { line: 2, .. }),
            "{e}"
        );
    }

    #[test]
    fn defect_5_records_past_the_limits_inside_a_chunk_are_quarantined_whole() {
        let t = events();
        let map: Vec<usize> = (0..t.columns.len()).collect();
        for quoted in [false, true] {
            let q = if quoted { "\"mmHg\"" } else { "mmHg" };
            let long = "y".repeat(500);
            let text = format!(
                "9434765919,2020-01-01,38341003,,{q}\n9434765870,2020-01-01,38341003,,{long} 827241000000103\n{}\n",
                ["1"; 20].join(",")
            );
            let chunk = RawChunk {
                max_fields: 10,
                max_record_bytes: 200,
                ..RawChunk::new(text.into_bytes(), 2)
            };
            let p = parse_csv_chunk(&chunk, &t, &map);
            assert_eq!(p.rows_read, 3);
            assert_eq!(p.batch.num_rows(), 1);
            let r: Vec<(u64, RejectReason)> =
                p.rejected.iter().map(|r| (r.line, r.reason)).collect();
            assert_eq!(
                r,
                [
                    (3, RejectReason::RecordTooLong),
                    (4, RejectReason::TooManyFields)
                ],
                "quoted: {quoted}"
            );
            // Every byte stays in the reject (the Type 1 scan searches it) ...
            assert!(
                p.rejected[0]
                    .fields
                    .iter()
                    .any(|f| f.ends_with(b"827241000000103"))
            );
            // ... the fields past the limit as one raw field.
            assert_eq!(p.rejected[1].fields.len(), 11);
            assert_eq!(p.rejected[1].fields[10], b"1,1,1,1,1,1,1,1,1,1");
        }
    }

    proptest::proptest! {
        /// The record scan agrees with the csv crate on where whole records end, for
        /// any mix of quotes, commas, newlines and bytes.
        #[test]
        fn record_scan_matches_csv_crate(bytes in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::strategy::Just(b'"'),
                proptest::strategy::Just(b','),
                proptest::strategy::Just(b'\n'),
                proptest::strategy::Just(b'a'),
                proptest::strategy::Just(b'\''),
            ],
            0..200,
        )) {
            let records = |b: &[u8]| -> Vec<Vec<Vec<u8>>> {
                let mut rdr = csv::ReaderBuilder::new()
                    .has_headers(false)
                    .flexible(true)
                    .from_reader(b);
                let mut out = Vec::new();
                let mut rec = csv::ByteRecord::new();
                while rdr.read_byte_record(&mut rec).unwrap_or(false) {
                    out.push(rec.iter().map(<[u8]>::to_vec).collect());
                }
                out
            };
            // Cutting at the scan's record end never changes what the csv crate reads.
            if let Some(end) = scan_records(&bytes).last_end {
                let mut split = records(&bytes[..end]);
                split.extend(records(&bytes[end..]));
                proptest::prop_assert_eq!(split, records(&bytes));
            }
        }
    }
}

/// Fuzzing at scale with proptest (cargo-fuzz needs nightly sanitizers this project does
/// not build with): `PROPTEST_CASES=200000 cargo test --release --lib fuzz_` for a long run.
#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::schema::SchemaSet;

    fn bytes() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            proptest::prop_oneof![
                proptest::num::u8::ANY,
                proptest::sample::select(b"\",\n\r 0123456789-".to_vec()),
            ],
            0..600,
        )
    }

    proptest::proptest! {
        /// Any bytes as a chunk: no panic, every record counted once.
        #[test]
        fn fuzz_csv_chunk_parsing(bytes in bytes()) {
            let t = SchemaSet::builtin().get("clinical_events").expect("table").clone();
            let map: Vec<usize> = (0..t.columns.len()).collect();
            let p = parse_csv_chunk(&RawChunk::new(bytes.clone(), 2), &t, &map);
            proptest::prop_assert_eq!(p.rows_read, (p.batch.num_rows() + p.rejected.len()) as u64);
            let _ = scan_records(&bytes);
        }

        /// A bare CR put into any field of good quote-free rows: exactly that row is
        /// quarantined, at its own line, and every other row is kept at its line.
        #[test]
        fn fuzz_a_bare_cr_quarantines_exactly_its_row(
            rows in 1usize..30,
            crlf in proptest::bool::ANY,
            at in 0usize..30,
            field in 0usize..5,
            offset in 0usize..4,
        ) {
            let t = SchemaSet::builtin().get("clinical_events").expect("table").clone();
            let map: Vec<usize> = (0..t.columns.len()).collect();
            let bad = at % rows;
            let mut text = Vec::new();
            for r in 0..rows {
                let mut fields: Vec<Vec<u8>> = ["9434765919", "2020-01-02", "38341003", "12", "mmHg"]
                    .iter()
                    .map(|f| f.as_bytes().to_vec())
                    .collect();
                if r == bad {
                    let f = &mut fields[field];
                    // Never last in the last field: `mmHg\r` then LF is a CR LF ending.
                    let pos = offset.min(f.len() - 1);
                    f.insert(pos, b'\r');
                }
                text.extend_from_slice(&fields.join(&b","[..]));
                text.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
            }
            let p = parse_csv_chunk(&RawChunk::new(text, 2), &t, &map);
            proptest::prop_assert_eq!(p.rows_read, rows as u64);
            proptest::prop_assert_eq!(p.batch.num_rows(), rows - 1);
            proptest::prop_assert_eq!(p.rejected.len(), 1);
            let r = &p.rejected[0];
            proptest::prop_assert_eq!(r.line, 2 + bad as u64);
            proptest::prop_assert_eq!(r.reason, RejectReason::BareCarriageReturn);
            proptest::prop_assert_eq!(r.column.as_deref(), Some(t.columns[field].name.as_str()));
            let lines = p.batch.column(t.columns.len()).as_any()
                .downcast_ref::<arrow::array::UInt64Array>().expect("lines");
            let want: Vec<u64> = (0..rows).filter(|r| *r != bad).map(|r| 2 + r as u64).collect();
            proptest::prop_assert_eq!(lines.values().to_vec(), want);
        }

        /// Any bytes as an NHS number: no panic; a valid one is ten digits with a check.
        #[test]
        fn fuzz_nhs_number_parsing(bytes in bytes()) {
            if let Ok(n) = crate::nhs_number::parse_bytes(&bytes) {
                proptest::prop_assert!(n.get() < 10_000_000_000);
            }
        }

        /// Any bytes as an opt-out list: no panic; errors never hold a value.
        #[test]
        fn fuzz_opt_out_lists(bytes in bytes()) {
            let d = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).expect("date");
            if let Err(e) = crate::optout::OptOutList::parse(&bytes, Path::new("l.txt"), d) {
                let msg = e.to_string();
                let run = msg
                    .split(|c: char| !c.is_ascii_digit())
                    .map(str::len)
                    .max()
                    .unwrap_or(0);
                proptest::prop_assert!(run < 10, "a number in an error: {}", msg);
            }
        }

        /// Any bytes as a whole CSV file, cut with any chunk size and record limits: no
        /// panic; each chunk's rows are counted once; a refusal is only one a file can
        /// earn (unterminated quote, CR-only endings, a header fault).
        #[test]
        fn fuzz_csv_chunker(
            body in bytes(),
            chunk_bytes in 1usize..300,
            max_record_bytes in 1usize..400,
            max_fields in 1usize..12,
        ) {
            let t = SchemaSet::builtin().get("clinical_events").expect("table").clone();
            let dir = tempfile::tempdir().expect("tmp");
            let p = dir.path().join("clinical_events.csv");
            let mut text = b"nhs_number,event_date,snomed_code,numeric_value,unit\n".to_vec();
            text.extend_from_slice(&body);
            std::fs::write(&p, &text).expect("write");
            let limits = CsvLimits { chunk_bytes, max_record_bytes, max_fields };
            let mut c = match CsvChunker::open_with(&p, &t, &limits) {
                Ok(c) => c,
                Err(e) => {
                    proptest::prop_assert!(matches!(e, IngestError::CrOnlyLineEndings { .. } | IngestError::Header { .. }), "{}", e);
                    return Ok(());
                }
            };
            let map = c.field_map.clone();
            loop {
                match c.next_chunk() {
                    Ok(Some(chunk)) => {
                        let parsed = parse_csv_chunk(&chunk, &t, &map);
                        proptest::prop_assert_eq!(
                            parsed.rows_read,
                            (parsed.batch.num_rows() + parsed.rejected.len()) as u64
                        );
                        if chunk.overlong.is_some() {
                            proptest::prop_assert!(chunk.bytes.len() <= KEPT_PREFIX_BYTES);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        proptest::prop_assert!(matches!(e, IngestError::UnterminatedQuote { .. }), "{}", e);
                        break;
                    }
                }
            }
        }

        /// The shipped demo policy with random edits (bytes replaced, inserted, cut):
        /// no panic, and an error names the file.
        #[test]
        fn fuzz_policy_toml_mutations(
            edits in proptest::collection::vec((0usize..4000, proptest::num::u8::ANY, 0u8..3), 1..8),
        ) {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/demo.toml");
            let mut text = std::fs::read(&path).expect("policy");
            for (at, byte, op) in edits {
                let at = at % (text.len() + 1);
                match op {
                    0 if at < text.len() => text[at] = byte,
                    1 => text.insert(at, byte),
                    _ if at < text.len() => {
                        text.remove(at);
                    }
                    _ => {}
                }
            }
            let text = String::from_utf8_lossy(&text);
            let schemas = SchemaSet::builtin();
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
            if let Err(e) = crate::policy::Policy::from_toml(&text, Path::new("p.toml"), &dir, &schemas) {
                proptest::prop_assert!(e.to_string().contains("p.toml"), "{}", e);
            }
        }

        /// Any text as a policy: no panic.
        #[test]
        fn fuzz_policy_toml(text in "[\\[\\]a-z_=\"0-9. \n{}]{0,300}") {
            let schemas = SchemaSet::builtin();
            let _ = crate::policy::Policy::from_toml(&text, Path::new("p.toml"), Path::new("."), &schemas);
        }
    }
}
