//! The tensor API a TensorFlow user reaches for first: numbers on either side of
//! `+ - * /` in every dtype, typed constructors and `tensor!`, typed scalar accessors,
//! Python-style negative slicing, and printing as TF prints.

use tapeflow::prelude::*;

fn f32s(t: &Tensor) -> Vec<f32> {
    t.to_vec_f32().unwrap()
}

/// Runs `f` eagerly and inside `function`, checks both give `want` in `dtype`.
fn both_modes(x: &Tensor, f: fn(&Tensor) -> Tensor, dtype: DType, want: &[f64]) {
    let eager = f(x);
    assert_eq!(eager.dtype(), dtype);
    assert_eq!(eager.to_vec_f64().unwrap(), want, "eager");
    let traced = function(move |x: &Tensor| Ok(f(x))).call(x).unwrap();
    assert_eq!(traced.dtype(), dtype);
    assert_eq!(traced.to_vec_f64().unwrap(), want, "traced");
}

#[test]
fn literals_of_every_type_work_on_both_sides_for_f32_tensors() {
    let x = tensor![1.0, 2.0, 4.0];
    let d = DType::F32;
    both_modes(&x, |x| 2.0f32 * x, d, &[2.0, 4.0, 8.0]);
    both_modes(&x, |x| x * 2.0f32, d, &[2.0, 4.0, 8.0]);
    both_modes(&x, |x| 2.0 * x, d, &[2.0, 4.0, 8.0]);
    both_modes(&x, |x| x / 2.0, d, &[0.5, 1.0, 2.0]);
    both_modes(&x, |x| 2.0f64 - x, d, &[1.0, 0.0, -2.0]);
    both_modes(&x, |x| 2 * x, d, &[2.0, 4.0, 8.0]);
    both_modes(&x, |x| x - 1, d, &[0.0, 1.0, 3.0]);
    both_modes(&x, |x| 3i64 + x, d, &[4.0, 5.0, 7.0]);
    both_modes(&x, |x| x + 3i32, d, &[4.0, 5.0, 7.0]);
    both_modes(&x, |x| 8 / x.clone(), d, &[8.0, 4.0, 2.0]);
    both_modes(&x, |x| x.clone() * 0.5f32, d, &[0.5, 1.0, 2.0]);
}

#[test]
fn literals_of_every_type_work_on_both_sides_for_f64_tensors() {
    let x = Tensor::vec(&[1.0f64, 2.0, 4.0]);
    let d = DType::F64;
    both_modes(&x, |x| 2.0f32 * x, d, &[2.0, 4.0, 8.0]);
    both_modes(&x, |x| x * 0.1f64, d, &[0.1, 0.2, 0.4]);
    both_modes(&x, |x| 1.0 - x, d, &[0.0, -1.0, -3.0]);
    both_modes(&x, |x| 2 * x, d, &[2.0, 4.0, 8.0]);
    both_modes(&x, |x| x - 1, d, &[0.0, 1.0, 3.0]);
    both_modes(&x, |x| 3i64 + x, d, &[4.0, 5.0, 7.0]);
    both_modes(&x, |x| x / 4i64, d, &[0.25, 0.5, 1.0]);
}

#[test]
fn literals_of_every_type_work_on_both_sides_for_i64_tensors() {
    let t = tensor![1, 2, 4];
    let d = DType::I64;
    both_modes(&t, |t| 3i64 + t, d, &[4.0, 5.0, 7.0]);
    both_modes(&t, |t| t * 2, d, &[2.0, 4.0, 8.0]);
    both_modes(&t, |t| 10 - t, d, &[9.0, 8.0, 6.0]);
    both_modes(&t, |t| t + 1i32, d, &[2.0, 3.0, 5.0]);
    // integral floats are integers
    both_modes(&t, |t| 2.0 * t, d, &[2.0, 4.0, 8.0]);
    both_modes(&t, |t| t * 3.0f32, d, &[3.0, 6.0, 12.0]);
}

