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
//!    computed once before the loop and passed in as a new capture; then a scan's
//!    product accumulators (a carry `c ← c + a·b` of at least
//!    [`ACCUMULATOR_MIN_MACS`] multiply-adds, read nowhere else) move into a second
//!    scan after it, over the same steps in the same order (loop fission): the first
//!    loop then often keeps batch rows apart and runs as two half-batch loops
//!    (`exec/row_split.rs`);
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
use crate::tensor::{DType, Shape};
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
/// next sweep drops it there and optimizes that body again; or when it moved an
/// accumulator into a new loop, which the next sweep optimizes.
const SWEEPS: usize = 3;

/// One pass of the module docs' steps over every live control-flow node; returns
/// whether anything changed and whether another sweep is due (a scan lost a scanned
/// operand, or an accumulator moved into a new loop).
fn sweep(g: &mut Graph, config: &PassConfig) -> Result<(bool, bool)> {
    let (mut changed, mut again) = (false, false);
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
                if split_off_accumulators(g, n, r) {
                    changed = true;
                    // the new accumulating loop is optimized in the next sweep
                    again = true;
                }
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
        again |= xs;
    }
    Ok((changed, again))
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
                node.op.with_region(dst.regions.len() as u32 - 1)
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

/// Moves the product accumulators out of scan node `n` into a scan of their own after
/// it (loop fission): a carry whose only use in the body is `c + p` (or `p + c`), its
/// next value, where `p` is a `matmul` used nowhere else whose operands are per-step
/// values (scanned slices, or body values that become stacked outputs) or captures,
/// leaves the loop; a second scan over the same steps in the same order, over those
/// operands stacked, computes `c ← c + p` (or `p + c`) with the same ops, so every bit
/// is the same. Only in scans that keep no per-step carries. The remaining loop then
/// often keeps batch rows apart (an LSTM's reverse step without its `hᵀ·dz`), which
/// lets it run as two half-batch loops (`exec/row_split.rs`), while the accumulating
/// loop's products no longer wait on the recurrence. Returns whether it moved any.
fn split_off_accumulators(g: &mut Graph, n: NodeId, r: u32) -> bool {
    let Some(found) = accumulator(g, n, r) else {
        return false;
    };
    let Accumulator {
        carry: c,
        slot,
        product,
        steps,
    } = found;
    let reg = &g.regions[r as usize];
    let (nc, nx) = (reg.carries, reg.xs);
    let reverse = matches!(reg.kind, RegionKind::Scan { reverse: true });
    let body = &reg.bodies[0];
    let outer_ops = g.operands(n);
    let p = body.node(product).clone();
    let carry_type = reg.results[c].clone();
    // where each of the product's operands comes from in the second loop
    enum From {
        /// A capture of the first loop (`false`) or a scanned operand (`true`).
        Outer(NodeId, bool),
        /// Stacked output `j` (counted from the first) of the first loop.
        Ys(usize),
    }
    let mut new_ys: Vec<NodeId> = Vec::new();
    let ny = reg.results.len() - nc;
    let mut sources: Vec<(From, DType, Shape)> = Vec::new();
    for o in body.operands(product) {
        let node = body.node(o);
        let from = match node.op {
            Op::Input(i) => From::Outer(outer_ops[i as usize], (i as usize) < nc + nx),
            _ => From::Ys(match body.outputs[nc..].iter().position(|&y| y == o) {
                Some(j) => j,
                None => {
                    new_ys.push(o);
                    ny + new_ys.len() - 1
                }
            }),
        };
        sources.push((from, node.dtype, node.shape.clone()));
    }
    // the first loop: carry `c` gone, the new stacked outputs added
    let reg = &mut g.regions[r as usize];
    let body = &mut reg.bodies[0];
    for &y in &new_ys {
        body.outputs.push(y);
        let mut st = Shape::from_slice(&[steps]);
        st.extend_from_slice(&body.node(y).shape);
        reg.results.push((body.node(y).dtype, st));
    }
    body.outputs.remove(c);
    body.remove_inputs(&[c]);
    super::eliminate_dead_nodes(body).ok();
    reg.results.remove(c);
    reg.carries -= 1;
    let mut operands = outer_ops.to_vec();
    let init = operands.remove(c);
    g.set_operands(n, &operands);
    let mut carry_get = None;
    for (k, get) in gets(g, n) {
        match (k as usize).cmp(&c) {
            std::cmp::Ordering::Equal => carry_get = Some(get),
            std::cmp::Ordering::Greater => g.node_mut(get).op = Op::Get(k - 1),
            std::cmp::Ordering::Less => {}
        }
    }
    // the second loop: inputs (c, stacked operands' rows, captures)
    let mut body2 = Graph::new();
    let acc = body2.add_input(carry_type.0, carry_type.1.clone());
    let (mut xs2, mut caps2) = (Vec::new(), Vec::new());
    let mut args = vec![acc; sources.len()];
    for stacked in [true, false] {
        for (k, (from, d, s)) in sources.iter().enumerate() {
            let outer = match *from {
                From::Outer(o, st) if st == stacked => o,
                From::Ys(j) if stacked => {
                    let at = nc - 1 + j;
                    let (rd, rs) = g.regions[r as usize].results[at].clone();
                    g.add(Node::new(Op::Get(at as u32), rd, rs), &[n])
                }
                _ => continue,
            };
            args[k] = body2.add_input(*d, s.clone());
            if stacked {
                xs2.push(outer);
            } else {
                caps2.push(outer);
            }
        }
    }
    let p2 = body2.add(Node::new(p.op, p.dtype, p.shape.clone()), &args);
    let pair = if slot == 0 { [acc, p2] } else { [p2, acc] };
    let add = Op::Binary(crate::ops::Binary::Add);
    let next = body2.add(Node::new(add, carry_type.0, carry_type.1.clone()), &pair);
    body2.outputs.push(next);
    g.regions.push(crate::ir::Region {
        kind: RegionKind::Scan { reverse },
        bodies: vec![body2],
        carries: 1,
        xs: xs2.len(),
        saved: false,
        results: vec![carry_type.clone()],
    });
    let r2 = (g.regions.len() - 1) as u32;
    let (td, ts) = crate::ops::control::tuple_type();
    let mut ops2 = vec![init];
    ops2.extend(xs2);
    ops2.extend(caps2);
    let loop2 = g.add(Node::new(Op::Scan(r2), td, ts), &ops2);
    let get2 = g.add(Node::new(Op::Get(0), carry_type.0, carry_type.1), &[loop2]);
    if let Some(old) = carry_get {
        g.replace_uses(old, get2);
        g.remove(old);
    }
    true
}

