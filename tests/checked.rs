//! Checked shapes and attributes (issue 10, items 3, 4, 7 and the minor findings): an
//! over-large shape or an attribute that does not fit is an `Err` inside `function`, a
//! panic with the same message eagerly, and an error from the parser and the verifier —
//! never a wrapped count or a truncated axis.

use std::panic::{catch_unwind, AssertUnwindSafe};
use tapeflow::ir::{self, Graph, Node};
use tapeflow::nn::{Dense, Layer};
use tapeflow::ops::Op;
use tapeflow::tensor::MAX_ELEMENTS;
use tapeflow::{custom_gradient, function, DType, GradientTape, Padding, Shape, Tensor};

/// The panic message of `f`, which must panic.
fn panic_message(f: impl FnOnce() -> Tensor) -> String {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = catch_unwind(AssertUnwindSafe(f));
    std::panic::set_hook(prev);
    let e = r.expect_err("expected a panic");
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// `op` applied to `x` inside `function`: the error message (the call must fail), and
/// the eager panic message, which must be the same apart from the source line.
fn traced_and_eager(x: &Tensor, op: fn(&Tensor) -> Tensor) -> String {
    let f = function(move |x: &Tensor| Ok(op(x)));
    let err = f
        .call(x)
        .map(|_| ())
        .expect_err("traced call must fail")
        .to_string();
    let eager = panic_message(|| op(x));
    let strip = |s: &str| s.split(" (at ").next().unwrap_or_default().to_string();
    assert_eq!(strip(&err), strip(&eager), "traced vs eager message");
    assert!(err.contains("tests/checked.rs"), "{err}");
    err
}

#[test]
fn pad_past_the_element_limit_is_an_err() {
    let x = Tensor::zeros(&[3]);
    let e = traced_and_eager(&x, |x| x.pad_axis(0, u32::MAX as usize, 1));
    assert!(e.starts_with("pad: ") && e.contains("MAX_ELEMENTS"), "{e}");
    // before + after overflowing u32 no longer wraps to a small padding
    let e = traced_and_eager(&x, |x| x.pad_axis(0, u32::MAX as usize, u32::MAX as usize));
    assert!(e.contains("MAX_ELEMENTS"), "{e}");
    let e = traced_and_eager(&x, |x| x.pad_axis(0, 1 << 32, 0));
    assert!(e.contains("before 4294967296 is out of range"), "{e}");
}

#[test]
fn broadcast_to_an_overflowing_shape_is_an_err() {
    let x = Tensor::scalar(1.0);
    let e = traced_and_eager(&x, |x| x.broadcast_to(&[1 << 33, 1 << 33]));
    assert!(
        e.starts_with("broadcast: ") && e.contains("MAX_ELEMENTS"),
        "{e}"
    );
    // a zero-length axis does not hide an over-large one
    let e = traced_and_eager(&x, |x| x.broadcast_to(&[0, 1 << 40]));
    assert!(e.contains("MAX_ELEMENTS"), "{e}");
    let e = traced_and_eager(&x, |x| x.reshape(&[usize::MAX, 2]));
    assert!(
        e.starts_with("reshape: ") && e.contains("MAX_ELEMENTS"),
        "{e}"
    );
    // exactly at the limit is accepted (traced only: nothing is allocated)
    let f = function(|x: &Tensor| Ok(x.broadcast_to(&[MAX_ELEMENTS]).sum_all()));
    let c = f.concrete(&[&x]).expect("a shape at the limit traces");
    let text = tapeflow::ir::print(c.traced_graph(), false);
    assert!(text.contains("f32[4294967295]"), "{text}");
    let e = traced_and_eager(&x, |x| x.broadcast_to(&[MAX_ELEMENTS + 1]));
    assert!(e.contains("MAX_ELEMENTS"), "{e}");
}

#[test]
fn constructors_reject_over_large_shapes() {
    let msg = panic_message(|| Tensor::zeros(&[1 << 33, 1 << 33]));
    assert!(
        msg.starts_with("zeros: ") && msg.contains("MAX_ELEMENTS"),
        "{msg}"
    );
    let msg = panic_message(|| Tensor::full(&[usize::MAX], 1.0, DType::F64));
    assert!(msg.starts_with("full: "), "{msg}");
    let msg = panic_message(|| Tensor::arange(0, i64::MAX, DType::I64));
    assert!(msg.starts_with("arange: "), "{msg}");
    let f = function(|x: &Tensor| Ok(x + &Tensor::ones(&[1 << 40, 1 << 40])));
    let e = f.call(&Tensor::scalar(1.0)).unwrap_err().to_string();
    assert!(
        e.starts_with("ones: ") && e.contains("tests/checked.rs"),
        "{e}"
    );
}

#[test]
fn parser_and_verifier_reject_over_large_shapes() {
    let text = "graph(%0: f32[8589934592,8589934592]) {\n  return %0\n}\n";
    let e = ir::parse(text).unwrap_err().to_string();
    assert!(e.contains("MAX_ELEMENTS") && e.contains("line 1"), "{e}");
    let text = "graph(%0: f32[]) {\n  %1 = broadcast %0 : f32[4294967296]\n  return %1\n}\n";
    let e = ir::parse(text).unwrap_err().to_string();
    assert!(e.contains("MAX_ELEMENTS") && e.contains("line 2"), "{e}");
    // a graph built by hand with such a shape fails verification
    let mut g = Graph::new();
    let big = Shape::from_slice(&[1 << 33, 1 << 33]);
    let x = g.add(Node::new(Op::Input(0), DType::F32, big), &[]);
    g.inputs.push(x);
    g.outputs.push(x);
    let e = ir::verify(&g).unwrap_err().to_string();
    assert!(e.contains("MAX_ELEMENTS"), "{e}");
}

#[test]
fn out_of_range_axes_are_errors_not_truncated() {
    let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]).unwrap();
    let e = traced_and_eager(&x, |x| x.sum_axes(&[17], false));
    assert!(e.starts_with("sum: ") && e.contains("axis 17"), "{e}");
    let e = traced_and_eager(&x, |x| x.sum_axes(&[2], false));
    assert!(e.contains("axis 2 is out of range for rank 2"), "{e}");
    let e = traced_and_eager(&x, |x| x.sum(&[-5], false));
    assert!(e.starts_with("sum: ") && e.contains("axis -5"), "{e}");
    let e = traced_and_eager(&x, |x| x.max(&[-3], false));
    assert!(e.starts_with("max: ") && e.contains("axis -3"), "{e}");
    let e = traced_and_eager(&x, |x| x.mean(&[-3], false));
    assert!(e.contains("axis -3"), "{e}");
    let e = traced_and_eager(&x, |x| Tensor::concat(&[x, x], 256));
    assert!(e.starts_with("concat: ") && e.contains("axis 256"), "{e}");
    let e = traced_and_eager(&x, |x| x.argmax(256));
    assert!(e.starts_with("argmax: ") && e.contains("axis 256"), "{e}");
    let e = traced_and_eager(&x, |x| x.argmax(-3));
    assert!(e.starts_with("argmax: ") && e.contains("axis -3"), "{e}");
    let e = traced_and_eager(&x, |x| x.slice_axis(0, 1 << 32, (1 << 32) + 1));
    assert!(
        e.starts_with("slice: ") && e.contains("start 4294967296"),
        "{e}"
    );
    let e = traced_and_eager(&x, |x| x.slice_axis(256, 0, 1));
    assert!(e.contains("axis 256"), "{e}");
    let e = traced_and_eager(&x, |x| x.gather(&Tensor::vec(&[0i64]), 300));
    assert!(e.starts_with("gather: ") && e.contains("axis 300"), "{e}");
    let e = traced_and_eager(&x, |x| x.scatter_add(&Tensor::vec(&[0i64, 1]), 0, 1 << 32));
    assert!(
        e.starts_with("scatter_add: ") && e.contains("size 4294967296"),
        "{e}"
    );
    let labels = Tensor::vec(&[0i64, 1]);
    let e = traced_and_eager(&labels, |l| l.one_hot(usize::MAX, DType::F32));
    assert!(
        e.starts_with("one_hot: ") && e.contains("depth 18446744073709551615"),
        "{e}"
    );
    // found by tests/fuzz.rs: an integer scatter_add passed the shape rule and failed
    // only when it ran (after later ops' trace-time errors had already been reported)
    let e = traced_and_eager(&x, |x| {
        x.cast(DType::I64)
            .scatter_add(&Tensor::vec(&[0i64, 1]), 0, 2)
    });
    assert!(
        e.starts_with("scatter_add: ") && e.contains("f32 or f64"),
        "{e}"
    );
    let e = traced_and_eager(&x, |x| x.expand_dims(-4));
    assert!(e.contains("axis -4"), "{e}");
    // the valid negative forms still work
    assert_eq!(x.sum(&[-1], false).to_vec_f32().unwrap(), vec![6.0, 15.0]);
    assert_eq!(x.argmax(-2).to_vec_i64().unwrap(), vec![1, 1, 1]);
    assert_eq!(x.expand_dims(-1).shape(), &[2, 3, 1]);
}

