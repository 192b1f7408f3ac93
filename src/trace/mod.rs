//! Tracing: `function` turns a closure into a cached, compiled graph per input signature.
pub(crate) mod context;
mod function;

pub use function::{
    function, function_with, ConcreteFunction, Function, Outputs, Signature, Traceable,
    DEFAULT_CACHE_SIZE, RETRACE_WARN_COUNT, RETRACE_WARN_WINDOW,
};
