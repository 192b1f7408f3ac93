//! The traced path: control flow as single IR ops holding sub-graphs, and their VJPs.
//!
//! A body closure is traced into a graph of its own ([`context::with_body`]) with the
//! gradient tapes paused; the values it captures become extra operands. [`emit`] adds
//! the control-flow node, one `get` per result, and records on the active tapes one
//! entry whose VJP is built from the region's graphs alone: the VJP *replays* a body
//! graph as ordinary tensor ops ([`replay`]) under a fresh tape inside a new body, so
//! the backward of a control-flow op is again control flow (a reverse `scan`, a
//! `cond`, a `while`), recorded on outer tapes like any op — which is all higher
//! orders and forward mode (by transposition) need.
//!
//! Variables a body assigns ([`assigned_vars`]) are put first among its captures
//! ([`merge_captures`]), so their inputs sit right after the arguments; the op turns
//! them into extra carries (loops) or results (`cond`) whose body results are the last
//! assigned values ([`var_results`]), and assigns the op's results after it
//! ([`assign_vars`]). Bodies therefore never hold `read_var` or `assign` nodes.

use super::{scan, scan_reverse};
use crate::autodiff::backward::MultiVjp;
use crate::autodiff::tape::{self, GradientTape};
use crate::error::{Error, Loc, Result};
use crate::ir::{Graph, NodeId, Region, RegionKind};
use crate::ops::{Op, Unary};
use crate::tensor::dispatch::{apply, at_location};
use crate::tensor::{DType, Kind, Shape, Tensor, Variable};
use crate::trace::context::{self, Capture};
use std::collections::HashMap;
use std::sync::Arc;

/// The type of a tensor.
pub(super) fn type_of(t: &Tensor) -> (DType, Shape) {
    (t.dtype(), Shape::from_slice(t.shape()))
}

fn capture_key(c: &Capture) -> (u8, u64) {
    match c {
        Capture::Tensor(t) => (0, t.id()),
        Capture::Var(v) => (1, v.id()),
    }
}

/// The type of a variable.
pub(super) fn var_type(v: &Variable) -> (DType, Shape) {
    (v.dtype(), Shape::from_slice(v.shape()))
}

fn capture_type(c: &Capture) -> (DType, Shape) {
    match c {
        Capture::Tensor(t) => type_of(t),
        Capture::Var(v) => var_type(v),
    }
}

/// A traced body: its graph, captures and the variables it assigns (each with the node
/// of its last value).
pub(super) struct Body {
    pub graph: Graph,
    pub captures: Vec<Capture>,
    pub assigned: Vec<(Variable, NodeId)>,
}

impl Body {
    /// The types of its results.
    pub fn result_types(&self) -> Vec<(DType, Shape)> {
        let g = &self.graph;
        g.outputs
            .iter()
            .map(|&o| (g.node(o).dtype, g.node(o).shape.clone()))
            .collect()
    }
}

/// Traces `f` on symbolic arguments of the given types into a body graph, with the
/// gradient tapes paused.
pub(super) fn trace_body(
    args: &[(DType, Shape)],
    loc: Loc,
    f: impl FnOnce(&[Tensor]) -> Result<Vec<Tensor>>,
) -> Result<Body> {
    let traced =
        tape::without_tapes(|| context::with_body(args, loc, |a| f(a).map(|outs| (outs, ()))));
    traced.result?;
    Ok(Body {
        graph: traced.graph,
        captures: traced.captures,
        assigned: traced.assigned,
    })
}

/// The variables assigned in any of `bodies`, in first-assigned order.
pub(super) fn assigned_vars(bodies: &[Body]) -> Vec<Variable> {
    let mut vars: Vec<Variable> = Vec::new();
    for (v, _) in bodies.iter().flat_map(|b| &b.assigned) {
        if !vars.iter().any(|w| w.id() == v.id()) {
            vars.push(v.clone());
        }
    }
    vars
}