#[test]
fn conv_and_pool_strides_are_not_truncated() {
    let x = Tensor::zeros(&[1, 4, 4, 1]);
    let e = traced_and_eager(&x, |x| {
        x.conv2d(&Tensor::ones(&[1, 1, 1, 1]), (257, 1), Padding::Valid)
    });
    assert!(e.starts_with("conv2d: ") && e.contains("stride 257"), "{e}");
    let e = traced_and_eager(&x, |x| x.max_pool2d((2, 258), (1, 1), Padding::Valid));
    assert!(
        e.starts_with("max_pool2d: ") && e.contains("ksize 258"),
        "{e}"
    );
}

#[test]
fn parser_rejects_attributes_that_do_not_fit() {
    let cases = [
        ("concat[axis=256] %0, %0", "axis 256 is out of range"),
        ("argmax[axis=256] %0", "axis 256 is out of range"),
        ("sum[axes=[17]] %0", "axis 17 is out of range"),
        (
            "slice[axis=0, start=4294967296, end=4294967297] %0",
            "start 4294967296",
        ),
        (
            "pad[axis=0, before=0, after=4294967296] %0",
            "after 4294967296",
        ),
    ];
    for (op, want) in cases {
        let text = format!("graph(%0: f32[2,3]) {{\n  %1 = {op} : f32[2,3]\n  return %1\n}}\n");
        let e = ir::parse(&text).unwrap_err().to_string();
        assert!(e.contains(want) && e.contains("line 2"), "{op}: {e}");
    }
    let text = "graph(%0: f32[1,4,4,1], %1: f32[1,1,1,1]) {\n  \
                %2 = conv2d[stride=[257,1], padding=valid] %0, %1 : f32[1,4,4,1]\n  return %2\n}\n";
    let e = ir::parse(text).unwrap_err().to_string();
    assert!(e.contains("stride 257"), "{e}");
}

