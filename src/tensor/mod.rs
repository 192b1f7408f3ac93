//! Tensors, variables, dtypes and shapes.
mod data;
mod dtype;
pub use data::{Data, Float};
pub use dtype::{broadcast_shapes, numel, type_str, DType, Shape};
