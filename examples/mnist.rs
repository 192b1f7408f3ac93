//! MNIST with a custom training loop: the TF2 tutorials' MLP 784-64-64-10, ported.
//!
//! ```text
//! cargo run --release --example mnist            # 5 epochs (≈ 0.97+ test accuracy)
//! cargo run --release --example mnist -- --epochs 2
//! ```
//!
//! What the TensorFlow program does, line by line: load MNIST and scale it to [0, 1],
//! `Dataset.from_tensor_slices(...).shuffle(10000).batch(32)`, a functional model
//! `Input(784) → Dense(64, relu) → Dense(64, relu) → Dense(10)`,
//! `SparseCategoricalCrossentropy(from_logits=True)`, `Adam()`, `Mean` and
//! `SparseCategoricalAccuracy` metrics reset every epoch, and a `@tf.function`
//! `train_step` with a `GradientTape` inside plus a `test_step`.
//!
//! Besides the per-epoch log it prints how long one train step takes eagerly and
//! compiled (measured in this run on a scratch copy of the model), writes the curves to
//! `mnist_training.svg` in the working directory, and ends with `test_accuracy = 0.9xxx`.

use std::time::Instant;
use tapeflow::data::Dataset;
use tapeflow::nn::{
    input_named, Activation, Adam, Dense, History, Layer, Loss, Mean, Metric, Model, Optimizer,
    SparseCategoricalAccuracy, SparseCategoricalCrossentropy,
};
use tapeflow::{
    function, function_with_signature, DType, Dim, GradientTape, Result, Tensor, TensorSpec,
};

/// `inputs = keras.Input(shape=(784,), name="digits")` ... `keras.Model(inputs, outputs)`.
fn build_model() -> Result<Model> {
    let inputs = input_named(&[784], "digits");
    let x = Dense::new(64).activation(Activation::Relu).apply(&inputs)?;
    let x = Dense::new(64).activation(Activation::Relu).apply(&x)?;
    let outputs = Dense::new(10).named("predictions").apply(&x)?;
    Model::new(&inputs, &outputs)
}

/// The body of `train_step`: forward under a tape, gradients, one optimizer update.
/// Returns the loss and the logits so metrics can be updated from them.
fn make_train_step(
    model: Model,
    loss_object: SparseCategoricalCrossentropy,
    optimizer: Adam,
) -> impl Fn(&Tensor, &Tensor) -> Result<(Tensor, Tensor)> + Clone {
    move |images: &Tensor, labels: &Tensor| {
        let tape = GradientTape::new();
        let (loss, predictions) = tape.record(|| -> Result<(Tensor, Tensor)> {
            let predictions = model.call(images, true)?;
            Ok((loss_object.call(labels, &predictions)?, predictions))
        })?;
        let vars = model.trainable_variables();
        let gradients = tape.gradient(&loss, &vars)?;
        optimizer.apply_gradients(&gradients, &vars)?;
        Ok((loss, predictions))
    }
}

fn epochs_from_args() -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--epochs")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .or_else(|| {
            std::env::var("MNIST_EPOCHS")
                .ok()
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(5)
}

/// Times `steps` train steps eagerly and compiled on a scratch model, in ms per step.
fn time_eager_vs_compiled(batches: &[(Tensor, Tensor)]) -> Result<(f64, f64, f64)> {
    let scratch = build_model()?;
    let step = make_train_step(
        scratch,
        SparseCategoricalCrossentropy::from_logits(true),
        Adam::default(),
    );
    let compiled = function(step.clone());
    let t = Instant::now();
    for (x, y) in batches {
        step(x, y)?;
    }
    let eager_ms = t.elapsed().as_secs_f64() * 1e3 / batches.len() as f64;
    let t = Instant::now();
    compiled.call(&batches[0].0, &batches[0].1)?; // traces, differentiates, plans
    let trace_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    for (x, y) in batches {
        compiled.call(x, y)?;
    }
    let compiled_ms = t.elapsed().as_secs_f64() * 1e3 / batches.len() as f64;
    Ok((eager_ms, compiled_ms, trace_ms))
}

