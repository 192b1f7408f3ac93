//! `fuse_elementwise`: turns maximal regions of elementwise ops into `fused` nodes that
//! make one pass over memory.
//!
//! Algorithm: roots are visited in reverse canonical order (users before producers). An
//! unclaimed elementwise node (unary, binary, compare, select, float cast, broadcast)
//! or `sum` starts a region; its operands are considered in decreasing position (so all
//! of a candidate's users have been decided before it). A candidate joins when it is
//! not a graph output and all its users are in the region, in the same loop (the
//! *summed* loop below the region's sum, or the *result* loop) — its value is then
//! needed nowhere else, so it never exists in memory — and it is:
//! - elementwise, with as many elements as its loop or cheap (not `exp log sin cos tanh
//!   sqrt sigmoid pow`: an expensive value of a smaller shape stays materialized, so it
//!   is computed once per element of its own shape rather than once per loop element);
//! - a `sum` in the result loop, when the region has no sum and no matmul yet: the
//!   *reduction epilogue* (`sum(square(a - b))`, with elementwise ops after it such as
//!   `mean`'s scaling or an SGD update of a bias), unless it keeps axes after a reduced
//!   one (a bias gradient's `sum[axes=[0]]`: it stays a plain `sum`, whose kernel
//!   folds whole rows at once, and neither starts nor joins a region);
//! - a `reshape` or a `slice`: it becomes a *load* reading its operand (which stays
//!   outside) in place, with the new shape or from the slice's first element with the
//!   operand's strides (an LSTM's gates, slices of one `[batch, 4·units]` product, are
//!   read where they lie instead of being copied out first);
//! - a `matmul` of the root's type in the result loop, when the region has no matmul
//!   and no sum: the *matmul + bias + activation* epilogue, run on the GEMM's output.
//!
//! Regions of two or more nodes become one `fused` node whose operands are the region's
//! inputs (in order of first use) and whose expression lists the matmul, the summed
//! loop, the sum and the result loop, each in canonical order; the region's nodes are
//! removed. One sweep; `fused` nodes are opaque to a second run, which therefore finds
//! only single-node regions and changes nothing.
//!
//! Cost: O(E log E) for E operand edges. Membership, loops and "are all users in the
//! region" are side tables indexed by node (see `Marks`), so a candidate costs O(1)
//! plus its operands, whatever the size of the region or the fan-out of the node.
//!
//! Then one more step: a cheap elementwise node left outside every region whose users
//! are all `fused` nodes is recomputed inside each of them when that moves no more
//! memory than materializing it (see `inline_cheap_producers`), so it runs as no kernel
//! of its own.
//!
//! It does not: otherwise duplicate (recompute) a node that has users outside the
//! region or in both loops, fuse `max`/`argmax` or two sums or two matmuls into one
//! node, or fuse across transposes, slices or concatenations.

use crate::error::{Error, Result};
use crate::ir::{Arg, FusedExpr, Inst};
use crate::ir::{Graph, Node, NodeId};
use crate::ops::{FusionClass, Op};
use crate::tensor::{numel, DType};
use smallvec::SmallVec;
use std::collections::{BinaryHeap, HashMap};

/// Which loop of a fused node a member is evaluated in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Space {
    /// Over the summed value's elements (before the region's sum).
    Summed,
    /// Over the result's elements (no sum, or after it).
    Result,
    /// The region's sum itself.
    Sum,
}

struct Region {
    root: NodeId,
    members: Vec<(NodeId, Space)>,
    matmul: Option<NodeId>,
    sum: Option<NodeId>,
    /// Reshapes and slices absorbed as loads (their operands stay outside).
    loads: Vec<NodeId>,
}

/// Side tables of the region being grown, indexed by node, so that each question the
/// growth asks costs O(1) rather than a scan of the region or of a node's users:
/// - `space`: the loop of each member;
/// - `in_users`/`user_space`/`mixed`: for each node, how many of its (distinct) users
///   are members, the loop those users put it in (a sum's operand is summed), and
///   whether they disagree — a candidate can join when all its users are members of
///   one loop, i.e. `in_users` equals its number of users and not `mixed`;
/// - `feeds_part`: whether a node is an operand of the region's matmul or of a load.
///
/// Entries are set as members join and cleared when the region is done, so a region
/// costs the sum of its members' operand counts.
struct Marks {
    space: Vec<Option<Space>>,
    users: Vec<usize>,
    in_users: Vec<usize>,
    user_space: Vec<Option<Space>>,
    mixed: Vec<bool>,
    feeds_part: Vec<bool>,
}

