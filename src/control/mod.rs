//! Control flow: [`cond`], [`while_loop`], [`scan`], [`scan_reverse`] and [`fori_loop`].
//!
//! Eagerly (no trace active) they are plain Rust control flow that calls the user's
//! closures op by op, so an active [`crate::GradientTape`] records every op of every
//! iteration and differentiates through them like through any other code.
//!
//! Inside [`crate::function`] a predicate or loop condition that is a concrete value
//! (it depends on no argument of the function) also runs as Rust control flow: the
//! branch not taken is never traced, and a loop is unrolled into the graph. A run-time
//! predicate or condition, every `scan`, and a `fori_loop` longer than
//! [`FORI_UNROLL_MAX`] become one IR op holding sub-graphs ([`crate::ir::Region`]): the
//! closures are traced once into bodies, the outer tensors and variables they use
//! become extra operands (captures), and the op is recorded on the active tapes with a
//! VJP written with these same functions (see `traced.rs`), so it differentiates to any
//! order, in reverse and forward mode. The README's "Control flow" section describes
//! the design.
//!
//! Variables work inside the closures as in TensorFlow's `tf.while_loop`: reads see the
//! latest assignment, each iteration sees the previous one's, and after the call the
//! variable holds the last value assigned. Traced, a variable assigned in a body becomes
//! an extra carry (loops) or result (`cond`) of the op, assigned after it (the module
//! doc of `ir/region.rs` states the signatures); tapes do not differentiate through
//! the assignment.
//!
//! Invariants every function checks, eagerly and traced: a branch's (or body's)
//! outputs have the dtypes and shapes of the other branch (of the loop carry), else
//! the call returns an `Err` naming both types and the result's position.

mod traced;

use crate::autodiff::tape::GradientTape;
use crate::error::{Error, Loc, Result};
use crate::ir::{Region, RegionKind};
use crate::tensor::{type_str, DType, Shape, Tensor};
use crate::trace::context;
use std::panic::Location;
use traced::{
    assign_vars, assigned_vars, capture_values, emit, merge_captures, replay, same_sig, trace_body,
    type_of, var_results, var_type,
};

/// The type of a tensor as text, `f32[2,3]`.
fn ty(t: &Tensor) -> String {
    type_str(t.dtype(), t.shape())
}

/// Checks that `b` has the number, dtypes and shapes of `a`; `what_a`/`what_b` name
/// the two sides in the error.
fn same_types(
    op: &'static str,
    what_a: &str,
    a: &[Tensor],
    what_b: &str,
    b: &[Tensor],
    loc: Loc,
) -> Result<()> {
    if a.len() != b.len() {
        return Err(Error::op(
            op,
            format!(
                "{what_a} has {} tensors but {what_b} has {}",
                a.len(),
                b.len()
            ),
            loc,
        ));
    }
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if x.dtype() != y.dtype() || x.shape() != y.shape() {
            return Err(Error::op(
                op,
                format!(
                    "{what_a} has {} at position {i} but {what_b} has {}",
                    ty(x),
                    ty(y)
                ),
                loc,
            ));
        }
    }
    Ok(())
}

/// The truth value of a concrete predicate: a tensor of one element, nonzero is true.
fn truth(op: &'static str, pred: &Tensor, loc: Loc) -> Result<bool> {
    if pred.len() != 1 {
        return Err(Error::op(
            op,
            format!("the predicate must have one element, got {}", ty(pred)),
            loc,
        ));
    }
    Ok(pred.to_scalar_f64()? != 0.0)
}

