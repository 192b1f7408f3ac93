//! `optimize_regions`: the pipeline inside control-flow bodies, and the rewrites that
//! cross a region's boundary.
//!
//! For every live control-flow node, in canonical order:
//! 1. a `cond` whose predicate is a constant is replaced by its branch, inlined;
//! 2. results nobody reads are dropped: a `cond`'s unused results, a `scan`'s unused
//!    stacked outputs, and its saved per-step carries when none is read (the loop
//!    carries themselves stay: the next iteration reads them);
//! 3. a loop body's `matmul[tb](a, c)` of a captured matrix `c` becomes
//!    `matmul(a, transpose(c))` when every side is at least [`PRETRANSPOSE_MIN_SIDE`]
//!    (the backend multiplies a transposed operand 2–3x slower), and then
//!    loop-invariant values are hoisted: a node of a `scan` or `while` body computed
//!    from captures and constants only (not from a carry or a scanned slice) is
//!    computed once before the loop and passed in as a new capture;
//! 4. the whole pipeline ([`super::run_pipeline`], same configuration) runs on every
//!    body, so folding, CSE, simplification, dead-node elimination and fusion see
//!    inside (nested regions are reached by the recursion);
//! 5. captures no body reads any more (the matrix a hoisted transpose was computed
//!    from, a value only dead nodes read) are dropped from the operands and from every
//!    body's inputs, and so are a scan's scanned operands no body reads (the first stays
//!    if none is read: it gives the length). Such an operand is mostly a per-step value
//!    a forward scan stacked for its reverse scan; the whole sweep then runs again, so
//!    the forward scan drops that stacked output and its body is optimized without it.
//!
//! It does not unroll loops (a `scan` of a small constant length stays a loop), hoist
//! out of `cond` branches (a branch not taken must not run), or move nodes that hold
//! regions themselves.

use super::PassConfig;
use crate::error::Result;
use crate::ir::{Graph, Node, NodeId, RegionKind};
use crate::ops::Op;
use std::collections::HashMap;

/// Runs the steps of the module docs on every live control-flow node; returns whether
/// anything changed.
pub fn optimize_regions(g: &mut Graph, config: &PassConfig) -> Result<bool> {
    let mut changed = false;
    for _ in 0..SWEEPS {
        let (c, again) = sweep(g, config)?;
        changed |= c;
        if !again {
            break;
        }
        // the `get` of the stacked value the scan read is dead now
        super::eliminate_dead_nodes(g)?;
    }
    Ok(changed)
}

/// Most sweeps of [`optimize_regions`]. A sweep runs again when it dropped a scan's
/// scanned operand: the value came from another loop (a reverse scan's per-step value
/// stacked by its forward scan), whose stacked result nobody reads any more, so the
/// next sweep drops it there and optimizes that body again.
const SWEEPS: usize = 3;

/// One pass of the module docs' steps over every live control-flow node; returns
/// whether anything changed and whether a scan lost a scanned operand.
fn sweep(g: &mut Graph, config: &PassConfig) -> Result<(bool, bool)> {
    let (mut changed, mut dropped_xs) = (false, false);
    for n in g.canonical_order() {
        if !g.contains(n) {
            continue;
        }
        match g.node(n).op {
            Op::Cond(r) => {
                let pred = g.operands(n)[0];
                if let Some(v) = &g.node(pred).value {
                    let take = v.to_f64_vec().first().is_some_and(|&x| x != 0.0);
                    inline_cond(g, n, r, if take { 0 } else { 1 });
                    changed = true;
                    continue;
                }
                changed |= prune_results(g, n, r);
            }
            Op::Scan(r) => {
                changed |= prune_results(g, n, r);
                changed |= pretranspose_captured_operands(g, r)?;
                changed |= hoist_invariants(g, n, r);
            }
            Op::While(r) => {
                changed |= pretranspose_captured_operands(g, r)?;
                changed |= hoist_invariants(g, n, r);
            }
            _ => continue,
        }
        let r = match g.node(n).op {
            Op::Cond(r) | Op::While(r) | Op::Scan(r) => r as usize,
            _ => continue,
        };
        let bodies = std::mem::take(&mut g.regions[r].bodies);
        let mut out = Vec::with_capacity(bodies.len());
        for b in bodies {
            let (opt, stats) = super::run_pipeline(&b, config)?;
            changed |= stats.iter().any(|s| s.changed);
            out.push(opt);
        }
        g.regions[r].bodies = out;
        let (pruned, xs) = prune_captures(g, n, r as u32);
        changed |= pruned;
        dropped_xs |= xs;
    }
    Ok((changed, dropped_xs))
}

