//! Indexing: `gather` (rows of a tensor picked by i64 indices) and its adjoint `scatter_add`.

use super::attrs::{self, AttrMap};
use super::{arity, float_only, Grads, Op, VjpArgs};
use crate::tensor::{type_str, Arr, DType, Data, Shape, Tensor};
use ndarray::IxDyn;
use smallvec::smallvec;

pub(super) fn name(op: &Op) -> &'static str {
    match op {
        Op::Gather { .. } => "gather",
        _ => "scatter_add",
    }
}

pub(super) fn attrs(op: &Op) -> Vec<(&'static str, String)> {
    match *op {
        Op::Gather { axis } => vec![("axis", axis.to_string())],
        Op::ScatterAdd { axis, size } => {
            vec![("axis", axis.to_string()), ("size", size.to_string())]
        }
        _ => unreachable!(),
    }
}

pub(super) fn parse(name: &str, m: &AttrMap) -> Option<Result<Op, String>> {
    let axis = || attrs::get_u8(m, "axis");
    match name {
        "gather" => Some(axis().map(|axis| Op::Gather { axis })),
        "scatter_add" => Some((|| {
            Ok(Op::ScatterAdd {
                axis: axis()?,
                size: attrs::get_u32(m, "size")?,
            })
        })()),
        _ => None,
    }
}

pub(super) fn infer(op: &Op, x: &[(DType, &[usize])]) -> Result<(DType, Shape), String> {
    arity(x, 2)?;
    let ((d, s), (di, si)) = (x[0], x[1]);
    if di != DType::I64 {
        return Err(format!("indices must be i64, got {}", type_str(di, si)));
    }
    match *op {
        Op::Gather { axis } => {
            let a = axis as usize;
            if a >= s.len() {
                return Err(format!("axis {a} is out of range for {}", type_str(d, s)));
            }
            Ok((
                d,
                s[..a]
                    .iter()
                    .chain(si)
                    .chain(&s[a + 1..])
                    .copied()
                    .collect(),
            ))
        }
        Op::ScatterAdd { axis, size } => {
            // the kernel adds floats only: say so at trace time, not when it runs
            float_only(d)?;
            let a = axis as usize;
            if s.len() < a + si.len() || s[a..a + si.len()] != *si {
                return Err(format!(
                    "updates {} do not have the indices' shape {:?} at axis {a}",
                    type_str(d, s),
                    si
                ));
            }
            Ok((
                d,
                s[..a]
                    .iter()
                    .chain(&[size as usize])
                    .chain(&s[a + si.len()..])
                    .copied()
                    .collect(),
            ))
        }
        _ => unreachable!(),
    }
}

/// `out[o, j, i] = x[o, idx[j], i]` with `o` the axes before `axis` and `i` those after.
fn gather<T: crate::exec::buffers::Pooled>(
    x: &Arr<T>,
    idx: &[i64],
    axis: usize,
    shape: &[usize],
) -> Result<Arr<T>, String> {
    let n = x.shape()[axis];
    let outer: usize = x.shape()[..axis].iter().product();
    let inner: usize = x.shape()[axis + 1..].iter().product();
    let xs = x.as_slice().expect("standard layout");
    let mut out = crate::exec::buffers::take(outer * idx.len() * inner);
    for o in 0..outer {
        for &j in idx {
            if j < 0 || j as usize >= n {
                return Err(format!("index {j} is out of range 0..{n}"));
            }
            let start = (o * n + j as usize) * inner;
            out.extend_from_slice(&xs[start..start + inner]);
        }
    }
    Ok(Arr::from_shape_vec(IxDyn(shape), out).expect("shape"))
}

/// The adjoint of [`gather`]: `out[o, idx[j], i] += u[o, j, i]`.
fn scatter_add<T: crate::tensor::Float>(
    u: &Arr<T>,
    idx: &[i64],
    axis: usize,
    shape: &[usize],
) -> Result<Arr<T>, String> {
    let n = shape[axis];
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let us = u.as_slice().expect("standard layout");
    let mut out = crate::exec::buffers::zeroed(outer * n * inner);
    for o in 0..outer {
        for (jj, &j) in idx.iter().enumerate() {
            if j < 0 || j as usize >= n {
                return Err(format!("index {j} is out of range 0..{n}"));
            }
            let src = (o * idx.len() + jj) * inner;
            let dst = (o * n + j as usize) * inner;
            for k in 0..inner {
                out[dst + k] = out[dst + k] + us[src + k];
            }
        }
    }
    Ok(Arr::from_shape_vec(IxDyn(shape), out).expect("shape"))
}

pub(super) fn eval(op: &Op, x: &[&Data], shape: &[usize]) -> Result<Data, String> {
    let idx: std::borrow::Cow<'_, [i64]> = match x[1] {
        Data::I64(a) => match a.as_slice() {
            Some(s) => s.into(),
            None => a.iter().copied().collect::<Vec<_>>().into(),
        },
        _ => unreachable!("infer checks the index dtype"),
    };
    match *op {
        Op::Gather { axis } => {
            let a = axis as usize;
            Ok(crate::map_data!(x[0], v => gather(v, &idx, a, shape)?))
        }
        Op::ScatterAdd { axis, .. } => {
            let a = axis as usize;
            match x[0] {
                Data::F32(v) => Ok(Data::F32(scatter_add(v, &idx, a, shape)?)),
                Data::F64(v) => Ok(Data::F64(scatter_add(v, &idx, a, shape)?)),
                Data::I64(_) => Err("scatter_add is defined for floats only".into()),
            }
        }
        _ => unreachable!(),
    }
}

pub(super) fn vjp(op: &Op, a: &VjpArgs, gy: &Tensor) -> Grads {
    let (x, idx) = (&a.x[0], &a.x[1]);
    match *op {
        // gather and scatter_add are each other's adjoints
        Op::Gather { axis } => {
            smallvec![
                Some(gy.scatter_add(idx, axis as usize, x.shape()[axis as usize])),
                None
            ]
        }
        Op::ScatterAdd { axis, .. } => smallvec![Some(gy.gather(idx, axis as usize)), None],
        _ => unreachable!(),
    }
}

/// Scheduling cost: each element moved once.
pub(super) fn work(_op: &Op, x: &[&[usize]], out: &[usize]) -> u64 {
    super::streamed(x, out)
}
