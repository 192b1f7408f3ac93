//! Matrix multiply (placeholder-free baseline over ndarray's `general_mat_mul`).

use crate::tensor::Float;
use ndarray::{linalg::general_mat_mul, ArrayView2, ArrayViewMut2};

/// `c[m,n] = op(a) · op(b)` (c overwritten). `a` is `[m,k]` row-major, or `[k,m]` when
/// `ta`; `b` is `[k,n]`, or `[n,k]` when `tb`.
#[allow(clippy::too_many_arguments)]
pub fn gemm<T: Float>(
    a: &[T],
    b: &[T],
    c: &mut [T],
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
) {
    let av = if ta {
        ArrayView2::from_shape((k, m), a)
            .expect("a")
            .reversed_axes()
    } else {
        ArrayView2::from_shape((m, k), a).expect("a")
    };
    let bv = if tb {
        ArrayView2::from_shape((n, k), b)
            .expect("b")
            .reversed_axes()
    } else {
        ArrayView2::from_shape((k, n), b).expect("b")
    };
    let mut cv = ArrayViewMut2::from_shape((m, n), c).expect("c");
    general_mat_mul(T::one(), &av, &bv, T::zero(), &mut cv);
}
