//! NHS numbers: normalisation and the Modulus 11 check, as a kernel over Arrow arrays.
//!
//! Owns the one definition of a valid NHS number: ten digits once spaces and hyphens are
//! removed, whose tenth digit is the Modulus 11 check digit of the first nine (weights 10
//! down to 2; a remainder giving 10 is never valid). Valid numbers are carried as `u64`
//! from here on, which keeps opt-out look-ups and hashing allocation-free. This module
//! must never log or format a number: [`NhsNumber`]'s `Debug` is redacted.

use arrow::array::{Array, StringArray, UInt64Array};

/// A validated NHS number (ten digits, check digit correct).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NhsNumber(u64);

impl std::fmt::Debug for NhsNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NhsNumber(<redacted>)")
    }
}

impl NhsNumber {
    /// The number as an integer (e.g. 9434765919).
    pub fn get(self) -> u64 {
        self.0
    }

    /// Build from an integer, checking it.
    pub fn from_u64(n: u64) -> Option<Self> {
        if !(0..10_000_000_000).contains(&n) {
            return None;
        }
        let mut digits = [0u8; 10];
        let mut m = n;
        for d in digits.iter_mut().rev() {
            *d = (m % 10) as u8;
            m /= 10;
        }
        check_digits(&digits).then_some(NhsNumber(n))
    }

    /// The ten ASCII digits (leading zeros kept), the message that is hashed.
    pub fn ascii_digits(self) -> [u8; 10] {
        let mut out = [b'0'; 10];
        let mut m = self.0;
        for d in out.iter_mut().rev() {
            *d = b'0' + (m % 10) as u8;
            m /= 10;
        }
        out
    }
}

/// Why a value is not a valid NHS number. The reason names never include the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Empty or null.
    Missing,
    /// Not ten digits after removing spaces and hyphens.
    Format,
    /// Ten digits, but the Modulus 11 check digit is wrong.
    CheckDigit,
    /// A placeholder: one digit repeated ten times (0000000000, 1111111111, ...), which
    /// passes Modulus 11 but never names a patient.
    Placeholder,
}

impl Invalid {
    /// The quarantine reason code.
    pub fn reason(self) -> &'static str {
        match self {
            Invalid::Missing => "nhs_number_missing",
            Invalid::Format => "nhs_number_format",
            Invalid::CheckDigit => "nhs_number_check_digit",
            Invalid::Placeholder => "nhs_number_placeholder",
        }
    }
}

fn check_digits(d: &[u8; 10]) -> bool {
    let sum: u32 = d[..9]
        .iter()
        .zip((2..=10).rev())
        .map(|(&x, w)| u32::from(x) * w)
        .sum();
    let check = match 11 - (sum % 11) {
        11 => 0,
        10 => return false,
        c => c,
    };
    check == u32::from(d[9])
}

/// Normalise (drop spaces and hyphens) and validate one value.
pub fn parse(s: &str) -> Result<NhsNumber, Invalid> {
    parse_bytes(s.as_bytes())
}

/// As [`parse`], over bytes.
pub fn parse_bytes(s: &[u8]) -> Result<NhsNumber, Invalid> {
    let mut digits = [0u8; 10];
    let mut n = 0usize;
    let mut any = false;
    for &b in s {
        match b {
            b'0'..=b'9' => {
                if n == 10 {
                    return Err(Invalid::Format);
                }
                digits[n] = b - b'0';
                n += 1;
                any = true;
            }
            b' ' | b'-' | b'\t' => {}
            _ => return Err(Invalid::Format),
        }
    }
    if !any {
        return Err(if s.iter().all(|b| b.is_ascii_whitespace()) {
            Invalid::Missing
        } else {
            Invalid::Format
        });
    }
    if n != 10 {
        return Err(Invalid::Format);
    }
    if !check_digits(&digits) {
        return Err(Invalid::CheckDigit);
    }
    if digits.iter().all(|&d| d == digits[0]) {
        return Err(Invalid::Placeholder);
    }
    let v = digits.iter().fold(0u64, |acc, &d| acc * 10 + u64::from(d));
    Ok(NhsNumber(v))
}

