//! GradientTape semantics (the TF tutorials' snippets with their printed numbers),
//! closed forms for higher derivatives, forward mode, Jacobians/Hessians, custom
//! gradients, and the errors that explain unconnected gradients.

mod common;

use tapeflow::autodiff::{grad_graph, hessian, hvp, jacobian, jvp};
use tapeflow::{custom_gradient, function, DType, GradientTape, Tensor, Variable};

fn s(t: &Tensor) -> f64 {
    t.to_scalar().unwrap()
}

#[test]
fn tutorial_watch_y_equals_2x() {
    let x = Tensor::scalar(1.0);
    let tape = GradientTape::new();
    let y = tape.record(|| {
        tape.watch(&x);
        &x * 2.0
    });
    assert_eq!(s(&tape.gradient(&y, &x).unwrap()), 2.0);
}

#[test]
fn tutorial_persistent_tape() {
    let x = Tensor::scalar(2.0);
    let tape = GradientTape::persistent();
    let (y, y1) = tape.record(|| {
        tape.watch(&x);
        (&x * 2.0, &x * &x * &x)
    });
    assert_eq!(s(&tape.gradient(&y, &x).unwrap()), 2.0);
    assert_eq!(s(&tape.gradient(&y1, &x).unwrap()), 12.0);
}

#[test]
fn tutorial_nested_tapes_second_derivative() {
    let x = Tensor::scalar(4.0);
    let t1 = GradientTape::new();
    let dy_dx = t1.record(|| {
        t1.watch(&x);
        let t2 = GradientTape::new();
        let y = t2.record(|| {
            t2.watch(&x);
            &x * &x
        });
        t2.gradient(&y, &x).unwrap()
    });
    assert_eq!(s(&dy_dx), 8.0);
    assert_eq!(s(&t1.gradient(&dy_dx, &x).unwrap()), 2.0);
}

#[test]
fn non_persistent_tape_asked_twice_is_an_err() {
    let x = Tensor::scalar(3.0);
    let tape = GradientTape::new();
    let y = tape.record(|| {
        tape.watch(&x);
        &x * &x
    });
    tape.gradient(&y, &x).unwrap();
    let e = tape.gradient(&y, &x).unwrap_err().to_string();
    assert!(
        e.contains("already called") && e.contains("persistent"),
        "{e}"
    );
}

#[test]
fn tutorial_linear_regression_loss_decreases_every_epoch() {
    let x = Tensor::random_normal(&[1000], 0.0, 1.0, 7, DType::F32);
    let noise = Tensor::random_normal(&[1000], 0.0, 0.1, 8, DType::F32);
    let y = &x * 3.0 + 2.0 + noise;
    let a = Variable::named("a", Tensor::random_normal(&[], 0.0, 1.0, 9, DType::F32));
    let b = Variable::named("b", Tensor::random_normal(&[], 0.0, 1.0, 10, DType::F32));
    let mut last = f64::INFINITY;
    for _ in 0..20 {
        let tape = GradientTape::persistent();
        let loss = tape.record(|| (&a.read() * &x + &b.read() - &y).square().mean_all());
        let da = tape.gradient(&loss, &a).unwrap();
        let db = tape.gradient(&loss, &b).unwrap();
        a.assign_sub(&(da * 0.1));
        b.assign_sub(&(db * 0.1));
        let l = s(&loss);
        assert!(l < last, "loss went up: {l} after {last}");
        last = l;
    }
    assert!((s(&a.value()) - 3.0).abs() < 0.1 && (s(&b.value()) - 2.0).abs() < 0.1);
}

fn cube_derivatives_nested(x: &Tensor) -> (Tensor, Tensor, Tensor) {
    let t1 = GradientTape::new();
    let (d1, d2) = t1.record(|| {
        t1.watch(x);
        let t2 = GradientTape::new();
        let d1 = t2.record(|| {
            t2.watch(x);
            let t3 = GradientTape::new();
            let y = t3.record(|| {
                t3.watch(x);
                x * x * x
            });
            t3.gradient(&y, x).unwrap()
        });
        let d2 = t2.gradient(&d1, x).unwrap();
        (d1, d2)
    });
    let d3 = t1.gradient(&d2, x).unwrap();
    (d1, d2, d3)
}

#[test]
fn cube_closed_forms_through_nested_tapes() {
    for &v in &[-1.5, 0.0, 2.0, 3.0] {
        let x = Tensor::scalar_of(DType::F64, v);
        let (d1, d2, d3) = cube_derivatives_nested(&x);
        assert_eq!(s(&d1), 3.0 * v * v);
        assert_eq!(s(&d2), 6.0 * v);
        assert_eq!(s(&d3), 6.0);
    }
}

