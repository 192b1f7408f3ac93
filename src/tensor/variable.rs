//! `Variable`: the one mutable thing.
//!
//! A variable holds a concrete tensor behind a lock. Eagerly, `read` returns the current
//! value and `assign*` replace it. Inside a trace, `read` becomes a `read_var` node (or the
//! value assigned earlier in the same trace) and `assign*` becomes an `assign` node that the
//! compiled graph applies, in place, when it runs. Trainable variables read inside a
//! gradient tape's `record` are watched automatically.
//!
//! Concurrency: every write bumps a version; compiled runs read all their variables at
//! one instant and commit all their writes at one instant only if nothing they read
//! changed ([`read_all`], [`commit`]), else they run again. Locks are held only to move
//! value handles, never while a kernel runs, and several are taken in id order.

use super::{dispatch, fresh_id, type_str, DType, Shape, Tensor};
use crate::trace::context;
use smallvec::SmallVec;
use std::fmt;
use std::panic::Location;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// How many variables [`Variable::new`] has named (`Variable:0`, `Variable_1:0`, ...).
static NEXT_UNNAMED: AtomicU64 = AtomicU64::new(0);

/// A named, mutable tensor (model weights, optimizer slots, counters). Thread-safe;
/// clones share the same storage.
///
/// # Concurrency
/// Concurrent updates are never lost, from any number of threads:
/// - A compiled call reads all the variables of its graph at one instant and writes all
///   it assigns at one instant, and only if none of the variables it read has changed
///   since; otherwise it runs again on the new values. So concurrent calls of functions
///   that update variables behave as if they ran one after the other, in some order,
///   and a call never sees half of another call's updates. (A call that keeps losing
///   the race to others runs again each time: heavy contention costs time, not values.)
/// - Eagerly, [`Variable::assign_add`] and [`Variable::assign_sub`] are atomic in the
///   same way (TensorFlow's resource variables: one `assign_add` is atomic); a `read`
///   followed by a separate `assign` is not.
/// - Locks are held only to move a value in or out, never while a kernel runs, and
///   several variables are locked in the order of their ids, so this cannot deadlock.
///
/// ```
/// use tapeflow::{function, Tensor, Variable};
/// let n = Variable::named("n", Tensor::scalar(0.0f32));
/// let n2 = n.clone();
/// let step = function(move || {
///     n2.assign_add(&Tensor::scalar(1.0f32));
///     Ok(())
/// });
/// std::thread::scope(|s| {
///     for _ in 0..4 {
///         s.spawn(|| (0..25).for_each(|_| step.call().unwrap()));
///     }
/// });
/// assert_eq!(n.value().to_vec_f32().unwrap(), [100.0]);
/// ```
#[derive(Clone)]
pub struct Variable(pub(crate) Arc<VarInner>);

/// A variable's value and how many times it has been written.
pub(crate) struct Versioned {
    pub(crate) value: Tensor,
    pub(crate) version: u64,
}

pub(crate) struct VarInner {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) trainable: bool,
    pub(crate) dtype: DType,
    pub(crate) shape: Shape,
    pub(crate) value: RwLock<Versioned>,
}

fn read_lock(v: &Variable) -> RwLockReadGuard<'_, Versioned> {
    // a writer never panics while holding the lock: the value is always whole
    v.0.value.read().unwrap_or_else(|e| e.into_inner())
}

fn write_lock(v: &Variable) -> RwLockWriteGuard<'_, Versioned> {
    v.0.value.write().unwrap_or_else(|e| e.into_inner())
}

/// The distinct variables of `vars`, in id order (the order locks are taken in).
fn in_lock_order<'a>(vars: impl Iterator<Item = &'a Variable>) -> SmallVec<[&'a Variable; 8]> {
    let mut v: SmallVec<[&Variable; 8]> = vars.collect();
    v.sort_by_key(|v| v.id());
    v.dedup_by_key(|v| v.id());
    v
}

