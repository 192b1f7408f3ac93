//! Reductions over sets of axes and argmax.
//!
//! Accumulation order is fixed by the data layout (never by thread scheduling), so
//! results are bit-identical run to run.

use crate::tensor::Arr;
use ndarray::{Axis, IxDyn};

/// Reduces `axes` (ascending) with `fold`, starting every lane at `init`; with `keep`,
/// reduced axes stay as length 1.
pub fn reduce<T: Copy + Send + Sync + 'static>(
    a: &Arr<T>,
    axes: &[usize],
    keep: bool,
    init: T,
    fold: impl Fn(T, T) -> T + Copy,
) -> Arr<T> {
    let mut cur = a.clone();
    for &ax in axes.iter().rev() {
        cur = cur
            .fold_axis(Axis(ax), init, |&acc, &x| fold(acc, x))
            .into_shared();
    }
    if keep {
        let shape: Vec<usize> = a
            .shape()
            .iter()
            .enumerate()
            .map(|(i, &d)| if axes.contains(&i) { 1 } else { d })
            .collect();
        cur = cur
            .into_shape_with_order(IxDyn(&shape))
            .expect("same length");
    }
    cur
}

/// Sums over `axes`. A full reduction of a contiguous buffer uses a fixed 8-lane tree so
/// long sums stay accurate and vectorize.
pub fn sum<T: crate::tensor::Float>(a: &Arr<T>, axes: &[usize], keep: bool) -> Arr<T> {
    if axes.len() == a.ndim() {
        if let Some(s) = a.as_slice() {
            let total = sum_slice(s);
            let shape: Vec<usize> = if keep { vec![1; a.ndim()] } else { vec![] };
            return Arr::from_elem(IxDyn(&shape), total);
        }
    }
    reduce(a, axes, keep, T::zero(), |x, y| x + y)
}

/// Sum of a slice with 8 fixed accumulators (deterministic, vectorizable).
pub fn sum_slice<T: crate::tensor::Float>(s: &[T]) -> T {
    super::ew::vectorized(|| sum8(s))
}

#[inline(always)]
fn sum8<T: crate::tensor::Float>(s: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let chunks = s.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] = acc[i] + c[i];
        }
    }
    let mut t = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for &x in rest {
        t = t + x;
    }
    t
}

/// Maximum over `axes`; NaN wins.
pub fn max<T: crate::tensor::Float>(a: &Arr<T>, axes: &[usize], keep: bool) -> Arr<T> {
    reduce(a, axes, keep, T::neg_infinity(), |m, x| {
        if m.is_nan() || m >= x {
            m
        } else {
            x
        }
    })
}

/// Index of the first maximum along `axis`.
pub fn argmax<T: Copy + PartialOrd + Send + Sync + 'static>(a: &Arr<T>, axis: usize) -> Arr<i64> {
    a.map_axis(Axis(axis), |lane| {
        let mut best = 0usize;
        for (i, &x) in lane.iter().enumerate() {
            if x > lane[best] {
                best = i;
            }
        }
        best as i64
    })
    .into_shared()
}
