//! Control-flow ops: `cond`, `while`, `scan` and the projection `get`.
//!
//! A control-flow op owns sub-graphs (regions) kept in its graph's region table
//! ([`crate::ir::Region`]; `Op::Scan(n)` runs `graph.regions[n]`, like `Op::Fused(n)`
//! runs `graph.fused[n]`). It has several results, so its node is a *tuple*: it has no
//! tensor type of its own (its node carries the placeholder type `i64[0]`) and its
//! results are read by `get[index=i]` nodes, each typed as result `i` of the region.
//! Both kinds are typed by their graph, not by the op alone, so [`Op::infer`] and
//! [`Op::eval`] defer to the graph (verifier, interpreter), as for `fused`.
//!
//! They have no VJP rule here: the control-flow API ([`crate::control`]) records them on
//! gradient tapes with a VJP written with the control-flow API itself.

use super::Op;
use crate::tensor::{DType, Shape};

/// The placeholder type of a tuple node (a control-flow op): `i64[0]`.
pub fn tuple_type() -> (DType, Shape) {
    (DType::I64, Shape::from_slice(&[0]))
}

pub(super) fn name(op: &Op) -> &'static str {
    match op {
        Op::Cond(_) => "cond",
        Op::While(_) => "while",
        Op::Scan(_) => "scan",
        _ => "get",
    }
}

pub(super) fn infer(op: &Op) -> Result<(DType, Shape), String> {
    Err(format!(
        "`{}` is typed by its graph's region table, not by the op alone",
        name(op)
    ))
}

pub(super) fn attrs(op: &Op) -> Vec<(&'static str, String)> {
    match op {
        Op::Get(i) => vec![("index", i.to_string())],
        _ => Vec::new(),
    }
}

pub(super) fn parse(name: &str, attrs: &super::attrs::AttrMap) -> Option<Result<Op, String>> {
    match name {
        "get" => Some(super::attrs::get_u32(attrs, "index").map(Op::Get)),
        _ => None,
    }
}