#[test]
fn an_exact_i64_literal_keeps_all_its_digits() {
    let big = (1i64 << 60) + 1; // not representable in f64
    let t = Tensor::from(vec![0i64, 1]);
    assert_eq!((&t + big).to_vec_i64().unwrap(), [big, big + 1]);
}

#[test]
fn a_fractional_number_with_an_i64_tensor_is_an_error_not_a_truncation() {
    let t = tensor![1, 2];
    let traced = function(|t: &Tensor| Ok(t * 0.5)).call(&t);
    let msg = traced.unwrap_err().to_string();
    assert!(msg.contains("0.5") && msg.contains("i64"), "{msg}");
    let eager = std::panic::catch_unwind(|| &tensor![1, 2] * 0.5);
    assert!(eager.is_err());
}

#[test]
fn a_suffixed_literal_allows_a_method_on_the_parenthesized_result() {
    let p = tensor![0.5, 0.75];
    assert_eq!(f32s(&(1.0f32 - &p).square()), [0.25, 0.0625]);
    assert_eq!(f32s(&(1 - &p).square()), [0.25, 0.0625]);
    let lr: f32 = 0.5;
    assert_eq!(f32s(&(lr * &p)), [0.25, 0.375]);
}

#[test]
fn from_and_tensor_macro_infer_the_dtype_like_tf_constant() {
    let cases: Vec<(Tensor, DType, Vec<usize>)> = vec![
        (Tensor::from(3.0f32), DType::F32, vec![]),
        (Tensor::from(3.0f64), DType::F64, vec![]),
        (Tensor::from(3i64), DType::I64, vec![]),
        (Tensor::from(3i32), DType::I64, vec![]),
        (Tensor::from(vec![1i64, 2]), DType::I64, vec![2]),
        (Tensor::from(&[1.0f32, 2.0][..]), DType::F32, vec![2]),
        (Tensor::from([1.0f64, 2.0, 3.0]), DType::F64, vec![3]),
        (
            Tensor::from([[1i64, 2], [3, 4], [5, 6]]),
            DType::I64,
            vec![3, 2],
        ),
        (tensor![1.0, 2.0], DType::F32, vec![2]),
        (tensor![-1.5, 2e-3, 1.0 / 3.0], DType::F32, vec![3]),
        (tensor![1, 2, 3], DType::I64, vec![3]),
        (tensor![1, 2.5], DType::F32, vec![2]),
        (tensor![1.0f64, 2.0], DType::F64, vec![2]),
        (tensor![1.0f32, 2.0], DType::F32, vec![2]),
        (tensor![[1.0, 2.0], [3.0, 4.0]], DType::F32, vec![2, 2]),
        (tensor![[[1], [2]], [[3], [4]]], DType::I64, vec![2, 2, 1]),
        (tensor![], DType::F32, vec![0]),
    ];
    for (k, (t, dtype, shape)) in cases.iter().enumerate() {
        assert_eq!((t.dtype(), t.shape()), (*dtype, &shape[..]), "case {k}");
    }
    let x: f64 = 0.1;
    assert_eq!(tensor![x, 1.0].dtype(), DType::F64); // an f64 value stays f64
    assert_eq!(
        tensor![[1.0, 2.0], [3.0, 4.0]].to_vec_f32().unwrap(),
        [1.0, 2.0, 3.0, 4.0]
    );
    assert_eq!(tensor![1.0 / 3.0].to_vec_f32().unwrap(), [1.0f32 / 3.0]);
}

#[test]
fn a_ragged_tensor_literal_panics_with_a_message() {
    let r = std::panic::catch_unwind(|| tensor![[1, 2], [3]]);
    let msg = *r.unwrap_err().downcast::<String>().unwrap();
    assert!(msg.contains("rectangular"), "{msg}");
    // (a number beside a list, `tensor![[1, 2], 3]`, does not compile)
    let r = std::panic::catch_unwind(|| tensor![[1, 2], [[3], [4]]]);
    let msg = *r.unwrap_err().downcast::<String>().unwrap();
    assert!(msg.contains("mixed at depth 2"), "{msg}");
}

