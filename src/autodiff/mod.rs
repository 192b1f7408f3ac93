//! Automatic differentiation: the reverse-mode driver, `GradientTape`, the graph
//! transform `grad`, forward mode, Jacobians/Hessians, custom gradients and the
//! gradient checker.
pub(crate) mod backward;
pub(crate) mod tape;

pub use tape::{custom_gradient, GradientTape, Source, Sources};
