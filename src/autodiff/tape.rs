//! `GradientTape`: records ops on watched tensors and differentiates them (TF semantics).
//!
//! While `tape.record(|| ...)` runs, the tape is *active*: every op whose inputs include
//! a tensor the tape tracks (a watched tensor, a trainable variable read, or a result
//! of a recorded op) is appended to the tape. `gradient` runs the reverse-mode driver
//! over the entries. The tape pauses itself while computing its gradient, so an outer
//! active tape records the inner gradient computation: nested tapes give second and
//! higher derivatives. Eagerly the driver computes values; inside a traced function it
//! adds the backward nodes to the graph.

use super::backward::{ancestors, backward, reachable, CustomVjp, Entry, EntryOp, MultiVjp};
use crate::error::{Error, Result};
use crate::ops::Op;
use crate::tensor::{type_str, Tensor, Variable};
use smallvec::SmallVec;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

#[derive(Default)]
struct State {
    entries: Vec<Entry>,
    tracked: HashSet<u64>,
    watched: HashSet<u64>,
    var_reads: HashMap<u64, Vec<Tensor>>,
    /// The variables of `var_reads`, in the order first watched.
    watched_vars: Vec<Variable>,
    persistent: bool,
    used: bool,
    ignore_vars: bool,
    zeros_for_unconnected: bool,
}

type Shared = Rc<RefCell<State>>;

thread_local! {
    static ACTIVE: RefCell<Vec<Shared>> = const { RefCell::new(Vec::new()) };
}

/// Called by the dispatcher after every op: appends it to each active tape that tracks one of its inputs.
pub(crate) fn record(op: Op, inputs: &[&Tensor], out: &Tensor) {
    record_entry(|| EntryOp::Prim(op), inputs, out);
}

fn record_entry(op: impl Fn() -> EntryOp, inputs: &[&Tensor], out: &Tensor) {
    ACTIVE.with(|a| {
        let Ok(active) = a.try_borrow() else { return };
        for tape in active.iter() {
            let mut t = tape.borrow_mut();
            if inputs.iter().any(|x| t.tracked.contains(&x.id())) {
                t.entries.push(Entry {
                    op: op(),
                    inputs: inputs.iter().map(|&x| x.clone()).collect(),
                    outputs: smallvec::smallvec![out.clone()],
                });
                t.tracked.insert(out.id());
            }
        }
    });
}

/// Records a multi-result op (a control-flow op) with its VJP on every active tape that
/// tracks one of its inputs.
pub(crate) fn record_multi(
    name: &'static str,
    vjp: MultiVjp,
    inputs: &[Tensor],
    outputs: &[Tensor],
) {
    ACTIVE.with(|a| {
        let Ok(active) = a.try_borrow() else { return };
        for tape in active.iter() {
            let mut t = tape.borrow_mut();
            if inputs.iter().any(|x| t.tracked.contains(&x.id())) {
                t.entries.push(Entry {
                    op: EntryOp::Multi(vjp.clone(), name),
                    inputs: inputs.iter().cloned().collect(),
                    outputs: outputs.iter().cloned().collect(),
                });
                t.tracked.extend(outputs.iter().map(|o| o.id()));
            }
        }
    });
}

/// Whether an active tape tracks one of `inputs` (a control-flow op then keeps what its
/// VJP needs).
pub(crate) fn any_tracked(inputs: &[Tensor]) -> bool {
    ACTIVE.with(|a| {
        a.try_borrow().is_ok_and(|active| {
            active.iter().any(|tape| {
                let t = tape.borrow();
                inputs.iter().any(|x| t.tracked.contains(&x.id()))
            })
        })
    })
}

/// Called by `Variable::read`: active tapes that watch variables watch this read.
pub(crate) fn notify_variable_read(v: &Variable, t: &Tensor) {
    if !v.trainable() {
        return;
    }
    ACTIVE.with(|a| {
        for tape in a.borrow().iter() {
            let mut s = tape.borrow_mut();
            if !s.ignore_vars {
                watch_var_read(&mut s, v, t);
            }
        }
    });
}

