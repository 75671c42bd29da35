//! Synthetic NHS numbers: unique per patient, valid Modulus 11, from ranges that are never
//! issued to real patients, and the ways an extract mangles them.
//!
//! Owns the allocation rule. Patient `i` gets the `perm(i)`-th number of a test range:
//! numbers beginning 999 while they suffice (up to 900,000 patients), else beginning 99
//! (9 million), else beginning 9 (90 million); NHS numbers beginning with 9 are not issued
//! to patients in England and Wales and are the ones NHS test environments use. Within a
//! range, the first eight digits pick a slot and the ninth is one of the nine (or ten)
//! digits whose Modulus 11 remainder does not give the never-valid check value 10, so
//! every index maps to exactly one valid number. This module writes numbers only into
//! generated data, never into messages.

use super::rng::Permutation;

/// Check digit of nine digits: weights 10 down to 2, 11 - (sum mod 11), 11 -> 0;
/// `None` when the result is 10 (such numbers are never valid).
pub(crate) fn check_digit(first9: &[u8; 9]) -> Option<u8> {
    let sum: u32 = first9
        .iter()
        .zip((2..=10u32).rev())
        .map(|(&d, w)| u32::from(d) * w)
        .sum();
    match 11 - sum % 11 {
        11 => Some(0),
        10 => None,
        c => Some(c as u8),
    }
}

/// Whether ten digits form a valid NHS number.
#[cfg(test)]
pub(crate) fn is_valid(n: u64) -> bool {
    let d = digits10(n);
    let mut first9 = [0u8; 9];
    first9.copy_from_slice(&d[..9]);
    n < 10_000_000_000 && check_digit(&first9) == Some(d[9])
}

fn digits10(mut n: u64) -> [u8; 10] {
    let mut d = [0u8; 10];
    for x in d.iter_mut().rev() {
        *x = (n % 10) as u8;
        n /= 10;
    }
    d
}

/// A range of test numbers: `prefix_digits` fixed leading digits, then free digits up to
/// the eighth, then the ninth and check digit.
#[derive(Debug, Clone, Copy)]
struct Tier {
    /// The fixed leading digits as a number (999, 99 or 9).
    prefix: u64,
    /// How many of the first eight digits are free.
    free_digits: u32,
}

const TIERS: [Tier; 3] = [
    Tier {
        prefix: 999,
        free_digits: 5,
    },
    Tier {
        prefix: 99,
        free_digits: 6,
    },
    Tier {
        prefix: 9,
        free_digits: 7,
    },
];

/// Allocates each patient index a unique valid number.
#[derive(Debug, Clone)]
pub(crate) struct NhsAllocator {
    tier: Tier,
    perm: Permutation,
}

impl NhsAllocator {
    /// The most patients any allocator can number.
    pub(crate) fn max_patients() -> u64 {
        TIERS
            .iter()
            .map(|t| 9 * 10u64.pow(t.free_digits))
            .max()
            .unwrap_or(0)
    }

    /// An allocator for `patients` patients keyed by `seed`; `None` when there are more
    /// patients than test numbers.
    pub(crate) fn new(patients: u64, seed: u64) -> Option<Self> {
        let tier = *TIERS
            .iter()
            .find(|t| patients <= 9 * 10u64.pow(t.free_digits))?;
        let space = 9 * 10u64.pow(tier.free_digits);
        Some(NhsAllocator {
            tier,
            perm: Permutation::new(space, seed),
        })
    }

    /// The NHS number of patient `index`.
    pub(crate) fn number(&self, index: u64) -> u64 {
        let x = self.perm.apply(index);
        let (slot, k) = (x / 9, (x % 9) as u8);
        let first8 = self.tier.prefix * 10u64.pow(self.tier.free_digits) + slot;
        let mut first9 = [0u8; 9];
        let mut m = first8;
        for d in first9[..8].iter_mut().rev() {
            *d = (m % 10) as u8;
            m /= 10;
        }
        // The k-th ninth digit (0..=9) whose check digit exists: at most one is skipped.
        let mut seen = 0u8;
        for ninth in 0..10u8 {
            first9[8] = ninth;
            if let Some(c) = check_digit(&first9) {
                if seen == k {
                    return (first8 * 10 + u64::from(ninth)) * 10 + u64::from(c);
                }
                seen += 1;
            }
        }
        // Unreachable: at least nine of the ten ninth digits have a check digit.
        (first8 * 10) * 10
    }
}

/// How one row writes its patient's NHS number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NhsOut {
    /// Ten digits.
    Plain(u64),
    /// "999 123 4567".
    Spaced(u64),
    /// "999-123-4567".
    Hyphenated(u64),
    /// Ten digits with the check digit replaced by this wrong digit.
    BadCheck(u64, u8),
    /// The first nine digits only.
    NineDigits(u64),
    /// Ten characters with one digit (at this position) replaced by a letter.
    Letter(u64, u8, u8),
    /// Eleven digits (a stray digit typed at the end).
    ElevenDigits(u64, u8),
    /// Empty.
    Missing,
}

