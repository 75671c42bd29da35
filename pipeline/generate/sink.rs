//! Where generated rows go: a CSV byte buffer or typed Arrow builders, one per table per
//! chunk of patients.
//!
//! Owns the physical form of a row. The row generator calls the same typed methods for
//! both formats, so CSV and Parquet carry the same logical content; only malformed rows
//! differ: CSV writes them (a wrong field count, an unparsable date or number, invalid
//! UTF-8) while Arrow cannot represent them and drops them. A sink never chooses values.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, StringBuilder,
};
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use super::format::{push_date, push_decimal, push_field, push_i64};
use super::nhs::NhsOut;
use crate::schema::ColumnType;

/// How a malformed row is broken.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Fault<'a> {
    /// Write these bytes in place of column `col`'s value.
    Replace {
        /// The column to corrupt.
        col: usize,
        /// The bytes to write there (quoted if needed).
        bytes: &'a [u8],
    },
    /// One field too many.
    ExtraField,
    /// One field too few (the last is left out).
    MissingField,
}

/// A destination for generated rows.
pub(crate) trait Sink: Send {
    /// Start a row; `fault` makes it malformed.
    fn begin_row(&mut self, fault: Option<Fault<'_>>);
    /// The NHS number field.
    fn nhs(&mut self, v: NhsOut);
    /// Free text (quoted when needed).
    fn text(&mut self, s: &str);
    /// A code or other value known to need no quoting (ASCII, no comma or quote).
    fn token(&mut self, s: &[u8]);
    /// A date as days since 1970-01-01.
    fn date(&mut self, days: i32);
    /// A decimal `scaled / 10^decimals`.
    fn decimal(&mut self, scaled: i64, decimals: u8);
    /// An integer.
    fn int(&mut self, v: i64);
    /// A boolean.
    fn boolean(&mut self, v: bool);
    /// An empty value.
    fn null(&mut self);
    /// Finish the row; false when the sink dropped it (a malformed row in Arrow).
    fn end_row(&mut self) -> bool;
    /// Rows kept so far.
    fn rows(&self) -> u64;
    /// One sink holding the rows of `parts` in the order given by `(part, row)` pairs,
    /// each naming a kept row of a part. `table` is for messages only.
    fn interleave(
        parts: Vec<Self>,
        order: &[(usize, usize)],
        table: &str,
    ) -> Result<Self, ArrowError>
    where
        Self: Sized;
}

/// CSV rows in a byte buffer (RFC 4180 quoting, `\n` line ends).
#[derive(Debug, Default)]
pub(crate) struct CsvSink {
    /// The encoded rows.
    pub buf: Vec<u8>,
    /// Where each row starts in `buf`.
    starts: Vec<usize>,
    col: usize,
    last_field_start: usize,
    replace_col: Option<usize>,
    replacement: Vec<u8>,
    extra: bool,
    missing: bool,
    rows: u64,
}

impl CsvSink {
    /// An empty sink with room for about `bytes`.
    pub(crate) fn with_capacity(bytes: usize) -> Self {
        CsvSink {
            buf: Vec::with_capacity(bytes),
            ..CsvSink::default()
        }
    }

    /// Start a field; returns false when the field was replaced by a fault.
    #[inline]
    fn field(&mut self) -> bool {
        if self.col > 0 {
            self.buf.push(b',');
        }
        self.last_field_start = self.buf.len();
        let c = self.col;
        self.col += 1;
        if self.replace_col == Some(c) {
            push_field(&mut self.buf, &self.replacement);
            return false;
        }
        true
    }
}

impl Sink for CsvSink {
    fn begin_row(&mut self, fault: Option<Fault<'_>>) {
        self.starts.push(self.buf.len());
        self.col = 0;
        self.replace_col = None;
        self.extra = false;
        self.missing = false;
        match fault {
            Some(Fault::Replace { col, bytes }) => {
                self.replace_col = Some(col);
                self.replacement.clear();
                self.replacement.extend_from_slice(bytes);
            }
            Some(Fault::ExtraField) => self.extra = true,
            Some(Fault::MissingField) => self.missing = true,
            None => {}
        }
    }

    fn nhs(&mut self, v: NhsOut) {
        if self.field() {
            let mut b = [0u8; 16];
            let n = v.write(&mut b);
            self.buf.extend_from_slice(&b[..n]);
        }
    }

    fn text(&mut self, s: &str) {
        if self.field() {
            push_field(&mut self.buf, s.as_bytes());
        }
    }

    fn token(&mut self, s: &[u8]) {
        if self.field() {
            self.buf.extend_from_slice(s);
        }
    }

    fn date(&mut self, days: i32) {
        if self.field() {
            push_date(&mut self.buf, days);
        }
    }

    fn decimal(&mut self, scaled: i64, decimals: u8) {
        if self.field() {
            push_decimal(&mut self.buf, scaled, decimals);
        }
    }

    fn int(&mut self, v: i64) {
        if self.field() {
            push_i64(&mut self.buf, v);
        }
    }

