//! Tracing: `function` turns a closure into a cached, compiled graph per input signature;
//! [`ConcreteFunction::export`] and [`load_function`] save one and run it in another
//! process.
pub(crate) mod context;
mod export;
mod function;
mod program;
mod signature;

pub use export::{load_function, LoadedFunction, EXPORT_FORMAT_VERSION};
pub use function::{
    function, function_with, function_with_signature, ConcreteFunction, Function, Outputs, Results,
    Traceable, DEFAULT_CACHE_SIZE, RETRACE_WARN_COUNT, RETRACE_WARN_WINDOW,
};
pub use program::DEFAULT_INSTANCES;
pub use signature::{Signature, TensorSpec};
