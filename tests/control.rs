//! Control flow (`cond`, `while_loop`, `scan`, `scan_reverse`, `fori_loop`): results,
//! the type errors that name both sides, gradients through them against closed forms
//! (eagerly and inside `function`), and eager == compiled.

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

#[test]
fn traced_scan_is_one_op_with_a_body_block() {
    let u = Variable::named("u", Tensor::random_normal(&[4, 4], 0.0, 0.5, 1, DType::F64));
    let w = Variable::named("w", Tensor::random_normal(&[3, 4], 0.0, 0.5, 2, DType::F64));
    let f = function(move |x: &Tensor| rnn_loss_and_grads(x, &u, &w));
    let x = Tensor::random_normal(&[2, 5, 3], 0.0, 1.0, 3, DType::F64);
    let text = f.concrete(&[&x]).unwrap().text();
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
    let rows: [(&str, F, Vec<Tensor>); 4] = [
        ("scan", scan_row, vec![x4.clone(), w2.clone()]),
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
    let u = Variable::named("u", Tensor::random_normal(&[4, 4], 0.0, 0.5, 1, DType::F64));
    let w = Variable::named("w", Tensor::random_normal(&[3, 4], 0.0, 0.5, 2, DType::F64));
    let rnn = function(move |x: &Tensor| rnn_loss_and_grads(x, &u, &w));
    let x = Tensor::random_normal(&[2, 5, 3], 0.0, 1.0, 3, DType::F64);
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
    let graphs = [
        rnn.concrete(&[&x]).unwrap(),
        pw.concrete(&[&x1, &n1]).unwrap(),
    ];
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
    let u = Variable::named("u", Tensor::random_normal(&[4, 4], 0.0, 0.5, 1, DType::F64));
    let w = Variable::named("w", Tensor::random_normal(&[3, 4], 0.0, 0.5, 2, DType::F64));
    let rnn = function(move |x: &Tensor| rnn_loss_and_grads(x, &u, &w));
    let x = Tensor::random_normal(&[2, 5, 3], 0.0, 1.0, 3, DType::F64);
    let pw = function(|x: &Tensor, n: &Tensor| {
        let tape = GradientTape::new();
        let y = tape.record(|| {
            tape.watch(x);
            power(x, n)
        });
        Ok((y.clone(), tape.gradient(&y, x)?))
    });
    let rnn_text = rnn.concrete(&[&x]).unwrap().text();
    let pw_text = pw
        .concrete(&[&f64s(1.5), &Tensor::from(3i64)])
        .unwrap()
        .text();
    settings.bind(|| {
        insta::assert_snapshot!("scan_rnn_cell_backward", rnn_text);
        insta::assert_snapshot!("while_power_backward", pw_text);
    });
}
