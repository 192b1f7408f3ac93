//! `simplify`: algebraic identities that hold bit for bit in IEEE arithmetic.
//!
//! Algorithm: sweeps over the canonical order; at each node the rules of [`RULES`] are
//! tried in table order and the first that applies replaces the node (through
//! [`replace`], which also merges users that became duplicates). Sweeps repeat until
//! one changes nothing, at most [`MAX_SWEEPS`] times (a rule's new node is looked at by
//! the next sweep).
//!
//! Every rule is exact for every input, including `-0.0`, infinities and NaN (all NaNs
//! count as the same value; payloads may differ). So it does not do: `x + 0.0 → x`
//! (`-0.0 + 0.0` is `+0.0`; only adding `-0.0` is an identity), `x - x → 0` (NaN, ∞),
//! `x * 0 → 0` (NaN, ∞, and `-x * 0` is `-0.0`), `x / x → 1`, `-(a - b) → b - a`
//! (`-(a - a)` is `-0.0`), reassociation or distribution (rounding), `sum` over
//! length-1 axes (the kernel computes `0 + x`, which turns `-0.0` into `+0.0`). A
//! result with another shape than the node it replaces is broadcast to the node's shape
//! (exact: broadcasting copies values). Rules never look inside `fused` nodes.

use super::rewrite::{add_unique, as_type_of, replace, scalar_const, splat};
use crate::error::Result;
use crate::ir::{Graph, NodeId};
use crate::ops::reduce::reduced_shape;
use crate::ops::{Binary, Compare, Op, Perm, Unary};
use crate::tensor::{numel, DType};
use std::collections::BTreeMap;

/// Most sweeps before giving up on a fixpoint.
pub const MAX_SWEEPS: usize = 16;

/// A rule looks at one node and returns the node that replaces it, if it applies.
pub type RuleFn = fn(&mut Graph, NodeId) -> Result<Option<NodeId>>;

/// The rewrite rules: (name, rule). Each rule's identity is in its comment.
#[rustfmt::skip]
pub const RULES: &[(&str, RuleFn)] = &[
    ("add_neg_zero",          add_neg_zero),          // x + (-0.0) = x,  (-0.0) + x = x   (ints: x + 0 = x)
    ("sub_zero",              sub_zero),              // x - 0.0 = x                       (= x + (-0.0))
    ("mul_one",               mul_one),               // x * 1 = x,  1 * x = x
    ("div_one",               div_one),               // x / 1 = x
    ("div_power_of_two",      div_power_of_two),      // x / 2ᵏ = x * 2⁻ᵏ   (both round the same real number)
    ("neg_neg",               neg_neg),               // -(-x) = x
    ("sub_neg",               sub_neg),               // x - (-y) = x + y
    ("add_neg",               add_neg),               // x + (-y) = x - y,  (-y) + x = x - y
    ("max_min_same",          max_min_same),          // maximum(x, x) = x,  minimum(x, x) = x
    ("select_same",           select_same),           // select(m, x, x) = x
    ("select_const_mask",     select_const_mask),     // select(c ≠ 0, a, b) = a,  select(0, a, b) = b
    ("reshape_same",          reshape_same),          // reshape(x: s → s) = x
    ("reshape_reshape",       reshape_reshape),       // reshape(reshape(x)) = reshape(x)
    ("broadcast_same",        broadcast_same),        // broadcast(x: s → s) = x
    ("broadcast_broadcast",   broadcast_broadcast),   // broadcast(broadcast(x)) = broadcast(x)
    ("transpose_identity",    transpose_identity),    // transpose[perm=[0,1,..]](x) = x
    ("transpose_transpose",   transpose_transpose),   // transpose[q](transpose[p](x)) = transpose[p∘q](x)
    ("cast_same",             cast_same),             // cast[to=dtype(x)](x) = x
    ("cast_f32_f64_f32",      cast_f32_f64_f32),      // cast[to=f32](cast[to=f64](x: f32)) = x   (f64 holds every f32)
    ("sum_no_axes",           sum_no_axes),           // sum[axes=[]](x) = x  (rank ≥ 1; rank 0 takes the kernel's 0 + x path)
    ("max_no_axes",           max_no_axes),           // max[axes=[]](x) = x
    ("stop_gradient",         stop_gradient),         // stop_gradient(x) = x  (optimized graphs are not differentiated)
    ("reshape_kept_reduce",   reshape_kept_reduce),   // reshape(sum[keep](x)) = sum(x) when it drops the kept axes (also max)
    ("unary_of_broadcast",    unary_of_broadcast),    // f(broadcast(x)) = broadcast(f(x))  (f elementwise: each element is f of the same x)
    ("reshape_of_broadcast_scalar", reshape_of_broadcast_scalar), // reshape(broadcast(x)) = broadcast(x) when x has one element
    ("slice_of_elementwise",  slice_of_elementwise),  // slice(op(a, b)) = op(slice(a), slice(b))  (cheap op read only by slices, operands of its shape)
    ("add_of_disjoint_pads",  add_of_disjoint_pads),  // pad(a) + pad(b) + … = pad(concat(a + 0, b + 0, …)) for pads that tile a range
    ("pool_grad_gate",        pool_grad_gate),        // max_pool2d_grad(x, gy) * (x > t) = max_pool2d_grad_gated(x, gy, t)  (one kernel, the same products)
    ("conv_bias_relu",        conv_bias_relu),        // maximum(conv2d(x, w) + b, t) = conv2d_bias_relu(x, w, b, t)  (one kernel, the same operations)
];

