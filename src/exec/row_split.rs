//! Row-separable scan bodies: a loop body whose every per-step value keeps the batch
//! as its leading axis and never mixes rows (a recurrent cell's forward step: `h·U`,
//! gate slices, activations) computes each batch row from the same rows of its carries
//! and scanned slices alone. Such a scan runs as two scans over the two halves of the
//! batch at once, one per worker, with no synchronisation inside the loop
//! ([`super::control`]); this module finds such bodies and makes the body's graph for
//! half the batch.
//!
//! **Same bits.** Every op of such a body computes a row from the same values in the
//! same order whatever the number of rows: elementwise ops element by element,
//! reductions over non-batch axes one sequential fold per row, and the GEMM backend's
//! per-element sum over `k` does not depend on `m` for `m ≥ 2` where
//! [`row_blocks_keep_bits`] says so (`k` of one block, halves of more than 64 rows
//! or columns, or a whole of at most 64 rows and columns; `tests/kernels.rs` checks row
//! blocks against the whole product), so the halves give the bits of the whole batch —
//! and the eager ops. Each half has at least [`MIN_HALF_ROWS`] rows.
//!
//! **Which ops.** Per-step values carry the batch on axis 0 (the carries, and the
//! scanned operands' slices). An op of such a value keeps rows apart when it is
//! elementwise (its other operands broadcast along the batch), a `matmul` with the
//! batched value on the left whose halves keep the bits ([`row_blocks_keep_bits`]), and
//! an invariant matrix on the right (neither transposed:
//! a transposed right side may be copied first or not depending on the product's size,
//! which changes the backend's path), a
//! slice, concat or pad along another axis, a reshape or transpose that keeps axis 0,
//! a reduction over other axes, or a fused region made of these. Anything else (a sum
//! over the batch, `matmul` with the batch as the contracted axis, nested control flow,
//! gathers, convolutions) makes the body not separable. Each op's result type for half
//! the batch is inferred again by the op's own rules, which also rejects an invariant
//! operand that has the batch's length on axis 0 without being split.

use super::kernels::gemm::row_blocks_keep_bits;
use crate::ir::{Arg, FusedExpr, Graph};
use crate::ops::Op;
use crate::tensor::{DType, Shape};

/// The fewest rows each half gets: below it the halves are too small to pay.
pub(crate) const MIN_HALF_ROWS: usize = 8;

/// The body `g` of a scan (its first `batched` inputs are the per-step ones: carries
/// and scanned slices) made for half its batch, and the batch, when the body is
/// row-separable (see the module docs), the batch is even and each half has at least
/// [`MIN_HALF_ROWS`] rows; `None` otherwise.
pub(crate) fn half_batch(g: &Graph, batched: usize) -> Option<(Graph, usize)> {
    let first = *g.inputs.first()?;
    let rows = *g.node(first).shape.first()?;
    if rows % 2 != 0 || rows / 2 < MIN_HALF_ROWS {
        return None;
    }
    let mut h = g.clone();
    let mut is_batched = vec![false; g.capacity()];
    for &i in g.inputs.get(..batched)? {
        if g.node(i).shape.first() != Some(&rows) {
            return None;
        }
        is_batched[i.index()] = true;
        h.node_mut(i).shape[0] = rows / 2;
    }
    for n in g.canonical_order() {
        let node = g.node(n);
        let ops = g.operands(n);
        let which: Vec<bool> = ops.iter().map(|o| is_batched[o.index()]).collect();
        if matches!(node.op, Op::Input(_)) || !which.contains(&true) {
            continue;
        }
        let shape = halved(&node.shape, rows)?;
        let types: Vec<(DType, &[usize])> = ops
            .iter()
            .map(|&o| (h.node(o).dtype, &h.node(o).shape[..]))
            .collect();
        let inferred = match node.op {
            Op::Fused(k) => {
                let shapes: Vec<&[usize]> = ops.iter().map(|&o| &g.node(o).shape[..]).collect();
                let expr = half_expr(&g.fused[k as usize], &which, &shapes, rows)?;
                let t = expr.infer(&types).ok()?;
                h.fused.push(expr);
                h.node_mut(n).op = Op::Fused(h.fused.len() as u32 - 1);
                t
            }
            op => {
                let shapes: Vec<&[usize]> = ops.iter().map(|&o| &g.node(o).shape[..]).collect();
                if !keeps_rows(op, &which, &shapes, node.shape.len()) {
                    return None;
                }
                op.infer(&types, Some(&shape)).ok()?
            }
        };
        if inferred != (node.dtype, shape.clone()) {
            return None;
        }
        h.node_mut(n).shape = shape;
        is_batched[n.index()] = true;
    }
    g.outputs
        .iter()
        .all(|o| is_batched[o.index()])
        .then_some((h, rows))
}

