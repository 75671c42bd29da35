//! Parquet input: a file read in batches cast to the schema's types, each validated row by
//! row exactly as CSV is.
//!
//! Dates get the CSV range check ([`super::values::date_in_range`], 1800-01-01 to
//! 9999-12-31) whatever their Parquet type: a `Date32` after the cast, and a `Date64` or
//! `Timestamp` on its raw value first (floored to its day), so a value beyond what the
//! cast can represent is one quarantined row (`date_out_of_range`), never a refused file
//! or a date truncated into range.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Date32Array, Float64Array, RecordBatch, StringArray,
    UInt64Array,
};
use arrow::datatypes::{DataType, Date64Type, Int64Type, SchemaRef, TimeUnit};

use super::decoder::Decoder;
use super::{IngestError, Parsed, check_header, parsed_schema};
use crate::nhs_number;
use crate::quarantine::{RejectReason, Rejected};
use crate::schema::{ColumnType, IdentifierClass, TableSchema};

/// A batch read from Parquet, cast to the schema's types in schema order, with the
/// cells whose value could not be cast (now null).
#[derive(Debug)]
pub struct ParquetBatch {
    /// The cast batch.
    pub batch: RecordBatch,
    /// The 1-based row number of its first row.
    pub first_row: u64,
    /// For each row, the first column whose value could not be read as its type.
    pub cast_failed: Vec<Option<usize>>,
    /// For each row, the first date column whose raw value (a `Date64` or a timestamp)
    /// lies outside the accepted date range; that cell is null in `batch`.
    pub out_of_range: Vec<Option<usize>>,
}

/// Columns of a batch as strings, floats and dates, for the row checks.
struct Views<'a> {
    strings: Vec<Option<&'a StringArray>>,
    floats: Vec<Option<&'a Float64Array>>,
    dates: Vec<Option<&'a Date32Array>>,
}

/// Why a row cannot be accepted (and the column at fault), or its NHS number.
fn row_fault(
    pb: &ParquetBatch,
    v: &Views<'_>,
    table: &TableSchema,
    row: usize,
) -> Result<Option<u64>, (RejectReason, usize)> {
    if let Some(ci) = pb.out_of_range[row] {
        return Err((RejectReason::DateOutOfRange, ci));
    }
    if let Some(ci) = pb.cast_failed[row] {
        return Err((cast_reason(table.columns[ci].ty), ci));
    }
    let mut nhs = None;
    for (ci, c) in table.columns.iter().enumerate() {
        let a = pb.batch.column(ci);
        if c.class == IdentifierClass::NhsNumber {
            let n = match v.strings[ci] {
                Some(s) if s.is_valid(row) => {
                    nhs_number::parse(s.value(row)).map_err(RejectReason::from)
                }
                _ => Err(RejectReason::NhsNumberMissing),
            };
            nhs = Some(n.map_err(|r| (r, ci))?.get());
        } else if a.is_null(row) {
            if !c.nullable {
                return Err((RejectReason::MissingValue, ci));
            }
        } else if v.floats[ci].is_some_and(|f| !f.value(row).is_finite()) {
            return Err((RejectReason::UnparsableNumber, ci));
        } else if v.dates[ci].is_some_and(|d| !super::values::date_in_range(d.value(row))) {
            return Err((RejectReason::DateOutOfRange, ci));
        } else if let (Some(allowed), Some(s)) = (&c.allowed, v.strings[ci])
            && !allowed.iter().any(|x| x == s.value(row))
        {
            return Err((RejectReason::ValueNotAllowed, ci));
        }
    }
    Ok(nhs)
}

fn cast_reason(ty: ColumnType) -> RejectReason {
    match ty {
        ColumnType::Date => RejectReason::UnparsableDate,
        ColumnType::Boolean => RejectReason::UnparsableBoolean,
        ColumnType::Int64 | ColumnType::Float64 => RejectReason::UnparsableNumber,
        ColumnType::String => RejectReason::InvalidUtf8,
    }
}

