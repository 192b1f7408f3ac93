//! Table-driven gradient checks: every differentiable op, f64, broadcasting shapes,
//! reverse and forward mode, order 1 and 2, eager and traced, against central finite
//! differences. A meta-test fails when an op of the catalogue has no row.

use std::collections::BTreeSet;
use tapeflow::autodiff::{check_gradients, jvp, GradCheck, Mode};
use tapeflow::ops::all_op_names;
use tapeflow::{function, DType, GradientTape, Padding, Tensor};

#[derive(Clone, Copy)]
enum Dom {
    /// Standard normal.
    Any,
    /// 0.5 + |normal|: for log, sqrt, pow bases.
    Pos,
    /// ±(0.5 + |normal|): away from zero (abs, div).
    NonZero,
}

struct Row {
    name: &'static str,
    shapes: &'static [&'static [usize]],
    dom: Dom,
    f: fn(&[Tensor]) -> Tensor,
    rtol: f64,
    /// Finite-difference step override (rows that round through f32 need a big one).
    eps: Option<f64>,
}

const fn row(name: &'static str, shapes: &'static [&'static [usize]], dom: Dom, f: fn(&[Tensor]) -> Tensor) -> Row {
    Row { name, shapes, dom, f, rtol: 2e-5, eps: None }
}

fn idx(v: &[i64]) -> Tensor {
    Tensor::vec(v)
}

fn rows() -> Vec<Row> {
    use Dom::*;
    vec![
        row("neg", &[&[3, 4]], Any, |x| -&x[0]),
        row("exp", &[&[3, 4]], Any, |x| x[0].exp()),
        row("log", &[&[3, 4]], Pos, |x| x[0].log()),
        row("sin", &[&[3, 4]], Any, |x| x[0].sin()),
        row("cos", &[&[3, 4]], Any, |x| x[0].cos()),
        row("tanh", &[&[3, 4]], Any, |x| x[0].tanh()),
        row("sqrt", &[&[3, 4]], Pos, |x| x[0].sqrt()),
        row("abs", &[&[3, 4]], NonZero, |x| x[0].abs()),
        row("sign", &[&[3, 4]], NonZero, |x| x[0].sign() * &x[0]),
        row("sigmoid", &[&[3, 4]], Any, |x| x[0].sigmoid()),
        row("add", &[&[3, 4], &[4]], Any, |x| &x[0] + &x[1]),
        row("sub", &[&[3, 1], &[1, 4]], Any, |x| &x[0] - &x[1]),
        row("mul", &[&[2, 3, 4], &[3, 1]], Any, |x| &x[0] * &x[1]),
        row("div", &[&[3, 4], &[4]], NonZero, |x| &x[0] / &x[1]),
        row("pow", &[&[3, 4], &[4]], Pos, |x| x[0].pow(&x[1])),
        row("powf", &[&[5]], Pos, |x| x[0].powf(3.0)),
        row("maximum", &[&[3, 4], &[3, 4]], Any, |x| x[0].maximum(&x[1])),
        row("minimum", &[&[4], &[3, 4]], Any, |x| x[0].minimum(&x[1])),
        row("select", &[&[3, 4], &[3, 4], &[4]], Any, |x| Tensor::select(&x[0].gt(&x[1]), &x[1], &x[2])),
        row("compare", &[&[3, 4]], Any, |x| x[0].ge(&x[0].scalar_like(0.0)) * &x[0]),
        row("not_equal", &[&[3, 4]], Any, |x| x[0].ne(&x[0].scalar_like(0.0)) * x[0].exp()),
        row("sum", &[&[3, 4, 2]], Any, |x| x[0].sum(&[1], true)),
        row("sum_all", &[&[3, 4]], Any, |x| x[0].sum_all()),
        row("mean", &[&[3, 4]], Any, |x| x[0].mean(&[0], false)),
        row("max", &[&[3, 5]], Any, |x| x[0].max(&[1], false)),
        row("min", &[&[3, 5]], Any, |x| x[0].min(&[0], true)),
        row("reshape", &[&[2, 6]], Any, |x| x[0].reshape(&[3, 4]) * Tensor::arange(0, 4, DType::F64)),
        row("broadcast", &[&[1, 4]], Any, |x| x[0].broadcast_to(&[3, 4]) * Tensor::arange(0, 12, DType::F64).reshape(&[3, 4])),
        row("transpose", &[&[2, 3, 4]], Any, |x| x[0].transpose(&[2, 0, 1]).sin()),
        row("concat", &[&[2, 3], &[4, 3]], Any, |x| Tensor::concat(&[&x[0], &x[1]], 0).exp()),
        row("slice", &[&[3, 5]], Any, |x| x[0].slice_axis(1, 1, 4).exp()),
        row("pad", &[&[3, 2]], Any, |x| x[0].pad_axis(1, 1, 2).exp()),
        Row { rtol: 1e-4, eps: Some(1e-2), ..row("cast", &[&[3, 4]], Any, |x| x[0].cast(DType::F32).cast(DType::F64) * 2.0) },
        row("gather", &[&[5, 3]], Any, |x| x[0].gather(&idx(&[4, 0, 0, 2]), 0).exp()),
        row("gather_axis1", &[&[2, 4]], Any, |x| x[0].gather(&idx(&[3, 1, 3]), 1).sin()),
        row("scatter_add", &[&[4, 3]], Any, |x| x[0].scatter_add(&idx(&[1, 4, 1, 0]), 0, 5).exp()),
        row("one_hot", &[&[3, 4]], Any, |x| idx(&[2, 0, 3]).one_hot(4, DType::F64) * x[0].exp()),
        row("matmul", &[&[3, 4], &[4, 2]], Any, |x| x[0].matmul(&x[1])),
        row("matmul_ta", &[&[4, 3], &[4, 2]], Any, |x| x[0].matmul_t(&x[1], true, false)),
        row("matmul_tb", &[&[3, 4], &[2, 4]], Any, |x| x[0].matmul_t(&x[1], false, true)),
        row("matmul_tab", &[&[4, 3], &[2, 4]], Any, |x| x[0].matmul_t(&x[1], true, true)),
        row("matmul_batched", &[&[2, 3, 4], &[2, 4, 5]], Any, |x| x[0].matmul(&x[1])),
        row("matmul_bcast", &[&[2, 3, 4], &[4, 5]], Any, |x| x[0].matmul(&x[1])),
        row("matmul_square", &[&[3, 3]], Any, |x| x[0].matmul(&x[0]).tanh()),
        row("conv2d_valid", &[&[2, 5, 5, 2], &[3, 3, 2, 3]], Any, |x| x[0].conv2d(&x[1], (1, 1), Padding::Valid).tanh()),
        row("conv2d_same_s2", &[&[1, 6, 5, 2], &[2, 3, 2, 2]], Any, |x| x[0].conv2d(&x[1], (2, 2), Padding::Same).tanh()),
        row("max_pool2d", &[&[2, 4, 4, 3]], Any, |x| x[0].max_pool2d((2, 2), (2, 2), Padding::Valid).sin()),
        row("max_pool2d_same", &[&[1, 5, 5, 2]], Any, |x| x[0].max_pool2d((3, 3), (2, 2), Padding::Same).sin()),
        row("softmax", &[&[3, 5]], Any, |x| x[0].softmax(-1)),
        row("log_softmax", &[&[3, 5]], Any, |x| x[0].log_softmax(-1)),
        row("logsumexp", &[&[3, 5]], Any, |x| x[0].logsumexp(1, false)),
        row("relu", &[&[3, 4]], NonZero, |x| x[0].relu()),
        row("square", &[&[3, 4]], Any, |x| x[0].square()),
    ]
}

fn inputs(r: &Row, seed: u64) -> Vec<Tensor> {
    r.shapes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let n = Tensor::random_normal(s, 0.0, 1.0, seed * 31 + i as u64, DType::F64);
            match r.dom {
                Dom::Any => n,
                Dom::Pos => n.abs() + 0.5,
                Dom::NonZero => n.sign() * (n.abs() + 0.5),
            }
        })
        .collect()
}

