//! One synthetic patient: who they are, where they live, where they were registered,
//! and their Type 1 opt-out history.
//!
//! Owns the order of the random draws that make a patient (the determinism contract: the
//! same stream gives the same patient). Every draw comes from the chunk's own stream.

use super::super::reference::Reference;
use super::super::rng::Rng;
use super::{World, YEAR};

/// A patient's Type 1 opt-out history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Type1Story {
    None,
    /// A dissent on this date: opted out.
    DissentOnly(i32),
    /// A dissent, later withdrawn: not opted out.
    DissentThenWithdrawal(i32, i32),
    /// A withdrawal (of an earlier, unrecorded dissent), then a fresh dissent: opted out.
    WithdrawalThenDissent(i32, i32),
}

impl Type1Story {
    pub(super) fn is_dissenter(self) -> bool {
        matches!(
            self,
            Type1Story::DissentOnly(_) | Type1Story::WithdrawalThenDissent(..)
        )
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Registration {
    pub(super) practice: usize,
    pub(super) start: i32,
    pub(super) end: Option<i32>,
}

/// One synthetic patient.
#[derive(Debug, Clone)]
pub(super) struct Patient {
    pub(super) nhs: u64,
    pub(super) sex: usize,
    pub(super) dob: i32,
    pub(super) death: Option<i32>,
    pub(super) ethnicity: Option<usize>,
    pub(super) name: Name,
    pub(super) practice: usize,
    pub(super) postcode: Option<(usize, [u8; 3])>,
    pub(super) lsoa: u32,
    regs: [Registration; 3],
    n_regs: usize,
    pub(super) activity: f64,
    pub(super) record_start: i32,
    pub(super) record_end: i32,
    pub(super) type1: Type1Story,
    pub(super) type1_legacy: bool,
    pub(super) on_list: bool,
}

/// A patient's name, as indexes into the reference name lists.
#[derive(Debug, Clone, Copy)]
pub(super) struct Name {
    /// Forename from the female list (else the male list).
    pub(super) female: bool,
    pub(super) forename: usize,
    pub(super) surname: usize,
    /// 0 "Forename Surname", 1 "SURNAME, Forename", 2 missing.
    pub(super) style: u8,
}

impl Patient {
    pub(super) fn registrations(&self) -> &[Registration] {
        &self.regs[..self.n_regs]
    }

    pub(super) fn practice_at(&self, day: i32) -> usize {
        self.registrations()
            .iter()
            .rev()
            .find(|r| r.start <= day)
            .map_or(self.practice, |r| r.practice)
    }
}

const POSTCODE_LETTERS: &[u8] = b"ABDEFGHJLNPQRSTUWXYZ";

/// Make patient number `index` of the population from `rng` (draw order is fixed).
pub(super) fn make_patient(w: &World, rng: &mut Rng, index: u64) -> Patient {
    let r = &w.reference;
    let today = w.extract_day;
    let band = &r.age_bands.items[rng.weighted(&r.age_bands.cumulative)];
    let age_lo = (band.from as i32) * 36525 / 100;
    let age_hi = ((band.to as i32 + 1) * 36525 / 100 - 1).max(age_lo);
    let dob = today - rng.range_i32(age_lo, age_hi);
    let sex = rng.weighted(&r.sex.cumulative);
    let name = draw_name(r, rng, sex);
    let ethnicity = if rng.chance(r.rates.missing_ethnicity_share) {
        None
    } else {
        Some(rng.weighted(&r.ethnicity.cumulative))
    };
    let practice = rng.index(w.practices.len());
    let (postcode, lsoa) = draw_address(w, rng, practice);
    let death = if rng.chance(band.death_share) {
        Some(rng.range_i32((dob + 1).max(today - 5 * YEAR), today))
    } else {
        None
    };
    let record_end = death.unwrap_or(today);
    let record_start = dob
        .max(today - r.rates.history_years as i32 * YEAR)
        .min(record_end);
    let span = Span {
        start: record_start,
        end: record_end,
        death,
    };
    let (regs, n_regs) = draw_registrations(w, rng, practice, span);
    let (type1, type1_legacy) = draw_type1(r, rng, today, span);
    Patient {
        nhs: w.nhs.number(index),
        sex,
        dob,
        death,
        ethnicity,
        name,
        practice,
        postcode,
        lsoa,
        regs,
        n_regs,
        activity: band.activity / r.mean_activity,
        record_start,
        record_end,
        type1,
        type1_legacy,
        on_list: false,
    }
}

/// The name: forename list by sex (a coin for other sexes), surname, and style.
fn draw_name(r: &Reference, rng: &mut Rng, sex: usize) -> Name {
    let female = match r.sex.items.get(sex).map(String::as_str) {
        Some("F") => true,
        Some("M") => false,
        _ => rng.chance(0.5),
    };
    let forename = rng.index(if female { r.female.len() } else { r.male.len() });
    let surname = rng.index(r.surnames.len());
    let style = if rng.chance(r.rates.missing_name_share) {
        2
    } else {
        u8::from(rng.chance(r.rates.surname_first_share))
    };
    Name {
        female,
        forename,
        surname,
        style,
    }
}

/// A postcode (outward code index and inward code) in the practice's area, and an LSOA.
fn draw_address(w: &World, rng: &mut Rng, practice: usize) -> (Option<(usize, [u8; 3])>, u32) {
    let r = &w.reference;
    let area = &r.areas.items[w.practices[practice].area];
    let postcode = if rng.chance(r.rates.missing_postcode_share) {
        None
    } else {
        let outward = rng.index(area.outward.len());
        let inward = [
            b'0' + rng.below(10) as u8,
            POSTCODE_LETTERS[rng.index(POSTCODE_LETTERS.len())],
            POSTCODE_LETTERS[rng.index(POSTCODE_LETTERS.len())],
        ];
        Some((outward, inward))
    };
    let lsoa = rng.range_i32(area.lsoa_from as i32, area.lsoa_to as i32) as u32;
    (postcode, lsoa)
}

/// The days a patient's GP record covers.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: i32,
    end: i32,
    death: Option<i32>,
}

/// One to three consecutive registrations over the record; the last is at `practice`.
fn draw_registrations(
    w: &World,
    rng: &mut Rng,
    practice: usize,
    span: Span,
) -> ([Registration; 3], usize) {
    let mut n_regs = (rng.weighted(&w.registrations_cum) + 1).min(3);
    if span.end - span.start < 2 * YEAR {
        n_regs = 1;
    }
    let mut cuts = [span.start; 3];
    for c in cuts.iter_mut().take(n_regs).skip(1) {
        *c = rng.range_i32(span.start + 30, span.end - 30);
    }
    cuts[..n_regs].sort_unstable();
    let mut regs = [Registration {
        practice,
        start: span.start,
        end: None,
    }; 3];
    for i in 0..n_regs {
        let last = i + 1 == n_regs;
        let start = cuts[i];
        let end = if last {
            span.death
        } else {
            Some((cuts[i + 1] - 1 - rng.range_i32(0, 28)).max(start))
        };
        let p = if last {
            practice
        } else {
            rng.index(w.practices.len())
        };
        regs[i] = Registration {
            practice: p,
            start,
            end,
        };
    }
    (regs, n_regs)
}

/// A Type 1 story within the last ten years of the record, and whether it uses legacy codes.
fn draw_type1(r: &Reference, rng: &mut Rng, today: i32, span: Span) -> (Type1Story, bool) {
    let rates = &r.rates;
    if !rng.chance(rates.type1_share) {
        return (Type1Story::None, false);
    }
    let lo = span.start.max(today - 10 * YEAR);
    let hi = span.end;
    if hi - lo < 2 {
        return (Type1Story::None, false);
    }
    let first = rng.range_i32(lo, hi - 1);
    let second = rng.range_i32(first + 1, hi);
    let u = rng.unit();
    let story = if u < rates.type1_dissent_only {
        Type1Story::DissentOnly(first)
    } else if u < rates.type1_dissent_only + rates.type1_dissent_then_withdrawal {
        Type1Story::DissentThenWithdrawal(first, second)
    } else {
        Type1Story::WithdrawalThenDissent(first, second)
    };
    (story, rng.chance(rates.type1_legacy_code_share))
}

#[cfg(test)]
mod tests {
    use super::super::{RowOrder, test_world};
    use super::*;

