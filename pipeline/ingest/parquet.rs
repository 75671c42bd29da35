//! Parquet input: a file read in batches cast to the schema's types, each validated row by
//! row exactly as CSV is.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, UInt64Array};
use arrow::datatypes::SchemaRef;

use super::decoder::Decoder;
use super::{IngestError, Parsed, check_header, parsed_schema};
use crate::nhs_number;
use crate::quarantine::{RejectReason, Rejected};
use crate::schema::{IdentifierClass, TableSchema};

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
                        nhs_number::parse(s.value(row)).map_err(RejectReason::from)
                    }
                    _ => Err(RejectReason::NhsNumberMissing),
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
                    fault = Some((RejectReason::MissingValue, ci));
                    break;
                }
            } else if let (Some(allowed), Some(s)) = (&c.allowed, strings[ci])
                && !allowed.iter().any(|x| x == s.value(row))
            {
                fault = Some((RejectReason::ValueNotAllowed, ci));
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
            if from != to && !arrow::compute::can_cast_types(&from, &to) {
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

    /// The next batch, cast and reordered to the schema, with its first row number.
    pub fn next_batch(&mut self) -> Result<Option<(RecordBatch, u64)>, IngestError> {
        let Some(b) = self.reader.next()? else {
            return Ok(None);
        };
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
