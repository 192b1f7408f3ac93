//! The optimizer on a real training step: an MLP 784-64-64-10 with softmax
//! cross-entropy from logits and SGD, traced with `function` + `GradientTape`.
//!
//! Checked: the optimized forward+backward graph has at most half the nodes of the
//! unoptimized one, its planned peak memory is below the unoptimized sum of all buffers,
//! and training with it gives bit-identical losses and weights.

use tapeflow::passes::PassConfig;
use tapeflow::{function_with, DType, GradientTape, Result, Tensor, Variable};

const BATCH: usize = 32;
const LR: f32 = 0.1;

fn init(seed: u64) -> Vec<Variable> {
    let dims = [(784, 64), (64, 64), (64, 10)];
    let mut vars = Vec::new();
    for (i, &(din, dout)) in dims.iter().enumerate() {
        let std = (2.0 / din as f64).sqrt();
        vars.push(Variable::named(
            format!("w{}", i + 1),
            Tensor::random_normal(&[din, dout], 0.0, std, seed + i as u64, DType::F32),
        ));
        vars.push(Variable::named(
            format!("b{}", i + 1),
            Tensor::zeros(&[dout]),
        ));
    }
    vars
}

/// One SGD step on `mean(logsumexp(logits) - sum(one_hot(y) * logits))`.
fn train_step(vars: &[Variable], x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let tape = GradientTape::new();
    let loss = tape.record(|| {
        let mut h = x.clone();
        for (i, layer) in vars.chunks(2).enumerate() {
            h = h.matmul(&layer[0].read()) + layer[1].read();
            if i < 2 {
                h = h.relu();
            }
        }
        let logits = h;
        let picked = (y.one_hot(10, DType::F32) * &logits).sum(&[-1], false);
        (logits.logsumexp(-1, false) - picked).mean_all()
    });
    let grads = tape.gradient(&loss, &vars.to_vec())?;
    for (v, g) in vars.iter().zip(grads) {
        v.assign_sub(&(g.expect("every weight is connected") * LR));
    }
    Ok(loss)
}

fn batch(step: u64) -> (Tensor, Tensor) {
    let x = Tensor::random_uniform(&[BATCH, 784], 0.0, 1.0, 100 + step, DType::F32);
    let y: Vec<i64> = (0..BATCH as i64)
        .map(|i| (i * 7 + step as i64 * 3) % 10)
        .collect();
    (x, Tensor::from_vec(y, &[BATCH]).unwrap())
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_vec_f32()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

#[test]
fn mlp_train_step_is_optimized_and_exact() {
    let (va, vb) = (init(1), init(1));
    let (va2, vb2) = (va.clone(), vb.clone());
    let opt = function_with(
        move |x: &Tensor, y: &Tensor| train_step(&va2, x, y),
        PassConfig::default(),
    );
    let unopt = function_with(
        move |x: &Tensor, y: &Tensor| train_step(&vb2, x, y),
        PassConfig::unoptimized(),
    );

    let (x, y) = batch(0);
    let (co, cu) = (
        opt.concrete(&[&x, &y]).unwrap(),
        unopt.concrete(&[&x, &y]).unwrap(),
    );
    let (n_opt, n_unopt) = (co.graph().live_len(), cu.graph().live_len());
    assert_eq!(
        n_unopt,
        co.traced_graph().live_len(),
        "the unoptimized graph is the traced one"
    );
    let fused = co
        .graph()
        .node_ids()
        .iter()
        .filter(|&&n| matches!(co.graph().node(n).op, tapeflow::ops::Op::Fused(_)))
        .count();
    println!("MLP 784-64-64-10 train_step, batch {BATCH}:");
    println!("  nodes: {n_unopt} unoptimized -> {n_opt} optimized ({fused} fused)");
    println!(
        "  memory: optimized planned peak {} B ({} in place), unoptimized planned peak {} B, unoptimized sum of all buffers {} B",
        co.plan().peak_bytes(),
        co.plan().memory().in_place_steps(),
        cu.plan().peak_bytes(),
        cu.plan().total_bytes()
    );
    for s in co.pass_stats() {
        println!("  {s}");
    }
    println!("{}", co.text());
    assert!(
        2 * n_opt <= n_unopt,
        "{n_opt} optimized nodes is more than half of {n_unopt}"
    );
    assert!(co.plan().peak_bytes() < cu.plan().total_bytes());
    assert!(
        co.plan().peak_bytes() < cu.plan().peak_bytes(),
        "optimizing should lower the planned peak too"
    );
    assert!(
        co.plan().memory().in_place_steps() > 0,
        "some fused step should run in place"
    );

    for step in 0..3 {
        let (x, y) = batch(step);
        let (lo, lu) = (opt.call(&x, &y).unwrap(), unopt.call(&x, &y).unwrap());
        assert_eq!(
            bits(&lo),
            bits(&lu),
            "step {step}: loss {} vs {}",
            lo.to_scalar().unwrap(),
            lu.to_scalar().unwrap()
        );
        for (a, b) in va.iter().zip(&vb) {
            assert_eq!(
                bits(&a.value()),
                bits(&b.value()),
                "step {step}: {} differs",
                a.name()
            );
        }
    }
    assert_eq!((opt.trace_count(), unopt.trace_count()), (1, 1));
}
