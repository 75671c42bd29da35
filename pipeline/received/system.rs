//! The linear system a reader of several tables can solve, for one measure.
//!
//! Every published value of the measure (a cell, or a total over cells) is a ROW: the sum
//! over the patients in it of their contribution lies in `[lo, hi]` (`lo == hi` when
//! published exactly). A patient's SIGNATURE is the sorted list of rows they are in; the
//! patients with one signature form a GROUP, and the reader's unknowns are the groups'
//! totals. Patients in a hidden cell that no total covers are in no row of that table, so
//! the reader cannot tell them from patients outside its population: they share a group.
//! The reader is assumed to know which signatures occur (which combinations of cells are
//! non-empty, e.g. that nobody is female in one table and male in another), never how many
//! patients have each.
//!
//! For `patients` a group has one unknown (its count). For another measure, a group's
//! total in one table equals its total in another only when every patient of the group
//! contributes the same to both (the same statistic over the same rows): the group gets one
//! unknown per distinct contribution pattern, found by hashing the (patient, contribution)
//! pairs; two cells of ONE table are never one unknown (they hold different rows). An
//! unknown is `>= 0` for counts, and for a sum when every contribution in one of its
//! tables is `>= 0` (the reader may know the variable's domain).
//! This module only builds the system; `guard` decides. It holds interned patient numbers
//! only, never a pseudonym.

use std::hash::BuildHasher;

use rayon::slice::ParallelSliceMut;

use super::table::{Membership, PATIENTS, ReceivedTable};

/// One published value as a constraint.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Row {
    /// Index of its table in the check's input (0 is the new table).
    pub table: usize,
    /// Lowest possible true value.
    pub lo: f64,
    /// Highest.
    pub hi: f64,
    /// A published total over several cells (not one cell).
    pub total: bool,
}

/// Patients with the same signature.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    /// Sorted row ids.
    pub rows: Vec<u32>,
    /// Number of patients.
    pub n: u32,
    /// `vars[i]`: the unknown standing for this group in `rows[i]`.
    pub vars: Vec<u32>,
}

/// One unknown.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Var {
    /// Its group.
    pub group: u32,
    /// Its true value.
    pub truth: f64,
    /// Whether the reader knows it is `>= 0`.
    pub nonneg: bool,
}

/// The system for one measure.
#[derive(Debug)]
pub(crate) struct System {
    /// The measure.
    pub measure: String,
    /// Rows, grouped by table (input order).
    pub rows: Vec<Row>,
    /// The row range of each input table (empty when it has no row for this measure).
    pub table_rows: Vec<std::ops::Range<u32>>,
    /// Groups.
    pub groups: Vec<Group>,
    /// Unknowns.
    pub vars: Vec<Var>,
    /// Unknowns in each row.
    pub row_vars: Vec<Vec<u32>>,
}

