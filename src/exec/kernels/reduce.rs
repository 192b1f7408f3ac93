//! Reductions over sets of axes and argmax.
//!
//! Accumulation order is fixed by the data layout (never by thread scheduling), so
//! results are bit-identical run to run.

use crate::exec::buffers::{self, Pooled};
use crate::tensor::data::{Arr, Float};
use ndarray::{Axis, IxDyn};
use rayon::prelude::*;

/// Reduces `axes` (ascending) with `fold`, starting every lane at `init`: one
/// sequential fold per reduced axis, the innermost first; with `keep`, reduced axes
/// stay as length 1. `full`, if given, reduces a whole contiguous buffer on its own
/// (for [`sum`], an 8-lane tree). The fused kernel adds in exactly this order.
///
/// A contiguous input is reduced one axis at a time, viewed as `[outer, len, inner]`,
/// into pooled buffers (`inner`-wide accumulators folded over the axis in order,
/// vectorized); other layouts go through ndarray's `fold_axis`. A pass that reads at
/// least [`PAR_MIN`](super::ew::PAR_MIN) elements shares its accumulators out over the
/// threads (blocks of `outer`, or column ranges of a single block); each accumulator
/// still folds its rows in order, so the bits do not depend on the thread count (a
/// convolution's bias gradient, `[32,26,26,32]` summed to `[32]`, on the 2-core Zen 5:
/// ≈80 → ≈46 µs).
///
/// `fold` must not panic (it runs inside rayon tasks).
fn reduce<T: Pooled>(
    a: &Arr<T>,
    axes: &[usize],
    keep: bool,
    init: T,
    fold: impl Fn(T, T) -> T + Copy + Sync,
    full: Option<fn(&[T]) -> T>,
) -> Arr<T> {
    let out_shape: Vec<usize> = (0..a.ndim())
        .filter_map(|i| match (axes.contains(&i), keep) {
            (false, _) => Some(a.shape()[i]),
            (true, true) => Some(1),
            (true, false) => None,
        })
        .collect();
    let wrap = |v: Vec<T>| {
        Arr::from_shape_vec(IxDyn(&out_shape), v)
            .expect("length matches shape")
            .into_shared()
    };
    let Some(x) = a.as_slice() else {
        let mut cur = a.clone();
        for &ax in axes.iter().rev() {
            cur = cur
                .fold_axis(Axis(ax), init, |&acc, &x| fold(acc, x))
                .into_shared();
        }
        return cur
            .into_shape_with_order(IxDyn(&out_shape))
            .expect("same length");
    };
    if let (Some(full), true) = (full, axes.len() == a.ndim()) {
        let mut v = buffers::take(1);
        v.push(full(x));
        return wrap(v);
    }
    let mut shape = a.shape().to_vec();
    let mut cur: Option<Vec<T>> = None;
    for &ax in axes.iter().rev() {
        let (outer, len, inner) = (
            shape[..ax].iter().product::<usize>(),
            shape[ax],
            shape[ax + 1..].iter().product::<usize>(),
        );
        let src = cur.as_deref().unwrap_or(x);
        let mut out = buffers::take(outer * inner);
        out.resize(outer * inner, init);
        // each accumulator folds its lane's rows in order, whoever runs it
        let fold_rows = |acc: &mut [T], block: &[T], stride: usize| {
            for r in block.chunks(stride.max(1)).take(len) {
                for (s, &v) in acc.iter_mut().zip(r) {
                    *s = fold(*s, v);
                }
            }
        };
        // `blocks` holds whole `[len, inner]` blocks, `accs` their accumulators
        let fold_blocks = |accs: &mut [T], blocks: &[T]| {
            super::ew::vectorized(|| {
                for (acc, block) in accs
                    .chunks_exact_mut(inner.max(1))
                    .zip(blocks.chunks_exact((len * inner).max(1)))
                {
                    fold_rows(acc, block, inner);
                }
            })
        };
        let par = outer * len * inner >= super::ew::PAR_MIN && rayon::current_num_threads() > 1;
        if par && outer > 1 {
            // whole blocks per task, about PAR_CHUNK elements read each
            let per = (super::ew::PAR_CHUNK / (len * inner).max(1)).max(1);
            out.par_chunks_mut(inner * per)
                .zip(src.par_chunks(len * inner * per))
                .for_each(|(accs, blocks)| fold_blocks(accs, blocks));
        } else if par {
            // one block: one range of columns per thread, so that each row's part is one
            // run of memory (strips of 16 columns, a cache line per row, ran 2-3x slower
            // on two threads than one thread did alone)
            let threads = rayon::current_num_threads();
            let cols = inner.div_ceil(threads).next_multiple_of(16).min(inner);
            out.par_chunks_mut(cols).enumerate().for_each(|(c, acc)| {
                super::ew::vectorized(|| fold_rows(acc, &src[c * cols..], inner))
            });
        } else {
            fold_blocks(&mut out, src);
        }
        if let Some(old) = cur.replace(out) {
            buffers::current().give(old);
        }
        shape[ax] = 1;
    }
    wrap(cur.unwrap_or_else(|| {
        let mut v = buffers::take(x.len());
        v.extend_from_slice(x);
        v
    }))
}

