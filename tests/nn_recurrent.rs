//! Recurrent layers (SimpleRNN, LSTM, GRU) and Embedding: values against independent
//! f64 references written with plain loops, gradients against the network unrolled by
//! hand and against finite differences, eager against compiled, Keras' shapes, parameter
//! counts, errors and saving.

mod common;

use std::sync::Arc;
use tapeflow::autodiff::{check_gradients, GradCheck};
use tapeflow::nn::{
    load_model, Activation, Dense, Embedding, Initializer, Layer, Sequential, SimpleRNN, GRU, LSTM,
};
use tapeflow::{function, DType, GradientTape, Tensor};

// ---- plain f64 references (row-major matrices as Vec<f64>) -----------------------------

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// `a[r×k] · b[k×c]`.
fn mm(a: &[f64], b: &[f64], r: usize, k: usize, c: usize) -> Vec<f64> {
    let mut out = vec![0.0; r * c];
    for i in 0..r {
        for j in 0..c {
            out[i * c + j] = (0..k).map(|t| a[i * k + t] * b[t * c + j]).sum();
        }
    }
    out
}

/// Runs `cell(x_t·W (+b), state) -> state` over `x [batch, steps, feat]`; returns every
/// step's h `[steps][batch·units]` and the final states.
struct Ref {
    batch: usize,
    steps: usize,
    feat: usize,
    units: usize,
}

impl Ref {
    fn step_input(&self, x: &[f64], t: usize) -> Vec<f64> {
        let mut xt = Vec::with_capacity(self.batch * self.feat);
        for b in 0..self.batch {
            let base = (b * self.steps + t) * self.feat;
            xt.extend_from_slice(&x[base..base + self.feat]);
        }
        xt
    }

    fn lstm(&self, x: &[f64], w: &[f64], u: &[f64], bias: &[f64]) -> (Vec<Vec<f64>>, Vec<f64>) {
        let (n, g) = (self.units, 4 * self.units);
        let mut h = vec![0.0; self.batch * n];
        let mut c = vec![0.0; self.batch * n];
        let mut hs = Vec::new();
        for t in 0..self.steps {
            let xw = mm(&self.step_input(x, t), w, self.batch, self.feat, g);
            let hu = mm(&h, u, self.batch, n, g);
            for b in 0..self.batch {
                for j in 0..n {
                    let z =
                        |k: usize| xw[b * g + k * n + j] + bias[k * n + j] + hu[b * g + k * n + j];
                    let (i, f, cc, o) = (sigmoid(z(0)), sigmoid(z(1)), z(2).tanh(), sigmoid(z(3)));
                    let idx = b * n + j;
                    c[idx] = f * c[idx] + i * cc;
                    h[idx] = o * c[idx].tanh();
                }
            }
            hs.push(h.clone());
        }
        (hs, c)
    }

    fn gru(
        &self,
        x: &[f64],
        w: &[f64],
        u: &[f64],
        bias: &[f64],
        reset_after: bool,
    ) -> Vec<Vec<f64>> {
        let (n, g) = (self.units, 3 * self.units);
        let mut h = vec![0.0; self.batch * n];
        let mut hs = Vec::new();
        // reset_after: bias rows [input; recurrent]; otherwise one bias row
        let (bi, br) = if reset_after {
            (&bias[..g], &bias[g..])
        } else {
            (bias, &[][..])
        };
        for t in 0..self.steps {
            let xw = mm(&self.step_input(x, t), w, self.batch, self.feat, g);
            let hu = mm(&h, u, self.batch, n, g);
            let mut next = h.clone();
            for b in 0..self.batch {
                let xg = |k: usize, j: usize| xw[b * g + k * n + j] + bi[k * n + j];
                let hg = |k: usize, j: usize| {
                    hu[b * g + k * n + j] + br.get(k * n + j).copied().unwrap_or(0.0)
                };
                let z: Vec<f64> = (0..n).map(|j| sigmoid(xg(0, j) + hg(0, j))).collect();
                let r: Vec<f64> = (0..n).map(|j| sigmoid(xg(1, j) + hg(1, j))).collect();
                for j in 0..n {
                    let rec = if reset_after {
                        r[j] * hg(2, j)
                    } else {
                        // (r ⊙ h) · U_h
                        (0..n)
                            .map(|k| r[k] * h[b * n + k] * u[k * g + 2 * n + j])
                            .sum()
                    };
                    let hh = (xg(2, j) + rec).tanh();
                    next[b * n + j] = z[j] * h[b * n + j] + (1.0 - z[j]) * hh;
                }
            }
            h = next;
            hs.push(h.clone());
        }
        hs
    }

