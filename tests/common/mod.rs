//! Shared test fixtures: the op table (one row per op, with input shapes that exercise
//! broadcasting) used by the gradient checks and the eager-vs-traced tests, and small
//! models written with the core API only.
#![allow(dead_code)]

use tapeflow::ops::ReduceOp;
use tapeflow::{function, DType, GradientTape, Padding, Tensor, Variable};

#[derive(Clone, Copy)]
pub enum Dom {
    /// Standard normal.
    Any,
    /// 0.5 + |normal|: for log, sqrt, pow bases.
    Pos,
    /// ±(0.5 + |normal|): away from zero (abs, div).
    NonZero,
}

pub struct Row {
    pub name: &'static str,
    pub shapes: &'static [&'static [usize]],
    pub dom: Dom,
    pub f: fn(&[Tensor]) -> Tensor,
    pub rtol: f64,
    /// Finite-difference step override (rows that round through f32 need a big one).
    pub eps: Option<f64>,
}

const fn row(
    name: &'static str,
    shapes: &'static [&'static [usize]],
    dom: Dom,
    f: fn(&[Tensor]) -> Tensor,
) -> Row {
    Row {
        name,
        shapes,
        dom,
        f,
        rtol: 2e-5,
        eps: None,
    }
}

fn idx(v: &[i64]) -> Tensor {
    Tensor::vec(v)
}

