//! The verifier: checks a graph's invariants and lists every violation.
//!
//! Invariants:
//! 1. the graph is acyclic;
//! 2. each node's operand slots are `0..n` without gaps or repeats;
//! 3. each non-source node's dtype/shape equal what its op infers from its operands;
//! 4. `inputs[i]` is an `input(i)` node, outputs and assigns are live nodes, every
//!    `assign` is listed in `assigns` and vice versa, at most one per variable;
//! 5. `const` nodes hold a value of their type; `read_var`/`assign` name a variable of
//!    the graph's table with the same type;
//! 6. every node's shape has at most [`crate::tensor::MAX_ELEMENTS`] elements;
//! 7. a `fused` node names an entry of the graph's fused-expression table that is well
//!    formed for its operands and infers the node's type (`FusedExpr::infer`).

use super::graph::Graph;
use crate::error::{Error, Result};
use crate::ops::Op;
use crate::tensor::DType;

/// Checks every invariant; the error lists all violations found.
pub fn verify(g: &Graph) -> Result<()> {
    let mut errs = Vec::new();
    if !g.is_acyclic() {
        errs.push("the graph has a cycle".to_string());
    }
    for (i, &id) in g.inputs.iter().enumerate() {
        if !g.contains(id) || g.node(id).op != Op::Input(i as u32) {
            errs.push(format!("inputs[{i}] is not an input({i}) node"));
        }
    }
    for &id in g.outputs.iter().chain(&g.assigns) {
        if !g.contains(id) {
            errs.push(format!(
                "output or assign {} is not a live node",
                id.index()
            ));
        }
    }
    let mut assigned = vec![false; g.vars.len()];
    for id in g.node_ids() {
        let node = g.node(id);
        let ops = g.operands(id);
        let here = format!("node {} ({})", id.index(), node.op.name());
        if let Err(e) = crate::tensor::check_shape(&node.shape) {
            errs.push(format!("{here}: {e}"));
            continue;
        }
        match node.op {
            Op::Input(_) => {}
            Op::Const => match &node.value {
                Some(v) if v.dtype() == node.dtype && v.shape() == node.shape => {}
                _ => errs.push(format!("{here}: const without a value of its type")),
            },
            Op::ReadVar(v) | Op::Assign(v) => {
                match g.vars.get(v as usize) {
                    Some(var) if var.dtype == node.dtype && var.shape == node.shape => {}
                    _ => errs.push(format!("{here}: variable {v} missing or of another type")),
                }
                if let Op::Assign(v) = node.op {
                    if !g.assigns.contains(&id) {
                        errs.push(format!("{here}: assign not listed in assigns"));
                    }
                    if let Some(a) = assigned.get_mut(v as usize) {
                        if *a {
                            errs.push(format!("{here}: second assign to variable {v}"));
                        }
                        *a = true;
                    }
                }
            }
            _ => {}
        }
        if !matches!(node.op, Op::Input(_) | Op::Const | Op::ReadVar(_)) {
            let types: Vec<(DType, &[usize])> = ops
                .iter()
                .map(|&o| (g.node(o).dtype, &g.node(o).shape[..]))
                .collect();
            let inferred = match node.op {
                Op::Fused(f) => g
                    .fused
                    .get(f as usize)
                    .ok_or_else(|| format!("no fused expression {f}"))
                    .and_then(|e| e.infer(&types)),
                op => op.infer(&types, Some(&node.shape)),
            };
            match inferred {
                Ok((d, s)) if d == node.dtype && s == node.shape => {}
                Ok((d, s)) => errs.push(format!(
                    "{here}: has type {} but its op infers {}",
                    crate::tensor::type_str(node.dtype, &node.shape),
                    crate::tensor::type_str(d, &s)
                )),
                Err(e) => errs.push(format!("{here}: {e}")),
            }
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(Error::Graph(format!("verifier: {}", errs.join("; "))))
    }
}
