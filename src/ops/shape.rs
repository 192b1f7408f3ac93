//! Shape ops: reshape, broadcast_to, transpose, concat, slice, pad, cast, stop_gradient.
//!
//! None of them computes; each moves or converts elements. `reshape` and
//! `stop_gradient` share the input buffer (no copy).

use super::attrs::{self, AttrMap, Perm};
use super::{arity, operand_types, same_dtype, Grads, Op, VjpArgs};
use crate::exec::buffers::{self, Pooled};
use crate::exec::kernels::ew;
use crate::tensor::{
    broadcast_shapes, dim, numel, shape_str, type_str, Arr, DType, Data, Shape, Tensor,
};
use ndarray::{Axis, IxDyn, Slice};
use smallvec::{smallvec, SmallVec};

pub(super) fn name(op: &Op) -> &'static str {
    match op {
        Op::Reshape => "reshape",
        Op::BroadcastTo => "broadcast",
        Op::Transpose(_) => "transpose",
        Op::Concat { .. } => "concat",
        Op::Slice { .. } => "slice",
        Op::Pad { .. } => "pad",
        Op::Cast(_) => "cast",
        Op::DimValue { .. } => "dim_value",
        Op::Range { .. } => "range",
        Op::StopGradient => "stop_gradient",
        _ => unreachable!(),
    }
}

pub(super) fn attrs(op: &Op) -> Vec<(&'static str, String)> {
    match *op {
        Op::Transpose(p) => vec![("perm", attrs::list(&p.to_vec()))],
        Op::Concat { axis } => vec![("axis", axis.to_string())],
        Op::Slice { axis, start, end } => {
            vec![
                ("axis", axis.to_string()),
                ("start", start.to_string()),
                ("end", end.to_string()),
            ]
        }
        Op::Pad {
            axis,
            before,
            after,
        } => {
            vec![
                ("axis", axis.to_string()),
                ("before", before.to_string()),
                ("after", after.to_string()),
            ]
        }
        Op::Cast(d) => vec![("to", d.name().to_string())],
        Op::DimValue { dim: d, dtype } => {
            vec![("d", dim::show(d)), ("to", dtype.name().to_string())]
        }
        Op::Range { len, dtype } => vec![("n", dim::show(len)), ("to", dtype.name().to_string())],
        _ => Vec::new(),
    }
}

pub(super) fn parse(name: &str, m: &AttrMap) -> Option<Result<Op, String>> {
    let (axis, u) = (|| attrs::get_u8(m, "axis"), |k: &str| attrs::get_u32(m, k));
    let r = match name {
        "reshape" => Ok(Op::Reshape),
        "broadcast" => Ok(Op::BroadcastTo),
        "stop_gradient" => Ok(Op::StopGradient),
        "transpose" => attrs::get(m, "perm")
            .and_then(attrs::parse_list)
            .and_then(|p| Perm::new(&p).ok_or_else(|| format!("bad permutation {p:?}")))
            .map(Op::Transpose),
        "concat" => axis().map(|axis| Op::Concat { axis }),
        "slice" => (|| {
            Ok(Op::Slice {
                axis: axis()?,
                start: u("start")?,
                end: u("end")?,
            })
        })(),
        "pad" => (|| {
            Ok(Op::Pad {
                axis: axis()?,
                before: u("before")?,
                after: u("after")?,
            })
        })(),
        "dim_value" => (|| {
            Ok(Op::DimValue {
                dim: dim::parse(attrs::get(m, "d")?)?,
                dtype: dtype_attr(m)?,
            })
        })(),
        "range" => (|| {
            Ok(Op::Range {
                len: dim::parse(attrs::get(m, "n")?)?,
                dtype: dtype_attr(m)?,
            })
        })(),
        "cast" => attrs::get(m, "to")
            .and_then(|d| DType::from_name(d).ok_or_else(|| format!("unknown dtype `{d}`")))
            .map(Op::Cast),
        _ => return None,
    };
    Some(r)
}