pub fn rows() -> Vec<Row> {
    use Dom::*;
    vec![
        row("neg", &[&[3, 4]], Any, |x| -&x[0]),
        row("exp", &[&[3, 4]], Any, |x| x[0].exp()),
        row("log", &[&[3, 4]], Pos, |x| x[0].log()),
        row("sin", &[&[3, 4]], Any, |x| x[0].sin()),
        row("cos", &[&[3, 4]], Any, |x| x[0].cos()),
        row("tanh", &[&[3, 4]], Any, |x| x[0].tanh()),
        row("sqrt", &[&[3, 4]], Pos, |x| x[0].sqrt()),
        row("abs", &[&[3, 4]], NonZero, |x| x[0].abs()),
        row("sign", &[&[3, 4]], NonZero, |x| x[0].sign() * &x[0]),
        row("sigmoid", &[&[3, 4]], Any, |x| x[0].sigmoid()),
        row("add", &[&[3, 4], &[4]], Any, |x| &x[0] + &x[1]),
        row("sub", &[&[3, 1], &[1, 4]], Any, |x| &x[0] - &x[1]),
        row("mul", &[&[2, 3, 4], &[3, 1]], Any, |x| &x[0] * &x[1]),
        row("div", &[&[3, 4], &[4]], NonZero, |x| &x[0] / &x[1]),
        row("pow", &[&[3, 4], &[4]], Pos, |x| x[0].pow(&x[1])),
        row("powf", &[&[5]], Pos, |x| x[0].powf(3.0)),
        row("maximum", &[&[3, 4], &[3, 4]], Any, |x| x[0].maximum(&x[1])),
        row("minimum", &[&[4], &[3, 4]], Any, |x| x[0].minimum(&x[1])),
        row("select", &[&[3, 4], &[3, 4], &[4]], Any, |x| {
            Tensor::select(&x[0].gt(&x[1]), &x[1], &x[2])
        }),
        row("compare", &[&[3, 4]], Any, |x| {
            x[0].ge(&x[0].scalar_like(0.0)) * &x[0]
        }),
        row("not_equal", &[&[3, 4]], Any, |x| {
            x[0].ne(&x[0].scalar_like(0.0)) * x[0].exp()
        }),
        row("sum", &[&[3, 4, 2]], Any, |x| x[0].sum(&[1], true)),
        row("sum_all", &[&[3, 4]], Any, |x| x[0].sum_all()),
        row("mean", &[&[3, 4]], Any, |x| x[0].mean(&[0], false)),
        row("max", &[&[3, 5]], Any, |x| x[0].max(&[1], false)),
        row("min", &[&[3, 5]], Any, |x| x[0].min(&[0], true)),
        row("reshape", &[&[2, 6]], Any, |x| {
            x[0].reshape(&[3, 4]) * Tensor::arange(0, 4, x[0].dtype())
        }),
        row("broadcast", &[&[1, 4]], Any, |x| {
            x[0].broadcast_to(&[3, 4]) * Tensor::arange(0, 12, x[0].dtype()).reshape(&[3, 4])
        }),
        row("transpose", &[&[2, 3, 4]], Any, |x| {
            x[0].transpose(&[2, 0, 1]).sin()
        }),
        row("concat", &[&[2, 3], &[4, 3]], Any, |x| {
            Tensor::concat(&[&x[0], &x[1]], 0).exp()
        }),
        row("slice", &[&[3, 5]], Any, |x| x[0].slice_axis(1, 1, 4).exp()),
        row("pad", &[&[3, 2]], Any, |x| x[0].pad_axis(1, 1, 2).exp()),
        Row {
            rtol: 1e-4,
            eps: Some(1e-2),
            ..row("cast", &[&[3, 4]], Any, |x| {
                x[0].cast(DType::F32).cast(x[0].dtype()) * 2.0
            })
        },
        row("gather", &[&[5, 3]], Any, |x| {
            x[0].gather(&idx(&[4, 0, 0, 2]), 0).exp()
        }),
        row("gather_axis1", &[&[2, 4]], Any, |x| {
            x[0].gather(&idx(&[3, 1, 3]), 1).sin()
        }),
        row("scatter_add", &[&[4, 3]], Any, |x| {
            x[0].scatter_add(&idx(&[1, 4, 1, 0]), 0, 5).exp()
        }),
        row("one_hot", &[&[3, 4]], Any, |x| {
            idx(&[2, 0, 3]).one_hot(4, x[0].dtype()) * x[0].exp()
        }),
        // over a world of one (tests run without mpirun): the identity, with the
        // all-reduce of the cotangent as its gradient
        row("all_reduce", &[&[3, 4]], Any, |x| {
            x[0].all_reduce(ReduceOp::Sum).sin()
        }),
        row("all_reduce_mean", &[&[3, 4]], Any, |x| {
            (x[0].all_reduce(ReduceOp::Mean) * &x[0]).tanh()
        }),
        row("matmul", &[&[3, 4], &[4, 2]], Any, |x| x[0].matmul(&x[1])),
        row("matmul_ta", &[&[4, 3], &[4, 2]], Any, |x| {
            x[0].matmul_t(&x[1], true, false)
        }),
        row("matmul_tb", &[&[3, 4], &[2, 4]], Any, |x| {
            x[0].matmul_t(&x[1], false, true)
        }),
        row("matmul_tab", &[&[4, 3], &[2, 4]], Any, |x| {
            x[0].matmul_t(&x[1], true, true)
        }),
        row("matmul_batched", &[&[2, 3, 4], &[2, 4, 5]], Any, |x| {
            x[0].matmul(&x[1])
        }),
        row("matmul_bcast", &[&[2, 3, 4], &[4, 5]], Any, |x| {
            x[0].matmul(&x[1])
        }),
        row("matmul_square", &[&[3, 3]], Any, |x| {
            x[0].matmul(&x[0]).tanh()
        }),
        row("conv2d_valid", &[&[2, 5, 5, 2], &[3, 3, 2, 3]], Any, |x| {
            x[0].conv2d(&x[1], (1, 1), Padding::Valid).tanh()
        }),
        row(
            "conv2d_same_s2",
            &[&[1, 6, 5, 2], &[2, 3, 2, 2]],
            Any,
            |x| x[0].conv2d(&x[1], (2, 2), Padding::Same).tanh(),
        ),
        row("max_pool2d", &[&[2, 4, 4, 3]], Any, |x| {
            x[0].max_pool2d((2, 2), (2, 2), Padding::Valid).sin()
        }),
        row("max_pool2d_same", &[&[1, 5, 5, 2]], Any, |x| {
            x[0].max_pool2d((3, 3), (2, 2), Padding::Same).sin()
        }),
        row("softmax", &[&[3, 5]], Any, |x| x[0].softmax(-1)),
        row("log_softmax", &[&[3, 5]], Any, |x| x[0].log_softmax(-1)),
        row("logsumexp", &[&[3, 5]], Any, |x| x[0].logsumexp(1, false)),
        row("relu", &[&[3, 4]], NonZero, |x| x[0].relu()),
        row("square", &[&[3, 4]], Any, |x| x[0].square()),
    ]
}

/// Inputs for a row in f64 (what gradient checks need).
pub fn inputs(r: &Row, seed: u64) -> Vec<Tensor> {
    inputs_of(r, seed, DType::F64)
}

/// Inputs for a row in `dtype`.
pub fn inputs_of(r: &Row, seed: u64, dtype: DType) -> Vec<Tensor> {
    r.shapes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let n = Tensor::random_normal(s, 0.0, 1.0, seed * 31 + i as u64, dtype);
            match r.dom {
                Dom::Any => n,
                Dom::Pos => n.abs() + 0.5,
                Dom::NonZero => n.sign() * (n.abs() + 0.5),
            }
        })
        .collect()
}

