//! Same inputs and seeds give bit-identical results whatever the number of threads and
//! the schedule: compiled train steps run in rayon pools of 1, 2 and 4 threads, with
//! their steps in order or as a parallel dataflow graph, end with the same bits.

mod common;

use common::{conv_train_step, fake_batch, Mlp};
use tapeflow::exec::Schedule;
use tapeflow::{function, Tensor};

const SCHEDULES: [Schedule; 2] = [Schedule::Sequential, Schedule::Parallel];

fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

/// Final weights of an MLP after 3 compiled SGD steps at batch 512 (big enough for the
/// parallel elementwise, reduction and GEMM paths).
fn mlp_weights(schedule: Schedule) -> Vec<Vec<f32>> {
    let mlp = Mlp::new(11);
    let (x, y) = fake_batch(512, 3);
    let vars = mlp.vars.clone();
    let step = function(move |x: &Tensor, y: &Tensor| mlp.train_step(x, y, 0.1));
    step.concrete(&[&x, &y])
        .unwrap()
        .plan()
        .set_schedule(schedule);
    for _ in 0..3 {
        step.call(&x, &y).unwrap();
    }
    vars.iter()
        .map(|v| v.value().to_vec_f32().unwrap())
        .collect()
}

/// Final filter of a conv + pool model after 2 compiled steps.
fn conv_weights(schedule: Schedule) -> Vec<f32> {
    let (step, x, w) = conv_train_step();
    step.concrete(&[&x]).unwrap().plan().set_schedule(schedule);
    for _ in 0..2 {
        step.call(&x).unwrap();
    }
    w.value().to_vec_f32().unwrap()
}

/// `f` run under every schedule in pools of 1, 2 and 4 threads.
fn every_way<R: Send>(f: impl Fn(Schedule) -> R + Sync) -> Vec<R> {
    SCHEDULES
        .iter()
        .flat_map(|&s| [1, 2, 4].map(|t| (s, t)))
        .map(|(s, t)| in_pool(t, || f(s)))
        .collect()
}

#[test]
fn compiled_mlp_steps_are_bit_identical_on_1_2_4_threads_and_both_schedules() {
    let runs = every_way(mlp_weights);
    assert_eq!(runs.len(), 6);
    assert!(runs.windows(2).all(|w| w[0] == w[1]));
}

/// Final weights of an MLP after 4 compiled SGD steps of one symbolic trace
/// (`f32[b,784]`), alternating batch sizes 512 and 96.
fn symbolic_mlp_weights(schedule: Schedule) -> Vec<Vec<f32>> {
    let mlp = Mlp::new(11);
    let vars = mlp.vars.clone();
    let b = tapeflow::Dim::sym("b");
    let step = tapeflow::function_with_signature(
        move |x: &Tensor, y: &Tensor| mlp.train_step(x, y, 0.1),
        &[
            tapeflow::TensorSpec::with_dims(&[b, 784.into()], tapeflow::DType::F32),
            tapeflow::TensorSpec::with_dims(&[b], tapeflow::DType::I64),
        ],
    );
    let batches = [fake_batch(512, 3), fake_batch(96, 4)];
    let c = step.concrete(&[&batches[0].0, &batches[0].1]).unwrap();
    for (x, y) in &batches {
        c.plan_for(&[x, y]).unwrap().set_schedule(schedule);
    }
    for _ in 0..2 {
        for (x, y) in &batches {
            step.call(x, y).unwrap();
        }
    }
    assert_eq!(step.trace_count(), 1);
    vars.iter()
        .map(|v| v.value().to_vec_f32().unwrap())
        .collect()
}

#[test]
fn symbolic_mlp_steps_at_two_batch_sizes_are_bit_identical_on_1_2_4_threads_and_both_schedules() {
    let runs = every_way(symbolic_mlp_weights);
    assert!(runs.windows(2).all(|w| w[0] == w[1]));
}

/// Final weights of an LSTM classifier after 2 compiled Adam steps (a `scan` forward,
/// a reverse `scan` backward), small, and big enough that both loops run as two
/// half-batch loops on more than one thread (`exec/row_split.rs`).
fn lstm_weights(schedule: Schedule) -> Vec<Vec<f32>> {
    let mut w = lstm_weights_of(common::lstm_train_step(), schedule);
    w.extend(lstm_weights_of(
        common::lstm_train_step_sized(128, 64, 3),
        schedule,
    ));
    w
}

fn lstm_weights_of<F>(s: common::LstmStep<F>, schedule: Schedule) -> Vec<Vec<f32>>
where
    F: Fn(&Tensor, &Tensor) -> tapeflow::Result<Tensor>,
{
    s.step
        .concrete(&[&s.x, &s.y])
        .unwrap()
        .plan()
        .set_schedule(schedule);
    for _ in 0..2 {
        s.step.call(&s.x, &s.y).unwrap();
    }
    s.vars
        .iter()
        .map(|v| v.value().to_vec_f32().unwrap())
        .collect()
}

#[test]
fn compiled_lstm_steps_are_bit_identical_on_1_2_4_threads_and_both_schedules() {
    let runs = every_way(lstm_weights);
    assert!(runs.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn compiled_conv_steps_are_bit_identical_on_1_2_4_threads_and_both_schedules() {
    let runs = every_way(conv_weights);
    assert!(runs.windows(2).all(|w| w[0] == w[1]));
}
