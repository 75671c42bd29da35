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
//! never into an error message or a log. Memory is bounded by the chunk size.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder,
    RecordBatch, StringArray, UInt64Array, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use sha2::{Digest, Sha256};

use crate::nhs_number;
use crate::schema::{ColumnSchema, ColumnType, IdentifierClass, TableSchema};

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

/// A chunk of whole CSV records.
#[derive(Debug)]
pub struct RawChunk {
    /// The bytes (whole records, each ending in a newline, except perhaps the file's last).
    pub bytes: Vec<u8>,
    /// Line number of the chunk's first byte.
    pub first_line: u64,
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
}

impl std::fmt::Debug for CsvChunker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CsvChunker({})", self.path.display())
    }
}

fn check_header(names: &[String], table: &TableSchema) -> Result<Vec<usize>, String> {
    let mut map = Vec::with_capacity(names.len());
    let mut seen = vec![false; table.columns.len()];
    for (i, n) in names.iter().enumerate() {
        match table.column_index(n) {
            Some(idx) if seen[idx] => {
                return Err(format!("column {n:?} appears twice (field {})", i + 1));
            }
            Some(idx) => {
                seen[idx] = true;
                map.push(idx);
            }
            None => {
                return Err(format!(
                    "unknown column {n:?} (field {}) is not in schema {} ({}); the extract must match the schema exactly",
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

/// Position just after the last record-ending newline outside quotes (the buffer starts
/// at a record boundary, so a byte is inside quotes when an odd number of `"` precede it).
/// One fast count of the quotes, then a backward scan that usually stops at the last
/// newline.
fn last_record_end(buf: &[u8]) -> Option<usize> {
    let mut quotes_before = memchr::memchr_iter(b'"', buf).count();
    for i in memchr::memrchr2_iter(b'"', b'\n', buf) {
        if buf[i] == b'"' {
            quotes_before = quotes_before.saturating_sub(1);
        } else if quotes_before.is_multiple_of(2) {
            return Some(i + 1);
        }
    }
    None
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
        let header_bytes = &carry[..header_end];
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(header_bytes);
        let mut rec = csv::ByteRecord::new();
        let header_err = |message: String| IngestError::Header {
            path: path.to_path_buf(),
            message,
        };
        rdr.read_byte_record(&mut rec)
            .map_err(|_| header_err("the header line is not valid CSV".into()))?;
        let mut names = Vec::new();
        for (i, f) in rec.iter().enumerate() {
            let f = if i == 0 {
                f.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(f)
            } else {
                f
            };
            let s = std::str::from_utf8(f)
                .map_err(|_| header_err(format!("header field {} is not valid UTF-8", i + 1)))?;
            names.push(s.trim().to_string());
        }
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
                    self.carry.len()
                } else {
                    match last_record_end(&self.carry) {
                        Some(e) => e,
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
                return Ok(Some(RawChunk { bytes, first_line }));
            }
            if self.read_more()? == 0 {
                self.eof = true;
            }
        }
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

/// Parse a decimal number exactly as `str::parse::<f64>` does. Plain decimals with at most
/// 15 significant digits take the exact fast path (Clinger): the digits as an integer
/// and a power of ten up to 10^22 are both exact in an f64, so one IEEE division gives
/// the correctly rounded result. Everything else goes to the standard parser.
pub fn parse_f64(s: &[u8]) -> Option<f64> {
    const POW10: [f64; 16] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    ];
    let (neg, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let mut mantissa: u64 = 0;
    let mut n_digits = 0usize;
    let mut frac: Option<usize> = None;
    let mut simple = !digits.is_empty() && digits.len() <= 16;
    if simple {
        for &b in digits {
            match b {
                b'0'..=b'9' => {
                    mantissa = mantissa * 10 + u64::from(b - b'0');
                    n_digits += 1;
                    if let Some(f) = frac.as_mut() {
                        *f += 1;
                    }
                }
                b'.' if frac.is_none() => frac = Some(0),
                _ => {
                    simple = false;
                    break;
                }
            }
        }
    }
    if simple && n_digits > 0 && n_digits <= 15 {
        let v = mantissa as f64 / POW10[frac.unwrap_or(0)];
        return Some(if neg { -v } else { v });
    }
    std::str::from_utf8(s).ok()?.parse::<f64>().ok()
}

/// Parse a date `YYYY-MM-DD` into days since 1970-01-01.
pub fn parse_date(s: &[u8]) -> Option<i32> {
    if s.len() != 10 || s[4] != b'-' || s[7] != b'-' {
        return None;
    }
    let num = |r: &[u8]| -> Option<i64> {
        r.iter().try_fold(0i64, |acc, &b| {
            b.is_ascii_digit().then(|| acc * 10 + i64::from(b - b'0'))
        })
    };
    let (y, m, d) = (num(&s[..4])?, num(&s[5..7])?, num(&s[8..])?);
    if !(1..=12).contains(&m) || d < 1 {
        return None;
    }
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let dim = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if d > dim[(m - 1) as usize] {
        return None;
    }
    Some(days_from_civil(y, m, d) as i32)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

enum Builder {
    /// String fields are appended as bytes already known to be UTF-8 and checked again
    /// once, in bulk, when the array is finished.
    Str(BinaryBuilder),
    I64(Int64Builder),
    F64(Float64Builder),
    Date(Date32Builder),
    Bool(BooleanBuilder),
    Nhs(UInt64Builder),
}

impl Builder {
    fn new(c: &ColumnSchema, cap: usize) -> Self {
        if c.class == IdentifierClass::NhsNumber {
            return Builder::Nhs(UInt64Builder::with_capacity(cap));
        }
        match c.ty {
            ColumnType::String => Builder::Str(BinaryBuilder::with_capacity(cap, cap * 8)),
            ColumnType::Int64 => Builder::I64(Int64Builder::with_capacity(cap)),
            ColumnType::Float64 => Builder::F64(Float64Builder::with_capacity(cap)),
            ColumnType::Date => Builder::Date(Date32Builder::with_capacity(cap)),
            ColumnType::Boolean => Builder::Bool(BooleanBuilder::with_capacity(cap)),
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            Builder::Str(mut b) => {
                let bin = b.finish();
                let len = bin.len();
                // Every value was validated as UTF-8 before it was appended, so this
                // cannot fail; if it ever did, fail closed with nulls, never bad text.
                Arc::new(
                    StringArray::try_from_binary(bin)
                        .unwrap_or_else(|_| StringArray::new_null(len)),
                )
            }
            Builder::I64(mut b) => Arc::new(b.finish()),
            Builder::F64(mut b) => Arc::new(b.finish()),
            Builder::Date(mut b) => Arc::new(b.finish()),
            Builder::Bool(mut b) => Arc::new(b.finish()),
            Builder::Nhs(mut b) => Arc::new(b.finish()),
        }
    }
}

/// A parsed field value, before it is appended.
#[derive(Clone, Copy)]
enum Value {
    Null,
    /// A validated UTF-8 field, by its index in the record.
    Str(usize),
    I64(i64),
    F64(f64),
    Date(i32),
    Bool(bool),
    Nhs(u64),
}

/// Parse one field by its column; `Err((reason))` on failure. `utf8_checked`: the whole
/// chunk is valid UTF-8, so every field is too (fields split at ASCII bytes).
fn parse_field(
    c: &ColumnSchema,
    raw: &[u8],
    field: usize,
    utf8_checked: bool,
) -> Result<Value, &'static str> {
    if c.class == IdentifierClass::NhsNumber {
        return nhs_number::parse_bytes(raw)
            .map(|n| Value::Nhs(n.get()))
            .map_err(|e| e.reason());
    }
    let trimmed = raw.trim_ascii();
    if trimmed.is_empty() {
        return if c.nullable {
            Ok(Value::Null)
        } else {
            Err("missing_value")
        };
    }
    match c.ty {
        ColumnType::String => {
            if !utf8_checked && std::str::from_utf8(raw).is_err() {
                return Err("invalid_utf8");
            }
            if let Some(allowed) = &c.allowed
                && !allowed.iter().any(|a| a.as_bytes() == raw)
            {
                return Err("value_not_allowed");
            }
            Ok(Value::Str(field))
        }
        ColumnType::Int64 => std::str::from_utf8(trimmed)
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Value::I64)
            .ok_or("unparsable_number"),
        ColumnType::Float64 => parse_f64(trimmed)
            .filter(|f| f.is_finite())
            .map(Value::F64)
            .ok_or("unparsable_number"),
        ColumnType::Date => parse_date(trimmed)
            .map(Value::Date)
            .ok_or("unparsable_date"),
        ColumnType::Boolean => match trimmed.to_ascii_lowercase().as_slice() {
            b"true" | b"1" | b"t" | b"yes" => Ok(Value::Bool(true)),
            b"false" | b"0" | b"f" | b"no" => Ok(Value::Bool(false)),
            _ => Err("unparsable_boolean"),
        },
    }
}

fn append(b: &mut Builder, v: Value, fields: &[&[u8]]) {
    match (b, v) {
        (Builder::Str(b), Value::Str(i)) => b.append_value(fields[i]),
        (Builder::I64(b), Value::I64(x)) => b.append_value(x),
        (Builder::F64(b), Value::F64(x)) => b.append_value(x),
        (Builder::Date(b), Value::Date(x)) => b.append_value(x),
        (Builder::Bool(b), Value::Bool(x)) => b.append_value(x),
        (Builder::Nhs(b), Value::Nhs(x)) => b.append_value(x),
        (Builder::Str(b), _) => b.append_null(),
        (Builder::I64(b), _) => b.append_null(),
        (Builder::F64(b), _) => b.append_null(),
        (Builder::Date(b), _) => b.append_null(),
        (Builder::Bool(b), _) => b.append_null(),
        (Builder::Nhs(b), _) => b.append_null(),
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
    last_nhs: Option<(Vec<u8>, Result<Value, &'static str>)>,
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

    fn field(&mut self, col: usize, raw: &[u8], i: usize) -> Result<Value, &'static str> {
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

    fn reject(&mut self, line: u64, reason: &'static str, col: Option<usize>, fields: &[&[u8]]) {
        self.rejected.push(Rejected {
            line,
            reason,
            column: col.map(|c| self.table.columns[c].name.clone()),
            fields: fields.iter().map(|f| f.to_vec()).collect(),
        });
    }

    /// One record (never a blank line).
    fn record(&mut self, line: u64, fields: &[&[u8]]) {
        self.rows_read += 1;
        if fields.len() != self.field_map.len() {
            self.reject(line, "wrong_column_count", None, fields);
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
    let mut fields: Vec<&[u8]> = Vec::with_capacity(field_map.len() + 1);
    if fast_path && memchr::memchr2(b'"', b'\r', bytes).is_none() {
        // One pass over the chunk for both separators.
        let mut line = chunk.first_line;
        let (mut line_start, mut field_start) = (0, 0);
        for pos in memchr::memchr2_iter(b',', b'\n', bytes) {
            fields.push(&bytes[field_start..pos]);
            field_start = pos + 1;
            if bytes[pos] == b'\n' {
                // A blank line is not a record.
                if pos > line_start {
                    parser.record(line, &fields);
                }
                fields.clear();
                line += 1;
                line_start = pos + 1;
            }
        }
        if line_start < bytes.len() {
            fields.push(&bytes[field_start..]);
            parser.record(line, &fields);
        }
        return parser.finish();
    }
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes);
    let mut rec = csv::ByteRecord::new();
    loop {
        match rdr.read_byte_record(&mut rec) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                // csv only fails on I/O or UTF-8 with byte records; count the row as rejected.
                let line = e.position().map_or(chunk.first_line, |p| {
                    record_line(bytes, chunk.first_line, p)
                });
                parser.rows_read += 1;
                parser.reject(line, "unreadable_record", None, &[]);
                continue;
            }
        }
        let line = rec.position().map_or(chunk.first_line, |p| {
            record_line(bytes, chunk.first_line, p)
        });
        // A blank line is not a record.
        if rec.len() == 1 && rec[0].is_empty() {
            continue;
        }
        let fields: Vec<&[u8]> = rec.iter().collect();
        parser.record(line, &fields);
    }
    parser.finish()
}

/// Parse an Arrow batch read from Parquet (already cast to the schema's types, in schema
/// order) starting at row `first_row` (1-based): validate nullability, allowed values
/// and NHS numbers, exactly as for CSV.
pub fn parse_arrow_batch(batch: &RecordBatch, table: &TableSchema, first_row: u64) -> Parsed {
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    let n = batch.num_rows();
    let opts = FormatOptions::default();
    let mut keep = vec![true; n];
    let mut rejected = Vec::new();
    let mut nhs_out: Option<ArrayRef> = None;
    let strings: Vec<Option<&arrow::array::StringArray>> = batch
        .columns()
        .iter()
        .map(|a| a.as_any().downcast_ref::<arrow::array::StringArray>())
        .collect();
    let mut nhs_vals = vec![None; n];
    for row in 0..n {
        let mut fault = None;
        for (ci, c) in table.columns.iter().enumerate() {
            let a = batch.column(ci);
            if c.class == IdentifierClass::NhsNumber {
                let r = match strings[ci] {
                    Some(s) if s.is_valid(row) => {
                        nhs_number::parse(s.value(row)).map_err(|e| e.reason())
                    }
                    _ => Err(nhs_number::Invalid::Missing.reason()),
                };
                match r {
                    Ok(v) => nhs_vals[row] = Some(v.get()),
                    Err(reason) => {
                        fault = Some((reason, ci));
                        break;
                    }
                }
            } else if a.is_null(row) {
                if !c.nullable {
                    fault = Some(("missing_value", ci));
                    break;
                }
            } else if let (Some(allowed), Some(s)) = (&c.allowed, strings[ci])
                && !allowed.iter().any(|x| x == s.value(row))
            {
                fault = Some(("value_not_allowed", ci));
                break;
            }
        }
        if let Some((reason, ci)) = fault {
            keep[row] = false;
            let fields = batch
                .columns()
                .iter()
                .map(|a| match ArrayFormatter::try_new(a.as_ref(), &opts) {
                    Ok(f) if a.is_valid(row) => f.value(row).to_string().into_bytes(),
                    _ => Vec::new(),
                })
                .collect();
            rejected.push(Rejected {
                line: first_row + row as u64,
                reason,
                column: Some(table.columns[ci].name.clone()),
                fields,
            });
        }
    }
    let mask = arrow::array::BooleanArray::from(keep);
    let mut arrays = Vec::with_capacity(table.columns.len() + 1);
    for (ci, c) in table.columns.iter().enumerate() {
        let a: ArrayRef = if c.class == IdentifierClass::NhsNumber {
            let arr: ArrayRef = Arc::new(UInt64Array::from(nhs_vals.clone()));
            nhs_out = Some(arr.clone());
            arr
        } else {
            batch.column(ci).clone()
        };
        arrays.push(a);
    }
    let _ = nhs_out;
    let lines: ArrayRef = Arc::new(UInt64Array::from_iter_values(
        (0..n as u64).map(|i| first_row + i),
    ));
    arrays.push(lines);
    let full = match RecordBatch::try_new(parsed_schema(table), arrays) {
        Ok(b) => b,
        Err(e) => panic!("bug: parquet batch does not match its parsed schema: {e}"),
    };
    let batch = match arrow::compute::filter_record_batch(&full, &mask) {
        Ok(b) => b,
        Err(e) => panic!("bug: filter with a mask of the batch's length failed: {e}"),
    };
    Parsed {
        batch,
        rejected,
        rows_read: n as u64,
    }
}

/// Reads a Parquet input in batches cast to the schema's types, in schema order.
pub struct ParquetInput {
    reader: parquet::arrow::arrow_reader::ParquetRecordBatchReader,
    order: Vec<usize>,
    target: SchemaRef,
    path: PathBuf,
    next_row: u64,
}

impl std::fmt::Debug for ParquetInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ParquetInput({})", self.path.display())
    }
}

impl ParquetInput {
    /// Open and check a Parquet file against the schema.
    pub fn open(path: &Path, table: &TableSchema, batch_rows: usize) -> Result<Self, IngestError> {
        let pq = |message: String| IngestError::Parquet {
            path: path.to_path_buf(),
            message,
        };
        let file = File::open(path).map_err(|source| IngestError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| pq(format!("not a readable Parquet file ({e})")))?;
        let names: Vec<String> = builder
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let field_map = check_header(&names, table).map_err(pq)?;
        let mut order = vec![0; table.columns.len()];
        for (i, &c) in field_map.iter().enumerate() {
            order[c] = i;
        }
        for (ci, c) in table.columns.iter().enumerate() {
            let from = builder.schema().field(order[ci]).data_type().clone();
            let to = c.ty.arrow_type();
            if from != to && !arrow::compute::can_cast_types(&from, &to) {
                return Err(pq(format!(
                    "column {:?} has type {from}, which cannot be read as {}",
                    c.name,
                    c.ty.name()
                )));
            }
        }
        let reader = builder
            .with_batch_size(batch_rows)
            .build()
            .map_err(|e| pq(format!("cannot read ({e})")))?;
        Ok(ParquetInput {
            reader,
            order,
            target: table.arrow_schema(),
            path: path.to_path_buf(),
            next_row: 1,
        })
    }

    /// The next batch, cast and reordered to the schema, with its first row number.
    pub fn next_batch(&mut self) -> Result<Option<(RecordBatch, u64)>, IngestError> {
        let Some(b) = self.reader.next() else {
            return Ok(None);
        };
        let b = b.map_err(|e| IngestError::Parquet {
            path: self.path.clone(),
            message: format!("cannot decode row group ({e})"),
        })?;
        let mut cols = Vec::with_capacity(self.order.len());
        for (ci, &src) in self.order.iter().enumerate() {
            let to = self.target.field(ci).data_type();
            let a = b.column(src);
            let opts = arrow::compute::CastOptions {
                safe: false,
                ..Default::default()
            };
            let c = arrow::compute::cast_with_options(a, to, &opts).map_err(|_| {
                IngestError::Parquet {
                    path: self.path.clone(),
                    message: format!(
                        "column {:?}: a value in rows {}..{} cannot be read as {to}",
                        self.target.field(ci).name(),
                        self.next_row,
                        self.next_row + b.num_rows() as u64
                    ),
                }
            })?;
            cols.push(c);
        }
        let out =
            RecordBatch::try_new(self.target.clone(), cols).map_err(|e| IngestError::Parquet {
                path: self.path.clone(),
                message: format!("batch does not fit the schema ({e})"),
            })?;
        let first = self.next_row;
        self.next_row += out.num_rows() as u64;
        Ok(Some((out, first)))
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
        parse_csv_chunk(
            &RawChunk {
                bytes: text.as_bytes().to_vec(),
                first_line: 2,
            },
            &t,
            &map,
        )
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
            let chunk = RawChunk { bytes: text, first_line: 2 };
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
    fn f64_fast_path_equals_std() {
        for t in [
            "0",
            "1",
            "-1",
            "+2",
            "12.5",
            "0.1",
            "0.3",
            "123456789012345",
            "1234567890.12345",
            "99.999",
            ".5",
            "5.",
            "-0.0",
            "1e3",
            "1.5E-2",
            "inf",
            "nan",
            "1.2.3",
            "",
            ".",
            "-",
            "12a",
            "0.000000000000001",
            "1234567890123456",
            "3.14159265358979",
        ] {
            let ours = parse_f64(t.as_bytes());
            let std = t.parse::<f64>().ok();
            assert_eq!(
                ours.map(f64::to_bits),
                std.map(f64::to_bits),
                "{t:?}: {ours:?} vs {std:?}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn f64_fast_path_equals_std_random(int in 0u64..10_000_000_000, frac in 0u32..6, neg in proptest::bool::ANY) {
            let digits = int.to_string();
            let t = if frac == 0 || frac as usize >= digits.len() {
                digits
            } else {
                let (a, b) = digits.split_at(digits.len() - frac as usize);
                format!("{a}.{b}")
            };
            let t = if neg { format!("-{t}") } else { t };
            proptest::prop_assert_eq!(
                parse_f64(t.as_bytes()).map(f64::to_bits),
                t.parse::<f64>().ok().map(f64::to_bits)
            );
        }
    }

    #[test]
    fn dates() {
        assert_eq!(parse_date(b"1970-01-01"), Some(0));
        assert_eq!(parse_date(b"2000-02-29"), Some(11016));
        assert_eq!(parse_date(b"2001-02-29"), None);
        assert_eq!(parse_date(b"2021-13-01"), None);
        assert_eq!(parse_date(b"31/12/2020"), None);
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
        let reasons: Vec<(u64, &str)> = p.rejected.iter().map(|r| (r.line, r.reason)).collect();
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
    fn invalid_utf8_is_rejected() {
        let t = events();
        let map: Vec<usize> = (0..t.columns.len()).collect();
        let mut bytes = b"9434765870,2020-01-02,3834".to_vec();
        bytes.push(0xff);
        bytes.extend_from_slice(b",,\n");
        let p = parse_csv_chunk(
            &RawChunk {
                bytes,
                first_line: 2,
            },
            &t,
            &map,
        );
        assert_eq!(p.rejected[0].reason, "invalid_utf8");
    }

    #[test]
    fn chunker_splits_on_record_ends_outside_quotes() {
        assert_eq!(last_record_end(b"a,\"x\ny\"\nb"), Some(8));
        assert_eq!(last_record_end(b"a,\"x\ny"), None);
    }
}
