//! Regions: the sub-graphs owned by control-flow ops.
//!
//! A control-flow node (`cond`, `while`, `scan`; see [`crate::ops::control`]) names an
//! entry of its graph's region table, `graph.regions[n]`, the way `fused` names
//! `graph.fused[n]`. A region holds one or two bodies, each an ordinary [`Graph`] whose
//! inputs are the body's arguments and whose outputs are its results (bodies may own
//! regions in turn), plus the types of the op's results. The control-flow node is a
//! tuple: its results are read by `get[index=i]` nodes.
//!
//! Signatures (checked by [`crate::ir::verify`]), with `c` carries, `x` scanned
//! operands and `k` captures (outer values the bodies read: they are the op's last
//! operands and the bodies' last arguments, in the same order):
//! - `cond`: operands `(pred, captures)`; bodies `[then, else]`, each
//!   `(captures) -> results`, the same result types for both;
//! - `while`: operands `(init, captures)`; bodies `[cond, body]`: `cond(carries,
//!   captures) -> one element`, `body(carries, captures) -> carries`; results: the
//!   final carries, then the trip count `i64[]` (what reverse mode needs to run the
//!   loop backwards);
//! - `scan`: operands `(init, xs, captures)`, every `xs` of one leading length `n`;
//!   body `(carries, x_t, captures) -> (carries, y_t)`; results: the final carries, then
//!   each `y` stacked on a new leading axis of length `n`. With `reverse`, `t` runs from
//!   `n-1` down to `0` (`ys[t]` is still step `t`'s output).
//!
//! Bodies never hold `read_var` or `assign` nodes; variables still work inside them
//! (`control/traced.rs` rewrites them while tracing, with the semantics of resource
//! variables in `tf.while_loop`):
//! - a variable only read in a body is a capture: the outer graph reads it once;
//! - a variable assigned in a `while` or `scan` body is an extra carry after the user's
//!   (its initial value read by the outer graph before the op, the body's result its
//!   last assigned value, so every iteration sees the previous one's assignment and
//!   reads after an assign in the same body see the new value), and the outer graph
//!   assigns the final carry after the op;
//! - a variable assigned in a `cond` branch is an extra result after the user's, the
//!   other branch passing the old value (its capture) through; the outer graph assigns
//!   it after the op.
//!
//! Inside a body that is itself nested in a body, "the outer graph" is that enclosing
//! body, which in turn carries the variable out. A `while` condition may read but not
//! assign variables.

use super::graph::Graph;
use crate::tensor::{DType, Shape};

/// Which control-flow op a region belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionKind {
    /// `cond`: bodies `[then, else]`.
    Cond,
    /// `while`: bodies `[cond, body]`.
    While,
    /// `scan`: body `[body]`, walking the scanned axis backwards when `reverse`.
    Scan {
        /// From the last step to the first.
        reverse: bool,
    },
}

/// The sub-graphs and signature of one control-flow op.
///
/// With `c` carries, `x` scanned operands and `k` captures (the op's last operands and
/// the bodies' last arguments): `cond` takes `(pred, captures)`, its bodies `[then,
/// else]` map the captures to the results; `while` takes `(init, captures)`, its bodies
/// `[cond, body]` map `(carries, captures)` to one element and to the carries, and its
/// results are the final carries then the trip count `i64[]`; `scan` takes `(init, xs,
/// captures)`, its body maps `(carries, x_t, captures)` to `(carries, y_t)` (then the
/// carry arguments again when `saved`), and its results are the final carries, each `y`
/// stacked on a new leading axis (then the stacked per-step carries when `saved`).
#[derive(Clone, Debug)]
pub struct Region {
    /// Which op.
    pub kind: RegionKind,
    /// The bodies (see [`RegionKind`]).
    pub bodies: Vec<Graph>,
    /// Number of loop carries (`while`, `scan`; 0 for `cond`).
    pub carries: usize,
    /// Number of scanned operands (`scan`; 0 otherwise).
    pub xs: usize,
    /// `scan`: the body's last `carries` outputs are its carry arguments, so the results
    /// end with the carry entering each step, stacked (what reverse mode reads).
    pub saved: bool,
    /// The result types, in `get` index order.
    pub results: Vec<(DType, Shape)>,
}

impl Region {
    /// Number of captures, given the op's operand count.
    pub fn captures(&self, operands: usize) -> usize {
        let fixed = match self.kind {
            RegionKind::Cond => 1,
            RegionKind::While => self.carries,
            RegionKind::Scan { .. } => self.carries.saturating_add(self.xs),
        };
        operands.saturating_sub(fixed)
    }

    /// The names of the bodies, as printed: `then`/`else`, `cond`/`body`, `body`.
    pub fn body_names(&self) -> &'static [&'static str] {
        match self.kind {
            RegionKind::Cond => &["then", "else"],
            RegionKind::While => &["cond", "body"],
            RegionKind::Scan { .. } => &["body"],
        }
    }
}
