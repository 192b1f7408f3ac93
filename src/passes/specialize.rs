//! Binding the symbols of a shape-polymorphic graph: every symbolic dimension becomes
//! its value, every `dim_value` node a constant, and every `range` gets its length.
//!
//! A compiled function whose signature has symbolic dimensions is traced,
//! differentiated and optimized once on symbols. When it runs with a binding it has not
//! seen (a new batch size), the traced graph is specialized to that binding here and
//! the pipeline runs on the result, so each batch size gets exactly the graph,
//! fusion decisions and memory plan a trace at that size would give — without tracing
//! or differentiating again.

use crate::error::{Error, Result};
use crate::ir::{verify, Graph};
use crate::ops::Op;
use crate::tensor::{dim, Data, Shape};

/// Values of symbols: `(symbol id, value)` pairs (see [`crate::tensor::dim`]).
pub type Bindings = [(u32, usize)];

fn bound(b: &Bindings) -> impl Fn(u32) -> Option<usize> + '_ {
    move |s| b.iter().find(|(t, _)| *t == s).map(|&(_, v)| v)
}

/// The shape with its symbols bound.
///
/// # Errors
/// A symbol without a value, or a result over `MAX_ELEMENTS`.
pub fn bind_shape(shape: &[usize], b: &Bindings) -> Result<Shape> {
    let f = bound(b);
    let out: Shape = shape
        .iter()
        .map(|&d| dim::eval(d, &f))
        .collect::<std::result::Result<_, _>>()
        .map_err(Error::Graph)?;
    crate::tensor::check_shape(&out).map_err(|e| {
        Error::Graph(format!(
            "{} with {}: {e}",
            crate::tensor::shape_str(shape),
            show_bindings(b)
        ))
    })?;
    Ok(out)
}

/// `b=32, c=7`.
pub fn show_bindings(b: &Bindings) -> String {
    let parts: Vec<String> = b
        .iter()
        .map(|&(s, v)| format!("{}={v}", dim::symbol_name(s)))
        .collect();
    parts.join(", ")
}

/// A copy of `g` with every symbol bound: node, variable and fused-instruction shapes
/// become concrete and `dim_value` nodes become constants. The result is verified.
///
/// # Errors
/// A symbol of the graph without a value in `b`, a shape that exceeds
/// `MAX_ELEMENTS` once bound, or a graph that does not verify with these values.
pub fn specialize(g: &Graph, b: &Bindings) -> Result<Graph> {
    let mut out = g.clone();
    bind_graph(&mut out, b)?;
    verify(&out).map_err(|e| Error::Graph(format!("with {}: {e}", show_bindings(b))))?;
    Ok(out)
}

/// Binds the symbols of `out` in place, inside control-flow regions too.
fn bind_graph(out: &mut Graph, b: &Bindings) -> Result<()> {
    for id in out.node_ids() {
        let shape = bind_shape(&out.node(id).shape, b)?;
        let node = out.node_mut(id);
        node.shape = shape;
        match node.op {
            Op::DimValue { dim: d, dtype } => {
                let v = dim::eval(d, &bound(b)).map_err(Error::Graph)?;
                node.op = Op::Const;
                node.value = Some(Data::full(dtype, &[], v as f64));
            }
            Op::Range { dtype, .. } => {
                node.op = Op::Range {
                    len: node.shape[0],
                    dtype,
                }
            }
            _ => {}
        }
    }
    for v in &mut out.vars {
        v.shape = bind_shape(&v.shape, b)?;
    }
    for e in &mut out.fused {
        for inst in &mut e.insts {
            inst.shape = bind_shape(&inst.shape, b)?;
        }
    }
    for r in &mut out.regions {
        for (_, s) in &mut r.results {
            *s = bind_shape(s, b)?;
        }
        for body in &mut r.bodies {
            bind_graph(body, b)?;
        }
    }
    Ok(())
}