/// A node's operands without repeats.
fn distinct_operands(g: &Graph, n: NodeId) -> SmallVec<[NodeId; 4]> {
    let mut ops = g.operands(n);
    ops.sort_unstable();
    ops.dedup();
    ops
}

impl Marks {
    fn new(g: &Graph) -> Marks {
        let cap = g.capacity();
        // every user counts, live or not (as in `Graph::users`)
        let mut users = vec![0; cap];
        for n in g.node_ids() {
            for o in distinct_operands(g, n) {
                users[o.index()] += 1;
            }
        }
        Marks {
            space: vec![None; cap],
            users,
            in_users: vec![0; cap],
            user_space: vec![None; cap],
            mixed: vec![false; cap],
            feeds_part: vec![false; cap],
        }
    }

    fn join(&mut self, g: &Graph, n: NodeId, s: Space) {
        self.space[n.index()] = Some(s);
        let operand_space = match s {
            Space::Sum => Space::Summed,
            s => s,
        };
        for o in distinct_operands(g, n) {
            let i = o.index();
            match self.user_space[i] {
                None => self.user_space[i] = Some(operand_space),
                Some(u) if u != operand_space => self.mixed[i] = true,
                Some(_) => {}
            }
            self.in_users[i] += 1;
            if is_load(g.node(n).op) || matches!(g.node(n).op, Op::MatMul { .. }) {
                self.feeds_part[i] = true;
            }
        }
    }

    /// The loop `p` would be evaluated in: that of all its users, if they all are
    /// members in one loop.
    fn users_space(&self, p: NodeId) -> Option<Space> {
        let i = p.index();
        (self.in_users[i] == self.users[i] && !self.mixed[i])
            .then_some(self.user_space[i])
            .flatten()
    }

    fn clear(&mut self, g: &Graph, r: &Region) {
        for &(m, _) in &r.members {
            self.space[m.index()] = None;
            for o in g.operands(m) {
                let i = o.index();
                (self.in_users[i], self.user_space[i]) = (0, None);
                (self.mixed[i], self.feeds_part[i]) = (false, false);
            }
        }
    }
}

/// Whether `n` is a sum that keeps axes after its innermost reduced one (a bias
/// gradient, `sum[axes=[0]]` of `[batch, units]`). The fused kernel folds each result
/// element on its own, so such a sum would walk its input down strided columns; the
/// plain `sum` kernel folds all columns at once, one contiguous row after another, in
/// the same order per element. Measured on the 2-core Zen 5: the W3 step's two
/// `[256,1024]` bias gradients with their SGD updates took ≈0.48 ms each fused, against
/// ≈0.03 ms as a `sum` and an update.
fn strided_sum(g: &Graph, n: NodeId) -> bool {
    let Op::Sum { axes, .. } = g.node(n).op else {
        return false;
    };
    let shape = &g.node(g.operands(n)[0]).shape;
    let last = (0..shape.len()).rev().find(|&a| axes.contains(a));
    last.is_some_and(|a| numel(&shape[a + 1..]) > 1)
}

/// Whether `op` joins a region as a load: a view of its operand (which stays outside)
/// that the fused loop reads in place, a `reshape` or a `slice`.
fn is_load(op: Op) -> bool {
    matches!(op, Op::Reshape | Op::Slice { .. })
}

/// Fuses elementwise regions (with sum and matmul parts) into `fused` nodes; returns
/// whether it made any.
pub fn fuse_elementwise(g: &mut Graph) -> Result<bool> {
    fuse_elementwise_min(g, 0)
}

/// Regions whose longest loop has at most this many elements are always fused by
/// [`fuse_elementwise_min`]: there the per-kernel overhead (dispatch, buffers) outweighs
/// the loops (measured on the 2-core Zen 5: the 1000-point linear-regression step, 13
/// kernels unfused, ran 4.5 µs unfused and 3.8 µs fused). Not regions with a matmul
/// prologue: fusing the 64·64 matmul epilogues of the MLP 784-64-64-10 step gained
/// nothing measurable (≈143 µs per step either way), so those stay as they were.
pub const SMALL_REGION_ELEMS: usize = 1 << 12;