impl NhsOut {
    /// Whether the written value is a valid NHS number once spaces and hyphens go.
    pub(crate) fn is_valid(self) -> bool {
        matches!(
            self,
            NhsOut::Plain(_) | NhsOut::Spaced(_) | NhsOut::Hyphenated(_)
        )
    }

    /// Write the value's bytes into `buf`, returning the length used.
    pub(crate) fn write(self, buf: &mut [u8; 16]) -> usize {
        let put10 = |buf: &mut [u8; 16], n: u64| {
            for (b, d) in buf.iter_mut().zip(digits10(n)) {
                *b = b'0' + d;
            }
        };
        match self {
            NhsOut::Plain(n) => {
                put10(buf, n);
                10
            }
            NhsOut::Spaced(n) | NhsOut::Hyphenated(n) => {
                let sep = if matches!(self, NhsOut::Spaced(_)) {
                    b' '
                } else {
                    b'-'
                };
                let d = digits10(n);
                let mut j = 0;
                for (i, x) in d.iter().enumerate() {
                    if i == 3 || i == 6 {
                        buf[j] = sep;
                        j += 1;
                    }
                    buf[j] = b'0' + x;
                    j += 1;
                }
                j
            }
            NhsOut::BadCheck(n, wrong) => {
                put10(buf, n);
                buf[9] = b'0' + wrong % 10;
                10
            }
            NhsOut::NineDigits(n) => {
                put10(buf, n);
                9
            }
            NhsOut::Letter(n, pos, letter) => {
                put10(buf, n);
                buf[usize::from(pos % 10)] = letter;
                10
            }
            NhsOut::ElevenDigits(n, extra) => {
                put10(buf, n);
                buf[10] = b'0' + extra % 10;
                11
            }
            NhsOut::Missing => 0,
        }
    }
}

/// A wrong check digit for `n` chosen by `r` (any digit but the right one).
pub(crate) fn wrong_check(n: u64, r: u64) -> u8 {
    let right = (n % 10) as u8;
    (right + 1 + (r % 9) as u8) % 10
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn design_test_vectors_are_valid() {
        assert!(is_valid(9_434_765_919));
        assert!(is_valid(9_434_765_870));
        assert!(!is_valid(9_434_765_918));
    }

    #[test]
    fn allocated_numbers_are_unique_valid_and_in_the_999_range() {
        let n = 50_000;
        let a = NhsAllocator::new(n, 1).map(|a| (0..n).map(|i| a.number(i)).collect::<Vec<_>>());
        let mut v = a.unwrap_or_default();
        assert!(v.iter().all(|&x| is_valid(x)));
        assert!(
            v.iter()
                .all(|&x| (9_990_000_000..=9_999_999_999).contains(&x))
        );
        v.sort_unstable();
        v.dedup();
        assert_eq!(v.len() as u64, n);
    }

    #[test]
    fn a_full_999_range_is_a_bijection() {
        let n = 900_000;
        let a = NhsAllocator::new(n, 3);
        let mut seen = std::collections::HashSet::new();
        if let Some(a) = a {
            for i in 0..n {
                assert!(seen.insert(a.number(i)));
            }
        }
        assert_eq!(seen.len() as u64, n);
    }

    #[test]
    fn larger_extracts_use_the_99_range() {
        let a = NhsAllocator::new(1_000_000, 1);
        let x = a.map(|a| a.number(0)).unwrap_or(0);
        assert!((9_900_000_000..=9_999_999_999).contains(&x) && is_valid(x));
        assert!(NhsAllocator::new(NhsAllocator::max_patients() + 1, 1).is_none());
    }

    #[test]
    fn faulty_forms_are_invalid_and_valid_forms_valid() {
        let n = 9_434_765_919;
        let text = |o: NhsOut| {
            let mut b = [0u8; 16];
            let len = o.write(&mut b);
            String::from_utf8_lossy(&b[..len]).into_owned()
        };
        assert_eq!(text(NhsOut::Plain(n)), "9434765919");
        assert_eq!(text(NhsOut::Spaced(n)), "943 476 5919");
        assert_eq!(text(NhsOut::Hyphenated(n)), "943-476-5919");
        for r in 0..9 {
            let w = text(NhsOut::BadCheck(n, wrong_check(n, r)));
            let v: u64 = w.parse().unwrap_or(0);
            assert!(!is_valid(v), "{w}");
        }
        assert_eq!(text(NhsOut::NineDigits(n)), "943476591");
        assert_eq!(text(NhsOut::Letter(n, 4, b'O')), "9434O65919");
        assert_eq!(text(NhsOut::ElevenDigits(n, 3)), "94347659193");
        assert_eq!(text(NhsOut::Missing), "");
    }
}
