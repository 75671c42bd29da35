//! The National Data Opt-out list: which patients of a chunk are on it, and its lines.
//!
//! Owns the list's exact size per chunk and its overlap with Type 1 dissenters, so that
//! the whole list's size does not depend on how the population is chunked.

use super::super::nhs::NhsOut;
use super::super::rng::{Rng, name_hash};
use super::patient::{Patient, Type1Story};
use super::{OptOutStats, World};

/// Pick this chunk's National Data Opt-out list members: exactly
/// `round(share * end) - round(share * start)` patients, so the whole list has
/// `round(share * patients)` entries, preferring Type 1 dissenters with the reference
/// overlap share.
pub(super) fn choose_opt_outs(
    w: &World,
    chunk: u64,
    start: u64,
    end: u64,
    patients: &mut [Patient],
) -> (Vec<u8>, OptOutStats) {
    let share = w.opt_out_share.clamp(0.0, 1.0);
    let target = ((share * end as f64).round() as u64)
        .saturating_sub((share * start as f64).round() as u64)
        .min(patients.len() as u64);
    let mut rng = Rng::new(w.seed, chunk, name_hash("opt-outs"));
    let overlap = w.reference.rates.opt_out_share_of_type1_dissenters;
    let mut chosen = 0u64;
    for p in patients.iter_mut() {
        if p.type1.is_dissenter() && rng.chance(overlap) && chosen < target {
            p.on_list = true;
            chosen += 1;
        }
    }
    let mut candidates: Vec<usize> = (0..patients.len())
        .filter(|&i| !patients[i].on_list)
        .collect();
    let need = (target - chosen) as usize;
    for j in 0..need.min(candidates.len()) {
        let k = j + rng.index(candidates.len() - j);
        candidates.swap(j, k);
        patients[candidates[j]].on_list = true;
    }
    let mut stats = OptOutStats::default();
    let mut lines = Vec::with_capacity(target as usize * 13);
    let spaced = w.reference.rates.opt_out_list_spaced_share;
    for p in patients.iter() {
        if p.type1 != Type1Story::None {
            stats.type1_patients += 1;
        }
        if p.type1.is_dissenter() {
            stats.type1_dissenters += 1;
        }
        if matches!(p.type1, Type1Story::DissentThenWithdrawal(..)) {
            stats.type1_withdrawn += 1;
        }
        if p.on_list {
            stats.opt_outs += 1;
            if p.type1.is_dissenter() {
                stats.dissenters_on_list += 1;
            }
            let out = if rng.chance(spaced) {
                NhsOut::Spaced(p.nhs)
            } else {
                NhsOut::Plain(p.nhs)
            };
            let mut b = [0u8; 16];
            let n = out.write(&mut b);
            lines.extend_from_slice(&b[..n]);
            lines.push(b'\n');
        }
    }
    (lines, stats)
}

#[cfg(test)]
mod tests {
    use super::super::patient::make_patient;
    use super::super::{RowOrder, test_world};
    use super::*;

    #[test]
    fn each_chunk_lists_its_exact_share_and_the_lines_match() {
        let w = test_world(20_000, RowOrder::Patient);
        let (start, end) = (10_000, 20_000);
        let mut rng = Rng::new(w.seed, 1, name_hash("patients-core"));
        let mut patients: Vec<Patient> = (start..end)
            .map(|i| make_patient(&w, &mut rng, i))
            .collect();
        let (lines, stats) = choose_opt_outs(&w, 1, start, end, &mut patients);
        let expected = (w.opt_out_share * end as f64).round() as u64
            - (w.opt_out_share * start as f64).round() as u64;
        assert_eq!(stats.opt_outs, expected);
        assert_eq!(
            patients.iter().filter(|p| p.on_list).count() as u64,
            expected
        );
        let listed = lines
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count() as u64;
        assert_eq!(listed, expected);
        assert!(stats.dissenters_on_list <= stats.type1_dissenters);
    }
}
