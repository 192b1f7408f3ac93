//! The training stack through the public API: layers against hand-computed values,
//! losses against their formulas, optimizers against their published update rules
//! (computed here in f64, step by step), compiled vs eager training, `fit`, and the
//! errors users hit (wrong shapes, bad labels, misuse of the optimizer).

use tapeflow::nn::{
    input, set_seed, Activation, Adam, AdamW, BinaryCrossentropy, CategoricalAccuracy,
    CategoricalCrossentropy, Conv2D, CosineDecay, Dense, Dropout, ExponentialDecay, FitOptions,
    Flatten, Initializer, Layer, LearningRateSchedule, Loss, MaxPooling2D, MeanSquaredError,
    Metric, Model, Optimizer, RMSprop, Sequential, SparseCategoricalAccuracy,
    SparseCategoricalCrossentropy, SGD,
};
use tapeflow::{function, DType, GradientTape, Padding, Tensor, Variable};

fn t2(v: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape).unwrap()
}

fn f32s(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape).unwrap()
}

fn assert_close(got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "lengths differ: {got:?} vs {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "element {i}: got {g}, want {w} (all: {got:?} vs {want:?})"
        );
    }
}

// ---------------------------------------------------------------------------------------
// layers

#[test]
fn dense_forward_matches_hand_computation() {
    let d = Dense::new(2)
        .activation(Activation::Relu)
        .dtype(DType::F64)
        .named("hand_dense");
    d.build(&[3]).unwrap();
    let k = d.kernel().unwrap();
    let b = d.bias().unwrap();
    assert_eq!(
        (k.name(), b.name()),
        ("hand_dense/kernel", "hand_dense/bias")
    );
    k.assign(&t2(&[1.0, -1.0, 2.0, 0.5, -3.0, 1.0], &[3, 2]));
    b.assign(&t2(&[0.5, -0.25], &[2]));
    let x = t2(&[1.0, 2.0, 3.0, -1.0, 0.0, 2.0], &[2, 3]);
    let y = d.call(&x, false).unwrap().to_vec_f64().unwrap();
    // row 0: [1+4-9+0.5, -1+1+3-0.25] = [-3.5, 2.75] -> relu [0, 2.75]
    // row 1: [-1+0-6+0.5, 1+0+2-0.25] = [-6.5, 2.75] -> relu [0, 2.75]
    assert_eq!(y, vec![0.0, 2.75, 0.0, 2.75]);
}

#[test]
fn dense_acts_on_the_last_axis_of_any_rank() {
    let d = Dense::new(1)
        .kernel_initializer(Initializer::Ones)
        .bias_initializer(Initializer::Constant(1.0));
    let x = f32s(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], &[2, 2, 2]);
    let y = d.call(&x, false).unwrap();
    assert_eq!(y.shape(), &[2, 2, 1]);
    assert_eq!(y.to_vec_f32().unwrap(), vec![4.0, 8.0, 12.0, 16.0]);
    // built for 2 features, it takes any rank with 2 features last, and nothing else
    assert_eq!(
        d.call(&Tensor::ones(&[3, 2]), false).unwrap().shape(),
        &[3, 1]
    );
    assert!(d.call(&Tensor::ones(&[3, 4]), false).is_err());
}

#[test]
fn dense_kernel_is_glorot_uniform_and_bias_zero() {
    let d = Dense::new(300);
    d.build(&[200]).unwrap();
    let k = d.kernel().unwrap().value().to_vec_f64().unwrap();
    let limit = (6.0f64 / 500.0).sqrt();
    assert!(k.iter().all(|v| v.abs() <= limit));
    // U(-l, l) has variance l²/3
    let var = k.iter().map(|v| v * v).sum::<f64>() / k.len() as f64;
    assert!(
        (var - limit * limit / 3.0).abs() < 0.05 * limit * limit / 3.0,
        "variance {var}"
    );
    assert!(d
        .bias()
        .unwrap()
        .value()
        .to_vec_f64()
        .unwrap()
        .iter()
        .all(|v| *v == 0.0));
}

#[test]
fn initializers_follow_keras_fans_and_seeds() {
    assert_eq!(Initializer::fans(&[3, 3, 32, 64]), (288, 576));
    assert_eq!(Initializer::fans(&[784, 10]), (784, 10));
    let a = Initializer::GlorotNormal { seed: Some(5) }.init(&[100, 100], DType::F64, "x");
    let b = Initializer::GlorotNormal { seed: Some(5) }.init(&[100, 100], DType::F64, "y");
    assert_eq!(
        a.to_vec_f64().unwrap(),
        b.to_vec_f64().unwrap(),
        "an explicit seed wins over the name"
    );
    let sd = (2.0f64 / 200.0).sqrt() / 0.879_625_661_034_239_8;
    assert!(
        a.to_vec_f64()
            .unwrap()
            .iter()
            .all(|v| v.abs() <= 2.0 * sd + 1e-12),
        "truncated at 2σ"
    );
    let c = Initializer::GlorotUniform { seed: None }.init(&[4], DType::F32, "same_name");
    let d = Initializer::GlorotUniform { seed: None }.init(&[4], DType::F32, "same_name");
    assert_eq!(
        c.to_vec_f32().unwrap(),
        d.to_vec_f32().unwrap(),
        "derived seeds are reproducible"
    );
    let e = Initializer::GlorotUniform { seed: None }.init(&[4], DType::F32, "other_name");
    assert_ne!(c.to_vec_f32().unwrap(), e.to_vec_f32().unwrap());
    let he = Initializer::HeUniform { seed: Some(1) }
        .init(&[50, 10], DType::F64, "h")
        .to_vec_f64()
        .unwrap();
    assert!(he.iter().all(|v| v.abs() <= (6.0f64 / 50.0).sqrt()));
}