#[test]
fn typed_scalar_accessors_keep_the_dtype_digits() {
    let loss = Tensor::from(8.134605f32);
    assert_eq!(loss.to_scalar_f32().unwrap().to_string(), "8.134605");
    assert_eq!(loss.to_scalar().unwrap(), 8.134605f32 as f64); // f64, as before
    assert_eq!(Tensor::from(0.1f64).to_scalar_f64().unwrap(), 0.1);
    let big = (1i64 << 60) + 1;
    assert_eq!(Tensor::from(big).to_scalar_i64().unwrap(), big);
    assert_eq!(Tensor::from(-2.7f32).to_scalar_i64().unwrap(), -2);
    assert_eq!(tensor![[5.0]].to_scalar_f32().unwrap(), 5.0); // any one-element shape
    let err = tensor![1, 2].to_scalar_i64().unwrap_err().to_string();
    assert!(
        err.contains("to_scalar_i64") && err.contains("2 elements"),
        "{err}"
    );
    let sym = function(|x: &Tensor| {
        assert!(x.to_scalar_f32().is_err());
        Ok(x.clone())
    });
    sym.call(&Tensor::from(1.0f32)).unwrap();
}

#[test]
fn negative_slices_count_from_the_end_eagerly_and_traced() {
    let x = Tensor::arange(0, 10, DType::I64);
    let cases: Vec<(Tensor, Vec<i64>)> = vec![
        (x.slice(0, -3..), vec![7, 8, 9]),
        (x.slice(0, ..-7), vec![0, 1, 2]),
        (x.slice(0, -4..-2), vec![6, 7]),
        (x.slice(0, 2..=4), vec![2, 3, 4]),
        (x.slice(0, ..=-9), vec![0, 1]),
        (x.slice(0, ..), (0..10).collect()),
        (x.slice(0, -10..), (0..10).collect()),
        (x.slice(0, 10..), vec![]),
        (x.slice(0, 3usize..5usize), vec![3, 4]),
        (x.slice(-1, -1..), vec![9]),
    ];
    for (k, (t, want)) in cases.iter().enumerate() {
        assert_eq!(&t.to_vec_i64().unwrap(), want, "case {k}");
    }
    let m = Tensor::arange(0, 12, DType::F32).reshape(&[3, 4]);
    let last_cols = function(|m: &Tensor| Ok(m.slice(-1, -2..)))
        .call(&m)
        .unwrap();
    assert_eq!(last_cols.shape(), [3, 2]);
    assert_eq!(f32s(&last_cols), [2.0, 3.0, 6.0, 7.0, 10.0, 11.0]);
    let last_row = function(|m: &Tensor| Ok(m.slice(0, -1..)))
        .call(&m)
        .unwrap();
    assert_eq!(f32s(&last_row), [8.0, 9.0, 10.0, 11.0]);
}

#[test]
fn out_of_range_slices_are_errors_inside_function_and_panics_eagerly() {
    let x = Tensor::arange(0, 5, DType::F32);
    type Case = (fn(&Tensor) -> Tensor, &'static str);
    let bad: Vec<Case> = vec![
        (|x| x.slice(0, -6..), "index -6"),
        (|x| x.slice(0, ..6), "index 6"),
        (|x| x.slice(0, 1..=5), "index 5"),
        (|x| x.slice(0, -1..2), "after its end"),
        (|x| x.slice(1, 0..1), "axis 1"),
        (|x| x.slice(-2, 0..1), "axis -2"),
    ];
    for (f, want) in bad {
        let err = function(move |x: &Tensor| Ok(f(x))).call(&x).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("slice") && msg.contains(want), "{msg}");
        let x2 = x.clone();
        assert!(
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || f(&x2))).is_err(),
            "{want}"
        );
    }
}