fn axis_ok(axis: u8, rank: usize) -> Result<usize, String> {
    let a = axis as usize;
    if a >= rank {
        return Err(format!("axis {a} is out of range for rank {rank}"));
    }
    Ok(a)
}

pub(super) fn infer(
    op: &Op,
    x: &[(DType, &[usize])],
    out: Option<&[usize]>,
) -> Result<(DType, Shape), String> {
    match *op {
        Op::DimValue { dim: d, dtype } => {
            arity(x, 0)?;
            crate::tensor::check_shape(&[d])?;
            return Ok((dtype, Shape::new()));
        }
        Op::Range { len, dtype } => {
            arity(x, 0)?;
            crate::tensor::check_shape(&[len])?;
            return Ok((dtype, Shape::from_slice(&[len])));
        }
        _ => {}
    }
    if !matches!(op, Op::Concat { .. }) {
        arity(x, 1)?;
    } else if x.is_empty() {
        return Err("needs at least one operand".into());
    }
    let (d, s) = x[0];
    let target = || out.ok_or_else(|| "needs a target shape".to_string());
    let shape: Shape = match *op {
        Op::Reshape => {
            let t = target()?;
            if numel(t) != numel(s) {
                return Err(format!(
                    "cannot reshape {} to {}: element counts differ ({} vs {})",
                    type_str(d, s),
                    shape_str(t),
                    dim::show(numel(s)),
                    dim::show(numel(t))
                ));
            }
            Shape::from_slice(t)
        }
        Op::BroadcastTo => {
            let t = target()?;
            if broadcast_shapes(s, t).as_deref() != Some(t) {
                return Err(format!(
                    "cannot broadcast {} to {}",
                    type_str(d, s),
                    shape_str(t)
                ));
            }
            Shape::from_slice(t)
        }
        Op::Transpose(p) => {
            if p.rank as usize != s.len() {
                return Err(format!(
                    "permutation {:?} does not fit rank {}",
                    p.to_vec(),
                    s.len()
                ));
            }
            p.to_vec().iter().map(|&a| s[a]).collect()
        }
        Op::Concat { axis } => {
            same_dtype(x)?;
            let a = axis_ok(axis, s.len())?;
            let mut shape = Shape::from_slice(s);
            shape[a] = 0;
            for (_, t) in x {
                let fits = t.len() == s.len() && (0..s.len()).all(|i| i == a || t[i] == s[i]);
                if !fits {
                    return Err(format!(
                        "operands differ off axis {a}: {}",
                        operand_types(x)
                    ));
                }
                shape[a] = dim::add(shape[a], t[a])
                    .map_err(|e| format!("axis {a}: {e}: {}", operand_types(x)))?;
            }
            shape
        }
        Op::Slice { axis, start, end } => {
            let a = axis_ok(axis, s.len())?;
            if dim::is_sym(s[a]) {
                return Err(format!(
                    "needs a concrete length on axis {a} to slice it, got {}",
                    type_str(d, s)
                ));
            }
            if start > end || end as usize > s[a] {
                return Err(format!(
                    "range {start}..{end} is out of bounds for axis {a} of {}",
                    type_str(d, s)
                ));
            }
            let mut shape = Shape::from_slice(s);
            shape[a] = (end - start) as usize;
            shape
        }
        Op::Pad {
            axis,
            before,
            after,
        } => {
            let a = axis_ok(axis, s.len())?;
            let mut shape = Shape::from_slice(s);
            shape[a] = [before, after]
                .iter()
                .try_fold(s[a], |n, &p| dim::add(n, p as usize))
                .map_err(|e| {
                    format!(
                        "padding {before}+{after} of axis {a} of {}: {e}",
                        type_str(d, s)
                    )
                })?;
            shape
        }
        Op::Cast(to) => return Ok((to, Shape::from_slice(s))),
        Op::StopGradient => Shape::from_slice(s),
        _ => unreachable!(),
    };
    Ok((d, shape))
}

fn reshape<T: Clone>(a: &Arr<T>, shape: &[usize]) -> Arr<T> {
    a.clone()
        .into_shape_with_order(IxDyn(shape))
        .expect("standard layout, same length")
}