fn watch_var_read(s: &mut State, v: &Variable, t: &Tensor) {
    s.tracked.insert(t.id());
    s.watched.insert(t.id());
    if !s.var_reads.contains_key(&v.id()) {
        s.watched_vars.push(v.clone());
    }
    let reads = s.var_reads.entry(v.id()).or_default();
    if !reads.iter().any(|r| r.id() == t.id()) {
        reads.push(t.clone());
    }
}

/// Removes every active tape while `f` runs (used by custom gradients and while
/// control-flow bodies are traced).
pub(crate) fn without_tapes<R>(f: impl FnOnce() -> R) -> R {
    let saved = ACTIVE.with(|a| std::mem::take(&mut *a.borrow_mut()));
    let r = f();
    ACTIVE.with(|a| *a.borrow_mut() = saved);
    r
}

/// What to differentiate with respect to: a tensor or a variable.
#[derive(Clone)]
pub enum Source {
    /// A watched tensor.
    Tensor(Tensor),
    /// A variable (all its reads while recording).
    Var(Variable),
}

/// One source or a list of sources for [`GradientTape::gradient`].
pub trait Sources {
    /// `Tensor` for one source, `Vec<Option<Tensor>>` for a list.
    type Output;
    /// The sources, in order.
    fn to_sources(&self) -> Vec<Source>;
    /// Packs the per-source results; `why` explains a missing one.
    fn pack(g: Vec<Option<Tensor>>, why: &dyn Fn(usize) -> String) -> Result<Self::Output>;
}

fn single(mut g: Vec<Option<Tensor>>, why: &dyn Fn(usize) -> String) -> Result<Tensor> {
    g.remove(0).ok_or_else(|| Error::Tape(why(0)))
}

fn list(g: Vec<Option<Tensor>>, why: &dyn Fn(usize) -> String) -> Result<Vec<Option<Tensor>>> {
    if !g.is_empty() && g.iter().all(|x| x.is_none()) {
        return Err(Error::Tape(format!(
            "no source is connected to the target: {}",
            why(0)
        )));
    }
    Ok(g)
}

impl Sources for &Tensor {
    type Output = Tensor;
    fn to_sources(&self) -> Vec<Source> {
        vec![Source::Tensor((*self).clone())]
    }
    fn pack(g: Vec<Option<Tensor>>, why: &dyn Fn(usize) -> String) -> Result<Tensor> {
        single(g, why)
    }
}

impl Sources for &Variable {
    type Output = Tensor;
    fn to_sources(&self) -> Vec<Source> {
        vec![Source::Var((*self).clone())]
    }
    fn pack(g: Vec<Option<Tensor>>, why: &dyn Fn(usize) -> String) -> Result<Tensor> {
        single(g, why)
    }
}

macro_rules! list_sources {
    ([$($g:tt)*] $t:ty, $conv:expr) => {
        impl<$($g)*> Sources for $t {
            type Output = Vec<Option<Tensor>>;
            fn to_sources(&self) -> Vec<Source> {
                self.iter().map($conv).collect()
            }
            fn pack(g: Vec<Option<Tensor>>, why: &dyn Fn(usize) -> String) -> Result<Self::Output> {
                list(g, why)
            }
        }
    };
    ($t:ty, $conv:expr) => {
        list_sources!([] $t, $conv);
    };
}

list_sources!(&[Tensor], |t: &Tensor| Source::Tensor(t.clone()));
list_sources!(&Vec<Tensor>, |t: &Tensor| Source::Tensor(t.clone()));
list_sources!(&[&Tensor], |t: &&Tensor| Source::Tensor((*t).clone()));
list_sources!(&[Variable], |v: &Variable| Source::Var(v.clone()));
list_sources!(&Vec<Variable>, |v: &Variable| Source::Var(v.clone()));
list_sources!(&[&Variable], |v: &&Variable| Source::Var((*v).clone()));
list_sources!([const N: usize] &[Tensor; N], |t: &Tensor| Source::Tensor(t.clone()));
list_sources!([const N: usize] &[&Tensor; N], |t: &&Tensor| Source::Tensor((*t).clone()));
list_sources!([const N: usize] &[Variable; N], |v: &Variable| Source::Var(v.clone()));
list_sources!([const N: usize] &[&Variable; N], |v: &&Variable| Source::Var((*v).clone()));

