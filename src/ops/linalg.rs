//! `matmul`: matrix product over the last two axes, batched over the leading ones, with
//! optional transposition of either operand (so the backward pass and the transpose
//! folding pass never materialize a transpose).

use super::attrs::AttrMap;
use super::{arity, float_only, operand_types, same_dtype, Grads, Op, VjpArgs};
use crate::exec::kernels::gemm::gemm;
use crate::tensor::{Arr, DType, Data, Float, Shape, Tensor};
use ndarray::IxDyn;
use smallvec::smallvec;

pub(super) fn attrs(ta: bool, tb: bool) -> Vec<(&'static str, String)> {
    let mut v = Vec::new();
    if ta {
        v.push(("ta", "true".into()));
    }
    if tb {
        v.push(("tb", "true".into()));
    }
    v
}

pub(super) fn parse(name: &str, m: &AttrMap) -> Option<Result<Op, String>> {
    (name == "matmul").then(|| {
        Ok(Op::MatMul {
            ta: m.get("ta").is_some_and(|v| v == "true"),
            tb: m.get("tb").is_some_and(|v| v == "true"),
        })
    })
}

/// (batch dims, rows, cols) of `op(s)`: the operand as the product sees it.
fn dims(s: &[usize], t: bool) -> (&[usize], usize, usize) {
    let r = s.len();
    let (p, q) = (s[r - 2], s[r - 1]);
    (&s[..r - 2], if t { q } else { p }, if t { p } else { q })
}

pub(super) fn infer(ta: bool, tb: bool, x: &[(DType, &[usize])]) -> Result<(DType, Shape), String> {
    arity(x, 2)?;
    let d = same_dtype(x)?;
    float_only(d)?;
    let (sa, sb) = (x[0].1, x[1].1);
    if sa.len() < 2 || sb.len() < 2 {
        return Err(format!(
            "operands must have rank ≥ 2, got {}",
            operand_types(x)
        ));
    }
    let (ba, m, ka) = dims(sa, ta);
    let (bb, kb, n) = dims(sb, tb);
    if ka != kb {
        return Err(format!(
            "inner dimensions differ ({ka} vs {kb}): {}",
            operand_types(x)
        ));
    }
    let batch = if ba == bb || bb.is_empty() {
        ba
    } else if ba.is_empty() {
        bb
    } else {
        return Err(format!("batch dimensions differ: {}", operand_types(x)));
    };
    let mut out: Shape = batch.iter().copied().collect();
    out.push(m);
    out.push(n);
    Ok((d, out))
}

fn matmul<T: Float>(a: &Arr<T>, b: &Arr<T>, ta: bool, tb: bool, shape: &[usize]) -> Arr<T> {
    let r = shape.len();
    let (m, n) = (shape[r - 2], shape[r - 1]);
    let k = if ta {
        a.shape()[a.ndim() - 2]
    } else {
        a.shape()[a.ndim() - 1]
    };
    let batch: usize = shape[..r - 2].iter().product();
    let (sa, sb) = (
        a.as_slice().expect("standard"),
        b.as_slice().expect("standard"),
    );
    let (stride_a, stride_b) = (
        if a.ndim() == 2 { 0 } else { m * k },
        if b.ndim() == 2 { 0 } else { k * n },
    );
    let mut out = if k == 0 {
        crate::exec::buffers::zeroed(batch * m * n) // an empty sum
    } else {
        crate::exec::buffers::overwritable(batch * m * n)
    };
    for i in 0..batch {
        gemm(
            &sa[i * stride_a..i * stride_a + m * k],
            &sb[i * stride_b..i * stride_b + k * n],
            &mut out[i * m * n..(i + 1) * m * n],
            m,
            k,
            n,
            ta,
            tb,
        );
    }
    Arr::from_shape_vec(IxDyn(shape), out).expect("shape")
}

pub(super) fn eval(ta: bool, tb: bool, a: &Data, b: &Data, shape: &[usize]) -> Data {
    match (a, b) {
        (Data::F32(p), Data::F32(q)) => Data::F32(matmul(p, q, ta, tb, shape)),
        (Data::F64(p), Data::F64(q)) => Data::F64(matmul(p, q, ta, tb, shape)),
        _ => unreachable!("infer checks matmul dtypes"),
    }
}

pub(super) fn vjp(ta: bool, tb: bool, a: &VjpArgs, gy: &Tensor) -> Grads {
    let (p, q) = (&a.x[0], &a.x[1]);
    // y = A·B with A = op(p), B = op(q): dA = gy·Bᵀ, dB = Aᵀ·gy, transposed back when op transposes.
    let gp = a.needs[0].then(|| match (ta, tb) {
        (false, false) => gy.matmul_t(q, false, true),
        (false, true) => gy.matmul_t(q, false, false),
        (true, false) => q.matmul_t(gy, false, true),
        (true, true) => q.matmul_t(gy, true, true),
    });
    let gq = a.needs[1].then(|| match (ta, tb) {
        (false, false) => p.matmul_t(gy, true, false),
        (true, false) => p.matmul_t(gy, false, false),
        (false, true) => gy.matmul_t(p, true, false),
        (true, true) => gy.matmul_t(p, true, true),
    });
    smallvec![gp, gq]
}

/// Scheduling cost: multiply-adds, `out · k` with `k` the contracted length of `x[0]`.
pub(super) fn work(ta: bool, x: &[&[usize]], out: &[usize]) -> u64 {
    let a = x[0];
    let k = if ta { a[a.len() - 2] } else { a[a.len() - 1] };
    super::elems(out) * k as u64
}
