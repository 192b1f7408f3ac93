//! Table-driven gradient checks: every differentiable op, f64, broadcasting shapes,
//! reverse and forward mode, order 1 and 2, eager and traced, against central finite
//! differences. A meta-test fails when an op of the catalogue has no row.

mod common;

use common::{inputs, rows};
use std::collections::BTreeSet;
use tapeflow::autodiff::{check_gradients, jvp, GradCheck, Mode};
use tapeflow::ops::all_op_names;
use tapeflow::{function, DType, GradientTape, Tensor};

fn run_table(order: usize, mode: Mode, traced: bool) {
    let mut failures = Vec::new();
    for (k, r) in rows().iter().enumerate() {
        let xs = inputs(r, 10 + k as u64);
        let eps = r.eps.unwrap_or(if order == 1 { 1e-6 } else { 1e-5 });
        let cfg = GradCheck {
            order,
            mode,
            traced,
            eps,
            rtol: r.rtol.max(if order == 2 { 1e-4 } else { 0.0 }),
            atol: 1e-6,
            seed: k as u64,
        };
        if let Err(e) = check_gradients(r.f, &xs, &cfg) {
            failures.push(format!("{}: {e}", r.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
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
        let ts: Vec<Tensor> = xs
            .iter()
            .enumerate()
            .map(|(i, x)| Tensor::random_normal(x.shape(), 0.0, 1.0, 700 + i as u64, DType::F64))
            .collect();
        let tape = GradientTape::new().unconnected_zeros();
        let y = tape.record(|| {
            for x in &xs {
                tape.watch(x);
            }
            (r.f)(&xs)
        });
        let vjps = tape.gradient_with(&y, &xs, Some(&c)).unwrap();
        let lhs: f64 = vjps
            .iter()
            .zip(&ts)
            .map(|(g, t)| (g.as_ref().unwrap() * t).sum_all().to_scalar().unwrap())
            .sum();
        let (_, ty) = jvp(r.f, &xs, &ts).unwrap();
        let rhs = (ty * &c).sum_all().to_scalar().unwrap();
        let tol = if r.eps.is_some() { 1e-6 } else { 1e-9 };
        assert!(
            (lhs - rhs).abs() <= tol * (1.0 + lhs.abs()),
            "{}: <t,VJP(c)>={lhs} but <JVP(t),c>={rhs}",
            r.name
        );
    }
}

/// Ops with no gradient by design, each pinned by its own test below.
const NO_GRADIENT: [&str; 8] = [
    "input",
    "const",
    "read_var",
    "assign",
    "argmax",
    "stop_gradient",
    // values of shapes (no operands): traced only for symbolic lengths, see
    // tests/shape_polymorphism.rs
    "dim_value",
    "range",
];

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
                gs.iter()
                    .map(|g| g.as_ref().unwrap().sum_all())
                    .reduce(|a, b| &a + &b)
                    .unwrap()
            });
            Ok(t1
                .gradient(&g, args)?
                .into_iter()
                .map(|g| g.unwrap())
                .collect::<Vec<_>>())
        });
        let refs: Vec<&Tensor> = xs.iter().collect();
        let c = second.concrete(&refs).unwrap();
        let g = c.traced_graph();
        for n in g.node_ids() {
            covered.insert(g.node(n).op.name());
        }
    }
    let missing: Vec<&str> = all_op_names()
        .into_iter()
        .filter(|n| !covered.contains(n) && !NO_GRADIENT.contains(n))
        .collect();
    assert!(
        missing.is_empty(),
        "ops without a gradient-check row: {missing:?}"
    );
}

#[test]
fn stop_gradient_and_argmax_have_zero_gradient() {
    let x = Tensor::vec(&[1.0f64, 3.0, 2.0]);
    let tape = GradientTape::persistent().unconnected_zeros();
    let (a, b) = tape.record(|| {
        tape.watch(&x);
        (
            (&x * x.stop_gradient()).sum_all(),
            x.argmax(0).cast(DType::F64) * 1.0,
        )
    });
    // d/dx Σ x·sg(x) = sg(x) = x
    assert_eq!(
        tape.gradient(&a, &x).unwrap().to_vec_f64().unwrap(),
        vec![1.0, 3.0, 2.0]
    );
    assert_eq!(
        tape.gradient(&b, &x).unwrap().to_vec_f64().unwrap(),
        vec![0.0, 0.0, 0.0]
    );
    assert_eq!(x.argmax(0).to_vec_i64().unwrap(), vec![1]);
}