    fn simple(&self, x: &[f64], w: &[f64], u: &[f64], bias: &[f64]) -> Vec<Vec<f64>> {
        let n = self.units;
        let mut h = vec![0.0; self.batch * n];
        let mut hs = Vec::new();
        for t in 0..self.steps {
            let xw = mm(&self.step_input(x, t), w, self.batch, self.feat, n);
            let hu = mm(&h, u, self.batch, n, n);
            h = (0..self.batch * n)
                .map(|i| (xw[i] + bias[i % n] + hu[i]).tanh())
                .collect();
            hs.push(h.clone());
        }
        hs
    }
}

fn random(shape: &[usize], seed: u64) -> Tensor {
    Tensor::random_uniform(shape, -1.0, 1.0, seed, DType::F64)
}

fn vals(t: &Tensor) -> Vec<f64> {
    t.to_vec_f64().unwrap()
}

fn close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol, "{what}[{i}]: {x} vs {y}");
    }
}

/// A small random bias so that every gate's bias matters.
fn bias_init() -> Initializer {
    Initializer::RandomUniform {
        min: -0.5,
        max: 0.5,
        seed: Some(3),
    }
}

const R: Ref = Ref {
    batch: 3,
    steps: 5,
    feat: 4,
    units: 6,
};

// ---- values -------------------------------------------------------------------------------

#[test]
fn lstm_matches_the_reference() {
    let x = random(&[R.batch, R.steps, R.feat], 1);
    let lstm = LSTM::new(R.units)
        .dtype(DType::F64)
        .bias_initializer(bias_init())
        .return_sequences(true)
        .return_state(true);
    let out = lstm.call_with_states(&x, None).unwrap();
    let (k, u, b) = lstm.weights().unwrap();
    let (hs, c) = R.lstm(
        &vals(&x),
        &vals(&k.value()),
        &vals(&u.value()),
        &vals(&b.unwrap().value()),
    );
    assert_eq!(out[0].shape(), &[R.batch, R.steps, R.units]);
    // out[0] is [batch, steps, units]; the reference is [steps][batch, units]
    let seq = vals(&out[0]);
    for t in 0..R.steps {
        for bi in 0..R.batch {
            let got = &seq[(bi * R.steps + t) * R.units..][..R.units];
            close(got, &hs[t][bi * R.units..][..R.units], 1e-12, "lstm h_t");
        }
    }
    close(&vals(&out[1]), &hs[R.steps - 1], 1e-12, "final h");
    close(&vals(&out[2]), &c, 1e-12, "final c");
}

#[test]
fn gru_matches_the_reference_in_both_layouts() {
    let x = random(&[R.batch, R.steps, R.feat], 2);
    for reset_after in [true, false] {
        let gru = GRU::new(R.units)
            .dtype(DType::F64)
            .bias_initializer(bias_init())
            .reset_after(reset_after);
        let y = gru.call(&x, false).unwrap();
        let (k, u, b) = gru.weights().unwrap();
        let b = b.unwrap();
        assert_eq!(
            b.shape(),
            if reset_after {
                vec![2, 3 * R.units]
            } else {
                vec![3 * R.units]
            }
        );
        let hs = R.gru(
            &vals(&x),
            &vals(&k.value()),
            &vals(&u.value()),
            &vals(&b.value()),
            reset_after,
        );
        close(
            &vals(&y),
            &hs[R.steps - 1],
            1e-12,
            &format!("gru reset_after={reset_after}"),
        );
    }
}