/// `true_fn()` if `pred` is nonzero, else `false_fn()` (`tf.cond`, `jax.lax.cond`).
///
/// `pred` is a tensor of one element of any dtype. Both branches must return tensors
/// of the same dtypes and shapes. Eagerly, and inside [`crate::function`] when `pred` is
/// a concrete value, only the chosen branch runs.
///
/// # Errors
/// A predicate with more than one element, or branches whose results differ in number,
/// dtype or shape (the error names both); errors returned by a branch.
///
/// # Example
/// ```
/// use tapeflow::{cond, Tensor};
/// let x = Tensor::scalar(3.0);
/// let y = cond(&x.gt(&Tensor::scalar(0.0)), || Ok(vec![&x * 2.0]), || Ok(vec![-&x])).unwrap();
/// assert_eq!(y[0].to_scalar().unwrap(), 6.0);
/// ```
#[track_caller]
pub fn cond(
    pred: &Tensor,
    true_fn: impl Fn() -> Result<Vec<Tensor>>,
    false_fn: impl Fn() -> Result<Vec<Tensor>>,
) -> Result<Vec<Tensor>> {
    let loc = Location::caller();
    if !pred.is_symbolic() {
        return if truth("cond", pred, loc)? {
            true_fn()
        } else {
            false_fn()
        };
    }
    if pred.len() != 1 {
        return Err(Error::op(
            "cond",
            format!("the predicate must have one element, got {}", ty(pred)),
            loc,
        ));
    }
    // traced with a run-time predicate: one `cond` op holding both branches
    let then_b = trace_body(&[], loc, |_| true_fn())?;
    let else_b = trace_body(&[], loc, |_| false_fn())?;
    let types = then_b.result_types();
    same_sig(
        "cond",
        "the true branch",
        &types,
        "the false branch",
        &else_b.result_types(),
        loc,
    )?;
    // variables a branch assigns are extra results (the other branch passes the value
    // through) and are assigned after the op
    let mut bodies = [then_b, else_b];
    let vars = assigned_vars(&bodies);
    let captures = merge_captures(&mut bodies, &[0, 0], &vars);
    for b in &mut bodies {
        let finals = var_results(b, &vars, 0);
        b.graph.outputs.extend(finals);
    }
    let mut operands = vec![pred.clone()];
    operands.extend(capture_values(&captures));
    let [then_b, else_b] = bodies;
    let nr = types.len();
    let mut results = types;
    results.extend(vars.iter().map(var_type));
    let region = Region {
        kind: RegionKind::Cond,
        bodies: vec![then_b.graph, else_b.graph],
        carries: 0,
        xs: 0,
        saved: false,
        results,
    };
    let mut outs = emit(region, &operands, loc)?;
    assign_vars(&vars, &outs[nr..], loc);
    outs.truncate(nr);
    Ok(outs)
}

/// Reverse mode through `cond`: a `cond` on the same predicate whose branches pull the
/// cotangents back through the branch taken (replayed under a tape); cotangents for
/// the float captures.
fn cond_vjp(
    region: &Region,
    x: &[Tensor],
    y: &[Tensor],
    gy: &[Option<Tensor>],
    loc: Loc,
) -> Result<Vec<Option<Tensor>>> {
    let caps = &x[1..];
    let fcaps: Vec<usize> = (0..caps.len())
        .filter(|&i| caps[i].dtype().is_float())
        .collect();
    if fcaps.is_empty() {
        return Ok(vec![None; x.len()]);
    }
    let seeds: Vec<Tensor> = y
        .iter()
        .zip(gy)
        .map(|(y, g)| g.clone().unwrap_or_else(|| y.zeros_like()))
        .collect();
    let branch = |k: usize| {
        let body = &region.bodies[k];
        let seeds = &seeds;
        let fcaps = &fcaps;
        move || -> Result<Vec<Tensor>> {
            let tape = GradientTape::new();
            let outs = tape.record(|| {
                for c in caps {
                    tape.watch(c);
                }
                replay(body, caps, loc)
            })?;
            let targets: Vec<(Tensor, Tensor)> = outs
                .iter()
                .zip(seeds)
                .filter(|(o, _)| o.dtype().is_float())
                .map(|(o, s)| (o.clone(), s.clone()))
                .collect();
            let sources: Vec<Tensor> = fcaps.iter().map(|&i| caps[i].clone()).collect();
            let g = tape.gradient_seeded(&targets, &sources)?;
            Ok(g.iter()
                .zip(&sources)
                .map(|(g, s)| g.clone().unwrap_or_else(|| s.zeros_like()))
                .collect())
        }
    };
    let g = cond(&x[0], branch(0), branch(1))?;
    let mut out = vec![None; x.len()];
    for (a, &i) in fcaps.iter().enumerate() {
        out[1 + i] = Some(g[a].clone());
    }
    Ok(out)
}