/// Sparse categorical cross-entropy from logits, written with core ops.
pub fn sparse_ce_from_logits(labels: &Tensor, logits: &Tensor) -> Tensor {
    let classes = logits.shape()[logits.rank() - 1];
    let picked = (labels.one_hot(classes, logits.dtype()) * logits).sum(&[-1], false);
    (logits.logsumexp(-1, false) - picked).mean_all()
}

/// The MLP 784-64-64-10 of the tutorials as plain variables (seeded).
pub struct Mlp {
    pub vars: Vec<Variable>,
}

impl Mlp {
    pub fn new(seed: u64) -> Mlp {
        let dense = |name: &str, i: usize, o: usize, s: u64| {
            let lim = (6.0 / (i + o) as f64).sqrt();
            vec![
                Variable::named(
                    format!("{name}/kernel"),
                    Tensor::random_uniform(&[i, o], -lim, lim, s, DType::F32),
                ),
                Variable::named(format!("{name}/bias"), Tensor::zeros(&[o])),
            ]
        };
        let mut vars = dense("dense", 784, 64, seed);
        vars.extend(dense("dense_1", 64, 64, seed + 1));
        vars.extend(dense("dense_2", 64, 10, seed + 2));
        Mlp { vars }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let v: Vec<Tensor> = self.vars.iter().map(|v| v.read()).collect();
        let h = (x.matmul(&v[0]) + &v[1]).relu();
        let h = (h.matmul(&v[2]) + &v[3]).relu();
        h.matmul(&v[4]) + &v[5]
    }

    /// One SGD train step with a tape: forward, backward, assign_sub.
    pub fn train_step(&self, x: &Tensor, y: &Tensor, lr: f64) -> tapeflow::Result<Tensor> {
        let tape = GradientTape::new();
        let loss = tape.record(|| sparse_ce_from_logits(y, &self.forward(x)));
        let grads = tape.gradient(&loss, &self.vars)?;
        for (v, g) in self.vars.iter().zip(grads) {
            v.assign_sub(&(g.expect("connected") * lr));
        }
        Ok(loss)
    }
}

/// A seeded MNIST-shaped batch: images [n,784] in [0,1) and labels in 0..10.
pub fn fake_batch(n: usize, seed: u64) -> (Tensor, Tensor) {
    let x = Tensor::random_uniform(&[n, 784], 0.0, 1.0, seed, DType::F32);
    let y = Tensor::random_uniform(&[n], 0.0, 10.0, seed + 1, DType::F64).cast(DType::I64);
    (x, y)
}

/// Strips an insta snapshot header, returning the body.
pub fn snapshot_body(snap: &str) -> &str {
    match snap.strip_prefix("---") {
        Some(rest) => rest.split_once("\n---\n").map(|(_, b)| b).unwrap_or(rest),
        None => snap,
    }
}

/// Traces `f` once for `args` and returns the concrete function.
pub fn trace<F>(f: F, args: &[&Tensor]) -> std::sync::Arc<tapeflow::trace::ConcreteFunction>
where
    F: Fn(&[Tensor]) -> tapeflow::Result<Vec<Tensor>>,
{
    function(f).concrete(args).expect("traces")
}

/// d²/dx² of f(x) = Σ sin(x)·e^(−x²) by two nested tapes (elementwise, since f is a sum).
pub fn sin_exp_second_derivative(x: &Tensor) -> tapeflow::Result<Tensor> {
    let outer = GradientTape::new();
    let g = outer.record(|| {
        outer.watch(x);
        let inner = GradientTape::new();
        let y = inner.record(|| {
            inner.watch(x);
            (x.sin() * (-(x * x)).exp()).sum_all()
        });
        inner.gradient(&y, x).map(|g| g.sum_all())
    })?;
    outer.gradient(&g, x)
}

/// A small conv model's compiled train step: 3x3x1x8 filter `k` (seeded), conv (same) →
/// relu → 2x2 max-pool → mean of squares, SGD 0.01 on the filter; with its seeded input
/// batch [16,28,28,1] and the filter variable.
#[allow(clippy::type_complexity)]
pub fn conv_train_step() -> (
    tapeflow::trace::Function<(Tensor,), impl Fn(&Tensor) -> tapeflow::Result<Tensor>>,
    Tensor,
    Variable,
) {
    let w = Variable::named(
        "k",
        Tensor::random_normal(&[3, 3, 1, 8], 0.0, 0.3, 5, DType::F32),
    );
    let x = Tensor::random_normal(&[16, 28, 28, 1], 0.0, 1.0, 6, DType::F32);
    let w2 = w.clone();
    let step = function(move |x: &Tensor| {
        let tape = GradientTape::new();
        let loss = tape.record(|| {
            x.conv2d(&w2.read(), (1, 1), Padding::Same)
                .relu()
                .max_pool2d((2, 2), (2, 2), Padding::Valid)
                .square()
                .mean_all()
        });
        let g = tape.gradient(&loss, &w2)?;
        w2.assign_sub(&(g * 0.01));
        Ok(loss)
    });
    (step, x, w)
}

