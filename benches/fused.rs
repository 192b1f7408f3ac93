//! Criterion bench of the fused W5 loop (d²/dx² Σ sin(x)·e^(−x²) over 1e6 f32 points,
//! one fused elementwise region): the fused-loop interpreter against generated code.
//! `cargo bench --bench fused`.

use criterion::{criterion_group, criterion_main, Criterion};
use tapeflow::exec::codegen::{self, Codegen};
use tapeflow::exec::{Plan, RunStats};
use tapeflow::ir::parse;
use tapeflow::{DType, Tensor};

/// W5's second derivative as the optimizer fuses it (see `tests/codegen.rs`).
const W5: &str = "graph(%0: f32[1000000]) {
  %1 = fused %0 : f32[1000000]
    #0 = sin $0 : f32[1000000]
    #1 = mul $0, $0 : f32[1000000]
    #2 = neg #1 : f32[1000000]
    #3 = exp #2 : f32[1000000]
    #4 = mul #0, #3 : f32[1000000]
    #5 = neg #4 : f32[1000000]
    #6 = sub #5, #4 : f32[1000000]
    #7 = sub #6, #4 : f32[1000000]
    #8 = add $0, $0 : f32[1000000]
    #9 = neg #8 : f32[1000000]
    #10 = mul #9, #0 : f32[1000000]
    #11 = cos $0 : f32[1000000]
    #12 = add #10, #11 : f32[1000000]
    #13 = mul #12, #3 : f32[1000000]
    #14 = neg #13 : f32[1000000]
    #15 = mul #14, $0 : f32[1000000]
    #16 = add #7, #15 : f32[1000000]
    #17 = add #16, #15 : f32[1000000]
    #18 = mul #9, #3 : f32[1000000]
    #19 = mul #18, #11 : f32[1000000]
    #20 = add #17, #19 : f32[1000000]
  return %1
}";

fn fused(c: &mut Criterion) {
    let plan = Plan::new(parse(W5).unwrap()).unwrap();
    let x = Tensor::random_uniform(&[1_000_000], -3.0, 3.0, 5, DType::F32);
    let x = x.data().unwrap().clone();
    let mut g = c.benchmark_group("w5_fused_loop");
    g.sample_size(20);
    let mut run = || drop(plan.run(&[&x], &mut RunStats::default()).unwrap());
    plan.set_codegen(Codegen::Off);
    g.bench_function("interpreter", |b| b.iter(&mut run));
    plan.set_codegen(Codegen::Force);
    if plan.generated_steps().0 == 1 {
        g.bench_function("generated", |b| b.iter(&mut run));
    } else {
        eprintln!(
            "no generated kernel (no C compiler?): {:?}",
            codegen::stats()
        );
    }
    g.finish();
}

criterion_group!(benches, fused);
criterion_main!(benches);
