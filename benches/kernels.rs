//! Criterion benchmarks of the extract's stage kernels, in ns per row.
//!
//! `cargo bench --bench kernels`. Each kernel runs over a batch of 64k rows shaped like
//! generated clinical events (about 10 rows per patient); throughput is reported per
//! element, so criterion prints time per row. The HMAC group puts side by side, per
//! distinct NHS number: the old kernel (the `hmac` crate: clone the keyed state, update,
//! finalise, then hex); the new one (`tre_pipeline::hmac_sha256`: two compressions from
//! precomputed mid-states, hex by table) on each backend this CPU can run, in lanes of
//! sixteen as the extract calls it, and one number at a time; and the one-stream limit,
//! two bare `sha2::compress256` calls (SHA-NI where the CPU has it) per number, which the
//! lanes beat by running several numbers at once.

// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use arrow::array::{StringArray, UInt64Array};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hmac::{Hmac, Mac};
use sha2::digest::generic_array::GenericArray;
use tre_pipeline::hmac_sha256::{Backend, HmacKernel, LANES, ascii_digits};
use tre_pipeline::ingest::{RawChunk, parse_csv_chunk};
use tre_pipeline::nhs_number::{NhsNumber, validate_array};
use tre_pipeline::optout::OptOutSet;
use tre_pipeline::pseudonym::ProjectKey;
use tre_pipeline::schema::SchemaSet;

const ROWS: usize = 65_536;

fn numbers(rows: usize, per_patient: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(rows);
    let mut n = 9_990_000_000u64;
    while out.len() < rows {
        n += 1;
        if let Some(v) = NhsNumber::from_u64(n) {
            for _ in 0..per_patient {
                out.push(v.get());
            }
        }
    }
    out.truncate(rows);
    out
}

fn key() -> ProjectKey {
    let mut b = [0u8; 32];
    for (i, x) in b.iter_mut().enumerate() {
        *x = (i as u8).wrapping_mul(37).wrapping_add(11);
    }
    ProjectKey::from_bytes(b)
}

fn key_bytes() -> [u8; 32] {
    std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11))
}

/// Old, new and the limit, per distinct number, hex included where the kernel makes it.
fn hmac(c: &mut Criterion) {
    let distinct = numbers(ROWS, 1);
    let key = key_bytes();
    let keyed = Hmac::<sha2::Sha256>::new_from_slice(&key).expect("any key length");
    let kernel = HmacKernel::new(&key);
    eprintln!(
        "kernels: HmacKernel::new picks {:?} on this CPU",
        kernel.backend()
    );
    let mut out = vec![0u8; ROWS * 64];
    let mut g = c.benchmark_group("hmac_per_distinct_number");
    g.throughput(Throughput::Elements(ROWS as u64));
    g.bench_function("old_hmac_crate_and_hex", |b| {
        b.iter(|| {
            for (n, slot) in distinct.iter().zip(out.chunks_exact_mut(64)) {
                let mut mac = keyed.clone();
                mac.update(&ascii_digits(black_box(*n)));
                tre_pipeline::digest::hex_into(&mac.finalize().into_bytes(), slot);
            }
        })
    });
    for backend in [Backend::Avx512, Backend::ShaNi, Backend::Portable] {
        let Some(kernel) = HmacKernel::with_backend(&key, backend) else {
            eprintln!("kernels: this CPU cannot run the {backend:?} backend; not measured");
            continue;
        };
        let name = format!("new_{backend:?}_lanes_of_{LANES}_two_compressions_and_hex");
        g.bench_function(name, |b| {
            b.iter(|| {
                for (ns, slots) in distinct
                    .chunks_exact(LANES)
                    .zip(out.chunks_exact_mut(64 * LANES))
                {
                    let messages: [[u8; 10]; LANES] =
                        std::array::from_fn(|i| ascii_digits(black_box(ns[i])));
                    let mut lanes = [[0u8; 64]; LANES];
                    kernel.hex_lanes(&messages, &mut lanes);
                    for (slot, lane) in slots.chunks_exact_mut(64).zip(&lanes) {
                        slot.copy_from_slice(lane);
                    }
                }
            })
        });
    }
    g.bench_function("new_one_at_a_time_two_compressions_and_hex", |b| {
        b.iter(|| {
            for (n, slot) in distinct.iter().zip(out.chunks_exact_mut(64)) {
                let slot: &mut [u8; 64] = slot.try_into().expect("64 bytes");
                kernel.hex(&ascii_digits(black_box(*n)), slot);
            }
        })
    });
    let block = GenericArray::from([0x5au8; 64]);
    g.bench_function("limit_two_bare_compressions", |b| {
        b.iter(|| {
            let mut acc = 0u32;
            for n in &distinct {
                let mut state = [black_box(*n as u32); 8];
                sha2::compress256(&mut state, std::slice::from_ref(&block));
                sha2::compress256(&mut state, std::slice::from_ref(&block));
                acc ^= state[0];
            }
            acc
        })
    });
    g.finish();
}

fn kernels(c: &mut Criterion) {
    let nums = numbers(ROWS, 10);
    let distinct = numbers(ROWS, 1);
    let strings = StringArray::from_iter_values(nums.iter().map(|n| {
        let s = n.to_string();
        format!("{} {} {}", &s[..3], &s[3..6], &s[6..])
    }));
    let p = key().pseudonymiser();

    let mut g = c.benchmark_group("kernels");
    g.throughput(Throughput::Elements(ROWS as u64));
    g.bench_function("nhs_number_validate", |b| {
        b.iter(|| validate_array(black_box(&strings)))
    });
    let clustered = UInt64Array::from(nums.clone());
    let unique = UInt64Array::from(distinct.clone());
    g.bench_function("pseudonymise_hex_10_rows_per_patient", |b| {
        b.iter(|| p.hex_array(black_box(&clustered)))
    });
    g.bench_function("pseudonymise_hex_distinct", |b| {
        b.iter(|| p.hex_array(black_box(&unique)))
    });
    let set = OptOutSet::from_numbers(distinct.iter().step_by(20).copied().collect());
    g.bench_function("opt_out_mask", |b| {
        b.iter(|| set.member_mask(black_box(&clustered)))
    });

    let schemas = SchemaSet::builtin();
    let events = Arc::new(schemas.get("clinical_events").expect("table").clone());
    let mut csv = Vec::new();
    for (i, n) in nums.iter().enumerate() {
        csv.extend_from_slice(
            format!(
                "{n},2020-0{}-1{},271649006,{}.5,mmHg\n",
                i % 9 + 1,
                i % 10,
                100 + i % 60
            )
            .as_bytes(),
        );
    }
    let chunk = RawChunk::new(csv, 2);
    let map: Vec<usize> = (0..events.columns.len()).collect();
    g.bench_function("parse_csv_chunk_events", |b| {
        b.iter(|| parse_csv_chunk(black_box(&chunk), &events, &map))
    });
    g.finish();
}

criterion_group!(benches, hmac, kernels);
criterion_main!(benches);