#[test]
fn symbolic_axes_take_non_negative_slices_only() {
    let spec = [TensorSpec::with_dims(
        &[Dim::sym("b"), Dim::from(3)],
        DType::F32,
    )];
    let x = Tensor::ones(&[4, 3]);
    let ok = function_with_signature(|x: &Tensor| Ok(x.slice(1, -2..)), &spec);
    assert_eq!(ok.call(&x).unwrap().shape(), [4, 2]);
    let bad = function_with_signature(|x: &Tensor| Ok(x.slice(0, -2..)), &spec);
    let msg = bad.call(&x).unwrap_err().to_string();
    assert!(msg.contains("symbolic length"), "{msg}");
}

#[test]
fn scalars_print_like_tf() {
    let cases = [
        (
            Tensor::from(8.0f32),
            "tf.Tensor(8.0, shape=(), dtype=float32)",
        ),
        (
            Tensor::from(8.134605f32),
            "tf.Tensor(8.134605, shape=(), dtype=float32)",
        ),
        (
            Tensor::from(0.1f64),
            "tf.Tensor(0.1, shape=(), dtype=float64)",
        ),
        (Tensor::from(3i64), "tf.Tensor(3, shape=(), dtype=int64)"),
        (
            Tensor::from(-2.5e-5f32),
            "tf.Tensor(-2.5e-05, shape=(), dtype=float32)",
        ),
        (
            Tensor::from(1e20f64),
            "tf.Tensor(1e+20, shape=(), dtype=float64)",
        ),
        (
            Tensor::from(123456.0f32),
            "tf.Tensor(123456.0, shape=(), dtype=float32)",
        ),
        (
            Tensor::from(f32::NAN),
            "tf.Tensor(nan, shape=(), dtype=float32)",
        ),
        (
            Tensor::from(f64::NEG_INFINITY),
            "tf.Tensor(-inf, shape=(), dtype=float64)",
        ),
    ];
    for (t, want) in cases {
        assert_eq!(t.to_string(), want);
    }
}

#[test]
fn vectors_and_matrices_print_like_tf() {
    let cases = [
        (
            tensor![1.0, 2.0, 3.0],
            "tf.Tensor([1. 2. 3.], shape=(3,), dtype=float32)",
        ),
        (
            tensor![0.1, 2.0],
            "tf.Tensor([0.1 2. ], shape=(2,), dtype=float32)",
        ),
        (
            tensor![1.5, -22.25],
            "tf.Tensor([  1.5  -22.25], shape=(2,), dtype=float32)",
        ),
        (
            tensor![1, -20, 3],
            "tf.Tensor([  1 -20   3], shape=(3,), dtype=int64)",
        ),
        (
            Tensor::vec(&[1.0f64 / 3.0, 2.0]),
            "tf.Tensor([0.33333333 2.        ], shape=(2,), dtype=float64)",
        ),
        (
            tensor![1e-5, 1.0],
            "tf.Tensor([1.e-05 1.e+00], shape=(2,), dtype=float32)",
        ),
        (
            tensor![1.5e10, 2.0],
            "tf.Tensor([1.5e+10 2.0e+00], shape=(2,), dtype=float32)",
        ),
        (
            tensor![1.0, f32::NAN, f32::NEG_INFINITY],
            "tf.Tensor([  1.  nan -inf], shape=(3,), dtype=float32)",
        ),
        (tensor![], "tf.Tensor([], shape=(0,), dtype=float32)"),
        (
            tensor![[1.0, 2.0], [3.0, 4.0]],
            "tf.Tensor(\n[[1. 2.]\n [3. 4.]], shape=(2, 2), dtype=float32)",
        ),
        (
            tensor![[[1, 2], [3, 4]], [[5, 6], [7, 8]]],
            "tf.Tensor(\n[[[1 2]\n  [3 4]]\n\n [[5 6]\n  [7 8]]], shape=(2, 2, 2), dtype=int64)",
        ),
    ];
    for (t, want) in cases {
        assert_eq!(t.to_string(), want);
    }
}

