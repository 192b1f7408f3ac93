//! Compile time against graph size: a chain of n alternating `sin`/`cos` ops on a small
//! vector, recorded on a tape and differentiated inside `function` (about 3.5·n nodes),
//! for n = 1k, 10k, 100k. Each size is measured whole (trace + gradient + optimize +
//! plan, what the first `call` costs) and by phase (the pass pipeline on the traced
//! graph; the plan of the optimized graph). The throughput columns (elements = ops of
//! the chain) stay about flat when compile time grows like n (or n·log n).
//! `cargo bench --bench compile_scaling`.

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use std::time::Duration;
use tapeflow::exec::Plan;
use tapeflow::passes::{run_pipeline, PassConfig};
use tapeflow::{function, GradientTape, Tensor};

const SIZES: [usize; 3] = [1_000, 10_000, 100_000];

fn chain(x: &Tensor, n: usize) -> Tensor {
    let mut y = x.clone();
    for i in 0..n {
        y = if i % 2 == 0 { y.sin() } else { y.cos() };
    }
    y
}

fn value_and_grad(x: &Tensor, n: usize) -> tapeflow::Result<(Tensor, Tensor)> {
    let tape = GradientTape::new();
    let y = tape.record(|| {
        tape.watch(x);
        chain(x, n)
    });
    let g = tape.gradient(&y, x)?;
    Ok((y, g))
}

fn compile_scaling(c: &mut Criterion) {
    let x = Tensor::from_vec(vec![0.5f32, 1.0, -1.5, 2.0], &[4]).expect("4 values");
    let mut g = c.benchmark_group("compile_scaling");
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(5));
    for n in SIZES {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("compile", n), &n, |b, &n| {
            b.iter(|| {
                function(move |x: &Tensor| value_and_grad(x, n))
                    .concrete(&[&x])
                    .expect("compiles")
            })
        });
        let c = function(move |x: &Tensor| value_and_grad(x, n))
            .concrete(&[&x])
            .expect("compiles");
        let traced = c.traced_graph().clone();
        g.bench_with_input(BenchmarkId::new("optimize", n), &traced, |b, traced| {
            b.iter(|| run_pipeline(traced, &PassConfig::tuned()).expect("optimizes"))
        });
        let optimized = c.graph().clone();
        g.bench_with_input(BenchmarkId::new("plan", n), &optimized, |b, optimized| {
            b.iter_batched(
                || optimized.clone(),
                |graph| Plan::new(graph).expect("plans"),
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, compile_scaling);
criterion_main!(benches);
