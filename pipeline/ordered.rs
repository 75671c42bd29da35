//! Ordered parallel map: the one place where pipeline stages fan out to worker threads.
//!
//! Items are produced serially on the calling thread (reading a file is sequential),
//! processed on a rayon pool, and consumed on the calling thread in input order, with at
//! most `window` items in flight, so reading, processing and writing overlap while
//! memory stays bounded by the window. Outputs therefore never depend on the number of
//! threads or on scheduling. Danger: this module must never reorder, drop or duplicate
//! an item; a worker that panics becomes an error for its item, never a hang.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;

/// Run `work` over every item `next` yields, on `pool`, feeding results to `consume` in
/// the order the items were produced. Stops at the first error (from `next`, `work` or
/// `consume`, in input order) after the items in flight have finished. `panicked`
/// makes the error reported for an item whose worker panicked. A pool of one thread
/// runs everything on the calling thread, in order (`--threads 1` is single-threaded).
pub fn ordered_map<I, O, E>(
    pool: &rayon::ThreadPool,
    window: usize,
    mut next: impl FnMut() -> Result<Option<I>, E>,
    work: impl Fn(I) -> Result<O, E> + Sync,
    mut consume: impl FnMut(O) -> Result<(), E>,
    panicked: impl Fn() -> E,
) -> Result<(), E>
where
    I: Send,
    O: Send,
    E: Send,
{
    let window = window.max(1);
    if pool.current_num_threads() <= 1 {
        // One thread means one: no hand-off, everything in order on this thread.
        while let Some(item) = next()? {
            let r =
                catch_unwind(AssertUnwindSafe(|| work(item))).unwrap_or_else(|_| Err(panicked()));
            consume(r?)?;
        }
        return Ok(());
    }
    let (tx, rx) = mpsc::channel::<(usize, Option<Result<O, E>>)>();
    let work = &work;
    pool.in_place_scope(|scope| {
        let mut ready: BTreeMap<usize, Result<O, E>> = BTreeMap::new();
        let (mut produced, mut consumed) = (0usize, 0usize);
        let mut exhausted = false;
        loop {
            while !exhausted && produced - consumed < window {
                match next()? {
                    Some(item) => {
                        let tx = tx.clone();
                        let idx = produced;
                        scope.spawn(move |_| {
                            let r = catch_unwind(AssertUnwindSafe(|| work(item))).ok();
                            // The receiver outlives the scope; a send cannot fail.
                            let _ = tx.send((idx, r));
                        });
                        produced += 1;
                    }
                    None => exhausted = true,
                }
            }
            if consumed == produced {
                return Ok(());
            }
            while !ready.contains_key(&consumed) {
                let (idx, r) = rx.recv().map_err(|_| panicked())?;
                ready.insert(idx, r.unwrap_or_else(|| Err(panicked())));
            }
            while let Some(r) = ready.remove(&consumed) {
                consumed += 1;
                consume(r?)?;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .expect("pool")
    }

    #[test]
    fn keeps_input_order_whatever_the_threads() {
        for threads in [1, 2, 4] {
            let mut items = 0..200u64;
            let mut out = Vec::new();
            let r: Result<(), String> = ordered_map(
                &pool(threads),
                3,
                || Ok(items.next()),
                |i| {
                    // Uneven work so results finish out of order.
                    std::thread::sleep(std::time::Duration::from_micros((i * 7919) % 300));
                    Ok(i * 2)
                },
                |o| {
                    out.push(o);
                    Ok(())
                },
                || "panic".to_string(),
            );
            assert_eq!(r, Ok(()));
            assert_eq!(out, (0..200).map(|i| i * 2).collect::<Vec<_>>());
        }
    }

    #[test]
    fn first_error_in_input_order_wins_and_panics_are_errors() {
        let mut items = 0..50u64;
        let mut seen = Vec::new();
        let r: Result<(), String> = ordered_map(
            &pool(2),
            4,
            || Ok(items.next()),
            |i| match i {
                7 => Err("seven".to_string()),
                9 => panic!("nine"),
                _ => Ok(i),
            },
            |o| {
                seen.push(o);
                Ok(())
            },
            || "panic".to_string(),
        );
        assert_eq!(r, Err("seven".to_string()));
        assert_eq!(seen, (0..7).collect::<Vec<_>>());

        let mut items = 0..50u64;
        let r: Result<(), String> = ordered_map(
            &pool(2),
            4,
            || Ok(items.next()),
            |i| if i == 3 { panic!("three") } else { Ok(i) },
            |_| Ok(()),
            || "panic".to_string(),
        );
        assert_eq!(r, Err("panic".to_string()));
    }

    #[test]
    fn reader_and_consumer_errors_stop_the_run() {
        let mut items = 0..50u64;
        let r: Result<(), String> = ordered_map(
            &pool(2),
            2,
            || match items.next() {
                Some(10) => Err("read".to_string()),
                i => Ok(i),
            },
            Ok,
            |_| Ok(()),
            || "panic".to_string(),
        );
        assert_eq!(r, Err("read".to_string()));
        let mut items = 0..50u64;
        let r: Result<(), String> = ordered_map(
            &pool(2),
            2,
            || Ok(items.next()),
            Ok,
            |o| if o == 5 { Err("write".into()) } else { Ok(()) },
            || "panic".to_string(),
        );
        assert_eq!(r, Err("write".to_string()));
    }
}
