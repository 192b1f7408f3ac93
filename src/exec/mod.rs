//! Execution: running graphs on concrete buffers.
//!
//! `kernels` holds the numeric kernels that eager ops, the interpreter and the constant
//! folder all call; `interp` holds the execution [`Plan`] and the interpreter, `fused`
//! the kernel of `fused` nodes, `plan_memory` the memory plan, and `buffers` the pool
//! that lets a planned graph run without allocating. This layer depends on `ir`, `ops`
//! and `tensor` only, never on `passes`, `trace` or `autodiff` (`tests/layering.rs`).
//!
//! The public API is [`Plan`] with [`RunStats`], [`Schedule`], [`MemoryPlan`] and
//! [`BufferPool`]; the convolution, pooling and GEMM kernels of [`kernels`], which work
//! on plain slices and carry their own examples; and [`in_backend_call`] for allocation
//! counters. Everything else is crate-private: in particular the installed-pool handle
//! of `buffers` (a raw pointer that must not outlive the call that installed it), which
//! safe code outside the crate cannot reach:
//!
//! ```compile_fail
//! let pool = tapeflow::exec::BufferPool::new();
//! let r = tapeflow::exec::buffers::with_pool(&pool, tapeflow::exec::buffers::current);
//! ```
mod accumulate;
pub(crate) mod buffers;
pub mod codegen;
mod control;
mod fused;
mod group;
mod interp;
pub mod kernels;
mod plan_memory;
mod row_split;

pub use buffers::{in_backend_call, BufferPool};
pub use interp::{Plan, RunStats, Schedule, StepTime, INTER_OP_MIN_WORK};
pub use plan_memory::MemoryPlan;

/// Kernel internals that the integration tests check directly (each instruction set
/// against the baseline, the elementwise and reduction kernels against reference
/// loops). Not part of the API: it may change in any release.
#[doc(hidden)]
pub mod testing {
    /// The elementwise kernels and the instruction-set dispatch.
    pub mod ew {
        pub use crate::exec::kernels::ew::{map, select, vectorized_for, zip, Isa};
    }
    /// The reduction kernels.
    pub mod reduce {
        pub use crate::exec::kernels::reduce::{argmax, max, max_i64, sum, sum_slice};
    }
}
