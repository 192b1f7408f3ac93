//! Linear regression `Y = a·X + b`, ported from the TF2 GradientTape tutorial: first
//! plain gradient descent with a persistent tape and `assign_sub`, then the same fit
//! with a `Dense(1)` model (zero-initialized) and Adam(0.07), printing the loss per epoch.
//! It opens with the tutorial's warm-ups: dy/dx of x² at 4 and the second derivative
//! by nested tapes.
//!
//! ```text
//! cargo run --release --example linear_regression
//! ```

use tapeflow::nn::{Adam, Dense, Initializer, Optimizer, Sequential};
use tapeflow::{DType, GradientTape, Result, Tensor, Variable};

/// `loss_fn(y_true, y_pred) = reduce_sum(square(y_true - y_pred))`
fn loss_fn(y_true: &Tensor, y_pred: &Tensor) -> Tensor {
    (y_true - y_pred).square().sum_all()
}

fn main() -> Result<()> {
    // y = x², dy/dx at x = 4 is 8; d²y/dx² is 2
    let x = Tensor::scalar(4.0);
    let tape = GradientTape::new();
    let y = tape.record(|| {
        tape.watch(&x);
        x.powf(2.0)
    });
    println!("dy/dx = {}", tape.gradient(&y, &x)?);
    let t2 = GradientTape::new();
    let d2y_dx2 = {
        let dy_dx = t2.record(|| {
            t2.watch(&x);
            let t = GradientTape::new();
            let y = t.record(|| {
                t.watch(&x);
                x.powf(2.0)
            });
            t.gradient(&y, &x)
        })?;
        t2.gradient(&dy_dx, &x)?
    };
    println!("d2y/dx2 = {d2y_dx2}");

    // data: Y = 3·X + 2 plus a little noise
    let n = 20;
    let xs = Tensor::random_uniform(&[n], 0.0, 2.0, 1, DType::F32);
    let noise = Tensor::random_normal(&[n], 0.0, 0.1, 2, DType::F32);
    let ys = &xs * 3.0f32 + 2.0f32 + noise;

    // a = tf.Variable(0.), b = tf.Variable(0.)
    let a = Variable::named("a", Tensor::scalar(0.0));
    let b = Variable::named("b", Tensor::scalar(0.0));
    let learning_rate = 0.001f32;
    println!("gradient descent with assign_sub:");
    for epoch in 0..200 {
        let tape = GradientTape::persistent();
        let loss = tape.record(|| {
            let y_pred = &xs * &a.read() + b.read();
            loss_fn(&ys, &y_pred)
        });
        let a_gradient = tape.gradient(&loss, &a)?;
        let b_gradient = tape.gradient(&loss, &b)?;
        a.assign_sub(&(a_gradient * learning_rate));
        b.assign_sub(&(b_gradient * learning_rate));
        if epoch < 5 || epoch % 40 == 39 {
            println!("Epoch: {epoch:>3}  Loss: {:.6}", loss.to_scalar()?);
        }
    }
    println!(
        "a = {:.4}, b = {:.4} (data made with a = 3, b = 2)",
        a.value().to_scalar()?,
        b.value().to_scalar()?
    );

    // model = Sequential([Dense(1, kernel_initializer='zeros', bias_initializer='zeros')])
    let dense = Dense::new(1)
        .kernel_initializer(Initializer::Zeros)
        .bias_initializer(Initializer::Zeros);
    let model = Sequential::new().add(dense);
    let optimizer = Adam::new(0.07);
    println!("Dense(1) with Adam(0.07):");
    for epoch in 0..100 {
        let tape = GradientTape::persistent();
        let loss = tape.record(|| -> Result<Tensor> {
            let y_pred = model.call(&xs.expand_dims(-1), true)?;
            Ok(loss_fn(&ys.expand_dims(-1), &y_pred))
        })?;
        let variables = model.trainable_variables();
        let gradients = tape.gradient(&loss, &variables)?;
        optimizer.apply_gradients(&gradients, &variables)?;
        if epoch < 5 || epoch % 20 == 19 {
            println!("Epoch: {epoch:>3}  Loss: {:.6}", loss.to_scalar()?);
        }
    }
    let vars = model.trainable_variables();
    println!(
        "kernel = {:.4}, bias = {:.4}",
        vars[0].value().to_scalar()?,
        vars[1].value().to_scalar()?
    );
    Ok(())
}