fn main() -> Result<()> {
    let start = Instant::now();
    let epochs = epochs_from_args();

    // (x_train, y_train), (x_test, y_test) = mnist.load_data()
    let ((x_train, y_train), (x_test, y_test)) = tapeflow::datasets::mnist::load_data()?;
    // x_train, x_test = x_train / 255.0, x_test / 255.0
    let (x_train, x_test) = (x_train / 255.0, x_test / 255.0);
    let x_train = x_train.reshape(&[x_train.shape()[0], 784]);
    let x_test = x_test.reshape(&[x_test.shape()[0], 784]);
    println!(
        "loaded MNIST: train {:?}, test {:?} ({:.1}s)",
        x_train.shape(),
        x_test.shape(),
        start.elapsed().as_secs_f64()
    );

    let train_ds = Dataset::from_tensor_slices((x_train, y_train))?
        .shuffle(10000, 42)
        .batch(32)
        .prefetch(4);
    let test_ds = Dataset::from_tensor_slices((x_test, y_test))?
        .batch(32)
        .prefetch(4);

    let model = build_model()?;
    model.summary()?;

    let loss_object = SparseCategoricalCrossentropy::from_logits(true);
    let optimizer = Adam::default();

    let train_loss = Mean::new("train_loss");
    let train_accuracy = SparseCategoricalAccuracy::named("train_accuracy");
    let test_loss = Mean::new("test_loss");
    let test_accuracy = SparseCategoricalAccuracy::named("test_accuracy");

    // @tf.function(input_signature=[tf.TensorSpec([None, 784]), tf.TensorSpec([None], tf.int64)])
    // one trace serves every batch size, the last partial batch (16 test images) included
    let batch = Dim::sym("batch");
    let signature = [
        TensorSpec::with_dims(&[batch, 784.into()], DType::F32),
        TensorSpec::with_dims(&[batch], DType::I64),
    ];
    // def train_step(images, labels): ...
    let train_step = function_with_signature(
        make_train_step(model.clone(), loss_object, optimizer.clone()),
        &signature,
    );
    // def test_step(images, labels): ...
    let test_model = model.clone();
    let test_step = function_with_signature(
        move |images: &Tensor, labels: &Tensor| {
            let predictions = test_model.call(images, false)?;
            Ok((loss_object.call(labels, &predictions)?, predictions))
        },
        &signature,
    );

    // eager vs compiled, measured now on a scratch copy of the model
    let timing_batches: Vec<(Tensor, Tensor)> = train_ds.iter().take(40).collect();
    let (eager_ms, compiled_ms, trace_ms) = time_eager_vs_compiled(&timing_batches)?;
    println!(
        "train_step: eager {eager_ms:.3} ms/step, compiled {compiled_ms:.3} ms/step (speed-up {:.2}x; first call traced and compiled in {trace_ms:.0} ms)",
        eager_ms / compiled_ms
    );

    // the curves, as `fit` would return them (`history.history`)
    let mut history = History::default();
    for epoch in 0..epochs {
        let epoch_start = Instant::now();
        // Reset the metrics at the start of the next epoch
        train_loss.reset_state();
        train_accuracy.reset_state();
        test_loss.reset_state();
        test_accuracy.reset_state();

        let mut steps = 0usize;
        for (images, labels) in &train_ds {
            let (loss, predictions) = train_step.call(&images, &labels)?;
            train_loss.update(&loss)?;
            train_accuracy.update(&labels, &predictions)?;
            if steps.is_multiple_of(600) {
                println!(
                    "  step {steps:>4}: training loss (for one batch) {:.4}",
                    loss.to_scalar()?
                );
            }
            steps += 1;
        }
        let train_secs = epoch_start.elapsed().as_secs_f64();
        for (test_images, test_labels) in &test_ds {
            let (loss, predictions) = test_step.call(&test_images, &test_labels)?;
            test_loss.update(&loss)?;
            test_accuracy.update(&test_labels, &predictions)?;
        }
        println!(
            "Epoch {}, Loss: {:.4}, Accuracy: {:.2}, Test Loss: {:.4}, Test Accuracy: {:.2}  ({steps} steps, {:.2} ms/step, {:.1}s)",
            epoch + 1,
            train_loss.result(),
            train_accuracy.result() * 100.0,
            test_loss.result(),
            test_accuracy.result() * 100.0,
            train_secs * 1e3 / steps as f64,
            epoch_start.elapsed().as_secs_f64()
        );
        history.append("loss", train_loss.result());
        history.append("accuracy", train_accuracy.result());
        history.append("val_loss", test_loss.result());
        history.append("val_accuracy", test_accuracy.result());
    }
    println!(
        "train_step traced {} time(s), test_step {} time(s)",
        train_step.trace_count(),
        test_step.trace_count()
    );

    match history.plot("mnist_training.svg") {
        Ok(()) => println!("wrote mnist_training.svg"),
        Err(e) => eprintln!("could not write mnist_training.svg: {e}"),
    }
    println!("total time {:.1}s", start.elapsed().as_secs_f64());
    println!("test_accuracy = {:.4}", test_accuracy.result());
    Ok(())
}