/// Runs `body` while `cond` holds (`tf.while_loop`, `jax.lax.while_loop`): starting from
/// `init`, `vars = body(vars)` as long as `cond(vars)` is nonzero; returns the final
/// `vars`.
///
/// `cond` returns a tensor of one element; `body` returns tensors of the dtypes and
/// shapes of `init` (the loop carry).
///
/// # Errors
/// A condition with more than one element, a body whose results differ from the carry
/// in number, dtype or shape (the error names both), errors of the closures; inside
/// [`crate::function`] with a run-time condition, a condition that assigns a variable.
///
/// # Example
/// ```
/// use tapeflow::{while_loop, Tensor};
/// // x^5 by repeated multiplication
/// let x = Tensor::scalar(2.0);
/// let n = Tensor::from(5i64);
/// let out = while_loop(
///     |v| Ok(v[0].lt(&n)),
///     |v| Ok(vec![&v[0] + 1i64, &v[1] * &x]),
///     &[Tensor::from(0i64), Tensor::scalar(1.0)],
/// )
/// .unwrap();
/// assert_eq!(out[1].to_scalar().unwrap(), 32.0);
/// ```
#[track_caller]
pub fn while_loop(
    cond: impl Fn(&[Tensor]) -> Result<Tensor>,
    body: impl Fn(&[Tensor]) -> Result<Vec<Tensor>>,
    init: &[Tensor],
) -> Result<Vec<Tensor>> {
    let loc = Location::caller();
    let mut vars = init.to_vec();
    loop {
        let c = cond(&vars)?;
        if c.is_symbolic() {
            // the trip count is known only at run time: the rest of the loop is one op
            let out = while_op(&cond, &body, &vars, loc)?;
            return Ok(out[..vars.len()].to_vec());
        }
        if !truth("while_loop", &c, loc)? {
            return Ok(vars);
        }
        let next = body(&vars)?;
        same_types(
            "while_loop",
            "the loop carry",
            &vars,
            "the body's result",
            &next,
            loc,
        )?;
        vars = next;
    }
}

/// A traced `while`: condition and body become a region; the results are the final
/// carries and the trip count.
fn while_op(
    cond: &impl Fn(&[Tensor]) -> Result<Tensor>,
    body: &impl Fn(&[Tensor]) -> Result<Vec<Tensor>>,
    init: &[Tensor],
    loc: Loc,
) -> Result<Vec<Tensor>> {
    let carry_types: Vec<(DType, Shape)> = init.iter().map(type_of).collect();
    let cond_b = trace_body(&carry_types, loc, |a| Ok(vec![cond(a)?]))?;
    let c_ty = &cond_b.result_types()[0];
    if crate::tensor::numel(&c_ty.1) != 1 {
        return Err(Error::op(
            "while_loop",
            format!(
                "the loop condition must have one element, got {}",
                type_str(c_ty.0, &c_ty.1)
            ),
            loc,
        ));
    }
    let body_b = trace_body(&carry_types, loc, body)?;
    same_sig(
        "while_loop",
        "the loop carry",
        &carry_types,
        "the body's result",
        &body_b.result_types(),
        loc,
    )?;
    if let Some((v, _)) = cond_b.assigned.first() {
        return Err(Error::op(
            "while_loop",
            format!(
                "the loop condition assigns variable `{}`; assign it in the body instead",
                v.name()
            ),
            loc,
        ));
    }
    // variables the body assigns are extra carries after the user's (the condition
    // sees them too), assigned after the op
    let nc = init.len();
    let mut bodies = [cond_b, body_b];
    let vars = assigned_vars(&bodies);
    let nv = vars.len();
    let captures = merge_captures(&mut bodies, &[nc, nc], &vars);
    let finals = var_results(&bodies[1], &vars, nc);
    bodies[1].graph.outputs.extend(finals);
    let mut operands = init.to_vec();
    operands.extend(capture_values(&captures));
    let [cond_b, body_b] = bodies;
    let mut results = carry_types;
    results.extend(vars.iter().map(var_type));
    results.push((DType::I64, Shape::new()));
    let region = Region {
        kind: RegionKind::While,
        bodies: vec![cond_b.graph, body_b.graph],
        carries: nc + nv,
        xs: 0,
        saved: false,
        results,
    };
    let mut outs = emit(region, &operands, loc)?;
    assign_vars(&vars, &outs[nc..nc + nv], loc);
    outs.drain(nc..nc + nv);
    Ok(outs)
}

