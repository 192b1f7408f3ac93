//! Control flow (`cond`, `while_loop`, `scan`, `scan_reverse`, `fori_loop`): results,
//! the type errors that name both sides, gradients through them against closed forms
//! (eagerly and inside `function`: x^n, cumulative products, Newton's √a by the
//! implicit-function values, `hessian`/`hvp`/`jvp` of loops), eager == compiled, and
//! variables read and assigned inside bodies (TF resource-variable semantics).

mod common;

use tapeflow::{
    cond, fori_loop, function, scan, scan_reverse, while_loop, DType, GradientTape, Tensor,
    Variable,
};

fn f64s(v: f64) -> Tensor {
    Tensor::from(v)
}

fn s(t: &Tensor) -> f64 {
    t.to_scalar().unwrap()
}

/// x^n by repeated multiplication in a `while_loop` whose trip count `n` is a tensor.
fn power(x: &Tensor, n: &Tensor) -> Tensor {
    let out = while_loop(
        |v| Ok(v[0].lt(n)),
        |v| Ok(vec![&v[0] + 1i64, &v[1] * x]),
        &[Tensor::from(0i64), x.ones_like()],
    )
    .unwrap();
    out[1].clone()
}

#[test]
fn cond_runs_only_the_chosen_branch() {
    let x = f64s(3.0);
    let ran_false = std::cell::Cell::new(false);
    let y = cond(
        &x.gt(&f64s(0.0)),
        || Ok(vec![&x * 2.0, x.clone()]),
        || {
            ran_false.set(true);
            Ok(vec![-&x, x.clone()])
        },
    )
    .unwrap();
    assert_eq!(s(&y[0]), 6.0);
    assert!(!ran_false.get());
    let y = cond(&Tensor::from(0i64), || Ok(vec![&x * 2.0]), || Ok(vec![-&x])).unwrap();
    assert_eq!(s(&y[0]), -3.0);
}

#[test]
fn cond_errors_name_both_branches_and_the_predicate() {
    let x = Tensor::vec(&[1.0f32, 2.0]);
    let e = cond(
        &Tensor::vec(&[1.0f32, 0.0]),
        || Ok(vec![x.clone()]),
        || Ok(vec![x.clone()]),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("f32[2]") && e.contains("one element"), "{e}");
    // a traced cond with a run-time predicate checks both branches
    let f = function(move |p: &Tensor, x: &Tensor| {
        let r = cond(
            p,
            || Ok(vec![x.clone()]),
            || Ok(vec![x.slice_axis(0, 0, 1)]),
        )?;
        Ok(r[0].clone())
    });
    let e = f
        .call(&Tensor::scalar(1.0), &Tensor::vec(&[1.0f32, 2.0]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("the true branch has f32[2]") && e.contains("the false branch has f32[1]"),
        "{e}"
    );
}

#[test]
fn cond_traced_with_a_runtime_predicate_and_its_gradient() {
    let f = function(|p: &Tensor, x: &Tensor| {
        let tape = GradientTape::new();
        let y = tape.record(|| {
            tape.watch(x);
            cond(p, || Ok(vec![x * x]), || Ok(vec![x * 3.0])).map(|v| v[0].clone())
        })?;
        let g = tape.gradient(&y, x)?;
        Ok((y, g))
    });
    let x = f64s(5.0);
    let (y, g) = f.call(&f64s(1.0), &x).unwrap();
    assert_eq!((s(&y), s(&g)), (25.0, 10.0));
    let (y, g) = f.call(&f64s(0.0), &x).unwrap();
    assert_eq!((s(&y), s(&g)), (15.0, 3.0));
    assert_eq!(f.trace_count(), 1);
}

#[test]
fn while_loop_power_and_its_first_and_second_derivatives() {
    // d/dx x^n = n x^(n-1), d²/dx² x^n = n (n-1) x^(n-2), n known only as a tensor
    for n in [0i64, 1, 2, 5] {
        let x = f64s(1.5);
        let nt = Tensor::from(n);
        let t2 = GradientTape::new();
        let (y, d1) = t2.record(|| {
            t2.watch(&x);
            let t1 = GradientTape::new().unconnected_zeros();
            let y = t1.record(|| {
                t1.watch(&x);
                power(&x, &nt)
            });
            let d1 = t1.gradient(&y, &x).unwrap();
            (y, d1)
        });
        let d2 = t2.gradient(&d1, &x).unwrap_or_else(|_| x.zeros_like());
        let nf = n as f64;
        assert!((s(&y) - 1.5f64.powi(n as i32)).abs() < 1e-12, "n={n}");
        let want1 = if n == 0 {
            0.0
        } else {
            nf * 1.5f64.powi(n as i32 - 1)
        };
        let want2 = if n < 2 {
            0.0
        } else {
            nf * (nf - 1.0) * 1.5f64.powi(n as i32 - 2)
        };
        assert!(
            (s(&d1) - want1).abs() < 1e-12,
            "n={n}: {} vs {want1}",
            s(&d1)
        );
        assert!(
            (s(&d2) - want2).abs() < 1e-12,
            "n={n}: {} vs {want2}",
            s(&d2)
        );
    }
}

#[test]
fn while_loop_body_type_error_names_both() {
    let e = while_loop(
        |v| Ok(v[0].lt(&Tensor::scalar(3.0))),
        |v| {
            Ok(vec![Tensor::concat(
                &[&v[0].reshape(&[1]), &v[0].reshape(&[1])],
                0,
            )])
        },
        &[Tensor::scalar(0.0)],
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("while_loop") && e.contains("the loop carry has f32[]") && e.contains("f32[2]"),
        "{e}"
    );
    let e = fori_loop(
        0,
        2,
        |_, v| Ok(vec![v[0].cast(DType::F64)]),
        &[Tensor::scalar(0.0)],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("f32[]") && e.contains("f64[]"), "{e}");
}

#[test]
fn fori_loop_counter_and_gradient() {
    // Σ_{i=2}^{4} i·x = 9x
    let x = f64s(2.0);
    let tape = GradientTape::new();
    let y = tape.record(|| {
        tape.watch(&x);
        fori_loop(
            2,
            5,
            |i, v| Ok(vec![&v[0] + &(&i.cast(DType::F64) * &x)]),
            &[x.zeros_like()],
        )
        .unwrap()[0]
            .clone()
    });
    assert_eq!(s(&y), 18.0);
    assert_eq!(s(&tape.gradient(&y, &x).unwrap()), 9.0);
    // an empty range returns init
    let r = fori_loop(3, 3, |_, v| Ok(v.to_vec()), std::slice::from_ref(&x)).unwrap();
    assert_eq!(s(&r[0]), 2.0);
}

/// The cumulative product of `xs` by `scan`: (final product, all prefix products).
fn cumprod(xs: &Tensor) -> (Tensor, Tensor) {
    let (c, ys) = scan(
        |c, x| {
            let p = &c[0] * &x[0];
            Ok((vec![p.clone()], vec![p]))
        },
        &[Tensor::from(1.0f64)],
        std::slice::from_ref(xs),
    )
    .unwrap();
    (c[0].clone(), ys[0].clone())
}

#[test]
fn scan_cumulative_product_and_its_gradient() {
    let v = [1.5f64, -2.0, 0.5, 3.0];
    let xs = Tensor::vec(&v);
    let tape = GradientTape::persistent();
    let (p, ys, total) = tape.record(|| {
        tape.watch(&xs);
        let (p, ys) = cumprod(&xs);
        let total = ys.sum_all();
        (p, ys, total)
    });
    assert_eq!(ys.to_vec_f64().unwrap(), [1.5, -3.0, -1.5, -4.5]);
    assert_eq!(s(&p), -4.5);
    // d/dx_i Π x = Π x / x_i
    let g = tape.gradient(&p, &xs).unwrap().to_vec_f64().unwrap();
    for i in 0..4 {
        assert!((g[i] - (-4.5) / v[i]).abs() < 1e-12, "{g:?}");
    }
    // d/dx_i Σ_t Π_{j≤t} x_j = Σ_{t≥i} prefix_t / x_i
    let g = tape.gradient(&total, &xs).unwrap().to_vec_f64().unwrap();
    let prefix = [1.5, -3.0, -1.5, -4.5];
    for i in 0..4 {
        let want: f64 = prefix[i..].iter().sum::<f64>() / v[i];
        assert!((g[i] - want).abs() < 1e-12, "{g:?}");
    }
}

#[test]
fn scan_reverse_walks_backwards_and_keeps_ys_in_place() {
    let xs = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[3, 2]).unwrap();
    let order = std::cell::RefCell::new(Vec::new());
    let (c, ys) = scan_reverse(
        |c, x| {
            order.borrow_mut().push(x[0].to_vec_f32().unwrap()[0]);
            let s = &c[0] + &x[0];
            Ok((vec![s.clone()], vec![s, x[1].clone()]))
        },
        &[Tensor::zeros(&[2])],
        &[xs.clone(), Tensor::vec(&[10i64, 20, 30])],
    )
    .unwrap();
    assert_eq!(*order.borrow(), [5.0, 3.0, 1.0]);
    assert_eq!(c[0].to_vec_f32().unwrap(), [9.0, 12.0]);
    assert_eq!(ys[0].shape(), &[3, 2]);
    assert_eq!(
        ys[0].to_vec_f32().unwrap(),
        [9.0, 12.0, 8.0, 10.0, 5.0, 6.0]
    );
    assert_eq!(ys[1].to_vec_i64().unwrap(), [10, 20, 30]);
}