/// Direct convolution in f64: NHWC input, [kh,kw,cin,cout] kernel, TF padding rules.
fn conv_reference(
    x: &[f64],
    xs: [usize; 4],
    k: &[f64],
    ks: [usize; 4],
    stride: usize,
    same: bool,
) -> (Vec<f64>, [usize; 4]) {
    let [n, h, w, cin] = xs;
    let [kh, kw, _, cout] = ks;
    let (oh, ow, pt, pl) = if same {
        let oh = h.div_ceil(stride);
        let ow = w.div_ceil(stride);
        let ph = ((oh - 1) * stride + kh).saturating_sub(h);
        let pw = ((ow - 1) * stride + kw).saturating_sub(w);
        (oh, ow, ph / 2, pw / 2)
    } else {
        ((h - kh) / stride + 1, (w - kw) / stride + 1, 0, 0)
    };
    let mut y = vec![0.0; n * oh * ow * cout];
    for b in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                for co in 0..cout {
                    let mut acc = 0.0;
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let iy = (oy * stride + ky) as isize - pt as isize;
                            let ix = (ox * stride + kx) as isize - pl as isize;
                            if iy < 0 || ix < 0 || iy as usize >= h || ix as usize >= w {
                                continue;
                            }
                            for ci in 0..cin {
                                acc += x[((b * h + iy as usize) * w + ix as usize) * cin + ci]
                                    * k[((ky * kw + kx) * cin + ci) * cout + co];
                            }
                        }
                    }
                    y[((b * oh + oy) * ow + ox) * cout + co] = acc;
                }
            }
        }
    }
    (y, [n, oh, ow, cout])
}

#[test]
fn conv2d_forward_matches_hand_computation() {
    // a tiny case worked by hand: 3x3 input, 2x2 kernel of ones, bias 1
    let c = Conv2D::new(1, 2)
        .dtype(DType::F64)
        .bias_initializer(Initializer::Constant(1.0))
        .kernel_initializer(Initializer::Ones);
    let x = t2(
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
        &[1, 3, 3, 1],
    );
    let y = c.call(&x, false).unwrap();
    assert_eq!(y.shape(), &[1, 2, 2, 1]);
    assert_eq!(y.to_vec_f64().unwrap(), vec![13.0, 17.0, 25.0, 29.0]);

    // general cases against the direct loop: channels, strides, same padding, relu
    for (stride, same) in [(1, false), (2, false), (1, true), (2, true)] {
        let xs = [2, 5, 6, 3];
        let ks = [3, 2, 3, 4];
        let xv = Tensor::random_uniform(&xs, -1.0, 1.0, 11, DType::F64);
        let c = Conv2D::new(4, 3)
            .kernel_size((3, 2))
            .strides((stride, stride))
            .padding(if same { Padding::Same } else { Padding::Valid })
            .activation(Activation::Relu)
            .kernel_initializer(Initializer::RandomUniform {
                min: -1.0,
                max: 1.0,
                seed: Some(3),
            })
            .bias_initializer(Initializer::Constant(0.1))
            .dtype(DType::F64);
        let y = c.call(&xv, false).unwrap();
        let kv = c.variables()[0].value().to_vec_f64().unwrap();
        let (want, shape) = conv_reference(&xv.to_vec_f64().unwrap(), xs, &kv, ks, stride, same);
        assert_eq!(y.shape(), &shape);
        assert_eq!(
            c.compute_output_shape(&xs[1..]).unwrap(),
            shape[1..].to_vec()
        );
        let want: Vec<f64> = want.iter().map(|v| (v + 0.1).max(0.0)).collect();
        assert_close(&y.to_vec_f64().unwrap(), &want, 1e-12);
    }
}

#[test]
fn max_pooling_and_flatten_match_hand_computation() {
    let x = f32s(
        &(0..32).map(|v| ((v * 7) % 11) as f32).collect::<Vec<_>>(),
        &[1, 4, 4, 2],
    );
    let y = MaxPooling2D::new((2, 2)).call(&x, false).unwrap();
    assert_eq!(y.shape(), &[1, 2, 2, 2]);
    let xv = x.to_vec_f32().unwrap();
    let at = |r: usize, c: usize, ch: usize| xv[(r * 4 + c) * 2 + ch];
    let mut want = Vec::new();
    for (r, c) in [(0, 0), (0, 2), (2, 0), (2, 2)] {
        for ch in 0..2 {
            want.push(
                at(r, c, ch)
                    .max(at(r + 1, c, ch))
                    .max(at(r, c + 1, ch))
                    .max(at(r + 1, c + 1, ch)),
            );
        }
    }
    assert_eq!(y.to_vec_f32().unwrap(), want);
    // overlapping windows
    let p = MaxPooling2D::new((3, 3)).strides((1, 1));
    assert_eq!(p.compute_output_shape(&[4, 4, 2]).unwrap(), vec![2, 2, 2]);
    let f = Flatten::new().call(&y, false).unwrap();
    assert_eq!(f.shape(), &[1, 8]);
    assert_eq!(f.to_vec_f32().unwrap(), want);
}