#[test]
fn cube_closed_forms_inside_function() {
    let f = function(|x: &Tensor| {
        let (a, b, c) = cube_derivatives_nested(x);
        Ok((a, b, c))
    });
    for &v in &[-1.5, 2.0] {
        let (d1, d2, d3) = f.call(&Tensor::scalar_of(DType::F64, v)).unwrap();
        assert_eq!((s(&d1), s(&d2), s(&d3)), (3.0 * v * v, 6.0 * v, 6.0));
    }
    assert_eq!(f.trace_count(), 1);
}

#[test]
fn grad_graph_of_cube_gives_closed_forms() {
    let c = function(|x: &Tensor| Ok(x * x * x))
        .concrete(&[&Tensor::scalar_of(DType::F64, 0.0)])
        .unwrap();
    for (order, expect) in [(1, 12.0), (2, 12.0), (3, 6.0), (4, 0.0)] {
        let g = grad_graph(c.traced_graph(), &[0], order).unwrap();
        tapeflow::ir::verify(&g).unwrap();
        let plan = tapeflow::exec::Plan::new(g).unwrap();
        let x = Tensor::scalar_of(DType::F64, 2.0);
        let out = plan
            .run(&[x.data().unwrap()], &mut Default::default())
            .unwrap();
        assert_eq!(
            Tensor::from_data(out[0].clone()).to_scalar().unwrap(),
            expect,
            "order {order}"
        );
    }
}

/// f(x) = sin x · e^{−x²} and its closed-form derivatives.
fn closed_form(x: f64, order: usize) -> f64 {
    let (sn, cs, e) = (x.sin(), x.cos(), (-x * x).exp());
    e * match order {
        1 => cs - 2.0 * x * sn,
        2 => -3.0 * sn - 4.0 * x * cs + 4.0 * x * x * sn,
        3 => -7.0 * cs + 18.0 * x * sn + 12.0 * x * x * cs - 8.0 * x.powi(3) * sn,
        4 => {
            25.0 * sn + 56.0 * x * cs - 72.0 * x * x * sn - 32.0 * x.powi(3) * cs
                + 16.0 * x.powi(4) * sn
        }
        _ => unreachable!(),
    }
}

#[test]
fn second_derivative_of_sin_exp_on_a_million_points() {
    let n = 1_000_000;
    let x = Tensor::random_uniform(&[n], -3.0, 3.0, 5, DType::F64);
    let f = function(|x: &Tensor| common::sin_exp_second_derivative(x));
    let d2 = f.call(&x).unwrap().to_vec_f64().unwrap();
    let xs = x.to_vec_f64().unwrap();
    let worst = xs
        .iter()
        .zip(&d2)
        .map(|(&x, &d)| (d - closed_form(x, 2)).abs())
        .fold(0.0, f64::max);
    assert!(worst < 1e-12, "max error {worst}");
}

#[test]
fn derivatives_one_to_four_match_closed_forms() {
    let x0 = 0.5;
    let mut f: Box<dyn Fn(&Tensor) -> Tensor> = Box::new(|x: &Tensor| x.sin() * (-(x * x)).exp());
    for order in 1..=4 {
        let prev = f;
        f = Box::new(move |x: &Tensor| {
            let t = GradientTape::new();
            let y = t.record(|| {
                t.watch(x);
                prev(x)
            });
            t.gradient(&y, x).unwrap()
        });
        let got = s(&f(&Tensor::scalar_of(DType::F64, x0)));
        assert!(
            (got - closed_form(x0, order)).abs() < 1e-12,
            "order {order}: {got} vs {}",
            closed_form(x0, order)
        );
    }
}

#[test]
fn hessian_of_softmax_cross_entropy_matches_hand_formula() {
    // L(z) = logsumexp(z) − z_y  ⇒  ∇L = p − e_y,  H = diag(p) − p pᵀ
    let z = Tensor::vec(&[0.3f64, -1.2, 2.0, 0.5]);
    let y = Tensor::vec(&[2i64]);
    let loss = |z: &Tensor| common::sparse_ce_from_logits(&y, &z.reshape(&[1, 4]));
    let h = hessian(loss, &z).unwrap().to_vec_f64().unwrap();
    let p = z.softmax(0).to_vec_f64().unwrap();
    for i in 0..4 {
        for j in 0..4 {
            let expect = if i == j { p[i] } else { 0.0 } - p[i] * p[j];
            assert!(
                (h[i * 4 + j] - expect).abs() < 1e-14,
                "H[{i}][{j}] = {} vs {expect}",
                h[i * 4 + j]
            );
        }
    }
    // Hessian-vector product (forward over reverse) agrees with H·v
    let v = Tensor::vec(&[1.0f64, -2.0, 0.5, 3.0]);
    let hv = hvp(loss, &z, &v).unwrap().to_vec_f64().unwrap();
    let vv = v.to_vec_f64().unwrap();
    for i in 0..4 {
        let expect: f64 = (0..4).map(|j| h[i * 4 + j] * vv[j]).sum();
        assert!((hv[i] - expect).abs() < 1e-14);
    }
}

