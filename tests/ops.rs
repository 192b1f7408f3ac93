//! Every op, eagerly and traced-and-run, on random inputs with broadcasting, in f32 and
//! f64: the results must be identical (the interpreter uses the eager kernels), and the
//! eager results must match naive references for a few ops.

mod common;

use common::{inputs_of, rows};
use tapeflow::{function, DType, Tensor};

fn eager_vs_traced(dtype: DType) {
    for (k, r) in rows().iter().enumerate() {
        let xs = inputs_of(r, 3 + k as u64, dtype);
        let eager = (r.f)(&xs);
        let f = r.f;
        let traced = function(move |args: &[Tensor]| Ok(f(args)));
        let refs: Vec<&Tensor> = xs.iter().collect();
        let got = traced.call_slice(&refs).unwrap();
        assert_eq!(got.dtype(), eager.dtype(), "{}", r.name);
        assert_eq!(got.shape(), eager.shape(), "{}", r.name);
        let (a, b) = (eager.to_vec_f64().unwrap(), got.to_vec_f64().unwrap());
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
                "{} {dtype}: element {i}: eager {x} vs traced {y}",
                r.name
            );
        }
    }
}

#[test]
fn every_op_eager_equals_traced_f32() {
    eager_vs_traced(DType::F32);
}

#[test]
fn every_op_eager_equals_traced_f64() {
    eager_vs_traced(DType::F64);
}

#[test]
fn integer_ops_eager_equals_traced() {
    let a = Tensor::from_vec(vec![3i64, -1, 4, 1, -5, 9], &[2, 3]).unwrap();
    let b = Tensor::vec(&[2i64, 7, -1]);
    let f = |a: &Tensor, b: &Tensor| -> Vec<Tensor> {
        vec![
            a + b,
            a - b,
            a * b,
            a.maximum(b),
            a.minimum(b),
            a.gt(b),
            a.eq(&a.scalar_like(4.0)),
            a.argmax(1),
            a.max(&[0], false),
            a.cast(DType::F32),
            a.gather(&Tensor::vec(&[2i64, 0]), 1),
            a.transpose(&[1, 0]),
            Tensor::select(&a.gt(b), a, &b.broadcast_to(&[2, 3])),
        ]
    };
    let eager = f(&a, &b);
    let traced = function(move |a: &Tensor, b: &Tensor| Ok(f(a, b)));
    let got = traced.call(&a, &b).unwrap();
    for (e, g) in eager.iter().zip(&got) {
        assert_eq!(e.dtype(), g.dtype());
        assert_eq!(e.to_vec_f64().unwrap(), g.to_vec_f64().unwrap());
    }
    assert_eq!(eager[0].to_vec_i64().unwrap(), vec![5, 6, 3, 3, 2, 8]);
    assert_eq!(eager[7].to_vec_i64().unwrap(), vec![2, 2]);
    assert_eq!(eager[10].to_vec_i64().unwrap(), vec![4, 3, 9, 1]);
}