#[test]
fn dropout_is_identity_at_inference_and_scales_kept_units() {
    let d = Dropout::new(0.25).seed(3);
    let x = Tensor::ones(&[8, 500]);
    assert_eq!(
        d.call(&x, false).unwrap().to_vec_f32().unwrap(),
        x.to_vec_f32().unwrap()
    );
    let a = d.call(&x, true).unwrap().to_vec_f32().unwrap();
    let b = d.call(&x, true).unwrap().to_vec_f32().unwrap();
    let dropped = a.iter().filter(|v| **v == 0.0).count() as f64 / a.len() as f64;
    assert!((dropped - 0.25).abs() < 0.02, "dropped fraction {dropped}");
    assert!(a
        .iter()
        .all(|v| *v == 0.0 || (*v - 1.0 / 0.75).abs() < 1e-6));
    assert_ne!(a, b, "each call draws a new mask");
    // neighbouring elements are not correlated
    let mask: Vec<f64> = a.iter().map(|v| (*v != 0.0) as u8 as f64).collect();
    let mean = mask.iter().sum::<f64>() / mask.len() as f64;
    let cov = mask
        .windows(2)
        .map(|w| (w[0] - mean) * (w[1] - mean))
        .sum::<f64>()
        / (mask.len() - 1) as f64;
    assert!(cov.abs() < 0.01, "lag-1 covariance {cov}");
}

#[test]
fn dropout_masks_are_the_same_eager_and_compiled() {
    let x = Tensor::ones(&[4, 64]);
    let eager = Dropout::new(0.5).seed(9).named("drop_eager");
    let traced = std::sync::Arc::new(Dropout::new(0.5).seed(9).named("drop_traced"));
    let t2 = traced.clone();
    let f = function(move |x: &Tensor| t2.call(x, true));
    for _ in 0..3 {
        let e = eager.call(&x, true).unwrap().to_vec_f32().unwrap();
        let c = f.call(&x).unwrap().to_vec_f32().unwrap();
        assert_eq!(e, c);
    }
    assert_eq!(f.trace_count(), 1);
    assert_eq!(
        traced.variables()[0].value().to_vec_i64().unwrap(),
        vec![3],
        "the counter advanced in the graph"
    );
}

#[test]
fn layer_names_are_unique_and_prefix_variables() {
    let a = Dense::new(2);
    let b = Dense::new(2);
    a.build(&[1]).unwrap();
    b.build(&[1]).unwrap();
    assert_ne!(a.name(), b.name());
    for l in [&a, &b] {
        assert!(
            l.name() == "dense" || l.name().starts_with("dense_"),
            "{}",
            l.name()
        );
        let names: Vec<String> = l.variables().iter().map(|v| v.name().to_string()).collect();
        assert_eq!(
            names,
            vec![format!("{}/kernel", l.name()), format!("{}/bias", l.name())]
        );
    }
}

#[test]
fn trainable_variables_are_in_layer_order_kernel_before_bias() {
    let model = Sequential::new()
        .add(Dense::new(3).named("first"))
        .add(Dropout::new(0.1).named("drop"))
        .add(Dense::new(2).named("second"))
        .input_shape(&[4]);
    let names: Vec<String> = model
        .trainable_variables()
        .iter()
        .map(|v| v.name().to_string())
        .collect();
    assert_eq!(
        names,
        ["first/kernel", "first/bias", "second/kernel", "second/bias"]
    );
    let all: Vec<String> = model
        .variables()
        .iter()
        .map(|v| v.name().to_string())
        .collect();
    assert_eq!(
        all,
        [
            "first/kernel",
            "first/bias",
            "drop/seed_generator_state",
            "second/kernel",
            "second/bias"
        ]
    );
}

#[test]
fn cnn_summary_matches_keras() {
    let inputs = input(&[28, 28, 1]);
    let x = Conv2D::new(32, 3)
        .activation(Activation::Relu)
        .apply(&inputs)
        .unwrap();
    let x = MaxPooling2D::new((2, 2)).apply(&x).unwrap();
    let x = Conv2D::new(64, 3)
        .activation(Activation::Relu)
        .apply(&x)
        .unwrap();
    let x = MaxPooling2D::new((2, 2)).apply(&x).unwrap();
    let x = Conv2D::new(64, 3)
        .activation(Activation::Relu)
        .apply(&x)
        .unwrap();
    let x = Flatten::new().apply(&x).unwrap();
    let x = Dense::new(64)
        .activation(Activation::Relu)
        .apply(&x)
        .unwrap();
    let outputs = Dense::new(10).apply(&x).unwrap();
    let model = Model::new(&inputs, &outputs).unwrap();
    let s = model.summary_string().unwrap();
    for (shape, params) in [
        ("(None, 28, 28, 1)", "0"),
        ("(None, 26, 26, 32)", "320"),
        ("(None, 13, 13, 32)", "0"),
        ("(None, 11, 11, 64)", "18496"),
        ("(None, 5, 5, 64)", "0"),
        ("(None, 3, 3, 64)", "36928"),
        ("(None, 576)", "0"),
        ("(None, 64)", "36928"),
        ("(None, 10)", "650"),
    ] {
        assert!(
            s.lines()
                .any(|l| l.contains(shape) && l.trim_end().ends_with(params)),
            "no row {shape} {params} in\n{s}"
        );
    }
    assert!(s.contains("Total params: 93322 (364.54 KB)"), "{s}");
    assert!(s.contains("Trainable params: 93322"), "{s}");
    assert!(s.contains("Non-trainable params: 0 (0.00 Byte)"), "{s}");
    assert_eq!(model.count_params(), 93322);
    assert_eq!(
        model
            .call(&Tensor::zeros(&[2, 28, 28, 1]), false)
            .unwrap()
            .shape(),
        &[2, 10]
    );
}