#[test]
fn long_rows_wrap_at_75_columns_like_numpy() {
    let t = Tensor::arange(0, 30, DType::F32);
    assert_eq!(
        t.to_string(),
        "tf.Tensor(\n[ 0.  1.  2.  3.  4.  5.  6.  7.  8.  9. 10. 11. 12. 13. 14. 15. 16. 17.\n \
         18. 19. 20. 21. 22. 23. 24. 25. 26. 27. 28. 29.], shape=(30,), dtype=float32)"
    );
}

#[test]
fn big_tensors_are_summarized_to_their_edges() {
    let v = Tensor::arange(0, 2000, DType::F32);
    assert_eq!(
        v.to_string(),
        "tf.Tensor([0.000e+00 1.000e+00 2.000e+00 ... 1.997e+03 1.998e+03 1.999e+03], \
         shape=(2000,), dtype=float32)"
    );
    let m = Tensor::arange(0, 2000, DType::I64).reshape(&[100, 20]);
    assert_eq!(
        m.to_string(),
        "tf.Tensor(\n[[   0    1    2 ...   17   18   19]\n [  20   21   22 ...   37   38   39]\n \
         [  40   41   42 ...   57   58   59]\n ...\n [1940 1941 1942 ... 1957 1958 1959]\n \
         [1960 1961 1962 ... 1977 1978 1979]\n [1980 1981 1982 ... 1997 1998 1999]], \
         shape=(100, 20), dtype=int64)"
    );
}

#[test]
fn symbolic_tensors_print_their_type_and_line() {
    let spec = [TensorSpec::with_dims(
        &[Dim::sym("b"), Dim::from(784)],
        DType::F32,
    )];
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let seen2 = seen.clone();
    let f = function_with_signature(
        move |x: &Tensor| {
            *seen2.lock().unwrap() = x.to_string();
            Ok(x.clone())
        },
        &spec,
    );
    f.call(&Tensor::zeros(&[2, 784])).unwrap();
    let s = seen.lock().unwrap().clone();
    assert!(s.starts_with("<symbolic f32[b,784] at "), "{s}");
    assert!(s.ends_with('>'), "{s}");
}

#[test]
fn variables_print_like_tf_and_get_tf_default_names() {
    let w = Variable::named("dense/kernel", tensor![[1.0, 2.0], [3.0, 4.0]]);
    assert_eq!(
        w.to_string(),
        "<tf.Variable 'dense/kernel' shape=(2, 2) dtype=float32, numpy=\n\
         array([[1., 2.],\n       [3., 4.]], dtype=float32)>"
    );
    let b = Variable::named("b", Tensor::vec(&[0.5f64, 1.0]));
    assert_eq!(
        b.to_string(),
        "<tf.Variable 'b' shape=(2,) dtype=float64, numpy=array([0.5, 1. ])>"
    );
    let s = Variable::named("s", Tensor::from(1.0f32));
    assert_eq!(
        s.to_string(),
        "<tf.Variable 's' shape=() dtype=float32, numpy=1.0>"
    );
    let e = Variable::named("e", Tensor::vec::<i64>(&[]));
    assert_eq!(
        e.to_string(),
        "<tf.Variable 'e' shape=(0,) dtype=int64, numpy=array([], dtype=int64)>"
    );
    // unnamed variables are `Variable:0`, `Variable_1:0`, ... (one process-wide
    // counter, so other tests may have taken earlier numbers)
    let names: Vec<String> = (0..3)
        .map(|_| Variable::new(Tensor::from(0.0f32)).name().to_string())
        .collect();
    let number = |n: &str| -> u64 {
        match n.strip_prefix("Variable_") {
            Some(rest) => rest.strip_suffix(":0").unwrap().parse().unwrap(),
            None => {
                assert_eq!(n, "Variable:0");
                0
            }
        }
    };
    let nums: Vec<u64> = names.iter().map(|n| number(n)).collect();
    assert!(nums[0] < nums[1] && nums[1] < nums[2], "{names:?}");
}

