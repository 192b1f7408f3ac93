//! `eliminate_common_subexpressions`: merges nodes that compute the same value.
//!
//! Algorithm: hash-consing in one sweep over the canonical (topological) order. A
//! node's [`Key`](super::rewrite::Key) is its op, its operands (already merged, since
//! operands come first; sorted for ops that are bit-for-bit commutative), its type, a
//! constant's value bits, a fused node's expression and a control-flow node's region
//! (its [`region_text`](super::rewrite::region_text): two loops with the same bodies over
//! the same operands merge, and then so do their `get`s). The first node with a key
//! stays; later ones have their uses pointed at it. One sweep reaches the fixpoint.
//!
//! It does not merge `assign`s, inputs (never equal by construction) or control-flow
//! nodes whose bodies assign variables, does not treat
//! `0.0` and `-0.0` (or two NaN payloads) as the same constant, does not sort the
//! operands of `maximum`/`minimum` (they are not bitwise commutative on ±0), and does
//! not reorder operands in the graph itself (only the key is canonical).

use super::rewrite::{key, Key};
use crate::error::Result;
use crate::ir::{Graph, NodeId};
use std::collections::HashMap;

/// Points every use of a duplicate node at the first node with the same key; returns
/// whether it merged any.
pub fn eliminate_common_subexpressions(g: &mut Graph) -> Result<bool> {
    let mut changed = false;
    let order = g.canonical_order();
    let mut seen: HashMap<Key, NodeId> = HashMap::with_capacity(order.len());
    for n in order {
        let Some(k) = key(g, n) else { continue };
        match seen.get(&k) {
            Some(&first) => {
                g.replace_uses(n, first);
                g.remove(n);
                changed = true;
            }
            None => {
                seen.insert(k, n);
            }
        }
    }
    Ok(changed)
}