/// Records operations for automatic differentiation (`tf.GradientTape`).
///
/// ```
/// use tapeflow::{GradientTape, Tensor};
/// let x = Tensor::scalar(3.0);
/// let tape = GradientTape::new();
/// let y = tape.record(|| { tape.watch(&x); &x * &x });
/// let dy_dx = tape.gradient(&y, &x).unwrap();
/// assert_eq!(dy_dx.to_scalar().unwrap(), 6.0);
/// ```
pub struct GradientTape {
    state: Shared,
}

impl Default for GradientTape {
    fn default() -> Self {
        GradientTape::new()
    }
}

impl GradientTape {
    /// A tape that answers one `gradient` call.
    pub fn new() -> GradientTape {
        GradientTape {
            state: Rc::new(RefCell::new(State::default())),
        }
    }

    /// A tape that answers any number of `gradient` calls.
    pub fn persistent() -> GradientTape {
        let t = GradientTape::new();
        t.state.borrow_mut().persistent = true;
        t
    }

    /// Whether trainable variables read while recording are watched automatically (default: yes).
    pub fn watch_accessed_variables(self, on: bool) -> GradientTape {
        self.state.borrow_mut().ignore_vars = !on;
        self
    }

    /// Unconnected sources get zeros instead of `None` / an error (TF's `UnconnectedGradients.ZERO`).
    pub fn unconnected_zeros(self) -> GradientTape {
        self.state.borrow_mut().zeros_for_unconnected = true;
        self
    }

    /// Runs `f` with this tape recording (TF's `with tape:` block).
    pub fn record<R>(&self, f: impl FnOnce() -> R) -> R {
        ACTIVE.with(|a| a.borrow_mut().push(self.state.clone()));
        struct Pop(Shared);
        impl Drop for Pop {
            fn drop(&mut self) {
                ACTIVE.with(|a| {
                    if let Ok(mut a) = a.try_borrow_mut() {
                        if let Some(i) = a.iter().rposition(|t| Rc::ptr_eq(t, &self.0)) {
                            a.remove(i);
                        }
                    }
                });
            }
        }
        let _pop = Pop(self.state.clone());
        f()
    }

    /// Runs `f` without this tape recording (TF's `tape.stop_recording()`).
    pub fn stop_recording<R>(&self, f: impl FnOnce() -> R) -> R {
        let pos = ACTIVE.with(|a| {
            let mut a = a.borrow_mut();
            a.iter()
                .rposition(|t| Rc::ptr_eq(t, &self.state))
                .map(|i| (i, a.remove(i)))
        });
        let r = f();
        if let Some((i, t)) = pos {
            ACTIVE.with(|a| {
                let mut a = a.borrow_mut();
                let i = i.min(a.len());
                a.insert(i, t);
            });
        }
        r
    }

    /// Cotangents of `sources` given `(target, seed)` pairs, from what this tape
    /// recorded (`None` where nothing flows). For control-flow VJPs: no checks of
    /// watched sources or of a second call.
    pub(crate) fn gradient_seeded(
        &self,
        targets: &[(Tensor, Tensor)],
        sources: &[Tensor],
    ) -> Result<Vec<Option<Tensor>>> {
        let entries = self.state.borrow().entries.clone();
        let ids: Vec<u64> = sources.iter().map(|t| t.id()).collect();
        backward(&entries, targets, &ids)
    }

    /// Watches a tensor: ops on it are recorded and it can be a gradient source.
    pub fn watch(&self, t: &Tensor) {
        let mut s = self.state.borrow_mut();
        s.tracked.insert(t.id());
        s.watched.insert(t.id());
    }

    /// Watches a variable (also a non-trainable one): its current value (or symbolic read) becomes a source.
    #[track_caller]
    pub fn watch_variable(&self, v: &Variable) {
        let t = crate::trace::context::read_var(v, std::panic::Location::caller())
            .unwrap_or_else(|| v.value());
        watch_var_read(&mut self.state.borrow_mut(), v, &t);
    }