/// A 64-bit mix (splitmix64's finaliser).
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl System {
    /// Build the system of `measure` over `tables` (table, membership, input index).
    /// Returns `None` when no table publishes the measure. `max_groups` bounds the work:
    /// more groups than that is `Err(groups)`.
    pub fn build(
        measure: &str,
        tables: &[(&ReceivedTable, &Membership)],
        max_groups: usize,
    ) -> Result<Option<System>, usize> {
        let is_patients = measure == PATIENTS;
        let mut rows = Vec::new();
        let mut table_rows = Vec::with_capacity(tables.len());
        // Per table: the measure's index and, per cell, the rows containing it.
        let mut cell_rows: Vec<Option<(usize, Vec<Vec<u32>>)>> = Vec::with_capacity(tables.len());
        let mut table_nonneg = Vec::with_capacity(tables.len());
        for (ti, (t, mem)) in tables.iter().enumerate() {
            let start = rows.len() as u32;
            let Some(mi) = t.measure(measure) else {
                table_rows.push(start..start);
                cell_rows.push(None);
                table_nonneg.push(false);
                continue;
            };
            let mut per_cell: Vec<Vec<u32>> = vec![Vec::new(); t.cells.len()];
            for (c, cell) in t.cells.iter().enumerate() {
                if let Some((lo, hi)) = cell.values[mi].bounds() {
                    per_cell[c].push(rows.len() as u32);
                    rows.push(Row {
                        table: ti,
                        lo,
                        hi,
                        total: false,
                    });
                }
            }
            for total in &t.totals {
                if let Some((lo, hi)) = total.values[mi].bounds() {
                    let r = rows.len() as u32;
                    rows.push(Row {
                        table: ti,
                        lo,
                        hi,
                        total: true,
                    });
                    for c in &total.cells {
                        let list = &mut per_cell[*c as usize];
                        if list.last() != Some(&r) {
                            list.push(r);
                        }
                    }
                }
            }
            table_rows.push(start..rows.len() as u32);
            table_nonneg.push(is_patients || mem.contribution[mi].iter().all(|v| *v >= 0.0));
            cell_rows.push(Some((mi, per_cell)));
        }
        if rows.is_empty() {
            return Ok(None);
        }
        // (patient, row, contribution), then one entry per (patient, row).
        let mut entries: Vec<(u32, u32, f64)> =
            Vec::with_capacity(tables.iter().map(|(_, m)| m.len()).sum());
        for ((_, mem), per) in tables.iter().zip(&cell_rows) {
            let Some((mi, per_cell)) = per else { continue };
            for i in 0..mem.len() {
                let contribution = if is_patients {
                    1.0
                } else {
                    mem.contribution[*mi][i]
                };
                for r in &per_cell[mem.cell[i] as usize] {
                    entries.push((mem.patient[i], *r, contribution));
                }
            }
        }
        // The whole entry is the key: entries of one (patient, row) are summed in one order.
        // (One table without totals comes in that order already.)
        let key = |e: &(u32, u32, f64)| (e.0, e.1, e.2.to_bits());
        if !entries.is_sorted_by_key(key) {
            entries.par_sort_unstable_by_key(key);
        }
        let entries_len = entries.len();
        // A patient in several cells of one row: once for patients, summed else.
        entries.dedup_by(|e, last| {
            let same = last.0 == e.0 && last.1 == e.1;
            if same && !is_patients {
                last.2 += e.2;
            }
            same
        });
        let merged = entries;
        // Groups, and per (group, row) the value and the contribution hash. Signatures
        // are looked up from one reused buffer; only a new group's is kept.
        let state = hashbrown::DefaultHashBuilder::default();
        let mut by_signature: hashbrown::HashTable<u32> = hashbrown::HashTable::new();
        let mut groups: Vec<Group> = Vec::new();
        let mut sums: Vec<Vec<(f64, u64)>> = Vec::new();
        let mut sig: Vec<u32> = Vec::new();
        let mut i = 0;
        while i < merged.len() {
            let p = merged[i].0;
            let mut j = i;
            while j < merged.len() && merged[j].0 == p {
                j += 1;
            }
            sig.clear();
            sig.extend(merged[i..j].iter().map(|e| e.1));
            let hash = state.hash_one(sig.as_slice());
            let g = match by_signature.find(hash, |g| groups[*g as usize].rows == sig) {
                Some(g) => *g as usize,
                None => {
                    if groups.len() >= max_groups {
                        return Err(groups.len() + 1);
                    }
                    let g = groups.len();
                    by_signature.insert_unique(hash, g as u32, |g| {
                        state.hash_one(groups[*g as usize].rows.as_slice())
                    });
                    sums.push(vec![(0.0, 0); sig.len()]);
                    groups.push(Group {
                        rows: sig.clone(),
                        n: 0,
                        vars: Vec::new(),
                    });
                    g
                }
            };
            groups[g].n += 1;
            for (k, e) in merged[i..j].iter().enumerate() {
                let s = &mut sums[g][k];
                s.0 += e.2;
                s.1 = s.1.wrapping_add(mix(mix(u64::from(p)) ^ e.2.to_bits()));
            }
            i = j;
        }
        drop(merged);
        // Unknowns: one per group and contribution pattern. For a measure other than
        // patients, two cells of one table hold different rows of the data, so the
        // group's totals in them are never one unknown (equal contributions there are a
        // coincidence the reader cannot know); a cell and a total over it, or cells of
        // two tables, may be. A group's patients are the same number in every cell.
        let mut vars: Vec<Var> = Vec::with_capacity(if is_patients {
            groups.len()
        } else {
            entries_len
        });
        let mut row_vars: Vec<Vec<u32>> = vec![Vec::new(); rows.len()];
        for (g, group) in groups.iter_mut().enumerate() {
            // (hash, unknown, tables whose cells it already stands in)
            let mut seen: Vec<(u64, u32, Vec<usize>)> = Vec::new();
            for (k, r) in group.rows.iter().enumerate() {
                let (value, hash) = sums[g][k];
                let row = rows[*r as usize];
                let nonneg = table_nonneg[row.table];
                let fits = |s: &(u64, u32, Vec<usize>)| {
                    s.0 == hash && (is_patients || row.total || !s.2.contains(&row.table))
                };
                let v = match seen.iter_mut().find(|s| fits(s)) {
                    Some(s) => {
                        let var = &mut vars[s.1 as usize];
                        var.nonneg |= nonneg;
                        if !row.total {
                            s.2.push(row.table);
                        }
                        s.1
                    }
                    None => {
                        let v = vars.len() as u32;
                        vars.push(Var {
                            group: g as u32,
                            truth: value,
                            nonneg,
                        });
                        seen.push((hash, v, if row.total { vec![] } else { vec![row.table] }));
                        v
                    }
                };
                group.vars.push(v);
                row_vars[*r as usize].push(v);
            }
        }
        Ok(Some(System {
            measure: measure.to_string(),
            rows,
            table_rows,
            groups,
            vars,
            row_vars,
        }))
    }

    /// The distinct unknowns of a group.
    pub fn group_vars(&self, g: u32) -> Vec<u32> {
        let mut v = self.groups[g as usize].vars.clone();
        v.sort_unstable();
        v.dedup();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::received::table::{Published, ReceivedCell};

    fn table(id: &str, measures: &[&str], cells: &[&[Published]]) -> ReceivedTable {
        ReceivedTable {
            format: 1,
            table: id.into(),
            threshold: 3,
            measures: measures.iter().map(|m| m.to_string()).collect(),
            cells: cells
                .iter()
                .enumerate()
                .map(|(i, v)| ReceivedCell {
                    key: vec![format!("k{i}")],
                    values: v.to_vec(),
                })
                .collect(),
            totals: vec![],
            sum_protection: None,
        }
    }

    #[test]
    fn hidden_cells_merge_with_the_outside_and_contributions_split_unknowns() {
        use Published::{Exact, Hidden};
        // Table a: cells 0 (exact) and 1 (hidden); table b: one exact cell.
        let a = table(
            "a",
            &["patients", "sum:x"],
            &[&[Exact(2.0), Exact(3.0)], &[Hidden, Hidden]],
        );
        let b = table("b", &["patients", "sum:x"], &[&[Exact(3.0), Exact(9.0)]]);
        let mut ma = Membership::new(2);
        ma.push(0, 0, &[1.0, 1.0]);
        ma.push(1, 0, &[1.0, 2.0]);
        ma.push(2, 1, &[1.0, 4.0]);
        let mut mb = Membership::new(2);
        mb.push(0, 0, &[1.0, 1.0]);
        mb.push(1, 0, &[1.0, 2.0]);
        mb.push(2, 0, &[1.0, 6.0]);
        let s = System::build("patients", &[(&a, &ma), (&b, &mb)], 100)
            .expect("budget")
            .expect("rows");
        // Patients 0 and 1 share a group (a0, b0); patient 2 is (b0) only.
        assert_eq!(s.groups.len(), 2);
        assert_eq!(s.vars.len(), 2);
        let s = System::build("sum:x", &[(&a, &ma), (&b, &mb)], 100)
            .expect("budget")
            .expect("rows");
        // Same groups; patient 2's contributions agree (only table b counts it).
        assert_eq!(s.groups.len(), 2);
        assert_eq!(s.vars.len(), 2);
        assert!(s.vars.iter().all(|v| v.nonneg));
        // Change patient 0's contribution in b: its group now has two unknowns.
        let mut mb2 = Membership::new(2);
        mb2.push(0, 0, &[1.0, 5.0]);
        mb2.push(1, 0, &[1.0, 2.0]);
        mb2.push(2, 0, &[1.0, 6.0]);
        let s = System::build("sum:x", &[(&a, &ma), (&b, &mb2)], 100)
            .expect("budget")
            .expect("rows");
        assert_eq!(s.vars.len(), 3);
        assert!(System::build("patients", &[(&a, &ma), (&b, &mb)], 1).is_err());
    }

    #[test]
    fn a_groups_rows_in_two_cells_of_one_table_are_two_unknowns_its_patients_one() {
        use Published::Exact;
        // Events by code: patient 0 has 2 events of each code, patient 1 has 2 of code 1.
        let t = table(
            "t",
            &["patients", "rows"],
            &[&[Exact(1.0), Exact(2.0)], &[Exact(2.0), Exact(4.0)]],
        );
        let mut m = Membership::new(2);
        m.push(0, 0, &[1.0, 2.0]);
        m.push(0, 1, &[1.0, 2.0]);
        m.push(1, 1, &[1.0, 2.0]);
        let p = System::build("patients", &[(&t, &m)], 100)
            .expect("budget")
            .expect("rows");
        assert_eq!((p.groups.len(), p.vars.len()), (2, 2));
        // Patient 0's equal event counts in two codes are a coincidence, not knowledge.
        let r = System::build("rows", &[(&t, &m)], 100)
            .expect("budget")
            .expect("rows");
        assert_eq!((r.groups.len(), r.vars.len()), (2, 3));
        // The same table twice: a cell of one and a cell of the other may be one unknown.
        let twice = System::build("rows", &[(&t, &m), (&t, &m)], 100)
            .expect("budget")
            .expect("rows");
        assert_eq!(twice.vars.len(), 3);
    }
}
