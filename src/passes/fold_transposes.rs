//! `fold_transposes_into_matmul`: `matmul(transpose(a), b)` → `matmul[ta](a, b)`.
//!
//! Algorithm: one sweep over the `matmul` nodes in canonical order; an operand that is
//! a `transpose` swapping exactly the last two axes (identity on batch axes) is
//! replaced by the transpose's input and the operand's transpose flag flips, so the
//! GEMM reads the operand through transposed strides instead of a copy. The transpose
//! itself is left to dead-node elimination when it has no other users. One sweep
//! reaches the fixpoint (`simplify` composes stacked transposes first).
//!
//! Exactness: this is the one pass that is not bit-exact. The products and the values
//! are the same, but the `gemm` backend picks its summation order by layout for small
//! products (about 32 or less per side), so a folded matmul may differ from the
//! unfolded one in the last bits, within the rounding bound of a dot product
//! (`2·k·ε·Σ|aᵢbᵢ|`; `tests/passes_property.rs` checks it). Autodiff never emits these
//! transposes (matmul's VJP uses the flags), so they come only from user code.
//!
//! It does not fold other permutations, or a transpose of the matmul's result
//! (`(AB)ᵀ = BᵀAᵀ`).

use super::rewrite::{add_unique, replace};
use crate::error::Result;
use crate::ir::{Graph, NodeId};
use crate::ops::Op;

/// The input of `t` if `t` transposes exactly the last two axes.
fn swapped_input(g: &Graph, t: NodeId) -> Option<NodeId> {
    let Op::Transpose(p) = g.node(t).op else {
        return None;
    };
    let r = p.rank as usize;
    let v = p.to_vec();
    let swaps_last_two =
        r >= 2 && v[r - 2] == r - 1 && v[r - 1] == r - 2 && (0..r - 2).all(|i| v[i] == i);
    swaps_last_two.then(|| g.operands(t)[0])
}

/// Folds last-two-axes transposes of matmul operands into the matmul's flags; returns
/// whether it folded any.
pub fn fold_transposes_into_matmul(g: &mut Graph) -> Result<bool> {
    let mut changed = false;
    for n in g.canonical_order() {
        if !g.contains(n) {
            continue;
        }
        let Op::MatMul { ta, tb } = g.node(n).op else {
            continue;
        };
        let ops = g.operands(n);
        let (a, b) = (swapped_input(g, ops[0]), swapped_input(g, ops[1]));
        if a.is_none() && b.is_none() {
            continue;
        }
        let op = Op::MatMul {
            ta: ta ^ a.is_some(),
            tb: tb ^ b.is_some(),
        };
        let new = add_unique(g, op, &[a.unwrap_or(ops[0]), b.unwrap_or(ops[1])], None, n)?;
        replace(g, n, new);
        g.remove(n);
        changed = true;
    }
    Ok(changed)
}