#[test]
fn gradient_seed_of_another_dtype_is_an_err() {
    let x = Tensor::vec(&[1.0f32, 2.0]);
    let tape = GradientTape::new();
    let y = tape.record(|| {
        tape.watch(&x);
        &x * &x
    });
    let seed = Tensor::vec(&[1.0f64, 1.0]);
    let e = tape.gradient_with(&y, &x, Some(&seed)).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("f64[2]") && msg.contains("f32[2]"), "{msg}");
}

#[test]
fn custom_gradient_with_a_wrong_shape_or_dtype_is_an_err_naming_the_call() {
    type Rule = fn(&[Tensor], &Tensor, &Tensor) -> Vec<Option<Tensor>>;
    let rules: [(Rule, &str); 3] = [
        (
            |_, _, g| vec![Some(g.sum_all())],
            "returned f32[] for input 0 of type f32[3]",
        ),
        (
            |_, _, g| vec![Some(g.cast(DType::F64))],
            "returned f64[3] for input 0 of type f32[3]",
        ),
        (
            |_, _, g| vec![Some(g.clone()), None],
            "returned 2 cotangents for 1 inputs",
        ),
    ];
    for (rule, want) in rules {
        let x = Tensor::vec(&[1.0f32, 2.0, 3.0]);
        let tape = GradientTape::new();
        let line = line!() + 3;
        let y = tape.record(|| {
            tape.watch(&x);
            custom_gradient(&[&x], |v| v[0].sin(), rule)
        });
        let e = tape.gradient(&y, &x).unwrap_err().to_string();
        assert!(
            e.starts_with("custom_gradient: ") && e.contains(want),
            "{e}"
        );
        assert!(e.contains(&format!("tests/checked.rs:{line}")), "{e}");
        // and inside a traced function
        let f = function(move |x: &Tensor| {
            let tape = GradientTape::new();
            let y = tape.record(|| {
                tape.watch(x);
                custom_gradient(&[x], |v| v[0].sin(), rule)
            });
            tape.gradient(&y, x)
        });
        let e = f.call(&Tensor::vec(&[1.0f32, 2.0, 3.0])).unwrap_err();
        assert!(e.to_string().contains(want), "{e}");
    }
}

#[test]
fn squeeze_of_an_axis_longer_than_one_is_an_err() {
    let x = Tensor::zeros(&[2, 3, 1]);
    let e = traced_and_eager(&x, |x| x.squeeze(1));
    assert!(e.contains("axis 1 has length 3"), "{e}");
    let e = traced_and_eager(&x, |x| x.squeeze(3));
    assert!(e.contains("axis 3 is out of range"), "{e}");
    assert_eq!(x.squeeze(-1).shape(), &[2, 3]);
    assert_eq!(x.squeeze(2).shape(), &[2, 3]);
}