/// `a` broadcast to `shape`, materialized; a trailing row repeats by whole copies.
fn broadcast<T: Pooled>(a: &Arr<T>, shape: &[usize]) -> Arr<T> {
    let n: usize = shape.iter().product();
    match a.as_slice() {
        Some(row) if !row.is_empty() && ew::is_row_of(a.shape(), shape) => {
            let mut out = buffers::take(n);
            for _ in 0..n / row.len() {
                out.extend_from_slice(row);
            }
            ew::wrap(shape, out)
        }
        Some(col) if ew::col_width(a.shape(), shape).is_some() => {
            let k = n / col.len().max(1);
            let mut out = buffers::take(n);
            for &v in col {
                out.extend(std::iter::repeat_n(v, k));
            }
            ew::wrap(shape, out)
        }
        _ => ew::materialize(
            a.broadcast(IxDyn(shape))
                .expect("infer checked broadcasting"),
        ),
    }
}

/// `a[.., start..end, ..]` along `axis`: for a standard-layout `a`, one contiguous block
/// copy per index of the leading axes (an ndarray view iterated element by element is
/// an order of magnitude slower for the gate slices of a recurrent cell).
fn slice<T: Pooled>(a: &Arr<T>, axis: usize, start: usize, end: usize) -> Arr<T> {
    let Some(src) = a.as_slice() else {
        return ew::materialize(a.slice_axis(Axis(axis), Slice::from(start..end)));
    };
    let inner: usize = a.shape()[axis + 1..].iter().product();
    let len = a.shape()[axis];
    let outer: usize = a.shape()[..axis].iter().product();
    let (row, block) = (len * inner, (end - start) * inner);
    let mut out = buffers::take(outer * block);
    for o in 0..outer {
        out.extend_from_slice(&src[o * row + start * inner..][..block]);
    }
    let mut shape = a.shape().to_vec();
    shape[axis] = end - start;
    ew::wrap(&shape, out)
}

/// Zero padding along `axis` to `shape` with `before` zeros first: per index of the
/// leading axes, zeros, `a`'s contiguous block, zeros.
fn pad<T: Pooled>(a: &Arr<T>, axis: usize, before: usize, shape: &[usize]) -> Arr<T> {
    let Some(src) = a.as_slice() else {
        return pad_view(a, axis, before, shape);
    };
    let inner: usize = shape[axis + 1..].iter().product();
    let outer: usize = shape[..axis].iter().product();
    let block = a.shape()[axis] * inner;
    let (head, tail) = (
        before * inner,
        (shape[axis] * inner) - block - before * inner,
    );
    let mut out = buffers::take(shape.iter().product());
    for o in 0..outer {
        out.extend(std::iter::repeat_n(T::default(), head));
        out.extend_from_slice(&src[o * block..][..block]);
        out.extend(std::iter::repeat_n(T::default(), tail));
    }
    ew::wrap(shape, out)
}

fn pad_view<T: Pooled>(a: &Arr<T>, axis: usize, before: usize, shape: &[usize]) -> Arr<T> {
    let mut out =
        ndarray::ArrayD::from_shape_vec(IxDyn(shape), buffers::zeroed(shape.iter().product()))
            .expect("length matches shape");
    let len = a.shape()[axis];
    out.slice_axis_mut(Axis(axis), Slice::from(before..before + len))
        .assign(a);
    out.into_shared()
}

/// Joins `parts` along `axis` into a standard-layout buffer of `shape` (kernels that
/// read the result as a slice rely on that): for each index of the leading axes, each
/// part's contiguous block in turn.
fn concat<T: Pooled>(parts: &[&Arr<T>], axis: usize, shape: &[usize]) -> Arr<T> {
    let mut out = buffers::take(shape.iter().product());
    concat_runs(parts, axis, shape, |run| out.extend_from_slice(run));
    ew::wrap(shape, out)
}