#[test]
fn reference_values() {
    let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]).unwrap();
    assert_eq!(
        x.sum(&[0], false).to_vec_f32().unwrap(),
        vec![5.0, 7.0, 9.0]
    );
    assert_eq!(x.sum(&[1], true).shape(), &[2, 1]);
    assert_eq!(x.mean_all().to_scalar().unwrap(), 3.5);
    assert_eq!(x.max(&[-1], false).to_vec_f32().unwrap(), vec![3.0, 6.0]);
    assert_eq!(
        x.min(&[0], false).to_vec_f32().unwrap(),
        vec![1.0, 2.0, 3.0]
    );
    assert_eq!(
        x.t().to_vec_f32().unwrap(),
        vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]
    );
    let w = Tensor::from_vec(vec![1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0], &[3, 2]).unwrap();
    assert_eq!(
        x.matmul(&w).to_vec_f32().unwrap(),
        vec![4.0, 5.0, 10.0, 11.0]
    );
    let s = x.softmax(-1).sum(&[-1], false).to_vec_f32().unwrap();
    assert!(s.iter().all(|v| (v - 1.0).abs() < 1e-6));
    // stable for large logits
    let big = Tensor::vec(&[1000.0f32, 0.0]);
    assert_eq!(big.log_softmax(0).to_vec_f32().unwrap(), vec![0.0, -1000.0]);
    assert_eq!(
        Tensor::vec(&[-100.0f32]).sigmoid().to_vec_f32().unwrap()[0],
        (-100.0f32).exp() / (1.0 + (-100.0f32).exp())
    );
    assert_eq!(
        x.slice_axis(1, 1, 3).to_vec_f32().unwrap(),
        vec![2.0, 3.0, 5.0, 6.0]
    );
    assert_eq!(Tensor::concat(&[&x, &x], 0).shape(), &[4, 3]);
    assert_eq!(x.expand_dims(0).shape(), &[1, 2, 3]);
    assert_eq!(x.expand_dims(-1).shape(), &[2, 3, 1]);
    assert_eq!(x.expand_dims(0).squeeze(0).shape(), &[2, 3]);
    assert_eq!(
        Tensor::vec(&[2i64, 0])
            .one_hot(3, DType::F32)
            .to_vec_f32()
            .unwrap(),
        vec![0.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    );
    assert_eq!(
        Tensor::arange(0, 4, DType::I64).to_vec_i64().unwrap(),
        vec![0, 1, 2, 3]
    );
    assert_eq!((2.0f32 - &x).to_vec_f32().unwrap()[0], 1.0);
    assert_eq!((&x / 2.0).to_vec_f32().unwrap()[1], 1.0);
    assert_eq!(x.powf(2.0).to_vec_f32().unwrap()[2], 9.0);
}

#[test]
fn seeded_random_is_deterministic() {
    let a = Tensor::random_normal(&[100], 0.0, 1.0, 42, DType::F32);
    let b = Tensor::random_normal(&[100], 0.0, 1.0, 42, DType::F32);
    let c = Tensor::random_normal(&[100], 0.0, 1.0, 43, DType::F32);
    assert_eq!(a.to_vec_f32().unwrap(), b.to_vec_f32().unwrap());
    assert_ne!(a.to_vec_f32().unwrap(), c.to_vec_f32().unwrap());
    let mean = a.mean_all().to_scalar().unwrap();
    assert!(mean.abs() < 0.3, "{mean}");
    let u = Tensor::random_uniform(&[1000], -1.0, 2.0, 1, DType::F64)
        .to_vec_f64()
        .unwrap();
    assert!(u.iter().all(|&v| (-1.0..2.0).contains(&v)));
}

#[test]
#[should_panic(expected = "matmul: inner dimensions differ (3 vs 4)")]
fn eager_shape_error_panics_with_op_and_shapes() {
    let _ = Tensor::zeros(&[2, 3]).matmul(&Tensor::zeros(&[4, 5]));
}

#[test]
fn eager_error_names_the_source_line() {
    let r = std::panic::catch_unwind(|| Tensor::zeros(&[2, 3]) + Tensor::zeros(&[4]));
    let msg = *r.unwrap_err().downcast::<String>().unwrap();
    assert!(
        msg.contains("add") && msg.contains("f32[2,3], f32[4]") && msg.contains("tests/ops.rs:"),
        "{msg}"
    );
}

#[test]
fn values_of_symbolic_tensors_are_errors() {
    let f = function(|x: &Tensor| {
        let e = x.to_vec_f32().unwrap_err();
        assert!(e.to_string().contains("symbolic"), "{e}");
        Ok(x * 2.0)
    });
    assert_eq!(
        f.call(&Tensor::scalar(2.0)).unwrap().to_scalar().unwrap(),
        4.0
    );
}

#[test]
fn gather_index_out_of_range_is_an_error_in_a_function() {
    let f = function(|x: &Tensor, i: &Tensor| Ok(x.gather(i, 0)));
    let err = f
        .call(&Tensor::vec(&[1.0f32, 2.0]), &Tensor::vec(&[5i64]))
        .unwrap_err();
    assert!(
        err.to_string().contains("gather")
            && err.to_string().contains("index 5 is out of range 0..2"),
        "{err}"
    );
}

