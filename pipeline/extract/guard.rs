//! Kept values never carry an NHS number: the last check on what leaves raw.
//!
//! A column the policy keeps as it is (`"keep"`) goes into the output unchanged, so an
//! NHS number typed into it (a unit, a code, a free-text slip, a number keyed into a
//! result field) would leave the extract in clear. Every value of a kept string column
//! is searched ([`crate::nhs_number::contains_valid`]: ten digits, or 3-3-4 with spaces
//! or hyphens, passing Modulus 11); every value of a kept numeric column (integer, or a
//! float or decimal holding a whole number) is checked as ten digits
//! ([`crate::nhs_number::is_valid_ten_digits`]: a range check 10^9..10^10 first, so an
//! ordinary measurement costs one comparison). A row that holds one is quarantined as
//! `nhs_number_in_value`, with its column named, before the opt-out and row filters.
//! Quarantining the whole
//! row is the fail-closed choice: redacting would still publish the rest of a row that
//! was mis-keyed, and refusing the run would let one typo block every project. A
//! ten-digit code that happens to pass Modulus 11 is quarantined too, and counted in
//! the manifest, so the operator sees it. Danger: the rows moved out here are raw
//! patient data, for the quarantine file only.

use arrow::array::{
    Array, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray, UInt64Array,
};

use crate::ingest::{LINE_COLUMN, Rejected};
use crate::policy::{TablePolicy, Transform};
use crate::quarantine::RejectReason;
use crate::schema::{ColumnType, IdentifierClass};
use crate::transform::TransformBug;

/// Schema indices of the string and numeric columns the policy passes on raw.
fn kept_columns(table: &TablePolicy) -> Vec<usize> {
    table
        .columns
        .iter()
        .filter(|r| matches!(r.transform, Transform::Keep))
        .map(|r| r.input_index)
        .filter(|&i| {
            let c = &table.schema.columns[i];
            matches!(
                c.ty,
                ColumnType::String | ColumnType::Int64 | ColumnType::Float64
            ) && c.class != IdentifierClass::NhsNumber
        })
        .collect()
}

/// Mark in `hit` (first column only) the rows of `col` whose value is or holds a valid
/// NHS number. A kept column of another Arrow type is a bug: refused, never passed.
fn search(
    col: &dyn Array,
    ci: usize,
    name: &str,
    hit: &mut [Option<usize>],
) -> Result<(), TransformBug> {
    let mut mark = |row: usize| {
        if hit[row].is_none() && col.is_valid(row) {
            hit[row] = Some(ci);
        }
    };
    let any = col.as_any();
    if let Some(s) = any.downcast_ref::<StringArray>() {
        for row in 0..s.len() {
            if s.is_valid(row) && crate::nhs_number::contains_valid(s.value(row).as_bytes()) {
                mark(row);
            }
        }
    } else if let Some(a) = any.downcast_ref::<Int64Array>() {
        // The range check inside is all a typical value costs; nulls hold 0.
        for (row, v) in a.values().iter().enumerate() {
            if crate::nhs_number::is_valid_ten_digits(v.unsigned_abs()) {
                mark(row);
            }
        }
    } else if let Some(a) = any.downcast_ref::<Float64Array>() {
        for (row, v) in a.values().iter().enumerate() {
            if crate::nhs_number::is_valid_ten_digit_float(*v) {
                mark(row);
            }
        }
    } else {
        return Err(TransformBug::wrong_type(
            "kept-value guard",
            col.data_type(),
            name,
        ));
    }
    Ok(())
}

/// Split `batch` (a parsed batch: schema columns, then the line column) into the rows
/// whose kept text and numbers are clean and the rows quarantined for an NHS number in
/// them.
pub(super) fn guard_kept_values(
    batch: RecordBatch,
    table: &TablePolicy,
) -> Result<(RecordBatch, Vec<Rejected>), TransformBug> {
    let mut hit: Vec<Option<usize>> = vec![None; batch.num_rows()];
    for ci in kept_columns(table) {
        let name = &table.schema.columns[ci].name;
        search(batch.column(ci).as_ref(), ci, name, &mut hit)?;
    }
    if hit.iter().all(Option::is_none) {
        return Ok((batch, Vec::new()));
    }
    let lines = batch
        .column_by_name(LINE_COLUMN)
        .and_then(|c| c.as_any().downcast_ref::<UInt64Array>());
    let mut rejected = Vec::new();
    for (row, h) in hit.iter().enumerate() {
        if let Some(ci) = h {
            rejected.push(Rejected {
                line: lines.map_or(0, |l| l.value(row)),
                reason: RejectReason::NhsNumberInValue,
                column: Some(table.schema.columns[*ci].name.clone()),
                fields: row_fields(&batch, table, row),
                watched: false,
            });
        }
    }
    let keep = BooleanArray::from(hit.iter().map(|h| h.is_none()).collect::<Vec<_>>());
    let kept = arrow::compute::filter_record_batch(&batch, &keep)
        .map_err(|e| TransformBug::arrow("filter", &e))?;
    Ok((kept, rejected))
}

/// A parsed row's values in schema order, as text (the NHS number as its ten digits).
fn row_fields(batch: &RecordBatch, table: &TablePolicy, row: usize) -> Vec<Vec<u8>> {
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    let opts = FormatOptions::default();
    table
        .schema
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let a = batch.column(i);
            if !a.is_valid(row) {
                return Vec::new();
            }
            if c.class == IdentifierClass::NhsNumber
                && let Some(n) = a.as_any().downcast_ref::<UInt64Array>()
            {
                return format!("{:010}", n.value(row)).into_bytes();
            }
            match ArrayFormatter::try_new(a.as_ref(), &opts) {
                Ok(f) => f.value(row).to_string().into_bytes(),
                Err(_) => Vec::new(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::SchemaSet;

    #[test]
    fn a_number_in_a_kept_unit_quarantines_the_row() {
        let schemas = SchemaSet::builtin();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/demo.toml");
        let policy = crate::policy::Policy::load(&path, &schemas).expect("policy");
        let table = policy
            .tables
            .iter()
            .find(|t| t.name() == "clinical_events")
            .expect("events");
        let map: Vec<usize> = (0..table.schema.columns.len()).collect();
        let chunk = crate::ingest::RawChunk::new(
            b"9434765919,2020-01-01,38341003,1,mmHg\n0434765910,2020-01-01,38341003,1,see 943-476-5870\n"
                .to_vec(),
            2,
        );
        let parsed = crate::ingest::parse_csv_chunk(&chunk, &table.schema, &map);
        assert_eq!(parsed.batch.num_rows(), 2);
        let (kept, rejected) = guard_kept_values(parsed.batch, table).expect("guard");
        assert_eq!(kept.num_rows(), 1);
        assert_eq!(rejected.len(), 1);
        let r = &rejected[0];
        assert_eq!((r.line, r.reason), (3, RejectReason::NhsNumberInValue));
        assert_eq!(r.column.as_deref(), Some("unit"));
        assert_eq!(r.fields[0], b"0434765910", "leading zero kept");
        assert_eq!(r.fields[4], b"see 943-476-5870");
    }
}
