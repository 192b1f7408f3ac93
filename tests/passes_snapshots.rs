//! The optimized form of the backward graphs that `tests/ir.rs` snapshots as traced
//! (those unoptimized snapshots stay): the same programs, the graph that actually runs,
//! and a check that it computes exactly what the traced graph computes.

mod common;

use common::{fake_batch, Mlp};
use tapeflow::passes::PassConfig;
use tapeflow::trace::ConcreteFunction;
use tapeflow::{function_with, DType, GradientTape, Padding, Tensor, Variable};

type Program = Box<dyn Fn(&[Tensor]) -> tapeflow::Result<Vec<Tensor>>>;

/// Traces `make()` optimized and unoptimized, checks both compute the same bits on
/// `args` (each with its own variables), and snapshots the optimized text.
fn check(
    name: &str,
    make: impl Fn() -> Program,
    args: &[&Tensor],
) -> std::sync::Arc<ConcreteFunction> {
    let c = function_with(make(), PassConfig::default())
        .concrete(args)
        .unwrap();
    let u = function_with(make(), PassConfig::unoptimized())
        .concrete(args)
        .unwrap();
    let owned: Vec<Tensor> = args.iter().map(|&t| t.clone()).collect();
    let (a, b) = (c.run(&owned).unwrap(), u.run(&owned).unwrap());
    for (x, y) in a.iter().zip(&b) {
        let bits = |t: &Tensor| {
            t.to_vec_f64()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            bits(x),
            bits(y),
            "{name}: the optimized graph computes other values"
        );
    }
    assert!(
        c.graph().live_len() < u.graph().live_len(),
        "{name}: nothing was optimized"
    );
    let mut s = insta::Settings::clone_current();
    s.set_snapshot_path("../snapshots");
    s.bind(|| insta::assert_snapshot!(name, c.text()));
    c
}

#[test]
fn optimized_backward_square() {
    let x = Tensor::scalar(3.0);
    let make = || -> Program {
        Box::new(|t: &[Tensor]| {
            let tape = GradientTape::new();
            let y = tape.record(|| {
                tape.watch(&t[0]);
                &t[0] * &t[0]
            });
            Ok(vec![tape.gradient(&y, &t[0])?])
        })
    };
    check("optimized_backward_square", make, &[&x]);
}

#[test]
fn optimized_backward_nested_cube() {
    let x = Tensor::scalar(2.0);
    let make = || -> Program {
        Box::new(|t: &[Tensor]| {
            let x = &t[0];
            let outer = GradientTape::new();
            let dy = outer.record(|| {
                outer.watch(x);
                let inner = GradientTape::new();
                let y = inner.record(|| {
                    inner.watch(x);
                    x * x * x
                });
                inner.gradient(&y, x)
            })?;
            Ok(vec![outer.gradient(&dy, x)?])
        })
    };
    let c = check("optimized_backward_nested_cube", make, &[&x]);
    assert_eq!(c.run(&[x]).unwrap()[0].to_scalar().unwrap(), 12.0);
}

#[test]
fn optimized_backward_linear_regression() {
    let x = Tensor::random_normal(&[100], 0.0, 1.0, 1, DType::F32);
    let y = &x * 3.0 + 2.0;
    let make = || -> Program {
        let (a, b) = (
            Variable::named("a", Tensor::scalar(0.5)),
            Variable::named("b", Tensor::scalar(0.1)),
        );
        Box::new(move |t: &[Tensor]| {
            let tape = GradientTape::new();
            let loss = tape.record(|| (&a.read() * &t[0] + &b.read() - &t[1]).square().sum_all());
            let g = tape.gradient(&loss, &[a.clone(), b.clone()])?;
            Ok(g.into_iter().map(|g| g.unwrap()).collect())
        })
    };
    check("optimized_backward_linear_regression", make, &[&x, &y]);
}

#[test]
fn optimized_backward_mlp_train_step() {
    let (x, y) = fake_batch(64, 1);
    let make = || -> Program {
        let mlp = Mlp::new(0);
        Box::new(move |t: &[Tensor]| Ok(vec![mlp.train_step(&t[0], &t[1], 1e-3)?]))
    };
    let c = check("optimized_backward_mlp_train_step", make, &[&x, &y]);
    // the DOT export lists a fused node's inner ops under its name
    assert!(
        c.dot()
            .contains("fused : f32[64,64]\\n(matmul add maximum)"),
        "{}",
        c.dot()
    );
}

#[test]
fn optimized_backward_conv_pool() {
    let x = Tensor::random_normal(&[2, 8, 8, 1], 0.0, 1.0, 1, DType::F32);
    let make = || -> Program {
        let w = Variable::named(
            "conv/kernel",
            Tensor::random_normal(&[3, 3, 1, 4], 0.0, 0.1, 2, DType::F32),
        );
        Box::new(move |t: &[Tensor]| {
            let tape = GradientTape::new();
            let loss = tape.record(|| {
                t[0].conv2d(&w.read(), (1, 1), Padding::Valid)
                    .relu()
                    .max_pool2d((2, 2), (2, 2), Padding::Valid)
                    .sum_all()
            });
            Ok(vec![tape.gradient(&loss, &w)?])
        })
    };
    check("optimized_backward_conv_pool", make, &[&x]);
}

#[test]
fn optimized_backward_second_order_sin_exp() {
    let x = Tensor::random_normal(&[16], 0.0, 1.0, 1, DType::F32);
    let make = || -> Program {
        Box::new(|t: &[Tensor]| Ok(vec![common::sin_exp_second_derivative(&t[0])?]))
    };
    check("optimized_backward_second_order_sin_exp", make, &[&x]);
}