#[test]
fn simple_rnn_matches_the_reference_and_go_backwards_reverses_time() {
    let x = random(&[R.batch, R.steps, R.feat], 3);
    let rnn = SimpleRNN::new(R.units)
        .dtype(DType::F64)
        .bias_initializer(bias_init());
    let y = rnn.call(&x, false).unwrap();
    let (k, u, b) = rnn.weights().unwrap();
    let (k, u, b) = (
        vals(&k.value()),
        vals(&u.value()),
        vals(&b.unwrap().value()),
    );
    let hs = R.simple(&vals(&x), &k, &u, &b);
    close(&vals(&y), &hs[R.steps - 1], 1e-12, "simple rnn");

    // go_backwards equals running forwards on the time-reversed input; with
    // return_sequences the outputs are in processing order, as in Keras
    let back = SimpleRNN::new(R.units)
        .dtype(DType::F64)
        .bias_initializer(bias_init())
        .go_backwards(true)
        .return_sequences(true);
    back.build(&[R.steps, R.feat]).unwrap();
    let (bk, bu, bb) = back.weights().unwrap();
    bk.assign(&Tensor::from_vec(k.clone(), &[R.feat, R.units]).unwrap());
    bu.assign(&Tensor::from_vec(u.clone(), &[R.units, R.units]).unwrap());
    bb.unwrap()
        .assign(&Tensor::from_vec(b.clone(), &[R.units]).unwrap());
    let rev: Vec<usize> = (0..R.steps).rev().collect();
    let idx = Tensor::from_vec(rev.iter().map(|&i| i as i64).collect(), &[R.steps]).unwrap();
    let xr = x.gather(&idx, 1);
    let hs_r = R.simple(&vals(&xr), &k, &u, &b);
    let seq = vals(&back.call(&x, false).unwrap());
    for t in 0..R.steps {
        for bi in 0..R.batch {
            close(
                &seq[(bi * R.steps + t) * R.units..][..R.units],
                &hs_r[t][bi * R.units..][..R.units],
                1e-12,
                "go_backwards",
            );
        }
    }
}

// ---- gradients -------------------------------------------------------------------------------

/// The LSTM's last h written out step by step with tensor ops (no scan).
fn lstm_unrolled(x: &Tensor, k: &Tensor, u: &Tensor, b: &Tensor, units: usize) -> Tensor {
    let (batch, steps) = (x.shape()[0], x.shape()[1]);
    let gate = |t: &Tensor, i: usize| t.slice_axis(1, i * units, (i + 1) * units);
    let mut h = Tensor::full(&[batch, units], 0.0, x.dtype());
    let mut c = h.clone();
    for t in 0..steps {
        let xt = x.slice_axis(1, t, t + 1).reshape(&[batch, x.shape()[2]]);
        let z = &(&xt.matmul(k) + b) + &h.matmul(u);
        let (i, f, g, o) = (
            gate(&z, 0).sigmoid(),
            gate(&z, 1).sigmoid(),
            gate(&z, 2).tanh(),
            gate(&z, 3).sigmoid(),
        );
        c = &(&f * &c) + &(&i * &g);
        h = &o * &c.tanh();
    }
    h
}

/// The gradients of `sum(lstm(x)²)` with respect to `vars` from a compiled function,
/// and the text of its graph.
fn compiled_loss_gradients(
    lstm: &Arc<LSTM>,
    vars: &[tapeflow::Variable],
    x: &Tensor,
) -> (Vec<Tensor>, String) {
    let (l2, vars2) = (lstm.clone(), vars.to_vec());
    let step = function(move |x: &Tensor| {
        let tape = GradientTape::new();
        let loss = tape.record(|| l2.call(x, true).unwrap().square().sum_all());
        let g = tape.gradient(&loss, &vars2[..])?;
        Ok(g.into_iter().map(|g| g.unwrap()).collect::<Vec<_>>())
    });
    let text = step.concrete(&[x]).unwrap().text();
    (step.call(x).unwrap(), text)
}

