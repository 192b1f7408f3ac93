//! Automatic differentiation: the reverse-mode driver, `GradientTape`, the graph
//! transform `grad`, forward mode, Jacobians/Hessians, custom gradients and the
//! gradient checker.
pub(crate) mod backward;
mod check;
mod forward;
mod grad;
pub(crate) mod tape;

pub use check::{check_gradients, GradCheck, GradCheckReport, Mode};
pub use forward::{gradient, hessian, hvp, jacobian, jvp};
pub use grad::{grad, grad_graph};
pub use tape::{custom_gradient, GradientTape, Source, Sources};