#[test]
fn the_readme_snippet_does_what_it_says() {
    let x = tensor![[1.0, 2.0], [3.0, 4.0]];
    assert_eq!(tensor![0, 1].dtype(), DType::I64);
    let y = 2.0f32 * &x - 1;
    assert_eq!(f32s(&x.slice(0, -1..)), [3.0, 4.0]);
    assert_eq!(
        y.to_string(),
        "tf.Tensor(\n[[1. 3.]\n [5. 7.]], shape=(2, 2), dtype=float32)"
    );
    let loss: f32 = y.mean_all().to_scalar_f32().unwrap();
    assert_eq!(loss, 4.0);
}

/// `n` values `f(k)` for `k = 0, 1, ...` (computed in f64, then stored in `dtype`, as
/// NumPy's `f(np.arange(n)).astype(dtype)`), reshaped.
fn ramp(n: usize, f: fn(f64) -> f64, dtype: DType, shape: &[usize]) -> Tensor {
    let v: Vec<f64> = (0..n).map(|k| f(k as f64)).collect();
    match dtype {
        DType::F32 => Tensor::from_vec(v.iter().map(|&x| x as f32).collect(), shape),
        DType::F64 => Tensor::from_vec(v, shape),
        DType::I64 => Tensor::from_vec(v.iter().map(|&x| x as i64).collect(), shape),
    }
    .unwrap()
}

/// NumPy's `k * 7919 % 1000`: a scrambled but exact sequence of integers.
fn mix(k: f64) -> f64 {
    ((k as i64 * 7919) % 1000) as f64
}

