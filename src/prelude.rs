//! Everything a ported TensorFlow tutorial needs, in one import:
//! `use tapeflow::prelude::*;` brings the tensor types, `function` and
//! `GradientTape`, the `nn` traits (`Layer`, `Loss`, `Metric`, `Optimizer`, whose
//! methods need them in scope), the common layers, losses, metrics and optimizers,
//! `Sequential`/`Model`/`input`, `Dataset` and the bundled `datasets`.
//!
//! # Example
//! ```
//! use tapeflow::prelude::*;
//!
//! let x = tensor![[1.0, 2.0], [3.0, 4.0]];
//! let w = Variable::named("w", tensor![[0.5], [0.25]]);
//! let w2 = w.clone();
//! let step = function(move |x: &Tensor| {
//!     let tape = GradientTape::new();
//!     let loss = tape.record(|| x.matmul(&w2.read()).square().mean_all());
//!     let grads = tape.gradient(&loss, &[w2.clone()])?;
//!     w2.assign_sub(&(0.01 * grads[0].as_ref().unwrap()));
//!     Ok(loss)
//! });
//! let loss: f32 = step.call(&x).unwrap().to_scalar_f32().unwrap();
//! assert!(loss > 0.0);
//! let dense = Dense::new(4);
//! assert!(dense.variables().is_empty()); // a `Layer` method: built on first call
//! let _ = (Sequential::new(), SGD::new(0.1), Mean::new("loss"));
//! let _ = SparseCategoricalCrossentropy::new();
//! let x = x.slice(0, -1..); // the last row, like x[-1:]
//! assert_eq!(x.to_string(), "tf.Tensor([[3. 4.]], shape=(1, 2), dtype=float32)");
//! ```

pub use crate::data::Dataset;
pub use crate::datasets;
pub use crate::nn::{
    input, Activation, Adam, BinaryCrossentropy, CategoricalAccuracy, CategoricalCrossentropy,
    Conv2D, Dense, Dropout, Embedding, FitOptions, Flatten, History, Layer, Loss, MaxPooling2D,
    Mean, MeanSquaredError, Metric, Model, Optimizer, RMSprop, Sequential, SimpleRNN,
    SparseCategoricalAccuracy, SparseCategoricalCrossentropy, GRU, LSTM, SGD,
};
pub use crate::tensor;
pub use crate::{
    cond, fori_loop, function, function_with_signature, scan, scan_reverse, while_loop, DType, Dim,
    Error, GradientTape, Result, Tensor, TensorSpec, Variable,
};