/// The concatenation of `parts` along `axis` (the result's `shape`) as runs of
/// elements handed to `put` in the result's memory order: what `concat` stores, for a
/// kernel that writes it elsewhere (a scan's stacked row, `exec::control`).
pub(crate) fn concat_runs<T: Clone>(
    parts: &[&Arr<T>],
    axis: usize,
    shape: &[usize],
    mut put: impl FnMut(&[T]),
) {
    let outer: usize = shape[..axis].iter().product();
    let standard: Vec<_> = parts.iter().map(|p| p.as_standard_layout()).collect();
    for o in 0..outer {
        for p in &standard {
            let s = p.as_slice().expect("standard layout");
            let block = s.len() / outer;
            put(&s[o * block..(o + 1) * block]);
        }
    }
}

pub(super) fn eval(op: &Op, x: &[&Data], shape: &[usize]) -> Data {
    let d = x[0];
    match *op {
        Op::Reshape => crate::map_data!(d, a => reshape(a, shape)),
        Op::StopGradient => d.clone(),
        Op::BroadcastTo => crate::map_data!(d, a => broadcast(a, shape)),
        Op::Transpose(p) => {
            crate::map_data!(d, a => ew::materialize(a.view().permuted_axes(IxDyn(&p.to_vec()))))
        }
        Op::Slice { axis, start, end } => {
            crate::map_data!(d, a => slice(a, axis as usize, start as usize, end as usize))
        }
        Op::Pad { axis, before, .. } => {
            crate::map_data!(d, a => pad(a, axis as usize, before as usize, shape))
        }
        Op::Concat { axis } => {
            let ax = axis as usize;
            match d {
                Data::F32(_) => Data::F32(concat(
                    &x.iter()
                        .map(|e| match e {
                            Data::F32(a) => a,
                            _ => unreachable!(),
                        })
                        .collect::<Vec<_>>(),
                    ax,
                    shape,
                )),
                Data::F64(_) => Data::F64(concat(
                    &x.iter()
                        .map(|e| match e {
                            Data::F64(a) => a,
                            _ => unreachable!(),
                        })
                        .collect::<Vec<_>>(),
                    ax,
                    shape,
                )),
                Data::I64(_) => Data::I64(concat(
                    &x.iter()
                        .map(|e| match e {
                            Data::I64(a) => a,
                            _ => unreachable!(),
                        })
                        .collect::<Vec<_>>(),
                    ax,
                    shape,
                )),
            }
        }
        Op::Cast(to) => cast(d, to),
        _ => unreachable!(),
    }
}

/// The `to=` dtype attribute.
fn dtype_attr(m: &AttrMap) -> Result<DType, String> {
    attrs::get(m, "to")
        .and_then(|d| DType::from_name(d).ok_or_else(|| format!("unknown dtype `{d}`")))
}

/// `0..len` of a `range`, or why it has none yet (a symbolic length not bound).
pub(super) fn eval_range(len: usize, dtype: DType) -> Result<Data, String> {
    if dim::is_sym(len) {
        return Err(format!(
            "range of symbolic length {} has values only when a compiled function binds it",
            dim::show(len)
        ));
    }
    let v: Vec<i64> = (0..len as i64).collect();
    let a = ndarray::ArrayD::from_shape_vec(IxDyn(&[len]), v).expect("1-D");
    Ok(cast(&Data::I64(a.into_shared()), dtype))
}

/// The value of a `dim_value`, or why it has none yet (a symbol not bound).
pub(super) fn eval_dim_value(d: usize, dtype: DType) -> Result<Data, String> {
    if dim::is_sym(d) {
        return Err(format!(
            "symbolic dimension {} has a value only when a compiled function binds it",
            dim::show(d)
        ));
    }
    Ok(Data::full(dtype, &[], d as f64))
}

/// Converts a buffer to another dtype (floats to integers truncate toward zero).
pub fn cast(d: &Data, to: DType) -> Data {
    match (d, to) {
        (Data::F32(_), DType::F32) | (Data::F64(_), DType::F64) | (Data::I64(_), DType::I64) => {
            d.clone()
        }
        (Data::F32(a), DType::F64) => Data::F64(ew::map(a, |v| v as f64)),
        (Data::F32(a), DType::I64) => Data::I64(ew::map(a, |v| v as i64)),
        (Data::F64(a), DType::F32) => Data::F32(ew::map(a, |v| v as f32)),
        (Data::F64(a), DType::I64) => Data::I64(ew::map(a, |v| v as i64)),
        (Data::I64(a), DType::F32) => Data::F32(ew::map(a, |v| v as f32)),
        (Data::I64(a), DType::F64) => Data::F64(ew::map(a, |v| v as f64)),
    }
}

