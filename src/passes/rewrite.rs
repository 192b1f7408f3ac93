//! Helpers shared by the rewriting passes: the structural key of a node (what CSE
//! hashes), building typed nodes without duplicating existing ones, and replacing a node
//! while keeping the graph free of duplicates, plus reading constant splats.
//!
//! Invariant kept by [`add_unique`] and [`replace`]: if the graph had no two nodes with
//! equal [`Key`]s before, it has none after, so passes that run after
//! `eliminate_common_subexpressions` leave nothing for a second CSE run to find.

use crate::error::{Error, Result};
use crate::ir::FusedExpr;
use crate::ir::{Graph, Node, NodeId};
use crate::ops::Op;
use crate::tensor::{DType, Data, Shape};
use smallvec::SmallVec;

/// Everything that makes two nodes compute the same value: op, operands (sorted for
/// commutative ops), type, a constant's value bits, a fused node's expression and a
/// control-flow node's region (its [`region_text`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    op: Op,
    operands: SmallVec<[NodeId; 4]>,
    dtype: DType,
    shape: Shape,
    value: Option<Vec<u64>>,
    fused: Option<FusedExpr>,
    region: Option<String>,
}

/// The value bits of a constant (so `0.0` and `-0.0` differ and NaN equals itself).
fn bits(d: &Data) -> Vec<u64> {
    match d {
        Data::F32(a) => a.iter().map(|v| v.to_bits() as u64).collect(),
        Data::F64(a) => a.iter().map(|v| v.to_bits()).collect(),
        Data::I64(a) => a.iter().map(|&v| v as u64).collect(),
    }
}

/// The key of a node, or `None` for nodes that must never merge (inputs, assigns, and
/// control-flow nodes whose bodies assign variables).
pub fn key(g: &Graph, id: NodeId) -> Option<Key> {
    let node = g.node(id);
    let mut operands = g.operands(id);
    let mut op = node.op;
    let (mut fused, mut region) = (None, None);
    match node.op {
        Op::Input(_) | Op::Assign(_) => return None,
        Op::Fused(f) => {
            op = Op::Fused(0); // the table index is not structure; the expression is
            fused = Some(g.fused[f as usize].clone());
        }
        // likewise a region's index: its structure is its text
        Op::Cond(r) | Op::While(r) | Op::Scan(r) => {
            op = node.op.with_region(0);
            region = Some(region_text(g, r)?);
        }
        op if op.is_commutative() => operands.sort_unstable(),
        _ => {}
    }
    Some(Key {
        op,
        operands,
        dtype: node.dtype,
        shape: node.shape.clone(),
        value: node.value.as_ref().map(bits),
        fused,
        region,
    })
}

/// What makes two regions of `g` the same computation on the same operands: their kind,
/// counts and result types, and each body's canonical text (which names every op and
/// attribute; constants by value, the large ones by their bits) with the identities of
/// the variables it reads. `None` for a
/// region with a body that assigns a variable (at any depth): two such loops are two
/// writes, never one. Two `scan`s that two `tape.gradient` calls of a persistent tape
/// build for the same loop are merged by it into one backward loop.
pub fn region_text(g: &Graph, r: u32) -> Option<String> {
    fn assigns(b: &Graph) -> bool {
        !b.assigns.is_empty() || b.regions.iter().any(|r| r.bodies.iter().any(assigns))
    }
    let region = &g.regions[r as usize];
    if region.bodies.iter().any(assigns) {
        return None;
    }
    let mut text = format!(
        "{:?} carries={} xs={} saved={} results={:?}\n",
        region.kind, region.carries, region.xs, region.saved, region.results
    );
    for b in &region.bodies {
        let vars: Vec<Option<u64>> = b
            .vars
            .iter()
            .map(|v| Some(v.handle.as_ref()?.id()))
            .collect();
        // constants the text cannot hold bit for bit are listed after it, by their bits
        let (body, consts) = crate::ir::print_with_constants(b);
        let consts: Vec<Vec<u64>> = consts.iter().map(bits).collect();
        text += &format!("vars {vars:?}\n{body}consts {consts:?}\n");
    }
    Some(text)
}

