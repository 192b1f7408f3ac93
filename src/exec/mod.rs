//! Execution: running graphs on concrete buffers.
//!
//! `kernels` holds the numeric kernels that eager ops, the interpreter and the constant
//! folder all call; `interp` holds the execution [`Plan`] and the interpreter. This
//! layer depends on `ir` and `tensor` buffers only, never on `trace` or `autodiff`.
pub mod buffers;
mod interp;
pub mod kernels;

pub use interp::{Plan, RunStats, Schedule, StepTime, INTER_OP_MIN_WORK};