/// Reverse mode through `while`, for a trip count `n` known only at run time. The
/// forward loop keeps nothing but `n` (its last result); the backward is a `while`
/// counting `k` from `n` down to 1 whose body *recomputes* the carry entering step
/// `k-1` by running the forward body `k-1` times from the initial carry (an inner
/// `while`), then pulls the carries' cotangents back through that step (the body
/// replayed under a tape), summing the captures' cotangents in extra carries. Cost:
/// `n(n-1)/2` extra forward steps and no memory per step — the choice for loops
/// whose length has no bound at trace time (stacking would need a run-time shape).
fn while_vjp(
    region: &Region,
    x: &[Tensor],
    y: &[Tensor],
    gy: &[Option<Tensor>],
    loc: Loc,
) -> Result<Vec<Option<Tensor>>> {
    let nc = region.carries;
    let (init, caps) = x.split_at(nc);
    let fcaps: Vec<usize> = (0..caps.len())
        .filter(|&i| caps[i].dtype().is_float())
        .collect();
    let n = &y[nc];
    let body = &region.bodies[1];
    let with_caps = |c: &[Tensor]| -> Vec<Tensor> {
        let mut a = c.to_vec();
        a.extend(caps.iter().cloned());
        a
    };
    // carries of the backward loop: k, the carries' cotangents, the captures' sums
    let mut init_b = vec![n.clone()];
    init_b.extend((0..nc).map(|i| gy[i].clone().unwrap_or_else(|| y[i].zeros_like())));
    init_b.extend(fcaps.iter().map(|&i| caps[i].zeros_like()));
    let back = while_loop(
        |v| Ok(v[0].gt(&Tensor::from(0i64))),
        |v| {
            let k = &v[0] - 1i64;
            // the carry entering step k: k forward steps from init
            let mut start = vec![Tensor::from(0i64)];
            start.extend(init.iter().cloned());
            let fwd = while_op(
                &|w: &[Tensor]| Ok(w[0].lt(&k)),
                &|w: &[Tensor]| {
                    let mut next = vec![&w[0] + 1i64];
                    next.extend(replay(body, &with_caps(&w[1..]), loc)?);
                    Ok(next)
                },
                &start,
                loc,
            )?;
            let c_k = &fwd[1..=nc];
            let tape = GradientTape::new();
            let args = with_caps(c_k);
            let outs = tape.record(|| {
                for a in &args {
                    tape.watch(a);
                }
                replay(body, &args, loc)
            })?;
            let targets: Vec<(Tensor, Tensor)> = (0..nc)
                .filter(|&i| outs[i].dtype().is_float())
                .map(|i| (outs[i].clone(), v[1 + i].clone()))
                .collect();
            let mut sources: Vec<Tensor> = c_k.to_vec();
            sources.extend(fcaps.iter().map(|&i| caps[i].clone()));
            let g = tape.gradient_seeded(&targets, &sources)?;
            let mut next = vec![k];
            next.extend((0..nc).map(|i| g[i].clone().unwrap_or_else(|| c_k[i].zeros_like())));
            for (a, _) in fcaps.iter().enumerate() {
                let acc = &v[1 + nc + a];
                next.push(match &g[nc + a] {
                    Some(d) => acc + d,
                    None => acc.clone(),
                });
            }
            Ok(next)
        },
        &init_b,
    )?;
    let mut out: Vec<Option<Tensor>> = (0..nc)
        .map(|i| init[i].dtype().is_float().then(|| back[1 + i].clone()))
        .collect();
    let mut gcaps: Vec<Option<Tensor>> = vec![None; caps.len()];
    for (a, &i) in fcaps.iter().enumerate() {
        gcaps[i] = Some(back[1 + nc + a].clone());
    }
    out.extend(gcaps);
    Ok(out)
}

/// Inside [`crate::function`], a [`fori_loop`] of at most this many steps is unrolled
/// into the graph (each step's ops inline, the counter a constant); a longer one becomes
/// one `while` op whose body is traced once.
pub const FORI_UNROLL_MAX: i64 = 8;