#[test]
fn printing_matches_numpy_digit_for_digit() {
    let cases: Vec<(Tensor, &str)> = vec![
        // (built by ramp/mix as the NumPy arrays were; strings printed by NumPy 2.4)
        (ramp(50, |k| k / 49.0 * 2.0 - 1.0, DType::F32, &[50]), "tf.Tensor(\n[-1.         -0.9591837  -0.9183673  -0.877551   -0.8367347  -0.79591835\n -0.75510204 -0.71428573 -0.67346936 -0.63265306 -0.59183675 -0.5510204\n -0.5102041  -0.46938777 -0.42857143 -0.3877551  -0.3469388  -0.30612245\n -0.26530612 -0.2244898  -0.18367347 -0.14285715 -0.10204082 -0.06122449\n -0.02040816  0.02040816  0.06122449  0.10204082  0.14285715  0.18367347\n  0.2244898   0.26530612  0.30612245  0.3469388   0.3877551   0.42857143\n  0.46938777  0.5102041   0.5510204   0.59183675  0.63265306  0.67346936\n  0.71428573  0.75510204  0.79591835  0.8367347   0.877551    0.9183673\n  0.9591837   1.        ], shape=(50,), dtype=float32)"),
        (ramp(1200, |k| mix(k) / 137.0 - 3.5, DType::F32, &[4, 300]), "tf.Tensor(\n[[-3.5         3.2080293   2.6167884  ...  3.3832116   2.7919707\n   2.2007298 ]\n [ 1.6094891   1.0182482   0.4270073  ...  1.1934307   0.6021898\n   0.0109489 ]\n [-0.580292   -1.1715329  -1.7627738  ... -0.99635035 -1.5875913\n  -2.178832  ]\n [-2.770073   -3.3613138   3.3467152  ... -3.1861315   3.5218978\n   2.930657  ]], shape=(4, 300), dtype=float32)"),
        (ramp(24, |k| k / 7.0, DType::F64, &[2, 3, 4]), "tf.Tensor(\n[[[0.         0.14285714 0.28571429 0.42857143]\n  [0.57142857 0.71428571 0.85714286 1.        ]\n  [1.14285714 1.28571429 1.42857143 1.57142857]]\n\n [[1.71428571 1.85714286 2.         2.14285714]\n  [2.28571429 2.42857143 2.57142857 2.71428571]\n  [2.85714286 3.         3.14285714 3.28571429]]], shape=(2, 3, 4), dtype=float64)"),
        (ramp(15, |k| mix(k) / 1000.0 * 1e-3 - 5e-4, DType::F64, &[3, 5]), "tf.Tensor(\n[[-5.00e-04  4.19e-04  3.38e-04  2.57e-04  1.76e-04]\n [ 9.50e-05  1.40e-05 -6.70e-05 -1.48e-04 -2.29e-04]\n [-3.10e-04 -3.91e-04 -4.72e-04  4.47e-04  3.66e-04]], shape=(3, 5), dtype=float64)"),
        (Tensor::arange(0, 10000, DType::I64).reshape(&[10, 10, 100]), "tf.Tensor(\n[[[   0    1    2 ...   97   98   99]\n  [ 100  101  102 ...  197  198  199]\n  [ 200  201  202 ...  297  298  299]\n  ...\n  [ 700  701  702 ...  797  798  799]\n  [ 800  801  802 ...  897  898  899]\n  [ 900  901  902 ...  997  998  999]]\n\n [[1000 1001 1002 ... 1097 1098 1099]\n  [1100 1101 1102 ... 1197 1198 1199]\n  [1200 1201 1202 ... 1297 1298 1299]\n  ...\n  [1700 1701 1702 ... 1797 1798 1799]\n  [1800 1801 1802 ... 1897 1898 1899]\n  [1900 1901 1902 ... 1997 1998 1999]]\n\n [[2000 2001 2002 ... 2097 2098 2099]\n  [2100 2101 2102 ... 2197 2198 2199]\n  [2200 2201 2202 ... 2297 2298 2299]\n  ...\n  [2700 2701 2702 ... 2797 2798 2799]\n  [2800 2801 2802 ... 2897 2898 2899]\n  [2900 2901 2902 ... 2997 2998 2999]]\n\n ...\n\n [[7000 7001 7002 ... 7097 7098 7099]\n  [7100 7101 7102 ... 7197 7198 7199]\n  [7200 7201 7202 ... 7297 7298 7299]\n  ...\n  [7700 7701 7702 ... 7797 7798 7799]\n  [7800 7801 7802 ... 7897 7898 7899]\n  [7900 7901 7902 ... 7997 7998 7999]]\n\n [[8000 8001 8002 ... 8097 8098 8099]\n  [8100 8101 8102 ... 8197 8198 8199]\n  [8200 8201 8202 ... 8297 8298 8299]\n  ...\n  [8700 8701 8702 ... 8797 8798 8799]\n  [8800 8801 8802 ... 8897 8898 8899]\n  [8900 8901 8902 ... 8997 8998 8999]]\n\n [[9000 9001 9002 ... 9097 9098 9099]\n  [9100 9101 9102 ... 9197 9198 9199]\n  [9200 9201 9202 ... 9297 9298 9299]\n  ...\n  [9700 9701 9702 ... 9797 9798 9799]\n  [9800 9801 9802 ... 9897 9898 9899]\n  [9900 9901 9902 ... 9997 9998 9999]]], shape=(10, 10, 100), dtype=int64)"),
        (ramp(2000, |k| k * 1e-3, DType::F64, &[1000, 2]), "tf.Tensor(\n[[0.000e+00 1.000e-03]\n [2.000e-03 3.000e-03]\n [4.000e-03 5.000e-03]\n ...\n [1.994e+00 1.995e+00]\n [1.996e+00 1.997e+00]\n [1.998e+00 1.999e+00]], shape=(1000, 2), dtype=float64)"),
        (tensor![f32::INFINITY, f32::NAN], "tf.Tensor([inf nan], shape=(2,), dtype=float32)"),
        (Tensor::vec(&[1e-5f64, f64::NAN]), "tf.Tensor([1.e-05    nan], shape=(2,), dtype=float64)"),
        (Tensor::vec(&[1e8f64, 1.0]), "tf.Tensor([1.e+08 1.e+00], shape=(2,), dtype=float64)"),
        (tensor![-0.0, 1.0], "tf.Tensor([-0.  1.], shape=(2,), dtype=float32)"),
        (tensor![123456789.0, 1.0], "tf.Tensor([1.2345679e+08 1.0000000e+00], shape=(2,), dtype=float32)"),
        (tensor![0.1, 0.2, 0.30000001], "tf.Tensor([0.1 0.2 0.3], shape=(3,), dtype=float32)"),
        (Tensor::from(1e16f64), "tf.Tensor(1e+16, shape=(), dtype=float64)"),
        (Tensor::from(1e15f64), "tf.Tensor(1000000000000000.0, shape=(), dtype=float64)"),
        (Tensor::from(1e-4f32), "tf.Tensor(1e-04, shape=(), dtype=float32)"),
        (Tensor::from(9.9e-5f64), "tf.Tensor(9.9e-05, shape=(), dtype=float64)"),
        (Tensor::from(0.1f32 + 0.2f32), "tf.Tensor(0.3, shape=(), dtype=float32)"),
        (Tensor::from(1.0f64 / 3.0), "tf.Tensor(0.3333333333333333, shape=(), dtype=float64)"),
        (tensor![[]], "tf.Tensor([], shape=(1, 0), dtype=float32)"),
    ];
    for (k, (t, want)) in cases.iter().enumerate() {
        assert_eq!(t.to_string(), *want, "case {k}");
    }
}

