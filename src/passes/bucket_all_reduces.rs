//! `bucket_all_reduces`: packs small all-reduces into buckets (Horovod's tensor fusion).
//!
//! Every collective costs a fixed latency (a few microseconds on shared memory, tens
//! over a network) whatever its size, so the many small gradients of a model (biases,
//! small layers) are cheaper reduced together. The pass rewrites a bucket of
//! `all_reduce[op]` nodes of one dtype and op into
//! `reshape` each operand to one axis → `concat` → one `all_reduce[op]` → `slice` each
//! member's range → `reshape` back, and points each member's users at its slice. The
//! values are bit-identical: an all-reduce is elementwise.
//!
//! Algorithm: one sweep over the all-reduce nodes in canonical order (the order the
//! interpreter starts them in, so members of a bucket become ready about together),
//! filling one open bucket per (op, dtype, level) until the next member would exceed
//! the byte limit; a bucket of one stays as it is. The *level* of an all-reduce is the
//! number of all-reduces on the longest path into its operand: nodes of one level never
//! depend on each other, so a bucket never makes a cycle. The result depends only on
//! the graph, so every rank builds the same buckets.
//!
//! It does not pack: all-reduces at least as big as the limit; operands with symbolic
//! dimensions (their byte size is unknown until bound); an all-reduce of a `concat`
//! (taken for a bucket already, which keeps the pass idempotent).

use super::rewrite::{add_unique, replace};
use crate::error::Result;
use crate::ir::{Graph, NodeId};
use crate::ops::{Op, ReduceOp};
use crate::tensor::{dim, numel, DType};
use std::collections::BTreeMap;

/// The bucket size [`crate::passes::PassConfig`] uses unless told otherwise: 1 MiB. The
/// big weight gradients of a model (W3's 784×1024 and 1024×1024) are reduced alone as
/// soon as they are ready, and the small ones share a message.
pub const DEFAULT_BUCKET_BYTES: usize = 1 << 20;

/// Packs all-reduces of less than `bucket_bytes` bytes into buckets of at most that
/// many bytes; returns whether it packed any.
pub fn bucket_all_reduces(g: &mut Graph, bucket_bytes: usize) -> Result<bool> {
    let order = g.canonical_order();
    if !order.iter().any(|&n| g.node(n).op.is_collective()) {
        return Ok(false);
    }
    // bytes ≥ elements, so a bucket's element count stays below 2^32 (slice offsets are u32)
    let bucket_bytes = bucket_bytes.min(crate::tensor::MAX_ELEMENTS);
    let mut level = vec![0usize; g.capacity()];
    type Group = (ReduceOp, DType, usize);
    let mut open: BTreeMap<Group, (Vec<NodeId>, usize)> = BTreeMap::new();
    let mut buckets: Vec<Vec<NodeId>> = Vec::new();
    for &n in &order {
        let operands = g.operands(n);
        level[n.index()] = operands
            .iter()
            .map(|o| level[o.index()] + g.node(*o).op.is_collective() as usize)
            .max()
            .unwrap_or(0);
        let node = g.node(n);
        let Op::AllReduce(op) = node.op else { continue };
        let bytes = numel(&node.shape).saturating_mul(node.dtype.size());
        let packable = !dim::any_sym(&node.shape)
            && bytes < bucket_bytes
            && g.node(operands[0]).op != (Op::Concat { axis: 0 });
        if !packable {
            continue;
        }
        let (members, used) = open
            .entry((op, node.dtype, level[n.index()]))
            .or_insert_with(|| (Vec::new(), 0));
        if *used + bytes > bucket_bytes {
            buckets.push(std::mem::take(members));
            *used = 0;
        }
        members.push(n);
        *used += bytes;
    }
    buckets.extend(open.into_values().map(|(m, _)| m));
    let mut changed = false;
    for b in buckets.iter().filter(|b| b.len() > 1) {
        pack(g, b)?;
        changed = true;
    }
    Ok(changed)
}

/// Rewrites the all-reduces `members` (one op and dtype) as one all-reduce of their
/// concatenation.
fn pack(g: &mut Graph, members: &[NodeId]) -> Result<()> {
    let Op::AllReduce(op) = g.node(members[0]).op else {
        unreachable!("buckets hold all-reduces")
    };
    let mut flat = Vec::with_capacity(members.len());
    let mut ranges = Vec::with_capacity(members.len());
    let mut total = 0usize;
    for &m in members {
        let x = g.operands(m)[0];
        let len = numel(&g.node(m).shape);
        flat.push(match g.node(m).shape.len() {
            1 => x,
            _ => add_unique(g, Op::Reshape, &[x], Some(&[len]), m)?,
        });
        ranges.push((total, total + len));
        total += len;
    }
    let cat = add_unique(g, Op::Concat { axis: 0 }, &flat, None, members[0])?;
    let reduced = add_unique(g, Op::AllReduce(op), &[cat], None, members[0])?;
    for (&m, &(start, end)) in members.iter().zip(&ranges) {
        // below the byte limit, so below 2^32 elements (see `bucket_all_reduces`)
        let (start, end) = (start as u32, end as u32);
        let slice = add_unique(
            g,
            Op::Slice {
                axis: 0,
                start,
                end,
            },
            &[reduced],
            None,
            m,
        )?;
        let shape = g.node(m).shape.clone();
        let back = match shape.len() {
            1 => slice,
            _ => add_unique(g, Op::Reshape, &[slice], Some(&shape), m)?,
        };
        replace(g, m, back);
        g.remove(m);
    }
    Ok(())
}
