//! Byte strings (pseudonyms, key texts) to dense ids, each stored once in one arena.
//!
//! Owns [`Interner`]: the per-row interning of the job's aggregation and of the guard's
//! membership files. Used with patient data: it never puts a value in a `Debug` string
//! (sizes only), an error or a log.

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};
use rayon::slice::ParallelSliceMut;

/// Pseudonyms (or any byte strings) to dense ids, stored once in one arena.
#[derive(Default)]
pub struct Interner {
    arena: Vec<u8>,
    starts: Vec<usize>,
    table: HashTable<u32>,
    state: DefaultHashBuilder,
}

impl std::fmt::Debug for Interner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Interner({} values)", self.len())
    }
}

impl Interner {
    /// The id of `v`, a new one if it is new.
    pub fn intern(&mut self, v: &[u8]) -> u32 {
        let Interner {
            arena,
            starts,
            table,
            state,
        } = self;
        let hash = state.hash_one(v);
        let get = |id: u32| -> &[u8] { slice(arena, starts, id) };
        if let Some(id) = table.find(hash, |id| get(*id) == v) {
            return *id;
        }
        let id = starts.len() as u32;
        table.insert_unique(hash, id, |id| state.hash_one(slice(arena, starts, *id)));
        starts.push(arena.len());
        arena.extend_from_slice(v);
        id
    }

    /// The id of `v`, if it has one.
    pub fn find(&self, v: &[u8]) -> Option<u32> {
        let hash = self.state.hash_one(v);
        self.table.find(hash, |id| self.get(*id) == v).copied()
    }

    /// Whether no value has been interned.
    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// The value of `id`.
    pub fn get(&self, id: u32) -> &[u8] {
        slice(&self.arena, &self.starts, id)
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    /// The values in byte order: the ids by rank, and each id's rank (ids of equal
    /// values cannot exist).
    pub fn ranks(&self) -> (Vec<u32>, Vec<u32>) {
        // Sort by an 8-byte prefix first: ties on it (rare for pseudonyms) compare in full.
        let prefix = |v: &[u8]| {
            let mut p = [0u8; 8];
            let n = v.len().min(8);
            p[..n].copy_from_slice(&v[..n]);
            u64::from_be_bytes(p)
        };
        let mut order: Vec<(u64, u32)> = (0..self.len() as u32)
            .map(|id| (prefix(self.get(id)), id))
            .collect();
        order.par_sort_unstable_by(|a, b| {
            a.0.cmp(&b.0).then_with(|| self.get(a.1).cmp(self.get(b.1)))
        });
        let by_rank: Vec<u32> = order.into_iter().map(|(_, id)| id).collect();
        let mut rank = vec![0u32; by_rank.len()];
        for (r, id) in by_rank.iter().enumerate() {
            rank[*id as usize] = r as u32;
        }
        (by_rank, rank)
    }
}

fn slice<'a>(arena: &'a [u8], starts: &[usize], id: u32) -> &'a [u8] {
    let i = id as usize;
    let end = starts.get(i + 1).copied().unwrap_or(arena.len());
    &arena[starts[i]..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_intern_once_and_rank_in_byte_order() {
        let mut i = Interner::default();
        let ids: Vec<u32> = ["cc", "a", "cc", "abcdefgh2", "abcdefgh1", "a"]
            .iter()
            .map(|v| i.intern(v.as_bytes()))
            .collect();
        assert_eq!(ids, vec![0, 1, 0, 2, 3, 1]);
        assert_eq!(i.len(), 4);
        assert_eq!(i.get(2), b"abcdefgh2");
        assert_eq!((i.find(b"cc"), i.find(b"c")), (Some(0), None));
        // a < abcdefgh1 < abcdefgh2 < cc (the last two tie on their 8-byte prefix).
        assert_eq!(i.ranks(), (vec![1, 3, 2, 0], vec![3, 0, 2, 1]));
        assert_eq!(format!("{i:?}"), "Interner(4 values)");
    }
}
