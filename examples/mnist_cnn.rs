//! The TF2 "advanced quickstart" CNN on MNIST, ported: a functional model
//! `Conv2D(32,3,relu) → MaxPool(2) → Conv2D(64,3,relu) → MaxPool(2) → Conv2D(64,3,relu)
//! → Flatten → Dense(64,relu) → Dense(10)`, `model.summary()`, Adam, and compiled
//! `train_step` / `test_step` functions with train and test metrics reset every epoch.
//!
//! ```text
//! cargo run --release --example mnist_cnn                      # the tutorial: 5 epochs, all data
//! cargo run --release --example mnist_cnn -- --epochs 1        # one epoch already gives ≈ 0.98
//! cargo run --release --example mnist_cnn -- --quick           # 1 epoch on 6000/1000 samples
//! cargo run --release --example mnist_cnn -- --train-samples 12000 --test-samples 2000
//! ```
//! The same settings can come from `MNIST_EPOCHS`, `MNIST_TRAIN_SAMPLES`, `MNIST_TEST_SAMPLES`.

use std::time::Instant;
use tapeflow::data::Dataset;
use tapeflow::nn::{
    input, Activation, Adam, Conv2D, Dense, Flatten, Layer, Loss, MaxPooling2D, Mean, Metric,
    Model, Optimizer, SparseCategoricalAccuracy, SparseCategoricalCrossentropy,
};
use tapeflow::{function, DType, GradientTape, Result, Tensor};

/// `--name value` from the command line, else the environment variable, else `default`.
fn setting(flag: &str, env: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .or_else(|| std::env::var(env).ok().and_then(|v| v.parse().ok()))
        .unwrap_or(default)
}

fn first_rows(t: &Tensor, n: usize) -> Tensor {
    let n = n.min(t.shape()[0]);
    t.gather(&Tensor::arange(0, n as i64, DType::I64), 0)
}

fn main() -> Result<()> {
    let start = Instant::now();
    let quick = std::env::args().any(|a| a == "--quick");
    let epochs = setting("--epochs", "MNIST_EPOCHS", if quick { 1 } else { 5 });
    let n_train = setting(
        "--train-samples",
        "MNIST_TRAIN_SAMPLES",
        if quick { 6000 } else { 60000 },
    );
    let n_test = setting(
        "--test-samples",
        "MNIST_TEST_SAMPLES",
        if quick { 1000 } else { 10000 },
    );

    let mnist = tapeflow::datasets::mnist::load_data()?;
    let ((x_train, y_train), (x_test, y_test)) = mnist;
    // x_train, x_test = x_train / 255.0, x_test / 255.0
    let (x_train, x_test) = (x_train / 255.0, x_test / 255.0);
    // add a channels dimension: x[..., tf.newaxis]
    let x_train = first_rows(&x_train, n_train).expand_dims(-1);
    let y_train = first_rows(&y_train, n_train);
    let x_test = first_rows(&x_test, n_test).expand_dims(-1);
    let y_test = first_rows(&y_test, n_test);
    println!(
        "train {:?}, test {:?}, {epochs} epoch(s)",
        x_train.shape(),
        x_test.shape()
    );

    let train_ds = Dataset::from_tensor_slices((x_train, y_train))?
        .shuffle(10000, 0)
        .batch(32)
        .prefetch(4);
    let test_ds = Dataset::from_tensor_slices((x_test, y_test))?
        .batch(32)
        .prefetch(4);

    let inputs = input(&[28, 28, 1]);
    let x = Conv2D::new(32, 3)
        .activation(Activation::Relu)
        .apply(&inputs)?;
    let x = MaxPooling2D::new((2, 2)).apply(&x)?;
    let x = Conv2D::new(64, 3).activation(Activation::Relu).apply(&x)?;
    let x = MaxPooling2D::new((2, 2)).apply(&x)?;
    let x = Conv2D::new(64, 3).activation(Activation::Relu).apply(&x)?;
    let x = Flatten::new().apply(&x)?;
    let x = Dense::new(64).activation(Activation::Relu).apply(&x)?;
    let outputs = Dense::new(10).apply(&x)?;
    let model = Model::new(&inputs, &outputs)?;
    model.summary()?;

    let loss_object = SparseCategoricalCrossentropy::from_logits(true);
    let optimizer = Adam::default();

    let train_loss = Mean::new("train_loss");
    let train_accuracy = SparseCategoricalAccuracy::named("train_accuracy");
    let test_loss = Mean::new("test_loss");
    let test_accuracy = SparseCategoricalAccuracy::named("test_accuracy");

    let (m, opt) = (model.clone(), optimizer.clone());
    let train_step = function(move |images: &Tensor, labels: &Tensor| {
        let tape = GradientTape::new();
        let (loss, predictions) = tape.record(|| -> Result<(Tensor, Tensor)> {
            let predictions = m.call(images, true)?;
            Ok((loss_object.call(labels, &predictions)?, predictions))
        })?;
        let vars = m.trainable_variables();
        let gradients = tape.gradient(&loss, &vars)?;
        opt.apply_gradients(&gradients, &vars)?;
        Ok((loss, predictions))
    });
    let m = model.clone();
    let test_step = function(move |images: &Tensor, labels: &Tensor| {
        let predictions = m.call(images, false)?;
        Ok((loss_object.call(labels, &predictions)?, predictions))
    });

    let batches = train_ds.cardinality().unwrap_or(0);
    for epoch in 0..epochs {
        let epoch_start = Instant::now();
        train_loss.reset_state();
        train_accuracy.reset_state();
        test_loss.reset_state();
        test_accuracy.reset_state();

        for (step, (images, labels)) in train_ds.iter().enumerate() {
            let (loss, predictions) = train_step.call(&images, &labels)?;
            train_loss.update(&loss)?;
            train_accuracy.update(&labels, &predictions)?;
            if step % 200 == 0 {
                println!(
                    "  step {step:>4}/{batches}: loss {:.4} ({:.0} ms/step so far)",
                    train_loss.result(),
                    epoch_start.elapsed().as_secs_f64() * 1e3 / (step + 1) as f64
                );
            }
        }
        for (images, labels) in &test_ds {
            let (loss, predictions) = test_step.call(&images, &labels)?;
            test_loss.update(&loss)?;
            test_accuracy.update(&labels, &predictions)?;
        }
        println!(
            "Epoch {}, Loss: {:.4}, Accuracy: {:.2}, Test Loss: {:.4}, Test Accuracy: {:.2}  ({:.1}s)",
            epoch + 1,
            train_loss.result(),
            train_accuracy.result() * 100.0,
            test_loss.result(),
            test_accuracy.result() * 100.0,
            epoch_start.elapsed().as_secs_f64()
        );
    }
    println!("total time {:.1}s", start.elapsed().as_secs_f64());
    println!("test_accuracy = {:.4}", test_accuracy.result());
    Ok(())
}