fn run_table(order: usize, mode: Mode, traced: bool) {
    let mut failures = Vec::new();
    for (k, r) in rows().iter().enumerate() {
        let xs = inputs(r, 10 + k as u64);
        let eps = r.eps.unwrap_or(if order == 1 { 1e-6 } else { 1e-5 });
        let cfg = GradCheck { order, mode, traced, eps, rtol: r.rtol.max(if order == 2 { 1e-4 } else { 0.0 }), atol: 1e-6, seed: k as u64 };
        if let Err(e) = check_gradients(r.f, &xs, &cfg) {
            failures.push(format!("{}: {e}", r.name));
        }
    }
    assert!(failures.is_empty(), "{} rows failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn reverse_order1_eager() {
    run_table(1, Mode::Reverse, false);
}

#[test]
fn reverse_order2_eager() {
    run_table(2, Mode::Reverse, false);
}

#[test]
fn forward_order1_eager() {
    run_table(1, Mode::Forward, false);
}

#[test]
fn forward_order2_eager() {
    run_table(2, Mode::Forward, false);
}

#[test]
fn reverse_order1_traced() {
    run_table(1, Mode::Reverse, true);
}

#[test]
fn reverse_order2_traced() {
    run_table(2, Mode::Reverse, true);
}

#[test]
fn forward_order1_traced() {
    run_table(1, Mode::Forward, true);
}

/// <t, VJP(c)> = <JVP(t), c> for every row: reverse and forward mode agree.
#[test]
fn vjp_jvp_transpose_identity() {
    for (k, r) in rows().iter().enumerate() {
        let xs = inputs(r, 50 + k as u64);
        let y = (r.f)(&xs);
        let c = Tensor::random_normal(y.shape(), 0.0, 1.0, 900 + k as u64, DType::F64);
        let ts: Vec<Tensor> = xs.iter().enumerate().map(|(i, x)| Tensor::random_normal(x.shape(), 0.0, 1.0, 700 + i as u64, DType::F64)).collect();
        let tape = GradientTape::new().unconnected_zeros();
        let y = tape.record(|| {
            for x in &xs {
                tape.watch(x);
            }
            (r.f)(&xs)
        });
        let vjps = tape.gradient_with(&y, &xs, Some(&c)).unwrap();
        let lhs: f64 = vjps.iter().zip(&ts).map(|(g, t)| (g.as_ref().unwrap() * t).sum_all().to_scalar().unwrap()).sum();
        let (_, ty) = jvp(r.f, &xs, &ts).unwrap();
        let rhs = (ty * &c).sum_all().to_scalar().unwrap();
        let tol = if r.eps.is_some() { 1e-6 } else { 1e-9 };
        assert!((lhs - rhs).abs() <= tol * (1.0 + lhs.abs()), "{}: <t,VJP(c)>={lhs} but <JVP(t),c>={rhs}", r.name);
    }
}

/// Ops with no gradient by design, each pinned by its own test below.
const NO_GRADIENT: [&str; 6] = ["input", "const", "read_var", "assign", "argmax", "stop_gradient"];

#[test]
fn every_op_has_a_gradient_row() {
    let mut covered = BTreeSet::new();
    for r in rows() {
        let xs = inputs(&r, 1);
        let f = r.f;
        // the order-2 graph contains each op's backward ops too (conv backprops, pool grads, pad, scatter_add)
        let second = function(move |args: &[Tensor]| {
            let t1 = GradientTape::new().unconnected_zeros();
            let t2 = GradientTape::new().unconnected_zeros();
            let g = t1.record(|| {
                for a in args {
                    t1.watch(a);
                }
                let y = t2.record(|| {
                    for a in args {
                        t2.watch(a);
                    }
                    f(args).sum_all()
                });
                let gs = t2.gradient(&y, args).unwrap();
                gs.iter().map(|g| g.as_ref().unwrap().sum_all()).reduce(|a, b| &a + &b).unwrap()
            });
            Ok(t1.gradient(&g, args)?.into_iter().map(|g| g.unwrap()).collect::<Vec<_>>())
        });
        let refs: Vec<&Tensor> = xs.iter().collect();
        let c = second.concrete(&refs).unwrap();
        let g = c.traced_graph();
        for n in g.node_ids() {
            covered.insert(g.node(n).op.name());
        }
    }
    let missing: Vec<&str> =
        all_op_names().into_iter().filter(|n| !covered.contains(n) && !NO_GRADIENT.contains(n)).collect();
    assert!(missing.is_empty(), "ops without a gradient-check row: {missing:?}");
}

#[test]
fn stop_gradient_and_argmax_have_zero_gradient() {
    let x = Tensor::vec(&[1.0f64, 3.0, 2.0]);
    let tape = GradientTape::persistent().unconnected_zeros();
    let (a, b) = tape.record(|| {
        tape.watch(&x);
        ((&x * x.stop_gradient()).sum_all(), x.argmax(0).cast(DType::F64) * 1.0)
    });
    // d/dx Σ x·sg(x) = sg(x) = x
    assert_eq!(tape.gradient(&a, &x).unwrap().to_vec_f64().unwrap(), vec![1.0, 3.0, 2.0]);
    assert_eq!(tape.gradient(&b, &x).unwrap().to_vec_f64().unwrap(), vec![0.0, 0.0, 0.0]);
    assert_eq!(x.argmax(0).to_vec_i64().unwrap(), vec![1]);
}
