//! The reverse-mode driver, shared by eager tapes, tapes inside traces and the graph
//! transform [`crate::autodiff::grad`].
//!
//! Given recorded entries `output = op(inputs)` in execution order, it walks them in
//! reverse, calls each op's VJP rule with the summed cotangent of its output, sums a
//! broadcast cotangent back to the operand's shape, and accumulates fan-out
//! contributions in a fixed order (the order they were produced), so results are
//! deterministic. Rules build ordinary tensor ops: eagerly they compute, inside a trace
//! they add nodes, and on an outer tape they are recorded — which is all higher-order
//! differentiation needs. Nothing is ever detached.

use crate::error::{Error, Loc, Result};
use crate::ops::{Op, VjpArgs};
use crate::tensor::dispatch::at_location;
use crate::tensor::{type_str, Tensor};
use smallvec::SmallVec;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// A user-supplied VJP: `(inputs, output, cotangent) -> one cotangent per input`.
pub type CustomVjp = Arc<dyn Fn(&[Tensor], &Tensor, &Tensor) -> Vec<Option<Tensor>>>;

/// The VJP of an op with several results (a control-flow op):
/// `(inputs, outputs, cotangents) -> one cotangent per input`, where a cotangent of an
/// output is `None` when nothing flows into it (a symbolic zero).
pub(crate) type MultiVjp =
    Arc<dyn Fn(&[Tensor], &[Tensor], &[Option<Tensor>]) -> Result<Vec<Option<Tensor>>>>;

/// What produced an entry's outputs.
#[derive(Clone)]
pub(crate) enum EntryOp {
    Prim(Op),
    /// A user rule and where `custom_gradient` was called.
    Custom(CustomVjp, Loc),
    /// A control-flow op with its VJP, named for errors.
    Multi(MultiVjp, &'static str),
}

/// One recorded op application: `outputs = op(inputs)`; every op but a multi-result
/// one has exactly one output.
#[derive(Clone)]
pub(crate) struct Entry {
    pub op: EntryOp,
    pub inputs: SmallVec<[Tensor; 3]>,
    pub outputs: SmallVec<[Tensor; 1]>,
}

impl Entry {
    /// Whether a cotangent can flow through this entry at all.
    pub fn differentiable(&self) -> bool {
        match &self.op {
            EntryOp::Prim(op) => op.is_differentiable() && self.outputs[0].dtype().is_float(),
            EntryOp::Custom(..) | EntryOp::Multi(..) => true,
        }
    }

