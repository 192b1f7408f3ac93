use tapeflow::*;

#[test]
fn smoke() {
    let x = Tensor::scalar(3.0);
    let tape = GradientTape::new();
    let y = tape.record(|| {
        tape.watch(&x);
        &x * &x
    });
    assert_eq!(tape.gradient(&y, &x).unwrap().to_scalar().unwrap(), 6.0);
    assert!(tape.gradient(&y, &x).is_err());

    // nested
    let x = Tensor::scalar(4.0);
    let t1 = GradientTape::new();
    let t2 = GradientTape::new();
    let d1 = t1.record(|| {
        t1.watch(&x);
        let y = t2.record(|| {
            t2.watch(&x);
            &x * &x
        });
        t2.gradient(&y, &x).unwrap()
    });
    assert_eq!(d1.to_scalar().unwrap(), 8.0);
    assert_eq!(t1.gradient(&d1, &x).unwrap().to_scalar().unwrap(), 2.0);

    // function with variable and tape inside
    let w = Variable::named("w", Tensor::vec(&[1.0f32, 2.0]));
    let w2 = w.clone();
    let step = function(move |x: &Tensor| {
        let tape = GradientTape::new();
        let loss = tape.record(|| (x * &w2.read()).sum_all());
        let g = tape.gradient(&loss, &w2)?;
        w2.assign_sub(&(g * 0.5));
        Ok(loss)
    });
    let l = step.call(&Tensor::vec(&[1.0f32, 1.0])).unwrap();
    assert_eq!(l.to_scalar().unwrap(), 3.0);
    assert_eq!(w.value().to_vec_f32().unwrap(), vec![0.5, 1.5]);
    let l = step.call(&Tensor::vec(&[1.0f32, 1.0])).unwrap();
    assert_eq!(l.to_scalar().unwrap(), 2.0);
    assert_eq!(step.trace_count(), 1);
    let c = step.concrete(&[&Tensor::vec(&[1.0f32, 1.0])]).unwrap();
    println!("{}", c.text());
    let bad = step.call(&Tensor::vec(&[1.0f32, 1.0, 1.0]));
    println!("{:?}", bad.err());
}