#[test]
fn wrong_feature_count_is_a_clear_error_eager_and_compiled() {
    let model = Sequential::new()
        .add(Dense::new(4).named("dense_in"))
        .add(Dense::new(2))
        .input_shape(&[784]);
    let bad = Tensor::zeros(&[8, 100]);
    let e = model.call(&bad, false).unwrap_err().to_string();
    assert!(e.contains("[784]") && e.contains("f32[8,100]"), "{e}");

    let layer = std::sync::Arc::new(Dense::new(3).named("lonely_dense"));
    layer.call(&Tensor::zeros(&[2, 5]), false).unwrap();
    let e = layer.call(&bad, false).unwrap_err().to_string();
    assert!(
        e.contains("lonely_dense") && e.contains("5 features") && e.contains("f32[8,100]"),
        "{e}"
    );

    let l2 = layer.clone();
    let f = function(move |x: &Tensor| l2.call(x, false));
    let e = f.call(&bad).unwrap_err().to_string();
    assert!(
        e.contains("lonely_dense") && e.contains("5 features"),
        "{e}"
    );
    assert!(f.call(&Tensor::zeros(&[2, 5])).is_ok());

    let e = Dense::new(2)
        .dtype(DType::F64)
        .call(&Tensor::zeros(&[1, 2]), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("dtype f32") && e.contains("f64"), "{e}");
}

#[test]
fn functional_model_needs_its_own_input() {
    let a = input(&[3]);
    let b = input(&[3]);
    let out = Dense::new(1).apply(&b).unwrap();
    let e = Model::new(&a, &out)
        .err()
        .expect("outputs are not computed from a")
        .to_string();
    assert!(e.contains("computed from input"), "{e}");
    let e = Conv2D::new(1, 5)
        .apply(&input(&[3, 3, 1]))
        .err()
        .expect("window too big")
        .to_string();
    assert!(e.contains("does not fit"), "{e}");
}

// ---------------------------------------------------------------------------------------
// losses

#[test]
fn mean_squared_error_matches_formula() {
    let y = t2(&[1.0, 2.0, 3.0, 4.0], &[2, 2]);
    let p = t2(&[1.5, 2.0, 2.0, 6.0], &[2, 2]);
    let l = MeanSquaredError.call(&y, &p).unwrap().to_scalar().unwrap();
    assert!((l - (0.25 + 0.0 + 1.0 + 4.0) / 4.0).abs() < 1e-15);
    // [n] targets against [n, 1] predictions
    let l = MeanSquaredError
        .call(&t2(&[1.0, 2.0], &[2]), &t2(&[2.0, 4.0], &[2, 1]))
        .unwrap();
    assert_eq!(l.to_scalar().unwrap(), 2.5);
    assert!(MeanSquaredError
        .call(&t2(&[1.0, 2.0, 3.0], &[3]), &t2(&[2.0, 4.0], &[2, 1]))
        .is_err());
}

fn log_softmax_row(r: &[f64]) -> Vec<f64> {
    let m = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + r.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
    r.iter().map(|v| v - lse).collect()
}

#[test]
fn sparse_categorical_crossentropy_matches_formula() {
    let logits = [2.0, -1.0, 0.5, 0.0, 3.0, -2.0];
    let labels = [2i64, 1];
    let want = -(log_softmax_row(&logits[0..3])[2] + log_softmax_row(&logits[3..6])[1]) / 2.0;
    let x = t2(&logits, &[2, 3]);
    let l = SparseCategoricalCrossentropy::from_logits(true)
        .call(&Tensor::vec(&labels), &x)
        .unwrap();
    assert!((l.to_scalar().unwrap() - want).abs() < 1e-12);
    // float labels and [n, 1] labels mean the same
    let l2 = SparseCategoricalCrossentropy::from_logits(true)
        .call(&t2(&[2.0, 1.0], &[2, 1]), &x)
        .unwrap();
    assert!((l2.to_scalar().unwrap() - want).abs() < 1e-12);
    // from probabilities
    let probs = x.softmax(-1);
    let l3 = SparseCategoricalCrossentropy::new()
        .call(&Tensor::vec(&labels), &probs)
        .unwrap();
    assert!((l3.to_scalar().unwrap() - want).abs() < 1e-9);
    // probabilities are clipped: a zero probability gives -ln(1e-7), not infinity
    let l4 = SparseCategoricalCrossentropy::new()
        .call(&Tensor::vec(&[0i64]), &t2(&[0.0, 1.0], &[1, 2]))
        .unwrap();
    assert!((l4.to_scalar().unwrap() + (1e-7f64).ln()).abs() < 1e-6);
}

#[test]
fn crossentropies_are_stable_for_huge_logits() {
    let x = t2(&[1000.0, -1000.0, 0.0], &[1, 3]);
    let l = SparseCategoricalCrossentropy::from_logits(true)
        .call(&Tensor::vec(&[1i64]), &x)
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!((l - 2000.0).abs() < 1e-9, "{l}");
    let g = {
        let tape = GradientTape::new();
        let l = tape.record(|| {
            tape.watch(&x);
            SparseCategoricalCrossentropy::from_logits(true)
                .call(&Tensor::vec(&[1i64]), &x)
                .unwrap()
        });
        tape.gradient(&l, &x).unwrap().to_vec_f64().unwrap()
    };
    // d/dx = softmax(x) - onehot
    assert_close(&g, &[1.0, -1.0, 0.0], 1e-12);
    let c = CategoricalCrossentropy::from_logits(true)
        .call(&t2(&[0.0, 1.0, 0.0], &[1, 3]), &x)
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!((c - 2000.0).abs() < 1e-9);
}

