//! Collectives in one process (no `mpirun`): the `all_reduce` op over a world of one,
//! tensor fusion (`bucket_all_reduces`) keeping the bits, the dataflow schedule running
//! a plan with collectives, `Dataset::shard`, `fit(distributed)` in a world of one, and
//! `distributed::init`'s error outside `mpirun`. The multi-process behaviour is
//! `tests/distributed.rs` (feature `mpi`, under `mpirun`).

use tapeflow::data::Dataset;
use tapeflow::distributed::{self, DistributedGradientTape};
use tapeflow::exec::Schedule;
use tapeflow::nn::{Dense, FitOptions, Model, Sequential, SGD};
use tapeflow::ops::ReduceOp;
use tapeflow::passes::PassConfig;
use tapeflow::{function_with, DType, Tensor, Variable};

#[test]
fn all_reduce_is_the_identity_in_a_world_of_one() {
    assert_eq!((distributed::rank(), distributed::size()), (0, 1));
    assert!(!distributed::is_initialized());
    let x = Tensor::random_normal(&[3, 5], 0.0, 1.0, 1, DType::F32);
    for op in [ReduceOp::Sum, ReduceOp::Mean] {
        assert_eq!(
            x.all_reduce(op).to_vec_f32().unwrap(),
            x.to_vec_f32().unwrap()
        );
    }
    let x64 = x.cast(DType::F64);
    assert_eq!(
        x64.all_reduce(ReduceOp::Mean).to_vec_f64().unwrap(),
        x64.to_vec_f64().unwrap()
    );
    // a broadcast from a rank that does not exist is an error naming it
    let v = Variable::named("v", x.clone());
    let e = distributed::broadcast_variables(&[v], 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("root 1 is not a rank"), "{e}");
}

#[test]
fn init_outside_mpirun_is_an_error() {
    // this test binary is never started by mpirun
    let e = match distributed::init() {
        Ok(_) => panic!("init succeeded outside mpirun"),
        Err(e) => e.to_string(),
    };
    if cfg!(feature = "mpi") {
        assert!(e.contains("not started by mpirun"), "{e}");
    } else {
        assert!(e.contains("without the `mpi` feature"), "{e}");
    }
}

/// The all-reduce ops of a compiled function: the text shows them and the constant
/// folder leaves them (an all-reduce of a constant is not known to one rank).
#[test]
fn all_reduce_prints_parses_and_is_never_folded() {
    let f = function_with(
        |x: &Tensor| {
            Ok(&x.all_reduce(ReduceOp::Sum) + &Tensor::scalar(2.0).all_reduce(ReduceOp::Mean))
        },
        PassConfig::default(),
    );
    let x = Tensor::vec(&[1.0f32, 2.0]);
    assert_eq!(f.call(&x).unwrap().to_vec_f32().unwrap(), vec![3.0, 4.0]);
    let text = f.concrete(&[&x]).unwrap().text();
    assert_eq!(text.matches("all_reduce[op=").count(), 2, "{text}");
    let g = tapeflow::ir::parse(&text).unwrap();
    assert_eq!(tapeflow::ir::print(&g, false), text);
}

/// An MLP train step whose gradients are averaged over the ranks, compiled with the
/// given pass config; returns the losses of `steps` calls and the final parameters.
fn train(
    config: PassConfig,
    schedule: Option<Schedule>,
    steps: usize,
) -> (Vec<f32>, Vec<Vec<f32>>, String) {
    let shapes: [&[usize]; 6] = [&[8, 32], &[32], &[32, 16], &[16], &[16, 4], &[4]];
    let vars: Vec<Variable> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Variable::named(
                format!("p{i}"),
                Tensor::random_normal(s, 0.0, 0.3, i as u64, DType::F32),
            )
        })
        .collect();
    let vs = vars.clone();
    let step = function_with(
        move |x: &Tensor, y: &Tensor| {
            let tape = DistributedGradientTape::new();
            let loss = tape.record(|| {
                let h = (&x.matmul(&vs[0].read()) + &vs[1].read()).tanh();
                let h = (&h.matmul(&vs[2].read()) + &vs[3].read()).tanh();
                let out = &h.matmul(&vs[4].read()) + &vs[5].read();
                (&out - y).square().mean_all()
            });
            let grads = tape.gradient(&loss, &vs)?;
            for (v, g) in vs.iter().zip(&grads) {
                v.assign_sub(&(g.as_ref().unwrap() * 0.1));
            }
            Ok(loss)
        },
        config,
    );
    let x = Tensor::random_normal(&[16, 8], 0.0, 1.0, 100, DType::F32);
    let y = Tensor::random_normal(&[16, 4], 0.0, 1.0, 101, DType::F32);
    let c = step.concrete(&[&x, &y]).unwrap();
    if let Some(s) = schedule {
        c.plan().set_schedule(s);
    }
    let losses = (0..steps)
        .map(|_| step.call(&x, &y).unwrap().to_scalar_f32().unwrap())
        .collect();
    let params = vars
        .iter()
        .map(|v| v.value().to_vec_f32().unwrap())
        .collect();
    (losses, params, c.text())
}