#[test]
fn variables_print_numpy_repr_like_tf() {
    let cases: Vec<(Tensor, &str)> = vec![
        (ramp(40, |k| k, DType::F32, &[40]), "<tf.Variable 'v' shape=(40,) dtype=float32, numpy=\narray([ 0.,  1.,  2.,  3.,  4.,  5.,  6.,  7.,  8.,  9., 10., 11., 12.,\n       13., 14., 15., 16., 17., 18., 19., 20., 21., 22., 23., 24., 25.,\n       26., 27., 28., 29., 30., 31., 32., 33., 34., 35., 36., 37., 38.,\n       39.], dtype=float32)>"),
        (ramp(12, |k| mix(k) / 137.0 - 3.5, DType::F32, &[3, 4]), "<tf.Variable 'v' shape=(3, 4) dtype=float32, numpy=\narray([[-3.5       ,  3.2080293 ,  2.6167884 ,  2.0255475 ],\n       [ 1.4343066 ,  0.8430657 ,  0.25182483, -0.33941606],\n       [-0.9306569 , -1.5218978 , -2.1131387 , -2.7043796 ]],\n      dtype=float32)>"),
        (ramp(3000, |k| k, DType::F64, &[30, 100]), "<tf.Variable 'v' shape=(30, 100) dtype=float64, numpy=\narray([[0.000e+00, 1.000e+00, 2.000e+00, ..., 9.700e+01, 9.800e+01,\n        9.900e+01],\n       [1.000e+02, 1.010e+02, 1.020e+02, ..., 1.970e+02, 1.980e+02,\n        1.990e+02],\n       [2.000e+02, 2.010e+02, 2.020e+02, ..., 2.970e+02, 2.980e+02,\n        2.990e+02],\n       ...,\n       [2.700e+03, 2.701e+03, 2.702e+03, ..., 2.797e+03, 2.798e+03,\n        2.799e+03],\n       [2.800e+03, 2.801e+03, 2.802e+03, ..., 2.897e+03, 2.898e+03,\n        2.899e+03],\n       [2.900e+03, 2.901e+03, 2.902e+03, ..., 2.997e+03, 2.998e+03,\n        2.999e+03]])>"),
        (Tensor::arange(0, 3, DType::I64), "<tf.Variable 'v' shape=(3,) dtype=int64, numpy=array([0, 1, 2])>"),
        (ramp(2, |k| k * 1e-6, DType::F32, &[2]), "<tf.Variable 'v' shape=(2,) dtype=float32, numpy=array([0.e+00, 1.e-06], dtype=float32)>"),
        (Tensor::zeros(&[2, 0]), "<tf.Variable 'v' shape=(2, 0) dtype=float32, numpy=array([], shape=(2, 0), dtype=float32)>"),
    ];
    for (k, (t, want)) in cases.into_iter().enumerate() {
        assert_eq!(Variable::named("v", t).to_string(), want, "case {k}");
    }
}
