//! Input data: `Dataset` pipelines.
pub mod dataset;

pub use dataset::{Dataset, DatasetIter, Element};