/// `shape` with its leading `rows` halved; `None` when it does not lead with `rows`.
fn halved(shape: &[usize], rows: usize) -> Option<Shape> {
    if shape.first() != Some(&rows) {
        return None;
    }
    let mut s = Shape::from_slice(shape);
    s[0] = rows / 2;
    Some(s)
}

/// Whether `op`, whose operands `which` carry the batch on axis 0 (operand shapes
/// `shapes`, result rank `rank`), computes each result row from the same rows alone.
fn keeps_rows(op: Op, which: &[bool], shapes: &[&[usize]], rank: usize) -> bool {
    match op {
        Op::Unary(_)
        | Op::Binary(_)
        | Op::Compare(_)
        | Op::Select
        | Op::Cast(_)
        | Op::StopGradient => true,
        // not `tb`: whether the backend copies a transposed `b` first depends on the
        // product's size, and the copy changes its path (and bits)
        // and halves whose sums over `k` are the whole product's
        Op::MatMul { ta, tb } => {
            let Some((&rows, &k)) = shapes.first().and_then(|s| s.first().zip(s.last())) else {
                return false;
            };
            let n = shapes.get(1).and_then(|s| s.last()).copied().unwrap_or(0);
            which == [true, false] && !ta && !tb && row_blocks_keep_bits(rows, rows / 2, k, n)
        }
        Op::Sum { axes, .. } | Op::Max { axes, .. } => !axes.contains(0),
        Op::ArgMax { axis } => axis != 0,
        Op::Concat { axis } | Op::Slice { axis, .. } | Op::Pad { axis, .. } => axis != 0,
        Op::Transpose(p) => p.to_vec().first() == Some(&0),
        // the leading length stays the batch's (checked by the caller), so rows stay whole
        Op::Reshape => true,
        Op::BroadcastTo => shapes.first().map(|s| s.len()) == Some(rank),
        _ => false,
    }
}

