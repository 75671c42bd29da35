//! Byte-level formatting for generated CSV: dates, integers, fixed-point decimals and
//! RFC 4180 quoting, written straight into a byte buffer without allocating.
//!
//! Owns the calendar conversion (days since 1970-01-01 to and from `YYYY-MM-DD`, the
//! proleptic Gregorian algorithm of Howard Hinnant) and the rule for when a field needs
//! quoting. It never decides what a value is, only how its bytes look.

/// Days since 1970-01-01 of a civil date (the inverse of [`civil_from_days`]).
#[cfg(test)]
pub(crate) fn days_from_civil(y: i32, m: u32, d: u32) -> i32 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = (if y >= 0 { y } else { y - 399 }) / 400;
    let yoe = (y - era * 400) as u32;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe as i32 - 719_468
}

/// The civil date (year, month, day) of a day number.
pub(crate) fn civil_from_days(z: i32) -> (i32, u32, u32) {
    let z = z + 719_468;
    let era = (if z >= 0 { z } else { z - 146_096 }) / 146_097;
    let doe = (z - era * 146_097) as u32;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe as i32 + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Append a day number as `YYYY-MM-DD` (years 0..=9999).
pub(crate) fn push_date(buf: &mut Vec<u8>, days: i32) {
    let (y, m, d) = civil_from_days(days);
    let y = y.clamp(0, 9999) as u32;
    buf.extend_from_slice(&[
        b'0' + (y / 1000) as u8,
        b'0' + (y / 100 % 10) as u8,
        b'0' + (y / 10 % 10) as u8,
        b'0' + (y % 10) as u8,
        b'-',
        b'0' + (m / 10) as u8,
        b'0' + (m % 10) as u8,
        b'-',
        b'0' + (d / 10) as u8,
        b'0' + (d % 10) as u8,
    ]);
}

/// Append an unsigned integer in decimal.
pub(crate) fn push_u64(buf: &mut Vec<u8>, mut v: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf.extend_from_slice(&tmp[i..]);
}

/// Append a signed integer in decimal.
pub(crate) fn push_i64(buf: &mut Vec<u8>, v: i64) {
    if v < 0 {
        buf.push(b'-');
    }
    push_u64(buf, v.unsigned_abs());
}

/// Append `scaled / 10^decimals` as a plain decimal with exactly `decimals` digits after
/// the point (no point when `decimals` is 0), e.g. (725, 1) -> `72.5`, (-5, 2) -> `-0.05`.
pub(crate) fn push_decimal(buf: &mut Vec<u8>, scaled: i64, decimals: u8) {
    if decimals == 0 {
        push_i64(buf, scaled);
        return;
    }
    let p = 10u64.pow(u32::from(decimals));
    if scaled < 0 {
        buf.push(b'-');
    }
    let a = scaled.unsigned_abs();
    push_u64(buf, a / p);
    buf.push(b'.');
    let frac = a % p;
    let mut digits = [b'0'; 20];
    let n = usize::from(decimals).min(20);
    let mut f = frac;
    for d in digits[..n].iter_mut().rev() {
        *d = b'0' + (f % 10) as u8;
        f /= 10;
    }
    buf.extend_from_slice(&digits[..n]);
}

/// Whether a CSV field must be quoted (RFC 4180: it holds a comma, quote, CR or LF).
pub(crate) fn needs_quotes(s: &[u8]) -> bool {
    s.iter().any(|&b| matches!(b, b',' | b'"' | b'\r' | b'\n'))
}

/// Append one CSV field, quoting it and doubling inner quotes when needed.
pub(crate) fn push_field(buf: &mut Vec<u8>, s: &[u8]) {
    if !needs_quotes(s) {
        buf.extend_from_slice(s);
        return;
    }
    buf.push(b'"');
    for &b in s {
        if b == b'"' {
            buf.push(b'"');
        }
        buf.push(b);
    }
    buf.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut b = Vec::new();
        f(&mut b);
        String::from_utf8(b).unwrap_or_default()
    }

    #[test]
    fn dates_round_trip_and_match_chrono() {
        let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
        for days in (-40_000..40_000).step_by(37) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
            let c = epoch + chrono::Duration::days(i64::from(days));
            assert_eq!(s(|b| push_date(b, days)), c.format("%Y-%m-%d").to_string());
        }
        assert_eq!(days_from_civil(2000, 2, 29), 11_016);
    }

    #[test]
    fn numbers_format_plainly() {
        assert_eq!(s(|b| push_u64(b, 0)), "0");
        assert_eq!(s(|b| push_i64(b, -42)), "-42");
        assert_eq!(s(|b| push_u64(b, u64::MAX)), u64::MAX.to_string());
        assert_eq!(s(|b| push_decimal(b, 725, 1)), "72.5");
        assert_eq!(s(|b| push_decimal(b, 5, 2)), "0.05");
        assert_eq!(s(|b| push_decimal(b, -5, 2)), "-0.05");
        assert_eq!(s(|b| push_decimal(b, 120, 0)), "120");
    }

    #[test]
    fn fields_are_quoted_per_rfc_4180() {
        assert_eq!(s(|b| push_field(b, b"Mary O'Brien")), "Mary O'Brien");
        assert_eq!(s(|b| push_field(b, b"O'BRIEN, Mary")), "\"O'BRIEN, Mary\"");
        assert_eq!(s(|b| push_field(b, b"a\"b")), "\"a\"\"b\"");
        assert_eq!(s(|b| push_field(b, b"a\nb")), "\"a\nb\"");
    }
}