/// With a threshold (`min_elems > 0`), regions with a matmul prologue need at least this
/// many elements as well: when the epilogue of a matmul ran in the fused-loop interpreter
/// (it is generated code since 2026-12-03; the threshold has not been measured again),
/// the MLP 784-64-64-10 step (W1), whose `[784,64]` weight gradient and update (50K
/// elements) fuse from 2^15 on, ran ≈6% slower fused (median of 9 interleaved rounds,
/// twice). A shorter region keeps its elementwise part, which reads
/// the product as a plain operand, when that part meets the thresholds on its own: W1's
/// `[784,64]` update (`mul`, `sub`) then runs as one generated loop, and its step ran
/// ≈2% faster (medians of 6 alternated rounds, 113.2 against 115.6 µs).
pub const MATMUL_REGION_MIN_ELEMS: usize = 1 << 18;

/// [`fuse_elementwise`] keeping only regions whose longest loop has at least
/// `min_elems` elements (and [`MATMUL_REGION_MIN_ELEMS`] with a matmul prologue, else
/// the region without its prologue), or at most [`SMALL_REGION_ELEMS`] without a matmul
/// (the regions in between stay as separate kernels).
pub fn fuse_elementwise_min(g: &mut Graph, min_elems: usize) -> Result<bool> {
    let order = g.canonical_order();
    let mut pos = vec![usize::MAX; g.capacity()];
    for (i, &n) in order.iter().enumerate() {
        pos[n.index()] = i;
    }
    let mut claimed = vec![false; g.capacity()];
    let mut is_output = vec![false; g.capacity()];
    for o in &g.outputs {
        is_output[o.index()] = true;
    }
    let mut marks = Marks::new(g);
    let mut regions = Vec::new();
    for &n in order.iter().rev() {
        if claimed[n.index()] {
            continue;
        }
        let root_space = match g.node(n).op.fusion_class() {
            FusionClass::Elementwise => Space::Result,
            FusionClass::Reduction if !strided_sum(g, n) => Space::Sum,
            FusionClass::Reduction | FusionClass::Opaque => continue,
        };
        claimed[n.index()] = true;
        let mut r = Region {
            root: n,
            members: vec![(n, root_space)],
            matmul: None,
            sum: None,
            loads: Vec::new(),
        };
        if root_space == Space::Sum {
            r.sum = Some(n);
        }
        marks.join(g, n, root_space);
        let mut heap: BinaryHeap<(usize, NodeId)> =
            g.operands(n).iter().map(|&o| (pos[o.index()], o)).collect();
        let mut last = None;
        while let Some((_, p)) = heap.pop() {
            // a node's entries pop one after another (it is never pushed again once
            // popped: members joining later come after it), and all but the first
            // would see the same region
            if last.replace(p) == Some(p) {
                continue;
            }
            if marks.space[p.index()].is_some() || claimed[p.index()] || is_output[p.index()] {
                continue;
            }
            // the loop p would be evaluated in: that of all its users (the sum's operand is summed)
            let Some(space) = marks.users_space(p) else {
                continue;
            };
            if marks.feeds_part[p.index()] {
                continue; // a matmul's or a load's operand stays outside
            }
            let pn = g.node(p);
            let loop_elems = match space {
                Space::Summed => numel(
                    &g.node(g.operands(r.sum.expect("a summed space has a sum"))[0])
                        .shape,
                ),
                _ => numel(&g.node(r.root).shape),
            };
            let joined = match pn.op.fusion_class() {
                FusionClass::Elementwise if numel(&pn.shape) == loop_elems || pn.op.is_cheap() => {
                    space
                }
                // one sum per result element: the sum's result is not broadcast in the region
                FusionClass::Reduction
                    if space == Space::Result
                        && !strided_sum(g, p)
                        && r.sum.is_none()
                        && r.matmul.is_none()
                        && numel(&pn.shape) == numel(&g.node(r.root).shape) =>
                {
                    r.sum = Some(p);
                    Space::Sum
                }
                _ if is_load(pn.op) => {
                    r.loads.push(p);
                    space
                }
                _ if matches!(pn.op, Op::MatMul { .. })
                    && space == Space::Result
                    && r.matmul.is_none()
                    && r.sum.is_none()
                    && pn.shape == g.node(r.root).shape
                    && pn.dtype == g.node(r.root).dtype =>
                {
                    r.matmul = Some(p);
                    space
                }
                _ => continue,
            };
            if !is_load(pn.op) && !matches!(pn.op, Op::MatMul { .. }) {
                heap.extend(g.operands(p).iter().map(|&o| (pos[o.index()], o)));
            }
            claimed[p.index()] = true;
            r.members.push((p, joined));
            marks.join(g, p, joined);
        }
        marks.clear(g, &r);
        let elems = region_elems(g, &r);
        let keeps = |r: &Region| {
            let small = elems <= SMALL_REGION_ELEMS && r.matmul.is_none();
            let min = match r.matmul {
                Some(_) if min_elems > 0 => min_elems.max(MATMUL_REGION_MIN_ELEMS),
                _ => min_elems,
            };
            r.members.len() >= 2 && (elems >= min || small)
        };
        if !keeps(&r) {
            // too short for a matmul prologue: the elementwise rest may still pay (the
            // product stays a plain matmul that the region reads)
            if let Some(m) = r.matmul.take() {
                r.members.retain(|&(p, _)| p != m);
            }
        }
        if keeps(&r) {
            regions.push(r);
        }
    }
    let changed = !regions.is_empty();
    for r in regions {
        build(g, r, &pos)?;
    }
    Ok(inline_cheap_producers(g)? || changed)
}

