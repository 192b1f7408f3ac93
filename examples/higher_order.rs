//! Derivatives of order 1..4 of f(x) = sin(x)·e^(−x²) at x = 0.5 by nested tapes, next
//! to their closed forms, and the size of each derivative graph when traced.
//!
//! `cargo run --example higher_order`

use tapeflow::{function, DType, GradientTape, Result, Tensor};

/// Closed forms of the n-th derivative of sin(x)·e^(−x²).
fn closed_form(x: f64, order: usize) -> f64 {
    let (s, c, e) = (x.sin(), x.cos(), (-x * x).exp());
    e * match order {
        1 => c - 2.0 * x * s,
        2 => -3.0 * s - 4.0 * x * c + 4.0 * x * x * s,
        3 => -7.0 * c + 18.0 * x * s + 12.0 * x * x * c - 8.0 * x.powi(3) * s,
        4 => {
            25.0 * s + 56.0 * x * c - 72.0 * x * x * s - 32.0 * x.powi(3) * c + 16.0 * x.powi(4) * s
        }
        _ => unreachable!("closed forms up to order 4"),
    }
}

/// The `order`-th derivative of f at `x`, by `order` nested tapes.
fn derivative(x: &Tensor, order: usize) -> Tensor {
    if order == 0 {
        return x.sin() * (-(x * x)).exp();
    }
    let tape = GradientTape::new();
    let y = tape.record(|| {
        tape.watch(x);
        derivative(x, order - 1)
    });
    tape.gradient(&y, x).expect("connected")
}

fn main() -> Result<()> {
    let x0 = 0.5;
    println!(
        "{:>5} {:>22} {:>22} {:>10} {:>12} {:>12}",
        "order", "tapeflow", "closed form", "|error|", "traced nodes", "optimized"
    );
    for order in 1..=4 {
        let got = derivative(&Tensor::scalar_of(DType::F64, x0), order).to_scalar()?;
        let expect = closed_form(x0, order);
        let f = function(move |x: &Tensor| Ok(derivative(x, order)));
        let c = f.concrete(&[&Tensor::scalar_of(DType::F64, x0)])?;
        println!(
            "{order:>5} {got:>22.16} {expect:>22.16} {:>10.1e} {:>12} {:>12}",
            (got - expect).abs(),
            c.traced_graph().live_len(),
            c.graph().live_len()
        );
    }
    Ok(())
}
