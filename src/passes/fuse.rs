//! `fuse_elementwise`: turns maximal regions of elementwise ops into `fused` nodes that
//! make one pass over memory.
//!
//! Algorithm: roots are visited in reverse canonical order (users before producers). An
//! unclaimed elementwise node (unary, binary, compare, select, float cast, broadcast)
//! or `sum` starts a region; its operands are considered in decreasing position
//! (so all of a candidate's users have been decided before it) and absorbed when
//! - every user of the candidate is in the region and it is not a graph output (its
//!   value is needed nowhere else, so it never has to exist in memory), and
//! - it is elementwise, and either has as many elements as the region's iteration space
//!   or is cheap (not `exp log sin cos tanh sqrt sigmoid pow`: an expensive value of a
//!   smaller shape stays materialized so it is computed once per element of its own); or
//! - it is a `matmul` of the region's (elementwise) root's shape and the region has no
//!   matmul yet: the *matmul + bias + activation* epilogue, run in place on the GEMM's
//!   output.
//!
//! A `sum` is fused only as a region's root, over an absorbed elementwise operand (the
//! *reduction epilogue*, e.g. `sum(square(a - b))`). Regions of two or more nodes become
//! one `fused` node whose operands are the region's inputs (in order of first use) and
//! whose expression lists the region's nodes in canonical order (a matmul first); the
//! region's nodes are removed. One sweep; `fused` nodes are opaque to a second run, which
//! therefore finds only single-node regions and changes nothing.
//!
//! It does not: duplicate (recompute) a node that has users outside the region, fuse
//! `max`/`argmax` or `sum`s in the middle of a region, fuse across reshapes, transposes,
//! slices or concatenations, or fuse two matmuls.

use crate::error::{Error, Result};
use crate::exec::kernels::fused::{Arg, FusedExpr, Inst};
use crate::ir::{Graph, Node, NodeId};
use crate::ops::{Binary, FusionClass, Op, Unary};
use crate::tensor::{numel, DType, Shape};
use smallvec::SmallVec;
use std::collections::{BinaryHeap, HashMap};

/// Ops worth recomputing for every element of a larger iteration space.
fn is_cheap(op: Op) -> bool {
    !matches!(
        op,
        Op::Unary(Unary::Exp | Unary::Log | Unary::Sin | Unary::Cos | Unary::Tanh | Unary::Sqrt | Unary::Sigmoid)
            | Op::Binary(Binary::Pow)
    )
}

struct Region {
    root: NodeId,
    members: Vec<NodeId>,
    matmul: Option<NodeId>,
}

/// Fuses elementwise regions (with sum and matmul ends) into `fused` nodes.
pub fn fuse_elementwise(g: &mut Graph) -> Result<()> {
    let order = g.canonical_order();
    let mut pos = vec![usize::MAX; g.capacity()];
    for (i, &n) in order.iter().enumerate() {
        pos[n.index()] = i;
    }
    let mut claimed = vec![false; g.capacity()];
    let mut regions = Vec::new();
    for &n in order.iter().rev() {
        if claimed[n.index()] {
            continue;
        }
        let node = g.node(n);
        let (is_sum, it): (bool, Shape) = match node.op.fusion_class() {
            FusionClass::Elementwise => (false, node.shape.clone()),
            FusionClass::Reduction => (true, g.node(g.operands(n)[0]).shape.clone()),
            FusionClass::Opaque => continue,
        };
        claimed[n.index()] = true;
        let mut r = Region { root: n, members: vec![n], matmul: None };
        let mut in_region: HashMap<NodeId, ()> = HashMap::from([(n, ())]);
        let mut heap: BinaryHeap<(usize, NodeId)> = g.operands(n).iter().map(|&o| (pos[o.index()], o)).collect();
        while let Some((_, p)) = heap.pop() {
            if in_region.contains_key(&p) || claimed[p.index()] {
                continue;
            }
            let pn = g.node(p);
            let users_inside = g.users(p).iter().all(|u| in_region.contains_key(u)) && !g.outputs.contains(&p);
            let feeds_matmul = r.matmul.is_some_and(|m| g.operands(m).contains(&p));
            if !users_inside || feeds_matmul {
                continue;
            }
            let elementwise = pn.op.fusion_class() == FusionClass::Elementwise
                && (numel(&pn.shape) == numel(&it) || is_cheap(pn.op));
            let matmul = matches!(pn.op, Op::MatMul { .. })
                && r.matmul.is_none()
                && !is_sum
                && pn.shape == it
                && !g.operands(p).iter().any(|o| in_region.contains_key(o));
            if elementwise {
                heap.extend(g.operands(p).iter().map(|&o| (pos[o.index()], o)));
            } else if matmul {
                r.matmul = Some(p);
            } else {
                continue;
            }
            in_region.insert(p, ());
            claimed[p.index()] = true;
            r.members.push(p);
        }
        if is_sum && r.members.len() == 1 {
            continue; // a sum alone: nothing to fuse with
        }
        if r.members.len() >= 2 {
            regions.push(r);
        }
    }
    for r in regions {
        build(g, r, &pos)?;
    }
    Ok(())
}

/// Replaces a region by one `fused` node.
fn build(g: &mut Graph, mut r: Region, pos: &[usize]) -> Result<()> {
    // canonical order, with the matmul (whose operands are all outside) first
    r.members.sort_by_key(|m| (Some(*m) != r.matmul, pos[m.index()]));
    let mut params: Vec<NodeId> = Vec::new();
    let mut param_of: HashMap<NodeId, u32> = HashMap::new();
    let mut inst_of: HashMap<NodeId, u32> = HashMap::new();
    if let Some(m) = r.matmul {
        let ops = g.operands(m);
        params.extend_from_slice(&ops);
        param_of.entry(ops[0]).or_insert(0);
        param_of.entry(ops[1]).or_insert(1);
    }
    let mut e = FusedExpr::default();
    for (k, &m) in r.members.iter().enumerate() {
        let mut args: SmallVec<[Arg; 3]> = SmallVec::new();
        for (slot, o) in g.operands(m).into_iter().enumerate() {
            args.push(match (inst_of.get(&o), Some(m) == r.matmul) {
                (_, true) => Arg::Param(slot as u32),
                (Some(&j), false) => Arg::Inst(j),
                (None, false) => Arg::Param(*param_of.entry(o).or_insert_with(|| {
                    params.push(o);
                    params.len() as u32 - 1
                })),
            });
        }
        let node = g.node(m);
        e.insts.push(Inst { op: node.op, args, dtype: node.dtype, shape: node.shape.clone() });
        inst_of.insert(m, k as u32);
    }
    let root = g.node(r.root).clone();
    let types: Vec<(DType, &[usize])> = params.iter().map(|&p| (g.node(p).dtype, &g.node(p).shape[..])).collect();
    match e.infer(&types) {
        Ok((d, s)) if d == root.dtype && s == root.shape => {}
        other => return Err(Error::Graph(format!("fuse_elementwise built a bad expression ({other:?}): {e:?}"))),
    }
    g.fused.push(e);
    let mut node = Node::new(Op::Fused(g.fused.len() as u32 - 1), root.dtype, root.shape);
    node.loc = root.loc;
    let f = g.add(node, &params);
    g.replace_uses(r.root, f);
    for m in r.members {
        g.remove(m);
    }
    Ok(())
}