/// Recomputes cheap elementwise nodes inside the fused nodes that read them, when no
/// one else does and it moves no more memory: a `neg`, `abs`, `sign`, `add`, `sub`,
/// `mul`, `div`, `maximum` or `minimum` whose users are all `fused` nodes (reading it as
/// an ordinary value: not through a matmul prologue or a load), and whose users
/// together read no more elements of its operands than it costs to write it and read
/// it back. The node then never runs as a kernel of its own: on the 1000-point linear
/// regression (W4), the gradient's `add %r, %r` (`2·r`, read by the two updates' sums)
/// joins both.
///
/// Each user gets the node as one instruction per loop it is read in (the summed loop,
/// the result loop), placed before its first reader; its operands become params. Users
/// first (reverse canonical order), so a chain of such nodes inlines link by link.
fn inline_cheap_producers(g: &mut Graph) -> Result<bool> {
    let mut changed = false;
    // how many nodes run each expression (one, unless a pass shared it), so a rewrite
    // copies a shared one instead of changing its other nodes
    let mut readers = vec![0u32; g.fused.len()];
    for n in g.node_ids() {
        if let Op::Fused(f) = g.node(n).op {
            readers[f as usize] += 1;
        }
    }
    for p in g.canonical_order().into_iter().rev() {
        if !g.contains(p) || !inlinable(g, p) {
            continue;
        }
        for u in g.users(p) {
            inline_into(g, p, u, &mut readers)?;
        }
        g.remove(p);
        changed = true;
    }
    Ok(changed)
}

/// Whether [`inline_cheap_producers`] recomputes `p` in its users.
fn inlinable(g: &Graph, p: NodeId) -> bool {
    let pn = g.node(p);
    let cheap_op = matches!(pn.op, Op::Unary(_) | Op::Binary(_)) && pn.op.is_cheap();
    if !cheap_op || g.outputs.contains(&p) || g.assigns.contains(&p) {
        return false;
    }
    let users = g.users(p);
    let plain_reads = |u: NodeId| {
        let Op::Fused(f) = g.node(u).op else {
            return false;
        };
        let e = &g.fused[f as usize];
        let ops = g.operands(u);
        e.insts.iter().all(|inst| {
            let reads_p = |a: &Arg| matches!(*a, Arg::Param(k) if ops[k as usize] == p);
            let part = is_load(inst.op) || matches!(inst.op, Op::MatMul { .. });
            !(part && inst.args.iter().any(reads_p))
        })
    };
    if users.is_empty() || !users.iter().all(|&u| plain_reads(u)) {
        return false;
    }
    // elements moved: write p and read it in every user, against every user reading
    // those of p's operands it does not read already
    let mut operands = g.operands(p);
    operands.sort();
    operands.dedup();
    // (in f64: a symbolic shape counts as usize::MAX elements, see `numel`)
    let n = |x: NodeId| numel(&g.node(x).shape) as f64;
    let now = n(p) * (1 + users.len()) as f64 + operands.iter().map(|&o| n(o)).sum::<f64>();
    let inlined: f64 = users
        .iter()
        .map(|&u| {
            let read = g.operands(u);
            (operands.iter())
                .filter(|o| !read.contains(o))
                .map(|&o| n(o))
                .sum::<f64>()
        })
        .sum();
    inlined <= now
}

