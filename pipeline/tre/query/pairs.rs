//! The per-(cell, patient) aggregation of a job's population, in memory the size of its
//! rows: each row becomes one `u64` (its cell and its patient, both small integers) and,
//! per measure argument, whether it is null and (summed arguments) its value. Patients
//! are interned into one byte arena; after the last row the cells are put in key order
//! and the patients in pseudonym order, the rows are sorted by (patient, cell), and each
//! run of equal keys is one (cell, patient) pair. So the cells, their figures and the
//! membership file come out the same on every run, whatever order the partitions
//! delivered the rows in. Danger: this module holds pseudonyms; it never puts one in an
//! error, a log or a `Debug` string (`Debug` gives sizes only).

use arrow::array::{Array, BooleanBufferBuilder};
use rayon::slice::ParallelSliceMut;

pub(super) use crate::intern::Interner;

/// The population's rows, one entry each, until [`Rows::pairs`] sorts them into pairs.
pub(super) struct Rows {
    /// Per row: cell << 32 | patient.
    keys: Vec<u64>,
    /// Per argument: per row, whether it is not null.
    present: Vec<BooleanBufferBuilder>,
    /// Per argument: per row its value (summed arguments only; 0 where null).
    values: Vec<Option<Vec<f64>>>,
}

impl std::fmt::Debug for Rows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rows({})", self.keys.len())
    }
}

/// One (cell, patient) pair's own figures.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Pair {
    /// The cell (in key order).
    pub cell: u32,
    /// The patient (its rank in pseudonym order).
    pub patient: u32,
    /// Its rows.
    pub rows: u64,
    /// Per argument: its rows where the argument is not null.
    pub nonnull: Vec<u64>,
    /// Per argument: the sum of its values (0 for arguments not summed).
    pub sum: Vec<f64>,
}

impl Rows {
    /// No rows yet, for arguments `summed` (one flag per argument).
    pub(super) fn new(summed: &[bool]) -> Self {
        Rows {
            keys: Vec::new(),
            present: summed
                .iter()
                .map(|_| BooleanBufferBuilder::new(0))
                .collect(),
            values: summed.iter().map(|s| s.then(Vec::new)).collect(),
        }
    }

    /// Add one batch: each row's cell and patient, and its argument columns (`args[i]`
    /// summed arguments are Float64).
    pub(super) fn push(
        &mut self,
        cells: &[u32],
        patients: &[u32],
        args: &[&dyn Array],
    ) -> Result<(), ()> {
        self.keys.extend(
            cells
                .iter()
                .zip(patients)
                .map(|(c, p)| (u64::from(*c) << 32) | u64::from(*p)),
        );
        for ((a, present), values) in args.iter().zip(&mut self.present).zip(&mut self.values) {
            match a.logical_nulls() {
                Some(n) => present.append_buffer(n.inner()),
                None => present.append_n(a.len(), true),
            }
            if let Some(values) = values {
                let a = a
                    .as_any()
                    .downcast_ref::<arrow::array::Float64Array>()
                    .ok_or(())?;
                values.extend((0..a.len()).map(|i| if a.is_null(i) { 0.0 } else { a.value(i) }));
            }
        }
        Ok(())
    }

