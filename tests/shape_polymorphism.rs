//! Shape-polymorphic compiled functions: one trace with a symbolic batch serves every
//! batch size and gives, at each size, the bits a trace at that size gives.

mod common;

use common::{fake_batch, Mlp};
use tapeflow::nn::{Activation, Conv2D, Dense, Flatten, MaxPooling2D, Sequential};
use tapeflow::{
    function, function_with_signature, DType, Dim, GradientTape, Tensor, TensorSpec, Variable,
};

const SIZES: [usize; 5] = [1, 7, 32, 64, 1000];

fn bits(t: &Tensor) -> Vec<u64> {
    t.to_vec_f64()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

fn mnist_signature() -> [TensorSpec; 2] {
    let b = Dim::sym("b");
    [
        TensorSpec::with_dims(&[b, Dim::from(784)], DType::F32),
        TensorSpec::with_dims(&[b], DType::I64),
    ]
}

#[test]
fn one_symbolic_mlp_train_step_matches_concrete_traces_bit_for_bit_at_every_batch_size() {
    let (sym, conc) = (Mlp::new(5), Mlp::new(5));
    let (sym_vars, conc_vars) = (sym.vars.clone(), conc.vars.clone());
    let sym_step = function_with_signature(
        move |x: &Tensor, y: &Tensor| sym.train_step(x, y, 0.1),
        &mnist_signature(),
    );
    let conc_step =
        function(move |x: &Tensor, y: &Tensor| conc.train_step(x, y, 0.1)).reduce_retracing(false);
    for (k, &n) in SIZES.iter().enumerate() {
        let (x, y) = fake_batch(n, 40 + k as u64);
        let a = sym_step.call(&x, &y).unwrap();
        let b = conc_step.call(&x, &y).unwrap();
        assert_eq!(bits(&a), bits(&b), "loss at batch {n}");
    }
    for (s, c) in sym_vars.iter().zip(&conc_vars) {
        assert_eq!(bits(&s.value()), bits(&c.value()), "{}", s.name());
    }
    assert_eq!(sym_step.trace_count(), 1);
    assert_eq!(conc_step.trace_count(), SIZES.len());
    let c = sym_step
        .concrete(&[&fake_batch(3, 1).0, &fake_batch(3, 1).1])
        .unwrap();
    assert!(c.is_symbolic());
    assert_eq!(c.instance_count(), SIZES.len());
    assert!(
        c.text().starts_with("graph(%0: f32[b,784], %1: i64[b])"),
        "{}",
        c.text()
    );
}

/// conv (valid) → relu → pool → flatten → dense, sparse cross-entropy, SGD on all.
fn cnn() -> (Sequential, Vec<Variable>) {
    let model = Sequential::new()
        .add(Conv2D::new(4, 3).activation(Activation::Relu))
        .add(MaxPooling2D::new((2, 2)))
        .add(Flatten::new())
        .add(Dense::new(10));
    model.build(&[12, 12, 1]).unwrap();
    let vars = model.trainable_variables();
    (model, vars)
}

fn cnn_step(
    model: &Sequential,
    vars: &[Variable],
    x: &Tensor,
    y: &Tensor,
) -> tapeflow::Result<Tensor> {
    let tape = GradientTape::new();
    let loss = tape.record(|| {
        let logits = model.call(x, true).expect("fits");
        common::sparse_ce_from_logits(y, &logits)
    });
    let grads = tape.gradient(&loss, vars)?;
    for (v, g) in vars.iter().zip(grads) {
        v.assign_sub(&(g.expect("connected") * 0.05));
    }
    Ok(loss)
}

#[test]
fn one_symbolic_cnn_train_step_matches_concrete_traces_bit_for_bit() {
    let ((sm, sv), (cm, cv)) = (cnn(), cnn());
    for (s, c) in sv.iter().zip(&cv) {
        c.assign(&s.value());
    }
    let (sv2, cv2) = (sv.clone(), cv.clone());
    let b = Dim::sym("b");
    let sym_step = function_with_signature(
        move |x: &Tensor, y: &Tensor| cnn_step(&sm, &sv2, x, y),
        &[
            TensorSpec::with_dims(&[b, 12.into(), 12.into(), 1.into()], DType::F32),
            TensorSpec::with_dims(&[b], DType::I64),
        ],
    );
    let conc_step =
        function(move |x: &Tensor, y: &Tensor| cnn_step(&cm, &cv2, x, y)).reduce_retracing(false);
    for (k, n) in [1usize, 7, 32, 64].into_iter().enumerate() {
        let x = Tensor::random_normal(&[n, 12, 12, 1], 0.0, 1.0, 70 + k as u64, DType::F32);
        let y = fake_batch(n, 80 + k as u64).1;
        let a = sym_step.call(&x, &y).unwrap();
        let c = conc_step.call(&x, &y).unwrap();
        assert_eq!(bits(&a), bits(&c), "loss at batch {n}");
    }
    for (s, c) in sv.iter().zip(&cv) {
        assert_eq!(bits(&s.value()), bits(&c.value()), "{}", s.name());
    }
    assert_eq!((sym_step.trace_count(), conc_step.trace_count()), (1, 4));
}

#[test]
fn a_symbolic_second_derivative_matches_concrete_traces() {
    let spec = [TensorSpec::new(&[None], DType::F64)];
    let sym = function_with_signature(|x: &Tensor| common::sin_exp_second_derivative(x), &spec);
    let conc = function(|x: &Tensor| common::sin_exp_second_derivative(x)).reduce_retracing(false);
    for n in SIZES {
        let x = Tensor::random_normal(&[n], 0.0, 1.0, n as u64, DType::F64);
        let a = sym.call(&x).unwrap();
        assert_eq!(bits(&a), bits(&conc.call(&x).unwrap()));
        // d²/dx² [sin(x)·e^(−x²)], elementwise
        let v = x.to_vec_f64().unwrap();
        for (g, x) in a.to_vec_f64().unwrap().iter().zip(v) {
            let e = (-x * x).exp();
            let want = e * (-x.sin() - 4.0 * x * x.cos() + (4.0 * x * x - 2.0) * x.sin());
            assert!(
                (g - want).abs() < 1e-12 * (1.0 + want.abs()),
                "{g} vs {want}"
            );
        }
    }
    assert_eq!(sym.trace_count(), 1);
}

#[test]
fn a_call_that_does_not_fit_the_signature_is_an_error_naming_argument_and_dimension() {
    let f = function_with_signature(
        |x: &Tensor, y: &Tensor| Ok(x.sum(&[1], false) + y),
        &mnist_signature().map(|s| TensorSpec::with_dims(&[Dim::sym("b")], s.dtype())),
    );
    let f = f.input_signature(&[
        TensorSpec::with_dims(&[Dim::sym("b"), Dim::from(3)], DType::F32),
        TensorSpec::with_dims(&[Dim::sym("b")], DType::F32),
    ]);
    f.call(&Tensor::zeros(&[4, 3]), &Tensor::zeros(&[4]))
        .unwrap();
    let e = f
        .call(&Tensor::zeros(&[4, 5]), &Tensor::zeros(&[4]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("argument 0 dimension 1 is 5, the signature expects 3"),
        "{e}"
    );
    // the shared symbol: both batches must agree
    let e = f
        .call(&Tensor::zeros(&[4, 3]), &Tensor::zeros(&[5]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("argument 1 dimension 0 is 5, but symbol b is 4 (argument 0 dimension 0)"),
        "{e}"
    );
    let e = f
        .call(
            &Tensor::zeros(&[4, 3]),
            &Tensor::zeros(&[4]).cast(DType::F64),
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("argument 1 is f64[4], the signature expects f32[b]"),
        "{e}"
    );
    assert_eq!(f.trace_count(), 1);
}

#[test]
fn distinct_symbols_do_not_unify() {
    // two `None`s are two symbols: adding [n] to [m] needs n == m, which a trace on
    // symbols cannot know, so the trace is an error that says so
    let f = function_with_signature(
        |x: &Tensor, y: &Tensor| Ok(x + y),
        &[
            TensorSpec::new(&[None], DType::F32),
            TensorSpec::new(&[None], DType::F32),
        ],
    );
    let e = f
        .call(&Tensor::zeros(&[3]), &Tensor::zeros(&[3]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("f32[_0_0]") && e.contains("f32[_1_0]"), "{e}");
}

#[test]
fn symbol_arithmetic_through_reshape_flatten_and_concat() {
    let f = function_with_signature(
        |x: &Tensor| {
            let rows = x.reshape(&[tapeflow::tensor::dim::mul(x.shape()[0], 28).unwrap(), 28]);
            let flat = x.flatten_batch();
            let both = Tensor::concat(&[&flat, &flat], 0);
            Ok(vec![rows, flat, both])
        },
        &[TensorSpec::new(&[None, Some(28), Some(28)], DType::F32)],
    );
    let c = f.concrete(&[&Tensor::zeros(&[2, 28, 28])]).unwrap();
    let text = c.text();
    assert!(text.contains("f32[_0_0*28,28]"), "{text}");
    assert!(text.contains("f32[_0_0,784]"), "{text}");
    assert!(text.contains("f32[_0_0*2,784]"), "{text}");
    for n in [1, 3] {
        let out = f.call(&Tensor::ones(&[n, 28, 28])).unwrap();
        let shapes: Vec<Vec<usize>> = out.iter().map(|t| t.shape().to_vec()).collect();
        assert_eq!(
            shapes,
            vec![vec![n * 28, 28], vec![n, 784], vec![2 * n, 784]]
        );
    }
    // a reshape whose element count cannot be proven equal is a trace error
    let bad = function_with_signature(
        |x: &Tensor| Ok(x.reshape(&[32, 784])),
        &[TensorSpec::new(&[None, Some(784)], DType::F32)],
    );
    let e = bad
        .call(&Tensor::zeros(&[32, 784]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("element counts differ (_0_0*784 vs 25088)"),
        "{e}"
    );
}

#[test]
fn reduce_retracing_generalizes_once_and_explains_why() {
    let mlp = Mlp::new(9);
    let step = function(move |x: &Tensor, y: &Tensor| mlp.train_step(x, y, 0.1));
    for n in [32, 16, 32, 8, 1] {
        let (x, y) = fake_batch(n, n as u64);
        step.call(&x, &y).unwrap();
    }
    assert_eq!(step.trace_count(), 2);
    let why = step.retrace_reasons();
    assert_eq!(why.len(), 1);
    assert!(
        why[0].contains("argument 0 dimension 0 changed 32 → 16: generalized to symbol b")
            && why[0].contains("argument 1 dimension 0 changed 32 → 16: generalized to symbol b"),
        "{why:?}"
    );
}

#[test]
fn a_closure_that_needs_concrete_lengths_falls_back_to_concrete_traces() {
    // reading the batch length as a number cannot be done on a symbol
    let f = function(|x: &Tensor| {
        let n = x.shape()[0];
        Ok(x.slice_axis(0, 0, n / 2))
    });
    for n in [4, 6, 8] {
        let y = f.call(&Tensor::ones(&[n])).unwrap();
        assert_eq!(y.shape(), [n / 2]);
    }
    assert_eq!(f.trace_count(), 3);
    let why = f.retrace_reasons();
    assert!(why[0].contains("could not generalize to f32[b]"), "{why:?}");
}

#[test]
fn the_verifier_and_parser_check_symbolic_shapes() {
    use tapeflow::ir::{parse, verify};
    let mut g =
        parse("graph(%0: f32[b,4], %1: f32[b,4]) {\n  %2 = add %0, %1 : f32[b,4]\n  return %2\n}")
            .unwrap();
    verify(&g).unwrap();
    // the second input becomes f32[c,4]: b and c are not known to be equal
    let i1 = g.inputs[1];
    g.node_mut(i1).shape = [Dim::sym("c").raw(), 4].into_iter().collect();
    let e = verify(&g).unwrap_err().to_string();
    assert!(e.contains("node 2 (add): shapes do not broadcast"), "{e}");
    // a reshape whose symbolic element counts differ does not parse
    let e = parse("graph(%0: f32[b,4]) {\n  %1 = reshape %0 : f32[b*2,4]\n  return %1\n}")
        .unwrap_err()
        .to_string();
    assert!(e.contains("element counts differ (b*4 vs b*8)"), "{e}");
    // a plan needs bound shapes
    let e = tapeflow::exec::Plan::new(
        parse("graph(%0: f32[b]) {\n  %1 = neg %0 : f32[b]\n  return %1\n}").unwrap(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("symbolic dimension"), "{e}");
}