/// The nodes holding each of `vars`' value at the end of `body`: its last assigned
/// value, or, when the body does not assign it, the body's input for the variable
/// (`first` is the input index of `vars[0]`; after [`merge_captures`] with `vars` first,
/// the variables' inputs follow the body's arguments).
pub(super) fn var_results(body: &Body, vars: &[Variable], first: usize) -> Vec<NodeId> {
    vars.iter()
        .enumerate()
        .map(|(i, v)| {
            body.assigned
                .iter()
                .find(|(w, _)| w.id() == v.id())
                .map_or(body.graph.inputs[first + i], |&(_, n)| n)
        })
        .collect()
}

/// Assigns each variable its value after the control-flow op, in the enclosing trace
/// (a graph's `assign`, or, in an enclosing body, that body's assignment), attributed to
/// the user's call at `loc`.
pub(super) fn assign_vars(vars: &[Variable], values: &[Tensor], loc: Loc) {
    for (v, t) in vars.iter().zip(values) {
        v.assign_at(t, loc);
    }
}

/// Makes `inputs` the graph's inputs, renumbering their `input` nodes.
pub(super) fn set_inputs(g: &mut Graph, inputs: Vec<NodeId>) {
    for (i, &id) in inputs.iter().enumerate() {
        g.node_mut(id).op = Op::Input(i as u32);
    }
    g.inputs = inputs;
}

/// Gives every body the same captures as inputs after its `nargs` arguments: the
/// variables `first` (those the bodies assign, which become carries or results), then
/// the union of the others in first-seen order; returns that list.
pub(super) fn merge_captures(
    bodies: &mut [Body],
    nargs: &[usize],
    first: &[Variable],
) -> Vec<Capture> {
    let mut merged: Vec<Capture> = first.iter().map(|v| Capture::Var(v.clone())).collect();
    for b in bodies.iter() {
        for c in &b.captures {
            if !merged.iter().any(|m| capture_key(m) == capture_key(c)) {
                merged.push(c.clone());
            }
        }
    }
    for (b, &n) in bodies.iter_mut().zip(nargs) {
        let g = &mut b.graph;
        let mut inputs: Vec<NodeId> = g.inputs[..n].to_vec();
        for m in &merged {
            let have = b
                .captures
                .iter()
                .position(|c| capture_key(c) == capture_key(m));
            let node = match have {
                Some(k) => g.inputs[n + k],
                None => {
                    let (d, s) = capture_type(m);
                    g.add(crate::ir::Node::new(Op::Input(0), d, s), &[])
                }
            };
            inputs.push(node);
        }
        set_inputs(g, inputs);
        b.captures = merged.clone();
    }
    merged
}

/// The outer values of captures: tensors as they are, variables read here (so the
/// enclosing trace reads them and active tapes watch the reads).
#[track_caller]
pub(super) fn capture_values(captures: &[Capture]) -> Vec<Tensor> {
    captures
        .iter()
        .map(|c| match c {
            Capture::Tensor(t) => t.clone(),
            Capture::Var(v) => v.read(),
        })
        .collect()
}

fn op_of(kind: RegionKind, r: u32) -> Op {
    match kind {
        RegionKind::Cond => Op::Cond(r),
        RegionKind::While => Op::While(r),
        RegionKind::Scan { .. } => Op::Scan(r),
    }
}

/// The per-step values a traced `scan` keeps for its reverse mode besides its carries:
/// its stacked result `at[i]` (counted from its first stacked output) holds the values
/// of body node `nodes[i]`, which the reverse scan then reads instead of recomputing
/// them (see [`step_residuals`]). A node the user's body already returns per step is
/// read from that output rather than stacked twice.
#[derive(Default)]
pub(super) struct Residuals {
    at: Vec<usize>,
    nodes: Vec<NodeId>,
}

/// Adds the control-flow node for `region` with `operands` to the current trace, one
/// `get` per result, and records it (with its VJP) on the active tapes.
pub(super) fn emit(region: Region, operands: &[Tensor], loc: Loc) -> Result<Vec<Tensor>> {
    emit_saving(region, operands, Residuals::default(), loc)
}