/// Smallest side (`m`, `k` and `n`) of a loop-body product whose transposed captured
/// operand is transposed once before the loop: at this size the `gemm` backend packs
/// both operands, so the summation order — and every bit — is that of the
/// transposed-strides product, and a transposed `b` costs it 2–3x (measured on the
/// 2-core Zen 5 machine: `[64,512]·[128,512]ᵀ` 107 µs against 46 µs pre-transposed).
/// Smaller products take a layout-dependent path.
pub const PRETRANSPOSE_MIN_SIDE: usize = 64;

/// Rewrites `matmul[tb](a, c)` in a loop body, where `c` is a capture (the same matrix
/// every iteration, typically a weight in a gradient's loop), to
/// `matmul(a, transpose(c))`; the transpose is loop-invariant, so
/// [`hoist_invariants`] then computes it once before the loop. Only for rank-2
/// products with every side at least [`PRETRANSPOSE_MIN_SIDE`]. Returns whether it
/// rewrote any.
fn pretranspose_captured_operands(g: &mut Graph, r: u32) -> Result<bool> {
    let reg = &g.regions[r as usize];
    let fixed = match reg.kind {
        RegionKind::While => reg.carries,
        RegionKind::Scan { .. } => reg.carries + reg.xs,
        RegionKind::Cond => return Ok(false),
    };
    let mut changed = false;
    for body in &mut g.regions[r as usize].bodies {
        for m in body.canonical_order() {
            let Op::MatMul { ta, tb: true } = body.node(m).op else {
                continue;
            };
            let (a, c) = (body.operands(m)[0], body.operands(m)[1]);
            let captured = matches!(body.node(c).op, Op::Input(i) if i as usize >= fixed);
            let (cs, out) = (&body.node(c).shape, &body.node(m).shape);
            if !captured || cs.len() != 2 || out.len() != 2 {
                continue;
            }
            if cs
                .iter()
                .chain(out.iter())
                .any(|&d| d < PRETRANSPOSE_MIN_SIDE)
            {
                continue;
            }
            let perm = crate::ops::Perm::new(&[1, 0]).expect("a permutation");
            let t = super::rewrite::add_unique(body, Op::Transpose(perm), &[c], None, m)?;
            let op = Op::MatMul { ta, tb: false };
            let new = super::rewrite::add_unique(body, op, &[a, t], None, m)?;
            super::rewrite::replace(body, m, new);
            body.remove(m);
            changed = true;
        }
    }
    Ok(changed)
}

/// The `get` users of control-flow node `n`: `(result index, node)`.
fn gets(g: &Graph, n: NodeId) -> Vec<(u32, NodeId)> {
    g.users(n)
        .into_iter()
        .filter_map(|u| match g.node(u).op {
            Op::Get(k) => Some((k, u)),
            _ => None,
        })
        .collect()
}

/// Copies the live nodes of `src` into `dst`, its inputs standing for `args`; returns
/// the copies of `src`'s outputs. Regions and fused expressions of copied nodes move
/// to `dst`'s tables.
fn inline(dst: &mut Graph, src: &Graph, args: &[NodeId]) -> Vec<NodeId> {
    let mut map: HashMap<NodeId, NodeId> = HashMap::new();
    for (i, &inp) in src.inputs.iter().enumerate() {
        map.insert(inp, args[i]);
    }
    for n in src.canonical_order() {
        if map.contains_key(&n) {
            continue;
        }
        let mut node: Node = src.node(n).clone();
        node.op = match node.op {
            Op::Cond(r) | Op::While(r) | Op::Scan(r) => {
                dst.regions.push(src.regions[r as usize].clone());
                let k = dst.regions.len() as u32 - 1;
                match node.op {
                    Op::Cond(_) => Op::Cond(k),
                    Op::While(_) => Op::While(k),
                    _ => Op::Scan(k),
                }
            }
            Op::Fused(f) => {
                dst.fused.push(src.fused[f as usize].clone());
                Op::Fused(dst.fused.len() as u32 - 1)
            }
            op => op,
        };
        let operands: Vec<NodeId> = src.operands(n).iter().map(|o| map[o]).collect();
        let id = dst.add(node, &operands);
        map.insert(n, id);
    }
    src.outputs.iter().map(|o| map[o]).collect()
}