/// A rejected row's fields (schema order), formatted.
fn row_fields(batch: &RecordBatch, row: usize) -> Vec<Vec<u8>> {
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    let opts = FormatOptions::default();
    batch
        .columns()
        .iter()
        .map(|a| match ArrayFormatter::try_new(a.as_ref(), &opts) {
            Ok(f) if a.is_valid(row) => f.value(row).to_string().into_bytes(),
            _ => Vec::new(),
        })
        .collect()
}

/// Validate a Parquet batch exactly as CSV rows are: nullability, allowed values, NHS
/// numbers, finite numbers, dates from 1800, and values that could not be read as their
/// type; each bad row is quarantined on its own.
pub fn parse_arrow_batch(pb: &ParquetBatch, table: &TableSchema) -> Parsed {
    let batch = &pb.batch;
    let n = batch.num_rows();
    let views = Views {
        strings: batch
            .columns()
            .iter()
            .map(|a| a.as_any().downcast_ref::<StringArray>())
            .collect(),
        floats: batch
            .columns()
            .iter()
            .map(|a| a.as_any().downcast_ref::<Float64Array>())
            .collect(),
        dates: batch
            .columns()
            .iter()
            .map(|a| a.as_any().downcast_ref::<Date32Array>())
            .collect(),
    };
    let mut keep = vec![true; n];
    let mut rejected = Vec::new();
    let mut nhs_vals = vec![None; n];
    for row in 0..n {
        match row_fault(pb, &views, table, row) {
            Ok(nhs) => nhs_vals[row] = nhs,
            Err((reason, ci)) => {
                keep[row] = false;
                rejected.push(Rejected {
                    line: pb.first_row + row as u64,
                    reason,
                    column: Some(table.columns[ci].name.clone()),
                    fields: row_fields(batch, row),
                    watched: false,
                });
            }
        }
    }
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(table.columns.len() + 1);
    for (ci, c) in table.columns.iter().enumerate() {
        arrays.push(if c.class == IdentifierClass::NhsNumber {
            Arc::new(UInt64Array::from(nhs_vals.clone()))
        } else {
            batch.column(ci).clone()
        });
    }
    arrays.push(Arc::new(UInt64Array::from_iter_values(
        (0..n as u64).map(|i| pb.first_row + i),
    )));
    let full = match RecordBatch::try_new(parsed_schema(table), arrays) {
        Ok(b) => b,
        Err(e) => panic!("bug: parquet batch does not match its parsed schema: {e}"),
    };
    let batch =
        match arrow::compute::filter_record_batch(&full, &arrow::array::BooleanArray::from(keep)) {
            Ok(b) => b,
            Err(e) => panic!("bug: filter with a mask of the batch's length failed: {e}"),
        };
    Parsed {
        batch,
        rejected,
        rows_read: n as u64,
    }
}

/// The file is decoded by a child process under resource limits ([`super::decoder`]).
pub struct ParquetInput {
    reader: Decoder,
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
        // Opened here first so a missing or unreadable file is an I/O error, as for CSV.
        File::open(path).map_err(|source| IngestError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let reader = Decoder::start(path, batch_rows)?;
        let schema = reader.stream.schema();
        let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let field_map = check_header(&names, table).map_err(pq)?;
        let mut order = vec![0; table.columns.len()];
        for (i, &c) in field_map.iter().enumerate() {
            order[c] = i;
        }
        for (ci, c) in table.columns.iter().enumerate() {
            let from = schema.field(order[ci]).data_type().clone();
            let to = c.ty.arrow_type();
            if from != to && !readable_as(&from, c.ty) {
                return Err(pq(format!(
                    "column {:?} has type {from}, which cannot be read as {}",
                    c.name,
                    c.ty.name()
                )));
            }
        }
        Ok(ParquetInput {
            reader,
            order,
            target: table.arrow_schema(),
            path: path.to_path_buf(),
            next_row: 1,
        })
    }

