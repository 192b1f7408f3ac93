//! Elementwise loops: map, broadcasting zip, select.
//!
//! Fast paths, each a plain slice-iterator loop the compiler vectorizes: same-shape
//! contiguous operands, a scalar operand, and a "row" operand whose shape is a suffix
//! of the result's (a bias `[k]` added to `[n, k]`). Everything else goes through
//! ndarray's broadcasting `Zip`. Loops longer than [`PAR_MIN`] elements are split
//! across rayon threads in fixed chunks; each element is computed independently, so
//! the split never changes a bit. Results are always in standard layout.

use crate::tensor::{Arr, Data};
use ndarray::{ArrayD, IxDyn, Zip};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Loops shorter than this run on the calling thread.
pub const PAR_MIN: usize = 1 << 16;
/// Elements per parallel task.
pub const PAR_CHUNK: usize = 1 << 14;

fn wrap<O: Clone>(shape: &[usize], v: Vec<O>) -> Arr<O> {
    ArrayD::from_shape_vec(IxDyn(shape), v)
        .expect("length matches shape")
        .into_shared()
}

/// Whether the CPU has AVX2 and FMA (checked once at run time; the build itself
/// targets baseline x86-64).
#[cfg(target_arch = "x86_64")]
pub fn has_avx2() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// Runs `f` compiled for AVX2+FMA when the CPU has them, else for the baseline target.
/// The loop inside `f` is inlined into the feature-enabled copy, so it vectorizes 8
/// f32 lanes wide. Rust never contracts `a*b+c` into an FMA on its own, so both copies
/// compute the same bits.
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if has_avx2() {
            // SAFETY: the CPU supports avx2 and fma (checked just above).
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// A Vec of `n` elements written in parallel chunks of [`PAR_CHUNK`] by `fill(start, chunk)`,
/// which must write every element of its chunk.
fn par_fill<O: Send>(n: usize, fill: impl Fn(usize, &mut [MaybeUninit<O>]) + Sync) -> Vec<O> {
    let mut v = Vec::with_capacity(n);
    v.spare_capacity_mut()[..n]
        .par_chunks_mut(PAR_CHUNK)
        .enumerate()
        .for_each(|(i, c)| fill(i * PAR_CHUNK, c));
    // SAFETY: the chunks cover 0..n and `fill` wrote each element of its chunk; if it
    // panicked, the panic propagates before this line and the Vec stays empty.
    unsafe { v.set_len(n) };
    v
}

/// `f` over a slice into a new Vec (parallel above [`PAR_MIN`]).
fn map_slice<T: Copy + Sync, O: Send>(x: &[T], f: impl Fn(T) -> O + Sync) -> Vec<O> {
    if x.len() < PAR_MIN {
        vectorized(|| x.iter().map(|&v| f(v)).collect())
    } else {
        par_fill(x.len(), |s, out| {
            vectorized(|| {
                for (o, &v) in out.iter_mut().zip(&x[s..]) {
                    o.write(f(v));
                }
            })
        })
    }
}

/// `f` over two equal-length slices into a new Vec.
fn zip_slices<A: Copy + Sync, B: Copy + Sync, O: Send>(
    x: &[A],
    y: &[B],
    f: impl Fn(A, B) -> O + Sync,
) -> Vec<O> {
    if x.len() < PAR_MIN {
        vectorized(|| x.iter().zip(y).map(|(&a, &b)| f(a, b)).collect())
    } else {
        par_fill(x.len(), |s, out| {
            vectorized(|| {
                for ((o, &a), &b) in out.iter_mut().zip(&x[s..]).zip(&y[s..]) {
                    o.write(f(a, b));
                }
            })
        })
    }
}

/// `f(x[i], row[i % row.len()])` with `x` a whole number of rows.
fn zip_rows<A: Copy + Sync, B: Copy + Sync, O: Send + Sync>(
    x: &[A],
    row: &[B],
    f: impl Fn(A, B) -> O + Sync,
) -> Vec<O> {
    let k = row.len();
    let rows = |x: &[A]| {
        vectorized(|| {
            let mut out = Vec::with_capacity(x.len());
            for xr in x.chunks_exact(k) {
                out.extend(xr.iter().zip(row).map(|(&a, &b)| f(a, b)));
            }
            out
        })
    };
    if x.len() < PAR_MIN {
        rows(x)
    } else {
        let rows_per_task = (PAR_CHUNK / k).max(1);
        x.par_chunks(rows_per_task * k)
            .flat_map_iter(rows)
            .collect()
    }
}

/// Whether `small` broadcasts to `full` as a trailing row: after dropping leading 1s it
/// equals a suffix of `full`.
fn is_row_of(small: &[usize], full: &[usize]) -> bool {
    let s: Vec<usize> = small.iter().copied().skip_while(|&d| d == 1).collect();
    !s.is_empty() && s.len() <= full.len() && full[full.len() - s.len()..] == s[..]
}

/// `f(x)` for every element.
pub fn map<T: Copy + Send + Sync, O: Copy + Send + Sync>(
    a: &Arr<T>,
    f: impl Fn(T) -> O + Sync,
) -> Arr<O> {
    match a.as_slice() {
        Some(s) => wrap(a.shape(), map_slice(s, f)),
        None => a.map(|&x| f(x)).into_shared(),
    }
}

/// `f(a, b)` with NumPy broadcasting to `shape`.
pub fn zip<A, B, O>(a: &Arr<A>, b: &Arr<B>, shape: &[usize], f: impl Fn(A, B) -> O + Sync) -> Arr<O>
where
    A: Copy + Send + Sync,
    B: Copy + Send + Sync,
    O: Copy + Send + Sync,
{
    let n: usize = shape.iter().product();
    if let (Some(x), Some(y)) = (a.as_slice(), b.as_slice()) {
        if x.len() == n && y.len() == n {
            return wrap(shape, zip_slices(x, y, f));
        }
        if y.len() == 1 && x.len() == n {
            let c = y[0];
            return wrap(shape, map_slice(x, |v| f(v, c)));
        }
        if x.len() == 1 && y.len() == n {
            let c = x[0];
            return wrap(shape, map_slice(y, |v| f(c, v)));
        }
        if x.len() == n && is_row_of(b.shape(), shape) {
            return wrap(shape, zip_rows(x, y, f));
        }
        if y.len() == n && is_row_of(a.shape(), shape) {
            return wrap(shape, zip_rows(y, x, |q, p| f(p, q)));
        }
    }
    let sh = IxDyn(shape);
    let av = a.broadcast(sh.clone()).expect("infer checked broadcasting");
    let bv = b.broadcast(sh).expect("infer checked broadcasting");
    Zip::from(&av)
        .and(&bv)
        .map_collect(|&x, &y| f(x, y))
        .into_shared()
}

/// The mask operand of `select` as booleans broadcast to `shape`.
pub fn mask_of(m: &Data, shape: &[usize]) -> Arr<bool> {
    let b: Arr<bool> = match m {
        Data::F32(a) => map(a, |v| v != 0.0),
        Data::F64(a) => map(a, |v| v != 0.0),
        Data::I64(a) => map(a, |v| v != 0),
    };
    if b.shape() == shape {
        b
    } else {
        b.broadcast(IxDyn(shape))
            .expect("infer checked broadcasting")
            .to_owned()
            .into_shared()
    }
}

/// `mask ? a : b` elementwise, broadcasting `a` and `b` to `shape`.
pub fn select<T: Copy + Default + Send + Sync>(
    mask: &Arr<bool>,
    a: &Arr<T>,
    b: &Arr<T>,
    shape: &[usize],
) -> Arr<T> {
    let ab = zip(a, b, shape, |x, y| (x, y));
    zip(mask, &ab, shape, |m, (x, y)| if m { x } else { y })
}
