//! Minimisation kernels: row filters and column transforms over Arrow arrays.
//!
//! Owns the policy's transforms (`keep`, `pseudonymise`, `year`, `year_month`,
//! `age_band`, `postcode_district`) and row filters (date window, codelist), each a plain
//! function from arrays to arrays, so the same kernels can run as DataFusion UDFs. It
//! builds a table's output batch from a parsed batch and the table's [`TablePolicy`].
//! Danger: this is the last step before data is written; it emits only the columns the
//! policy names and never passes an input column through unlisted.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Date32Array, Int32Array, RecordBatch, StringArray,
    StringBuilder, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::policy::{CodelistFilter, DateWindow, TablePolicy, Transform};
use crate::pseudonym::{PseudonymCache, Pseudonymiser};

/// A kernel was handed an array of the wrong type: a bug, not an input fault.
#[derive(Debug, thiserror::Error)]
#[error("bug: transform {transform} got a {got} array for column {column}")]
pub struct TransformBug {
    transform: &'static str,
    got: String,
    column: String,
}

impl crate::error::Classify for TransformBug {
    fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Bug
    }
}

impl TransformBug {
    /// The accounting equation does not hold for a table: a bug.
    pub fn accounting(table: &str) -> Self {
        TransformBug {
            transform: "accounting",
            got: "rows that do not balance".into(),
            column: table.into(),
        }
    }

    /// A kernel met a column of an Arrow type it does not take: a bug.
    pub fn wrong_type(transform: &'static str, got: &DataType, column: &str) -> Self {
        TransformBug {
            transform,
            got: got.to_string(),
            column: column.into(),
        }
    }

    /// An Arrow kernel failed on arrays of matching length: a bug.
    pub fn arrow(what: &'static str, e: &arrow::error::ArrowError) -> Self {
        TransformBug {
            transform: what,
            got: e.to_string(),
            column: String::new(),
        }
    }
}

/// Days since epoch to (year, month, day).
pub fn civil_from_days(z: i32) -> (i32, u32, u32) {
    let z = i64::from(z) + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    ((if m <= 2 { y + 1 } else { y }) as i32, m, d)
}

/// Kernel: year of each date.
pub fn year(dates: &Date32Array) -> Int32Array {
    dates
        .iter()
        .map(|d| d.map(|d| civil_from_days(d).0))
        .collect()
}

/// Kernel: `YYYY-MM` of each date.
pub fn year_month(dates: &Date32Array) -> StringArray {
    let mut b = StringBuilder::with_capacity(dates.len(), dates.len() * 7);
    for d in dates.iter() {
        match d {
            Some(d) => {
                let (y, m, _) = civil_from_days(d);
                b.append_value(format!("{y:04}-{m:02}"));
            }
            None => b.append_null(),
        }
    }
    b.finish()
}

/// Kernel: age band at `at` (days since epoch), e.g. `40-44`; ages >= `top` are `90+`.
/// A birth date after `at` gives null.
pub fn age_band(dob: &Date32Array, at: i32, width: u32, top: u32) -> StringArray {
    let (ay, am, ad) = civil_from_days(at);
    dob.iter()
        .map(|d| {
            let d = d?;
            if d > at {
                return None;
            }
            let (y, m, dd) = civil_from_days(d);
            let mut age = (ay - y) as u32;
            if (am, ad) < (m, dd) {
                age -= 1;
            }
            if age >= top {
                return Some(format!("{top}+"));
            }
            let lo = age / width * width;
            let hi = (lo + width - 1).min(top - 1);
            Some(if width == 1 {
                format!("{lo}")
            } else {
                format!("{lo}-{hi}")
            })
        })
        .collect()
}

/// Kernel: postcode district (outward code), e.g. `LS1 4AP` → `LS1`, `SW1A1AA` → `SW1A`.
/// Anything that does not look like a UK postcode gives null.
pub fn postcode_district(postcodes: &StringArray) -> StringArray {
    postcodes
        .iter()
        .map(|p| {
            let compact: String = p?
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect::<String>()
                .to_ascii_uppercase();
            // The inward code is always the last three characters: digit, letter, letter.
            let n = compact.len();
            if !(5..=7).contains(&n) || !compact.is_ascii() {
                return None;
            }
            let (out, inward) = compact.split_at(n - 3);
            let ib = inward.as_bytes();
            let ok = ib[0].is_ascii_digit()
                && ib[1].is_ascii_alphabetic()
                && ib[2].is_ascii_alphabetic()
                && out.as_bytes()[0].is_ascii_alphabetic()
                && out.bytes().all(|b| b.is_ascii_alphanumeric());
            ok.then(|| out.to_string())
        })
        .collect()
}

