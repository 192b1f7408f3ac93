//! tapeflow
#![warn(missing_docs)]
pub mod data;
pub mod error;
pub mod tensor;
pub use error::{Error, Result};
pub use tensor::{DType, Data, Shape};