/// [`emit`] for a scan whose results include `residuals`.
fn emit_saving(
    region: Region,
    operands: &[Tensor],
    residuals: Residuals,
    loc: Loc,
) -> Result<Vec<Tensor>> {
    let name = op_of(region.kind, 0).name();
    if operands
        .iter()
        .any(|t| matches!(t.0.kind, Kind::Poisoned { .. }))
    {
        return Err(Error::op(
            name,
            "an operand comes from an op that failed",
            loc,
        ));
    }
    let r = context::add_region(region.clone());
    let (td, ts) = crate::ops::control::tuple_type();
    let refs: Vec<&Tensor> = operands.iter().collect();
    let tuple = context::add_node(op_of(region.kind, r), &refs, td, ts, loc);
    let outs: Vec<Tensor> = region
        .results
        .iter()
        .enumerate()
        .map(|(i, (d, s))| context::add_node(Op::Get(i as u32), &[&tuple], *d, s.clone(), loc))
        .collect();
    let region = Arc::new(region);
    let vjp: MultiVjp =
        Arc::new(move |x, y, gy| at_location(loc, || vjp(&region, &residuals, x, y, gy, loc)));
    tape::record_multi(name, vjp, operands, &outs);
    Ok(outs)
}

/// Replays a body graph on `args` as ordinary tensor ops (recorded by active tapes);
/// nested control-flow nodes are emitted again from their regions.
pub(super) fn replay(g: &Graph, args: &[Tensor], loc: Loc) -> Result<Vec<Tensor>> {
    replay_with(g, args, &HashMap::new(), loc)
}

/// [`replay`], where each node of `known` is not computed again but takes the given
/// value, recorded on the active tapes as the result of the node's op on its operands
/// (so the cotangent still flows through the op's VJP to them).
fn replay_with(
    g: &Graph,
    args: &[Tensor],
    known: &HashMap<NodeId, Tensor>,
    loc: Loc,
) -> Result<Vec<Tensor>> {
    let order = g.canonical_order();
    let mut val: HashMap<NodeId, Tensor> = HashMap::new();
    let mut tuples: HashMap<NodeId, Vec<Tensor>> = HashMap::new();
    for n in order {
        let node = g.node(n);
        let operands: Vec<Tensor> = g
            .operands(n)
            .iter()
            .filter_map(|o| val.get(o).cloned())
            .collect();
        let here = node.loc.unwrap_or(loc);
        let t = match node.op {
            Op::Input(i) => args
                .get(i as usize)
                .cloned()
                .ok_or_else(|| Error::Graph(format!("replay: no argument {i}")))?,
            Op::Const => Tensor::from_data_at(node.value.clone().expect("verified const"), here),
            Op::Cond(r) | Op::While(r) | Op::Scan(r) => {
                let region = g.regions[r as usize].clone();
                tuples.insert(n, emit(region, &operands, here)?);
                continue;
            }
            Op::Get(i) => {
                let ops = g.operands(n);
                tuples[&ops[0]][i as usize].clone()
            }
            Op::ReadVar(_) | Op::Assign(_) | Op::Fused(_) => {
                return Err(Error::Graph(format!(
                    "replay: a body holds `{}`, which bodies never do",
                    node.op.name()
                )))
            }
            op => {
                let refs: Vec<&Tensor> = operands.iter().collect();
                match known.get(&n) {
                    Some(value) => computed_before(op, &refs, value),
                    None => at_location(here, || apply(op, &refs, Some(&node.shape))),
                }
            }
        };
        val.insert(n, t);
    }
    Ok(g.outputs.iter().map(|o| val[o].clone()).collect())
}

/// `value`, computed earlier as `op(operands)`, recorded on the active tapes as that
/// op's result: its VJP is the op's own.
fn computed_before(op: Op, operands: &[&Tensor], value: &Tensor) -> Tensor {
    crate::autodiff::tape::custom_gradient(
        operands,
        |_| value.clone(),
        move |x, y, g| {
            let needs = vec![true; x.len()];
            op.vjp(
                &crate::ops::VjpArgs {
                    x,
                    y,
                    needs: &needs,
                },
                g,
            )
            .into_vec()
        },
    )
}