#[test]
fn scan_errors() {
    let f = |c: &[Tensor], x: &[Tensor]| Ok((vec![&c[0] + &x[0]], vec![]));
    let init = [Tensor::scalar(0.0)];
    let e = scan(f, &init, &[]).unwrap_err().to_string();
    assert!(e.contains("at least one tensor"), "{e}");
    let e = scan(f, &init, &[Tensor::zeros(&[3]), Tensor::zeros(&[4])])
        .unwrap_err()
        .to_string();
    assert!(e.contains("f32[3]") && e.contains("f32[4]"), "{e}");
    let e = scan(f, &init, &[Tensor::zeros(&[3, 2])])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("the carry has f32[]") && e.contains("f32[2]"),
        "{e}"
    );
    // ys that change type between steps
    let e = scan(
        |c, x| {
            let y = if s(&x[0]) > 0.5 {
                x[0].reshape(&[1])
            } else {
                x[0].clone()
            };
            Ok((c.to_vec(), vec![y]))
        },
        &init,
        &[Tensor::vec(&[0.0f32, 1.0])],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("f32[]") && e.contains("f32[1]"), "{e}");
}

/// A tiny RNN `h ← tanh(h·U + x_t·W)` over a sequence, its loss and gradients.
fn rnn_loss_and_grads(x: &Tensor, u: &Variable, w: &Variable) -> tapeflow::Result<Vec<Tensor>> {
    let tape = GradientTape::new();
    let loss = tape.record(|| -> tapeflow::Result<Tensor> {
        let (uu, ww) = (u.read(), w.read());
        let xt = x.transpose(&[1, 0, 2]); // [time, batch, features]
                                          // zeros [batch, units], made from x so a symbolic batch works too
        let h0 = x.sum(&[1], false).matmul(&ww).zeros_like();
        let (h, ys) = scan(
            |c, xs| {
                let h = (&c[0].matmul(&uu) + &xs[0].matmul(&ww)).tanh();
                Ok((vec![h.clone()], vec![h]))
            },
            &[h0],
            &[xt],
        )?;
        Ok(&h[0].square().sum_all() + &ys[0].mean_all())
    })?;
    let g = tape.gradient(&loss, &[u.clone(), w.clone()])?;
    Ok(vec![loss, g[0].clone().unwrap(), g[1].clone().unwrap()])
}

#[test]
fn scan_rnn_eager_equals_compiled() {
    let u = Variable::named("u", Tensor::random_normal(&[4, 4], 0.0, 0.5, 1, DType::F64));
    let w = Variable::named("w", Tensor::random_normal(&[3, 4], 0.0, 0.5, 2, DType::F64));
    let x = Tensor::random_normal(&[2, 5, 3], 0.0, 1.0, 3, DType::F64);
    let eager = rnn_loss_and_grads(&x, &u, &w).unwrap();
    let (u2, w2) = (u.clone(), w.clone());
    let f = function(move |x: &Tensor| rnn_loss_and_grads(x, &u2, &w2));
    let compiled = f.call(&x).unwrap();
    for (a, b) in eager.iter().zip(&compiled) {
        let (a, b) = (a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() <= 1e-12 * p.abs().max(1.0), "{a:?} vs {b:?}");
        }
    }
}

#[test]
fn stack_and_unstack_are_inverse() {
    let x = Tensor::arange(0, 6, DType::F32).reshape(&[3, 2]);
    let parts = x.unstack();
    assert_eq!(parts.len(), 3);
    let refs: Vec<&Tensor> = parts.iter().collect();
    assert_eq!(
        Tensor::stack(&refs).to_vec_f32().unwrap(),
        x.to_vec_f32().unwrap()
    );
}

/// [`rnn_loss_and_grads`] traced for an input `f64[2,5,3]`, with fixed weights.
fn traced_rnn() -> std::sync::Arc<tapeflow::trace::ConcreteFunction> {
    let u = Variable::named("u", Tensor::random_normal(&[4, 4], 0.0, 0.5, 1, DType::F64));
    let w = Variable::named("w", Tensor::random_normal(&[3, 4], 0.0, 0.5, 2, DType::F64));
    let rnn = function(move |x: &Tensor| rnn_loss_and_grads(x, &u, &w));
    let x = Tensor::random_normal(&[2, 5, 3], 0.0, 1.0, 3, DType::F64);
    rnn.concrete(&[&x]).unwrap()
}

#[test]
fn traced_scan_is_one_op_with_a_body_block() {
    let text = traced_rnn().text();
    println!("{text}");
    assert_eq!(
        text.matches("= scan[").count(),
        2,
        "forward and backward: {text}"
    );
    assert!(
        text.contains("body(") && text.contains("get[index=0]"),
        "{text}"
    );
}

#[test]
fn profiled_runs_time_the_steps_inside_loop_bodies() {
    let f = traced_rnn();
    let x = Tensor::random_normal(&[2, 5, 3], 0.0, 1.0, 3, DType::F64);
    let plan = f.plan_for(&[&x]).unwrap();
    let mut stats = tapeflow::exec::RunStats {
        collect_profile: true,
        ..Default::default()
    };
    plan.run(&[x.data().unwrap()], &mut stats).unwrap();
    let inside: Vec<&str> = stats.loop_profile.iter().map(|(op, _)| *op).collect();
    // the bodies' products and their tanh (forward) run inside the two scans
    assert!(inside.contains(&"matmul"), "{inside:?}");
    assert!(!inside.contains(&"scan"), "{inside:?}");
    let scans: std::time::Duration = (stats.profile.iter())
        .filter(|(op, _)| *op == "scan")
        .map(|(_, d)| *d)
        .sum();
    let bodies: std::time::Duration = stats.loop_profile.iter().map(|(_, d)| *d).sum();
    assert!(bodies <= scans, "{bodies:?} inside {scans:?}");
    // an unprofiled run collects nothing
    let mut plain = tapeflow::exec::RunStats::default();
    plan.run(&[x.data().unwrap()], &mut plain).unwrap();
    assert!(plain.loop_profile.is_empty() && plain.profile.is_empty());
}

