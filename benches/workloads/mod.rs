//! The benchmark workloads W1–W6, shared by `examples/bench.rs` (the report) and
//! `benches/steps.rs` (criterion). Each is one step closure plus its inputs; the same
//! closure runs eagerly and compiled.
#![allow(dead_code)]

use std::sync::Arc;
use tapeflow::nn::{
    Activation, Adam, Conv2D, Dense, Flatten, Loss, MaxPooling2D, Model, Optimizer, Sequential,
    SparseCategoricalCrossentropy, LSTM, SGD,
};
use tapeflow::{DType, GradientTape, Result, Tensor, Variable};

/// A step closure: `(x, y) -> loss` (or the derivative for W5).
pub type Step = Arc<dyn Fn(&Tensor, &Tensor) -> Result<Tensor> + Send + Sync>;

/// One workload: its name, step, inputs and FLOPs per step where they are meaningful.
pub struct Workload {
    pub name: &'static str,
    pub step: Step,
    pub x: Tensor,
    pub y: Tensor,
    pub flops: Option<f64>,
}

impl Workload {
    /// The step as a plain closure (what `function` traces).
    pub fn closure(&self) -> impl Fn(&Tensor, &Tensor) -> Result<Tensor> + Clone {
        let s = self.step.clone();
        move |x: &Tensor, y: &Tensor| s(x, y)
    }
}

/// A classifier train step: forward, loss, gradients, optimizer update.
fn classifier_step<O: Optimizer + Clone + 'static>(
    model: Model,
    opt: O,
) -> impl Fn(&Tensor, &Tensor) -> Result<Tensor> + Clone {
    let loss_fn = SparseCategoricalCrossentropy::from_logits(true);
    move |x: &Tensor, y: &Tensor| {
        let tape = GradientTape::new();
        let loss = tape.record(|| loss_fn.call(y, &model.call(x, true)?))?;
        let vars = model.trainable_variables();
        opt.apply_gradients(&tape.gradient(&loss, &vars)?, &vars)?;
        Ok(loss)
    }
}

fn mlp(widths: &[usize]) -> Model {
    let mut s = Sequential::new();
    for (i, &w) in widths.iter().enumerate() {
        let d = Dense::new(w);
        s = s.add(if i + 1 < widths.len() {
            d.activation(Activation::Relu)
        } else {
            d
        });
    }
    s.input_shape(&[784]).into()
}

fn cnn() -> Model {
    Sequential::new()
        .add(Conv2D::new(32, 3).activation(Activation::Relu))
        .add(MaxPooling2D::new((2, 2)))
        .add(Conv2D::new(64, 3).activation(Activation::Relu))
        .add(MaxPooling2D::new((2, 2)))
        .add(Conv2D::new(64, 3).activation(Activation::Relu))
        .add(Flatten::new())
        .add(Dense::new(64).activation(Activation::Relu))
        .add(Dense::new(10))
        .input_shape(&[28, 28, 1])
        .into()
}

fn batch(shape: &[usize], n: usize, seed: u64) -> (Tensor, Tensor) {
    let x = Tensor::random_uniform(shape, 0.0, 1.0, seed, DType::F32);
    let y = Tensor::random_uniform(&[n], 0.0, 10.0, seed + 1, DType::F64).cast(DType::I64);
    (x, y)
}

fn mlp_flops(batch: f64, widths: &[f64]) -> f64 {
    // forward 2·B·Σ(i·o); backward: weight grads for every layer + input grads for all but the first
    let layers: Vec<f64> = widths
        .windows(2)
        .map(|w| 2.0 * batch * w[0] * w[1])
        .collect();
    let fwd: f64 = layers.iter().sum();
    fwd + fwd + (fwd - layers[0])
}

/// The mnist_lstm model: each image as 28 steps of 28 pixels, `LSTM(128)` + `Dense(10)`.
pub fn lstm_model() -> Model {
    Sequential::new()
        .add(LSTM::new(128))
        .add(Dense::new(10))
        .input_shape(&[28, 28])
        .into()
}

/// FLOPs of an LSTM(units) + Dense(classes) train step on `[batch, steps, features]`:
/// forward `2·B·T·(F+U)·4U` plus the dense layer, backward twice that without the
/// gradient of the input.
fn lstm_flops(b: f64, t: f64, f: f64, u: f64, classes: f64) -> f64 {
    let input = 2.0 * b * t * f * 4.0 * u;
    let fwd = input + 2.0 * b * t * u * 4.0 * u + 2.0 * b * u * classes;
    3.0 * fwd - input
}

/// W1–W6, built fresh (new variables) each call.
pub fn all() -> Vec<Workload> {
    let mut v = Vec::new();
    let (x, y) = batch(&[64, 784], 64, 1);
    v.push(Workload {
        name: "w1_mlp_small",
        step: Arc::new(classifier_step(mlp(&[64, 64, 10]), SGD::new(1e-3))),
        x,
        y,
        flops: Some(mlp_flops(64.0, &[784.0, 64.0, 64.0, 10.0])),
    });
    let (x, y) = batch(&[32, 28, 28, 1], 32, 2);
    v.push(Workload {
        name: "w2_cnn",
        step: Arc::new(classifier_step(cnn(), Adam::new(1e-3))),
        x,
        y,
        flops: None,
    });
    let (x, y) = batch(&[256, 784], 256, 3);
    v.push(Workload {
        name: "w3_mlp_large",
        step: Arc::new(classifier_step(mlp(&[1024, 1024, 10]), SGD::new(1e-3))),
        x,
        y,
        flops: Some(mlp_flops(256.0, &[784.0, 1024.0, 1024.0, 10.0])),
    });
    let xs = Tensor::random_normal(&[1000], 0.0, 1.0, 4, DType::F32);
    let ys = &xs * 3.0 + 2.0;
    v.push(Workload {
        name: "w4_linreg",
        step: Arc::new(linreg()),
        x: xs,
        y: ys,
        flops: None,
    });
    let x5 = Tensor::random_uniform(&[1_000_000], -3.0, 3.0, 5, DType::F32);
    v.push(Workload {
        name: "w5_second_order",
        step: Arc::new(second_order),
        x: x5,
        y: Tensor::scalar(0.0),
        flops: None,
    });
    let (x, y) = batch(&[64, 28, 28], 64, 6);
    v.push(Workload {
        name: "w6_lstm",
        step: Arc::new(classifier_step(lstm_model(), Adam::new(1e-3))),
        x,
        y,
        flops: Some(lstm_flops(64.0, 28.0, 28.0, 128.0, 10.0)),
    });
    v
}

/// W4: y = a·X + b, sum of squares, plain gradient descent with assign_sub.
fn linreg() -> impl Fn(&Tensor, &Tensor) -> Result<Tensor> + Send + Sync {
    let a = Variable::named("a", Tensor::scalar(0.0));
    let b = Variable::named("b", Tensor::scalar(0.0));
    move |x: &Tensor, y: &Tensor| -> Result<Tensor> {
        let tape = GradientTape::new();
        let loss = tape.record(|| (&a.read() * x + &b.read() - y).square().sum_all());
        let g = tape.gradient(&loss, &[a.clone(), b.clone()])?;
        a.assign_sub(&(g[0].as_ref().expect("connected") * 1e-4));
        b.assign_sub(&(g[1].as_ref().expect("connected") * 1e-4));
        Ok(loss)
    }
}

/// W5: d2 = grad(sum(grad(f)))(x) for f(x) = sum(sin(x)·e^(−x²)).
fn second_order(x: &Tensor, _unused: &Tensor) -> Result<Tensor> {
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