    /// The variables this tape watches, in the order first watched: trainable variables
    /// read while recording (unless [`GradientTape::watch_accessed_variables`] is off)
    /// and those given to [`GradientTape::watch_variable`] (TF's
    /// `tape.watched_variables()`).
    ///
    /// ```
    /// use tapeflow::{GradientTape, Tensor, Variable};
    /// let (a, b) = (Variable::new(Tensor::scalar(1.0)), Variable::new(Tensor::scalar(2.0)));
    /// let tape = GradientTape::new();
    /// tape.record(|| &b.read() * &a.read());
    /// let ids: Vec<u64> = tape.watched_variables().iter().map(|v| v.id()).collect();
    /// assert_eq!(ids, [b.id(), a.id()]);
    /// ```
    pub fn watched_variables(&self) -> Vec<Variable> {
        self.state.borrow().watched_vars.clone()
    }

    /// Forgets everything recorded so far (the tape stays usable).
    pub fn reset(&self) {
        let mut s = self.state.borrow_mut();
        let keep = (s.persistent, s.ignore_vars, s.zeros_for_unconnected);
        *s = State::default();
        (s.persistent, s.ignore_vars, s.zeros_for_unconnected) = keep;
    }

    /// Number of ops recorded so far.
    pub fn len(&self) -> usize {
        self.state.borrow().entries.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// d`target`/d`sources`. A non-scalar target is summed first (TF).
    ///
    /// Returns a `Tensor` for one source and `Vec<Option<Tensor>>` for a list, where
    /// `None` marks a source the target does not depend on (zeros with
    /// [`GradientTape::unconnected_zeros`]). It is an `Err` when no source is connected
    /// (the message says why: never watched, path cut by `stop_gradient` or an integer
    /// cast, or the target not computed while recording) and on a second call to a
    /// non-persistent tape.
    pub fn gradient<S: Sources>(&self, target: &Tensor, sources: S) -> Result<S::Output> {
        self.gradient_with(target, sources, None)
    }

    /// [`GradientTape::gradient`] with an explicit cotangent for the target
    /// (`output_gradients` in TF), which must have the target's dtype and shape (else `Err`).
    pub fn gradient_with<S: Sources>(
        &self,
        target: &Tensor,
        sources: S,
        output_gradient: Option<&Tensor>,
    ) -> Result<S::Output> {
        let srcs = sources.to_sources();
        let (entries, ids, zeros) = {
            let mut s = self.state.borrow_mut();
            if s.used && !s.persistent {
                return Err(Error::Tape(
                    "gradient() was already called on this non-persistent tape; use GradientTape::persistent() \
                     to compute several gradients from one recording"
                        .into(),
                ));
            }
            s.used = true;
            // each source maps to the tensor ids that stand for it
            let ids: Vec<Vec<u64>> = srcs
                .iter()
                .map(|src| match src {
                    Source::Tensor(t) => vec![t.id()],
                    Source::Var(v) => s
                        .var_reads
                        .get(&v.id())
                        .map(|r| r.iter().map(|t| t.id()).collect())
                        .unwrap_or_default(),
                })
                .collect();
            (s.entries.clone(), ids, s.zeros_for_unconnected)
        };
        let seed = match output_gradient {
            Some(g) if g.shape() != target.shape() || g.dtype() != target.dtype() => {
                return Err(Error::Tape(format!(
                    "output gradient {} does not match the target {}",
                    type_str(g.dtype(), g.shape()),
                    type_str(target.dtype(), target.shape())
                )))
            }
            Some(g) => g.clone(),
            None => target.ones_like(),
        };
        let flat: Vec<u64> = ids.iter().flatten().copied().collect();
        // the tape pauses itself; outer tapes keep recording the backward ops
        let flat_grads =
            self.stop_recording(|| backward(&entries, &[(target.clone(), seed)], &flat))?;
        let mut it = flat_grads.into_iter();
        let mut out: Vec<Option<Tensor>> = Vec::with_capacity(srcs.len());
        for (src, group) in srcs.iter().zip(&ids) {
            let parts: Vec<Tensor> = (&mut it).take(group.len()).flatten().collect();
            let g = parts.into_iter().reduce(|a, b| &a + &b);
            out.push(match (g, zeros) {
                (Some(g), _) => Some(g),
                (None, true) => Some(match src {
                    Source::Tensor(t) => t.zeros_like(),
                    Source::Var(v) => v.value().zeros_like(),
                }),
                (None, false) => None,
            });
        }
        let why = |i: usize| self.explain(&entries, target, &srcs, &ids, i);
        S::pack(out, &why)
    }

    fn explain(
        &self,
        entries: &[Entry],
        target: &Tensor,
        srcs: &[Source],
        ids: &[Vec<u64>],
        i: usize,
    ) -> String {
        let s = self.state.borrow();
        let name = match &srcs[i] {
            Source::Tensor(t) => format!(
                "the source {} made at {}",
                type_str(t.dtype(), t.shape()),
                t.location()
            ),
            Source::Var(v) => format!("variable `{}`", v.name()),
        };
        if ids[i].is_empty()
            || !ids[i]
                .iter()
                .any(|id| s.watched.contains(id) || s.tracked.contains(id))
        {
            return format!(
                "{name} was never watched: call tape.watch(&x) (or read a trainable Variable) inside tape.record(...)"
            );
        }
        if !s.tracked.contains(&target.id()) {
            return format!(
                "the target made at {} was not computed from any watched tensor while the tape recorded \
                 (computed outside record(), returned by a compiled Function call, whose inside no \
                 eager tape sees: take the gradient inside the function, or its value was taken out \
                 of the graph, e.g. with to_vec)",
                target.location()
            );
        }
        let all = reachable(entries, &ids[i], false);
        let need = ancestors(entries, &[target.id()]);
        if let Some(cut) = entries.iter().find(|e| {
            !e.differentiable() && all.contains(&e.output().id()) && need.contains(&e.output().id())
        }) {
            let op = match &cut.op {
                EntryOp::Prim(op) => op.name(),
                EntryOp::Custom(..) => "custom",
                EntryOp::Multi(_, name) => name,
            };
            return format!("the path from {name} to the target is cut by `{op}` at {} (no gradient flows through it)", cut.output().location());
        }
        format!("the target does not depend on {name}")
    }

    /// The Jacobian d`y`/d`x` with shape `y.shape ++ x.shape` (one backward pass per element of `y`).
    /// Needs a persistent tape.
    pub fn jacobian(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        if !self.state.borrow().persistent {
            return Err(Error::Tape(
                "jacobian needs a persistent tape (GradientTape::persistent())".into(),
            ));
        }
        let n = y.len();
        let mut rows = Vec::with_capacity(n);
        for i in 0..n {
            let seed = Tensor::arange(i as i64, i as i64 + 1, crate::tensor::DType::I64)
                .one_hot(n, y.dtype())
                .reshape(y.shape());
            let g = self.gradient_with(y, x, Some(&seed)).or_else(|e| match e {
                // an unconnected row is zeros; a failing custom rule stays an error
                Error::Tape(_) => Ok(x.zeros_like()),
                e => Err(e),
            })?;
            rows.push(g.reshape(&[1, x.len()]));
        }
        let refs: Vec<&Tensor> = rows.iter().collect();
        let mut shape: Vec<usize> = y.shape().to_vec();
        shape.extend_from_slice(x.shape());
        Ok(Tensor::concat(&refs, 0).reshape(&shape))
    }
}

/// Gives `forward` its own gradient rule (`tf.custom_gradient`).
///
/// `forward` runs on `inputs` without being recorded; active tapes record one entry
/// whose VJP is `vjp(inputs, output, cotangent)`, returning one cotangent per input
/// (`None` for no gradient). Built from tensor ops, the rule is itself differentiable,
/// so nested tapes differentiate it again. Works eagerly and inside traced functions.
///
/// A rule that returns the wrong number of cotangents, or one whose dtype or shape is
/// not its input's, makes `gradient` return an `Err` naming this call's source line.
#[track_caller]
pub fn custom_gradient(
    inputs: &[&Tensor],
    forward: impl FnOnce(&[Tensor]) -> Tensor,
    vjp: impl Fn(&[Tensor], &Tensor, &Tensor) -> Vec<Option<Tensor>> + 'static,
) -> Tensor {
    let owned: SmallVec<[Tensor; 3]> = inputs.iter().map(|&t| t.clone()).collect();
    let y = without_tapes(|| forward(&owned));
    let f: CustomVjp = std::sync::Arc::new(vjp);
    let loc = std::panic::Location::caller();
    record_entry(|| EntryOp::Custom(f.clone(), loc), inputs, &y);
    y
}