#[test]
fn while_loop_traced_with_a_runtime_trip_count_and_two_derivatives() {
    // one trace serves every n: the trip count is an argument of the compiled function
    let f = function(|x: &Tensor, n: &Tensor| {
        let t2 = GradientTape::new();
        let (y, d1) = t2.record(|| -> tapeflow::Result<_> {
            t2.watch(x);
            let t1 = GradientTape::new().unconnected_zeros();
            let y = t1.record(|| {
                t1.watch(x);
                power(x, n)
            });
            let d1 = t1.gradient(&y, x)?;
            Ok((y, d1))
        })?;
        let d2 = t2.gradient(&d1, x)?;
        Ok((y, d1, d2))
    });
    for n in [0i64, 1, 2, 5] {
        let (y, d1, d2) = f.call(&f64s(1.5), &Tensor::from(n)).unwrap();
        let nf = n as f64;
        let p = |k: i64| if k < 0 { 0.0 } else { 1.5f64.powi(k as i32) };
        assert!((s(&y) - p(n)).abs() < 1e-12, "n={n}");
        assert!((s(&d1) - nf * p(n - 1)).abs() < 1e-12, "n={n}: {}", s(&d1));
        assert!(
            (s(&d2) - nf * (nf - 1.0) * p(n - 2)).abs() < 1e-12,
            "n={n}: {}",
            s(&d2)
        );
    }
    assert_eq!(f.trace_count(), 1);
    let text = f
        .concrete(&[&f64s(1.5), &Tensor::from(3i64)])
        .unwrap()
        .text();
    assert!(text.contains("= while["), "{text}");
}

#[test]
fn scan_second_derivative_traced_matches_eager() {
    // d²/dx² of Σ_t cumprod(x)_t along a direction, eager (unrolled) vs compiled (regions)
    let xs = Tensor::vec(&[1.5f64, -2.0, 0.5, 3.0]);
    let second = |xs: &Tensor| -> tapeflow::Result<Tensor> {
        let t2 = GradientTape::new();
        let g1 = t2.record(|| -> tapeflow::Result<Tensor> {
            t2.watch(xs);
            let t1 = GradientTape::new();
            let total = t1.record(|| {
                t1.watch(xs);
                let (p, ys) = cumprod(xs);
                &ys.sum_all() + &p.square()
            });
            Ok(t1.gradient(&total, xs)?.square().sum_all())
        })?;
        t2.gradient(&g1, xs)
    };
    let eager = second(&xs).unwrap().to_vec_f64().unwrap();
    let f = function(move |x: &Tensor| second(x));
    let compiled = f.call(&xs).unwrap().to_vec_f64().unwrap();
    for (a, b) in eager.iter().zip(&compiled) {
        assert!(
            (a - b).abs() <= 1e-10 * a.abs().max(1.0),
            "{eager:?} vs {compiled:?}"
        );
    }
}

/// Gradient-check rows: f64, finite differences, reverse and forward, orders 1 and 2,
/// eager (Rust control flow) and traced (control-flow ops).
#[test]
fn gradient_checks_of_control_flow() {
    use tapeflow::autodiff::{check_gradients, GradCheck, Mode};
    type F = fn(&[Tensor]) -> Tensor;
    // scan: h ← tanh(h ⊙ w + x_t) over 4 steps, w captured
    let scan_row: F = |v| {
        let (h, ys) = scan(
            |c, x| {
                let h = (&(&c[0] * &v[1]) + &x[0]).tanh();
                Ok((vec![h.clone()], vec![&h * &h]))
            },
            &[v[1].zeros_like()],
            &[v[0].clone()],
        )
        .unwrap();
        &ys[0].sum_all() + &h[0].sum_all()
    };
    let scan_rev_row: F = |v| {
        let (h, _) = scan_reverse(
            |c, x| Ok((vec![(&(&c[0] * &x[0]) + &v[1]).sin()], vec![])),
            &[v[1].clone()],
            &[v[0].clone()],
        )
        .unwrap();
        h[0].sum_all()
    };
    // an RNN cell h ← tanh(h·U + x_t): the traced scan keeps each step's h·U for its
    // reverse scan, whose own derivatives must still reach h and U through that product
    let scan_matmul_row: F = |v| {
        let (h, ys) = scan(
            |c, x| {
                let h = (&c[0].matmul(&v[1]) + &x[0]).tanh();
                Ok((vec![h.clone()], vec![h.matmul(&v[1])]))
            },
            &[v[0].slice_axis(0, 0, 1).squeeze(0).zeros_like()],
            &[v[0].clone()],
        )
        .unwrap();
        &ys[0].square().sum_all() + &h[0].sum_all()
    };
    // cond on a run-time predicate
    let cond_row: F = |v| {
        let p = v[0].sum_all().gt(&Tensor::from(0.0f64));
        let r = cond(
            &p,
            || Ok(vec![&v[0].sin() * &v[1]]),
            || Ok(vec![v[0].exp()]),
        )
        .unwrap();
        r[0].sum_all()
    };
    // while with a data-dependent trip count (3 here): p ← p·x + w
    let while_row: F = |v| {
        let out = while_loop(
            |c| Ok(c[0].lt(&Tensor::from(3.0f64))),
            |c| Ok(vec![&c[0] + 1.0, &(&c[1] * &v[0]) + &v[1]]),
            &[&v[0].sum_all() * 0.0, v[0].ones_like()],
        )
        .unwrap();
        out[1].sum_all()
    };
    let x4 = Tensor::from_vec(vec![0.3f64, -0.2, 0.5, 0.1, 0.4, -0.6, 0.2, 0.7], &[4, 2]).unwrap();
    let w2 = Tensor::vec(&[0.8f64, -0.4]);
    let u22 = Tensor::from_vec(vec![0.6f64, -0.3, 0.2, 0.9], &[2, 2]).unwrap();
    let rows: [(&str, F, Vec<Tensor>); 5] = [
        ("scan", scan_row, vec![x4.clone(), w2.clone()]),
        (
            "scan_matmul",
            scan_matmul_row,
            vec![x4.reshape(&[4, 1, 2]), u22],
        ),
        ("scan_reverse", scan_rev_row, vec![x4.clone(), w2.clone()]),
        (
            "cond",
            cond_row,
            vec![w2.clone(), Tensor::vec(&[0.3f64, 0.9])],
        ),
        (
            "while",
            while_row,
            vec![Tensor::vec(&[0.7f64, 1.2]), w2.clone()],
        ),
    ];
    for (name, f, xs) in &rows {
        for order in [1, 2] {
            for mode in [Mode::Reverse, Mode::Forward] {
                for traced in [false, true] {
                    let cfg = GradCheck {
                        order,
                        mode,
                        traced,
                        eps: 1e-5,
                        rtol: 1e-5,
                        atol: 1e-7,
                        ..Default::default()
                    };
                    if let Err(e) = check_gradients(f, xs, &cfg) {
                        panic!("{name}: {e}");
                    }
                }
            }
        }
    }
}