/// `for i in lower..upper { vars = body(i, vars) }` (`jax.lax.fori_loop`): `i` is an i64
/// scalar; `body` returns tensors of the dtypes and shapes of `init`. Inside
/// [`crate::function`] loops of more than [`FORI_UNROLL_MAX`] steps stay a loop in the
/// graph (a `while`), shorter ones are unrolled.
///
/// # Errors
/// A body whose results differ from the carry in number, dtype or shape (the error
/// names both); errors of the body.
///
/// # Example
/// ```
/// use tapeflow::{fori_loop, DType, Tensor};
/// // 0 + 1 + 2 + 3 + 4
/// let s = fori_loop(0, 5, |i, v| Ok(vec![&v[0] + &i.cast(DType::F32)]), &[Tensor::scalar(0.0)]).unwrap();
/// assert_eq!(s[0].to_scalar().unwrap(), 10.0);
/// ```
#[track_caller]
pub fn fori_loop(
    lower: i64,
    upper: i64,
    body: impl Fn(&Tensor, &[Tensor]) -> Result<Vec<Tensor>>,
    init: &[Tensor],
) -> Result<Vec<Tensor>> {
    let loc = Location::caller();
    if context::is_tracing() && upper.saturating_sub(lower) > FORI_UNROLL_MAX {
        // one `while` op with the counter as its first carry
        let mut start = vec![Tensor::from(lower)];
        start.extend(init.iter().cloned());
        let hi = Tensor::from(upper);
        let out = while_op(
            &|v: &[Tensor]| Ok(v[0].lt(&hi)),
            &|v: &[Tensor]| {
                let next = body(&v[0], &v[1..])?;
                same_types(
                    "fori_loop",
                    "the loop carry",
                    &v[1..],
                    "the body's result",
                    &next,
                    loc,
                )?;
                let mut c = vec![&v[0] + 1i64];
                c.extend(next);
                Ok(c)
            },
            &start,
            loc,
        )?;
        return Ok(out[1..=init.len()].to_vec());
    }
    let mut vars = init.to_vec();
    for i in lower..upper {
        let next = body(&Tensor::from(i), &vars)?;
        same_types(
            "fori_loop",
            "the loop carry",
            &vars,
            "the body's result",
            &next,
            loc,
        )?;
        vars = next;
    }
    Ok(vars)
}

/// `lax.scan` over the leading axis of every tensor of `xs`: for `t` in `0..n`,
/// `(carry, y_t) = f(carry, [x[t] for x in xs])`; returns the final carry and the
/// `y_t` stacked on a new leading axis of length `n`.
///
/// Every `xs` tensor must have the same leading length `n ≥ 1`. `f` returns a carry of
/// the dtypes and shapes of `init`, and the same types of `y` at every step.
///
/// # Errors
/// No `xs`, a length 0, different leading lengths, a carry or `y` whose types change
/// (the error names both), errors of `f`.
///
/// # Example
/// ```
/// use tapeflow::{scan, Tensor};
/// // cumulative sum of [1, 2, 3]
/// let xs = Tensor::vec(&[1.0f32, 2.0, 3.0]);
/// let (carry, ys) = scan(
///     |c, x| { let s = &c[0] + &x[0]; Ok((vec![s.clone()], vec![s])) },
///     &[Tensor::scalar(0.0)],
///     &[xs],
/// )
/// .unwrap();
/// assert_eq!(carry[0].to_scalar().unwrap(), 6.0);
/// assert_eq!(ys[0].to_vec_f32().unwrap(), [1.0, 3.0, 6.0]);
/// ```
#[track_caller]
pub fn scan(
    f: impl Fn(&[Tensor], &[Tensor]) -> Result<(Vec<Tensor>, Vec<Tensor>)>,
    init: &[Tensor],
    xs: &[Tensor],
) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
    scan_impl("scan", false, f, init, xs, Location::caller())
}

/// [`scan`] walking `xs` from the last step to the first; `ys[t]` is still the output for
/// `x[t]` (the carry flows from step `n-1` down to step `0`).
///
/// # Errors
/// As [`scan`].
///
/// # Example
/// ```
/// use tapeflow::{scan_reverse, Tensor};
/// // suffix sums of [1, 2, 3]
/// let xs = Tensor::vec(&[1.0f32, 2.0, 3.0]);
/// let (_, ys) = scan_reverse(
///     |c, x| { let s = &c[0] + &x[0]; Ok((vec![s.clone()], vec![s])) },
///     &[Tensor::scalar(0.0)],
///     &[xs],
/// )
/// .unwrap();
/// assert_eq!(ys[0].to_vec_f32().unwrap(), [6.0, 5.0, 3.0]);
/// ```
#[track_caller]
pub fn scan_reverse(
    f: impl Fn(&[Tensor], &[Tensor]) -> Result<(Vec<Tensor>, Vec<Tensor>)>,
    init: &[Tensor],
    xs: &[Tensor],
) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
    scan_impl("scan_reverse", true, f, init, xs, Location::caller())
}

