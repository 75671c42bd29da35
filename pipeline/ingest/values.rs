//! Field values: numbers, dates and booleans parsed from raw bytes, and the typed
//! column builders they are appended to.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder,
    StringArray, UInt64Builder,
};

use crate::nhs_number;
use crate::quarantine::RejectReason;
use crate::schema::{ColumnSchema, ColumnType, IdentifierClass};

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

/// The earliest date accepted in a date column: 1800-01-01, as days since 1970-01-01.
/// Earlier dates (year 0000 and other placeholders) are quarantined: no living patient's
/// record has one, and some readers (pyarrow) cannot read year 0.
pub const EARLIEST_DATE: i32 = -62_091;

/// The latest date accepted in a date column: 9999-12-31, as days since 1970-01-01 (the
/// last a `YYYY-MM-DD` field can spell; a Parquet date or timestamp can go further).
pub const LATEST_DATE: i32 = 2_932_896;

/// Whether a date (days since 1970-01-01) is in the accepted range, 1800-01-01 to
/// 9999-12-31: the one range check for CSV and Parquet input alike. A date outside it is
/// quarantined as `date_out_of_range`.
pub fn date_in_range(days: i32) -> bool {
    (EARLIEST_DATE..=LATEST_DATE).contains(&days)
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

pub(super) enum Builder {
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
    pub(super) fn new(c: &ColumnSchema, cap: usize) -> Self {
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

    pub(super) fn finish(self) -> ArrayRef {
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
pub(super) enum Value {
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
pub(super) fn parse_field(
    c: &ColumnSchema,
    raw: &[u8],
    field: usize,
    utf8_checked: bool,
) -> Result<Value, RejectReason> {
    if c.class == IdentifierClass::NhsNumber {
        return nhs_number::parse_bytes(raw)
            .map(|n| Value::Nhs(n.get()))
            .map_err(RejectReason::from);
    }
    let trimmed = raw.trim_ascii();
    if trimmed.is_empty() {
        return if c.nullable {
            Ok(Value::Null)
        } else {
            Err(RejectReason::MissingValue)
        };
    }
    match c.ty {
        ColumnType::String => {
            if !utf8_checked && std::str::from_utf8(raw).is_err() {
                return Err(RejectReason::InvalidUtf8);
            }
            if let Some(allowed) = &c.allowed
                && !allowed.iter().any(|a| a.as_bytes() == raw)
            {
                return Err(RejectReason::ValueNotAllowed);
            }
            Ok(Value::Str(field))
        }
        ColumnType::Int64 => std::str::from_utf8(trimmed)
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Value::I64)
            .ok_or(RejectReason::UnparsableNumber),
        ColumnType::Float64 => parse_f64(trimmed)
            .filter(|f| f.is_finite())
            .map(Value::F64)
            .ok_or(RejectReason::UnparsableNumber),
        ColumnType::Date => match parse_date(trimmed) {
            Some(d) if !date_in_range(d) => Err(RejectReason::DateOutOfRange),
            Some(d) => Ok(Value::Date(d)),
            None => Err(RejectReason::UnparsableDate),
        },
        ColumnType::Boolean => match trimmed.to_ascii_lowercase().as_slice() {
            b"true" | b"1" | b"t" | b"yes" => Ok(Value::Bool(true)),
            b"false" | b"0" | b"f" | b"no" => Ok(Value::Bool(false)),
            _ => Err(RejectReason::UnparsableBoolean),
        },
    }
}

pub(super) fn append(b: &mut Builder, v: Value, fields: &[&[u8]]) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn earliest_date_is_1800() {
        assert_eq!(parse_date(b"1800-01-01"), Some(EARLIEST_DATE));
    }

    #[test]
    fn latest_date_is_9999() {
        assert_eq!(parse_date(b"9999-12-31"), Some(LATEST_DATE));
        assert!(date_in_range(LATEST_DATE) && !date_in_range(LATEST_DATE + 1));
        assert!(date_in_range(EARLIEST_DATE) && !date_in_range(EARLIEST_DATE - 1));
    }

    #[test]
    fn dates() {
        assert_eq!(parse_date(b"1970-01-01"), Some(0));
        assert_eq!(parse_date(b"2000-02-29"), Some(11016));
        assert_eq!(parse_date(b"2001-02-29"), None);
        assert_eq!(parse_date(b"2021-13-01"), None);
        assert_eq!(parse_date(b"31/12/2020"), None);
    }
}