/// The values and versions of `vars` at one instant (no write to any of them is half
/// seen), in the order given; `None` stays `None`.
pub(crate) fn read_all<'a>(
    vars: impl Iterator<Item = Option<&'a Variable>> + Clone,
) -> SmallVec<[Option<(Tensor, u64)>; 8]> {
    let order = in_lock_order(vars.clone().flatten());
    let guards: SmallVec<[RwLockReadGuard<'_, Versioned>; 8]> =
        order.iter().map(|v| read_lock(v)).collect();
    vars.map(|v| {
        let v = v?;
        let k = order.iter().position(|o| o.id() == v.id())?;
        Some((guards[k].value.clone(), guards[k].version))
    })
    .collect()
}

/// Writes `writes` all at once if none of `reads` (variable, version read) has been
/// written since; returns whether it did. On success each written tensor in `writes` is
/// swapped with the value it replaced (to recycle its buffer).
pub(crate) fn commit(reads: &[(&Variable, u64)], writes: &mut [(&Variable, Tensor)]) -> bool {
    let order = in_lock_order(
        reads
            .iter()
            .map(|(v, _)| *v)
            .chain(writes.iter().map(|(v, _)| *v)),
    );
    let mut guards: SmallVec<[RwLockWriteGuard<'_, Versioned>; 8]> =
        order.iter().map(|v| write_lock(v)).collect();
    let slot = |v: &Variable| order.iter().position(|o| o.id() == v.id()).expect("locked");
    if reads
        .iter()
        .any(|(v, version)| guards[slot(v)].version != *version)
    {
        return false;
    }
    for (v, t) in writes.iter_mut() {
        let g = &mut guards[slot(v)];
        std::mem::swap(&mut g.value, t);
        g.version += 1;
    }
    true
}

impl Variable {
    /// A trainable variable holding `init`, named as TensorFlow names unnamed
    /// variables: `Variable:0`, then `Variable_1:0`, `Variable_2:0`, ... (one counter
    /// for the process).
    ///
    /// # Example
    /// ```
    /// use tapeflow::{Tensor, Variable};
    /// let v = Variable::new(Tensor::from(1.0f32));
    /// assert!(v.name().starts_with("Variable"));
    /// assert!(v.name().ends_with(":0"));
    /// ```
    ///
    /// # Panics
    /// If `init` is symbolic (an initializer must be a concrete value, also when the
    /// variable is created during a trace).
    #[track_caller]
    pub fn new(init: Tensor) -> Variable {
        let n = NEXT_UNNAMED.fetch_add(1, Ordering::Relaxed);
        let name = if n == 0 {
            "Variable:0".to_string()
        } else {
            format!("Variable_{n}:0")
        };
        Variable::build(init, name, true, fresh_id())
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
            value: RwLock::new(Versioned {
                value: init,
                version: 0,
            }),
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
        read_lock(self).value.clone()
    }

    /// Errs (eagerly: panics, see [`Variable::assign`]) unless `value` fits the variable.
    #[track_caller]
    fn check(&self, value: &Tensor, loc: crate::error::Loc) -> bool {
        if value.dtype() != self.dtype() || value.shape() != self.shape() {
            let msg = format!(
                "cannot assign a {} value to variable `{}` of type {}",
                type_str(value.dtype(), value.shape()),
                self.name(),
                type_str(self.dtype(), self.shape())
            );
            dispatch::fail("assign", msg, loc);
            return false;
        }
        assert!(
            context::is_tracing() || !value.is_symbolic(),
            "assign: variable `{}` got a symbolic value outside the trace it belongs to (at {loc})",
            self.name()
        );
        true
    }

    /// Replaces the value.
    ///
    /// # Panics
    /// Eagerly, if `value`'s dtype or shape differs from the variable's (inside a trace the
    /// same mismatch makes the traced function's `call` return `Err`).
    #[track_caller]
    pub fn assign(&self, value: &Tensor) {
        self.assign_at(value, Location::caller());
    }

    /// [`Variable::assign`] attributed to the source line `loc` (for assignments tapeflow
    /// makes on the user's behalf, such as those after a traced loop).
    pub(crate) fn assign_at(&self, value: &Tensor, loc: &'static Location<'static>) {
        if !self.check(value, loc) || context::assign_var(self, value, loc) {
            return;
        }
        commit(&[], &mut [(self, value.clone())]);
    }

    /// `self = self + delta`, atomically (eagerly, concurrent updates are never lost).
    ///
    /// # Panics
    /// As [`Variable::assign`], and if `delta` does not broadcast to the variable's shape.
    #[track_caller]
    pub fn assign_add(&self, delta: &Tensor) {
        self.update(delta, |v, d| v + d);
    }

    /// `self = self - delta` (plain gradient descent: `w.assign_sub(&(lr * &dw))`),
    /// atomically like [`Variable::assign_add`].
    ///
    /// # Panics
    /// As [`Variable::assign`], and if `delta` does not broadcast to the variable's shape.
    #[track_caller]
    pub fn assign_sub(&self, delta: &Tensor) {
        self.update(delta, |v, d| v - d);
    }

    /// `self = f(self, delta)`: in a trace, an `assign` node; eagerly, computed from one
    /// version and written only if no other write came in between (else recomputed).
    #[track_caller]
    fn update(&self, delta: &Tensor, f: impl Fn(&Tensor, &Tensor) -> Tensor) {
        let loc = Location::caller();
        if context::is_tracing() {
            let v = self.read_untaped();
            self.assign(&f(&v, delta));
            return;
        }
        loop {
            let (v, version) = {
                let g = read_lock(self);
                (g.value.clone(), g.version)
            };
            let new = f(&v, delta);
            drop(v);
            if !self.check(&new, loc) || commit(&[(self, version)], &mut [(self, new)]) {
                return;
            }
        }
    }

    /// Reads without notifying tapes (updates are not part of what a tape differentiates).
    #[track_caller]
    fn read_untaped(&self) -> Tensor {
        context::read_var(self, Location::caller()).unwrap_or_else(|| self.value())
    }
}

impl fmt::Debug for Variable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Variable {
    /// Prints like a TensorFlow variable:
    /// `<tf.Variable 'w' shape=(2,) dtype=float32, numpy=array([1., 2.], dtype=float32)>`
    /// (the value as NumPy's `repr()`, on a new line when it spans several).
    ///
    /// # Example
    /// ```
    /// use tapeflow::{tensor, Tensor, Variable};
    /// let w = Variable::named("w", tensor![1.0, 2.0]);
    /// assert_eq!(
    ///     w.to_string(),
    ///     "<tf.Variable 'w' shape=(2,) dtype=float32, numpy=array([1., 2.], dtype=float32)>"
    /// );
    /// let s = Variable::named("s", Tensor::from(3i64));
    /// assert_eq!(s.to_string(), "<tf.Variable 's' shape=() dtype=int64, numpy=3>");
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = self.value();
        let text = match value.data() {
            Ok(d) => super::print::numpy_repr(d),
            Err(_) => "<unavailable>".to_string(),
        };
        let nl = if text.contains('\n') { "\n" } else { "" };
        write!(
            f,
            "<tf.Variable '{}' shape={} dtype={}, numpy={nl}{text}>",
            self.name(),
            super::print::tf_shape(self.shape()),
            super::print::tf_dtype(self.dtype())
        )
    }
}