/// The nodes of a scan body worth keeping per step for reverse mode, among those that
/// depend on the step (on a carry or a scanned operand: `step_inputs`): its float
/// matrix products, and the results of `tanh`, `sigmoid` and `exp`, whose derivatives
/// read only the result. The reverse scan reads them instead of computing them again;
/// where a kept activation was the only reader of a value (the gate slices of an
/// LSTM's pre-activation, the product under them), the reverse body no longer computes
/// that value and the optimizer drops it (and its stacked copy) from both loops. Other
/// elementwise values are cheaper to recompute than to store and read back.
fn step_residuals(g: &Graph, step_inputs: &[NodeId]) -> Vec<NodeId> {
    let mut varies: std::collections::HashSet<NodeId> = step_inputs.iter().copied().collect();
    let mut found = Vec::new();
    for n in g.canonical_order() {
        if !g.operands(n).iter().any(|o| varies.contains(o)) {
            continue;
        }
        varies.insert(n);
        let node = g.node(n);
        let keep = matches!(
            node.op,
            Op::MatMul { .. } | Op::Unary(Unary::Tanh | Unary::Sigmoid | Unary::Exp)
        );
        if keep && node.dtype.is_float() {
            found.push(n);
        }
    }
    found
}

/// The cotangent `g`, or zeros of `like`'s type.
fn or_zeros(g: &Option<Tensor>, like: &Tensor) -> Tensor {
    g.clone().unwrap_or_else(|| like.zeros_like())
}

fn vjp(
    region: &Region,
    residuals: &Residuals,
    x: &[Tensor],
    y: &[Tensor],
    gy: &[Option<Tensor>],
    loc: Loc,
) -> Result<Vec<Option<Tensor>>> {
    match region.kind {
        RegionKind::Scan { reverse } => scan_vjp(region, reverse, residuals, x, y, gy, loc),
        RegionKind::Cond => super::cond_vjp(region, x, y, gy, loc),
        RegionKind::While => super::while_vjp(region, x, y, gy, loc),
    }
}

