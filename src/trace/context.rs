//! The thread-local trace context: the graph being built while a traced closure runs.
//!
//! While a context is active every op adds a node instead of running. Concrete tensors
//! used by the closure become `const` nodes (once per tensor). Variables become one
//! `read_var` node per trace; an `assign` makes later reads in the same trace see the
//! assigned value (SSA style), and the compiled graph writes it back when it runs.
//! The first op error poisons the context; the trace then reports it.

use crate::error::{Error, Loc};
use crate::ir::{Graph, GraphVar, Node, NodeId};
use crate::ops::Op;
use crate::tensor::{fresh_id, DType, Kind, Shape, Tensor, Variable};
use std::cell::RefCell;
use std::collections::HashMap;

struct Ctx {
    id: u64,
    graph: Graph,
    consts: HashMap<u64, NodeId>,
    vars: HashMap<u64, Tensor>,
    error: Option<Error>,
}

thread_local! {
    static STACK: RefCell<Vec<Ctx>> = const { RefCell::new(Vec::new()) };
}

/// Whether ops on this thread are being traced.
pub(crate) fn is_tracing() -> bool {
    STACK.with(|s| !s.borrow().is_empty())
}

/// Records `err` as the current trace's failure (keeping the first); returns the trace id.
pub(crate) fn poison(err: Error) -> Option<u64> {
    STACK.with(|s| {
        let mut s = s.borrow_mut();
        let ctx = s.last_mut()?;
        if ctx.error.is_none() {
            ctx.error = Some(err);
        }
        Some(ctx.id)
    })
}

fn node_for(ctx: &mut Ctx, t: &Tensor) -> Result<NodeId, String> {
    match &t.0.kind {
        Kind::Symbolic { trace, node } if *trace == ctx.id => Ok(*node),
        Kind::Symbolic { .. } | Kind::Poisoned { .. } => Err(format!(
            "a symbolic tensor made at {} belongs to another traced function; \
             pass it in as an argument or return it instead",
            t.0.loc
        )),
        Kind::Concrete(d) => {
            if let Some(&n) = ctx.consts.get(&t.id()) {
                return Ok(n);
            }
            let mut node = Node::new(Op::Const, t.dtype(), t.0.shape.clone());
            node.value = Some(d.clone());
            node.loc = Some(t.0.loc);
            let n = ctx.graph.add(node, &[]);
            ctx.consts.insert(t.id(), n);
            Ok(n)
        }
    }
}

/// Adds a node for `op` (its type already inferred) and returns its symbolic tensor.
pub(crate) fn add_node(op: Op, inputs: &[&Tensor], dtype: DType, shape: Shape, loc: Loc) -> Tensor {
    let res = STACK.with(|s| {
        let mut s = s.borrow_mut();
        let ctx = s.last_mut().expect("add_node is called while tracing");
        let operands: Result<Vec<NodeId>, String> =
            inputs.iter().map(|t| node_for(ctx, t)).collect();
        match operands {
            Ok(operands) => {
                let mut node = Node::new(op, dtype, shape.clone());
                node.loc = Some(loc);
                Ok((ctx.id, ctx.graph.add(node, &operands)))
            }
            Err(msg) => {
                if ctx.error.is_none() {
                    ctx.error = Some(Error::op(op.name(), msg, loc));
                }
                Err(ctx.id)
            }
        }
    });
    match res {
        Ok((trace, node)) => Tensor::symbolic(trace, node, dtype, shape, loc),
        Err(trace) => Tensor::poisoned(trace, dtype, shape, loc),
    }
}

/// Inside a trace: the variable's current symbolic value (adding a `read_var` node on
/// first use). Outside: `None`.
pub(crate) fn read_var(v: &Variable, loc: Loc) -> Option<Tensor> {
    STACK.with(|s| {
        let mut s = s.borrow_mut();
        let ctx = s.last_mut()?;
        if let Some(t) = ctx.vars.get(&v.id()) {
            return Some(t.clone());
        }
        let idx = ctx.graph.var_index(GraphVar {
            name: v.name().to_string(),
            dtype: v.dtype(),
            shape: Shape::from_slice(v.shape()),
            handle: Some(v.clone()),
        });
        let mut node = Node::new(Op::ReadVar(idx), v.dtype(), Shape::from_slice(v.shape()));
        node.loc = Some(loc);
        let n = ctx.graph.add(node, &[]);
        let t = Tensor::symbolic(ctx.id, n, v.dtype(), Shape::from_slice(v.shape()), loc);
        ctx.vars.insert(v.id(), t.clone());
        Some(t)
    })
}

