//! The GradientTape snippets of the TF2 tutorials, each printed as `name = value`.
//!
//! `cargo run --example gradient_tape`

use tapeflow::{DType, GradientTape, Result, Tensor, Variable};

fn main() -> Result<()> {
    // tape.watch on a constant: y = 2x at x = 1
    let x = Tensor::scalar(1.0);
    let tape = GradientTape::new();
    let y = tape.record(|| {
        tape.watch(&x);
        &x * 2.0
    });
    println!("dy_dx = {}", tape.gradient(&y, &x)?.to_scalar()?);

    // a persistent tape answers several gradient calls: y = 2x, y1 = x³ at x = 2
    let x = Tensor::scalar(2.0);
    let tape = GradientTape::persistent();
    let (y, y1) = tape.record(|| {
        tape.watch(&x);
        (&x * 2.0, &x * &x * &x)
    });
    println!("dy_dx = {}", tape.gradient(&y, &x)?.to_scalar()?);
    println!("dy1_dx = {}", tape.gradient(&y1, &x)?.to_scalar()?);

    // nested tapes: the second derivative of y = x² at x = 4
    let x = Tensor::scalar(4.0);
    let t1 = GradientTape::new();
    let dy_dx = t1.record(|| -> Result<Tensor> {
        t1.watch(&x);
        let t2 = GradientTape::new();
        let y = t2.record(|| {
            t2.watch(&x);
            &x * &x
        });
        t2.gradient(&y, &x)
    })?;
    let d2y_dx2 = t1.gradient(&dy_dx, &x)?;
    println!("dy_dx = {}", dy_dx.to_scalar()?);
    println!("d2y_dx2 = {}", d2y_dx2.to_scalar()?);

    // a non-persistent tape answers once
    let tape = GradientTape::new();
    let y = tape.record(|| {
        tape.watch(&x);
        &x * &x
    });
    tape.gradient(&y, &x)?;
    match tape.gradient(&y, &x) {
        Err(e) => println!("second_call = Err({e})"),
        Ok(_) => unreachable!("a non-persistent tape answers once"),
    }

    // trainable variables are watched automatically
    let w = Variable::named("w", Tensor::vec(&[1.0f32, 2.0]));
    let tape = GradientTape::new();
    let loss = tape.record(|| (w.read() * w.read()).sum_all());
    println!("dloss_dw = {}", tape.gradient(&loss, &w)?);

    // linear regression y = a·X + b by plain gradient descent with assign_sub
    let xs = Tensor::random_normal(&[1000], 0.0, 1.0, 1, DType::F32);
    let ys = &xs * 3.0 + 2.0;
    let a = Variable::named("a", Tensor::scalar(0.0));
    let b = Variable::named("b", Tensor::scalar(0.0));
    for epoch in 0..10 {
        let tape = GradientTape::persistent();
        let loss = tape.record(|| (&a.read() * &xs + &b.read() - &ys).square().mean_all());
        let (da, db) = (tape.gradient(&loss, &a)?, tape.gradient(&loss, &b)?);
        a.assign_sub(&(da * 0.1));
        b.assign_sub(&(db * 0.1));
        println!("epoch_{epoch}_loss = {:.6}", loss.to_scalar()?);
    }
    println!("a = {:.4}", a.value().to_scalar()?);
    println!("b = {:.4}", b.value().to_scalar()?);
    Ok(())
}
