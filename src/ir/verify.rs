//! The verifier: checks a graph's invariants and lists every violation.
//!
//! Invariants:
//! 1. the graph is acyclic;
//! 2. each node's operand slots are `0..n` without gaps or repeats;
//! 3. each non-source node's dtype/shape equal what its op infers from its operands;
//! 4. `inputs[i]` is an `input(i)` node, outputs and assigns are live nodes, every
//!    `assign` is listed in `assigns` and vice versa, at most one per variable; no
//!    output is a control-flow node's tuple (a graph returns those results by `get`);
//! 5. `const` nodes hold a value of their type; `read_var`/`assign` name a variable of
//!    the graph's table with the same type;
//! 6. every node's shape has at most [`crate::tensor::MAX_ELEMENTS`] elements;
//! 7. a `fused` node names an entry of the graph's fused-expression table that is well
//!    formed for its operands and infers the node's type (`FusedExpr::infer`);
//! 8. a control-flow node (`cond`, `while`, `scan`) has the tuple type and names a
//!    region whose bodies verify (recursively), use no variables, and have the
//!    signature its operands and results imply ([`crate::ir::Region`]); a `get` reads
//!    a result of a control-flow node that exists, with that result's type.

use super::graph::{Graph, NodeId};
use super::region::RegionKind;
use crate::error::{Error, Result};
use crate::ops::Op;
use crate::tensor::DType;
use crate::tensor::{type_str, Shape};

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
    for &id in &g.outputs {
        let op = g.contains(id).then(|| g.node(id).op);
        if let Some(Op::Cond(_) | Op::While(_) | Op::Scan(_)) = op {
            errs.push(format!(
                "output %{} is a {}'s tuple: return its results with `get`",
                id.index(),
                g.node(id).op.name()
            ));
        }
    }
    let mut assigned = vec![false; g.vars.len()];
    for id in g.node_ids() {
        let node = g.node(id);
        let ops = g.operands(id);
        // formatted only for an error (a valid graph of 10^5 nodes allocates nothing here)
        let here = || format!("node {} ({})", id.index(), node.op.name());
        if let Err(e) = crate::tensor::check_shape(&node.shape) {
            errs.push(format!("{}: {e}", here()));
            continue;
        }
        match node.op {
            Op::Input(_) => {}
            Op::Const => match &node.value {
                Some(v) if v.dtype() == node.dtype && v.shape() == node.shape => {}
                _ => errs.push(format!("{}: const without a value of its type", here())),
            },
            Op::ReadVar(v) | Op::Assign(v) => {
                match g.vars.get(v as usize) {
                    Some(var) if var.dtype == node.dtype && var.shape == node.shape => {}
                    _ => errs.push(format!(
                        "{}: variable {v} missing or of another type",
                        here()
                    )),
                }
                if let Op::Assign(v) = node.op {
                    if !g.assigns.contains(&id) {
                        errs.push(format!("{}: assign not listed in assigns", here()));
                    }
                    if let Some(a) = assigned.get_mut(v as usize) {
                        if *a {
                            errs.push(format!("{}: second assign to variable {v}", here()));
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
                Op::Cond(_) | Op::While(_) | Op::Scan(_) => {
                    errs.extend(
                        region_errors(g, id)
                            .into_iter()
                            .map(|e| format!("{}: {e}", here())),
                    );
                    Ok(crate::ops::control::tuple_type())
                }
                Op::Get(k) => get_type(g, id, k),
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
                    "{}: has type {} but its op infers {}",
                    here(),
                    crate::tensor::type_str(node.dtype, &node.shape),
                    crate::tensor::type_str(d, &s)
                )),
                Err(e) => errs.push(format!("{}: {e}", here())),
            }
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(Error::Graph(format!("verifier: {}", errs.join("; "))))
    }
}

/// The type of result `k` of the control-flow node `get` node `id` reads.
fn get_type(g: &Graph, id: NodeId, k: u32) -> std::result::Result<(DType, Shape), String> {
    let ops = g.operands(id);
    let [t] = ops[..] else {
        return Err(format!("has {} operands, not 1", ops.len()));
    };
    let r = match g.node(t).op {
        Op::Cond(r) | Op::While(r) | Op::Scan(r) => r,
        op => return Err(format!("reads `{}`, not a control-flow op", op.name())),
    };
    g.regions
        .get(r as usize)
        .and_then(|reg| reg.results.get(k as usize))
        .cloned()
        .ok_or_else(|| format!("control-flow op has no result {k}"))
}

/// Everything wrong with control-flow node `id` and its region.
fn region_errors(g: &Graph, id: NodeId) -> Vec<String> {
    let node = g.node(id);
    let r = match node.op {
        Op::Cond(r) | Op::While(r) | Op::Scan(r) => r,
        _ => return Vec::new(),
    };
    let Some(reg) = g.regions.get(r as usize) else {
        return vec![format!("no region {r}")];
    };
    let mut errs = Vec::new();
    let kind_ok = matches!(
        (node.op, reg.kind),
        (Op::Cond(_), RegionKind::Cond)
            | (Op::While(_), RegionKind::While)
            | (Op::Scan(_), RegionKind::Scan { .. })
    );
    if !kind_ok {
        errs.push(format!("region {r} belongs to another kind of op"));
    }
    if (node.dtype, node.shape.clone()) != crate::ops::control::tuple_type() {
        errs.push("a control-flow node has the tuple type i64[0]".into());
    }
    let ty = |(d, s): &(DType, Shape)| type_str(*d, s);
    let list = |v: &[(DType, Shape)]| v.iter().map(ty).collect::<Vec<_>>().join(", ");
    let operands: Vec<(DType, Shape)> = g
        .operands(id)
        .iter()
        .map(|&o| (g.node(o).dtype, g.node(o).shape.clone()))
        .collect();
    let nc = reg.carries;
    let fixed = match reg.kind {
        RegionKind::Cond => 1,
        RegionKind::While => nc,
        RegionKind::Scan { .. } => nc.saturating_add(reg.xs),
    };
    if operands.len() < fixed {
        errs.push(format!(
            "has {} operands, needs at least {fixed}",
            operands.len()
        ));
        return errs;
    }
    let caps = &operands[fixed..];
    let want_bodies = match reg.kind {
        RegionKind::Scan { .. } => 1,
        _ => 2,
    };
    if reg.bodies.len() != want_bodies {
        errs.push(format!(
            "has {} bodies, not {want_bodies}",
            reg.bodies.len()
        ));
        return errs;
    }
    let check_body =
        |errs: &mut Vec<String>, k: usize, args: Vec<(DType, Shape)>, outs: Vec<(DType, Shape)>| {
            let b = &reg.bodies[k];
            let name = reg.body_names()[k];
            if let Err(e) = verify(b) {
                errs.push(format!("body `{name}`: {e}"));
            }
            if !b.vars.is_empty() || !b.assigns.is_empty() {
                errs.push(format!(
                    "body `{name}` uses variables (they must be captures)"
                ));
            }
            let got_args: Vec<(DType, Shape)> = b
                .inputs
                .iter()
                .filter(|&&i| b.contains(i))
                .map(|&i| (b.node(i).dtype, b.node(i).shape.clone()))
                .collect();
            let got_outs: Vec<(DType, Shape)> = b
                .outputs
                .iter()
                .filter(|&&o| b.contains(o))
                .map(|&o| (b.node(o).dtype, b.node(o).shape.clone()))
                .collect();
            if got_args != args {
                errs.push(format!(
                    "body `{name}` takes ({}), the op passes ({})",
                    list(&got_args),
                    list(&args)
                ));
            }
            if got_outs != outs {
                errs.push(format!(
                    "body `{name}` returns ({}), the op needs ({})",
                    list(&got_outs),
                    list(&outs)
                ));
            }
        };
    let stack = |n: usize, t: &(DType, Shape)| {
        let mut s = Shape::from_slice(&[n]);
        s.extend_from_slice(&t.1);
        (t.0, s)
    };
    match reg.kind {
        RegionKind::Cond => {
            if crate::tensor::numel(&operands[0].1) != 1 {
                errs.push(format!(
                    "the predicate {} has not one element",
                    ty(&operands[0])
                ));
            }
            check_body(&mut errs, 0, caps.to_vec(), reg.results.clone());
            check_body(&mut errs, 1, caps.to_vec(), reg.results.clone());
        }
        RegionKind::While => {
            let carries = operands[..nc].to_vec();
            let mut results = carries.clone();
            results.push((DType::I64, Shape::new()));
            if reg.results != results {
                errs.push(format!(
                    "results ({}) are not the carries and the trip count",
                    list(&reg.results)
                ));
            }
            let cond_out = reg.bodies[0]
                .outputs
                .first()
                .filter(|&&o| reg.bodies[0].contains(o))
                .map(|&o| {
                    (
                        reg.bodies[0].node(o).dtype,
                        reg.bodies[0].node(o).shape.clone(),
                    )
                });
            match cond_out {
                Some(t) if reg.bodies[0].outputs.len() == 1 && crate::tensor::numel(&t.1) == 1 => {
                    check_body(&mut errs, 0, operands.clone(), vec![t]);
                }
                _ => errs.push("body `cond` does not return one element".into()),
            }
            check_body(&mut errs, 1, operands.clone(), carries);
        }
        RegionKind::Scan { .. } => {
            let carries = operands[..nc].to_vec();
            let xs = &operands[nc..fixed];
            let n = xs.first().and_then(|x| x.1.first().copied());
            let Some(n) = n else {
                errs.push("a scan needs scanned operands with a leading axis".into());
                return errs;
            };
            if xs.iter().any(|x| x.1.first() != Some(&n)) {
                errs.push(format!(
                    "scanned operands ({}) differ in leading length",
                    list(xs)
                ));
            }
            let mut args = carries.clone();
            args.extend(
                xs.iter()
                    .map(|x| (x.0, Shape::from_slice(&x.1[1.min(x.1.len())..]))),
            );
            args.extend(caps.iter().cloned());
            let saved = if reg.saved { nc } else { 0 };
            let ny = reg.results.len().saturating_sub(nc + saved);
            // a region claiming more carries than it has results has no ys (and fails
            // the comparison below)
            let ys: Vec<(DType, Shape)> = reg
                .results
                .get(nc..nc + ny)
                .unwrap_or_default()
                .iter()
                .map(|(d, s)| (*d, Shape::from_slice(&s[1.min(s.len())..])))
                .collect();
            let mut outs = carries.clone();
            outs.extend(ys.iter().cloned());
            if reg.saved {
                outs.extend(carries.iter().cloned());
            }
            let mut results = carries.clone();
            results.extend(ys.iter().map(|t| stack(n, t)));
            if reg.saved {
                results.extend(carries.iter().map(|t| stack(n, t)));
            }
            if reg.results != results {
                errs.push(format!(
                    "results ({}) do not fit the carries and scanned outputs",
                    list(&reg.results)
                ));
            }
            check_body(&mut errs, 0, args, outs);
        }
    }
    errs
}
