//! The constants-and-variables snippets of the TF2 tutorials, in tapeflow.
//!
//! `cargo run --example basics`

use tapeflow::{DType, Tensor, Variable};

fn main() {
    // tf.constant(3.0)
    let scalar = Tensor::scalar(3.0);
    println!("scalar = {scalar}");
    // tf.constant([1.0, 2.0, 3.0])
    let vector = Tensor::vec(&[1.0f32, 2.0, 3.0]);
    println!("vector = {vector}");
    // tf.ones((2, 2))
    let ones = Tensor::ones(&[2, 2]);
    println!("ones(2,2) = {ones}");
    // tf.Variable(0.0)
    let v = Variable::named("v", Tensor::scalar(0.0));
    println!("zero variable = {v}");
    v.assign_add(&Tensor::scalar(1.5));
    println!("after assign_add(1.5) = {v}");
    v.assign_sub(&Tensor::scalar(0.5));
    println!("after assign_sub(0.5) = {v}");
    // a little arithmetic with broadcasting
    let m = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], &[2, 2]).expect("4 elements fill 2x2");
    println!("m + vector[..2] = {}", &m + &Tensor::vec(&[10.0f32, 20.0]));
    println!("m @ m = {}", m.matmul(&m));
    println!("argmax(m, -1) = {}", m.argmax(-1));
    println!(
        "random normal (seed 0) = {}",
        Tensor::random_normal(&[3], 0.0, 1.0, 0, DType::F32)
    );
}