/// Applies [`RULES`] to a fixpoint; returns how often each rule fired.
pub fn simplify_counting(g: &mut Graph) -> Result<BTreeMap<&'static str, usize>> {
    let mut fired = BTreeMap::new();
    for _ in 0..MAX_SWEEPS {
        let mut changed = false;
        for n in g.canonical_order() {
            if !g.contains(n)
                || matches!(
                    g.node(n).op,
                    Op::Input(_) | Op::Const | Op::ReadVar(_) | Op::Assign(_) | Op::Fused(_)
                )
            {
                continue;
            }
            for &(name, rule) in RULES {
                if let Some(new) = rule(g, n)? {
                    if new != n {
                        replace(g, n, new);
                        if g.contains(n) && g.users(n).is_empty() && !g.roots().contains(&n) {
                            g.remove(n);
                        }
                        *fired.entry(name).or_insert(0) += 1;
                        changed = true;
                    }
                    break;
                }
            }
        }
        if !changed {
            break;
        }
    }
    Ok(fired)
}

/// Applies the rewrite rules of [`RULES`] until none applies; returns whether any fired.
pub fn simplify(g: &mut Graph) -> Result<bool> {
    simplify_counting(g).map(|fired| !fired.is_empty())
}

fn operands2(g: &Graph, n: NodeId) -> (NodeId, NodeId) {
    let o = g.operands(n);
    (o[0], o[1])
}

fn is_binary(g: &Graph, n: NodeId, b: Binary) -> bool {
    g.node(n).op == Op::Binary(b)
}

fn is_neg(g: &Graph, n: NodeId) -> Option<NodeId> {
    (g.node(n).op == Op::Unary(Unary::Neg)).then(|| g.operands(n)[0])
}

/// Whether `c` is a splat of `v` in the bits of `dtype` (for integers, the value).
fn splat_is(g: &Graph, c: NodeId, v: f64) -> bool {
    match (splat(g, c), g.node(c).dtype) {
        (Some(s), DType::I64) => s == v,
        (Some(s), _) => s.to_bits() == v.to_bits(),
        _ => false,
    }
}

/// For an identity `x ∘ e = x`: the result when operand `e_slot` is the splat `e`.
fn identity_operand(g: &mut Graph, n: NodeId, e: f64, e_slots: &[usize]) -> Result<Option<NodeId>> {
    let o = g.operands(n);
    for &s in e_slots {
        if splat_is(g, o[s], e) {
            return as_type_of(g, o[1 - s], n);
        }
    }
    Ok(None)
}

fn add_neg_zero(g: &mut Graph, n: NodeId) -> Result<Option<NodeId>> {
    if !is_binary(g, n, Binary::Add) {
        return Ok(None);
    }
    // integers have no -0, and x + 0 = x; for floats only -0.0 is the additive identity
    let zero = if g.node(n).dtype == DType::I64 {
        0.0
    } else {
        -0.0
    };
    identity_operand(g, n, zero, &[1, 0])
}

