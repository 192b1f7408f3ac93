//! # tapeflow — `tf.function` + `tf.GradientTape` for Rust
//!
//! Write an ordinary Rust closure — a training step with a gradient tape inside — and
//! tapeflow traces it into a static graph, differentiates that graph symbolically (the
//! gradient is itself a graph, so derivatives of any order work), optimizes it and runs
//! it. The same code also runs eagerly, op by op.
//!
//! ```
//! use tapeflow::{function, GradientTape, Tensor, Variable};
//!
//! // y = a·x + b, fitted by gradient descent inside a compiled step
//! let a = Variable::named("a", Tensor::scalar(0.0));
//! let b = Variable::named("b", Tensor::scalar(0.0));
//! let (a2, b2) = (a.clone(), b.clone());
//! let train_step = function(move |x: &Tensor, y: &Tensor| {
//!     let tape = GradientTape::new();
//!     let loss = tape.record(|| (&(&a2.read() * x) + &b2.read() - y).square().mean_all());
//!     let grads = tape.gradient(&loss, &[a2.clone(), b2.clone()])?;
//!     a2.assign_sub(&(grads[0].as_ref().unwrap() * 0.1));
//!     b2.assign_sub(&(grads[1].as_ref().unwrap() * 0.1));
//!     Ok(loss)
//! });
//! let x = Tensor::vec(&[0.0f32, 1.0, 2.0, 3.0]);
//! let y = Tensor::vec(&[1.0f32, 3.0, 5.0, 7.0]); // a = 2, b = 1
//! for _ in 0..500 {
//!     train_step.call(&x, &y).unwrap();
//! }
//! assert!((a.value().to_scalar().unwrap() - 2.0).abs() < 1e-3);
//! assert_eq!(train_step.trace_count(), 1); // traced once, then the compiled graph runs
//! ```
//!
//! ## Errors and panics
//! Eager ops panic when operands do not fit (shapes that do not broadcast, wrong dtypes),
//! with a message naming the op, the operand types and your source line — like a Rust
//! index out of bounds. Inside [`function`] the same mistake never panics: `call`
//! returns it as an [`Error`]. Everything that reads data or runs a graph returns
//! [`Result`].
//!
//! The same holds for attributes and sizes: an axis out of range (negative ones count
//! from the end, down to `-rank`), a stride, window, offset or length too large for
//! its attribute, or a shape with more than [`tensor::MAX_ELEMENTS`] elements is an
//! error naming the op and the value — never truncated or wrapped. The IR parser and
//! verifier reject such shapes and attributes too. `tests/checked.rs` holds one
//! regression test per case; `tests/fuzz.rs` checks the promise on random and mutated
//! inputs.
#![warn(missing_docs)]
pub mod autodiff;
pub mod comm;
pub mod control;
pub mod data;
pub mod datasets;
pub mod debugging;
pub mod distributed;
pub mod error;
pub mod exec;
pub mod ir;
pub mod nn;
pub mod ops;
pub mod passes;
pub mod prelude;
pub mod tensor;
pub mod trace;

pub use autodiff::{custom_gradient, GradientTape};
pub use control::{cond, fori_loop, scan, scan_reverse, while_loop};
pub use error::{Error, Result};
pub use ops::Padding;
pub use tensor::Dim;
pub use tensor::{DType, Data, Shape, Tensor, Variable};
pub use trace::{
    function, function_with, function_with_signature, load_function, Function, LoadedFunction,
    TensorSpec,
};
