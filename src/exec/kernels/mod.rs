//! Compute kernels: plain functions over row-major contiguous slices, generic over
//! [`Float`](crate::tensor::Float), that the ops call for their eager values and the
//! interpreter calls for graph nodes.
//!
//! Invariants shared by every kernel here:
//! - Inputs and outputs are row-major, contiguous; shapes arrive as checked geometry
//!   structs (or plain dimensions for [`gemm`](gemm::gemm)), and a slice whose length
//!   does not match is a bug in the caller, so it panics.
//! - Kernels may run on the current rayon pool, but the result bits never depend on
//!   its thread count: a sum is only ever split at shape-determined boundaries and
//!   added up in a fixed order (threads share out independent outputs, never a
//!   reduction).
//! - No kernel knows about graphs, tensors or autodiff; the ops layer pairs each
//!   forward kernel with its gradient kernels.

pub(crate) mod awake;
pub mod conv;
pub(crate) mod ew;
pub(crate) mod fastmath;
pub mod gemm;
pub(crate) mod handoff;
pub mod pool;
pub(crate) mod reduce;
pub(crate) mod transpose;
