//! Benchmark: `disclosure::check` plus `apply` on a 1000 x 1000 table (one million cells)
//! with about 10% small counts, under the opensafely preset (suppression, secondary
//! suppression, rounding). Run with `cargo bench --bench check`.
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;

use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use criterion::{Criterion, criterion_group, criterion_main};
use tre_pipeline::disclosure::{self, RoleSpec, Rules};

fn table(side: usize) -> RecordBatch {
    let mut a = Vec::with_capacity(side * side);
    let mut b = Vec::with_capacity(side * side);
    let mut n = Vec::with_capacity(side * side);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for i in 0..side {
        for j in 0..side {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            a.push(format!("a{i}"));
            b.push(format!("b{j}"));
            n.push(if x.is_multiple_of(10) {
                (x >> 8) as i64 % 8
            } else {
                8 + (x >> 8) as i64 % 500
            });
        }
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("a", DataType::Utf8, false),
        Field::new("b", DataType::Utf8, false),
        Field::new("n", DataType::Int64, false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(a)),
            Arc::new(StringArray::from(b)),
            Arc::new(Int64Array::from(n)),
        ],
    )
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let rules = Rules::preset("opensafely").unwrap();
    let t = table(1000);
    let mut g = c.benchmark_group("check");
    g.sample_size(10);
    g.bench_function("1m_cells_opensafely", |bch| {
        bch.iter(|| {
            let r =
                disclosure::check(std::slice::from_ref(&t), &RoleSpec::default(), &rules).unwrap();
            r.apply().unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