/// Whether `text` holds a valid NHS number anywhere inside it: ten digits in a row, or
/// grouped 3-3-4 by single spaces or hyphens, not part of a longer run of digits, that
/// pass Modulus 11 and are not a placeholder. Used on free-standing text the extract
/// would otherwise pass on raw (a kept string column), so a number typed into it never
/// leaves. Ten-digit codes that happen to pass Modulus 11 are caught too (fail closed).
pub fn contains_valid(text: &[u8]) -> bool {
    // Both forms hold ten digits: shorter text (most units and codes) cannot.
    if text.len() < 10 {
        return false;
    }
    let digits_at = |from: usize| {
        text.get(from..)
            .unwrap_or_default()
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count()
    };
    let sep = |at: usize| matches!(text.get(at), Some(b' ' | b'-'));
    let mut i = 0;
    while i < text.len() {
        if !text[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let run = digits_at(i);
        let span = if run == 10 {
            Some(i..i + 10)
        } else if run == 3
            && sep(i + 3)
            && digits_at(i + 4) == 3
            && sep(i + 7)
            && digits_at(i + 8) == 4
        {
            Some(i..i + 12)
        } else {
            None
        };
        if span.is_some_and(|r| parse_bytes(&text[r]).is_ok()) {
            return true;
        }
        i += run;
    }
    false
}

/// Whether an integer, read as the ten digits of an NHS number, is a valid one: ten
/// significant digits (10^9 up to 10^10, the first range check being all most values
/// cost), passing Modulus 11 and not a placeholder. For numbers in kept numeric columns,
/// where a leading zero cannot survive and shorter values are ordinary measurements.
pub fn is_valid_ten_digits(n: u64) -> bool {
    if !(1_000_000_000..10_000_000_000).contains(&n) {
        return false;
    }
    NhsNumber::from_u64(n).is_some_and(|v| {
        let d = v.ascii_digits();
        d.iter().any(|&x| x != d[0])
    })
}

/// As [`is_valid_ten_digits`], for a float holding a whole number (a decimal read as
/// `float64`): `4945807302.0` is the number; `494580730.2` and non-finite values are not.
pub fn is_valid_ten_digit_float(v: f64) -> bool {
    let a = v.abs();
    (1e9..1e10).contains(&a) && a.fract() == 0.0 && is_valid_ten_digits(a as u64)
}

/// Validate a whole column: a `UInt64Array` with the valid numbers (null where invalid)
/// and, for each invalid row, its index and reason.
pub fn validate_array(values: &StringArray) -> (UInt64Array, Vec<(usize, Invalid)>) {
    let mut out = Vec::with_capacity(values.len());
    let mut bad = Vec::new();
    for i in 0..values.len() {
        let r = if values.is_null(i) {
            Err(Invalid::Missing)
        } else {
            parse(values.value(i))
        };
        match r {
            Ok(n) => out.push(Some(n.0)),
            Err(e) => {
                bad.push((i, e));
                out.push(None);
            }
        }
    }
    (UInt64Array::from(out), bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn design_examples_are_valid() {
        assert_eq!(parse("943 476 5919").map(NhsNumber::get), Ok(9434765919));
        assert_eq!(parse("9434765870").map(NhsNumber::get), Ok(9434765870));
        assert_eq!(parse("943-476-5919").map(NhsNumber::get), Ok(9434765919));
    }

    #[test]
    fn faults_are_classified() {
        assert_eq!(parse(""), Err(Invalid::Missing));
        assert_eq!(parse("   "), Err(Invalid::Missing));
        assert_eq!(parse("9434765918"), Err(Invalid::CheckDigit));
        assert_eq!(parse("943476591"), Err(Invalid::Format));
        assert_eq!(parse("94347659190"), Err(Invalid::Format));
        assert_eq!(parse("94347G5919"), Err(Invalid::Format));
        // Remainder 10 is never valid: 0000000060 has sum 6*2=12, 11-1=10.
        assert_eq!(parse("0000000060"), Err(Invalid::CheckDigit));
    }

    #[test]
    fn debug_is_redacted() {
        let n = parse("9434765919").expect("valid");
        assert!(!format!("{n:?}").contains("943"));
    }

    #[test]
    fn ascii_keeps_leading_zeros() {
        // 001 000 0003: check digit 11 - (1 * 8) % 11 = 3, so it is valid.
        let d = NhsNumber::from_u64(10_000_003)
            .map(NhsNumber::ascii_digits)
            .expect("0010000003 is a valid NHS number");
        assert_eq!(&d, b"0010000003");
        assert_eq!(
            &parse("9434765919").expect("valid").ascii_digits(),
            b"9434765919"
        );
    }

    proptest! {
        #[test]
        fn any_single_digit_change_is_caught(n in 0u64..10_000_000_000, pos in 0usize..10, delta in 1u8..10) {
            if let Some(valid) = NhsNumber::from_u64(n) {
                let mut d = valid.ascii_digits();
                d[pos] = b'0' + (d[pos] - b'0' + delta) % 10;
                let s = std::str::from_utf8(&d).expect("ascii");
                prop_assert!(parse(s).is_err());
            }
        }

        #[test]
        fn formatting_does_not_change_the_number(n in 0u64..10_000_000_000) {
            if let Some(valid) = NhsNumber::from_u64(n) {
                let d = valid.ascii_digits();
                let s = std::str::from_utf8(&d).expect("ascii");
                let spaced = format!("{} {} {}", &s[..3], &s[3..6], &s[6..]);
                prop_assert_eq!(parse(&spaced), Ok(valid));
            }
        }
    }

    #[test]
    fn numbers_inside_text_are_found_in_every_form() {
        for t in [
            "9434765919",
            "ref 943 476 5919 seen",
            "x943-476-5919",
            "mmol/L 9434765870",
        ] {
            assert!(contains_valid(t.as_bytes()), "{t}");
        }
        for t in [
            "9434765918",
            "94347659190",
            "19434765919",
            "0000000000",
            "943 476 59190",
            "827241000000103",
            "mmHg",
            "",
        ] {
            assert!(!contains_valid(t.as_bytes()), "{t}");
        }
    }

    #[test]
    fn ten_digit_values_are_checked_as_numbers() {
        assert!(is_valid_ten_digits(4945807302));
        assert!(is_valid_ten_digits(9434765919));
        assert!(!is_valid_ten_digits(9434765918), "check digit");
        assert!(!is_valid_ten_digits(1111111111), "placeholder");
        assert!(
            !is_valid_ten_digits(434765910),
            "nine digits: an ordinary value"
        );
        assert!(!is_valid_ten_digits(19434765919), "eleven digits");
        assert!(is_valid_ten_digit_float(4945807302.0));
        assert!(is_valid_ten_digit_float(-4945807302.0));
        assert!(!is_valid_ten_digit_float(494580730.2));
        assert!(!is_valid_ten_digit_float(4945807302.5));
        assert!(!is_valid_ten_digit_float(f64::NAN));
        assert!(!is_valid_ten_digit_float(f64::INFINITY));
        assert!(!is_valid_ten_digit_float(12.5));
    }

    proptest::proptest! {
        /// Every valid ten-digit number is found as an integer and as a float.
        #[test]
        fn ten_digit_numbers_are_found(n in 1_000_000_000u64..10_000_000_000) {
            let text = n.to_string();
            let valid = parse(&text).is_ok();
            proptest::prop_assert_eq!(is_valid_ten_digits(n), valid);
            proptest::prop_assert_eq!(is_valid_ten_digit_float(n as f64), valid);
        }

        /// Any bytes: no panic; a valid number placed between letters is always found.
        #[test]
        fn fuzz_contains_valid(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200), n in 0u64..10_000_000_000) {
            let _ = contains_valid(&bytes);
            if let Some(v) = NhsNumber::from_u64(n) {
                let text = format!("a{:010}b", v.get());
                proptest::prop_assert!(contains_valid(text.as_bytes()));
            }
        }
    }
}