/// `e` for operands (of shapes `param_shapes`) of which `which` carry the batch: each
/// instruction that reads a batched value gets its shape with the batch halved. `None`
/// when an instruction would mix rows.
fn half_expr(
    e: &FusedExpr,
    which: &[bool],
    param_shapes: &[&[usize]],
    rows: usize,
) -> Option<FusedExpr> {
    let mut out = e.clone();
    let mut batched = vec![false; e.insts.len()];
    for (k, inst) in e.insts.iter().enumerate() {
        let args: Vec<bool> = inst
            .args
            .iter()
            .map(|a| match *a {
                Arg::Param(p) => which[p as usize],
                Arg::Inst(j) => batched[j as usize],
            })
            .collect();
        if !args.contains(&true) {
            continue;
        }
        let shapes: Vec<&[usize]> = inst
            .args
            .iter()
            .map(|a| match *a {
                Arg::Param(p) => param_shapes[p as usize],
                Arg::Inst(j) => &e.insts[j as usize].shape[..],
            })
            .collect();
        if !keeps_rows(inst.op, &args, &shapes, inst.shape.len()) {
            return None;
        }
        out.insts[k].shape = halved(&inst.shape, rows)?;
        batched[k] = true;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::kernels::gemm::ONE_BLOCK_MAX_K;
    use crate::ir::parse;

    /// The half-batch body of `text` (two per-step inputs), as text.
    fn half(text: &str) -> Option<String> {
        let g = parse(text).unwrap();
        half_batch(&g, 2).map(|(h, rows)| {
            assert_eq!(rows, 16);
            crate::ir::verify(&h).unwrap();
            crate::ir::print(&h, false)
        })
    }

    /// A product over more than one block of `k` is cut differently for 128 rows than
    /// for 64 (found: 7575 of 8192 elements of a 128x784x64 product differ from its two
    /// halves'), so a body with one does not split — unless its halves have more than 64
    /// rows.
    #[test]
    fn a_product_over_more_than_one_block_of_k_splits_only_into_halves_that_keep_its_bits() {
        let body = |k: usize| {
            format!(
                "graph(%0: f32[128,{k}], %1: f32[128,64], %2: f32[{k},64]) {{
  %3 = matmul %0, %2 : f32[128,64]
  %4 = add %3, %1 : f32[128,64]
  return %4
}}"
            )
        };
        let split = |k: usize| half_batch(&parse(&body(k)).unwrap(), 2).is_some();
        assert!(split(ONE_BLOCK_MAX_K));
        assert!(!split(ONE_BLOCK_MAX_K + 1));
        // halves of more than 64 rows keep the bits of a longer k
        let wide = body(ONE_BLOCK_MAX_K + 1).replace("128,", "130,");
        assert!(half_batch(&parse(&wide).unwrap(), 2).is_some());
    }

    #[test]
    fn a_cell_step_is_split_and_ops_that_mix_rows_are_not() {
        let cell = "graph(%0: f32[16,4], %1: f32[16,8], %2: f32[4,8]) {
  %3 = matmul %0, %2 : f32[16,8]
  %4 = add %3, %1 : f32[16,8]
  %5 = slice[axis=1, start=0, end=4] %4 : f32[16,4]
  %6 = tanh %5 : f32[16,4]
  %7 = sum[axes=[1], keep=true] %6 : f32[16,1]
  %8 = mul %6, %7 : f32[16,4]
  return %8, %6
}";
        let h = half(cell).expect("row-separable");
        assert!(h.contains("%3 = matmul %0, %2 : f32[8,8]"), "{h}");
        assert!(
            h.contains("%7 = sum[axes=[1], keep=true] %6 : f32[8,1]"),
            "{h}"
        );
        // a sum over the batch, the batch as the contracted axis, a capture with the
        // batch's length, a concat along the batch: rows mix
        for mixing in [
            "%3 = sum[axes=[0], keep=true] %0 : f32[1,4]
  %4 = add %0, %3 : f32[16,4]
  return %4",
            "%3 = matmul[ta=true] %0, %1 : f32[4,8]
  %4 = matmul %0, %3 : f32[16,8]
  return %4",
            "%3 = add %0, %2 : f32[16,4]
  return %3",
            "%3 = concat[axis=0] %0, %0 : f32[32,4]
  %4 = slice[axis=0, start=0, end=16] %3 : f32[16,4]
  return %4",
        ] {
            let text =
                format!("graph(%0: f32[16,4], %1: f32[16,8], %2: f32[16,4]) {{\n  {mixing}\n}}");
            assert_eq!(half(&text), None, "{text}");
        }
        // an odd batch, or halves below MIN_HALF_ROWS rows
        for rows in [15, 2 * MIN_HALF_ROWS - 2] {
            let text = format!("graph(%0: f32[{rows},4], %1: f32[{rows},4]) {{\n  %2 = add %0, %1 : f32[{rows},4]\n  return %2\n}}");
            assert!(half_batch(&parse(&text).unwrap(), 2).is_none(), "{text}");
        }
    }
}
