//! Kernels shared by eager mode, the interpreter and the constant folder.
pub mod conv;
pub mod ew;
pub mod fused;
pub mod gemm;
pub mod pool;
pub mod reduce;
