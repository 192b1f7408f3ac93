//! Criterion benches: each workload's step eagerly and compiled, plus the one-shot
//! compile (trace + differentiate + optimize + plan) of W1 and W2.
//! `cargo bench --bench steps`; `examples/bench.rs` prints the summary table.

mod workloads;

use criterion::{criterion_group, criterion_main, Criterion};
use tapeflow::function;

fn steps(c: &mut Criterion) {
    for w in workloads::all() {
        let mut g = c.benchmark_group(w.name);
        g.sample_size(10);
        let step = w.closure();
        g.bench_function("eager", |b| b.iter(|| step(&w.x, &w.y).unwrap()));
        let compiled = function(w.closure());
        g.bench_function("compiled", |b| {
            b.iter(|| compiled.call(&w.x, &w.y).unwrap())
        });
        if w.name == "w1_mlp_small" || w.name == "w2_cnn" {
            g.bench_function("compile", |b| {
                b.iter(|| function(w.closure()).concrete(&[&w.x, &w.y]).unwrap())
            });
        }
        g.finish();
    }
}

criterion_group!(benches, steps);
criterion_main!(benches);