fn sub_zero(g: &mut Graph, n: NodeId) -> Result<Option<NodeId>> {
    if !is_binary(g, n, Binary::Sub) {
        return Ok(None);
    }
    identity_operand(g, n, 0.0, &[1])
}

fn mul_one(g: &mut Graph, n: NodeId) -> Result<Option<NodeId>> {
    if !is_binary(g, n, Binary::Mul) {
        return Ok(None);
    }
    identity_operand(g, n, 1.0, &[1, 0])
}

fn div_one(g: &mut Graph, n: NodeId) -> Result<Option<NodeId>> {
    if !is_binary(g, n, Binary::Div) {
        return Ok(None);
    }
    identity_operand(g, n, 1.0, &[1])
}

/// `x / c → x * (1/c)` when `c` is a splat power of two whose reciprocal is a normal
/// number of the dtype: `x / c` and `x * (1/c)` are then the same real number, rounded once.
fn div_power_of_two(g: &mut Graph, n: NodeId) -> Result<Option<NodeId>> {
    if !is_binary(g, n, Binary::Div) {
        return Ok(None);
    }
    let (x, c) = operands2(g, n);
    let Some(v) = splat(g, c) else {
        return Ok(None);
    };
    let dtype = g.node(n).dtype;
    let exact = match dtype {
        DType::F32 => {
            let (v32, r) = (v as f32, 1.0 / v as f32);
            v32 as f64 == v && v32.is_normal() && r.is_normal() && (v32.to_bits() & 0x7f_ffff) == 0
        }
        DType::F64 => {
            let r = 1.0 / v;
            v.is_normal() && r.is_normal() && (v.to_bits() & 0xf_ffff_ffff_ffff) == 0
        }
        DType::I64 => false,
    };
    if !exact || v == 1.0 {
        return Ok(None); // x / 1 is `div_one`
    }
    let r = scalar_const(g, dtype, 1.0 / v, c);
    add_unique(g, Op::Binary(Binary::Mul), &[x, r], None, n).map(Some)
}

fn neg_neg(g: &mut Graph, n: NodeId) -> Result<Option<NodeId>> {
    Ok(is_neg(g, n).and_then(|x| is_neg(g, x)))
}

fn sub_neg(g: &mut Graph, n: NodeId) -> Result<Option<NodeId>> {
    if !is_binary(g, n, Binary::Sub) {
        return Ok(None);
    }
    let (x, ny) = operands2(g, n);
    match is_neg(g, ny) {
        Some(y) => add_unique(g, Op::Binary(Binary::Add), &[x, y], None, n).map(Some),
        None => Ok(None),
    }
}

fn add_neg(g: &mut Graph, n: NodeId) -> Result<Option<NodeId>> {
    if !is_binary(g, n, Binary::Add) {
        return Ok(None);
    }
    let (a, b) = operands2(g, n);
    let (x, y) = match (is_neg(g, a), is_neg(g, b)) {
        (_, Some(y)) => (a, y),
        (Some(y), None) => (b, y),
        (None, None) => return Ok(None),
    };
    add_unique(g, Op::Binary(Binary::Sub), &[x, y], None, n).map(Some)
}

fn max_min_same(g: &mut Graph, n: NodeId) -> Result<Option<NodeId>> {
    if !is_binary(g, n, Binary::Maximum) && !is_binary(g, n, Binary::Minimum) {
        return Ok(None);
    }
    let (a, b) = operands2(g, n);
    if a != b {
        return Ok(None);
    }
    as_type_of(g, a, n)
}

fn select_same(g: &mut Graph, n: NodeId) -> Result<Option<NodeId>> {
    if g.node(n).op != Op::Select {
        return Ok(None);
    }
    let o = g.operands(n);
    if o[1] != o[2] {
        return Ok(None);
    }
    as_type_of(g, o[1], n)
}

fn select_const_mask(g: &mut Graph, n: NodeId) -> Result<Option<NodeId>> {
    if g.node(n).op != Op::Select {
        return Ok(None);
    }
    let o = g.operands(n);
    match splat(g, o[0]) {
        // the kernel tests `mask != 0`, so NaN picks `a` too
        Some(m) => as_type_of(g, if m != 0.0 { o[1] } else { o[2] }, n),
        None => Ok(None),
    }
}

