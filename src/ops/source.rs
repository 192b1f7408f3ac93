//! Source and sink ops: graph inputs, constants, variable reads and assignments.
//!
//! They have no kernel: the interpreter supplies inputs, constants (stored on the node)
//! and variable values, and applies `assign`s after the graph has run. Their types are
//! set when the builder creates them.

use super::{arity, Op};
use crate::tensor::{DType, Shape};

pub(super) fn name(op: &Op) -> &'static str {
    match op {
        Op::Input(_) => "input",
        Op::Const => "const",
        Op::ReadVar(_) => "read_var",
        _ => "assign",
    }
}

pub(super) fn infer(op: &Op, x: &[(DType, &[usize])]) -> Result<(DType, Shape), String> {
    match op {
        Op::Assign(_) => {
            arity(x, 1)?;
            Ok((x[0].0, Shape::from_slice(x[0].1)))
        }
        _ => Err(format!(
            "`{}` gets its type from the graph builder, not from operands",
            name(op)
        )),
    }
}

/// Scheduling cost: none (the interpreter supplies the value; `assign` aliases it).
pub(super) fn work(_op: &Op, _x: &[&[usize]], _out: &[usize]) -> u64 {
    0
}
