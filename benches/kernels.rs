//! Criterion benchmarks of the extract's stage kernels, in ns per row.
//!
//! `cargo bench --bench kernels`. Each kernel runs over a batch of 64k rows shaped like
//! generated clinical events (about 10 rows per patient); throughput is reported per
//! element, so criterion prints time per row. The HMAC line prints the physical limit
//! beside it: two SHA-256 compressions per pseudonym, about 64 ns per core at 2 GB/s.

// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use arrow::array::{StringArray, UInt64Array};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
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

fn kernels(c: &mut Criterion) {
    let nums = numbers(ROWS, 10);
    let distinct = numbers(ROWS, 1);
    let strings = StringArray::from_iter_values(nums.iter().map(|n| {
        let s = n.to_string();
        format!("{} {} {}", &s[..3], &s[3..6], &s[6..])
    }));
    let p = key().pseudonymiser();
    eprintln!(
        "HMAC-SHA256 physical limit: ~64 ns/row per core (two SHA-256 compressions at ~2 GB/s)"
    );

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
    let chunk = RawChunk {
        bytes: csv,
        first_line: 2,
    };
    let map: Vec<usize> = (0..events.columns.len()).collect();
    g.bench_function("parse_csv_chunk_events", |b| {
        b.iter(|| parse_csv_chunk(black_box(&chunk), &events, &map))
    });
    g.finish();
}

criterion_group!(benches, kernels);
criterion_main!(benches);
