//! tf.function semantics: one trace per signature, retrace reasons, variable updates in
//! place, side effects at trace time only, errors as `Err` that never abort.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tapeflow::{function, DType, Error, Tensor, Variable};

#[test]
fn same_signature_traces_once() {
    let traces = Arc::new(AtomicUsize::new(0));
    let t2 = traces.clone();
    let f = function(move |x: &Tensor| {
        t2.fetch_add(1, Ordering::SeqCst); // a side effect: runs at trace time only
        Ok(x * 2.0)
    });
    for i in 0..5 {
        let y = f.call(&Tensor::vec(&[i as f64, 1.0])).unwrap();
        assert_eq!(y.to_vec_f64().unwrap(), vec![2.0 * i as f64, 2.0]);
    }
    assert_eq!(f.trace_count(), 1);
    assert_eq!(traces.load(Ordering::SeqCst), 1);
    assert!(f.retrace_reasons().is_empty());
}

#[test]
fn new_shape_or_dtype_retraces_with_a_reason() {
    // (with `reduce_retracing`, the default, a changed length is generalized instead:
    // tests/shape_polymorphism.rs)
    let f =
        function(|x: &Tensor, y: &Tensor| Ok(x.sum_all() + y.sum_all())).reduce_retracing(false);
    f.call(&Tensor::zeros(&[2]), &Tensor::zeros(&[3])).unwrap();
    f.call(&Tensor::zeros(&[4]), &Tensor::zeros(&[3])).unwrap();
    f.call(
        &Tensor::zeros(&[4]),
        &Tensor::zeros(&[3]).cast(DType::F64).cast(DType::F32),
    )
    .unwrap();
    assert_eq!(f.trace_count(), 2);
    let reasons = f.retrace_reasons();
    assert_eq!(reasons.len(), 1);
    assert!(
        reasons[0].contains("argument 0 changed from f32[2] to f32[4]"),
        "{}",
        reasons[0]
    );
    assert!(reasons[0].contains("tests/function.rs"), "{}", reasons[0]);
    // going back to a cached signature does not retrace
    f.call(&Tensor::zeros(&[2]), &Tensor::zeros(&[3])).unwrap();
    assert_eq!(f.trace_count(), 2);
    let g = function(|x: &Tensor| Ok(x.sum_all().cast(DType::F64)));
    g.call(&Tensor::zeros(&[2])).unwrap();
    g.call(&Tensor::zeros(&[2]).cast(DType::F64)).unwrap();
    assert!(g.retrace_reasons()[0].contains("from f32[2] to f64[2]"));
}

#[test]
fn assign_sub_updates_the_variable_every_call() {
    let v = Variable::named("counter", Tensor::vec(&[10.0f32, 20.0]));
    let v2 = v.clone();
    let f = function(move |d: &Tensor| {
        v2.assign_sub(d);
        Ok(v2.read() * 1.0)
    });
    let d = Tensor::vec(&[1.0f32, 2.0]);
    assert_eq!(f.call(&d).unwrap().to_vec_f32().unwrap(), vec![9.0, 18.0]);
    assert_eq!(v.value().to_vec_f32().unwrap(), vec![9.0, 18.0]);
    f.call(&d).unwrap();
    assert_eq!(v.value().to_vec_f32().unwrap(), vec![8.0, 16.0]);
    assert_eq!(f.trace_count(), 1);
}

#[test]
fn assign_add_and_assign_in_one_function() {
    let a = Variable::named("a", Tensor::scalar(1.0));
    let b = Variable::named("b", Tensor::scalar(5.0));
    let (a2, b2) = (a.clone(), b.clone());
    let f = function(move || {
        a2.assign_add(&Tensor::scalar(1.0));
        a2.assign_add(&Tensor::scalar(1.0)); // reads see the earlier assign
        b2.assign(&(a2.read() * 10.0));
        Ok(())
    });
    f.call().unwrap();
    assert_eq!(a.value().to_scalar().unwrap(), 3.0);
    assert_eq!(b.value().to_scalar().unwrap(), 30.0);
    f.call().unwrap();
    assert_eq!(a.value().to_scalar().unwrap(), 5.0);
    assert_eq!(b.value().to_scalar().unwrap(), 50.0);
}

#[test]
fn wrong_shape_is_an_err_naming_op_shapes_and_line_and_the_process_goes_on() {
    let w = Variable::named("w", Tensor::zeros(&[784, 64]));
    let f = function(move |x: &Tensor| Ok(x.matmul(&w.read())));
    let err = f.call(&Tensor::zeros(&[8, 100])).unwrap_err();
    match &err {
        Error::Op { op, msg, loc } => {
            assert_eq!(*op, "matmul");
            assert!(msg.contains("f32[8,100], f32[784,64]"), "{msg}");
            assert!(loc.starts_with("tests/function.rs:"), "{loc}");
        }
        e => panic!("unexpected {e}"),
    }
    // the process goes on, and the function still works for good inputs
    assert_eq!(f.call(&Tensor::zeros(&[8, 784])).unwrap().shape(), &[8, 64]);
}