#[test]
fn categorical_crossentropy_matches_formula() {
    let logits = [0.2, 0.1, -0.3, 1.0, 0.0, 0.5];
    let targets = [0.0, 1.0, 0.0, 0.2, 0.3, 0.5];
    let mut want = 0.0;
    for r in 0..2 {
        let lp = log_softmax_row(&logits[r * 3..r * 3 + 3]);
        want -= (0..3).map(|j| targets[r * 3 + j] * lp[j]).sum::<f64>();
    }
    want /= 2.0;
    let l = CategoricalCrossentropy::from_logits(true)
        .call(&t2(&targets, &[2, 3]), &t2(&logits, &[2, 3]))
        .unwrap();
    assert!((l.to_scalar().unwrap() - want).abs() < 1e-12);
    let probs = t2(&logits, &[2, 3]).softmax(-1);
    let l = CategoricalCrossentropy::new()
        .call(&t2(&targets, &[2, 3]), &probs)
        .unwrap();
    assert!((l.to_scalar().unwrap() - want).abs() < 1e-9);
    // label smoothing 0.3 over 3 classes: y' = 0.7·y + 0.1
    let smoothed: Vec<f64> = targets.iter().map(|y| 0.7 * y + 0.1).collect();
    let want_s = CategoricalCrossentropy::from_logits(true)
        .call(&t2(&smoothed, &[2, 3]), &t2(&logits, &[2, 3]))
        .unwrap();
    let got_s = CategoricalCrossentropy::from_logits(true)
        .label_smoothing(0.3)
        .call(&t2(&targets, &[2, 3]), &t2(&logits, &[2, 3]))
        .unwrap();
    assert!((got_s.to_scalar().unwrap() - want_s.to_scalar().unwrap()).abs() < 1e-12);
    assert!(CategoricalCrossentropy::new()
        .call(&t2(&targets[..3], &[1, 3]), &probs)
        .is_err());
}

#[test]
fn binary_crossentropy_matches_formula() {
    let z = [0.0, 1.0, 1.0, 0.0];
    let x = [0.3, -1.2, 2.0, 0.0];
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    let want = z
        .iter()
        .zip(&x)
        .map(|(z, x)| -(z * sig(*x).ln() + (1.0 - z) * (1.0 - sig(*x)).ln()))
        .sum::<f64>()
        / 4.0;
    let l = BinaryCrossentropy::from_logits(true)
        .call(&t2(&z, &[2, 2]), &t2(&x, &[2, 2]))
        .unwrap();
    assert!((l.to_scalar().unwrap() - want).abs() < 1e-12);
    let p: Vec<f64> = x.iter().map(|v| sig(*v)).collect();
    let l = BinaryCrossentropy::new()
        .call(&t2(&z, &[2, 2]), &t2(&p, &[2, 2]))
        .unwrap();
    assert!((l.to_scalar().unwrap() - want).abs() < 1e-9);
    // a certain wrong prediction is clipped, not infinite
    let l = BinaryCrossentropy::new()
        .call(&t2(&[1.0], &[1]), &t2(&[0.0], &[1]))
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!((l + (1e-7f64).ln()).abs() < 1e-6);
}

#[test]
fn labels_out_of_range_are_errors_eager_and_compiled() {
    let loss = SparseCategoricalCrossentropy::from_logits(true);
    let logits = Tensor::zeros(&[3, 10]);
    let e = loss
        .call(&Tensor::vec(&[1i64, 10, 2]), &logits)
        .unwrap_err()
        .to_string();
    assert!(e.contains("label 10") && e.contains("[0, 10)"), "{e}");
    let e = loss
        .call(&Tensor::vec(&[-1.0f32, 0.0, 2.0]), &logits)
        .unwrap_err()
        .to_string();
    assert!(e.contains("label -1"), "{e}");
    let e = loss
        .call(&Tensor::vec(&[1i64, 2]), &logits)
        .unwrap_err()
        .to_string();
    assert!(e.contains("do not fit"), "{e}");

    let f = function(move |y: &Tensor, x: &Tensor| loss.call(y, x));
    assert!(f.call(&Tensor::vec(&[1i64, 9, 2]), &logits).is_ok());
    let e = f
        .call(&Tensor::vec(&[1i64, 10, 2]), &logits)
        .unwrap_err()
        .to_string();
    assert!(e.contains("out of range"), "{e}");
}

// ---------------------------------------------------------------------------------------
// optimizers, against their update rules computed here in f64

const GRADS: [[f64; 2]; 4] = [[0.5, -1.0], [0.25, 2.0], [-0.75, 0.1], [1.5, -0.3]];
const W0: [f64; 2] = [1.0, -2.0];

/// Runs `opt` for the GRADS sequence on an f64 variable, returning the values after each step.
fn run_opt(opt: &dyn Optimizer) -> Vec<Vec<f64>> {
    let w = Variable::named("w_opt", t2(&W0, &[2]));
    GRADS
        .iter()
        .map(|g| {
            opt.apply_gradients(&[Some(t2(g, &[2]))], std::slice::from_ref(&w))
                .unwrap();
            w.value().to_vec_f64().unwrap()
        })
        .collect()
}

fn check_steps(got: &[Vec<f64>], want: &[Vec<f64>]) {
    for (step, (g, w)) in got.iter().zip(want).enumerate() {
        assert_close(g, w, 1e-13);
        let _ = step;
    }
}

#[test]
fn sgd_plain_momentum_and_nesterov_follow_their_rules() {
    let lr = 0.1;
    let mut w = W0.to_vec();
    let mut want = Vec::new();
    for g in GRADS {
        for i in 0..2 {
            w[i] -= lr * g[i];
        }
        want.push(w.clone());
    }
    check_steps(&run_opt(&SGD::new(lr)), &want);

    for nesterov in [false, true] {
        let mu = 0.9;
        let (mut w, mut m) = (W0.to_vec(), vec![0.0; 2]);
        let mut want = Vec::new();
        for g in GRADS {
            for i in 0..2 {
                m[i] = mu * m[i] - lr * g[i];
                w[i] += if nesterov {
                    mu * m[i] - lr * g[i]
                } else {
                    m[i]
                };
            }
            want.push(w.clone());
        }
        check_steps(
            &run_opt(&SGD::new(lr).momentum(mu).nesterov(nesterov)),
            &want,
        );
    }
}