/// `x` when `n` is `op(x)` and `x` has `n`'s type.
fn same_type_operand(g: &Graph, n: NodeId, is_op: impl Fn(Op) -> bool) -> Option<NodeId> {
    if !is_op(g.node(n).op) {
        return None;
    }
    let x = g.operands(n)[0];
    (g.node(x).dtype == g.node(n).dtype && g.node(x).shape == g.node(n).shape).then_some(x)
}

fn reshape_same(g: &mut Graph, n: NodeId) -> Result<Option<NodeId>> {
    Ok(same_type_operand(g, n, |op| op == Op::Reshape))
}

fn broadcast_same(g: &mut Graph, n: NodeId) -> Result<Option<NodeId>> {
    Ok(same_type_operand(g, n, |op| op == Op::BroadcastTo))
}

fn cast_same(g: &mut Graph, n: NodeId) -> Result<Option<NodeId>> {
    Ok(same_type_operand(g, n, |op| matches!(op, Op::Cast(_))))
}

fn sum_no_axes(g: &mut Graph, n: NodeId) -> Result<Option<NodeId>> {
    Ok(
        same_type_operand(g, n, |op| matches!(op, Op::Sum { axes, .. } if axes.0 == 0))
            .filter(|&x| !g.node(x).shape.is_empty()),
    )
}

fn max_no_axes(g: &mut Graph, n: NodeId) -> Result<Option<NodeId>> {
    Ok(same_type_operand(
        g,
        n,
        |op| matches!(op, Op::Max { axes, .. } if axes.0 == 0),
    ))
}

fn stop_gradient(g: &mut Graph, n: NodeId) -> Result<Option<NodeId>> {
    Ok(same_type_operand(g, n, |op| op == Op::StopGradient))
}

/// `op(inner(x))` → `op(x)` when both are `op` (reshape and broadcast compose by their
/// target shape alone).
fn collapse_twice(g: &mut Graph, n: NodeId, op: Op) -> Result<Option<NodeId>> {
    if g.node(n).op != op {
        return Ok(None);
    }
    let inner = g.operands(n)[0];
    if g.node(inner).op != op {
        return Ok(None);
    }
    let x = g.operands(inner)[0];
    let shape = g.node(n).shape.clone();
    if g.node(x).shape == shape {
        return Ok(Some(x));
    }
    add_unique(g, op, &[x], Some(&shape), n).map(Some)
}

fn reshape_reshape(g: &mut Graph, n: NodeId) -> Result<Option<NodeId>> {
    collapse_twice(g, n, Op::Reshape)
}

fn broadcast_broadcast(g: &mut Graph, n: NodeId) -> Result<Option<NodeId>> {
    collapse_twice(g, n, Op::BroadcastTo)
}

fn transpose_identity(g: &mut Graph, n: NodeId) -> Result<Option<NodeId>> {
    Ok(same_type_operand(
        g,
        n,
        |op| matches!(op, Op::Transpose(p) if p.to_vec().iter().enumerate().all(|(i, &a)| i == a)),
    ))
}

fn transpose_transpose(g: &mut Graph, n: NodeId) -> Result<Option<NodeId>> {
    let Op::Transpose(q) = g.node(n).op else {
        return Ok(None);
    };
    let inner = g.operands(n)[0];
    let Op::Transpose(p) = g.node(inner).op else {
        return Ok(None);
    };
    let x = g.operands(inner)[0];
    // out[i] = inner[q[i]] = x[p[q[i]]]
    let (p, q) = (p.to_vec(), q.to_vec());
    let composed: Vec<usize> = q.iter().map(|&i| p[i]).collect();
    if composed.iter().enumerate().all(|(i, &a)| i == a) {
        return Ok(Some(x));
    }
    let perm = Perm::new(&composed).expect("a composition of permutations is one");
    add_unique(g, Op::Transpose(perm), &[x], None, n).map(Some)
}

fn cast_f32_f64_f32(g: &mut Graph, n: NodeId) -> Result<Option<NodeId>> {
    if g.node(n).op != Op::Cast(DType::F32) {
        return Ok(None);
    }
    let inner = g.operands(n)[0];
    if g.node(inner).op != Op::Cast(DType::F64) {
        return Ok(None);
    }
    let x = g.operands(inner)[0];
    Ok((g.node(x).dtype == DType::F32).then_some(x))
}

