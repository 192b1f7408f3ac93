//! `plan_memory`: buffer liveness, reuse and in-place updates for one execution order.
//!
//! Algorithm: one linear scan over the steps (the interpreter's order). Each step's
//! value gets a buffer *slot*:
//! - inputs, constants and variable reads get none: the run does not allocate them
//!   (they are resident for the whole run and count as external bytes);
//! - `reshape`, `stop_gradient` and `assign` share their operand's slot (they alias
//!   its buffer);
//! - a `fused` step takes over the slot of an operand that dies at this step when the
//!   expression reads that operand only at the index it writes
//!   ([`FusedExpr::can_overwrite`](crate::ir::FusedExpr::can_overwrite))
//!   and no other live value shares the slot: the result is computed in place;
//! - any other value takes the smallest free slot that is big enough (ties: the lowest
//!   slot), or a new slot.
//!
//! A slot is free again after the last step that uses any value in it; outputs and
//! assigned values live to the end. The planned peak is the external bytes plus the
//! sum of slot sizes; the live bytes of a run in order never exceed it.
//!
//! At run time the interpreter realizes the slots through its buffer pool
//! ([`crate::exec::buffers`]): a value's buffer returns to the pool at its last use and
//! the next value of that length takes it, and `fused` steps overwrite in place as
//! planned. It does not reorder steps to lower the peak, split or merge slots, or
//! compute unfused kernels in place.

use crate::ir::{Graph, NodeId};
use crate::ops::Op;
use crate::tensor::numel;
use std::collections::HashMap;

/// Where each value of an execution order lives.
#[derive(Clone, Debug, Default)]
pub struct MemoryPlan {
    /// The slot of each step's value (`None`: not allocated by the run).
    pub slot: Vec<Option<usize>>,
    /// Bytes of each slot (the largest value it holds).
    pub slot_bytes: Vec<usize>,
    /// For each step: the operand (by slot order) whose buffer the result overwrites.
    pub in_place: Vec<Option<usize>>,
    /// Bytes of inputs, constants and variables read.
    pub external_bytes: usize,
}

impl MemoryPlan {
    /// Planned peak bytes: external values plus every slot.
    pub fn peak_bytes(&self) -> usize {
        self.external_bytes + self.slot_bytes.iter().sum::<usize>()
    }

    /// Number of steps computed in place.
    pub fn in_place_steps(&self) -> usize {
        self.in_place.iter().filter(|s| s.is_some()).count()
    }
}

/// Plans the buffers of `order` (a topological order of the live nodes of `g`, as the
/// interpreter runs them).
pub fn plan_memory(g: &Graph, order: &[NodeId]) -> MemoryPlan {
    let n = order.len();
    let pos: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    let operands: Vec<Vec<usize>> = order
        .iter()
        .map(|&id| g.operands(id).iter().map(|o| pos[o]).collect())
        .collect();
    let mut last_use = vec![None; n];
    for (i, ops) in operands.iter().enumerate() {
        for &o in ops {
            last_use[o] = Some(i);
        }
    }
    for r in g.roots() {
        last_use[pos[&r]] = Some(usize::MAX);
    }
    let bytes = |i: usize| {
        let node = g.node(order[i]);
        numel(&node.shape) * node.dtype.size()
    };
    let mut plan = MemoryPlan {
        slot: vec![None; n],
        in_place: vec![None; n],
        ..MemoryPlan::default()
    };
    let mut users = Vec::new(); // live values per slot
    let mut free: Vec<usize> = Vec::new();
    for i in 0..n {
        let node = g.node(order[i]);
        let b = bytes(i);
        let slot = match node.op {
            Op::Input(_) | Op::Const | Op::ReadVar(_) => {
                plan.external_bytes += b;
                None
            }
            Op::Reshape | Op::StopGradient | Op::Assign(_) => plan.slot[operands[i][0]],
            _ if b == 0 => None,
            op => {
                let inplace = match op {
                    Op::Fused(f) => operands[i].iter().enumerate().find_map(|(k, &o)| {
                        let on = g.node(order[o]);
                        let sl = plan.slot[o]?;
                        let ok = last_use[o] == Some(i)
                            && users[sl] == 1
                            && operands[i].iter().filter(|&&x| x == o).count() == 1
                            && g.fused[f as usize].can_overwrite(k, (on.dtype, &on.shape));
                        ok.then_some((k, sl))
                    }),
                    _ => None,
                };
                match inplace {
                    Some((k, sl)) => {
                        plan.in_place[i] = Some(k);
                        users[sl] -= 1; // the operand hands its place to the result
                        Some(sl)
                    }
                    None => {
                        let best = free
                            .iter()
                            .enumerate()
                            .filter(|(_, &s)| plan.slot_bytes[s] >= b)
                            .min_by_key(|(_, &s)| (plan.slot_bytes[s], s))
                            .map(|(j, _)| j);
                        let sl = match best {
                            Some(j) => free.swap_remove(j),
                            None => {
                                plan.slot_bytes.push(b);
                                users.push(0);
                                plan.slot_bytes.len() - 1
                            }
                        };
                        Some(sl)
                    }
                }
            }
        };
        plan.slot[i] = slot;
        if let Some(sl) = slot {
            users[sl] += 1;
        }
        // values whose last use is this step die now, in value order (as the interpreter releases them)
        let mut dying: Vec<usize> = operands[i]
            .iter()
            .copied()
            .filter(|&o| last_use[o] == Some(i))
            .collect();
        dying.sort_unstable();
        dying.dedup();
        for o in dying {
            if plan.in_place[i].map(|k| operands[i][k]) == Some(o) {
                continue; // its buffer lives on as the result
            }
            if let Some(sl) = plan.slot[o] {
                users[sl] -= 1;
                if users[sl] == 0 {
                    free.push(sl);
                }
            }
        }
    }
    plan
}
