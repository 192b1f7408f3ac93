//! The TensorFlow 2 quickstart for experts (tutorial 000's custom loop), line by line:
//! `load_data()` and `/ 255.0`, `from_tensor_slices(...).shuffle(10000).batch(32)`, a
//! subclassed `MyModel` (Conv2D(32, 3, relu) → Flatten → Dense(128, relu) → Dense(10)),
//! and compiled `train_step` / `test_step` that update the metrics *inside* the compiled
//! step (`train_loss(loss)`, `train_accuracy(labels, predictions)`).
//!
//! ```text
//! cargo run --release --example quickstart                 # 5 epochs, as the tutorial
//! cargo run --release --example quickstart -- --epochs 2   # test_accuracy ≥ 0.98 already
//! ```

use std::time::Instant;
use tapeflow::data::Dataset;
use tapeflow::nn::{
    Activation, Adam, Conv2D, Dense, Flatten, Layer, Loss, Mean, Metric, Model, Module, Optimizer,
    SparseCategoricalAccuracy, SparseCategoricalCrossentropy,
};
use tapeflow::{function, GradientTape, Result, Tensor};

/// `class MyModel(Model)`: the layers are made in `__init__` ...
struct MyModel {
    conv1: Conv2D,
    flatten: Flatten,
    d1: Dense,
    d2: Dense,
}

impl MyModel {
    fn new() -> MyModel {
        MyModel {
            conv1: Conv2D::new(32, 3).activation(Activation::Relu),
            flatten: Flatten::new(),
            d1: Dense::new(128).activation(Activation::Relu),
            d2: Dense::new(10),
        }
    }
}

/// ... and used in `call`.
impl Module for MyModel {
    fn call(&self, x: &Tensor, training: bool) -> Result<Tensor> {
        let x = self.conv1.call(x, training)?;
        let x = self.flatten.call(&x, training)?;
        let x = self.d1.call(&x, training)?;
        self.d2.call(&x, training)
    }
}

fn epochs_from_args() -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--epochs")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

fn main() -> Result<()> {
    let start = Instant::now();
    let epochs = epochs_from_args();

    // (x_train, y_train), (x_test, y_test) = mnist.load_data()
    let ((x_train, y_train), (x_test, y_test)) = tapeflow::datasets::mnist::load_data()?;
    // x_train, x_test = x_train / 255.0, x_test / 255.0
    let (x_train, x_test) = (x_train / 255.0, x_test / 255.0);
    // Add a channels dimension: x_train[..., tf.newaxis].astype("float32")
    let x_train = x_train.expand_dims(-1);
    let x_test = x_test.expand_dims(-1);

    // train_ds = tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(10000).batch(32)
    let train_ds = Dataset::from_tensor_slices((x_train, y_train))?
        .shuffle(10000, 0)
        .batch(32);
    // test_ds = tf.data.Dataset.from_tensor_slices((x_test, y_test)).batch(32)
    let test_ds = Dataset::from_tensor_slices((x_test, y_test))?.batch(32);

    // model = MyModel()
    let model = Model::from_module(MyModel::new());

    let loss_object = SparseCategoricalCrossentropy::from_logits(true);
    let optimizer = Adam::default();

    let train_loss = Mean::new("train_loss");
    let train_accuracy = SparseCategoricalAccuracy::named("train_accuracy");
    let test_loss = Mean::new("test_loss");
    let test_accuracy = SparseCategoricalAccuracy::named("test_accuracy");

    // @tf.function
    // def train_step(images, labels):
    let train_step = {
        // the closure holds handles: the model, optimizer and metrics it updates
        let (model, optimizer) = (model.clone(), optimizer.clone());
        let (train_loss, train_accuracy) = (train_loss.clone(), train_accuracy.clone());
        function(move |images: &Tensor, labels: &Tensor| {
            let tape = GradientTape::new();
            let (loss, predictions) = tape.record(|| -> Result<(Tensor, Tensor)> {
                // training=True is only needed if there are layers with different
                // behavior during training versus inference (e.g. Dropout).
                let predictions = model.call(images, true)?;
                Ok((loss_object.call(labels, &predictions)?, predictions))
            })?;
            let gradients = tape.gradient(&loss, &model.trainable_variables())?;
            optimizer.apply_gradients(&gradients, &model.trainable_variables())?;

            train_loss.update(&loss)?;
            train_accuracy.update(labels, &predictions)?;
            Ok(())
        })
    };

    // @tf.function
    // def test_step(images, labels):
    let test_step = {
        let model = model.clone();
        let (test_loss, test_accuracy) = (test_loss.clone(), test_accuracy.clone());
        function(move |images: &Tensor, labels: &Tensor| {
            // training=False is only needed if there are layers with different
            // behavior during training versus inference (e.g. Dropout).
            let predictions = model.call(images, false)?;
            let t_loss = loss_object.call(labels, &predictions)?;

            test_loss.update(&t_loss)?;
            test_accuracy.update(labels, &predictions)?;
            Ok(())
        })
    };

    for epoch in 0..epochs {
        let epoch_start = Instant::now();
        // Reset the metrics at the start of the next epoch
        train_loss.reset_state();
        train_accuracy.reset_state();
        test_loss.reset_state();
        test_accuracy.reset_state();

        for (images, labels) in &train_ds {
            train_step.call(&images, &labels)?;
        }

        for (test_images, test_labels) in &test_ds {
            test_step.call(&test_images, &test_labels)?;
        }

        println!(
            "Epoch {}, Loss: {:.4}, Accuracy: {:.2}, Test Loss: {:.4}, Test Accuracy: {:.2} ({:.1}s)",
            epoch + 1,
            train_loss.result(),
            train_accuracy.result() * 100.0,
            test_loss.result(),
            test_accuracy.result() * 100.0,
            epoch_start.elapsed().as_secs_f64()
        );
    }
    // built by its first call: the layers that call used
    model.summary()?;
    println!(
        "train_step traced {} time(s), test_step {} time(s); total {:.1}s",
        train_step.trace_count(),
        test_step.trace_count(),
        start.elapsed().as_secs_f64()
    );
    println!("test_accuracy = {:.4}", test_accuracy.result());
    Ok(())
}