/// Kernel: rows whose date lies in the window (inclusive); nulls fail.
pub fn date_window_mask(dates: &Date32Array, from: Option<i32>, to: Option<i32>) -> BooleanArray {
    dates
        .iter()
        .map(|d| Some(d.is_some_and(|d| from.is_none_or(|f| d >= f) && to.is_none_or(|t| d <= t))))
        .collect()
}

/// Kernel: rows whose code is in the codelist; nulls fail.
pub fn codelist_mask(codes: &StringArray, filter: &CodelistFilter) -> BooleanArray {
    codes
        .iter()
        .map(|c| Some(c.is_some_and(|c| filter.codes.contains(c.trim()))))
        .collect()
}

fn days(d: chrono::NaiveDate) -> i32 {
    crate::ingest::days_from_civil(
        i64::from(chrono::Datelike::year(&d)),
        i64::from(chrono::Datelike::month(&d)),
        i64::from(chrono::Datelike::day(&d)),
    ) as i32
}

fn as_dates<'a>(
    a: &'a ArrayRef,
    t: &'static str,
    col: &str,
) -> Result<&'a Date32Array, TransformBug> {
    a.as_any()
        .downcast_ref::<Date32Array>()
        .ok_or_else(|| TransformBug {
            transform: t,
            got: a.data_type().to_string(),
            column: col.to_string(),
        })
}

fn as_strings<'a>(
    a: &'a ArrayRef,
    t: &'static str,
    col: &str,
) -> Result<&'a StringArray, TransformBug> {
    a.as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| TransformBug {
            transform: t,
            got: a.data_type().to_string(),
            column: col.to_string(),
        })
}

/// The row-filter mask of a table's policy for a parsed batch, or `None` if the table
/// has no row filters.
pub fn row_filter_mask(
    batch: &RecordBatch,
    table: &TablePolicy,
) -> Result<Option<BooleanArray>, TransformBug> {
    let mut masks = Vec::new();
    if let Some(DateWindow { column, from, to }) = &table.date_window {
        let d = as_dates(
            batch.column(*column),
            "date_window",
            &table.schema.columns[*column].name,
        )?;
        masks.push(date_window_mask(d, from.map(days), to.map(days)));
    }
    if let Some(f) = &table.codelist {
        let c = as_strings(
            batch.column(f.column),
            "codelist",
            &table.schema.columns[f.column].name,
        )?;
        masks.push(codelist_mask(c, f));
    }
    // Masks of one batch have its length, so `and` cannot fail; if it ever did, that is
    // a bug, reported as one (never a filter silently dropped).
    let mut mask: Option<BooleanArray> = None;
    for m in masks {
        mask = Some(match mask {
            Some(prev) => {
                arrow::compute::and(&prev, &m).map_err(|e| TransformBug::arrow("row filter", &e))?
            }
            None => m,
        });
    }
    Ok(mask)
}

/// The output Arrow schema of a table under its policy.
pub fn output_schema(table: &TablePolicy) -> SchemaRef {
    Arc::new(Schema::new(
        table
            .columns
            .iter()
            .map(|c| {
                let ty = match c.transform {
                    Transform::Keep => table.schema.columns[c.input_index].ty.arrow_type(),
                    Transform::Year => DataType::Int32,
                    Transform::Pseudonymise
                    | Transform::YearMonth
                    | Transform::AgeBand { .. }
                    | Transform::PostcodeDistrict => DataType::Utf8,
                };
                let nullable = !(c.transform == Transform::Pseudonymise
                    || c.transform == Transform::Keep
                        && !table.schema.columns[c.input_index].nullable);
                Field::new(&c.output, ty, nullable)
            })
            .collect::<Vec<_>>(),
    ))
}