    /// The first output (the only one of a single-result op), for locations.
    pub fn output(&self) -> &Tensor {
        &self.outputs[0]
    }
}

/// Ids reachable forward from `sources` through `entries` (all entries, or only those
/// a gradient can pass when `differentiable_only`).
pub(crate) fn reachable(
    entries: &[Entry],
    sources: &[u64],
    differentiable_only: bool,
) -> HashSet<u64> {
    let mut r: HashSet<u64> = sources.iter().copied().collect();
    for e in entries {
        if (!differentiable_only || e.differentiable())
            && e.inputs.iter().any(|x| r.contains(&x.id()))
        {
            r.extend(e.outputs.iter().map(|o| o.id()));
        }
    }
    r
}

/// Ids the targets depend on, walking entries backward.
pub(crate) fn ancestors(entries: &[Entry], targets: &[u64]) -> HashSet<u64> {
    let mut need: HashSet<u64> = targets.iter().copied().collect();
    for e in entries.iter().rev() {
        if e.outputs.iter().any(|o| need.contains(&o.id())) {
            need.extend(e.inputs.iter().map(|x| x.id()));
        }
    }
    need
}

fn sum_in_order(mut parts: Vec<Tensor>) -> Tensor {
    let first = parts.remove(0);
    parts.iter().fold(first, |acc, p| &acc + p)
}

/// Checks what a custom VJP returned: one cotangent per input, each of its input's
/// dtype and shape (a rule is user code: a mistake is an `Err` naming its call site).
fn check_custom(inputs: &[Tensor], gx: &[Option<Tensor>], loc: Loc) -> Result<()> {
    let fail = |msg: String| Err(Error::op("custom_gradient", msg, loc));
    if gx.len() != inputs.len() {
        return fail(format!(
            "the VJP returned {} cotangents for {} inputs",
            gx.len(),
            inputs.len()
        ));
    }
    for (i, (x, g)) in inputs.iter().zip(gx).enumerate() {
        if let Some(g) = g {
            if g.dtype() != x.dtype() || g.shape() != x.shape() {
                return fail(format!(
                    "the VJP returned {} for input {i} of type {}",
                    type_str(g.dtype(), g.shape()),
                    type_str(x.dtype(), x.shape())
                ));
            }
        }
    }
    Ok(())
}

/// Checks what a control-flow VJP returned (an internal rule: a mismatch is a bug,
/// reported as an `Err` rather than a panic).
fn check_multi(name: &str, inputs: &[Tensor], gx: &[Option<Tensor>]) -> Result<()> {
    let bad = gx.len() != inputs.len()
        || inputs.iter().zip(gx).any(|(x, g)| {
            g.as_ref()
                .is_some_and(|g| g.dtype() != x.dtype() || g.shape() != x.shape())
        });
    if bad {
        return Err(Error::Graph(format!(
            "{name}: the VJP returned cotangents that do not fit the op's {} operands",
            inputs.len()
        )));
    }
    Ok(())
}

/// Cotangents of `sources` given `(target, seed)` pairs; `None` where nothing flows.
///
/// Returns `Err` when a custom VJP returns cotangents that do not fit its inputs.
pub(crate) fn backward(
    entries: &[Entry],
    targets: &[(Tensor, Tensor)],
    sources: &[u64],
) -> Result<Vec<Option<Tensor>>> {
    let from_src = reachable(entries, sources, true);
    let target_ids: Vec<u64> = targets.iter().map(|(t, _)| t.id()).collect();
    let to_tgt = ancestors(entries, &target_ids);
    let mut grads: HashMap<u64, Vec<Tensor>> = HashMap::new();
    for (t, seed) in targets {
        if from_src.contains(&t.id()) {
            grads.entry(t.id()).or_default().push(seed.clone());
        }
    }
    let source_set: HashSet<u64> = sources.iter().copied().collect();
    for e in entries.iter().rev() {
        if !e.outputs.iter().any(|o| from_src.contains(&o.id())) || !e.differentiable() {
            continue;
        }
        // a source's own cotangent is read at the end, but it may also be an
        // intermediate (watched mid-computation): keep propagating through it
        let gys: SmallVec<[Option<Tensor>; 1]> = e
            .outputs
            .iter()
            .map(|o| {
                let out = o.id();
                let parts = if source_set.contains(&out) {
                    grads.get(&out).cloned()
                } else {
                    grads.remove(&out)
                };
                parts.map(sum_in_order)
            })
            .collect();
        if gys.iter().all(|g| g.is_none()) {
            continue;
        }
        let needs: SmallVec<[bool; 3]> = e
            .inputs
            .iter()
            .map(|x| x.dtype().is_float() && from_src.contains(&x.id()) && to_tgt.contains(&x.id()))
            .collect();
        if !needs.iter().any(|&n| n) {
            continue;
        }
        let gy = || gys[0].clone().expect("a single output has its cotangent");
        let gx: Vec<Option<Tensor>> = at_location(e.output().location(), || match &e.op {
            EntryOp::Prim(op) => Ok(op
                .vjp(
                    &VjpArgs {
                        x: &e.inputs,
                        y: e.output(),
                        needs: &needs,
                    },
                    &gy(),
                )
                .into_vec()),
            EntryOp::Custom(f, _) => Ok(f(&e.inputs, e.output(), &gy())),
            EntryOp::Multi(f, _) => f(&e.inputs, &e.outputs, &gys),
        })?;
        match &e.op {
            EntryOp::Custom(_, loc) => check_custom(&e.inputs, &gx, loc)?,
            EntryOp::Multi(_, name) => check_multi(name, &e.inputs, &gx)?,
            EntryOp::Prim(_) => {}
        }
        for ((x, g), need) in e.inputs.iter().zip(gx).zip(&needs) {
            if let (Some(g), true) = (g, *need) {
                let g = at_location(e.output().location(), || {
                    g.sum_to(x.shape()).cast(x.dtype())
                });
                grads.entry(x.id()).or_default().push(g);
            }
        }
    }
    Ok(sources
        .iter()
        .map(|s| grads.remove(s).map(sum_in_order))
        .collect())
}