/// Text round trip of graphs with regions (traced and optimized, nested backward
/// bodies), each re-parsed graph verifying; the graph runs the same after the trip.
#[test]
fn regions_print_parse_round_trip_and_verify() {
    use tapeflow::ir::{parse_with_constants, print_with_constants, verify};
    let rnn = traced_rnn();
    let pw = function(|x: &Tensor, n: &Tensor| {
        let tape = GradientTape::new();
        let y = tape.record(|| {
            tape.watch(x);
            power(x, n)
        });
        let p = cond(
            &n.gt(&Tensor::from(2i64)),
            || Ok(vec![&y * 2.0]),
            || Ok(vec![y.clone()]),
        )?;
        Ok((p[0].clone(), tape.gradient(&y, x)?))
    });
    let (x1, n1) = (f64s(1.5), Tensor::from(3i64));
    let graphs = [rnn, pw.concrete(&[&x1, &n1]).unwrap()];
    for c in &graphs {
        for g in [c.traced_graph(), c.graph()] {
            verify(g).unwrap();
            let (text, table) = print_with_constants(g);
            let back =
                parse_with_constants(&text, &table).unwrap_or_else(|e| panic!("{e}\n{text}"));
            verify(&back).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(print_with_constants(&back).0, text);
        }
    }
    let dot = graphs[0].dot();
    assert!(dot.contains("subgraph cluster_"), "{dot}");
}

#[test]
fn scan_over_a_symbolic_length_and_batch_runs_without_retracing() {
    use tapeflow::{function_with_signature, TensorSpec};
    let u = Variable::named("u", Tensor::random_normal(&[4, 4], 0.0, 0.5, 1, DType::F64));
    let w = Variable::named("w", Tensor::random_normal(&[3, 4], 0.0, 0.5, 2, DType::F64));
    let (u2, w2) = (u.clone(), w.clone());
    let f = function_with_signature(
        move |x: &Tensor| rnn_loss_and_grads(x, &u2, &w2),
        &[TensorSpec::new(&[None, None, Some(3)], DType::F64)],
    );
    for (b, t) in [(2, 5), (3, 2), (1, 7)] {
        let x = Tensor::random_normal(&[b, t, 3], 0.0, 1.0, 3, DType::F64);
        let eager = rnn_loss_and_grads(&x, &u, &w).unwrap();
        let compiled = f.call(&x).unwrap();
        for (a, c) in eager.iter().zip(&compiled) {
            let (a, c) = (a.to_vec_f64().unwrap(), c.to_vec_f64().unwrap());
            for (p, q) in a.iter().zip(&c) {
                assert!((p - q).abs() <= 1e-12 * p.abs().max(1.0), "b={b} t={t}");
            }
        }
    }
    assert_eq!(f.trace_count(), 1);
}

#[test]
fn fori_loop_traced_unrolls_short_loops_and_keeps_long_ones() {
    use tapeflow::control::FORI_UNROLL_MAX;
    // Σ_{i<n} i·x and its derivative Σ i, for n at and beyond the unrolling threshold
    for n in [FORI_UNROLL_MAX, 40] {
        let f = function(move |x: &Tensor| {
            let tape = GradientTape::new();
            let y = tape.record(|| {
                tape.watch(x);
                fori_loop(
                    0,
                    n,
                    |i, v| Ok(vec![&v[0] + &(&i.cast(DType::F64) * x)]),
                    &[x.zeros_like()],
                )
            })?;
            let g = tape.gradient(&y[0], x)?;
            Ok((y[0].clone(), g))
        });
        let (y, g) = f.call(&f64s(2.0)).unwrap();
        let sum = (n * (n - 1) / 2) as f64;
        assert_eq!((s(&y), s(&g)), (2.0 * sum, sum), "n={n}");
        let text = f
            .concrete(&[&f64s(2.0)])
            .unwrap()
            .traced_graph()
            .to_string();
        assert_eq!(
            text.contains("= while["),
            n > FORI_UNROLL_MAX,
            "n={n}: {text}"
        );
    }
}

/// The backward graphs of a scan (an RNN cell) and of a while loop, as the optimizer
/// leaves them, pinned for review.
#[test]
fn snapshots_of_backward_graphs() {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("../snapshots");
    let rnn = traced_rnn();
    let pw = function(|x: &Tensor, n: &Tensor| {
        let tape = GradientTape::new();
        let y = tape.record(|| {
            tape.watch(x);
            power(x, n)
        });
        Ok((y.clone(), tape.gradient(&y, x)?))
    });
    let rnn_text = rnn.text();
    let pw_text = pw
        .concrete(&[&f64s(1.5), &Tensor::from(3i64)])
        .unwrap()
        .text();
    settings.bind(|| {
        insta::assert_snapshot!("scan_rnn_cell_backward", rnn_text);
        insta::assert_snapshot!("while_power_backward", pw_text);
    });
}

