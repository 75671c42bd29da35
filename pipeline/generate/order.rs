//! Event order: a block of chunks merged into one, each table's rows sorted by date.
//!
//! Owns [`RowOrder::Event`](super::RowOrder::Event): the rows of every table but
//! `patients` are sorted by their main date (ties keep patient order) across a fixed
//! block of chunks, so patients interleave as in a GP system's date-ordered export while
//! memory stays bounded by the block. The opt-out list keeps patient order, so it is the
//! same file in either order.

use super::GenerateError;
use super::model::ChunkOut;
use super::sink::Sink;

/// `(part, row)` pairs of every kept row, sorted by `(key, part, row)`; parts without keys
/// keep their rows in order, part after part.
fn date_order(keys: &[&[i32]], rows: &[u64]) -> Vec<(usize, usize)> {
    let mut all: Vec<(i32, usize, usize)> = Vec::with_capacity(rows.iter().sum::<u64>() as usize);
    for (p, &n) in rows.iter().enumerate() {
        let k = keys.get(p).copied().unwrap_or(&[]);
        all.extend((0..n as usize).map(|r| (k.get(r).copied().unwrap_or(0), p, r)));
    }
    // (key, part, row) is unique, so the order is total and the same on every run.
    all.sort_unstable();
    all.into_iter().map(|(_, p, r)| (p, r)).collect()
}

/// Merge a block of chunks (in chunk order) into one, rows in event order.
pub(super) fn merge_block<S: Sink>(
    outs: Vec<ChunkOut<S>>,
    tables: &[String],
) -> Result<ChunkOut<S>, GenerateError> {
    let n_tables = tables.len();
    let mut merged = ChunkOut {
        sinks: Vec::with_capacity(n_tables),
        stats: vec![Default::default(); n_tables],
        opt_out_lines: Vec::new(),
        opt_outs: Default::default(),
        keys: vec![Vec::new(); n_tables],
    };
    let mut parts: Vec<Vec<S>> = (0..n_tables).map(|_| Vec::new()).collect();
    let mut keys: Vec<Vec<Vec<i32>>> = vec![Vec::new(); n_tables];
    for chunk in outs {
        merged.opt_out_lines.extend_from_slice(&chunk.opt_out_lines);
        merged.opt_outs.add(&chunk.opt_outs);
        let tables = chunk.sinks.into_iter().zip(chunk.stats).zip(chunk.keys);
        for (t, ((sink, st), k)) in tables.enumerate() {
            merged.stats[t].add(&st);
            parts[t].push(sink);
            keys[t].push(k);
        }
    }
    for ((table, parts), keys) in tables.iter().zip(parts).zip(keys) {
        let rows: Vec<u64> = parts.iter().map(Sink::rows).collect();
        let key_refs: Vec<&[i32]> = keys.iter().map(Vec::as_slice).collect();
        let order = date_order(&key_refs, &rows);
        let sink = S::interleave(parts, &order, table).map_err(|source| GenerateError::Arrow {
            table: table.clone(),
            source,
        })?;
        merged.sinks.push(sink);
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_sort_by_date_then_patient_order() {
        let a = [5, 1, 9];
        let b = [1, 5];
        let order = date_order(&[&a, &b], &[3, 2]);
        assert_eq!(order, vec![(0, 1), (1, 0), (0, 0), (1, 1), (0, 2)]);
    }

    #[test]
    fn parts_without_keys_keep_their_order() {
        let order = date_order(&[&[], &[]], &[2, 1]);
        assert_eq!(order, vec![(0, 0), (0, 1), (1, 0)]);
    }
}