    fn boolean(&mut self, v: bool) {
        if self.field() {
            self.buf
                .extend_from_slice(if v { b"true" } else { b"false" });
        }
    }

    fn null(&mut self) {
        self.field();
    }

    fn end_row(&mut self) -> bool {
        if self.missing {
            // Drop the last field and its separator.
            let cut = self
                .last_field_start
                .saturating_sub(usize::from(self.col > 1));
            self.buf.truncate(cut);
        }
        if self.extra {
            self.buf.extend_from_slice(b",X");
        }
        self.buf.push(b'\n');
        self.rows += 1;
        true
    }

    fn rows(&self) -> u64 {
        self.rows
    }

    fn interleave(
        parts: Vec<Self>,
        order: &[(usize, usize)],
        table: &str,
    ) -> Result<Self, ArrowError> {
        let mut out = CsvSink::with_capacity(parts.iter().map(|p| p.buf.len()).sum());
        for &(p, r) in order {
            let line = parts.get(p).and_then(|part| {
                let end = part.starts.get(r + 1).copied().unwrap_or(part.buf.len());
                part.starts
                    .get(r)
                    .and_then(|&start| part.buf.get(start..end))
            });
            let line = line.ok_or_else(|| {
                ArrowError::InvalidArgumentError(format!(
                    "table {table}: row {r} of part {p} does not exist"
                ))
            })?;
            out.starts.push(out.buf.len());
            out.buf.extend_from_slice(line);
        }
        out.rows = order.len() as u64;
        Ok(out)
    }
}

/// One typed column being built.
#[derive(Debug)]
enum Builder {
    Str(StringBuilder),
    Date(Date32Builder),
    F64(Float64Builder),
    I64(Int64Builder),
    Bool(BooleanBuilder),
}

impl Builder {
    fn null(&mut self) {
        match self {
            Builder::Str(b) => b.append_null(),
            Builder::Date(b) => b.append_null(),
            Builder::F64(b) => b.append_null(),
            Builder::I64(b) => b.append_null(),
            Builder::Bool(b) => b.append_null(),
        }
    }
}

/// Typed Arrow columns for one table; malformed rows are dropped.
#[derive(Debug)]
pub(crate) struct ArrowSink {
    schema: SchemaRef,
    cols: Vec<Builder>,
    col: usize,
    skip: bool,
    rows: u64,
    /// Rows already assembled into a batch (by [`Sink::interleave`]).
    done: Option<RecordBatch>,
}

impl ArrowSink {
    /// Builders for a table with these column types (in schema order).
    pub(crate) fn new(schema: SchemaRef, types: &[ColumnType], rows_hint: usize) -> Self {
        let cols = types
            .iter()
            .map(|t| match t {
                ColumnType::String => {
                    Builder::Str(StringBuilder::with_capacity(rows_hint, rows_hint * 12))
                }
                ColumnType::Date => Builder::Date(Date32Builder::with_capacity(rows_hint)),
                ColumnType::Float64 => Builder::F64(Float64Builder::with_capacity(rows_hint)),
                ColumnType::Int64 => Builder::I64(Int64Builder::with_capacity(rows_hint)),
                ColumnType::Boolean => Builder::Bool(BooleanBuilder::with_capacity(rows_hint)),
            })
            .collect();
        ArrowSink {
            schema,
            cols,
            col: 0,
            skip: false,
            rows: 0,
            done: None,
        }
    }

    /// The builder for the next field, or `None` when the row is being dropped.
    #[inline]
    fn next(&mut self) -> Option<&mut Builder> {
        if self.skip {
            return None;
        }
        let c = self.col;
        self.col += 1;
        self.cols.get_mut(c)
    }

    /// The rows built so far as one batch.
    pub(crate) fn finish(mut self) -> Result<RecordBatch, ArrowError> {
        if let Some(batch) = self.done {
            return Ok(batch);
        }
        let arrays: Vec<ArrayRef> = self
            .cols
            .iter_mut()
            .map(|b| -> ArrayRef {
                match b {
                    Builder::Str(b) => Arc::new(b.finish()),
                    Builder::Date(b) => Arc::new(b.finish()),
                    Builder::F64(b) => Arc::new(b.finish()),
                    Builder::I64(b) => Arc::new(b.finish()),
                    Builder::Bool(b) => Arc::new(b.finish()),
                }
            })
            .collect();
        RecordBatch::try_new(self.schema, arrays)
    }
}

impl Sink for ArrowSink {
    fn begin_row(&mut self, fault: Option<Fault<'_>>) {
        self.col = 0;
        self.skip = fault.is_some();
    }

    fn nhs(&mut self, v: NhsOut) {
        match self.next() {
            Some(Builder::Str(b)) if v == NhsOut::Missing => b.append_null(),
            Some(Builder::Str(b)) => {
                let mut buf = [0u8; 16];
                let n = v.write(&mut buf);
                match std::str::from_utf8(&buf[..n]) {
                    Ok(s) => b.append_value(s),
                    Err(_) => b.append_null(),
                }
            }
            Some(other) => other.null(),
            None => {}
        }
    }