/// Bit-exact equality of two f64 tensors.
fn same_bits(a: &Tensor, b: &Tensor) -> bool {
    let (a, b) = (a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
    a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// `while counter < n`: the counter is a variable incremented in the body, the trip
/// count known only at run time; a second variable accumulates the counter as read
/// after the increment (each iteration sees the previous one's assignment).
/// (`COUNT_TO_LOOP_LINE` is the line of its `while_loop` call, two lines down.)
const COUNT_TO_LOOP_LINE: u32 = line!() + 2;
fn count_to(counter: &Variable, total: &Variable, n: &Tensor) -> tapeflow::Result<Tensor> {
    let out = while_loop(
        |_| Ok(counter.read().lt(n)),
        |v| {
            counter.assign_add(&Tensor::from(1i64));
            let c = counter.read().cast(DType::F64);
            total.assign(&(&total.read() + &(&c * 0.1)));
            Ok(vec![&v[0] * 1.5])
        },
        &[Tensor::from(1.0f64)],
    )?;
    Ok(out[0].clone())
}

#[test]
fn variables_assigned_in_a_traced_while_loop_are_carried() {
    let vars = || {
        (
            Variable::non_trainable("counter", Tensor::from(2i64)),
            Variable::named("total", Tensor::from(0.0f64)),
        )
    };
    let (ce, te) = vars();
    let (cc, tc) = vars();
    let (c2, t2) = (cc.clone(), tc.clone());
    let f = function(move |n: &Tensor| count_to(&c2, &t2, n));
    for n in [7i64, 4, 9] {
        let n = Tensor::from(n);
        let eager = count_to(&ce, &te, &n).unwrap();
        let compiled = f.call(&n).unwrap();
        assert!(same_bits(&eager, &compiled), "n={n}: {eager} vs {compiled}");
        assert_eq!(
            ce.value().to_scalar_f64().unwrap(),
            cc.value().to_scalar_f64().unwrap()
        );
        assert!(same_bits(&te.value(), &tc.value()), "{} vs {}", te, tc);
    }
    // 2 -> 7 (5 steps), 7 (no step: 7 < 4 is false), 7 -> 9 (2 steps)
    assert_eq!(cc.value().to_scalar_f64().unwrap(), 9.0);
    let want = (3..=9).map(|c| c as f64 * 0.1).fold(0.0, |a, b| a + b);
    assert!((s(&tc.value()) - want).abs() < 1e-12, "{}", tc);
    assert_eq!(f.trace_count(), 1);
    let text = f.concrete(&[&Tensor::from(3i64)]).unwrap().text();
    assert!(
        text.contains("= while[") && text.contains("assign"),
        "{text}"
    );
}

#[test]
fn assignments_after_a_traced_loop_name_the_users_line() {
    let counter = Variable::non_trainable("counter", Tensor::from(2i64));
    let total = Variable::named("total", Tensor::from(0.0f64));
    let f = function(move |n: &Tensor| count_to(&counter, &total, n));
    let c = f.concrete(&[&Tensor::from(3i64)]).unwrap();
    let g = c.traced_graph();
    let assigns: Vec<_> = g
        .node_ids()
        .into_iter()
        .filter(|&n| matches!(g.node(n).op, tapeflow::ops::Op::Assign(_)))
        .collect();
    assert_eq!(assigns.len(), 2, "{g}");
    for n in assigns {
        let loc = g.node(n).loc.expect("assign has a location");
        assert!(loc.file().ends_with("control.rs"), "{loc}");
        assert!(!loc.file().contains("src"), "{loc} is inside tapeflow");
        assert_eq!(loc.line(), COUNT_TO_LOOP_LINE, "{loc}");
    }
}

#[test]
fn variable_accumulated_in_a_traced_scan() {
    // acc += x_t at every step; y_t is acc read after the assignment (a running sum
    // starting from acc's value), and the carry is a cumulative product whose gradient
    // a tape takes in the same function
    let run = |acc: &Variable, xs: &Tensor| -> tapeflow::Result<(Tensor, Tensor, Tensor)> {
        let tape = GradientTape::new();
        let (p, ys) = tape.record(|| {
            tape.watch(xs);
            scan(
                |c, x| {
                    acc.assign_add(&x[0]);
                    Ok((vec![&c[0] * &x[0]], vec![acc.read()]))
                },
                &[Tensor::from(1.0f64)],
                std::slice::from_ref(xs),
            )
        })?;
        let g = tape.gradient(&p[0], xs)?;
        Ok((ys[0].clone(), p[0].clone(), g))
    };
    let (ae, ac) = (
        Variable::non_trainable("acc", Tensor::from(0.5f64)),
        Variable::non_trainable("acc", Tensor::from(0.5f64)),
    );
    let a2 = ac.clone();
    let f = function(move |xs: &Tensor| run(&a2, xs));
    let v = [1.5f64, -2.0, 0.25, 3.0];
    let xs = Tensor::vec(&v);
    for call in 0..2 {
        let (ys_e, p_e, g_e) = run(&ae, &xs).unwrap();
        let (ys_c, p_c, g_c) = f.call(&xs).unwrap();
        assert!(same_bits(&ys_e, &ys_c), "{ys_e} vs {ys_c}");
        assert!(same_bits(&p_e, &p_c) && same_bits(&g_e, &g_c));
        assert!(same_bits(&ae.value(), &ac.value()));
        // the second call starts from the first call's final value, 0.5 + 2.75
        let start = 0.5 + 2.75 * call as f64;
        let mut run_sum = start;
        let want: Vec<f64> = v
            .iter()
            .map(|x| {
                run_sum += x;
                run_sum
            })
            .collect();
        assert_eq!(ys_c.to_vec_f64().unwrap(), want);
        assert_eq!(s(&ac.value()), start + 2.75);
        // d/dx_i Π x = Π x / x_i
        let prod: f64 = v.iter().product();
        let g = g_c.to_vec_f64().unwrap();
        for i in 0..4 {
            assert!((g[i] - prod / v[i]).abs() < 1e-12, "{g:?}");
        }
    }
    assert_eq!(f.trace_count(), 1);
    assert!(f.concrete(&[&xs]).unwrap().text().contains("= scan["));
}

#[test]
fn variable_assigned_in_one_cond_branch_only() {
    // the branch taken assigns; the other passes the old value through
    let run = |hits: &Variable, last: &Variable, x: &Tensor| -> tapeflow::Result<Tensor> {
        let r = cond(
            &x.gt(&f64s(0.0)),
            || {
                hits.assign_add(&Tensor::from(1i64));
                last.assign(x);
                // a read after the assign sees the new value
                Ok(vec![&last.read() * 2.0])
            },
            || Ok(vec![&last.read() - x]),
        )?;
        Ok(r[0].clone())
    };
    let vars = || {
        (
            Variable::non_trainable("hits", Tensor::from(0i64)),
            Variable::non_trainable("last", Tensor::from(0.0f64)),
        )
    };
    let ((he, le), (hc, lc)) = (vars(), vars());
    let (h2, l2) = (hc.clone(), lc.clone());
    let f = function(move |x: &Tensor| run(&h2, &l2, x));
    let mut want_hits = 0.0;
    for (x, want_y) in [(3.0, 6.0), (-1.0, 4.0), (0.0, 3.0), (2.5, 5.0), (-0.5, 3.0)] {
        let x = f64s(x);
        let (ye, yc) = (run(&he, &le, &x).unwrap(), f.call(&x).unwrap());
        assert!(same_bits(&ye, &yc));
        assert_eq!(s(&yc), want_y, "x={x}");
        if s(&x) > 0.0 {
            want_hits += 1.0;
            assert_eq!(s(&lc.value()), s(&x));
        }
        assert_eq!(hc.value().to_scalar_f64().unwrap(), want_hits);
        assert_eq!(he.value().to_scalar_f64().unwrap(), want_hits);
        assert!(same_bits(&le.value(), &lc.value()));
    }
    assert_eq!(f.trace_count(), 1);
    let text = f.concrete(&[&f64s(1.0)]).unwrap().text();
    assert!(
        text.contains("= cond ") && text.contains("assign[hits]"),
        "{text}"
    );
}

/// One training step: the loss and its gradient on a tape, then `FORI_UNROLL_MAX + 2`
/// small descent steps on the weights in a `fori_loop` (which stays a `while` when
/// traced), each reading the weights the previous one wrote, and a step counter.
fn train_step(w: &Variable, steps: &Variable, x: &Tensor) -> tapeflow::Result<(Tensor, Tensor)> {
    let tape = GradientTape::new();
    let loss = tape.record(|| (&w.read() * x).square().sum_all());
    let g = tape.gradient(&loss, w)?;
    let n = tapeflow::control::FORI_UNROLL_MAX + 2;
    let out = fori_loop(
        0,
        n,
        |_, c| {
            w.assign_sub(&(&g * 0.01));
            steps.assign_add(&Tensor::from(1i64));
            Ok(vec![&c[0] + &w.read().sum_all()])
        },
        &[f64s(0.0)],
    )?;
    Ok((loss, out[0].clone()))
}

#[test]
fn train_step_updates_a_variable_in_a_fori_loop_and_sees_it_next_call() {
    let vars = || {
        (
            Variable::named("w", Tensor::vec(&[1.0f64, -2.0])),
            Variable::non_trainable("steps", Tensor::from(0i64)),
        )
    };
    let ((we, se), (wc, sc)) = (vars(), vars());
    let (w2, s2) = (wc.clone(), sc.clone());
    let f = function(move |x: &Tensor| train_step(&w2, &s2, x));
    let x = Tensor::vec(&[0.5f64, 3.0]);
    let n = (tapeflow::control::FORI_UNROLL_MAX + 2) as f64;
    let mut w_want = [1.0f64, -2.0];
    for call in 1..=2 {
        let (loss_e, sum_e) = train_step(&we, &se, &x).unwrap();
        let (loss_c, sum_c) = f.call(&x).unwrap();
        assert!(same_bits(&loss_e, &loss_c) && same_bits(&sum_e, &sum_c));
        assert!(same_bits(&we.value(), &wc.value()), "{we} vs {wc}");
        // loss = Σ (w x)², computed from the weights the previous call left
        let loss: f64 = w_want
            .iter()
            .zip([0.5, 3.0])
            .map(|(w, x)| (w * x) * (w * x))
            .sum();
        assert!((s(&loss_c) - loss).abs() < 1e-12, "call {call}");
        // n steps of w -= 0.01 · 2 w x² with a gradient fixed at the call's start
        for (w, x) in w_want.iter_mut().zip([0.5f64, 3.0]) {
            *w -= n * 0.01 * 2.0 * *w * x * x;
        }
        let got = wc.value().to_vec_f64().unwrap();
        for (g, w) in got.iter().zip(&w_want) {
            assert!((g - w).abs() < 1e-12, "call {call}: {got:?} vs {w_want:?}");
        }
        assert_eq!(sc.value().to_scalar_f64().unwrap(), n * call as f64);
    }
    assert_eq!(f.trace_count(), 1);
    assert!(f.concrete(&[&x]).unwrap().text().contains("= while["));
}

/// √a by Newton's iterations `x ← (x + a/x)/2` from `x₀ = a` until `|x² − a| < 1e-13·a`:
/// the trip count depends on `a`, so traced it is a `while` with a run-time trip count.
fn newton_sqrt(a: &Tensor) -> tapeflow::Result<Tensor> {
    let tol = a * 1e-13;
    let out = while_loop(
        |v| Ok((&(&v[0] * &v[0]) - a).abs().ge(&tol)),
        |v| Ok(vec![&(&v[0] + &(a / &v[0])) * 0.5]),
        std::slice::from_ref(a),
    )?;
    Ok(out[0].clone())
}

/// `(√a, d√a/da, d²√a/da²)` by differentiating the Newton loop twice.
fn newton_sqrt_derivatives(a: &Tensor) -> tapeflow::Result<(Tensor, Tensor, Tensor)> {
    let t2 = GradientTape::new();
    let (y, d1) = t2.record(|| -> tapeflow::Result<_> {
        t2.watch(a);
        let t1 = GradientTape::new();
        let y = t1.record(|| {
            t1.watch(a);
            newton_sqrt(a)
        })?;
        let d1 = t1.gradient(&y, a)?;
        Ok((y, d1))
    })?;
    let d2 = t2.gradient(&d1, a)?;
    Ok((y, d1, d2))
}

#[test]
fn newton_sqrt_in_a_while_loop_differentiates_to_the_implicit_function_value() {
    // The loop is differentiated as the iterations it ran, not as the fixed point; but
    // at the root ∂g/∂x of g(x, a) = (x + a/x)/2 vanishes, so the error of the
    // iterates' first and second derivatives shrinks quadratically like the iterates'
    // own error, and once |x² − a| < 1e-13·a they match the implicit-function values
    // 1/(2√a) and −1/(4 a^{3/2}) up to that error plus f64 rounding over a dozen
    // iterations (largest seen: 4e-14 relative, d² at a = 0.3). Tolerance 1e-12
    // relative. (The dependence through x₀ = a alone dies out quadratically; the one
    // through the captured `a` in every step carries the whole derivative.)
    let f = function(|a: &Tensor| newton_sqrt_derivatives(a));
    for a in [2.0f64, 9.0, 0.3, 150.0] {
        let at = f64s(a);
        let (ye, d1e, d2e) = newton_sqrt_derivatives(&at).unwrap();
        let (yc, d1c, d2c) = f.call(&at).unwrap();
        let want = [a.sqrt(), 0.5 / a.sqrt(), -0.25 / (a * a.sqrt())];
        for (name, got, want) in [
            ("sqrt eager", &ye, want[0]),
            ("d1 eager", &d1e, want[1]),
            ("d2 eager", &d2e, want[2]),
            ("sqrt traced", &yc, want[0]),
            ("d1 traced", &d1c, want[1]),
            ("d2 traced", &d2c, want[2]),
        ] {
            let err = (s(got) - want).abs() / want.abs();
            assert!(
                err < 1e-12,
                "a={a}: {name} = {} vs {want} (rel {err:e})",
                s(got)
            );
        }
    }
    assert_eq!(f.trace_count(), 1);
    assert!(f
        .concrete(&[&f64s(2.0)])
        .unwrap()
        .text()
        .contains("= while["));
}

/// Π x by a `scan` (cumulative product): its Hessian is `Π x / (x_i x_j)` off the
/// diagonal and 0 on it.
fn prod_by_scan(x: &Tensor) -> Tensor {
    cumprod(x).0
}

/// `Σ x_i^n + (Σ x)^n` by a `while_loop` with a trip count `n` known only as a tensor
/// (two carries: `p ← p ⊙ x`, `q ← q · Σx`).
fn powers_by_while(x: &Tensor, n: &Tensor) -> Tensor {
    let sx = x.sum_all();
    let out = while_loop(
        |v| Ok(v[0].lt(n)),
        |v| Ok(vec![&v[0] + 1i64, &v[1] * x, &v[2] * &sx]),
        &[Tensor::from(0i64), x.ones_like(), sx.ones_like()],
    )
    .unwrap();
    &out[1].sum_all() + &out[2]
}

#[test]
fn hessian_hvp_and_jvp_of_functions_with_loops_match_closed_forms() {
    use tapeflow::autodiff::{hessian, hvp, jvp};
    let xv = [1.5f64, -0.5, 2.0];
    let x = Tensor::vec(&xv);
    let v = Tensor::vec(&[0.3f64, 1.0, -2.0]);
    let n = 3i64;
    let nt = Tensor::from(n);
    let nf = n as f64;
    let prod: f64 = xv.iter().product();
    let sx: f64 = xv.iter().sum();
    // closed forms, row-major 3×3
    let h_scan: Vec<f64> = (0..9)
        .map(|k| {
            let (i, j) = (k / 3, k % 3);
            if i == j {
                0.0
            } else {
                prod / (xv[i] * xv[j])
            }
        })
        .collect();
    let h_while: Vec<f64> = (0..9)
        .map(|k| {
            let (i, j) = (k / 3, k % 3);
            let diag = if i == j {
                nf * (nf - 1.0) * xv[i].powi(n as i32 - 2)
            } else {
                0.0
            };
            diag + nf * (nf - 1.0) * sx.powi(n as i32 - 2)
        })
        .collect();
    let vv = v.to_vec_f64().unwrap();
    let mat_vec = |h: &[f64]| -> Vec<f64> {
        (0..3)
            .map(|i| (0..3).map(|j| h[3 * i + j] * vv[j]).sum())
            .collect()
    };
    // jvp: ∇f · v, with ∇(Πx)_i = Πx / x_i and ∇_i = n x_i^{n-1} + n (Σx)^{n-1}
    let g_scan: Vec<f64> = (0..3).map(|i| prod / xv[i]).collect();
    let g_while: Vec<f64> = (0..3)
        .map(|i| nf * xv[i].powi(n as i32 - 1) + nf * sx.powi(n as i32 - 1))
        .collect();
    let dot = |g: &[f64]| -> f64 { g.iter().zip(&vv).map(|(a, b)| a * b).sum() };
    let close = |what: &str, got: &Tensor, want: &[f64]| {
        let got = got.to_vec_f64().unwrap();
        assert_eq!(got.len(), want.len(), "{what}");
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - w).abs() <= 1e-12 * w.abs().max(1.0),
                "{what}: {got:?} vs {want:?}"
            );
        }
    };
    // eager: plain Rust control flow under the tapes
    let scan_f = |x: &Tensor| prod_by_scan(x);
    let while_f = |x: &Tensor| powers_by_while(x, &nt);
    close("hessian scan eager", &hessian(scan_f, &x).unwrap(), &h_scan);
    close(
        "hessian while eager",
        &hessian(while_f, &x).unwrap(),
        &h_while,
    );
    close(
        "hvp scan eager",
        &hvp(scan_f, &x, &v).unwrap(),
        &mat_vec(&h_scan),
    );
    close(
        "hvp while eager",
        &hvp(while_f, &x, &v).unwrap(),
        &mat_vec(&h_while),
    );
    let jvp1 = |f: &dyn Fn(&Tensor) -> Tensor, x: &Tensor, v: &Tensor| {
        jvp(
            |a: &[Tensor]| f(&a[0]),
            std::slice::from_ref(x),
            std::slice::from_ref(v),
        )
        .map(|(_, t)| t)
    };
    close(
        "jvp scan eager",
        &jvp1(&scan_f, &x, &v).unwrap(),
        &[dot(&g_scan)],
    );
    close(
        "jvp while eager",
        &jvp1(&while_f, &x, &v).unwrap(),
        &[dot(&g_while)],
    );
    // traced: the loops are `scan`/`while` ops (n is an argument: a run-time trip count)
    let fs = function(|x: &Tensor, v: &Tensor| {
        let f = |x: &Tensor| prod_by_scan(x);
        Ok((hessian(f, x)?, hvp(f, x, v)?, jvp1(&f, x, v)?))
    });
    let fw = function(|x: &Tensor, v: &Tensor, n: &Tensor| {
        let f = |x: &Tensor| powers_by_while(x, n);
        Ok((hessian(f, x)?, hvp(f, x, v)?, jvp1(&f, x, v)?))
    });
    let (h, hv, jv) = fs.call(&x, &v).unwrap();
    close("hessian scan traced", &h, &h_scan);
    close("hvp scan traced", &hv, &mat_vec(&h_scan));
    close("jvp scan traced", &jv, &[dot(&g_scan)]);
    let (h, hv, jv) = fw.call(&x, &v, &nt).unwrap();
    close("hessian while traced", &h, &h_while);
    close("hvp while traced", &hv, &mat_vec(&h_while));
    close("jvp while traced", &jv, &[dot(&g_while)]);
    let text = fs.concrete(&[&x, &v]).unwrap().traced_graph().to_string();
    assert!(text.contains("= scan["), "{text}");
    let text = fw
        .concrete(&[&x, &v, &nt])
        .unwrap()
        .traced_graph()
        .to_string();
    assert!(text.contains("= while["), "{text}");
}

