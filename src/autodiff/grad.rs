//! `grad`: reverse mode as a graph-to-graph transform.
//!
//! The nodes of the graph become the entries of the same driver the tapes use, and the
//! VJP rules add the backward nodes to the graph itself. The result is an ordinary
//! graph — it can be printed, optimized, run, and differentiated again (order n is n
//! applications). Custom gradients live on tapes, not in graphs, so this transform
//! does not see them.

use super::backward::{backward, Entry, EntryOp};
use crate::error::{Error, Result};
use crate::ir::{Graph, NodeId};
use crate::ops::Op;
use crate::trace::context;
use std::collections::HashMap;

/// Adds to `graph` the gradient of `Σ ys` (each target summed, as TF does) with respect
/// to each of `xs`; returns the graph and one gradient node per source (`None` where
/// nothing flows).
pub fn grad(graph: Graph, ys: &[NodeId], xs: &[NodeId]) -> Result<(Graph, Vec<Option<NodeId>>)> {
    let order = graph.canonical_order();
    let (g, res) = context::with_graph(graph, |_| -> Result<Vec<Option<NodeId>>> {
        let tensors = context::tensors_of(&order);
        let of: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        let mut entries = Vec::new();
        for (i, &n) in order.iter().enumerate() {
            let (op, operands) = context::with_node(n, |g| (g.node(n).op, g.operands(n)));
            if matches!(
                op,
                Op::Input(_) | Op::Const | Op::ReadVar(_) | Op::Assign(_)
            ) {
                continue;
            }
            entries.push(Entry {
                op: EntryOp::Prim(op),
                inputs: operands.iter().map(|o| tensors[of[o]].clone()).collect(),
                outputs: smallvec::smallvec![tensors[i].clone()],
            });
        }
        let lookup = |n: &NodeId| {
            of.get(n)
                .map(|&i| tensors[i].clone())
                .ok_or_else(|| Error::Graph(format!("node {} is not live", n.index())))
        };
        let targets = ys
            .iter()
            .map(|y| lookup(y).map(|t| (t.clone(), t.ones_like())))
            .collect::<Result<Vec<_>>>()?;
        let sources = xs
            .iter()
            .map(|x| lookup(x).map(|t| t.id()))
            .collect::<Result<Vec<_>>>()?;
        let grads = backward(&entries, &targets, &sources)?;
        grads
            .into_iter()
            .map(|g| g.map(|g| context::node_of(&g)).transpose())
            .collect()
    });
    Ok((g, res??))
}

/// The graph whose outputs are d(Σ outputs)/d(inputs `wrt`) of `graph`, applied `order`
/// times (each time to the sum of the previous gradients). Unconnected inputs get zeros.
pub fn grad_graph(graph: &Graph, wrt: &[usize], order: usize) -> Result<Graph> {
    let mut g = graph.clone();
    for _ in 0..order {
        let xs: Vec<NodeId> = wrt
            .iter()
            .map(|&i| {
                g.inputs
                    .get(i)
                    .copied()
                    .ok_or_else(|| Error::Graph(format!("the graph has no input {i}")))
            })
            .collect::<Result<_>>()?;
        let ys = g.outputs.clone();
        let (mut g2, grads) = grad(g, &ys, &xs)?;
        let (g3, outs) = context::with_graph(std::mem::take(&mut g2), |_| -> Result<Vec<NodeId>> {
            let xt = context::tensors_of(&xs);
            grads
                .iter()
                .zip(&xt)
                .map(|(gr, x)| match gr {
                    Some(n) => Ok(*n),
                    None => context::node_of(&x.zeros_like()),
                })
                .collect()
        });
        g = g3;
        g.outputs = outs??;
        crate::passes::eliminate_dead_nodes(&mut g)?;
    }
    Ok(g)
}
