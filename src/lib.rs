//! tapeflow
#![warn(missing_docs)]
pub mod autodiff;
pub mod data;
pub mod datasets;
pub mod error;
pub mod exec;
pub mod ir;
pub mod nn;
pub mod ops;
pub mod passes;
pub mod tensor;
pub mod trace;

pub use autodiff::{custom_gradient, GradientTape};
pub use error::{Error, Result};
pub use ops::Padding;
pub use tensor::{DType, Data, Shape, Tensor, Variable};
pub use trace::{function, function_with, Function};