#[test]
fn variable_assigned_in_a_cond_nested_in_a_while_loop() {
    // Σ of the even i < n: the cond (with no results of its own) assigns on even steps
    // only; the cond's result becomes the while body's assignment, hence its carry
    let run = |evens: &Variable, n: &Tensor| -> tapeflow::Result<()> {
        while_loop(
            |v| Ok(v[0].lt(n)),
            |v| {
                cond(
                    &v[1].gt(&f64s(0.5)),
                    || {
                        evens.assign_add(&v[0]);
                        Ok(vec![])
                    },
                    || Ok(vec![]),
                )?;
                Ok(vec![&v[0] + 1i64, &f64s(1.0) - &v[1]])
            },
            &[Tensor::from(0i64), f64s(1.0)],
        )?;
        Ok(())
    };
    let (ee, ec) = (
        Variable::non_trainable("evens", Tensor::from(0i64)),
        Variable::non_trainable("evens", Tensor::from(0i64)),
    );
    let e2 = ec.clone();
    let f = function(move |n: &Tensor| run(&e2, n));
    let mut want = 0.0;
    for n in [7i64, 4] {
        run(&ee, &Tensor::from(n)).unwrap();
        f.call(&Tensor::from(n)).unwrap();
        want += (0..n).filter(|i| i % 2 == 0).sum::<i64>() as f64;
        assert_eq!(ec.value().to_scalar_f64().unwrap(), want, "n={n}");
        assert_eq!(ee.value().to_scalar_f64().unwrap(), want, "n={n}");
    }
    assert_eq!(f.trace_count(), 1);
}