fn adam_reference(lr: f64, b1: f64, b2: f64, eps: f64, wd: f64) -> Vec<Vec<f64>> {
    let (mut w, mut m, mut v) = (W0.to_vec(), vec![0.0; 2], vec![0.0; 2]);
    let mut want = Vec::new();
    for (t, g) in GRADS.iter().enumerate() {
        let t = (t + 1) as f64;
        for i in 0..2 {
            w[i] -= w[i] * wd * lr;
            m[i] = b1 * m[i] + (1.0 - b1) * g[i];
            v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
            // Kingma & Ba section 2, efficient form: lr_t = lr·√(1-β₂ᵗ)/(1-β₁ᵗ)
            let lr_t = lr * (1.0 - b2.powf(t)).sqrt() / (1.0 - b1.powf(t));
            w[i] -= lr_t * m[i] / (v[i].sqrt() + eps);
        }
        want.push(w.clone());
    }
    want
}

#[test]
fn adam_follows_its_rule() {
    check_steps(
        &run_opt(&Adam::new(0.01)),
        &adam_reference(0.01, 0.9, 0.999, 1e-7, 0.0),
    );
    let custom = Adam::new(0.05).beta_1(0.8).beta_2(0.99).epsilon(1e-3);
    check_steps(
        &run_opt(&custom),
        &adam_reference(0.05, 0.8, 0.99, 1e-3, 0.0),
    );
}

#[test]
fn adamw_decays_weights_then_steps_like_adam() {
    check_steps(
        &run_opt(&AdamW::new(0.01).weight_decay(0.1)),
        &adam_reference(0.01, 0.9, 0.999, 1e-7, 0.1),
    );
}

#[test]
fn rmsprop_plain_momentum_and_centered_follow_their_rules() {
    for (mu, centered) in [(0.0, false), (0.5, false), (0.0, true), (0.5, true)] {
        let (lr, rho, eps) = (0.01, 0.9, 1e-7);
        let (mut w, mut v, mut mg, mut m) = (W0.to_vec(), vec![0.0; 2], vec![0.0; 2], vec![0.0; 2]);
        let mut want = Vec::new();
        for g in GRADS {
            for i in 0..2 {
                v[i] = rho * v[i] + (1.0 - rho) * g[i] * g[i];
                let denom = if centered {
                    mg[i] = rho * mg[i] + (1.0 - rho) * g[i];
                    v[i] - mg[i] * mg[i] + eps
                } else {
                    v[i] + eps
                };
                let inc = lr * g[i] / denom.sqrt();
                if mu > 0.0 {
                    m[i] = mu * m[i] + inc;
                    w[i] -= m[i];
                } else {
                    w[i] -= inc;
                }
            }
            want.push(w.clone());
        }
        check_steps(
            &run_opt(&RMSprop::new(lr).momentum(mu).centered(centered)),
            &want,
        );
    }
}

#[test]
fn learning_rate_schedules_match_their_formulas() {
    let at = |s: &dyn LearningRateSchedule, step: f64| {
        s.at(&Tensor::scalar_of(DType::F64, step))
            .to_scalar()
            .unwrap()
    };
    let e = ExponentialDecay::new(0.1, 100, 0.96);
    for step in [0.0, 1.0, 150.0, 1000.0] {
        assert!((at(&e, step) - 0.1 * 0.96f64.powf(step / 100.0)).abs() < 1e-15);
        assert!(
            (at(&e.staircase(true), step) - 0.1 * 0.96f64.powf((step / 100.0).floor())).abs()
                < 1e-15
        );
    }
    let c = CosineDecay::new(0.1, 50).alpha(0.1);
    for step in [0.0, 10.0, 25.0, 50.0, 80.0] {
        let s = f64::min(step, 50.0);
        let want = 0.1 * (0.9 * 0.5 * (1.0 + (std::f64::consts::PI * s / 50.0).cos()) + 0.1);
        assert!((at(&c, step) - want).abs() < 1e-15, "step {step}");
    }
    // an optimizer uses the rate at the step count before the update
    let sgd = SGD::new(ExponentialDecay::new(0.5, 1, 0.5));
    let w = Variable::named("w_sched", t2(&[0.0], &[1]));
    let mut want = 0.0;
    for k in 0..3 {
        assert!((sgd.current_learning_rate() - 0.5 * 0.5f64.powi(k)).abs() < 1e-15);
        sgd.apply_gradients(&[Some(t2(&[1.0], &[1]))], std::slice::from_ref(&w))
            .unwrap();
        want -= 0.5 * 0.5f64.powi(k);
        assert!((w.value().to_vec_f64().unwrap()[0] - want).abs() < 1e-15);
    }
    assert_eq!(sgd.iterations().value().to_vec_i64().unwrap(), vec![3]);
}