/// Rewrites fused node `u` to compute `p` itself from `p`'s operands (`readers`: how many
/// nodes run each expression, kept up to date).
fn inline_into(g: &mut Graph, p: NodeId, u: NodeId, readers: &mut Vec<u32>) -> Result<()> {
    let Op::Fused(f) = g.node(u).op else {
        unreachable!("inlinable checked that every user is fused")
    };
    let e = &g.fused[f as usize];
    let old_params = g.operands(u);
    // the params: the old ones without p, then p's operands not among them
    let mut params: Vec<NodeId> = old_params.iter().copied().filter(|&o| o != p).collect();
    for o in g.operands(p) {
        if !params.contains(&o) {
            params.push(o);
        }
    }
    let param_of = |o: NodeId| params.iter().position(|&q| q == o).expect("a param") as u32;
    let pn = g.node(p);
    let p_args: SmallVec<[Arg; 3]> = g
        .operands(p)
        .into_iter()
        .map(|o| Arg::Param(param_of(o)))
        .collect();
    let sum = e.sum_index();
    // p's instruction in the summed loop and in the result loop, once emitted
    let mut p_inst: [Option<u32>; 2] = [None, None];
    let mut new_index: Vec<u32> = Vec::with_capacity(e.insts.len());
    let mut out = FusedExpr::default();
    for (k, inst) in e.insts.iter().enumerate() {
        let space = usize::from(sum.is_none_or(|s| k > s));
        let reads_p = inst
            .args
            .iter()
            .any(|a| matches!(*a, Arg::Param(j) if old_params[j as usize] == p));
        if reads_p && p_inst[space].is_none() {
            out.insts.push(Inst {
                op: pn.op,
                args: p_args.clone(),
                dtype: pn.dtype,
                shape: pn.shape.clone(),
            });
            p_inst[space] = Some(out.insts.len() as u32 - 1);
        }
        let args = (inst.args.iter())
            .map(|a| match *a {
                Arg::Param(j) if old_params[j as usize] == p => {
                    Arg::Inst(p_inst[space].expect("emitted above"))
                }
                Arg::Param(j) => Arg::Param(param_of(old_params[j as usize])),
                Arg::Inst(j) => Arg::Inst(new_index[j as usize]),
            })
            .collect();
        out.insts.push(Inst {
            op: inst.op,
            args,
            dtype: inst.dtype,
            shape: inst.shape.clone(),
        });
        new_index.push(out.insts.len() as u32 - 1);
    }
    check_expr(g, &out, &params, g.node(u), "inlined")?;
    if readers[f as usize] > 1 {
        readers[f as usize] -= 1;
        readers.push(1);
        g.fused.push(out);
        g.node_mut(u).op = Op::Fused(g.fused.len() as u32 - 1);
    } else {
        g.fused[f as usize] = out;
    }
    g.set_operands(u, &params);
    Ok(())
}

/// Elements of the region's longest loop (the summed one, or the result).
fn region_elems(g: &Graph, r: &Region) -> usize {
    let summed = r
        .sum
        .map(|s| numel(&g.node(g.operands(s)[0]).shape))
        .unwrap_or(0);
    summed.max(numel(&g.node(r.root).shape))
}

/// Checks that `e` over operands `params` computes `node`'s type (a bug in this pass
/// otherwise: `what` it did).
fn check_expr(g: &Graph, e: &FusedExpr, params: &[NodeId], node: &Node, what: &str) -> Result<()> {
    let types: Vec<(DType, &[usize])> = params
        .iter()
        .map(|&p| (g.node(p).dtype, &g.node(p).shape[..]))
        .collect();
    match e.infer(&types) {
        Ok((d, s)) if d == node.dtype && s == node.shape => Ok(()),
        other => Err(Error::Graph(format!(
            "fuse_elementwise {what} a bad expression ({other:?}): {e:?}"
        ))),
    }
}

/// Replaces a region by one `fused` node.
fn build(g: &mut Graph, mut r: Region, pos: &[usize]) -> Result<()> {
    // the matmul first, then the summed loop, the sum, the result's loop; canonical order within each
    let rank = |m: NodeId, s: Space| match s {
        _ if Some(m) == r.matmul => 0,
        Space::Summed => 1,
        Space::Sum => 2,
        Space::Result => 3,
    };
    r.members
        .sort_by_key(|&(m, s)| (rank(m, s), pos[m.index()]));
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
    for (k, &(m, _)) in r.members.iter().enumerate() {
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
        e.insts.push(Inst {
            op: node.op,
            args,
            dtype: node.dtype,
            shape: node.shape.clone(),
        });
        inst_of.insert(m, k as u32);
    }
    let root = g.node(r.root).clone();
    check_expr(g, &e, &params, &root, "built")?;
    g.fused.push(e);
    let mut node = Node::new(Op::Fused(g.fused.len() as u32 - 1), root.dtype, root.shape);
    node.loc = root.loc;
    let f = g.add(node, &params);
    g.replace_uses(r.root, f);
    for (m, _) in r.members {
        g.remove(m);
    }
    Ok(())
}
