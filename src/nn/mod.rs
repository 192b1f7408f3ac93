//! `nn`: the Keras-style training stack — layers, models, losses, optimizers, metrics,
//! initializers, `compile`/`fit`, callbacks, checkpoints and whole-model saving.
//!
//! Everything here is built from the public core API only ([`Tensor`](crate::Tensor)
//! ops, [`Variable`](crate::Variable), [`GradientTape`](crate::GradientTape) and
//! [`function`](crate::function)), so the same layer code runs eagerly and inside a
//! traced, compiled `train_step`.
//!
//! ```
//! use tapeflow::nn::{Activation, Dense, Sequential};
//! use tapeflow::Tensor;
//! let model = Sequential::new()
//!     .add(Dense::new(4).activation(Activation::Relu))
//!     .add(Dense::new(1))
//!     .input_shape(&[3]);
//! let y = model.call(&Tensor::ones(&[2, 3]), false).unwrap();
//! assert_eq!(y.shape(), &[2, 1]);
//! assert_eq!(model.trainable_variables().len(), 4);
//! ```
//!
//! # From Keras to tapeflow
//!
//! | Keras | tapeflow |
//! | --- | --- |
//! | `Dense(64, activation="relu", name="d")` | `Dense::new(64).activation(Activation::Relu).named("d")` |
//! | `Conv2D(32, 3)`, `MaxPooling2D((2, 2))`, `Flatten()`, `Dropout(0.5)` | [`Conv2D::new(32, 3)`](Conv2D), [`MaxPooling2D::new((2, 2))`](MaxPooling2D), [`Flatten::new()`](Flatten), [`Dropout::new(0.5)`](Dropout) |
//! | `LSTM(128, return_sequences=True)`, `GRU(64)`, `SimpleRNN(32)`, `Embedding(1000, 64)` | [`LSTM::new(128).return_sequences(true)`](LSTM), [`GRU::new(64)`](GRU), [`SimpleRNN::new(32)`](SimpleRNN), [`Embedding::new(1000, 64)`](Embedding) |
//! | `keras.Sequential([...])` | `Sequential::new().add(...).add(...)` |
//! | `inputs = keras.Input((784,)); x = Dense(64)(inputs)` | `let inputs = input(&[784]); let x = Dense::new(64).apply(&inputs)?;` |
//! | `keras.Model(inputs, outputs)` | [`Model::new(&inputs, &outputs)?`](Model::new) |
//! | `class MyModel(keras.Model)`: layers in `__init__`, `def call(self, x)` | a struct of layers with `impl Module for MyModel { fn call(..) }`, then [`Model::from_module(MyModel::new())`](Model::from_module) |
//! | `model(x, training=True)` | `model.call(&x, true)?` |
//! | `model.trainable_variables` | [`model.trainable_variables()`](Model::trainable_variables) |
//! | `model.summary()` | [`model.summary()?`](Model::summary) |
//! | `SparseCategoricalCrossentropy(from_logits=True)(y, logits)` | `SparseCategoricalCrossentropy::from_logits(true).call(&y, &logits)?` |
//! | `optimizer.apply_gradients(zip(grads, vars))` | `opt.apply_gradients(&grads, &vars)?` |
//! | `metric(y, pred)`, `.result()`, `.reset_state()` | `metric.update(&y, &pred)?`, `.result()`, `.reset_state()` (also inside a compiled step) |
//! | `model.compile(loss, optimizer, metrics=["accuracy", "mae"])` | `model.compile(loss, opt, &["accuracy", "mae"])?` ([`metric_by_name`]) |
//! | `keras.metrics.MeanSquaredError()` | [`metrics::MeanSquaredError::new()`](metrics::MeanSquaredError) (the loss keeps the name `nn::MeanSquaredError`) |
//! | `model.fit(x, y, epochs=5, batch_size=32, validation_data=(xv, yv))` | `model.fit(&x, &y, FitOptions::new(5, 32).validation_data(&xv, &yv))?` |
//! | `model.save_weights(p)`, `tf.train.Checkpoint(model=m, optimizer=o)` | [`model.save_weights(p)?`](Model::save_weights), [`Checkpoint::new(&m).optimizer(&o)`](Checkpoint) |
//! | `model.save("m.keras")`, `keras.models.load_model("m.keras")` | [`model.save("m")?`](Model::save) (a directory), [`load_model("m")?`](load_model) |
//! | `model.to_json()`, `model_from_json(s)` | [`model.to_json()?`](Model::to_json), [`model_from_json(&s)?`](model_from_json) |
//! | `callbacks=[EarlyStopping(patience=2)]` | [`FitOptions::new(e, b).callback(EarlyStopping::new("val_loss").patience(2))`](FitOptions::callback) |
//! | `ModelCheckpoint`, `CSVLogger`, `LearningRateScheduler`, `ReduceLROnPlateau` | [`ModelCheckpoint`], [`CSVLogger`], [`LearningRateScheduler`], [`ReduceLROnPlateau`] |
//! | `history.history["loss"]`, plotting it | [`history["loss"]`](History), [`history.plot("curves.svg")?`](History::plot) |
//! | `keras.utils.Progbar(n)`, `pb.update(i, [("loss", l)])` | [`Progbar::new(Some(n))`](Progbar), `pb.update(i, &[("loss", l)])`, `pb.finish(&logs)` |
//! | `tf.random.set_seed(s)` | [`set_seed(s)`](set_seed) |
//!
//! # Conventions (and why)
//! - Fallible calls return [`Result`](crate::Result): a layer given the wrong input shape
//!   returns an `Err` naming the layer and the shapes, eagerly and inside a traced function
//!   (where a panic would be the wrong tool: the error belongs to the `call`).
//! - Variables are created lazily the first time a layer sees its input shape (as in Keras),
//!   from concrete initial values, so building inside a trace is allowed and happens once.
//! - Names are unique per process (`dense`, `dense_1`, ...) and prefix the variables
//!   (`dense_1/kernel`), which is what graphs and checkpoints show.
//! - Shared objects (models, layers, optimizers) are cheap `Arc` handles: a clone moved
//!   into a `function` closure updates the same state.