fn reshape_kept_reduce(g: &mut Graph, n: NodeId) -> Result<Option<NodeId>> {
    if g.node(n).op != Op::Reshape {
        return Ok(None);
    }
    let r = g.operands(n)[0];
    let (op, x) = match g.node(r).op {
        Op::Sum { axes, keep: true } => (Op::Sum { axes, keep: false }, g.operands(r)[0]),
        Op::Max { axes, keep: true } => (Op::Max { axes, keep: false }, g.operands(r)[0]),
        _ => return Ok(None),
    };
    let (Op::Sum { axes, .. } | Op::Max { axes, .. }) = op else {
        unreachable!()
    };
    if reduced_shape(&g.node(x).shape, axes, false) != g.node(n).shape {
        return Ok(None);
    }
    add_unique(g, op, &[x], None, n).map(Some)
}

fn unary_of_broadcast(g: &mut Graph, n: NodeId) -> Result<Option<NodeId>> {
    let op = g.node(n).op;
    if !matches!(op, Op::Unary(_) | Op::Cast(_)) {
        return Ok(None);
    }
    let b = g.operands(n)[0];
    if g.node(b).op != Op::BroadcastTo {
        return Ok(None);
    }
    let x = g.operands(b)[0];
    let fx = add_unique(g, op, &[x], None, n)?;
    let shape = g.node(n).shape.clone();
    add_unique(g, Op::BroadcastTo, &[fx], Some(&shape), n).map(Some)
}

/// `slice(op(a, b))` → `op(slice(a), slice(b))` for a cheap elementwise `op` (see
/// `Op::is_cheap`) that only slices read and whose operands have its shape: each element
/// is `op` of the same elements, so the bits are the same, and once every slice is
/// rewritten `op` is dead. The slices then read the operands, and fusion takes them as
/// loads of the loops that read the slices: an LSTM's pre-activation `x·W + h·U` is no
/// longer written whole and read back gate by gate.
fn slice_of_elementwise(g: &mut Graph, n: NodeId) -> Result<Option<NodeId>> {
    let slice = g.node(n).op;
    if !matches!(slice, Op::Slice { .. }) {
        return Ok(None);
    }
    let x = g.operands(n)[0];
    let xn = g.node(x);
    let op = xn.op;
    let shape = xn.shape.clone();
    if !matches!(op, Op::Unary(_) | Op::Binary(_)) || !op.is_cheap() || g.outputs.contains(&x) {
        return Ok(None);
    }
    let operands = g.operands(x);
    let only_slices = (g.users(x).iter()).all(|&u| matches!(g.node(u).op, Op::Slice { .. }));
    if !only_slices || operands.iter().any(|&o| g.node(o).shape != shape) {
        return Ok(None);
    }
    let out = g.node(n).shape.clone();
    let sliced = operands
        .iter()
        .map(|&o| add_unique(g, slice, &[o], Some(&out), n))
        .collect::<Result<Vec<_>>>()?;
    add_unique(g, op, &sliced, None, n).map(Some)
}

/// `max_pool2d_grad(x, gy) * (x > t)` (the product either way round, `t` one element or
/// a broadcast of one, the gate of the gradient's float type, the gradient read only
/// here) → `max_pool2d_grad_gated(x, gy, t)`: the ReLU before a max pooling,
/// differentiated. The kernel multiplies each element of the pooling's gradient by
/// the same gate value, 1 or 0 (0 for NaN, as `>` gives), so the bits are the two ops'
/// (IEEE multiplication commutes); it saves writing the ungated gradient and reading it
/// back (the tutorial CNN's first pooling: ≈2.8 MB each way per step).
fn pool_grad_gate(g: &mut Graph, n: NodeId) -> Result<Option<NodeId>> {
    if !is_binary(g, n, Binary::Mul) {
        return Ok(None);
    }
    let (a, b) = operands2(g, n);
    for (pg, gate) in [(a, b), (b, a)] {
        let Op::MaxPool2dGrad(p) = g.node(pg).op else {
            continue;
        };
        let is_gate = g.node(gate).op == Op::Compare(Compare::Gt)
            && g.node(gate).dtype == g.node(pg).dtype
            && g.node(gate).shape == g.node(pg).shape;
        if !is_gate || g.use_count(pg) != 1 || g.roots().contains(&pg) {
            continue;
        }
        let (x, gy) = operands2(g, pg);
        let (gx, t) = operands2(g, gate);
        let dtype = g.node(x).dtype;
        let Some(t) = (gx == x).then(|| scalar_operand(g, t, dtype)).flatten() else {
            continue;
        };
        let t = as_scalar(g, t, n)?;
        return add_unique(g, Op::MaxPool2dGradGated(p), &[x, gy, t], None, n).map(Some);
    }
    Ok(None)
}