/// Replaces `cond` node `n` by its branch `k`.
fn inline_cond(g: &mut Graph, n: NodeId, r: u32, k: usize) {
    let caps: Vec<NodeId> = g.operands(n)[1..].to_vec();
    let body = g.regions[r as usize].bodies[k].clone();
    let outs = inline(g, &body, &caps);
    for (i, get) in gets(g, n) {
        g.replace_uses(get, outs[i as usize]);
        g.remove(get);
    }
    g.remove(n);
}

/// Drops the results of `cond`/`scan` node `n` that no `get` reads (see the module
/// docs); renumbers the `get`s. Returns whether it dropped any.
fn prune_results(g: &mut Graph, n: NodeId, r: u32) -> bool {
    let used_by = gets(g, n);
    let reg = &g.regions[r as usize];
    let total = reg.results.len();
    let used = |i: usize| used_by.iter().any(|&(k, _)| k as usize == i);
    let (first, last) = match reg.kind {
        RegionKind::Cond => (0, total),
        RegionKind::Scan { .. } => {
            let saved = if reg.saved { reg.carries } else { 0 };
            (reg.carries, total - saved)
        }
        RegionKind::While => return false,
    };
    let mut drop: Vec<usize> = (first..last).filter(|&i| !used(i)).collect();
    let mut unsave = false;
    if let RegionKind::Scan { .. } = reg.kind {
        if reg.saved && (last..total).all(|i| !used(i)) {
            drop.extend(last..total);
            unsave = true;
        }
    }
    if drop.is_empty() {
        return false;
    }
    let keep: Vec<usize> = (0..total).filter(|i| !drop.contains(i)).collect();
    let reg = &mut g.regions[r as usize];
    reg.results = keep.iter().map(|&i| reg.results[i].clone()).collect();
    if unsave {
        reg.saved = false;
    }
    // result i of the op is body output i, except a scan's saved carries, which are
    // the last outputs in both lists
    for b in &mut reg.bodies {
        b.outputs = keep.iter().map(|&i| b.outputs[i]).collect();
    }
    for (k, get) in used_by {
        let new = keep
            .iter()
            .position(|&i| i == k as usize)
            .expect("a used result is kept");
        g.node_mut(get).op = Op::Get(new as u32);
    }
    true
}

/// Drops the captures of control-flow node `n` that no body reads (after
/// [`hoist_invariants`], the capture a hoisted value was computed from, such as the
/// untransposed matrix of [`pretranspose_captured_operands`]), and a scan's scanned
/// operands no body reads but one (a reverse scan's per-step value that the forward
/// scan kept and that its body no longer needs): the operand and, in every body, the
/// input. Returns whether it dropped any, and whether it dropped a scanned operand.
fn prune_captures(g: &mut Graph, n: NodeId, r: u32) -> (bool, bool) {
    let reg = &g.regions[r as usize];
    // body input j is operand j + skip; inputs from `nargs` on are captures
    let (nargs, skip) = match reg.kind {
        RegionKind::Cond => (0, 1),
        RegionKind::While => (reg.carries, 0),
        RegionKind::Scan { .. } => (reg.carries + reg.xs, 0),
    };
    let Some(first) = reg.bodies.first() else {
        return (false, false);
    };
    let is_unused = |j: usize| {
        reg.bodies.iter().all(|b| {
            let id = b.inputs[j];
            b.use_count(id) == 0 && !b.outputs.contains(&id)
        })
    };
    let mut unused: Vec<usize> = (nargs..first.inputs.len())
        .filter(|&j| is_unused(j))
        .collect();
    // a scan's scanned operands no body reads go too, but the first stays when none is
    // read: it gives the length
    let mut dropped_xs = 0;
    if let RegionKind::Scan { .. } = reg.kind {
        let xs: Vec<usize> = (reg.carries..nargs).filter(|&j| is_unused(j)).collect();
        dropped_xs = xs.len().min(reg.xs - 1);
        let keep_first = xs.len() - dropped_xs;
        unused.splice(0..0, xs.into_iter().skip(keep_first));
    }
    if unused.is_empty() {
        return (false, false);
    }
    g.regions[r as usize].xs -= dropped_xs;
    for b in &mut g.regions[r as usize].bodies {
        for &j in unused.iter().rev() {
            let id = b.inputs.remove(j);
            b.remove(id);
        }
        for (i, id) in b.inputs.clone().into_iter().enumerate() {
            b.node_mut(id).op = Op::Input(i as u32);
        }
    }
    let operands: Vec<NodeId> = g
        .operands(n)
        .iter()
        .enumerate()
        .filter(|&(i, _)| !(i >= skip && unused.contains(&(i - skip))))
        .map(|(_, &o)| o)
        .collect();
    g.set_operands(n, &operands);
    (true, dropped_xs > 0)
}

