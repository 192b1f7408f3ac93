//! `check_gradients`: symbolic derivatives against central finite differences, any
//! order, reverse or forward mode, eager or traced (like `jax.test_util.check_grads`).
//!
//! Order `k` is checked through scalar projections, so the cost stays one directional
//! derivative per check: with random directions `c, u₁, …, v` (seeded),
//! `h₀(x) = ⟨f(x), c⟩`, `hⱼ(x) = ⟨∇hⱼ₋₁(x), uⱼ⟩` (reverse) or `jvp(hⱼ₋₁, x, uⱼ)`
//! (forward), and the check compares `⟨∇h_{k-1}(x), v⟩` (or `jvp(h_{k-1}, x, v)`) with
//! `(h_{k-1}(x+εv) − h_{k-1}(x−εv)) / 2ε`. Use f64 inputs.

use super::forward::jvp;
use super::tape::GradientTape;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Which differentiation mode computes the symbolic side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Reverse mode (tapes / VJPs).
    Reverse,
    /// Forward mode (`jvp`).
    Forward,
}

/// Settings of a gradient check.
#[derive(Clone, Debug)]
pub struct GradCheck {
    /// Derivative order (≥ 1).
    pub order: usize,
    /// Reverse or forward mode.
    pub mode: Mode,
    /// Run the symbolic side inside a traced, compiled function instead of eagerly.
    pub traced: bool,
    /// Finite-difference step.
    pub eps: f64,
    /// Relative tolerance.
    pub rtol: f64,
    /// Absolute tolerance.
    pub atol: f64,
    /// Seed of the random directions.
    pub seed: u64,
}

impl Default for GradCheck {
    fn default() -> Self {
        GradCheck {
            order: 1,
            mode: Mode::Reverse,
            traced: false,
            eps: 1e-6,
            rtol: 1e-5,
            atol: 1e-7,
            seed: 0,
        }
    }
}

/// The outcome of a check that passed.
#[derive(Clone, Debug)]
pub struct GradCheckReport {
    /// The symbolic directional derivative.
    pub symbolic: f64,
    /// The finite-difference estimate.
    pub numeric: f64,
}

fn direction(like: &Tensor, seed: u64) -> Tensor {
    Tensor::random_normal(like.shape(), 0.0, 1.0, seed, like.dtype())
}

/// `h_j` of the module docs, evaluated at `xs` (scalar tensor).
fn h(
    f: &dyn Fn(&[Tensor]) -> Tensor,
    xs: &[Tensor],
    j: usize,
    cfg: &GradCheck,
    c: &Tensor,
) -> Tensor {
    if j == 0 {
        return (f(xs) * c).sum_all();
    }
    let us: Vec<Tensor> = xs
        .iter()
        .enumerate()
        .map(|(i, x)| direction(x, cfg.seed + 100 * j as u64 + i as u64))
        .collect();
    directional(&|x: &[Tensor]| h(f, x, j - 1, cfg, c), xs, &us, cfg.mode)
}

/// `⟨∇g(xs), us⟩` (reverse) or `jvp(g, xs, us)` (forward).
fn directional(
    g: &dyn Fn(&[Tensor]) -> Tensor,
    xs: &[Tensor],
    us: &[Tensor],
    mode: Mode,
) -> Tensor {
    match mode {
        Mode::Reverse => {
            let tape = GradientTape::new().unconnected_zeros();
            let y = tape.record(|| {
                for x in xs {
                    tape.watch(x);
                }
                g(xs)
            });
            let gs = tape.gradient(&y, xs).expect("zeros for unconnected");
            gs.iter()
                .zip(us)
                .map(|(gr, u)| (gr.as_ref().expect("zeros") * u).sum_all())
                .reduce(|a, b| &a + &b)
                .unwrap_or_else(|| Tensor::scalar_of(xs[0].dtype(), 0.0))
        }
        Mode::Forward => jvp(g, xs, us).expect("shapes match").1,
    }
}

/// Checks the `cfg.order`-th derivative of `f` at `xs`; `Err` describes a mismatch.
pub fn check_gradients(
    f: impl Fn(&[Tensor]) -> Tensor,
    xs: &[Tensor],
    cfg: &GradCheck,
) -> Result<GradCheckReport> {
    if cfg.order == 0 {
        return Err(Error::Invalid("check_gradients: order must be ≥ 1".into()));
    }
    let y0 = f(xs);
    let c = direction(&y0, cfg.seed + 7);
    let k = cfg.order - 1;
    let vs: Vec<Tensor> = xs
        .iter()
        .enumerate()
        .map(|(i, x)| direction(x, cfg.seed + 1000 + i as u64))
        .collect();
    let symbolic = if cfg.traced {
        let (fr, cr, vr) = (&f, &c, &vs);
        let traced = crate::trace::function(move |args: &[Tensor]| -> Result<Tensor> {
            Ok(directional(
                &|x: &[Tensor]| h(fr, x, k, cfg, cr),
                args,
                vr,
                cfg.mode,
            ))
        });
        let refs: Vec<&Tensor> = xs.iter().collect();
        traced.call_slice(&refs)?.to_scalar()?
    } else {
        directional(&|x: &[Tensor]| h(&f, x, k, cfg, &c), xs, &vs, cfg.mode).to_scalar()?
    };
    let shifted = |sign: f64| -> Result<f64> {
        let xe: Vec<Tensor> = xs
            .iter()
            .zip(&vs)
            .map(|(x, v)| x + &(v * (sign * cfg.eps)))
            .collect();
        h(&f, &xe, k, cfg, &c).to_scalar()
    };
    let numeric = (shifted(1.0)? - shifted(-1.0)?) / (2.0 * cfg.eps);
    let err = (symbolic - numeric).abs();
    let within = err <= cfg.atol + cfg.rtol * symbolic.abs().max(numeric.abs());
    if !within {
        return Err(Error::Invalid(format!(
            "gradient check failed (order {}, {:?}{}): symbolic {symbolic:.10e} vs numeric {numeric:.10e} (error {err:.3e})",
            cfg.order,
            cfg.mode,
            if cfg.traced { ", traced" } else { "" }
        )));
    }
    Ok(GradCheckReport { symbolic, numeric })
}