/// Reverse mode through `scan`: a scan the other way over the saved per-step carries,
/// the scanned inputs, the saved `residuals` and the cotangents of the per-step outputs
/// that have one. Its body replays the forward body at the saved carry under a tape,
/// taking the residuals' values instead of computing them again, and pulls the
/// cotangents back; its carries are the carries' cotangents and, for each float
/// capture, the sum of that capture's cotangent over the steps.
fn scan_vjp(
    region: &Region,
    reverse: bool,
    residuals: &Residuals,
    x: &[Tensor],
    y: &[Tensor],
    gy: &[Option<Tensor>],
    loc: Loc,
) -> Result<Vec<Option<Tensor>>> {
    let (nc, nx) = (region.carries, region.xs);
    if !region.saved {
        return Err(Error::op(
            "scan",
            "reverse mode needs the per-step carries, which this scan did not keep \
             (no tape watched its operands when it was traced)",
            loc,
        ));
    }
    let ny = region.results.len() - 2 * nc;
    let caps = &x[nc + nx..];
    let saved = &y[nc + ny..];
    let fcaps: Vec<usize> = (0..caps.len())
        .filter(|&i| caps[i].dtype().is_float())
        .collect();
    let mut init_b: Vec<Tensor> = (0..nc).map(|i| or_zeros(&gy[i], &y[i])).collect();
    init_b.extend(fcaps.iter().map(|&i| caps[i].zeros_like()));
    let nr = residuals.nodes.len();
    // the per-step outputs a cotangent flows into (a symbolic zero adds nothing)
    let with_gy: Vec<usize> = (0..ny)
        .filter(|&j| gy[nc + j].is_some() && y[nc + j].dtype().is_float())
        .collect();
    let ng = with_gy.len();
    let mut xs_b: Vec<Tensor> = saved.to_vec();
    xs_b.extend(x[nc..nc + nx].iter().cloned());
    xs_b.extend(residuals.at.iter().map(|&j| y[nc + j].clone()));
    xs_b.extend(with_gy.iter().filter_map(|&j| gy[nc + j].clone()));
    // the saved carries are outputs too: under a second derivative their cotangents
    // flow straight into the carry of their step
    let g_saved = gy[nc + ny..].iter().any(|g| g.is_some());
    if g_saved {
        xs_b.extend((0..nc).map(|i| or_zeros(&gy[nc + ny + i], &saved[i])));
    }
    let body = &region.bodies[0];
    let f = |cb: &[Tensor], xb: &[Tensor]| -> Result<(Vec<Tensor>, Vec<Tensor>)> {
        let (c_t, x_t) = (&xb[..nc], &xb[nc..nc + nx]);
        let (r_t, gy_t) = (
            &xb[nc + nx..nc + nx + nr],
            &xb[nc + nx + nr..nc + nx + nr + ng],
        );
        let known: HashMap<NodeId, Tensor> = residuals
            .nodes
            .iter()
            .copied()
            .zip(r_t.iter().cloned())
            .collect();
        let tape = GradientTape::new();
        let mut args: Vec<Tensor> = c_t.to_vec();
        args.extend(x_t.iter().cloned());
        args.extend(caps.iter().cloned());
        let outs = tape.record(|| {
            for a in &args {
                tape.watch(a);
            }
            replay_with(body, &args, &known, loc)
        })?;
        let mut targets: Vec<(Tensor, Tensor)> = (0..nc)
            .filter(|&i| outs[i].dtype().is_float())
            .map(|i| (outs[i].clone(), cb[i].clone()))
            .collect();
        targets.extend(
            with_gy
                .iter()
                .zip(gy_t)
                .map(|(&j, g)| (outs[nc + j].clone(), g.clone())),
        );
        let mut sources: Vec<Tensor> = c_t.to_vec();
        sources.extend(x_t.iter().cloned());
        sources.extend(fcaps.iter().map(|&i| caps[i].clone()));
        let g = tape.gradient_seeded(&targets, &sources)?;
        let mut carry: Vec<Tensor> = (0..nc).map(|i| or_zeros(&g[i], &c_t[i])).collect();
        if g_saved {
            for (i, c) in carry.iter_mut().enumerate() {
                if c.dtype().is_float() {
                    *c = &*c + &xb[nc + nx + nr + ng + i];
                }
            }
        }
        for (a, _) in fcaps.iter().enumerate() {
            let acc = &cb[nc + a];
            carry.push(match &g[nc + nx + a] {
                Some(d) => acc + d,
                None => acc.clone(),
            });
        }
        let gx: Vec<Tensor> = (0..nx).map(|j| or_zeros(&g[nc + j], &x_t[j])).collect();
        Ok((carry, gx))
    };
    let (cf, gxs) = if reverse {
        scan(f, &init_b, &xs_b)?
    } else {
        scan_reverse(f, &init_b, &xs_b)?
    };
    let float = |t: &Tensor, g: Tensor| t.dtype().is_float().then_some(g);
    let mut out: Vec<Option<Tensor>> = (0..nc).map(|i| float(&x[i], cf[i].clone())).collect();
    out.extend((0..nx).map(|j| float(&x[nc + j], gxs[j].clone())));
    let mut gcaps: Vec<Option<Tensor>> = vec![None; caps.len()];
    for (a, &i) in fcaps.iter().enumerate() {
        gcaps[i] = Some(cf[nc + a].clone());
    }
    out.extend(gcaps);
    Ok(out)
}

/// Checks that the types of `got` are `want`'s; `what_a`/`what_b` name the two sides.
pub(super) fn same_sig(
    op: &'static str,
    what_a: &str,
    want: &[(DType, Shape)],
    what_b: &str,
    got: &[(DType, Shape)],
    loc: Loc,
) -> Result<()> {
    let t = |(d, s): &(DType, Shape)| crate::tensor::type_str(*d, s);
    if want.len() != got.len() {
        return Err(Error::op(
            op,
            format!(
                "{what_a} has {} tensors but {what_b} has {}",
                want.len(),
                got.len()
            ),
            loc,
        ));
    }
    for (i, (a, b)) in want.iter().zip(got).enumerate() {
        if a != b {
            return Err(Error::op(
                op,
                format!(
                    "{what_a} has {} at position {i} but {what_b} has {}",
                    t(a),
                    t(b)
                ),
                loc,
            ));
        }
    }
    Ok(())
}