#[test]
fn dense_with_zero_units_is_rejected() {
    let d = Dense::new(0).named("empty");
    let e = d
        .call(&Tensor::zeros(&[2, 3]), false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("Dense layer `empty`") && e.contains("units"),
        "{e}"
    );
    assert!(d.compute_output_shape(&[3]).is_err());
    assert!(d.build(&[3]).is_err());
    assert!(d.variables().is_empty());
}

#[test]
fn argmax_points_at_the_first_nan_eagerly_and_compiled() {
    let nan = f32::NAN;
    let rows = vec![
        3.0, nan, 1.0, 5.0, // the NaN at 1
        nan, 1.0, 2.0, nan, // the first NaN at 0
        1.0, 2.0, 7.0, nan, // the NaN at 3, after the maximum
        -1.0, 4.0, 4.0, 0.0, // no NaN: first maximum
    ];
    let x = Tensor::from_vec(rows, &[4, 4]).unwrap();
    let want = vec![1, 0, 3, 1];
    assert_eq!(x.argmax(1).to_vec_i64().unwrap(), want);
    let f = function(|x: &Tensor| Ok(x.argmax(1)));
    assert_eq!(f.call(&x).unwrap().to_vec_i64().unwrap(), want);
    // consistent with max: the picked element is the maximum (NaN where max is NaN)
    let m = x.max(&[1], false).to_vec_f32().unwrap();
    let v = x.to_vec_f32().unwrap();
    for (r, (&i, &mx)) in want.iter().zip(&m).enumerate() {
        let picked = v[r * 4 + i as usize];
        assert!(picked == mx || (picked.is_nan() && mx.is_nan()), "row {r}");
    }
    // along axis 0 and in f64 as well
    let t = x.cast(DType::F64).t();
    assert_eq!(t.argmax(0).to_vec_i64().unwrap(), want);
}

#[test]
fn eager_tape_around_a_compiled_call_points_at_the_users_line() {
    let f = function(|x: &Tensor| Ok(x * x));
    let x = Tensor::vec(&[1.0f32, 2.0]);
    let tape = GradientTape::new();
    let line = line!() + 3;
    let y = tape.record(|| {
        tape.watch(&x);
        f.call(&x).unwrap()
    });
    let loc = y.location().to_string();
    assert!(
        loc.starts_with(&format!("tests/checked.rs:{line}")),
        "{loc}"
    );
    let e = tape.gradient(&y, &x).unwrap_err().to_string();
    assert!(e.contains(&format!("tests/checked.rs:{line}")), "{e}");
    assert!(!e.contains("/rustc/"), "{e}");
}

#[test]
fn compiled_concat_along_a_middle_axis_feeds_slice_reading_kernels() {
    // found by tests/fuzz.rs: the compiled concat returned a non-standard layout that
    // gather and reshape (which read their operand as one slice) panicked on
    let x = Tensor::from_vec((0..12).map(|i| i as f64).collect(), &[2, 1, 2, 3]).unwrap();
    let prog = |x: &Tensor| {
        let c = Tensor::concat(&[x, x], 2);
        let g = c.gather(&Tensor::vec(&[2i64, 0]), 3);
        vec![g, c.log().expand_dims(1)]
    };
    let f = function(move |x: &Tensor| Ok(prog(x)));
    let compiled = f.call(&x).unwrap();
    let eager = prog(&x);
    for (c, e) in compiled.iter().zip(&eager) {
        assert_eq!(c.shape(), e.shape());
        assert_eq!(c.to_vec_f64().unwrap(), e.to_vec_f64().unwrap());
    }
    assert_eq!(compiled[0].to_vec_f64().unwrap()[..4], [2.0, 0.0, 5.0, 3.0]);
}

#[test]
fn matmul_zero_has_one_sign_whatever_the_layout() {
    // found by tests/fuzz.rs: +0 · negative products summed to -0 with a transposed
    // operand and +0 without, so compiled (transpose folded into the matmul) and eager
    // results differed in the sign of zero
    let a = Tensor::from_vec(vec![0.0f64, 0.0, 0.0, 0.0, 0.0, 1.0], &[2, 3]).unwrap();
    let b = Tensor::from_vec(vec![-2.5f64, -1.5, -0.5], &[1, 3]).unwrap();
    let plain = a.matmul_t(&b, false, true);
    let at = a.t();
    let folded = at.matmul_t(&b, true, true);
    let f = function(|a: &Tensor, b: &Tensor| Ok(a.t().t().matmul_t(b, false, true)));
    let compiled = f.call(&a, &b).unwrap();
    for r in [&plain, &folded, &compiled] {
        let bits: Vec<u64> = r
            .to_vec_f64()
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect();
        assert_eq!(bits, vec![0, (-0.5f64).to_bits()], "{r}");
    }
}