pub mod callbacks;
mod checkpoint;
mod embedding;
mod fit;
mod history;
mod initializers;
mod layers;
mod losses;
pub mod metrics;
mod model;
mod naming;
mod optimizers;
mod progbar;
mod random;
mod recurrent;
mod saving;
mod subclass;

pub use callbacks::{
    CSVLogger, Callback, Control, EarlyStopping, LearningRateScheduler, Logs, Mode,
    ModelCheckpoint, ReduceLROnPlateau, SharedCallback,
};
pub use checkpoint::{load_variables, save_variables, Checkpoint};
pub use embedding::Embedding;
pub use fit::FitOptions;
pub use history::History;
pub use initializers::Initializer;
pub use layers::{Activation, Conv2D, Dense, Dropout, Flatten, Layer, MaxPooling2D};
pub use losses::{
    BinaryCrossentropy, CategoricalCrossentropy, Loss, MeanSquaredError,
    SparseCategoricalCrossentropy,
};
pub use metrics::{
    metric_by_name, BinaryAccuracy, CategoricalAccuracy, Mean, MeanAbsoluteError, Metric,
    SparseCategoricalAccuracy,
};
pub use model::{input, input_named, Model, Sequential, SymbolicTensor};
pub use naming::{set_seed, unique_name};
pub use optimizers::{
    Adam, AdamW, CosineDecay, ExponentialDecay, LearningRate, LearningRateSchedule, Optimizer,
    RMSprop, SGD,
};
pub use progbar::{epoch_line, Progbar};
pub use recurrent::{Cell, GruCell, LstmCell, Recurrent, SimpleRNN, SimpleRnnCell, GRU, LSTM};
pub use saving::{load_model, model_from_json};
pub use subclass::Module;