/// Hoists the loop-invariant nodes of the bodies of loop node `n` (see the module
/// docs); returns whether it hoisted any.
fn hoist_invariants(g: &mut Graph, n: NodeId, r: u32) -> bool {
    let reg = &g.regions[r as usize];
    let fixed = match reg.kind {
        RegionKind::While => reg.carries,
        RegionKind::Scan { .. } => reg.carries + reg.xs,
        RegionKind::Cond => return false,
    };
    let mut changed = false;
    for k in 0..g.regions[r as usize].bodies.len() {
        let body = g.regions[r as usize].bodies[k].clone();
        let nargs = fixed;
        // invariant: a capture, a constant, or a plain op of invariant operands
        let mut inv = vec![false; body.capacity()];
        let mut hoist: Vec<NodeId> = Vec::new();
        for b in body.canonical_order() {
            let node = body.node(b);
            let is_inv = match node.op {
                Op::Input(i) => i as usize >= nargs,
                Op::Const => true,
                Op::Cond(_) | Op::While(_) | Op::Scan(_) | Op::Get(_) | Op::Fused(_) => false,
                Op::ReadVar(_) | Op::Assign(_) => false,
                _ => body.operands(b).iter().all(|o| inv[o.index()]),
            };
            inv[b.index()] = is_inv;
            if is_inv && !matches!(node.op, Op::Input(_) | Op::Const) {
                hoist.push(b);
            }
        }
        // only the frontier: hoisted nodes used by a node that stays (or returned)
        let frontier: Vec<NodeId> = hoist
            .iter()
            .copied()
            .filter(|&h| body.users(h).iter().any(|u| !inv[u.index()]) || body.outputs.contains(&h))
            .collect();
        if frontier.is_empty() {
            continue;
        }
        // copy the invariant nodes out, in body order, captures mapped to operands
        let outer_ops = g.operands(n);
        let mut map: HashMap<NodeId, NodeId> = HashMap::new();
        for b in body.canonical_order() {
            if !inv[b.index()] {
                continue;
            }
            let node = body.node(b);
            let id = match node.op {
                Op::Input(i) => outer_ops[i as usize],
                _ => {
                    let operands: Vec<NodeId> = body.operands(b).iter().map(|o| map[o]).collect();
                    g.add(node.clone(), &operands)
                }
            };
            map.insert(b, id);
        }
        // each frontier value becomes a new capture of every body of the region
        let mut new_ops = outer_ops.to_vec();
        let reg = &mut g.regions[r as usize];
        for &h in &frontier {
            new_ops.push(map[&h]);
            let (d, s) = (body.node(h).dtype, body.node(h).shape.clone());
            for (j, b) in reg.bodies.iter_mut().enumerate() {
                let i = b.inputs.len() as u32;
                let inp = b.add(Node::new(Op::Input(i), d, s.clone()), &[]);
                b.inputs.push(inp);
                if j == k {
                    b.replace_uses(h, inp);
                }
            }
        }
        g.set_operands(n, &new_ops);
        super::eliminate_dead_nodes(&mut g.regions[r as usize].bodies[k]).ok();
        changed = true;
    }
    changed
}