/// `maximum(conv2d(x, w) + b, t)` (the sum either way round; `b` `[cout]` or a
/// broadcast of it; `t` one element or a broadcast of one; the convolution and the sum
/// read only here) → `conv2d_bias_relu(x, w, b, t)`: a convolution layer's bias and
/// ReLU. The kernel adds the bias and takes the maximum of each chunk of output rows
/// right after computing it, the same operations on the same values in the same order
/// (`maximum` keeps its operand order: it is not symmetric in NaN and signed zeros),
/// so the bits are the three ops'; the output is not written and read back again.
fn conv_bias_relu(g: &mut Graph, n: NodeId) -> Result<Option<NodeId>> {
    if !is_binary(g, n, Binary::Maximum) {
        return Ok(None);
    }
    let (sum, t) = operands2(g, n);
    if !is_binary(g, sum, Binary::Add) || g.use_count(sum) != 1 || g.roots().contains(&sum) {
        return Ok(None);
    }
    let dtype = g.node(n).dtype;
    let (a, b) = operands2(g, sum);
    let Some((conv, mut bias)) = [(a, b), (b, a)].into_iter().find(|&(c, _)| {
        matches!(g.node(c).op, Op::Conv2d(_))
            && g.use_count(c) == 1
            && !g.roots().contains(&c)
            && g.node(c).shape == g.node(n).shape
    }) else {
        return Ok(None);
    };
    let Op::Conv2d(attrs) = g.node(conv).op else {
        return Ok(None);
    };
    let cout = g.node(conv).shape[3];
    if g.node(bias).op == Op::BroadcastTo {
        bias = g.operands(bias)[0];
    }
    let Some(t) = scalar_operand(g, t, dtype) else {
        return Ok(None);
    };
    if g.node(bias).shape[..] != [cout] || g.node(bias).dtype != dtype {
        return Ok(None);
    }
    let t = as_scalar(g, t, n)?;
    let (x, w) = operands2(g, conv);
    add_unique(g, Op::Conv2dBiasRelu(attrs), &[x, w, bias, t], None, n).map(Some)
}

/// The one-element value of `dtype` that operand `t` holds (`t` itself, or what a
/// `broadcast` spreads), for the rules whose fused kernel takes a scalar threshold.
fn scalar_operand(g: &Graph, t: NodeId, dtype: DType) -> Option<NodeId> {
    let t = match g.node(t).op {
        Op::BroadcastTo => g.operands(t)[0],
        _ => t,
    };
    (numel(&g.node(t).shape) == 1 && g.node(t).dtype == dtype).then_some(t)
}

/// `t` (one element) as a rank-0 value: itself, or a `reshape` of it.
fn as_scalar(g: &mut Graph, t: NodeId, like: NodeId) -> Result<NodeId> {
    if g.node(t).shape.is_empty() {
        Ok(t)
    } else {
        add_unique(g, Op::Reshape, &[t], Some(&[]), like)
    }
}

fn reshape_of_broadcast_scalar(g: &mut Graph, n: NodeId) -> Result<Option<NodeId>> {
    if g.node(n).op != Op::Reshape {
        return Ok(None);
    }
    let b = g.operands(n)[0];
    if g.node(b).op != Op::BroadcastTo {
        return Ok(None);
    }
    let mut x = g.operands(b)[0];
    if numel(&g.node(x).shape) != 1 {
        return Ok(None);
    }
    let shape = g.node(n).shape.clone();
    if g.node(x).shape.len() > shape.len() {
        x = add_unique(g, Op::Reshape, &[x], Some(&[]), n)?;
    }
    if g.node(x).shape == shape {
        return Ok(Some(x));
    }
    add_unique(g, Op::BroadcastTo, &[x], Some(&shape), n).map(Some)
}

