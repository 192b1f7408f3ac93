//! Memory planning: buffer reuse after last use, in-place fused steps, hand-over of dead
//! buffers to fused steps, and that none of it changes a result.

use tapeflow::exec::{Plan, RunStats};
use tapeflow::ir::{parse, Graph};
use tapeflow::passes::{run_pipeline, PassConfig};
use tapeflow::{DType, Data, Tensor};

fn input(shape: &[usize], seed: u64) -> Data {
    Tensor::random_normal(shape, 0.0, 1.0, seed, DType::F32)
        .data()
        .unwrap()
        .clone()
}

fn run(g: &Graph, inputs: &[Data]) -> (Plan, Vec<Data>) {
    let plan = Plan::new(g.clone()).unwrap();
    let refs: Vec<&Data> = inputs.iter().collect();
    let out = plan.run(&refs, &mut RunStats::default()).unwrap();
    (plan, out)
}

fn optimized(text: &str) -> Graph {
    run_pipeline(&parse(text).unwrap(), &PassConfig::default())
        .unwrap()
        .0
}

#[test]
fn fused_step_overwrites_a_dying_operand() {
    let text = "graph(%0: f32[64,64]) {
  %1 = transpose[perm=[1,0]] %0 : f32[64,64]
  %2 = tanh %1 : f32[64,64]
  %3 = const 2.0 : f32[]
  %4 = mul %2, %3 : f32[64,64]
  %5 = add %4, %0 : f32[64,64]
  return %5
}";
    let g = optimized(text);
    let x = vec![input(&[64, 64], 1)];
    let (plan, got) = run(&g, &x);
    let (_, want) = run(&parse(text).unwrap(), &x);
    assert_eq!(plan.memory().in_place_steps(), 1, "{g}");
    assert_eq!(got, want);
    // the caller's input is never overwritten (it is not the plan's to reuse)
    assert_eq!(x[0], input(&[64, 64], 1));
    let (_, again) = run(&g, &x);
    assert_eq!(again, want);
    // one 16 KiB input, one slot for the transpose that the fused step overwrites
    assert_eq!(plan.peak_bytes(), 2 * 64 * 64 * 4 + 4); // and the constant 2.0
}

#[test]
fn a_buffer_shared_with_a_live_value_is_not_overwritten() {
    let text = "graph(%0: f32[8,8]) {
  %1 = matmul %0, %0 : f32[8,8]
  %2 = reshape %1 : f32[64]
  %3 = exp %1 : f32[8,8]
  %4 = neg %3 : f32[8,8]
  return %4, %2
}";
    let g = optimized(text);
    let x = vec![input(&[8, 8], 2)];
    let (plan, got) = run(&g, &x);
    let (_, want) = run(&parse(text).unwrap(), &x);
    assert_eq!(
        plan.memory().in_place_steps(),
        0,
        "the reshape of %1 is an output: {g}"
    );
    assert_eq!(got, want);
}

#[test]
fn dead_buffers_are_reused_and_handed_to_fused_steps() {
    let text = "graph(%0: f32[32,32]) {
  %1 = matmul %0, %0 : f32[32,32]
  %2 = sin %1 : f32[32,32]
  %3 = mul %2, %1 : f32[32,32]
  %4 = matmul %3, %0 : f32[32,32]
  %5 = matmul %4, %0 : f32[32,32]
  %6 = matmul %5, %0 : f32[32,32]
  %7 = mul %6, %6 : f32[32,32]
  %8 = sum[axes=[0,1]] %7 : f32[]
  return %8
}";
    let g = optimized(text);
    let x = vec![input(&[32, 32], 3)];
    let (plan, got) = run(&g, &x);
    let (unplanned, want) = run(&parse(text).unwrap(), &x);
    assert_eq!(got, want);
    let m = plan.memory();
    // a chain of matmuls needs two matrix buffers at a time, however long it is
    assert_eq!(
        m.slot_bytes.iter().filter(|&&b| b == 32 * 32 * 4).count(),
        2,
        "{m:?}"
    );
    assert!(plan.peak_bytes() < unplanned.total_bytes());
    println!(
        "peak {} B, total {} B, slots {:?}",
        plan.peak_bytes(),
        unplanned.total_bytes(),
        m.slot_bytes
    );
}