#[test]
fn a_traced_loop_condition_that_assigns_a_variable_is_an_error() {
    let c = Variable::non_trainable("c", Tensor::from(0i64));
    let f = function(move |n: &Tensor| {
        while_loop(
            |v| {
                c.assign_add(&Tensor::from(1i64));
                Ok(v[0].lt(n))
            },
            |v| Ok(vec![&v[0] + 1i64]),
            &[Tensor::from(0i64)],
        )
        .map(|v| v[0].clone())
    });
    let e = f.call(&Tensor::from(3i64)).unwrap_err().to_string();
    assert!(
        e.contains("while_loop") && e.contains("condition assigns variable `c`"),
        "{e}"
    );
}

#[test]
fn tapes_differentiate_loops_that_assign_variables() {
    // x^n by a while with a run-time n whose body also counts its steps and sums the
    // powers into a trainable variable (read, hence watched, by the tape): the tape
    // differentiates the loop's result as without the assignments; eager == compiled
    let run = |steps: &Variable, acc: &Variable, x: &Tensor, n: &Tensor| {
        let tape = GradientTape::new();
        let y = tape.record(|| {
            tape.watch(x);
            while_loop(
                |v| Ok(v[0].lt(n)),
                |v| {
                    steps.assign_add(&Tensor::from(1i64));
                    acc.assign_add(&(&v[1] * 2.0));
                    Ok(vec![&v[0] + 1i64, &v[1] * x])
                },
                &[Tensor::from(0i64), x.ones_like()],
            )
        })?;
        let g = tape.gradient(&y[1], x)?;
        Ok::<_, tapeflow::Error>((y[1].clone(), g))
    };
    let vars = || {
        (
            Variable::non_trainable("steps", Tensor::from(0i64)),
            Variable::named("acc", Tensor::from(0.0f64)),
        )
    };
    let ((se, ae), (sc, ac)) = (vars(), vars());
    let (s2, a2) = (sc.clone(), ac.clone());
    let f = function(move |x: &Tensor, n: &Tensor| run(&s2, &a2, x, n));
    let x = f64s(1.5);
    let (mut steps, mut acc) = (0.0, 0.0);
    for n in [3i64, 5] {
        let nt = Tensor::from(n);
        let (ye, ge) = run(&se, &ae, &x, &nt).unwrap();
        let (yc, gc) = f.call(&x, &nt).unwrap();
        assert!(same_bits(&ye, &yc) && same_bits(&ge, &gc), "n={n}");
        assert!((s(&yc) - 1.5f64.powi(n as i32)).abs() < 1e-12);
        assert!((s(&gc) - n as f64 * 1.5f64.powi(n as i32 - 1)).abs() < 1e-12);
        steps += n as f64;
        acc += (0..n).map(|k| 2.0 * 1.5f64.powi(k as i32)).sum::<f64>();
        assert_eq!(sc.value().to_scalar_f64().unwrap(), steps);
        assert!((s(&ac.value()) - acc).abs() < 1e-12, "{ac}");
        assert!(same_bits(&ae.value(), &ac.value()));
    }
    assert_eq!(f.trace_count(), 1);
}

