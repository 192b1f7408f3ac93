//! `Graph`: the IR, a petgraph `StableDiGraph` behind a small API. This is the only
//! file that imports petgraph.
//!
//! Invariants (checked by [`crate::ir::verify`]):
//! - an edge `a -> b` weighted `slot` means `a` is operand number `slot` of `b`; a node's
//!   slots are `0..n` with no gaps. Operand order is always read from the slot, never
//!   from petgraph's neighbour order;
//! - every node's dtype/shape is what its op's rule infers from its operands;
//! - `inputs[i]` is the node `input(i)`; `assigns` hold one `assign` node per variable;
//! - node indices are stable across removals (StableDiGraph), so side tables keyed by
//!   [`NodeId`] stay valid while passes rewrite the graph.

use super::fused::FusedExpr;
use super::region::Region;
use crate::error::Loc;
use crate::ops::Op;
use crate::tensor::{DType, Data, Shape, Variable};
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::{EdgeRef, NodeIndexable};
use petgraph::Direction;
use smallvec::SmallVec;

/// A node's id, stable while the graph is rewritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub(crate) NodeIndex<u32>);

impl NodeId {
    /// The raw index (for side tables sized by [`Graph::capacity`]).
    pub fn index(self) -> usize {
        self.0.index()
    }
}

/// One operation in the graph.
#[derive(Clone, Debug)]
pub struct Node {
    /// What it computes.
    pub op: Op,
    /// Result dtype.
    pub dtype: DType,
    /// Result shape.
    pub shape: Shape,
    /// The user's source line that created it (absent for parsed graphs).
    pub loc: Option<Loc>,
    /// The value of a `const` node.
    pub value: Option<Data>,
}

impl Node {
    /// A node without value or location.
    pub fn new(op: Op, dtype: DType, shape: Shape) -> Node {
        Node {
            op,
            dtype,
            shape,
            loc: None,
            value: None,
        }
    }
}

/// A variable the graph reads or writes.
#[derive(Clone, Debug)]
pub struct GraphVar {
    /// The variable's name (how the text IR refers to it).
    pub name: String,
    /// Its dtype.
    pub dtype: DType,
    /// Its shape.
    pub shape: Shape,
    /// The live variable (absent in graphs parsed from text).
    pub handle: Option<Variable>,
}

/// A dataflow graph of ops.
#[derive(Clone, Default)]
pub struct Graph {
    g: StableDiGraph<Node, u32>,
    /// Graph inputs, in argument order.
    pub inputs: Vec<NodeId>,
    /// Graph outputs, in return order.
    pub outputs: Vec<NodeId>,
    /// The variables referenced by `read_var`/`assign` (indexed by their attribute).
    pub vars: Vec<GraphVar>,
    /// `assign` nodes, in the order the variables were first assigned.
    pub assigns: Vec<NodeId>,
    /// Expressions of `fused` nodes (`Op::Fused(n)` runs `fused[n]`).
    pub fused: Vec<FusedExpr>,
    /// Regions of control-flow nodes (`Op::Scan(n)` runs `regions[n]`).
    pub regions: Vec<Region>,
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Graph {
        Graph::default()
    }

    /// Adds a node with operands in slot order.
    pub fn add(&mut self, node: Node, operands: &[NodeId]) -> NodeId {
        let id = self.g.add_node(node);
        for (slot, &o) in operands.iter().enumerate() {
            self.g.add_edge(o.0, id, slot as u32);
        }
        NodeId(id)
    }

