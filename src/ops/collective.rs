//! Collectives: `all_reduce[op=sum|mean]`, the elementwise sum or mean of a tensor over
//! all ranks of the job ([`crate::comm`]).
//!
//! The op exists in every build, so IR text with it parses and runs everywhere: without
//! the `mpi` feature, or before [`crate::distributed::init`], the world is one process
//! and the sum and the mean over one rank are the operand itself. Its kernel
//! (`eval`) waits for the result; the interpreter instead starts the collective when
//! the step is reached and waits only in the steps that read it
//! ([`crate::comm::start_all_reduce`]), in a plan order every rank shares. The constant
//! folder never evaluates a collective ([`Op::is_collective`]): its value is not known
//! to one rank alone.

use super::attrs::{self, AttrMap};
use super::{arity, float_only, Grads, Op, VjpArgs};
use crate::comm::{self, ReduceOp};
use crate::tensor::{DType, Data, Shape, Tensor};
use smallvec::smallvec;

fn reduce_op(op: &Op) -> ReduceOp {
    match op {
        Op::AllReduce(r) => *r,
        _ => unreachable!("only called for the collective family"),
    }
}

pub(super) fn name(_op: &Op) -> &'static str {
    "all_reduce"
}

pub(super) fn attrs(op: &Op) -> Vec<(&'static str, String)> {
    vec![("op", reduce_op(op).name().to_string())]
}

pub(super) fn parse(name: &str, m: &AttrMap) -> Option<Result<Op, String>> {
    if name != "all_reduce" {
        return None;
    }
    Some(attrs::get(m, "op").and_then(|s| {
        ReduceOp::parse(s)
            .map(Op::AllReduce)
            .ok_or_else(|| format!("op={s} is not `sum` or `mean`"))
    }))
}

/// The result has the operand's type (f32 or f64).
pub(super) fn infer(_op: &Op, x: &[(DType, &[usize])]) -> Result<(DType, Shape), String> {
    arity(x, 1)?;
    float_only(x[0].0)?;
    Ok((x[0].0, Shape::from_slice(x[0].1)))
}

/// Runs the collective and waits for it (eager calls, and kernels run outside a plan).
pub(super) fn eval(op: &Op, x: &Data) -> Result<Data, String> {
    comm::all_reduce(x, reduce_op(op))
}

pub(super) fn vjp(op: &Op, _a: &VjpArgs, gy: &Tensor) -> Grads {
    // every rank's output is Σ_r x_r, and the total loss is Σ_k L_k, so
    // ∂(Σ_k L_k)/∂x_r = Σ_k gy_k: the gradient of an all-reduce sum is an all-reduce
    // sum of the cotangents (and of a mean, a mean)
    smallvec![Some(gy.all_reduce(reduce_op(op)))]
}

/// Scheduling cost: the elements sent.
pub(super) fn work(_op: &Op, x: &[&[usize]], out: &[usize]) -> u64 {
    super::streamed(x, out)
}