#[test]
fn variable_accumulated_in_a_traced_scan_reverse_walks_backwards() {
    // acc += x_t from the last step to the first: ys[t] is acc after step t, a suffix sum
    let run = |acc: &Variable, xs: &Tensor| -> tapeflow::Result<Tensor> {
        let (_, ys) = scan_reverse(
            |c, x| {
                acc.assign_add(&x[0]);
                Ok((c.to_vec(), vec![acc.read()]))
            },
            &[f64s(0.0)],
            std::slice::from_ref(xs),
        )?;
        Ok(ys[0].clone())
    };
    let (ae, ac) = (
        Variable::non_trainable("acc", Tensor::from(1.0f64)),
        Variable::non_trainable("acc", Tensor::from(1.0f64)),
    );
    let a2 = ac.clone();
    let f = function(move |xs: &Tensor| run(&a2, xs));
    let xs = Tensor::vec(&[1.0f64, 2.0, 4.0]);
    let (ye, yc) = (run(&ae, &xs).unwrap(), f.call(&xs).unwrap());
    assert!(same_bits(&ye, &yc));
    assert_eq!(yc.to_vec_f64().unwrap(), [8.0, 7.0, 5.0]);
    assert_eq!((s(&ae.value()), s(&ac.value())), (8.0, 8.0));
}

/// A scan whose body keeps batch rows apart runs as two half-batch scans on two or more
/// threads, with the bits of the whole batch; not when a product in it sums over more
/// than one block of `k` (the GEMM backend cuts `k` > 512 one way for products of at
/// most 64 rows and columns and another for bigger ones, so the 64-row halves of this
/// 128x600x32 product would differ from the whole: compiled differed from eager on 2
/// threads before the row split checked `k`); a batch of 130, whose halves have 65 rows,
/// splits and keeps the bits.
#[test]
fn a_row_separable_scan_over_a_long_product_keeps_the_eager_bits() {
    // 128 rows: halves of 64 rows and 32 columns, which do not split; 130 rows: halves
    // of 65 rows, which do
    for batch in [128, 130] {
        let xs = Tensor::random_uniform(&[3, batch, 600], -1.0, 1.0, 3, DType::F32);
        let w = Tensor::random_uniform(&[600, 32], -0.1, 0.1, 4, DType::F32);
        let h0 = Tensor::zeros(&[batch, 32]);
        let run = |xs: &Tensor, w: &Tensor, h0: &Tensor| {
            let (h, ys) = scan(
                |c, x| {
                    let h = (&x[0].matmul(w) + &c[0]).tanh();
                    Ok((vec![h.clone()], vec![h]))
                },
                std::slice::from_ref(h0),
                std::slice::from_ref(xs),
            )?;
            Ok(vec![h[0].clone(), ys[0].clone()])
        };
        let eager = run(&xs, &w, &h0).unwrap();
        let f = function(move |xs: &Tensor, w: &Tensor, h0: &Tensor| run(xs, w, h0));
        let splits = f
            .concrete(&[&xs, &w, &h0])
            .unwrap()
            .plan()
            .row_split_scans();
        assert_eq!(splits, usize::from(batch == 130), "batch {batch}");
        common::assert_eager_bits_on_1_2_4_threads(&eager, || f.call(&xs, &w, &h0).unwrap());
    }
}

/// A recurrent step for [`scan_bodies_write_stacked_rows_in_place`]: `a = tanh(x·w + c)`,
/// `b = sigmoid(a)·c` and the carry `b - a` (one step group computes the three), `b`
/// stacked, and so is the concatenation of `a` and `b`; with `grad`, the gradients of the stacked values' sum with
/// respect to `w` and `h0` too (a reverse scan over the saved per-step carries).
fn stacked_rows_step(xs: &Tensor, w: &Tensor, h0: &Tensor, grad: bool) -> Vec<Tensor> {
    let tape = GradientTape::persistent();
    let (h, ys) = tape.record(|| {
        tape.watch(w);
        tape.watch(h0);
        scan(
            |c, x| {
                let a = (&x[0].matmul(w) + &c[0]).tanh();
                let b = &a.sigmoid() * &c[0];
                let cat = Tensor::concat(&[&a, &b], 1);
                Ok((vec![&b - &a], vec![b, cat]))
            },
            std::slice::from_ref(h0),
            std::slice::from_ref(xs),
        )
        .unwrap()
    });
    let mut out = vec![h[0].clone(), ys[0].clone(), ys[1].clone()];
    if grad {
        let loss = tape.record(|| &ys[0].sum(&[0, 1, 2], false) + &ys[1].sum(&[0, 1, 2], false));
        out.push(tape.gradient(&loss, w).unwrap());
        out.push(tape.gradient(&loss, h0).unwrap());
    }
    out
}

/// Two `tape.gradient` calls of a persistent tape through one `scan` each build the same
/// reverse scan; CSE merges control-flow nodes whose regions and operands are the same,
/// so the compiled step runs the backward loop once.
#[test]
fn twin_backward_loops_of_a_persistent_tape_merge() {
    let xs = Tensor::random_uniform(&[4, 16, 600], -1.0, 1.0, 5, DType::F32);
    let w = Tensor::random_uniform(&[600, 32], -0.1, 0.1, 6, DType::F32);
    let h0 = Tensor::random_uniform(&[16, 32], -0.5, 0.5, 7, DType::F32);
    let f = function(|xs: &Tensor, w: &Tensor, h0: &Tensor| Ok(stacked_rows_step(xs, w, h0, true)));
    let text = f.concrete(&[&xs, &w, &h0]).unwrap().text();
    // the forward loop and one backward loop
    assert_eq!(text.matches("= scan[").count(), 2, "{text}");
    let eager = stacked_rows_step(&xs, &w, &h0, true);
    common::assert_eager_bits_on_1_2_4_threads(&eager, || f.call(&xs, &w, &h0).unwrap());
}

/// A scan's body writes the values a step group computes and a `concat` straight into
/// the rows of its stacked results, and its carries into the rows that save them for
/// the next step (`exec::control`): in steady state the only rows copied into place are
/// the first step's saved carries (one per half of a row-split scan). The bits stay the
/// eager ones on 1, 2 and 4 threads, whole-batch and row-split (130 rows: halves of 65).
#[test]
fn scan_bodies_write_stacked_rows_in_place() {
    for batch in [16, 130] {
        let xs = Tensor::random_uniform(&[4, batch, 600], -1.0, 1.0, 5, DType::F32);
        let w = Tensor::random_uniform(&[600, 32], -0.1, 0.1, 6, DType::F32);
        let h0 = Tensor::random_uniform(&[batch, 32], -0.5, 0.5, 7, DType::F32);
        for grad in [false, true] {
            let eager = stacked_rows_step(&xs, &w, &h0, grad);
            let f = function(move |xs: &Tensor, w: &Tensor, h0: &Tensor| {
                Ok(stacked_rows_step(xs, w, h0, grad))
            });
            common::assert_eager_bits_on_1_2_4_threads(&eager, || f.call(&xs, &w, &h0).unwrap());
            let plan = f.concrete(&[&xs, &w, &h0]).unwrap().plan();
            let halves = 1 + plan.row_split_scans().min(1);
            let before = plan.stacked_row_copies();
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .unwrap();
            pool.install(|| f.call(&xs, &w, &h0).unwrap());
            let copies = plan.stacked_row_copies() - before;
            let saved_first_rows = if grad { halves } else { 0 };
            assert_eq!(copies, saved_first_rows, "batch {batch}, grad {grad}");
        }
    }
}
