//! Ready-made data sets, under the paths Keras users know (`keras.datasets.mnist`).

/// The MNIST handwritten digits (`keras.datasets.mnist`).
pub mod mnist {
    pub use crate::data::mnist::{load_data, load_data_from, Splits};
}