    fn text(&mut self, s: &str) {
        match self.next() {
            Some(Builder::Str(b)) => b.append_value(s),
            Some(other) => other.null(),
            None => {}
        }
    }

    fn token(&mut self, s: &[u8]) {
        match self.next() {
            Some(Builder::Str(b)) => match std::str::from_utf8(s) {
                Ok(s) => b.append_value(s),
                Err(_) => b.append_null(),
            },
            Some(other) => other.null(),
            None => {}
        }
    }

    fn date(&mut self, days: i32) {
        match self.next() {
            Some(Builder::Date(b)) => b.append_value(days),
            Some(other) => other.null(),
            None => {}
        }
    }

    fn decimal(&mut self, scaled: i64, decimals: u8) {
        match self.next() {
            Some(Builder::F64(b)) => {
                b.append_value(scaled as f64 / 10f64.powi(i32::from(decimals)));
            }
            Some(other) => other.null(),
            None => {}
        }
    }

    fn int(&mut self, v: i64) {
        match self.next() {
            Some(Builder::I64(b)) => b.append_value(v),
            Some(other) => other.null(),
            None => {}
        }
    }

    fn boolean(&mut self, v: bool) {
        match self.next() {
            Some(Builder::Bool(b)) => b.append_value(v),
            Some(other) => other.null(),
            None => {}
        }
    }

    fn null(&mut self) {
        if let Some(b) = self.next() {
            b.null();
        }
    }

    fn end_row(&mut self) -> bool {
        if self.skip {
            return false;
        }
        // A row that wrote fewer fields than columns would misalign the builders: pad.
        while self.col < self.cols.len() {
            self.null();
        }
        self.rows += 1;
        true
    }

    fn rows(&self) -> u64 {
        self.rows
    }

    fn interleave(
        parts: Vec<Self>,
        order: &[(usize, usize)],
        _table: &str,
    ) -> Result<Self, ArrowError> {
        let Some(schema) = parts.first().map(|p| p.schema.clone()) else {
            return Ok(ArrowSink::new(
                Arc::new(arrow::datatypes::Schema::empty()),
                &[],
                0,
            ));
        };
        let batches = parts
            .into_iter()
            .map(ArrowSink::finish)
            .collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<&RecordBatch> = batches.iter().collect();
        let batch = arrow::compute::interleave_record_batch(&refs, order)?;
        Ok(ArrowSink {
            schema,
            cols: Vec::new(),
            col: 0,
            skip: false,
            rows: batch.num_rows() as u64,
            done: Some(batch),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(s: &mut CsvSink, fault: Option<Fault<'_>>) {
        s.begin_row(fault);
        s.nhs(NhsOut::Spaced(9_434_765_919));
        s.text("O'BRIEN, Mary");
        s.date(0);
        s.decimal(725, 1);
        s.end_row();
    }

    fn text(s: &CsvSink) -> String {
        String::from_utf8_lossy(&s.buf).into_owned()
    }

    #[test]
    fn csv_rows_are_quoted_and_typed() {
        let mut s = CsvSink::default();
        row(&mut s, None);
        assert_eq!(text(&s), "943 476 5919,\"O'BRIEN, Mary\",1970-01-01,72.5\n");
    }

    #[test]
    fn csv_faults_break_one_thing() {
        let mut s = CsvSink::default();
        row(
            &mut s,
            Some(Fault::Replace {
                col: 2,
                bytes: b"31/12/2020",
            }),
        );
        row(
            &mut s,
            Some(Fault::Replace {
                col: 3,
                bytes: b"7,2",
            }),
        );
        row(&mut s, Some(Fault::ExtraField));
        row(&mut s, Some(Fault::MissingField));
        assert_eq!(
            text(&s),
            "943 476 5919,\"O'BRIEN, Mary\",31/12/2020,72.5\n\
             943 476 5919,\"O'BRIEN, Mary\",1970-01-01,\"7,2\"\n\
             943 476 5919,\"O'BRIEN, Mary\",1970-01-01,72.5,X\n\
             943 476 5919,\"O'BRIEN, Mary\",1970-01-01\n"
        );
    }

    #[test]
    fn arrow_drops_malformed_rows() {
        use arrow::datatypes::{DataType, Field, Schema};
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Utf8, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("d", DataType::Date32, true),
            Field::new("v", DataType::Float64, true),
        ]));
        let types = [
            ColumnType::String,
            ColumnType::String,
            ColumnType::Date,
            ColumnType::Float64,
        ];
        let mut s = ArrowSink::new(schema, &types, 4);
        s.begin_row(None);
        s.nhs(NhsOut::Plain(9_434_765_919));
        s.text("a");
        s.date(3);
        s.decimal(725, 1);
        assert!(s.end_row());
        s.begin_row(Some(Fault::ExtraField));
        s.nhs(NhsOut::Plain(9_434_765_919));
        assert!(!s.end_row());
        let batch = s.finish().map_err(|e| e.to_string());
        assert_eq!(batch.map(|b| b.num_rows()), Ok(1));
    }
}