#[test]
fn optimizers_give_the_same_numbers_inside_a_function() {
    for make in [
        (|| Box::new(Adam::new(0.01)) as Box<dyn Optimizer>) as fn() -> Box<dyn Optimizer>,
        || Box::new(SGD::new(0.1).momentum(0.9).nesterov(true)),
        || Box::new(RMSprop::new(0.01).momentum(0.5).centered(true)),
        || Box::new(AdamW::new(0.01)),
        || Box::new(SGD::new(CosineDecay::new(0.1, 3))),
    ] {
        let eager = run_opt(&*make());
        let opt = std::sync::Arc::new(make());
        let w = Variable::named("w_fn", t2(&W0, &[2]));
        let (o2, w2) = (opt.clone(), w.clone());
        let step = function(move |g: &Tensor| {
            o2.apply_gradients(&[Some(g.clone())], std::slice::from_ref(&w2))?;
            Ok(w2.read())
        });
        for (k, g) in GRADS.iter().enumerate() {
            step.call(&t2(g, &[2])).unwrap();
            assert_close(&w.value().to_vec_f64().unwrap(), &eager[k], 1e-14);
        }
        assert_eq!(step.trace_count(), 1);
        assert_eq!(opt.iterations().value().to_vec_i64().unwrap(), vec![4]);
    }
}

#[test]
fn slots_survive_retraces_and_none_gradients_are_skipped() {
    let a = Variable::named("slot_a", t2(&[1.0, 2.0], &[2]));
    let b = Variable::named("slot_b", t2(&[3.0], &[1]));
    let opt = Adam::new(0.1);
    let (o2, a2, b2) = (opt.clone(), a.clone(), b.clone());
    // the loss depends on `a` only; each batch size is a new signature (a retrace)
    let step = function(move |x: &Tensor| {
        let tape = GradientTape::new();
        let loss = tape.record(|| (x.sum_all() * a2.read().sum_all()).square());
        let vars = vec![a2.clone(), b2.clone()];
        let grads = tape.gradient(&loss, &vars)?;
        o2.apply_gradients(&grads, &vars)?;
        Ok(loss)
    });
    step.call(&t2(&[1.0], &[1])).unwrap();
    let n_vars = opt.variables().len();
    step.call(&t2(&[1.0, 0.5], &[2])).unwrap();
    step.call(&t2(&[1.0], &[1])).unwrap();
    assert_eq!(step.trace_count(), 2);
    assert_eq!(
        opt.variables().len(),
        n_vars,
        "no slot was created again on retrace"
    );
    assert_eq!(n_vars, 3, "iterations + m, v of `a`; `b` had no gradient");
    assert_eq!(b.value().to_vec_f64().unwrap(), vec![3.0]);
    assert_ne!(a.value().to_vec_f64().unwrap(), vec![1.0, 2.0]);
    assert_eq!(opt.iterations().value().to_vec_i64().unwrap(), vec![3]);
}

#[test]
fn apply_gradients_rejects_bad_arguments() {
    let w = Variable::named("w_bad", t2(&[1.0, 2.0], &[2]));
    let opt = SGD::new(0.1);
    let e = opt
        .apply_gradients(&[None, None], std::slice::from_ref(&w))
        .unwrap_err()
        .to_string();
    assert!(e.contains("2 gradients for 1 variables"), "{e}");
    let e = opt
        .apply_gradients(&[Some(t2(&[1.0], &[1]))], std::slice::from_ref(&w))
        .unwrap_err()
        .to_string();
    assert!(e.contains("w_bad"), "{e}");
    let e = opt
        .apply_gradients(&[None], std::slice::from_ref(&w))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no gradients"), "{e}");
    assert_eq!(w.value().to_vec_f64().unwrap(), vec![1.0, 2.0]);
    assert_eq!(opt.iterations().value().to_vec_i64().unwrap(), vec![0]);
}

// ---------------------------------------------------------------------------------------
// metrics

#[test]
fn metrics_accumulate_and_reset() {
    let acc = SparseCategoricalAccuracy::new();
    let pred = f32s(&[0.1, 0.7, 0.2, 0.9, 0.05, 0.05, 0.3, 0.3, 0.4], &[3, 3]);
    acc.update(&Tensor::vec(&[1i64, 0, 0]), &pred).unwrap();
    assert!((acc.result() - 2.0 / 3.0).abs() < 1e-12);
    acc.update(&Tensor::vec(&[2.0f32, 2.0, 2.0]), &pred)
        .unwrap();
    assert!((acc.result() - 3.0 / 6.0).abs() < 1e-12);
    acc.reset_state();
    assert_eq!(acc.result(), 0.0);
    assert!(acc.update(&Tensor::vec(&[1i64]), &pred).is_err());

    let cat = CategoricalAccuracy::new();
    cat.update(
        &f32s(&[0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0], &[3, 3]),
        &pred,
    )
    .unwrap();
    assert!((cat.result() - 1.0 / 3.0).abs() < 1e-12);
}

// ---------------------------------------------------------------------------------------
// training

fn mlp(name: &str) -> Model {
    Sequential::named(name)
        .add(
            Dense::new(16)
                .activation(Activation::Relu)
                .named(format!("{name}_h")),
        )
        .add(Dense::new(3).named(format!("{name}_out")))
        .input_shape(&[5])
        .into()
}

fn toy_data(n: usize) -> (Tensor, Tensor) {
    let x = Tensor::random_normal(&[n, 5], 0.0, 1.0, 17, DType::F32);
    let xv = x.to_vec_f32().unwrap();
    let y: Vec<i64> = xv
        .chunks(5)
        .map(|r| {
            if r[0] + r[1] > 0.5 {
                2
            } else if r[2] > 0.0 {
                1
            } else {
                0
            }
        })
        .collect();
    (x, Tensor::from_vec(y, &[n]).unwrap())
}

