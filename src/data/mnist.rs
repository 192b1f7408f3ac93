//! MNIST as tensors: `load_data()` returns `((x_train, y_train), (x_test, y_test))` like
//! `keras.datasets.mnist.load_data()`, with the values Keras returns: pixels 0–255 and
//! integer labels, so a tutorial's `x_train / 255.0` scales them to `[0, 1]` as in
//! TensorFlow.
//!
//! The files are read and checked (sizes, checksums, label range) by [`super::idx`];
//! this module only converts bytes to tensors: images `f32[n, 28, 28]` holding each byte
//! exactly (0.0–255.0; Keras' `uint8`, in the dtype the tutorials divide into), labels
//! `i64[n]`.

use super::idx::{default_mnist_dir, load_mnist_raw, IdxU8};
use crate::{Result, Tensor};
use std::path::Path;

/// Training and test splits: `((x_train, y_train), (x_test, y_test))`.
pub type Splits = ((Tensor, Tensor), (Tensor, Tensor));

/// MNIST from the repository's `data/mnist` (or `TAPEFLOW_MNIST_DIR`): 60000 training
/// and 10000 test images `f32[n, 28, 28]` with pixel values 0–255 (the IDX bytes) and
/// labels `i64[n]`. Scale the images yourself, as the tutorials do: `x_train / 255.0`.
///
/// Returns `Err` naming the file if one is missing, truncated or corrupt.
///
/// ```no_run
/// let ((x_train, y_train), (x_test, y_test)) = tapeflow::datasets::mnist::load_data().unwrap();
/// assert_eq!(x_train.shape(), &[60000, 28, 28]);
/// assert_eq!(y_test.shape(), &[10000]);
/// let (x_train, x_test) = (x_train / 255.0, x_test / 255.0); // values in [0, 1]
/// # let _ = (y_train, x_train, x_test);
/// ```
pub fn load_data() -> Result<Splits> {
    load_data_from(&default_mnist_dir())
}

/// [`load_data`] from the four standard MNIST files in `dir`.
pub fn load_data_from(dir: &Path) -> Result<Splits> {
    let raw = load_mnist_raw(dir)?;
    Ok((
        (images(&raw.train_images)?, labels(&raw.train_labels)?),
        (images(&raw.test_images)?, labels(&raw.test_labels)?),
    ))
}

fn images(idx: &IdxU8) -> Result<Tensor> {
    Tensor::from_vec(idx.data.iter().map(|&b| b as f32).collect(), &idx.dims)
}

fn labels(idx: &IdxU8) -> Result<Tensor> {
    Tensor::from_vec(idx.data.iter().map(|&b| b as i64).collect(), &idx.dims)
}
