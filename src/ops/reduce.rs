//! Reductions: `sum`, `max` over axis sets (with or without kept axes) and `argmax`.

use super::attrs::{self, AttrMap, AxisSet};
use super::{arity, float_only, Grads, Op, VjpArgs};
use crate::exec::kernels::reduce as k;
use crate::tensor::{DType, Data, Shape, Tensor};
use smallvec::smallvec;

pub(super) fn name(op: &Op) -> &'static str {
    match op {
        Op::Sum { .. } => "sum",
        Op::Max { .. } => "max",
        _ => "argmax",
    }
}

pub(super) fn attrs(op: &Op) -> Vec<(&'static str, String)> {
    match op {
        Op::Sum { axes, keep } | Op::Max { axes, keep } => {
            let mut v = vec![("axes", attrs::list(&axes.to_vec()))];
            if *keep {
                v.push(("keep", "true".into()));
            }
            v
        }
        Op::ArgMax { axis } => vec![("axis", axis.to_string())],
        _ => unreachable!(),
    }
}

pub(super) fn parse(name: &str, m: &AttrMap) -> Option<Result<Op, String>> {
    let reduce = |sum: bool| -> Result<Op, String> {
        let axes = AxisSet::try_of(&attrs::parse_list(attrs::get(m, "axes")?)?)?;
        let keep = m.get("keep").map(|s| s == "true").unwrap_or(false);
        Ok(if sum {
            Op::Sum { axes, keep }
        } else {
            Op::Max { axes, keep }
        })
    };
    match name {
        "sum" => Some(reduce(true)),
        "max" => Some(reduce(false)),
        "argmax" => Some(attrs::get_u8(m, "axis").map(|axis| Op::ArgMax { axis })),
        _ => None,
    }
}

/// The shape after reducing `axes` of `shape`.
pub fn reduced_shape(shape: &[usize], axes: AxisSet, keep: bool) -> Shape {
    shape
        .iter()
        .enumerate()
        .filter_map(|(i, &d)| match (axes.contains(i), keep) {
            (false, _) => Some(d),
            (true, true) => Some(1),
            (true, false) => None,
        })
        .collect()
}

pub(super) fn infer(op: &Op, x: &[(DType, &[usize])]) -> Result<(DType, Shape), String> {
    arity(x, 1)?;
    let (d, s) = x[0];
    match op {
        Op::Sum { axes, keep } | Op::Max { axes, keep } => {
            if let Some(bad) = axes.to_vec().into_iter().find(|&a| a >= s.len()) {
                return Err(format!("axis {bad} is out of range for rank {}", s.len()));
            }
            if matches!(op, Op::Sum { .. }) {
                float_only(d)?;
            }
            if matches!(op, Op::Max { .. }) && axes.to_vec().iter().any(|&a| s[a] == 0) {
                return Err("max over an empty axis".into());
            }
            Ok((d, reduced_shape(s, *axes, *keep)))
        }
        Op::ArgMax { axis } => {
            let a = *axis as usize;
            if a >= s.len() || s[a] == 0 {
                return Err(format!("axis {a} is out of range or empty for shape {s:?}"));
            }
            let mut shape = Shape::from_slice(s);
            shape.remove(a);
            Ok((DType::I64, shape))
        }
        _ => unreachable!(),
    }
}

pub(super) fn eval(op: &Op, x: &Data) -> Data {
    match (op, x) {
        (Op::Sum { axes, keep }, Data::F32(a)) => Data::F32(k::sum(a, &axes.to_vec(), *keep)),
        (Op::Sum { axes, keep }, Data::F64(a)) => Data::F64(k::sum(a, &axes.to_vec(), *keep)),
        (Op::Max { axes, keep }, Data::F32(a)) => Data::F32(k::max(a, &axes.to_vec(), *keep)),
        (Op::Max { axes, keep }, Data::F64(a)) => Data::F64(k::max(a, &axes.to_vec(), *keep)),
        (Op::Max { axes, keep }, Data::I64(a)) => Data::I64(k::max_i64(a, &axes.to_vec(), *keep)),
        (Op::ArgMax { axis }, d) => {
            Data::I64(crate::with_data!(d, a => k::argmax(a, *axis as usize)))
        }
        _ => unreachable!("infer checks reductions"),
    }
}

pub(super) fn vjp(op: &Op, a: &VjpArgs, gy: &Tensor) -> Grads {
    let x = &a.x[0];
    match op {
        // d/dx Σx = 1: put the reduced axes back and broadcast
        Op::Sum { axes, keep } => {
            let g = gy.reshape(&reduced_shape(x.shape(), *axes, true));
            let _ = keep;
            smallvec![Some(g.broadcast_to(x.shape()))]
        }
        // the cotangent is shared equally by the elements equal to the maximum
        Op::Max { axes, .. } => {
            let keep_shape = reduced_shape(x.shape(), *axes, true);
            let y = a.y.reshape(&keep_shape);
            let g = gy.reshape(&keep_shape);
            let mask = x.eq(&y);
            let count = mask.sum_axes(&axes.to_vec(), true);
            smallvec![Some(mask / count * g)]
        }
        Op::ArgMax { .. } => smallvec![None],
        _ => unreachable!(),
    }
}

/// Scheduling cost: one visit of each input element.
pub(super) fn work(_op: &Op, x: &[&[usize]], out: &[usize]) -> u64 {
    super::streamed(x, out)
}