    /// Renumber the cells (`cell_to[old]`) and patients (`patient_to[old]`), sort, and
    /// call `each` on every (cell, patient) pair in (patient, cell) order.
    pub(super) fn pairs<E>(
        self,
        cell_to: &[u32],
        patient_to: &[u32],
        mut each: impl FnMut(&Pair) -> Result<(), E>,
    ) -> Result<(), E> {
        let Rows {
            mut keys,
            mut present,
            values,
        } = self;
        let present: Vec<_> = present.iter_mut().map(|p| p.finish()).collect();
        for k in &mut keys {
            let (c, p) = ((*k >> 32) as usize, (*k & 0xffff_ffff) as usize);
            *k = (u64::from(patient_to[p]) << 32) | u64::from(cell_to[c]);
        }
        let args = present.len();
        let mut pair = Pair {
            cell: 0,
            patient: 0,
            rows: 0,
            nonnull: vec![0; args],
            sum: vec![0.0; args],
        };
        let mut emit = |key: u64, rows: &mut dyn Iterator<Item = usize>| {
            pair.patient = (key >> 32) as u32;
            pair.cell = (key & 0xffff_ffff) as u32;
            pair.rows = 0;
            pair.nonnull.iter_mut().for_each(|n| *n = 0);
            pair.sum.iter_mut().for_each(|s| *s = 0.0);
            for r in rows {
                pair.rows += 1;
                for a in 0..args {
                    if present[a].value(r) {
                        pair.nonnull[a] += 1;
                        if let Some(v) = &values[a] {
                            pair.sum[a] += v[r];
                        }
                    }
                }
            }
            each(&pair)
        };
        if args == 0 {
            // Keys alone: sort them and count each run.
            keys.par_sort_unstable();
            let mut at = 0;
            while at < keys.len() {
                let end = at + keys[at..].partition_point(|k| *k == keys[at]);
                emit(keys[at], &mut (at..end))?;
                at = end;
            }
            return Ok(());
        }
        // With arguments: sort (key, row), so each pair's rows are found in order of
        // their value within the pair (the sums come out the same on every run).
        let first_summed = values.iter().flatten().next();
        let mut sorted: Vec<(u64, u64, u32)> = keys
            .iter()
            .enumerate()
            .map(|(r, k)| (*k, first_summed.map_or(0, |v| v[r].to_bits()), r as u32))
            .collect();
        drop(keys);
        sorted.par_sort_unstable();
        let mut at = 0;
        while at < sorted.len() {
            let key = sorted[at].0;
            let end = at + sorted[at..].partition_point(|s| s.0 == key);
            emit(key, &mut sorted[at..end].iter().map(|s| s.2 as usize))?;
            at = end;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, StringArray};

    #[test]
    fn rows_become_pairs_in_patient_then_cell_order_with_their_figures() {
        let mut rows = Rows::new(&[true, false]);
        let sums = Float64Array::from(vec![Some(1.0), None, Some(2.5), Some(4.0)]);
        let flags = StringArray::from(vec![None, Some("x"), Some("y"), None]);
        // Rows: (cell 0, patient 0), (cell 1, patient 0), (cell 0, patient 0), (0, 1).
        rows.push(
            &[0, 1, 0],
            &[0, 0, 0],
            &[&sums.slice(0, 3), &flags.slice(0, 3)],
        )
        .expect("push");
        rows.push(&[0], &[1], &[&sums.slice(3, 1), &flags.slice(3, 1)])
            .expect("push");
        let mut seen = Vec::new();
        // Cells swap (1 first in key order); patients swap too.
        rows.pairs(&[1, 0], &[1, 0], |p| -> Result<(), ()> {
            seen.push(p.clone());
            Ok(())
        })
        .expect("pairs");
        let pair = |cell, patient, rows, nonnull: [u64; 2], s| Pair {
            cell,
            patient,
            rows,
            nonnull: nonnull.to_vec(),
            sum: vec![s, 0.0],
        };
        assert_eq!(
            seen,
            vec![
                pair(1, 0, 1, [1, 0], 4.0),
                pair(0, 1, 1, [0, 1], 0.0),
                pair(1, 1, 2, [2, 1], 3.5),
            ]
        );
    }

    #[test]
    fn keys_alone_are_counted_per_pair() {
        let mut rows = Rows::new(&[]);
        rows.push(&[2, 0, 2, 2], &[5, 5, 5, 1], &[]).expect("push");
        let mut seen = Vec::new();
        let identity: Vec<u32> = (0..6).collect();
        rows.pairs(&identity, &identity, |p| -> Result<(), ()> {
            seen.push((p.patient, p.cell, p.rows));
            Ok(())
        })
        .expect("pairs");
        assert_eq!(seen, vec![(1, 2, 1), (5, 0, 1), (5, 2, 2)]);
    }
}
