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

/// What produced an entry's output.
#[derive(Clone)]
pub(crate) enum EntryOp {
    Prim(Op),
    /// A user rule and where `custom_gradient` was called.
    Custom(CustomVjp, Loc),
}

/// One recorded op application.
#[derive(Clone)]
pub(crate) struct Entry {
    pub op: EntryOp,
    pub inputs: SmallVec<[Tensor; 3]>,
    pub output: Tensor,
}

impl Entry {
    /// Whether a cotangent can flow through this entry at all.
    pub fn differentiable(&self) -> bool {
        match &self.op {
            EntryOp::Prim(op) => op.is_differentiable() && self.output.dtype().is_float(),
            EntryOp::Custom(..) => true,
        }
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
            r.insert(e.output.id());
        }
    }
    r
}

/// Ids the targets depend on, walking entries backward.
pub(crate) fn ancestors(entries: &[Entry], targets: &[u64]) -> HashSet<u64> {
    let mut need: HashSet<u64> = targets.iter().copied().collect();
    for e in entries.iter().rev() {
        if need.contains(&e.output.id()) {
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
        let out = e.output.id();
        if !from_src.contains(&out) || !e.differentiable() {
            continue;
        }
        // a source's own cotangent is read at the end, but it may also be an
        // intermediate (watched mid-computation): keep propagating through it
        let Some(parts) = (if source_set.contains(&out) {
            grads.get(&out).cloned()
        } else {
            grads.remove(&out)
        }) else {
            continue;
        };
        let gy = sum_in_order(parts);
        let needs: SmallVec<[bool; 3]> = e
            .inputs
            .iter()
            .map(|x| x.dtype().is_float() && from_src.contains(&x.id()) && to_tgt.contains(&x.id()))
            .collect();
        if !needs.iter().any(|&n| n) {
            continue;
        }
        let gx: Vec<Option<Tensor>> = at_location(e.output.location(), || match &e.op {
            EntryOp::Prim(op) => op
                .vjp(
                    &VjpArgs {
                        x: &e.inputs,
                        y: &e.output,
                        needs: &needs,
                    },
                    &gy,
                )
                .into_vec(),
            EntryOp::Custom(f, _) => f(&e.inputs, &e.output, &gy),
        });
        if let EntryOp::Custom(_, loc) = &e.op {
            check_custom(&e.inputs, &gx, loc)?;
        }
        for ((x, g), need) in e.inputs.iter().zip(gx).zip(&needs) {
            if let (Some(g), true) = (g, *need) {
                let g = at_location(e.output.location(), || g.sum_to(x.shape()).cast(x.dtype()));
                grads.entry(x.id()).or_default().push(g);
            }
        }
    }
    Ok(sources
        .iter()
        .map(|s| grads.remove(s).map(sum_in_order))
        .collect())
}