    /// The node.
    ///
    /// # Panics
    /// If `id` was removed.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.g[id.0]
    }

    /// The node, mutably.
    ///
    /// # Panics
    /// If `id` was removed.
    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.g[id.0]
    }

    /// Whether `id` names a live node.
    pub fn contains(&self, id: NodeId) -> bool {
        self.g.contains_node(id.0)
    }

    /// Operands in slot order.
    pub fn operands(&self, id: NodeId) -> SmallVec<[NodeId; 4]> {
        let mut v: SmallVec<[(u32, NodeId); 4]> = self
            .g
            .edges_directed(id.0, Direction::Incoming)
            .map(|e| (*e.weight(), NodeId(e.source())))
            .collect();
        v.sort_unstable();
        v.into_iter().map(|(_, n)| n).collect()
    }

    /// Nodes that use `id`, in ascending id order, without duplicates.
    pub fn users(&self, id: NodeId) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self
            .g
            .neighbors_directed(id.0, Direction::Outgoing)
            .map(NodeId)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// How many operand slots (over all nodes) refer to `id`.
    pub fn use_count(&self, id: NodeId) -> usize {
        self.g.edges_directed(id.0, Direction::Outgoing).count()
    }

    /// Removes a node and its edges.
    pub fn remove(&mut self, id: NodeId) {
        self.g.remove_node(id.0);
    }

    /// Appends an `input` node of this type as the graph's last input.
    pub fn add_input(&mut self, dtype: DType, shape: Shape) -> NodeId {
        let i = self.inputs.len() as u32;
        let id = self.add(Node::new(Op::Input(i), dtype, shape), &[]);
        self.inputs.push(id);
        id
    }

    /// Removes the inputs at positions `which` (ascending) and their nodes, which nothing
    /// may read any more, and renumbers the inputs left.
    pub fn remove_inputs(&mut self, which: &[usize]) {
        for &j in which.iter().rev() {
            let id = self.inputs.remove(j);
            self.remove(id);
        }
        for (i, id) in self.inputs.clone().into_iter().enumerate() {
            self.node_mut(id).op = Op::Input(i as u32);
        }
    }

    /// Number of live nodes.
    pub fn len(&self) -> usize {
        self.g.node_count()
    }

    /// Whether there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.g.node_count() == 0
    }

    /// One past the largest node index (size for side tables).
    pub fn capacity(&self) -> usize {
        self.g.node_bound()
    }

    /// All live node ids in ascending index order.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.g.node_indices().map(NodeId).collect()
    }

    /// Points every use of `old` (operand slots, outputs, assigns) at `new`.
    pub fn replace_uses(&mut self, old: NodeId, new: NodeId) {
        if old == new {
            return;
        }
        let uses: Vec<(NodeId, u32)> = self
            .g
            .edges_directed(old.0, Direction::Outgoing)
            .map(|e| (NodeId(e.target()), *e.weight()))
            .collect();
        for (user, slot) in uses {
            self.set_operand(user, slot as usize, new);
        }
        for o in self.outputs.iter_mut().chain(self.assigns.iter_mut()) {
            if *o == old {
                *o = new;
            }
        }
    }

    /// Makes `new` operand number `slot` of `id`.
    pub fn set_operand(&mut self, id: NodeId, slot: usize, new: NodeId) {
        let e = self
            .g
            .edges_directed(id.0, Direction::Incoming)
            .find(|e| *e.weight() == slot as u32)
            .map(|e| e.id());
        if let Some(e) = e {
            self.g.remove_edge(e);
        }
        self.g.add_edge(new.0, id.0, slot as u32);
    }

    /// Replaces all operands of `id`.
    pub fn set_operands(&mut self, id: NodeId, operands: &[NodeId]) {
        let edges: Vec<_> = self
            .g
            .edges_directed(id.0, Direction::Incoming)
            .map(|e| e.id())
            .collect();
        for e in edges {
            self.g.remove_edge(e);
        }
        for (slot, &o) in operands.iter().enumerate() {
            self.g.add_edge(o.0, id.0, slot as u32);
        }
    }

    /// The roots that keep nodes alive: outputs, then assigns.
    pub fn roots(&self) -> Vec<NodeId> {
        self.outputs.iter().chain(&self.assigns).copied().collect()
    }

    /// Live nodes reachable from the roots, in canonical order: inputs first (argument
    /// order), then a depth-first post-order from the roots visiting operands in slot
    /// order. The order depends only on the graph's structure, never on node indices.
    pub fn canonical_order(&self) -> Vec<NodeId> {
        let mut seen = vec![false; self.capacity()];
        let mut order = Vec::with_capacity(self.len());
        for &i in &self.inputs {
            seen[i.index()] = true;
            order.push(i);
        }
        for root in self.roots() {
            if seen[root.index()] {
                continue;
            }
            // iterative DFS: (node, next operand slot to visit)
            let mut stack: Vec<(NodeId, usize, SmallVec<[NodeId; 4]>)> =
                vec![(root, 0, self.operands(root))];
            seen[root.index()] = true;
            while let Some((n, i, ops)) = stack.last_mut() {
                if *i < ops.len() {
                    let o = ops[*i];
                    *i += 1;
                    if !seen[o.index()] {
                        seen[o.index()] = true;
                        let oo = self.operands(o);
                        stack.push((o, 0, oo));
                    }
                } else {
                    order.push(*n);
                    stack.pop();
                }
            }
        }
        order
    }

    /// Number of live nodes that the roots depend on (what the text IR prints).
    pub fn live_len(&self) -> usize {
        self.canonical_order().len()
    }

    /// Index of a variable, adding it if new. Variables are matched by handle (or by
    /// name for parsed graphs); a second variable with a taken name gets a `_N` suffix so
    /// names stay unique in the text IR.
    pub fn var_index(&mut self, mut var: GraphVar) -> u32 {
        let same = |v: &GraphVar| match (&v.handle, &var.handle) {
            (Some(a), Some(b)) => a.id() == b.id(),
            _ => v.name == var.name,
        };
        if let Some(i) = self.vars.iter().position(same) {
            return i as u32;
        }
        let base = var.name.clone();
        let mut k = 1;
        while self.vars.iter().any(|v| v.name == var.name) {
            var.name = format!("{base}_{k}");
            k += 1;
        }
        self.vars.push(var);
        (self.vars.len() - 1) as u32
    }

    /// Whether the graph has no cycles. Kahn's algorithm with an explicit work list
    /// (petgraph's `is_cyclic_directed` recurses once per node of a path and overflows
    /// the stack on long chains): repeatedly remove nodes without remaining operands;
    /// a node that is never freed lies on or after a cycle. O(nodes + edges).
    pub fn is_acyclic(&self) -> bool {
        let mut pending = vec![0usize; self.capacity()];
        let mut ready = Vec::new();
        for n in self.g.node_indices() {
            pending[n.index()] = self.g.edges_directed(n, Direction::Incoming).count();
            if pending[n.index()] == 0 {
                ready.push(n);
            }
        }
        let mut freed = 0;
        while let Some(n) = ready.pop() {
            freed += 1;
            for e in self.g.edges_directed(n, Direction::Outgoing) {
                let t = e.target();
                pending[t.index()] -= 1;
                if pending[t.index()] == 0 {
                    ready.push(t);
                }
            }
        }
        freed == self.g.node_count()
    }
}