/// A fresh directory under the system temp dir, removed when dropped; unique per test
/// binary, process and `test` name.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    pub fn new(test: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "tapeflow-{}-{}-{test}",
            env!("CARGO_CRATE_NAME"),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self, f: &str) -> std::path::PathBuf {
        self.0.join(f)
    }

    /// The names of the files in the directory, sorted.
    pub fn files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A compiled LSTM classifier train step (`LSTM(32)` → `Dense(10)` over 12 steps of 8
/// features, batch 16, sparse cross-entropy from logits, Adam): its inputs and the
/// model's trainable variables. The recurrence is a `scan` in the compiled graph.
pub struct LstmStep<F: Fn(&Tensor, &Tensor) -> tapeflow::Result<Tensor>> {
    pub step: tapeflow::trace::Function<(Tensor, Tensor), F>,
    pub x: Tensor,
    pub y: Tensor,
    pub vars: Vec<Variable>,
}

/// See [`LstmStep`]: `LSTM(32)` over 12 steps of 8 features, batch 16.
pub fn lstm_train_step() -> LstmStep<impl Fn(&Tensor, &Tensor) -> tapeflow::Result<Tensor>> {
    lstm_train_step_sized(32, 16, 12)
}

/// [`lstm_train_step`] with `units`, `batch` and `steps` (of 8 features). From 128 units
/// at batch 64 the per-step products fork, and the forward and reverse loops run as two
/// half-batch loops (`exec/row_split.rs`).
pub fn lstm_train_step_sized(
    units: usize,
    batch: usize,
    steps: usize,
) -> LstmStep<impl Fn(&Tensor, &Tensor) -> tapeflow::Result<Tensor>> {
    use tapeflow::nn::{Adam, Dense, Initializer, Loss, Optimizer, Sequential, LSTM};
    // explicit seeds: each call makes the same initial weights (derived seeds follow
    // the layer names, which are unique per process)
    let glorot = |s| Initializer::GlorotUniform { seed: Some(s) };
    let orthogonal = Initializer::Orthogonal {
        gain: 1.0,
        seed: Some(2),
    };
    let model = Sequential::new()
        .add(
            LSTM::new(units)
                .kernel_initializer(glorot(1))
                .recurrent_initializer(orthogonal),
        )
        .add(Dense::new(10).kernel_initializer(glorot(3)))
        .input_shape(&[steps, 8]);
    let vars = model.trainable_variables();
    let x = Tensor::random_normal(&[batch, steps, 8], 0.0, 1.0, 21, DType::F32);
    let y = Tensor::random_uniform(&[batch], 0.0, 10.0, 22, DType::F64).cast(DType::I64);
    let opt = Adam::new(1e-2);
    let loss_fn = tapeflow::nn::SparseCategoricalCrossentropy::from_logits(true);
    let step = function(move |x: &Tensor, y: &Tensor| {
        let tape = GradientTape::new();
        let loss = tape.record(|| loss_fn.call(y, &model.call(x, true)?))?;
        let vars = model.trainable_variables();
        opt.apply_gradients(&tape.gradient(&loss, &vars)?, &vars)?;
        Ok(loss)
    });
    LstmStep { step, x, y, vars }
}

/// Asserts that `compiled()` gives the bits of `eager` (f32 tensors) when run in pools of
/// 1, 2 and 4 rayon threads.
pub fn assert_eager_bits_on_1_2_4_threads(
    eager: &[Tensor],
    compiled: impl Fn() -> Vec<Tensor> + Sync,
) {
    let bits = |ts: &[Tensor]| -> Vec<Vec<u32>> {
        let f32s = |t: &Tensor| t.to_vec_f32().unwrap();
        ts.iter()
            .map(|t| f32s(t).iter().map(|v| v.to_bits()).collect())
            .collect()
    };
    for threads in [1, 2, 4] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let got = pool.install(&compiled);
        assert!(
            bits(&got) == bits(eager),
            "{threads} threads: compiled differs from eager"
        );
    }
}
