//! `eliminate_dead_nodes`: removes nodes no output or assign depends on.
//!
//! Roots are the outputs and the `assign` nodes (a variable update is never dead).
//! Inputs are kept even when unused, so the signature does not change.

use crate::error::Result;
use crate::ir::Graph;

/// Removes every node not reachable from the roots (inputs stay).
pub fn eliminate_dead_nodes(g: &mut Graph) -> Result<()> {
    let mut live = vec![false; g.capacity()];
    for n in g.canonical_order() {
        live[n.index()] = true;
    }
    for n in g.node_ids() {
        if !live[n.index()] {
            g.remove(n);
        }
    }
    Ok(())
}
