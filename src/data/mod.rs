//! Data files and data sets.
//!
//! `idx` reads the IDX files of the MNIST database (gzip, checksums, header and size
//! checks) into raw bytes. Like `nn`, this module uses only tapeflow's public API.
//! `dataset` builds `tf.data`-style input pipelines; `mnist` turns the raw MNIST bytes
//! into tensors (`datasets::mnist::load_data`).

pub mod idx;

pub mod dataset;
pub mod mnist;

pub use dataset::{Dataset, DatasetIter, Element};