#[test]
fn later_errors_do_not_hide_the_first() {
    let f = function(|x: &Tensor| {
        let bad = x + &Tensor::zeros(&[3]); // first error
        let worse = bad.matmul(x); // would fail too, but is skipped
        Ok(worse)
    });
    let err = f.call(&Tensor::zeros(&[2])).unwrap_err().to_string();
    assert!(err.starts_with("add:"), "{err}");
}

#[test]
fn assigning_the_wrong_shape_is_an_err() {
    let v = Variable::named("v", Tensor::zeros(&[2]));
    let f = function(move |x: &Tensor| {
        v.assign(x);
        Ok(())
    });
    let err = f.call(&Tensor::zeros(&[3])).unwrap_err().to_string();
    assert!(
        err.contains("assign") && err.contains("f32[3]") && err.contains("f32[2]"),
        "{err}"
    );
}

#[test]
fn a_closure_error_propagates() {
    let f =
        function(|_x: &Tensor| -> tapeflow::Result<Tensor> { Err(Error::Invalid("nope".into())) });
    assert_eq!(
        f.call(&Tensor::scalar(1.0)).unwrap_err().to_string(),
        "nope"
    );
}

#[test]
fn functions_inline_into_other_traces() {
    let inner = Arc::new(function(|x: &Tensor| Ok(x.exp())));
    let i2 = inner.clone();
    let outer = function(move |x: &Tensor| Ok(i2.call(x)? + 1.0));
    let y = outer.call(&Tensor::scalar(0.0)).unwrap();
    assert_eq!(y.to_scalar().unwrap(), 2.0);
    assert_eq!(inner.trace_count(), 0);
    assert!(outer
        .concrete(&[&Tensor::scalar(0.0)])
        .unwrap()
        .text()
        .contains("exp"));
}

#[test]
fn concrete_function_is_inspectable() {
    let f = function(|x: &Tensor| Ok((x * x).sum_all()));
    let c = f.concrete(&[&Tensor::zeros(&[3])]).unwrap();
    assert!(c.text().starts_with("graph(%0: f32[3]) {"));
    assert!(c.dot().contains("digraph"));
    assert!(!c.pass_stats().is_empty());
    assert!(c.plan().peak_bytes() > 0);
    assert_eq!(f.trace_count(), 1);
}

#[test]
fn symbolic_tensor_escaping_its_trace_is_an_error() {
    let leaked = std::sync::Mutex::new(None);
    let f = function(|x: &Tensor| {
        *leaked.lock().unwrap() = Some(x.clone());
        Ok(x * 1.0)
    });
    f.call(&Tensor::scalar(1.0)).unwrap();
    let t = leaked.lock().unwrap().clone().unwrap();
    assert!(t.to_scalar().is_err());
    let g = function(move |x: &Tensor| Ok(x + &t));
    let e = g.call(&Tensor::scalar(1.0)).unwrap_err().to_string();
    assert!(e.contains("belongs to another traced function"), "{e}");
}

/// A call with the previous call's types runs what that call ran without matching the
/// cache again (a symbolic trace's instance without binding its signature again).
/// Repeated and alternating batch sizes through a declared symbolic signature, a
/// generalized trace (`reduce_retracing`) and concrete traces give every call its own
/// batch's result, and trace nothing more.
#[test]
fn repeated_and_alternating_types_run_their_own_trace() {
    use tapeflow::trace::TensorSpec;
    let body = |x: &Tensor| Ok(x.sum(&[1], false) * 2.0);
    let declared =
        tapeflow::function_with_signature(body, &[TensorSpec::new(&[None, Some(3)], DType::F32)]);
    let generalized = function(body);
    let concrete = function(body).reduce_retracing(false);
    let calls: [&dyn Fn(&Tensor) -> Tensor; 3] = [
        &|x| declared.call(x).unwrap(),
        &|x| generalized.call(x).unwrap(),
        &|x| concrete.call(x).unwrap(),
    ];
    for (k, call) in calls.iter().enumerate() {
        for n in [2usize, 2, 5, 5, 2, 7, 7, 7, 2, 5] {
            let v: Vec<f32> = (0..n * 3).map(|i| (i * n) as f32).collect();
            let x = Tensor::from_vec(v, &[n, 3]).unwrap();
            let want: Vec<f32> = (0..n)
                .map(|r| 2.0 * (0..3).map(|c| ((r * 3 + c) * n) as f32).sum::<f32>())
                .collect();
            let y = call(&x);
            assert_eq!(y.shape(), [n], "function {k}, batch {n}");
            assert_eq!(y.to_vec_f32().unwrap(), want, "function {k}, batch {n}");
        }
    }
    assert_eq!(declared.trace_count(), 1);
    // one instance per batch size: 2, 5 and 7
    let c = declared.concrete(&[&Tensor::zeros(&[4, 3])]).unwrap();
    assert_eq!(c.instance_count(), 3);
    // [2,3], then [5,3] generalizes to [?,3]: one symbolic trace serves the rest
    assert_eq!(generalized.trace_count(), 2);
    assert_eq!(concrete.trace_count(), 3);
}