#[test]
fn bucketing_packs_small_gradients_and_keeps_the_bits() {
    let plain = train(PassConfig::tuned().without("bucket_all_reduces"), None, 5);
    assert_eq!(
        plain.2.matches("all_reduce[op=mean]").count(),
        6,
        "{}",
        plain.2
    );
    // the default 1 MiB bucket holds all six gradients of this small MLP
    let one = train(PassConfig::tuned(), None, 5);
    assert_eq!(one.2.matches("all_reduce[op=mean]").count(), 1, "{}", one.2);
    // 1 KiB: the 8x32 and 32x16 weights (1 KiB and 2 KiB) stay alone, the rest pack
    let small = PassConfig {
        all_reduce_bucket_bytes: Some(1024),
        ..PassConfig::tuned()
    };
    let some = train(small, None, 5);
    let n = some.2.matches("all_reduce[op=mean]").count();
    assert!((2..6).contains(&n), "{n} all-reduces:\n{}", some.2);
    // an all-reduce is elementwise: packing changes no bit
    assert_eq!(plain.0, one.0);
    assert_eq!(plain.1, one.1);
    assert_eq!(plain.0, some.0);
    assert_eq!(plain.1, some.1);
    assert!(plain.0[4] < plain.0[0], "it trains: {:?}", plain.0);
}

#[test]
fn plans_with_collectives_run_as_a_dataflow_graph_with_the_same_bits() {
    let seq = train(PassConfig::tuned(), Some(Schedule::Sequential), 4);
    let par = train(PassConfig::tuned(), Some(Schedule::Parallel), 4);
    assert_eq!(seq.0, par.0);
    assert_eq!(seq.1, par.1);
}

#[test]
fn shards_are_equal_disjoint_and_cover_all_but_the_tail() {
    let mut seen = Vec::new();
    for k in 0..4 {
        // each rank builds its own pipeline: the same seed gives the same permutation
        let ds = Dataset::from_tensor_slices(Tensor::vec(
            &(0..23).map(|v| v as f32).collect::<Vec<_>>(),
        ))
        .unwrap()
        .shuffle(100, 9);
        let shard = ds.shard(4, k);
        assert_eq!(shard.cardinality(), Some(5));
        let v: Vec<f32> = shard.iter().map(|t| t.to_scalar_f32().unwrap()).collect();
        assert_eq!(v.len(), 5);
        seen.extend(v);
    }
    seen.sort_by(f32::total_cmp);
    seen.dedup();
    assert_eq!(seen.len(), 20, "disjoint shards of 20 of the 23: {seen:?}");
    let batches = Dataset::from_tensor_slices(Tensor::vec(&[0.0f32; 10]))
        .unwrap()
        .shard(3, 2)
        .batch(2);
    assert_eq!(batches.cardinality(), Some(2));
    assert_eq!(batches.iter().count(), 2);
}

#[test]
#[should_panic(expected = "index 3 is not below num_shards 3")]
fn a_shard_index_out_of_range_panics() {
    let _ = Dataset::from_tensor_slices(Tensor::vec(&[0.0f32; 4]))
        .unwrap()
        .shard(3, 3);
}

fn model() -> Model {
    Sequential::new()
        .add(Dense::new(8).relu())
        .add(Dense::new(3))
        .input_shape(&[5])
        .into()
}

#[test]
fn fit_distributed_in_a_world_of_one_trains_as_fit() {
    let x = Tensor::random_normal(&[64, 5], 0.0, 1.0, 3, DType::F32);
    let y = Tensor::random_normal(&[64, 3], 0.0, 1.0, 4, DType::F32);
    let init: Vec<Tensor> = model().variables().iter().map(|v| v.value()).collect();
    let run = |dist: bool| {
        let m = model();
        for (v, t) in m.variables().iter().zip(&init) {
            v.assign(t);
        }
        m.compile(tapeflow::nn::MeanSquaredError, SGD::new(0.05), &[])
            .unwrap();
        let h = m
            .fit(&x, &y, FitOptions::new(2, 16).verbose(0).distributed(dist))
            .unwrap();
        let params: Vec<Vec<f32>> = m
            .variables()
            .iter()
            .map(|v| v.value().to_vec_f32().unwrap())
            .collect();
        (h["loss"].to_vec(), params)
    };
    let (a, b) = (run(false), run(true));
    assert_eq!(a, b);
}
