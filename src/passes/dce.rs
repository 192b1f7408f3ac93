//! `eliminate_dead_nodes`: removes nodes no output or assign depends on.
//!
//! Roots are the outputs and the `assign` nodes (a variable update is never dead).
//! Inputs are kept even when unused, so the signature does not change. The fused
//! expression table is compacted to the live `fused` nodes, numbered in canonical order.
//! One sweep; nothing to iterate. It does not remove nodes that are live but useless
//! (e.g. `x * 1`: that is `simplify`).

use crate::error::Result;
use crate::ir::Graph;
use crate::ops::Op;

/// Removes every node not reachable from the roots (inputs stay); returns whether it
/// removed a node or a fused expression.
pub fn eliminate_dead_nodes(g: &mut Graph) -> Result<bool> {
    let mut changed = false;
    let order = g.canonical_order();
    let mut live = vec![false; g.capacity()];
    for &n in &order {
        live[n.index()] = true;
    }
    for n in g.node_ids() {
        if !live[n.index()] {
            g.remove(n);
            changed = true;
        }
    }
    let mut table = Vec::new();
    for n in order {
        if let Op::Fused(f) = g.node(n).op {
            table.push(g.fused[f as usize].clone());
            g.node_mut(n).op = Op::Fused(table.len() as u32 - 1);
        }
    }
    // renumbering alone is not a change: the text (and every result) stays the same
    changed |= table.len() != g.fused.len();
    g.fused = table;
    Ok(changed)
}
