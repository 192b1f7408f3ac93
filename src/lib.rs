//! tapeflow
#![warn(missing_docs)]
pub mod error;
pub mod exec;
pub mod tensor;
pub use error::{Error, Result};
pub use tensor::{DType, Data, Shape};