    /// The next batch, cast and reordered to the schema, with the cells that could not be
    /// cast marked (their rows are quarantined, as a bad CSV value's row is).
    pub fn next_batch(&mut self) -> Result<Option<ParquetBatch>, IngestError> {
        let Some(b) = self.reader.next()? else {
            return Ok(None);
        };
        let n = b.num_rows();
        let mut cast_failed = vec![None; n];
        let mut out_of_range = vec![None; n];
        let mut cols = Vec::with_capacity(self.order.len());
        for (ci, &src) in self.order.iter().enumerate() {
            let to = self.target.field(ci).data_type();
            let raw = b.column(src);
            let dated;
            let a = if *to == DataType::Date32
                && let Some((days, outside)) = raw_days(raw)
            {
                for (row, slot) in out_of_range.iter_mut().enumerate() {
                    if slot.is_none() && outside.value(row) {
                        *slot = Some(ci);
                    }
                }
                dated = days;
                &dated
            } else {
                raw
            };
            let c = arrow::compute::cast(a, to).map_err(|_| IngestError::Parquet {
                path: self.path.clone(),
                message: format!(
                    "column {:?} cannot be read as {to}",
                    self.target.field(ci).name()
                ),
            })?;
            for (row, slot) in cast_failed.iter_mut().enumerate() {
                if slot.is_none() && a.is_valid(row) && c.is_null(row) {
                    *slot = Some(ci);
                }
            }
            cols.push(c);
        }
        let out =
            RecordBatch::try_new(self.target.clone(), cols).map_err(|e| IngestError::Parquet {
                path: self.path.clone(),
                message: format!("batch does not fit the schema ({e})"),
            })?;
        let first_row = self.next_row;
        self.next_row += n as u64;
        Ok(Some(ParquetBatch {
            batch: out,
            first_row,
            cast_failed,
            out_of_range,
        }))
    }
}

/// Milliseconds, microseconds, ... per second of a timestamp unit.
fn per_second(unit: TimeUnit) -> i64 {
    match unit {
        TimeUnit::Second => 1,
        TimeUnit::Millisecond => 1_000,
        TimeUnit::Microsecond => 1_000_000,
        TimeUnit::Nanosecond => 1_000_000_000,
    }
}

/// A `Date64` or timestamp column checked against the date range on its raw values:
/// the array to cast (a `Date64` as `Date32`, its day floored; the cells outside the
/// range null) and which rows were outside. `None` for any other type (cast as it is,
/// then range-checked as a `Date32`).
fn raw_days(a: &ArrayRef) -> Option<(ArrayRef, BooleanArray)> {
    use super::values::{EARLIEST_DATE, LATEST_DATE};
    const SECONDS_PER_DAY: i64 = 86_400;
    let ticks_per_day = match a.data_type() {
        DataType::Date64 => 1_000 * SECONDS_PER_DAY,
        DataType::Timestamp(unit, _) => per_second(*unit) * SECONDS_PER_DAY,
        _ => return None,
    };
    // Raw values as i64 (both types are 64-bit integers underneath).
    let raw = arrow::compute::cast(a, &DataType::Int64).ok()?;
    let raw = raw.as_primitive::<Int64Type>();
    let outside: BooleanArray = raw
        .iter()
        .map(|x| {
            Some(x.is_some_and(|x| {
                let day = x.div_euclid(ticks_per_day);
                !(i64::from(EARLIEST_DATE)..=i64::from(LATEST_DATE)).contains(&day)
            }))
        })
        .collect();
    let kept = arrow::compute::nullif(a, &outside).ok()?;
    if *a.data_type() == DataType::Date64 {
        // Floor to the day: arrow's own cast truncates towards 1970, which would move
        // 1799-12-31T12:00 into range.
        let days: Date32Array = kept
            .as_primitive::<Date64Type>()
            .unary(|x| x.div_euclid(ticks_per_day) as i32);
        return Some((std::sync::Arc::new(days), outside));
    }
    Some((kept, outside))
}

/// Whether a Parquet column's type may be read as a schema type: dates only from date,
/// timestamp or text columns (never from integers, which are not dates), numbers from
/// numbers or text, booleans from booleans or text.
fn readable_as(from: &DataType, to: ColumnType) -> bool {
    let text = matches!(
        from,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    );
    match to {
        ColumnType::Date => {
            text || matches!(
                from,
                DataType::Date32 | DataType::Date64 | DataType::Timestamp(..)
            )
        }
        ColumnType::Int64 | ColumnType::Float64 => text || from.is_numeric(),
        ColumnType::Boolean => text || matches!(from, DataType::Boolean),
        ColumnType::String => text || from.is_numeric(),
    }
}
