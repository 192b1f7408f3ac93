//! `model.compile` + `model.fit`, ported from the TF2 tutorial: first on random data
//! (MSE and `SGD(learning_rate=0.001)`, `epochs=10, batch_size=32`), then the MLP on MNIST
//! with `SparseCategoricalCrossentropy`, Adam, an accuracy metric and validation data.
//!
//! ```text
//! cargo run --release --example fit                 # MNIST part: 3 epochs on all data
//! cargo run --release --example fit -- --epochs 1 --eager
//! ```
//! `fit` compiles its train step with `function`; `--eager` runs it eagerly instead.

use tapeflow::nn::{
    Activation, Adam, Dense, FitOptions, MeanSquaredError, Model, Sequential,
    SparseCategoricalCrossentropy, SGD,
};
use tapeflow::{DType, Result};

fn epochs_from_args(default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--epochs")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<()> {
    let eager = std::env::args().any(|a| a == "--eager");

    // --- the tutorial's first snippet: random data ---------------------------------------
    // model = MyModel()
    let model: Model = Sequential::named("my_model")
        .add(Dense::new(16).activation(Activation::Relu))
        .add(Dense::new(1))
        .into();
    // model.compile(loss=tf.losses.mean_squared_error, optimizer=tf.optimizers.SGD(learning_rate=0.001))
    model.compile(MeanSquaredError, SGD::new(0.001), &[])?;
    // x = np.random.rand(64, 10); y = np.random.rand(64, 1)
    let x = tapeflow::Tensor::random_uniform(&[64, 10], 0.0, 1.0, 0, DType::F32);
    let y = tapeflow::Tensor::random_uniform(&[64, 1], 0.0, 1.0, 1, DType::F32);
    // model.fit(x, y, epochs=10, batch_size=32)
    let history = model.fit(&x, &y, FitOptions::new(10, 32).run_eagerly(eager))?;
    let losses: Vec<String> = history
        .get("loss")
        .unwrap_or(&[])
        .iter()
        .map(|v| format!("{v:.4}"))
        .collect();
    println!("random data: loss per epoch {}", losses.join(" "));

    // --- the same API on MNIST -----------------------------------------------------------
    let ((x_train, y_train), (x_test, y_test)) = tapeflow::datasets::mnist::load_data()?;
    let (x_train, x_test) = (x_train / 255.0, x_test / 255.0);
    let x_train = x_train.reshape(&[x_train.shape()[0], 784]);
    let x_test = x_test.reshape(&[x_test.shape()[0], 784]);
    let mnist: Model = Sequential::named("mnist_mlp")
        .add(Dense::new(64).activation(Activation::Relu))
        .add(Dense::new(64).activation(Activation::Relu))
        .add(Dense::new(10))
        .input_shape(&[784])
        .into();
    mnist.summary()?;
    mnist.compile(
        SparseCategoricalCrossentropy::from_logits(true),
        Adam::default(),
        &["accuracy"],
    )?;
    let opts = FitOptions::new(epochs_from_args(3), 32)
        .validation_data(&x_test, &y_test)
        .run_eagerly(eager);
    let history = mnist.fit(&x_train, &y_train, opts)?;
    for (name, values) in &history.history {
        println!(
            "{name:>13}: {}",
            values
                .iter()
                .map(|v| format!("{v:.4}"))
                .collect::<Vec<_>>()
                .join("  ")
        );
    }
    let logs = mnist.evaluate(&x_test, &y_test, 256)?;
    println!(
        "evaluate: {}",
        logs.iter()
            .map(|(k, v)| format!("{k} = {v:.4}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let first = mnist.predict(&x_test.slice_axis(0, 0, 8), 8)?.argmax(-1);
    println!(
        "predict (first 8 test digits): {:?}, labels {:?}",
        first.to_vec_i64()?,
        y_test.slice_axis(0, 0, 8).to_vec_i64()?
    );
    Ok(())
}
