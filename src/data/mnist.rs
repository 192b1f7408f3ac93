//! MNIST as tensors: `load_data()` returns `((x_train, y_train), (x_test, y_test))` like
//! `keras.datasets.mnist.load_data()`, with the pixels already scaled to `[0, 1]`.
//!
//! The files are read and checked (sizes, checksums, label range) by [`super::idx`];
//! this module only converts bytes to tensors: images `f32[n, 28, 28]` = byte / 255,
//! labels `i64[n]`.

use super::idx::{default_mnist_dir, load_mnist_raw, IdxU8};
use crate::{Result, Tensor};
use std::path::Path;

/// Training and test splits: `((x_train, y_train), (x_test, y_test))`.
pub type Splits = ((Tensor, Tensor), (Tensor, Tensor));

/// MNIST from the repository's `data/mnist` (or `TAPEFLOW_MNIST_DIR`): 60000 training
/// and 10000 test images `f32[n, 28, 28]` in `[0, 1]` with labels `i64[n]`.
///
/// Returns `Err` naming the file if one is missing, truncated or corrupt.
///
/// ```no_run
/// let ((x_train, y_train), (x_test, y_test)) = tapeflow::datasets::mnist::load_data().unwrap();
/// assert_eq!(x_train.shape(), &[60000, 28, 28]);
/// assert_eq!(y_test.shape(), &[10000]);
/// # let _ = (y_train, x_test);
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
    Tensor::from_vec(
        idx.data.iter().map(|&b| b as f32 / 255.0).collect(),
        &idx.dims,
    )
}

fn labels(idx: &IdxU8) -> Result<Tensor> {
    Tensor::from_vec(idx.data.iter().map(|&b| b as i64).collect(), &idx.dims)
}
