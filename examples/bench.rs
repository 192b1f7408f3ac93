//! Eager vs compiled, same code: the benchmark report.
//!
//! `cargo run --release --example bench` prints a markdown table; `-- --json` prints the
//! same as one JSON array. Each workload is one training (or derivative) step written
//! once as a closure, run eagerly op by op and compiled with `function`.
//!
//! - W1 mlp_small: MLP 784-64-64-10, batch 64, SparseCategoricalCrossentropy(from_logits), SGD 1e-3
//! - W2 cnn: Conv2D(32,3,relu) → MaxPool2 → Conv2D(64,3,relu) → MaxPool2 → Conv2D(64,3,relu)
//!   → Flatten → Dense(64,relu) → Dense(10), batch 32, 28x28x1, Adam 1e-3
//! - W3 mlp_large: MLP 784-1024-1024-10, batch 256, SGD (GFLOP/s reported)
//! - W4 linreg: y = a·X + b on 1000 points, sum of squares, assign_sub gradient descent
//! - W5 second_order: grad(sum(grad(f)))(x), f(x) = sum(sin(x)·e^(−x²)), x of 1e6 elements

use std::time::{Duration, Instant};
use tapeflow::nn::{
    Activation, Adam, Conv2D, Dense, Flatten, Loss, MaxPooling2D, Model, Optimizer, Sequential,
    SparseCategoricalCrossentropy, SGD,
};
use tapeflow::{function, DType, GradientTape, Result, Tensor, Variable};

struct Row {
    workload: &'static str,
    eager_us: f64,
    compiled_us: f64,
    compile_ms: f64,
    gflops: Option<f64>,
}

/// Median seconds per call of `f`, over batches of calls until `budget` is spent.
fn time(budget: Duration, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?; // warm-up
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed() < budget || samples.len() < 3 {
        let t = Instant::now();
        f()?;
        samples.push(t.elapsed().as_secs_f64());
        if samples.len() >= 2000 {
            break;
        }
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    Ok(samples[samples.len() / 2])
}

/// Times `step` eagerly and compiled; `flops` per step gives GFLOP/s of the compiled run.
fn bench2<F>(
    workload: &'static str,
    budget: Duration,
    step: F,
    x: &Tensor,
    y: &Tensor,
    flops: Option<f64>,
) -> Result<Row>
where
    F: Fn(&Tensor, &Tensor) -> Result<Tensor> + Clone,
{
    let eager = time(budget, || step(x, y).map(|_| ()))?;
    let compiled_fn = function(step);
    let t = Instant::now();
    compiled_fn.call(x, y)?;
    let compile_ms = t.elapsed().as_secs_f64() * 1e3;
    let compiled = time(budget, || compiled_fn.call(x, y).map(|_| ()))?;
    Ok(Row {
        workload,
        eager_us: eager * 1e6,
        compiled_us: compiled * 1e6,
        compile_ms,
        gflops: flops.map(|f| f / compiled / 1e9),
    })
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

fn main() -> Result<()> {
    let json = std::env::args().any(|a| a == "--json");
    let quick = std::env::args().any(|a| a == "--quick");
    let budget = Duration::from_millis(if quick { 200 } else { 2000 });
    let mut rows = Vec::new();

    let (x, y) = batch(&[64, 784], 64, 1);
    rows.push(bench2(
        "w1_mlp_small",
        budget,
        classifier_step(mlp(&[64, 64, 10]), SGD::new(1e-3)),
        &x,
        &y,
        Some(mlp_flops(64.0, &[784.0, 64.0, 64.0, 10.0])),
    )?);

    let (x, y) = batch(&[32, 28, 28, 1], 32, 2);
    rows.push(bench2(
        "w2_cnn",
        budget,
        classifier_step(cnn(), Adam::new(1e-3)),
        &x,
        &y,
        None,
    )?);

    let (x, y) = batch(&[256, 784], 256, 3);
    rows.push(bench2(
        "w3_mlp_large",
        budget,
        classifier_step(mlp(&[1024, 1024, 10]), SGD::new(1e-3)),
        &x,
        &y,
        Some(mlp_flops(256.0, &[784.0, 1024.0, 1024.0, 10.0])),
    )?);

    let a = Variable::named("a", Tensor::scalar(0.0));
    let b = Variable::named("b", Tensor::scalar(0.0));
    let xs = Tensor::random_normal(&[1000], 0.0, 1.0, 4, DType::F32);
    let ys = &xs * 3.0 + 2.0;
    let linreg = move |x: &Tensor, y: &Tensor| -> Result<Tensor> {
        let tape = GradientTape::new();
        let loss = tape.record(|| (&a.read() * x + &b.read() - y).square().sum_all());
        let g = tape.gradient(&loss, &[a.clone(), b.clone()])?;
        a.assign_sub(&(g[0].as_ref().expect("connected") * 1e-4));
        b.assign_sub(&(g[1].as_ref().expect("connected") * 1e-4));
        Ok(loss)
    };
    rows.push(bench2("w4_linreg", budget, linreg, &xs, &ys, None)?);

    let second_order = |x: &Tensor, _unused: &Tensor| -> Result<Tensor> {
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
    };
    let x5 = Tensor::random_uniform(&[1_000_000], -3.0, 3.0, 5, DType::F32);
    rows.push(bench2(
        "w5_second_order",
        budget,
        second_order,
        &x5,
        &Tensor::scalar(0.0),
        None,
    )?);

    let threads = rayon::current_num_threads();
    if json {
        let items: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{{\"workload\":\"{}\",\"eager_us\":{:.1},\"compiled_us\":{:.1},\"compile_ms\":{:.2},\"gflops\":{},\"threads\":{}}}",
                    r.workload,
                    r.eager_us,
                    r.compiled_us,
                    r.compile_ms,
                    r.gflops.map(|g| format!("{g:.1}")).unwrap_or_else(|| "null".into()),
                    threads
                )
            })
            .collect();
        println!("[{}]", items.join(","));
    } else {
        println!("| workload | eager µs/step | compiled µs/step | speedup | compile ms | GFLOP/s | threads |");
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
        for r in &rows {
            println!(
                "| {} | {:.1} | {:.1} | {:.2}x | {:.2} | {} | {} |",
                r.workload,
                r.eager_us,
                r.compiled_us,
                r.eager_us / r.compiled_us,
                r.compile_ms,
                r.gflops
                    .map(|g| format!("{g:.1}"))
                    .unwrap_or_else(|| "–".into()),
                threads
            );
        }
    }
    Ok(())
}
