//! Forward mode and second-order helpers: `jvp`, `jacobian`, `hessian`, `hvp`.
//!
//! Forward mode is derived from reverse mode by the linear-transpose identity: the VJP
//! `u ↦ Jᵀu` is linear in `u`, so for any `u`, `J·t = ∇ᵤ ⟨Jᵀu, t⟩`. `jvp` records the
//! VJP with a dummy cotangent `u = 0` on an outer tape and differentiates `⟨Jᵀu, t⟩`
//! with respect to `u`. Every op therefore has a JVP as soon as it has a VJP, eagerly
//! and inside traced functions; the optimizer folds the zeros away in compiled graphs.
//! The cost is one extra backward pass compared with dedicated JVP rules.

use super::tape::GradientTape;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

fn inner_sum(gs: &[Option<Tensor>], ts: &[Tensor]) -> Option<Tensor> {
    gs.iter()
        .zip(ts)
        .filter_map(|(g, t)| g.as_ref().map(|g| (g * t).sum_all()))
        .reduce(|a, b| &a + &b)
}

/// `(f(x), J_f(x)·t)`: the value and the directional derivative of `f` at `primals`
/// along `tangents` (forward mode, like `jax.jvp` / TF's `ForwardAccumulator`).
pub fn jvp(
    f: impl Fn(&[Tensor]) -> Tensor,
    primals: &[Tensor],
    tangents: &[Tensor],
) -> Result<(Tensor, Tensor)> {
    if primals.len() != tangents.len() {
        return Err(Error::Invalid(format!(
            "jvp: {} primals but {} tangents",
            primals.len(),
            tangents.len()
        )));
    }
    for (p, t) in primals.iter().zip(tangents) {
        if p.shape() != t.shape() || p.dtype() != t.dtype() {
            return Err(Error::Invalid(format!(
                "jvp: tangent {} does not match primal {}",
                crate::tensor::type_str(t.dtype(), t.shape()),
                crate::tensor::type_str(p.dtype(), p.shape())
            )));
        }
    }
    let outer = GradientTape::persistent();
    let (y, s, u) = outer.record(|| -> Result<_> {
        let inner = GradientTape::new();
        let y = inner.record(|| {
            for p in primals {
                inner.watch(p);
            }
            f(primals)
        });
        let u = y.zeros_like();
        outer.watch(&u);
        let gs = inner
            .gradient_with(&y, primals, Some(&u))
            .unwrap_or_else(|_| vec![None; primals.len()]);
        Ok((y, inner_sum(&gs, tangents), u))
    })?;
    let ty = match s {
        Some(s) => outer.gradient(&s, &u).unwrap_or_else(|_| y.zeros_like()),
        None => y.zeros_like(),
    };
    Ok((y, ty))
}

/// The gradient of a scalar function (`jax.grad`): one tensor per input.
pub fn gradient(f: impl Fn(&[Tensor]) -> Tensor, xs: &[Tensor]) -> Result<Vec<Tensor>> {
    let tape = GradientTape::new().unconnected_zeros();
    let y = tape.record(|| {
        for x in xs {
            tape.watch(x);
        }
        f(xs)
    });
    Ok(tape
        .gradient(&y, xs)?
        .into_iter()
        .map(|g| g.expect("zeros for unconnected"))
        .collect())
}

/// The Jacobian of `f` at `x`, shaped `f(x).shape ++ x.shape`.
pub fn jacobian(f: impl Fn(&Tensor) -> Tensor, x: &Tensor) -> Result<Tensor> {
    let tape = GradientTape::persistent();
    let y = tape.record(|| {
        tape.watch(x);
        f(x)
    });
    tape.jacobian(&y, x)
}

/// The Hessian of a scalar `f` at `x`, shaped `x.shape ++ x.shape` (reverse over reverse).
pub fn hessian(f: impl Fn(&Tensor) -> Tensor, x: &Tensor) -> Result<Tensor> {
    let outer = GradientTape::persistent();
    let g = outer.record(|| -> Result<Tensor> {
        outer.watch(x);
        let inner = GradientTape::new();
        let y = inner.record(|| {
            inner.watch(x);
            f(x)
        });
        inner.gradient(&y, x)
    })?;
    outer.jacobian(&g, x)
}

/// Hessian-vector product `H(x)·v` of a scalar `f`, forward over reverse, without
/// forming the Hessian.
pub fn hvp(f: impl Fn(&Tensor) -> Tensor, x: &Tensor, v: &Tensor) -> Result<Tensor> {
    let grad_f = |xs: &[Tensor]| {
        let t = GradientTape::new().unconnected_zeros();
        let y = t.record(|| {
            t.watch(&xs[0]);
            f(&xs[0])
        });
        t.gradient(&y, &xs[0]).expect("zeros for unconnected")
    };
    Ok(jvp(grad_f, std::slice::from_ref(x), std::slice::from_ref(v))?.1)
}
