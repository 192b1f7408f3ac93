//! Execution: kernels and the graph interpreter.
mod interp;
pub mod kernels;

pub use interp::{Plan, RunStats};
