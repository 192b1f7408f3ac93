//! MNIST read as sequences: each image is 28 time steps of 28 pixels, `LSTM(128)` →
//! `Dense(10)`, Adam, a compiled train step traced once.
//!
//! ```text
//! cargo run --release --example mnist_lstm              # 3 epochs (0.972 test accuracy)
//! cargo run --release --example mnist_lstm -- --epochs 1
//! ```
//!
//! The TensorFlow program it ports:
//!
//! ```text
//! model = keras.Sequential([keras.Input((28, 28)), layers.LSTM(128), layers.Dense(10)])
//! loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
//! optimizer = keras.optimizers.Adam(1e-3)
//! @tf.function
//! def train_step(x, y):
//!     with tf.GradientTape() as tape:
//!         loss = loss_fn(y, model(x, training=True))
//!     grads = tape.gradient(loss, model.trainable_variables)
//!     optimizer.apply_gradients(zip(grads, model.trainable_variables))
//!     return loss
//! ```
//!
//! The recurrence is one `scan` op in the compiled graph (its 28 steps are not unrolled);
//! the example prints how many ops the compiled train step has, how long a step takes,
//! and ends with `test_accuracy = 0.9xxx`.

use std::time::Instant;
use tapeflow::data::Dataset;
use tapeflow::nn::{
    Adam, Dense, Loss, Mean, Metric, Optimizer, Sequential, SparseCategoricalAccuracy,
    SparseCategoricalCrossentropy, LSTM,
};
use tapeflow::{function_with_signature, DType, Dim, GradientTape, Result, Tensor, TensorSpec};

fn epochs_from_args() -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--epochs")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

fn main() -> Result<()> {
    let start = Instant::now();
    let epochs = epochs_from_args();
    let ((x_train, y_train), (x_test, y_test)) = tapeflow::datasets::mnist::load_data()?;
    // [n, 28, 28] pixels in [0, 1]: rows are the time steps
    let (x_train, x_test) = (x_train / 255.0, x_test / 255.0);
    let train_ds = Dataset::from_tensor_slices((x_train, y_train))?
        .shuffle(10000, 7)
        .batch(64)
        .prefetch(4);
    let test_ds = Dataset::from_tensor_slices((x_test, y_test))?
        .batch(256)
        .prefetch(4);

    let model = Sequential::new()
        .add(LSTM::new(128))
        .add(Dense::new(10))
        .input_shape(&[28, 28]);
    model.summary()?;
    let loss_fn = SparseCategoricalCrossentropy::from_logits(true);
    let optimizer = Adam::new(1e-3);

    // one trace for every batch size: the last partial batches included
    let batch = Dim::sym("batch");
    let signature = [
        TensorSpec::with_dims(&[batch, 28.into(), 28.into()], DType::F32),
        TensorSpec::with_dims(&[batch], DType::I64),
    ];
    let (m, opt) = (model.clone(), optimizer.clone());
    let train_step = function_with_signature(
        move |x: &Tensor, y: &Tensor| {
            let tape = GradientTape::new();
            let loss = tape.record(|| loss_fn.call(y, &m.call(x, true)?))?;
            let vars = m.trainable_variables();
            opt.apply_gradients(&tape.gradient(&loss, &vars)?, &vars)?;
            Ok(loss)
        },
        &signature,
    );
    let m = model.clone();
    let predict =
        function_with_signature(move |x: &Tensor, _y: &Tensor| m.call(x, false), &signature);

    let train_loss = Mean::new("train_loss");
    let test_accuracy = SparseCategoricalAccuracy::named("test_accuracy");
    for epoch in 0..epochs {
        let t = Instant::now();
        train_loss.reset_state();
        test_accuracy.reset_state();
        let mut steps = 0usize;
        for (x, y) in &train_ds {
            let loss = train_step.call(&x, &y)?;
            train_loss.update(&loss)?;
            if steps == 0 && epoch == 0 {
                let cf = train_step.concrete(&[&x, &y])?;
                println!(
                    "train_step compiled in {:.0} ms: {} ops, the recurrence a single scan",
                    t.elapsed().as_secs_f64() * 1e3,
                    cf.graph().len()
                );
            }
            steps += 1;
        }
        let train_secs = t.elapsed().as_secs_f64();
        for (x, y) in &test_ds {
            let logits = predict.call(&x, &y)?;
            test_accuracy.update(&y, &logits)?;
        }
        println!(
            "Epoch {}, Loss: {:.4}, Test Accuracy: {:.2}  ({steps} steps, {:.2} ms/step, {:.1}s)",
            epoch + 1,
            train_loss.result(),
            test_accuracy.result() * 100.0,
            train_secs * 1e3 / steps as f64,
            t.elapsed().as_secs_f64()
        );
    }
    println!(
        "train_step traced {} time(s); total time {:.1}s",
        train_step.trace_count(),
        start.elapsed().as_secs_f64()
    );
    println!("test_accuracy = {:.4}", test_accuracy.result());
    Ok(())
}
