//! Quarantine: rows that could not be accepted, and the file they go to.
//!
//! Owns [`Rejected`] (a row's line, reason and raw fields, in schema order) and the
//! quarantine sink (one private CSV per table). Sits beside the flow: ingest produces
//! rejects, the extract writes them here. Danger: these are raw patient rows; they go
//! to the quarantine file and nowhere else (never an error, a log or `Debug`).

use std::path::{Path, PathBuf};

use crate::durable::{AtomicFile, DurableError, FileRecord, Mode};
use crate::nhs_number;

/// Why a row was rejected. The code ([`RejectReason::code`]) is the quarantine file's
/// `reason` column and the manifest's `rejected_by_reason` key: keep the codes stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// The record does not have one field per header column.
    WrongColumnCount,
    /// A field is not valid UTF-8.
    InvalidUtf8,
    /// The CSV reader could not read the record.
    UnreadableRecord,
    /// A required value is empty.
    MissingValue,
    /// A value is not in the column's allowed list.
    ValueNotAllowed,
    /// Not a (finite) number.
    UnparsableNumber,
    /// Not a `YYYY-MM-DD` date.
    UnparsableDate,
    /// A date before 1800-01-01 (year 0000 and other placeholders).
    DateOutOfRange,
    /// Not a boolean.
    UnparsableBoolean,
    /// The NHS number is empty.
    NhsNumberMissing,
    /// The NHS number is not ten digits.
    NhsNumberFormat,
    /// The NHS number's Modulus 11 check digit is wrong.
    NhsNumberCheckDigit,
    /// The NHS number is a placeholder (one digit repeated, e.g. 0000000000).
    NhsNumberPlaceholder,
    /// The record is longer than the configured maximum record size.
    RecordTooLong,
    /// The record has more fields than the configured maximum.
    TooManyFields,
    /// A column the policy keeps raw (text or a number) holds a valid NHS number.
    NhsNumberInValue,
    /// A carriage return not followed by a line feed inside an unquoted field: records
    /// end in CR LF (or LF), so the record is malformed (quote the field or remove the CR).
    BareCarriageReturn,
}

impl RejectReason {
    /// The stable reason code.
    pub fn code(self) -> &'static str {
        match self {
            RejectReason::WrongColumnCount => "wrong_column_count",
            RejectReason::InvalidUtf8 => "invalid_utf8",
            RejectReason::UnreadableRecord => "unreadable_record",
            RejectReason::MissingValue => "missing_value",
            RejectReason::ValueNotAllowed => "value_not_allowed",
            RejectReason::UnparsableNumber => "unparsable_number",
            RejectReason::UnparsableDate => "unparsable_date",
            RejectReason::DateOutOfRange => "date_out_of_range",
            RejectReason::UnparsableBoolean => "unparsable_boolean",
            RejectReason::NhsNumberMissing => "nhs_number_missing",
            RejectReason::NhsNumberFormat => "nhs_number_format",
            RejectReason::NhsNumberCheckDigit => "nhs_number_check_digit",
            RejectReason::NhsNumberPlaceholder => "nhs_number_placeholder",
            RejectReason::RecordTooLong => "record_too_long",
            RejectReason::TooManyFields => "too_many_fields",
            RejectReason::NhsNumberInValue => "nhs_number_in_value",
            RejectReason::BareCarriageReturn => "bare_carriage_return",
        }
    }

    /// Whether the row's fields could not be split or decoded as a record, so they may
    /// not line up with the schema's columns.
    pub fn is_structural(self) -> bool {
        matches!(
            self,
            RejectReason::WrongColumnCount
                | RejectReason::UnreadableRecord
                | RejectReason::RecordTooLong
                | RejectReason::TooManyFields
        )
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

impl From<nhs_number::Invalid> for RejectReason {
    fn from(e: nhs_number::Invalid) -> Self {
        match e {
            nhs_number::Invalid::Missing => RejectReason::NhsNumberMissing,
            nhs_number::Invalid::Format => RejectReason::NhsNumberFormat,
            nhs_number::Invalid::CheckDigit => RejectReason::NhsNumberCheckDigit,
            nhs_number::Invalid::Placeholder => RejectReason::NhsNumberPlaceholder,
        }
    }
}

/// A row that could not be accepted.
#[derive(Clone)]
pub struct Rejected {
    /// 1-based line (CSV, header is line 1) or row (Parquet) number.
    pub line: u64,
    /// Why.
    pub reason: RejectReason,
    /// The column at fault, if one.
    pub column: Option<String>,
    /// The row's raw fields (patient data: quarantine only), in SCHEMA order when the row
    /// had one field per column; otherwise (a structural reason) as they came.
    pub fields: Vec<Vec<u8>>,
    /// For a record past a limit whose bytes were not all kept: whether a byte string the
    /// reader was told to watch for (a Type 1 dissent code) occurred in the part not kept.
    pub watched: bool,
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

/// Quarantine CSV for one table: `line,reason,column,` then the row's fields under the
/// schema's column names (a structurally broken row's fields as they came).
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
                r.reason.code().as_bytes(),
                r.column.as_deref().unwrap_or("").as_bytes(),
            ];
            rec.extend(kept_fields(r));
            self.writer
                .write_record(&rec)
                .map_err(|e| csv_err(&self.target, e))?;
            self.rows += 1;
        }
        crate::durable::crash_point("rejected rows written");
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

/// The most bytes of one record past a limit written to the quarantine file: its
/// `column` slot says how long it was.
pub const KEPT_PREFIX_BYTES: usize = 64 << 10;

/// A row's fields as written: all of them, except for a record past a limit, whose
/// fields are cut after [`KEPT_PREFIX_BYTES`] bytes in all.
fn kept_fields(r: &Rejected) -> Vec<&[u8]> {
    if !matches!(
        r.reason,
        RejectReason::RecordTooLong | RejectReason::TooManyFields
    ) {
        return r.fields.iter().map(Vec::as_slice).collect();
    }
    let mut left = KEPT_PREFIX_BYTES;
    let mut out = Vec::new();
    for f in &r.fields {
        if left == 0 {
            break;
        }
        let take = f.len().min(left);
        out.push(&f[..take]);
        left -= take;
    }
    out
}

fn csv_err(path: &Path, e: csv::Error) -> DurableError {
    DurableError {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    }
}