/// Inside a trace: records `v := value` (replacing an earlier assign of `v` in this
/// trace) and returns true. Outside: false.
pub(crate) fn assign_var(v: &Variable, value: &Tensor, loc: Loc) -> bool {
    if !is_tracing() {
        return false;
    }
    // make sure the variable has a table entry (and a read, if it was never read)
    let _ = read_var(v, loc);
    STACK.with(|s| {
        let mut s = s.borrow_mut();
        let ctx = s.last_mut().expect("tracing");
        let operand = match node_for(ctx, value) {
            Ok(n) => n,
            Err(msg) => {
                if ctx.error.is_none() {
                    ctx.error = Some(Error::op("assign", msg, loc));
                }
                return true;
            }
        };
        let var = GraphVar {
            name: v.name().to_string(),
            dtype: v.dtype(),
            shape: Shape::from_slice(v.shape()),
            handle: Some(v.clone()),
        };
        let idx = ctx.graph.var_index(var);
        if let Some(pos) = ctx
            .graph
            .assigns
            .iter()
            .position(|&a| ctx.graph.node(a).op == Op::Assign(idx))
        {
            let old = ctx.graph.assigns.remove(pos);
            ctx.graph.remove(old);
        }
        let mut node = Node::new(Op::Assign(idx), v.dtype(), Shape::from_slice(v.shape()));
        node.loc = Some(loc);
        let n = ctx.graph.add(node, &[operand]);
        ctx.graph.assigns.push(n);
        let value = if value.is_symbolic() {
            value.clone()
        } else {
            Tensor::symbolic(
                ctx.id,
                operand,
                v.dtype(),
                Shape::from_slice(v.shape()),
                loc,
            )
        };
        ctx.vars.insert(v.id(), value);
        true
    })
}

/// Runs `f` with a fresh trace context around `graph`; returns the graph and `f`'s
/// result, or the first op error recorded while `f` ran.
pub(crate) fn with_graph<R>(graph: Graph, f: impl FnOnce(u64) -> R) -> (Graph, Result<R, Error>) {
    let id = fresh_id();
    STACK.with(|s| {
        s.borrow_mut().push(Ctx {
            id,
            graph,
            consts: HashMap::new(),
            vars: HashMap::new(),
            error: None,
        })
    });
    // pop the context even if `f` panics, so the thread stays usable
    struct Pop;
    impl Drop for Pop {
        fn drop(&mut self) {
            STACK.with(|s| {
                if let Ok(mut s) = s.try_borrow_mut() {
                    if std::thread::panicking() {
                        s.pop();
                    }
                }
            });
        }
    }
    let guard = Pop;
    let r = f(id);
    std::mem::forget(guard);
    let ctx = STACK.with(|s| s.borrow_mut().pop().expect("context pushed above"));
    match ctx.error {
        Some(e) => (ctx.graph, Err(e)),
        None => (ctx.graph, Ok(r)),
    }
}

/// The node of a symbolic tensor of the current trace (concrete tensors become consts).
pub(crate) fn node_of(t: &Tensor) -> Result<NodeId, Error> {
    STACK.with(|s| {
        let mut s = s.borrow_mut();
        let ctx = s
            .last_mut()
            .ok_or_else(|| Error::Symbolic("not tracing".into()))?;
        node_for(ctx, t).map_err(Error::Symbolic)
    })
}

/// Adds graph input number `i` of the given type and returns its symbolic tensor.
pub(crate) fn add_input(i: usize, dtype: DType, shape: &[usize], loc: Loc) -> Tensor {
    STACK.with(|s| {
        let mut s = s.borrow_mut();
        let ctx = s.last_mut().expect("tracing");
        let mut node = Node::new(Op::Input(i as u32), dtype, Shape::from_slice(shape));
        node.loc = Some(loc);
        let n = ctx.graph.add(node, &[]);
        ctx.graph.inputs.push(n);
        Tensor::symbolic(ctx.id, n, dtype, Shape::from_slice(shape), loc)
    })
}

/// Marks `t` as a graph output (concrete values become constants).
pub(crate) fn add_output(t: &Tensor) -> Result<(), Error> {
    let n = node_of(t)?;
    STACK.with(|s| {
        s.borrow_mut()
            .last_mut()
            .expect("tracing")
            .graph
            .outputs
            .push(n)
    });
    Ok(())
}

/// Symbolic tensors of the current trace for existing nodes (one handle per node).
pub(crate) fn tensors_of(nodes: &[NodeId]) -> Vec<Tensor> {
    STACK.with(|s| {
        let s = s.borrow();
        let ctx = s.last().expect("tracing");
        nodes
            .iter()
            .map(|&node| {
                let n = ctx.graph.node(node);
                Tensor::symbolic(
                    ctx.id,
                    node,
                    n.dtype,
                    n.shape.clone(),
                    n.loc.unwrap_or(std::panic::Location::caller()),
                )
            })
            .collect()
    })
}

/// Runs `f` on the graph being built (read-only), for the node `n`.
pub(crate) fn with_node<R>(_n: NodeId, f: impl FnOnce(&Graph) -> R) -> R {
    STACK.with(|s| f(&s.borrow().last().expect("tracing").graph))
}