/// A traced `scan`: the body becomes a region; per-step carries (and the step's matrix
/// products and activations, [`step_residuals`]) are kept as extra results when a tape tracks an operand
/// (what reverse mode reads).
pub(super) fn scan_op(
    op: &'static str,
    reverse: bool,
    f: impl Fn(&[Tensor], &[Tensor]) -> Result<(Vec<Tensor>, Vec<Tensor>)>,
    init: &[Tensor],
    xs: &[Tensor],
    n: usize,
    loc: Loc,
) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
    let nc = init.len();
    let carry_types: Vec<(DType, Shape)> = init.iter().map(type_of).collect();
    let mut args = carry_types.clone();
    args.extend(
        xs.iter()
            .map(|x| (x.dtype(), Shape::from_slice(&x.shape()[1..]))),
    );
    let mut body = trace_body(&args, loc, |a| {
        let (c, y) = f(&a[..nc], &a[nc..])?;
        let mut outs = c;
        outs.extend(y);
        Ok(outs)
    })?;
    let types = body.result_types();
    if types.len() < nc {
        return Err(Error::op(
            op,
            format!(
                "the carry has {nc} tensors but the body returned {}",
                types.len()
            ),
            loc,
        ));
    }
    same_sig(
        op,
        "the carry",
        &carry_types,
        "the body's carry",
        &types[..nc],
        loc,
    )?;
    // variables the body assigns become carries after the user's: inputs
    // (c, x, vars, rest) are reordered to (c, vars, x, rest), results (c, y) to (c, vars, y)
    let vars = assigned_vars(std::slice::from_ref(&body));
    let nv = vars.len();
    let captures = merge_captures(std::slice::from_mut(&mut body), &[args.len()], &vars);
    let ins = &body.graph.inputs;
    let nx = xs.len();
    let mut inputs: Vec<NodeId> = ins[..nc].to_vec();
    inputs.extend_from_slice(&ins[nc + nx..nc + nx + nv]);
    inputs.extend_from_slice(&ins[nc..nc + nx]);
    inputs.extend_from_slice(&ins[nc + nx + nv..]);
    let finals = var_results(&body, &vars, nc + nx);
    set_inputs(&mut body.graph, inputs);
    body.graph.outputs.splice(nc..nc, finals);
    let cap_values = capture_values(&captures);
    let mut operands: Vec<Tensor> = init.to_vec();
    operands.extend(cap_values[..nv].iter().cloned());
    operands.extend(xs.iter().cloned());
    operands.extend(cap_values[nv..].iter().cloned());
    let saved = tape::any_tracked(&operands);
    let stacked = |(d, s): &(DType, Shape)| {
        let mut sh = Shape::from_slice(&[n]);
        sh.extend_from_slice(s);
        (*d, sh)
    };
    let mut carry_types = carry_types;
    carry_types.extend(vars.iter().map(var_type));
    let mut results = carry_types.clone();
    results.extend(types[nc..].iter().map(stacked));
    let ny = types.len() - nc;
    let mut residuals = Residuals::default();
    if saved {
        // the step's products and activations, for the reverse scan: a user's y where
        // the body returns the node, else stacked after the user's ys
        let nodes = step_residuals(&body.graph, &body.graph.inputs[..nc + nv + nx]);
        let mut at = Vec::with_capacity(nodes.len());
        for &p in &nodes {
            let ys = &body.graph.outputs[nc + nv..];
            at.push(ys.iter().position(|&o| o == p).unwrap_or(ys.len()));
            if at.last() == Some(&ys.len()) {
                let node = body.graph.node(p);
                results.push(stacked(&(node.dtype, node.shape.clone())));
                body.graph.outputs.push(p);
            }
        }
        residuals = Residuals { at, nodes };
        let carries: Vec<NodeId> = body.graph.inputs[..nc + nv].to_vec();
        body.graph.outputs.extend(carries);
        results.extend(carry_types.iter().map(stacked));
    }
    let region = Region {
        kind: RegionKind::Scan { reverse },
        bodies: vec![body.graph],
        carries: nc + nv,
        xs: nx,
        saved,
        results,
    };
    let outs = emit_saving(region, &operands, residuals, loc)?;
    assign_vars(&vars, &outs[nc..nc + nv], loc);
    Ok((outs[..nc].to_vec(), outs[nc + nv..nc + nv + ny].to_vec()))
}