#[test]
fn jacobian_and_jvp() {
    let x = Tensor::vec(&[1.0f64, 2.0, 3.0]);
    let j = jacobian(|x| x * x, &x).unwrap();
    assert_eq!(j.shape(), &[3, 3]);
    assert_eq!(
        j.to_vec_f64().unwrap(),
        vec![2.0, 0.0, 0.0, 0.0, 4.0, 0.0, 0.0, 0.0, 6.0]
    );
    let (y, ty) = jvp(
        |xs| xs[0].sin(),
        std::slice::from_ref(&x),
        &[Tensor::vec(&[1.0f64, 0.0, 2.0])],
    )
    .unwrap();
    assert_eq!(y.to_vec_f64().unwrap(), x.sin().to_vec_f64().unwrap());
    assert_eq!(
        ty.to_vec_f64().unwrap(),
        vec![1f64.cos(), 0.0, 2.0 * 3f64.cos()]
    );
}

#[test]
fn variables_are_watched_automatically_and_several_sources_at_once() {
    let w = Variable::named("w", Tensor::vec(&[1.0f64, 2.0]));
    let b = Variable::named("b", Tensor::scalar_of(DType::F64, 0.5));
    let x = Tensor::vec(&[3.0f64, 4.0]);
    let tape = GradientTape::new();
    let y = tape.record(|| (&w.read() * &x).sum_all() + b.read() * 2.0);
    let g = tape.gradient(&y, &[w.clone(), b.clone()]).unwrap();
    assert_eq!(g[0].as_ref().unwrap().to_vec_f64().unwrap(), vec![3.0, 4.0]);
    assert_eq!(s(g[1].as_ref().unwrap()), 2.0);
    // switched off: nothing is watched
    let tape = GradientTape::new().watch_accessed_variables(false);
    let y = tape.record(|| (&w.read() * &x).sum_all());
    let e = tape.gradient(&y, &w).unwrap_err().to_string();
    assert!(e.contains("never watched"), "{e}");
    // non-trainable variables are not watched automatically
    let c = Variable::non_trainable("c", Tensor::scalar_of(DType::F64, 1.0));
    let tape = GradientTape::new();
    let y = tape.record(|| c.read() * 2.0);
    assert!(tape.gradient(&y, &c).is_err());
    let tape = GradientTape::new();
    tape.watch_variable(&c);
    let y = tape.record(|| c.read() * 2.0);
    assert_eq!(s(&tape.gradient(&y, &c).unwrap()), 2.0);
}