/// Sums over `axes`. A full reduction of a contiguous buffer uses a fixed 8-lane tree
/// so long sums stay accurate and vectorize.
pub fn sum<T: Float + Pooled>(a: &Arr<T>, axes: &[usize], keep: bool) -> Arr<T> {
    reduce(a, axes, keep, T::zero(), |x, y| x + y, Some(sum_slice::<T>))
}

/// Sum of a slice with 8 fixed accumulators (deterministic, vectorizable).
pub fn sum_slice<T: Float>(s: &[T]) -> T {
    super::ew::vectorized(|| sum8(s))
}

#[inline(always)]
fn sum8<T: Float>(s: &[T]) -> T {
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
pub fn max<T: Float + Pooled>(a: &Arr<T>, axes: &[usize], keep: bool) -> Arr<T> {
    reduce(
        a,
        axes,
        keep,
        T::neg_infinity(),
        |m, x| if m.is_nan() || m >= x { m } else { x },
        None,
    )
}

/// The maximum over `axes` of an i64 array.
pub fn max_i64(a: &Arr<i64>, axes: &[usize], keep: bool) -> Arr<i64> {
    reduce(a, axes, keep, i64::MIN, std::cmp::max, None)
}

/// Index of the first maximum along `axis`; a NaN counts as the maximum, so a lane with
/// a NaN gives the index of its first NaN (NumPy's, JAX's and PyTorch's rule; TF leaves
/// it unspecified). This agrees with [`max`], which returns NaN for such a lane.
pub fn argmax<T: Copy + PartialOrd + Send + Sync + 'static>(a: &Arr<T>, axis: usize) -> Arr<i64> {
    // only NaN is unordered against itself
    let is_nan = |x: T| x.partial_cmp(&x).is_none();
    a.map_axis(Axis(axis), |lane| {
        let mut best = 0usize;
        for (i, &x) in lane.iter().enumerate() {
            if is_nan(lane[best]) {
                break;
            }
            if is_nan(x) || x > lane[best] {
                best = i;
            }
        }
        best as i64
    })
    .into_shared()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn array(shape: &[usize]) -> Arr<f32> {
        let n: usize = shape.iter().product();
        let v = (0..n)
            .map(|i| ((i * 7919 % 1009) as f32 - 504.0) * 0.37 + 1e-3 * i as f32)
            .collect();
        Arr::from_shape_vec(IxDyn(shape), v).unwrap().into_shared()
    }

    fn on_threads<R: Send>(n: usize, f: impl FnOnce() -> R + Send) -> R {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap()
            .install(f)
    }

    /// The passes that share accumulators out over threads (whole blocks; column ranges
    /// of one block, also narrower than a range) give the one-thread bits, and each lane
    /// is its rows added in order.
    #[test]
    fn parallel_passes_fold_each_lane_in_order() {
        let cases: [(&[usize], &[usize]); 4] = [
            (&[40, 30, 64], &[0, 1]),
            (&[300, 400], &[0]),
            (&[70000, 3], &[0]),
            (&[8, 26, 26, 32], &[0, 1, 2]),
        ];
        for (shape, axes) in cases {
            let a = array(shape);
            let one = on_threads(1, || sum(&a, axes, false));
            let four = on_threads(4, || sum(&a, axes, false));
            let bits = |x: &Arr<f32>| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&one), bits(&four), "{shape:?} over {axes:?}");
        }
        // one block, column ranges: each column's rows in order from +0
        let a = array(&[300, 400]);
        let got = on_threads(4, || sum(&a, &[0], false));
        for c in 0..400 {
            let want = (0..300).fold(0.0f32, |s, r| s + a[[r, c]]);
            assert_eq!(got[[c]].to_bits(), want.to_bits(), "column {c}");
        }
    }
}
