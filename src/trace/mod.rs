//! Tracing: `function` turns a closure into a cached, compiled graph per input signature.
pub(crate) mod context;
mod function;
mod signature;

pub use function::{
    function, function_with, function_with_signature, ConcreteFunction, Function, Outputs,
    Traceable, DEFAULT_CACHE_SIZE, DEFAULT_INSTANCES, RETRACE_WARN_COUNT, RETRACE_WARN_WINDOW,
};
pub use signature::{Signature, TensorSpec};
