//! The thread-local trace context: the graph being built while a traced closure runs.
//!
//! While a context is active every op adds a node instead of running. Concrete tensors
//! used by the closure become `const` nodes (once per tensor). Variables become one
//! `read_var` node per trace; an `assign` makes later reads in the same trace see the
//! assigned value (SSA style), and the compiled graph writes it back when it runs.
//! The first op error poisons the context; the trace then reports it.
//!
//! A control-flow body ([`with_body`]) is traced in a context of its own stacked on the
//! enclosing one. A symbolic tensor of an enclosing trace used in the body, or a
//! variable read in it, becomes a *capture*: an extra input of the body graph (after
//! its arguments), listed in order so the control-flow op can pass the outer values as
//! operands. A variable assigned inside a body is recorded in the body's `assigned`
//! list (its final value there); later reads in the body see the assigned value, and
//! the control-flow op turns the variable into an extra carry or result
//! (`control/traced.rs`).

use crate::error::{Error, Loc};
use crate::ir::{Graph, GraphVar, Node, NodeId};
use crate::ops::Op;
use crate::tensor::{fresh_id, DType, Kind, Shape, Tensor, Variable};
use smallvec::SmallVec;
use std::cell::RefCell;
use std::collections::HashMap;

struct Ctx {
    id: u64,
    graph: Graph,
    consts: HashMap<u64, NodeId>,
    vars: HashMap<u64, Tensor>,
    error: Option<Error>,
    /// For a control-flow body: what it captured, in input order.
    body: Option<Body>,
}

/// The captures of a body context.
#[derive(Default)]
struct Body {
    captures: Vec<Capture>,
    /// capture input node by outer tensor id
    by_tensor: HashMap<u64, NodeId>,
    /// variables assigned in the body, in first-assigned order, with their last value
    assigned: Vec<(Variable, NodeId)>,
}