    #[test]
    fn the_same_stream_makes_the_same_patient() {
        let w = test_world(100, RowOrder::Patient);
        let a = make_patient(&w, &mut Rng::new(1, 0, 7), 3);
        let b = make_patient(&w, &mut Rng::new(1, 0, 7), 3);
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }

    #[test]
    fn records_registrations_and_type1_stories_are_consistent() {
        let w = test_world(3_000, RowOrder::Patient);
        let mut rng = Rng::new(9, 0, 1);
        for i in 0..3_000 {
            let p = make_patient(&w, &mut rng, i);
            assert!(p.record_start <= p.record_end && p.record_end <= w.extract_day);
            assert!(p.record_start >= p.dob);
            let regs = p.registrations();
            assert!(!regs.is_empty() && regs.len() <= 3);
            assert_eq!(regs[regs.len() - 1].practice, p.practice);
            assert_eq!(regs[0].start, p.record_start);
            for pair in regs.windows(2) {
                assert!(pair[0].start <= pair[1].start);
                assert!(pair[0].end.is_some_and(|e| e <= pair[1].start));
            }
            match p.type1 {
                Type1Story::None => {}
                Type1Story::DissentOnly(d) => assert!(d <= p.record_end),
                Type1Story::DissentThenWithdrawal(a, b)
                | Type1Story::WithdrawalThenDissent(a, b) => {
                    assert!(a < b && b <= p.record_end)
                }
            }
            assert_eq!(p.practice_at(p.record_end), p.practice);
        }
    }
}
