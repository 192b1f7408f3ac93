//! `fold_constants`: evaluates nodes whose operands are all constants.
//!
//! Algorithm: one sweep in canonical (topological) order; a node whose operands are all
//! `const` (including ones folded earlier in the sweep) is evaluated with its op's own
//! kernel ([`Op::eval`], the one the interpreter runs, so folding cannot disagree with
//! running) and replaced by a `const` holding the result. One sweep reaches the fixpoint.
//!
//! It does not fold: results over [`FOLD_MAX_ELEMS`] elements (a big constant costs
//! memory in every copy of the graph); `broadcast` (it only makes a bigger copy of a
//! smaller constant, which fusion reads through a zero stride instead); `fused` nodes;
//! sources and `assign`; collectives (`all_reduce`: the value depends on the other
//! ranks); nodes whose kernel fails (an index out of range stays a
//! run-time error, reported where it happens).

use crate::error::Result;
use crate::ir::{Graph, Node};
use crate::ops::Op;
use crate::tensor::{numel, Data};

/// Largest result (in elements) that is folded.
pub const FOLD_MAX_ELEMS: usize = 4096;

/// Replaces constant subexpressions by their values; returns whether it folded any.
pub fn fold_constants(g: &mut Graph) -> Result<bool> {
    let mut changed = false;
    for n in g.canonical_order() {
        let node = g.node(n);
        let foldable = !matches!(
            node.op,
            Op::Input(_)
                | Op::Const
                | Op::ReadVar(_)
                | Op::Assign(_)
                | Op::Fused(_)
                | Op::BroadcastTo
                | Op::Cond(_)
                | Op::While(_)
                | Op::Scan(_)
                | Op::Get(_)
        ) && !node.op.is_collective()
            && numel(&node.shape) <= FOLD_MAX_ELEMS;
        let operands = g.operands(n);
        if !foldable || !operands.iter().all(|&o| g.node(o).op == Op::Const) {
            continue;
        }
        let args: Vec<&Data> = operands
            .iter()
            .map(|&o| g.node(o).value.as_ref().expect("verified const"))
            .collect();
        let Ok(value) = node.op.eval(&args, &node.shape) else {
            continue;
        };
        let mut c = Node::new(Op::Const, node.dtype, node.shape.clone());
        c.loc = node.loc;
        c.value = Some(value.into_standard());
        let c = g.add(c, &[]);
        g.replace_uses(n, c);
        g.remove(n);
        changed = true;
    }
    Ok(changed)
}