/// An outer value a control-flow body reads.
#[derive(Clone)]
pub(crate) enum Capture {
    /// A symbolic tensor of an enclosing trace.
    Tensor(Tensor),
    /// A variable read inside the body (the op reads it outside).
    Var(Variable),
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

/// Adds the next capture input of a body graph.
fn capture_input(ctx: &mut Ctx, c: Capture, dtype: DType, shape: Shape, loc: Loc) -> NodeId {
    let i = ctx.graph.inputs.len();
    let mut node = Node::new(Op::Input(i as u32), dtype, shape);
    node.loc = Some(loc);
    let n = ctx.graph.add(node, &[]);
    ctx.graph.inputs.push(n);
    ctx.body
        .as_mut()
        .expect("captures only in bodies")
        .captures
        .push(c);
    n
}

fn node_for(ctx: &mut Ctx, outer: &[u64], t: &Tensor) -> Result<NodeId, String> {
    match &t.0.kind {
        Kind::Symbolic { trace, node } if *trace == ctx.id => Ok(*node),
        Kind::Symbolic { trace, .. } if ctx.body.is_some() && outer.contains(trace) => {
            if let Some(&n) = ctx.body.as_ref().and_then(|b| b.by_tensor.get(&t.id())) {
                return Ok(n);
            }
            let c = Capture::Tensor(t.clone());
            let n = capture_input(ctx, c, t.dtype(), t.0.shape.clone(), t.0.loc);
            if let Some(b) = ctx.body.as_mut() {
                b.by_tensor.insert(t.id(), n);
            }
            Ok(n)
        }
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
        let (ctx, outer) = split(&mut s);
        let operands: Result<Vec<NodeId>, String> =
            inputs.iter().map(|t| node_for(ctx, &outer, t)).collect();
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

/// The innermost context and the ids of the enclosing ones.
fn split(s: &mut [Ctx]) -> (&mut Ctx, SmallVec<[u64; 4]>) {
    let (ctx, rest) = s.split_last_mut().expect("called while tracing");
    (ctx, rest.iter().map(|c| c.id).collect())
}

/// Inside a trace: the variable's current symbolic value (adding a `read_var` node on
/// first use; in a control-flow body, a capture). Outside: `None`.
pub(crate) fn read_var(v: &Variable, loc: Loc) -> Option<Tensor> {
    STACK.with(|s| {
        let mut s = s.borrow_mut();
        let ctx = s.last_mut()?;
        if let Some(t) = ctx.vars.get(&v.id()) {
            return Some(t.clone());
        }
        if ctx.body.is_some() {
            let shape = Shape::from_slice(v.shape());
            let n = capture_input(ctx, Capture::Var(v.clone()), v.dtype(), shape.clone(), loc);
            let t = Tensor::symbolic(ctx.id, n, v.dtype(), shape, loc);
            ctx.vars.insert(v.id(), t.clone());
            return Some(t);
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
        let (ctx, outer) = split(&mut s);
        let operand = match node_for(ctx, &outer, value) {
            Ok(n) => n,
            Err(msg) => {
                if ctx.error.is_none() {
                    ctx.error = Some(Error::op("assign", msg, loc));
                }
                return true;
            }
        };
        if let Some(body) = ctx.body.as_mut() {
            // in a body: remember the last value; the control-flow op carries it out
            match body.assigned.iter_mut().find(|(w, _)| w.id() == v.id()) {
                Some(entry) => entry.1 = operand,
                None => body.assigned.push((v.clone(), operand)),
            }
            let shape = Shape::from_slice(v.shape());
            let t = Tensor::symbolic(ctx.id, operand, v.dtype(), shape, loc);
            ctx.vars.insert(v.id(), t);
            return true;
        }
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
            body: None,
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
        if s.is_empty() {
            return Err(Error::Symbolic("not tracing".into()));
        }
        let (ctx, outer) = split(&mut s);
        node_for(ctx, &outer, t).map_err(Error::Symbolic)
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

/// What tracing a control-flow body produced: its graph (inputs: the arguments, then the
/// captures; outputs: the body's results), the outer values of its captures and the
/// variables it assigns.
pub(crate) struct Traced<R> {
    pub graph: Graph,
    pub captures: Vec<Capture>,
    /// The variables the body assigns, with the node of each one's last value.
    pub assigned: Vec<(Variable, NodeId)>,
    pub result: Result<R, Error>,
}

/// Traces a control-flow body: a context of its own on top of the current one, whose
/// graph gets one input per `args` type; `f` gets their symbolic tensors and returns
/// the body's results (an `Err` from `f` or the first op error is the `result`).
pub(crate) fn with_body<R>(
    args: &[(DType, Shape)],
    loc: Loc,
    f: impl FnOnce(&[Tensor]) -> Result<(Vec<Tensor>, R), Error>,
) -> Traced<R> {
    let id = fresh_id();
    STACK.with(|s| {
        s.borrow_mut().push(Ctx {
            id,
            graph: Graph::new(),
            consts: HashMap::new(),
            vars: HashMap::new(),
            error: None,
            body: Some(Body::default()),
        })
    });
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
    let tensors: Vec<Tensor> = args
        .iter()
        .enumerate()
        .map(|(i, (d, sh))| add_input(i, *d, sh, loc))
        .collect();
    let r = f(&tensors).and_then(|(outs, r)| {
        for t in &outs {
            add_output(t)?;
        }
        Ok(r)
    });
    std::mem::forget(guard);
    let ctx = STACK.with(|s| s.borrow_mut().pop().expect("context pushed above"));
    let (captures, assigned) = ctx
        .body
        .map(|b| (b.captures, b.assigned))
        .unwrap_or_default();
    let result = match (ctx.error, r) {
        (Some(e), _) => Err(e),
        (None, r) => r,
    };
    Traced {
        graph: ctx.graph,
        captures,
        assigned,
        result,
    }
}

/// Adds a region to the graph being traced; returns its index in the region table.
pub(crate) fn add_region(r: crate::ir::Region) -> u32 {
    STACK.with(|s| {
        let mut s = s.borrow_mut();
        let g = &mut s.last_mut().expect("tracing").graph;
        g.regions.push(r);
        (g.regions.len() - 1) as u32
    })
}