#[test]
fn lstm_gradients_equal_the_unrolled_network_eager_and_compiled() {
    let x = random(&[R.batch, R.steps, R.feat], 4);
    let lstm = Arc::new(
        LSTM::new(R.units)
            .dtype(DType::F64)
            .bias_initializer(bias_init()),
    );
    lstm.build(&[R.steps, R.feat]).unwrap();
    let (k, u, b) = lstm.weights().unwrap();
    let b = b.unwrap();
    let vars = [k.clone(), u.clone(), b.clone()];

    let tape = GradientTape::new();
    let loss = tape.record(|| lstm.call(&x, true).unwrap().square().sum_all());
    let eager = tape.gradient(&loss, &vars[..]).unwrap();

    let tape = GradientTape::new();
    let ref_loss = tape.record(|| {
        lstm_unrolled(&x, &k.read(), &u.read(), &b.read(), R.units)
            .square()
            .sum_all()
    });
    let unrolled = tape.gradient(&ref_loss, &vars[..]).unwrap();
    close(&vals(&loss), &vals(&ref_loss), 1e-12, "loss");
    for (i, (g, r)) in eager.iter().zip(&unrolled).enumerate() {
        close(
            &vals(g.as_ref().unwrap()),
            &vals(r.as_ref().unwrap()),
            1e-12,
            &format!("grad {i}"),
        );
    }

    let (compiled, text) = compiled_loss_gradients(&lstm, &vars, &x);
    for (i, (g, r)) in compiled.iter().zip(&eager).enumerate() {
        close(
            &vals(g),
            &vals(r.as_ref().unwrap()),
            1e-12,
            &format!("compiled grad {i}"),
        );
    }
    assert!(
        text.contains("scan"),
        "the recurrence stays a loop:\n{text}"
    );
    // the reverse scan reads the forward's saved activations: its body computes no
    // sigmoid, tanh or gate slice again
    let reverse: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.contains("reverse=true"))
        .take_while(|l| *l != "    }")
        .collect();
    assert!(!reverse.is_empty(), "a reverse scan:\n{text}");
    for op in ["sigmoid", "tanh", "slice"] {
        assert!(
            !reverse.iter().any(|l| l.contains(op)),
            "the reverse body recomputes {op}:\n{}",
            reverse.join("\n")
        );
    }
}

#[test]
fn recurrent_layers_pass_gradient_checks_wrt_their_input() {
    let layers: Vec<(&str, Box<dyn Layer>)> = vec![
        (
            "simple_rnn",
            Box::new(
                SimpleRNN::new(3)
                    .dtype(DType::F64)
                    .bias_initializer(bias_init()),
            ),
        ),
        (
            "lstm",
            Box::new(
                LSTM::new(3)
                    .dtype(DType::F64)
                    .bias_initializer(bias_init())
                    .return_sequences(true),
            ),
        ),
        (
            "gru",
            Box::new(GRU::new(3).dtype(DType::F64).bias_initializer(bias_init())),
        ),
        (
            "gru_v1",
            Box::new(
                GRU::new(3)
                    .dtype(DType::F64)
                    .bias_initializer(bias_init())
                    .reset_after(false)
                    .go_backwards(true),
            ),
        ),
    ];
    let x = random(&[2, 4, 3], 5);
    for (name, layer) in &layers {
        for (order, traced) in [(1, false), (1, true), (2, false)] {
            let cfg = GradCheck {
                order,
                traced,
                eps: if order == 1 { 1e-6 } else { 1e-4 },
                rtol: 1e-4,
                atol: 1e-6,
                ..Default::default()
            };
            check_gradients(
                |xs| layer.call(&xs[0], true).unwrap(),
                std::slice::from_ref(&x),
                &cfg,
            )
            .unwrap_or_else(|e| panic!("{name} order {order} traced {traced}: {e}"));
        }
    }
}

// ---- models, shapes, errors ---------------------------------------------------------------