pub(super) fn vjp(op: &Op, a: &VjpArgs, gy: &Tensor) -> Grads {
    if matches!(op, Op::DimValue { .. } | Op::Range { .. }) {
        return Grads::new();
    }
    let x = &a.x[0];
    match *op {
        Op::Reshape => smallvec![Some(gy.reshape(x.shape()))],
        Op::BroadcastTo => smallvec![Some(gy.sum_to(x.shape()))],
        Op::Transpose(p) => smallvec![Some(gy.transpose(&p.inverse().to_vec()))],
        // each operand gets its slice of the cotangent
        Op::Concat { axis } => {
            let mut off = 0;
            let mut g: SmallVec<[Option<Tensor>; 3]> = SmallVec::new();
            for (i, xi) in a.x.iter().enumerate() {
                let len = xi.shape()[axis as usize];
                g.push(a.needs[i].then(|| gy.slice_axis(axis as usize, off, off + len)));
                off += len;
            }
            g
        }
        // slice and pad are each other's adjoints
        Op::Slice { axis, start, end } => {
            let after = x.shape()[axis as usize] - end as usize;
            smallvec![Some(gy.pad_axis(axis as usize, start as usize, after))]
        }
        Op::Pad { axis, before, .. } => {
            let len = x.shape()[axis as usize];
            smallvec![Some(gy.slice_axis(
                axis as usize,
                before as usize,
                before as usize + len
            ))]
        }
        // casts between floats pass the cotangent through; integers cut the path
        Op::Cast(to) => {
            smallvec![(to.is_float() && x.dtype().is_float()).then(|| gy.cast(x.dtype()))]
        }
        Op::StopGradient => smallvec![None],
        _ => unreachable!(),
    }
}

/// Scheduling cost: `reshape` is a view (free); the others move each element once.
pub(super) fn work(op: &Op, x: &[&[usize]], out: &[usize]) -> u64 {
    match op {
        Op::Reshape | Op::DimValue { .. } => 0,
        Op::Range { len, .. } => *len as u64,
        _ => super::streamed(x, out),
    }
}

/// Whether fusion may recompute the op for every element of a larger loop: the
/// fusable members of this family (`broadcast`, float `cast`) only move or convert a
/// value.
pub(super) fn is_cheap(_op: &Op) -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::ArrayD;

    fn arr(shape: &[usize]) -> Arr<f32> {
        let n: usize = shape.iter().product();
        ArrayD::from_shape_vec(IxDyn(shape), (0..n).map(|i| i as f32).collect())
            .unwrap()
            .into_shared()
    }

    /// The block-copy slice and pad agree with ndarray's element-wise views, on every
    /// axis, for standard and for non-standard (transposed) inputs.
    #[test]
    fn slice_and_pad_match_ndarray_views() {
        let a = arr(&[3, 4, 5]);
        let t = a.view().permuted_axes(IxDyn(&[2, 0, 1])).to_shared();
        for x in [&a, &t] {
            for axis in 0..3 {
                let len = x.shape()[axis];
                for (start, end) in [(0, len), (1, len), (0, 1), (1, len - 1)] {
                    let want = x.slice_axis(Axis(axis), Slice::from(start..end)).to_owned();
                    let got = slice(x, axis, start, end);
                    assert_eq!(got.shape(), want.shape());
                    assert_eq!(
                        got.iter().collect::<Vec<_>>(),
                        want.iter().collect::<Vec<_>>()
                    );
                    let mut shape = x.shape().to_vec();
                    shape[axis] += 3;
                    let padded = pad(x, axis, 2, &shape);
                    assert_eq!(padded, pad_view(x, axis, 2, &shape), "axis {axis}");
                }
            }
        }
    }
}
