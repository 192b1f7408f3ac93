//! The interpreter: runs a planned graph on concrete inputs.
//!
//! A [`Plan`] is made once per concrete function: the execution order (canonical
//! order of the live graph), each step's operand positions, and the step after which
//! each value is last used so its buffer is released at once. Running reads variables
//! at the start and writes assigned values when every step has run, so a step never
//! observes a half-updated variable.
//!
//! The plan carries a memory plan ([`crate::passes::plan_memory`]): liveness, buffer
//! slots and in-place steps. `fused` steps follow it: they overwrite a dying operand in
//! place, or write into the buffer of a dead value handed over to them; other kernels
//! allocate their result, and every buffer is released at its last use.

use crate::error::{Error, Result};
use crate::exec::kernels::fused::{self, OutBuf};
use crate::ir::{Graph, NodeId};
use crate::ops::Op;
use crate::passes::{plan_memory, MemoryPlan};
use crate::tensor::{type_str, Data, Tensor};
use smallvec::SmallVec;
use std::collections::HashMap;

/// Counters of one run (for tests and benchmarks).
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    /// Kernels executed.
    pub steps: usize,
}

struct Step {
    node: NodeId,
    op: Op,
    operands: SmallVec<[usize; 4]>,
    /// Values (by step position) whose last use is this step.
    release: SmallVec<[usize; 4]>,
}

/// An execution plan for one graph.
pub struct Plan {
    graph: Graph,
    steps: Vec<Step>,
    outputs: Vec<usize>,
    assigns: Vec<(u32, usize)>,
    memory: MemoryPlan,
    total_bytes: usize,
}

impl Plan {
    /// Plans `graph` (which must verify).
    pub fn new(graph: Graph) -> Result<Plan> {
        let order = graph.canonical_order();
        let pos: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        let mut last_use = vec![usize::MAX; order.len()];
        let mut steps: Vec<Step> = Vec::with_capacity(order.len());
        for (i, &n) in order.iter().enumerate() {
            let operands: SmallVec<[usize; 4]> = graph.operands(n).iter().map(|o| pos[o]).collect();
            for &o in &operands {
                last_use[o] = i;
            }
            steps.push(Step {
                node: n,
                op: graph.node(n).op,
                operands,
                release: SmallVec::new(),
            });
        }
        let outputs: Vec<usize> = graph.outputs.iter().map(|o| pos[o]).collect();
        let assigns: Vec<(u32, usize)> = graph
            .assigns
            .iter()
            .map(|a| match graph.node(*a).op {
                Op::Assign(v) => (v, pos[a]),
                _ => unreachable!("assigns hold assign nodes"),
            })
            .collect();
        for &o in outputs.iter().chain(assigns.iter().map(|(_, p)| p)) {
            last_use[o] = usize::MAX;
        }
        for (v, &lu) in last_use.iter().enumerate() {
            if lu != usize::MAX {
                steps[lu].release.push(v);
            }
        }
        let bytes: Vec<usize> = order
            .iter()
            .map(|&n| graph.node(n).shape.iter().product::<usize>() * graph.node(n).dtype.size())
            .collect();
        let total_bytes = bytes.iter().sum();
        let memory = plan_memory(&graph, &order);
        Ok(Plan {
            graph,
            steps,
            outputs,
            assigns,
            memory,
            total_bytes,
        })
    }

    /// The planned graph.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Planned peak bytes of a run: inputs, constants and variables plus every buffer
    /// slot of the memory plan (reused after last use, in place where possible).
    pub fn peak_bytes(&self) -> usize {
        self.memory.peak_bytes()
    }

    /// The memory plan (slots, in-place steps), indexed by step.
    pub fn memory(&self) -> &MemoryPlan {
        &self.memory
    }

    /// Bytes of all values if none were ever released.
    pub fn total_bytes(&self) -> usize {
        self.total_bytes
    }

    /// Runs the plan. Inputs must match the graph's signature.
    pub fn run(&self, inputs: &[&Data], stats: &mut RunStats) -> Result<Vec<Data>> {
        let g = &self.graph;
        if inputs.len() != g.inputs.len() {
            return Err(Error::Function(format!(
                "expects {} inputs, got {}",
                g.inputs.len(),
                inputs.len()
            )));
        }
        let mut vals: Vec<Option<Data>> = vec![None; self.steps.len()];
        let mut spares: Vec<Option<Data>> = vec![None; self.steps.len()];
        for (i, s) in self.steps.iter().enumerate() {
            let node = g.node(s.node);
            let v = match s.op {
                Op::Input(k) => {
                    let d = inputs[k as usize];
                    if d.dtype() != node.dtype || d.shape() != node.shape {
                        return Err(Error::Function(format!(
                            "input {k} is {}, the graph expects {}",
                            type_str(d.dtype(), &d.shape()),
                            type_str(node.dtype, &node.shape)
                        )));
                    }
                    d.clone()
                }
                Op::Const => node.value.clone().expect("verified const"),
                Op::ReadVar(v) => {
                    let var = g.vars[v as usize].handle.as_ref().ok_or_else(|| {
                        Error::Graph(format!(
                            "variable `{}` has no live handle (parsed graph)",
                            g.vars[v as usize].name
                        ))
                    })?;
                    var.value().data()?.clone()
                }
                Op::Assign(_) => vals[s.operands[0]].clone().expect("operand computed"),
                Op::Fused(f) => {
                    stats.steps += 1;
                    let mut out = spares[i].take().map_or(OutBuf::Fresh, OutBuf::Spare);
                    if let Some(k) = self.memory.in_place[i] {
                        if let Some(d) = vals[s.operands[k]].take() {
                            out = OutBuf::Operand(k, d);
                        }
                    }
                    let taken = match out {
                        OutBuf::Operand(k, _) => Some(k),
                        _ => None,
                    };
                    let args: SmallVec<[Option<&Data>; 4]> = s
                        .operands
                        .iter()
                        .enumerate()
                        .map(|(k, &o)| {
                            (taken != Some(k)).then(|| vals[o].as_ref().expect("operand computed"))
                        })
                        .collect();
                    fused::eval(&g.fused[f as usize], &args, &node.shape, out)
                }
                op => {
                    let args: SmallVec<[&Data; 4]> = s
                        .operands
                        .iter()
                        .map(|&o| vals[o].as_ref().expect("operand computed"))
                        .collect();
                    stats.steps += 1;
                    op.eval(&args, &node.shape).map_err(|msg| {
                        let loc = node
                            .loc
                            .map(|l| format!("{}:{}", l.file(), l.line()))
                            .unwrap_or_else(|| "graph".into());
                        Error::Op {
                            op: op.name(),
                            msg,
                            loc,
                        }
                    })?
                }
            };
            vals[i] = Some(v);
            for &r in &s.release {
                match self.memory.hand_over[r] {
                    Some(t) => spares[t] = vals[r].take(),
                    None => vals[r] = None,
                }
            }
        }
        for &(v, p) in &self.assigns {
            if let Some(var) = &g.vars[v as usize].handle {
                let d = vals[p].clone().expect("assign computed");
                *var.0.value.write().expect("variable lock") = Tensor::from_data(d);
            }
        }
        Ok(self
            .outputs
            .iter()
            .map(|&o| vals[o].clone().expect("output computed"))
            .collect())
    }
}