#[test]
fn scalars_on_either_side() {
    let x = Tensor::vec(&[1.0f32, 2.0]);
    let lr32: f32 = 0.5;
    let lr64: f64 = 0.25;
    assert_eq!((&x * 2.0).to_vec_f32().unwrap(), vec![2.0, 4.0]);
    assert_eq!((&x * lr32).to_vec_f32().unwrap(), vec![0.5, 1.0]);
    assert_eq!((&x * lr64).to_vec_f32().unwrap(), vec![0.25, 0.5]);
    assert_eq!((x.clone() - 1.0f32).to_vec_f32().unwrap(), vec![0.0, 1.0]);
    assert_eq!((3.0f64 - &x).to_vec_f32().unwrap(), vec![2.0, 1.0]);
    assert_eq!((lr64 / &x).to_vec_f32().unwrap(), vec![0.25, 0.125]);
    assert_eq!((lr32 / &x).to_vec_f32().unwrap(), vec![0.5, 0.25]);
    // an unsuffixed float literal on the left: fine when the result's type is known
    let y: Tensor = 1.0 + x;
    assert_eq!(y.dtype(), DType::F32);
}

/// The op list is the one place ops are enumerated: every name once, every unary, binary
/// and comparison op in it, and every op (but the source ops, which the IR parser reads
/// itself) reads back from its text name and attributes.
#[test]
fn the_op_list_has_every_op_once_and_each_parses_back() {
    use std::collections::BTreeSet;
    use tapeflow::ops::elementwise::{BINARY_OPS, COMPARE_OPS, UNARY_OPS};
    use tapeflow::ops::{all_op_names, all_ops, attrs::AttrMap, Op};
    let names = all_op_names();
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(unique.len(), names.len(), "a name twice: {names:?}");
    assert!(!unique.contains("fused"), "fused is made by passes only");
    let ops = all_ops();
    for u in UNARY_OPS {
        assert!(ops.contains(&Op::Unary(u)), "{u:?}");
    }
    for b in BINARY_OPS {
        assert!(ops.contains(&Op::Binary(b)), "{b:?}");
    }
    for c in COMPARE_OPS {
        assert!(ops.contains(&Op::Compare(c)), "{c:?}");
    }
    let elementwise = ops
        .iter()
        .filter(|o| matches!(o, Op::Unary(_) | Op::Binary(_) | Op::Compare(_)))
        .count();
    assert_eq!(
        elementwise,
        UNARY_OPS.len() + BINARY_OPS.len() + COMPARE_OPS.len()
    );
    for op in ops {
        if matches!(
            op,
            Op::Input(_) | Op::Const | Op::ReadVar(_) | Op::Assign(_)
        ) {
            continue;
        }
        let attrs: AttrMap = op
            .attrs()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(Op::parse(op.name(), &attrs), Ok(op), "{}", op.name());
    }
}

/// The cost and fusion facts live with the ops: matmul costs its multiply-adds, a
/// reshape nothing, and fusion recomputes only cheap ops.
#[test]
fn op_costs_and_fusion_facts() {
    use tapeflow::ops::{Binary, Op, Unary};
    let mm = Op::MatMul {
        ta: false,
        tb: false,
    };
    assert_eq!(mm.work(&[&[8, 5], &[5, 3]], &[8, 3]), 8 * 3 * 5);
    let mm_t = Op::MatMul {
        ta: true,
        tb: false,
    };
    assert_eq!(mm_t.work(&[&[5, 8], &[5, 3]], &[8, 3]), 8 * 3 * 5);
    assert_eq!(Op::Reshape.work(&[&[4, 6]], &[24]), 0);
    assert_eq!(Op::Const.work(&[], &[1000]), 0);
    let sum = Op::Sum {
        axes: tapeflow::ops::AxisSet::of(&[0]),
        keep: false,
    };
    assert_eq!(sum.work(&[&[100, 3]], &[3]), 300);
    assert_eq!(Op::Binary(Binary::Add).work(&[&[3], &[4, 3]], &[4, 3]), 12);
    assert!(Op::Binary(Binary::Add).is_cheap() && Op::Unary(Unary::Neg).is_cheap());
    assert!(!Op::Unary(Unary::Exp).is_cheap() && !Op::Binary(Binary::Pow).is_cheap());
    assert!(Op::BroadcastTo.is_cheap());
}