/// Build the output batch: only the policy's columns, each transformed. A pseudonymised
/// column holds each row's slot in `cache` (`UInt32`; see
/// [`Pseudonymiser::slots`]), which the writer encodes as the row group's dictionary:
/// `schema` is the output schema with those columns as slots
/// ([`crate::output::RowGroupEncoder::input_schema`]).
pub fn minimise(
    batch: &RecordBatch,
    table: &TablePolicy,
    pseudonymiser: &Pseudonymiser,
    cache: &mut PseudonymCache,
    schema: &SchemaRef,
) -> Result<RecordBatch, TransformBug> {
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(table.columns.len());
    for c in &table.columns {
        let a = batch.column(c.input_index);
        let out: ArrayRef = match &c.transform {
            Transform::Keep => a.clone(),
            Transform::Pseudonymise => {
                let n = a
                    .as_any()
                    .downcast_ref::<UInt64Array>()
                    .ok_or_else(|| TransformBug {
                        transform: "pseudonymise",
                        got: a.data_type().to_string(),
                        column: c.input.clone(),
                    })?;
                Arc::new(pseudonymiser.slots(n, cache))
            }
            Transform::Year => Arc::new(year(as_dates(a, "year", &c.input)?)),
            Transform::YearMonth => Arc::new(year_month(as_dates(a, "year_month", &c.input)?)),
            Transform::AgeBand { width, at, top } => Arc::new(age_band(
                as_dates(a, "age_band", &c.input)?,
                days(*at),
                *width,
                *top,
            )),
            Transform::PostcodeDistrict => Arc::new(postcode_district(as_strings(
                a,
                "postcode_district",
                &c.input,
            )?)),
        };
        cols.push(out);
    }
    RecordBatch::try_new(schema.clone(), cols).map_err(|e| TransformBug {
        transform: "minimise",
        got: e.to_string(),
        column: table.name().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::parse_date;

    fn d(s: &str) -> i32 {
        parse_date(s.as_bytes()).expect("date")
    }

    #[test]
    fn civil_round_trip() {
        for s in ["1970-01-01", "2000-02-29", "1899-12-31", "2026-11-25"] {
            let (y, m, dd) = civil_from_days(d(s));
            assert_eq!(format!("{y:04}-{m:02}-{dd:02}"), s);
        }
    }

    #[test]
    fn age_bands_respect_birthdays_and_top() {
        let at = d("2026-01-01");
        let dob = Date32Array::from(vec![
            Some(d("1986-01-01")),
            Some(d("1986-01-02")),
            Some(d("1920-05-05")),
            None,
            Some(d("2027-01-01")),
        ]);
        let b = age_band(&dob, at, 5, 90);
        let v: Vec<Option<&str>> = b.iter().collect();
        assert_eq!(v, [Some("40-44"), Some("35-39"), Some("90+"), None, None]);
    }

    #[test]
    fn postcode_districts() {
        let p = StringArray::from(vec![
            Some("LS1 4AP"),
            Some("sw1a1aa"),
            Some("M1 1AE"),
            Some("nonsense"),
            None,
        ]);
        let v: Vec<Option<String>> = postcode_district(&p)
            .iter()
            .map(|x| x.map(str::to_string))
            .collect();
        assert_eq!(
            v,
            [
                Some("LS1".into()),
                Some("SW1A".into()),
                Some("M1".into()),
                None,
                None
            ]
        );
    }

    #[test]
    fn year_and_month() {
        let a = Date32Array::from(vec![Some(d("2021-03-04")), None]);
        assert_eq!(year(&a).value(0), 2021);
        assert_eq!(year_month(&a).value(0), "2021-03");
        assert!(year_month(&a).is_null(1));
    }

    #[test]
    fn date_window_is_inclusive() {
        let a = Date32Array::from(vec![
            Some(d("2020-01-01")),
            Some(d("2019-12-31")),
            Some(d("2020-12-31")),
            Some(d("2021-01-01")),
            None,
        ]);
        let m = date_window_mask(&a, Some(d("2020-01-01")), Some(d("2020-12-31")));
        assert_eq!(
            m.iter().map(|x| x == Some(true)).collect::<Vec<_>>(),
            [true, false, true, false, false]
        );
    }
}