#[test]
fn unconnected_sources_say_why() {
    let x = Tensor::scalar_of(DType::F64, 2.0);
    let z = Tensor::scalar_of(DType::F64, 5.0);
    // one of several unconnected: None, or zeros on request
    let tape = GradientTape::persistent();
    let y = tape.record(|| {
        tape.watch(&x);
        tape.watch(&z);
        &x * 3.0
    });
    let g = tape.gradient(&y, &[x.clone(), z.clone()]).unwrap();
    assert!(g[0].is_some() && g[1].is_none());
    let tape0 = GradientTape::new().unconnected_zeros();
    let y0 = tape0.record(|| {
        tape0.watch(&x);
        &x * 3.0
    });
    assert_eq!(s(&tape0.gradient(&y0, &z).unwrap()), 0.0);
    // never watched
    let e = tape
        .gradient(&y, &Tensor::scalar(1.0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("never watched"), "{e}");
    // cut by stop_gradient / integer cast
    let tape = GradientTape::persistent();
    let (a, b) = tape.record(|| {
        tape.watch(&x);
        (
            x.stop_gradient() * 2.0,
            x.cast(DType::I64).cast(DType::F64) * 2.0,
        )
    });
    let e = tape.gradient(&a, &x).unwrap_err().to_string();
    assert!(
        e.contains("cut by `stop_gradient`") && e.contains("tests/autodiff.rs"),
        "{e}"
    );
    let e = tape.gradient(&b, &x).unwrap_err().to_string();
    assert!(e.contains("cut by `cast`"), "{e}");
    // value taken out of the graph
    let tape = GradientTape::new();
    let y = tape.record(|| {
        tape.watch(&x);
        let v = (&x * 2.0).to_vec_f64().unwrap();
        Tensor::vec(&v) * 3.0
    });
    let e = tape.gradient(&y, &x).unwrap_err().to_string();
    assert!(e.contains("taken out of the graph"), "{e}");
}

#[test]
fn stop_recording_pauses_the_tape() {
    let x = Tensor::scalar_of(DType::F64, 3.0);
    let tape = GradientTape::new();
    let y = tape.record(|| {
        tape.watch(&x);
        let a = &x * &x;
        let b = tape.stop_recording(|| &x * 100.0);
        a + b
    });
    // b was not recorded: only d(x²)/dx = 6 flows
    assert_eq!(s(&tape.gradient(&y, &x).unwrap()), 6.0);
}

#[test]
fn non_scalar_targets_are_summed_and_output_gradients_weight_them() {
    let x = Tensor::vec(&[1.0f64, 2.0]);
    let tape = GradientTape::persistent();
    let y = tape.record(|| {
        tape.watch(&x);
        &x * &x
    });
    assert_eq!(
        tape.gradient(&y, &x).unwrap().to_vec_f64().unwrap(),
        vec![2.0, 4.0]
    );
    let w = Tensor::vec(&[10.0f64, 0.5]);
    assert_eq!(
        tape.gradient_with(&y, &x, Some(&w))
            .unwrap()
            .to_vec_f64()
            .unwrap(),
        vec![20.0, 2.0]
    );
    assert!(tape
        .gradient_with(&y, &x, Some(&Tensor::zeros(&[3])))
        .is_err());
}

/// A numerically safe log(1 + eˣ) with its own gradient σ(x).
fn softplus(x: &Tensor) -> Tensor {
    custom_gradient(
        &[x],
        |xs| xs[0].maximum(&xs[0].scalar_like(0.0)) + (-xs[0].abs()).exp().log1p_sugar(),
        |xs, _y, gy| vec![Some(gy * xs[0].sigmoid())],
    )
}

trait Log1p {
    fn log1p_sugar(&self) -> Tensor;
}
impl Log1p for Tensor {
    fn log1p_sugar(&self) -> Tensor {
        (self + 1.0).log()
    }
}

#[test]
fn custom_gradient_eager_traced_and_differentiated_again() {
    let x = Tensor::vec(&[-2.0f64, 0.0, 50.0]);
    let t1 = GradientTape::new();
    let g = t1.record(|| {
        t1.watch(&x);
        let t2 = GradientTape::new();
        let y = t2.record(|| {
            t2.watch(&x);
            softplus(&x)
        });
        t2.gradient(&y, &x).unwrap()
    });
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    let gv = g.to_vec_f64().unwrap();
    assert_eq!(gv, vec![sig(-2.0), 0.5, sig(50.0)]);
    // the rule is made of differentiable ops: its derivative is σ(1−σ)
    let h = t1.gradient(&g, &x).unwrap().to_vec_f64().unwrap();
    for (v, hv) in [-2.0, 0.0, 50.0].iter().zip(h) {
        assert!((hv - sig(*v) * (1.0 - sig(*v))).abs() < 1e-15);
    }
    // and traced
    let f = function(|x: &Tensor| {
        let t = GradientTape::new();
        let y = t.record(|| {
            t.watch(x);
            softplus(x)
        });
        t.gradient(&y, x)
    });
    assert_eq!(f.call(&x).unwrap().to_vec_f64().unwrap(), gv);
}

static SIN_LINE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

#[test]
fn backward_nodes_carry_the_forward_ops_location() {
    let f = function(|x: &Tensor| {
        let t = GradientTape::new();
        let y = t.record(|| {
            t.watch(x);
            SIN_LINE.store(line!() + 1, std::sync::atomic::Ordering::SeqCst);
            x.sin() // the line backward nodes should point at
        });
        t.gradient(&y, x)
    });
    let c = f.concrete(&[&Tensor::scalar(1.0)]).unwrap();
    let text = tapeflow::ir::print(c.traced_graph(), true);
    let cos_line = text
        .lines()
        .find(|l| l.contains(" = cos "))
        .expect("cos node");
    let sin_loc = format!(
        "tests/autodiff.rs:{}",
        SIN_LINE.load(std::sync::atomic::Ordering::SeqCst)
    );
    assert!(cos_line.ends_with(&sin_loc), "{cos_line} vs {sin_loc}");
}