/// The common leading length of `xs`.
fn scan_length(op: &'static str, xs: &[Tensor], loc: Loc) -> Result<usize> {
    let Some(first) = xs.first() else {
        return Err(Error::op(
            op,
            "needs at least one tensor in xs to scan over",
            loc,
        ));
    };
    let n = match first.shape().first() {
        Some(&n) => n,
        None => {
            return Err(Error::op(
                op,
                format!(
                    "xs[0] is {}: scanned tensors need a leading axis",
                    ty(first)
                ),
                loc,
            ))
        }
    };
    for (i, x) in xs.iter().enumerate() {
        if x.shape().first() != Some(&n) {
            return Err(Error::op(
                op,
                format!(
                    "xs[0] is {} but xs[{i}] is {}: every scanned tensor needs the same leading length",
                    ty(first),
                    ty(x)
                ),
                loc,
            ));
        }
    }
    if n == 0 {
        return Err(Error::op(
            op,
            format!("xs[0] is {}: a scan needs at least one step", ty(first)),
            loc,
        ));
    }
    Ok(n)
}

fn scan_impl(
    op: &'static str,
    reverse: bool,
    f: impl Fn(&[Tensor], &[Tensor]) -> Result<(Vec<Tensor>, Vec<Tensor>)>,
    init: &[Tensor],
    xs: &[Tensor],
    loc: Loc,
) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
    let n = scan_length(op, xs, loc)?;
    if context::is_tracing() {
        return traced::scan_op(op, reverse, f, init, xs, n, loc);
    }
    let mut carry = init.to_vec();
    let mut ys: Vec<Option<Vec<Tensor>>> = vec![None; n];
    let mut first_ys: Option<Vec<Tensor>> = None;
    for k in 0..n {
        let t = if reverse { n - 1 - k } else { k };
        let x_t: Vec<Tensor> = xs
            .iter()
            .map(|x| x.slice_axis(0, t, t + 1).squeeze(0))
            .collect();
        let (next, y) = f(&carry, &x_t)?;
        same_types(op, "the carry", &carry, "the body's carry", &next, loc)?;
        match &first_ys {
            Some(y0) => same_types(
                op,
                "the first step's ys",
                y0,
                &format!("step {t}'s ys"),
                &y,
                loc,
            )?,
            None => first_ys = Some(y.clone()),
        }
        carry = next;
        ys[t] = Some(y);
    }
    let ys: Vec<Vec<Tensor>> = ys.into_iter().map(|y| y.expect("every step ran")).collect();
    let width = ys[0].len();
    let stacked = (0..width)
        .map(|j| {
            let parts: Vec<&Tensor> = ys.iter().map(|y| &y[j]).collect();
            Tensor::stack(&parts)
        })
        .collect();
    Ok((carry, stacked))
}

impl Tensor {
    /// Joins tensors of one type along a new leading axis: `n` tensors of shape `s`
    /// make one of shape `[n, ..s]` (`tf.stack(parts, axis=0)`).
    ///
    /// # Panics
    /// Eagerly, when `parts` is empty or the parts differ in dtype or shape (as
    /// `concat`); inside a traced function the trace fails instead.
    ///
    /// # Example
    /// ```
    /// use tapeflow::Tensor;
    /// let s = Tensor::stack(&[&Tensor::vec(&[1.0f32, 2.0]), &Tensor::vec(&[3.0f32, 4.0])]);
    /// assert_eq!(s.shape(), &[2, 2]);
    /// ```
    #[track_caller]
    pub fn stack(parts: &[&Tensor]) -> Tensor {
        let rows: Vec<Tensor> = parts.iter().map(|p| p.expand_dims(0)).collect();
        let refs: Vec<&Tensor> = rows.iter().collect();
        Tensor::concat(&refs, 0)
    }

    /// The slices along the leading axis: `[n, ..s]` becomes `n` tensors of shape `s`
    /// (`tf.unstack(x, axis=0)`; the inverse of [`Tensor::stack`]).
    ///
    /// # Panics
    /// Eagerly, on a scalar; inside a traced function the trace fails instead.
    ///
    /// # Example
    /// ```
    /// use tapeflow::Tensor;
    /// let rows = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], &[2, 2]).unwrap().unstack();
    /// assert_eq!(rows[1].to_vec_f32().unwrap(), [3.0, 4.0]);
    /// ```
    #[track_caller]
    pub fn unstack(&self) -> Vec<Tensor> {
        let n = self.shape().first().copied().unwrap_or(1);
        (0..n)
            .map(|t| self.slice_axis(0, t, t + 1).squeeze(0))
            .collect()
    }
}