/// Adds `op(operands)` with its inferred type (`shape` for ops that need one), or
/// returns an existing node with the same key.
pub fn add_unique(
    g: &mut Graph,
    op: Op,
    operands: &[NodeId],
    shape: Option<&[usize]>,
    like: NodeId,
) -> Result<NodeId> {
    let types: Vec<(DType, &[usize])> = operands
        .iter()
        .map(|&o| (g.node(o).dtype, &g.node(o).shape[..]))
        .collect();
    let (dtype, shape) = op
        .infer(&types, shape)
        .map_err(|e| Error::Graph(format!("rewrite built a bad {}: {e}", op.name())))?;
    let mut node = Node::new(op, dtype, shape);
    node.loc = g.node(like).loc;
    let id = g.add(node, operands);
    Ok(merge_into_twin(g, id))
}

/// If another node has `id`'s key, removes `id` (pointing its uses at the twin) and
/// returns the twin; else returns `id`. Twins share all their operands, so only the
/// users of the operand with the fewest uses are compared (not those of a widely
/// shared one, such as a graph input: that would make a sweep quadratic).
fn merge_into_twin(g: &mut Graph, id: NodeId) -> NodeId {
    let Some(k) = key(g, id) else { return id };
    let candidates = match g.operands(id).iter().min_by_key(|&&o| g.use_count(o)) {
        Some(&o) => g.users(o),
        None => return id,
    };
    for c in candidates {
        let same_kind = std::mem::discriminant(&g.node(c).op) == std::mem::discriminant(&k.op);
        if c != id && same_kind && key(g, c).as_ref() == Some(&k) {
            g.replace_uses(id, c);
            g.remove(id);
            return c;
        }
    }
    id
}

/// Points every use of `old` at `new`, then merges users that became duplicates of
/// each other (transitively), so the graph stays free of duplicates.
pub fn replace(g: &mut Graph, old: NodeId, new: NodeId) {
    if old == new {
        return;
    }
    let mut work = g.users(old);
    g.replace_uses(old, new);
    while let Some(u) = work.pop() {
        if !g.contains(u) {
            continue;
        }
        let users = g.users(u);
        if merge_into_twin(g, u) != u {
            work.extend(users);
        }
    }
}

/// The value of a constant whose elements are all bit-equal, seen through `broadcast`
/// and `reshape` (as f64; integers converted).
pub fn splat(g: &Graph, id: NodeId) -> Option<f64> {
    let node = g.node(id);
    match node.op {
        Op::Const => {
            let v = node.value.as_ref()?.to_f64_vec();
            let first = *v.first()?;
            v.iter()
                .all(|x| x.to_bits() == first.to_bits())
                .then_some(first)
        }
        Op::BroadcastTo | Op::Reshape => splat(g, g.operands(id)[0]),
        _ => None,
    }
}

/// `x` itself when it has `like`'s type, or `x` broadcast to `like`'s shape (a rule's
/// result must have the type of the node it replaces).
pub fn as_type_of(g: &mut Graph, x: NodeId, like: NodeId) -> Result<Option<NodeId>> {
    let (xn, ln) = (g.node(x), g.node(like));
    if xn.dtype != ln.dtype {
        return Ok(None);
    }
    if xn.shape == ln.shape {
        return Ok(Some(x));
    }
    let shape = ln.shape.clone();
    add_unique(g, Op::BroadcastTo, &[x], Some(&shape), like).map(Some)
}

/// A scalar constant `v` of `dtype` located at `like`'s source line (an existing one with
/// the same bits where there is one).
pub fn scalar_const(g: &mut Graph, dtype: DType, v: f64, like: NodeId) -> NodeId {
    let mut c = Node::new(Op::Const, dtype, Shape::new());
    c.value = Some(Data::full(dtype, &[], v));
    c.loc = g.node(like).loc;
    let c = g.add(c, &[]);
    unique_const(g, c)
}

/// If another `const` has `c`'s type and value bits, removes `c` and returns that one.
pub fn unique_const(g: &mut Graph, c: NodeId) -> NodeId {
    let k = key(g, c);
    let twin = g
        .node_ids()
        .into_iter()
        .find(|&o| o != c && g.node(o).op == Op::Const && key(g, o) == k);
    match twin {
        Some(t) => {
            g.remove(c);
            t
        }
        None => c,
    }
}
