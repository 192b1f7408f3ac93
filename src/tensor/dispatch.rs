//! The one place an op call branches: run the kernel now (eager) or add a node to the
//! graph being traced, then record the op on the active gradient tapes.
//!
//! Errors: an op whose operands do not fit its rule panics eagerly (documented on the
//! public ops) and, inside a trace, poisons the trace instead: the op returns a
//! placeholder-free "failed" tensor, later ops on it are skipped, and the traced
//! function's `call` returns the first error. Either way the message names the op,
//! the operand types and the user's source line.

use super::{Kind, Tensor};
use crate::error::{Error, Loc};
use crate::ops::{operand_types, Op};
use crate::tensor::{DType, Data, Shape};
use crate::trace::context;
use smallvec::SmallVec;
use std::cell::Cell;
use std::panic::Location;

thread_local! {
    static LOC_OVERRIDE: Cell<Option<Loc>> = const { Cell::new(None) };
}

/// Runs `f` with every op it creates attributed to `loc` (backward nodes carry the
/// location of the forward op they differentiate).
pub(crate) fn at_location<R>(loc: Loc, f: impl FnOnce() -> R) -> R {
    let prev = LOC_OVERRIDE.with(|c| c.replace(Some(loc)));
    let r = f();
    LOC_OVERRIDE.with(|c| c.set(prev));
    r
}

/// The location to record for an op called from `caller`.
pub(crate) fn location(caller: Loc) -> Loc {
    LOC_OVERRIDE.with(|c| c.get()).unwrap_or(caller)
}

/// Reports an op error: poisons the current trace (returning its id) or panics eagerly.
#[track_caller]
pub(crate) fn fail(op: &'static str, msg: String, loc: Loc) -> Option<u64> {
    let err = Error::op(op, msg, loc);
    match context::poison(err.clone()) {
        Some(id) => Some(id),
        None => panic!("{err}"),
    }
}

/// Applies `op` to `inputs`; `out` is the result shape for ops that need one.
#[track_caller]
pub(crate) fn apply(op: Op, inputs: &[&Tensor], out: Option<&[usize]>) -> Tensor {
    let loc = location(Location::caller());
    for t in inputs {
        if let Kind::Poisoned { trace } = t.0.kind {
            let shape = out
                .map(Shape::from_slice)
                .unwrap_or_else(|| t.0.shape.clone());
            return Tensor::poisoned(trace, t.dtype(), shape, loc);
        }
    }
    let types: SmallVec<[(DType, &[usize]); 4]> =
        inputs.iter().map(|t| (t.dtype(), t.shape())).collect();
    let (dtype, shape) = match op.infer(&types, out) {
        Ok(ty) => ty,
        Err(msg) => {
            let msg = format!("{msg} (operands: {})", operand_types(&types));
            let trace = fail(op.name(), msg, loc).expect("fail panics when not tracing");
            let dtype = inputs.first().map(|t| t.dtype()).unwrap_or(DType::F32);
            let shape = out.map(Shape::from_slice).unwrap_or_default();
            return Tensor::poisoned(trace, dtype, shape, loc);
        }
    };
    if !context::is_tracing() && super::dim::any_sym(&shape) {
        // a symbolic length (`Dim::sym(..).raw()`) has no value outside a trace
        let msg = format!(
            "result {} has a symbolic dimension, which has a value only inside a compiled function",
            super::type_str(dtype, &shape)
        );
        fail(op.name(), msg, loc);
        unreachable!("fail panics when not tracing");
    }
    let result = if context::is_tracing() {
        context::add_node(op, inputs, dtype, shape, loc)
    } else {
        let datas: SmallVec<[&Data; 4]> = inputs
            .iter()
            .map(|t| match &t.0.kind {
                Kind::Concrete(d) => d,
                _ => panic!(
                    "{}: a symbolic tensor made at {} is used outside its traced function (at {loc})",
                    op.name(),
                    t.0.loc
                ),
            })
            .collect();
        match op.eval(&datas, &shape) {
            Ok(d) => {
                if crate::debugging::check_numerics_enabled() {
                    if let Some((i, v)) = d.first_non_finite() {
                        let ty = super::type_str(dtype, &shape);
                        panic!("{}", Error::non_finite(op.name(), i, v, ty, Some(loc)));
                    }
                }
                Tensor::from_data_at(d, loc)
            }
            Err(msg) => panic!("{}", Error::op(op.name(), msg, loc)),
        }
    };
    crate::autodiff::tape::record(op, inputs, &result);
    result
}