#[test]
fn compiled_and_eager_train_steps_give_the_same_weights() {
    let model = mlp("same_weights");
    let initial = model.get_weights();
    let (x, y) = toy_data(64);
    let batches: Vec<(Tensor, Tensor)> = (0..8)
        .map(|i| {
            let idx = Tensor::arange(i * 8, i * 8 + 8, DType::I64);
            (x.gather(&idx, 0), y.gather(&idx, 0))
        })
        .collect();
    let run = |compiled: bool| -> Vec<Vec<f32>> {
        model.set_weights(&initial).unwrap();
        let opt = Adam::new(0.01);
        let (m, o) = (model.clone(), opt.clone());
        let loss_fn = SparseCategoricalCrossentropy::from_logits(true);
        let step = move |xb: &Tensor, yb: &Tensor| {
            let tape = GradientTape::new();
            let loss = tape.record(|| loss_fn.call(yb, &m.call(xb, true)?))?;
            let vars = m.trainable_variables();
            let grads = tape.gradient(&loss, &vars)?;
            o.apply_gradients(&grads, &vars)?;
            Ok(loss)
        };
        let f = function(step.clone());
        for _ in 0..3 {
            for (xb, yb) in &batches {
                if compiled {
                    f.call(xb, yb).unwrap();
                } else {
                    step(xb, yb).unwrap();
                }
            }
        }
        assert_eq!(f.trace_count(), compiled as usize);
        model
            .get_weights()
            .iter()
            .map(|w| w.to_vec_f32().unwrap())
            .collect()
    };
    let compiled = run(true);
    let eager = run(false);
    assert_ne!(
        compiled[0],
        initial[0].to_vec_f32().unwrap(),
        "training changed the weights"
    );
    for (c, e) in compiled.iter().zip(&eager) {
        for (a, b) in c.iter().zip(e) {
            assert!(
                (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                "compiled {a} vs eager {b}"
            );
        }
    }
}

#[test]
fn fit_on_random_data_like_the_tutorial() {
    // model.compile(loss=mean_squared_error, optimizer=SGD(1e-3)); fit(x, y, epochs=10, batch_size=32)
    set_seed(1);
    let model: Model = Sequential::named("fit_random")
        .add(Dense::new(1).named("fit_random_dense"))
        .input_shape(&[10])
        .into();
    model
        .compile(MeanSquaredError, SGD::new(1e-3), &[])
        .unwrap();
    let x = Tensor::random_uniform(&[64, 10], 0.0, 1.0, 1, DType::F32);
    let y = Tensor::random_uniform(&[64, 1], 0.0, 1.0, 2, DType::F32);
    let initial = model.get_weights();
    let h = model
        .fit(&x, &y, FitOptions::new(10, 32).verbose(0))
        .unwrap();
    let loss = h.get("loss").unwrap();
    assert_eq!(loss.len(), 10);
    assert!(loss[9] < loss[0], "{loss:?}");
    let trained = model.get_weights();
    // the same fit run eagerly gives the same history and weights
    model.set_weights(&initial).unwrap();
    model
        .compile(MeanSquaredError, SGD::new(1e-3), &[])
        .unwrap();
    let he = model
        .fit(&x, &y, FitOptions::new(10, 32).verbose(0).run_eagerly(true))
        .unwrap();
    assert_close(he.get("loss").unwrap(), loss, 1e-6);
    for (a, b) in model.get_weights().iter().zip(&trained) {
        assert_close(&a.to_vec_f64().unwrap(), &b.to_vec_f64().unwrap(), 1e-6);
    }
}

#[test]
fn fit_evaluate_predict_on_a_classification_task() {
    let model = mlp("fit_cls");
    model
        .compile(
            SparseCategoricalCrossentropy::from_logits(true),
            Adam::new(0.02),
            &["accuracy"],
        )
        .unwrap();
    let (x, y) = toy_data(300);
    let (xv, yv) = toy_data(100);
    let h = model
        .fit(
            &x,
            &y,
            FitOptions::new(15, 32).validation_data(&xv, &yv).verbose(0),
        )
        .unwrap();
    let keys: Vec<&str> = h.history.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["loss", "accuracy", "val_loss", "val_accuracy"]);
    let acc = h.get("accuracy").unwrap();
    assert!(acc[14] > 0.85, "{acc:?}");
    let logs = model.evaluate(&xv, &yv, 32).unwrap();
    assert_eq!(logs[0].0, "loss");
    assert!((logs[1].1 - h.get("val_accuracy").unwrap()[14]).abs() < 1e-12);
    let p = model.predict(&xv, 32).unwrap();
    assert_eq!(p.shape(), &[100, 3]);
    let direct = model.call(&xv, false).unwrap();
    assert_close(
        &p.to_vec_f64().unwrap(),
        &direct.to_vec_f64().unwrap(),
        1e-6,
    );
}

#[test]
fn compile_and_fit_misuse_are_errors() {
    let model = mlp("misuse");
    let (x, y) = toy_data(10);
    let e = model
        .fit(&x, &y, FitOptions::new(1, 4).verbose(0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("must be compiled"), "{e}");
    assert!(model
        .compile(MeanSquaredError, SGD::default(), &["accuracy"])
        .is_err());
    assert!(model
        .compile(MeanSquaredError, SGD::default(), &["f1"])
        .is_err());
    model
        .compile(
            SparseCategoricalCrossentropy::from_logits(true),
            SGD::default(),
            &["acc"],
        )
        .unwrap();
    let e = model
        .fit(&x, &y.slice_axis(0, 0, 5), FitOptions::new(1, 4).verbose(0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("samples"), "{e}");
    let bad_labels = Tensor::full(&[10], 7.0, DType::I64);
    let e = model
        .fit(&x, &bad_labels, FitOptions::new(1, 4).verbose(0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("out of range"), "{e}");
}
