//! The IR: a dataflow [`Graph`] of ops, its verifier, and its text and DOT forms.
mod fused;
mod graph;
mod parse;
mod print;
mod region;
mod verify;

pub use fused::{Arg, FusedExpr, Inst};
pub use graph::{Graph, GraphVar, Node, NodeId};
pub use parse::{parse, parse_type, parse_with_constants};
pub use print::{const_text, print, print_with_constants, to_dot, MAX_CONST_ELEMS};
pub use region::{Region, RegionKind};
pub use verify::verify;
