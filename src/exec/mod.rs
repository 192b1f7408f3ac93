//! Execution: running graphs on concrete buffers.
//!
//! `kernels` holds the numeric kernels that eager ops, the interpreter and the constant
//! folder all call; `interp` holds the execution [`Plan`] and the interpreter. This
//! layer depends on `ir` and `tensor` buffers only, never on `trace` or `autodiff`.
pub mod buffers;
mod fused;
mod interp;
pub mod kernels;
mod plan_memory;

pub use interp::{Plan, RunStats, Schedule, INTER_OP_MIN_WORK};
pub use plan_memory::{plan_memory, MemoryPlan};
