//! Execution: running graphs on concrete buffers.
//!
//! So far it holds the numeric kernels (`kernels`) that both eager ops and the graph
//! interpreter call; the plan and interpreter of DESIGN.md will live beside them.
//! This layer depends on `ir` and `tensor` buffers only, never on `trace` or
//! `autodiff`.

pub mod kernels;
