//! `Variable`: the one mutable thing.
//!
//! A variable holds a concrete tensor behind a lock. Eagerly, `read` returns the current
//! value and `assign*` replace it. Inside a trace, `read` becomes a `read_var` node (or the
//! value assigned earlier in the same trace) and `assign*` becomes an `assign` node that the
//! compiled graph applies, in place, when it runs. Trainable variables read inside a
//! gradient tape's `record` are watched automatically.

use super::{dispatch, fresh_id, type_str, DType, Shape, Tensor};
use crate::trace::context;
use std::fmt;
use std::panic::Location;
use std::sync::{Arc, RwLock};

/// A named, mutable tensor (model weights, optimizer slots, counters). Thread-safe;
/// clones share the same storage.
#[derive(Clone)]
pub struct Variable(pub(crate) Arc<VarInner>);

pub(crate) struct VarInner {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) trainable: bool,
    pub(crate) dtype: DType,
    pub(crate) shape: Shape,
    pub(crate) value: RwLock<Tensor>,
}

impl Variable {
    /// A trainable variable named `var<N>` holding `init`.
    ///
    /// # Panics
    /// If `init` is symbolic (an initializer must be a concrete value, also when the
    /// variable is created during a trace).
    #[track_caller]
    pub fn new(init: Tensor) -> Variable {
        let id = fresh_id();
        Variable::build(init, format!("var{id}"), true, id)
    }

    /// A trainable variable with a name (names appear in graphs and checkpoints).
    ///
    /// # Panics
    /// If `init` is symbolic.
    #[track_caller]
    pub fn named(name: impl Into<String>, init: Tensor) -> Variable {
        Variable::build(init, name.into(), true, fresh_id())
    }

    /// A variable that gradient tapes never watch automatically (counters, optimizer slots, metrics).
    ///
    /// # Panics
    /// If `init` is symbolic.
    #[track_caller]
    pub fn non_trainable(name: impl Into<String>, init: Tensor) -> Variable {
        Variable::build(init, name.into(), false, fresh_id())
    }

    #[track_caller]
    fn build(init: Tensor, name: String, trainable: bool, id: u64) -> Variable {
        assert!(
            !init.is_symbolic(),
            "Variable::new: the initial value of `{name}` is symbolic (made inside a traced function at {}); \
             create variables from concrete values, e.g. before calling the function",
            init.location()
        );
        Variable(Arc::new(VarInner {
            id,
            name,
            trainable,
            dtype: init.dtype(),
            shape: Shape::from_slice(init.shape()),
            value: RwLock::new(init),
        }))
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// A process-unique id.
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// Whether tapes watch it automatically and models list it as trainable.
    pub fn trainable(&self) -> bool {
        self.0.trainable
    }

    /// The dtype (fixed at creation).
    pub fn dtype(&self) -> DType {
        self.0.dtype
    }

    /// The shape (fixed at creation).
    pub fn shape(&self) -> &[usize] {
        &self.0.shape
    }

    /// The current value: concrete eagerly, a `read_var` node inside a trace.
    #[track_caller]
    pub fn read(&self) -> Tensor {
        let t = context::read_var(self, Location::caller()).unwrap_or_else(|| self.value());
        crate::autodiff::tape::notify_variable_read(self, &t);
        t
    }

    /// The current concrete value, never traced (for checkpoints, printing, tests).
    pub fn value(&self) -> Tensor {
        self.0.value.read().expect("variable lock poisoned").clone()
    }

    /// Replaces the value.
    ///
    /// # Panics
    /// Eagerly, if `value`'s dtype or shape differs from the variable's (inside a trace the
    /// same mismatch makes the traced function's `call` return `Err`).
    #[track_caller]
    pub fn assign(&self, value: &Tensor) {
        let loc = Location::caller();
        if value.dtype() != self.dtype() || value.shape() != self.shape() {
            let msg = format!(
                "cannot assign a {} value to variable `{}` of type {}",
                type_str(value.dtype(), value.shape()),
                self.name(),
                type_str(self.dtype(), self.shape())
            );
            dispatch::fail("assign", msg, loc);
            return;
        }
        if !context::assign_var(self, value, loc) {
            assert!(
                !value.is_symbolic(),
                "assign: variable `{}` got a symbolic value outside the trace it belongs to (at {loc})",
                self.name()
            );
            *self.0.value.write().expect("variable lock poisoned") = value.clone();
        }
    }

    /// `self = self + delta`.
    ///
    /// # Panics
    /// As [`Variable::assign`], and if `delta` does not broadcast to the variable's shape.
    #[track_caller]
    pub fn assign_add(&self, delta: &Tensor) {
        let v = self.read_untaped();
        self.assign(&(&v + delta));
    }

    /// `self = self - delta` (plain gradient descent: `w.assign_sub(&(lr * &dw))`).
    ///
    /// # Panics
    /// As [`Variable::assign`], and if `delta` does not broadcast to the variable's shape.
    #[track_caller]
    pub fn assign_sub(&self, delta: &Tensor) {
        let v = self.read_untaped();
        self.assign(&(&v - delta));
    }

    /// Reads without notifying tapes (updates are not part of what a tape differentiates).
    #[track_caller]
    fn read_untaped(&self) -> Tensor {
        context::read_var(self, Location::caller()).unwrap_or_else(|| self.value())
    }
}

impl fmt::Debug for Variable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Variable({}, {})", self.name(), self.value())
    }
}

impl fmt::Display for Variable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Variable '{}' {}", self.name(), self.value())
    }
}