#[test]
fn summary_shows_keras_shapes_and_parameter_counts() {
    let model = Sequential::named("rnn_model")
        .add(LSTM::new(128).named("lstm"))
        .add(Dense::new(10).named("dense"))
        .input_shape(&[28, 28]);
    let s = model.summary_string().unwrap();
    assert!(s.contains("lstm (LSTM)"), "{s}");
    assert!(s.contains("(None, 128)"), "{s}");
    assert!(s.contains("80,384") || s.contains("80384"), "{s}");
    let seq = Sequential::new()
        .add(Embedding::new(1000, 64))
        .add(GRU::new(32).return_sequences(true))
        .add(SimpleRNN::new(16))
        .input_shape(&[20]);
    let y = seq
        .call(
            &Tensor::from_vec(vec![7i64; 2 * 20], &[2, 20]).unwrap(),
            false,
        )
        .unwrap();
    assert_eq!(y.shape(), &[2, 16]);
    assert_eq!(
        seq.count_params(),
        1000 * 64 + (3 * 32 * (64 + 32) + 2 * 3 * 32) + (16 * (32 + 16) + 16)
    );
}

#[test]
fn bad_inputs_are_errors_naming_the_layer() {
    let lstm = LSTM::new(4).named("l");
    let e = lstm
        .call(&Tensor::ones(&[2, 3]), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("LSTM layer `l`") && e.contains("rank"), "{e}");
    lstm.call(&Tensor::ones(&[2, 3, 5]), false).unwrap();
    let e = lstm
        .call(&Tensor::ones(&[2, 3, 6]), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("built for"), "{e}");
    let e = lstm
        .call_with_states(&Tensor::ones(&[2, 3, 5]), Some(&[Tensor::ones(&[2, 4])]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("initial_state must be 2 tensor(s) f32[2,4]"),
        "{e}"
    );
    let e = GRU::new(0)
        .call(&Tensor::ones(&[1, 1, 1]), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("units must be a positive integer"), "{e}");
    // a different number of steps is fine: only the features are fixed
    assert_eq!(
        lstm.call(&Tensor::ones(&[2, 7, 5]), false).unwrap().shape(),
        &[2, 4]
    );
}

#[test]
fn initial_state_and_return_state() {
    let lstm = LSTM::new(2).return_state(true);
    let x = Tensor::ones(&[1, 3, 2]);
    let h0 = Tensor::full(&[1, 2], 0.5, DType::F32);
    let out = lstm
        .call_with_states(&x, Some(&[h0.clone(), h0.clone()]))
        .unwrap();
    assert_eq!(out.len(), 3);
    let zero = lstm.call_with_states(&x, None).unwrap();
    assert_ne!(vals(&out[0]), vals(&zero[0]), "the initial state is used");
    assert_eq!(vals(&out[0]), vals(&out[1]), "the output is the final h");
}

#[test]
fn embedding_looks_up_rows_and_accumulates_repeated_ids() {
    let e = Embedding::new(5, 2).dtype(DType::F64);
    let ids = Tensor::from_vec(vec![1i64, 3, 1], &[1, 3]).unwrap();
    let y = e.call(&ids, false).unwrap();
    let table = e.embeddings().unwrap();
    let t = vals(&table.value());
    assert_eq!(vals(&y), [&t[2..4], &t[6..8], &t[2..4]].concat());
    assert!(t.iter().all(|v| v.abs() <= 0.05));
    let tape = GradientTape::new();
    let loss = tape.record(|| e.call(&ids, true).unwrap().sum_all());
    let g = tape.gradient(&loss, &table).unwrap();
    assert_eq!(
        vals(&g),
        vec![0.0, 0.0, 2.0, 2.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    );
    let err = e
        .call(&Tensor::from_vec(vec![5i64], &[1, 1]).unwrap(), false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("id 5 is outside the table's 0..5"), "{err}");
    let err = e
        .call(&Tensor::ones(&[1, 1]), false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("expects a batch of i64 ids"), "{err}");
}

#[test]
fn orthogonal_initializer_gives_orthonormal_rows_or_columns() {
    for shape in [[6usize, 6], [8, 3], [3, 8]] {
        let q = vals(
            &Initializer::Orthogonal {
                gain: 2.0,
                seed: Some(1),
            }
            .init(&shape, DType::F64, "q"),
        );
        let (r, c) = (shape[0], shape[1]);
        // the smaller side is orthonormal (times gain²)
        let tall = r >= c;
        let (n, m) = if tall { (c, r) } else { (r, c) };
        // element k of column i (tall) or row i (wide)
        let at = |q: &[f64], i: usize, k: usize, c: usize| {
            if tall {
                q[k * c + i]
            } else {
                q[i * c + k]
            }
        };
        for i in 0..n {
            for j in 0..n {
                let dot: f64 = (0..m).map(|k| at(&q, i, k, c) * at(&q, j, k, c)).sum();
                let want = if i == j { 4.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-12, "{shape:?} ({i},{j}) = {dot}");
            }
        }
    }
}

#[test]
fn a_model_with_recurrent_layers_saves_and_loads() {
    let dir = std::env::temp_dir().join(format!("tapeflow_rnn_save_{}", std::process::id()));
    let model = Sequential::new()
        .add(Embedding::new(50, 8))
        .add(LSTM::new(6).return_sequences(true).go_backwards(true))
        .add(GRU::new(5).reset_after(false))
        .add(Dense::new(3).activation(Activation::Softmax))
        .input_shape(&[7]);
    let ids = Tensor::from_vec((0..14).map(|i| i % 50).collect::<Vec<i64>>(), &[2, 7]).unwrap();
    let y = model.call(&ids, false).unwrap();
    model.save(&dir).unwrap();
    let loaded = load_model(&dir).unwrap();
    assert_eq!(vals(&loaded.call(&ids, false).unwrap()), vals(&y));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn variables_follow_keras_names_and_initializers() {
    let lstm = LSTM::new(4).named("enc");
    lstm.build(&[3, 2]).unwrap();
    let names: Vec<String> = lstm
        .variables()
        .iter()
        .map(|v| v.name().to_string())
        .collect();
    assert_eq!(names, ["enc/kernel", "enc/recurrent_kernel", "enc/bias"]);
    let b = vals(&lstm.weights().unwrap().2.unwrap().value());
    // unit_forget_bias: the forget block (second of i, f, c, o) starts at 1
    assert_eq!(b, [[0.0; 4], [1.0; 4], [0.0; 4], [0.0; 4]].concat());
}

#[test]
fn one_symbolic_trace_serves_every_batch_size() {
    use tapeflow::{function_with_signature, Dim, TensorSpec};
    let lstm = Arc::new(LSTM::new(4).dtype(DType::F64).return_sequences(true));
    let l2 = lstm.clone();
    let b = Dim::sym("b");
    let f = function_with_signature(
        move |x: &Tensor| {
            let tape = GradientTape::new();
            tape.watch(x);
            let y = tape.record(|| l2.call(x, true).unwrap().square().sum_all());
            tape.gradient(&y, x)
        },
        &[TensorSpec::with_dims(&[b, 5.into(), 3.into()], DType::F64)],
    );
    for n in [1, 3, 8] {
        let x = random(&[n, 5, 3], 10 + n as u64);
        let tape = GradientTape::new();
        tape.watch(&x);
        let y = tape.record(|| lstm.call(&x, true).unwrap().square().sum_all());
        let eager = tape.gradient(&y, &x).unwrap();
        close(
            &vals(&f.call(&x).unwrap()),
            &vals(&eager),
            1e-12,
            &format!("batch {n}"),
        );
    }
    assert_eq!(f.trace_count(), 1);
}

/// With 64 units at batch 64 the gradient loop's `dz · Uᵀ` is big enough that
/// `optimize_regions` transposes the recurrent kernel once before the loop
/// (`passes::PRETRANSPOSE_MIN_SIDE`) instead of multiplying by transposed strides
/// every step; the compiled gradients still equal the eager ones bit for bit.
#[test]
fn a_pretransposed_recurrent_kernel_keeps_compiled_equal_to_eager() {
    let units = tapeflow::passes::PRETRANSPOSE_MIN_SIDE;
    let x = Tensor::random_uniform(&[64, 4, 64], -1.0, 1.0, 5, DType::F32);
    let lstm = Arc::new(LSTM::new(units).bias_initializer(bias_init()));
    lstm.build(&[4, 64]).unwrap();
    let (k, u, b) = lstm.weights().unwrap();
    let vars = [k, u, b.unwrap()];
    let tape = GradientTape::new();
    let loss = tape.record(|| lstm.call(&x, true).unwrap().square().sum_all());
    let eager = tape.gradient(&loss, &vars[..]).unwrap();
    let (compiled, text) = compiled_loss_gradients(&lstm, &vars, &x);
    for (i, (g, e)) in compiled.iter().zip(&eager).enumerate() {
        let (g, e) = (
            g.to_vec_f32().unwrap(),
            e.as_ref().unwrap().to_vec_f32().unwrap(),
        );
        assert!(g == e, "gradient {i}: compiled differs from eager");
    }
    let outer: String = text.lines().filter(|l| !l.starts_with("    ")).collect();
    assert!(
        outer.contains("transpose[perm=[1,0]]") && !text.contains("tb=true"),
        "Uᵀ is computed once, outside the loops:\n{text}"
    );
}

/// `layer`'s output and the gradients of `sum(y²)` wrt its weights, compiled (traced once)
/// and eager on `x`; asserts the compiled ones have the eager bits on 1, 2 and 4 threads
/// and returns the compiled step's plan and optimized text.
fn assert_compiled_has_eager_bits(
    layer: Arc<dyn Layer>,
    vars: Vec<tapeflow::Variable>,
    x: &Tensor,
) -> (tapeflow::exec::Plan, String) {
    let run = |layer: &Arc<dyn Layer>, vars: &[tapeflow::Variable], x: &Tensor| {
        let tape = GradientTape::new();
        let (y, loss) = tape.record(|| {
            let y = layer.call(x, true).unwrap();
            let loss = y.square().sum_all();
            (y, loss)
        });
        let mut out = vec![y];
        out.extend(tape.gradient(&loss, vars)?.into_iter().map(|g| g.unwrap()));
        Ok(out)
    };
    let (l2, vars2) = (layer.clone(), vars.clone());
    let step = function(move |x: &Tensor| run(&l2, &vars2, x));
    let concrete = step.concrete(&[x]).unwrap();
    let plan = tapeflow::exec::Plan::new(concrete.graph().clone()).unwrap();
    let eager = run(&layer, &vars, x).unwrap();
    common::assert_eager_bits_on_1_2_4_threads(&eager, || step.call(x).unwrap());
    (plan, concrete.text())
}

/// An LSTM's forward loop keeps batch rows apart, and so does its reverse loop once
/// its `hᵀ·dz` accumulator has moved to a loop of its own (`optimize_regions`); at batch
/// 64 with 128 units their per-step products fork, so with more than one thread both
/// run as two scans over the halves of the batch at once (`exec/row_split.rs`). The
/// halves give the bits of the whole batch; the accumulator's loop runs as the GEMM
/// adding each product in place, by column halves (`exec/accumulate.rs`), with the bits
/// of its body's ops: compiled outputs and gradients equal the eager ones, and one
/// thread's (where the scans run whole) equal two's and four's. Each cell's elementwise
/// steps run as one loop (a step group), with the same bits.
#[test]
fn a_row_separable_loop_runs_as_two_half_batch_scans_with_the_same_bits() {
    let x = Tensor::random_uniform(&[64, 5, 8], -1.0, 1.0, 9, DType::F32);
    let lstm = Arc::new(
        LSTM::new(128)
            .return_sequences(true)
            .bias_initializer(bias_init()),
    );
    lstm.build(&[5, 8]).unwrap();
    let (k, u, b) = lstm.weights().unwrap();
    let (plan, text) = assert_compiled_has_eager_bits(lstm, vec![k, u, b.unwrap()], &x);
    assert_eq!(
        text.matches("= scan[").count(),
        3,
        "forward, reverse, and the accumulator's loop:\n{text}"
    );
    assert_eq!(
        plan.row_split_scans(),
        2,
        "the forward and the reverse scan split, the accumulating one does not:\n{text}"
    );
    assert_eq!(
        plan.accumulation_loops(),
        1,
        "the accumulator's loop runs in place, by column halves:\n{text}"
    );
    // the forward cell (four gates, c, tanh c, h) runs as one loop with seven outputs
    // (`exec/group.rs`), and so do the backward cell's six gradients
    let groups = plan.step_groups();
    assert!(
        groups.contains(&7) && groups.contains(&6),
        "step groups {groups:?}:\n{text}"
    );
}
