use std::time::Instant;
use tapeflow::{function, DType, GradientTape, Tensor, Variable};
fn main() {
    let dense = |i: usize, o: usize, s: u64| {
        vec![
            Variable::new(Tensor::random_uniform(&[i, o], -0.1, 0.1, s, DType::F32)),
            Variable::new(Tensor::zeros(&[o])),
        ]
    };
    let mut vars = dense(784, 64, 1);
    vars.extend(dense(64, 64, 2));
    vars.extend(dense(64, 10, 3));
    let x = Tensor::random_uniform(&[64, 784], 0.0, 1.0, 5, DType::F32);
    let y = Tensor::random_uniform(&[64], 0.0, 10.0, 6, DType::F64).cast(DType::I64);
    let vs = vars.clone();
    let step = move |x: &Tensor, y: &Tensor| -> tapeflow::Result<Tensor> {
        let tape = GradientTape::new();
        let loss = tape.record(|| {
            let v: Vec<Tensor> = vs.iter().map(|v| v.read()).collect();
            let h = (x.matmul(&v[0]) + &v[1]).relu();
            let h = (h.matmul(&v[2]) + &v[3]).relu();
            let logits = h.matmul(&v[4]) + &v[5];
            let picked = (y.one_hot(10, DType::F32) * &logits).sum(&[-1], false);
            (logits.logsumexp(-1, false) - picked).mean_all()
        });
        let g = tape.gradient(&loss, &vs)?;
        for (v, g) in vs.iter().zip(g) {
            v.assign_sub(&(g.unwrap() * 1e-3));
        }
        Ok(loss)
    };
    for _ in 0..20 {
        step(&x, &y).unwrap();
    }
    let t = Instant::now();
    for _ in 0..200 {
        step(&x, &y).unwrap();
    }
    let eager = t.elapsed().as_secs_f64() / 200.0;
    let t = Instant::now();
    let f = function(step);
    f.call(&x, &y).unwrap();
    let compile = t.elapsed().as_secs_f64();
    for _ in 0..20 {
        f.call(&x, &y).unwrap();
    }
    let t = Instant::now();
    for _ in 0..200 {
        f.call(&x, &y).unwrap();
    }
    let comp = t.elapsed().as_secs_f64() / 200.0;
    if std::env::var("DUMP").is_ok() {
        println!("{}", f.concrete(&[&x, &y]).unwrap().text());
    }
    println!(
        "eager {:.1} us, compiled {:.1} us, compile {:.1} ms, nodes {}",
        eager * 1e6,
        comp * 1e6,
        compile * 1e3,
        f.concrete(&[&x, &y]).unwrap().graph().live_len()
    );
}
#[allow(dead_code)]
fn dump() {}