/// The fewest multiply-adds of a product whose accumulator `optimize_regions` moves out
/// of its loop into a loop of its own (see the module docs): a smaller one costs less
/// than the second loop's per-step overhead.
pub const ACCUMULATOR_MIN_MACS: usize = 1 << 20;

/// An accumulator [`split_off_accumulators`] moves: the carry, the slot of the carry in
/// its `add`, the product node, and the scan's number of steps.
struct Accumulator {
    carry: usize,
    slot: usize,
    product: NodeId,
    steps: usize,
}

/// The first accumulator of scan node `n` that [`split_off_accumulators`] can move.
fn accumulator(g: &Graph, n: NodeId, r: u32) -> Option<Accumulator> {
    let reg = &g.regions[r as usize];
    // another carry stays (a loop of the accumulator alone gains nothing)
    if !matches!(reg.kind, RegionKind::Scan { .. })
        || reg.saved
        || reg.bodies.len() != 1
        || reg.carries < 2
    {
        return None;
    }
    let body = &reg.bodies[0];
    let (nc, nx) = (reg.carries, reg.xs);
    let steps = *g.node(*g.operands(n).get(nc)?).shape.first()?;
    (0..nc).find_map(|c| {
        let inp = body.inputs[c];
        let next = body.outputs[c];
        if body.node(next).op != Op::Binary(crate::ops::Binary::Add)
            || body.use_count(inp) != 1
            || body.outputs.contains(&inp)
            || body.use_count(next) != 0
            || body.outputs.iter().filter(|&&o| o == next).count() != 1
        {
            return None;
        }
        let ops = body.operands(next);
        let slot = ops.iter().position(|&o| o == inp)?;
        let p = ops[1 - slot];
        let Op::MatMul { ta, .. } = body.node(p).op else {
            return None;
        };
        let (a, out) = (&body.node(body.operands(p)[0]).shape, &body.node(p).shape);
        let k = if ta { a.first() } else { a.get(1) };
        let macs = k.map_or(0, |&k| k.saturating_mul(out.iter().product()));
        if macs < ACCUMULATOR_MIN_MACS || body.use_count(p) != 1 || body.outputs.contains(&p) {
            return None;
        }
        // each operand a scanned slice, a capture or a body value (never a carry),
        // and at least one of them changing per step
        let mut per_step = false;
        for o in body.operands(p) {
            match body.node(o).op {
                Op::Input(i) if (i as usize) < nc => return None,
                Op::Input(i) if (i as usize) >= nc + nx => {}
                _ => per_step = true,
            }
        }
        per_step.then_some(Accumulator {
            carry: c,
            slot,
            product: p,
            steps,
        })
    })
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
        b.remove_inputs(&unused);
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
                let inp = b.add_input(d, s.clone());
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