/// The leaves of the tree of `add`s rooted at `root` (adds of its type used only inside
/// the tree are followed, anything else is a leaf), or `None` at the first leaf that
/// `keep` rejects. Iterative, so a long chain of adds does not grow the stack.
fn add_tree_leaves(g: &Graph, root: NodeId, keep: impl Fn(NodeId) -> bool) -> Option<Vec<NodeId>> {
    let (dtype, shape) = (g.node(root).dtype, &g.node(root).shape);
    let mut leaves = Vec::new();
    let mut todo = vec![root];
    while let Some(n) = todo.pop() {
        let node = g.node(n);
        let inner = node.op == Op::Binary(Binary::Add)
            && node.dtype == dtype
            && node.shape == *shape
            && (n == root || g.use_count(n) == 1);
        if inner {
            todo.extend(g.operands(n));
        } else if keep(n) {
            leaves.push(n);
        } else {
            return None;
        }
    }
    Some(leaves)
}

/// A sum of zero pads of one type along one axis whose unpadded windows are disjoint
/// and together make one contiguous range (the gradient of slicing a tensor into
/// pieces, like an LSTM's four gates): the concatenation of the pieces, padded. Each
/// element of the sum is one piece's value plus zeros, and adding `+0.0` once or
/// several times in any order gives the same bits, so each float piece gets one
/// `+ 0.0` (turning `-0.0` into `+0.0`, as the sum does), which fusion folds into the
/// piece's producer. One pass writes the result instead of a zero-filled tensor per
/// piece and an add per piece.
fn add_of_disjoint_pads(g: &mut Graph, n: NodeId) -> Result<Option<NodeId>> {
    if !is_binary(g, n, Binary::Add) {
        return Ok(None);
    }
    let shape = g.node(n).shape.clone();
    let dtype = g.node(n).dtype;
    // only at the root of a tree of adds (its inner adds are leaves' partial sums)
    if let [u] = g.users(n)[..] {
        let un = g.node(u);
        if un.op == Op::Binary(Binary::Add) && un.dtype == dtype && un.shape == shape {
            return Ok(None);
        }
    }
    let is_pad = |l: NodeId| matches!(g.node(l).op, Op::Pad { .. });
    let Some(leaves) = add_tree_leaves(g, n, is_pad) else {
        return Ok(None);
    };
    let mut pieces: Vec<(u32, NodeId)> = Vec::new();
    let mut pad_axis = None;
    for &l in &leaves {
        let node = g.node(l);
        let Op::Pad { axis, before, .. } = node.op else {
            return Ok(None);
        };
        if node.shape != shape || node.dtype != dtype || *pad_axis.get_or_insert(axis) != axis {
            return Ok(None);
        }
        pieces.push((before, g.operands(l)[0]));
    }
    let Some(axis) = pad_axis else {
        return Ok(None);
    };
    let ax = axis as usize;
    if pieces.len() < 2 || shape.iter().any(|&d| crate::tensor::dim::is_sym(d)) {
        return Ok(None);
    }
    pieces.sort_by_key(|&(before, _)| before);
    let start = pieces[0].0 as usize;
    let mut end = start;
    for &(before, x) in &pieces {
        let len = g.node(x).shape[ax];
        if before as usize != end {
            return Ok(None); // overlapping or with a gap
        }
        end += len;
    }
    let zero = (dtype != DType::I64).then(|| scalar_const(g, dtype, 0.0, n));
    let mut parts = Vec::with_capacity(pieces.len());
    for &(_, x) in &pieces {
        parts.push(match zero {
            Some(z) => add_unique(g, Op::Binary(Binary::Add), &[x, z], None, n)?,
            None => x,
        });
    }
    let joined = add_unique(g, Op::Concat { axis }, &parts, None, n)?;
    if start == 0 && end == shape[ax] {
        return Ok(Some(joined));
    }
    let pad = Op::Pad {
        axis,
        before: start as u32,
        after: (shape[ax] - end) as u32,
    };
    add_unique(g, pad, &[joined], None, n).map(Some)
}
